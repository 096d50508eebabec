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

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::Router;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use debvisor_api::units::v1::unit_service_client::UnitServiceClient;
use debvisor_api::units::v1::{GetUnitRequest, ListUnitsRequest, LogEntry, StreamLogsRequest, Unit, UnitActionRequest};
use debvisor_api::validate::{UnitName, UnitPattern, UnitType};
use futures_util::StreamExt;
use serde::Deserialize;
use tonic::transport::Channel;

use crate::AppState;
use crate::agent::{AgentError, bounded, on_behalf_of};
use crate::auth::{Session, tokens_match};
use crate::error::AppError;
use crate::handlers::{RequireSession, nav};
use crate::roles::Permission;
use crate::views::{Chrome, ErrorPage, human_bytes};

/// The services pages' script (confirmation dialog, live journal tail,
/// filter auto-submit).
pub const SERVICES_JS: &str = include_str!("../../static/services.js");
/// Journal lines shown without JavaScript (and before the live tail).
const JOURNAL_LINES: u32 = 100;
/// How long a flash message waits for the page it is meant for.
const FLASH_TTL: Duration = Duration::from_secs(120);
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

// ---------------------------------------------------------------- flash

/// A message for the next page the session sees.
#[derive(Debug, Clone, PartialEq)]
pub struct Flash {
    /// "ok" or "fail": the message's colour.
    pub level: &'static str,
    /// What happened.
    pub text: String,
}

static FLASHES: LazyLock<Mutex<HashMap<String, (Instant, Flash)>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn put_flash(session: &Session, flash: Flash) {
    let mut all = FLASHES.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|_, (at, _)| at.elapsed() < FLASH_TTL);
    all.insert(session.id.clone(), (Instant::now(), flash));
}

fn take_flash(session: &Session) -> Option<Flash> {
    let mut all = FLASHES.lock().unwrap_or_else(|p| p.into_inner());
    all.remove(&session.id)
        .filter(|(at, _)| at.elapsed() < FLASH_TTL)
        .map(|(_, f)| f)
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
        flash: take_flash(session),
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

// ---------------------------------------------------------------- detail

/// An action on a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start.
    Start,
    /// Stop.
    Stop,
    /// Restart.
    Restart,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "start" => Some(Action::Start),
            "stop" => Some(Action::Stop),
            "restart" => Some(Action::Restart),
            _ => None,
        }
    }

    /// "restart".
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        }
    }

    /// "Restart".
    pub fn verb(self) -> &'static str {
        match self {
            Action::Start => "Start",
            Action::Stop => "Stop",
            Action::Restart => "Restart",
        }
    }

    fn past(self) -> &'static str {
        match self {
            Action::Start => "started",
            Action::Stop => "stopped",
            Action::Restart => "restarted",
        }
    }
}

/// A button on the detail page.
#[derive(Debug, Clone)]
pub struct ActionLink {
    /// "restart".
    pub action: &'static str,
    /// "Restart".
    pub verb: &'static str,
    /// The confirmation page.
    pub href: String,
    /// "Restart nginx.service?"
    pub question: String,
}

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

/// The unit's figures.
#[derive(Debug, Clone)]
pub struct UnitView {
    /// Name.
    pub name: String,
    /// Its address.
    pub href: String,
    /// Description.
    pub description: String,
    /// load state.
    pub load: String,
    /// active state.
    pub active: String,
    /// sub state.
    pub sub: String,
    /// CSS class of the state.
    pub class: &'static str,
    /// enabled, disabled...
    pub file_state: String,
    /// Unit file path.
    pub path: String,
    /// Main PID or "".
    pub pid: String,
    /// Active since or "".
    pub since: String,
    /// Automatic restarts.
    pub restarts: u32,
    /// Memory or "".
    pub memory: String,
}

/// The detail page of a unit.
#[derive(Template)]
#[template(path = "service.html")]
pub struct ServicePage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The unit.
    pub unit: UnitView,
    /// The buttons (empty without ControlServices).
    pub actions: Vec<ActionLink>,
    /// The session's CSRF token for the JavaScript confirmation.
    pub csrf: String,
    /// The journal (None without ViewLogs).
    pub journal: Option<JournalFragment>,
    /// Where the live tail resumes: the newest line's time + 1 µs.
    pub since: u64,
    /// A message from the last action.
    pub flash: Option<Flash>,
}

