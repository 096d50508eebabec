//! Node settings: `debvisor.config.v1.ConfigService`.
//!
//! | route | permission | what |
//! |---|---|---|
//! | `GET /settings` | `ViewConfig` | the machine config in effect (TOML, secrets redacted by the agent), its source, file, version and the error of a refused newer config; the bundle button for those who may download it |
//! | `POST /settings/client-bundle` | `DownloadClientBundle` | field `csrf`; the debvisorctl admin bundle as an attachment `debvisor-<hostname>.toml` (`no-store`), audited by the agent as `config.bundle.download` by `console:USER` |
//!
//! The download is a POST: it hands out a private key, so it needs the CSRF
//! token, is never cached or prefetched, and lands in the audit log.

use askama::Template;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use debvisor_api::config_api::v1::config_service_client::ConfigServiceClient;
use debvisor_api::config_api::v1::{ConfigSource, GetClientBundleRequest, GetMachineConfigRequest, MachineConfigState};
use serde::Deserialize;

use crate::AppState;
use crate::agent::{AgentError, bounded, on_behalf_of};
use crate::auth::{Session, tokens_match};
use crate::error::AppError;
use crate::handlers::{RequireSession, nav};
use crate::roles::Permission;
use crate::views::Chrome;

/// The routes of the settings page.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/settings", get(page))
        .route("/settings/client-bundle", post(download_bundle))
}

/// The machine config, formatted for the page.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigView {
    /// The TOML (escaped by the template), empty on defaults.
    pub toml: String,
    /// "data partition", "last good config", "built-in defaults", "simulated sample".
    pub source: &'static str,
    /// The file it was read from.
    pub path: String,
    /// Its version (short sha256), empty on defaults.
    pub digest: String,
    /// The error of a refused newer config.
    pub refused_error: String,
    /// Keys whose values the agent redacted.
    pub redacted: String,
    /// The agent's caveat.
    pub warning: String,
}

impl From<MachineConfigState> for ConfigView {
    fn from(s: MachineConfigState) -> Self {
        let source = match s.source() {
            ConfigSource::DataPartition => "data partition",
            ConfigSource::LastGood => "last good config",
            ConfigSource::Defaults => "built-in defaults",
            ConfigSource::Simulated => "simulated sample",
            ConfigSource::Unspecified => "unknown",
        };
        ConfigView {
            toml: s.toml,
            source,
            path: s.path,
            digest: s.digest,
            refused_error: s.refused_error,
            redacted: s.redacted_keys.join(", "),
            warning: s.warning,
        }
    }
}

/// The settings page.
#[derive(Template)]
#[template(path = "settings.html")]
pub struct SettingsPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The config, or why it cannot be shown.
    pub config: Result<ConfigView, String>,
    /// Whether the user may download the admin bundle.
    pub may_download: bool,
    /// Why the last download failed.
    pub bundle_error: Option<String>,
    /// The session's CSRF token.
    pub csrf: String,
}

async fn render(state: &AppState, session: &Session, bundle_error: Option<String>) -> Result<String, AppError> {
    let user = session.user.clone();
    let answer = bounded("machine config", async {
        let mut client = ConfigServiceClient::new(state.node().channel().await?);
        let req = on_behalf_of(GetMachineConfigRequest {}, Some(&user));
        Ok(client.get_machine_config(req).await?.into_inner())
    })
    .await;
    let page = SettingsPage {
        chrome: state.chrome(Some(nav(session, "settings"))).await,
        config: answer.map(ConfigView::from).map_err(|e| e.summary()),
        may_download: session.role.allows(Permission::DownloadClientBundle),
        bundle_error,
        csrf: session.csrf.clone(),
    };
    Ok(page.render()?)
}

async fn page(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewConfig)?;
    Ok(Html(render(&state, session, None).await?).into_response())
}

/// The download form.
#[derive(Debug, Deserialize)]
pub struct BundleForm {
    #[serde(default)]
    csrf: String,
}

async fn download_bundle(
    State(state): State<AppState>,
    required: RequireSession,
    form: Result<Form<BundleForm>, FormRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::DownloadClientBundle)?;
    let Form(form) = form.map_err(|_| AppError::BadRequest)?;
    if !tokens_match(&form.csrf, &session.csrf) {
        tracing::warn!(user = %session.user, "bundle download refused: missing or wrong CSRF token");
        return Err(AppError::Csrf);
    }
    let user = session.user.clone();
    let answer = bounded("client bundle", async {
        let mut client = ConfigServiceClient::new(state.node().channel().await?);
        let req = on_behalf_of(GetClientBundleRequest {}, Some(&user));
        Ok(client.get_client_bundle(req).await?.into_inner())
    })
    .await;
    match answer {
        Ok(bundle) => {
            tracing::info!(user = %user, simulated = bundle.simulated, "admin client bundle downloaded");
            let disposition = format!("attachment; filename=\"{}\"", safe_filename(&bundle.filename));
            let mut resp = bundle.toml.into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/toml; charset=utf-8"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            Ok(resp)
        }
        Err(e) => {
            let reason = match &e {
                AgentError::Call(s) => s.message().chars().take(300).collect(),
                other => other.summary(),
            };
            let html = render(
                &state,
                session,
                Some(format!("The bundle could not be downloaded: {reason}")),
            )
            .await?;
            Ok((StatusCode::BAD_GATEWAY, Html(html)).into_response())
        }
    }
}

/// The agent's file name if it is `debvisor-*.toml` of safe characters,
/// else `debvisor-node.toml`.
pub fn safe_filename(name: &str) -> String {
    let ok = name.starts_with("debvisor-")
        && name.ends_with(".toml")
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        name.to_string()
    } else {
        "debvisor-node.toml".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_checked() {
        assert_eq!(safe_filename("debvisor-edge-7.toml"), "debvisor-edge-7.toml");
        assert_eq!(safe_filename("debvisor-\"x.toml"), "debvisor-node.toml");
        assert_eq!(safe_filename("../etc/passwd"), "debvisor-node.toml");
        assert_eq!(safe_filename(""), "debvisor-node.toml");
    }
}
