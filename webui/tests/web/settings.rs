//! The settings page: the machine config (from the agent's ConfigService,
//! secrets redacted, escaped), the refused config's error, and the admin
//! client bundle download (POST with CSRF, attachment, no-store, audited as
//! `config.bundle.download` by `console:USER`), checked per role.

use crate::support;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use debvisor_agent::config::AgentConfig;
use debvisor_agent::config_service::{ConfigFiles, ConfigOrigin};
use debvisor_agent::fakes::FakeHost;
use debvisor_agent::health_service::{HealthError, HealthSource, HealthStream};
use debvisor_agent::server::{self, Backends, ServeConfig};
use debvisor_api::health::v1::{ListRequest, NodeHealth, WatchRequest};
use debvisor_audit::{AuditLog, Query};
use debvisor_systemd::fakes::{FakeJournal, FakeUnits};
use debvisor_webui::agent::GrpcNodeSource;
use debvisor_webui::fakes::ManualClock;
use debvisor_webui::roles::Role;
use debvisor_webui::{AppState, router};
use support::{Console, PASSWORD, get, hash, post, sign_in, sign_in_as, temp_dir};

async fn bundle_records(audit: &AuditLog) -> Vec<(String, bool)> {
    let q = Query {
        action: Some("config.bundle.download".into()),
        ..Query::default()
    };
    let page = audit.query(&q).await.unwrap();
    page.records.into_iter().map(|r| (r.actor, r.ok)).collect()
}

