//! Importer upserts: one transaction per batch, keyed by (source system,
//! external id), so an import can be re-run safely and reports its drift.

mod entitlements;

use crate::changes::Changed;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use steward_db::{Placeholders, on_backend};
use steward_evidence::EvidenceRecord;
use steward_outbox::OutboxTransaction;
use uuid::Uuid;

use super::{
    COLUMN_COUNT, COLUMNS, Engine, Store, bind_identity, read_identity, update_row, write_labels,
};
use crate::domain::{ChangeContext, Error, Identity, IdentitySpec, Kind, Nanos, State, now_ns};
use crate::evidence;
pub use entitlements::Entitled;
use entitlements::Writes;

/// Rows per transaction: large enough that the commit (and its WAL
/// checkpoint share) is paid per 5,000 rows, not per row.
pub const BATCH: usize = 5000;
/// Rows per multi-row INSERT (34 parameters each).
const INSERT_CHUNK: usize = 200;

/// One good row of an import.
#[derive(Debug, Clone)]
pub struct ImportRow {
    pub line: u64,
    pub spec: IdentitySpec,
    /// The IdentitySpec fields the source is authoritative for; the others
    /// keep what Steward holds. `labels` merges key by key.
    pub fields: Vec<&'static str>,
    /// The state a new identity starts in (`None`: active), for a
    /// credential its source says is disabled. An existing identity's state
    /// is not the import's to change: lifecycle changes are authority's.
    pub state: Option<State>,
    /// The entitlements the source says the identity holds; `None` when
    /// the source says nothing of them.
    pub entitlements: Option<Vec<Entitled>>,
}

