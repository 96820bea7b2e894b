//! The registry, safe over time, against the binary as a real process:
//! requests for one registration take effect in the order the point read
//! them, across substreams; a peer never holds more than its limit, even
//! for a moment; points on one Redis expire by Redis's clock whatever their
//! own says; an unregistered peer never comes back, after a full disk, a
//! Redis pause, a restart or kill -9; with Redis paused under load every
//! REGISTER is answered within a second and memory stays flat; and what
//! Redis holds follows what is live.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, SmallDisk, peer_of, runtime, served, start, temp_dir};
use futures::{AsyncWriteExt, StreamExt};
use libp2p_identity::PeerId;
use rendezvous_libp2p::core::codec;
use rendezvous_libp2p::core::proto::{self, ResponseStatus, read_status};
use rendezvous_libp2p::core::testing::{self, TestPeer};
use rendezvous_libp2p::core::{Dialect, Flavour};
use rendezvous_tests::net::{Raw, libp2p, raw_connection_as, read_frame};
use rendezvous_tests::redis::RedisServer;

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);

/// Taken by the two tests that load the machine, so that they run one at a
/// time: a latency bound measured beside 100,000 writes of another test
/// measures that test.
static LOADED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Where a point keeps its registrations.
enum Keeps {
    Memory,
    Disk(PathBuf),
    Redis(String),
}

impl Keeps {
    fn args(&self) -> Vec<String> {
        match self {
            Keeps::Memory => vec!["--in-memory".into()],
            Keeps::Disk(dir) => vec!["--data-dir".into(), dir.display().to_string()],
            Keeps::Redis(url) => vec!["--redis".into(), url.clone()],
        }
    }
}

fn point(keeps: &Keeps, extra: &[&str]) -> (Proc, String) {
    let mut args: Vec<String> =
        ["--mode", "server", "--listen", "127.0.0.1", "--stats-interval", "0"]
            .map(String::from)
            .into();
    args.extend(keeps.args());
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start(Proc::start(&args))
}

/// A REGISTER of `me` in `ns` for an hour, as a frame.
fn register(me: &TestPeer, ns: &str) -> bytes::Bytes {
    codec::frame(&testing::register(ns, me.record(RUST), Some(3600)))
}

