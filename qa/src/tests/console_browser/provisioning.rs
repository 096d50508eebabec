//! The Provisioning page in the browser, with a real provisioner behind it:
//! the console's agent runs it (`provision = FILE` in agent.toml) on this
//! host's end of a veth pair whose other end is in a client namespace. Before the walk, `debvisorctl provision`
//! puts a profile and a group, ISC dhclient takes a lease (the provisioner
//! records the machine) and the machine reports its install done over HTTP
//! from its leased address, as the installer does. The step then finds the
//! machine, its lease, the profile and the group on the page, sends the
//! machine through its profile again with "Install again", and finds the
//! change in the audit log under the console's user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use debvisor_image::pxe;
use sha2::{Digest, Sha256};

use super::{StepFuture, Web};
use crate::console_host::AgentSetup;
use crate::netns::{Netns, ip};

/// The provisioner's address on its network.
const SERVER: &str = "198.51.100.1";
/// The client's MAC (its veth end is given it).
const MAC: &str = "52:54:00:00:00:61";
/// The address the client leases (the first of the pool).
const LEASED: &str = "198.51.100.100";
const PROFILE: &str = "browser-install";
const GROUP: &str = "browser-lab";
/// The cells of the machines table, row by row.
const MACHINE_ROWS: &str = "return [...document.querySelectorAll('#machines tbody tr')]\
     .map(r => [...r.querySelectorAll('td')].map(c => c.innerText));";

/// The provisioner's interface on this host.
const SRV_IF: &str = "dvqcb0";

/// The client namespace and the provisioner's files; the namespace (with
/// what runs in it and the veth pair) goes when it is dropped.
pub(super) struct ProvisionNet {
    cli: Netns,
    dir: PathBuf,
}

impl ProvisionNet {
    /// Namespace `{prefix}-cli` joined to this host by a veth pair, and a
    /// provisioner config with a pool and an image version 0.1.0 in `dir`.
    pub(super) fn create(prefix: &str, dir: &Path) -> Result<ProvisionNet> {
        let cli = Netns::create(&format!("{prefix}-cli"))?;
        // A pair left by a killed run.
        let _ = ip(&["link", "del", SRV_IF]);
        ip(&[
            "link", "add", SRV_IF, "type", "veth", "peer", "name", "cli0", "netns", &cli.name,
        ])?;
        // No IPv6 on this host's end: its link-local address would appear a
        // moment after the link comes up, and Chromium (on this host's
        // network) drops the page it is loading when addresses change
        // (ERR_NETWORK_CHANGED).
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{SRV_IF}/disable_ipv6"), "1")
            .with_context(|| format!("Cannot turn IPv6 off on {SRV_IF}"))?;
        ip(&["addr", "add", &format!("{SERVER}/24"), "dev", SRV_IF])?;
        ip(&["link", "set", SRV_IF, "up"])?;
        cli.ip(&["link", "set", "cli0", "address", MAC])?;
        cli.ip(&["link", "set", "cli0", "up"])?;
        let dir = dir.join("provisioner");
        let _ = std::fs::remove_dir_all(&dir);
        // Image 0.1.0's PXE set: small stand-ins with their real sums (the
        // console never boots them; the boot script only names them).
        let images = dir.join("state/images/0.1.0");
        std::fs::create_dir_all(&images)?;
        let mut sums = String::new();
        for f in pxe::FILES {
            let body = format!("stand-in for {f}\n");
            std::fs::write(images.join(f), &body)?;
            sums.push_str(&format!("{}  {f}\n", hex::encode(Sha256::digest(body.as_bytes()))));
        }
        std::fs::write(images.join(pxe::SUMS), sums)?;
        std::fs::write(
            dir.join("provision.toml"),
            format!(
                "state_dir = \"{}\"\n\n[[network]]\ninterface = \"{SRV_IF}\"\naddress = \"{SERVER}/24\"\n\
                 mode = \"server\"\nrange = [\"{LEASED}\", \"198.51.100.149\"]\nlease_secs = 3600\n\n\
                 [tftp]\nenabled = false\n",
                dir.join("state").display()
            ),
        )?;
        Ok(ProvisionNet { cli, dir })
    }

    /// How the console's agent runs: with the provisioner.
    pub(super) fn agent_setup(&self) -> AgentSetup {
        AgentSetup {
            config: format!("provision = \"{}\"\n", self.dir.join("provision.toml").display()),
            vmd_config: None,
        }
    }

