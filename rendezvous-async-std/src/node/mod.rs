//! Ready-made rendezvous points and clients: everything the `rendezvous`
//! binary does, in one call, for programs that embed it.
//!
//! - [`ServerNode`]: identity, listeners, limits, the identify → record
//!   flavour wiring, logs and statistics; [`ServerNode::run`] serves until a
//!   shutdown signal.
//! - [`ClientNode`]: identity, listener, the connection to one rendezvous
//!   point, and the client behaviour to command.
//!
//! Both take an options struct with `Default` and a documented field per
//! flag of the binary; `rendezvous --help` maps onto them one to one, and
//! every default, bound and check is the options' own, so an embedder gets
//! the same point as the binary. Both run one loop ([`event_loop`]); the
//! demo's log lines are a printer over their events ([`demo`]).

mod client;
pub mod demo;
pub mod event_loop;
mod fds;
mod server;
mod summary;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use libp2p_identity::Keypair;

pub use client::{ClientNode, ClientOptions, Session, SessionEvent};
pub use event_loop::{Identified, peer_of, server_address, with_peer};
pub use server::{ServerNode, ServerOptions, ShutDown};

use crate::host::{SpawnWith, Task};
use crate::http::Endpoint;
use crate::keyfile;

/// Where a node's key comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Identity {
    /// The data dir's `key` file when the node has a data dir (a point with
    /// an embedded store, or a Redis and a data dir for its key), a new key
    /// every start otherwise.
    #[default]
    Auto,
    /// A new key every start (a new peer id).
    Ephemeral,
    /// The key in this file, created (readable by the owner only) if absent:
    /// the same peer id every start.
    KeyFile(PathBuf),
}

impl Identity {
    fn keypair(&self, data_dir: Option<&std::path::Path>) -> Result<Keypair, NodeError> {
        let file = match (self, data_dir) {
            (Identity::KeyFile(path), _) => path.clone(),
            (Identity::Auto, Some(dir)) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    NodeError::Config(format!("cannot use data dir {}: {e}", dir.display()))
                })?;
                dir.join("key")
            }
            (Identity::Auto | Identity::Ephemeral, _) => return Ok(Keypair::generate_ed25519()),
        };
        keyfile::load_or_create(&file)
            .map_err(|e| NodeError::Key(format!("{}: {e}", file.display())))
    }
}

/// Why a node could not start, in one line that names the thing at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeError {
    /// The key file cannot be read or created.
    Key(String),
    /// A limit or setting cannot work.
    Config(String),
    /// Listening failed.
    Listen(String),
    /// The rendezvous point cannot be reached.
    Connect(String),
    /// The rendezvous point refused what a session needs; the text says
    /// what and why.
    Rendezvous(String),
    /// The store cannot be opened; the text names the path and the problem.
    Store(String),
    /// The metrics endpoint cannot listen.
    Metrics(String),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Key(why) => write!(f, "cannot use key file {why}"),
            NodeError::Config(why) => write!(f, "invalid settings: {why}"),
            NodeError::Listen(why) => write!(f, "cannot listen on {why}"),
            NodeError::Metrics(why) => write!(f, "cannot serve metrics: {why}"),
            NodeError::Connect(why) => write!(f, "Failed to connect to server: {why}"),
            NodeError::Rendezvous(why) | NodeError::Store(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for NodeError {}

/// Runs the swarm's tasks where [`crate::runtime`] says.
fn executor() -> SpawnWith<impl Fn(Task) + Send + 'static> {
    SpawnWith(crate::runtime::spawn)
}

/// The HTTP endpoint at `addr`, when one is asked for.
fn http_endpoint(addr: Option<SocketAddr>) -> Result<Option<Endpoint>, NodeError> {
    let serve = |addr| {
        Endpoint::serve(addr).map_err(|e| NodeError::Metrics(format!("{addr}: {}", root_cause(&e))))
    };
    addr.map(serve).transpose()
}

/// The innermost error's message: what actually went wrong, without the
/// layers of context libp2p wraps around it.
pub fn root_cause(error: &dyn std::error::Error) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    let text = inner.to_string();
    if text.is_empty() { error.to_string() } else { text }
}
