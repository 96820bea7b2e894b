//! The record-dialect ladder, against servers that read one dialect only.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;

/// A py-libp2p-like server: reads any envelope as a PeerInfo with the wrong
/// id and says E_NOT_AUTHORIZED.
fn py_like() -> Box<dyn FnMut(&testing::Sent<'_>) -> Fate> {
    Box::new(|sent| match dialect_of(sent.transmit) {
        Some(Dialect::Signed(_)) => {
            Fate::Forge(Box::new(register_answer(ResponseStatus::ENotAuthorized, None)))
        }
        _ => deliver(),
    })
}

#[test]
fn a_server_refusing_envelopes_is_stepped_down_to_legacy_and_remembered() {
    let mut s = Setup::new(ClientConfig::default());
    s.w.network = py_like();
    let id = s.register("chat", None);
    let server = s.server;
    let events = s.events();
    let refused: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::FlavourRefused { dialect, next, .. } => Some((*dialect, *next)),
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec![(RUST, Some(STANDARD)), (STANDARD, Some(Dialect::Legacy))]);
    assert!(events.contains(&ClientEvent::FlavourAccepted { server, dialect: Dialect::Legacy }));
    assert!(
        events.iter().any(|e| matches!(e, ClientEvent::Registered { request: Some(r), dialect: Dialect::Legacy, .. } if *r == id)),
        "{events:?}"
    );
    assert!(s.server_sees("chat"));
    s.register("other", None);
    let events = s.events();
    assert_eq!(events.len(), 1, "no refusal again: the server's dialect is known: {events:?}");
    assert_eq!(registered(&events), 1);
}

#[test]
fn a_standard_only_server_that_closes_the_stream_gets_the_standard_envelope() {
    let mut s = Setup::new(ClientConfig::default());
    // canvas-js's server aborts the substream on a record it cannot verify.
    let ids = Rc::new(RefCell::new(Vec::new()));
    let seen = ids.clone();
    s.w.network = Box::new(move |sent| {
        seen.borrow_mut().push(sent.transmit.request_id);
        match dialect_of(sent.transmit) {
            Some(RUST) | Some(Dialect::Legacy) => {
                Fate::Fail(Failure::StreamClosed { written: true })
            }
            _ => deliver(),
        }
    });
    let id = s.register("chat", None);
    let events = s.events();
    assert!(
        events.iter().any(|e| matches!(e, ClientEvent::Registered { request: Some(r), dialect: STANDARD, .. } if *r == id)),
        "{events:?}"
    );
    assert_eq!(*ids.borrow(), vec![id, id], "the resent REGISTER keeps the command's id");
    // The standard REGISTER carried the rust envelope too; a server of ours
    // serves both.
    let page =
        s.w.request(s.server, TestPeer::new(9).id, testing::discover(Some("chat"), None, None));
    let served =
        page.unwrap().discover_response.unwrap().registrations[0].signed_peer_record.clone();
    assert_eq!(served, Some(TestPeer::new(1).record(RUST)));
}

#[test]
fn a_timeout_or_a_lost_connection_never_changes_the_dialect() {
    let mut s = Setup::new(ClientConfig::default());
    let failures = Rc::new(RefCell::new(vec![
        Fate::Fail(Failure::Unreachable),
        Fate::LoseAnswer,
        Fate::Fail(Failure::TimedOut),
        Fate::Fail(Failure::StreamClosed { written: false }),
    ]));
    let dialects = Rc::new(RefCell::new(Vec::new()));
    let (left, sent_in) = (failures.clone(), dialects.clone());
    s.w.network = Box::new(move |sent| {
        sent_in.borrow_mut().extend(dialect_of(sent.transmit));
        left.borrow_mut().pop().unwrap_or(Fate::NOW)
    });
    s.register("chat", None);
    s.w.advance(secs(3600));
    assert!(s.server_sees("chat"));
    assert!(dialects.borrow().iter().all(|d| *d == RUST), "{:?}", dialects.borrow());
    assert_eq!(dialects.borrow().len(), 5);
    assert!(!s.events().iter().any(|e| matches!(e, ClientEvent::FlavourRefused { .. })));
}

#[test]
fn a_server_reading_none_of_our_dialects_fails_the_registration_and_is_probed_again_later() {
    let mut s = Setup::new(ClientConfig::default());
    // rust-libp2p's server closes the stream on a request it cannot decode.
    s.w.network = Box::new(|sent| {
        match sent.transmit.message.register.as_ref().and_then(|r| r.ns.as_deref()) {
            Some("bad") => Fate::Fail(Failure::StreamClosed { written: true }),
            _ => deliver(),
        }
    });
    let id = s.register("bad", None);
    let events = s.events();
    assert!(
        matches!(events.last(), Some(ClientEvent::RegisterFailed { request: Some(r), retry_in: None, .. }) if *r == id),
        "{events:?}"
    );
    s.register("good", None);
    let events = s.events();
    assert!(
        events.iter().any(|e| matches!(e, ClientEvent::Registered { dialect: RUST, .. })),
        "{events:?}"
    );
}

#[test]
fn the_ladder_is_climbed_again_after_a_reconnect() {
    let mut s = Setup::new(ClientConfig::default());
    s.w.network = py_like();
    s.register("chat", None);
    s.events();
    s.w.network = Box::new(|_| deliver()); // the server was upgraded meanwhile
    let (now, server) = (s.w.now, s.server);
    s.client().handle_disconnected(now, server);
    s.client().handle_connected(now, server);
    s.w.pump();
    let events = s.events();
    assert!(
        events.iter().any(|e| matches!(e, ClientEvent::Registered { dialect: RUST, .. })),
        "{events:?}"
    );
}

#[test]
fn a_fixed_record_flavour_is_all_that_is_sent() {
    let config = ClientConfig { record_flavour: RecordFlavour::Legacy, ..ClientConfig::default() };
    let mut s = Setup::new(config);
    let sent = Rc::new(RefCell::new(Vec::new()));
    let log = sent.clone();
    s.w.network = Box::new(move |t| {
        let register = t.transmit.message.register.clone();
        log.borrow_mut().extend(register.map(|r| (dialect_of(t.transmit), r.other_records.len())));
        deliver()
    });
    s.register("chat", None);
    assert_eq!(*sent.borrow(), vec![(Some(Dialect::Legacy), 0)]);
    assert!(s.server_sees("chat"));
}
