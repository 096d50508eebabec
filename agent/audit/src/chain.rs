//! Checking the hash chain.

use std::fmt;

use serde::Serialize;

use crate::record::AuditRecord;

/// `prev_hash` of the first record: 64 zeros.
pub const GENESIS_PREV_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What [`AuditLog::verify`](crate::AuditLog::verify) found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records read, whether intact or not.
    pub records: u64,
    /// `seq` of the last record (0 for an empty log).
    pub head_seq: i64,
    /// Hash of the last record ([`GENESIS_PREV_HASH`] for an empty log).
    /// Keep it elsewhere to detect later truncation of the log.
    pub head_hash: String,
    /// The first problem found, oldest first; `None` when the chain is intact.
    pub problem: Option<ChainProblem>,
}

/// A break in the hash chain: evidence that the file was altered outside the
/// agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ChainProblem {
    /// The record's stored hash is not the hash of its fields: the record
    /// was changed after it was written.
    HashMismatch {
        /// The altered record.
        seq: i64,
    },
    /// The record's `prev_hash` is not the previous record's hash: a record
    /// before it was rewritten (hash included) or replaced.
    BrokenLink {
        /// The record whose link does not match.
        seq: i64,
    },
    /// Sequence numbers skip: records between the two were removed.
    Gap {
        /// The last record before the gap (0 when the log's first records are missing).
        after_seq: i64,
        /// The first record after the gap.
        next_seq: i64,
    },
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainProblem::HashMismatch { seq } => write!(
                f,
                "Record {seq} does not match its hash: it was changed after it was written"
            ),
            ChainProblem::BrokenLink { seq } => write!(
                f,
                "Record {seq} does not link to the hash of the record before it: \
                 an earlier record was rewritten or replaced"
            ),
            ChainProblem::Gap { after_seq, next_seq } => {
                let (first, last) = (after_seq + 1, next_seq - 1);
                if first == last {
                    write!(f, "Record {first} is missing")?;
                } else {
                    write!(f, "Records {first} to {last} are missing")?;
                }
                write!(f, ": the log jumps from record {after_seq} to record {next_seq}")
            }
        }
    }
}

/// Checks records one by one, oldest first, remembering the first problem.
#[derive(Debug)]
pub(crate) struct ChainWalker {
    records: u64,
    head_seq: i64,
    head_hash: String,
    problem: Option<ChainProblem>,
}

impl ChainWalker {
    pub(crate) fn new() -> Self {
        ChainWalker {
            records: 0,
            head_seq: 0,
            head_hash: GENESIS_PREV_HASH.to_owned(),
            problem: None,
        }
    }

    /// The `seq` of the last record seen, to continue the walk after it.
    pub(crate) fn last_seq(&self) -> i64 {
        self.head_seq
    }

    pub(crate) fn check(&mut self, record: &AuditRecord) {
        let found = if record.seq != self.head_seq + 1 {
            Some(ChainProblem::Gap {
                after_seq: self.head_seq,
                next_seq: record.seq,
            })
        } else if record.prev_hash != self.head_hash {
            Some(ChainProblem::BrokenLink { seq: record.seq })
        } else if record.compute_hash() != record.hash {
            Some(ChainProblem::HashMismatch { seq: record.seq })
        } else {
            None
        };
        if self.problem.is_none() {
            self.problem = found;
        }
        self.records += 1;
        self.head_seq = record.seq;
        self.head_hash.clone_from(&record.hash);
    }

    pub(crate) fn finish(self) -> VerifyReport {
        VerifyReport {
            records: self.records,
            head_seq: self.head_seq,
            head_hash: self.head_hash,
            problem: self.problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_PREV_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    seq,
                    time_unix_ms: seq * 10,
                    actor: "a".into(),
                    source: "s".into(),
                    action: "x".into(),
                    target: String::new(),
                    ok: true,
                    error: String::new(),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                r.hash = r.compute_hash();
                prev.clone_from(&r.hash);
                r
            })
            .collect()
    }

    fn walk(records: &[AuditRecord]) -> VerifyReport {
        let mut w = ChainWalker::new();
        records.iter().for_each(|r| w.check(r));
        w.finish()
    }

    #[test]
    fn intact_chain_and_empty_log() {
        let r = walk(&chain(5));
        assert_eq!((r.records, r.head_seq, r.problem), (5, 5, None));
        let empty = walk(&[]);
        assert_eq!(empty.head_hash, GENESIS_PREV_HASH);
        assert_eq!(empty.problem, None);
    }

    #[test]
    fn first_record_missing_is_a_gap_after_zero() {
        let c = chain(3);
        let r = walk(&c[1..]);
        assert_eq!(
            r.problem,
            Some(ChainProblem::Gap {
                after_seq: 0,
                next_seq: 2
            })
        );
        assert_eq!(r.head_seq, 3);
    }

    #[test]
    fn messages_are_sentences() {
        let gap = ChainProblem::Gap {
            after_seq: 4,
            next_seq: 7,
        };
        assert_eq!(
            gap.to_string(),
            "Records 5 to 6 are missing: the log jumps from record 4 to record 7"
        );
        let one = ChainProblem::Gap {
            after_seq: 4,
            next_seq: 6,
        };
        assert!(one.to_string().starts_with("Record 5 is missing: "));
        assert!(
            ChainProblem::HashMismatch { seq: 3 }
                .to_string()
                .starts_with("Record 3 ")
        );
    }
}
