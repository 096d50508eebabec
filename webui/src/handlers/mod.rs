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
use futures_util::{Stream, StreamExt};
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
/// Where a signed-in user lands (after sign-in, and for `/`).
pub const HOME: &str = "/dashboard";
/// The style sheet, compiled in.
pub const APP_CSS: &str = include_str!("../static/app.css");
/// The console's icon, compiled in.
pub const FAVICON_SVG: &str = include_str!("../static/favicon.svg");
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

/// Shared state of the console: the agent, the credential, sessions and
/// throttling.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    node: Arc<dyn NodeSource>,
    clock: Arc<dyn Clock>,
    store: Store,
    throttle: Throttle,
    limiter: RateLimiter,
    credential: AdminCredential,
    /// argon2 parameters for new passwords (the defaults unless set).
    password_params: std::sync::OnceLock<Params>,
    /// While this file exists, `/healthz` answers 503 (fault injection for
    /// the supervisor's tests).
    healthz_fault: std::sync::OnceLock<PathBuf>,
    /// When the agent was last asked, and what it said the last time it
    /// answered.
    last_seen: Mutex<Option<(Instant, Option<HeaderFacts>)>>,
}

/// What the page header needs from the agent.
#[derive(Debug, Clone)]
struct HeaderFacts {
    hostname: String,
    simulated: bool,
}

impl AppState {
    /// State reading the admin hash from `admin_hash`, with the real clock
    /// and a console database in memory (see [`AppState::with_store`]).
    pub fn new(node: Arc<dyn NodeSource>, admin_hash: impl Into<PathBuf>) -> Self {
        Self::with_clock(node, admin_hash, Arc::new(SystemClock))
    }

    /// Like [`AppState::new`] with a chosen clock (tests move time).
    pub fn with_clock(node: Arc<dyn NodeSource>, admin_hash: impl Into<PathBuf>, clock: Arc<dyn Clock>) -> Self {
        let store = Store::in_memory(clock.clone());
        Self::with_store(node, admin_hash, clock, store)
    }

    /// State with the console database `store` (see [`Store::open`]);
    /// `clock` should be the store's.
    pub fn with_store(
        node: Arc<dyn NodeSource>,
        admin_hash: impl Into<PathBuf>,
        clock: Arc<dyn Clock>,
        store: Store,
    ) -> Self {
        AppState(Arc::new(Inner {
            node,
            store,
            throttle: Throttle::new(clock.clone()),
            limiter: RateLimiter::new(clock.clone()),
            credential: AdminCredential::new(admin_hash),
            password_params: std::sync::OnceLock::new(),
            clock,
            healthz_fault: std::sync::OnceLock::new(),
            last_seen: Mutex::new(None),
        }))
    }

    /// Makes `/healthz` answer 503 while `file` exists.
    /// Set once; a second call keeps the first file.
    pub fn with_healthz_fault_file(self, file: impl Into<PathBuf>) -> Self {
        let _ = self.0.healthz_fault.set(file.into());
        self
    }

    /// Hashes new passwords with `params` instead of argon2's defaults
    /// (tests use small ones). Set once; a second call keeps the first.
    pub fn with_password_params(self, params: Params) -> Self {
        let _ = self.0.password_params.set(params);
        self
    }

    /// The argon2 parameters for new passwords.
    pub fn password_params(&self) -> Params {
        self.0.password_params.get().cloned().unwrap_or_default()
    }

    /// The console database: users and sessions.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The supervisor's admin credential.
    pub fn credential(&self) -> &AdminCredential {
        &self.0.credential
    }

