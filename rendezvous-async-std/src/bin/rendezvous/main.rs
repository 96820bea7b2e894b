//! `rendezvous`: the py-libp2p rendezvous demo, as a Rust binary over real
//! libp2p (TCP, noise, yamux). See `rendezvous --help`.

mod cli;
mod logging;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt, select};
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_identity::{Keypair, PeerId};
use libp2p_swarm::{Swarm, SwarmEvent};
use log::{debug, error, info, warn};
use rendezvous_async_std::host::{
    self, ClientBehaviour, ClientEvent as HostClientEvent, ConnectionLimits, ServerBehaviour,
    ServerEvent as HostServerEvent, SpawnWith, Task,
};
use rendezvous_async_std::keyfile;
use rendezvous_libp2p::core::{ClientEvent, Limits, Namespace, RequestError, ServerEvent};
use rendezvous_libp2p::{client, server};

use cli::{Args, Mode};

/// How long the client waits to reach the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client waits for its UNREGISTERs to go out on shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

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
    logging::init(args.verbose);
    let result = async_std::task::block_on(async {
        match args.mode {
            Mode::Server => run_server(&args).await,
            Mode::Client => run_client(&args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(message)) => {
            error!(target: target(args.mode), "{message}");
            ExitCode::FAILURE
        }
    }
}

fn target(mode: Mode) -> &'static str {
    match mode {
        Mode::Server => "rendezvous::server",
        Mode::Client => "rendezvous::client",
    }
}

fn keypair(args: &Args) -> Result<Keypair, Fatal> {
    match &args.key_file {
        Some(path) => keyfile::load_or_create(path)
            .map_err(|e| Fatal(format!("cannot use key file {}: {e}", path.display()))),
        None => Ok(Keypair::generate_ed25519()),
    }
}

fn executor() -> SpawnWith<impl Fn(Task) + Send> {
    SpawnWith(|future| {
        async_std::task::spawn(future);
    })
}

/// Ctrl+C and SIGTERM, as a stream.
fn interrupts() -> Result<mpsc::UnboundedReceiver<()>, Fatal> {
    let (tx, rx) = mpsc::unbounded();
    ctrlc::set_handler(move || {
        let _ = tx.unbounded_send(());
    })
    .map_err(|e| Fatal(format!("cannot handle Ctrl+C: {e}")))?;
    Ok(rx)
}

fn listen_addr(args: &Args) -> Multiaddr {
    Multiaddr::empty().with(args.listen.into()).with(Protocol::Tcp(args.port))
}

/// Waits for the first listen address, or the reason there is none.
async fn first_listen_addr<B: libp2p_swarm::NetworkBehaviour>(
    swarm: &mut Swarm<B>,
) -> Result<Multiaddr, Fatal> {
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => return Ok(address),
            SwarmEvent::ListenerClosed { reason: Err(e), .. }
            | SwarmEvent::ListenerError { error: e, .. } => {
                return Err(Fatal(format!("cannot listen: {}", root_cause(&e))));
            }
            _ => {}
        }
    }
}

async fn run_server(args: &Args) -> Result<(), Fatal> {
    let t = "rendezvous::server";
    let limits = Limits {
        min_ttl: args.min_ttl,
        max_ttl: args.max_ttl,
        default_ttl: Limits::default()
            .default_ttl
            .clamp(args.min_ttl, args.max_ttl.max(args.min_ttl)),
        max_registrations_per_namespace: args.max_per_namespace,
        max_registrations_per_peer: args.max_per_peer,
        max_registrations: args.max_total,
        ..Limits::default()
    };
    limits.validate().map_err(|e| Fatal(format!("invalid limits: {e}")))?;
    let mut config = server::Config::default();
    config.core.limits = limits;
    let keypair = keypair(args)?;
    let behaviour = ServerBehaviour::new(&keypair, config, ConnectionLimits::default())?;
    let mut swarm = host::build(&keypair, behaviour, executor())?;
    let local_id = *swarm.local_peer_id();
    let mut interrupts = interrupts()?;
    info!(target: t, "Rendezvous service started");
    swarm.listen_on(listen_addr(args)).map_err(|e| {
        Fatal(format!("cannot listen on {}:{}: {}", args.listen, args.port, root_cause(&e)))
    })?;
    let first = first_listen_addr(&mut swarm)
        .await
        .map_err(|Fatal(e)| Fatal(format!("{e} (is port {} in use?)", args.port)))?;
    info!(target: t, "Rendezvous server started with peer ID: {local_id}");
    let full = |addr: &Multiaddr| addr.clone().with(Protocol::P2p(local_id));
    info!(target: t, "Listening on: {}", full(&first));
    info!(target: t, "To connect a client, use:");
    info!(target: t, "  rendezvous --mode client --address {}", full(&first));
    info!(target: t, "Press Ctrl+C to stop...");

    let mut stats = stats_ticker(args.stats_interval);
    loop {
        select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => info!(target: t, "Listening on: {}", full(&address)),
                SwarmEvent::Behaviour(HostServerEvent::Rendezvous(event)) => log_server_event(event),
                SwarmEvent::Behaviour(HostServerEvent::Identify(event)) => {
                    if let libp2p_identify::Event::Received { peer_id, info, .. } = *event {
                        debug!(target: t, "{peer_id} runs {}", info.agent_version);
                        swarm.behaviour_mut().rendezvous.set_agent_version(peer_id, &info.agent_version);
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    debug!(target: t, "Connection from {peer_id} at {}", endpoint.get_remote_address());
                }
                SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                    debug!(target: t, "Incoming connection from {send_back_addr} failed: {error}");
                }
                _ => {}
            },
            _ = stats.select_next_some() => log_stats(&swarm.behaviour().rendezvous),
            _ = interrupts.select_next_some() => {
                info!(target: t, "Shutting down rendezvous server...");
                return Ok(());
            },
        }
    }
}

