//! VM tests of A/B updates with the real RAUC in the booted image.
//!
//! The image under test is v1. The tests build v2 (another version, and a
//! marker file) and v3 (another version, and the console's unit masked, so
//! its boot gate never passes) as variants of the same recipe, and two bad
//! bundles: v2 with one byte flipped, and a bundle for another compatible
//! string. The host serves them over HTTP; the node's agent downloads and
//! installs them through RAUC's D-Bus API.
//!
//! - `update_ab`: v1 -> v2 (slot B, A still good), the bad bundles refused
//!   with no slot changed, v3 fails its boot gate and the node falls back to
//!   v2 by itself with v3 marked bad; `rauc status` agrees with GetSlots.
//! - `update_power_cut`: QEMU killed early, in the middle and late in an
//!   install; each time the node boots the good slot and a retried install
//!   succeeds.

mod bench;
mod bundles;
mod steps;

pub(crate) use bench::bench;

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use debvisor_api::node::v1::PowerRequest;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use debvisor_api::update::v1::{ErrorKind, InstallProgress, Phase};

use self::bundles::{bundles, file_sha256};
use self::steps::{
    describe, expect_slots, first_boot, install, install_ok, install_refused, phase, rauc_agrees, reboot, slot,
    slot_table, slots, wait_booted_good,
};
use super::{CMD, Ctx};
use crate::fileserve::FileServer;
use crate::node;
use crate::probes;
use crate::serial::SerialGuest;

/// The boot gate's deadline on the test nodes: long enough for a healthy
/// boot under TCG (ready at about 45 s of uptime), short enough that the
/// failing v3 is given up on quickly. The config validator's minimum is 30.
const GATE_DEADLINE_S: u32 = 150;
/// Where a variant leaves its mark (see [`ImageOptions::variant`]).
const MARKER: &str = "/etc/debvisor-marker";
/// The unit v3 masks: a required service, so the gate never passes.
const V3_MASK: &str = "debvisor-webui.service";
/// How long one install may take (download, checks, slot write under TCG).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

pub(super) fn update_ab(ctx: &Ctx) -> Result<()> {
    let b = bundles(ctx)?;
    let srv = FileServer::start()?;
    srv.add("v2.raucb", b.v2.clone());
    srv.add("v3.raucb", b.v3.clone());
    srv.add("flipped.raucb", b.flipped.clone());
    srv.add("wrong.raucb", b.wrong_compatible.clone());

    let (node, w1, pw) = first_boot(ctx)?;
    let s = wait_booted_good(ctx, &w1)?;
    expect_slots(&s, "A", &[("A", "good")])?;
    eprintln!("  v1 runs on A: {:?}", slot_table(&s));

    // A download that fails is named, and changes nothing.
    let missing = install(ctx, &w1, &srv.guest_url("missing.raucb"), "", |_| true)?;
    ensure!(
        phase(&missing) == Phase::Failed && missing.error_kind == ErrorKind::DownloadFailed as i32,
        "A 404 download should fail with DOWNLOAD_FAILED: {}",
        describe(&missing)
    );
    ensure!(
        missing.http_status == 404,
        "http_status {} for a 404",
        missing.http_status
    );

    // v1 -> v2.
    install_ok(
        ctx,
        &w1,
        &srv.guest_url("v2.raucb"),
        &file_sha256(&b.v2)?,
        "rootfs.1",
        &b.v2_version,
    )?;
    ensure!(
        srv.requests().contains(&("/v2.raucb".to_string(), 200)),
        "The agent never fetched /v2.raucb from the host: {:?}",
        srv.requests()
    );
    let w2 = reboot(ctx, &node, &w1, &pw, "qa update_ab: activate v2")?;
    ensure!(
        w2.status.image_version == b.v2_version && w2.status.booted_slot == "B",
        "After the update the node runs {:?} on slot {:?}, expected {:?} on B",
        w2.status.image_version,
        w2.status.booted_slot,
        b.v2_version
    );
    let s = wait_booted_good(ctx, &w2)?;
    expect_slots(&s, "B", &[("A", "good"), ("B", "good")])?;
    ensure!(
        slot(&s, "B")?.bundle_version == b.v2_version,
        "Slot B records version {:?}",
        slot(&s, "B")?.bundle_version
    );
    {
        let mut g = SerialGuest::login(&node.vm.console, "root", &pw, Duration::from_secs(120))?;
        let (rc, out) = g.exec(&format!("cat {MARKER}"), CMD)?;
        ensure!(rc == 0 && out.trim() == "v2", "{MARKER} on v2: {out:?}");
        rauc_agrees(&mut g, &s)?;
        g.logout()?;
    }
    eprintln!("  v2 runs on B, A still good; rauc status agrees");

    // Bad bundles: refused with their cause, no slot changed.
    let before = slot_table(&s);
    let e = install_refused(ctx, &w2, &srv.guest_url("flipped.raucb"), ErrorKind::BadSignature)?;
    eprintln!("  flipped byte refused: {e}");
    let e = install_refused(ctx, &w2, &srv.guest_url("wrong.raucb"), ErrorKind::WrongCompatible)?;
    eprintln!("  wrong compatible refused: {e}");
    let after = slots(ctx, &w2)?;
    ensure!(
        slot_table(&after) == before,
        "A refused bundle changed the slots: {before:?} -> {:?}",
        slot_table(&after)
    );

    // v2 -> v3, whose boot gate fails: the node falls back to v2 itself.
    install_ok(
        ctx,
        &w2,
        &srv.guest_url("v3.raucb"),
        &file_sha256(&b.v3)?,
        "rootfs.0",
        &b.v3_version,
    )?;
    let con = &node.vm.console;
    let from = con.offset();
    ctx.rt.block_on(async {
        let ch = probes::connect(&w2.client).await?;
        NodeServiceClient::new(ch)
            .reboot(PowerRequest {
                reason: "qa update_ab: activate v3".into(),
            })
            .await
            .context("Reboot")?;
        anyhow::Ok(())
    })?;
    let limit = Duration::from_secs(u64::from(GATE_DEADLINE_S) + 240);
    let bad = con
        .wait_for("DEBVISOR: boot-bad", from, limit)
        .map_err(|e| node::with_tail(e.context("v3 did not declare its boot bad"), &node.vm))?;
    let v3_boot = con.text(from, bad.end);
    ensure!(
        v3_boot.contains("rauc.slot=A") || v3_boot.contains("booting slot A"),
        "The v3 boot was not slot A"
    );
    let w4 = node::wait_node(ctx.rt, &node.vm, bad.end, ctx.boot_timeout, Some(&pw), &node.config)
        .map_err(|e| node::with_tail(e.context("The node did not come back from the bad v3 boot"), &node.vm))?;
    ensure!(
        w4.status.image_version == b.v2_version && w4.status.booted_slot == "B",
        "After v3 failed the node runs {:?} on {:?}, expected v2 on B",
        w4.status.image_version,
        w4.status.booted_slot
    );
    let s = wait_booted_good(ctx, &w4)?;
    expect_slots(&s, "B", &[("A", "bad"), ("B", "good")])?;
    let mut g = SerialGuest::login(con, "root", &pw, Duration::from_secs(120))?;
    rauc_agrees(&mut g, &s)?;
    eprintln!("  v3 failed its boot gate; the node fell back to v2 on B and A shows bad");
    Ok(())
}

