//! Sign-in (`GET`/`POST /login`, a double-submit CSRF cookie, throttled per
//! user and per address) and sign-out (`POST /logout`), both audited.

use super::*;

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
pub(super) fn login_csrf(headers: &HeaderMap) -> String {
    cookie(headers, CSRF_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(random_token)
}

pub(super) async fn login_form(
    State(state): State<AppState>,
    MaybeSession(session): MaybeSession,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    if session.is_some() {
        return Ok(Redirect::to(HOME).into_response());
    }
    login_page(&state, StatusCode::OK, login_csrf(&headers), String::new(), None).await
}

pub(super) async fn login(
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

pub(super) async fn logout(
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
    state.flashes().forget(&session);
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
