//! Command-line flags: the py-libp2p rendezvous demo's, with the same
//! meanings and defaults, plus the point's settings. Every flag can also
//! come from `RENDEZVOUS_<FLAG>` (the long flag in upper snake case; a flag
//! wins), and maps onto one field of the library's options, which hold
//! every default, bound and check.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use rendezvous_async_std::host::ConnectionLimits;
use rendezvous_async_std::logging::LogFormat;
use rendezvous_async_std::node::{ClientOptions, Identity, ServerOptions};
use rendezvous_async_std::store::{Storage, default_data_dir};
use rendezvous_async_std::websocket::Tls;
use rendezvous_libp2p::core::{Limits, RateLimit, RecordFlavour, SubscriptionLimits};

/// A libp2p rendezvous point and client.
///
/// Start a server, then clients in other terminals with the address it
/// prints:
///
///   rendezvous --mode server --port 8080
///   rendezvous --mode client --address /ip4/127.0.0.1/tcp/8080/p2p/12D3Koo... --namespace my-app
///
/// Every flag can also be set with RENDEZVOUS_<FLAG> (e.g. RENDEZVOUS_REDIS,
/// which keeps a password out of the command line); a flag wins.
#[derive(Debug, Parser)]
#[command(name = "rendezvous", version, verbatim_doc_comment)]
pub(crate) struct Args {
    /// Run as the rendezvous point (server) or as a peer using one (client).
    #[arg(long, value_enum)]
    pub(crate) mode: Mode,
    /// The server's multiaddr, ending in /p2p/<peer id> (required for client mode).
    #[arg(long, num_args = 0..=1, default_value = "", hide_default_value = true)]
    pub(crate) address: String,
    /// Port to listen on (default: random).
    #[arg(short, long, default_value_t = 0)]
    pub(crate) port: u16,
    /// Namespace to register and discover in.
    #[arg(short, long, default_value = "rendezvous")]
    pub(crate) namespace: String,
    /// Log debug details too.
    #[arg(short, long)]
    pub(crate) verbose: bool,
    /// Keep the registration alive by re-registering at 80% of its TTL, until
    /// Ctrl+C. With `--refresh False` the client registers, discovers once,
    /// unregisters and exits.
    #[arg(short, long, num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub(crate) refresh: bool,
    /// TTL to ask for, in seconds (client).
    #[arg(long, default_value_t = 7200, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) ttl: u64,
    /// Record sent to the server (client): auto finds out per server,
    /// stepping from rust-libp2p's envelope to the standard one to the legacy
    /// PeerInfo only when the server rejects one.
    #[arg(long, default_value = "auto", value_name = "FLAVOUR", value_parser = |s: &str| s.parse::<RecordFlavour>())]
    pub(crate) record_flavour: RecordFlavour,
    /// In refresh mode, rediscover the namespace this often, in seconds,
    /// and log each peer that appears or goes (client). A server that
    /// offers subscriptions pushes each change as it happens instead; this
    /// then paces only the attempts to subscribe again.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) discover_interval: u64,
    /// Log lines as the demo prints them (text), or one JSON object per line
    /// (json) for log collectors.
    #[arg(long, value_enum, default_value = "text", value_name = "FORMAT")]
    pub(crate) log_format: LogFormat,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub(crate) listen: IpAddr,
    /// Shortest TTL the server accepts, in seconds.
    #[arg(long, default_value_t = Limits::default().min_ttl.as_secs(), value_name = "SECONDS")]
    pub(crate) min_ttl: u64,
    /// Longest TTL the server accepts, in seconds.
    #[arg(long, default_value_t = Limits::default().max_ttl.as_secs(), value_name = "SECONDS")]
    pub(crate) max_ttl: u64,
    /// Most registrations in one namespace (server).
    #[arg(long, default_value_t = Limits::default().max_registrations_per_namespace, value_name = "N")]
    pub(crate) max_per_namespace: usize,
    /// Most registrations one peer may hold (server).
    #[arg(long, default_value_t = Limits::default().max_registrations_per_peer, value_name = "N")]
    pub(crate) max_per_peer: usize,
    /// Most registrations in all (server).
    #[arg(long, default_value_t = Limits::default().max_registrations, value_name = "N")]
    pub(crate) max_total: usize,
    /// Most registrations from one IP address (an IPv6 /64), whatever the
    /// peer ids (server) [default: a tenth of --max-total].
    #[arg(long, value_name = "N")]
    pub(crate) max_per_ip: Option<usize>,
    /// Most subscriptions open on the server (docs/subscriptions.md).
    #[arg(long, default_value_t = SubscriptionLimits::default().max_subscriptions, value_name = "N")]
    pub(crate) max_subscriptions: usize,
    /// Most subscriptions one peer may hold open, and one connection (server).
    #[arg(long, default_value_t = SubscriptionLimits::default().max_per_peer, value_name = "N")]
    pub(crate) max_subscriptions_per_peer: usize,
    /// Keep the peer id stable: load the key from this file, or create it
    /// (readable by the owner only) if absent. The server defaults to the
    /// data dir's key.
    #[arg(long, value_name = "PATH")]
    pub(crate) key_file: Option<PathBuf>,
    /// Keep the server's registrations and key here (with --redis, only its
    /// key) [default: the platform's data dir, e.g. ~/.local/share/rendezvous].
    #[arg(long, value_name = "DIR", conflicts_with = "in_memory")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Keep nothing on disk (the server's key is new every start unless
    /// --key-file is given).
    #[arg(long)]
    pub(crate) in_memory: bool,
    /// Share the registry with every point using this Redis
    /// (redis://[:PASSWORD@]HOST:PORT[/DB], rediss:// for TLS,
    /// redis+unix:///PATH, or redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER
    /// to follow the primary that Sentinels name) instead of the data dir.
    #[arg(long, value_name = "URL", conflicts_with = "in_memory")]
    pub(crate) redis: Option<String>,
    /// Accept a Redis that evicts any key (maxmemory-policy allkeys-*),
    /// which may drop registrations and the counts that enforce the limits.
    #[arg(long, requires = "redis")]
    pub(crate) redis_allow_eviction: bool,
    /// Acknowledge a registration only once this many Redis replicas hold
    /// it (0: once the primary has it, which a failover can lose).
    #[arg(long, default_value_t = 0, value_name = "N", requires = "redis")]
    pub(crate) redis_min_replicas: usize,
    /// Log namespace statistics every this many seconds (server; 0: never).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub(crate) stats_interval: u64,
    /// Also listen for WebSocket (/ws) on this port, for browsers (server;
    /// 0: a port the system picks).
    #[arg(long, value_name = "PORT")]
    pub(crate) ws_port: Option<u16>,
    /// Serve the WebSocket port as /wss with this PEM certificate chain
    /// (server; with --ws-key).
    #[arg(long, value_name = "PATH", requires_all = ["ws_key", "ws_port"])]
    pub(crate) ws_cert: Option<PathBuf>,
    /// The PEM private key of --ws-cert (server).
    #[arg(long, value_name = "PATH", requires = "ws_cert")]
    pub(crate) ws_key: Option<PathBuf>,
    /// Threads to run on: 1 serves every connection from one thread, with
    /// no wakeups across threads (the least CPU per request); more raise
    /// throughput where one core is not enough.
    #[arg(long, default_value = "1", value_name = "N")]
    pub(crate) threads: NonZeroUsize,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, and /healthz,
    /// /readyz and /namespaces.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) metrics: Option<SocketAddr>,
    /// Most established connections (server; lowered at start if the
    /// process may not open that many files).
    #[arg(long, default_value_t = ConnectionLimits::default().max_established, value_name = "N")]
    pub(crate) max_connections: u32,
    /// Most connections from one peer id (server).
    #[arg(long, default_value_t = ConnectionLimits::default().max_per_peer, value_name = "N")]
    pub(crate) max_connections_per_peer: u32,
    /// Most connections from one IP address, an IPv6 one by its /64 (server).
    #[arg(long, default_value_t = ConnectionLimits::default().max_per_ip, value_name = "N")]
    pub(crate) max_connections_per_ip: u32,
    /// Most connections in their handshake at once; the oldest makes room
    /// for a newer one (server).
    #[arg(long, default_value_t = ConnectionLimits::default().max_handshakes, value_name = "N")]
    pub(crate) max_handshakes: usize,
    /// Longest a connection may take to finish its handshake (server).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) handshake_timeout: u64,
    /// Probe a connection silent for this long with TCP keepalive, every
    /// 10 s, and drop it after 3 probes go unanswered: how a point, which
    /// sends no pings, notices a peer gone without a word (server; 0: the
    /// system's setting, usually off).
    #[arg(long, default_value_t = rendezvous_async_std::transport::KEEPALIVE_IDLE.as_secs(), value_name = "SECONDS")]
    pub(crate) tcp_keepalive: u64,
    /// Close a connection that carries no rendezvous request for this long
    /// (server; 0: never).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub(crate) idle_timeout: u64,
    /// Ask a peer's identify only when it first DISCOVERs or subscribes,
    /// and hold those requests this long at most for the answer, which
    /// names the record flavour it reads (server; 0: ask every peer as it
    /// connects, and hold nothing).
    #[arg(long, default_value_t = ServerOptions::default().reader_wait.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..5))]
    pub(crate) reader_wait: u64,
    /// Most requests per second from one peer; beyond, they are answered
    /// E_UNAVAILABLE (server; 0: no limit).
    #[arg(long, default_value_t = 0.0, value_name = "N")]
    pub(crate) rate_limit: f64,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// The rendezvous point.
    Server,
    /// A peer registering and discovering at a rendezvous point.
    Client,
}

