//! A tiny guest for tests that run a real hypervisor: a BIOS-bootable ISO
//! (ISOLINUX, Debian's kernel, an initramfs holding only a static busybox)
//! whose serial console says [`READY`] and then runs a shell with the prompt
//! [`PROMPT`]. `poweroff -f` typed there powers the VM off.
//!
//! Everything comes from Debian's archive through the host's apt: the
//! versioned kernel package that `linux-image-amd64` depends on,
//! `busybox-static`, `isolinux` and `syslinux-common`, downloaded into the
//! builder's `apt-archives` cache and checked against the SHA-256 of apt's
//! (signed) index. The ISO is cached under `tiny-guest/KEY/tiny.iso`, KEY
//! naming the package files and the recipe.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::cfgdisk::run;
use crate::qemu::require_tools;

/// The line the guest prints on its serial console once its shell is about
/// to start.
#[cfg_attr(not(test), allow(dead_code))] // /init prints it (a unit test checks)
pub const READY: &str = "tiny guest ready";
/// The prompt of the guest's shell.
pub const PROMPT: &str = "tiny# ";
/// Bump when the ISO changes in a way [`INIT`] and [`ISOLINUX_CFG`] do not
/// show (layout, cpio contents): the cache key includes it.
const RECIPE: u32 = 1;

/// The initramfs's /init. The shell runs in the background of a fresh
/// session (so that `setsid` does not fork and return at once) with the
/// serial port as its controlling terminal; when it exits the VM powers off
/// rather than panicking PID 1.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/ PS1='tiny# '
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
hostname tiny
echo "tiny guest ready" > /dev/ttyS0
setsid cttyhack sh -i < /dev/ttyS0 > /dev/ttyS0 2>&1 &
wait $!
poweroff -f
"#;

/// ISOLINUX boots the one entry at once, console on the first serial port.
const ISOLINUX_CFG: &str = "\
DEFAULT tiny
PROMPT 0
TIMEOUT 1
LABEL tiny
  KERNEL /vmlinuz
  APPEND initrd=/initrd.img console=ttyS0,115200 quiet panic=-1
";

/// The packages besides the kernel, and the one member taken from each.
const PARTS: [(&str, &str); 3] = [
    ("busybox-static", "./bin/busybox"),
    ("isolinux", "./usr/lib/ISOLINUX/isolinux.bin"),
    ("syslinux-common", "./usr/lib/syslinux/modules/bios/ldlinux.c32"),
];

/// One package file as apt's index names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Deb {
    package: String,
    /// The file name `apt-get download` writes.
    file: String,
    sha256: String,
}

/// Returns the tiny guest's ISO, building it (and downloading its packages
/// into `cache/apt-archives`) unless it is cached. `cache` is the image
/// builder's cache directory (target/debvisor-cache).
pub fn iso(cache: &Path) -> Result<PathBuf> {
    require_tools(&[
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("sha256sum", "coreutils"),
        ("xorriso", "xorriso"),
    ])?;
    let archives = cache.join("apt-archives");
    let cached = |debs: &[Deb]| cache.join("tiny-guest").join(cache_key(debs)).join("tiny.iso");
    let debs = with_apt_update(resolve)?;
    let out = cached(&debs);
    if out.is_file() {
        return Ok(out);
    }
    // Resolved again after an update: the index may name newer files.
    let debs = with_apt_update(|| {
        let debs = resolve()?;
        fetch(&debs, &archives)?;
        Ok(debs)
    })?;
    let out = cached(&debs);
    if !out.is_file() {
        build(&debs, &archives, &out).with_context(|| format!("Cannot build the tiny guest {}", out.display()))?;
    }
    Ok(out)
}

