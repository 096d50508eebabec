//! The PXE set: `pxe/` beside the other artifacts, laid out as the
//! provisioner serves an image version (`<images_dir>/<version>/`):
//!
//! - `vmlinuz`, `initrd.img`: the slot's own kernel and initramfs (the
//!   initramfs does live and install boots as well as disk boots);
//! - `rootfs.squashfs`: the slot image, fetched into RAM by a live boot;
//! - `install.img`: what an install writes to the disk: the start of the A/B
//!   disk image through the end of the slot in root_a (GPT, ESP, root_a; a
//!   sixth of the whole image). The installer moves the backup GPT to the
//!   end of the disk and formats data; root_b is written by the first update;
//! - `SHA256SUMS`: `sha256sum` format, which the provisioner reads to put
//!   each file's sum on the kernel command line.
//!
//! `rootfs.squashfs` is a hard link to `slot.img` (a copy when the output
//! directory cannot hold links); `install.img` is a sparse copy.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::cmd::{StepError, io};
use crate::disk::{self, DiskError};
use crate::manifest::{self, Artifact};
use crate::progress::Progress;

/// The file names of a PXE set, in the order of its SHA256SUMS.
pub const FILES: [&str; 4] = ["vmlinuz", "initrd.img", "rootfs.squashfs", "install.img"];
/// The sums file.
pub const SUMS: &str = "SHA256SUMS";

/// Where the set's files come from.
#[derive(Debug)]
pub struct Sources<'a> {
    /// The kernel (the slot's /boot/vmlinuz).
    pub kernel: &'a Path,
    /// The initramfs (the slot's /boot/initrd.img).
    pub initrd: &'a Path,
    /// `slot.img` and its sum, computed once for the manifest.
    pub slot: (&'a Path, &'a Artifact),
    /// `disk.img`, and how much of it an install writes
    /// ([`crate::disk::install_len`]).
    pub disk: (&'a Path, u64),
}

/// Writes the set into `dir` (replacing an earlier one) and returns its sums
/// file's text.
pub fn write(dir: &Path, src: &Sources<'_>, progress: &Progress) -> Result<String, DiskError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io("Removing", dir))?;
    }
    std::fs::create_dir_all(dir).map_err(io("Creating", dir))?;
    let mut sums = String::new();
    for (name, from) in [("vmlinuz", src.kernel), ("initrd.img", src.initrd)] {
        let to = dir.join(name);
        // Small files: a copy, so that the set stays whole once the work
        // tree they come from is removed.
        std::fs::copy(from, &to).map_err(io("Copying", from))?;
        let a = manifest::artifact(&to, |_| {}).map_err(|e| io("Hashing", &to)(std::io::Error::other(e)))?;
        let _ = writeln!(sums, "{}  {name}", a.sha256);
    }
    link_or_copy(src.slot.0, &dir.join("rootfs.squashfs"))?;
    let _ = writeln!(sums, "{}  rootfs.squashfs", src.slot.1.sha256);
    let install = dir.join("install.img");
    disk::write_prefix(src.disk.0, &install, src.disk.1, progress)?;
    let a = manifest::artifact(&install, |_| {}).map_err(|e| io("Hashing", &install)(std::io::Error::other(e)))?;
    let _ = writeln!(sums, "{}  install.img", a.sha256);
    let path = dir.join(SUMS);
    std::fs::write(&path, &sums).map_err(io("Writing", &path))?;
    Ok(sums)
}

/// A hard link, or a copy where the file system cannot link.
pub fn link_or_copy(from: &Path, to: &Path) -> Result<(), StepError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map_err(io("Copying", from))?;
    Ok(())
}

/// The set's directory under an output directory.
pub fn dir(out: &Path) -> PathBuf {
    out.join("pxe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_set_with_its_sums() {
        let t = tempfile::tempdir().unwrap();
        let p = |n: &str| t.path().join(n);
        std::fs::write(p("k"), b"kernel").unwrap();
        std::fs::write(p("i"), b"initrd").unwrap();
        std::fs::write(p("slot.img"), b"slot").unwrap();
        std::fs::write(p("disk.img"), b"disk and the rest").unwrap();
        let slot = manifest::artifact(&p("slot.img"), |_| {}).unwrap();
        let src = Sources {
            kernel: &p("k"),
            initrd: &p("i"),
            slot: (&p("slot.img"), &slot),
            disk: (&p("disk.img"), 4),
        };
        let out = dir(t.path());
        // A stale file from an earlier build does not survive.
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("stale"), b"x").unwrap();
        let sums = write(&out, &src, &Progress::new(1)).unwrap();
        assert!(!out.join("stale").exists());
        let lines: Vec<&str> = sums.lines().collect();
        assert_eq!(lines.len(), 4);
        for (line, name) in lines.iter().zip(FILES) {
            let (sum, file) = line.split_once("  ").unwrap();
            assert_eq!(file, name);
            let a = manifest::artifact(&out.join(name), |_| {}).unwrap();
            assert_eq!(sum, a.sha256, "{name}");
        }
        assert_eq!(std::fs::read_to_string(out.join(SUMS)).unwrap(), sums);
        assert_eq!(std::fs::read(out.join("rootfs.squashfs")).unwrap(), b"slot");
        assert_eq!(std::fs::read(out.join("install.img")).unwrap(), b"disk");
    }
}
