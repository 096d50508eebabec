//! The DebVisor node console: a server-rendered web UI over HTTPS.
//!
//! The console shows what the local agent reports (it never reads the host
//! itself) and authenticates the node's administrator. The pieces:
//!
//! - [`agent`]: the [`agent::NodeSource`] trait and its gRPC implementation
//!   over the agent's Unix socket;
//! - [`auth`]: the admin credential, server-side sessions, CSRF tokens and
//!   login throttling;
//! - [`handlers`]: the axum router, the pages and the security headers;
//! - [`roles`]: the roles and the one table of what each may do;
//! - [`pages`]: the pages beyond sign-in and status, one module each;
//! - [`views`]: askama templates and formatting helpers;
//! - [`live`]: the dashboard's sampler, history and live updates;
//! - [`charts`]: SVG line and area charts rendered on the server;
//! - [`assets`]: the vendored front-end files (htmx, xterm.js) embedded at
//!   build time;
//! - [`flash`]: one-shot messages for a session's next page;
//! - [`error`]: the one mapping from errors to friendly pages;
//! - [`tls`]: the rustls configuration and the HTTPS accept loop;
//! - [`redirect`]: the plain-HTTP listener that sends browsers to HTTPS;
//! - [`fakes`]: an adjustable clock and a fixed node source for tests.

#![warn(missing_docs)]

pub mod agent;
pub mod assets;
pub mod auth;
pub mod charts;
pub mod error;
pub mod fakes;
pub mod flash;
pub mod handlers;
pub mod live;
pub mod pages;
pub mod redirect;
pub mod roles;
pub mod tls;
pub mod views;

pub use handlers::{AppState, router};
