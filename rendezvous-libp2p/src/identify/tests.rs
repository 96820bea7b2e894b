//! Against rust-libp2p's own identify, over TCP on loopback: it reads what
//! this node says, this node reads its agent version, first from the answer
//! to its request and then from a push; a node that asks only when told
//! does so, and says so when a peer cannot answer; and a message under
//! another key is refused.

use futures::StreamExt;
use libp2p::identify as theirs;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;

use super::*;
use crate::test_swarm::{listening, swarm};

fn ours(key: &Keypair) -> Behaviour {
    with(key, true)
}

fn with(key: &Keypair, ask_every_peer: bool) -> Behaviour {
    Behaviour::new(Config {
        public_key: key.public(),
        protocol_version: "/ipfs/id/1.0.0".into(),
        agent_version: "rendezvous-rs/test".into(),
        ask_every_peer,
    })
}

fn js_peer(key: &Keypair) -> theirs::Behaviour {
    theirs::Behaviour::new(
        theirs::Config::new("/ipfs/id/1.0.0".into(), key.public())
            .with_agent_version("js-libp2p/2.8.0".into()),
    )
}

#[test]
fn a_handler_asks_at_the_start_or_when_told() {
    let key = Keypair::generate_ed25519();
    let (peer, address) = (PeerId::random(), "/ip4/127.0.0.1/tcp/1".parse().unwrap());
    let asks = |handler: &mut Handler| {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        matches!(
            handler.poll(&mut cx),
            Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { .. })
        )
    };
    let mut every = with(&key, true).handler(peer, &address);
    assert!(asks(&mut every));
    assert!(!asks(&mut every), "once");
    let mut told = with(&key, false).handler(peer, &address);
    assert!(!asks(&mut told), "not before it is told");
    told.on_behaviour_event(Ask);
    assert!(asks(&mut told));
    assert!(!asks(&mut told));
}

/// Connects a peer running `behaviour` to a node that asks only when told,
/// asks it once connected, and returns the peer and what the node heard.
async fn ask_once<B>(behaviour: impl FnOnce(&Keypair) -> B) -> (PeerId, Option<Event>)
where
    B: libp2p::swarm::NetworkBehaviour,
{
    let mut point = swarm(Keypair::generate_ed25519(), |key| with(key, false));
    let address = listening(&mut point).await;
    let mut peer = swarm(Keypair::generate_ed25519(), behaviour);
    let peer_id = *peer.local_peer_id();
    peer.dial(address).unwrap();
    for _ in 0..200 {
        tokio::select! {
            event = point.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { .. } => point.behaviour_mut().ask(peer_id),
                SwarmEvent::Behaviour(event) => return (peer_id, Some(event)),
                _ => {}
            },
            _ = peer.select_next_some() => {}
        }
    }
    (peer_id, None)
}

#[tokio::test]
async fn a_node_that_asks_when_told_hears_the_answer() {
    let (peer, heard) = ask_once(js_peer).await;
    let agent_version = "js-libp2p/2.8.0".to_owned();
    assert_eq!(heard, Some(Event::Received { peer, agent_version }));
}

#[tokio::test]
async fn asking_a_peer_without_identify_is_reported_unanswered() {
    let (peer_id, heard) = ask_once(|_| libp2p::ping::Behaviour::default()).await;
    match heard {
        Some(Event::Unanswered { peer, reason }) => {
            assert_eq!(peer, peer_id);
            assert!(reason.contains("asking failed"), "{reason}");
        }
        other => panic!("expected the ask to be reported unanswered, got {other:?}"),
    }
}