    /// Appends a record to the agent's audit log for console user `actor`
    /// (recorded as `console:ACTOR`): `action` (e.g. `console.user.create`)
    /// on `target`, with `result` (`Err` carries the reason shown to the
    /// user). Fails when the agent cannot be reached or refuses.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        result: Result<(), &str>,
    ) -> Result<(), AgentError> {
        let request = RecordRequest {
            action: action.to_string(),
            target: target.to_string(),
            result: if result.is_ok() { "ok" } else { "error" }.to_string(),
            error: result.err().unwrap_or_default().to_string(),
        };
        bounded("audit record", async {
            let channel = self.0.node.channel().await?;
            AuditServiceClient::new(channel)
                .record(on_behalf_of(request, Some(actor)))
                .await?;
            Ok(())
        })
        .await
    }
    /// The agent, as the pages see it.
    pub fn node(&self) -> &Arc<dyn NodeSource> {
        &self.0.node
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.0.clock
    }

    fn remember(&self, answer: Option<HeaderFacts>) {
        let mut last = self.0.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        let keep = last.as_ref().and_then(|(_, a)| a.clone());
        *last = Some((self.0.clock.now(), answer.or(keep)));
    }

    /// Asks the agent for the node's status, for `user` (None: the
    /// console's own request), and remembers the header facts.
    async fn status(&self, user: Option<&str>) -> Result<GetStatusResponse, AgentError> {
        let result = self.0.node.status(user).await;
        self.remember(result.as_ref().ok().map(|s| HeaderFacts {
            hostname: s.hostname.clone(),
            simulated: s.simulated,
        }));
        result
    }

    /// The page chrome, asking the agent only when the last answer is stale.
    pub async fn chrome(&self, nav: Option<Nav>) -> Chrome {
        let fresh = {
            let last = self.0.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            match last.as_ref() {
                Some((at, answer)) if self.0.clock.now().saturating_duration_since(*at) < CHROME_TTL => {
                    Some(answer.clone())
                }
                _ => None,
            }
        };
        let answer = match fresh {
            Some(answer) => answer,
            None => {
                let _ = tokio::time::timeout(CHROME_TIMEOUT, self.status(None)).await;
                let last = self.0.last_seen.lock().unwrap_or_else(|p| p.into_inner());
                last.as_ref().and_then(|(_, a)| a.clone())
            }
        };
        Chrome {
            hostname: answer.as_ref().map(|f| f.hostname.clone()).filter(|h| !h.is_empty()),
            simulated: answer.is_some_and(|f| f.simulated),
            nav,
        }
    }
}

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

/// Whether `path` is a live stream (server-sent events): the browser opens
/// and reopens those by itself, so they neither keep a session from going
/// idle nor outlive it (see [`while_signed_in`]).
pub fn is_live(path: &str) -> bool {
    path.ends_with("/events")
}

/// How often a live stream checks that its session still holds.
pub const LIVE_SESSION_CHECK: Duration = Duration::from_secs(5);

