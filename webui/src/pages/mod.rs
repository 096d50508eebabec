//! The console's pages beyond sign-in and status, one module each. Every
//! module exposes `routes()`; handlers check the role with
//! [`crate::handlers::RequireSession::require`] before anything else.

use axum::Router;

use crate::AppState;

/// The routes of all pages.
pub fn routes() -> Router<AppState> {
    Router::new()
}
