//! The benchmark's peer: a plain minbase Debian with the same kernel
//! package, built with mmdebstrap from the host's apt mirror and cached under
//! target/debvisor-cache/peer/: an ext4 root for `-kernel/-initrd` boots and
//! a GPT disk (ESP with a standalone GRUB, the kernel and initrd; the same
//! ext4 root) for boots through OVMF like the node's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::node::Paths;
use crate::qemu::require_tools;

/// The peer's mirror: `DEBVISOR_MIRROR`, else the host's apt sources (the
/// image builder's own lookup, so node and peer come from the same place).
fn host_mirror() -> Result<String> {
    let explicit = std::env::var("DEBVISOR_MIRROR").ok();
    Ok(debvisor_image::mirror::resolve(explicit.as_deref(), "bookworm")?)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("Cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The peer: a plain minbase Debian with the same kernel package, cached
/// under target/debvisor-cache/peer/. Returns (dir, build seconds if built).
pub fn peer_image(paths: &Paths) -> Result<(PathBuf, Option<f64>)> {
    let dir = paths.cache().join("peer");
    let done = ["root.ext4", "vmlinuz", "initrd.img"]
        .iter()
        .all(|f| dir.join(f).exists());
    if done {
        return Ok((dir, None));
    }
    require_tools(&[("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs")])?;
    let mirror = host_mirror()?;
    let t = Instant::now();
    std::fs::create_dir_all(&dir)?;
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    eprintln!("Building the peer rootfs from {mirror}");
    run(Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--include=linux-image-amd64,systemd-sysv,udev",
            "--customize-hook=echo peer > \"$1/etc/hostname\"",
            // A known root password so the harness can log in on the console.
            "--customize-hook=echo root:peer | chroot \"$1\" chpasswd",
            "bookworm",
        ])
        .arg(&rootfs)
        .arg(&mirror))?;
    let boot = rootfs.join("boot");
    let pick = |prefix: &str| -> Result<PathBuf> {
        std::fs::read_dir(&boot)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("No {prefix}* in {}", boot.display()))
    };
    std::fs::copy(pick("vmlinuz-")?, dir.join("vmlinuz"))?;
    std::fs::copy(pick("initrd.img-")?, dir.join("initrd.img"))?;
    let ext4 = dir.join("root.ext4.tmp");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&rootfs)
        .arg(&ext4)
        .arg("2G"))?;
    std::fs::rename(&ext4, dir.join("root.ext4"))?;
    std::fs::remove_dir_all(&rootfs)?;
    Ok((dir, Some(t.elapsed().as_secs_f64())))
}

/// GRUB's embedded configuration: kernel and initrd from the ESP.
const GRUB_CFG: &str = "set timeout=0
search --no-floppy --file --set=root /vmlinuz
linux /vmlinuz root=/dev/vda2 rw console=ttyS0,115200
initrd /initrd.img
boot
";

/// A GPT disk for booting the peer through OVMF: partition 1 an ESP with a
/// standalone GRUB, the kernel and the initrd; partition 2 the ext4 root.
/// Built once next to the ext4 root.
pub fn peer_uefi_disk(dir: &Path) -> Result<PathBuf> {
    let disk = dir.join("uefi.img");
    if disk.exists() {
        return Ok(disk);
    }
    require_tools(&[
        ("grub-mkstandalone", "grub-common grub-efi-amd64-bin"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("sfdisk", "fdisk"),
    ])?;
    let tmp = dir.join("uefi-build");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let cfg = tmp.join("grub.cfg");
    std::fs::write(&cfg, GRUB_CFG)?;
    let efi = tmp.join("BOOTX64.EFI");
    run(Command::new("grub-mkstandalone")
        .args([
            "-O",
            "x86_64-efi",
            "--modules=part_gpt fat ext2 linux normal search search_fs_file",
            "-o",
        ])
        .arg(&efi)
        .arg(format!("boot/grub/grub.cfg={}", cfg.display())))?;
    let esp_mib = 128u64;
    let esp = tmp.join("esp.img");
    run(Command::new("mkfs.vfat")
        .args(["-n", "PEER-ESP", "-C"])
        .arg(&esp)
        .arg((esp_mib * 1024).to_string()))?;
    let img = |p: &Path| format!("-i{}", p.display());
    run(Command::new("mmd").arg(img(&esp)).args(["::/EFI", "::/EFI/BOOT"]))?;
    for (src, to) in [
        (efi.clone(), "::/EFI/BOOT/BOOTX64.EFI"),
        (dir.join("vmlinuz"), "::/vmlinuz"),
        (dir.join("initrd.img"), "::/initrd.img"),
    ] {
        run(Command::new("mcopy").arg(img(&esp)).arg(&src).arg(to))?;
    }
    let root = dir.join("root.ext4");
    let root_mib = std::fs::metadata(&root)?.len().div_ceil(1 << 20);
    let out = tmp.join("uefi.img");
    let f = std::fs::File::create(&out)?;
    f.set_len((1 + esp_mib + root_mib + 1) << 20)?;
    drop(f);
    let script = format!(
        "label: gpt\nstart=1MiB, size={esp_mib}MiB, type=U\nstart={}MiB, size={root_mib}MiB, type=L\n",
        1 + esp_mib
    );
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&out)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("Cannot run sfdisk")?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .context("sfdisk stdin")?
        .write_all(script.as_bytes())?;
    if !child.wait()?.success() {
        bail!("sfdisk failed on {}", out.display());
    }
    for (part, at) in [(&esp, 1), (&root, 1 + esp_mib)] {
        run(Command::new("dd")
            .arg(format!("if={}", part.display()))
            .arg(format!("of={}", out.display()))
            .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
            .arg(format!("seek={at}")))?;
    }
    std::fs::rename(&out, &disk)?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(disk)
}
