//! The behaviour's wiring on a manual clock: requests reach the core and
//! their answers their substreams, idle connections close, and a store's
//! commits release the answers they hold. No swarm, no sockets, no waiting.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p_swarm::{ConnectionId, NetworkBehaviour, NotifyHandler, ToSwarm};
use rendezvous_core::codec::{self, FrameDecoder};
use rendezvous_core::proto::{self, ResponseStatus, read_status};
use rendezvous_core::store::{Commit, StoreAction};
use rendezvous_core::testing::{self, TestPeer};
use rendezvous_core::{Dialect, Flavour};

use super::*;
use crate::clock::ManualClock;

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);

/// A store that commits only when the test says.
#[derive(Clone, Default)]
struct Held(Arc<Mutex<Vec<StoreAction>>>);

impl Store for Held {
    fn submit(&mut self, action: StoreAction) {
        self.0.lock().unwrap().push(action);
    }

    fn poll_commit(&mut self, _: &mut Context<'_>) -> Poll<Commit> {
        Poll::Pending
    }
}

fn config(idle: u64) -> Config {
    Config { idle_timeout: Some(Duration::from_secs(idle)), ..Config::default() }
}

fn start() -> ManualClock {
    ManualClock::at(Timestamp::from_secs(1_800_000_000))
}

fn connect(b: &mut Behaviour, n: usize, peer: PeerId) -> ConnectionId {
    let id = ConnectionId::new_unchecked(n);
    let local: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
    let remote: Multiaddr = format!("/ip4/10.0.0.{n}/tcp/5000").parse().unwrap();
    b.handle_established_inbound_connection(id, peer, &local, &remote).unwrap();
    id
}

/// Everything the behaviour wants done now.
fn actions(b: &mut Behaviour) -> Vec<ToSwarm<Event, FromBehaviour>> {
    let cx = &mut Context::from_waker(futures::task::noop_waker_ref());
    std::iter::from_fn(|| match b.poll(cx) {
        Poll::Ready(action) => Some(action),
        Poll::Pending => None,
    })
    .collect()
}

fn closed(actions: &[ToSwarm<Event, FromBehaviour>]) -> Vec<ConnectionId> {
    actions
        .iter()
        .filter_map(|a| match a {
            ToSwarm::CloseConnection { connection: CloseConnection::One(id), .. } => Some(*id),
            _ => None,
        })
        .collect()
}

fn answers(
    actions: Vec<ToSwarm<Event, FromBehaviour>>,
) -> Vec<(ConnectionId, u64, usize, Option<Bytes>)> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            ToSwarm::NotifyHandler {
                handler: NotifyHandler::One(c),
                event: FromBehaviour::Answers(event),
                ..
            } => Some((c, event)),
            _ => None,
        })
        .flat_map(|(c, event)| {
            let stream = event.stream.0;
            event.answers.into_iter().map(move |(i, answer)| (c, stream, i, answer.frame))
        })
        .collect()
}

fn request(b: &mut Behaviour, peer: PeerId, c: ConnectionId, stream: u64, bodies: &[Bytes]) {
    let bodies = bodies.iter().cloned().collect();
    let event = ToBehaviour::Request { stream: StreamId(stream), bodies, busy: false };
    b.on_connection_handler_event(peer, c, event);
}

/// A message's body, as the handler hands it over (no length prefix).
fn body(message: &proto::Message) -> Bytes {
    let frame = codec::frame(message);
    FrameDecoder::new(1 << 20).feed(&mut &frame[..]).unwrap().unwrap()
}

/// The message in an answer frame.
fn decoded(frame: &Option<Bytes>) -> proto::Message {
    let frame = frame.as_ref().expect("an answer with a frame");
    codec::decode_message(&FrameDecoder::new(1 << 20).feed(&mut &frame[..]).unwrap().unwrap())
        .unwrap()
}

#[test]
fn a_connection_that_carries_no_request_closes_after_the_idle_timeout() {
    let manual = start();
    let mut b = Behaviour::with_clock(config(60), Clock::manual(&manual)).unwrap();
    let (quiet, busy) =
        (connect(&mut b, 1, PeerId::random()), connect(&mut b, 2, PeerId::random()));
    let peer = TestPeer::new(1);
    for _ in 0..10 {
        manual.advance(Duration::from_secs(30));
        let body = body(&testing::discover(Some("x"), None, None));
        request(&mut b, peer.id, busy, 1, &[body]);
        let now = actions(&mut b);
        assert!(closed(&now).iter().all(|c| *c != busy), "a connection in use stays");
        if closed(&now).contains(&quiet) {
            return;
        }
    }
    panic!("the quiet connection was never closed");
}

#[test]
fn answers_to_a_batch_go_back_to_its_substream_with_their_indices() {
    let manual = start();
    let mut b = Behaviour::with_clock(config(60), Clock::manual(&manual)).unwrap();
    let peer = TestPeer::new(1);
    let c = connect(&mut b, 1, peer.id);
    let register = body(&testing::register("x", peer.record(RUST), None));
    let discover = body(&testing::discover(Some("x"), None, None));
    request(&mut b, peer.id, c, 7, &[register, discover]);
    let got = answers(actions(&mut b));
    assert_eq!(
        got.iter().map(|(c, s, i, _)| (*c, *s, *i)).collect::<Vec<_>>(),
        [(c, 7, 0), (c, 7, 1)]
    );
    let page = decoded(&got[1].3);
    assert_eq!(page.discover_response.unwrap().registrations.len(), 1);
}

#[test]
fn a_write_waiting_for_its_store_keeps_its_connection_open_and_its_answer_held() {
    let manual = start();
    let store = Held::default();
    let (mut b, _) = Behaviour::with_store_and_clock(
        config(60),
        store.clone(),
        Snapshot::default(),
        Clock::manual(&manual),
    )
    .unwrap();
    let peer = TestPeer::new(1);
    let c = connect(&mut b, 1, peer.id);
    let register = body(&testing::register("x", peer.record(RUST), None));
    request(&mut b, peer.id, c, 1, &[register]);
    assert!(answers(actions(&mut b)).is_empty(), "held until stored");
    manual.advance(Duration::from_secs(3600));
    assert!(closed(&actions(&mut b)).is_empty(), "a request in flight keeps it open");
    let submitted: [StoreAction; 1] = store.0.lock().unwrap().clone().try_into().unwrap();
    let [StoreAction::Put { id, registration, .. }] = submitted else { panic!("one put") };
    b.core.handle_commit(manual.now(), Commit::Stored { id, seq: registration.seq });
    b.route_core_outputs();
    let got = answers(actions(&mut b));
    let answer = decoded(&got[0].3);
    assert_eq!(read_status(answer.register_response.unwrap().status), Ok(ResponseStatus::Ok));
    manual.advance(Duration::from_secs(60));
    assert_eq!(closed(&actions(&mut b)), [c], "then it is quiet, and closes");
}
