//! Running a point: its metrics follow the requests it served and pass
//! promtool; SIGTERM under load answers every request read and stores every
//! registration acknowledged; a flood of silent and half-done connections
//! leaves memory bounded and a real client served, also under a soft limit
//! of 1024 open files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, peer_of, rss_kib, runtime, sample, server, start};
use futures::{AsyncWriteExt, StreamExt};
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_identity::PeerId;
use rendezvous_libp2p::core::codec;
use rendezvous_libp2p::core::proto::{ResponseStatus, read_status};
use rendezvous_libp2p::core::testing::{self, TestPeer};
use rendezvous_libp2p::core::{Dialect, Flavour};
use rendezvous_tests::net::{Raw, raw_connection_as};

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);

fn socket_of(address: &Multiaddr) -> SocketAddr {
    let mut parts = address.iter();
    let (Some(Protocol::Ip4(ip)), Some(Protocol::Tcp(port))) = (parts.next(), parts.next()) else {
        panic!("{address}")
    };
    SocketAddr::from((ip, port))
}

/// `GET /metrics`, with every wait bounded.
fn scrape(at: SocketAddr) -> String {
    let (head, body) = common::http(at, "/metrics");
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// `promtool check metrics` on `text`. Debian's prometheus package has it;
/// .ci/run installs it.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("promtool is needed to check the metrics ({e}): apt-get install prometheus")
    });
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}\n{text}");
}

#[test]
fn metrics_follow_a_known_sequence_of_requests_and_pass_promtool() {
    let mut args = vec!["--mode", "server", "--listen", "127.0.0.1", "--in-memory"];
    args.extend(["--stats-interval", "0", "--metrics", "127.0.0.1:0"]);
    let mut server = Proc::start(&args);
    let line = server.expect("Metrics at http://");
    let (_server, address) = start(server);
    let at: SocketAddr =
        line.split("http://").nth(1).unwrap().trim_end_matches("/metrics").parse().unwrap();
    let (server_id, addr) = peer_of(&address);
    let me = TestPeer::new(3);
    let text = runtime().block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
        for (ns, ttl) in [("a", Some(600)), ("b", Some(600)), ("c", Some(1))] {
            let request = testing::register(ns, me.record(RUST), ttl);
            raw.request(server_id, &request).await.unwrap();
        }
        for _ in 0..3 {
            raw.request(server_id, &testing::discover(Some("a"), None, None)).await.unwrap();
        }
        // UNREGISTER has no answer: write it and end the substream.
        let mut stream = raw.open(server_id).await;
        stream.write_all(&codec::frame(&testing::unregister("b"))).await.unwrap();
        stream.close().await.unwrap();
        // It is counted once the point has read it.
        for _ in 0..100 {
            let text = scrape(at);
            if text.contains("type=\"unregister\"") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the UNREGISTER was never counted:\n{}", scrape(at));
    });
    promtool_check(&text);
    let requests = |kind: &str, status: &str| {
        sample(&text, &format!("rendezvous_requests_total{{type=\"{kind}\",status=\"{status}\"}}"))
    };
    assert_eq!(requests("register", "ok"), 2.0);
    assert_eq!(requests("register", "e_invalid_ttl"), 1.0);
    assert_eq!(requests("discover", "ok"), 3.0);
    assert_eq!(requests("unregister", "none"), 1.0);
    assert_eq!(sample(&text, "rendezvous_registrations"), 1.0);
    assert_eq!(sample(&text, "rendezvous_namespaces"), 1.0);
    assert_eq!(sample(&text, "rendezvous_connections"), 1.0);
    assert_eq!(sample(&text, "rendezvous_request_duration_seconds_count"), 7.0);
    assert_eq!(sample(&text, "rendezvous_request_duration_seconds_bucket{le=\"+Inf\"}"), 7.0);
    assert_eq!(sample(&text, "rendezvous_requests_in_flight"), 0.0);
    assert!(
        !text.contains(&me.id.to_string()) && !text.contains("\"a\""),
        "no peer or namespace labels"
    );
}

