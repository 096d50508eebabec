//! `audit query|export|verify` (debvisor.audit.v1).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use debvisor_api::audit::v1::audit_service_client::AuditServiceClient;
use debvisor_api::audit::v1::{
    ExportRequest, Format, QueryRequest, QueryResponse, Record, Result as AuditResult, VerifyRequest, VerifyResponse,
};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::Channel;

use crate::cli::{AuditCmd, AuditFilter, ExportArgs, ExportFormat, Outcome, QueryArgs};
use crate::output::{self, Table, or_dash};
use crate::rpc::Ctx;
use crate::timefmt::{format_unix_ms, to_unix_ms};

/// The exit code of `audit verify` when the chain is broken.
pub const EXIT_CHAIN_BROKEN: u8 = 3;

fn client(ctx: &Ctx) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(ctx.channel.clone())
}

/// Runs one `audit` subcommand; returns the exit code.
pub async fn run(ctx: &Ctx, cmd: &AuditCmd) -> anyhow::Result<u8> {
    match cmd {
        AuditCmd::Query(args) => query(ctx, args).await.map(|()| 0),
        AuditCmd::Export(args) => export(ctx, args).await.map(|()| 0),
        AuditCmd::Verify => verify(ctx).await,
    }
}

/// The wire filter of the command-line filters.
pub fn filter_request(f: &AuditFilter) -> QueryRequest {
    QueryRequest {
        actor: f.actor.clone().unwrap_or_default(),
        action: f.action.clone().unwrap_or_default(),
        target: f.target.clone().unwrap_or_default(),
        result: match f.result {
            None => AuditResult::Any,
            Some(Outcome::Ok) => AuditResult::Ok,
            Some(Outcome::Error) => AuditResult::Error,
        } as i32,
        since_unix_ms: f.since.map(to_unix_ms).unwrap_or(0),
        until_unix_ms: f.until.map(to_unix_ms).unwrap_or(0),
        page_size: 0,
        page_token: String::new(),
    }
}

async fn query(ctx: &Ctx, args: &QueryArgs) -> anyhow::Result<()> {
    let mut req = filter_request(&args.filter);
    req.page_size = args.limit.unwrap_or(0);
    let mut all = QueryResponse::default();
    loop {
        let page = ctx
            .call(client(ctx).query(ctx.req(req.clone())))
            .await
            .context("Cannot query the audit log")?;
        all.total_matching = page.total_matching;
        all.records.extend(page.records);
        all.next_page_token = page.next_page_token;
        if !args.all || all.next_page_token.is_empty() {
            break;
        }
        req.page_token = all.next_page_token.clone();
    }
    if ctx.json {
        return output::json(&all);
    }
    output::out(&render_records(&all.records))?;
    if !all.next_page_token.is_empty() {
        eprintln!(
            "Showing {} of {} matching records, newest first; pass --all for every page or narrow the filters.",
            all.records.len(),
            all.total_matching
        );
    }
    Ok(())
}

/// Records as a table: SEQ TIME ACTOR SOURCE ACTION TARGET RESULT ERROR.
pub fn render_records(records: &[Record]) -> String {
    if records.is_empty() {
        return "No audit records match.\n".to_string();
    }
    let mut t = Table::new(&["SEQ", "TIME", "ACTOR", "SOURCE", "ACTION", "TARGET", "RESULT", "ERROR"]);
    for r in records {
        t.row(vec![
            r.seq.to_string(),
            format_unix_ms(r.time_unix_ms),
            r.actor.clone(),
            r.source.clone(),
            r.action.clone(),
            or_dash(&r.target),
            if r.ok { "ok" } else { "error" }.to_string(),
            r.error.clone(),
        ]);
    }
    t.render()
}

