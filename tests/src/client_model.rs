//! The client core wired to the server core through a virtual network that
//! drops, delays and reorders answers, under a virtual clock that jumps.
//!
//! Checked after every step and at the end:
//! - while the client keeps a registration with refresh on, the server holds
//!   it (once its first REGISTER succeeded): it never lapses;
//! - after `unregister_all`, nothing of the client remains on the server;
//! - every command completes with exactly one event.
//!
//! Operations come from raw bytes (shared with the `client_ops` fuzz target).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use rendezvous_core::proto;
use rendezvous_core::testing::TestPeer;
use rendezvous_core::{
    Client, ClientConfig, ClientEvent, ClientTransmit, Namespace, RequestId, Server, ServerConfig,
    Timestamp,
};

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
/// Drops in a row before the network must deliver; with the client's
/// timeouts and backoff this keeps a retry chain well inside the 20% of
/// the TTL left when a refresh starts.
const MAX_DROPS_IN_A_ROW: u32 = 3;

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
    /// Time passes, with the network delivering what is due.
    Advance {
        /// Minutes.
        minutes: u16,
    },
    /// How the network treats the next answers.
    Network {
        /// Drop the next answer.
        drop: bool,
        /// Delay answers by this many seconds.
        delay: u8,
    },
    /// The connection drops and comes back.
    Reconnect,
}

/// Decodes operations from raw bytes until they run out.
pub fn ops_from_bytes(bytes: &[u8]) -> Vec<Op> {
    let mut u = Unstructured::new(bytes);
    std::iter::from_fn(|| if u.is_empty() { None } else { Op::arbitrary(&mut u).ok() }).collect()
}

fn ns(i: u8) -> Namespace {
    Namespace::new(NAMESPACES[i as usize % NAMESPACES.len()], 255).expect("valid")
}

struct Sim {
    client: Client,
    server: Server,
    me: TestPeer,
    server_id: libp2p_identity::PeerId,
    now: Timestamp,
    /// Answers in flight: (delivery time, order) -> (request, response).
    answers: BTreeMap<(Timestamp, u64), (RequestId, Option<proto::Message>)>,
    order: u64,
    drop_next: bool,
    drops_in_a_row: u32,
    delay: Duration,
    /// Namespaces kept alive, and whether a REGISTER for each has succeeded
    /// since it was asked for.
    kept: BTreeMap<Namespace, bool>,
    commands: BTreeSet<RequestId>,
    completions: BTreeMap<RequestId, usize>,
}

/// Runs `ops`; `Err` says which property broke.
pub fn run(ops: &[Op]) -> Result<(), String> {
    let me = TestPeer::new(1);
    let config = ClientConfig::default();
    let mut sim = Sim {
        client: Client::new(config, me.keypair.clone(), vec![me.addr.clone()], 7),
        server: Server::new(ServerConfig::default()).expect("default limits"),
        server_id: TestPeer::new(2).id,
        me,
        now: Timestamp::ZERO,
        answers: BTreeMap::new(),
        order: 0,
        drop_next: false,
        drops_in_a_row: 0,
        delay: Duration::ZERO,
        kept: BTreeMap::new(),
        commands: BTreeSet::new(),
        completions: BTreeMap::new(),
    };
    for (step, op) in ops.iter().enumerate() {
        sim.step(op).map_err(|e| format!("step {step} ({op:?}): {e}"))?;
    }
    // Shut down: unregister everything and let the network settle.
    let ids = sim.client.unregister_all(sim.now);
    sim.commands.extend(ids);
    sim.kept.clear();
    sim.drop_next = false;
    sim.advance(Duration::from_secs(3600))?;
    let me = sim.me.id;
    if let Some((ns, _)) =
        sim.server.namespaces().find(|(ns, _)| sim.server.registration_ttl(&me, ns).is_some())
    {
        return Err(format!("after unregister_all the server still holds us in {ns}"));
    }
    for id in &sim.commands {
        match sim.completions.get(id) {
            Some(1) => {}
            n => return Err(format!("command {id:?} completed {n:?} times")),
        }
    }
    if let Some(extra) = sim.completions.keys().find(|id| !sim.commands.contains(id)) {
        return Err(format!("completion for unknown command {extra:?}"));
    }
    Ok(())
}

