//! A full walk of one point: every namespace, pages of 1000, cookies
//! followed to an empty page, each registration read back to its key.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::Bytes;
use libp2p::PeerId;
use rendezvous_core::record::{Record, RecordLimits};
use rendezvous_core::{proto, testing};

use super::driver::ask;
use super::model::KeyId;
use super::{CHURN_POOL, WALK_LIMIT, WALK_PAGE};
use crate::conn::Conn;

/// Which identity and slot a served registration is.
#[derive(Default)]
pub(super) struct Whose {
    pub(super) records: BTreeMap<Bytes, usize>,
    pub(super) peers: BTreeMap<PeerId, usize>,
    pub(super) stable: usize,
}

impl Whose {
    fn key(&self, registration: &proto::Register) -> Option<KeyId> {
        let bytes = registration.signed_peer_record.clone().unwrap_or_default();
        let identity = match self.records.get(&bytes) {
            Some(&i) => i,
            // Served in another encoding than ours: read whose it is.
            None => {
                let limits = RecordLimits { max_bytes: 64 * 1024, max_addresses: 64 };
                *self.peers.get(&Record::parse(bytes, &limits).ok()?.peer?)?
            }
        };
        let (offset, count, k) = match registration.ns.as_deref()?.split_once('-')? {
            ("app", k) => (0, self.stable, k),
            ("churn", k) => (self.stable, CHURN_POOL, k),
            _ => return None,
        };
        let k = k.parse::<usize>().ok().filter(|&k| k < count)?;
        Some(KeyId { identity, slot: offset + k })
    }
}

/// What a walk served.
#[derive(Default)]
pub(super) struct Walk {
    pub(super) served: BTreeSet<KeyId>,
    /// Keys per identity in the first page.
    pub(super) first_page: BTreeMap<usize, usize>,
    /// Registrations served, repeats included.
    pub(super) entries: usize,
    /// Pages with registrations.
    pub(super) pages: usize,
    /// Registrations that are none of the load's.
    pub(super) foreign: usize,
}

/// Every namespace, pages of [`WALK_PAGE`], following cookies until an
/// empty page.
pub(super) async fn walk(watcher: &Conn, whose: &Whose) -> Result<Walk, String> {
    let mut control = watcher.control.clone();
    let started = Instant::now();
    let mut walk = Walk::default();
    let mut cookie = None;
    loop {
        let n = walk.pages;
        let request = testing::discover(None, Some(WALK_PAGE), cookie.take());
        let reply = ask(&mut control, watcher.server, &request)
            .await
            .map_err(|e| format!("page {n}: {e}"))?;
        let page = reply.discover_response.ok_or(format!("page {n}: not a discover response"))?;
        if page.status.unwrap_or(0) != 0 {
            return Err(format!(
                "page {n} refused with status {:?}: {}",
                page.status,
                page.status_text.unwrap_or_default()
            ));
        }
        if page.registrations.is_empty() {
            return Ok(walk);
        }
        let mut here = BTreeSet::new();
        for registration in &page.registrations {
            walk.entries += 1;
            match whose.key(registration) {
                Some(key) => {
                    walk.served.insert(key);
                    here.insert(key);
                }
                None => walk.foreign += 1,
            }
        }
        // The first page is atomic: what it holds was held at once.
        if n == 0 {
            for key in here {
                *walk.first_page.entry(key.identity).or_default() += 1;
            }
        }
        walk.pages += 1;
        cookie = Some(page.cookie.ok_or(format!("page {n} without a cookie"))?);
        if started.elapsed() > WALK_LIMIT {
            return Err(format!("no empty page after {} pages in {WALK_LIMIT:?}", walk.pages));
        }
    }
}
