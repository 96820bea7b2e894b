//! Prometheus metrics (`--metrics ADDR:PORT`, at `/metrics`): the text
//! format (0.0.4), encoded by prometheus-client and served by
//! [`crate::http`].
//!
//! Nothing is counted twice: the node already keeps every count (the core's
//! [`Stats`](rendezvous_libp2p::core::Stats), the handlers' histograms), so a
//! scrape asks the node's loop for a fresh registry built from them, and the
//! hot path pays nothing for metrics. No label holds a namespace or a peer
//! id: their number is unbounded.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use rendezvous_libp2p::histogram::{BOUNDS, Snapshot};

use crate::http::Reply;

/// A registry as the answer to `GET /metrics`.
pub fn reply(registry: &Registry) -> Reply {
    let mut text = String::new();
    if prometheus_text::encode(&mut text, registry).is_err() {
        return Reply::status(500, "the metrics could not be encoded");
    }
    Reply { status: 200, content_type: prometheus_text::CONTENT_TYPE, body: text }
}

/// A histogram read from a [`rendezvous_libp2p::histogram::Histogram`].
#[derive(Debug)]
pub struct ConstHistogram(pub Snapshot);

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = BOUNDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(self.0.buckets).collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Building a registry from counts read at scrape time.
pub(crate) trait RegistryExt {
    /// A gauge with value `value`.
    fn gauge(&mut self, name: &str, help: &str, value: usize);
    /// A gauge with a fractional value.
    fn gauge_f64(&mut self, name: &str, help: &str, value: f64);
    /// A counter with value `value` (`_total` is appended to `name`).
    fn counter(&mut self, name: &str, help: &str, value: u64);
    /// A counter per label set, from `(labels, value)` pairs.
    fn counters(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, u64)>);
}

/// A metric's labels; values are from a fixed set, never a namespace or a
/// peer id.
pub(crate) type Labels = Vec<(&'static str, &'static str)>;

impl RegistryExt for Registry {
    fn gauge(&mut self, name: &str, help: &str, value: usize) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        self.register(name, help, ConstGauge::new(value));
    }

    fn gauge_f64(&mut self, name: &str, help: &str, value: f64) {
        self.register(name, help, ConstGauge::new(value));
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.register(name, help, ConstCounter::new(value));
    }

    fn counters(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let family = Family::<Labels, Counter>::default();
        for (labels, value) in values {
            family.get_or_create(&labels).inc_by(value);
        }
        self.register(name, help, family);
    }
}
