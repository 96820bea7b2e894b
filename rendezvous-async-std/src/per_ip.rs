//! A bound on established inbound connections per IP address (an IPv6 one
//! by its /64, as the core counts registrations: [`Origin`]), beside
//! libp2p-connection-limits (which bounds them in all and per peer id, and
//! peer ids are free).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use libp2p_core::multiaddr::Multiaddr;
use libp2p_core::{Endpoint, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

use rendezvous_libp2p::core::Origin;
use rendezvous_libp2p::origin_of;

/// Denies an inbound connection from an address that already has
/// `max` established.
#[derive(Debug)]
pub struct Behaviour {
    max: u32,
    established: HashMap<Origin, u32>,
    by_connection: HashMap<ConnectionId, Origin>,
}

/// Why a connection was denied.
#[derive(Debug)]
pub struct Exceeded {
    origin: Origin,
    max: u32,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} already has {} connections, the limit per address", self.origin, self.max)
    }
}

impl std::error::Error for Exceeded {}

impl Behaviour {
    /// At most `max` established inbound connections per IP address.
    pub fn new(max: u32) -> Self {
        Behaviour { max, established: HashMap::new(), by_connection: HashMap::new() }
    }

    /// Addresses with at least one connection.
    pub fn addresses(&self) -> usize {
        self.established.len()
    }

    fn release(&mut self, connection: ConnectionId) {
        let Some(origin) = self.by_connection.remove(&connection) else {
            return;
        };
        if let Some(n) = self.established.get_mut(&origin) {
            *n -= 1;
            if *n == 0 {
                self.established.remove(&origin);
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let Some(origin) = origin_of(remote) {
            let n = self.established.entry(origin).or_default();
            if *n >= self.max {
                return Err(ConnectionDenied::new(Exceeded { origin, max: self.max }));
            }
            *n += 1;
            self.by_connection.insert(connection, origin);
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(closed) => self.release(closed.connection_id),
            // Another behaviour denied a connection this one counted.
            FromSwarm::ListenFailure(failure) => self.release(failure.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
