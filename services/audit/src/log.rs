//! The evidence log: one sequencer task assigns indices with group commit,
//! the Merkle tree lives in memory, checkpoints are signed on a timer and on
//! demand, and every committed batch is broadcast to subscribers.
//!
//! Append path: the request handler validates the records and sends them to
//! the sequencer. The sequencer drains whatever else is queued (up to
//! `max_batch` records), drops duplicates by record id, writes the new
//! entries in **one** transaction, and only then extends the tree,
//! broadcasts, and answers every waiting caller. A commit failure answers
//! every caller with an error and changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use steward_batch::{Group, limits};
use steward_evidence::merkle::{MerkleTree, ProofError};
use steward_evidence::note::NoteSigner;
use steward_evidence::{Checkpoint, EvidenceRecord, Hash, leaf_hash};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::store::{NewEntry, Store, StoredCheckpoint, StoredEntry};

mod check;
mod sequencer;

use check::check_entries;
pub use sequencer::Sequencer;

/// Why an append or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("record {record_id} was already logged at index {index} with different content")]
    Conflict { record_id: String, index: u64 },
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error(transparent)]
    Storage(#[from] steward_db::StorageError),
    #[error("the audit log is shutting down")]
    Stopped,
    /// A request named a size or index past the tree's end.
    #[error("{field}: {value} is beyond the tree ({size} entries)")]
    Beyond {
        field: &'static str,
        value: u64,
        size: u64,
    },
    #[error("leaf_hash: no such leaf in the tree of size {tree_size}")]
    NoSuchLeaf { tree_size: u64 },
    #[error(
        "this audit replica is not the sequencer; retry, or send appends to the replica that holds the role"
    )]
    NotSequencer,
    #[error("{0}")]
    Corrupt(String),
    #[error(
        "the evidence log failed its integrity check at start-up, so audit signs no checkpoint and takes no append: {0}"
    )]
    Untrusted(String),
}

impl From<sqlx::Error> for LogError {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(e.into())
    }
}

impl From<LogError> for tonic::Status {
    /// The one mapping of the log's errors; a corrupt log is logged here,
    /// once, beside the DATA_LOSS the caller gets.
    fn from(error: LogError) -> Self {
        if let LogError::Corrupt(detail) = &error {
            tracing::error!(error = %detail, "audit log corruption");
        }
        steward_errors::to_status(&error)
    }
}

impl steward_errors::ServiceError for LogError {
    fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::Conflict { .. } => Code::AlreadyExists,
            Self::Beyond { .. } => Code::OutOfRange,
            Self::NoSuchLeaf { .. } => Code::NotFound,
            Self::Proof(ProofError::SizeBeyondTree { .. } | ProofError::IndexOutOfRange { .. }) => {
                Code::OutOfRange
            }
            Self::Proof(_) => Code::InvalidArgument,
            Self::Stopped | Self::NotSequencer => Code::Unavailable,
            Self::Storage(e) => e.code(),
            // What an auditor needs to find the damage: shown, not hidden.
            Self::Corrupt(_) | Self::Untrusted(_) => Code::DataLoss,
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::Beyond { field, .. } => Some(field),
            Self::NoSuchLeaf { .. } => Some("leaf_hash"),
            _ => None,
        }
    }
}

/// The result of appending one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub index: u64,
    pub leaf_hash: Hash,
    pub duplicate: bool,
}

/// A record ready for the sequencer: validated, with its leaf computed.
#[derive(Debug, Clone)]
pub struct Pending {
    pub record: EvidenceRecord,
    pub appended_by: String,
    pub leaf: String,
    pub leaf_hash: Hash,
}

impl Pending {
    pub fn new(record: EvidenceRecord, appended_by: &str) -> Self {
        let leaf = String::from_utf8(record.canonical_leaf(appended_by)).unwrap_or_default();
        let leaf_hash = leaf_hash(leaf.as_bytes());
        Self {
            record,
            appended_by: appended_by.to_owned(),
            leaf,
            leaf_hash,
        }
    }
}

