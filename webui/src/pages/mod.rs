//! The console's pages beyond sign-in and status, one module each. Every
//! module exposes `routes()`; handlers check the role with
//! [`crate::handlers::RequireSession::require`] before anything else.

pub mod about;
pub mod audit;
pub mod dashboard;
pub mod health;
pub mod provisioning;
pub mod services;
pub mod settings;
pub mod updates;
pub mod users;
pub mod vms;

use axum::Router;

use crate::AppState;

/// The routes of all pages.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(dashboard::routes())
        .merge(about::routes())
        .merge(services::routes())
        .merge(health::routes())
        .merge(audit::routes())
        .merge(settings::routes())
        .merge(users::routes())
        .merge(updates::routes())
        .merge(provisioning::routes())
        .merge(vms::routes())
}
