//! Redis behind Sentinel, with real processes on loopback: one primary, one
//! replica and three Sentinels. A point registers under load while the
//! replica falls behind (its link to the primary cut, and its password
//! for the primary made wrong so that it cannot make another) and the
//! primary is killed with SIGKILL;
//! Sentinel promotes the replica, which lacks the last writes, and the old
//! primary, restarted once Sentinel promoted the replica, comes back as its
//! replica. With `--redis-min-replicas 0`, what is lost is what the point
//! says it lost, and REGISTERs succeed again within 10 s of the kill. With
//! `--redis-min-replicas 1`, nothing the point acknowledged is lost, and
//! REGISTERs succeed again once a replica follows the new primary: here the
//! old primary, which Sentinel demotes about ten seconds after it comes
//! back (or the replica itself, once it follows the old primary again, when
//! Sentinel gives the failover up). Either way no point serves what the
//! registry no longer holds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Proc, peer_of, runtime, served, start};
use futures::StreamExt;
use rendezvous_libp2p::core::testing::{self, TestPeer};
use rendezvous_libp2p::core::{Dialect, Flavour};
use rendezvous_tests::net::raw_connection_as;
use rendezvous_tests::redis::{Sentinels, cli, cli_script};

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);

/// REGISTERs the load keeps in flight.
const IN_FLIGHT: usize = 16;

/// How long the load goes on, from its start, waiting for REGISTERs to
/// succeed again. A failover here usually has them back within 20 s.
const GIVE_UP: Duration = Duration::from_secs(60);

fn point(sentinels: &Sentinels, min_replicas: &str) -> (Proc, String) {
    let url = sentinels.url();
    let args = ["--mode", "server", "-v", "--listen", "127.0.0.1", "--stats-interval", "0"];
    let mut args: Vec<&str> = args.into();
    args.extend(["--redis", &url, "--redis-min-replicas", min_replicas]);
    args.extend([
        "--max-per-peer",
        "100000",
        "--max-per-ip",
        "100000",
        "--max-per-namespace",
        "100000",
    ]);
    start(Proc::start(&args))
}

struct Outcome {
    /// Namespaces acknowledged OK.
    acknowledged: BTreeSet<String>,
    /// From the kill to the first REGISTER sent after it that was acknowledged.
    recovered: Duration,
    /// From the first REGISTER refused to the first acknowledged after it.
    gap: Duration,
}