#[tokio::test]
async fn admin_sees_the_simulated_config_redacted_and_downloads_the_bundle() {
    let c = Console::with_agent().await;
    let cookies = sign_in(&c.app).await;
    let page = get(&c.app, "/settings", &cookies).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("simulated sample"), "{}", page.body);
    assert!(
        page.body.contains("hostname = &#34;worker-07.edge.example&#34;"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("join_token = &#34;&#60;redacted&#62;&#34;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("K7x2"), "the join token must not reach the page");
    assert!(page.body.contains("cluster.join_token"), "the redacted keys are named");
    assert!(
        page.body.contains("action=\"/settings/client-bundle\""),
        "{}",
        page.body
    );
    let csrf = page.csrf_field();

    let file = post(
        &c.app,
        "192.0.2.10",
        "/settings/client-bundle",
        &cookies,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(file.status, StatusCode::OK, "{}", file.body);
    assert_eq!(
        file.header(header::CONTENT_DISPOSITION),
        "attachment; filename=\"debvisor-edge-node-7.toml\""
    );
    assert_eq!(file.header(header::CACHE_CONTROL), "no-store");
    assert!(file.header(header::CONTENT_TYPE).starts_with("application/toml"));
    assert!(file.body.contains("SIMULATED"), "{}", file.body);
    assert!(file.body.contains("[contexts.simulated]"), "{}", file.body);
    assert_eq!(
        bundle_records(&c.agent().audit).await,
        [("console:admin".to_string(), true)]
    );
}

#[tokio::test]
async fn the_download_needs_the_csrf_token_and_is_not_a_get() {
    let c = Console::with_agent().await;
    let cookies = sign_in(&c.app).await;
    let none = post(&c.app, "192.0.2.10", "/settings/client-bundle", &cookies, &[]).await;
    assert_eq!(none.status, StatusCode::FORBIDDEN);
    let wrong = post(
        &c.app,
        "192.0.2.10",
        "/settings/client-bundle",
        &cookies,
        &[("csrf", &"0".repeat(64))],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(!wrong.body.contains("SIMULATED"));
    let by_get = get(&c.app, "/settings/client-bundle", &cookies).await;
    assert_ne!(by_get.status, StatusCode::OK);
    assert!(!by_get.body.contains("SIMULATED"));
    assert!(
        bundle_records(&c.agent().audit).await.is_empty(),
        "nothing reached the agent"
    );
    let anonymous = get(&c.app, "/settings", "").await;
    assert_ne!(anonymous.status, StatusCode::OK);
}

/// A console in front of the agent socket in `dir`, with a user of `role`.
async fn console_with_user(dir: &Path, user: &str, role: Role) -> Router {
    std::fs::write(dir.join("admin.argon2"), hash(PASSWORD)).unwrap();
    let clock = Arc::new(ManualClock::new());
    let state = AppState::with_clock(
        Arc::new(GrpcNodeSource::new(dir.join("agent.sock"))),
        dir.join("admin.argon2"),
        clock,
    );
    state
        .store()
        .create_user(&user.parse().unwrap(), role, &hash(PASSWORD))
        .await
        .unwrap();
    router(state)
}

#[tokio::test]
async fn roles_decide_who_sees_the_config_and_who_downloads() {
    let c = Console::with_agent().await;
    let dir = c.dir.clone();
    for (user, role, sees, downloads) in [
        ("olga", Role::Operator, true, false),
        ("dev", Role::Developer, true, false),
        ("vic", Role::Viewer, false, false),
    ] {
        let app = console_with_user(&dir, user, role).await;
        let cookies = sign_in_as(&app, user, PASSWORD).await;
        let page = get(&app, "/settings", &cookies).await;
        assert_eq!(page.status == StatusCode::OK, sees, "{user}: {}", page.status);
        if !sees {
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{user}");
            continue;
        }
        assert!(page.body.contains("worker-07.edge.example"), "{user}");
        assert_eq!(page.body.contains("/settings/client-bundle"), downloads, "{user}");
        let csrf = page.csrf_field();
        let file = post(
            &app,
            "192.0.2.10",
            "/settings/client-bundle",
            &cookies,
            &[("csrf", &csrf)],
        )
        .await;
        assert_eq!(file.status, StatusCode::FORBIDDEN, "{user}");
        assert!(!file.body.contains("SIMULATED"), "{user}");
    }
    assert!(bundle_records(&c.agent().audit).await.is_empty());
}

/// debvisor-init as the agent sees it: a fixed digest and refused error.
struct Init {
    digest: String,
    error: String,
}

#[tonic::async_trait]
impl HealthSource for Init {
    async fn list(&self, _: ListRequest) -> Result<NodeHealth, HealthError> {
        Ok(NodeHealth {
            config_digest: self.digest.clone(),
            config_error: self.error.clone(),
            ..NodeHealth::default()
        })
    }
    async fn watch(&self, _: WatchRequest) -> Result<HealthStream, HealthError> {
        Err(HealthError::Init(tonic::Status::unimplemented("not in this test")))
    }
}

const LAST_GOOD: &str = "# kept <b>as is</b>\nversion = 1\n[node]\nhostname = \"edge-7\"\n[admin]\npassword_hash = '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$0GmJr4e2tW/S4DeAeNf+0Q'\n";

/// The real agent reading `dir`'s files, with `init`'s answer.
async fn agent_on_files(dir: &Path, init: Init) -> (AuditLog, tokio::sync::oneshot::Sender<()>) {
    let journal = Arc::new(FakeJournal::new());
    let audit = AuditLog::open_in_memory().await.unwrap();
    let backends = Backends {
        host: Arc::new(FakeHost::new("edge-7")),
        units: Arc::new(FakeUnits::new().with_journal(journal.clone())),
        journal,
        audit: audit.clone(),
        health: Arc::new(init),
        provision: None,
        vm: None,
    };
    let me = std::env::var("USER").ok().filter(|u| !u.is_empty());
    let uid = nix_uid_name().or(me).unwrap_or_else(|| "root".into());
    let cfg = AgentConfig {
        console_user: uid,
        ..AgentConfig::default()
    };
    let bound = server::bind(&ServeConfig {
        socket: dir.join("agent.sock"),
        tls: None,
        metrics: None,
    })
    .await
    .unwrap();
    let files = ConfigFiles {
        machine_config: dir.join("machine.toml"),
        last_good: dir.join("machine.last-good.toml"),
        client_bundle: dir.join("admin.toml"),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve_with_config(
        bound,
        backends,
        ConfigOrigin::Files(files),
        cfg,
        debvisor_telemetry::Metrics::new(),
        async move {
            let _ = rx.await;
        },
    ));
    (audit, tx)
}

/// The name of the user running the test (the agent trusts it as the console).
fn nix_uid_name() -> Option<String> {
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").ok()?);
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_string())
    })
}

#[tokio::test]
async fn a_refused_config_is_explained_and_the_node_files_are_served() {
    let dir = temp_dir();
    std::fs::write(
        dir.join("machine.toml"),
        "version = 1\n[network]\nvlans = [{ id = 5000 }]\n",
    )
    .unwrap();
    std::fs::write(dir.join("machine.last-good.toml"), LAST_GOOD).unwrap();
    std::fs::write(dir.join("admin.toml"), "context = \"edge-7\"\n# the real bundle\n").unwrap();
    let digest = debvisor_api::machine::MachineConfig::from_toml(LAST_GOOD)
        .unwrap()
        .digest();
    let init = Init {
        digest: digest.clone(),
        error: "machine config from config medium: network.vlans[0].id = 5000: <must be 1..=4094>".into(),
    };
    let (audit, _stop) = agent_on_files(&dir, init).await;
    let c = Console::new(dir.clone());
    let cookies = sign_in(&c.app).await;
    let page = get(&c.app, "/settings", &cookies).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("A newer machine config was refused"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("network.vlans[0].id = 5000: &#60;must be 1..=4094&#62;"),
        "{}",
        page.body
    );
    assert!(page.body.contains("last good config"));
    assert!(page.body.contains(&digest));
    assert!(
        page.body.contains("# kept &#60;b&#62;as is&#60;/b&#62;"),
        "the TOML is escaped: {}",
        page.body
    );
    assert!(!page.body.contains("argon2id"), "the password hash is redacted");
    assert!(page.body.contains("admin.password_hash"));

    let csrf = page.csrf_field();
    let file = post(
        &c.app,
        "192.0.2.10",
        "/settings/client-bundle",
        &cookies,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(file.status, StatusCode::OK, "{}", file.body);
    assert_eq!(file.body, "context = \"edge-7\"\n# the real bundle\n");
    assert_eq!(
        file.header(header::CONTENT_DISPOSITION),
        "attachment; filename=\"debvisor-edge-7.toml\""
    );

    // A missing bundle: the page says why, with the path, and the agent
    // records the failed attempt.
    std::fs::remove_file(dir.join("admin.toml")).unwrap();
    let failed = post(
        &c.app,
        "192.0.2.10",
        "/settings/client-bundle",
        &cookies,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    assert!(
        failed.body.contains("debvisor-init writes it at first boot"),
        "{}",
        failed.body
    );
    assert_eq!(
        bundle_records(&audit).await,
        [
            ("console:admin".to_string(), false),
            ("console:admin".to_string(), true)
        ]
    );
}
