//! Verifying a whole bundle before RAUC installs it.
//!
//! RAUC 1.8 checks a verity bundle's payload only while it copies it into
//! the slot (dm-verity on access), so a bundle with one corrupt payload byte
//! fails part-way through and leaves the target slot half written and bad.
//! [`RaucInfoVerifier`] checks everything first: `rauc info` verifies the
//! signature and prints the signed manifest (compatible, version, verity
//! salt, root hash and tree size); [`verity_root_hash`] then recomputes the
//! dm-verity root hash of the payload, which must equal the signed one.
//!
//! A verity bundle file is: payload (squashfs, a multiple of 4096 bytes) |
//! dm-verity hash tree (`Verity Size` bytes) | CMS signature | the
//! signature's length as 8 bytes big-endian.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::{InstallErrorKind, classify};

/// dm-verity data and hash block size used by RAUC.
pub const VERITY_BLOCK: usize = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: u64 = (VERITY_BLOCK / DIGEST) as u64;

/// What the signed manifest of a bundle says (from `rauc info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleInfo {
    /// `Compatible`.
    pub compatible: String,
    /// `Version`.
    pub version: String,
    /// `Bundle Format` (`verity`, `plain`, `crypt`).
    pub format: String,
    /// `Verity Salt`, hex.
    pub verity_salt: String,
    /// `Verity Hash` (the root hash), hex.
    pub verity_hash: String,
    /// `Verity Size`: bytes of the hash tree.
    pub verity_size: u64,
}

/// A bundle that did not verify, classified like RAUC's install errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct VerifyError {
    /// The class.
    pub kind: InstallErrorKind,
    /// What is wrong, naming the file.
    pub message: String,
}

impl VerifyError {
    fn new(kind: InstallErrorKind, message: String) -> Self {
        Self { kind, message }
    }
}

/// Checks a stored bundle before it is handed to RAUC.
#[async_trait::async_trait]
pub trait BundleVerifier: Send + Sync + 'static {
    /// Verifies `bundle` completely, sending percentages (0..=100) to
    /// `progress` as it goes; returns the signed manifest's facts.
    async fn verify(&self, bundle: &Path, progress: mpsc::Sender<u8>) -> Result<BundleInfo, VerifyError>;
}

/// The real verifier: `rauc info` (argv, no shell) and the dm-verity root
/// hash of the payload.
#[derive(Debug, Clone)]
pub struct RaucInfoVerifier {
    /// The rauc program.
    pub program: PathBuf,
    /// A system.conf other than RAUC's default (`/etc/rauc/system.conf`).
    pub conf: Option<PathBuf>,
}

impl Default for RaucInfoVerifier {
    fn default() -> Self {
        Self {
            program: PathBuf::from("rauc"),
            conf: None,
        }
    }
}

#[async_trait::async_trait]
impl BundleVerifier for RaucInfoVerifier {
    async fn verify(&self, bundle: &Path, progress: mpsc::Sender<u8>) -> Result<BundleInfo, VerifyError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        if let Some(conf) = &self.conf {
            cmd.arg(format!("--conf={}", conf.display()));
        }
        cmd.arg("info").arg(bundle).kill_on_drop(true);
        let out = cmd.output().await.map_err(|e| {
            VerifyError::new(
                InstallErrorKind::RaucUnavailable,
                format!("Cannot run {} info: {e}; is rauc installed?", self.program.display()),
            )
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .trim();
            let why = why
                .split_once("rauc-WARNING")
                .map_or(why, |(_, w)| w)
                .trim_start_matches(|c: char| c == ':' || c == ' ' || c == '.' || c.is_ascii_digit());
            let kind = match classify(why) {
                InstallErrorKind::Other => InstallErrorKind::InvalidBundle,
                k => k,
            };
            return Err(VerifyError::new(
                kind,
                format!(
                    "rauc info refused the bundle {} ({}): {why}",
                    bundle.display(),
                    out.status
                ),
            ));
        }
        let info = parse_info(&stdout).map_err(|e| {
            VerifyError::new(
                InstallErrorKind::InvalidBundle,
                format!("rauc info on {}: {e}", bundle.display()),
            )
        })?;
        if info.format != "verity" {
            return Err(VerifyError::new(
                InstallErrorKind::InvalidBundle,
                format!(
                    "The bundle {} has format '{}'; this node installs only verity bundles (build it with \
                     [bundle] format=verity)",
                    bundle.display(),
                    info.format
                ),
            ));
        }
        let (path, salt, size) = (bundle.to_path_buf(), info.verity_salt.clone(), info.verity_size);
        let root = tokio::task::spawn_blocking(move || {
            bundle_root_hash(&path, &salt, size, &mut |p| {
                let _ = progress.try_send(p);
            })
        })
        .await
        .map_err(|e| VerifyError::new(InstallErrorKind::Other, format!("the verity check stopped: {e}")))??;
        if !root.eq_ignore_ascii_case(&info.verity_hash) {
            return Err(VerifyError::new(
                InstallErrorKind::BadSignature,
                format!(
                    "The bundle's content does not match its signature (corrupt or tampered download): the payload of \
                     {} hashes to verity root {root}, but the signed manifest says {}; nothing was installed, fetch \
                     the bundle again",
                    bundle.display(),
                    info.verity_hash
                ),
            ));
        }
        Ok(info)
    }
}

