//! `update status|install|watch|rollback|mark-good|mark-bad`
//! (debvisor.update.v1).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use debvisor_api::update::phase_word;
use debvisor_api::update::v1::update_service_client::UpdateServiceClient;
use debvisor_api::update::v1::{
    ErrorKind, GetSlotsRequest, InstallProgress, InstallRequest, MarkRequest, MarkResponse, Phase, RollbackRequest,
    SlotsState, UploadChunk, UploadHeader, WatchInstallRequest,
};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::Digest;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;
use tonic::{Request, Streaming};

use crate::UsageError;
use crate::cli::{InstallArgs, MarkArgs, UpdateCmd};
use crate::output::{self, Table, bytes, or_dash, render_kv};
use crate::rpc::Ctx;
use crate::timefmt::format_unix_ms;

/// Bytes of bundle per upload message: well under the agent's 1 MiB
/// message limit.
const CHUNK: usize = 512 * 1024;

fn client(ctx: &Ctx) -> UpdateServiceClient<Channel> {
    UpdateServiceClient::new(ctx.channel.clone())
}

/// Runs one `update` subcommand.
pub async fn run(ctx: &Ctx, cmd: &UpdateCmd) -> anyhow::Result<()> {
    match cmd {
        UpdateCmd::Status => status(ctx).await,
        UpdateCmd::Install(args) => install(ctx, args).await,
        UpdateCmd::Watch => watch(ctx).await,
        UpdateCmd::Rollback => {
            let r = ctx
                .call(client(ctx).rollback(ctx.req(RollbackRequest {})))
                .await
                .context("Cannot roll back")?;
            marked(ctx, &r, "Rolled back: ")
        }
        UpdateCmd::MarkGood(a) => mark(ctx, a, true).await,
        UpdateCmd::MarkBad(a) => mark(ctx, a, false).await,
    }
}

async fn status(ctx: &Ctx) -> anyhow::Result<()> {
    let st = ctx
        .call(client(ctx).get_slots(ctx.req(GetSlotsRequest {})))
        .await
        .context("Cannot read the slots")?;
    if ctx.json {
        output::json(&st)
    } else {
        Ok(output::out(&render_status(&st))?)
    }
}

