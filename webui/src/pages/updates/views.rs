//! The agent's slot table and install progress, formatted for the pages.

use debvisor_api::update::v1::{ErrorKind, InstallProgress, Phase, Slot, SlotsState};

use crate::pages::audit::utc_text;
use crate::views::human_bytes;

/// Slot names the console passes on: `booted`, `other` or a RAUC slot name
/// (1 to 64 of `A-Z a-z 0-9 . _ -`).
pub fn check_slot(raw: &str) -> Result<String, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Ok("booted".into());
    }
    if s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Ok(s.to_string());
    }
    let shown: String = s.chars().take(40).collect();
    Err(format!(
        "Slot {shown:?} is not a slot name: use booted, other or a slot's name such as rootfs.1."
    ))
}

/// (text, tag class) of a slot's state.
fn state_class(state: &str) -> &'static str {
    match state {
        "booted" => "ok",
        "active" => "rw",
        _ => "",
    }
}

/// (text, tag class) of a boot status.
fn boot_class(status: &str) -> &'static str {
    match status {
        "good" => "ok",
        "bad" => "fail",
        _ => "warn",
    }
}

/// One slot, formatted.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRow {
    /// "rootfs.0".
    pub name: String,
    /// "A".
    pub bootname: String,
    /// "rootfs".
    pub class: String,
    /// "/dev/disk/by-partlabel/root_a".
    pub device: String,
    /// "raw".
    pub kind: String,
    /// "booted", "active", "inactive".
    pub state: String,
    /// Its tag class.
    pub state_class: &'static str,
    /// "good", "bad" or "unknown".
    pub boot_status: String,
    /// Its tag class.
    pub boot_class: &'static str,
    /// The running system.
    pub booted: bool,
    /// Boots next.
    pub primary: bool,
    /// The bundle version installed into it ("" when RAUC has no record).
    pub version: String,
    /// When ("" when unknown).
    pub installed: String,
    /// How often.
    pub installed_count: u32,
    /// When it was last made primary ("" when unknown).
    pub activated: String,
    /// The image's sha256, shortened.
    pub sha256: String,
    /// The image's size.
    pub size: String,
    /// Whether the name may be passed back in a link.
    pub linkable: bool,
}

fn unix_s(s: i64) -> String {
    if s <= 0 {
        String::new()
    } else {
        utc_text(s.saturating_mul(1000))
    }
}

impl From<&Slot> for SlotRow {
    fn from(s: &Slot) -> Self {
        let boot_status = if s.trying {
            // RAUC may say "good" while the boot gate has not confirmed it.
            "on trial".to_string()
        } else if s.boot_status.is_empty() {
            "unknown".to_string()
        } else {
            s.boot_status.clone()
        };
        SlotRow {
            name: s.name.clone(),
            bootname: s.bootname.clone(),
            class: s.class.clone(),
            device: s.device.clone(),
            kind: s.r#type.clone(),
            state_class: state_class(&s.state),
            state: s.state.clone(),
            boot_class: if s.trying { "warn" } else { boot_class(&s.boot_status) },
            boot_status,
            booted: s.booted,
            primary: s.primary,
            version: s.bundle_version.clone(),
            installed: unix_s(s.installed_unix_s),
            installed_count: s.installed_count,
            activated: unix_s(s.activated_unix_s),
            sha256: s.sha256.chars().take(12).collect(),
            size: if s.size_bytes == 0 {
                String::new()
            } else {
                human_bytes(s.size_bytes)
            },
            linkable: check_slot(&s.name).is_ok_and(|n| n == s.name),
        }
    }
}

/// The slots and RAUC's state, formatted.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotsView {
    /// The node's compatible string.
    pub compatible: String,
    /// "rootfs.0 (A)".
    pub booted: String,
    /// Whether the booted slot is marked good.
    pub booted_good: bool,
    /// "rootfs.1 (B)", or "" when RAUC cannot tell.
    pub primary: String,
    /// Why RAUC cannot name the primary slot.
    pub primary_error: String,
    /// True when the next boot starts another slot than the booted one.
    pub switch_pending: bool,
    /// "idle" or "installing".
    pub operation: String,
    /// RAUC's last error.
    pub last_error: String,
    /// Served by a simulated agent.
    pub simulated: bool,
    /// Why the trial state of the slots is unknown.
    pub trial_error: String,
    /// Why the slot table is not current (RAUC is installing).
    pub slots_note: String,
    /// The slots.
    pub rows: Vec<SlotRow>,
}

impl From<&SlotsState> for SlotsView {
    fn from(s: &SlotsState) -> Self {
        let named = |name: &str| {
            s.slots
                .iter()
                .find(|x| x.name == name)
                .map(|x| format!("{} ({})", x.name, x.bootname))
                .unwrap_or_else(|| name.to_string())
        };
        SlotsView {
            compatible: s.compatible.clone(),
            booted: if s.booted_slot.is_empty() {
                s.booted_bootname.clone()
            } else {
                named(&s.booted_slot)
            },
            booted_good: s.booted_good,
            primary: if s.primary_slot.is_empty() {
                String::new()
            } else {
                named(&s.primary_slot)
            },
            primary_error: s.primary_error.clone(),
            switch_pending: !s.primary_slot.is_empty() && s.primary_slot != s.booted_slot,
            operation: s.operation.clone(),
            last_error: s.last_error.clone(),
            simulated: s.simulated,
            trial_error: s.trial_error.clone(),
            slots_note: s.slots_note.clone(),
            rows: s.slots.iter().map(SlotRow::from).collect(),
        }
    }
}

