//! Humans: who a call's bearer token says is acting, verified against the
//! configured OIDC issuer's JWKS.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use steward_identity::jwt::{self, Validation, VerifyingKeys};
use tonic::Status;

use crate::config::OidcConfig;
use crate::error::Error;

/// A verified human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Human {
    pub subject: String,
    pub issuer: String,
}

#[derive(Debug)]
struct Loaded {
    modified: Option<SystemTime>,
    keys: Arc<VerifyingKeys>,
}

/// Verifies `authorization: Bearer <token>` metadata.
#[derive(Debug)]
pub struct Humans {
    oidc: Option<(Validation, PathBuf)>,
    loaded: RwLock<Loaded>,
}

fn load(path: &PathBuf) -> Result<Loaded, String> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("OIDC JWKS {}: {e}", path.display()))?;
    let keys = VerifyingKeys::from_json(&text)
        .map_err(|e| format!("OIDC JWKS {}: {e}", path.display()))?;
    Ok(Loaded {
        modified,
        keys: Arc::new(keys),
    })
}

impl Humans {
    /// Loads the issuer's keys; a configured issuer whose JWKS cannot be
    /// read stops start-up.
    pub fn new(config: Option<&OidcConfig>) -> Result<Self, String> {
        let Some(config) = config else {
            return Ok(Self {
                oidc: None,
                loaded: RwLock::new(Loaded {
                    modified: None,
                    keys: Arc::new(VerifyingKeys::default()),
                }),
            });
        };
        let loaded = load(&config.jwks_file)?;
        Ok(Self {
            oidc: Some((
                Validation {
                    issuer: config.issuer.clone(),
                    audience: config.audience.clone(),
                    leeway_secs: 60,
                },
                config.jwks_file.clone(),
            )),
            loaded: RwLock::new(loaded),
        })
    }

    /// The keys, re-read when the JWKS file changed (key rotation).
    fn keys(&self, path: &PathBuf) -> Arc<VerifyingKeys> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        {
            let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
            if loaded.modified == modified {
                return loaded.keys.clone();
            }
        }
        match load(path) {
            Ok(fresh) => {
                let keys = fresh.keys.clone();
                *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                keys
            }
            Err(e) => {
                // Keep the last good keys rather than failing every call.
                tracing::error!(error = %e, "cannot re-read the OIDC JWKS; keeping the last keys");
                self.loaded
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys
                    .clone()
            }
        }
    }

    /// The human a call's bearer token names; `None` without a token. A
    /// token that does not verify is UNAUTHENTICATED (never ignored).
    pub fn of(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Option<Human>, Status> {
        let Some(value) = metadata.get("authorization") else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Error::Unauthenticated("authorization: expected `Bearer <OIDC token>`".into())
            })?;
        let Some((validation, path)) = &self.oidc else {
            return Err(Error::Unauthenticated(
                "authorization: no OIDC issuer is configured, so bearer tokens cannot be verified"
                    .into(),
            )
            .into());
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = jwt::verify(token, &self.keys(path), validation, now)
            .map_err(|e| Error::Unauthenticated(format!("authorization: {e}")))?;
        Ok(Some(Human {
            subject: claims.subject,
            issuer: claims.issuer,
        }))
    }
}
