//! A swarm over TCP on loopback, with noise and yamux, for tests that put a
//! behaviour of this crate against rust-libp2p's own.

use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{Multiaddr, SwarmBuilder, noise, tcp, yamux};

/// A swarm of `behaviour` under `key`, closing connections idle for 30 s.
pub(crate) fn swarm<B: NetworkBehaviour>(
    key: Keypair,
    behaviour: impl FnOnce(&Keypair) -> B,
) -> Swarm<B> {
    swarm_idle(key, Duration::from_secs(30), behaviour)
}

/// A swarm of `behaviour` under `key`, closing connections idle for `idle`.
pub(crate) fn swarm_idle<B: NetworkBehaviour>(
    key: Keypair,
    idle: Duration,
    behaviour: impl FnOnce(&Keypair) -> B,
) -> Swarm<B> {
    SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| behaviour(key))
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build()
}

/// Listens on a loopback port; the address.
pub(crate) async fn listening<B: NetworkBehaviour>(swarm: &mut Swarm<B>) -> Multiaddr {
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address;
        }
    }
}
