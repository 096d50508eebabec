//! `debvisor-qa bench update`: what an update costs. The bundle's size;
//! what RAUC's adaptive mode (block-hash-index) finds of a new slot in the
//! slots already on the node (4 KiB chunks) for a new version and for a
//! one-file change; two installs through the agent, phase by phase
//! (download from the host, the agent's checks, RAUC writing the slot)
//! with the bytes written to the disk: a full one into the empty slot B,
//! then the next into slot A, which holds the older release (RAUC writes
//! only the chunks that differ); and the reboot into the new slot until
//! the node is ready and the slot marked good.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use debvisor_api::update::v1::Phase;
use serde_json::json;

use super::bundles::{self, file_sha256};
use super::chunks::{CHUNK, chunks_found, differing_bytes};
use super::steps::{describe, first_boot, install, phase, reboot, wait_booted_good};
use crate::fileserve::FileServer;
use crate::node::{Node, Waited};
use crate::serial::SerialGuest;
use crate::tests::{CMD, Ctx};

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
    let full_chunks = adaptive("v1 -> v2 (new version)", &slot(&v2), &[&v1_slot])?;
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
    srv.add("v2-one-file.raucb", one_file.clone());
    let (node, w1, pw) = first_boot(ctx)?;
    wait_booted_good(ctx, &w1)?;

    // v1 -> v2 into the empty slot B: everything is written.
    let full = timed_install(ctx, &node, &w1, &srv.guest_url("v2.raucb"), &v2)?;
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
    // The next update into slot A, which holds v1: only what differs is
    // written (RAUC skips equal chunks).
    let next = timed_install(ctx, &node, &w2, &srv.guest_url("v2-one-file.raucb"), &one_file)?;
    let expected_next = differing_bytes(&slot(&one_file), &v1_slot)?;
    let rauc_log = {
        let mut g = SerialGuest::login(&node.vm.console, "root", &pw, Duration::from_secs(120))?;
        let (_, out) = g.exec(
            "journalctl -u rauc -o cat | grep -i -E 'adaptive|access stats' | tail -n 12",
            CMD,
        )?;
        g.logout()?;
        out
    };

    println!("\nInstalls under TCG (phases from the agent's progress stream; bytes from QEMU's block statistics)");
    println!(
        "{:<44} {:>9} {:>8} {:>8} {:>8} {:>12}",
        "install", "download", "verify", "write", "total", "MiB written"
    );
    full.print("v1 -> v2 into the empty slot B");
    next.print("v2 -> v2 + one file into slot A (holds v1)");
    println!(
        "  written = the bundle saved to /data ({:.1} MiB) + the slot; RAUC's chunks that differ from slot A: {:.1} MiB",
        mib(bundle_size),
        mib(expected_next)
    );
    println!(
        "Reboot to ready {:.1} s; to the slot marked good by the boot gate {:.1} s",
        to_ready.as_secs_f64(),
        to_good.as_secs_f64()
    );
    println!(
        "Download + install + reboot to ready: {:.1} s",
        full.total + to_ready.as_secs_f64()
    );
    let rauc_lines: Vec<&str> = rauc_log.lines().collect();
    if !rauc_lines.is_empty() {
        println!("RAUC's own log of the installs:");
        for l in &rauc_lines {
            println!("  {l}");
        }
    }
    let report = json!({
        "bundle_bytes": bundle_size,
        "slot_bytes": slot_size,
        "install_full": full.json(),
        "install_next_into_older_slot": next.json(),
        "next_differing_chunk_bytes": expected_next,
        "reboot_to_ready_seconds": to_ready.as_secs_f64(),
        "reboot_to_good_seconds": to_good.as_secs_f64(),
        "download_install_reboot_seconds": full.total + to_ready.as_secs_f64(),
        "adaptive": [full_chunks, one],
        "rauc_log": rauc_lines,
    });
    std::fs::create_dir_all(json_out.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(json_out, serde_json::to_string_pretty(&report)?)?;
    println!("JSON     {}", json_out.display());
    Ok(())
}

/// One timed install.
struct Timed {
    download: Option<f64>,
    verify: Option<f64>,
    write: Option<f64>,
    total: f64,
    /// Bytes the guest wrote to its disk meanwhile.
    written: u64,
}

impl Timed {
    fn print(&self, what: &str) {
        let secs = |d: Option<f64>| d.map_or("-".to_string(), |s| format!("{s:.1} s"));
        println!(
            "{what:<44} {:>9} {:>8} {:>8} {:>6.1} s {:>12.1}",
            secs(self.download),
            secs(self.verify),
            secs(self.write),
            self.total,
            mib(self.written)
        );
    }

    fn json(&self) -> serde_json::Value {
        json!({"download_seconds": self.download, "verify_seconds": self.verify, "write_seconds": self.write,
               "total_seconds": self.total, "disk_bytes_written": self.written})
    }
}

/// Installs `bundle` (served at `url`) on `w`, timing each phase from the
/// progress stream and counting the bytes the guest writes.
fn timed_install(ctx: &Ctx, node: &Node, w: &Waited, url: &str, bundle: &Path) -> Result<Timed> {
    let written0 = node.vm.disk_written()?;
    let t0 = Instant::now();
    let mut marks: Vec<(Phase, Duration)> = Vec::new();
    let last = install(ctx, w, url, &file_sha256(bundle)?, |p| {
        if marks.last().map(|m| m.0) != Some(phase(p)) {
            marks.push((phase(p), t0.elapsed()));
        }
        true
    })?;
    let total = t0.elapsed().as_secs_f64();
    let written = node.vm.disk_written()?.saturating_sub(written0);
    ensure!(
        phase(&last) == Phase::Done,
        "The install of {url} failed: {}",
        describe(&last)
    );
    let at = |ph: Phase| marks.iter().find(|m| m.0 == ph).map(|m| m.1);
    let span = |from: Phase, to: Phase| -> Option<f64> { Some((at(to)? - at(from)?).as_secs_f64()) };
    Ok(Timed {
        download: span(Phase::Downloading, Phase::Verifying),
        verify: span(Phase::Verifying, Phase::Installing),
        write: span(Phase::Installing, Phase::Done),
        total,
        written,
    })
}
