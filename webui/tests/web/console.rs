//! The console's router against a real agent peer: a tonic `NodeService`
//! on a temporary Unix socket, reached through the production
//! `GrpcNodeSource`. Requests go through the router with `oneshot` (TLS is
//! covered in `tls.rs`).

use std::time::Duration;

use axum::http::{StatusCode, header};
use debvisor_api::health::v1::node_health_service_server::{NodeHealthService, NodeHealthServiceServer};
use debvisor_api::health::v1::{ListRequest, NodeHealth, NodeState, WatchRequest};
use debvisor_api::node::v1::node_service_server::{NodeService, NodeServiceServer};
use debvisor_api::node::v1::{Disk, GetStatusRequest, GetStatusResponse, LoadAverage, Memory};
use debvisor_webui::auth::{MAX_FAILURES, THROTTLE_WINDOW};
use debvisor_webui::handlers::{CSP, CSRF_COOKIE, SESSION_COOKIE};

const HOSTNAME: &str = "edge-node-7";

/// A test peer serving fixed figures, the way the agent would.
struct FixedAgent {
    simulated: bool,
}

#[tonic::async_trait]
impl NodeService for FixedAgent {
    async fn get_status(
        &self,
        _: tonic::Request<GetStatusRequest>,
    ) -> Result<tonic::Response<GetStatusResponse>, tonic::Status> {
        const GIB: u64 = 1 << 30;
        Ok(tonic::Response::new(GetStatusResponse {
            hostname: HOSTNAME.into(),
            image_version: "2026.11.1".into(),
            image_id: "debvisor-node".into(),
            booted_slot: "B".into(),
            uptime_seconds: 3.0 * 86_400.0 + 7_260.0,
            load: Some(LoadAverage {
                one: 0.42,
                five: 0.37,
                fifteen: 0.2,
            }),
            memory: Some(Memory {
                total_bytes: 16 * GIB,
                available_bytes: 12 * GIB,
                used_bytes: 4 * GIB,
            }),
            disks: vec![
                Disk {
                    name: "root".into(),
                    mount_point: "/".into(),
                    total_bytes: 2 * GIB,
                    available_bytes: 0,
                    used_bytes: 2 * GIB,
                    read_only: true,
                },
                Disk {
                    name: "data".into(),
                    mount_point: "/data".into(),
                    total_bytes: 100 * GIB,
                    available_bytes: 90 * GIB,
                    used_bytes: 10 * GIB,
                    read_only: false,
                },
            ],
            kernel: "6.1.0-27-amd64".into(),
            agent_version: "0.1.0-test".into(),
            simulated: self.simulated,
            sampled_at_unix_ms: 1_764_150_000_000,
            cpu: None,
            interfaces: vec![],
        }))
    }

    type WatchStatusStream = tokio_stream::Empty<Result<debvisor_api::node::v1::StatusDelta, tonic::Status>>;

    async fn watch_status(
        &self,
        _: tonic::Request<debvisor_api::node::v1::WatchStatusRequest>,
    ) -> Result<tonic::Response<Self::WatchStatusStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used by the console yet"))
    }

    async fn reboot(
        &self,
        _: tonic::Request<debvisor_api::node::v1::PowerRequest>,
    ) -> Result<tonic::Response<debvisor_api::node::v1::PowerResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used by the console yet"))
    }

    async fn shutdown(
        &self,
        _: tonic::Request<debvisor_api::node::v1::PowerRequest>,
    ) -> Result<tonic::Response<debvisor_api::node::v1::PowerResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used by the console yet"))
    }
}

/// The node's health as debvisor-init would report it through the agent:
/// degraded, with a refused machine config.
struct FixedHealth;

#[tonic::async_trait]
impl NodeHealthService for FixedHealth {
    async fn list(&self, _: tonic::Request<ListRequest>) -> Result<tonic::Response<NodeHealth>, tonic::Status> {
        let mut health = debvisor_webui::fakes::sample_health();
        health.state = NodeState::Degraded as i32;
        health.degraded_reason = "service/debvisor-webui kept failing after 3 restarts".into();
        health.config_error = "machine config from DEBVISORCFG: network.vlans[0].id = 5000: a VLAN id is 1-4094".into();
        Ok(tonic::Response::new(health))
    }

    type WatchStream = tokio_stream::Empty<Result<NodeHealth, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used by the console"))
    }
}

use crate::support;

use support::{Console, PASSWORD, get, hash, login_form, post, sign_in, try_login};

/// Starts a fixed agent (unless `agent` is None) and a console using it.
async fn console(agent: Option<FixedAgent>) -> Console {
    let dir = support::temp_dir();
    let socket = dir.join("agent.sock");
    if let Some(agent) = agent {
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(NodeServiceServer::new(agent))
                .add_service(NodeHealthServiceServer::new(FixedHealth))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
    }
    Console::new(dir)
}

