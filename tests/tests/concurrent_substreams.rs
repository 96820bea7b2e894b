//! Many substreams on one connection, over real TCP + noise + yamux: every
//! request is answered, and idle or abusive substreams are counted and never
//! in the way of a legitimate request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use rendezvous_libp2p::core::proto::{self, ResponseStatus, read_status};
use rendezvous_libp2p::core::testing::{self, TestPeer};
use rendezvous_libp2p::core::{Dialect, Flavour, Limits, ServerEvent, codec};
use rendezvous_libp2p::framed::Framed;
use rendezvous_libp2p::server;
use rendezvous_tests::net::{LIMIT, expect, raw_connection, raw_connection_as, read_frame};

use common::{our_server, register_status};

/// A REGISTER of `raw`'s own identity: signed with its key.
fn register(raw_key: &TestPeer, ns: &str) -> proto::Message {
    testing::register(ns, raw_key.record(Dialect::Signed(Flavour::RustLibp2p)), None)
}

#[tokio::test]
async fn a_connection_with_128_registers_in_flight_gets_every_one_answered() {
    let mut config = server::Config::default();
    config.core.limits = Limits { max_registrations_per_peer: 10_000, ..Limits::default() };
    let (server_id, addr, _events) = our_server(config).await;
    // The records are signed by the dialing identity, so dial with it.
    let me = TestPeer::new(7);
    let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
    for round in 0..4 {
        // All 128 substreams open and written before any answer is read, so
        // the server holds them all at once.
        let mut streams = Vec::new();
        for i in 0..128 {
            let mut stream = raw.open(server_id).await;
            let request = register(&me, &format!("ns-{round}-{i}"));
            stream.write_all(&codec::frame(&request)).await.unwrap();
            stream.flush().await.unwrap();
            streams.push(stream);
        }
        for (i, mut stream) in streams.into_iter().enumerate() {
            let body = read_frame(&mut stream).await.unwrap_or_else(|e| panic!("#{i}: {e}"));
            let answer = codec::decode_message(&body).unwrap();
            assert_eq!(register_status(&answer), (ResponseStatus::Ok, String::new()), "#{i}");
        }
    }
}

#[tokio::test]
async fn fifty_idle_substreams_do_not_keep_a_fifty_first_request_waiting() {
    let (server_id, addr, _events) = our_server(server::Config::default()).await;
    let mut raw = raw_connection(server_id, &addr).await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(raw.open(server_id).await);
    }
    let answer = raw.request(server_id, &testing::discover(Some("x"), None, None)).await.unwrap();
    let page = answer.discover_response.expect("a discover response");
    assert_eq!(read_status(page.status), Ok(ResponseStatus::Ok));
    drop(idle);
}

#[tokio::test]
async fn requests_over_the_limit_are_answered_busy_and_stalled_substreams_are_reset() {
    let substreams = server::Substreams {
        max_per_connection: 4,
        max_busy_per_connection: 2,
        request_timeout: Duration::from_secs(1),
        ..server::Substreams::default()
    };
    let config = server::Config { substreams, ..server::Config::default() };
    let (server_id, addr, mut events) = our_server(config).await;
    let me = TestPeer::new(8);
    let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
    // Four substreams that never finish a frame fill the connection's bound.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut stream = raw.open(server_id).await;
        stream.write_all(&[40, 8]).await.unwrap(); // 40 bytes announced, 1 sent
        stream.flush().await.unwrap();
        stalled.push(stream);
    }
    // Requests beyond it are answered at once, with the reason.
    for ns in ["a", "b"] {
        let answer = raw.request(server_id, &register(&me, ns)).await.unwrap();
        let (status, text) = register_status(&answer);
        assert_eq!(status, ResponseStatus::EUnavailable);
        assert!(text.contains("4 requests in flight on this connection"), "{text}");
    }
    // Two more stalled ones fill the busy room; the next is reset at once.
    for _ in 0..2 {
        let mut stream = raw.open(server_id).await;
        stream.write_all(&[40]).await.unwrap();
        stream.flush().await.unwrap();
        stalled.push(stream);
    }
    let refused = raw.request(server_id, &register(&me, "c")).await;
    assert!(refused.is_err(), "reset, not answered: {refused:?}");
    let over = expect(&mut events, |e| match e {
        server::Event::StreamRejected { reason: server::Rejection::OverLimit, .. } => Some(()),
        _ => None,
    });
    over.await;
    // The stalled ones are reset after the request timeout and counted...
    for _ in 0..6 {
        expect(&mut events, |e| match e {
            server::Event::StreamRejected { reason: server::Rejection::TimedOut, .. } => Some(()),
            _ => None,
        })
        .await;
    }
    // ...and the connection serves again.
    let answer = raw.request(server_id, &register(&me, "d")).await.unwrap();
    assert_eq!(register_status(&answer).0, ResponseStatus::Ok);
    drop(stalled);
}

