//! What rust-libp2p's two servers share: the rendezvous limits opened up,
//! the swarm settings of ours, and serving on loopback.

use std::error::Error;
use std::time::Duration;

use futures::StreamExt;
use libp2p::rendezvous::server;
use libp2p::swarm::{self, NetworkBehaviour, SwarmEvent};
use libp2p::{SwarmBuilder, noise, tcp, yamux};

/// The rendezvous server's limits opened up, so that the load, not a limit,
/// is what is measured.
pub fn rendezvous() -> server::Behaviour {
    server::Behaviour::new(
        server::Config::default()
            .with_min_ttl(120)
            .with_max_registration_per_peer(1_000_000)
            .with_max_registration_total(10_000_000),
    )
}

/// Builds a swarm on TCP + noise + yamux with a new identity and the
/// behaviour `make` returns, listens on loopback, prints `ADDR <multiaddr>`
/// once listening, and serves until killed.
pub async fn serve<B: NetworkBehaviour>(
    make: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> Result<(), Box<dyn Error>> {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(make)?
        // The same swarm settings as ours: idle connections stay, and many
        // substreams may negotiate at once.
        .with_swarm_config(|c: swarm::Config| {
            c.with_idle_connection_timeout(Duration::from_secs(600))
                .with_max_negotiating_inbound_streams(512)
        })
        .build();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let id = *swarm.local_peer_id();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            println!("ADDR {address}/p2p/{id}");
            break;
        }
    }
    loop {
        swarm.select_next_some().await;
    }
}
