//! Users, roles and sessions end to end: the users page against a console
//! database file and the real agent (whose audit log records every change),
//! the route x role table, CSRF, form validation, session expiry and
//! restarts, and the per-user request rate.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use debvisor_audit::Query;
use debvisor_webui::roles::{Permission, Role};
use support::{Console, console_with_db, get, page_csrf, post, router_on_db, sign_in, sign_in_as, try_login};
use tower::ServiceExt;

const IP: &str = "192.0.2.30";
/// The initial password of every user these tests create.
const PW: &str = "a long enough password";

async fn create_user(app: &Router, cookies: &str, name: &str, role: &str) -> support::Reply {
    let csrf = page_csrf(app, "/users", cookies).await;
    post(
        app,
        IP,
        "/users",
        cookies,
        &[
            ("name", name),
            ("role", role),
            ("password", PW),
            ("confirm", PW),
            ("csrf", &csrf),
        ],
    )
    .await
}

/// Posts `form` plus the session's CSRF token to `path`.
async fn post_csrf(app: &Router, cookies: &str, path: &str, form: &[(&str, &str)]) -> support::Reply {
    let csrf = page_csrf(app, "/users", cookies).await;
    let mut fields = form.to_vec();
    fields.push(("csrf", &csrf));
    post(app, IP, path, cookies, &fields).await
}

