//! Approval requests, reviews, grants and post-action reviews in the
//! database. Every change commits with its evidence through the outbox.

use steward_db::{Engine, on_backend};
use steward_evidence::EvidenceRecord;
use steward_outbox::OutboxTransaction;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::approvals::{
    Actor, ApprovalRequest, ApprovalState, Grant, GrantState, PostActionReview, Review,
    ReviewState, Verdict, approval_record, grant_record, incident_record, review_record,
};

const APPROVAL_COLUMNS: &str = "id, principal, principal_issuer, action, resource_id, incident_ref, requester, reason, approvals_required, approver, suggested_reviewers, window_start, window_end, claim_by, policy_set_version, decision_id, correlation_id, state, created_at, expires_at, decided_at, grant_id";
const REVIEW_COLUMNS: &str =
    "request_id, reviewer, reviewer_issuer, carried_by, verdict, reason, at";
const GRANT_COLUMNS: &str = "id, principal, action, resource_id, incident_ref, approval_request_id, approvers, break_glass, window_start, window_end, claim_by, single_use, state, claimed_at, ended_at, end_reason, created_at, correlation_id";
const POST_REVIEW_COLUMNS: &str = "id, grant_id, principal, action, resource_id, incident_ref, reason, assignees, state, due_at, flagged_at, completed_by, completion_note, completed_at, created_at";

