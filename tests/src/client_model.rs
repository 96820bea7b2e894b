//! The client core against the server core in the shared test world, over a
//! network that drops, delays and reorders answers, and a server whose
//! answers may carry absurd values, under a virtual clock that jumps.
//!
//! Checked after every step and at the end:
//! - while the client keeps a registration with refresh on, the server holds
//!   it (once its first REGISTER succeeded): it never lapses;
//! - after `unregister_all`, nothing of the client remains on the server;
//! - every command completes with exactly one event;
//! - nothing panics, whatever the server says.
//!
//! Operations come from raw bytes (shared with the `client_ops` fuzz target).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use rendezvous_core::proto::{self, MessageType};
use rendezvous_core::testing::{Fate, TestPeer, World};
use rendezvous_core::{ClientConfig, ClientEvent, Namespace, RequestId, ServerConfig, Timestamp};

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
/// REGISTER answers lost in a row before the network must deliver one; with
/// the client's timeouts and backoff this keeps a retry chain well inside
/// the 20% of the TTL left when a refresh starts.
const MAX_LOST_IN_A_ROW: u32 = 3;

/// One step.
#[derive(Clone, Debug, Arbitrary)]
pub enum Op {
    /// Register (or re-register) in a namespace.
    Register {
        /// Index into the namespaces.
        ns: u8,
        /// Picks the TTL asked.
        ttl: u8,
    },
    /// Unregister from a namespace.
    Unregister {
        /// Index into the namespaces.
        ns: u8,
    },
    /// Discover one page (`None`: all namespaces).
    Discover {
        /// Index into the namespaces.
        ns: Option<u8>,
    },
    /// Discover every page.
    DiscoverAll {
        /// Index into the namespaces.
        ns: u8,
    },
    /// Watch a namespace.
    Watch {
        /// Index into the namespaces.
        ns: u8,
    },
    /// Time passes, with the network delivering what is due.
    Advance {
        /// Minutes.
        minutes: u16,
    },
    /// How the network treats the next answers.
    Network {
        /// Lose the next answer.
        lose: bool,
        /// Delay answers by this many seconds.
        delay: u8,
    },
    /// What the server's next answers carry.
    Quirk(Quirk),
    /// The connection drops and comes back.
    Reconnect,
}

/// Values a buggy or hostile server puts in its answers.
#[derive(Clone, Copy, Debug, Arbitrary)]
pub enum Quirk {
    /// Honest answers.
    None,
    /// A granted TTL of 2^64 - 1.
    HugeTtl,
    /// A granted TTL of 0 (meaning: what was asked).
    ZeroTtl,
    /// A granted TTL of one second.
    TinyTtl,
    /// Discovered entries without a namespace, as go's servers send them.
    NoNamespace,
    /// Discovered entries with TTLs of 2^64 - 1.
    HugeDiscoveredTtl,
    /// A status number no spec defines.
    GarbageStatus,
}

/// Decodes operations from raw bytes until they run out.
pub fn ops_from_bytes(bytes: &[u8]) -> Vec<Op> {
    let mut u = Unstructured::new(bytes);
    std::iter::from_fn(|| if u.is_empty() { None } else { Op::arbitrary(&mut u).ok() }).collect()
}

fn ns(i: u8) -> Namespace {
    Namespace::new(NAMESPACES[i as usize % NAMESPACES.len()], 255).expect("valid")
}

/// What the network does next, shared with its closure.
#[derive(Default)]
struct Net {
    lose_next: bool,
    lost_in_a_row: u32,
    delay: Duration,
    quirk: Option<Quirk>,
}

