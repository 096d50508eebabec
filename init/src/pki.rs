//! The node's PKI, created on first boot and kept on the data partition:
//! a node CA, a server certificate signed by it (used by the agent's mTLS
//! endpoint and the console's HTTPS), and the admin client bundle
//! (`clients/admin.toml`, the format of [`debvisor_api::config`]) that
//! `debvisorctl` reads.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use debvisor_api::config::{ClientConfig, ConfigError, Context};
use debvisor_api::paths;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;

/// The DNS name every server certificate carries and every client bundle
/// checks (`server_name`): stable across hostname changes.
pub const SERVER_NAME: &str = "debvisor-node";
/// The admin client certificate's validity.
pub const ADMIN_CLIENT_DAYS: u32 = 365;
/// A client certificate expiring sooner than this is replaced by `ensure`.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86400);
/// The longest validity `issue_client` grants.
pub const MAX_CLIENT_DAYS: u32 = 3650;

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
    /// The CA key file holds no usable key.
    #[error("{path} holds no usable CA key; move the PKI directory away to have a new one generated")]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// A client bundle cannot be written.
    #[error("Cannot write the client bundle")]
    Bundle(#[source] ConfigError),
    /// A client name that cannot be a certificate's common name here.
    #[error("Client name {0:?} must be 1 to 64 characters among a-z, A-Z, 0-9, '.', '_' and '-'")]
    ClientName(String),
    /// A client certificate validity out of range.
    #[error("A client certificate is valid for 1 to {MAX_CLIENT_DAYS} days, not {0}")]
    ClientDays(u32),
    /// A newly issued client certificate does not verify against the CA
    /// (e.g. `ca.pem` and `ca.key` do not belong together).
    #[error(
        "The new client certificate does not verify against {path}; move the PKI directory away to have a new one generated"
    )]
    Chain {
        /// The CA certificate file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
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
    /// True when the CA and server certificate were created by this call.
    pub created: bool,
    /// True when the admin client certificate and bundle were (re)created
    /// by this call.
    pub admin_bundle_created: bool,
}

impl Pki {
    /// The PKI kept in `dir` (production: `/var/lib/debvisor/pki`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The admin client bundle (`<dir>/clients/admin.toml`).
    pub fn admin_bundle_path(&self) -> PathBuf {
        self.dir.join("clients/admin.toml")
    }

    /// [`Pki::ensure_with`] with the node's current non-loopback addresses
    /// ([`local_addresses`]) as the bundle's endpoints.
    pub fn ensure(&self, hostname: &str) -> Result<PkiState, PkiError> {
        self.ensure_with(hostname, &local_addresses())
    }

    /// Creates the CA and server certificate unless they exist, and the admin
    /// client certificate and bundle unless a bundle exists whose certificate
    /// verifies against the CA for at least [`RENEW_BEFORE`] more. The bundle
    /// names the context after `hostname` and lists `addrs` on the agent's
    /// port; an existing bundle with no endpoints gets `addrs`. Returns the
    /// server certificate's fingerprint.
    pub fn ensure_with(&self, hostname: &str, addrs: &[IpAddr]) -> Result<PkiState, PkiError> {
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
        let admin_bundle_created = self.ensure_admin(hostname, addrs)?;
        Ok(PkiState {
            server_fingerprint: debvisor_api::client::fingerprint(&der),
            created,
            admin_bundle_created,
        })
    }

    /// Keeps a valid admin bundle (adding endpoints if it has none), or
    /// writes a new one; true when written anew.
    fn ensure_admin(&self, hostname: &str, addrs: &[IpAddr]) -> Result<bool, PkiError> {
        let path = self.admin_bundle_path();
        let ca_pem = self.read_string("ca.pem")?;
        let renew_at = SystemTime::now() + RENEW_BEFORE;
        if let Ok(mut bundle) = ClientConfig::load(&path)
            && let Ok(ctx) = bundle.current()
            && verify_client(&ctx.crt, &ca_pem, renew_at).is_ok()
        {
            if ctx.endpoints.is_empty() && !addrs.is_empty() {
                let name = bundle.context.clone();
                if let Some(ctx) = bundle.contexts.get_mut(&name) {
                    ctx.endpoints = endpoints(addrs);
                }
                bundle.save(&path).map_err(PkiError::Bundle)?;
            }
            return Ok(false);
        }
        let (crt, key) = self.sign_client("admin", ADMIN_CLIENT_DAYS)?;
        let bundle = ClientConfig::single(
            context_name(hostname),
            Context {
                endpoints: endpoints(addrs),
                server_name: SERVER_NAME.to_string(),
                ca: ca_pem,
                crt,
                key,
            },
        );
        bundle.save(&path).map_err(PkiError::Bundle)?;
        Ok(true)
    }

