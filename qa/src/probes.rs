//! Checks made from the host through the forwarded ports: a small HTTP/1.1
//! client over rustls with the node certificate pinned (console), and the
//! agent's GetStatus over mutual TLS with the node's admin bundle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use debvisor_api::client::{parse_fingerprint, pinned_client_config};
use debvisor_api::config::Context;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use debvisor_api::node::v1::{GetStatusRequest, GetStatusResponse};
use debvisor_api::tls::connect_mtls;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::transport::Channel;

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Response {
    /// Fails unless the status is `want`, with the start of the body.
    pub fn expect(self, want: u16, what: &str) -> Result<Response> {
        if self.status != want {
            let text = self.text();
            let head: String = text.chars().take(400).collect();
            bail!("{what}: HTTP {} (expected {want}); body: {head}", self.status);
        }
        Ok(self)
    }
}

/// How a response without Content-Length or chunks ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The server closes the connection (`Connection: close` requests).
    Close,
    /// Such a body is an error: the connection is kept for the next request.
    KeepAlive,
}

async fn read_line<R: AsyncBufRead + Unpin>(io: &mut R) -> Result<String> {
    let mut line = String::new();
    if io.read_line(&mut line).await? == 0 {
        bail!("the server closed the connection");
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// The status of `HTTP/1.1 200 OK`.
fn parse_status_line(line: &str) -> Result<u16> {
    let mut w = line.split_whitespace();
    if !w.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        bail!("Not an HTTP/1 response: {line:?}");
    }
    w.next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("Bad HTTP status line {line:?}"))
}

/// The size of a chunk-size line (hex, optional extensions).
fn parse_chunk_size(line: &str) -> Result<usize> {
    let hex = line.split(';').next().unwrap_or_default().trim();
    usize::from_str_radix(hex, 16).with_context(|| format!("Bad chunk size {line:?}"))
}

/// Reads one HTTP/1.1 response from `io`: a Content-Length or chunked
/// body, or (with [`BodyEnd::Close`]) one that ends when the server closes.
/// The one HTTP client of the harness: [`https`] and `bench console`'s
/// keep-alive connections both read with it.
pub async fn read_response<R: AsyncBufRead + Unpin>(io: &mut R, end: BodyEnd) -> Result<Response> {
    let status = parse_status_line(&read_line(io).await?)?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(io).await.context("HTTP response has no end of headers")?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .with_context(|| format!("Bad header line {line:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let size = parse_chunk_size(&read_line(io).await.context("Truncated chunk size line")?)?;
            if size == 0 {
                // Trailers, then the empty line (a closing server may omit them).
                while !read_line(io).await.unwrap_or_default().is_empty() {}
                break;
            }
            let start = resp.body.len();
            resp.body.resize(start + size, 0);
            io.read_exact(&mut resp.body[start..])
                .await
                .with_context(|| format!("Truncated chunk of {size} bytes"))?;
            if !read_line(io).await?.is_empty() {
                bail!("A chunk does not end with CRLF");
            }
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().context("Bad Content-Length")?;
        resp.body.resize(len, 0);
        io.read_exact(&mut resp.body)
            .await
            .with_context(|| format!("HTTP body is short of its {len} bytes"))?;
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
    } else if end == BodyEnd::Close {
        // A server may close without close_notify; keep what arrived.
        if let Err(e) = io.read_to_end(&mut resp.body).await
            && resp.body.is_empty()
        {
            return Err(e).context("Reading the HTTPS response failed");
        }
    } else {
        bail!("an answer ({status}) with neither Content-Length nor chunks: not keep-alive");
    }
    Ok(resp)
}

/// Parses a whole response read until the server closed the connection.
#[cfg(test)]
pub fn parse_response(raw: &[u8]) -> Result<Response> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(read_response(&mut &raw[..], BodyEnd::Close))
}

/// Cookies by name, as a browser would keep them for one host.
#[derive(Debug, Default, Clone)]
pub struct Cookies(BTreeMap<String, String>);

