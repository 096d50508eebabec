//! The users page (admin only, [`Permission::ManageUsers`]).
//!
//! | route | what |
//! |---|---|
//! | `GET /users` | the users (name, role, state, created, last password change) and the form to create one |
//! | `POST /users` | create: name, role, initial password twice (at least 12 characters) |
//! | `GET /users/{name}` | one user: forms to assign a role, reset the password, disable/enable, delete |
//! | `POST /users/{name}/role` | assign a role |
//! | `POST /users/{name}/password` | set a new password (twice); ends the user's other sessions |
//! | `POST /users/{name}/disable`, `/enable` | disable (ends the user's sessions) or enable |
//! | `POST /users/{name}/delete` | delete (not yourself) |
//!
//! Every form carries the session's CSRF token. A form with a bad field is
//! shown again with the message next to the field (422), keeping what was
//! typed except passwords. No change may leave the node without an enabled
//! admin. Every change, done or refused, is recorded in the agent's audit
//! log as `console:ADMIN` (`console.user.create`, `.disable`, `.enable`,
//! `.password`, `.role`, `.delete`); while the agent cannot be reached,
//! changes are refused, so that none happens unaudited.
//!
//! Every form handler takes an [`AdminForm`] (session, role, form, CSRF);
//! [`user`] holds one user's page and its forms.

mod user;

use askama::Template;
use axum::Router;
use axum::extract::{Form, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use user::{access, delete, done, set_password, set_role, show};

use crate::AppState;
use crate::auth::store::{StoreError, UserInfo, UserName};
use crate::auth::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, Session, hash_password, tokens_match};
use crate::error::AppError;
use crate::handlers::{RequireSession, nav};
use crate::roles::{Permission, Role};
use crate::views::Chrome;

/// The routes of the users page.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(list).post(create))
        .route("/users/{name}", get(show))
        .route("/users/{name}/role", post(set_role))
        .route("/users/{name}/password", post(set_password))
        .route("/users/{name}/disable", post(|s, p, f| access(s, p, f, true)))
        .route("/users/{name}/enable", post(|s, p, f| access(s, p, f, false)))
        .route("/users/{name}/delete", post(delete))
}

/// A user as the pages show it.
#[derive(Debug, Clone)]
pub struct UserRow {
    /// The name.
    pub name: String,
    /// The role's name.
    pub role: &'static str,
    /// True when disabled.
    pub disabled: bool,
    /// When created, "YYYY-MM-DD HH:MM UTC".
    pub created: String,
    /// When the password was last set, same format.
    pub password_changed: String,
}

impl From<&UserInfo> for UserRow {
    fn from(u: &UserInfo) -> Self {
        UserRow {
            name: u.name.clone(),
            role: u.role.as_str(),
            disabled: u.disabled,
            created: utc(u.created_unix_ms),
            password_changed: utc(u.password_changed_unix_ms),
        }
    }
}

/// Unix milliseconds as "YYYY-MM-DD HH:MM UTC".
pub fn utc(ms: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| "unknown".into())
}

/// A role choice in a `<select>`.
#[derive(Debug, Clone)]
pub struct RoleOption {
    /// The role's name.
    pub value: &'static str,
    /// True when selected.
    pub selected: bool,
}

fn role_options(selected: &str) -> Vec<RoleOption> {
    Role::ALL
        .iter()
        .map(|r| RoleOption {
            value: r.as_str(),
            selected: r.as_str() == selected,
        })
        .collect()
}

/// Messages next to the fields of a form (empty: no problem).
#[derive(Debug, Clone, Default)]
pub struct FieldErrors {
    /// The user name.
    pub name: String,
    /// The role.
    pub role: String,
    /// The (new) password.
    pub password: String,
    /// Its confirmation.
    pub confirm: String,
}

impl FieldErrors {
    fn any(&self) -> bool {
        !(self.name.is_empty() && self.role.is_empty() && self.password.is_empty() && self.confirm.is_empty())
    }

