//! The agent's two transports, end to end: GetStatus and health over the
//! Unix socket and over TLS with a pinned certificate.

use std::sync::Arc;

use debvisor_agent::fakes::FakeHost;
use debvisor_agent::host::ProcHost;
use debvisor_agent::server::{self, ServeConfig, TlsListen};
use debvisor_api::client;
use debvisor_api::node::v1::GetStatusRequest;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct Pki {
    dir: tempfile::TempDir,
    fingerprint: String,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    Pki {
        fingerprint: client::fingerprint(cert.der()),
        dir,
    }
}

#[tokio::test]
async fn status_and_health_over_unix_and_tls() {
    let pki = pki();
    let cfg = ServeConfig {
        socket: pki.dir.path().join("agent.sock"),
        tls: Some(TlsListen {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert: pki.dir.path().join("server.pem"),
            key: pki.dir.path().join("server.key"),
        }),
    };
    let bound = server::bind(&cfg).await.unwrap();
    let addr = bound.tcp_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(bound, Arc::new(ProcHost::new("/")), async {
        let _ = stopped.await;
    }));

    // Unix socket: the real host's figures (this test runs on Linux).
    let ch = client::connect_unix(&cfg.socket).await.unwrap();
    let s = NodeServiceClient::new(ch.clone())
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!s.hostname.is_empty());
    assert!(s.uptime_seconds > 0.0);
    assert!(s.memory.unwrap().total_bytes > 0);
    assert!(!s.simulated);
    let h = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: "debvisor.node.v1.NodeService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // TLS with the right pin answers.
    let pin = client::parse_fingerprint(&pki.fingerprint).unwrap();
    let ch = client::connect_tls_pinned(&addr, pin).await.unwrap();
    let s2 = NodeServiceClient::new(ch)
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s2.hostname, s.hostname);

    // TLS with a wrong pin is refused at the handshake.
    let wrong = client::connect_tls_pinned(&addr, [0u8; 32]).await;
    match wrong {
        Err(_) => {}
        Ok(ch) => {
            let r = NodeServiceClient::new(ch).get_status(GetStatusRequest {}).await;
            assert!(r.is_err(), "a wrong pin must not get an answer");
        }
    }

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn simulation_is_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServeConfig {
        socket: dir.path().join("a.sock"),
        tls: None,
    };
    let bound = server::bind(&cfg).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(bound, Arc::new(FakeHost::new("sim1")), async {
        let _ = stopped.await;
    }));
    let ch = client::connect_unix(&cfg.socket).await.unwrap();
    let s = NodeServiceClient::new(ch)
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.simulated);
    assert_eq!(s.hostname, "sim1");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
