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
//!   namespace), TTL expiry, stateless cookies, discovery that starts each
//!   walk at a random place ([`DiscoverStart`]), every limit in [`Limits`].
//! - [`codec`]: the unsigned-varint-prefixed protobuf framing, with a hard
//!   frame limit checked before allocation.
//! - [`record`]: the two dialects of `Register.signedPeerRecord` (signed
//!   envelope, legacy `PeerInfo`), told apart per request.
//! - [`proto`]: the wire messages; `proto/rendezvous.proto` is their schema.
//!
//! # The run loop
//! An adapter feeds each request body it reads to the server, then drains
//! transmits (one per request, to write on that request's substream),
//! events (for logs and metrics) and the next deadline, for its one timer:
//!
//! ```
//! use rendezvous_core::codec::{self, FrameDecoder};
//! use rendezvous_core::{RequestId, Server, ServerConfig, Timestamp, proto};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut server = Server::new(ServerConfig::default())?;
//! let mut decoder = FrameDecoder::new(server.limits().max_request_frame);
//! // Bytes as they arrive on a substream from `peer`: here, one DISCOVER.
//! let peer = libp2p_identity::PeerId::random();
//! let discover = proto::Discover { ns: Some("chat".into()), ..Default::default() };
//! let request = proto::Message {
//!     r#type: Some(proto::MessageType::Discover as i32),
//!     discover: Some(discover),
//!     ..Default::default()
//! };
//! let mut arrived = &codec::frame(&request)[..];
//! let now = Timestamp::from_secs(1);
//! while let Some(body) = decoder.feed(&mut arrived)? {
//!     // An error here is the peer's fault: end that substream only.
//!     server.handle_frame(now, peer, RequestId(1), &body)?;
//! }
//! while let Some(transmit) = server.poll_transmit() {
//!     // Write `frame` on the substream of `transmit.request_id`; `None`
//!     // (an UNREGISTER) means read the next request.
//!     let frame = transmit.to_frame();
//!     assert!(frame.is_some());
//! }
//! while let Some(event) = server.poll_event() {
//!     println!("{event:?}");
//! }
//! if let Some(deadline) = server.poll_timeout() {
//!     // Arm the one timer; when it fires:
//!     server.handle_timeout(deadline);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Interoperability
//! Signed-dialect peers send an envelope in `signedPeerRecord`, in one of two
//! flavours: rust-libp2p's own, or the standard one of go, js and nim;
//! legacy peers (go-libp2p-rendezvous, py-libp2p) send an embedded
//! `PeerInfo`. A registration keeps every flavour its peer sent with the same
//! addresses, and every DISCOVER is answered with what its reader verifies
//! ([`Reader::from_agent_version`] maps identify's agent to it): the
//! rust envelope, the standard one, or `PeerInfo` (a rust-libp2p client
//! fails a whole page on one entry it cannot parse). Cookies are 8 bytes of
//! big-endian position followed by the namespace, the layout rust-libp2p's
//! client insists on; a walk that starts at a random place keeps its start
//! and cursor in those 8 bytes ([`cookie`] says how).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
mod client;
pub mod codec;
pub mod cookie;
pub mod histogram;
pub mod idle;
mod limits;
mod lru;
mod namespace;
mod origin;
pub mod proto;
mod rate;
pub mod record;
mod registry;
mod request;
mod rng;
mod server;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod time;

pub use client::{
    Client, ClientConfig, ClientConfigError, ClientEvent, ClientTransmit, CommandError, Discovery,
    Failure, LostReason, REFRESH_PERCENT, RecordFlavour, RequestError,
};
pub use limits::{ConfigError, DiscoverStart, Limits, LimitsError, ServerConfig};
pub use namespace::{Namespace, NamespaceError};
pub use origin::Origin;
pub use rate::{RateLimit, RateLimitError};
pub use record::{AGENT_PREFIX, Dialect, Flavour, Reader};
pub use request::RequestId;
pub use server::{
    Durability, Event as ServerEvent, Loaded, Push, RequestCounts, RequestKind, SUBSCRIPTION_TYPE,
    Server, Stats, SubscriptionId, SubscriptionLimits, Transmit,
};
pub use time::Timestamp;
