//! The slot image: the whole root as a squashfs compressed with one of the
//! compressors GRUB 2.06 reads (gzip, xz, lzo; not zstd), since GRUB loads
//! the kernel and initrd from inside the slot.

use std::path::{Path, PathBuf};

use crate::cmd::{self, CmdError, command};
use crate::progress::Step;
use crate::recipe::Compression;

/// The slot could not be made.
#[derive(Debug, thiserror::Error)]
#[error("Making squashfs {out} from {root}")]
pub struct SlotError {
    root: PathBuf,
    out: PathBuf,
    #[source]
    source: CmdError,
}

/// Builds `out` from `root`. mksquashfs takes `SOURCE_DATE_EPOCH` from the
/// environment (file system time, and file times clamped to it).
pub fn build(root: &Path, out: &Path, compression: Compression, step: &Step) -> Result<u64, SlotError> {
    let err = |source| SlotError {
        root: root.to_owned(),
        out: out.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(out);
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
            // Build artefacts that must never reach an image.
            "-wildcards".as_ref(),
            "-e".as_ref(),
            "var/cache/apt/archives/*.deb".as_ref(),
        ],
    );
    cmd::run_streaming(&mut c, |line| step.detail(line)).map_err(err)?;
    let output_err = |e| {
        err(CmdError::Spawn {
            program: "mksquashfs (output)".into(),
            source: e,
        })
    };
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
