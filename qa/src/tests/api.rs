//! VM tests of the agent's API over mTLS with the node's admin bundle:
//! systemd units through the units service, a reboot through the node
//! service, and the audit log that records both.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use debvisor_api::audit::v1::audit_service_client::AuditServiceClient;
use debvisor_api::audit::v1::{QueryRequest, Record, VerifyRequest};
use debvisor_api::node::v1::PowerRequest;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use debvisor_api::units::v1::unit_service_client::UnitServiceClient;
use debvisor_api::units::v1::{GetUnitRequest, StreamLogsRequest, Unit, UnitActionRequest};
use tonic::transport::Channel;

use super::{CMD, Ctx};
use crate::node;
use crate::probes;
use crate::serial::SerialGuest;

const SLEEPER: &str = "qa-sleeper.service";
const SLEEPER_LINE: &str = "qa-sleeper up";
/// How long the node may take to settle a unit or flush its journal.
const SETTLE: Duration = Duration::from_secs(30);

/// The unit file, written through the serial shell: one printf argument
/// per line, each in single quotes (the ExecStart line's own single quotes
/// are closed and escaped around).
const SLEEPER_UNIT: &[&str] = &[
    "[Unit]",
    "Description=QA sleeper",
    "[Service]",
    "ExecStart=/bin/sh -c 'echo qa-sleeper up; exec sleep infinity'",
    "[Install]",
    "WantedBy=multi-user.target",
];

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn action(name: &str) -> UnitActionRequest {
    UnitActionRequest { name: name.into() }
}

async fn get_unit(units: &mut UnitServiceClient<Channel>, name: &str) -> Result<Unit> {
    Ok(units.get_unit(GetUnitRequest { name: name.into() }).await?.into_inner())
}

