//! The updates page against the real agent server with a fake RAUC: what
//! each role sees and may do, CSRF, form validation, installs from a URL
//! (live progress over server-sent events) and from uploads (streamed as a
//! browser form), the agent's refusals as clear messages, rollback, boot
//! marks and the reboot that activates a slot, each in the agent's audit log
//! as `console:USER`.

use crate::support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use debvisor_audit::{AuditRecord, Query};
use debvisor_rauc::fakes::FakeRauc;
use support::{Console, Reply, add_user, console_with_rauc, open, read_until, sign_in, sign_in_as};

const COMPATIBLE: &str = "debvisor-node-x86_64";
const PW: &str = "a long enough password";
const IP: &str = "192.0.2.10";
const BOUNDARY: &str = "----DebVisorTestBoundary7MA4YWxk";

/// A bundle the fake RAUC accepts: the squashfs magic, then manifest lines.
fn bundle(compatible: &str, version: &str, pad: usize) -> Vec<u8> {
    let mut b = format!("hsqs\0[update]\ncompatible={compatible}\nversion={version}\n").into_bytes();
    b.resize(b.len() + pad, 0x5a);
    b
}

/// A browser's multipart form: `fields`, then the file last.
fn form_body(fields: &[(&str, &str)], filename: &str, file: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        let part = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n");
        body.extend_from_slice(part.as_bytes());
    }
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Serves `body` at `/update.raucb` over plain HTTP; anything else is 404.
async fn bundle_server(body: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/update.raucb", axum::routing::get(move || async move { body }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A console in front of an agent with a fake RAUC whose install steps are
/// `step_ms` apart, and the admin's session.
struct Node {
    c: Console,
    rauc: FakeRauc,
    admin: String,
}

impl Node {
    async fn start(step_ms: u64) -> Node {
        let rauc = FakeRauc::new(COMPATIBLE).with_step(Duration::from_millis(step_ms));
        let c = console_with_rauc(rauc.clone()).await;
        let admin = sign_in(&c.app).await;
        Node { c, rauc, admin }
    }

    /// Moves the console's clock on so that the per-user request rate
    /// (10 a second) never refuses a test's requests.
    fn tick(&self) {
        self.c.clock.advance(Duration::from_millis(150));
    }

    async fn get(&self, path: &str, cookies: &str) -> Reply {
        self.tick();
        support::get(&self.c.app, path, cookies).await
    }

    async fn post(&self, path: &str, cookies: &str, form: &[(&str, &str)]) -> Reply {
        self.tick();
        support::post(&self.c.app, IP, path, cookies, form).await
    }

    /// The session's CSRF token (from the updates page).
    async fn csrf(&self, cookies: &str) -> String {
        self.tick();
        support::page_csrf(&self.c.app, "/updates", cookies).await
    }

    /// POSTs a multipart `body` to the upload route, as a browser does.
    async fn upload(&self, cookies: &str, body: Vec<u8>) -> Reply {
        self.tick();
        let req = Request::post("/updates/upload")
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::COOKIE, cookies)
            .body(Body::from(body))
            .unwrap();
        support::send(&self.c.app, IP, req).await
    }

    /// The status page once the install has ended (done or failed).
    async fn ended(&self, cookies: &str) -> Reply {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let page = self.get("/updates/install", cookies).await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            if page.body.contains("data-phase=\"done\"") || page.body.contains("data-phase=\"failed\"") {
                return page;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the install did not end: {}",
                page.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The agent's audit records of `action`, oldest first.
    async fn audit(&self, action: &str) -> Vec<AuditRecord> {
        let q = Query {
            action: Some(action.to_string()),
            ..Query::default()
        };
        let mut records = self.c.agent().audit.query(&q).await.unwrap().records;
        records.reverse();
        records
    }

    /// Every `update.*` record, as (actor, action, target, ok).
    async fn update_actions(&self) -> Vec<(String, String, String, bool)> {
        self.audit("update.*")
            .await
            .into_iter()
            .map(|r| (r.actor, r.action, r.target, r.ok))
            .collect()
    }
}

/// Undoes askama's escaping of quotes and ampersands.
fn unescape(s: &str) -> String {
    s.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn every_role_sees_the_slots_and_only_admins_change_them() {
    let n = Node::start(5).await;
    let mut sessions = vec![("admin", n.admin.clone())];
    for role in ["operator", "developer", "viewer"] {
        let name = format!("{role}1");
        let res = add_user(&n.c.app, &n.admin, &name, role, PW).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
        sessions.push((role, sign_in_as(&n.c.app, &name, PW).await));
    }
    let admin_csrf = n.csrf(&n.admin).await;
    for (role, cookies) in &sessions {
        let page = n.get("/updates", cookies).await;
        assert_eq!(page.status, StatusCode::OK, "{role}: {}", page.body);
        let body = &page.body;
        for needle in [
            "id=\"slot-rootfs.0\"",
            "id=\"slot-rootfs.1\"",
            COMPATIBLE,
            "rootfs.0 (A)",
            "/dev/disk/by-partlabel/root_b",
            "href=\"/updates\" class=\"current\"",
        ] {
            assert!(body.contains(needle), "{role} misses {needle}: {body}");
        }
        let admin = *role == "admin";
        let power = matches!(*role, "admin" | "operator");
        assert_eq!(body.contains("id=\"url-form\""), admin, "{role}");
        assert_eq!(body.contains("id=\"upload-form\""), admin, "{role}");
        assert_eq!(body.contains("id=\"rollback\""), admin, "{role}");
        assert_eq!(body.contains("/updates/mark?state=good"), admin, "{role}");
        assert_eq!(body.contains("id=\"reboot\""), power, "{role}");
        assert_eq!(body.contains("needs the admin role"), !admin, "{role}");
        assert!(!body.contains("style="), "CSP: no inline styles");
        let status = n.get("/updates/install", cookies).await;
        assert_eq!(status.status, StatusCode::OK);
        assert!(status.body.contains("No install has run"), "{}", status.body);
        let events = open(&n.c.app, "/updates/events", cookies).await;
        assert_eq!(events.status(), StatusCode::OK, "{role}");
        let text = read_until(&mut events.into_body().into_data_stream(), "event: end", 10).await;
        assert!(
            text.contains("event: progress") && text.contains("No install has run"),
            "{text}"
        );
        if admin {
            continue;
        }
        // Their own token, so that only the role can be the reason.
        let csrf = n.csrf(cookies).await;
        let url = [("csrf", csrf.as_str()), ("url", "http://192.0.2.1/update.raucb")];
        assert_eq!(
            n.post("/updates/install", cookies, &url).await.status,
            StatusCode::FORBIDDEN
        );
        let upload = form_body(&[("csrf", &csrf)], "update.raucb", &bundle(COMPATIBLE, "9", 10));
        let refused = n.upload(cookies, upload).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{role}");
        assert!(
            refused.body.contains("Your role does not allow this"),
            "{}",
            refused.body
        );
        assert_eq!(n.get("/updates/rollback", cookies).await.status, StatusCode::FORBIDDEN);
        let only_csrf = [("csrf", csrf.as_str())];
        assert_eq!(
            n.post("/updates/rollback", cookies, &only_csrf).await.status,
            StatusCode::FORBIDDEN
        );
        let mark = [("csrf", csrf.as_str()), ("state", "bad"), ("slot", "booted")];
        assert_eq!(
            n.get("/updates/mark?state=bad&slot=booted", cookies).await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            n.post("/updates/mark", cookies, &mark).await.status,
            StatusCode::FORBIDDEN
        );
        let reboot = n.post("/updates/reboot", cookies, &only_csrf).await.status;
        let expected = if power {
            StatusCode::SEE_OTHER
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(reboot, expected, "{role} reboot");
    }
    // Nothing reached RAUC; the operator's reboot reached systemd, in their name.
    assert!(n.rauc.marks().is_empty());
    assert!(n.update_actions().await.is_empty());
    let reboots = n.audit("node.Reboot").await;
    assert_eq!(reboots.len(), 1);
    assert_eq!(reboots[0].actor, "console:operator1");
    assert_eq!(n.c.agent().units.shutdown_requested(), Some("reboot.target"));
    // The admin's token works for the admin only.
    let stolen = [("csrf", admin_csrf.as_str()), ("url", "http://192.0.2.1/update.raucb")];
    let viewer = &sessions[3].1;
    assert_eq!(
        n.post("/updates/install", viewer, &stolen).await.status,
        StatusCode::FORBIDDEN
    );
    // Without a session every page sends the browser to sign in.
    for path in ["/updates", "/updates/install", "/updates/rollback", "/updates/reboot"] {
        let res = n.get(path, "").await;
        assert_eq!(res.header(header::LOCATION), "/login", "{path}");
    }
    let script = n.get("/static/updates.js", "").await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.body.contains("xhr.upload.addEventListener(\"progress\""));
}

#[tokio::test]
async fn every_form_needs_the_session_csrf_token() {
    let n = Node::start(5).await;
    let wrong = "0".repeat(64);
    for token in ["", wrong.as_str()] {
        let url = [("csrf", token), ("url", "http://192.0.2.1/update.raucb")];
        let res = n.post("/updates/install", &n.admin, &url).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN);
        assert!(res.body.contains("Request refused"), "{}", res.body);
        let only = [("csrf", token)];
        assert_eq!(
            n.post("/updates/rollback", &n.admin, &only).await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            n.post("/updates/reboot", &n.admin, &only).await.status,
            StatusCode::FORBIDDEN
        );
        let mark = [("csrf", token), ("state", "good"), ("slot", "other")];
        assert_eq!(
            n.post("/updates/mark", &n.admin, &mark).await.status,
            StatusCode::FORBIDDEN
        );
        let fields: Vec<(&str, &str)> = if token.is_empty() {
            vec![]
        } else {
            vec![("csrf", token)]
        };
        let res = n
            .upload(&n.admin, form_body(&fields, "u.raucb", &bundle(COMPATIBLE, "2", 100)))
            .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.body);
    }
    assert!(n.update_actions().await.is_empty());
    assert!(n.rauc.marks().is_empty());
    assert_eq!(n.c.agent().units.shutdown_requested(), None);
}

#[tokio::test]
async fn bad_fields_come_back_with_the_message_next_to_them() {
    let n = Node::start(5).await;
    let csrf = n.csrf(&n.admin).await;
    let cases = [
        (
            "ftp://mirror.example/update.raucb",
            "",
            "url-error",
            "must start with http:// or https:// (not ftp://)",
        ),
        ("", "", "url-error", "Enter the bundle's URL"),
        ("https://example.com/a b.raucb", "", "url-error", "percent-encode"),
        (
            "https://example.com/u.raucb",
            "abc",
            "url-sha256-error",
            "64 hexadecimal digits (got 3 characters)",
        ),
    ];
    for (url, sha, field, message) in cases {
        let form = [("csrf", csrf.as_str()), ("url", url), ("sha256", sha)];
        let res = n.post("/updates/install", &n.admin, &form).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        let body = unescape(&res.body);
        let at = body
            .find(&format!("id=\"{field}\""))
            .unwrap_or_else(|| panic!("{url}: no {field}: {body}"));
        assert!(body[at..].starts_with(&format!("id=\"{field}\">")), "{body}");
        assert!(body[at..at + 300].contains(message), "{url}: {}", &body[at..at + 300]);
        assert!(
            body.contains(&format!("value=\"{url}\"")),
            "the URL typed is kept: {body}"
        );
        assert!(body.contains("aria-invalid=\"true\""));
    }
    // The upload form: a checksum that is not one, no file, an empty file.
    let res = n
        .upload(
            &n.admin,
            form_body(&[("csrf", &csrf), ("sha256", "xyz")], "u.raucb", b"x"),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body.contains("id=\"upload-sha256-error\""), "{}", res.body);
    let res = n.upload(&n.admin, form_body(&[("csrf", &csrf)], "", b"")).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body.contains("Choose a bundle file"), "{}", res.body);
    let res = n
        .upload(&n.admin, form_body(&[("csrf", &csrf)], "empty.raucb", b""))
        .await;
    assert!(
        unescape(&res.body).contains("The file \"empty.raucb\" is empty"),
        "{}",
        res.body
    );
    // Not a form at all.
    n.tick();
    let req = Request::post("/updates/upload")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::COOKIE, &n.admin)
        .body(Body::from("hsqs"))
        .unwrap();
    let res = support::send(&n.c.app, IP, req).await;
    assert_eq!(res.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(res.body.contains("not a file upload form"), "{}", res.body);
    // Bad marks are named.
    let res = n.get("/updates/mark?state=active&slot=booted", &n.admin).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(
        unescape(&res.body).contains("Mark \"active\" is not a boot mark"),
        "{}",
        res.body
    );
    let res = n.get("/updates/mark?state=good&slot=..%2Fetc", &n.admin).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(
        unescape(&res.body).contains("Slot \"../etc\" is not a slot name"),
        "{}",
        res.body
    );
    assert!(n.update_actions().await.is_empty(), "nothing reached the agent");
}

