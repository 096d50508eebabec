//! The base root file system (mmdebstrap, cached as a tarball) and the
//! DebVisor customisation applied on top of it.
//!
//! The cache key is the sha256 of every input that can change the base: the
//! builder's cache version, the mmdebstrap version, suite, mirror, the
//! mirror's `InRelease` (so a mirror update invalidates the cache), variant,
//! architecture, components, packages and dpkg path filters. Downloaded .deb
//! files are kept in a shared apt archive directory; apt checks every one
//! against the index hashes, so that cache cannot change a result either.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cmd::{self, CmdError, StepError, command, io, tool};
use crate::progress::Step;
use crate::recipe::Recipe;

/// Bump when the way the base is built changes.
const CACHE_VERSION: u32 = 1;

/// Errors while making the root file system.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A recipe package is not in the archive.
    #[error("Package {package:?} is not available in {suite} from {mirror} (check [debian] packages in the recipe)")]
    UnknownPackage {
        /// Package name.
        package: String,
        /// Suite searched.
        suite: String,
        /// Mirror searched.
        mirror: String,
    },
    /// A tool or a file operation failed.
    #[error(transparent)]
    Step(#[from] StepError),
    /// A workspace binary named by the recipe was not built.
    #[error("Binary {path} is missing (build it, or pass --binaries-dir)")]
    MissingBinary {
        /// Expected path.
        path: PathBuf,
    },
}

/// Everything that determines the base tarball.
#[derive(Debug, Serialize, Deserialize)]
pub struct BaseKey {
    cache_version: u32,
    mmdebstrap: String,
    suite: String,
    mirror: String,
    mirror_inrelease_sha256: String,
    variant: String,
    architecture: String,
    components: Vec<String>,
    packages: Vec<String>,
    path_exclude: Vec<String>,
    path_include: Vec<String>,
}

impl BaseKey {
    /// Collects the key, fetching the mirror's InRelease to fingerprint it.
    pub fn new(recipe: &Recipe, mirror: &str, scratch: &Path) -> Result<Self, RootfsError> {
        let mmdebstrap = cmd::run(&mut command("mmdebstrap", ["--version"]))
            .map_err(tool("Checking mmdebstrap"))?
            .trim()
            .to_owned();
        let url = format!("{mirror}/dists/{}/InRelease", recipe.debian.suite);
        let dest = scratch.join("InRelease");
        cmd::run(&mut command(
            "/usr/lib/apt/apt-helper",
            ["download-file".as_ref(), url.as_ref(), dest.as_os_str()],
        ))
        .map_err(tool(format!("Fetching {url}")))?;
        let release = std::fs::read(&dest).map_err(io("Reading", &dest))?;
        let mut packages = recipe.debian.packages.clone();
        packages.sort();
        packages.dedup();
        let d = &recipe.debian;
        Ok(Self {
            cache_version: CACHE_VERSION,
            mmdebstrap,
            suite: d.suite.clone(),
            mirror: mirror.to_owned(),
            mirror_inrelease_sha256: hex::encode(Sha256::digest(&release)),
            variant: d.variant.clone(),
            architecture: d.architecture.clone(),
            components: d.components.clone(),
            packages,
            path_exclude: d.path_exclude.clone(),
            path_include: d.path_include.clone(),
        })
    }

    /// The hex sha256 of the key.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("key serialises");
        hex::encode(Sha256::digest(json))
    }
}

/// What is stored beside a cached tarball.
#[derive(Debug, Serialize, Deserialize)]
struct CacheMeta {
    built: String,
    key: BaseKey,
}