#[tokio::test]
async fn right_password_gives_a_strict_session_cookie_and_the_status_page() {
    let c = console(Some(FixedAgent { simulated: false })).await;
    let res = try_login(&c.app, "192.0.2.10", "admin", PASSWORD).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.header(header::LOCATION), "/dashboard");
    let set = res
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with(SESSION_COOKIE))
        .unwrap()
        .to_string();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} missing in {set}");
    }
    assert!(!set.contains("Domain"), "__Host- cookies have no Domain");
    let id = res.cookie(SESSION_COOKIE).unwrap();
    assert_eq!(id.len(), 64, "256-bit id in hex");
    let cookies = format!("{SESSION_COOKIE}={id}");

    let page = get(&c.app, "/status", &cookies).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header(header::CACHE_CONTROL), "no-store");
    for text in [
        HOSTNAME,
        "debvisor-node",
        "2026.11.1",
        "6.1.0-27-amd64",
        "0.1.0-test",
        "3 days, 2 hours, 1 minute",
        "0.42",
        "4.0 GiB",
        "16.0 GiB",
        "read-only",
        "read-write",
        "/data",
        "Degraded",
        "kept failing after 3 restarts",
        "Machine config refused",
        "network.vlans[0].id = 5000",
        "no resolver answered",
    ] {
        assert!(page.body.contains(text), "{text:?} missing from the status page");
    }
    assert!(!page.body.contains("SIMULATION"));
    assert!(!page.body.contains("style="));

    let home = get(&c.app, "/", &cookies).await;
    assert_eq!(home.header(header::LOCATION), "/dashboard");
    let again = get(&c.app, "/login", &cookies).await;
    assert_eq!(again.header(header::LOCATION), "/dashboard");

    // Sign out with the session's token; the session is gone afterwards.
    let token = page.csrf_field();
    let out = post(&c.app, "192.0.2.10", "/logout", &cookies, &[("csrf", &token)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.header(header::LOCATION), "/login");
    assert!(
        out.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{SESSION_COOKIE}=;")))
    );
    let after = get(&c.app, "/status", &cookies).await;
    assert_eq!(after.header(header::LOCATION), "/login");
}

#[tokio::test]
async fn wrong_password_or_unknown_user_fails_with_one_message() {
    let c = console(Some(FixedAgent { simulated: false })).await;
    for (user, password) in [("admin", "wrong"), ("root", PASSWORD), ("", "")] {
        let res = try_login(&c.app, "192.0.2.11", user, password).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{user}");
        assert!(res.body.contains("Wrong user name or password"));
        assert!(res.cookie(SESSION_COOKIE).is_none());
    }
}

#[tokio::test]
async fn session_expires_when_idle() {
    let c = console(Some(FixedAgent { simulated: false })).await;
    let cookies = sign_in(&c.app).await;
    c.clock.advance(Duration::from_secs(14 * 60));
    assert_eq!(get(&c.app, "/status", &cookies).await.status, StatusCode::OK);
    c.clock.advance(Duration::from_secs(15 * 60));
    assert_eq!(
        get(&c.app, "/status", &cookies).await.header(header::LOCATION),
        "/login"
    );
}

