//! `debvisor-qa bench boot`: cold and warm image builds, image sizes, boot
//! times to ready and to answering services, the resident memory of the
//! DebVisor daemons, and a plain Debian peer booted under the same QEMU
//! settings for comparison. Reports figures; asserts nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::node::{self, NodeOpts, Paths};
use crate::qemu::{Accel, Boot, Vm, VmSpec, require_tools};
use crate::serial::SerialGuest;

/// Options of `bench boot`.
#[derive(Debug, Clone, clap::Args)]
pub struct BootArgs {
    /// Boots of each system to time.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Skip the cold build (it downloads every package again).
    #[arg(long)]
    pub skip_cold: bool,
    /// Skip the warm build too and boot target/qa/image as it is.
    #[arg(long)]
    pub no_build: bool,
    /// Skip building and booting the DebVisor node (peer only).
    #[arg(long)]
    pub skip_node: bool,
    /// Skip the plain Debian peer.
    #[arg(long)]
    pub skip_peer: bool,
    /// Seconds a boot may take.
    #[arg(long, default_value_t = 600)]
    pub boot_timeout: u64,
}

#[derive(Debug, Default, Serialize)]
struct NodeRun {
    stages: Vec<(String, f64)>,
    ready_s: f64,
    agent_s: f64,
    console_s: f64,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    accel: String,
    cold_build_s: Option<f64>,
    warm_build_s: Option<f64>,
    slot_img_bytes: u64,
    disk_img_bytes: u64,
    node_runs: Vec<NodeRun>,
    rss_kib: Vec<(String, u64)>,
    peer_build_s: Option<f64>,
    peer_direct_login_s: Vec<f64>,
    /// Median console-answering time over median peer login time.
    ratio_console_to_peer_direct: Option<f64>,
    notes: Vec<String>,
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// Parses `name VmRSS:   1234 kB` lines.
pub fn parse_rss(out: &str) -> Vec<(String, u64)> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            (w.next()? == "VmRSS:").then_some(())?;
            Some((name.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// The first mirror URI for `suite` in apt's sources (one-line and deb822).
pub fn mirror_from_sources(texts: &[String], suite: &str) -> Option<String> {
    for text in texts {
        for line in text.lines().map(str::trim) {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.first() == Some(&"deb") {
                let rest: Vec<&str> = w[1..].iter().copied().filter(|x| !x.starts_with('[')).collect();
                if rest.len() >= 2 && rest[1] == suite {
                    return Some(rest[0].to_string());
                }
            }
        }
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                    .unwrap_or_default()
            };
            let types = field("Types:");
            if types.split_whitespace().any(|t| t == "deb")
                && field("Suites:").split_whitespace().any(|s| s == suite)
                && let Some(uri) = field("URIs:").split_whitespace().next()
            {
                return Some(uri.to_string());
            }
        }
    }
    None
}

fn host_mirror() -> Result<String> {
    if let Ok(m) = std::env::var("DEBVISOR_MIRROR") {
        return Ok(m);
    }
    let mut texts = vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "list" || ext == "sources" {
                texts.push(std::fs::read_to_string(&f).unwrap_or_default());
            }
        }
    }
    mirror_from_sources(&texts, "bookworm")
        .context("No bookworm mirror in /etc/apt/sources.list(.d): set DEBVISOR_MIRROR=http://.../debian")
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("Cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The peer: a plain minbase Debian with the same kernel package, cached
/// under target/debvisor-cache/peer/. Returns (dir, build seconds if built).
fn peer_image(paths: &Paths) -> Result<(PathBuf, Option<f64>)> {
    let dir = paths.cache().join("peer");
    let done = ["root.ext4", "vmlinuz", "initrd.img"]
        .iter()
        .all(|f| dir.join(f).exists());
    if done {
        return Ok((dir, None));
    }
    require_tools(&[("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs")])?;
    let mirror = host_mirror()?;
    let t = Instant::now();
    std::fs::create_dir_all(&dir)?;
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    eprintln!("Building the peer rootfs from {mirror}");
    run(Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--include=linux-image-amd64,systemd-sysv,udev",
            "--customize-hook=echo peer > \"$1/etc/hostname\"",
            // A known root password so the harness can log in on the console.
            "--customize-hook=echo root:peer | chroot \"$1\" chpasswd",
            "bookworm",
        ])
        .arg(&rootfs)
        .arg(&mirror))?;
    let boot = rootfs.join("boot");
    let pick = |prefix: &str| -> Result<PathBuf> {
        std::fs::read_dir(&boot)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("No {prefix}* in {}", boot.display()))
    };
    std::fs::copy(pick("vmlinuz-")?, dir.join("vmlinuz"))?;
    std::fs::copy(pick("initrd.img-")?, dir.join("initrd.img"))?;
    let ext4 = dir.join("root.ext4.tmp");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&rootfs)
        .arg(&ext4)
        .arg("2G"))?;
    std::fs::rename(&ext4, dir.join("root.ext4"))?;
    std::fs::remove_dir_all(&rootfs)?;
    Ok((dir, Some(t.elapsed().as_secs_f64())))
}

