//! What one registration costs our server, end to end: one connection
//! registers a signed record (reused) in `small` and then `large` new
//! namespaces, 8 in flight (`--inflight`), each time against a fresh server; the
//! difference between the two runs divided by `large - small` is one
//! registration's path (substream, multistream-select, noise, yamux, the
//! swarm, the core), start-up and shutdown cancelled out. `--one-substream`
//! sends every request on one long-lived substream instead of a new one each.
//! `--client ours` registers through our client behaviour instead of raw
//! substreams (with `--one-substream`: told the server is ours, so that it
//! pipelines), and `--measure cpu` then also counts the client's CPU.
//!
//! `--measure` picks what is counted:
//! - `instructions` (the default): the server runs under `valgrind
//!   --tool=callgrind`; user space only, the kernel's share (syscalls,
//!   wakeups) is not in it. Deterministic enough to compare two builds on a
//!   noisy machine. Leaves `callgrind.register.<n>.out` in the temporary
//!   directory for `callgrind_annotate`.
//! - `syscalls`: the server runs under `strace -f -c`; system calls per
//!   registration, in all and by name.
//! - `cpu`: the server runs bare; its CPU time (utime + stime from `/proc`)
//!   and its threads' context switches per registration. Wall-clock based,
//!   so noisy: use large counts and compare alternating runs.
//!
//! ```text
//! cargo build --release --bins
//! target/release/register_path [--measure instructions|syscalls|cpu] [--small 100] [--large 900]
//!   [--inflight 8] [--one-substream] [--client raw|ours] [-- extra server flags]
//! RENDEZVOUS_BIN=path/to/other/rendezvous target/release/register_path
//! ```
//!
//! Needs `valgrind` or `strace` for the first two.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use rendezvous_bench::{cpu_seconds, our_binary};
use rendezvous_core::record::Record;
use rendezvous_core::{AGENT_PREFIX, ClientEvent, Namespace};
use rendezvous_core::{Flavour, codec, testing};
use rendezvous_libp2p::client;
use rendezvous_libp2p::framed::Framed;
use rendezvous_tests::net::{Raw, connect, listen, raw_connection_as, swarm_as};

type Error = Box<dyn std::error::Error>;

/// Requests in flight on the one connection, unless `--inflight` says.
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

