//! The USB installer: `installer.iso`, a hybrid image that boots from a CD
//! (El Torito, EFI) and from a stick it was written to raw (`dd`): its GPT
//! has the ISO 9660 file system as partition 1 and a small FAT ESP as
//! partition 2, which is also the El Torito EFI boot image.
//!
//! - The ESP holds only /EFI/BOOT/BOOTX64.EFI: GRUB with
//!   `firmware/grub/installer.cfg` embedded (the medium id, version and
//!   install.img's sha256 filled in). A machine config for the install,
//!   `machine.toml` with `[install] disk = "..."`, may be copied onto it
//!   (`mcopy -i installer.iso@@OFFSET`, or any file manager on a stick).
//! - The ISO 9660 file system (volume label `DVINST_<ID>`) holds
//!   /debvisor/vmlinuz, /debvisor/initrd.img (the slot's own: the initramfs
//!   does the install), /debvisor/install.img (as in the PXE set) and the
//!   marker /debvisor/<ID>.id by which GRUB and the initramfs find it.
//!
//! The medium's id derives from the image's name and version, so a rebuild
//! of the same version gives the same id.

use std::path::{Path, PathBuf};

use crate::cmd::{self, StepError, command, io, tool};
use crate::disk::{self, DiskError, Fat};

/// The file name of the installer image.
pub const FILE: &str = "installer.iso";
/// Size of the installer's ESP (FAT16): GRUB's binary is about 4 MiB.
const ESP_BYTES: u64 = 16 * 1024 * 1024;
/// GRUB modules of the installer's BOOTX64.EFI.
const GRUB_MODULES: &str = "part_gpt part_msdos fat iso9660 search search_fs_file linux normal test echo sleep gzio \
                            all_video chain efifwsetup";
/// GPT type of the ISO 9660 partition (Microsoft basic data, as xorriso's
/// own examples use: firmware and operating systems leave it alone).
const ISO_PART_TYPE: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";

/// The medium's id: 8 upper-case hex digits from `seed` (name and version).
pub fn medium_id(seed: &str) -> String {
    disk::uuid_from(seed, "installer")[..8].to_uppercase()
}

/// The ISO 9660 volume label of the medium `id`, which the initramfs looks
/// for (`debvisor.medium=`).
pub fn volume_label(id: &str) -> String {
    format!("DVINST_{id}")
}

/// What goes into the installer.
#[derive(Debug)]
pub struct Sources<'a> {
    /// The slot's kernel and initramfs.
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The PXE set's install.img and its sha256.
    pub install: (&'a Path, &'a str),
    /// `firmware/grub/installer.cfg`.
    pub grub_cfg: &'a Path,
    /// The image's version, shown in the boot menu.
    pub version: &'a str,
}

/// Fills in installer.cfg's placeholders; every value is checked to be
/// safe inside GRUB's quotes.
pub fn render_cfg(template: &str, id: &str, version: &str, sha256: &str) -> Result<String, StepError> {
    let bad = |what: &str, v: &str| {
        cmd::io("Rendering the installer's GRUB config", Path::new("installer.cfg"))(std::io::Error::other(format!(
            "{what} {v:?} has characters GRUB would not take literally"
        )))
    };
    let plain = |v: &str| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '~'))
    };
    if !plain(id) {
        return Err(bad("medium id", id));
    }
    if !plain(version) {
        return Err(bad("version", version));
    }
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad("sha256", sha256));
    }
    for placeholder in ["@ID@", "@VERSION@", "@SHA@"] {
        if !template.contains(placeholder) {
            return Err(cmd::io(
                "Rendering the installer's GRUB config",
                Path::new("installer.cfg"),
            )(std::io::Error::other(format!(
                "the template has no {placeholder}"
            ))));
        }
    }
    Ok(template
        .replace("@ID@", id)
        .replace("@VERSION@", version)
        .replace("@SHA@", sha256))
}

