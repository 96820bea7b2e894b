//! Discovery: walks from a saved cookie (one page, or every page), watches
//! that rediscover a namespace periodically, and the cache of peers found,
//! whose arrivals and departures are reported.
//!
//! A walk carries its own cookie: it starts from the one saved for its
//! (server, namespace), follows the server's, and saves the last one in a
//! bounded map that forgets the cookie used least recently. A cookie the
//! server no longer takes restarts the walk once, from the beginning; a peer
//! is reported once per walk whatever the server repeats. Entries without a
//! namespace (go-libp2p-rendezvous servers leave it out of a namespaced
//! DISCOVER) belong to the namespace asked for.
//!
//! A watch walks what is new since its last cookie every
//! [`discover_interval`](crate::ClientConfig::discover_interval), and every
//! [`full_discover_every`](crate::ClientConfig::full_discover_every)th time
//! the whole namespace, to learn who left: peers it no longer finds are
//! reported [`LostReason::Unregistered`]; peers whose TTL runs out before
//! that, [`LostReason::Expired`](super::LostReason::Expired). Its first
//! round walks the whole namespace too, and while the last whole walk
//! fitted in one page, every round does: a small namespace costs no more
//! that way, and a departure shows within two intervals.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::PeerId;

use super::cache::Inserted;
use super::{
    Client, ClientEvent, CommandError, Discovery, Kind, LostReason, RequestError, Timer,
    check_status, expect_type,
};
use crate::namespace::Namespace;
use crate::proto::{self, MessageType, ResponseStatus};
use crate::record::Record;
use crate::request::RequestId;
use crate::time::Timestamp;

/// One discovery, page after page.
#[derive(Debug)]
pub(crate) struct Walk {
    namespace: Option<Namespace>,
    limit: Option<u64>,
    /// Follow cookies to the last page, rather than stop after one.
    all: bool,
    /// The cookie the next page is asked with.
    cookie: Option<Bytes>,
    /// It restarted once after the server refused its cookie.
    restarted: bool,
    pages: usize,
    found: Vec<Discovery>,
    seen: BTreeSet<(Namespace, PeerId)>,
    skipped: usize,
    /// Pages that held a registration.
    filled: usize,
    /// For a watch: whether this round walks the whole namespace.
    watch: Option<bool>,
}

/// A namespace watched at one server.
#[derive(Debug)]
pub(crate) struct Watch {
    /// Its subscription, where the server offers them.
    pub(super) following: super::subscribe::Following,
    rounds: u32,
    /// A round is walking.
    busy: bool,
    /// The last whole walk fitted in one page (or none has run yet): the
    /// next round walks the whole namespace again.
    small: bool,
    pub(super) timer: Timestamp,
}

impl Client {
    /// Asks `server` for one page of `namespace` (`None`: all namespaces),
    /// continuing from the cookie of the previous discover of the same query,
    /// so only what is new comes back.
    pub fn discover(
        &mut self,
        now: Timestamp,
        server: PeerId,
        namespace: Option<Namespace>,
        limit: Option<u64>,
    ) -> Result<RequestId, CommandError> {
        self.start_walk(now, server, namespace, limit, false)
    }

    /// Like [`discover`](Self::discover), but follows cookies until the
    /// server returns an empty page (at most
    /// [`ClientConfig::max_discover_pages`](crate::ClientConfig::max_discover_pages)),
    /// and completes with everything.
    pub fn discover_all(
        &mut self,
        now: Timestamp,
        server: PeerId,
        namespace: Option<Namespace>,
        limit: Option<u64>,
    ) -> Result<RequestId, CommandError> {
        self.start_walk(now, server, namespace, limit, true)
    }

    /// Rediscovers `namespace` at `server` every
    /// [`discover_interval`](crate::ClientConfig::discover_interval), from
    /// the saved cookie, reporting each peer that appears
    /// ([`ClientEvent::PeerFound`]) and each that goes
    /// ([`ClientEvent::PeerLost`]), until [`unwatch`](Self::unwatch).
    pub fn watch(
        &mut self,
        now: Timestamp,
        server: PeerId,
        namespace: Namespace,
    ) -> Result<(), CommandError> {
        self.set_now(now);
        self.check_namespace(Some(&namespace))?;
        let key = (server, namespace);
        if self.watches.contains_key(&key) {
            return Ok(());
        }
        if self.watches.len() >= self.config.max_watches {
            return Err(CommandError::TooManyWatches(self.config.max_watches));
        }
        let timer = self.now + self.config.discover_interval;
        self.timers.set(timer, Timer::Watch(key.0, key.1.clone()));
        let following = Default::default();
        let watch = Watch { following, rounds: 0, busy: false, small: true, timer };
        self.watches.insert(key.clone(), watch);
        self.subscribe_watch(key.0, key.1);
        Ok(())
    }

