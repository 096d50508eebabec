//! `health [--history] [--kind K] [--watch]` (debvisor.health.v1): the
//! node's state, boot gate, machine config, checks and recent alerts, as
//! debvisor-init reports them through the agent.

use std::io::IsTerminal;

use anyhow::Context as _;
use debvisor_api::health::v1::node_health_service_client::NodeHealthServiceClient;
use debvisor_api::health::v1::{
    Alert, BootGate, Check, CheckResult, CheckStatus, GateState, ListRequest, NodeHealth, NodeState, Severity,
    WatchRequest,
};
use tonic::Code;

use crate::cli::HealthArgs;
use crate::output::{self, Table, or_dash, render_kv};
use crate::rpc::{Ctx, RpcError};
use crate::timefmt::{format_unix_ms, humanize_secs};

/// Alerts shown in the table; `--json` has them all.
const ALERTS_SHOWN: usize = 10;

/// The exit code of a health answer: 1 when the node is DEGRADED or a
/// required check fails, else 0.
pub fn exit_code(h: &NodeHealth) -> u8 {
    let required_fails = h
        .checks
        .iter()
        .any(|c| c.required && c.last.as_ref().is_some_and(|r| r.status() == CheckStatus::Fail));
    u8::from(h.state() == NodeState::Degraded || required_fails)
}

/// Runs `health`; returns the exit code.
pub async fn run(ctx: &Ctx, args: &HealthArgs) -> anyhow::Result<u8> {
    if args.watch {
        return watch(ctx, args).await;
    }
    let kind = args.kind.map(|k| k.to_string()).unwrap_or_default();
    let req = ListRequest {
        include_history: args.history,
        kind,
    };
    let h = ctx
        .call(client(ctx).list(ctx.req(req)))
        .await
        .map_err(init_down)
        .context("Cannot get the node's health")?;
    if ctx.json {
        output::json(&h)?;
    } else {
        output::out(&render(&h, now_ms()))?;
    }
    Ok(exit_code(&h))
}

fn client(ctx: &Ctx) -> NodeHealthServiceClient<tonic::transport::Channel> {
    NodeHealthServiceClient::new(ctx.channel.clone())
}

fn now_ms() -> i64 {
    crate::timefmt::to_unix_ms(time::OffsetDateTime::now_utc())
}

/// The agent's UNAVAILABLE when debvisor-init does not answer says itself
/// what to check; the generic advice about an unavailable agent would send
/// the reader to the wrong daemon.
fn init_down(e: RpcError) -> anyhow::Error {
    use std::error::Error;
    let s = &e.status;
    if s.code() == Code::Unavailable && s.source().is_none() && s.message().starts_with("debvisor-init ") {
        anyhow::Error::msg(s.message().to_string())
    } else {
        e.into()
    }
}

/// Streams the node's health and prints every new state: redrawn on a
/// terminal, one block (or JSON line) per message otherwise, until Ctrl-C or
/// the end of the stream. The exit code is that of the last state.
async fn watch(ctx: &Ctx, args: &HealthArgs) -> anyhow::Result<u8> {
    let req = WatchRequest {
        include_history: args.history,
    };
    let mut stream = ctx
        .call(client(ctx).watch(req))
        .await
        .map_err(init_down)
        .context("Cannot watch the node's health")?;
    let tty = std::io::stdout().is_terminal();
    let mut ctrl_c = crate::rpc::interrupts()?;
    let mut code = 0;
    loop {
        let next = tokio::select! {
            _ = ctrl_c.recv() => return Ok(code),
            h = ctx.next_follow(&mut stream) => h.map_err(init_down).context("The health stream failed")?,
        };
        let Some(mut h) = next else {
            if !ctx.json {
                eprintln!("The agent ended the health stream.");
            }
            return Ok(code);
        };
        // Watch has no kind filter: apply it here.
        if let Some(kind) = args.kind {
            let kind = kind.to_string();
            h.checks.retain(|c| c.kind == kind);
        }
        code = exit_code(&h);
        if ctx.json {
            output::json(&h)?;
        } else if tty {
            output::out(&format!(
                "\x1b[H\x1b[2J{}\nUpdated {}; Ctrl-C to stop.\n",
                render(&h, now_ms()),
                format_unix_ms(now_ms())
            ))?;
        } else {
            output::out(&format!("{}\n", render(&h, now_ms())))?;
        }
    }
}

