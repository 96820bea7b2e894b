//! Command-line flags: the py-libp2p rendezvous demo's, with the same
//! meanings and defaults, plus server limits, a key file and statistics.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use rendezvous_async_std::host::ConnectionLimits;
use rendezvous_async_std::logging;
use rendezvous_async_std::node::{ClientOptions, Identity, ServerOptions};
use rendezvous_async_std::store::{Storage, default_data_dir};
use rendezvous_async_std::websocket::Tls;
use rendezvous_libp2p::core::{Limits, RecordFlavour};
use rendezvous_libp2p::server::RateLimit;

/// A libp2p rendezvous point and client.
///
/// Start a server, then clients in other terminals with the address it
/// prints:
///
///   rendezvous --mode server --port 8080
///   rendezvous --mode client --address /ip4/127.0.0.1/tcp/8080/p2p/12D3Koo... --namespace my-app
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
    #[arg(short, long, num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = parse_bool, value_name = "BOOL")]
    pub(crate) refresh: bool,

    /// TTL to ask for, in seconds (client).
    #[arg(long, default_value_t = 7200, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) ttl: u64,

    /// Record sent to the server (client): auto finds out per server,
    /// stepping from rust-libp2p's envelope to the standard one to the legacy
    /// PeerInfo only when the server rejects one.
    #[arg(long, default_value = "auto", value_name = "FLAVOUR", value_parser = parse_flavour)]
    pub(crate) record_flavour: RecordFlavour,

    /// In refresh mode, rediscover the namespace this often, in seconds,
    /// and log each peer that appears or goes (client).
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

    /// Keep the peer id stable: load the key from this file, or create it
    /// (readable by the owner only) if absent. The server defaults to the
    /// data dir's key.
    #[arg(long, value_name = "PATH")]
    pub(crate) key_file: Option<PathBuf>,

    /// Keep the server's registrations and key here, so that a restarted
    /// server keeps both [default: the platform's data dir, e.g.
    /// ~/.local/share/rendezvous].
    #[arg(long, value_name = "DIR", conflicts_with = "in_memory")]
    pub(crate) data_dir: Option<PathBuf>,

    /// Keep nothing on disk (the server's key is new every start unless
    /// --key-file is given).
    #[arg(long)]
    pub(crate) in_memory: bool,

    /// Share the registry with every point using this Redis
    /// (redis://HOST:PORT[/DB], or rediss:// for TLS) instead of keeping it
    /// in the data dir.
    #[arg(long, value_name = "URL", conflicts_with_all = ["in_memory", "data_dir"])]
    pub(crate) redis: Option<String>,

    /// Most registrations from one IP address (an IPv6 /64), whatever the
    /// peer ids (server) [default: a tenth of --max-total].
    #[arg(long, value_name = "N")]
    pub(crate) max_per_ip: Option<usize>,

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

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
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
    #[arg(long, default_value_t = ConnectionLimits::default().handshakes.max, value_name = "N")]
    pub(crate) max_handshakes: usize,

    /// Longest a connection may take to finish its handshake (server).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) handshake_timeout: u64,

    /// Close a connection that carries no rendezvous request for this long
    /// (server; 0: never).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub(crate) idle_timeout: u64,

    /// Most requests per second from one peer; beyond, they are answered
    /// E_UNAVAILABLE (server; 0: no limit).
    #[arg(long, default_value_t = 0.0, value_name = "N")]
    pub(crate) rate_limit: f64,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// `2025-09-21 14:05:47,378 [INFO] [rendezvous::server] ...`
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormat> for logging::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => logging::LogFormat::Text,
            LogFormat::Json => logging::LogFormat::Json,
        }
    }
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// The rendezvous point.
    Server,
    /// A peer registering and discovering at a rendezvous point.
    Client,
}

