//! Signals, entitlements, observed usage and owners: everything that
//! changes what is known about an identity without changing its spec.

use crate::changes::Changed;
use base64::Engine as _;
use steward_db::on_backend;
use steward_outbox::OutboxTransaction;
use uuid::Uuid;

use super::{Columns, Engine, Store, StoredRow, corrupt, not_found, paged};
use crate::domain::risk::{Severity, SignalKind, signal_part};
use crate::domain::{ChangeContext, Error, Kind, Nanos, State, now_ns};
use crate::evidence;

/// A stored risk signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub id: Uuid,
    pub identity_id: Uuid,
    pub kind: SignalKind,
    pub severity: Severity,
    pub source: String,
    pub observed_at: Nanos,
    pub evidence_ref: String,
    pub summary: String,
    pub open: bool,
    pub resolution: String,
    pub resolved_at: Option<Nanos>,
    pub reported_by: String,
}

/// A permission held or observed in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    pub identity_id: Uuid,
    pub system: String,
    pub permission: String,
    pub resource: String,
    pub granted: bool,
    pub granted_at: Option<Nanos>,
    pub last_used_at: Option<Nanos>,
    pub use_count: i64,
}

/// The (system, permission, resource) that names an entitlement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    pub system: String,
    pub permission: String,
    pub resource: String,
}

const SIGNAL_COLUMNS: &str = "id, identity_id, kind, severity, source, observed_at_ns, \
    evidence_ref, summary, status, resolution, resolved_at_ns, reported_by";

const ENTITLEMENT_COLUMNS: &str = "identity_id, system, permission, resource, granted, \
    granted_at_ns, last_used_at_ns, use_count";

fn read_signal<R: StoredRow>(row: &R) -> Result<Signal, Error> {
    let mut c = Columns::new(row);
    let id = c.id()?;
    let identity_id = c.id()?;
    let kind = c.text()?;
    let severity = c.text()?;
    Ok(Signal {
        id,
        identity_id,
        kind: SignalKind::parse(&kind).ok_or_else(|| corrupt("signal kind", &kind))?,
        severity: Severity::parse(&severity).ok_or_else(|| corrupt("severity", &severity))?,
        source: c.text()?,
        observed_at: c.int()?,
        evidence_ref: c.text()?,
        summary: c.text()?,
        open: c.text()? == "open",
        resolution: c.text()?,
        resolved_at: c.opt_int()?,
        reported_by: c.text()?,
    })
}

fn read_entitlement<R: StoredRow>(row: &R) -> Result<Entitlement, Error> {
    let mut c = Columns::new(row);
    Ok(Entitlement {
        identity_id: c.id()?,
        system: c.text()?,
        permission: c.text()?,
        resource: c.text()?,
        granted: c.int()? != 0,
        granted_at: c.opt_int()?,
        last_used_at: c.opt_int()?,
        use_count: c.int()?,
    })
}

/// Locks the identity for this transaction and returns its kind and state.
macro_rules! lock_identity {
    ($tx:expr, $db:ty, $id:expr) => {{
        let sql = format!(
            "SELECT kind, state FROM identities WHERE id = $1{}",
            <$db as Engine>::FOR_UPDATE
        );
        let row: Option<(String, String)> =
            sqlx::query_as::<$db, (String, String)>(sqlx::AssertSqlSafe(sql))
                .bind($id.hyphenated().to_string())
                .fetch_optional(&mut *$tx)
                .await?;
        let (kind, state) = row.ok_or_else(|| not_found($id))?;
        (
            Kind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
            State::parse(&state).ok_or_else(|| corrupt("state", &state))?,
        )
    }};
}

/// A stored open signal's kind and severity; a value this build does not
/// know is a corrupt row, not a signal to skip.
pub(super) fn open_signal(kind: &str, severity: &str) -> Result<(SignalKind, Severity), Error> {
    let kind = SignalKind::parse(kind).ok_or_else(|| corrupt("signal kind", kind))?;
    let severity = Severity::parse(severity).ok_or_else(|| corrupt("severity", severity))?;
    Ok((kind, severity))
}

