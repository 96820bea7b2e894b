//! Our behaviours over real TCP + noise + yamux on loopback: against each
//! other, and against rust-libp2p's own `libp2p-rendezvous` 0.18 client and
//! server. Every cross-test asserts on what the other side reported.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::rendezvous as theirs;
use libp2p::swarm::Swarm;
use libp2p::{Multiaddr, PeerId};
use rendezvous_libp2p::core::proto::ResponseStatus;
use rendezvous_libp2p::core::{
    ClientConfig, ClientEvent, CommandError, Limits, Namespace, RequestError, ServerConfig,
    ServerEvent,
};
use rendezvous_libp2p::{PROTOCOL, SUBSCRIBE_PROTOCOL, client, server};
use rendezvous_tests::net::{LIMIT, connect, expect, listen, spawn, swarm, until};
use tokio::sync::mpsc::UnboundedReceiver;

fn ns(name: &str) -> Namespace {
    Namespace::new(name, 255).unwrap()
}

fn their_ns(name: &str) -> theirs::Namespace {
    theirs::Namespace::new(name.to_owned()).unwrap()
}

async fn our_server(config: ServerConfig) -> (PeerId, Multiaddr, UnboundedReceiver<server::Event>) {
    let config = server::Config { core: config, ..server::Config::default() };
    let mut s = swarm(|_| server::Behaviour::new(config).unwrap());
    let addr = listen(&mut s).await;
    let id = *s.local_peer_id();
    (id, addr, spawn(s))
}

async fn our_client(server: PeerId, server_addr: &Multiaddr) -> Swarm<client::Behaviour> {
    let mut c =
        swarm(|key| client::Behaviour::new(key.clone(), client::Config::default()).unwrap());
    listen(&mut c).await;
    c.add_peer_address(server, server_addr.clone());
    c
}

async fn their_client(
    server: PeerId,
    server_addr: &Multiaddr,
    port: u16,
) -> Swarm<theirs::client::Behaviour> {
    let mut c = swarm(|key| theirs::client::Behaviour::new(key.clone()));
    c.add_external_address(format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap());
    connect(&mut c, server, server_addr).await;
    c
}

async fn register_ours(
    c: &mut Swarm<client::Behaviour>,
    server: PeerId,
    name: &str,
    ttl: Option<u64>,
) -> Result<u64, RequestError> {
    let id = c.behaviour_mut().register(server, ns(name), ttl.map(Duration::from_secs)).unwrap();
    until(c, |e| match e {
        ClientEvent::Registered { request: Some(r), ttl, .. } if r == id => Some(Ok(ttl.as_secs())),
        ClientEvent::RegisterFailed { request: Some(r), error, .. } if r == id => Some(Err(error)),
        _ => None,
    })
    .await
}

async fn discover_ours(
    c: &mut Swarm<client::Behaviour>,
    server: PeerId,
    name: Option<&str>,
    all: bool,
    limit: Option<u64>,
) -> Vec<(PeerId, String)> {
    let b = c.behaviour_mut();
    let id = if all {
        b.discover_all(server, name.map(ns), limit)
    } else {
        b.discover(server, name.map(ns), limit)
    }
    .unwrap();
    until(c, |e| match e {
        ClientEvent::Discovered { request, registrations, skipped: 0, .. } if request == id => {
            Some(registrations.into_iter().map(|d| (d.peer, d.namespace.to_string())).collect())
        }
        ClientEvent::DiscoverFailed { request, error, .. } if request == id => {
            panic!("discover failed: {error}")
        }
        _ => None,
    })
    .await
}

