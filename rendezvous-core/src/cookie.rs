//! Stateless discovery cookies.
//!
//! A cookie is 8 bytes followed by the namespace in UTF-8, empty for "all
//! namespaces". That is exactly the layout rust-libp2p's client parses, so
//! its clients can page through our server. The server keeps no memory per
//! cookie: the 8 bytes are all it needs to continue.
//!
//! # A walk, and what the 8 bytes say about it
//! A DISCOVER without a cookie starts a *walk* at a random position `start`
//! (see [`DiscoverStart`](crate::DiscoverStart)). The walk has two phases:
//! 1. the registrations at or below `start`, newest first;
//! 2. then those above `start`, oldest first, which is the plain walk in
//!    registration order from `start` and so also takes in whatever is
//!    registered while the walk goes on (new registrations, and a refresh,
//!    get a higher position than everything).
//!
//! Every registration live when the walk starts is on one side of `start`,
//! so it is served exactly once; what arrives later is served in phase 2.
//!
//! The 8 bytes, read as a big-endian `u64` ([`Cookie::position`]):
//!
//! | top bit | the other 63 bits | continue with |
//! |---|---|---|
//! | 0 | the last position served | phase 2: what is after it, oldest first |
//! | 1 | `start` modulo 2³¹ (31 bits), then `start + 1 − below` (32 bits) | phase 1: what is below `below`, newest first, then phase 2 from `start` |
//!
//! A phase-2 cookie is the cookie of every earlier version of this server
//! (and of a server set to serve in registration order), so an old cookie
//! keeps its meaning: everything after its position, in registration
//! order. Positions never reach 2⁶³, so an old cookie never has its top bit
//! set.
//!
//! Two full positions do not fit in 63 bits, so a phase-1 cookie carries
//! `start`'s low 31 bits and the distance from `start` down to the cursor
//! `below` (the last position served, or `start + 1` before any). The
//! server puts `start` back together as the value with those low bits
//! nearest below the highest position it has issued ([`resolve`](Cookie::resolve)
//! says exactly where), which is right as long as fewer than 2³¹ − 2²⁴
//! (2.1 billion) positions were issued since the walk began, and the walk
//! never starts more than 2³² − 1 positions above the lowest registration
//! it will serve, so the distance always fits. Both hold with plenty to
//! spare where positions are counted densely; after a restart that skipped
//! ahead (an in-memory point starts at the clock in microseconds), a
//! phase-1 cookie from before it is most likely read as pointing before
//! everything, which it does.

use bytes::{BufMut, Bytes, BytesMut};

use crate::namespace::Namespace;

/// A cookie as it travels: the 8 bytes and the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// The first 8 bytes, big-endian: a position (top bit clear) or a
    /// walk's start and cursor (top bit set); [`resolve`](Self::resolve)
    /// says which, and the [module documentation](self) how.
    pub position: u64,
    /// The namespace the position belongs to; `None` for all namespaces.
    pub namespace: Option<Namespace>,
}

/// Where a walk goes on from, as a cookie says once resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Registration order: the registrations after this position, oldest
    /// first.
    After(u64),
    /// The first phase of a walk that started at `start`: the registrations
    /// below `below` (at most `start + 1`), newest first, then those after
    /// `start`, oldest first.
    Below {
        /// Where the walk started.
        start: u64,
        /// Everything at or above this and at or below `start` was served.
        below: u64,
    },
}

/// Why cookie bytes were refused; answered with `E_INVALID_COOKIE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CookieError {
    /// Shorter than the 8-byte position.
    #[error("cookie of {0} bytes is shorter than 8")]
    TooShort(usize),
    /// The namespace part is not UTF-8 or too long.
    #[error("cookie namespace is not a valid namespace")]
    InvalidNamespace,
    /// The cookie belongs to another query.
    #[error("cookie belongs to another namespace")]
    WrongNamespace,
    /// The position is ahead of anything this server issued.
    #[error("cookie was not issued by this server")]
    Unknown,
}

