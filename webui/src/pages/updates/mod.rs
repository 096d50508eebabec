//! Updates: the node's A/B root slots and their updates, through the agent's
//! `debvisor.update.v1.UpdateService` (RAUC behind it).
//!
//! | route | permission | what |
//! |---|---|---|
//! | `GET /updates` | `ViewDashboard` | the slots (booted, primary, each slot's boot name, state, boot status, version, install time, class, device), the running or last install, and the forms the role may use; `?done=` shows what the last action did |
//! | `POST /updates/install` | `ManageUpdates` | fields `csrf`, `url` (http/https), `sha256` (optional): starts an install from the URL, then to `/updates/install` |
//! | `POST /updates/upload` | `ManageUpdates` | a `multipart/form-data` form: `csrf`, `sha256` (optional), then the bundle file last; streamed to the agent's `Upload` as it arrives (at most [`MAX_UPLOAD`]), then to `/updates/install` |
//! | `GET /updates/install` | `ViewDashboard` | the running or last install: phase, progress bar, message, error; reloads itself every 3 s without JavaScript while it runs |
//! | `GET /updates/events` | `ViewDashboard` | server-sent events from `WatchInstall`: a `progress` event (the re-rendered panel) per change, then `end` |
//! | `GET`, `POST /updates/rollback` | `ManageUpdates` | confirmation, then `Rollback` (the other slot boots next) |
//! | `GET`, `POST /updates/mark?state=good\|bad&slot=S` | `ManageUpdates` | confirmation, then `MarkGood` / `MarkBad` of slot S (`booted`, `other` or a name) |
//! | `GET`, `POST /updates/reboot` | `PowerNode` | confirmation, then `debvisor.node.v1` `Reboot` (activates the installed slot) |
//! | `GET /static/updates.js` | none | the upload form's progress bar (XHR upload progress) |
//!
//! Every call to the agent names the signed-in user ([`on_behalf_of`]), so
//! the agent audits installs, uploads, marks, rollbacks and reboots as
//! `console:USER`. Every POST checks the session's CSRF token. The pages
//! work without JavaScript (plain forms, a status page that reloads itself);
//! htmx's SSE extension makes the install panel live and `updates.js` shows
//! the upload's own progress.

mod actions;
pub mod formdata;
mod install;
mod upload;
mod views;

pub use views::{ProgressView, SlotRow, SlotsView, check_slot, error_words};

use askama::Template;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use debvisor_api::update::v1::update_service_client::UpdateServiceClient;
use debvisor_api::update::v1::{GetSlotsRequest, SlotsState};
use serde::Deserialize;
use tonic::Code;
use tonic::transport::Channel;

use crate::AppState;
use crate::agent::{AgentError, bounded, on_behalf_of};
use crate::auth::Session;
use crate::error::AppError;
use crate::handlers::{RequireSession, nav};
use crate::roles::Permission;
use crate::views::{Chrome, human_bytes};

/// The upload page's script (the upload progress bar).
pub const UPDATES_JS: &str = include_str!("../../../static/updates.js");
/// The largest bundle the console passes on: the agent's limit (4 GiB).
pub const MAX_UPLOAD: u64 = 4 << 30;
/// The nav bar's name of these pages.
const NAV: &str = "updates";

/// The routes of the updates pages.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/updates", get(page))
        .route("/updates/install", get(install::status_page).post(install::start))
        .route("/updates/upload", post(upload::upload))
        .route("/updates/events", get(install::events))
        .route(
            "/updates/rollback",
            get(actions::rollback_confirm).post(actions::rollback),
        )
        .route("/updates/mark", get(actions::mark_confirm).post(actions::mark))
        .route("/updates/reboot", get(actions::reboot_confirm).post(actions::reboot))
        .route("/static/updates.js", get(script))
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        UPDATES_JS,
    )
}

// ---------------------------------------------------------------- the agent

/// A client of the agent's update service.
async fn client(state: &AppState) -> Result<UpdateServiceClient<Channel>, AgentError> {
    Ok(UpdateServiceClient::new(state.node().channel().await?))
}

/// The slots, asked for `user`.
async fn slots(state: &AppState, user: &str) -> Result<SlotsState, AgentError> {
    bounded("update slots", async {
        let answer = client(state)
            .await?
            .get_slots(on_behalf_of(GetSlotsRequest {}, Some(user)))
            .await?;
        Ok(answer.into_inner())
    })
    .await
}

/// What the agent's refusal means for the page: a status and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The page's status.
    pub status: StatusCode,
    /// For people: what was refused and the agent's reason.
    pub text: String,
}