/// Returns the cached base tarball for `key`, building it if needed.
/// The `bool` is true when it came from the cache.
pub fn base_tarball(
    key: BaseKey,
    cache: &Path,
    step: &Step,
    log: &dyn Fn(&str),
) -> Result<(PathBuf, bool), RootfsError> {
    let hash = key.hash();
    let base_dir = cache.join("base");
    let tar = base_dir.join(format!("{hash}.tar"));
    let meta_path = base_dir.join(format!("{hash}.json"));
    if tar.is_file()
        && let Some(meta) = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<CacheMeta>(&b).ok())
    {
        log(&format!(
            "Reusing cached base rootfs {} (built {})",
            &hash[..16],
            meta.built
        ));
        return Ok((tar, true));
    }
    let archives = cache.join("apt-archives");
    std::fs::create_dir_all(&archives).map_err(io("Creating", &archives))?;
    let tmp = base_dir.join(format!("{hash}.tar.partial"));
    let mut args: Vec<String> = vec![
        format!("--variant={}", key.variant),
        format!("--architectures={}", key.architecture),
        format!("--components={}", key.components.join(",")),
        format!("--include={}", key.packages.join(",")),
        "--format=tar".into(),
        "--aptopt=APT::Install-Recommends \"false\"".into(),
        // Keep downloaded .debs: seeded from and copied back to the archive cache.
        "--skip=download/empty".into(),
        "--skip=essential/unlink".into(),
        "--setup-hook=mkdir -p \"$1/var/cache/apt/archives\" && cp -a \"$DEBVISOR_APT_CACHE\"/. \"$1/var/cache/apt/archives/\"".into(),
        "--customize-hook=find \"$1/var/cache/apt/archives\" -maxdepth 1 -name '*.deb' -exec cp -n -t \"$DEBVISOR_APT_CACHE\" '{}' +".into(),
        // The kernel's postinst builds a MODULES=most initrd; the image builds its own.
        "--customize-hook=rm -f \"$1\"/boot/initrd.img-*".into(),
    ];
    for g in &key.path_exclude {
        args.push(format!("--dpkgopt=path-exclude={g}"));
    }
    for g in &key.path_include {
        args.push(format!("--dpkgopt=path-include={g}"));
    }
    args.push(key.suite.clone());
    args.push(tmp.to_string_lossy().into_owned());
    args.push(key.mirror.clone());
    std::fs::create_dir_all(&base_dir).map_err(io("Creating", &base_dir))?;
    let mut c = command("mmdebstrap", &args);
    c.env("DEBVISOR_APT_CACHE", &archives);
    let result = cmd::run_streaming(&mut c, |line| step.detail(line));
    if let Err(err) = result {
        let _ = std::fs::remove_file(&tmp);
        if let CmdError::Failed { output, .. } = &err
            && let Some(package) = missing_package(output)
        {
            return Err(RootfsError::UnknownPackage {
                package,
                suite: key.suite.clone(),
                mirror: key.mirror.clone(),
            });
        }
        return Err(StepError::Tool {
            what: "mmdebstrap failed".into(),
            source: err,
        }
        .into());
    }
    std::fs::rename(&tmp, &tar).map_err(io("Renaming", &tmp))?;
    let meta = CacheMeta {
        built: crate::manifest::now_rfc3339(),
        key,
    };
    let json = serde_json::to_vec_pretty(&meta).expect("meta serialises");
    std::fs::write(&meta_path, json).map_err(io("Writing", &meta_path))?;
    log(&format!("Cached base rootfs {} at {}", &hash[..16], tar.display()));
    Ok((tar, false))
}

/// Finds the package apt complained about in mmdebstrap's output.
pub fn missing_package(output: &str) -> Option<String> {
    for line in output.lines() {
        if let Some(rest) = line.split("Unable to locate package ").nth(1) {
            return rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.split("Package '").nth(1)
            && line.contains("has no installation candidate")
        {
            return rest.split('\'').next().map(str::to_owned);
        }
        if let Some(rest) = line.split("Couldn't find any package by glob '").nth(1) {
            return rest.split('\'').next().map(str::to_owned);
        }
    }
    None
}

/// Unpacks the base tarball into an empty `root`.
pub fn extract(tar: &Path, root: &Path) -> Result<(), RootfsError> {
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(io("Removing old work tree", root))?;
    }
    std::fs::create_dir_all(root).map_err(io("Creating", root))?;
    cmd::run(&mut command(
        "tar",
        [
            "--extract".as_ref(),
            "--preserve-permissions".as_ref(),
            "--numeric-owner".as_ref(),
            "--xattrs".as_ref(),
            "--xattrs-include=*".as_ref(),
            "--file".as_ref(),
            tar.as_os_str(),
            "--directory".as_ref(),
            root.as_os_str(),
        ],
    ))
    .map_err(tool(format!("Extracting {}", tar.display())))?;
    Ok(())
}

/// Copies each overlay tree over `root`, keeping modes and symlinks; files
/// become owned by root whoever checked the repository out.
pub fn apply_overlays(dirs: &[PathBuf], root: &Path) -> Result<(), RootfsError> {
    for dir in dirs {
        let mut src = dir.clone().into_os_string();
        src.push("/.");
        cmd::run(&mut command(
            "cp",
            [
                "--recursive".as_ref(),
                "--no-dereference".as_ref(),
                "--preserve=mode,timestamps,links".as_ref(),
                src.as_os_str(),
                root.as_os_str(),
            ],
        ))
        .map_err(tool(format!("Copying overlay {}", dir.display())))?;
    }
    Ok(())
}

