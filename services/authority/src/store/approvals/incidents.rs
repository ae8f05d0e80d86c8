//! Closed incidents, break-glass grants and their post-action reviews in
//! the database.

use super::*;

impl Store {
    /// Ends every active grant of `incident` and cancels its pending
    /// approval requests, each with its record, plus one
    /// `incident.closed` record. `(ended grants, cancelled requests)`.
    pub async fn close_incident(
        &self,
        incident: &str,
        actor: &Actor,
        reason: &str,
        correlation_id: &str,
        now: i64,
        decision: &steward_evidence::record::Decision,
    ) -> Result<(Vec<Grant>, Vec<ApprovalRequest>), StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE incident_ref = $1 AND state = 'active' ORDER BY id{}", <Db as Engine>::FOR_UPDATE);
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(incident).fetch_all(&mut *tx).await?;
            let mut grants = Vec::with_capacity(rows.len());
            for row in &rows {
                grants.push(grant_of!(row));
            }
            let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approval_requests WHERE incident_ref = $1 AND state = 'pending' ORDER BY id{}", <Db as Engine>::FOR_UPDATE);
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(incident).fetch_all(&mut *tx).await?;
            let mut requests = Vec::with_capacity(rows.len());
            for row in &rows {
                requests.push(approval_of!(row));
            }
            sqlx::query::<Db>("UPDATE grants SET state = 'incident_closed', ended_at = $1, end_reason = $2 WHERE incident_ref = $3 AND state = 'active'")
                .bind(now)
                .bind(reason)
                .bind(incident)
                .execute(&mut *tx)
                .await?;
            sqlx::query::<Db>("UPDATE approval_requests SET state = 'cancelled', decided_at = $1 WHERE incident_ref = $2 AND state = 'pending'")
                .bind(now)
                .bind(incident)
                .execute(&mut *tx)
                .await?;
            let mut records = Vec::with_capacity(grants.len() + requests.len() + 1);
            for g in &mut grants {
                g.state = GrantState::IncidentClosed;
                g.ended_at = now;
                g.end_reason = reason.to_owned();
                records.push(grant_record(actor, "grant.ended", g, reason));
            }
            for a in &mut requests {
                a.state = ApprovalState::Cancelled;
                a.decided_at = now;
                records.push(approval_record(actor, "approval.cancelled", a, reason));
            }
            let mut closed = incident_record(actor, incident, reason, correlation_id, grants.len(), requests.len());
            closed.decision = decision.clone();
            records.push(closed);
            // The broker is told (again, if it was closed before): see
            // `Store::closures_to_announce`.
            sqlx::query::<Db>(
                "INSERT INTO closed_incidents (incident_ref, closed_at, reason, leases_revoked_at, correlation_id) VALUES ($1, $2, $3, 0, $4) \
                 ON CONFLICT (incident_ref) DO UPDATE SET closed_at = $2, reason = $3, leases_revoked_at = 0, correlation_id = $4",
            )
            .bind(incident)
            .bind(now)
            .bind(reason)
            .bind(correlation_id)
            .execute(&mut *tx)
            .await?;
            tx.enqueue_all(&records).await?;
            tx.commit().await?;
            (grants, requests)
        }))
    }

    /// Closed incidents whose leases the broker has not yet revoked, oldest
    /// first.
    pub async fn closures_to_announce(&self, limit: i64) -> Result<Vec<Closure>, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            sqlx::query_as::<Db, (String, String, i64, String)>(
                "SELECT incident_ref, reason, closed_at, correlation_id FROM closed_incidents WHERE leases_revoked_at = 0 \
                 ORDER BY closed_at LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(incident, reason, closed_at, correlation_id)| Closure {
                incident,
                reason,
                closed_at,
                correlation_id,
            })
            .collect()
        }))
    }

    /// Records that the broker revoked the leases of `incident` as closed
    /// at `closed_at` (a later closing is announced again).
    pub async fn closure_announced(
        &self,
        incident: &str,
        closed_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        on_backend!(&self.db, pool, Db => {
            sqlx::query::<Db>(
                "UPDATE closed_incidents SET leases_revoked_at = $1 WHERE incident_ref = $2 AND closed_at = $3",
            )
                .bind(now)
                .bind(incident)
                .bind(closed_at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Stores a break-glass grant with its post-action review and records.
    pub async fn break_glass(
        &self,
        grant: &Grant,
        review: &PostActionReview,
        records: Vec<EvidenceRecord>,
    ) -> Result<(), StoreError> {
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            insert_grant!(Db, tx, grant);
            let sql = format!(
                "INSERT INTO post_action_reviews ({POST_REVIEW_COLUMNS}) VALUES ({})",
                placeholders(POST_REVIEW_COLUMNS)
            );
            sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(&review.id)
                .bind(&review.grant_id)
                .bind(&review.principal)
                .bind(&review.action)
                .bind(&review.resource_id)
                .bind(&review.incident_ref)
                .bind(&review.reason)
                .bind(review.assignees.join("\n"))
                .bind(review.state.as_str())
                .bind(review.due_at)
                .bind(review.flagged_at)
                .bind(&review.completed_by)
                .bind(&review.completion_note)
                .bind(review.completed_at)
                .bind(review.created_at)
                .execute(&mut *tx)
                .await?;
            tx.enqueue_all(&records).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn post_action_review(&self, id: &str) -> Result<PostActionReview, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {POST_REVIEW_COLUMNS} FROM post_action_reviews WHERE id = $1");
            match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? {
                Some(row) => post_review_of!(&row),
                None => return Err(StoreError::NotFound(format!("id: post-action review {id} does not exist"))),
            }
        }))
    }

    pub async fn post_action_reviews(
        &self,
        f: &ListFilter,
    ) -> Result<Vec<PostActionReview>, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            let sql = format!(
                "SELECT {POST_REVIEW_COLUMNS} FROM post_action_reviews WHERE ($1 = '' OR state = $1) AND ($2 = 0 OR (state = 'open' AND due_at < $2)) AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT $4"
            );
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(f.state.unwrap_or(""))
                .bind(f.due_before)
                .bind(&f.before_id)
                .bind(i64::try_from(f.limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            let mut found = Vec::with_capacity(rows.len());
            for row in &rows {
                found.push(post_review_of!(row));
            }
            found
        }))
    }

    /// Completes open review `id` after `allowed` accepts the completer.
    pub async fn complete_post_action_review(
        &self,
        id: &str,
        actor: &Actor,
        note: &str,
        now: i64,
        allowed: impl FnOnce(&PostActionReview) -> Result<(), StoreError>,
    ) -> Result<PostActionReview, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT {POST_REVIEW_COLUMNS} FROM post_action_reviews WHERE id = $1{}", <Db as Engine>::FOR_UPDATE);
            let mut r = match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await? {
                Some(row) => post_review_of!(&row),
                None => return Err(StoreError::NotFound(format!("id: post-action review {id} does not exist"))),
            };
            if r.state != ReviewState::Open {
                return Err(StoreError::FailedPrecondition(format!("id: post-action review {id} is already completed")));
            }
            allowed(&r)?;
            r.state = ReviewState::Completed;
            r.completed_by = actor.name().to_owned();
            r.completion_note = note.to_owned();
            r.completed_at = now;
            sqlx::query::<Db>("UPDATE post_action_reviews SET state = 'completed', completed_by = $1, completion_note = $2, completed_at = $3 WHERE id = $4")
                .bind(&r.completed_by)
                .bind(note)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let mut completed = review_record(actor, "breakglass.review_completed", &r, note);
            completed.correlation_id = grant_correlation!(Db, tx, &r.grant_id);
            tx.enqueue_all(&[completed]).await?;
            tx.commit().await?;
            r
        }))
    }
}
