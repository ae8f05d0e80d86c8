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
    #[error("{0}")]
    Corrupt(String),
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
    reply: oneshot::Sender<Vec<Result<Appended, LogError>>>,
}

/// A signed checkpoint.
#[derive(Debug, Clone)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub note: String,
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
    tree: RwLock<MerkleTree>,
    signer: NoteSigner,
    origin: String,
    latest: RwLock<Option<SignedCheckpoint>>,
    publish: tokio::sync::Mutex<()>,
    committed: broadcast::Sender<Arc<Vec<LoggedEntry>>>,
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
        let hashes = store.leaf_hashes().await?;
        let mut tree = MerkleTree::new();
        for hash in hashes {
            tree.push(hash);
        }
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
                let text = stored.note.split("\n\n").next().unwrap_or_default();
                let checkpoint = Checkpoint::parse(&format!("{text}\n"))
                    .map_err(|e| LogError::Corrupt(format!("stored checkpoint: {e}")))?;
                Some(SignedCheckpoint {
                    checkpoint,
                    note: stored.note,
                })
            }
        };
        tracing::info!(tree_size = tree.size(), origin = %options.origin, "evidence log opened");
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
        });
        Ok((Self { shared, jobs }, queue))
    }

    /// Appends records in order; one result per record.
    pub async fn append(
        &self,
        records: Vec<Pending>,
    ) -> Result<Vec<Result<Appended, LogError>>, LogError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { records, reply })
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
        let _serial = self.shared.publish.lock().await;
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

    fn tree(&self) -> std::sync::RwLockReadGuard<'_, MerkleTree> {
        self.shared.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The sequencer for this log, to run on its own task.
    pub fn sequencer(&self) -> Sequencer {
        Sequencer {
            shared: self.shared.clone(),
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

/// The only writer of entries. It holds no sender of its own queue, so it
/// stops once every [`Log`] handle is gone, after answering what was queued.
pub struct Sequencer {
    shared: Arc<Shared>,
}

impl Sequencer {
    /// Commits queued appends until `shutdown`; then refuses new ones
    /// (callers get UNAVAILABLE), commits what was already queued, and
    /// returns.
    pub async fn run(
        self,
        mut queue: mpsc::Receiver<Job>,
        max_batch: usize,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
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
            self.commit(jobs).await;
        }
        tracing::debug!("sequencer stopped");
    }

    async fn commit(&self, jobs: Vec<Job>) {
        let ids: Vec<String> = jobs
            .iter()
            .flat_map(|j| {
                j.records
                    .iter()
                    .map(|p| p.record.record_id.hyphenated().to_string())
            })
            .collect();
        let existing = match self.shared.store.existing(&ids).await {
            Ok(rows) => rows,
            Err(error) => return fail_all(jobs, &error),
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
        let mut outcomes: Vec<Vec<Result<Appended, LogError>>> = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let mut results = Vec::with_capacity(job.records.len());
            for pending in &job.records {
                let id = pending.record.record_id.hyphenated().to_string();
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
                new_entries.push(new_entry(index, id, pending));
                logged.push(LoggedEntry {
                    index,
                    record: pending.record.clone(),
                    appended_by: pending.appended_by.clone(),
                    leaf_hash: pending.leaf_hash,
                });
                results.push(Ok(Appended {
                    index,
                    leaf_hash: pending.leaf_hash,
                    duplicate: false,
                }));
            }
            outcomes.push(results);
        }

        if let Err(error) = self.shared.store.insert(&new_entries).await {
            tracing::error!(%error, records = new_entries.len(), "evidence commit failed");
            return fail_all(jobs, &error);
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
    }
}

fn new_entry(index: u64, record_id: String, pending: &Pending) -> NewEntry {
    let r = &pending.record;
    NewEntry {
        index,
        record_id,
        leaf: pending.leaf.clone(),
        leaf_hash: pending.leaf_hash,
        time_ns: i64::try_from(r.time.unix_timestamp_nanos()).unwrap_or(i64::MAX),
        incident_ref: r.incident_ref.clone(),
        nhi_id: r.target.nhi_id.clone(),
        workload: r.actor.workload_spiffe_id.clone(),
        human_subject: r.actor.human_subject.clone(),
        action: r.action.clone(),
        correlation_id: r.correlation_id.clone(),
    }
}

fn fail_all(jobs: Vec<Job>, error: &sqlx::Error) {
    for job in jobs {
        let results = job
            .records
            .iter()
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
