//! Errors of the audit log.

use std::path::PathBuf;

/// Why an audit log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The directory that should hold the database could not be created.
    #[error("Cannot create the audit log directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or set up.
    #[error("Cannot open the audit log {db}")]
    Open {
        /// The database path, or `:memory:`.
        db: String,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// The database was written by a newer version of this crate.
    #[error("The audit log {db} has schema version {found}, this agent knows versions 0 to {supported}")]
    UnsupportedSchema {
        /// The database path, or `:memory:`.
        db: String,
        /// The database's `user_version`.
        found: i64,
        /// The newest schema version this build knows.
        supported: i64,
    },
    /// A database operation failed.
    #[error("Audit log {db}: cannot {operation}")]
    Database {
        /// The database path, or `:memory:`.
        db: String,
        /// What was being done, e.g. `append a record`.
        operation: &'static str,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// The entry to append is not acceptable.
    #[error("Invalid audit entry: {field} {reason}")]
    InvalidEntry {
        /// The offending field of [`NewEntry`](crate::NewEntry).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A page token that [`AuditLog::query`](crate::AuditLog::query) did not hand out.
    #[error("Malformed audit log page token {token:?}")]
    BadPageToken {
        /// The token as given.
        token: String,
    },
    /// The system clock reads a time before 1970 or too far after it.
    #[error("The system clock is out of range, cannot timestamp an audit record")]
    Clock,
}
