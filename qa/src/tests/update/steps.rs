//! Steps of the update tests: install through the agent and follow its
//! progress, read and compare the slot table, reboot.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use debvisor_api::node::v1::PowerRequest;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use debvisor_api::update::v1::update_service_client::UpdateServiceClient;
use debvisor_api::update::v1::{ErrorKind, GetSlotsRequest, InstallProgress, InstallRequest, Phase, SlotsState};
use serde_json::Value;
use tonic::transport::Channel;

use super::bundles::machine_config;
use super::{CMD, Ctx, GATE_DEADLINE_S, INSTALL_TIMEOUT};
use crate::cfgdisk;
use crate::node::{self, Node, Waited};
use crate::probes;
use crate::serial::SerialGuest;

/// The node's update client.
pub(super) async fn client(n: &Waited) -> Result<UpdateServiceClient<Channel>> {
    Ok(UpdateServiceClient::new(probes::connect(&n.client).await?))
}

pub(super) fn slots(ctx: &Ctx, n: &Waited) -> Result<SlotsState> {
    ctx.rt.block_on(async {
        let mut c = client(n).await?;
        Ok(c.get_slots(GetSlotsRequest {}).await.context("GetSlots")?.into_inner())
    })
}

/// Installs `url` and follows the progress stream to its end, calling
/// `on` with every message; returns the last one.
pub(super) fn install(
    ctx: &Ctx,
    n: &Waited,
    url: &str,
    sha256: &str,
    mut on: impl FnMut(&InstallProgress) -> bool,
) -> Result<InstallProgress> {
    ctx.rt.block_on(async {
        let mut c = client(n).await?;
        let mut stream = c
            .install(InstallRequest {
                url: url.into(),
                sha256: sha256.into(),
            })
            .await
            .context("Install")?
            .into_inner();
        let deadline = tokio::time::Instant::now() + INSTALL_TIMEOUT;
        let mut last: Option<InstallProgress> = None;
        loop {
            let next = tokio::time::timeout_at(deadline, stream.message())
                .await
                .context("The install did not finish in time")?;
            match next {
                Ok(Some(p)) => {
                    let keep_going = on(&p);
                    last = Some(p);
                    if !keep_going {
                        break;
                    }
                }
                Ok(None) => break,
                Err(s) => bail!("The install stream failed: {s}"),
            }
        }
        last.context("The install stream ended without a message")
    })
}

pub(super) fn phase(p: &InstallProgress) -> Phase {
    Phase::try_from(p.phase).unwrap_or(Phase::Unspecified)
}

pub(super) fn describe(p: &InstallProgress) -> String {
    format!(
        "{:?} {}% {:?} error {:?} ({:?})",
        phase(p),
        p.percent,
        p.message,
        p.error,
        ErrorKind::try_from(p.error_kind).unwrap_or(ErrorKind::Unspecified)
    )
}

/// Installs and expects DONE into `slot`.
pub(super) fn install_ok(ctx: &Ctx, n: &Waited, url: &str, sha256: &str, slot: &str, version: &str) -> Result<()> {
    let t = Instant::now();
    let mut phases = Vec::new();
    let last = install(ctx, n, url, sha256, |p| {
        let ph = phase(p);
        if phases.last() != Some(&ph) {
            phases.push(ph);
        }
        true
    })?;
    ensure!(
        phase(&last) == Phase::Done,
        "The install of {url} did not end DONE: {}",
        describe(&last)
    );
    ensure!(
        last.target_slot == slot && last.bundle_version == version,
        "The install wrote {:?} with version {:?}, expected {slot:?} with {version:?}",
        last.target_slot,
        last.bundle_version
    );
    eprintln!(
        "  installed {version} into {slot} in {:.1} s (phases {phases:?})",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Installs and expects FAILED with `kind`.
pub(super) fn install_refused(ctx: &Ctx, n: &Waited, url: &str, kind: ErrorKind) -> Result<String> {
    let last = install(ctx, n, url, "", |_| true)?;
    let got = ErrorKind::try_from(last.error_kind).unwrap_or(ErrorKind::Unspecified);
    ensure!(
        phase(&last) == Phase::Failed && got == kind,
        "Installing {url} should fail with {kind:?}: {}",
        describe(&last)
    );
    ensure!(
        !last.error.trim().is_empty(),
        "The failed install gave no error message"
    );
    Ok(last.error)
}

pub(super) fn slot<'a>(s: &'a SlotsState, bootname: &str) -> Result<&'a debvisor_api::update::v1::Slot> {
    s.slots
        .iter()
        .find(|x| x.bootname == bootname)
        .with_context(|| format!("No slot with boot name {bootname} in {s:?}"))
}

