//! `OpenDisplay`: a VM's VNC display (QEMU's RFB server on the node's
//! loopback) as a bidirectional gRPC stream of raw bytes. The VNC client
//! runs at the caller's end (noVNC in the console, behind its WebSocket).
//! The stream closes when either side closes, or when libvirt reports the
//! VM stopped, crashed or undefined.

use std::net::Ipv4Addr;

use debvisor_api::vm::v1 as pb;
use debvisor_virt::{VmEvent, VmName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::{Status, Streaming};

use crate::console::{ConsoleStream, OUTPUT_BACKLOG, pump_input};

/// Bytes read from the display at once, at most.
const READ_CHUNK: usize = 64 * 1024;

/// Connects to the display of `vm` on loopback `port` and streams it both
/// ways: `first` and then `input` to the display, what it sends back.
pub async fn bridge(
    vm: VmName,
    port: u16,
    first: pb::ConsoleInput,
    input: Streaming<pb::ConsoleInput>,
    events: broadcast::Receiver<VmEvent>,
) -> Result<ConsoleStream, Status> {
    let sock = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.map_err(|e| {
        Status::unavailable(format!(
            "The display of {vm} (VNC on 127.0.0.1:{port}) does not answer: {e}. Is the VM still running?"
        ))
    })?;
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let (tx, rx) = mpsc::channel(OUTPUT_BACKLOG);
    // The reader holds the only strong sender: the output ends when it
    // does. The writer reports its refusals through a weak one.
    let refusals = tx.downgrade();
    let (reader_done_tx, reader_done) = oneshot::channel::<()>();
    let (stop_reader, mut reader_stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = tokio::select! {
                n = rd.read(&mut buf) => n,
                _ = &mut reader_stopped => break,
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let out = pb::ConsoleOutput {
                        data: buf[..n].to_vec(),
                    };
                    if tx.send(Ok(out)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = reader_done_tx.send(());
    });
    tokio::spawn(async move {
        let wr = tokio::sync::Mutex::new(&mut wr);
        let write = |data: Vec<u8>| {
            let wr = &wr;
            async move {
                wr.lock()
                    .await
                    .write_all(&data)
                    .await
                    .map_err(|e| Status::unavailable(format!("The display closed: {e}")))
            }
        };
        pump_input(&vm, first, input, events, reader_done, refusals, write).await;
        let _ = wr.lock().await.shutdown().await;
        let _ = stop_reader.send(());
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
