//! Services: systemd units from the agent's `debvisor.units.v1.UnitService`.
//!
//! | route | permission | what |
//! |---|---|---|
//! | `GET /services` | `ViewDashboard` | unit list; filters `q` (name substring or glob), `state` (active, failed, inactive), `type` |
//! | `GET /services/{unit}` | `ViewDashboard` | one unit; its last 100 journal lines with `ViewLogs` |
//! | `GET /services/{unit}/confirm?action=A` | `ControlServices` | "Restart nginx.service?" with the POST form (A: start, stop, restart) |
//! | `POST /services/{unit}/action` | `ControlServices` | fields `csrf`, `action`; calls the agent for the user, redirects back with a flash message |
//! | `GET /services/{unit}/journal` | `ViewLogs` | the last 100 journal lines as an HTML fragment |
//! | `GET /services/{unit}/journal/events` | `ViewLogs` | server-sent events: one `line` event (an escaped `<li>`) per new journal entry; `since` (µs) or `Last-Event-ID` resume |
//! | `GET /static/services.js` | none | the services pages' script (confirmation dialog, live journal, filter auto-submit) |
//!
//! Unit names from the path are checked with [`UnitName`] before anything is
//! asked of the agent; a bad name gets a 400 page naming it. Every call to
//! the agent names the signed-in user, so actions land in the agent's audit
//! log as `console:USER`. The journal stream holds the agent's `StreamLogs`
//! call: when the browser goes away, axum drops the response body, which
//! drops the call and cancels it at the agent.
//!
//! [`unit`] holds a unit's page, its confirmation and its actions;
//! [`journal`] the journal lines and their live tail. Messages after an
//! action wait in [`crate::flash`].

mod journal;
mod unit;

pub use crate::flash::Flash;
pub use journal::{EventsQuery, JournalFragment, LogLine};
use journal::{journal_events, journal_fragment};
pub use unit::{Action, ActionForm, ActionLink, ConfirmPage, ConfirmQuery, ServicePage, UnitView};
use unit::{act, confirm, detail};

use askama::Template;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use debvisor_api::units::v1::unit_service_client::UnitServiceClient;
use debvisor_api::units::v1::{ListUnitsRequest, Unit};
use debvisor_api::validate::{UnitName, UnitPattern, UnitType};
use serde::Deserialize;
use tonic::transport::Channel;

use crate::AppState;
use crate::agent::{AgentError, bounded, on_behalf_of};
use crate::auth::Session;
use crate::error::AppError;
use crate::handlers::{RequireSession, nav};
use crate::roles::Permission;
use crate::views::{Chrome, ErrorPage};

/// The services pages' script (confirmation dialog, live journal tail,
/// filter auto-submit).
pub const SERVICES_JS: &str = include_str!("../../../static/services.js");
/// The longest name filter accepted.
const MAX_FILTER: usize = 128;

/// The routes of the services pages.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/services", get(list))
        .route("/services/{unit}", get(detail))
        .route("/services/{unit}/confirm", get(confirm))
        .route("/services/{unit}/action", post(act))
        .route("/services/{unit}/journal", get(journal_fragment))
        .route("/services/{unit}/journal/events", get(journal_events))
        .route("/static/services.js", get(script))
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SERVICES_JS,
    )
}

// ---------------------------------------------------------------- helpers

/// A page that says what was wrong with the request (a bad unit name, an
/// unknown action), with `status`.
pub(crate) async fn message_page(
    state: &AppState,
    session: &Session,
    status: StatusCode,
    title: &str,
    message: String,
) -> Response {
    let page = ErrorPage {
        chrome: state.chrome(Some(nav(session, "services"))).await,
        code: status.as_u16(),
        title: title.to_string(),
        message,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => AppError::from(e).into_response(),
    }
}

