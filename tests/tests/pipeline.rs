//! Our client carries its requests to a server of ours on one long-lived
//! substream, over real TCP + noise + yamux: against a stand-in server that
//! counts substreams (and one that, like rust-libp2p's, closes each after
//! one answer), and against our own server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::Swarm;
use libp2p::{Multiaddr, PeerId};
use rendezvous_libp2p::core::proto::ResponseStatus;
use rendezvous_libp2p::core::testing::TestPeer;
use rendezvous_libp2p::core::{AGENT_PREFIX, ClientEvent, Namespace, ServerEvent, codec, testing};
use rendezvous_libp2p::core::{Dialect, Flavour};
use rendezvous_libp2p::framed::Framed;
use rendezvous_libp2p::{PROTOCOL, client, server};
use rendezvous_tests::net::{LIMIT, expect, listen, raw_connection_as, swarm};

use common::our_server;

/// What the stand-in server counted.
#[derive(Default)]
struct Counts {
    substreams: AtomicUsize,
    answered: AtomicUsize,
}

/// A rendezvous server that answers every REGISTER OK with the TTL asked
/// for, in order, `per_substream` times per substream before closing it.
async fn stand_in(per_substream: usize) -> (PeerId, Multiaddr, Arc<Counts>) {
    stand_in_with(per_substream, false).await
}

/// [`stand_in`]; `first_hangs`: the first substream is read and never
/// answered.
async fn stand_in_with(
    per_substream: usize,
    first_hangs: bool,
) -> (PeerId, Multiaddr, Arc<Counts>) {
    let mut s = swarm(|_| libp2p_stream::Behaviour::new());
    let addr = listen(&mut s).await;
    let id = *s.local_peer_id();
    let mut incoming = s.behaviour().new_control().accept(PROTOCOL).unwrap();
    let counts = Arc::new(Counts::default());
    tokio::spawn(async move {
        loop {
            s.select_next_some().await;
        }
    });
    let c = counts.clone();
    tokio::spawn(async move {
        while let Some((_, stream)) = incoming.next().await {
            let first = c.substreams.fetch_add(1, Ordering::Relaxed) == 0;
            let c = c.clone();
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, 1 << 16);
                if first && first_hangs {
                    while let Ok(Some(_)) = framed.read_frame().await {}
                    return;
                }
                for _ in 0..per_substream {
                    let Ok(Some(body)) = framed.read_frame().await else { return };
                    let request = codec::decode_message(&body).unwrap();
                    let ttl = request.register.and_then(|r| r.ttl).unwrap_or(7200);
                    let answer = testing::register_response(ResponseStatus::Ok, Some(ttl));
                    if framed.write_frame(&codec::frame(&answer)).await.is_err() {
                        return;
                    }
                    c.answered.fetch_add(1, Ordering::Relaxed);
                }
                let _ = framed.close().await;
            });
        }
    });
    (id, addr, counts)
}

/// Our client, told that `server` runs our server (as identify would).
async fn pipelining_client(server: PeerId, addr: &Multiaddr) -> Swarm<client::Behaviour> {
    pipelining_client_with(server, addr, client::Config::default()).await
}

/// [`pipelining_client`] with `config`.
async fn pipelining_client_with(
    server: PeerId,
    addr: &Multiaddr,
    config: client::Config,
) -> Swarm<client::Behaviour> {
    let mut c = swarm(|key| client::Behaviour::new(key.clone(), config).unwrap());
    listen(&mut c).await;
    c.add_peer_address(server, addr.clone());
    c.dial(server).unwrap();
    tokio::time::timeout(LIMIT, async {
        loop {
            if let libp2p::swarm::SwarmEvent::ConnectionEstablished { .. } =
                c.select_next_some().await
            {
                return;
            }
        }
    })
    .await
    .expect("connected in time");
    c.behaviour_mut().set_agent_version(server, &format!("{AGENT_PREFIX}0.1.0"));
    c
}

/// Registers in `n` namespaces, `at_once` at a time; returns the
/// namespaces registered.
async fn register_many(
    c: &mut Swarm<client::Behaviour>,
    server: PeerId,
    n: usize,
    at_once: usize,
) -> usize {
    let (mut sent, mut registered) = (0, 0);
    tokio::time::timeout(LIMIT, async {
        while registered < n {
            while sent < n && sent < registered + at_once {
                let ns = Namespace::new(&format!("ns-{sent}"), 255).unwrap();
                c.behaviour_mut().register(server, ns, Some(Duration::from_secs(600))).unwrap();
                sent += 1;
            }
            if let libp2p::swarm::SwarmEvent::Behaviour(event) = c.select_next_some().await {
                match event {
                    ClientEvent::Registered { ttl, .. } => {
                        assert_eq!(ttl, Duration::from_secs(600));
                        registered += 1;
                    }
                    // A transient failure is retried (`retry_in`); only
                    // giving up fails the test.
                    ClientEvent::RegisterFailed { error, retry_in: None, .. } => {
                        panic!("register failed for good: {error}")
                    }
                    _ => {}
                }
            }
        }
    })
    .await
    .expect("every registration in time");
    registered
}

