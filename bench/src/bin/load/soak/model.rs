//! What the soak expects: every key's state as its requests and answers
//! tell, and the judgement of a walk against it.

use std::time::{Duration, Instant};

use super::walk::Walk;
use super::{CHURN_POOL, Checks, Counts, EVIDENCE, GRACE, MARGIN};

/// One registration of the load: whose, and which namespace (`app-<slot>`
/// below the stable count, `churn-<slot - stable>` above).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct KeyId {
    pub(super) identity: usize,
    pub(super) slot: usize,
}

/// What the model knows of a key.
#[derive(Clone, Copy, Debug)]
enum State {
    /// Never registered.
    Never,
    /// Acknowledged, last at `acked`, held without a break since `since`
    /// (an answer's time) until at least `until` (the last acknowledged
    /// REGISTER's send time plus its TTL: Redis set the expiry after it was
    /// sent).
    Live { since: Instant, acked: Instant, until: Instant },
    /// An UNREGISTER is being written.
    Leaving,
    /// An UNREGISTER was written at `sent`, and nothing sent since.
    Gone { sent: Instant },
    /// An outcome the model cannot know.
    Unknown,
}

struct Key {
    state: State,
    /// Counts requests sent: unchanged across a walk means none was sent.
    version: u64,
    /// A REGISTER of it is waiting for its answer.
    registering: bool,
}

/// A REGISTER sent.
#[derive(Clone, Copy)]
pub(super) struct Begun {
    sent: Instant,
    /// The key was known absent: never registered, or unregistered at least
    /// [`MARGIN`] before.
    new: bool,
}

pub(super) enum Outcome {
    Ok { ttl: Duration },
    Refused { status: i32, text: String },
    Lost(String),
}

/// What a walk is held to, taken as it begins.
pub(super) struct Expected {
    at: Instant,
    /// Keys live and quiet: version, last acknowledged, live until.
    live: Vec<(KeyId, u64, Instant, Instant)>,
    /// Keys unregistered at least [`MARGIN`] before: version, when written.
    gone: Vec<(KeyId, u64, Instant)>,
}

/// A key a walk got wrong, watched until it settles.
#[derive(Clone, Copy)]
pub(super) struct Suspect {
    id: KeyId,
    version: u64,
    /// Not served though it should be (else served though it should not).
    missing: bool,
    /// When it should have become right: its last acknowledgment, or when
    /// its UNREGISTER was written.
    since: Instant,
    /// How long a missing key stays live.
    until: Option<Instant>,
}

/// Every key of every identity, and what came of the requests.
pub(super) struct Model {
    keys: Vec<Vec<Key>>,
    stable: usize,
    /// Identity `i` is connected to point `i % points`.
    points: usize,
    max_per_peer: usize,
    pub(super) counts: Counts,
    pub(super) checks: Checks,
}

impl Model {
    pub(super) fn new(
        identities: usize,
        points: usize,
        stable: usize,
        max_per_peer: usize,
    ) -> Model {
        let key = || Key { state: State::Never, version: 0, registering: false };
        Model {
            keys: (0..identities)
                .map(|_| (0..stable + CHURN_POOL).map(|_| key()).collect())
                .collect(),
            stable,
            points,
            max_per_peer,
            counts: Counts::default(),
            checks: Checks::default(),
        }
    }

    fn key(&mut self, id: KeyId) -> &mut Key {
        &mut self.keys[id.identity][id.slot]
    }

    /// Keeps `line` as evidence, the first [`EVIDENCE`] of each `kind`.
    pub(super) fn note(&mut self, kind: &'static str, line: String) {
        let noted = self.checks.noted.entry(kind).or_default();
        if *noted < EVIDENCE {
            *noted += 1;
            self.checks.evidence.push(line);
        }
    }

    fn problem(&mut self, line: String) {
        self.counts.first_problem.get_or_insert(line);
    }

    /// Lost, resurrected, over a limit, so far.
    pub(super) fn found(&self) -> (usize, usize, usize) {
        (self.checks.lost, self.checks.resurrected, self.checks.over())
    }

    /// Keys held live at `now`.
    pub(super) fn live(&self, now: Instant) -> usize {
        let live = |k: &&Key| matches!(k.state, State::Live { until, .. } if until > now);
        self.keys.iter().flatten().filter(live).count()
    }

