//! `debvisor.config.v1.ConfigService`: the machine config the node runs with
//! (secrets redacted) and the debvisorctl admin client bundle.
//!
//! The agent does not validate the machine config again: debvisor-init
//! decided which config is in effect and reports its digest and the error of
//! a refused one through the health service. The agent reads the copy on the
//! data partition and the last good copy, and shows the one whose digest is
//! the one init reports. In `--sim` a sample config from `recipes/machine/`
//! and a bundle that holds no credential are served, both labelled.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use debvisor_api::config_api::v1::config_service_server::ConfigService;
use debvisor_api::config_api::v1::{
    ClientBundle, ConfigSource, GetClientBundleRequest, GetMachineConfigRequest, MachineConfigState,
};
use debvisor_api::health::v1::ListRequest;
use debvisor_api::machine::MachineConfig;
use debvisor_api::paths;
use tonic::{Request, Response, Status};

use crate::audit_service::Auditor;
use crate::auth::Caller;
use crate::health_service::HealthSource;
use crate::host::HostFacts;

/// The audit action of a bundle download.
pub const BUNDLE_ACTION: &str = "config.bundle.download";

/// What replaces a secret value in the TOML shown.
pub const REDACTED: &str = "<redacted>";

/// The sample config an agent in `--sim` serves.
pub const SIM_CONFIG: &str = include_str!("../../../recipes/machine/worker.toml");
/// Where [`SIM_CONFIG`] comes from in the repository.
pub const SIM_CONFIG_NAME: &str = "recipes/machine/worker.toml (simulated)";

/// The files the service reads on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFiles {
    /// The copy on the data partition ([`paths::MACHINE_CONFIG`]).
    pub machine_config: PathBuf,
    /// The last good copy ([`paths::MACHINE_CONFIG_LAST_GOOD`]).
    pub last_good: PathBuf,
    /// The admin client bundle written at first boot.
    pub client_bundle: PathBuf,
}

impl ConfigFiles {
    /// The node's paths.
    pub fn production() -> Self {
        Self {
            machine_config: PathBuf::from(paths::MACHINE_CONFIG),
            last_good: PathBuf::from(paths::MACHINE_CONFIG_LAST_GOOD),
            client_bundle: Path::new(paths::PKI_DIR).join("clients/admin.toml"),
        }
    }
}

/// Where the answers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// Files on the node.
    Files(ConfigFiles),
    /// `--sim`: a sample config and a bundle without credentials.
    Simulated,
}

/// The gRPC service.
#[derive(Clone)]
pub struct ConfigApi {
    origin: ConfigOrigin,
    health: Arc<dyn HealthSource>,
    host: Arc<dyn HostFacts>,
    audit: Auditor,
}

impl ConfigApi {
    /// The service over `origin`, asking `health` (debvisor-init) which
    /// config is in effect and `host` for the host name.
    pub fn new(origin: ConfigOrigin, health: Arc<dyn HealthSource>, host: Arc<dyn HostFacts>, audit: Auditor) -> Self {
        Self {
            origin,
            health,
            host,
            audit,
        }
    }

    fn hostname(&self) -> String {
        self.host.status().map(|s| s.hostname).unwrap_or_default()
    }

