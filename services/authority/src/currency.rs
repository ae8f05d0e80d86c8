//! Every authority replica decides with the active policy set, not one
//! another replica has replaced (ADR 0026).
//!
//! - **Following.** Every [`FOLLOW`] a replica reads the last activation,
//!   compiles its version if it changed, and stores "I have seen
//!   activation N and decide only until `decides_until`" (the database's clock plus
//!   [`PROMISE`]) in [`TABLE`]. It decides only while its last such
//!   promise lasts (counted from before the statement, so never past what
//!   the database holds); a replica that cannot reach the database stops
//!   deciding within [`PROMISE`], as it could not record a decision anyway.
//! - **Activating.** The replica that activates a version switches at
//!   once, and returns only when every other replica whose promise is
//!   live has seen that activation, or its promise has ended. So once an
//!   activation (or a rollback) has returned, no replica decides with the
//!   set it replaced.
//!
//! On SQLite there is one process, and nothing to follow.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::store::SetKind;

/// One row per replica: the last activation it has seen, and until when
/// it decides.
pub const TABLE: &str = "policy_followers";
/// How often a replica reads the active version and renews its promise.
pub const FOLLOW: Duration = Duration::from_millis(250);
/// How far past a renewal a replica may decide without renewing.
pub const PROMISE: Duration = Duration::from_millis(1_500);

/// Until when this replica may decide.
#[derive(Debug)]
pub struct Currency {
    /// `None`: no limit (SQLite, one process).
    until: Mutex<Option<Instant>>,
    followed: Option<Follower>,
}

#[derive(Debug)]
struct Follower {
    me: String,
    pool: PgPool,
}

impl Currency {
    /// One process: always current.
    pub fn alone() -> Self {
        Self {
            until: Mutex::new(None),
            followed: None,
        }
    }

    /// A replica among others on `pool`: current once it has followed.
    pub fn among_replicas(pool: PgPool) -> Self {
        Self {
            until: Mutex::new(Some(Instant::now())),
            followed: Some(Follower {
                me: uuid::Uuid::new_v4().to_string(),
                pool,
            }),
        }
    }

    /// Whether there are other replicas to follow (PostgreSQL).
    pub fn among_others(&self) -> bool {
        self.followed.is_some()
    }

    /// Whether this replica may decide now.
    pub fn current(&self) -> bool {
        match *self.until.lock().unwrap_or_else(|p| p.into_inner()) {
            None => true,
            Some(until) => Instant::now() < until,
        }
    }

    fn extend(&self, until: Instant) {
        let mut slot = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some_and(|now| now < until) {
            *slot = Some(until);
        }
    }

    /// Stores "seen activation `seq`, deciding until now + [`PROMISE`]"
    /// and extends this replica's own limit to match, counted from before
    /// the statement.
    pub async fn renew(&self, seq: u64) {
        let Some(follower) = &self.followed else {
            return;
        };
        let started = Instant::now();
        let promise = i64::try_from(PROMISE.as_millis()).unwrap_or(i64::MAX);
        let renewed = sqlx::query(
            "INSERT INTO policy_followers (replica, seen_seq, decides_until_ms) \
             VALUES ($1, $2, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT + $3) \
             ON CONFLICT (replica) DO UPDATE SET seen_seq = EXCLUDED.seen_seq, \
             decides_until_ms = EXCLUDED.decides_until_ms",
        )
        .bind(&follower.me)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(promise)
        .execute(&follower.pool)
        .await;
        match renewed {
            Ok(_) => self.extend(started + PROMISE),
            Err(error) => {
                tracing::warn!(%error, "cannot renew this replica's policy promise; deciding stops when it ends");
            }
        }
    }

    /// At shutdown: activations stop waiting for this replica.
    pub async fn withdraw(&self) {
        let Some(follower) = &self.followed else {
            return;
        };
        let withdrawn = sqlx::query("DELETE FROM policy_followers WHERE replica = $1")
            .bind(&follower.me)
            .execute(&follower.pool)
            .await;
        if let Err(error) = withdrawn {
            tracing::debug!(%error, "cannot withdraw this replica's policy promise");
        }
    }

    /// Returns once every other live replica has seen the activations up
    /// to `store`'s last, or can no longer decide (at most [`PROMISE`] and
    /// a little more).
    pub async fn reached(&self, store: &crate::store::Store) {
        let Some(follower) = &self.followed else {
            return;
        };
        let seq = match store.last_activation(SetKind::Policies).await {
            Ok(Some((seq, _))) => i64::try_from(seq).unwrap_or(i64::MAX),
            Ok(None) => return,
            // Unknown: every promise made before it is waited out.
            Err(_) => i64::MAX,
        };
        let deadline = Instant::now() + PROMISE + FOLLOW * 2;
        loop {
            let behind: Result<i64, sqlx::Error> = sqlx::query_scalar(
                "SELECT COUNT(*) FROM policy_followers WHERE replica <> $1 AND seen_seq < $2 \
                 AND decides_until_ms > (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            )
            .bind(&follower.me)
            .bind(seq)
            .fetch_one(&follower.pool)
            .await;
            match behind {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot read which replicas follow the policy set; waiting out their promises");
                }
            }
            if Instant::now() >= deadline {
                // Every promise made before the activation has ended.
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_decides_only_within_its_last_promise() {
        assert!(Currency::alone().current());
        // Never connected: the pool is only held.
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let replica = Currency::among_replicas(pool);
        assert!(!replica.current(), "not before it has followed once");
        replica.extend(Instant::now() + Duration::from_millis(200));
        assert!(replica.current());
        // An older promise never shortens a newer one.
        replica.extend(Instant::now());
        assert!(replica.current());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!replica.current(), "the promise has ended");
    }
}
