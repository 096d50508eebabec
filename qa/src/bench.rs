//! `debvisor-qa bench boot`: cold and warm image builds, image sizes, boot
//! times to ready and to answering services, the resident memory of the
//! DebVisor daemons, and a plain Debian peer booted under the same QEMU
//! settings for comparison. Reports figures; asserts nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::node::{self, NodeOpts, Paths};
use crate::peer;
use crate::qemu::{Accel, Boot, Nic, Vm, VmSpec};
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
    /// Peer booted with -kernel/-initrd from its ext4 root.
    peer_direct_login_s: Vec<f64>,
    /// Peer booted through the same OVMF firmware and a standalone GRUB.
    peer_uefi_login_s: Vec<f64>,
    /// Median console-answering time over median peer login time.
    ratio_console_to_peer_direct: Option<f64>,
    ratio_console_to_peer_uefi: Option<f64>,
    notes: Vec<String>,
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| {
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    })
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

/// Boots the peer to its login prompt; on the first run also logs in and
/// reads systemd's RSS (checks the serial shell against a plain Debian).
fn boot_peer(paths: &Paths, boot: Boot, n: u32, accel: Accel, timeout: Duration, r: &mut Report) -> Result<f64> {
    let kind = if matches!(boot, Boot::Uefi { .. }) {
        "uefi"
    } else {
        "direct"
    };
    let wd = paths.bench().join(format!("peer-{kind}-{n}"));
    let vm = Vm::start(&VmSpec {
        boot,
        workdir: wd.clone(),
        console_log: wd.join("console.log"),
        memory_mib: 2048,
        accel,
        console_port: None,
        agent_port: None,
        detach: false,
        nic: Nic::User,
    })?;
    let m = vm
        .console
        .wait_for("login:", 0, timeout)
        .map_err(|e| node::with_tail(e.context("The peer did not reach its login prompt"), &vm))?;
    if n == 0 && kind == "direct" {
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
        let t = Instant::now();
        let (dir, built) = peer::peer_image(paths)?;
        let uefi = peer::peer_uefi_disk(&dir);
        r.peer_build_s = built.map(|_| t.elapsed().as_secs_f64());
        let timeout = Duration::from_secs(a.boot_timeout);
        for n in 0..a.runs.max(1) {
            let direct = Boot::Direct {
                disk: dir.join("root.ext4"),
                kernel: dir.join("vmlinuz"),
                initrd: dir.join("initrd.img"),
                append: "root=/dev/vda rw console=ttyS0,115200".into(),
            };
            let t = boot_peer(paths, direct, n, accel, timeout, &mut r)?;
            r.peer_direct_login_s.push(t);
            match &uefi {
                Ok(disk) => match boot_peer(paths, Boot::Uefi { disk: disk.clone() }, n, accel, timeout, &mut r) {
                    Ok(t) => r.peer_uefi_login_s.push(t),
                    Err(e) => r.notes.push(format!("peer through OVMF failed: {e:#}")),
                },
                Err(e) if n == 0 => r.notes.push(format!("peer UEFI disk not built: {e:#}")),
                Err(_) => {}
            }
        }
    }
    let console = median(&r.node_runs.iter().map(|x| x.console_s).collect::<Vec<_>>());
    if let (Some(c), Some(p)) = (console, median(&r.peer_direct_login_s)) {
        r.ratio_console_to_peer_direct = Some(c / p);
    }
    if let (Some(c), Some(p)) = (console, median(&r.peer_uefi_login_s)) {
        r.ratio_console_to_peer_uefi = Some(c / p);
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
    for (i, t) in r.peer_uefi_login_s.iter().enumerate() {
        println!("  {:<38} {t:.1} s", format!("run {i}: peer login: (OVMF+GRUB)"));
    }
    if let Some(ratio) = r.ratio_console_to_peer_direct {
        println!(
            "  {:<38} {ratio:.2} (target <= 1.5)",
            "console answers / peer login (-kernel)"
        );
    }
    if let Some(ratio) = r.ratio_console_to_peer_uefi {
        println!(
            "  {:<38} {ratio:.2} (like with like)",
            "console answers / peer login (OVMF)"
        );
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_lines_parse() {
        let out = "debvisor-init VmRSS:\t    5120 kB\ndebvisor-agent grep: /proc//status: No such file\n";
        assert_eq!(parse_rss(out), vec![("debvisor-init".to_string(), 5120)]);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
