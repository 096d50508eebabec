//! What RAUC reports, as typed values: slot status, progress, marks, and the
//! classes of install errors.

use std::collections::HashMap;
use std::fmt;

use zbus::OwnedVariant;

/// One slot as RAUC's `GetSlotStatus` reports it. Text fields RAUC leaves
/// out are empty, numbers are zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotStatus {
    /// RAUC's slot name, e.g. `rootfs.0`.
    pub name: String,
    /// `class`, e.g. `rootfs`.
    pub class: String,
    /// `bootname`, e.g. `A`.
    pub bootname: String,
    /// `device`: the block device or file.
    pub device: String,
    /// `type`, e.g. `raw`.
    pub slot_type: String,
    /// `state`: `booted`, `active` or `inactive`.
    pub state: String,
    /// `boot-status`: `good`, `bad`, or empty when RAUC cannot tell.
    pub boot_status: String,
    /// `bundle.compatible` of the bundle last installed into the slot.
    pub bundle_compatible: String,
    /// `bundle.version`.
    pub bundle_version: String,
    /// `bundle.description`.
    pub bundle_description: String,
    /// `bundle.build`.
    pub bundle_build: String,
    /// `sha256` of the installed image.
    pub sha256: String,
    /// `size` of the installed image in bytes.
    pub size: u64,
    /// `status` of the last install into the slot, e.g. `ok`.
    pub status: String,
    /// `installed.timestamp` in seconds since the Unix epoch; 0 when absent.
    pub installed_unix_s: i64,
    /// `installed.count`.
    pub installed_count: u32,
    /// `activated.timestamp` in seconds since the Unix epoch; 0 when absent.
    pub activated_unix_s: i64,
    /// `activated.count`.
    pub activated_count: u32,
    /// The booted slot on trial: marked bootable (`X_OK=1`) and tried
    /// (`X_TRY=1`) in the GRUB environment, not yet confirmed good by the
    /// boot gate (RAUC calls it "bad" meanwhile). Read from the environment
    /// block, not from RAUC (see [`crate::grubenv`]); false for other slots.
    pub trying: bool,
}

impl SlotStatus {
    /// Reads one `(sa{sv})` entry of `GetSlotStatus`. Keys of an unexpected
    /// type are left empty (and logged) rather than failing the whole answer.
    pub fn from_dict(name: &str, dict: &HashMap<String, OwnedVariant>) -> Self {
        let text = |key: &str| -> String {
            match dict.get(key) {
                None => String::new(),
                Some(v) => <&str>::try_from(v).map(str::to_string).unwrap_or_else(|_| {
                    tracing::warn!(slot = name, key, "RAUC slot status value is not a string");
                    String::new()
                }),
            }
        };
        let number = |key: &str| -> u64 {
            match dict.get(key) {
                None => 0,
                Some(v) => u64::try_from(v)
                    .or_else(|_| u32::try_from(v).map(u64::from))
                    .unwrap_or_else(|_| {
                        tracing::warn!(slot = name, key, "RAUC slot status value is not a number");
                        0
                    }),
            }
        };
        let stamp = |key: &str| -> i64 {
            let t = text(key);
            if t.is_empty() {
                return 0;
            }
            parse_timestamp(&t).unwrap_or_else(|| {
                tracing::warn!(slot = name, key, value = %t, "RAUC timestamp is not RFC 3339");
                0
            })
        };
        Self {
            name: name.to_string(),
            class: text("class"),
            bootname: text("bootname"),
            device: text("device"),
            slot_type: text("type"),
            state: text("state"),
            boot_status: text("boot-status"),
            bundle_compatible: text("bundle.compatible"),
            bundle_version: text("bundle.version"),
            bundle_description: text("bundle.description"),
            bundle_build: text("bundle.build"),
            sha256: text("sha256"),
            size: number("size"),
            status: text("status"),
            installed_unix_s: stamp("installed.timestamp"),
            installed_count: u32::try_from(number("installed.count")).unwrap_or(u32::MAX),
            activated_unix_s: stamp("activated.timestamp"),
            activated_count: u32::try_from(number("activated.count")).unwrap_or(u32::MAX),
            trying: false,
        }
    }

