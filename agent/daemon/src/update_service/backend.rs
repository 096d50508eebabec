//! What the update service works on: RAUC (real or fake), the directory
//! that holds bundles while they are installed, limits, and the HTTP client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use debvisor_rauc::fakes::FakeRauc;
use debvisor_rauc::{LazyRauc, Rauc};

/// Where bundles are stored on a node while they are installed (on the data
/// partition).
pub const UPDATES_DIR: &str = "/var/lib/debvisor/updates";
/// The largest bundle accepted: 4 GiB.
pub const MAX_BUNDLE_BYTES: u64 = 4 << 30;
/// Free space left on the data partition after a bundle is stored.
pub const SPACE_MARGIN_BYTES: u64 = 64 << 20;
/// The compatible string of a simulated node.
pub const SIM_COMPATIBLE: &str = "debvisor-node-x86_64";

/// The update service's facilities.
#[derive(Clone)]
pub struct UpdateBackend {
    /// RAUC.
    pub rauc: Arc<dyn Rauc>,
    /// Where downloads and uploads are stored until RAUC has installed them.
    pub dir: PathBuf,
    /// The largest bundle accepted, in bytes.
    pub max_bundle_bytes: u64,
    /// True in simulation mode (a fake RAUC).
    pub simulated: bool,
    /// The client that fetches bundle URLs.
    pub http: reqwest::Client,
}

impl UpdateBackend {
    /// The node's RAUC on the system bus (connected on first use) and
    /// [`UPDATES_DIR`].
    pub fn production() -> Self {
        Self {
            rauc: Arc::new(LazyRauc::default()),
            dir: PathBuf::from(UPDATES_DIR),
            max_bundle_bytes: MAX_BUNDLE_BYTES,
            simulated: false,
            http: http_client(Path::new(debvisor_api::tls::SYSTEM_CA_BUNDLE)),
        }
    }

    /// A fake RAUC (install steps 150 ms apart, so that progress can be
    /// watched) storing bundles in `dir`.
    pub fn simulated(dir: PathBuf) -> Self {
        Self::with_rauc(
            Arc::new(FakeRauc::new(SIM_COMPATIBLE).with_step(Duration::from_millis(150))),
            dir,
            true,
        )
    }

    /// `rauc` storing bundles in `dir` (tests).
    pub fn with_rauc(rauc: Arc<dyn Rauc>, dir: PathBuf, simulated: bool) -> Self {
        Self {
            rauc,
            dir,
            max_bundle_bytes: MAX_BUNDLE_BYTES,
            simulated,
            http: http_client(Path::new(debvisor_api::tls::SYSTEM_CA_BUNDLE)),
        }
    }
}

/// An HTTP client for bundle downloads: rustls with ring trusting
/// `ca_bundle`, 15 s to connect, 60 s without data at most, 10 redirects.
pub fn http_client(ca_bundle: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(debvisor_api::tls::public_client_config(ca_bundle))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("debvisor-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}
