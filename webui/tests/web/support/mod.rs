//! What the console's integration tests share: a real agent (the
//! `debvisor-agent` library's server with its fake host, units, journal,
//! in-memory audit log and simulated health) on a temporary Unix socket, a
//! console router in front of it, and a small HTTP client driving the router
//! with `oneshot` the way a browser would (cookies, forms, CSRF).
//!
//! Each test file uses what it needs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use debvisor_agent::config::AgentConfig;
use debvisor_agent::fakes::{FakeHost, SimHealth};
use debvisor_agent::server::{self, Backends, ServeConfig};
use debvisor_audit::AuditLog;
use debvisor_systemd::fakes::{FakeJournal, FakeUnits};
use debvisor_webui::agent::GrpcNodeSource;
use debvisor_webui::fakes::ManualClock;
use debvisor_webui::handlers::{CSRF_COOKIE, SESSION_COOKIE};
use debvisor_webui::{AppState, router};
use tower::ServiceExt;

/// The admin's password in every test console.
pub const PASSWORD: &str = "correct horse battery staple";

/// A fresh directory under the system's temporary directory, removed by
/// [`Console`]'s drop.
pub fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dv-webui-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An argon2id hash with small parameters, so that debug-build tests stay
/// quick; the console verifies with whatever parameters the hash names.
pub fn hash(password: &str) -> String {
    let params = Params::new(1024, 1, 1, None).unwrap();
    let h: PasswordHash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .unwrap();
    h.to_string()
}

