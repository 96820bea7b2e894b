//! Three points sharing one registry through a Redis of the test's own, as
//! real processes: what one acknowledges the others serve, a cookie from
//! one continues at another, a restarted point loads everything, and with
//! Redis down registrations are refused while discovers go on, until Redis
//! comes back with everything it acknowledged; a registration Redis took
//! but the point cannot read back is answered within seconds, and served
//! once the point reads again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Proc, page, peer_of, runtime, start};
use libp2p_core::multiaddr::Multiaddr;
use libp2p_identity::PeerId;
use rendezvous_libp2p::core::proto::{ResponseStatus, read_status};
use rendezvous_libp2p::core::testing::{self, TestPeer};
use rendezvous_libp2p::core::{Dialect, Flavour};
use rendezvous_tests::net::{Raw, raw_connection_as};
use rendezvous_tests::redis::{RedisServer, cli};

struct Point {
    proc: Proc,
    id: PeerId,
    addr: Multiaddr,
    key: std::path::PathBuf,
}

fn point(redis: &RedisServer, name: &str) -> Point {
    point_at(&redis.url(), name)
}

fn point_at(url: &str, name: &str) -> Point {
    let key = std::env::temp_dir().join(format!("rendezvous-point-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&key);
    spawn_at(url, key)
}

fn spawn(redis: &RedisServer, key: std::path::PathBuf) -> Point {
    spawn_at(&redis.url(), key)
}

fn spawn_at(url: &str, key: std::path::PathBuf) -> Point {
    let proc = Proc::start(&[
        "--mode",
        "server",
        "--listen",
        "127.0.0.1",
        "--stats-interval",
        "0",
        "--redis",
        url,
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let (proc, address) = start(proc);
    let (id, addr) = peer_of(&address);
    Point { proc, id, addr, key }
}

async fn connect(peer: &TestPeer, point: &Point) -> Raw {
    raw_connection_as(peer.keypair.clone(), point.id, &point.addr).await
}

async fn register(
    raw: &mut Raw,
    point: &Point,
    peer: &TestPeer,
    ns: &str,
) -> (ResponseStatus, String) {
    let record = peer.record(Dialect::Signed(Flavour::RustLibp2p));
    let answer = raw.request(point.id, &testing::register(ns, record, Some(3600))).await.unwrap();
    let answer = answer.register_response.unwrap();
    (read_status(answer.status).unwrap(), answer.status_text.unwrap_or_default())
}

/// Waits until `point` serves `want` in `ns`; returns how long it took.
async fn until_served(raw: &mut Raw, point: &Point, ns: &str, want: &BTreeSet<PeerId>) -> Duration {
    let started = Instant::now();
    loop {
        let (found, _) = page(raw, point.id, ns, Some(1000), None).await;
        if found.iter().copied().collect::<BTreeSet<_>>() == *want {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{ns}: {found:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn three_points_share_one_registry_through_faults() {
    let mut redis = RedisServer::start("three");
    let (a, b) = (point(&redis, "a"), point(&redis, "b"));
    let mut c = point(&redis, "c");
    let rt = runtime();
    let peers: Vec<TestPeer> = (20..26).map(TestPeer::new).collect();
    rt.block_on(async {
        // Registered at A, served by B and C.
        let mut at_a = connect(&peers[0], &a).await;
        assert_eq!(register(&mut at_a, &a, &peers[0], "chat").await.0, ResponseStatus::Ok);
        let want: BTreeSet<_> = [peers[0].id].into();
        let (mut at_b, mut at_c) = (connect(&peers[1], &b).await, connect(&peers[1], &c).await);
        let lag = until_served(&mut at_b, &b, "chat", &want).await;
        assert!(lag < Duration::from_secs(1), "visible at B after {lag:?}");
        until_served(&mut at_c, &c, "chat", &want).await;

        // Five more at A; a cookie from A continues at B, no gap, no repeat.
        for peer in &peers[1..] {
            let mut raw = connect(peer, &a).await;
            assert_eq!(register(&mut raw, &a, peer, "chat").await.0, ResponseStatus::Ok);
        }
        let all: BTreeSet<_> = peers.iter().map(|p| p.id).collect();
        until_served(&mut at_b, &b, "chat", &all).await;
        let (first, cookie) = page(&mut at_a, a.id, "chat", Some(2), None).await;
        let (rest, _) = page(&mut at_b, b.id, "chat", Some(100), cookie).await;
        assert_eq!(first.len() + rest.len(), all.len(), "{first:?} then {rest:?}");
        assert_eq!(first.iter().chain(&rest).copied().collect::<BTreeSet<_>>(), all);
    });

    // A killed and restarted point loads the whole registry.
    c.proc.kill();
    let c = spawn(&redis, c.key.clone());
    rt.block_on(async {
        let mut at_c = connect(&peers[2], &c).await;
        let all: BTreeSet<_> = peers.iter().map(|p| p.id).collect();
        until_served(&mut at_c, &c, "chat", &all).await;
    });

    // Redis down: a REGISTER is refused within a second; discovers go on.
    redis.kill();
    rt.block_on(async {
        let late = TestPeer::new(40);
        let mut raw = connect(&late, &a).await;
        let asked = Instant::now();
        let (status, text) = register(&mut raw, &a, &late, "chat").await;
        assert!(asked.elapsed() < Duration::from_secs(1), "answered after {:?}", asked.elapsed());
        assert_eq!(status, ResponseStatus::EUnavailable, "{text}");
        assert!(text.contains("unreachable"), "{text}");
        let mut at_b = connect(&peers[1], &b).await;
        let (found, _) = page(&mut at_b, b.id, "chat", Some(1000), None).await;
        assert_eq!(found.len(), peers.len(), "served from memory");
    });

    // Redis back (from its append-only file): everything acknowledged is
    // there, and the points write again.
    redis.restart();
    rt.block_on(async {
        let after = TestPeer::new(41);
        let mut raw = connect(&after, &b).await;
        let started = Instant::now();
        while register(&mut raw, &b, &after, "chat").await.0 != ResponseStatus::Ok {
            assert!(started.elapsed() < Duration::from_secs(15), "B never wrote again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut all: BTreeSet<_> = peers.iter().map(|p| p.id).collect();
        all.insert(after.id);
        for point in [&a, &b, &c] {
            let mut raw = connect(&peers[3], point).await;
            until_served(&mut raw, point, "chat", &all).await;
        }
    });
    for point in [&a, &b, &c] {
        let _ = std::fs::remove_file(&point.key);
    }
}

#[test]
fn a_point_reaches_redis_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (certificate, key) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
    std::fs::write(&certificate, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let redis = RedisServer::start_tls("tls", certificate, key);
    let over_tls = point_at(&redis.tls_url().unwrap(), "tls");
    let plain = point(&redis, "plain");
    let rt = runtime();
    rt.block_on(async {
        let peer = TestPeer::new(50);
        let mut raw = connect(&peer, &over_tls).await;
        assert_eq!(register(&mut raw, &over_tls, &peer, "tls").await.0, ResponseStatus::Ok);
        // What the point wrote over TLS is in the one Redis the other reads.
        let mut at_plain = connect(&peer, &plain).await;
        until_served(&mut at_plain, &plain, "tls", &[peer.id].into()).await;
    });
    for point in [&over_tls, &plain] {
        let _ = std::fs::remove_file(&point.key);
    }
}

#[test]
fn a_point_whose_place_in_the_log_was_trimmed_reloads_everything() {
    use futures::future::poll_fn;
    use rendezvous_async_std::store::redis::{RedisOptions, RedisStore};
    use rendezvous_libp2p::core::store::Commit;
    use rendezvous_libp2p::core::{Durability, Limits, RequestId, Server, ServerConfig, Timestamp};
    use rendezvous_libp2p::store::{Change, Store};

    let redis = RedisServer::start("resync");
    async_std::task::block_on(async {
        let limits = Limits::default();
        let options = RedisOptions::default();
        let (mut follower, _) = RedisStore::connect(&redis.url(), &limits, &options).await.unwrap();
        let (mut writer, _) = RedisStore::connect(&redis.url(), &limits, &options).await.unwrap();
        // A durable server core makes the put, as a point would.
        let config = ServerConfig { durability: Durability::Shared, ..ServerConfig::default() };
        let mut core = Server::new(config).unwrap();
        let peer = TestPeer::new(60);
        let record = peer.record(Dialect::Signed(Flavour::RustLibp2p));
        let now = Timestamp::from_secs(1_800_000_000);
        core.handle_request(now, peer.id, RequestId(1), testing::register("x", record, None));
        writer.submit(core.poll_store().expect("a put"));
        let commit = poll_fn(|cx| writer.poll_commit(cx)).await;
        assert!(matches!(commit, Commit::Logged { .. }), "{commit:?}");
        let limit = Duration::from_secs(10);
        let change =
            async_std::future::timeout(limit, poll_fn(|cx| follower.poll_change(cx))).await;
        assert!(matches!(change, Ok(Change::Replicated(_))), "{change:?}");

        // The entry it stands at is trimmed away, then its connection drops.
        assert_eq!(redis.command(&["XTRIM", "rendezvous:log", "MAXLEN", "0"]), ":1");
        redis.command(&["CLIENT", "KILL", "TYPE", "normal"]);
        let change =
            async_std::future::timeout(limit, poll_fn(|cx| follower.poll_change(cx))).await;
        match change {
            Ok(Change::Resync(snapshot)) => assert_eq!(snapshot.registrations.len(), 1),
            other => panic!("expected a reload, got {other:?}"),
        }
    });
}

#[test]
fn a_register_redis_took_but_the_point_cannot_read_back_is_answered_in_time_and_takes_effect() {
    let redis = RedisServer::start("unread");
    let a = point(&redis, "unread");
    let rt = runtime();
    let peer = TestPeer::new(60);
    rt.block_on(async {
        let mut raw = connect(&peer, &a).await;
        assert_eq!(register(&mut raw, &a, &peer, "warm").await.0, ResponseStatus::Ok);
        // The point's writer still writes, but its follower can no longer
        // read the log: every read it starts from now on is refused, and a
        // blocked XREAD it started before (the only read that lasts) is cut.
        redis.command(&["ACL", "SETUSER", "default", "-xread", "-xrange", "-xrevrange"]);
        let clients = cli(redis.port, &["CLIENT", "LIST"]);
        let blocked = clients
            .lines()
            .filter(|line| line.contains("cmd=xread"))
            .filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")));
        for id in blocked {
            redis.command(&["CLIENT", "KILL", "ID", id]);
        }
        let asked = Instant::now();
        let (status, text) = register(&mut raw, &a, &peer, "late").await;
        let waited = asked.elapsed();
        assert_eq!(status, ResponseStatus::EUnavailable, "{text}");
        assert!(text.contains("may still take effect"), "{text}");
        assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
        // Its own DISCOVER no longer waits for it.
        let (found, _) = page(&mut raw, a.id, "late", Some(10), None).await;
        assert!(found.is_empty(), "{found:?}");
        // The follower reads again: the registration Redis took is served.
        redis.command(&["ACL", "SETUSER", "default", "+@all"]);
        until_served(&mut raw, &a, "late", &[peer.id].into()).await;
    });
    let _ = std::fs::remove_file(&a.key);
}