/// Words `e` for people: `what` ("The install") and the agent's reason.
pub fn refusal(what: &str, e: &AgentError) -> Refusal {
    let AgentError::Call(s) = e else {
        return Refusal {
            status: StatusCode::BAD_GATEWAY,
            text: format!("{what} failed: {}", e.summary()),
        };
    };
    let reason: String = s.message().chars().take(400).collect();
    let (status, text) = match s.code() {
        Code::FailedPrecondition => (StatusCode::CONFLICT, format!("{what} was refused: {reason}")),
        Code::InvalidArgument => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{what} was refused: {reason}"),
        ),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, format!("{what} is not allowed: {reason}")),
        Code::NotFound => (StatusCode::NOT_FOUND, format!("{what} found nothing: {reason}")),
        Code::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} failed: RAUC or the agent is not available ({reason}). Try again in a minute."),
        ),
        Code::Unimplemented => (
            StatusCode::BAD_GATEWAY,
            format!("{what} failed: this node's agent has no update service (debvisor.update.v1); update the agent."),
        ),
        _ => (StatusCode::BAD_GATEWAY, format!("{what} failed: {reason}")),
    };
    Refusal { status, text }
}

// ---------------------------------------------------------------- pages

/// The install panel (the status page's body and each SSE event's data).
#[derive(Debug, Clone, Template)]
#[template(path = "updates_progress.html")]
pub struct ProgressPanel {
    /// The running or last install; None when there was none.
    pub progress: Option<ProgressView>,
    /// Why the state could not be read.
    pub error: Option<String>,
    /// Whether the session may reboot (the "Reboot to activate" button).
    pub may_power: bool,
}

/// What the two install forms hold and what was wrong with them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstallForms {
    /// The URL typed.
    pub url: String,
    /// What is wrong with it.
    pub url_error: Option<String>,
    /// The URL form's checksum.
    pub url_sha256: String,
    /// What is wrong with it.
    pub url_sha256_error: Option<String>,
    /// The upload form's checksum.
    pub upload_sha256: String,
    /// What is wrong with it.
    pub upload_sha256_error: Option<String>,
    /// What is wrong with the upload.
    pub upload_error: Option<String>,
}

/// The updates page.
#[derive(Template)]
#[template(path = "updates.html")]
pub struct UpdatesPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The session's CSRF token.
    pub csrf: String,
    /// The slots, or why they could not be read.
    pub slots: Result<SlotsView, String>,
    /// The running or last install.
    pub install: Option<ProgressView>,
    /// The live panel of a running install.
    pub panel: ProgressPanel,
    /// The install forms.
    pub forms: InstallForms,
    /// What the last action did.
    pub notice: Option<String>,
    /// Why the last action failed.
    pub problem: Option<String>,
    /// May install, mark and roll back.
    pub may_manage: bool,
    /// May reboot.
    pub may_power: bool,
    /// "4.0 GiB".
    pub max_upload: String,
}

/// The page's query: what the last action did.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    done: String,
    #[serde(default)]
    slot: String,
}

/// The sentence for `?done=` (None for anything else).
fn notice(q: &PageQuery, slots: Option<&SlotsView>) -> Option<String> {
    let slot = slots
        .and_then(|v| v.rows.iter().find(|r| r.name == q.slot))
        .map(|r| format!("{} ({})", r.name, r.bootname));
    match (q.done.as_str(), slot) {
        ("rollback", _) => Some(match slots.map(|v| v.primary.as_str()).filter(|p| !p.is_empty()) {
            Some(p) => format!("Rollback set: {p} boots next. Reboot the node to run it."),
            None => "Rollback set. Reboot the node to run the other slot.".into(),
        }),
        ("mark-good", Some(s)) => Some(format!("Slot {s} is marked good.")),
        ("mark-bad", Some(s)) => Some(format!("Slot {s} is marked bad.")),
        ("reboot", _) => Some(
            "The node is rebooting. The console is unreachable until the node is back (usually within a minute); \
             then reload this page."
                .into(),
        ),
        _ => None,
    }
}

/// Renders the updates page for `session` with `status`.
async fn render(
    state: &AppState,
    session: &Session,
    status: StatusCode,
    forms: InstallForms,
    query: PageQuery,
    problem: Option<String>,
) -> Result<Response, AppError> {
    let answer = slots(state, &session.user).await;
    let may_power = session.role.allows(Permission::PowerNode);
    let view = answer.as_ref().ok().map(SlotsView::from);
    let install = answer
        .as_ref()
        .ok()
        .and_then(|s| s.install.as_ref())
        .map(ProgressView::from);
    let page = UpdatesPage {
        chrome: state.chrome(Some(nav(session, NAV))).await,
        csrf: session.csrf.clone(),
        notice: notice(&query, view.as_ref()),
        slots: view.ok_or_else(|| {
            answer
                .as_ref()
                .err()
                .map(|e| refusal("Reading the slots", e).text)
                .unwrap_or_default()
        }),
        panel: ProgressPanel {
            progress: install.clone(),
            error: None,
            may_power,
        },
        install,
        forms,
        problem,
        may_manage: session.role.allows(Permission::ManageUpdates),
        may_power,
        max_upload: human_bytes(MAX_UPLOAD),
    };
    Ok((status, Html(page.render()?)).into_response())
}

async fn page(
    State(state): State<AppState>,
    required: RequireSession,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewDashboard)?;
    let query = query.map(|Query(q)| q).unwrap_or_default();
    render(&state, session, StatusCode::OK, InstallForms::default(), query, None).await
}

