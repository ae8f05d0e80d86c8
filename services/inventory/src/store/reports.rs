//! The posture reports. Each is a range over an index kept up to date by
//! every write (see the migration), so a page costs the same at a thousand
//! identities as at a million; each row comes with its reasons.

use std::collections::BTreeMap;

use steward_db::{Placeholders, on_backend};

use super::{Clause, Param, Store, bind_params, prefixed_columns, read_identity};
use crate::domain::lifecycle::LIVE;
use crate::domain::{Error, Filter, Identity, NANOS_PER_DAY, Nanos, PRINCIPAL_LABEL, State, bad};

crate::domain::names!(
    /// A posture question.
    Report {
        Stale => "stale",
        Orphaned => "orphaned",
        OverPrivileged => "over_privileged",
        Expiring => "expiring",
        ExpiredButActive => "expired_but_active",
        Shared => "shared",
        NoExpiry => "no_expiry",
        LongLivedSecret => "long_lived_secret",
        MultipleActiveKeys => "multiple_active_keys",
    }
);

/// The credentials `p.identity_id` shares a principal with: the same
/// kind, in the same source system, in a state that can act (`{states}`,
/// filled by [`siblings`]), as `j`.
const SIBLINGS: &str = "FROM identity_labels p
    JOIN identities me ON me.id = p.identity_id
    JOIN identity_labels q ON q.key = p.key AND q.value = p.value AND q.identity_id <> p.identity_id
    JOIN identities j ON j.id = q.identity_id
    WHERE p.key = '{principal}' AND j.source_system = me.source_system
      AND j.kind = me.kind AND j.state IN ({states})";

impl Report {
    /// The horizon in days used when the caller gives none.
    pub fn default_days(self) -> i64 {
        match self {
            Self::Expiring => 30,
            _ => 90,
        }
    }

    /// The column the report is ordered by, besides id.
    fn key(self) -> Option<&'static str> {
        match self {
            Self::Stale => Some("active_at_ns"),
            Self::OverPrivileged => Some("entitlement_idle_since_ns"),
            Self::Expiring | Self::ExpiredButActive => Some("expires_at_ns"),
            Self::LongLivedSecret => Some("rotated_at_ns"),
            Self::Orphaned | Self::Shared | Self::NoExpiry | Self::MultipleActiveKeys => None,
        }
    }
}

/// One identity on a report, and why.
#[derive(Debug, Clone)]
pub struct Finding {
    pub identity: Identity,
    pub reasons: Vec<String>,
}

/// A page of a report.
#[derive(Debug, Clone)]
pub struct ReportPage {
    pub findings: Vec<Finding>,
    pub next_page_token: String,
    /// Findings over the whole report; computed for the first page only.
    pub total: Option<u64>,
}

fn days(ns: Nanos) -> i64 {
    ns / NANOS_PER_DAY
}

fn date(ns: Nanos) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .map(|t| t.date().to_string())
        .unwrap_or_default()
}

impl Store {
    /// How many identities are in each lifecycle state (a state no
    /// identity is in is absent): the identities gauge.
    pub async fn identities_by_state(&self) -> Result<Vec<(String, i64)>, Error> {
        const SQL: &str = "SELECT state, COUNT(*) FROM identities GROUP BY state";
        Ok(on_backend!(&self.db, pool, Db => {
            sqlx::query_as::<Db, (String, i64)>(SQL).fetch_all(pool).await?
        }))
    }

