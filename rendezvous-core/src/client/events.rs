//! What the client asks of its adapter, what it reports, and why things
//! fail.

use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::PeerId;

use crate::codec;
use crate::namespace::Namespace;
use crate::proto::{self, ResponseStatus};
use crate::record::{Addresses, Dialect};
use crate::request::RequestId;

/// A request to send.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientTransmit {
    /// The rendezvous server to send it to (dial it if not connected).
    pub server: PeerId,
    /// Report the outcome with this id. Every request of one command (each
    /// page of a walk, a REGISTER resent in another record flavour) carries
    /// the id the command returned; they go out one after the other, never
    /// two at once.
    pub request_id: RequestId,
    /// The request.
    pub message: proto::Message,
    /// Whether to read one response frame after writing. When false
    /// (UNREGISTER, which the protocol never answers), write it, close the
    /// writing side and report [`Client::handle_sent`](crate::Client::handle_sent)
    /// once the server has closed its side (it read everything) or after a
    /// short wait.
    pub expects_response: bool,
    /// A subscription ([`SUBSCRIPTION_TYPE`](crate::SUBSCRIPTION_TYPE)):
    /// open the substream on that protocol rather than
    /// `/rendezvous/1.0.0`, then hand every frame read to
    /// [`Client::handle_response_frame`](crate::Client::handle_response_frame)
    /// under this request id until the substream ends, and report its end
    /// with [`Client::handle_failure`](crate::Client::handle_failure).
    /// A server that does not speak it: [`Failure::Unsupported`].
    pub subscription: bool,
}

impl ClientTransmit {
    /// The request as a length-prefixed frame.
    pub fn to_frame(&self) -> Bytes {
        codec::frame(&self.message)
    }
}

/// A peer found by DISCOVER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// Who.
    pub peer: PeerId,
    /// Where it can be reached.
    pub addresses: Addresses,
    /// The namespace it registered in.
    pub namespace: Namespace,
    /// What its registration had left when discovered (at most
    /// [`ClientConfig::max_ttl`](crate::ClientConfig::max_ttl)).
    pub ttl: Duration,
    /// The record as the server sent it, in the dialect it sent.
    pub record: Bytes,
    /// That dialect.
    pub dialect: Dialect,
}

/// How an adapter failed to carry a request, and so whether the server may
/// have acted on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The server could not be dialed, or the connection closed before the
    /// outcome was known. A request already written may have been applied.
    Unreachable,
    /// The server does not speak `/rendezvous/1.0.0`; nothing was sent.
    Unsupported,
    /// The substream closed or was reset before a response was read. With
    /// `written`, the whole request had gone out: the server read it and may
    /// have acted on it, and a server that rejects a record by closing the
    /// substream (rust-libp2p's on a record it cannot parse, canvas-js's on
    /// any error) looks like this. Without, it was cut off while writing.
    StreamClosed {
        /// Whether the request was written whole.
        written: bool,
    },
    /// The adapter's own time limit passed with no response; the server
    /// may have acted on the request.
    TimedOut,
    /// The response frame was over the size limit or cut short.
    InvalidResponse,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The server answered with an error status.
    #[error("server refused: {status:?}: {text}")]
    Refused {
        /// The status, or the raw number if unknown.
        status: Result<ResponseStatus, i32>,
        /// The server's `statusText`.
        text: String,
    },
    /// No answer within
    /// [`ClientConfig::request_timeout`](crate::ClientConfig::request_timeout).
    #[error("no response in time")]
    Timeout,
    /// The adapter could not carry the request.
    #[error("transport failure: {0:?}")]
    Transport(Failure),
    /// The response could not be understood.
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl RequestError {
    /// Worth retrying later: the server may accept the same request then.
    pub fn is_transient(&self) -> bool {
        match self {
            RequestError::Refused { status, .. } => matches!(
                status,
                Ok(ResponseStatus::EUnavailable | ResponseStatus::EInternalError) | Err(_)
            ),
            RequestError::Timeout | RequestError::Transport(_) | RequestError::Malformed(_) => true,
        }
    }

    /// Whether the server may have applied the request all the same: only a
    /// refusal the spec defines, or a request that never went out whole,
    /// says it did not.
    pub fn may_have_applied(&self) -> bool {
        match self {
            RequestError::Refused {
                status: Ok(ResponseStatus::EInternalError) | Err(_), ..
            } => true,
            RequestError::Refused { .. } => false,
            RequestError::Transport(Failure::Unsupported) => false,
            RequestError::Transport(Failure::StreamClosed { written }) => *written,
            RequestError::Timeout | RequestError::Transport(_) | RequestError::Malformed(_) => true,
        }
    }
}

