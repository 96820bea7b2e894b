//! What peers cause, summed up: refused requests and rejected substreams
//! are counted and reported once per interval, so that a peer cannot make
//! the point write a line per request (each is still logged at DEBUG).

use std::collections::BTreeMap;

use rendezvous_libp2p::core::proto::{MessageType, ResponseStatus};

/// Counts since the last report.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    refused: BTreeMap<(MessageType, ResponseStatus), u64>,
    rejected: BTreeMap<&'static str, u64>,
}

impl Summary {
    /// A request of `kind` was answered `status`.
    pub(crate) fn refused(&mut self, kind: MessageType, status: ResponseStatus) {
        *self.refused.entry((kind, status)).or_default() += 1;
    }

    /// A substream was rejected for `reason`.
    pub(crate) fn rejected(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_default() += 1;
    }

    /// One line saying what happened since the last, if anything did; the
    /// counts start again.
    pub(crate) fn take_line(&mut self) -> Option<String> {
        let refused = std::mem::take(&mut self.refused);
        let rejected = std::mem::take(&mut self.rejected);
        let mut parts = Vec::new();
        if !refused.is_empty() {
            let total: u64 = refused.values().sum();
            let each: Vec<String> = refused
                .iter()
                .map(|((kind, status), n)| {
                    let kind = format!("{kind:?}").to_uppercase();
                    format!("{kind} {} ×{n}", status.label().to_uppercase())
                })
                .collect();
            parts.push(format!("refused {total} requests ({})", each.join(", ")));
        }
        if !rejected.is_empty() {
            let total: u64 = rejected.values().sum();
            let each: Vec<String> =
                rejected.iter().map(|(reason, n)| format!("{reason} ×{n}")).collect();
            parts.push(format!("rejected {total} substreams ({})", each.join(", ")));
        }
        if parts.is_empty() {
            return None;
        }
        let mut line = parts.join("; ");
        line.replace_range(..1, &line[..1].to_uppercase());
        Some(format!("{line} since the last report (each at -v)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_of_refusals_make_one_line() {
        let mut summary = Summary::default();
        assert_eq!(summary.take_line(), None);
        for _ in 0..4990 {
            summary.refused(MessageType::Register, ResponseStatus::ENotAuthorized);
        }
        for _ in 0..10 {
            summary.refused(MessageType::Discover, ResponseStatus::EInvalidCookie);
        }
        summary.rejected("malformed");
        let line = summary.take_line().unwrap();
        assert_eq!(
            line,
            "Refused 5000 requests (REGISTER E_NOT_AUTHORIZED ×4990, DISCOVER E_INVALID_COOKIE ×10); \
             rejected 1 substreams (malformed ×1) since the last report (each at -v)"
        );
        assert_eq!(summary.take_line(), None, "the counts start again");
    }
}
