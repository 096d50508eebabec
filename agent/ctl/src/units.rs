//! `units list|show|start|stop|restart|enable|disable` (debvisor.units.v1).

use std::time::Duration;

use anyhow::Context as _;
use debvisor_api::units::v1::unit_service_client::UnitServiceClient;
use debvisor_api::units::v1::{
    GetUnitRequest, ListUnitsRequest, ListUnitsResponse, Unit, UnitActionRequest, UnitFileResponse,
};
use debvisor_api::validate::UnitName;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::Channel;

use crate::cli::{ListArgs, UnitsCmd};
use crate::output::{self, Table, bytes, or_dash, render_kv};
use crate::rpc::Ctx;
use crate::timefmt::{format_unix_us, humanize_secs};

fn client(ctx: &Ctx) -> UnitServiceClient<Channel> {
    UnitServiceClient::new(ctx.channel.clone())
}

/// Runs one `units` subcommand.
pub async fn run(ctx: &Ctx, cmd: &UnitsCmd) -> anyhow::Result<()> {
    match cmd {
        UnitsCmd::List(args) => list(ctx, args).await,
        UnitsCmd::Show(u) => show(ctx, &u.name).await,
        UnitsCmd::Start(u) => job(ctx, Job::Start, &u.name).await,
        UnitsCmd::Stop(u) => job(ctx, Job::Stop, &u.name).await,
        UnitsCmd::Restart(u) => job(ctx, Job::Restart, &u.name).await,
        UnitsCmd::Enable(u) => unit_file(ctx, true, &u.name).await,
        UnitsCmd::Disable(u) => unit_file(ctx, false, &u.name).await,
    }
}

async fn list(ctx: &Ctx, args: &ListArgs) -> anyhow::Result<()> {
    let req = ListUnitsRequest {
        patterns: args.patterns.iter().map(|p| p.to_string()).collect(),
        states: args.states.iter().map(|s| s.to_string()).collect(),
        types: args.types.iter().map(|t| t.to_string()).collect(),
        include_inactive: args.all,
    };
    let resp = ctx
        .call(client(ctx).list_units(ctx.req(req)))
        .await
        .context("Cannot list the units")?;
    if ctx.json {
        output::json(&resp)
    } else {
        Ok(output::out(&render_list(&resp))?)
    }
}

/// The units as a table like `systemctl list-units`, with a count line.
pub fn render_list(resp: &ListUnitsResponse) -> String {
    if resp.units.is_empty() {
        return "No units match.\n".to_string();
    }
    let mut t = Table::new(&["UNIT", "LOAD", "ACTIVE", "SUB", "FILE", "DESCRIPTION"]);
    for u in &resp.units {
        t.row(vec![
            u.name.clone(),
            u.load_state.clone(),
            u.active_state.clone(),
            u.sub_state.clone(),
            or_dash(&u.unit_file_state),
            u.description.clone(),
        ]);
    }
    let n = resp.units.len();
    format!("{}\n{n} unit{} listed.\n", t.render(), if n == 1 { "" } else { "s" })
}

async fn show(ctx: &Ctx, name: &UnitName) -> anyhow::Result<()> {
    let unit = ctx
        .call(client(ctx).get_unit(ctx.req(GetUnitRequest { name: name.to_string() })))
        .await
        .with_context(|| format!("Cannot show {name}"))?;
    if ctx.json {
        output::json(&unit)
    } else {
        Ok(output::out(&render_unit(&unit, now_us()))?)
    }
}

fn now_us() -> u64 {
    crate::timefmt::to_unix_us(time::OffsetDateTime::now_utc())
}

/// One unit's details as `KEY  value` lines, `now_us` giving the "ago".
pub fn render_unit(u: &Unit, now_us: u64) -> String {
    let mut rows = vec![
        ("UNIT".to_string(), u.name.clone()),
        ("DESCRIPTION".to_string(), or_dash(&u.description)),
        ("LOADED".to_string(), loaded(u)),
        ("ACTIVE".to_string(), active(u, now_us)),
    ];
    if u.main_pid != 0 {
        rows.push(("MAIN PID".into(), u.main_pid.to_string()));
    }
    if u.restarts != 0 {
        rows.push(("RESTARTS".into(), u.restarts.to_string()));
    }
    if u.memory_bytes != 0 {
        rows.push(("MEMORY".into(), bytes(u.memory_bytes)));
    }
    render_kv(&rows)
}

fn loaded(u: &Unit) -> String {
    let mut s = u.load_state.clone();
    let details: Vec<&str> = [u.fragment_path.as_str(), u.unit_file_state.as_str()]
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect();
    if !details.is_empty() {
        s.push_str(&format!(" ({})", details.join("; ")));
    }
    s
}

fn active(u: &Unit, now_us: u64) -> String {
    let mut s = format!("{} ({})", u.active_state, u.sub_state);
    if u.active_enter_unix_us != 0 && u.active_state == "active" {
        let ago = now_us.saturating_sub(u.active_enter_unix_us) / 1_000_000;
        s.push_str(&format!(
            " since {}; {} ago",
            format_unix_us(u.active_enter_unix_us),
            humanize_secs(ago, 2)
        ));
    }
    s
}

/// A start, stop or restart job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Start,
    Stop,
    Restart,
}

impl Job {
    fn words(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Job::Start => ("start", "Starting", "Started"),
            Job::Stop => ("stop", "Stopping", "Stopped"),
            Job::Restart => ("restart", "Restarting", "Restarted"),
        }
    }
}

