//! End-to-end load against rendezvous servers over real TCP + noise + yamux
//! on loopback: ours (the `rendezvous` binary), rust-libp2p's and
//! py-libp2p 0.8.1's, one after the other, with the same load.
//! rust-libp2p's are `libp2p-rendezvous` 0.18's server behaviour alone
//! (`rust`, `rust-libp2p-server`) and its point as rust-libp2p publishes it,
//! with identify and ping (`rust-point`, `rust-libp2p-point`); both are
//! built from the published crates, without this workspace's patches or
//! build flags, by `bench/theirs/build`.
//!
//! ```text
//! cargo build --release --bins && bench/theirs/build && target/release/load [--quick] [--fresh]
//!   [--sizes 1000,10000,100000|none] [--py-sizes 1000|none] [--servers ours,ours-durable,ours-redis,ours-redis-replica,ours-metrics,ours-ws,rust,rust-point,py]
//!   [--connections 20] [--inflight 8] [--pages 2000] [--svg PATH]
//!   [--inflight-list 64,128,256|none] [--inflight-n 20000] [--py-inflight-n 1000]
//!   [--sustain SECONDS --rate PER_S]
//! target/release/load --soak SECONDS [--soak-ttl 15] [--points 3] [--rate 1000]
//! target/release/load --subscribers 10000
//! target/release/load --churn 2000 [--churn-ping] [--servers ours,rust]
//! ```
//!
//! Two sweeps, each against every server in turn, each server a fresh
//! process ("ours" in memory, "ours, data dir" with its embedded store in a
//! fresh directory):
//! - **Registry size.** For each size N: C connections (one identity each)
//!   register N times in all (N/C namespaces each, W requests in flight per
//!   connection, one substream per request as rust-libp2p and py-libp2p
//!   clients do), refresh them all, ask for discover pages of 100, page
//!   through everything, then mix refreshes and discovers (`--pages`, 2000:
//!   the discover pages asked; 0 skips every discovery phase, so that a
//!   server answering only REGISTERs, such as `stack-floor`, can be
//!   measured). It prints rates,
//!   p50/p99 latency, the server's CPU seconds (utime+stime from /proc), the
//!   load tool's own, and the server's peak RSS (VmHWM), then the ratios
//!   ours/theirs.
//! - **In flight.** One connection registers `--inflight-n` namespaces with
//!   64, 128 and 256 requests in flight, then refreshes them all, and
//!   rust-libp2p's own client does the same at 64 in flight (it opens at
//!   most 100 substreams). Against our points, the same again with every
//!   request on one substream, written ahead of the answers, as our client
//!   carries them to a point of ours. Every request is counted as acknowledged, refused
//!   or lost.
//!
//! Then `--points` points share one Redis: connections spread over them
//! register the first size, ask for pages, and a probe measures how long a
//! REGISTER acknowledged at one point takes to be served by another.
//!
//! **Soak** (`--soak SECONDS`, nothing else runs): `--points` points (3)
//! share one Redis, each with `--min-ttl` at `--soak-ttl` (15 s) and every
//! limit opened but `--max-per-peer`, set to each identity's stable share plus
//! room for churn. Four connections per point, each its own identity, send
//! about `--rate` requests/s (1000) in all: 3,000 stable registrations of
//! `--soak-ttl` refreshed at 60–80 % of it, churn (a REGISTER, then an
//! UNREGISTER 0.1–0.5 s after the answer) and DISCOVERs for pages of 100,
//! some following cookies. A model of every (identity, namespace) follows
//! the requests and answers. Every 10 s it samples Redis's `used_memory`,
//! `XLEN rendezvous:log`, `HLEN rendezvous:reg` and each point's RSS, and
//! walks every point (all namespaces, pages of 1000, cookies followed to an
//! empty page) from a watcher, counting **lost** (acknowledged, within its TTL
//! by 2 s, nothing in flight, not served), **resurrected** (unregistered more
//! than 2 s before, nothing since, served) and **over a limit** (more than
//! `--max-per-peer` of one identity in a walk's first page, or a REGISTER of
//! a key known absent acknowledged while the identity held that many others).
//! A key a walk gets wrong is watched for 5 s more, walking again: one that
//! comes right (replication from another point, an UNREGISTER waiting for
//! Redis) is counted late, not lost or resurrected.
//! It prints a row per sample, what was sent, acknowledged and refused, the
//! three counts, Redis's memory after the first TTL window against the last
//! sample and each point's RSS first against last; it exits non-zero if a
//! count is not 0, a walk failed or a point exited (see `soak.rs`).
//!
//! **Subscriptions** (`--subscribers N`, nothing else runs): a subscriber
//! at one point, and one at a point sharing a Redis with another, are
//! timed from a REGISTER or UNREGISTER sent (at the same point, or at the
//! other) to its push arriving, 500 of each; then N subscribers of one
//! namespace (16 per connection, the point's limit per peer) take 100
//! registrations each, and the point's RSS with them and its CPU per event
//! delivered are printed; then, on the virtual clock, the requests a
//! watching client sends in an hour, polling every 60 s or subscribed. It
//! fails if an event is not delivered.
//!
//! **Churn** (`--churn N`, nothing else runs): N peers, each a new
//! identity running rust-libp2p's client with identify, connect, register
//! once and disconnect, 8 at a time, against ours and rust-libp2p's servers
//! (or `--servers`); it prints the server's CPU per peer. With
//! `--churn-ping` each peer also runs libp2p-ping, as most rust-libp2p
//! applications do: it pings the server as it connects, and answers the
//! server's pings.
//!
//! `RENDEZVOUS_BIN=path` runs that build as "ours", to compare two builds.
//!
//! Records are signed once per connection and reused, unless `--fresh` signs
//! a new one for every request. The tool fails when it cannot run, and in
//! `--quick` mode (the CI's smoke test) when our server lost a request, and
//! in a soak as said above; never on a timing.

