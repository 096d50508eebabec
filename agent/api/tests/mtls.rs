//! The agent's mTLS endpoint end to end: a real tonic server with
//! `server_tls`, clients from `connect_mtls`, all credentials made with
//! rcgen here. A refused client must never reach the service.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use debvisor_api::config::Context;
use debvisor_api::tls::{self, MtlsError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_server::HealthServer};
use tonic_health::server::{HealthReporter, HealthService};

const SERVER_NAME: &str = "debvisor-node";

/// A CA that signs server and client certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(cn: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = p.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(p, key),
        }
    }

    /// (certificate PEM, key PEM) for the agent.
    fn server(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![SERVER_NAME.to_string(), "node1".to_string()]).unwrap();
        p.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.distinguished_name.push(DnType::CommonName, "node1");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        (p.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }

    /// (certificate PEM, key PEM) for a client named `cn`, valid for a year
    /// from now, or expired a year ago.
    fn client(&self, cn: &str, expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::OrganizationName, "debvisor");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        } else {
            let now = rcgen::date_time_ymd(1970, 1, 1) + std::time::UNIX_EPOCH.elapsed().unwrap();
            p.not_before = now - std::time::Duration::from_secs(3600);
            p.not_after = now + std::time::Duration::from_secs(365 * 86400);
        }
        (p.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }
}

/// A running agent stand-in: the health service behind `server_tls`,
/// recording who reached it.
struct Agent {
    addr: SocketAddr,
    /// Identities seen by the interceptor (`client_identity`).
    seen: Arc<Mutex<Vec<Option<String>>>>,
    /// Identities seen by a tower layer (`client_identity_from_extensions`).
    seen_by_layer: Arc<Mutex<Vec<Option<String>>>>,
}

impl Agent {
    async fn start(ca: &Ca) -> Self {
        let (cert, key) = ca.server();
        let tls_config = tls::server_tls(cert.as_bytes(), key.as_bytes(), ca.pem.as_bytes()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_layer = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let health = HealthServer::with_interceptor(
            HealthService::from_health_reporter(HealthReporter::new()),
            move |req: tonic::Request<()>| {
                let who = tls::client_identity(&req);
                record.lock().unwrap().push(who.clone());
                match who {
                    Some(_) => Ok(req),
                    None => Err(tonic::Status::unauthenticated("no client certificate")),
                }
            },
        );
        let record = seen_by_layer.clone();
        let layer = tower::util::MapRequestLayer::new(move |req: http::Request<tonic::body::Body>| {
            record
                .lock()
                .unwrap()
                .push(tls::client_identity_from_extensions(req.extensions()));
            req
        });
        let server = Server::builder()
            .tls_config(tls_config)
            .unwrap()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener));
        tokio::spawn(async move { server.await.unwrap() });
        Self {
            addr,
            seen,
            seen_by_layer,
        }
    }

    fn context(&self, ca: &Ca, client: (String, String)) -> Context {
        Context {
            endpoints: vec![self.addr.to_string()],
            server_name: SERVER_NAME.to_string(),
            ca: ca.pem.clone(),
            crt: client.0,
            key: client.1,
        }
    }

    fn reached(&self) -> usize {
        self.seen.lock().unwrap().len() + self.seen_by_layer.lock().unwrap().len()
    }
}

async fn check(channel: tonic::transport::Channel) -> Result<i32, tonic::Status> {
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await?;
    Ok(resp.into_inner().status)
}

fn versions(tls12_only: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    if tls12_only { TLS12_ONLY } else { tls::PROTOCOL_VERSIONS }
}

/// A rustls client configuration that trusts `ca_pem` and offers no client
/// certificate.
fn anonymous_client(ca_pem: &str, tls12_only: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions(tls12_only))
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg
}

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn admin_client_is_served_and_identified() {
    let ca = Ca::new("node CA");
    let agent = Agent::start(&ca).await;
    let ctx = agent.context(&ca, ca.client("admin", false));
    let channel = tls::connect_mtls(&ctx).await.unwrap();
    assert_eq!(check(channel).await.unwrap(), ServingStatus::Serving as i32);
    assert_eq!(*agent.seen.lock().unwrap(), [Some("admin".to_string())]);
    assert_eq!(*agent.seen_by_layer.lock().unwrap(), [Some("admin".to_string())]);
}

