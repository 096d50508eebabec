//! Validated newtypes for input that ends up in a unit, a command line or a
//! log: unit names and patterns, journal priorities and single-line text.
//!
//! Each type is built only through `TryFrom<&str>` (or `FromStr`), so holding
//! one proves the value passed its rules. A rejected value yields a
//! [`ValidationError`] that names the value, why it was refused and what is
//! allowed, ready to be shown to a user.

use std::fmt;
use std::str::FromStr;

/// The longest offending value kept in a [`ValidationError`], in characters.
const MAX_ERROR_VALUE_CHARS: usize = 128;

/// The longest unit name systemd accepts, in bytes (`UNIT_NAME_MAX - 1`).
pub const UNIT_NAME_MAX_BYTES: usize = 255;

/// What kind of value failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// A systemd unit name ([`UnitName`]).
    UnitName,
    /// A unit name glob ([`UnitPattern`]).
    UnitPattern,
    /// A unit type ([`UnitType`]).
    UnitType,
    /// A unit load, active or sub state ([`UnitState`]).
    UnitState,
    /// A journal priority ([`JournalPriority`]).
    JournalPriority,
    /// Single-line free text of at most `max` characters ([`SingleLineString`]).
    Text {
        /// The maximum length in characters.
        max: usize,
    },
}

impl ValueKind {
    /// What a valid value of this kind looks like, in words.
    pub fn allowed(self) -> String {
        match self {
            ValueKind::UnitName => format!(
                "1-{UNIT_NAME_MAX_BYTES} bytes of A-Z a-z 0-9 : _ . \\ - @, not starting with '.' or '-' \
                 (except -.mount and -.slice), at most one '@', ending in a unit type suffix ({})",
                suffix_list()
            ),
            ValueKind::UnitPattern => {
                format!("1-{UNIT_NAME_MAX_BYTES} bytes of A-Z a-z 0-9 : _ . \\ - @ and the glob characters * ? [ ]")
            }
            ValueKind::UnitType => format!("one of {}", UnitType::ALL.map(UnitType::as_str).join(", ")),
            ValueKind::UnitState => "a systemd load, active or sub state such as loaded, masked, active, \
                                     inactive, failed, activating, running, exited or dead"
                .to_string(),
            ValueKind::JournalPriority => {
                "0-7 or one of emerg, alert, crit, err, warning, notice, info, debug".to_string()
            }
            ValueKind::Text { max } => format!(
                "a single line of at most {max} characters without control characters, \
                 line or paragraph separators or bidirectional overrides"
            ),
        }
    }
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueKind::UnitName => "unit name",
            ValueKind::UnitPattern => "unit pattern",
            ValueKind::UnitType => "unit type",
            ValueKind::UnitState => "unit state",
            ValueKind::JournalPriority => "journal priority",
            ValueKind::Text { .. } => "text",
        })
    }
}

/// A value that failed validation: its kind, the value (shortened when long)
/// and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid {kind} {value:?}: {reason}; allowed: {}", kind.allowed())]
pub struct ValidationError {
    kind: ValueKind,
    value: String,
    reason: String,
}

impl ValidationError {
    fn new(kind: ValueKind, value: &str, reason: impl Into<String>) -> Self {
        let mut shown: String = value.chars().take(MAX_ERROR_VALUE_CHARS).collect();
        if shown.len() < value.len() {
            shown.push('…');
        }
        Self {
            kind,
            value: shown,
            reason: reason.into(),
        }
    }

    /// The kind of value that was refused.
    pub fn kind(&self) -> ValueKind {
        self.kind
    }

    /// The refused value, cut to 128 characters.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Implements `as_str`, `Display`, `AsRef<str>`, `FromStr` and `TryFrom<&str>`
/// for a newtype over `String` validated by `Self::validate`.
macro_rules! string_newtype {
    ($ty:ident) => {
        impl $ty {
            /// The validated value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<&str> for $ty {
            type Error = ValidationError;
            fn try_from(s: &str) -> Result<Self, ValidationError> {
                Self::validate(s)?;
                Ok(Self(s.to_string()))
            }
        }
        impl FromStr for $ty {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, ValidationError> {
                Self::try_from(s)
            }
        }
    };
}

/// A systemd unit type, named by the suffix of a unit name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnitType {
    /// `.service`
    Service,
    /// `.socket`
    Socket,
    /// `.target`
    Target,
    /// `.timer`
    Timer,
    /// `.mount`
    Mount,
    /// `.path`
    Path,
    /// `.slice`
    Slice,
    /// `.scope`
    Scope,
    /// `.device`
    Device,
    /// `.swap`
    Swap,
    /// `.automount`
    Automount,
}

