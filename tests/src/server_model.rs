//! A reference model of the rendezvous server, and a driver that runs random
//! operations against both the real [`Server`] and the model and compares them
//! after every step.
//!
//! The operations come from raw bytes through [`arbitrary`], so the proptest
//! (`tests/server_model.rs`) and the fuzz target (`fuzz/fuzz_targets/server_ops.rs`)
//! share one generator, and a fuzz finding replays as an ordinary test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use rendezvous_core::cookie::Cookie;
use rendezvous_core::proto::{self, ResponseStatus, read_status};
use rendezvous_core::testing::{self, DIALECTS, TestPeer, World};
use rendezvous_core::{
    Dialect, Flavour, Limits, Namespace, Reader, Server, ServerConfig, ServerEvent, Timestamp,
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
        /// Asked TTL in seconds (0: default).
        ttl: u16,
    },
    /// `peer` registers in `ns` with one REGISTER carrying both envelope
    /// flavours (this project's extension).
    RegisterBoth {
        /// Index into the peers.
        peer: u8,
        /// Index into the namespaces.
        ns: u8,
        /// Asked TTL in seconds (0: default).
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
        /// Page size asked (0: default).
        limit: u8,
        /// Which cookie to send.
        cookie: CookieChoice,
    },
    /// `peer` pages through everything from the start.
    PageAll {
        /// Index into the peers.
        peer: u8,
        /// Index into the namespaces; `None` for all.
        ns: Option<u8>,
        /// Page size asked (0: default).
        limit: u8,
    },
    /// Time passes.
    Advance {
        /// Seconds.
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

/// What the server should hold, in the plainest form.
#[derive(Default)]
struct Model {
    now: Timestamp,
    regs: BTreeMap<(usize, String), Reg>,
    last_seq: u64,
    /// What each peer reads: what the adapter said, what its REGISTERs showed.
    readers: BTreeMap<usize, (Option<Reader>, Option<Reader>)>,
    cookies: BTreeMap<(usize, Option<String>), Bytes>,
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
    let config = ServerConfig { limits: limits(), ..ServerConfig::default() };
    let mut world = World::new();
    let server = world.add_server(100, config);
    let mut sim = Sim { world, server, model: Model::default() };
    for (step, op) in ops.iter().enumerate() {
        sim.step(op).map_err(|what| Mismatch { step, op: op.clone(), what })?;
    }
    Ok(())
}

struct Sim {
    world: World,
    server: libp2p_identity::PeerId,
    model: Model,
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
        let touches_server = !matches!(op, Op::Advance { .. } | Op::SetReader { .. });
        if touches_server {
            self.model.expire(&mut expected_events);
        }
        match *op {
            Op::Register { peer, ns: n, dialect, ttl } => {
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
                self.discover(peer, name, limit, cookie)?;
            }
            Op::PageAll { peer, ns: n, limit } => {
                let peer = peer as usize % PEERS;
                let name = n.map(|n| NAMESPACES[n as usize % NAMESPACES.len()]);
                self.page_all(peer, name, limit)?;
            }
            Op::Advance { secs } => {
                self.model.now = self.model.now + Duration::from_secs(secs.into());
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
                self.core().set_reader_dialect(peers()[peer].id, reader);
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
        let ttl = if ttl == 0 { limits.default_ttl } else { Duration::from_secs(ttl) };
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
        let (cookie, valid_position) = match choice {
            CookieChoice::None => (None, Some(0)),
            CookieChoice::Last => match self.model.cookies.get(&key) {
                Some(c) => (Some(c.clone()), Some(cookie_position(c))),
                None => (None, Some(0)),
            },
            CookieChoice::Forged => {
                let ns = query.as_deref().and_then(|n| Namespace::new(n, 255).ok());
                (Some(Cookie { position: self.model.last_seq + 1, namespace: ns }.to_bytes()), None)
            }
            CookieChoice::Garbage => (Some(Bytes::from_static(b"crumbs")), None),
            CookieChoice::Foreign => {
                match self.model.cookies.iter().find(|((p, q), _)| *p == peer && *q != query) {
                    // A position in all namespaces continues any one of them.
                    Some(((_, None), c)) => (Some(c.clone()), Some(cookie_position(c))),
                    Some((_, c)) => (Some(c.clone()), None),
                    None => (None, Some(0)),
                }
            }
        };
        let response = self.request(peer, testing::discover(name, Some(limit.into()), cookie));
        let body = response.and_then(|m| m.discover_response).ok_or("DISCOVER not answered")?;
        let status = read_status(body.status);
        if query.as_ref().is_some_and(|n| n.len() > limits().max_namespace_len) {
            check!(status == Ok(ResponseStatus::EInvalidNamespace), "long ns: {status:?}");
            return Ok(());
        }
        let Some(position) = valid_position else {
            check!(status == Ok(ResponseStatus::EInvalidCookie), "bad cookie: {status:?}");
            return Ok(());
        };
        check!(status == Ok(ResponseStatus::Ok), "discover: {status:?} {:?}", body.status_text);
        let limits = limits();
        let want = match u64::from(limit) {
            0 => limits.default_discover_limit,
            l => l.min(limits.max_discover_limit),
        };
        let reader = self.model.reader(peer);
        let expected: Vec<_> = self
            .model
            .visible(reader, query.as_deref(), position)
            .into_iter()
            .take(want as usize)
            .collect();
        self.check_page(reader, &body, &expected)?;
        let last = expected.last().map_or(position, |(_, _, r)| r.seq);
        let cookie = Cookie { position: last, namespace: query.as_deref().map(ns) }.to_bytes();
        check!(body.cookie.as_ref() == Some(&cookie), "cookie {:?} != {cookie:?}", body.cookie);
        self.model.cookies.insert(key, cookie);
        Ok(())
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
        let expected: Vec<_> =
            self.model.visible(reader, query, 0).into_iter().map(|(p, n, _)| (p, n)).collect();
        let mut seen = Vec::new();
        let mut cookie = None;
        for _ in 0..=expected.len() + 1 {
            let message = testing::discover(name, Some(limit.into()), cookie.take());
            let body = self
                .request(peer, message)
                .and_then(|m| m.discover_response)
                .ok_or("not answered")?;
            check!(
                read_status(body.status) == Ok(ResponseStatus::Ok),
                "paging: {:?}",
                body.status_text
            );
            if body.registrations.is_empty() {
                check!(seen == expected, "paging returned {seen:?}, expected {expected:?}");
                return Ok(());
            }
            for reg in &body.registrations {
                let owner = peers().iter().position(|p| {
                    DIALECTS.iter().any(|d| reg.signed_peer_record.as_ref() == Some(&p.record(*d)))
                });
                seen.push((owner.ok_or("unknown record")?, reg.ns.clone().unwrap_or_default()));
            }
            cookie = body.cookie;
        }
        Err(format!("paging did not end after {} pages", expected.len() + 2))
    }
}

fn cookie_position(cookie: &Bytes) -> u64 {
    Cookie::parse(cookie, 255).map(|c| c.position).expect("the server's own cookie parses")
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