/// The real agent server with fake host facilities, listening on `socket`.
/// The test process's own user plays the console's user, so the agent
/// accepts the end-user names the console sends.
pub struct TestAgent {
    /// Its units (start, stop, inspect from the test).
    pub units: Arc<FakeUnits>,
    /// Its journal.
    pub journal: Arc<FakeJournal>,
    /// Its audit log (query from the test).
    pub audit: AuditLog,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestAgent {
    /// Starts it on `socket`.
    pub async fn start(socket: PathBuf) -> TestAgent {
        TestAgent::start_with(socket, None).await
    }

    /// Starts it on `socket`, serving `provision` as its PXE provisioner.
    pub async fn start_with(socket: PathBuf, provision: Option<debvisor_provision::Provisioner>) -> TestAgent {
        TestAgent::start_full(socket, provision, None).await
    }

    /// Starts it on `socket` with a provisioner and VMs, if given.
    pub async fn start_full(
        socket: PathBuf,
        provision: Option<debvisor_provision::Provisioner>,
        vm: Option<debvisor_agent::vm_service::Vmd>,
    ) -> TestAgent {
        let journal = Arc::new(FakeJournal::new());
        let units = Arc::new(FakeUnits::new().with_journal(journal.clone()));
        let audit = AuditLog::open_in_memory().await.unwrap();
        let backends = Backends {
            host: Arc::new(FakeHost::new("edge-node-7")),
            units: units.clone(),
            journal: journal.clone(),
            audit: audit.clone(),
            health: Arc::new(SimHealth::new()),
            provision,
            vm,
        };
        let me = nix_user_name();
        let cfg = AgentConfig {
            console_user: me,
            ..AgentConfig::default()
        };
        let bound = server::bind(&ServeConfig {
            socket,
            tls: None,
            metrics: None,
        })
        .await
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::serve(
            bound,
            backends,
            cfg,
            debvisor_telemetry::Metrics::new(),
            async move {
                let _ = rx.await;
            },
        ));
        TestAgent {
            units,
            journal,
            audit,
            stop: Some(tx),
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The name of the user this test runs as.
fn nix_user_name() -> String {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| "root".into())
}

/// A console router in front of an agent socket, with a manual clock.
pub struct Console {
    /// The router.
    pub app: Router,
    /// Its clock (tests move time).
    pub clock: Arc<ManualClock>,
    /// The real agent, when started with [`Console::with_agent`].
    pub agent: Option<TestAgent>,
    /// Its temporary directory (agent socket, admin hash, fault switch).
    pub dir: PathBuf,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Console {
    /// A console whose agent socket is `dir/agent.sock`; the caller starts
    /// (or does not start) something there.
    pub fn new(dir: PathBuf) -> Console {
        let socket = dir.join("agent.sock");
        let hash_path = dir.join("admin.argon2");
        std::fs::write(&hash_path, hash(PASSWORD)).unwrap();
        let clock = Arc::new(ManualClock::new());
        let state = AppState::with_clock(Arc::new(GrpcNodeSource::new(socket)), hash_path, clock.clone())
            .with_healthz_fault_file(dir.join("fault"))
            // Only libvirt's events redraw the live VM list in tests.
            .with_vm_sample(std::time::Duration::from_secs(3600));
        Console {
            app: router(state),
            clock,
            agent: None,
            dir,
        }
    }

    /// A console in front of a real [`TestAgent`].
    pub async fn with_agent() -> Console {
        let dir = temp_dir();
        let agent = TestAgent::start(dir.join("agent.sock")).await;
        let mut c = Console::new(dir);
        c.agent = Some(agent);
        c
    }

    /// A console in front of a real [`TestAgent`] that runs the provisioner
    /// `make` opens in the directory it is given (not serving on any
    /// network: its catalog and records are what the pages show).
    pub async fn with_provisioner<F, Fut>(make: F) -> Console
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = debvisor_provision::Provisioner>,
    {
        let dir = temp_dir();
        let prov = make(dir.join("provision")).await;
        let agent = TestAgent::start_with(dir.join("agent.sock"), Some(prov)).await;
        let mut c = Console::new(dir);
        c.agent = Some(agent);
        c
    }

    /// A console in front of a real [`TestAgent`] whose VMs run on
    /// libvirt's test driver (a private host; its pool holds `volumes`,
    /// `(name, MiB)`).
    pub async fn with_vms(volumes: &[(&str, u64)]) -> Console {
        let dir = temp_dir();
        let opts = debvisor_virt::test_driver::host(&dir, volumes).unwrap();
        let lv = debvisor_virt::Libvirt::open(opts.clone()).unwrap();
        let vmd = dir.join("vmd.sock");
        debvisor_vmd::spawn(&vmd, Arc::new(debvisor_vmd::VmBackend::with(Arc::new(lv), opts))).unwrap();
        let vm = debvisor_agent::vm_service::Vmd::new(vmd);
        let agent = TestAgent::start_full(dir.join("agent.sock"), None, Some(vm)).await;
        let mut c = Console::new(dir);
        c.agent = Some(agent);
        c
    }

    /// The real agent (panics if there is none).
    pub fn agent(&self) -> &TestAgent {
        self.agent.as_ref().expect("console started with an agent")
    }
}

/// A response, read whole.
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body as text.
    pub body: String,
}

impl Reply {
    /// A header's value, or "".
    pub fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(&name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }

    /// Every Set-Cookie.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    /// The value a Set-Cookie gives `name` (None when not set or cleared).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .filter_map(|c| c.split(';').next()?.split_once('='))
            .find(|(k, v)| *k == name && !v.is_empty())
            .map(|(_, v)| v.to_string())
    }

    /// The hidden CSRF field of a form on the page.
    pub fn csrf_field(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self.body.find(marker).expect("page has a CSRF field") + marker.len();
        self.body[start..start + 64].to_string()
    }
}

/// Sends `req` from `ip`.
pub async fn send(app: &Router, ip: &str, mut req: Request<Body>) -> Reply {
    let addr: SocketAddr = format!("{ip}:50000").parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 16 << 20).await.unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// GET `path` with `cookies` (a Cookie header value, or "").
pub async fn get(app: &Router, path: &str, cookies: &str) -> Reply {
    let mut req = Request::get(path);
    if !cookies.is_empty() {
        req = req.header(header::COOKIE, cookies);
    }
    send(app, "192.0.2.10", req.body(Body::empty()).unwrap()).await
}

/// Percent-encodes a form value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// POSTs a form from `ip`.
pub async fn post(app: &Router, ip: &str, path: &str, cookies: &str, form: &[(&str, &str)]) -> Reply {
    let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    let mut req = Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if !cookies.is_empty() {
        req = req.header(header::COOKIE, cookies);
    }
    send(app, ip, req.body(Body::from(body.join("&"))).unwrap()).await
}

/// Fetches the sign-in form: (cookie header to send back, token).
pub async fn login_form(app: &Router) -> (String, String) {
    let page = get(app, "/login", "").await;
    assert_eq!(page.status, StatusCode::OK);
    let token = page.cookie(CSRF_COOKIE).expect("login page sets the CSRF cookie");
    assert_eq!(page.csrf_field(), token, "double-submit: cookie and field agree");
    (format!("{CSRF_COOKIE}={token}"), token)
}

/// Submits the sign-in form from `ip`.
pub async fn try_login(app: &Router, ip: &str, user: &str, password: &str) -> Reply {
    let (cookies, token) = login_form(app).await;
    post(
        app,
        ip,
        "/login",
        &cookies,
        &[("username", user), ("password", password), ("csrf", &token)],
    )
    .await
}

/// Signs `user` in and returns the session cookie header.
pub async fn sign_in_as(app: &Router, user: &str, password: &str) -> String {
    let res = try_login(app, "192.0.2.10", user, password).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    format!("{SESSION_COOKIE}={}", res.cookie(SESSION_COOKIE).unwrap())
}

/// Signs the admin in and returns the session cookie header.
pub async fn sign_in(app: &Router) -> String {
    sign_in_as(app, "admin", PASSWORD).await
}

/// The CSRF token of the signed-in page at `path`.
pub async fn page_csrf(app: &Router, path: &str, cookies: &str) -> String {
    let page = get(app, path, cookies).await;
    assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
    page.csrf_field()
}

/// GETs `path` with `cookies` and returns the response without reading its
/// body (for server-sent events, whose body does not end).
pub async fn open(app: &Router, path: &str, cookies: &str) -> axum::response::Response {
    let mut req = Request::get(path)
        .header(header::ACCEPT, "text/event-stream")
        .header(header::COOKIE, cookies)
        .body(Body::empty())
        .unwrap();
    let addr: SocketAddr = "192.0.2.10:50000".parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    app.clone().oneshot(req).await.unwrap()
}

/// Reads `body` until its text so far contains `needle` (panics after
/// `secs` seconds, showing what arrived); returns the text read.
pub async fn read_until(body: &mut axum::body::BodyDataStream, needle: &str, secs: u64) -> String {
    use futures_util::StreamExt;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !text.contains(needle) {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Some(Err(e))) => panic!("stream failed: {e}; so far: {text}"),
            Ok(None) => panic!("stream ended before {needle:?}; got: {text}"),
            Err(_) => panic!("no {needle:?} within {secs} s; got: {text}"),
        }
    }
    text
}

