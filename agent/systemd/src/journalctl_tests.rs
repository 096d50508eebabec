use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use debvisor_api::validate::{JournalPriority, UnitName};

use super::*;

/// Writes an executable `/bin/sh` script standing in for journalctl.
fn fake_journalctl(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("journalctl");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn collect(j: &JournalCtl, q: LogQuery) -> Vec<Result<LogEntry, JournalError>> {
    j.stream(q).unwrap().collect().await
}

#[test]
fn argv_for_a_query() {
    assert_eq!(
        JournalCtl::args(&LogQuery::default()),
        ["--output=json", "--no-pager", "--all", "--quiet"]
    );
    let q = LogQuery {
        unit: Some(UnitName::try_from("systemd-fsck@dev-disk-by\\x2duuid-1.service").unwrap()),
        max_priority: Some(JournalPriority::try_from("warning").unwrap()),
        since_unix_us: Some(1_700_000_000_000_042),
        lines: Some(50),
        follow: true,
    };
    assert_eq!(
        JournalCtl::args(&q)[4..],
        [
            "--unit=systemd-fsck@dev-disk-by\\x2duuid-1.service",
            "--priority=4",
            "--since=@1700000000.000042",
            "--lines=50",
            "--follow",
        ]
    );
}

#[tokio::test]
async fn lines_are_capped_and_split() {
    let mut input: &[u8] = b"short\n0123456789abc\n\nlast-without-newline";
    let mut buf = Vec::new();
    let mut got = Vec::new();
    while let Some(too_long) = read_line_capped(&mut input, 10, &mut buf).await.unwrap() {
        got.push((String::from_utf8(buf.clone()).unwrap(), too_long));
    }
    let want = [("short", false), ("", true), ("", false), ("", true)];
    assert_eq!(got, want.map(|(s, t)| (s.to_string(), t)));
}

#[tokio::test]
async fn entries_errors_and_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let args_file = dir.path().join("args");
    let script = format!(
        r#"for a in "$@"; do printf '%s\n' "$a"; done > '{}'
printf '%s\n' '{{"MESSAGE":"one","PRIORITY":"3"}}' '' 'garbage' '{{"MESSAGE":[116,119,111]}}'
echo 'Failed to open journal: permission denied' >&2
exit 1"#,
        args_file.display()
    );
    let j = JournalCtl::with_program(fake_journalctl(dir.path(), &script));
    let q = LogQuery {
        unit: Some(UnitName::try_from("cron.service").unwrap()),
        ..LogQuery::default()
    };
    let items = collect(&j, q).await;
    assert_eq!(items.len(), 4, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap().message, "one");
    assert_eq!(items[0].as_ref().unwrap().priority, 3);
    assert!(
        matches!(&items[1], Err(JournalError::Malformed { line: Some(3), .. })),
        "{:?}",
        items[1]
    );
    assert_eq!(items[2].as_ref().unwrap().message, "two");
    let exited = items[3].as_ref().unwrap_err().to_string();
    assert_eq!(
        exited,
        "journalctl exited with exit status: 1: Failed to open journal: permission denied"
    );
    let argv = std::fs::read_to_string(&args_file).unwrap();
    assert_eq!(argv.lines().last(), Some("--unit=cron.service"));
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error() {
    let j = JournalCtl::with_program("/nonexistent/journalctl");
    let e = j.stream(LogQuery::default()).err().expect("spawn fails");
    assert_eq!(e.to_string(), "Starting /nonexistent/journalctl failed");
}

/// Dropping a following stream kills journalctl.
#[tokio::test]
async fn dropping_the_stream_kills_journalctl() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!(
        "echo $$ > '{}'\nprintf '%s\\n' '{{\"MESSAGE\":\"hello\"}}'\nexec sleep 600",
        pid_file.display()
    );
    let j = JournalCtl::with_program(fake_journalctl(dir.path(), &script));
    let mut stream = j
        .stream(LogQuery {
            follow: true,
            ..LogQuery::default()
        })
        .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().message, "hello");
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    drop(stream);
    let stat = format!("/proc/{pid}/stat");
    for _ in 0..100 {
        match std::fs::read_to_string(&stat) {
            Err(_) => return,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z')) =>
            {
                return;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("journalctl (pid {pid}) still runs after the stream was dropped");
}

/// The host's journalctl, when installed, runs with these arguments.
#[tokio::test]
async fn host_journalctl_accepts_the_arguments() {
    if std::process::Command::new("journalctl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: journalctl is not installed on this host");
        return;
    }
    let q = LogQuery {
        unit: Some(UnitName::try_from("debvisor-no-such-unit-4711.service").unwrap()),
        max_priority: Some(JournalPriority::try_from("debug").unwrap()),
        since_unix_us: Some(1_000_000),
        lines: Some(5),
        follow: false,
    };
    let items = collect(&JournalCtl::new(), q).await;
    assert!(items.iter().all(|i| i.is_ok()), "{items:?}");
}
