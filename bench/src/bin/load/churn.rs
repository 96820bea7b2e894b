//! Connection churn (`--churn N`): N peers, each a new identity running
//! rust-libp2p's own client (TCP, noise, yamux, identify, its rendezvous
//! client, and with `--churn-ping` libp2p-ping), connect, register once
//! and disconnect, eight at a time, as peers that come and go do at a
//! public point. What counts is the
//! server's CPU per peer (utime + stime from /proc over the run), and how
//! much of it was the kernel's (stime): its system calls, and on loopback
//! also the receiving side of every packet it sends.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::rendezvous as theirs;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{SwarmBuilder, identify, noise, ping, tcp, yamux};

use crate::Error;
use crate::conn::ADDRESS;
use crate::servers::{Kind, Server};

/// Peers connecting at once.
const AT_ONCE: usize = 8;

#[derive(NetworkBehaviour)]
struct Peer {
    identify: identify::Behaviour,
    rendezvous: theirs::client::Behaviour,
    ping: Toggle<ping::Behaviour>,
}

pub(crate) struct ChurnRun {
    pub(crate) kind: Kind,
    pub(crate) peers: usize,
    pub(crate) failed: usize,
    pub(crate) server_cpu_s: f64,
    /// Of it, in the kernel.
    pub(crate) server_kernel_s: f64,
    pub(crate) own_cpu_s: f64,
    pub(crate) wall_s: f64,
}

/// One peer's visit: connect, identify, register, disconnect (with `ping`,
/// running libp2p-ping meanwhile). False if it did not register.
async fn visit(server: &Server, index: usize, ping: bool) -> Result<bool, Error> {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| Peer {
            identify: identify::Behaviour::new(identify::Config::new(
                "/ipfs/id/1.0.0".into(),
                key.public(),
            )),
            rendezvous: theirs::client::Behaviour::new(key.clone()),
            ping: ping.then(ping::Behaviour::default).into(),
        })?
        .build();
    swarm.add_external_address(ADDRESS.parse()?);
    swarm.dial(server.address.clone())?;
    let namespace =
        theirs::Namespace::new(format!("churn-{}", index % 64)).map_err(|e| e.to_string())?;
    let (mut registered, mut identified, mut asked) = (None, false, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while registered.is_none() || !identified {
        let event = tokio::time::timeout_at(deadline.into(), swarm.select_next_some())
            .await
            .map_err(|_| "a churning peer did not finish in 30 s")?;
        match event {
            SwarmEvent::ConnectionEstablished { .. } if !asked => {
                asked = true;
                swarm.behaviour_mut().rendezvous.register(
                    namespace.clone(),
                    server.peer,
                    Some(7200),
                )?;
            }
            SwarmEvent::Behaviour(PeerEvent::Rendezvous(theirs::client::Event::Registered {
                ..
            })) => {
                registered = Some(true);
            }
            SwarmEvent::Behaviour(PeerEvent::Rendezvous(
                theirs::client::Event::RegisterFailed { .. },
            )) => {
                registered = Some(false);
            }
            // The server answered identify, or does not run it.
            SwarmEvent::Behaviour(PeerEvent::Identify(
                identify::Event::Received { .. } | identify::Event::Error { .. },
            )) => identified = true,
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Err(error.to_string().into());
            }
            _ => {}
        }
    }
    Ok(registered == Some(true))
}

pub(crate) async fn churn(kind: Kind, peers: usize, ping: bool) -> Result<ChurnRun, Error> {
    let server = Server::start(kind)?;
    let (user, kernel) = server.cpu_split();
    let (own, started) = (crate::servers::own_cpu(), Instant::now());
    let (mut failed, mut next) = (0, 0);
    let mut visiting = futures::stream::FuturesUnordered::new();
    while next < peers || !visiting.is_empty() {
        while next < peers && visiting.len() < AT_ONCE {
            visiting.push(visit(&server, next, ping));
            next += 1;
        }
        if let Some(registered) = visiting.next().await {
            failed += usize::from(!registered?);
        }
    }
    // The last disconnections are the server's work too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (user_now, kernel_now) = server.cpu_split();
    Ok(ChurnRun {
        kind,
        peers,
        failed,
        server_cpu_s: (user_now - user) + (kernel_now - kernel),
        server_kernel_s: kernel_now - kernel,
        own_cpu_s: crate::servers::own_cpu() - own,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

pub(crate) fn report(runs: &[ChurnRun]) {
    println!(
        "| server | peers | not registered | server CPU µs per peer | of it in the kernel | peers/s | load tool CPU s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} |",
            r.kind.name(),
            r.peers,
            r.failed,
            r.server_cpu_s * 1e6 / r.peers as f64,
            r.server_kernel_s * 1e6 / r.peers as f64,
            r.peers as f64 / r.wall_s,
            r.own_cpu_s
        );
    }
    let Some(ours) = runs.iter().find(|r| r.kind == Kind::Ours) else { return };
    for theirs in runs.iter().filter(|r| r.kind.is_rust_libp2p()) {
        println!(
            "server CPU per peer, {} / ours: {:.2}×",
            theirs.kind.name(),
            (theirs.server_cpu_s / theirs.peers as f64) / (ours.server_cpu_s / ours.peers as f64)
        );
    }
}
