//! A rendezvous point, ready to run.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{FutureExt, StreamExt, select};
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_identity::PeerId;
use libp2p_swarm::SwarmEvent;
use prometheus_client::registry::Registry;
use rendezvous_libp2p::core::{Limits, RateLimit, ServerConfig, ServerEvent, SubscriptionLimits};
use rendezvous_libp2p::server;
use serde_json::json;
use tracing::info;

use super::event_loop::{EventLoop, Next};
use super::summary::Summary;
use super::{Identity, NodeError, demo, executor, http_endpoint};
use crate::handshakes::Handshakes;
use crate::host::{self, ConnectionLimits, ServerBehaviour, ServerHostEvent};
use crate::http::{Query, Reply};
use crate::metrics::{ConstHistogram, RegistryExt};
use crate::store::Storage;
#[cfg(feature = "redb")]
use crate::store::redb::{self, RedbStore};
#[cfg(feature = "redis")]
use crate::store::redis::{RedisOptions, RedisStore, redacted};
use crate::websocket::Tls;

const LOG: &str = "rendezvous::server";

/// Namespaces named in full on the statistics line; beyond, the largest.
const STATS_NAMESPACES: usize = 10;

/// How often refusals are summed up when no statistics interval is set.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Everything a [`ServerNode`] is built from; each field is one flag of
/// `rendezvous --mode server` (named beside it), at most two levels deep.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Where to listen (`--listen IP`, `--port P`, `--ws-port`). Defaults to
    /// `/ip4/0.0.0.0/tcp/0`: every interface, a port the system picks.
    pub listen: Vec<Multiaddr>,
    /// The certificate for `/wss` listen addresses (`--ws-cert`,
    /// `--ws-key`); `None`, the default, for none: such addresses are then
    /// refused.
    pub ws_tls: Option<Tls>,
    /// The point's key (`--key-file`). Defaults to the data dir's key, or a
    /// new key every start without one.
    pub identity: Identity,
    /// Where registrations are kept (`--data-dir`, `--in-memory`,
    /// `--redis`). Defaults to the platform's per-user data directory
    /// ([`Storage::default`]).
    pub storage: Storage,
    /// How a Redis is used (`--redis-allow-eviction`).
    #[cfg(feature = "redis")]
    pub redis: RedisOptions,
    /// The protocol's limits (`--min-ttl`, `--max-ttl`,
    /// `--max-per-namespace`, `--max-per-peer`, `--max-total`,
    /// `--max-per-ip`). Defaults to [`Limits::default`].
    pub limits: Limits,
    /// Most requests per second from one peer (`--rate-limit`); `None`, the
    /// default, for no limit.
    pub rate_limit: Option<RateLimit>,
    /// The bounds on subscriptions (`--max-subscriptions`,
    /// `--max-subscriptions-per-peer`). Defaults to
    /// [`SubscriptionLimits::default`].
    pub subscriptions: SubscriptionLimits,
    /// Close a connection that carries no rendezvous request for this long
    /// (`--idle-timeout`); `None` never. Defaults to 60 s.
    pub idle_timeout: Option<Duration>,
    /// How long the first DISCOVER or subscription of a peer identify has
    /// not described waits for identify, which is asked only then
    /// (`--reader-wait`; see
    /// [`ServerConfig::reader_wait`]). Zero asks every peer's identify as
    /// it connects, and holds nothing. Defaults to 2 s.
    pub reader_wait: Duration,
    /// Connections and handshakes (`--max-connections`,
    /// `--max-connections-per-peer`, `--max-connections-per-ip`,
    /// `--max-handshakes`, `--handshake-timeout`). Defaults to
    /// [`ConnectionLimits::default`].
    pub connections: ConnectionLimits,
    /// The bounds of each connection's rendezvous substreams (no flags).
    pub substreams: server::Substreams,
    /// How often to log namespace statistics (`--stats-interval`); `None`
    /// never. Defaults to 10 s.
    pub stats_interval: Option<Duration>,
    /// Where to serve metrics and health (`--metrics`); `None`, the
    /// default, for nowhere. See [`crate::http`].
    pub metrics: Option<SocketAddr>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        let rendezvous = server::Config::default();
        ServerOptions {
            listen: vec![
                Multiaddr::empty().with(Protocol::Ip4([0, 0, 0, 0].into())).with(Protocol::Tcp(0)),
            ],
            ws_tls: None,
            identity: Identity::default(),
            storage: Storage::default(),
            #[cfg(feature = "redis")]
            redis: RedisOptions::default(),
            limits: rendezvous.core.limits.clone(),
            rate_limit: None,
            subscriptions: rendezvous.core.subscriptions,
            idle_timeout: rendezvous.idle_timeout,
            reader_wait: Duration::from_secs(2),
            connections: ConnectionLimits::default(),
            substreams: rendezvous.substreams,
            stats_interval: Some(Duration::from_secs(10)),
            metrics: None,
        }
    }
}

