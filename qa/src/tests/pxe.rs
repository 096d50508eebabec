//! PXE system tests: the provisioner serves the image's PXE set (`pxe/`,
//! from the image builder) on a bridge in a network namespace, and a VM
//! whose NIC is a tap on that bridge boots through OVMF's own PXE (no iPXE
//! option ROM) -> Debian's iPXE over TFTP -> its per-MAC script over HTTP ->
//! the node's kernel and initramfs. The provisioner is either the release
//! `debvisor-provision serve` (labs) or the release `debvisor-agent` running
//! it (`provision = FILE` in agent.toml), managed with `debvisorctl
//! provision` over the agent's socket.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use debvisor_image::pxe;

use super::Ctx;
use super::installed::{check_slot_a_of_disk, ready, sh};
use crate::netns::Netns;
use crate::node::with_tail;
use crate::qemu::{Boot, Nic, Vm, VmSpec};
use crate::serial::SerialGuest;

const SERVER: &str = "198.51.100.1";
/// The site's DHCP server (dnsmasq) in proxy-mode labs.
const SITE: &str = "198.51.100.2";

/// Who hands out addresses on a lab's network.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dhcp {
    /// The provisioner (mode = "server", with a reservation for the machine).
    Server,
    /// dnsmasq in a namespace of its own on the bridge, as a site's DHCP
    /// server; the provisioner answers only PXE clients (mode = "proxy").
    Proxy,
}

/// Which program runs the provisioner.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    /// `debvisor-provision serve`, its catalog set with its lab commands.
    Standalone,
    /// `debvisor-agent --sim` with `provision = FILE` in its agent.toml, the
    /// catalog set and read through `debvisor.provision.v1` with
    /// `debvisorctl provision` on the agent's Unix socket.
    Agent,
}

/// A provisioning network: namespace, bridge `br0` with the provisioner's
/// address, one tap for the VM, the provisioner's config and state; in
/// proxy labs also the site's namespace running dnsmasq.
struct PxeLab {
    ns: Netns,
    dir: PathBuf,
    bin: PathBuf,
    server: Option<Child>,
    site: Option<(Netns, Child)>,
    runner: Runner,
}

impl PxeLab {
    /// Sets up the network and a state directory whose images hold this
    /// image's PXE set as version `version`.
    fn new(ctx: &Ctx, name: &str, dhcp: Dhcp, runner: Runner) -> Result<PxeLab> {
        let bin = ctx.paths.root.join("target/release/debvisor-provision");
        ensure!(
            bin.is_file(),
            "{} not found: cargo build --release --locked --workspace",
            bin.display()
        );
        let ns = Netns::create(name)?;
        ns.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ns.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "br0"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        ns.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"])?;
        ns.ip(&["link", "set", "tap0", "master", "br0", "up"])?;
        let dir = ctx.dir.join("provisioner");
        let _ = std::fs::remove_dir_all(&dir);
        let images = dir.join("state/images").join(&ctx.version);
        std::fs::create_dir_all(&images)?;
        let set = pxe::dir(&ctx.image);
        for f in pxe::FILES.iter().chain([&pxe::SUMS]) {
            let from = set.join(f);
            ensure!(
                from.is_file(),
                "{} not found: the image builder makes the PXE set (rebuild the image)",
                from.display()
            );
            pxe::link_or_copy(&from, &images.join(f))?;
        }
        let mode = match dhcp {
            Dhcp::Server => {
                "mode = \"server\"\nrange = [\"198.51.100.100\", \"198.51.100.149\"]\nrouter = \"198.51.100.1\"\nlease_secs = 3600\n"
            }
            Dhcp::Proxy => "mode = \"proxy\"\n",
        };
        std::fs::write(
            dir.join("provision.toml"),
            format!(
                "state_dir = \"{}\"\n\n[[network]]\ninterface = \"br0\"\naddress = \"{SERVER}/24\"\n{mode}",
                dir.join("state").display()
            ),
        )?;
        let mut lab = PxeLab {
            ns,
            dir,
            bin,
            server: None,
            site: None,
            runner,
        };
        if dhcp == Dhcp::Proxy {
            lab.site = Some(lab.site_dhcp(&format!("{name}-site"))?);
        }
        Ok(lab)
    }

