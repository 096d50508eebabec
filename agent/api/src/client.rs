//! Connecting to an agent: over its Unix socket, or over TLS with the server
//! certificate pinned by its SHA-256 fingerprint (printed on the node's
//! serial console at first boot).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint};

/// Why a connection to an agent could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The Unix socket could not be reached.
    #[error("Cannot connect to the agent socket {path}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: tonic::transport::Error,
    },
    /// The TCP/TLS endpoint could not be reached.
    #[error("Cannot connect to the agent at {addr}")]
    Tls {
        /// host:port.
        addr: String,
        /// What went wrong.
        #[source]
        source: tonic::transport::Error,
    },
    /// The fingerprint is not 64 hex digits.
    #[error("Bad certificate fingerprint {0:?}: expected 64 hex digits (colons allowed)")]
    Fingerprint(String),
}

/// Opens a channel to the agent's Unix socket.
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Channel, ConnectError> {
    let path = path.as_ref().to_path_buf();
    unix_endpoint()
        .connect_with_connector(unix_connector(path.clone()))
        .await
        .map_err(|source| ConnectError::Socket { path, source })
}

/// A channel to the Unix socket at `path` that connects on first use, and
/// again after the peer went away (a daemon that restarts).
pub fn unix_channel_lazy(path: impl AsRef<Path>) -> Channel {
    unix_endpoint().connect_with_connector_lazy(unix_connector(path.as_ref().to_path_buf()))
}

/// The URI is required by tonic but unused: the connector ignores it.
fn unix_endpoint() -> Endpoint {
    Endpoint::from_static("http://local.socket")
}

/// Connects to the socket at `path`, each time it is asked.
fn unix_connector(
    path: PathBuf,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: http::Uri| {
        let p = path.clone();
        async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
    })
}

/// Normalises a SHA-256 fingerprint: lower-case hex, no separators.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], ConnectError> {
    let clean: String = s.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&clean).map_err(|_| ConnectError::Fingerprint(s.to_string()))?;
    bytes.try_into().map_err(|_| ConnectError::Fingerprint(s.to_string()))
}

/// The SHA-256 fingerprint of a DER certificate, as colon-free lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A rustls client configuration that accepts exactly the server certificate
/// whose SHA-256 is `pin` (trust on first use, confirmed out of band), and
/// still checks the handshake signatures. ALPN offers h2 for gRPC.
pub fn pinned_client_config(pin: [u8; 32]) -> rustls::ClientConfig {
    let provider = Arc::new(ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pin, provider }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg
}

/// Opens a gRPC channel over TLS to `addr` (host:port), pinning the server
/// certificate by its SHA-256 fingerprint.
pub async fn connect_tls_pinned(addr: &str, pin: [u8; 32]) -> Result<Channel, ConnectError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pinned_client_config(pin)));
    let target = addr.to_string();
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| ConnectError::Tls {
            addr: addr.to_string(),
            source,
        })?
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, target) = (connector.clone(), target.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                // The name is not checked (the pin is); any valid name will do.
                let name = ServerName::try_from("debvisor-node").expect("static name is valid");
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|source| ConnectError::Tls {
            addr: addr.to_string(),
            source,
        })
}

#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint {} does not match the pinned one",
                fingerprint(end_entity)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex64 = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&hex64).unwrap(), [0xab; 32]);
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        assert!(matches!(parse_fingerprint("abcd"), Err(ConnectError::Fingerprint(_))));
        assert!(matches!(
            parse_fingerprint(&"zz".repeat(32)),
            Err(ConnectError::Fingerprint(_))
        ));
    }
}
