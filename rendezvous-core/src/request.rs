//! Request ids: how an answer, an event or a commit finds its request.

/// Identifies one request so that its answer (or completion event) can be
/// matched to it. The server's adapter picks them for inbound requests; the
/// client core picks them for its commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);