impl UnitType {
    /// Every unit type.
    pub const ALL: [UnitType; 11] = [
        UnitType::Service,
        UnitType::Socket,
        UnitType::Target,
        UnitType::Timer,
        UnitType::Mount,
        UnitType::Path,
        UnitType::Slice,
        UnitType::Scope,
        UnitType::Device,
        UnitType::Swap,
        UnitType::Automount,
    ];

    /// The type's name, which is also the unit name suffix without the dot.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitType::Service => "service",
            UnitType::Socket => "socket",
            UnitType::Target => "target",
            UnitType::Timer => "timer",
            UnitType::Mount => "mount",
            UnitType::Path => "path",
            UnitType::Slice => "slice",
            UnitType::Scope => "scope",
            UnitType::Device => "device",
            UnitType::Swap => "swap",
            UnitType::Automount => "automount",
        }
    }

    /// The type of a unit name such as `cron.service`, from its suffix.
    pub fn of_name(name: &str) -> Option<UnitType> {
        let (_, suffix) = name.rsplit_once('.')?;
        UnitType::ALL.into_iter().find(|t| t.as_str() == suffix)
    }
}

fn suffix_list() -> String {
    UnitType::ALL.map(|t| format!(".{}", t.as_str())).join(" ")
}

impl fmt::Display for UnitType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<&str> for UnitType {
    type Error = ValidationError;
    fn try_from(s: &str) -> Result<Self, ValidationError> {
        UnitType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| ValidationError::new(ValueKind::UnitType, s, "unknown unit type"))
    }
}

impl FromStr for UnitType {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, ValidationError> {
        Self::try_from(s)
    }
}

/// The characters systemd allows in a unit name (`VALID_CHARS_WITH_AT`).
fn is_unit_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '\\' | '-' | '@')
}

/// A systemd unit name such as `cron.service`, `getty@tty1.service` or the
/// template `getty@.service`.
///
/// The rules are systemd's `unit_name_is_valid()`, made stricter in two ways:
/// at most one `@`, and no leading `.` or `-` (so that a name can never be
/// taken for a command-line option), except the root units `-.mount` and
/// `-.slice`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitName(String);

string_newtype!(UnitName);

impl UnitName {
    fn validate(s: &str) -> Result<(), ValidationError> {
        let err = |reason: &str| Err(ValidationError::new(ValueKind::UnitName, s, reason));
        if s.is_empty() {
            return err("empty");
        }
        if s.len() > UNIT_NAME_MAX_BYTES {
            return err(&format!("{} bytes long", s.len()));
        }
        if let Some(bad) = s.chars().find(|c| !is_unit_char(*c)) {
            return err(&format!("contains {bad:?}"));
        }
        if matches!(s, "-.mount" | "-.slice") {
            return Ok(());
        }
        if s.starts_with(['.', '-']) {
            return err("starts with '.' or '-'");
        }
        let Some((prefix, suffix)) = s.rsplit_once('.') else {
            return err("has no unit type suffix");
        };
        if UnitType::of_name(s).is_none() {
            return err(&format!("unknown unit type suffix .{suffix}"));
        }
        match prefix.matches('@').count() {
            0 => Ok(()),
            1 if prefix.starts_with('@') => err("has nothing before '@'"),
            1 => Ok(()),
            _ => err("has more than one '@'"),
        }
    }

    /// The unit's type, from its suffix.
    pub fn unit_type(&self) -> UnitType {
        UnitType::of_name(&self.0).expect("validated unit name has a type suffix")
    }

    /// True for a template such as `getty@.service`.
    pub fn is_template(&self) -> bool {
        self.instance() == Some("")
    }

