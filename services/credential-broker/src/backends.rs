//! External credential backends: systems whose own credentials the broker
//! leases out, such as PostgreSQL login roles.
//!
//! A [`CredentialBackend`] creates a credential valid until the lease's
//! expiry, revokes it (idempotently), and can prove a revoked credential
//! is refused by trying it. The broker stores only the credential's name
//! and its secret sealed under the key-encryption key, wiped once the
//! credential is revoked.
//!
//! Revocation is driven by the revocation log: [`follow`] keeps a durable
//! cursor per backend and revokes, in order, every backend credential
//! whose lease was revoked or expired, retrying until the backend has. So
//! the reaper, bulk revocations and closed incidents reach the backend
//! without knowing about it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sqlx::ConnectOptions as _;
use sqlx::postgres::PgConnectOptions;

use crate::keys::KeyEncryption;
use crate::store::{Kind, Store};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a backend operation failed. Messages never carry secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("template: {0}")]
    UnknownTemplate(String),
    #[error("the backend refused: {0}")]
    Refused(String),
    #[error("the backend cannot be reached: {0}")]
    Unavailable(String),
}

/// A credential a backend created.
#[derive(Debug, Clone)]
pub struct BackendCredential {
    /// The login name, recorded on the lease.
    pub username: String,
    /// The secret, handed to the caller once and stored only sealed.
    pub password: String,
}

/// A system whose credentials the broker leases.
pub trait CredentialBackend: Send + Sync {
    /// Its name, as leases record it.
    fn name(&self) -> &str;
    /// Creates a credential from `template`, valid until `expires_at_ns`.
    fn create<'a>(
        &'a self,
        template: &'a str,
        expires_at_ns: i64,
    ) -> BoxFuture<'a, Result<BackendCredential, BackendError>>;
    /// Revokes `username`: it can no longer log in and its sessions end.
    /// Revoking what is already gone succeeds.
    fn revoke<'a>(&'a self, username: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;
    /// Tries the credential: `Ok(true)` when the backend refuses it.
    fn refuses<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;
}

/// The PostgreSQL backend's settings.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresBackendConfig {
    /// A role allowed to CREATE ROLE and to grant what the templates grant.
    /// It may hold a password: it is never logged.
    pub url: String,
    /// Prefix of the roles the broker creates (they are `<prefix><hex>`).
    #[serde(default = "default_prefix")]
    pub role_prefix: String,
    /// Template name → statements run when a role is created, with
    /// `{role}` standing for the new role's quoted name.
    #[serde(default)]
    pub templates: BTreeMap<String, Vec<String>>,
}