    async fn machine_config(&self, files: &ConfigFiles) -> MachineConfigState {
        let mut state = MachineConfigState {
            hostname: self.hostname(),
            ..Default::default()
        };
        let init = self
            .health
            .list(ListRequest {
                include_history: false,
                kind: "config".into(),
            })
            .await;
        let (digest, refused) = match init {
            Ok(h) => (Some(h.config_digest), h.config_error),
            Err(e) => {
                state.warning = format!(
                    "debvisor-init did not say which config is in effect ({}); showing the file on the data partition",
                    crate::error_chain(&e)
                );
                (None, String::new())
            }
        };
        state.refused_error = refused;
        let data = read_text(&files.machine_config);
        let last_good = read_text(&files.last_good);
        let pick = |source: ConfigSource, path: &Path, text: &str, state: &mut MachineConfigState| {
            state.source = source as i32;
            state.path = path.display().to_string();
            let (shown, keys) = redact(text);
            state.toml = shown;
            state.redacted_keys = keys;
        };
        match digest {
            Some(d) if d.is_empty() => {
                state.source = ConfigSource::Defaults as i32;
            }
            Some(d) => {
                state.digest = d.clone();
                match (&data, &last_good) {
                    (Some(t), _) if digest_of(t).as_deref() == Some(d.as_str()) => {
                        pick(ConfigSource::DataPartition, &files.machine_config, t, &mut state)
                    }
                    (_, Some(t)) if digest_of(t).as_deref() == Some(d.as_str()) => {
                        pick(ConfigSource::LastGood, &files.last_good, t, &mut state)
                    }
                    (Some(t), _) => {
                        state.warning = format!(
                            "{} changed after debvisor-init applied config {d}; `systemctl reload debvisor-init` applies it",
                            files.machine_config.display()
                        );
                        pick(ConfigSource::DataPartition, &files.machine_config, t, &mut state)
                    }
                    (None, _) => {
                        state.warning = format!(
                            "the node runs with config {d}, but neither {} nor {} holds it any more",
                            files.machine_config.display(),
                            files.last_good.display()
                        );
                        state.source = ConfigSource::Defaults as i32;
                    }
                }
            }
            None => match (&data, &last_good) {
                (Some(t), _) => pick(ConfigSource::DataPartition, &files.machine_config, t, &mut state),
                (None, Some(t)) => pick(ConfigSource::LastGood, &files.last_good, t, &mut state),
                (None, None) => state.source = ConfigSource::Defaults as i32,
            },
        }
        state
    }

    fn simulated_config(&self) -> MachineConfigState {
        let (toml, redacted_keys) = redact(SIM_CONFIG);
        MachineConfigState {
            toml,
            source: ConfigSource::Simulated as i32,
            path: SIM_CONFIG_NAME.into(),
            digest: digest_of(SIM_CONFIG).unwrap_or_default(),
            refused_error: String::new(),
            redacted_keys,
            warning: "simulation mode: a sample config, not a node's".into(),
            hostname: self.hostname(),
        }
    }

    async fn bundle(&self, caller: &Caller) -> Result<(String, ClientBundle), Status> {
        if !may_download_bundle(caller) {
            return Err(Status::permission_denied(format!(
                "The admin client bundle is given only to root on the node's socket and to the console for a \
                 signed-in admin, not to {}",
                caller.actor
            )));
        }
        let filename = bundle_filename(&self.hostname());
        match &self.origin {
            ConfigOrigin::Simulated => Ok((
                "simulated".into(),
                ClientBundle {
                    toml: simulated_bundle(&self.hostname()),
                    filename,
                    simulated: true,
                },
            )),
            ConfigOrigin::Files(f) => {
                let text = std::fs::read_to_string(&f.client_bundle).map_err(|e| {
                    let msg = format!(
                        "Cannot read the admin client bundle {}: {e}; debvisor-init writes it at first boot",
                        f.client_bundle.display()
                    );
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Status::not_found(msg)
                    } else {
                        Status::unavailable(msg)
                    }
                })?;
                Ok((
                    f.client_bundle.display().to_string(),
                    ClientBundle {
                        toml: text,
                        filename,
                        simulated: false,
                    },
                ))
            }
        }
    }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn get_machine_config(
        &self,
        req: Request<GetMachineConfigRequest>,
    ) -> Result<Response<MachineConfigState>, Status> {
        Caller::of(&req)?;
        let state = match &self.origin {
            ConfigOrigin::Simulated => self.simulated_config(),
            ConfigOrigin::Files(f) => self.machine_config(f).await,
        };
        Ok(Response::new(state))
    }

    async fn get_client_bundle(&self, req: Request<GetClientBundleRequest>) -> Result<Response<ClientBundle>, Status> {
        let caller = Caller::of(&req)?;
        let (target, result) = match self.bundle(&caller).await {
            Ok((target, b)) => (target, Ok(b)),
            Err(s) => (bundle_target(&self.origin), Err(s)),
        };
        self.audit
            .record(&caller, BUNDLE_ACTION, &target, result)
            .await
            .map(Response::new)
    }
}

