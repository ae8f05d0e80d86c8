//! The audit service's configuration: the shared service settings plus the
//! log's own.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use steward_server::{ServiceConfig, Settings};

/// Everything `steward-audit` reads at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditConfig {
    #[serde(flatten)]
    pub service: ServiceConfig,
    #[serde(default)]
    pub log: LogConfig,
}

impl Settings for AuditConfig {
    fn service(&self) -> &ServiceConfig {
        &self.service
    }
}

/// The evidence log's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The checkpoint origin line and signing key name. Empty means
    /// `<trust domain>/audit`.
    pub origin: String,
    /// PEM PKCS#8 Ed25519 key that signs checkpoints.
    pub signing_key: PathBuf,
    /// How often a checkpoint is published while the log grows.
    pub checkpoint_interval_ms: u64,
    /// Most records the sequencer commits in one transaction.
    pub max_batch: usize,
    /// Committed batches a subscriber may trail before it is told it fell
    /// behind (and must resume).
    pub subscriber_buffer: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            origin: String::new(),
            signing_key: PathBuf::from(steward_server::config::DEV_DIR).join("pki/audit-log.key"),
            checkpoint_interval_ms: 1000,
            max_batch: 4096,
            subscriber_buffer: 1024,
        }
    }
}