/// An install's state, formatted.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressView {
    /// "install-3".
    pub job_id: String,
    /// The URL or "upload:NAME".
    pub source: String,
    /// "console:admin".
    pub started_by: String,
    /// When.
    pub started: String,
    /// "downloading", "verifying", "installing", "done", "failed".
    pub phase: &'static str,
    /// "Downloading"...
    pub phase_text: &'static str,
    /// Tag class.
    pub class: &'static str,
    /// 0 to 100.
    pub percent: u32,
    /// What happens now.
    pub message: String,
    /// "12.0 MiB of 96.0 MiB", or "".
    pub bytes: String,
    /// Still running.
    pub running: bool,
    /// Ended with an error.
    pub failed: bool,
    /// "Bad signature"...
    pub error_title: &'static str,
    /// The agent's error.
    pub error: String,
    /// What to do about it.
    pub error_help: &'static str,
    /// The download's HTTP status, 0 when none.
    pub http_status: u32,
    /// Ended well.
    pub done: bool,
    /// The slot written.
    pub target_slot: String,
    /// The version installed.
    pub bundle_version: String,
}

/// (title, what to do) for an install error.
pub fn error_words(kind: ErrorKind) -> (&'static str, &'static str) {
    match kind {
        ErrorKind::BadSignature => (
            "Bad signature",
            "The bundle's signature or verity hash does not verify: the file is corrupt or tampered with, or it is \
             signed by a CA that is not in the node's keyring (/etc/rauc/keyring.pem). Fetch it again, or sign it \
             with the key this node trusts.",
        ),
        ErrorKind::WrongCompatible => (
            "Wrong compatible",
            "The bundle is built for another kind of node: its compatible string is not this node's (shown under \
             Slots). Use a bundle built for this node.",
        ),
        ErrorKind::NotEnoughSpace => (
            "Not enough space",
            "The data partition (or the target slot) has no room for the bundle. Free space under \
             /var/lib/debvisor/updates, or use a smaller bundle.",
        ),
        ErrorKind::DownloadFailed => (
            "Download failed",
            "Check the URL, and that the node reaches the server (DNS, proxy, a TLS certificate the node trusts).",
        ),
        ErrorKind::UploadFailed => (
            "Upload failed",
            "The upload broke off or sent another size than announced. Nothing was installed; upload the file again.",
        ),
        ErrorKind::ChecksumMismatch => (
            "Checksum mismatch",
            "The file's SHA-256 is not the one given. Check the checksum, or fetch the bundle again.",
        ),
        ErrorKind::InvalidBundle => (
            "Not a bundle this node accepts",
            "The file is not a RAUC bundle, or in a format the node refuses (it accepts verity bundles such as \
             the image builder's update.raucb).",
        ),
        ErrorKind::RaucUnavailable => (
            "RAUC not reachable",
            "RAUC stopped answering during the install. Check the rauc service in the node's journal, then retry.",
        ),
        ErrorKind::InstallFailed | ErrorKind::Unspecified => (
            "Install failed",
            "RAUC could not install the bundle; the error says why. The booted slot is unchanged.",
        ),
    }
}

impl From<&InstallProgress> for ProgressView {
    fn from(p: &InstallProgress) -> Self {
        let phase = Phase::try_from(p.phase).unwrap_or_default();
        let (name, text, class) = match phase {
            Phase::Downloading => ("downloading", "Receiving the bundle", "warn"),
            Phase::Verifying => ("verifying", "Checking the bundle", "warn"),
            Phase::Installing => ("installing", "Writing the slot", "warn"),
            Phase::Done => ("done", "Installed", "ok"),
            Phase::Failed => ("failed", "Failed", "fail"),
            Phase::Unspecified => ("starting", "Starting", ""),
        };
        let failed = phase == Phase::Failed;
        let (error_title, error_help) = if failed {
            error_words(ErrorKind::try_from(p.error_kind).unwrap_or_default())
        } else {
            ("", "")
        };
        let bytes = match (p.bytes_done, p.bytes_total) {
            (0, 0) => String::new(),
            (done, 0) => human_bytes(done),
            (done, total) => format!("{} of {}", human_bytes(done), human_bytes(total)),
        };
        ProgressView {
            job_id: p.job_id.clone(),
            source: p.source.clone(),
            started_by: p.started_by.clone(),
            started: if p.started_unix_ms > 0 {
                utc_text(p.started_unix_ms)
            } else {
                String::new()
            },
            phase: name,
            phase_text: text,
            class,
            percent: p.percent.min(100),
            message: p.message.clone(),
            bytes,
            running: !matches!(phase, Phase::Done | Phase::Failed),
            failed,
            error_title,
            error: p.error.clone(),
            error_help,
            http_status: p.http_status,
            done: phase == Phase::Done,
            target_slot: p.target_slot.clone(),
            bundle_version: p.bundle_version.clone(),
        }
    }
}
