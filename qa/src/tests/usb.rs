//! The USB installer in a VM: installer.iso written raw to a "stick" (a
//! copy of the file, as `dd` would write it), a machine config naming the
//! install disk copied onto the stick's FAT partition, the stick on an xHCI
//! controller as `usb-storage`, and a blank virtio disk. OVMF boots the
//! stick (the blank disk boots nothing), the installer writes the disk
//! unattended and reboots, and the node comes up from slot A of the disk
//! with the config's host name, the stick still plugged in.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use super::Ctx;
use super::installed::{check_slot_a_of_disk, ready, sh};
use crate::node::with_tail;
use crate::qemu::{Boot, Nic, USB_TARGET_SERIAL, Vm, VmSpec};

/// The host name the stick's machine config gives the node.
const HOST: &str = "usb-installed-1";

/// The byte offset of partition `n` of the GPT disk image `img`.
fn partition_offset(img: &Path, n: usize) -> Result<u64> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(img)
        .output()
        .context("Cannot run sfdisk: apt-get install fdisk")?;
    ensure!(
        out.status.success(),
        "sfdisk --json {}: {}",
        img.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("sfdisk --json printed no JSON")?;
    let table = &v["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let start = table["partitions"]
        .as_array()
        .and_then(|p| p.get(n - 1))
        .and_then(|p| p["start"].as_u64())
        .with_context(|| format!("{} has no partition {n}: {v}", img.display()))?;
    Ok(start * sector)
}

/// Copies `file` onto the FAT file system at byte `offset` of `img` as
/// `/name` (mtools, as a user would with a file manager).
fn mcopy(img: &Path, offset: u64, file: &Path, name: &str) -> Result<()> {
    let status = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{offset}", img.display()))
        .arg(file)
        .arg(format!("::/{name}"))
        .status()
        .context("Cannot run mcopy: apt-get install mtools")?;
    if !status.success() {
        bail!("mcopy {} to {}@@{offset} failed", file.display(), img.display());
    }
    Ok(())
}

/// Boots the stick with no machine config: the installer lists the disks
/// (the virtio disk with its size and serial, never the stick), takes a
/// number, and writes nothing when the confirmation is anything but
/// "erase vda" (QEMU counts no byte written to any drive); then the VM is
/// switched off.
fn prompt_refuses(ctx: &Ctx, spec: &VmSpec) -> Result<()> {
    let vm = Vm::start(spec)?;
    let con = &vm.console;
    let fail = |e: anyhow::Error| with_tail(e, &vm);
    let ask = con
        .wait_for("Disk to install to (1-", 0, ctx.boot_timeout)
        .map_err(|e| fail(e.context("The installer without a machine config showed no disk prompt")))?;
    let list = con.text(0, ask.end);
    let disks: Vec<&str> = list
        .lines()
        .skip_while(|l| !l.contains("Installing ERASES the disk you choose"))
        .filter(|l| l.trim_start().starts_with("1)") || l.trim_start().starts_with("2)"))
        .collect();
    ensure!(
        disks.len() == 1
            && disks[0].contains("/dev/vda 8 GB")
            && disks[0].contains(&format!("serial {USB_TARGET_SERIAL}")),
        "The prompt should list the virtio disk alone, with size and serial (the stick is the medium): {disks:?}"
    );
    con.send("1\n")?;
    let confirm = con
        .wait_for("Type \"erase vda\"", ask.end, CMD_WAIT)
        .map_err(|e| fail(e.context("Choosing disk 1 asked for no confirmation")))?;
    con.send("yes\n")?;
    let refused = con
        .wait_for("not confirmed; nothing was written", confirm.end, CMD_WAIT)
        .map_err(|e| fail(e.context("A confirmation other than \"erase vda\" was not refused")))?;
    con.wait_for("Disk to install to (1-", refused.end, CMD_WAIT)
        .map_err(|e| fail(e.context("After a refused confirmation the installer did not ask again")))?;
    let written = vm.disk_written()?;
    ensure!(
        written == 0,
        "The guest wrote {written} bytes to its disks although nothing was confirmed"
    );
    Ok(())
}

/// How long the installer may take to answer a line typed on its console.
const CMD_WAIT: Duration = Duration::from_secs(30);

pub(super) fn usb_install(ctx: &Ctx) -> Result<()> {
    let iso = ctx.image.join(debvisor_image::installer::FILE);
    ensure!(iso.is_file(), "{} is missing: build the image", iso.display());
    let stick = ctx.dir.join("stick.img");
    std::fs::copy(&iso, &stick).with_context(|| format!("Copying {}", iso.display()))?;
    let blank = ctx.dir.join("blank.img");
    std::fs::File::create(&blank)?.set_len(8 << 30)?;

    // 1. The stick as written, no machine config: the installer asks.
    let spec = |log: &str| VmSpec {
        boot: Boot::Usb {
            stick: stick.clone(),
            disk: blank.clone(),
        },
        workdir: ctx.dir.join("vm"),
        console_log: ctx.dir.join(log),
        memory_mib: ctx.memory_mib,
        accel: ctx.accel,
        console_port: None,
        agent_port: None,
        detach: false,
        nic: Nic::User,
    };
    prompt_refuses(ctx, &spec("console-prompt.log"))?;

    // 2. machine.toml on the stick's FAT partition: unattended.
    let config = ctx.dir.join("machine.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n\n[node]\nhostname = \"{HOST}\"\n\n[install]\n# The virtio disk.\ndisk = \"/dev/disk/by-id/virtio-{USB_TARGET_SERIAL}\"\n"
        ),
    )?;
    mcopy(&stick, partition_offset(&stick, 2)?, &config, "machine.toml")?;
    let vm = Vm::start(&spec("console.log"))?;
    let needles = [
        "debvisor: install: installer medium DVINST_",
        "debvisor: install: machine config machine.toml on",
        "debvisor: install: writing the installer medium",
        "written and verified (sha256",
        "machine config from the medium kept for the first boot",
        "debvisor: booting slot A",
    ];
    let mut g = ready(ctx, &vm, "USB install", ctx.boot_timeout * 2, &needles)?;
    let log = vm.console.text(0, vm.console.offset());
    ensure!(
        !log.contains("no machine config names the disk"),
        "The installer asked for a disk although the stick's config names one"
    );
    check_slot_a_of_disk(&mut g)?;
    let hostname = sh(&mut g, "hostname")?;
    ensure!(
        hostname == HOST,
        "The node is called {hostname:?}, not {HOST:?} (the stick's config)"
    );
    // The stick is still there, untouched: an ISO 9660 medium, not a target.
    let usb = sh(&mut g, "lsblk -n -o NAME,TRAN,LABEL -d -e 7,11 | grep usb || true")?;
    ensure!(!usb.is_empty(), "The stick is gone from the node's disks");
    Ok(())
}