    /// Issues a client certificate for `name` (its common name, e.g. a user
    /// name), valid for `days` from now and signed by the node CA, and
    /// returns it as a client bundle (not written anywhere). The context
    /// name and endpoints are those of the admin bundle when there is one.
    /// Requires the PKI to exist ([`Pki::ensure`]).
    pub fn issue_client(&self, name: &str, days: u32) -> Result<ClientConfig, PkiError> {
        let (crt, key) = self.sign_client(name, days)?;
        let admin = ClientConfig::load(self.admin_bundle_path()).ok();
        let (context, endpoints) = admin
            .as_ref()
            .and_then(|a| Some((a.context.clone(), a.current().ok()?.endpoints.clone())))
            .unwrap_or_else(|| (context_name(""), Vec::new()));
        Ok(ClientConfig::single(
            context,
            Context {
                endpoints,
                server_name: SERVER_NAME.to_string(),
                ca: self.read_string("ca.pem")?,
                crt,
                key,
            },
        ))
    }

    /// Signs a clientAuth certificate for `name`; returns (cert PEM, key PEM)
    /// after checking that it verifies against `ca.pem`.
    fn sign_client(&self, name: &str, days: u32) -> Result<(String, String), PkiError> {
        let name_ok = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(PkiError::ClientName(name.to_string()));
        }
        if !(1..=MAX_CLIENT_DAYS).contains(&days) {
            return Err(PkiError::ClientDays(days));
        }
        let gen_err = |what| move |source| PkiError::Generate { what, source };
        let ca_pem = self.read_string("ca.pem")?;
        let issuer = self.issuer(&ca_pem)?;
        let key = KeyPair::generate().map_err(gen_err("client key"))?;
        let mut cp = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("client certificate"))?;
        cp.distinguished_name = DistinguishedName::new();
        cp.distinguished_name.push(DnType::OrganizationName, "debvisor");
        cp.distinguished_name.push(DnType::CommonName, name);
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        cp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = rcgen::date_time_ymd(1970, 1, 1) + SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        // An hour of slack for clients whose clock is a little behind.
        cp.not_before = now - Duration::from_secs(3600);
        cp.not_after = now + Duration::from_secs(u64::from(days) * 86400);
        let crt = cp
            .signed_by(&key, &issuer)
            .map_err(gen_err("client certificate"))?
            .pem();
        verify_client(&crt, &ca_pem, SystemTime::now()).map_err(|source| PkiError::Chain {
            path: self.path("ca.pem"),
            source,
        })?;
        Ok((crt, key.serialize_pem()))
    }

    /// The node CA as an rcgen issuer: its key, and its subject rebuilt from
    /// the certificate's common name the way [`Pki::generate`] wrote it
    /// (rcgen cannot read certificates without x509-parser, which this
    /// crate does without; [`Pki::sign_client`] checks the result).
    fn issuer(&self, ca_pem: &str) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let ca_path = self.path("ca.pem");
        let der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|_| PkiError::BadPem { path: ca_path.clone() })?;
        let cn = debvisor_api::tls::common_name(&der).ok_or(PkiError::BadPem { path: ca_path })?;
        let key_path = self.path("ca.key");
        let key = KeyPair::from_pem(&self.read_string("ca.key")?).map_err(|_| PkiError::BadKey { path: key_path })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&cn);
        params.key_usages = ca_key_usages();
        Ok(Issuer::new(params, key))
    }

    /// Replaces the server certificate and key with new ones signed by the
    /// node CA, valid for `days` from now (the health check renews it when
    /// it nears expiry). The agent and the console read it at start: restart
    /// them to serve it. Returns the new fingerprint.
    pub fn renew_server(&self, hostname: &str, days: u32) -> Result<String, PkiError> {
        let ca_pem = self.read_string("ca.pem")?;
        let issuer = self.issuer(&ca_pem)?;
        let now = rcgen::date_time_ymd(1970, 1, 1) + SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let (cert, key) = sign_server(hostname, &issuer, now + Duration::from_secs(u64::from(days) * 86400))?;
        write_file(&self.path("server.key"), key.serialize_pem().as_bytes(), 0o600)?;
        let chain = format!("{}{ca_pem}", cert.pem());
        write_file(&self.path("server.pem"), chain.as_bytes(), 0o644)?;
        Ok(debvisor_api::client::fingerprint(cert.der()))
    }

    /// Replaces the admin client certificate and bundle with a new one valid
    /// for [`ADMIN_CLIENT_DAYS`], keeping the bundle's endpoints (or listing
    /// `addrs` when it has none).
    pub fn renew_admin(&self, hostname: &str, addrs: &[IpAddr]) -> Result<(), PkiError> {
        let path = self.admin_bundle_path();
        let kept = ClientConfig::load(&path)
            .ok()
            .and_then(|b| Some(b.current().ok()?.endpoints.clone()))
            .filter(|e| !e.is_empty());
        let (crt, key) = self.sign_client("admin", ADMIN_CLIENT_DAYS)?;
        let bundle = ClientConfig::single(
            context_name(hostname),
            Context {
                endpoints: kept.unwrap_or_else(|| endpoints(addrs)),
                server_name: SERVER_NAME.to_string(),
                ca: self.read_string("ca.pem")?,
                crt,
                key,
            },
        );
        bundle.save(&path).map_err(PkiError::Bundle)
    }

    fn read_string(&self, name: &str) -> Result<String, PkiError> {
        let path = self.path(name);
        std::fs::read_to_string(&path).map_err(|source| PkiError::Io { path, source })
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
        ca.key_usages = ca_key_usages();
        ca.not_after = rcgen::date_time_ymd(2046, 1, 1);
        let ca_cert = ca.self_signed(&ca_key).map_err(gen_err("CA certificate"))?;
        let issuer = Issuer::new(ca, &ca_key);

        let (cert, key) = sign_server(hostname, &issuer, rcgen::date_time_ymd(2036, 1, 1))?;

        // Keys first, certificates last: `ensure` looks for the certificates.
        write_file(&self.path("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&self.path("server.key"), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&self.path("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;
        let chain = format!("{}{}", cert.pem(), ca_cert.pem());
        write_file(&self.path("server.pem"), chain.as_bytes(), 0o644)?;
        Ok(())
    }
}

/// Signs a serverAuth certificate for `hostname`, localhost, [`SERVER_NAME`]
/// and the loopback addresses, valid until `not_after`.
fn sign_server<S: rcgen::SigningKey>(
    hostname: &str,
    issuer: &Issuer<'_, S>,
    not_after: time::OffsetDateTime,
) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
    let gen_err = |what| move |source| PkiError::Generate { what, source };
    let key = KeyPair::generate().map_err(gen_err("server key"))?;
    let mut names = Vec::new();
    for name in [hostname, "localhost", SERVER_NAME] {
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    let mut sp = CertificateParams::new(names).map_err(gen_err("server certificate"))?;
    sp.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    sp.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    sp.distinguished_name = dn(hostname);
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    sp.not_after = not_after;
    let cert = sp.signed_by(&key, issuer).map_err(gen_err("server certificate"))?;
    Ok((cert, key))
}

fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
}

