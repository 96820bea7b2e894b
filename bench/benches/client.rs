//! The client core alone: what keeping many registrations alive costs.
//!
//! `cargo bench -p rendezvous-bench --bench client`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use libp2p_identity::PeerId;
use rendezvous_core::proto::{self, ResponseStatus};
use rendezvous_core::testing::{self, TestPeer};
use rendezvous_core::{Client, ClientConfig, Namespace, Timestamp};

const TTL: Duration = Duration::from_secs(7200);
const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];

fn granted() -> proto::Message {
    testing::register_response(ResponseStatus::Ok, Some(TTL.as_secs()))
}

/// A client keeping `n` registrations alive, registered one after the other
/// over a refresh period so that their refreshes fall due one at a time.
fn client_with(n: usize) -> (Client, PeerId) {
    let me = TestPeer::new(1);
    let config =
        ClientConfig { max_registrations: n + 1, max_pending: n + 1, ..ClientConfig::default() };
    let mut client =
        Client::new(config, me.keypair.clone(), vec![me.addr.clone()], 1).expect("valid config");
    let server = TestPeer::new(2).id;
    let step = TTL * 4 / 5 / n as u32;
    for i in 0..n {
        let now = Timestamp::ZERO + step * i as u32;
        let namespace = Namespace::new(&format!("ns-{i}"), 255).expect("valid");
        client.register(now, server, namespace, Some(TTL)).expect("room");
        let sent = client.poll_transmit().expect("a REGISTER");
        client.handle_response(now, sent.request_id, granted());
        while client.poll_event().is_some() {}
    }
    (client, server)
}

fn timers(c: &mut Criterion) {
    let mut group = c.benchmark_group("client");
    for n in SIZES {
        let (mut client, _) = client_with(n);
        group.bench_with_input(BenchmarkId::new("poll_timeout", n), &n, |b, _| {
            b.iter(|| black_box(client.poll_timeout()));
        });
        let first = client.poll_timeout().expect("a refresh ahead");
        let idle = Timestamp::ZERO + ((first - Timestamp::ZERO) - Duration::from_nanos(1));
        group.bench_with_input(BenchmarkId::new("tick with nothing due", n), &n, |b, _| {
            b.iter(|| client.handle_timeout(black_box(idle)));
        });
        // One refresh: its timer fires, the REGISTER goes out, the grant
        // comes back and the next refresh is scheduled.
        group.bench_with_input(BenchmarkId::new("refresh", n), &n, |b, _| {
            let answer = granted();
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    let due = client.poll_timeout().expect("a refresh ahead");
                    client.handle_timeout(due);
                    let sent = client.poll_transmit().expect("the refresh");
                    client.handle_response(due, sent.request_id, answer.clone());
                    while client.poll_event().is_some() {}
                }
                started.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, timers);
criterion_main!(benches);