/// How to run this binary again, as printed in the server's connect hint:
/// its name when it is on `PATH`, the cargo command when it runs from a
/// cargo target directory (the README's `cargo run`), its path otherwise.
pub(crate) fn command() -> String {
    let Ok(exe) = std::env::current_exe().and_then(|e| e.canonicalize()) else {
        return "rendezvous".into();
    };
    let paths = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&paths)
        .any(|dir| dir.join("rendezvous").canonicalize().is_ok_and(|p| p == exe));
    if on_path {
        "rendezvous".into()
    } else if exe.components().any(|c| c.as_os_str() == "target") {
        "cargo run --release --bin rendezvous --".into()
    } else {
        shell_word(&exe.display().to_string())
    }
}

/// `word` as one shell word: quoted unless it is plain.
pub(crate) fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn parse_flavour(s: &str) -> Result<RecordFlavour, String> {
    s.parse()
}

impl Args {
    fn listen(&self) -> Vec<Multiaddr> {
        vec![Multiaddr::empty().with(self.listen.into()).with(Protocol::Tcp(self.port))]
    }

    /// The TCP listener, and the WebSocket one if asked for.
    fn server_listen(&self) -> Vec<Multiaddr> {
        let mut listen = self.listen();
        if let Some(port) = self.ws_port {
            let ws = if self.ws_cert.is_some() {
                Protocol::Wss("/".into())
            } else {
                Protocol::Ws("/".into())
            };
            listen.push(
                Multiaddr::empty().with(self.listen.into()).with(Protocol::Tcp(port)).with(ws),
            );
        }
        listen
    }

    fn identity(&self) -> Identity {
        self.key_file.clone().map_or(Identity::Auto, Identity::KeyFile)
    }

    /// Where the server keeps its registrations.
    pub(crate) fn storage(&self) -> Result<Storage, String> {
        if self.in_memory {
            return Ok(Storage::InMemory);
        }
        if let Some(url) = &self.redis {
            return Ok(Storage::Redis(url.clone()));
        }
        let dir = self.data_dir.clone().or_else(default_data_dir).ok_or(
            "there is no per-user data directory here (no HOME?): give --data-dir DIR, or --in-memory",
        )?;
        Ok(Storage::DataDir(dir))
    }

    /// The server's options, one field per flag.
    pub(crate) fn server_options(&self) -> Result<ServerOptions, String> {
        let defaults = ConnectionLimits::default();
        let ws_tls = match (&self.ws_cert, &self.ws_key) {
            (Some(cert), Some(key)) => Some(
                Tls::from_pem_files(cert, key).map_err(|e| format!("--ws-cert/--ws-key: {e}"))?,
            ),
            _ => None,
        };
        let mut options = ServerOptions {
            listen: self.server_listen(),
            ws_tls,
            identity: self.identity(),
            storage: self.storage()?,
            stats_interval: Some(Duration::from_secs(self.stats_interval)),
            metrics: self.metrics,
            connections: ConnectionLimits {
                max_established: self.max_connections,
                max_per_peer: self.max_connections_per_peer,
                max_per_ip: self.max_connections_per_ip,
                handshakes: rendezvous_async_std::handshakes::Limits {
                    max: self.max_handshakes,
                    max_per_ip: defaults.handshakes.max_per_ip.min(self.max_handshakes),
                },
                handshake_timeout: Duration::from_secs(self.handshake_timeout),
            },
            ..ServerOptions::default()
        };
        if !(self.rate_limit >= 0.0 && self.rate_limit.is_finite()) {
            return Err(format!("--rate-limit {} is not a rate (use 0 for none)", self.rate_limit));
        }
        let rendezvous = &mut options.rendezvous;
        rendezvous.idle_timeout = Some(Duration::from_secs(self.idle_timeout));
        rendezvous.core.rate_limit = (self.rate_limit > 0.0)
            .then(|| RateLimit::per_second(self.rate_limit))
            .transpose()
            .map_err(|e| format!("--rate-limit: {e}"))?;
        let limits = &mut options.rendezvous.core.limits;
        let (min, max) = (Duration::from_secs(self.min_ttl), Duration::from_secs(self.max_ttl));
        limits.min_ttl = min;
        limits.max_ttl = max;
        limits.default_ttl = Limits::default().default_ttl.clamp(min, max.max(min));
        limits.max_registrations_per_namespace = self.max_per_namespace;
        limits.max_registrations_per_peer = self.max_per_peer;
        limits.max_registrations = self.max_total;
        limits.max_registrations_per_origin =
            self.max_per_ip.unwrap_or((self.max_total / 10).max(1));
        Ok(options)
    }