/// Parses the readable output of `rauc info`.
pub fn parse_info(text: &str) -> Result<BundleInfo, String> {
    let mut info = BundleInfo::default();
    let quoted = |v: &str| v.trim().trim_matches('\'').to_string();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "Compatible" => info.compatible = quoted(value),
            "Version" => info.version = quoted(value),
            "Bundle Format" => info.format = quoted(value),
            "Verity Salt" => info.verity_salt = quoted(value),
            "Verity Hash" => info.verity_hash = quoted(value),
            "Verity Size" => {
                let v = quoted(value);
                info.verity_size = v.parse().map_err(|_| format!("Verity Size: {v:?} is not a number"))?;
            }
            _ => {}
        }
    }
    if info.compatible.is_empty() {
        return Err("the output has no Compatible: line".into());
    }
    if info.format.is_empty() {
        return Err("the output has no Bundle Format: line".into());
    }
    if info.format == "verity" && (info.verity_hash.is_empty() || info.verity_salt.is_empty() || info.verity_size == 0)
    {
        return Err("a verity bundle without Verity Salt, Verity Hash or Verity Size".into());
    }
    Ok(info)
}

/// The dm-verity root hash (hex) of the payload of the bundle file at
/// `path`, whose hash tree is `verity_size` bytes, with `salt_hex`;
/// `progress` gets percentages.
pub fn bundle_root_hash(
    path: &Path,
    salt_hex: &str,
    verity_size: u64,
    progress: &mut dyn FnMut(u8),
) -> Result<String, VerifyError> {
    let bad = |why: String| VerifyError::new(InstallErrorKind::InvalidBundle, format!("{}: {why}", path.display()));
    let salt = hex::decode(salt_hex).map_err(|e| bad(format!("Verity Salt {salt_hex:?} is not hex ({e})")))?;
    let io = |e: std::io::Error| VerifyError::new(InstallErrorKind::Other, format!("reading {}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len < 8 {
        return Err(bad(format!("{len} bytes is too short for a bundle")));
    }
    f.seek(SeekFrom::Start(len - 8)).map_err(io)?;
    let mut sig_len = [0u8; 8];
    f.read_exact(&mut sig_len).map_err(io)?;
    let sig_len = u64::from_be_bytes(sig_len);
    let payload = len
        .checked_sub(8)
        .and_then(|l| l.checked_sub(sig_len))
        .and_then(|l| l.checked_sub(verity_size))
        .filter(|p| *p > 0 && p.is_multiple_of(VERITY_BLOCK as u64))
        .ok_or_else(|| {
            bad(format!(
                "{len} bytes cannot hold a signature of {sig_len} bytes and a hash tree of {verity_size} bytes after \
                 a payload of whole 4096-byte blocks"
            ))
        })?;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    verity_root_hash(
        &mut std::io::BufReader::with_capacity(1 << 20, f),
        payload,
        &salt,
        progress,
    )
    .map(hex::encode)
    .map_err(io)
}

/// The dm-verity (format 1, sha256, 4096-byte data and hash blocks, salt
/// before each hashed block) root hash of the first `len` bytes (a multiple
/// of 4096) of `data`, read as a stream; `progress` gets percentages.
pub fn verity_root_hash(
    data: &mut dyn Read,
    len: u64,
    salt: &[u8],
    progress: &mut dyn FnMut(u8),
) -> std::io::Result<[u8; DIGEST]> {
    let blocks = len / VERITY_BLOCK as u64;
    if blocks == 0 || !len.is_multiple_of(VERITY_BLOCK as u64) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the payload is {len} bytes, not a positive multiple of {VERITY_BLOCK}"),
        ));
    }
    let mut tree = Tree::new(salt, blocks);
    let mut block = vec![0u8; VERITY_BLOCK];
    let mut last = u8::MAX;
    for i in 0..blocks {
        data.read_exact(&mut block)?;
        let d = tree.hash(&block);
        tree.push(0, d);
        let pct = u8::try_from(i * 100 / blocks).unwrap_or(100);
        if pct != last {
            progress(pct);
            last = pct;
        }
    }
    progress(100);
    tree.root
        .ok_or_else(|| std::io::Error::other("the hash tree did not reach a root"))
}

/// The hash levels being filled while the data streams by.
struct Tree<'a> {
    salt: &'a [u8],
    /// Per level: digests gathered for the current hash block, digests the
    /// level receives in all and has received.
    levels: Vec<(Vec<u8>, u64, u64)>,
    root: Option<[u8; DIGEST]>,
}

impl<'a> Tree<'a> {
    fn new(salt: &'a [u8], data_blocks: u64) -> Self {
        let mut levels = Vec::new();
        let mut n = data_blocks;
        while n > 1 {
            levels.push((Vec::with_capacity(VERITY_BLOCK), n, 0));
            n = n.div_ceil(PER_BLOCK);
        }
        Self {
            salt,
            levels,
            root: None,
        }
    }