/// The status of one request with `headers`, without reading the body
/// (event streams never end).
async fn status_of(
    app: &Router,
    method: &str,
    path: &str,
    cookies: &str,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> StatusCode {
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{k}={}", support::encode(v)))
        .collect();
    let mut req = Request::builder().method(method).uri(path);
    if method == "POST" {
        req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    if !cookies.is_empty() {
        req = req.header(header::COOKIE, cookies);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Body::from(body.join("&"))).unwrap();
    let addr: SocketAddr = format!("{IP}:50000").parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    // What hyper gives every HTTP/1.1 request on a connection that may be
    // upgraded (here one that never will be: a WebSocket answers 101 and
    // its task ends).
    let upgrade = hyper::upgrade::on(&mut req);
    req.extensions_mut().insert(upgrade);
    app.clone().oneshot(req).await.unwrap().status()
}

/// A console with the admin signed in.
async fn admin_console() -> (Console, String) {
    let c = console_with_db().await;
    let cookies = sign_in(&c.app).await;
    (c, cookies)
}

async fn audit_records(c: &Console, action: &str) -> Vec<debvisor_audit::AuditRecord> {
    c.agent()
        .audit
        .query(&Query {
            action: Some(action.to_string()),
            ..Query::default()
        })
        .await
        .unwrap()
        .records
}

/// Undoes askama's HTML escaping of quotes.
fn unescape(s: &str) -> String {
    s.replace("&#39;", "'")
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// One route of the console: method, path, what it needs (None: any
/// signed-in user), the form it sends (the CSRF token is added) and more
/// headers.
struct Route {
    method: &'static str,
    path: String,
    needs: Option<Permission>,
    form: Vec<(&'static str, String)>,
    headers: &'static [(&'static str, &'static str)],
}

fn route(method: &'static str, path: &str, needs: Option<Permission>) -> Route {
    Route {
        method,
        path: path.to_string(),
        needs,
        form: Vec::new(),
        headers: &[],
    }
}

/// A browser's WebSocket handshake from the console's own page.
const WS_HANDSHAKE: &[(&str, &str)] = &[
    ("host", "console.test"),
    ("origin", "https://console.test"),
    ("connection", "Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// Every route that needs a session, as of this test's writing. A user of
/// `role` sends the user-management forms for its own throwaway users, so
/// that one role's allowed requests do not disturb the next.
fn routes(role: Role) -> Vec<Route> {
    use Permission as P;
    let made = format!("made-by-{role}");
    let spare = format!("spare-{role}");
    let pw = || vec![("password", PW.to_string()), ("confirm", PW.to_string())];
    vec![
        route("GET", "/status", None),
        route("GET", "/dashboard", Some(P::ViewDashboard)),
        route("GET", "/dashboard/events", Some(P::ViewDashboard)),
        route("GET", "/about", Some(P::ViewDashboard)),
        route("GET", "/health", Some(P::ViewDashboard)),
        route("GET", "/health/events", Some(P::ViewDashboard)),
        route("GET", "/services", Some(P::ViewDashboard)),
        route("GET", "/services/ssh.service", Some(P::ViewDashboard)),
        route(
            "GET",
            "/services/ssh.service/confirm?action=restart",
            Some(P::ControlServices),
        ),
        Route {
            form: vec![("action", "restart".into())],
            ..route("POST", "/services/ssh.service/action", Some(P::ControlServices))
        },
        route("GET", "/services/ssh.service/journal", Some(P::ViewLogs)),
        route("GET", "/services/ssh.service/journal/events", Some(P::ViewLogs)),
        route("GET", "/audit", Some(P::ViewAudit)),
        route("GET", "/audit/export.csv", Some(P::ViewAudit)),
        route("GET", "/settings", Some(P::ViewConfig)),
        route("POST", "/settings/client-bundle", Some(P::DownloadClientBundle)),
        route("GET", "/users", Some(P::ManageUsers)),
        Route {
            form: [vec![("name", made.clone()), ("role", "viewer".into())], pw()].concat(),
            ..route("POST", "/users", Some(P::ManageUsers))
        },
        route("GET", "/users/viewer1", Some(P::ManageUsers)),
        Route {
            form: vec![("role", "developer".into())],
            ..route("POST", &format!("/users/{spare}/role"), Some(P::ManageUsers))
        },
        Route {
            form: pw(),
            ..route("POST", &format!("/users/{spare}/password"), Some(P::ManageUsers))
        },
        route("POST", &format!("/users/{spare}/disable"), Some(P::ManageUsers)),
        route("POST", &format!("/users/{spare}/enable"), Some(P::ManageUsers)),
        route("POST", &format!("/users/{made}/delete"), Some(P::ManageUsers)),
        route("GET", "/updates", Some(P::ViewDashboard)),
        route("GET", "/updates/install", Some(P::ViewDashboard)),
        route("GET", "/updates/events", Some(P::ViewDashboard)),
        route("GET", "/updates/mark?state=good&slot=other", Some(P::ManageUpdates)),
        Route {
            form: vec![("state", "good".into()), ("slot", "other".into())],
            ..route("POST", "/updates/mark", Some(P::ManageUpdates))
        },
        route("GET", "/updates/rollback", Some(P::ManageUpdates)),
        route("POST", "/updates/rollback", Some(P::ManageUpdates)),
        route("GET", "/updates/reboot", Some(P::PowerNode)),
        Route {
            form: vec![("reason", format!("table {role}"))],
            ..route("POST", "/updates/reboot", Some(P::PowerNode))
        },
        Route {
            form: vec![("url", "http://127.0.0.1:9/table.raucb".into())],
            ..route("POST", "/updates/install", Some(P::ManageUpdates))
        },
        route("GET", "/provisioning", Some(P::ViewConfig)),
        route(
            "POST",
            "/provisioning/machines/52:54:00:aa:bb:07/reset",
            Some(P::ManageProvisioning),
        ),
        route("GET", "/vms", Some(P::ViewVms)),
        route("GET", "/vms/events", Some(P::ViewVms)),
        route("GET", "/vms/new", Some(P::ManageVms)),
        Route {
            form: vec![
                ("name", format!("vm-{role}")),
                ("vcpus", "1".into()),
                ("memory_mib", "64".into()),
                ("disk_gib", "1".into()),
            ],
            ..route("POST", "/vms", Some(P::ManageVms))
        },
        // The admin's runs first and makes vm-admin.
        route("GET", "/vm/vm-admin", Some(P::ViewVms)),
        Route {
            form: vec![("action", "start".into())],
            ..route("POST", "/vm/vm-admin/action", Some(P::ManageVms))
        },
        Route {
            form: vec![("name", format!("snap-{role}"))],
            ..route("POST", "/vm/vm-admin/snapshots", Some(P::ManageVms))
        },
        route(
            "POST",
            &format!("/vm/vm-admin/snapshots/snap-{role}/revert"),
            Some(P::ManageVms),
        ),
        route(
            "POST",
            &format!("/vm/vm-admin/snapshots/snap-{role}/delete"),
            Some(P::ManageVms),
        ),
        Route {
            form: vec![("name", format!("copy-{role}"))],
            ..route("POST", &format!("/vm/vm-{role}/clone"), Some(P::ManageVms))
        },
        route("POST", &format!("/vm/copy-{role}/delete"), Some(P::ManageVms)),
        route("GET", "/vm/vm-admin/console", Some(P::ManageVms)),
        Route {
            headers: WS_HANDSHAKE,
            ..route("GET", "/vm/vm-admin/console/ws", Some(P::ManageVms))
        },
    ]
}

/// The route patterns [`routes`] and [`every_route_with_every_role`] cover
/// (the table, the public routes, and the sign-in/out routes that
/// `tests/console.rs` covers).
const COVERED: &[&str] = &[
    "/",
    "/login",
    "/logout",
    "/healthz",
    "/static/app.css",
    "/static/favicon.svg",
    "/favicon.ico",
    "/static/services.js",
    "/static/vendor/{hash}/{name}",
    "/status",
    "/dashboard",
    "/dashboard/events",
    "/about",
    "/health",
    "/health/events",
    "/services",
    "/services/{unit}",
    "/services/{unit}/confirm",
    "/services/{unit}/action",
    "/services/{unit}/journal",
    "/services/{unit}/journal/events",
    "/audit",
    "/audit/export.csv",
    "/settings",
    "/settings/client-bundle",
    "/users",
    "/users/{name}",
    "/users/{name}/role",
    "/users/{name}/password",
    "/users/{name}/disable",
    "/users/{name}/enable",
    "/users/{name}/delete",
    "/updates",
    "/updates/install",
    "/updates/events",
    "/updates/mark",
    "/updates/rollback",
    "/updates/reboot",
    // A multipart upload: its role checks are in tests/updates.rs.
    "/updates/upload",
    "/static/updates.js",
    "/provisioning",
    "/provisioning/machines/{mac}/reset",
    "/vms",
    "/vms/events",
    "/vms/new",
    "/vm/{name}",
    "/vm/{name}/action",
    "/vm/{name}/delete",
    "/vm/{name}/clone",
    "/vm/{name}/snapshots",
    "/vm/{name}/snapshots/{snap}/{op}",
    "/vm/{name}/console",
    "/vm/{name}/console/ws",
    "/static/vm_console.js",
];

/// Every `.route("...")` pattern in the crate's source.
fn routes_in_source(dir: &std::path::Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            routes_in_source(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            // `.route("/p", ...)`, also with the pattern on the next line.
            for piece in text.split(".route(").skip(1) {
                if let Some(rest) = piece.trim_start().strip_prefix('"') {
                    out.push(rest.split('"').next().unwrap().to_string());
                }
            }
        }
    }
}

#[test]
fn the_role_table_knows_every_route() {
    let mut found = Vec::new();
    routes_in_source(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
    );
    assert!(found.len() > 20, "{found:?}");
    for route in &found {
        assert!(
            COVERED.contains(&route.as_str()),
            "route {route} is not in the route x role table of tests/users.rs: add it to routes() and COVERED"
        );
    }
    for covered in COVERED {
        assert!(
            found.iter().any(|r| r == covered),
            "{covered} no longer exists: drop it from the table"
        );
    }
}

#[tokio::test]
async fn every_route_with_every_role() {
    let (c, admin) = admin_console().await;
    // One user per role, made through the users page.
    let mut sessions = vec![(Role::Admin, admin.clone())];
    for role in [Role::Admin, Role::Operator, Role::Developer, Role::Viewer] {
        let name = format!("{role}1");
        let res = create_user(&c.app, &admin, &name, role.as_str()).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
        assert_eq!(res.header(header::LOCATION), format!("/users/{name}?done=created"));
        let spare = create_user(&c.app, &admin, &format!("spare-{role}"), "viewer").await;
        assert_eq!(spare.status, StatusCode::SEE_OTHER, "{}", spare.body);
        if role != Role::Admin {
            sessions.push((role, sign_in_as(&c.app, &name, PW).await));
        }
    }
    for (role, cookies) in &sessions {
        let csrf = page_csrf(&c.app, "/status", cookies).await;
        for r in routes(*role) {
            // Stay under the request rate: the table is not a burst.
            c.clock.advance(Duration::from_millis(200));
            let mut form: Vec<(&str, &str)> = r.form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            form.push(("csrf", &csrf));
            let status = status_of(&c.app, r.method, &r.path, cookies, &form, r.headers).await;
            let allowed = r.needs.is_none_or(|p| role.allows(p));
            if allowed {
                assert!(
                    [StatusCode::OK, StatusCode::SEE_OTHER, StatusCode::SWITCHING_PROTOCOLS].contains(&status),
                    "{role} {} {}: {status}",
                    r.method,
                    r.path
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role} {} {}", r.method, r.path);
            }
        }
    }
    // Without a session every one of them sends the browser to sign in.
    for r in routes(Role::Viewer) {
        let status = status_of(&c.app, r.method, &r.path, "", &[], r.headers).await;
        assert!(
            status == StatusCode::SEE_OTHER || (r.method == "POST" && status == StatusCode::FORBIDDEN),
            "anonymous {} {}: {status}",
            r.method,
            r.path
        );
        if r.method == "GET" {
            let res = get(&c.app, &r.path, "").await;
            assert_eq!(res.header(header::LOCATION), "/login", "{}", r.path);
        }
    }
    // The public ones.
    for path in [
        "/login",
        "/healthz",
        "/static/app.css",
        "/static/favicon.svg",
        "/favicon.ico",
        "/static/services.js",
        "/static/updates.js",
        "/static/vm_console.js",
    ] {
        assert_eq!(
            status_of(&c.app, "GET", path, "", &[], &[]).await,
            StatusCode::OK,
            "{path}"
        );
    }
    // The viewer's denial is a friendly page.
    let viewer = &sessions.iter().find(|(r, _)| *r == Role::Viewer).unwrap().1;
    let page = get(&c.app, "/users", viewer).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("Your role does not allow this"), "{}", page.body);
}

#[tokio::test]
async fn user_forms_need_the_session_csrf_token() {
    let (c, admin) = admin_console().await;
    assert_eq!(
        create_user(&c.app, &admin, "bob", "viewer").await.status,
        StatusCode::SEE_OTHER
    );
    let forms: [(&str, Vec<(&str, &str)>); 6] = [
        (
            "/users",
            vec![("name", "carol"), ("role", "viewer"), ("password", PW), ("confirm", PW)],
        ),
        ("/users/bob/role", vec![("role", "admin")]),
        (
            "/users/bob/password",
            vec![
                ("password", "another long password"),
                ("confirm", "another long password"),
            ],
        ),
        ("/users/bob/disable", vec![]),
        ("/users/bob/enable", vec![]),
        ("/users/bob/delete", vec![]),
    ];
    let other = "0".repeat(64);
    for (path, form) in &forms {
        for csrf in [None, Some(""), Some(other.as_str())] {
            let mut fields = form.clone();
            if let Some(t) = csrf {
                fields.push(("csrf", t));
            }
            c.clock.advance(Duration::from_millis(200));
            let res = post(&c.app, IP, path, &admin, &fields).await;
            assert_eq!(res.status, StatusCode::FORBIDDEN, "{path} with {csrf:?}");
            assert!(res.body.contains("Request refused"), "{path}: {}", res.body);
        }
    }
    // Nothing changed.
    let c2 = c.app.clone();
    let list = get(&c2, "/users", &admin).await;
    assert!(!list.body.contains("carol"));
    let bob = get(&c2, "/users/bob", &admin).await;
    assert!(bob.body.contains("<dd>viewer</dd>"), "{}", bob.body);
    assert!(bob.body.contains("enabled"));
    // A token of another session does not do either.
    let theirs = sign_in(&c.app).await;
    let their_csrf = page_csrf(&c.app, "/users", &theirs).await;
    let res = post(&c.app, IP, "/users/bob/delete", &admin, &[("csrf", &their_csrf)]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&c.app, "/users/bob", &admin).await.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_fields_come_back_with_the_message_next_to_them() {
    let (c, admin) = admin_console().await;
    let csrf = page_csrf(&c.app, "/users", &admin).await;
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 6] = [
        (
            &[
                ("name", "Bob Smith"),
                ("role", "viewer"),
                ("password", PW),
                ("confirm", PW),
            ],
            "name-error",
            "must start with a lowercase letter",
        ),
        (
            &[("name", "bob/x"), ("role", "viewer"), ("password", PW), ("confirm", PW)],
            "name-error",
            "contains '/'",
        ),
        (
            &[("name", ""), ("role", "viewer"), ("password", PW), ("confirm", PW)],
            "name-error",
            "Enter a user name",
        ),
        (
            &[("name", "bob"), ("role", "root"), ("password", PW), ("confirm", PW)],
            "role-error",
            "not \"root\"",
        ),
        (
            &[
                ("name", "bob"),
                ("role", "viewer"),
                ("password", "short pw"),
                ("confirm", "short pw"),
            ],
            "password-error",
            "at least 12",
        ),
        (
            &[
                ("name", "bob"),
                ("role", "viewer"),
                ("password", PW),
                ("confirm", "a long enough passwort"),
            ],
            "confirm-error",
            "differ",
        ),
    ];
    for (form, id, says) in cases {
        let mut fields = form.to_vec();
        fields.push(("csrf", &csrf));
        let res = post(&c.app, IP, "/users", &admin, &fields).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{form:?}");
        let at = res
            .body
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("{id} missing: {}", res.body));
        let next = unescape(&res.body[at..at + 300.min(res.body.len() - at)]);
        assert!(next.contains(says), "{says:?} not next to the field: {next}");
        let typed = form[0].1;
        if !typed.is_empty() && !typed.contains('/') {
            assert!(
                res.body.contains(&format!("value=\"{typed}\"")),
                "the typed name is kept"
            );
        }
        assert!(!res.body.contains(PW), "passwords are never sent back");
    }
    assert!(!get(&c.app, "/users", &admin).await.body.contains("/users/bob\""));
    // The same name twice.
    assert_eq!(
        create_user(&c.app, &admin, "bob", "viewer").await.status,
        StatusCode::SEE_OTHER
    );
    let res = create_user(&c.app, &admin, "bob", "admin").await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body.contains("A user named bob exists already"), "{}", res.body);
    // The user page's forms too.
    let res = post_csrf(
        &c.app,
        &admin,
        "/users/bob/password",
        &[("password", "tiny"), ("confirm", "tiny")],
    )
    .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body.contains("id=\"password-error\""), "{}", res.body);
    let res = post_csrf(&c.app, &admin, "/users/bob/role", &[("role", "superuser")]).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body.contains("id=\"role-error\""));
    let res = post_csrf(&c.app, &admin, "/users/nobody/role", &[("role", "viewer")]).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_node_keeps_an_enabled_admin_and_nobody_removes_themselves() {
    let (c, admin) = admin_console().await;
    for path in ["/users/admin/delete", "/users/admin/disable"] {
        let res = post_csrf(&c.app, &admin, path, &[]).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert!(res.body.contains("You cannot"), "{}", res.body);
    }
    let res = post_csrf(&c.app, &admin, "/users/admin/role", &[("role", "operator")]).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body.contains("admin is the last enabled admin"), "{}", res.body);
    // With a second admin, that admin may demote the first...
    create_user(&c.app, &admin, "root2", "admin").await;
    let root2 = sign_in_as(&c.app, "root2", PW).await;
    let res = post_csrf(&c.app, &root2, "/users/admin/role", &[("role", "operator")]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    // ... and the demotion applies to the admin's next request.
    assert_eq!(get(&c.app, "/users", &admin).await.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&c.app, "/services", &admin).await.status, StatusCode::OK);
    // root2 is now the last enabled admin: it cannot be demoted by itself.
    let res = post_csrf(&c.app, &root2, "/users/root2/role", &[("role", "viewer")]).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body.contains("root2 is the last enabled admin"));
}

