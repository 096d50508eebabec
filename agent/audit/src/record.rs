//! What goes into the log and what comes out of it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::AuditError;

/// Longest value, in bytes, accepted for each text field of a [`NewEntry`].
///
/// An error message longer than this is truncated (at a character boundary,
/// ending in `…`) rather than refused, so that a failed operation is never
/// left out of the log because its message was long.
pub const MAX_FIELD_BYTES: usize = 1024;

/// Marks the end of a truncated error message.
const TRUNCATION_MARK: &str = "…";

/// Whether an audited operation succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The operation succeeded.
    Ok,
    /// The operation failed; carries the error message shown to the actor.
    Error(String),
}

/// An entry for [`AuditLog::append`](crate::AuditLog::append); the log adds
/// the sequence number, the time and the hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEntry {
    /// Who did it: a user name, or a service identity (non-empty).
    pub actor: String,
    /// Where the request came from, e.g. `grpc 10.0.0.5` or `webui` (non-empty).
    pub source: String,
    /// What was done, dotted lower case by convention, e.g. `vm.start` (non-empty).
    pub action: String,
    /// What it was done to, e.g. `vm/web-1`; may be empty.
    pub target: String,
    /// How it ended.
    pub outcome: Outcome,
}

/// One record of the log as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain: 1 for the first record, then each one more.
    pub seq: i64,
    /// When the record was appended, in milliseconds since the Unix epoch
    /// (system clock; it can step back if the clock does).
    pub time_unix_ms: i64,
    /// Who did it.
    pub actor: String,
    /// Where the request came from.
    pub source: String,
    /// What was done.
    pub action: String,
    /// What it was done to (may be empty).
    pub target: String,
    /// Whether the operation succeeded.
    pub ok: bool,
    /// The error message when `ok` is false, otherwise empty.
    pub error: String,
    /// Hex SHA-256 hash of the previous record, or
    /// [`GENESIS_PREV_HASH`](crate::GENESIS_PREV_HASH) for the first one.
    pub prev_hash: String,
    /// Hex SHA-256 hash of this record (see [`AuditRecord::compute_hash`]).
    pub hash: String,
}

impl AuditRecord {
    /// Recomputes this record's hash from its fields (all but `hash`).
    ///
    /// The hash is SHA-256 over a canonical encoding: the domain tag
    /// `debvisor-audit-v1`, then `seq` and `time_unix_ms` as 8-byte big-endian
    /// integers, `ok` as one byte (0 or 1), and each text field (`actor`,
    /// `source`, `action`, `target`, `error`, `prev_hash` as hex text)
    /// prefixed with its length in bytes as an 8-byte big-endian integer.
    /// The result is lower-case hex.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        put_text(&mut h, "debvisor-audit-v1");
        h.update(self.seq.to_be_bytes());
        h.update(self.time_unix_ms.to_be_bytes());
        h.update([u8::from(self.ok)]);
        for text in [
            &self.actor,
            &self.source,
            &self.action,
            &self.target,
            &self.error,
            &self.prev_hash,
        ] {
            put_text(&mut h, text);
        }
        hex::encode(h.finalize())
    }
}

fn put_text(h: &mut Sha256, text: &str) {
    h.update((text.len() as u64).to_be_bytes());
    h.update(text.as_bytes());
}

/// A [`NewEntry`] that passed validation, split into the stored columns.
#[derive(Debug)]
pub(crate) struct ValidEntry {
    pub actor: String,
    pub source: String,
    pub action: String,
    pub target: String,
    pub ok: bool,
    pub error: String,
}

impl TryFrom<NewEntry> for ValidEntry {
    type Error = AuditError;

    fn try_from(e: NewEntry) -> Result<Self, AuditError> {
        check("actor", &e.actor, true)?;
        check("source", &e.source, true)?;
        check("action", &e.action, true)?;
        check("target", &e.target, false)?;
        let (ok, error) = match e.outcome {
            Outcome::Ok => (true, String::new()),
            Outcome::Error(message) => (false, truncate(message)),
        };
        Ok(ValidEntry {
            actor: e.actor,
            source: e.source,
            action: e.action,
            target: e.target,
            ok,
            error,
        })
    }
}

fn check(field: &'static str, value: &str, required: bool) -> Result<(), AuditError> {
    if required && value.is_empty() {
        return Err(AuditError::InvalidEntry {
            field,
            reason: "must not be empty".into(),
        });
    }
    if value.len() > MAX_FIELD_BYTES {
        return Err(AuditError::InvalidEntry {
            field,
            reason: format!("is {} bytes long, at most {MAX_FIELD_BYTES} are allowed", value.len()),
        });
    }
    Ok(())
}

/// Cuts `message` to at most [`MAX_FIELD_BYTES`] bytes, marking the cut.
fn truncate(mut message: String) -> String {
    if message.len() <= MAX_FIELD_BYTES {
        return message;
    }
    let mut end = MAX_FIELD_BYTES - TRUNCATION_MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(TRUNCATION_MARK);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> NewEntry {
        NewEntry {
            actor: "admin".into(),
            source: "webui".into(),
            action: "vm.start".into(),
            target: String::new(),
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn required_fields_must_not_be_empty() {
        for field in ["actor", "source", "action"] {
            let mut e = entry();
            match field {
                "actor" => e.actor.clear(),
                "source" => e.source.clear(),
                _ => e.action.clear(),
            }
            let err = ValidEntry::try_from(e).unwrap_err();
            assert!(
                matches!(err, AuditError::InvalidEntry { field: f, .. } if f == field),
                "{err}"
            );
        }
        assert!(ValidEntry::try_from(entry()).is_ok(), "empty target is fine");
    }

    #[test]
    fn long_fields_are_refused_but_long_errors_truncated() {
        let mut e = entry();
        e.target = "x".repeat(MAX_FIELD_BYTES + 1);
        let err = ValidEntry::try_from(e).unwrap_err();
        assert!(err.to_string().contains("target"), "{err}");

        let mut e = entry();
        e.target = "x".repeat(MAX_FIELD_BYTES);
        e.outcome = Outcome::Error("é".repeat(MAX_FIELD_BYTES));
        let v = ValidEntry::try_from(e).unwrap();
        assert!(!v.ok);
        assert!(v.error.len() <= MAX_FIELD_BYTES);
        assert!(v.error.ends_with(TRUNCATION_MARK));
    }

    #[test]
    fn hash_is_unambiguous() {
        let a = AuditRecord {
            seq: 1,
            time_unix_ms: 5,
            actor: "ab".into(),
            source: "c".into(),
            action: "x".into(),
            target: String::new(),
            ok: true,
            error: String::new(),
            prev_hash: crate::GENESIS_PREV_HASH.into(),
            hash: String::new(),
        };
        let mut b = a.clone();
        b.actor = "a".into();
        b.source = "bc".into();
        assert_ne!(a.compute_hash(), b.compute_hash());
        assert_eq!(a.compute_hash(), a.clone().compute_hash());
        assert_eq!(a.compute_hash().len(), 64);
    }
}