/// Registers in `n` namespaces through our client behaviour (on a tokio
/// swarm), `in_flight` at a time; `pipelined`: told the server is ours, so
/// that it carries them on one long-lived substream.
async fn register_ours(
    keypair: Keypair,
    server: PeerId,
    address: &Multiaddr,
    n: usize,
    in_flight: usize,
    pipelined: bool,
) -> Result<(), Error> {
    let mut config = client::Config::default();
    config.core.max_registrations = n;
    let mut c = swarm_as(keypair, |key| {
        client::Behaviour::new(key.clone(), config).expect("a valid config")
    });
    listen(&mut c).await;
    let bare: Multiaddr = address.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
    connect(&mut c, server, &bare).await;
    if pipelined {
        c.behaviour_mut().set_agent_version(server, &format!("{AGENT_PREFIX}bench"));
    }
    let (mut sent, mut done) = (0, 0);
    while done < n {
        while sent < n && sent < done + in_flight {
            let ns = Namespace::new(&format!("ns-{sent}"), 255)?;
            c.behaviour_mut().register(server, ns, None)?;
            sent += 1;
        }
        match c.select_next_some().await {
            SwarmEvent::Behaviour(ClientEvent::Registered { .. }) => done += 1,
            SwarmEvent::Behaviour(ClientEvent::RegisterFailed { error, .. }) => {
                return Err(format!("a registration failed: {error}").into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// `Ok` if `answer` accepted the registration: a refusal is a cheaper path
/// than the one measured.
fn accepted(answer: &rendezvous_core::proto::Message) -> Result<(), Error> {
    match rendezvous_core::proto::read_status(answer.response_status()) {
        Ok(rendezvous_core::proto::ResponseStatus::Ok) => Ok(()),
        other => Err(format!("the server refused a registration: {other:?}").into()),
    }
}

/// This process's CPU time so far, in µs (utime + stime from `/proc`).
fn own_cpu_micros() -> Result<f64, Error> {
    Ok(cpu_seconds("self").ok_or("no CPU time in /proc")? * 1e6)
}

/// Registers `n` times over `raw`, `in_flight` at a time.
async fn register_all(
    raw: &Raw,
    server: PeerId,
    record: &Bytes,
    (n, in_flight): (usize, usize),
    substreams: Substreams,
) -> Result<(), Error> {
    let request = |i: usize| testing::register(&format!("ns-{i}"), record.clone(), None);
    if substreams == Substreams::One {
        let mut control = raw.control.clone();
        let stream = control.open_stream(server, StreamProtocol::new("/rendezvous/1.0.0")).await?;
        let mut framed = Framed::new(stream, 1 << 20);
        for start in (0..n).step_by(in_flight) {
            let end = (start + in_flight).min(n);
            for i in start..end {
                framed.write_frame(&codec::frame(&request(i))).await?;
            }
            for _ in start..end {
                let body = framed.read_frame().await?.ok_or("the substream closed early")?;
                accepted(&codec::decode_message(&body)?)?;
            }
        }
        return Ok(());
    }
    for start in (0..n).step_by(in_flight) {
        let requests = (start..(start + in_flight).min(n)).map(|i| {
            let mut raw = raw.clone_handle();
            let message = request(i);
            async move { raw.request(server, &message).await }
        });
        for answer in futures::future::join_all(requests).await {
            accepted(&answer?)?;
        }
    }
    Ok(())
}

/// Which client registers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    /// Raw substreams (libp2p-stream): only the server's path.
    Raw,
    /// Our client behaviour: the path a real client of ours takes.
    Ours,
}

/// What to count.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    Instructions,
    Syscalls,
    Cpu,
}

/// Named counts from one server run.
type Counts = Vec<(String, f64)>;

/// Starts the server, under `measure`'s tool, with `extra` flags.
fn start(n: usize, extra: &[String], measure: Measure) -> Result<std::process::Child, Error> {
    let out = std::env::temp_dir();
    let (mut command, tool) = match measure {
        Measure::Instructions => {
            let mut c = Command::new("valgrind");
            let file = out.join(format!("callgrind.register.{n}.out"));
            c.arg("--tool=callgrind").arg(format!("--callgrind-out-file={}", file.display()));
            c.arg(our_binary()?);
            (c, "valgrind")
        }
        Measure::Syscalls => {
            let mut c = Command::new("strace");
            let file = out.join(format!("strace.register.{n}.out"));
            c.args(["-f", "-c", "-o"]).arg(file).arg("--").arg(our_binary()?);
            (c, "strace")
        }
        Measure::Cpu => (Command::new(our_binary()?), "the server"),
    };
    command
        .args(["--mode", "server", "--listen", "127.0.0.1", "--stats-interval", "0"])
        .args(["--in-memory", "--max-per-peer", "1000000", "--max-per-ip", "1000000"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {tool} ({e}); install it").into())
}

/// The server's own pid: the child itself, or the child the tool started.
fn server_pid(child: &std::process::Child, measure: Measure) -> Result<u32, Error> {
    if measure != Measure::Syscalls {
        return Ok(child.id());
    }
    Ok(*children(child.id()).first().ok_or("strace started no server")?)
}

/// The processes `pid` started.
fn children(pid: u32) -> Vec<u32> {
    let listed = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    listed.iter().flat_map(|c| c.split_whitespace()).filter_map(|p| p.parse().ok()).collect()
}

/// CPU microseconds (utime + stime) and context switches of `pid`'s threads.
fn cpu_and_switches(pid: u32) -> Result<Counts, Error> {
    let seconds = cpu_seconds(pid).ok_or("no CPU time in /proc")?;
    let mut switches = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += v.trim().parse::<u64>()?;
            }
        }
    }
    Ok(vec![("CPU µs".into(), seconds * 1e6), ("context switches".into(), switches as f64)])
}

/// What the tool left in its file once the server exited.
fn read_counts(n: usize, measure: Measure) -> Result<Counts, Error> {
    let out = std::env::temp_dir();
    match measure {
        Measure::Instructions => {
            let text = std::fs::read_to_string(out.join(format!("callgrind.register.{n}.out")))?;
            let total = text
                .lines()
                .find_map(|l| l.strip_prefix("summary: ").or_else(|| l.strip_prefix("totals: ")))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .ok_or("no totals in the callgrind file")?;
            Ok(vec![("instructions".into(), total)])
        }
        Measure::Syscalls => {
            // `% time  seconds  usecs/call  calls  [errors]  syscall`, then
            // a `total` line.
            let text = std::fs::read_to_string(out.join(format!("strace.register.{n}.out")))?;
            let mut counts = Counts::new();
            for line in text.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.len() < 5 || words[0].parse::<f64>().is_err() {
                    continue;
                }
                let name = words[words.len() - 1];
                let calls: f64 = words[3].parse()?;
                counts.push(((if name == "total" { "syscalls" } else { name }).into(), calls));
            }
            Ok(counts)
        }
        Measure::Cpu => unreachable!("read from /proc before the server stops"),
    }
}

/// The server (or its tool), killed if a run ends early with an error
/// rather than left behind.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // Under strace the server is the tool's child: stop it first.
            for pid in children(self.0.id()) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs the server under `measure`'s tool, registers `n` times,
/// `in_flight` at a time, stops it; returns what the tool counted.
async fn count(
    (n, in_flight): (usize, usize),
    extra: &[String],
    (client, substreams): (Client, Substreams),
    measure: Measure,
) -> Result<Counts, Error> {
    let mut child = Stopped(start(n, extra, measure)?);
    let stderr = child.0.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let address: Multiaddr = loop {
        let line =
            rx.recv_timeout(Duration::from_secs(120)).map_err(|_| "the server did not start")?;
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
    let client_cpu = match client {
        Client::Raw => {
            let raw = raw_connection_as(keypair, server, &address).await;
            let before = own_cpu_micros()?;
            register_all(&raw, server, &record, (n, in_flight), substreams).await?;
            own_cpu_micros()? - before
        }
        Client::Ours => {
            let before = own_cpu_micros()?;
            let pipelined = substreams == Substreams::One;
            register_ours(keypair, server, &address, n, in_flight, pipelined).await?;
            own_cpu_micros()? - before
        }
    };
    let pid = server_pid(&child.0, measure)?;
    let counted = match measure {
        Measure::Cpu => {
            let mut counts = cpu_and_switches(pid)?;
            counts.push(("client CPU µs".into(), client_cpu));
            Some(counts)
        }
        _ => None,
    };
    // SIGINT: the server drains and exits, and the tool writes its file.
    Command::new("kill").args(["-INT", &pid.to_string()]).status()?;
    let status = child.0.wait()?;
    if !status.success() {
        return Err(format!("the server exited with {status}").into());
    }
    match counted {
        Some(counts) => Ok(counts),
        None => read_counts(n, measure),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut small, mut large, mut extra) = (100usize, 900usize, Vec::new());
    let mut substreams = Substreams::PerRequest;
    let mut measure = Measure::Instructions;
    let mut client = Client::Raw;
    let mut in_flight = IN_FLIGHT;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--small" => small = args.next().and_then(|v| v.parse().ok()).unwrap_or(small),
            "--large" => large = args.next().and_then(|v| v.parse().ok()).unwrap_or(large),
            "--inflight" => {
                in_flight =
                    args.next().and_then(|v| v.parse().ok()).filter(|&w| w > 0).unwrap_or_else(
                        || {
                            eprintln!("register_path: --inflight takes a count above 0");
                            std::process::exit(2);
                        },
                    )
            }
            "--one-substream" => substreams = Substreams::One,
            "--client" => {
                client = match args.next().as_deref() {
                    Some("raw") => Client::Raw,
                    Some("ours") => Client::Ours,
                    _ => {
                        eprintln!("register_path: --client takes raw or ours");
                        std::process::exit(2);
                    }
                }
            }
            "--measure" => {
                measure = match args.next().as_deref() {
                    Some("instructions") => Measure::Instructions,
                    Some("syscalls") => Measure::Syscalls,
                    Some("cpu") => Measure::Cpu,
                    _ => {
                        eprintln!("register_path: --measure takes instructions, syscalls or cpu");
                        std::process::exit(2);
                    }
                }
            }
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
        let a = count((small, in_flight), &extra, (client, substreams), measure).await?;
        let b = count((large, in_flight), &extra, (client, substreams), measure).await?;
        Ok::<_, Error>((a, b))
    };
    match run.await {
        Ok((a, b)) => {
            let per_registration = (large - small) as f64;
            for (name, at_large) in &b {
                let at_small = a.iter().find(|(n, _)| n == name).map_or(0.0, |(_, v)| *v);
                let per = (at_large - at_small) / per_registration;
                // Syscalls seen in only one run, or under one per hundred
                // registrations, are start-up's and shutdown's.
                if measure == Measure::Syscalls && per.abs() < 0.01 {
                    continue;
                }
                println!(
                    "{name}: {at_small:.0} for {small} registrations, {at_large:.0} for {large}: {per:.2} per registration"
                );
            }
        }
        Err(e) => {
            eprintln!("register_path: {e}");
            std::process::exit(1);
        }
    }
}
