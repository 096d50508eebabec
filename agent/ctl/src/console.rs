//! `vm console VM`: a VM's serial console in this terminal.
//!
//! On a terminal, the terminal is switched to raw mode (every key goes to
//! the guest, Ctrl-C included) and Ctrl-] leaves; the terminal is restored
//! however the session ends. With input from a pipe, its end leaves.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;

use anyhow::Context as _;
use debvisor_api::vm::v1::vm_service_client::VmServiceClient;
use debvisor_api::vm::v1::{ConsoleInput, ConsoleOutput};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;

use crate::rpc::Ctx;

/// The key that leaves the console (Ctrl-], as telnet and virsh).
const ESCAPE: u8 = 0x1d;

/// Keystrokes read at once, at most (well under the 64 KiB the agent
/// takes in one message).
const READ_CHUNK: usize = 4096;

/// Runs the console of `vm` until the VM stops, the agent ends it, or the
/// user leaves.
pub async fn run(ctx: &Ctx, vm: &str) -> anyhow::Result<()> {
    let (tx, mut output) = open(ctx, vm, Pipe::Console).await?;
    let tty = std::io::stdin().is_terminal();
    let _raw = if tty { Some(RawMode::enter()?) } else { None };
    if tty {
        eprint!("Connected to the console of {vm}. Ctrl-] leaves.\r\n");
    }
    let (left_tx, mut left) = mpsc::channel::<()>(1);
    // std's stdin on a thread of its own: a read blocked on it does not
    // hold the exit (tokio's stdin would).
    std::thread::Builder::new()
        .name("console-input".into())
        .spawn(move || forward_input(tty, &tx, &left_tx))
        .context("Cannot start the console's input thread")?;
    let mut stdout = std::io::stdout();
    loop {
        let next = tokio::select! {
            m = ctx.next_follow(&mut output) => m,
            _ = left.recv() => {
                if tty {
                    eprint!("\r\nLeft the console of {vm}.\r\n");
                }
                return Ok(());
            }
        };
        match next.with_context(|| format!("The console of VM {vm} failed"))? {
            Some(m) => {
                stdout.write_all(&m.data).context("Cannot write to the terminal")?;
                stdout.flush().context("Cannot write to the terminal")?;
            }
            None => {
                eprint!(
                    "{}The console of {vm} closed (the VM stopped, or another session took it over).{}",
                    if tty { "\r\n" } else { "" },
                    if tty { "\r\n" } else { "\n" }
                );
                return Ok(());
            }
        }
    }
}

/// The byte streams to a VM.
#[derive(Debug, Clone, Copy)]
pub enum Pipe {
    /// Its serial console.
    Console,
    /// Its VNC display.
    Display,
}

/// Opens `pipe` of `vm`: the sender for the bytes to it (the message that
/// names the VM is sent) and the stream of what comes back.
pub async fn open(
    ctx: &Ctx,
    vm: &str,
    pipe: Pipe,
) -> anyhow::Result<(mpsc::Sender<ConsoleInput>, tonic::Streaming<ConsoleOutput>)> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(ConsoleInput {
        name: vm.to_string(),
        data: Vec::new(),
    })
    .await
    .expect("the receiver is held below");
    let mut client = VmServiceClient::new(ctx.channel.clone());
    // No grpc-timeout: the stream lasts as long as it is used (only opening
    // it is bounded, by `call`).
    let input = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let output = match pipe {
        Pipe::Console => ctx
            .call(client.open_console(input))
            .await
            .with_context(|| format!("Cannot open the console of VM {vm}"))?,
        Pipe::Display => ctx
            .call(client.open_display(input))
            .await
            .with_context(|| format!("Cannot open the display of VM {vm}"))?,
    };
    Ok((tx, output))
}

/// Sends what is typed (or piped) until the escape key or the end of
/// input; then says so on `left`.
fn forward_input(tty: bool, tx: &mpsc::Sender<ConsoleInput>, left: &mpsc::Sender<()>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; READ_CHUNK];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (keys, leave) = split_at_escape(tty, &buf[..n]);
        if !keys.is_empty() {
            let msg = ConsoleInput {
                name: String::new(),
                data: keys.to_vec(),
            };
            if tx.blocking_send(msg).is_err() {
                return;
            }
        }
        if leave {
            break;
        }
    }
    let _ = left.blocking_send(());
}

/// The keys before the escape key (on a terminal), and whether it came.
fn split_at_escape(tty: bool, keys: &[u8]) -> (&[u8], bool) {
    match keys.iter().position(|&b| tty && b == ESCAPE) {
        Some(i) => (&keys[..i], true),
        None => (keys, false),
    }
}

/// The terminal in raw mode, restored when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("Cannot read the terminal's mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("Cannot switch the terminal to raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_key_leaves_on_a_terminal_only() {
        assert_eq!(split_at_escape(true, b"ls\n"), (&b"ls\n"[..], false));
        assert_eq!(split_at_escape(true, b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_at_escape(true, b"\x1d"), (&b""[..], true));
        // Piped bytes are passed on as they are.
        assert_eq!(split_at_escape(false, b"ab\x1dcd"), (&b"ab\x1dcd"[..], false));
    }
}