/// Where in an install the power is cut.
#[derive(Debug, Clone, Copy)]
enum CutAt {
    /// While the bundle downloads.
    Early,
    /// Half way through writing the slot.
    Middle,
    /// Near the end of writing the slot.
    Late,
}

impl CutAt {
    fn reached(self, p: &InstallProgress) -> bool {
        match self {
            CutAt::Early => phase(p) == Phase::Downloading && p.bytes_done > 0,
            CutAt::Middle => phase(p) == Phase::Installing && p.percent >= 40,
            CutAt::Late => phase(p) == Phase::Installing && p.percent >= 85,
        }
    }
}

pub(super) fn update_power_cut(ctx: &Ctx) -> Result<()> {
    let b = bundles(ctx)?;
    let srv = FileServer::start()?;
    srv.add("v2.raucb", b.v2.clone());
    let url = srv.guest_url("v2.raucb");
    let sha = file_sha256(&b.v2)?;
    let (mut node, mut w, pw) = first_boot(ctx)?;
    wait_booted_good(ctx, &w)?;
    for (i, at) in [CutAt::Early, CutAt::Middle, CutAt::Late].into_iter().enumerate() {
        // Slow downloads down so that the early cut lands in the download.
        srv.throttle(if matches!(at, CutAt::Early) { 4 << 20 } else { 0 });
        let last = install(ctx, &w, &url, &sha, |p| !at.reached(p))?;
        ensure!(
            at.reached(&last),
            "The install ended before the {at:?} cut point: {}",
            describe(&last)
        );
        eprintln!("  power cut {at:?} at {}", describe(&last));
        node.vm
            .power_cycle(&ctx.dir.join(format!("console-after-cut-{}.log", i + 1)))?;
        w = node::wait_node(ctx.rt, &node.vm, 0, ctx.boot_timeout, Some(&pw), &node.config)
            .map_err(|e| node::with_tail(e.context(format!("No boot after the {at:?} power cut")), &node.vm))?;
        ensure!(
            w.status.booted_slot == "A" && w.status.image_version == ctx.version,
            "After the {at:?} power cut the node runs {:?} on {:?}, expected {:?} on A",
            w.status.image_version,
            w.status.booted_slot,
            ctx.version
        );
        let s = wait_booted_good(ctx, &w)?;
        expect_slots(&s, "A", &[("A", "good")])?;
        srv.throttle(0);
        install_ok(ctx, &w, &url, &sha, "rootfs.1", &b.v2_version)
            .with_context(|| format!("The install retried after the {at:?} power cut failed"))?;
        // The next round installs into B again: RAUC marks it unbootable
        // before writing, so a cut leaves the node on A.
    }
    // The last retried install is complete: the node boots it.
    let w2 = reboot(ctx, &node, &w, &pw, "qa update_power_cut: activate v2")?;
    ensure!(
        w2.status.booted_slot == "B" && w2.status.image_version == b.v2_version,
        "After the retried install the node runs {:?} on {:?}",
        w2.status.image_version,
        w2.status.booted_slot
    );
    Ok(())
}
