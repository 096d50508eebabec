//! The audit page against a real agent's in-memory audit log: filters,
//! paging, the CSV export and bad filter input.

use crate::support;

use axum::http::{StatusCode, header};
use debvisor_audit::{NewEntry, Outcome};
use support::{Console, get, sign_in};

async fn record(c: &Console, actor: &str, action: &str, target: &str, error: Option<&str>) {
    c.agent()
        .audit
        .append(NewEntry {
            actor: actor.into(),
            source: "unix:pid=42".into(),
            action: action.into(),
            target: target.into(),
            outcome: error.map_or(Outcome::Ok, |e| Outcome::Error(e.into())),
        })
        .await
        .unwrap();
}

async fn seeded() -> (Console, String) {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    record(&c, "console:alice", "units.Restart", "cron.service", None).await;
    record(&c, "uid:0", "node.Reboot", "reason: kernel, \"urgent\"", None).await;
    record(
        &c,
        "console:bob",
        "units.Stop",
        "ssh.service",
        Some("NotFound: no such unit"),
    )
    .await;
    (c, s)
}

/// The actors of the table's rows, in order.
fn actors(body: &str) -> Vec<String> {
    let table = body.split("<tbody>").nth(1).unwrap_or("");
    table
        .split("<tr>")
        .skip(1)
        .filter_map(|row| row.split("<code>").nth(1)?.split("</code>").next().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn the_log_is_listed_newest_first_and_filtered() {
    let (c, s) = seeded().await;
    let page = get(&c.app, "/audit", &s).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    // Signing in may be audited too (before the seeded records).
    let total = c.agent().audit.query(&Default::default()).await.unwrap().total_matching;
    assert_eq!(actors(&page.body)[..3], ["console:bob", "uid:0", "console:alice"]);
    assert!(
        page.body.contains(&format!("{total} matching records")),
        "{}",
        page.body
    );
    assert!(page.body.contains("NotFound: no such unit"));

    let by_user = get(&c.app, "/audit?actor=console%3Aalice", &s).await;
    assert_eq!(actors(&by_user.body), ["console:alice"]);
    assert!(
        by_user.body.contains("value=\"console:alice\""),
        "the form keeps the filter"
    );
    let by_action = get(&c.app, "/audit?action=units.", &s).await;
    assert_eq!(actors(&by_action.body), ["console:bob", "console:alice"]);
    let failed = get(&c.app, "/audit?result=error", &s).await;
    assert_eq!(actors(&failed.body), ["console:bob"]);
    assert!(
        failed.body.contains("<option value=\"error\" selected>"),
        "{}",
        failed.body
    );
    let future = get(&c.app, "/audit?from=2999-01-01T00%3A00", &s).await;
    assert_eq!(future.status, StatusCode::OK);
    assert!(actors(&future.body).is_empty(), "{}", future.body);
    assert!(future.body.contains("No record matches"));
    let past = get(&c.app, "/audit?from=2000-01-01T00%3A00&to=2999-01-01T00%3A00", &s).await;
    assert_eq!(actors(&past.body).len() as u64, total);
}

#[tokio::test]
async fn bad_filters_are_named_next_to_the_field_with_422() {
    let (c, s) = seeded().await;
    let page = get(&c.app, "/audit?from=yesterday&actor=console%3Aalice", &s).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"from-error\""), "{}", page.body);
    assert!(page.body.contains("yesterday"), "names the value");
    assert!(page.body.contains("YYYY-MM-DDTHH:MM"), "says what to do");
    assert!(page.body.contains("value=\"console:alice\""), "keeps what was typed");
    assert!(actors(&page.body).is_empty());

    let page = get(&c.app, "/audit?from=2026-11-26T18%3A30&to=2026-11-26T18%3A00", &s).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"to-error\""), "{}", page.body);
    let page = get(&c.app, "/audit?result=maybe", &s).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"result-error\""));
    let page = get(&c.app, "/audit?actor=a%0Ab", &s).await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a line break in the user filter"
    );
    let export = get(&c.app, "/audit/export.csv?to=2026-13-40T99%3A00", &s).await;
    assert_eq!(export.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(export.body.contains("id=\"to-error\""));
}

#[tokio::test]
async fn the_csv_export_is_an_attachment_with_the_filters_applied() {
    let (c, s) = seeded().await;
    let all = get(&c.app, "/audit/export.csv", &s).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(all.header(header::CONTENT_TYPE), "text/csv; charset=utf-8");
    let disposition = all.header(header::CONTENT_DISPOSITION);
    assert!(
        disposition.starts_with("attachment; filename=\"debvisor-audit-"),
        "{disposition}"
    );
    let lines: Vec<&str> = all.body.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "seq,time,actor,source,action,target,result,error,hash");
    let total = c.agent().audit.query(&Default::default()).await.unwrap().total_matching;
    assert_eq!(lines.len() as u64, 1 + total, "{lines:?}");
    assert!(
        all.body.contains(",\"reason: kernel, \"\"urgent\"\"\","),
        "commas and quotes are quoted: {}",
        all.body
    );

    let filtered = get(&c.app, "/audit/export.csv?actor=console%3Abob&result=error", &s).await;
    let lines: Vec<&str> = filtered.body.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains(",console:bob,"), "{}", lines[1]);
    let page = get(&c.app, "/audit?actor=console%3Abob", &s).await;
    assert!(
        page.body.contains("href=\"/audit/export.csv?actor=console%3Abob\""),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn pages_walk_forward_and_back() {
    let c = Console::with_agent().await;
    for i in 0..120 {
        record(&c, &format!("console:u{i:03}"), "units.Restart", "cron.service", None).await;
    }
    let s = sign_in(&c.app).await;
    let first = get(&c.app, "/audit?action=units.", &s).await;
    let rows = actors(&first.body);
    assert_eq!((rows.len(), rows[0].as_str()), (50, "console:u119"));
    assert!(first.body.contains("120 matching records, page 1"));
    assert!(!first.body.contains("rel=\"prev\""));
    let next = |body: &str, rel: &str| -> String {
        let marker = format!("\" rel=\"{rel}\"");
        let end = body.find(&marker).unwrap_or_else(|| panic!("no {rel} link: {body}"));
        let start = body[..end].rfind("href=\"").unwrap() + 6;
        body[start..end].replace("&amp;", "&").replace("&#38;", "&")
    };
    let second = get(&c.app, &next(&first.body, "next"), &s).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(actors(&second.body)[0], "console:u069");
    assert!(second.body.contains("page 2"));
    let third = get(&c.app, &next(&second.body, "next"), &s).await;
    let rows = actors(&third.body);
    assert_eq!((rows.len(), rows[0].as_str()), (20, "console:u019"));
    assert!(!third.body.contains("rel=\"next\""), "the last page");
    let back = get(&c.app, &next(&third.body, "prev"), &s).await;
    assert_eq!(actors(&back.body)[0], "console:u069");
    let home = get(&c.app, &next(&back.body, "prev"), &s).await;
    assert_eq!(actors(&home.body)[0], "console:u119");
    assert!(home.body.contains("page 1"));

    let bad = get(&c.app, "/audit?page=x%2Cy", &s).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
}
