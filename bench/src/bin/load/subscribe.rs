//! Subscriptions (`--subscribers N`): how soon a change reaches a
//! subscriber, at one point and across two points on one Redis; what N
//! subscribers of one namespace cost a point (RSS, CPU per event
//! delivered); and what a watching client asks of a point in an hour,
//! polling at the default interval or subscribed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libp2p::{PeerId, StreamProtocol};
use rendezvous_core::testing::{self as world, TestPeer, World};
use rendezvous_core::{ClientConfig, Namespace, ServerConfig, codec, proto};
use rendezvous_libp2p::framed::Framed;
use rendezvous_tests::redis::RedisServer;

use crate::Error;
use crate::conn::{Conn, MAX_RESPONSE, exchange};
use crate::servers::{Kind, Server};

const SUBSCRIBE: StreamProtocol = StreamProtocol::new(rendezvous_core::SUBSCRIPTION_TYPE);
const NS: &str = "bench";
/// Changes timed per latency run (half arrivals, half departures).
const CHANGES: usize = 1_000;
/// Subscriptions per connection: the point's default limit per peer.
const PER_CONNECTION: usize = 16;
/// Registrations pushed to every subscriber in the fan-out run.
const FAN_OUT: usize = 100;

/// A subscription's substream.
type Subscription = Framed<libp2p::Stream>;

async fn subscribe(conn: &mut Conn) -> Result<Subscription, Error> {
    let stream = conn.control.open_stream(conn.server, SUBSCRIBE).await?;
    let mut framed = Framed::new(stream, MAX_RESPONSE);
    let request = proto::Message {
        r#type: Some(proto::MessageType::DiscoverSubscribe as i32),
        discover_subscribe: Some(proto::DiscoverSubscribe {
            supported_subscription_types: vec![rendezvous_core::SUBSCRIPTION_TYPE.into()],
            ns: Some(NS.into()),
            position: None,
        }),
        ..Default::default()
    };
    framed.write_frame(&codec::frame(&request)).await?;
    let answer = next(&mut framed).await?;
    let status = answer.discover_subscribe_response.and_then(|a| a.status);
    if status != Some(proto::ResponseStatus::Ok as i32) {
        return Err(format!("subscription refused: {status:?}").into());
    }
    next(&mut framed).await?; // what the namespace holds
    Ok(framed)
}

async fn next(framed: &mut Subscription) -> Result<proto::Message, Error> {
    let body = tokio::time::timeout(Duration::from_secs(30), framed.read_frame())
        .await
        .map_err(|_| "no push in 30 s")??
        .ok_or("the subscription ended")?;
    Ok(codec::decode_message(&body)?)
}

/// Arrivals and departures in a batch.
fn events(message: &proto::Message) -> usize {
    message.discover_response.as_ref().map_or(0, |b| b.registrations.len() + b.departures.len())
}

/// From a request's send to the push at a subscriber, in µs, sorted.
pub(crate) struct Latency {
    pub(crate) label: String,
    pub(crate) arrivals: Vec<u64>,
    pub(crate) departures: Vec<u64>,
}

/// Registers and unregisters at `at`, timing each until `watcher` is told.
async fn latency(label: &str, watcher: &Server, at: &Server) -> Result<Latency, Error> {
    let mut listening = Conn::open(watcher).await?;
    let mut subscription = subscribe(&mut listening).await?;
    let mut writer = Conn::open(at).await?;
    let record = writer.record(Kind::Ours)?;
    let (mut arrivals, mut departures) = (Vec::new(), Vec::new());
    for _ in 0..CHANGES / 2 {
        let started = Instant::now();
        let register = world::register(NS, record.clone(), Some(3600));
        exchange(&mut writer.control, at.peer, &register).await?;
        while events(&next(&mut subscription).await?) == 0 {}
        arrivals.push(started.elapsed().as_micros() as u64);
        let started = Instant::now();
        unregister(&mut writer, at.peer).await?;
        while events(&next(&mut subscription).await?) == 0 {}
        departures.push(started.elapsed().as_micros() as u64);
    }
    arrivals.sort_unstable();
    departures.sort_unstable();
    Ok(Latency { label: label.to_owned(), arrivals, departures })
}

/// An UNREGISTER: written, and the substream closed (it has no answer).
async fn unregister(conn: &mut Conn, server: PeerId) -> Result<(), Error> {
    let stream = conn.control.open_stream(server, crate::conn::PROTOCOL).await?;
    let mut framed = Framed::new(stream, MAX_RESPONSE);
    framed.write_frame(&codec::frame(&world::unregister(NS))).await?;
    let _ = framed.close().await;
    Ok(())
}

/// What `n` subscribers cost one point.
pub(crate) struct FanOut {
    pub(crate) subscribers: usize,
    pub(crate) rss_before_mib: f64,
    pub(crate) rss_after_mib: f64,
    pub(crate) delivered: u64,
    pub(crate) expected: u64,
    pub(crate) cpu_s: f64,
    pub(crate) wall_s: f64,
}

