//! The audit log: `debvisor.audit.v1.AuditService` Query and Export.
//!
//! | route | permission | what |
//! |---|---|---|
//! | `GET /audit` | `ViewAudit` | one page of records, newest first; filters `actor`, `action` (prefix), `from`, `to` (datetime-local, UTC), `result` (ok, error); paging by `page` (the agent's page token) and `trail` (the tokens of the pages before) |
//! | `GET /audit/export.csv` | `ViewAudit` | every record matching the same filters as CSV (attachment, streamed from the agent) |
//!
//! Bad filter input re-renders the page with the message next to the field
//! (422); nothing is asked of the agent then.

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use debvisor_api::audit::v1::audit_service_client::AuditServiceClient;
use debvisor_api::audit::v1::{ExportRequest, Format, QueryRequest, Record, Result as ResultFilter};
use debvisor_api::validate::SingleLineString;
use futures_util::StreamExt;
use serde::Deserialize;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::AppState;
use crate::agent::{bounded, on_behalf_of};
use crate::error::AppError;
use crate::handlers::{RequireSession, nav};
use crate::pages::services::query_value;
use crate::roles::Permission;
use crate::views::Chrome;

/// Records per page.
const PAGE_SIZE: u32 = 50;
/// The longest user or action filter, in characters.
const MAX_TEXT: usize = 256;
/// How many earlier pages the "Previous" trail remembers.
const MAX_TRAIL: usize = 200;
/// Marks the first page (no token) in the trail.
const FIRST_PAGE: &str = "~";

/// The routes of the audit pages.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/audit", get(page))
        .route("/audit/export.csv", get(export))
}

/// "2026-11-26 18:45:03 UTC" from milliseconds since the epoch; the raw
/// number when out of range.
pub(crate) fn utc_text(unix_ms: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| unix_ms.to_string())
}

/// Parses what a `datetime-local` input sends ("2026-11-26T18:30", with
/// optional ":SS", a space also accepted) as UTC; milliseconds since the
/// epoch.
pub(crate) fn parse_datetime_local(s: &str) -> Option<i64> {
    let (date, clock) = s.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (y, m, day) = (d.next()?, d.next()?, d.next()?);
    if d.next().is_some() || y.len() != 4 || m.len() != 2 || day.len() != 2 {
        return None;
    }
    let mut c = clock.split(':');
    let (h, min) = (c.next()?, c.next()?);
    let sec = c.next().unwrap_or("00");
    if c.next().is_some() || [h, min, sec].iter().any(|p| p.len() != 2) {
        return None;
    }
    let num = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| p.parse::<u16>().ok())
            .flatten()
    };
    let month = Month::try_from(u8::try_from(num(m)?).ok()?).ok()?;
    let date = Date::from_calendar_date(i32::from(num(y)?), month, u8::try_from(num(day)?).ok()?).ok()?;
    let time = Time::from_hms(
        u8::try_from(num(h)?).ok()?,
        u8::try_from(num(min)?).ok()?,
        u8::try_from(num(sec)?).ok()?,
    )
    .ok()?;
    let t = PrimitiveDateTime::new(date, time).assume_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The filters as the form sends them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    result: String,
    #[serde(default)]
    page: String,
    #[serde(default)]
    trail: String,
}

/// What was wrong with each filter.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FilterErrors {
    /// The user filter.
    pub actor: Option<String>,
    /// The action filter.
    pub action: Option<String>,
    /// The lower time bound.
    pub from: Option<String>,
    /// The upper time bound.
    pub to: Option<String>,
    /// The result filter.
    pub result: Option<String>,
    /// The paging fields.
    pub page: Option<String>,
}

impl FilterErrors {
    fn any(&self) -> bool {
        self.actor.is_some()
            || self.action.is_some()
            || self.from.is_some()
            || self.to.is_some()
            || self.result.is_some()
            || self.page.is_some()
    }
}

fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn valid_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