/// Marks a phase-1 cookie.
const BELOW: u64 = 1 << 63;
/// `start`'s bits kept in a phase-1 cookie.
const START_BITS: u32 = 31;
const START_MASK: u64 = (1 << START_BITS) - 1;
/// How far ahead of the last position issued a phase-1 cookie's start may
/// be read, only to be refused as [`CookieError::Unknown`] like a plain
/// position from the future: a point of a shared registry that lags behind
/// the one that issued the cookie then says so rather than misread it.
const AHEAD: u64 = 1 << 24;

impl Cookie {
    /// Most positions a walk may start above the lowest registration it
    /// serves in its first phase (`start + 1 − below` must fit in 32 bits).
    pub const MAX_DEPTH: u64 = u32::MAX as u64;

    /// A cookie for `position` in `namespace` (`None`: all namespaces).
    pub fn at(position: Position, namespace: Option<Namespace>) -> Cookie {
        let position = match position {
            Position::After(after) => {
                debug_assert!(after < BELOW, "positions stay below 2^63");
                after
            }
            Position::Below { start, below } => {
                let depth = start.wrapping_add(1).wrapping_sub(below);
                debug_assert!(below <= start + 1 && depth <= Self::MAX_DEPTH, "{position:?}");
                BELOW | ((start & START_MASK) << 32) | (depth & Self::MAX_DEPTH)
            }
        };
        Cookie { position, namespace }
    }

    /// The cookie as it goes on the wire.
    pub fn to_bytes(&self) -> Bytes {
        let ns = self.namespace.as_ref().map_or("", Namespace::as_str);
        let mut out = BytesMut::with_capacity(8 + ns.len());
        out.put_u64(self.position);
        out.put_slice(ns.as_bytes());
        out.freeze()
    }

    /// Parses wire bytes; the namespace part may be at most `max_namespace_len` bytes.
    pub fn parse(bytes: &[u8], max_namespace_len: usize) -> Result<Cookie, CookieError> {
        let Some((position, ns)) = bytes.split_first_chunk::<8>() else {
            return Err(CookieError::TooShort(bytes.len()));
        };
        let namespace = if ns.is_empty() {
            None
        } else {
            let ns = std::str::from_utf8(ns).map_err(|_| CookieError::InvalidNamespace)?;
            Some(Namespace::new(ns, max_namespace_len).map_err(|_| CookieError::InvalidNamespace)?)
        };
        Ok(Cookie { position: u64::from_be_bytes(*position), namespace })
    }

