//! Running processes (the binary, py-libp2p peers) and reading their output,
//! with every wait bounded.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared by several test files

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_identity::PeerId;
use rendezvous_libp2p::core::proto::{ResponseStatus, read_status};
use rendezvous_libp2p::core::record::{Record, RecordLimits};
use rendezvous_libp2p::core::testing;
use rendezvous_tests::net::Raw;

/// Bound on every wait for a line or an exit.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);

pub(crate) struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// Runs the `rendezvous` binary with `args`.
    pub(crate) fn start(args: &[&str]) -> Proc {
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_rendezvous")).args(args))
    }

    /// Runs `command`, collecting its output lines.
    pub(crate) fn spawn(command: &mut Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let (tx, lines) = channel();
        for pipe in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Proc { child, lines, seen: Vec::new() }
    }

    /// Waits for a line containing `needle`; returns it.
    pub(crate) fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line with {needle:?} in time; saw:\n{}", self.seen.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("exited before {needle:?}; saw:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Every line read so far, and those waiting to be read.
    pub(crate) fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Every line read so far.
    pub(crate) fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it at once (SIGKILL): no shutdown, no flush.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn interrupt(&self) {
        let status =
            Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the exit and collects every line printed.
    pub(crate) fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit in time; saw:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server on loopback; returns it and the address clients should use.
/// In memory unless `extra` gives a `--data-dir` or a `--redis`: parallel
/// tests must not share the user's data dir.
pub(crate) fn server(extra: &[&str]) -> (Proc, String) {
    // -v: the tests read the per-registration lines, logged at DEBUG.
    let mut args = vec!["--mode", "server", "-v", "--listen", "127.0.0.1", "--stats-interval", "0"];
    if !extra.iter().any(|a| *a == "--data-dir" || *a == "--redis") {
        args.push("--in-memory");
    }
    args.extend_from_slice(extra);
    let mut server = Proc::start(&args);
    server.expect("Rendezvous server started with peer ID: ");
    start(server)
}

/// Waits for `server`'s connect hint; returns it and the address clients
/// should use.
pub(crate) fn start(mut server: Proc) -> (Proc, String) {
    let line = server.expect(" --mode client --address ");
    let address = line.split(" --address ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    assert!(address.starts_with("/ip4/127.0.0.1/tcp/") && address.contains("/p2p/"), "{address}");
    server.expect("Press Ctrl+C to stop...");
    (server, address)
}

/// `GET path` from the HTTP endpoint at `at`: the head and the body, every
/// wait bounded.
pub(crate) fn http(at: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect_timeout(&at, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_owned(), body.to_owned())
}

/// `GET path`: the status and the body.
pub(crate) fn get(at: SocketAddr, path: &str) -> (u16, String) {
    let (head, body) = http(at, path);
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body)
}

/// Where a point started with `--metrics 127.0.0.1:0` serves HTTP.
pub(crate) fn http_of(server: &mut Proc) -> SocketAddr {
    let seen = server.seen().iter().find(|line| line.contains("Metrics at http://")).cloned();
    let line = seen.unwrap_or_else(|| server.expect("Metrics at http://"));
    line.split("http://").nth(1).unwrap().trim_end_matches("/metrics").parse().unwrap()
}

/// The value of the sample `series` (name and labels, as printed).
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    let line = text.lines().find(|l| l.starts_with(&prefix));
    let line = line.unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
    line[prefix.len()..].parse().unwrap()
}

/// The resident memory of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub(crate) fn client(address: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--mode", "client", "--listen", "127.0.0.1", "--address", address];
    args.extend_from_slice(extra);
    Proc::start(&args)
}

/// The `Listening on:` address of `server` that ends in
/// `/<suffix>/p2p/...` (`ws`, `wss`).
pub(crate) fn listening(server: &Proc, suffix: &str) -> String {
    let marker = format!("/{suffix}/p2p/");
    server
        .seen()
        .iter()
        .filter_map(|line| line.split("Listening on: ").nth(1))
        .find(|address| address.contains(&marker))
        .unwrap_or_else(|| panic!("no {suffix} address in:\n{}", server.seen().join("\n")))
        .to_owned()
}

/// A one-shot client (register, discover, unregister) over `address`
/// finds `peer` in `namespace`.
pub(crate) fn finds(address: &str, namespace: &str, peer: &str) {
    let once = client(address, &["--namespace", namespace, "--refresh", "false"]);
    let (status, lines) = once.finish();
    assert!(status.success(), "{}", lines.join("\n"));
    assert!(
        lines.iter().any(|line| line.contains("Found peer: ") && line.contains(peer)),
        "a client over {address} did not find {peer}:\n{}",
        lines.join("\n")
    );
}

pub(crate) fn peer_id(line: &str) -> String {
    line.rsplit(' ').next().unwrap().to_owned()
}

/// A fresh directory for one test.
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rendezvous-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The peer and address of a point's `/p2p/` address.
pub(crate) fn peer_of(address: &str) -> (PeerId, Multiaddr) {
    let address: Multiaddr = address.parse().unwrap();
    let Some(Protocol::P2p(peer)) = address.iter().last() else { panic!("{address}") };
    (peer, address)
}

/// The peers of one page of `ns` at `server`, and its cookie.
pub(crate) async fn page(
    raw: &mut Raw,
    server: PeerId,
    ns: &str,
    limit: Option<u64>,
    cookie: Option<bytes::Bytes>,
) -> (Vec<PeerId>, Option<bytes::Bytes>) {
    let answer = raw.request(server, &testing::discover(Some(ns), limit, cookie)).await.unwrap();
    let page = answer.discover_response.unwrap();
    assert_eq!(read_status(page.status), Ok(ResponseStatus::Ok), "{:?}", page.status_text);
    let limits = RecordLimits { max_bytes: 4096, max_addresses: 8 };
    let peers = page
        .registrations
        .iter()
        .map(|r| {
            Record::parse(r.signed_peer_record.clone().unwrap(), &limits).unwrap().peer.unwrap()
        })
        .collect();
    (peers, page.cookie)
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Every registration of `me` the point serves, walking every namespace
/// with cookies: namespace → seconds left.
pub(crate) async fn served(raw: &mut Raw, server: PeerId, me: PeerId) -> BTreeMap<String, u64> {
    let (mut found, mut cookie) = (BTreeMap::new(), None);
    loop {
        let page =
            raw.request(server, &testing::discover(None, Some(1000), cookie.take())).await.unwrap();
        let page = page.discover_response.unwrap();
        assert_eq!(read_status(page.status), Ok(ResponseStatus::Ok));
        if page.registrations.is_empty() {
            return found;
        }
        for entry in &page.registrations {
            let limits = RecordLimits { max_bytes: 4096, max_addresses: 8 };
            let record = Record::parse(entry.signed_peer_record.clone().unwrap(), &limits).unwrap();
            if record.peer == Some(me) {
                found.insert(entry.ns.clone().unwrap(), entry.ttl.unwrap());
            }
        }
        cookie = page.cookie;
    }
}

/// A tmpfs of a given size, mounted for one test (root only).
pub(crate) struct SmallDisk(pub(crate) PathBuf);

impl SmallDisk {
    pub(crate) fn mount(name: &str, size: &str) -> SmallDisk {
        let dir = temp_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()])
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "this test fills a tmpfs it mounts, which needs root (CI runs as root)"
        );
        SmallDisk(dir)
    }

    pub(crate) fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}"), self.0.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