impl Filters {
    fn trail(&self) -> Vec<&str> {
        self.trail.split(',').filter(|t| !t.is_empty()).collect()
    }

    /// The agent's request for these filters, or what is wrong with them.
    fn request(&self) -> Result<QueryRequest, Box<FilterErrors>> {
        let mut errors = FilterErrors::default();
        let mut req = QueryRequest {
            page_size: PAGE_SIZE,
            ..Default::default()
        };
        let actor = self.actor.trim();
        match SingleLineString::<MAX_TEXT>::try_from(actor) {
            Ok(_) => req.actor = actor.to_string(),
            Err(_) => {
                errors.actor = Some(format!(
                    "User {:?}: one line of at most {MAX_TEXT} characters, e.g. console:admin.",
                    shown(actor)
                ))
            }
        }
        let action = self.action.trim();
        match SingleLineString::<MAX_TEXT>::try_from(action) {
            Ok(_) if action.is_empty() => {}
            Ok(_) => {
                req.action = if action.ends_with('*') {
                    action.to_string()
                } else {
                    format!("{action}*")
                }
            }
            Err(_) => {
                errors.action = Some(format!(
                    "Action {:?}: one line of at most {MAX_TEXT} characters, e.g. units. or units.Restart.",
                    shown(action)
                ))
            }
        }
        let bound = |raw: &str, label: &str, slot: &mut Option<String>| -> i64 {
            let raw = raw.trim();
            if raw.is_empty() {
                return 0;
            }
            parse_datetime_local(raw).unwrap_or_else(|| {
                *slot = Some(format!(
                    "{label} {:?}: not a date and time; use YYYY-MM-DDTHH:MM in UTC, e.g. 2026-11-26T18:30.",
                    shown(raw)
                ));
                0
            })
        };
        req.since_unix_ms = bound(&self.from, "From", &mut errors.from);
        req.until_unix_ms = bound(&self.to, "To", &mut errors.to);
        if req.since_unix_ms != 0 && req.until_unix_ms != 0 && req.until_unix_ms <= req.since_unix_ms {
            errors.to = Some(format!(
                "To {:?} is not after From {:?}: choose a later end or an earlier start.",
                shown(self.to.trim()),
                shown(self.from.trim())
            ));
        }
        req.result = match self.result.as_str() {
            "" => ResultFilter::Any as i32,
            "ok" => ResultFilter::Ok as i32,
            "error" => ResultFilter::Error as i32,
            other => {
                errors.result = Some(format!("Result {:?}: choose ok, error or any.", shown(other)));
                0
            }
        };
        let trail = self.trail();
        if !self.page.is_empty() && !valid_token(&self.page) {
            errors.page = Some(format!(
                "Page {:?} is not a page of this list; start again from the first page.",
                shown(&self.page)
            ));
        } else if trail.len() > MAX_TRAIL || trail.iter().any(|t| !valid_token(t)) {
            errors.page = Some("The paging trail is damaged; start again from the first page.".to_string());
        }
        req.page_token = self.page.clone();
        if errors.any() { Err(Box::new(errors)) } else { Ok(req) }
    }

