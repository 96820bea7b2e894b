//! A reference model of the rendezvous server, and a driver that runs random
//! operations against both the real [`Server`] and the model and compares them
//! after every step.
//!
//! The operations come from raw bytes through [`arbitrary`], so the proptest
//! (`tests/server_model.rs`) and the fuzz target (`fuzz/fuzz_targets/server_ops.rs`)
//! share one generator, and a fuzz finding replays as an ordinary test. The
//! server's discovery seed (and, one run in five, registration order) comes
//! from the operations too, so a run is deterministic.
//!
//! A DISCOVER without a cookie may start anywhere: the model accepts a first
//! page if a walk from some start it allows gives exactly that page and
//! cookie, and from there on predicts every page. Beside that, it keeps a
//! log of each walk begun without a cookie and followed with its cookies:
//! no registration twice, and once a page comes back short (the walk's end),
//! every registration live at the walk's start and still live was served,
//! and from then on only registrations newer than that end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use rendezvous_core::cookie::{Cookie, Position};
use rendezvous_core::proto::{self, ResponseStatus, read_status};
use rendezvous_core::testing::{self, DIALECTS, TestPeer, World};
use rendezvous_core::{
    Dialect, DiscoverStart, Flavour, Limits, Namespace, Reader, Server, ServerConfig, ServerEvent,
    Timestamp,
};

/// Peers taking part; small so that they collide on namespaces and limits.
pub const PEERS: usize = 6;
/// Namespaces used: three valid, the empty one and one over the limit.
const NAMESPACES: [&str; 5] = ["a", "b", "c", "", "namespace-too-long"];

/// Every kind of reader.
const READERS: [Reader; 4] = [
    Reader::Signed(Flavour::RustLibp2p),
    Reader::Signed(Flavour::Standard),
    Reader::Legacy,
    Reader::Any,
];

/// Asked TTLs are taken modulo this: most are in the range [`limits`]
/// allows (120 to 1000 s), some below or above it, and 0 is the default.
pub const TTLS: u16 = 1100;
/// Page sizes are taken modulo this: 0 is the default, 1 to 5 are served as
/// asked, 6 and 7 clamped to the largest page, so that walks span pages.
pub const LIMITS: u8 = 8;
/// Time jumps are taken modulo this: most expire some registrations, and
/// one in six jumps past the longest TTL.
pub const SECONDS: u16 = 1200;

/// The tiny limits the model runs under, so every limit is hit often.
pub fn limits() -> Limits {
    Limits {
        max_namespace_len: 8,
        min_ttl: Duration::from_secs(120),
        max_ttl: Duration::from_secs(1000),
        default_ttl: Duration::from_secs(300),
        max_registrations_per_peer: 3,
        max_registrations_per_namespace: 4,
        max_registrations: 8,
        default_discover_limit: 3,
        max_discover_limit: 5,
        ..Limits::default()
    }
}

