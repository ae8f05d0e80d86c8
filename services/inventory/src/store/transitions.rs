//! Lifecycle transitions, group-committed.
//!
//! A durable SQLite commit costs an fsync, so one transition per
//! transaction would cap the service at the disk's commit rate. Instead a
//! single writer task takes every transition queued while the previous
//! batch was committing and applies them in one transaction: one SELECT for
//! all the identities, one UPDATE per changed identity, one multi-row
//! INSERT for the history, one for the evidence. Each request still gets
//! its own answer; an illegal transition fails alone.

use crate::changes::Changed;
use std::collections::HashMap;

use steward_batch::{Group, limits};
use steward_db::{Placeholders, on_backend};
use steward_evidence::EvidenceRecord;
use steward_outbox::OutboxTransaction;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{COLUMNS, Columns, Engine, Store, check_version, not_found, read_identity};
use crate::domain::{ChangeContext, Error, Identity, Nanos, State, now_ns};
use crate::evidence;

/// A requested lifecycle change.
#[derive(Debug, Clone)]
pub struct TransitionRequest {
    pub id: Uuid,
    pub target: State,
    pub reason: String,
    pub expected_version: Option<i64>,
    pub context: ChangeContext,
    /// Authority's ALLOW, recorded with the change (`None` for authority's
    /// own transitions, which its rules decided).
    pub allowed: Option<crate::domain::Allowed>,
}

/// One row of an identity's lifecycle history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub id: Uuid,
    pub identity_id: Uuid,
    pub from: State,
    pub to: State,
    pub actor: String,
    pub reason: String,
    pub incident_ref: String,
    pub reversible: bool,
    pub at: Nanos,
}

type Reply = oneshot::Sender<Result<(Identity, Transition), Error>>;

/// The queue in front of the writer task.
#[derive(Debug, Clone)]
pub struct Transitions {
    queue: mpsc::Sender<(TransitionRequest, Reply)>,
}

impl Transitions {
    /// Starts the writer; it stops when every handle is dropped or
    /// `shutdown` resolves.
    pub fn start(
        store: Store,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (queue, rx) = steward_batch::queue(limits::TRANSITIONS);
        (Self { queue }, run(store, rx, shutdown))
    }

    /// Applies one transition once it is durable with its evidence.
    pub async fn submit(
        &self,
        request: TransitionRequest,
    ) -> Result<(Identity, Transition), Error> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((request, reply))
            .await
            .map_err(|_| Error::unavailable("the transition writer has stopped"))?;
        answer
            .await
            .map_err(|_| Error::unavailable("the transition writer has stopped"))?
    }
}

async fn run(
    store: Store,
    mut rx: Group<(TransitionRequest, Reply)>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            () = &mut shutdown => return,
            batch = rx.next() => match batch { Some(batch) => batch, None => return },
        };
        let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        match store.apply_transitions(&requests).await {
            Ok(results) => {
                let changed = requests
                    .iter()
                    .map(|r| r.id.hyphenated().to_string())
                    .collect();
                store.committed(Changed::Identities(changed)).await;
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                tracing::error!(%error, batch = requests.len(), "transition batch failed");
                for reply in replies {
                    let _ = reply.send(Err(match &error {
                        Error::Aborted(m) => Error::Aborted(m.clone()),
                        Error::Storage(e) => Error::Storage(e.clone()),
                        other => Error::unavailable(other.to_string()),
                    }));
                }
            }
        }
    }
}