/// The whole report, `now_ms` giving the "ago" and "in" of times.
pub fn render(h: &NodeHealth, now_ms: i64) -> String {
    let mut out = render_summary(h, now_ms);
    out.push('\n');
    out.push_str(&render_checks(&h.checks, now_ms));
    if h.checks.iter().any(|c| !c.history.is_empty()) {
        out.push_str(&render_history(&h.checks));
    }
    out.push('\n');
    out.push_str(&render_alerts(&h.alerts));
    out
}

/// Node state, boot gate and machine config as `KEY  value` lines.
pub fn render_summary(h: &NodeHealth, now_ms: i64) -> String {
    let state = match h.state() {
        NodeState::Unspecified => "UNKNOWN".to_string(),
        NodeState::Starting => "STARTING (first round of checks)".to_string(),
        NodeState::Healthy => "HEALTHY".to_string(),
        NodeState::Degraded if h.degraded_reason.is_empty() => "DEGRADED".to_string(),
        NodeState::Degraded => format!("DEGRADED: {}", h.degraded_reason),
    };
    let mut rows = vec![("NODE".to_string(), state)];
    match &h.gate {
        Some(g) => {
            rows.push(("BOOT GATE".into(), gate_line(g, now_ms)));
            if !g.reason.is_empty() {
                rows.push(("GATE REASON".into(), g.reason.clone()));
            }
        }
        None => rows.push(("BOOT GATE".into(), "-".into())),
    }
    let config = match h.config_digest.as_str() {
        "" => "safe defaults (no machine config in effect)".to_string(),
        d => format!("digest {d}"),
    };
    rows.push(("CONFIG".into(), config));
    if !h.config_error.is_empty() {
        rows.push(("CONFIG ERROR".into(), h.config_error.clone()));
    }
    render_kv(&rows)
}

/// `GOOD, slot A, decided 2025-05-01T12:00:40+00:00 (3m ago)` or
/// `PENDING, slot B, deadline ... (in 4m 20s)`.
fn gate_line(g: &BootGate, now_ms: i64) -> String {
    let state = match g.state() {
        GateState::Unspecified => "UNKNOWN",
        GateState::Pending => "PENDING",
        GateState::Good => "GOOD",
        GateState::Bad => "BAD",
    };
    let mut line = state.to_string();
    if !g.slot.is_empty() {
        line.push_str(&format!(", slot {}", g.slot));
    }
    if g.decided_unix_ms != 0 {
        line.push_str(&format!(
            ", decided {} ({})",
            format_unix_ms(g.decided_unix_ms),
            relative(g.decided_unix_ms, now_ms)
        ));
    } else if g.deadline_unix_ms != 0 {
        line.push_str(&format!(
            ", deadline {} ({})",
            format_unix_ms(g.deadline_unix_ms),
            relative(g.deadline_unix_ms, now_ms)
        ));
    }
    line
}

/// `12s ago`, `in 4m 20s`, `now`.
fn relative(t_ms: i64, now_ms: i64) -> String {
    let secs = (now_ms - t_ms) / 1000;
    match secs {
        0 => "now".to_string(),
        s if s > 0 => format!("{} ago", humanize_secs(s.unsigned_abs(), 2)),
        s => format!("in {}", humanize_secs(s.unsigned_abs(), 2)),
    }
}

fn status_word(r: &CheckResult) -> &'static str {
    match r.status() {
        CheckStatus::Unspecified => "UNKNOWN",
        CheckStatus::Pending => "PENDING",
        CheckStatus::Pass => "PASS",
        CheckStatus::Warn => "WARN",
        CheckStatus::Fail => "FAIL",
    }
}

