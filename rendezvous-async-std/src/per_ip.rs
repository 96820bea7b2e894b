//! A bound on established inbound connections per IP address, beside
//! libp2p-connection-limits (which bounds them in all and per peer id, and
//! peer ids are free).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p_core::multiaddr::Multiaddr;
use libp2p_core::{Endpoint, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

use crate::transport::remote_ip;

/// Denies an inbound connection from an address that already has
/// `max` established.
#[derive(Debug)]
pub struct Behaviour {
    max: u32,
    established: HashMap<IpAddr, u32>,
    by_connection: HashMap<ConnectionId, IpAddr>,
}

/// Why a connection was denied.
#[derive(Debug)]
pub struct Exceeded {
    ip: IpAddr,
    max: u32,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} already has {} connections, the limit per address", self.ip, self.max)
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
        let Some(ip) = self.by_connection.remove(&connection) else {
            return;
        };
        if let Some(n) = self.established.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.established.remove(&ip);
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
        if let Some(ip) = remote_ip(remote) {
            let n = self.established.entry(ip).or_default();
            if *n >= self.max {
                return Err(ConnectionDenied::new(Exceeded { ip, max: self.max }));
            }
            *n += 1;
            self.by_connection.insert(connection, ip);
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
