//! Requests answered, counted by type and status: what an operator graphs.

use crate::proto::{self, MessageType, ResponseStatus};

/// What a request asked for, as counted in [`RequestCounts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// REGISTER.
    Register,
    /// UNREGISTER.
    Unregister,
    /// DISCOVER.
    Discover,
    /// Anything else: a response type, the legacy DISCOVER_SUBSCRIBE, an
    /// unknown number.
    Other,
}

impl RequestKind {
    /// Every kind.
    pub const ALL: [RequestKind; 4] =
        [RequestKind::Register, RequestKind::Unregister, RequestKind::Discover, RequestKind::Other];

    /// `register`, `unregister`, `discover` or `other`.
    pub fn label(self) -> &'static str {
        match self {
            RequestKind::Register => "register",
            RequestKind::Unregister => "unregister",
            RequestKind::Discover => "discover",
            RequestKind::Other => "other",
        }
    }

    fn of(message_type: Result<MessageType, i32>) -> RequestKind {
        match message_type {
            Ok(MessageType::Register) => RequestKind::Register,
            Ok(MessageType::Unregister) => RequestKind::Unregister,
            Ok(MessageType::Discover) => RequestKind::Discover,
            _ => RequestKind::Other,
        }
    }
}

/// Column for a request with no response (UNREGISTER).
const NO_RESPONSE: usize = ResponseStatus::ALL.len();

/// Requests answered since the start, by kind and by the status sent
/// (`None`: a request with no response, which is UNREGISTER).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts([[u64; NO_RESPONSE + 1]; RequestKind::ALL.len()]);

impl RequestCounts {
    /// Requests of `kind` answered with `status` (`None`: not answered,
    /// because the request has no response).
    pub fn get(&self, kind: RequestKind, status: Option<ResponseStatus>) -> u64 {
        self.0[kind as usize][column(status)]
    }

    /// Every (kind, status, count) whose count is not zero.
    pub fn iter(&self) -> impl Iterator<Item = (RequestKind, Option<ResponseStatus>, u64)> + '_ {
        let statuses = ResponseStatus::ALL.map(Some).into_iter().chain([None]);
        RequestKind::ALL
            .into_iter()
            .flat_map(move |kind| statuses.clone().map(move |status| (kind, status)))
            .map(|(kind, status)| (kind, status, self.get(kind, status)))
            .filter(|&(_, _, n)| n > 0)
    }

    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.0.iter().flatten().sum()
    }

    /// Counts the answer to a request of `message_type`.
    pub(crate) fn count(
        &mut self,
        message_type: Result<MessageType, i32>,
        response: Option<&proto::Message>,
    ) {
        let status =
            response.and_then(|m| ResponseStatus::try_from(m.response_status().unwrap_or(0)).ok());
        self.0[RequestKind::of(message_type) as usize][column(status)] += 1;
    }
}

fn column(status: Option<ResponseStatus>) -> usize {
    status.map_or(NO_RESPONSE, |s| ResponseStatus::ALL.iter().position(|&a| a == s).unwrap_or(0))
}
