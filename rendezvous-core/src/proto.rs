//! The rendezvous protobuf messages (`proto/rendezvous.proto`), derived by hand.
//!
//! Every field is `optional` (proto2) so that what we send writes `type` and
//! `status` explicitly, as rust-libp2p requires, and what we receive tolerates
//! proto3 peers leaving defaults off the wire: an absent field reads as its
//! default. Byte fields are [`Bytes`] so that a record decoded from a request
//! can be stored and served again without a copy.

use bytes::Bytes;

/// The envelope of every rendezvous message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    /// A [`MessageType`]; absent means `REGISTER` (proto3 default).
    #[prost(enumeration = "MessageType", optional, tag = "1")]
    pub r#type: Option<i32>,
    /// Body of a `REGISTER`.
    #[prost(message, optional, tag = "2")]
    pub register: Option<Register>,
    /// Body of a `REGISTER_RESPONSE`.
    #[prost(message, optional, tag = "3")]
    pub register_response: Option<RegisterResponse>,
    /// Body of an `UNREGISTER`.
    #[prost(message, optional, tag = "4")]
    pub unregister: Option<Unregister>,
    /// Body of a `DISCOVER`.
    #[prost(message, optional, tag = "5")]
    pub discover: Option<Discover>,
    /// Body of a `DISCOVER_RESPONSE`.
    #[prost(message, optional, tag = "6")]
    pub discover_response: Option<DiscoverResponse>,
    /// Set for `DISCOVER_SUBSCRIBE`.
    #[prost(message, optional, tag = "100")]
    pub discover_subscribe: Option<DiscoverSubscribe>,
    /// Set for `DISCOVER_SUBSCRIBE_RESPONSE`.
    #[prost(message, optional, tag = "101")]
    pub discover_subscribe_response: Option<DiscoverSubscribeResponse>,
}

/// `Message.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MessageType {
    /// A registration request.
    Register = 0,
    /// The answer to `REGISTER`.
    RegisterResponse = 1,
    /// Removes a registration; never answered.
    Unregister = 2,
    /// A discovery request.
    Discover = 3,
    /// The answer to `DISCOVER`.
    DiscoverResponse = 4,
    /// Asks to follow a namespace (go-libp2p-rendezvous's number; see
    /// `docs/subscriptions.md`).
    DiscoverSubscribe = 100,
    /// The answer to `DISCOVER_SUBSCRIBE`.
    DiscoverSubscribeResponse = 101,
}

/// `RegisterResponse.status` and `DiscoverResponse.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ResponseStatus {
    /// Success.
    Ok = 0,
    /// The namespace is empty where one is required, or too long.
    EInvalidNamespace = 100,
    /// The record is malformed, badly signed or names another peer
    /// (`E_INVALID_PEER_INFO` in the legacy dialect).
    EInvalidSignedPeerRecord = 101,
    /// The TTL is outside the server's range.
    EInvalidTtl = 102,
    /// The cookie is malformed or belongs to another namespace.
    EInvalidCookie = 103,
    /// The peer may not do this (e.g. it holds too many registrations).
    ENotAuthorized = 200,
    /// The server failed.
    EInternalError = 300,
    /// The server cannot take it now (e.g. it is full), or does not offer it.
    EUnavailable = 400,
}

impl ResponseStatus {
    /// Every status, in number order.
    pub const ALL: [ResponseStatus; 8] = [
        ResponseStatus::Ok,
        ResponseStatus::EInvalidNamespace,
        ResponseStatus::EInvalidSignedPeerRecord,
        ResponseStatus::EInvalidTtl,
        ResponseStatus::EInvalidCookie,
        ResponseStatus::ENotAuthorized,
        ResponseStatus::EInternalError,
        ResponseStatus::EUnavailable,
    ];

    /// The spec's name in lower case (`ok`, `e_invalid_ttl`, ...), for logs
    /// and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            ResponseStatus::Ok => "ok",
            ResponseStatus::EInvalidNamespace => "e_invalid_namespace",
            ResponseStatus::EInvalidSignedPeerRecord => "e_invalid_signed_peer_record",
            ResponseStatus::EInvalidTtl => "e_invalid_ttl",
            ResponseStatus::EInvalidCookie => "e_invalid_cookie",
            ResponseStatus::ENotAuthorized => "e_not_authorized",
            ResponseStatus::EInternalError => "e_internal_error",
            ResponseStatus::EUnavailable => "e_unavailable",
        }
    }
}

/// `Message.Register`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Register {
    /// The namespace.
    #[prost(string, optional, tag = "1")]
    pub ns: Option<String>,
    /// A signed envelope (signed dialect) or an embedded `PeerInfo` (legacy).
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub signed_peer_record: Option<Bytes>,
    /// Seconds; `0` or absent means the server's default.
    #[prost(uint64, optional, tag = "3")]
    pub ttl: Option<u64>,
    /// This crate's extension: the same peer record in other envelope
    /// flavours, so that one REGISTER reaches readers of every stack. A
    /// server that does not know field 100 skips it, as protobuf decoders
    /// do with unknown fields; ours stores each flavour and serves every
    /// reader the one it verifies.
    #[prost(bytes = "bytes", repeated, tag = "100")]
    pub other_records: Vec<Bytes>,
}

