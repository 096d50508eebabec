//! The upload form (`multipart/form-data`) read as it arrives: the small
//! fields before the file, then the file's bytes passed on in chunks, never
//! more than about one chunk in memory.
//!
//! The agent's `Upload` needs the file's exact size before the first byte
//! (`UploadHeader.size_bytes`), and a form does not say it. The console's
//! upload form sends the file as its last field, so the size follows from
//! the request's `Content-Length`: what is left after the file part's
//! headers, minus the closing delimiter `CRLF --BOUNDARY-- CRLF` with which
//! browsers (and curl) end a form. The last chunk is passed on only after
//! that delimiter has been read, so a form that ends in any other way never
//! becomes a complete upload at the agent. (A field after the file would be
//! taken for the file's last bytes; RAUC then refuses the file as a bundle.)

use axum::body::Bytes;
use debvisor_api::update::v1::UploadChunk;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

/// The most the fields before the file (with all part headers) may take.
pub const MAX_HEAD: usize = 16 * 1024;
/// The size of the data messages sent to the agent (it accepts up to 1 MiB).
pub const CHUNK: usize = 256 * 1024;

/// Why an upload form could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// Not `multipart/form-data` with a boundary.
    #[error(
        "the request is not a file upload form (Content-Type {0:?}); send the bundle with the upload form \
         (multipart/form-data)"
    )]
    NotMultipart(String),
    /// The fields before the file are too large.
    #[error("the form's fields before the file take more than {MAX_HEAD} bytes; send only the upload form's fields")]
    HeadTooLarge,
    /// The form's structure is broken.
    #[error("the upload form is malformed: {0}")]
    Malformed(&'static str),
    /// No part carries a file.
    #[error("the form carries no file: choose a bundle file (update.raucb)")]
    NoFile,
    /// The body ended before the announced length.
    #[error("the upload broke off after {done} of {size} bytes of the file")]
    Truncated {
        /// File bytes received.
        done: u64,
        /// File bytes announced.
        size: u64,
    },
    /// Reading the request body failed (the browser went away).
    #[error("the upload broke off: {0}")]
    Body(String),
    /// The file is not followed by the form's closing delimiter alone.
    #[error(
        "the form does not end with its closing boundary right after the file: the file must be the form's last \
         field"
    )]
    BadEnd,
    /// The agent stopped taking the data (it refused or failed the upload).
    #[error("the agent stopped receiving the upload")]
    AgentGone,
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Result<String, FormError> {
    let not = || FormError::NotMultipart(content_type.chars().take(80).collect());
    let (kind, params) = content_type.split_once(';').ok_or_else(not)?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(not());
    }
    let b = parameters(params)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v)
        .ok_or_else(not)?;
    // RFC 2046: 1 to 70 characters.
    if b.is_empty() || b.len() > 70 || b.bytes().any(|c| c.is_ascii_control()) {
        return Err(not());
    }
    Ok(b)
}

