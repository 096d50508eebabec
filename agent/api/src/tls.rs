//! Mutual TLS between `debvisorctl` (or any client) and the agent's TCP
//! endpoint: the server requires a client certificate that chains to the
//! node CA, the client trusts only that CA and checks the server's name.
//!
//! Versions: rustls implements TLS 1.2 and 1.3 only (1.0 and 1.1 are not
//! implemented at all), and both sides here allow exactly those two.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncBufRead, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, Channel, Endpoint, Identity, ServerTlsConfig};

use crate::config::Context;

/// How long a TCP connection attempt to one endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the TLS handshake (including the server's verdict on the client
/// certificate) may take once connected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The protocol versions offered and accepted: TLS 1.3 and 1.2.
pub const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Server-side credentials that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM value holds no certificate.
    #[error("The {what} holds no PEM certificate")]
    NoCertificate {
        /// Which value.
        what: &'static str,
    },
    /// The key PEM holds no private key.
    #[error("The server key holds no PEM private key")]
    NoKey,
    /// The certificate chain and key do not make an identity (e.g. the key
    /// does not match the certificate).
    #[error("The server certificate and key are not usable together")]
    Identity(#[source] rustls::Error),
    /// The client CA cannot anchor a client certificate verifier.
    #[error("The client CA certificate is not usable")]
    ClientCa(#[source] rustls::server::VerifierBuilderError),
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn pem_certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::NoCertificate { what })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

fn roots(certs: Vec<CertificateDer<'static>>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certs);
    roots
}

/// Debian's bundle of trusted CA certificates (package ca-certificates).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A rustls client configuration for HTTPS clients of public servers (e.g.
/// the agent fetching an update bundle): TLS 1.3 and 1.2, ring, trusting the
/// certificates of `ca_bundle` (normally [`SYSTEM_CA_BUNDLE`]); a missing or
/// unreadable bundle leaves no trusted root, so every HTTPS server is then
/// refused at the handshake rather than trusted.
pub fn public_client_config(ca_bundle: &std::path::Path) -> rustls::ClientConfig {
    let certs = CertificateDer::pem_file_iter(ca_bundle)
        .map(|it| it.flatten().collect())
        .unwrap_or_default();
    rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .expect("ring supports TLS 1.3 and 1.2")
        .with_root_certificates(roots(certs))
        .with_no_client_auth()
}

/// A rustls server configuration for the agent's mTLS endpoint: the server
/// presents `cert_pem` (leaf first, chain after) with `key_pem`, and every
/// client must present a certificate that chains to `client_ca_pem`, is
/// within its validity period and carries the clientAuth usage. TLS 1.3 and
/// 1.2 only, ALPN h2, ring.
///
/// For a server that needs more control than tonic's [`ServerTlsConfig`]
/// offers (e.g. the console's HTTPS listener).
pub fn server_config(cert_pem: &[u8], key_pem: &[u8], client_ca_pem: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    let provider = ring_provider();
    let chain = pem_certs(cert_pem, "server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey)?;
    let ca = pem_certs(client_ca_pem, "client CA")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)), provider.clone())
        .build()
        .map_err(TlsError::ClientCa)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Identity)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::Identity)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A tonic server TLS configuration that requires a client certificate
/// chaining to `client_ca_pem` (`client_auth_optional(false)`): a client
/// without one, with one from another CA, or with an expired one is refused
/// during the handshake, before any request reaches a service.
///
/// The credentials are checked here (by building the equivalent
/// [`server_config`]) so that a bad file fails at start-up with a clear
/// error rather than in `Server::tls_config`.
///
/// Versions: tonic builds its rustls `ServerConfig` with rustls' defaults,
/// which are TLS 1.3 and 1.2 (the workspace enables rustls' `tls12`
/// feature); rustls does not implement TLS 1.0 or 1.1 at all, so nothing
/// older can be negotiated. Tonic uses the process-default crypto provider,
/// which is ring because ring is the only provider compiled in.
pub fn server_tls(cert_pem: &[u8], key_pem: &[u8], client_ca_pem: &[u8]) -> Result<ServerTlsConfig, TlsError> {
    server_config(cert_pem, key_pem, client_ca_pem)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(client_ca_pem))
        .client_auth_optional(false)
        .timeout(HANDSHAKE_TIMEOUT))
}

