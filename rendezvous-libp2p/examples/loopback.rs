//! A rendezvous server and two clients on loopback, in one process: both
//! clients register in `chat`, then each discovers the other.
//!
//! `cargo run -p rendezvous-libp2p --example loopback`

use std::error::Error;
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{Multiaddr, SwarmBuilder, identity::Keypair, noise, tcp, yamux};
use rendezvous_libp2p::core::{ClientEvent, Namespace};
use rendezvous_libp2p::{client, server};

fn build<B: NetworkBehaviour>(
    make: impl FnOnce(&Keypair) -> B,
) -> Result<Swarm<B>, Box<dyn Error>> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| make(key))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build())
}

async fn listen<B: NetworkBehaviour>(swarm: &mut Swarm<B>) -> Result<Multiaddr, Box<dyn Error>> {
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return Ok(address);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut point =
        build(|_| server::Behaviour::new(server::Config::default()).expect("default limits"))?;
    let point_addr = listen(&mut point).await?;
    let point_id = *point.local_peer_id();
    println!("rendezvous point {point_id} on {point_addr}");
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(server::Event::Core(event)) =
                point.select_next_some().await
            {
                println!("  point: {event:?}");
            }
        }
    });

    let chat = Namespace::new("chat", 255)?;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = build(|key| {
            client::Behaviour::new(key.clone(), client::Config::default()).expect("default config")
        })?;
        listen(&mut c).await?;
        c.add_peer_address(point_id, point_addr.clone());
        c.behaviour_mut().register(point_id, chat.clone(), None)?;
        loop {
            match c.select_next_some().await {
                SwarmEvent::Behaviour(ClientEvent::Registered { ttl, .. }) => {
                    println!("{} registered in chat for {} s", c.local_peer_id(), ttl.as_secs());
                    break;
                }
                SwarmEvent::Behaviour(ClientEvent::RegisterFailed { error, .. }) => {
                    return Err(error.into());
                }
                _ => {}
            }
        }
        clients.push(c);
    }
    for c in &mut clients {
        c.behaviour_mut().discover(point_id, Some(chat.clone()), None)?;
        loop {
            if let SwarmEvent::Behaviour(ClientEvent::Discovered { registrations, .. }) =
                c.select_next_some().await
            {
                for found in registrations {
                    let who = if found.peer == *c.local_peer_id() { "itself" } else { "the other" };
                    println!(
                        "{} found {who}: {} at {:?}",
                        c.local_peer_id(),
                        found.peer,
                        found.addresses
                    );
                }
                break;
            }
        }
    }
    Ok(())
}
