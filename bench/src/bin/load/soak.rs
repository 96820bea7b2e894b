//! The soak: points of ours share one Redis under a paced, realistic mix for
//! a while, and a model of what every (identity, namespace) should be is
//! held against a full walk of every point every 10 s, beside Redis's memory,
//! log and hash and each point's RSS.
//!
//! The mix, about `--rate` requests/s over [`CONNECTIONS_PER_POINT`]
//! connections per point, each its own identity, one request a tick:
//! an UNREGISTER that is due, else a refresh that is due, else two churn
//! REGISTERs for each DISCOVER. The stable population is [`STABLE`]
//! registrations with TTL `--soak-ttl`, each refreshed at 60–80 % of it;
//! churn registers one of [`CHURN_POOL`] namespaces per identity and
//! unregisters it 0.1–0.5 s after the answer; a DISCOVER asks for 100 of
//! every namespace (then follows its cookie up to three pages) or of one.
//!
//! What the model knows of a key and what a walk is held to:
//! - **lost**: acknowledged, with nothing in flight, at least [`MARGIN`] of
//!   its TTL left (counted from when its REGISTER was sent), and not served.
//! - **resurrected**: its last request an UNREGISTER written at least
//!   [`MARGIN`] before the walk began, nothing sent since, and served.
//! - **over a limit**: an identity with more than `--max-per-peer` in one
//!   walk's first page (one page is atomic); and, since a page of 1000 out
//!   of thousands holds a third of anyone's, a REGISTER of a key known to be
//!   absent acknowledged while the identity held `--max-per-peer` others
//!   known to be live when it was sent and still when it was answered.
//!
//! Another point serves a registration once it has read it from Redis's log,
//! and an UNREGISTER waits for Redis, so a walk may be briefly wrong. A key
//! it got wrong is watched, the point walked again every [`RECHECK_EVERY`]:
//! if it comes right within [`GRACE`] of its acknowledgment (or of its
//! UNREGISTER) it is counted late, with how late; if a request of it is sent
//! first, or its TTL runs low, it is undecided; only one still wrong after
//! [`GRACE`] is lost or resurrected.
//!
//! A request without an answer, a refused REGISTER of a key that was not
//! live, or an UNREGISTER that could not be written leaves its key unknown,
//! and unchecked, until its next request.

mod driver;
mod model;
mod walk;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rendezvous_tests::redis::RedisServer;

use crate::Error;
use crate::conn::Conn;
use crate::servers::{Allowance, Kind, Server};
use driver::Driver;
use model::Model;
use walk::{Whose, walk};

/// Connections per point, each its own identity.
pub(crate) const CONNECTIONS_PER_POINT: usize = 4;
/// Live registrations of the stable population, across all identities.
pub(crate) const STABLE: usize = 3_000;
/// Churn namespaces per identity, used in turn: one stays unregistered for
/// about twenty seconds before it comes round again, long enough to be
/// checked and watched for [`GRACE`].
pub(crate) const CHURN_POOL: usize = 512;
/// Room for churn above each identity's stable registrations in
/// `--max-per-peer`: about what churn holds at 1000 requests/s, so that the
/// limit is reached now and then, and refuses.
pub(crate) const CHURN_HEADROOM: usize = 12;
/// Time an UNREGISTER is given before a walk is held to it, and the least
/// TTL a key must have left to be held to being served.
pub(crate) const MARGIN: Duration = Duration::from_secs(2);
/// How long a key a walk got wrong may take to come right (replication
/// from another point, an UNREGISTER waiting for Redis) before it counts
/// as lost or resurrected; until then it is late.
pub(crate) const GRACE: Duration = Duration::from_secs(5);
/// How often a point is walked again while it has keys to come right.
const RECHECK_EVERY: Duration = Duration::from_millis(500);
/// How often a sample (and its walks) is taken.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// A request unanswered this long is counted lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most requests in flight on one connection; a tick beyond is skipped.
const MAX_IN_FLIGHT: usize = 128;
/// A walk's page size: the most a point serves.
const WALK_PAGE: u64 = 1000;
/// A walk that has not reached an empty page by then fails.
const WALK_LIMIT: Duration = Duration::from_secs(30);
/// Evidence lines kept.
const EVIDENCE: usize = 8;