    /// True when the boot loader marks the slot good.
    pub fn is_good(&self) -> bool {
        self.boot_status == "good"
    }

    /// Good and not on trial: this boot of the slot was confirmed.
    pub fn is_confirmed_good(&self) -> bool {
        self.is_good() && !self.trying
    }

    /// True for the running slot.
    pub fn is_booted(&self) -> bool {
        self.state == "booted"
    }
}

/// Why the slot table is not current while RAUC is busy with `operation`
/// (it refused `GetSlotStatus` with `refused`); `had_table`: the table shown
/// is the one read before.
pub fn slots_note(operation: &str, refused: &str, had_table: bool) -> String {
    let shown = if had_table {
        "; the table is the one read before"
    } else {
        ""
    };
    format!("RAUC reports no slot status while it is {operation} ({refused}){shown}, ask again when the operation ends")
}

/// Seconds since the Unix epoch of an RFC 3339 time such as RAUC's
/// `2026-11-26T21:59:54Z`.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// RAUC's `Progress` property: percentage, message, nesting depth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u32,
    /// What RAUC does now, e.g. `Copying image to rootfs.1`.
    pub message: String,
    /// Nesting depth of the step (1 = top level).
    pub depth: u32,
}

impl From<(i32, String, i32)> for Progress {
    fn from((percent, message, depth): (i32, String, i32)) -> Self {
        Self {
            percent: u32::try_from(percent.clamp(0, 100)).unwrap_or(0),
            message,
            depth: u32::try_from(depth.max(0)).unwrap_or(0),
        }
    }
}

impl Progress {
    /// True once RAUC has passed its bundle checks and writes slots (its
    /// `Updating slots` step and the steps below it).
    pub fn is_writing(&self) -> bool {
        let m = self.message.as_str();
        m.starts_with("Updating slots")
            || m.starts_with("Checking slot")
            || m.starts_with("Copying image")
            || m.starts_with("Installing done")
    }
}

/// Everything RAUC reports about the node at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaucStatus {
    /// The `Compatible` property (system.conf).
    pub compatible: String,
    /// The `BootSlot` property: the booted slot's boot name, e.g. `A`.
    pub boot_slot: String,
    /// The `Operation` property: `idle` or `installing`.
    pub operation: String,
    /// The `LastError` property.
    pub last_error: String,
    /// The `Progress` property.
    pub progress: Progress,
    /// `GetPrimary`: the slot the boot loader starts next; empty when RAUC
    /// cannot tell.
    pub primary: String,
    /// Why `GetPrimary` failed; empty when it did not.
    pub primary_error: String,
    /// Why the trial state of the slots is unknown (the GRUB environment
    /// could not be read); empty when it is known.
    pub trial_error: String,
    /// Why [`slots`](Self::slots) is not RAUC's current answer (RAUC 1.8
    /// reports no slot status while it installs: the table is the last one
    /// read, or empty); empty when it is current.
    pub slots_note: String,
    /// `GetSlotStatus`, sorted by slot name.
    pub slots: Vec<SlotStatus>,
}

impl RaucStatus {
    /// The booted slot: the one whose state is `booted`, else the one whose
    /// boot name is [`boot_slot`](Self::boot_slot).
    pub fn booted(&self) -> Option<&SlotStatus> {
        self.slots.iter().find(|s| s.is_booted()).or_else(|| {
            self.slots
                .iter()
                .find(|s| !s.bootname.is_empty() && s.bootname == self.boot_slot)
        })
    }

    /// The other bootable slot of the booted slot's class.
    pub fn other(&self) -> Option<&SlotStatus> {
        let booted = self.booted()?;
        self.slots
            .iter()
            .find(|s| s.name != booted.name && s.class == booted.class && !s.bootname.is_empty())
    }
}

/// A mark RAUC can set on a slot (`Mark` method's `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkState {
    /// `good`: keep booting it.
    Good,
    /// `bad`: never boot it.
    Bad,
    /// `active`: boot it next (primary), and mark it good.
    Active,
}