/// The bundle's context name: the hostname, or "debvisor" without one.
fn context_name(hostname: &str) -> String {
    match hostname.trim() {
        "" => "debvisor".to_string(),
        h => h.to_string(),
    }
}

fn endpoints(addrs: &[IpAddr]) -> Vec<String> {
    addrs
        .iter()
        .map(|ip| SocketAddr::new(*ip, paths::AGENT_TLS_PORT).to_string())
        .collect()
}

/// Checks that the client certificate (chain) in `crt_pem` verifies against
/// the CA in `ca_pem` at time `at`, for client authentication: exactly what
/// the agent's TLS endpoint will check.
pub fn verify_client(crt_pem: &str, ca_pem: &str, at: SystemTime) -> Result<(), rustls::Error> {
    let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding);
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(CertificateDer::pem_slice_iter(ca_pem.as_bytes()).filter_map(Result::ok));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(crt_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad())?;
    let (leaf, intermediates) = chain.split_first().ok_or_else(bad)?;
    let now = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
    verifier.verify_client_cert(leaf, intermediates, now).map(|_| ())
}

/// The node's non-loopback addresses now: IPv4 from `/proc/net/fib_trie`,
/// then IPv6 from `/proc/net/if_inet6` (link-local ones left out, as they
/// need a zone). Empty when none is configured yet or `/proc` is missing.
pub fn local_addresses() -> Vec<IpAddr> {
    let read = |p| std::fs::read_to_string(p).unwrap_or_default();
    let v4 = parse_fib_trie(&read("/proc/net/fib_trie")).into_iter().map(IpAddr::V4);
    let v6 = parse_if_inet6(&read("/proc/net/if_inet6")).into_iter().map(IpAddr::V6);
    v4.chain(v6).collect()
}

/// Local IPv4 addresses: a `|-- ADDR` line followed by `/32 host LOCAL`.
fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last = None;
    for line in text.lines().map(str::trim) {
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.parse::<Ipv4Addr>().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(ip) = last.take()
            && !ip.is_loopback()
            && !ip.is_unspecified()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// Global IPv6 addresses: the first column is the address in 32 hex digits.
fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(hex) = line.split_whitespace().next().filter(|h| h.len() == 32) else {
            continue;
        };
        let Ok(bits) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        let ip = Ipv6Addr::from(bits);
        if !ip.is_loopback() && !ip.is_unspecified() && !ip.is_unicast_link_local() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
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
#[path = "pki_tests.rs"]
mod tests;