impl Cookies {
    /// Takes every Set-Cookie of a response (an empty value or Max-Age=0 deletes).
    pub fn update(&mut self, resp: &Response) {
        for (k, v) in &resp.headers {
            if k != "set-cookie" {
                continue;
            }
            let mut attrs = v.split(';');
            let Some((name, value)) = attrs.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let expired = attrs.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            if expired || value.trim().is_empty() {
                self.0.remove(name.trim());
            } else {
                self.0.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    /// The value of cookie `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The Cookie request header value, if any.
    pub fn header(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| {
            self.0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Parses the attributes of one tag's inside (`input type="hidden" ...`).
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let b = tag.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        let name = tag[start..i].to_ascii_lowercase();
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                i += 1;
                let vs = i;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                value = tag[vs..i].to_string();
                i += 1;
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = tag[vs..i].to_string();
            }
        }
        if !name.is_empty() {
            out.insert(name, html_unescape(&value));
        }
    }
    out
}

/// Every `<input type="hidden" name=.. value=..>` in a page, in order.
pub fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(start) = lower[pos..].find("<input") {
        let s = pos + start + "<input".len();
        let Some(end) = lower[s..].find('>') else { break };
        let attrs = attributes(&html[s..s + end]);
        if attrs.get("type").is_some_and(|t| t.eq_ignore_ascii_case("hidden"))
            && let Some(name) = attrs.get("name")
        {
            out.push((name.clone(), attrs.get("value").cloned().unwrap_or_default()));
        }
        pos = s + end;
    }
    out
}

/// application/x-www-form-urlencoded.
pub fn form_encode(fields: &[(String, String)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// One HTTPS request to 127.0.0.1:`port`, the server certificate pinned.
pub async fn https(
    port: u16,
    pin: &str,
    method: &str,
    path: &str,
    cookies: &Cookies,
    form: Option<&str>,
) -> Result<Response> {
    let pin = parse_fingerprint(pin)?;
    let mut cfg = pinned_client_config(pin);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("Cannot connect to 127.0.0.1:{port}"))?;
    let name = ServerName::try_from("debvisor-node")?;
    let mut tls = connector.connect(name, tcp).await.context("TLS handshake failed")?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: debvisor-qa\r\nAccept: text/html\r\nConnection: close\r\n"
    );
    if let Some(c) = cookies.header() {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    if let Some(body) = form {
        req.push_str(&format!(
            "Origin: https://127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    tls.write_all(req.as_bytes()).await?;
    read_response(&mut BufReader::new(tls), BodyEnd::Close).await
}

/// GET /healthz must answer 200 "ok".
pub async fn console_healthz(port: u16, pin: &str) -> Result<()> {
    let r = https(port, pin, "GET", "/healthz", &Cookies::default(), None).await?;
    if r.status != 200 || r.text().trim() != "ok" {
        bail!("/healthz answered {} {:?}", r.status, r.text().trim());
    }
    Ok(())
}

/// Logs in to the console like a browser and returns the /status page.
pub async fn console_login(port: u16, pin: &str, user: &str, password: &str) -> Result<String> {
    let mut jar = Cookies::default();
    let page = https(port, pin, "GET", "/login", &jar, None).await?;
    if page.status != 200 {
        bail!("GET /login answered {}", page.status);
    }
    jar.update(&page);
    let mut fields = hidden_inputs(&page.text());
    fields.push(("username".into(), user.into()));
    fields.push(("password".into(), password.into()));
    let r = https(port, pin, "POST", "/login", &jar, Some(&form_encode(&fields))).await?;
    jar.update(&r);
    if !(300..400).contains(&r.status) {
        bail!(
            "POST /login answered {} instead of a redirect: {}",
            r.status,
            r.text().chars().take(300).collect::<String>()
        );
    }
    let status = https(port, pin, "GET", "/status", &jar, None).await?;
    if status.status != 200 {
        bail!("GET /status after login answered {}", status.status);
    }
    Ok(status.text())
}

/// GetStatus over mTLS from the host with a client bundle's context.
pub async fn agent_status(ctx: &Context) -> Result<GetStatusResponse> {
    let channel = connect(ctx).await?;
    let mut client = NodeServiceClient::new(channel);
    let resp = tokio::time::timeout(Duration::from_secs(20), client.get_status(GetStatusRequest {}))
        .await
        .context("GetStatus timed out")??;
    Ok(resp.into_inner())
}

/// An mTLS channel to the agent of `ctx`, within 20 s.
pub async fn connect(ctx: &Context) -> Result<Channel> {
    Ok(tokio::time::timeout(Duration::from_secs(20), connect_mtls(ctx))
        .await
        .context("Connecting to the agent timed out")??)
}

/// Retries `f` every half second until it succeeds or `timeout` passes;
/// returns the time of success since `since`.
pub async fn retry<T, F, Fut>(what: &str, since: Instant, timeout: Duration, mut f: F) -> Result<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), f()).await {
            Ok(Ok(v)) => return Ok((v, since.elapsed())),
            Ok(Err(e)) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what} did not answer within {} s", timeout.as_secs())));
            }
            Err(_) if Instant::now() >= deadline => bail!("{what} did not answer within {} s", timeout.as_secs()),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nokEXTRA").unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-a")),
            (200, &b"ok"[..], Some("b"))
        );
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.text(), "Wikipedia");
        let r = parse_response(b"HTTP/1.0 303 See Other\r\nLocation: /status\r\n\r\nclose-delimited").unwrap();
        assert_eq!((r.status, r.text().as_str()), (303, "close-delimited"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nno length").is_ok());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let keep = rt.block_on(read_response(
            &mut &b"HTTP/1.1 200 OK\r\n\r\nno length"[..],
            BodyEnd::KeepAlive,
        ));
        assert!(keep.unwrap_err().to_string().contains("not keep-alive"));
        let two = b"HTTP/1.1 303 See Other\r\nLocation: /a\r\nContent-Length: 0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let mut io = &two[..];
        let first = rt.block_on(read_response(&mut io, BodyEnd::KeepAlive)).unwrap();
        let second = rt.block_on(read_response(&mut io, BodyEnd::KeepAlive)).unwrap();
        assert_eq!(
            (first.status, first.header("location"), second.status),
            (303, Some("/a"), 204)
        );
        assert!(parse_status_line("SSH-2.0-OpenSSH").is_err());
        assert_eq!(parse_chunk_size("1a").unwrap(), 26);
        assert_eq!(parse_chunk_size("0;ext=1").unwrap(), 0);
        assert!(parse_chunk_size("zz").is_err());
    }

    #[test]
    fn cookies_follow_set_cookie() {
        let mut jar = Cookies::default();
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: __Host-csrf=abc; Path=/; Secure; HttpOnly\r\nSet-Cookie: s=1\r\n\r\n",
        )
        .unwrap();
        jar.update(&r);
        assert_eq!(jar.header().unwrap(), "__Host-csrf=abc; s=1");
        let r = parse_response(b"HTTP/1.1 200 OK\r\nSet-Cookie: s=gone; Max-Age=0\r\n\r\n").unwrap();
        jar.update(&r);
        assert_eq!(jar.header().unwrap(), "__Host-csrf=abc");
    }

    #[test]
    fn hidden_inputs_parse() {
        let html = r#"<form method="post"><INPUT type="hidden" name="csrf" value="a&amp;b">
            <input id="u" name="username" type="text" value="">
            <input type='hidden' name='next' value='/status'/>
            <input type=hidden name=flag value=1></form>"#;
        assert_eq!(
            hidden_inputs(html),
            vec![
                ("csrf".to_string(), "a&b".to_string()),
                ("next".to_string(), "/status".to_string()),
                ("flag".to_string(), "1".to_string()),
            ]
        );
        assert_eq!(form_encode(&[("a b".into(), "x&y=é".into())]), "a+b=x%26y%3D%C3%A9");
    }
}
