//! [`DbusRauc`] against the installed RAUC: a private dbus-daemon, `rauc
//! service` on it with a test system.conf (two file-backed raw slots, a
//! custom boot loader backend that keeps GRUB's good/bad/primary semantics in
//! files), bundles built here with `rauc bundle` and openssl keys.
//!
//! Skipped, with the reason printed, when `rauc` or `dbus-daemon` is not
//! installed or when not run as root (RAUC mounts bundles through loop
//! devices). Verity bundles are installed only where device-mapper exists
//! (`/dev/mapper/control`); elsewhere the good and flipped-payload installs
//! use plain bundles, whose signature covers the whole payload.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use debvisor_rauc::{Completion, DbusRauc, InstallErrorKind, InstallEvent, MarkState, Progress, Rauc, SlotRef};
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
    let mut rx = rauc.install(bundle).await.expect("InstallBundle accepted");
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

/// Writes the test system.conf and boot loader backend; returns the conf.
fn system_conf(dir: &Path, keyring: &Path) -> PathBuf {
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
    for slot in ["a.img", "b.img"] {
        std::fs::write(dir.join(slot), vec![0u8; 8 << 20]).unwrap();
    }
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    let conf = dir.join("system.conf");
    std::fs::write(
        &conf,
        format!(
            "[system]\ncompatible={COMPATIBLE}\nbootloader=custom\nmountprefix={mnt}\ndata-directory={data}\n\n\
             [handlers]\nbootloader-custom-backend={backend}\n\n[keyring]\npath={keyring}\n\n\
             [slot.rootfs.0]\ndevice={a}\ntype=raw\nbootname=A\n\n\
             [slot.rootfs.1]\ndevice={b}\ntype=raw\nbootname=B\n",
            mnt = dir.join("mnt").display(),
            data = dir.join("data").display(),
            backend = backend.display(),
            keyring = keyring.display(),
            a = dir.join("a.img").display(),
            b = dir.join("b.img").display(),
        ),
    )
    .unwrap();
    conf
}

#[tokio::test]
async fn real_rauc_status_marks_and_installs() {
    for tool in ["rauc", "dbus-daemon", "openssl", "mksquashfs"] {
        if !on_path(tool) {
            println!(
                "SKIPPED real_rauc: {tool} is not installed (apt-get install rauc dbus-daemon openssl squashfs-tools; qa/setup-host.sh does)"
            );
            return;
        }
    }
    if !nix_is_root() {
        println!(
            "SKIPPED real_rauc: RAUC mounts bundles through loop devices, which needs root (run the test as root)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_bus, address) = dbus_daemon(dir);
    let signer = keypair(dir, "signer");
    let stranger = keypair(dir, "stranger");
    let conf = system_conf(dir, &signer.0);
    let log = std::fs::File::create(dir.join("rauc.log")).unwrap();
    let _rauc_service = Reaper(
        Command::new("rauc")
            .arg("service")
            .arg(format!("--conf={}", conf.display()))
            .arg("--override-boot-slot=A")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rauc service starts"),
    );
    let rauc = DbusRauc::connect_address(&address).await.expect("bus reachable");
    let started = Instant::now();
    let status = loop {
        match rauc.status().await {
            Ok(s) => break s,
            Err(e) if started.elapsed() < Duration::from_secs(15) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "RAUC did not come up on the private bus: {e}; log: {}",
                std::fs::read_to_string(dir.join("rauc.log")).unwrap_or_default()
            ),
        }
    };

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

    let verity = Path::new("/dev/mapper/control").exists();
    let format = if verity { "verity" } else { "plain" };
    if !verity {
        println!(
            "no device-mapper on this host (/dev/mapper/control): good and flipped-payload installs use plain bundles"
        );
    }
    let image: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    // A good bundle is written into the other slot, which becomes primary.
    let good = bundle(dir, "good.raucb", format, COMPATIBLE, "1.1", &image, &signer);
    let (steps, done) = install(&rauc, &good).await;
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

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
