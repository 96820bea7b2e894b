//! Watching through a subscription: where a server offers
//! [`SUBSCRIPTION_TYPE`] (identify lists it), a watch subscribes instead of
//! polling, and the server pushes each arrival and departure as it happens
//! (docs/subscriptions.md).
//!
//! The subscription keeps the cookie of the last batch; when it ends (the
//! connection went, the server dropped it), the watch subscribes again
//! from there after a backoff, and the server sends only what changed. A
//! server found not to speak the protocol is polled, as before; so is one
//! whose support is unknown.

use std::collections::BTreeSet;

use bytes::Bytes;
use libp2p_identity::PeerId;

use super::cache::Inserted;
use super::{Client, ClientEvent, Failure, Kind, LostReason, RequestError, Timer, expect_type};
use super::{check_status, discover::discover_page};
use crate::namespace::Namespace;
use crate::proto::{self, MessageType};
use crate::request::RequestId;
use crate::server::SUBSCRIPTION_TYPE;
use crate::time::Timestamp;

/// A watch's subscription.
#[derive(Debug, Default)]
pub(crate) struct Following {
    /// The subscription open (or being opened).
    pub(crate) id: Option<RequestId>,
    /// The cookie of the last batch: where to come back from.
    position: Option<Bytes>,
    /// Peers of a full resend so far, until its last page.
    resend: Option<BTreeSet<PeerId>>,
    /// Subscriptions that ended in a row, for the backoff.
    ended: u32,
}

impl Client {
    /// Tells the client whether `server` offers subscriptions (identify
    /// lists [`SUBSCRIPTION_TYPE`] among its protocols). Watches of a
    /// server that does subscribe at once; the others poll.
    pub fn set_server_subscribes(&mut self, now: Timestamp, server: PeerId, subscribes: bool) {
        self.set_now(now);
        self.servers.entry(server).or_default().subscribes = Some(subscribes);
        if !subscribes {
            return;
        }
        let keys: Vec<_> = self.watches.keys().filter(|(s, _)| *s == server).cloned().collect();
        for (server, namespace) in keys {
            self.subscribe_watch(server, namespace);
        }
    }

    /// Whether a watch of `server` should subscribe rather than poll.
    pub(super) fn subscribes(&self, server: &PeerId) -> bool {
        self.config.subscribe && self.servers.get(server).and_then(|s| s.subscribes) == Some(true)
    }

    /// Opens a subscription for the watch of `namespace` at `server`, unless
    /// one is open, from the position it reached.
    pub(super) fn subscribe_watch(&mut self, server: PeerId, namespace: Namespace) {
        if !self.subscribes(&server) {
            return;
        }
        let Some(watch) = self.watches.get_mut(&(server, namespace.clone())) else { return };
        if watch.following.id.is_some() {
            return;
        }
        let position = watch.following.position.clone();
        let id = self.allocate_id();
        if let Some(watch) = self.watches.get_mut(&(server, namespace.clone())) {
            watch.following.id = Some(id);
        }
        let message = proto::Message {
            r#type: Some(MessageType::DiscoverSubscribe as i32),
            discover_subscribe: Some(proto::DiscoverSubscribe {
                supported_subscription_types: vec![SUBSCRIPTION_TYPE.to_owned()],
                ns: Some(namespace.to_string()),
                position,
            }),
            ..Default::default()
        };
        self.send(id, server, None, Kind::Subscribe { namespace }, message);
    }

    /// The answer to a `DISCOVER_SUBSCRIBE`: the subscription is open, and
    /// what follows on it goes to [`on_push`](Self::on_push).
    pub(super) fn on_subscribed(
        &mut self,
        id: RequestId,
        server: PeerId,
        namespace: Namespace,
        message: proto::Message,
    ) {
        let answer = expect_type(&message, MessageType::DiscoverSubscribeResponse).and_then(|()| {
            let body = message.discover_subscribe_response.unwrap_or_default();
            check_status(body.status, body.status_text)
        });
        match answer {
            Ok(()) => {
                self.subscribed.insert(id, (server, namespace));
            }
            Err(error) => self.subscription_ended(id, server, namespace, error),
        }
    }

