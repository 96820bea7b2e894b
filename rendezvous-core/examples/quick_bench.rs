//! First numbers for the server core alone, no network: register throughput
//! (signed record verified, signed record cached, legacy record) and the cost
//! of one DISCOVER page at 100k registrations in one namespace.
//!
//! `cargo run --release -p rendezvous-core --features testing --example quick_bench`
//!
//! Single-threaded, wall-clock timing: numbers vary with the machine's load.
//! The full benchmark suite is separate.

// A benchmark is where reading the wall clock is the point.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p_identity::PeerId;
use rendezvous_core::proto::{ResponseStatus, read_status};
use rendezvous_core::record::encode_peer_info;
use rendezvous_core::testing::{self, TestPeer};
use rendezvous_core::{Dialect, Flavour, Limits, RequestId, Server, ServerConfig, Timestamp};

const N: usize = 100_000;

fn synthetic_peer(i: u64) -> PeerId {
    // An identity multihash of an ed25519 public-key protobuf; the key bytes
    // need not be a curve point for a legacy (unsigned) registration.
    let mut bytes = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
    bytes.extend_from_slice(&[0u8; 24]);
    bytes.extend_from_slice(&i.to_be_bytes());
    PeerId::from_bytes(&bytes).expect("a well-formed identity multihash")
}

fn server() -> Server {
    let limits = Limits {
        max_registrations: 2_000_000,
        max_registrations_per_namespace: 2_000_000,
        max_registrations_per_peer: 1000,
        ..Limits::default()
    };
    Server::new(ServerConfig { limits, ..ServerConfig::default() }).expect("consistent limits")
}

fn register(server: &mut Server, peer: PeerId, ns: &str, record: Bytes) {
    server.handle_request(Timestamp::ZERO, peer, RequestId(0), testing::register(ns, record, None));
    let response = server.poll_transmit().expect("answered").message.register_response;
    assert_eq!(read_status(response.and_then(|r| r.status)), Ok(ResponseStatus::Ok));
    while server.poll_event().is_some() {}
}

fn report(what: &str, ops: usize, took: Duration) {
    let per = took / ops as u32;
    let rate = ops as f64 / took.as_secs_f64();
    println!("{what:<52} {ops:>8} ops  {per:>10.2?}/op  {rate:>12.0} ops/s");
}

fn main() {
    // Signed records: 1000 peers, each first registration verifies a
    // signature, the next 99 (other namespaces, same bytes) reuse it.
    let peers: Vec<TestPeer> = (0..1000).map(TestPeer::new).collect();
    let records: Vec<Bytes> =
        peers.iter().map(|p| p.record(Dialect::Signed(Flavour::RustLibp2p))).collect();
    let names: Vec<String> = (0..100).map(|i| format!("ns-{i}")).collect();
    let mut signed = server();
    let start = Instant::now();
    for (p, r) in peers.iter().zip(&records) {
        register(&mut signed, p.id, &names[0], r.clone());
    }
    report("register, signed record verified", peers.len(), start.elapsed());
    let start = Instant::now();
    for name in &names[1..] {
        for (p, r) in peers.iter().zip(&records) {
            register(&mut signed, p.id, name, r.clone());
        }
    }
    report("register, signed record cached (new namespace)", 99 * peers.len(), start.elapsed());
    let start = Instant::now();
    for name in &names {
        for (p, r) in peers.iter().zip(&records) {
            register(&mut signed, p.id, name, r.clone());
        }
    }
    report("refresh at 100k, signed record cached", 100 * peers.len(), start.elapsed());

    // Legacy records, 100k peers in one namespace.
    let addr = "/ip4/127.0.0.1/tcp/4001".parse().expect("multiaddr");
    let legacy: Vec<(PeerId, Bytes)> = (0..N as u64)
        .map(|i| {
            let peer = synthetic_peer(i);
            (peer, encode_peer_info(&peer, std::slice::from_ref(&addr)))
        })
        .collect();
    let mut big = server();
    let start = Instant::now();
    for (peer, record) in &legacy {
        register(&mut big, *peer, "big", record.clone());
    }
    report("register, legacy record, into 1 namespace to 100k", N, start.elapsed());

    let reader = legacy[0].0;
    big.set_reader_dialect(reader, Dialect::Legacy);
    let pages = 2_000;
    let start = Instant::now();
    for i in 0..pages {
        let position = (i as u64 * 7919) % N as u64;
        let cookie = rendezvous_core::cookie::Cookie {
            position,
            namespace: Some(rendezvous_core::Namespace::new("big", 255).expect("valid")),
        };
        let message = testing::discover(Some("big"), Some(100), Some(cookie.to_bytes()));
        big.handle_request(Timestamp::ZERO, reader, RequestId(1), message);
        black_box(big.poll_transmit().expect("answered").to_frame());
        while big.poll_event().is_some() {}
    }
    report("discover page of 100 at 100k (encoded frame)", pages, start.elapsed());

    let start = Instant::now();
    let (mut cookie, mut seen) = (None, 0);
    loop {
        let message = testing::discover(Some("big"), Some(1000), cookie.take());
        big.handle_request(Timestamp::ZERO, reader, RequestId(2), message);
        let response = big.poll_transmit().expect("answered").message.discover_response;
        let page = response.expect("a discover response");
        if page.registrations.is_empty() {
            break;
        }
        seen += page.registrations.len();
        cookie = page.cookie;
        while big.poll_event().is_some() {}
    }
    assert_eq!(seen, N);
    report("page through 100k, pages of 1000 (per registration)", N, start.elapsed());

    let start = Instant::now();
    big.handle_timeout(Timestamp::from_secs(3 * 24 * 3600));
    let expired = std::iter::from_fn(|| big.poll_event())
        .filter(|e| matches!(e, rendezvous_core::ServerEvent::Expired { .. }))
        .count();
    let took = start.elapsed();
    assert_eq!((expired, big.stats().registrations, big.stats().dropped_events), (N, 0, 0));
    report("expire 100k, events drained", expired, took);
}
