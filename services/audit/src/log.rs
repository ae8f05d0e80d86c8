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

use steward_evidence::merkle::{MerkleTree, ProofError};
use steward_evidence::note::NoteSigner;
use steward_evidence::{Checkpoint, EvidenceRecord, Hash, leaf_hash};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::store::{NewEntry, Store, StoredCheckpoint, StoredEntry};

/// Why an append or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("record {record_id} was already logged at index {index} with different content")]
    Conflict { record_id: String, index: u64 },
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("storage failed: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("the log is shutting down")]
    Stopped,
    #[error("this replica is not the sequencer; another replica holds the role")]
    NotSequencer,
    #[error("{0}")]
    Corrupt(String),
    #[error(
        "the evidence log failed its integrity check at start-up, so audit signs no checkpoint and takes no append: {0}"
    )]
    Untrusted(String),
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

/// Entries read per page by the start-up check.
const CHECK_PAGE: u32 = 5000;

/// Reads every stored entry, in pages, and rebuilds the tree from the
/// stored leaf hashes. Each entry's leaf must hash to its leaf hash, parse
/// as a record, and reproduce every index column of its row; the first one
/// that does not is returned as the reason the log cannot be vouched for.
/// Entries out of order, or a leaf hash that is not 32 bytes, stop the
/// start.
async fn check_entries(store: &Store) -> Result<(LeafTree, Option<String>), LogError> {
    let mut tree = LeafTree::default();
    let mut untrusted = None;
    loop {
        let rows = store.scan(tree.size(), CHECK_PAGE).await?;
        if rows.is_empty() {
            return Ok((tree, untrusted));
        }
        for row in rows {
            let expected = tree.size();
            if row.index != expected {
                return Err(LogError::Corrupt(format!(
                    "entries are not contiguous: index {} where {expected} was expected",
                    row.index
                )));
            }
            let hash = Hash::try_from(row.leaf_hash.as_slice()).map_err(|_| {
                LogError::Corrupt(format!("leaf hash of entry {} is not 32 bytes", row.index))
            })?;
            if untrusted.is_none()
                && let Err(why) = check_entry(&row.columns, &hash)
            {
                untrusted = Some(format!("entry {}: {why}", row.index));
            }
            tree.push(hash);
        }
    }
}

