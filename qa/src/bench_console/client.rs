//! `bench console`'s side of HTTPS: a keep-alive connection per user that
//! trusts only the test CA, reading answers with the harness's one HTTP/1.1
//! reader ([`crate::probes::read_response`]), and a browser's sign-in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{CSRF_COOKIE, SESSION_COOKIE};
use crate::probes::{BodyEnd, Cookies, Response, read_response};

/// The cookies a response sets.
pub(super) fn cookies_of(resp: &Response) -> Cookies {
    let mut jar = Cookies::default();
    jar.update(resp);
    jar
}

/// The console's TLS client settings: the test CA and nothing else.
#[derive(Clone)]
pub(super) struct Https {
    connector: TlsConnector,
    addr: SocketAddr,
}

impl Https {
    pub(super) fn new(ca_pem: &std::path::Path, addr: SocketAddr) -> Result<Https> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem)
            .with_context(|| format!("Cannot read the test CA {}", ca_pem.display()))?
        {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Https {
            connector: TlsConnector::from(Arc::new(config)),
            addr,
        })
    }

    pub(super) async fn connect(&self) -> Result<Conn> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("Cannot connect to the console at {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .context("TLS handshake with the console failed")?;
        Ok(Conn {
            io: BufReader::new(tls),
            host: self.addr.to_string(),
        })
    }
}

/// One keep-alive HTTP/1.1 connection.
pub(super) struct Conn {
    io: BufReader<TlsStream<TcpStream>>,
    host: String,
}

impl Conn {
    pub(super) async fn get(&mut self, path: &str, cookie: &str) -> Result<Response> {
        self.request("GET", path, cookie, None).await
    }

    pub(super) async fn post(&mut self, path: &str, cookie: &str, form: &[(&str, &str)]) -> Result<Response> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.request("POST", path, cookie, Some(&body)).await
    }

    async fn request(&mut self, method: &str, path: &str, cookie: &str, form: Option<&str>) -> Result<Response> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n",
            self.host
        );
        if !cookie.is_empty() {
            req.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        if let Some(body) = form {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        let io = self.io.get_mut();
        io.write_all(req.as_bytes()).await?;
        io.flush().await?;
        read_response(&mut self.io, BodyEnd::KeepAlive)
            .await
            .with_context(|| format!("{method} {path}: no valid HTTP answer"))
    }
}

/// The value of the first hidden `csrf` field of a page.
pub(super) fn form_csrf(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\"")?;
    let rest = &html[at..];
    let v = rest.find("value=\"")? + "value=\"".len();
    let end = rest[v..].find('"')?;
    Some(rest[v..v + end].to_string())
}

/// Signs in on `conn` as a browser does (GET the form, POST it with the
/// double-submit cookie); returns the session cookie and the POST's time.
pub(super) async fn sign_in(conn: &mut Conn, user: &str, password: &str) -> Result<(String, Duration)> {
    let page = conn.get("/login", "").await?.expect(200, "GET /login")?;
    let token = cookies_of(&page)
        .get(CSRF_COOKIE)
        .context("GET /login set no CSRF cookie")?
        .to_string();
    let field = form_csrf(&page.text()).context("the sign-in page has no csrf field")?;
    let cookie = format!("{CSRF_COOKIE}={token}");
    let t = Instant::now();
    let resp = conn
        .post(
            "/login",
            &cookie,
            &[("username", user), ("password", password), ("csrf", &field)],
        )
        .await?;
    let took = t.elapsed();
    let resp = resp.expect(303, &format!("POST /login as {user}"))?;
    ensure!(
        resp.header("location") == Some("/dashboard"),
        "sign-in as {user} redirected to {:?}, not /dashboard",
        resp.header("location")
    );
    let session = cookies_of(&resp)
        .get(SESSION_COOKIE)
        .with_context(|| format!("sign-in as {user} set no session cookie"))?
        .to_string();
    Ok((format!("{SESSION_COOKIE}={session}"), took))
}

/// Sends a request again after a 429 (the admin's own rate while creating
/// users), waiting as long as `Retry-After` says.
pub(super) async fn post_paced(conn: &mut Conn, path: &str, cookie: &str, form: &[(&str, &str)]) -> Result<Response> {
    loop {
        let resp = conn.post(path, cookie, form).await?;
        if resp.status != 429 {
            return Ok(resp);
        }
        let wait: u64 = resp.header("retry-after").and_then(|s| s.parse().ok()).unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait.max(1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_field_and_cookies_are_found() {
        let html = r#"<form><input type="hidden" name="csrf" value="ab12"><input name="x" value="y"></form>"#;
        assert_eq!(form_csrf(html).as_deref(), Some("ab12"));
        assert_eq!(form_csrf("<form></form>"), None);
        let r = Response {
            status: 303,
            headers: vec![
                ("set-cookie".into(), "__Host-debvisor_session=s1; Path=/; Secure".into()),
                ("set-cookie".into(), "__Host-debvisor_csrf=; Max-Age=0".into()),
                ("location".into(), "/dashboard".into()),
            ],
            body: Vec::new(),
        };
        let c = cookies_of(&r);
        assert_eq!(c.get(SESSION_COOKIE), Some("s1"));
        assert_eq!(c.get(CSRF_COOKIE), None);
        assert_eq!(r.header("location"), Some("/dashboard"));
        assert!(r.expect(200, "x").unwrap_err().to_string().contains("HTTP 303"));
    }
}