mod churn;
mod conn;
mod phases;
mod report;
mod rounds;
mod servers;
mod soak;
mod subscribe;

use std::path::PathBuf;

use phases::Shape;
use rounds::Carry;
use servers::Kind;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Options {
    sizes: Vec<usize>,
    py_sizes: Vec<usize>,
    servers: Vec<Kind>,
    shape: Shape,
    svg: Option<PathBuf>,
    inflight_list: Vec<usize>,
    inflight_n: usize,
    py_inflight_n: usize,
    /// Fail if our server loses a request.
    strict: bool,
    /// Points sharing one Redis in the shared phase (0: skip).
    points: usize,
    /// Seconds of sustained, paced refreshes (0: skip).
    sustain: u64,
    /// Refreshes per second in the sustained run (10,000), requests per
    /// second in the soak (1000).
    rate: Option<u64>,
    /// Seconds of soak (0: skip).
    soak: u64,
    /// The soak's TTL, in seconds.
    soak_ttl: u64,
    /// Subscribers of one namespace in the subscription run (0: skip).
    subscribers: usize,
    /// Peers in the churn run (0: skip).
    churn: usize,
    /// Churning peers run libp2p-ping.
    churn_ping: bool,
    /// `--servers` was given.
    servers_given: bool,
}

fn options() -> Result<Options, Error> {
    let mut o = Options {
        sizes: vec![1_000, 10_000, 100_000],
        py_sizes: vec![1_000],
        servers: vec![Kind::Ours, Kind::OursDurable, Kind::OursRedis, Kind::Rust, Kind::Py],
        shape: Shape { connections: 20, inflight: 8, pages: 2_000, fresh: false },
        svg: None,
        inflight_list: vec![64, 128, 256],
        inflight_n: 20_000,
        py_inflight_n: 1_000,
        strict: false,
        points: 3,
        sustain: 0,
        rate: None,
        soak: 0,
        soak_ttl: 15,
        subscribers: 0,
        churn: 0,
        churn_ping: false,
        servers_given: false,
    };
    let mut args = std::env::args().skip(1);
    // `none` skips a sweep: `--sizes none` runs only the in-flight one.
    let list = |v: String| -> Result<Vec<usize>, Error> {
        if v == "none" {
            return Ok(Vec::new());
        }
        Ok(v.split(',').map(str::parse).collect::<Result<_, _>>()?)
    };
    while let Some(arg) = args.next() {
        let mut take = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--quick" => {
                o.sizes = vec![1_000];
                o.py_sizes = vec![200];
                o.shape.connections = 10;
                o.shape.pages = 200;
                o.inflight_list = vec![64];
                o.inflight_n = 2_000;
                o.py_inflight_n = 200;
                o.strict = true;
            }
            "--fresh" => o.shape.fresh = true,
            "--sizes" => o.sizes = list(take()?)?,
            "--py-sizes" => o.py_sizes = list(take()?)?,
            "--connections" => o.shape.connections = take()?.parse()?,
            "--inflight" => o.shape.inflight = take()?.parse()?,
            "--pages" => o.shape.pages = take()?.parse()?,
            "--inflight-list" => o.inflight_list = list(take()?)?,
            "--inflight-n" => o.inflight_n = take()?.parse()?,
            "--py-inflight-n" => o.py_inflight_n = take()?.parse()?,
            "--points" => o.points = take()?.parse()?,
            "--svg" => o.svg = Some(take()?.into()),
            "--sustain" => o.sustain = take()?.parse()?,
            "--rate" => o.rate = Some(take()?.parse()?),
            "--soak" => o.soak = take()?.parse()?,
            "--soak-ttl" => o.soak_ttl = take()?.parse()?,
            "--subscribers" => o.subscribers = take()?.parse()?,
            "--churn" => o.churn = take()?.parse()?,
            "--churn-ping" => o.churn_ping = true,
            "--servers" => {
                o.servers_given = true;
                o.servers = take()?.split(',').map(Kind::parse).collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(o)
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
    if o.churn > 0 {
        let kinds = if o.servers_given { o.servers.clone() } else { vec![Kind::Ours, Kind::Rust] };
        let mut runs = Vec::new();
        for kind in kinds {
            eprintln!("load: {} peers churning through {}...", o.churn, kind.name());
            runs.push(churn::churn(kind, o.churn, o.churn_ping).await?);
        }
        churn::report(&runs);
        return Ok(());
    }
    if o.subscribers > 0 {
        let run = subscribe::run(o.subscribers).await?;
        subscribe::report(&run);
        let f = &run.fan_out;
        if f.delivered != f.expected {
            return Err(format!(
                "{} of {} events not delivered",
                f.expected - f.delivered,
                f.expected
            )
            .into());
        }
        return Ok(());
    }
    if o.soak > 0 {
        let config = soak::Config {
            seconds: o.soak,
            ttl: o.soak_ttl,
            points: o.points,
            rate: o.rate.unwrap_or(1_000),
        };
        let run = soak::soak(config).await?;
        report::soak_table(&run);
        let k = &run.checks;
        if run.failed() {
            return Err(format!(
                "the soak found lost {}, resurrected {}, over a limit {}; failed walks {}, points exited {}",
                k.lost,
                k.resurrected,
                k.over(),
                k.walk_failures,
                run.exits.len()
            )
            .into());
        }
        return Ok(());
    }
    println!(
        "{} connections, {} requests in flight each, records {}; machine: {} cores",
        o.shape.connections,
        o.shape.inflight,
        if o.shape.fresh {
            "signed fresh for every request"
        } else {
            "signed once per connection and reused"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if o.sustain > 0 {
        for &kind in &o.servers {
            let pool = o.sizes.first().copied().unwrap_or(100_000);
            phases::sustain(kind, pool, &o.shape, o.rate.unwrap_or(10_000), o.sustain).await?;
        }
        return Ok(());
    }
    let mut runs = Vec::new();
    for &kind in &o.servers {
        let sizes = if kind == Kind::Py { &o.py_sizes } else { &o.sizes };
        for &n in sizes {
            eprintln!("load: {} with N = {n}...", kind.name());
            runs.push(phases::scale(kind, n, &o.shape).await?);
        }
    }
    if !runs.is_empty() {
        report::scale_table(&runs);
    }
    if let Some(path) = &o.svg {
        std::fs::write(path, report::svg(&runs))?;
        println!("chart written to {}", path.display());
    }
    let mut inflight = Vec::new();
    for &kind in &o.servers {
        let n = if kind == Kind::Py { o.py_inflight_n } else { o.inflight_n };
        for &w in &o.inflight_list {
            eprintln!("load: {} with {w} in flight on one connection...", kind.name());
            inflight.push(phases::inflight(kind, n, w, Carry::PerRequest).await?);
        }
        // Only our point answers several requests on one substream.
        if kind.is_ours() {
            for &w in &o.inflight_list {
                eprintln!("load: {} with {w} in flight on one substream...", kind.name());
                inflight.push(phases::inflight(kind, n, w, Carry::OneSubstream).await?);
            }
        }
        // rust-libp2p's client here dials TCP only.
        if !matches!(kind, Kind::Py | Kind::OursWs) {
            eprintln!("load: rust-libp2p's client against {}...", kind.name());
            inflight.push(phases::their_client(kind, n, 64).await?);
        }
    }
    if !inflight.is_empty() {
        report::inflight_table(&inflight);
    }
    let mut shared_lost = 0;
    if o.points > 0 {
        let n = o.sizes.first().copied().unwrap_or(10_000);
        eprintln!("load: {} points sharing one redis with N = {n}...", o.points);
        let run = phases::shared(o.points, n, &o.shape, 200).await?;
        report::shared_table(&run);
        shared_lost = run.register.lost + run.pages.lost;
    }
    if o.strict {
        let lost: usize = runs.iter().filter(|r| r.kind.is_ours()).map(|r| r.lost()).sum::<usize>()
            + inflight
                .iter()
                .filter(|r| r.kind.is_ours())
                .map(|r| r.register.lost + r.refresh.as_ref().map_or(0, |f| f.lost))
                .sum::<usize>();
        let lost = lost + shared_lost;
        if lost > 0 {
            return Err(format!("our server lost {lost} requests").into());
        }
    }
    Ok(())
}