    fn hash(&self, block: &[u8]) -> [u8; DIGEST] {
        salted(self.salt, block)
    }

    /// Adds the digest of a block of the level below `level` (level 0: data).
    fn push(&mut self, level: usize, digest: [u8; DIGEST]) {
        let salt = self.salt;
        let Some((buf, total, got)) = self.levels.get_mut(level) else {
            self.root = Some(digest);
            return;
        };
        buf.extend_from_slice(&digest);
        *got += 1;
        if buf.len() == VERITY_BLOCK || *got == *total {
            buf.resize(VERITY_BLOCK, 0);
            let d = salted(salt, buf);
            buf.clear();
            self.push(level + 1, d);
        }
    }
}

fn salted(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(parts: &[&[u8]]) -> [u8; 32] {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    fn data(blocks: usize) -> Vec<u8> {
        (0..blocks * VERITY_BLOCK).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn root(d: &[u8], salt: &[u8]) -> [u8; 32] {
        verity_root_hash(&mut &d[..], d.len() as u64, salt, &mut |_| {}).unwrap()
    }

    /// A level of hash blocks over `digests` (zero-padded blocks of 128).
    fn level(digests: &[[u8; 32]], salt: &[u8]) -> Vec<[u8; 32]> {
        digests
            .chunks(128)
            .map(|c| {
                let mut b = c.concat();
                b.resize(VERITY_BLOCK, 0);
                sha(&[salt, &b])
            })
            .collect()
    }

    #[test]
    fn one_block_is_its_own_root() {
        let d = data(1);
        assert_eq!(root(&d, b"salt"), sha(&[b"salt", &d]));
    }

    #[test]
    fn two_levels_for_129_blocks_and_a_flipped_byte_changes_the_root() {
        let salt = [0x5au8; 32];
        let d = data(129);
        let leaves: Vec<[u8; 32]> = d.chunks(VERITY_BLOCK).map(|b| sha(&[&salt, b])).collect();
        let l1 = level(&leaves, &salt);
        assert_eq!(l1.len(), 2);
        let top = level(&l1, &salt);
        assert_eq!(top.len(), 1);
        assert_eq!(root(&d, &salt), top[0]);

        let mut bad = d.clone();
        bad[128 * VERITY_BLOCK + 17] ^= 1;
        assert_ne!(root(&bad, &salt), top[0]);
        // 128 blocks fill exactly one hash block: one level.
        let d128 = &d[..128 * VERITY_BLOCK];
        assert_eq!(root(d128, &salt), level(&leaves[..128], &salt)[0]);
    }

    #[test]
    fn progress_and_bad_lengths() {
        let d = data(3);
        let mut seen = Vec::new();
        verity_root_hash(&mut &d[..], d.len() as u64, b"", &mut |p| seen.push(p)).unwrap();
        assert_eq!(seen.first(), Some(&0));
        assert_eq!(seen.last(), Some(&100));
        assert!(verity_root_hash(&mut &d[..], 100, b"", &mut |_| {}).is_err());
        assert!(
            verity_root_hash(&mut &d[..], 8 * 4096, b"", &mut |_| {}).is_err(),
            "short read"
        );
    }

    #[test]
    fn parses_rauc_info() {
        let text = "Compatible: \t'debvisor-node-x86_64'\nVersion:    \t'0.1.0'\nBundle Format: \tverity\n  Verity \
                    Salt: \t'c1dc'\n  Verity Hash: \t'a0d3'\n  Verity Size: \t1732608\n\n1 Image:\n";
        let i = parse_info(text).unwrap();
        assert_eq!(i.compatible, "debvisor-node-x86_64");
        assert_eq!(i.version, "0.1.0");
        assert_eq!(i.format, "verity");
        assert_eq!(
            (i.verity_salt.as_str(), i.verity_hash.as_str(), i.verity_size),
            ("c1dc", "a0d3", 1732608)
        );
        assert!(parse_info("Version: '1'").unwrap_err().contains("Compatible"));
        let e = parse_info("Compatible: 'x'\nBundle Format: verity\nVerity Size: many").unwrap_err();
        assert!(e.contains("Verity Size"), "{e}");
    }

    #[test]
    fn bundle_layout_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.raucb");
        let mut file = data(2);
        file.extend_from_slice(&[0u8; VERITY_BLOCK]); // the tree
        file.extend_from_slice(b"SIG");
        file.extend_from_slice(&3u64.to_be_bytes());
        std::fs::write(&p, &file).unwrap();
        let got = bundle_root_hash(&p, "00ff", VERITY_BLOCK as u64, &mut |_| {}).unwrap();
        assert_eq!(got, hex::encode(root(&data(2), &[0x00, 0xff])));
        let e = bundle_root_hash(&p, "00ff", 5, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind, InstallErrorKind::InvalidBundle);
        assert!(e.message.contains("hash tree of 5 bytes"), "{}", e.message);
        assert!(
            bundle_root_hash(&p, "zz", 4096, &mut |_| {})
                .unwrap_err()
                .message
                .contains("Verity Salt")
        );
    }
}