/// The flags, each also read from `RENDEZVOUS_<FLAG>`.
pub(crate) fn command() -> clap::Command {
    Args::command().mut_args(|arg| match arg.get_long().map(env_name) {
        Some(name) => arg.env(name),
        None => arg,
    })
}

fn env_name(long: &str) -> String {
    format!("RENDEZVOUS_{}", long.to_uppercase().replace('-', "_"))
}

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

impl Args {
    /// The flags from the command line and the environment.
    pub(crate) fn from_env() -> Result<Args, clap::Error> {
        Args::from_arg_matches(&command().try_get_matches()?)
    }

    fn listen(&self, port: u16) -> Multiaddr {
        Multiaddr::empty().with(self.listen.into()).with(Protocol::Tcp(port))
    }

    fn identity(&self) -> Identity {
        self.key_file.clone().map_or(Identity::Auto, Identity::KeyFile)
    }

    fn storage(&self) -> Result<Storage, String> {
        let data_dir = self.data_dir.clone();
        match (&self.redis, self.in_memory) {
            (_, true) => Ok(Storage::InMemory),
            (Some(url), false) => Ok(Storage::Redis { url: url.clone(), data_dir }),
            (None, false) => data_dir.or_else(default_data_dir).map(Storage::DataDir).ok_or_else(|| {
                "there is no per-user data directory here (no HOME?): give --data-dir DIR, or --in-memory".into()
            }),
        }
    }

