//! Body wrappers that count gRPC message bytes and see calls to their end.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;

use crate::frames::FrameCounter;
use crate::grpc::{self, Encoding};
use crate::metrics::CallRecord;

/// The two byte counters of one direction.
#[derive(Clone, Debug)]
pub(crate) struct ByteCounters {
    /// Bytes of the framed HTTP/2 body.
    pub(crate) wire: Counter,
    /// Bytes of the message payloads after decompression.
    pub(crate) uncompressed: Counter,
}

impl ByteCounters {
    fn count(&self, frames: &mut FrameCounter, data: &Bytes) {
        self.wire.inc_by(data.len() as u64);
        let uncompressed = frames.feed(data);
        if uncompressed > 0 {
            self.uncompressed.inc_by(uncompressed);
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body that counts the bytes received.
    pub(crate) struct RequestBody<B> {
        #[pin]
        inner: B,
        frames: FrameCounter,
        counters: ByteCounters,
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn new(inner: B, encoding: Encoding, counters: ByteCounters) -> Self {
        Self {
            inner,
            frames: FrameCounter::new(encoding),
            counters,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            this.counters.count(this.frames, data);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The response body of [`MetricsService`](crate::MetricsService):
    /// counts the bytes sent and records the call when the body ends (a
    /// stream ends with its last message), or when it is dropped early.
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        frames: FrameCounter,
        counters: ByteCounters,
        call: CallRecord,
    }
}

impl<B> fmt::Debug for MetricsBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsBody").finish_non_exhaustive()
    }
}

impl<B> MetricsBody<B> {
    pub(crate) fn new(inner: B, encoding: Encoding, counters: ByteCounters, call: CallRecord) -> Self {
        Self {
            inner,
            frames: FrameCounter::new(encoding),
            counters,
            call,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for MetricsBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.counters.count(this.frames, data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = this.call.outcome().ended(Some(trailers));
                    this.call.finish(code);
                }
            }
            Some(Err(_)) => this.call.finish(grpc::UNKNOWN_CODE),
            None => {
                let code = this.call.outcome().ended(None);
                this.call.finish(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