    /// The client's options, one field per flag; `server` is `--address`
    /// parsed.
    pub(crate) fn client_options(&self, server: Multiaddr) -> ClientOptions {
        let mut options = ClientOptions {
            server,
            listen: self.listen(),
            identity: self.identity(),
            metrics: self.metrics,
            ..ClientOptions::default()
        };
        let core = &mut options.rendezvous.core;
        core.refresh = self.refresh;
        core.record_flavour = self.record_flavour;
        core.discover_interval = Duration::from_secs(self.discover_interval);
        options
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{s}' is not a boolean (use True or False)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("rendezvous").chain(args.iter().copied()))
    }

    #[test]
    fn the_demo_flags_parse_with_its_defaults() {
        let args = parse(&["--mode", "server"]).unwrap();
        assert_eq!(
            (args.mode, args.port, args.namespace.as_str(), args.refresh),
            (Mode::Server, 0, "rendezvous", true)
        );
        assert_eq!(args.ttl, 7200);
        let args = parse(&[
            "--mode",
            "client",
            "--address",
            "/ip4/1.2.3.4/tcp/1",
            "-n",
            "my-app",
            "-p",
            "9",
        ])
        .unwrap();
        assert_eq!(
            (args.address.as_str(), args.namespace.as_str(), args.port),
            ("/ip4/1.2.3.4/tcp/1", "my-app", 9)
        );
    }

    #[test]
    fn refresh_takes_an_optional_python_style_boolean() {
        assert!(!parse(&["--mode", "client", "--refresh", "False"]).unwrap().refresh);
        assert!(parse(&["--mode", "client", "-r"]).unwrap().refresh);
        assert!(parse(&["--mode", "client", "-r", "True"]).unwrap().refresh);
        assert!(parse(&["--mode", "client", "--refresh", "maybe"]).is_err());
    }

    #[test]
    fn words_the_shell_would_split_are_quoted() {
        assert_eq!(shell_word("my-app"), "my-app");
        assert_eq!(shell_word("my app"), "'my app'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn a_zero_ttl_and_an_unknown_flavour_are_refused() {
        assert!(parse(&["--mode", "client", "--ttl", "0"]).is_err());
        assert!(parse(&["--mode", "client", "--record-flavour", "purple"]).is_err());
        let args = parse(&["--mode", "client", "--record-flavour", "standard"]).unwrap();
        assert_eq!(args.record_flavour, RecordFlavour::Standard);
    }

    #[test]
    fn the_address_quota_defaults_to_a_tenth_of_the_total() {
        let args = parse(&["--mode", "server", "--in-memory", "--max-total", "50000"]).unwrap();
        let limits = args.server_options().unwrap().rendezvous.core.limits;
        assert_eq!(limits.max_registrations_per_origin, 5000);
        let args = parse(&["--mode", "server", "--in-memory", "--max-per-ip", "7"]).unwrap();
        let limits = args.server_options().unwrap().rendezvous.core.limits;
        assert_eq!(limits.max_registrations_per_origin, 7);
        assert!(parse(&["--mode", "server", "--rate-limit", "-1"]).is_err());
        let args = parse(&["--mode", "server", "--in-memory", "--rate-limit", "NaN"]).unwrap();
        assert!(args.server_options().is_err());
    }

    #[test]
    fn a_missing_or_unknown_mode_is_an_error() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--mode", "relay"]).is_err());
    }
}