#[tokio::test]
async fn tls12_only_client_is_served() {
    let ca = Ca::new("node CA");
    let agent = Agent::start(&ca).await;
    let ctx = agent.context(&ca, ca.client("admin", false));
    let cfg = tls::client_config_with_versions(&ctx, versions(true)).unwrap();
    let channel = tls::connect_mtls_with(&ctx, cfg).await.unwrap();
    assert_eq!(check(channel).await.unwrap(), ServingStatus::Serving as i32);
    assert_eq!(*agent.seen.lock().unwrap(), [Some("admin".to_string())]);
}

#[tokio::test]
async fn unreachable_endpoints_are_skipped_in_order() {
    let ca = Ca::new("node CA");
    let agent = Agent::start(&ca).await;
    let mut ctx = agent.context(&ca, ca.client("admin", false));
    let closed = closed_port();
    ctx.endpoints.insert(0, closed.clone());
    let channel = tls::connect_mtls(&ctx).await.unwrap();
    assert_eq!(check(channel).await.unwrap(), ServingStatus::Serving as i32);

    ctx.endpoints = vec![closed.clone()];
    let err = tls::connect_mtls(&ctx).await.unwrap_err();
    assert!(
        matches!(&err, MtlsError::Unreachable { attempts } if attempts.len() == 1),
        "{err:?}"
    );
    assert!(err.to_string().contains(&closed), "{err}");
}

#[tokio::test]
async fn no_client_certificate_is_refused_at_the_handshake() {
    let ca = Ca::new("node CA");
    let agent = Agent::start(&ca).await;
    let ctx = agent.context(&ca, ca.client("admin", false));
    for tls12_only in [false, true] {
        let err = tls::connect_mtls_with(&ctx, anonymous_client(&ca.pem, tls12_only))
            .await
            .unwrap_err();
        assert!(
            matches!(err, MtlsError::ClientRefused { .. }),
            "TLS 1.2 only: {tls12_only}: {err:?}"
        );
    }

    // A plain tonic TLS client without identity: the RPC fails in transport,
    // with the server's alert.
    let endpoint = Endpoint::from_shared(format!("https://{}", agent.addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca.pem))
                .domain_name(SERVER_NAME),
        )
        .unwrap();
    if let Ok(channel) = endpoint.connect().await {
        let status = check(channel).await.unwrap_err();
        assert!(format!("{status:?}").contains("CertificateRequired"), "{status:?}");
    }
    assert_eq!(agent.reached(), 0);
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let ca = Ca::new("node CA");
    let agent = Agent::start(&ca).await;
    let other = Ca::new("another CA");
    let ctx = agent.context(&ca, other.client("admin", false));
    let err = tls::connect_mtls(&ctx).await.unwrap_err();
    assert!(matches!(err, MtlsError::ClientRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("refused the client certificate"), "{err}");
    assert_eq!(agent.reached(), 0);
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let ca = Ca::new("node CA");
    let agent = Agent::start(&ca).await;
    for tls12_only in [false, true] {
        let ctx = agent.context(&ca, ca.client("admin", true));
        let cfg = tls::client_config_with_versions(&ctx, versions(tls12_only)).unwrap();
        let err = tls::connect_mtls_with(&ctx, cfg).await.unwrap_err();
        assert!(
            matches!(err, MtlsError::ClientRefused { .. }),
            "TLS 1.2 only: {tls12_only}: {err:?}"
        );
    }
    assert_eq!(agent.reached(), 0);
}

#[tokio::test]
async fn bundle_of_another_node_does_not_trust_the_server() {
    let ca = Ca::new("node CA");
    let agent = Agent::start(&ca).await;
    let other = Ca::new("another node CA");
    let mut ctx = agent.context(&other, other.client("admin", false));
    let err = tls::connect_mtls(&ctx).await.unwrap_err();
    assert!(matches!(err, MtlsError::UnknownServer { .. }), "{err:?}");
    assert!(err.to_string().contains("another node or cluster"), "{err}");

    ctx = agent.context(&ca, ca.client("admin", false));
    ctx.server_name = "somewhere-else".to_string();
    let err = tls::connect_mtls(&ctx).await.unwrap_err();
    assert!(matches!(err, MtlsError::WrongServerName { .. }), "{err:?}");
    assert_eq!(agent.reached(), 0);
}

#[tokio::test]
async fn plain_tcp_is_refused() {
    let ca = Ca::new("node CA");
    let agent = Agent::start(&ca).await;
    let endpoint = Endpoint::from_shared(format!("http://{}", agent.addr)).unwrap();
    if let Ok(channel) = endpoint.connect().await {
        check(channel).await.unwrap_err();
    }
    assert_eq!(agent.reached(), 0);
}