    /// Puts the profile and the group through the agent on `socket`, leases
    /// an address with dhclient and reports the install done from it.
    pub(super) fn seed(&self, ctl: &Path, socket: &Path) -> Result<()> {
        let put = |kind: &str, text: &str| -> Result<()> {
            let f = self.dir.join(format!("{kind}.toml"));
            std::fs::write(&f, text)?;
            let mut c = Command::new(ctl);
            c.arg("--socket").arg(socket).args(["provision", kind, "put"]).arg(&f);
            crate::cfgdisk::run(&mut c).map(drop)
        };
        put(
            "profile",
            &format!(
                "name = \"{PROFILE}\"\nmode = \"install\"\nimage = \"0.1.0\"\nkernel_args = [\"quiet\"]\n\
                 config = '''\nversion = 1\n[node]\nhostname = \"{{{{hostname}}}}\"\n'''\n\
                 [install_disk.only_empty]\nmin_gb = 4\n"
            ),
        )?;
        put(
            "group",
            &format!("name = \"{GROUP}\"\nprofile = \"{PROFILE}\"\n[selector]\nmac = \"{MAC}\"\n"),
        )?;
        // ISC dhclient, one attempt; -sf /bin/true leaves the host's
        // resolv.conf alone and configures nothing.
        let leases = self.dir.join("dhclient.leases");
        let pid = self.dir.join("dhclient.pid");
        let out = self
            .cli
            .command(&["dhclient", "-4", "-v", "-1", "-sf", "/bin/true"])
            .arg("-pf")
            .arg(&pid)
            .arg("-lf")
            .arg(&leases)
            .arg("cli0")
            .output()
            .context("Cannot run dhclient: apt-get install isc-dhcp-client")?;
        let text = std::fs::read_to_string(&leases).unwrap_or_default();
        ensure!(
            out.status.success() && text.contains(&format!("fixed-address {LEASED};")),
            "dhclient got no lease of {LEASED} from the agent's provisioner: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        // From the leased address: the boot script, as iPXE asks for it
        // (the provisioner records the machine), then the installer's
        // report.
        self.cli.ip(&["addr", "add", &format!("{LEASED}/24"), "dev", "cli0"])?;
        let dashed = MAC.replace(':', "-");
        let script = self.curl(&[&format!("http://{SERVER}:8080/ipxe?mac={dashed}")])?;
        ensure!(
            script.starts_with("#!ipxe"),
            "The provisioner sent {MAC} no iPXE script: {script}"
        );
        self.curl(&[
            "-X",
            "POST",
            "--data",
            "sha256=0",
            &format!("http://{SERVER}:8080/machines/{dashed}/installed"),
        ])?;
        Ok(())
    }

    /// Runs curl with `args` in the client namespace; its output.
    fn curl(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["curl", "-sS", "--fail-with-body"];
        argv.extend_from_slice(args);
        let out = self
            .cli
            .command(&argv)
            .output()
            .context("Cannot run curl: apt-get install curl")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "curl {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text)
    }
}

/// The machine, installed, with its lease; the profile and the group;
/// "Install again" takes it back to its profile, and the audit log has it.
pub(super) fn page(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url("/provisioning")).await?;
        w.b.wait_css("#machines").await?;
        let rows = w.b.rows(MACHINE_ROWS).await?;
        let row = rows
            .iter()
            .find(|r| r.first().is_some_and(|c| c.contains(MAC)))
            .with_context(|| format!("The machines table has no {MAC}: {rows:?}"))?;
        ensure!(
            row.iter().any(|c| c == LEASED) && row.iter().any(|c| c == "installed"),
            "{MAC} should show its lease {LEASED} and be installed: {row:?}"
        );
        let main =
            w.b.wait_text("main", "the profile, group and lease", |t| {
                t.contains(PROFILE) && t.contains(GROUP) && t.contains(LEASED)
            })
            .await?;
        ensure!(main.contains("install"), "The profile's mode is not shown: {main}");
        w.b.click("#machines form[action$=\"/reset\"] button[type=submit]")
            .await?;
        w.b.wait_text(".flash", "the reset's outcome", |t| {
            t.contains(&format!(
                "{MAC} will install again on its next PXE boot (profile {PROFILE})"
            ))
        })
        .await?;
        let rows = w.b.rows(MACHINE_ROWS).await?;
        ensure!(
            rows.iter()
                .any(|r| r.first().is_some_and(|c| c.contains(MAC)) && r.iter().any(|c| c == "no")),
            "After the reset {MAC} still shows installed: {rows:?}"
        );
        w.audited("the reset in the audit log", |t| {
            t.contains("provision.machine.reset")
                && t.contains(&format!("machine:{MAC}"))
                && t.contains("console:admin")
        })
        .await
    })
}