impl ServerOptions {
    /// The rendezvous behaviour's configuration these options make.
    pub fn rendezvous(&self) -> server::Config {
        let defaults = server::Config::default();
        server::Config {
            core: ServerConfig {
                limits: self.limits.clone(),
                rate_limit: self.rate_limit,
                subscriptions: self.subscriptions,
                reader_wait: self.reader_wait,
                ..defaults.core
            },
            substreams: self.substreams,
            idle_timeout: self.idle_timeout,
        }
    }

    /// Why these options cannot make a point, in one line.
    pub fn validate(&self) -> Result<(), NodeError> {
        self.rendezvous().validate().map_err(|e| NodeError::Config(e.to_string()))?;
        self.connections.validate().map_err(NodeError::Config)
    }
}

/// A running rendezvous point: a swarm with the rendezvous, identify, ping
/// and connection-limit behaviours, told each peer's agent version so that
/// every reader gets the record flavour its stack verifies.
pub struct ServerNode {
    events: EventLoop<ServerBehaviour>,
    stats_interval: Option<Duration>,
    handshakes: Handshakes,
    limits: ConnectionLimits,
    shutting_down: bool,
    summary: Summary,
}

/// What a graceful shutdown achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutDown {
    /// Requests still unanswered when the time ran out (0: every request
    /// read was answered).
    pub unanswered: usize,
    /// Writes the store had not committed when the time ran out.
    pub uncommitted: usize,
}

impl ServerNode {
    /// Builds the point and listens; returns once every listener has an
    /// address, or with the reason one cannot.
    pub async fn start(options: ServerOptions) -> Result<ServerNode, NodeError> {
        options.validate()?;
        let keypair = options.identity.keypair(options.storage.data_dir())?;
        let rendezvous = rendezvous_behaviour(&options).await?;
        let limits = super::fds::fit(options.connections);
        let behaviour = ServerBehaviour::with(&keypair, rendezvous, limits);
        let (transport, handshakes) =
            host::server_transport(&keypair, &limits, options.ws_tls.as_ref())
                .map_err(|e| NodeError::Config(e.to_string()))?;
        let swarm = host::build_with(&keypair, transport, behaviour, executor());
        let http = http_endpoint(options.metrics)?;
        let mut node = ServerNode {
            events: EventLoop::new(swarm, http),
            stats_interval: options.stats_interval.filter(|i| !i.is_zero()),
            handshakes,
            limits,
            shutting_down: false,
            summary: Summary::default(),
        };
        node.events.listen(options.listen).await?;
        Ok(node)
    }

    /// The point's peer id.
    pub fn peer_id(&self) -> PeerId {
        *self.events.swarm.local_peer_id()
    }

    /// Addresses listened on so far, each ending in `/p2p/<peer id>`.
    pub fn listen_addresses(&self) -> &[Multiaddr] {
        self.events.listen_addresses()
    }

