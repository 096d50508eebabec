//! The guest's serial console: a reader thread that copies everything to a
//! log file and keeps a cleaned copy in memory, waits for patterns with a
//! timeout, parses the `DEBVISOR:` marker lines, and [`SerialGuest`], which
//! logs in on the getty and runs shell commands.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use debvisor_api::paths::CONSOLE_MARKER;

/// Boot stages recognised on the console, in boot order, with the text that
/// marks each one. Stages that an image does not print are simply not seen.
pub const BOOT_STAGES: &[(&str, &str)] = &[
    ("firmware", "BdsDxe"),
    ("grub", "Welcome to GRUB"),
    ("kernel", "Linux version"),
    // The DebVisor initramfs script's summary line.
    ("initramfs", "debvisor: root "),
    ("systemd", "Welcome to Debian"),
    ("fingerprint", "DEBVISOR: tls-fingerprint"),
    ("login", "login:"),
    ("ready", "DEBVISOR: ready"),
];

/// A `DEBVISOR:` line written by debvisor-init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// SHA-256 of the node server certificate (64 hex digits).
    TlsFingerprint(String),
    /// The console admin's user name and first-boot password.
    AdminPassword { user: String, password: String },
    /// Agent and console answer.
    Ready,
    /// The supervisor gave up.
    BootFailed(String),
    /// A marker this harness does not know.
    Other(String),
}

/// What the initramfs's BusyBox prints when `panic` opens its rescue shell.
pub const RESCUE_SHELL: &str = "built-in shell (ash)";

/// Parses a console line that may carry a marker anywhere in it (kernel
/// messages can share the line).
pub fn parse_marker(line: &str) -> Option<Marker> {
    let start = line.find(CONSOLE_MARKER)?;
    let rest = line[start + CONSOLE_MARKER.len()..].trim();
    let mut words = rest.split_whitespace();
    let kind = words.next()?;
    Some(match kind {
        "tls-fingerprint" => match words.next() {
            Some(fp) if fp.len() == 64 && fp.chars().all(|c| c.is_ascii_hexdigit()) => {
                Marker::TlsFingerprint(fp.to_ascii_lowercase())
            }
            _ => Marker::Other(rest.to_string()),
        },
        "admin-password" => match (words.next(), words.next()) {
            (Some(user), Some(password)) => Marker::AdminPassword {
                user: user.to_string(),
                password: password.to_string(),
            },
            _ => Marker::Other(rest.to_string()),
        },
        "ready" => Marker::Ready,
        "boot-failed" => Marker::BootFailed(rest["boot-failed".len()..].trim().to_string()),
        _ => Marker::Other(rest.to_string()),
    })
}

/// Removes carriage returns and ANSI escape sequences, keeping the text.
#[derive(Debug, Default)]
pub struct Cleaner {
    state: u8, // 0 text, 1 after ESC, 2 inside CSI
}

