//! `status`, `status --watch`, `reboot` and `shutdown` (debvisor.node.v1).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context as _;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use debvisor_api::node::v1::{GetStatusRequest, GetStatusResponse, PowerRequest, StatusDelta, WatchStatusRequest};
use tonic::transport::Channel;

use crate::UsageError;
use crate::cli::{PowerArgs, StatusArgs};
use crate::output::{self, bytes, percent, render_kv};
use crate::rpc::Ctx;
use crate::timefmt::{format_unix_ms, humanize_secs};

fn client(ctx: &Ctx) -> NodeServiceClient<Channel> {
    NodeServiceClient::new(ctx.channel.clone())
}

/// `status [--watch]`.
pub async fn status(ctx: &Ctx, args: &StatusArgs) -> anyhow::Result<()> {
    if args.watch {
        return watch(ctx, args.interval).await;
    }
    let s = ctx
        .call(client(ctx).get_status(ctx.req(GetStatusRequest {})))
        .await
        .context("Cannot get the node's status")?;
    if ctx.json {
        output::json(&s)
    } else {
        Ok(output::out(&render_status(&s))?)
    }
}

/// Streams the status, merging each delta into the last full status and
/// redrawing it (clearing the screen on a terminal), until Ctrl-C or the end
/// of the stream. With `--json`, prints the merged status once per update.
async fn watch(ctx: &Ctx, interval_ms: u32) -> anyhow::Result<()> {
    let mut stream = ctx
        .call(client(ctx).watch_status(WatchStatusRequest { interval_ms }))
        .await
        .context("Cannot watch the node's status")?;
    let tty = std::io::stdout().is_terminal();
    let mut current = GetStatusResponse::default();
    let mut ctrl_c = crate::rpc::interrupts()?;
    loop {
        let delta = tokio::select! {
            _ = ctrl_c.recv() => return Ok(()),
            d = ctx.next_follow(&mut stream) => d.context("The status stream failed")?,
        };
        let Some(delta) = delta else {
            if !ctx.json {
                eprintln!("The agent ended the status stream.");
            }
            return Ok(());
        };
        merge_delta(&mut current, delta);
        if ctx.json {
            output::json(&current)?;
        } else if tty {
            output::out(&format!(
                "\x1b[H\x1b[2J{}\nUpdated {}; Ctrl-C to stop.\n",
                render_status(&current),
                format_unix_ms(current.sampled_at_unix_ms)
            ))?;
        } else {
            output::out(&format!("{}\n", render_status(&current)))?;
        }
    }
}

/// Applies one WatchStatus message to `current`: a full status replaces it;
/// a delta overwrites the fields it names in `changed`. An agent that sends
/// no `changed` list gets the fields that are set (non-zero) merged.
/// Unknown names (fields of a newer agent) are skipped.
pub fn merge_delta(current: &mut GetStatusResponse, delta: StatusDelta) {
    let new = delta.status.unwrap_or_default();
    if delta.full {
        *current = new;
        return;
    }
    let changed: Vec<String> = if delta.changed.is_empty() {
        set_fields(&new)
    } else {
        delta.changed
    };
    for field in changed {
        match field.as_str() {
            "hostname" => current.hostname = new.hostname.clone(),
            "image_version" => current.image_version = new.image_version.clone(),
            "image_id" => current.image_id = new.image_id.clone(),
            "booted_slot" => current.booted_slot = new.booted_slot.clone(),
            "uptime_seconds" => current.uptime_seconds = new.uptime_seconds,
            "load" => current.load = new.load,
            "memory" => current.memory = new.memory,
            "disks" => current.disks = new.disks.clone(),
            "kernel" => current.kernel = new.kernel.clone(),
            "agent_version" => current.agent_version = new.agent_version.clone(),
            "simulated" => current.simulated = new.simulated,
            "sampled_at_unix_ms" => current.sampled_at_unix_ms = new.sampled_at_unix_ms,
            "cpu" => current.cpu = new.cpu.clone(),
            "interfaces" => current.interfaces = new.interfaces.clone(),
            _ => {}
        }
    }
}

/// The names of the fields of `s` that are not zero, empty or unset.
fn set_fields(s: &GetStatusResponse) -> Vec<String> {
    let checks = [
        ("hostname", !s.hostname.is_empty()),
        ("image_version", !s.image_version.is_empty()),
        ("image_id", !s.image_id.is_empty()),
        ("booted_slot", !s.booted_slot.is_empty()),
        ("uptime_seconds", s.uptime_seconds != 0.0),
        ("load", s.load.is_some()),
        ("memory", s.memory.is_some()),
        ("disks", !s.disks.is_empty()),
        ("kernel", !s.kernel.is_empty()),
        ("agent_version", !s.agent_version.is_empty()),
        ("simulated", s.simulated),
        ("sampled_at_unix_ms", s.sampled_at_unix_ms != 0),
        ("cpu", s.cpu.is_some()),
        ("interfaces", !s.interfaces.is_empty()),
    ];
    checks
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| n.to_string())
        .collect()
}