    fn summary(&self) -> String {
        [&self.name, &self.role, &self.password, &self.confirm]
            .into_iter()
            .filter(|m| !m.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The users list with the create form.
#[derive(Debug, Template)]
#[template(path = "users.html")]
pub struct UsersPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The session's CSRF token.
    pub csrf: String,
    /// The users.
    pub users: Vec<UserRow>,
    /// The create form's name as typed.
    pub name: String,
    /// The create form's role choices.
    pub roles: Vec<RoleOption>,
    /// Field messages of the create form.
    pub errors: FieldErrors,
    /// A problem with the whole request (agent unreachable, name taken).
    pub problem: Option<String>,
    /// What the last change did.
    pub notice: Option<String>,
}

/// One user with the forms that change it.
#[derive(Debug, Template)]
#[template(path = "user.html")]
pub struct UserPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The session's CSRF token.
    pub csrf: String,
    /// The user.
    pub user: UserRow,
    /// Role choices (the user's current role, or the one submitted).
    pub roles: Vec<RoleOption>,
    /// True when this is the signed-in user.
    pub is_self: bool,
    /// Field messages of the role and password forms.
    pub errors: FieldErrors,
    /// A message for the enable/disable form.
    pub state_error: String,
    /// A message for the delete form.
    pub delete_error: String,
    /// A problem with the whole request (agent unreachable).
    pub problem: Option<String>,
    /// What the last change did.
    pub notice: Option<String>,
}

/// `?done=` after a change (only these fixed words are shown).
#[derive(Debug, Default, Deserialize)]
pub struct Done {
    #[serde(default)]
    done: String,
}

impl Done {
    fn notice(&self, name: &str) -> Option<String> {
        let what = match self.done.as_str() {
            "created" => "created",
            "deleted" => "deleted",
            "role" => "given a new role; it applies to their next request",
            "password" => "given a new password",
            "disabled" => "disabled; their sessions have ended",
            "enabled" => "enabled",
            _ => return None,
        };
        Some(format!("User {name} was {what}."))
    }
}

/// The create form.
#[derive(Debug, Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    csrf: String,
}

/// The role form.
#[derive(Debug, Deserialize)]
pub struct RoleForm {
    #[serde(default)]
    role: String,
    #[serde(default)]
    csrf: String,
}

/// The password form.
#[derive(Debug, Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    csrf: String,
}

/// Forms with only the CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// A form of the users pages: it carries the session's CSRF token.
pub trait UsersForm: DeserializeOwned + Send {
    /// The token sent.
    fn csrf(&self) -> &str;
    /// The error for a body that is not such a form.
    fn unreadable() -> AppError {
        AppError::BadRequest
    }
}

macro_rules! users_form {
    ($($form:ty),*) => {
        $(impl UsersForm for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        })*
    };
}
users_form!(CreateForm, RoleForm, PasswordForm);

impl UsersForm for CsrfOnly {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    // A button's form holds nothing but the token.
    fn unreadable() -> AppError {
        AppError::Csrf
    }
}

/// What every users form handler starts with: the session of an admin
/// ([`Permission::ManageUsers`]), the form parsed, its CSRF token checked.
pub struct AdminForm<T> {
    /// The admin's session.
    pub session: Session,
    /// The form.
    pub form: T,
}

impl<T: UsersForm> FromRequest<AppState> for AdminForm<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, AppError> {
        let (mut parts, body) = request.into_parts();
        let required = RequireSession::from_request_parts(&mut parts, state).await?;
        let session = required.require(Permission::ManageUsers)?.clone();
        let Form(form) = Form::<T>::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|_| T::unreadable())?;
        if !tokens_match(form.csrf(), &session.csrf) {
            tracing::warn!(user = %session.user, "user change refused: missing or wrong CSRF token");
            return Err(AppError::Csrf);
        }
        Ok(AdminForm { session, form })
    }
}

/// Checks a new password and its confirmation into `errors`.
fn check_password(password: &str, confirm: &str, errors: &mut FieldErrors) {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN {
        errors.password = format!("Use at least {MIN_PASSWORD_LEN} characters (this one has {n}).");
    } else if password.len() > MAX_PASSWORD_LEN {
        errors.password = format!("Use at most {MAX_PASSWORD_LEN} bytes.");
    } else if password.trim() != password {
        errors.password = "Do not start or end the password with a space.".into();
    } else if password != confirm {
        errors.confirm = "The two passwords differ: type the same password twice.".into();
    }
}

fn check_role(role: &str, errors: &mut FieldErrors) -> Option<Role> {
    match role.parse::<Role>() {
        Ok(r) => Some(r),
        Err(e) => {
            errors.role = format!("Choose admin, operator, developer or viewer (not {:?}).", e.0);
            None
        }
    }
}

/// The message shown when a change cannot be made because the agent (and
/// so the audit log) cannot be reached.
const AGENT_DOWN: &str = "The agent cannot be reached, so this change could not be recorded in the audit log and was \
                          not made. The supervisor restarts the agent; try again in a few seconds.";

/// What a change came to, for the page.
enum Outcome {
    /// Done and recorded.
    Done,
    /// Refused: the message for the page.
    Refused(String),
}

