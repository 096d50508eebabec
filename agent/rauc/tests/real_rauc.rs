//! [`DbusRauc`] against the installed RAUC: a private dbus-daemon, `rauc
//! service` on it with a test system.conf (two file-backed raw slots, a
//! custom boot loader backend that keeps GRUB's good/bad/primary semantics in
//! files), bundles built here with `rauc bundle` and openssl keys.
//!
//! A second test runs RAUC with its GRUB backend on a GRUB environment file
//! (`grub-editenv`), for what RAUC and the agent say about trial boots.
//!
//! Skipped, with the reason printed, when `rauc` or `dbus-daemon` is not
//! installed or when not run as root (RAUC mounts bundles through loop
//! devices). Verity bundles are installed only where the kernel has
//! device-mapper (`/proc/misc`); elsewhere the good and flipped-payload installs
//! use plain bundles, whose signature covers the whole payload.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use debvisor_rauc::{
    BundleVerifier, Completion, DbusRauc, InstallErrorKind, InstallEvent, MarkState, Progress, Rauc, RaucInfoVerifier,
    SlotRef,
};
use sha2::Digest;

const COMPATIBLE: &str = "debvisor-test-x86_64";

/// Kills a child process when dropped.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA certificate and key (`ca.pem`, `key.pem` in `dir`).
fn keypair(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{cn}.cert.pem")), dir.join(format!("{cn}.key.pem")));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

/// Builds a bundle of `image` in `dir/name`.
fn bundle(
    dir: &Path,
    name: &str,
    format: &str,
    compatible: &str,
    version: &str,
    image: &[u8],
    signer: &(PathBuf, PathBuf),
) -> PathBuf {
    let content = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("rootfs.img"), image).unwrap();
    std::fs::write(
        content.join("manifest.raucm"),
        format!(
            "[update]\ncompatible={compatible}\nversion={version}\n\n[bundle]\nformat={format}\n\n[image.rootfs]\nfilename=rootfs.img\n"
        ),
    )
    .unwrap();
    let out = dir.join(name);
    run(Command::new("rauc")
        .arg("bundle")
        .arg(format!("--cert={}", signer.0.display()))
        .arg(format!("--key={}", signer.1.display()))
        .arg(&content)
        .arg(&out));
    out
}

/// A copy of `src` with the byte at `offset` (negative: from the end)
/// inverted.
fn flipped(src: &Path, name: &str, offset: i64) -> PathBuf {
    let mut bytes = std::fs::read(src).unwrap();
    let len = i64::try_from(bytes.len()).unwrap();
    let at = usize::try_from(if offset < 0 { len + offset } else { offset }).unwrap();
    bytes[at] = !bytes[at];
    let out = src.with_file_name(name);
    std::fs::write(&out, bytes).unwrap();
    out
}

/// Installs `bundle` and returns the progress seen and the completion.
async fn install(rauc: &DbusRauc, bundle: &Path) -> (Vec<Progress>, Completion) {
    events(rauc.install(bundle).await.expect("InstallBundle accepted")).await
}

/// The progress seen and the completion of an install.
async fn events(mut rx: tokio::sync::mpsc::Receiver<InstallEvent>) -> (Vec<Progress>, Completion) {
    let mut steps = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(InstallEvent::Progress(p))) => steps.push(p),
            Ok(Some(InstallEvent::Completed(c))) => return (steps, c),
            Ok(None) => panic!("the event stream ended without Completed"),
            Err(_) => panic!("no Completed within 60 s; progress so far: {steps:?}"),
        }
    }
}

fn failed_kind(c: &Completion) -> (InstallErrorKind, String) {
    match c {
        Completion::Failed { kind, error, .. } => (*kind, error.clone()),
        Completion::Succeeded => panic!("the install succeeded"),
    }
}

/// Starts a dbus-daemon whose policy lets root own and call everything, and
/// returns it with its address.
fn dbus_daemon(dir: &Path) -> (Reaper, String) {
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy user="root">
    <allow own="de.pengutronix.rauc"/>
    <allow send_destination="de.pengutronix.rauc"/>
  </policy>
  <policy context="default">
    <allow user="root"/>
    <allow send_destination="org.freedesktop.DBus"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"#,
            dir.join("bus.sock").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Reaper(child), line.trim().to_string())
}

