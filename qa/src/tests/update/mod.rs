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
//! - v1 -> v2: the power cut early (download), v1 boots from A and a
//!   retried install succeeds; then v2 runs on B and A is still good;
//! - a bundle with one flipped byte and one for another compatible string
//!   are refused with their cause, no slot changed;
//! - v2 into A too, the power cut in the middle of the slot write (after
//!   half of what RAUC writes reached the disk: the chunks that differ from
//!   what A holds), then v2 -> v3 into A, the power cut late (after 90%);
//!   each time v2 boots from B and a retried install succeeds;
//! - v3 fails its boot gate and the node falls back to v2 by itself, with
//!   v3's slot marked bad;
//! - `rauc status` on the node agrees with GetSlots throughout.

mod bench;
mod bundles;
mod chunks;
mod steps;

pub(crate) use bench::bench;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use debvisor_api::update::v1::{ErrorKind, InstallProgress, Phase};

use self::bundles::{bundles, file_sha256};
use self::chunks::differing_bytes;
use self::steps::{
    describe, expect_slots, first_boot, install, install_ok, install_refused, phase, rauc_agrees, reboot,
    request_reboot, slot, slot_table, slots, wait_booted_good,
};
use super::{CMD, Ctx};
use crate::fileserve::FileServer;
use crate::node::{self, Node, Waited};
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

    // v1 -> v2, with the power cut early (in the download): the node boots
    // v1 on A again and the retried install succeeds.
    let slot_img = |bundle: &std::path::Path| bundle.with_file_name("slot.img");
    let v2 = Target {
        srv: &srv,
        url: srv.guest_url("v2.raucb"),
        sha256: file_sha256(&b.v2)?,
        slot: "rootfs.1",
        write_bytes: std::fs::metadata(slot_img(&b.v2))?.len(),
        version: &b.v2_version,
    };
    let w1 = cut_then_retry(ctx, &mut node, &w1, &pw, CutAt::Early, &v2, ("A", &ctx.version))?;
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
        rauc_agrees(&mut g, &slots(ctx, &w2)?)?;
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

    // v2 into A as well, with the power cut in the middle of writing A,
    // then v2 -> v3 with the power cut late in writing A: each time v2
    // boots from B again and the retried install succeeds. (Each cut writes
    // over different content: A held v1, then v2. Rewriting a slot with what
    // it already holds writes next to nothing, as RAUC's adaptive mode skips
    // the chunks the slot has.) v3's boot gate then fails: the node falls
    // back to v2 by itself.
    let v2_on_b = ("B", b.v2_version.as_str());
    let v2_into_a = Target {
        slot: "rootfs.0",
        write_bytes: differing_bytes(&slot_img(&b.v2), &ctx.image.join("slot.img"))?,
        ..v2
    };
    let w2 = cut_then_retry(ctx, &mut node, &w2, &pw, CutAt::Middle, &v2_into_a, v2_on_b)?;
    let v3 = Target {
        srv: &srv,
        url: srv.guest_url("v3.raucb"),
        sha256: file_sha256(&b.v3)?,
        slot: "rootfs.0",
        write_bytes: differing_bytes(&slot_img(&b.v3), &slot_img(&b.v2))?,
        version: &b.v3_version,
    };
    let w2 = cut_then_retry(ctx, &mut node, &w2, &pw, CutAt::Late, &v3, v2_on_b)?;
    let con = &node.vm.console;
    let from = request_reboot(ctx, &node, &w2, "qa update_ab: activate v3")?;
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
    rauc_agrees(&mut g, &slots(ctx, &w4)?)?;
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
    /// The progress message from which the cut is prepared: the download
    /// has begun, or RAUC has begun copying the image into the slot.
    fn armed(self, p: &InstallProgress) -> bool {
        match self {
            CutAt::Early => phase(p) == Phase::Downloading && p.bytes_done > 0,
            CutAt::Middle | CutAt::Late => {
                phase(p) == Phase::Installing && p.message.starts_with("Copying image") && !p.message.contains("done")
            }
        }
    }

    /// The share of what RAUC writes into the slot that has reached the
    /// disk when the power is cut (RAUC reports no progress within the copy,
    /// so QEMU's count of bytes written to the disk tells).
    fn written_share(self) -> Option<f64> {
        match self {
            CutAt::Early => None,
            CutAt::Middle => Some(0.5),
            CutAt::Late => Some(0.9),
        }
    }
}