    /// Where the walk goes on, at a server whose highest position issued
    /// is `last`. A phase-1 cookie's start is taken as the value with its
    /// 31 bits in `(last + 2²⁴ − 2³¹, last + 2²⁴]`; above `last`, like a
    /// plain position above it, the cookie is [`CookieError::Unknown`].
    pub fn resolve(&self, last: u64) -> Result<Position, CookieError> {
        if self.position & BELOW == 0 {
            return match self.position <= last {
                true => Ok(Position::After(self.position)),
                false => Err(CookieError::Unknown),
            };
        }
        let low = (self.position >> 32) & START_MASK;
        let depth = self.position & Self::MAX_DEPTH;
        let top = last.saturating_add(AHEAD);
        let start = top.checked_sub(top.wrapping_sub(low) & START_MASK);
        let start = start.filter(|&start| start <= last).ok_or(CookieError::Unknown)?;
        let below = start.checked_add(1).and_then(|end| end.checked_sub(depth));
        let below = below.ok_or(CookieError::Unknown)?;
        Ok(Position::Below { start, below })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Option<Namespace> {
        Some(Namespace::new("chat", 255).unwrap())
    }

    #[test]
    fn cookie_bytes_are_a_big_endian_position_then_the_namespace() {
        let cookie = Cookie { position: 0x0102, namespace: chat() };
        let bytes = cookie.to_bytes();
        assert_eq!(bytes.as_ref(), b"\0\0\0\0\0\0\x01\x02chat");
        assert_eq!(Cookie::parse(&bytes, 255), Ok(cookie));
    }

    #[test]
    fn an_all_namespaces_cookie_is_just_the_position() {
        let cookie = Cookie { position: 7, namespace: None };
        assert_eq!(cookie.to_bytes().len(), 8);
        assert_eq!(Cookie::parse(&cookie.to_bytes(), 255), Ok(cookie));
    }

    #[test]
    fn malformed_cookies_are_refused() {
        assert_eq!(Cookie::parse(b"short", 255), Err(CookieError::TooShort(5)));
        assert_eq!(Cookie::parse(b"\0\0\0\0\0\0\0\0\xff", 255), Err(CookieError::InvalidNamespace));
        assert_eq!(Cookie::parse(b"\0\0\0\0\0\0\0\0abc", 2), Err(CookieError::InvalidNamespace));
    }

    #[test]
    fn an_old_cookie_is_a_position_in_registration_order() {
        // What every earlier version issued: 8 bytes of position.
        let old = Cookie::parse(b"\0\0\0\0\0\0\x01\x02chat", 255).unwrap();
        assert_eq!(old.resolve(0x0102), Ok(Position::After(0x0102)));
        assert_eq!(old.resolve(1 << 40), Ok(Position::After(0x0102)));
        assert_eq!(old.resolve(0x0101), Err(CookieError::Unknown), "from the future");
        assert_eq!(Cookie::at(Position::After(0x0102), chat()), old);
    }

    #[test]
    fn a_first_phase_cookie_sets_the_top_bit_and_keeps_the_start_and_the_depth() {
        let start = (5 << 31) + 0x1234;
        let cookie = Cookie::at(Position::Below { start, below: start - 9 }, None);
        assert_eq!(cookie.to_bytes().as_ref(), [0x80, 0, 0x12, 0x34, 0, 0, 0, 10]);
        for last in [start, start + 1000, start + (1 << 31) - AHEAD - 1] {
            assert_eq!(cookie.resolve(last), Ok(Position::Below { start, below: start - 9 }));
        }
        let fresh = Cookie::at(Position::Below { start, below: start + 1 }, None);
        assert_eq!(fresh.resolve(start + 3), Ok(Position::Below { start, below: start + 1 }));
        // 2^31 - 2^24 positions later the same bits name a start not issued
        // yet: refused, and the client starts over.
        assert_eq!(cookie.resolve(start + (1 << 31) - AHEAD), Err(CookieError::Unknown));
    }

    #[test]
    fn a_first_phase_cookie_resolves_wherever_its_start_lies() {
        let deepest = Cookie::MAX_DEPTH;
        for (start, below) in [
            (0, 0),
            (0, 1),
            (1 << 31, 1),
            (u64::from(u32::MAX), 1),
            (1 << 50, (1 << 50) + 1 - deepest),
            ((1 << 62) + 17, 1 << 62),
        ] {
            let position = Position::Below { start, below };
            let bytes = Cookie::at(position, chat()).to_bytes();
            let cookie = Cookie::parse(&bytes, 255).unwrap();
            for last in [start, start + 1, start + (1 << 20), start + (1 << 31) - AHEAD - 1] {
                assert_eq!(cookie.resolve(last), Ok(position), "{position:?} at {last}");
            }
        }
    }

    #[test]
    fn a_first_phase_cookie_ahead_of_the_server_is_unknown() {
        let start = 1 << 40;
        let cookie = Cookie::at(Position::Below { start, below: start - 3 }, None);
        assert_eq!(cookie.resolve(start - 1), Err(CookieError::Unknown));
        assert_eq!(cookie.resolve(start - AHEAD + 1), Err(CookieError::Unknown));
        // Its depth reaching below position 0: nothing this server issued.
        let deep = Cookie { position: BELOW | 10 << 32 | 100, namespace: None };
        assert_eq!(deep.resolve(10), Err(CookieError::Unknown));
        assert_eq!(deep.resolve(0), Err(CookieError::Unknown));
    }
}