impl Store {
    /// Applies `requests` in order in one transaction; the outer error
    /// means nothing was applied.
    async fn apply_transitions(
        &self,
        requests: &[TransitionRequest],
    ) -> Result<Vec<Result<(Identity, Transition), Error>>, Error> {
        let mut ids: Vec<String> = requests
            .iter()
            .map(|r| r.id.hyphenated().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        let results = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!(
                "SELECT {COLUMNS} FROM identities WHERE id IN ({}){}",
                <Db as Placeholders>::list(ids.len(), 1),
                <Db as Engine>::FOR_UPDATE
            );
            let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
            for id in &ids {
                query = query.bind(id);
            }
            let rows = query.fetch_all(&mut *tx).await?;
            let mut current: HashMap<Uuid, (Identity, i64)> = HashMap::with_capacity(rows.len());
            for row in &rows {
                let identity = read_identity(row)?;
                let stored_version = identity.version;
                current.insert(identity.id, (identity, stored_version));
            }
            let now = now_ns();
            let mut results = Vec::with_capacity(requests.len());
            let mut history: Vec<Transition> = Vec::new();
            let mut records: Vec<EvidenceRecord> = Vec::new();
            for request in requests {
                results.push(plan(request, &mut current, now).map(|(identity, transition, record)| {
                    history.push(transition.clone());
                    records.push(record);
                    (identity, transition)
                }));
            }
            for (identity, stored_version) in current.values() {
                if identity.version == *stored_version {
                    continue;
                }
                let done = sqlx::query::<Db>(
                    "UPDATE identities SET state = $1, state_changed_at_ns = $2, updated_at_ns = $3,
                        version = $4 WHERE id = $5 AND version = $6",
                )
                .bind(identity.state.as_str())
                .bind(identity.state_changed_at)
                .bind(identity.updated_at)
                .bind(identity.version)
                .bind(identity.id.hyphenated().to_string())
                .bind(stored_version)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(Error::Aborted(format!(
                        "identity {} changed concurrently; retry",
                        identity.id
                    )));
                }
            }
            for chunk in history.chunks(100) {
                let sql = format!(
                    "INSERT INTO transitions (id, identity_id, from_state, to_state, actor, reason,
                        incident_ref, reversible, at_ns) VALUES {}",
                    <Db as Placeholders>::values(chunk.len(), 9, 1)
                );
                let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
                for t in chunk {
                    query = query
                        .bind(t.id.hyphenated().to_string())
                        .bind(t.identity_id.hyphenated().to_string())
                        .bind(t.from.as_str())
                        .bind(t.to.as_str())
                        .bind(t.actor.clone())
                        .bind(t.reason.clone())
                        .bind(t.incident_ref.clone())
                        .bind(i64::from(t.reversible))
                        .bind(t.at);
                }
                query.execute(&mut *tx).await?;
            }
            tx.enqueue_all(&records).await?;
            tx.commit().await?;
            results
        });
        Ok(results)
    }

    /// An identity's lifecycle history, oldest first.
    pub async fn transitions(
        &self,
        identity_id: &Uuid,
        page: usize,
        token: &str,
    ) -> Result<(Vec<Transition>, String), Error> {
        let after = super::after_id(token)?;
        let rows = on_backend!(&self.db, pool, Db => {
            let rows = sqlx::query::<Db>(
                "SELECT id, identity_id, from_state, to_state, actor, reason, incident_ref,
                    reversible, at_ns FROM transitions
                 WHERE identity_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(identity_id.hyphenated().to_string())
            .bind(&after)
            .bind(i64::try_from(page + 1).unwrap_or(i64::MAX))
            .fetch_all(pool)
            .await?;
            rows.iter().map(|row| {
                let mut c = Columns::new(row);
                let id = c.id()?;
                let identity_id = c.id()?;
                let from = c.text()?;
                let to = c.text()?;
                Ok(Transition {
                    id,
                    identity_id,
                    from: State::parse(&from).ok_or_else(|| super::corrupt("state", &from))?,
                    to: State::parse(&to).ok_or_else(|| super::corrupt("state", &to))?,
                    actor: c.text()?,
                    reason: c.text()?,
                    incident_ref: c.text()?,
                    reversible: c.int()? != 0,
                    at: c.int()?,
                })
            }).collect::<Result<Vec<_>, Error>>()?
        });
        Ok(super::paged(rows, page, |t| t.id.hyphenated().to_string()))
    }
}

/// Checks one request against the identity as earlier requests of the batch
/// left it, and applies it in memory.
fn plan(
    request: &TransitionRequest,
    current: &mut HashMap<Uuid, (Identity, i64)>,
    now: Nanos,
) -> Result<(Identity, Transition, EvidenceRecord), Error> {
    let (identity, _) = current
        .get_mut(&request.id)
        .ok_or_else(|| not_found(&request.id))?;
    check_version(identity, request.expected_version)?;
    let from = identity.state;
    from.transition_to(request.target)
        .map_err(|why| Error::FailedPrecondition(format!("target_state: {why}")))?;
    identity.state = request.target;
    identity.state_changed_at = now;
    identity.updated_at = now;
    identity.version += 1;
    let transition = Transition {
        id: Uuid::now_v7(),
        identity_id: identity.id,
        from,
        to: request.target,
        actor: request.context.actor.clone(),
        reason: request.reason.clone(),
        incident_ref: request.context.incident_ref.clone(),
        reversible: request.target.is_reversible(),
        at: now,
    };
    let mut record = evidence::record(
        &request.context,
        &format!("identity.{}", verb(from, request.target)),
        Some((&identity.id, identity.spec.kind)),
        &request.reason,
        [
            ("from_state", from.as_str().to_owned()),
            ("to_state", request.target.as_str().to_owned()),
            ("reversible", transition.reversible.to_string()),
            ("transition_id", transition.id.hyphenated().to_string()),
            (
                "decision_id",
                request
                    .allowed
                    .as_ref()
                    .map(|a| a.decision_id.clone())
                    .unwrap_or_default(),
            ),
        ],
    );
    if let Some(allowed) = &request.allowed {
        record.decision = allowed.decision.clone();
    }
    Ok((identity.clone(), transition, record))
}

/// The evidence action for a transition: what was done, in one word.
fn verb(from: State, to: State) -> &'static str {
    match to {
        State::Active if from.is_reversible() => "reinstate",
        State::Active => "activate",
        State::Watchlisted => "watchlist",
        State::Restricted => "restrict",
        State::Suspended => "suspend",
        State::Revoked => "revoke",
        State::Decommissioned => "decommission",
    }
}
