//! The raw GPT disk image: `esp | root_a | root_b | data`, made without loop
//! devices: sfdisk on a file, `mkfs.vfat -C` plus mtools for the ESP, and
//! sparse writes of each partition's content at its offset.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::cmd::{self, StepError, command, io, tool};
use crate::progress::Progress;
use crate::recipe::DiskSection;

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Generic Linux data: systemd's gpt-auto-generator leaves these alone.
const LINUX_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Errors while making the disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A tool or a file operation failed.
    #[error(transparent)]
    Step(#[from] StepError),
    /// The slot does not fit in its partition.
    #[error("Slot image is {slot} bytes but [disk] root_mib gives only {part} bytes; raise root_mib")]
    SlotTooBig {
        /// Slot size.
        slot: u64,
        /// Partition size.
        part: u64,
    },
}

/// One partition, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// PARTLABEL.
    pub label: &'static str,
    /// Offset from the start of the disk.
    pub start: u64,
    /// Size.
    pub size: u64,
    /// GPT type GUID.
    pub type_guid: &'static str,
}

/// Where the partitions go.
#[derive(Debug, Clone)]
pub struct Layout {
    /// esp, root_a, root_b, data in order (GPT numbers 1-4).
    pub parts: Vec<Partition>,
    /// Whole disk size (room for the backup GPT at the end).
    pub total: u64,
}

impl Layout {
    /// Lays the partitions out, 1 MiB aligned.
    pub fn new(d: &DiskSection) -> Self {
        let mut start = MIB;
        let mut parts = Vec::new();
        for (label, mib, type_guid) in [
            ("esp", d.esp_mib, ESP_TYPE),
            ("root_a", d.root_mib, LINUX_TYPE),
            ("root_b", d.root_mib, LINUX_TYPE),
            ("data", d.data_mib, LINUX_TYPE),
        ] {
            let size = mib * MIB;
            parts.push(Partition {
                label,
                start,
                size,
                type_guid,
            });
            start += size;
        }
        Self {
            parts,
            total: start + MIB,
        }
    }

    /// The partition with `label`.
    pub fn part(&self, label: &str) -> &Partition {
        self.parts.iter().find(|p| p.label == label).expect("known label")
    }

    /// The sfdisk script; UUIDs derive from `seed` so that a rebuild of the
    /// same image yields the same disk.
    pub fn sfdisk_script(&self, seed: &str) -> String {
        let mut s = format!(
            "label: gpt\nunit: sectors\nfirst-lba: 2048\nlabel-id: {}\n\n",
            uuid_from(seed, "disk")
        );
        for p in &self.parts {
            s.push_str(&format!(
                "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
                p.start / SECTOR,
                p.size / SECTOR,
                p.type_guid,
                uuid_from(seed, p.label),
                p.label
            ));
        }
        s
    }
}

/// A version-4-shaped UUID derived from a hash of `seed` and `what`.
pub fn uuid_from(seed: &str, what: &str) -> String {
    let h = Sha256::digest(format!("{seed}\0{what}"));
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b).to_uppercase();
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Files that go on the ESP.
#[derive(Debug)]
pub struct EspFiles<'a> {
    /// Standalone GRUB, installed as /EFI/BOOT/BOOTX64.EFI.
    pub bootx64: &'a Path,
    /// A/B script, /EFI/debvisor/grub.cfg.
    pub grub_cfg: &'a Path,
    /// Environment block, /EFI/debvisor/grubenv.
    pub grubenv: &'a Path,
}

/// GRUB modules of the node's BOOTX64.EFI.
const NODE_GRUB_MODULES: &str =
    "part_gpt fat squash4 xzio gzio linux normal configfile regexp test loadenv echo all_video";

/// Builds the node's standalone GRUB EFI binary with `embedded_cfg` as its
/// config.
pub fn make_bootx64(embedded_cfg: &Path, out: &Path) -> Result<(), DiskError> {
    make_grub_efi(embedded_cfg, NODE_GRUB_MODULES, out)
}

/// Builds a standalone GRUB EFI binary (x86_64) holding `modules` (space
/// separated) with `embedded_cfg` as its config.
pub fn make_grub_efi(embedded_cfg: &Path, modules: &str, out: &Path) -> Result<(), DiskError> {
    let mut cfg_arg = std::ffi::OsString::from("boot/grub/grub.cfg=");
    cfg_arg.push(embedded_cfg);
    let modules = format!("--modules={modules}");
    cmd::run(&mut command(
        "grub-mkstandalone",
        [
            "--format=x86_64-efi".as_ref(),
            "--output".as_ref(),
            out.as_os_str(),
            modules.as_ref(),
            "--locales=".as_ref(),
            "--fonts=".as_ref(),
            "--themes=".as_ref(),
            cfg_arg.as_os_str(),
        ],
    ))
    .map_err(tool("Building BOOTX64.EFI with grub-mkstandalone"))?;
    Ok(())
}