/// Registers in fresh namespaces on `streams` substreams at once until the
/// connection ends; returns the namespaces acknowledged and how many
/// answers came after `after` was reached.
async fn register_until_gone(
    raw: &Raw,
    server: PeerId,
    me: &TestPeer,
    streams: usize,
    stop_sent: &std::sync::OnceLock<Instant>,
) -> (BTreeSet<String>, usize) {
    let record = me.record(RUST);
    let answers = futures::stream::iter(0..1_000_000usize)
        .map(|i| {
            let mut raw = raw.clone_handle();
            let ns = format!("n{i}");
            let request = testing::register(&ns, record.clone(), Some(3600));
            async move { (ns, raw.request(server, &request).await) }
        })
        .buffer_unordered(streams)
        .take_while(|(_, answer)| futures::future::ready(answer.is_ok()));
    let (mut acked, mut after_stop) = (BTreeSet::new(), 0);
    let mut answers = std::pin::pin!(answers);
    while let Some((ns, answer)) = answers.next().await {
        let response = answer.unwrap().register_response.unwrap();
        let status = read_status(response.status).unwrap();
        assert!(matches!(status, ResponseStatus::Ok | ResponseStatus::EUnavailable), "{status:?}");
        if stop_sent.get().is_some() {
            after_stop += 1;
        }
        if status == ResponseStatus::Ok {
            acked.insert(ns);
        }
    }
    (acked, after_stop)
}

