//! The VM daemon's configuration, `/etc/debvisor/vmd.toml`: which libvirt,
//! which storage pool and NAT network, which domain type. Every key is
//! optional; a missing file means the defaults.

use std::path::Path;

use debvisor_virt::LibvirtOptions;
use serde::Deserialize;

/// Where the node's VMs live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmdConfig {
    /// The libvirt URI.
    pub uri: String,
    /// The libvirt storage pool for disks, images and ISOs (on the data
    /// partition).
    pub pool: String,
    /// libvirt's NAT network.
    pub nat_network: String,
    /// The QEMU domain type: `kvm`, or `qemu` (TCG) where KVM is missing or
    /// unusable.
    pub domain_type: String,
}

impl Default for VmdConfig {
    fn default() -> Self {
        Self {
            uri: "qemu:///system".into(),
            pool: "debvisor".into(),
            nat_network: "default".into(),
            domain_type: "kvm".into(),
        }
    }
}

impl VmdConfig {
    /// Reads `path`; a missing file means the defaults. The error names the
    /// file and the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow::anyhow!("Cannot read {}: {e}", path.display())),
        }
    }

    /// Parses the text of `path`.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let c: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for (key, value) in [
            ("uri", &c.uri),
            ("pool", &c.pool),
            ("nat_network", &c.nat_network),
            ("domain_type", &c.domain_type),
        ] {
            if value.trim().is_empty() {
                anyhow::bail!("{}: {key} is empty; leave it out for the default", path.display());
            }
        }
        if !matches!(c.domain_type.as_str(), "kvm" | "qemu") {
            anyhow::bail!(
                "{}: domain_type = {:?}: give \"kvm\", or \"qemu\" where KVM is missing",
                path.display(),
                c.domain_type
            );
        }
        Ok(c)
    }

    /// The libvirt options; with `sim`, libvirt's test driver: the test
    /// host the config names (`uri = "test:///FILE"`, benchmarks and
    /// tests), else `test:///default` with its `default-pool` and `default`
    /// network. A simulated daemon never reaches a real hypervisor.
    pub fn options(&self, sim: bool) -> LibvirtOptions {
        if sim && !self.uri.starts_with("test://") {
            return LibvirtOptions {
                uri: "test:///default".into(),
                pool: "default-pool".into(),
                nat_network: "default".into(),
                qemu_domain_type: "qemu".into(),
            };
        }
        LibvirtOptions {
            uri: self.uri.clone(),
            pool: self.pool.clone(),
            nat_network: self.nat_network.clone(),
            qemu_domain_type: self.domain_type.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_daemon_uses_the_test_driver_only() {
        let real = VmdConfig::default();
        assert_eq!(real.options(false).uri, "qemu:///system");
        assert_eq!(real.options(true).uri, "test:///default");
        assert_eq!(real.options(true).pool, "default-pool");
        let host = VmdConfig {
            uri: "test:///tmp/node.xml".into(),
            pool: "vms".into(),
            ..VmdConfig::default()
        };
        assert_eq!(
            (host.options(true).uri.as_str(), host.options(true).pool.as_str()),
            ("test:///tmp/node.xml", "vms")
        );
    }

    #[test]
    fn keys_are_read_and_checked() {
        let p = Path::new("vmd.toml");
        let c = VmdConfig::parse("pool = \"vms\"\ndomain_type = \"qemu\"\n", p).unwrap();
        assert_eq!((c.pool.as_str(), c.uri.as_str()), ("vms", "qemu:///system"));
        assert!(VmdConfig::load(Path::new("/nonexistent/vmd.toml")).is_ok());
        for (text, names) in [
            ("colour = 1\n", "colour"),
            ("pool = \" \"\n", "pool is empty"),
            ("domain_type = \"xen\"\n", "domain_type = \"xen\""),
        ] {
            let e = VmdConfig::parse(text, p).unwrap_err().to_string();
            assert!(e.contains(names) && e.contains("vmd.toml"), "{text}: {e}");
        }
    }
}
