//! The embedded store: every registration in one redb file, written by one
//! thread that commits whatever queued while the last commit ran (group
//! commit: one transaction and one fsync for the lot).
//!
//! Keys are [`store_key`]s; values are the registration's position (8
//! bytes, big-endian, so that a delete can check it without decoding) and
//! its [`StoredRegistration::encode`]d protobuf. A `meta` table keeps the
//! format version and the highest position ever given. redb locks its file
//! against a second process and repairs itself after a crash. Space freed by
//! expired and replaced registrations is reused by new ones; a start that
//! finds more free space than data compacts the file, so its size follows
//! the live registrations.
//!
//! A batch that fails (a full disk) refuses its puts and keeps its deletes:
//! they go again, first, with the next batch or after the reopen backoff,
//! so no delete is lost and none is passed by a write submitted after it.
//! The actions waiting here are bounded by the core
//! ([`ServerConfig::max_pending_writes`](rendezvous_libp2p::core::ServerConfig::max_pending_writes),
//! plus a delete per registration at most).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use rendezvous_libp2p::core::proto::ResponseStatus;
use rendezvous_libp2p::store::{
    Commit, Snapshot, Store, StoreAction, StoredRegistration, store_key,
};

use super::StoreError;

const REGISTRATIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("registrations");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The layout of the tables; a file with another is refused, not guessed at.
const FORMAT: u64 = 1;
/// The store's file in the data dir.
pub const FILE: &str = "registry.redb";
/// Actions written in one transaction at most.
const MAX_BATCH: usize = 65_536;
/// Pause between attempts to reopen a store that failed to write.
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);