/// The files of the overlay `dirs`, relative to their overlay (the paths
/// they take in the root), sorted.
pub fn overlay_files(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, RootfsError> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), RootfsError> {
        for entry in std::fs::read_dir(dir).map_err(io("Listing overlay", dir))? {
            let path = entry.map_err(io("Listing overlay", dir))?.path();
            if path.symlink_metadata().map_err(io("Reading overlay", &path))?.is_dir() {
                walk(base, &path, out)?;
            } else if let Ok(rel) = path.strip_prefix(base) {
                out.push(rel.to_owned());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for dir in dirs {
        walk(dir, dir, &mut out)?;
    }
    out.sort();
    Ok(out)
}

/// Installs workspace binaries from `bin_dir` to /usr/bin.
pub fn install_binaries(names: &[String], bin_dir: &Path, root: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    for name in names {
        let src = bin_dir.join(name);
        if !src.is_file() {
            return Err(RootfsError::MissingBinary { path: src });
        }
        let dst = root.join("usr/bin").join(name);
        std::fs::copy(&src, &dst).map_err(io("Copying binary", &src))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).map_err(io("Setting mode", &dst))?;
    }
    Ok(())
}

/// Identity, mount points, fstab, machine-id and enabled units.
pub fn configure(recipe: &Recipe, root: &Path) -> Result<(), RootfsError> {
    let os_release = root.join("usr/lib/os-release");
    let mut text = std::fs::read_to_string(&os_release).map_err(io("Reading", &os_release))?;
    text.retain(|c| c != '\r');
    let mut text: String = text
        .lines()
        .filter(|l| !l.starts_with("IMAGE_ID=") && !l.starts_with("IMAGE_VERSION="))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!(
        "IMAGE_ID={}\nIMAGE_VERSION={}\n",
        recipe.image.name, recipe.image.version
    ));
    write(&os_release, &text)?;

    for dir in ["data", "boot/efi"] {
        let p = root.join(dir);
        std::fs::create_dir_all(&p).map_err(io("Creating", &p))?;
    }
    write(
        &root.join("etc/fstab"),
        "# DebVisor: / is the read-only slot; /etc and /var are overlays on /data\n\
         # (set up by the initramfs). The ESP (GRUB and its A/B environment) is\n\
         # mounted read-write at /boot/efi by boot-efi.mount.\n",
    )?;
    write(&root.join("etc/hostname"), &format!("{}\n", recipe.image.name))?;
    write(
        &root.join("etc/hosts"),
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
            recipe.image.name
        ),
    )?;
    // mmdebstrap leaves the build host's resolver configuration behind.
    write(
        &root.join("etc/resolv.conf"),
        "# Filled in at run time from the network configuration.\n",
    )?;
    // Empty machine-id: systemd generates one on first boot (ConditionFirstBoot).
    write(&root.join("etc/machine-id"), "")?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if dbus_id.exists() && !dbus_id.is_symlink() {
        std::fs::remove_file(&dbus_id).map_err(io("Removing", &dbus_id))?;
    }

    // Users and groups from sysusers.d (the overlay's debvisor group and the
    // console's user) exist in the image itself, not only after a boot-time
    // systemd-sysusers run.
    let mut root_arg = std::ffi::OsString::from("--root=");
    root_arg.push(root);
    cmd::run(&mut command("systemd-sysusers", &[root_arg])).map_err(tool("systemd-sysusers".to_string()))?;

    for (verb, units) in [("enable", &recipe.systemd.enable), ("mask", &recipe.systemd.mask)] {
        if units.is_empty() {
            continue;
        }
        let mut root_arg = std::ffi::OsString::from("--root=");
        root_arg.push(root);
        let mut args = vec![root_arg, verb.into()];
        args.extend(units.iter().map(Into::into));
        cmd::run(&mut command("systemctl", &args)).map_err(tool(format!("systemctl {verb} {}", units.join(" "))))?;
    }
    Ok(())
}

/// Writes a whole file.
pub fn write(path: &Path, text: &str) -> Result<(), RootfsError> {
    if path.is_symlink() {
        std::fs::remove_file(path).map_err(io("Removing symlink", path))?;
    }
    Ok(std::fs::write(path, text).map_err(io("Writing", path))?)
}

/// Lists installed packages with versions from the root's dpkg database.
pub fn packages(root: &Path) -> Result<Vec<(String, String)>, RootfsError> {
    let mut admindir = std::ffi::OsString::from("--admindir=");
    admindir.push(root.join("var/lib/dpkg"));
    let out = cmd::run(&mut command(
        "dpkg-query",
        [
            admindir.as_os_str(),
            "--show".as_ref(),
            "--showformat=${db:Status-Abbrev}\t${Package}\t${Version}\n".as_ref(),
        ],
    ))
    .map_err(tool("Listing installed packages"))?;
    let mut list: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let status = f.next()?;
            let (name, version) = (f.next()?, f.next()?);
            status.starts_with("ii").then(|| (name.to_owned(), version.to_owned()))
        })
        .collect();
    list.sort();
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_missing_package_in_apt_output() {
        assert_eq!(
            missing_package("I: x\nE: Unable to locate package nosuchpkg\nE: failed").as_deref(),
            Some("nosuchpkg")
        );
        assert_eq!(
            missing_package("E: Package 'oldpkg' has no installation candidate").as_deref(),
            Some("oldpkg")
        );
        assert_eq!(missing_package("E: something else"), None);
    }

    #[test]
    fn key_hash_covers_packages() {
        let mut k = BaseKey {
            cache_version: CACHE_VERSION,
            mmdebstrap: "mmdebstrap 1".into(),
            suite: "bookworm".into(),
            mirror: "http://m.example.org/debian".into(),
            mirror_inrelease_sha256: "00".into(),
            variant: "minbase".into(),
            architecture: "amd64".into(),
            components: vec!["main".into()],
            packages: vec!["a".into()],
            path_exclude: vec![],
            path_include: vec![],
        };
        let h1 = k.hash();
        k.packages.push("b".into());
        assert_ne!(h1, k.hash());
        k.packages.pop();
        assert_eq!(h1, k.hash());
        k.mirror_inrelease_sha256 = "01".into();
        assert_ne!(h1, k.hash());
    }
}