/// The subject common name of the verified client certificate of a request
/// served over tonic's TLS on a TCP listener (e.g. `"admin"`), or `None`
/// (Unix socket, no certificate, no common name).
pub fn client_identity<T>(req: &tonic::Request<T>) -> Option<String> {
    common_name(req.peer_certs()?.first()?)
}

/// Like [`client_identity`], from the extensions of an `http::Request` (for
/// a tower layer in front of the gRPC services).
pub fn client_identity_from_extensions(ext: &http::Extensions) -> Option<String> {
    let certs = ext.get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    common_name(certs.first()?)
}

/// The subject common name of a DER certificate, if it has one that is a
/// UTF8String, PrintableString or IA5String.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    name_common_name(cert.subject())
}

/// Reads the CN from the contents of an X.501 Name (a SEQUENCE OF SET OF
/// AttributeTypeAndValue, outer SEQUENCE already removed).
fn name_common_name(mut rdns: &[u8]) -> Option<String> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    const UTF8: u8 = 0x0c;
    const PRINTABLE: u8 = 0x13;
    const IA5: u8 = 0x16;
    while !rdns.is_empty() {
        let (0x31, mut set, rest) = der_tlv(rdns)? else {
            return None;
        };
        rdns = rest;
        while !set.is_empty() {
            let (0x30, atv, rest) = der_tlv(set)? else {
                return None;
            };
            set = rest;
            let (0x06, oid, value) = der_tlv(atv)? else {
                return None;
            };
            let (tag, value, _) = der_tlv(value)?;
            if oid == CN_OID && matches!(tag, UTF8 | PRINTABLE | IA5) {
                return String::from_utf8(value.to_vec()).ok();
            }
        }
    }
    None
}

/// Splits one DER TLV (single-byte tag) off `input`: (tag, value, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let (bytes, rest) = input.split_at(n);
        input = rest;
        bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    (input.len() >= len).then(|| (tag, &input[..len], &input[len..]))
}