/// Recomputes the identity's stored signal score from its open signals.
macro_rules! refresh_signal_score {
    ($tx:expr, $db:ty, $id:expr) => {{
        let id = $id.hyphenated().to_string();
        let open: Vec<(String, String)> = sqlx::query_as::<$db, (String, String)>(
            "SELECT kind, severity FROM signals WHERE identity_id = $1 AND status = 'open'",
        )
        .bind(&id)
        .fetch_all(&mut *$tx)
        .await?;
        let open: Vec<(SignalKind, Severity)> = open
            .iter()
            .map(|(k, s)| $crate::store::activity::open_signal(k, s))
            .collect::<Result<_, Error>>()?;
        let (score, summary) = signal_part(&open);
        sqlx::query::<$db>(
            "UPDATE identities SET signal_score = $1, signal_summary = $2 WHERE id = $3",
        )
        .bind(i64::from(score))
        .bind(summary)
        .bind(&id)
        .execute(&mut *$tx)
        .await?;
    }};
}

/// The entitlement `$p` of identity `$id`, if any.
macro_rules! select_entitlement {
    ($tx:expr, $db:ty, $id:expr, $p:expr) => {{
        let sql = format!(
            "SELECT {ENTITLEMENT_COLUMNS} FROM entitlements
             WHERE identity_id = $1 AND system = $2 AND permission = $3 AND resource = $4"
        );
        match sqlx::query::<$db>(sqlx::AssertSqlSafe(sql))
            .bind($id.hyphenated().to_string())
            .bind(&$p.system)
            .bind(&$p.permission)
            .bind(&$p.resource)
            .fetch_optional(&mut *$tx)
            .await?
        {
            Some(row) => Some(read_entitlement(&row)?),
            None => None,
        }
    }};
}

/// Recomputes the over-privileged report's key from granted entitlements.
pub(super) const REFRESH_IDLE: &str = "UPDATE identities SET entitlement_idle_since_ns = (
        SELECT MIN(COALESCE(last_used_at_ns, granted_at_ns)) FROM entitlements
        WHERE identity_id = $1 AND granted = 1)
    WHERE id = $1";

