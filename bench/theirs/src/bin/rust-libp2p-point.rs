//! rust-libp2p's rendezvous point as rust-libp2p publishes it (its
//! `examples/rendezvous`): the rendezvous server with identify, and ping
//! every second, on TCP + noise + yamux. What a rust-libp2p user who runs
//! rust-libp2p's point runs. Limits and swarm settings as in
//! `rust-libp2p-server`. Prints `ADDR <multiaddr>` once listening on loopback.

use std::time::Duration;

use futures::StreamExt;
use libp2p::rendezvous::server;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{SwarmBuilder, identify, noise, ping, tcp, yamux};

#[derive(NetworkBehaviour)]
struct Point {
    identify: identify::Behaviour,
    rendezvous: server::Behaviour,
    ping: ping::Behaviour,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = server::Config::default()
        .with_min_ttl(120)
        .with_max_registration_per_peer(1_000_000)
        .with_max_registration_total(10_000_000);
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| Point {
            identify: identify::Behaviour::new(identify::Config::new(
                "rendezvous-example/1.0.0".into(),
                key.public(),
            )),
            rendezvous: server::Behaviour::new(config),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(1))),
        })?
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