    /// One page of `report` over the identities matching `filter`, as of
    /// `now`, looking `horizon_days` back (or ahead, for expiring).
    pub async fn report(
        &self,
        report: Report,
        horizon_days: i64,
        filter: &Filter,
        page: usize,
        token: &str,
        now: Nanos,
    ) -> Result<ReportPage, Error> {
        let horizon = horizon_days.saturating_mul(NANOS_PER_DAY);
        let mut filter = filter.clone();
        if filter.states.is_empty() {
            filter.states = LIVE.to_vec();
        }
        if matches!(
            report,
            Report::ExpiredButActive | Report::MultipleActiveKeys
        ) {
            filter.states.retain(|s| s.can_act());
            if filter.states.is_empty() {
                filter.states.push(State::Active);
            }
        }
        let cursor = Cursor::parse(token, report.key().is_some())?;
        let (rows, total) = on_backend!(&self.db, pool, Db => {
            let mut clause = Clause::default();
            clause.filter::<Db>(&filter);
            match report {
                Report::Stale => clause.push("i.active_at_ns < ?", [Param::Int(now - horizon)]),
                Report::Orphaned => clause.push("i.orphaned = 1", []),
                Report::OverPrivileged => clause.push("i.entitlement_idle_since_ns < ?", [Param::Int(now - horizon)]),
                Report::Expiring => clause.push(
                    "i.expires_at_ns >= ? AND i.expires_at_ns < ?",
                    [Param::Int(now), Param::Int(now.saturating_add(horizon))],
                ),
                Report::ExpiredButActive => clause.push("i.expires_at_ns < ?", [Param::Int(now)]),
                Report::Shared => clause.push("i.consumer_count > 1", []),
                Report::NoExpiry => clause.push("i.expires_at_ns IS NULL", []),
                Report::LongLivedSecret => clause.push("i.rotated_at_ns < ?", [Param::Int(now - horizon)]),
                Report::MultipleActiveKeys => clause.push(
                    &format!("EXISTS (SELECT 1 {} AND p.identity_id = i.id)", siblings()),
                    [],
                ),
            }
            let total = if cursor.is_none() {
                let sql = format!("SELECT COUNT(*) FROM identities i {}", clause.where_sql());
                let query = sqlx::query_scalar::<Db, i64>(sqlx::AssertSqlSafe(sql));
                Some(u64::try_from(bind_params!(query, &clause.params).fetch_one(pool).await?).unwrap_or(0))
            } else {
                None
            };
            let order = match report.key() {
                Some(key) => {
                    if let Some(c) = &cursor {
                        clause.push(&format!("(i.{key}, i.id) > (?, ?)"), [Param::Int(c.key), Param::Text(c.id.clone())]);
                    }
                    format!("i.{key}, i.id")
                }
                None => {
                    if let Some(c) = &cursor {
                        clause.push("i.id > ?", [Param::Text(c.id.clone())]);
                    }
                    "i.id".to_owned()
                }
            };
            let sql = format!(
                "SELECT {} FROM identities i {} ORDER BY {order} LIMIT {}",
                prefixed_columns("i"),
                clause.where_sql(),
                page + 1
            );
            let query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
            let rows = bind_params!(query, &clause.params).fetch_all(pool).await?;
            let rows = rows.iter().map(read_identity).collect::<Result<Vec<_>, _>>()?;
            (rows, total)
        });
        let (rows, next_page_token) = super::paged(rows, page, |i| {
            Cursor {
                key: report_key(report, i),
                id: i.id.hyphenated().to_string(),
            }
            .encode(report.key().is_some())
        });
        let findings = self.explain(report, rows, now, horizon).await?;
        Ok(ReportPage {
            findings,
            next_page_token,
            total,
        })
    }

    /// Attaches the reasons to each identity of a page.
    async fn explain(
        &self,
        report: Report,
        rows: Vec<Identity>,
        now: Nanos,
        horizon: Nanos,
    ) -> Result<Vec<Finding>, Error> {
        let ids: Vec<String> = rows.iter().map(|i| i.id.hyphenated().to_string()).collect();
        let details: BTreeMap<String, Vec<String>> = match report {
            Report::OverPrivileged => {
                self.page_details(
                    &ids,
                    "SELECT identity_id, system || ':' || permission || ' on ' || resource FROM entitlements
                     WHERE granted = 1 AND COALESCE(last_used_at_ns, granted_at_ns) < ? AND identity_id IN",
                    Some(now - horizon),
                )
                .await?
            }
            Report::MultipleActiveKeys => {
                let select = format!(
                    "SELECT p.identity_id, j.display_name || ' (' || j.external_id || ')' {} AND p.identity_id IN",
                    siblings()
                );
                self.page_details(&ids, &select, None).await?
            }
            Report::Shared => {
                self.page_details(
                    &ids,
                    "SELECT identity_id, consumer FROM identity_consumers WHERE identity_id IN",
                    None,
                )
                .await?
            }
            _ => BTreeMap::new(),
        };
        let departed = if report == Report::Orphaned {
            let names: Vec<String> = rows.iter().flat_map(Identity::owner_names).collect();
            self.departed_among(&names).await?
        } else {
            Default::default()
        };
        Ok(rows
            .into_iter()
            .map(|identity| {
                let reasons = reasons(report, &identity, now, &details, &departed);
                Finding { identity, reasons }
            })
            .collect())
    }

    /// `(identity_id, text)` rows for the identities of a page, grouped.
    async fn page_details(
        &self,
        ids: &[String],
        select: &str,
        cutoff: Option<Nanos>,
    ) -> Result<BTreeMap<String, Vec<String>>, Error> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let rows: Vec<(String, String)> = on_backend!(&self.db, pool, Db => {
            let first = usize::from(cutoff.is_some()) + 1;
            let select = match cutoff {
                Some(_) => select.replacen('?', &<Db as Placeholders>::list(1, 1), 1),
                None => select.to_owned(),
            };
            let sql = format!("{select} ({}) ORDER BY 1, 2", <Db as Placeholders>::list(ids.len(), first));
            let mut query = sqlx::query_as::<Db, (String, String)>(sqlx::AssertSqlSafe(sql));
            if let Some(c) = cutoff {
                query = query.bind(c);
            }
            for id in ids {
                query = query.bind(id);
            }
            query.fetch_all(pool).await?
        });
        let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, text) in rows {
            grouped.entry(id).or_default().push(text);
        }
        Ok(grouped)
    }
}

