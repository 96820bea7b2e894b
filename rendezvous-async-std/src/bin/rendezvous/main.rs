//! `rendezvous`: the py-libp2p rendezvous demo over real libp2p (TCP, noise,
//! yamux). Flags in ([`cli`]), a `ServerNode` or `ClientNode` run, the
//! demo's lines out. See `rendezvous --help`.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use rendezvous_async_std::logging;
use rendezvous_async_std::node::{ClientNode, NodeError, ServerNode, Session};
use rendezvous_libp2p::core::Namespace;
use tracing::{error, info, warn};

use cli::{Args, Mode};

const SERVER: &str = "rendezvous::server";
const CLIENT: &str = "rendezvous::client";

/// How long a server waits for requests in flight when told to stop;
/// writing out the store takes the rest of its five seconds.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// A failure that ends the program: one line, non-zero exit.
struct Fatal(String);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(err: E) -> Self {
        Fatal(err.to_string())
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    logging::init(args.verbose, args.log_format.into());
    let run = async {
        match args.mode {
            Mode::Server => run_server(&args).await,
            Mode::Client => run_client(&args).await,
        }
    };
    let result = rendezvous_async_std::runtime::run(args.threads, run);
    let Err(Fatal(message)) = result else {
        return ExitCode::SUCCESS;
    };
    match args.mode {
        Mode::Server => error!(target: SERVER, "{message}"),
        Mode::Client => error!(target: CLIENT, "{message}"),
    }
    ExitCode::FAILURE
}

/// Ctrl+C and SIGTERM, as a stream.
fn interrupts() -> Result<futures::channel::mpsc::UnboundedReceiver<()>, Fatal> {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    ctrlc::set_handler(move || drop(tx.unbounded_send(())))
        .map_err(|e| Fatal(format!("cannot handle Ctrl+C: {e}")))?;
    Ok(rx)
}

async fn run_server(args: &Args) -> Result<(), Fatal> {
    let mut interrupts = interrupts()?;
    let mut node = ServerNode::start(args.server_options()?).await.map_err(|e| match e {
        NodeError::Listen(why) => Fatal(format!("cannot listen on {why}")),
        other => Fatal(other.to_string()),
    })?;
    info!(target: SERVER, "Rendezvous server started with peer ID: {}", node.peer_id());
    for address in node.listen_addresses() {
        info!(target: SERVER, "Listening on: {address}");
    }
    if let Some(metrics) = node.metrics_address() {
        info!(target: SERVER, "Metrics at http://{metrics}/metrics");
    }
    let first = &node.listen_addresses()[0];
    let namespace = cli::shell_word(&args.namespace);
    info!(target: SERVER, "To connect a client, use:");
    info!(target: SERVER, "  {} --mode client --address {first} --namespace {namespace}", cli::command());
    info!(target: SERVER, "Press Ctrl+C to stop...");
    node.run(async { interrupts.next().await.unwrap_or(()) }).await;
    info!(target: SERVER, "Shutting down rendezvous server...");
    // A second Ctrl+C leaves without waiting.
    let left = node.drain(DRAIN_TIMEOUT, async { interrupts.next().await.unwrap_or(()) }).await;
    if left.unanswered > 0 || left.uncommitted > 0 {
        warn!(
            target: SERVER,
            "Stopped with {} requests unanswered and {} registrations not yet stored",
            left.unanswered,
            left.uncommitted
        );
    }
    drop(node); // closes connections, then the store (which writes what it holds)
    info!(target: SERVER, "Stopped");
    Ok(())
}

async fn run_client(args: &Args) -> Result<(), Fatal> {
    if args.address.is_empty() {
        let hint = "use --address with the server's multiaddr";
        return Err(Fatal(format!("Please provide rendezvous server address: {hint}")));
    }
    let bad =
        |why: String| Fatal(format!("Failed to parse server address '{}': {why}", args.address));
    let address: Multiaddr = args.address.parse().map_err(|e| bad(format!("{e}")))?;
    if !matches!(address.iter().last(), Some(Protocol::P2p(_))) {
        return Err(bad("it must end with /p2p/<peer id>".into()));
    }
    let namespace = Namespace::new(&args.namespace, 255)
        .map_err(|e| Fatal(format!("Invalid namespace '{}': {e}", args.namespace)))?;
    let interrupts = interrupts()?;
    let mut node = ClientNode::connect(args.client_options(address)).await?;
    info!(target: CLIENT, "Connected to rendezvous server: {}", node.server());
    info!(target: CLIENT, "Enable refresh: {}", if args.refresh { "True" } else { "False" });
    if args.refresh {
        info!(target: CLIENT, "🔄 Refresh mode enabled - discovery service running in background");
    }
    info!(target: CLIENT, "Client started with peer ID: {}", node.peer_id());
    if let Some(metrics) = node.metrics_address() {
        info!(target: CLIENT, "Metrics at http://{metrics}/metrics");
    }
    let ttl = Duration::from_secs(args.ttl);
    node.run(Session { namespace, ttl, stay: args.refresh }, interrupts).await?;
    Ok(())
}
