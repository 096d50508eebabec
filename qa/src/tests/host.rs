//! Host tests: the release agent in simulation mode on 127.0.0.1 with mTLS,
//! and three kinds of client: a third-party one (Python grpcio, reflection
//! only), debvisorctl, and one whose certificate comes from another CA.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use debvisor_api::config::{ClientConfig, Context};
use debvisor_api::node::v1::GetStatusRequest;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use debvisor_api::tls::{MtlsError, connect_mtls};
use serde_json::Value;

use super::Ctx;
use crate::host_agent::{self, AgentOpts, HostAgent, TestPki};

/// The limit a node ships with; these tests stay far below it.
const RATE_LIMIT: (f64, u32) = (200.0, 400);
/// What one client program may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// The unit debvisorctl restarts (one of the simulated host's units).
const UNIT: &str = "debvisor-webui.service";

/// What a client program did.
pub(super) struct Output {
    pub(super) code: Option<i32>,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

/// Runs `cmd` with a time limit, keeping its output under `dir/<label>.*`.
pub(super) fn run(cmd: &mut Command, label: &str, dir: &Path) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("Cannot run {cmd:?}"))?;
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = pipe(child.stdout.take().map(|r| Box::new(r) as _));
    let err = pipe(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {} s", CLIENT_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = Output {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    let _ = std::fs::write(dir.join(format!("{label}.stdout")), &o.stdout);
    let _ = std::fs::write(dir.join(format!("{label}.stderr")), &o.stderr);
    Ok(o)
}

impl Output {
    /// Fails unless the program exited 0, quoting its stderr.
    pub(super) fn ok(self, what: &str) -> Result<Output> {
        if self.code != Some(0) {
            bail!(
                "{what} exited with {:?}: {}{}",
                self.code,
                self.stderr.trim(),
                self.stdout.trim()
            );
        }
        Ok(self)
    }
}

pub(super) fn agent_sim_clients(ctx: &Ctx) -> Result<()> {
    let python = ctx.paths.cache().join("pyvenv/bin/python");
    if !python.is_file() {
        bail!(
            "{} not found: run qa/setup-host.sh (it installs python3-venv and the pinned grpcio wheels)",
            python.display()
        );
    }
    let agent_bin = host_agent::release_binary(ctx.paths, "debvisor-agent", "debvisor-agent")?;
    let ctl = host_agent::release_binary(ctx.paths, "debvisorctl", "debvisorctl")?;
    let mut agent = HostAgent::start(
        &agent_bin,
        &ctx.dir.join("agent"),
        &AgentOpts {
            sim: true,
            rate_limit: RATE_LIMIT,
            system_bus: None,
            vmd_config: String::new(),
            real_vmd: false,
        },
    )?;
    let admin = agent.admin()?;
    ctx.rt.block_on(agent.wait_healthy(&admin, Duration::from_secs(30)))?;

    let res = python_client(ctx, &agent, &python)
        .context("The Python grpcio client (qa/python/reflect_client.py)")
        .and_then(|unit| debvisorctl(ctx, &admin, &ctl, &unit).context("debvisorctl"))
        .and_then(|()| foreign_ca(ctx, &agent).context("A client of another CA"));
    agent.check_running()?;
    res.map_err(|e| anyhow::anyhow!("{e:#}\nagent log ({}):\n{}", agent.log.display(), agent.log_tail(20)))
}

/// (a) Python grpcio, knowing nothing but the bundle: reflection, calls
/// with message classes built from the reflected descriptors, health per
/// service, an unknown API version. Returns the unit it restarted.
fn python_client(ctx: &Ctx, agent: &HostAgent, python: &Path) -> Result<String> {
    let bundle = ctx.dir.join("python-client.toml");
    ClientConfig::single("sim", agent.client("qa-python")?).save(&bundle)?;
    let script = ctx.paths.root.join("qa/python/reflect_client.py");
    let out = run(
        Command::new(python).arg(&script).arg("--config").arg(&bundle),
        "python",
        &ctx.dir,
    )?
    .ok("reflect_client.py")?;
    let v: Value = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("reflect_client.py printed no JSON object: {}", out.stdout.trim()))?;
    check_python(&v)?;
    Ok(v["restart"]["unit"].as_str().unwrap_or_default().to_string())
}