    pub(super) fn begin_register(&mut self, id: KeyId, now: Instant) -> Begun {
        if id.slot < self.stable {
            self.counts.stable_registers += 1;
        } else {
            self.counts.churn_registers += 1;
        }
        let key = self.key(id);
        key.version += 1;
        key.registering = true;
        let new = match key.state {
            State::Never => true,
            State::Gone { sent } => now.duration_since(sent) >= MARGIN,
            _ => false,
        };
        if !matches!(key.state, State::Live { .. }) {
            key.state = State::Unknown;
        }
        Begun { sent: now, new }
    }

    /// Records a REGISTER's outcome at `now`; true if acknowledged.
    pub(super) fn registered(
        &mut self,
        id: KeyId,
        begun: Begun,
        outcome: Outcome,
        now: Instant,
    ) -> bool {
        self.key(id).registering = false;
        let ttl = match outcome {
            Outcome::Ok { ttl } => ttl,
            Outcome::Refused { status, text } => {
                *self.counts.refused.entry(status).or_default() += 1;
                self.problem(format!("REGISTER refused with status {status}: {text}"));
                return false;
            }
            Outcome::Lost(error) => {
                self.counts.lost += 1;
                self.problem(format!("REGISTER lost: {error}"));
                return false;
            }
        };
        self.counts.acknowledged += 1;
        let until = begun.sent + ttl;
        let key = self.key(id);
        key.state = match key.state {
            // Refreshed before it could expire: held without a break.
            State::Live { since, until: before, .. } if now < before => {
                State::Live { since, acked: now, until: until.max(before) }
            }
            _ => State::Live { since: now, acked: now, until },
        };
        if begun.new {
            self.check_limit(id, begun.sent, now);
        }
        true
    }

    /// A new key was acknowledged at `now`, sent at `sent`: the others the
    /// identity held through that span all counted when Redis took it.
    fn check_limit(&mut self, id: KeyId, sent: Instant, now: Instant) {
        let held = self.keys[id.identity]
            .iter()
            .enumerate()
            .filter(|&(slot, k)| {
                slot != id.slot
                    && matches!(k.state, State::Live { since, until, .. } if since <= sent && until > now + MARGIN)
            })
            .count();
        self.checks.most_held = self.checks.most_held.max(held + 1);
        if held + 1 > self.max_per_peer {
            self.checks.over_ack += 1;
            let ns = self.namespace(id.slot);
            self.note("over", format!(
                "over a limit: identity {} was answered OK for new {ns} while holding {held} others (--max-per-peer {})",
                id.identity, self.max_per_peer
            ));
        }
    }

    pub(super) fn begin_unregister(&mut self, id: KeyId) -> u64 {
        self.counts.unregisters += 1;
        let key = self.key(id);
        key.version += 1;
        key.state = State::Leaving;
        key.version
    }

    pub(super) fn unregistered(
        &mut self,
        id: KeyId,
        version: u64,
        written: Result<Instant, String>,
    ) {
        if let Err(e) = &written {
            self.counts.lost += 1;
            self.problem(format!("UNREGISTER not written: {e}"));
        }
        let key = self.key(id);
        if key.version == version {
            key.state = match written {
                Ok(sent) => State::Gone { sent },
                Err(_) => State::Unknown,
            };
        }
    }

