//! Group commit, the one way Steward's services batch.
//!
//! Every service turns many callers' small writes into few transactions
//! (or few peer calls) the same way: a writer task waits for the first job,
//! takes every job already queued behind it up to a limit, applies them as
//! one unit, and answers each caller. A lone caller's job goes at once; under
//! load, the jobs that queued while the previous group was being applied
//! form the next one. [`queue`] makes the queue, [`Group::next`] forms a
//! group, and the caller applies it and answers.
//!
//! The limits live in [`limits`], named, in one place: a limit that must
//! match another service's (the broker's `AuthorizeBatch` groups and
//! authority's cap) is one constant.

use tokio::sync::mpsc;

/// Every group's limit, named once.
pub mod limits {
    /// Most requests one `AuthorizeBatch` call carries: authority refuses
    /// more, the broker sends no more.
    pub const AUTHORIZE_BATCH: usize = 256;
    /// Most lease changes (issue, renew, record, revoke) in one broker
    /// transaction.
    pub const LEASE_CHANGES: usize = 256;
    /// Most lifecycle transitions in one inventory transaction.
    pub const TRANSITIONS: usize = 256;
    /// Most evidence records in one outbox transaction.
    pub const OUTBOX_RECORDS: usize = 1000;
    /// Most evidence records in one `AppendBatch` call. (How many the
    /// audit sequencer appends in one transaction is its `max_batch`
    /// setting.)
    pub const APPEND_BATCH: usize = 1000;
    /// Appends (each an `AppendBatch` call's records) queued for the audit
    /// sequencer before callers wait.
    pub const AUDIT_QUEUE: usize = 4096;
}

/// How many jobs wait in a queue, per job a group takes: callers beyond it
/// wait to enqueue, which is the back-pressure.
const QUEUE_PER_GROUP: usize = 4;

/// A queue of `J`s for a writer task, grouping at most `limit` jobs (by
/// count); it holds a few groups' worth before callers wait to enqueue.
pub fn queue<J>(limit: usize) -> (mpsc::Sender<J>, Group<J>) {
    weighed(limit, QUEUE_PER_GROUP * limit.max(1), |_| 1)
}

/// A queue of at most `capacity` `J`s whose groups hold at most `limit` of
/// `weight` (a job's records, say); a job heavier than the limit forms a
/// group alone.
pub fn weighed<J>(
    limit: usize,
    capacity: usize,
    weight: fn(&J) -> usize,
) -> (mpsc::Sender<J>, Group<J>) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let group = Group {
        receiver,
        limit: limit.max(1),
        weight,
    };
    (sender, group)
}

/// The writer task's end of a queue.
#[derive(Debug)]
pub struct Group<J> {
    receiver: mpsc::Receiver<J>,
    limit: usize,
    weight: fn(&J) -> usize,
}

impl<J> Group<J> {
    /// Waits for a job and returns it with every job queued behind it, up
    /// to the limit, in the order they were queued; `None` once the queue
    /// is closed and empty. Cancel-safe: dropping the future before it
    /// resolves loses no job.
    pub async fn next(&mut self) -> Option<Vec<J>> {
        let first = self.receiver.recv().await?;
        Some(self.behind(first))
    }

    /// The jobs already queued, as [`Group::next`] would group them,
    /// without waiting; `None` when none is queued.
    pub fn ready(&mut self) -> Option<Vec<J>> {
        let first = self.receiver.try_recv().ok()?;
        Some(self.behind(first))
    }

    /// Stops taking new jobs; the queued ones can still be taken.
    pub fn close(&mut self) {
        self.receiver.close();
    }

    fn behind(&mut self, first: J) -> Vec<J> {
        let mut weight = (self.weight)(&first);
        let mut jobs = vec![first];
        while weight < self.limit {
            match self.receiver.try_recv() {
                Ok(job) => {
                    weight += (self.weight)(&job);
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lone_job_goes_alone_and_queued_jobs_go_together_in_order() {
        let (sender, mut group) = queue::<u32>(3);
        sender.send(1).await.unwrap();
        assert_eq!(group.next().await, Some(vec![1]));
        for job in 2..=6 {
            sender.send(job).await.unwrap();
        }
        assert_eq!(group.next().await, Some(vec![2, 3, 4]));
        assert_eq!(group.next().await, Some(vec![5, 6]));
        assert_eq!(group.ready(), None);
    }

    #[tokio::test]
    async fn weight_bounds_a_group_and_a_heavy_job_goes_alone() {
        let (sender, mut group) = weighed::<Vec<u8>>(4, 8, Vec::len);
        for job in [vec![0; 5], vec![0; 2], vec![0; 2], vec![0; 1]] {
            sender.send(job).await.unwrap();
        }
        let sizes = |g: Vec<Vec<u8>>| g.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(group.next().await.map(sizes), Some(vec![5]));
        assert_eq!(group.next().await.map(sizes), Some(vec![2, 2]));
        assert_eq!(group.ready().map(sizes), Some(vec![1]));
    }

    #[tokio::test]
    async fn a_closed_queue_still_yields_what_it_holds_then_ends() {
        let (sender, mut group) = queue::<u32>(10);
        sender.send(7).await.unwrap();
        group.close();
        assert!(sender.send(8).await.is_err());
        assert_eq!(group.next().await, Some(vec![7]));
        assert_eq!(group.next().await, None);
        drop(sender);
    }

    #[tokio::test]
    async fn next_is_cancel_safe() {
        let (sender, mut group) = queue::<u32>(10);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(10), group.next()).await;
        assert!(waited.is_err());
        sender.send(9).await.unwrap();
        assert_eq!(group.next().await, Some(vec![9]));
    }
}
