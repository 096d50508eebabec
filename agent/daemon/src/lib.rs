//! The DebVisor node agent: the one door to a node.
//!
//! Serves the `debvisor.*.v1` gRPC services over a Unix socket (authorised by
//! peer credentials) and over TCP with TLS. Host facilities sit behind traits
//! ([`host::HostFacts`]) with a production implementation and fakes for tests
//! and `--sim`.

pub mod auth;
pub mod fakes;
pub mod host;
pub mod server;
pub mod service;