impl MarkState {
    /// The word RAUC expects.
    pub fn as_str(self) -> &'static str {
        match self {
            MarkState::Good => "good",
            MarkState::Bad => "bad",
            MarkState::Active => "active",
        }
    }
}

impl fmt::Display for MarkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A slot named the way RAUC's `Mark` takes it: `booted`, `other`, or a
/// slot name of 1 to 64 characters from `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRef(String);

impl SlotRef {
    /// The booted slot.
    pub fn booted() -> Self {
        Self("booted".into())
    }

    /// The other slot of the booted slot's class.
    pub fn other() -> Self {
        Self("other".into())
    }

    /// The text RAUC gets.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SlotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string that is not `booted`, `other` or a slot name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Slot {0:?} is not \"booted\", \"other\" or a slot name (1 to 64 characters from A-Z a-z 0-9 . _ -, e.g. rootfs.1)"
)]
pub struct BadSlotRef(pub String);

impl TryFrom<&str> for SlotRef {
    type Error = BadSlotRef;
    fn try_from(s: &str) -> Result<Self, BadSlotRef> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(BadSlotRef(s.to_string()))
        }
    }
}

/// What RAUC answered to `Mark`: the slot it marked and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkOutcome {
    /// The slot name, e.g. `rootfs.0`.
    pub slot: String,
    /// RAUC's message, e.g. `marked slot rootfs.0 as good`.
    pub message: String,
}

/// The class of an install error, from RAUC's `LastError` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallErrorKind {
    /// The signature or the verity hash does not verify, or the signer is
    /// not in the keyring.
    BadSignature,
    /// The bundle's compatible string is not the system's.
    WrongCompatible,
    /// Not enough room for the image.
    NotEnoughSpace,
    /// Not a bundle, or a format the system refuses.
    InvalidBundle,
    /// RAUC went away during the install.
    RaucUnavailable,
    /// Anything else.
    Other,
}

/// Classifies RAUC's error text (RAUC 1.8 messages, e.g. `signature
/// verification failed: …`, `Installation error: Compatible mismatch: …`).
pub fn classify(error: &str) -> InstallErrorKind {
    let e = error.to_ascii_lowercase();
    if e.contains("compatible mismatch") {
        InstallErrorKind::WrongCompatible
    } else if e.contains("signature verification failed")
        || e.contains("verify error")
        || e.contains("verity")
        || e.contains("hash mismatch")
        || e.contains("bad message")
        // A verity bundle's payload is checked by dm-verity as RAUC reads
        // it, so a corrupt payload shows up as an I/O error while copying.
        || (e.contains("input/output error")
            && ["bundle", "read", "splic", "copy", "squashfs"].iter().any(|w| e.contains(w)))
    {
        InstallErrorKind::BadSignature
    } else if e.contains("no space left") || e.contains("not enough space") || e.contains("is larger than") {
        InstallErrorKind::NotEnoughSpace
    } else if e.contains("invalid bundle format") || e.contains("not allowed") || e.contains("bundle format") {
        InstallErrorKind::InvalidBundle
    } else {
        InstallErrorKind::Other
    }
}

/// How an install ended (the `Completed` signal and `LastError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// `Completed(0)`.
    Succeeded,
    /// `Completed(result != 0)`, with `LastError` and its class.
    Failed {
        /// RAUC's result code; -1 when RAUC went away.
        result: i32,
        /// `LastError`.
        error: String,
        /// Its class.
        kind: InstallErrorKind,
    },
}

