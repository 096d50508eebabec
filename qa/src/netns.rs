//! Network namespaces for lab networks: created with `ip netns`, removed
//! (with every process left in them) on drop.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// Runs `ip` with `args`; an error carries its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("Cannot run ip: install iproute2")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` (a stale one of that name is removed first)
    /// with its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        if !is_root() {
            bail!("network namespaces need root: run as root (sudo)");
        }
        // A run that was killed leaves its namespace, and the servers and
        // VMs in it, which would hold the ports and addresses of this one.
        remove(name);
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend_from_slice(args);
        ip(&v)
    }

    /// A command that runs `argv` inside the namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// Starts `argv` in the namespace with output discarded unless `log` names a file.
    pub fn spawn(&self, argv: &[&str], log: Option<&std::path::Path>) -> Result<Child> {
        let mut c = self.command(argv);
        // Daemons log to stderr, not to the journal of whoever runs this.
        c.env_remove("JOURNAL_STREAM");
        c.stdin(Stdio::null()).stdout(Stdio::null());
        match log {
            Some(p) => c.stderr(std::fs::File::create(p).with_context(|| format!("Cannot create {}", p.display()))?),
            None => c.stderr(Stdio::null()),
        };
        c.spawn()
            .with_context(|| format!("Cannot start {argv:?} in namespace {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Kills every process in namespace `name`, then deletes it (if it exists).
fn remove(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// A veth pair: `a` in `ns_a`, `b` in `ns_b`, both up.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) -> Result<()> {
    ns_a.ip(&["link", "add", a, "type", "veth", "peer", "name", b, "netns", &ns_b.name])?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}
