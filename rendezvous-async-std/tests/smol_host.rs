//! The host runs under smol's executor too: nothing in it needs async-std.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

use std::time::Duration;

use futures::{FutureExt, StreamExt, select};
use libp2p_identity::Keypair;
use libp2p_swarm::SwarmEvent;
use rendezvous_async_std::host::{
    self, ClientBehaviour, ClientHostEvent, ConnectionLimits, ServerBehaviour, SpawnWith,
};
use rendezvous_libp2p::core::{ClientEvent as Rendezvous, Namespace};
use rendezvous_libp2p::{client, server};

#[test]
fn a_server_and_a_client_on_smol_register_and_discover() {
    smol::block_on(async {
        let server_key = Keypair::generate_ed25519();
        let behaviour = ServerBehaviour::new(
            &server_key,
            server::Config::default(),
            ConnectionLimits::default(),
        )
        .unwrap();
        let mut server = host::build(&server_key, behaviour, smol_executor()).unwrap();
        server.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
        let address = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
                break address;
            }
        };
        let server_id = *server.local_peer_id();
        smol::spawn(async move {
            loop {
                server.select_next_some().await;
            }
        })
        .detach();

        let key = Keypair::generate_ed25519();
        let mut peer = host::build(
            &key,
            ClientBehaviour::new(&key, client::Config::default()).unwrap(),
            smol_executor(),
        )
        .unwrap();
        peer.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
        peer.behaviour_mut().rendezvous.add_server_address(server_id, address);
        let chat = Namespace::new("chat", 255).unwrap();
        let mut registered = false;
        let mut timeout = FutureExt::fuse(smol::Timer::after(Duration::from_secs(20)));
        loop {
            select! {
                event = peer.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { .. } if !registered => {
                        registered = true;
                        peer.behaviour_mut().rendezvous.register(server_id, chat.clone(), None).unwrap();
                    }
                    SwarmEvent::Behaviour(ClientHostEvent::Rendezvous(event)) => match *event {
                        Rendezvous::Registered { ttl, .. } => {
                            assert_eq!(ttl, Duration::from_secs(7200));
                            peer.behaviour_mut().rendezvous.discover(server_id, Some(chat.clone()), None).unwrap();
                        }
                        Rendezvous::Discovered { registrations, .. } => {
                            assert_eq!(registrations.len(), 1);
                            assert_eq!(registrations[0].peer, *peer.local_peer_id());
                            return;
                        }
                        event @ (Rendezvous::RegisterFailed { .. } | Rendezvous::DiscoverFailed { .. }) => panic!("{event:?}"),
                        _ => {}
                    },
                    _ => {}
                },
                _ = timeout => panic!("no discovery within 20 s"),
            }
        }
    });
}

/// Spawns the swarm's tasks on smol's global executor.
fn smol_executor() -> SpawnWith<impl Fn(host::Task) + Send + 'static> {
    SpawnWith(|task| smol::spawn(task).detach())
}