/// The unit name of a path, or a 400 page naming the value and the rule.
async fn unit_from_path(state: &AppState, session: &Session, raw: &str) -> Result<UnitName, Response> {
    match UnitName::try_from(raw) {
        Ok(name) => Ok(name),
        Err(e) => {
            tracing::warn!(user = %session.user, "refused a bad unit name from the address");
            Err(message_page(state, session, StatusCode::BAD_REQUEST, "Bad unit name", e.to_string()).await)
        }
    }
}

/// A channel to the agent's units service.
async fn units_client(state: &AppState) -> Result<UnitServiceClient<Channel>, AgentError> {
    Ok(UnitServiceClient::new(state.node().channel().await?))
}

/// Percent-encodes a unit name for a path segment (`\` would otherwise
/// become `/` in browsers).
pub(crate) fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Percent-encodes a query value.
pub(crate) fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// "2026-11-26 18:45:03 UTC" from microseconds since the epoch; "" for 0.
fn time_us(us: u64) -> String {
    if us == 0 {
        return String::new();
    }
    crate::pages::audit::utc_text(i64::try_from(us / 1000).unwrap_or(i64::MAX))
}

/// The CSS class of an active state: ok, warn, fail or "" (inactive).
fn state_class(active: &str) -> &'static str {
    match active {
        "active" | "reloading" | "refreshing" => "ok",
        "failed" => "fail",
        "activating" | "deactivating" | "maintenance" => "warn",
        _ => "",
    }
}

// ---------------------------------------------------------------- list

/// The list's filters as the form sends them.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    sort: String,
}

/// The orders the list offers: by name, or problems first.
const SORTS: [(&str, &str); 2] = [("name", "name"), ("state", "state, failed first")];

/// Where a state goes when the list is sorted by state.
fn state_rank(active: &str) -> u8 {
    match active {
        "failed" => 0,
        "activating" | "deactivating" | "reloading" | "maintenance" => 1,
        "active" => 2,
        _ => 3,
    }
}

/// The states the list filter offers.
const STATES: [&str; 3] = ["active", "failed", "inactive"];

/// A unit in the list.
#[derive(Debug, Clone)]
pub struct UnitRow {
    /// Its name.
    pub name: String,
    /// Its link.
    pub href: String,
    /// Description.
    pub description: String,
    /// Active state.
    pub active: String,
    /// Sub state.
    pub sub: String,
    /// CSS class of the state badge.
    pub class: &'static str,
    /// enabled, disabled, static, masked...
    pub file_state: String,
}

/// The services list.
#[derive(Template)]
#[template(path = "services.html")]
pub struct ServicesPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The name filter as typed.
    pub q: String,
    /// The state filter.
    pub state: String,
    /// The type filter.
    pub kind: String,
    /// The order ("" or "name", "state").
    pub sort: String,
    /// The orders offered: (value, label).
    pub sorts: &'static [(&'static str, &'static str)],
    /// The states offered.
    pub states: &'static [&'static str],
    /// The unit types offered.
    pub types: Vec<&'static str>,
    /// Problems with the filters, by field.
    pub q_error: Option<String>,
    /// .
    pub state_error: Option<String>,
    /// .
    pub kind_error: Option<String>,
    /// .
    pub sort_error: Option<String>,
    /// The units, or why the agent could not list them.
    pub units: Result<Vec<UnitRow>, String>,
    /// "9 units: 7 active, 1 failed, 1 other" ("" without a list).
    pub summary: String,
    /// A message from the last action.
    pub flash: Option<Flash>,
}

fn row_of(u: Unit) -> UnitRow {
    UnitRow {
        href: format!("/services/{}", path_segment(&u.name)),
        class: state_class(&u.active_state),
        name: u.name,
        description: u.description,
        active: u.active_state,
        sub: u.sub_state,
        file_state: u.unit_file_state,
    }
}