async fn export(ctx: &Ctx, args: &ExportArgs) -> anyhow::Result<()> {
    let req = ExportRequest {
        filter: Some(filter_request(&args.filter)),
        format: match args.format {
            ExportFormat::Jsonl => Format::Jsonl,
            ExportFormat::Csv => Format::Csv,
        } as i32,
    };
    let mut stream = ctx
        .call(client(ctx).export(ctx.req(req)))
        .await
        .context("Cannot export the audit log")?;
    let Some(path) = &args.output else {
        let mut stdout = std::io::stdout().lock();
        while let Some(chunk) = ctx.next(&mut stream).await.context("The export stream failed")? {
            stdout.write_all(&chunk.data)?;
        }
        return Ok(stdout.flush()?);
    };
    // Written beside the target and renamed at the end, so that FILE is
    // either a complete export or untouched.
    let part = part_path(path);
    let result = async {
        let mut file = std::fs::File::create(&part).with_context(|| format!("Cannot create {}", part.display()))?;
        let pb = progress(ctx);
        while let Some(chunk) = ctx.next(&mut stream).await.context("The export stream failed")? {
            file.write_all(&chunk.data)
                .with_context(|| format!("Cannot write {}", part.display()))?;
            pb.inc(chunk.data.len() as u64);
        }
        pb.finish_and_clear();
        file.sync_all()
            .with_context(|| format!("Cannot write {}", part.display()))?;
        std::fs::rename(&part, path)
            .with_context(|| format!("Cannot rename {} to {}", part.display(), path.display()))?;
        anyhow::Ok(pb.position())
    }
    .await;
    match result {
        Ok(n) => {
            if !ctx.json {
                eprintln!("Wrote {} to {}.", output::bytes(n), path.display());
            }
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// A byte counter on stderr (the size is not known in advance).
fn progress(ctx: &Ctx) -> ProgressBar {
    if ctx.json {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} Exporting: {bytes} ({binary_bytes_per_sec}), {elapsed}")
    {
        pb.set_style(style);
    }
    pb.enable_steady_tick(std::time::Duration::from_millis(100));
    pb
}

async fn verify(ctx: &Ctx) -> anyhow::Result<u8> {
    let v = ctx
        .call(client(ctx).verify(ctx.req(VerifyRequest {})))
        .await
        .context("Cannot verify the audit log")?;
    if ctx.json {
        output::json(&v)?;
    } else {
        output::out(&render_verify(&v))?;
    }
    Ok(if v.ok { 0 } else { EXIT_CHAIN_BROKEN })
}

/// The verdict in one line.
pub fn render_verify(v: &VerifyResponse) -> String {
    if v.ok {
        format!(
            "Audit chain intact: {} records, head #{} {}\n",
            v.records,
            v.head_seq,
            or_dash(&v.head_hash)
        )
    } else {
        format!("AUDIT CHAIN BROKEN at record #{}: {}\n", v.first_bad_seq, v.problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn records_table_has_every_column() {
        let r = Record {
            seq: 7,
            time_unix_ms: 1_746_100_800_000,
            actor: "uid:0".into(),
            source: "unix:pid=42".into(),
            action: "units.Restart".into(),
            target: "ssh.service".into(),
            ok: false,
            error: "job failed".into(),
            prev_hash: "0".repeat(64),
            hash: "f".repeat(64),
        };
        let ok = Record {
            seq: 6,
            ok: true,
            error: String::new(),
            target: String::new(),
            action: "node.Reboot".into(),
            ..r.clone()
        };
        assert_eq!(
            render_records(&[r, ok]),
            "SEQ  TIME                       ACTOR  SOURCE       ACTION         TARGET       RESULT  ERROR\n\
             7    2025-05-01T12:00:00+00:00  uid:0  unix:pid=42  units.Restart  ssh.service  error   job failed\n\
             6    2025-05-01T12:00:00+00:00  uid:0  unix:pid=42  node.Reboot    -            ok\n"
        );
        assert_eq!(render_records(&[]), "No audit records match.\n");
    }

    #[test]
    fn filters_map_to_the_wire() {
        let f = AuditFilter {
            actor: Some("admin".into()),
            action: Some("units.*".into()),
            target: None,
            result: Some(Outcome::Error),
            since: Some(datetime!(2025-05-01 12:00:00 UTC)),
            until: None,
        };
        let q = filter_request(&f);
        assert_eq!(q.actor, "admin");
        assert_eq!(q.action, "units.*");
        assert_eq!(q.result, AuditResult::Error as i32);
        assert_eq!(q.since_unix_ms, 1_746_100_800_000);
        assert_eq!(q.until_unix_ms, 0);
    }

    #[test]
    fn verify_verdicts() {
        let ok = VerifyResponse {
            ok: true,
            records: 12,
            head_seq: 12,
            head_hash: "abc".into(),
            ..Default::default()
        };
        assert_eq!(render_verify(&ok), "Audit chain intact: 12 records, head #12 abc\n");
        let bad = VerifyResponse {
            ok: false,
            problem: "hash mismatch".into(),
            first_bad_seq: 5,
            ..Default::default()
        };
        assert_eq!(render_verify(&bad), "AUDIT CHAIN BROKEN at record #5: hash mismatch\n");
        assert_eq!(part_path(Path::new("/tmp/a.csv")), Path::new("/tmp/a.csv.part"));
    }
}
