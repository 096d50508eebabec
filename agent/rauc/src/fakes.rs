//! [`FakeRauc`]: an in-memory RAUC with two root slots, for tests and the
//! agent's simulation mode.
//!
//! An install reads the bundle file the way a test or the simulated agent
//! hands it over: a file that does not start with the squashfs magic
//! (`hsqs`, as every RAUC bundle does) is refused as an invalid bundle; a
//! `compatible=` or `version=` line in its first or last 64 KiB (where a
//! real bundle's manifest sits) is read as the bundle's manifest. It then
//! walks RAUC 1.8's progress steps, one every `step`, writes the other slot's
//! status and makes that slot primary.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::{
    BundleInfo, BundleVerifier, Completion, InstallErrorKind, InstallEvent, MarkOutcome, MarkState, Progress, Rauc,
    RaucError, RaucStatus, SlotRef, SlotStatus, VerifyError, classify,
};

/// RAUC 1.8's progress steps of an install (percent, message, depth), as
/// seen on the bus.
const STEPS: &[(u32, &str, u32)] = &[
    (0, "Installing", 1),
    (0, "Determining slot states", 2),
    (20, "Determining slot states done.", 2),
    (20, "Checking bundle", 2),
    (20, "Verifying signature", 3),
    (40, "Verifying signature done.", 3),
    (40, "Checking bundle done.", 2),
    (40, "Checking manifest contents", 2),
    (60, "Checking manifest contents done.", 2),
    (80, "Updating slots", 2),
    (90, "Copying image to {slot}", 3),
    (99, "Copying image to {slot} done.", 3),
    (99, "Updating slots done.", 2),
    (100, "Installing done.", 1),
];

/// The index in [`STEPS`] after which a failing bundle fails.
const CHECK_STEPS: usize = 6;

#[derive(Debug)]
struct State {
    status: RaucStatus,
    unreachable: bool,
    fail_next: Option<String>,
    marks: Vec<(MarkState, String)>,
}

/// An in-memory RAUC. Cloning shares the state.
#[derive(Debug, Clone)]
pub struct FakeRauc {
    state: Arc<Mutex<State>>,
    step: Duration,
}

impl FakeRauc {
    /// Two slots of class `rootfs`: `rootfs.0` (boot name A, booted, good,
    /// primary) and `rootfs.1` (B, inactive, never installed, bad), on a node
    /// whose compatible string is `compatible`. Install steps take 20 ms.
    pub fn new(compatible: &str) -> Self {
        let slot = |name: &str, boot: &str, state: &str, status: &str| SlotStatus {
            name: name.into(),
            class: "rootfs".into(),
            bootname: boot.into(),
            device: format!("/dev/disk/by-partlabel/root_{}", boot.to_ascii_lowercase()),
            slot_type: "raw".into(),
            state: state.into(),
            boot_status: status.into(),
            ..Default::default()
        };
        let status = RaucStatus {
            compatible: compatible.into(),
            boot_slot: "A".into(),
            operation: "idle".into(),
            primary: "rootfs.0".into(),
            slots: vec![
                slot("rootfs.0", "A", "booted", "good"),
                slot("rootfs.1", "B", "inactive", "bad"),
            ],
            ..Default::default()
        };
        Self {
            state: Arc::new(Mutex::new(State {
                status,
                unreachable: false,
                fail_next: None,
                marks: Vec::new(),
            })),
            step: Duration::from_millis(20),
        }
    }

    /// The same fake with install steps `step` apart.
    pub fn with_step(mut self, step: Duration) -> Self {
        self.step = step;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the booted slot's boot status (`good` or `bad`, or empty).
    pub fn set_booted_status(&self, status: &str) {
        let mut st = self.lock();
        if let Some(s) = st.status.slots.iter_mut().find(|s| s.is_booted()) {
            s.boot_status = status.into();
        }
    }

    /// Puts the booted slot on trial (GRUB's `X_OK=1 X_TRY=1`: RAUC reports
    /// it bad meanwhile) or confirms it (`X_TRY=0`: good); marking it good
    /// or bad ends the trial too, as RAUC's GRUB backend does.
    pub fn set_booted_trying(&self, trying: bool) {
        let mut st = self.lock();
        if let Some(s) = st.status.slots.iter_mut().find(|s| s.is_booted()) {
            s.trying = trying;
            s.boot_status = if trying { "bad" } else { "good" }.into();
        }
    }

    /// Makes every call fail as if RAUC were not on the bus.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
    }

    /// Makes the next install fail after RAUC's checks with `error` (a RAUC
    /// `LastError` text, classified like the real one).
    pub fn fail_next_install(&self, error: &str) {
        self.lock().fail_next = Some(error.into());
    }

