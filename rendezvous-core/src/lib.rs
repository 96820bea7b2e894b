//! The libp2p rendezvous protocol (`/rendezvous/1.0.0`) as pure state machines.
//!
//! This crate does no I/O and reads no clock: no sockets, no executor, no
//! timers, no ambient randomness. Time comes in as a [`Timestamp`] argument,
//! bytes come in as frames, and what the protocol wants done comes out of
//! `poll_*` methods, so the same code runs under any runtime and every test
//! can simulate days in microseconds. A `clippy.toml` bans clock reads here.
//!
//! - [`Client`]: registers, refreshes at 80% of the granted TTL, retries with
//!   backoff, steps down a record-dialect ladder per server on evidence,
//!   discovers with cookies, watches namespaces and reports the peers that
//!   come and go.
//! - [`Server`]: the rendezvous point. Registrations keyed by (peer,
//!   namespace), TTL expiry, stateless cookies, every limit in [`Limits`].
//! - [`codec`]: the unsigned-varint-prefixed protobuf framing, with a hard
//!   frame limit checked before allocation.
//! - [`record`]: the two dialects of `Register.signedPeerRecord` (signed
//!   envelope, legacy `PeerInfo`), told apart per request.
//! - [`proto`]: the wire messages; `proto/rendezvous.proto` is their schema.
//!
//! # Interoperability
//! Signed-dialect peers (rust-libp2p, nim) send an envelope in
//! `signedPeerRecord`; legacy peers (go-libp2p-rendezvous, py-libp2p) send an
//! embedded `PeerInfo`. The server stores each registration with its dialect
//! and answers every DISCOVER in the dialect its requester reads: legacy
//! readers get every registration as `PeerInfo`, signed readers only the
//! envelopes of their own flavour (a rust-libp2p client fails a whole page on
//! one entry it cannot parse). Cookies are 8 bytes of big-endian position
//! followed by the namespace, the layout rust-libp2p's client insists on.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
pub mod codec;
pub mod cookie;
mod limits;
mod lru;
mod namespace;
pub mod proto;
pub mod record;
mod registry;
mod rng;
mod server;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod time;

pub use client::{
    Client, ClientConfig, ClientConfigError, ClientEvent, ClientTransmit, CommandError, Discovery,
    Failure, LostReason, REFRESH_PERCENT, RecordFlavour, RequestError,
};
pub use limits::{Limits, LimitsError, ServerConfig};
pub use namespace::{Namespace, NamespaceError};
pub use record::{AGENT_PREFIX, Dialect, Flavour, Reader};
pub use server::{Event as ServerEvent, Server, Stats, Transmit};
pub use time::Timestamp;

/// Identifies one request so that its answer (or completion event) can be
/// matched to it. The server's adapter picks them for inbound requests; the
/// client core picks them for its commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);