    /// The instance of `getty@tty1.service` (`tty1`); `Some("")` for a
    /// template, `None` for a plain unit.
    pub fn instance(&self) -> Option<&str> {
        let (prefix, _) = self.0.rsplit_once('.')?;
        prefix.split_once('@').map(|(_, instance)| instance)
    }
}

/// A glob over unit names, such as `debvisor-*.service`, for list filters
/// (systemd's `ListUnitsByPatterns` takes fnmatch patterns).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnitPattern(String);

string_newtype!(UnitPattern);

impl UnitPattern {
    fn validate(s: &str) -> Result<(), ValidationError> {
        let err = |reason: String| Err(ValidationError::new(ValueKind::UnitPattern, s, reason));
        if s.is_empty() {
            return err("empty".into());
        }
        if s.len() > UNIT_NAME_MAX_BYTES {
            return err(format!("{} bytes long", s.len()));
        }
        match s
            .chars()
            .find(|&c| !is_unit_char(c) && !matches!(c, '*' | '?' | '[' | ']'))
        {
            Some(bad) => err(format!("contains {bad:?}")),
            None => Ok(()),
        }
    }

    /// Whether `name` matches the pattern as systemd matches it:
    /// `fnmatch(FNM_NOESCAPE)` with `*`, `?` and `[...]` classes with ranges;
    /// a `\` is an ordinary character, as in `dev-disk-by\x2duuid-*`.
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

/// fnmatch(3) with `FNM_NOESCAPE`, over bytes, with one backtrack point.
fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = match pat.get(p) {
            Some(b'*') => {
                star = Some((p, i));
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class_match(&pat[p..], s[i]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                None => (s[i] == b'[').then_some(1),
            },
            Some(&c) => (c == s[i]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                p += len;
                i += 1;
            }
            (None, Some((sp, si))) => {
                star = Some((sp, si + 1));
                p = sp + 1;
                i = si + 1;
            }
            (None, None) => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class at the start of `pat` (`[...]`); returns
/// whether it matched and the class's length, or `None` when unterminated.
fn class_match(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut j = 1;
    let mut hit = false;
    let mut first = true;
    while j < pat.len() {
        if pat[j] == b']' && !first {
            return Some((hit, j + 1));
        }
        first = false;
        if j + 2 < pat.len() && pat[j + 1] == b'-' && pat[j + 2] != b']' {
            hit |= (pat[j]..=pat[j + 2]).contains(&c);
            j += 3;
        } else {
            hit |= pat[j] == c;
            j += 1;
        }
    }
    None
}

/// systemd's load states (`unit_load_state_table`), space-separated.
const LOAD_STATES: &str = "stub loaded not-found bad-setting error merged masked";
/// systemd's active states (`unit_active_state_table`), space-separated.
const ACTIVE_STATES: &str = "active reloading inactive failed activating deactivating maintenance refreshing";
/// The sub states of every unit type (`*_state_table` in `unit-def.c`),
/// space-separated.
const SUB_STATES: &str = "dead waiting running failed tentative plugged mounting mounting-done mounted remounting \
    unmounting remounting-sigterm remounting-sigkill unmounting-sigterm unmounting-sigkill \
    cleaning start-chown abandoned stop-sigterm stop-sigkill condition start-pre start \
    start-post exited reload reload-signal reload-notify stop stop-watchdog stop-post \
    final-watchdog final-sigterm final-sigkill dead-before-auto-restart \
    failed-before-auto-restart dead-resources-pinned auto-restart auto-restart-queued \
    listening stop-pre stop-pre-sigterm stop-pre-sigkill activating activating-done \
    deactivating deactivating-sigterm deactivating-sigkill elapsed active";

/// A unit state to filter lists by: a load state (`loaded`, `masked`, ...),
/// an active state (`active`, `failed`, ...) or a sub state (`running`,
/// `exited`, ...), as `systemctl --state=` takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnitState(String);

string_newtype!(UnitState);

impl UnitState {
    fn validate(s: &str) -> Result<(), ValidationError> {
        let known = [LOAD_STATES, ACTIVE_STATES, SUB_STATES];
        if known.iter().any(|set| set.split(' ').any(|state| state == s)) {
            Ok(())
        } else {
            Err(ValidationError::new(
                ValueKind::UnitState,
                s,
                "not a systemd unit state",
            ))
        }
    }
}

/// A syslog priority as the journal stores it: 0 (emerg) to 7 (debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JournalPriority(u8);

const PRIORITY_NAMES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];

impl JournalPriority {
    /// The numeric priority, 0-7.
    pub fn value(self) -> u8 {
        self.0
    }

    /// The priority's name as journalctl spells it (`err`, `info`, ...).
    pub fn as_str(self) -> &'static str {
        PRIORITY_NAMES[usize::from(self.0)]
    }
}

impl TryFrom<u8> for JournalPriority {
    type Error = ValidationError;
    fn try_from(n: u8) -> Result<Self, ValidationError> {
        if n <= 7 {
            Ok(Self(n))
        } else {
            Err(ValidationError::new(
                ValueKind::JournalPriority,
                &n.to_string(),
                "out of range",
            ))
        }
    }
}

impl TryFrom<&str> for JournalPriority {
    type Error = ValidationError;
    fn try_from(s: &str) -> Result<Self, ValidationError> {
        if let Some(n) = PRIORITY_NAMES.iter().position(|name| *name == s) {
            return Ok(Self(n as u8));
        }
        match s.parse::<u8>() {
            Ok(n) if n <= 7 && !s.starts_with('+') => Ok(Self(n)),
            _ => Err(ValidationError::new(
                ValueKind::JournalPriority,
                s,
                "not a priority number or name",
            )),
        }
    }
}

impl FromStr for JournalPriority {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, ValidationError> {
        Self::try_from(s)
    }
}

impl fmt::Display for JournalPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `c` may appear in a [`SingleLineString`]: no control characters
/// (which covers `\n`, `\r`, `\t`, VT, FF and NEL), no U+2028/U+2029 line and
/// paragraph separators and no bidirectional embedding, override or isolate
/// controls, which could make a log line read differently from what it says.
fn is_single_line_char(c: char) -> bool {
    !c.is_control()
        && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
        && !('\u{202A}'..='\u{202E}').contains(&c)
        && !('\u{2066}'..='\u{2069}').contains(&c)
}

/// Free text on one line of at most `MAX` characters (Unicode scalar
/// values), for reasons, identities and other fields that end up in logs and
/// files. It may be empty. Every Unicode line terminator and control
/// character is refused, like Bottlerocket's `SingleLineString`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SingleLineString<const MAX: usize>(String);

impl<const MAX: usize> SingleLineString<MAX> {
    fn validate(s: &str) -> Result<(), ValidationError> {
        let err = |reason: String| Err(ValidationError::new(ValueKind::Text { max: MAX }, s, reason));
        let len = s.chars().count();
        if len > MAX {
            return err(format!("{len} characters long"));
        }
        match s.chars().find(|&c| !is_single_line_char(c)) {
            Some(bad) => err(format!("contains {bad:?}")),
            None => Ok(()),
        }
    }

    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<const MAX: usize> fmt::Display for SingleLineString<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const MAX: usize> AsRef<str> for SingleLineString<MAX> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> TryFrom<&str> for SingleLineString<MAX> {
    type Error = ValidationError;
    fn try_from(s: &str) -> Result<Self, ValidationError> {
        Self::validate(s)?;
        Ok(Self(s.to_string()))
    }
}

impl<const MAX: usize> FromStr for SingleLineString<MAX> {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, ValidationError> {
        Self::try_from(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        let good = [
            "cron.service",
            "debvisor-agent.service",
            "getty@tty1.service",
            "getty@.service",
            "systemd-fsck@dev-disk-by\\x2duuid-1234.service",
            "sys-devices-virtual-net-br0.device",
            "-.mount",
            "-.slice",
            "user-1000.slice",
            "a.automount",
            "x:y_z.timer",
            "fstrim.timer",
            "session-2.scope",
            "dev-zram0.swap",
        ];
        for name in good {
            let unit = UnitName::try_from(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(unit.as_str(), name);
            assert_eq!(unit.to_string(), name);
        }
        let long = format!("{}.service", "a".repeat(UNIT_NAME_MAX_BYTES - 8));
        assert_eq!(long.len(), UNIT_NAME_MAX_BYTES);
        assert!(UnitName::try_from(long.as_str()).is_ok());

        let bad = [
            ("", "empty"),
            (".service", "starts with"),
            ("-foo.service", "starts with"),
            (".hidden.service", "starts with"),
            ("cron", "no unit type suffix"),
            ("cron.", "unknown unit type suffix"),
            ("cron.servic", "unknown unit type suffix"),
            ("cron.SERVICE", "unknown unit type suffix"),
            ("@foo.service", "nothing before '@'"),
            ("@.service", "nothing before '@'"),
            ("a@b@c.service", "more than one '@'"),
            ("cron service.service", "contains ' '"),
            ("cron/x.service", "contains '/'"),
            ("cron\n.service", "contains '\\n'"),
            ("crön.service", "contains 'ö'"),
            ("cron;reboot.service", "contains ';'"),
            ("c*.service", "contains '*'"),
            ("--help.service", "starts with"),
        ];
        for (name, reason) in bad {
            let e = UnitName::try_from(name).expect_err(name);
            assert_eq!(e.kind(), ValueKind::UnitName);
            assert!(e.reason().contains(reason), "{name:?}: {e}");
        }
        let too_long = format!("{}.service", "a".repeat(UNIT_NAME_MAX_BYTES));
        assert!(
            UnitName::try_from(too_long.as_str())
                .unwrap_err()
                .reason()
                .contains("bytes long")
        );
    }

    #[test]
    fn unit_name_parts() {
        let name = |s: &str| UnitName::try_from(s).unwrap();
        assert_eq!(name("cron.service").unit_type(), UnitType::Service);
        assert_eq!(name("cron.service").instance(), None);
        assert!(!name("cron.service").is_template());
        assert_eq!(name("getty@tty1.service").instance(), Some("tty1"));
        assert!(!name("getty@tty1.service").is_template());
        assert!(name("getty@.service").is_template());
        assert_eq!(name("-.mount").unit_type(), UnitType::Mount);
        assert_eq!(name("a.automount").unit_type(), UnitType::Automount);
        assert_eq!("fstrim.timer".parse::<UnitName>().unwrap().unit_type(), UnitType::Timer);
    }

    #[test]
    fn error_names_the_value_and_what_is_allowed() {
        let e = UnitName::try_from("cron;reboot").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("Invalid unit name \"cron;reboot\": contains ';'"),
            "{msg}"
        );
        assert!(msg.contains("allowed: 1-255 bytes"), "{msg}");
        assert!(msg.contains(".service"), "{msg}");
        // Control characters are escaped in the message, long values cut.
        let e = UnitName::try_from("a\nb").unwrap_err();
        assert!(e.to_string().contains("\"a\\nb\""), "{e}");
        let long = "x".repeat(1000);
        let e = UnitName::try_from(long.as_str()).unwrap_err();
        assert_eq!(e.value().chars().count(), MAX_ERROR_VALUE_CHARS + 1);
        assert!(e.value().ends_with('…'));
    }

