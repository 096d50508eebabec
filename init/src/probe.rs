//! Readiness probes: the agent answers GetStatus and gRPC health on its
//! socket and the console answers /healthz over HTTPS.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use debvisor_api::client;
use debvisor_api::node::v1::GetStatusRequest;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The agent answers GetStatus on its Unix socket.
pub async fn agent(socket: &str) -> anyhow::Result<()> {
    let ch = client::connect_unix(socket).await?;
    NodeServiceClient::new(ch)
        .get_status(GetStatusRequest {})
        .await
        .context("GetStatus failed")?;
    Ok(())
}

/// The agent's gRPC health service (`grpc.health.v1.Health/Check`, the
/// server as a whole) answers SERVING on its Unix socket.
pub async fn agent_health(socket: &str) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let ch = client::connect_unix(socket).await?;
    let status = HealthClient::new(ch)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .context("grpc.health.v1.Health/Check failed")?
        .into_inner()
        .status();
    if status != ServingStatus::Serving {
        bail!("gRPC health answered {}", status.as_str_name());
    }
    Ok(())
}

/// The fingerprint pin of the first certificate in the PEM file `path`.
pub fn pin_of(path: &str) -> anyhow::Result<[u8; 32]> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(path).with_context(|| format!("Cannot read a certificate from {path}"))?;
    Ok(client::parse_fingerprint(&client::fingerprint(&der))?)
}

/// The console answers `GET /healthz` with 200 over HTTPS on `port`,
/// presenting the certificate with fingerprint `pin`.
pub async fn console(port: u16, pin: [u8; 32]) -> anyhow::Result<()> {
    let mut cfg = client::pinned_client_config(pin);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .context("Console port closed")?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("valid name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf))
        .await
        .context("No answer")??;
    let head = String::from_utf8_lossy(&buf);
    if !head.starts_with("HTTP/1.1 200") {
        bail!("Console answered {:?}", head.lines().next().unwrap_or(""));
    }
    Ok(())
}

/// Retries `f` every 250 ms until it succeeds or `deadline` passes; returns
/// the last error.
pub async fn until_ok<F, Fut>(deadline: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= end => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
