//! Access-review campaigns: a snapshot of the identities matching a filter,
//! each to be attested by one of its owners before the deadline. What is
//! still pending at the deadline is flagged, and the identity gets a
//! policy-violation signal so the flag shows in its risk.

use crate::changes::Changed;
use steward_db::on_backend;
use steward_evidence::EvidenceRecord;
use steward_outbox::OutboxTransaction;
use uuid::Uuid;

use super::{Clause, Columns, Engine, Param, Store, StoredRow, bind_params, corrupt, paged};
use crate::domain::lifecycle::LIVE;
use crate::domain::risk::{Severity, SignalKind, signal_part};
use crate::domain::{ChangeContext, Error, Filter, Kind, Nanos, State, now_ns};
use crate::evidence;

crate::domain::names!(
    /// An owner's answer, or its absence.
    Decision {
        Pending => "pending",
        StillNeeded => "still_needed",
        Revoke => "revoke",
        Flagged => "flagged",
    }
);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub id: Uuid,
    pub name: String,
    pub filter: Filter,
    pub deadline: Nanos,
    pub open: bool,
    pub created_by: String,
    pub created_at: Nanos,
    pub pending: u64,
    pub still_needed: u64,
    pub revoked: u64,
    pub flagged: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewItem {
    pub campaign_id: Uuid,
    pub identity_id: Uuid,
    pub display_name: String,
    pub owners: Vec<String>,
    pub decision: Decision,
    pub reviewer: String,
    pub reason: String,
    pub new_expires_at: Option<Nanos>,
    pub decided_at: Option<Nanos>,
}

/// An owner's attestation.
#[derive(Debug, Clone)]
pub struct Attestation {
    pub campaign_id: Uuid,
    pub identity_id: Uuid,
    /// The person authority verified.
    pub reviewer: String,
    /// Authority's ALLOW of the attestation (its `attest` decision):
    /// whether the reviewer may answer for this identity is its to say.
    pub allowed: Option<crate::domain::Allowed>,
    pub decision: Decision,
    pub reason: String,
    pub new_expires_at: Option<Nanos>,
}

const ITEM_COLUMNS: &str = "campaign_id, identity_id, display_name, owners, decision, reviewer, \
    reason, new_expires_at_ns, decided_at_ns";

fn read_item<R: StoredRow>(row: &R) -> Result<ReviewItem, Error> {
    let mut c = Columns::new(row);
    let campaign_id = c.id()?;
    let identity_id = c.id()?;
    let display_name = c.text()?;
    let owners = c.text()?;
    let decision = c.text()?;
    Ok(ReviewItem {
        campaign_id,
        identity_id,
        display_name,
        owners: owners
            .split('\n')
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect(),
        decision: Decision::parse(&decision).ok_or_else(|| corrupt("decision", &decision))?,
        reviewer: c.text()?,
        reason: c.text()?,
        new_expires_at: c.opt_int()?,
        decided_at: c.opt_int()?,
    })
}