fn bundle_target(origin: &ConfigOrigin) -> String {
    match origin {
        ConfigOrigin::Simulated => "simulated".into(),
        ConfigOrigin::Files(f) => f.client_bundle.display().to_string(),
    }
}

/// Root on the local socket, or the console acting for one of its users
/// (the console checks that user's role before it asks).
pub fn may_download_bundle(caller: &Caller) -> bool {
    caller.actor == "uid:0" || caller.actor.strip_prefix("console:").is_some_and(|u| !u.is_empty())
}

/// `debvisor-<hostname>.toml`, with anything but letters, digits, `.`, `-`
/// and `_` in the host name replaced by `-`.
pub fn bundle_filename(hostname: &str) -> String {
    let clean: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_matches('.');
    if clean.is_empty() {
        "debvisor-node.toml".into()
    } else {
        format!("debvisor-{clean}.toml")
    }
}

/// A bundle in debvisorctl's format that holds no credential, for `--sim`.
fn simulated_bundle(hostname: &str) -> String {
    format!(
        "# SIMULATED debvisorctl bundle from an agent in --sim mode ({hostname}).\n\
         # It holds no certificate or key and connects to nothing; a real node\n\
         # serves its admin bundle (/var/lib/debvisor/pki/clients/admin.toml).\n\
         context = \"simulated\"\n\n\
         [contexts.simulated]\n\
         endpoints = [\"127.0.0.1:{port}\"]\n\
         server_name = \"debvisor-node\"\n\
         ca = \"SIMULATED: no CA certificate\"\n\
         crt = \"SIMULATED: no client certificate\"\n\
         key = \"SIMULATED: no private key\"\n",
        port = paths::AGENT_TLS_PORT
    )
}

fn read_text(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("Cannot read {}: {e}", path.display());
            None
        }
    }
}

/// The digest debvisor-init gives the config in `text`, if it parses.
fn digest_of(text: &str) -> Option<String> {
    MachineConfig::from_toml(text).ok().map(|c| c.digest())
}

/// Whether a key's value is a secret: `password_hash`, `join_token`, and
/// any key whose name contains `password`, `secret`, `token`, `psk` or
/// `private_key`. SSH authorized keys are public and are shown.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "psk", "private_key"]
        .iter()
        .any(|s| k.contains(s))
}

/// `text` with the value of every secret key ([`is_secret_key`]) replaced
/// by `"<redacted>"`, keeping comments and layout, and the dotted paths of
/// the keys redacted. Values are replaced line by line (`key = value`,
/// including multi-line strings); the result is then parsed and checked, and
/// if a secret is still there (an inline table, a dotted key) nothing of the
/// file is shown but a comment saying so.
pub fn redact(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut table = String::new();
    let mut keys = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(header) = trimmed.strip_prefix('[') {
            let name = header.trim_start_matches('[');
            if let Some(end) = name.find(']') {
                table = name[..end].trim().to_string();
            }
        }
        let Some((lhs, rhs)) = trimmed.split_once('=') else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let key = lhs.trim().trim_matches(|c| c == '"' || c == '\'');
        if trimmed.starts_with('[') || trimmed.starts_with('#') || !is_secret_key(key) {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let indent = &line[..line.len() - trimmed.len()];
        out.push_str(&format!("{indent}{} = \"{REDACTED}\"\n", lhs.trim()));
        keys.push(if table.is_empty() {
            key.to_string()
        } else {
            format!("{table}.{key}")
        });
        // A multi-line string goes on until its closing delimiter.
        let value = rhs.trim_start();
        for delim in ["\"\"\"", "'''"] {
            if let Some(rest) = value.strip_prefix(delim)
                && !rest.contains(delim)
            {
                for more in lines.by_ref() {
                    if more.contains(delim) {
                        break;
                    }
                }
            }
        }
    }
    if !text.ends_with('\n') {
        out.pop();
    }
    match out.parse::<toml::Table>() {
        Ok(t) if !table_holds_secret(&t) => (out, keys),
        Ok(_) => (
            "# This machine config holds a secret in a form that cannot be redacted line by line\n\
             # (an inline table or a dotted key); it is not shown.\n"
                .into(),
            keys,
        ),
        // Not TOML (a refused config): what was redacted line by line.
        Err(_) => (out, keys),
    }
}

