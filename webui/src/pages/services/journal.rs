//! A unit's journal: the last lines (on its page and as a fragment) and
//! the live tail as server-sent events.

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{Html, IntoResponse, Response};
use debvisor_api::units::v1::{LogEntry, StreamLogsRequest};
use debvisor_api::validate::UnitName;
use serde::Deserialize;

use super::{message_page, time_us, unit_from_path, units_client};
use crate::AppState;
use crate::agent::{AgentError, bounded, on_behalf_of};
use crate::error::AppError;
use crate::handlers::{RequireSession, live_events};
use crate::roles::Permission;

/// Journal lines shown without JavaScript (and before the live tail).
const JOURNAL_LINES: u32 = 100;

/// One journal line, escaped by the template.
#[derive(Debug, Clone, Template)]
#[template(path = "service_line.html")]
pub struct LogLine {
    /// "2026-11-26 18:45:03 UTC".
    pub time: String,
    /// Microseconds since the epoch (the SSE event id).
    pub time_us: u64,
    /// "err", "warning"...
    pub priority: &'static str,
    /// CSS class: "log-crit", "log-warn", "log-notice", "log-info", "log-debug".
    pub class: &'static str,
    /// "sshd[612]".
    pub source: String,
    /// The message.
    pub message: String,
}

impl From<&LogEntry> for LogLine {
    fn from(e: &LogEntry) -> Self {
        let (priority, class) = match e.priority {
            0 => ("emerg", "log-crit"),
            1 => ("alert", "log-crit"),
            2 => ("crit", "log-crit"),
            3 => ("err", "log-crit"),
            4 => ("warning", "log-warn"),
            5 => ("notice", "log-notice"),
            6 => ("info", "log-info"),
            _ => ("debug", "log-debug"),
        };
        LogLine {
            time: time_us(e.time_unix_us),
            time_us: e.time_unix_us,
            priority,
            class,
            source: if e.pid == 0 {
                e.identifier.clone()
            } else {
                format!("{}[{}]", e.identifier, e.pid)
            },
            message: e.message.clone(),
        }
    }
}

/// The journal lines of a unit as a fragment.
#[derive(Template)]
#[template(path = "service_journal.html")]
pub struct JournalFragment {
    /// The lines, oldest first, or why they could not be read.
    pub lines: Result<Vec<LogLine>, String>,
}

/// The last `JOURNAL_LINES` lines of `unit`, for `user`.
pub(super) async fn last_lines(state: &AppState, user: &str, unit: &UnitName) -> Result<Vec<LogLine>, AgentError> {
    let request = StreamLogsRequest {
        unit: unit.to_string(),
        lines: JOURNAL_LINES,
        follow: false,
        ..Default::default()
    };
    bounded("journal", async {
        let mut client = units_client(state).await?;
        let mut stream = client
            .stream_logs(on_behalf_of(request, Some(user)))
            .await?
            .into_inner();
        let mut lines = Vec::new();
        while let Some(entry) = stream.message().await? {
            lines.push(LogLine::from(&entry));
        }
        Ok(lines)
    })
    .await
}

pub(super) async fn journal_fragment(
    State(state): State<AppState>,
    required: RequireSession,
    Path(raw): Path<String>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewLogs)?;
    let name = match unit_from_path(&state, session, &raw).await {
        Ok(n) => n,
        Err(r) => return Ok(r),
    };
    let fragment = JournalFragment {
        lines: last_lines(&state, &session.user, &name).await.map_err(|e| e.summary()),
    };
    Ok(Html(fragment.render()?).into_response())
}

/// Where the live tail starts.
#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    since: Option<String>,
}

/// Parses a microsecond time ("" or digits).
fn parse_us(field: &str, raw: &str) -> Result<u64, String> {
    raw.trim().parse::<u64>().map_err(|_| {
        let shown: String = raw.chars().take(32).collect();
        format!("{field} {shown:?}: give microseconds since 1970 as digits")
    })
}

pub(super) async fn journal_events(
    State(state): State<AppState>,
    required: RequireSession,
    Path(raw): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewLogs)?;
    let name = match unit_from_path(&state, session, &raw).await {
        Ok(n) => n,
        Err(r) => return Ok(r),
    };
    let Query(query) = query.map_err(|_| AppError::BadRequest)?;
    // A reconnecting EventSource names the last line it got.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(|v| parse_us("Last-Event-ID", v).map(|t| t + 1));
    let since = match resume.or_else(|| {
        query
            .since
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| parse_us("since", s))
    }) {
        None => 0,
        Some(Ok(t)) => t,
        Some(Err(msg)) => return Ok(message_page(&state, session, StatusCode::BAD_REQUEST, "Bad request", msg).await),
    };
    let request = StreamLogsRequest {
        unit: name.to_string(),
        since_unix_us: since,
        lines: if since == 0 { 10 } else { 0 },
        follow: true,
        ..Default::default()
    };
    let user = session.user.clone();
    let opened = bounded("journal follow", async {
        let mut client = units_client(&state).await?;
        Ok(client
            .stream_logs(on_behalf_of(request, Some(&user)))
            .await?
            .into_inner())
    })
    .await;
    let stream = match opened {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("The journal cannot be followed: {}", e.summary());
            return Ok(message_page(&state, session, StatusCode::BAD_GATEWAY, "Agent unreachable", msg).await);
        }
    };
    Ok(live_events(&state, session, "journal line", stream, |entry| {
        let line = LogLine::from(&entry);
        Ok(Event::default()
            .event("line")
            .id(line.time_us.to_string())
            .data(line.render()?.replace('\n', " ")))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_carry_priority_and_source() {
        let e = LogEntry {
            time_unix_us: 1_700_000_000_000_000,
            priority: 3,
            identifier: "sshd".into(),
            pid: 612,
            message: "<script>x</script>".into(),
            ..Default::default()
        };
        let line = LogLine::from(&e);
        assert_eq!(
            (line.priority, line.class, line.source.as_str()),
            ("err", "log-crit", "sshd[612]")
        );
        let html = line.render().unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("2023-11-14 22:13:20 UTC"), "{html}");
    }

    #[test]
    fn event_times_are_digits() {
        assert_eq!(parse_us("since", "12").unwrap(), 12);
        assert!(parse_us("since", "x").unwrap_err().starts_with("since \"x\""));
    }
}