/// The boot loader of a test system.conf.
enum Boot {
    /// RAUC's custom backend, a shell script keeping state in files.
    Custom,
    /// RAUC's GRUB backend on `dir/grubenv`.
    Grub,
}

/// Writes the test system.conf (and the boot loader backend for
/// [`Boot::Custom`]); returns the conf. Its pre-install handler holds an
/// install while `dir/hold` exists (after creating `dir/held`), so a test
/// can look at RAUC in the middle of one.
fn system_conf(dir: &Path, keyring: &Path, boot: Boot) -> PathBuf {
    let hold = dir.join("hold.sh");
    std::fs::write(
        &hold,
        format!(
            "#!/bin/sh
d={}
if [ -e \"$d/hold\" ]; then touch \"$d/held\"; while [ -e \"$d/hold\" ]; do sleep 0.05; done; fi\n",
            dir.display()
        ),
    )
    .unwrap();
    run(Command::new("chmod").arg("0755").arg(&hold));
    let bootloader = match boot {
        Boot::Custom => format!(
            "bootloader=custom\n\n[handlers]\nbootloader-custom-backend={}\npre-install={}\n",
            custom_backend(dir).display(),
            hold.display()
        ),
        Boot::Grub => format!(
            "bootloader=grub\ngrubenv={}\n\n[handlers]\npre-install={}\n",
            dir.join("grubenv").display(),
            hold.display()
        ),
    };
    for slot in ["a.img", "b.img"] {
        std::fs::write(dir.join(slot), vec![0u8; 8 << 20]).unwrap();
    }
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    let conf = dir.join("system.conf");
    std::fs::write(
        &conf,
        format!(
            "[system]\ncompatible={COMPATIBLE}\nmountprefix={mnt}\ndata-directory={data}\n{bootloader}\n\
             [keyring]\npath={keyring}\n\n\
             [slot.rootfs.0]\ndevice={a}\ntype=raw\nbootname=A\n\n\
             [slot.rootfs.1]\ndevice={b}\ntype=raw\nbootname=B\n",
            mnt = dir.join("mnt").display(),
            data = dir.join("data").display(),
            keyring = keyring.display(),
            a = dir.join("a.img").display(),
            b = dir.join("b.img").display(),
        ),
    )
    .unwrap();
    conf
}

/// RAUC's custom boot loader backend, a script; returns its path.
fn custom_backend(dir: &Path) -> PathBuf {
    let backend = dir.join("bootloader.sh");
    // RAUC's custom backend: get-primary, set-primary NAME, get-state NAME,
    // set-state NAME good|bad. set-primary also marks the slot good, as
    // RAUC's grub backend does (X_OK=1 X_TRY=0).
    std::fs::write(
        &backend,
        format!(
            "#!/bin/sh\nd={}\nmkdir -p \"$d\"\ncase \"$1\" in\n\
             get-primary) cat \"$d/primary\" 2>/dev/null || echo A ;;\n\
             set-primary) echo \"$2\" > \"$d/primary\"; echo good > \"$d/state.$2\" ;;\n\
             get-state) cat \"$d/state.$2\" 2>/dev/null || echo good ;;\n\
             set-state) echo \"$3\" > \"$d/state.$2\" ;;\n\
             *) echo \"unknown command $1\" >&2; exit 1 ;;\nesac\n",
            dir.join("boot").display()
        ),
    )
    .unwrap();
    run(Command::new("chmod").arg("0755").arg(&backend));
    backend
}

/// False, with the reason printed, when the tools or privileges the real
/// RAUC needs are missing.
fn can_run(test: &str, tools: &[&str]) -> bool {
    for tool in tools {
        if !on_path(tool) {
            println!(
                "SKIPPED {test}: {tool} is not installed (apt-get install rauc dbus-daemon openssl squashfs-tools \
                 grub-common; qa/setup-host.sh does)"
            );
            return false;
        }
    }
    if !nix_is_root() {
        println!("SKIPPED {test}: RAUC mounts bundles through loop devices, which needs root (run the test as root)");
        return false;
    }
    true
}

/// `rauc service` with `conf` on the bus at `address`, booted from slot A,
/// and the agent's client once RAUC answers; the first status.
async fn start_rauc(dir: &Path, conf: &Path, address: &str) -> (Reaper, DbusRauc, debvisor_rauc::RaucStatus) {
    let log = std::fs::File::create(dir.join("rauc.log")).unwrap();
    let service = Reaper(
        Command::new("rauc")
            .arg("service")
            .arg(format!("--conf={}", conf.display()))
            .arg("--override-boot-slot=A")
            .env("DBUS_SYSTEM_BUS_ADDRESS", address)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rauc service starts"),
    );
    let rauc = DbusRauc::connect_address(address)
        .await
        .expect("bus reachable")
        .with_system_conf(conf.to_owned());
    let started = Instant::now();
    let status = loop {
        match rauc.status().await {
            Ok(s) => break s,
            Err(_) if started.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "RAUC did not come up on the private bus: {e}; log: {}",
                std::fs::read_to_string(dir.join("rauc.log")).unwrap_or_default()
            ),
        }
    };
    (service, rauc, status)
}