fn table_holds_secret(t: &toml::Table) -> bool {
    t.iter()
        .any(|(k, v)| (is_secret_key(k) && !matches!(v, toml::Value::String(s) if s == REDACTED)) || holds_secret(v))
}

fn holds_secret(v: &toml::Value) -> bool {
    match v {
        toml::Value::Table(t) => table_holds_secret(t),
        toml::Value::Array(a) => a.iter().any(holds_secret),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health_service::HealthError;

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        let text = "# admin\nversion = 1\n[admin]\npassword_hash = '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA'\nssh_authorized_keys = [\"ssh-ed25519 AAAA me\"]\n[cluster]\ncontroller = \"c:7443\"\n  join_token = \"\"\"\nK7x2-Qm9p\n\"\"\"\n";
        let (shown, keys) = redact(text);
        assert_eq!(keys, ["admin.password_hash", "cluster.join_token"]);
        assert!(!shown.contains("argon2id"), "{shown}");
        assert!(!shown.contains("K7x2"), "{shown}");
        assert!(shown.contains("ssh-ed25519 AAAA me"), "{shown}");
        assert!(shown.contains("# admin\n"), "{shown}");
        assert!(shown.contains("  join_token = \"<redacted>\"\n"), "{shown}");
        shown.parse::<toml::Table>().unwrap();
    }

    #[test]
    fn secrets_that_cannot_be_redacted_hide_the_file() {
        // (config, a note the page must show instead): inline tables and
        // dotted keys are not redacted line by line.
        let cases = [
            ("version = 1\nadmin = { password_hash = \"x\" }\n", Some("not shown")),
            ("version = 1\nadmin.password_hash = \"x\"\n", None),
        ];
        for (text, note) in cases {
            let (shown, _) = redact(text);
            assert!(!shown.contains("\"x\""), "{text:?} shows the secret: {shown}");
            if let Some(note) = note {
                assert!(shown.contains(note), "{text:?} lacks {note:?}: {shown}");
            }
        }
    }

    #[test]
    fn the_sim_sample_parses_and_hides_its_token() {
        assert!(digest_of(SIM_CONFIG).is_some());
        let (shown, keys) = redact(SIM_CONFIG);
        assert_eq!(keys, ["cluster.join_token"]);
        assert!(!shown.contains("K7x2"));
    }

    #[test]
    fn bundle_file_names_and_callers() {
        assert_eq!(bundle_filename("edge-7.example"), "debvisor-edge-7.example.toml");
        assert_eq!(bundle_filename("../x y"), "debvisor--x-y.toml");
        assert_eq!(bundle_filename(""), "debvisor-node.toml");
        let c = |a: &str| Caller {
            actor: a.into(),
            source: "unix".into(),
        };
        assert!(may_download_bundle(&c("uid:0")));
        assert!(may_download_bundle(&c("console:admin")));
        assert!(!may_download_bundle(&c("console:")));
        assert!(!may_download_bundle(&c("uid:1000")));
        assert!(!may_download_bundle(&c("admin")));
    }

    struct FixedHealth(Result<(String, String), ()>);

    #[tonic::async_trait]
    impl HealthSource for FixedHealth {
        async fn list(&self, _: ListRequest) -> Result<debvisor_api::health::v1::NodeHealth, HealthError> {
            match &self.0 {
                Ok((digest, error)) => Ok(debvisor_api::health::v1::NodeHealth {
                    config_digest: digest.clone(),
                    config_error: error.clone(),
                    ..Default::default()
                }),
                Err(()) => Err(HealthError::InitUnreachable {
                    path: "/run/debvisor/init.sock".into(),
                    detail: "connection refused".into(),
                }),
            }
        }
        async fn watch(
            &self,
            _: debvisor_api::health::v1::WatchRequest,
        ) -> Result<crate::health_service::HealthStream, HealthError> {
            unreachable!("not used")
        }
    }

    fn req<T>(msg: T, actor: &str) -> Request<T> {
        let mut r = Request::new(msg);
        r.extensions_mut().insert(Caller {
            actor: actor.into(),
            source: "unix:pid=1".into(),
        });
        r
    }

    const GOOD: &str = "version = 1\n[node]\nhostname = \"good\"\n";
    const NEWER: &str = "version = 1\n[node]\nhostname = \"newer\"\n";

    async fn api(dir: &Path, health: Result<(String, String), ()>) -> (ConfigApi, debvisor_audit::AuditLog) {
        let audit = debvisor_audit::AuditLog::open_in_memory().await.unwrap();
        let files = ConfigFiles {
            machine_config: dir.join("machine.toml"),
            last_good: dir.join("machine.last-good.toml"),
            client_bundle: dir.join("admin.toml"),
        };
        let api = ConfigApi::new(
            ConfigOrigin::Files(files),
            Arc::new(FixedHealth(health)),
            Arc::new(crate::fakes::FakeHost::new("edge-7")),
            Auditor::new(audit.clone()),
        );
        (api, audit)
    }

    #[tokio::test]
    async fn the_config_in_effect_is_the_one_init_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("machine.toml"), NEWER).unwrap();
        std::fs::write(dir.path().join("machine.last-good.toml"), GOOD).unwrap();

        // init applied the data partition's copy.
        let (a, _) = api(dir.path(), Ok((digest_of(NEWER).unwrap(), String::new()))).await;
        let s = a
            .get_machine_config(req(GetMachineConfigRequest {}, "uid:0"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.source(), ConfigSource::DataPartition);
        assert_eq!(s.toml, NEWER);
        assert_eq!(s.hostname, "edge-7");
        assert!(s.warning.is_empty(), "{}", s.warning);

        // init refused it and runs on the last good one.
        let err = "network.vlans[0].id = 5000: must be 1..=4094".to_string();
        let (a, _) = api(dir.path(), Ok((digest_of(GOOD).unwrap(), err.clone()))).await;
        let s = a
            .get_machine_config(req(GetMachineConfigRequest {}, "uid:0"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.source(), ConfigSource::LastGood);
        assert_eq!(s.toml, GOOD);
        assert_eq!(s.refused_error, err);
        assert_eq!(s.path, dir.path().join("machine.last-good.toml").display().to_string());

        // Defaults, and init not answering.
        let (a, _) = api(dir.path(), Ok((String::new(), String::new()))).await;
        let s = a
            .get_machine_config(req(GetMachineConfigRequest {}, "uid:0"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.source(), ConfigSource::Defaults);
        assert!(s.toml.is_empty());
        let (a, _) = api(dir.path(), Err(())).await;
        let s = a
            .get_machine_config(req(GetMachineConfigRequest {}, "uid:0"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.source(), ConfigSource::DataPartition);
        assert!(s.warning.contains("debvisor-init did not say"), "{}", s.warning);
    }

    #[tokio::test]
    async fn the_bundle_is_for_root_and_the_console_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let (a, audit) = api(dir.path(), Err(())).await;
        let s = a
            .get_client_bundle(req(GetClientBundleRequest {}, "console:alice"))
            .await
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(s.message().contains("admin.toml"), "{}", s.message());

        std::fs::write(dir.path().join("admin.toml"), "context = \"n\"\n").unwrap();
        let b = a
            .get_client_bundle(req(GetClientBundleRequest {}, "console:alice"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(b.toml, "context = \"n\"\n");
        assert_eq!(b.filename, "debvisor-edge-7.toml");
        assert!(!b.simulated);
        let s = a
            .get_client_bundle(req(GetClientBundleRequest {}, "uid:1000"))
            .await
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);

        let page = audit.query(&Default::default()).await.unwrap();
        let rows: Vec<_> = page
            .records
            .iter()
            .map(|e| (e.actor.as_str(), e.action.as_str()))
            .collect();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!(rows.iter().all(|(_, action)| *action == BUNDLE_ACTION));
        assert!(rows.contains(&("console:alice", BUNDLE_ACTION)));
        assert!(rows.contains(&("uid:1000", BUNDLE_ACTION)));
    }
}
