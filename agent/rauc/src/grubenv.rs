//! Trial boots, from the GRUB environment block RAUC's GRUB backend keeps.
//!
//! RAUC reports a slot "good" only when `X_OK=1` and `X_TRY=0`, so while a
//! freshly installed slot is being tried (GRUB set `X_TRY=1` before booting
//! it, and the boot gate has not yet marked it good) RAUC calls the booted
//! slot "bad", the same word it uses for a slot that failed. The environment
//! block tells the two apart: the booted slot with `X_OK=1 X_TRY=1` is on
//! trial, and GRUB skips it at the next boot unless it is marked good first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where RAUC 1.8 reads its system configuration.
pub const SYSTEM_CONF: &str = "/etc/rauc/system.conf";

/// Size of a GRUB environment block as grub-editenv writes it.
pub const BLOCK_SIZE: usize = 1024;
/// The first line of a GRUB environment block.
const HEADER: &str = "# GRUB Environment Block\n";

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

/// The GRUB environment of the system configured in `system_conf` (`None`
/// for another boot loader). An error names the file: RAUC cannot run
/// without its system configuration, so a missing one is an error too.
pub fn grubenv_of(system_conf: &Path) -> Result<Option<PathBuf>, String> {
    let conf = std::fs::read_to_string(system_conf)
        .map_err(|e| format!("Cannot read RAUC's system configuration {}: {e}", system_conf.display()))?;
    Ok(grubenv_path(&conf))
}

/// The variables of a GRUB environment block: the header line, then
/// `KEY=VALUE` lines, padded with `#` (to 1024 bytes as grub-editenv
/// writes it). A file without the header (truncated, or not an environment
/// block) is an error, as it is to GRUB.
pub fn parse(block: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let text = std::str::from_utf8(block).map_err(|e| format!("is not text ({e}), not a GRUB environment block"))?;
    if !text.starts_with(HEADER) {
        return Err(format!(
            "does not start with {:?} ({} bytes): not a GRUB environment block",
            HEADER.trim_end(),
            block.len()
        ));
    }
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The boot names whose slot is on trial or failed one (`X_OK=1` and
/// `X_TRY=1`): the booted one among them is on trial.
pub fn tried_bootnames(env: &BTreeMap<String, String>) -> BTreeSet<String> {
    env.iter()
        .filter_map(|(k, v)| Some((k.strip_suffix("_TRY")?, v)))
        .filter(|(name, tried)| tried.trim() == "1" && env.get(&format!("{name}_OK")).map(|s| s.trim()) == Some("1"))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// The variables of the GRUB environment at `grubenv`. An error names the
/// file.
pub fn read(grubenv: &Path) -> Result<BTreeMap<String, String>, String> {
    let block =
        std::fs::read(grubenv).map_err(|e| format!("Cannot read the GRUB environment {}: {e}", grubenv.display()))?;
    parse(&block).map_err(|e| format!("The GRUB environment {} {e}", grubenv.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "[system]\ncompatible=debvisor-node-x86_64\nbootloader=grub\n\
                        grubenv=/boot/efi/EFI/debvisor/grubenv\n\n[slot.rootfs.0]\nbootname=A\n";

    fn block(vars: &str) -> Vec<u8> {
        let mut b = format!("{HEADER}{vars}").into_bytes();
        b.resize(BLOCK_SIZE, b'#');
        b
    }

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
    fn tried_are_ok_and_try() {
        let env = parse(&block("ORDER=B A\nA_OK=1\nA_TRY=0\nB_OK=1\nB_TRY=1\n")).unwrap();
        assert_eq!(env.get("ORDER").map(String::as_str), Some("B A"));
        assert_eq!(tried_bootnames(&env), BTreeSet::from(["B".to_string()]));
        // Marked good: no trial.
        let env = parse(&block("B_OK=1\nB_TRY=0\nA_OK=1\nA_TRY=0\n")).unwrap();
        assert!(tried_bootnames(&env).is_empty());
        // Bad (OK=0) is not a trial, whatever TRY says.
        let env = parse(&block("B_OK=0\nB_TRY=1\n")).unwrap();
        assert!(tried_bootnames(&env).is_empty());
    }

    #[test]
    fn only_blocks_with_the_header_parse() {
        // grub-editenv writes 1024 bytes; GRUB itself checks the header.
        let short = parse(b"# GRUB Environment Block\nA_OK=1\nA_TRY=1\n").unwrap();
        assert_eq!(tried_bootnames(&short), BTreeSet::from(["A".to_string()]));
        let mut foreign = b"A_OK=1\nA_TRY=1\n".to_vec();
        foreign.resize(BLOCK_SIZE, b'#');
        let e = parse(&foreign).unwrap_err();
        assert!(e.contains("GRUB Environment Block"), "{e}");
        let mut binary = block("");
        binary[100] = 0xff;
        assert!(parse(&binary).unwrap_err().contains("not text"));
    }

    #[test]
    fn reading_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("grubenv");
        std::fs::write(&env, block("A_OK=1\nA_TRY=1\n")).unwrap();
        let conf = dir.path().join("system.conf");
        std::fs::write(&conf, format!("[system]\nbootloader=grub\ngrubenv={}\n", env.display())).unwrap();
        assert_eq!(grubenv_of(&conf).unwrap(), Some(env.clone()));
        assert_eq!(tried_bootnames(&read(&env).unwrap()), BTreeSet::from(["A".to_string()]));
        std::fs::write(&env, b"A_OK=1\n").unwrap();
        let e = read(&env).unwrap_err();
        assert!(e.contains("grubenv") && e.contains("GRUB Environment Block"), "{e}");
        std::fs::remove_file(&env).unwrap();
        let e = read(&env).unwrap_err();
        assert!(e.contains("grubenv"), "{e}");
        let e = grubenv_of(&dir.path().join("none.conf")).unwrap_err();
        assert!(e.contains("none.conf"), "{e}");
    }
}