impl Cleaner {
    /// Cleans one chunk; state carries over between chunks.
    pub fn clean(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            match (self.state, b) {
                (0, 0x1b) => self.state = 1,
                (0, b'\r') | (0, 0) => {}
                (0, _) => out.push(b),
                (1, b'[') => self.state = 2,
                (1, _) => self.state = 0,
                (2, 0x40..=0x7e) => self.state = 0,
                (2, _) => {}
                _ => self.state = 0,
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
struct Inner {
    text: Vec<u8>,
    eof: bool,
    stages: Vec<(&'static str, Duration)>,
}

/// Where a pattern was found.
#[derive(Debug, Clone)]
pub struct Match {
    /// Offset just past the match in the cleaned text.
    pub end: usize,
    /// Time since the console was opened.
    pub at: Duration,
}

/// The console of one VM: a connected serial socket plus its reader thread.
pub struct Console {
    inner: Arc<(Mutex<Inner>, Condvar)>,
    writer: Mutex<UnixStream>,
    started: Instant,
}

impl Console {
    /// Starts reading `stream` into `log` (truncated) and memory. `started`
    /// is the moment QEMU was launched; stage times are relative to it.
    pub fn start(stream: UnixStream, log: &Path, started: Instant) -> Result<Console> {
        let mut file = File::create(log).with_context(|| format!("Cannot create {}", log.display()))?;
        let inner = Arc::new((Mutex::new(Inner::default()), Condvar::new()));
        let writer = stream.try_clone().context("Cannot clone the serial socket")?;
        let shared = inner.clone();
        let mut reader = stream;
        std::thread::Builder::new()
            .name("serial-reader".into())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                let mut cleaner = Cleaner::default();
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) | Err(_) => 0,
                        Ok(n) => n,
                    };
                    let (lock, cv) = &*shared;
                    let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
                    if n == 0 {
                        st.eof = true;
                        cv.notify_all();
                        return;
                    }
                    let _ = file.write_all(&buf[..n]);
                    let _ = file.flush();
                    let before = st.text.len();
                    cleaner.clean(&buf[..n], &mut st.text);
                    let now = started.elapsed();
                    for (name, pat) in BOOT_STAGES {
                        if st.stages.iter().any(|(s, _)| s == name) {
                            continue;
                        }
                        let from = before.saturating_sub(pat.len());
                        if find(&st.text[from..], pat.as_bytes()).is_some() {
                            st.stages.push((name, now));
                        }
                    }
                    cv.notify_all();
                }
            })
            .context("Cannot start the serial reader thread")?;
        Ok(Console {
            inner,
            writer: Mutex::new(writer),
            started,
        })
    }

    /// Length of the cleaned text so far: a cursor for later waits.
    pub fn offset(&self) -> usize {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner()).text.len()
    }

    /// Stages seen so far with their times since QEMU started.
    pub fn stages(&self) -> Vec<(&'static str, Duration)> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner()).stages.clone()
    }

    /// A handle for a progress display: stage names seen so far and the
    /// time since QEMU started.
    pub fn stages_handle(&self) -> impl Fn() -> (Vec<&'static str>, Duration) + Send + 'static {
        let inner = self.inner.clone();
        let started = self.started;
        move || {
            let st = inner.0.lock().unwrap_or_else(|e| e.into_inner());
            (st.stages.iter().map(|(n, _)| *n).collect(), started.elapsed())
        }
    }

    /// The last `n` lines of the cleaned console text.
    pub fn tail(&self, n: usize) -> String {
        let st = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&st.text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Cleaned text between two offsets.
    pub fn text(&self, from: usize, to: usize) -> String {
        let st = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        let to = to.min(st.text.len());
        String::from_utf8_lossy(&st.text[from.min(to)..to]).into_owned()
    }

    /// Sends raw text to the guest.
    pub fn send(&self, s: &str) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(s.as_bytes()).context("Cannot write to the serial console")
    }

    /// Waits until one of `needles` appears at or after `from`. Returns the
    /// index of the needle and where it ended.
    pub fn wait_any(&self, needles: &[&str], from: usize, timeout: Duration) -> Result<(usize, Match)> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let hay = &st.text[from.min(st.text.len())..];
            let best = needles
                .iter()
                .enumerate()
                .filter_map(|(i, n)| find(hay, n.as_bytes()).map(|p| (p, i, n.len())))
                .min();
            if let Some((p, i, len)) = best {
                return Ok((
                    i,
                    Match {
                        end: from + p + len,
                        at: self.started.elapsed(),
                    },
                ));
            }
            if st.eof {
                bail!("QEMU closed the serial console while waiting for {needles:?}");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("Timed out after {} s waiting for {needles:?}", timeout.as_secs());
            }
            st = cv.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Waits for one needle.
    pub fn wait_for(&self, needle: &str, from: usize, timeout: Duration) -> Result<Match> {
        Ok(self.wait_any(&[needle], from, timeout)?.1)
    }

    /// Waits for the next complete line starting at `from`; returns it and
    /// the offset after its newline.
    pub fn next_line(&self, from: usize, timeout: Duration) -> Result<(String, usize)> {
        let m = self.wait_for("\n", from, timeout)?;
        Ok((self.text(from, m.end - 1), m.end))
    }

    /// Reads lines from `from` until `DEBVISOR: ready`, collecting markers.
    /// Fails at once on `DEBVISOR: boot-failed`.
    pub fn wait_ready(&self, from: usize, timeout: Duration) -> Result<BootInfo> {
        let deadline = Instant::now() + timeout;
        let mut info = BootInfo::default();
        let mut cursor = from;
        let mut said = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (line, next) = self
                .next_line(cursor, left)
                .with_context(|| format!("The guest did not print `{CONSOLE_MARKER} ready`"))?;
            cursor = next;
            if line.contains("debvisor: ") {
                said = line.trim().to_string();
            }
            if line.contains(RESCUE_SHELL) {
                bail!("The initramfs gave up and opened its rescue shell; its last word: {said:?}");
            }
            match parse_marker(&line) {
                Some(Marker::TlsFingerprint(fp)) => info.fingerprint = Some(fp),
                Some(Marker::AdminPassword { user, password }) => info.admin = Some((user, password)),
                Some(Marker::BootFailed(reason)) => bail!("The guest reported boot-failed: {reason}"),
                Some(Marker::Ready) => {
                    info.ready_at = self.started.elapsed();
                    info.end = cursor;
                    return Ok(info);
                }
                _ => {}
            }
        }
    }
}