/// Flags every pending item of campaign `$id` whose deadline passed, raises
/// a signal on each flagged identity, and closes the campaign.
macro_rules! close_overdue {
    ($tx:expr, $db:ty, $id:expr, $context:expr, $now:expr) => {{
        let id: String = $id;
        let pending: Vec<(String, String)> = sqlx::query_as::<$db, (String, String)>(
            "SELECT r.identity_id, i.kind FROM review_items r JOIN identities i ON i.id = r.identity_id
             WHERE r.campaign_id = $1 AND r.decision = 'pending'",
        )
        .bind(&id)
        .fetch_all(&mut *$tx)
        .await?;
        sqlx::query::<$db>(
            "UPDATE review_items SET decision = 'flagged', decided_at_ns = $1
             WHERE campaign_id = $2 AND decision = 'pending'",
        )
        .bind($now)
        .bind(&id)
        .execute(&mut *$tx)
        .await?;
        sqlx::query::<$db>("UPDATE review_campaigns SET state = 'closed' WHERE id = $1")
            .bind(&id)
            .execute(&mut *$tx)
            .await?;
        let mut records: Vec<EvidenceRecord> = Vec::with_capacity(pending.len());
        for (identity_id, kind) in &pending {
            let signal_id = Uuid::now_v7();
            sqlx::query::<$db>(
                "INSERT INTO signals (id, identity_id, kind, severity, source, observed_at_ns,
                    evidence_ref, summary, status, resolution, resolved_at_ns, reported_by)
                 VALUES ($1, $2, 'policy_violation', 'medium', 'access-review', $3, $4,
                    'not attested by the access review deadline', 'open', '', NULL, $5)",
            )
            .bind(signal_id.hyphenated().to_string())
            .bind(identity_id)
            .bind($now)
            .bind(format!("review-campaign:{id}"))
            .bind(&$context.actor)
            .execute(&mut *$tx)
            .await?;
            let open: Vec<(String, String)> = sqlx::query_as::<$db, (String, String)>(
                "SELECT kind, severity FROM signals WHERE identity_id = $1 AND status = 'open'",
            )
            .bind(identity_id)
            .fetch_all(&mut *$tx)
            .await?;
            let open: Vec<(SignalKind, Severity)> = open
                .iter()
                .map(|(k, s)| super::activity::open_signal(k, s))
                .collect::<Result<_, Error>>()?;
            let (score, summary) = signal_part(&open);
            sqlx::query::<$db>(
                "UPDATE identities SET signal_score = $1, signal_summary = $2 WHERE id = $3",
            )
            .bind(i64::from(score))
            .bind(summary)
            .bind(identity_id)
            .execute(&mut *$tx)
            .await?;
            let target = Uuid::try_parse(identity_id).map_err(|_| corrupt("id", identity_id))?;
            records.push(evidence::record(
                $context,
                "review.flag",
                Some((&target, Kind::parse(kind).ok_or_else(|| corrupt("kind", kind))?)),
                "not attested by the access review deadline",
                [
                    ("campaign_id", id.clone()),
                    ("signal_id", signal_id.hyphenated().to_string()),
                ],
            ));
        }
        $tx.enqueue_all(&records).await?;
        pending.len()
    }};
}

