//! [`JournalCtl`]: the [`Journal`] facility over `journalctl -o json`.

use std::ffi::OsString;
use std::process::Stdio;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::{Journal, JournalError, LogEntry, LogQuery, parse_entry};

/// The longest line read from journalctl, in bytes; longer ones are skipped
/// with an error item.
pub const MAX_LINE_BYTES: usize = 8 << 20;
/// How much of journalctl's stderr is kept for an error.
const MAX_STDERR_BYTES: u64 = 4096;

/// Reads the journal by running `journalctl -o json` with an argv vector,
/// never through a shell. The process is killed when the stream is dropped.
/// [`Journal::stream`] must be called within a Tokio runtime.
#[derive(Debug, Clone)]
pub struct JournalCtl {
    program: OsString,
}

impl Default for JournalCtl {
    fn default() -> Self {
        Self::new()
    }
}

impl JournalCtl {
    /// Runs `journalctl` from `PATH`.
    pub fn new() -> Self {
        Self::with_program("journalctl")
    }

    /// Runs `program` instead of `journalctl` (for tests).
    pub fn with_program(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// The arguments journalctl is run with for `q`.
    pub fn args(q: &LogQuery) -> Vec<String> {
        let mut args = ["--output=json", "--no-pager", "--all", "--quiet"]
            .map(String::from)
            .to_vec();
        if let Some(unit) = &q.unit {
            args.push(format!("--unit={unit}"));
        }
        if let Some(p) = q.max_priority {
            args.push(format!("--priority={}", p.value()));
        }
        if let Some(us) = q.since_unix_us {
            args.push(format!("--since=@{}.{:06}", us / 1_000_000, us % 1_000_000));
        }
        if let Some(n) = q.lines {
            args.push(format!("--lines={n}"));
        }
        if q.follow {
            args.push("--follow".to_string());
        }
        args
    }
}

impl Journal for JournalCtl {
    fn stream(&self, q: LogQuery) -> Result<BoxStream<'static, Result<LogEntry, JournalError>>, JournalError> {
        let mut child = Command::new(&self.program)
            .args(Self::args(&q))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| JournalError::Spawn {
                program: self.program.to_string_lossy().into_owned(),
                source,
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        // Drain stderr all along so that journalctl never blocks on it.
        let stderr = tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut head = stderr.take(MAX_STDERR_BYTES);
            let _ = head.read_to_end(&mut kept).await;
            let _ = tokio::io::copy(&mut head.into_inner(), &mut tokio::io::sink()).await;
            String::from_utf8_lossy(&kept).trim().to_string()
        });
        let reader = Reader {
            child,
            stdout: BufReader::new(stdout),
            stderr,
            line: 0,
            buf: Vec::new(),
        };
        Ok(futures_util::stream::unfold(Some(reader), next_entry).boxed())
    }
}

/// The state of one journalctl run.
struct Reader {
    child: Child,
    stdout: BufReader<ChildStdout>,
    stderr: tokio::task::JoinHandle<String>,
    line: u64,
    buf: Vec<u8>,
}

type Step = Option<(Result<LogEntry, JournalError>, Option<Reader>)>;

/// The next item of a journalctl run; at the end of its output, an error
/// item if it failed.
async fn next_entry(reader: Option<Reader>) -> Step {
    let mut r = reader?;
    loop {
        match read_line_capped(&mut r.stdout, MAX_LINE_BYTES, &mut r.buf).await {
            Ok(Some(too_long)) => {
                r.line += 1;
                let item = if too_long {
                    Err(JournalError::LineTooLong {
                        line: r.line,
                        max: MAX_LINE_BYTES,
                    })
                } else if r.buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                } else {
                    parse_entry(&String::from_utf8_lossy(&r.buf)).map_err(|e| match e {
                        JournalError::Malformed { reason, .. } => JournalError::Malformed {
                            line: Some(r.line),
                            reason,
                        },
                        other => other,
                    })
                };
                return Some((item, Some(r)));
            }
            Ok(None) => {
                let status = r.child.wait().await;
                let stderr = r.stderr.await.unwrap_or_default();
                return match status {
                    Ok(s) if s.success() => None,
                    Ok(s) => Some((
                        Err(JournalError::Exited {
                            status: s.to_string(),
                            stderr,
                        }),
                        None,
                    )),
                    Err(source) => Some((Err(JournalError::Read { source }), None)),
                };
            }
            Err(source) => return Some((Err(JournalError::Read { source }), None)),
        }
    }
}

/// Reads one line into `buf` without its newline: `Some(false)` when read,
/// `Some(true)` when longer than `max` bytes (then consumed and `buf` left
/// empty), `None` at the end of input.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let newline = avail.iter().position(|&b| b == b'\n');
        let chunk = &avail[..newline.unwrap_or(avail.len())];
        if !too_long && buf.len() + chunk.len() > max {
            too_long = true;
            buf.clear();
        }
        if !too_long {
            buf.extend_from_slice(chunk);
        }
        let used = chunk.len() + usize::from(newline.is_some());
        r.consume(used);
        if newline.is_some() {
            return Ok(Some(too_long));
        }
    }
}

#[cfg(test)]
#[path = "journalctl_tests.rs"]
mod tests;