impl Net {
    fn fate(&mut self, message: &proto::Message) -> Fate {
        let is_register = message.message_type() == Ok(MessageType::Register);
        let expects_answer = message.message_type() != Ok(MessageType::Unregister);
        if self.lose_next
            && expects_answer
            && (!is_register || self.lost_in_a_row < MAX_LOST_IN_A_ROW)
        {
            self.lose_next = false;
            self.lost_in_a_row += u32::from(is_register);
            return Fate::LoseAnswer;
        }
        if is_register {
            self.lost_in_a_row = 0;
        }
        match self.quirk {
            Some(quirk) if expects_answer => Fate::Alter(Box::new(move |m| apply(quirk, m))),
            _ => Fate::Deliver { delay: self.delay },
        }
    }
}

fn apply(quirk: Quirk, message: &mut proto::Message) {
    if let Some(r) = message.register_response.as_mut() {
        match quirk {
            Quirk::HugeTtl => r.ttl = Some(u64::MAX),
            Quirk::ZeroTtl => r.ttl = Some(0),
            Quirk::TinyTtl => r.ttl = Some(1),
            Quirk::GarbageStatus => r.status = Some(9999),
            _ => {}
        }
    }
    if let Some(d) = message.discover_response.as_mut() {
        for entry in &mut d.registrations {
            match quirk {
                Quirk::NoNamespace => entry.ns = None,
                Quirk::HugeDiscoveredTtl => entry.ttl = Some(u64::MAX),
                _ => {}
            }
        }
        if let Quirk::GarbageStatus = quirk {
            d.status = Some(-1);
        }
    }
}

struct Sim {
    world: World,
    server: libp2p_identity::PeerId,
    me: libp2p_identity::PeerId,
    net: Rc<RefCell<Net>>,
    /// Namespaces kept alive, and whether a REGISTER for each has succeeded
    /// honestly since it was asked for.
    kept: BTreeMap<Namespace, bool>,
    commands: BTreeSet<RequestId>,
    completions: BTreeMap<RequestId, usize>,
}

/// Runs `ops`; `Err` says which property broke.
pub fn run(ops: &[Op]) -> Result<(), String> {
    let mut world = World::new();
    let server = world.add_server(2, ServerConfig::default());
    let config = ClientConfig {
        min_refresh_interval: Duration::from_secs(60),
        discover_interval: Duration::from_secs(600),
        ..ClientConfig::default()
    };
    let me = world.add_client(&TestPeer::new(1), config);
    let net = Rc::new(RefCell::new(Net::default()));
    let judge = net.clone();
    world.network = Box::new(move |sent| judge.borrow_mut().fate(&sent.transmit.message));
    let mut sim = Sim {
        world,
        server,
        me,
        net,
        kept: BTreeMap::new(),
        commands: BTreeSet::new(),
        completions: BTreeMap::new(),
    };
    for (step, op) in ops.iter().enumerate() {
        sim.step(op).map_err(|e| format!("step {step} ({op:?}): {e}"))?;
    }
    sim.shut_down()
}

impl Sim {
    fn now(&self) -> Timestamp {
        self.world.now
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let (now, server) = (self.now(), self.server);
        let client = self.world.client(self.me);
        match *op {
            Op::Register { ns: n, ttl } => {
                let ttl = [None, Some(600), Some(3600), Some(7200)][ttl as usize % 4];
                let id = client
                    .register(now, server, ns(n), ttl.map(Duration::from_secs))
                    .map_err(|e| e.to_string())?;
                self.commands.insert(id);
                self.kept.entry(ns(n)).or_insert(false);
            }
            Op::Unregister { ns: n } => {
                let id = client.unregister(now, server, ns(n)).map_err(|e| e.to_string())?;
                self.commands.insert(id);
                self.kept.remove(&ns(n));
            }
            Op::Discover { ns: n } => {
                let id =
                    client.discover(now, server, n.map(ns), None).map_err(|e| e.to_string())?;
                self.commands.insert(id);
            }
            Op::DiscoverAll { ns: n } => {
                let id = client
                    .discover_all(now, server, Some(ns(n)), Some(2))
                    .map_err(|e| e.to_string())?;
                self.commands.insert(id);
            }
            Op::Watch { ns: n } => client.watch(now, server, ns(n)).map_err(|e| e.to_string())?,
            Op::Advance { minutes } => {
                return self.advance(Duration::from_secs(u64::from(minutes % 600) * 60));
            }
            Op::Network { lose, delay } => {
                let mut net = self.net.borrow_mut();
                net.lose_next = lose;
                // Below the client's 20 s timeout: a later answer is a loss,
                // and losses are bounded separately.
                net.delay = Duration::from_secs(u64::from(delay % 15));
            }
            Op::Quirk(quirk) => {
                // A lying grant loses the "never lapses" promise until an
                // honest answer renews the registration.
                if !matches!(quirk, Quirk::None | Quirk::NoNamespace | Quirk::HugeDiscoveredTtl) {
                    self.kept.values_mut().for_each(|ok| *ok = false);
                }
                self.net.borrow_mut().quirk = Some(quirk);
            }
            Op::Reconnect => {
                client.handle_disconnected(now, server);
                client.handle_connected(now, server);
            }
        }
        self.world.pump();
        self.observe();
        self.check_kept()
    }