/// What the markers of one boot said.
#[derive(Debug, Default, Clone)]
pub struct BootInfo {
    /// The TLS fingerprint (every boot).
    pub fingerprint: Option<String>,
    /// Admin user and password (first boot only).
    pub admin: Option<(String, String)>,
    /// When `ready` appeared, since QEMU started.
    pub ready_at: Duration,
    /// Console offset after the ready line.
    pub end: usize,
}

/// A shell on the guest's serial getty.
pub struct SerialGuest<'a> {
    con: &'a Console,
    cursor: usize,
    seq: u32,
    /// Still logged in: dropping it types `exit` (without waiting), so the
    /// next [`SerialGuest::login`] on the same console finds a getty.
    open: bool,
}

impl Drop for SerialGuest<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.con.send("exit\n");
        }
    }
}

impl<'a> SerialGuest<'a> {
    /// Logs in on the getty. Pokes the getty with newlines until `login:`
    /// shows, then answers the prompts and waits for a root shell.
    pub fn login(con: &'a Console, user: &str, password: &str, timeout: Duration) -> Result<SerialGuest<'a>> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut cursor = con.offset();
        loop {
            con.send("\n")?;
            match con.wait_for("login:", cursor, Duration::from_secs(10).min(left())) {
                Ok(m) => {
                    cursor = m.end;
                    break;
                }
                Err(_) if !left().is_zero() => continue,
                Err(e) => return Err(e.context("No `login:` prompt on the serial console")),
            }
        }
        // Let a prompt printed twice (one per newline) settle, then answer.
        std::thread::sleep(Duration::from_millis(500));
        cursor = cursor.max(con.offset());
        con.send(&format!("{user}\n"))?;
        let m = con
            .wait_for("Password:", cursor, left())
            .context("No `Password:` prompt after the user name")?;
        con.send(&format!("{password}\n"))?;
        let (i, m) = con
            .wait_any(&["# ", "$ ", "Login incorrect"], m.end, left())
            .context("No shell prompt after the password")?;
        if i == 2 {
            bail!("The guest refused the login for {user}: Login incorrect");
        }
        let mut g = SerialGuest {
            con,
            cursor: m.end,
            seq: 0,
            open: true,
        };
        g.exec("stty -echo; dmesg -n 1", Duration::from_secs(30))?;
        Ok(g)
    }

    /// Runs `cmd` in the guest shell, waiting up to `timeout`: its trimmed
    /// output, or an error naming the command if it exited non-zero.
    pub fn sh(&mut self, cmd: &str, timeout: Duration) -> Result<String> {
        let (rc, out) = self.exec(cmd, timeout)?;
        anyhow::ensure!(rc == 0, "`{cmd}` on the node exited {rc}: {}", out.trim());
        Ok(out.trim().to_string())
    }

    /// Runs `cmd` in the guest shell and returns its exit status and output.
    /// Output is read between two marker lines the shell prints, which the
    /// typed command line itself can never match; lines with a supervisor
    /// marker (`DEBVISOR: ...`, written to the console at any time) are left
    /// out.
    pub fn exec(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        self.seq += 1;
        let n = self.seq;
        let typed = format!("printf '\\nQA-B%s\\n' {n}; {cmd}; printf '\\nQA-E%s %s\\n' {n} $?\n");
        self.con.send(&typed)?;
        let begin = format!("\nQA-B{n}\n");
        let end = format!("\nQA-E{n} ");
        let b = self
            .con
            .wait_for(&begin, self.cursor.saturating_sub(1), timeout)
            .with_context(|| format!("The guest did not run `{cmd}`"))?;
        let e = self
            .con
            .wait_for(&end, b.end - 1, timeout)
            .with_context(|| format!("`{cmd}` did not finish"))?;
        let (status_line, next) = self.con.next_line(e.end, timeout)?;
        self.cursor = next;
        let status = status_line.trim().parse().unwrap_or(-1);
        let out = self.con.text(b.end, e.end - end.len());
        // debvisor-init's markers (e.g. boot-good) can land on the serial
        // console in the middle of a command's output: leave them out.
        let out: Vec<&str> = out.lines().filter(|l| !l.contains("DEBVISOR:")).collect();
        Ok((status, out.join("\n")))
    }

