//! Headless Chromium driven over WebDriver (fantoccini) for the console's
//! browser tests: chromedriver (Debian package chromium-driver) on a free
//! port of 127.0.0.1, /usr/bin/chromium with `--headless=new`, a throwaway
//! profile, and the console's server key pinned by its SPKI hash (so no
//! certificate error is ignored but that one). Screenshots go to the test's
//! artifacts directory as PNG; the browser's console log (CSP violations,
//! failed loads) is read through chromedriver's log endpoint.
//!
//! Chromedriver runs in its own process group under `setpriv --pdeathsig
//! KILL`; dropping [`Browser`] kills the group, Chromium with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use sha2::Digest;

/// Debian's chromium package.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromium-driver package.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a wait for an element or a page may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// One browser console message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// "SEVERE", "WARNING", "INFO".
    pub level: String,
    /// The message, with its source.
    pub message: String,
}

impl LogEntry {
    /// Whether the message reports a Content Security Policy violation.
    pub fn is_csp_violation(&self) -> bool {
        self.message.contains("Content Security Policy") || self.message.contains("Content-Security-Policy")
    }
}

/// Whether pages may run JavaScript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scripts {
    /// As a browser comes.
    On,
    /// Blocked for every site (the browser's own driver scripts still run).
    Off,
}

/// A headless Chromium session.
pub struct Browser {
    driver: Option<Child>,
    client: Option<Client>,
    /// Where screenshots and the driver's log go.
    pub artifacts: PathBuf,
    shots: u32,
    /// Every console message read so far.
    pub log: Vec<LogEntry>,
    /// Where downloads are saved (`<artifacts>/downloads`).
    pub downloads: PathBuf,
}