impl Store {
    /// Opens a campaign over the live identities matching its filter.
    pub async fn start_campaign(
        &self,
        campaign: &Campaign,
        context: &ChangeContext,
    ) -> Result<u64, Error> {
        let mut filter = campaign.filter.clone();
        if filter.states.is_empty() {
            filter.states = LIVE.to_vec();
        }
        let filter_json = serde_json::to_string(&campaign.filter)
            .map_err(|e| Error::unavailable(e.to_string()))?;
        let items = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            sqlx::query::<Db>(
                "INSERT INTO review_campaigns (id, name, filter, deadline_ns, state, created_by, created_at_ns)
                 VALUES ($1, $2, $3, $4, 'open', $5, $6)",
            )
            .bind(campaign.id.hyphenated().to_string())
            .bind(&campaign.name)
            .bind(&filter_json)
            .bind(campaign.deadline)
            .bind(&campaign.created_by)
            .bind(campaign.created_at)
            .execute(&mut *tx)
            .await?;
            let mut clause = Clause::default();
            clause.push("1 = 1", []);
            let campaign_param = clause.next_param();
            clause.params.push(Param::Text(campaign.id.hyphenated().to_string()));
            clause.filter::<Db>(&filter);
            let sql = format!(
                "INSERT INTO review_items ({ITEM_COLUMNS})
                 SELECT ${campaign_param}, i.id, i.display_name, i.business_owner || '\n' || i.technical_owner,
                    'pending', '', '', NULL, NULL
                 FROM identities i {}",
                clause.where_sql()
            );
            let query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
            let done = bind_params!(query, &clause.params).execute(&mut *tx).await?;
            let record = evidence::record(
                context,
                "review.start",
                None,
                "",
                [
                    ("campaign_id", campaign.id.hyphenated().to_string()),
                    ("name", campaign.name.clone()),
                    ("filter", filter_json.clone()),
                    ("items", done.rows_affected().to_string()),
                    ("deadline_ns", campaign.deadline.to_string()),
                ],
            );
            tx.enqueue_all(std::slice::from_ref(&record)).await?;
            tx.commit().await?;
            done.rows_affected()
        });
        self.committed(Changed::Nothing).await;
        Ok(items)
    }

    /// A campaign with its tallies, after flagging what is overdue.
    pub async fn campaign(&self, id: &Uuid, context: &ChangeContext) -> Result<Campaign, Error> {
        self.close_if_overdue(id, context).await?;
        let key = id.hyphenated().to_string();
        on_backend!(&self.db, pool, Db => {
            let row: Option<(String, String, i64, String, String, i64)> = sqlx::query_as::<Db, (String, String, i64, String, String, i64)>(
                "SELECT name, filter, deadline_ns, state, created_by, created_at_ns FROM review_campaigns WHERE id = $1",
            )
            .bind(&key)
            .fetch_optional(pool)
            .await?;
            let (name, filter, deadline, state, created_by, created_at) =
                row.ok_or_else(|| Error::NotFound(format!("review campaign {id} does not exist")))?;
            let tallies: Vec<(String, i64)> = sqlx::query_as::<Db, (String, i64)>(
                "SELECT decision, COUNT(*) FROM review_items WHERE campaign_id = $1 GROUP BY decision",
            )
            .bind(&key)
            .fetch_all(pool)
            .await?;
            let count = |d: Decision| {
                tallies.iter().find(|(k, _)| k == d.as_str()).map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0))
            };
            Ok(Campaign {
                id: *id,
                name,
                filter: serde_json::from_str(&filter).map_err(|_| corrupt("filter", &filter))?,
                deadline,
                open: state == "open",
                created_by,
                created_at,
                pending: count(Decision::Pending),
                still_needed: count(Decision::StillNeeded),
                revoked: count(Decision::Revoke),
                flagged: count(Decision::Flagged),
            })
        })
    }

    /// Flags the pending items of one campaign if its deadline passed.
    async fn close_if_overdue(&self, id: &Uuid, context: &ChangeContext) -> Result<(), Error> {
        let now = now_ns();
        let flagged = on_backend!(&self.db, pool, Db => {
            let due: Option<i64> = sqlx::query_scalar::<Db, i64>(
                "SELECT deadline_ns FROM review_campaigns WHERE id = $1 AND state = 'open' AND deadline_ns <= $2",
            )
            .bind(id.hyphenated().to_string())
            .bind(now)
            .fetch_optional(pool)
            .await?;
            if due.is_none() {
                return Ok(());
            }
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            // Another caller may have closed it meanwhile.
            let sql = format!("SELECT state FROM review_campaigns WHERE id = $1{}", <Db as Engine>::FOR_UPDATE);
            let still: Option<String> = sqlx::query_scalar::<Db, String>(sqlx::AssertSqlSafe(sql))
            .bind(id.hyphenated().to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if still.as_deref() != Some("open") {
                return Ok(());
            }
            let flagged = close_overdue!(tx, Db, id.hyphenated().to_string(), context, now);
            tx.commit().await?;
            flagged
        });
        if flagged > 0 {
            tracing::info!(campaign = %id, flagged, "access review deadline passed; unattested identities flagged");
        }
        self.committed(Changed::All).await;
        Ok(())
    }

    /// Closes every open campaign whose deadline passed; for the sweeper.
    pub async fn close_overdue_campaigns(&self, context: &ChangeContext) -> Result<usize, Error> {
        let now = now_ns();
        let due: Vec<String> = on_backend!(&self.db, pool, Db => {
            sqlx::query_scalar::<Db, String>(
                "SELECT id FROM review_campaigns WHERE state = 'open' AND deadline_ns <= $1",
            )
            .bind(now)
            .fetch_all(pool)
            .await?
        });
        for id in &due {
            let id = Uuid::try_parse(id).map_err(|_| corrupt("campaign id", id))?;
            self.close_if_overdue(&id, context).await?;
        }
        Ok(due.len())
    }

    /// A page of a campaign's items, by identity id.
    pub async fn review_items(
        &self,
        campaign_id: &Uuid,
        decision: Option<Decision>,
        page: usize,
        token: &str,
    ) -> Result<(Vec<ReviewItem>, String), Error> {
        let after = super::after_id(token)?;
        let rows = on_backend!(&self.db, pool, Db => {
            let sql = format!(
                "SELECT {ITEM_COLUMNS} FROM review_items WHERE campaign_id = $1 AND ($2 = '' OR decision = $2)
                 AND identity_id > $3 ORDER BY identity_id LIMIT $4"
            );
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(campaign_id.hyphenated().to_string())
                .bind(decision.map(Decision::as_str).unwrap_or(""))
                .bind(&after)
                .bind(i64::try_from(page + 1).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            rows.iter().map(read_item).collect::<Result<Vec<_>, _>>()?
        });
        Ok(paged(rows, page, |i| {
            i.identity_id.hyphenated().to_string()
        }))
    }

    /// Records an owner's attestation and applies it to the identity: a new
    /// expiry, or revocation.
    pub async fn attest(
        &self,
        attestation: &Attestation,
        context: &ChangeContext,
    ) -> Result<ReviewItem, Error> {
        let now = now_ns();
        let a = attestation;
        let campaign = a.campaign_id.hyphenated().to_string();
        let identity = a.identity_id.hyphenated().to_string();
        let item = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let row: Option<(i64, String)> = sqlx::query_as::<Db, (i64, String)>(
                "SELECT deadline_ns, state FROM review_campaigns WHERE id = $1",
            )
            .bind(&campaign)
            .fetch_optional(&mut *tx)
            .await?;
            let (deadline, state) = row.ok_or_else(|| Error::NotFound(format!("review campaign {campaign} does not exist")))?;
            if state != "open" || deadline <= now {
                return Err(Error::FailedPrecondition(
                    "campaign_id: the campaign's deadline has passed; unattested identities are flagged".to_owned(),
                ));
            }
            let sql = format!("SELECT {ITEM_COLUMNS} FROM review_items WHERE campaign_id = $1 AND identity_id = $2");
            let row = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(&campaign)
                .bind(&identity)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound(format!("identity {identity} is not part of campaign {campaign}")))?;
            let mut item = read_item(&row)?;
            may_attest(&item, a)?;
            let sql = format!("SELECT kind, state, version FROM identities WHERE id = $1{}", <Db as Engine>::FOR_UPDATE);
            let (kind, state, version): (String, String, i64) = sqlx::query_as::<Db, (String, String, i64)>(sqlx::AssertSqlSafe(sql))
                .bind(&identity)
                .fetch_one(&mut *tx)
                .await?;
            let kind = Kind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?;
            let state = State::parse(&state).ok_or_else(|| corrupt("state", &state))?;
            let mut records = Vec::new();
            match a.decision {
                Decision::StillNeeded => {
                    sqlx::query::<Db>("UPDATE identities SET expires_at_ns = $1, updated_at_ns = $2, version = $3 WHERE id = $4")
                        .bind(a.new_expires_at)
                        .bind(now)
                        .bind(version + 1)
                        .bind(&identity)
                        .execute(&mut *tx)
                        .await?;
                }
                _ => {
                    if state.transition_to(State::Revoked).is_ok() {
                        sqlx::query::<Db>("UPDATE identities SET state = 'revoked', state_changed_at_ns = $1, updated_at_ns = $1, version = $2 WHERE id = $3")
                            .bind(now)
                            .bind(version + 1)
                            .bind(&identity)
                            .execute(&mut *tx)
                            .await?;
                        let transition_id = Uuid::now_v7();
                        sqlx::query::<Db>("INSERT INTO transitions (id, identity_id, from_state, to_state, actor, reason, incident_ref, reversible, at_ns)
                            VALUES ($1, $2, $3, 'revoked', $4, $5, $6, 0, $7)")
                            .bind(transition_id.hyphenated().to_string())
                            .bind(&identity)
                            .bind(state.as_str())
                            .bind(&context.actor)
                            .bind(format!("access review: revoke requested by owner {}: {}", a.reviewer, a.reason))
                            .bind(&context.incident_ref)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        records.push(revoked_record(a, kind, state, transition_id, context));
                    }
                }
            }
            sqlx::query::<Db>("UPDATE review_items SET decision = $1, reviewer = $2, reason = $3, new_expires_at_ns = $4, decided_at_ns = $5
                WHERE campaign_id = $6 AND identity_id = $7")
                .bind(a.decision.as_str())
                .bind(&a.reviewer)
                .bind(&a.reason)
                .bind(a.new_expires_at)
                .bind(now)
                .bind(&campaign)
                .bind(&identity)
                .execute(&mut *tx)
                .await?;
            let attested = attested_record(a, kind, context);
            records.insert(0, attested);
            tx.enqueue_all(&records).await?;
            tx.commit().await?;
            item.decision = a.decision;
            item.reviewer = a.reviewer.clone();
            item.reason = a.reason.clone();
            item.new_expires_at = a.new_expires_at;
            item.decided_at = Some(now);
            item
        });
        self.committed(Changed::one(a.identity_id.hyphenated().to_string()))
            .await;
        Ok(item)
    }
}

