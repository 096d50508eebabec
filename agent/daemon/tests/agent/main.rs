//! The agent end to end (its services on a temporary Unix socket and over
//! mutual TLS, with fake host facilities and test doubles of its peers), as
//! one test binary.

mod health;
mod transports;
mod update;