/// A FAT file system image to make with [`make_fat`].
#[derive(Debug)]
pub struct Fat<'a> {
    /// 16 or 32.
    pub bits: u8,
    /// Volume label (at most 11 characters).
    pub label: &'a str,
    /// Volume id, 8 hex digits.
    pub volume_id: &'a str,
    /// Directories to create, parents first (`/EFI`, `/EFI/BOOT`).
    pub dirs: &'a [&'a str],
    /// Files: (source, path in the image).
    pub files: &'a [(&'a Path, &'a str)],
}

/// Makes a FAT image of `size` bytes at `out` (mkfs.vfat, then mtools).
pub fn make_fat(out: &Path, size: u64, fat: &Fat<'_>) -> Result<(), DiskError> {
    let _ = std::fs::remove_file(out);
    let kib = (size / 1024).to_string();
    let bits = fat.bits.to_string();
    cmd::run(&mut command(
        "mkfs.vfat",
        [
            "-C".as_ref(),
            "-F".as_ref(),
            bits.as_ref(),
            "-n".as_ref(),
            fat.label.as_ref(),
            "-i".as_ref(),
            fat.volume_id.as_ref(),
            out.as_os_str(),
            kib.as_ref(),
        ],
    ))
    .map_err(tool(format!("Formatting {}", out.display())))?;
    let img = out.as_os_str();
    if !fat.dirs.is_empty() {
        let mut mmd = command("mmd", ["-i".as_ref(), img]);
        mmd.args(fat.dirs.iter().map(|d| format!("::{d}")));
        mmd.env("MTOOLS_SKIP_CHECK", "1");
        cmd::run(&mut mmd).map_err(tool(format!("Creating directories in {}", out.display())))?;
    }
    for (src, dst) in fat.files {
        let dst = format!("::{dst}");
        let mut c = command("mcopy", ["-i".as_ref(), img, src.as_os_str(), dst.as_ref()]);
        c.env("MTOOLS_SKIP_CHECK", "1");
        cmd::run(&mut c).map_err(tool(format!("Copying {} to {}", src.display(), out.display())))?;
    }
    Ok(())
}

/// Makes a FAT32 ESP image of `size` bytes at `out` holding `files`.
pub fn make_esp(out: &Path, size: u64, volume_id: &str, files: &EspFiles<'_>) -> Result<(), DiskError> {
    make_fat(
        out,
        size,
        &Fat {
            bits: 32,
            label: "DEBVISOR",
            volume_id,
            dirs: &["/EFI", "/EFI/BOOT", "/EFI/debvisor"],
            files: &[
                (files.bootx64, "/EFI/BOOT/BOOTX64.EFI"),
                (files.grub_cfg, "/EFI/debvisor/grub.cfg"),
                (files.grubenv, "/EFI/debvisor/grubenv"),
            ],
        },
    )
}

/// Creates the sparse disk image, partitions it and writes the ESP and the
/// slot (into root_a). root_b and data stay zero.
pub fn make_disk(
    layout: &Layout,
    seed: &str,
    out: &Path,
    esp: &Path,
    slot: &Path,
    progress: &Progress,
) -> Result<(), DiskError> {
    let slot_len = std::fs::metadata(slot).map_err(io("Reading", slot))?.len();
    let root_a = layout.part("root_a");
    if slot_len > root_a.size {
        return Err(DiskError::SlotTooBig {
            slot: slot_len,
            part: root_a.size,
        });
    }
    let _ = std::fs::remove_file(out);
    let file = File::create(out).map_err(io("Creating", out))?;
    file.set_len(layout.total).map_err(io("Sizing", out))?;
    drop(file);
    cmd::run_with_input(
        &mut command(
            "sfdisk",
            [
                "--quiet".as_ref(),
                "--no-reread".as_ref(),
                "--no-tell-kernel".as_ref(),
                out.as_os_str(),
            ],
        ),
        Some(layout.sfdisk_script(seed).as_bytes()),
    )
    .map_err(tool("Partitioning the disk image"))?;
    copy_into(esp, out, layout.part("esp").start, progress, "esp")?;
    copy_into(slot, out, root_a.start, progress, "root_a")?;
    Ok(())
}

/// How much of the disk image an installer must write: the GPT, the ESP and
/// root_a up to the end of the slot. root_b is written by the first update,
/// data is formatted by the installer, and the backup GPT is put at the end
/// of the real disk afterwards (`sfdisk --relocate gpt-bak-std`).
pub fn install_len(layout: &Layout, slot_len: u64) -> u64 {
    (layout.part("root_a").start + slot_len).div_ceil(4096) * 4096
}

