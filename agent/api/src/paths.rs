//! Well-known paths and ports on a DebVisor node.
//!
//! The image builder, the units in `recipes/`, the supervisor, the agent and
//! the console all agree on these; change them here and nowhere else.

/// The agent's Unix socket (local API, authorised by peer credentials).
pub const AGENT_SOCKET: &str = "/run/debvisor/agent.sock";
/// debvisor-vmd's Unix socket (serves `debvisor.vm.v1` over libvirt; root
/// only). The agent forwards VM calls there after checking and auditing them.
pub const VMD_SOCKET: &str = "/run/debvisor/vmd.sock";
/// debvisor-vmd's configuration (libvirt URI, storage pool, NAT network).
pub const VMD_CONFIG: &str = "/etc/debvisor/vmd.toml";
/// debvisor-init's Unix socket (serves `debvisor.health.v1`; root only).
/// The agent forwards health calls there.
pub const INIT_SOCKET: &str = "/run/debvisor/init.sock";
/// Local address of debvisor-init's Prometheus endpoint (health metrics).
pub const INIT_METRICS: &str = "127.0.0.1:9465";
/// The machine config in effect, on the data partition.
pub const MACHINE_CONFIG: &str = "/var/lib/debvisor/machine.toml";
/// The last machine config that was valid and applied.
pub const MACHINE_CONFIG_LAST_GOOD: &str = "/var/lib/debvisor/machine.last-good.toml";
/// Filesystem label of a config medium (a USB stick or a second disk)
/// carrying `machine.toml` at its root.
pub const CONFIG_MEDIUM_LABEL: &str = "DEBVISORCFG";
/// TCP port of the agent's TLS gRPC endpoint.
pub const AGENT_TLS_PORT: u16 = 7443;
/// TCP port of the console's HTTPS endpoint.
pub const CONSOLE_HTTPS_PORT: u16 = 443;
/// TCP port on which the console redirects plain HTTP to HTTPS.
pub const CONSOLE_HTTP_PORT: u16 = 80;
/// Persistent DebVisor state (on the data partition through /var).
pub const STATE_DIR: &str = "/var/lib/debvisor";
/// The node's PKI: CA and server certificate, created on first boot.
pub const PKI_DIR: &str = "/var/lib/debvisor/pki";
/// The node CA certificate (PEM).
pub const CA_CERT: &str = "/var/lib/debvisor/pki/ca.pem";
/// The node server certificate (PEM), used by the agent and the console.
pub const SERVER_CERT: &str = "/var/lib/debvisor/pki/server.pem";
/// The node server key (PEM, mode 0600).
pub const SERVER_KEY: &str = "/var/lib/debvisor/pki/server.key";
/// The console's admin credential: an argon2id PHC string (mode 0600).
pub const ADMIN_PASSWORD_HASH: &str = "/var/lib/debvisor/console/admin.argon2";
/// Where the data partition is mounted by the initramfs.
pub const DATA_MOUNT: &str = "/data";
/// Marker line prefix written to the serial console by debvisor-init.
/// The lab and the system tests parse these lines.
pub const CONSOLE_MARKER: &str = "DEBVISOR:";
