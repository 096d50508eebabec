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
mod tests {
    use super::*;

    use rustls::client::danger::ServerCertVerifier;
    use std::os::unix::fs::PermissionsExt;

    const ADDRS: [IpAddr; 2] = [
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    ];

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The DER of the first certificate in a PEM string.
    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    // DER of the extended key usage OIDs id-kp-serverAuth and id-kp-clientAuth.
    const SERVER_AUTH: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    const CLIENT_AUTH: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

    /// Verifies the server chain for `name` as a client with the bundle's CA would.
    fn verify_server(chain_pem: &str, ca_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(CertificateDer::pem_slice_iter(ca_pem.as_bytes()).map(Result::unwrap));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let chain: Vec<_> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn writes_the_admin_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path().join("pki"));
        let state = pki.ensure_with("node1", &ADDRS).unwrap();
        assert!(state.created && state.admin_bundle_created);

        let path = dir.path().join("pki/clients/admin.toml");
        assert_eq!(pki.admin_bundle_path(), path);
        assert_eq!(mode(&path), 0o600);
        let bundle = ClientConfig::load(&path).unwrap();
        bundle.validate().unwrap();
        assert_eq!(bundle.context, "node1");
        let ctx = bundle.current().unwrap();
        assert_eq!(ctx.endpoints, ["192.0.2.10:7443", "[2001:db8::1]:7443"]);
        assert_eq!(ctx.server_name, SERVER_NAME);
        let ca_pem = std::fs::read_to_string(dir.path().join("pki/ca.pem")).unwrap();
        assert_eq!(ctx.ca, ca_pem);

        // The client certificate: admin, clientAuth only, chains to the CA,
        // good for a year but not two.
        let crt = der(&ctx.crt);
        assert_eq!(debvisor_api::tls::common_name(&crt).as_deref(), Some("admin"));
        assert!(contains(&crt, CLIENT_AUTH) && !contains(&crt, SERVER_AUTH));
        verify_client(&ctx.crt, &ca_pem, SystemTime::now()).unwrap();
        verify_client(&ctx.crt, &ca_pem, SystemTime::now() + Duration::from_secs(364 * 86400)).unwrap();
        verify_client(&ctx.crt, &ca_pem, SystemTime::now() + Duration::from_secs(366 * 86400)).unwrap_err();

