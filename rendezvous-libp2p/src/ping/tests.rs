//! Against rust-libp2p's own ping, over TCP on loopback.

use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::ping as theirs;
use libp2p::swarm::{Swarm, SwarmEvent};

use super::*;
use crate::test_swarm::{listening, swarm, swarm_idle};

/// A point closing connections idle for `idle`, and a rust-libp2p peer
/// dialing it that pings every millisecond.
async fn point_and_pinging_peer(idle: Duration) -> (Swarm<Behaviour>, Swarm<theirs::Behaviour>) {
    let mut point = swarm_idle(Keypair::generate_ed25519(), idle, |_| Behaviour);
    let address = listening(&mut point).await;
    let mut peer = swarm(Keypair::generate_ed25519(), |_| {
        theirs::Behaviour::new(theirs::Config::new().with_interval(Duration::from_millis(1)))
    });
    peer.dial(address).unwrap();
    (point, peer)
}

#[tokio::test]
async fn a_rust_libp2p_peer_s_pings_are_answered() {
    let (mut point, mut peer) = point_and_pinging_peer(Duration::from_secs(30)).await;
    let mut answered = 0;
    for _ in 0..200 {
        tokio::select! {
            event = point.select_next_some() => {
                if let SwarmEvent::ConnectionClosed { cause, .. } = event {
                    panic!("the point closed the connection: {cause:?}");
                }
            }
            event = peer.select_next_some() => {
                if let SwarmEvent::Behaviour(theirs::Event { result, .. }) = event {
                    result.expect("the point answers the ping");
                    answered += 1;
                }
            }
        }
        if answered == 5 {
            break;
        }
    }
    assert_eq!(answered, 5, "the point answered {answered} pings of 5");
}

#[tokio::test]
async fn a_ping_substream_in_use_does_not_keep_an_idle_connection_open() {
    let (mut point, mut peer) = point_and_pinging_peer(Duration::from_millis(300)).await;
    let mut answered = 0;
    // At a ping a millisecond, a connection kept open would answer far
    // more than this many before the loop ends.
    for _ in 0..20_000 {
        tokio::select! {
            event = point.select_next_some() => {
                if let SwarmEvent::ConnectionClosed { .. } = event {
                    assert!(answered > 0, "closed before a ping was answered");
                    return;
                }
            }
            event = peer.select_next_some() => {
                if let SwarmEvent::Behaviour(theirs::Event { result: Ok(_), .. }) = event {
                    answered += 1;
                }
            }
        }
    }
    panic!("the connection stayed open through {answered} pings");
}
