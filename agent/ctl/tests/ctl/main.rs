//! debvisorctl against real agents (in-process servers with fake host
//! facilities) over the Unix socket and mutual TLS, as one test binary.

mod cli;
mod common;
mod health;
mod mtls;
mod update;
mod vm;