/// Runs `f`; when it fails, runs `apt-get update` (the package lists may be
/// missing or stale) and `f` once more.
fn with_apt_update<T>(f: impl Fn() -> Result<T>) -> Result<T> {
    let first = match f() {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if let Err(e) = run(Command::new("apt-get").args(["update", "-q"])) {
        return Err(first.context(format!("apt-get update failed too (run it as root): {e:#}")));
    }
    f().context("After apt-get update")
}

/// The kernel package behind `linux-image-amd64` and the files of all four
/// packages, as the host's apt index has them.
fn resolve() -> Result<Vec<Deb>> {
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let kernel = kernel_package(&depends)
        .with_context(|| format!("apt-cache depends linux-image-amd64 names no kernel package: {depends}"))?;
    let mut packages = vec![kernel];
    packages.extend(PARTS.iter().map(|(p, _)| (*p).to_owned()));
    let uris = run(Command::new("apt-get")
        .args(["download", "--print-uris"])
        .args(&packages))?;
    let debs = parse_print_uris(&uris);
    packages
        .iter()
        .map(|p| {
            debs.iter()
                .find(|d| &d.package == p)
                .cloned()
                .with_context(|| format!("apt-get download --print-uris does not name {p}: {uris}"))
        })
        .collect()
}

/// `linux-image-6.1.0-NN-amd64` from `apt-cache depends linux-image-amd64`.
fn kernel_package(depends: &str) -> Option<String> {
    depends.lines().find_map(|l| {
        let name = l.trim().strip_prefix("Depends:")?.trim();
        name.starts_with("linux-image-").then(|| name.to_owned())
    })
}

/// Lines of `'URI' FILE SIZE SHA256:HEX`.
fn parse_print_uris(out: &str) -> Vec<Deb> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            let file = f.next()?;
            let sha256 = f.nth(1)?.strip_prefix("SHA256:")?;
            Some(Deb {
                package: file.split('_').next()?.to_owned(),
                file: file.to_owned(),
                sha256: sha256.to_ascii_lowercase(),
            })
        })
        .collect()
}

/// Short hash of the package files and the recipe.
fn cache_key(debs: &[Deb]) -> String {
    let mut h = Sha256::new();
    h.update(format!("recipe {RECIPE}\n"));
    for d in debs {
        h.update(format!("{}\n", d.file));
    }
    h.update(INIT);
    h.update(ISOLINUX_CFG);
    hex::encode(h.finalize())[..16].to_owned()
}

fn sha256_of(file: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(file))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

