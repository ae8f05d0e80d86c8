//! What the responder has handled and done, and where it is in
//! inventory's signal feed.

use steward_db::{Engine, on_backend};
use steward_evidence::EvidenceRecord;
use steward_outbox::OutboxTransaction;

use super::{Store, StoreError};

/// One thing a rule did (or declined to do) about one signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseAction {
    pub id: String,
    pub signal_id: String,
    pub identity_id: String,
    pub rule_id: String,
    pub rule_version: u64,
    pub action: String,
    pub outcome: String,
    pub detail: String,
    pub approval_request_id: String,
    pub at: i64,
}

const ACTION_COLUMNS: &str = "id, signal_id, identity_id, rule_id, rule_version, action, outcome, detail, approval_request_id, at";

/// The responder's cursor row.
const CURSOR: &str = "signals";

macro_rules! insert_actions {
    ($Db:ty, $tx:expr, $actions:expr) => {
        for a in $actions {
            let sql = format!(
                "INSERT INTO response_actions ({ACTION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            );
            sqlx::query::<$Db>(sqlx::AssertSqlSafe(sql))
                .bind(&a.id)
                .bind(&a.signal_id)
                .bind(&a.identity_id)
                .bind(&a.rule_id)
                .bind(i64::try_from(a.rule_version).unwrap_or(i64::MAX))
                .bind(&a.action)
                .bind(&a.outcome)
                .bind(&a.detail)
                .bind(&a.approval_request_id)
                .bind(a.at)
                .execute(&mut *$tx)
                .await?;
        }
    };
}

impl Store {
    /// The last signal id the responder moved past ("" at the start).
    pub async fn response_cursor(&self) -> Result<String, StoreError> {
        let found: Option<String> = on_backend!(&self.db, pool, Db => {
            sqlx::query_scalar::<Db, String>("SELECT after_id FROM response_cursor WHERE name = $1")
                .bind(CURSOR)
                .fetch_optional(pool)
                .await?
        });
        Ok(found.unwrap_or_default())
    }

    pub async fn set_response_cursor(&self, after_id: &str) -> Result<(), StoreError> {
        on_backend!(&self.db, pool, Db => {
            sqlx::query::<Db>(
                "INSERT INTO response_cursor (name, after_id) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET after_id = excluded.after_id",
            )
            .bind(CURSOR)
            .bind(after_id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn signal_handled(&self, signal_id: &str) -> Result<bool, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            sqlx::query_scalar::<Db, String>("SELECT signal_id FROM response_signals WHERE signal_id = $1")
                .bind(signal_id)
                .fetch_optional(pool)
                .await?
                .is_some()
        }))
    }

    /// Marks a signal handled, with what was done and its evidence, in one
    /// transaction. False when it was already handled (nothing written).
    pub async fn record_response(
        &self,
        signal_id: &str,
        identity_id: &str,
        rule_version: u64,
        actions: &[ResponseAction],
        records: &[EvidenceRecord],
        now: i64,
    ) -> Result<bool, StoreError> {
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let inserted = sqlx::query::<Db>(
                "INSERT INTO response_signals (signal_id, identity_id, rule_version, handled_at) VALUES ($1, $2, $3, $4) ON CONFLICT (signal_id) DO NOTHING",
            )
            .bind(signal_id)
            .bind(identity_id)
            .bind(i64::try_from(rule_version).unwrap_or(i64::MAX))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            insert_actions!(Db, tx, actions);
            if !records.is_empty() {
                tx.enqueue_all(records).await?;
            }
            tx.commit().await?;
        });
        Ok(true)
    }

    /// Records actions taken outside a signal's first handling (an
    /// approved action carried out later), with their evidence.
    pub async fn record_actions(
        &self,
        actions: &[ResponseAction],
        records: &[EvidenceRecord],
    ) -> Result<(), StoreError> {
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            insert_actions!(Db, tx, actions);
            if !records.is_empty() {
                tx.enqueue_all(records).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Actions, newest first, filtered by identity and/or signal.
    pub async fn response_actions(
        &self,
        identity_id: &str,
        signal_id: &str,
        before_id: &str,
        limit: usize,
    ) -> Result<Vec<ResponseAction>, StoreError> {
        type Row = (
            String,
            String,
            String,
            String,
            i64,
            String,
            String,
            String,
            String,
            i64,
        );
        let rows: Vec<Row> = on_backend!(&self.db, pool, Db => {
            let sql = format!(
                "SELECT {ACTION_COLUMNS} FROM response_actions WHERE ($1 = '' OR identity_id = $1) AND ($2 = '' OR signal_id = $2) AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT $4"
            );
            sqlx::query_as::<Db, Row>(sqlx::AssertSqlSafe(sql))
                .bind(identity_id)
                .bind(signal_id)
                .bind(before_id)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(
                |(
                    id,
                    signal_id,
                    identity_id,
                    rule_id,
                    rule_version,
                    action,
                    outcome,
                    detail,
                    approval_request_id,
                    at,
                )| {
                    Ok(ResponseAction {
                        id,
                        signal_id,
                        identity_id,
                        rule_id,
                        rule_version: u64::try_from(rule_version).map_err(|_| {
                            super::corrupt(format!(
                                "stored rule version {rule_version} is not valid"
                            ))
                        })?,
                        action,
                        outcome,
                        detail,
                        approval_request_id,
                        at,
                    })
                },
            )
            .collect()
    }
}
