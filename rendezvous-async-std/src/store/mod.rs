//! Store engines for a durable rendezvous point (see
//! [`rendezvous_libp2p::store`]): each in its own module, behind a cargo
//! feature.
//!
//! - [`redb`] (feature `redb`, on by default): the embedded store, one file
//!   in the data dir.
//! - [`redis`] (feature `redis`, on by default): a registry shared by several
//!   points through one Redis.

#[cfg(feature = "redb")]
pub mod redb;
#[cfg(feature = "redis")]
pub mod redis;

use std::fmt;
use std::path::PathBuf;

/// Where a point keeps its registrations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Nowhere: everything is lost on exit.
    InMemory,
    /// An embedded store in this directory, created if absent, which also
    /// holds the point's key (`key`).
    #[cfg(feature = "redb")]
    DataDir(PathBuf),
    /// Shared with every point using the Redis at `url`
    /// (`redis://host:port/db`, `rediss://…`, `redis+unix:///path`); the
    /// point's key stays in `data_dir`, if given.
    #[cfg(feature = "redis")]
    Redis {
        /// Where the registry is.
        url: String,
        /// Where the point keeps its key (no registrations).
        data_dir: Option<PathBuf>,
    },
}

impl Storage {
    /// The directory that holds the point's key, if any.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        match self {
            Storage::InMemory => None,
            #[cfg(feature = "redb")]
            Storage::DataDir(dir) => Some(dir),
            #[cfg(feature = "redis")]
            Storage::Redis { data_dir, .. } => data_dir.as_deref(),
        }
    }
}

impl Default for Storage {
    /// The platform's per-user data directory (`~/.local/share/rendezvous`
    /// on Linux), or in memory if there is none or the `redb` feature is off.
    fn default() -> Self {
        #[cfg(feature = "redb")]
        if let Some(dir) = default_data_dir() {
            return Storage::DataDir(dir);
        }
        Storage::InMemory
    }
}

/// The platform's per-user data directory for this program.
#[cfg(feature = "redb")]
pub fn default_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("rendezvous"))
}

/// Why a store cannot be opened: one line, naming the path and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}
