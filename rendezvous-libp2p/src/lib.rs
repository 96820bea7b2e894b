//! rust-libp2p `NetworkBehaviour`s for the rendezvous protocol, driven by the
//! sans-IO state machines of `rendezvous-core`.
//!
//! - [`server::Behaviour`]: a rendezvous point. Answers every request read
//!   from an inbound `/rendezvous/1.0.0` substream, in order, until the remote
//!   closes it (canvas-js clients keep one substream for all their requests;
//!   rust-libp2p, go and py-libp2p open one per request). Up to 256
//!   substreams per connection are served at once; beyond that, requests are
//!   answered `E_UNAVAILABLE`, never dropped in silence.
//! - [`client::Behaviour`]: registers, refreshes, discovers. Opens one
//!   substream per request, or keeps one for all of them to a server of ours
//!   (told by [`client::Behaviour::set_agent_version`]); dials servers it is
//!   not connected to, follows the swarm's external addresses and
//!   re-registers when they change, and hands discovered addresses to the
//!   swarm.
//!
//! The behaviours own the protocol logic and the one timer; the connection
//! handlers only move frames between substreams and the behaviour, through
//! [`framed::Framed`], with every substream bounded in number and time.
//! Nothing here depends on a runtime: timers come from `futures-timer` (one
//! per set of substreams, not one per substream: each `futures-timer` delay
//! wakes that crate's thread when made and when dropped), so
//! the behaviours run under tokio, async-std or smol alike. [`Clock`] maps
//! the system's time to the core's timestamps (Unix time, monotonic within a
//! process).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
mod clock;
pub mod framed;
pub mod identify;
pub mod ping;
pub use rendezvous_core::histogram;
pub mod server;
pub mod store;
#[cfg(test)]
mod test_swarm;
mod timed;

pub use clock::{Clock, ManualClock, system_unix_time};

use libp2p_core::Multiaddr;
use libp2p_core::multiaddr::Protocol;
use libp2p_swarm::StreamProtocol;
use rendezvous_core::Origin;

pub use rendezvous_core as core;

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/rendezvous/1.0.0");

/// This implementation's subscriptions
/// ([`rendezvous_core::SUBSCRIPTION_TYPE`]): a `DISCOVER_SUBSCRIBE`, then
/// every change to the namespace as it happens (docs/subscriptions.md).
pub const SUBSCRIBE_PROTOCOL: StreamProtocol =
    StreamProtocol::new(rendezvous_core::SUBSCRIPTION_TYPE);

/// The origin of a connection whose remote address is `remote`: the IP
/// address it starts with, an IPv6 one by its /64 (see [`Origin`]); `None`
/// without one. A relayed connection counts as its relay's. The server
/// counts registrations per origin; a host can bound connections by it too.
pub fn origin_of(remote: &Multiaddr) -> Option<Origin> {
    match remote.iter().next()? {
        Protocol::Ip4(ip) => Origin::from_ipv4(ip.octets()),
        Protocol::Ip6(ip) => Origin::from_ipv6(ip.octets()),
        _ => None,
    }
}
