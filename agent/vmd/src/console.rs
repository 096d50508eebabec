//! `OpenConsole`: a VM's serial console as a bidirectional gRPC stream.
//!
//! A thread of its own blocks in libvirt's console read and sends what the
//! guest wrote; a task writes what the caller types. The console closes
//! when the caller ends its side, when the output cannot be delivered, or
//! when libvirt reports the VM stopped, crashed or undefined (libvirt does
//! not end the console stream itself then).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use debvisor_api::vm::v1 as pb;
use debvisor_virt::{Console, VmEvent, VmEventKind, VmName};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Status, Streaming};

/// The most bytes one input message may carry.
pub const MAX_CONSOLE_INPUT: usize = 64 * 1024;

/// What the guest writes, as the caller receives it.
pub type ConsoleStream = Pin<Box<dyn Stream<Item = Result<pb::ConsoleOutput, Status>> + Send>>;

/// Output messages held for a slow caller before the reader waits.
pub(crate) const OUTPUT_BACKLOG: usize = 64;

/// Refuses an input message that is too long.
pub fn check_input(m: &pb::ConsoleInput) -> Result<(), Status> {
    if m.data.len() > MAX_CONSOLE_INPUT {
        return Err(Status::invalid_argument(format!(
            "data: {} bytes in one console message; send at most {MAX_CONSOLE_INPUT}",
            m.data.len()
        )));
    }
    Ok(())
}

/// Streams `console` of `vm` both ways: `first` (the message that named
/// the VM) and then `input` go to the guest, its output comes back.
/// `events` must be subscribed before the console was opened, so that a
/// stop right after the open is seen.
pub fn bridge(
    vm: VmName,
    console: Console,
    first: pb::ConsoleInput,
    input: Streaming<pb::ConsoleInput>,
    events: broadcast::Receiver<VmEvent>,
) -> Result<ConsoleStream, Status> {
    let console = Arc::new(console);
    let (tx, rx) = mpsc::channel(OUTPUT_BACKLOG);
    // The reader holds the only strong sender: the output ends when it
    // does. The writer reports its refusals through a weak one.
    let refusals = tx.downgrade();
    let (done_tx, reader_done) = oneshot::channel();
    let reader = console.clone();
    std::thread::Builder::new()
        .name(format!("console-{vm}"))
        .spawn(move || {
            pump_output(&reader, tx);
            reader.close();
            let _ = done_tx.send(());
        })
        .map_err(|e| Status::internal(format!("Could not start the console reader: {e}")))?;
    tokio::spawn(async move {
        let write = |data: Vec<u8>| {
            let c = console.clone();
            async move {
                match tokio::task::spawn_blocking(move || c.write(&data)).await {
                    Ok(r) => r.map_err(crate::service::virt_status),
                    Err(e) => Err(Status::internal(format!("The console write did not finish: {e}"))),
                }
            }
        };
        pump_input(&vm, first, input, events, reader_done, refusals, write).await;
        console.close();
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Passes `first` and then `input` to `write` until the caller closes its
/// side, the reader is done, a write fails (the refusal goes out through
/// `refusals`), or libvirt reports `vm` stopped.
pub(crate) async fn pump_input<F>(
    vm: &VmName,
    first: pb::ConsoleInput,
    mut input: Streaming<pb::ConsoleInput>,
    mut events: broadcast::Receiver<VmEvent>,
    mut reader_done: oneshot::Receiver<()>,
    refusals: mpsc::WeakSender<Result<pb::ConsoleOutput, Status>>,
    mut write: impl FnMut(Vec<u8>) -> F,
) where
    F: Future<Output = Result<(), Status>>,
{
    let mut next = Some(first);
    loop {
        if let Some(m) = next.take() {
            let written = match check_input(&m) {
                Ok(()) if m.data.is_empty() => Ok(()),
                Ok(()) => write(m.data).await,
                Err(s) => Err(s),
            };
            if let Err(s) = written {
                if let Some(tx) = refusals.upgrade() {
                    let _ = tx.send(Err(s)).await;
                }
                return;
            }
        }
        tokio::select! {
            m = input.message() => match m {
                Ok(Some(m)) => next = Some(m),
                // The caller closed its side, or went away.
                Ok(None) | Err(_) => return,
            },
            _ = &mut reader_done => return,
            _ = stopped(&mut events, vm) => return,
        }
    }
}

/// Reads the console until it ends and sends what it read; returns when
/// the console ended, failed, or the caller is gone.
fn pump_output(console: &Console, tx: mpsc::Sender<Result<pb::ConsoleOutput, Status>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match console.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let out = pb::ConsoleOutput {
                    data: buf[..n].to_vec(),
                };
                if tx.blocking_send(Ok(out)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(crate::service::virt_status(e)));
                return;
            }
        }
    }
}

/// Resolves when libvirt reports `vm` stopped, crashed or undefined.
pub(crate) async fn stopped(events: &mut broadcast::Receiver<VmEvent>, vm: &VmName) {
    loop {
        match events.recv().await {
            Ok(e) if e.name == vm.as_str() => {
                if matches!(
                    e.kind,
                    VmEventKind::Stopped | VmEventKind::Crashed | VmEventKind::Undefined
                ) {
                    return;
                }
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            // No more events: the console's own end will be seen.
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}
