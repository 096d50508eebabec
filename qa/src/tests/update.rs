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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use debvisor_api::node::v1::PowerRequest;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use debvisor_api::update::v1::update_service_client::UpdateServiceClient;
use debvisor_api::update::v1::{ErrorKind, GetSlotsRequest, InstallProgress, InstallRequest, Phase, SlotsState};
use serde_json::Value;
use tonic::transport::Channel;

use super::{CMD, Ctx};
use crate::cfgdisk;
use crate::fileserve::FileServer;
use crate::node::{self, ImageOptions, Node, Waited};
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

/// The bundles the tests install.
struct Bundles {
    v2: PathBuf,
    v2_version: String,
    v3: PathBuf,
    v3_version: String,
    flipped: PathBuf,
    wrong_compatible: PathBuf,
}

fn machine_config() -> String {
    format!("# update tests: a short boot gate\nversion = 1\n\n[boot]\ngate_deadline_seconds = {GATE_DEADLINE_S}\n")
}

/// Builds (or reuses) the variants and bad bundles for the image in `ctx`.
fn bundles(ctx: &Ctx) -> Result<Bundles> {
    let root = ctx.paths.qa().join("update");
    std::fs::create_dir_all(&root)?;
    let v2_version = format!("{}-v2", ctx.version);
    let v3_version = format!("{}-v3", ctx.version);
    let with = |o: ImageOptions| ImageOptions { no_cargo: true, ..o };
    let v2 = variant(
        ctx,
        &root.join("v2"),
        &with(ImageOptions::variant(&v2_version, "v2", &[])),
    )?;
    let v3 = variant(
        ctx,
        &root.join("v3"),
        &with(ImageOptions::variant(&v3_version, "v3", &[V3_MASK])),
    )?;
    let flipped = root.join("v2-flipped.raucb");
    flip_byte(&v2, &flipped)?;
    let wrong_compatible = root.join("wrong-compatible.raucb");
    wrong_compatible_bundle(ctx, &root.join("wrong-compatible"), &wrong_compatible)?;
    Ok(Bundles {
        v2,
        v2_version,
        v3,
        v3_version,
        flipped,
        wrong_compatible,
    })
}

