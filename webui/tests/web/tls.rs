//! The real HTTPS listener on 127.0.0.1 with a self-signed certificate:
//! TLS 1.3 and 1.2 with ALPN work; TLS 1.1 and plain HTTP do not.

use std::sync::Arc;

use debvisor_webui::fakes::FixedNode;
use debvisor_webui::tls::{serve_https, server_config};
use debvisor_webui::{AppState, router};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Server {
    addr: std::net::SocketAddr,
    cert: CertificateDer<'static>,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start() -> Server {
    let dir = std::env::temp_dir().join(format!("dv-webui-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    let tls = server_config(&cert_path, &key_path).unwrap();
    let state = AppState::new(Arc::new(FixedNode::sample("tls-node")), dir.join("admin.argon2"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_https(listener, tls, router(state)));
    Server {
        addr,
        cert: ck.cert.der().clone(),
        dir,
    }
}

fn client(server: &Server, versions: &[&'static SupportedProtocolVersion], alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(server.cert.clone()).unwrap();
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn https_serves_the_console_and_refuses_old_or_plain_clients() {
    let server = start().await;
    let name = ServerName::try_from("localhost").unwrap();

    // TLS 1.3, HTTP/1.1: the sign-in page with its headers.
    let tls = client(&server, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let mut stream = tls
        .connect(name.clone(), TcpStream::connect(server.addr).await.unwrap())
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    stream
        .write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).to_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.contains("strict-transport-security: max-age=63072000"));
    assert!(response.contains("set-cookie: __host-debvisor_csrf="));
    assert!(response.contains("tls-node"));

    // TLS 1.2 is still accepted; h2 is offered first by ALPN.
    let tls = client(&server, &[&rustls::version::TLS12], &[b"h2", b"http/1.1"]);
    let stream = tls
        .connect(name.clone(), TcpStream::connect(server.addr).await.unwrap())
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(stream);

    // A TLS 1.1 ClientHello (no supported_versions extension) gets an
    // alert or a closed connection, never a ServerHello.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(&tls11_client_hello()).await.unwrap();
    let mut first = [0u8; 1];
    match raw.read(&mut first).await {
        Ok(0) | Err(_) => {}
        Ok(_) => assert_eq!(first[0], 0x15, "expected a TLS alert record, not {:#04x}", first[0]),
    }

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP was answered: {answer:?}");
}

/// A minimal TLS 1.1 ClientHello: legacy version 3.2, two CBC suites, no
/// extensions.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x02, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}