#[tokio::test]
async fn disabling_or_deleting_a_user_ends_their_sessions_and_sign_in() {
    let (c, admin) = admin_console().await;
    create_user(&c.app, &admin, "dora", "operator").await;
    let dora = sign_in_as(&c.app, "dora", PW).await;
    assert_eq!(get(&c.app, "/services", &dora).await.status, StatusCode::OK);
    let res = post_csrf(&c.app, &admin, "/users/dora/disable", &[]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(get(&c.app, "/services", &dora).await.header(header::LOCATION), "/login");
    let res = try_login(&c.app, "192.0.2.31", "dora", PW).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(
        res.body.contains("Wrong user name or password"),
        "same message as a wrong password"
    );
    let page = get(&c.app, "/users", &admin).await;
    assert!(page.body.contains("disabled"));
    post_csrf(&c.app, &admin, "/users/dora/enable", &[]).await;
    let dora = sign_in_as(&c.app, "dora", PW).await;
    // A new password works, the old one no longer.
    let new = "the new long password";
    let res = post_csrf(
        &c.app,
        &admin,
        "/users/dora/password",
        &[("password", new), ("confirm", new)],
    )
    .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(
        try_login(&c.app, "192.0.2.32", "dora", PW).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&c.app, "/services", &dora).await.header(header::LOCATION),
        "/login",
        "a password reset ends the user's sessions"
    );
    assert_eq!(
        get(&c.app, "/users", &admin).await.status,
        StatusCode::OK,
        "not the admin's own"
    );
    let dora = sign_in_as(&c.app, "dora", new).await;
    let res = post_csrf(&c.app, &admin, "/users/dora/delete", &[]).await;
    assert_eq!(res.header(header::LOCATION), "/users?done=deleted");
    assert_eq!(get(&c.app, "/services", &dora).await.header(header::LOCATION), "/login");
    assert!(!get(&c.app, "/users", &admin).await.body.contains("/users/dora"));
}