#[cfg(test)]
mod tests {
    use debvisor_api::update::v1::{ErrorKind, InstallProgress, Phase, Slot};

    use super::*;

    fn sample() -> SlotsState {
        let slot = |name: &str, boot: &str, state: &str, status: &str| Slot {
            name: name.into(),
            class: "rootfs".into(),
            bootname: boot.into(),
            device: format!("/dev/disk/by-partlabel/root_{}", boot.to_lowercase()),
            r#type: "raw".into(),
            state: state.into(),
            boot_status: status.into(),
            booted: state == "booted",
            ..Default::default()
        };
        let mut b = slot("rootfs.1", "B", "inactive", "good");
        b.primary = true;
        b.bundle_version = "0.4.0".into();
        b.installed_unix_s = 1_795_717_800;
        b.size_bytes = 3 << 20;
        b.sha256 = "ab".repeat(32);
        SlotsState {
            compatible: "debvisor-node-x86_64".into(),
            booted_bootname: "A".into(),
            booted_slot: "rootfs.0".into(),
            primary_slot: "rootfs.1".into(),
            booted_good: true,
            operation: "idle".into(),
            slots: vec![slot("rootfs.0", "A", "booted", ""), b],
            ..Default::default()
        }
    }

    #[test]
    fn slots_read_naturally() {
        let v = SlotsView::from(&sample());
        assert_eq!(
            (v.booted.as_str(), v.primary.as_str()),
            ("rootfs.0 (A)", "rootfs.1 (B)")
        );
        assert!(v.switch_pending);
        let (a, b) = (&v.rows[0], &v.rows[1]);
        assert_eq!((a.boot_status.as_str(), a.boot_class), ("unknown", "warn"));
        assert_eq!(
            (b.boot_class, b.version.as_str(), b.size.as_str()),
            ("ok", "0.4.0", "3.0 MiB")
        );
        assert_eq!(b.installed, "2026-11-26 18:30:00 UTC");
        assert_eq!(b.sha256, "abababababab");
        assert!(a.linkable && b.linkable);
        let q = PageQuery {
            done: "mark-good".into(),
            slot: "rootfs.1".into(),
        };
        assert_eq!(notice(&q, Some(&v)).unwrap(), "Slot rootfs.1 (B) is marked good.");
        let q = PageQuery {
            done: "mark-good".into(),
            slot: "<script>".into(),
        };
        assert_eq!(notice(&q, Some(&v)), None, "only the node's own slots are named");
        let q = PageQuery {
            done: "rollback".into(),
            slot: String::new(),
        };
        assert!(notice(&q, Some(&v)).unwrap().contains("rootfs.1 (B) boots next"));
    }

    #[test]
    fn slot_names_are_checked() {
        assert_eq!(check_slot("").unwrap(), "booted");
        assert_eq!(check_slot(" other ").unwrap(), "other");
        assert_eq!(check_slot("rootfs.1").unwrap(), "rootfs.1");
        let e = check_slot("rootfs 1; rm").unwrap_err();
        assert!(e.contains("\"rootfs 1; rm\"") && e.contains("rootfs.1"), "{e}");
        assert!(check_slot(&"a".repeat(65)).is_err());
    }

    #[test]
    fn progress_and_errors_are_worded() {
        let p = InstallProgress {
            job_id: "install-2".into(),
            phase: Phase::Downloading as i32,
            percent: 140,
            bytes_done: 1 << 20,
            bytes_total: 4 << 20,
            ..Default::default()
        };
        let v = ProgressView::from(&p);
        assert_eq!(
            (v.percent, v.bytes.as_str(), v.running),
            (100, "1.0 MiB of 4.0 MiB", true)
        );
        let failed = InstallProgress {
            phase: Phase::Failed as i32,
            error_kind: ErrorKind::WrongCompatible as i32,
            error: "Compatible mismatch".into(),
            ..Default::default()
        };
        let v = ProgressView::from(&failed);
        assert_eq!((v.failed, v.running, v.error_title), (true, false, "Wrong compatible"));
        let html = ProgressPanel {
            progress: Some(v),
            error: None,
            may_power: true,
        }
        .render()
        .unwrap();
        assert!(
            html.contains("Wrong compatible") && html.contains("Compatible mismatch"),
            "{html}"
        );
        assert!(!html.contains("style="), "CSP forbids inline styles");
        for kind in [
            ErrorKind::BadSignature,
            ErrorKind::NotEnoughSpace,
            ErrorKind::DownloadFailed,
        ] {
            assert!(!error_words(kind).1.is_empty());
        }
    }

    #[test]
    fn refusals_keep_the_agents_reason() {
        let e = AgentError::Call(tonic::Status::failed_precondition("install-1 is still running"));
        let r = refusal("The install", &e);
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.text, "The install was refused: install-1 is still running");
        let r = refusal("The install", &AgentError::Call(tonic::Status::unimplemented("")));
        assert!(r.text.contains("no update service"), "{}", r.text);
        assert_eq!(refusal("x", &AgentError::Timeout).status, StatusCode::BAD_GATEWAY);
    }
}