/// The slot summary, the slot table and the last install.
pub fn render_status(st: &SlotsState) -> String {
    let mut out = String::new();
    if st.simulated {
        out.push_str("*** SIMULATED NODE: no RAUC, the slots are made up ***\n");
    }
    let booted_mark = if st.booted_good {
        "good"
    } else {
        "NOT MARKED GOOD (installs are refused until it is)"
    };
    let mut rows = vec![
        ("COMPATIBLE".to_string(), or_dash(&st.compatible)),
        (
            "BOOTED".to_string(),
            format!(
                "{} ({}), {booted_mark}",
                or_dash(&st.booted_slot),
                or_dash(&st.booted_bootname)
            ),
        ),
        (
            "NEXT BOOT".to_string(),
            if st.primary_slot.is_empty() {
                format!("unknown ({})", or_dash(&st.primary_error))
            } else {
                st.primary_slot.clone()
            },
        ),
        ("RAUC".to_string(), or_dash(&st.operation)),
    ];
    if !st.last_error.is_empty() {
        rows.push(("LAST ERROR".into(), st.last_error.clone()));
    }
    if !st.trial_error.is_empty() {
        rows.push(("TRIAL BOOTS".into(), format!("unknown: {}", st.trial_error)));
    }
    if !st.slots_note.is_empty() {
        rows.push(("SLOTS".into(), st.slots_note.clone()));
    }
    if let Some(p) = &st.install {
        rows.push(("INSTALL".into(), install_line(p)));
    }
    out.push_str(&render_kv(&rows));
    out.push('\n');
    let mut t = Table::new(&[
        "SLOT",
        "BOOT",
        "STATE",
        "MARK",
        "NEXT",
        "VERSION",
        "INSTALLED",
        "DEVICE",
    ]);
    for s in &st.slots {
        t.row(vec![
            s.name.clone(),
            or_dash(&s.bootname),
            s.state.clone(),
            if s.trying {
                "on trial".into()
            } else {
                or_dash(&s.boot_status)
            },
            if s.primary { "yes".into() } else { String::new() },
            or_dash(&s.bundle_version),
            if s.installed_unix_s > 0 {
                format_unix_ms(s.installed_unix_s.saturating_mul(1000))
            } else {
                "-".into()
            },
            s.device.clone(),
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');
    out
}

/// `install-2 of URL by admin: done, rootfs.1 0.2.0`.
fn install_line(p: &InstallProgress) -> String {
    let state = match Phase::try_from(p.phase) {
        Ok(Phase::Done) => format!("done, {} {}", p.target_slot, p.bundle_version),
        Ok(Phase::Failed) => format!("FAILED ({}): {}", kind_name(p.error_kind), p.error),
        _ => format!("{} {}%: {}", phase_word(p.phase), p.percent, p.message),
    };
    format!("{} of {} by {}: {state}", p.job_id, p.source, p.started_by)
}

fn kind_name(kind: i32) -> &'static str {
    match ErrorKind::try_from(kind) {
        Ok(ErrorKind::BadSignature) => "bad signature",
        Ok(ErrorKind::WrongCompatible) => "wrong compatible",
        Ok(ErrorKind::NotEnoughSpace) => "not enough space",
        Ok(ErrorKind::DownloadFailed) => "download failed",
        Ok(ErrorKind::UploadFailed) => "upload failed",
        Ok(ErrorKind::ChecksumMismatch) => "checksum mismatch",
        Ok(ErrorKind::InvalidBundle) => "invalid bundle",
        Ok(ErrorKind::RaucUnavailable) => "RAUC unavailable",
        _ => "install failed",
    }
}

/// What to do after a failure of `kind`.
fn next_step(kind: i32) -> &'static str {
    match ErrorKind::try_from(kind) {
        Ok(ErrorKind::BadSignature) => {
            "Use a bundle signed with the key whose CA is in the node's keyring, and check that the file is complete."
        }
        Ok(ErrorKind::WrongCompatible) => {
            "Build the bundle for this kind of node (`debvisorctl update status` shows its compatible string)."
        }
        Ok(ErrorKind::NotEnoughSpace) => "Free space on the node's data partition, or use a smaller bundle.",
        Ok(ErrorKind::DownloadFailed) => "Check the URL from the node's point of view (DNS, routes, TLS) and retry.",
        Ok(ErrorKind::UploadFailed) | Ok(ErrorKind::ChecksumMismatch) => "Retry; the bundle did not arrive intact.",
        Ok(ErrorKind::RaucUnavailable) => "Check `systemctl status rauc` on the node and retry.",
        _ => "See `journalctl -u rauc -u debvisor-agent` on the node.",
    }
}

/// A failed install, printed with its class and the next step.
#[derive(Debug, thiserror::Error)]
#[error("Install {job} failed ({kind}): {error}\n  next: {next}")]
struct InstallFailed {
    job: String,
    kind: &'static str,
    error: String,
    next: &'static str,
}

async fn install(ctx: &Ctx, args: &InstallArgs) -> anyhow::Result<()> {
    let src = args.source.as_str();
    let sha256 = match &args.sha256 {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Some(h.to_ascii_lowercase()),
        Some(h) => return Err(UsageError(format!("--sha256 {h:?} is not 64 hex digits")).into()),
        None => None,
    };
    let mut c = client(ctx);
    // No grpc-timeout: an install may take longer than --timeout.
    let stream = if src.starts_with("http://") || src.starts_with("https://") {
        let req = Request::new(InstallRequest {
            url: src.to_string(),
            sha256: sha256.unwrap_or_default(),
        });
        ctx.call(c.install(req)).await
    } else {
        let path = Path::new(src);
        let meta = std::fs::metadata(path).map_err(|e| {
            UsageError(format!(
                "{src:?} is neither an http(s) URL nor a readable bundle file ({e})"
            ))
        })?;
        if !meta.is_file() {
            return Err(UsageError(format!("{src:?} is not a file")).into());
        }
        let sha256 = match sha256 {
            Some(h) => h,
            None => file_sha256(path).await.with_context(|| format!("Cannot read {src}"))?,
        };
        let chunks = upload_chunks(path, meta.len(), sha256)
            .await
            .with_context(|| format!("Cannot read {src}"))?;
        ctx.call(c.upload(Request::new(chunks))).await
    }
    .with_context(|| format!("Cannot install {src}"))?;
    follow(ctx, stream).await
}

async fn watch(ctx: &Ctx) -> anyhow::Result<()> {
    let stream = ctx
        .call(client(ctx).watch_install(Request::new(WatchInstallRequest {})))
        .await
        .context("Cannot follow the install")?;
    follow(ctx, stream).await
}

/// The sha256 of the file at `path`, hex.
async fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The upload messages of the file at `path`: the header with the first
/// data, then the rest in [`CHUNK`]s. A read error ends the stream early;
/// the agent then reports the upload as incomplete.
async fn upload_chunks(
    path: &Path,
    size: u64,
    sha256: String,
) -> std::io::Result<impl futures_util::Stream<Item = UploadChunk> + Send + 'static> {
    let file = tokio::fs::File::open(path).await?;
    let header = Some(UploadHeader {
        size_bytes: size,
        sha256,
        filename: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    });
    Ok(futures_util::stream::unfold(
        (file, header, false),
        |(mut file, mut header, done)| async move {
            if done {
                return None;
            }
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0;
            // Fill the chunk (reads may return less).
            while n < CHUNK {
                match file.read(&mut buf[n..]).await {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => {
                        eprintln!("debvisorctl: reading the bundle failed: {e}");
                        return None;
                    }
                }
            }
            if n == 0 && header.is_none() {
                return None;
            }
            buf.truncate(n);
            let end = n < CHUNK;
            Some((
                UploadChunk {
                    header: header.take(),
                    data: buf,
                },
                (file, header, end),
            ))
        },
    ))
}

