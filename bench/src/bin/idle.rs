//! What idle peers cost a point: the growth of the `rendezvous` binary's
//! resident set while it holds (1) connections that each made one request,
//! (2) connections each holding idle rendezvous substreams, and (3)
//! connections whose client asks for pages and does not read them.
//!
//! ```text
//! cargo build --release --bins
//! target/release/idle [--connections 2000] [--stream-connections 100] [--streams 256]
//!   [--unread-connections 4] [--unread-streams 128]
//! ```
//!
//! Idle substreams are reset at the point's 10 s request timeout, so (2)
//! opens them as fast as it can and measures at once. In (3) one peer
//! registers in 1000 namespaces, so that a page of everything is about
//! 200 KB; each substream asks for two such pages: the first fills the
//! window yamux grants the substream, and the second waits in the point
//! for the client to read, which it never does.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use rendezvous_bench::{our_binary, status_kib};
use rendezvous_core::{Dialect, Flavour, codec, testing};
use rendezvous_libp2p::framed::Framed;
use rendezvous_tests::net::{Raw, raw_connection, raw_connection_as};

type Error = Box<dyn std::error::Error>;

/// The point, killed on drop.
struct Point(Child);

impl Drop for Point {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Point {
    fn rss_kib(&self) -> Result<u64, Error> {
        Ok(status_kib(self.0.id(), "VmRSS:").ok_or("no VmRSS in /proc")?)
    }
}

fn start() -> Result<(Point, PeerId, Multiaddr), Error> {
    let binary = our_binary()?;
    let mut child = Command::new(&binary)
        .args(["--mode", "server", "--listen", "127.0.0.1", "--stats-interval", "0", "--in-memory"])
        .args(["--max-connections", "100000", "--max-connections-per-ip", "100000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let point = Point(child);
    let mut lines = BufReader::new(stderr).lines();
    let address: Multiaddr = loop {
        let line = lines.next().ok_or("the point exited")??;
        if let Some(at) = line.split(" --address ").nth(1) {
            break at.split_whitespace().next().ok_or("no address")?.parse()?;
        }
    };
    // Keep reading its output so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let Some(Protocol::P2p(peer)) = address.iter().last() else {
        return Err("address without /p2p/".into());
    };
    Ok((point, peer, address))
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run() -> Result<(), Error> {
    let _ = rlimit::increase_nofile_limit(1 << 20);
    let (connections, stream_connections, streams) =
        (arg("--connections", 2000), arg("--stream-connections", 100), arg("--streams", 256));

    let (point, server, address) = start()?;
    let before = point.rss_kib()?;
    let mut held = Vec::new();
    for _ in 0..connections {
        let mut raw = raw_connection(server, &address).await;
        raw.request(server, &testing::discover(Some("idle"), None, None)).await?;
        held.push(raw);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = point.rss_kib()?;
    println!(
        "{connections} connections that made one request each: RSS {before} -> {after} KiB, {:.1} KiB per connection",
        after.saturating_sub(before) as f64 / connections as f64
    );
    drop((held, point));

    let (point, server, address) = start()?;
    let mut raws: Vec<Raw> = Vec::new();
    for _ in 0..stream_connections {
        raws.push(raw_connection(server, &address).await);
    }
    let before = point.rss_kib()?;
    let started = Instant::now();
    let mut open = Vec::new();
    for raw in &raws {
        let opened =
            futures::future::join_all((0..streams).map(|_| {
                let mut control = raw.control.clone();
                async move {
                    control.open_stream(server, StreamProtocol::new("/rendezvous/1.0.0")).await
                }
            }))
            .await;
        for stream in opened {
            open.push(stream?);
        }
    }
    let after = point.rss_kib()?;
    let took = started.elapsed();
    if took >= Duration::from_secs(10) {
        return Err(format!("opening took {took:?}, past the 10 s request timeout").into());
    }
    println!(
        "{stream_connections} connections holding {streams} idle substreams each (opened in {took:.1?}): RSS {before} -> {after} KiB, {:.0} KiB per connection, {:.1} KiB per substream",
        after.saturating_sub(before) as f64 / stream_connections as f64,
        after.saturating_sub(before) as f64 / open.len() as f64
    );
    drop((open, raws, point));
    unread(arg("--unread-connections", 4), arg("--unread-streams", 128)).await
}

/// (3): `connections` clients each ask for two pages of 1000 on each of
/// `streams` substreams and read nothing.
async fn unread(connections: usize, streams: usize) -> Result<(), Error> {
    let (point, server, address) = start()?;
    let me = testing::TestPeer::new(1);
    let mut raw = raw_connection_as(me.keypair.clone(), server, &address).await;
    let record = me.record(Dialect::Signed(Flavour::RustLibp2p));
    let frames: Vec<u8> = (0..1000)
        .flat_map(|i| codec::frame(&testing::register(&format!("ns-{i}"), record.clone(), None)))
        .collect();
    let mut registering = Framed::new(raw.open(server).await, 1 << 20);
    registering.write_frame(&frames).await?;
    for _ in 0..1000 {
        let answer = tokio::time::timeout(Duration::from_secs(30), registering.read_frame())
            .await
            .map_err(|_| "no answer to a REGISTER in 30 s")??;
        answer.ok_or("the point closed the substream")?;
    }
    let ask = codec::frame(&testing::discover(None, Some(1000), None));
    let two = [ask.clone(), ask].concat();
    let mut raws = Vec::new();
    for _ in 0..connections {
        raws.push(raw_connection(server, &address).await);
    }
    let before = point.rss_kib()?;
    let started = Instant::now();
    let mut open = Vec::new();
    for raw in &mut raws {
        for _ in 0..streams {
            let mut stream = Framed::new(raw.open(server).await, 4 << 20);
            stream.write_frame(&two).await?;
            open.push(stream);
        }
    }
    // The highest resident set over the next two seconds: the pages are
    // made as the point reads the requests.
    let mut peak = point.rss_kib()?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(point.rss_kib()?);
    }
    let took = started.elapsed();
    if took >= Duration::from_secs(10) {
        return Err(format!("asking took {took:?}, past the 10 s request timeout").into());
    }
    println!(
        "{connections} connections asking for two pages of 1000 on each of {streams} substreams, reading none: RSS {before} -> {peak} KiB at most, {:.0} KiB per connection",
        peak.saturating_sub(before) as f64 / connections as f64
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("idle: {e}");
        std::process::exit(1);
    }
}
