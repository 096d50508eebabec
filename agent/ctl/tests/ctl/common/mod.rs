//! Small fakes of the three v1 services, served in-process by tonic on a
//! Unix socket or on TCP with mutual TLS, and a runner for the built
//! `debvisorctl`.

#![allow(dead_code)] // Each test binary uses part of this module.

use std::pin::Pin;
use std::process::Output;
use std::sync::{Arc, Mutex};

use debvisor_api::audit::v1::audit_service_server::{AuditService, AuditServiceServer};
use debvisor_api::audit::v1::{
    ExportChunk, ExportRequest, QueryRequest, QueryResponse, Record, RecordRequest, RecordResponse, VerifyRequest,
    VerifyResponse,
};
use debvisor_api::node::v1::node_service_server::{NodeService, NodeServiceServer};
use debvisor_api::node::v1::{
    GetStatusRequest, GetStatusResponse, LoadAverage, Memory, PowerRequest, PowerResponse, StatusDelta,
    WatchStatusRequest,
};
use debvisor_api::units::v1::unit_service_server::{UnitService, UnitServiceServer};
use debvisor_api::units::v1::{
    GetUnitRequest, ListUnitsRequest, ListUnitsResponse, LogEntry, StreamLogsRequest, Unit, UnitActionRequest,
    UnitActionResponse, UnitFileResponse,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the fakes were asked, for assertions.
#[derive(Debug, Default)]
pub struct Calls {
    /// `VERB NAME` of each unit action.
    pub actions: Vec<String>,
    /// `reboot:REASON` / `shutdown:REASON`.
    pub power: Vec<String>,
}

/// The fake agent: fixed answers, and a record of the mutating calls.
#[derive(Clone, Default)]
pub struct Fake {
    /// What was asked.
    pub calls: Arc<Mutex<Calls>>,
    /// The first bad record of the audit chain, if it is broken.
    pub broken_at: Option<i64>,
}

/// The status the fake reports.
pub fn status() -> GetStatusResponse {
    GetStatusResponse {
        hostname: "fake-node".into(),
        image_version: "1.2.3".into(),
        image_id: "debvisor".into(),
        booted_slot: "A".into(),
        uptime_seconds: 3_725.0,
        load: Some(LoadAverage {
            one: 0.5,
            five: 0.25,
            fifteen: 0.75,
        }),
        memory: Some(Memory {
            total_bytes: 8 << 30,
            available_bytes: 6 << 30,
            used_bytes: 2 << 30,
        }),
        disks: vec![],
        kernel: "6.12.0-test".into(),
        agent_version: "0.1.0".into(),
        simulated: true,
        sampled_at_unix_ms: 1_746_100_800_000,
        cpu: None,
        interfaces: vec![],
    }
}

fn unit(name: &str, active: &str, sub: &str) -> Unit {
    Unit {
        name: name.into(),
        description: format!("The {name} unit"),
        load_state: "loaded".into(),
        active_state: active.into(),
        sub_state: sub.into(),
        unit_file_state: "enabled".into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl NodeService for Fake {
    async fn get_status(&self, _: Request<GetStatusRequest>) -> Result<Response<GetStatusResponse>, Status> {
        Ok(Response::new(status()))
    }

    type WatchStatusStream = BoxStream<StatusDelta>;

    async fn watch_status(&self, _: Request<WatchStatusRequest>) -> Result<Response<Self::WatchStatusStream>, Status> {
        let deltas = vec![
            Ok(StatusDelta {
                status: Some(status()),
                full: true,
                changed: vec![],
            }),
            Ok(StatusDelta {
                status: Some(GetStatusResponse {
                    uptime_seconds: 3_726.0,
                    ..Default::default()
                }),
                full: false,
                changed: vec!["uptime_seconds".into()],
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(deltas))))
    }

    async fn reboot(&self, req: Request<PowerRequest>) -> Result<Response<PowerResponse>, Status> {
        self.calls
            .lock()
            .unwrap()
            .power
            .push(format!("reboot:{}", req.into_inner().reason));
        Ok(Response::new(PowerResponse {
            target: "reboot.target".into(),
        }))
    }

    async fn shutdown(&self, req: Request<PowerRequest>) -> Result<Response<PowerResponse>, Status> {
        self.calls
            .lock()
            .unwrap()
            .power
            .push(format!("shutdown:{}", req.into_inner().reason));
        Ok(Response::new(PowerResponse {
            target: "poweroff.target".into(),
        }))
    }
}

impl Fake {
    fn action(&self, verb: &str, req: Request<UnitActionRequest>) -> Result<Response<UnitActionResponse>, Status> {
        let name = req.into_inner().name;
        self.calls.lock().unwrap().actions.push(format!("{verb} {name}"));
        if !name.contains('.') {
            return Err(Status::invalid_argument(format!(
                "name: {name:?} has no unit type suffix"
            )));
        }
        Ok(Response::new(UnitActionResponse {
            job_id: 7,
            result: "done".into(),
            unit: Some(unit(&name, "active", "running")),
        }))
    }
}

#[tonic::async_trait]
impl UnitService for Fake {
    async fn list_units(&self, req: Request<ListUnitsRequest>) -> Result<Response<ListUnitsResponse>, Status> {
        let req = req.into_inner();
        let mut units = vec![
            unit("debvisor-agent.service", "active", "running"),
            unit("ssh.service", "active", "running"),
        ];
        if req.include_inactive {
            units.push(unit("zz-idle.service", "inactive", "dead"));
        }
        Ok(Response::new(ListUnitsResponse { units }))
    }

    async fn get_unit(&self, req: Request<GetUnitRequest>) -> Result<Response<Unit>, Status> {
        let name = req.into_inner().name;
        if name == "ssh.service" {
            Ok(Response::new(unit(&name, "active", "running")))
        } else {
            Err(Status::not_found(format!("unit {name} is not loaded")))
        }
    }

    async fn start(&self, req: Request<UnitActionRequest>) -> Result<Response<UnitActionResponse>, Status> {
        self.action("start", req)
    }

    async fn stop(&self, req: Request<UnitActionRequest>) -> Result<Response<UnitActionResponse>, Status> {
        self.action("stop", req)
    }

    async fn restart(&self, req: Request<UnitActionRequest>) -> Result<Response<UnitActionResponse>, Status> {
        self.action("restart", req)
    }

    async fn enable(&self, req: Request<UnitActionRequest>) -> Result<Response<UnitFileResponse>, Status> {
        let name = req.into_inner().name;
        Ok(Response::new(UnitFileResponse {
            changes: vec![],
            unit: Some(unit(&name, "active", "running")),
        }))
    }

    async fn disable(&self, req: Request<UnitActionRequest>) -> Result<Response<UnitFileResponse>, Status> {
        self.enable(req).await
    }

    type StreamLogsStream = BoxStream<LogEntry>;

    async fn stream_logs(&self, req: Request<StreamLogsRequest>) -> Result<Response<Self::StreamLogsStream>, Status> {
        let req = req.into_inner();
        let n = if req.lines == 0 { 100 } else { req.lines };
        let entries: Vec<Result<LogEntry, Status>> = (0..n)
            .map(|i| {
                Ok(LogEntry {
                    time_unix_us: 1_746_100_800_000_000 + u64::from(i) * 1_000_000,
                    unit: "ssh.service".into(),
                    priority: 6,
                    identifier: "sshd".into(),
                    pid: 812,
                    message: format!("message {i}"),
                    cursor: format!("c{i}"),
                    hostname: "fake-node".into(),
                })
            })
            .collect();
        let stream = tokio_stream::iter(entries);
        if req.follow {
            // Stays open like a journal that nobody writes to.
            Ok(Response::new(Box::pin(stream.chain(tokio_stream::pending()))))
        } else {
            Ok(Response::new(Box::pin(stream)))
        }
    }
}

#[tonic::async_trait]
impl AuditService for Fake {
    async fn query(&self, _: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        Ok(Response::new(QueryResponse {
            records: vec![Record {
                seq: 1,
                time_unix_ms: 1_746_100_800_000,
                actor: "uid:0".into(),
                source: "unix:pid=1".into(),
                action: "units.Restart".into(),
                target: "ssh.service".into(),
                ok: true,
                ..Default::default()
            }],
            next_page_token: String::new(),
            total_matching: 1,
        }))
    }

    /// debvisorctl never records (only the console does).
    async fn record(&self, _: Request<RecordRequest>) -> Result<Response<RecordResponse>, Status> {
        Err(Status::permission_denied("only the console records audit entries"))
    }

    type ExportStream = BoxStream<ExportChunk>;

    async fn export(&self, _: Request<ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        let chunks = vec![
            Ok(ExportChunk {
                data: b"{\"seq\":1}\n".to_vec(),
            }),
            Ok(ExportChunk {
                data: b"{\"seq\":2}\n".to_vec(),
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn verify(&self, _: Request<VerifyRequest>) -> Result<Response<VerifyResponse>, Status> {
        Ok(Response::new(match self.broken_at {
            None => VerifyResponse {
                ok: true,
                records: 12,
                head_seq: 12,
                head_hash: "ab".repeat(32),
                ..Default::default()
            },
            Some(seq) => VerifyResponse {
                ok: false,
                records: 12,
                problem: format!("record #{seq}: hash does not match its fields"),
                first_bad_seq: seq,
                ..Default::default()
            },
        }))
    }
}

/// A fake agent serving on `<tempdir>/agent.sock` until dropped.
pub struct Agent {
    /// Holds the socket; free for other files.
    pub dir: tempfile::TempDir,
    /// The services' state.
    pub fake: Fake,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Agent {
    /// Starts serving `fake` on a Unix socket.
    pub async fn start(fake: Fake) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let router = tonic::transport::Server::builder()
            .add_service(NodeServiceServer::new(fake.clone()))
            .add_service(UnitServiceServer::new(fake.clone()))
            .add_service(AuditServiceServer::new(fake.clone()));
        let server = tokio::spawn(async move {
            router.serve_with_incoming(incoming).await.unwrap();
        });
        Agent { dir, fake, server }
    }

    /// Starts serving `fake` on 127.0.0.1 with mutual TLS: the server
    /// presents `cert`/`key` and requires a client certificate from
    /// `client_ca`. Returns the agent and its address.
    pub async fn start_tls(fake: Fake, cert: &str, key: &str, client_ca: &str) -> (Agent, String) {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let tls = debvisor_api::tls::server_tls(cert.as_bytes(), key.as_bytes(), client_ca.as_bytes()).unwrap();
        let router = tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(NodeServiceServer::new(fake.clone()))
            .add_service(UnitServiceServer::new(fake.clone()))
            .add_service(AuditServiceServer::new(fake.clone()));
        let server = tokio::spawn(async move {
            router.serve_with_incoming(incoming).await.unwrap();
        });
        (Agent { dir, fake, server }, addr)
    }

    /// Runs `debvisorctl --socket <ours> ARGS` with stdin closed.
    pub async fn run(&self, args: &[&str]) -> Output {
        run_with_socket(&self.dir.path().join("agent.sock"), args).await
    }
}

/// Runs `debvisorctl --socket SOCKET ARGS`.
pub async fn run_with_socket(socket: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["--socket".to_string(), socket.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    run(&all, &[]).await
}

/// Runs `debvisorctl ARGS` with stdin closed, none of our environment
/// variables but `env`, no colours and UTC.
pub async fn run(args: &[String], env: &[(&str, &str)]) -> Output {
    command(args, env).output().await.unwrap()
}

/// The command that [`run`] runs, to spawn it instead.
pub fn command(args: &[String], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_debvisorctl"));
    cmd.args(args)
        .env_remove("DEBVISORCONFIG")
        .env_remove("DEBVISOR_ENDPOINT")
        .env_remove("DEBVISOR_FINGERPRINT")
        .env_remove("XDG_CONFIG_HOME")
        .env("NO_COLOR", "1")
        .env("TZ", "UTC")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    cmd
}

/// The real agent's socket bound in `dir` (`agent.sock`) and backends of
/// fakes (host `host`, units, journal, health) with an in-memory audit
/// log, no provisioner and no VMs: tests set what they need, then serve.
pub async fn sim_agent(
    dir: &std::path::Path,
    host: &str,
) -> (debvisor_agent::server::Bound, debvisor_agent::server::Backends) {
    use debvisor_agent::fakes::{FakeHost, SimHealth};
    use debvisor_systemd::fakes::{FakeJournal, FakeUnits};
    let serve = debvisor_agent::server::ServeConfig {
        socket: dir.join("agent.sock"),
        tls: None,
        metrics: None,
    };
    let bound = debvisor_agent::server::bind(&serve).await.unwrap();
    let journal = Arc::new(FakeJournal::new());
    let backends = debvisor_agent::server::Backends {
        host: Arc::new(FakeHost::new(host)),
        units: Arc::new(FakeUnits::new().with_journal(journal.clone())),
        journal,
        audit: debvisor_audit::AuditLog::open_in_memory().await.unwrap(),
        health: Arc::new(SimHealth::new()),
        provision: None,
        vm: None,
    };
    (bound, backends)
}

/// Sends Ctrl-C (SIGINT) to `child` and waits (up to 20 s) for it to end;
/// its exit code.
pub async fn interrupt(child: &mut tokio::process::Child) -> Option<i32> {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("still running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("exits within 20 s of Ctrl-C")
        .unwrap()
        .code()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The exit code.
pub fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}