/// Whether `a` may answer for `item`: not yet answered, and allowed by
/// authority. Unchecked attestations are not taken: authority decides who
/// may answer (the identity's owners, by name or by group).
fn may_attest(item: &ReviewItem, a: &Attestation) -> Result<(), Error> {
    if item.decision != Decision::Pending {
        return Err(Error::FailedPrecondition(format!(
            "identity_id: already attested ({}) by {}",
            item.decision, item.reviewer
        )));
    }
    if a.allowed.is_none() {
        return Err(Error::PermissionDenied(format!(
            "reviewer: {} was not allowed by authority to attest",
            steward_errors::shown(&a.reviewer)
        )));
    }
    Ok(())
}

/// The `review.attest` record, carrying authority's decision.
fn attested_record(a: &Attestation, kind: Kind, context: &ChangeContext) -> EvidenceRecord {
    let mut attested = evidence::record(
        context,
        "review.attest",
        Some((&a.identity_id, kind)),
        &a.reason,
        [
            ("campaign_id", a.campaign_id.hyphenated().to_string()),
            ("decision", a.decision.as_str().to_owned()),
            ("reviewer", a.reviewer.clone()),
            (
                "new_expires_at_ns",
                a.new_expires_at.map(|t| t.to_string()).unwrap_or_default(),
            ),
            (
                "decision_id",
                a.allowed
                    .as_ref()
                    .map(|d| d.decision_id.clone())
                    .unwrap_or_default(),
            ),
        ],
    );
    if let Some(allowed) = &a.allowed {
        attested.decision = allowed.decision.clone();
    }
    attested
}

/// The `identity.revoke` record of an owner's "revoke" answer.
fn revoked_record(
    a: &Attestation,
    kind: Kind,
    from: State,
    transition_id: Uuid,
    context: &ChangeContext,
) -> EvidenceRecord {
    evidence::record(
        context,
        "identity.revoke",
        Some((&a.identity_id, kind)),
        &a.reason,
        [
            ("from_state", from.as_str().to_owned()),
            ("to_state", "revoked".to_owned()),
            ("reversible", "false".to_owned()),
            ("transition_id", transition_id.hyphenated().to_string()),
            ("campaign_id", a.campaign_id.hyphenated().to_string()),
        ],
    )
}