/// The assertions on reflect_client.py's JSON object.
fn check_python(v: &Value) -> Result<()> {
    let services: Vec<&str> = v["services"]
        .as_array()
        .context("No services list")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in debvisor_api::SUPPORTED_SERVICES
        .iter()
        .copied()
        .chain(["grpc.health.v1.Health"])
    {
        ensure!(
            services.contains(&want),
            "Reflection does not list {want}: {services:?}"
        );
    }
    ensure!(
        v["status"]["simulated"] == true,
        "GetStatus did not say simulated: {}",
        v["status"]
    );
    ensure!(
        v["status"]["hostname"].as_str().is_some_and(|h| !h.is_empty()),
        "GetStatus has no hostname: {}",
        v["status"]
    );
    let units = v["units"].as_array().context("No units list")?;
    ensure!(!units.is_empty(), "ListUnits returned no units");
    let restart = &v["restart"];
    ensure!(restart.is_object(), "No .service unit was listed to restart: {units:?}");
    ensure!(
        restart.get("error").is_none(),
        "Restart of {} failed: {}",
        restart["unit"],
        restart["error"]
    );
    for svc in ["".to_string()]
        .into_iter()
        .chain(debvisor_api::SUPPORTED_SERVICES.iter().map(|s| s.to_string()))
    {
        let h = &v["health"][&svc];
        // This agent runs no PXE provisioner: its provision service says so
        // (every call is UNAVAILABLE, saying how to enable one).
        let want = if svc == "debvisor.provision.v1.ProvisionService" {
            "NOT_SERVING"
        } else {
            "SERVING"
        };
        ensure!(h == want, "Health of {svc:?} is {h}, expected {want}");
    }
    // NodeHealthService/List with a kind filter and history, answered by
    // the simulated health source through the agent.
    let nh = &v["node_health"];
    ensure!(
        nh.get("error").is_none(),
        "NodeHealthService/List failed: {}",
        nh["error"]
    );
    ensure!(
        nh["state"] == "NODE_STATE_HEALTHY" && nh["gate"] == "GATE_STATE_GOOD",
        "NodeHealthService/List: expected a healthy node with a good boot: {nh}"
    );
    let checks = nh["checks"]
        .as_array()
        .context("NodeHealthService/List: no checks list")?;
    ensure!(
        !checks.is_empty(),
        "NodeHealthService/List returned no service checks: {nh}"
    );
    ensure!(
        checks
            .iter()
            .all(|c| c["kind"] == "service" && c["status"] == "CHECK_STATUS_PASS" && c["history"].as_u64() > Some(0)),
        "NodeHealthService/List kind=service include_history: every check should be a passing service check with history: {nh}"
    );
    let u = &v["unknown_method"];
    ensure!(
        u["code"] == "UNIMPLEMENTED",
        "/debvisor.node.v2.NodeService/GetStatus answered {u}, expected UNIMPLEMENTED"
    );
    ensure!(
        u["details"].as_str().is_some_and(|d| d.contains("debvisor.node.v1")),
        "The UNIMPLEMENTED answer does not name debvisor.node.v1: {u}"
    );
    Ok(())
}

/// Records of `audit query --json` output: an array, an object with
/// `records`, or one JSON object per line.
pub(super) fn audit_records(stdout: &str) -> Result<Vec<Value>> {
    if let Ok(v) = serde_json::from_str::<Value>(stdout.trim()) {
        return match v {
            Value::Array(a) => Ok(a),
            Value::Object(ref o) if o.get("records").is_some_and(Value::is_array) => {
                Ok(o["records"].as_array().cloned().unwrap_or_default())
            }
            other => Ok(vec![other]),
        };
    }
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("Not JSON: {l}")))
        .collect()
}

/// True when `records` has a successful Restart of `unit` by `actor`.
fn restarted_by(records: &[Value], unit: &str, actor: &str) -> bool {
    records
        .iter()
        .any(|r| r["action"] == "units.Restart" && r["target"] == unit && r["actor"] == actor && r["ok"] == true)
}

/// (b) debvisorctl with a config file, as admin. The audit log must also
/// name the Python client by its own certificate ("qa-python") for the
/// restart of `python_unit`.
fn debvisorctl(ctx: &Ctx, admin: &Context, ctl: &Path, python_unit: &str) -> Result<()> {
    let config = ctx.dir.join("debvisorconfig.toml");
    ClientConfig::single("sim", admin.clone()).save(&config)?;
    let ctl_run = |label: &str, args: &[&str]| -> Result<Output> {
        let mut c = Command::new(ctl);
        c.arg("--config").arg(&config).args(args);
        // Nothing from the developer's environment may pick another node.
        c.env_remove("DEBVISORCONFIG");
        run(&mut c, label, &ctx.dir)?.ok(&format!("debvisorctl {}", args.join(" ")))
    };
    let status = ctl_run("ctl-status", &["status", "--json"])?;
    let s: Value = serde_json::from_str(status.stdout.trim())
        .with_context(|| format!("status --json printed no JSON: {}", status.stdout.trim()))?;
    ensure!(s["simulated"] == true, "status --json does not say simulated: {s}");

    let health = ctl_run("ctl-health", &["health", "--json"])?;
    let h: Value = serde_json::from_str(health.stdout.trim())
        .with_context(|| format!("health --json printed no JSON: {}", health.stdout.trim()))?;
    ensure!(
        h["checks"].as_array().is_some_and(|c| c.len() > 1) && h["gate"]["slot"] == "A",
        "health --json: expected the simulated checks and boot gate: {h}"
    );

    ctl_run("ctl-restart", &["units", "restart", UNIT])?;

    let q = ctl_run("ctl-audit-query", &["audit", "query", "--json"])?;
    let records = audit_records(&q.stdout)?;
    ensure!(
        restarted_by(&records, UNIT, "admin"),
        "audit query shows no successful units.Restart of {UNIT} by actor \"admin\": {}",
        q.stdout.trim()
    );
    ensure!(
        restarted_by(&records, python_unit, "qa-python"),
        "audit query shows no successful units.Restart of {python_unit} by the Python client's identity \"qa-python\": {}",
        q.stdout.trim()
    );
    ctl_run("ctl-audit-verify", &["audit", "verify"])?;
    Ok(())
}

