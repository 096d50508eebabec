//! Runs the built `debvisorctl health` with `--socket` against a fake
//! `debvisor.health.v1.NodeHealthService` served in-process by tonic.

use crate::common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use common::{code, run_with_socket, stderr, stdout};
use debvisor_api::health::v1::node_health_service_server::{NodeHealthService, NodeHealthServiceServer};
use debvisor_api::health::v1::{
    Alert, BootGate, Check, CheckResult, CheckStatus, GateState, ListRequest, NodeHealth, NodeState, Severity,
    WatchRequest,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

const T0: i64 = 1_746_100_800_000; // 2025-05-01T12:00:00Z

fn check(name: &str, kind: &str, required: bool, status: CheckStatus, message: &str) -> Check {
    Check {
        name: name.into(),
        kind: kind.into(),
        required,
        interval_ms: 10_000,
        timeout_ms: 5_000,
        last: Some(CheckResult {
            status: status as i32,
            message: message.into(),
            started_unix_ms: T0,
            duration_ms: 3,
        }),
        consecutive_failures: u32::from(status == CheckStatus::Fail),
        unit: String::new(),
        history: vec![CheckResult {
            status: CheckStatus::Pass as i32,
            message: format!("{name} earlier"),
            started_unix_ms: T0 - 10_000,
            duration_ms: 2,
        }],
    }
}

/// A node whose boot was declared good, with one warning and, when
/// `gateway` is FAIL, a failing required check.
fn node(state: NodeState, gateway: CheckStatus) -> NodeHealth {
    NodeHealth {
        state: state as i32,
        degraded_reason: if state == NodeState::Degraded {
            "network/gateway fails; remediation gave up".into()
        } else {
            String::new()
        },
        gate: Some(BootGate {
            state: GateState::Good as i32,
            deadline_unix_ms: T0 + 300_000,
            decided_unix_ms: T0 + 40_000,
            reason: "all required units active and required checks passing".into(),
            slot: "A".into(),
        }),
        checks: vec![
            check(
                "service/debvisor-agent",
                "service",
                true,
                CheckStatus::Pass,
                "SERVING in 2 ms",
            ),
            check("network/gateway", "network", true, gateway, "gateway 10.0.2.2"),
            check(
                "certificate/server",
                "certificate",
                false,
                CheckStatus::Warn,
                "expires in 21 days",
            ),
        ],
        alerts: vec![Alert {
            time_unix_ms: T0 + 40_000,
            severity: Severity::Info as i32,
            check: String::new(),
            action: "boot-good".into(),
            message: "slot A declared good".into(),
        }],
        config_error: "network.vlans[0].id = 5000: must be 1-4094".into(),
        config_digest: "0123abcd".into(),
    }
}

/// The fake: List answers `list` (filtered by kind, history on request, as
/// init does), Watch sends `watch` then ends; `down` answers as the agent
/// does when debvisor-init is not there.
#[derive(Clone)]
struct FakeHealth {
    list: NodeHealth,
    watch: Vec<NodeHealth>,
    down: bool,
    lists: Arc<Mutex<Vec<ListRequest>>>,
    watches: Arc<Mutex<Vec<WatchRequest>>>,
}

impl FakeHealth {
    fn new(list: NodeHealth) -> Self {
        Self {
            list,
            watch: vec![],
            down: false,
            lists: Arc::default(),
            watches: Arc::default(),
        }
    }

    fn unavailable() -> Status {
        Status::unavailable(
            "debvisor-init does not answer on /run/debvisor/init.sock; check `systemctl status debvisor-init` \
             (Cannot connect: No such file or directory)",
        )
    }
}

#[tonic::async_trait]
impl NodeHealthService for FakeHealth {
    async fn list(&self, req: Request<ListRequest>) -> Result<Response<NodeHealth>, Status> {
        let req = req.into_inner();
        self.lists.lock().unwrap().push(req.clone());
        if self.down {
            return Err(Self::unavailable());
        }
        let mut h = self.list.clone();
        h.checks.retain(|c| req.kind.is_empty() || c.kind == req.kind);
        if !req.include_history {
            h.checks.iter_mut().for_each(|c| c.history.clear());
        }
        Ok(Response::new(h))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<NodeHealth, Status>> + Send>>;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.watches.lock().unwrap().push(req.into_inner());
        if self.down {
            return Err(Self::unavailable());
        }
        let items: Vec<Result<NodeHealth, Status>> = self.watch.iter().cloned().map(Ok).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
}

/// Serves `fake` on a socket in a new temporary directory and runs
/// `debvisorctl --socket SOCKET ARGS` against it.
async fn ctl(fake: &FakeHealth, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(tokio::net::UnixListener::bind(&socket).unwrap());
    let router = tonic::transport::Server::builder().add_service(NodeHealthServiceServer::new(fake.clone()));
    let server = tokio::spawn(router.serve_with_incoming(incoming));
    let out = run_with_socket(&socket, args).await;
    server.abort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn health_prints_state_gate_config_checks_and_alerts() {
    let fake = FakeHealth::new(node(NodeState::Healthy, CheckStatus::Pass));
    let o = ctl(&fake, &["health"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "NODE          HEALTHY", "{out}");
    assert!(
        lines[1].starts_with("BOOT GATE     GOOD, slot A, decided 2025-05-01T12:00:40+00:00 ("),
        "{out}"
    );
    assert_eq!(
        lines[2], "GATE REASON   all required units active and required checks passing",
        "{out}"
    );
    assert_eq!(lines[3], "CONFIG        digest 0123abcd", "{out}");
    assert_eq!(
        lines[4], "CONFIG ERROR  network.vlans[0].id = 5000: must be 1-4094",
        "{out}"
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("CHECK "))
        .expect("a checks table");
    let cols: Vec<&str> = lines[header].split_whitespace().collect();
    assert_eq!(
        cols,
        ["CHECK", "KIND", "REQ", "STATUS", "FAILS", "LAST", "RUN", "MESSAGE"]
    );
    let row: Vec<&str> = lines[header + 3]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        row[..5],
        ["certificate/server", "certificate", "no", "WARN", "0"],
        "{out}"
    );
    assert!(row[5].ends_with(" ago"), "{out}");
    assert_eq!(row[6], "expires in 21 days", "{out}");
    assert!(out.contains("\n3 checks, 0 failing.\n"), "{out}");
    assert!(
        out.ends_with(
            "Recent alerts:\nTIME                       SEVERITY  CHECK  ACTION     MESSAGE\n\
             2025-05-01T12:00:40+00:00  INFO      -      boot-good  slot A declared good\n"
        ),
        "{out}"
    );
    assert!(!out.contains("earlier results"), "{out}");
    assert_eq!(*fake.lists.lock().unwrap(), vec![ListRequest::default()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn kind_and_history_are_sent_and_shown() {
    let fake = FakeHealth::new(node(NodeState::Healthy, CheckStatus::Pass));
    let o = ctl(&fake, &["health", "--kind", "network", "--history"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        *fake.lists.lock().unwrap(),
        vec![ListRequest {
            include_history: true,
            kind: "network".into()
        }]
    );
    assert!(out.contains("\nnetwork/gateway  network  yes  PASS"), "{out}");
    assert!(!out.contains("service/debvisor-agent"), "{out}");
    assert!(out.contains("\n1 check, 0 failing.\n"), "{out}");
    assert!(
        out.contains(
            "\nnetwork/gateway, earlier results:\n  STARTED                    STATUS  TOOK  MESSAGE\n  \
             2025-05-01T11:59:50+00:00  PASS    2 ms  network/gateway earlier\n"
        ),
        "{out}"
    );

    let e = ctl(&fake, &["health", "--kind", "disk"]).await;
    assert_eq!(code(&e), 2, "{}", stderr(&e));
    assert!(stderr(&e).contains("'disk'"), "{}", stderr(&e));
}

#[tokio::test(flavor = "multi_thread")]
async fn json_is_the_wire_message_and_the_exit_code_follows_the_state() {
    let fake = FakeHealth::new(node(NodeState::Degraded, CheckStatus::Fail));
    let o = ctl(&fake, &["health", "--json"]).await;
    assert_eq!(code(&o), 1, "a degraded node exits 1: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["state"], NodeState::Degraded as i32);
    assert_eq!(v["degraded_reason"], "network/gateway fails; remediation gave up");
    assert_eq!(v["gate"]["slot"], "A");
    assert_eq!(v["checks"].as_array().unwrap().len(), 3);
    assert_eq!(v["checks"][1]["last"]["message"], "gateway 10.0.2.2");
    assert_eq!(v["alerts"][0]["action"], "boot-good");

    // A required check failing while the node is still starting: exit 1.
    let starting = FakeHealth::new(node(NodeState::Starting, CheckStatus::Fail));
    let o = ctl(&starting, &["health"]).await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stdout(&o).starts_with("NODE          STARTING"), "{}", stdout(&o));
    assert!(stdout(&o).contains("\n3 checks, 1 failing.\n"), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_one_block_per_message_without_a_terminal() {
    let mut fake = FakeHealth::new(NodeHealth::default());
    fake.watch = vec![
        node(NodeState::Starting, CheckStatus::Pending),
        node(NodeState::Healthy, CheckStatus::Pass),
        node(NodeState::Degraded, CheckStatus::Fail),
    ];
    let o = ctl(&fake, &["health", "--watch", "--kind", "network"]).await;
    assert_eq!(code(&o), 1, "the last state shown is degraded: {}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains('\x1b'), "no screen clearing into a pipe: {out:?}");
    let nodes: Vec<&str> = out.lines().filter(|l| l.starts_with("NODE ")).collect();
    assert_eq!(
        nodes,
        [
            "NODE          STARTING (first round of checks)",
            "NODE          HEALTHY",
            "NODE          DEGRADED: network/gateway fails; remediation gave up",
        ],
        "{out}"
    );
    assert!(!out.contains("service/debvisor-agent"), "--kind filters: {out}");
    assert!(
        stderr(&o).contains("The agent ended the health stream."),
        "{}",
        stderr(&o)
    );

    let o = ctl(&fake, &["health", "--watch", "--json", "--history"]).await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let states: Vec<i64> = stdout(&o)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["state"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(states, [1, 2, 3]);
    let watches = fake.watches.lock().unwrap().clone();
    assert_eq!(
        watches,
        [
            WatchRequest { include_history: false },
            WatchRequest { include_history: true }
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn init_not_answering_says_what_to_check() {
    let mut fake = FakeHealth::new(NodeHealth::default());
    fake.down = true;
    for args in [&["health"][..], &["health", "--watch"][..]] {
        let o = ctl(&fake, args).await;
        assert_eq!(code(&o), 1);
        let err = stderr(&o);
        assert!(
            err.contains(
                "debvisor-init does not answer on /run/debvisor/init.sock; check `systemctl status debvisor-init`"
            ),
            "{err}"
        );
        assert!(!err.contains("Is the agent running?"), "{err}");
        assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    }
}
