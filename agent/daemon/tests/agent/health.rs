//! The agent's `debvisor.health.v1.NodeHealthService` end to end: a test
//! double of debvisor-init serves the same service on a temporary Unix
//! socket, the agent is started with that socket as its init socket, and a
//! client calls the agent on its own socket. List and Watch must be forwarded
//! as they are, streams must end when either side ends, and an init that does
//! not answer must give UNAVAILABLE naming it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use debvisor_agent::config::AgentConfig;
use debvisor_agent::fakes::FakeHost;
use debvisor_agent::health_service::InitForwarder;
use debvisor_agent::server::{self, Backends, ServeConfig};
use debvisor_api::health::v1::node_health_service_client::NodeHealthServiceClient;
use debvisor_api::health::v1::node_health_service_server::{NodeHealthService, NodeHealthServiceServer};
use debvisor_api::health::v1::{
    BootGate, Check, CheckResult, CheckStatus, GateState, ListRequest, NodeHealth, NodeState, WatchRequest,
};
use debvisor_audit::AuditLog;
use debvisor_systemd::fakes::{FakeJournal, FakeUnits};
use debvisor_telemetry::Metrics;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

const LIMIT: Duration = Duration::from_secs(10);

fn result(status: CheckStatus, message: &str, started_unix_ms: i64) -> CheckResult {
    CheckResult {
        status: status as i32,
        message: message.into(),
        started_unix_ms,
        duration_ms: 4,
    }
}

/// What the double of init knows: three checks of three kinds, each with a
/// history of two earlier results.
fn node_health(state: NodeState) -> NodeHealth {
    let check = |name: &str, kind: &str, required: bool, status: CheckStatus, message: &str| Check {
        name: name.into(),
        kind: kind.into(),
        required,
        interval_ms: 10_000,
        timeout_ms: 5_000,
        last: Some(result(status, message, 1_746_100_820_000)),
        consecutive_failures: u32::from(status == CheckStatus::Fail),
        unit: if kind == "service" {
            format!("{}.service", name.trim_start_matches("service/"))
        } else {
            String::new()
        },
        history: vec![
            result(CheckStatus::Pass, "earlier", 1_746_100_810_000),
            result(CheckStatus::Pass, "earliest", 1_746_100_800_000),
        ],
    };
    NodeHealth {
        state: state as i32,
        degraded_reason: String::new(),
        gate: Some(BootGate {
            state: GateState::Pending as i32,
            deadline_unix_ms: 1_746_101_100_000,
            decided_unix_ms: 0,
            reason: "waiting for network/gateway".into(),
            slot: "B".into(),
        }),
        checks: vec![
            check(
                "service/debvisor-agent",
                "service",
                true,
                CheckStatus::Pass,
                "SERVING in 2 ms",
            ),
            check(
                "network/gateway",
                "network",
                true,
                CheckStatus::Fail,
                "gateway 10.0.2.2 did not answer",
            ),
            check("dns", "dns", false, CheckStatus::Warn, "resolved in 900 ms"),
        ],
        alerts: vec![],
        config_error: String::new(),
        config_digest: "0123abcd".into(),
    }
}

/// What init answers to `req`: its checks filtered by kind, with history
/// only on request.
fn answer(include_history: bool, kind: &str) -> NodeHealth {
    let mut h = node_health(NodeState::Starting);
    h.checks.retain(|c| kind.is_empty() || c.kind == kind);
    if !include_history {
        h.checks.iter_mut().for_each(|c| c.history.clear());
    }
    h
}

/// A Watch init received, and the sender of its stream.
type Watcher = (WatchRequest, mpsc::Sender<Result<NodeHealth, Status>>);

/// A stand-in for debvisor-init: answers List from [`answer`], and keeps each
/// Watch open with a sender through which the test pushes messages.
#[derive(Clone, Default)]
struct InitDouble {
    lists: Arc<Mutex<Vec<ListRequest>>>,
    watches: Arc<Mutex<Vec<Watcher>>>,
}

#[tonic::async_trait]
impl NodeHealthService for InitDouble {
    async fn list(&self, req: Request<ListRequest>) -> Result<Response<NodeHealth>, Status> {
        let req = req.into_inner();
        self.lists.lock().unwrap().push(req.clone());
        if req.kind == "bogus" {
            return Err(Status::invalid_argument("kind: \"bogus\" is not a check kind"));
        }
        Ok(Response::new(answer(req.include_history, &req.kind)))
    }

