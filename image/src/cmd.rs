//! Running external tools with argv vectors and errors that say what failed.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A build step that failed: a tool, or a file operation, with what was
/// being done. The step modules (rootfs, initrd, disk) wrap it.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A tool failed.
    #[error("{what}")]
    Tool {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: CmdError,
    },
    /// A file operation failed.
    #[error("{what}: {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// File involved.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// Maps an I/O error on `path` while doing `what` to a [`StepError`].
pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StepError {
    let path = path.to_owned();
    move |source| StepError::Io { what, path, source }
}

/// Maps a tool failure while doing `what` to a [`StepError`].
pub fn tool(what: impl Into<String>) -> impl FnOnce(CmdError) -> StepError {
    let what = what.into();
    move |source| StepError::Tool { what, source }
}

/// A tool failed to start or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started.
    #[error("Cannot run {program} (is it installed?)")]
    Spawn {
        /// Program name.
        program: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The program exited with a failure.
    #[error("{program} failed ({status}):\n{output}")]
    Failed {
        /// Command line for the message (arguments are shown, not executed).
        program: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Last lines of its output.
        output: String,
    },
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args().take(6) {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if cmd.get_args().len() > 6 {
        s.push_str(" ...");
    }
    s
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Builds a command from a program and arguments.
pub fn command<S: AsRef<OsStr>>(program: &str, args: impl IntoIterator<Item = S>) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Runs to completion, returning stdout; stderr is kept for the error.
pub fn run(cmd: &mut Command) -> Result<String, CmdError> {
    run_with_input(cmd, None)
}

/// Runs with `input` on stdin, returning stdout.
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>) -> Result<String, CmdError> {
    let program = describe(cmd);
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
        program: program.clone(),
        source,
    })?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // A tool that exits early closes its stdin; the status reports that.
        let _ = stdin.write_all(data);
    }
    let out = child.wait_with_output().map_err(|source| CmdError::Spawn {
        program: program.clone(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let both = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        Err(CmdError::Failed {
            program,
            status: out.status,
            output: tail(&both, 25),
        })
    }
}

/// Runs with stdout and stderr merged into lines passed to `on_line` as they
/// come (for spinners and logs); returns all output.
pub fn run_streaming(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<String, CmdError> {
    let program = describe(cmd);
    let (reader, writer) = std::io::pipe().map_err(|source| CmdError::Spawn {
        program: program.clone(),
        source,
    })?;
    let writer2 = writer.try_clone().map_err(|source| CmdError::Spawn {
        program: program.clone(),
        source,
    })?;
    cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
        program: program.clone(),
        source,
    })?;
    // Drop our copies of the write end so the reader sees EOF.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut all = String::new();
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        on_line(&line);
        all.push_str(&line);
        all.push('\n');
    }
    let status = child.wait().map_err(|source| CmdError::Spawn {
        program: program.clone(),
        source,
    })?;
    if status.success() {
        Ok(all)
    } else {
        Err(CmdError::Failed {
            program,
            status,
            output: tail(&all, 25),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_failures() {
        assert_eq!(run(&mut command("echo", ["hi"])).unwrap(), "hi\n");
        let err = run(&mut command("sh", ["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("oops") && msg.contains("sh -c"), "{msg}");
        assert!(matches!(
            run(&mut command("/no/such/tool", ["x"])),
            Err(CmdError::Spawn { .. })
        ));
    }

    #[test]
    fn streams_lines_and_feeds_stdin() {
        let mut seen = Vec::new();
        let out = run_streaming(&mut command("sh", ["-c", "echo a; echo b >&2"]), |l| {
            seen.push(l.to_owned())
        })
        .unwrap();
        assert_eq!(seen.len(), 2);
        assert!(out.contains('a') && out.contains('b'));
        let out = run_with_input(&mut command("cat", Vec::<&str>::new()), Some(b"xyz")).unwrap();
        assert_eq!(out, "xyz");
    }
}
