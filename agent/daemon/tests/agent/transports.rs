//! The agent end to end on both transports, with fake units and journal and
//! a real audit log: mTLS identities, peer credentials, auditing, unknown
//! methods, rate limits, compression, message limits, status streams and
//! `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use debvisor_agent::config::AgentConfig;
use debvisor_agent::fakes::FakeHost;
use debvisor_agent::host::ProcHost;
use debvisor_agent::server::{self, Backends, ServeConfig, TlsListen};
use debvisor_api::audit::v1::audit_service_client::AuditServiceClient;
use debvisor_api::audit::v1::{QueryRequest, VerifyRequest};
use debvisor_api::client;
use debvisor_api::config::Context;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use debvisor_api::node::v1::{GetStatusRequest, WatchStatusRequest};
use debvisor_api::units::v1::unit_service_client::UnitServiceClient;
use debvisor_api::units::v1::{ListUnitsRequest, StreamLogsRequest, UnitActionRequest};
use debvisor_audit::AuditLog;
use debvisor_systemd::fakes::{FakeJournal, FakeUnits};
use debvisor_telemetry::Metrics;
use tonic::codec::CompressionEncoding;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    admin: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "test node CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |names: Vec<String>, cn: &str, eku| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(
        vec!["debvisor-node".into()],
        "node",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let admin = leaf(vec![], "admin", ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(dir.path().join("server.pem"), &server.0).unwrap();
    std::fs::write(dir.path().join("server.key"), &server.1).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    Pki {
        dir,
        ca_pem: ca_cert.pem(),
        admin,
    }
}

struct Agent {
    socket: std::path::PathBuf,
    ctx: Context,
    metrics: std::net::SocketAddr,
    units: Arc<FakeUnits>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _pki: Pki,
}

impl Agent {
    async fn start(cfg: AgentConfig, host: Arc<dyn debvisor_agent::host::HostFacts>) -> Agent {
        let pki = pki();
        let d = pki.dir.path();
        let serve = ServeConfig {
            socket: d.join("agent.sock"),
            tls: Some(TlsListen {
                addr: "127.0.0.1:0".parse().unwrap(),
                cert: d.join("server.pem"),
                key: d.join("server.key"),
                client_ca: d.join("ca.pem"),
            }),
            metrics: Some("127.0.0.1:0".parse().unwrap()),
        };
        let bound = server::bind(&serve).await.unwrap();
        let ctx = Context {
            endpoints: vec![bound.tcp_addr().unwrap().to_string()],
            server_name: "debvisor-node".into(),
            ca: pki.ca_pem.clone(),
            crt: pki.admin.0.clone(),
            key: pki.admin.1.clone(),
        };
        let metrics = bound.metrics_addr().unwrap();
        let journal = Arc::new(FakeJournal::new());
        let units = Arc::new(FakeUnits::new().with_journal(journal.clone()));
        let backends = Backends {
            host,
            units: units.clone(),
            journal,
            audit: AuditLog::open(&d.join("audit.db")).await.unwrap(),
            health: Arc::new(debvisor_agent::health_service::InitForwarder::new(d.join("init.sock"))),
            provision: None,
            vm: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(bound, backends, cfg, Metrics::new(), async {
            let _ = stopped.await;
        }));
        Agent {
            socket: serve.socket,
            ctx,
            metrics,
            units,
            stop: Some(stop),
            task,
            _pki: pki,
        }
    }

    async fn tls(&self) -> tonic::transport::Channel {
        debvisor_api::tls::connect_mtls(&self.ctx).await.unwrap()
    }

    async fn unix(&self) -> tonic::transport::Channel {
        client::connect_unix(&self.socket).await.unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent stops")
            .unwrap()
            .unwrap();
    }
}

fn sim_config() -> AgentConfig {
    AgentConfig::default()
}

