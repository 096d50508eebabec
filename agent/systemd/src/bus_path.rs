//! systemd's object paths of units: `/org/freedesktop/systemd1/unit/` and the
//! unit name escaped as a D-Bus path label (`bus_label_escape()`): every byte
//! that is not an ASCII letter, or a digit after the first byte, becomes `_`
//! and two lower-case hex digits; the empty name is `_`.

/// The path namespace of unit objects.
pub const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit";

/// Escapes `name` as systemd's `bus_label_escape()` does.
pub fn escape_label(name: &str) -> String {
    if name.is_empty() {
        return "_".to_string();
    }
    let mut out = String::with_capacity(name.len() * 3);
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// Reverses [`escape_label`]; `None` when an `_` is not followed by two hex
/// digits, a character other than `[A-Za-z0-9_]` occurs, or the result is not
/// UTF-8.
pub fn unescape_label(label: &str) -> Option<String> {
    if label == "_" {
        return Some(String::new());
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => {
                let hex = label.get(i + 1..i + 3)?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c if c.is_ascii_alphanumeric() => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The object path of unit `name`.
pub fn unit_path(name: &str) -> String {
    format!("{UNIT_PATH_PREFIX}/{}", escape_label(name))
}

/// The unit name of a unit object path such as
/// `/org/freedesktop/systemd1/unit/cron_2eservice`; `None` for other paths.
pub fn unit_name_from_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?.strip_prefix('/')?;
    if label.contains('/') {
        return None;
    }
    unescape_label(label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn known_paths() {
        let cases = [
            ("cron.service", "cron_2eservice"),
            ("debvisor-agent.service", "debvisor_2dagent_2eservice"),
            ("-.mount", "_2d_2emount"),
            ("getty@tty1.service", "getty_40tty1_2eservice"),
            ("1password.service", "_31password_2eservice"),
            ("dev-disk-by\\x2duuid.device", "dev_2ddisk_2dby_5cx2duuid_2edevice"),
            ("", "_"),
        ];
        for (name, label) in cases {
            assert_eq!(escape_label(name), label);
            assert_eq!(unescape_label(label).as_deref(), Some(name));
            assert_eq!(unit_name_from_path(&unit_path(name)).as_deref(), Some(name));
        }
        assert_eq!(
            unit_name_from_path("/org/freedesktop/systemd1/unit/systemd_2dnetworkd_2eservice").as_deref(),
            Some("systemd-networkd.service")
        );
        // Upper-case hex is accepted too.
        assert_eq!(unescape_label("a_2Eb").as_deref(), Some("a.b"));
    }

    #[test]
    fn rejects_other_paths_and_bad_escapes() {
        for path in [
            "/org/freedesktop/systemd1",
            "/org/freedesktop/systemd1/unit",
            "/org/freedesktop/systemd1/unitx/cron_2eservice",
            "/org/freedesktop/systemd1/job/42",
            "/org/freedesktop/systemd1/unit/a/b",
            "/org/freedesktop/systemd1/unit/cron_2",
            "/org/freedesktop/systemd1/unit/cron_zzservice",
            "/org/freedesktop/systemd1/unit/cron.service",
            "/org/freedesktop/systemd1/unit/_ff",
        ] {
            assert_eq!(unit_name_from_path(path), None, "{path}");
        }
    }

    #[test]
    fn random_names_round_trip_and_random_labels_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..5000 {
            let len = rng.random_range(0..40);
            let name: String = (0..len).map(|_| rng.random::<char>()).collect();
            assert_eq!(unescape_label(&escape_label(&name)).as_deref(), Some(name.as_str()));
            let label: String = (0..len)
                .map(|_| char::from(b"_0123456789abcdefXYZ./"[rng.random_range(0..22)]))
                .collect();
            let _ = unescape_label(&label);
        }
    }
}