/// The periodic statistics line, as the demo prints it, and on a second line
/// what went wrong since the start, if anything did.
fn log_stats(rendezvous: &server::Behaviour) {
    let t = "rendezvous::server";
    let counts: BTreeMap<_, _> =
        rendezvous.core().namespaces().map(|(ns, n)| (ns.to_string(), n)).collect();
    if counts.is_empty() {
        info!(target: t, "No active registrations");
    } else {
        info!(target: t, "Namespace stats: {counts:?}");
    }
    let (core, streams) = (rendezvous.stats(), rendezvous.stream_stats());
    if core.dropped_events
        + core.busy_refusals
        + streams.timed_out
        + streams.over_limit
        + streams.malformed
        > 0
    {
        info!(
            target: t,
            "Dropped events: {}, requests refused as busy: {}, substreams rejected: {} timed out, {} over the limit, {} malformed, {} I/O errors",
            core.dropped_events, core.busy_refusals, streams.timed_out, streams.over_limit, streams.malformed, streams.io
        );
    }
}

fn stats_ticker(seconds: u64) -> futures::stream::Fuse<futures::stream::BoxStream<'static, ()>> {
    let ticks = if seconds == 0 {
        futures::stream::pending().boxed()
    } else {
        StreamExt::map(async_io::Timer::interval(Duration::from_secs(seconds)), drop).boxed()
    };
    ticks.fuse()
}

fn sleep(duration: Duration) -> futures::future::Fuse<futures::future::BoxFuture<'static, ()>> {
    FutureExt::map(async_io::Timer::after(duration), drop).boxed().fuse()
}

/// One line per registration change at DEBUG (`-v`): at INFO a busy server
/// would spend its time formatting peer ids and writing logs; the periodic
/// namespace statistics say how many there are.
fn log_server_event(event: server::Event) {
    let t = "rendezvous::server";
    match event {
        server::Event::Core(ServerEvent::Registered { peer, namespace, ttl, dialect }) => {
            debug!(target: t, "Registered {peer} in '{namespace}' for {ttl}s ({dialect:?})");
        }
        server::Event::Core(ServerEvent::Refreshed { peer, namespace, ttl, .. }) => {
            debug!(target: t, "Refreshed {peer} in '{namespace}' for {ttl}s");
        }
        server::Event::Core(ServerEvent::Unregistered { peer, namespace }) => {
            debug!(target: t, "Unregistered {peer} from '{namespace}'");
        }
        server::Event::Core(ServerEvent::Expired { peer, namespace }) => {
            debug!(target: t, "Registration of {peer} in '{namespace}' expired");
        }
        server::Event::Core(ServerEvent::Refused { peer, request, status, reason }) => {
            warn!(target: t, "Refused {request:?} from {peer}: {status:?}: {reason}");
        }
        server::Event::Core(ServerEvent::Discovered { peer, namespace, count }) => {
            let ns = namespace.map_or_else(|| "all namespaces".to_owned(), |n| format!("'{n}'"));
            debug!(target: t, "Served {count} registrations of {ns} to {peer}");
        }
        server::Event::StreamRejected { peer, reason: server::Rejection::Malformed(error) } => {
            warn!(target: t, "Closed a stream from {peer}: {error}")
        }
        server::Event::StreamRejected { peer, reason } => {
            debug!(target: t, "Rejected a stream from {peer}: {}", reason.name())
        }
        other => debug!(target: t, "{other:?}"),
    }
}