    /// A batch (or a page of the first ones) arrived on subscription `id`.
    pub(super) fn on_push(&mut self, id: RequestId, message: proto::Message) {
        let Some((server, namespace)) = self.subscribed.get(&id).cloned() else { return };
        let page = match discover_page(message) {
            Ok(page) => page,
            Err(error) => return self.subscription_ended(id, server, namespace, error),
        };
        let key = (server, namespace.clone());
        let Some(watch) = self.watches.get_mut(&key) else { return };
        if page.full == Some(true) {
            watch.following.resend = Some(BTreeSet::new());
        }
        for gone in page.departures {
            let ns = match gone.ns.as_deref() {
                None | Some("") => Some(namespace.clone()),
                Some(ns) => Namespace::new(ns, self.config.max_namespace_len).ok(),
            };
            let peer = gone.id.and_then(|id| PeerId::from_bytes(&id).ok());
            let (Some(ns), Some(peer)) = (ns, peer) else { continue };
            if ns != namespace {
                continue; // not what this subscription follows
            }
            if let Some(gone) = self.cache.remove_found(server, &ns, &peer) {
                self.lost(gone, LostReason::Unregistered);
            }
            if let Some(resend) =
                self.watches.get_mut(&key).and_then(|w| w.following.resend.as_mut())
            {
                resend.remove(&peer);
            }
        }
        for entry in page.registrations {
            let Some(discovery) = self.parse_entry(Some(&namespace), entry) else { continue };
            if discovery.namespace != namespace {
                continue;
            }
            let peer = discovery.peer;
            let expires = self.now + discovery.ttl;
            if self.cache.insert(expires, server, discovery.clone()) == Inserted::New {
                let event = ClientEvent::PeerFound { request: None, server, discovery };
                self.events.push_back(event);
            }
            if let Some(resend) =
                self.watches.get_mut(&key).and_then(|w| w.following.resend.as_mut())
            {
                resend.insert(peer);
            }
        }
        let Some(cookie) = page.cookie.filter(|c| !c.is_empty()) else { return };
        let Some(watch) = self.watches.get_mut(&key) else { return };
        watch.following.position = Some(cookie);
        watch.following.ended = 0;
        if let Some(present) = watch.following.resend.take() {
            for gone in self.cache.retain_found(server, &namespace, &present) {
                self.lost(gone, LostReason::Unregistered);
            }
        }
    }

    /// Subscription `id` ended: it is tried again after a backoff (from the
    /// position reached), or, if the server does not speak the protocol,
    /// the watch polls.
    pub(super) fn subscription_ended(
        &mut self,
        id: RequestId,
        server: PeerId,
        namespace: Namespace,
        error: RequestError,
    ) {
        self.subscribed.remove(&id);
        // Whatever is left of its substream.
        self.cancels.push_back(id);
        if error == RequestError::Transport(Failure::Unsupported) {
            self.servers.entry(server).or_default().subscribes = Some(false);
        }
        let base = self.config.retry_base;
        let interval = self.config.discover_interval;
        let key = (server, namespace.clone());
        if let Some(watch) = self.watches.get_mut(&key)
            && watch.following.id == Some(id)
        {
            watch.following.id = None;
            watch.following.resend = None;
            watch.following.ended = watch.following.ended.saturating_add(1);
            let backoff = base.saturating_mul(1 << watch.following.ended.min(16)).min(interval);
            let again = self.now + backoff;
            if again < watch.timer {
                self.timers.cancel(watch.timer, Timer::Watch(server, namespace.clone()));
                watch.timer = again;
                self.timers.set(again, Timer::Watch(server, namespace.clone()));
            }
        }
        self.events.push_back(ClientEvent::RediscoverFailed { server, namespace, error });
    }

    /// Ends the subscription of a watch that stopped.
    pub(super) fn unsubscribe(&mut self, following: &Following) {
        if let Some(id) = following.id {
            self.subscribed.remove(&id);
            self.take_pending(id);
            self.cancels.push_back(id);
        }
    }

    /// The next subscription to close: its watch stopped, or it broke the
    /// protocol. Close the substream of that request id.
    pub fn poll_cancel(&mut self) -> Option<RequestId> {
        self.cancels.pop_front()
    }
}