/// Makes a change: only when the agent can be reached (so that it is
/// recorded), then records it (done or refused) as `console:USER`.
async fn change(
    state: &AppState,
    session: &Session,
    action: &str,
    target: &str,
    op: impl Future<Output = Result<(), StoreError>>,
) -> Result<Outcome, AppError> {
    if let Err(e) = crate::agent::bounded("audit reachability", state.node().channel()).await {
        tracing::warn!(action, target, error = %e.summary(), "user change refused: the agent is unreachable");
        return Ok(Outcome::Refused(AGENT_DOWN.into()));
    }
    let result = op.await;
    let message = match &result {
        Ok(()) => None,
        Err(e @ (StoreError::Exists(_) | StoreError::NotFound(_) | StoreError::LastAdmin(_))) => Some(format!("{e}.")),
        Err(_) => Some("the console database failed".to_string()),
    };
    let recorded = state
        .audit(&session.user, action, target, message.as_deref().map_or(Ok(()), Err))
        .await;
    match (&result, &recorded) {
        (_, Err(e)) => {
            tracing::error!(action, target, error = %e.summary(), "user change not recorded in the audit log")
        }
        (Ok(()), Ok(())) => tracing::info!(by = %session.user, action, target, "user change done"),
        (Err(e), Ok(())) => tracing::warn!(by = %session.user, action, target, error = %e, "user change refused"),
    }
    match result {
        Err(StoreError::Exists(_) | StoreError::NotFound(_) | StoreError::LastAdmin(_)) => {
            Ok(Outcome::Refused(message.unwrap_or_default()))
        }
        Err(e) => Err(e.into()),
        Ok(()) if recorded.is_err() => Ok(Outcome::Refused(
            "The change was made, but the agent did not confirm the audit record; check the audit log.".into(),
        )),
        Ok(()) => Ok(Outcome::Done),
    }
}

/// The argon2id hash of a new password.
async fn new_hash(state: &AppState, password: &str) -> Result<String, AppError> {
    hash_password(password, state.password_params()).await.map_err(|e| {
        tracing::error!(error = %e, "cannot hash a password");
        AppError::BadRequest
    })
}

/// Records a form refused for a bad field (best effort: nothing changed).
async fn refused(state: &AppState, session: &Session, action: &str, target: &str, why: &str) {
    let _ = state.audit(&session.user, action, target, Err(why)).await;
}

async fn users_page(
    state: &AppState,
    session: &Session,
    status: StatusCode,
    form: (String, String),
    errors: FieldErrors,
    problem: Option<String>,
    notice: Option<String>,
) -> Result<Response, AppError> {
    let users = state.store().list_users().await?;
    let page = UsersPage {
        chrome: state.chrome(Some(nav(session, "users"))).await,
        csrf: session.csrf.clone(),
        users: users.iter().map(UserRow::from).collect(),
        name: form.0,
        roles: role_options(&form.1),
        errors,
        problem,
        notice,
    };
    Ok((status, Html(page.render()?)).into_response())
}

async fn list(
    State(state): State<AppState>,
    required: RequireSession,
    Query(done): Query<Done>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageUsers)?;
    let notice = match done.done.as_str() {
        "deleted" => Some("The user was deleted.".to_string()),
        _ => None,
    };
    let form = (String::new(), Role::Viewer.as_str().to_string());
    users_page(
        &state,
        session,
        StatusCode::OK,
        form,
        FieldErrors::default(),
        None,
        notice,
    )
    .await
}

async fn create(
    State(state): State<AppState>,
    AdminForm { session, form }: AdminForm<CreateForm>,
) -> Result<Response, AppError> {
    let session = &session;
    let typed: String = form.name.trim().chars().take(64).collect();
    let mut errors = FieldErrors::default();
    let name = typed.parse::<UserName>().map_err(|e| errors.name = e).ok();
    let role = check_role(&form.role, &mut errors);
    check_password(&form.password, &form.confirm, &mut errors);
    let kept = (typed.clone(), form.role.chars().take(32).collect());
    let (Some(name), Some(role), false) = (name, role, errors.any()) else {
        refused(&state, session, "console.user.create", &typed, &errors.summary()).await;
        return users_page(
            &state,
            session,
            StatusCode::UNPROCESSABLE_ENTITY,
            kept,
            errors,
            None,
            None,
        )
        .await;
    };
    let hash = new_hash(&state, &form.password).await?;
    let outcome = change(&state, session, "console.user.create", name.as_str(), async {
        state.store().create_user(&name, role, &hash).await
    })
    .await?;
    match outcome {
        Outcome::Done => Ok(done(name.as_str(), "created")),
        Outcome::Refused(msg) => {
            let mut errors = FieldErrors::default();
            let problem = if msg.contains("exists already") {
                errors.name = msg;
                None
            } else {
                Some(msg)
            };
            users_page(
                &state,
                session,
                StatusCode::UNPROCESSABLE_ENTITY,
                kept,
                errors,
                problem,
                None,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_minutes() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_795_000_000_000), "2026-11-18 11:06 UTC");
    }

    #[test]
    fn passwords_are_checked() {
        let check = |p: &str, c: &str| {
            let mut e = FieldErrors::default();
            check_password(p, c, &mut e);
            e
        };
        assert!(check("short", "short").password.contains("at least 12"));
        assert!(check(" twelve chars ok", " twelve chars ok").password.contains("space"));
        assert!(check("twelve chars ok", "twelve chars ko").confirm.contains("differ"));
        assert!(!check("twelve chars ok", "twelve chars ok").any());
    }

    #[test]
    fn notices_are_fixed_words() {
        let d = |s: &str| Done { done: s.into() };
        assert_eq!(d("created").notice("bob").as_deref(), Some("User bob was created."));
        assert_eq!(d("<script>").notice("bob"), None);
    }
}