/// Registers in new namespaces, [`IN_FLIGHT`] at a time, while the replica is cut off and
/// the primary is killed (then restarted once Sentinel promoted the
/// replica, to come back as its replica); goes on until REGISTERs succeed
/// again, or for [`GIVE_UP`], and then says where Redis stood.
fn register_through_a_failover(
    sentinels: &mut Sentinels,
    address: &str,
    me: &TestPeer,
    while_cut_off: usize,
) -> Result<Outcome, String> {
    let (id, addr) = peer_of(address);
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let kill = Arc::new(Mutex::new(None::<Instant>));
    let load = {
        let (acknowledged, kill, me) = (acknowledged.clone(), kill.clone(), me.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
                let started = Instant::now();
                let (mut recovered, mut first_refused) = (None, None);
                let requests = futures::stream::iter(0..)
                    .map(|i| {
                        let (mut raw, acknowledged) = (raw.clone_handle(), acknowledged.clone());
                        let ns = format!("r{i:06}");
                        let request = testing::register(&ns, me.record(RUST), Some(3600));
                        async move {
                            let sent = Instant::now();
                            let answer = raw.request(id, &request).await;
                            let ok = answer
                                .ok()
                                .and_then(|a| a.register_response)
                                .is_some_and(|r| r.status == Some(0));
                            if ok {
                                acknowledged.lock().unwrap().insert(ns);
                            }
                            (ok, sent, Instant::now())
                        }
                    })
                    .buffer_unordered(IN_FLIGHT);
                futures::pin_mut!(requests);
                while let Some((ok, sent, at)) = requests.next().await {
                    if !ok && first_refused.is_none() {
                        first_refused = Some(at);
                    }
                    let killed = *kill.lock().unwrap();
                    if let (true, Some(killed)) = (ok, killed)
                        && sent > killed
                        && recovered.is_none()
                    {
                        recovered = Some(at - killed);
                    }
                    if let (Some(killed), Some(after)) = (killed, recovered)
                        && at > killed + after + Duration::from_millis(500)
                    {
                        let refused = first_refused.expect("REGISTERs were refused");
                        return Some((after, killed + after - refused));
                    }
                    if started.elapsed() > GIVE_UP {
                        return None;
                    }
                }
                unreachable!("the requests never end")
            })
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    // The replica drops its link to the primary, and cannot make another:
    // it now sends a password the primary does not have. Once the primary
    // has seen the link go, the point goes on for at least 0.3 s and
    // `while_cut_off` acknowledgements; then the primary dies with what it
    // could not pass on.
    let replica = sentinels.replica.port;
    let said =
        cli_script(replica, "CONFIG SET masterauth not-the-password\nCLIENT KILL TYPE master\n");
    assert_eq!(said, "OK\n1\n", "the replica's link to the primary was cut");
    let primary = sentinels.primary.port;
    let cut = Instant::now();
    loop {
        let info = cli(primary, &["INFO", "replication"]);
        if info.contains("connected_slaves:0") {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "the primary still sees its replica:\n{info}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (cut, before) = (Instant::now(), acknowledged.lock().unwrap().len());
    loop {
        let since = acknowledged.lock().unwrap().len() - before;
        if since >= while_cut_off && cut.elapsed() >= Duration::from_millis(300) {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "the point acknowledged {since} REGISTERs in the 5 s its replica was cut off, not {while_cut_off}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    sentinels.primary.kill();
    *kill.lock().unwrap() = Some(Instant::now());
    // The wrong password has done its work. Sentinel may yet make the
    // replica a replica again: it gives a failover up when the promotion
    // outlasts its failover-timeout, and the restarted primary is then the
    // primary again. The replica must be able to follow it then.
    let said = cli(replica, &["CONFIG", "SET", "masterauth", ""]);
    assert_eq!(said.trim(), "OK", "the replica's password for the primary was cleared");
    // Back once Sentinel promoted the replica (it would not fail over if
    // the primary came back within its 1 s), as its replica.
    let old = Some(sentinels.primary.port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sentinels.primary_port() == old {
        assert!(Instant::now() < deadline, "Sentinel never promoted the replica");
        std::thread::sleep(Duration::from_millis(100));
    }
    sentinels.primary.restart();
    let killed = kill.lock().unwrap().expect("killed");
    let Some((recovered, gap)) = load.join().unwrap() else {
        let role = |port: u16| {
            let info = cli(port, &["INFO", "replication"]);
            let lines = info.lines().filter(|l| {
                ["role:", "master_link_status:", "connected_slaves:", "master_port:"]
                    .iter()
                    .any(|key| l.starts_with(key))
            });
            format!("{port}: {}", lines.collect::<Vec<_>>().join(", "))
        };
        return Err(format!(
            "REGISTERs never succeeded again in the {:?} after the kill; Sentinel's primary is \
             {:?}; {}; {}",
            killed.elapsed(),
            sentinels.primary_port(),
            role(sentinels.primary.port),
            role(sentinels.replica.port),
        ));
    };
    let acknowledged = acknowledged.lock().unwrap().clone();
    Ok(Outcome { acknowledged, recovered, gap })
}

/// Two sets as a short account of how they differ.
fn differ(a: &BTreeSet<String>, b: &BTreeSet<String>) -> String {
    let only_a: Vec<_> = a.difference(b).take(5).collect();
    let only_b: Vec<_> = b.difference(a).take(5).collect();
    format!(
        "{} against {}; only in the first: {only_a:?}…; only in the second: {only_b:?}…",
        a.len(),
        b.len()
    )
}

/// What `address` serves of `me`, once it settles (a point reloads after a
/// failover).
fn held(address: &str, me: &TestPeer) -> BTreeSet<String> {
    let (id, addr) = peer_of(address);
    runtime().block_on(async {
        let mut raw = raw_connection_as(TestPeer::new(900).keypair, id, &addr).await;
        let mut last = BTreeSet::new();
        for _ in 0..50 {
            let now: BTreeSet<String> = served(&mut raw, id, me.id).await.into_keys().collect();
            if now == last {
                return now;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        last
    })
}

#[test]
fn with_one_replica_required_nothing_acknowledged_is_lost_in_a_failover() {
    let mut sentinels = Sentinels::start("min1");
    let (mut first, address) = point(&sentinels, "1");
    let me = TestPeer::new(1);
    let outcome = register_through_a_failover(&mut sentinels, &address, &me, 0)
        .unwrap_or_else(|e| panic!("{e}; the point said:\n{}", first.drain().join("\n")));
    assert!(
        outcome.recovered < Duration::from_secs(50),
        "writes resumed after {:?}; the point said:\n{}",
        outcome.recovered,
        first.drain().join("\n")
    );
    // A point started after the failover, and the one that lived through
    // it, hold every registration acknowledged.
    let (_later, later) = point(&sentinels, "1");
    let registry = held(&later, &me);
    let missing: Vec<_> = outcome.acknowledged.difference(&registry).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged are gone: {missing:?}",
        missing.len(),
        outcome.acknowledged.len()
    );
    assert_eq!(
        held(&address, &me),
        registry,
        "the point that lived through it serves the registry"
    );
    eprintln!(
        "{} acknowledged, writes back {:?} after the kill, {:?} after the first refusal",
        outcome.acknowledged.len(),
        outcome.recovered,
        outcome.gap
    );
}

#[test]
fn without_replicas_required_a_failover_loses_only_what_the_point_says_it_lost() {
    let mut sentinels = Sentinels::start("min0");
    let (mut first, address) = point(&sentinels, "0");
    let me = TestPeer::new(2);
    let outcome = register_through_a_failover(&mut sentinels, &address, &me, 64)
        .unwrap_or_else(|e| panic!("{e}; the point said:\n{}", first.drain().join("\n")));
    assert!(
        outcome.recovered < Duration::from_secs(10),
        "writes resumed after {:?}; the point said:\n{}",
        outcome.recovered,
        first.drain().join("\n")
    );
    let (_later, later) = point(&sentinels, "0");
    let registry = held(&later, &me);
    let lost = outcome.acknowledged.difference(&registry).count();
    // The point that lived through it serves what the registry holds, and
    // said how many of its acknowledged registrations were lost.
    let survivor = held(&address, &me);
    assert!(
        survivor == registry,
        "the point that lived through it: {}; it said:\n{}",
        differ(&survivor, &registry),
        first.drain().join("\n")
    );
    // Of the 64 acknowledged once the link was gone, at most the 16 in
    // flight when it went were written before.
    assert!(
        lost >= 64 - IN_FLIGHT,
        "the replica lagged, yet the failover lost only {lost} acknowledged"
    );
    let line = first.expect("registrations this point had acknowledged are gone");
    assert!(
        line.contains(&format!(": {lost} registrations")),
        "{lost} lost; the point said:\n{}",
        first.drain().join("\n")
    );
    eprintln!(
        "{} acknowledged, {lost} lost, writes back {:?} after the kill, {:?} after the first refusal",
        outcome.acknowledged.len(),
        outcome.recovered,
        outcome.gap
    );
}