    /// Where metrics and health are served, if anywhere.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.events.http_address()
    }

    /// The connection limits in force (after fitting them to the file
    /// descriptors this process may open).
    pub fn connection_limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// The rendezvous behaviour: its core, statistics and counters.
    pub fn rendezvous(&self) -> &server::Behaviour {
        &self.events.swarm.behaviour().rendezvous
    }

    /// Every metric, read now; see [`crate::metrics`].
    pub fn metrics(&self) -> Registry {
        let mut r = Registry::with_prefix("rendezvous");
        let rendezvous = self.rendezvous();
        let stats = rendezvous.stats();
        r.gauge("registrations", "Live registrations", stats.registrations);
        r.gauge("namespaces", "Namespaces with at least one registration", stats.namespaces);
        r.gauge("registered_peers", "Peers with at least one registration", stats.peers);
        let requests = stats.requests.iter().map(|(kind, status, n)| {
            let status = status.map_or("none", |s| s.label());
            (vec![("type", kind.label()), ("status", status)], n)
        });
        r.counters(
            "requests",
            "Requests answered, by type and status (none: UNREGISTER, which has no answer)",
            requests,
        );
        r.register(
            "request_duration_seconds",
            "From a request's last byte read to its answer's last byte written",
            ConstHistogram(rendezvous.request_durations()),
        );
        r.gauge("requests_in_flight", "Requests read and not yet answered", rendezvous.in_flight());
        r.counter(
            "records_verified",
            "Records parsed and signature-checked",
            stats.records_verified,
        );
        r.counter(
            "events_dropped",
            "Registry events dropped from a full queue",
            stats.dropped_events,
        );
        r.counter(
            "readers_asked",
            "Peers whose identify the point asked, to serve them their record flavour",
            stats.readers_asked,
        );
        r.counter(
            "reader_waits_expired",
            "Asked peers whose identify did not answer within --reader-wait",
            stats.reader_waits_expired,
        );
        r.gauge("subscribers", "Subscriptions open", stats.subscriptions);
        r.counter(
            "subscription_events",
            "Arrivals and departures pushed to subscribers",
            stats.subscription_events,
        );
        r.counter(
            "subscribers_dropped",
            "Subscribers dropped for not reading",
            stats.subscribers_dropped,
        );
        let rejected =
            rendezvous.stream_stats().by_reason().map(|(reason, n)| (vec![("reason", reason)], n));
        r.counters(
            "streams_rejected",
            "Substreams closed without a request served, by reason",
            rejected,
        );
        let counters = self.events.swarm.network_info().connection_counters().num_established();
        r.gauge("connections", "Established connections", counters as usize);
        let handshakes = self.handshakes.stats();
        r.gauge("handshakes", "Inbound connections in their handshake", handshakes.pending);
        r.counter(
            "handshakes_evicted",
            "Handshakes ended to make room for newer ones",
            handshakes.evicted,
        );
        r.gauge(
            "connections_limit",
            "Most established connections taken",
            self.limits.max_established as usize,
        );
        if let Some((open, max)) = super::fds::in_use() {
            r.gauge("open_fds", "File descriptors open", open as usize);
            r.gauge("max_fds", "File descriptors the process may open", max as usize);
        }
        if let Some(commits) = rendezvous.commit_durations() {
            r.register(
                "store_commit_duration_seconds",
                "From a write's hand-over to the store to its commit",
                ConstHistogram(commits),
            );
            r.gauge(
                "store_pending_puts",
                "Writes waiting for the store",
                rendezvous.pending_writes(),
            );
            let ready = usize::from(rendezvous.store_trouble().is_none());
            r.gauge("store_ready", "1 when the store takes writes, 0 otherwise", ready);
        }
        if let Some(offset) = rendezvous.store_clock_offset() {
            r.gauge_f64(
                "clock_offset_seconds",
                "This machine's wall clock minus the shared registry's (Redis TIME)",
                offset,
            );
        }
        r
    }

    /// The answer to an HTTP query.
    pub fn answer(&self, query: &Query) -> Reply {
        match query {
            Query::Metrics => crate::metrics::reply(&self.metrics()),
            Query::Health => Reply::ok("ok\n"),
            Query::Ready => match self.not_ready() {
                None => Reply::ok("ready\n"),
                Some(why) => Reply::status(503, why),
            },
            Query::Namespaces { after, limit } => {
                let core = self.rendezvous().core();
                let page: Vec<_> = core
                    .namespaces(after.as_deref())
                    .take(*limit)
                    .map(|(ns, n)| json!({ "namespace": ns.as_str(), "registrations": n }))
                    .collect();
                let next = (page.len() == *limit)
                    .then(|| page.last().map(|last| last["namespace"].clone()))
                    .flatten();
                let stats = core.stats();
                Reply::json(&json!({
                    "namespaces": page,
                    "next": next,
                    "total_namespaces": stats.namespaces,
                    "total_registrations": stats.registrations,
                }))
            }
        }
    }

    /// Why the point should not be sent traffic now, if it should not.
    fn not_ready(&self) -> Option<String> {
        if self.shutting_down {
            return Some("shutting down".into());
        }
        if self.listen_addresses().is_empty() {
            return Some("not listening".into());
        }
        self.rendezvous().store_trouble()
    }

    /// The next event; identify's agent versions are handed to the
    /// rendezvous behaviour and HTTP requests answered meanwhile.
    pub async fn next_event(&mut self) -> SwarmEvent<ServerHostEvent> {
        loop {
            match self.events.next().await {
                Next::Swarm(event) => return event,
                Next::Http(request) => {
                    let reply = self.answer(&request.query);
                    request.answer(reply);
                }
            }
        }
    }

    /// Serves until `shutdown` resolves, logging what happens (see
    /// [`demo::server_event`]): refusals and rejected substreams summed up
    /// once per interval, each at DEBUG; the statistics every
    /// `stats_interval`. Then call [`shut_down`](Self::shut_down).
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        let mut stats = ticker(self.stats_interval);
        let mut summaries = ticker(Some(self.stats_interval.unwrap_or(SUMMARY_EVERY)));
        let mut shutdown = std::pin::pin!(shutdown.fuse());
        loop {
            select! {
                event = self.next_event().fuse() => self.log(event),
                _ = stats.select_next_some() => self.log_stats(),
                _ = summaries.select_next_some() => self.log_summary(),
                () = shutdown => return,
            }
        }
    }

    fn log(&mut self, event: SwarmEvent<ServerHostEvent>) {
        let me = self.peer_id();
        if let SwarmEvent::Behaviour(ServerHostEvent::Rendezvous(event)) = &event {
            match event {
                server::Event::Core(ServerEvent::Refused { request, status, .. }) => {
                    self.summary.refused(*request, *status);
                }
                server::Event::StreamRejected { reason, .. } => {
                    self.summary.rejected(reason.name());
                }
                _ => {}
            }
        }
        demo::server_event(&event, me);
    }

    fn log_summary(&mut self) {
        if let Some(line) = self.summary.take_line() {
            info!(target: LOG, "{line}");
        }
    }

    /// Shuts down gracefully: stops listening, refuses new rendezvous
    /// substreams, and keeps serving until every request already read is
    /// answered and the store has committed every write, or until `limit`
    /// passes or `abort` resolves. Drop the node afterwards: that closes
    /// the connections and the store (which writes what it holds).
    pub async fn shut_down(
        &mut self,
        limit: Duration,
        abort: impl Future<Output = ()>,
    ) -> ShutDown {
        self.shutting_down = true;
        self.events.stop_listening();
        self.events.swarm.behaviour_mut().rendezvous.shut_down();
        let mut deadline = FutureExt::fuse(async_io::Timer::after(limit));
        let mut abort = std::pin::pin!(abort.fuse());
        loop {
            let rendezvous = self.rendezvous();
            let left = ShutDown {
                unanswered: rendezvous.in_flight(),
                uncommitted: rendezvous.pending_writes(),
            };
            if left == (ShutDown { unanswered: 0, uncommitted: 0 }) {
                return left;
            }
            // Handlers answer on their own tasks, without waking this one:
            // look again every few milliseconds.
            let mut tick = FutureExt::fuse(async_io::Timer::after(Duration::from_millis(5)));
            select! {
                event = self.next_event().fuse() => self.log(event),
                _ = tick => {}
                _ = deadline => return left,
                () = abort => return left,
            }
        }
    }

    /// The statistics line, short at any number of namespaces (the totals
    /// and the largest; the rest at `/namespaces`), and, if anything went
    /// wrong since the start, a second line saying what.
    pub fn log_stats(&self) {
        let rendezvous = self.rendezvous();
        let core = rendezvous.stats();
        if core.registrations == 0 {
            info!(target: LOG, "No active registrations");
        } else {
            let counts: Vec<(String, usize)> =
                rendezvous.core().namespaces(None).map(|(ns, n)| (ns.to_string(), n)).collect();
            info!(target: LOG, "Namespace stats: {}", stats_line(counts, core.registrations));
        }
        let streams = rendezvous.stream_stats();
        let evicted = self.handshakes.stats().evicted;
        let troubles = core.dropped_events + core.busy_refusals + streams.troubles() + evicted;
        if troubles > 0 {
            info!(
                target: LOG,
                "Dropped events: {}, requests refused as busy: {}, substreams rejected: {:?}; handshakes evicted: {evicted}",
                core.dropped_events,
                core.busy_refusals,
                streams.by_reason()
            );
        }
    }
}