impl Sim {
    fn step(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Register { ns: n, ttl } => {
                let ttl = [None, Some(600), Some(3600), Some(7200)][ttl as usize % 4];
                let id = self
                    .client
                    .register(self.now, self.server_id, ns(n), ttl)
                    .map_err(|e| e.to_string())?;
                self.commands.insert(id);
                self.kept.entry(ns(n)).or_insert(false);
            }
            Op::Unregister { ns: n } => {
                let id = self
                    .client
                    .unregister(self.now, self.server_id, ns(n))
                    .map_err(|e| e.to_string())?;
                self.commands.insert(id);
                self.kept.remove(&ns(n));
            }
            Op::Discover { ns: n } => {
                let id = self
                    .client
                    .discover(self.now, self.server_id, n.map(ns), None)
                    .map_err(|e| e.to_string())?;
                self.commands.insert(id);
            }
            Op::DiscoverAll { ns: n } => {
                let id = self
                    .client
                    .discover_all(self.now, self.server_id, Some(ns(n)), Some(2))
                    .map_err(|e| e.to_string())?;
                self.commands.insert(id);
            }
            Op::Advance { minutes } => {
                self.advance(Duration::from_secs(u64::from(minutes % 600) * 60))?;
            }
            Op::Network { drop, delay } => {
                self.drop_next = drop;
                // Below the client's 20 s timeout: a later answer is a drop,
                // and drops are bounded separately.
                self.delay = Duration::from_secs(u64::from(delay % 15));
            }
            Op::Reconnect => {
                self.client.handle_disconnected(self.now, self.server_id);
                self.client.handle_connected(self.now, self.server_id);
            }
        }
        self.pump()?;
        self.check_kept()
    }

    /// Sends what the client wants sent; requests reach the server at once,
    /// answers travel through the lossy network.
    fn pump(&mut self) -> Result<(), String> {
        while let Some(ClientTransmit { server, request_id, message, expects_response }) =
            self.client.poll_transmit()
        {
            if server != self.server_id {
                return Err(format!("request to unknown server {server}"));
            }
            self.server.handle_request(self.now, self.me.id, request_id, message);
            let answer = self.server.poll_transmit().and_then(|t| t.message);
            if answer.is_some() != expects_response {
                return Err(format!("expects_response {expects_response} but answer {answer:?}"));
            }
            // Only REGISTER answers count towards the bound: they are what
            // keeps the registration alive.
            let is_register = answer.as_ref().is_some_and(|m| m.register_response.is_some());
            if self.drop_next
                && expects_response
                && (!is_register || self.drops_in_a_row < MAX_DROPS_IN_A_ROW)
            {
                self.drops_in_a_row += u32::from(is_register);
                continue;
            }
            if is_register {
                self.drops_in_a_row = 0;
            }
            self.order += 1;
            self.answers.insert((self.now + self.delay, self.order), (request_id, answer));
        }
        while self.server.poll_event().is_some() {}
        while let Some(event) = self.client.poll_event() {
            self.observe(event);
        }
        Ok(())
    }

    fn observe(&mut self, event: ClientEvent) {
        let completed = match &event {
            ClientEvent::Registered { request, namespace, .. } => {
                if let Some(ok) = self.kept.get_mut(namespace) {
                    *ok = true;
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

    /// Moves the clock forward by `by`, firing timers and delivering answers
    /// in time order.
    fn advance(&mut self, by: Duration) -> Result<(), String> {
        let until = self.now + by;
        loop {
            let answer = self.answers.keys().next().map(|(t, _)| *t);
            let timer = self.client.poll_timeout();
            let Some(next) = answer.into_iter().chain(timer).min().filter(|t| *t <= until) else {
                break;
            };
            if next < self.now {
                return Err(format!("timeout {next:?} points before now {:?}", self.now));
            }
            self.now = next;
            self.server.handle_timeout(next);
            if answer == Some(next) {
                let (_, (id, message)) = self.answers.pop_first().expect("just seen");
                match message {
                    Some(message) => self.client.handle_response(next, id, message),
                    None => self.client.handle_sent(next, id),
                }
            } else {
                self.client.handle_timeout(next);
            }
            self.pump()?;
            self.check_kept()?;
        }
        self.now = until;
        self.server.handle_timeout(until);
        self.client.handle_timeout(until);
        self.pump()?;
        self.check_kept()
    }

    fn check_kept(&mut self) -> Result<(), String> {
        for (namespace, registered) in &self.kept {
            if *registered && self.server.registration_ttl(&self.me.id, namespace).is_none() {
                return Err(format!("registration in {namespace} lapsed at {:?}", self.now));
            }
        }
        Ok(())
    }
}