    /// Every mark set so far: state and the slot name it resolved to.
    pub fn marks(&self) -> Vec<(MarkState, String)> {
        self.lock().marks.clone()
    }

    fn check_reachable(&self) -> Result<(), RaucError> {
        if self.lock().unreachable {
            return Err(RaucError::Unavailable {
                source: zbus::Error::Failure("fake RAUC: not on the bus".into()),
            });
        }
        Ok(())
    }
}

/// The slot `r` names in `st`.
fn resolve<'a>(st: &'a RaucStatus, r: &SlotRef) -> Option<&'a SlotStatus> {
    match r.as_str() {
        "booted" => st.booted(),
        "other" => st.other(),
        name => st.slots.iter().find(|s| s.name == name),
    }
}

#[async_trait::async_trait]
impl Rauc for FakeRauc {
    async fn status(&self) -> Result<RaucStatus, RaucError> {
        self.check_reachable()?;
        let mut st = self.lock().status.clone();
        if st.operation != "idle" {
            // As DbusRauc reports it: RAUC answers no GetSlotStatus then.
            st.slots_note = crate::slots_note(&st.operation, "already processing a different method", true);
        }
        Ok(st)
    }

    async fn mark(&self, state: MarkState, slot: &SlotRef) -> Result<MarkOutcome, RaucError> {
        self.check_reachable()?;
        let mut st = self.lock();
        let name = resolve(&st.status, slot)
            .map(|s| s.name.clone())
            .ok_or_else(|| RaucError::Refused {
                call: "Mark",
                message: format!("No slot with class rootfs and name '{slot}' found"),
            })?;
        let message = match state {
            MarkState::Good => format!("marked slot {name} as good"),
            MarkState::Bad => format!("marked slot {name} as bad"),
            MarkState::Active => format!("activated slot {name}"),
        };
        let now = now_unix_s();
        let s = st.status.slots.iter_mut().find(|s| s.name == name).expect("resolved");
        // RAUC's GRUB backend writes X_TRY=0 with every mark.
        s.trying = false;
        match state {
            MarkState::Good => s.boot_status = "good".into(),
            MarkState::Bad => s.boot_status = "bad".into(),
            MarkState::Active => {
                s.boot_status = "good".into();
                s.activated_count += 1;
                s.activated_unix_s = now;
            }
        }
        if state == MarkState::Active {
            st.status.primary = name.clone();
        } else if state == MarkState::Bad && st.status.primary == name {
            // The boot loader falls back to the other slot.
            let other = st.status.slots.iter().find(|s| s.name != name && s.is_good());
            st.status.primary = other.map(|s| s.name.clone()).unwrap_or_default();
        }
        st.marks.push((state, name.clone()));
        Ok(MarkOutcome { slot: name, message })
    }

    async fn install(&self, bundle: &Path) -> Result<mpsc::Receiver<InstallEvent>, RaucError> {
        self.check_reachable()?;
        let (target, compatible, fail) = {
            let mut st = self.lock();
            if st.status.operation != "idle" {
                return Err(RaucError::Refused {
                    call: "InstallBundle",
                    message: "Already processing a different method".into(),
                });
            }
            let target = st.status.other().map(|s| s.name.clone()).unwrap_or_default();
            st.status.operation = "installing".into();
            st.status.last_error.clear();
            (target, st.status.compatible.clone(), st.fail_next.take())
        };
        let manifest = read_manifest(bundle);
        let error = fail.or_else(|| match &manifest {
            Err(e) => Some(e.clone()),
            Ok(m) => match &m.compatible {
                Some(c) if *c != compatible => Some(format!(
                    "Installation error: Compatible mismatch: Expected '{compatible}' but bundle manifest has '{c}'"
                )),
                _ => None,
            },
        });
        let size = std::fs::metadata(bundle).map(|m| m.len()).unwrap_or(0);
        let version = manifest.ok().and_then(|m| m.version).unwrap_or_default();
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            for (i, (percent, message, depth)) in STEPS.iter().enumerate() {
                if error.is_some() && i > CHECK_STEPS {
                    break;
                }
                tokio::time::sleep(me.step).await;
                let p = Progress {
                    percent: *percent,
                    message: message.replace("{slot}", &target),
                    depth: *depth,
                };
                me.lock().status.progress = p.clone();
                let _ = tx.send(InstallEvent::Progress(p)).await;
            }
            let completion = {
                let mut st = me.lock();
                st.status.operation = "idle".into();
                match &error {
                    Some(e) => {
                        st.status.last_error = e.clone();
                        Completion::Failed {
                            result: 1,
                            error: e.clone(),
                            kind: classify(e),
                        }
                    }
                    None => {
                        let now = now_unix_s();
                        let compatible = st.status.compatible.clone();
                        if let Some(s) = st.status.slots.iter_mut().find(|s| s.name == target) {
                            s.boot_status = "good".into();
                            s.bundle_compatible = compatible;
                            s.bundle_version = version.clone();
                            s.size = size;
                            s.status = "ok".into();
                            s.installed_count += 1;
                            s.installed_unix_s = now;
                            s.activated_count += 1;
                            s.activated_unix_s = now;
                        }
                        st.status.primary = target.clone();
                        Completion::Succeeded
                    }
                }
            };
            let _ = tx.send(InstallEvent::Completed(completion)).await;
        });
        Ok(rx)
    }
}

