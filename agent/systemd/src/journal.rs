//! The [`Journal`] facility: reading and following the systemd journal, and
//! the parser of `journalctl -o json` lines.

use debvisor_api::validate::{JournalPriority, UnitName};
use futures_util::stream::BoxStream;
use serde_json::Value;

/// The host's journal.
///
/// [`JournalCtl`](crate::JournalCtl) runs `journalctl`;
/// [`FakeJournal`](crate::fakes::FakeJournal) keeps entries in memory.
pub trait Journal: Send + Sync {
    /// The entries matching `q`, oldest first; with `q.follow`, new entries
    /// as they are written, until the stream is dropped. An entry that
    /// cannot be read is an error item; the stream goes on after it.
    fn stream(&self, q: LogQuery) -> Result<BoxStream<'static, Result<LogEntry, JournalError>>, JournalError>;
}

/// Which journal entries to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only entries of this unit (`journalctl -u`).
    pub unit: Option<UnitName>,
    /// Only entries of this priority or more urgent (`journalctl -p`).
    pub max_priority: Option<JournalPriority>,
    /// Only entries written at or after this time, in µs since the epoch.
    pub since_unix_us: Option<u64>,
    /// Only the last `n` matching entries. `None` means every matching
    /// entry, or journalctl's default of the last 10 when following without
    /// `since_unix_us`.
    pub lines: Option<u32>,
    /// Keep the stream open and yield new entries as they are written.
    pub follow: bool,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When it was written (`__REALTIME_TIMESTAMP`, µs since the epoch; 0
    /// when missing).
    pub time_unix_us: u64,
    /// The unit it is about: `_SYSTEMD_UNIT`, or for systemd's own messages
    /// about a unit (from `init.scope`) their `UNIT`; empty when neither.
    pub unit: String,
    /// Its syslog priority, 0-7 (6, info, when missing).
    pub priority: u8,
    /// `SYSLOG_IDENTIFIER`, else `_COMM`.
    pub identifier: String,
    /// The writing process (`_PID`).
    pub pid: Option<u32>,
    /// `MESSAGE`, lossily decoded when it is not UTF-8.
    pub message: String,
    /// The entry's cursor (`__CURSOR`), to resume after it.
    pub cursor: String,
    /// `_HOSTNAME`.
    pub hostname: String,
}

