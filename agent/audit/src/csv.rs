//! CSV export.

use time::OffsetDateTime;
use time::macros::format_description;

use crate::record::AuditRecord;

const HEADER: [&str; 9] = [
    "seq", "time", "actor", "source", "action", "target", "result", "error", "hash",
];

/// Renders `records` as RFC 4180 CSV: a header line
/// `seq,time,actor,source,action,target,result,error,hash`, then one line per
/// record, each ending in CRLF.
///
/// `time` is RFC 3339 UTC with milliseconds, `result` is `ok` or `error`.
/// Fields containing a comma, a double quote, CR or LF are quoted (quotes
/// doubled). A field that a spreadsheet would run as a formula (starting with
/// `=`, `+`, `-`, `@`, TAB or CR) gets a leading `'`.
pub fn to_csv(records: &[AuditRecord]) -> String {
    let mut out = String::new();
    push_line(&mut out, HEADER.iter().map(|h| (*h).to_owned()));
    for r in records {
        push_line(
            &mut out,
            [
                r.seq.to_string(),
                rfc3339_ms(r.time_unix_ms),
                r.actor.clone(),
                r.source.clone(),
                r.action.clone(),
                r.target.clone(),
                if r.ok { "ok" } else { "error" }.to_owned(),
                r.error.clone(),
                r.hash.clone(),
            ],
        );
    }
    out
}

fn push_line(out: &mut String, fields: impl IntoIterator<Item = String>) {
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_field(out, &field);
    }
    out.push_str("\r\n");
}

fn push_field(out: &mut String, field: &str) {
    let neutralise = field.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = field.contains([',', '"', '\r', '\n']);
    if quote {
        out.push('"');
    }
    if neutralise {
        out.push('\'');
    }
    if quote {
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// `2024-05-01T12:00:00.123Z`; the raw number if it is out of range.
fn rfc3339_ms(unix_ms: i64) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| unix_ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(actor: &str, error: &str) -> AuditRecord {
        AuditRecord {
            seq: 7,
            time_unix_ms: 1_714_564_800_123,
            actor: actor.into(),
            source: "webui".into(),
            action: "vm.start".into(),
            target: "vm/a".into(),
            ok: error.is_empty(),
            error: error.into(),
            prev_hash: String::new(),
            hash: "ab".into(),
        }
    }

    #[test]
    fn header_and_plain_row() {
        let csv = to_csv(&[record("admin", "")]);
        assert_eq!(
            csv,
            "seq,time,actor,source,action,target,result,error,hash\r\n\
             7,2024-05-01T12:00:00.123Z,admin,webui,vm.start,vm/a,ok,,ab\r\n"
        );
    }

    #[test]
    fn quotes_fields_with_separators() {
        let csv = to_csv(&[record("a,b", "said \"no\"\r\nthen left")]);
        let row = csv.split_once("\r\n").unwrap().1;
        assert_eq!(
            row,
            "7,2024-05-01T12:00:00.123Z,\"a,b\",webui,vm.start,vm/a,error,\
             \"said \"\"no\"\"\r\nthen left\",ab\r\n"
        );
    }

    #[test]
    fn neutralises_formulas() {
        for (field, want) in [
            ("=1+1", "'=1+1"),
            ("+cmd", "'+cmd"),
            ("-2", "'-2"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("=HYPERLINK(\"x\",\"y\")", "\"'=HYPERLINK(\"\"x\"\",\"\"y\"\")\""),
            ("a=b", "a=b"),
        ] {
            let mut out = String::new();
            push_field(&mut out, field);
            assert_eq!(out, want, "{field:?}");
        }
    }

    #[test]
    fn empty_input_gives_the_header_only() {
        assert_eq!(to_csv(&[]), "seq,time,actor,source,action,target,result,error,hash\r\n");
    }
}