    /// Logs out and waits for the getty's next `login:` prompt, so that a
    /// later [`SerialGuest::login`] finds it.
    pub fn logout(mut self) -> Result<()> {
        self.open = false;
        let from = self.con.offset();
        self.con.send("exit\n")?;
        self.con
            .wait_for("login:", from, Duration::from_secs(60))
            .context("No `login:` prompt after logging out")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse() {
        let fp = "AB".repeat(32);
        assert_eq!(
            parse_marker(&format!("DEBVISOR: tls-fingerprint {fp}")),
            Some(Marker::TlsFingerprint("ab".repeat(32)))
        );
        assert_eq!(
            parse_marker("[  5.1] x DEBVISOR: admin-password admin s3cr3t-Pw"),
            Some(Marker::AdminPassword {
                user: "admin".into(),
                password: "s3cr3t-Pw".into()
            })
        );
        assert_eq!(parse_marker("DEBVISOR: ready"), Some(Marker::Ready));
        assert_eq!(
            parse_marker("DEBVISOR: boot-failed agent did not start"),
            Some(Marker::BootFailed("agent did not start".into()))
        );
        assert_eq!(
            parse_marker("DEBVISOR: tls-fingerprint short"),
            Some(Marker::Other("tls-fingerprint short".into()))
        );
        assert_eq!(parse_marker("Debian GNU/Linux 12 node ttyS0"), None);
    }

    #[test]
    fn cleaner_strips_escapes_across_chunks() {
        let mut c = Cleaner::default();
        let mut out = Vec::new();
        c.clean(b"[\x1b[0;32m  OK  \x1b", &mut out);
        c.clean(b"[0m] Started\r\n", &mut out);
        assert_eq!(out, b"[  OK  ] Started\n");
    }

    #[test]
    fn console_waits_and_runs_commands() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let dir = std::env::temp_dir().join(format!("qa-serial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let con = Console::start(ours, &dir.join("console.log"), Instant::now()).unwrap();
        // A fake guest: answers the login and one command.
        let guest = std::thread::spawn(move || {
            let mut s = theirs;
            s.write_all(b"Linux version 6.1\nDEBVISOR: tls-fingerprint ").unwrap();
            s.write_all(format!("{}\nDEBVISOR: ready\n", "0".repeat(64)).as_bytes())
                .unwrap();
            let mut buf = [0u8; 256];
            let mut seen = String::new();
            let mut step = 0;
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    return;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                if step == 0 && seen.contains('\n') {
                    s.write_all(b"node login: ").unwrap();
                    step = 1;
                } else if step == 1 && seen.contains("root\n") {
                    s.write_all(b"Password: ").unwrap();
                    step = 2;
                } else if step == 2 && seen.contains("pw\n") {
                    s.write_all(b"root@node:~# ").unwrap();
                    step = 3;
                } else if step == 3 && seen.matches("QA-E").count() == 1 && seen.ends_with('\n') {
                    s.write_all(b"\nQA-B1\n\nQA-E1 0\n").unwrap();
                    step = 4;
                } else if step == 4 && seen.matches("QA-E").count() == 2 && seen.ends_with('\n') {
                    s.write_all(b"\nQA-B2\nhello\nworld\n\nQA-E2 3\n").unwrap();
                    return;
                }
            }
        });
        let info = con.wait_ready(0, Duration::from_secs(5)).unwrap();
        assert_eq!(info.fingerprint.as_deref(), Some("0".repeat(64).as_str()));
        let mut g = SerialGuest::login(&con, "root", "pw", Duration::from_secs(20)).unwrap();
        let (rc, out) = g.exec("x", Duration::from_secs(5)).unwrap();
        assert_eq!((rc, out.as_str()), (3, "hello\nworld"));
        guest.join().unwrap();
        let names: Vec<_> = con.stages().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["kernel", "fingerprint", "ready", "login"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
