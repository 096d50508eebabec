//! The about page: what runs here and in which versions.
//!
//! | route | permission | what |
//! |---|---|---|
//! | `GET /about` | `ViewDashboard` | console, agent, image and kernel versions; the vendored front-end packages and their licences |

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::agent::AgentError;
use crate::error::AppError;
use crate::handlers::RequireSession;
use crate::roles::Permission;
use crate::views::Chrome;

/// The about page's routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/about", get(page))
}

/// One row of the versions table.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// What it is.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its licence.
    pub licence: String,
}

/// The about page.
#[derive(Debug, Template)]
#[template(path = "about.html")]
pub struct AboutPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The console's own version.
    pub console_version: &'static str,
    /// The console's licence.
    pub console_licence: &'static str,
    /// Agent, image and kernel, or why the agent could not tell.
    pub node: Result<Vec<Component>, String>,
    /// The vendored front-end packages.
    pub packages: Vec<Component>,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() { "unknown".into() } else { s.into() }
}

/// The rows for the vendored packages (from the lockfile, at build time).
pub fn packages() -> Vec<Component> {
    crate::assets::PACKAGES
        .iter()
        .map(|p| Component {
            name: p.name.to_string(),
            version: p.version.to_string(),
            licence: p.licence.to_string(),
        })
        .collect()
}

async fn page(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewDashboard)?;
    let node = state
        .node()
        .status(Some(&session.user))
        .await
        .map(|s| {
            vec![
                Component {
                    name: "DebVisor agent".into(),
                    version: or_unknown(&s.agent_version),
                    licence: env!("CARGO_PKG_LICENSE").into(),
                },
                Component {
                    name: format!("Image {}", or_unknown(&s.image_id)),
                    version: or_unknown(&s.image_version),
                    licence: "various (Debian packages)".into(),
                },
                Component {
                    name: "Linux kernel".into(),
                    version: or_unknown(&s.kernel),
                    licence: "GPL-2.0-only".into(),
                },
            ]
        })
        .map_err(|e: AgentError| e.summary());
    let chrome = state.chrome(Some(crate::handlers::nav(session, "about"))).await;
    let page = AboutPage {
        chrome,
        console_version: env!("CARGO_PKG_VERSION"),
        console_licence: env!("CARGO_PKG_LICENSE"),
        node,
        packages: packages(),
    };
    Ok(Html(page.render()?).into_response())
}