/// Builds `out/installer.iso` from `src`, using `work` for its parts.
/// Returns its path.
pub fn write(out: &Path, work: &Path, seed: &str, src: &Sources<'_>) -> Result<PathBuf, DiskError> {
    let id = medium_id(seed);
    let dir = work.join("installer");
    std::fs::create_dir_all(&dir).map_err(io("Creating", &dir))?;

    let template = std::fs::read_to_string(src.grub_cfg).map_err(io("Reading", src.grub_cfg))?;
    let cfg = dir.join("installer.cfg");
    std::fs::write(&cfg, render_cfg(&template, &id, src.version, src.install.1)?).map_err(io("Writing", &cfg))?;
    let bootx64 = dir.join("BOOTX64.EFI");
    disk::make_grub_efi(&cfg, GRUB_MODULES, &bootx64)?;
    let esp = dir.join("installer-esp.img");
    disk::make_fat(
        &esp,
        ESP_BYTES,
        &Fat {
            bits: 16,
            label: &format!("DVI{id}"),
            volume_id: &id,
            dirs: &["/EFI", "/EFI/BOOT"],
            files: &[(&bootx64, "/EFI/BOOT/BOOTX64.EFI")],
        },
    )?;
    let marker = dir.join("marker.id");
    std::fs::write(&marker, format!("DebVisor installer {} {id}\n", src.version)).map_err(io("Writing", &marker))?;

    let iso = out.join(FILE);
    let _ = std::fs::remove_file(&iso);
    let graft = |name: &str, from: &Path| {
        let mut s = std::ffi::OsString::from(format!("/debvisor/{name}="));
        s.push(from);
        s
    };
    let disk_guid = disk::uuid_from(seed, "installer-gpt");
    let mut c = command(
        "xorriso",
        ["-as", "mkisofs", "-quiet", "-no-pad", "-iso-level", "3", "-r", "-V"],
    );
    c.arg(volume_label(&id))
        .arg("-o")
        .arg(&iso)
        .args(["--gpt_disk_guid", &disk_guid, "-partition_offset", "16"])
        .args(["-append_partition", "2", disk::ESP_TYPE])
        .arg(&esp)
        .args(["-appended_part_as_gpt", "-iso_mbr_part_type", ISO_PART_TYPE])
        .args([
            "-c",
            "/debvisor/boot.cat",
            "-e",
            "--interval:appended_partition_2:all::",
            "-no-emul-boot",
        ])
        .arg("-graft-points")
        .arg(graft("vmlinuz", src.kernel))
        .arg(graft("initrd.img", src.initrd))
        .arg(graft("install.img", src.install.0))
        .arg(graft(&format!("{id}.id"), &marker));
    cmd::run(&mut c).map_err(tool("Writing installer.iso with xorriso"))?;
    Ok(iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "5b701fa47ea6cc8f32d7b9d1e8fc9c0382019b7fdf9ac3e11af3c77a9c521057";

    #[test]
    fn the_shipped_config_renders_with_every_placeholder_filled() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/grub/installer.cfg");
        let template = std::fs::read_to_string(root).unwrap();
        let cfg = render_cfg(&template, "0A1B2C3D", "0.1.0", SHA).unwrap();
        assert!(!cfg.contains('@'), "{cfg}");
        assert!(cfg.contains("search --no-floppy --file --set=medium /debvisor/0A1B2C3D.id"));
        assert!(cfg.contains("debvisor.medium=DVINST_0A1B2C3D"));
        assert!(cfg.contains(&format!("debvisor.install_sha256={SHA}")));
    }

    #[test]
    fn values_that_grub_would_interpret_are_refused() {
        let t = "@ID@ @VERSION@ @SHA@";
        assert!(render_cfg(t, "0A1B2C3D", "1.0\"; reboot", SHA).is_err());
        assert!(render_cfg(t, "0A1B2C3D", "1.0 $x", SHA).is_err());
        assert!(render_cfg(t, "", "1.0", SHA).is_err());
        assert!(render_cfg(t, "0A1B2C3D", "1.0", "abc").is_err());
        assert!(
            render_cfg("@ID@ @SHA@", "0A1B2C3D", "1.0", SHA).is_err(),
            "missing @VERSION@"
        );
    }

    #[test]
    fn the_medium_id_is_stable_and_a_valid_iso_label() {
        let id = medium_id("debvisor-node\u{0}0.1.0");
        assert_eq!(id, medium_id("debvisor-node\u{0}0.1.0"));
        assert_ne!(id, medium_id("debvisor-node\u{0}0.1.1"));
        let label = volume_label(&id);
        assert_eq!(label.len(), 15);
        assert!(
            label
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        );
    }
}
