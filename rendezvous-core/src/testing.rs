//! Deterministic peers, request builders, and the [`World`] every server,
//! client and model test runs in: servers and clients on a virtual network
//! under a virtual clock.
//!
//! Enabled by the `testing` feature; not part of the stable API.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::{Keypair, PeerId};
use multiaddr::Multiaddr;

use crate::proto::{self, MessageType};
use crate::record::{Dialect, Flavour, Record, encode_peer_info};
use crate::{
    Client, ClientConfig, ClientEvent, ClientTransmit, Failure, Namespace, RequestId, Server,
    ServerConfig, ServerEvent, SubscriptionId, Timestamp,
};

/// A peer with a fixed key and one record in each dialect, signed once.
#[derive(Clone, Debug)]
pub struct TestPeer {
    /// Its key.
    pub keypair: Keypair,
    /// Its id.
    pub id: PeerId,
    /// Its one address.
    pub addr: Multiaddr,
    rust: Bytes,
    standard: Bytes,
    legacy: Bytes,
}

impl TestPeer {
    /// The peer made from `seed`; the same seed always gives the same peer.
    pub fn new(seed: u32) -> TestPeer {
        let mut secret = [0u8; 32];
        secret[..4].copy_from_slice(&seed.to_be_bytes());
        secret[31] = 1;
        let keypair =
            Keypair::ed25519_from_bytes(secret).expect("any 32 bytes are an ed25519 secret");
        let id = keypair.public().to_peer_id();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", 1000 + seed % 60_000)
            .parse()
            .expect("a well-formed multiaddr");
        let sign = |flavour| {
            Record::sign(&keypair, std::slice::from_ref(&addr), 1, flavour)
                .expect("ed25519 signing cannot fail")
        };
        let rust = sign(Flavour::RustLibp2p);
        let standard = sign(Flavour::Standard);
        let legacy = encode_peer_info(&id, std::slice::from_ref(&addr));
        TestPeer { keypair, id, addr, rust, standard, legacy }
    }

    /// Its record in `dialect`.
    pub fn record(&self, dialect: Dialect) -> Bytes {
        match dialect {
            Dialect::Signed(Flavour::RustLibp2p) => self.rust.clone(),
            Dialect::Signed(Flavour::Standard) => self.standard.clone(),
            Dialect::Legacy => self.legacy.clone(),
        }
    }
}

/// Every dialect, in a fixed order.
pub const DIALECTS: [Dialect; 3] =
    [Dialect::Signed(Flavour::RustLibp2p), Dialect::Signed(Flavour::Standard), Dialect::Legacy];

/// A REGISTER request.
pub fn register(ns: &str, record: Bytes, ttl: Option<u64>) -> proto::Message {
    proto::Message {
        r#type: Some(MessageType::Register as i32),
        register: Some(proto::Register {
            ns: Some(ns.to_owned()),
            signed_peer_record: Some(record),
            ttl,
            other_records: Vec::new(),
        }),
        ..Default::default()
    }
}

/// An UNREGISTER request.
pub fn unregister(ns: &str) -> proto::Message {
    proto::Message {
        r#type: Some(MessageType::Unregister as i32),
        unregister: Some(proto::Unregister { ns: Some(ns.to_owned()), id: None }),
        ..Default::default()
    }
}

/// A REGISTER answer with `status` and `ttl`, as the server writes it.
pub fn register_response(status: proto::ResponseStatus, ttl: Option<u64>) -> proto::Message {
    crate::server::register_response(status, None, ttl)
}

/// A DISCOVER request; `ns` `None` asks for every namespace.
pub fn discover(ns: Option<&str>, limit: Option<u64>, cookie: Option<Bytes>) -> proto::Message {
    proto::Message {
        r#type: Some(MessageType::Discover as i32),
        discover: Some(proto::Discover { ns: ns.map(str::to_owned), limit, cookie }),
        ..Default::default()
    }
}