#[tokio::test]
async fn requests_to_a_server_of_ours_share_one_substream() {
    let (server, addr, counts) = stand_in(usize::MAX).await;
    let mut c = pipelining_client(server, &addr).await;
    assert_eq!(register_many(&mut c, server, 40, 40).await, 40);
    assert_eq!(counts.answered.load(Ordering::Relaxed), 40);
    assert_eq!(counts.substreams.load(Ordering::Relaxed), 1, "one substream for all");
}

#[tokio::test]
async fn a_substream_the_server_closes_early_fails_nothing_for_good() {
    // Each substream answers one request and closes, as rust-libp2p's server
    // does: the request written after the first is sent again on a
    // substream of its own, and so are the rest. (One at a time: the
    // stand-in, on libp2p-stream, drops substreams that arrive while it is
    // busy with another.)
    let (server, addr, counts) = stand_in(1).await;
    let mut c = pipelining_client(server, &addr).await;
    assert_eq!(register_many(&mut c, server, 5, 1).await, 5);
    assert_eq!(counts.answered.load(Ordering::Relaxed), 5);
    assert!(counts.substreams.load(Ordering::Relaxed) >= 5);
}

#[tokio::test]
async fn a_substream_whose_answers_stop_coming_is_dropped_for_one_per_request() {
    // The first substream swallows requests: the first answer's timeout
    // gives it up, and the retries go on substreams of their own.
    let (server, addr, counts) = stand_in_with(usize::MAX, true).await;
    let mut config = client::Config::default();
    config.core.request_timeout = Duration::from_secs(1);
    let mut c = pipelining_client_with(server, &addr, config).await;
    assert_eq!(register_many(&mut c, server, 3, 3).await, 3);
    assert_eq!(counts.answered.load(Ordering::Relaxed), 3);
    assert_eq!(counts.substreams.load(Ordering::Relaxed), 4, "the swallowing one and one each");
}

#[tokio::test]
async fn without_the_agent_each_request_has_its_own_substream() {
    let (server, addr, counts) = stand_in(usize::MAX).await;
    let mut c =
        swarm(|key| client::Behaviour::new(key.clone(), client::Config::default()).unwrap());
    listen(&mut c).await;
    c.add_peer_address(server, addr.clone());
    c.behaviour_mut().set_agent_version(server, "rust-libp2p/0.56.0");
    assert_eq!(register_many(&mut c, server, 10, 1).await, 10);
    assert_eq!(counts.substreams.load(Ordering::Relaxed), 10);
}

#[tokio::test]
async fn our_server_answers_a_pipelined_client_in_order() {
    let (server, addr, mut events) = our_server(server::Config::default()).await;
    let mut c = pipelining_client(server, &addr).await;
    let me = *c.local_peer_id();
    assert_eq!(register_many(&mut c, server, 100, 100).await, 100);
    for _ in 0..100 {
        expect(&mut events, |e| {
            matches!(e, server::Event::Core(ServerEvent::Registered { peer, .. }) if peer == me)
                .then_some(())
        })
        .await;
    }
    // Discovers on the same substream see every registration.
    let id = c.behaviour_mut().discover_all(server, None, Some(30)).unwrap();
    let found = rendezvous_tests::net::until(&mut c, |e| match e {
        ClientEvent::Discovered { request, registrations, .. } if request == id => {
            Some(registrations.len())
        }
        ClientEvent::DiscoverFailed { request, error, .. } if request == id => {
            panic!("discover failed: {error}")
        }
        _ => None,
    })
    .await;
    assert_eq!(found, 100);
}

/// Requests a client writes in one go, more than one batch's worth, are
/// answered in order; a malformed one ends the substream after the answers
/// to those before it, and the request behind it is not handled.
#[tokio::test]
async fn requests_written_at_once_are_answered_in_order_up_to_a_malformed_one() {
    let (server, addr, _events) = our_server(server::Config::default()).await;
    let me = TestPeer::new(1);
    let mut raw = raw_connection_as(me.keypair.clone(), server, &addr).await;
    let record = me.record(Dialect::Signed(Flavour::RustLibp2p));
    let ttls: Vec<u64> = (0..40).map(|i| 7200 + i).collect();
    let mut bytes = Vec::new();
    for (i, &ttl) in ttls.iter().enumerate() {
        let request = testing::register(&format!("ns{i}"), record.clone(), Some(ttl));
        bytes.extend_from_slice(&codec::frame(&request));
    }
    bytes.extend_from_slice(&[5, 1, 2, 3, 4, 5]); // not a protobuf message
    bytes.extend_from_slice(&codec::frame(&testing::register("behind", record, None)));
    let mut framed = Framed::new(raw.open(server).await, 1 << 20);
    framed.write_frame(&bytes).await.unwrap();
    for ttl in ttls {
        let answer = tokio::time::timeout(LIMIT, framed.read_frame()).await.unwrap().unwrap();
        let answer = codec::decode_message(&answer.expect("an answer")).unwrap();
        assert_eq!(answer.register_response.unwrap().ttl, Some(ttl));
    }
    let end = tokio::time::timeout(LIMIT, framed.read_frame()).await.unwrap().unwrap();
    assert!(end.is_none(), "no answer to the malformed request or to the one behind it");
    for (ns, registered) in [("ns39", 1), ("behind", 0)] {
        let page = raw.request(server, &testing::discover(Some(ns), None, None)).await.unwrap();
        assert_eq!(page.discover_response.unwrap().registrations.len(), registered, "{ns}");
    }
}