/// (c) A certificate of another CA is refused during the handshake, though
/// the client trusts the agent's CA.
fn foreign_ca(ctx: &Ctx, agent: &HostAgent) -> Result<()> {
    let other = TestPki::create(&ctx.dir.join("other-pki"))?;
    let theirs = other.client("intruder", agent.addr)?;
    let ours = agent.admin()?;
    let intruder = Context { ca: ours.ca, ..theirs };
    let res = ctx.rt.block_on(async {
        let ch = connect_mtls(&intruder).await?;
        // TLS 1.3: the verdict may only arrive with the first request.
        let r = NodeServiceClient::new(ch).get_status(GetStatusRequest {}).await;
        Ok::<_, MtlsError>(r.map(|_| ()))
    });
    let _ = std::fs::write(
        ctx.dir.join("foreign-ca.txt"),
        match &res {
            Err(e) => format!("connect_mtls: {e} ({e:?})\n"),
            Ok(r) => format!("GetStatus: {r:?}\n"),
        },
    );
    match res {
        Err(MtlsError::ClientRefused { .. }) => Ok(()),
        Err(e) => bail!("Expected the agent to refuse the client certificate, got: {e}"),
        Ok(Ok(())) => bail!("The agent answered GetStatus to a client certificate of another CA"),
        Ok(Err(status)) => {
            ensure!(
                status.code() == tonic::Code::Unavailable,
                "A client of another CA got {status}, expected a refused handshake"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_output_shapes_parse() {
        let a = audit_records(r#"[{"seq":1},{"seq":2}]"#).unwrap();
        assert_eq!(a.len(), 2);
        let o = audit_records(r#"{"records":[{"seq":1}],"next_page_token":""}"#).unwrap();
        assert_eq!(o[0]["seq"], 1);
        let l = audit_records("{\"seq\":1}\n{\"seq\":2}\n").unwrap();
        assert_eq!(l[1]["seq"], 2);
        assert!(audit_records("not json\n").is_err());
    }

    #[test]
    fn python_results_are_checked() {
        let good = serde_json::json!({
            "services": ["debvisor.audit.v1.AuditService", "debvisor.health.v1.NodeHealthService",
                "debvisor.config.v1.ConfigService",
                "debvisor.node.v1.NodeService", "debvisor.units.v1.UnitService", "debvisor.update.v1.UpdateService",
                "debvisor.provision.v1.ProvisionService", "debvisor.vm.v1.VmService",
                "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"],
            "status": {"hostname": "sim-node", "simulated": true},
            "units": ["a.service"],
            "restart": {"unit": "a.service", "result": "done"},
            "health": {"": "SERVING", "debvisor.node.v1.NodeService": "SERVING",
                "debvisor.units.v1.UnitService": "SERVING", "debvisor.audit.v1.AuditService": "SERVING",
                "debvisor.health.v1.NodeHealthService": "SERVING", "debvisor.config.v1.ConfigService": "SERVING",
                "debvisor.update.v1.UpdateService": "SERVING",
                "debvisor.provision.v1.ProvisionService": "NOT_SERVING",
                "debvisor.vm.v1.VmService": "SERVING"},
            "node_health": {"state": "NODE_STATE_HEALTHY", "gate": "GATE_STATE_GOOD",
                "checks": [{"name": "service/debvisor-agent", "kind": "service",
                    "status": "CHECK_STATUS_PASS", "history": 3}]},
            "unknown_method": {"code": "UNIMPLEMENTED", "details": "supported: debvisor.node.v1.NodeService"},
        });
        check_python(&good).unwrap();
        let mut bad = good.clone();
        bad["unknown_method"]["details"] = "nope".into();
        assert!(check_python(&bad).is_err());
        let mut bad = good.clone();
        bad["node_health"]["checks"][0]["kind"] = "dns".into();
        assert!(check_python(&bad).is_err(), "the kind filter must hold");
        let mut bad = good;
        bad["health"]["debvisor.audit.v1.AuditService"] = "NOT_SERVING".into();
        assert!(check_python(&bad).unwrap_err().to_string().contains("audit"));
    }
}