/// Asserts the booted slot, and each named slot's boot status.
pub(super) fn expect_slots(s: &SlotsState, booted: &str, status: &[(&str, &str)]) -> Result<()> {
    ensure!(
        s.booted_bootname == booted,
        "Booted slot {:?}, expected {booted:?}: {s:?}",
        s.booted_bootname
    );
    for (name, want) in status {
        let got = &slot(s, name)?.boot_status;
        ensure!(got == want, "Slot {name} is {got:?}, expected {want:?}: {s:?}");
    }
    Ok(())
}

/// A fingerprint of the slot table for "nothing changed" checks: each
/// slot's boot status, install count and sha256, and the primary.
pub(super) fn slot_table(s: &SlotsState) -> Vec<String> {
    let mut v: Vec<String> = s
        .slots
        .iter()
        .map(|x| format!("{} {} {} {}", x.name, x.boot_status, x.installed_count, x.sha256))
        .collect();
    v.push(format!("primary {}", s.primary_slot));
    v
}

/// `rauc status` on the node (JSON) agrees with GetSlots: booted slot,
/// primary, and each slot's boot status. Take `s` fresh, after the boot
/// gate's mark: RAUC's primary is the first slot in ORDER with X_OK=1
/// X_TRY=0, so while the booted slot is on trial and the other is bad it
/// names none.
pub(super) fn rauc_agrees(g: &mut SerialGuest, s: &SlotsState) -> Result<()> {
    let (rc, out) = g.exec("rauc status --detailed --output-format=json 2>/dev/null", CMD)?;
    ensure!(rc == 0, "rauc status failed on the node: {out}");
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("rauc status printed no JSON: {out}"))?;
    let booted = v.get("booted").and_then(Value::as_str).unwrap_or_default();
    ensure!(
        booted == s.booted_bootname,
        "rauc status says booted {booted:?}, GetSlots {:?}",
        s.booted_bootname
    );
    let primary = v.get("boot_primary").and_then(Value::as_str).unwrap_or_default();
    ensure!(
        primary == s.primary_slot,
        "rauc status says primary {primary:?}, GetSlots {:?}",
        s.primary_slot
    );
    let rauc_slots = v
        .get("slots")
        .and_then(Value::as_array)
        .context("rauc status has no slots")?;
    for entry in rauc_slots {
        let Some((name, info)) = entry.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let Some(ours) = s.slots.iter().find(|x| &x.name == name) else {
            bail!("rauc status lists slot {name}, GetSlots does not");
        };
        let status = info.get("boot_status").and_then(Value::as_str).unwrap_or_default();
        ensure!(
            status == ours.boot_status,
            "Slot {name}: rauc status says {status:?}, GetSlots {:?}",
            ours.boot_status
        );
    }
    Ok(())
}

/// Asks the agent to reboot the node for `why`; returns the console offset
/// from which the reboot shows.
pub(super) fn request_reboot(ctx: &Ctx, node: &Node, n: &Waited, why: &str) -> Result<usize> {
    let from = node.vm.console.offset();
    ctx.rt.block_on(async {
        let ch = probes::connect(&n.client).await?;
        NodeServiceClient::new(ch)
            .reboot(PowerRequest { reason: why.into() })
            .await
            .context("Reboot")?;
        anyhow::Ok(())
    })?;
    Ok(from)
}

/// The node reboots through the agent; returns the next boot's [`Waited`].
pub(super) fn reboot(ctx: &Ctx, node: &Node, n: &Waited, pw: &str, why: &str) -> Result<Waited> {
    let from = request_reboot(ctx, node, n, why)?;
    let down = node
        .vm
        .console
        .wait_any(&["reboot: Restarting system"], from, Duration::from_secs(180))
        .map_err(|e| node::with_tail(e.context("The node did not go down after Reboot"), &node.vm))?;
    node::wait_node(ctx.rt, &node.vm, down.1.end, ctx.boot_timeout, Some(pw), &node.config)
        .map_err(|e| node::with_tail(e.context(format!("The node did not come back after {why}")), &node.vm))
}

pub(super) fn first_boot(ctx: &Ctx) -> Result<(Node, Waited, String)> {
    let medium = ctx.dir.join("config-medium.img");
    cfgdisk::build(&medium, &machine_config())?;
    let n = ctx.boot_with_drives(std::slice::from_ref(&medium))?;
    let pw = n.password()?;
    let w = Waited {
        boot: n.boot.clone(),
        fingerprint: n.fingerprint.clone(),
        client: n.client.clone(),
        agent_at: n.agent_at,
        console_at: n.console_at,
        status: n.status.clone(),
    };
    Ok((n, w, pw))
}

/// Waits until the boot gate of the running boot marked the booted slot good.
pub(super) fn wait_booted_good(ctx: &Ctx, n: &Waited) -> Result<SlotsState> {
    let deadline = Instant::now() + Duration::from_secs(u64::from(GATE_DEADLINE_S) + 60);
    loop {
        let s = slots(ctx, n)?;
        if s.booted_good {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("The booted slot was not marked good by the boot gate: {s:?}");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
