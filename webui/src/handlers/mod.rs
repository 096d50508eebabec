//! The console's routes, request extractors and middleware.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | to `/dashboard` when signed in, else to `/login` |
//! | `GET /login`, `POST /login` | sign-in form (double-submit CSRF cookie), throttled |
//! | `POST /logout` | sign-out (session CSRF token) |
//! | `/users...` | user management (admin; see [`crate::pages::users`]) |
//! | `GET /status` | the node's figures and health (checks, boot gate, refused machine config) from the agent (signed in) |
//! | `GET /healthz` | `ok` for the supervisor (503 while the fault switch file exists) |
//! | `GET /static/app.css` | the style sheet |
//! | `GET /static/favicon.svg`, `GET /favicon.ico` | the icon (SVG) |
//!
//! Every response gets the security headers; every error response becomes
//! a friendly page. The session middleware looks the request's session up
//! once (handlers get it through [`MaybeSession`] / [`RequireSession`]) and
//! holds each signed-in user to [`crate::auth::ratelimit`]'s rate (static
//! assets and `/healthz` are not counted). Sign-in, sign-out and failed
//! sign-ins are recorded in the agent's audit log (`console.login`,
//! `console.logout`).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use debvisor_api::node::v1::GetStatusResponse;
use serde::Deserialize;

use argon2::Params;
use debvisor_api::audit::v1::RecordRequest;
use debvisor_api::audit::v1::audit_service_client::AuditServiceClient;

use crate::agent::{AgentError, NodeSource, bounded, on_behalf_of};
use crate::auth::ratelimit::RateLimiter;
use crate::auth::store::{Store, UserName};
use crate::auth::{AdminCredential, Clock, Session, SystemClock, Throttle, ThrottleKey, Verdict};
use crate::auth::{random_token, tokens_match};
use crate::error::{AppError, ErrorInfo};
use crate::roles::Permission;
use crate::views::{Chrome, ErrorPage, HealthView, LoginPage, Nav, NodeView, StatusPage};

/// The session cookie. The `__Host-` prefix makes browsers insist on
/// `Secure`, `Path=/` and no `Domain`.
pub const SESSION_COOKIE: &str = "__Host-debvisor_session";
/// The sign-in form's double-submit CSRF cookie.
pub const CSRF_COOKIE: &str = "__Host-debvisor_csrf";
/// The Content-Security-Policy of every page: nothing inline, nothing
/// foreign.
pub const CSP: &str = "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
                       frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
/// [`CSP`] for a page whose script adds `<style>` elements (xterm.js writes
/// the terminal's measured cell size and colours into some): such elements
/// are allowed when they carry `nonce`, which the page's script stamps on
/// each one it creates; inline style attributes and everything else stay
/// as strict as on every other page. `nonce` must be fresh for each
/// response ([`crate::auth::random_token`]).
pub fn csp_with_style_nonce(nonce: &str) -> String {
    CSP.replacen(
        "style-src 'self';",
        &format!("style-src 'self'; style-src-elem 'self' 'nonce-{nonce}';"),
        1,
    )
}
/// Where a signed-in user lands (after sign-in, and for `/`).
pub const HOME: &str = "/dashboard";
/// The style sheet, compiled in.
pub const APP_CSS: &str = include_str!("../../static/app.css");
/// The console's icon, compiled in.
pub const FAVICON_SVG: &str = include_str!("../../static/favicon.svg");
/// How long the header's host name and simulation flag are reused on pages
/// that do not ask the agent themselves.
const CHROME_TTL: Duration = Duration::from_secs(10);
/// How long such a page waits for the agent before showing no host name.
const CHROME_TIMEOUT: Duration = Duration::from_secs(2);
/// Forms are tiny; anything bigger is refused.
const MAX_BODY: usize = 16 * 1024;

/// The console's fault switch: root creates this file to make `/healthz`
/// fail (only root can write under /run/debvisor).
pub const HEALTHZ_FAULT_FILE: &str = "/run/debvisor/faults/console-healthz";

mod events;
mod login;
mod state;

pub use events::{LIVE_SESSION_CHECK, is_live, live_events, while_signed_in};
#[cfg(test)]
use login::login_csrf;
pub use login::{CsrfForm, LoginForm};
use login::{login, login_form, logout};
pub use state::AppState;

/// The console's router with all routes and middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/static/app.css", get(stylesheet))
        .route("/static/favicon.svg", get(favicon))
        .route("/favicon.ico", get(favicon))
        .merge(crate::pages::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), sessions_and_rate_limit))
        .layer(middleware::from_fn_with_state(state.clone(), friendly_errors))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// The value of cookie `name` from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn set_cookie(name: &str, value: &str) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict")
}

/// The session the middleware found for a request (in its extensions).
#[derive(Clone)]
struct Resolved(Option<Session>);

/// Looks the session of `headers`' cookie up; `live` requests (a browser's
/// event stream, see [`is_live`]) do not count as use.
async fn lookup(state: &AppState, headers: &HeaderMap, live: bool) -> Result<Option<Session>, AppError> {
    match cookie(headers, SESSION_COOKIE) {
        Some(id) if live => Ok(state.store().peek(&id).await?),
        Some(id) => Ok(state.store().touch(&id).await?),
        None => Ok(None),
    }
}

/// Whether requests to `path` are exempt from the per-user rate.
fn rate_exempt(path: &str) -> bool {
    path == "/healthz" || path == "/favicon.ico" || path.starts_with("/static/")
}

