//! A point with a data dir, as a real process: restarts keep its peer id,
//! its registrations and their expiry; kill -9 under load loses nothing it
//! acknowledged; a data dir it cannot use is refused in one line, untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Proc, SmallDisk, free_port, peer_of, runtime, served, start, temp_dir};
use futures::StreamExt;
use libp2p_identity::PeerId;
use rendezvous_libp2p::core::proto::{ResponseStatus, read_status};
use rendezvous_libp2p::core::testing::{self, TestPeer};
use rendezvous_libp2p::core::{Dialect, Flavour, codec};
use rendezvous_libp2p::framed::Framed;
use rendezvous_tests::net::{Raw, raw_connection_as};

fn point(dir: &Path, port: u16) -> (Proc, String) {
    let server = Proc::start(&[
        "--mode",
        "server",
        "-v",
        "--listen",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--max-per-peer",
        "100000",
        "--max-per-namespace",
        "100000",
        "--max-per-ip",
        "1000000",
        "--stats-interval",
        "0",
    ]);
    start(server)
}

#[test]
fn a_restarted_point_keeps_its_peer_id_registrations_expiry_and_cookies() {
    let (dir, port) = (temp_dir("restart"), free_port());
    let me = TestPeer::new(7);
    let rt = runtime();
    let (server, address) = point(&dir, port);
    let (server_id, addr) = peer_of(&address);
    let (cookie, registered_at) = rt.block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
        for ns in ["a", "b"] {
            let record = me.record(Dialect::Signed(Flavour::RustLibp2p));
            let answer =
                raw.request(server_id, &testing::register(ns, record, Some(600))).await.unwrap();
            assert_eq!(answer.register_response.unwrap().status, Some(0));
        }
        let page = raw.request(server_id, &testing::discover(Some("a"), None, None)).await.unwrap();
        (page.discover_response.unwrap().cookie, Instant::now())
    });
    server.interrupt();
    assert!(server.finish().0.success());

    let (_server, again) = point(&dir, port);
    assert_eq!(again, address, "the same peer id, from the data dir's key");
    rt.block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
        let found = served(&mut raw, server_id, me.id).await;
        let left = 600 - registered_at.elapsed().as_secs();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(found.values().all(|ttl| ttl.abs_diff(left) <= 2), "{found:?} vs {left}");
        // A cookie from before the restart continues where it was.
        let page =
            raw.request(server_id, &testing::discover(Some("a"), None, cookie)).await.unwrap();
        let page = page.discover_response.unwrap();
        assert_eq!(read_status(page.status), Ok(ResponseStatus::Ok));
        assert!(page.registrations.is_empty());
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Requests pipelined on one substream are handled as if one at a time:
/// the REGISTERs go to the store together, and an UNREGISTER and a DISCOVER
/// written behind them see what they stored.
#[test]
fn requests_pipelined_behind_registers_see_them() {
    let (dir, port) = (temp_dir("pipelined"), free_port());
    let me = TestPeer::new(8);
    let (_server, address) = point(&dir, port);
    let (server_id, addr) = peer_of(&address);
    runtime().block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
        let record = me.record(Dialect::Signed(Flavour::RustLibp2p));
        let namespaces: Vec<String> = (0..20).map(|i| format!("ns{i:02}")).collect();
        let mut all = Vec::new();
        for ns in &namespaces {
            let register = testing::register(ns, record.clone(), Some(600));
            all.extend_from_slice(&codec::frame(&register));
        }
        all.extend_from_slice(&codec::frame(&testing::unregister("ns19")));
        all.extend_from_slice(&codec::frame(&testing::discover(None, Some(100), None)));
        let mut framed = Framed::new(raw.open(server_id).await, 1 << 20);
        framed.write_frame(&all).await.unwrap();
        let mut answer = async || {
            let body = framed.read_frame().await.unwrap().expect("an answer");
            codec::decode_message(&body).unwrap()
        };
        for ns in &namespaces {
            assert_eq!(answer().await.register_response.unwrap().status, Some(0), "{ns}");
        }
        // The UNREGISTER has no answer; the DISCOVER's comes next.
        let page = answer().await.discover_response.unwrap();
        let mut found: Vec<String> = page.registrations.into_iter().filter_map(|r| r.ns).collect();
        found.sort();
        assert_eq!(found, namespaces[..19]);
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Registers as fast as 64 substreams allow until the point dies; returns
/// what it acknowledged: namespace → when it expires.
async fn register_until_killed(
    raw: &Raw,
    server: PeerId,
    me: &TestPeer,
    round: usize,
) -> BTreeMap<String, Instant> {
    let record = me.record(Dialect::Signed(Flavour::RustLibp2p));
    let answers = futures::stream::iter(0..100_000usize)
        .map(|i| {
            let mut raw = raw.clone_handle();
            let ns = format!("r{round}-{i}");
            let request = testing::register(&ns, record.clone(), Some(3600));
            async move {
                let sent = Instant::now();
                let answer = raw.request(server, &request).await;
                (ns, sent, answer)
            }
        })
        .buffer_unordered(64)
        .take_while(|(_, _, answer)| futures::future::ready(answer.is_ok()));
    answers
        .filter_map(|(ns, sent, answer)| async move {
            let ok = answer.ok()?.register_response?.status == Some(0);
            ok.then(|| (ns, sent + Duration::from_secs(3600)))
        })
        .collect()
        .await
}

#[test]
fn nothing_acknowledged_is_lost_to_kill_9_under_load() {
    let (dir, port) = (temp_dir("kill"), free_port());
    let me = TestPeer::new(8);
    let rt = runtime();
    let mut acknowledged: BTreeMap<String, Instant> = BTreeMap::new();
    // Kill moments spread over the load, in a fixed order for repeatability.
    let kills_after_ms = [150u64, 700, 40, 1200];
    for (round, after) in kills_after_ms.into_iter().enumerate() {
        let (mut server, address) = point(&dir, port);
        let (server_id, addr) = peer_of(&address);
        let acked = rt.block_on(async {
            let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
            let found = served(&mut raw, server_id, me.id).await;
            for (ns, expires) in &acknowledged {
                let ttl = found
                    .get(ns)
                    .unwrap_or_else(|| panic!("round {round}: {ns} was acknowledged, then lost"));
                let left = expires.saturating_duration_since(Instant::now()).as_secs();
                assert!(
                    ttl.abs_diff(left) <= 2,
                    "round {round}: {ns} serves {ttl} s, expected {left} s"
                );
            }
            let load = register_until_killed(&raw, server_id, &me, round);
            let killer = async {
                tokio::time::sleep(Duration::from_millis(after)).await;
                server.kill();
            };
            let (acked, ()) = futures::join!(load, killer);
            acked
        });
        assert!(
            !acked.is_empty() || after < 100,
            "round {round}: nothing acknowledged in {after} ms"
        );
        acknowledged.extend(acked);
    }
    // One last restart, to check the last round's.
    let (_server, address) = point(&dir, port);
    let (server_id, addr) = peer_of(&address);
    rt.block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
        let found = served(&mut raw, server_id, me.id).await;
        let lost: Vec<_> = acknowledged.keys().filter(|ns| !found.contains_key(*ns)).collect();
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged were lost: {lost:?}",
            lost.len(),
            acknowledged.len()
        );
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

fn fails_with(args: &[&str], reason: &str) {
    let (status, lines) = Proc::start(args).finish();
    assert!(!status.success(), "{args:?} should fail: {lines:#?}");
    let errors: Vec<_> = lines.iter().filter(|l| l.contains("[ERROR]")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {lines:#?}");
    assert!(errors[0].contains(reason), "{:?} lacks {reason:?}", errors[0]);
}

#[test]
fn a_data_dir_the_point_cannot_use_is_refused_in_one_line_and_left_alone() {
    let server = ["--mode", "server", "--listen", "127.0.0.1", "--data-dir"];
    // Cannot be created: its parent is a file.
    let file = temp_dir("not-a-dir");
    std::fs::write(&file, b"a file").unwrap();
    let under_file = file.join("data");
    fails_with(&[&server[..], &[under_file.to_str().unwrap()]].concat(), "cannot use data dir");
    std::fs::remove_file(&file).unwrap();

    // A store file that is not one.
    let dir = temp_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("registry.redb");
    std::fs::write(&store, b"definitely not a database").unwrap();
    fails_with(
        &[&server[..], &[dir.to_str().unwrap()]].concat(),
        "is not a store this version can read",
    );
    assert_eq!(std::fs::read(&store).unwrap(), b"definitely not a database", "left as it was");
    std::fs::remove_dir_all(&dir).unwrap();

    // In use by another running point.
    let dir = temp_dir("busy");
    let (first, _) = point(&dir, free_port());
    fails_with(
        &[&server[..], &[dir.to_str().unwrap(), "--port", "0"]].concat(),
        "in use by another running server",
    );
    drop(first);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_in_memory_point_writes_nothing() {
    let home = temp_dir("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rendezvous"));
    command.args(["--mode", "server", "--in-memory", "--listen", "127.0.0.1"]).env("HOME", &home);
    let server = Proc::spawn(&mut command);
    let (server, _) = start(server);
    drop(server);
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 0, "nothing under HOME");
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn a_full_disk_refuses_registrations_keeps_serving_and_recovers() {
    let disk = SmallDisk::mount("full", "2m");
    let me = TestPeer::new(9);
    let rt = runtime();
    let (_server, address) = point(&disk.0, free_port());
    let (server_id, addr) = peer_of(&address);
    rt.block_on(async {
        let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
        let record = me.record(Dialect::Signed(Flavour::RustLibp2p));
        let mut stored = 0;
        let refusal = loop {
            assert!(stored < 100_000, "2 MiB never filled up");
            let request = testing::register(&format!("ns-{stored}"), record.clone(), Some(3600));
            let answer = raw.request(server_id, &request).await.unwrap().register_response.unwrap();
            if answer.status != Some(0) {
                break answer;
            }
            stored += 1;
        };
        assert_eq!(read_status(refusal.status), Ok(ResponseStatus::EUnavailable));
        let text = refusal.status_text.unwrap();
        assert!(text.contains("could not write"), "{text}");
        // Discovers are still served from memory, with everything stored.
        assert_eq!(served(&mut raw, server_id, me.id).await.len(), stored);
        // Space comes back: after the reopen backoff, registrations work again.
        disk.resize("64m");
        let retried = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let request = testing::register("after", record.clone(), Some(3600));
                let answer = raw.request(server_id, &request).await.unwrap();
                if answer.register_response.unwrap().status == Some(0) {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), retried).await.expect("recovered in time");
    });
}
