//! One user's page (`/users/{name}`) and its forms: role, password,
//! disable/enable, delete.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::*;

/// How the user page is shown again.
#[derive(Default)]
struct Again {
    role: Option<String>,
    errors: FieldErrors,
    state_error: String,
    delete_error: String,
    problem: Option<String>,
    notice: Option<String>,
}

async fn user_page(
    state: &AppState,
    session: &Session,
    name: &str,
    status: StatusCode,
    again: Again,
) -> Result<Response, AppError> {
    let Some(user) = state.store().user(name).await? else {
        return Err(AppError::NotFound);
    };
    let selected = again.role.unwrap_or_else(|| user.info.role.as_str().to_string());
    let page = UserPage {
        chrome: state.chrome(Some(nav(session, "users"))).await,
        csrf: session.csrf.clone(),
        is_self: user.info.name == session.user,
        user: UserRow::from(&user.info),
        roles: role_options(&selected),
        errors: again.errors,
        state_error: again.state_error,
        delete_error: again.delete_error,
        problem: again.problem,
        notice: again.notice,
    };
    Ok((status, Html(page.render()?)).into_response())
}

pub(super) async fn show(
    State(state): State<AppState>,
    required: RequireSession,
    Path(name): Path<String>,
    Query(done): Query<Done>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageUsers)?;
    let again = Again {
        notice: done.notice(&name),
        ..Again::default()
    };
    user_page(&state, session, &name, StatusCode::OK, again).await
}

/// The user of a `/users/{name}/...` route, which must exist.
async fn existing(state: &AppState, name: &str) -> Result<String, AppError> {
    match state.store().user(name).await? {
        Some(u) => Ok(u.info.name),
        None => Err(AppError::NotFound),
    }
}

pub(super) fn done(name: &str, what: &str) -> Response {
    Redirect::to(&format!("/users/{name}?done={what}")).into_response()
}

/// Which form of the user page a message belongs next to.
#[derive(Debug, Clone, Copy)]
enum Place {
    Role,
    Password,
    Access,
    Delete,
}

impl Again {
    fn at(place: Place, msg: String) -> Again {
        let mut again = Again::default();
        match place {
            Place::Role => again.errors.role = msg,
            Place::Password => again.errors.password = msg,
            Place::Access => again.state_error = msg,
            Place::Delete => again.delete_error = msg,
        }
        again
    }
}

/// Shows the user page again (422) after a refused form.
async fn again(state: &AppState, session: &Session, name: &str, again: Again) -> Result<Response, AppError> {
    user_page(state, session, name, StatusCode::UNPROCESSABLE_ENTITY, again).await
}

/// The end of a change: `ok` when done, else the page with the message at
/// `place`.
async fn finish(
    state: &AppState,
    session: &Session,
    name: &str,
    outcome: Outcome,
    ok: Response,
    place: Place,
) -> Result<Response, AppError> {
    match outcome {
        Outcome::Done => Ok(ok),
        Outcome::Refused(msg) => again(state, session, name, Again::at(place, msg)).await,
    }
}

/// Refuses (and records) `action` of an admin on their own account.
async fn not_yourself(
    state: &AppState,
    session: &Session,
    action: &str,
    place: Place,
    msg: &str,
) -> Result<Response, AppError> {
    refused(state, session, action, &session.user, msg).await;
    again(state, session, &session.user, Again::at(place, msg.to_string())).await
}

pub(super) async fn set_role(
    State(state): State<AppState>,
    Path(name): Path<String>,
    AdminForm { session, form }: AdminForm<RoleForm>,
) -> Result<Response, AppError> {
    let session = &session;
    let name = existing(&state, &name).await?;
    let action = "console.user.role";
    let mut errors = FieldErrors::default();
    let Some(role) = check_role(&form.role, &mut errors) else {
        refused(&state, session, action, &name, &errors.summary()).await;
        let shown = Again {
            role: Some(form.role.chars().take(32).collect()),
            errors,
            ..Again::default()
        };
        return again(&state, session, &name, shown).await;
    };
    let outcome = change(&state, session, action, &name, state.store().set_role(&name, role)).await?;
    finish(&state, session, &name, outcome, done(&name, "role"), Place::Role).await
}

pub(super) async fn set_password(
    State(state): State<AppState>,
    Path(name): Path<String>,
    AdminForm { session, form }: AdminForm<PasswordForm>,
) -> Result<Response, AppError> {
    let session = &session;
    let name = existing(&state, &name).await?;
    let action = "console.user.password";
    let mut errors = FieldErrors::default();
    check_password(&form.password, &form.confirm, &mut errors);
    if errors.any() {
        refused(&state, session, action, &name, &errors.summary()).await;
        let shown = Again {
            errors,
            ..Again::default()
        };
        return again(&state, session, &name, shown).await;
    }
    let hash = new_hash(&state, &form.password).await?;
    // Other browsers of the user must sign in with the new password.
    let op = async {
        state.store().set_password(&name, &hash).await?;
        state.store().end_sessions(&name, Some(&session.id)).await.map(drop)
    };
    let outcome = change(&state, session, action, &name, op).await?;
    finish(
        &state,
        session,
        &name,
        outcome,
        done(&name, "password"),
        Place::Password,
    )
    .await
}

/// Disables or enables a user.
pub(super) async fn access(
    State(state): State<AppState>,
    Path(name): Path<String>,
    AdminForm { session, form: _ }: AdminForm<CsrfOnly>,
    disable: bool,
) -> Result<Response, AppError> {
    let session = &session;
    let name = existing(&state, &name).await?;
    let (action, word) = if disable {
        ("console.user.disable", "disabled")
    } else {
        ("console.user.enable", "enabled")
    };
    if disable && name == session.user {
        let msg = "You cannot disable yourself: ask another admin.";
        return not_yourself(&state, session, action, Place::Access, msg).await;
    }
    let op = state.store().set_disabled(&name, disable);
    let outcome = change(&state, session, action, &name, op).await?;
    finish(&state, session, &name, outcome, done(&name, word), Place::Access).await
}

pub(super) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    AdminForm { session, form: _ }: AdminForm<CsrfOnly>,
) -> Result<Response, AppError> {
    let session = &session;
    let name = existing(&state, &name).await?;
    let action = "console.user.delete";
    if name == session.user {
        let msg = "You cannot delete yourself: ask another admin.";
        return not_yourself(&state, session, action, Place::Delete, msg).await;
    }
    let outcome = change(&state, session, action, &name, state.store().delete_user(&name)).await?;
    let ok = Redirect::to("/users?done=deleted").into_response();
    finish(&state, session, &name, outcome, ok, Place::Delete).await
}
