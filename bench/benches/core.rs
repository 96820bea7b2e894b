//! The server core alone: no network, no signatures unless stated.
//!
//! `cargo bench -p rendezvous-bench --bench core`

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use libp2p_identity::PeerId;
use rendezvous_core::codec::{self, FrameDecoder};
use rendezvous_core::cookie::Cookie;
use rendezvous_core::record::encode_peer_info;
use rendezvous_core::testing::{self, TestPeer};
use rendezvous_core::{
    Dialect, Flavour, Limits, Namespace, Reader, RequestId, Server, ServerConfig, Timestamp,
};

/// A peer id that needs no key: the identity multihash of a made-up
/// ed25519 public key. Fine for unsigned (legacy) registrations.
fn synthetic_peer(i: u64) -> PeerId {
    let mut bytes = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
    bytes.extend_from_slice(&[0u8; 24]);
    bytes.extend_from_slice(&i.to_be_bytes());
    PeerId::from_bytes(&bytes).expect("a well-formed identity multihash")
}

fn server() -> Server {
    let limits = Limits {
        max_registrations: 2_000_000,
        max_registrations_per_namespace: 2_000_000,
        ..Limits::default()
    };
    Server::new(ServerConfig { limits, ..ServerConfig::default() }).expect("consistent limits")
}

fn drain(server: &mut Server) {
    while server.poll_transmit().is_some() {}
    while server.poll_event().is_some() {}
}

/// A server holding `n` legacy registrations in namespace "big".
fn filled(n: u64) -> (Server, Vec<(PeerId, Bytes)>) {
    let addr = "/ip4/127.0.0.1/tcp/4001".parse().expect("multiaddr");
    let peers: Vec<_> = (0..n)
        .map(|i| {
            let peer = synthetic_peer(i);
            (peer, encode_peer_info(&peer, std::slice::from_ref(&addr)))
        })
        .collect();
    let mut s = server();
    for (peer, record) in &peers {
        s.handle_request(
            Timestamp::ZERO,
            *peer,
            RequestId(0),
            testing::register("big", record.clone(), None),
        );
        drain(&mut s);
    }
    (s, peers)
}

fn register(c: &mut Criterion) {
    let mut group = c.benchmark_group("register");
    group.throughput(Throughput::Elements(1));
    let signed = TestPeer::new(1);
    let record = signed.record(Dialect::Signed(Flavour::RustLibp2p));
    // A new signed record each time: parse and verify the signature.
    group.bench_function("signed, verified", |b| {
        let mut s = server();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            // A fresh namespace forces a new registration; the record bytes
            // differ from the cached one only by alternating with a second.
            let bytes = if i.is_multiple_of(2) {
                record.clone()
            } else {
                signed.record(Dialect::Signed(Flavour::Standard))
            };
            s.handle_request(
                Timestamp::ZERO,
                signed.id,
                RequestId(i),
                testing::register(&format!("n{}", i % 900), bytes, None),
            );
            drain(&mut s);
        });
    });
    // The same record again (a refresh): no signature check.
    group.bench_function("signed, refresh with cached check", |b| {
        let mut s = server();
        b.iter(|| {
            s.handle_request(
                Timestamp::ZERO,
                signed.id,
                RequestId(0),
                testing::register("chat", record.clone(), None),
            );
            drain(&mut s);
        });
    });
    let (mut s, peers) = filled(100_000);
    group.bench_function("legacy, refresh at 100k", |b| {
        let mut i = 0;
        b.iter(|| {
            let (peer, record) = &peers[i % peers.len()];
            i += 1;
            s.handle_request(
                Timestamp::ZERO,
                *peer,
                RequestId(0),
                testing::register("big", record.clone(), None),
            );
            drain(&mut s);
        });
    });
    group.finish();
}