/// Looks the request's session up once and holds signed-in users to the
/// request rate: beyond it, 429 with `Retry-After`.
async fn sessions_and_rate_limit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if rate_exempt(request.uri().path()) {
        return next.run(request).await;
    }
    let live = is_live(request.uri().path());
    let session = match lookup(&state, request.headers(), live).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Some(s) = &session
        && let Err(wait) = state.0.limiter.check(&s.user)
    {
        tracing::warn!(user = %s.user, "request refused: over the per-user rate");
        return AppError::TooManyRequests { retry_after: wait }.into_response();
    }
    request.extensions_mut().insert(Resolved(session));
    next.run(request).await
}

/// The signed-in session of the request, if any.
pub struct MaybeSession(pub Option<Session>);

impl FromRequestParts<AppState> for MaybeSession {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(Resolved(s)) = parts.extensions.get::<Resolved>() {
            return Ok(MaybeSession(s.clone()));
        }
        Ok(MaybeSession(
            lookup(state, &parts.headers, is_live(parts.uri.path())).await?,
        ))
    }
}

/// A signed-in session; without one the browser is sent to `/login`.
pub struct RequireSession(pub Session);

impl RequireSession {
    /// The session if its role holds `p` (see [`crate::roles::TABLE`]),
    /// else [`AppError::Forbidden`]. Every route that needs more than a
    /// signed-in user calls this first.
    pub fn require(&self, p: Permission) -> Result<&Session, AppError> {
        if self.0.role.allows(p) {
            Ok(&self.0)
        } else {
            Err(AppError::Forbidden {
                role: self.0.role,
                permission: p,
            })
        }
    }
}

impl FromRequestParts<AppState> for RequireSession {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let MaybeSession(session) = MaybeSession::from_request_parts(parts, state).await?;
        session.map(RequireSession).ok_or(AppError::LoginRequired)
    }
}

/// The client's address as the accept loop recorded it
/// ([`ConnectInfo<SocketAddr>`]); `::` when unknown.
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_canonical())
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        Ok(ClientIp(ip))
    }
}

fn nav_for(session: &Session) -> Nav {
    nav(session, "status")
}

/// The navigation bar for `session` with `current` (the page's name)
/// highlighted.
pub fn nav(session: &Session, current: &'static str) -> Nav {
    Nav::new(session, current)
}

async fn index(MaybeSession(session): MaybeSession) -> Redirect {
    Redirect::to(if session.is_some() { HOME } else { "/login" })
}

/// The supervisor's probe of the console. While the fault switch file
/// exists (root creates it; see [`HEALTHZ_FAULT_FILE`]) it answers 503, so
/// that system tests can make the console fail its health check without
/// stopping it.
async fn healthz(State(state): State<AppState>) -> Response {
    let plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    match state.0.healthz_fault.get() {
        Some(file) if file.exists() => (
            StatusCode::SERVICE_UNAVAILABLE,
            plain,
            format!("fault injected: {} exists", file.display()),
        )
            .into_response(),
        _ => (plain, "ok").into_response(),
    }
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        APP_CSS,
    )
}

async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON_SVG,
    )
}

async fn not_found() -> AppError {
    AppError::NotFound
}

async fn status(State(state): State<AppState>, RequireSession(session): RequireSession) -> Result<Response, AppError> {
    let (result, health) = tokio::join!(
        state.status(Some(&session.user)),
        state.0.node.health(Some(&session.user))
    );
    let health = health.as_ref().map(HealthView::from).map_err(AgentError::summary);
    let chrome = state.chrome(Some(nav_for(&session))).await;
    let (code, node) = match &result {
        Ok(s) => (StatusCode::OK, Ok(NodeView::from(s))),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Err(e.summary())),
    };
    let html = StatusPage { chrome, node, health }.render()?;
    Ok((code, Html(html)).into_response())
}

/// Adds the security headers to every response; pages are `no-store`
/// unless the handler chose a cache policy (the style sheet), and get
/// [`CSP`] unless the handler set its own (only the serial console's page
/// does, [`csp_with_style_nonce`]).
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    }
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=63072000"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Turns every error response that is not already a page into the site's
/// error page (status and headers such as `Allow` are kept).
async fn friendly_errors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_html {
        return response;
    }
    let info = response
        .extensions()
        .get::<ErrorInfo>()
        .cloned()
        .unwrap_or_else(|| ErrorInfo::for_status(status));
    let page = ErrorPage {
        chrome: state.chrome(None).await,
        code: status.as_u16(),
        title: info.title.to_string(),
        message: info.message.to_string(),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    match page.render() {
        Ok(html) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            Response::from_parts(parts, Body::from(html))
        }
        Err(e) => {
            tracing::error!(error = %e, "error page rendering failed");
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Response::from_parts(parts, Body::from(format!("{}: {}", info.title, info.message)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_across_headers() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-debvisor_csrf=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("__Host-debvisor_session=xyz"));
        assert_eq!(cookie(&h, CSRF_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn the_style_nonce_policy_only_adds_nonced_style_elements() {
        let csp = csp_with_style_nonce("abc123");
        assert_eq!(
            csp,
            "default-src 'self'; style-src 'self'; style-src-elem 'self' 'nonce-abc123'; script-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        );
        assert!(!csp.contains("unsafe"));
    }

    #[test]
    fn login_csrf_reuses_only_well_formed_tokens() {
        let token = random_token();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{CSRF_COOKIE}={token}")).unwrap(),
        );
        assert_eq!(login_csrf(&h), token);
        h.insert(header::COOKIE, HeaderValue::from_static("__Host-debvisor_csrf=short"));
        assert_ne!(login_csrf(&h), "short");
    }
}
