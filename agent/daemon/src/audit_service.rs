//! `debvisor.audit.v1.AuditService` over the hash-chained store, and
//! [`Auditor`], through which every mutating call of every service records
//! its outcome. `Record` lets the local console (and root) append what its
//! users do that is no agent call: signing in and out, managing users.

use std::pin::Pin;

use debvisor_api::audit::v1::audit_service_server::AuditService;
use debvisor_api::audit::v1::{
    ExportChunk, ExportRequest, Format, QueryRequest, QueryResponse, Record, RecordRequest, RecordResponse,
    Result as ResultFilter, VerifyRequest, VerifyResponse,
};
use debvisor_audit::{AuditError, AuditLog, AuditRecord, ChainProblem, NewEntry, Outcome, Query};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::Caller;

/// Largest piece of an export sent in one message.
const CHUNK: usize = 64 * 1024;

/// Records the outcome of mutating calls.
#[derive(Clone)]
pub struct Auditor {
    log: AuditLog,
}

impl Auditor {
    /// An auditor writing to `log`.
    pub fn new(log: AuditLog) -> Self {
        Self { log }
    }

    /// The store, for the audit service.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// Records that `caller` did `action` on `target` with `result`, and
    /// passes `result` on. If the record cannot be written the caller is told
    /// so (the action itself has happened by then; the error says that).
    pub async fn record<T>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(s) => Outcome::Error(format!("{:?}: {}", s.code(), s.message())),
        };
        let entry = NewEntry {
            actor: caller.actor.clone(),
            source: caller.source.clone(),
            action: action.to_string(),
            target: target.to_string(),
            outcome,
        };
        if let Err(e) = self.log.append(entry).await {
            tracing::error!(action, target, actor = %caller.actor, "audit record not written: {e}");
            if result.is_ok() {
                return Err(Status::internal(format!(
                    "{action} on {target:?} was done, but the audit log could not record it: {e}"
                )));
            }
        }
        result
    }

    /// Runs `op` for `caller` and records it as `action` on `target`: the
    /// common shape of every mutating call.
    pub async fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        op: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let result = op.await;
        self.record(caller, action, target, result).await.map(Response::new)
    }
}

/// The wire status of an audit store failure.
fn audit_status(e: AuditError) -> Status {
    let msg = crate::error_chain(&e);
    match e {
        AuditError::BadPageToken { .. } | AuditError::InvalidEntry { .. } => Status::invalid_argument(msg),
        AuditError::CreateDir { .. }
        | AuditError::Open { .. }
        | AuditError::UnsupportedSchema { .. }
        | AuditError::Database { .. }
        | AuditError::Clock => Status::unavailable(msg),
    }
}

fn first_bad_seq(p: &ChainProblem) -> i64 {
    match p {
        ChainProblem::HashMismatch { seq } | ChainProblem::BrokenLink { seq } => *seq,
        ChainProblem::Gap { next_seq, .. } => *next_seq,
    }
}

/// The audit service.
#[derive(Clone)]
pub struct AuditApi {
    log: AuditLog,
}

impl AuditApi {
    /// Serves `log`.
    pub fn new(log: AuditLog) -> Self {
        Self { log }
    }
}

fn query_of(r: QueryRequest) -> Result<Query, Status> {
    let opt = |s: String| (!s.is_empty()).then_some(s);
    let ok = match ResultFilter::try_from(r.result) {
        Ok(ResultFilter::Any) => None,
        Ok(ResultFilter::Ok) => Some(true),
        Ok(ResultFilter::Error) => Some(false),
        Err(_) => return Err(Status::invalid_argument(format!("result: unknown value {}", r.result))),
    };
    if r.page_size > 1000 {
        return Err(Status::invalid_argument(format!(
            "page_size: {} is above the maximum of 1000",
            r.page_size
        )));
    }
    for (field, v) in [("actor", &r.actor), ("action", &r.action), ("target", &r.target)] {
        if v.len() > 1024 {
            return Err(Status::invalid_argument(format!("{field}: longer than 1024 bytes")));
        }
    }
    Ok(Query {
        actor: opt(r.actor),
        action: opt(r.action),
        target: opt(r.target),
        ok,
        since_unix_ms: (r.since_unix_ms != 0).then_some(r.since_unix_ms),
        until_unix_ms: (r.until_unix_ms != 0).then_some(r.until_unix_ms),
        page_size: r.page_size,
        page_token: opt(r.page_token),
    })
}

