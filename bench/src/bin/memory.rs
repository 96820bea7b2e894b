//! Memory per registration at scale: fills a server core with 1M signed
//! registrations (1000 peers x 1000 namespaces, one record per peer shared
//! by its registrations, as a real peer's would be) and 1M legacy ones
//! (1M distinct peers), and reports the growth of the process's resident
//! set.
//!
//! `cargo run --release -p rendezvous-bench --bin memory [-- COUNT]`

use libp2p_identity::PeerId;
use rendezvous_bench::{roomy_server, status_kib};
use rendezvous_core::record::encode_peer_info;
use rendezvous_core::testing::{self, TestPeer};
use rendezvous_core::{Dialect, Durability, Flavour, RequestId, Server, Timestamp};

fn rss_kib() -> u64 {
    status_kib("self", "VmRSS:").unwrap_or(0)
}

fn server(n: usize) -> Server {
    roomy_server(n, Durability::Volatile)
}

fn register(server: &mut Server, peer: PeerId, ns: &str, record: bytes::Bytes) {
    server.handle_request(Timestamp::ZERO, peer, RequestId(0), testing::register(ns, record, None));
    let ok =
        server.poll_transmit().and_then(|t| t.message?.register_response).and_then(|r| r.status);
    assert_eq!(ok, Some(0), "registration refused");
    while server.poll_event().is_some() {}
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    // Each kind in a fresh process, so that memory freed by one does not
    // hide the growth of the other.
    match std::env::args().nth(2).as_deref() {
        Some("signed") => signed(n),
        Some("legacy") => legacy(n),
        _ => {
            for kind in ["signed", "legacy"] {
                let exe = std::env::current_exe().expect("own path");
                let status =
                    std::process::Command::new(exe).args([n.to_string().as_str(), kind]).status();
                assert!(status.is_ok_and(|s| s.success()), "the {kind} run failed");
            }
        }
    }
}

fn signed(n: usize) {
    let peers: Vec<TestPeer> = (0..1000).map(TestPeer::new).collect();
    let per_peer = n.div_ceil(peers.len());
    let names: Vec<String> = (0..per_peer).map(|i| format!("namespace-{i}")).collect();

    let before = rss_kib();
    let mut signed = server(n);
    for name in &names {
        for p in &peers {
            register(&mut signed, p.id, name, p.record(Dialect::Signed(Flavour::RustLibp2p)));
        }
    }
    let count = signed.stats().registrations;
    let grew = rss_kib().saturating_sub(before);
    println!(
        "signed (1000 peers x {per_peer} namespaces): {count} registrations, RSS +{} MiB, {} bytes/registration",
        grew / 1024,
        grew * 1024 / count as u64
    );
}

fn legacy(n: usize) {
    let names: Vec<String> = (0..n.div_ceil(1000)).map(|i| format!("namespace-{i}")).collect();
    let addr = "/ip4/127.0.0.1/tcp/4001".parse().expect("multiaddr");
    let before = rss_kib();
    let mut legacy = server(n);
    for i in 0..n as u64 {
        let mut bytes = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
        bytes.extend_from_slice(&[0u8; 24]);
        bytes.extend_from_slice(&i.to_be_bytes());
        let peer = PeerId::from_bytes(&bytes).expect("an identity multihash");
        let record = encode_peer_info(&peer, std::slice::from_ref(&addr));
        register(&mut legacy, peer, &names[i as usize % names.len()], record);
    }
    let count = legacy.stats().registrations;
    let grew = rss_kib().saturating_sub(before);
    println!(
        "legacy ({count} distinct peers): {count} registrations, RSS +{} MiB, {} bytes/registration",
        grew / 1024,
        grew * 1024 / count as u64
    );
}
