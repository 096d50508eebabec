//! Trial boots, from the GRUB environment block RAUC's GRUB backend keeps.
//!
//! RAUC reports a slot's boot status, but while a freshly installed slot is
//! being tried (GRUB set `X_TRY=1` before booting it, and the boot gate has
//! not yet marked it good) RAUC 1.8 may still report it "good": the status it
//! shows is not proof that this boot was confirmed. The environment block is
//! what GRUB acts on at the next boot, so it is the truth: a slot with
//! `X_OK=1 X_TRY=1` is on trial and is skipped at the next boot unless it is
//! marked good first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where RAUC reads its system configuration.
pub const SYSTEM_CONF: &str = "/etc/rauc/system.conf";

/// The `grubenv` path of `system_conf` when its `[system]` section says
/// `bootloader=grub`; `None` for any other boot loader.
pub fn grubenv_path(system_conf: &str) -> Option<PathBuf> {
    let mut in_system = false;
    let (mut bootloader, mut grubenv) = (None, None);
    for line in system_conf.lines().map(str::trim) {
        if line.starts_with('[') {
            in_system = line == "[system]";
            continue;
        }
        if !in_system || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "bootloader" => bootloader = Some(v.trim().to_string()),
                "grubenv" => grubenv = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    // RAUC's default grubenv path when none is configured.
    (bootloader.as_deref() == Some("grub"))
        .then(|| PathBuf::from(grubenv.unwrap_or_else(|| "/boot/grub/grubenv".into())))
}

/// The variables of a GRUB environment block (`# GRUB Environment Block`,
/// then `KEY=VALUE` lines, padded with `#`).
pub fn parse(block: &str) -> BTreeMap<String, String> {
    block
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The boot names whose slot is on trial (`X_OK=1` and `X_TRY=1`).
pub fn trial_bootnames(env: &BTreeMap<String, String>) -> BTreeSet<String> {
    env.iter()
        .filter_map(|(k, v)| Some((k.strip_suffix("_TRY")?, v)))
        .filter(|(name, tried)| tried.trim() == "1" && env.get(&format!("{name}_OK")).map(|s| s.trim()) == Some("1"))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// The boot names on trial on this system, from `system_conf`'s GRUB
/// environment; empty for another boot loader. An error names the file.
pub fn read_trials(system_conf: &Path) -> Result<BTreeSet<String>, String> {
    let conf = match std::fs::read_to_string(system_conf) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(format!("Cannot read {}: {e}", system_conf.display())),
    };
    let Some(path) = grubenv_path(&conf) else {
        return Ok(BTreeSet::new());
    };
    let block =
        std::fs::read(&path).map_err(|e| format!("Cannot read the GRUB environment {}: {e}", path.display()))?;
    Ok(trial_bootnames(&parse(&String::from_utf8_lossy(&block))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "[system]\ncompatible=debvisor-node-x86_64\nbootloader=grub\n\
                        grubenv=/boot/efi/EFI/debvisor/grubenv\n\n[slot.rootfs.0]\nbootname=A\n";

    #[test]
    fn grubenv_path_from_system_conf() {
        assert_eq!(
            grubenv_path(CONF),
            Some(PathBuf::from("/boot/efi/EFI/debvisor/grubenv"))
        );
        assert_eq!(
            grubenv_path("[system]\nbootloader=grub\n"),
            Some(PathBuf::from("/boot/grub/grubenv"))
        );
        assert_eq!(grubenv_path("[system]\nbootloader=noop\ngrubenv=/x\n"), None);
        // A key of another section is not the system's.
        assert_eq!(grubenv_path("[slot.x]\nbootloader=grub\n"), None);
    }

    #[test]
    fn trials_are_ok_and_tried() {
        let mut block = "# GRUB Environment Block\nORDER=B A\nA_OK=1\nA_TRY=0\nB_OK=1\nB_TRY=1\n".to_string();
        block.push_str(&"#".repeat(1024 - block.len()));
        let env = parse(&block);
        assert_eq!(env.get("ORDER").map(String::as_str), Some("B A"));
        assert_eq!(trial_bootnames(&env), BTreeSet::from(["B".to_string()]));
        // Marked good: no trial.
        let env = parse("B_OK=1\nB_TRY=0\nA_OK=1\nA_TRY=0\n");
        assert!(trial_bootnames(&env).is_empty());
        // Bad (OK=0) is not a trial, whatever TRY says.
        let env = parse("B_OK=0\nB_TRY=1\n");
        assert!(trial_bootnames(&env).is_empty());
    }

    #[test]
    fn read_trials_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("grubenv");
        std::fs::write(&env, "# GRUB Environment Block\nA_OK=1\nA_TRY=1\n####").unwrap();
        let conf = dir.path().join("system.conf");
        std::fs::write(&conf, format!("[system]\nbootloader=grub\ngrubenv={}\n", env.display())).unwrap();
        assert_eq!(read_trials(&conf).unwrap(), BTreeSet::from(["A".to_string()]));
        std::fs::remove_file(&env).unwrap();
        let e = read_trials(&conf).unwrap_err();
        assert!(e.contains("grubenv"), "{e}");
        assert!(read_trials(&dir.path().join("none.conf")).unwrap().is_empty());
    }
}