/// The checks as a table, with a count line.
pub fn render_checks(checks: &[Check], now_ms: i64) -> String {
    if checks.is_empty() {
        return "No checks match.\n".to_string();
    }
    let mut t = Table::new(&["CHECK", "KIND", "REQ", "STATUS", "FAILS", "LAST RUN", "MESSAGE"]);
    for c in checks {
        let (status, last_run, message) = match &c.last {
            Some(r) if r.status() != CheckStatus::Pending && r.started_unix_ms != 0 => {
                (status_word(r), relative(r.started_unix_ms, now_ms), r.message.clone())
            }
            Some(r) => (status_word(r), "-".to_string(), r.message.clone()),
            None => ("PENDING", "-".to_string(), String::new()),
        };
        t.row(vec![
            c.name.clone(),
            c.kind.clone(),
            if c.required { "yes" } else { "no" }.to_string(),
            status.to_string(),
            c.consecutive_failures.to_string(),
            last_run,
            message,
        ]);
    }
    let n = checks.len();
    let failing = checks
        .iter()
        .filter(|c| c.last.as_ref().is_some_and(|r| r.status() == CheckStatus::Fail))
        .count();
    format!(
        "{}\n{n} check{}, {failing} failing.\n",
        t.render(),
        if n == 1 { "" } else { "s" }
    )
}