/// Follows a progress stream to its end: a progress bar on stderr (JSON
/// lines with --json), then the outcome.
async fn follow(ctx: &Ctx, mut stream: Streaming<InstallProgress>) -> anyhow::Result<()> {
    let bar = Bar::new(ctx.json);
    let mut last: Option<InstallProgress> = None;
    let mut interrupts = crate::rpc::interrupts().context("Cannot catch Ctrl-C")?;
    loop {
        let next = tokio::select! {
            n = ctx.next_follow(&mut stream) => n.context("The install's progress stream broke")?,
            _ = interrupts.recv() => {
                bar.clear();
                eprintln!("Stopped following; the install goes on. `debvisorctl update watch` follows it again.");
                return Ok(());
            }
        };
        let Some(p) = next else { break };
        if ctx.json {
            output::json(&p)?;
        } else {
            bar.show(&p);
        }
        last = Some(p);
    }
    bar.clear();
    let p = last.context("The agent ended the progress stream without a message")?;
    match Phase::try_from(p.phase) {
        Ok(Phase::Done) => {
            if !ctx.json {
                output::out(&format!(
                    "Installed {} into {} ({} received). Reboot to run it: `debvisorctl reboot`.\n",
                    or_dash(&p.bundle_version),
                    p.target_slot,
                    bytes(p.bytes_done)
                ))?;
            }
            Ok(())
        }
        Ok(Phase::Failed) => Err(InstallFailed {
            job: p.job_id.clone(),
            kind: kind_name(p.error_kind),
            error: p.error.clone(),
            next: next_step(p.error_kind),
        }
        .into()),
        _ => anyhow::bail!(
            "The progress stream of {} ended while it was {}; `debvisorctl update watch` follows it again",
            p.job_id,
            phase_word(p.phase)
        ),
    }
}

