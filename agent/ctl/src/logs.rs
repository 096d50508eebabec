//! `logs`: the journal, printed like `journalctl -o short-iso`
//! (debvisor.units.v1 StreamLogs).

use anyhow::Context as _;
use debvisor_api::units::v1::unit_service_client::UnitServiceClient;
use debvisor_api::units::v1::{LogEntry, StreamLogsRequest};

use crate::cli::LogsArgs;
use crate::output::{self, Colour, paint};
use crate::rpc::Ctx;
use crate::timefmt::{format_unix_us, to_unix_us};

/// Streams the journal entries that match, oldest first; with `-f`, keeps
/// printing until Ctrl-C (which ends the command successfully).
pub async fn run(ctx: &Ctx, args: &LogsArgs) -> anyhow::Result<()> {
    let req = StreamLogsRequest {
        unit: args.unit.as_ref().map(|u| u.to_string()).unwrap_or_default(),
        max_priority: args.priority.map(|p| u32::from(p.value())),
        since_unix_us: args.since.map(to_unix_us).unwrap_or(0),
        lines: args.lines.unwrap_or(0),
        follow: args.follow,
    };
    let mut c = UnitServiceClient::new(ctx.channel.clone());
    let call = if args.follow {
        ctx.call(c.stream_logs(req)).await
    } else {
        ctx.call(c.stream_logs(ctx.req(req))).await
    };
    let mut stream = call.context("Cannot read the journal")?;
    let colours = !ctx.json && output::stdout_colours();
    let mut ctrl_c = crate::rpc::interrupts()?;
    loop {
        let entry = if args.follow {
            tokio::select! {
                _ = ctrl_c.recv() => return Ok(()),
                e = ctx.next_follow(&mut stream) => e,
            }
        } else {
            ctx.next(&mut stream).await
        };
        let Some(entry) = entry.context("The journal stream failed")? else {
            return Ok(());
        };
        if ctx.json {
            output::json(&entry)?;
        } else {
            output::out(&format_entry(&entry, colours))?;
        }
    }
}

/// One entry as `TIME HOST IDENT[PID]: MESSAGE\n`; continuation lines of a
/// multi-line message are indented under its first line, as journalctl
/// does. With `colours`, priorities up to err are red and warning yellow.
pub fn format_entry(e: &LogEntry, colours: bool) -> String {
    let ident = match (e.identifier.as_str(), e.unit.as_str()) {
        ("", "") => "unknown",
        ("", unit) => unit,
        (ident, _) => ident,
    };
    let pid = if e.pid == 0 {
        String::new()
    } else {
        format!("[{}]", e.pid)
    };
    let prefix = format!("{} {} {ident}{pid}: ", format_unix_us(e.time_unix_us), e.hostname);
    let indent = " ".repeat(prefix.chars().count());
    let message = e.message.trim_end_matches('\n').replace('\n', &format!("\n{indent}"));
    let message = match (colours, e.priority) {
        (true, 0..=3) => paint(&message, Colour::Red),
        (true, 4) => paint(&message, Colour::Yellow),
        _ => message,
    };
    format!("{prefix}{message}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(priority: u32) -> LogEntry {
        LogEntry {
            time_unix_us: 1_746_100_800_000_000,
            unit: "ssh.service".into(),
            priority,
            identifier: "sshd".into(),
            pid: 812,
            message: "Server listening on :: port 22.".into(),
            cursor: "s=1".into(),
            hostname: "n1".into(),
        }
    }

    #[test]
    fn entries_print_like_short_iso() {
        assert_eq!(
            format_entry(&entry(6), false),
            "2025-05-01T12:00:00+00:00 n1 sshd[812]: Server listening on :: port 22.\n"
        );
    }

    #[test]
    fn missing_pid_and_identifier_fall_back() {
        let e = LogEntry {
            pid: 0,
            identifier: String::new(),
            ..entry(6)
        };
        assert_eq!(
            format_entry(&e, false),
            "2025-05-01T12:00:00+00:00 n1 ssh.service: Server listening on :: port 22.\n"
        );
    }

    #[test]
    fn multi_line_messages_are_indented() {
        let e = LogEntry {
            message: "one\ntwo\n".into(),
            hostname: "h".into(),
            identifier: "x".into(),
            pid: 0,
            ..entry(6)
        };
        let prefix = "2025-05-01T12:00:00+00:00 h x: ";
        assert_eq!(
            format_entry(&e, false),
            format!("{prefix}one\n{}two\n", " ".repeat(prefix.len()))
        );
    }

    #[test]
    fn priorities_get_colours_only_when_asked() {
        for p in 0..=3 {
            assert!(format_entry(&entry(p), true).contains("\x1b[1;31m"), "{p}");
        }
        assert!(format_entry(&entry(4), true).contains("\x1b[1;33m"));
        assert!(!format_entry(&entry(5), true).contains('\x1b'));
        assert!(!format_entry(&entry(3), false).contains('\x1b'));
    }
}
