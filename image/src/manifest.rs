//! `manifest.json`: what an image is and what went into it.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The manifest written beside the artifacts.
#[derive(Debug, Serialize)]
pub struct Manifest {
    /// Image name from the recipe.
    pub name: String,
    /// Image version from the recipe.
    pub version: String,
    /// RAUC compatible string.
    pub compatible: String,
    /// Build time, RFC 3339 (SOURCE_DATE_EPOCH when set).
    pub build_time: String,
    /// Builder name and version.
    pub builder: String,
    /// Debian inputs.
    pub debian: DebianInfo,
    /// Kernel version inside the slot.
    pub kernel_version: String,
    /// Kernel arguments after the fixed ones.
    pub kernel_cmdline_extra: Vec<String>,
    /// Cache key of the base rootfs.
    pub base_rootfs_key: String,
    /// Every installed Debian package.
    pub packages: Vec<Package>,
    /// The files produced.
    pub artifacts: Vec<Artifact>,
    /// The RAUC update bundle (also a file in the output directory).
    pub bundle: crate::bundle::BundleInfo,
    /// Test variant flags the image was built with (absent for the recipe as written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<crate::variant::Variant>,
}

/// Debian inputs recorded in the manifest.
#[derive(Debug, Serialize)]
pub struct DebianInfo {
    /// Suite.
    pub suite: String,
    /// Mirror URL used.
    pub mirror: String,
    /// mmdebstrap variant.
    pub variant: String,
    /// Components.
    pub components: Vec<String>,
    /// Architecture.
    pub architecture: String,
}

/// An installed package.
#[derive(Debug, Serialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: String,
}

/// One produced file.
#[derive(Debug, Serialize)]
pub struct Artifact {
    /// File name inside the output directory.
    pub file: String,
    /// Size in bytes (apparent size; disk.img is sparse).
    pub size: u64,
    /// Hex sha256 of the contents.
    pub sha256: String,
}

/// Hashing an artifact failed.
#[derive(Debug, thiserror::Error)]
#[error("Cannot hash {path}")]
pub struct HashError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Computes size and sha256 of `path`, calling `on_bytes` with progress.
pub fn artifact(path: &Path, mut on_bytes: impl FnMut(u64)) -> Result<Artifact, HashError> {
    let err = |source| HashError {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        on_bytes(size);
    }
    Ok(Artifact {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// The build time: `SOURCE_DATE_EPOCH` if set and valid, else now.
pub fn build_time() -> String {
    let sde = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok());
    format_time(sde.unwrap_or_else(OffsetDateTime::now_utc))
}

/// The current time, RFC 3339.
pub fn now_rfc3339() -> String {
    format_time(OffsetDateTime::now_utc())
}

fn format_time(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_as_rfc3339() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(format_time(t), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn hashes_a_file() {
        let p = std::env::temp_dir().join(format!("dv-hash-{}", std::process::id()));
        std::fs::write(&p, b"abc").unwrap();
        let a = artifact(&p, |_| {}).unwrap();
        assert_eq!(a.size, 3);
        assert_eq!(
            a.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_file(&p).unwrap();
    }
}