/// The status as aligned `KEY  value` lines, with a banner first when the
/// agent runs in simulation.
pub fn render_status(s: &GetStatusResponse) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
    row("HOSTNAME", s.hostname.clone());
    row(
        "IMAGE",
        format!("{} {}", s.image_id, s.image_version).trim().to_string(),
    );
    row("BOOTED SLOT", output::or_dash(&s.booted_slot));
    row("UPTIME", humanize_secs(s.uptime_seconds.max(0.0) as u64, 4));
    if let Some(l) = &s.load {
        row("LOAD", format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen));
    }
    if let Some(c) = &s.cpu {
        row(
            "CPU",
            format!("{:.0}% busy of {} CPUs", c.busy_fraction * 100.0, c.count),
        );
    }
    if let Some(m) = &s.memory {
        row(
            "MEMORY",
            format!(
                "{} used of {} ({}%)",
                bytes(m.used_bytes),
                bytes(m.total_bytes),
                percent(m.used_bytes, m.total_bytes)
            ),
        );
    }
    for d in &s.disks {
        let ro = if d.read_only { ", read-only" } else { "" };
        row(
            &format!("DISK {}", d.name),
            format!(
                "{} used of {} ({}%) on {}{ro}",
                bytes(d.used_bytes),
                bytes(d.total_bytes),
                percent(d.used_bytes, d.total_bytes),
                d.mount_point
            ),
        );
    }
    for i in &s.interfaces {
        row(
            &format!("NET {}", i.name),
            format!(
                "{}, {} received, {} sent",
                output::or_dash(&i.operstate),
                bytes(i.rx_bytes),
                bytes(i.tx_bytes)
            ),
        );
    }
    row("KERNEL", s.kernel.clone());
    row("AGENT", s.agent_version.clone());
    let table = render_kv(&rows);
    if s.simulated {
        format!("*** SIMULATED NODE: the agent runs on a fake host; nothing here is real ***\n{table}")
    } else {
        table
    }
}

/// Which power call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// `reboot`.
    Reboot,
    /// `shutdown`.
    Shutdown,
}

impl Power {
    fn verb(self) -> &'static str {
        match self {
            Power::Reboot => "reboot",
            Power::Shutdown => "shut down",
        }
    }
}

/// `reboot` / `shutdown`: confirms on a terminal unless `--yes`, then asks
/// the agent.
pub async fn power(ctx: &Ctx, which: Power, args: &PowerArgs) -> anyhow::Result<()> {
    let verb = which.verb();
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(UsageError(format!(
                "Refusing to {verb} the node without confirmation: stdin is not a terminal. Pass --yes to {verb} it."
            ))
            .into());
        }
        let host = ctx
            .call(client(ctx).get_status(ctx.req(GetStatusRequest {})))
            .await
            .context("Cannot get the node's name to confirm")?
            .hostname;
        if !confirm(&format!("Really {verb} node {host} ({})? [y/N] ", ctx.via))? {
            anyhow::bail!("Cancelled: node {host} was not asked to {verb}");
        }
    }
    let req = ctx.req(PowerRequest {
        reason: args.reason.as_ref().map(|r| r.to_string()).unwrap_or_default(),
    });
    let resp = match which {
        Power::Reboot => ctx.call(client(ctx).reboot(req)).await,
        Power::Shutdown => ctx.call(client(ctx).shutdown(req)).await,
    }
    .with_context(|| format!("Cannot {verb} the node"))?;
    if ctx.json {
        output::json(&resp)
    } else {
        Ok(output::out(&format!(
            "The node is going to {verb} ({} started); the connection will drop.\n",
            resp.target
        ))?)
    }
}

