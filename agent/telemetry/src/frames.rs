//! Incremental parsing of gRPC length-prefixed messages, to count their size
//! on the wire and after decompression.

use std::io::{self, Read};

use crate::grpc::Encoding;

/// Compressed messages larger than this are counted on the wire only: the
/// uncompressed figure would cost buffering and decompressing them.
pub(crate) const MAX_COMPRESSED_FRAME: usize = 4 * 1024 * 1024;

/// Decompressing stops here (a message that inflates past this is left out
/// of the uncompressed figure), so a compression bomb costs bounded work.
pub(crate) const MAX_DECOMPRESSED_FRAME: u64 = 64 * 1024 * 1024;

/// Length of the gRPC message prefix: compressed flag and big-endian length.
const PREFIX_LEN: usize = 5;

/// Follows the gRPC framing of one HTTP/2 body, chunk by chunk.
#[derive(Debug)]
pub(crate) struct FrameCounter {
    encoding: Encoding,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Reading a message prefix; `filled` bytes of it are in `prefix`.
    Prefix { prefix: [u8; PREFIX_LEN], filled: usize },
    /// Reading a message's payload.
    Payload {
        /// Payload bytes still to come.
        remaining: usize,
        /// Size of the whole payload.
        len: usize,
        /// Whether the payload must be decompressed to learn its size.
        compressed: bool,
        /// The compressed payload so far, when it will be decompressed.
        buffer: Option<Vec<u8>>,
    },
}

impl FrameCounter {
    /// A counter for a body whose messages use `encoding` when flagged
    /// compressed.
    pub(crate) fn new(encoding: Encoding) -> Self {
        Self {
            encoding,
            state: State::Prefix {
                prefix: [0; PREFIX_LEN],
                filled: 0,
            },
        }
    }

    /// Feeds the next chunk of the body; returns the uncompressed size of the
    /// messages that this chunk completed (those that could be measured).
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) -> u64 {
        let mut uncompressed = 0;
        while !chunk.is_empty() {
            match &mut self.state {
                State::Prefix { prefix, filled } => {
                    let take = (PREFIX_LEN - *filled).min(chunk.len());
                    prefix[*filled..*filled + take].copy_from_slice(&chunk[..take]);
                    *filled += take;
                    chunk = &chunk[take..];
                    if *filled == PREFIX_LEN {
                        let compressed = prefix[0] == 1;
                        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                        let measurable = self.encoding != Encoding::Other
                            && self.encoding != Encoding::Identity
                            && len <= MAX_COMPRESSED_FRAME;
                        self.state = State::Payload {
                            remaining: len,
                            len,
                            compressed,
                            buffer: (compressed && measurable).then(|| Vec::with_capacity(len)),
                        };
                        uncompressed += self.finish_if_complete();
                    }
                }
                State::Payload { remaining, buffer, .. } => {
                    let take = (*remaining).min(chunk.len());
                    if let Some(buffer) = buffer {
                        buffer.extend_from_slice(&chunk[..take]);
                    }
                    *remaining -= take;
                    chunk = &chunk[take..];
                    uncompressed += self.finish_if_complete();
                }
            }
        }
        uncompressed
    }

    /// Moves to the next prefix when the current payload is complete, and
    /// returns its uncompressed size (0 when it cannot be measured).
    fn finish_if_complete(&mut self) -> u64 {
        let State::Payload {
            remaining: 0,
            len,
            compressed,
            buffer,
        } = &mut self.state
        else {
            return 0;
        };
        let size = if !*compressed {
            *len as u64
        } else {
            buffer
                .take()
                .and_then(|payload| decompressed_len(self.encoding, &payload))
                .unwrap_or(0)
        };
        self.state = State::Prefix {
            prefix: [0; PREFIX_LEN],
            filled: 0,
        };
        size
    }
}