/// Downloads the packages not already in `archives` with the right hash.
fn fetch(debs: &[Deb], archives: &Path) -> Result<()> {
    std::fs::create_dir_all(archives).with_context(|| format!("Cannot create {}", archives.display()))?;
    let good = |d: &Deb| {
        let p = archives.join(&d.file);
        p.is_file() && sha256_of(&p).is_ok_and(|h| h == d.sha256)
    };
    let missing: Vec<&Deb> = debs.iter().filter(|d| !good(d)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for d in &missing {
        let _ = std::fs::remove_file(archives.join(&d.file));
    }
    run(Command::new("apt-get")
        .arg("download")
        .args(missing.iter().map(|d| &d.package))
        .current_dir(archives))?;
    for d in missing {
        if !good(d) {
            bail!(
                "apt-get download left no {} with SHA-256 {} in {}",
                d.file,
                d.sha256,
                archives.display()
            );
        }
    }
    Ok(())
}

/// Extracts the members of `deb` matching the tar wildcard `member` into
/// `dir`. Not `dpkg-deb -x`: the kernel package holds ~400 MB of modules
/// this guest has no use for.
fn extract(deb: &Path, member: &str, dir: &Path) -> Result<()> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("Cannot run dpkg-deb")?;
    let tar_in = dpkg.stdout.take().context("dpkg-deb has no stdout")?;
    let tar = run(Command::new("tar")
        .args(["-x", "--wildcards", "-C"])
        .arg(dir)
        .arg(member)
        .stdin(tar_in));
    let out = dpkg.wait_with_output().context("Cannot wait for dpkg-deb")?;
    tar.with_context(|| format!("Cannot extract {member} from {}", deb.display()))?;
    if !out.status.success() {
        bail!(
            "dpkg-deb --fsys-tarfile {} failed ({}): {}",
            deb.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Makes the ISO from the downloaded packages and moves it to `out`.
fn build(debs: &[Deb], archives: &Path, out: &Path) -> Result<()> {
    let dir = out.parent().context("The ISO path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("Cannot create {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(dir)
        .context("Cannot create a temporary directory")?;
    let x = tmp.path().join("x");
    std::fs::create_dir(&x)?;
    let (kernel, parts) = debs.split_first().context("No kernel package")?;
    extract(&archives.join(&kernel.file), "./boot/vmlinuz-*", &x)?;
    for (deb, (_, member)) in parts.iter().zip(PARTS) {
        extract(&archives.join(&deb.file), member, &x)?;
    }
    let vmlinuz = std::fs::read_dir(x.join("boot"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{} holds no /boot/vmlinuz-*", kernel.file))?;

    let tree = tmp.path().join("iso");
    std::fs::create_dir_all(tree.join("isolinux"))?;
    std::fs::copy(&vmlinuz, tree.join("vmlinuz"))?;
    let busybox = std::fs::read(x.join("bin/busybox"))?;
    std::fs::write(tree.join("initrd.img"), initramfs(&busybox))?;
    for (_, member) in &PARTS[1..] {
        let from = x.join(member);
        let name = from.file_name().context("Member without a name")?;
        std::fs::copy(&from, tree.join("isolinux").join(name))?;
    }
    std::fs::write(tree.join("isolinux/isolinux.cfg"), ISOLINUX_CFG)?;

    let iso = tmp.path().join("tiny.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso)
        .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
        .args([
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "-V",
            "TINYGUEST",
        ])
        .arg(&tree))?;
    std::fs::rename(&iso, out).with_context(|| format!("Cannot move the ISO to {}", out.display()))?;
    Ok(())
}

/// The initramfs: busybox, `sh` linked to it, [`INIT`], the mount points
/// and a console node (so that the kernel can give /init its stdio).
fn initramfs(busybox: &[u8]) -> Vec<u8> {
    let mut c = Newc::default();
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        c.dir(d, 0o755);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.file("bin/busybox", 0o755, busybox);
    c.symlink("bin/sh", "busybox");
    c.file("init", 0o755, INIT.as_bytes());
    c.finish()
}

/// Writer of an uncompressed cpio archive in the "new ASCII" (newc) format
/// the kernel unpacks as an initramfs. Owner root, mtime 0.
#[derive(Debug, Default)]
struct Newc {
    out: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl Newc {
    fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), b"");
    }

    fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), b"");
    }

    /// Appends the trailer and returns the archive.
    fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 1, 0, (0, 0));
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let size = u32::try_from(data.len()).expect("a cpio member fits in 4 GiB");
        self.header(path, self.ino, mode, nlink, size, rdev);
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// Header (magic and 13 eight-digit hex fields), name, NUL, padding.
    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, size: u32, rdev: (u32, u32)) {
        let namesize = name.len() as u32 + 1;
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            write!(self.out, "{f:08X}").expect("writing to a Vec");
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed member: name, the 13 header fields, data.
    type Member = (String, [u32; 13], Vec<u8>);

    /// Reads a newc archive back, checking magic, alignment and padding.
    fn parse(mut a: &[u8]) -> Vec<Member> {
        let total = a.len();
        let mut members = Vec::new();
        loop {
            assert_eq!((total - a.len()) % 4, 0, "header not 4-aligned");
            assert_eq!(&a[..6], b"070701", "magic");
            let mut fields = [0u32; 13];
            for (i, f) in fields.iter_mut().enumerate() {
                let hex = std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap();
                assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));
                *f = u32::from_str_radix(hex, 16).unwrap();
            }
            let namesize = fields[11] as usize;
            let name_end = 110 + namesize;
            assert_eq!(a[name_end - 1], 0, "name not NUL-terminated");
            let name = String::from_utf8(a[110..name_end - 1].to_vec()).unwrap();
            let data_start = name_end.next_multiple_of(4);
            assert!(a[name_end..data_start].iter().all(|b| *b == 0), "name padding");
            let data_end = data_start + fields[6] as usize;
            let next = data_end.next_multiple_of(4);
            assert!(a[data_end..next].iter().all(|b| *b == 0), "data padding");
            let data = a[data_start..data_end].to_vec();
            a = &a[next..];
            let last = name == "TRAILER!!!";
            members.push((name, fields, data));
            if last {
                assert!(a.is_empty(), "bytes after the trailer");
                return members;
            }
        }
    }

    #[test]
    fn newc_archive_parses_back() {
        let mut c = Newc::default();
        c.dir("bin", 0o755);
        c.char_dev("dev/console", 0o600, 5, 1);
        c.file("bin/busybox", 0o755, b"12345");
        c.symlink("bin/sh", "busybox");
        c.file("init", 0o755, b"");
        let a = c.finish();
        assert_eq!(a.len() % 4, 0);
        let m = parse(&a);
        let names: Vec<_> = m.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "dev/console", "bin/busybox", "bin/sh", "init", "TRAILER!!!"]
        );
        let (_, f, data) = &m[2];
        assert_eq!((f[1], f[4], f[6], f[11]), (0o100_755, 1, 5, 12));
        assert_eq!(data, b"12345");
        assert_eq!(m[0].1[1], 0o040_755);
        assert_eq!((m[1].1[1], m[1].1[9], m[1].1[10]), (0o020_600, 5, 1));
        assert_eq!((m[3].1[1], m[3].2.as_slice()), (0o120_777, b"busybox".as_slice()));
        // Distinct inode numbers; owner root, mtime 0, check 0.
        let inos: std::collections::BTreeSet<_> = m[..5].iter().map(|(_, f, _)| f[0]).collect();
        assert_eq!(inos.len(), 5);
        assert!(
            m.iter()
                .all(|(_, f, _)| f[2] == 0 && f[3] == 0 && f[5] == 0 && f[12] == 0)
        );
        let (_, t, d) = &m[5];
        assert_eq!((t[1], t[4], t[6], d.len()), (0, 1, 0, 0));
    }

    #[test]
    fn initramfs_has_init_and_shell() {
        let m = parse(&initramfs(b"ELF"));
        let get = |n: &str| m.iter().find(|(name, _, _)| name == n).unwrap();
        assert_eq!(get("init").1[1], 0o100_755);
        assert!(get("init").2.starts_with(b"#!/bin/busybox sh\n"));
        assert_eq!(get("bin/sh").2, b"busybox");
        assert_eq!(get("bin/busybox").2, b"ELF");
        for d in ["bin", "dev", "proc", "sys", "tmp"] {
            assert_eq!(get(d).1[1] & 0o170_000, S_IFDIR);
        }
        assert!(INIT.contains(READY) && INIT.contains(PROMPT));
    }

    #[test]
    fn apt_output_parses() {
        let depends = "linux-image-amd64\n  Depends: linux-image-6.1.0-48-amd64\n";
        assert_eq!(kernel_package(depends).as_deref(), Some("linux-image-6.1.0-48-amd64"));
        assert_eq!(kernel_package("linux-image-amd64\n"), None);
        let uris = "'http://m/b.deb' busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb 928188 SHA256:3D3F\n";
        assert_eq!(
            parse_print_uris(uris),
            [Deb {
                package: "busybox-static".into(),
                file: "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb".into(),
                sha256: "3d3f".into(),
            }]
        );
    }

    /// Builds the ISO into the workspace's cache (downloads ~72 MB once).
    #[test]
    #[ignore = "downloads Debian packages; run with --ignored"]
    fn builds_iso() {
        let cache = crate::node::Paths::discover().cache();
        let iso = iso(&cache).unwrap();
        assert!(std::fs::metadata(&iso).unwrap().len() > 1 << 20);
        assert_eq!(super::iso(&cache).unwrap(), iso);
    }
}
