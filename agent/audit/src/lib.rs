//! Append-only, hash-chained audit log of the node agent, kept in SQLite on
//! the data partition (in production `/data/debvisor/audit.db`).
//!
//! Every record carries the SHA-256 hash of its own canonical encoding and
//! the hash of the record before it, so [`AuditLog::verify`] can show that no
//! record was changed, removed or reordered. SQLite triggers refuse `UPDATE`
//! and `DELETE` on the records table; the hash chain catches whoever drops
//! them. Removing records from the *end* of the chain cannot be detected from
//! the file alone: anchor [`VerifyReport::head_hash`] somewhere else (a log
//! line, the control plane) to cover that.
//!
//! ```no_run
//! # async fn demo() -> Result<(), debvisor_audit::AuditError> {
//! use debvisor_audit::{AuditLog, NewEntry, Outcome, Query};
//!
//! let log = AuditLog::open("/data/debvisor/audit.db".as_ref()).await?;
//! log.append(NewEntry {
//!     actor: "admin".into(),
//!     source: "webui 192.0.2.10".into(),
//!     action: "vm.start".into(),
//!     target: "vm/web-1".into(),
//!     outcome: Outcome::Ok,
//! })
//! .await?;
//! let page = log.query(&Query { action: Some("vm.*".into()), ..Query::default() }).await?;
//! assert!(log.verify().await?.problem.is_none());
//! # let _ = page; Ok(()) }
//! ```

#![warn(missing_docs)]

mod chain;
mod csv;
mod error;
mod log;
mod query;
mod record;
mod schema;

pub use chain::{ChainProblem, GENESIS_PREV_HASH, VerifyReport};
pub use csv::to_csv;
pub use error::AuditError;
pub use log::AuditLog;
pub use query::{Page, Query};
pub use record::{AuditRecord, MAX_FIELD_BYTES, NewEntry, Outcome};