#[tokio::test]
async fn sessions_survive_a_restart_and_expire_by_the_clock() {
    let c = console_with_db().await;
    let db = c.dir.join("console.db");
    let cookies = sign_in(&c.app).await;
    create_user(&c.app, &cookies, "erin", "viewer").await;
    // The console restarts: a new router on the same database.
    let restarted = router_on_db(&c, &db).await;
    assert_eq!(get(&restarted, "/status", &cookies).await.status, StatusCode::OK);
    assert!(get(&restarted, "/users", &cookies).await.body.contains("erin"));
    // The database holds the token's hash, not the token.
    let token = cookies.split_once('=').unwrap().1;
    let raw = std::fs::read(&db).unwrap();
    let wal = std::fs::read(db.with_extension("db-wal")).unwrap_or_default();
    let hay = [raw, wal].concat();
    assert!(
        !hay.windows(token.len()).any(|w| w == token.as_bytes()),
        "token stored in clear"
    );

    // Idle expiry: 14 minutes is fine, 15 more is not.
    c.clock.advance(Duration::from_secs(14 * 60));
    assert_eq!(get(&restarted, "/status", &cookies).await.status, StatusCode::OK);
    c.clock.advance(Duration::from_secs(15 * 60));
    assert_eq!(
        get(&restarted, "/status", &cookies).await.header(header::LOCATION),
        "/login"
    );

    // The absolute limit ends even a busy session.
    let busy = sign_in(&restarted).await;
    let step = Duration::from_secs(10 * 60);
    let limit = debvisor_webui::auth::ABSOLUTE_TIMEOUT;
    let mut elapsed = Duration::ZERO;
    while elapsed + step < limit {
        c.clock.advance(step);
        elapsed += step;
        assert_eq!(
            get(&restarted, "/status", &busy).await.status,
            StatusCode::OK,
            "{elapsed:?}"
        );
    }
    c.clock.advance(step);
    assert_eq!(
        get(&restarted, "/status", &busy).await.header(header::LOCATION),
        "/login"
    );
}