    /// The site's DHCP server: dnsmasq in namespace `name`, on a veth
    /// whose peer is a port of the bridge. It knows nothing of PXE; it gives
    /// every machine in [`PROXY_MACHINE`]'s lab its fixed address.
    fn site_dhcp(&self, name: &str) -> Result<(Netns, Child)> {
        let site = Netns::create(name)?;
        crate::netns::veth(&self.ns, "site0", &site, "eth0")?;
        self.ns.ip(&["link", "set", "site0", "master", "br0"])?;
        site.ip(&["addr", "add", &format!("{SITE}/24"), "dev", "eth0"])?;
        let log = self.dir.join("dnsmasq.log");
        let leases = format!("--dhcp-leasefile={}", self.dir.join("dnsmasq.leases").display());
        let host = format!("--dhcp-host={},{}", PROXY_MACHINE.mac, PROXY_MACHINE.ip);
        let child = site.spawn(
            &[
                "dnsmasq",
                "-d",
                "-k",
                "--port=0",
                "--interface=eth0",
                "--bind-interfaces",
                "--dhcp-range=198.51.100.150,198.51.100.199,255.255.255.0,1h",
                &host,
                &leases,
                "--log-facility=-",
                "--log-dhcp",
            ],
            Some(&log),
        )?;
        for _ in 0..100 {
            let out = site.command(&["ss", "-Hulpn", "sport = :67"]).output()?;
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return Ok((site, child));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("dnsmasq did not bind port 67 in 20 s: see {}", log.display())
    }

    fn config(&self) -> PathBuf {
        self.dir.join("provision.toml")
    }

    /// Appends a reservation to the config (before [`PxeLab::serve`]).
    fn reserve(&self, mac: &str, ip: &str, hostname: &str) -> Result<()> {
        let mut text = std::fs::read_to_string(self.config())?;
        text.push_str(&format!(
            "\n[[reservation]]\nmac = \"{mac}\"\nip = \"{ip}\"\nhostname = \"{hostname}\"\n"
        ));
        Ok(std::fs::write(self.config(), text)?)
    }

    /// Runs a lab command of the provisioner (`put-profile FILE`, `machines`).
    fn cli(&self, cmd: &str, file_text: Option<&str>) -> Result<String> {
        let mut c = Command::new(&self.bin);
        c.arg(cmd).arg("--config").arg(self.config());
        if let Some(text) = file_text {
            let f = self.dir.join(format!("{cmd}.toml"));
            std::fs::write(&f, text)?;
            c.arg(f);
        }
        crate::cfgdisk::run(&mut c)
    }

    /// The agent's socket (with [`Runner::Agent`]).
    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// Runs `debvisorctl --socket SOCKET args...` against the lab's agent.
    fn ctl(&self, args: &[&str]) -> Result<String> {
        let bin = self.bin.with_file_name("debvisorctl");
        let mut c = Command::new(&bin);
        c.arg("--socket").arg(self.socket()).args(args);
        crate::cfgdisk::run(&mut c)
    }

    /// Creates or replaces a profile or group (`kind`) from its TOML.
    fn put(&self, kind: &str, text: &str) -> Result<()> {
        match self.runner {
            Runner::Standalone => self.cli(&format!("put-{kind}"), Some(text)).map(drop),
            Runner::Agent => {
                let f = self.dir.join(format!("{kind}.toml"));
                std::fs::write(&f, text)?;
                self.ctl(&["provision", kind, "put", &f.to_string_lossy()]).map(drop)
            }
        }
    }

    /// Starts the provisioner in the namespace; waits until it serves.
    fn serve(&mut self) -> Result<()> {
        let log = self.dir.join("provisioner.log");
        let cfg = self.config();
        let argv: Vec<String> = match self.runner {
            Runner::Standalone => vec![
                self.bin.to_string_lossy().into(),
                "serve".into(),
                "--config".into(),
                cfg.to_string_lossy().into(),
            ],
            Runner::Agent => {
                let agent_toml = self.dir.join("agent.toml");
                std::fs::write(
                    &agent_toml,
                    format!(
                        "provision = \"{}\"\n\n[audit]\npath = \"{}\"\n",
                        cfg.display(),
                        self.dir.join("audit.db").display()
                    ),
                )?;
                vec![
                    self.bin.with_file_name("debvisor-agent").to_string_lossy().into(),
                    "--sim".into(),
                    "--no-tcp".into(),
                    "--config".into(),
                    agent_toml.to_string_lossy().into(),
                    "--socket".into(),
                    self.socket().to_string_lossy().into(),
                ]
            }
        };
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let child = self.ns.spawn(&argv, Some(&log))?;
        self.server = Some(child);
        for _ in 0..150 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("serving") {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.server.as_mut().map(Child::try_wait) {
                bail!("The provisioner exited ({status}):\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("The provisioner did not start serving in 30 s: see {}", log.display())
    }

    /// A VM on the tap, booting from the network first.
    fn vm(&self, ctx: &Ctx, mac: &str, disk: Option<PathBuf>) -> Result<Vm> {
        self.vm_logged(ctx, mac, disk, "console.log")
    }

    /// [`PxeLab::vm`] with its console kept in `log`.
    fn vm_logged(&self, ctx: &Ctx, mac: &str, disk: Option<PathBuf>, log: &str) -> Result<Vm> {
        Vm::start(&VmSpec {
            boot: Boot::Pxe { disk },
            workdir: ctx.dir.join("vm"),
            console_log: ctx.dir.join(log),
            memory_mib: ctx.memory_mib,
            accel: ctx.accel,
            console_port: None,
            agent_port: None,
            detach: false,
            nic: Nic::Tap {
                netns: self.ns.name.clone(),
                tap: "tap0".into(),
                mac: mac.into(),
            },
        })
    }
}

impl Drop for PxeLab {
    fn drop(&mut self) {
        // Reap the children; the namespaces go with the fields.
        let site = self.site.as_mut().map(|(_, c)| c);
        for c in self.server.iter_mut().chain(site) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A lab serving one machine `m` with a profile of `mode`; `extra` ends the
/// profile's TOML. With [`Dhcp::Server`] the provisioner reserves the
/// machine's address and host name; with [`Dhcp::Proxy`] the site's dnsmasq
/// gives the address and the host name is the provisioner's default.
fn lab_for(ctx: &Ctx, ns: &str, m: &Machine, mode: &str, extra: &str, dhcp: Dhcp, runner: Runner) -> Result<PxeLab> {
    let mut lab = PxeLab::new(ctx, ns, dhcp, runner)?;
    if dhcp == Dhcp::Server {
        lab.reserve(m.mac, m.ip, m.host)?;
    }
    // The agent's API needs the agent; the lab commands write the database
    // the provisioner reads on every request.
    if runner == Runner::Agent {
        lab.serve()?;
    }
    let profile = format!("{mode}-lab");
    lab.put(
        "profile",
        &format!(
            "name = \"{profile}\"\nmode = \"{mode}\"\nimage = \"{}\"\n\
             kernel_args = [\"console=ttyS0,115200\", \"panic=10\"]\n\
             config = '''\nversion = 1\n[node]\nhostname = \"{{{{hostname}}}}\"\n'''\n{extra}",
            ctx.version
        ),
    )?;
    lab.put(
        "group",
        &format!(
            "name = \"lab\"\nprofile = \"{profile}\"\n[selector]\nmac = \"{}\"\n",
            m.mac
        ),
    )?;
    if runner == Runner::Standalone {
        lab.serve()?;
    }
    Ok(lab)
}

/// The machine a test boots.
struct Machine {
    mac: &'static str,
    ip: &'static str,
    host: &'static str,
}

/// Waits for ready, prints and keeps the time, checks the console shows
/// `needles`, and logs in as root.
/// The node's host name and address are its reservation's.
fn check_identity(g: &mut SerialGuest, m: &Machine) -> Result<()> {
    let hostname = sh(g, "hostname")?;
    ensure!(
        hostname == m.host,
        "The node is called {hostname:?}, not {:?} (its per-MAC config)",
        m.host
    );
    let addr = sh(g, "ip -4 -o addr show")?;
    ensure!(
        addr.contains(&format!("{}/24", m.ip)),
        "The node lacks its reserved address {}: {addr}",
        m.ip
    );
    Ok(())
}

/// The provisioner's row for `mac` (`machines` output).
fn machine_row(lab: &PxeLab, mac: &str) -> Result<String> {
    let machines = lab.cli("machines", None)?;
    machines
        .lines()
        .find(|l| l.starts_with(mac))
        .map(str::to_string)
        .with_context(|| format!("The provisioner did not record {mac}: {machines}"))
}

/// A diskless VM boots live from the network: the initramfs fetches the
/// root image into RAM, checks its sha256 and boots it to ready; the node
/// takes its per-MAC host name from the config the provisioner renders, no
/// disk exists, and the provisioner recorded the machine.
pub(super) fn pxe_live(ctx: &Ctx) -> Result<()> {
    let m = Machine {
        mac: "52:54:00:00:00:41",
        ip: "198.51.100.41",
        host: "pxe-live-1",
    };
    let lab = lab_for(ctx, "dvq-pxe-live", &m, "live", "", Dhcp::Server, Runner::Agent)?;
    let vm = lab.vm(ctx, m.mac, None)?;
    let needles = [
        "profile live-lab (live)",
        "debvisor: live root http://198.51.100.1:8080/images/",
        "(sha256 verified",
    ];
    let mut g = ready(ctx, &vm, "PXE live boot", ctx.boot_timeout, &needles)?;
    let root = sh(&mut g, "findmnt -n -o SOURCE,FSTYPE,OPTIONS /")?;
    ensure!(
        root.starts_with("/dev/loop") && root.contains("squashfs") && root.contains("ro"),
        "/ is not the read-only image on a loop device: {root}"
    );
    let data = sh(&mut g, "findmnt -n -o FSTYPE /data")?;
    ensure!(data == "tmpfs", "/data is {data}, not RAM");
    let disks = sh(&mut g, "lsblk -d -n -e 7,11 -o NAME,TYPE")?;
    // -e 7,11: not the loop device of the root, nor the VM's CD-ROM.
    ensure!(disks.is_empty(), "A live node has disks: {disks}");
    check_identity(&mut g, &m)?;
    drop(g);
    provision_api_agrees(&lab, &m)
}

/// What the agent's `debvisor.provision.v1` says after the boot, read with
/// `debvisorctl provision ... --json`: the machine with its profile, address
/// and the group that chose it, and its lease as a reservation.
fn provision_api_agrees(lab: &PxeLab, m: &Machine) -> Result<()> {
    let json = |args: &[&str]| -> Result<serde_json::Value> {
        let mut all = vec!["--json", "provision"];
        all.extend_from_slice(args);
        let out = lab.ctl(&all)?;
        serde_json::from_str(&out).with_context(|| format!("debvisorctl {all:?} printed no JSON: {out}"))
    };
    let machine = json(&["machine", "show", m.mac])?;
    for (key, want) in [
        ("mac", m.mac),
        ("ip", m.ip),
        ("profile", "live-lab"),
        ("selected_group", "lab"),
        ("selected_profile", "live-lab"),
    ] {
        ensure!(
            machine[key].as_str() == Some(want),
            "provision machine show: {key} is {}, not {want:?}: {machine}",
            machine[key]
        );
    }
    let leases = json(&["leases"])?;
    let lease = leases["leases"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["mac"].as_str() == Some(m.mac)))
        .with_context(|| format!("provision leases lists no lease of {}: {leases}", m.mac))?;
    ensure!(
        lease["ip"].as_str() == Some(m.ip)
            && lease["reserved"].as_bool() == Some(true)
            && lease["hostname"].as_str() == Some(m.host),
        "The lease is not the reservation ({} {}): {lease}",
        m.ip,
        m.host
    );
    let listed = lab.ctl(&["provision", "machines"])?;
    ensure!(
        listed
            .lines()
            .any(|l| l.starts_with(m.mac) && l.contains(m.ip) && l.contains("live-lab")),
        "provision machines does not list {} with its address and profile:\n{listed}",
        m.mac
    );
    Ok(())
}

/// The machine boots the install profile with only a blank 2 GiB disk: the
/// rule "the only empty disk of at least 4 GB" matches none, so the
/// installer stops with a message that says so and QEMU counts no byte
/// written; the provisioner does not take the machine as installed.
fn too_small_refused(ctx: &Ctx, lab: &PxeLab, m: &Machine) -> Result<()> {
    let small = ctx.dir.join("small.img");
    std::fs::File::create(&small)?.set_len(2 << 30)?;
    let vm = lab.vm_logged(ctx, m.mac, Some(small), "console-small.log")?;
    let refusal = "install disk rule 'the only empty disk of at least 4 GB' matches 0 disks; nothing was written";
    vm.console.wait_for(refusal, 0, ctx.boot_timeout).map_err(|e| {
        with_tail(
            e.context("The installer did not refuse a disk below the rule's size"),
            &vm,
        )
    })?;
    let written = vm.disk_written()?;
    ensure!(
        written == 0,
        "The guest wrote {written} bytes to the 2 GiB disk the rule does not allow"
    );
    let row = machine_row(lab, m.mac)?;
    ensure!(
        !row.split('\t').any(|f| f == "installed"),
        "The provisioner takes the machine as installed after a refused install: {row}"
    );
    println!("  2 GiB disk refused, 0 bytes written");
    Ok(())
}

/// A VM with a blank disk installs from the network: the initramfs writes
/// the disk image to the only empty disk of at least 4 GB, checks it, hands
/// the per-MAC config to the first boot and tells the provisioner, which
/// then sends the machine on to its disk; the node boots slot A from disk
/// to ready with its per-MAC host name.
pub(super) fn pxe_install(ctx: &Ctx) -> Result<()> {
    let m = Machine {
        mac: "52:54:00:00:00:42",
        ip: "198.51.100.42",
        host: "pxe-installed-1",
    };
    let lab = lab_for(
        ctx,
        "dvq-pxe-inst",
        &m,
        "install",
        "[install_disk.only_empty]\nmin_gb = 4\n",
        Dhcp::Server,
        Runner::Standalone,
    )?;
    too_small_refused(ctx, &lab, &m)?;
    // A blank 8 GiB disk (sparse; the VM writes to an overlay of it).
    let blank = ctx.dir.join("blank.img");
    std::fs::File::create(&blank)?.set_len(8 << 30)?;
    let vm = lab.vm(ctx, m.mac, Some(blank))?;
    let needles = [
        "profile install-lab (install)",
        "debvisor: install: writing http://198.51.100.1:8080/images/",
        "written and verified (sha256",
        "machine config from http://198.51.100.1:8080/machines/52-54-00-00-00-42/config kept",
        "is installed (profile install-lab): booting the next device",
        "debvisor: booting slot A",
    ];
    let mut g = ready(ctx, &vm, "PXE install", ctx.boot_timeout * 2, &needles)?;
    // The installer wrote the image's start only: the backup GPT must now
    // sit at the end of this disk and data must have grown to fill it.
    check_slot_a_of_disk(&mut g)?;
    let data = sh(&mut g, "lsblk -b -n -o SIZE /dev/vda4")?;
    let data: u64 = data.parse().with_context(|| format!("lsblk said {data:?}"))?;
    ensure!(
        data > 6 << 30,
        "The data partition has {data} bytes: it was not grown to the end of the 8 GiB disk"
    );
    let handover = sh(
        &mut g,
        "test -e /data/install/machine.toml && echo present || echo gone",
    )?;
    ensure!(handover == "gone", "The installer's config hand-over was not adopted");
    check_identity(&mut g, &m)?;
    drop(g);
    let row = machine_row(&lab, m.mac)?;
    ensure!(
        row.contains("install-lab") && row.split('\t').any(|f| f == "installed"),
        "The provisioner does not show the machine installed: {row}"
    );
    Ok(())
}

/// The machine of the proxy lab: its address comes from the site's dnsmasq,
/// its host name is the provisioner's default for its MAC.
const PROXY_MACHINE: Machine = Machine {
    mac: "52:54:00:00:00:43",
    ip: "198.51.100.43",
    host: "node-525400000043",
};

/// proxyDHCP beside a site's DHCP server: dnsmasq (knowing nothing of PXE)
/// hands out the addresses, the provisioner only tells PXE clients where to
/// boot (ports 67 and 4011). A diskless VM boots live to ready through both,
/// with dnsmasq's address and its per-MAC config; the provisioner leased
/// nothing.
pub(super) fn pxe_proxy(ctx: &Ctx) -> Result<()> {
    let m = PROXY_MACHINE;
    let lab = lab_for(ctx, "dvq-pxe-proxy", &m, "live", "", Dhcp::Proxy, Runner::Standalone)?;
    let vm = lab.vm(ctx, m.mac, None)?;
    let needles = ["profile live-lab (live)", "(sha256 verified"];
    let mut g = ready(ctx, &vm, "PXE live boot (proxyDHCP)", ctx.boot_timeout, &needles)?;
    check_identity(&mut g, &m)?;
    drop(g);
    let dnsmasq = std::fs::read_to_string(lab.dir.join("dnsmasq.log")).unwrap_or_default();
    ensure!(
        dnsmasq.contains(&format!("DHCPACK(eth0) {} {}", m.ip, m.mac)),
        "dnsmasq did not hand {} its address: see {}",
        m.mac,
        lab.dir.join("dnsmasq.log").display()
    );
    let leases = lab.cli("leases", None)?;
    ensure!(
        !leases.contains(m.mac),
        "The provisioner leased an address in proxy mode: {leases}"
    );
    let row = machine_row(&lab, m.mac)?;
    ensure!(row.contains("live-lab"), "machine row: {row}");
    Ok(())
}