#[tokio::test]
async fn a_rust_libp2p_peer_and_this_node_identify_each_other() {
    let mut point = swarm(Keypair::generate_ed25519(), ours);
    let address = listening(&mut point).await;
    let mut peer = swarm(Keypair::generate_ed25519(), js_peer);
    let peer_id = *peer.local_peer_id();
    peer.dial(address.clone()).unwrap();

    let mut heard = Vec::new();
    let mut told = None;
    let mut pushed = false;
    for _ in 0..200 {
        tokio::select! {
            event = point.select_next_some() => {
                if let SwarmEvent::Behaviour(Event::Received { peer, agent_version }) = event {
                    assert_eq!(peer, peer_id);
                    heard.push(agent_version);
                }
            }
            event = peer.select_next_some() => {
                if let SwarmEvent::Behaviour(theirs::Event::Received { info, .. }) = event {
                    told = Some(info);
                }
            }
        }
        if told.is_some() && heard.len() == 1 && !pushed {
            pushed = true;
            peer.behaviour_mut().push([*point.local_peer_id()]);
        }
        if told.is_some() && heard.len() == 2 {
            break;
        }
    }
    let told = told.expect("the peer never read this node's identify");
    assert_eq!(told.public_key.to_peer_id(), *point.local_peer_id());
    assert_eq!(told.agent_version, "rendezvous-rs/test");
    assert_eq!(told.protocol_version, "/ipfs/id/1.0.0");
    assert_eq!(told.listen_addrs, vec![address]);
    assert!(told.protocols.contains(&PROTOCOL) && told.protocols.contains(&PUSH_PROTOCOL));
    assert_eq!(
        told.observed_addr.iter().next(),
        Some(libp2p::multiaddr::Protocol::Ip4([127, 0, 0, 1].into()))
    );
    assert_eq!(heard, ["js-libp2p/2.8.0", "js-libp2p/2.8.0"], "the answer, then the push");
}

#[test]
fn a_key_is_checked_against_the_peer_from_its_bytes() {
    for key in
        [Keypair::generate_ed25519(), Keypair::generate_secp256k1(), Keypair::generate_ecdsa()]
    {
        let public = key.public();
        assert_eq!(peer_id_of(&public.encode_protobuf()), Some(public.to_peer_id()));
    }
    // Short bytes are a peer id whatever they hold, but only a peer's own
    // key encodes to its id.
    let peer = Keypair::generate_ed25519().public().to_peer_id();
    assert_ne!(peer_id_of(b"\x08\x01\x12"), Some(peer));
    assert_eq!(peer_id_of(&[7; 64]), None, "a long key that does not decode");
}

fn message(key: &PublicKey, agent_version: &str) -> futures::io::Cursor<Vec<u8>> {
    let heard = Heard {
        public_key: Some(key.encode_protobuf()),
        agent_version: Some(agent_version.into()),
    };
    futures::io::Cursor::new(heard.encode_length_delimited_to_vec())
}

#[tokio::test]
async fn a_message_is_read_only_under_the_peers_own_key() {
    let (key, other) = (Keypair::generate_ed25519().public(), Keypair::generate_ed25519().public());
    let peer = key.to_peer_id();
    assert_eq!(
        read(message(&key, "go-libp2p/0.40"), peer).await.unwrap().as_deref(),
        Some("go-libp2p/0.40")
    );
    let refused = read(message(&other, "go-libp2p/0.40"), peer).await.unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
    // A go peer's answer with many addresses: past rust-libp2p's 4 KiB,
    // everything but the key and the agent skipped.
    let many = Said {
        public_key: Some(key.encode_protobuf()),
        listen_addrs: vec![vec![4; 60]; 100],
        protocols: vec!["/ipfs/kad/1.0.0".into(); 20],
        agent_version: Some("go-libp2p/0.41".into()),
        ..Said::default()
    };
    let many = many.encode_length_delimited_to_vec();
    assert!(many.len() > 6000);
    let agent = read(futures::io::Cursor::new(many), peer).await.unwrap();
    assert_eq!(agent.as_deref(), Some("go-libp2p/0.41"));
    let ended = read(futures::io::Cursor::new(Vec::new()), peer).await.unwrap_err();
    assert_eq!(ended.kind(), io::ErrorKind::UnexpectedEof);
    let mut long = vec![0x80, 0x80, 0x01]; // 16 KiB claimed
    long.resize(17_000, 0);
    let over = read(futures::io::Cursor::new(long), peer).await.unwrap_err();
    assert_eq!(over.kind(), io::ErrorKind::InvalidData);
}
