//! Config media: a small disk image whose file system is labelled
//! DEBVISORCFG and holds `machine.toml` at its root, the second source of
//! the machine config after the kernel command line. Attached to a VM as a
//! read-only virtio disk.
//!
//! The file system is ext4, made by `mkfs.ext4 -d` from a directory without
//! mounting anything. The label fits FAT's 11 characters too, so a USB stick
//! formatted FAT works the same (debvisor-init mounts vfat, iso9660 or ext4).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use debvisor_api::paths::CONFIG_MEDIUM_LABEL;

use crate::qemu::require_tools;

/// Size of the image: small, but above ext4's minimum with a journal.
const SIZE: &str = "4M";

/// Writes a config medium to `image` (replaced if present) whose root holds
/// `machine.toml` with `toml` as its content.
pub fn build(image: &Path, toml: &str) -> Result<()> {
    require_tools(&[("mkfs.ext4", "e2fsprogs")])?;
    let _ = std::fs::remove_file(image);
    let dir = tempfile::tempdir().context("Cannot create a temporary directory")?;
    let file = dir.path().join("machine.toml");
    std::fs::write(&file, toml).with_context(|| format!("Cannot write {}", file.display()))?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", CONFIG_MEDIUM_LABEL, "-d"])
        .arg(dir.path())
        .arg(image)
        .arg(SIZE))?;
    Ok(())
}

/// Runs `cmd`; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("Cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medium_has_label_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("cfg.img");
        let toml = "version = 1\n\n[node]\nhostname = \"edge-1\"\n";
        build(&img, toml).unwrap();
        let cat = |img: &Path| run(Command::new("debugfs").args(["-R", "cat /machine.toml"]).arg(img)).unwrap();
        assert_eq!(cat(&img), toml);
        let label = run(Command::new("e2label").arg(&img)).unwrap();
        assert_eq!(label.trim(), CONFIG_MEDIUM_LABEL);
        // Building again replaces the image.
        build(&img, "version = 1\n").unwrap();
        assert_eq!(cat(&img), "version = 1\n");
    }
}
