//! The servers under load, each its own process on loopback, and what
//! `/proc` says about a process's CPU and memory.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use rendezvous_bench::{cpu_seconds, cpu_split, our_binary, status_kib, theirs};
use rendezvous_tests::redis::RedisServer;

use crate::Error;

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Ours,
    /// Ours with its embedded store in a fresh data dir.
    OursDurable,
    /// Ours sharing its registry through a Redis of the tool's own.
    OursRedis,
    /// The same with a replica, each write acknowledged once the replica
    /// holds it (`--redis-min-replicas 1`).
    OursRedisReplica,
    /// Ours with `--metrics`, scraped every second as Prometheus would.
    OursMetrics,
    /// Ours, its clients connected over `/ws` instead of TCP.
    OursWs,
    /// rust-libp2p's rendezvous server behaviour alone (`rust-libp2p-server`).
    Rust,
    /// rust-libp2p's rendezvous point as it publishes it, with identify and
    /// ping (`rust-libp2p-point`).
    RustPoint,
    Py,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::OursDurable => "ours, data dir",
            Kind::OursRedis => "ours, redis",
            Kind::OursRedisReplica => "ours, redis + replica",
            Kind::OursMetrics => "ours, metrics scraped 1/s",
            Kind::OursWs => "ours, over /ws",
            Kind::Rust => "rust-libp2p 0.18",
            Kind::RustPoint => "rust-libp2p 0.18 point (identify, ping)",
            Kind::Py => "py-libp2p 0.8.1",
        }
    }

    /// Whether it is a point of ours.
    pub(crate) fn is_ours(self) -> bool {
        !self.is_rust_libp2p() && self != Kind::Py
    }

    /// Whether it is one of rust-libp2p's, which the reports set against ours.
    pub(crate) fn is_rust_libp2p(self) -> bool {
        matches!(self, Kind::Rust | Kind::RustPoint)
    }

    pub(crate) fn parse(s: &str) -> Result<Kind, String> {
        match s {
            "ours" => Ok(Kind::Ours),
            "ours-durable" => Ok(Kind::OursDurable),
            "ours-redis" => Ok(Kind::OursRedis),
            "ours-redis-replica" => Ok(Kind::OursRedisReplica),
            "ours-metrics" => Ok(Kind::OursMetrics),
            "ours-ws" => Ok(Kind::OursWs),
            "rust" => Ok(Kind::Rust),
            "rust-point" => Ok(Kind::RustPoint),
            "py" => Ok(Kind::Py),
            other => Err(format!("unknown server {other}")),
        }
    }
}

/// What a point of ours allows: everything opened up, so that the load and
/// not a limit is measured, unless a run sets a limit to check it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Allowance {
    /// `--max-per-peer`.
    pub(crate) max_per_peer: usize,
    /// `--min-ttl` in seconds; `None` keeps the point's default.
    pub(crate) min_ttl_s: Option<u64>,
}

impl Allowance {
    /// Every limit far above any load here; the default shortest TTL.
    pub(crate) const OPEN: Allowance = Allowance { max_per_peer: 1_000_000, min_ttl_s: None };
}

/// A server process and what the load needs of it.
pub(crate) struct Server {
    pub(crate) kind: Kind,
    child: Child,
    pub(crate) address: Multiaddr,
    pub(crate) peer: PeerId,
    /// A data dir to remove when done.
    data_dir: Option<PathBuf>,
    /// The Redis it shares, and its replica, when it has them of its own.
    redis: Option<RedisServer>,
    replica: Option<RedisServer>,
    /// Stops the scraper, when there is one.
    scraping: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Its last [`TAIL`] lines of output, to say why it stopped.
    tail: std::sync::Arc<std::sync::Mutex<VecDeque<String>>>,
}

