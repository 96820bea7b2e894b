//! Stateless discovery cookies.
//!
//! A cookie is the position of the last registration a page returned (its
//! sequence number, 8 bytes big-endian) followed by the namespace in UTF-8,
//! empty for "all namespaces". That is exactly the layout rust-libp2p's client
//! parses, so its clients can page through our server. The server keeps no
//! memory per cookie: the position is all it needs to continue.

use bytes::{BufMut, Bytes, BytesMut};

use crate::namespace::Namespace;

/// A position in the registry's order, scoped to one namespace or to all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// Registrations with a higher sequence number than this are new.
    pub position: u64,
    /// The namespace the position belongs to; `None` for all namespaces.
    pub namespace: Option<Namespace>,
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

impl Cookie {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_bytes_are_a_big_endian_position_then_the_namespace() {
        let ns = Namespace::new("chat", 255).unwrap();
        let cookie = Cookie { position: 0x0102, namespace: Some(ns) };
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
}
