//! Health checks: `debvisor.health.v1.NodeHealthService` List and Watch.
//!
//! | route | permission | what |
//! |---|---|---|
//! | `GET /health` | `ViewDashboard` | every check (kind, status, finding, last run, interval, result strip), node state, boot gate, machine config, alerts |
//! | `GET /health/events` | `ViewDashboard` | server-sent events: a `health` event with the re-rendered panel on every change (Watch); htmx's SSE extension swaps it in |
//!
//! The summary reuses [`HealthView`] of the status page; the rows here add
//! what only this page shows.

use std::time::{SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use debvisor_api::health::v1::node_health_service_client::NodeHealthServiceClient;
use debvisor_api::health::v1::{CheckResult, CheckStatus, ListRequest, NodeHealth, Severity, WatchRequest};

use crate::AppState;
use crate::agent::{bounded, on_behalf_of};
use crate::error::AppError;
use crate::handlers::{RequireSession, live_events, nav};
use crate::pages::audit::utc_text;
use crate::pages::services::message_page;
use crate::roles::Permission;
use crate::views::{Chrome, HealthView};

/// The routes of the health page.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(page))
        .route("/health/events", get(events))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// "250 ms", "30 s", "5 min", "2 h", "1 d" (the largest whole unit).
pub fn human_ms(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1000, "s")];
    for (size, unit) in UNITS {
        if ms >= size && ms % size == 0 || ms >= size * 10 {
            return format!("{} {unit}", ms / size);
        }
    }
    format!("{ms} ms")
}

/// "just now", "12 s ago", "3 min ago", "2 h ago", "4 d ago" (rounded down).
pub fn human_ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0 => "just now".to_string(),
        1..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// (text, CSS class) of a result status.
fn status_of(r: Option<&CheckResult>) -> (&'static str, &'static str) {
    match r.and_then(|r| CheckStatus::try_from(r.status).ok()).unwrap_or_default() {
        CheckStatus::Pass => ("pass", "ok"),
        CheckStatus::Warn => ("warn", "warn"),
        CheckStatus::Fail => ("fail", "fail"),
        _ => ("pending", ""),
    }
}

/// One cell of a check's result strip.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Its x position in the strip.
    pub x: usize,
    /// "ok", "warn", "fail" or "" (pending).
    pub class: &'static str,
    /// "pass at 18:45:03 UTC: ..." for the tooltip.
    pub title: String,
}

/// One check, formatted for the health page.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckLine {
    /// "service/debvisor-agent".
    pub name: String,
    /// "service".
    pub kind: String,
    /// "pass", "warn", "fail" or "pending".
    pub status: &'static str,
    /// Badge class.
    pub class: &'static str,
    /// Required for a good boot.
    pub required: bool,
    /// What the last run found.
    pub message: String,
    /// When the last run started ("" before the first).
    pub last_run: String,
    /// "12 s ago".
    pub ago: String,
    /// How long it took.
    pub duration: String,
    /// "every 30 s".
    pub interval: String,
    /// Consecutive failures.
    pub failures: u32,
    /// The unit remediation restarts.
    pub unit: String,
    /// Results oldest to newest (the last is the latest run).
    pub strip: Vec<Cell>,
    /// The strip's width in SVG units.
    pub strip_width: usize,
}

/// One alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertLine {
    /// When.
    pub time: String,
    /// "info", "warning", "critical".
    pub severity: &'static str,
    /// Badge class.
    pub class: &'static str,
    /// "restarted", "boot-good"...
    pub action: String,
    /// The check, if any.
    pub check: String,
    /// For people.
    pub message: String,
}

/// Everything the health panel shows.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthDetail {
    /// The summary the status page shows too.
    pub summary: HealthView,
    /// The machine config in effect ("" on safe defaults).
    pub digest: String,
    /// The booted slot.
    pub slot: String,
    /// The gate's deadline.
    pub gate_deadline: String,
    /// When the gate decided ("" while pending).
    pub gate_decided: String,
    /// Every check.
    pub checks: Vec<CheckLine>,
    /// Recent alerts, newest first.
    pub alerts: Vec<AlertLine>,
    /// When this was rendered.
    pub updated: String,
}

const CELL: usize = 10;

