//! Builds the initramfs inside the root with the DebVisor boot script, and
//! puts the kernel and initrd at the fixed paths GRUB loads from the slot.

use std::path::{Path, PathBuf};

use crate::cmd::{self, StepError, command, io};

/// Errors while making the initrd.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// A tool or a file operation failed.
    #[error(transparent)]
    Step(#[from] StepError),
    /// The root has no kernel, or more than one.
    #[error("Expected exactly one kernel in {dir}, found {found:?}")]
    Kernel {
        /// Directory searched.
        dir: PathBuf,
        /// Versions found.
        found: Vec<String>,
    },
}

/// Finds the one kernel version installed in `root`.
pub fn kernel_version(root: &Path) -> Result<String, InitrdError> {
    let dir = root.join("usr/lib/modules");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .map_err(io("Reading", &dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("modules.dep").exists() || e.path().join("kernel").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    if found.len() == 1 {
        Ok(found.remove(0))
    } else {
        Err(InitrdError::Kernel { dir, found })
    }
}

/// Installs `firmware/initramfs` (hooks, scripts, conf.d and the module list)
/// into the root's /etc/initramfs-tools.
pub fn install_config(firmware: &Path, extra_modules: &[String], root: &Path) -> Result<(), InitrdError> {
    let src = firmware.join("initramfs");
    let dst = root.join("etc/initramfs-tools");
    for sub in ["hooks", "scripts", "conf.d"] {
        let from = src.join(sub);
        if !from.is_dir() {
            continue;
        }
        let mut from_dot = from.clone().into_os_string();
        from_dot.push("/.");
        let to = dst.join(sub);
        std::fs::create_dir_all(&to).map_err(io("Creating", &to))?;
        cmd::run(&mut command(
            "cp",
            [
                "--recursive".as_ref(),
                "--preserve=mode".as_ref(),
                from_dot.as_os_str(),
                to.as_os_str(),
            ],
        ))
        .map_err(|source| StepError::Tool {
            what: format!("Copying {}", from.display()),
            source,
        })?;
    }
    let list = src.join("modules");
    let mut modules = std::fs::read_to_string(&list).map_err(io("Reading", &list))?;
    if !modules.ends_with('\n') {
        modules.push('\n');
    }
    for m in extra_modules {
        modules.push_str(m);
        modules.push('\n');
    }
    let out = dst.join("modules");
    Ok(std::fs::write(&out, modules).map_err(io("Writing", &out))?)
}

/// Mounts of /proc, /sys and /dev inside a root, undone on drop (also when
/// the build fails or panics).
#[derive(Debug)]
pub struct ChrootMounts {
    mounted: Vec<PathBuf>,
}

impl ChrootMounts {
    /// Mounts proc, sysfs and a bind of /dev under `root`.
    pub fn new(root: &Path) -> Result<Self, InitrdError> {
        let mut guard = Self { mounted: Vec::new() };
        let specs: [(&[&str], &str); 3] = [
            (&["-t", "proc", "proc"], "proc"),
            (&["-t", "sysfs", "sysfs"], "sys"),
            (&["--bind", "/dev"], "dev"),
        ];
        for (args, dir) in specs {
            let target = root.join(dir);
            let mut argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
            argv.push(target.as_os_str());
            cmd::run(&mut command("mount", argv)).map_err(|source| StepError::Tool {
                what: format!("Mounting {}", target.display()),
                source,
            })?;
            guard.mounted.push(target);
        }
        Ok(guard)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        while let Some(target) = self.mounted.pop() {
            if cmd::run(&mut command("umount", [&target])).is_err() {
                let lazy = cmd::run(&mut command("umount", ["--lazy".as_ref(), target.as_os_str()]));
                if lazy.is_err() {
                    eprintln!("warning: could not unmount {}", target.display());
                }
            }
        }
    }
}

/// Runs mkinitramfs in the root for `kver`, then makes /boot/vmlinuz and
/// /boot/initrd.img real files (hard links) for GRUB. Returns the initrd size.
pub fn build(root: &Path, kver: &str) -> Result<u64, InitrdError> {
    let boot = root.join("boot");
    let initrd_name = format!("initrd.img-{kver}");
    {
        let _mounts = ChrootMounts::new(root)?;
        let mut c = command(
            "chroot",
            [
                root.as_os_str(),
                "mkinitramfs".as_ref(),
                "-o".as_ref(),
                format!("/boot/{initrd_name}").as_ref(),
                kver.as_ref(),
            ],
        );
        c.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("LC_ALL", "C.UTF-8");
        cmd::run(&mut c).map_err(|source| StepError::Tool {
            what: format!("Running mkinitramfs for kernel {kver}"),
            source,
        })?;
    }
    for (src, dst) in [(format!("vmlinuz-{kver}"), "vmlinuz"), (initrd_name, "initrd.img")] {
        let from = boot.join(&src);
        let to = boot.join(dst);
        if to.exists() || to.is_symlink() {
            std::fs::remove_file(&to).map_err(io("Removing", &to))?;
        }
        std::fs::hard_link(&from, &to).map_err(io("Linking", &from))?;
    }
    let initrd = boot.join("initrd.img");
    Ok(std::fs::metadata(&initrd).map_err(io("Reading", &initrd))?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_one_kernel() {
        let dir = std::env::temp_dir().join(format!("dv-kver-{}", std::process::id()));
        let mods = dir.join("usr/lib/modules");
        std::fs::create_dir_all(mods.join("6.1.0-1-amd64/kernel")).unwrap();
        assert_eq!(kernel_version(&dir).unwrap(), "6.1.0-1-amd64");
        std::fs::create_dir_all(mods.join("6.1.0-2-amd64/kernel")).unwrap();
        assert!(matches!(kernel_version(&dir), Err(InitrdError::Kernel { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shipped_module_list_has_the_boot_essentials() {
        let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/initramfs/modules");
        let text = std::fs::read_to_string(list).unwrap();
        for m in ["squashfs", "overlay", "virtio_blk", "ext4", "vfat"] {
            assert!(text.lines().any(|l| l.trim() == m), "{m} missing");
        }
    }
}
