//! The PXE provisioner: a DHCPv4 server (or proxyDHCP beside a site's
//! server) that hands network-booting firmware the iPXE chain, a read-only
//! TFTP server for the iPXE binaries, and leases kept in SQLite.
//!
//! The controller role runs it inside the agent; `debvisor-provision serve`
//! runs it on its own for labs.

pub mod config;
pub mod dhcp;
pub mod http;
pub mod metrics;
pub mod profiles;
pub mod server;
pub mod store;
pub mod tftp;
pub mod wire;

pub use config::{Config, ConfigError, Mac, Mode};
pub use metrics::Metrics;
pub use server::Provisioner;
