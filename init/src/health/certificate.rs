//! `certificate/server` and `certificate/admin`: expiry of the node's server
//! certificate and of the admin client certificate, renewed through
//! [`crate::pki::Pki`] when under `cert_renew_days`.

use std::path::PathBuf;

use tokio::time::Instant;
use x509_parser::pem::Pem;

use super::{Check, Outcome};
use crate::pki::{ADMIN_CLIENT_DAYS, Pki};

/// The renewed server certificate's validity.
pub const SERVER_RENEW_DAYS: u32 = 3650;

/// Which certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// `<pki>/server.pem`, the agent's and the console's.
    Server,
    /// The admin client bundle's certificate.
    Admin,
}

/// Seconds since the epoch at which the first certificate of `pem` expires,
/// and its subject.
pub fn not_after(pem: &str) -> Result<(i64, String), String> {
    let pem = Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .ok_or("no PEM certificate")?
        .map_err(|e| format!("bad PEM: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| format!("bad certificate: {e}"))?;
    Ok((cert.validity().not_after.timestamp(), cert.subject().to_string()))
}

/// A certificate expiry check.
#[derive(Debug, Clone)]
pub struct CertificateCheck {
    which: Which,
    pki: PathBuf,
    hostname: String,
    renew_days: u32,
}

impl CertificateCheck {
    /// Checks `which` in the PKI directory `pki`, renewing it (for
    /// `hostname`) under `renew_days` days before expiry.
    pub fn new(which: Which, pki: impl Into<PathBuf>, hostname: &str, renew_days: u32) -> Self {
        Self {
            which,
            pki: pki.into(),
            hostname: hostname.to_string(),
            renew_days,
        }
    }

    fn read(&self) -> Result<String, String> {
        let pki = Pki::new(&self.pki);
        match self.which {
            Which::Server => {
                let path = self.pki.join("server.pem");
                std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
            }
            Which::Admin => {
                let path = pki.admin_bundle_path();
                let bundle = debvisor_api::config::ClientConfig::load(&path).map_err(|e| format!("{e:#}"))?;
                Ok(bundle.current().map_err(|e| format!("{e:#}"))?.crt.clone())
            }
        }
    }

    fn renew(&self) -> Result<(), String> {
        let pki = Pki::new(&self.pki);
        let r = match self.which {
            Which::Server => pki.renew_server(&self.hostname, SERVER_RENEW_DAYS).map(drop),
            Which::Admin => pki.renew_admin(&self.hostname, &crate::pki::local_addresses()),
        };
        r.map_err(|e| format!("{e}"))
    }
}

#[async_trait::async_trait]
impl Check for CertificateCheck {
    fn name(&self) -> &str {
        match self.which {
            Which::Server => "certificate/server",
            Which::Admin => "certificate/admin",
        }
    }
    fn kind(&self) -> &'static str {
        "certificate"
    }
    fn required(&self) -> bool {
        self.which == Which::Server
    }
    async fn run(&self, _deadline: Instant) -> Outcome {
        let (expiry, subject) = match self.read().and_then(|pem| not_after(&pem)) {
            Ok(v) => v,
            Err(e) => return Outcome::fail(e),
        };
        let now = super::engine::now_unix_ms() / 1000;
        let days = (expiry - now).div_euclid(86400);
        if expiry <= now {
            return Outcome::fail(format!("{subject} expired {} days ago", -days));
        }
        if days >= i64::from(self.renew_days) {
            return Outcome::pass(format!("{subject} expires in {days} days"));
        }
        let what = match self.which {
            Which::Server => {
                format!("renewed for {SERVER_RENEW_DAYS} days; restart the agent and the console to serve it")
            }
            Which::Admin => format!("renewed for {ADMIN_CLIENT_DAYS} days; fetch the new admin bundle"),
        };
        match self.renew() {
            Ok(()) => {
                tracing::warn!(check = self.name(), "{subject} expired in {days} days: {what}");
                Outcome::warn(format!(
                    "{subject} expires in {days} days (limit {}): {what}",
                    self.renew_days
                ))
            }
            Err(e) => Outcome::warn(format!("{subject} expires in {days} days and cannot be renewed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Status;

    #[tokio::test]
    async fn renews_under_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.ensure_with("node1", &[]).unwrap();
        let server = CertificateCheck::new(Which::Server, dir.path(), "node1", 30);
        let out = server.run(Instant::now()).await;
        assert_eq!(out.status, Status::Pass, "{out:?}");
        assert!(out.message.contains("CN=node1"), "{out:?}");
        let admin = CertificateCheck::new(Which::Admin, dir.path(), "node1", 30);
        assert_eq!(admin.run(Instant::now()).await.status, Status::Pass);

        // A 400-day threshold makes both certificates due: renewed, WARN.
        let before = std::fs::read_to_string(dir.path().join("server.pem")).unwrap();
        let due = CertificateCheck::new(Which::Server, dir.path(), "node1", 365 * 20);
        let out = due.run(Instant::now()).await;
        assert_eq!(out.status, Status::Warn, "{out:?}");
        let after = std::fs::read_to_string(dir.path().join("server.pem")).unwrap();
        assert_ne!(before, after);
        let (expiry, _) = not_after(&after).unwrap();
        let days = (expiry - crate::health::engine::now_unix_ms() / 1000) / 86400;
        assert!((3640..=3650).contains(&days), "{days}");
        let admin_due = CertificateCheck::new(Which::Admin, dir.path(), "node1", 400);
        assert_eq!(admin_due.run(Instant::now()).await.status, Status::Warn);
        // The renewed admin certificate is valid for a year: passes at 30.
        assert_eq!(admin.run(Instant::now()).await.status, Status::Pass);

        std::fs::remove_file(dir.path().join("server.pem")).unwrap();
        let out = server.run(Instant::now()).await;
        assert!(
            out.status == Status::Fail && out.message.starts_with("cannot read"),
            "{out:?}"
        );
    }
}