/// What the soak runs with (the flags).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    /// How long the load lasts.
    pub(crate) seconds: u64,
    /// The TTL every REGISTER asks for, in seconds.
    pub(crate) ttl: u64,
    /// Points on the one Redis.
    pub(crate) points: usize,
    /// Requests per second, all connections together.
    pub(crate) rate: u64,
}

/// What a soak came to.
pub(crate) struct SoakRun {
    pub(crate) config: Config,
    pub(crate) max_per_peer: usize,
    pub(crate) samples: Vec<Sample>,
    pub(crate) counts: Counts,
    pub(crate) checks: Checks,
    /// Points that stopped during the soak.
    pub(crate) exits: Vec<Exit>,
}

/// A point that stopped.
pub(crate) struct Exit {
    pub(crate) point: usize,
    /// Seconds into the soak it was seen gone.
    pub(crate) at_s: f64,
    /// How it exited.
    pub(crate) status: String,
    /// Its last lines of output.
    pub(crate) tail: Vec<String>,
}

impl SoakRun {
    /// Whether the soak shows a fault, or could not check.
    pub(crate) fn failed(&self) -> bool {
        self.checks.failed() || !self.exits.is_empty()
    }
}

/// One sample, every [`SAMPLE_EVERY`].
pub(crate) struct Sample {
    /// Seconds since the load began.
    pub(crate) at_s: f64,
    /// Requests sent per second since the previous sample.
    pub(crate) per_s: f64,
    /// Redis's `used_memory`, MiB.
    pub(crate) redis_mib: f64,
    /// `XLEN rendezvous:log`.
    pub(crate) xlen: u64,
    /// `HLEN rendezvous:reg`.
    pub(crate) hlen: u64,
    /// Keys the model holds live.
    pub(crate) live: usize,
    /// Each point's resident set, MiB (`None`: it has exited).
    pub(crate) rss_mib: Vec<Option<f64>>,
    /// Registrations each point's walk served (`None`: the walk failed).
    pub(crate) walked: Vec<Option<usize>>,
    /// Found by this sample's walks.
    pub(crate) lost: usize,
    pub(crate) resurrected: usize,
    pub(crate) over: usize,
}

/// Requests and their outcomes.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) stable_registers: u64,
    pub(crate) churn_registers: u64,
    pub(crate) unregisters: u64,
    pub(crate) discovers: u64,
    /// REGISTERs and DISCOVERs answered OK.
    pub(crate) acknowledged: u64,
    /// Answered with an error status, by status.
    pub(crate) refused: BTreeMap<i32, u64>,
    /// Without an answer (REGISTER, DISCOVER), or not written (UNREGISTER).
    pub(crate) lost: u64,
    /// Ticks skipped with [`MAX_IN_FLIGHT`] requests in flight.
    pub(crate) skipped: u64,
    /// The first refusal or loss, to say what it was.
    pub(crate) first_problem: Option<String>,
}

impl Counts {
    pub(crate) fn sent(&self) -> u64 {
        self.stable_registers + self.churn_registers + self.unregisters + self.discovers
    }

    pub(crate) fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// What the walks found.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    pub(crate) walks: usize,
    pub(crate) walk_failures: usize,
    pub(crate) lost: usize,
    pub(crate) resurrected: usize,
    /// Identities over the limit in a walk's first page.
    pub(crate) over_page: usize,
    /// REGISTERs acknowledged beyond the limit, by the model.
    pub(crate) over_ack: usize,
    /// Keys a walk got wrong that came right within [`GRACE`], and the
    /// longest it took from their acknowledgment or UNREGISTER.
    pub(crate) late_live: usize,
    pub(crate) most_late_live: Duration,
    pub(crate) late_gone: usize,
    pub(crate) most_late_gone: Duration,
    /// Keys a walk got wrong that were sent a request, or neared the end of
    /// their TTL, before they came right or [`GRACE`] ran out.
    pub(crate) undecided: usize,
    /// Keys the walks were held to: live ones, unregistered ones (a key
    /// once per walk).
    pub(crate) held_live: usize,
    pub(crate) held_gone: usize,
    /// The most keys an identity was known to hold with a new one just
    /// acknowledged: how close the limit check came to the limit.
    pub(crate) most_held: usize,
    /// The first [`EVIDENCE`] findings of each kind, each in one line.
    pub(crate) evidence: Vec<String>,
    /// Lines kept by kind.
    pub(crate) noted: BTreeMap<&'static str, usize>,
}