#[tokio::test]
async fn our_clients_find_each_other_through_our_server() {
    let (server_id, addr, mut server_events) = our_server(ServerConfig::default()).await;
    let mut a = our_client(server_id, &addr).await;
    let mut b = our_client(server_id, &addr).await;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    assert_eq!(register_ours(&mut a, server_id, "chat", None).await, Ok(7200));
    assert_eq!(register_ours(&mut b, server_id, "chat", Some(3600)).await, Ok(3600));
    for peer in [a_id, b_id] {
        expect(&mut server_events, |e| {
            matches!(e, server::Event::Core(ServerEvent::Registered { peer: p, .. }) if p == peer)
                .then_some(())
        })
        .await;
    }
    // In whichever order: a page starts at a random place.
    let found: BTreeSet<_> =
        discover_ours(&mut a, server_id, Some("chat"), false, None).await.into_iter().collect();
    assert_eq!(found, BTreeSet::from([(a_id, "chat".into()), (b_id, "chat".into())]));
    let addrs: Vec<_> = a
        .behaviour()
        .discovered(None)
        .filter(|d| d.peer == b_id)
        .flat_map(|d| d.addresses.clone())
        .collect();
    assert!(
        b.listeners().all(|l| addrs.contains(l)),
        "b's listen addresses were announced: {addrs:?}"
    );

    let id = a.behaviour_mut().unregister(server_id, ns("chat")).unwrap();
    until(&mut a, |e| {
        matches!(e, ClientEvent::Unregistered { request: Some(r), delivered: true, .. } if r == id)
            .then_some(())
    })
    .await;
    expect(&mut server_events, |e| {
        matches!(e, server::Event::Core(ServerEvent::Unregistered { peer, .. }) if peer == a_id)
            .then_some(())
    })
    .await;
    let found = discover_ours(&mut b, server_id, Some("chat"), false, None).await;
    assert_eq!(found, vec![(b_id, "chat".into())]);
}

#[tokio::test]
async fn rust_libp2p_clients_register_page_and_unregister_at_our_server() {
    let limits = Limits { max_namespace_len: 16, ..Limits::default() };
    let (server_id, addr, mut server_events) =
        our_server(ServerConfig { limits, ..ServerConfig::default() }).await;
    let mut clients = Vec::new();
    for port in 0..5 {
        let mut c = their_client(server_id, &addr, 4000 + port).await;
        c.behaviour_mut().register(their_ns("chat"), server_id, None).unwrap();
        let ttl = until(&mut c, |e| match e {
            theirs::client::Event::Registered { ttl, namespace, .. }
                if namespace == their_ns("chat") =>
            {
                Some(ttl)
            }
            theirs::client::Event::RegisterFailed { error, .. } => {
                panic!("register failed: {error:?}")
            }
            _ => None,
        })
        .await;
        assert_eq!(ttl, 7200);
        clients.push(c);
    }
    let ids: BTreeSet<PeerId> = clients.iter().map(|c| *c.local_peer_id()).collect();
    for _ in 0..5 {
        expect(&mut server_events, |e| {
            matches!(e, server::Event::Core(ServerEvent::Registered { .. })).then_some(())
        })
        .await;
    }

    // Pages of two, following our cookies with their client.
    let reader = &mut clients[0];
    let (mut seen, mut cookie, mut pages) = (Vec::new(), None, 0);
    loop {
        reader.behaviour_mut().discover(Some(their_ns("chat")), cookie.take(), Some(2), server_id);
        let (regs, next) = until(reader, |e| match e {
            theirs::client::Event::Discovered { registrations, cookie, .. } => {
                Some((registrations, cookie))
            }
            theirs::client::Event::DiscoverFailed { error, .. } => {
                panic!("discover failed: {error:?}")
            }
            _ => None,
        })
        .await;
        pages += 1;
        if regs.is_empty() {
            break;
        }
        assert!(regs.len() <= 2);
        seen.extend(regs.iter().map(|r| r.record.peer_id()));
        assert_eq!(next.namespace(), Some(&their_ns("chat")));
        cookie = Some(next);
    }
    assert_eq!(pages, 4, "three pages of up to two, then an empty one");
    assert_eq!(seen.len(), 5, "each registration exactly once");
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), ids);

    // All namespaces.
    reader.behaviour_mut().discover(None, None, None, server_id);
    let all = until(reader, |e| match e {
        theirs::client::Event::Discovered { registrations, .. } => Some(registrations),
        _ => None,
    })
    .await;
    assert_eq!(all.len(), 5);
    assert!(all.iter().all(|r| r.namespace == their_ns("chat") && r.ttl > 7000));

    // A refused TTL and an over-long namespace, as rust-libp2p reports them.
    reader.behaviour_mut().register(their_ns("short"), server_id, Some(30)).unwrap();
    let error = until(reader, |e| match e {
        theirs::client::Event::RegisterFailed { error, .. } => Some(error),
        _ => None,
    })
    .await;
    assert_eq!(error, theirs::ErrorCode::InvalidTtl);
    let (status, reason) = expect(&mut server_events, |e| match e {
        server::Event::Core(ServerEvent::Refused { status, reason, .. }) => Some((status, reason)),
        _ => None,
    })
    .await;
    assert_eq!(status, ResponseStatus::EInvalidTtl);
    assert!(reason.contains("ttl of 30 s"), "{reason}");
    reader.behaviour_mut().register(their_ns("a-namespace-over-sixteen"), server_id, None).unwrap();
    let error = until(reader, |e| match e {
        theirs::client::Event::RegisterFailed { error, .. } => Some(error),
        _ => None,
    })
    .await;
    assert_eq!(error, theirs::ErrorCode::InvalidNamespace);

    // Unregister: the others no longer see it.
    let mut leaving = clients.remove(1);
    let gone = *leaving.local_peer_id();
    leaving.behaviour_mut().unregister(their_ns("chat"), server_id);
    let _leaving = spawn(leaving); // keeps it running so the request goes out
    expect(&mut server_events, |e| {
        matches!(e, server::Event::Core(ServerEvent::Unregistered { peer, .. }) if peer == gone)
            .then_some(())
    })
    .await;
    let reader = &mut clients[1];
    reader.behaviour_mut().discover(Some(their_ns("chat")), None, None, server_id);
    let left = until(reader, |e| match e {
        theirs::client::Event::Discovered { registrations, .. } => Some(registrations),
        _ => None,
    })
    .await;
    assert_eq!(left.len(), 4);
    assert!(left.iter().all(|r| r.record.peer_id() != gone));
}

