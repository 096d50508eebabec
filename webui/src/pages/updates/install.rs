//! Installing from a URL, and following an install: the status page and its
//! live events.

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{Html, IntoResponse, Redirect, Response};
use debvisor_api::update::v1::{InstallRequest, WatchInstallRequest};
use futures_util::{StreamExt, stream};
use serde::Deserialize;
use tonic::Code;

use super::{InstallForms, NAV, PageQuery, ProgressPanel, ProgressView, client, refusal, render, slots};
use crate::AppState;
use crate::agent::{AgentError, bounded, on_behalf_of};
use crate::auth::tokens_match;
use crate::error::AppError;
use crate::handlers::{RequireSession, live_events, nav};
use crate::roles::Permission;
use crate::views::Chrome;

/// The longest URL accepted.
pub const MAX_URL: usize = 2048;

/// Checks a bundle URL: http or https, a host, no spaces, at most
/// [`MAX_URL`] characters. The URL (trimmed), or what is wrong with it.
pub fn check_url(raw: &str) -> Result<String, String> {
    let url = raw.trim();
    let shown: String = url.chars().take(60).collect();
    if url.is_empty() {
        return Err("Enter the bundle's URL, e.g. https://updates.example.com/debvisor/update.raucb.".into());
    }
    if url.len() > MAX_URL {
        return Err(format!(
            "The URL is {} characters long; at most {MAX_URL} are accepted.",
            url.len()
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "The URL {shown:?} contains spaces or control characters; percent-encode them (a space is %20)."
        ));
    }
    match url.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase()) {
        Some(scheme) if scheme == "http" || scheme == "https" => {}
        Some(scheme) => {
            let scheme: String = scheme.chars().take(20).collect();
            return Err(format!(
                "The URL must start with http:// or https:// (not {scheme}://): the agent downloads bundles over \
                 HTTP(S) only; upload a local file below instead."
            ));
        }
        None => {
            return Err(format!(
                "{shown:?} is not a full URL: it must start with http:// or https://."
            ));
        }
    }
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|_| format!("{shown:?} is not a URL; enter one such as https://host/path/update.raucb."))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("The URL {shown:?} names no server (host)."));
    }
    Ok(url.to_string())
}

/// Checks an optional SHA-256: empty, or 64 hex digits (returned lower-case).
pub fn check_sha256(raw: &str) -> Result<String, String> {
    let s = raw.trim();
    if s.is_empty() || (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Ok(s.to_ascii_lowercase());
    }
    Err(format!(
        "The SHA-256 must be 64 hexadecimal digits (got {} characters); leave it empty to rely on the bundle's \
         signature alone.",
        s.chars().count()
    ))
}

/// The install-from-URL form.
#[derive(Debug, Deserialize)]
pub struct UrlForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    sha256: String,
}

/// `POST /updates/install`: validates the form, asks the agent to install
/// the URL and sends the browser to the status page. The agent keeps
/// installing after this request's stream is dropped.
pub(super) async fn start(
    State(state): State<AppState>,
    required: RequireSession,
    form: Result<Form<UrlForm>, FormRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageUpdates)?;
    let Form(form) = form.map_err(|_| AppError::BadRequest)?;
    if !tokens_match(&form.csrf, &session.csrf) {
        tracing::warn!(user = %session.user, "update install refused: missing or wrong CSRF token");
        return Err(AppError::Csrf);
    }
    let url = check_url(&form.url);
    let sha256 = check_sha256(&form.sha256);
    let mut forms = InstallForms {
        url: form.url.chars().take(MAX_URL).collect(),
        url_sha256: form.sha256.chars().take(128).collect(),
        ..InstallForms::default()
    };
    let (url, sha256) = match (url, sha256) {
        (Ok(u), Ok(s)) => (u, s),
        (u, s) => {
            forms.url_error = u.err();
            forms.url_sha256_error = s.err();
            let q = PageQuery::default();
            return render(&state, session, StatusCode::UNPROCESSABLE_ENTITY, forms, q, None).await;
        }
    };
    let user = session.user.clone();
    let request = InstallRequest {
        url: url.clone(),
        sha256,
    };
    let started = bounded("update install", async {
        let mut stream = client(&state)
            .await?
            .install(on_behalf_of(request, Some(&user)))
            .await?
            .into_inner();
        Ok(stream.message().await?)
    })
    .await;
    match started {
        Ok(first) => {
            let job = first.map(|p| p.job_id).unwrap_or_default();
            tracing::info!(user = %user, %url, job, "update install started");
            Ok(Redirect::to("/updates/install").into_response())
        }
        Err(e) => {
            let r = refusal("The install", &e);
            if matches!(&e, AgentError::Call(s) if s.code() == Code::InvalidArgument) {
                forms.url_error = Some(r.text);
                render(&state, session, r.status, forms, PageQuery::default(), None).await
            } else {
                render(&state, session, r.status, forms, PageQuery::default(), Some(r.text)).await
            }
        }
    }
}