fn view_of(u: Unit) -> UnitView {
    UnitView {
        href: format!("/services/{}", path_segment(&u.name)),
        class: state_class(&u.active_state),
        pid: if u.main_pid == 0 {
            String::new()
        } else {
            u.main_pid.to_string()
        },
        since: time_us(u.active_enter_unix_us),
        memory: if u.memory_bytes == 0 {
            String::new()
        } else {
            human_bytes(u.memory_bytes)
        },
        name: u.name,
        description: u.description,
        load: u.load_state,
        active: u.active_state,
        sub: u.sub_state,
        file_state: u.unit_file_state,
        path: u.fragment_path,
        restarts: u.restarts,
    }
}

/// The last `JOURNAL_LINES` lines of `unit`, for `user`.
async fn last_lines(state: &AppState, user: &str, unit: &UnitName) -> Result<Vec<LogLine>, AgentError> {
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

async fn detail(
    State(state): State<AppState>,
    required: RequireSession,
    Path(raw): Path<String>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewDashboard)?;
    let name = match unit_from_path(&state, session, &raw).await {
        Ok(n) => n,
        Err(r) => return Ok(r),
    };
    let user = session.user.clone();
    let request = GetUnitRequest { name: name.to_string() };
    let unit = bounded("unit", async {
        let mut client = units_client(&state).await?;
        Ok(client.get_unit(on_behalf_of(request, Some(&user))).await?.into_inner())
    });
    // The unit and its journal are asked for side by side.
    let logs = async {
        if session.role.allows(Permission::ViewLogs) {
            Some(last_lines(&state, &user, &name).await.map_err(|e| e.summary()))
        } else {
            None
        }
    };
    let (unit, logs) = tokio::join!(unit, logs);
    let unit = match unit {
        Ok(u) => u,
        Err(AgentError::Call(s)) if s.code() == tonic::Code::NotFound => {
            let msg = format!("systemd does not know a unit named {name}. Check the name in the list of services.");
            return Ok(message_page(&state, session, StatusCode::NOT_FOUND, "Unit not found", msg).await);
        }
        Err(e) => {
            return Ok(message_page(
                &state,
                session,
                StatusCode::BAD_GATEWAY,
                "Agent unreachable",
                e.summary(),
            )
            .await);
        }
    };
    let journal = logs.map(|lines| JournalFragment { lines });
    let since = journal
        .as_ref()
        .and_then(|j| j.lines.as_ref().ok())
        .and_then(|l| l.last())
        .map_or(0, |l| l.time_us + 1);
    let actions = if session.role.allows(Permission::ControlServices) {
        let running = matches!(unit.active_state.as_str(), "active" | "activating" | "reloading");
        let offered: &[Action] = if running {
            &[Action::Restart, Action::Stop]
        } else {
            &[Action::Start, Action::Restart]
        };
        offered
            .iter()
            .map(|a| ActionLink {
                action: a.as_str(),
                verb: a.verb(),
                href: format!(
                    "/services/{}/confirm?action={}",
                    path_segment(name.as_str()),
                    a.as_str()
                ),
                question: format!("{} {name}?", a.verb()),
            })
            .collect()
    } else {
        Vec::new()
    };
    let page = ServicePage {
        chrome: state.chrome(Some(nav(session, "services"))).await,
        unit: view_of(unit),
        actions,
        csrf: session.csrf.clone(),
        journal,
        since,
        flash: take_flash(session),
    };
    Ok(Html(page.render()?).into_response())
}

// ---------------------------------------------------------------- actions

/// The confirmation page of an action.
#[derive(Template)]
#[template(path = "service_confirm.html")]
pub struct ConfirmPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The unit.
    pub unit: String,
    /// The unit's page.
    pub back: String,
    /// Where the form posts.
    pub post: String,
    /// "restart".
    pub action: &'static str,
    /// "Restart".
    pub verb: &'static str,
    /// The session's CSRF token.
    pub csrf: String,
}

/// The confirmation page's query.
#[derive(Debug, Deserialize)]
pub struct ConfirmQuery {
    #[serde(default)]
    action: String,
}

