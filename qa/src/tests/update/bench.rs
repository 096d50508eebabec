//! `debvisor-qa bench update`: what an update costs. The bundle's size; an
//! install of v2 on a booted v1 node through the agent, phase by phase
//! (download from the host, the agent's checks, RAUC writing the slot);
//! the reboot into it until the node is ready and its slot marked good; and
//! what RAUC's adaptive mode (block-hash-index) could save: the slot's
//! 4 KiB chunks already on the node for a full update and for a one-file
//! change.

use std::collections::HashSet;
use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use debvisor_api::update::v1::Phase;
use serde_json::json;

use super::bundles::{self, file_sha256};
use super::steps::{describe, first_boot, install, phase, reboot, wait_booted_good};
use crate::fileserve::FileServer;
use crate::serial::SerialGuest;
use crate::tests::{CMD, Ctx};

/// RAUC's block-hash-index chunk.
const CHUNK: usize = 4096;

/// How many of `new`'s chunks are found anywhere in `old` (by SHA-256, as
/// RAUC's hash index looks them up): (chunks of `new`, found).
fn chunks_found(new: &Path, old: &[&Path]) -> Result<(u64, u64)> {
    let mut have: HashSet<[u8; 32]> = HashSet::new();
    for p in old {
        each_chunk(p, |h| {
            have.insert(h);
        })?;
    }
    let (mut total, mut found) = (0u64, 0u64);
    each_chunk(new, |h| {
        total += 1;
        found += u64::from(have.contains(&h));
    })?;
    Ok((total, found))
}