/// The progress bar: bytes while downloading, RAUC's percentage after.
struct Bar {
    pb: ProgressBar,
    bytes_style: Option<ProgressStyle>,
    percent_style: Option<ProgressStyle>,
}

impl Bar {
    fn new(hidden: bool) -> Self {
        let pb = if hidden {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(100)
        };
        pb.enable_steady_tick(Duration::from_millis(200));
        Self {
            pb,
            bytes_style: ProgressStyle::with_template(
                "{prefix:>11} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
            )
            .ok()
            .map(|s| s.progress_chars("=> ")),
            percent_style: ProgressStyle::with_template("{prefix:>11} [{bar:30}] {pos:>3}% {msg}")
                .ok()
                .map(|s| s.progress_chars("=> ")),
        }
    }

    fn show(&self, p: &InstallProgress) {
        self.pb.set_prefix(phase_word(p.phase));
        if p.phase == Phase::Downloading as i32 && p.bytes_total > 0 {
            if let Some(s) = &self.bytes_style {
                self.pb.set_style(s.clone());
            }
            self.pb.set_length(p.bytes_total);
            self.pb.set_position(p.bytes_done);
        } else {
            if let Some(s) = &self.percent_style {
                self.pb.set_style(s.clone());
            }
            self.pb.set_length(100);
            self.pb.set_position(u64::from(p.percent));
        }
        self.pb.set_message(p.message.clone());
    }

    fn clear(&self) {
        self.pb.finish_and_clear();
    }
}

async fn mark(ctx: &Ctx, args: &MarkArgs, good: bool) -> anyhow::Result<()> {
    let req = ctx.req(MarkRequest {
        slot: args.slot.clone(),
    });
    let mut c = client(ctx);
    let r = if good {
        ctx.call(c.mark_good(req)).await
    } else {
        ctx.call(c.mark_bad(req)).await
    }
    .with_context(|| format!("Cannot mark {} {}", args.slot, if good { "good" } else { "bad" }))?;
    marked(ctx, &r, "")
}

fn marked(ctx: &Ctx, r: &MarkResponse, prefix: &str) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(r);
    }
    let mut text = format!("{prefix}{}.\n", r.message);
    if let Some(st) = &r.state
        && !st.primary_slot.is_empty()
    {
        text.push_str(&format!("Next boot: {}.\n", st.primary_slot));
    }
    Ok(output::out(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use debvisor_api::update::v1::Slot;

    #[test]
    fn status_table() {
        let st = SlotsState {
            compatible: "debvisor-node-x86_64".into(),
            booted_bootname: "A".into(),
            booted_slot: "rootfs.0".into(),
            primary_slot: "rootfs.1".into(),
            booted_good: true,
            operation: "idle".into(),
            slots: vec![
                Slot {
                    name: "rootfs.0".into(),
                    bootname: "A".into(),
                    state: "booted".into(),
                    boot_status: "good".into(),
                    device: "/dev/disk/by-partlabel/root_a".into(),
                    ..Default::default()
                },
                Slot {
                    name: "rootfs.1".into(),
                    bootname: "B".into(),
                    state: "inactive".into(),
                    boot_status: "good".into(),
                    primary: true,
                    bundle_version: "0.2.0".into(),
                    installed_unix_s: 1_746_100_800,
                    device: "/dev/disk/by-partlabel/root_b".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let out = render_status(&st);
        assert!(out.contains("BOOTED      rootfs.0 (A), good\n"), "{out}");
        assert!(out.contains("NEXT BOOT   rootfs.1\n"), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        let head = lines.iter().position(|l| l.starts_with("SLOT")).unwrap();
        assert!(lines[head + 1].starts_with("rootfs.0  A     booted    good  "), "{out}");
        assert!(lines[head + 2].contains("yes   0.2.0    2025-05-01"), "{out}");
    }
}
