//! The demo's log lines: printers over the nodes' events, in the words of
//! py-libp2p's rendezvous demo. The nodes decide; these only say.

use libp2p_identity::PeerId;
use libp2p_swarm::SwarmEvent;
use rendezvous_libp2p::core::{Dialect, Discovery, Flavour, RequestError, ServerEvent};
use rendezvous_libp2p::server;
use tracing::{debug, info, warn};

use super::client::SessionEvent;
use super::event_loop::with_peer;
use super::{ClientNode, ServerNode};
use crate::host::ServerHostEvent;

const SERVER: &str = "rendezvous::server";
const CLIENT: &str = "rendezvous::client";

/// The lines a point prints once it listens: its peer id, addresses, and
/// the command that connects a client to it in `namespace`.
pub fn server_started(node: &ServerNode, namespace: &str) {
    info!(target: SERVER, "Rendezvous server started with peer ID: {}", node.peer_id());
    for address in node.listen_addresses() {
        info!(target: SERVER, "Listening on: {address}");
    }
    if let Some(http) = node.metrics_address() {
        info!(target: SERVER, "Metrics at http://{http}/metrics");
        info!(target: SERVER, "Health at http://{http}/healthz and /readyz");
    }
    if let Some(first) = node.listen_addresses().first() {
        let namespace = shell_word(namespace);
        info!(target: SERVER, "To connect a client, use:");
        info!(target: SERVER, "  {} --mode client --address {first} --namespace {namespace}", command());
    }
    info!(target: SERVER, "Press Ctrl+C to stop...");
}

/// The lines a point prints as it stops: what a graceful shutdown left.
pub fn server_shut_down(left: super::ShutDown) {
    info!(target: SERVER, "Shutting down rendezvous server...");
    if left.unanswered > 0 || left.uncommitted > 0 {
        let (unanswered, uncommitted) = (left.unanswered, left.uncommitted);
        warn!(target: SERVER, "Stopped with {unanswered} requests unanswered and {uncommitted} writes not yet stored");
    }
}

/// The last line a point prints.
pub fn server_stopped() {
    info!(target: SERVER, "Stopped");
}

/// The lines a client prints once connected.
pub fn client_started(node: &ClientNode, refresh: bool) {
    info!(target: CLIENT, "Connected to rendezvous server: {}", node.server());
    info!(target: CLIENT, "Enable refresh: {}", if refresh { "True" } else { "False" });
    if refresh {
        info!(target: CLIENT, "🔄 Refresh mode enabled - discovery service running in background");
    }
    info!(target: CLIENT, "Client started with peer ID: {}", node.peer_id());
    if let Some(http) = node.metrics_address() {
        info!(target: CLIENT, "Metrics at http://{http}/metrics");
    }
}

/// How to run this program again, as printed in the server's connect hint:
/// its name when it is on `PATH`, the cargo command when it runs from a
/// cargo target directory (the README's `cargo run`), its path otherwise.
fn command() -> String {
    let Ok(exe) = std::env::current_exe().and_then(|e| e.canonicalize()) else {
        return "rendezvous".into();
    };
    let paths = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&paths)
        .any(|dir| dir.join("rendezvous").canonicalize().is_ok_and(|p| p == exe));
    if on_path {
        "rendezvous".into()
    } else if exe.components().any(|c| c.as_os_str() == "target") {
        "cargo run --release --bin rendezvous --".into()
    } else {
        shell_word(&exe.display().to_string())
    }
}

/// `word` as one shell word: quoted unless it is plain.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A point's event. Registration changes, refusals and rejected substreams
/// are DEBUG lines (`-v`): at INFO a busy point would spend its time
/// writing them, and a peer would decide how much it writes; the node sums
/// refusals up once per interval.
pub fn server_event(event: &SwarmEvent<ServerHostEvent>, me: PeerId) {
    match event {
        SwarmEvent::NewListenAddr { address, .. } => {
            info!(target: SERVER, "Listening on: {}", with_peer(address, me));
        }
        SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
            debug!(target: SERVER, "Connection from {peer_id} at {}", endpoint.get_remote_address());
        }
        SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
            debug!(target: SERVER, "Incoming connection from {send_back_addr} failed: {error}");
        }
        SwarmEvent::Behaviour(ServerHostEvent::Rendezvous(event)) => rendezvous_event(event),
        _ => {}
    }
}