/// Reading the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// journalctl could not be started.
    #[error("Starting {program} failed")]
    Spawn {
        /// The program run.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading journalctl's output or waiting for it failed.
    #[error("Reading the output of journalctl failed")]
    Read {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// journalctl exited unsuccessfully.
    #[error("journalctl exited with {status}: {stderr}")]
    Exited {
        /// The exit status.
        status: String,
        /// What it printed on stderr (at most 4 KiB).
        stderr: String,
    },
    /// A line is not a journal entry in JSON.
    #[error("Malformed journal entry{}: {reason}", line_suffix(*.line))]
    Malformed {
        /// The line number in journalctl's output, when read from it.
        line: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// A line is longer than the reader accepts; it was skipped.
    #[error("Journal entry on line {line} is longer than {max} bytes; skipped")]
    LineTooLong {
        /// The line number in journalctl's output.
        line: u64,
        /// The limit in bytes.
        max: usize,
    },
}

fn line_suffix(line: Option<u64>) -> String {
    line.map(|n| format!(" on line {n}")).unwrap_or_default()
}

/// Parses one line of `journalctl -o json`.
///
/// Field values are strings, `null` (a field too large to show without
/// `--all`), arrays of byte values (binary or non-UTF-8 data, decoded
/// lossily) or arrays of such values (a field set more than once; the first
/// is taken). Missing fields get the defaults [`LogEntry`] documents.
pub fn parse_entry(line: &str) -> Result<LogEntry, JournalError> {
    let malformed = |reason: String| JournalError::Malformed { line: None, reason };
    let value: Value = serde_json::from_str(line).map_err(|e| malformed(e.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(malformed("not a JSON object".to_string()));
    };
    let text = |key: &str| fields.get(key).and_then(field_text);
    let number = |key: &str| text(key).and_then(|s| s.trim().parse::<u64>().ok());
    let own_unit = text("_SYSTEMD_UNIT").filter(|u| u != "init.scope");
    Ok(LogEntry {
        time_unix_us: number("__REALTIME_TIMESTAMP").unwrap_or(0),
        unit: own_unit
            .or_else(|| text("UNIT"))
            .or_else(|| text("_SYSTEMD_UNIT"))
            .unwrap_or_default(),
        priority: number("PRIORITY").filter(|p| *p <= 7).map_or(6, |p| p as u8),
        identifier: text("SYSLOG_IDENTIFIER").or_else(|| text("_COMM")).unwrap_or_default(),
        pid: number("_PID").and_then(|p| u32::try_from(p).ok()),
        message: text("MESSAGE").unwrap_or_default(),
        cursor: text("__CURSOR").unwrap_or_default(),
        hostname: text("_HOSTNAME").unwrap_or_default(),
    })
}

/// The text of one field value, as [`parse_entry`] describes.
fn field_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            let bytes: Option<Vec<u8>> = items
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
        }
        Value::Array(items) => items.iter().find_map(|v| match v {
            Value::Array(_) | Value::String(_) => field_text(v),
            _ => None,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const REAL: &str = r#"{"__CURSOR":"s=3f1c;i=1a2;b=9e;m=1f;t=60a;x=77","__REALTIME_TIMESTAMP":"1700000000123456","__MONOTONIC_TIMESTAMP":"5123456","_BOOT_ID":"9e","PRIORITY":"6","_UID":"0","_GID":"0","_HOSTNAME":"node1","SYSLOG_FACILITY":"3","SYSLOG_IDENTIFIER":"debvisor-agent","_PID":"612","_COMM":"debvisor-agent","_EXE":"/usr/bin/debvisor-agent","_SYSTEMD_UNIT":"debvisor-agent.service","MESSAGE":"Listening on /run/debvisor/agent.sock"}"#;

    #[test]
    fn parses_a_real_entry() {
        let e = parse_entry(REAL).unwrap();
        assert_eq!(
            e,
            LogEntry {
                time_unix_us: 1_700_000_000_123_456,
                unit: "debvisor-agent.service".into(),
                priority: 6,
                identifier: "debvisor-agent".into(),
                pid: Some(612),
                message: "Listening on /run/debvisor/agent.sock".into(),
                cursor: "s=3f1c;i=1a2;b=9e;m=1f;t=60a;x=77".into(),
                hostname: "node1".into(),
            }
        );
    }

    #[test]
    fn systemd_messages_are_about_their_unit() {
        let line = r#"{"_PID":"1","_SYSTEMD_UNIT":"init.scope","UNIT":"cron.service","SYSLOG_IDENTIFIER":"systemd","MESSAGE":"Started cron.service - Regular background program processing daemon."}"#;
        let e = parse_entry(line).unwrap();
        assert_eq!((e.unit.as_str(), e.pid), ("cron.service", Some(1)));
        let pid1 = parse_entry(r#"{"_SYSTEMD_UNIT":"init.scope","MESSAGE":"Reloading."}"#).unwrap();
        assert_eq!(pid1.unit, "init.scope");
    }

    #[test]
    fn message_forms() {
        let cases = [
            (r#"{"MESSAGE":null}"#, ""),
            (r#"{"MESSAGE":[104,105]}"#, "hi"),
            (r#"{"MESSAGE":[104,255,105]}"#, "h\u{FFFD}i"),
            (r#"{"MESSAGE":[]}"#, ""),
            (r#"{"MESSAGE":["first","second"]}"#, "first"),
            (r#"{"MESSAGE":[[111,107],"x"]}"#, "ok"),
            (r#"{"MESSAGE":[300]}"#, ""),
            (r#"{"MESSAGE":{"a":1}}"#, ""),
            (r#"{"MESSAGE":"line one\nline two"}"#, "line one\nline two"),
            (r#"{}"#, ""),
        ];
        for (line, want) in cases {
            assert_eq!(parse_entry(line).unwrap().message, want, "{line}");
        }
    }

    #[test]
    fn missing_and_odd_fields_get_defaults() {
        let e = parse_entry(r#"{"PRIORITY":"9","_PID":"99999999999","__REALTIME_TIMESTAMP":"soon","_COMM":"sshd"}"#)
            .unwrap();
        assert_eq!((e.priority, e.pid, e.time_unix_us), (6, None, 0));
        assert_eq!(
            (e.identifier.as_str(), e.unit.as_str(), e.cursor.as_str()),
            ("sshd", "", "")
        );
        assert_eq!(parse_entry(r#"{"PRIORITY":"3"}"#).unwrap().priority, 3);
    }

    #[test]
    fn malformed_lines_are_errors() {
        for line in ["", "not json", "[1,2]", "\"MESSAGE\"", "{\"MESSAGE\":", "null"] {
            let e = parse_entry(line).unwrap_err();
            assert!(matches!(e, JournalError::Malformed { line: None, .. }), "{line}: {e:?}");
            assert!(e.to_string().starts_with("Malformed journal entry: "), "{e}");
        }
        let numbered = JournalError::Malformed {
            line: Some(7),
            reason: "x".into(),
        };
        assert_eq!(numbered.to_string(), "Malformed journal entry on line 7: x");
    }

    /// Random bytes, and random mutations of a real line, never panic.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for _ in 0..3000 {
            let len = rng.random_range(0..200);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = parse_entry(&String::from_utf8_lossy(&bytes));
            let mut mutated = REAL.as_bytes().to_vec();
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..mutated.len());
                let alphabet = b"{}[]\":,0123456789null\\ ";
                mutated[i] = alphabet[rng.random_range(0..alphabet.len())];
            }
            let _ = parse_entry(&String::from_utf8_lossy(&mutated));
        }
    }
}