    /// The filters as a query string, without paging.
    fn query_string(&self) -> String {
        [
            ("actor", self.actor.trim()),
            ("action", self.action.trim()),
            ("from", self.from.trim()),
            ("to", self.to.trim()),
            ("result", self.result.as_str()),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", query_value(v)))
        .collect::<Vec<_>>()
        .join("&")
    }

    fn link(&self, page: &str, trail: &[&str]) -> String {
        let mut q = self.query_string();
        if !page.is_empty() {
            let sep = if q.is_empty() { "" } else { "&" };
            q = format!(
                "{q}{sep}page={}&trail={}",
                query_value(page),
                query_value(&trail.join(","))
            );
        }
        if q.is_empty() {
            "/audit".to_string()
        } else {
            format!("/audit?{q}")
        }
    }

    fn next_link(&self, next: &str) -> String {
        let mut trail = self.trail();
        trail.push(if self.page.is_empty() { FIRST_PAGE } else { &self.page });
        self.link(next, &trail)
    }

    fn previous_link(&self) -> Option<String> {
        let mut trail = self.trail();
        let previous = trail.pop()?;
        Some(self.link(if previous == FIRST_PAGE { "" } else { previous }, &trail))
    }
}

/// One record, formatted.
#[derive(Debug, Clone)]
pub struct RecordRow {
    /// Chain position.
    pub seq: i64,
    /// "2026-11-26 18:45:03 UTC".
    pub time: String,
    /// Who.
    pub actor: String,
    /// From where.
    pub source: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Succeeded.
    pub ok: bool,
    /// The error when it failed.
    pub error: String,
}

impl From<Record> for RecordRow {
    fn from(r: Record) -> Self {
        RecordRow {
            seq: r.seq,
            time: utc_text(r.time_unix_ms),
            actor: r.actor,
            source: r.source,
            action: r.action,
            target: r.target,
            ok: r.ok,
            error: r.error,
        }
    }
}

/// The audit page.
#[derive(Template)]
#[template(path = "audit.html")]
pub struct AuditPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The filters as typed.
    pub actor: String,
    /// .
    pub action: String,
    /// .
    pub from: String,
    /// .
    pub to: String,
    /// .
    pub result: String,
    /// Messages next to the fields.
    pub errors: FilterErrors,
    /// The records, or why there are none to show.
    pub records: Result<Vec<RecordRow>, String>,
    /// Records matching in all.
    pub total: u64,
    /// The page number (1-based).
    pub number: usize,
    /// Link to the next page.
    pub next: Option<String>,
    /// Link to the previous page.
    pub previous: Option<String>,
    /// The CSV export of the same filters.
    pub export: String,
}

fn blank_page(chrome: Chrome, f: &Filters) -> AuditPage {
    AuditPage {
        chrome,
        actor: f.actor.clone(),
        action: f.action.clone(),
        from: f.from.clone(),
        to: f.to.clone(),
        result: f.result.clone(),
        errors: FilterErrors::default(),
        records: Ok(Vec::new()),
        total: 0,
        number: f.trail().len() + 1,
        next: None,
        previous: None,
        export: {
            let q = f.query_string();
            if q.is_empty() {
                "/audit/export.csv".into()
            } else {
                format!("/audit/export.csv?{q}")
            }
        },
    }
}

fn invalid(mut page: AuditPage, errors: FilterErrors) -> Result<Response, AppError> {
    page.errors = errors;
    page.records = Err("Correct the filters marked below.".into());
    Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(page.render()?)).into_response())
}

async fn page(
    State(state): State<AppState>,
    required: RequireSession,
    query: Result<Query<Filters>, QueryRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewAudit)?;
    let Query(filters) = query.map_err(|_| AppError::BadRequest)?;
    let mut page = blank_page(state.chrome(Some(nav(session, "audit"))).await, &filters);
    let request = match filters.request() {
        Ok(r) => r,
        Err(errors) => return invalid(page, *errors),
    };
    let user = session.user.clone();
    let answer = bounded("audit query", async {
        let mut client = AuditServiceClient::new(state.node().channel().await?);
        Ok(client.query(on_behalf_of(request, Some(&user))).await?.into_inner())
    })
    .await;
    match answer {
        Ok(r) => {
            page.total = r.total_matching;
            page.next = (!r.next_page_token.is_empty()).then(|| filters.next_link(&r.next_page_token));
            page.previous = filters.previous_link();
            page.records = Ok(r.records.into_iter().map(RecordRow::from).collect());
        }
        Err(e) => page.records = Err(e.summary()),
    }
    Ok(Html(page.render()?).into_response())
}