    /// Stops watching `namespace` at `server`.
    pub fn unwatch(&mut self, server: PeerId, namespace: Namespace) {
        if let Some(watch) = self.watches.remove(&(server, namespace.clone())) {
            self.timers.cancel(watch.timer, Timer::Watch(server, namespace));
            self.unsubscribe(&watch.following);
        }
    }

    fn start_walk(
        &mut self,
        now: Timestamp,
        server: PeerId,
        namespace: Option<Namespace>,
        limit: Option<u64>,
        all: bool,
    ) -> Result<RequestId, CommandError> {
        self.set_now(now);
        self.check_pending()?;
        self.check_namespace(namespace.as_ref())?;
        let id = self.allocate_id();
        let cookie = self.cookies.get_mut(&(server, namespace.clone())).cloned();
        let walk = Walk::new(namespace, limit, all, cookie, None);
        self.send_page(id, server, Some(id), walk);
        Ok(id)
    }

    /// A watch is due: walks what is new, or everything every so often.
    pub(super) fn on_watch_timer(&mut self, server: PeerId, namespace: Namespace) {
        let key = (server, namespace);
        let interval = self.config.discover_interval;
        let every = self.config.full_discover_every;
        let Some(watch) = self.watches.get_mut(&key) else {
            return;
        };
        watch.timer = self.now + interval;
        self.timers.set(watch.timer, Timer::Watch(key.0, key.1.clone()));
        if watch.busy || watch.following.id.is_some() {
            return; // the last round is still walking, or a subscription follows
        }
        if self.subscribes(&server) {
            return self.subscribe_watch(key.0, key.1);
        }
        let Some(watch) = self.watches.get_mut(&key) else {
            return;
        };
        watch.busy = true;
        watch.rounds += 1;
        let full = watch.small || watch.rounds.is_multiple_of(every);
        let cookie =
            if full { None } else { self.cookies.get_mut(&(server, Some(key.1.clone()))).cloned() };
        let walk = Walk::new(Some(key.1), None, true, cookie, Some(full));
        let id = self.allocate_id();
        self.send_page(id, server, None, walk);
    }

    fn send_page(&mut self, id: RequestId, server: PeerId, command: Option<RequestId>, walk: Walk) {
        let message = proto::Message {
            r#type: Some(MessageType::Discover as i32),
            discover: Some(proto::Discover {
                ns: walk.namespace.as_ref().map(ToString::to_string),
                limit: walk.limit,
                cookie: walk.cookie.clone(),
            }),
            ..Default::default()
        };
        self.send(id, server, command, Kind::Discover(Box::new(walk)), message);
    }

    /// A page arrived for walk `id`.
    pub(super) fn on_page(
        &mut self,
        id: RequestId,
        server: PeerId,
        command: Option<RequestId>,
        mut walk: Walk,
        message: proto::Message,
    ) {
        let key = (server, walk.namespace.clone());
        let page = match discover_page(message) {
            Ok(page) => page,
            Err(RequestError::Refused { status: Ok(ResponseStatus::EInvalidCookie), .. })
                if walk.cookie.is_some() && !walk.restarted =>
            {
                // The server forgot us (a restart) or cannot read its old
                // cookie: start over, once, under the same request.
                self.cookies.remove(&key);
                walk.cookie = None;
                walk.restarted = true;
                self.send_page(id, server, command, walk);
                return;
            }
            Err(error) => return self.on_walk_failed(server, command, walk, error),
        };
        let empty = page.registrations.is_empty();
        match page.cookie.filter(|c| !c.is_empty()) {
            Some(cookie) => {
                self.cookies.insert(key, cookie.clone());
                walk.cookie = Some(cookie);
            }
            // An empty cookie means "start over" (py-libp2p's last page).
            None => {
                self.cookies.remove(&key);
                walk.cookie = None;
            }
        }
        for entry in page.registrations {
            self.take_entry(server, command, &mut walk, entry);
        }
        walk.pages += 1;
        walk.filled += usize::from(!empty);
        let more = walk.all && !empty && walk.cookie.is_some();
        if more && walk.pages < self.config.max_discover_pages {
            return self.send_page(id, server, command, walk);
        }
        let complete = empty || walk.cookie.is_none();
        self.finish_walk(server, command, walk, complete);
    }

