//! Instructions one registration costs our server, end to end, counted by
//! callgrind: the `rendezvous` binary runs under `valgrind --tool=callgrind`
//! while one connection registers a signed record (reused) in `small` and
//! then `large` new namespaces, 8 in flight; the difference between the two
//! runs divided by `large - small` is one registration's path (substream,
//! multistream-select, noise, yamux, the swarm, the core), start-up and
//! shutdown cancelled out. `--one-substream` sends every request on one
//! long-lived substream instead of a new one each. User space only: the kernel's share (syscalls,
//! wakeups) is not in it. Deterministic enough to compare two builds on a
//! noisy machine.
//!
//! ```text
//! cargo build --release --bins
//! target/release/register_path [--small 100] [--large 900] [--one-substream] [-- extra server flags]
//! RENDEZVOUS_BIN=path/to/other/rendezvous target/release/register_path
//! ```
//!
//! Needs `valgrind`. Leaves `callgrind.register.<n>.out` in the temporary
//! directory for `callgrind_annotate`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use rendezvous_bench::our_binary;
use rendezvous_core::record::Record;
use rendezvous_core::{Flavour, codec, testing};
use rendezvous_libp2p::framed::Framed;
use rendezvous_tests::net::{Raw, raw_connection_as};

type Error = Box<dyn std::error::Error>;

/// Requests in flight on the one connection.
const IN_FLIGHT: usize = 8;

/// How the client carries its requests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Substreams {
    /// A new substream per request, as rust-libp2p's and py-libp2p's
    /// clients do.
    PerRequest,
    /// Every request on one long-lived substream, answered in order (our
    /// server and go's allow it).
    One,
}

/// Registers `n` times over `raw`, `IN_FLIGHT` at a time.
async fn register_all(
    raw: &Raw,
    server: PeerId,
    record: &Bytes,
    n: usize,
    substreams: Substreams,
) -> Result<(), Error> {
    let request = |i: usize| testing::register(&format!("ns-{i}"), record.clone(), None);
    if substreams == Substreams::One {
        let mut control = raw.control.clone();
        let stream = control.open_stream(server, StreamProtocol::new("/rendezvous/1.0.0")).await?;
        let mut framed = Framed::new(stream, 1 << 20);
        for start in (0..n).step_by(IN_FLIGHT) {
            let end = (start + IN_FLIGHT).min(n);
            for i in start..end {
                framed.write_frame(&codec::frame(&request(i))).await?;
            }
            for _ in start..end {
                framed.read_frame().await?.ok_or("the substream closed early")?;
            }
        }
        return Ok(());
    }
    for start in (0..n).step_by(IN_FLIGHT) {
        let requests = (start..(start + IN_FLIGHT).min(n)).map(|i| {
            let mut raw = Raw { id: raw.id, control: raw.control.clone() };
            let message = request(i);
            async move { raw.request(server, &message).await }
        });
        for answer in futures::future::join_all(requests).await {
            answer?;
        }
    }
    Ok(())
}

/// Runs the server under callgrind, registers `n` times, stops it; returns
/// the instructions callgrind counted.
async fn instructions(n: usize, extra: &[String], substreams: Substreams) -> Result<u64, Error> {
    let out = std::env::temp_dir().join(format!("callgrind.register.{n}.out"));
    let mut child = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(our_binary()?)
        .args(["--mode", "server", "--listen", "127.0.0.1", "--stats-interval", "0"])
        .args(["--in-memory", "--max-per-peer", "1000000"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run valgrind ({e}); install it"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let address: Multiaddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| "the server did not start under valgrind")?;
        if let Some(at) = line.split(" --address ").nth(1) {
            break at.split_whitespace().next().ok_or("no address")?.parse()?;
        }
    };
    let Some(Protocol::P2p(server)) = address.iter().last() else {
        return Err("server address without /p2p/".into());
    };
    let keypair = Keypair::generate_ed25519();
    let announced: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse()?;
    let record = Record::sign(&keypair, &[announced], 1, Flavour::RustLibp2p)?;
    let raw = raw_connection_as(keypair, server, &address).await;
    register_all(&raw, server, &record, n, substreams).await?;
    // SIGINT: the server drains and exits, and callgrind writes its file.
    Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("the server exited with {status}").into());
    }
    let text = std::fs::read_to_string(&out)?;
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("summary: ").or_else(|| l.strip_prefix("totals: ")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or("no totals in the callgrind file")?;
    Ok(total)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut small, mut large, mut extra) = (100usize, 900usize, Vec::new());
    let mut substreams = Substreams::PerRequest;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--small" => small = args.next().and_then(|v| v.parse().ok()).unwrap_or(small),
            "--large" => large = args.next().and_then(|v| v.parse().ok()).unwrap_or(large),
            "--one-substream" => substreams = Substreams::One,
            "--" => extra.extend(args.by_ref()),
            other => {
                eprintln!("register_path: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if large <= small {
        eprintln!("register_path: --large must exceed --small");
        std::process::exit(2);
    }
    let run = async {
        let a = instructions(small, &extra, substreams).await?;
        let b = instructions(large, &extra, substreams).await?;
        Ok::<_, Error>((a, b))
    };
    match run.await {
        Ok((a, b)) => {
            let per = b.saturating_sub(a) as f64 / (large - small) as f64;
            println!("{small} registrations: {a} instructions; {large}: {b}");
            println!("one registration: {per:.0} instructions (user space, all threads)");
        }
        Err(e) => {
            eprintln!("register_path: {e}");
            std::process::exit(1);
        }
    }
}
