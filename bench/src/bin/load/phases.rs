//! The measured runs: the registry-size sweep, requests in flight on one
//! connection, and sustained paced refreshes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::rendezvous as theirs;
use libp2p::swarm::SwarmEvent;
use libp2p::{SwarmBuilder, noise, tcp, yamux};
use rendezvous_core::{proto, testing};

use crate::Error;
use crate::conn::{ADDRESS, Conn, exchange, record};
use crate::rounds::{Carry, Check, Tally, any, percentile_ms, round};
use crate::servers::{Kind, Server, own_cpu};
use rendezvous_tests::redis::RedisServer;

/// Paging through everything stops here, so a slow server cannot stall the run.
const PAGE_ALL_LIMIT: Duration = Duration::from_secs(30);

/// One server at one registry size.
pub(crate) struct ScaleRun {
    pub(crate) kind: Kind,
    pub(crate) n: usize,
    pub(crate) register: Tally,
    pub(crate) cpu_per_registration_us: f64,
    pub(crate) refresh: Tally,
    pub(crate) cpu_per_refresh_us: f64,
    pub(crate) pages: Tally,
    /// Seconds spent paging through all N registrations, and how many were
    /// seen before [`PAGE_ALL_LIMIT`] (not for py-libp2p).
    pub(crate) page_all_s: Option<(f64, usize)>,
    /// Half refreshes, half discovers.
    pub(crate) mixed: Tally,
    pub(crate) cpu_s: f64,
    pub(crate) own_cpu_s: f64,
    pub(crate) peak_rss_mib: f64,
}

impl ScaleRun {
    pub(crate) fn lost(&self) -> usize {
        self.register.lost + self.refresh.lost + self.pages.lost + self.mixed.lost
    }
}

/// What a sweep step is run with.
pub(crate) struct Shape {
    pub(crate) connections: usize,
    pub(crate) inflight: usize,
    /// Discover pages asked for in all (0: no discovery phases).
    pub(crate) pages: usize,
    pub(crate) fresh: bool,
}

async fn connections(server: &Server, count: usize) -> Result<Vec<Conn>, Error> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        conns.push(Conn::open(server).await?);
    }
    Ok(conns)
}

/// Every connection registers in its `per_conn` namespaces, carried as
/// `carry` says. `fresh` signs a new record for each request, numbered from
/// `seq`.
async fn register_round(
    kind: Kind,
    conns: &[Conn],
    (per_conn, inflight, carry): (usize, usize, Carry),
    fresh: Option<u64>,
) -> Result<Tally, Error> {
    let records = conns.iter().map(|c| c.record(kind)).collect::<Result<Vec<_>, _>>()?;
    let keys: Vec<_> = conns.iter().map(|c| c.keypair.clone()).collect();
    let fresh = fresh.filter(|_| kind != Kind::Py);
    let request = move |j: usize, k: usize| {
        let record = match fresh {
            Some(seq) => record(&keys[j], kind, seq + k as u64)?,
            None => records[j].clone(),
        };
        Ok(testing::register(&format!("ns-{k}"), record, Some(7200)))
    };
    round(conns, per_conn, inflight, carry, request, any()).await
}

/// Registers N, refreshes them all, discovers pages, pages through
/// everything, then mixes refreshes and discovers (with `shape.pages` 0,
/// only the first two).
pub(crate) async fn scale(kind: Kind, n: usize, shape: &Shape) -> Result<ScaleRun, Error> {
    let server = Server::start(kind)?;
    let conns = connections(&server, shape.connections).await?;
    let per_conn = n.div_ceil(conns.len());
    let own_before = own_cpu();
    let cpu_before = server.cpu();
    let fresh = |seq: u64| shape.fresh.then_some(seq);
    let each = (per_conn, shape.inflight, Carry::PerRequest);
    let register = register_round(server.kind, &conns, each, fresh(2)).await?;
    let cpu_after_register = server.cpu();
    // Everyone refreshes, with N registered: the steady state.
    let refresh = register_round(server.kind, &conns, each, fresh(2 + per_conn as u64)).await?;
    let cpu_after_refresh = server.cpu();

    let (pages, page_all_s, mixed) = if shape.pages == 0 {
        (Tally::default(), None, Tally::default())
    } else {
        discoveries(&server, &conns, per_conn, register.acknowledged(), shape).await?
    };
    Ok(ScaleRun {
        kind,
        n: register.acknowledged(),
        cpu_per_registration_us: per_request_us(cpu_after_register - cpu_before, &register),
        cpu_per_refresh_us: per_request_us(cpu_after_refresh - cpu_after_register, &refresh),
        register,
        refresh,
        pages,
        page_all_s,
        mixed,
        cpu_s: server.cpu(),
        own_cpu_s: own_cpu() - own_before,
        peak_rss_mib: server.peak_rss_mib(),
    })
}