impl Checks {
    pub(crate) fn over(&self) -> usize {
        self.over_page + self.over_ack
    }

    /// Whether the soak shows a fault, or could not check.
    pub(crate) fn failed(&self) -> bool {
        self.lost + self.resurrected + self.over() + self.walk_failures > 0
    }
}

/// Runs the soak: one Redis, its points, the load, a sample every 10 s.
pub(crate) async fn soak(config: Config) -> Result<SoakRun, Error> {
    if config.ttl < 5 {
        return Err("--soak-ttl must be at least 5 s: a key is checked 2 s inside its TTL".into());
    }
    let identities = config.points.max(1) * CONNECTIONS_PER_POINT;
    let stable = STABLE.div_ceil(identities);
    let max_per_peer = stable + CHURN_HEADROOM;
    let ttl = Duration::from_secs(config.ttl);
    let needed = (stable * identities) as f64 / (0.7 * ttl.as_secs_f64());
    if (config.rate as f64) < 1.2 * needed {
        eprintln!(
            "load: --rate {} leaves little beside refreshing {} registrations of {} s (about {needed:.0}/s): expect them to lapse",
            config.rate,
            stable * identities,
            config.ttl
        );
    }
    let allow = Allowance { max_per_peer, min_ttl_s: Some(config.ttl) };
    let mut rig = Rig::start(config.points.max(1), identities, stable, allow).await?;
    println!(
        "soak: {} points on one redis, {identities} identities ({CONNECTIONS_PER_POINT} connections per point), {} stable registrations ({stable} each, TTL {} s, refreshed at 60-80 %), churn over {CHURN_POOL} namespaces each, --max-per-peer {max_per_peer} ({stable} + {CHURN_HEADROOM}), about {} requests/s for {} s",
        rig.points.len(),
        stable * identities,
        config.ttl,
        config.rate,
        config.seconds
    );

    let started = Instant::now();
    let end = started + Duration::from_secs(config.seconds);
    let model =
        Arc::new(Mutex::new(Model::new(identities, config.points.max(1), stable, max_per_peer)));
    let interval = Duration::from_secs_f64(identities as f64 / config.rate.max(1) as f64);
    for (i, conn) in rig.conns.iter().enumerate() {
        let record = conn.record(Kind::OursRedis)?;
        let plan = driver::Plan { ttl, stable, started, interval, end };
        Driver::spawn(i, conn, record, model.clone(), plan);
    }

    let mut samples = Vec::new();
    let mut last = Last { at: started, sent: 0, found: (0, 0, 0) };
    let mut next = started + SAMPLE_EVERY;
    loop {
        let at = next.min(end);
        tokio::time::sleep_until(at.into()).await;
        samples.push(rig.sample(&model, started, &mut last).await);
        if at >= end {
            break;
        }
        next += SAMPLE_EVERY;
    }
    let mut m = lock(&model);
    let (counts, checks) = (std::mem::take(&mut m.counts), std::mem::take(&mut m.checks));
    Ok(SoakRun { config, max_per_peer, samples, counts, checks, exits: rig.exits })
}

/// What the soak runs on: one Redis, its points, a connection per identity
/// and a watcher at each point.
struct Rig {
    redis: RedisServer,
    points: Vec<Server>,
    conns: Vec<Conn>,
    watchers: Vec<Conn>,
    whose: Whose,
    exits: Vec<Exit>,
}

/// The previous sample's figures, which the next one's are counted from.
struct Last {
    at: Instant,
    sent: u64,
    /// Lost, resurrected, over a limit.
    found: (usize, usize, usize),
}

