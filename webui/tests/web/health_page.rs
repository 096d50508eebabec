//! The health page against a real agent with simulated health: every check
//! with its details and result strip, the node state, the boot gate and the
//! machine config; and the live panel over server-sent events.

use crate::support;

use axum::http::{StatusCode, header};
use support::{Console, get, open, read_until, sign_in};

const CHECKS: [&str; 7] = [
    "service/debvisor-agent",
    "service/debvisor-webui",
    "network/gateway",
    "dns",
    "storage/data",
    "resources/memory",
    "certificate/server",
];

#[tokio::test]
async fn the_page_shows_every_check_the_gate_and_the_config() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let page = get(&c.app, "/health", &s).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for check in CHECKS {
        assert!(
            page.body.contains(&format!("<code>{check}</code>")),
            "{check}: {}",
            page.body
        );
    }
    for want in [
        "Healthy",
        "6 of 7 checks pass",
        "<span class=\"tag ok\">Good</span>",
        "all required units active and required checks passing (simulated)",
        "<code>5153c0ffee42</code>",
        "every 10 s",
        "every 1 h",
        "node certificate expires in 21 days",
        "<span class=\"tag warn\">warn</span>",
        "slot A declared good (simulated)",
        "sse-connect=\"/health/events\" sse-swap=\"health\"",
    ] {
        assert!(page.body.contains(want), "{want}: {}", page.body);
    }
    // The agent check runs every 10 s and the simulated node booted a
    // minute ago: three earlier results and the latest.
    let agent_row = page.body.split("<code>service/debvisor-agent</code>").nth(1).unwrap();
    let strip = agent_row.split("</svg>").next().unwrap();
    assert_eq!(strip.matches("<rect class=\"cell ok\"").count(), 4, "{strip}");
    assert!(!page.body.contains("style="), "CSP forbids inline styles");
}

#[tokio::test]
async fn the_panel_is_live_over_server_sent_events() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let res = open(&c.app, "/health/events", &s).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = res.into_body().into_data_stream();
    let text = read_until(&mut body, "certificate/server", 10).await;
    assert!(text.starts_with("event: health"), "{text}");
    assert!(text.contains("5153c0ffee42"), "{text}");
    assert!(!text.contains("<html"), "a fragment, not a page");
}

#[tokio::test]
async fn without_an_agent_the_page_says_so() {
    let c = Console::new(support::temp_dir());
    let s = sign_in(&c.app).await;
    let page = get(&c.app, "/health", &s).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Agent unreachable"), "{}", page.body);
    assert!(page.body.contains("agent.sock"), "{}", page.body);
    let events = get(&c.app, "/health/events", &s).await;
    assert_eq!(events.status, StatusCode::BAD_GATEWAY);
}