/// A [`BundleVerifier`] for tests and simulation mode: reads the fake
/// manifest the way [`FakeRauc`] does (a file without the squashfs magic is
/// an invalid bundle), reports progress in four steps `step` apart (none by
/// default), and fails once with
/// the error given to [`fail_next`](FakeVerifier::fail_next). Cloning shares
/// the state.
#[derive(Debug, Clone, Default)]
pub struct FakeVerifier {
    state: Arc<Mutex<(Option<VerifyError>, u32)>>,
    step: Duration,
}

impl FakeVerifier {
    /// Progress steps `step` apart.
    pub fn with_step(mut self, step: Duration) -> Self {
        self.step = step;
        self
    }

    /// The next verification fails with `kind` and `message`.
    pub fn fail_next(&self, kind: InstallErrorKind, message: &str) {
        self.lock().0 = Some(VerifyError {
            kind,
            message: message.into(),
        });
    }

    /// How many bundles were verified (or refused) so far.
    pub fn calls(&self) -> u32 {
        self.lock().1
    }

    fn lock(&self) -> MutexGuard<'_, (Option<VerifyError>, u32)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl BundleVerifier for FakeVerifier {
    async fn verify(&self, bundle: &Path, progress: mpsc::Sender<u8>) -> Result<BundleInfo, VerifyError> {
        let fail = {
            let mut st = self.lock();
            st.1 += 1;
            st.0.take()
        };
        let path = bundle.to_path_buf();
        let manifest = tokio::task::spawn_blocking(move || read_manifest(&path))
            .await
            .map_err(|e| VerifyError {
                kind: InstallErrorKind::Other,
                message: e.to_string(),
            })?
            .map_err(|message| VerifyError {
                kind: classify(&message),
                message,
            })?;
        for p in [0, 25, 50, 75] {
            let _ = progress.send(p).await;
            tokio::time::sleep(self.step).await;
        }
        if let Some(e) = fail {
            return Err(e);
        }
        let _ = progress.send(100).await;
        Ok(BundleInfo {
            compatible: manifest.compatible.unwrap_or_default(),
            version: manifest.version.unwrap_or_default(),
            format: "verity".into(),
            ..Default::default()
        })
    }
}

/// What the fake reads of a bundle's manifest.
#[derive(Debug, Default)]
struct Manifest {
    compatible: Option<String>,
    version: Option<String>,
}