    /// The server's options, one field per flag.
    pub(crate) fn server_options(&self) -> Result<ServerOptions, String> {
        let mut o = ServerOptions {
            identity: self.identity(),
            storage: self.storage()?,
            ..Default::default()
        };
        o.listen = vec![self.listen(self.port)];
        if let Some(port) = self.ws_port {
            let tls = self.ws_cert.is_some();
            let ws = if tls { Protocol::Wss("/".into()) } else { Protocol::Ws("/".into()) };
            o.listen.push(self.listen(port).with(ws));
        }
        if let (Some(cert), Some(key)) = (&self.ws_cert, &self.ws_key) {
            o.ws_tls = Some(
                Tls::from_pem_files(cert, key).map_err(|e| format!("--ws-cert/--ws-key: {e}"))?,
            );
        }
        o.redis.allow_eviction = self.redis_allow_eviction;
        o.redis.min_replicas = self.redis_min_replicas;
        o.limits.min_ttl = secs(self.min_ttl);
        o.limits.max_ttl = secs(self.max_ttl);
        o.limits.max_registrations_per_namespace = self.max_per_namespace;
        o.limits.max_registrations_per_peer = self.max_per_peer;
        o.limits.max_registrations = self.max_total;
        o.limits.max_registrations_per_origin = self.max_per_ip;
        o.subscriptions.max_subscriptions = self.max_subscriptions;
        o.subscriptions.max_per_peer = self.max_subscriptions_per_peer;
        o.rate_limit = (self.rate_limit != 0.0)
            .then(|| RateLimit::per_second(self.rate_limit))
            .transpose()
            .map_err(|e| format!("--rate-limit: {e} (use 0 for none)"))?;
        o.idle_timeout = (self.idle_timeout > 0).then(|| secs(self.idle_timeout));
        o.reader_wait = secs(self.reader_wait);
        o.connections.max_established = self.max_connections;
        o.connections.max_per_peer = self.max_connections_per_peer;
        o.connections.max_per_ip = self.max_connections_per_ip;
        o.connections.max_handshakes = self.max_handshakes;
        o.connections.handshake_timeout = secs(self.handshake_timeout);
        o.connections.tcp_keepalive = (self.tcp_keepalive > 0).then(|| secs(self.tcp_keepalive));
        o.stats_interval = (self.stats_interval > 0).then(|| secs(self.stats_interval));
        o.metrics = self.metrics;
        o.validate().map_err(|e| e.to_string())?;
        Ok(o)
    }

    /// The client's options, one field per flag; `server` is `--address`
    /// parsed.
    pub(crate) fn client_options(&self, server: Multiaddr) -> ClientOptions {
        let mut o = ClientOptions { server, identity: self.identity(), ..Default::default() };
        o.listen = vec![self.listen(self.port)];
        o.client.refresh = self.refresh;
        o.client.record_flavour = self.record_flavour;
        o.client.discover_interval = secs(self.discover_interval);
        o.metrics = self.metrics;
        o
    }
}