impl Store {
    /// Records a signal and refreshes the identity's risk.
    pub async fn add_signal(&self, signal: &Signal, context: &ChangeContext) -> Result<(), Error> {
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let (kind, _) = lock_identity!(tx, Db, &signal.identity_id);
            let sql = format!("INSERT INTO signals ({SIGNAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)");
            sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(signal.id.hyphenated().to_string())
                .bind(signal.identity_id.hyphenated().to_string())
                .bind(signal.kind.as_str())
                .bind(signal.severity.as_str())
                .bind(&signal.source)
                .bind(signal.observed_at)
                .bind(&signal.evidence_ref)
                .bind(&signal.summary)
                .bind("open")
                .bind("")
                .bind(None::<i64>)
                .bind(&signal.reported_by)
                .execute(&mut *tx)
                .await?;
            refresh_signal_score!(tx, Db, &signal.identity_id);
            let mut record = evidence::record(
                context,
                "signal.add",
                Some((&signal.identity_id, kind)),
                &signal.summary,
                [
                    ("signal_id", signal.id.hyphenated().to_string()),
                    ("kind", signal.kind.as_str().to_owned()),
                    ("severity", signal.severity.as_str().to_owned()),
                    ("source", signal.source.clone()),
                    ("evidence_ref", signal.evidence_ref.clone()),
                ],
            );
            // A signal starts a chain: what it sets off (response actions,
            // the incident's work) correlates by the signal's id. A
            // correlation id the reporter sent is kept beside it.
            let reported = std::mem::replace(
                &mut record.correlation_id,
                signal.id.hyphenated().to_string(),
            );
            if !reported.is_empty() {
                record
                    .attributes
                    .insert("reporter_correlation_id".into(), reported);
            }
            tx.enqueue_all(std::slice::from_ref(&record)).await?;
            tx.commit().await?;
        });
        self.committed(Changed::one(signal.identity_id.hyphenated().to_string()))
            .await;
        Ok(())
    }

    /// Resolves an open signal.
    pub async fn resolve_signal(
        &self,
        id: &Uuid,
        resolution: &str,
        context: &ChangeContext,
    ) -> Result<Signal, Error> {
        let signal = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT {SIGNAL_COLUMNS} FROM signals WHERE id = $1");
            let row = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(id.hyphenated().to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound(format!("signal {id} does not exist")))?;
            let mut signal = read_signal(&row)?;
            if !signal.open {
                return Err(Error::FailedPrecondition(format!("signal {id} is already resolved")));
            }
            let (kind, _) = lock_identity!(tx, Db, &signal.identity_id);
            let now = now_ns();
            sqlx::query::<Db>("UPDATE signals SET status = 'resolved', resolution = $1, resolved_at_ns = $2 WHERE id = $3")
                .bind(resolution)
                .bind(now)
                .bind(id.hyphenated().to_string())
                .execute(&mut *tx)
                .await?;
            refresh_signal_score!(tx, Db, &signal.identity_id);
            signal.open = false;
            signal.resolution = resolution.to_owned();
            signal.resolved_at = Some(now);
            let record = evidence::record(
                context,
                "signal.resolve",
                Some((&signal.identity_id, kind)),
                resolution,
                [
                    ("signal_id", signal.id.hyphenated().to_string()),
                    ("kind", signal.kind.as_str().to_owned()),
                ],
            );
            tx.enqueue_all(std::slice::from_ref(&record)).await?;
            tx.commit().await?;
            signal
        });
        self.committed(Changed::one(signal.identity_id.hyphenated().to_string()))
            .await;
        Ok(signal)
    }

    /// An identity's signals, newest first.
    pub async fn signals(
        &self,
        identity_id: &Uuid,
        open_only: bool,
        page: usize,
        token: &str,
    ) -> Result<(Vec<Signal>, String), Error> {
        let before = super::after_id(token)?;
        let rows = on_backend!(&self.db, pool, Db => {
            let sql = format!(
                "SELECT {SIGNAL_COLUMNS} FROM signals WHERE identity_id = $1 AND ($2 = '' OR id < $2)
                 {} ORDER BY id DESC LIMIT $3",
                if open_only { "AND status = 'open'" } else { "" }
            );
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(identity_id.hyphenated().to_string())
                .bind(&before)
                .bind(i64::try_from(page + 1).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            rows.iter().map(read_signal).collect::<Result<Vec<_>, _>>()?
        });
        Ok(paged(rows, page, |s| s.id.hyphenated().to_string()))
    }

    /// Every identity's signals after `after` (an id), oldest first.
    pub async fn signal_feed(&self, after: &str, limit: usize) -> Result<Vec<Signal>, Error> {
        let after = super::after_id(after)?;
        Ok(on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {SIGNAL_COLUMNS} FROM signals WHERE id > $1 ORDER BY id LIMIT $2");
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(&after)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            rows.iter().map(read_signal).collect::<Result<Vec<_>, _>>()?
        }))
    }

    /// Grants a permission; `Ok(false)` when it was already granted (and
    /// nothing changed).
    pub async fn grant(
        &self,
        identity_id: &Uuid,
        permission: &Permission,
        context: &ChangeContext,
    ) -> Result<(Entitlement, bool), Error> {
        let result = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let (kind, state) = lock_identity!(tx, Db, identity_id);
            if !state.is_reversible() {
                return Err(Error::FailedPrecondition(format!(
                    "identity_id: the identity is {state}; nothing can be granted to it"
                )));
            }
            let existing = select_entitlement!(tx, Db, identity_id, permission);
            let now = now_ns();
            let created = match existing {
                Some(e) if e.granted => {
                    tx.rollback().await?;
                    return Ok((e, false));
                }
                Some(_) => {
                    sqlx::query::<Db>("UPDATE entitlements SET granted = 1, granted_at_ns = $1
                        WHERE identity_id = $2 AND system = $3 AND permission = $4 AND resource = $5")
                        .bind(now)
                        .bind(identity_id.hyphenated().to_string())
                        .bind(&permission.system)
                        .bind(&permission.permission)
                        .bind(&permission.resource)
                        .execute(&mut *tx)
                        .await?;
                    true
                }
                None => {
                    let sql = format!("INSERT INTO entitlements ({ENTITLEMENT_COLUMNS}) VALUES ($1, $2, $3, $4, 1, $5, NULL, 0)");
                    sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                        .bind(identity_id.hyphenated().to_string())
                        .bind(&permission.system)
                        .bind(&permission.permission)
                        .bind(&permission.resource)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    true
                }
            };
            sqlx::query::<Db>(REFRESH_IDLE).bind(identity_id.hyphenated().to_string()).execute(&mut *tx).await?;
            let record = evidence::record(
                context,
                "entitlement.grant",
                Some((identity_id, kind)),
                "",
                permission_attributes(permission),
            );
            tx.enqueue_all(std::slice::from_ref(&record)).await?;
            let stored = select_entitlement!(tx, Db, identity_id, permission)
                .ok_or_else(|| Error::unavailable("granted entitlement vanished"))?;
            tx.commit().await?;
            (stored, created)
        });
        self.committed(Changed::one(identity_id.hyphenated().to_string()))
            .await;
        Ok(result)
    }

    /// Withdraws a granted permission.
    pub async fn remove_entitlement(
        &self,
        identity_id: &Uuid,
        permission: &Permission,
        reason: &str,
        context: &ChangeContext,
    ) -> Result<(), Error> {
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let (kind, _) = lock_identity!(tx, Db, identity_id);
            let done = sqlx::query::<Db>("DELETE FROM entitlements
                WHERE identity_id = $1 AND system = $2 AND permission = $3 AND resource = $4 AND granted = 1")
                .bind(identity_id.hyphenated().to_string())
                .bind(&permission.system)
                .bind(&permission.permission)
                .bind(&permission.resource)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(Error::NotFound(format!(
                    "the identity holds no granted entitlement {}:{} on {}",
                    permission.system, permission.permission, permission.resource
                )));
            }
            sqlx::query::<Db>(REFRESH_IDLE).bind(identity_id.hyphenated().to_string()).execute(&mut *tx).await?;
            let record = evidence::record(
                context,
                "entitlement.remove",
                Some((identity_id, kind)),
                reason,
                permission_attributes(permission),
            );
            tx.enqueue_all(std::slice::from_ref(&record)).await?;
            tx.commit().await?;
        });
        self.committed(Changed::one(identity_id.hyphenated().to_string()))
            .await;
        Ok(())
    }

    /// Records an observed use of the identity (and of a permission, when
    /// named) by `consumer` at `at`.
    pub async fn record_usage(
        &self,
        identity_id: &Uuid,
        permission: Option<&Permission>,
        consumer: &str,
        at: Nanos,
        context: &ChangeContext,
    ) -> Result<Option<Entitlement>, Error> {
        let id = identity_id.hyphenated().to_string();
        let result = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let (kind, _) = lock_identity!(tx, Db, identity_id);
            sqlx::query::<Db>("UPDATE identities SET
                    last_used_at_ns = CASE WHEN last_used_at_ns IS NULL OR last_used_at_ns < $1 THEN $1 ELSE last_used_at_ns END,
                    active_at_ns = CASE WHEN active_at_ns < $1 THEN $1 ELSE active_at_ns END
                 WHERE id = $2")
                .bind(at)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            let mut entitlement = None;
            if let Some(p) = permission {
                sqlx::query::<Db>("INSERT INTO entitlements (identity_id, system, permission, resource, granted, granted_at_ns, last_used_at_ns, use_count)
                        VALUES ($1, $2, $3, $4, 0, NULL, $5, 1)
                    ON CONFLICT (identity_id, system, permission, resource) DO UPDATE SET
                        use_count = entitlements.use_count + 1,
                        last_used_at_ns = CASE WHEN entitlements.last_used_at_ns IS NULL OR entitlements.last_used_at_ns < $5 THEN $5 ELSE entitlements.last_used_at_ns END")
                    .bind(&id)
                    .bind(&p.system)
                    .bind(&p.permission)
                    .bind(&p.resource)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query::<Db>(REFRESH_IDLE).bind(&id).execute(&mut *tx).await?;
                entitlement = select_entitlement!(tx, Db, identity_id, p);
            }
            if !consumer.is_empty() {
                sqlx::query::<Db>("INSERT INTO identity_consumers (identity_id, consumer, first_seen_ns, last_seen_ns, uses)
                        VALUES ($1, $2, $3, $3, 1)
                    ON CONFLICT (identity_id, consumer) DO UPDATE SET uses = identity_consumers.uses + 1,
                        last_seen_ns = CASE WHEN identity_consumers.last_seen_ns < $3 THEN $3 ELSE identity_consumers.last_seen_ns END")
                    .bind(&id)
                    .bind(consumer)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query::<Db>("UPDATE identities SET consumer_count = (SELECT COUNT(*) FROM identity_consumers WHERE identity_id = $1) WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut attributes = permission.map(permission_attributes).unwrap_or_default();
            attributes.push(("consumer", consumer.to_owned()));
            let record = evidence::record(context, "identity.use", Some((identity_id, kind)), "", attributes);
            tx.enqueue_all(std::slice::from_ref(&record)).await?;
            tx.commit().await?;
            entitlement
        });
        self.committed(Changed::one(identity_id.hyphenated().to_string()))
            .await;
        Ok(result)
    }

    /// An identity's entitlements, by system, permission and resource.
    pub async fn entitlements(
        &self,
        identity_id: &Uuid,
        page: usize,
        token: &str,
    ) -> Result<(Vec<Entitlement>, String), Error> {
        let after = decode_permission_token(token)?;
        let rows = on_backend!(&self.db, pool, Db => {
            let sql = format!(
                "SELECT {ENTITLEMENT_COLUMNS} FROM entitlements WHERE identity_id = $1
                 AND (system, permission, resource) > ($2, $3, $4)
                 ORDER BY system, permission, resource LIMIT $5"
            );
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(identity_id.hyphenated().to_string())
                .bind(&after.system)
                .bind(&after.permission)
                .bind(&after.resource)
                .bind(i64::try_from(page + 1).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            rows.iter().map(read_entitlement).collect::<Result<Vec<_>, _>>()?
        });
        Ok(paged(rows, page, |e| {
            encode_permission_token(&Permission {
                system: e.system.clone(),
                permission: e.permission.clone(),
                resource: e.resource.clone(),
            })
        }))
    }

    /// Marks an owner departed (or back) and refreshes the orphaned flag of
    /// every identity naming them; returns how many there are.
    pub async fn set_owner_status(
        &self,
        owner: &str,
        departed: bool,
        reason: &str,
        context: &ChangeContext,
    ) -> Result<u64, Error> {
        let owned = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            sqlx::query::<Db>("INSERT INTO owners (name, departed, reason, updated_at_ns) VALUES ($1, $2, $3, $4)
                ON CONFLICT (name) DO UPDATE SET departed = $2, reason = $3, updated_at_ns = $4")
                .bind(owner)
                .bind(i64::from(departed))
                .bind(reason)
                .bind(now_ns())
                .execute(&mut *tx)
                .await?;
            let done = sqlx::query::<Db>("UPDATE identities SET orphaned = CASE
                    WHEN unowned = 1 OR business_owner = '' OR technical_owner = ''
                      OR business_owner IN (SELECT name FROM owners WHERE departed = 1)
                      OR technical_owner IN (SELECT name FROM owners WHERE departed = 1)
                    THEN 1 ELSE 0 END
                 WHERE business_owner = $1 OR technical_owner = $1")
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            let record = evidence::record(
                context,
                if departed { "owner.depart" } else { "owner.return" },
                None,
                reason,
                [("owner", owner.to_owned()), ("owned_identities", done.rows_affected().to_string())],
            );
            tx.enqueue_all(std::slice::from_ref(&record)).await?;
            tx.commit().await?;
            done.rows_affected()
        });
        self.committed(Changed::All).await;
        Ok(owned)
    }
}

fn permission_attributes(p: &Permission) -> Vec<(&'static str, String)> {
    vec![
        ("system", p.system.clone()),
        ("permission", p.permission.clone()),
        ("resource", p.resource.clone()),
    ]
}

fn encode_permission_token(p: &Permission) -> String {
    let json = serde_json::json!([p.system, p.permission, p.resource]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_permission_token(token: &str) -> Result<Permission, Error> {
    if token.is_empty() {
        return Ok(Permission {
            system: String::new(),
            permission: String::new(),
            resource: String::new(),
        });
    }
    let invalid = || {
        Error::Invalid(crate::domain::bad(
            "page_token",
            "not a token from a previous response",
        ))
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let [system, permission, resource]: [String; 3] =
        serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    Ok(Permission {
        system,
        permission,
        resource,
    })
}
