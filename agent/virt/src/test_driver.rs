//! Hosts for libvirt's test driver: a node description (`test:///FILE`)
//! with 4 GiB of memory, 2 CPUs, a NAT network called `default` and a
//! storage pool `vms` at /data/vm holding the given volumes. The driver
//! keeps everything in memory (every pool has 100 GiB); each connection to
//! a file gets its own private host, so tests never share VMs. Used by the
//! tests of this crate, of the agent and of debvisorctl.

use std::fmt::Write as _;
use std::path::Path;

use crate::libvirt::LibvirtOptions;
use crate::xml::escape;

/// The host's memory in MiB.
pub const MEMORY_MIB: u64 = 4096;

/// Writes the node description to `dir/node.xml`, with a volume of
/// `(name, MiB)` for each of `volumes`; the options to connect to it.
pub fn host(dir: &Path, volumes: &[(&str, u64)]) -> std::io::Result<LibvirtOptions> {
    let mut vols = String::new();
    for (name, mib) in volumes {
        let name = escape(name);
        let _ = writeln!(
            vols,
            "    <volume type=\"file\"><name>{name}</name><capacity unit=\"MiB\">{mib}</capacity>\
             <allocation unit=\"MiB\">{mib}</allocation><target><path>/data/vm/{name}</path></target></volume>"
        );
    }
    let node = format!(
        "<node>\n  <cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads><active>2</active>\
         <mhz>2000</mhz><model>x86_64</model></cpu>\n  <memory>{}</memory>\n  \
         <network><name>default</name><bridge name=\"virbr0\"/><forward/>\
         <ip address=\"192.168.122.1\" netmask=\"255.255.255.0\"/></network>\n  \
         <pool type=\"dir\">\n    <name>vms</name>\n    <target><path>/data/vm</path></target>\n{vols}  </pool>\n</node>\n",
        MEMORY_MIB * 1024
    );
    let path = dir.join("node.xml");
    std::fs::write(&path, node)?;
    Ok(LibvirtOptions {
        uri: format!("test://{}", path.display()),
        pool: "vms".into(),
        nat_network: "default".into(),
        qemu_domain_type: "qemu".into(),
    })
}
