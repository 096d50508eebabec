//! The bundles the update tests install: variant builds of the image under
//! test, and two bad bundles.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, ensure};

use super::{Ctx, GATE_DEADLINE_S, V3_MASK};
use crate::node::{self, ImageOptions};

/// The bundles the tests install.
pub(super) struct Bundles {
    pub(super) v2: PathBuf,
    pub(super) v2_version: String,
    pub(super) v3: PathBuf,
    pub(super) v3_version: String,
    pub(super) flipped: PathBuf,
    pub(super) wrong_compatible: PathBuf,
}

pub(super) fn machine_config() -> String {
    format!("# update tests: a short boot gate\nversion = 1\n\n[boot]\ngate_deadline_seconds = {GATE_DEADLINE_S}\n")
}

/// Builds (or reuses) the variants and bad bundles for the image in `ctx`.
pub(super) fn bundles(ctx: &Ctx) -> Result<Bundles> {
    let root = ctx.paths.qa().join("update");
    std::fs::create_dir_all(&root)?;
    let (v2, v2_version) = v2(ctx)?;
    let v3_version = format!("{}-v3", ctx.version);
    let v3 = variant(
        ctx,
        &root.join("v3"),
        &ImageOptions::variant(&v3_version, "v3", &[V3_MASK]),
    )?;
    let flipped = root.join("v2-flipped.raucb");
    flip_byte(&v2, &flipped)?;
    let wrong_compatible = root.join("wrong-compatible.raucb");
    wrong_compatible_bundle(ctx, &root.join("wrong-compatible"), &wrong_compatible)?;
    Ok(Bundles {
        v2,
        v2_version,
        v3,
        v3_version,
        flipped,
        wrong_compatible,
    })
}

/// The update the tests install first: the image under test with another
/// version and the marker `v2`; its bundle and version.
pub(super) fn v2(ctx: &Ctx) -> Result<(PathBuf, String)> {
    let version = format!("{}-v2", ctx.version);
    let bundle = variant(
        ctx,
        &ctx.paths.qa().join("update").join("v2"),
        &ImageOptions::variant(&version, "v2", &[]),
    )?;
    Ok((bundle, version))
}

/// v2 with one file changed (the marker's text); its bundle.
pub(super) fn v2_one_file(ctx: &Ctx) -> Result<PathBuf> {
    let version = format!("{}-v2", ctx.version);
    variant(
        ctx,
        &ctx.paths.qa().join("update").join("v2-one-file"),
        &ImageOptions::variant(&version, "v2 with one file changed", &[]),
    )
}

/// The bundle of a variant build of the image under test into `out`. A
/// build is reused only when it was made from this very image (its
/// manifest) with the same options.
/// The binaries are the image's own (no cargo build).
pub(super) fn variant(ctx: &Ctx, out: &Path, opts: &ImageOptions) -> Result<PathBuf> {
    let opts = &ImageOptions {
        no_cargo: true,
        ..opts.clone()
    };
    let base_manifest = std::fs::read(ctx.image.join("manifest.json"))
        .with_context(|| format!("Cannot read {}/manifest.json", ctx.image.display()))?;
    let key = format!("{}\n{opts:?}\n", sha256_hex(&base_manifest));
    let key_file = out.join("qa-variant.key");
    let bundle = node::bundle_path(out);
    if std::fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str()) && bundle.exists() {
        eprintln!("  reusing {} ({:?})", bundle.display(), opts.version);
        return Ok(bundle);
    }
    let _ = std::fs::remove_file(&key_file);
    let took = node::build_image_with(ctx.paths, out, opts)?;
    eprintln!("  variant {:?} built in {:.0} s", opts.version, took.as_secs_f64());
    std::fs::write(&key_file, key)?;
    Ok(bundle)
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub(super) fn file_sha256(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).with_context(|| format!("Cannot open {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Copies `src` to `dst` with one byte in the middle of the payload (the
/// slot image) inverted.
pub(super) fn flip_byte(src: &Path, dst: &Path) -> Result<()> {
    let mut bytes = std::fs::read(src).with_context(|| format!("Cannot read {}", src.display()))?;
    ensure!(bytes.len() > 4096, "{} is too small to be a bundle", src.display());
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    std::fs::write(dst, bytes)?;
    Ok(())
}

/// A small verity bundle signed with the same development key as the
/// image's, for a compatible string no node has.
pub(super) fn wrong_compatible_bundle(ctx: &Ctx, work: &Path, out: &Path) -> Result<()> {
    let signing = ctx.paths.cache().join("signing");
    let (cert, key) = (signing.join("signing.cert.pem"), signing.join("signing.key.pem"));
    ensure!(
        cert.exists() && key.exists(),
        "No development signing key in {}: the image build makes it",
        signing.display()
    );
    let _ = std::fs::remove_dir_all(work);
    let content = work.join("content");
    std::fs::create_dir_all(&content)?;
    // Incompressible, so that the bundle's squashfs is more than a block.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(content.join("rootfs.img"), noise)?;
    std::fs::write(
        content.join("manifest.raucm"),
        "[update]\ncompatible=some-other-node\nversion=9.9.9\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.img\n",
    )?;
    let _ = std::fs::remove_file(out);
    let o = std::process::Command::new("rauc")
        .arg("bundle")
        .arg(format!("--cert={}", cert.display()))
        .arg(format!("--key={}", key.display()))
        .arg(&content)
        .arg(out)
        .output()
        .context("Cannot run rauc: apt-get install rauc")?;
    ensure!(
        o.status.success(),
        "rauc bundle failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}
