//! The services pages against a real agent with fake units and journal:
//! list and filters, confirmed actions that land in the agent's audit log as
//! the console user, CSRF, bad unit names, the journal fragment and its live
//! tail.

use crate::support;

use std::time::Duration;

use axum::http::{StatusCode, header};
use debvisor_api::validate::UnitName;
use debvisor_audit::Query;
use debvisor_systemd::Units;
use support::{Console, get, open, post, read_until, sign_in};

async fn main_pid(c: &Console, unit: &str) -> Option<u32> {
    let name = UnitName::try_from(unit).unwrap();
    c.agent().units.get(&name).await.unwrap().main_pid
}

async fn audit_records(c: &Console, action: &str) -> Vec<debvisor_audit::AuditRecord> {
    let q = Query {
        action: Some(action.to_string()),
        ..Default::default()
    };
    c.agent().audit.query(&q).await.unwrap().records
}

/// Every unit link on a list page, in page order.
fn listed(body: &str) -> Vec<String> {
    body.split("<a href=\"/services/")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_list_shows_units_sorted_with_state_badges() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let page = get(&c.app, "/services", &s).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let names = listed(&page.body);
    assert!(names.contains(&"cron.service".to_string()), "{names:?}");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    assert!(
        page.body.contains("<span class=\"tag fail\">failed</span>"),
        "zfs-import-cache is failed: {}",
        page.body
    );
    assert!(page.body.contains("<span class=\"tag ok\">active</span>"));
    assert!(!page.body.contains("style="), "CSP forbids inline styles");
}

#[tokio::test]
async fn filters_narrow_the_list() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let page = get(&c.app, "/services?state=failed", &s).await;
    assert_eq!(listed(&page.body), ["zfs-import-cache.service"]);
    assert!(
        page.body.contains("<option value=\"failed\" selected>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("1 unit: 0 active, 1 failed, 0 other"),
        "{}",
        page.body
    );
    let named = listed(&get(&c.app, "/services?q=debvisor", &s).await.body);
    assert_eq!(named, ["debvisor-agent.service", "debvisor-webui.service"]);
    let timers = listed(&get(&c.app, "/services?type=timer", &s).await.body);
    assert_eq!(timers, ["fstrim.timer"]);
    let inactive = listed(&get(&c.app, "/services?state=inactive&type=service", &s).await.body);
    assert!(
        inactive.contains(&"ssh.service".to_string()),
        "installed but not loaded units count as inactive: {inactive:?}"
    );
    assert!(!inactive.contains(&"cron.service".to_string()));
    let by_state = listed(&get(&c.app, "/services?type=service&sort=state", &s).await.body);
    assert_eq!(by_state[0], "zfs-import-cache.service", "failed first: {by_state:?}");
    assert_eq!(by_state[1], "cron.service", "then active, by name: {by_state:?}");
    let page = get(&c.app, "/services?q=cron&state=active", &s).await;
    assert_eq!(listed(&page.body), ["cron.service"]);
    assert!(page.body.contains("value=\"cron\""), "the form keeps what was typed");
}

#[tokio::test]
async fn bad_filters_are_refused_next_to_the_field() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let page = get(&c.app, "/services?state=sleeping", &s).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.body.contains("State &#34;sleeping&#34;") || page.body.contains("State &quot;sleeping&quot;"),
        "{}",
        page.body
    );
    let page = get(&c.app, "/services?q=a%20b%3B", &s).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"q-error\""), "{}", page.body);
    let page = get(&c.app, "/services?sort=size", &s).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"sort-error\""), "{}", page.body);
    let page = get(&c.app, "/services?type=car", &s).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"type-error\""), "{}", page.body);
    assert!(listed(&page.body).is_empty(), "no list for bad filters");
}

#[tokio::test]
async fn the_unit_page_shows_its_figures_and_actions() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let page = get(&c.app, "/services/cron.service", &s).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for want in [
        "Regular background program processing daemon",
        "590",
        "enabled",
        "UTC",
        "/services/cron.service/confirm?action=restart",
        "/services/cron.service/confirm?action=stop",
        "data-confirm=\"Restart cron.service?\"",
        "/services/cron.service/journal/events?since=",
    ] {
        assert!(page.body.contains(want), "{want}: {}", page.body);
    }
    assert!(!page.body.contains("action=start"), "a running unit offers no Start");
    let missing = get(&c.app, "/services/nope.service", &s).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("nope.service"), "{}", missing.body);
}