/// Boots the peer to its login prompt; on the first run also logs in and
/// reads systemd's RSS (checks the serial shell against a plain Debian).
fn boot_peer(paths: &Paths, peer: &Path, accel: Accel, n: u32, timeout: Duration, r: &mut Report) -> Result<f64> {
    let wd = paths.bench().join(format!("peer-{n}"));
    let vm = Vm::start(&VmSpec {
        boot: Boot::Direct {
            disk: peer.join("root.ext4"),
            kernel: peer.join("vmlinuz"),
            initrd: peer.join("initrd.img"),
            append: "root=/dev/vda rw console=ttyS0,115200".into(),
        },
        workdir: wd.clone(),
        console_log: wd.join("console.log"),
        memory_mib: 2048,
        accel,
        console_port: None,
        agent_port: None,
        detach: false,
    })?;
    let m = vm
        .console
        .wait_for("login:", 0, timeout)
        .map_err(|e| node::with_tail(e.context("The peer did not reach its login prompt"), &vm))?;
    if n == 0 {
        let rss = SerialGuest::login(&vm.console, "root", "peer", Duration::from_secs(120)).and_then(|mut g| {
            g.exec(
                "printf 'peer-systemd '; grep VmRSS /proc/1/status",
                Duration::from_secs(60),
            )
        });
        match rss {
            Ok((_, out)) => r.rss_kib.extend(parse_rss(&out)),
            Err(e) => r.notes.push(format!("peer shell failed: {e:#}")),
        }
    }
    Ok(m.at.as_secs_f64())
}

