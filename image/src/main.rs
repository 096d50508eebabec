//! `debvisor-image`: builds DebVisor images from a recipe.
//!
//! recipe -> base rootfs (mmdebstrap, cached) -> customised root with initrd
//! -> `slot.img` (squashfs: gzip, xz or lzo) -> `disk.img` (GPT: esp | root_a | root_b |
//! data), `update.raucb` (signed RAUC verity bundle of the slot), `pxe/` (the
//! set the PXE provisioner serves: kernel, initrd, root image, disk image and
//! their sums) and `manifest.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use debvisor_image::progress::Progress;
use debvisor_image::recipe::Recipe;
use debvisor_image::signing::{self, Signing};
use debvisor_image::variant::{MarkFile, Variant};
use debvisor_image::{bundle, cmd, disk, grubenv, initrd, installer, manifest, mirror, pxe, rootfs, slot};

/// Builds DebVisor images.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Builds slot.img, disk.img, update.raucb, pxe/ and manifest.json from a recipe (run as root).
    Build(BuildArgs),
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// Recipe file, e.g. recipes/node.toml.
    #[arg(long)]
    recipe: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Debian mirror URL (default: the host's apt sources).
    #[arg(long, env = "DEBVISOR_MIRROR")]
    mirror: Option<String>,
    /// Cache directory (default: <workspace>/target/debvisor-cache).
    #[arg(long, env = "DEBVISOR_CACHE")]
    cache: Option<PathBuf>,
    /// Do not run cargo; use the binaries already in the binaries directory.
    #[arg(long)]
    no_cargo: bool,
    /// Where the workspace binaries are taken from (default: <workspace>/target/release).
    #[arg(long)]
    binaries_dir: Option<PathBuf>,
    /// Keep the work tree (<out>/.work) for inspection.
    #[arg(long)]
    keep_work: bool,
    /// Bundle signing certificate: PEM file or PKCS#11 URI (default: the
    /// development CA's signing certificate in <cache>/signing/).
    #[arg(long, value_name = "FILE|URI")]
    signing_cert: Option<String>,
    /// Bundle signing key: PEM file or PKCS#11 URI (with --signing-cert and --keyring).
    #[arg(long, value_name = "FILE|URI")]
    signing_key: Option<String>,
    /// CA certificate(s) (PEM) the node trusts; installed as /etc/rauc/keyring.pem.
    #[arg(long, value_name = "FILE")]
    keyring: Option<PathBuf>,
    /// Test variant: build with this image version instead of the recipe's.
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// Test variant: write a file into the image, e.g. /etc/debvisor-marker=v2 (repeatable).
    #[arg(long, value_name = "PATH=CONTENT")]
    mark_file: Vec<MarkFile>,
    /// Test variant: mask a unit in addition to the recipe's (repeatable).
    #[arg(long, value_name = "UNIT")]
    mask: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => build(&args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// The workspace this builder was compiled in (firmware/ and target/ live there).
fn workspace_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize().unwrap_or(dir)
}

const STEPS: usize = 13;

fn build(args: &BuildArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("debvisor-image build must run as root (mmdebstrap, chroot and mounts need it)");
    }
    let ws = workspace_root();
    let firmware = ws.join("firmware");
    let mut progress = Progress::new(STEPS);

    // 1. Recipe and mirror.
    let step = progress.step("Reading recipe");
    let mut recipe = Recipe::from_file(&args.recipe)?;
    let variant = Variant {
        version: args.version.clone(),
        mark_files: args.mark_file.clone(),
        mask: args.mask.clone(),
    };
    variant.apply(&mut recipe)?;
    let mirror = mirror::resolve(args.mirror.as_deref(), &recipe.debian.suite)?;
    let cache = args.cache.clone().unwrap_or_else(|| ws.join("target/debvisor-cache"));
    let flags = signing::Flags {
        cert: args.signing_cert.clone(),
        key: args.signing_key.clone(),
        keyring: args.keyring.clone(),
    };
    let signing = signing::resolve(&flags, &cache)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("Creating {}", args.out.display()))?;
    let out = args.out.canonicalize()?;
    let work = out.join(".work");
    std::fs::create_dir_all(&work)?;
    step.finish(&format!(
        "{} {} ({}, mirror {mirror}{}; bundle key: {})",
        recipe.image.name,
        recipe.image.version,
        recipe.debian.suite,
        if variant.is_empty() { "" } else { ", test variant" },
        if signing.development {
            format!("development CA in {}", cache.join("signing").display())
        } else {
            signing.cert.clone()
        }
    ));

    // 2. Workspace binaries.
    let step = progress.step("Building workspace binaries");
    let bin_dir = args.binaries_dir.clone().unwrap_or_else(|| ws.join("target/release"));
    if args.no_cargo || recipe.binaries.names.is_empty() {
        step.finish("skipped");
    } else {
        // The whole workspace, not `-p` each binary: cargo unifies features
        // over the packages it builds, so a subset would compile the
        // dependency tree again beside the workspace build of the tests.
        let mut c = cmd::command("cargo", ["build", "--release", "--locked", "--workspace"]);
        c.current_dir(&ws);
        cmd::run_streaming(&mut c, |l| step.detail(l)).context("cargo build of the image binaries failed")?;
        step.finish(&recipe.binaries.names.join(", "));
    }

    // 3. Base rootfs.
    let step = progress.step("Base root file system (mmdebstrap)");
    let key = rootfs::BaseKey::new(&recipe, &mirror, &work)?;
    let base_key = key.hash();
    let (tar, cached) = rootfs::base_tarball(key, &cache, &step, &|l| progress.log(l))?;
    step.finish(if cached { "cached" } else { "built" });

    // 4. Work tree.
    let step = progress.step("Unpacking base into the work tree");
    let root = work.join("rootfs");
    rootfs::extract(&tar, &root)?;
    step.finish("");

    // 5. Customisation.
    let step = progress.step("Customising (overlays, binaries, units)");
    rootfs::apply_overlays(&recipe.overlay_dirs(), &root)?;
    rootfs::install_binaries(&recipe.binaries.names, &bin_dir, &root)?;
    rootfs::configure(&recipe, &root)?;
    bundle::install_config(&root, &recipe.image.compatible, &signing.keyring)?;
    variant.write_marks(&root)?;
    step.finish("");

    // 6. Initrd.
    let step = progress.step("Building the initramfs");
    let kver = initrd::kernel_version(&root)?;
    initrd::install_config(&firmware, &recipe.initramfs.extra_modules, &root)?;
    let initrd_len = initrd::build(&root, &kver)?;
    let packages = rootfs::packages(&root)?;
    step.finish(&format!("kernel {kver}, initrd {}", human(initrd_len)));

    // 7. Slot.
    let step = progress.step(&format!(
        "Compressing slot.img (squashfs, {})",
        recipe.slot.compression.as_str()
    ));
    let slot_path = out.join("slot.img");
    let mut late: Vec<PathBuf> = slot::LATE.iter().map(PathBuf::from).collect();
    late.extend(recipe.binaries.names.iter().map(|n| Path::new("usr/bin").join(n)));
    late.extend(rootfs::overlay_files(&recipe.overlay_dirs())?);
    let slot_len = slot::build(&root, &slot_path, recipe.slot.compression, &late, &step)?;
    step.finish(&human(slot_len));

    // 8. Boot files and ESP.
    let step = progress.step("Boot loader and ESP");
    let layout = disk::Layout::new(&recipe.disk);
    let seed = format!("{}\0{}", recipe.image.name, recipe.image.version);
    let bootx64 = work.join("BOOTX64.EFI");
    disk::make_bootx64(&firmware.join("grub/embedded.cfg"), &bootx64)?;
    let grub_cfg = work.join("grub.cfg");
    std::fs::write(&grub_cfg, render_grub_cfg(&firmware, &recipe.kernel.cmdline)?)?;
    let grubenv_path = work.join("grubenv");
    std::fs::write(&grubenv_path, grubenv::initial())?;
    let esp = work.join("esp.img");
    let volume_id = disk::uuid_from(&seed, "esp-volume")[..8].to_owned();
    let files = disk::EspFiles {
        bootx64: &bootx64,
        grub_cfg: &grub_cfg,
        grubenv: &grubenv_path,
    };
    disk::make_esp(&esp, layout.part("esp").size, &volume_id, &files)?;
    step.finish("");

    // 9. Disk.
    let step = progress.step("Writing disk.img");
    let disk_path = out.join("disk.img");
    disk::make_disk(&layout, &seed, &disk_path, &esp, &slot_path, &progress)?;
    step.finish(&human(layout.total));

    // 10. Update bundle.
    let step = progress.step("RAUC update bundle (verity, signed)");
    let build_time = manifest::build_time();
    let slot_artifact = hash(&progress, &slot_path)?;
    let bundle_path = out.join("update.raucb");
    let description = format!("{} {}", recipe.image.name, recipe.image.version);
    let contents = bundle::Contents {
        compatible: &recipe.image.compatible,
        version: &recipe.image.version,
        description: &description,
        build: &build_time,
    };
    let bundle_info = make_bundle(
        &slot_path,
        &work,
        &bundle_path,
        &contents,
        &signing,
        &slot_artifact,
        &step,
    )?;
    step.finish(&format!(
        "{} ({}, signed by {})",
        human(bundle_info.size),
        bundle_info.file,
        bundle_info.signer
    ));

    // 11. PXE set.
    let step = progress.step("PXE set (pxe/)");
    let disk_artifact = hash(&progress, &disk_path)?;
    let pxe_dir = pxe::dir(&out);
    let sources = pxe::Sources {
        kernel: &root.join("boot/vmlinuz"),
        initrd: &root.join("boot/initrd.img"),
        slot: (&slot_path, &slot_artifact),
        disk: (&disk_path, disk::install_len(&layout, slot_len)),
    };
    let sums = pxe::write(&pxe_dir, &sources, &progress)?;
    step.finish(&pxe_dir.display().to_string());

    // 12. USB installer.
    let step = progress.step("USB installer (installer.iso)");
    let install_sha = sums
        .lines()
        .find_map(|l| l.strip_suffix("  install.img"))
        .context("The PXE set's sums have no install.img")?;
    let installer = installer::write(
        &out,
        &work,
        &seed,
        &installer::Sources {
            kernel: &root.join("boot/vmlinuz"),
            initrd: &root.join("boot/initrd.img"),
            install: (&pxe_dir.join("install.img"), install_sha),
            grub_cfg: &firmware.join("grub/installer.cfg"),
            version: &recipe.image.version,
        },
    )?;
    let installer_artifact = hash(&progress, &installer)?;
    step.finish(&format!(
        "{} ({})",
        installer.display(),
        human(std::fs::metadata(&installer)?.len())
    ));

    // 13. Manifest.
    let step = progress.step("Checksums and manifest.json");
    let artifacts = vec![slot_artifact, disk_artifact, installer_artifact];
    let m = manifest::Manifest {
        name: recipe.image.name.clone(),
        version: recipe.image.version.clone(),
        compatible: recipe.image.compatible.clone(),
        build_time,
        builder: format!("debvisor-image {}", env!("CARGO_PKG_VERSION")),
        debian: manifest::DebianInfo {
            suite: recipe.debian.suite.clone(),
            mirror,
            variant: recipe.debian.variant.clone(),
            components: recipe.debian.components.clone(),
            architecture: recipe.debian.architecture.clone(),
        },
        kernel_version: kver,
        kernel_cmdline_extra: recipe.kernel.cmdline.clone(),
        base_rootfs_key: base_key,
        packages: packages
            .into_iter()
            .map(|(name, version)| manifest::Package { name, version })
            .collect(),
        artifacts,
        bundle: bundle_info,
        variant: (!variant.is_empty()).then(|| variant.clone()),
    };
    let manifest_path = out.join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&m)? + "\n")?;
    if !args.keep_work {
        std::fs::remove_dir_all(&work).with_context(|| format!("Removing {}", work.display()))?;
    }
    step.finish(&format!("{} packages", m.packages.len()));
    progress.log(&format!(
        "Built {} {} in {:.0}s: {} (slot {}, disk {}, bundle {})",
        m.name,
        m.version,
        progress.elapsed().as_secs_f64(),
        out.display(),
        human(slot_len),
        human(layout.total),
        human(m.bundle.size)
    ));
    Ok(())
}

