//! `rendezvous`: the py-libp2p rendezvous demo over real libp2p (TCP, noise,
//! yamux). Flags in ([`cli`]), a `ServerNode` or `ClientNode` run, the
//! demo's lines out ([`rendezvous_async_std::node::demo`]). See
//! `rendezvous --help`.

// The flags' doc comments are `--help` text, written for a terminal.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use rendezvous_async_std::node::{ClientNode, ServerNode, Session, demo, server_address};
use rendezvous_async_std::{logging, runtime};
use tracing::error;

use cli::{Args, Mode};

const SERVER: &str = "rendezvous::server";
const CLIENT: &str = "rendezvous::client";

/// How long a server waits for requests in flight and writes to the store
/// when told to stop; closing the store takes the rest of its five seconds.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);

fn main() -> ExitCode {
    let args = match Args::from_env() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    logging::init(args.verbose, args.log_format);
    let run = async {
        match args.mode {
            Mode::Server => run_server(&args).await,
            Mode::Client => run_client(&args).await,
        }
    };
    let Err(message) = runtime::run(args.threads, run) else {
        return ExitCode::SUCCESS;
    };
    match args.mode {
        Mode::Server => error!(target: SERVER, "{message}"),
        Mode::Client => error!(target: CLIENT, "{message}"),
    }
    ExitCode::FAILURE
}

async fn run_server(args: &Args) -> Result<(), String> {
    let mut interrupts = runtime::interrupts()?;
    let mut node = ServerNode::start(args.server_options()?).await.map_err(|e| e.to_string())?;
    demo::server_started(&node, &args.namespace);
    node.run(async { interrupts.next().await.unwrap_or(()) }).await;
    // A second Ctrl+C leaves without waiting.
    let abort = async { interrupts.next().await.unwrap_or(()) };
    demo::server_shut_down(node.shut_down(SHUTDOWN_TIMEOUT, abort).await);
    drop(node); // closes connections, then the store (which writes what it holds)
    demo::server_stopped();
    Ok(())
}

async fn run_client(args: &Args) -> Result<(), String> {
    let address = server_address(&args.address)?;
    let session = Session::new(&args.namespace, Duration::from_secs(args.ttl), args.refresh)
        .map_err(|e| e.to_string())?;
    let interrupts = runtime::interrupts()?;
    let mut node =
        ClientNode::connect(args.client_options(address)).await.map_err(|e| e.to_string())?;
    demo::client_started(&node, args.refresh);
    node.run(session, interrupts, demo::client_event).await.map_err(|e| e.to_string())
}