/// Writes one request on a new substream and half-closes it; the answer
/// (if any) is read from the stream returned.
async fn send(raw: &mut Raw, server: PeerId, frame: &[u8]) -> libp2p::Stream {
    let mut stream = raw.open(server).await;
    stream.write_all(frame).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

async fn status_of(stream: &mut libp2p::Stream) -> ResponseStatus {
    let answer = codec::decode_message(&read_frame(stream).await.unwrap()).unwrap();
    read_status(answer.register_response.unwrap().status).unwrap()
}

/// Waits, a bounded time, until `check` holds of what `me` holds at the
/// point; false if it never does.
async fn eventually(
    watcher: &mut Raw,
    server: PeerId,
    me: PeerId,
    check: impl Fn(&BTreeSet<String>) -> bool,
) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let held: BTreeSet<String> = served(watcher, server, me).await.into_keys().collect();
        if check(&held) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[test]
fn an_unregister_read_behind_a_pending_register_wins_in_every_mode() {
    let dir = temp_dir("order");
    let redis = RedisServer::start("order");
    for keeps in [Keeps::Memory, Keeps::Disk(dir.clone()), Keeps::Redis(redis.url())] {
        let (_server, address) = point(&keeps, &[]);
        let (id, addr) = peer_of(&address);
        let (me, other) = (TestPeer::new(1), TestPeer::new(2));
        let stayed = runtime().block_on(async {
            let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
            let mut watcher = raw_connection_as(other.keypair.clone(), id, &addr).await;
            let mut stayed = Vec::new();
            for round in 0..20 {
                let ns = format!("x{round}");
                // REGISTER on one substream, UNREGISTER on a second, before
                // the first is answered.
                let mut first = send(&mut raw, id, &register(&me, &ns)).await;
                let mut second = send(&mut raw, id, &codec::frame(&testing::unregister(&ns))).await;
                second.close().await.unwrap();
                assert_eq!(status_of(&mut first).await, ResponseStatus::Ok);
                if !eventually(&mut watcher, id, me.id, |held| !held.contains(&ns)).await {
                    stayed.push(ns);
                }
            }
            stayed
        });
        assert!(stayed.is_empty(), "registered after their UNREGISTER: {stayed:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_peer_never_holds_more_than_its_limit_even_for_a_moment() {
    let dir = temp_dir("limit");
    let redis = RedisServer::start("limit");
    for keeps in [Keeps::Disk(dir.clone()), Keeps::Redis(redis.url())] {
        let (_server, address) = point(&keeps, &["--max-per-peer", "2"]);
        let (id, addr) = peer_of(&address);
        let (me, other) = (TestPeer::new(3), TestPeer::new(4));
        let most = runtime().block_on(async {
            let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
            let mut watcher = raw_connection_as(other.keypair.clone(), id, &addr).await;
            for ns in ["a", "b"] {
                let mut stream = send(&mut raw, id, &register(&me, ns)).await;
                assert_eq!(status_of(&mut stream).await, ResponseStatus::Ok);
            }
            let mut most = 0;
            for _ in 0..20 {
                // REGISTER(a), UNREGISTER(a) and REGISTER(c), sent at once,
                // watched all the while.
                let mut refresh = send(&mut raw, id, &register(&me, "a")).await;
                let mut gone = send(&mut raw, id, &codec::frame(&testing::unregister("a"))).await;
                gone.close().await.unwrap();
                let mut new = send(&mut raw, id, &register(&me, "c")).await;
                let (_, c) = futures::join!(status_of(&mut refresh), status_of(&mut new));
                let started = Instant::now();
                while started.elapsed() < Duration::from_millis(300) {
                    most = most.max(served(&mut watcher, id, me.id).await.len());
                }
                // Back to {a, b}.
                if c == ResponseStatus::Ok {
                    let mut undo =
                        send(&mut raw, id, &codec::frame(&testing::unregister("c"))).await;
                    undo.close().await.unwrap();
                }
                let mut again = send(&mut raw, id, &register(&me, "a")).await;
                let _ = status_of(&mut again).await;
                eventually(&mut watcher, id, me.id, |held| held.len() == 2 && held.contains("a"))
                    .await;
            }
            most
        });
        assert!(most <= 2, "a peer limited to 2 held {most}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian's libfaketime, preloaded into the point itself: the `faketime`
/// command forks it as a child, which outlives a kill of the command.
fn libfaketime() -> PathBuf {
    let lib = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketime.so.1"))
        .find(|lib| lib.is_file());
    lib.expect("this test needs libfaketime: apt-get install faketime (.ci/run does)")
}

/// A point on `redis` whose wall clock is `offset` off (`+3h`, `-3h`),
/// under libfaketime; the monotonic clock is left alone.
fn skewed_point(redis: &RedisServer, offset: &str) -> (Proc, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rendezvous"));
    command.args(["--mode", "server", "--listen", "127.0.0.1", "--stats-interval", "0"]);
    command.args(["--redis", &redis.url()]);
    command.env("LD_PRELOAD", libfaketime()).env("FAKETIME", offset);
    command.env("FAKETIME_DONT_FAKE_MONOTONIC", "1").env("FAKETIME_NO_CACHE", "1");
    start(Proc::spawn(&mut command))
}

#[test]
fn points_with_wrong_clocks_expire_by_the_shared_registrys_clock() {
    let redis = RedisServer::start("clocks");
    let (_right, right) = point(&Keeps::Redis(redis.url()), &[]);
    let (mut ahead, ahead_address) = skewed_point(&redis, "+3h");
    let (_behind, behind_address) = skewed_point(&redis, "-3h");
    let line = ahead.expect("s ahead of the shared store's");
    assert!(line.contains("10800.") || line.contains("10799."), "{line}");
    let (id, addr) = peer_of(&right);
    runtime().block_on(async {
        let peers: Vec<TestPeer> = (10..30).map(TestPeer::new).collect();
        for me in &peers {
            let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
            let request = testing::register("2h", me.record(RUST), Some(7200));
            let answer = raw.request(id, &request).await.unwrap();
            assert_eq!(answer.register_response.unwrap().status, Some(0));
        }
        // Every point serves all twenty with about 2 h left, whatever its
        // own clock says.
        for address in [&right, &ahead_address, &behind_address] {
            let (id, addr) = peer_of(address);
            let mut raw = raw_connection_as(TestPeer::new(99).keypair, id, &addr).await;
            let started = Instant::now();
            loop {
                let page = raw.request(id, &testing::discover(Some("2h"), Some(100), None)).await;
                let page = page.unwrap().discover_response.unwrap();
                let ttls: Vec<u64> = page.registrations.iter().filter_map(|r| r.ttl).collect();
                if ttls.len() == peers.len() {
                    assert!(ttls.iter().all(|t| (7000..=7200).contains(t)), "{address}: {ttls:?}");
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "{address} serves {ttls:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    assert_eq!(redis.command(&["HLEN", "rendezvous:reg"]), ":20", "nothing expired in Redis");
}

#[test]
fn redis_holds_what_is_live_whatever_the_ttls() {
    let _alone = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start("memory");
    let (_server, address) = point(
        &Keeps::Redis(redis.url()),
        &["--max-per-peer", "100000", "--max-per-namespace", "100000", "--max-per-ip", "100000"],
    );
    let (id, addr) = peer_of(&address);
    let used = || -> u64 {
        let info = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "INFO", "memory"])
            .output()
            .expect("redis-cli, from Debian's redis-tools, which redis-server depends on");
        let text = String::from_utf8(info.stdout).unwrap();
        let line = text.lines().find(|l| l.starts_with("used_memory:")).unwrap();
        line["used_memory:".len()..].trim().parse().unwrap()
    };
    // RENDEZVOUS_TEST_LIVE=10000 gives BENCHMARKS.md's figures.
    let live: usize =
        std::env::var("RENDEZVOUS_TEST_LIVE").ok().and_then(|n| n.parse().ok()).unwrap_or(5000);
    let before = used();
    let me = TestPeer::new(5);
    let after_first = runtime().block_on(async {
        let raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
        // One registration for 72 h, which pinned every later refresh.
        let long = testing::register("long", me.record(RUST), Some(72 * 3600));
        raw.clone_handle().request(id, &long).await.unwrap();
        let mut after_first = 0;
        for round in 0..10 {
            let answers = futures::stream::iter(0..live)
                .map(|i| {
                    let mut raw = raw.clone_handle();
                    let request = testing::register(&format!("n{i}"), me.record(RUST), Some(600));
                    async move { raw.request(id, &request).await }
                })
                .buffer_unordered(64)
                .filter(|answer| futures::future::ready(answer.is_ok()))
                .count()
                .await;
            assert_eq!(answers, live, "round {round}");
            if round == 0 {
                after_first = used();
            }
        }
        after_first
    });
    let after_tenth = used();
    let length: u64 =
        redis.command(&["XLEN", "rendezvous:log"]).trim_start_matches(':').parse().unwrap();
    let per_live = |bytes: u64| (bytes - before) / (live as u64 + 1);
    eprintln!(
        "{} live: Redis used {after_first} bytes after the first round ({} per live registration), {after_tenth} after the tenth ({}); the log holds {length} entries",
        live + 1,
        per_live(after_first),
        per_live(after_tenth)
    );
    // XADD's MAXLEN ~ trims whole nodes of up to 100 entries.
    let bound = (2 * (live as u64 + 1)).max(10_000) + 100;
    assert!(length <= bound, "the log holds {length} entries for {} live", live + 1);
    assert!(
        after_tenth < 2 * after_first,
        "Redis used {after_first} bytes after the first round, {after_tenth} after the tenth"
    );
}

/// Registers `me` in `ns`, and fills the disk with other namespaces until
/// the store refuses a write.
async fn fill(raw: &mut Raw, server: PeerId, me: &TestPeer) {
    for i in 0..100_000 {
        let request = testing::register(&format!("filler-{i:06}"), me.record(RUST), Some(3600));
        let answer = raw.request(server, &request).await.unwrap();
        if answer.register_response.unwrap().status != Some(0) {
            return;
        }
    }
    panic!("the disk never filled up");
}

#[test]
fn an_unregister_during_a_full_disk_is_stored_once_space_returns_and_stays_after_a_restart() {
    let disk = SmallDisk::mount("delete-full", "2m");
    let keeps = Keeps::Disk(disk.0.clone());
    let args =
        ["--max-per-peer", "100000", "--max-per-namespace", "100000", "--max-per-ip", "100000"];
    let (server, address) = point(&keeps, &args);
    let (id, addr) = peer_of(&address);
    let (me, other) = (TestPeer::new(6), TestPeer::new(16));
    runtime().block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
        let mut watcher = raw_connection_as(other.keypair.clone(), id, &addr).await;
        let mut stream = send(&mut raw, id, &register(&me, "x")).await;
        assert_eq!(status_of(&mut stream).await, ResponseStatus::Ok);
        fill(&mut raw, id, &me).await;
        let mut gone = send(&mut raw, id, &codec::frame(&testing::unregister("x"))).await;
        gone.close().await.unwrap();
        // Not gone while the disk cannot take the delete: a point killed
        // now would come back with it, and nobody saw it leave.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held = served(&mut watcher, id, me.id).await;
        assert!(held.contains_key("x"), "applied before it was stored");
        // The peer's own DISCOVER waits for its UNREGISTER, a bounded time.
        let page = raw.request(id, &testing::discover(Some("x"), None, None)).await.unwrap();
        let page = page.discover_response.unwrap();
        assert_eq!(read_status(page.status), Ok(ResponseStatus::EUnavailable), "{page:?}");
        disk.resize("64m");
        let stored = eventually(&mut watcher, id, me.id, |held| !held.contains("x")).await;
        assert!(stored, "never stored");
    });
    server.interrupt();
    assert!(server.finish().0.success());
    let (_again, address) = point(&keeps, &args);
    let (id, addr) = peer_of(&address);
    runtime().block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
        assert!(!served(&mut raw, id, me.id).await.contains_key("x"), "x came back");
    });
}

#[test]
fn an_unregister_during_a_redis_pause_is_stored_once_redis_answers() {
    let redis = RedisServer::start("delete-pause");
    let keeps = Keeps::Redis(redis.url());
    let (_server, address) = point(&keeps, &[]);
    let (id, addr) = peer_of(&address);
    let me = TestPeer::new(7);
    runtime().block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
        let mut stream = send(&mut raw, id, &register(&me, "x")).await;
        assert_eq!(status_of(&mut stream).await, ResponseStatus::Ok);
        assert_eq!(redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]), "+OK");
        let mut gone = send(&mut raw, id, &codec::frame(&testing::unregister("x"))).await;
        gone.close().await.unwrap();
        assert!(eventually(&mut raw, id, me.id, |held| !held.contains("x")).await, "never stored");
    });
    // A point started now, from what Redis holds, does not have it either.
    let (_fresh, address) = point(&keeps, &[]);
    let (id, addr) = peer_of(&address);
    runtime().block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
        assert!(!served(&mut raw, id, me.id).await.contains_key("x"), "x came back");
    });
}