async fn list(
    State(state): State<AppState>,
    required: RequireSession,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewDashboard)?;
    let Query(query) = query.map_err(|_| AppError::BadRequest)?;
    let q = query.q.trim().to_string();
    let mut request = ListUnitsRequest::default();
    let mut page = ServicesPage {
        chrome: state.chrome(Some(nav(session, "services"))).await,
        q: q.clone(),
        state: query.state.clone(),
        kind: query.kind.clone(),
        sort: query.sort.clone(),
        sorts: &SORTS,
        states: &STATES,
        types: UnitType::ALL.iter().map(|t| t.as_str()).collect(),
        q_error: None,
        state_error: None,
        kind_error: None,
        sort_error: None,
        units: Ok(Vec::new()),
        summary: String::new(),
        flash: state.flashes().take(session),
    };
    if !q.is_empty() {
        let pattern = if q.contains(['*', '?', '[']) {
            q.clone()
        } else {
            format!("*{q}*")
        };
        if q.chars().count() > MAX_FILTER {
            page.q_error = Some(format!("Name: at most {MAX_FILTER} characters; shorten the filter."));
        } else {
            match UnitPattern::try_from(pattern.as_str()) {
                Ok(p) => request.patterns.push(p.to_string()),
                Err(_) => {
                    page.q_error = Some(format!(
                        "Name {q:?}: use letters, digits and : _ . \\ - @ (and * ? [ ] as wildcards)."
                    ))
                }
            }
        }
    }
    match query.state.as_str() {
        "" => {}
        s if STATES.contains(&s) => {
            request.states.push(s.to_string());
            // Installed unit files that systemd has not loaded are inactive too.
            request.include_inactive = s == "inactive";
        }
        s => {
            page.state_error = Some(format!(
                "State {:?}: choose active, failed or inactive (or any).",
                s.chars().take(32).collect::<String>()
            ))
        }
    }
    match query.kind.as_str() {
        "" => {}
        k => match k.parse::<UnitType>() {
            Ok(t) => request.types.push(t.as_str().to_string()),
            Err(e) => page.kind_error = Some(format!("Type: {e}")),
        },
    }
    let by_state = match query.sort.as_str() {
        "" | "name" => false,
        "state" => true,
        other => {
            page.sort_error = Some(format!(
                "Sort {:?}: choose name or state.",
                other.chars().take(32).collect::<String>()
            ));
            false
        }
    };
    if page.q_error.is_some() || page.state_error.is_some() || page.kind_error.is_some() || page.sort_error.is_some() {
        page.units = Err("Correct the filters below.".to_string());
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(page.render()?)).into_response());
    }
    let user = session.user.clone();
    let answer = bounded("units list", async move {
        let mut client = units_client(&state).await?;
        Ok(client
            .list_units(on_behalf_of(request, Some(&user)))
            .await?
            .into_inner())
    })
    .await;
    page.units = answer.map_err(|e| e.summary()).map(|r| {
        let mut rows: Vec<UnitRow> = r.units.into_iter().map(row_of).collect();
        if by_state {
            rows.sort_by(|a, b| (state_rank(&a.active), &a.name).cmp(&(state_rank(&b.active), &b.name)));
        } else {
            rows.sort_by(|a, b| a.name.cmp(&b.name));
        }
        rows
    });
    if let Ok(rows) = &page.units {
        let active = rows.iter().filter(|r| r.active == "active").count();
        let failed = rows.iter().filter(|r| r.active == "failed").count();
        let unit = if rows.len() == 1 { "unit" } else { "units" };
        page.summary = format!(
            "{} {unit}: {active} active, {failed} failed, {} other",
            rows.len(),
            rows.len() - active - failed
        );
    }
    Ok(Html(page.render()?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_queries_are_encoded() {
        assert_eq!(path_segment("getty@tty1.service"), "getty@tty1.service");
        assert_eq!(
            path_segment("dev-disk-by\\x2duuid.device"),
            "dev-disk-by%5Cx2duuid.device"
        );
        assert_eq!(query_value("a b&c"), "a%20b%26c");
    }
}
