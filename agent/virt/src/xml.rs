//! libvirt XML, written by a typed builder: element and attribute names are
//! constants of this module, every value goes through [`escape`], so no
//! user string can add an element or end one.

use std::fmt::Write as _;

use crate::spec::{BootDevice, Firmware, NetworkKind, NicSpec, SnapshotName, VmSpec, default_boot};

/// Escapes `v` for an attribute value or text node.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// An XML document under construction.
#[derive(Default)]
pub struct Xml {
    out: String,
    open: Vec<&'static str>,
}

impl Xml {
    fn indent(&mut self) {
        for _ in 0..self.open.len() {
            self.out.push_str("  ");
        }
    }

    fn start(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) {
        self.indent();
        self.out.push('<');
        self.out.push_str(tag);
        for (k, v) in attrs {
            let _ = write!(self.out, " {k}=\"{}\"", escape(v));
        }
    }

    /// `<tag attrs>`; children follow until [`Xml::close`].
    pub fn open(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) -> &mut Self {
        self.start(tag, attrs);
        self.out.push_str(">\n");
        self.open.push(tag);
        self
    }

    /// `<tag attrs/>`.
    pub fn empty(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) -> &mut Self {
        self.start(tag, attrs);
        self.out.push_str("/>\n");
        self
    }

    /// `<tag attrs>text</tag>`.
    pub fn text(&mut self, tag: &'static str, attrs: &[(&'static str, &str)], text: &str) -> &mut Self {
        self.start(tag, attrs);
        let _ = writeln!(self.out, ">{}</{tag}>", escape(text));
        self
    }

    /// Closes the innermost open element.
    pub fn close(&mut self) -> &mut Self {
        if let Some(tag) = self.open.pop() {
            self.indent();
            let _ = writeln!(self.out, "</{tag}>");
        }
        self
    }

    /// The document, every element closed.
    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.close();
        }
        self.out
    }
}

/// A disk as the domain sees it: a file of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedDisk {
    /// The volume's path (from libvirt's pool, never from a request).
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: String,
    /// A CD-ROM (read-only, SATA) rather than a virtio disk.
    pub cdrom: bool,
}

/// What the host decides about a domain beyond the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainHost {
    /// libvirt's domain type: `kvm`, `qemu` (TCG) or `test`.
    pub domain_type: String,
    /// The emulator binary, if the driver needs one named.
    pub emulator: Option<String>,
    /// libvirt's NAT network for [`NetworkKind::Nat`].
    pub nat_network: String,
}

/// The guest's disk device name: `vda`... for disks, `sda`... for CD-ROMs.
fn target(prefix: &str, n: usize) -> String {
    // 16 disks at most: one letter is enough.
    format!("{prefix}{}", char::from(b'a' + n as u8))
}

/// The domain XML of `spec` with its disks resolved to `disks` (same order;
/// `spec.disks` is not read). Without a boot order in the spec: disk,
/// CD-ROM, network, for those it has.
pub fn domain(spec: &VmSpec, disks: &[AttachedDisk], host: &DomainHost) -> String {
    let order = if spec.boot.is_empty() {
        default_boot(
            disks.iter().any(|d| !d.cdrom),
            disks.iter().any(|d| d.cdrom),
            !spec.nics.is_empty(),
        )
    } else {
        spec.boot.clone()
    };
    let mut x = Xml::default();
    x.open("domain", &[("type", &host.domain_type)]);
    x.text("name", &[], spec.name.as_str());
    x.text("description", &[], "Created by DebVisor");
    x.text("memory", &[("unit", "MiB")], &spec.memory_mib.to_string());
    x.text("currentMemory", &[("unit", "MiB")], &spec.memory_mib.to_string());
    x.text("vcpu", &[("placement", "static")], &spec.vcpus.to_string());
    match spec.firmware {
        Firmware::Bios => x.open("os", &[]),
        Firmware::Uefi => x.open("os", &[("firmware", "efi")]),
    };
    x.text("type", &[("arch", "x86_64"), ("machine", "q35")], "hvm");
    for b in order {
        x.empty("boot", &[("dev", b.libvirt())]);
    }
    x.close();
    x.open("features", &[]).empty("acpi", &[]).empty("apic", &[]).close();
    x.empty("clock", &[("offset", "utc")]);
    x.text("on_poweroff", &[], "destroy");
    x.text("on_reboot", &[], "restart");
    x.text("on_crash", &[], "destroy");
    x.open("devices", &[]);
    if let Some(e) = &host.emulator {
        x.text("emulator", &[], e);
    }
    let (mut vd, mut sd) = (0, 0);
    for d in disks {
        if d.cdrom {
            x.open("disk", &[("type", "file"), ("device", "cdrom")]);
            x.empty("driver", &[("name", "qemu"), ("type", "raw")]);
            x.empty("source", &[("file", &d.path)]);
            x.empty("target", &[("dev", &target("sd", sd)), ("bus", "sata")]);
            x.empty("readonly", &[]);
            sd += 1;
        } else {
            x.open("disk", &[("type", "file"), ("device", "disk")]);
            x.empty("driver", &[("name", "qemu"), ("type", &d.format)]);
            x.empty("source", &[("file", &d.path)]);
            x.empty("target", &[("dev", &target("vd", vd)), ("bus", "virtio")]);
            vd += 1;
        }
        x.close();
    }
    for n in &spec.nics {
        nic(&mut x, n, host);
    }
    // The serial console the agent streams, and a VNC display on loopback
    // that only the agent's WebSocket proxy reaches.
    x.open("serial", &[("type", "pty")])
        .empty("target", &[("port", "0")])
        .close();
    x.open("console", &[("type", "pty")])
        .empty("target", &[("type", "serial"), ("port", "0")])
        .close();
    x.empty(
        "graphics",
        &[
            ("type", "vnc"),
            ("port", "-1"),
            ("autoport", "yes"),
            ("listen", "127.0.0.1"),
        ],
    );
    x.finish()
}

