//! Grants in the database: read, claimed by a decision, revoked.

use super::*;

impl Store {
    pub async fn grant(&self, id: &str) -> Result<Grant, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1");
            match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? {
                Some(row) => grant_of!(&row),
                None => return Err(StoreError::NotFound(format!("id: grant {id} does not exist"))),
            }
        }))
    }

    pub async fn grants(&self, f: &ListFilter) -> Result<Vec<Grant>, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            let sql = format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE ($1 = '' OR state = $1) AND ($2 = '' OR principal = $2) AND ($3 = '' OR resource_id = $3) AND ($4 = '' OR incident_ref = $4) AND ($5 = '' OR id < $5) ORDER BY id DESC LIMIT $6"
            );
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(f.state.unwrap_or(""))
                .bind(&f.principal)
                .bind(&f.resource_id)
                .bind(&f.incident_ref)
                .bind(&f.before_id)
                .bind(i64::try_from(f.limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            let mut found = Vec::with_capacity(rows.len());
            for row in &rows {
                found.push(grant_of!(row));
            }
            found
        }))
    }

    /// Every principal that holds an active grant.
    pub async fn grant_holders(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let rows: Vec<String> = on_backend!(&self.db, pool, Db => {
            sqlx::query_scalar::<Db, String>("SELECT DISTINCT principal FROM grants WHERE state = 'active'")
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// The active grants for this principal, action and resource that are
    /// usable at `now` for `incident_ref`, oldest first.
    pub async fn usable_grants(
        &self,
        principal: &str,
        action: &str,
        resource_id: &str,
        incident_ref: &str,
        now: i64,
    ) -> Result<Vec<Grant>, StoreError> {
        let found: Vec<Grant> = on_backend!(&self.db, pool, Db => {
            let sql = format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE principal = $1 AND action = $2 AND resource_id = $3 AND state = 'active' AND (incident_ref = '' OR incident_ref = $4) ORDER BY id"
            );
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(principal)
                .bind(action)
                .bind(resource_id)
                .bind(incident_ref)
                .fetch_all(pool)
                .await?;
            let mut found = Vec::with_capacity(rows.len());
            for row in &rows {
                found.push(grant_of!(row));
            }
            found
        });
        Ok(found.into_iter().filter(|g| g.usable_at(now)).collect())
    }

    /// Marks grant `id` used by an ALLOW; a single-use grant is spent.
    /// False when another decision spent it first.
    pub async fn claim_grant(
        &self,
        id: &str,
        actor: &Actor,
        decision_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1{}", <Db as Engine>::FOR_UPDATE);
            let mut g = match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await? {
                Some(row) => grant_of!(&row),
                None => return Ok(false),
            };
            if g.state != GrantState::Active || !g.usable_at(now) {
                return Ok(false);
            }
            if g.claimed_at == 0 {
                g.claimed_at = now;
            }
            if g.single_use {
                g.state = GrantState::Used;
                g.ended_at = now;
            }
            sqlx::query::<Db>("UPDATE grants SET state = $1, claimed_at = $2, ended_at = $3 WHERE id = $4")
                .bind(g.state.as_str())
                .bind(g.claimed_at)
                .bind(g.ended_at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let mut record = grant_record(actor, "grant.used", &g, "");
            record.attributes.insert("decision_id".to_owned(), decision_id.to_owned());
            tx.enqueue_all(&[record]).await?;
            tx.commit().await?;
        });
        Ok(true)
    }

    /// Ends active grant `id` early.
    pub async fn revoke_grant(
        &self,
        id: &str,
        actor: &Actor,
        reason: &str,
        now: i64,
        allowed: impl FnOnce(&Grant) -> Result<(), StoreError>,
    ) -> Result<Grant, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1{}", <Db as Engine>::FOR_UPDATE);
            let mut g = match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await? {
                Some(row) => grant_of!(&row),
                None => return Err(StoreError::NotFound(format!("id: grant {id} does not exist"))),
            };
            allowed(&g)?;
            if g.state != GrantState::Active {
                return Err(StoreError::FailedPrecondition(format!(
                    "id: grant {id} is already {}", g.state.as_str()
                )));
            }
            g.state = GrantState::Revoked;
            g.ended_at = now;
            g.end_reason = reason.to_owned();
            sqlx::query::<Db>("UPDATE grants SET state = 'revoked', ended_at = $1, end_reason = $2 WHERE id = $3")
                .bind(now)
                .bind(reason)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.enqueue_all(&[grant_record(actor, "grant.revoked", &g, reason)]).await?;
            tx.commit().await?;
            g
        }))
    }
}