fn rendezvous_event(event: &server::Event) {
    match event {
        server::Event::Core(ServerEvent::Registered { peer, namespace, ttl, dialect }) => {
            let ttl = ttl.as_secs();
            debug!(target: SERVER, "Registered {peer} in '{namespace}' for {ttl}s ({dialect:?})");
        }
        server::Event::Core(ServerEvent::Refreshed { peer, namespace, ttl, .. }) => {
            debug!(target: SERVER, "Refreshed {peer} in '{namespace}' for {}s", ttl.as_secs());
        }
        server::Event::Core(ServerEvent::Unregistered { peer, namespace }) => {
            debug!(target: SERVER, "Unregistered {peer} from '{namespace}'");
        }
        server::Event::Core(ServerEvent::Expired { peer, namespace }) => {
            debug!(target: SERVER, "Registration of {peer} in '{namespace}' expired");
        }
        server::Event::Core(ServerEvent::Refused { peer, request, status, reason }) => {
            debug!(target: SERVER, "Refused {request:?} from {peer}: {status:?}: {reason}");
        }
        server::Event::Core(ServerEvent::Discovered { peer, namespace, count }) => {
            let ns = namespace
                .as_ref()
                .map_or_else(|| "all namespaces".to_owned(), |n| format!("'{n}'"));
            debug!(target: SERVER, "Served {count} registrations of {ns} to {peer}");
        }
        server::Event::Core(ServerEvent::Subscribed { peer, namespace, resumed }) => {
            let how = if *resumed { "resumed" } else { "from the start" };
            debug!(target: SERVER, "Subscribed {peer} to '{namespace}' ({how})");
        }
        server::Event::Core(ServerEvent::Unsubscribed { peer, namespace }) => {
            debug!(target: SERVER, "Subscription of {peer} to '{namespace}' ended");
        }
        server::Event::Core(ServerEvent::SubscriberDropped { peer, namespace, unread }) => {
            debug!(target: SERVER, "Dropped the subscription of {peer} to '{namespace}': {unread} bytes unread");
        }
        server::Event::StreamRejected { peer, reason } => {
            debug!(target: SERVER, "Rejected a stream from {peer}: {}: {reason:?}", reason.name());
        }
        other => debug!(target: SERVER, "{other:?}"),
    }
}

/// A client session's event.
pub fn client_event(event: &SessionEvent) {
    match event {
        SessionEvent::Registering { namespace } => {
            info!(target: CLIENT, "Registering in namespace '{namespace}'...");
        }
        SessionEvent::Registered { ttl } => {
            info!(target: CLIENT, "✓ Registered with TTL {}s", ttl.as_secs());
        }
        SessionEvent::Discovering { namespace } => {
            info!(target: CLIENT, "Discovering peers in namespace '{namespace}'...");
        }
        SessionEvent::Discovered { me, registrations, skipped } => {
            report(*me, registrations, *skipped);
        }
        SessionEvent::Watching => {
            info!(target: CLIENT, "Refresh mode: Registration will auto-refresh; press Ctrl+C to stop");
        }
        SessionEvent::Refreshed { namespace, ttl } => {
            info!(target: CLIENT, "↻ Refreshed registration in '{namespace}' with TTL {}s", ttl.as_secs());
        }
        SessionEvent::RefreshFailed { namespace, error, retry_in } => {
            warn!(target: CLIENT, "Refresh in '{namespace}' failed ({}); retrying in {}s", describe(error), retry_in.as_secs());
        }
        SessionEvent::FlavourRefused { server, dialect, error, next } => {
            let next = next.map_or("it reads none of our records".into(), |d| {
                format!("trying the {}", name(d))
            });
            info!(target: CLIENT, "{server} refused our {} ({}); {next}", name(*dialect), describe(error));
        }
        SessionEvent::FlavourAccepted { server, dialect } => {
            info!(target: CLIENT, "{server} took our {}", name(*dialect));
        }
        SessionEvent::PeerFound(found) => {
            info!(target: CLIENT, "  Found peer: {} {}", found.peer, addresses(found));
        }
        SessionEvent::PeerLost { peer, reason } => {
            info!(target: CLIENT, "  Lost peer: {peer} ({reason:?})");
        }
        SessionEvent::RediscoverFailed { namespace, error } => {
            warn!(target: CLIENT, "Rediscovering '{namespace}' failed ({}); trying again later", describe(error));
        }
        SessionEvent::Unregistering { namespace } => {
            info!(target: CLIENT, "Unregistering from namespace '{namespace}'...");
        }
        SessionEvent::Undelivered => {
            warn!(target: CLIENT, "The unregistration could not be delivered; the server drops it at its TTL");
        }
        SessionEvent::Unregistered => info!(target: CLIENT, "✓ Unregistered successfully"),
        SessionEvent::GaveUp { waited } => {
            warn!(target: CLIENT, "Gave up waiting for the unregistration after {}s", waited.as_secs());
        }
        SessionEvent::Other(event) => debug!(target: CLIENT, "{event}"),
    }
}

/// The demo's lines for a completed discovery.
fn report(me: PeerId, registrations: &[Discovery], skipped: usize) {
    for found in registrations {
        if found.peer == me {
            info!(target: CLIENT, "  Found self: {}", found.peer);
        } else {
            info!(target: CLIENT, "  Found peer: {} {}", found.peer, addresses(found));
        }
    }
    if skipped > 0 {
        warn!(target: CLIENT, "Skipped {skipped} registrations whose record could not be read");
    }
    info!(target: CLIENT, "Total peers found: {}", registrations.len());
    if registrations.iter().any(|r| r.peer != me) {
        info!(target: CLIENT, "✓ Successfully discovered other peers!");
    } else {
        info!(target: CLIENT, "No other peers found (only self)");
    }
}

fn addresses(found: &Discovery) -> String {
    found.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

fn name(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Signed(Flavour::RustLibp2p) => "rust-libp2p envelope",
        Dialect::Signed(Flavour::Standard) => "standard envelope",
        Dialect::Legacy => "legacy PeerInfo",
    }
}

/// A refusal with its status and text, or what else went wrong.
pub fn describe(error: &RequestError) -> String {
    match error {
        RequestError::Refused { status: Ok(status), text } => format!("{status:?}: {text}"),
        RequestError::Refused { status: Err(raw), text } => format!("status {raw}: {text}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_the_shell_would_split_are_quoted() {
        assert_eq!(shell_word("my-app"), "my-app");
        assert_eq!(shell_word("my app"), "'my app'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