/// The embedded store, as the server behaviour drives it. Dropping it
/// waits for its writer to finish what was submitted and close the file.
pub struct RedbStore {
    actions: Option<Sender<StoreAction>>,
    commits: UnboundedReceiver<Commit>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Why the last write failed, until one succeeds.
    trouble: Arc<Mutex<Option<String>>>,
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`, compacts it, and reads what
    /// it holds. The directory is created if absent.
    pub fn open(dir: &Path) -> Result<(RedbStore, Snapshot), StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot use data dir {}: {e}", dir.display())))?;
        let path = dir.join(FILE);
        let mut db = open_database(&path)?;
        if mostly_free(&db) {
            let _ = db.compact();
        }
        let snapshot = read(&db, &path)?;
        let (actions, queued) = std::sync::mpsc::channel();
        let (committed, commits) = unbounded();
        let trouble = Arc::new(Mutex::new(None));
        let writer = Writer {
            db: Some(db),
            path,
            committed,
            down_since: None,
            retrying: Vec::new(),
            trouble: trouble.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("rendezvous-store".into())
            .spawn(move || writer.run(queued))
            .map_err(|e| StoreError(format!("cannot start the store's writer: {e}")))?;
        let store = RedbStore { actions: Some(actions), commits, writer: Some(writer), trouble };
        Ok((store, snapshot))
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        drop(self.actions.take()); // the writer ends once it has written the rest
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Store for RedbStore {
    fn submit(&mut self, action: StoreAction) {
        // The writer only stops when this handle is dropped.
        if let Some(actions) = &self.actions {
            let _ = actions.send(action);
        }
    }

    fn poll_commit(&mut self, cx: &mut Context<'_>) -> Poll<Commit> {
        match self.commits.poll_next_unpin(cx) {
            Poll::Ready(Some(commit)) => Poll::Ready(commit),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn trouble(&self) -> Option<String> {
        self.trouble.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn open_database(path: &Path) -> Result<Database, StoreError> {
    let shown = path.display();
    let db = Database::builder().set_cache_size(64 << 20).create(path).map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
            "{shown} is in use by another running server; stop it or choose another --data-dir"
        )),
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() != std::io::ErrorKind::InvalidData =>
        {
            StoreError(format!("cannot open {shown}: {io}"))
        }
        other => StoreError(format!(
            "{shown} is not a store this version can read ({other}); it was left as it is"
        )),
    })?;
    let txn = db.begin_read().map_err(|e| StoreError(format!("cannot read {shown}: {e}")))?;
    let format = match txn.open_table(META) {
        Ok(meta) => meta.get("format").ok().flatten().map(|v| v.value()),
        Err(_) => None,
    };
    match format {
        None | Some(FORMAT) => Ok(db),
        Some(other) => Err(StoreError(format!(
            "{shown} has store format {other}, this version reads {FORMAT}; it was left as it is"
        ))),
    }
}

/// Whether more of the file is free than holds data.
fn mostly_free(db: &Database) -> bool {
    let Ok(txn) = db.begin_write() else { return false };
    let stats = txn.stats();
    let _ = txn.abort();
    stats.is_ok_and(|s| s.fragmented_bytes() > s.stored_bytes())
}

/// Everything stored, and the highest position given.
fn read(db: &Database, path: &Path) -> Result<Snapshot, StoreError> {
    let failed =
        |e: &dyn std::fmt::Display| StoreError(format!("cannot read {}: {e}", path.display()));
    let txn = db.begin_read().map_err(|e| failed(&e))?;
    let mut snapshot = Snapshot::default();
    if let Ok(meta) = txn.open_table(META) {
        snapshot.last_seq = meta.get("last_seq").map_err(|e| failed(&e))?.map_or(0, |v| v.value());
    }
    let Ok(table) = txn.open_table(REGISTRATIONS) else {
        return Ok(snapshot); // never written
    };
    let mut unreadable = 0usize;
    for entry in table.iter().map_err(|e| failed(&e))? {
        let (_, value) = entry.map_err(|e| failed(&e))?;
        match value.value().get(8..).map(StoredRegistration::decode) {
            Some(Ok(registration)) => snapshot.registrations.push(registration),
            _ => unreadable += 1,
        }
    }
    if unreadable > 0 {
        tracing::warn!(target: "rendezvous::server", "{}: skipped {unreadable} unreadable registrations", path.display());
    }
    Ok(snapshot)
}

/// The thread that owns the database.
struct Writer {
    /// `None` after a failed write, until reopened.
    db: Option<Database>,
    path: PathBuf,
    committed: UnboundedSender<Commit>,
    down_since: Option<Instant>,
    /// Deletes that failed, to go again before anything submitted after
    /// them: a delete is never dropped, and never passed by a later write.
    retrying: Vec<StoreAction>,
    trouble: Arc<Mutex<Option<String>>>,
}

impl Writer {
    fn run(mut self, queued: Receiver<StoreAction>) {
        loop {
            // With deletes to retry, wait at most the backoff for company.
            let first = if self.retrying.is_empty() {
                queued.recv().ok()
            } else {
                match queued.recv_timeout(REOPEN_BACKOFF) {
                    Ok(action) => Some(action),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let closed = first.is_none() && self.retrying.is_empty();
            if closed {
                return;
            }
            let mut batch = std::mem::take(&mut self.retrying);
            batch.extend(first);
            while batch.len() < MAX_BATCH {
                match queued.try_recv() {
                    Ok(action) => batch.push(action),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.write(batch);
        }
        // The point is closing with deletes the disk would not take: one
        // last attempt.
        let batch = std::mem::take(&mut self.retrying);
        if !batch.is_empty() {
            self.write(batch);
        }
    }

    /// Writes a batch in one transaction and reports every action: puts
    /// stored or refused, deletes removed or kept to retry.
    fn write(&mut self, batch: Vec<StoreAction>) {
        let result = match self.database() {
            Some(db) => write(db, &batch).map_err(|e| e.to_string()),
            None => Err("the store is being reopened after a failed write".to_owned()),
        };
        let failure = match result {
            Ok(()) => {
                self.set_trouble(None);
                None
            }
            Err(error) => {
                if self.db.is_some() {
                    tracing::warn!(target: "rendezvous::server", "{}: write failed: {error}", self.path.display());
                    // redb refuses writes after an I/O error until reopened.
                    self.db = None;
                    self.down_since = Some(Instant::now());
                }
                let reason = format!("the store could not write the registration: {error}");
                self.set_trouble(Some(format!("{}: {error}", self.path.display())));
                Some(reason)
            }
        };
        for action in batch {
            let commit = match (action, &failure) {
                (StoreAction::Put { id, registration, .. }, None) => {
                    Commit::Stored { id, seq: registration.seq }
                }
                (StoreAction::Put { id, .. }, Some(reason)) => Commit::Refused {
                    id,
                    status: ResponseStatus::EUnavailable,
                    reason: reason.clone(),
                },
                (StoreAction::Delete { id, .. }, None) => Commit::Removed { id },
                (delete, Some(_)) => {
                    self.retrying.push(delete);
                    continue;
                }
                (_, None) => continue,
            };
            let _ = self.committed.unbounded_send(commit);
        }
    }

    fn set_trouble(&self, trouble: Option<String>) {
        *self.trouble.lock().unwrap_or_else(|e| e.into_inner()) = trouble;
    }

    /// The database, reopened if a write failed and the backoff has passed.
    fn database(&mut self) -> Option<&Database> {
        if self.db.is_none() && self.down_since.is_none_or(|t| t.elapsed() >= REOPEN_BACKOFF) {
            match open_database(&self.path) {
                Ok(db) => {
                    tracing::info!(target: "rendezvous::server", "{}: reopened", self.path.display());
                    self.db = Some(db);
                    self.down_since = None;
                }
                Err(e) => {
                    tracing::warn!(target: "rendezvous::server", "{e}");
                    self.down_since = Some(Instant::now());
                }
            }
        }
        self.db.as_ref()
    }
}

/// The position a stored value starts with (0 if it is too short to have
/// one: such a value is removed by any delete).
fn stored_seq(value: &[u8]) -> u64 {
    value.first_chunk::<8>().map_or(0, |b| u64::from_be_bytes(*b))
}

/// One transaction for the whole batch, one fsync at its commit.
fn write(db: &Database, batch: &[StoreAction]) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    // Allocator state saved with each commit: a restart after kill -9
    // opens at once instead of walking the whole file.
    txn.set_quick_repair(true);
    {
        let mut table = txn.open_table(REGISTRATIONS)?;
        let mut meta = txn.open_table(META)?;
        let mut last_seq = meta.get("last_seq")?.map_or(0, |v| v.value());
        for action in batch {
            match action {
                StoreAction::Put { registration, .. } => {
                    let mut value = registration.seq.to_be_bytes().to_vec();
                    value.extend_from_slice(&registration.encode());
                    table.insert(registration.key().as_slice(), value.as_slice())?;
                    last_seq = last_seq.max(registration.seq);
                }
                StoreAction::Delete { peer, namespace, seq, .. } => {
                    let key = store_key(peer, namespace);
                    // Never a newer registration of the same key.
                    let stored = table.get(key.as_slice())?.map(|v| stored_seq(v.value()));
                    if stored.is_some_and(|stored| stored <= *seq) {
                        table.remove(key.as_slice())?;
                    }
                }
                _ => {}
            }
        }
        meta.insert("last_seq", last_seq)?;
        meta.insert("format", FORMAT)?;
    }
    txn.commit()?;
    Ok(())
}