async fn fan_out(n: usize) -> Result<FanOut, Error> {
    let point = Server::start(Kind::Ours)?;
    let rss_before_mib = point.rss_mib();
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut held = Vec::new();
    for _ in 0..n.div_ceil(PER_CONNECTION) {
        let mut conn = Conn::open(&point).await?;
        for _ in 0..PER_CONNECTION.min(n - readers.len()) {
            let mut subscription = subscribe(&mut conn).await?;
            let delivered = delivered.clone();
            readers.push(tokio::spawn(async move {
                let mut seen = 0;
                while seen < FAN_OUT {
                    let Ok(message) = next(&mut subscription).await else { break };
                    let count = events(&message);
                    seen += count;
                    delivered.fetch_add(count as u64, Ordering::Relaxed);
                }
            }));
        }
        held.push(conn);
    }
    let rss_after_mib = point.rss_mib();
    let (cpu, started) = (point.cpu(), Instant::now());
    let mut writers = Vec::new();
    for _ in 0..FAN_OUT {
        let mut conn = Conn::open(&point).await?;
        let register = world::register(NS, conn.record(Kind::Ours)?, Some(3600));
        exchange(&mut conn.control, point.peer, &register).await?;
        writers.push(conn);
    }
    for reader in readers {
        reader.await?;
    }
    Ok(FanOut {
        subscribers: n,
        rss_before_mib,
        rss_after_mib,
        delivered: delivered.load(Ordering::Relaxed),
        expected: (n * FAN_OUT) as u64,
        cpu_s: point.cpu() - cpu,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// Requests a client watching one namespace sends a point in an hour, on
/// the virtual clock: polling at the default interval, then subscribed.
pub(crate) fn requests_per_hour(subscribe: bool) -> u64 {
    let mut w = World::new();
    let server = w.add_server(100, ServerConfig::default());
    let config = ClientConfig { subscribe, ..ClientConfig::default() };
    let watcher = w.add_client(&TestPeer::new(1), config);
    let now = w.now;
    w.client(watcher).set_server_subscribes(now, server, true);
    w.client(watcher).watch(now, server, Namespace::new(NS, 255).expect("a namespace")).ok();
    w.pump();
    // A few peers come and go meanwhile.
    let registering = 4;
    for seed in 2..2 + registering {
        let peer = TestPeer::new(seed);
        let record =
            peer.record(rendezvous_core::Dialect::Signed(rendezvous_core::Flavour::RustLibp2p));
        w.request(server, peer.id, world::register(NS, record, Some(7200)));
    }
    w.advance(Duration::from_secs(3600));
    let stats = w.server(server).stats();
    // The registrations themselves are not the watcher's.
    stats.requests.total() - registering as u64 + stats.subscriptions as u64
}

pub(crate) struct Run {
    pub(crate) latencies: Vec<Latency>,
    pub(crate) fan_out: FanOut,
    pub(crate) polled_per_hour: u64,
    pub(crate) subscribed_per_hour: u64,
}

pub(crate) async fn run(subscribers: usize) -> Result<Run, Error> {
    let mut latencies = Vec::new();
    {
        eprintln!("load: subscription latency at one point...");
        let point = Server::start(Kind::Ours)?;
        latencies.push(latency("one point", &point, &point).await?);
    }
    {
        eprintln!("load: subscription latency across two points on one Redis...");
        let redis = RedisServer::start("load-subscribe");
        let a = Server::start_with(Kind::OursRedis, Some(redis.url()))?;
        let b = Server::start_with(Kind::OursRedis, Some(redis.url()))?;
        latencies.push(latency("across points (Redis)", &a, &b).await?);
    }
    eprintln!("load: {subscribers} subscribers of one namespace...");
    let fan_out = fan_out(subscribers).await?;
    Ok(Run {
        latencies,
        fan_out,
        polled_per_hour: requests_per_hour(false),
        subscribed_per_hour: requests_per_hour(true),
    })
}

/// The `q`th quantile of sorted µs, in ms.
fn ms(sorted: &[u64], q: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(at).copied().unwrap_or(0) as f64 / 1000.0
}

pub(crate) fn report(run: &Run) {
    println!("| where | changes | arrival p50 / p99 ms | departure p50 / p99 ms |");
    println!("|---|---|---|---|");
    for l in &run.latencies {
        println!(
            "| {} | {} | {:.2} / {:.2} | {:.2} / {:.2} |",
            l.label,
            l.arrivals.len() + l.departures.len(),
            ms(&l.arrivals, 0.5),
            ms(&l.arrivals, 0.99),
            ms(&l.departures, 0.5),
            ms(&l.departures, 0.99)
        );
    }
    let f = &run.fan_out;
    println!();
    println!(
        "| subscribers | point RSS before / with them MiB | KiB per subscriber | events delivered / expected | point CPU µs per event delivered | delivered/s |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} / {:.1} | {:.2} | {} / {} | {:.2} | {:.0} |",
        f.subscribers,
        f.rss_before_mib,
        f.rss_after_mib,
        (f.rss_after_mib - f.rss_before_mib) * 1024.0 / f.subscribers as f64,
        f.delivered,
        f.expected,
        f.cpu_s * 1e6 / f.delivered.max(1) as f64,
        f.delivered as f64 / f.wall_s
    );
    println!();
    println!(
        "requests a watching client sends a point in an hour: polling every 60 s {}, subscribed {}",
        run.polled_per_hour, run.subscribed_per_hour
    );
}