fn each_chunk(path: &Path, mut f: impl FnMut([u8; 32])) -> Result<()> {
    use sha2::Digest;
    let mut file = std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path).with_context(|| format!("Cannot open {}", path.display()))?,
    );
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut n = 0;
        while n < CHUNK {
            let got = file.read(&mut buf[n..])?;
            if got == 0 {
                break;
            }
            n += got;
        }
        if n == 0 {
            return Ok(());
        }
        buf[n..].fill(0);
        f(sha2::Sha256::digest(&buf).into());
        if n < CHUNK {
            return Ok(());
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// One adaptive-mode comparison, printed and returned as JSON.
fn adaptive(what: &str, new: &Path, old: &[&Path]) -> Result<serde_json::Value> {
    let (total, found) = chunks_found(new, old)?;
    let fetch = (total - found) * CHUNK as u64;
    println!(
        "{what:<34} {total:>8} {found:>8} {:>8.1} {:>6.1}%",
        mib(fetch),
        100.0 * found as f64 / total.max(1) as f64
    );
    Ok(json!({"what": what, "chunks": total, "found_on_node": found, "bytes_to_fetch": fetch}))
}

pub(crate) fn bench(ctx: &Ctx, json_out: &Path) -> Result<()> {
    let (v2, v2_version) = bundles::v2(ctx)?;
    let one_file = bundles::v2_one_file(ctx)?;
    let slot = |bundle: &Path| bundle.with_file_name("slot.img");
    let bundle_size = std::fs::metadata(&v2)?.len();
    let slot_size = std::fs::metadata(slot(&v2))?.len();
    println!(
        "Bundle   {:.1} MiB (verity; slot image {:.1} MiB)",
        mib(bundle_size),
        mib(slot_size)
    );

    println!("\nAdaptive mode (block-hash-index): chunks of the new slot already on the node (both slots)");
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>7}",
        "update", "chunks", "found", "MiB new", "reused"
    );
    let v1_slot = ctx.image.join("slot.img");
    let full = adaptive("v1 -> v2 (new version)", &slot(&v2), &[&v1_slot])?;
    let one = adaptive(
        "v2 -> v2 with one file changed",
        &slot(&one_file),
        &[&v1_slot, &slot(&v2)],
    )?;
    println!(
        "  A full update fetches the whole bundle ({:.1} MiB). The agent downloads it before RAUC runs, so \
         adaptive mode saves no bytes here; it would with RAUC's HTTP streaming, by the figures above.",
        mib(bundle_size)
    );

    let srv = FileServer::start()?;
    srv.add("v2.raucb", v2.clone());
    let (node, w1, pw) = first_boot(ctx)?;
    wait_booted_good(ctx, &w1)?;

    // Install, timing each phase from the progress stream.
    let t0 = Instant::now();
    let mut marks: Vec<(Phase, Duration)> = Vec::new();
    let last = install(ctx, &w1, &srv.guest_url("v2.raucb"), &file_sha256(&v2)?, |p| {
        if marks.last().map(|m| m.0) != Some(phase(p)) {
            marks.push((phase(p), t0.elapsed()));
        }
        true
    })?;
    let total = t0.elapsed();
    ensure!(phase(&last) == Phase::Done, "The install failed: {}", describe(&last));
    let at = |ph: Phase| marks.iter().find(|m| m.0 == ph).map(|m| m.1);
    let span = |from: Phase, to: Phase| -> Option<f64> { Some((at(to)? - at(from)?).as_secs_f64()) };
    let download = span(Phase::Downloading, Phase::Verifying);
    let verify = span(Phase::Verifying, Phase::Installing);
    let write = span(Phase::Installing, Phase::Done);

    let t1 = Instant::now();
    let w2 = reboot(ctx, &node, &w1, &pw, "qa bench update: activate v2")?;
    let to_ready = t1.elapsed();
    ensure!(
        w2.status.image_version == v2_version && w2.status.booted_slot == "B",
        "After the update the node runs {:?} on {:?}",
        w2.status.image_version,
        w2.status.booted_slot
    );
    wait_booted_good(ctx, &w2)?;
    let to_good = t1.elapsed();
    let rauc_log = {
        let mut g = SerialGuest::login(&node.vm.console, "root", &pw, Duration::from_secs(120))?;
        let (_, out) = g.exec(
            "journalctl -b -1 -u rauc -o cat | grep -i -E 'hash index|adaptive|chunk' | tail -n 5",
            CMD,
        )?;
        g.logout()?;
        out
    };

    let secs = |d: Option<f64>| d.map_or("-".to_string(), |s| format!("{s:.1} s"));
    println!("\nInstall of v2 on a booted v1 node under TCG (the agent's progress stream)");
    println!(
        "  download {:>8}   ({:.1} MiB/s from the host over QEMU user networking)",
        secs(download),
        download.map_or(0.0, |s| mib(bundle_size) / s.max(0.001))
    );
    println!(
        "  verify   {:>8}   (signature and dm-verity root of the bundle, in the agent)",
        secs(verify)
    );
    println!("  write    {:>8}   (RAUC: slot written and checked)", secs(write));
    println!("  total    {:>6.1} s", total.as_secs_f64());
    println!(
        "Reboot to ready {:.1} s; to the slot marked good by the boot gate {:.1} s",
        to_ready.as_secs_f64(),
        to_good.as_secs_f64()
    );
    println!(
        "Download + install + reboot to ready: {:.1} s",
        (total + to_ready).as_secs_f64()
    );
    let rauc_lines: Vec<&str> = rauc_log.lines().filter(|l| !l.contains("DEBVISOR:")).collect();
    if !rauc_lines.is_empty() {
        println!("RAUC's own log of the install:");
        for l in &rauc_lines {
            println!("  {l}");
        }
    }
    let report = json!({
        "bundle_bytes": bundle_size,
        "slot_bytes": slot_size,
        "install_seconds": {"download": download, "verify": verify, "write": write, "total": total.as_secs_f64()},
        "reboot_to_ready_seconds": to_ready.as_secs_f64(),
        "reboot_to_good_seconds": to_good.as_secs_f64(),
        "download_install_reboot_seconds": (total + to_ready).as_secs_f64(),
        "adaptive": [full, one],
        "rauc_log": rauc_lines,
    });
    std::fs::create_dir_all(json_out.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(json_out, serde_json::to_string_pretty(&report)?)?;
    println!("JSON     {}", json_out.display());
    Ok(())
}