    pub(super) fn discovered(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok { .. } => self.counts.acknowledged += 1,
            Outcome::Refused { status, text } => {
                *self.counts.refused.entry(*status).or_default() += 1;
                self.problem(format!("DISCOVER refused with status {status}: {text}"));
            }
            Outcome::Lost(error) => {
                self.counts.lost += 1;
                self.problem(format!("DISCOVER lost: {error}"));
            }
        }
    }

    /// What a walk beginning now is held to: keys acknowledged and with
    /// nothing in flight, and keys unregistered at least [`MARGIN`] ago.
    pub(super) fn expect(&self, now: Instant) -> Expected {
        let mut expected = Expected { at: now, live: Vec::new(), gone: Vec::new() };
        for (identity, keys) in self.keys.iter().enumerate() {
            for (slot, key) in keys.iter().enumerate() {
                let id = KeyId { identity, slot };
                match key.state {
                    _ if key.registering => {}
                    State::Live { acked, until, .. } => {
                        expected.live.push((id, key.version, acked, until))
                    }
                    State::Gone { sent } if now.duration_since(sent) >= MARGIN => {
                        expected.gone.push((id, key.version, sent));
                    }
                    _ => {}
                }
            }
        }
        expected
    }

    /// Holds point `p`'s walk to `expected`: counts what it is held to,
    /// judges its first page, and returns the keys it got wrong, to be
    /// watched by [`settle`](Self::settle) (which this first call to it
    /// may already confirm).
    pub(super) fn judge(
        &mut self,
        p: usize,
        expected: &Expected,
        walk: &Walk,
        ended: Instant,
    ) -> Vec<Suspect> {
        self.checks.walks += 1;
        let mut suspects = Vec::new();
        for &(id, version, acked, until) in &expected.live {
            if self.keys[id.identity][id.slot].version != version || until < ended + MARGIN {
                continue;
            }
            self.checks.held_live += 1;
            if !walk.served.contains(&id) {
                let until = Some(until);
                suspects.push(Suspect { id, version, missing: true, since: acked, until });
            }
        }
        for &(id, version, sent) in &expected.gone {
            if self.keys[id.identity][id.slot].version != version {
                continue;
            }
            self.checks.held_gone += 1;
            if walk.served.contains(&id) {
                suspects.push(Suspect { id, version, missing: false, since: sent, until: None });
            }
        }
        for (&identity, &n) in &walk.first_page {
            if n > self.max_per_peer {
                self.checks.over_page += 1;
                self.note(
                    "over",
                    format!(
                        "over a limit at point {p}: identity {identity} holds {n} in one page (--max-per-peer {})",
                        self.max_per_peer
                    ),
                );
            }
        }
        if walk.foreign > 0 {
            let line = format!("point {p}: {} registrations none of the load's", walk.foreign);
            self.note("foreign", line);
        }
        self.settle(p, &mut suspects, walk, expected.at, ended);
        suspects
    }

    /// Holds `suspects` to point `p`'s walk from `began` to `ended`: one
    /// that came right is late; one still wrong [`GRACE`] after it should
    /// have been right is lost or resurrected; one sent a request since, or
    /// near the end of its TTL, is left undecided.
    pub(super) fn settle(
        &mut self,
        p: usize,
        suspects: &mut Vec<Suspect>,
        walk: &Walk,
        began: Instant,
        ended: Instant,
    ) {
        let mut watching = Vec::with_capacity(suspects.len());
        for suspect in suspects.drain(..) {
            let Suspect { id, version, missing, since, until } = suspect;
            let changed = self.keys[id.identity][id.slot].version != version;
            if changed || until.is_some_and(|until| until < ended + MARGIN) {
                self.checks.undecided += 1;
                continue;
            }
            let late = ended.duration_since(since);
            if walk.served.contains(&id) == missing {
                let (count, most) = if missing {
                    (&mut self.checks.late_live, &mut self.checks.most_late_live)
                } else {
                    (&mut self.checks.late_gone, &mut self.checks.most_late_gone)
                };
                *count += 1;
                *most = (*most).max(late);
                continue;
            }
            if began < since + GRACE {
                watching.push(suspect);
                continue;
            }
            let ns = self.namespace(id.slot);
            let whose =
                format!("identity {} (of point {}) {ns}", id.identity, id.identity % self.points);
            let after = began.duration_since(since).as_secs_f64();
            if missing {
                self.checks.lost += 1;
                let line = format!(
                    "lost at point {p}: {whose}, not served by a walk that began {after:.2} s after its last acknowledgment ({} pages, {} entries) though live {:.2} s more",
                    walk.pages,
                    walk.entries,
                    until.map_or(0.0, |until| until.duration_since(ended).as_secs_f64()),
                );
                self.note("lost", line);
            } else {
                self.checks.resurrected += 1;
                let line = format!(
                    "resurrected at point {p}: {whose}, served by a walk that began {after:.2} s after its UNREGISTER was written"
                );
                self.note("resurrected", line);
            }
        }
        *suspects = watching;
    }

    fn namespace(&self, slot: usize) -> String {
        namespace(slot, self.stable)
    }
}

pub(super) fn namespace(slot: usize, stable: usize) -> String {
    if slot < stable { format!("app-{slot}") } else { format!("churn-{}", slot - stable) }
}