#[tokio::test]
async fn a_frame_dripped_byte_by_byte_is_answered_and_empty_substreams_are_counted() {
    let (server_id, addr, mut events) = our_server(server::Config::default()).await;
    let mut raw = raw_connection(server_id, &addr).await;
    // Opened and dropped at once: counted, nothing else happens.
    for _ in 0..20 {
        drop(raw.open(server_id).await);
    }
    for _ in 0..20 {
        expect(&mut events, |e| match e {
            server::Event::StreamRejected { reason, .. } => Some(reason.name()),
            _ => None,
        })
        .await;
    }
    let frame = codec::frame(&testing::discover(Some("x"), Some(5), None));
    let mut stream = raw.open(server_id).await;
    for byte in frame.iter() {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
    }
    let body = read_frame(&mut stream).await.unwrap();
    let page = codec::decode_message(&body).unwrap().discover_response.unwrap();
    assert_eq!(read_status(page.status), Ok(ResponseStatus::Ok));
}

#[tokio::test]
async fn the_server_closes_its_side_once_the_client_closes_after_an_unregister() {
    // An UNREGISTER has no answer: the client half-closes and waits for the
    // server to close too, which tells it the request was read. The server
    // must close then and there, not when some timer next wakes the
    // connection (so the timeouts here are longer than the wait allowed).
    let substreams = server::Substreams {
        request_timeout: Duration::from_secs(60),
        write_timeout: Duration::from_secs(60),
        ..server::Substreams::default()
    };
    let config = server::Config { substreams, ..server::Config::default() };
    let (server_id, addr, _events) = our_server(config).await;
    let mut raw = raw_connection(server_id, &addr).await;
    for _ in 0..3 {
        let mut stream = raw.open(server_id).await;
        stream.write_all(&codec::frame(&testing::unregister("chat"))).await.unwrap();
        stream.close().await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(LIMIT, stream.read_to_end(&mut rest)).await;
        let read = read.expect("the server closed its side in time");
        assert_eq!(read.map_err(|e| e.kind()), Ok(0), "a clean end, not a reset");
    }
}

/// Registers `me` in 1000 namespaces, so that a page of everything is
/// larger than the window yamux grants a substream.
async fn register_1000(me: &TestPeer, server_id: libp2p::PeerId, addr: &libp2p::Multiaddr) {
    let mut raw = raw_connection_as(me.keypair.clone(), server_id, addr).await;
    let mut registering = Framed::new(raw.open(server_id).await, 1 << 20);
    let frames: Vec<u8> =
        (0..1000).flat_map(|i| codec::frame(&register(me, &format!("ns-{i}")))).collect();
    registering.write_frame(&frames).await.unwrap();
    for i in 0..1000 {
        let body = tokio::time::timeout(LIMIT, registering.read_frame()).await.unwrap().unwrap();
        let answer = codec::decode_message(&body.expect("an answer")).unwrap();
        assert_eq!(register_status(&answer).0, ResponseStatus::Ok, "#{i}");
    }
}

/// The `count` of the next DISCOVER served.
fn discovered(event: server::Event) -> Option<usize> {
    match event {
        server::Event::Core(ServerEvent::Discovered { count, .. }) => Some(count),
        _ => None,
    }
}