#[tokio::test]
async fn a_confirmed_restart_runs_for_the_user_and_is_audited() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let before = main_pid(&c, "cron.service").await;
    assert_eq!(before, Some(590));

    let confirm = get(&c.app, "/services/cron.service/confirm?action=restart", &s).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    assert!(confirm.body.contains("Restart cron.service?"), "{}", confirm.body);
    assert!(confirm.body.contains("action=\"/services/cron.service/action\""));
    let csrf = confirm.csrf_field();

    let done = post(
        &c.app,
        "192.0.2.10",
        "/services/cron.service/action",
        &s,
        &[("csrf", &csrf), ("action", "restart")],
    )
    .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.header(header::LOCATION), "/services/cron.service");

    let after = main_pid(&c, "cron.service").await;
    assert!(after.is_some() && after != before, "a new main PID: {after:?}");
    let records = audit_records(&c, "units.Restart").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (records[0].actor.as_str(), records[0].target.as_str(), records[0].ok),
        ("console:admin", "cron.service", true)
    );

    let page = get(&c.app, "/services/cron.service", &s).await;
    assert!(
        page.body.contains("class=\"flash ok\"") && page.body.contains("cron.service restarted."),
        "{}",
        page.body
    );
    let again = get(&c.app, "/services/cron.service", &s).await;
    assert!(!again.body.contains("class=\"flash"), "a flash message shows once");
}

#[tokio::test]
async fn the_agents_refusal_is_the_flash_message() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let csrf = support::page_csrf(&c.app, "/services/apt-daily.service", &s).await;
    let done = post(
        &c.app,
        "192.0.2.10",
        "/services/apt-daily.service/action",
        &s,
        &[("csrf", &csrf), ("action", "start")],
    )
    .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    let page = get(&c.app, "/services/apt-daily.service", &s).await;
    assert!(page.body.contains("class=\"flash fail\""), "{}", page.body);
    assert!(page.body.contains("Could not start apt-daily.service"), "{}", page.body);
    assert!(page.body.contains("masked"), "the agent's reason: {}", page.body);
    let records = audit_records(&c, "units.Start").await;
    assert_eq!((records.len(), records[0].ok), (1, false));
}

#[tokio::test]
async fn actions_without_the_right_csrf_token_are_refused() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    for form in [
        vec![("action", "restart")],
        vec![("csrf", "0".repeat(64).leak() as &str), ("action", "restart")],
    ] {
        let r = post(&c.app, "192.0.2.10", "/services/cron.service/action", &s, &form).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{form:?}");
    }
    assert_eq!(main_pid(&c, "cron.service").await, Some(590), "nothing was restarted");
    assert!(audit_records(&c, "units.*").await.is_empty());
}

#[tokio::test]
async fn bad_unit_names_never_reach_the_agent() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let csrf = support::page_csrf(&c.app, "/services", &s).await;
    for path in [
        "/services/cron%3Brm%20-rf.service",
        "/services/..%2F..%2Fetc%2Fpasswd",
        "/services/-x.service",
        "/services/nosuffix",
    ] {
        // Stay under the console's 10 requests per second per user.
        c.clock.advance(Duration::from_secs(2));
        let page = get(&c.app, path, &s).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{path}: {}", page.body);
        assert!(page.body.contains("Invalid unit name"), "{path}: {}", page.body);
        let r = post(
            &c.app,
            "192.0.2.10",
            &format!("{path}/action"),
            &s,
            &[("csrf", &csrf), ("action", "restart")],
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        for sub in ["journal", "journal/events", "confirm?action=stop"] {
            let r = get(&c.app, &format!("{path}/{sub}"), &s).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}/{sub}");
        }
    }
    c.clock.advance(Duration::from_secs(2));
    let r = post(
        &c.app,
        "192.0.2.10",
        "/services/cron.service/action",
        &s,
        &[("csrf", &csrf), ("action", "enable")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("not one of start, stop or restart"), "{}", r.body);
    assert!(audit_records(&c, "units.*").await.is_empty(), "the agent was not asked");
}

#[tokio::test]
async fn the_journal_fragment_escapes_and_colours_lines() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let j = &c.agent().journal;
    j.log(
        "cron.service",
        6,
        "cron",
        Some(590),
        "(root) CMD (run-parts /etc/cron.hourly)",
    );
    j.log(
        "cron.service",
        3,
        "cron",
        Some(590),
        "<script>alert('x')</script> & more",
    );
    j.log("ssh.service", 6, "sshd", Some(7), "not this unit");
    let frag = get(&c.app, "/services/cron.service/journal", &s).await;
    assert_eq!(frag.status, StatusCode::OK, "{}", frag.body);
    assert!(!frag.body.contains("<script>"), "{}", frag.body);
    assert!(
        frag.body.contains("&#60;script&#62;") || frag.body.contains("&lt;script&gt;"),
        "{}",
        frag.body
    );
    assert!(
        frag.body.contains("<li class=\"log-crit\">"),
        "err is coloured: {}",
        frag.body
    );
    assert!(frag.body.contains("cron[590]"));
    assert!(!frag.body.contains("not this unit"));
    let page = get(&c.app, "/services/cron.service", &s).await;
    assert!(
        page.body.contains("run-parts /etc/cron.hourly"),
        "no-JS tail on the page"
    );
    assert!(!page.body.contains("<script>alert"));
}

