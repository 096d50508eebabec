//! Runs the built `debvisorctl` with `--socket` against small fakes of the
//! three v1 services, served in-process by tonic on a Unix socket in a
//! temporary directory.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::{Agent, Fake, code, command, run_with_socket, stderr, stdout};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread")]
async fn status_json_is_the_wire_message() {
    let agent = Agent::start(Fake::default()).await;
    let o = agent.run(&["status", "--json"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["hostname"], "fake-node");
    assert_eq!(v["image_version"], "1.2.3");
    assert_eq!(v["memory"]["used_bytes"], 2u64 << 30);
    assert_eq!(v["simulated"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_table_has_the_simulation_banner() {
    let agent = Agent::start(Fake::default()).await;
    let o = agent.run(&["status"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("*** SIMULATED NODE"), "{out}");
    assert!(out.contains("HOSTNAME     fake-node"), "{out}");
    assert!(out.contains("UPTIME       1h 2m 5s"), "{out}");
    assert!(out.contains("MEMORY       2.0 GiB used of 8.0 GiB (25%)"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_watch_merges_deltas_until_the_stream_ends() {
    let agent = Agent::start(Fake::default()).await;
    let o = agent.run(&["status", "--watch", "--json"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["uptime_seconds"], 3725.0);
    assert_eq!(lines[1]["uptime_seconds"], 3726.0);
    // Kept from the full status.
    assert_eq!(lines[1]["hostname"], "fake-node");
}

#[tokio::test(flavor = "multi_thread")]
async fn units_list_is_a_table() {
    let agent = Agent::start(Fake::default()).await;
    let o = agent.run(&["units", "list", "--all"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "UNIT                    LOAD    ACTIVE    SUB      FILE     DESCRIPTION"
    );
    assert!(
        lines[1].starts_with("debvisor-agent.service  loaded  active    running  enabled"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("zz-idle.service         loaded  inactive  dead"),
        "{out}"
    );
    assert!(out.ends_with("3 units listed.\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn units_restart_prints_the_job_and_the_state_after() {
    let agent = Agent::start(Fake::default()).await;
    let o = agent.run(&["units", "restart", "x.service"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Restarted x.service (job 7: done).\nx.service: active (running), enabled\n"
    );
    assert_eq!(agent.fake.calls.lock().unwrap().actions, ["restart x.service"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_unit_name_is_refused_before_any_call() {
    let agent = Agent::start(Fake::default()).await;
    let o = agent.run(&["units", "restart", "x"]).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("\"x\"") && err.contains("unit type suffix"), "{err}");
    assert!(err.contains("Did you mean x.service?"), "{err}");
    assert!(agent.fake.calls.lock().unwrap().actions.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_unit_gets_the_server_message_and_a_next_step() {
    let agent = Agent::start(Fake::default()).await;
    let o = agent.run(&["units", "show", "nope.service"]).await;
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.starts_with("debvisorctl: Cannot show nope.service\n"), "{err}");
    assert!(err.contains("not found: unit nope.service is not loaded"), "{err}");
    assert!(err.contains("next: Check the name"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_print_the_last_lines_like_journalctl() {
    let agent = Agent::start(Fake::default()).await;
    let o = agent.run(&["logs", "-n", "5", "-u", "ssh.service"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(lines[0], "2025-05-01T12:00:00+00:00 fake-node sshd[812]: message 0");
    assert_eq!(lines[4], "2025-05-01T12:00:04+00:00 fake-node sshd[812]: message 4");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_ends_logs_follow_cleanly() {
    let agent = Agent::start(Fake::default()).await;
    let socket = agent.dir.path().join("agent.sock").display().to_string();
    let args = ["--socket", &socket, "logs", "-f", "-n", "2"].map(String::from);
    let mut child = command(&args, &[]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for i in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .unwrap();
        assert!(line.ends_with(&format!("message {i}")), "{line}");
    }
    assert_eq!(common::interrupt(&mut child).await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_exits_0_when_intact() {
    let agent = Agent::start(Fake::default()).await;
    let o = agent.run(&["audit", "verify"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("Audit chain intact: 12 records, head #12 {}\n", "ab".repeat(32))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_exits_3_when_broken() {
    let agent = Agent::start(Fake {
        broken_at: Some(4),
        ..Fake::default()
    })
    .await;
    let o = agent.run(&["audit", "verify"]).await;
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "AUDIT CHAIN BROKEN at record #4: record #4: hash does not match its fields\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_query_and_export() {
    let agent = Agent::start(Fake::default()).await;
    let o = agent.run(&["audit", "query", "--since", "1d", "--result", "ok"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("SEQ  TIME"), "{out}");
    assert!(out.contains("units.Restart  ssh.service  ok"), "{out}");

    let file = agent.dir.path().join("audit.jsonl");
    let o = agent.run(&["audit", "export", "-o", file.to_str().unwrap()]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{\"seq\":1}\n{\"seq\":2}\n");
    assert!(!agent.dir.path().join("audit.jsonl.part").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn reboot_needs_yes_without_a_terminal() {
    let agent = Agent::start(Fake::default()).await;
    let o = agent.run(&["reboot"]).await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("Pass --yes"), "{}", stderr(&o));
    assert!(agent.fake.calls.lock().unwrap().power.is_empty());

    let o = agent.run(&["reboot", "--yes", "--reason", "kernel update"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("reboot.target"), "{}", stdout(&o));
    assert_eq!(agent.fake.calls.lock().unwrap().power, ["reboot:kernel update"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_socket_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_with_socket(&dir.path().join("none.sock"), &["status"]).await;
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("Cannot connect to the agent at socket"), "{err}");
    assert!(err.contains("no agent socket there"), "{err}");
    assert!(err.contains("next: Is the agent running?"), "{err}");
}