/// Asks a yes/no question on the terminal; only `y` or `yes` confirm.
fn confirm(question: &str) -> std::io::Result<bool> {
    let mut err = std::io::stderr().lock();
    err.write_all(question.as_bytes())?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use debvisor_api::node::v1::{Disk, LoadAverage, Memory};

    fn full() -> GetStatusResponse {
        GetStatusResponse {
            hostname: "n1".into(),
            image_id: "debvisor".into(),
            image_version: "1.2.3".into(),
            booted_slot: "A".into(),
            uptime_seconds: 90_061.0,
            load: Some(LoadAverage {
                one: 0.5,
                five: 0.25,
                fifteen: 0.75,
            }),
            memory: Some(Memory {
                total_bytes: 8 << 30,
                available_bytes: 6 << 30,
                used_bytes: 2 << 30,
            }),
            disks: vec![Disk {
                name: "root".into(),
                mount_point: "/".into(),
                total_bytes: 4 << 30,
                available_bytes: 1 << 30,
                used_bytes: 3 << 30,
                read_only: true,
            }],
            kernel: "6.12.0".into(),
            agent_version: "0.1.0".into(),
            simulated: false,
            sampled_at_unix_ms: 1000,
            cpu: None,
            interfaces: vec![],
        }
    }

    #[test]
    fn status_table_names_every_figure() {
        let t = render_status(&full());
        assert_eq!(
            t,
            "HOSTNAME     n1\n\
             IMAGE        debvisor 1.2.3\n\
             BOOTED SLOT  A\n\
             UPTIME       1d 1h 1m 1s\n\
             LOAD         0.50 0.25 0.75\n\
             MEMORY       2.0 GiB used of 8.0 GiB (25%)\n\
             DISK root    3.0 GiB used of 4.0 GiB (75%) on /, read-only\n\
             KERNEL       6.12.0\n\
             AGENT        0.1.0\n"
        );
    }

    #[test]
    fn cpu_and_interfaces_are_shown_and_merged() {
        let s = GetStatusResponse {
            cpu: Some(debvisor_api::node::v1::Cpu {
                count: 4,
                busy_fraction: 0.125,
                per_cpu_busy_fraction: vec![0.5, 0.0, 0.0, 0.0],
                period_ms: 1000,
            }),
            interfaces: vec![debvisor_api::node::v1::NetworkInterface {
                name: "enp0s1".into(),
                rx_bytes: 3 << 20,
                tx_bytes: 1 << 10,
                up: true,
                operstate: "up".into(),
                ..Default::default()
            }],
            ..full()
        };
        let t = render_status(&s);
        assert!(t.contains("CPU          12% busy of 4 CPUs\n"), "{t}");
        assert!(t.contains("NET enp0s1   up, 3.0 MiB received, 1.0 KiB sent\n"), "{t}");
        let mut cur = full();
        merge_delta(
            &mut cur,
            StatusDelta {
                status: Some(s.clone()),
                full: false,
                changed: vec!["cpu".into(), "interfaces".into()],
            },
        );
        assert_eq!((cur.cpu, cur.interfaces), (s.cpu, s.interfaces));
    }

    #[test]
    fn simulation_gets_a_banner() {
        let s = GetStatusResponse {
            simulated: true,
            ..full()
        };
        assert!(render_status(&s).starts_with("*** SIMULATED NODE"));
        assert!(!render_status(&full()).contains("SIMULATED"));
    }

    #[test]
    fn a_full_message_replaces_the_status() {
        let mut cur = GetStatusResponse::default();
        merge_delta(
            &mut cur,
            StatusDelta {
                status: Some(full()),
                full: true,
                changed: vec![],
            },
        );
        assert_eq!(cur, full());
    }

    #[test]
    fn deltas_overwrite_only_the_named_fields_even_with_zero_values() {
        let mut cur = full();
        let delta = StatusDelta {
            status: Some(GetStatusResponse {
                uptime_seconds: 90_062.0,
                load: None,
                booted_slot: String::new(),
                sampled_at_unix_ms: 2000,
                ..Default::default()
            }),
            full: false,
            // load became unset and booted_slot empty: both really changed.
            changed: vec![
                "uptime_seconds".into(),
                "load".into(),
                "booted_slot".into(),
                "sampled_at_unix_ms".into(),
                "field_of_a_newer_agent".into(),
            ],
        };
        merge_delta(&mut cur, delta);
        assert_eq!(cur.uptime_seconds, 90_062.0);
        assert_eq!(cur.load, None);
        assert_eq!(cur.booted_slot, "");
        assert_eq!(cur.sampled_at_unix_ms, 2000);
        // Everything else is kept.
        assert_eq!(cur.hostname, "n1");
        assert_eq!(cur.memory, full().memory);
        assert_eq!(cur.disks, full().disks);
    }

    #[test]
    fn deltas_without_names_merge_the_set_fields() {
        let mut cur = full();
        merge_delta(
            &mut cur,
            StatusDelta {
                status: Some(GetStatusResponse {
                    hostname: "n2".into(),
                    ..Default::default()
                }),
                full: false,
                changed: vec![],
            },
        );
        assert_eq!(cur.hostname, "n2");
        assert_eq!(cur.uptime_seconds, 90_061.0);
        assert_eq!(cur.load, full().load);
    }
}