/// Whether no DISCOVER is served for half a second.
async fn no_discover_served(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<server::Event>,
) -> bool {
    let next = async {
        loop {
            if let Some(count) = discovered(events.recv().await.expect("the server runs")) {
                return count;
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(500), next).await.is_err()
}

/// A server with `config` and 1000 registrations (of `TestPeer::new(seed)`),
/// and a client that asked for two pages of everything on one substream
/// and read neither: both are made, and the second waits in the point.
/// Returns the server, its events, the client and that substream.
async fn a_page_waiting(
    mut config: server::Config,
    seed: u32,
) -> (
    libp2p::PeerId,
    libp2p::Multiaddr,
    tokio::sync::mpsc::UnboundedReceiver<server::Event>,
    rendezvous_tests::net::Raw,
    Framed<libp2p::Stream>,
) {
    config.core.limits = Limits { max_registrations_per_peer: 10_000, ..Limits::default() };
    let (server_id, addr, mut events) = our_server(config).await;
    register_1000(&TestPeer::new(seed), server_id, &addr).await;
    let mut client = raw_connection(server_id, &addr).await;
    let ask = codec::frame(&testing::discover(None, Some(1000), None));
    let mut stream = Framed::new(client.open(server_id).await, 4 << 20);
    stream.write_frame(&[ask.clone(), ask].concat()).await.unwrap();
    for _ in 0..2 {
        assert_eq!(expect(&mut events, discovered).await, 1000);
    }
    (server_id, addr, events, client, stream)
}

/// Reads `pages` pages of all 1000 from `stream`.
async fn read_pages(stream: &mut Framed<libp2p::Stream>, pages: usize) {
    for i in 0..pages {
        let body = tokio::time::timeout(LIMIT, stream.read_frame()).await.unwrap().unwrap();
        let page = codec::decode_message(&body.expect("a page")).unwrap();
        assert_eq!(page.discover_response.expect("a page").registrations.len(), 1000, "#{i}");
    }
}

/// A client that asks for pages and does not read them: once a page waits
/// for it to make room, the connection's next DISCOVERs wait, read but not
/// handled, instead of each becoming another page held in the point's
/// memory; the client reading is what lets them go, and every one is
/// answered in full. Meanwhile others are served.
#[tokio::test]
async fn pages_a_client_does_not_read_hold_back_its_next_requests() {
    let config = {
        let mut config = server::Config::default();
        config.substreams.max_unread_bytes_per_connection = 1 << 20;
        config
    };
    let (server_id, addr, mut events, mut client, mut first) = a_page_waiting(config, 9).await;
    // Eight more DISCOVERs: room for another page's worth would pass the
    // bound, so none is handled.
    let ask = codec::frame(&testing::discover(None, Some(1000), None));
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = Framed::new(client.open(server_id).await, 4 << 20);
        stream.write_frame(&ask).await.unwrap();
        held.push(stream);
    }
    assert!(no_discover_served(&mut events).await, "a page made while another waits to be read");

    // Others are served meanwhile.
    let mut other = raw_connection(server_id, &addr).await;
    let answer = other.request(server_id, &testing::discover(Some("ns-7"), None, None)).await;
    assert_eq!(answer.unwrap().discover_response.expect("a page").registrations.len(), 1);
    assert_eq!(expect(&mut events, discovered).await, 1);

    // Reading lets the rest go, all in full.
    read_pages(&mut first, 2).await;
    for stream in &mut held {
        read_pages(stream, 1).await;
    }
}

/// The bound over an address: a client's other connections from the same
/// address wait too while one of them leaves pages unread, and go on once
/// it reads them.
#[tokio::test]
async fn pages_unread_on_one_connection_hold_back_the_others_from_its_address() {
    let config = {
        let mut config = server::Config::default();
        config.substreams.max_unread_bytes_per_address = 1 << 20;
        config
    };
    let (server_id, addr, mut events, _hoarder, mut unread) = a_page_waiting(config, 10).await;
    // Another connection from the same (loopback) address, nothing unread
    // of its own: its DISCOVER waits for the address's total.
    let mut sibling = raw_connection(server_id, &addr).await;
    let ask = codec::frame(&testing::discover(None, Some(1000), None));
    let mut asking = Framed::new(sibling.open(server_id).await, 4 << 20);
    asking.write_frame(&ask).await.unwrap();
    assert!(no_discover_served(&mut events).await, "served past the address's bound");

    read_pages(&mut unread, 2).await;
    read_pages(&mut asking, 1).await;
}