fn placeholders(columns: &str) -> String {
    (1..=columns.split(',').count())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn lines(list: &str) -> Vec<String> {
    list.split('\n')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn corrupt(what: &str, value: &str) -> StoreError {
    super::corrupt(format!(
        "stored {what} {} is not valid",
        steward_errors::shown(value)
    ))
}

macro_rules! col {
    ($row:expr, $name:literal) => {
        sqlx::Row::try_get($row, $name)?
    };
}

macro_rules! approval_of {
    ($row:expr) => {{
        let row = $row;
        let state: String = col!(row, "state");
        let required: i64 = col!(row, "approvals_required");
        let version: i64 = col!(row, "policy_set_version");
        let reviewers: String = col!(row, "suggested_reviewers");
        ApprovalRequest {
            id: col!(row, "id"),
            principal: col!(row, "principal"),
            principal_issuer: col!(row, "principal_issuer"),
            action: col!(row, "action"),
            resource_id: col!(row, "resource_id"),
            incident_ref: col!(row, "incident_ref"),
            requester: col!(row, "requester"),
            reason: col!(row, "reason"),
            approvals_required: u32::try_from(required)
                .map_err(|_| corrupt("approval count", &required.to_string()))?,
            approver: col!(row, "approver"),
            suggested_reviewers: lines(&reviewers),
            window_start: col!(row, "window_start"),
            window_end: col!(row, "window_end"),
            claim_by: col!(row, "claim_by"),
            policy_set_version: u64::try_from(version)
                .map_err(|_| corrupt("policy set version", &version.to_string()))?,
            decision_id: col!(row, "decision_id"),
            correlation_id: col!(row, "correlation_id"),
            state: ApprovalState::parse(&state).ok_or_else(|| corrupt("approval state", &state))?,
            created_at: col!(row, "created_at"),
            expires_at: col!(row, "expires_at"),
            decided_at: col!(row, "decided_at"),
            grant_id: col!(row, "grant_id"),
            reviews: Vec::new(),
        }
    }};
}

/// The correlation id of grant `$id`, read in transaction `$tx`: the
/// records about a break-glass grant's review carry the grant's.
macro_rules! grant_correlation {
    ($db:ty, $tx:expr, $id:expr) => {
        sqlx::query_scalar::<$db, String>("SELECT correlation_id FROM grants WHERE id = $1")
            .bind($id)
            .fetch_optional(&mut *$tx)
            .await?
            .unwrap_or_default()
    };
}

macro_rules! review_of {
    ($row:expr) => {{
        let row = $row;
        let verdict: String = col!(row, "verdict");
        Review {
            reviewer: col!(row, "reviewer"),
            reviewer_issuer: col!(row, "reviewer_issuer"),
            carried_by: col!(row, "carried_by"),
            verdict: Verdict::parse(&verdict).ok_or_else(|| corrupt("verdict", &verdict))?,
            reason: col!(row, "reason"),
            at: col!(row, "at"),
        }
    }};
}

macro_rules! grant_of {
    ($row:expr) => {{
        let row = $row;
        let state: String = col!(row, "state");
        let approvers: String = col!(row, "approvers");
        Grant {
            id: col!(row, "id"),
            principal: col!(row, "principal"),
            action: col!(row, "action"),
            resource_id: col!(row, "resource_id"),
            incident_ref: col!(row, "incident_ref"),
            approval_request_id: col!(row, "approval_request_id"),
            approvers: lines(&approvers),
            break_glass: col!(row, "break_glass"),
            window_start: col!(row, "window_start"),
            window_end: col!(row, "window_end"),
            claim_by: col!(row, "claim_by"),
            single_use: col!(row, "single_use"),
            state: GrantState::parse(&state).ok_or_else(|| corrupt("grant state", &state))?,
            claimed_at: col!(row, "claimed_at"),
            ended_at: col!(row, "ended_at"),
            end_reason: col!(row, "end_reason"),
            created_at: col!(row, "created_at"),
            correlation_id: col!(row, "correlation_id"),
        }
    }};
}

macro_rules! post_review_of {
    ($row:expr) => {{
        let row = $row;
        let state: String = col!(row, "state");
        let assignees: String = col!(row, "assignees");
        PostActionReview {
            id: col!(row, "id"),
            grant_id: col!(row, "grant_id"),
            principal: col!(row, "principal"),
            action: col!(row, "action"),
            resource_id: col!(row, "resource_id"),
            incident_ref: col!(row, "incident_ref"),
            reason: col!(row, "reason"),
            assignees: lines(&assignees),
            state: ReviewState::parse(&state).ok_or_else(|| corrupt("review state", &state))?,
            due_at: col!(row, "due_at"),
            flagged_at: col!(row, "flagged_at"),
            completed_by: col!(row, "completed_by"),
            completion_note: col!(row, "completion_note"),
            completed_at: col!(row, "completed_at"),
            created_at: col!(row, "created_at"),
        }
    }};
}

/// Inserts an approval request (inside `$tx`).
macro_rules! insert_approval {
    ($Db:ty, $tx:expr, $a:expr) => {{
        let a = $a;
        let sql = format!(
            "INSERT INTO approval_requests ({APPROVAL_COLUMNS}) VALUES ({})",
            placeholders(APPROVAL_COLUMNS)
        );
        sqlx::query::<$Db>(sqlx::AssertSqlSafe(sql))
            .bind(&a.id)
            .bind(&a.principal)
            .bind(&a.principal_issuer)
            .bind(&a.action)
            .bind(&a.resource_id)
            .bind(&a.incident_ref)
            .bind(&a.requester)
            .bind(&a.reason)
            .bind(i64::from(a.approvals_required))
            .bind(&a.approver)
            .bind(a.suggested_reviewers.join("\n"))
            .bind(a.window_start)
            .bind(a.window_end)
            .bind(a.claim_by)
            .bind(i64::try_from(a.policy_set_version).unwrap_or(i64::MAX))
            .bind(&a.decision_id)
            .bind(&a.correlation_id)
            .bind(a.state.as_str())
            .bind(a.created_at)
            .bind(a.expires_at)
            .bind(a.decided_at)
            .bind(&a.grant_id)
            .execute(&mut *$tx)
            .await?;
    }};
}

macro_rules! insert_grant {
    ($Db:ty, $tx:expr, $g:expr) => {{
        let g = $g;
        let sql = format!(
            "INSERT INTO grants ({GRANT_COLUMNS}) VALUES ({})",
            placeholders(GRANT_COLUMNS)
        );
        sqlx::query::<$Db>(sqlx::AssertSqlSafe(sql))
            .bind(&g.id)
            .bind(&g.principal)
            .bind(&g.action)
            .bind(&g.resource_id)
            .bind(&g.incident_ref)
            .bind(&g.approval_request_id)
            .bind(g.approvers.join("\n"))
            .bind(g.break_glass)
            .bind(g.window_start)
            .bind(g.window_end)
            .bind(g.claim_by)
            .bind(g.single_use)
            .bind(g.state.as_str())
            .bind(g.claimed_at)
            .bind(g.ended_at)
            .bind(&g.end_reason)
            .bind(g.created_at)
            .bind(&g.correlation_id)
            .execute(&mut *$tx)
            .await?;
    }};
}

/// Filters for the list calls; empty fields match everything.
/// A closed incident, as the broker is to be told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    pub incident: String,
    pub reason: String,
    /// Unix seconds.
    pub closed_at: i64,
    pub correlation_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<&'static str>,
    pub principal: String,
    pub resource_id: String,
    pub incident_ref: String,
    /// Open post-action reviews due before this time (0: no such filter).
    pub due_before: i64,
    /// Ids below this one (the page token), newest first.
    pub before_id: String,
    pub limit: usize,
}

/// The grant an approval becomes once it has its approvals.
fn grant_from(a: &ApprovalRequest, approvers: Vec<String>, now: i64) -> Grant {
    let window_end = if a.window_end == i64::MAX {
        a.window_start.max(now) + crate::approvals::DEFAULT_GRANT_SECS
    } else {
        a.window_end
    };
    Grant {
        id: Uuid::now_v7().hyphenated().to_string(),
        principal: a.principal.clone(),
        action: a.action.clone(),
        resource_id: a.resource_id.clone(),
        incident_ref: a.incident_ref.clone(),
        approval_request_id: a.id.clone(),
        approvers,
        break_glass: false,
        window_start: a.window_start,
        window_end,
        claim_by: a.claim_by.min(window_end),
        single_use: true,
        state: GrantState::Active,
        claimed_at: 0,
        ended_at: 0,
        end_reason: String::new(),
        created_at: now,
        correlation_id: a.correlation_id.clone(),
    }
}

impl Store {
    /// Approval requests still waiting for approvers at `now` (Unix
    /// seconds): the pending-approvals gauge.
    pub async fn pending_approvals(&self, now: i64) -> Result<i64, StoreError> {
        const SQL: &str =
            "SELECT COUNT(*) FROM approval_requests WHERE state = 'pending' AND expires_at >= $1";
        Ok(on_backend!(&self.db, pool, Db => {
            sqlx::query_scalar::<Db, i64>(SQL).bind(now).fetch_one(pool).await?
        }))
    }

    /// Opens `request`, unless one is already pending for the same
    /// principal, action, resource and incident, or approved with a grant
    /// whose window has not started yet: then that one is returned and
    /// nothing changes. `(request, opened)`.
    pub async fn open_approval(
        &self,
        request: ApprovalRequest,
        actor: &Actor,
        now: i64,
    ) -> Result<(ApprovalRequest, bool), StoreError> {
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!(
                "SELECT {APPROVAL_COLUMNS} FROM approval_requests WHERE principal = $1 AND action = $2 AND resource_id = $3 AND incident_ref = $4 AND state = 'pending' AND expires_at >= $5 ORDER BY id DESC LIMIT 1"
            );
            let existing = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(&request.principal)
                .bind(&request.action)
                .bind(&request.resource_id)
                .bind(&request.incident_ref)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            // Approved already, with a grant whose window has not started:
            // asking again before then waits for that grant.
            let prefixed = APPROVAL_COLUMNS
                .split(", ")
                .map(|c| format!("a.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {prefixed} FROM approval_requests a JOIN grants g ON g.id = a.grant_id WHERE a.principal = $1 AND a.action = $2 AND a.resource_id = $3 AND a.incident_ref = $4 AND a.state = 'approved' AND g.state = 'active' AND g.window_start > $5 ORDER BY a.id DESC LIMIT 1"
            );
            let existing = match existing {
                Some(row) => Some(row),
                None => sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                    .bind(&request.principal)
                    .bind(&request.action)
                    .bind(&request.resource_id)
                    .bind(&request.incident_ref)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?,
            };
            if let Some(row) = existing {
                let found = approval_of!(&row);
                tx.rollback().await?;
                return Ok((self.with_reviews(found).await?, false));
            }
            insert_approval!(Db, tx, &request);
            tx.enqueue_all(&[approval_record(actor, "approval.requested", &request, &request.reason)])
                .await?;
            tx.commit().await?;
        });
        Ok((request, true))
    }

    async fn with_reviews(&self, mut a: ApprovalRequest) -> Result<ApprovalRequest, StoreError> {
        on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {REVIEW_COLUMNS} FROM approval_reviews WHERE request_id = $1 ORDER BY at, reviewer");
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(&a.id)
                .fetch_all(pool)
                .await?;
            for row in &rows {
                a.reviews.push(review_of!(row));
            }
        });
        Ok(a)
    }

    pub async fn approval(&self, id: &str) -> Result<ApprovalRequest, StoreError> {
        let found = on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approval_requests WHERE id = $1");
            match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? {
                Some(row) => approval_of!(&row),
                None => return Err(StoreError::NotFound(format!("id: approval request {id} does not exist"))),
            }
        });
        self.with_reviews(found).await
    }

    pub async fn approvals(&self, f: &ListFilter) -> Result<Vec<ApprovalRequest>, StoreError> {
        let found = on_backend!(&self.db, pool, Db => {
            let sql = format!(
                "SELECT {APPROVAL_COLUMNS} FROM approval_requests WHERE ($1 = '' OR state = $1) AND ($2 = '' OR resource_id = $2) AND ($3 = '' OR incident_ref = $3) AND ($4 = '' OR id < $4) ORDER BY id DESC LIMIT $5"
            );
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(f.state.unwrap_or(""))
                .bind(&f.resource_id)
                .bind(&f.incident_ref)
                .bind(&f.before_id)
                .bind(i64::try_from(f.limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            let mut found = Vec::with_capacity(rows.len());
            for row in &rows {
                found.push(approval_of!(row));
            }
            found
        });
        let mut out = Vec::with_capacity(found.len());
        for a in found {
            out.push(self.with_reviews(a).await?);
        }
        Ok(out)
    }

    /// Records `review` on pending request `id`. One deny denies; the
    /// approval that reaches the threshold approves and issues the grant.
    /// Returns the request after the review (and the grant, if issued).
    pub async fn review_approval(
        &self,
        id: &str,
        review: Review,
        actor: &Actor,
        now: i64,
    ) -> Result<(ApprovalRequest, Option<Grant>), StoreError> {
        let (request, grant) = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approval_requests WHERE id = $1{}", <Db as Engine>::FOR_UPDATE);
            let mut a = match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await? {
                Some(row) => approval_of!(&row),
                None => return Err(StoreError::NotFound(format!("id: approval request {id} does not exist"))),
            };
            if a.state != ApprovalState::Pending {
                return Err(StoreError::FailedPrecondition(format!(
                    "id: approval request {id} is already {}", a.state.as_str()
                )));
            }
            if now > a.expires_at {
                return Err(StoreError::FailedPrecondition(format!(
                    "id: approval request {id} expired; ask again"
                )));
            }
            let sql = format!("SELECT {REVIEW_COLUMNS} FROM approval_reviews WHERE request_id = $1 ORDER BY at, reviewer");
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_all(&mut *tx).await?;
            for row in &rows {
                a.reviews.push(review_of!(row));
            }
            if a.reviews.iter().any(|r| r.reviewer == review.reviewer) {
                return Err(StoreError::AlreadyExists(format!(
                    "{} has already reviewed approval request {id}", review.reviewer
                )));
            }
            let sql = format!("INSERT INTO approval_reviews ({REVIEW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
            sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(&review.reviewer)
                .bind(&review.reviewer_issuer)
                .bind(&review.carried_by)
                .bind(review.verdict.as_str())
                .bind(&review.reason)
                .bind(review.at)
                .execute(&mut *tx)
                .await?;
            let reason = review.reason.clone();
            let verdict = review.verdict;
            a.reviews.push(review);
            let approvers: Vec<String> = a
                .reviews
                .iter()
                .filter(|r| r.verdict == Verdict::Approve)
                .map(|r| r.reviewer.clone())
                .collect();
            let mut records = vec![approval_record(actor, &format!("approval.review.{}", verdict.as_str()), &a, &reason)];
            let mut grant = None;
            let new_state = match verdict {
                Verdict::Deny => Some(ApprovalState::Denied),
                Verdict::Approve if approvers.len() >= a.approvals_required as usize => Some(ApprovalState::Approved),
                Verdict::Approve => None,
            };
            if let Some(state) = new_state {
                a.state = state;
                a.decided_at = now;
                if state == ApprovalState::Approved {
                    let g = grant_from(&a, approvers, now);
                    insert_grant!(Db, tx, &g);
                    a.grant_id = g.id.clone();
                    records.push(approval_record(actor, "approval.approved", &a, &reason));
                    records.push(grant_record(actor, "grant.issued", &g, &a.reason));
                    grant = Some(g);
                } else {
                    records.push(approval_record(actor, "approval.denied", &a, &reason));
                }
                sqlx::query::<Db>("UPDATE approval_requests SET state = $1, decided_at = $2, grant_id = $3 WHERE id = $4")
                    .bind(a.state.as_str())
                    .bind(now)
                    .bind(&a.grant_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.enqueue_all(&records).await?;
            tx.commit().await?;
            (a, grant)
        });
        Ok((request, grant))
    }

    /// Cancels pending request `id` after `allowed` accepts it.
    pub async fn cancel_approval(
        &self,
        id: &str,
        actor: &Actor,
        reason: &str,
        now: i64,
        allowed: impl FnOnce(&ApprovalRequest) -> Result<(), StoreError>,
    ) -> Result<ApprovalRequest, StoreError> {
        let a = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approval_requests WHERE id = $1{}", <Db as Engine>::FOR_UPDATE);
            let mut a = match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await? {
                Some(row) => approval_of!(&row),
                None => return Err(StoreError::NotFound(format!("id: approval request {id} does not exist"))),
            };
            allowed(&a)?;
            if a.state != ApprovalState::Pending {
                return Err(StoreError::FailedPrecondition(format!(
                    "id: approval request {id} is already {}", a.state.as_str()
                )));
            }
            a.state = ApprovalState::Cancelled;
            a.decided_at = now;
            sqlx::query::<Db>("UPDATE approval_requests SET state = 'cancelled', decided_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.enqueue_all(&[approval_record(actor, "approval.cancelled", &a, reason)]).await?;
            tx.commit().await?;
            a
        });
        self.with_reviews(a).await
    }

    /// The periodic sweep: pending requests past their expiry become
    /// expired, active grants past their window or claim-by time expire,
    /// and open post-action reviews past due are flagged once. Each change
    /// is recorded. Returns how many rows changed.
    pub async fn sweep(&self, actor: &Actor, now: i64) -> Result<usize, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let mut records = Vec::new();
            let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approval_requests WHERE state = 'pending' AND expires_at < $1 ORDER BY id LIMIT 500");
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(now).fetch_all(&mut *tx).await?;
            for row in &rows {
                let mut a = approval_of!(row);
                a.state = ApprovalState::Expired;
                a.decided_at = now;
                sqlx::query::<Db>("UPDATE approval_requests SET state = 'expired', decided_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&a.id)
                    .execute(&mut *tx)
                    .await?;
                records.push(approval_record(actor, "approval.expired", &a, "no decision before the request expired"));
            }
            let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE state = 'active' AND (window_end < $1 OR (claimed_at = 0 AND claim_by < $1)) ORDER BY id LIMIT 500");
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(now).fetch_all(&mut *tx).await?;
            for row in &rows {
                let mut g = grant_of!(row);
                let why = if g.window_end < now { "the task window ended" } else { "not claimed by its claim-by time" };
                g.state = GrantState::Expired;
                g.ended_at = now;
                g.end_reason = why.to_owned();
                sqlx::query::<Db>("UPDATE grants SET state = 'expired', ended_at = $1, end_reason = $2 WHERE id = $3")
                    .bind(now)
                    .bind(why)
                    .bind(&g.id)
                    .execute(&mut *tx)
                    .await?;
                records.push(grant_record(actor, "grant.expired", &g, why));
            }
            let sql = format!("SELECT {POST_REVIEW_COLUMNS} FROM post_action_reviews WHERE state = 'open' AND due_at < $1 AND flagged_at = 0 ORDER BY id LIMIT 500");
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(now).fetch_all(&mut *tx).await?;
            for row in &rows {
                let mut r = post_review_of!(row);
                r.flagged_at = now;
                sqlx::query::<Db>("UPDATE post_action_reviews SET flagged_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&r.id)
                    .execute(&mut *tx)
                    .await?;
                let mut overdue = review_record(actor, "breakglass.review_overdue", &r, "the post-action review is overdue");
                overdue.correlation_id = grant_correlation!(Db, tx, &r.grant_id);
                records.push(overdue);
            }
            let changed = records.len();
            if changed > 0 {
                tx.enqueue_all(&records).await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            changed
        }))
    }
}

// After the macros above, which they use.
mod grants;
mod incidents;