/// An entry as logged: its index, the record and who appended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEntry {
    pub index: u64,
    pub record: EvidenceRecord,
    pub appended_by: String,
    pub leaf_hash: Hash,
}

impl LoggedEntry {
    /// Parses a stored leaf. The leaf hash reported is the stored one, so a
    /// verifier that recomputes it from the record sees any edit.
    pub fn from_stored(stored: &StoredEntry) -> Result<Self, LogError> {
        let (record, appended_by) = EvidenceRecord::from_canonical_leaf(stored.leaf.as_bytes())
            .map_err(|e| LogError::Corrupt(format!("entry {} is unreadable: {e}", stored.index)))?;
        let leaf_hash = Hash::try_from(stored.leaf_hash.as_slice()).map_err(|_| {
            LogError::Corrupt(format!("entry {} has a malformed leaf hash", stored.index))
        })?;
        Ok(Self {
            index: stored.index,
            record,
            appended_by,
            leaf_hash,
        })
    }
}

/// Records waiting for the sequencer, and where to send their results.
pub struct Job {
    records: Vec<Pending>,
    /// How many records the job carried (set when the sequencer takes them).
    count: usize,
    reply: oneshot::Sender<Vec<Result<Appended, LogError>>>,
}

/// A signed checkpoint.
#[derive(Debug, Clone)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub note: String,
}

impl SignedCheckpoint {
    /// A checkpoint as stored: the note's text is everything before the
    /// blank line that starts its signatures.
    fn from_stored(stored: StoredCheckpoint) -> Result<Self, LogError> {
        let text = stored.note.split("\n\n").next().unwrap_or_default();
        let checkpoint = Checkpoint::parse(&format!("{text}\n"))
            .map_err(|e| LogError::Corrupt(format!("stored checkpoint: {e}")))?;
        Ok(Self {
            checkpoint,
            note: stored.note,
        })
    }
}

/// Log settings.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub origin: String,
    pub checkpoint_interval: Duration,
    pub max_batch: usize,
    pub subscriber_buffer: usize,
}

/// Shared state, cheap to clone.
#[derive(Clone)]
pub struct Log {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

struct Shared {
    store: Store,
    tree: RwLock<LeafTree>,
    signer: NoteSigner,
    origin: String,
    latest: RwLock<Option<SignedCheckpoint>>,
    publish: tokio::sync::Mutex<()>,
    committed: broadcast::Sender<Arc<Vec<LoggedEntry>>>,
    /// Whether this process holds the sequencer role.
    sequencer: AtomicBool,
    /// Why the stored log cannot be vouched for (the first bad entry),
    /// when the start-up check found one.
    untrusted: Option<String>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("origin", &self.shared.origin)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Rebuilds the tree from the stored leaf hashes and checks it against
    /// the latest signed checkpoint: a log that no longer matches its own
    /// signature refuses to start (fail closed).
    pub async fn open(
        store: Store,
        signer: NoteSigner,
        options: &LogOptions,
    ) -> Result<(Self, Group<Job>), LogError> {
        let store_is_sqlite = matches!(store.database(), steward_db::Database::Sqlite(_));
        let (tree, untrusted) = check_entries(&store).await?;
        let latest = match store.latest_checkpoint().await? {
            None => None,
            Some(stored) => {
                let root = tree.root(stored.tree_size).map_err(|_| {
                    LogError::Corrupt(format!(
                        "the log holds {} entries but its latest signed checkpoint covers {}: entries were removed",
                        tree.size(),
                        stored.tree_size
                    ))
                })?;
                if root.as_slice() != stored.root_hash.as_slice() {
                    return Err(LogError::Corrupt(format!(
                        "the stored leaf hashes do not reproduce the signed root at tree size {}",
                        stored.tree_size
                    )));
                }
                Some(SignedCheckpoint::from_stored(stored)?)
            }
        };
        match &untrusted {
            None => {
                tracing::info!(tree_size = tree.size(), origin = %options.origin, "evidence log opened")
            }
            Some(why) => tracing::error!(
                tree_size = tree.size(),
                origin = %options.origin,
                first_bad = %why,
                "evidence log opened, but it failed its integrity check: it signs no checkpoint and takes no append"
            ),
        }
        let (committed, _) = broadcast::channel(options.subscriber_buffer.max(1));
        let (jobs, queue) =
            steward_batch::weighed(options.max_batch, limits::AUDIT_QUEUE, |job: &Job| {
                job.records.len()
            });
        let shared = Arc::new(Shared {
            store,
            tree: RwLock::new(tree),
            signer,
            origin: options.origin.clone(),
            latest: RwLock::new(latest),
            publish: tokio::sync::Mutex::new(()),
            committed,
            // SQLite has exactly one writer process: this one.
            sequencer: AtomicBool::new(store_is_sqlite),
            untrusted,
        });
        Ok((Self { shared, jobs }, queue))
    }