/// The squashfs magic check and the manifest lines of `path`, or the error
/// RAUC would give.
fn read_manifest(path: &Path) -> Result<Manifest, String> {
    const WINDOW: u64 = 64 * 1024;
    let open_err = |e: std::io::Error| {
        format!(
            "Invalid bundle format: Failed to open bundle for reading: Error opening file {}: {e}",
            path.display()
        )
    };
    let mut f = std::fs::File::open(path).map_err(open_err)?;
    let len = f.metadata().map_err(open_err)?.len();
    let mut head = Vec::new();
    f.by_ref().take(WINDOW).read_to_end(&mut head).map_err(open_err)?;
    if !head.starts_with(b"hsqs") {
        return Err("Invalid bundle format: the file is not a RAUC bundle (no squashfs magic)".into());
    }
    let mut tail = Vec::new();
    if len > WINDOW {
        f.seek(SeekFrom::Start(len.saturating_sub(WINDOW).max(WINDOW)))
            .map_err(open_err)?;
        f.read_to_end(&mut tail).map_err(open_err)?;
    }
    let mut m = Manifest::default();
    for text in [&head, &tail] {
        for line in String::from_utf8_lossy(text).split(|c: char| c.is_control()) {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("compatible=") {
                m.compatible.get_or_insert_with(|| v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("version=") {
                m.version.get_or_insert_with(|| v.trim().to_string());
            }
        }
    }
    Ok(m)
}

fn now_unix_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstallErrorKind;

    async fn run(rauc: &FakeRauc, path: &Path) -> (Vec<Progress>, Completion) {
        let mut rx = rauc.install(path).await.unwrap();
        let mut steps = Vec::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                InstallEvent::Progress(p) => steps.push(p),
                InstallEvent::Completed(c) => return (steps, c),
            }
        }
        panic!("no completion");
    }

    fn bundle(dir: &Path, name: &str, manifest: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("hsqs\0\0{manifest}\n")).unwrap();
        p
    }

    #[tokio::test]
    async fn install_writes_the_other_slot_and_makes_it_primary() {
        let dir = tempfile::tempdir().unwrap();
        let rauc = FakeRauc::new("debvisor-node-x86_64").with_step(Duration::ZERO);
        let b = bundle(
            dir.path(),
            "ok.raucb",
            "[update]\ncompatible=debvisor-node-x86_64\nversion=0.2.0",
        );
        let (steps, done) = run(&rauc, &b).await;
        assert_eq!(done, Completion::Succeeded);
        assert_eq!(steps.last().unwrap().percent, 100);
        assert!(steps.iter().any(|p| p.message == "Copying image to rootfs.1"));
        let st = rauc.status().await.unwrap();
        assert_eq!(st.primary, "rootfs.1");
        assert_eq!(st.operation, "idle");
        let b1 = &st.slots[1];
        assert_eq!((b1.bundle_version.as_str(), b1.boot_status.as_str()), ("0.2.0", "good"));
        assert_eq!(b1.installed_count, 1);
    }

    #[tokio::test]
    async fn bad_bundles_fail_with_classified_errors() {
        let dir = tempfile::tempdir().unwrap();
        let rauc = FakeRauc::new("debvisor-node-x86_64").with_step(Duration::ZERO);
        let wrong = bundle(dir.path(), "w.raucb", "compatible=other-node\nversion=1");
        let (_, done) = run(&rauc, &wrong).await;
        assert!(
            matches!(
                done,
                Completion::Failed {
                    kind: InstallErrorKind::WrongCompatible,
                    ..
                }
            ),
            "{done:?}"
        );
        let st = rauc.status().await.unwrap();
        assert!(st.last_error.contains("other-node"), "{}", st.last_error);
        assert_eq!(st.primary, "rootfs.0");

        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not a bundle").unwrap();
        let (_, done) = run(&rauc, &junk).await;
        assert!(
            matches!(
                done,
                Completion::Failed {
                    kind: InstallErrorKind::InvalidBundle,
                    ..
                }
            ),
            "{done:?}"
        );

        rauc.fail_next_install("signature verification failed: error:02000068:rsa routines::bad signature");
        let ok = bundle(dir.path(), "ok", "compatible=debvisor-node-x86_64");
        let (steps, done) = run(&rauc, &ok).await;
        assert!(
            matches!(
                done,
                Completion::Failed {
                    kind: InstallErrorKind::BadSignature,
                    ..
                }
            ),
            "{done:?}"
        );
        assert!(
            steps.iter().all(|p| !p.is_writing()),
            "a refused bundle is never written"
        );
        assert_eq!(rauc.status().await.unwrap().slots[1].installed_count, 0);
    }

    #[tokio::test]
    async fn one_install_at_a_time_and_marks() {
        let dir = tempfile::tempdir().unwrap();
        let rauc = FakeRauc::new("c").with_step(Duration::from_millis(5));
        let b = bundle(dir.path(), "b", "compatible=c");
        let _rx = rauc.install(&b).await.unwrap();
        let e = rauc.install(&b).await.unwrap_err();
        assert!(e.to_string().contains("Already processing"), "{e}");

        let out = rauc.mark(MarkState::Bad, &SlotRef::booted()).await.unwrap();
        assert_eq!(out.message, "marked slot rootfs.0 as bad");
        let out = rauc.mark(MarkState::Good, &SlotRef::booted()).await.unwrap();
        assert_eq!(out.slot, "rootfs.0");
        let out = rauc.mark(MarkState::Active, &SlotRef::other()).await.unwrap();
        assert_eq!(out.message, "activated slot rootfs.1");
        assert_eq!(rauc.status().await.unwrap().primary, "rootfs.1");
        let e = rauc
            .mark(MarkState::Good, &SlotRef::try_from("rootfs.9").unwrap())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("rootfs.9"), "{e}");
        assert_eq!(rauc.marks().len(), 3);

        rauc.set_unreachable(true);
        assert!(matches!(rauc.status().await, Err(RaucError::Unavailable { .. })));
    }
}