#[tokio::test]
async fn the_live_tail_delivers_new_lines() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    c.agent()
        .journal
        .log("cron.service", 6, "cron", Some(590), "before connecting");
    let res = open(&c.app, "/services/cron.service/journal/events", &s).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = res.into_body().into_data_stream();
    read_until(&mut body, "before connecting", 10).await;
    c.agent()
        .journal
        .log("cron.service", 4, "cron", Some(590), "fresh <b>line</b>");
    let text = read_until(&mut body, "fresh", 10).await;
    assert!(text.contains("event: line"), "{text}");
    assert!(text.contains("log-warn"), "{text}");
    assert!(!text.contains("<b>line"), "escaped: {text}");

    let since = get(&c.app, "/services/cron.service/journal/events?since=soon", &s).await;
    assert_eq!(since.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_script_is_served_and_pages_use_no_inline_script() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let js = get(&c.app, "/static/services.js", "").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.header(header::CONTENT_TYPE).starts_with("text/javascript"));
    assert!(js.body.contains("EventSource"));
    for path in [
        "/services",
        "/services/cron.service",
        "/services/cron.service/confirm?action=stop",
    ] {
        let page = get(&c.app, path, &s).await;
        assert!(!page.body.contains("<script>"), "{path}");
        assert!(!page.body.contains("onclick"), "{path}");
    }
}

#[tokio::test]
async fn signed_out_visitors_go_to_the_sign_in_page() {
    let c = Console::with_agent().await;
    for path in [
        "/services",
        "/services/cron.service",
        "/services/cron.service/journal/events",
    ] {
        let r = get(&c.app, path, "").await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.header(header::LOCATION), "/login");
    }
    let r = post(
        &c.app,
        "192.0.2.10",
        "/services/cron.service/action",
        "",
        &[("action", "stop")],
    )
    .await;
    assert_eq!(r.header(header::LOCATION), "/login");
}

#[tokio::test]
async fn the_unit_page_offers_what_the_role_may_use() {
    const PW: &str = "a long enough password";
    let c = support::console_with_db().await;
    let admin = sign_in(&c.app).await;
    for (role, journal, actions) in [
        ("viewer", false, false),
        ("developer", true, false),
        ("operator", true, true),
    ] {
        c.clock.advance(Duration::from_secs(2));
        let csrf = support::page_csrf(&c.app, "/users", &admin).await;
        let name = format!("{role}1");
        let form = [
            ("name", name.as_str()),
            ("role", role),
            ("password", PW),
            ("confirm", PW),
            ("csrf", &csrf),
        ];
        let made = post(&c.app, "192.0.2.10", "/users", &admin, &form).await;
        assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.body);
        let s = support::sign_in_as(&c.app, &name, PW).await;
        let page = get(&c.app, "/services/cron.service", &s).await;
        assert_eq!(page.status, StatusCode::OK, "{role}");
        assert_eq!(
            page.body.contains("class=\"journal\""),
            journal,
            "{role}: {}",
            page.body
        );
        assert_eq!(
            page.body.contains("data-action=\"restart\""),
            actions,
            "{role}: {}",
            page.body
        );
        let list = get(&c.app, "/services", &s).await;
        assert_eq!(list.status, StatusCode::OK, "{role}");
    }
}

#[tokio::test]
async fn the_live_tail_resumes_after_the_lines_the_page_shows() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let j = &c.agent().journal;
    j.log("cron.service", 6, "cron", Some(590), "already on the page");
    let shown = j.entries().last().unwrap().time_unix_us;
    let page = get(&c.app, "/services/cron.service", &s).await;
    let since = format!("/services/cron.service/journal/events?since={}", shown + 1);
    assert!(page.body.contains(&since), "{}", page.body);
    let res = open(&c.app, &since, &s).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body().into_data_stream();
    tokio::time::sleep(Duration::from_millis(20)).await;
    j.log("cron.service", 6, "cron", Some(590), "written after loading");
    let text = read_until(&mut body, "written after loading", 10).await;
    assert!(!text.contains("already on the page"), "no repeat: {text}");
    assert!(
        text.contains(&format!("id: {}", j.entries().last().unwrap().time_unix_us)),
        "{text}"
    );
}