    /// Why the stored log cannot be vouched for, if the start-up check
    /// found a bad entry.
    pub fn untrusted(&self) -> Option<&str> {
        self.shared.untrusted.as_deref()
    }

    /// Whether this process is the sequencer (the only writer).
    pub fn is_sequencer(&self) -> bool {
        self.shared.sequencer.load(Ordering::Acquire)
    }

    /// Appends records in order; one result per record.
    pub async fn append(
        &self,
        records: Vec<Pending>,
    ) -> Result<Vec<Result<Appended, LogError>>, LogError> {
        if let Some(why) = &self.shared.untrusted {
            return Err(LogError::Untrusted(why.clone()));
        }
        if !self.is_sequencer() {
            return Err(LogError::NotSequencer);
        }
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        let count = records.len();
        self.jobs
            .send(Job {
                count,
                records,
                reply,
            })
            .await
            .map_err(|_| LogError::Stopped)?;
        let answered = answer.await.map_err(|_| LogError::Stopped)?;
        // Queued, sequenced, committed and answered: what a writer waits.
        metrics::histogram!("steward_audit_append_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("steward_audit_appended_records_total").increment(count as u64);
        Ok(answered)
    }

    /// The number of entries.
    pub fn size(&self) -> u64 {
        self.tree().size()
    }

    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    pub fn verifier_key(&self) -> String {
        self.shared.signer.verifier_key()
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn root(&self, size: u64) -> Result<Hash, LogError> {
        Ok(self.tree().root(size)?)
    }

    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.tree().leaf(index)
    }

    /// The index of the first entry whose leaf hash is `hash`.
    pub fn index_of(&self, hash: &Hash) -> Option<u64> {
        self.tree().index_of(hash)
    }

    pub fn inclusion_proof(&self, index: u64, tree_size: u64) -> Result<Vec<Hash>, LogError> {
        Ok(self.tree().inclusion_proof(index, tree_size)?)
    }

    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, LogError> {
        Ok(self.tree().consistency_proof(first, second)?)
    }

    /// Committed batches, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<LoggedEntry>>> {
        self.shared.committed.subscribe()
    }

    /// The latest checkpoint, if any has been published.
    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        self.shared
            .latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Signs and stores a checkpoint for the current tree if it grew since
    /// the last one (or none exists); returns the latest checkpoint.
    pub async fn publish(&self) -> Result<SignedCheckpoint, LogError> {
        if let Some(why) = &self.shared.untrusted {
            return Err(LogError::Untrusted(why.clone()));
        }
        let _serial = self.shared.publish.lock().await;
        if !self.is_sequencer() {
            // Replicas never sign: they serve what the sequencer published.
            self.refresh_latest().await?;
            return self.latest_checkpoint().ok_or(LogError::NotSequencer);
        }
        let size = self.size();
        if let Some(latest) = self.latest_checkpoint()
            && latest.checkpoint.tree_size == size
        {
            return Ok(latest);
        }
        let checkpoint = Checkpoint {
            origin: self.shared.origin.clone(),
            tree_size: size,
            root_hash: self.root(size)?,
        };
        let note = self
            .shared
            .signer
            .sign(&checkpoint.to_text())
            .map_err(|e| LogError::Corrupt(e.to_string()))?;
        let stored = StoredCheckpoint {
            tree_size: size,
            root_hash: checkpoint.root_hash.to_vec(),
            note: note.clone(),
        };
        self.shared
            .store
            .insert_checkpoint(&stored, now_ns())
            .await?;
        let signed = SignedCheckpoint { checkpoint, note };
        *self
            .shared
            .latest
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(signed.clone());
        tracing::debug!(tree_size = size, "checkpoint published");
        Ok(signed)
    }