    #[test]
    fn unit_patterns() {
        for good in [
            "*",
            "debvisor-*.service",
            "getty@tty[1-6].service",
            "?ron.service",
            "*.timer",
            "-.mount",
        ] {
            assert_eq!(UnitPattern::try_from(good).unwrap().as_str(), good);
        }
        for bad in ["", "a b", "*;*", "a/b", "{a,b}", "a\u{2028}b", "!x"] {
            let e = UnitPattern::try_from(bad).expect_err(bad);
            assert_eq!(e.kind(), ValueKind::UnitPattern);
        }
        assert!(UnitPattern::try_from("*".repeat(256).as_str()).is_err());
    }

    #[test]
    fn glob_matching() {
        let cases = [
            ("*", "cron.service", true),
            ("*.service", "cron.service", true),
            ("*.service", "fstrim.timer", false),
            ("debvisor-*", "debvisor-agent.service", true),
            ("debvisor-*.service", "debvisor-agent.socket", false),
            ("?ron.service", "cron.service", true),
            ("?ron.service", "ron.service", false),
            ("getty@tty[1-3].service", "getty@tty2.service", true),
            ("getty@tty[1-3].service", "getty@tty4.service", false),
            ("[]]x", "]x", true),
            ("[ab", "[ab", true),
            ("*a*b*c", "xxaxxbxxc", true),
            ("*a*b*c", "xxaxxcxxb", false),
            ("a\\x2d*", "a\\x2db.service", true),
            ("cron.service", "cron.service", true),
            ("cron.service", "cron.services", false),
            ("**", "", true),
        ];
        for (pat, name, want) in cases {
            assert_eq!(glob_match(pat.as_bytes(), name.as_bytes()), want, "{pat} vs {name}");
        }
    }

