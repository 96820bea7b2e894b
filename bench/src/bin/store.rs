//! The embedded store at scale, through the server's own path: a durable
//! server core registers 1M signed registrations (1000 peers x 1000
//! namespaces) into a `RedbStore`, group-committed; then the point restarts
//! (open, compact, read, load into a server core); then 90% of the
//! registrations expire, are deleted, and the point restarts again. Prints
//! the throughput, the start-up time and the file size at each step.
//!
//! `cargo run --release -p rendezvous-bench --bin store [-- COUNT [DIR]]`

use std::path::Path;
use std::time::{Duration, Instant};

use rendezvous_async_std::store::redb::{FILE, RedbStore};
use rendezvous_bench::roomy_server;
use rendezvous_core::testing::{self, TestPeer};
use rendezvous_core::{Dialect, Durability, Flavour, RequestId, Server, Timestamp};
use rendezvous_libp2p::store::{Snapshot, Store};

const PEERS: usize = 1000;

fn server(n: usize) -> Server {
    roomy_server(n, Durability::Local)
}

/// Hands the server's actions to the store and its commits back, until
/// nothing is left in flight.
fn settle(server: &mut Server, store: &mut RedbStore, now: Timestamp) {
    while let Some(action) = server.poll_store() {
        store.submit(action);
    }
    while server.pending_writes() > 0 {
        let commit =
            futures::executor::block_on(futures::future::poll_fn(|cx| store.poll_commit(cx)));
        server.handle_commit(now, commit);
        while server.poll_transmit().is_some() {}
    }
    while server.poll_event().is_some() {}
}

fn size_mib(dir: &Path) -> f64 {
    std::fs::metadata(dir.join(FILE)).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0))
}

fn reopen(dir: &Path, n: usize, now: Timestamp) -> (RedbStore, Server, Duration) {
    let started = Instant::now();
    let (store, snapshot): (RedbStore, Snapshot) = RedbStore::open(dir).expect("the store opens");
    let mut server = server(n);
    let loaded = server.load(now, snapshot.registrations, snapshot.last_seq);
    let took = started.elapsed();
    println!(
        "restart: {} registrations restored, {} expired, in {:.2} s; file {:.1} MiB",
        loaded.registrations,
        loaded.expired,
        took.as_secs_f64(),
        size_mib(dir)
    );
    (store, server, took)
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let dir = std::env::args().nth(2).map_or_else(
        || std::env::temp_dir().join(format!("rendezvous-store-bench-{}", std::process::id())),
        Into::into,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let peers: Vec<TestPeer> = (0..PEERS as u32).map(TestPeer::new).collect();
    let records: Vec<_> =
        peers.iter().map(|p| p.record(Dialect::Signed(Flavour::RustLibp2p))).collect();

    let (mut store, _) = RedbStore::open(&dir).expect("a new store");
    let mut core = server(n);
    let t0 = Timestamp::from_secs(1_800_000_000);
    let started = Instant::now();
    for i in 0..n {
        let (peer, namespace) = (i % PEERS, i / PEERS);
        // One in ten lives three days, the rest two hours.
        let ttl = if i % 10 == 0 { 3 * 24 * 3600 } else { 7200 };
        let request =
            testing::register(&format!("ns-{namespace}"), records[peer].clone(), Some(ttl));
        core.handle_request(t0, peers[peer].id, RequestId(i as u64), request);
        if i % 10_000 == 9_999 {
            settle(&mut core, &mut store, t0);
        }
    }
    settle(&mut core, &mut store, t0);
    let took = started.elapsed();
    let registered = core.stats().registrations;
    println!(
        "{registered} registrations stored through the server core in {:.2} s ({:.0}/s, group commit); file {:.1} MiB, {:.0} bytes per registration",
        took.as_secs_f64(),
        registered as f64 / took.as_secs_f64(),
        size_mib(&dir),
        size_mib(&dir) * 1024.0 * 1024.0 / registered as f64
    );
    drop((store, core));

    let (mut store, mut core, _) = reopen(&dir, n, t0 + Duration::from_secs(60));
    // Three hours later: the two-hour ones are gone.
    let later = t0 + Duration::from_secs(3 * 3600);
    core.handle_timeout(later);
    let deleting = Instant::now();
    settle(&mut core, &mut store, later);
    drop((store, core));
    println!(
        "{} expired registrations deleted in {:.2} s",
        n - n / 10,
        deleting.elapsed().as_secs_f64()
    );
    let (_store, core, _) = reopen(&dir, n, later);
    let live = core.stats().registrations.max(1);
    println!(
        "after compaction: {live} live, file {:.1} MiB, {:.0} bytes per live registration",
        size_mib(&dir),
        size_mib(&dir) * 1024.0 * 1024.0 / live as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