impl HealthDetail {
    /// Formats `h` as seen at `now` (ms since the epoch).
    pub fn new(h: &NodeHealth, now: i64) -> Self {
        let gate = h.gate.clone().unwrap_or_default();
        let checks = h
            .checks
            .iter()
            .map(|c| {
                let (status, class) = status_of(c.last.as_ref());
                let last = c.last.clone().unwrap_or_default();
                let ran = last.started_unix_ms != 0;
                let runs: Vec<&CheckResult> = c.history.iter().rev().chain(c.last.as_ref()).collect();
                let strip: Vec<Cell> = runs
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let (text, class) = status_of(Some(r));
                        Cell {
                            x: i * CELL,
                            class,
                            title: format!("{text} at {}: {}", utc_text(r.started_unix_ms), r.message),
                        }
                    })
                    .collect();
                CheckLine {
                    name: c.name.clone(),
                    kind: c.kind.clone(),
                    status,
                    class,
                    required: c.required,
                    message: last.message.clone(),
                    last_run: if ran {
                        utc_text(last.started_unix_ms)
                    } else {
                        String::new()
                    },
                    ago: if ran {
                        human_ago(now - last.started_unix_ms)
                    } else {
                        String::new()
                    },
                    duration: if ran {
                        format!("{} ms", last.duration_ms)
                    } else {
                        String::new()
                    },
                    interval: format!("every {}", human_ms(i64::from(c.interval_ms))),
                    failures: c.consecutive_failures,
                    unit: c.unit.clone(),
                    strip_width: strip.len().max(1) * CELL,
                    strip,
                }
            })
            .collect();
        let alerts = h
            .alerts
            .iter()
            .map(|a| {
                let (severity, class) = match Severity::try_from(a.severity).unwrap_or_default() {
                    Severity::Critical => ("critical", "fail"),
                    Severity::Warning => ("warning", "warn"),
                    _ => ("info", "ok"),
                };
                AlertLine {
                    time: utc_text(a.time_unix_ms),
                    severity,
                    class,
                    action: a.action.clone(),
                    check: a.check.clone(),
                    message: a.message.clone(),
                }
            })
            .collect();
        HealthDetail {
            summary: HealthView::from(h),
            digest: h.config_digest.clone(),
            slot: gate.slot.clone(),
            gate_deadline: if gate.deadline_unix_ms == 0 {
                String::new()
            } else {
                utc_text(gate.deadline_unix_ms)
            },
            gate_decided: if gate.decided_unix_ms == 0 {
                String::new()
            } else {
                utc_text(gate.decided_unix_ms)
            },
            checks,
            alerts,
            updated: utc_text(now),
        }
    }
}

/// The live part of the health page (also each SSE event's data).
#[derive(Template)]
#[template(path = "health_panel.html")]
pub struct HealthPanel {
    /// The node's health, or why it could not be read.
    pub health: Result<HealthDetail, String>,
}

/// The health page.
#[derive(Template)]
#[template(path = "health.html")]
pub struct HealthPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The panel.
    pub panel: HealthPanel,
}

async fn page(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewDashboard)?;
    let user = session.user.clone();
    let request = ListRequest {
        include_history: true,
        kind: String::new(),
    };
    let answer = bounded("health list", async {
        let mut client = NodeHealthServiceClient::new(state.node().channel().await?);
        Ok(client.list(on_behalf_of(request, Some(&user))).await?.into_inner())
    })
    .await;
    let page = HealthPage {
        chrome: state.chrome(Some(nav(session, "health"))).await,
        panel: HealthPanel {
            health: answer.map(|h| HealthDetail::new(&h, now_ms())).map_err(|e| e.summary()),
        },
    };
    Ok(Html(page.render()?).into_response())
}

async fn events(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewDashboard)?;
    let user = session.user.clone();
    let opened = bounded("health watch", async {
        let mut client = NodeHealthServiceClient::new(state.node().channel().await?);
        let request = WatchRequest { include_history: true };
        Ok(client.watch(on_behalf_of(request, Some(&user))).await?.into_inner())
    })
    .await;
    let stream = match opened {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("The node's health cannot be watched: {}", e.summary());
            return Ok(message_page(&state, session, StatusCode::BAD_GATEWAY, "Agent unreachable", msg).await);
        }
    };
    // Ends with the agent's stream; dropping it (the browser left) cancels
    // the Watch call at the agent.
    Ok(live_events(&state, session, "health panel", stream, |health| {
        let panel = HealthPanel {
            health: Ok(HealthDetail::new(&health, now_ms())),
        };
        Ok(Event::default().event("health").data(panel.render()?))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_ms(250), "250 ms");
        assert_eq!(human_ms(30_000), "30 s");
        assert_eq!(human_ms(300_000), "5 min");
        assert_eq!(human_ms(90_000), "90 s");
        assert_eq!(human_ms(3_600_000), "1 h");
        assert_eq!(human_ms(86_400_000), "1 d");
        assert_eq!(human_ago(400), "just now");
        assert_eq!(human_ago(-5), "just now");
        assert_eq!(human_ago(59_999), "59 s ago");
        assert_eq!(human_ago(125_000), "2 min ago");
        assert_eq!(human_ago(7_200_000), "2 h ago");
        assert_eq!(human_ago(90_000_000), "1 d ago");
    }

    #[test]
    fn checks_keep_every_row_and_their_history_oldest_first() {
        let mut h = crate::fakes::sample_health();
        h.checks[0].last.as_mut().unwrap().started_unix_ms = 1_795_717_800_000;
        let newest = h.checks[0].last.clone().unwrap();
        let mut older = newest.clone();
        older.status = CheckStatus::Fail as i32;
        older.started_unix_ms -= 30_000;
        h.checks[0].history = vec![older];
        let d = HealthDetail::new(&h, newest.started_unix_ms + 12_000);
        assert_eq!(d.checks.len(), h.checks.len());
        let c = &d.checks[0];
        assert_eq!(c.strip.len(), 2);
        assert_eq!((c.strip[0].class, c.strip[0].x, c.strip[1].x), ("fail", 0, CELL));
        assert_eq!(c.ago, "12 s ago");
        let html = HealthPanel { health: Ok(d) }.render().unwrap();
        assert!(!html.contains("style="), "CSP forbids inline styles");
        assert!(html.contains(&h.checks[1].name), "{html}");
    }
}