/// The install status page.
#[derive(Template)]
#[template(path = "updates_install.html")]
pub struct InstallPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The install.
    pub panel: ProgressPanel,
    /// Whether it still runs (the page then follows it).
    pub running: bool,
}

/// `GET /updates/install`: the running or last install.
pub(super) async fn status_page(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewDashboard)?;
    let answer = slots(&state, &session.user).await;
    let (progress, error, code) = match &answer {
        Ok(s) => (s.install.as_ref().map(ProgressView::from), None, StatusCode::OK),
        Err(e) => {
            let r = refusal("Reading the install's state", e);
            (None, Some(r.text), r.status)
        }
    };
    let page = InstallPage {
        chrome: state.chrome(Some(nav(session, NAV))).await,
        running: progress.as_ref().is_some_and(|p| p.running),
        panel: ProgressPanel {
            progress,
            error,
            may_power: session.role.allows(Permission::PowerNode),
        },
    };
    Ok((code, Html(page.render()?)).into_response())
}

/// One event of the install panel's stream.
enum Live {
    /// The panel as it is now.
    Panel(Box<ProgressPanel>),
    /// The install ended (or there is none): the browser stops listening.
    End,
}

/// `GET /updates/events`: `WatchInstall` as server-sent events, one
/// `progress` event (the panel) per message, then `end`, on which htmx's SSE
/// extension closes the stream instead of reconnecting. With no install
/// since the agent started, or when the agent cannot be asked, one panel
/// saying so, then `end`.
pub(super) async fn events(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewDashboard)?;
    let user = session.user.clone();
    let may_power = session.role.allows(Permission::PowerNode);
    let panel = move |progress: Option<ProgressView>, error: Option<String>| {
        Live::Panel(Box::new(ProgressPanel {
            progress,
            error,
            may_power,
        }))
    };
    let opened = bounded("update watch", async {
        let mut c = client(&state).await?;
        Ok(c.watch_install(on_behalf_of(WatchInstallRequest {}, Some(&user)))
            .await?
            .into_inner())
    })
    .await;
    let items = match opened {
        Ok(s) => s
            .map(move |item| item.map(|p| panel(Some(ProgressView::from(&p)), None)))
            .boxed(),
        Err(AgentError::Call(s)) if s.code() == Code::NotFound => stream::iter([Ok(panel(None, None))]).boxed(),
        Err(e) => {
            let text = refusal("Following the install", &e).text;
            stream::iter([Ok(panel(None, Some(text)))]).boxed()
        }
    };
    let items = items.chain(stream::once(async { Ok::<_, tonic::Status>(Live::End) }));
    Ok(live_events(
        &state,
        session,
        "install panel",
        items,
        |live| match live {
            Live::Panel(p) => Ok(Event::default().event("progress").data(p.render()?)),
            Live::End => Ok(Event::default().event("end").data("")),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_with_a_reason() {
        assert_eq!(
            check_url(" https://updates.example.com/v2/update.raucb ").unwrap(),
            "https://updates.example.com/v2/update.raucb"
        );
        assert!(check_url("http://192.0.2.1:8080/b.raucb").is_ok());
        let cases = [
            ("", "Enter the bundle's URL"),
            ("ftp://example.com/b.raucb", "not ftp://"),
            ("file:///tmp/b.raucb", "http:// or https://"),
            ("/tmp/update.raucb", "must start with http:// or https://"),
            ("https://example.com/a b", "percent-encode"),
            ("https:///nohost", "not a URL"),
        ];
        for (url, needle) in cases {
            let e = check_url(url).unwrap_err();
            assert!(e.contains(needle), "{url}: {e}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL));
        assert!(check_url(&long).unwrap_err().contains("at most 2048"));
    }

    #[test]
    fn checksums_are_optional_but_well_formed() {
        assert_eq!(check_sha256("").unwrap(), "");
        assert_eq!(check_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
        assert!(check_sha256("abc").unwrap_err().contains("got 3 characters"));
        assert!(check_sha256(&"g".repeat(64)).is_err());
    }
}