    fn tree(&self) -> std::sync::RwLockReadGuard<'_, LeafTree> {
        self.shared.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The sequencer for this log, writing through the database's writer.
    pub fn sequencer(&self) -> Sequencer {
        Sequencer {
            shared: self.shared.clone(),
            store: self.writer_store(),
            locked: None,
        }
    }

    /// The store on the database's writer connection, where the sequencer
    /// looks up and inserts entries (see [`steward_db::Database::writer`]).
    fn writer_store(&self) -> Store {
        Store::new(self.shared.store.database().writer())
    }

    /// Reads entries other processes committed beyond our tree (a replica
    /// following the sequencer, or a new sequencer taking over), extends the
    /// tree, and broadcasts them; refreshes the latest checkpoint too.
    pub async fn catch_up(&self) -> Result<u64, LogError> {
        let mut added = 0;
        loop {
            let from = self.size();
            let stored = self.shared.store.entries(from, u64::MAX >> 1, 1000).await?;
            if stored.is_empty() {
                break;
            }
            let mut batch = Vec::with_capacity(stored.len());
            for (offset, row) in stored.iter().enumerate() {
                if row.index != from + offset as u64 {
                    return Err(LogError::Corrupt(format!(
                        "entry {} missing while following the log",
                        from + offset as u64
                    )));
                }
                batch.push(LoggedEntry::from_stored(row)?);
            }
            {
                let mut tree = self.shared.tree.write().unwrap_or_else(|p| p.into_inner());
                if tree.size() != from {
                    continue; // extended meanwhile; read again
                }
                for entry in &batch {
                    tree.push(entry.leaf_hash);
                }
            }
            added += batch.len() as u64;
            let _ = self.shared.committed.send(Arc::new(batch));
        }
        self.refresh_latest().await?;
        Ok(added)
    }

    async fn refresh_latest(&self) -> Result<(), LogError> {
        let Some(stored) = self.shared.store.latest_checkpoint().await? else {
            return Ok(());
        };
        let newer = self
            .latest_checkpoint()
            .is_none_or(|c| c.checkpoint.tree_size < stored.tree_size);
        if newer && stored.tree_size <= self.size() {
            let signed = SignedCheckpoint::from_stored(stored)?;
            *self
                .shared
                .latest
                .write()
                .unwrap_or_else(|p| p.into_inner()) = Some(signed);
        }
        Ok(())
    }

    /// Takes the sequencer role now if it is free (PostgreSQL), so that a
    /// service that starts alone accepts appends from its first request.
    pub async fn claim_role(&self) -> Result<Option<sqlx::PgConnection>, LogError> {
        let steward_db::Database::Postgres(pool) = self.shared.store.database() else {
            return Ok(None);
        };
        let conn = crate::store::try_sequencer_lock(pool).await?;
        if conn.is_some() {
            self.shared.sequencer.store(true, Ordering::Release);
        }
        Ok(conn)
    }

