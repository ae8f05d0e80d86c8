//! The sequencer: the one writer of entries, committing queued appends in
//! groups (drain, one transaction, then the tree, the broadcast and every
//! waiting caller).

use super::*;

/// The only writer of entries. It holds no sender of its own queue. On
/// PostgreSQL it writes through the connection that holds the sequencer
/// lock, so losing that session means losing the ability to write.
pub struct Sequencer {
    pub(super) shared: Arc<Shared>,
    pub(super) store: Store,
    pub(super) locked: Option<sqlx::PgConnection>,
}

impl Sequencer {
    /// Commits queued appends until `shutdown`; then refuses new ones
    /// (callers get UNAVAILABLE), commits what was already queued, and
    /// returns.
    pub async fn run(self, queue: Group<Job>, shutdown: impl std::future::Future<Output = ()>) {
        let _ = self.run_until_lost(queue, shutdown).await;
    }

    /// Like [`Sequencer::run`], but hands the queue back if a write fails on
    /// the locked connection (the role may be lost): the caller steps down.
    pub async fn run_until_lost(
        mut self,
        mut queue: Group<Job>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Option<Group<Job>> {
        tokio::pin!(shutdown);
        let mut stopping = false;
        loop {
            let jobs = if stopping {
                queue.next().await
            } else {
                tokio::select! {
                    jobs = queue.next() => jobs,
                    () = &mut shutdown => {
                        stopping = true;
                        queue.close();
                        continue;
                    }
                }
            };
            let Some(jobs) = jobs else { break };
            if !self.commit(jobs).await && self.locked.is_some() && !stopping {
                return Some(queue);
            }
        }
        tracing::debug!("sequencer stopped");
        None
    }

    /// Commits one group; false when the write failed.
    pub(super) async fn commit(&mut self, jobs: Vec<Job>) -> bool {
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
                fail_all(jobs, error.into());
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
            fail_all(jobs, error.into());
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
pub(super) fn new_entry(
    index: u64,
    record_id: String,
    mut pending: Pending,
) -> (NewEntry, Pending) {
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

/// Answers every job of a group that did not commit with `error`.
pub(super) fn fail_all(jobs: Vec<Job>, error: steward_db::StorageError) {
    for job in jobs {
        let results = (0..job.count)
            .map(|_| Err(LogError::Storage(error.clone())))
            .collect();
        let _ = job.reply.send(results);
    }
}
