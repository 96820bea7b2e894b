//! The loop both nodes run: the swarm's events, the HTTP endpoint's
//! requests, what identify learns handed to the rendezvous behaviour,
//! and the listen addresses, each ending in `/p2p/<peer id>`.

use futures::{FutureExt, StreamExt, select};
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_core::transport::ListenerId;
use libp2p_identity::PeerId;
use libp2p_swarm::{NetworkBehaviour, Swarm, SwarmEvent};
use tracing::debug;

use super::{NodeError, root_cause};
use crate::http::{Endpoint, Request};

/// A host behaviour the loop drives: it knows identify's events among its
/// own, and hands what they say to its rendezvous behaviour (and, on a
/// point that asks only when it needs to, the point's asks to identify).
pub trait Identified: NetworkBehaviour {
    /// If `event` is identify's: tells the rendezvous behaviour what the
    /// peer runs and speaks (or that it said nothing), and returns the peer
    /// and its agent version. If it is the point asking what a peer reads:
    /// asks identify.
    fn identified<'e>(&mut self, event: &'e Self::ToSwarm) -> Option<(PeerId, &'e str)>;
}

/// What the loop hands its node next (a swarm event is the common case, and
/// is not boxed).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Next<E> {
    /// A swarm event (identify's already handled).
    Swarm(SwarmEvent<E>),
    /// An HTTP request to answer.
    Http(Request),
}

/// A swarm, its HTTP endpoint, and where it listens.
pub(crate) struct EventLoop<B: NetworkBehaviour> {
    pub(crate) swarm: Swarm<B>,
    http: Option<Endpoint>,
    listeners: Vec<ListenerId>,
    listening: Vec<Multiaddr>,
}

impl<B: Identified> EventLoop<B> {
    pub(crate) fn new(swarm: Swarm<B>, http: Option<Endpoint>) -> Self {
        EventLoop { swarm, http, listeners: Vec::new(), listening: Vec::new() }
    }

    /// Listens on every address, and returns once each listener has one,
    /// or with the reason one cannot.
    pub(crate) async fn listen(
        &mut self,
        addresses: impl IntoIterator<Item = Multiaddr>,
    ) -> Result<(), NodeError> {
        let mut waiting = Vec::new();
        for address in addresses {
            let describe = |e: &dyn std::error::Error| format!("{address}: {}", root_cause(e));
            let id = self
                .swarm
                .listen_on(address.clone())
                .map_err(|e| NodeError::Listen(describe(&e)))?;
            waiting.push(id);
            self.listeners.push(id);
        }
        while !waiting.is_empty() {
            match self.swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    self.listened(&address);
                    waiting.retain(|id| *id != listener_id);
                }
                SwarmEvent::ListenerClosed { reason: Err(e), addresses, .. } => {
                    return Err(NodeError::Listen(format!("{addresses:?}: {}", root_cause(&e))));
                }
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(NodeError::Listen(root_cause(&error)));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Stops listening; connections open stay.
    pub(crate) fn stop_listening(&mut self) {
        for id in std::mem::take(&mut self.listeners) {
            self.swarm.remove_listener(id);
        }
    }

    /// Addresses listened on so far, each ending in `/p2p/<peer id>`.
    pub(crate) fn listen_addresses(&self) -> &[Multiaddr] {
        &self.listening
    }

    /// Where the HTTP endpoint listens, if anywhere.
    pub(crate) fn http_address(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(Endpoint::local_addr)
    }

    /// The next swarm event or HTTP request; identify's agent versions go
    /// to the rendezvous behaviour on the way.
    pub(crate) async fn next(&mut self) -> Next<B::ToSwarm> {
        let event = select! {
            event = self.swarm.select_next_some() => event,
            request = next_request(&mut self.http).fuse() => return Next::Http(request),
        };
        match &event {
            SwarmEvent::Behaviour(event) => {
                if let Some((peer, agent_version)) = self.swarm.behaviour_mut().identified(event) {
                    debug!(target: "rendezvous::identify", "{peer} runs {agent_version}");
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let address = address.clone();
                self.listened(&address);
            }
            _ => {}
        }
        Next::Swarm(event)
    }

    fn listened(&mut self, address: &Multiaddr) {
        let full = with_peer(address, *self.swarm.local_peer_id());
        if !self.listening.contains(&full) {
            self.listening.push(full);
        }
    }
}

async fn next_request(http: &mut Option<Endpoint>) -> Request {
    match http {
        Some(http) => http.next_request().await,
        None => futures::future::pending().await,
    }
}

/// `address` with `/p2p/<peer>` at its end.
pub fn with_peer(address: &Multiaddr, peer: PeerId) -> Multiaddr {
    match address.iter().last() {
        Some(Protocol::P2p(_)) => address.clone(),
        _ => address.clone().with(Protocol::P2p(peer)),
    }
}

/// The address of a rendezvous point as given on a command line (`--address`),
/// checked: a multiaddr ending in `/p2p/<peer id>`. The error is one line,
/// in the demo's words.
pub fn server_address(given: &str) -> Result<Multiaddr, String> {
    if given.is_empty() {
        let hint = "use --address with the server's multiaddr";
        return Err(format!("Please provide rendezvous server address: {hint}"));
    }
    let bad = |why: String| format!("Failed to parse server address '{given}': {why}");
    let address: Multiaddr = given.parse().map_err(|e| bad(format!("{e}")))?;
    peer_of(&address).map_err(bad)?;
    Ok(address)
}

/// The peer a rendezvous point's address names: it must end with
/// `/p2p/<peer id>`.
pub fn peer_of(address: &Multiaddr) -> Result<PeerId, String> {
    match address.iter().last() {
        Some(Protocol::P2p(peer)) => Ok(peer),
        _ => Err("it must end with /p2p/<peer id>".into()),
    }
}
