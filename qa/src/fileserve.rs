//! A static file server on the host for guests: HTTP/1.1 GET of a fixed set
//! of files (update bundles), optionally throttled so that a test can act
//! while a download is under way. A QEMU user-network guest reaches it at
//! `http://10.0.2.2:PORT/NAME` (see [`crate::webhook::HOST_FROM_GUEST`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// What the server shares with its threads.
struct Shared {
    files: Mutex<BTreeMap<String, PathBuf>>,
    /// Bytes per second per response; 0 = as fast as possible.
    rate: AtomicU64,
    /// Requests answered, by path (200 and 404 alike).
    log: Mutex<Vec<(String, u16)>>,
    stop: AtomicBool,
}

/// A running server; stops when dropped.
pub struct FileServer {
    pub port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Listens on 127.0.0.1 (a free port).
    pub fn start() -> Result<FileServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("Cannot bind the file server")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            files: Mutex::new(BTreeMap::new()),
            rate: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("qa-fileserve".into())
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let s = s.clone();
                            std::thread::spawn(move || {
                                let _ = serve(stream, &s);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .context("Cannot start the file server thread")?;
        Ok(FileServer {
            port,
            shared,
            thread: Some(thread),
        })
    }

    /// Serves `path` at `/name`.
    pub fn add(&self, name: &str, path: PathBuf) {
        lock(&self.shared.files).insert(format!("/{name}"), path);
    }

    /// Limits each response to `bytes_per_second` (0: no limit).
    pub fn throttle(&self, bytes_per_second: u64) {
        self.shared.rate.store(bytes_per_second, Ordering::SeqCst);
    }

    /// The URL of `/name` as the guest sees it.
    pub fn guest_url(&self, name: &str) -> String {
        format!("http://{}:{}/{name}", crate::webhook::HOST_FROM_GUEST, self.port)
    }

    /// The requests answered so far: (path, status).
    pub fn requests(&self) -> Vec<(String, u16)> {
        lock(&self.shared.log).clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Answers one connection's requests (keep-alive) until it closes.
fn serve(stream: TcpStream, s: &Shared) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        // Headers up to the blank line.
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
        }
        let mut parts = request.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let file = lock(&s.files).get(path).cloned();
        let opened = file.as_ref().and_then(|p| File::open(p).ok());
        let (Some(mut f), true) = (opened, method == "GET" || method == "HEAD") else {
            lock(&s.log).push((path.to_string(), 404));
            let body = format!("{path} not found\n");
            write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            continue;
        };
        lock(&s.log).push((path.to_string(), 200));
        let len = f.metadata()?.len();
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
        )?;
        if method == "HEAD" {
            continue;
        }
        let started = Instant::now();
        let mut sent = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if s.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            sent += n as u64;
            let rate = s.rate.load(Ordering::SeqCst);
            if rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(port: u16, path: &str) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        let mut head = [0u8; 4096];
        loop {
            let n = c.read(&mut head).unwrap_or(0);
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&head[..n]);
            // One response is all this test asks for.
            let text = String::from_utf8_lossy(&reply).to_string();
            if let Some((h, body)) = text.split_once("\r\n\r\n") {
                let len: usize = h
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    return text;
                }
            }
        }
        String::from_utf8_lossy(&reply).to_string()
    }

    #[test]
    fn serves_files_and_404s_others() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.raucb");
        std::fs::write(&p, b"bundle bytes").unwrap();
        let srv = FileServer::start().unwrap();
        srv.add("b.raucb", p);
        let ok = get(srv.port, "/b.raucb");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("Content-Length: 12\r\n"), "{ok}");
        assert!(ok.ends_with("bundle bytes"), "{ok}");
        let missing = get(srv.port, "/nope");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert_eq!(
            srv.requests(),
            [("/b.raucb".to_string(), 200), ("/nope".to_string(), 404)]
        );
        assert!(srv.guest_url("b.raucb").ends_with(&format!(":{}/b.raucb", srv.port)));
    }
}
