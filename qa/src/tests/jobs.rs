//! `debvisor-qa test --jobs N`: the VM tests in up to N child processes at
//! once. A booting guest under TCG keeps about one and a half of this
//! machine's two cores busy, so two at a time use what one leaves idle.
//!
//! A group is what one child runs, in order: a single VM test, or all the
//! tests that share one node ([`Kind::SharedVm`]). Each child is this
//! program (`test --no-build --image IMG NAMES...`) with its output in
//! target/qa/artifacts/runs/GROUP.log, printed whole when the child ends, so
//! that the output of one test is never interleaved with another's.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Kind, Test, TestArgs};
use crate::node::Paths;
use crate::qemu::Accel;

/// Tests that one child runs in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub names: Vec<&'static str>,
}

impl Group {
    fn label(&self) -> String {
        match self.names.as_slice() {
            [one] => (*one).to_string(),
            [first, ..] => format!("{first}+{}", self.names.len() - 1),
            [] => String::new(),
        }
    }
}

/// The VM tests of `selected` as groups, in the order they start: the
/// longest first (`longest` names them), so that the last to end is short.
/// Host tests are not grouped (they run first, in this process).
pub fn groups(selected: &[&Test], longest: &[&str]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut shared: Option<Group> = None;
    for t in selected {
        match t.kind {
            Kind::Host => {}
            Kind::SharedVm => shared
                .get_or_insert_with(|| Group { names: Vec::new() })
                .names
                .push(t.name),
            Kind::Vm => out.push(Group { names: vec![t.name] }),
        }
    }
    out.extend(shared);
    // Stable: the suite's order among the rest.
    out.sort_by_key(|g| {
        longest
            .iter()
            .position(|l| g.names.contains(l))
            .unwrap_or(longest.len())
    });
    out
}

/// The counts a child printed as its last `N passed, N failed` line.
pub fn counts(log: &str) -> Option<(usize, usize)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(" passed, ") && l.ends_with(" failed"))?;
    let mut words = line.split_whitespace();
    let passed = words.next()?.parse().ok()?;
    let failed = words.nth(1)?.parse().ok()?;
    Some((passed, failed))
}

struct Running {
    group: Group,
    child: Child,
    log: PathBuf,
    started: Instant,
}

/// Runs `groups` in child processes, at most `jobs` at a time, against the
/// already built `image`; prints each child's output when it ends. Returns
/// (passed, failed); a child that ends without its counts counts its
/// tests as failed.
pub fn run(
    paths: &Paths,
    accel: Accel,
    a: &TestArgs,
    image: &Path,
    groups: Vec<Group>,
    jobs: usize,
) -> Result<(usize, usize)> {
    let exe = std::env::current_exe().context("Cannot find this program to run the test groups")?;
    let dir = paths.artifacts().join("runs");
    std::fs::create_dir_all(&dir).with_context(|| format!("Cannot create {}", dir.display()))?;
    let (mut passed, mut failed) = (0, 0);
    let mut waiting = groups.into_iter();
    let mut running: Vec<Running> = Vec::new();
    loop {
        while running.len() < jobs.max(1) {
            let Some(group) = waiting.next() else { break };
            let log = dir.join(format!("{}.log", group.label()));
            let out = File::create(&log).with_context(|| format!("Cannot create {}", log.display()))?;
            let err = out.try_clone()?;
            let child = Command::new(&exe)
                .args(["--accel", accel_arg(accel), "test", "--no-build", "--jobs", "1"])
                .arg("--image")
                .arg(image)
                .args(["--boot-timeout", &a.boot_timeout.to_string()])
                .args(["--memory", &a.memory.to_string()])
                .args(&group.names)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| format!("Cannot start {} for {}", exe.display(), group.label()))?;
            eprintln!("START {} (log: {})", group.names.join(", "), log.display());
            running.push(Running {
                group,
                child,
                log,
                started: Instant::now(),
            });
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut i = 0;
        while i < running.len() {
            let Some(status) = running[i].child.try_wait()? else {
                i += 1;
                continue;
            };
            let r = running.swap_remove(i);
            let text = std::fs::read_to_string(&r.log).unwrap_or_default();
            println!(
                "---- {} ({:.1} s, {status}) ----",
                r.group.names.join(", "),
                r.started.elapsed().as_secs_f64()
            );
            print!("{text}");
            match counts(&text) {
                Some((p, f)) => {
                    passed += p;
                    failed += f;
                }
                None => {
                    println!("FAIL {}: the run ended without its counts ({status})", r.group.label());
                    failed += r.group.names.len();
                }
            }
        }
    }
    Ok((passed, failed))
}

fn accel_arg(accel: Accel) -> &'static str {
    match accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &'static str, kind: Kind) -> Test {
        Test {
            name,
            what: "",
            kind,
            run: |_| Ok(()),
        }
    }

    #[test]
    fn shared_tests_form_one_group_and_the_longest_start_first() {
        let all = [
            t("host_a", Kind::Host),
            t("boots", Kind::SharedVm),
            t("reboot", Kind::SharedVm),
            t("vm_a", Kind::Vm),
            t("vm_b", Kind::Vm),
            t("long", Kind::Vm),
        ];
        let selected: Vec<&Test> = all.iter().collect();
        let g = groups(&selected, &["long", "vm_b"]);
        let names: Vec<Vec<&str>> = g.iter().map(|g| g.names.clone()).collect();
        assert_eq!(
            names,
            [vec!["long"], vec!["vm_b"], vec!["vm_a"], vec!["boots", "reboot"]]
        );
        assert_eq!(g[3].label(), "boots+1");
    }

    #[test]
    fn counts_come_from_the_last_summary_line() {
        assert_eq!(counts("RUN x\nPASS x (1.0 s)\n1 passed, 0 failed\n"), Some((1, 0)));
        assert_eq!(counts("2 passed, 1 failed\nnoise\n3 passed, 2 failed\n"), Some((3, 2)));
        assert_eq!(counts("RUN x\nthread panicked\n"), None);
        assert_eq!(counts("x passed, y failed\n"), None);
    }
}