/// The server's peer id from a `/p2p/` multiaddr.
fn server_peer(address: &Multiaddr) -> Option<PeerId> {
    match address.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

async fn run_client(args: &Args) -> Result<(), Fatal> {
    let t = "rendezvous::client";
    if args.address.is_empty() {
        return Err(Fatal(
            "Please provide rendezvous server address: use --address with the server's multiaddr"
                .into(),
        ));
    }
    let address: Multiaddr = args
        .address
        .parse()
        .map_err(|e| Fatal(format!("Failed to parse server address '{}': {e}", args.address)))?;
    let server_id = server_peer(&address).ok_or_else(|| {
        Fatal(format!(
            "Failed to parse server address '{}': it must end with /p2p/<peer id>",
            args.address
        ))
    })?;
    let namespace = Namespace::new(&args.namespace, 255)
        .map_err(|e| Fatal(format!("Invalid namespace '{}': {e}", args.namespace)))?;

    let keypair = keypair(args)?;
    let mut config = client::Config::default();
    config.core.refresh = args.refresh;
    let behaviour = ClientBehaviour::new(&keypair, config);
    let mut swarm = host::build(&keypair, behaviour, executor())?;
    let local_id = *swarm.local_peer_id();
    let mut interrupts = interrupts()?;
    swarm
        .listen_on(listen_addr(args))
        .map_err(|e| Fatal(format!("cannot listen: {}", root_cause(&e))))?;
    first_listen_addr(&mut swarm).await?;

    swarm.dial(address.clone()).map_err(|e| Fatal(format!("Failed to connect to server: {e}")))?;
    let connect = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == server_id => {
                    return Ok(());
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(p), error, .. }
                    if p == server_id =>
                {
                    let reason = match &error {
                        libp2p_swarm::DialError::Transport(attempts) => attempts
                            .iter()
                            .map(|(addr, e)| format!("{addr}: {}", root_cause(e)))
                            .collect::<Vec<_>>()
                            .join("; "),
                        other => root_cause(other),
                    };
                    return Err(Fatal(format!("Failed to connect to server: {reason}")));
                }
                _ => {}
            }
        }
    };
    select! {
        result = connect.fuse() => result?,
        () = sleep(CONNECT_TIMEOUT) => {
            return Err(Fatal(format!("Failed to connect to server: no answer from {address} within {}s", CONNECT_TIMEOUT.as_secs())));
        }
    }
    info!(target: t, "Connected to rendezvous server: {server_id}");
    info!(target: t, "Enable refresh: {}", if args.refresh { "True" } else { "False" });
    info!(target: t, "Client started with peer ID: {local_id}");
    swarm.behaviour_mut().rendezvous.add_server_address(server_id, address.clone());

    info!(target: t, "Registering in namespace '{namespace}'...");
    let registration =
        swarm.behaviour_mut().rendezvous.register(server_id, namespace.clone(), Some(args.ttl))?;
    let mut discovery = None;
    let mut unregistering: Option<Vec<_>> = None;
    let mut deadline: futures::future::Fuse<futures::future::BoxFuture<'static, ()>> =
        futures::future::Fuse::terminated();
    loop {
        select! {
            event = swarm.select_next_some() => {
                let SwarmEvent::Behaviour(HostClientEvent::Rendezvous(event)) = event else { continue };
                match event {
                    ClientEvent::Registered { request, ttl, .. } if request == Some(registration) => {
                        info!(target: t, "✓ Registered with TTL {ttl}s");
                        info!(target: t, "Discovering peers in namespace '{namespace}'...");
                        discovery = Some(swarm.behaviour_mut().rendezvous.discover_all(server_id, Some(namespace.clone()), Some(100))?);
                    }
                    ClientEvent::Registered { request: None, namespace, ttl, .. } => {
                        info!(target: t, "↻ Refreshed registration in '{namespace}' with TTL {ttl}s");
                    }
                    ClientEvent::RegisterFailed { request, error, .. } if request == Some(registration) => {
                        return Err(Fatal(format!("Registration failed: {}", describe(&error))));
                    }
                    ClientEvent::RegisterFailed { error, retry_in, namespace, .. } => match retry_in {
                        Some(delay) => warn!(target: t, "Refresh in '{namespace}' failed ({}); retrying in {}s", describe(&error), delay.as_secs()),
                        None => return Err(Fatal(format!("Registration in '{namespace}' lost: {}", describe(&error)))),
                    },
                    ClientEvent::LegacyFallback { server, reason } => {
                        info!(target: t, "{server} refused a signed peer record ({}); using the legacy PeerInfo dialect", describe(&reason));
                    }
                    ClientEvent::Discovered { request, registrations, skipped, .. } if Some(request) == discovery => {
                        for found in &registrations {
                            if found.peer == local_id {
                                info!(target: t, "  Found self: {}", found.peer);
                            } else {
                                let addrs: Vec<_> = found.addresses.iter().map(ToString::to_string).collect();
                                info!(target: t, "  Found peer: {} {}", found.peer, addrs.join(" "));
                            }
                        }
                        if skipped > 0 {
                            warn!(target: t, "Skipped {skipped} registrations whose record could not be read");
                        }
                        info!(target: t, "Total peers found: {}", registrations.len());
                        if registrations.iter().any(|r| r.peer != local_id) {
                            info!(target: t, "✓ Successfully discovered other peers!");
                        } else {
                            info!(target: t, "No other peers found (only self)");
                        }
                        if args.refresh {
                            info!(target: t, "Refresh mode: registration will auto-refresh; press Ctrl+C to stop");
                        } else {
                            unregistering = Some(start_unregister(&mut swarm, &namespace));
                            deadline = sleep(SHUTDOWN_TIMEOUT);
                        }
                    }
                    ClientEvent::DiscoverFailed { request, error, .. } if Some(request) == discovery => {
                        return Err(Fatal(format!("Discovery failed: {}", describe(&error))));
                    }
                    ClientEvent::Unregistered { request: Some(id), delivered, .. } => {
                        if let Some(left) = &mut unregistering {
                            left.retain(|r| *r != id);
                            if !delivered {
                                warn!(target: t, "The unregistration could not be delivered; the server drops it at its TTL");
                            }
                            if left.is_empty() {
                                info!(target: t, "✓ Unregistered successfully");
                                return close(&mut swarm, server_id).await;
                            }
                        }
                    }
                    other => debug!(target: t, "{other:?}"),
                }
            },
            _ = interrupts.select_next_some() => {
                if unregistering.is_some() {
                    return Ok(()); // a second Ctrl+C: leave now
                }
                unregistering = Some(start_unregister(&mut swarm, &namespace));
                deadline = sleep(SHUTDOWN_TIMEOUT);
                if unregistering.as_ref().is_some_and(Vec::is_empty) {
                    return Ok(());
                }
            },
            () = deadline => {
                warn!(target: t, "Gave up waiting for the unregistration after {}s", SHUTDOWN_TIMEOUT.as_secs());
                return Ok(());
            },
        }
    }
}