    /// Lets `by` pass, checking after each thing that happens.
    fn advance(&mut self, by: Duration) -> Result<(), String> {
        let until = self.now() + by;
        while self.world.progress(until) {
            self.observe();
            self.check_kept()?;
        }
        self.world.run_until(until);
        self.observe();
        self.check_kept()
    }

    fn observe(&mut self) {
        let honest = matches!(
            self.net.borrow().quirk,
            None | Some(Quirk::None | Quirk::NoNamespace | Quirk::HugeDiscoveredTtl)
        );
        for event in self.world.take_events(self.me) {
            let completed = match &event {
                ClientEvent::Registered { request, namespace, .. } => {
                    if let Some(ok) = self.kept.get_mut(namespace) {
                        *ok = honest;
                    }
                    *request
                }
                ClientEvent::RegisterFailed { request, namespace, retry_in: None, .. } => {
                    self.kept.remove(namespace);
                    *request
                }
                ClientEvent::RegisterFailed { request, .. }
                | ClientEvent::Unregistered { request, .. } => *request,
                ClientEvent::Discovered { request, .. }
                | ClientEvent::DiscoverFailed { request, .. } => Some(*request),
                _ => None,
            };
            if let Some(id) = completed {
                *self.completions.entry(id).or_default() += 1;
            }
        }
    }

    fn check_kept(&mut self) -> Result<(), String> {
        let (server, me, now) = (self.server, self.me, self.now());
        for (namespace, registered) in &self.kept {
            if *registered && !self.world.holds(server, me, namespace.as_str()) {
                return Err(format!("registration in {namespace} lapsed at {now:?}"));
            }
        }
        Ok(())
    }

    /// Unregisters everything on an honest network, lets it settle, and
    /// checks what is left.
    fn shut_down(mut self) -> Result<(), String> {
        let now = self.now();
        let ids = self.world.client(self.me).unregister_all(now);
        self.commands.extend(ids);
        self.kept.clear();
        *self.net.borrow_mut() = Net::default();
        self.world.pump();
        self.observe();
        self.advance(Duration::from_secs(3600))?;
        let (server, me) = (self.server, self.me);
        let holds: Vec<_> =
            self.world.server(server).namespaces(None).map(|(ns, _)| ns.clone()).collect();
        if let Some(ns) = holds.iter().find(|ns| self.world.holds(server, me, ns.as_str())) {
            return Err(format!("after unregister_all the server still holds us in {ns}"));
        }
        for id in &self.commands {
            match self.completions.get(id) {
                Some(1) => {}
                n => return Err(format!("command {id:?} completed {n:?} times")),
            }
        }
        if let Some(extra) = self.completions.keys().find(|id| !self.commands.contains(id)) {
            return Err(format!("completion for unknown command {extra:?}"));
        }
        Ok(())
    }
}
