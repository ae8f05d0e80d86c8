//! Storage failures, classified once on either engine: what a caller is
//! told, and the detail that is logged instead.

use std::sync::Arc;

use tonic::Code;

/// Where a storage failure came from: logged, never returned. Shared, so a
/// group commit's one failure answers every caller in the group.
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What a detail may be given as: an error, or text.
type Detail = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a storage error means for the one who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The disk (or the database's size cap) is full: nothing more can be
    /// written until space is freed. RESOURCE_EXHAUSTED.
    Full,
    /// The database or its directory cannot be written.
    ReadOnly,
    /// Anything else: down, locked, unreachable. Retry.
    Unavailable,
}

/// What a caller is told when the service's storage is full.
pub const FULL: &str =
    "this service's storage is full; nothing was changed; free space on its volume, then retry";

/// Classifies a storage error, on either engine.
pub fn fault_of(error: &sqlx::Error) -> Fault {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // SQLite's (extended) result codes, numerically; PostgreSQL's
            // SQLSTATEs.
            match code.parse::<i32>().map(|c| c & 0xff) {
                Ok(13) if code.len() < 5 => Fault::Full,
                Ok(8) if code.len() < 5 => Fault::ReadOnly,
                _ => match code {
                    "53100" => Fault::Full,
                    "25006" => Fault::ReadOnly,
                    _ => Fault::Unavailable,
                },
            }
        }
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::StorageFull => Fault::Full,
            std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
                Fault::ReadOnly
            }
            _ => Fault::Unavailable,
        },
        _ => Fault::Unavailable,
    }
}

/// A storage failure, as every service's store error carries it. Its
/// message is what a caller may read; what went wrong is its `source`,
/// which `steward_errors::to_status` logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// Down, locked, unreachable or read-only: UNAVAILABLE, retry.
    #[error("storage is unavailable; retry")]
    Unavailable(#[source] Source),
    /// The disk or the database's cap is full: RESOURCE_EXHAUSTED.
    #[error("{FULL}")]
    Full(#[source] Source),
    /// A stored value this version cannot read: DATA_LOSS, never read as
    /// a default.
    #[error("storage holds a value this version cannot read; nothing was changed")]
    Corrupt(#[source] Source),
}

impl StorageError {
    /// UNAVAILABLE for a reason of the service's own (a writer task that
    /// stopped, a row that vanished mid-transaction).
    pub fn unavailable(detail: impl Into<Detail>) -> Self {
        Self::Unavailable(Arc::from(detail.into()))
    }

    /// A stored value that cannot be read.
    pub fn corrupt(detail: impl Into<Detail>) -> Self {
        Self::Corrupt(Arc::from(detail.into()))
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        // A stored value the code cannot decode is corrupt, not a fault to
        // retry: reading it again reads the same bytes.
        if matches!(
            error,
            sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. }
        ) {
            return Self::Corrupt(Arc::new(error));
        }
        match fault_of(&error) {
            Fault::Full => Self::Full(Arc::new(error)),
            Fault::ReadOnly | Fault::Unavailable => Self::Unavailable(Arc::new(error)),
        }
    }
}

impl steward_errors::ServiceError for StorageError {
    fn code(&self) -> Code {
        match self {
            Self::Unavailable(_) => Code::Unavailable,
            Self::Full(_) => Code::ResourceExhausted,
            Self::Corrupt(_) => Code::DataLoss,
        }
    }
}

#[cfg(test)]
mod tests {
    use steward_errors::ServiceError as _;

    use super::*;

    #[test]
    fn a_caller_reads_the_kind_and_the_log_reads_the_detail() {
        let e = StorageError::unavailable("database is locked at /srv/steward/inventory.db");
        assert_eq!(e.code(), Code::Unavailable);
        assert_eq!(e.to_string(), "storage is unavailable; retry");
        let logged = steward_errors::causes(&e);
        assert_eq!(
            logged,
            "storage is unavailable; retry: database is locked at /srv/steward/inventory.db"
        );
        let corrupt = StorageError::corrupt(String::from("stored kind 9"));
        assert_eq!(corrupt.code(), Code::DataLoss);
        assert!(!corrupt.to_string().contains("kind 9"));
        let copy = corrupt.clone();
        assert_eq!(
            steward_errors::causes(&copy),
            steward_errors::causes(&corrupt)
        );
    }

    #[test]
    fn an_engine_error_is_classified_once() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device");
        let full = StorageError::from(sqlx::Error::Io(io));
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert_eq!(full.to_string(), FULL);
        let closed = StorageError::from(sqlx::Error::PoolClosed);
        assert_eq!(closed.code(), Code::Unavailable);
        let unreadable = StorageError::from(sqlx::Error::Decode("stored index -7".into()));
        assert_eq!(unreadable.code(), Code::DataLoss);
    }
}