/// sha256 of an output file, with a byte bar.
fn hash(progress: &Progress, path: &Path) -> Result<manifest::Artifact> {
    let len = std::fs::metadata(path)?.len();
    let bar = progress.bytes(&format!("sha256 {}", path.display()), len);
    let a = manifest::artifact(path, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    Ok(a)
}

/// Builds the bundle, then verifies it as a node would (the node's
/// system.conf and the keyring that goes into the image) and fails the
/// build if it does not verify or does not carry this slot.
fn make_bundle(
    slot_path: &Path,
    work: &Path,
    bundle_path: &Path,
    contents: &bundle::Contents<'_>,
    signing: &Signing,
    slot: &manifest::Artifact,
    step: &debvisor_image::progress::Step,
) -> Result<bundle::BundleInfo> {
    bundle::build(slot_path, work, bundle_path, contents, signing, step)?;
    let (signer, image) = bundle::verify(bundle_path, work, contents, &signing.keyring, &slot.sha256)
        .with_context(|| {
            format!(
                "The bundle just built does not verify; {} was not kept",
                bundle_path.display()
            )
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(bundle_path);
        })?;
    let file = manifest::artifact(bundle_path, |_| {})?;
    Ok(bundle::BundleInfo {
        file: file.file,
        size: file.size,
        sha256: file.sha256,
        format: bundle::FORMAT.into(),
        compatible: contents.compatible.to_owned(),
        version: contents.version.to_owned(),
        image,
        signer,
        development_key: signing.development,
    })
}

/// Fills the recipe's extra kernel arguments into the A/B script.
fn render_grub_cfg(firmware: &Path, extra: &[String]) -> Result<String> {
    const PLACEHOLDER: &str = "@EXTRA_CMDLINE@";
    let path = firmware.join("grub/grub.cfg");
    let text = std::fs::read_to_string(&path).with_context(|| format!("Reading {}", path.display()))?;
    if !text.contains(PLACEHOLDER) {
        bail!("{} has no {PLACEHOLDER} placeholder", path.display());
    }
    // The recipe validated each argument to [A-Za-z0-9._,:=/+-]: safe inside GRUB quotes.
    Ok(text.replace(PLACEHOLDER, &extra.join(" ")))
}

fn human(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_grub_cfg_renders() {
        let cfg = render_grub_cfg(&workspace_root().join("firmware"), &["debug".into()]).unwrap();
        assert!(cfg.contains("\"debug\""));
        for needle in ["A_OK", "A_TRY", "B_OK", "B_TRY", "ORDER", "save_env", "gpt2", "gpt3"] {
            assert!(cfg.contains(needle), "{needle}");
        }
    }
}
