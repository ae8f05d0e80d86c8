//! Registration entries: which SPIFFE ID a workload gets when its attested
//! selectors match.

use crate::changes::Changed;
use steward_db::{Placeholders, on_backend};
use steward_identity::SpiffeId;
use steward_outbox::OutboxTransaction;
use uuid::Uuid;

use super::{Columns, Engine, Store, StoredRow, corrupt, not_found, paged};
use crate::domain::selector::{self, Selector};
use crate::domain::{ChangeContext, Error, Kind, Nanos};
use crate::evidence;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationEntry {
    pub id: Uuid,
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    /// Sorted, without duplicates.
    pub selectors: Vec<Selector>,
    pub x509_ttl: i32,
    pub jwt_ttl: i32,
    pub identity_id: Uuid,
    pub created_at: Nanos,
    /// Lower-case, without duplicates, in the order given.
    pub dns_names: Vec<String>,
}

/// Which entries a list returns; every filter set must hold.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    pub identity_id: Option<Uuid>,
    pub spiffe_id: Option<SpiffeId>,
    pub selector: Option<Selector>,
}

/// What an update changes; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct EntryChange {
    pub selectors: Option<Vec<Selector>>,
    pub x509_ttl: Option<i32>,
    pub jwt_ttl: Option<i32>,
    pub dns_names: Option<Vec<String>>,
}

const ENTRY_COLUMNS: &str =
    "id, spiffe_id, parent_id, selectors, x509_ttl, jwt_ttl, identity_id, created_at_ns, dns_names";

impl RegistrationEntry {
    /// Applies `change`; the names of the fields that changed.
    fn apply(&mut self, change: &EntryChange) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if let Some(selectors) = &change.selectors {
            self.selectors.clone_from(selectors);
            fields.push("selectors");
        }
        if let Some(ttl) = change.x509_ttl {
            self.x509_ttl = ttl;
            fields.push("x509_svid_ttl");
        }
        if let Some(ttl) = change.jwt_ttl {
            self.jwt_ttl = ttl;
            fields.push("jwt_svid_ttl");
        }
        if let Some(names) = &change.dns_names {
            self.dns_names.clone_from(names);
            fields.push("dns_names");
        }
        fields
    }
}

