//! Identity rows: the columns in one order, binding an identity to them
//! and reading one back (a stored value that does not parse is an error,
//! never a default).

use std::collections::BTreeMap;

use steward_identity::SpiffeId;
use uuid::Uuid;

use crate::domain::{
    Classification, Error, Identity, IdentitySpec, Kind, Nanos, Owner, OwnerKind, State,
};

/// The identity columns, in the order [`bind_identity`] binds them and
/// [`read_identity`] reads them.
pub(crate) const COLUMNS: &str = "id, kind, display_name, source_system, external_id, environment, \
    business_service, workload, classification, purpose, business_owner, business_owner_kind, \
    business_owner_contact, technical_owner, technical_owner_kind, technical_owner_contact, \
    unowned, orphaned, state, spiffe_id, labels, created_at_ns, updated_at_ns, state_changed_at_ns, \
    expires_at_ns, last_rotated_at_ns, last_used_at_ns, active_at_ns, rotated_at_ns, \
    entitlement_idle_since_ns, consumer_count, signal_score, signal_summary, version, \
    source_created_at_ns";
pub(crate) const COLUMN_COUNT: usize = 35;

/// Binds an identity's columns in [`COLUMNS`] order.
macro_rules! bind_identity {
    ($query:expr, $identity:expr, $orphaned:expr) => {{
        let i: &$crate::domain::Identity = $identity;
        let s = &i.spec;
        let (bo, bok, boc) = $crate::store::owner_columns(&s.business_owner);
        let (to, tok, toc) = $crate::store::owner_columns(&s.technical_owner);
        $query
            .bind(i.id.hyphenated().to_string())
            .bind(s.kind.as_str())
            .bind(s.display_name.clone())
            .bind(s.source_system.clone())
            .bind(s.external_id.clone())
            .bind(s.environment.clone())
            .bind(s.business_service.clone())
            .bind(s.workload.clone())
            .bind(s.classification.as_str())
            .bind(s.purpose.clone())
            .bind(bo)
            .bind(bok)
            .bind(boc)
            .bind(to)
            .bind(tok)
            .bind(toc)
            .bind(i64::from(s.unowned))
            .bind(i64::from($orphaned))
            .bind(i.state.as_str())
            .bind(
                s.spiffe_id
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            )
            .bind($crate::store::labels_json(&s.labels))
            .bind(i.created_at)
            .bind(i.updated_at)
            .bind(i.state_changed_at)
            .bind(s.expires_at)
            .bind(s.last_rotated_at)
            .bind(s.last_used_at)
            .bind($crate::store::active_at(i))
            .bind($crate::store::rotated_at(i))
            .bind(i.entitlement_idle_since)
            .bind(i.consumer_count)
            .bind(i64::from(i.signal_score))
            .bind(i.signal_summary.clone())
            .bind(i.version)
            .bind(s.source_created_at)
    }};
}
pub(crate) use bind_identity;

/// Rewrites every spec column of a stored identity, and its version.
macro_rules! update_row {
    ($tx:expr, $db:ty, $identity:expr, $orphaned:expr) => {{
        let identity: &$crate::domain::Identity = $identity;
        let s = &identity.spec;
        let (bo, bok, boc) = $crate::store::owner_columns(&s.business_owner);
        let (to, tok, toc) = $crate::store::owner_columns(&s.technical_owner);
        sqlx::query::<$db>(
            "UPDATE identities SET display_name = $1, environment = $2, business_service = $3,
                workload = $4, classification = $5, purpose = $6, business_owner = $7,
                business_owner_kind = $8, business_owner_contact = $9, technical_owner = $10,
                technical_owner_kind = $11, technical_owner_contact = $12, unowned = $13,
                orphaned = $14, spiffe_id = $15, labels = $16, updated_at_ns = $17,
                expires_at_ns = $18, last_rotated_at_ns = $19, last_used_at_ns = $20,
                active_at_ns = $21, rotated_at_ns = $22, version = $23,
                source_created_at_ns = $24
             WHERE id = $25",
        )
        .bind(s.display_name.clone())
        .bind(s.environment.clone())
        .bind(s.business_service.clone())
        .bind(s.workload.clone())
        .bind(s.classification.as_str())
        .bind(s.purpose.clone())
        .bind(bo)
        .bind(bok)
        .bind(boc)
        .bind(to)
        .bind(tok)
        .bind(toc)
        .bind(i64::from(s.unowned))
        .bind(i64::from($orphaned))
        .bind(
            s.spiffe_id
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_default(),
        )
        .bind($crate::store::labels_json(&s.labels))
        .bind(identity.updated_at)
        .bind(s.expires_at)
        .bind(s.last_rotated_at)
        .bind(s.last_used_at)
        .bind($crate::store::active_at(identity))
        .bind($crate::store::rotated_at(identity))
        .bind(identity.version)
        .bind(s.source_created_at)
        .bind(identity.id.hyphenated().to_string())
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(crate) use update_row;

pub(crate) fn owner_columns(owner: &Option<Owner>) -> (String, &'static str, String) {
    match owner {
        Some(o) => (o.name.clone(), o.kind.as_str(), o.contact.clone()),
        None => (String::new(), "", String::new()),
    }
}

pub(crate) fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_owned())
}

/// Last use, or creation when never seen used: the stale report's key.
/// (A credential registered today that was last used long ago is stale,
/// and so is one its source created years ago and nobody ever used.)
pub(crate) fn active_at(identity: &Identity) -> Nanos {
    identity
        .spec
        .last_used_at
        .unwrap_or_else(|| created_at(identity))
}

/// Last rotation, or creation: the long-lived-secret report's key.
pub(crate) fn rotated_at(identity: &Identity) -> Nanos {
    identity
        .spec
        .last_rotated_at
        .unwrap_or_else(|| created_at(identity))
}

/// When the credential came to be: its source's creation date where the
/// source says, else when Steward first recorded it.
pub(crate) fn created_at(identity: &Identity) -> Nanos {
    identity
        .spec
        .source_created_at
        .unwrap_or(identity.created_at)
}

/// A row of either engine that holds text and integers: the one place
/// the engines' decoding bounds are spelled.
pub(crate) trait StoredRow {
    fn text_at(&self, i: usize) -> Result<String, sqlx::Error>;
    fn int_at(&self, i: usize) -> Result<Option<i64>, sqlx::Error>;
}

impl<R> StoredRow for R
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    fn text_at(&self, i: usize) -> Result<String, sqlx::Error> {
        self.try_get(i)
    }

    fn int_at(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(i)
    }
}

