//! The console's integration tests, one test binary (linking the console
//! and its dependencies once instead of once per file): the router against
//! a real agent peer on a Unix socket, each page, and the HTTPS listener.

mod audit_page;
mod console;
mod dashboard;
mod health_page;
mod provisioning;
mod services;
mod settings;
mod support;
mod tls;
mod updates;
mod users;
mod vm_console;
mod vms;