#[tokio::test]
async fn each_user_gets_ten_requests_a_second_after_a_burst_of_twenty() {
    let (c, admin) = admin_console().await;
    create_user(&c.app, &admin, "fred", "viewer").await;
    let fred = sign_in_as(&c.app, "fred", PW).await;
    c.clock.advance(Duration::from_secs(5));
    for i in 0..20 {
        assert_eq!(
            get(&c.app, "/status", &fred).await.status,
            StatusCode::OK,
            "request {i}"
        );
    }
    let res = get(&c.app, "/status", &fred).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.header(header::RETRY_AFTER), "1");
    assert!(res.body.contains("Too many requests"), "{}", res.body);
    assert!(res.body.contains("Wait a few seconds"), "{}", res.body);
    assert!(
        res.header(header::CONTENT_SECURITY_POLICY)
            .contains("frame-ancestors 'none'")
    );
    // Static assets and the health probe are not counted; others are not
    // held back by fred.
    assert_eq!(get(&c.app, "/static/app.css", &fred).await.status, StatusCode::OK);
    assert_eq!(get(&c.app, "/healthz", &fred).await.status, StatusCode::OK);
    assert_eq!(get(&c.app, "/status", &admin).await.status, StatusCode::OK);
    c.clock.advance(Duration::from_millis(300));
    for _ in 0..3 {
        assert_eq!(get(&c.app, "/status", &fred).await.status, StatusCode::OK);
    }
    assert_eq!(
        get(&c.app, "/status", &fred).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn user_changes_and_sign_ins_are_in_the_agents_audit_log() {
    let (c, admin) = admin_console().await;
    create_user(&c.app, &admin, "gina", "viewer").await;
    post_csrf(&c.app, &admin, "/users/gina/role", &[("role", "operator")]).await;
    post_csrf(
        &c.app,
        &admin,
        "/users/gina/password",
        &[("password", "gina's new password"), ("confirm", "gina's new password")],
    )
    .await;
    post_csrf(&c.app, &admin, "/users/gina/disable", &[]).await;
    post_csrf(&c.app, &admin, "/users/gina/enable", &[]).await;
    post_csrf(&c.app, &admin, "/users/admin/delete", &[]).await;
    post_csrf(&c.app, &admin, "/users/gina/delete", &[]).await;
    for action in ["create", "role", "password", "disable", "enable"] {
        let records = audit_records(&c, &format!("console.user.{action}")).await;
        assert_eq!(records.len(), 1, "{action}: {records:?}");
        let r = &records[0];
        assert_eq!(
            (r.actor.as_str(), r.target.as_str(), r.ok),
            ("console:admin", "gina", true),
            "{action}"
        );
        assert!(r.source.starts_with("unix:"), "{}", r.source);
    }
    let deletes = audit_records(&c, "console.user.delete").await;
    assert_eq!(deletes.len(), 2);
    let refused = deletes.iter().find(|r| r.target == "admin").unwrap();
    assert!(!refused.ok);
    assert!(refused.error.contains("cannot delete yourself"), "{}", refused.error);
    assert!(deletes.iter().any(|r| r.target == "gina" && r.ok));

    // Sign-in, a failed sign-in (without the password) and sign-out.
    let res = try_login(&c.app, "192.0.2.40", "admin", "a wrong password").await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    let token = page_csrf(&c.app, "/status", &admin).await;
    let out = post(&c.app, IP, "/logout", &admin, &[("csrf", &token)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let logins = audit_records(&c, "console.login").await;
    assert!(logins.iter().any(|r| r.ok && r.actor == "console:admin"), "{logins:?}");
    let failed = logins.iter().find(|r| !r.ok).expect("a failed sign-in");
    assert_eq!(
        (failed.actor.as_str(), failed.target.as_str()),
        ("console:admin", "192.0.2.40")
    );
    assert_eq!(failed.error, "wrong user name or password");
    let all = c.agent().audit.export(&Query::default()).await.unwrap();
    assert!(
        all.iter()
            .all(|r| !r.error.contains("a wrong password") && !r.target.contains("a wrong password"))
    );
    let logouts = audit_records(&c, "console.logout").await;
    assert_eq!(logouts.len(), 1);
    assert_eq!(logouts[0].actor, "console:admin");
    assert!(c.agent().audit.verify().await.unwrap().problem.is_none());
}

#[tokio::test]
async fn without_the_agent_user_changes_are_refused() {
    let (mut c, admin) = admin_console().await;
    drop(c.agent.take());
    // Let the server notice its stop signal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = create_user(&c.app, &admin, "hank", "viewer").await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
    assert!(res.body.contains("The agent cannot be reached"), "{}", res.body);
    assert!(res.body.contains("was not made"));
    assert!(!get(&c.app, "/users", &admin).await.body.contains("/users/hank"));
    let res = post_csrf(
        &c.app,
        &admin,
        "/users/admin/password",
        &[("password", PW), ("confirm", PW)],
    )
    .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Signing in still works (its audit record is best effort).
    assert!(
        get(&c.app, "/status", &sign_in(&c.app).await)
            .await
            .status
            .is_server_error()
    );
}