/// Reads columns in order from a row of either engine.
pub(crate) struct Columns<'r, R> {
    row: &'r R,
    next: usize,
}

impl<'r, R: StoredRow> Columns<'r, R> {
    pub(crate) fn new(row: &'r R) -> Self {
        Self { row, next: 0 }
    }

    pub(crate) fn text(&mut self) -> Result<String, Error> {
        self.next += 1;
        Ok(self.row.text_at(self.next - 1)?)
    }

    pub(crate) fn int(&mut self) -> Result<i64, Error> {
        let at = self.next;
        self.opt_int()?
            .ok_or_else(|| corrupt("integer", &format!("NULL in column {at}")))
    }

    pub(crate) fn opt_int(&mut self) -> Result<Option<i64>, Error> {
        self.next += 1;
        Ok(self.row.int_at(self.next - 1)?)
    }

    pub(crate) fn id(&mut self) -> Result<Uuid, Error> {
        let text = self.text()?;
        Uuid::try_parse(&text).map_err(|_| corrupt("id", &text))
    }
}

pub(crate) fn corrupt(what: &str, value: &str) -> Error {
    Error::Storage(steward_db::StorageError::corrupt(format!(
        "stored {what} {} is not valid",
        steward_errors::shown(value)
    )))
}

fn owner_from(name: String, kind: &str, contact: String) -> Result<Option<Owner>, Error> {
    if name.is_empty() {
        return Ok(None);
    }
    Ok(Some(Owner {
        kind: OwnerKind::parse(kind).ok_or_else(|| corrupt("owner kind", kind))?,
        name,
        contact,
    }))
}

/// Reads one identity row selected with [`COLUMNS`].
pub(crate) fn read_identity<R: StoredRow>(row: &R) -> Result<Identity, Error> {
    let mut c = Columns::new(row);
    let id = c.id()?;
    let kind = c.text()?;
    let kind = Kind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?;
    let display_name = c.text()?;
    let source_system = c.text()?;
    let external_id = c.text()?;
    let environment = c.text()?;
    let business_service = c.text()?;
    let workload = c.text()?;
    let classification = c.text()?;
    let classification = Classification::parse(&classification)
        .ok_or_else(|| corrupt("classification", &classification))?;
    let purpose = c.text()?;
    let (name, kind_text, contact) = (c.text()?, c.text()?, c.text()?);
    let business_owner = owner_from(name, &kind_text, contact)?;
    let (name, kind_text, contact) = (c.text()?, c.text()?, c.text()?);
    let technical_owner = owner_from(name, &kind_text, contact)?;
    let unowned = c.int()? != 0;
    let _orphaned = c.int()?;
    let state = c.text()?;
    let state = State::parse(&state).ok_or_else(|| corrupt("state", &state))?;
    let spiffe_id = c.text()?;
    let spiffe_id = if spiffe_id.is_empty() {
        None
    } else {
        Some(SpiffeId::parse(&spiffe_id).map_err(|_| corrupt("spiffe_id", &spiffe_id))?)
    };
    let labels = c.text()?;
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&labels).map_err(|_| corrupt("labels", &labels))?;
    let created_at = c.int()?;
    let updated_at = c.int()?;
    let state_changed_at = c.int()?;
    let expires_at = c.opt_int()?;
    let last_rotated_at = c.opt_int()?;
    let last_used_at = c.opt_int()?;
    let _active = c.int()?;
    let _rotated = c.int()?;
    let entitlement_idle_since = c.opt_int()?;
    let consumer_count = c.int()?;
    let signal_score = u32::try_from(c.int()?).unwrap_or(0);
    let signal_summary = c.text()?;
    let version = c.int()?;
    let source_created_at = c.opt_int()?;
    Ok(Identity {
        id,
        spec: IdentitySpec {
            kind,
            display_name,
            source_system,
            external_id,
            environment,
            business_service,
            workload,
            classification,
            purpose,
            business_owner,
            technical_owner,
            unowned,
            spiffe_id,
            labels,
            expires_at,
            last_rotated_at,
            last_used_at,
            source_created_at,
        },
        state,
        created_at,
        updated_at,
        state_changed_at,
        version,
        signal_score,
        signal_summary,
        entitlement_idle_since,
        consumer_count,
    })
}
