//! The dashboard, its live stream, the about page and the vendored assets,
//! against the real agent with the moving fake host.
//!
//! The console samples every 5 s (the production interval), so the tests
//! that need two samples take about that long.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use futures_util::StreamExt;
use support::{Console, get, sign_in};
use tower::ServiceExt;

/// Reads server-sent events from `path` until `count` events named
/// `sample` arrived; returns their data.
async fn read_events(c: &Console, cookies: &str, count: usize) -> (String, Vec<String>) {
    let mut req = Request::get("/dashboard/events")
        .header(header::COOKIE, cookies)
        .body(Body::empty())
        .unwrap();
    let addr: SocketAddr = "192.0.2.10:50000".parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    let res = c.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string();
    let mut body = res.into_body().into_data_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("an event within 30 s")
            .expect("the stream stays open")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if block.lines().any(|l| l == "event: sample") {
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:")))
                    .collect();
                events.push(data.join("\n"));
            }
        }
    }
    (content_type, events)
}

/// The text between `start` and the next `end` after it.
fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let from = s.find(start).unwrap_or_else(|| panic!("{start:?} not in {s}")) + start.len();
    let len = s[from..].find(end).unwrap();
    &s[from..from + len]
}

/// Checks that the HTML keeps the CSP: scripts only from files, no inline
/// styles, no event-handler attributes.
fn assert_csp_clean(what: &str, html: &str) {
    for (i, _) in html.match_indices("<script") {
        let tag = &html[i..i + html[i..].find('>').unwrap()];
        assert!(tag.contains(" src=\"/static/"), "{what}: inline script {tag}");
    }
    assert!(!html.contains("<style"), "{what}: a <style> element");
    assert!(!html.contains(" style="), "{what}: a style attribute");
    let lower = html.to_ascii_lowercase();
    for (i, _) in lower.match_indices(" on") {
        let rest = &lower[i + 3..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        assert!(
            !(name.len() > 2 && rest[name.len()..].starts_with('=')),
            "{what}: event handler attribute on{name}= in {}",
            &html[i..(i + 60).min(html.len())]
        );
    }
}

#[tokio::test]
async fn the_dashboard_shows_the_hosts_figures_and_is_the_home_page() {
    let c = Console::with_agent().await;
    let cookies = sign_in(&c.app).await;
    let home = get(&c.app, "/", &cookies).await;
    assert_eq!(home.header(header::LOCATION), "/dashboard");

    let page = get(&c.app, "/dashboard", &cookies).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let b = &page.body;
    assert!(b.contains("<p class=\"hostname\">edge-node-7</p>"), "{b}");
    assert!(b.contains("debvisor-node"), "image id");
    assert!(b.contains(env!("CARGO_PKG_VERSION")), "image version");
    assert!(between(b, "<dt>Booted slot</dt><dd>", "<").contains('A'));
    assert!(b.contains("4 CPUs · load"), "{b}");
    let cpu_card = between(b, "<h2>CPU</h2>", "</section>");
    assert_eq!(
        cpu_card.matches("<rect class=\"column ").count(),
        4,
        "one column per CPU: {cpu_card}"
    );
    assert!(b.contains("of 8.0 GiB used"), "{b}");
    assert!(b.contains("data ") && b.contains("of 100.0 GiB"), "{b}");
    assert!(b.contains("<h2>Network enp0s1</h2>"), "{b}");
    assert!(
        b.contains("<code>enp0s2</code></td><td><span class=\"tag crit\">down</span>"),
        "{b}"
    );
    // Health (simulated: all pass but a certificate warning) and services.
    assert!(b.contains("Healthy"), "{b}");
    assert!(b.contains("certificate/server"), "{b}");
    assert!(b.contains("href=\"/health\"") && b.contains("href=\"/services\""));
    assert!(b.contains("<span class=\"label\">active</span>"), "{b}");
    assert!(b.contains("sse-connect=\"/dashboard/events\""));
    assert!(b.contains("aria-current=\"page\">Dashboard</a>"), "{b}");
    for link in ["/services", "/health", "/audit", "/users", "/settings", "/about"] {
        assert!(b.contains(&format!("<a href=\"{link}\"")), "admin's bar links {link}");
    }
    assert_csp_clean("/dashboard", b);

    let status = get(&c.app, "/status", &cookies).await;
    assert_eq!(status.status, StatusCode::OK, "/status keeps working");
}

#[tokio::test]
async fn the_stream_sends_a_fragment_per_sample_with_moving_figures_and_charts_hold_the_points() {
    let c = Console::with_agent().await;
    let cookies = sign_in(&c.app).await;
    // The first visit starts the sampler.
    let first = get(&c.app, "/dashboard", &cookies).await;
    assert_eq!(first.status, StatusCode::OK);
    let (content_type, events) = read_events(&c, &cookies, 2).await;
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let (a, b) = (&events[0], &events[1]);
    assert!(a.contains("edge-node-7") && b.contains("edge-node-7"));
    let sampled = |s: &str| between(s, "Sampled ", ";").to_string();
    assert_ne!(sampled(a), sampled(b), "a new sample each time");
    let memory = |s: &str| between(s, "<h2>Memory</h2>", "</div>").to_string();
    let rx = |s: &str| between(s, "<h2>Network enp0s1</h2>", "</div>").to_string();
    assert!(
        memory(a) != memory(b) || rx(a) != rx(b),
        "the fake host's figures move:\n{a}\n{b}"
    );
    assert_csp_clean("SSE fragment", b);

    // The charts hold one point per sample: CPU has at least two by now,
    // and the network chart a rate (which needs two samples).
    let page = get(&c.app, "/dashboard", &cookies).await;
    let cpu_card = between(&page.body, "<h2>CPU</h2>", "</section>");
    let path = between(cpu_card, "<path class=\"line series-0\" d=\"", "\"");
    let points = path.split(['M', 'L']).filter(|p| !p.trim().is_empty()).count();
    assert!(points >= 2, "{cpu_card}");
    let headline = between(cpu_card, "<span class=\"headline\">", "<");
    assert!(
        cpu_card.contains(&format!("busy {headline}")),
        "legend shows the last value: {cpu_card}"
    );
    let net = between(&page.body, "<h2>Network enp0s1</h2>", "</section>");
    assert!(net.contains("<path class=\"line series-0\""), "{net}");
    assert!(net.contains("received ") && net.contains("/s"), "{net}");
    assert!(!net.contains("Collecting data"), "{net}");
}

#[tokio::test]
async fn vendored_assets_are_served_with_types_and_long_cache() {
    let c = Console::with_agent().await;
    let cookies = sign_in(&c.app).await;
    let page = get(&c.app, "/about", &cookies).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let htmx = between(&page.body, "<script src=\"", "\"").to_string();
    assert!(
        htmx.starts_with("/static/vendor/") && htmx.ends_with("/htmx.min.js"),
        "{htmx}"
    );
    let sse_url = between(&page.body, "htmx.min.js\" defer></script>\n<script src=\"", "\"").to_string();
    assert!(sse_url.ends_with("/htmx-ext-sse.min.js"), "{sse_url}");
    for url in [&htmx, &sse_url] {
        let res = get(&c.app, url, "").await;
        assert_eq!(res.status, StatusCode::OK, "{url}: assets need no session");
        assert_eq!(res.header(header::CONTENT_TYPE), "text/javascript; charset=utf-8");
        assert_eq!(res.header(header::CACHE_CONTROL), "public, max-age=31536000, immutable");
        let hash = url.split('/').nth(3).unwrap();
        assert_eq!(res.header(header::ETAG), format!("\"{hash}\""));
        assert!(res.body.len() > 2000);
        let mut req = Request::get(url.as_str())
            .header(header::IF_NONE_MATCH, format!("\"{hash}\""))
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo("192.0.2.10:50000".parse::<SocketAddr>().unwrap()));
        let res = c.app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    }
    assert!(
        page.body.contains("htmx.org") && page.body.contains("2.0.11"),
        "{}",
        page.body
    );
    assert!(page.body.contains("htmx-ext-sse") && page.body.contains("0BSD"));
    let stale = get(&c.app, "/static/vendor/0000000000000000/htmx.min.js", "").await;
    assert_eq!(stale.status, StatusCode::OK, "an old page still gets htmx");
    assert_eq!(stale.header(header::CACHE_CONTROL), "no-cache");
    let missing = get(&c.app, "/static/vendor/0000000000000000/evil.js", "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let css = between(&page.body, "<link rel=\"stylesheet\" href=\"", "\"").to_string();
    assert!(css.starts_with("/static/app.css?v="), "{css}");
    let res = get(&c.app, &css, "").await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.header(header::CONTENT_TYPE).starts_with("text/css"));
    assert!(res.body.contains("svg.chart"));
}