impl std::fmt::Debug for PostgresBackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackendConfig")
            .field("url", &steward_db::redact(&self.url))
            .field("role_prefix", &self.role_prefix)
            .field("templates", &self.templates.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn default_prefix() -> String {
    "steward_".to_owned()
}

/// PostgreSQL login roles: `CREATE ROLE … LOGIN PASSWORD … VALID UNTIL`,
/// grants from a template; revoked by `NOLOGIN`, ending the role's
/// sessions, then dropping it.
pub struct PostgresBackend {
    config: PostgresBackendConfig,
    admin: PgConnectOptions,
    random: SystemRandom,
}

impl PostgresBackend {
    pub fn new(config: PostgresBackendConfig) -> Result<Self, String> {
        let admin: PgConnectOptions = config.url.parse().map_err(|e| {
            format!(
                "postgres backend url {}: {e}",
                steward_db::redact(&config.url)
            )
        })?;
        if config.role_prefix.is_empty()
            || !config
                .role_prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return Err("postgres backend role_prefix: 1 or more of a-z and _".to_owned());
        }
        Ok(Self {
            config,
            admin,
            random: SystemRandom::new(),
        })
    }

    async fn admin(&self) -> Result<sqlx::PgConnection, BackendError> {
        self.admin
            .clone()
            .log_statements(tracing::log::LevelFilter::Off)
            .connect()
            .await
            .map_err(|e| BackendError::Unavailable(e.to_string()))
    }

    fn random_hex(&self, bytes: usize) -> Result<String, BackendError> {
        let mut buf = vec![0u8; bytes];
        self.random
            .fill(&mut buf)
            .map_err(|_| BackendError::Unavailable("no randomness available".into()))?;
        Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// `username` is one of ours: the prefix and hex, so it needs no quoting
    /// beyond the double quotes the statements put around it.
    fn ours(&self, username: &str) -> bool {
        username
            .strip_prefix(&self.config.role_prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

fn refused(e: &sqlx::Error) -> bool {
    // Class 28: invalid authorization (bad password, NOLOGIN, no such role).
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("28")))
}

impl CredentialBackend for PostgresBackend {
    fn name(&self) -> &str {
        "postgres"
    }

    fn create<'a>(
        &'a self,
        template: &'a str,
        expires_at_ns: i64,
    ) -> BoxFuture<'a, Result<BackendCredential, BackendError>> {
        Box::pin(async move {
            let statements = self.config.templates.get(template).ok_or_else(|| {
                BackendError::UnknownTemplate(format!(
                    "{template:?} is not one of {}",
                    self.config
                        .templates
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            let username = format!("{}{}", self.config.role_prefix, self.random_hex(8)?);
            // Hex: safe inside a SQL string literal.
            let password = self.random_hex(24)?;
            let until = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(expires_at_ns))
                .map_err(|e| BackendError::Refused(e.to_string()))?;
            let until = format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00",
                until.year(),
                u8::from(until.month()),
                until.day(),
                until.hour(),
                until.minute(),
                until.second()
            );
            let mut admin = self.admin().await?;
            let mut tx = sqlx::Connection::begin(&mut admin)
                .await
                .map_err(|e| BackendError::Unavailable(e.to_string()))?;
            let create = format!(
                "CREATE ROLE \"{username}\" LOGIN PASSWORD '{password}' VALID UNTIL '{until}'"
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(create))
                .execute(&mut *tx)
                .await
                .map_err(|e| BackendError::Refused(format!("cannot create the role: {e}")))?;
            for statement in statements {
                let sql = statement.replace("{role}", &format!("\"{username}\""));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| BackendError::Refused(format!("template {template:?}: {e}")))?;
            }
            tx.commit()
                .await
                .map_err(|e| BackendError::Unavailable(e.to_string()))?;
            Ok(BackendCredential { username, password })
        })
    }

    fn revoke<'a>(&'a self, username: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if !self.ours(username) {
                return Err(BackendError::Refused(format!(
                    "{username:?} is not a role this broker created"
                )));
            }
            let mut admin = self.admin().await?;
            let exists: Option<String> =
                sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname = $1")
                    .bind(username)
                    .fetch_optional(&mut admin)
                    .await
                    .map_err(|e| BackendError::Unavailable(e.to_string()))?;
            if exists.is_none() {
                return Ok(());
            }
            // First make it useless, then end its sessions, then remove it.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER ROLE \"{username}\" NOLOGIN"
            )))
            .execute(&mut admin)
            .await
            .map_err(|e| BackendError::Refused(format!("cannot disable the role: {e}")))?;
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            )
            .bind(username)
            .execute(&mut admin)
            .await
            .map_err(|e| BackendError::Refused(format!("cannot end its sessions: {e}")))?;
            let drop = format!("DROP OWNED BY \"{username}\"; DROP ROLE IF EXISTS \"{username}\"");
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                .execute(&mut admin)
                .await
            {
                // Disabled and disconnected already; a role left behind
                // (it owns objects in another database) cannot log in.
                tracing::warn!(role = username, error = %e, "revoked role could not be dropped");
            }
            Ok(())
        })
    }

    fn refuses<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let attempt = self
                .admin
                .clone()
                .username(username)
                .password(password)
                .log_statements(tracing::log::LevelFilter::Off);
            match attempt.connect().await {
                Ok(connection) => {
                    let _ = sqlx::Connection::close(connection).await;
                    Ok(false)
                }
                Err(e) if refused(&e) => Ok(true),
                Err(e) => Err(BackendError::Unavailable(e.to_string())),
            }
        })
    }
}

/// How often the follower looks for new revocations.
const FOLLOW: Duration = Duration::from_millis(500);

/// Revokes, in the backend, every credential whose lease the revocation
/// log shows ended, from a durable cursor; wipes each sealed secret once
/// its credential is revoked.
pub async fn follow(
    store: Store,
    backend: Arc<dyn CredentialBackend>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(FOLLOW) => {}
        }
        if let Err(error) = follow_once(&store, backend.as_ref()).await {
            tracing::warn!(backend = backend.name(), %error, "cannot revoke in the backend yet; retrying");
        }
    }
}

async fn follow_once(store: &Store, backend: &dyn CredentialBackend) -> Result<(), String> {
    let start = store
        .backend_cursor(backend.name())
        .await
        .map_err(|e| e.to_string())?;
    let mut cursor = start;
    let mut failed = None;
    'pages: loop {
        let entries = store
            .revocations_after(cursor, 500)
            .await
            .map_err(|e| e.to_string())?;
        if entries.is_empty() {
            break;
        }
        for entry in entries {
            let lease = &entry.lease;
            if lease.kind == Kind::DatabaseRole && lease.backend == backend.name() {
                let revoked = match backend.revoke(&lease.credential_ref).await {
                    Ok(()) => store
                        .wipe_secret(&lease.lease_id)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("lease {}: {e}", lease.lease_id)),
                };
                if let Err(e) = revoked {
                    failed = Some(e);
                    break 'pages;
                }
            }
            cursor = entry.sequence;
        }
    }
    if cursor != start {
        store
            .set_backend_cursor(backend.name(), cursor)
            .await
            .map_err(|e| e.to_string())?;
    }
    failed.map_or(Ok(()), Err)
}

/// Seals a backend secret for storage on its lease.
pub fn seal(kek: &dyn KeyEncryption, lease_id: &str, secret: &str) -> Result<Vec<u8>, String> {
    kek.seal(&format!("lease/{lease_id}"), secret.as_bytes())
        .map_err(|e| e.to_string())
}

/// Opens what [`seal`] sealed.
pub fn open(kek: &dyn KeyEncryption, lease_id: &str, sealed: &[u8]) -> Result<String, String> {
    let bytes = kek
        .open(&format!("lease/{lease_id}"), sealed)
        .map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}
