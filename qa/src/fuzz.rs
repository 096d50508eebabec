//! `debvisor-qa fuzz`: builds the provisioner's fuzz targets with libFuzzer
//! (coverage instrumentation on stable Rust, no sanitizer: the code under
//! test forbids `unsafe`) and runs each for a number of executions, printing
//! libFuzzer's own counts. A crash fails the run and leaves its input in
//! target/fuzz/artifacts/TARGET/.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::node::Paths;

/// The fuzz crate, outside the workspace.
const CRATE: &str = "agent/provision/fuzz";
/// Its targets and the longest input each takes.
const TARGETS: &[(&str, usize)] = &[("dhcp_request", 1500), ("tftp_path", 600)];
const TRIPLE: &str = "x86_64-unknown-linux-gnu";
/// cargo-fuzz's instrumentation flags for `--sanitizer none`.
const RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing";

/// Options of `fuzz`.
#[derive(Debug, Clone, clap::Args)]
pub struct FuzzArgs {
    /// Executions per target.
    #[arg(long, default_value_t = 1_000_000)]
    pub runs: u64,
    /// Only these targets (default: all).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
}

/// Builds and runs the targets; Ok(true) when none crashed.
pub fn fuzz(paths: &Paths, a: &FuzzArgs) -> Result<bool> {
    let dir = paths.root.join("target/fuzz");
    eprintln!("Building the fuzz targets (instrumented, release)");
    let status = Command::new("cargo")
        .args(["build", "--release", "--locked", "--bins", "--target", TRIPLE])
        .current_dir(paths.root.join(CRATE))
        .env("RUSTFLAGS", RUSTFLAGS)
        .env("CARGO_TARGET_DIR", &dir)
        .status()
        .context("Cannot run cargo")?;
    if !status.success() {
        bail!("building the fuzz targets failed (cargo build in {CRATE})");
    }
    let mut ok = true;
    println!("fuzz: {} executions per target (libFuzzer, coverage-guided)", a.runs);
    for &(target, max_len) in TARGETS {
        if !a.targets.is_empty() && !a.targets.iter().any(|t| t == target) {
            continue;
        }
        let corpus = dir.join("corpus").join(target);
        let artifacts = dir.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let t = Instant::now();
        let out = Command::new(dir.join(TRIPLE).join("release").join(target))
            .arg(format!("-runs={}", a.runs))
            .arg(format!("-max_len={max_len}"))
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(&corpus)
            .output()
            .with_context(|| format!("Cannot run fuzz target {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let executed = stat(&log, "stat::number_of_executed_units");
        let secs = t.elapsed().as_secs_f64();
        let crashed = !out.status.success();
        println!(
            "  {target:<14} {:>10} executions in {secs:6.1} s, corpus {} inputs, {}",
            executed.map_or("?".to_string(), |n| n.to_string()),
            count(&corpus),
            if crashed { "CRASH" } else { "no crash" }
        );
        if crashed {
            ok = false;
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("{target} crashed; input in {}:", artifacts.display());
            for l in tail.into_iter().rev() {
                eprintln!("  {l}");
            }
        } else if executed.is_none_or(|n| n < a.runs) {
            ok = false;
            eprintln!("{target}: libFuzzer reported fewer executions than asked ({executed:?})");
        }
    }
    Ok(ok)
}

/// A `stat::NAME: N` line of libFuzzer's final statistics.
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[cfg(test)]
mod tests {
    #[test]
    fn final_stats_parse() {
        let log = "Done 1000000 runs in 10 second(s)\nstat::number_of_executed_units: 1000000\nstat::average_exec_per_sec:     90909\n";
        assert_eq!(super::stat(log, "stat::number_of_executed_units"), Some(1_000_000));
        assert_eq!(super::stat(log, "stat::peak_rss_mb"), None);
    }
}
