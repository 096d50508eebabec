//! Reading what libvirt writes: the devices of a domain and the facts of a
//! snapshot, from their XML.

/// A disk of a domain's XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The guest device (`vda`).
    pub target: String,
    /// The source file.
    pub path: String,
    /// A CD-ROM.
    pub cdrom: bool,
}

/// An interface of a domain's XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Its MAC.
    pub mac: String,
    /// `network:NAME` or `bridge:NAME`.
    pub network: String,
}

/// What the agent reads from a domain's XML.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Domain {
    /// `<os firmware="efi">` or an OVMF loader.
    pub uefi: bool,
    /// `<boot dev=...>`, in order.
    pub boot: Vec<String>,
    /// File-backed disks.
    pub disks: Vec<Disk>,
    /// Interfaces.
    pub nics: Vec<Nic>,
    /// The VNC port, when libvirt has given one.
    pub vnc_port: Option<u16>,
}

/// What the agent reads from a snapshot's XML.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// `<description>`.
    pub description: String,
    /// `<creationTime>` (seconds since the epoch).
    pub created: i64,
    /// `<state>`: the VM's state when taken.
    pub state: String,
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

/// Reads a domain's XML.
pub fn domain(text: &str) -> Result<Domain, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("libvirt wrote unreadable domain XML: {e}"))?;
    let root = doc.root_element();
    let mut out = Domain::default();
    if let Some(os) = child(root, "os") {
        out.uefi = os.attribute("firmware") == Some("efi")
            || child(os, "loader").is_some_and(|l| l.text().is_some_and(|t| t.contains("OVMF")));
        out.boot = os
            .children()
            .filter(|c| c.has_tag_name("boot"))
            .filter_map(|c| c.attribute("dev").map(str::to_string))
            .collect();
    }
    let Some(devices) = child(root, "devices") else {
        return Ok(out);
    };
    for d in devices.children().filter(|c| c.is_element()) {
        match d.tag_name().name() {
            "disk" => {
                let path = child(d, "source").and_then(|s| s.attribute("file")).unwrap_or_default();
                let target = child(d, "target").and_then(|t| t.attribute("dev")).unwrap_or_default();
                out.disks.push(Disk {
                    target: target.to_string(),
                    path: path.to_string(),
                    cdrom: d.attribute("device") == Some("cdrom"),
                });
            }
            "interface" => {
                let source = child(d, "source");
                let network = match (d.attribute("type"), source) {
                    (Some("network"), Some(s)) => format!("network:{}", s.attribute("network").unwrap_or_default()),
                    (Some("bridge"), Some(s)) => format!("bridge:{}", s.attribute("bridge").unwrap_or_default()),
                    (t, _) => t.unwrap_or("unknown").to_string(),
                };
                out.nics.push(Nic {
                    mac: child(d, "mac")
                        .and_then(|m| m.attribute("address"))
                        .unwrap_or_default()
                        .to_string(),
                    network,
                });
            }
            "graphics" if d.attribute("type") == Some("vnc") => {
                out.vnc_port = d.attribute("port").and_then(|p| p.parse().ok()).filter(|p| *p > 0);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Reads a snapshot's XML.
pub fn snapshot(text: &str) -> Result<Snapshot, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("libvirt wrote unreadable snapshot XML: {e}"))?;
    let root = doc.root_element();
    let text_of = |tag: &str| child(root, tag).and_then(|n| n.text()).unwrap_or_default().to_string();
    Ok(Snapshot {
        description: text_of("description"),
        created: text_of("creationTime").parse().unwrap_or(0),
        state: text_of("state"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_written_by_libvirt_is_read_back() {
        let text = r#"<domain type='kvm' id='3'>
  <name>web-1</name>
  <os firmware='efi'><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader><boot dev='cdrom'/><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/data/vm/web-1-disk0.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/data/vm/debian &amp; co.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='network'><mac address='52:54:00:6b:3c:58'/><source network='default'/></interface>
    <interface type='bridge'><mac address='52:54:00:6b:3c:59'/><source bridge='br0'/></interface>
    <graphics type='vnc' port='5900' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>"#;
        let d = domain(text).unwrap();
        assert!(d.uefi);
        assert_eq!(d.boot, ["cdrom", "hd"]);
        assert_eq!(d.disks.len(), 2);
        assert_eq!(d.disks[1].path, "/data/vm/debian & co.iso");
        assert!(d.disks[1].cdrom && !d.disks[0].cdrom);
        assert_eq!(d.nics[0].network, "network:default");
        assert_eq!(d.nics[1].network, "bridge:br0");
        assert_eq!(d.vnc_port, Some(5900));
        assert!(domain("<domain><name>x").is_err());
    }

    #[test]
    fn a_snapshot_is_read_back() {
        let s = snapshot(
            "<domainsnapshot><name>s1</name><description>before</description><state>running</state><creationTime>1700000000</creationTime></domainsnapshot>",
        )
        .unwrap();
        assert_eq!(s.description, "before");
        assert_eq!(s.created, 1_700_000_000);
        assert_eq!(s.state, "running");
    }
}