    #[test]
    fn unit_types_and_states() {
        for t in UnitType::ALL {
            assert_eq!(t.as_str().parse::<UnitType>().unwrap(), t);
        }
        assert_eq!(UnitType::try_from("Service").unwrap_err().kind(), ValueKind::UnitType);
        assert!(UnitType::try_from(".service").is_err());
        for s in [
            "loaded",
            "masked",
            "not-found",
            "active",
            "failed",
            "activating",
            "running",
            "exited",
            "dead",
            "waiting",
        ] {
            assert_eq!(UnitState::try_from(s).unwrap().as_str(), s);
        }
        for s in ["", "Active", "up", "active ", "running;"] {
            assert_eq!(UnitState::try_from(s).unwrap_err().kind(), ValueKind::UnitState);
        }
    }

    #[test]
    fn journal_priorities() {
        for (i, name) in PRIORITY_NAMES.iter().enumerate() {
            let by_name = JournalPriority::try_from(*name).unwrap();
            let by_number: JournalPriority = i.to_string().parse().unwrap();
            assert_eq!(by_name, by_number);
            assert_eq!(by_name.value() as usize, i);
            assert_eq!(by_name.to_string(), *name);
            assert_eq!(JournalPriority::try_from(i as u8).unwrap(), by_name);
        }
        for bad in ["8", "-1", "+3", "", "error", "warn", "ERR", "3 ", "256", "info\n"] {
            let e = JournalPriority::try_from(bad).expect_err(bad);
            assert!(e.to_string().contains("allowed: 0-7 or one of emerg"), "{e}");
        }
        assert!(JournalPriority::try_from(8u8).is_err());
        assert!(JournalPriority::try_from(3u8).unwrap() < JournalPriority::try_from(6u8).unwrap());
    }

