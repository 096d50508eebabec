//! Rollback, boot marks and the reboot that activates an installed slot:
//! each a confirmation page (GET) and its form (POST, CSRF-checked).

use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use debvisor_api::node::v1::PowerRequest;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use debvisor_api::update::v1::{MarkRequest, RollbackRequest};
use serde::Deserialize;

use super::{InstallForms, NAV, PageQuery, check_slot, client, refusal, render, slots};
use crate::AppState;
use crate::agent::{bounded, on_behalf_of};
use crate::auth::{Session, tokens_match};
use crate::error::AppError;
use crate::handlers::{RequireSession, nav};
use crate::roles::Permission;
use crate::views::Chrome;

/// What the agent's audit log records as the reboot's reason.
const REBOOT_REASON: &str = "console: reboot to activate the installed update";

/// A confirmation page.
#[derive(Template)]
#[template(path = "updates_confirm.html")]
pub struct ConfirmPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// "Roll back?".
    pub title: String,
    /// What will happen.
    pub explain: String,
    /// Where the form posts.
    pub post: &'static str,
    /// Hidden fields besides the CSRF token.
    pub fields: Vec<(&'static str, String)>,
    /// The button's label.
    pub verb: &'static str,
    /// A red button.
    pub danger: bool,
    /// The session's CSRF token.
    pub csrf: String,
}

impl ConfirmPage {
    fn respond(self) -> Result<Response, AppError> {
        Ok(Html(self.render()?).into_response())
    }
}

/// A form that carries only the CSRF token, or a mark's fields.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    slot: String,
}

/// The form of `session`, CSRF-checked.
fn checked(
    session: &Session,
    form: Result<Form<ActionForm>, FormRejection>,
    what: &str,
) -> Result<ActionForm, AppError> {
    let Form(form) = form.map_err(|_| AppError::BadRequest)?;
    if !tokens_match(&form.csrf, &session.csrf) {
        tracing::warn!(user = %session.user, "{what} refused: missing or wrong CSRF token");
        return Err(AppError::Csrf);
    }
    Ok(form)
}

/// The updates page again, with the agent's refusal at the top.
async fn refused(
    state: &AppState,
    session: &Session,
    what: &str,
    e: &crate::agent::AgentError,
) -> Result<Response, AppError> {
    let r = refusal(what, e);
    render(
        state,
        session,
        r.status,
        InstallForms::default(),
        PageQuery::default(),
        Some(r.text),
    )
    .await
}

/// The updates page with `message` at the top and status 400.
async fn bad_request(state: &AppState, session: &Session, message: String) -> Result<Response, AppError> {
    let q = PageQuery::default();
    render(
        state,
        session,
        StatusCode::BAD_REQUEST,
        InstallForms::default(),
        q,
        Some(message),
    )
    .await
}

// ---------------------------------------------------------------- rollback

pub(super) async fn rollback_confirm(
    State(state): State<AppState>,
    required: RequireSession,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageUpdates)?;
    let other = slots(&state, &session.user)
        .await
        .ok()
        .and_then(|s| s.slots.into_iter().find(|x| !x.booted && !x.bootname.is_empty()))
        .map(|x| {
            let version = if x.bundle_version.is_empty() {
                String::new()
            } else {
                format!(", version {}", x.bundle_version)
            };
            format!("{} ({}{version})", x.name, x.bootname)
        })
        .unwrap_or_else(|| "the other slot".into());
    ConfirmPage {
        chrome: state.chrome(Some(nav(session, NAV))).await,
        title: "Roll back to the other slot?".into(),
        explain: format!(
            "The console asks the agent to make {other} the slot the node boots next; the agent refuses unless that \
             slot is marked good and holds an image. It takes effect at the next reboot. The agent records it in \
             the audit log in your name."
        ),
        post: "/updates/rollback",
        fields: Vec::new(),
        verb: "Roll back",
        danger: true,
        csrf: session.csrf.clone(),
    }
    .respond()
}

pub(super) async fn rollback(
    State(state): State<AppState>,
    required: RequireSession,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageUpdates)?;
    checked(session, form, "rollback")?;
    let user = session.user.clone();
    let result = bounded("update rollback", async {
        let answer = client(&state)
            .await?
            .rollback(on_behalf_of(RollbackRequest {}, Some(&user)))
            .await?;
        Ok(answer.into_inner())
    })
    .await;
    match result {
        Ok(done) => {
            tracing::info!(user = %user, slot = %done.slot, "rollback set");
            Ok(Redirect::to("/updates?done=rollback").into_response())
        }
        Err(e) => refused(&state, session, "The rollback", &e).await,
    }
}

// ---------------------------------------------------------------- marks

/// The mark's query (confirmation page).
#[derive(Debug, Deserialize)]
pub struct MarkQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    slot: String,
}