#[tokio::test]
async fn our_client_registers_pages_and_unregisters_at_a_rust_libp2p_server() {
    let mut s = swarm(|_| theirs::server::Behaviour::new(theirs::server::Config::default()));
    let addr = listen(&mut s).await;
    let server_id = *s.local_peer_id();
    let mut server_events = spawn(s);
    let mut a = our_client(server_id, &addr).await;
    let mut b = our_client(server_id, &addr).await;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());

    assert_eq!(register_ours(&mut a, server_id, "chat", None).await, Ok(7200));
    let registration = expect(&mut server_events, |e| match e {
        theirs::server::Event::PeerRegistered { peer, registration } if peer == a_id => {
            Some(registration)
        }
        _ => None,
    })
    .await;
    assert_eq!(registration.record.peer_id(), a_id, "the rust server verified our signed record");
    assert_eq!(registration.record.addresses(), a.listeners().cloned().collect::<Vec<_>>());
    assert_eq!(register_ours(&mut b, server_id, "chat", Some(7300)).await, Ok(7300));

    // Their cookies, carried back opaque, page one by one.
    let found = discover_ours(&mut b, server_id, Some("chat"), true, Some(1)).await;
    assert_eq!(
        found.iter().map(|(p, _)| *p).collect::<BTreeSet<_>>(),
        BTreeSet::from([a_id, b_id])
    );
    let served = expect(&mut server_events, |e| match e {
        theirs::server::Event::DiscoverServed { enquirer, registrations } if enquirer == b_id => {
            Some(registrations.len())
        }
        _ => None,
    })
    .await;
    assert_eq!(served, 1, "pages of one");
    let all = discover_ours(&mut a, server_id, None, false, None).await;
    assert_eq!(all.len(), 2);

    // A TTL below their minimum: their status, as they report it.
    match register_ours(&mut a, server_id, "short", Some(60)).await {
        Err(RequestError::Refused { status: Ok(ResponseStatus::EInvalidTtl), .. }) => {}
        other => panic!("{other:?}"),
    }
    let error = expect(&mut server_events, |e| match e {
        theirs::server::Event::PeerNotRegistered { error, .. } => Some(error),
        _ => None,
    })
    .await;
    assert_eq!(error, theirs::ErrorCode::InvalidTtl);
    // Over the spec's 255 bytes: refused here, before their server sees it.
    let long = Namespace::new(&"n".repeat(300), usize::MAX).unwrap();
    assert_eq!(
        a.behaviour_mut().register(server_id, long, None),
        Err(CommandError::NamespaceTooLong { len: 300, max: 255 })
    );

    let id = a.behaviour_mut().unregister(server_id, ns("chat")).unwrap();
    until(&mut a, |e| {
        matches!(e, ClientEvent::Unregistered { request: Some(r), delivered: true, .. } if r == id)
            .then_some(())
    })
    .await;
    expect(&mut server_events, |e| {
        matches!(e, theirs::server::Event::PeerUnregistered { peer, .. } if peer == a_id)
            .then_some(())
    })
    .await;
    let left = discover_ours(&mut a, server_id, Some("other-query"), false, None).await;
    assert!(left.is_empty());
    let mut fresh = our_client(server_id, &addr).await;
    let left = discover_ours(&mut fresh, server_id, Some("chat"), false, None).await;
    assert_eq!(left, vec![(b_id, "chat".into())]);
}

