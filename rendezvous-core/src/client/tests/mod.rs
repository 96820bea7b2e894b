//! The client in the shared test world: one server core, the client under
//! test, and a network each test may make lossy, slow or hostile.

mod dialect;
mod discover;
mod register;

use std::time::Duration;

use libp2p_identity::PeerId;

use super::*;
use crate::testing::{self, Fate, TestPeer, World};
use crate::{Server, ServerConfig, Timestamp};

fn ns(name: &str) -> Namespace {
    Namespace::new(name, 255).unwrap()
}

fn sorted(mut peers: Vec<PeerId>) -> Vec<PeerId> {
    peers.sort();
    peers
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);
const STANDARD: Dialect = Dialect::Signed(Flavour::Standard);

/// A world with one server and the client under test.
struct Setup {
    w: World,
    server: PeerId,
    me: PeerId,
}

impl Setup {
    fn new(config: ClientConfig) -> Self {
        Self::with_server(config, ServerConfig::default())
    }

    fn with_server(config: ClientConfig, server_config: ServerConfig) -> Self {
        let mut w = World::new();
        let server = w.add_server(100, server_config);
        let me = w.add_client(&TestPeer::new(1), config);
        Setup { w, server, me }
    }

    fn client(&mut self) -> &mut Client {
        self.w.client(self.me)
    }

    fn register(&mut self, name: &str, ttl: Option<u64>) -> RequestId {
        let (now, server) = (self.w.now, self.server);
        let id = self.client().register(now, server, ns(name), ttl.map(secs)).unwrap();
        self.w.pump();
        id
    }

    fn discover(&mut self, name: Option<&str>, limit: Option<u64>, all: bool) -> RequestId {
        let (now, server) = (self.w.now, self.server);
        let client = self.client();
        let id = if all {
            client.discover_all(now, server, name.map(ns), limit)
        } else {
            client.discover(now, server, name.map(ns), limit)
        };
        self.w.pump();
        id.unwrap()
    }

    /// The peers the last completed discover returned, sorted: the server
    /// starts each walk at a random place.
    fn found(&mut self) -> Vec<PeerId> {
        let events = self.events();
        let found = events.iter().rev().find_map(|e| match e {
            ClientEvent::Discovered { registrations, .. } => {
                Some(registrations.iter().map(|d| d.peer).collect::<Vec<_>>())
            }
            _ => None,
        });
        let mut found = found.unwrap_or_else(|| panic!("no Discovered event in {events:?}"));
        found.sort();
        found
    }

    fn events(&mut self) -> Vec<ClientEvent> {
        self.w.take_events(self.me)
    }

    fn server_sees(&mut self, name: &str) -> bool {
        let (server, me) = (self.server, self.me);
        self.w.holds(server, me, name)
    }

    /// Another peer registers at the server directly.
    fn other_registers(&mut self, peer: &TestPeer, name: &str, dialect: Dialect, ttl: Option<u64>) {
        let message = testing::register(name, peer.record(dialect), ttl);
        let answer = self.w.request(self.server, peer.id, message).unwrap();
        assert_eq!(answer.register_response.unwrap().status, Some(0));
    }

    fn other_unregisters(&mut self, peer: &TestPeer, name: &str) {
        assert!(self.w.request(self.server, peer.id, testing::unregister(name)).is_none());
    }

    fn at(&self, s: u64) -> Timestamp {
        Timestamp::from_secs(s)
    }
}

fn registered(events: &[ClientEvent]) -> usize {
    events.iter().filter(|e| matches!(e, ClientEvent::Registered { .. })).count()
}

/// The dialect of the record a REGISTER carries.
fn dialect_of(t: &ClientTransmit) -> Option<Dialect> {
    let record = t.message.register.as_ref()?.signed_peer_record.clone()?;
    let limits = crate::record::RecordLimits { max_bytes: 4096, max_addresses: 8 };
    Some(Record::parse(record, &limits).ok()?.dialect)
}

/// A register response with `status` and `ttl`.
fn register_answer(status: ResponseStatus, ttl: Option<u64>) -> proto::Message {
    proto::Message {
        r#type: Some(MessageType::RegisterResponse as i32),
        register_response: Some(proto::RegisterResponse {
            status: Some(status as i32),
            status_text: Some(format!("{status:?}")),
            ttl,
        }),
        ..Default::default()
    }
}

fn is_register(t: &ClientTransmit) -> bool {
    t.message.message_type() == Ok(MessageType::Register)
}

fn deliver() -> Fate {
    Fate::NOW
}
