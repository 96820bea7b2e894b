//! Namespaces: the names peers register under.

use std::fmt;
use std::sync::Arc;

/// A namespace: a non-empty UTF-8 string, cheap to clone (shared).
///
/// The length limit is the server's to set (see
/// [`Limits::max_namespace_len`](crate::Limits::max_namespace_len)), so this
/// type only guarantees that the name is not empty.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Namespace(Arc<str>);

/// Why a string is not a usable namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    /// The empty string names no namespace.
    #[error("namespace is empty")]
    Empty,
    /// Longer than the limit in force.
    #[error("namespace of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// The namespace's length in bytes.
        len: usize,
        /// The limit in force.
        max: usize,
    },
}

impl Namespace {
    /// The longest namespace the protocol allows, in bytes (the spec's 255).
    pub const MAX_LEN: usize = 255;

    /// `name` as a namespace of at most `max_len` bytes.
    pub fn new(name: &str, max_len: usize) -> Result<Namespace, NamespaceError> {
        if name.is_empty() {
            return Err(NamespaceError::Empty);
        }
        if name.len() > max_len {
            return Err(NamespaceError::TooLong { len: name.len(), max: max_len });
        }
        Ok(Namespace(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Namespaces order as their names do, so a map of them can be searched by
/// name.
impl std::borrow::Borrow<str> for Namespace {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_over_long_names_are_refused_with_the_reason() {
        assert_eq!(Namespace::new("", 10), Err(NamespaceError::Empty));
        assert_eq!(Namespace::new("abc", 2), Err(NamespaceError::TooLong { len: 3, max: 2 }));
        assert_eq!(Namespace::new("ab", 2).unwrap().as_str(), "ab");
    }
}