/// [`SIBLINGS`] with the states that can act.
fn siblings() -> String {
    let states: Vec<String> = State::ALL
        .iter()
        .filter(|s| s.can_act())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    SIBLINGS
        .replace("{principal}", PRINCIPAL_LABEL)
        .replace("{states}", &states.join(", "))
}

fn report_key(report: Report, identity: &Identity) -> i64 {
    match report {
        Report::Stale => super::active_at(identity),
        Report::LongLivedSecret => super::rotated_at(identity),
        Report::Expiring | Report::ExpiredButActive => identity.spec.expires_at.unwrap_or(0),
        Report::OverPrivileged => identity.entitlement_idle_since.unwrap_or(0),
        Report::Orphaned | Report::Shared | Report::NoExpiry | Report::MultipleActiveKeys => 0,
    }
}

fn reasons(
    report: Report,
    identity: &Identity,
    now: Nanos,
    details: &BTreeMap<String, Vec<String>>,
    departed: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    let spec = &identity.spec;
    let detail = details
        .get(&identity.id.hyphenated().to_string())
        .cloned()
        .unwrap_or_default();
    match report {
        Report::Stale => vec![match spec.last_used_at {
            Some(used) => format!(
                "unused for {} days (last used {})",
                days(now - used),
                date(used)
            ),
            None => {
                let created = super::created_at(identity);
                format!(
                    "never used; created {} days ago ({})",
                    days(now - created),
                    date(created)
                )
            }
        }],
        Report::Orphaned => {
            let mut out = Vec::new();
            if spec.unowned {
                out.push("filed unowned for triage".to_owned());
            }
            for (role, owner) in [
                ("business", &spec.business_owner),
                ("technical", &spec.technical_owner),
            ] {
                match owner {
                    None => out.push(format!("no {role} owner")),
                    Some(o) if departed.contains(&o.name) => {
                        out.push(format!("{role} owner {} has departed", o.name));
                    }
                    Some(_) => {}
                }
            }
            out
        }
        Report::OverPrivileged => {
            let shown: Vec<String> = detail.iter().take(5).cloned().collect();
            let more = detail.len().saturating_sub(shown.len());
            let mut line = format!(
                "{} granted permission{} unused for the horizon: {}",
                detail.len(),
                if detail.len() == 1 { "" } else { "s" },
                shown.join(", ")
            );
            if more > 0 {
                line.push_str(&format!(" and {more} more"));
            }
            vec![line]
        }
        Report::Expiring => {
            let at = spec.expires_at.unwrap_or(now);
            vec![format!("expires in {} days ({})", days(at - now), date(at))]
        }
        Report::ExpiredButActive => {
            let at = spec.expires_at.unwrap_or(now);
            vec![format!(
                "expired {} days ago ({}) and is still {}",
                days(now - at),
                date(at),
                identity.state
            )]
        }
        Report::Shared => vec![format!(
            "used by {} consumers: {}",
            detail.len(),
            detail.join(", ")
        )],
        Report::NoExpiry => vec!["has no expiry".to_owned()],
        Report::MultipleActiveKeys => vec![format!(
            "{} other active {} of {}: {}",
            detail.len(),
            spec.kind.as_str(),
            spec.labels.get(PRINCIPAL_LABEL).map_or("", String::as_str),
            detail.join(", ")
        )],
        Report::LongLivedSecret => {
            let rotated = super::rotated_at(identity);
            vec![match spec.last_rotated_at {
                Some(_) => format!(
                    "not rotated for {} days (last rotated {})",
                    days(now - rotated),
                    date(rotated)
                ),
                None => format!(
                    "never rotated; created {} days ago ({})",
                    days(now - rotated),
                    date(rotated)
                ),
            }]
        }
    }
}

/// Where the next page starts: the report key and id of the last row.
struct Cursor {
    key: i64,
    id: String,
}

impl Cursor {
    fn encode(&self, keyed: bool) -> String {
        if keyed {
            format!("{}.{}", self.key, self.id)
        } else {
            self.id.clone()
        }
    }

    fn parse(token: &str, keyed: bool) -> Result<Option<Self>, Error> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = || Error::Invalid(bad("page_token", "not a token from a previous response"));
        let (key, id) = if keyed {
            let (key, id) = token.split_once('.').ok_or_else(invalid)?;
            (key.parse::<i64>().map_err(|_| invalid())?, id)
        } else {
            (0, token)
        };
        let id = uuid::Uuid::try_parse(id).map_err(|_| invalid())?;
        Ok(Some(Self {
            key,
            id: id.hyphenated().to_string(),
        }))
    }
}
