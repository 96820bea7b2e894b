//! End-to-end load against rendezvous servers over real TCP + noise + yamux
//! on loopback: ours (the `rendezvous` binary), rust-libp2p's
//! (`rust-libp2p-server`, `libp2p-rendezvous` 0.18) and py-libp2p 0.8.1's,
//! one after the other, with the same load.
//!
//! `cargo build --release --bins && target/release/load [--quick] [--fresh]
//!  [--sizes 1000,10000,100000] [--py-sizes 1000] [--servers ours,rust,py]
//!  [--connections 20] [--inflight 8] [--svg PATH] [--sustain SECONDS --rate PER_S]`
//!
//! For each server and size N: C connections (one identity each) register N
//! times in all (N/C namespaces each, W requests in flight per connection,
//! one substream per request as rust-libp2p and py-libp2p clients do), then
//! ask for discover pages of 100. It prints, per run, registrations/s,
//! discover pages/s, p50/p99 latency, the server's CPU seconds (utime+stime
//! from /proc) and its peak RSS (VmHWM), then the ratios ours/theirs.
//! Records are signed once per connection and reused, unless `--fresh`
//! signs a new one for every request (then the load tool's own signing,
//! ~80 µs per record, bounds throughput on two cores). It fails only when it
//! cannot run, never on a timing.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, SwarmBuilder, noise, tcp, yamux};
use rendezvous_core::codec::{self, FrameDecoder};
use rendezvous_core::record::{Record, encode_peer_info};
use rendezvous_core::{Flavour, proto, testing};

/// Paging through everything stops here, so a slow server cannot stall the run.
const PAGE_ALL_LIMIT: Duration = Duration::from_secs(30);

const PROTOCOL: StreamProtocol = StreamProtocol::new("/rendezvous/1.0.0");

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Ours,
    Rust,
    Py,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Rust => "rust-libp2p 0.18",
            Kind::Py => "py-libp2p 0.8.1",
        }
    }
}

struct Options {
    sizes: Vec<usize>,
    py_sizes: Vec<usize>,
    servers: Vec<Kind>,
    connections: usize,
    inflight: usize,
    fresh: bool,
    pages: usize,
    svg: Option<PathBuf>,
    /// Seconds of sustained, paced refreshes (0: skip).
    sustain: u64,
    /// Refreshes per second in the sustained run.
    rate: u64,
}