#[test]
fn sigterm_under_load_answers_what_was_read_and_keeps_what_was_acknowledged() {
    let dir = std::env::temp_dir().join(format!("rendezvous-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let point = || {
        let dir = dir.to_str().unwrap();
        let limits = ["--max-per-peer", "1000000", "--max-total", "1000000"];
        let mut args = vec!["--mode", "server", "-v", "--listen", "127.0.0.1", "--port", &port];
        args.extend(["--data-dir", dir, "--stats-interval", "0", "--max-per-ip", "1000000"]);
        args.extend(limits);
        start(Proc::start(&args))
    };
    let me = TestPeer::new(9);
    let rt = runtime();
    // A SIGTERM can land when nothing happens to be read and unanswered
    // (the point answers within milliseconds): then it shows nothing about
    // draining, and the stop is tried again, up to three times, on the same
    // data dir.
    let mut acked = BTreeSet::new();
    let mut answered_after = Vec::new();
    let mut peer = None;
    for _ in 0..3 {
        let (server, address) = point();
        let (server_id, addr) = peer_of(&address);
        peer = Some((server_id, addr.clone()));
        let stop_sent = std::sync::OnceLock::new();
        let (acked_now, after_stop) = rt.block_on(async {
            let raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
            let load = register_until_gone(&raw, server_id, &me, 200, &stop_sent);
            let stopper = async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                let pid = server.pid().to_string();
                // Marked before `kill` runs: the point may drain everything
                // in flight before the `kill` process has even exited.
                stop_sent.set(Instant::now()).unwrap();
                assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
            };
            futures::join!(load, stopper).0
        });
        let stopped = *stop_sent.get().unwrap();
        let (status, lines) = server.finish();
        let took = stopped.elapsed();
        assert!(status.success(), "exit {status:?}:\n{}", lines.join("\n"));
        assert!(took < Duration::from_secs(6), "took {took:?} to stop");
        assert!(lines.iter().any(|l| l.ends_with("] Stopped")), "{}", lines.join("\n"));
        assert!(!lines.iter().any(|l| l.contains("unanswered")), "{}", lines.join("\n"));
        assert!(acked_now.len() > 100, "only {} acknowledged", acked_now.len());
        println!(
            "{} acknowledged, {after_stop} answered after SIGTERM, stopped in {took:?}",
            acked_now.len()
        );
        acked.extend(acked_now);
        answered_after.push(after_stop);
        if after_stop > 0 {
            break;
        }
    }
    assert!(
        answered_after.iter().any(|&n| n > 0),
        "no request was in flight at any of the SIGTERMs: {answered_after:?}"
    );
    let (server_id, addr) = peer.unwrap();

    // Every acknowledged registration was stored.
    let (_server, _) = point();
    rt.block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
        let mut found = BTreeSet::new();
        let mut cookie = None;
        loop {
            let discover = testing::discover(None, Some(1000), cookie.take());
            let page = raw.request(server_id, &discover).await.unwrap();
            let page = page.discover_response.unwrap();
            if page.registrations.is_empty() {
                break;
            }
            found.extend(page.registrations.iter().map(|r| r.ns.clone().unwrap()));
            cookie = page.cookie;
        }
        let lost: Vec<_> = acked.difference(&found).collect();
        assert!(lost.is_empty(), "{} acknowledged and lost, e.g. {:?}", lost.len(), lost.first());
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Connections that send nothing, and connections that start the
/// multistream handshake and stall: `silent` and `stalled` of them.
fn flood(at: SocketAddr, silent: usize, stalled: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(silent + stalled);
    for i in 0..silent + stalled {
        let Ok(mut stream) = TcpStream::connect_timeout(&at, Duration::from_secs(2)) else {
            continue;
        };
        if i >= silent {
            let _ = stream.write_all(b"\x13/multistream/1.0.0\n\x07/noise\n");
        }
        held.push(stream);
    }
    held
}

/// Registers once from a new connection; returns how long it took.
async fn time_a_registration(server: PeerId, addr: &Multiaddr) -> Duration {
    let me = TestPeer::new(42);
    let started = Instant::now();
    let mut raw = raw_connection_as(me.keypair.clone(), server, addr).await;
    let answer = raw.request(server, &testing::register("legit", me.record(RUST), None)).await;
    let response = answer.unwrap().register_response.unwrap();
    assert_eq!(read_status(response.status), Ok(ResponseStatus::Ok), "{response:?}");
    started.elapsed()
}

/// The flood, then a real client; returns its registration time and the
/// point's RSS in KiB.
fn flooded(server: &Proc, address: &str) -> (Duration, u64) {
    // One flood at a time: they share this process's descriptors.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (server_id, addr) = peer_of(address);
    // This process holds the flood's sockets: make room for them.
    let _ = rlimit::increase_nofile_limit(20_000);
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let n = (soft.saturating_sub(200) as usize).min(10_000);
    let held = flood(socket_of(&addr), n * 9 / 10, n / 10);
    assert!(held.len() >= n * 9 / 10, "opened {} of {n}", held.len());
    let took = runtime().block_on(time_a_registration(server_id, &addr));
    let rss = rss_kib(server.pid());
    println!(
        "{} flood connections; a client registered in {took:?}; point RSS {rss} KiB",
        held.len()
    );
    drop(held);
    (took, rss)
}

/// How long a legitimate client may take to register during a flood.
const SERVED_WITHIN: Duration = Duration::from_secs(1);

/// What a flood may cost the point, at most: its handshake slots (512 by
/// default, a few KiB each) and its buffers; without the bound, 10,000
/// half-done handshakes cost 176 MB.
const RSS_CAP_KIB: u64 = 64 * 1024;

#[test]
fn a_flood_of_silent_and_half_done_connections_leaves_a_client_served() {
    let (server, address) = server(&[]);
    let (took, rss) = flooded(&server, &address);
    assert!(took < SERVED_WITHIN, "a client took {took:?} to register");
    assert!(rss < RSS_CAP_KIB, "RSS {rss} KiB");
}

#[test]
fn a_flood_under_a_limit_of_1024_open_files_leaves_a_client_served() {
    let bin = env!("CARGO_BIN_EXE_rendezvous");
    let script = format!(
        "ulimit -n 1024 && exec {bin} --mode server -v --listen 127.0.0.1 --stats-interval 0 --in-memory"
    );
    let mut server = Proc::spawn(Command::new("sh").args(["-c", &script]));
    server.expect("Open files: limit 1024");
    server.expect("connections lowered from 4096 to 720");
    let (server, address) = start(server);
    let (took, rss) = flooded(&server, &address);
    assert!(took < SERVED_WITHIN, "a client took {took:?} to register");
    assert!(rss < RSS_CAP_KIB, "RSS {rss} KiB");
}