fn joined(selectors: &[Selector]) -> String {
    selectors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_entry<R: StoredRow>(row: &R) -> Result<RegistrationEntry, Error> {
    let mut c = Columns::new(row);
    let id = c.id()?;
    let spiffe_id = c.text()?;
    let parent_id = c.text()?;
    let selectors = c.text()?;
    let selectors = selectors
        .split('\n')
        .map(|s| Selector::parse_joined("selectors", s).map_err(|_| corrupt("selector", s)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RegistrationEntry {
        id,
        spiffe_id: SpiffeId::parse(&spiffe_id).map_err(|_| corrupt("spiffe_id", &spiffe_id))?,
        parent_id: SpiffeId::parse(&parent_id).map_err(|_| corrupt("parent_id", &parent_id))?,
        selectors,
        x509_ttl: i32::try_from(c.int()?).unwrap_or(0),
        jwt_ttl: i32::try_from(c.int()?).unwrap_or(0),
        identity_id: c.id()?,
        created_at: c.int()?,
        dns_names: c
            .text()?
            .split('\n')
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Store {
    /// Stores a new entry; an entry with the same parent, SPIFFE ID and
    /// selectors already existing is AlreadyExists.
    pub async fn create_entry(
        &self,
        entry: &RegistrationEntry,
        context: &ChangeContext,
    ) -> Result<(), Error> {
        let selectors = joined(&entry.selectors);
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let found: Option<(String, Option<String>)> = sqlx::query_as::<Db, (String, Option<String>)>(
                "SELECT kind, spiffe_id FROM identities WHERE id = $1")
                .bind(entry.identity_id.hyphenated().to_string())
                .fetch_optional(&mut *tx)
                .await?;
            let (kind, acts_as) = found.ok_or_else(|| not_found(&entry.identity_id))?;
            let kind = Kind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?;
            // An entry issues the identity's SVIDs: it cannot name another
            // SPIFFE ID than the one the identity acts as.
            if let Some(acts_as) = acts_as.filter(|a| !a.is_empty())
                && acts_as != entry.spiffe_id.to_string()
            {
                return Err(Error::FailedPrecondition(format!(
                    "entry.spiffe_id: identity {} acts as {acts_as}; its entries must name that SPIFFE ID",
                    entry.identity_id
                )));
            }
            let existing: Option<String> = sqlx::query_scalar::<Db, String>(
                "SELECT id FROM registration_entries WHERE parent_id = $1 AND spiffe_id = $2 AND selectors = $3")
                .bind(entry.parent_id.to_string())
                .bind(entry.spiffe_id.to_string())
                .bind(&selectors)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(existing) = existing {
                return Err(Error::AlreadyExists(format!(
                    "entry: an entry with this parent, SPIFFE ID and selectors exists ({existing})"
                )));
            }
            let sql = format!("INSERT INTO registration_entries ({ENTRY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
            sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(entry.id.hyphenated().to_string())
                .bind(entry.spiffe_id.to_string())
                .bind(entry.parent_id.to_string())
                .bind(&selectors)
                .bind(i64::from(entry.x509_ttl))
                .bind(i64::from(entry.jwt_ttl))
                .bind(entry.identity_id.hyphenated().to_string())
                .bind(entry.created_at)
                .bind(entry.dns_names.join("\n"))
                .execute(&mut *tx)
                .await?;
            insert_selectors::<Db>(&mut tx, entry).await?;
            let record = evidence::record(
                context,
                "registration.create",
                Some((&entry.identity_id, kind)),
                "",
                [
                    ("entry_id", entry.id.hyphenated().to_string()),
                    ("spiffe_id", entry.spiffe_id.to_string()),
                    ("parent_id", entry.parent_id.to_string()),
                    ("selectors", selectors.replace('\n', " ")),
                ],
            );
            tx.enqueue_all(std::slice::from_ref(&record)).await?;
            tx.commit().await?;
        });
        self.committed(Changed::Nothing).await;
        Ok(())
    }

    /// Deletes an entry.
    /// Changes an entry's selectors, TTLs or DNS names, with a
    /// `registration.update` record naming the fields changed.
    pub async fn update_entry(
        &self,
        id: &Uuid,
        change: &EntryChange,
        context: &ChangeContext,
    ) -> Result<RegistrationEntry, Error> {
        let entry = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT {ENTRY_COLUMNS} FROM registration_entries WHERE id = $1{}", <Db as Engine>::FOR_UPDATE);
            let row = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(id.hyphenated().to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound(format!("entry.id: registration entry {id} does not exist")))?;
            let mut entry = read_entry(&row)?;
            let fields = entry.apply(change);
            let selectors = joined(&entry.selectors);
            if change.selectors.is_some() {
                let clash: Option<String> = sqlx::query_scalar::<Db, String>(
                    "SELECT id FROM registration_entries WHERE parent_id = $1 AND spiffe_id = $2 AND selectors = $3 AND id <> $4")
                    .bind(entry.parent_id.to_string())
                    .bind(entry.spiffe_id.to_string())
                    .bind(&selectors)
                    .bind(id.hyphenated().to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(clash) = clash {
                    return Err(Error::AlreadyExists(format!(
                        "entry.selectors: an entry with this parent, SPIFFE ID and selectors exists ({clash})"
                    )));
                }
                sqlx::query::<Db>("DELETE FROM registration_selectors WHERE entry_id = $1")
                    .bind(id.hyphenated().to_string())
                    .execute(&mut *tx)
                    .await?;
                insert_selectors::<Db>(&mut tx, &entry).await?;
            }
            sqlx::query::<Db>("UPDATE registration_entries SET selectors = $1, x509_ttl = $2, jwt_ttl = $3, dns_names = $4 WHERE id = $5")
                .bind(&selectors)
                .bind(i64::from(entry.x509_ttl))
                .bind(i64::from(entry.jwt_ttl))
                .bind(entry.dns_names.join("\n"))
                .bind(id.hyphenated().to_string())
                .execute(&mut *tx)
                .await?;
            let kind: String = sqlx::query_scalar::<Db, String>("SELECT kind FROM identities WHERE id = $1")
                .bind(entry.identity_id.hyphenated().to_string())
                .fetch_one(&mut *tx)
                .await?;
            let kind = Kind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?;
            let record = evidence::record(
                context,
                "registration.update",
                Some((&entry.identity_id, kind)),
                "",
                [
                    ("entry_id", id.hyphenated().to_string()),
                    ("spiffe_id", entry.spiffe_id.to_string()),
                    ("fields", fields.join(",")),
                ],
            );
            tx.enqueue_all(std::slice::from_ref(&record)).await?;
            tx.commit().await?;
            entry
        });
        self.committed(Changed::Nothing).await;
        Ok(entry)
    }

    pub async fn delete_entry(&self, id: &Uuid, context: &ChangeContext) -> Result<(), Error> {
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT {ENTRY_COLUMNS} FROM registration_entries WHERE id = $1");
            let row = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(id.hyphenated().to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound(format!("registration entry {id} does not exist")))?;
            let entry = read_entry(&row)?;
            sqlx::query::<Db>("DELETE FROM registration_selectors WHERE entry_id = $1")
                .bind(id.hyphenated().to_string())
                .execute(&mut *tx)
                .await?;
            sqlx::query::<Db>("DELETE FROM registration_entries WHERE id = $1")
                .bind(id.hyphenated().to_string())
                .execute(&mut *tx)
                .await?;
            let kind: Option<String> = sqlx::query_scalar::<Db, String>("SELECT kind FROM identities WHERE id = $1")
                .bind(entry.identity_id.hyphenated().to_string())
                .fetch_optional(&mut *tx)
                .await?;
            // The identity may be gone; a kind that does not parse is corrupt.
            let kind = match kind {
                None => Kind::WorkloadIdentity,
                Some(k) => Kind::parse(&k).ok_or_else(|| corrupt("kind", &k))?,
            };
            let record = evidence::record(
                context,
                "registration.delete",
                Some((&entry.identity_id, kind)),
                "",
                [
                    ("entry_id", id.hyphenated().to_string()),
                    ("spiffe_id", entry.spiffe_id.to_string()),
                ],
            );
            tx.enqueue_all(std::slice::from_ref(&record)).await?;
            tx.commit().await?;
        });
        self.committed(Changed::Nothing).await;
        Ok(())
    }

    /// Entries, optionally only an identity's, in id order.
    pub async fn entries(
        &self,
        filter: &EntryFilter,
        page: usize,
        token: &str,
    ) -> Result<(Vec<RegistrationEntry>, String), Error> {
        let after = super::after_id(token)?;
        let identity = filter
            .identity_id
            .map(|i| i.hyphenated().to_string())
            .unwrap_or_default();
        let spiffe_id = filter
            .spiffe_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let selector = filter
            .selector
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let rows = on_backend!(&self.db, pool, Db => {
            let sql = format!(
                "SELECT {ENTRY_COLUMNS} FROM registration_entries
                 WHERE ($1 = '' OR identity_id = $1) AND ($2 = '' OR spiffe_id = $2)
                   AND ($3 = '' OR id IN (SELECT entry_id FROM registration_selectors WHERE selector = $3))
                   AND id > $4 ORDER BY id LIMIT $5"
            );
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(&identity)
                .bind(&spiffe_id)
                .bind(&selector)
                .bind(&after)
                .bind(i64::try_from(page + 1).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            rows.iter().map(read_entry).collect::<Result<Vec<_>, _>>()?
        });
        Ok(paged(rows, page, |e| e.id.hyphenated().to_string()))
    }

    /// One entry, by id.
    pub async fn entry(&self, id: &Uuid) -> Result<RegistrationEntry, Error> {
        let row = on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {ENTRY_COLUMNS} FROM registration_entries WHERE id = $1");
            let row = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(id.hyphenated().to_string())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(read_entry).transpose()?
        });
        row.ok_or_else(|| Error::NotFound(format!("id: registration entry {id} does not exist")))
    }

    /// The entries whose selectors are all among `attested`.
    pub async fn match_selectors(
        &self,
        attested: &[Selector],
    ) -> Result<Vec<RegistrationEntry>, Error> {
        if attested.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = attested.iter().map(ToString::to_string).collect();
        let candidates = on_backend!(&self.db, pool, Db => {
            let sql = format!(
                "SELECT {ENTRY_COLUMNS} FROM registration_entries WHERE id IN
                    (SELECT entry_id FROM registration_selectors WHERE selector IN ({}))
                 ORDER BY id",
                <Db as Placeholders>::list(names.len(), 1)
            );
            let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
            for n in &names {
                query = query.bind(n);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter().map(read_entry).collect::<Result<Vec<_>, _>>()?
        });
        Ok(candidates
            .into_iter()
            .filter(|e| selector::matches(&e.selectors, attested))
            .collect())
    }
}

/// The selector index rows of `entry`, which `match_selectors` reads.
async fn insert_selectors<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    entry: &RegistrationEntry,
) -> Result<(), Error>
where
    DB: Engine,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let sql = format!(
        "INSERT INTO registration_selectors (selector, entry_id) VALUES {}",
        DB::values(entry.selectors.len(), 2, 1)
    );
    let mut query = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql));
    for s in &entry.selectors {
        query = query
            .bind(s.to_string())
            .bind(entry.id.hyphenated().to_string());
    }
    query.execute(&mut **tx).await?;
    Ok(())
}