/// Why an mTLS connection to an agent could not be made. The messages say
/// what to do next.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    /// The context's CA, certificate or key does not parse.
    #[error("The client bundle's {what} does not parse: fetch a new bundle from the node")]
    Bundle {
        /// `ca`, `crt` or `key`.
        what: &'static str,
    },
    /// The bundle parses but rustls refuses it (e.g. key and certificate do
    /// not match).
    #[error("The client bundle is not usable: fetch a new bundle from the node")]
    ClientConfig(#[source] rustls::Error),
    /// `server_name` is not a DNS name or IP address.
    #[error("server_name {0:?} is not a DNS name or IP address")]
    ServerName(String),
    /// The context lists no endpoints.
    #[error("The context has no endpoints: add one (host:port) or pass --endpoint")]
    NoEndpoints,
    /// No endpoint accepted a TCP connection. Each attempt's error is listed
    /// in the message (there may be several, so none is the `source`).
    #[error("Cannot reach {}: is the node up and the port open? Pass --endpoint to try another address", list(.attempts))]
    Unreachable {
        /// Each endpoint tried and why it failed.
        attempts: Vec<(String, std::io::Error)>,
    },
    /// The server's certificate is not signed by the bundle's CA.
    #[error(
        "The server at {endpoint} is not signed by the bundle's CA: the bundle belongs to another node or cluster (or the node's PKI was recreated); fetch the bundle from this node"
    )]
    UnknownServer {
        /// The endpoint.
        endpoint: String,
        /// The verification error.
        #[source]
        source: rustls::Error,
    },
    /// The server's certificate does not carry `server_name`.
    #[error("The server certificate at {endpoint} is not valid for {server_name:?}: fix server_name in the config")]
    WrongServerName {
        /// The endpoint.
        endpoint: String,
        /// The name checked.
        server_name: String,
        /// The verification error.
        #[source]
        source: rustls::Error,
    },
    /// The server's certificate is refused for another reason (expired, bad
    /// encoding...).
    #[error("The server certificate at {endpoint} is refused")]
    ServerCertificate {
        /// The endpoint.
        endpoint: String,
        /// The verification error.
        #[source]
        source: rustls::Error,
    },
    /// The server refused the client certificate.
    #[error(
        "The server at {endpoint} refused the client certificate: it may be expired or issued by another CA; fetch a new client bundle from the node"
    )]
    ClientRefused {
        /// The endpoint.
        endpoint: String,
        /// The alert the server sent.
        #[source]
        source: rustls::Error,
    },
    /// The TLS handshake failed for another reason (timeout, protocol
    /// error, connection closed).
    #[error("TLS handshake with {endpoint} failed")]
    Handshake {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS succeeded but the HTTP/2 channel could not be set up.
    #[error("Cannot open a gRPC channel to {endpoint}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

fn list(attempts: &[(String, std::io::Error)]) -> String {
    attempts
        .iter()
        .map(|(e, err)| format!("{e} ({err})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rustls client configuration for `ctx`: ring, TLS 1.3 and 1.2, ALPN h2,
/// the bundle's CA as the only root, the bundle's certificate and key for
/// client authentication.
pub fn client_config(ctx: &Context) -> Result<rustls::ClientConfig, MtlsError> {
    client_config_with_versions(ctx, PROTOCOL_VERSIONS)
}

/// [`client_config`] restricted to `versions` (e.g. TLS 1.2 only, to test a
/// server).
pub fn client_config_with_versions(
    ctx: &Context,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<rustls::ClientConfig, MtlsError> {
    let bundle = |what| MtlsError::Bundle { what };
    let ca = pem_certs(ctx.ca.as_bytes(), "ca").map_err(|_| bundle("ca"))?;
    let chain = pem_certs(ctx.crt.as_bytes(), "crt").map_err(|_| bundle("crt"))?;
    let key = PrivateKeyDer::from_pem_slice(ctx.key.as_bytes()).map_err(|_| bundle("key"))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(versions)
        .map_err(MtlsError::ClientConfig)?
        .with_root_certificates(roots(ca))
        .with_client_auth_cert(chain, key)
        .map_err(MtlsError::ClientConfig)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Opens a gRPC channel to the agent of `ctx` over mutual TLS, trying each
/// endpoint in order.
///
/// An endpoint that cannot be reached (refused, no route, no answer within
/// [`CONNECT_TIMEOUT`]) is skipped; the first endpoint that answers decides:
/// a handshake refusal is returned at once, since the node's other addresses
/// would give the same answer. With TLS 1.3 the server judges the client
/// certificate after the client considers the handshake done, so this waits
/// for the server's first message (its session tickets or HTTP/2 settings)
/// to report a refused client certificate here rather than at the first
/// request.
pub async fn connect_mtls(ctx: &Context) -> Result<Channel, MtlsError> {
    connect_mtls_with(ctx, client_config(ctx)?).await
}

/// [`connect_mtls`] with a given rustls client configuration (which should
/// offer ALPN h2).
pub async fn connect_mtls_with(ctx: &Context, config: rustls::ClientConfig) -> Result<Channel, MtlsError> {
    let name =
        ServerName::try_from(ctx.server_name.clone()).map_err(|_| MtlsError::ServerName(ctx.server_name.clone()))?;
    if ctx.endpoints.is_empty() {
        return Err(MtlsError::NoEndpoints);
    }
    let dialer = Dialer {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name,
    };
    let mut attempts = Vec::new();
    for endpoint in &ctx.endpoints {
        let stream = match dialer.dial(endpoint).await {
            Ok(s) => s,
            Err(DialError::Unreachable(e)) => {
                attempts.push((endpoint.clone(), e));
                continue;
            }
            Err(DialError::Refused(e)) => return Err(e),
        };
        return channel(dialer.clone(), endpoint, stream).await;
    }
    Err(MtlsError::Unreachable { attempts })
}

type Stream = BufReader<TlsStream<TcpStream>>;

/// Hands the already-established `first` stream to tonic, and dials again
/// on reconnection.
async fn channel(dialer: Dialer, endpoint: &str, first: Stream) -> Result<Channel, MtlsError> {
    let transport = |source| MtlsError::Transport {
        endpoint: endpoint.to_string(),
        source,
    };
    let first = Arc::new(Mutex::new(Some(first)));
    let target = endpoint.to_string();
    Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(transport)?
        .connect_with_connector(tower::service_fn(move |_| {
            let (dialer, target, first) = (dialer.clone(), target.clone(), first.clone());
            async move {
                let ready = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                let stream = match ready {
                    Some(s) => s,
                    None => dialer.dial(&target).await.map_err(|e| match e {
                        DialError::Unreachable(e) => e,
                        DialError::Refused(e) => std::io::Error::other(e),
                    })?,
                };
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(transport)
}

enum DialError {
    /// No TCP connection: try the next endpoint.
    Unreachable(std::io::Error),
    /// A server answered and the TLS handshake failed.
    Refused(MtlsError),
}

#[derive(Clone)]
struct Dialer {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl Dialer {
    async fn dial(&self, endpoint: &str) -> Result<Stream, DialError> {
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(DialError::Unreachable(e)),
            Err(_) => {
                return Err(DialError::Unreachable(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                )));
            }
        };
        let _ = tcp.set_nodelay(true);
        let handshake = async {
            let tls = self.connector.connect(self.name.clone(), tcp).await?;
            let mut stream = BufReader::new(tls);
            server_verdict(&mut stream).await?;
            Ok::<_, std::io::Error>(stream)
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(DialError::Refused(self.classify(endpoint, e))),
            Err(_) => Err(DialError::Refused(MtlsError::Handshake {
                endpoint: endpoint.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no TLS answer within {} s", HANDSHAKE_TIMEOUT.as_secs()),
                ),
            })),
        }
    }

    fn classify(&self, endpoint: &str, e: std::io::Error) -> MtlsError {
        let endpoint = endpoint.to_string();
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()).cloned() else {
            return MtlsError::Handshake { endpoint, source: e };
        };
        match &tls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                MtlsError::UnknownServer { endpoint, source: tls }
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => MtlsError::WrongServerName {
                endpoint,
                server_name: self.name.to_str().into_owned(),
                source: tls,
            },
            rustls::Error::InvalidCertificate(_) => MtlsError::ServerCertificate { endpoint, source: tls },
            rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
                | AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateRevoked
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied
                | AlertDescription::DecryptError,
            ) => MtlsError::ClientRefused { endpoint, source: tls },
            _ => MtlsError::Handshake { endpoint, source: e },
        }
    }
}

/// Waits until the server shows that it accepted the client certificate:
/// with TLS 1.2 the handshake itself proves it; with TLS 1.3 the server's
/// verdict comes after, as an alert or as its first message (session
/// tickets, HTTP/2 settings). Buffered data stays in the reader.
async fn server_verdict(stream: &mut Stream) -> std::io::Result<()> {
    if stream.get_ref().get_ref().1.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Ok(());
    }
    poll_fn(|cx| {
        let eof = match Pin::new(&mut *stream).poll_fill_buf(cx) {
            Poll::Ready(Ok(buf)) => buf.is_empty(),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                // Everything received so far is processed: tickets count.
                return if stream.get_ref().get_ref().1.tls13_tickets_received() > 0 {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
        };
        Poll::Ready(if eof {
            Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection after the handshake",
            ))
        } else {
            Ok(())
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "debvisor");
        if let Some(cn) = cn {
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_the_common_name() {
        assert_eq!(common_name(&cert(Some("admin"))).as_deref(), Some("admin"));
        assert_eq!(common_name(&cert(Some("ünï"))).as_deref(), Some("ünï"));
        let long = "a".repeat(300);
        assert_eq!(common_name(&cert(Some(&long))), Some(long));
        assert_eq!(common_name(&cert(None)), None);
        assert_eq!(common_name(b"garbage"), None);
    }

    #[test]
    fn der_lengths() {
        assert_eq!(
            der_tlv(&[0x04, 0x01, 0xaa, 0xbb]),
            Some((0x04, &[0xaa][..], &[0xbb][..]))
        );
        assert_eq!(der_tlv(&[0x04, 0x81, 0x01, 0xaa]), Some((0x04, &[0xaa][..], &[][..])));
        assert_eq!(der_tlv(&[0x04, 0x02, 0xaa]), None);
        assert_eq!(der_tlv(&[0x04, 0x80]), None);
        assert_eq!(der_tlv(&[0x04]), None);
    }

    #[test]
    fn bad_server_credentials_are_named() {
        let c = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
        let (crt, key) = (c.cert.pem(), c.signing_key.serialize_pem());
        assert!(server_tls(crt.as_bytes(), key.as_bytes(), crt.as_bytes()).is_ok());
        assert!(matches!(
            server_tls(b"nope", key.as_bytes(), crt.as_bytes()),
            Err(TlsError::NoCertificate {
                what: "server certificate"
            })
        ));
        assert!(matches!(
            server_tls(crt.as_bytes(), b"nope", crt.as_bytes()),
            Err(TlsError::NoKey)
        ));
        assert!(matches!(
            server_tls(crt.as_bytes(), key.as_bytes(), b""),
            Err(TlsError::NoCertificate { what: "client CA" })
        ));
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert!(matches!(
            server_tls(crt.as_bytes(), other.as_bytes(), crt.as_bytes()),
            Err(TlsError::Identity(_))
        ));
    }
}