/// One step.
#[derive(Clone, Debug, Arbitrary)]
pub enum Op {
    /// `peer` registers in `ns` with its record in `dialect`.
    Register {
        /// Index into the peers.
        peer: u8,
        /// Index into the namespaces.
        ns: u8,
        /// Index into the dialects.
        dialect: u8,
        /// Asked TTL in seconds, modulo [`TTLS`] (0: default).
        ttl: u16,
    },
    /// `peer` registers in `ns` with one REGISTER carrying both envelope
    /// flavours (this project's extension).
    RegisterBoth {
        /// Index into the peers.
        peer: u8,
        /// Index into the namespaces.
        ns: u8,
        /// Asked TTL in seconds, modulo [`TTLS`] (0: default).
        ttl: u16,
    },
    /// `peer` registers `owner`'s record: must be refused.
    RegisterForeign {
        /// Who sends.
        peer: u8,
        /// Whose record it is.
        owner: u8,
    },
    /// `peer` unregisters from `ns`.
    Unregister {
        /// Index into the peers.
        peer: u8,
        /// Index into the namespaces.
        ns: u8,
    },
    /// `peer` asks for one page.
    Discover {
        /// Index into the peers.
        peer: u8,
        /// Index into the namespaces; `None` for all.
        ns: Option<u8>,
        /// Page size asked, modulo [`LIMITS`] (0: default).
        limit: u8,
        /// Which cookie to send.
        cookie: CookieChoice,
    },
    /// The peer of the last [`Op::Discover`] asks for its next page, with
    /// the cookie and the page size it had, so that walks span pages
    /// while other steps change the registry.
    NextPage,
    /// `peer` pages through everything from the start.
    PageAll {
        /// Index into the peers.
        peer: u8,
        /// Index into the namespaces; `None` for all.
        ns: Option<u8>,
        /// Page size asked, modulo [`LIMITS`] (0: default).
        limit: u8,
    },
    /// Time passes.
    Advance {
        /// Seconds, modulo [`SECONDS`].
        secs: u16,
    },
    /// The adapter's timer fires at the current time.
    Timeout,
    /// The adapter tells the server what `peer` reads.
    SetReader {
        /// Index into the peers.
        peer: u8,
        /// Index into [`READERS`].
        reader: u8,
    },
    /// `peer`'s last connection closed.
    Disconnect {
        /// Index into the peers.
        peer: u8,
    },
}

/// The cookie a [`Op::Discover`] sends.
#[derive(Clone, Copy, Debug, Arbitrary)]
pub enum CookieChoice {
    /// None: start from the beginning.
    None,
    /// The last cookie this peer got for this query.
    Last,
    /// A position the server never issued.
    Forged,
    /// A walk's start the server never issued.
    ForgedWalk,
    /// Bytes that are no cookie.
    Garbage,
    /// The last cookie this peer got for a different query.
    Foreign,
}

/// Decodes operations from raw bytes until they run out.
pub fn ops_from_bytes(bytes: &[u8]) -> Vec<Op> {
    let mut u = Unstructured::new(bytes);
    std::iter::from_fn(|| if u.is_empty() { None } else { Op::arbitrary(&mut u).ok() }).collect()
}

fn peers() -> &'static [TestPeer] {
    static PEERS_: OnceLock<Vec<TestPeer>> = OnceLock::new();
    PEERS_.get_or_init(|| (0..PEERS as u32).map(TestPeer::new).collect())
}

#[derive(Clone, Debug)]
struct Reg {
    /// Envelope flavours held (a peer's records all announce the same
    /// address, so every flavour it registers joins the registration).
    flavours: BTreeSet<Flavour>,
    expires: Timestamp,
    seq: u64,
}

/// A registration as a walk sees it: owner, namespace, state.
type Seen = (usize, String, Reg);

/// A registration at one position: owner, namespace, position.
type Placed = (usize, String, u64);

/// What a walk begun without a cookie has done so far.
#[derive(Clone, Debug)]
struct WalkLog {
    /// Who walks; the log ends if what it reads changes.
    reader: Reader,
    /// What it could read when it began.
    live_at_start: BTreeSet<Placed>,
    served: BTreeSet<Placed>,
    /// The last position issued when a page came back short.
    ended: Option<u64>,
}

/// Where a page starts from.
#[derive(Clone, Copy, Debug)]
enum PageFrom {
    /// No cookie: wherever the server's start lands.
    Fresh,
    /// A cookie, resolved.
    Cookie(Position),
}

/// What the server should hold, in the plainest form.
struct Model {
    now: Timestamp,
    regs: BTreeMap<(usize, String), Reg>,
    last_seq: u64,
    /// What each peer reads: what the adapter said, what its REGISTERs showed.
    readers: BTreeMap<usize, (Option<Reader>, Option<Reader>)>,
    /// The last cookie of each peer's query, and its walk's log if it
    /// continues a walk begun without a cookie.
    cookies: BTreeMap<(usize, Option<String>), (Bytes, Option<WalkLog>)>,
    start: DiscoverStart,
}