/// A spinner on stderr while waiting for the agent; hidden with `--json` or
/// when stderr is not a terminal.
fn spinner(ctx: &Ctx, message: String) -> ProgressBar {
    if ctx.json {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner().with_message(message);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        pb.set_style(style);
    }
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

async fn job(ctx: &Ctx, job: Job, name: &UnitName) -> anyhow::Result<()> {
    let (verb, doing, done) = job.words();
    let req = ctx.req(UnitActionRequest { name: name.to_string() });
    let pb = spinner(ctx, format!("{doing} {name}…"));
    let mut c = client(ctx);
    let resp = match job {
        Job::Start => ctx.call(c.start(req)).await,
        Job::Stop => ctx.call(c.stop(req)).await,
        Job::Restart => ctx.call(c.restart(req)).await,
    };
    pb.finish_and_clear();
    let resp = resp.with_context(|| format!("Cannot {verb} {name}"))?;
    if ctx.json {
        return output::json(&resp);
    }
    let mut text = format!("{done} {name} (job {}: {}).\n", resp.job_id, resp.result);
    if let Some(u) = &resp.unit {
        text.push_str(&state_line(u));
    }
    Ok(output::out(&text)?)
}

/// `NAME: active (running), enabled`.
fn state_line(u: &Unit) -> String {
    let file = if u.unit_file_state.is_empty() {
        String::new()
    } else {
        format!(", {}", u.unit_file_state)
    };
    format!("{}: {} ({}){file}\n", u.name, u.active_state, u.sub_state)
}

async fn unit_file(ctx: &Ctx, enable: bool, name: &UnitName) -> anyhow::Result<()> {
    let req = ctx.req(UnitActionRequest { name: name.to_string() });
    let (verb, doing) = if enable {
        ("enable", "Enabling")
    } else {
        ("disable", "Disabling")
    };
    let pb = spinner(ctx, format!("{doing} {name}…"));
    let mut c = client(ctx);
    let resp = if enable {
        ctx.call(c.enable(req)).await
    } else {
        ctx.call(c.disable(req)).await
    };
    pb.finish_and_clear();
    let resp = resp.with_context(|| format!("Cannot {verb} {name}"))?;
    if ctx.json {
        output::json(&resp)
    } else {
        Ok(output::out(&render_file_changes(&resp, name, enable))?)
    }
}

/// The changes of an enable/disable like systemctl prints them, then the
/// unit's state.
pub fn render_file_changes(resp: &UnitFileResponse, name: &UnitName, enable: bool) -> String {
    let mut out = String::new();
    if resp.changes.is_empty() {
        let state = if enable { "enabled" } else { "disabled" };
        out.push_str(&format!("Nothing to change: {name} is already {state}.\n"));
    }
    for c in &resp.changes {
        out.push_str(&match c.kind.as_str() {
            "symlink" => format!("Created symlink {} → {}.\n", c.path, c.source),
            "unlink" => format!("Removed {}.\n", c.path),
            other => format!(
                "{other} {}{}.\n",
                c.path,
                if c.source.is_empty() {
                    String::new()
                } else {
                    format!(" → {}", c.source)
                }
            ),
        });
    }
    if let Some(u) = &resp.unit {
        out.push_str(&state_line(u));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use debvisor_api::units::v1::UnitFileChange;

    fn ssh() -> Unit {
        Unit {
            name: "ssh.service".into(),
            description: "OpenBSD Secure Shell server".into(),
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            unit_file_state: "enabled".into(),
            fragment_path: "/usr/lib/systemd/system/ssh.service".into(),
            main_pid: 812,
            restarts: 0,
            memory_bytes: 5 << 20,
            active_enter_unix_us: 1_746_100_800_000_000,
        }
    }

    #[test]
    fn list_is_a_systemctl_like_table() {
        let resp = ListUnitsResponse {
            units: vec![
                ssh(),
                Unit {
                    name: "a.timer".into(),
                    load_state: "loaded".into(),
                    active_state: "inactive".into(),
                    sub_state: "dead".into(),
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            render_list(&resp),
            "UNIT         LOAD    ACTIVE    SUB      FILE     DESCRIPTION\n\
             ssh.service  loaded  active    running  enabled  OpenBSD Secure Shell server\n\
             a.timer      loaded  inactive  dead     -\n\
             \n2 units listed.\n"
        );
        assert_eq!(render_list(&ListUnitsResponse::default()), "No units match.\n");
    }

    #[test]
    fn show_gives_state_path_and_figures() {
        let t = render_unit(&ssh(), 1_746_100_800_000_000 + 3_723_000_000);
        assert!(
            t.contains("LOADED       loaded (/usr/lib/systemd/system/ssh.service; enabled)"),
            "{t}"
        );
        assert!(
            t.contains("ACTIVE       active (running) since 2025-05-01T12:00:00+00:00; 1h 2m ago"),
            "{t}"
        );
        assert!(t.contains("MAIN PID     812"), "{t}");
        assert!(t.contains("MEMORY       5.0 MiB"), "{t}");
        assert!(!t.contains("RESTARTS"), "{t}");
    }

    #[test]
    fn enable_prints_changes_then_state() {
        let name = UnitName::try_from("ssh.service").unwrap();
        let resp = UnitFileResponse {
            changes: vec![UnitFileChange {
                kind: "symlink".into(),
                path: "/etc/systemd/system/multi-user.target.wants/ssh.service".into(),
                source: "/usr/lib/systemd/system/ssh.service".into(),
            }],
            unit: Some(ssh()),
        };
        assert_eq!(
            render_file_changes(&resp, &name, true),
            "Created symlink /etc/systemd/system/multi-user.target.wants/ssh.service → \
             /usr/lib/systemd/system/ssh.service.\nssh.service: active (running), enabled\n"
        );
        let none = UnitFileResponse {
            changes: vec![],
            unit: None,
        };
        assert_eq!(
            render_file_changes(&none, &name, false),
            "Nothing to change: ssh.service is already disabled.\n"
        );
    }
}