/// argon2 parameters small enough for debug-build tests (the console uses
/// argon2's defaults unless told otherwise).
pub fn cheap_params() -> Params {
    Params::new(1024, 1, 1, None).unwrap()
}

/// A console router in front of `c`'s agent socket, admin hash and clock,
/// with its database in the SQLite file `db` and cheap password hashing.
/// Two routers on one file are the console before and after a restart.
pub async fn router_on_db(c: &Console, db: &std::path::Path) -> Router {
    let clock: Arc<dyn debvisor_webui::auth::Clock> = c.clock.clone();
    let store = debvisor_webui::auth::store::Store::open(db, clock.clone())
        .await
        .unwrap();
    let state = AppState::with_store(
        Arc::new(GrpcNodeSource::new(c.dir.join("agent.sock"))),
        c.dir.join("admin.argon2"),
        clock,
        store,
    )
    .with_password_params(cheap_params())
    .with_healthz_fault_file(c.dir.join("fault"))
    .with_vm_sample(std::time::Duration::from_secs(3600));
    router(state)
}

/// A console in front of a real [`TestAgent`] whose database is the file
/// `dir/console.db` (see [`router_on_db`]).
pub async fn console_with_db() -> Console {
    let mut c = Console::with_vms(&[]).await;
    c.app = router_on_db(&c, &c.dir.join("console.db")).await;
    c
}

/// A console (database in `console.db`, cheap password hashing) in front of
/// a real agent whose update service works on `rauc`, a fake RAUC the test
/// keeps a clone of (clones share its state), and stores bundles in
/// `dir/updates`. The agent's other facilities are [`TestAgent`]'s.
pub async fn console_with_rauc(rauc: debvisor_rauc::fakes::FakeRauc) -> Console {
    let dir = temp_dir();
    let journal = Arc::new(FakeJournal::new());
    let units = Arc::new(FakeUnits::new().with_journal(journal.clone()));
    let audit = AuditLog::open_in_memory().await.unwrap();
    let host = Arc::new(FakeHost::new("edge-node-7"));
    let config = server::default_config_origin(host.as_ref());
    let update = debvisor_agent::update_service::UpdateBackend::with_rauc(Arc::new(rauc), dir.join("updates"), true);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serve = ServeConfig {
        socket: dir.join("agent.sock"),
        tls: None,
        metrics: None,
    };
    tokio::spawn(server::serve_with_update(
        server::bind(&serve).await.unwrap(),
        Backends {
            host,
            units: units.clone(),
            journal: journal.clone(),
            audit: audit.clone(),
            health: Arc::new(SimHealth::new()),
            provision: None,
            vm: None,
        },
        config,
        update,
        AgentConfig {
            console_user: nix_user_name(),
            ..AgentConfig::default()
        },
        debvisor_telemetry::Metrics::new(),
        async move {
            let _ = rx.await;
        },
    ));
    let mut c = Console::new(dir);
    c.agent = Some(TestAgent {
        units,
        journal,
        audit,
        stop: Some(tx),
    });
    c.app = router_on_db(&c, &c.dir.join("console.db")).await;
    c
}

/// Creates user `name` with `role` and `password` on the users page, as the
/// admin whose session cookie is `admin`.
pub async fn add_user(app: &Router, admin: &str, name: &str, role: &str, password: &str) -> Reply {
    let csrf = page_csrf(app, "/users", admin).await;
    let form = [
        ("name", name),
        ("role", role),
        ("password", password),
        ("confirm", password),
    ];
    post(
        app,
        "192.0.2.10",
        "/users",
        admin,
        &[&form[..], &[("csrf", &csrf)]].concat(),
    )
    .await
}