#[tokio::test]
async fn posts_without_the_csrf_token_are_forbidden() {
    let c = console(Some(FixedAgent { simulated: false })).await;
    let (cookies, token) = login_form(&c.app).await;
    let ip = "192.0.2.12";
    let creds = [("username", "admin"), ("password", PASSWORD)];
    let res = post(&c.app, ip, "/login", &cookies, &creds).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(res.body.contains("Request refused"));
    // The field without the cookie, and a field that does not match.
    let with_field = [creds[0], creds[1], ("csrf", token.as_str())];
    assert_eq!(
        post(&c.app, ip, "/login", "", &with_field).await.status,
        StatusCode::FORBIDDEN
    );
    let other = format!("{CSRF_COOKIE}={}", "0".repeat(64));
    assert_eq!(
        post(&c.app, ip, "/login", &other, &with_field).await.status,
        StatusCode::FORBIDDEN
    );

    let session = sign_in(&c.app).await;
    let res = post(&c.app, ip, "/logout", &session, &[]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = post(&c.app, ip, "/logout", &session, &[("csrf", &"f".repeat(64))]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(
        get(&c.app, "/status", &session).await.status,
        StatusCode::OK,
        "still signed in"
    );
}

#[tokio::test]
async fn security_headers_are_on_every_response() {
    let c = console(Some(FixedAgent { simulated: false })).await;
    let session = sign_in(&c.app).await;
    for (path, cookies, status) in [
        ("/login", "", StatusCode::OK),
        ("/healthz", "", StatusCode::OK),
        ("/static/app.css", "", StatusCode::OK),
        ("/no/such/page", "", StatusCode::NOT_FOUND),
        ("/status", "", StatusCode::SEE_OTHER),
        ("/status", session.as_str(), StatusCode::OK),
    ] {
        let res = get(&c.app, path, cookies).await;
        assert_eq!(res.status, status, "{path}");
        assert_eq!(res.header(header::CONTENT_SECURITY_POLICY), CSP, "{path}");
        assert_eq!(res.header(header::STRICT_TRANSPORT_SECURITY), "max-age=63072000");
        assert_eq!(res.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(res.header(header::REFERRER_POLICY), "no-referrer");
        assert_eq!(res.header(header::X_FRAME_OPTIONS), "DENY");
    }
    assert!(CSP.contains("frame-ancestors 'none'") && CSP.contains("style-src 'self'"));
}

#[tokio::test]
async fn friendly_pages_for_health_404_and_wrong_methods() {
    let c = console(Some(FixedAgent { simulated: false })).await;
    let health = get(&c.app, "/healthz", "").await;
    assert_eq!((health.status, health.body.as_str()), (StatusCode::OK, "ok"));
    std::fs::write(c.dir.join("fault"), "").unwrap();
    let faulty = get(&c.app, "/healthz", "").await;
    assert_eq!(
        faulty.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the fault switch fails /healthz"
    );
    assert!(
        !faulty.body.contains(c.dir.to_str().unwrap()),
        "error pages never show internals"
    );
    std::fs::remove_file(c.dir.join("fault")).unwrap();
    assert_eq!(get(&c.app, "/healthz", "").await.status, StatusCode::OK);
    let missing = get(&c.app, "/nope", "").await;
    assert!(missing.header(header::CONTENT_TYPE).starts_with("text/html"));
    assert!(missing.body.contains("Page not found"));
    assert!(missing.body.contains(HOSTNAME), "the header names the node");
    let css = get(&c.app, "/static/app.css", "").await;
    assert!(css.header(header::CONTENT_TYPE).starts_with("text/css"));
    let wrong = post(&c.app, "192.0.2.13", "/status", "", &[]).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong.body.contains("Not allowed"));
}

#[tokio::test]
async fn unauthenticated_pages_redirect_to_login() {
    let c = console(Some(FixedAgent { simulated: false })).await;
    for path in ["/status", "/"] {
        let res = get(&c.app, path, "").await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(res.header(header::LOCATION), "/login");
    }
    let forged = format!("{SESSION_COOKIE}={}", "a".repeat(64));
    assert_eq!(get(&c.app, "/status", &forged).await.header(header::LOCATION), "/login");
}

#[tokio::test]
async fn throttling_refuses_after_five_failures_per_user_and_per_ip() {
    let c = console(Some(FixedAgent { simulated: false })).await;
    // Per user name, from changing addresses.
    for i in 0..MAX_FAILURES {
        let res = try_login(&c.app, &format!("198.51.100.{i}"), "admin", "guess").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    }
    let res = try_login(&c.app, "198.51.100.99", "admin", PASSWORD).await;
    assert_eq!(
        res.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    assert!(res.body.contains("Too many failed sign-in attempts"));
    assert!(res.header(header::RETRY_AFTER).parse::<u64>().unwrap() > 0);
    // Per address, with changing user names.
    for i in 0..MAX_FAILURES {
        let res = try_login(&c.app, "203.0.113.5", &format!("user{i}"), "guess").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    }
    let res = try_login(&c.app, "203.0.113.5", "someone", "guess").await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    // The window ends and the admin gets in.
    c.clock.advance(THROTTLE_WINDOW);
    let res = try_login(&c.app, "198.51.100.99", "admin", PASSWORD).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn simulated_agent_puts_a_banner_on_every_page() {
    let c = console(Some(FixedAgent { simulated: true })).await;
    assert!(get(&c.app, "/login", "").await.body.contains("SIMULATION"));
    assert!(get(&c.app, "/nope", "").await.body.contains("SIMULATION"));
    let session = sign_in(&c.app).await;
    assert!(get(&c.app, "/status", &session).await.body.contains("SIMULATION"));
}

#[tokio::test]
async fn unreachable_agent_is_a_clear_page_state() {
    let c = console(None).await;
    let login = get(&c.app, "/login", "").await;
    assert_eq!(login.status, StatusCode::OK, "sign-in works without the agent");
    let session = sign_in(&c.app).await;
    let page = get(&c.app, "/status", &session).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.body.contains("Agent unreachable"));
    assert!(page.body.contains("agent.sock"));
    assert!(
        page.body
            .contains("The supervisor restarts it; retry in a few seconds.")
    );
    assert!(!page.body.contains("Error {") && !page.body.contains("panicked"));
}

#[tokio::test]
async fn admin_hash_written_after_start_is_picked_up() {
    let c = console(Some(FixedAgent { simulated: false })).await;
    let hash_path = c.dir.join("admin.argon2");
    std::fs::remove_file(&hash_path).unwrap();
    let res = try_login(&c.app, "192.0.2.20", "admin", PASSWORD).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.body.contains("not available yet"));
    std::fs::write(&hash_path, hash(PASSWORD)).unwrap();
    assert_eq!(
        try_login(&c.app, "192.0.2.20", "admin", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn status_page_from_the_real_agent_server() {
    let c = Console::with_agent().await;
    let cookies = sign_in(&c.app).await;
    let page = get(&c.app, "/status", &cookies).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("edge-node-7"), "{}", page.body);
}