impl Model {
    fn expire(&mut self, events: &mut Vec<ServerEvent>) {
        let now = self.now;
        let mut due: Vec<_> = self
            .regs
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(k, r)| (r.expires, r.seq, k.clone()))
            .collect();
        due.sort();
        for (_, _, key) in due {
            self.regs.remove(&key);
            events.push(ServerEvent::Expired { peer: peers()[key.0].id, namespace: ns(&key.1) });
        }
    }

    /// A REGISTER overrides the adapter, except that nothing narrows `Any`.
    fn reader(&self, peer: usize) -> Reader {
        let known = match self.readers.get(&peer) {
            Some((Some(Reader::Any), _)) => Some(Reader::Any),
            Some((told, registered)) => registered.or(*told),
            None => None,
        };
        known.unwrap_or(Reader::Signed(Flavour::RustLibp2p))
    }

    /// Live registrations `reader` can read, after `position`, in order.
    fn visible(
        &self,
        reader: Reader,
        ns: Option<&str>,
        position: u64,
    ) -> Vec<(usize, String, Reg)> {
        let mut out: Vec<_> = self
            .regs
            .iter()
            .filter(|((_, n), r)| {
                ns.is_none_or(|ns| ns == n)
                    && r.seq > position
                    && match reader {
                        Reader::Legacy | Reader::Any => true,
                        Reader::Signed(f) => r.flavours.contains(&f),
                    }
            })
            .map(|((p, n), r)| (*p, n.clone(), r.clone()))
            .collect();
        out.sort_by_key(|(_, _, r)| r.seq);
        out
    }

    /// Everything a walk from `position` serves now, in order: in a walk's
    /// first phase, what lies below its cursor (newest first, no deeper
    /// than a cookie reaches), then what lies after its start; otherwise
    /// what lies after the position, oldest first.
    fn walk(&self, reader: Reader, ns: Option<&str>, position: Position) -> Vec<Seen> {
        let all = self.visible(reader, ns, 0);
        match position {
            Position::After(after) => all.into_iter().filter(|(_, _, r)| r.seq > after).collect(),
            Position::Below { start, below } => {
                let deepest = (start + 1).saturating_sub(Cookie::MAX_DEPTH);
                let mut walk: Vec<_> = all
                    .iter()
                    .filter(|(_, _, r)| (deepest..below).contains(&r.seq))
                    .cloned()
                    .collect();
                walk.reverse();
                walk.extend(all.into_iter().filter(|(_, _, r)| r.seq > start));
                walk
            }
        }
    }

    /// The page of `want` from `position`, and where the next one starts.
    fn page(
        &self,
        reader: Reader,
        ns: Option<&str>,
        position: Position,
        want: usize,
    ) -> (Vec<Seen>, Position) {
        let walk = self.walk(reader, ns, position);
        let (page, rest) = walk.split_at(want.min(walk.len()));
        let start = match position {
            Position::After(after) => after,
            Position::Below { start, .. } => start,
        };
        let descending = rest.first().is_some_and(|(_, _, r)| r.seq <= start);
        let next = match page.last().map(|(_, _, r)| r.seq) {
            Some(seq) if seq > start => Position::After(seq),
            Some(seq) if descending => Position::Below { start, below: seq },
            None if descending => position,
            _ => Position::After(start),
        };
        (page.to_vec(), next)
    }

    /// Where a DISCOVER without a cookie may start: anywhere from just
    /// before the lowest position the reader reads to the highest (no
    /// further above the lowest than a cookie reaches), or in registration
    /// order, the beginning.
    fn first_positions(&self, reader: Reader, ns: Option<&str>) -> Vec<Position> {
        let all = self.visible(reader, ns, 0);
        match (self.start, all.first(), all.last()) {
            (DiscoverStart::Random { .. }, Some((_, _, lo)), Some((_, _, hi))) => {
                let top = hi.seq.min(lo.seq + Cookie::MAX_DEPTH - 1);
                (lo.seq - 1..=top)
                    .map(|start| Position::Below { start, below: start + 1 })
                    .collect()
            }
            _ => vec![Position::After(0)],
        }
    }
}

fn ns(name: &str) -> Namespace {
    Namespace::new(name, 255).expect("valid in the model")
}

