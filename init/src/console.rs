//! Marker lines on the serial console, read by people at the console and by
//! the lab and system tests (`DEBVISOR: <what> <details>`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use debvisor_api::paths::CONSOLE_MARKER;

/// Formats one marker line.
pub fn marker_line(what: &str, details: &str) -> String {
    if details.is_empty() {
        format!("{CONSOLE_MARKER} {what}\n")
    } else {
        format!("{CONSOLE_MARKER} {what} {details}\n")
    }
}

/// Writes a marker line to /dev/console (falling back to stderr when there is
/// none, e.g. outside a booted node) and to the log.
pub fn marker(what: &str, details: &str) {
    let line = marker_line(what, details);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")
        .and_then(|mut c| c.write_all(line.as_bytes()));
    if written.is_err() {
        eprint!("{line}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_have_the_prefix() {
        assert_eq!(super::marker_line("ready", ""), "DEBVISOR: ready\n");
        assert_eq!(
            super::marker_line("tls-fingerprint", "ab"),
            "DEBVISOR: tls-fingerprint ab\n"
        );
    }
}
