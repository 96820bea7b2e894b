//! Heap allocations per request in the server core, counted by a global
//! allocator: what one REGISTER refresh, one new registration and one
//! DISCOVER page cost from the request body to the response frame, the path
//! the libp2p adapter drives.
//!
//! `cargo run --release -p rendezvous-bench --bin allocs` (dhat's heap
//! profiler counts; it writes no file in this mode).

use bytes::Bytes;
use rendezvous_bench::roomy_server;
use rendezvous_core::testing::{self, TestPeer};
use rendezvous_core::{Dialect, Durability, Flavour, RequestId, Server, Timestamp, codec};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Allocations and bytes per call of `op`, over `n` calls.
fn per_call(n: u64, mut op: impl FnMut(u64)) -> (f64, f64) {
    let before = dhat::HeapStats::get();
    for i in 0..n {
        op(i);
    }
    let after = dhat::HeapStats::get();
    let blocks = after.total_blocks - before.total_blocks;
    let bytes = after.total_bytes - before.total_bytes;
    (blocks as f64 / n as f64, bytes as f64 / n as f64)
}

/// One request through the core as the adapter drives it: the body in, the
/// response frame out.
fn request(server: &mut Server, peer: libp2p_identity::PeerId, body: &[u8]) -> Option<Bytes> {
    server.handle_frame(Timestamp::ZERO, peer, RequestId(1), body).ok()?;
    let frame = server.poll_transmit().and_then(|t| t.to_frame());
    while server.poll_event().is_some() {}
    frame
}

fn body(message: &rendezvous_core::proto::Message) -> Bytes {
    let frame = codec::frame(message);
    // Strip the varint length prefix: the adapter hands the core the body.
    let mut decoder = codec::FrameDecoder::new(usize::MAX);
    decoder.feed(&mut &frame[..]).ok().flatten().unwrap_or_default()
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut server = roomy_server(2_000_000, Durability::Volatile);
    let peer = TestPeer::new(1);
    let record = peer.record(Dialect::Signed(Flavour::RustLibp2p));
    let n = 10_000;
    // 10k registrations of one signed record in 10k namespaces.
    let new_bodies: Vec<Bytes> = (0..n)
        .map(|i| body(&testing::register(&format!("ns-{i}"), record.clone(), None)))
        .collect();
    let (new_allocs, new_bytes) = per_call(n, |i| {
        request(&mut server, peer.id, &new_bodies[i as usize]);
    });
    // Refreshes of the same registrations.
    let (refresh_allocs, refresh_bytes) = per_call(n, |i| {
        request(&mut server, peer.id, &new_bodies[i as usize]);
    });
    // Pages of up to 100 from a namespace of 100.
    for i in 0..100u64 {
        let other = TestPeer::new(100 + i as u32);
        let record = other.record(Dialect::Signed(Flavour::RustLibp2p));
        request(&mut server, other.id, &body(&testing::register("crowd", record, None)));
    }
    let discover = body(&testing::discover(Some("crowd"), Some(100), None));
    let (page_allocs, page_bytes) = per_call(1000, |_| {
        request(&mut server, peer.id, &discover);
    });
    println!("| request (body in, response frame out) | allocations | bytes allocated |");
    println!("|---|---:|---:|");
    println!("| REGISTER, new registration, 10k registered | {new_allocs:.1} | {new_bytes:.0} |");
    println!("| REGISTER, refresh of the same record | {refresh_allocs:.1} | {refresh_bytes:.0} |");
    println!("| DISCOVER, a page of 100 | {page_allocs:.1} | {page_bytes:.0} |");
}
