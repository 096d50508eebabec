//! A unit's page (figures, actions offered to the role, the journal), the
//! confirmation page of an action and the action itself.

use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use debvisor_api::units::v1::{GetUnitRequest, Unit, UnitActionRequest};
use serde::Deserialize;

use super::journal::{JournalFragment, last_lines};
use super::{Flash, message_page, path_segment, state_class, time_us, unit_from_path, units_client};
use crate::AppState;
use crate::agent::{AgentError, bounded, on_behalf_of};
use crate::auth::{Session, tokens_match};
use crate::error::AppError;
use crate::handlers::{RequireSession, nav};
use crate::roles::Permission;
use crate::views::{Chrome, human_bytes};

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
    pub(super) fn parse(s: &str) -> Option<Action> {
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

pub(super) async fn detail(
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
        flash: state.flashes().take(session),
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

pub(super) async fn confirm(
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

pub(super) async fn act(
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
    state.flashes().put(session, flash);
    Ok(Redirect::to(&format!("/services/{}", path_segment(name.as_str()))).into_response())
}

/// The agent's own words for a refused call, else the summary.
fn agent_reason(e: &AgentError) -> String {
    match e {
        AgentError::Call(s) => s.message().chars().take(300).collect(),
        other => other.summary(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_only_the_three() {
        assert_eq!(Action::parse("restart"), Some(Action::Restart));
        assert_eq!(Action::parse("Restart"), None);
        assert_eq!(Action::parse("enable"), None);
    }
}
