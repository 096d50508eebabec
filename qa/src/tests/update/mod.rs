//! VM tests of A/B updates with the real RAUC in the booted image.
//!
//! The image under test is v1. The tests build v2 (another version, and a
//! marker file) and v3 (another version, and the console's unit masked, so
//! its boot gate never passes) as variants of the same recipe, and two bad
//! bundles: v2 with one byte flipped, and a bundle for another compatible
//! string. The host serves them over HTTP; the node's agent downloads and
//! installs them through RAUC's D-Bus API.
//!
//! `update_ab`, one node through all of it (each boot and each install
//! costs minutes under TCG):
//! - v1 -> v2: the power cut early (download) and in the middle (slot
//!   write), each time v1 boots from A and a retried install succeeds; then
//!   v2 runs on B and A is still good;
//! - a bundle with one flipped byte and one for another compatible string
//!   are refused with their cause, no slot changed;
//! - v2 -> v3: the power cut late in the slot write, v2 boots from B and a
//!   retried install succeeds; v3 fails its boot gate and the node falls
//!   back to v2 by itself, with v3's slot marked bad;
//! - `rauc status` on the node agrees with GetSlots throughout.

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
use crate::node::{self, Node, Waited};
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

    let (mut node, w1, pw) = first_boot(ctx)?;
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

    // v1 -> v2, with the power cut early (in the download) and in the
    // middle of writing slot B: each time the node boots v1 on A again and
    // the retried install succeeds.
    let v2 = Target {
        srv: &srv,
        url: srv.guest_url("v2.raucb"),
        sha256: file_sha256(&b.v2)?,
        slot: "rootfs.1",
        version: &b.v2_version,
    };
    let v1 = ("A", ctx.version.as_str());
    let w = cut_then_retry(ctx, &mut node, &w1, &pw, CutAt::Early, &v2, v1)?;
    ensure!(
        srv.requests().contains(&("/v2.raucb".to_string(), 200)),
        "The agent never fetched /v2.raucb from the host: {:?}",
        srv.requests()
    );
    let w1 = cut_then_retry(ctx, &mut node, &w, &pw, CutAt::Middle, &v2, v1)?;
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

    // v2 -> v3, with the power cut late in writing slot A: the node boots
    // v2 on B again and the retried install succeeds. v3's boot gate then
    // fails: the node falls back to v2 by itself.
    let v3 = Target {
        srv: &srv,
        url: srv.guest_url("v3.raucb"),
        sha256: file_sha256(&b.v3)?,
        slot: "rootfs.0",
        version: &b.v3_version,
    };
    let w2 = cut_then_retry(ctx, &mut node, &w2, &pw, CutAt::Late, &v3, ("B", &b.v2_version))?;
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

/// An install the tests make: from `url` on `srv` into `slot`, of `version`.
struct Target<'a> {
    srv: &'a FileServer,
    url: String,
    sha256: String,
    slot: &'a str,
    version: &'a str,
}

/// Cuts the power at `at` in an install of `t`; the node must boot
/// `back` = (slot, version) again with that slot still good, and a retried
/// install must succeed. Returns the boot after the cut.
fn cut_then_retry(
    ctx: &Ctx,
    node: &mut Node,
    w: &Waited,
    pw: &str,
    at: CutAt,
    t: &Target,
    back: (&str, &str),
) -> Result<Waited> {
    // Slow the download down so that the early cut lands in it.
    t.srv.throttle(if matches!(at, CutAt::Early) { 4 << 20 } else { 0 });
    let last = install(ctx, w, &t.url, &t.sha256, |p| !at.reached(p))?;
    t.srv.throttle(0);
    ensure!(
        at.reached(&last),
        "The install ended before the {at:?} cut point: {}",
        describe(&last)
    );
    eprintln!("  power cut {at:?} at {}", describe(&last));
    node.vm
        .power_cycle(&ctx.dir.join(format!("console-after-{at:?}-cut.log").to_lowercase()))?;
    let w = node::wait_node(ctx.rt, &node.vm, 0, ctx.boot_timeout, Some(pw), &node.config)
        .map_err(|e| node::with_tail(e.context(format!("No boot after the {at:?} power cut")), &node.vm))?;
    let (slot, version) = back;
    ensure!(
        w.status.booted_slot == slot && w.status.image_version == version,
        "After the {at:?} power cut the node runs {:?} on {:?}, expected {version:?} on {slot}",
        w.status.image_version,
        w.status.booted_slot,
    );
    let s = wait_booted_good(ctx, &w)?;
    expect_slots(&s, slot, &[(slot, "good")])?;
    install_ok(ctx, &w, &t.url, &t.sha256, t.slot, t.version)
        .with_context(|| format!("The install retried after the {at:?} power cut failed"))?;
    Ok(w)
}