/// `good` or `bad`, or what is wrong.
fn check_state(raw: &str) -> Result<bool, String> {
    match raw {
        "good" => Ok(true),
        "bad" => Ok(false),
        other => {
            let shown: String = other.chars().take(20).collect();
            Err(format!("Mark {shown:?} is not a boot mark: use good or bad."))
        }
    }
}

pub(super) async fn mark_confirm(
    State(state): State<AppState>,
    required: RequireSession,
    query: Result<Query<MarkQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageUpdates)?;
    let Query(q) = query.map_err(|_| AppError::BadRequest)?;
    let (good, slot) = match (check_state(&q.state), check_slot(&q.slot)) {
        (Ok(g), Ok(s)) => (g, s),
        (Err(e), _) | (_, Err(e)) => return bad_request(&state, session, e).await,
    };
    let word = if good { "good" } else { "bad" };
    let effect = if good {
        "The boot loader keeps booting a slot marked good."
    } else {
        "The boot loader no longer boots a slot marked bad; marking the booted slot bad makes the next boot start \
         the other slot."
    };
    ConfirmPage {
        chrome: state.chrome(Some(nav(session, NAV))).await,
        title: format!("Mark slot {slot} {word}?"),
        explain: format!(
            "{effect} The console asks the agent to mark {slot} {word} through RAUC; the agent records it in the \
             audit log in your name."
        ),
        post: "/updates/mark",
        fields: vec![("state", word.to_string()), ("slot", slot)],
        verb: if good { "Mark good" } else { "Mark bad" },
        danger: !good,
        csrf: session.csrf.clone(),
    }
    .respond()
}

pub(super) async fn mark(
    State(state): State<AppState>,
    required: RequireSession,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageUpdates)?;
    let form = checked(session, form, "boot mark")?;
    let (good, slot) = match (check_state(&form.state), check_slot(&form.slot)) {
        (Ok(g), Ok(s)) => (g, s),
        (Err(e), _) | (_, Err(e)) => return bad_request(&state, session, e).await,
    };
    let user = session.user.clone();
    let request = MarkRequest { slot };
    let result = bounded("update mark", async {
        let mut c = client(&state).await?;
        let req = on_behalf_of(request, Some(&user));
        let answer = if good {
            c.mark_good(req).await?
        } else {
            c.mark_bad(req).await?
        };
        Ok(answer.into_inner())
    })
    .await;
    match result {
        Ok(done) => {
            tracing::info!(user = %user, slot = %done.slot, good, "boot mark set");
            let word = if good { "good" } else { "bad" };
            let slot = check_slot(&done.slot).unwrap_or_default();
            Ok(Redirect::to(&format!("/updates?done=mark-{word}&slot={slot}")).into_response())
        }
        Err(e) => refused(&state, session, "The boot mark", &e).await,
    }
}

// ---------------------------------------------------------------- reboot

pub(super) async fn reboot_confirm(
    State(state): State<AppState>,
    required: RequireSession,
) -> Result<Response, AppError> {
    let session = required.require(Permission::PowerNode)?;
    let next = slots(&state, &session.user)
        .await
        .ok()
        .map(|s| super::SlotsView::from(&s).primary)
        .filter(|p| !p.is_empty())
        .map_or_else(String::new, |p| format!(" The node then starts slot {p}."));
    ConfirmPage {
        chrome: state.chrome(Some(nav(session, NAV))).await,
        title: "Reboot the node?".into(),
        explain: format!(
            "The console asks the agent to reboot the node now: every workload stops and the console is \
             unreachable until the node is back.{next} The agent records it in the audit log in your name."
        ),
        post: "/updates/reboot",
        fields: Vec::new(),
        verb: "Reboot",
        danger: true,
        csrf: session.csrf.clone(),
    }
    .respond()
}

pub(super) async fn reboot(
    State(state): State<AppState>,
    required: RequireSession,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::PowerNode)?;
    checked(session, form, "reboot")?;
    let user = session.user.clone();
    let request = PowerRequest {
        reason: REBOOT_REASON.into(),
    };
    let result = bounded("reboot", async {
        let channel = state.node().channel().await?;
        let answer = NodeServiceClient::new(channel)
            .reboot(on_behalf_of(request, Some(&user)))
            .await?;
        Ok(answer.into_inner())
    })
    .await;
    match result {
        Ok(_) => {
            tracing::warn!(user = %user, "node reboot requested from the updates page");
            Ok(Redirect::to("/updates?done=reboot").into_response())
        }
        Err(e) => refused(&state, session, "The reboot", &e).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_good_or_bad() {
        assert_eq!(check_state("good"), Ok(true));
        assert_eq!(check_state("bad"), Ok(false));
        assert_eq!(
            check_state("active").unwrap_err(),
            "Mark \"active\" is not a boot mark: use good or bad."
        );
    }
}
