//! Prometheus metrics over HTTP (`--metrics ADDR:PORT`): the text format
//! (0.0.4) at `/metrics`, encoded by prometheus-client and served by
//! tiny_http on a thread of its own.
//!
//! Nothing is counted twice: the node already keeps every count (the core's
//! [`Stats`](rendezvous_libp2p::core::Stats), the handlers' histograms), so a
//! scrape asks the node's loop for a fresh registry built from them, and the
//! hot path pays nothing for metrics. No label holds a namespace or a peer
//! id: their number is unbounded.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt, select};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use rendezvous_libp2p::histogram::{BOUNDS, Snapshot};

/// How long a scrape waits for the node's loop before answering 503.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Scrapes waiting for the node's loop; more are answered 503 at once.
const QUEUED_SCRAPES: usize = 4;

/// A scrape waiting for its registry.
pub struct Scrape(oneshot::Sender<String>);

impl Scrape {
    /// Answers the scrape with `registry`, encoded.
    pub fn answer(self, registry: &Registry) {
        let mut text = String::new();
        if prometheus_text::encode(&mut text, registry).is_err() {
            text.clear();
            let _ = writeln!(text, "# the metrics could not be encoded");
        }
        let _ = self.0.send(text);
    }
}

/// The HTTP endpoint; scrapes arrive through [`Endpoint::next_scrape`].
/// Dropping it stops the server.
pub struct Endpoint {
    addr: SocketAddr,
    scrapes: mpsc::Receiver<Scrape>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Listens on `addr` (port 0: one the system picks).
    pub fn serve(addr: SocketAddr) -> io::Result<Endpoint> {
        let server = tiny_http::Server::http(addr).map_err(io::Error::other)?;
        let addr = server.server_addr().to_ip().ok_or_else(|| io::Error::other("not an IP"))?;
        let server = Arc::new(server);
        let (tx, scrapes) = mpsc::channel(QUEUED_SCRAPES);
        let thread = std::thread::Builder::new().name("metrics".into()).spawn({
            let server = server.clone();
            move || serve(&server, tx)
        })?;
        Ok(Endpoint { addr, scrapes, server, thread: Some(thread) })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next scrape to answer.
    pub async fn next_scrape(&mut self) -> Scrape {
        match self.scrapes.next().await {
            Some(scrape) => scrape,
            None => futures::future::pending().await,
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &tiny_http::Server, mut scrapes: mpsc::Sender<Scrape>) {
    for request in server.incoming_requests() {
        let (status, body) = match request.url().split('?').next() {
            Some("/metrics") => {
                let (tx, rx) = oneshot::channel();
                match scrapes.try_send(Scrape(tx)) {
                    Ok(()) => match wait(rx) {
                        Some(text) => (200, text),
                        None => (503, "the node did not answer in time\n".into()),
                    },
                    Err(_) => (503, "too many scrapes at once\n".into()),
                }
            }
            _ => (404, "metrics are at /metrics\n".into()),
        };
        let content_type = tiny_http::Header::from_bytes(
            &b"Content-Type"[..],
            prometheus_text::CONTENT_TYPE.as_bytes(),
        )
        .expect("a valid header");
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(content_type);
        let _ = request.respond(response);
    }
}

fn wait(answer: oneshot::Receiver<String>) -> Option<String> {
    futures::executor::block_on(async {
        select! {
            text = answer.fuse() => text.ok(),
            _ = FutureExt::fuse(async_io::Timer::after(SCRAPE_TIMEOUT)) => None,
        }
    })
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
