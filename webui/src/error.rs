//! The one mapping from errors to what a browser gets.
//!
//! [`AppError`] turns into a status code and an [`ErrorInfo`] (a title and a
//! sentence for people) carried in the response's extensions. The
//! `friendly_errors` middleware in [`crate::handlers`] renders that into the
//! site's error page, with the node's name in the header; it also dresses
//! up bare error responses from the framework (wrong method, bad form). No
//! internal detail ever reaches a page: it goes to the log.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No route matches.
    #[error("Page not found")]
    NotFound,
    /// The page needs a signed-in session.
    #[error("Sign-in required")]
    LoginRequired,
    /// A POST came without the right CSRF token.
    #[error("Missing or wrong CSRF token")]
    Csrf,
    /// The request could not be understood (for example a malformed form).
    #[error("Malformed request")]
    BadRequest,
    /// A WebSocket was opened from a page of another origin (its `Origin`
    /// is not the console's own host): a cross-site hijack attempt, or a
    /// proxy that rewrites `Host`.
    #[error("Cross-origin WebSocket refused")]
    CrossOrigin,
    /// The signed-in user's role does not hold the permission the route
    /// needs.
    #[error("Not allowed for role {role}: needs {permission:?}")]
    Forbidden {
        /// The user's role.
        role: crate::roles::Role,
        /// What the route needs.
        permission: crate::roles::Permission,
    },
    /// A page failed to render.
    #[error("Cannot render the page")]
    Render(#[from] askama::Error),
    /// The signed-in user sent more requests than the per-user rate allows.
    #[error("Too many requests")]
    TooManyRequests {
        /// How long until the next request is allowed.
        retry_after: std::time::Duration,
    },
    /// The console database failed (detail goes to the log only).
    #[error(transparent)]
    Store(#[from] crate::auth::store::StoreError),
}

/// What the error page says; put into the response extensions by
/// [`AppError`] and read by the error-page middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    /// A short title.
    pub title: &'static str,
    /// One or two sentences for the user.
    pub message: &'static str,
}

impl ErrorInfo {
    /// The default wording for an error status without more context.
    pub fn for_status(status: StatusCode) -> Self {
        let (title, message) = match status {
            StatusCode::NOT_FOUND => ("Page not found", "There is no page at this address."),
            StatusCode::FORBIDDEN => (
                "Request refused",
                "The form was stale or did not come from this console. Go back, reload the page and try again.",
            ),
            StatusCode::METHOD_NOT_ALLOWED => ("Not allowed", "This page cannot be used that way."),
            StatusCode::PAYLOAD_TOO_LARGE => ("Request too large", "The form sent more data than the console accepts."),
            StatusCode::TOO_MANY_REQUESTS => (
                "Too many requests",
                "You sent more requests than the console allows (10 a second per user). \
                 Wait a few seconds, then reload the page; close other tabs or scripts that reload it quickly.",
            ),
            s if s.is_client_error() => ("Bad request", "The console could not understand the request."),
            _ => (
                "Something went wrong",
                "The console could not complete the request. Try again; if it keeps happening, check the node's journal.",
            ),
        };
        ErrorInfo { title, message }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::LoginRequired => return Redirect::to("/login").into_response(),
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::Csrf => StatusCode::FORBIDDEN,
            AppError::BadRequest => StatusCode::BAD_REQUEST,
            AppError::CrossOrigin => {
                tracing::warn!("refused: a WebSocket from another origin");
                return explained(
                    StatusCode::FORBIDDEN,
                    ErrorInfo {
                        title: "Request refused",
                        message: "The console's live connections may only be opened by its own pages.",
                    },
                );
            }
            AppError::Forbidden { role, permission } => {
                tracing::warn!(%role, ?permission, "refused: the role does not allow this");
                return explained(
                    StatusCode::FORBIDDEN,
                    ErrorInfo {
                        title: "Not allowed",
                        message: "Your role does not allow this. Ask an administrator if you need it.",
                    },
                );
            }
            AppError::Render(e) => {
                tracing::error!(error = %e, "page rendering failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            AppError::Store(e) => {
                let chain: Vec<String> = std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
                    .map(ToString::to_string)
                    .collect();
                tracing::error!(error = %chain.join(": "), "console database failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            AppError::TooManyRequests { retry_after } => {
                let info = ErrorInfo::for_status(StatusCode::TOO_MANY_REQUESTS);
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    [
                        (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
                        (header::RETRY_AFTER, secs.to_string()),
                    ],
                    format!("{}: {}", info.title, info.message),
                )
                    .into_response();
                response.extensions_mut().insert(info);
                return response;
            }
        };
        explained(status, ErrorInfo::for_status(status))
    }
}

/// A plain-text `status` response saying `info`, which the error-page
/// middleware turns into the site's page.
fn explained(status: StatusCode, info: ErrorInfo) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}: {}", info.title, info.message),
    )
        .into_response();
    response.extensions_mut().insert(info);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses_and_wording() {
        let r = AppError::LoginRequired.into_response();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/login");
        let r = AppError::Csrf.into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.extensions().get::<ErrorInfo>().unwrap().title, "Request refused");
        assert_eq!(AppError::NotFound.into_response().status(), StatusCode::NOT_FOUND);
        let r = AppError::CrossOrigin.into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.extensions().get::<ErrorInfo>().unwrap().message.contains("own pages"));
        let r = AppError::TooManyRequests {
            retry_after: std::time::Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.extensions().get::<ErrorInfo>().unwrap().title, "Too many requests");
        assert_eq!(
            ErrorInfo::for_status(StatusCode::BAD_GATEWAY).title,
            "Something went wrong"
        );
    }
}
