//! The DebVisor supervisor's parts: first-boot PKI and credentials, unit
//! supervision over systemd's D-Bus API, health checks with remediation,
//! alerts, the boot gate, readiness probes and serial console markers.

pub mod alerts;
pub mod console;
pub mod credentials;
pub mod gate;
pub mod health;
pub mod machine;
pub mod manager;
pub mod pki;
pub mod probe;
pub mod supervise;
