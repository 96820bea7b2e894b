//! rust-libp2p's own rendezvous server behaviour (`libp2p-rendezvous` 0.18)
//! alone, without identify or ping, on the same transport stack as ours
//! (TCP + noise + yamux), for side-by-side load tests. Prints
//! `ADDR <multiaddr>` once listening on loopback.

use std::time::Duration;

use futures::StreamExt;
use libp2p::rendezvous::server;
use libp2p::swarm::SwarmEvent;
use libp2p::{SwarmBuilder, noise, tcp, yamux};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Limits opened up so that the load, not a limit, is what is measured.
    let config = server::Config::default()
        .with_min_ttl(120)
        .with_max_registration_per_peer(1_000_000)
        .with_max_registration_total(10_000_000);
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| server::Behaviour::new(config))?
        // The same swarm settings as ours: idle connections stay, and many
        // substreams may negotiate at once.
        .with_swarm_config(|c| {
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