#[tokio::test]
async fn an_install_from_a_url_shows_live_progress_and_is_audited_as_the_user() {
    let n = Node::start(100).await;
    let url = format!(
        "{}/update.raucb",
        bundle_server(bundle(COMPATIBLE, "2.0.0", 300_000)).await
    );
    let csrf = n.csrf(&n.admin).await;
    let res = n
        .post("/updates/install", &n.admin, &[("csrf", &csrf), ("url", &url)])
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.header(header::LOCATION), "/updates/install");
    // Without JavaScript the status page reloads itself while it runs.
    let running = n.get("/updates/install", &n.admin).await;
    assert!(
        running.body.contains("<noscript><meta http-equiv=\"refresh\""),
        "{}",
        running.body
    );
    assert!(running.body.contains("sse-connect=\"/updates/events\""));
    assert!(
        running
            .body
            .contains("<progress class=\"install-bar\" id=\"install-progress\" max=\"100\"")
    );
    // A second install while this one runs is refused with the agent's reason.
    let again = n
        .post("/updates/install", &n.admin, &[("csrf", &csrf), ("url", &url)])
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let problem = unescape(&again.body);
    assert!(problem.contains("id=\"updates-problem\""), "{problem}");
    // The agent names the running install (or RAUC's busy state, once the
    // bundle is with RAUC).
    let reason = problem.split("The install was refused: ").nth(1).unwrap_or_default();
    assert!(
        reason.starts_with("Install install-1 of") || reason.starts_with("RAUC is busy (installing)"),
        "{problem}"
    );
    // While RAUC writes, the slot table stays on the page with the note
    // that it is the one from before the install.
    let started = std::time::Instant::now();
    let during = loop {
        let page = n.get("/updates", &n.admin).await;
        if page.body.contains("id=\"slots-note\"") {
            break page;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no slots note during the install"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(during.body.contains("id=\"slot-rootfs.0\""), "{}", during.body);
    assert!(
        unescape(&during.body).contains("the table is the one read before"),
        "{}",
        during.body
    );
    // The live panel: a progress event per change, then the end.
    let events = open(&n.c.app, "/updates/events", &n.admin).await;
    assert_eq!(events.status(), StatusCode::OK);
    let mut stream = events.into_body().into_data_stream();
    let text = read_until(&mut stream, "event: end", 20).await;
    let progress = text.matches("event: progress").count();
    assert!(progress >= 3, "{progress} progress events: {text}");
    assert!(text.contains("data-phase=\"installing\""), "{text}");
    assert!(text.contains("Copying image to rootfs.1"), "{text}");
    assert!(text.contains("data-phase=\"done\""), "{text}");
    assert!(
        text.contains("Slot rootfs.1 now holds version 2.0.0 and boots next"),
        "{text}"
    );
    assert!(text.contains("href=\"/updates/reboot\""), "{text}");
    // The slot table shows the new slot.
    let page = n.get("/updates", &n.admin).await;
    let row = &page.body[page.body.find("id=\"slot-rootfs.1\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.contains("2.0.0") && row.contains("boots next") && row.contains("good"),
        "{row}"
    );
    assert!(page.body.contains("id=\"last-install\""));
    // Audited in the admin's name: the start, the refused second one, the end.
    let actions = n.update_actions().await;
    let expected = [
        ("console:admin", "update.install", url.as_str(), true),
        ("console:admin", "update.install", url.as_str(), false),
        ("console:admin", "update.install.finished", url.as_str(), true),
    ];
    let got: Vec<(&str, &str, &str, bool)> = actions
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), *d))
        .collect();
    assert_eq!(got, expected);
    // Reboot to activate: confirmed, then through the agent.
    let confirm = n.get("/updates/reboot", &n.admin).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(
        confirm.body.contains("The node then starts slot rootfs.1 (B)."),
        "{}",
        confirm.body
    );
    assert!(confirm.body.contains("action=\"/updates/reboot\""));
    let res = n.post("/updates/reboot", &n.admin, &[("csrf", &csrf)]).await;
    assert_eq!(res.header(header::LOCATION), "/updates?done=reboot");
    assert_eq!(n.c.agent().units.shutdown_requested(), Some("reboot.target"));
    let reboot = n.audit("node.Reboot").await;
    assert_eq!(reboot[0].actor, "console:admin");
    assert!(
        reboot[0].target.contains("activate the installed update"),
        "{}",
        reboot[0].target
    );
    let after = n.get("/updates?done=reboot", &n.admin).await;
    assert!(after.body.contains("The node is rebooting."));
}