#[tokio::test]
async fn status_and_health_on_both_transports() {
    let agent = Agent::start(sim_config(), Arc::new(ProcHost::new("/"))).await;
    for ch in [agent.unix().await, agent.tls().await] {
        let s = NodeServiceClient::new(ch.clone())
            .get_status(GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(!s.hostname.is_empty());
        assert!(!s.simulated);
        assert!(s.sampled_at_unix_ms > 1_700_000_000_000);
        let mut health = HealthClient::new(ch);
        for service in [
            "",
            "debvisor.node.v1.NodeService",
            "debvisor.units.v1.UnitService",
            "debvisor.audit.v1.AuditService",
        ] {
            let h = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(h.status, 1, "{service} is SERVING");
        }
    }
    agent.stop().await;
}

#[tokio::test]
async fn mutations_are_audited_with_the_callers_identity() {
    let agent = Agent::start(sim_config(), Arc::new(FakeHost::new("sim1"))).await;
    let tls = agent.tls().await;
    let mut units = UnitServiceClient::new(tls.clone());
    let before = units
        .get_unit(debvisor_api::units::v1::GetUnitRequest {
            name: "debvisor-webui.service".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = units
        .restart(UnitActionRequest {
            name: "debvisor-webui.service".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.result, "done");
    let after = r.unit.unwrap();
    assert_eq!(after.active_state, "active");
    assert_ne!(after.main_pid, before.main_pid, "a restart gives a new main PID");

    // A bad name never reaches systemd, and the refusal names the field.
    let e = units
        .start(UnitActionRequest {
            name: "../../etc/passwd".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("name:"), "{}", e.message());
    // An unknown unit.
    let e = units
        .start(UnitActionRequest {
            name: "nope.service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());

    // A local caller is recorded by uid.
    UnitServiceClient::new(agent.unix().await)
        .stop(UnitActionRequest {
            name: "debvisor-webui.service".into(),
        })
        .await
        .unwrap();

    let mut audit = AuditServiceClient::new(tls);
    let page = audit
        .query(QueryRequest {
            action: "units.*".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = page
        .records
        .iter()
        .map(|r| (r.actor.as_str(), r.action.as_str(), r.target.as_str(), r.ok))
        .collect();
    let me = format!("uid:{}", nix::unistd::getuid());
    assert_eq!(
        got,
        [
            (me.as_str(), "units.Stop", "debvisor-webui.service", true),
            ("admin", "units.Start", "nope.service", false),
            ("admin", "units.Start", "../../etc/passwd", false),
            ("admin", "units.Restart", "debvisor-webui.service", true),
        ]
    );
    assert!(
        page.records[0].source.starts_with("unix:pid="),
        "{}",
        page.records[0].source
    );
    assert!(
        page.records[1].source.starts_with("tcp:127.0.0.1:"),
        "{}",
        page.records[1].source
    );
    let v = audit.verify(VerifyRequest {}).await.unwrap().into_inner();
    assert!(v.ok, "{}", v.problem);
    assert_eq!(v.records, 4);

    // The journal shows the restart.
    let mut logs = UnitServiceClient::new(agent.unix().await)
        .stream_logs(StreamLogsRequest {
            unit: "debvisor-webui.service".into(),
            lines: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut lines = Vec::new();
    while let Some(e) = logs.message().await.unwrap() {
        lines.push(e.message);
    }
    assert!(lines.iter().any(|l| l.contains("Started")), "{lines:?}");
    agent.stop().await;
}

#[tokio::test]
async fn only_the_console_may_name_an_end_user() {
    let agent = Agent::start(sim_config(), Arc::new(FakeHost::new("sim1"))).await;
    let mut req = tonic::Request::new(GetStatusRequest {});
    req.metadata_mut().insert("x-debvisor-user", "alice".parse().unwrap());
    // This test runs as the agent's own uid, which is not the console's user.
    let e = NodeServiceClient::new(agent.unix().await)
        .get_status(req)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{}", e.message());
    let mut req = tonic::Request::new(GetStatusRequest {});
    req.metadata_mut().insert("x-debvisor-user", "alice".parse().unwrap());
    let e = NodeServiceClient::new(agent.tls().await)
        .get_status(req)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{}", e.message());
    agent.stop().await;
}

#[tokio::test]
async fn unknown_versions_are_named_in_unimplemented() {
    let agent = Agent::start(sim_config(), Arc::new(FakeHost::new("sim1"))).await;
    let mut grpc = tonic::client::Grpc::new(agent.tls().await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/debvisor.node.v2.NodeService/GetStatus");
    let e = grpc
        .unary::<GetStatusRequest, debvisor_api::node::v1::GetStatusResponse, _>(
            tonic::Request::new(GetStatusRequest {}),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    assert!(e.message().contains("debvisor.node.v1.NodeService"), "{}", e.message());
    agent.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_resource_exhausted_with_retry_info() {
    let mut cfg = sim_config();
    cfg.rate_limit.per_second = 0.01;
    cfg.rate_limit.burst = 3;
    let agent = Agent::start(cfg, Arc::new(FakeHost::new("sim1"))).await;
    let mut node = NodeServiceClient::new(agent.tls().await);
    for _ in 0..3 {
        node.get_status(GetStatusRequest {}).await.unwrap();
    }
    let e = node.get_status(GetStatusRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(e.message().contains("admin"), "{}", e.message());
    use tonic_types::StatusExt;
    let retry = e.get_details_retry_info().expect("RetryInfo detail");
    assert!(retry.retry_delay.unwrap() > Duration::ZERO);
    // Health checks are not limited; another identity has its own bucket.
    HealthClient::new(agent.tls().await)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap();
    NodeServiceClient::new(agent.unix().await)
        .get_status(GetStatusRequest {})
        .await
        .unwrap();
    agent.stop().await;
}

#[tokio::test]
async fn compression_and_message_limits() {
    let mut cfg = sim_config();
    cfg.max_message_bytes = 4096;
    let agent = Agent::start(cfg, Arc::new(FakeHost::new("sim1"))).await;
    for enc in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut units = UnitServiceClient::new(agent.tls().await)
            .send_compressed(enc)
            .accept_compressed(enc);
        let r = units
            .list_units(ListUnitsRequest {
                include_inactive: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            r.metadata().get("grpc-encoding").and_then(|v| v.to_str().ok()),
            Some(if enc == CompressionEncoding::Gzip {
                "gzip"
            } else {
                "zstd"
            })
        );
        assert!(!r.into_inner().units.is_empty());
    }
    let big = ListUnitsRequest {
        patterns: vec!["x".repeat(200); 40],
        ..Default::default()
    };
    let e = UnitServiceClient::new(agent.tls().await)
        .list_units(big)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{}", e.message());
    agent.stop().await;
}

#[tokio::test]
async fn watch_status_sends_a_full_status_then_deltas() {
    let agent = Agent::start(sim_config(), Arc::new(FakeHost::new("sim1"))).await;
    let mut stream = NodeServiceClient::new(agent.unix().await)
        .watch_status(WatchStatusRequest { interval_ms: 250 })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.full);
    assert_eq!(first.status.unwrap().hostname, "sim1");
    // The fake's uptime moves, so a delta with only that (and the clock)
    // follows within a few samples.
    let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!next.full);
    assert!(
        next.changed.contains(&"uptime_seconds".to_string()),
        "{:?}",
        next.changed
    );
    assert_eq!(next.status.unwrap().hostname, "", "unchanged fields are left out");
    agent.stop().await;
}

#[tokio::test]
async fn reboot_is_audited_and_reaches_systemd() {
    let agent = Agent::start(sim_config(), Arc::new(FakeHost::new("sim1"))).await;
    let mut node = NodeServiceClient::new(agent.tls().await);
    let e = node
        .reboot(debvisor_api::node::v1::PowerRequest {
            reason: "two\nlines".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    assert_eq!(agent.units.shutdown_requested(), None);
    let r = node
        .reboot(debvisor_api::node::v1::PowerRequest {
            reason: "kernel update".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.target, "reboot.target");
    assert_eq!(agent.units.shutdown_requested(), Some("reboot.target"));
    let page = AuditServiceClient::new(agent.tls().await)
        .query(QueryRequest {
            action: "node.Reboot".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total_matching, 2);
    assert!(page.records[0].ok);
    assert_eq!(page.records[0].target, "reason: kernel update");
    agent.stop().await;
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code() {
    let agent = Agent::start(sim_config(), Arc::new(FakeHost::new("sim1"))).await;
    let mut node = NodeServiceClient::new(agent.tls().await);
    node.get_status(GetStatusRequest {}).await.unwrap();
    let _ = UnitServiceClient::new(agent.tls().await)
        .get_unit(debvisor_api::units::v1::GetUnitRequest {
            name: "nope.service".into(),
        })
        .await;
    let body = http_get(agent.metrics, "/metrics").await;
    assert!(body.contains("debvisor_grpc_requests_total"), "{body}");
    let ok = body
        .lines()
        .find(|l| l.starts_with("debvisor_grpc_requests_total") && l.contains("GetStatus") && l.contains("OK"));
    assert!(ok.is_some(), "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("debvisor_grpc_requests_total") && l.contains("NOT_FOUND")),
        "{body}"
    );
    assert!(body.contains("debvisor_grpc_request_duration_seconds"), "{body}");
    agent.stop().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
