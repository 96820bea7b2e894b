//! Against rust-libp2p's own ping, over TCP on loopback.

use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::ping as theirs;
use libp2p::swarm::SwarmEvent;

use super::*;
use crate::test_swarm::{listening, swarm};

#[tokio::test]
async fn a_rust_libp2p_peer_s_pings_are_answered() {
    let mut point = swarm(Keypair::generate_ed25519(), |_| Behaviour);
    let address = listening(&mut point).await;
    let mut peer = swarm(Keypair::generate_ed25519(), |_| {
        theirs::Behaviour::new(theirs::Config::new().with_interval(Duration::from_millis(1)))
    });
    peer.dial(address).unwrap();
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
