//! What the tests of nodes that came up from the network or an installer
//! share: waiting for ready with the boot's own messages checked, running
//! commands on the node, and the checks of a disk the installer wrote.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::Ctx;
use crate::node::with_tail;
use crate::qemu::Vm;
use crate::serial::SerialGuest;

/// Where [`ready`] keeps the seconds from QEMU start to ready.
const READY_FILE: &str = "ready_secs.txt";

/// Waits up to `timeout` for the node in `vm` to reach ready, checks that
/// its console shows each of `needles`, keeps the time to ready in the
/// test's folder (see [`ready_secs`]) and logs in as root with the admin
/// password the first boot printed.
pub(super) fn ready<'a>(
    ctx: &Ctx,
    vm: &'a Vm,
    what: &str,
    timeout: Duration,
    needles: &[&str],
) -> Result<SerialGuest<'a>> {
    let info = vm
        .console
        .wait_ready(0, timeout)
        .map_err(|e| with_tail(e.context(format!("The {what} node did not reach ready")), vm))?;
    let secs = info.ready_at.as_secs_f64();
    println!("  {what} to ready: {secs:.1} s");
    std::fs::write(ctx.dir.join(READY_FILE), format!("{secs:.1}\n"))?;
    let log = vm.console.text(0, vm.console.offset());
    for needle in needles {
        ensure!(log.contains(needle), "The console shows no {needle:?}: see console.log");
    }
    let (_, password) = info.admin.clone().context("The first boot printed no admin password")?;
    SerialGuest::login(&vm.console, "root", &password, Duration::from_secs(120))
}

/// The seconds to ready a test in `dir` measured with [`ready`].
pub(super) fn ready_secs(dir: &Path) -> Result<f64> {
    let path = dir.join(READY_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("Reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} holds {text:?}, not seconds", path.display()))
}

/// Runs `cmd` on the node; its trimmed output, or an error if it failed.
pub(super) fn sh(g: &mut SerialGuest, cmd: &str) -> Result<String> {
    g.sh(cmd, super::CMD)
}

/// The node runs slot A of its virtio disk, and the partition table the
/// installer left there is sound (the backup GPT moved to the disk's end).
pub(super) fn check_slot_a_of_disk(g: &mut SerialGuest) -> Result<()> {
    let root = sh(
        g,
        "echo $(readlink -f $(findmnt -n -o SOURCE /)) $(findmnt -n -o FSTYPE /)",
    )?;
    ensure!(root == "/dev/vda2 squashfs", "/ is not slot A of the disk: {root}");
    let verify = sh(g, "sfdisk --verify /dev/vda 2>&1")?;
    ensure!(
        verify.contains("No errors detected"),
        "The installed partition table has problems: {verify}"
    );
    Ok(())
}