#[tokio::test]
async fn the_about_page_names_versions_and_pages_keep_the_csp() {
    let c = Console::with_agent().await;
    let cookies = sign_in(&c.app).await;
    let about = get(&c.app, "/about", &cookies).await;
    assert_eq!(about.status, StatusCode::OK);
    let b = &about.body;
    assert!(b.contains("DebVisor console</td><td><code>"), "{b}");
    assert!(b.contains("DebVisor agent</td><td><code>"), "{b}");
    assert!(b.contains("Image debvisor-node"), "{b}");
    assert!(b.contains("Linux kernel</td><td><code>sim</code>"), "{b}");
    assert!(b.contains("Apache-2.0"));
    assert!(b.contains("aria-current=\"page\">About</a>"));
    for path in ["/about", "/dashboard", "/status"] {
        let page = get(&c.app, path, &cookies).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert_csp_clean(path, &page.body);
    }
    let login = get(&c.app, "/login", "").await;
    assert_csp_clean("/login", &login.body);
    let signed_out = get(&c.app, "/dashboard", "").await;
    assert_eq!(
        signed_out.status,
        StatusCode::SEE_OTHER,
        "the dashboard needs a session"
    );
    let events = get(&c.app, "/dashboard/events", "").await;
    assert_ne!(events.status, StatusCode::OK, "so does its stream");
}