/// `stream`, ended as soon as `session` does (signed out, expired, user
/// disabled or deleted), checked every [`LIVE_SESSION_CHECK`].
pub fn while_signed_in<S: Stream + Send>(
    state: &AppState,
    session: &Session,
    stream: S,
) -> impl Stream<Item = S::Item> + Send + use<S> {
    let (state, id) = (state.clone(), session.id.clone());
    let ended = async move {
        loop {
            tokio::time::sleep(LIVE_SESSION_CHECK).await;
            if !matches!(state.store().peek(&id).await, Ok(Some(_))) {
                return;
            }
        }
    };
    stream.take_until(ended)
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

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// A form that only carries a CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Renders the sign-in page with `status`, (re)setting the CSRF cookie.
async fn login_page(
    state: &AppState,
    status: StatusCode,
    csrf: String,
    username: String,
    error: Option<String>,
) -> Result<Response, AppError> {
    let page = LoginPage {
        chrome: state.chrome(None).await,
        csrf: csrf.clone(),
        username,
        error,
    };
    let html = page.render()?;
    Ok((
        status,
        [(header::SET_COOKIE, set_cookie(CSRF_COOKIE, &csrf))],
        Html(html),
    )
        .into_response())
}

/// A well-formed CSRF cookie is reused, so that two open tabs both work.
fn login_csrf(headers: &HeaderMap) -> String {
    cookie(headers, CSRF_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(random_token)
}

async fn login_form(
    State(state): State<AppState>,
    MaybeSession(session): MaybeSession,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    if session.is_some() {
        return Ok(Redirect::to(HOME).into_response());
    }
    login_page(&state, StatusCode::OK, login_csrf(&headers), String::new(), None).await
}

async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    MaybeSession(previous): MaybeSession,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, AppError> {
    let Form(form) = form.map_err(|_| AppError::BadRequest)?;
    let expected = cookie(&headers, CSRF_COOKIE).unwrap_or_default();
    if !tokens_match(&form.csrf, &expected) {
        tracing::warn!(%ip, "sign-in refused: missing or wrong CSRF token");
        return Err(AppError::Csrf);
    }
    let username: String = form.username.trim().chars().take(64).collect();
    // Failed sign-ins are audited as the name typed when it is a valid
    // user name, else as "-".
    let actor = if username.parse::<UserName>().is_ok() {
        username.as_str()
    } else {
        "-"
    };
    let target = ip.to_string();
    let keys = [ThrottleKey::user(&username), ThrottleKey::ip(ip)];
    if let Err(wait) = state.0.throttle.check(&keys) {
        tracing::warn!(%ip, user = ?username, "sign-in refused: too many failures");
        let _ = state
            .audit(
                actor,
                "console.login",
                &target,
                Err("too many failed sign-ins: throttled"),
            )
            .await;
        let minutes = wait.as_secs().div_ceil(60).max(1);
        let unit = if minutes == 1 { "minute" } else { "minutes" };
        let message = format!("Too many failed sign-in attempts. Try again in {minutes} {unit}.");
        let mut response = login_page(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            form.csrf,
            username,
            Some(message),
        )
        .await?;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
        return Ok(response);
    }
    match state
        .0
        .credential
        .verify(state.store(), &username, &form.password)
        .await?
    {
        Verdict::Accepted(role) => {
            state.0.throttle.reset(&keys);
            if let Some(old) = previous {
                state.store().remove_session(&old.id).await?;
            }
            let session = state.store().create_session(&username, role).await?;
            tracing::info!(%ip, user = %username, %role, "signed in");
            // Best effort: sign-in works while the agent restarts.
            let _ = state.audit(&username, "console.login", &target, Ok(())).await;
            let mut response = Redirect::to(HOME).into_response();
            let h = response.headers_mut();
            for c in [set_cookie(SESSION_COOKIE, &session.id), clear_cookie(CSRF_COOKIE)] {
                h.append(header::SET_COOKIE, HeaderValue::from_str(&c).expect("cookie is ASCII"));
            }
            Ok(response)
        }
        Verdict::Rejected => {
            state.0.throttle.record_failure(&keys);
            tracing::warn!(%ip, user = ?username, "sign-in failed");
            let _ = state
                .audit(actor, "console.login", &target, Err("wrong user name or password"))
                .await;
            let message = "Wrong user name or password.".to_string();
            login_page(&state, StatusCode::UNAUTHORIZED, form.csrf, username, Some(message)).await
        }
        Verdict::Unavailable => {
            let message = "Sign-in is not available yet: the admin password has not been set up. \
                           The supervisor creates it at first boot; try again in a minute."
                .to_string();
            login_page(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                form.csrf,
                username,
                Some(message),
            )
            .await
        }
    }
}

async fn logout(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    MaybeSession(session): MaybeSession,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, AppError> {
    let Some(session) = session else {
        return Ok((
            [(header::SET_COOKIE, clear_cookie(SESSION_COOKIE))],
            Redirect::to("/login"),
        )
            .into_response());
    };
    let Form(form) = form.map_err(|_| AppError::Csrf)?;
    if !tokens_match(&form.csrf, &session.csrf) {
        tracing::warn!("sign-out refused: missing or wrong CSRF token");
        return Err(AppError::Csrf);
    }
    state.store().remove_session(&session.id).await?;
    tracing::info!(user = %session.user, "signed out");
    let _ = state
        .audit(&session.user, "console.logout", &ip.to_string(), Ok(()))
        .await;
    Ok((
        [(header::SET_COOKIE, clear_cookie(SESSION_COOKIE))],
        Redirect::to("/login"),
    )
        .into_response())
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
/// unless the handler chose a cache policy (the style sheet).
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
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