    /// One entry of a page: parsed, cached, reported if new.
    fn take_entry(
        &mut self,
        server: PeerId,
        command: Option<RequestId>,
        walk: &mut Walk,
        entry: proto::Register,
    ) {
        let Some(discovery) = self.parse_entry(walk.namespace.as_ref(), entry) else {
            walk.skipped += 1;
            return;
        };
        let expires = self.now + discovery.ttl;
        let inserted = self.cache.insert(expires, server, discovery.clone());
        if !walk.seen.insert((discovery.namespace.clone(), discovery.peer)) {
            return; // repeated within this walk: reported already
        }
        if inserted == Inserted::New {
            let event =
                ClientEvent::PeerFound { request: command, server, discovery: discovery.clone() };
            self.events.push_back(event);
        }
        if walk.watch.is_none() {
            walk.found.push(discovery);
        }
    }

    pub(super) fn parse_entry(
        &self,
        asked: Option<&Namespace>,
        entry: proto::Register,
    ) -> Option<Discovery> {
        let namespace = match entry.ns.as_deref() {
            None | Some("") => asked?.clone(),
            Some(ns) => Namespace::new(ns, self.config.max_namespace_len).ok()?,
        };
        let record = Record::parse(entry.signed_peer_record?, &self.config.record_limits).ok()?;
        let ttl = match entry.ttl.unwrap_or(0) {
            0 => super::config::DEFAULT_TTL,
            secs => Duration::from_secs(secs),
        };
        Some(Discovery {
            peer: record.peer?,
            addresses: record.addresses,
            namespace,
            ttl: ttl.min(self.config.max_ttl),
            record: record.bytes,
            dialect: record.dialect,
        })
    }

    fn finish_walk(
        &mut self,
        server: PeerId,
        command: Option<RequestId>,
        walk: Walk,
        complete: bool,
    ) {
        if let Some(full) = walk.watch {
            let Some(namespace) = walk.namespace else {
                return;
            };
            let small = full && complete && walk.filled <= 1;
            if full && complete {
                let present: BTreeSet<PeerId> = walk.seen.iter().map(|(_, p)| *p).collect();
                for gone in self.cache.retain_found(server, &namespace, &present) {
                    self.lost(gone, LostReason::Unregistered);
                }
            }
            if let Some(watch) = self.watches.get_mut(&(server, namespace)) {
                watch.busy = false;
                if full {
                    watch.small = small;
                }
            }
            return;
        }
        if let Some(request) = command {
            self.events.push_back(ClientEvent::Discovered {
                request,
                server,
                namespace: walk.namespace,
                registrations: walk.found,
                skipped: walk.skipped,
            });
        }
    }

    pub(super) fn on_walk_failed(
        &mut self,
        server: PeerId,
        command: Option<RequestId>,
        walk: Walk,
        error: RequestError,
    ) {
        if walk.watch.is_some() {
            let Some(namespace) = walk.namespace else {
                return;
            };
            if let Some(watch) = self.watches.get_mut(&(server, namespace.clone())) {
                watch.busy = false;
            }
            self.events.push_back(ClientEvent::RediscoverFailed { server, namespace, error });
            return;
        }
        if let Some(request) = command {
            let namespace = walk.namespace;
            self.events.push_back(ClientEvent::DiscoverFailed {
                request,
                server,
                namespace,
                error,
            });
        }
    }
}

impl Walk {
    fn new(
        namespace: Option<Namespace>,
        limit: Option<u64>,
        all: bool,
        cookie: Option<Bytes>,
        watch: Option<bool>,
    ) -> Walk {
        Walk {
            namespace,
            limit,
            all,
            cookie,
            restarted: false,
            pages: 0,
            found: Vec::new(),
            seen: BTreeSet::new(),
            skipped: 0,
            filled: 0,
            watch,
        }
    }
}

pub(super) fn discover_page(
    message: proto::Message,
) -> Result<proto::DiscoverResponse, RequestError> {
    expect_type(&message, MessageType::DiscoverResponse)?;
    let mut body = message.discover_response.unwrap_or_default();
    check_status(body.status, body.status_text.take())?;
    Ok(body)
}
