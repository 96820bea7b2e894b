//! Which record each server gets: a ladder per server (rust-libp2p's
//! envelope, the standard one, the legacy `PeerInfo`), stepped down only on
//! evidence that the server rejects the record, never on a timeout or a lost
//! connection, and climbed again from the top on every new connection.
//!
//! Evidence is `E_INVALID_SIGNED_PEER_RECORD`, or a substream closed without
//! an answer right after a REGISTER written whole (how rust-libp2p's and
//! canvas-js's servers react to a record they cannot read). py-libp2p says
//! `E_NOT_AUTHORIZED` to an envelope, but so does any server over its
//! per-peer limit: that counts only while no REGISTER in the current
//! dialect has succeeded at that server.

use crate::client::config::RecordFlavour;
use crate::client::events::{Failure, RequestError};
use crate::proto::ResponseStatus;
use crate::record::Dialect;

/// What one server has shown of the dialects it reads.
#[derive(Debug, Default)]
pub(crate) struct ServerState {
    /// Position on the ladder.
    rung: usize,
    /// A REGISTER in the current dialect succeeded on this connection.
    confirmed: bool,
    /// The last connection to it closed.
    pub(crate) disconnected: bool,
    /// Whether it offers subscriptions, once known.
    pub(crate) subscribes: Option<bool>,
}

/// What a failed REGISTER means for the server's dialect.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not evidence: retry in the same dialect, with backoff if transient.
    Keep,
    /// Rejected: send it again at once in `next`.
    StepDown { next: Dialect },
    /// Rejected, and no dialect is left: the server reads none of ours.
    Exhausted,
}

impl ServerState {
    /// The dialect the next REGISTER goes out in.
    pub(crate) fn dialect(&self, flavour: RecordFlavour) -> Dialect {
        let ladder = flavour.ladder();
        ladder[self.rung.min(ladder.len() - 1)]
    }

    /// The server took a REGISTER in `sent`; true the first time on this
    /// connection, to say so once.
    pub(crate) fn accepted(&mut self, flavour: RecordFlavour, sent: Dialect) -> bool {
        if let Some(rung) = flavour.ladder().iter().position(|d| *d == sent) {
            self.rung = rung;
        }
        !std::mem::replace(&mut self.confirmed, true)
    }

    /// A REGISTER sent in `sent` failed with `error`.
    pub(crate) fn rejected(
        &mut self,
        flavour: RecordFlavour,
        sent: Dialect,
        error: &RequestError,
    ) -> Verdict {
        if sent != self.dialect(flavour) || !self.is_evidence(error) {
            // Not evidence, or an older dialect's answer: the ladder already moved.
            return Verdict::Keep;
        }
        let ladder = flavour.ladder();
        if self.rung + 1 < ladder.len() {
            self.rung += 1;
            self.confirmed = false;
            Verdict::StepDown { next: ladder[self.rung] }
        } else {
            // Start from the top again next time: the server may change.
            *self = ServerState { disconnected: self.disconnected, ..ServerState::default() };
            Verdict::Exhausted
        }
    }

    /// A new connection: probe from the top again.
    pub(crate) fn reconnected(&mut self) {
        *self = ServerState::default();
    }

    fn is_evidence(&self, error: &RequestError) -> bool {
        match error {
            RequestError::Refused {
                status: Ok(ResponseStatus::EInvalidSignedPeerRecord), ..
            } => true,
            RequestError::Refused { status: Ok(ResponseStatus::ENotAuthorized), .. }
            | RequestError::Transport(Failure::StreamClosed { written: true }) => !self.confirmed,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Flavour;

    const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);
    const STANDARD: Dialect = Dialect::Signed(Flavour::Standard);

    fn refused(status: ResponseStatus) -> RequestError {
        RequestError::Refused { status: Ok(status), text: String::new() }
    }

    #[test]
    fn the_ladder_steps_down_on_evidence_only_and_restarts_on_reconnect() {
        let auto = RecordFlavour::Auto;
        let mut server = ServerState::default();
        assert_eq!(server.dialect(auto), RUST);
        for not_evidence in [
            RequestError::Timeout,
            RequestError::Transport(Failure::Unreachable),
            RequestError::Transport(Failure::TimedOut),
            RequestError::Transport(Failure::StreamClosed { written: false }),
            refused(ResponseStatus::EUnavailable),
        ] {
            assert_eq!(server.rejected(auto, RUST, &not_evidence), Verdict::Keep, "{not_evidence}");
        }
        let closed = RequestError::Transport(Failure::StreamClosed { written: true });
        assert_eq!(server.rejected(auto, RUST, &closed), Verdict::StepDown { next: STANDARD });
        // A late answer to the rust REGISTER does not step twice.
        assert_eq!(server.rejected(auto, RUST, &closed), Verdict::Keep);
        let invalid = refused(ResponseStatus::EInvalidSignedPeerRecord);
        let next = Dialect::Legacy;
        assert_eq!(server.rejected(auto, STANDARD, &invalid), Verdict::StepDown { next });
        assert!(server.accepted(auto, Dialect::Legacy), "said once");
        assert!(!server.accepted(auto, Dialect::Legacy));
        server.reconnected();
        assert_eq!(server.dialect(auto), RUST);
    }

    #[test]
    fn not_authorized_is_evidence_only_until_the_dialect_has_worked() {
        let auto = RecordFlavour::Auto;
        let mut server = ServerState::default();
        assert!(server.accepted(auto, RUST));
        // Now it means the per-peer limit, not the dialect.
        let limit = refused(ResponseStatus::ENotAuthorized);
        assert_eq!(server.rejected(auto, RUST, &limit), Verdict::Keep);
        let mut fresh = ServerState::default();
        assert_eq!(fresh.rejected(auto, RUST, &limit), Verdict::StepDown { next: STANDARD });
    }

    #[test]
    fn a_fixed_flavour_has_no_ladder() {
        let mut server = ServerState::default();
        let invalid = refused(ResponseStatus::EInvalidSignedPeerRecord);
        let fixed = RecordFlavour::Standard;
        assert_eq!(server.dialect(fixed), STANDARD);
        assert_eq!(server.rejected(fixed, STANDARD, &invalid), Verdict::Exhausted);
        assert_eq!(server.dialect(fixed), STANDARD);
    }
}