/// `Message.RegisterResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterResponse {
    /// A [`ResponseStatus`].
    #[prost(enumeration = "ResponseStatus", optional, tag = "1")]
    pub status: Option<i32>,
    /// Human-readable reason for a failure.
    #[prost(string, optional, tag = "2")]
    pub status_text: Option<String>,
    /// The TTL the server granted, in seconds.
    #[prost(uint64, optional, tag = "3")]
    pub ttl: Option<u64>,
}

/// `Message.Unregister`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Unregister {
    /// The namespace.
    #[prost(string, optional, tag = "1")]
    pub ns: Option<String>,
    /// Deprecated peer id; ignored on receipt, never sent.
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub id: Option<Bytes>,
}

/// `Message.Discover`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Discover {
    /// The namespace; absent or empty means every namespace.
    #[prost(string, optional, tag = "1")]
    pub ns: Option<String>,
    /// The most registrations wanted; absent or `0` means the server's default.
    #[prost(uint64, optional, tag = "2")]
    pub limit: Option<u64>,
    /// Where the previous page ended.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub cookie: Option<Bytes>,
}

/// `Message.DiscoverResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoverResponse {
    /// One page of registrations.
    #[prost(message, repeated, tag = "1")]
    pub registrations: Vec<Register>,
    /// Where this page ended; send it back to get what is new.
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub cookie: Option<Bytes>,
    /// A [`ResponseStatus`].
    #[prost(enumeration = "ResponseStatus", optional, tag = "3")]
    pub status: Option<i32>,
    /// Human-readable reason for a failure.
    #[prost(string, optional, tag = "4")]
    pub status_text: Option<String>,
    /// Extension, on the subscription protocol only: registrations that
    /// left, each as its namespace and its peer id (`Unregister.id`).
    #[prost(message, repeated, tag = "100")]
    pub departures: Vec<Unregister>,
    /// Extension: this page starts a full resend, which replaces what the
    /// subscriber knew once its last page (the next with a cookie) arrives.
    #[prost(bool, optional, tag = "101")]
    pub full: Option<bool>,
}

/// `DISCOVER_SUBSCRIBE`: follow a namespace as it changes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoverSubscribe {
    /// The subscription types the client can follow, best first.
    #[prost(string, repeated, tag = "1")]
    pub supported_subscription_types: Vec<String>,
    /// The namespace.
    #[prost(string, optional, tag = "2")]
    pub ns: Option<String>,
    /// Extension: the cookie of the last batch received, to resume from.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub position: Option<Bytes>,
}

/// `DISCOVER_SUBSCRIBE_RESPONSE`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoverSubscribeResponse {
    /// The type the server chose from the client's.
    #[prost(string, optional, tag = "1")]
    pub subscription_type: Option<String>,
    /// How to follow it: for this implementation's type, its protocol id.
    #[prost(string, optional, tag = "2")]
    pub subscription_details: Option<String>,
    /// A [`ResponseStatus`].
    #[prost(enumeration = "ResponseStatus", optional, tag = "3")]
    pub status: Option<i32>,
    /// Human-readable reason for a failure.
    #[prost(string, optional, tag = "4")]
    pub status_text: Option<String>,
}

/// Legacy dialect: the embedded record of go-libp2p-rendezvous and py-libp2p.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerInfo {
    /// The peer id in its binary form.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub id: Option<Bytes>,
    /// Binary multiaddrs.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub addrs: Vec<Bytes>,
}

/// An RFC 0002 signed envelope.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// The signer's public key, protobuf-encoded.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub public_key: Option<Bytes>,
    /// Tells what the payload is.
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub payload_type: Option<Bytes>,
    /// The signed payload.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub payload: Option<Bytes>,
    /// The signature over domain, payload type and payload.
    #[prost(bytes = "bytes", optional, tag = "5")]
    pub signature: Option<Bytes>,
}

/// A libp2p peer record, the payload of a signed envelope.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerRecord {
    /// The peer id in its binary form.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub peer_id: Option<Bytes>,
    /// Orders records of one peer in time.
    #[prost(uint64, optional, tag = "2")]
    pub seq: Option<u64>,
    /// The peer's addresses.
    #[prost(message, repeated, tag = "3")]
    pub addresses: Vec<AddressInfo>,
}

/// `PeerRecord.AddressInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddressInfo {
    /// A binary multiaddr.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub multiaddr: Option<Bytes>,
}

impl Message {
    /// The message type, with proto3's omitted default read as `REGISTER`;
    /// `Err` holds a number this crate does not know.
    pub fn message_type(&self) -> Result<MessageType, i32> {
        let raw = self.r#type.unwrap_or(0);
        MessageType::try_from(raw).map_err(|_| raw)
    }

    /// The raw status field of the response this message carries (a
    /// REGISTER or DISCOVER response); `None` when it carries neither, or
    /// omits the field. Read it with [`read_status`].
    pub fn response_status(&self) -> Option<i32> {
        let register = self.register_response.as_ref().and_then(|r| r.status);
        let subscribe = || self.discover_subscribe_response.as_ref().and_then(|s| s.status);
        register
            .or_else(|| self.discover_response.as_ref().and_then(|d| d.status))
            .or_else(subscribe)
    }
}

/// Reads a status field, with proto3's omitted default read as `OK`; `Err`
/// holds a number this crate does not know.
pub fn read_status(raw: Option<i32>) -> Result<ResponseStatus, i32> {
    let raw = raw.unwrap_or(0);
    ResponseStatus::try_from(raw).map_err(|_| raw)
}
