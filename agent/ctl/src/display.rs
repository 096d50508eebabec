//! `vm display VM`: a VM's VNC display on a local TCP port, for any VNC
//! viewer (`vncviewer 127.0.0.1:5900`). Each viewer that connects gets its
//! own `OpenDisplay` stream through the agent; Ctrl-C stops.

use std::net::SocketAddr;

use anyhow::Context as _;
use debvisor_api::vm::v1::ConsoleInput;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::rpc::Ctx;

/// Bytes read from the viewer at once, at most (under the 64 KiB the agent
/// takes in one message).
const READ_CHUNK: usize = 32 * 1024;

/// Listens on `listen` and forwards each viewer to the display of `vm`.
pub async fn run(ctx: &Ctx, vm: &str, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("Cannot listen on {listen} (is the port taken? give another with --listen)"))?;
    let local = listener.local_addr()?;
    eprintln!("The display of {vm} is on {local}: point a VNC viewer there. Ctrl-C stops.");
    let mut ctrl_c = crate::rpc::interrupts()?;
    loop {
        let (sock, peer) = tokio::select! {
            _ = ctrl_c.recv() => return Ok(()),
            a = listener.accept() => a.context("Cannot accept a viewer")?,
        };
        let ctx = ctx.clone();
        let vm = vm.to_string();
        tokio::spawn(async move {
            match forward(&ctx, &vm, sock).await {
                Ok(()) => eprintln!("The viewer at {peer} left."),
                Err(e) => eprintln!("The viewer at {peer}: {e:#}"),
            }
        });
    }
}

/// One viewer: its bytes to the display and back, until either side ends.
async fn forward(ctx: &Ctx, vm: &str, sock: TcpStream) -> anyhow::Result<()> {
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut output) = crate::console::open(ctx, vm, crate::console::Pipe::Display).await?;
    let input = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let msg = ConsoleInput {
                        name: String::new(),
                        data: buf[..n].to_vec(),
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let out = async {
        while let Some(m) = ctx.next_follow(&mut output).await? {
            wr.write_all(&m.data).await.context("Cannot write to the viewer")?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        () = input => Ok(()),
        r = out => r.with_context(|| format!("The display of VM {vm} failed")),
    }
}