#[tokio::test]
async fn an_upload_is_streamed_to_the_agent_and_audited_as_the_user() {
    let n = Node::start(5).await;
    let csrf = n.csrf(&n.admin).await;
    // Larger than the console's chunks, so that it takes several messages.
    let file = bundle(COMPATIBLE, "3.1.0", 1_300_000);
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&file))
    };
    let res = n
        .upload(
            &n.admin,
            form_body(&[("csrf", &csrf), ("sha256", &sha)], "update-3.1.0.raucb", &file),
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.header(header::LOCATION), "/updates/install");
    let done = n.ended(&n.admin).await;
    assert!(done.body.contains("data-phase=\"done\""), "{}", done.body);
    assert!(done.body.contains("upload:update-3.1.0.raucb"), "{}", done.body);
    assert!(done.body.contains("console:admin"));
    assert!(
        done.body.contains(&format!(
            "{:.1} MiB of {:.1} MiB",
            file.len() as f64 / 1048576.0,
            file.len() as f64 / 1048576.0
        )),
        "{}",
        done.body
    );
    let actions = n.update_actions().await;
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(
        (actions[0].0.as_str(), actions[0].1.as_str(), actions[0].3),
        ("console:admin", "update.upload", true)
    );
    assert!(actions[0].2.contains("update-3.1.0.raucb"), "{actions:?}");
    assert_eq!(actions[1].1, "update.upload.finished");
    assert!(actions[1].3);
    let page = n.get("/updates", &n.admin).await;
    assert!(page.body.contains("3.1.0"), "{}", page.body);
    // The agent keeps no copy.
    let left: Vec<_> = std::fs::read_dir(n.c.dir.join("updates")).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_broken_upload_installs_nothing() {
    let n = Node::start(5).await;
    let csrf = n.csrf(&n.admin).await;
    let body = form_body(&[("csrf", &csrf)], "update.raucb", &bundle(COMPATIBLE, "4", 600_000));
    // The browser announces the whole form and goes away half-way.
    n.tick();
    let half = body[..body.len() / 2].to_vec();
    let req = Request::post("/updates/upload")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::COOKIE, &n.admin)
        .body(Body::from(half))
        .unwrap();
    let res = support::send(&n.c.app, IP, req).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("The upload broke off after"), "{}", res.body);
    assert!(res.body.contains("Nothing was installed"));
    let failed = n.ended(&n.admin).await;
    assert!(failed.body.contains("Upload failed"), "{}", failed.body);
    let page = n.get("/updates", &n.admin).await;
    let row = &page.body[page.body.find("id=\"slot-rootfs.1\"").unwrap()..];
    assert!(
        row[..row.find("</tr>").unwrap()].contains(">bad<"),
        "slot B untouched: {row}"
    );
}