/// Each check's earlier results (most recent first), one table per check.
pub fn render_history(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks.iter().filter(|c| !c.history.is_empty()) {
        out.push_str(&format!("\n{}, earlier results:\n", c.name));
        let mut t = Table::new(&["STARTED", "STATUS", "TOOK", "MESSAGE"]);
        for r in &c.history {
            t.row(vec![
                format_unix_ms(r.started_unix_ms),
                status_word(r).to_string(),
                format!("{} ms", r.duration_ms),
                r.message.clone(),
            ]);
        }
        for line in t.render().lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// The most recent alerts, newest first.
pub fn render_alerts(alerts: &[Alert]) -> String {
    if alerts.is_empty() {
        return "No recent alerts.\n".to_string();
    }
    let mut t = Table::new(&["TIME", "SEVERITY", "CHECK", "ACTION", "MESSAGE"]);
    for a in alerts.iter().take(ALERTS_SHOWN) {
        let severity = match a.severity() {
            Severity::Unspecified => "UNKNOWN",
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        };
        t.row(vec![
            format_unix_ms(a.time_unix_ms),
            severity.to_string(),
            or_dash(&a.check),
            a.action.clone(),
            a.message.clone(),
        ]);
    }
    let mut out = format!("Recent alerts:\n{}", t.render());
    if alerts.len() > ALERTS_SHOWN {
        out.push_str(&format!(
            "({} older alerts not shown; --json has them all.)\n",
            alerts.len() - ALERTS_SHOWN
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_746_100_800_000; // 2025-05-01T12:00:00Z

    fn result(status: CheckStatus, message: &str, started: i64) -> CheckResult {
        CheckResult {
            status: status as i32,
            message: message.into(),
            started_unix_ms: started,
            duration_ms: 4,
        }
    }

    fn check(name: &str, kind: &str, required: bool, status: CheckStatus, fails: u32) -> Check {
        Check {
            name: name.into(),
            kind: kind.into(),
            required,
            interval_ms: 10_000,
            timeout_ms: 5_000,
            last: Some(result(status, "msg", T0 - 12_000)),
            consecutive_failures: fails,
            unit: String::new(),
            history: vec![],
        }
    }

    fn health(state: NodeState, checks: Vec<Check>) -> NodeHealth {
        NodeHealth {
            state: state as i32,
            degraded_reason: String::new(),
            gate: Some(BootGate {
                state: GateState::Pending as i32,
                deadline_unix_ms: T0 + 260_000,
                decided_unix_ms: 0,
                reason: "waiting for network/gateway".into(),
                slot: "B".into(),
            }),
            checks,
            alerts: vec![],
            config_error: String::new(),
            config_digest: "0123abcd".into(),
        }
    }

    #[test]
    fn exit_code_is_1_when_degraded_or_a_required_check_fails() {
        let pass = check("dns", "dns", true, CheckStatus::Pass, 0);
        let optional_fail = check("dns", "dns", false, CheckStatus::Fail, 2);
        let required_fail = check("network/gateway", "network", true, CheckStatus::Fail, 1);
        assert_eq!(exit_code(&health(NodeState::Healthy, vec![pass.clone()])), 0);
        assert_eq!(exit_code(&health(NodeState::Healthy, vec![optional_fail])), 0);
        assert_eq!(exit_code(&health(NodeState::Starting, vec![required_fail])), 1);
        assert_eq!(exit_code(&health(NodeState::Degraded, vec![pass])), 1);
    }

    #[test]
    fn summary_names_state_gate_and_config() {
        let mut h = health(NodeState::Degraded, vec![]);
        h.degraded_reason = "network/gateway fails; remediation gave up".into();
        h.config_error = "network.vlans[0].id = 5000: must be 1-4094".into();
        assert_eq!(
            render_summary(&h, T0),
            "NODE          DEGRADED: network/gateway fails; remediation gave up\n\
             BOOT GATE     PENDING, slot B, deadline 2025-05-01T12:04:20+00:00 (in 4m 20s)\n\
             GATE REASON   waiting for network/gateway\n\
             CONFIG        digest 0123abcd\n\
             CONFIG ERROR  network.vlans[0].id = 5000: must be 1-4094\n"
        );
        h.gate = Some(BootGate {
            state: GateState::Good as i32,
            deadline_unix_ms: T0 + 260_000,
            decided_unix_ms: T0 - 180_000,
            reason: String::new(),
            slot: "A".into(),
        });
        h.config_digest.clear();
        let s = render_summary(&h, T0);
        assert!(
            s.contains("BOOT GATE     GOOD, slot A, decided 2025-05-01T11:57:00+00:00 (3m ago)\n"),
            "{s}"
        );
        assert!(s.contains("CONFIG        safe defaults"), "{s}");
    }

    #[test]
    fn checks_table_and_history() {
        let mut gw = check("network/gateway", "network", true, CheckStatus::Fail, 3);
        gw.history = vec![result(CheckStatus::Pass, "answered in 1 ms", T0 - 22_000)];
        let pending = Check {
            last: Some(result(CheckStatus::Pending, "", 0)),
            ..check("certificate/server", "certificate", false, CheckStatus::Pending, 0)
        };
        let checks = vec![gw, pending];
        assert_eq!(
            render_checks(&checks, T0),
            "CHECK               KIND         REQ  STATUS   FAILS  LAST RUN  MESSAGE\n\
             network/gateway     network      yes  FAIL     3      12s ago   msg\n\
             certificate/server  certificate  no   PENDING  0      -\n\
             \n2 checks, 1 failing.\n"
        );
        assert_eq!(
            render_history(&checks),
            "\nnetwork/gateway, earlier results:\n  \
             STARTED                    STATUS  TOOK  MESSAGE\n  \
             2025-05-01T11:59:38+00:00  PASS    4 ms  answered in 1 ms\n"
        );
    }

    #[test]
    fn alerts_newest_first_with_a_limit() {
        assert_eq!(render_alerts(&[]), "No recent alerts.\n");
        let alert = |i: i64| Alert {
            time_unix_ms: T0 - i * 60_000,
            severity: Severity::Info as i32,
            check: "service/debvisor-webui".into(),
            action: "restarted".into(),
            message: format!("restart {i}"),
        };
        let alerts: Vec<Alert> = (0..12).map(alert).collect();
        let out = render_alerts(&alerts);
        assert!(out.starts_with("Recent alerts:\nTIME  "), "{out}");
        assert!(
            out.contains("2025-05-01T12:00:00+00:00  INFO      service/debvisor-webui  restarted  restart 0\n"),
            "{out}"
        );
        assert!(!out.contains("restart 10"), "{out}");
        assert!(
            out.ends_with("(2 older alerts not shown; --json has them all.)\n"),
            "{out}"
        );
    }
}