fn discover(c: &mut Criterion) {
    let mut group = c.benchmark_group("discover page of 100");
    for n in [10_000u64, 100_000, 1_000_000] {
        let (mut s, peers) = filled(n);
        let reader = peers[0].0;
        s.set_reader_dialect(Timestamp::ZERO, reader, Reader::Legacy);
        let ns = Namespace::new("big", 255).expect("valid");
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            let mut i = 0u64;
            b.iter(|| {
                i = (i + 7919) % n;
                let cookie = Cookie { position: i, namespace: Some(ns.clone()) }.to_bytes();
                s.handle_request(
                    Timestamp::ZERO,
                    reader,
                    RequestId(0),
                    testing::discover(Some("big"), Some(100), Some(cookie)),
                );
                black_box(s.poll_transmit().expect("answered").to_frame());
                drain(&mut s);
            });
        });
    }
    group.finish();

    // Without a cookie a walk starts at a random place: the first page, and
    // the second, which goes on down from there with a first-phase cookie.
    let mut group = c.benchmark_group("discover from a random start, page of 100");
    for n in [10_000u64, 1_000_000] {
        let (mut s, peers) = filled(n);
        let reader = peers[0].0;
        s.set_reader_dialect(Timestamp::ZERO, reader, Reader::Legacy);
        let ask = move |s: &mut Server, cookie| {
            s.handle_request(
                Timestamp::ZERO,
                reader,
                RequestId(0),
                testing::discover(Some("big"), Some(100), cookie),
            );
            let transmit = s.poll_transmit().expect("answered");
            drain(s);
            transmit
        };
        group.bench_with_input(BenchmarkId::new("first page", n), &n, |b, _| {
            b.iter(|| black_box(ask(&mut s, None).to_frame()));
        });
        let cookies: Vec<_> = (0..1000)
            .map(|_| ask(&mut s, None).message.and_then(|m| m.discover_response?.cookie))
            .collect();
        group.bench_with_input(BenchmarkId::new("second page", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                black_box(ask(&mut s, cookies[i % cookies.len()].clone()).to_frame())
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("page through");
    let (mut s, peers) = filled(100_000);
    s.set_reader_dialect(Timestamp::ZERO, peers[0].0, Reader::Legacy);
    group.throughput(Throughput::Elements(100_000));
    group.sample_size(10);
    group.bench_function("100k in pages of 1000", |b| {
        b.iter(|| {
            let mut cookie = None;
            loop {
                s.handle_request(
                    Timestamp::ZERO,
                    peers[0].0,
                    RequestId(0),
                    testing::discover(Some("big"), Some(1000), cookie.take()),
                );
                let page = s
                    .poll_transmit()
                    .and_then(|t| t.message)
                    .expect("answered")
                    .discover_response
                    .expect("a page");
                drain(&mut s);
                if page.registrations.is_empty() {
                    break;
                }
                cookie = page.cookie;
            }
        });
    });
    group.finish();
}

fn expiry(c: &mut Criterion) {
    let mut group = c.benchmark_group("expire");
    group.throughput(Throughput::Elements(100_000));
    group.sample_size(10);
    group.bench_function("100k at once, events drained", |b| {
        b.iter_batched(
            || filled(100_000).0,
            |mut s| {
                s.handle_timeout(Timestamp::ZERO + Duration::from_secs(3 * 24 * 3600));
                drain(&mut s);
                assert_eq!(s.stats().registrations, 0);
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let peer = TestPeer::new(1);
    let message =
        testing::register("chat", peer.record(Dialect::Signed(Flavour::RustLibp2p)), Some(7200));
    let frame = codec::frame(&message);
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("encode REGISTER", |b| {
        b.iter(|| black_box(codec::frame(black_box(&message))))
    });
    group.bench_function("decode REGISTER", |b| {
        b.iter(|| {
            let mut decoder = FrameDecoder::new(8192);
            let body = decoder.feed(&mut &frame[..]).expect("valid").expect("whole");
            black_box(codec::decode_message(&body).expect("valid"))
        })
    });
    group.finish();
}

criterion_group!(benches, register, discover, expiry, wire);
criterion_main!(benches);