/// Whether one stored row agrees with its own leaf.
fn check_entry(columns: &crate::store::IndexColumns, hash: &Hash) -> Result<(), String> {
    if leaf_hash(columns.leaf.as_bytes()) != *hash {
        return Err("its leaf text does not hash to its leaf hash".to_owned());
    }
    let (record, _) = EvidenceRecord::from_canonical_leaf(columns.leaf.as_bytes())
        .map_err(|e| format!("its leaf is not a readable record ({e})"))?;
    let derived = crate::store::IndexColumns::of(&record, columns.leaf.clone());
    match derived.first_difference(columns) {
        Some(column) => Err(format!("its {column} column differs from its leaf")),
        None => Ok(()),
    }
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
    ) -> Result<(Self, mpsc::Receiver<Job>), LogError> {
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
        let (jobs, queue) = mpsc::channel(4096);
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
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                count: records.len(),
                records,
                reply,
            })
            .await
            .map_err(|_| LogError::Stopped)?;
        answer.await.map_err(|_| LogError::Stopped)
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
        mut queue: mpsc::Receiver<Job>,
        max_batch: usize,
        follow: Duration,
        context: steward_server::ServiceContext,
        mut first_attempt: Option<sqlx::PgConnection>,
    ) {
        let pool = match self.shared.store.database() {
            steward_db::Database::Sqlite(_) => {
                self.sequencer()
                    .run(queue, max_batch, context.shutdown())
                    .await;
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
                        match sequencer
                            .run_until_lost(queue, max_batch, context.shutdown())
                            .await
                        {
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

/// The only writer of entries. It holds no sender of its own queue. On
/// PostgreSQL it writes through the connection that holds the sequencer
/// lock, so losing that session means losing the ability to write.
pub struct Sequencer {
    shared: Arc<Shared>,
    store: Store,
    locked: Option<sqlx::PgConnection>,
}

impl Sequencer {
    /// Commits queued appends until `shutdown`; then refuses new ones
    /// (callers get UNAVAILABLE), commits what was already queued, and
    /// returns.
    pub async fn run(
        self,
        queue: mpsc::Receiver<Job>,
        max_batch: usize,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let _ = self.run_until_lost(queue, max_batch, shutdown).await;
    }

    /// Like [`Sequencer::run`], but hands the queue back if a write fails on
    /// the locked connection (the role may be lost): the caller steps down.
    pub async fn run_until_lost(
        mut self,
        mut queue: mpsc::Receiver<Job>,
        max_batch: usize,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Option<mpsc::Receiver<Job>> {
        tokio::pin!(shutdown);
        let mut stopping = false;
        loop {
            let first = if stopping {
                queue.recv().await
            } else {
                tokio::select! {
                    job = queue.recv() => job,
                    () = &mut shutdown => {
                        stopping = true;
                        queue.close();
                        continue;
                    }
                }
            };
            let Some(first) = first else { break };
            let mut count = first.records.len();
            let mut jobs = vec![first];
            while count < max_batch {
                match queue.try_recv() {
                    Ok(job) => {
                        count += job.records.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            if !self.commit(jobs).await && self.locked.is_some() && !stopping {
                return Some(queue);
            }
        }
        tracing::debug!("sequencer stopped");
        None
    }

    /// Commits one group; false when the write failed.
    async fn commit(&mut self, jobs: Vec<Job>) -> bool {
        let ids: Vec<String> = jobs
            .iter()
            .flat_map(|j| {
                j.records
                    .iter()
                    .map(|p| p.record.record_id.hyphenated().to_string())
            })
            .collect();
        let existing = match self.store.existing(&ids).await {
            Ok(rows) => rows,
            Err(error) => {
                fail_all(jobs, &error);
                return false;
            }
        };
        let mut known: HashMap<String, (u64, Hash)> = existing
            .into_iter()
            .filter_map(|(id, idx, hash)| Some((id, (idx, Hash::try_from(hash.as_slice()).ok()?))))
            .collect();

        let mut next = self
            .shared
            .tree
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .size();
        let mut new_entries = Vec::new();
        let mut logged = Vec::new();
        let mut ids = ids.into_iter();
        // Only build the broadcast batch when someone listens.
        let broadcasting = self.shared.committed.receiver_count() > 0;
        let mut outcomes: Vec<Vec<Result<Appended, LogError>>> = Vec::with_capacity(jobs.len());
        let mut jobs = jobs;
        for job in &mut jobs {
            let records = std::mem::take(&mut job.records);
            job.count = records.len();
            let mut results = Vec::with_capacity(records.len());
            for pending in records {
                // In the same order as `ids` was built.
                let id = ids.next().unwrap_or_default();
                if let Some(&(index, hash)) = known.get(&id) {
                    results.push(if hash == pending.leaf_hash {
                        Ok(Appended {
                            index,
                            leaf_hash: hash,
                            duplicate: true,
                        })
                    } else {
                        Err(LogError::Conflict {
                            record_id: id,
                            index,
                        })
                    });
                    continue;
                }
                let index = next;
                next += 1;
                known.insert(id.clone(), (index, pending.leaf_hash));
                let leaf_hash = pending.leaf_hash;
                let (entry, pending) = new_entry(index, id, pending);
                new_entries.push(entry);
                if broadcasting {
                    logged.push(LoggedEntry {
                        index,
                        record: pending.record,
                        appended_by: pending.appended_by,
                        leaf_hash,
                    });
                }
                results.push(Ok(Appended {
                    index,
                    leaf_hash,
                    duplicate: false,
                }));
            }
            outcomes.push(results);
        }

        let written = match &mut self.locked {
            Some(conn) => Store::insert_locked(conn, &new_entries).await,
            None => self.store.insert(&new_entries).await,
        };
        if let Err(error) = written {
            tracing::error!(%error, records = new_entries.len(), "evidence commit failed");
            fail_all(jobs, &error);
            return false;
        }
        {
            let mut tree = self.shared.tree.write().unwrap_or_else(|p| p.into_inner());
            for entry in &new_entries {
                tree.push(entry.leaf_hash);
            }
        }
        if !logged.is_empty() {
            // No subscribers is fine.
            let _ = self.shared.committed.send(Arc::new(logged));
        }
        for (job, results) in jobs.into_iter().zip(outcomes) {
            let _ = job.reply.send(results);
        }
        true
    }
}

/// The stored row for a pending record; moves the leaf (the big part) and
/// hands back the rest of the record.
fn new_entry(index: u64, record_id: String, mut pending: Pending) -> (NewEntry, Pending) {
    let mut columns =
        crate::store::IndexColumns::of(&pending.record, std::mem::take(&mut pending.leaf));
    columns.record_id = record_id;
    let entry = NewEntry {
        index,
        leaf_hash: pending.leaf_hash,
        columns,
    };
    (entry, pending)
}

fn fail_all(jobs: Vec<Job>, error: &sqlx::Error) {
    for job in jobs {
        let results = (0..job.count)
            .map(|_| {
                Err(LogError::Storage(sqlx::Error::Protocol(format!(
                    "commit failed: {error}"
                ))))
            })
            .collect();
        let _ = job.reply.send(results);
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

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