/// Lines of a server's output kept.
const TAIL: usize = 20;

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(scraping) = &self.scraping {
            scraping.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Server {
    /// Starts a server of `kind` with its limits opened up, so that the load
    /// and not a limit is what is measured.
    pub(crate) fn start(kind: Kind) -> Result<Server, Error> {
        let (redis, replica) = match kind {
            Kind::OursRedis => (Some(RedisServer::start("load")), None),
            Kind::OursRedisReplica => {
                let sync_at_once = ["--repl-diskless-sync-delay", "0"];
                let primary = RedisServer::start_args("load-primary", &sync_at_once);
                let replica = RedisServer::start_replica_of("load-replica", &primary, &[]);
                (Some(primary), Some(replica))
            }
            _ => (None, None),
        };
        let mut server = Self::start_with(kind, redis.as_ref().map(RedisServer::url))?;
        (server.redis, server.replica) = (redis, replica);
        Ok(server)
    }

    /// Starts a server of `kind`, sharing the Redis at `redis` if given.
    pub(crate) fn start_with(kind: Kind, redis: Option<String>) -> Result<Server, Error> {
        Self::start_allowing(kind, redis, Allowance::OPEN)
    }

    /// Starts a server of `kind`, sharing the Redis at `redis` if given,
    /// with what `allow` sets (a point of ours; theirs take no limits).
    pub(crate) fn start_allowing(
        kind: Kind,
        redis: Option<String>,
        allow: Allowance,
    ) -> Result<Server, Error> {
        let data_dir = (kind == Kind::OursDurable).then(|| {
            static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::env::temp_dir().join(format!("rendezvous-load-{}-{run}", std::process::id()))
        });
        let mut command = match kind {
            Kind::Rust => Command::new(theirs("rust-libp2p-server")?),
            Kind::RustPoint => Command::new(theirs("rust-libp2p-point")?),
            Kind::Py => {
                let mut c = Command::new(rendezvous_tests::py::python());
                c.arg(rendezvous_tests::py::script("interop.py")).arg("serve");
                c
            }
            _ => {
                // `RENDEZVOUS_BIN` measures another build (say, the one before a change).
                let binary = our_binary()?;
                let mut c = Command::new(binary);
                c.args(["--mode", "server", "--listen", "127.0.0.1", "--stats-interval", "0"]);
                c.args(["--max-total", "10000000", "--max-per-namespace", "1000000"]);
                c.args(["--max-per-ip", "10000000", "--max-connections-per-ip", "100000"]);
                c.arg("--max-per-peer").arg(allow.max_per_peer.to_string());
                if let Some(seconds) = allow.min_ttl_s {
                    c.arg("--min-ttl").arg(seconds.to_string());
                }
                if kind == Kind::OursMetrics {
                    c.args(["--metrics", "127.0.0.1:0"]);
                }
                if kind == Kind::OursWs {
                    c.args(["--ws-port", "0"]);
                }
                if kind == Kind::OursRedisReplica {
                    c.args(["--redis-min-replicas", "1"]);
                }
                match (&data_dir, &redis) {
                    (Some(dir), _) => c.arg("--data-dir").arg(dir),
                    (None, Some(url)) => c.arg("--redis").arg(url),
                    (None, None) => c.arg("--in-memory"),
                };
                c
            }
        };
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let tail = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::with_capacity(TAIL)));
        for pipe in [
            Box::new(child.stdout.take().ok_or("stdout")?) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().ok_or("stderr")?),
        ] {
            let (tx, tail) = (tx.clone(), tail.clone());
            std::thread::spawn(move || {
                // Read to the end whatever the bytes: a reader that stopped
                // would leave the server writing to a closed pipe.
                for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line).into_owned();
                    if let Ok(mut tail) = tail.lock() {
                        if tail.len() == TAIL {
                            tail.pop_front();
                        }
                        tail.push_back(line.clone());
                    }
                    let _ = tx.send(line);
                }
            });
        }
        let (mut metrics, mut ws) = (None, None);
        let address = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| format!("{} did not start", kind.name()))?;
            if let Some(at) = line.split("Metrics at http://").nth(1) {
                metrics = Some(at.trim_end_matches("/metrics").to_owned());
            }
            if let Some(at) = line.split("Listening on: ").nth(1)
                && at.contains("/ws/")
            {
                ws = Some(at.trim().parse::<Multiaddr>()?);
            }
            let found = if kind.is_ours() {
                line.split(" --address ").nth(1)
            } else {
                line.strip_prefix("ADDR ")
            };
            if let Some(address) = found.and_then(|a| a.split_whitespace().next()) {
                match kind {
                    Kind::OursWs => break ws.take().ok_or("no /ws address printed")?,
                    _ => break address.parse::<Multiaddr>()?,
                }
            }
        };
        let Some(Protocol::P2p(peer)) = address.iter().last() else {
            return Err("server address without /p2p/".into());
        };
        let scraping = metrics.map(scrape_every_second);
        let (redis, replica) = (None, None);
        Ok(Server { kind, child, address, peer, data_dir, redis, replica, scraping, tail })
    }

    /// The server's CPU seconds so far.
    pub(crate) fn cpu(&self) -> f64 {
        cpu_seconds(self.child.id()).unwrap_or(0.0)
    }

    /// The server's CPU seconds so far, in user space and in the kernel,
    /// from one reading.
    pub(crate) fn cpu_split(&self) -> (f64, f64) {
        cpu_split(self.child.id()).unwrap_or((0.0, 0.0))
    }

    /// The server's peak resident set, in MiB.
    pub(crate) fn peak_rss_mib(&self) -> f64 {
        status_kib(self.child.id(), "VmHWM:").unwrap_or(0) as f64 / 1024.0
    }

    /// How the server exited, with its last lines of output; `None` while
    /// it runs.
    pub(crate) fn exited(&mut self) -> Option<(String, Vec<String>)> {
        let status = self.child.try_wait().ok()??;
        let tail = self.tail.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default();
        Some((status.to_string(), tail))
    }

    /// The server's resident set now, in MiB.
    pub(crate) fn rss_mib(&self) -> f64 {
        status_kib(self.child.id(), "VmRSS:").unwrap_or(0) as f64 / 1024.0
    }
}

/// Scrapes `http://{at}/metrics` every second until the flag is cleared.
fn scrape_every_second(at: String) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::io::{Read, Write};
    let on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let running = on.clone();
    std::thread::spawn(move || {
        while running.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut stream) = std::net::TcpStream::connect(&at) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
                let _ = stream.read_to_end(&mut Vec::new());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    on
}

/// This process's CPU seconds so far: the load tool shares the cores with
/// the server, and says what it took.
pub(crate) fn own_cpu() -> f64 {
    cpu_seconds("self").unwrap_or(0.0)
}