/// Discover pages of 100 in one namespace, paging through everything, then
/// refreshes and discovers mixed: the pages, the time to page through all
/// `total` (none for py-libp2p) and the mixed round.
async fn discoveries(
    server: &Server,
    conns: &[Conn],
    per_conn: usize,
    total: usize,
    shape: &Shape,
) -> Result<(Tally, Option<(f64, usize)>, Tally), Error> {
    let kind = server.kind;
    // Discover pages of 100 in one namespace (py-libp2p needs one).
    let per = shape.pages.div_ceil(conns.len());
    let request = |_: usize, _: usize| Ok(testing::discover(Some("ns-0"), Some(100), None));
    let nonempty: Arc<Check> = Arc::new(|reply: &proto::Message| {
        let entries = reply.discover_response.as_ref().map_or(0, |p| p.registrations.len());
        if entries == 0 { Err("an empty page of a full namespace".into()) } else { Ok(()) }
    });
    let pages = round(conns, per, shape.inflight, Carry::PerRequest, request, nonempty).await?;
    let page_all_s = match kind {
        Kind::Py => None,
        _ => Some(page_all(server, &conns[0], total).await?),
    };
    let records = conns.iter().map(|c| c.record(kind)).collect::<Result<Vec<_>, _>>()?;
    let request = move |j: usize, i: usize| {
        let ns = format!("ns-{}", (i * 7919) % per_conn);
        Ok(if i.is_multiple_of(2) {
            testing::register(&ns, records[j].clone(), Some(7200))
        } else {
            testing::discover(Some(&ns), Some(100), None)
        })
    };
    let mixed = round(conns, per, shape.inflight, Carry::PerRequest, request, any()).await?;
    Ok((pages, page_all_s, mixed))
}

fn per_request_us(cpu_s: f64, tally: &Tally) -> f64 {
    cpu_s / tally.acknowledged().max(1) as f64 * 1e6
}

/// Pages through the whole registry, all namespaces, 100 at a time,
/// following cookies; checks each registration comes exactly once.
async fn page_all(server: &Server, conn: &Conn, total: usize) -> Result<(f64, usize), Error> {
    let mut control = conn.control.clone();
    let (started, mut cookie, mut seen) = (Instant::now(), None, 0usize);
    loop {
        let reply =
            exchange(&mut control, server.peer, &testing::discover(None, Some(100), cookie.take()))
                .await?;
        let page = reply.discover_response.ok_or("not a discover response")?;
        if page.status.unwrap_or(0) != 0 {
            return Err(format!("paging refused with status {:?}", page.status).into());
        }
        if page.registrations.is_empty() || seen > 2 * total || started.elapsed() > PAGE_ALL_LIMIT {
            break;
        }
        seen += page.registrations.len();
        cookie = page.cookie;
    }
    if seen > total || (seen < total && started.elapsed() <= PAGE_ALL_LIMIT) {
        return Err(format!("paging through everything returned {seen} of {total}").into());
    }
    Ok((started.elapsed().as_secs_f64(), seen))
}

/// One connection with many requests in flight.
pub(crate) struct InflightRun {
    pub(crate) kind: Kind,
    /// Which client: raw substreams (one per request, or one for all), or
    /// rust-libp2p's rendezvous client.
    pub(crate) client: &'static str,
    pub(crate) inflight: usize,
    pub(crate) register: Tally,
    /// Refreshes with everything registered (none for their client).
    pub(crate) refresh: Option<Tally>,
    pub(crate) cpu_per_refresh_us: f64,
}