    /// Runs this process's part: on SQLite, the sequencer; on PostgreSQL,
    /// the sequencer while it holds the advisory lock, otherwise a replica
    /// that follows the log and contends for the lock every `follow` tick.
    pub async fn run_roles(
        self,
        mut queue: Group<Job>,
        follow: Duration,
        context: steward_server::ServiceContext,
        mut first_attempt: Option<sqlx::PgConnection>,
    ) {
        let pool = match self.shared.store.database() {
            steward_db::Database::Sqlite(_) => {
                self.sequencer().run(queue, context.shutdown()).await;
                return;
            }
            steward_db::Database::Postgres(pool) => pool.clone(),
        };
        let mut announced_replica = false;
        loop {
            let attempt = match first_attempt.take() {
                Some(conn) => Ok(Some(conn)),
                None => crate::store::try_sequencer_lock(&pool).await,
            };
            match attempt {
                Ok(Some(conn)) => match self.catch_up().await {
                    Err(error) => {
                        tracing::error!(%error, "cannot catch up before taking the sequencer role")
                    }
                    Ok(_) => {
                        tracing::info!(tree_size = self.size(), "holding the sequencer role");
                        self.shared.sequencer.store(true, Ordering::Release);
                        let sequencer = Sequencer {
                            shared: self.shared.clone(),
                            store: self.writer_store(),
                            locked: Some(conn),
                        };
                        match sequencer.run_until_lost(queue, context.shutdown()).await {
                            None => return,
                            Some(returned) => queue = returned,
                        }
                        self.shared.sequencer.store(false, Ordering::Release);
                        tracing::error!("lost the sequencer role; following the log again");
                    }
                },
                Ok(None) => {
                    if !announced_replica {
                        tracing::info!(
                            "another replica holds the sequencer role; serving reads and following the log"
                        );
                        announced_replica = true;
                    }
                    if let Err(error) = self.catch_up().await {
                        tracing::warn!(%error, "following the log failed");
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot contend for the sequencer role"),
            }
            tokio::select! {
                () = context.shutdown() => return,
                () = tokio::time::sleep(follow) => {}
            }
        }
    }

    /// Publishes a checkpoint every `interval` while the tree grows, and a
    /// last one at shutdown.
    pub async fn run_checkpointer(
        self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        if self.shared.untrusted.is_some() {
            // Said once at open; nothing is ever signed.
            shutdown.await;
            return;
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = &mut shutdown => {
                    if let Err(error) = self.publish().await {
                        tracing::error!(%error, "final checkpoint failed");
                    }
                    return;
                }
            }
            if let Err(error) = self.publish().await {
                tracing::error!(%error, "checkpoint failed");
            }
        }
    }
}

pub use steward_evidence::clock::now_ns;

/// The Merkle tree of the log, and which index holds each leaf hash (for
/// proofs asked by hash). The lookup keeps the first 8 bytes of each hash
/// (about 20 bytes a leaf), checked against the tree's own leaf; the rare
/// other hash with the same 8 bytes is kept whole.
#[derive(Default)]
struct LeafTree {
    merkle: MerkleTree,
    by_prefix: HashMap<u64, u64>,
    collided: HashMap<Hash, u64>,
}

impl LeafTree {
    fn push(&mut self, hash: Hash) {
        let index = self.merkle.size();
        self.merkle.push(hash);
        match self.by_prefix.entry(prefix(&hash)) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(index);
            }
            std::collections::hash_map::Entry::Occupied(first) => {
                if self.merkle.leaf(*first.get()) != Some(hash) {
                    self.collided.entry(hash).or_insert(index);
                }
            }
        }
    }

    fn index_of(&self, hash: &Hash) -> Option<u64> {
        let first = *self.by_prefix.get(&prefix(hash))?;
        if self.merkle.leaf(first).as_ref() == Some(hash) {
            Some(first)
        } else {
            self.collided.get(hash).copied()
        }
    }
}

impl std::ops::Deref for LeafTree {
    type Target = MerkleTree;

    fn deref(&self) -> &MerkleTree {
        &self.merkle
    }
}

fn prefix(hash: &Hash) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_lookup_tells_hashes_with_the_same_prefix_apart() {
        let mut tree = LeafTree::default();
        let a = [1u8; 32];
        let mut b = a;
        b[31] = 2;
        let mut c = a;
        c[0] = 9;
        for hash in [a, b, c, a] {
            tree.push(hash);
        }
        assert_eq!(tree.index_of(&a), Some(0), "the first of a repeated leaf");
        assert_eq!(tree.index_of(&b), Some(1));
        assert_eq!(tree.index_of(&c), Some(2));
        let mut d = a;
        d[20] = 5;
        assert_eq!(tree.index_of(&d), None);
        assert_eq!(tree.size(), 4);
    }
}
