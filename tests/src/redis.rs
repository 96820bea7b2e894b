//! A `redis-server` of the tests' own on a loopback port, with an
//! append-only file that is fsynced on every write, so that a restart,
//! even after SIGKILL, keeps every write Redis acknowledged.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`; killed and its directory removed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    /// Its TLS port and the certificate and key it serves, if any.
    tls: Option<(u16, PathBuf, PathBuf)>,
    /// More arguments for `redis-server`.
    extra: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl RedisServer {
    /// Starts one on a free port. Panics with what to install if Debian's
    /// `redis-server` is missing (`.ci/run` installs it).
    pub fn start(name: &str) -> RedisServer {
        Self::start_with(name, None)
    }

    /// Starts one that also serves TLS, with the PEM `certificate` and
    /// `key`, on a second port ([`tls_url`](Self::tls_url)).
    pub fn start_tls(name: &str, certificate: PathBuf, key: PathBuf) -> RedisServer {
        Self::start_with(name, Some((free_port(), certificate, key)))
    }

    /// Starts one with more arguments (`--replicaof HOST PORT`, ...).
    pub fn start_args(name: &str, extra: &[&str]) -> RedisServer {
        Self::start_full(name, None, extra.iter().map(|a| a.to_string()).collect())
    }

    /// Starts a replica of `primary` and waits until it is in sync.
    pub fn start_replica_of(name: &str, primary: &RedisServer, extra: &[&str]) -> RedisServer {
        let port = primary.port.to_string();
        let mut args = vec!["--replicaof", "127.0.0.1", &port];
        args.extend(extra);
        let replica = Self::start_args(name, &args);
        wait_until("the replica to sync", || {
            cli(replica.port, &["INFO", "replication"]).contains("master_link_status:up")
        });
        replica
    }

    fn start_with(name: &str, tls: Option<(u16, PathBuf, PathBuf)>) -> RedisServer {
        Self::start_full(name, tls, Vec::new())
    }

    fn start_full(
        name: &str,
        tls: Option<(u16, PathBuf, PathBuf)>,
        extra: Vec<String>,
    ) -> RedisServer {
        let dir =
            std::env::temp_dir().join(format!("rendezvous-redis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut server = RedisServer { child: None, port: free_port(), dir, tls, extra };
        server.restart();
        server
    }

    /// `rediss://127.0.0.1:<tls port>/#insecure`: TLS without checking
    /// the certificate, which is the test's own.
    pub fn tls_url(&self) -> Option<String> {
        self.tls.as_ref().map(|(port, ..)| format!("rediss://127.0.0.1:{port}/#insecure"))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and directory, and waits until it
    /// answers.
    pub fn restart(&mut self) {
        self.kill();
        let mut command = Command::new("redis-server");
        command
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--protected-mode",
                "no",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra);
        if let Some((port, certificate, key)) = &self.tls {
            command
                .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(certificate)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(certificate);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install Debian's redis-server (apt-get install redis-server); .ci/run does")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {} in 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one command and returns the first line of its reply.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis answers");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request += &format!("${}\r\n{arg}\r\n", arg.len());
        }
        stream.write_all(request.as_bytes()).expect("the command goes out");
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary, a replica and three Sentinels (quorum 2, a primary down after
/// 1 s), each a `redis-server` of the test's own on loopback.
pub struct Sentinels {
    /// The first primary.
    pub primary: RedisServer,
    /// Its replica, which a failover promotes.
    pub replica: RedisServer,
    sentinels: Vec<(Child, u16, PathBuf)>,
}

/// The name the Sentinels monitor the primary by.
pub const MASTER: &str = "main";

impl Sentinels {
    /// Starts them all and returns once every Sentinel knows the replica
    /// and the other two (which takes a few seconds: Sentinels meet through
    /// hello messages every 2 s, and learn replicas from the primary's
    /// INFO).
    pub fn start(name: &str) -> Sentinels {
        // Replicas sync at once, not after diskless sync's 5 s wait.
        let primary = RedisServer::start_args(
            &format!("{name}-primary"),
            &["--repl-diskless-sync-delay", "0"],
        );
        let port = primary.port.to_string();
        let replica = RedisServer::start_replica_of(&format!("{name}-replica"), &primary, &[]);
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let dir = std::env::temp_dir()
                .join(format!("rendezvous-sentinel-{name}-{i}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            let sentinel_port = free_port();
            let config = format!(
                "bind 127.0.0.1\nport {sentinel_port}\ndir {}\nsentinel monitor {MASTER} 127.0.0.1 {port} 2\nsentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 2000\n",
                dir.display()
            );
            let file = dir.join("sentinel.conf");
            std::fs::write(&file, config).expect("the sentinel's config");
            let child = Command::new("redis-server")
                .arg(&file)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs Sentinel (--sentinel)");
            sentinels.push((child, sentinel_port, dir));
        }
        let ready = Sentinels { primary, replica, sentinels };
        wait_until("the Sentinels to know the replica and each other", || {
            ready.sentinels.iter().all(|(_, port, _)| {
                let master = cli(*port, &["SENTINEL", "master", MASTER]);
                let field = |name: &str| {
                    let mut lines = master.lines();
                    lines
                        .find(|l| l.trim() == name)
                        .and_then(|_| lines.next())
                        .map(str::trim)
                        .map(str::to_owned)
                };
                field("num-slaves").as_deref() == Some("1")
                    && field("num-other-sentinels").as_deref() == Some("2")
            })
        });
        ready
    }

    /// `redis+sentinel://` naming the three Sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> =
            self.sentinels.iter().map(|(_, p, _)| format!("127.0.0.1:{p}")).collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The port of the primary the Sentinels name now.
    pub fn primary_port(&self) -> Option<u16> {
        let (_, port, _) = self.sentinels.first()?;
        let answer = cli(*port, &["SENTINEL", "get-master-addr-by-name", MASTER]);
        answer.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (child, _, dir) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `redis-cli -p port args…`'s output (Debian's redis-tools, which
/// redis-server depends on).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (Debian's redis-tools) runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `commands`, one per line, sent by `redis-cli -p port` on one
/// connection; its output.
pub fn cli_script(port: u16, commands: &str) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli (Debian's redis-tools) runs");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes()).expect("redis-cli reads its commands");
    }
    let out = child.wait_with_output().expect("redis-cli ends");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits, at most 30 s, until `done`.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
