//! Counting the connections a gRPC server accepts.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use crate::Metrics;

/// Takes one connection off the open-connections gauge when dropped.
#[derive(Debug)]
struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pin_project_lite::pin_project! {
    /// A connection counted in `debvisor_grpc_connections` while it lives.
    ///
    /// It reads and writes through to the wrapped IO and hands tonic the
    /// same connection info (`UdsConnectInfo`, `TcpConnectInfo`), so request
    /// extensions and TLS peer certificates are unchanged.
    #[derive(Debug)]
    pub struct Counted<IO> {
        #[pin]
        io: IO,
        open: OpenConnection,
    }
}

impl<IO> Counted<IO> {
    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl Metrics {
    /// Wraps a server's stream of accepted connections (a
    /// `tokio_stream::wrappers::TcpListenerStream` or `UnixListenerStream`)
    /// so that each is counted, for `Server::serve_with_incoming(..)`.
    pub fn count_connections<S, IO, E>(
        &self,
        transport: &'static str,
        incoming: S,
    ) -> impl Stream<Item = Result<Counted<IO>, E>> + use<S, IO, E>
    where
        S: Stream<Item = Result<IO, E>>,
    {
        let metrics = self.clone();
        incoming.map(move |accepted| {
            accepted.map(|io| {
                let gauge = metrics.connection_accepted(transport);
                gauge.inc();
                Counted {
                    io,
                    open: OpenConnection(gauge),
                }
            })
        })
    }
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead> AsyncRead for Counted<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Counted<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