/// The base64 SHA-256 of the certificate's SubjectPublicKeyInfo, as
/// Chromium's `--ignore-certificate-errors-spki-list` wants it.
pub fn spki_pin(cert_pem: &Path) -> Result<String> {
    let der = CertificateDer::from_pem_file(cert_pem)
        .with_context(|| format!("Cannot read a PEM certificate from {}", cert_pem.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow::anyhow!("Cannot parse {}: {e}", cert_pem.display()))?;
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(base64::engine::general_purpose::STANDARD.encode(digest))
}

/// chromedriver's (non-W3C) log endpoint: POST /session/{id}/se/log.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that trusts the server
    /// key of `pinned_cert` (PEM) and nothing else self-signed.
    pub async fn start(artifacts: &Path, pinned_cert: Option<&Path>) -> Result<Browser> {
        Self::start_with(artifacts, pinned_cert, Scripts::On).await
    }

    /// Like [`Browser::start`]; with [`Scripts::Off`] the pages run no
    /// JavaScript at all (a user who turned it off).
    pub async fn start_with(artifacts: &Path, pinned_cert: Option<&Path>, scripts: Scripts) -> Result<Browser> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(bin).is_file() {
                bail!("{bin} not found: install the Debian packages chromium and chromium-driver (qa/setup-host.sh)");
            }
        }
        std::fs::create_dir_all(artifacts).with_context(|| format!("Cannot create {}", artifacts.display()))?;
        let port = crate::qemu::free_port()?;
        let log = artifacts.join("chromedriver.log");
        let logf = std::fs::File::create(&log).with_context(|| format!("Cannot create {}", log.display()))?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", CHROMEDRIVER])
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd
            .spawn()
            .context("Cannot start chromedriver (setpriv comes with util-linux)")?;
        let mut b = Browser {
            driver: Some(driver),
            client: None,
            artifacts: artifacts.to_path_buf(),
            shots: 0,
            log: Vec::new(),
            downloads: artifacts.join("downloads"),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        b.wait_for_driver(addr).await?;

        let profile = artifacts.join("chromium-profile");
        let _ = std::fs::remove_dir_all(&profile);
        let mut args = vec![
            "--headless=new".to_string(),
            // Root in a container: Chromium's sandbox needs user namespaces.
            "--no-sandbox".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        if let Some(cert) = pinned_cert {
            args.push(format!("--ignore-certificate-errors-spki-list={}", spki_pin(cert)?));
        }
        let mut caps = serde_json::Map::new();
        std::fs::create_dir_all(&b.downloads)?;
        let mut prefs = json!({
            "download.default_directory": b.downloads.display().to_string(),
            "download.prompt_for_download": false,
        });
        if scripts == Scripts::Off {
            // The content setting a user gets from "Don't allow sites to use
            // JavaScript" (2 = block), for every site.
            prefs["profile.managed_default_content_settings.javascript"] = json!(2);
            prefs["profile.default_content_setting_values.javascript"] = json!(2);
        }
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args, "prefs": prefs }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://{addr}"))
            .await
            .with_context(|| {
                format!(
                    "Cannot open a Chromium session through chromedriver; see {}",
                    log.display()
                )
            })?;
        b.client = Some(client);
        Ok(b)
    }

    async fn wait_for_driver(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(c) = &mut self.driver
                && let Some(status) = c.try_wait()?
            {
                bail!("chromedriver exited ({status}) before it listened");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("chromedriver did not listen on {addr} within {} s", WAIT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The WebDriver client.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open until close()")
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client()
            .goto(url)
            .await
            .with_context(|| format!("Cannot open {url}"))
    }

    /// Waits (at most [`WAIT`]) for an element matching the CSS selector.
    pub async fn wait_css(&self, css: &str) -> Result<Element> {
        let url = self
            .client()
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default();
        self.client()
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("No element {css:?} on {url} within {} s", WAIT.as_secs()))
    }

    /// Waits for the page's path to be `path`.
    pub async fn wait_path(&self, path: &str) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = self.client().current_url().await?;
            if url.path() == path {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("The browser is on {url}, not on {path}, after {} s", WAIT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `css`'s text satisfies `ok`, and returns it.
    pub async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.wait_css(css).await?.text().await.unwrap_or_default();
            if ok(&text) {
                return Ok(text);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{css:?} does not show {what} after {} s; it shows {text:?}",
                    WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the field matching `css` (cleared first).
    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self.wait_css(css).await?;
        e.clear().await?;
        e.send_keys(text)
            .await
            .with_context(|| format!("Cannot type into {css:?}"))
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) -> Result<()> {
        self.wait_css(css)
            .await?
            .click()
            .await
            .with_context(|| format!("Cannot click {css:?}"))
    }

    /// Waits for a finished download called `name` and returns its text.
    pub async fn wait_download(&self, name: &str) -> Result<String> {
        let path = self.downloads.join(name);
        let deadline = Instant::now() + WAIT;
        loop {
            // Chromium writes `<name>.crdownload` and renames it when done.
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Ok(text);
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = std::fs::read_dir(&self.downloads)
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                bail!(
                    "No download {} within {} s; the directory holds {seen:?}",
                    path.display(),
                    WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG screenshot as `NN-<name>.png` in the artifacts.
    pub async fn screenshot(&mut self, name: &str) -> Result<PathBuf> {
        self.shots += 1;
        let png = self.client().screenshot().await.context("Cannot take a screenshot")?;
        let path = self.artifacts.join(format!("{:02}-{name}.png", self.shots));
        std::fs::write(&path, png).with_context(|| format!("Cannot write {}", path.display()))?;
        Ok(path)
    }

    /// The console messages since the last call (chromedriver hands each
    /// out once); they are also kept in [`Browser::log`].
    pub async fn read_log(&mut self) -> Result<Vec<LogEntry>> {
        let v = self
            .client()
            .issue_cmd(BrowserLog)
            .await
            .context("Cannot read the browser's console log")?;
        let entries: Vec<LogEntry> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| LogEntry {
                        level: e.get("level").and_then(Value::as_str).unwrap_or_default().to_string(),
                        message: e.get("message").and_then(Value::as_str).unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.log.extend(entries.iter().cloned());
        Ok(entries)
    }

    /// Ends the WebDriver session (closes Chromium) and stops chromedriver.
    pub async fn close(mut self) -> Result<()> {
        if let Some(c) = self.client.take() {
            c.close().await.context("Cannot close the browser session")?;
        }
        self.kill();
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.driver.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // Chromedriver and the Chromium it started share the group.
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fetches the TLS certificate that 127.0.0.1:`port` presents, accepted
/// only when its SHA-256 is `fingerprint` (hex, as a node prints it), and
/// saves it as PEM at `out`: the certificate to pin in [`Browser::start`]
/// for a node's console.
pub async fn save_pinned_cert(port: u16, fingerprint: &str, out: &Path) -> Result<PathBuf> {
    let pin = debvisor_api::client::parse_fingerprint(fingerprint)?;
    let mut cfg = debvisor_api::client::pinned_client_config(pin);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("Cannot connect to 127.0.0.1:{port}"))?;
    let name = rustls::pki_types::ServerName::try_from("debvisor-node")?;
    let tls = connector
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with 127.0.0.1:{port} (certificate pinned to {fingerprint}) failed"))?;
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("The server sent no certificate")?;
    let seen = debvisor_api::client::fingerprint(der.as_ref());
    anyhow::ensure!(
        seen == hex::encode(pin),
        "127.0.0.1:{port} presented certificate {seen}, not the pinned {fingerprint}"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line)?);
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    std::fs::write(out, pem).with_context(|| format!("Cannot write {}", out.display()))?;
    Ok(out.to_path_buf())
}

impl Browser {
    /// [`Browser::wait_text`] with its own timeout (a node under TCG is
    /// slower than [`WAIT`] allows).
    pub async fn wait_text_within(
        &self,
        css: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut text = String::new();
        loop {
            if let Ok(e) = self.client().find(Locator::Css(css)).await {
                text = e.text().await.unwrap_or_default();
                if ok(&text) {
                    return Ok(text);
                }
            }
            if Instant::now() >= deadline {
                let url = match self.client().current_url().await {
                    Ok(u) => u.to_string(),
                    Err(e) => format!("an unknown page ({e})"),
                };
                bail!(
                    "{css:?} on {url} does not show {what} after {} s; it shows {text:?}",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The Content Security Policy violations the browser reported since
    /// the last [`Browser::read_log`].
    pub async fn csp_violations(&mut self) -> Result<Vec<String>> {
        Ok(self
            .read_log()
            .await?
            .into_iter()
            .filter(LogEntry::is_csp_violation)
            .map(|e| e.message)
            .collect())
    }

    /// Runs `script` (which returns an array of strings or of arrays of
    /// strings) and returns its rows, each as a list of cells.
    pub async fn rows(&self, script: &str) -> Result<Vec<Vec<String>>> {
        let v = self
            .client()
            .execute(script, vec![])
            .await
            .context("Cannot run a script in the page")?;
        let cell = |c: &Value| c.as_str().unwrap_or_default().trim().to_string();
        Ok(v.as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| match r.as_array() {
                        Some(cells) => cells.iter().map(cell).collect(),
                        None => vec![cell(r)],
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csp_messages_are_recognised() {
        let e = |m: &str| LogEntry {
            level: "SEVERE".into(),
            message: m.into(),
        };
        assert!(e("https://127.0.0.1/ 0:0 Refused to execute inline script because it violates the following Content Security Policy directive: \"script-src 'self'\"").is_csp_violation());
        assert!(!e("https://127.0.0.1/favicon.ico - Failed to load resource: 404").is_csp_violation());
    }
}