#[tokio::test]
async fn a_malformed_frame_ends_its_substream_only() {
    let (server_id, addr, mut server_events) = our_server(ServerConfig::default()).await;
    let mut raw = swarm(|_| libp2p_stream::Behaviour::new());
    let raw_id = *raw.local_peer_id();
    let mut control = raw.behaviour().new_control();
    connect(&mut raw, server_id, &addr).await;
    tokio::spawn(async move {
        loop {
            raw.select_next_some().await;
        }
    });

    // A length prefix claiming 2 GiB: refused on the prefix, stream closed.
    let mut bad = control.open_stream(server_id, PROTOCOL).await.unwrap();
    bad.write_all(&[0x80, 0x80, 0x80, 0x80, 0x08]).await.unwrap();
    bad.flush().await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(LIMIT, bad.read_to_end(&mut rest)).await.unwrap();
    assert!(read.is_err() || rest.is_empty(), "nothing but a close comes back: {read:?} {rest:?}");
    let (peer, error) = expect(&mut server_events, |e| match e {
        server::Event::StreamRejected { peer, reason: server::Rejection::Malformed(error) } => {
            Some((peer, error))
        }
        _ => None,
    })
    .await;
    assert_eq!(peer, raw_id);
    assert!(error.to_string().contains("exceeds the limit"), "{error}");

    // The same connection still serves a well-formed request...
    let mut good = control.open_stream(server_id, PROTOCOL).await.unwrap();
    let discover = rendezvous_libp2p::core::testing::discover(Some("chat"), None, None);
    good.write_all(&rendezvous_libp2p::core::codec::frame(&discover)).await.unwrap();
    good.flush().await.unwrap();
    let mut prefix = [0u8; 1];
    tokio::time::timeout(LIMIT, good.read_exact(&mut prefix)).await.unwrap().unwrap();
    let mut body = vec![0u8; usize::from(prefix[0])];
    good.read_exact(&mut body).await.unwrap();
    let response = rendezvous_libp2p::core::codec::decode_message(&body).unwrap();
    assert_eq!(response.discover_response.unwrap().status, Some(0));

    // ...and other peers are unaffected.
    let mut other = our_client(server_id, &addr).await;
    assert_eq!(register_ours(&mut other, server_id, "chat", None).await, Ok(7200));
}

#[tokio::test]
async fn our_client_watches_a_rust_libp2p_server_by_polling_when_subscribing_is_refused() {
    let mut s = swarm(|_| theirs::server::Behaviour::new(theirs::server::Config::default()));
    let addr = listen(&mut s).await;
    let server_id = *s.local_peer_id();
    let _server_events = spawn(s);
    let core =
        ClientConfig { discover_interval: Duration::from_secs(1), ..ClientConfig::default() };
    let config = client::Config { core, ..client::Config::default() };
    let mut watcher = swarm(|key| client::Behaviour::new(key.clone(), config).unwrap());
    listen(&mut watcher).await;
    watcher.add_peer_address(server_id, addr.clone());
    assert_eq!(register_ours(&mut watcher, server_id, "chat", None).await, Ok(7200));
    // Told the server subscribes (a lying identify): the protocol is refused,
    // which is evidence, and the watch polls.
    watcher.behaviour_mut().set_protocols(server_id, &[SUBSCRIBE_PROTOCOL]);
    watcher.behaviour_mut().watch(server_id, ns("chat")).unwrap();
    let mut other = our_client(server_id, &addr).await;
    let other_id = *other.local_peer_id();
    assert_eq!(register_ours(&mut other, server_id, "chat", None).await, Ok(7200));
    let mut refused = false;
    until(&mut watcher, |e| match e {
        ClientEvent::RediscoverFailed { error, .. } => {
            refused |=
                error == RequestError::Transport(rendezvous_libp2p::core::Failure::Unsupported);
            None
        }
        ClientEvent::PeerFound { request: None, discovery, .. } if discovery.peer == other_id => {
            Some(())
        }
        _ => None,
    })
    .await;
    assert!(refused, "the subscription was tried and refused first");
}
