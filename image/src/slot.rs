//! The slot image: the whole root as a squashfs compressed with one of the
//! compressors GRUB 2.06 reads (gzip, xz, lzo; not zstd), since GRUB loads
//! the kernel and initrd from inside the slot.
//!
//! Squashfs packs file data end to end, so a file that grows or shrinks
//! moves everything written after it, and RAUC's adaptive mode (which finds
//! 4 KiB chunks of the new slot in the slots already on the node) then
//! finds nothing after that point. The builder therefore writes last what
//! changes from one release to the next (see [`LATE`]): the Debian base
//! keeps its offsets, and an update writes only the tail.

use std::path::{Path, PathBuf};

use crate::cmd::{self, StepError, command};
use crate::progress::Step;
use crate::recipe::Compression;

/// The slot could not be made.
#[derive(Debug, thiserror::Error)]
#[error("Making squashfs {out} from {root}")]
pub struct SlotError {
    root: PathBuf,
    out: PathBuf,
    #[source]
    source: Box<StepError>,
}

/// Paths (relative to the root) that change with every release: the boot
/// files (the initramfs is rebuilt), the configuration, package and
/// variable state, the release file. The builder adds the files it
/// installs itself (workspace binaries, overlays).
pub const LATE: &[&str] = &["boot", "etc", "var", "usr/lib/os-release"];

/// mksquashfs's sort file: each of `late` that exists under `root`, with a
/// priority below the default 0, so that it is written after the rest.
/// `root` must be absolute: mksquashfs ignores entries it cannot find.
fn sort_file(root: &Path, late: &[PathBuf]) -> String {
    late.iter()
        .map(|p| root.join(p))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| format!("{} -1000\n", p.display()))
        .collect()
}

/// Builds `out` from `root`, writing the paths `late` (relative to `root`)
/// after everything else. mksquashfs takes `SOURCE_DATE_EPOCH` from the
/// environment (file system time, and file times clamped to it).
pub fn build(
    root: &Path,
    out: &Path,
    compression: Compression,
    late: &[PathBuf],
    step: &Step,
) -> Result<u64, SlotError> {
    let err = |source| SlotError {
        root: root.to_owned(),
        out: out.to_owned(),
        source: Box::new(source),
    };
    let _ = std::fs::remove_file(out);
    let root = &std::path::absolute(root).map_err(|e| err(cmd::io("Resolving", root)(e)))?;
    let sort = root.with_file_name("squashfs.sort");
    std::fs::write(&sort, sort_file(root, late))
        .map_err(|e| err(cmd::io("Writing the mksquashfs sort file", &sort)(e)))?;
    let processors = std::thread::available_parallelism().map_or(2, |n| n.get()).to_string();
    let mut c = command(
        "mksquashfs",
        [
            root.as_os_str(),
            out.as_os_str(),
            "-noappend".as_ref(),
            "-comp".as_ref(),
            compression.as_str().as_ref(),
            "-processors".as_ref(),
            processors.as_ref(),
            "-no-progress".as_ref(),
            "-sort".as_ref(),
            sort.as_os_str(),
        ],
    );
    c.args(compression.options());
    // Build artefacts that must never reach an image (`-e` takes every
    // argument after it, so it comes last).
    c.args(["-wildcards", "-e", "var/cache/apt/archives/*.deb"]);
    cmd::run_streaming(&mut c, |line| step.detail(line)).map_err(|e| err(cmd::tool("mksquashfs")(e)))?;
    let output_err = |e| err(cmd::io("Reading the squashfs", out)(e));
    let mut len = std::fs::metadata(out).map_err(output_err)?.len();
    // mksquashfs pads to 4 KiB already; RAUC's block-hash-index needs it, so
    // make sure (zeros after the file system are ignored by squashfs).
    if len % 4096 != 0 {
        len = len.next_multiple_of(4096);
        std::fs::OpenOptions::new()
            .write(true)
            .open(out)
            .and_then(|f| f.set_len(len))
            .map_err(output_err)?;
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_file_lists_existing_late_paths_last() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/debvisor-agent"), b"").unwrap();
        let late = [PathBuf::from("etc"), "boot".into(), "usr/bin/debvisor-agent".into()];
        let sort = sort_file(root, &late);
        assert_eq!(
            sort,
            format!(
                "{} -1000\n{} -1000\n",
                root.join("etc").display(),
                root.join("usr/bin/debvisor-agent").display()
            ),
            "absolute paths (mksquashfs matches them by inode), missing ones left out"
        );
    }
}