/// The size of `payload` once decompressed, or `None` when it cannot be
/// decompressed within [`MAX_DECOMPRESSED_FRAME`].
fn decompressed_len(encoding: Encoding, payload: &[u8]) -> Option<u64> {
    let limit = MAX_DECOMPRESSED_FRAME + 1;
    let counted = match encoding {
        Encoding::Gzip => io::copy(&mut flate2::read::GzDecoder::new(payload).take(limit), &mut io::sink()),
        Encoding::Zstd => zstd::stream::read::Decoder::with_buffer(payload)
            .and_then(|decoder| io::copy(&mut decoder.take(limit), &mut io::sink())),
        Encoding::Identity | Encoding::Other => return None,
    };
    counted.ok().filter(|&n| n <= MAX_DECOMPRESSED_FRAME)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::from(compressed)];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn plain_frames_count_their_payload() {
        let mut body = frame(false, b"hello");
        body.extend(frame(false, b""));
        body.extend(frame(false, &[7; 300]));
        let mut counter = FrameCounter::new(Encoding::Identity);
        assert_eq!(counter.feed(&body), 305);
    }

    #[test]
    fn frames_split_across_chunks_byte_by_byte() {
        let mut body = frame(false, &[1; 40]);
        body.extend(frame(false, &[2; 2]));
        let mut counter = FrameCounter::new(Encoding::Identity);
        let total: u64 = body.iter().map(|b| counter.feed(std::slice::from_ref(b))).sum();
        assert_eq!(total, 42);
    }

    #[test]
    fn gzip_frames_count_the_inflated_size() {
        let data = vec![b'a'; 10_000];
        let compressed = gzip(&data);
        assert!(compressed.len() < 1000);
        let body = frame(true, &compressed);
        let mut counter = FrameCounter::new(Encoding::Gzip);
        let (first, second) = body.split_at(body.len() / 2);
        assert_eq!(counter.feed(first), 0);
        assert_eq!(counter.feed(second), 10_000);
    }

    #[test]
    fn zstd_frames_count_the_inflated_size() {
        let data = vec![b'z'; 50_000];
        let compressed = zstd::encode_all(&data[..], 1).unwrap();
        let mut body = frame(true, &compressed);
        body.extend(frame(false, b"abc"));
        let mut counter = FrameCounter::new(Encoding::Zstd);
        assert_eq!(counter.feed(&body), 50_003);
    }

    #[test]
    fn unmeasurable_frames_count_nothing_but_keep_the_framing() {
        let mut body = frame(true, &[0xff; 20]); // not valid gzip
        body.extend(frame(false, b"xyz"));
        assert_eq!(FrameCounter::new(Encoding::Gzip).feed(&body), 3);

        let mut body = frame(true, b"whatever");
        body.extend(frame(false, b"xyz"));
        assert_eq!(FrameCounter::new(Encoding::Other).feed(&body), 3);
    }

    #[test]
    fn oversized_compressed_frames_are_not_buffered() {
        let len = MAX_COMPRESSED_FRAME + 1;
        let mut counter = FrameCounter::new(Encoding::Gzip);
        let mut prefix = vec![1];
        prefix.extend_from_slice(&(len as u32).to_be_bytes());
        assert_eq!(counter.feed(&prefix), 0);
        let chunk = vec![0; 1024 * 1024];
        let mut fed = 0;
        while fed < len {
            let n = chunk.len().min(len - fed);
            assert_eq!(counter.feed(&chunk[..n]), 0);
            fed += n;
            if fed < len {
                assert!(matches!(counter.state, State::Payload { buffer: None, .. }));
            }
        }
        assert_eq!(counter.feed(&frame(false, b"ok")), 2);
    }

    #[test]
    fn decompression_bombs_are_capped() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0; 1024 * 1024];
        for _ in 0..=MAX_DECOMPRESSED_FRAME / zeros.len() as u64 {
            encoder.write_all(&zeros).unwrap();
        }
        let compressed = encoder.finish().unwrap();
        assert!(compressed.len() < MAX_COMPRESSED_FRAME);
        assert_eq!(decompressed_len(Encoding::Gzip, &compressed), None);
    }
}