/// How the virtual network treats one request.
pub enum Fate {
    /// The server handles it; its answer arrives after `delay`.
    Deliver {
        /// How long the answer travels.
        delay: Duration,
    },
    /// The server handles it, and its answer is lost: the client times out.
    LoseAnswer,
    /// The server never sees it; the adapter reports `failure` at once.
    Fail(Failure),
    /// The server never sees it; this answer comes back instead.
    Forge(Box<proto::Message>),
    /// The server handles it, and `alter` changes the answer on the way.
    Alter(Alter),
    /// The request reaches the server only after `delay` (after requests
    /// sent later on other substreams); its answer is lost if `lose_answer`.
    Late {
        /// How long the request travels.
        delay: Duration,
        /// Whether the answer is lost.
        lose_answer: bool,
    },
}

impl Fate {
    /// Delivered at once.
    pub const NOW: Fate = Fate::Deliver { delay: Duration::ZERO };
}

/// Changes an answer on its way back.
pub type Alter = Box<dyn FnOnce(&mut proto::Message)>;

/// One request on the virtual network, for the network to judge.
pub struct Sent<'a> {
    /// The sending client.
    pub client: PeerId,
    /// What it sent.
    pub transmit: &'a ClientTransmit,
}

/// Decides each request's [`Fate`].
pub type Network = Box<dyn FnMut(&Sent<'_>) -> Fate>;

enum Arrival {
    /// A request reaching its server late.
    Request(ClientTransmit, bool),
    Response(proto::Message),
    /// Written, for a request that has no response.
    Sent,
    Failure(Failure),
}

/// Servers and clients on a virtual network under a virtual clock: the one
/// world every server, client and model test runs in. [`progress`](Self::progress)
/// steps whichever is due next (an answer arriving, a client's or a server's
/// timer), so simulated days take milliseconds.
pub struct World {
    /// The virtual time.
    pub now: Timestamp,
    /// The servers, by peer id.
    pub servers: BTreeMap<PeerId, Server>,
    /// The clients, by peer id.
    pub clients: BTreeMap<PeerId, Client>,
    /// Every client event so far, with its client, in order.
    pub events: Vec<(PeerId, ClientEvent)>,
    /// Every server event so far, with its server, in order.
    pub server_events: Vec<(PeerId, ServerEvent)>,
    /// Judges each request; by default every answer arrives at once.
    pub network: Network,
    in_transit: BTreeMap<(Timestamp, u64), (PeerId, RequestId, Arrival)>,
    order: u64,
    next_request: u64,
    /// Subscriptions open, by server and id: the client and its request.
    subscriptions: BTreeMap<(PeerId, SubscriptionId), (PeerId, RequestId)>,
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    /// An empty world at time zero with a perfect network.
    pub fn new() -> World {
        World {
            now: Timestamp::ZERO,
            servers: BTreeMap::new(),
            clients: BTreeMap::new(),
            events: Vec::new(),
            server_events: Vec::new(),
            network: Box::new(|_| Fate::NOW),
            in_transit: BTreeMap::new(),
            order: 0,
            next_request: 0,
            subscriptions: BTreeMap::new(),
        }
    }

    /// Adds a server with the id of [`TestPeer::new`]`(seed)`.
    pub fn add_server(&mut self, seed: u32, config: ServerConfig) -> PeerId {
        let id = TestPeer::new(seed).id;
        self.servers.insert(id, Server::new(config).expect("a test server's limits are valid"));
        id
    }

    /// Adds a client for `peer`, announcing its one address.
    pub fn add_client(&mut self, peer: &TestPeer, config: ClientConfig) -> PeerId {
        let client = Client::new(config, peer.keypair.clone(), vec![peer.addr.clone()], 42)
            .expect("a test client's config is valid");
        self.clients.insert(peer.id, client);
        peer.id
    }

    /// The server `id`.
    pub fn server(&mut self, id: PeerId) -> &mut Server {
        self.servers.get_mut(&id).expect("a server of this world")
    }

    /// The client `id`.
    pub fn client(&mut self, id: PeerId) -> &mut Client {
        self.clients.get_mut(&id).expect("a client of this world")
    }

    /// `from` sends `message` to `server` directly (no client, no network);
    /// returns the answer, if the request has one.
    pub fn request(
        &mut self,
        server: PeerId,
        from: PeerId,
        message: proto::Message,
    ) -> Option<proto::Message> {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        let now = self.now;
        let server_core = self.server(server);
        server_core.handle_request(now, from, id, message);
        let transmit = server_core.poll_transmit().expect("every request completes at once");
        assert_eq!((transmit.peer, transmit.request_id), (from, id));
        assert!(server_core.poll_transmit().is_none(), "one outcome per request");
        self.drain_server_events();
        transmit.message
    }

    /// Moves every client's requests through the network and delivers what
    /// is due now, until nothing moves.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            let ids: Vec<PeerId> = self.clients.keys().copied().collect();
            for client in ids {
                while let Some(transmit) = self.client(client).poll_transmit() {
                    moved = true;
                    self.carry(client, transmit);
                }
            }
            while let Some(entry) = self.in_transit.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (client, id, arrival) = entry.remove();
                moved = true;
                let now = self.now;
                if let Arrival::Request(transmit, lose_answer) = arrival {
                    self.serve(client, transmit, None, lose_answer, Duration::ZERO);
                    continue;
                }
                let core = self.client(client);
                match arrival {
                    Arrival::Request(..) => {}
                    Arrival::Response(message) => core.handle_response(now, id, message),
                    Arrival::Sent => core.handle_sent(now, id),
                    Arrival::Failure(failure) => core.handle_failure(now, id, failure),
                }
            }
            moved |= self.carry_pushes();
            if !moved {
                break;
            }
        }
        self.drain_server_events();
        for (id, client) in &mut self.clients {
            self.events.extend(std::iter::from_fn(|| client.poll_event()).map(|e| (*id, e)));
        }
    }

    fn carry(&mut self, client: PeerId, transmit: ClientTransmit) {
        let fate = (self.network)(&Sent { client, transmit: &transmit });
        let (delay, alter, lost) = match fate {
            Fate::Deliver { delay } => (delay, None, false),
            Fate::LoseAnswer => (Duration::ZERO, None, true),
            Fate::Alter(alter) => (Duration::ZERO, Some(alter), false),
            Fate::Late { delay, lose_answer } => {
                let id = transmit.request_id;
                return self.arrive(client, id, delay, Arrival::Request(transmit, lose_answer));
            }
            Fate::Fail(failure) => {
                return self.arrive(
                    client,
                    transmit.request_id,
                    Duration::ZERO,
                    Arrival::Failure(failure),
                );
            }
            Fate::Forge(message) => {
                return self.arrive(
                    client,
                    transmit.request_id,
                    Duration::ZERO,
                    Arrival::Response(*message),
                );
            }
        };
        self.serve(client, transmit, alter, lost, delay);
    }

    /// `client`'s request reaches its server now; the answer, unless `lost`,
    /// arrives after `delay`, changed by `alter`.
    fn serve(
        &mut self,
        client: PeerId,
        transmit: ClientTransmit,
        alter: Option<Alter>,
        lost: bool,
        delay: Duration,
    ) {
        let now = self.now;
        let Some(server) = self.servers.get_mut(&transmit.server) else {
            let failure = Arrival::Failure(Failure::Unreachable);
            return self.arrive(client, transmit.request_id, Duration::ZERO, failure);
        };
        if transmit.subscription {
            self.next_request += 1;
            let id = SubscriptionId(self.next_request);
            let body = prost::Message::encode_to_vec(&transmit.message);
            let server_id = transmit.server;
            self.subscriptions.insert((server_id, id), (client, transmit.request_id));
            self.server(server_id)
                .handle_subscribe(now, client, id, &body)
                .expect("a test subscription decodes");
            return;
        }
        server.handle_request(now, client, transmit.request_id, transmit.message);
        let answer = server.poll_transmit().expect("every request completes at once").message;
        assert_eq!(
            answer.is_some(),
            transmit.expects_response,
            "a response exactly when one is expected"
        );
        if lost {
            return;
        }
        let arrival = match (answer, alter) {
            (Some(mut message), Some(alter)) => {
                alter(&mut message);
                Arrival::Response(message)
            }
            (Some(message), None) => Arrival::Response(message),
            (None, _) => Arrival::Sent,
        };
        self.arrive(client, transmit.request_id, delay, arrival);
    }

    /// Delivers what servers push to subscribers (at once, read at once),
    /// and closes the subscriptions clients cancel. True if anything moved.
    fn carry_pushes(&mut self) -> bool {
        let mut moved = false;
        for (&client, core) in &mut self.clients {
            while let Some(request) = core.poll_cancel() {
                moved = true;
                let open = self.subscriptions.iter().find(|(_, v)| **v == (client, request));
                if let Some((&(server, id), _)) = open {
                    self.subscriptions.remove(&(server, id));
                    if let Some(server) = self.servers.get_mut(&server) {
                        server.handle_unsubscribed(id);
                    }
                }
            }
        }
        let servers: Vec<PeerId> = self.servers.keys().copied().collect();
        for server in servers {
            while let Some(push) = self.server(server).poll_push() {
                moved = true;
                let written = push.frame.len();
                let key = (server, push.subscription);
                let Some(&(client, request)) = self.subscriptions.get(&key) else { continue };
                self.server(server).handle_push_written(push.subscription, written);
                self.arrive(client, request, Duration::ZERO, Arrival::Response(push.message()));
                if push.end {
                    self.subscriptions.remove(&key);
                    self.server(server).handle_unsubscribed(push.subscription);
                    let closed = Arrival::Failure(Failure::StreamClosed { written: true });
                    self.arrive(client, request, Duration::ZERO, closed);
                }
            }
        }
        moved
    }

    /// Cuts every subscription of `client` (its connection broke): both
    /// ends learn it now.
    pub fn cut_subscriptions(&mut self, client: PeerId) {
        let cut: Vec<_> = self
            .subscriptions
            .iter()
            .filter(|(_, v)| v.0 == client)
            .map(|(k, v)| (*k, *v))
            .collect();
        for ((server, id), (client, request)) in cut {
            self.subscriptions.remove(&(server, id));
            self.server(server).handle_unsubscribed(id);
            let closed = Arrival::Failure(Failure::StreamClosed { written: true });
            self.arrive(client, request, Duration::ZERO, closed);
        }
        self.pump();
    }

    fn arrive(&mut self, client: PeerId, id: RequestId, delay: Duration, arrival: Arrival) {
        self.order += 1;
        self.in_transit.insert((self.now + delay, self.order), (client, id, arrival));
    }

    fn drain_server_events(&mut self) {
        for (id, server) in &mut self.servers {
            self.server_events.extend(std::iter::from_fn(|| server.poll_event()).map(|e| (*id, e)));
        }
    }

    /// When something is next due: an answer, or a client's or server's timer.
    pub fn next_due(&self) -> Option<Timestamp> {
        let answers = self.in_transit.keys().next().map(|(t, _)| *t);
        let clients = self.clients.values().filter_map(Client::poll_timeout);
        let servers = self.servers.values().filter_map(Server::poll_timeout);
        answers.into_iter().chain(clients).chain(servers).min()
    }

    /// Steps to whatever is due next, if that is at or before `until`, and
    /// handles it. False when nothing is due by then.
    pub fn progress(&mut self, until: Timestamp) -> bool {
        let Some(next) = self.next_due().filter(|t| *t <= until) else {
            return false;
        };
        assert!(next >= self.now, "a deadline {next:?} before now {:?}", self.now);
        self.now = next;
        for server in self.servers.values_mut() {
            if server.poll_timeout().is_some_and(|t| t <= next) {
                server.handle_timeout(next);
            }
        }
        for client in self.clients.values_mut() {
            if client.poll_timeout().is_some_and(|t| t <= next) {
                client.handle_timeout(next);
            }
        }
        self.pump();
        true
    }

    /// Runs everything due up to `until`, then moves the clock there.
    pub fn run_until(&mut self, until: Timestamp) {
        while self.progress(until) {}
        self.now = self.now.max(until);
        for server in self.servers.values_mut() {
            server.handle_timeout(until);
        }
        self.pump();
    }

    /// Runs everything due in the next `duration`.
    pub fn advance(&mut self, duration: Duration) {
        self.run_until(self.now + duration);
    }

    /// Takes the events of `client` so far.
    pub fn take_events(&mut self, client: PeerId) -> Vec<ClientEvent> {
        let (mine, others) =
            std::mem::take(&mut self.events).into_iter().partition(|(c, _)| *c == client);
        self.events = others;
        mine.into_iter().map(|(_, e)| e).collect()
    }

    /// Whether `server` holds a registration of `peer` in `namespace`.
    pub fn holds(&mut self, server: PeerId, peer: PeerId, namespace: &str) -> bool {
        let namespace = Namespace::new(namespace, usize::MAX).expect("a test namespace");
        self.server(server).registration_ttl(&peer, &namespace).is_some()
    }
}
