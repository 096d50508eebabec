//! A webhook receiver on the host: a tiny HTTP/1.1 server that records the
//! JSON body of every POST and answers 200. A guest behind QEMU's user
//! network reaches it at `http://10.0.2.2:PORT/...`: slirp turns connections
//! to its gateway address into connections to the host's 127.0.0.1, so the
//! receiver listens on loopback only.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The address at which a QEMU user-network guest reaches the host.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path, e.g. `/alert`.
    pub path: String,
    /// The body parsed as JSON (`Null` when it was not JSON; see `raw`).
    pub json: serde_json::Value,
    /// The body as sent.
    pub raw: String,
    /// When it arrived.
    pub at: Instant,
}

type Shared = Arc<(Mutex<Vec<Received>>, Condvar)>;

/// A running receiver; stops when dropped.
pub struct Receiver {
    pub port: u16,
    got: Shared,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on 127.0.0.1 on a free port.
    pub fn start() -> Result<Receiver> {
        let l = TcpListener::bind("127.0.0.1:0").context("Cannot bind the webhook receiver on 127.0.0.1")?;
        l.set_nonblocking(true)?;
        let port = l.local_addr()?.port();
        let got: Shared = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((stream, _)) => {
                            // A client that sends a broken request gets a
                            // 400 and is not recorded.
                            if let Ok(Some(r)) = serve(stream) {
                                g.0.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                                g.1.notify_all();
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .context("Cannot start the webhook receiver thread")?;
        Ok(Receiver {
            port,
            got,
            stop,
            thread: Some(thread),
        })
    }

    /// The URL a QEMU guest posts to for `path` (which starts with `/`).
    pub fn guest_url(&self, path: &str) -> String {
        format!("http://{HOST_FROM_GUEST}:{}{path}", self.port)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.got.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a received body satisfies `ok`; returns it.
    pub fn wait(&self, what: &str, timeout: Duration, ok: impl Fn(&Received) -> bool) -> Result<Received> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.got;
        let mut got = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = got.iter().find(|r| ok(r)) {
                return Ok(r.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                let seen: Vec<&str> = got.iter().map(|r| r.raw.as_str()).collect();
                bail!(
                    "The webhook receiver got no {what} within {} s; it got {} POSTs: {seen:?}",
                    timeout.as_secs(),
                    seen.len()
                );
            }
            got = cv
                .wait_timeout(got, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request, answers it, and returns it when it was a POST.
fn serve(mut s: TcpStream) -> Result<Option<Received>> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 || buf.len() > 64 * 1024 {
            bail!("The request ended before its headers did");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (method, path, len, chunked) = parse_head(&buf[..head_end])?;
    if chunked {
        // Webhook senders (reqwest's .json()) send a Content-Length.
        s.write_all(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        bail!("A chunked request to {path}: this receiver needs a Content-Length");
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("The request body ended at {} of {len} bytes", body.len());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    let status = if method == "POST" {
        "200 OK"
    } else {
        "405 Method Not Allowed"
    };
    s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())?;
    if method != "POST" {
        return Ok(None);
    }
    let raw = String::from_utf8_lossy(&body).into_owned();
    Ok(Some(Received {
        path,
        json: serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null),
        raw,
        at: Instant::now(),
    }))
}

/// Method, path, Content-Length (0 when absent) and whether the body is
/// chunked.
fn parse_head(head: &[u8]) -> Result<(String, String, usize, bool)> {
    let head = std::str::from_utf8(head).context("The request headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (Some(method), Some(path)) = (first.next(), first.next()) else {
        bail!("Bad request line in {head:?}");
    };
    let mut len = 0;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            len = v.parse().with_context(|| format!("Bad Content-Length {v:?}"))?;
        } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    Ok((method.to_string(), path.to_string(), len, chunked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(port: u16, req: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn records_json_posts() {
        let r = Receiver::start().unwrap();
        let body = r#"{"node":"n1","action":"restarted"}"#;
        let answer = post(
            r.port,
            &format!(
                "POST /alert HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let answer = post(
            r.port,
            "POST /alert HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n12\r\n{\"action\":\"escal\"}\r\n0\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
        let body = r#"{"action":"escal"}"#;
        post(
            r.port,
            &format!("POST /alert HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
        );
        assert!(post(r.port, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let got = r
            .wait("restarted", Duration::from_secs(5), |x| x.json["action"] == "restarted")
            .unwrap();
        assert_eq!((got.path.as_str(), got.json["node"].as_str()), ("/alert", Some("n1")));
        r.wait("second", Duration::from_secs(5), |x| x.json["action"] == "escal")
            .unwrap();
        assert_eq!(r.received().len(), 2);
        assert!(
            r.wait("none", Duration::from_millis(100), |x| x.path == "/nope")
                .is_err()
        );
        assert_eq!(r.guest_url("/alert"), format!("http://10.0.2.2:{}/alert", r.port));
    }
}