#[tokio::test]
async fn the_agents_refusals_are_clear_messages() {
    let n = Node::start(5).await;
    let csrf = n.csrf(&n.admin).await;
    let base = bundle_server(bundle(COMPATIBLE, "5", 1000)).await;
    // Download failed, with the HTTP status.
    let missing = format!("{base}/missing.raucb");
    let res = n
        .post("/updates/install", &n.admin, &[("csrf", &csrf), ("url", &missing)])
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    let page = n.ended(&n.admin).await;
    assert!(
        page.body.contains("<strong>Download failed</strong> (HTTP 404)"),
        "{}",
        page.body
    );
    // Wrong compatible.
    let other = form_body(
        &[("csrf", &csrf)],
        "arm.raucb",
        &bundle("debvisor-node-aarch64", "5", 100),
    );
    assert_eq!(n.upload(&n.admin, other).await.status, StatusCode::SEE_OTHER);
    let page = unescape(&n.ended(&n.admin).await.body);
    assert!(page.contains("<strong>Wrong compatible</strong>"), "{page}");
    assert!(page.contains("debvisor-node-aarch64"), "{page}");
    // Bad signature (RAUC's own words, classified by the agent).
    n.rauc
        .fail_next_install("signature verification failed: certificate has expired");
    let good = form_body(&[("csrf", &csrf)], "u.raucb", &bundle(COMPATIBLE, "5", 100));
    assert_eq!(n.upload(&n.admin, good.clone()).await.status, StatusCode::SEE_OTHER);
    let page = n.ended(&n.admin).await.body;
    assert!(page.contains("<strong>Bad signature</strong>"), "{page}");
    assert!(page.contains("/etc/rauc/keyring.pem"), "{page}");
    // Not enough space.
    n.rauc.fail_next_install("Installation error: No space left on device");
    assert_eq!(n.upload(&n.admin, good.clone()).await.status, StatusCode::SEE_OTHER);
    assert!(
        n.ended(&n.admin)
            .await
            .body
            .contains("<strong>Not enough space</strong>")
    );
    // A checksum that does not match.
    let form = [
        ("csrf", csrf.as_str()),
        ("url", &format!("{base}/update.raucb")),
        ("sha256", &"0".repeat(64)),
    ];
    assert_eq!(
        n.post("/updates/install", &n.admin, &form).await.status,
        StatusCode::SEE_OTHER
    );
    assert!(
        n.ended(&n.admin)
            .await
            .body
            .contains("<strong>Checksum mismatch</strong>")
    );
    // The booted slot not marked good: installs are refused before anything starts.
    n.rauc.set_booted_status("bad");
    let page = n.get("/updates", &n.admin).await;
    assert!(page.body.contains("id=\"booted-not-good\""), "{}", page.body);
    let res = n.upload(&n.admin, good).await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{}", res.body);
    let text = unescape(&res.body);
    assert!(
        text.contains("The upload was refused: The booted slot rootfs.0 (A) is not marked good yet"),
        "{text}"
    );
    let url = format!("{base}/update.raucb");
    let res = n
        .post("/updates/install", &n.admin, &[("csrf", &csrf), ("url", &url)])
        .await;
    assert_eq!(res.status, StatusCode::CONFLICT);
    assert!(unescape(&res.body).contains("is not marked good yet"), "{}", res.body);
    // RAUC gone.
    n.rauc.set_unreachable(true);
    let page = n.get("/updates", &n.admin).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("id=\"slots-unavailable\""), "{}", page.body);
    assert!(
        page.body.contains("RAUC or the agent is not available"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn rollback_and_marks_are_confirmed_and_audited() {
    let n = Node::start(5).await;
    let csrf = n.csrf(&n.admin).await;
    // Slot B was never completed: no rollback to it.
    let confirm = n.get("/updates/rollback", &n.admin).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(
        confirm.body.contains("make rootfs.1 (B) the slot the node boots next"),
        "{}",
        confirm.body
    );
    let res = n.post("/updates/rollback", &n.admin, &[("csrf", &csrf)]).await;
    assert_eq!(res.status, StatusCode::CONFLICT);
    let text = unescape(&res.body);
    assert!(
        text.contains("The rollback was refused: The other slot rootfs.1 (B) is marked \"bad\""),
        "{text}"
    );
    // Mark it good (confirmed first), then roll back.
    let confirm = n.get("/updates/mark?state=good&slot=rootfs.1", &n.admin).await;
    assert!(confirm.body.contains("Mark slot rootfs.1 good?"), "{}", confirm.body);
    assert!(confirm.body.contains("name=\"slot\" value=\"rootfs.1\""));
    let form = [("csrf", csrf.as_str()), ("state", "good"), ("slot", "rootfs.1")];
    let res = n.post("/updates/mark", &n.admin, &form).await;
    assert_eq!(res.header(header::LOCATION), "/updates?done=mark-good&slot=rootfs.1");
    let page = n.get("/updates?done=mark-good&slot=rootfs.1", &n.admin).await;
    assert!(page.body.contains("Slot rootfs.1 (B) is marked good."), "{}", page.body);
    let res = n.post("/updates/rollback", &n.admin, &[("csrf", &csrf)]).await;
    assert_eq!(res.header(header::LOCATION), "/updates?done=rollback", "{}", res.body);
    let page = n.get("/updates?done=rollback", &n.admin).await;
    assert!(
        page.body.contains("Rollback set: rootfs.1 (B) boots next."),
        "{}",
        page.body
    );
    // Marking the booted slot bad.
    let form = [("csrf", csrf.as_str()), ("state", "bad"), ("slot", "booted")];
    let res = n.post("/updates/mark", &n.admin, &form).await;
    assert_eq!(res.header(header::LOCATION), "/updates?done=mark-bad&slot=rootfs.0");
    // An unknown slot: the agent's answer, on the page.
    let form = [("csrf", csrf.as_str()), ("state", "good"), ("slot", "rootfs.7")];
    let res = n.post("/updates/mark", &n.admin, &form).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert!(unescape(&res.body).contains("rootfs.7"), "{}", res.body);
    let got = n.update_actions().await;
    let expected = [
        ("update.rollback", "other", false),
        ("update.mark-good", "rootfs.1", true),
        ("update.rollback", "other", true),
        ("update.mark-bad", "booted", true),
        ("update.mark-good", "rootfs.7", false),
    ];
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for ((actor, action, target, ok), (e_action, e_target, e_ok)) in got.iter().zip(expected) {
        assert_eq!(actor, "console:admin");
        assert_eq!((action.as_str(), *ok), (e_action, e_ok), "{got:?}");
        assert!(target.contains(e_target), "{target} vs {e_target}");
    }
}
