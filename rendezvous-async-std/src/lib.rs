//! The rendezvous point and client as a libp2p host on async-std, and the
//! `rendezvous` binary.
//!
//! - [`transport`]: TCP for libp2p on async-io (rust-libp2p's own TCP
//!   transport only supports tokio now), with [`coalesce`]'s streams: one
//!   `send` per wakeup rather than per frame.
//! - [`websocket`]: `/ws` and `/wss` on that transport, for browsers.
//! - [`host`]: TCP or WebSocket, noise, yamux, identify, ping and connection
//!   limits around the `rendezvous-libp2p` behaviours, on any executor.
//! - [`node`]: a ready rendezvous point ([`node::ServerNode`]) and client
//!   ([`node::ClientNode`]): what the `rendezvous` binary does, in one call.
//! - [`http`]: metrics, health and the namespaces a point holds, over HTTP.
//! - [`store`]: store engines for a durable point (an embedded one behind
//!   the default `redb` feature).
//!
//! - [`runtime`]: the threads a node runs on (one, by default, in the
//!   binary).
//!
//! async-std 1.13 is discontinued upstream. Nothing here depends on it but
//! [`runtime`]'s fallback outside [`runtime::run`]: the transport runs on
//! async-io, the reactor async-std itself uses, [`runtime::run`] on
//! async-executor, and [`host::build`] takes any executor (smol is tested).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod coalesce;
pub mod handshakes;
pub mod host;
pub mod http;
pub mod keyfile;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod per_ip;
pub mod runtime;
pub mod store;
pub mod transport;
pub mod websocket;