fn node_boot(paths: &Paths, rt: &tokio::runtime::Runtime, accel: Accel, n: u32, a: &BootArgs) -> Result<node::Node> {
    let wd = paths.bench().join(format!("node-{n}"));
    node::boot(
        rt,
        &NodeOpts {
            image: paths.image(),
            workdir: wd.clone(),
            console_log: wd.join("console.log"),
            memory_mib: 2048,
            accel,
            console_port: None,
            agent_port: None,
            detach: false,
            boot_timeout: Duration::from_secs(a.boot_timeout),
            progress: true,
        },
    )
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub fn boot(paths: &Paths, rt: &tokio::runtime::Runtime, accel: Accel, a: &BootArgs) -> Result<()> {
    let out = paths.bench();
    std::fs::create_dir_all(&out)?;
    let mut r = Report {
        accel: format!("{accel:?}").to_lowercase(),
        ..Report::default()
    };
    let build = !a.no_build && !a.skip_node;
    if !a.skip_cold && build {
        let cache = out.join("cold-cache");
        let img = out.join("cold-image");
        let _ = std::fs::remove_dir_all(&cache);
        let t = node::build_image(paths, &img, Some(&cache))?;
        r.cold_build_s = Some(t.as_secs_f64());
        let _ = std::fs::remove_dir_all(&cache);
        let _ = std::fs::remove_dir_all(&img);
    }
    if build {
        r.warm_build_s = Some(node::build_image(paths, &paths.image(), None)?.as_secs_f64());
    }
    r.slot_img_bytes = size(&paths.image().join("slot.img"));
    r.disk_img_bytes = size(&paths.image().join("disk.img"));

    let node_runs = if a.skip_node { 0 } else { a.runs.max(1) };
    for n in 0..node_runs {
        let node = node_boot(paths, rt, accel, n, a)?;
        r.node_runs.push(NodeRun {
            stages: node
                .vm
                .console
                .stages()
                .iter()
                .map(|(s, t)| (s.to_string(), t.as_secs_f64()))
                .collect(),
            ready_s: node.boot.ready_at.as_secs_f64(),
            agent_s: node.agent_at.as_secs_f64(),
            console_s: node.console_at.as_secs_f64(),
        });
        if n + 1 == node_runs {
            match rss(&node) {
                Ok(v) => r.rss_kib = v,
                Err(e) => r.notes.push(format!("RSS not measured: {e:#}")),
            }
        }
    }

    if !a.skip_peer {
        let (peer, built) = peer_image(paths)?;
        r.peer_build_s = built;
        for n in 0..a.runs.max(1) {
            let t = boot_peer(paths, &peer, accel, n, Duration::from_secs(a.boot_timeout), &mut r)?;
            r.peer_direct_login_s.push(t);
        }
        r.notes
            .push("peer through OVMF+GRUB not measured; FACTS.md puts that path about 8 s above -kernel".into());
    }
    let console = median(&r.node_runs.iter().map(|x| x.console_s).collect::<Vec<_>>());
    if let (Some(c), Some(p)) = (console, median(&r.peer_direct_login_s)) {
        r.ratio_console_to_peer_direct = Some(c / p);
    }
    let json = out.join("boot.json");
    std::fs::write(&json, serde_json::to_string_pretty(&r)?)?;
    print_table(&r);
    println!("Written to {}", json.display());
    Ok(())
}

fn rss(node: &node::Node) -> Result<Vec<(String, u64)>> {
    let (_, pw) = node.admin.clone().context("No admin password marker")?;
    let mut g = SerialGuest::login(&node.vm.console, "root", &pw, Duration::from_secs(120))?;
    let (_, out) = g.exec(
        "for p in debvisor-init debvisor-agent debvisor-webui; do printf '%s ' $p; grep VmRSS /proc/$(pidof -s $p)/status; done",
        Duration::from_secs(60),
    )?;
    Ok(parse_rss(&out))
}

fn print_table(r: &Report) {
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.1} s")).unwrap_or_else(|| "-".into());
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    println!("\nDebVisor boot benchmark ({})", r.accel);
    println!("  {:<38} {}", "cold build", opt(r.cold_build_s));
    println!("  {:<38} {}", "warm build", opt(r.warm_build_s));
    println!("  {:<38} {}", "slot.img", mib(r.slot_img_bytes));
    println!("  {:<38} {}", "disk.img", mib(r.disk_img_bytes));
    for (i, run) in r.node_runs.iter().enumerate() {
        for (s, t) in &run.stages {
            println!("  {:<38} {t:.1} s", format!("run {i}: console shows {s}"));
        }
        println!("  {:<38} {:.1} s", format!("run {i}: DEBVISOR: ready"), run.ready_s);
        println!(
            "  {:<38} {:.1} s",
            format!("run {i}: agent GetStatus over TLS"),
            run.agent_s
        );
        println!(
            "  {:<38} {:.1} s",
            format!("run {i}: console /healthz over HTTPS"),
            run.console_s
        );
    }
    for (name, kib) in &r.rss_kib {
        println!("  {:<38} {:.1} MiB", format!("RSS {name}"), *kib as f64 / 1024.0);
    }
    println!("  {:<38} {}", "peer rootfs build", opt(r.peer_build_s));
    for (i, t) in r.peer_direct_login_s.iter().enumerate() {
        println!("  {:<38} {t:.1} s", format!("run {i}: peer login: (-kernel)"));
    }
    if let Some(ratio) = r.ratio_console_to_peer_direct {
        println!("  {:<38} {ratio:.2} (target <= 1.5)", "console ready / peer login");
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_parse_from_both_formats() {
        let one = "# c\ndeb [arch=amd64] http://m.example/debian bookworm main\n".to_string();
        let deb822 = "Types: deb\nURIs: http://x.example/debian-security\nSuites: bookworm-security\n\n\
                      Types: deb deb-src\nURIs: http://y.example/debian\nSuites: bookworm bookworm-updates\n"
            .to_string();
        assert_eq!(
            mirror_from_sources(std::slice::from_ref(&one), "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            mirror_from_sources(&[String::new(), deb822], "bookworm").as_deref(),
            Some("http://y.example/debian")
        );
        assert_eq!(mirror_from_sources(&[one], "trixie"), None);
    }

    #[test]
    fn rss_lines_parse() {
        let out = "debvisor-init VmRSS:\t    5120 kB\ndebvisor-agent grep: /proc//status: No such file\n";
        assert_eq!(parse_rss(out), vec![("debvisor-init".to_string(), 5120)]);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    }
}