/// Closes the connection to the server gracefully, so that what was written
/// (the UNREGISTER) is flushed to the socket before the process exits.
async fn close(swarm: &mut Swarm<ClientBehaviour>, server: PeerId) -> Result<(), Fatal> {
    if swarm.disconnect_peer_id(server).is_err() {
        return Ok(());
    }
    let closed = async {
        loop {
            if let SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } =
                swarm.select_next_some().await
                && peer_id == server
            {
                return;
            }
        }
    };
    select! {
        () = closed.fuse() => {},
        () = sleep(SHUTDOWN_TIMEOUT) => debug!(target: "rendezvous::client", "the connection did not close in time"),
    }
    Ok(())
}

fn start_unregister(
    swarm: &mut Swarm<ClientBehaviour>,
    namespace: &Namespace,
) -> Vec<rendezvous_libp2p::core::RequestId> {
    info!(target: "rendezvous::client", "Unregistering from namespace '{namespace}'...");
    swarm.behaviour_mut().rendezvous.unregister_all()
}

/// The innermost error's message: what actually went wrong, without the
/// layers of context libp2p wraps around it.
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    let text = inner.to_string();
    if text.is_empty() { error.to_string() } else { text }
}

fn describe(error: &RequestError) -> String {
    match error {
        RequestError::Refused { status: Ok(status), text } => format!("{status:?}: {text}"),
        RequestError::Refused { status: Err(raw), text } => format!("status {raw}: {text}"),
        other => other.to_string(),
    }
}