    #[test]
    fn single_line_text() {
        type Reason = SingleLineString<16>;
        for good in ["", "maintenance", "ünïcødé ✓ 日本", "sixteen chars!!!"] {
            assert_eq!(Reason::try_from(good).unwrap().as_str(), good);
        }
        let bad = [
            "two\nlines",
            "cr\rhere",
            "tab\there",
            "vt\u{0B}",
            "ff\u{0C}",
            "nel\u{85}",
            "ls\u{2028}",
            "ps\u{2029}",
            "nul\0",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "bidi\u{202E}",
            "iso\u{2066}",
            "seventeen chars!!",
        ];
        for text in bad {
            let e = Reason::try_from(text).expect_err(text);
            assert_eq!(e.kind(), ValueKind::Text { max: 16 });
            assert!(e.to_string().contains("at most 16 characters"), "{e}");
        }
        assert!(Reason::try_from("").unwrap().is_empty());
    }

    /// Arbitrary strings never panic a validator, and whatever passes keeps
    /// its rules.
    #[test]
    fn arbitrary_input_never_panics() {
        let alphabet: Vec<char> = "ab-_.@:\\*?[]/ \n\u{2028}\u{202E}é0.service.timer@@--"
            .chars()
            .collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            let mut s = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for k in 0..(state % 24) {
                s.push(alphabet[((state >> (k % 50)) as usize + k as usize * 7) % alphabet.len()]);
            }
            if let Ok(u) = UnitName::try_from(s.as_str()) {
                assert!(!u.as_str().starts_with('.') && UnitType::of_name(u.as_str()).is_some());
                let _ = (u.instance(), u.unit_type());
            }
            if let Ok(p) = UnitPattern::try_from(s.as_str()) {
                let _ = p.matches(&s);
            }
            let _ = JournalPriority::try_from(s.as_str());
            if let Ok(t) = SingleLineString::<8>::try_from(s.as_str()) {
                assert!(!t.as_str().contains('\n'));
            }
        }
    }
}