/// Waits until the guest has written `bytes` more to its disk than when
/// called, while the install runs; returns what it wrote. Fails when the
/// install ends first (the agent's GetSlots tells) or the guest stops
/// writing for two minutes (RAUC reads both slots for its hash index
/// before it writes).
fn wait_written(ctx: &Ctx, node: &Node, w: &Waited, bytes: u64) -> Result<u64> {
    let base = node.vm.disk_written()?;
    let (mut mark, mut since, mut asked) = (0, Instant::now(), Instant::now());
    loop {
        let done = node.vm.disk_written()?.saturating_sub(base);
        if done >= bytes {
            // The count includes the journal's writes: make sure RAUC is
            // still at it.
            let s = slots(ctx, w)?;
            ensure!(
                s.operation == "installing",
                "{done} bytes were written, but RAUC is {:?} already: the cut would land after the slot write",
                s.operation
            );
            return Ok(done);
        }
        // Progress is a MiB at least (the journal alone writes a little).
        if done >= mark + (1 << 20) {
            (mark, since) = (done, Instant::now());
        }
        if asked.elapsed() >= Duration::from_secs(2) {
            asked = Instant::now();
            if let Some(p) = slots(ctx, w)?.install
                && matches!(phase(&p), Phase::Done | Phase::Failed)
            {
                bail!(
                    "The install ended ({}) after {done} of the {bytes} bytes the cut waits for: the cut cannot land \
                     in the slot write",
                    describe(&p)
                );
            }
        }
        ensure!(
            since.elapsed() < Duration::from_secs(120),
            "The guest stopped writing after {done} of the {bytes} bytes the cut waits for"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An install the tests make: from `url` on `srv` into `slot`, of `version`.
struct Target<'a> {
    srv: &'a FileServer,
    url: String,
    sha256: String,
    slot: &'a str,
    /// What RAUC writes into the slot: the chunks of the new slot image
    /// that differ from what the slot holds.
    write_bytes: u64,
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
    if at.written_share().is_some() {
        ensure!(
            t.write_bytes >= 4 << 20,
            "The install into {} writes only {} KiB (the images differ that little): too little for a {at:?} cut",
            t.slot,
            t.write_bytes >> 10
        );
        // Write-back at once rather than at RAUC's final fsync, so that the
        // bytes on the disk follow the copy.
        let mut g = SerialGuest::login(&node.vm.console, "root", pw, Duration::from_secs(120))?;
        let (rc, out) = g.exec(
            "sysctl -q -w vm.dirty_bytes=2097152 vm.dirty_background_bytes=524288",
            CMD,
        )?;
        ensure!(rc == 0, "sysctl vm.dirty_bytes failed: {out}");
        g.logout()?;
    }
    // Slow the download down so that the early cut lands in it.
    t.srv.throttle(if matches!(at, CutAt::Early) { 4 << 20 } else { 0 });
    let last = install(ctx, w, &t.url, &t.sha256, |p| !at.armed(p))?;
    t.srv.throttle(0);
    ensure!(
        at.armed(&last),
        "The install ended before the {at:?} cut point: {}",
        describe(&last)
    );
    // Leaving the progress stream does not stop the install.
    let written = match at.written_share() {
        Some(share) => {
            let bytes = wait_written(ctx, node, w, (share * t.write_bytes as f64) as u64)?;
            format!(
                " and {:.0}% of what RAUC writes into the slot on the disk ({} of {} KiB)",
                100.0 * bytes as f64 / t.write_bytes as f64,
                bytes >> 10,
                t.write_bytes >> 10
            )
        }
        None => String::new(),
    };
    eprintln!("  power cut {at:?} at {}{written}", describe(&last));
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