/// One connection registers `n` namespaces with `inflight` requests in
/// flight, carried as `carry` says, then refreshes them all.
pub(crate) async fn inflight(
    kind: Kind,
    n: usize,
    inflight: usize,
    carry: Carry,
) -> Result<InflightRun, Error> {
    let server = Server::start(kind)?;
    let conns = connections(&server, 1).await?;
    let register = register_round(server.kind, &conns, (n, inflight, carry), None).await?;
    let before = server.cpu();
    let refresh = register_round(server.kind, &conns, (n, inflight, carry), None).await?;
    let cpu_per_refresh_us = per_request_us(server.cpu() - before, &refresh);
    Ok(InflightRun {
        kind,
        client: carry.label(),
        inflight,
        register,
        refresh: Some(refresh),
        cpu_per_refresh_us,
    })
}

/// rust-libp2p's own rendezvous client (`libp2p-rendezvous` 0.18) registers
/// `n` namespaces, `inflight` at a time; it signs a record per request.
pub(crate) async fn their_client(
    kind: Kind,
    n: usize,
    inflight: usize,
) -> Result<InflightRun, Error> {
    let server = Server::start(kind)?;
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| theirs::client::Behaviour::new(key.clone()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm.add_external_address(ADDRESS.parse()?);
    swarm.dial(server.address.clone())?;
    let namespace = |k: usize| theirs::Namespace::new(format!("ns-{k}")).map_err(|e| e.to_string());
    let (started, mut sent, mut tally) = (Instant::now(), 0usize, Tally::default());
    let mut sent_at = std::collections::BTreeMap::new();
    let deadline = started + Duration::from_secs(300);
    while tally.acknowledged() + tally.refused + tally.lost < n {
        while sent < n && sent - (tally.acknowledged() + tally.refused + tally.lost) < inflight {
            swarm.behaviour_mut().register(namespace(sent)?, server.peer, Some(7200))?;
            sent_at.insert(format!("ns-{sent}"), Instant::now());
            sent += 1;
        }
        let event = tokio::time::timeout_at(deadline.into(), swarm.select_next_some())
            .await
            .map_err(|_| "rust-libp2p's client did not finish in 300 s")?;
        match event {
            SwarmEvent::Behaviour(theirs::client::Event::Registered { namespace, .. }) => {
                let t = sent_at.remove(&namespace.to_string()).unwrap_or(started);
                tally.latencies.push(t.elapsed());
            }
            SwarmEvent::Behaviour(theirs::client::Event::RegisterFailed {
                namespace,
                error,
                ..
            }) => {
                sent_at.remove(&namespace.to_string());
                // Their client reports a missing answer as Unavailable, and
                // an answer of E_UNAVAILABLE the same way: counted as lost,
                // and said so.
                let problem = if error == theirs::ErrorCode::Unavailable {
                    tally.lost += 1;
                    "Unavailable (rust-libp2p's client reports a missing answer and E_UNAVAILABLE alike)".to_owned()
                } else {
                    tally.refused += 1;
                    format!("{error:?}")
                };
                tally.first_problem.get_or_insert(problem);
            }
            _ => {}
        }
    }
    tally.latencies.sort();
    tally.elapsed = started.elapsed();
    Ok(InflightRun {
        kind,
        client: "rust-libp2p's client",
        inflight,
        register: tally,
        refresh: None,
        cpu_per_refresh_us: 0.0,
    })
}

/// Registers a pool of `pool` registrations, then refreshes it at `rate` per
/// second for `seconds`, open loop (latency counted from when a request was
/// due), printing each 10 s window: rate, p50/p99, server RSS.
pub(crate) async fn sustain(
    kind: Kind,
    pool: usize,
    shape: &Shape,
    rate: u64,
    seconds: u64,
) -> Result<(), Error> {
    let server = Server::start(kind)?;
    let conns = connections(&server, shape.connections).await?;
    let per_conn = pool.div_ceil(conns.len());
    register_round(server.kind, &conns, (per_conn, shape.inflight, Carry::PerRequest), None)
        .await?;
    println!(
        "{}: {} registrations, refreshed at {rate}/s for {seconds} s by {} connections",
        kind.name(),
        per_conn * conns.len(),
        conns.len()
    );
    println!("| window end s | refreshes | per s | p50 ms | p99 ms | server RSS MiB |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Duration, String>>();
    let interval = Duration::from_secs_f64(conns.len() as f64 / rate as f64);
    let end = Instant::now() + Duration::from_secs(seconds);
    for conn in &conns {
        let record = conn.record(kind)?;
        let requests: Vec<proto::Message> = (0..per_conn)
            .map(|k| testing::register(&format!("ns-{k}"), record.clone(), Some(7200)))
            .collect();
        let (control, peer, tx) = (conn.control.clone(), server.peer, tx.clone());
        tokio::spawn(async move {
            let mut due = Instant::now();
            let mut k = 0;
            while due < end {
                tokio::time::sleep_until(due.into()).await;
                let (mut control, tx, request, scheduled) =
                    (control.clone(), tx.clone(), requests[k % requests.len()].clone(), due);
                tokio::spawn(async move {
                    let result = exchange(&mut control, peer, &request)
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
    let (mut window, mut all, mut failures) = (Vec::new(), Vec::new(), 0usize);
    let mut next_report = Duration::from_secs(10);
    loop {
        let deadline = tokio::time::Instant::from_std(started + next_report);
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(latency))) => window.push(latency),
            Ok(Some(Err(_))) => failures += 1,
            Ok(None) => break,
            Err(_) => {
                window.sort();
                println!(
                    "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} |",
                    next_report.as_secs(),
                    window.len(),
                    window.len() as f64 / 10.0,
                    percentile_ms(&window, 0.5),
                    percentile_ms(&window, 0.99),
                    server.rss_mib()
                );
                all.append(&mut window);
                next_report += Duration::from_secs(10);
            }
        }
    }
    all.append(&mut window);
    all.sort();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "total: {} refreshes in {secs:.0} s ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, {failures} lost",
        all.len(),
        all.len() as f64 / secs,
        percentile_ms(&all, 0.5),
        percentile_ms(&all, 0.99)
    );
    Ok(())
}

/// Several points sharing one Redis.
pub(crate) struct SharedRun {
    pub(crate) points: usize,
    pub(crate) register: Tally,
    pub(crate) pages: Tally,
    /// From a REGISTER acknowledged at one point to a DISCOVER at another
    /// returning it.
    pub(crate) lag: Vec<Duration>,
    /// Each point's resident set at the end, MiB.
    pub(crate) rss_mib: Vec<f64>,
}

/// `points` points on one Redis: C connections spread over them register N
/// in all and ask for pages; then a probe registers at the first point and
/// another connection asks the second until it sees it, `samples` times.
pub(crate) async fn shared(
    points: usize,
    n: usize,
    shape: &Shape,
    samples: usize,
) -> Result<SharedRun, Error> {
    let redis = RedisServer::start("shared");
    let mut servers = Vec::new();
    for _ in 0..points.max(2) {
        servers.push(Server::start_with(Kind::OursRedis, Some(redis.url()))?);
    }
    let mut conns = Vec::new();
    for j in 0..shape.connections {
        conns.push(Conn::open(&servers[j % servers.len()]).await?);
    }
    let per_conn = n.div_ceil(conns.len());
    let each = (per_conn, shape.inflight, Carry::PerRequest);
    let register = register_round(Kind::OursRedis, &conns, each, None).await?;
    let per = shape.pages.div_ceil(conns.len());
    let request = |_: usize, _: usize| Ok(testing::discover(Some("ns-0"), Some(100), None));
    let pages = round(&conns, per, shape.inflight, Carry::PerRequest, request, any()).await?;

    let (probe, watcher) = (Conn::open(&servers[0]).await?, Conn::open(&servers[1]).await?);
    let record = probe.record(Kind::OursRedis)?;
    let (mut at_first, mut at_second) = (probe.control.clone(), watcher.control.clone());
    let mut lag = Vec::with_capacity(samples);
    for i in 0..samples {
        let ns = format!("lag-{i}");
        let answer = exchange(
            &mut at_first,
            probe.server,
            &testing::register(&ns, record.clone(), Some(7200)),
        )
        .await?;
        if answer.register_response.and_then(|r| r.status).unwrap_or(0) != 0 {
            return Err("the probe's REGISTER was refused".into());
        }
        let acknowledged = Instant::now();
        loop {
            let page =
                exchange(&mut at_second, watcher.server, &testing::discover(Some(&ns), None, None))
                    .await?;
            if page.discover_response.is_some_and(|p| !p.registrations.is_empty()) {
                lag.push(acknowledged.elapsed());
                break;
            }
            if acknowledged.elapsed() > Duration::from_secs(10) {
                return Err(format!("{ns} was not visible at the second point in 10 s").into());
            }
        }
    }
    lag.sort();
    let rss_mib = servers.iter().map(Server::rss_mib).collect();
    Ok(SharedRun { points: servers.len(), register, pages, lag, rss_mib })
}