#[tokio::test]
async fn a_viewer_sees_the_dashboard_and_only_the_links_it_may_open() {
    let c = support::console_with_db().await;
    let admin = sign_in(&c.app).await;
    let csrf = support::page_csrf(&c.app, "/users", &admin).await;
    let pw = "a long enough password";
    let made = support::post(
        &c.app,
        "192.0.2.10",
        "/users",
        &admin,
        &[
            ("name", "watcher"),
            ("role", "viewer"),
            ("password", pw),
            ("confirm", pw),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.body);
    let viewer = support::sign_in_as(&c.app, "watcher", pw).await;
    let page = get(&c.app, "/dashboard", &viewer).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let nav = between(&page.body, "<nav class=\"nav\"", "</nav>");
    for shown in ["/dashboard", "/services", "/health", "/about"] {
        assert!(nav.contains(&format!("href=\"{shown}\"")), "{shown} in {nav}");
    }
    for hidden in ["/audit", "/users", "/settings"] {
        assert!(!nav.contains(&format!("href=\"{hidden}\"")), "{hidden} in {nav}");
    }
    assert_eq!(get(&c.app, "/about", &viewer).await.status, StatusCode::OK);
}

/// A live stream is the browser's doing, not the user's: reopening it does
/// not keep an idle session alive, and it ends when the session does.
#[tokio::test]
async fn live_streams_neither_extend_nor_outlive_a_session() {
    let c = Console::with_agent().await;
    let cookies = sign_in(&c.app).await;
    c.clock.advance(Duration::from_secs(10 * 60));
    let res = support::open(&c.app, "/dashboard/events", &cookies).await;
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    c.clock.advance(Duration::from_secs(6 * 60));
    // 16 minutes since the last page: the stream's reopening did not count.
    let page = get(&c.app, "/dashboard", &cookies).await;
    assert_eq!(page.header(header::LOCATION), "/login", "{}", page.status);

    // A stream open when its session ends (here: sign-out) stops.
    let cookies = sign_in(&c.app).await;
    let csrf = support::page_csrf(&c.app, "/dashboard", &cookies).await;
    let mut body = support::open(&c.app, "/dashboard/events", &cookies)
        .await
        .into_body()
        .into_data_stream();
    let out = support::post(&c.app, "192.0.2.10", "/logout", &cookies, &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let ended = tokio::time::timeout(Duration::from_secs(20), async { while body.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the live stream outlived its session");
}