/// `key=value` and `key="quoted value"` parameters separated by `;`.
fn parameters(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ';') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ';') {
                value.push(c);
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// The `name` and `filename` of a part's `Content-Disposition` header.
fn disposition(headers: &str) -> Result<(String, Option<String>), FormError> {
    let value = headers
        .split("\r\n")
        .find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case("content-disposition").then_some(v)
        })
        .ok_or(FormError::Malformed("a part has no Content-Disposition header"))?;
    let (kind, params) = value.split_once(';').unwrap_or((value, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(FormError::Malformed("a part is not form-data"));
    }
    let params = parameters(params);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let name = get("name").ok_or(FormError::Malformed("a part has no name"))?;
    Ok((name, get("filename")))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What comes before the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHead {
    /// The text fields before the file, in order.
    pub fields: Vec<(String, String)>,
    /// The file field's name.
    pub field: String,
    /// The browser's name of the file (may be empty).
    pub filename: String,
    /// The file's size in bytes.
    pub size: u64,
}

impl FileHead {
    /// The first field named `name`, or "".
    pub fn field(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A form being read from a request body of `length` bytes.
pub struct FormReader<S> {
    body: S,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// Bytes of the body before `buf`.
    consumed: u64,
    /// `--BOUNDARY`.
    delimiter: Vec<u8>,
    /// The body's length (Content-Length).
    length: u64,
}

impl<S, E> FormReader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    /// A reader of `body`, a form with `boundary` (see [`boundary`]) of
    /// `length` bytes.
    pub fn new(body: S, boundary: &str, length: u64) -> Self {
        FormReader {
            body,
            buf: Vec::new(),
            consumed: 0,
            delimiter: [b"--", boundary.as_bytes()].concat(),
            length,
        }
    }

    /// Reads the next piece of the body into the buffer; false at its end.
    async fn fill(&mut self) -> Result<bool, FormError> {
        match self.body.next().await {
            Some(Ok(b)) => {
                self.buf.extend_from_slice(&b);
                Ok(true)
            }
            Some(Err(e)) => Err(FormError::Body(e.to_string())),
            None => Ok(false),
        }
    }

    /// Reads until the buffer holds `n` bytes.
    async fn want(&mut self, n: usize, what: &'static str) -> Result<(), FormError> {
        while self.buf.len() < n {
            if n > MAX_HEAD + self.delimiter.len() + 8 {
                return Err(FormError::HeadTooLarge);
            }
            if !self.fill().await? {
                return Err(FormError::Malformed(what));
            }
        }
        Ok(())
    }

    /// Reads until `needle` is found at or after `from`; its position.
    async fn seek(&mut self, from: usize, needle: &[u8], what: &'static str) -> Result<usize, FormError> {
        loop {
            if let Some(i) = self.buf.get(from..).and_then(|b| find(b, needle)) {
                if from + i > MAX_HEAD {
                    return Err(FormError::HeadTooLarge);
                }
                return Ok(from + i);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(FormError::HeadTooLarge);
            }
            if !self.fill().await? {
                return Err(FormError::Malformed(what));
            }
        }
    }

    /// Reads the fields up to the file part's headers; the reader then
    /// stands at the file's first byte.
    pub async fn head(&mut self) -> Result<FileHead, FormError> {
        let d = self.delimiter.len();
        self.want(d + 2, "it ends before its first boundary").await?;
        if !self.buf.starts_with(&self.delimiter) || &self.buf[d..d + 2] != b"\r\n" {
            return Err(FormError::Malformed("it does not start with its boundary"));
        }
        let mut pos = d + 2;
        let mut fields = Vec::new();
        let part_end: Vec<u8> = [b"\r\n", self.delimiter.as_slice()].concat();
        loop {
            let end = self.seek(pos, b"\r\n\r\n", "it ends inside a part's headers").await?;
            let headers = std::str::from_utf8(&self.buf[pos..end])
                .map_err(|_| FormError::Malformed("a part's headers are not UTF-8"))?;
            let (name, filename) = disposition(headers)?;
            let start = end + 4;
            if let Some(filename) = filename {
                // The file: its size is what remains but the closing delimiter.
                let before = self.consumed + start as u64;
                let trailer = part_end.len() as u64 + 4;
                let size = self
                    .length
                    .checked_sub(before + trailer)
                    .ok_or(FormError::Malformed("it is shorter than its own fields"))?;
                self.buf.drain(..start);
                self.consumed = before;
                return Ok(FileHead {
                    fields,
                    field: name,
                    filename,
                    size,
                });
            }
            let value_end = self.seek(start, &part_end, "it ends inside a field").await?;
            let value = std::str::from_utf8(&self.buf[start..value_end])
                .map_err(|_| FormError::Malformed("a field is not UTF-8"))?;
            fields.push((name, value.to_string()));
            let after = value_end + part_end.len();
            self.want(after + 2, "it ends after a boundary").await?;
            match &self.buf[after..after + 2] {
                b"\r\n" => pos = after + 2,
                b"--" => return Err(FormError::NoFile),
                _ => return Err(FormError::Malformed("a boundary is followed by neither CRLF nor --")),
            }
        }
    }

    /// Sends the file's `size` bytes to `tx` as data messages of at most
    /// [`CHUNK`] bytes, the last one only after the closing delimiter was
    /// read, then drops `tx` (the end of the upload). Returns the bytes sent.
    pub async fn forward(mut self, size: u64, tx: mpsc::Sender<UploadChunk>) -> Result<u64, FormError> {
        let expected: Vec<u8> = [b"\r\n", self.delimiter.as_slice(), b"--\r\n"].concat();
        let mut left = size;
        let mut out: Vec<u8> = Vec::with_capacity(CHUNK.min(usize::try_from(size).unwrap_or(CHUNK)));
        let mut tail: Vec<u8> = Vec::new();
        let mut piece = Bytes::from(std::mem::take(&mut self.buf));
        loop {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(piece.len());
            out.extend_from_slice(&piece[..n]);
            left -= n as u64;
            tail.extend_from_slice(&piece[n..]);
            if tail.len() > expected.len() {
                return Err(FormError::BadEnd);
            }
            while out.len() >= CHUNK && left > 0 {
                let rest = out.split_off(CHUNK);
                let data = std::mem::replace(&mut out, rest);
                send(&tx, data).await?;
            }
            piece = match self.body.next().await {
                Some(Ok(b)) => b,
                Some(Err(e)) => return Err(FormError::Body(e.to_string())),
                None => break,
            };
        }
        if left > 0 {
            return Err(FormError::Truncated {
                done: size - left,
                size,
            });
        }
        if tail != expected {
            return Err(FormError::BadEnd);
        }
        for data in out.chunks(CHUNK) {
            send(&tx, data.to_vec()).await?;
        }
        Ok(size)
    }
}

async fn send(tx: &mpsc::Sender<UploadChunk>, data: Vec<u8>) -> Result<(), FormError> {
    tx.send(UploadChunk { header: None, data })
        .await
        .map_err(|_| FormError::AgentGone)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "----WebKitFormBoundaryX3vA";

    /// A form as a browser sends it: the fields, then the file last.
    fn form(fields: &[(&str, &str)], file: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in fields {
            body.extend_from_slice(
                format!("--{B}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{B}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"up;date \\\"v2\\\".raucb\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{B}--\r\n").as_bytes());
        body
    }

    /// `body` cut into pieces of `n` bytes, as a body stream.
    fn pieces(body: &[u8], n: usize) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        let v: Vec<Result<Bytes, String>> = body.chunks(n).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures_util::stream::iter(v)
    }

    async fn read(body: &[u8], n: usize) -> Result<(FileHead, Vec<u8>, usize), FormError> {
        let mut r = FormReader::new(pieces(body, n), B, body.len() as u64);
        let head = r.head().await?;
        let (tx, mut rx) = mpsc::channel(1024);
        r.forward(head.size, tx).await?;
        let (mut data, mut messages) = (Vec::new(), 0);
        while let Some(c) = rx.recv().await {
            assert!(c.data.len() <= CHUNK);
            data.extend_from_slice(&c.data);
            messages += 1;
        }
        Ok((head, data, messages))
    }

    #[test]
    fn boundaries_are_read_from_the_content_type() {
        assert_eq!(boundary(&format!("multipart/form-data; boundary={B}")).unwrap(), B);
        assert_eq!(
            boundary("Multipart/Form-Data; charset=utf-8; boundary=\"a b\"").unwrap(),
            "a b"
        );
        for bad in [
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "multipart/form-data; boundary=",
        ] {
            assert!(matches!(boundary(bad), Err(FormError::NotMultipart(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn fields_then_the_file_in_any_piece_size() {
        let file: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let body = form(&[("csrf", "abc"), ("sha256", "")], &file);
        for n in [1, 7, 4096, 65_536, body.len()] {
            let (head, data, messages) = read(&body, n).await.unwrap();
            assert_eq!(head.field("csrf"), "abc");
            assert_eq!(head.field("sha256"), "");
            assert_eq!(head.field("missing"), "");
            assert_eq!(
                (head.field.as_str(), head.filename.as_str()),
                ("bundle", "up;date \"v2\".raucb")
            );
            assert_eq!(head.size, file.len() as u64);
            assert!(data == file, "piece size {n}");
            assert_eq!(messages, file.len().div_ceil(CHUNK), "piece size {n}");
        }
    }

    #[tokio::test]
    async fn an_empty_file_and_crlf_inside_the_file_are_kept() {
        let (head, data, _) = read(&form(&[("csrf", "x")], b""), 3).await.unwrap();
        assert_eq!((head.size, data.len()), (0, 0));
        let tricky = format!("a\r\n--{B}x\r\n\r\nb");
        let (_, data, _) = read(&form(&[], tricky.as_bytes()), 5).await.unwrap();
        assert_eq!(data, tricky.as_bytes());
    }

    #[tokio::test]
    async fn broken_forms_are_named_and_never_complete_the_file() {
        let file = vec![7u8; 300_000];
        let good = form(&[("csrf", "abc")], &file);
        // Cut short: the body ends early.
        let cut = &good[..good.len() - 100];
        let mut r = FormReader::new(pieces(cut, 1000), B, good.len() as u64);
        let head = r.head().await.unwrap();
        let (tx, mut rx) = mpsc::channel(1024);
        let e = r.forward(head.size, tx).await.unwrap_err();
        assert!(matches!(e, FormError::Truncated { size: 300_000, .. }), "{e}");
        let mut sent = 0;
        while let Some(c) = rx.recv().await {
            sent += c.data.len();
        }
        assert!(sent < file.len(), "the agent must not get the whole file");
        // A form that ends without the final CRLF: the size counts two bytes
        // too many, the end does not match, the file is never complete.
        let short_end = &good[..good.len() - 2];
        assert_eq!(read(short_end, 999).await.err(), Some(FormError::BadEnd));
        // No file at all.
        let mut none = Vec::new();
        none.extend_from_slice(
            format!("--{B}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nx\r\n--{B}--\r\n").as_bytes(),
        );
        assert_eq!(read(&none, 10).await.err(), Some(FormError::NoFile));
        // Not starting with the boundary, a part without a name, huge fields.
        assert!(matches!(
            read(b"garbage garbage garbage garbage garbage", 10).await,
            Err(FormError::Malformed(_))
        ));
        let nameless = format!("--{B}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{B}--\r\n");
        assert_eq!(
            read(nameless.as_bytes(), 10).await.err(),
            Some(FormError::Malformed("a part has no name"))
        );
        let big = form(&[("csrf", &"x".repeat(MAX_HEAD + 10))], b"data");
        assert_eq!(read(&big, 4096).await.err(), Some(FormError::HeadTooLarge));
        let e = FormReader::new(
            futures_util::stream::iter(vec![Err::<Bytes, _>("reset by peer")]),
            B,
            100,
        )
        .head()
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "the upload broke off: reset by peer");
    }
}