#[test]
fn an_unregister_its_peer_saw_take_effect_survives_kill_9() {
    let dir = temp_dir("kill-unregister");
    let keeps = Keeps::Disk(dir.clone());
    let me = TestPeer::new(8);
    for round in 0..5 {
        let (mut server, address) = point(&keeps, &[]);
        let (id, addr) = peer_of(&address);
        let ns = format!("x{round}");
        runtime().block_on(async {
            let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
            let mut stream = send(&mut raw, id, &register(&me, &ns)).await;
            assert_eq!(status_of(&mut stream).await, ResponseStatus::Ok);
            let mut gone = send(&mut raw, id, &codec::frame(&testing::unregister(&ns))).await;
            gone.close().await.unwrap();
            // The peer's next DISCOVER sees its UNREGISTER: it is stored.
            let page = raw.request(id, &testing::discover(Some(&ns), None, None)).await.unwrap();
            assert!(page.discover_response.unwrap().registrations.is_empty());
        });
        server.kill();
        let (_again, address) = point(&keeps, &[]);
        let (id, addr) = peer_of(&address);
        runtime().block_on(async {
            let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
            assert!(!served(&mut raw, id, me.id).await.contains_key(&ns), "{ns} came back");
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn with_redis_paused_under_load_every_register_is_refused_within_a_second_and_memory_stays_flat() {
    let _alone = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start("pause-load");
    let args =
        ["--max-per-peer", "1000000", "--max-per-namespace", "1000000", "--max-per-ip", "1000000"];
    let (server, address) = point(&Keeps::Redis(redis.url()), &args);
    let (id, addr) = peer_of(&address);
    let (before, slowest, refused) = runtime().block_on(async {
        let mut raws = Vec::new();
        for seed in 0..20 {
            let me = TestPeer::new(100 + seed);
            raws.push((raw_connection_as(me.keypair.clone(), id, &addr).await, me));
        }
        let before = rss_kib(server.pid());
        assert_eq!(redis.command(&["CLIENT", "PAUSE", "4000", "ALL"]), "+OK");
        let paused = Instant::now();
        // 20 connections, each with 64 REGISTERs in flight, for 3 s.
        let load = raws.into_iter().map(|(raw, me)| async move {
            let requests =
                (0..).map_while(|i| (paused.elapsed() < Duration::from_secs(3)).then_some(i));
            futures::stream::iter(requests)
                .map(|i| {
                    let mut raw = raw.clone_handle();
                    let request = testing::register(&format!("p{i}"), me.record(RUST), None);
                    async move {
                        let sent = Instant::now();
                        let answer: proto::Message = raw.request(id, &request).await.unwrap();
                        (sent.elapsed(), answer.register_response.unwrap().status)
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await
        });
        let answers: Vec<_> = futures::future::join_all(load).await.into_iter().flatten().collect();
        let mut took: Vec<Duration> = answers.iter().map(|(took, _)| *took).collect();
        took.sort();
        let slowest = *took.last().unwrap();
        eprintln!(
            "{} answers; p50 {:?}, p99 {:?}, max {slowest:?}",
            took.len(),
            took[took.len() / 2],
            took[took.len() * 99 / 100]
        );
        let refused = answers.iter().filter(|(_, status)| *status == Some(400)).count();
        assert_eq!(refused, answers.len(), "every REGISTER is refused while Redis is paused");
        (before, slowest, refused)
    });
    let after = rss_kib(server.pid());
    assert!(refused > 1000, "only {refused} REGISTERs were sent");
    assert!(slowest <= Duration::from_secs(1), "a REGISTER was answered after {slowest:?}");
    assert!(after < before + 32 * 1024, "RSS went from {before} KiB to {after} KiB");
}

#[test]
fn redis_settings_that_lose_registrations_are_named_at_start() {
    let redis = RedisServer::start("settings");
    let keeps = Keeps::Redis(redis.url());
    assert_eq!(redis.command(&["CONFIG", "SET", "appendonly", "no"]), "+OK");
    let (server, _) = point(&keeps, &[]);
    let warned = server.seen().iter().find(|l| l.contains("appendonly is off")).cloned();
    let warned = warned.unwrap_or_else(|| panic!("no warning in:\n{}", server.seen().join("\n")));
    assert!(warned.contains("[WARNING]") && warned.contains("a Redis restart loses"), "{warned}");
    drop(server);
    // An evicting policy is refused in one line, unless accepted.
    assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]), "+OK");
    let mut args = vec!["--mode", "server", "--listen", "127.0.0.1", "--redis"];
    let url = redis.url();
    args.push(&url);
    let (status, lines) = Proc::start(&args).finish();
    assert!(!status.success());
    let errors: Vec<_> = lines.iter().filter(|l| l.contains("[ERROR]")).collect();
    assert_eq!(errors.len(), 1, "{lines:#?}");
    assert!(errors[0].contains("allkeys-lru") && errors[0].contains("--redis-allow-eviction"));
    let (accepted, _) = point(&keeps, &["--redis-allow-eviction"]);
    assert!(accepted.seen().iter().any(|l| l.contains("accepted by --redis-allow-eviction")));
}

#[test]
fn a_redis_set_to_evict_while_the_point_runs_takes_no_write_until_it_is_set_back() {
    let redis = RedisServer::start("evict-later");
    let keeps = Keeps::Redis(redis.url());
    let (mut server, address) = point(&keeps, &[]);
    let (id, addr) = peer_of(&address);
    let me = TestPeer::new(8);
    runtime().block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
        let mut stream = send(&mut raw, id, &register(&me, "before")).await;
        assert_eq!(status_of(&mut stream).await, ResponseStatus::Ok);
        // Evicting, and the point's connections dropped, as a failover to
        // a Redis set so would: it must not write there (a write taken
        // there would wait for a follower that refuses to follow).
        assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]), "+OK");
        assert!(redis.command(&["CLIENT", "KILL", "TYPE", "normal"]).starts_with(':'));
        for i in 0..10 {
            let mut stream = send(&mut raw, id, &register(&me, &format!("evicting-{i}"))).await;
            let status = status_of(&mut stream).await;
            assert_eq!(status, ResponseStatus::EUnavailable, "REGISTER {i} to an evicting Redis");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]), "+OK");
        let started = Instant::now();
        loop {
            let mut stream = send(&mut raw, id, &register(&me, "after")).await;
            if status_of(&mut stream).await == ResponseStatus::Ok {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "writes never resumed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    server.expect("allkeys-lru");
}