#[tokio::test]
async fn real_rauc_status_marks_and_installs() {
    if !can_run("real_rauc", &["rauc", "dbus-daemon", "openssl", "mksquashfs"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_bus, address) = dbus_daemon(dir);
    let signer = keypair(dir, "signer");
    let stranger = keypair(dir, "stranger");
    let conf = system_conf(dir, &signer.0, Boot::Custom);
    let (_rauc_service, rauc, status) = start_rauc(dir, &conf, &address).await;
    assert_eq!(
        status.trial_error, "",
        "the custom boot loader has no trial boots to read"
    );

    // Status as RAUC reports it.
    assert_eq!(status.compatible, COMPATIBLE);
    assert_eq!(status.boot_slot, "A");
    assert_eq!(status.operation, "idle");
    assert_eq!(status.primary, "rootfs.0", "{}", status.primary_error);
    let names: Vec<&str> = status.slots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["rootfs.0", "rootfs.1"]);
    assert_eq!(status.booted().unwrap().name, "rootfs.0");
    assert_eq!(status.other().unwrap().name, "rootfs.1");
    assert_eq!(status.slots[0].bootname, "A");
    assert_eq!(status.slots[0].slot_type, "raw");
    assert_eq!(status.slots[0].class, "rootfs");
    assert!(status.slots[0].device.ends_with("a.img"));

    // Marks.
    let out = rauc.mark(MarkState::Good, &SlotRef::booted()).await.unwrap();
    assert_eq!(
        (out.slot.as_str(), out.message.as_str()),
        ("rootfs.0", "marked slot rootfs.0 as good")
    );
    let out = rauc.mark(MarkState::Bad, &SlotRef::other()).await.unwrap();
    assert_eq!(out.slot, "rootfs.1");
    assert_eq!(rauc.status().await.unwrap().slots[1].boot_status, "bad");
    let e = rauc
        .mark(MarkState::Good, &SlotRef::try_from("rootfs.7").unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("rootfs.7"), "{e}");

    // The node can exist while the kernel has no device-mapper driver
    // (opening it then fails with ENODEV): ask the kernel.
    let verity = Path::new("/dev/mapper/control").exists()
        && std::fs::read_to_string("/proc/misc").is_ok_and(|m| m.contains("device-mapper"));
    let format = if verity { "verity" } else { "plain" };
    if !verity {
        println!(
            "no device-mapper driver on this host (/proc/misc): good and flipped-payload installs use plain bundles"
        );
    }
    let image: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    // A good bundle is written into the other slot, which becomes primary.
    // Held in its pre-install handler, RAUC refuses GetSlotStatus ("already
    // processing a different method"); the agent's status still answers,
    // with the table read before and the reason it is not current.
    let good = bundle(dir, "good.raucb", format, COMPATIBLE, "1.1", &image, &signer);
    let rauc_before = rauc.status().await.unwrap();
    std::fs::write(dir.join("hold"), b"").unwrap();
    let mut rx = rauc.install(&good).await.expect("InstallBundle accepted");
    let held = Instant::now();
    let mut early = Vec::new();
    while !dir.join("held").exists() {
        // An install that ends (or stalls) before its pre-install handler
        // says why: its events and RAUC's own log.
        while let Ok(e) = rx.try_recv() {
            early.push(e);
        }
        let ended = early.iter().any(|e| matches!(e, InstallEvent::Completed(_)));
        assert!(
            !ended && held.elapsed() < Duration::from_secs(60),
            "the pre-install handler never ran; install events: {early:?}; RAUC log:\n{}",
            std::fs::read_to_string(dir.join("rauc.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = rauc.status().await.expect("status while RAUC installs");
    assert_eq!(during.operation, "installing");
    assert!(during.slots_note.contains("while it is installing"), "{during:?}");
    assert_eq!(during.slots, rauc_before.slots, "the table read before the install");
    std::fs::remove_file(dir.join("hold")).unwrap();
    let (later, done) = events(rx).await;
    let steps: Vec<Progress> = early
        .into_iter()
        .filter_map(|e| match e {
            InstallEvent::Progress(p) => Some(p),
            InstallEvent::Completed(_) => None,
        })
        .chain(later)
        .collect();
    assert_eq!(done, Completion::Succeeded, "progress: {steps:?}");
    assert!(steps.iter().any(|p| p.message == "Verifying signature"), "{steps:?}");
    assert!(
        steps.iter().any(|p| p.message == "Copying image to rootfs.1"),
        "{steps:?}"
    );
    assert_eq!(steps.last().unwrap().percent, 100);
    let st = rauc.status().await.unwrap();
    assert_eq!(st.primary, "rootfs.1");
    assert_eq!(st.last_error, "");
    let b = &st.slots[1];
    assert_eq!(b.bundle_version, "1.1");
    assert_eq!(b.bundle_compatible, COMPATIBLE);
    assert_eq!(b.boot_status, "good");
    assert_eq!(b.sha256, hex::encode(sha2::Sha256::digest(&image)));
    assert_eq!(b.size, image.len() as u64);
    assert_eq!(b.installed_count, 1);
    assert!(b.installed_unix_s > 1_700_000_000, "{}", b.installed_unix_s);
    let written = std::fs::read(dir.join("b.img")).unwrap();
    assert_eq!(&written[..image.len()], &image[..]);

    // Refused bundles: classified, and the slot is not written again.
    let other_image: Vec<u8> = image.iter().map(|b| b ^ 0x5a).collect();
    let payload_flip = flipped(
        &bundle(dir, "second.raucb", format, COMPATIBLE, "1.2", &other_image, &signer),
        "payload-flip.raucb",
        4096,
    );
    let (_, done) = install(&rauc, &payload_flip).await;
    let (kind, error) = failed_kind(&done);
    assert_eq!(kind, InstallErrorKind::BadSignature, "{error}");

    let verity_good = bundle(dir, "verity.raucb", "verity", COMPATIBLE, "1.3", &other_image, &signer);
    let sig_flip = flipped(&verity_good, "signature-flip.raucb", -300);
    let (_, done) = install(&rauc, &sig_flip).await;
    let (kind, error) = failed_kind(&done);
    assert_eq!(kind, InstallErrorKind::BadSignature, "{error}");
    assert!(error.contains("signature"), "{error}");

    let untrusted = bundle(
        dir,
        "untrusted.raucb",
        format,
        COMPATIBLE,
        "1.4",
        &other_image,
        &stranger,
    );
    let (_, done) = install(&rauc, &untrusted).await;
    let (kind, error) = failed_kind(&done);
    assert_eq!(kind, InstallErrorKind::BadSignature, "{error}");

    let wrong = bundle(
        dir,
        "wrong.raucb",
        format,
        "some-other-board",
        "1.5",
        &other_image,
        &signer,
    );
    let (_, done) = install(&rauc, &wrong).await;
    let (kind, error) = failed_kind(&done);
    assert_eq!(kind, InstallErrorKind::WrongCompatible, "{error}");
    assert!(
        error.contains("some-other-board") && error.contains(COMPATIBLE),
        "{error}"
    );

    let junk = dir.join("junk.raucb");
    std::fs::write(&junk, b"this is not a bundle\n").unwrap();
    let (_, done) = install(&rauc, &junk).await;
    let (kind, error) = failed_kind(&done);
    assert_eq!(kind, InstallErrorKind::InvalidBundle, "{error}");

    let st = rauc.status().await.unwrap();
    assert_eq!(st.slots[1].installed_count, 1, "refused bundles never reach the slot");
    assert_eq!(st.slots[1].bundle_version, "1.1");
    assert_eq!(&std::fs::read(dir.join("b.img")).unwrap()[..image.len()], &image[..]);
    assert!(!st.last_error.is_empty());

    // Rollback: make the booted slot primary again.
    let out = rauc.mark(MarkState::Active, &SlotRef::booted()).await.unwrap();
    assert_eq!(out.message, "activated slot rootfs.0");
    assert_eq!(rauc.status().await.unwrap().primary, "rootfs.0");
}

/// Runs `grub-editenv FILE set K=V...`.
fn grub_set(env: &Path, vars: &[&str]) {
    run(Command::new("grub-editenv").arg(env).arg("set").args(vars));
}

/// RAUC's GRUB backend on a real environment block: RAUC calls the booted
/// slot "bad" while it is on trial (`A_OK=1 A_TRY=1`); the agent's status
/// says on trial instead, and a mark ends the trial. Another slot with
/// `B_TRY=1` failed its trial: not on trial, and bad.
#[tokio::test]
async fn real_rauc_grub_trial_boots() {
    if !can_run("real_rauc_grub", &["rauc", "dbus-daemon", "openssl", "grub-editenv"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env = dir.join("grubenv");
    run(Command::new("grub-editenv").arg(&env).arg("create"));
    grub_set(&env, &["ORDER=A B", "A_OK=1", "A_TRY=1", "B_OK=1", "B_TRY=0"]);
    let (_bus, address) = dbus_daemon(dir);
    let signer = keypair(dir, "signer");
    let conf = system_conf(dir, &signer.0, Boot::Grub);
    let (_rauc_service, rauc, st) = start_rauc(dir, &conf, &address).await;

    assert_eq!(st.trial_error, "");
    let (a, b) = (&st.slots[0], &st.slots[1]);
    assert_eq!((a.name.as_str(), a.is_booted()), ("rootfs.0", true));
    assert_eq!(a.boot_status, "bad", "RAUC 1.8 calls a slot with X_TRY=1 bad");
    assert!(a.trying, "the booted slot is on trial: {a:?}");
    assert!(!a.is_confirmed_good());
    assert_eq!((b.boot_status.as_str(), b.trying), ("good", false));

    // The boot gate's mark ends the trial.
    rauc.mark(MarkState::Good, &SlotRef::booted()).await.unwrap();
    let st = rauc.status().await.unwrap();
    let a = &st.slots[0];
    assert_eq!((a.boot_status.as_str(), a.trying), ("good", false));
    assert!(a.is_confirmed_good());
    let block = std::fs::read_to_string(&env).unwrap();
    assert!(block.contains("A_TRY=0") && block.contains("A_OK=1"), "{block}");

    // B tried and never confirmed while A runs: B failed its trial.
    grub_set(&env, &["B_TRY=1"]);
    let st = rauc.status().await.unwrap();
    let b = &st.slots[1];
    assert_eq!((b.boot_status.as_str(), b.trying), ("bad", false), "{b:?}");

    // An environment GRUB could not read leaves the trial state unknown.
    std::fs::write(&env, b"A_OK=1\n").unwrap();
    match rauc.status().await {
        Ok(st) => assert!(st.trial_error.contains("grubenv"), "{}", st.trial_error),
        // RAUC itself reads the same block for the slot states.
        Err(e) => assert!(e.to_string().contains("GetSlotStatus"), "{e}"),
    }
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs [`RaucInfoVerifier`] with `conf` on `bundle`.
async fn verify(conf: &Path, bundle: &Path) -> Result<debvisor_rauc::BundleInfo, debvisor_rauc::VerifyError> {
    let v = RaucInfoVerifier {
        conf: Some(conf.to_path_buf()),
        ..Default::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let seen = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(p) = rx.recv().await {
            all.push(p);
        }
        all
    });
    let r = v.verify(bundle, tx).await;
    let seen = seen.await.unwrap();
    if r.is_ok() {
        assert_eq!(seen.last(), Some(&100), "progress ends at 100: {seen:?}");
    }
    r
}

/// The verifier against bundles made by `rauc bundle`: the root hash it
/// computes equals the signed one, and a flipped payload byte, a flipped
/// signature byte and a foreign signer are refused. Needs no root.
#[tokio::test]
async fn verifier_agrees_with_real_verity_bundles() {
    if !on_path("rauc") || !on_path("openssl") || !on_path("mksquashfs") {
        eprintln!("skipped: rauc, openssl or mksquashfs is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let signer = keypair(dir, "signer");
    let conf = dir.join("info.conf");
    std::fs::write(
        &conf,
        format!(
            "[system]\ncompatible={COMPATIBLE}\nbootloader=noop\n\n[keyring]\npath={}\n",
            signer.0.display()
        ),
    )
    .unwrap();
    // 1 MiB + 5 KiB of varied data: the payload spans several hash blocks.
    let image: Vec<u8> = (0..(1 << 20) + 5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let good = bundle(dir, "good.raucb", "verity", COMPATIBLE, "1.2.3", &image, &signer);

    let info = verify(&conf, &good).await.expect("a good bundle verifies");
    assert_eq!(info.compatible, COMPATIBLE);
    assert_eq!(info.version, "1.2.3");
    assert_eq!(info.format, "verity");
    let root = debvisor_rauc::bundle_root_hash(&good, &info.verity_salt, info.verity_size, &mut |_| {}).unwrap();
    assert_eq!(root, info.verity_hash, "our root hash equals the one rauc signed");

    // A flipped byte inside the payload: the signature still verifies, the
    // verity root does not.
    let payload_flip = flipped(&good, "payload-flip.raucb", 5000);
    let e = verify(&conf, &payload_flip).await.unwrap_err();
    assert_eq!(e.kind, InstallErrorKind::BadSignature, "{e}");
    assert!(e.message.contains("does not match its signature"), "{e}");

    // A flipped byte inside the CMS signature (just before its length).
    let sig_flip = flipped(&good, "sig-flip.raucb", -100);
    let e = verify(&conf, &sig_flip).await.unwrap_err();
    assert_eq!(e.kind, InstallErrorKind::BadSignature, "{e}");
    assert!(e.message.contains("rauc info refused"), "{e}");

    // Signed by a key the keyring does not trust.
    let stranger = keypair(dir, "stranger");
    let foreign = bundle(dir, "foreign.raucb", "verity", COMPATIBLE, "1", &image, &stranger);
    let e = verify(&conf, &foreign).await.unwrap_err();
    assert_eq!(e.kind, InstallErrorKind::BadSignature, "{e}");

    // Another compatible verifies; the caller compares it with the node's.
    let other = bundle(dir, "other.raucb", "verity", "other-node", "1", &image, &signer);
    assert_eq!(verify(&conf, &other).await.unwrap().compatible, "other-node");

    // Cross-check with veritysetup where it is installed.
    if on_path("veritysetup") {
        let len = std::fs::metadata(&good).unwrap().len();
        let mut tail = [0u8; 8];
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(&good).unwrap();
        f.seek(std::io::SeekFrom::Start(len - 8)).unwrap();
        f.read_exact(&mut tail).unwrap();
        let payload = len - 8 - u64::from_be_bytes(tail) - info.verity_size;
        let data = dir.join("payload.img");
        std::fs::write(
            &data,
            &std::fs::read(&good).unwrap()[..usize::try_from(payload).unwrap()],
        )
        .unwrap();
        let out = Command::new("veritysetup")
            .args([
                "format",
                "--format=1",
                "--hash=sha256",
                "--data-block-size=4096",
                "--hash-block-size=4096",
            ])
            .arg(format!("--salt={}", info.verity_salt))
            .arg(&data)
            .arg(dir.join("hash.img"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("Root hash:      \t{root}")) || text.contains(&root),
            "{text}"
        );
    }
}

/// How long the verifier takes on the image build's bundle (when built),
/// with the development keyring; printed for the record.
#[tokio::test]
async fn verifier_on_the_built_image_bundle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let (bundle, ca) = (
        root.join("qa/image/update.raucb"),
        root.join("debvisor-cache/signing/ca.cert.pem"),
    );
    if !on_path("rauc") || !bundle.is_file() || !ca.is_file() {
        eprintln!("skipped: no rauc, or no built {} / {}", bundle.display(), ca.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("info.conf");
    std::fs::write(
        &conf,
        format!(
            "[system]\ncompatible=debvisor-node-x86_64\nbootloader=noop\n\n[keyring]\npath={}\ncheck-purpose=codesign\n",
            ca.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    match verify(&conf, &bundle).await {
        Ok(info) => eprintln!(
            "verified {} ({} bytes, version {}) in {:?}",
            bundle.display(),
            std::fs::metadata(&bundle).unwrap().len(),
            info.version,
            started.elapsed()
        ),
        // The cache's CA may have been regenerated after the bundle was built.
        Err(e) => eprintln!("not verified ({}): {e}", started.elapsed().as_millis()),
    }
}