/// Polls GetUnit until `ok` holds or [`SETTLE`] passes; returns the last
/// answer and whether it held.
async fn wait_unit(
    units: &mut UnitServiceClient<Channel>,
    name: &str,
    ok: impl Fn(&Unit) -> bool,
) -> Result<(Unit, bool)> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let u = get_unit(units, name).await?;
        if ok(&u) || Instant::now() >= deadline {
            let held = ok(&u);
            return Ok((u, held));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every audit record (newest pages included), following page tokens.
async fn audit_records(ch: &Channel) -> Result<Vec<Record>> {
    let mut audit = AuditServiceClient::new(ch.clone());
    let mut out = Vec::new();
    let mut page_token = String::new();
    for _ in 0..100 {
        let r = audit
            .query(QueryRequest {
                page_size: 500,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(r.records);
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = r.next_page_token;
    }
    bail!("The audit query did not end after 100 pages")
}

/// Fails unless `records` has a successful `action` by admin (on `target`
/// when given).
fn audited(records: &[Record], action: &str, target: Option<&str>) -> Result<()> {
    let hit = records
        .iter()
        .any(|r| r.action == action && r.actor == "admin" && r.ok && target.is_none_or(|t| r.target.contains(t)));
    if !hit {
        let seen: Vec<String> = records
            .iter()
            .map(|r| format!("{} {} {} ok={}", r.actor, r.action, r.target, r.ok))
            .collect();
        bail!(
            "The audit log has no successful {action}{} by admin; it has: {seen:?}",
            target.map(|t| format!(" of {t}")).unwrap_or_default()
        );
    }
    Ok(())
}

async fn verify_audit(ch: &Channel) -> Result<()> {
    let v = AuditServiceClient::new(ch.clone())
        .verify(VerifyRequest {})
        .await?
        .into_inner();
    ensure!(v.ok, "Audit Verify failed at seq {}: {}", v.first_bad_seq, v.problem);
    Ok(())
}

pub(super) fn units_via_api(ctx: &Ctx) -> Result<()> {
    let n = ctx.shared_node()?;
    let pw = n.password()?;
    let mut g = SerialGuest::login(&n.vm.console, "root", &pw, Duration::from_secs(120))?;
    let lines: Vec<String> = SLEEPER_UNIT.iter().map(|l| shell_quote(l)).collect();
    let (rc, out) = g.exec(
        &format!(
            "printf '%s\\n' {} > /etc/systemd/system/{SLEEPER} && systemctl daemon-reload",
            lines.join(" ")
        ),
        CMD,
    )?;
    ensure!(rc == 0, "Writing {SLEEPER} failed: {out}");

    let ch = ctx.rt.block_on(probes::connect(&n.client))?;
    let mut units = UnitServiceClient::new(ch.clone());
    let p1 = ctx.rt.block_on(async {
        units.start(action(SLEEPER)).await.context("Start")?;
        let (u, ok) = wait_unit(&mut units, SLEEPER, |u| u.active_state == "active" && u.main_pid > 0).await?;
        ensure!(ok, "After Start, GetUnit shows {u:?}, expected active with a MainPID");
        anyhow::Ok(u.main_pid)
    })?;
    let p2 = ctx.rt.block_on(async {
        units.restart(action(SLEEPER)).await.context("Restart")?;
        let (u, ok) = wait_unit(&mut units, SLEEPER, |u| {
            u.active_state == "active" && u.main_pid > 0 && u.main_pid != p1
        })
        .await?;
        ensure!(
            ok,
            "After Restart, GetUnit shows {u:?}, expected active with a MainPID other than {p1}"
        );
        anyhow::Ok(u.main_pid)
    })?;
    let (rc, out) = g.exec(&format!("systemctl show -p MainPID --value {SLEEPER}"), CMD)?;
    ensure!(
        rc == 0 && out.trim() == p2.to_string(),
        "systemctl shows MainPID {:?}, the API {p2}",
        out.trim()
    );

    ctx.rt.block_on(async {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut stream = units
                .stream_logs(StreamLogsRequest {
                    unit: SLEEPER.into(),
                    lines: 200,
                    follow: false,
                    ..Default::default()
                })
                .await
                .context("StreamLogs")?
                .into_inner();
            let mut ups = 0;
            while let Some(e) = stream.message().await? {
                ups += usize::from(e.message.contains(SLEEPER_LINE));
            }
            if ups >= 2 {
                return anyhow::Ok(());
            }
            if Instant::now() >= deadline {
                bail!("StreamLogs of {SLEEPER} shows {SLEEPER_LINE:?} {ups} times, expected 2 (start and restart)");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })?;

    ctx.rt.block_on(async {
        let r = units.enable(action(SLEEPER)).await.context("Enable")?.into_inner();
        let state = match r.unit {
            Some(u) => u.unit_file_state,
            None => get_unit(&mut units, SLEEPER).await?.unit_file_state,
        };
        ensure!(state == "enabled", "After Enable, unit_file_state is {state:?}");
        let records = audit_records(&ch).await?;
        audited(&records, "units.Start", Some(SLEEPER))?;
        audited(&records, "units.Restart", Some(SLEEPER))?;
        verify_audit(&ch).await
    })?;
    let (rc, out) = g.exec(&format!("systemctl is-enabled {SLEEPER}"), CMD)?;
    ensure!(
        rc == 0 && out.trim() == "enabled",
        "systemctl is-enabled says {:?}",
        out.trim()
    );
    Ok(())
}

fn boot_id(g: &mut SerialGuest) -> Result<String> {
    let (rc, id) = g.exec("cat /proc/sys/kernel/random/boot_id", CMD)?;
    ensure!(rc == 0 && id.trim().len() == 36, "Cannot read boot_id: {id}");
    Ok(id.trim().to_string())
}

/// One reboot of the shared node serves two checks: node.Reboot over mTLS
/// reboots it (new boot_id, audited), and what was written to /etc and
/// /var before it is still there after it (same machine-id, the first
/// boot's password still works and is not printed again).
pub(super) fn reboot_via_api(ctx: &Ctx) -> Result<()> {
    let n = ctx.shared_node()?;
    let pw = n.password()?;
    let con = &n.vm.console;
    let tok = super::boot::token();
    let (before, machine_id) = {
        let mut g = SerialGuest::login(con, "root", &pw, Duration::from_secs(120))?;
        let (rc, out) = g.exec(
            &format!("echo {tok} > /etc/qa-token && echo {tok} > /var/lib/qa-token && sync"),
            CMD,
        )?;
        ensure!(rc == 0, "Writing the token files failed: {out}");
        let (_, id) = g.exec("cat /etc/machine-id", CMD)?;
        let boot = boot_id(&mut g)?;
        g.logout()?;
        (boot, id.trim().to_string())
    };
    let from = con.offset();
    let reason = "qa reboot_via_api";
    let target = ctx.rt.block_on(async {
        let ch = probes::connect(&n.client).await?;
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            NodeServiceClient::new(ch).reboot(PowerRequest { reason: reason.into() }),
        )
        .await
        .context("Reboot did not return within 30 s")?
        .context("Reboot")?;
        anyhow::Ok(r.into_inner().target)
    })?;
    let down = con
        .wait_any(
            &["reboot: Restarting system", "Reached target", "Stopping"],
            from,
            Duration::from_secs(120),
        )
        .map_err(|e| node::with_tail(e.context("The node did not go down after Reboot"), &n.vm))?;
    let again = node::wait_node(ctx.rt, &n.vm, down.1.end, ctx.boot_timeout, Some(&pw), &n.config)
        .map_err(|e| node::with_tail(e.context("The node did not come back after Reboot"), &n.vm))?;
    ensure!(
        again.boot.admin.is_none(),
        "The second boot printed the admin password again (it must only appear at first boot)"
    );
    let mut g = SerialGuest::login(con, "root", &pw, Duration::from_secs(120))
        .context("Logging in after the reboot with the first boot's password failed")?;
    let after = boot_id(&mut g)?;
    ensure!(
        after != before,
        "boot_id did not change ({before}): the node did not reboot"
    );
    for f in ["/etc/qa-token", "/var/lib/qa-token"] {
        let (rc, out) = g.exec(&format!("cat {f}"), CMD)?;
        ensure!(
            rc == 0 && out.trim() == tok,
            "{f} lost its token {tok} across the reboot: {out}"
        );
    }
    let (_, id_after) = g.exec("cat /etc/machine-id", CMD)?;
    ensure!(
        id_after.trim() == machine_id,
        "/etc/machine-id changed across the reboot: {machine_id} -> {}",
        id_after.trim()
    );
    eprintln!("  /etc and /var kept their tokens, machine-id unchanged");
    ctx.rt.block_on(async {
        let ch = probes::connect(&again.client).await?;
        let records = audit_records(&ch).await?;
        audited(&records, "node.Reboot", None)?;
        let r = records.iter().find(|r| r.action == "node.Reboot");
        eprintln!(
            "  Reboot answered target {target:?}; audit: {:?}",
            r.map(|r| (&r.actor, &r.target))
        );
        verify_audit(&ch).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_lines_quote_for_the_shell() {
        assert_eq!(shell_quote("[Unit]"), "'[Unit]'");
        assert_eq!(
            shell_quote("ExecStart=/bin/sh -c 'echo a'"),
            r"'ExecStart=/bin/sh -c '\''echo a'\'''"
        );
    }

    #[test]
    fn audit_matches_action_actor_and_target() {
        let r = |actor: &str, action: &str, target: &str, ok| Record {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            ok,
            ..Default::default()
        };
        let recs = vec![
            r("admin", "units.Start", "qa-sleeper.service", true),
            r("someone", "units.Restart", "qa-sleeper.service", true),
            r("admin", "units.Restart", "qa-sleeper.service", false),
        ];
        audited(&recs, "units.Start", Some(SLEEPER)).unwrap();
        assert!(audited(&recs, "units.Restart", Some(SLEEPER)).is_err());
        assert!(audited(&recs, "node.Reboot", None).is_err());
    }
}