/// The namespaces and their registrations as the demo prints them
/// (`{"a": 1, "b": 2}`), or, past [`STATS_NAMESPACES`], the totals and the
/// largest.
fn stats_line(mut counts: Vec<(String, usize)>, registrations: usize) -> String {
    let map = |counts: &[(String, usize)]| {
        let inner: Vec<String> = counts.iter().map(|(ns, n)| format!("{ns:?}: {n}")).collect();
        format!("{{{}}}", inner.join(", "))
    };
    if counts.len() <= STATS_NAMESPACES {
        return map(&counts);
    }
    let namespaces = counts.len();
    counts.sort_by(|(a, x), (b, y)| y.cmp(x).then_with(|| a.cmp(b)));
    counts.truncate(STATS_NAMESPACES);
    format!(
        "{namespaces} namespaces, {registrations} registrations; the {STATS_NAMESPACES} largest: {}",
        map(&counts)
    )
}

/// The rendezvous behaviour, on the store `options` name.
async fn rendezvous_behaviour(options: &ServerOptions) -> Result<server::Behaviour, NodeError> {
    let config = options.rendezvous();
    let invalid = |e: rendezvous_libp2p::core::ConfigError| NodeError::Config(e.to_string());
    match &options.storage {
        Storage::InMemory => server::Behaviour::new(config).map_err(invalid),
        #[cfg(feature = "redb")]
        Storage::DataDir(dir) => {
            let (store, snapshot) =
                RedbStore::open(dir).map_err(|e| NodeError::Store(e.to_string()))?;
            let (behaviour, loaded) =
                server::Behaviour::with_store(config, store, snapshot).map_err(invalid)?;
            info!(
                target: LOG,
                "Restored {} registrations from {} ({} had expired)",
                loaded.registrations,
                dir.join(redb::FILE).display(),
                loaded.expired
            );
            Ok(behaviour)
        }
        #[cfg(feature = "redis")]
        Storage::Redis { url, .. } => {
            let (store, snapshot) = RedisStore::connect(url, &options.limits, &options.redis)
                .await
                .map_err(|e| NodeError::Store(e.to_string()))?;
            let clock = store.clock();
            let (behaviour, loaded) =
                server::Behaviour::with_store_and_clock(config, store, snapshot, clock)
                    .map_err(invalid)?;
            info!(
                target: LOG,
                "Sharing the registry in {}: {} registrations loaded ({} had expired)",
                redacted(url),
                loaded.registrations,
                loaded.expired
            );
            Ok(behaviour)
        }
    }
}

fn ticker(
    every: Option<Duration>,
) -> futures::stream::Fuse<futures::stream::BoxStream<'static, ()>> {
    let ticks = match every {
        Some(every) if !every.is_zero() => {
            StreamExt::map(async_io::Timer::interval(every), drop).boxed()
        }
        _ => futures::stream::pending().boxed(),
    };
    ticks.fuse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statistics_line_names_ten_namespaces_at_most() {
        let few = vec![("a".to_owned(), 1), ("b".to_owned(), 2)];
        assert_eq!(stats_line(few, 3), r#"{"a": 1, "b": 2}"#);
        let many: Vec<_> = (0..5000).map(|i| (format!("ns-{i:04}"), i % 97)).collect();
        let line = stats_line(many, 12345);
        assert!(line.starts_with("5000 namespaces, 12345 registrations; the 10 largest: {"));
        assert!(line.len() < 300, "{} bytes", line.len());
    }
}