/// One event of a running install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallEvent {
    /// The `Progress` property changed.
    Progress(Progress),
    /// The install ended; the last event.
    Completed(Completion),
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::Variant as Value;

    fn dict(pairs: &[(&str, Value<'_>)]) -> HashMap<String, OwnedVariant> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OwnedVariant::try_from(v.try_clone().unwrap()).unwrap()))
            .collect()
    }

    #[test]
    fn slot_status_from_rauc_dict() {
        // As RAUC 1.8 answered after an install (busctl --json).
        let d = dict(&[
            ("activated.count", Value::U32(2)),
            ("activated.timestamp", Value::from("2026-11-26T21:59:54Z")),
            ("boot-status", Value::from("good")),
            ("bundle.compatible", Value::from("test-compat")),
            ("sha256", Value::from("0944079c")),
            ("state", Value::from("inactive")),
            ("size", Value::U64(3_000_000)),
            ("installed.count", Value::U32(1)),
            ("class", Value::from("rootfs")),
            ("device", Value::from("/dev/disk/by-partlabel/root_b")),
            ("type", Value::from("raw")),
            ("bootname", Value::from("B")),
            ("bundle.version", Value::from("1.0")),
            ("installed.timestamp", Value::from("2026-11-26T21:59:54Z")),
            ("status", Value::from("ok")),
        ]);
        let s = SlotStatus::from_dict("rootfs.1", &d);
        assert_eq!(s.name, "rootfs.1");
        assert_eq!(s.bootname, "B");
        assert_eq!(s.slot_type, "raw");
        assert_eq!(s.size, 3_000_000);
        assert_eq!(s.installed_count, 1);
        assert_eq!(s.activated_count, 2);
        assert_eq!(s.installed_unix_s, 1_795_730_394);
        assert_eq!(s.bundle_version, "1.0");
        assert!(s.is_good());
        assert!(!s.is_booted());
        assert_eq!(s.bundle_description, "");
    }

    #[test]
    fn wrong_value_types_are_left_empty() {
        let d = dict(&[("class", Value::U32(3)), ("size", Value::from("big"))]);
        let s = SlotStatus::from_dict("x", &d);
        assert_eq!(s.class, "");
        assert_eq!(s.size, 0);
    }

    #[test]
    fn errors_are_classified() {
        use InstallErrorKind::*;
        let cases = [
            (
                "signature verification failed: error:02000068:rsa routines::bad signature",
                BadSignature,
            ),
            (
                "signature verification failed: Verify error: self-signed certificate",
                BadSignature,
            ),
            (
                "signature verification failed: error:1700009E:CMS routines::verification failure",
                BadSignature,
            ),
            (
                "Installation error: Compatible mismatch: Expected 'a' but bundle manifest has 'b'",
                WrongCompatible,
            ),
            ("Bundle format 'plain' not allowed", InvalidBundle),
            (
                "Invalid bundle format: Signature size (7017300286388331786) exceeds bundle size",
                InvalidBundle,
            ),
            ("Failed writing image: No space left on device", NotEnoughSpace),
            ("Failed mounting bundle: Failed to open /dev/mapper/control", Other),
            (
                "Failed updating slot rootfs.1: failed to copy image: Error splicing data: Input/output error",
                BadSignature,
            ),
            ("Failed to open slot device: Permission denied", Other),
        ];
        for (text, kind) in cases {
            assert_eq!(classify(text), kind, "{text}");
        }
    }

    #[test]
    fn slot_refs() {
        assert_eq!(SlotRef::try_from("rootfs.1").unwrap().as_str(), "rootfs.1");
        assert_eq!(SlotRef::try_from("booted").unwrap(), SlotRef::booted());
        for bad in ["", "a b", "x/y", &"a".repeat(65)] {
            let e = SlotRef::try_from(bad).unwrap_err();
            assert!(e.to_string().contains("rootfs.1"), "{e}");
        }
    }

    #[test]
    fn booted_and_other_slots() {
        let slot = |name: &str, boot: &str, state: &str| SlotStatus {
            name: name.into(),
            class: "rootfs".into(),
            bootname: boot.into(),
            state: state.into(),
            ..Default::default()
        };
        let st = RaucStatus {
            boot_slot: "B".into(),
            slots: vec![slot("rootfs.0", "A", "inactive"), slot("rootfs.1", "B", "booted")],
            ..Default::default()
        };
        assert_eq!(st.booted().unwrap().name, "rootfs.1");
        assert_eq!(st.other().unwrap().name, "rootfs.0");
        let progress = Progress::from((80, "Updating slots".to_string(), 2));
        assert!(progress.is_writing());
        assert!(!Progress::from((20, "Checking bundle".to_string(), 2)).is_writing());
        assert_eq!(Progress::from((-3, String::new(), -1)).percent, 0);
    }
}
