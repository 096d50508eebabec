//! What the update service works on: RAUC (real or fake), the directory
//! that holds bundles while they are installed, limits, and the HTTP client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use debvisor_rauc::fakes::{FakeRauc, FakeVerifier};
use debvisor_rauc::{BundleVerifier, LazyRauc, Rauc, RaucInfoVerifier};

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
    /// Checks a stored bundle completely (signature, manifest, verity root
    /// hash of the payload) before RAUC is asked to install it.
    pub verifier: Arc<dyn BundleVerifier>,
    /// Where downloads and uploads are stored until RAUC has installed them.
    pub dir: PathBuf,
    /// The largest bundle accepted, in bytes.
    pub max_bundle_bytes: u64,
    /// True in simulation mode (a fake RAUC).
    pub simulated: bool,
    /// The client that fetches bundle URLs.
    pub http: reqwest::Client,
    /// Removes `dir` when the last clone is dropped (simulation mode's
    /// private directory).
    owned_dir: Option<Arc<RemoveOnDrop>>,
}

/// Deletes a directory tree when dropped.
#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), "cannot delete the simulated updates directory: {e}");
        }
    }
}

impl UpdateBackend {
    /// The node's RAUC on the system bus (connected on first use) and
    /// [`UPDATES_DIR`].
    pub fn production() -> Self {
        Self {
            rauc: Arc::new(LazyRauc::default()),
            verifier: Arc::new(RaucInfoVerifier::default()),
            dir: PathBuf::from(UPDATES_DIR),
            max_bundle_bytes: MAX_BUNDLE_BYTES,
            simulated: false,
            http: http_client(Path::new(debvisor_api::tls::SYSTEM_CA_BUNDLE)),
            owned_dir: None,
        }
    }

    /// A fake RAUC (install steps 150 ms apart, so that progress can be
    /// watched) and a [`FakeVerifier`] storing bundles in `dir`, which is
    /// this agent's own: it is deleted when the service is dropped (the
    /// agent exits).
    pub fn simulated(dir: PathBuf) -> Self {
        let mut b = Self::with_rauc(
            Arc::new(FakeRauc::new(SIM_COMPATIBLE).with_step(Duration::from_millis(150))),
            dir.clone(),
            true,
        );
        b.verifier = Arc::new(FakeVerifier::default().with_step(Duration::from_millis(150)));
        b.owned_dir = Some(Arc::new(RemoveOnDrop(dir)));
        b
    }

    /// `rauc` and a [`FakeVerifier`] storing bundles in `dir` (tests).
    pub fn with_rauc(rauc: Arc<dyn Rauc>, dir: PathBuf, simulated: bool) -> Self {
        Self {
            rauc,
            verifier: Arc::new(FakeVerifier::default()),
            owned_dir: None,
            dir,
            max_bundle_bytes: MAX_BUNDLE_BYTES,
            simulated,
            http: http_client(Path::new(debvisor_api::tls::SYSTEM_CA_BUNDLE)),
        }
    }
}

impl UpdateBackend {
    /// The same with `verifier` checking bundles (tests).
    pub fn with_verifier(mut self, verifier: Arc<dyn BundleVerifier>) -> Self {
        self.verifier = verifier;
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_directory_goes_with_the_last_clone() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("debvisor-sim-updates-test");
        let b = UpdateBackend::simulated(dir.clone());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("install-1.raucb"), b"x").unwrap();
        let copy = b.clone();
        drop(b);
        assert!(dir.is_dir(), "a clone still uses it");
        drop(copy);
        assert!(!dir.exists(), "deleted with the last clone");
        // A test's directory (with_rauc) is left alone.
        std::fs::create_dir_all(&dir).unwrap();
        drop(UpdateBackend::with_rauc(
            Arc::new(FakeRauc::new("c")),
            dir.clone(),
            true,
        ));
        assert!(dir.is_dir());
    }
}
