//! The node's PKI, created on first boot and kept on the data partition:
//! a node CA and a server certificate signed by it, used by the agent's TLS
//! endpoint and the console's HTTPS.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A PKI step that failed, with the file involved.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("Cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("Cannot generate the {what}")]
    Generate {
        /// Which certificate.
        what: &'static str,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// An existing certificate file holds no PEM certificate.
    #[error("{path} holds no PEM certificate; move it away to have a new one generated")]
    BadPem {
        /// The file.
        path: PathBuf,
    },
}

/// The PKI files in one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

/// What [`Pki::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiState {
    /// SHA-256 of the server certificate's DER, lower-case hex.
    pub server_fingerprint: String,
    /// True when the certificates were created by this call.
    pub created: bool,
}

impl Pki {
    /// The PKI kept in `dir` (production: `/var/lib/debvisor/pki`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the CA and server certificate unless both exist; returns the
    /// server certificate's fingerprint.
    pub fn ensure(&self, hostname: &str) -> Result<PkiState, PkiError> {
        let server = self.path("server.pem");
        let created = if server.exists() && self.path("server.key").exists() && self.path("ca.pem").exists() {
            false
        } else {
            self.generate(hostname)?;
            true
        };
        let pem = std::fs::read(&server).map_err(|source| PkiError::Io {
            path: server.clone(),
            source,
        })?;
        let der = CertificateDer::from_pem_slice(&pem).map_err(|_| PkiError::BadPem { path: server })?;
        Ok(PkiState {
            server_fingerprint: debvisor_api::client::fingerprint(&der),
            created,
        })
    }

    fn generate(&self, hostname: &str) -> Result<(), PkiError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| PkiError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let gen_err = |what| move |source| PkiError::Generate { what, source };

        let ca_key = KeyPair::generate().map_err(gen_err("CA key"))?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("CA certificate"))?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name = dn(&format!("DebVisor node CA {hostname}"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_after = rcgen::date_time_ymd(2046, 1, 1);
        let ca_cert = ca.self_signed(&ca_key).map_err(gen_err("CA certificate"))?;
        let issuer = Issuer::new(ca, &ca_key);

        let key = KeyPair::generate().map_err(gen_err("server key"))?;
        let mut names = vec![
            hostname.to_string(),
            "localhost".to_string(),
            "debvisor-node".to_string(),
        ];
        names.dedup();
        let mut sp = CertificateParams::new(names).map_err(gen_err("server certificate"))?;
        sp.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        sp.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        sp.distinguished_name = dn(hostname);
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        sp.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = sp.signed_by(&key, &issuer).map_err(gen_err("server certificate"))?;

        // Keys first, certificates last: `ensure` looks for the certificates.
        write_file(&self.path("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&self.path("server.key"), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&self.path("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;
        let chain = format!("{}{}", cert.pem(), ca_cert.pem());
        write_file(&self.path("server.pem"), chain.as_bytes(), 0o644)?;
        Ok(())
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "DebVisor");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes a file atomically (temp file, fsync, rename) with `mode`.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path().join("pki"));
        let a = pki.ensure("node1").unwrap();
        assert!(a.created);
        assert_eq!(a.server_fingerprint.len(), 64);
        let b = pki.ensure("node1").unwrap();
        assert!(!b.created);
        assert_eq!(a.server_fingerprint, b.server_fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("pki/server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let chain = std::fs::read_to_string(dir.path().join("pki/server.pem")).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    }

    #[test]
    fn garbage_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "server.key", "server.pem"] {
            std::fs::write(dir.path().join(f), "garbage").unwrap();
        }
        let err = Pki::new(dir.path()).ensure("n").unwrap_err().to_string();
        assert!(err.contains("server.pem"), "{err}");
    }
}