async fn export(
    State(state): State<AppState>,
    required: RequireSession,
    query: Result<Query<Filters>, QueryRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewAudit)?;
    let Query(filters) = query.map_err(|_| AppError::BadRequest)?;
    let mut filter = match filters.request() {
        Ok(r) => r,
        Err(errors) => {
            let page = blank_page(state.chrome(Some(nav(session, "audit"))).await, &filters);
            return invalid(page, *errors);
        }
    };
    filter.page_token.clear();
    filter.page_size = 0;
    let request = ExportRequest {
        filter: Some(filter),
        format: Format::Csv as i32,
    };
    let user = session.user.clone();
    let opened = bounded("audit export", async {
        let mut client = AuditServiceClient::new(state.node().channel().await?);
        Ok(client.export(on_behalf_of(request, Some(&user))).await?.into_inner())
    })
    .await;
    let chunks = match opened {
        Ok(s) => s,
        Err(e) => {
            let mut page = blank_page(state.chrome(Some(nav(session, "audit"))).await, &filters);
            page.records = Err(format!("The export failed: {}", e.summary()));
            return Ok((StatusCode::BAD_GATEWAY, Html(page.render()?)).into_response());
        }
    };
    let body = Body::from_stream(chunks.map(|c| c.map(|c| c.data)));
    let stamp = OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]-[hour][minute][second]"
        ))
        .unwrap_or_default();
    tracing::info!(user = %session.user, "audit log exported as CSV");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"debvisor-audit-{stamp}.csv\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_local_is_read_as_utc() {
        assert_eq!(parse_datetime_local("1970-01-01T00:00"), Some(0));
        assert_eq!(parse_datetime_local("2026-11-26T18:30"), Some(1_795_717_800_000));
        assert_eq!(parse_datetime_local("2026-11-26 18:30:15"), Some(1_795_717_815_000));
        for bad in [
            "2026-13-01T00:00",
            "2026-02-30T00:00",
            "yesterday",
            "2026-11-26",
            "2026-11-26T25:00",
            "+026-11-26T10:00",
        ] {
            assert_eq!(parse_datetime_local(bad), None, "{bad}");
        }
        assert_eq!(utc_text(1_795_717_815_000), "2026-11-26 18:30:15 UTC");
    }

    #[test]
    fn filters_become_a_request_or_name_the_field() {
        let f = Filters {
            actor: "console:admin".into(),
            action: "units.".into(),
            from: "2026-11-26T18:30".into(),
            result: "error".into(),
            ..Default::default()
        };
        let r = f.request().unwrap();
        assert_eq!((r.actor.as_str(), r.action.as_str()), ("console:admin", "units.*"));
        assert_eq!(
            (r.since_unix_ms, r.until_unix_ms, r.result),
            (1_795_717_800_000, 0, ResultFilter::Error as i32)
        );

        let f = Filters {
            from: "2026-11-26T18:30".into(),
            to: "2026-11-26T18:00".into(),
            result: "maybe".into(),
            ..Default::default()
        };
        let e = f.request().unwrap_err();
        assert!(e.to.unwrap().contains("not after"));
        assert!(e.result.unwrap().contains("\"maybe\""));
        assert!(e.from.is_none());
    }

    #[test]
    fn paging_links_walk_forward_and_back() {
        let first = Filters {
            actor: "a b".into(),
            ..Default::default()
        };
        assert_eq!(first.previous_link(), None);
        let next = first.next_link("t50");
        assert_eq!(next, "/audit?actor=a%20b&page=t50&trail=~");
        let second = Filters {
            actor: "a b".into(),
            page: "t50".into(),
            trail: "~".into(),
            ..Default::default()
        };
        assert_eq!(second.previous_link().unwrap(), "/audit?actor=a%20b");
        assert_eq!(second.next_link("t100"), "/audit?actor=a%20b&page=t100&trail=~%2Ct50");
        let bad = Filters {
            page: "x,y".into(),
            ..Default::default()
        };
        assert!(bad.request().unwrap_err().page.is_some());
    }
}
