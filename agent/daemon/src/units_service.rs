//! `debvisor.units.v1.UnitService` over the systemd and journal facilities.
//! Every name from the wire becomes a validated newtype before it reaches
//! systemd or journalctl; every mutation is audited.

use std::pin::Pin;
use std::sync::Arc;

use debvisor_api::units::v1 as pb;
use debvisor_api::units::v1::unit_service_server::UnitService;
use debvisor_api::validate::{JournalPriority, UnitName, UnitPattern, UnitState, UnitType};
use debvisor_systemd::{
    JobResult, Journal, JournalError, LogEntry, LogQuery, UnitDetail, UnitFileChange, UnitFilter, Units, UnitsError,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::audit_service::Auditor;
use crate::auth::Caller;

/// At most this many journal lines are replayed before following.
const MAX_LINES: u32 = 10_000;
/// Filter lists longer than this are refused.
const MAX_FILTERS: usize = 64;

/// The units service.
#[derive(Clone)]
pub struct UnitsApi {
    units: Arc<dyn Units>,
    journal: Arc<dyn Journal>,
    audit: Auditor,
}

impl UnitsApi {
    /// A units service over `units` and `journal`, auditing into `audit`.
    pub fn new(units: Arc<dyn Units>, journal: Arc<dyn Journal>, audit: Auditor) -> Self {
        Self { units, journal, audit }
    }

    /// Start, Stop or Restart (`action`), which must finish with `done`.
    async fn job(
        &self,
        req: Request<pb::UnitActionRequest>,
        action: &'static str,
    ) -> Result<Response<pb::UnitActionResponse>, Status> {
        let op = |name: UnitName| async move {
            let job = match action {
                "units.Start" => self.units.start(&name).await,
                "units.Stop" => self.units.stop(&name).await,
                _ => self.units.restart(&name).await,
            }
            .map_err(units_status)?;
            job_ok(&name, &job)?;
            Ok(job)
        };
        self.unit_action(req, action, op, job_answer).await
    }

    /// Enable or Disable (`action`).
    async fn file(
        &self,
        req: Request<pb::UnitActionRequest>,
        action: &'static str,
    ) -> Result<Response<pb::UnitFileResponse>, Status> {
        let op = |name: UnitName| async move {
            if action == "units.Enable" {
                self.units.enable(&name).await
            } else {
                self.units.disable(&name).await
            }
            .map_err(units_status)
        };
        self.unit_action(req, action, op, file_answer).await
    }

    /// One mutating unit call: validates the name, runs `op` on it, reads the
    /// unit's state after it for `answer`, and audits the call as `action` on
    /// the name as it was sent (valid or not).
    async fn unit_action<T, R, Fut>(
        &self,
        req: Request<pb::UnitActionRequest>,
        action: &'static str,
        op: impl FnOnce(UnitName) -> Fut,
        answer: fn(T, pb::Unit) -> R,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<T, Status>>,
    {
        let caller = Caller::of(&req)?;
        let raw = req.into_inner().name;
        let result = async {
            let name = unit_name("name", &raw)?;
            let done = op(name.clone()).await?;
            let unit = self.units.get(&name).await.map_err(units_status)?;
            Ok(answer(done, unit_of(unit)))
        }
        .await;
        self.audit
            .record(&caller, action, &raw, result)
            .await
            .map(Response::new)
    }
}

fn job_answer(job: JobResult, unit: pb::Unit) -> pb::UnitActionResponse {
    pb::UnitActionResponse {
        job_id: job.job,
        result: job.result,
        unit: Some(unit),
    }
}

fn file_answer(changes: Vec<UnitFileChange>, unit: pb::Unit) -> pb::UnitFileResponse {
    pb::UnitFileResponse {
        changes: changes.into_iter().map(change_of).collect(),
        unit: Some(unit),
    }
}

fn unit_name(field: &str, raw: &str) -> Result<UnitName, Status> {
    UnitName::try_from(raw).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn job_ok(name: &UnitName, job: &JobResult) -> Result<(), Status> {
    if job.result == "done" {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "The job for {name} finished with result '{}'; see `debvisorctl logs -u {name}`",
        job.result
    )))
}

/// The wire status of a systemd failure, with the whole error chain in the
/// message.
pub fn units_status(e: UnitsError) -> Status {
    let msg = crate::error_chain(&e);
    match e {
        UnitsError::NotFound { .. } => Status::not_found(msg),
        UnitsError::Refused { .. } => Status::failed_precondition(msg),
        UnitsError::JobTimeout { .. } => Status::deadline_exceeded(msg),
        UnitsError::Disconnected { .. } | UnitsError::Connect { .. } | UnitsError::Bus { .. } => {
            Status::unavailable(msg)
        }
    }
}

fn journal_status(e: JournalError) -> Status {
    Status::unavailable(crate::error_chain(&e))
}

fn unit_of(u: UnitDetail) -> pb::Unit {
    pb::Unit {
        name: u.name,
        description: u.description,
        load_state: u.load_state,
        active_state: u.active_state,
        sub_state: u.sub_state,
        unit_file_state: u.unit_file_state.unwrap_or_default(),
        fragment_path: u.fragment_path.unwrap_or_default(),
        main_pid: u.main_pid.unwrap_or(0),
        restarts: u.n_restarts.unwrap_or(0),
        memory_bytes: u.memory_current_bytes.unwrap_or(0),
        active_enter_unix_us: u.active_enter_timestamp_us.unwrap_or(0),
    }
}

fn change_of(c: UnitFileChange) -> pb::UnitFileChange {
    pb::UnitFileChange {
        kind: c.kind,
        path: c.path,
        source: c.source,
    }
}

fn entry_of(e: LogEntry) -> pb::LogEntry {
    pb::LogEntry {
        time_unix_us: e.time_unix_us,
        unit: e.unit,
        priority: u32::from(e.priority),
        identifier: e.identifier,
        pid: e.pid.unwrap_or(0),
        message: e.message,
        cursor: e.cursor,
        hostname: e.hostname,
    }
}

fn filter_of(r: pb::ListUnitsRequest) -> Result<UnitFilter, Status> {
    for (field, n) in [
        ("patterns", r.patterns.len()),
        ("states", r.states.len()),
        ("types", r.types.len()),
    ] {
        if n > MAX_FILTERS {
            return Err(Status::invalid_argument(format!(
                "{field}: more than {MAX_FILTERS} entries"
            )));
        }
    }
    let patterns = r
        .patterns
        .iter()
        .map(|p| UnitPattern::try_from(p.as_str()).map_err(|e| Status::invalid_argument(format!("patterns: {e}"))))
        .collect::<Result<_, _>>()?;
    let states = r
        .states
        .iter()
        .map(|s| UnitState::try_from(s.as_str()).map_err(|e| Status::invalid_argument(format!("states: {e}"))))
        .collect::<Result<_, _>>()?;
    let types = r
        .types
        .iter()
        .map(|t| {
            t.parse::<UnitType>()
                .map_err(|e| Status::invalid_argument(format!("types: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(UnitFilter {
        patterns,
        states,
        types,
        include_inactive: r.include_inactive,
    })
}

fn log_query(r: pb::StreamLogsRequest) -> Result<LogQuery, Status> {
    let unit = match r.unit.as_str() {
        "" => None,
        u => Some(unit_name("unit", u)?),
    };
    let max_priority = match r.max_priority {
        None => None,
        Some(p) => Some(
            u8::try_from(p)
                .ok()
                .and_then(|p| JournalPriority::try_from(p).ok())
                .ok_or_else(|| Status::invalid_argument(format!("max_priority: {p} is not 0 (emerg) to 7 (debug)")))?,
        ),
    };
    if r.lines > MAX_LINES {
        return Err(Status::invalid_argument(format!(
            "lines: {} is above the maximum of {MAX_LINES}",
            r.lines
        )));
    }
    let lines = match (r.lines, r.since_unix_us) {
        (0, 0) => Some(100),
        (0, _) => None,
        (n, _) => Some(n),
    };
    Ok(LogQuery {
        unit,
        max_priority,
        since_unix_us: (r.since_unix_us != 0).then_some(r.since_unix_us),
        lines,
        follow: r.follow,
    })
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogEntry, Status>> + Send>>;

#[tonic::async_trait]
impl UnitService for UnitsApi {
    async fn list_units(&self, req: Request<pb::ListUnitsRequest>) -> Result<Response<pb::ListUnitsResponse>, Status> {
        let filter = filter_of(req.into_inner())?;
        let mut units = self.units.list(&filter).await.map_err(units_status)?;
        units.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListUnitsResponse {
            units: units
                .into_iter()
                .map(|u| pb::Unit {
                    name: u.name,
                    description: u.description,
                    load_state: u.load_state,
                    active_state: u.active_state,
                    sub_state: u.sub_state,
                    unit_file_state: u.unit_file_state.unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
        }))
    }

    async fn get_unit(&self, req: Request<pb::GetUnitRequest>) -> Result<Response<pb::Unit>, Status> {
        let name = unit_name("name", &req.into_inner().name)?;
        Ok(Response::new(unit_of(
            self.units.get(&name).await.map_err(units_status)?,
        )))
    }

    async fn start(&self, req: Request<pb::UnitActionRequest>) -> Result<Response<pb::UnitActionResponse>, Status> {
        self.job(req, "units.Start").await
    }

    async fn stop(&self, req: Request<pb::UnitActionRequest>) -> Result<Response<pb::UnitActionResponse>, Status> {
        self.job(req, "units.Stop").await
    }

    async fn restart(&self, req: Request<pb::UnitActionRequest>) -> Result<Response<pb::UnitActionResponse>, Status> {
        self.job(req, "units.Restart").await
    }

    async fn enable(&self, req: Request<pb::UnitActionRequest>) -> Result<Response<pb::UnitFileResponse>, Status> {
        self.file(req, "units.Enable").await
    }

    async fn disable(&self, req: Request<pb::UnitActionRequest>) -> Result<Response<pb::UnitFileResponse>, Status> {
        self.file(req, "units.Disable").await
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(&self, req: Request<pb::StreamLogsRequest>) -> Result<Response<LogStream>, Status> {
        let q = log_query(req.into_inner())?;
        let entries = self.journal.stream(q).map_err(journal_status)?;
        Ok(Response::new(Box::pin(
            entries.map(|r| r.map(entry_of).map_err(journal_status)),
        )))
    }
}
