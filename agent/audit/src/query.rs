//! Filters and paging for reading the log.

use serde::Serialize;
use sqlx::Arguments;
use sqlx::sqlite::SqliteArguments;

use crate::error::AuditError;
use crate::record::AuditRecord;

/// Records per page when [`Query::page_size`] is 0.
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 100;
/// Most records per page; larger [`Query::page_size`] values are cut to it.
pub(crate) const MAX_PAGE_SIZE: u32 = 1000;

const TOKEN_PREFIX: &str = "v1.";

/// Which records to read. Every filter that is set must match; the default
/// matches every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only records by this actor (exact match).
    pub actor: Option<String>,
    /// Only this action; a value ending in `*` matches every action that
    /// starts with what comes before the `*` (`vm.*` matches `vm.start`).
    pub action: Option<String>,
    /// Only records about this target (exact match).
    pub target: Option<String>,
    /// Only successes (`true`) or only failures (`false`).
    pub ok: Option<bool>,
    /// Only records appended at or after this time (ms since the Unix epoch).
    pub since_unix_ms: Option<i64>,
    /// Only records appended before this time (ms since the Unix epoch, exclusive).
    pub until_unix_ms: Option<i64>,
    /// Records per page: 0 means 100, values above 1000 mean 1000.
    /// [`AuditLog::export`](crate::AuditLog::export) ignores it.
    pub page_size: u32,
    /// [`Page::next_page_token`] of the previous page, `None` for the first
    /// page. [`AuditLog::export`](crate::AuditLog::export) ignores it.
    pub page_token: Option<String>,
}

/// One page of [`AuditLog::query`](crate::AuditLog::query) results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    /// The records, newest first.
    pub records: Vec<AuditRecord>,
    /// Pass it as [`Query::page_token`] (with the same filters) for the next,
    /// older page; `None` on the last page.
    pub next_page_token: Option<String>,
    /// How many records match the filters, on all pages together.
    pub total_matching: u64,
}

impl Query {
    pub(crate) fn effective_page_size(&self) -> u32 {
        match self.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        }
    }

    /// The `seq` the page token says to continue below, if any.
    pub(crate) fn before_seq(&self) -> Result<Option<i64>, AuditError> {
        self.page_token.as_deref().map(decode_token).transpose()
    }
}

pub(crate) fn encode_token(last_seq: i64) -> String {
    format!("{TOKEN_PREFIX}{last_seq}")
}

fn decode_token(token: &str) -> Result<i64, AuditError> {
    let bad = || AuditError::BadPageToken {
        token: token.to_owned(),
    };
    let digits = token.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match digits.parse::<i64>() {
        Ok(seq) if seq > 0 => Ok(seq),
        _ => Err(bad()),
    }
}

/// A bound value of a [`Filter`].
#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    Int(i64),
    Bool(bool),
}

/// A `WHERE` clause made only of fixed SQL fragments, with its bound values.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    sql: String,
    args: Vec<Arg>,
}

impl Filter {
    /// The clause for the filters of `q` (not its page token).
    pub(crate) fn new(q: &Query) -> Self {
        let mut f = Filter {
            sql: String::from(" WHERE 1 = 1"),
            args: Vec::new(),
        };
        if let Some(actor) = &q.actor {
            f.and("actor = ?", [Arg::Text(actor.clone())]);
        }
        match q.action.as_deref().map(|a| (a.strip_suffix('*'), a)) {
            None => {}
            Some((Some(prefix), _)) => {
                let p = || Arg::Text(prefix.to_owned());
                // `>=` lets SQLite use the index; substr() makes it exact
                // (LIKE would be case-insensitive and need escaping).
                f.and("action >= ? AND substr(action, 1, length(?)) = ?", [p(), p(), p()]);
            }
            Some((None, exact)) => f.and("action = ?", [Arg::Text(exact.to_owned())]),
        }
        if let Some(target) = &q.target {
            f.and("target = ?", [Arg::Text(target.clone())]);
        }
        if let Some(ok) = q.ok {
            f.and("ok = ?", [Arg::Bool(ok)]);
        }
        if let Some(since) = q.since_unix_ms {
            f.and("time_unix_ms >= ?", [Arg::Int(since)]);
        }
        if let Some(until) = q.until_unix_ms {
            f.and("time_unix_ms < ?", [Arg::Int(until)]);
        }
        f
    }

    /// Adds `AND clause`, whose placeholders take `args` in order.
    fn and<const N: usize>(&mut self, clause: &'static str, args: [Arg; N]) {
        self.sql.push_str(" AND ");
        self.sql.push_str(clause);
        self.args.extend(args);
    }

    /// Adds `AND seq < before`.
    pub(crate) fn before(&mut self, before: i64) {
        self.and("seq < ?", [Arg::Int(before)]);
    }

    pub(crate) fn sql(&self) -> &str {
        &self.sql
    }

    /// The bound values, followed by `extra` integers (e.g. a `LIMIT`).
    pub(crate) fn arguments(&self, extra: &[i64]) -> Result<SqliteArguments, sqlx::Error> {
        let mut out = SqliteArguments::default();
        let encode = |e| sqlx::Error::Encode(e);
        for arg in &self.args {
            match arg {
                Arg::Text(s) => out.add(s.clone()),
                Arg::Int(i) => out.add(*i),
                Arg::Bool(b) => out.add(*b),
            }
            .map_err(encode)?;
        }
        for i in extra {
            out.add(*i).map_err(encode)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let q = Query {
            page_token: Some(encode_token(42)),
            ..Query::default()
        };
        assert_eq!(q.before_seq().unwrap(), Some(42));
        for bad in [
            "",
            "42",
            "v1.",
            "v1.-3",
            "v1.+3",
            "v1.0",
            "v1.4x",
            "v1.99999999999999999999",
        ] {
            let q = Query {
                page_token: Some(bad.into()),
                ..Query::default()
            };
            match q.before_seq() {
                Err(AuditError::BadPageToken { token }) => assert_eq!(token, bad),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn page_size_defaults_and_caps() {
        let size = |page_size| {
            Query {
                page_size,
                ..Query::default()
            }
            .effective_page_size()
        };
        assert_eq!(size(0), 100);
        assert_eq!(size(7), 7);
        assert_eq!(size(5000), 1000);
    }

    #[test]
    fn filter_uses_only_placeholders() {
        let q = Query {
            actor: Some("x' OR 1=1 --".into()),
            action: Some("vm.*".into()),
            ..Query::default()
        };
        let f = Filter::new(&q);
        assert!(!f.sql().contains("OR 1=1"));
        assert_eq!(f.sql().matches('?').count(), 4);
        assert_eq!(f.args.len(), 4);
    }
}