impl ImportRow {
    /// A row for `spec`, authoritative for `fields`, that says nothing of
    /// state or entitlements.
    pub fn new(line: u64, spec: IdentitySpec, fields: Vec<&'static str>) -> Self {
        Self {
            line,
            spec,
            fields,
            state: None,
            entitlements: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftKind {
    New,
    Changed,
    Vanished,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub kind: DriftKind,
    pub identity_id: Uuid,
    pub source_system: String,
    pub external_id: String,
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ImportOutcome {
    pub created: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub vanished: u64,
    /// The first [`MAX_REPORTED`] drifts.
    pub drift: Vec<Drift>,
    /// Rows whose merged spec is invalid: (line, field, reason).
    pub rejected: Vec<(u64, String, String)>,
}

/// Most drifts returned in detail.
pub const MAX_REPORTED: usize = 1000;

impl ImportOutcome {
    fn note(&mut self, drift: Drift) {
        if self.drift.len() < MAX_REPORTED {
            self.drift.push(drift);
        }
    }
}

/// Copies the source's authoritative fields onto what Steward holds;
/// returns the names of the fields that changed.
fn merge(existing: &mut IdentitySpec, row: &ImportRow) -> Vec<String> {
    let mut changed = Vec::new();
    let incoming = &row.spec;
    macro_rules! take {
        ($name:literal, $field:ident) => {
            if row.fields.contains(&$name) && existing.$field != incoming.$field {
                existing.$field = incoming.$field.clone();
                changed.push($name.to_owned());
            }
        };
    }
    take!("kind", kind);
    take!("display_name", display_name);
    take!("environment", environment);
    take!("business_service", business_service);
    take!("workload", workload);
    take!("classification", classification);
    take!("purpose", purpose);
    take!("business_owner", business_owner);
    take!("technical_owner", technical_owner);
    take!("spiffe_id", spiffe_id);
    take!("expire_time", expires_at);
    take!("last_rotate_time", last_rotated_at);
    take!("last_use_time", last_used_at);
    take!("source_create_time", source_created_at);
    if row.fields.contains(&"labels") {
        let mut labels = existing.labels.clone();
        for (k, v) in &incoming.labels {
            labels.insert(k.clone(), v.clone());
        }
        if labels != existing.labels {
            existing.labels = labels;
            changed.push("labels".to_owned());
        }
    }
    if existing.settle_triage() {
        changed.push("unowned".to_owned());
    }
    changed
}

impl Store {
    /// Upserts `rows` (already de-duplicated) in batches; with `dry_run`
    /// every batch is rolled back. Vanished identities are the live ones of
    /// `sources` that the import did not name.
    pub async fn import(
        &self,
        rows: Vec<ImportRow>,
        sources: &BTreeSet<String>,
        kinds: Option<&[Kind]>,
        dry_run: bool,
        format: &str,
        context: &ChangeContext,
    ) -> Result<ImportOutcome, Error> {
        let mut outcome = ImportOutcome::default();
        let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in &rows {
            seen.entry(row.spec.source_system.clone())
                .or_default()
                .insert(row.spec.external_id.clone());
        }
        let departed: BTreeSet<String> = on_backend!(&self.db, pool, Db => {
            sqlx::query_scalar::<Db, String>("SELECT name FROM owners WHERE departed = 1")
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect()
        });
        for batch in rows.chunks(BATCH) {
            self.import_batch(batch, &departed, dry_run, format, context, &mut outcome)
                .await?;
        }
        for source in sources {
            let live: Vec<(String, String)> = on_backend!(&self.db, pool, Db => {
                let of_kinds = match kinds {
                    Some(kinds) => format!(" AND kind IN ({})", <Db as Placeholders>::list(kinds.len(), 2)),
                    None => String::new(),
                };
                // One placeholder style throughout: SQLite numbers a `?`
                // after `$1` its own way.
                let sql = format!(
                    "SELECT id, external_id FROM identities
                     WHERE source_system = {} AND state NOT IN ('revoked', 'decommissioned'){of_kinds} ORDER BY id",
                    <Db as Placeholders>::list(1, 1)
                );
                let mut query = sqlx::query_as::<Db, (String, String)>(sqlx::AssertSqlSafe(sql)).bind(source);
                for kind in kinds.unwrap_or_default() {
                    query = query.bind(kind.as_str());
                }
                query.fetch_all(pool).await?
            });
            let named = seen.get(source);
            for (id, external_id) in live {
                if named.is_some_and(|n| n.contains(&external_id)) {
                    continue;
                }
                outcome.vanished += 1;
                outcome.note(Drift {
                    kind: DriftKind::Vanished,
                    identity_id: Uuid::try_parse(&id).map_err(|_| super::corrupt("id", &id))?,
                    source_system: source.clone(),
                    external_id,
                    fields: Vec::new(),
                });
            }
        }
        if !dry_run {
            self.committed(Changed::All).await;
        }
        Ok(outcome)
    }

    async fn import_batch(
        &self,
        batch: &[ImportRow],
        departed: &BTreeSet<String>,
        dry_run: bool,
        format: &str,
        context: &ChangeContext,
        outcome: &mut ImportOutcome,
    ) -> Result<(), Error> {
        let now = now_ns();
        let mut by_source: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for row in batch {
            by_source
                .entry(row.spec.source_system.as_str())
                .or_default()
                .push(row.spec.external_id.as_str());
        }
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let mut existing: HashMap<(String, String), Identity> = HashMap::new();
            for (source, external_ids) in &by_source {
                let sql = format!(
                    "SELECT {COLUMNS} FROM identities WHERE source_system = {} AND external_id IN ({}){}",
                    <Db as Placeholders>::list(1, 1),
                    <Db as Placeholders>::list(external_ids.len(), 2),
                    <Db as Engine>::FOR_UPDATE
                );
                let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(*source);
                for e in external_ids {
                    query = query.bind(*e);
                }
                for row in query.fetch_all(&mut *tx).await? {
                    let identity = read_identity(&row)?;
                    existing.insert(
                        (identity.spec.source_system.clone(), identity.spec.external_id.clone()),
                        identity,
                    );
                }
            }
            let entitled: Vec<Uuid> = batch
                .iter()
                .filter(|r| r.entitlements.is_some())
                .filter_map(|r| existing.get(&(r.spec.source_system.clone(), r.spec.external_id.clone())))
                .map(|i| i.id)
                .collect();
            let held = entitlements::held(&mut tx, &entitled).await?;
            let Plan { created, changed, writes } = plan(batch, &existing, &held, now, outcome);
            let orphaned = |i: &Identity| {
                i.spec.unowned || i.owner_names().iter().any(|n| departed.contains(n))
            };
            for chunk in created.chunks(INSERT_CHUNK) {
                let sql = format!(
                    "INSERT INTO identities ({COLUMNS}) VALUES {}",
                    <Db as Placeholders>::values(chunk.len(), COLUMN_COUNT, 1)
                );
                let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
                for identity in chunk {
                    query = bind_identity!(query, identity, orphaned(identity));
                }
                query.execute(&mut *tx).await?;
            }
            let labels: Vec<(String, &String, &String)> = created
                .iter()
                .flat_map(|i| {
                    let id = i.id.hyphenated().to_string();
                    i.spec.labels.iter().map(move |(k, v)| (id.clone(), k, v))
                })
                .collect();
            for chunk in labels.chunks(500) {
                let sql = format!(
                    "INSERT INTO identity_labels (identity_id, key, value) VALUES {}",
                    <Db as Placeholders>::values(chunk.len(), 3, 1)
                );
                let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
                for (id, k, v) in chunk {
                    query = query.bind(id.clone()).bind((*k).clone()).bind((*v).clone());
                }
                query.execute(&mut *tx).await?;
            }
            for (identity, fields) in &changed {
                update_row!(tx, Db, identity, orphaned(identity));
                if fields.iter().any(|f| f == "labels") {
                    write_labels::<Db>(&mut tx, &identity.id, &identity.spec.labels, true).await?;
                }
            }
            entitlements::apply(&mut tx, &writes, now).await?;
            let records = import_records(&created, &changed, &writes, context, format);
            tx.enqueue_all(&records).await?;
            if dry_run {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            outcome.noted(created, changed);
        });
        Ok(())
    }
}

/// What a batch writes: new identities, changed ones (with the fields
/// that changed) and every identity's entitlement writes.
struct Plan {
    created: Vec<Identity>,
    changed: Vec<(Identity, Vec<String>)>,
    writes: Vec<(Uuid, String, Writes)>,
}

/// Which rows of a batch are new identities and which change an existing
/// one; the rest are unchanged or rejected, as `outcome` counts.
fn plan(
    batch: &[ImportRow],
    existing: &HashMap<(String, String), Identity>,
    held: &HashMap<Uuid, BTreeMap<super::activity::Permission, entitlements::Held>>,
    now: Nanos,
    outcome: &mut ImportOutcome,
) -> Plan {
    let mut plan = Plan {
        created: Vec::new(),
        changed: Vec::new(),
        writes: Vec::new(),
    };
    for row in batch {
        let key = (row.spec.source_system.clone(), row.spec.external_id.clone());
        let source = &row.spec.source_system;
        match existing.get(&key) {
            None => {
                let mut spec = row.spec.clone();
                if spec.business_owner.is_none()
                    || spec.technical_owner.is_none()
                    || spec.purpose.trim().is_empty()
                {
                    spec.unowned = true;
                }
                if let Err(e) = spec.validate() {
                    outcome.rejected.push((row.line, e.field, e.reason));
                    continue;
                }
                let identity = Identity {
                    id: Uuid::now_v7(),
                    spec,
                    state: row.state.unwrap_or(State::Active),
                    created_at: now,
                    updated_at: now,
                    state_changed_at: now,
                    version: 1,
                    signal_score: 0,
                    signal_summary: String::new(),
                    entitlement_idle_since: None,
                    consumer_count: 0,
                };
                if let Some(named) = &row.entitlements {
                    let writes = entitlements::diff(named, None, source);
                    plan.writes.push((identity.id, source.clone(), writes));
                }
                plan.created.push(identity);
            }
            Some(current) => {
                let mut next = current.clone();
                let mut fields = merge(&mut next.spec, row);
                // As GrantEntitlement: nothing is granted to an identity
                // that is revoked or decommissioned.
                if let Some(named) = &row.entitlements
                    && current.state.is_reversible()
                {
                    let writes = entitlements::diff(named, held.get(&current.id), source);
                    if writes.drifts() {
                        fields.push("entitlements".to_owned());
                    }
                    plan.writes.push((current.id, source.clone(), writes));
                }
                if fields.is_empty() {
                    outcome.unchanged += 1;
                    continue;
                }
                if let Err(e) = next.spec.validate() {
                    outcome.rejected.push((row.line, e.field, e.reason));
                    plan.writes.retain(|(id, _, _)| *id != current.id);
                    continue;
                }
                next.updated_at = now;
                next.version += 1;
                plan.changed.push((next, fields));
            }
        }
    }
    plan
}

/// One `identity.import` record per new or changed identity.
fn import_records(
    created: &[Identity],
    changed: &[(Identity, Vec<String>)],
    writes: &[(Uuid, String, Writes)],
    context: &ChangeContext,
    format: &str,
) -> Vec<EvidenceRecord> {
    let counts: HashMap<Uuid, (usize, usize)> = writes
        .iter()
        .map(|(id, _, w)| (*id, (w.add.len(), w.withdraw.len())))
        .collect();
    // Only rows that speak of entitlements say how many changed.
    let entitlements = |id: &Uuid| {
        counts.get(id).into_iter().flat_map(|(added, withdrawn)| {
            [
                ("entitlements_added", added.to_string()),
                ("entitlements_withdrawn", withdrawn.to_string()),
            ]
        })
    };
    let mut records: Vec<EvidenceRecord> = Vec::with_capacity(created.len() + changed.len());
    for identity in created {
        records.push(evidence::record(
            context,
            "identity.import",
            Some((&identity.id, identity.spec.kind)),
            "",
            [
                ("drift", "new".to_owned()),
                ("format", format.to_owned()),
                ("source_system", identity.spec.source_system.clone()),
                ("external_id", identity.spec.external_id.clone()),
                ("state", identity.state.as_str().to_owned()),
            ]
            .into_iter()
            .chain(entitlements(&identity.id)),
        ));
    }
    for (identity, fields) in changed {
        records.push(evidence::record(
            context,
            "identity.import",
            Some((&identity.id, identity.spec.kind)),
            "",
            [
                ("drift", "changed".to_owned()),
                ("format", format.to_owned()),
                ("source_system", identity.spec.source_system.clone()),
                ("external_id", identity.spec.external_id.clone()),
                ("fields", fields.join(",")),
            ]
            .into_iter()
            .chain(entitlements(&identity.id)),
        ));
    }
    records
}

impl ImportOutcome {
    /// Counts a committed batch's new and changed identities, and notes
    /// their drift.
    fn noted(&mut self, created: Vec<Identity>, changed: Vec<(Identity, Vec<String>)>) {
        self.created += created.len() as u64;
        self.changed += changed.len() as u64;
        for identity in created {
            self.note(Drift {
                kind: DriftKind::New,
                identity_id: identity.id,
                source_system: identity.spec.source_system,
                external_id: identity.spec.external_id,
                fields: Vec::new(),
            });
        }
        for (identity, fields) in changed {
            self.note(Drift {
                kind: DriftKind::Changed,
                identity_id: identity.id,
                source_system: identity.spec.source_system,
                external_id: identity.spec.external_id,
                fields,
            });
        }
    }
}