fn nic(x: &mut Xml, n: &NicSpec, host: &DomainHost) {
    match &n.network {
        NetworkKind::Nat => {
            x.open("interface", &[("type", "network")]);
            x.empty("source", &[("network", &host.nat_network)]);
        }
        NetworkKind::Bridge(br) => {
            x.open("interface", &[("type", "bridge")]);
            x.empty("source", &[("bridge", br.as_str())]);
        }
    }
    if let Some(mac) = n.mac {
        x.empty("mac", &[("address", &mac.to_string())]);
    }
    x.empty("model", &[("type", "virtio")]);
    x.close();
}

/// The XML of a new qcow2 volume of `size_mib` MiB.
pub fn volume(name: &str, size_mib: u64) -> String {
    let mut x = Xml::default();
    x.open("volume", &[]);
    x.text("name", &[], name);
    x.text("capacity", &[("unit", "MiB")], &size_mib.to_string());
    x.open("target", &[]).empty("format", &[("type", "qcow2")]).close();
    x.finish()
}

/// The XML of a snapshot named `name`.
pub fn snapshot(name: &SnapshotName, description: &str) -> String {
    let mut x = Xml::default();
    x.open("domainsnapshot", &[]);
    x.text("name", &[], name.as_str());
    if !description.is_empty() {
        x.text("description", &[], description);
    }
    x.finish()
}

/// The devices a boot order names, for messages.
pub fn boot_words(order: &[BootDevice]) -> String {
    order.iter().map(|b| b.libvirt()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{BridgeName, DiskSource, DiskSpec, MacAddr, VmName, VolumeName};

    fn host() -> DomainHost {
        DomainHost {
            domain_type: "qemu".into(),
            emulator: None,
            nat_network: "default".into(),
        }
    }

    #[test]
    fn values_cannot_break_out_of_their_attribute_or_text() {
        let mut x = Xml::default();
        x.text("description", &[("a", "\"/><evil x=\"")], "</description><devices>");
        let out = x.finish();
        assert_eq!(
            out,
            "<description a=\"&quot;/&gt;&lt;evil x=&quot;\">&lt;/description&gt;&lt;devices&gt;</description>\n"
        );
    }

    #[test]
    fn a_spec_becomes_its_domain() {
        let spec = VmSpec {
            name: VmName::try_from("web-1").unwrap(),
            vcpus: 2,
            memory_mib: 768,
            firmware: Firmware::Uefi,
            disks: vec![
                DiskSpec {
                    source: DiskSource::New { size_mib: 1024 },
                },
                DiskSpec {
                    source: DiskSource::Iso {
                        volume: VolumeName::try_from("debian.iso").unwrap(),
                    },
                },
            ],
            nics: vec![
                NicSpec {
                    network: NetworkKind::Nat,
                    vlan: None,
                    mac: Some(MacAddr::try_from("52:54:00:00:00:07").unwrap()),
                },
                NicSpec {
                    network: NetworkKind::Bridge(BridgeName::try_from("br0").unwrap()),
                    vlan: None,
                    mac: None,
                },
            ],
            boot: vec![BootDevice::Cdrom, BootDevice::Disk],
            autostart: true,
        };
        let disks = [
            AttachedDisk {
                path: "/data/vm/web-1-disk0.qcow2".into(),
                format: "qcow2".into(),
                cdrom: false,
            },
            AttachedDisk {
                path: "/data/vm/debian.iso".into(),
                format: "raw".into(),
                cdrom: true,
            },
        ];
        let xml = domain(&spec, &disks, &host());
        for needle in [
            "<domain type=\"qemu\">",
            "<name>web-1</name>",
            "<memory unit=\"MiB\">768</memory>",
            "<vcpu placement=\"static\">2</vcpu>",
            "<os firmware=\"efi\">",
            "<boot dev=\"cdrom\"/>\n    <boot dev=\"hd\"/>",
            "<source file=\"/data/vm/web-1-disk0.qcow2\"/>",
            "<target dev=\"vda\" bus=\"virtio\"/>",
            "<target dev=\"sda\" bus=\"sata\"/>",
            "<readonly/>",
            "<source network=\"default\"/>",
            "<mac address=\"52:54:00:00:00:07\"/>",
            "<source bridge=\"br0\"/>",
            "<graphics type=\"vnc\" port=\"-1\" autoport=\"yes\" listen=\"127.0.0.1\"/>",
            "</devices>\n</domain>\n",
        ] {
            assert!(xml.contains(needle), "no {needle:?} in\n{xml}");
        }
    }

    #[test]
    fn volumes_and_snapshots() {
        assert_eq!(
            volume("web-1-disk0.qcow2", 2048),
            "<volume>\n  <name>web-1-disk0.qcow2</name>\n  <capacity unit=\"MiB\">2048</capacity>\n  <target>\n    <format type=\"qcow2\"/>\n  </target>\n</volume>\n"
        );
        let s = snapshot(&SnapshotName::try_from("before-upgrade").unwrap(), "a < b");
        assert!(s.contains("<description>a &lt; b</description>"), "{s}");
    }
}