    type WatchStream = ReceiverStream<Result<NodeHealth, Status>>;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        self.watches.lock().unwrap().push((req.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The double serving on a socket until stopped.
struct Init {
    double: InitDouble,
    path: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Init {
    fn start(path: &Path) -> Init {
        let double = InitDouble::default();
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = tonic::transport::Server::builder().add_service(NodeHealthServiceServer::new(double.clone()));
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Init {
            double,
            path: path.to_path_buf(),
            stop,
            task,
        }
    }

    /// The sender of the `n`th Watch init received, waiting for it.
    async fn watcher(&self, n: usize) -> Watcher {
        tokio::time::timeout(LIMIT, async {
            loop {
                if let Some(w) = self.double.watches.lock().unwrap().get(n).cloned() {
                    return w;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("init receives the Watch")
    }

    /// Stops like init does: its streams end, the server closes, and the
    /// socket file stays behind with nobody listening.
    async fn stop(self) {
        self.double.watches.lock().unwrap().clear();
        let _ = self.stop.send(());
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("init double stops")
            .unwrap();
        assert!(self.path.exists());
    }
}

/// The agent, on a Unix socket only, forwarding health to `init_socket`.
struct Agent {
    socket: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    async fn start(dir: &Path, init_socket: PathBuf) -> Agent {
        let serve = ServeConfig {
            socket: dir.join("agent.sock"),
            tls: None,
            metrics: None,
        };
        let bound = server::bind(&serve).await.unwrap();
        let journal = Arc::new(FakeJournal::new());
        let backends = Backends {
            host: Arc::new(FakeHost::new("health-test")),
            units: Arc::new(FakeUnits::new().with_journal(journal.clone())),
            journal,
            audit: AuditLog::open_in_memory().await.unwrap(),
            health: Arc::new(InitForwarder::new(init_socket)),
            provision: None,
            vm: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            bound,
            backends,
            AgentConfig::default(),
            Metrics::new(),
            async {
                let _ = stopped.await;
            },
        ));
        Agent {
            socket: serve.socket,
            stop,
            task,
        }
    }

    async fn client(&self) -> NodeHealthServiceClient<Channel> {
        NodeHealthServiceClient::new(debvisor_api::client::connect_unix(&self.socket).await.unwrap())
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("agent stops")
            .unwrap()
            .unwrap();
    }
}

/// Checks that `e` is the agent's answer when nothing listens on init's
/// socket at `path`.
fn assert_init_unavailable(e: &Status, path: &Path) {
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let want = format!(
        "debvisor-init does not answer on {}; check `systemctl status debvisor-init`",
        path.display()
    );
    assert!(e.message().starts_with(&want), "{}", e.message());
}

#[tokio::test]
async fn list_is_forwarded_with_its_options() {
    let dir = tempfile::tempdir().unwrap();
    let init = Init::start(&dir.path().join("init.sock"));
    let agent = Agent::start(dir.path(), init.path.clone()).await;
    let mut c = agent.client().await;

    let all = c.list(ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(all, answer(false, ""));
    assert_eq!(all.checks.len(), 3);

    let services = c
        .list(ListRequest {
            include_history: true,
            kind: "service".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(services, answer(true, "service"));
    assert_eq!(services.checks.len(), 1);
    assert_eq!(services.checks[0].history.len(), 2);

    // Init's own errors come back with their code and message.
    let e = c
        .list(ListRequest {
            include_history: false,
            kind: "bogus".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "kind: \"bogus\" is not a check kind");

    let seen = init.double.lists.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ListRequest::default(),
            ListRequest {
                include_history: true,
                kind: "service".into()
            },
            ListRequest {
                include_history: false,
                kind: "bogus".into()
            },
        ]
    );

    // The agent reports the service as serving in grpc.health.v1.
    let ch = debvisor_api::client::connect_unix(&agent.socket).await.unwrap();
    let h = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "debvisor.health.v1.NodeHealthService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    agent.stop().await;
    init.stop().await;
}

#[tokio::test]
async fn watch_streams_through_until_init_stops_then_list_is_unavailable_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let init_path = dir.path().join("init.sock");
    let init = Init::start(&init_path);
    let agent = Agent::start(dir.path(), init_path.clone()).await;
    let mut c = agent.client().await;

    let mut stream = c
        .watch(WatchRequest { include_history: true })
        .await
        .unwrap()
        .into_inner();
    let (req, tx) = init.watcher(0).await;
    assert!(req.include_history, "the option reaches init");
    let sent = [
        node_health(NodeState::Starting),
        node_health(NodeState::Healthy),
        node_health(NodeState::Degraded),
    ];
    for h in &sent {
        tx.send(Ok(h.clone())).await.unwrap();
        let got = tokio::time::timeout(LIMIT, stream.message())
            .await
            .expect("the message arrives")
            .unwrap()
            .expect("the stream is open");
        assert_eq!(&got, h);
    }
    drop(tx);

    // Init stops: the stream ends cleanly, with OK.
    init.stop().await;
    let end = tokio::time::timeout(LIMIT, stream.message())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");

    // Nobody listens on the socket now.
    assert_init_unavailable(&c.list(ListRequest::default()).await.unwrap_err(), &init_path);
    assert_init_unavailable(&c.watch(WatchRequest::default()).await.unwrap_err(), &init_path);

    // Init restarts on the same path: the agent reconnects.
    std::fs::remove_file(&init_path).unwrap();
    let init = Init::start(&init_path);
    let back = c.list(ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(back, answer(false, ""));

    // A client that leaves ends init's stream too.
    let stream = c.watch(WatchRequest::default()).await.unwrap().into_inner();
    let (_, tx) = init.watcher(0).await;
    drop(stream);
    tokio::time::timeout(LIMIT, tx.closed())
        .await
        .expect("init's stream is cancelled when the client leaves");

    agent.stop().await;
    init.stop().await;
}

#[tokio::test]
async fn without_init_list_is_unavailable_and_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let init_path = dir.path().join("no-init.sock");
    let agent = Agent::start(dir.path(), init_path.clone()).await;
    let mut c = agent.client().await;
    assert_init_unavailable(&c.list(ListRequest::default()).await.unwrap_err(), &init_path);
    // The agent's other services are not held up by init's absence.
    let ch = debvisor_api::client::connect_unix(&agent.socket).await.unwrap();
    let s = debvisor_api::node::v1::node_service_client::NodeServiceClient::new(ch)
        .get_status(debvisor_api::node::v1::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.hostname, "health-test");
    agent.stop().await;
}
