//! Roles: work that one replica at a time does for a database (the
//! broker's reaper, authority's responder, an outbox's delivery). On
//! PostgreSQL a role is a session-level advisory lock on a connection of
//! its own; the holder pings it, and the server ends an idle session after
//! [`IDLE_LIMIT`], so a holder whose machine vanished frees the role within
//! seconds even when no TCP reset ever arrives. SQLite has one process, so
//! there every role is always held.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

/// How long the server keeps a role's session that has gone quiet.
pub const IDLE_LIMIT: Duration = Duration::from_secs(5);

/// The advisory lock key of role `name`: FNV-1a of `steward-role:<name>`,
/// stable across builds and releases.
pub fn role_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"steward-role:".iter().chain(name.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// A held role: its lock's session, out of the pool for as long as it is
/// held. Dropping it closes the session, which frees the role.
#[derive(Debug)]
pub struct HeldRole {
    session: PgConnection,
}

impl HeldRole {
    /// Takes role `name` if no other session holds it.
    pub async fn try_take(pool: &PgPool, name: &str) -> Result<Option<Self>, sqlx::Error> {
        let mut session = pool.acquire().await?.detach();
        // Best effort: servers before PostgreSQL 14 have no such setting.
        let limit = format!("SET idle_session_timeout = {}", IDLE_LIMIT.as_millis());
        if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(limit))
            .execute(&mut session)
            .await
        {
            tracing::debug!(%error, "idle_session_timeout is not available");
        }
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(role_key(name))
            .fetch_one(&mut session)
            .await?;
        if taken {
            Ok(Some(Self { session }))
        } else {
            let _ = session.close().await;
            Ok(None)
        }
    }

    /// Whether the session (and so the lock) is still there.
    pub async fn alive(&mut self) -> bool {
        matches!(
            tokio::time::timeout(IDLE_LIMIT / 5, self.session.ping()).await,
            Ok(Ok(()))
        )
    }

    /// Gives the role up at once.
    pub async fn release(self) {
        let _ = self.session.close().await;
    }
}
