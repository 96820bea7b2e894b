//! DISCOVER: one page of what the requester reads, from the cookie's
//! position, within the response frame budget.

use libp2p_identity::PeerId;

use super::{Event, Refusal, Server, namespace_refusal};
use crate::cookie::{Cookie, CookieError};
use crate::limits::REGISTRATION_OVERHEAD;
use crate::namespace::Namespace;
use crate::proto::{self, MessageType, ResponseStatus};

impl Server {
    pub(super) fn discover(
        &mut self,
        peer: PeerId,
        discover: proto::Discover,
    ) -> Result<proto::Message, Refusal> {
        let limits = &self.config.limits;
        let namespace = match discover.ns.as_deref() {
            None | Some("") => None,
            Some(ns) => {
                Some(Namespace::new(ns, limits.max_namespace_len).map_err(namespace_refusal)?)
            }
        };
        let limit = match discover.limit.unwrap_or(0) {
            0 => limits.default_discover_limit,
            limit => limit.min(limits.max_discover_limit),
        };
        let position = match discover.cookie.filter(|c| !c.is_empty()) {
            None => 0,
            Some(bytes) => self
                .check_cookie(&bytes, namespace.as_ref())
                .map_err(|err| Refusal::new(ResponseStatus::EInvalidCookie, err))?,
        };
        let reader = self.readers.get(&peer).unwrap_or(self.config.unknown_reader);
        let budget = self.config.limits.response_budget();
        let mut used = 0;
        let mut last = position;
        let mut registrations = Vec::new();
        for entry in self.registry.page(reader, namespace.as_ref(), position) {
            let bytes = entry
                .record
                .bytes_for(reader)
                .expect("the reader's index holds only records it can read");
            let cost = bytes.len() + entry.namespace.as_str().len() + REGISTRATION_OVERHEAD;
            if registrations.len() as u64 == limit || used + cost > budget {
                break;
            }
            used += cost;
            last = entry.seq;
            registrations.push(proto::Register {
                ns: Some(entry.namespace.as_str().to_owned()),
                signed_peer_record: Some(bytes.clone()),
                ttl: Some(entry.ttl_left(self.now)),
                other_records: Vec::new(),
            });
        }
        let count = registrations.len();
        let cookie = Cookie { position: last, namespace: namespace.clone() }.to_bytes();
        self.push_event(Event::Discovered { peer, namespace, count });
        Ok(proto::Message {
            r#type: Some(MessageType::DiscoverResponse as i32),
            discover_response: Some(proto::DiscoverResponse {
                registrations,
                cookie: Some(cookie),
                status: Some(ResponseStatus::Ok as i32),
                status_text: None,
            }),
            ..Default::default()
        })
    }

    fn check_cookie(
        &self,
        bytes: &[u8],
        namespace: Option<&Namespace>,
    ) -> Result<u64, CookieError> {
        let cookie = Cookie::parse(bytes, self.config.limits.max_namespace_len)?;
        // A position in all namespaces is a position in each of them too
        // (sequence numbers are global); rust-libp2p's server takes it.
        if cookie.namespace.is_some() && cookie.namespace.as_ref() != namespace {
            return Err(CookieError::WrongNamespace);
        }
        if cookie.position > self.registry.last_seq() {
            return Err(CookieError::Unknown);
        }
        Ok(cookie.position)
    }
}