async fn bad_action(state: &AppState, session: &Session, raw: &str) -> Response {
    let shown: String = raw.chars().take(32).collect();
    let msg = format!("Action {shown:?} is not one of start, stop or restart.");
    message_page(state, session, StatusCode::BAD_REQUEST, "Unknown action", msg).await
}

async fn confirm(
    State(state): State<AppState>,
    required: RequireSession,
    Path(raw): Path<String>,
    query: Result<Query<ConfirmQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ControlServices)?;
    let name = match unit_from_path(&state, session, &raw).await {
        Ok(n) => n,
        Err(r) => return Ok(r),
    };
    let Query(query) = query.map_err(|_| AppError::BadRequest)?;
    let Some(action) = Action::parse(&query.action) else {
        return Ok(bad_action(&state, session, &query.action).await);
    };
    let segment = path_segment(name.as_str());
    let page = ConfirmPage {
        chrome: state.chrome(Some(nav(session, "services"))).await,
        unit: name.to_string(),
        back: format!("/services/{segment}"),
        post: format!("/services/{segment}/action"),
        action: action.as_str(),
        verb: action.verb(),
        csrf: session.csrf.clone(),
    };
    Ok(Html(page.render()?).into_response())
}

/// The action form.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
}

async fn act(
    State(state): State<AppState>,
    required: RequireSession,
    Path(raw): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ControlServices)?;
    let Form(form) = form.map_err(|_| AppError::BadRequest)?;
    if !tokens_match(&form.csrf, &session.csrf) {
        tracing::warn!(user = %session.user, "unit action refused: missing or wrong CSRF token");
        return Err(AppError::Csrf);
    }
    let name = match unit_from_path(&state, session, &raw).await {
        Ok(n) => n,
        Err(r) => return Ok(r),
    };
    let Some(action) = Action::parse(&form.action) else {
        return Ok(bad_action(&state, session, &form.action).await);
    };
    let user = session.user.clone();
    let request = UnitActionRequest { name: name.to_string() };
    let result = bounded("unit action", async {
        let mut client = units_client(&state).await?;
        let req = on_behalf_of(request, Some(&user));
        let answer = match action {
            Action::Start => client.start(req).await?,
            Action::Stop => client.stop(req).await?,
            Action::Restart => client.restart(req).await?,
        };
        Ok(answer.into_inner())
    })
    .await;
    let flash = match result {
        Ok(done) => {
            let now = done
                .unit
                .map(|u| format!(" It is now {} ({}).", u.active_state, u.sub_state))
                .unwrap_or_default();
            tracing::info!(user = %user, unit = %name, action = action.as_str(), "unit action done");
            Flash {
                level: "ok",
                text: format!("{name} {}.{now}", action.past()),
            }
        }
        Err(e) => Flash {
            level: "fail",
            text: format!("Could not {} {name}: {}", action.as_str(), agent_reason(&e)),
        },
    };
    put_flash(session, flash);
    Ok(Redirect::to(&format!("/services/{}", path_segment(name.as_str()))).into_response())
}

/// The agent's own words for a refused call, else the summary.
fn agent_reason(e: &AgentError) -> String {
    match e {
        AgentError::Call(s) => s.message().chars().take(300).collect(),
        other => other.summary(),
    }
}

// ---------------------------------------------------------------- journal

async fn journal_fragment(
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

async fn journal_events(
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
    let events = stream
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(|item| async move {
            let line = LogLine::from(&item.ok()?);
            match line.render() {
                Ok(html) => Some(Ok::<_, Infallible>(
                    Event::default()
                        .event("line")
                        .id(line.time_us.to_string())
                        .data(html.replace('\n', " ")),
                )),
                Err(e) => {
                    tracing::error!(error = %e, "journal line rendering failed");
                    None
                }
            }
        });
    let events = crate::handlers::while_signed_in(&state, session, events);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
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
    fn actions_parse_only_the_three() {
        assert_eq!(Action::parse("restart"), Some(Action::Restart));
        assert_eq!(Action::parse("Restart"), None);
        assert_eq!(Action::parse("enable"), None);
        assert_eq!(parse_us("since", "12").unwrap(), 12);
        assert!(parse_us("since", "x").unwrap_err().starts_with("since \"x\""));
    }
}
