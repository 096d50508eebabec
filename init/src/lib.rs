//! The DebVisor supervisor's parts: first-boot PKI and credentials, systemd
//! over D-Bus, readiness probes and serial console markers.

pub mod console;
pub mod credentials;
pub mod pki;
pub mod probe;
pub mod systemd;