/// A disagreement between the server and the model.
#[derive(Debug)]
pub struct Mismatch {
    /// Index of the step.
    pub step: usize,
    /// The step.
    pub op: Op,
    /// What differed.
    pub what: String,
}

macro_rules! check {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(format!($($msg)*));
        }
    };
}

/// Runs `ops` against a fresh server and the model.
pub fn run(ops: &[Op]) -> Result<(), Mismatch> {
    let seed = seed_of(ops);
    let start = match seed % 5 {
        0 => DiscoverStart::Oldest,
        _ => DiscoverStart::Random { seed },
    };
    let config =
        ServerConfig { limits: limits(), discover_start: start, ..ServerConfig::default() };
    let mut world = World::new();
    let server = world.add_server(100, config);
    let model = Model {
        now: Timestamp::ZERO,
        regs: BTreeMap::new(),
        last_seq: 0,
        readers: BTreeMap::new(),
        cookies: BTreeMap::new(),
        start,
    };
    let mut sim = Sim { world, server, model, last_discover: None };
    for (step, op) in ops.iter().enumerate() {
        sim.step(op).map_err(|what| Mismatch { step, op: op.clone(), what })?;
    }
    Ok(())
}

/// A seed that is a function of the operations (FNV-1a of their text).
fn seed_of(ops: &[Op]) -> u64 {
    format!("{ops:?}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

struct Sim {
    world: World,
    server: libp2p_identity::PeerId,
    model: Model,
    /// The peer, namespace and page size of the last [`Op::Discover`].
    last_discover: Option<(usize, Option<&'static str>, u8)>,
}

impl Sim {
    fn core(&mut self) -> &mut Server {
        self.world.server(self.server)
    }

    fn request(&mut self, peer: usize, message: proto::Message) -> Option<proto::Message> {
        self.world.now = self.model.now;
        self.world.request(self.server, peers()[peer].id, message)
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let mut expected_events = Vec::new();
        let touches_server = match op {
            Op::Advance { .. } => false,
            Op::NextPage => self.last_discover.is_some(),
            _ => true,
        };
        if touches_server {
            self.model.expire(&mut expected_events);
        }
        match *op {
            Op::Register { peer, ns: n, dialect, ttl } => {
                let ttl = ttl % TTLS;
                let peer = peer as usize % PEERS;
                let name = NAMESPACES[n as usize % NAMESPACES.len()];
                let dialect = DIALECTS[dialect as usize % DIALECTS.len()];
                let record = peers()[peer].record(dialect);
                let response =
                    self.request(peer, testing::register(name, record, Some(ttl.into())));
                let expected =
                    self.model_register(peer, name, &[dialect], ttl.into(), &mut expected_events);
                check_register(response, expected)?;
            }
            Op::RegisterBoth { peer, ns: n, ttl } => {
                let ttl = ttl % TTLS;
                let peer = peer as usize % PEERS;
                let name = NAMESPACES[n as usize % NAMESPACES.len()];
                let dialects =
                    [Dialect::Signed(Flavour::Standard), Dialect::Signed(Flavour::RustLibp2p)];
                let mut message =
                    testing::register(name, peers()[peer].record(dialects[0]), Some(ttl.into()));
                if let Some(register) = message.register.as_mut() {
                    register.other_records = vec![peers()[peer].record(dialects[1])];
                }
                let response = self.request(peer, message);
                let expected =
                    self.model_register(peer, name, &dialects, ttl.into(), &mut expected_events);
                check_register(response, expected)?;
            }
            Op::RegisterForeign { peer, owner } => {
                let (peer, owner) = (peer as usize % PEERS, owner as usize % PEERS);
                let record = peers()[owner].record(Dialect::Signed(Flavour::RustLibp2p));
                let response = self.request(peer, testing::register("a", record, None));
                let expected = if peer == owner {
                    self.model_register(
                        peer,
                        "a",
                        &[Dialect::Signed(Flavour::RustLibp2p)],
                        0,
                        &mut expected_events,
                    )
                } else {
                    Err(ResponseStatus::ENotAuthorized)
                };
                check_register(response, expected)?;
            }
            Op::Unregister { peer, ns: n } => {
                let peer = peer as usize % PEERS;
                let name = NAMESPACES[n as usize % NAMESPACES.len()];
                check!(
                    self.request(peer, testing::unregister(name)).is_none(),
                    "UNREGISTER answered"
                );
                if self.model.regs.remove(&(peer, name.to_owned())).is_some() {
                    expected_events.push(ServerEvent::Unregistered {
                        peer: peers()[peer].id,
                        namespace: ns(name),
                    });
                }
            }
            Op::Discover { peer, ns: n, limit, cookie } => {
                let peer = peer as usize % PEERS;
                let name = n.map(|n| NAMESPACES[n as usize % NAMESPACES.len()]);
                self.last_discover = Some((peer, name, limit % LIMITS));
                self.discover(peer, name, limit % LIMITS, cookie)?;
            }
            Op::NextPage => {
                if let Some((peer, name, limit)) = self.last_discover {
                    self.discover(peer, name, limit, CookieChoice::Last)?;
                }
            }
            Op::PageAll { peer, ns: n, limit } => {
                let peer = peer as usize % PEERS;
                let name = n.map(|n| NAMESPACES[n as usize % NAMESPACES.len()]);
                self.page_all(peer, name, limit % LIMITS)?;
            }
            Op::Advance { secs } => {
                self.model.now = self.model.now + Duration::from_secs((secs % SECONDS).into());
            }
            Op::Timeout => {
                let now = self.model.now;
                self.core().handle_timeout(now);
                let next = self.model.regs.values().map(|r| r.expires).min();
                check!(
                    self.core().poll_timeout() == next,
                    "timeout {:?} != {next:?}",
                    self.core().poll_timeout()
                );
                if let Some(next) = next {
                    check!(next > self.model.now, "the timeout must move past now");
                }
            }
            Op::SetReader { peer, reader } => {
                let peer = peer as usize % PEERS;
                let reader = READERS[reader as usize % READERS.len()];
                let now = self.model.now;
                self.core().set_reader_dialect(now, peers()[peer].id, reader);
                self.model.readers.entry(peer).or_default().0 = Some(reader);
            }
            Op::Disconnect { peer } => {
                let peer = peer as usize % PEERS;
                let now = self.model.now;
                self.core().handle_disconnected(now, &peers()[peer].id);
                self.model.readers.remove(&peer);
            }
        }
        let mut drained: Vec<_> =
            std::mem::take(&mut self.world.server_events).into_iter().map(|(_, e)| e).collect();
        drained.extend(std::iter::from_fn(|| self.core().poll_event()));
        let events: Vec<_> = drained
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    ServerEvent::Registered { .. }
                        | ServerEvent::Refreshed { .. }
                        | ServerEvent::Unregistered { .. }
                        | ServerEvent::Expired { .. }
                )
            })
            .collect();
        check!(events == expected_events, "events {events:?} != {expected_events:?}");
        if touches_server {
            let stats = self.core().stats();
            check!(
                stats.registrations == self.model.regs.len(),
                "{stats:?} vs {}",
                self.model.regs.len()
            );
            let live_ns: std::collections::BTreeSet<_> =
                self.model.regs.keys().map(|(_, n)| n).collect();
            check!(stats.namespaces == live_ns.len(), "namespaces {stats:?}");
        }
        Ok(())
    }

    /// The model's verdict on a REGISTER of `dialects` (the record, then the
    /// extension's others): the granted TTL or the status.
    fn model_register(
        &mut self,
        peer: usize,
        name: &str,
        dialects: &[Dialect],
        ttl: u64,
        events: &mut Vec<ServerEvent>,
    ) -> Result<u64, ResponseStatus> {
        let limits = limits();
        if name.is_empty() || name.len() > limits.max_namespace_len {
            return Err(ResponseStatus::EInvalidNamespace);
        }
        let ttl = if ttl == 0 { limits.default_ttl() } else { Duration::from_secs(ttl) };
        if !(limits.min_ttl..=limits.max_ttl).contains(&ttl) {
            return Err(ResponseStatus::EInvalidTtl);
        }
        let key = (peer, name.to_owned());
        let regs = &self.model.regs;
        if !regs.contains_key(&key) {
            if regs.keys().filter(|(p, _)| *p == peer).count() >= limits.max_registrations_per_peer
            {
                return Err(ResponseStatus::ENotAuthorized);
            }
            if regs.keys().filter(|(_, n)| n == name).count()
                >= limits.max_registrations_per_namespace
            {
                return Err(ResponseStatus::EUnavailable);
            }
            if regs.len() >= limits.max_registrations {
                return Err(ResponseStatus::EUnavailable);
            }
        }
        self.model.last_seq += 1;
        let expires = self.model.now + ttl;
        let mut flavours = regs.get(&key).map(|r| r.flavours.clone()).unwrap_or_default();
        flavours.extend(dialects.iter().filter_map(|d| match d {
            Dialect::Signed(f) => Some(*f),
            Dialect::Legacy => None,
        }));
        let old = self.model.regs.insert(key, Reg { flavours, expires, seq: self.model.last_seq });
        let dialect = dialects[0];
        self.model.readers.entry(peer).or_default().1 = Some(dialect.into());
        let (peer, namespace) = (peers()[peer].id, ns(name));
        events.push(match old {
            None => ServerEvent::Registered { peer, namespace, ttl, dialect },
            Some(_) => ServerEvent::Refreshed { peer, namespace, ttl, dialect },
        });
        Ok(ttl.as_secs())
    }

    fn discover(
        &mut self,
        peer: usize,
        name: Option<&str>,
        limit: u8,
        choice: CookieChoice,
    ) -> Result<(), String> {
        let query = name.filter(|n| !n.is_empty()).map(str::to_owned);
        let key = (peer, query.clone());
        let last_seq = self.model.last_seq;
        let forged_ns = || query.as_deref().and_then(|n| Namespace::new(n, 255).ok());
        // The cookie, where the page starts from (`None`: refused), and the
        // walk's log to follow.
        let (cookie, from, log) = match choice {
            CookieChoice::None => (None, Some(PageFrom::Fresh), None),
            CookieChoice::Last => match self.model.cookies.get(&key) {
                Some((c, log)) => (Some(c.clone()), Some(resolved(c, last_seq)), log.clone()),
                None => (None, Some(PageFrom::Fresh), None),
            },
            CookieChoice::Forged => {
                let forged = Cookie::at(Position::After(last_seq + 1), forged_ns());
                (Some(forged.to_bytes()), None, None)
            }
            CookieChoice::ForgedWalk => {
                let start = last_seq + 1 + u64::from(limit);
                let forged = Cookie::at(Position::Below { start, below: start }, forged_ns());
                (Some(forged.to_bytes()), None, None)
            }
            CookieChoice::Garbage => (Some(Bytes::from_static(b"crumbs")), None, None),
            CookieChoice::Foreign => {
                let foreign =
                    self.model.cookies.iter().find(|((p, q), _)| *p == peer && *q != query);
                match foreign {
                    // A position in all namespaces continues any one of them.
                    Some(((_, None), (c, _))) => {
                        (Some(c.clone()), Some(resolved(c, last_seq)), None)
                    }
                    Some((_, (c, _))) => (Some(c.clone()), None, None),
                    None => (None, Some(PageFrom::Fresh), None),
                }
            }
        };
        let refusal = match from {
            _ if query.as_ref().is_some_and(|n| n.len() > limits().max_namespace_len) => {
                Some(ResponseStatus::EInvalidNamespace)
            }
            None => Some(ResponseStatus::EInvalidCookie),
            Some(_) => None,
        };
        let (Some(from), None) = (from, refusal) else {
            let response = self.request(peer, testing::discover(name, Some(limit.into()), cookie));
            let body = response.and_then(|m| m.discover_response).ok_or("DISCOVER not answered")?;
            let status = read_status(body.status);
            check!(
                refusal.is_some_and(|want| status == Ok(want)),
                "expected {refusal:?}, got {status:?}"
            );
            return Ok(());
        };
        let log = match from {
            PageFrom::Fresh => Some(self.begin_walk(peer, query.as_deref())),
            PageFrom::Cookie(_) => log,
        };
        let (_, cookie, log) = self.page(peer, name, limit, from, cookie, log)?;
        self.model.cookies.insert(key, (cookie, log));
        Ok(())
    }

    /// A log for a walk `peer` begins now.
    fn begin_walk(&self, peer: usize, query: Option<&str>) -> WalkLog {
        let reader = self.model.reader(peer);
        let live_at_start = self
            .model
            .visible(reader, query, 0)
            .into_iter()
            .map(|(p, n, r)| (p, n, r.seq))
            .collect();
        WalkLog { reader, live_at_start, served: BTreeSet::new(), ended: None }
    }

    /// Asks for one page from `from` and checks it: against the model's
    /// page (for a first page, some start's), and against the walk's log.
    /// Returns what was served, the cookie, and the log.
    fn page(
        &mut self,
        peer: usize,
        name: Option<&str>,
        limit: u8,
        from: PageFrom,
        cookie: Option<Bytes>,
        log: Option<WalkLog>,
    ) -> Result<(Vec<Seen>, Bytes, Option<WalkLog>), String> {
        let query = name.filter(|n| !n.is_empty());
        let response = self.request(peer, testing::discover(name, Some(limit.into()), cookie));
        let body = response.and_then(|m| m.discover_response).ok_or("DISCOVER not answered")?;
        let status = read_status(body.status);
        check!(status == Ok(ResponseStatus::Ok), "discover: {status:?} {:?}", body.status_text);
        let limits = limits();
        let want = match u64::from(limit) {
            0 => limits.default_discover_limit,
            l => l.min(limits.max_discover_limit),
        } as usize;
        let reader = self.model.reader(peer);
        let starts = match from {
            PageFrom::Fresh => self.model.first_positions(reader, query),
            PageFrom::Cookie(position) => vec![position],
        };
        let mut tried = Vec::new();
        let mut matched = None;
        for start in starts {
            let (expected, next) = self.model.page(reader, query, start, want);
            let cookie = Cookie::at(next, query.map(ns)).to_bytes();
            let same = self.check_page(reader, &body, &expected).and_then(|()| {
                match body.cookie.as_ref() == Some(&cookie) {
                    true => Ok(()),
                    false => Err(format!("cookie {:?} != {cookie:?}", body.cookie)),
                }
            });
            match same {
                Ok(()) => {
                    matched = Some((expected, cookie));
                    break;
                }
                Err(why) => tried.push(format!("from {start:?}: {why}")),
            }
        }
        let Some((served, cookie)) = matched else {
            return Err(format!("the page matches no walk: {}", tried.join("; ")));
        };
        let log = log.filter(|log| log.reader == reader);
        let log = match log {
            Some(log) => Some(self.follow(log, query, &served, want)?),
            None => None,
        };
        Ok((served, cookie, log))
    }

    /// Checks a page of a walk against its log, and notes it there.
    fn follow(
        &self,
        mut log: WalkLog,
        query: Option<&str>,
        served: &[Seen],
        want: usize,
    ) -> Result<WalkLog, String> {
        for (peer, name, reg) in served {
            let placed = (*peer, name.clone(), reg.seq);
            if let Some(end) = log.ended {
                check!(reg.seq > end, "{placed:?} served after the walk ended at {end}");
            }
            check!(log.served.insert(placed.clone()), "{placed:?} served twice in one walk");
        }
        if served.len() < want && log.ended.is_none() {
            let live_now = self.model.visible(log.reader, query, 0);
            let missed: Vec<_> = live_now
                .into_iter()
                .map(|(p, n, r)| (p, n, r.seq))
                .filter(|placed| log.live_at_start.contains(placed) && !log.served.contains(placed))
                .collect();
            check!(missed.is_empty(), "the walk ended without {missed:?}");
            log.ended = Some(self.model.last_seq);
        }
        Ok(log)
    }

    fn check_page(
        &self,
        reader: Reader,
        body: &proto::DiscoverResponse,
        expected: &[(usize, String, Reg)],
    ) -> Result<(), String> {
        check!(
            body.registrations.len() == expected.len(),
            "page of {} != {}",
            body.registrations.len(),
            expected.len()
        );
        for (got, (peer, name, reg)) in body.registrations.iter().zip(expected) {
            let served = match reader {
                Reader::Legacy => Dialect::Legacy,
                Reader::Signed(f) => Dialect::Signed(f),
                Reader::Any => {
                    reg.flavours.first().map_or(Dialect::Legacy, |f| Dialect::Signed(*f))
                }
            };
            let record = peers()[*peer].record(served);
            check!(got.ns.as_deref() == Some(name.as_str()), "ns {:?} != {name}", got.ns);
            check!(
                got.signed_peer_record.as_ref() == Some(&record),
                "record of peer {peer} differs"
            );
            let left = reg.expires - self.model.now;
            let left = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            check!(got.ttl == Some(left), "ttl {:?} != {left}", got.ttl);
        }
        Ok(())
    }

    fn page_all(&mut self, peer: usize, name: Option<&str>, limit: u8) -> Result<(), String> {
        if name.is_some_and(|n| n.len() > limits().max_namespace_len) {
            let message = testing::discover(name, Some(limit.into()), None);
            let body = self
                .request(peer, message)
                .and_then(|m| m.discover_response)
                .ok_or("not answered")?;
            let status = read_status(body.status);
            check!(status == Ok(ResponseStatus::EInvalidNamespace), "long ns: {status:?}");
            return Ok(());
        }
        let query = name.filter(|n| !n.is_empty());
        let reader = self.model.reader(peer);
        let expected: BTreeSet<_> =
            self.model.visible(reader, query, 0).into_iter().map(|(p, n, _)| (p, n)).collect();
        let mut seen = Vec::new();
        let (mut from, mut cookie) = (PageFrom::Fresh, None);
        let mut log = Some(self.begin_walk(peer, query));
        for _ in 0..=expected.len() + 1 {
            let (served, next, next_log) =
                self.page(peer, name, limit, from, cookie.take(), log)?;
            log = next_log;
            if served.is_empty() {
                let unique: BTreeSet<_> = seen.iter().cloned().collect();
                check!(unique.len() == seen.len(), "paging repeated one of {seen:?}");
                check!(unique == expected, "paging returned {seen:?}, expected {expected:?}");
                return Ok(());
            }
            seen.extend(served.into_iter().map(|(p, n, _)| (p, n)));
            from = resolved(&next, self.model.last_seq);
            cookie = Some(next);
        }
        Err(format!("paging did not end after {} pages", expected.len() + 2))
    }
}

/// Where the server's own cookie `cookie` goes on from.
fn resolved(cookie: &Bytes, last_seq: u64) -> PageFrom {
    let cookie = Cookie::parse(cookie, 255).expect("the server's own cookie parses");
    PageFrom::Cookie(cookie.resolve(last_seq).expect("the server's own cookie resolves"))
}

fn check_register(
    response: Option<proto::Message>,
    expected: Result<u64, ResponseStatus>,
) -> Result<(), String> {
    let body = response.and_then(|m| m.register_response).ok_or("REGISTER not answered")?;
    let status = read_status(body.status);
    match expected {
        Ok(ttl) => {
            check!(
                status == Ok(ResponseStatus::Ok),
                "expected OK, got {status:?} {:?}",
                body.status_text
            );
            check!(body.ttl == Some(ttl), "ttl {:?} != {ttl}", body.ttl);
        }
        Err(want) => {
            check!(status == Ok(want), "expected {want:?}, got {status:?}");
            check!(body.status_text.is_some_and(|t| !t.is_empty()), "refusal without a reason");
        }
    }
    Ok(())
}