fn options() -> Result<Options, Error> {
    let mut o = Options {
        sizes: vec![1_000, 10_000, 100_000],
        py_sizes: vec![1_000],
        servers: vec![Kind::Ours, Kind::Rust, Kind::Py],
        connections: 20,
        inflight: 8,
        fresh: false,
        pages: 2_000,
        svg: None,
        sustain: 0,
        rate: 10_000,
    };
    let mut args = std::env::args().skip(1);
    let list = |v: Option<String>| -> Result<Vec<usize>, Error> {
        Ok(v.ok_or("missing value")?.split(',').map(str::parse).collect::<Result<_, _>>()?)
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => {
                o.sizes = vec![1_000];
                o.py_sizes = vec![200];
                o.connections = 10;
                o.pages = 200;
            }
            "--fresh" => o.fresh = true,
            "--sizes" => o.sizes = list(args.next())?,
            "--py-sizes" => o.py_sizes = list(args.next())?,
            "--connections" => o.connections = args.next().ok_or("missing value")?.parse()?,
            "--inflight" => o.inflight = args.next().ok_or("missing value")?.parse()?,
            "--svg" => o.svg = Some(args.next().ok_or("missing value")?.into()),
            "--sustain" => o.sustain = args.next().ok_or("missing value")?.parse()?,
            "--rate" => o.rate = args.next().ok_or("missing value")?.parse()?,
            "--servers" => {
                o.servers = args
                    .next()
                    .ok_or("missing value")?
                    .split(',')
                    .map(|s| match s {
                        "ours" => Ok(Kind::Ours),
                        "rust" => Ok(Kind::Rust),
                        "py" => Ok(Kind::Py),
                        other => Err(format!("unknown server {other}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(o)
}

/// A server process and what the load needs of it.
struct Server {
    child: Child,
    address: Multiaddr,
    peer: PeerId,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sibling(name: &str) -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().ok_or("no parent directory")?.join(name);
    if !path.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release --bins` first",
            path.display()
        )
        .into());
    }
    Ok(path)
}

fn start(kind: Kind) -> Result<Server, Error> {
    let mut command = match kind {
        Kind::Ours => {
            let mut c = Command::new(sibling("rendezvous")?);
            c.args(["--mode", "server", "--listen", "127.0.0.1", "--stats-interval", "0"]);
            c.args([
                "--max-total",
                "10000000",
                "--max-per-peer",
                "1000000",
                "--max-per-namespace",
                "1000000",
            ]);
            c
        }
        Kind::Rust => Command::new(sibling("rust-libp2p-server")?),
        Kind::Py => {
            let mut c = Command::new(rendezvous_tests::py::python());
            c.arg(rendezvous_tests::py::script("interop.py")).arg("serve");
            c
        }
    };
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().ok_or("stdout")?) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().ok_or("stderr")?),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let address = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| format!("{} did not start", kind.name()))?;
        let found = match kind {
            Kind::Ours => line.split("--mode client --address ").nth(1),
            Kind::Rust | Kind::Py => line.strip_prefix("ADDR "),
        };
        if let Some(address) = found {
            break address.trim().parse::<Multiaddr>()?;
        }
    };
    let Some(Protocol::P2p(peer)) = address.iter().last() else {
        return Err("server address without /p2p/".into());
    };
    Ok(Server { child, address, peer })
}

/// (CPU seconds, peak RSS in MiB) of a process, from /proc.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm / 1024.0)
}

/// One client connection: its identity and a way to open substreams.
struct Conn {
    keypair: Keypair,
    control: libp2p_stream::Control,
}

async fn connect(server: &Server) -> Result<Conn, Error> {
    // Records are signed with the connection's own identity.
    let keypair = Keypair::generate_ed25519();
    let mut swarm = SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    let control = swarm.behaviour().new_control();
    swarm.dial(server.address.clone())?;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => return Ok(()),
                SwarmEvent::OutgoingConnectionError { error, .. } => return Err(error.to_string()),
                _ => {}
            }
        }
    })
    .await??;
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    Ok(Conn { keypair, control })
}

/// Sends one request frame on a new substream and reads one response frame.
async fn exchange(
    control: &mut libp2p_stream::Control,
    server: PeerId,
    frame: &[u8],
) -> Result<Bytes, Error> {
    let mut stream = control.open_stream(server, PROTOCOL).await?;
    stream.write_all(frame).await?;
    stream.flush().await?;
    let mut decoder = FrameDecoder::new(4 * 1024 * 1024);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err("stream closed before the response".into());
        }
        let mut input = &buf[..n];
        if let Some(body) = decoder.feed(&mut input)? {
            let _ = stream.close().await;
            return Ok(body);
        }
    }
}

struct Run {
    kind: Kind,
    n: usize,
    registrations_per_s: f64,
    register_p50_ms: f64,
    register_p99_ms: f64,
    pages_per_s: f64,
    page_p50_ms: f64,
    page_p99_ms: f64,
    cpu_per_registration_us: f64,
    refreshes_per_s: f64,
    refresh_p99_ms: f64,
    cpu_per_refresh_us: f64,
    /// Seconds spent paging through all N registrations, and how many were
    /// seen before [`PAGE_ALL_LIMIT`] (not for py-libp2p).
    page_all_s: Option<(f64, usize)>,
    /// Half refreshes, half discovers.
    mixed_per_s: f64,
    mixed_p99_ms: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Each connection's record: signed with its identity (legacy `PeerInfo`
/// for py-libp2p, which reads nothing else).
fn records(kind: Kind, conns: &[Conn]) -> Result<Vec<Bytes>, Error> {
    let addr = [ADDRESS.parse::<Multiaddr>()?];
    conns
        .iter()
        .map(|conn| match kind {
            Kind::Py => Ok(encode_peer_info(&conn.keypair.public().to_peer_id(), &addr)),
            _ => Ok(Record::sign(&conn.keypair, &addr, 1, Flavour::RustLibp2p)?),
        })
        .collect()
}

/// The address our made-up registrations announce.
const ADDRESS: &str = "/ip4/127.0.0.1/tcp/4001";

/// Sends `operations` requests on every connection, `inflight` at a time per
/// connection, one substream each; `request(connection, i)` builds each and
/// `check` judges each answer. Returns the latencies.
async fn round<R, C>(
    server: &Server,
    conns: &[Conn],
    operations: usize,
    inflight: usize,
    request: R,
    check: C,
) -> Result<Vec<Duration>, Error>
where
    R: Fn(usize, usize) -> Result<proto::Message, Error> + Send + Sync + 'static,
    C: Fn(proto::Message) -> Result<(), Error> + Send + Sync + 'static,
{
    let (request, check) = (Arc::new(request), Arc::new(check));
    let mut tasks = Vec::new();
    for (j, conn) in conns.iter().enumerate() {
        let (control, peer, request, check) =
            (conn.control.clone(), server.peer, request.clone(), check.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(operations);
            let mut answers = futures::stream::iter(0..operations)
                .map(|i| {
                    let (mut control, message) = (control.clone(), request(j, i));
                    async move {
                        let frame = codec::frame(&message?);
                        let t = Instant::now();
                        let body = exchange(&mut control, peer, &frame).await?;
                        Ok::<_, Error>((t.elapsed(), codec::decode_message(&body)?))
                    }
                })
                .buffer_unordered(inflight);
            while let Some(answer) = answers.next().await {
                let (latency, reply) = answer?;
                check(reply)?;
                latencies.push(latency);
            }
            Ok::<_, Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(latencies)
}

fn status_ok(reply: proto::Message) -> Result<(), Error> {
    let status = reply
        .register_response
        .and_then(|r| r.status)
        .or(reply.discover_response.and_then(|d| d.status))
        .unwrap_or(0);
    if status != 0 {
        return Err(format!("request refused with status {status}").into());
    }
    Ok(())
}

/// Every connection registers in its `per_conn` namespaces. `fresh` signs a
/// new record for each request, numbered from `seq`.
async fn register_round(
    kind: Kind,
    server: &Server,
    conns: &[Conn],
    per_conn: usize,
    inflight: usize,
    fresh: bool,
    seq: u64,
) -> Result<Vec<Duration>, Error> {
    let records = records(kind, conns)?;
    let keypairs: Vec<Keypair> = conns.iter().map(|c| c.keypair.clone()).collect();
    let fresh = fresh && kind != Kind::Py;
    let request = move |j: usize, k: usize| {
        let record = if fresh {
            let addr = [ADDRESS.parse::<Multiaddr>()?];
            Record::sign(&keypairs[j], &addr, seq + k as u64, Flavour::RustLibp2p)?
        } else {
            records[j].clone()
        };
        Ok(testing::register(&format!("ns-{k}"), record, Some(7200)))
    };
    round(server, conns, per_conn, inflight, request, status_ok).await
}

/// Half refreshes, half discovers of a spread of namespaces, interleaved.
async fn mixed_round(
    kind: Kind,
    server: &Server,
    conns: &[Conn],
    per_conn: usize,
    operations: usize,
    inflight: usize,
) -> Result<Vec<Duration>, Error> {
    let records = records(kind, conns)?;
    let request = move |j: usize, i: usize| {
        let ns = format!("ns-{}", (i * 7919) % per_conn);
        Ok(if i.is_multiple_of(2) {
            testing::register(&ns, records[j].clone(), Some(7200))
        } else {
            testing::discover(Some(&ns), Some(100), None)
        })
    };
    round(server, conns, operations, inflight, request, status_ok).await
}

async fn run(kind: Kind, n: usize, o: &Options) -> Result<Run, Error> {
    let server = start(kind)?;
    let pid = server.child.id();
    let mut conns = Vec::new();
    for _ in 0..o.connections {
        conns.push(connect(&server).await?);
    }
    let per_conn = n.div_ceil(o.connections);
    let (cpu_before, _) = usage(pid);
    let started = Instant::now();
    let mut register_latencies =
        register_round(kind, &server, &conns, per_conn, o.inflight, o.fresh, 2).await?;
    let register_time = started.elapsed();
    let (cpu_after_register, _) = usage(pid);
    let total = register_latencies.len();
    register_latencies.sort();

    // Everyone refreshes, with N already registered: the steady state.
    let started = Instant::now();
    let mut refresh_latencies =
        register_round(kind, &server, &conns, per_conn, o.inflight, o.fresh, 2 + per_conn as u64)
            .await?;
    let refresh_time = started.elapsed();
    let (cpu_after_refresh, _) = usage(pid);
    refresh_latencies.sort();

    // Discover pages of 100 in one namespace (py-libp2p needs one).
    let started = Instant::now();
    let per = o.pages.div_ceil(conns.len());
    let request = |_: usize, _: usize| Ok(testing::discover(Some("ns-0"), Some(100), None));
    let nonempty_page = |reply: proto::Message| {
        let page = reply.discover_response.ok_or("not a discover response")?;
        if page.status.unwrap_or(0) != 0 || page.registrations.is_empty() {
            let entries = page.registrations.len();
            return Err(format!("bad page: status {:?}, {entries} entries", page.status).into());
        }
        Ok(())
    };
    let mut page_latencies =
        round(&server, &conns, per, o.inflight, request, nonempty_page).await?;
    let page_time = started.elapsed();
    page_latencies.sort();
    // Page through the whole registry, all namespaces, 100 at a time,
    // following cookies (py-libp2p's server needs a namespace: skipped).
    let page_all_s = if kind == Kind::Py {
        None
    } else {
        let mut control = conns[0].control.clone();
        let (started, mut cookie, mut seen) = (Instant::now(), None, 0usize);
        loop {
            let frame = codec::frame(&testing::discover(None, Some(100), cookie.take()));
            let body = exchange(&mut control, server.peer, &frame).await?;
            let page =
                codec::decode_message(&body)?.discover_response.ok_or("not a discover response")?;
            if page.status.unwrap_or(0) != 0 {
                return Err(format!("paging refused with status {:?}", page.status).into());
            }
            if page.registrations.is_empty()
                || seen > 2 * total
                || started.elapsed() > PAGE_ALL_LIMIT
            {
                break;
            }
            seen += page.registrations.len();
            cookie = page.cookie;
        }
        if seen > total || (seen < total && started.elapsed() <= PAGE_ALL_LIMIT) {
            return Err(format!("paging through everything returned {seen} of {total}").into());
        }
        Some((started.elapsed().as_secs_f64(), seen))
    };

    let started = Instant::now();
    let mut mixed =
        mixed_round(kind, &server, &conns, per_conn, o.pages.div_ceil(conns.len()), o.inflight)
            .await?;
    let mixed_time = started.elapsed();
    mixed.sort();

    let (cpu_total, peak_rss_mib) = usage(pid);
    Ok(Run {
        page_all_s,
        mixed_per_s: mixed.len() as f64 / mixed_time.as_secs_f64(),
        mixed_p99_ms: percentile(&mixed, 0.99),
        kind,
        n: total,
        registrations_per_s: total as f64 / register_time.as_secs_f64(),
        register_p50_ms: percentile(&register_latencies, 0.5),
        register_p99_ms: percentile(&register_latencies, 0.99),
        pages_per_s: page_latencies.len() as f64 / page_time.as_secs_f64(),
        page_p50_ms: percentile(&page_latencies, 0.5),
        page_p99_ms: percentile(&page_latencies, 0.99),
        cpu_per_registration_us: (cpu_after_register - cpu_before) / total as f64 * 1e6,
        refreshes_per_s: refresh_latencies.len() as f64 / refresh_time.as_secs_f64(),
        refresh_p99_ms: percentile(&refresh_latencies, 0.99),
        cpu_per_refresh_us: (cpu_after_refresh - cpu_after_register)
            / refresh_latencies.len() as f64
            * 1e6,
        cpu_s: cpu_total,
        peak_rss_mib,
    })
}

/// Registers a pool (the first size), then refreshes it at `o.rate` per
/// second for `o.sustain` seconds, open loop (latency counted from when a
/// request was due), printing each 10 s window: rate, p50/p99, server RSS.
async fn sustain(kind: Kind, o: &Options) -> Result<(), Error> {
    let server = start(kind)?;
    let pid = server.child.id();
    let mut conns = Vec::new();
    for _ in 0..o.connections {
        conns.push(connect(&server).await?);
    }
    let pool = o.sizes.first().copied().unwrap_or(100_000);
    let per_conn = pool.div_ceil(o.connections);
    register_round(kind, &server, &conns, per_conn, o.inflight, false, 2).await?;
    println!(
        "{}: {} registrations, refreshed at {}/s for {} s by {} connections",
        kind.name(),
        per_conn * conns.len(),
        o.rate,
        o.sustain,
        conns.len()
    );
    println!("| window end s | refreshes | per s | p50 ms | p99 ms | server RSS MiB |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Duration, String>>();
    let interval = Duration::from_secs_f64(conns.len() as f64 / o.rate as f64);
    let end = Instant::now() + Duration::from_secs(o.sustain);
    for (conn, record) in conns.iter().zip(records(kind, &conns)?) {
        let frames: Vec<Bytes> = (0..per_conn)
            .map(|k| {
                codec::frame(&testing::register(&format!("ns-{k}"), record.clone(), Some(7200)))
            })
            .collect();
        let (control, peer, tx) = (conn.control.clone(), server.peer, tx.clone());
        tokio::spawn(async move {
            let mut due = Instant::now();
            let mut k = 0;
            while due < end {
                tokio::time::sleep_until(due.into()).await;
                let (mut control, tx, frame, scheduled) =
                    (control.clone(), tx.clone(), frames[k % frames.len()].clone(), due);
                tokio::spawn(async move {
                    let result = exchange(&mut control, peer, &frame)
                        .await
                        .map(|_| scheduled.elapsed())
                        .map_err(|e| e.to_string());
                    let _ = tx.send(result);
                });
                k += 1;
                due += interval;
            }
        });
    }
    drop(tx);
    let started = Instant::now();
    let mut window = Vec::new();
    let mut all = Vec::new();
    let mut failures = 0usize;
    let mut next_report = Duration::from_secs(10);
    loop {
        let deadline = tokio::time::Instant::from_std(started + next_report);
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(latency))) => window.push(latency),
            Ok(Some(Err(_))) => failures += 1,
            Ok(None) => break,
            Err(_) => {
                window.sort();
                let (_, rss) = usage(pid);
                println!(
                    "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} |",
                    next_report.as_secs(),
                    window.len(),
                    window.len() as f64 / 10.0,
                    percentile(&window, 0.5),
                    percentile(&window, 0.99),
                    rss_now(pid).unwrap_or(rss)
                );
                all.append(&mut window);
                next_report += Duration::from_secs(10);
            }
        }
    }
    all.append(&mut window);
    all.sort();
    println!(
        "total: {} refreshes in {:.0} s ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, {failures} failed",
        all.len(),
        started.elapsed().as_secs_f64(),
        all.len() as f64 / started.elapsed().as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99)
    );
    Ok(())
}

/// Current resident set of a process in MiB.
fn rss_now(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn table(runs: &[Run]) {
    println!(
        "| server | N | registrations/s | register p50 / p99 ms | server CPU µs/registration | refreshes/s with N registered | refresh p99 ms | server CPU µs/refresh | discover pages/s | page p50 / p99 ms | page through all N s | mixed ops/s | mixed p99 ms | server CPU s | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        println!(
            "| {} | {} | {:.0} | {:.2} / {:.2} | {:.1} | {:.0} | {:.2} | {:.1} | {:.0} | {:.2} / {:.2} | {} | {:.0} | {:.2} | {:.2} | {:.1} |",
            r.kind.name(),
            r.n,
            r.registrations_per_s,
            r.register_p50_ms,
            r.register_p99_ms,
            r.cpu_per_registration_us,
            r.refreshes_per_s,
            r.refresh_p99_ms,
            r.cpu_per_refresh_us,
            r.pages_per_s,
            r.page_p50_ms,
            r.page_p99_ms,
            match r.page_all_s {
                None => "n/a".to_owned(),
                Some((s, seen)) if seen == r.n => format!("{s:.2}"),
                Some((s, seen)) => format!("> {s:.0} ({seen} seen)"),
            },
            r.mixed_per_s,
            r.mixed_p99_ms,
            r.cpu_s,
            r.peak_rss_mib
        );
    }
    println!();
    // Each of theirs against ours at the same N, or ours at its nearest N
    // (py-libp2p runs smaller).
    for theirs in runs.iter().filter(|r| r.kind != Kind::Ours) {
        let Some(ours) =
            runs.iter().filter(|r| r.kind == Kind::Ours).min_by_key(|r| r.n.abs_diff(theirs.n))
        else {
            continue;
        };
        println!(
            "ours (N={}) vs {} (N={}): registrations/s x{:.1}, server CPU per registration /{:.1}, per refresh with N registered /{:.1}, discover pages/s x{:.1}",
            ours.n,
            theirs.kind.name(),
            theirs.n,
            ours.registrations_per_s / theirs.registrations_per_s,
            theirs.cpu_per_registration_us / ours.cpu_per_registration_us.max(f64::MIN_POSITIVE),
            theirs.cpu_per_refresh_us / ours.cpu_per_refresh_us.max(f64::MIN_POSITIVE),
            ours.pages_per_s / theirs.pages_per_s,
        );
    }
}

/// A small line chart of registrations/s against N, one line per server.
fn svg(runs: &[Run]) -> String {
    let (w, h, left, bottom) = (640.0, 360.0, 70.0, 40.0);
    let max_rate = runs.iter().map(|r| r.registrations_per_s).fold(1.0, f64::max) * 1.1;
    let sizes: Vec<usize> = {
        let mut s: Vec<usize> = runs.iter().map(|r| r.n).collect();
        s.sort();
        s.dedup();
        s
    };
    let x = |n: usize| {
        let i = sizes.iter().position(|&s| s == n).unwrap_or(0) as f64;
        left + 20.0 + i * (w - left - 60.0) / (sizes.len().max(2) - 1) as f64
    };
    let y = |rate: f64| h - bottom - rate / max_rate * (h - bottom - 30.0);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="18" text-anchor="middle">registrations/s against registry size (higher is better)</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="20" x2="{left}" y2="{}" stroke="black"/>
"#,
        w / 2.0,
        h - bottom,
        w - 20.0,
        h - bottom,
        h - bottom
    );
    for n in &sizes {
        out += &format!(
            r#"<text x="{}" y="{}" text-anchor="middle">{n}</text>"#,
            x(*n),
            h - bottom + 16.0
        );
        out += "\n";
    }
    for i in 0..=4 {
        let rate = max_rate * i as f64 / 4.0;
        out += &format!(
            r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
            left - 6.0,
            y(rate) + 4.0,
            rate
        );
        out += "\n";
    }
    for (kind, color, row) in
        [(Kind::Ours, "#1b7f3b", 0), (Kind::Rust, "#b5651d", 1), (Kind::Py, "#3b5bdb", 2)]
    {
        let points: Vec<String> = runs
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| format!("{:.1},{:.1}", x(r.n), y(r.registrations_per_s)))
            .collect();
        if points.is_empty() {
            continue;
        }
        out += &format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            out += &format!(r#"<circle cx="{px}" cy="{py}" r="3" fill="{color}"/>"#);
        }
        out += &format!(
            r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
            w - 170.0,
            40.0 + 16.0 * row as f64,
            kind.name()
        );
        out += "\n";
    }
    out + "</svg>\n"
}

#[tokio::main]
async fn main() {
    if let Err(err) = real_main().await {
        eprintln!("load: {err}");
        std::process::exit(1);
    }
}

async fn real_main() -> Result<(), Error> {
    let o = options()?;
    println!(
        "{} connections, {} requests in flight each, records {}; machine: {} cores",
        o.connections,
        o.inflight,
        if o.fresh {
            "signed fresh for every request"
        } else {
            "signed once per connection and reused"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if o.sustain > 0 {
        for &kind in &o.servers {
            sustain(kind, &o).await?;
        }
        return Ok(());
    }
    let mut runs = Vec::new();
    for &kind in &o.servers {
        let sizes = if kind == Kind::Py { &o.py_sizes } else { &o.sizes };
        for &n in sizes {
            eprintln!("load: {} with N = {n}...", kind.name());
            runs.push(run(kind, n, &o).await?);
        }
    }
    table(&runs);
    if let Some(path) = &o.svg {
        std::fs::write(path, svg(&runs))?;
        println!("chart written to {}", path.display());
    }
    Ok(())
}