        // The server certificate: serverAuth, the stable name and the hostname.
        let chain = std::fs::read_to_string(dir.path().join("pki/server.pem")).unwrap();
        assert!(contains(&der(&chain), SERVER_AUTH) && !contains(&der(&chain), CLIENT_AUTH));
        for name in [SERVER_NAME, "node1", "localhost", "127.0.0.1"] {
            verify_server(&chain, &ca_pem, name).unwrap();
        }
        assert!(verify_server(&chain, &ca_pem, "other").is_err());
        // The client certificate is no server certificate, nor the reverse.
        assert!(verify_client(&chain, &ca_pem, SystemTime::now()).is_err());
    }

    #[tokio::test]
    async fn bundle_connects_to_the_node_server() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.ensure_with("node1", &ADDRS).unwrap();
        let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
        let server =
            debvisor_api::tls::server_config(&read("server.pem"), &read("server.key"), &read("ca.pem")).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            let cn = debvisor_api::tls::common_name(&tls.get_ref().1.peer_certificates().unwrap()[0]);
            (cn, tls)
        });
        let bundle = ClientConfig::load(pki.admin_bundle_path()).unwrap();
        let ctx = bundle
            .current()
            .unwrap()
            .clone()
            .with_endpoint_override(&addr.to_string())
            .unwrap();
        let _channel = debvisor_api::tls::connect_mtls(&ctx).await.unwrap();
        let (cn, _tls) = served.await.unwrap();
        assert_eq!(cn.as_deref(), Some("admin"));
    }

    #[test]
    fn second_run_keeps_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.ensure_with("node1", &ADDRS).unwrap();
        let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
        let before: Vec<_> = ["ca.pem", "ca.key", "server.pem", "server.key", "clients/admin.toml"]
            .map(read)
            .into();
        // Another hostname and no addresses: nothing changes.
        let state = pki.ensure_with("renamed", &[]).unwrap();
        assert!(!state.created && !state.admin_bundle_created);
        let after: Vec<_> = ["ca.pem", "ca.key", "server.pem", "server.key", "clients/admin.toml"]
            .map(read)
            .into();
        assert_eq!(before, after);
    }

    #[test]
    fn bundle_without_endpoints_gets_them_later() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        assert!(pki.ensure_with("node1", &[]).unwrap().admin_bundle_created);
        let first = ClientConfig::load(pki.admin_bundle_path()).unwrap();
        assert!(first.current().unwrap().endpoints.is_empty());
        assert!(!pki.ensure_with("node1", &ADDRS[..1]).unwrap().admin_bundle_created);
        let second = ClientConfig::load(pki.admin_bundle_path()).unwrap();
        let ctx = second.current().unwrap();
        assert_eq!(ctx.endpoints, ["192.0.2.10:7443"]);
        assert_eq!(ctx.crt, first.current().unwrap().crt);
    }

    #[test]
    fn missing_or_foreign_bundle_is_replaced_not_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.ensure_with("node1", &ADDRS).unwrap();
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();

        std::fs::remove_file(pki.admin_bundle_path()).unwrap();
        assert!(pki.ensure_with("node1", &ADDRS).unwrap().admin_bundle_created);

        // A bundle from another node: its certificate does not verify here.
        let other = tempfile::tempdir().unwrap();
        Pki::new(other.path()).ensure_with("node2", &ADDRS).unwrap();
        std::fs::copy(other.path().join("clients/admin.toml"), pki.admin_bundle_path()).unwrap();
        assert!(pki.ensure_with("node1", &ADDRS).unwrap().admin_bundle_created);
        let ctx = ClientConfig::load(pki.admin_bundle_path()).unwrap();
        assert_eq!(ctx.context, "node1");

        std::fs::write(pki.admin_bundle_path(), "garbage").unwrap();
        assert!(pki.ensure_with("node1", &ADDRS).unwrap().admin_bundle_created);
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
    }

    #[test]
    fn expiring_admin_certificate_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.ensure_with("node1", &ADDRS).unwrap();
        // Replace the admin bundle with one whose certificate ends in 10 days.
        let short = pki.issue_client("admin", 10).unwrap();
        short.save(pki.admin_bundle_path()).unwrap();
        assert!(pki.ensure_with("node1", &ADDRS).unwrap().admin_bundle_created);
        let renewed = ClientConfig::load(pki.admin_bundle_path()).unwrap();
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let in_60_days = SystemTime::now() + Duration::from_secs(60 * 86400);
        verify_client(&renewed.current().unwrap().crt, &ca_pem, in_60_days).unwrap();
    }

    #[test]
    fn issues_further_clients_after_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        // Issue after the hostname changed: the CA subject comes from ca.pem.
        pki.ensure_with("old-name", &ADDRS).unwrap();
        pki.ensure_with("new-name", &ADDRS).unwrap();
        let bundle = pki.issue_client("alice", 7).unwrap();
        bundle.validate().unwrap();
        assert_eq!(bundle.context, "old-name");
        let ctx = bundle.current().unwrap();
        assert_eq!(ctx.endpoints.len(), 2);
        assert_eq!(debvisor_api::tls::common_name(&der(&ctx.crt)).as_deref(), Some("alice"));
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        verify_client(&ctx.crt, &ca_pem, SystemTime::now() + Duration::from_secs(6 * 86400)).unwrap();
        verify_client(&ctx.crt, &ca_pem, SystemTime::now() + Duration::from_secs(8 * 86400)).unwrap_err();

        assert!(matches!(pki.issue_client("", 7), Err(PkiError::ClientName(_))));
        assert!(matches!(pki.issue_client("a b", 7), Err(PkiError::ClientName(_))));
        assert!(matches!(pki.issue_client("bob", 0), Err(PkiError::ClientDays(0))));
        assert!(matches!(pki.issue_client("bob", 5000), Err(PkiError::ClientDays(5000))));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            Pki::new(empty.path()).issue_client("bob", 7),
            Err(PkiError::Io { .. })
        ));
    }

    #[test]
    fn empty_hostname_still_gives_a_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.ensure_with("", &[]).unwrap();
        assert_eq!(ClientConfig::load(pki.admin_bundle_path()).unwrap().context, "debvisor");
    }

    #[test]
    fn parses_proc_addresses() {
        let fib = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.2.0/24 2 0 2
        |-- 10.0.2.0
           /24 link UNICAST
        |-- 10.0.2.15
           /32 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
        |-- 10.0.2.15
           /32 host LOCAL
        |-- 10.0.2.255
           /32 link BROADCAST
        |-- 192.168.1.5
           /32 host LOCAL
";
        assert_eq!(
            parse_fib_trie(fib),
            [Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(192, 168, 1, 5)]
        );
        let inet6 = "00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000505400fffe123456 02 40 20 80     eth0
20010db8000000000000000000000001 02 40 00 00     eth0
bad line
";
        assert_eq!(parse_if_inet6(inet6), ["2001:db8::1".parse::<Ipv6Addr>().unwrap()]);
        // The real files parse (whatever this machine has).
        let _ = local_addresses();
    }

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