fn record_of(r: AuditRecord) -> Record {
    Record {
        seq: r.seq,
        time_unix_ms: r.time_unix_ms,
        actor: r.actor,
        source: r.source,
        action: r.action,
        target: r.target,
        ok: r.ok,
        error: r.error,
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

/// Longest action `Record` accepts.
const MAX_ACTION: usize = 64;
/// Longest target `Record` accepts.
const MAX_TARGET: usize = 256;
/// Longest error `Record` accepts.
const MAX_ERROR: usize = 1024;

/// Whether `caller` may append records with `Record`: the console acting for
/// one of its users (the agent accepts `x-debvisor-user`, which makes the
/// actor `console:USER`, only from the console's uid) or root on the socket.
fn may_record(caller: &Caller) -> bool {
    caller.actor.starts_with("console:") || caller.actor == "uid:0"
}

/// `action` is lowercase dotted words: `[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*`.
fn valid_action(action: &str) -> bool {
    !action.is_empty()
        && action.len() <= MAX_ACTION
        && action.split('.').all(|w| {
            let mut b = w.bytes();
            b.next().is_some_and(|c| c.is_ascii_lowercase())
                && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        })
}

/// One line of text without control characters, at most `max` bytes.
fn check_line(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(Status::invalid_argument(format!(
            "{field}: {} bytes, more than the {max} allowed",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Status::invalid_argument(format!(
            "{field}: contains the control character {c:?}; send one line of printable text"
        )));
    }
    Ok(())
}

/// The entry a valid `Record` request appends for `caller`.
fn entry_of(caller: &Caller, r: RecordRequest) -> Result<NewEntry, Status> {
    if !valid_action(&r.action) {
        return Err(Status::invalid_argument(format!(
            "action: {:?} is not lowercase dotted words of at most {MAX_ACTION} characters \
             (for example \"console.user.create\")",
            r.action.chars().take(80).collect::<String>()
        )));
    }
    check_line("target", &r.target, MAX_TARGET)?;
    check_line("error", &r.error, MAX_ERROR)?;
    let outcome = match r.result.as_str() {
        "ok" if r.error.is_empty() => Outcome::Ok,
        "ok" => return Err(Status::invalid_argument("error: must be empty when result is \"ok\"")),
        "error" if !r.error.is_empty() => Outcome::Error(r.error),
        "error" => return Err(Status::invalid_argument("error: say why, when result is \"error\"")),
        other => {
            return Err(Status::invalid_argument(format!(
                "result: {:?} is neither \"ok\" nor \"error\"",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    Ok(NewEntry {
        actor: caller.actor.clone(),
        source: caller.source.clone(),
        action: r.action,
        target: r.target,
        outcome,
    })
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportChunk, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        let q = query_of(req.into_inner())?;
        let page = self.log.query(&q).await.map_err(audit_status)?;
        Ok(Response::new(QueryResponse {
            records: page.records.into_iter().map(record_of).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            total_matching: page.total_matching,
        }))
    }

    type ExportStream = ExportStream;

    async fn export(&self, req: Request<ExportRequest>) -> Result<Response<ExportStream>, Status> {
        let req = req.into_inner();
        let format = Format::try_from(req.format)
            .map_err(|_| Status::invalid_argument(format!("format: unknown value {}", req.format)))?;
        let mut q = query_of(req.filter.unwrap_or_default())?;
        q.page_token = None;
        let records = self.log.export(&q).await.map_err(audit_status)?;
        let data = match format {
            Format::Csv => debvisor_audit::to_csv(&records).into_bytes(),
            Format::Jsonl => {
                let mut out = Vec::new();
                for r in records {
                    serde_json::to_writer(&mut out, &record_of(r))
                        .map_err(|e| Status::internal(format!("Cannot encode a record: {e}")))?;
                    out.push(b'\n');
                }
                out
            }
        };
        let chunks: Vec<Result<ExportChunk, Status>> = data
            .chunks(CHUNK)
            .map(|c| Ok(ExportChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn verify(&self, _req: Request<VerifyRequest>) -> Result<Response<VerifyResponse>, Status> {
        let r = self.log.verify().await.map_err(audit_status)?;
        let (problem, first_bad_seq) = match &r.problem {
            Some(p) => (p.to_string(), first_bad_seq(p)),
            None => (String::new(), 0),
        };
        Ok(Response::new(VerifyResponse {
            ok: r.problem.is_none(),
            records: r.records,
            head_seq: r.head_seq,
            head_hash: r.head_hash,
            problem,
            first_bad_seq,
        }))
    }

    async fn record(&self, req: Request<RecordRequest>) -> Result<Response<RecordResponse>, Status> {
        let caller = Caller::of(&req)?;
        if !may_record(&caller) {
            return Err(Status::permission_denied(format!(
                "{} may not append audit records: only the console (acting for a user) and root may",
                caller.actor
            )));
        }
        let entry = entry_of(&caller, req.into_inner())?;
        let r = self.log.append(entry).await.map_err(audit_status)?;
        Ok(Response::new(RecordResponse {
            seq: r.seq,
            hash: r.hash,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            actor: "admin".into(),
            source: "tcp:127.0.0.1:5".into(),
        }
    }

    #[tokio::test]
    async fn outcomes_are_recorded_and_queryable() {
        let log = AuditLog::open_in_memory().await.unwrap();
        let a = Auditor::new(log.clone());
        a.record(&caller(), "units.Restart", "ssh.service", Ok::<_, Status>(()))
            .await
            .unwrap();
        let err = a
            .record(
                &caller(),
                "units.Start",
                "nope.service",
                Err::<(), _>(Status::not_found("Unit nope.service not found")),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "the call's own error is passed on");

        let api = AuditApi::new(log);
        let page = api
            .query(Request::new(QueryRequest {
                result: ResultFilter::Error as i32,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_matching, 1);
        let r = &page.records[0];
        assert_eq!(
            (r.action.as_str(), r.target.as_str(), r.ok),
            ("units.Start", "nope.service", false)
        );
        assert!(r.error.contains("not found"), "{}", r.error);
        assert_eq!(r.actor, "admin");

        let v = api.verify(Request::new(VerifyRequest {})).await.unwrap().into_inner();
        assert!(v.ok);
        assert_eq!((v.records, v.head_seq), (2, 2));
    }

    fn record_request(caller: &str, action: &str, target: &str, result: &str, error: &str) -> Request<RecordRequest> {
        let mut req = Request::new(RecordRequest {
            action: action.into(),
            target: target.into(),
            result: result.into(),
            error: error.into(),
        });
        req.extensions_mut().insert(Caller {
            actor: caller.into(),
            source: "unix:pid=42".into(),
        });
        req
    }

    #[tokio::test]
    async fn the_console_and_root_may_record_others_may_not() {
        let log = AuditLog::open_in_memory().await.unwrap();
        let api = AuditApi::new(log.clone());
        let r = api
            .record(record_request("console:alice", "console.user.create", "bob", "ok", ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.seq, 1);
        api.record(record_request(
            "uid:0",
            "console.login",
            "192.0.2.1",
            "error",
            "wrong password",
        ))
        .await
        .unwrap();
        for who in ["uid:1000", "ops-laptop", "console"] {
            let e = api
                .record(record_request(who, "console.login", "", "ok", ""))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}");
        }
        let e = api
            .record(Request::new(RecordRequest {
                action: "console.login".into(),
                result: "ok".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "no caller");

        let page = log.query(&Query::default()).await.unwrap();
        assert_eq!(page.total_matching, 2, "refused calls append nothing");
        let first = page.records.iter().find(|r| r.seq == 1).unwrap();
        assert_eq!(
            (
                first.actor.as_str(),
                first.source.as_str(),
                first.action.as_str(),
                first.target.as_str()
            ),
            ("console:alice", "unix:pid=42", "console.user.create", "bob")
        );
        assert!(first.ok);
        let second = page.records.iter().find(|r| r.seq == 2).unwrap();
        assert!(!second.ok);
        assert_eq!(second.error, "wrong password");
        assert!(log.verify().await.unwrap().problem.is_none());
    }

    #[tokio::test]
    async fn record_validates_every_field() {
        let api = AuditApi::new(AuditLog::open_in_memory().await.unwrap());
        let long_action = format!("console.{}", "a".repeat(60));
        let long_target = "t".repeat(300);
        let cases = [
            ("", "x", "ok", "", "action"),
            ("Console.Login", "x", "ok", "", "action"),
            ("console..login", "x", "ok", "", "action"),
            ("console.1login", "x", "ok", "", "action"),
            ("console login", "x", "ok", "", "action"),
            (long_action.as_str(), "x", "ok", "", "action"),
            ("console.login", "a\nb", "ok", "", "target"),
            ("console.login", long_target.as_str(), "ok", "", "target"),
            ("console.login", "x", "maybe", "", "result"),
            ("console.login", "x", "ok", "but failed", "error"),
            ("console.login", "x", "error", "", "error"),
        ];
        for (action, target, result, error, field) in cases {
            let e = api
                .record(record_request("console:admin", action, target, result, error))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{action:?} {target:?}");
            assert!(e.message().starts_with(field), "{field}: {}", e.message());
        }
        assert!(valid_action("console.user.create"));
        assert!(valid_action("console.user_2.x9"));
    }

    #[tokio::test]
    async fn bad_filters_name_the_field() {
        let api = AuditApi::new(AuditLog::open_in_memory().await.unwrap());
        let e = api
            .query(Request::new(QueryRequest {
                page_size: 5000,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("page_size"), "{}", e.message());
        let e = api
            .query(Request::new(QueryRequest {
                page_token: "garbage".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    }
}
