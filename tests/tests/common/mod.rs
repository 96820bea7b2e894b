//! What the behaviour tests share: our server in the background, and the
//! status of a REGISTER's answer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared by several test files

use libp2p::{Multiaddr, PeerId};
use rendezvous_libp2p::core::proto::{self, ResponseStatus, read_status};
use rendezvous_libp2p::server;
use rendezvous_tests::net::{listen, spawn, swarm};
use tokio::sync::mpsc::UnboundedReceiver;

/// A server running in the background (while the receiver lives).
pub(crate) async fn our_server(
    config: server::Config,
) -> (PeerId, Multiaddr, UnboundedReceiver<server::Event>) {
    let mut s = swarm(|_| server::Behaviour::new(config).unwrap());
    let addr = listen(&mut s).await;
    let id = *s.local_peer_id();
    (id, addr, spawn(s))
}

/// The status and status text of a REGISTER's answer.
pub(crate) fn register_status(answer: &proto::Message) -> (ResponseStatus, String) {
    let body = answer.register_response.clone().expect("a register response");
    (read_status(body.status).unwrap(), body.status_text.unwrap_or_default())
}
