//! rust-libp2p's rendezvous point as rust-libp2p publishes it (its
//! `examples/rendezvous`): the rendezvous server with identify, and ping
//! every second, on TCP + noise + yamux. What a rust-libp2p user who runs
//! rust-libp2p's point runs. Limits and swarm settings as in
//! `rust-libp2p-server`. Prints `ADDR <multiaddr>` once listening on loopback.

use std::time::Duration;

use libp2p::rendezvous::server;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, ping};

#[derive(NetworkBehaviour)]
struct Point {
    identify: identify::Behaviour,
    rendezvous: server::Behaviour,
    ping: ping::Behaviour,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    rendezvous_bench_theirs::serve(|key| Point {
        identify: identify::Behaviour::new(identify::Config::new(
            "rendezvous-example/1.0.0".into(),
            key.public(),
        )),
        rendezvous: rendezvous_bench_theirs::rendezvous(),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(1))),
    })
    .await
}