/// Writes the first `len` bytes of the disk image `disk` to `out` (sparse).
pub fn write_prefix(disk: &Path, out: &Path, len: u64, progress: &Progress) -> Result<(), DiskError> {
    let have = std::fs::metadata(disk).map_err(io("Reading", disk))?.len();
    if len > have {
        let short = std::io::Error::other(format!("it has {have} bytes, the install image needs {len}"));
        return Err(io("Cutting the install image from", disk)(short).into());
    }
    let _ = std::fs::remove_file(out);
    File::create(out)
        .and_then(|f| f.set_len(len))
        .map_err(io("Creating", out))?;
    copy_range(disk, len, out, 0, progress, "install.img")
}

/// Writes `src` into `dst` at `offset`, skipping all-zero blocks so `dst`
/// stays sparse, with a byte progress bar.
fn copy_into(src: &Path, dst: &Path, offset: u64, progress: &Progress, label: &str) -> Result<(), DiskError> {
    let len = std::fs::metadata(src).map_err(io("Reading", src))?.len();
    copy_range(src, len, dst, offset, progress, label)
}

/// Writes the first `len` bytes of `src` into `dst` at `offset` (sparse).
fn copy_range(
    src: &Path,
    len: u64,
    dst: &Path,
    offset: u64,
    progress: &Progress,
    label: &str,
) -> Result<(), DiskError> {
    let mut input = File::open(src).map_err(io("Opening", src))?.take(len);
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(io("Opening", dst))?;
    let bar = progress.bytes(&format!("writing {label}"), len);
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut pos = 0u64;
    loop {
        let n = read_full(&mut input, &mut buf).map_err(io("Reading", src))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        for (i, block) in chunk.chunks(64 * 1024).enumerate() {
            if block.iter().any(|&b| b != 0) {
                let at = offset + pos + (i * 64 * 1024) as u64;
                output.seek(SeekFrom::Start(at)).map_err(io("Seeking", dst))?;
                output.write_all(block).map_err(io("Writing", dst))?;
            }
        }
        pos += n as u64;
        bar.set_position(pos);
    }
    output.sync_all().map_err(io("Syncing", dst))?;
    bar.finish_and_clear();
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_ordered() {
        let l = Layout::new(&DiskSection {
            esp_mib: 64,
            root_mib: 768,
            data_mib: 64,
        });
        let labels: Vec<_> = l.parts.iter().map(|p| p.label).collect();
        assert_eq!(labels, ["esp", "root_a", "root_b", "data"]);
        assert_eq!(l.part("esp").start, MIB);
        assert_eq!(l.part("root_a").start, 65 * MIB);
        assert_eq!(l.part("data").start, (65 + 2 * 768) * MIB);
        assert_eq!(l.total, (65 + 2 * 768 + 64 + 1) * MIB);
        // The installer writes through the slot's last 4 KiB block.
        assert_eq!(install_len(&l, 4096 * 10 + 1), 65 * MIB + 4096 * 11);
        let script = l.sfdisk_script("node 1");
        assert!(script.contains("start=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B"));
        assert!(script.contains("name=\"root_b\""));
        assert_eq!(script, l.sfdisk_script("node 1"));
    }

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let u = uuid_from("x", "esp");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(u, uuid_from("x", "esp"));
        assert_ne!(u, uuid_from("x", "data"));
    }

    #[test]
    fn sparse_copy_lands_at_offset() {
        let dir = std::env::temp_dir().join(format!("dv-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let dst = dir.join("dst");
        let mut data = vec![0u8; 300 * 1024];
        data[200 * 1024] = 7;
        std::fs::write(&src, &data).unwrap();
        File::create(&dst).unwrap().set_len(MIB).unwrap();
        let p = Progress::new(1);
        copy_into(&src, &dst, 4096, &p, "t").unwrap();
        let out = std::fs::read(&dst).unwrap();
        assert_eq!(out[4096 + 200 * 1024], 7);
        assert_eq!(out.iter().filter(|&&b| b != 0).count(), 1);
        // The prefix is the first bytes, whole, and no more.
        let prefix = dir.join("prefix");
        write_prefix(&dst, &prefix, 4096 + 200 * 1024 + 1, &p).unwrap();
        assert_eq!(std::fs::read(&prefix).unwrap(), out[..4096 + 200 * 1024 + 1]);
        let err = write_prefix(&dst, &prefix, 2 * MIB, &p).unwrap_err().to_string();
        assert!(err.contains("Cutting the install image"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