impl Rig {
    async fn start(
        points: usize,
        identities: usize,
        stable: usize,
        allow: Allowance,
    ) -> Result<Rig, Error> {
        let redis = RedisServer::start("soak");
        let mut servers = Vec::with_capacity(points);
        for _ in 0..points {
            servers.push(Server::start_allowing(Kind::OursRedis, Some(redis.url()), allow)?);
        }
        let mut conns = Vec::with_capacity(identities);
        for i in 0..identities {
            conns.push(Conn::open(&servers[i % points]).await?);
        }
        let mut watchers = Vec::with_capacity(points);
        for point in &servers {
            watchers.push(Conn::open(point).await?);
        }
        let mut whose = Whose { stable, ..Whose::default() };
        for (i, conn) in conns.iter().enumerate() {
            whose.records.insert(conn.record(Kind::OursRedis)?, i);
            whose.peers.insert(conn.keypair.public().to_peer_id(), i);
        }
        Ok(Rig { redis, points: servers, conns, watchers, whose, exits: Vec::new() })
    }

    /// Walks every point, reads Redis's figures and each point's RSS.
    async fn sample(&mut self, model: &Mutex<Model>, started: Instant, last: &mut Last) -> Sample {
        let walked = futures::future::join_all(
            self.watchers.iter().enumerate().map(|(p, w)| check_point(p, w, model, &self.whose)),
        )
        .await;
        let now = Instant::now();
        let (redis_mib, xlen, hlen) = tokio::task::block_in_place(|| redis_figures(&self.redis));
        let at_s = now.duration_since(started).as_secs_f64();
        let mut rss_mib = Vec::with_capacity(self.points.len());
        for (p, point) in self.points.iter_mut().enumerate() {
            if !self.exits.iter().any(|e| e.point == p)
                && let Some((status, tail)) = point.exited()
            {
                self.exits.push(Exit { point: p, at_s, status, tail });
            }
            let gone = self.exits.iter().any(|e| e.point == p);
            rss_mib.push((!gone).then(|| point.rss_mib()));
        }
        let m = lock(model);
        let (sent, found) = (m.counts.sent(), m.found());
        let sample = Sample {
            at_s,
            per_s: (sent - last.sent) as f64 / now.duration_since(last.at).as_secs_f64(),
            redis_mib,
            xlen,
            hlen,
            live: m.live(now),
            rss_mib,
            walked,
            lost: found.0 - last.found.0,
            resurrected: found.1 - last.found.1,
            over: found.2 - last.found.2,
        };
        *last = Last { at: now, sent, found };
        sample
    }
}

fn lock(model: &Mutex<Model>) -> MutexGuard<'_, Model> {
    model.lock().expect("nothing panics while holding the model")
}

/// Redis's `used_memory` (MiB), `XLEN rendezvous:log` and `HLEN rendezvous:reg`.
fn redis_figures(redis: &RedisServer) -> (f64, u64, u64) {
    let info = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "info", "memory"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let integer = |args: &[&str]| redis.command(args).trim_start_matches(':').parse().unwrap_or(0);
    (
        used as f64 / (1024.0 * 1024.0),
        integer(&["XLEN", "rendezvous:log"]),
        integer(&["HLEN", "rendezvous:reg"]),
    )
}

/// Walks point `p` from its watcher and judges the walk against the model,
/// walking again while it has keys to come right; returns how many
/// registrations the first walk served.
async fn check_point(
    p: usize,
    watcher: &Conn,
    model: &Mutex<Model>,
    whose: &Whose,
) -> Option<usize> {
    let expected = lock(model).expect(Instant::now());
    let first = walk(watcher, whose).await;
    let ended = Instant::now();
    let (mut suspects, entries) = match first {
        Ok(w) => (lock(model).judge(p, &expected, &w, ended), w.entries),
        Err(e) => return failed(p, model, e),
    };
    while !suspects.is_empty() {
        tokio::time::sleep(RECHECK_EVERY).await;
        let began = Instant::now();
        match walk(watcher, whose).await {
            Ok(w) => lock(model).settle(p, &mut suspects, &w, began, Instant::now()),
            Err(e) => return failed(p, model, e),
        }
    }
    Some(entries)
}

fn failed(p: usize, model: &Mutex<Model>, error: String) -> Option<usize> {
    let mut m = lock(model);
    m.checks.walk_failures += 1;
    m.note("walk", format!("point {p}: the walk failed: {error}"));
    None
}