/// Why a command was not accepted; nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// [`ClientConfig::max_pending`](crate::ClientConfig::max_pending)
    /// requests are in flight.
    #[error("{0} requests already in flight")]
    TooManyPending(usize),
    /// [`ClientConfig::max_registrations`](crate::ClientConfig::max_registrations)
    /// registrations are kept alive.
    #[error("{0} registrations already kept alive")]
    TooManyRegistrations(usize),
    /// [`ClientConfig::max_watches`](crate::ClientConfig::max_watches)
    /// namespaces are watched.
    #[error("{0} namespaces already watched")]
    TooManyWatches(usize),
    /// The local key cannot sign a record.
    #[error("cannot sign the peer record: {0}")]
    Signing(String),
    /// The client has no address to announce.
    #[error("no addresses to announce")]
    NoAddresses,
    /// The namespace is longer than
    /// [`ClientConfig::max_namespace_len`](crate::ClientConfig::max_namespace_len).
    #[error("namespace of {len} bytes exceeds the limit of {max} bytes")]
    NamespaceTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why a cached peer is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// Its registration's TTL ran out without a refresh being seen.
    Expired,
    /// A full rediscovery no longer found it: it unregistered.
    Unregistered,
}

/// What happened. Events carrying `request: Some(id)` complete the command
/// that returned `id`; every command gets exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A registration was accepted. `request` is `None` for background
    /// re-registrations (refresh, retry, reconnect, new addresses).
    Registered {
        /// The command this completes, if any.
        request: Option<RequestId>,
        /// Where.
        server: PeerId,
        /// In which namespace.
        namespace: Namespace,
        /// The TTL believed (the grant, at most what was asked and
        /// [`ClientConfig::max_ttl`](crate::ClientConfig::max_ttl)); the
        /// refresh is due at [`REFRESH_PERCENT`](crate::REFRESH_PERCENT) of it.
        ttl: Duration,
        /// The record dialect the server took.
        dialect: Dialect,
    },
    /// A registration failed. With `retry_in` set it will be retried;
    /// without, it is given up.
    RegisterFailed {
        /// The command this completes, if any.
        request: Option<RequestId>,
        /// Where.
        server: PeerId,
        /// In which namespace.
        namespace: Namespace,
        /// Why.
        error: RequestError,
        /// When the next attempt goes out.
        retry_in: Option<Duration>,
    },
    /// An UNREGISTER was written (`delivered`) or could not be.
    Unregistered {
        /// The command this completes, if any.
        request: Option<RequestId>,
        /// Where.
        server: PeerId,
        /// Which namespace.
        namespace: Namespace,
        /// Whether the adapter reported it written.
        delivered: bool,
    },
    /// A DISCOVER (or every page of a `discover_all`) was answered.
    Discovered {
        /// The command this completes.
        request: RequestId,
        /// Which server.
        server: PeerId,
        /// The namespace asked for; `None` for all.
        namespace: Option<Namespace>,
        /// The peers found, in the server's order, each once; our own
        /// registration too.
        registrations: Vec<Discovery>,
        /// Entries skipped because their record did not parse.
        skipped: usize,
    },
    /// A DISCOVER failed.
    DiscoverFailed {
        /// The command this completes.
        request: RequestId,
        /// Which server.
        server: PeerId,
        /// The namespace asked for; `None` for all.
        namespace: Option<Namespace>,
        /// Why.
        error: RequestError,
    },
    /// A peer not in the cache was discovered: it appeared.
    PeerFound {
        /// The discover command that found it; `None` for a watch.
        request: Option<RequestId>,
        /// At which server.
        server: PeerId,
        /// What was found.
        discovery: Discovery,
    },
    /// A cached peer is gone.
    PeerLost {
        /// Who.
        peer: PeerId,
        /// From which namespace.
        namespace: Namespace,
        /// Why.
        reason: LostReason,
    },
    /// A watch's rediscovery failed; the next one is still due.
    RediscoverFailed {
        /// Which server.
        server: PeerId,
        /// Which namespace.
        namespace: Namespace,
        /// Why.
        error: RequestError,
    },
    /// `server` accepted our record in `dialect` (once per connection).
    FlavourAccepted {
        /// Which server.
        server: PeerId,
        /// What it took.
        dialect: Dialect,
    },
    /// `server` rejected our record in `dialect`; the next REGISTER is sent
    /// in `next`, or, with `None`, it reads none of our dialects.
    FlavourRefused {
        /// Which server.
        server: PeerId,
        /// What it rejected.
        dialect: Dialect,
        /// The evidence.
        error: RequestError,
        /// What comes next.
        next: Option<Dialect>,
    },
}