/// The bundle of a variant build of the image under test into `out`. A
/// build is reused only when it was made from this very image (its
/// manifest) with the same options.
fn variant(ctx: &Ctx, out: &Path, opts: &ImageOptions) -> Result<PathBuf> {
    let base_manifest = std::fs::read(ctx.image.join("manifest.json"))
        .with_context(|| format!("Cannot read {}/manifest.json", ctx.image.display()))?;
    let key = format!("{}\n{opts:?}\n", sha256_hex(&base_manifest));
    let key_file = out.join("qa-variant.key");
    let bundle = node::bundle_path(out);
    if std::fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str()) && bundle.exists() {
        eprintln!("  reusing {} ({:?})", bundle.display(), opts.version);
        return Ok(bundle);
    }
    let _ = std::fs::remove_file(&key_file);
    let took = node::build_image_with(ctx.paths, out, opts)?;
    eprintln!("  variant {:?} built in {:.0} s", opts.version, took.as_secs_f64());
    std::fs::write(&key_file, key)?;
    Ok(bundle)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn file_sha256(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).with_context(|| format!("Cannot open {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Copies `src` to `dst` with one byte in the middle of the payload (the
/// slot image) inverted.
fn flip_byte(src: &Path, dst: &Path) -> Result<()> {
    let mut bytes = std::fs::read(src).with_context(|| format!("Cannot read {}", src.display()))?;
    ensure!(bytes.len() > 4096, "{} is too small to be a bundle", src.display());
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    std::fs::write(dst, bytes)?;
    Ok(())
}

/// A small verity bundle signed with the same development key as the
/// image's, for a compatible string no node has.
fn wrong_compatible_bundle(ctx: &Ctx, work: &Path, out: &Path) -> Result<()> {
    let signing = ctx.paths.cache().join("signing");
    let (cert, key) = (signing.join("signing.cert.pem"), signing.join("signing.key.pem"));
    ensure!(
        cert.exists() && key.exists(),
        "No development signing key in {}: the image build makes it",
        signing.display()
    );
    let _ = std::fs::remove_dir_all(work);
    let content = work.join("content");
    std::fs::create_dir_all(&content)?;
    // Incompressible, so that the bundle's squashfs is more than a block.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(content.join("rootfs.img"), noise)?;
    std::fs::write(
        content.join("manifest.raucm"),
        "[update]\ncompatible=some-other-node\nversion=9.9.9\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.img\n",
    )?;
    let _ = std::fs::remove_file(out);
    let o = std::process::Command::new("rauc")
        .arg("bundle")
        .arg(format!("--cert={}", cert.display()))
        .arg(format!("--key={}", key.display()))
        .arg(&content)
        .arg(out)
        .output()
        .context("Cannot run rauc: apt-get install rauc")?;
    ensure!(
        o.status.success(),
        "rauc bundle failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// The node's update client.
async fn client(n: &Waited) -> Result<UpdateServiceClient<Channel>> {
    Ok(UpdateServiceClient::new(probes::connect(&n.client).await?))
}

fn slots(ctx: &Ctx, n: &Waited) -> Result<SlotsState> {
    ctx.rt.block_on(async {
        let mut c = client(n).await?;
        Ok(c.get_slots(GetSlotsRequest {}).await.context("GetSlots")?.into_inner())
    })
}

/// Installs `url` and follows the progress stream to its end, calling
/// `on` with every message; returns the last one.
fn install(
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

fn phase(p: &InstallProgress) -> Phase {
    Phase::try_from(p.phase).unwrap_or(Phase::Unspecified)
}

fn describe(p: &InstallProgress) -> String {
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
fn install_ok(ctx: &Ctx, n: &Waited, url: &str, sha256: &str, slot: &str, version: &str) -> Result<()> {
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
fn install_refused(ctx: &Ctx, n: &Waited, url: &str, kind: ErrorKind) -> Result<String> {
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

fn slot<'a>(s: &'a SlotsState, bootname: &str) -> Result<&'a debvisor_api::update::v1::Slot> {
    s.slots
        .iter()
        .find(|x| x.bootname == bootname)
        .with_context(|| format!("No slot with boot name {bootname} in {s:?}"))
}

/// Asserts the booted slot, and each named slot's boot status.
fn expect_slots(s: &SlotsState, booted: &str, status: &[(&str, &str)]) -> Result<()> {
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
fn slot_table(s: &SlotsState) -> Vec<String> {
    let mut v: Vec<String> = s
        .slots
        .iter()
        .map(|x| format!("{} {} {} {}", x.name, x.boot_status, x.installed_count, x.sha256))
        .collect();
    v.push(format!("primary {}", s.primary_slot));
    v
}

/// `rauc status` on the node (JSON) agrees with GetSlots: booted slot,
/// primary, and each slot's boot status.
fn rauc_agrees(g: &mut SerialGuest, s: &SlotsState) -> Result<()> {
    let (rc, out) = g.exec("rauc status --detailed --output-format=json 2>/dev/null", CMD)?;
    ensure!(rc == 0, "rauc status failed on the node: {out}");
    let json: Vec<&str> = out.lines().filter(|l| !l.contains("DEBVISOR:")).collect();
    let v: Value =
        serde_json::from_str(json.join("\n").trim()).with_context(|| format!("rauc status printed no JSON: {out}"))?;
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

/// The node reboots through the agent; returns the next boot's [`Waited`].
fn reboot(ctx: &Ctx, node: &Node, n: &Waited, pw: &str, why: &str) -> Result<Waited> {
    let con = &node.vm.console;
    let from = con.offset();
    ctx.rt.block_on(async {
        let ch = probes::connect(&n.client).await?;
        NodeServiceClient::new(ch)
            .reboot(PowerRequest { reason: why.into() })
            .await
            .context("Reboot")?;
        anyhow::Ok(())
    })?;
    let down = con
        .wait_any(&["reboot: Restarting system"], from, Duration::from_secs(180))
        .map_err(|e| node::with_tail(e.context("The node did not go down after Reboot"), &node.vm))?;
    node::wait_node(ctx.rt, &node.vm, down.1.end, ctx.boot_timeout, Some(pw), &node.config)
        .map_err(|e| node::with_tail(e.context(format!("The node did not come back after {why}")), &node.vm))
}

fn first_boot(ctx: &Ctx) -> Result<(Node, Waited, String)> {
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
fn wait_booted_good(ctx: &Ctx, n: &Waited) -> Result<SlotsState> {
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
