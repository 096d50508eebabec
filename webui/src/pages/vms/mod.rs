//! The virtual machine pages, through the agent's `debvisor.vm.v1`: the
//! list (live: libvirt's lifecycle events and a CPU sample every few
//! seconds), the create form, a VM's page with its devices, actions,
//! snapshots, clone and delete, and its serial console. The agent validates
//! every value and audits every change as `vm.*` by `console:USER`; its
//! refusals are shown as they are (they name the field and what to change).
//!
//! | route | permission | what |
//! |---|---|---|
//! | `GET /vms` | `ViewVms` | the VMs with state, vCPUs, memory, CPU use |
//! | `GET /vms/events` | `ViewVms` | the list's table, again on each change (SSE) |
//! | `GET /vms/new` | `ManageVms` | the create form |
//! | `POST /vms` | `ManageVms` | create (and start) a VM |
//! | `GET /vm/{name}` | `ViewVms` | one VM, its disks, NICs and snapshots |
//! | `POST /vm/{name}/action` | `ManageVms` | start, shutdown, stop, reboot, suspend, resume, autostart on/off |
//! | `POST /vm/{name}/delete` | `ManageVms` | delete it (and its disks unless kept) |
//! | `POST /vm/{name}/clone` | `ManageVms` | copy a VM that is off |
//! | `POST /vm/{name}/snapshots` | `ManageVms` | take a snapshot |
//! | `POST /vm/{name}/snapshots/{snap}/{revert,delete}` | `ManageVms` | revert to or delete one |
//! | `GET /vm/{name}/console` | `ManageVms` | its serial console in the browser (xterm.js) |
//! | `GET /vm/{name}/console/ws` | `ManageVms` | the console's WebSocket, same origin only (see [`console`]) |
//! | `GET /static/vm_console.js` | none | the console page's script |
//!
//! A VM's pages live under `/vm/` (not `/vms/`), so that VMs called `new`
//! or `events` have pages too; names are percent-encoded in every URL (VMs
//! defined with virsh may have any name).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use askama::Template;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use debvisor_api::vm::v1::vm_service_client::VmServiceClient;
use debvisor_api::vm::v1::{
    self as pb, CloneVmRequest, CreateSnapshotRequest, CreateVmRequest, DeleteVmRequest, DiskSpec, Firmware,
    ListVmsRequest, ListVolumesRequest, NicSpec, SetAutostartRequest, SnapshotRef, VmRef, WatchVmsRequest, disk_spec,
};
use serde::Deserialize;
use tonic::transport::Channel;

use crate::AppState;
use crate::agent::{AgentError, bounded, on_behalf_of};
use crate::auth::{Session, tokens_match};
use crate::error::AppError;
use crate::flash::Flash;
use crate::handlers::{RequireSession, live_events, nav};
use crate::pages::audit::utc_text;
use crate::pages::services::message_page;
use crate::roles::Permission;
use crate::views::{Chrome, human_bytes};

pub mod console;
mod create;
mod vm;

pub use create::{CreateErrors, CreateForm, NewVmPage, refusal_errors, spec_of, volume_choices};
pub use vm::{SnapshotRow, VmPage};

/// How often the live list samples CPU use.
pub const CPU_SAMPLE: Duration = Duration::from_secs(5);

/// What the agent says when it manages no VMs (its `vm_service::NO_VMS`).
pub const NO_VMS: &str = "This agent manages no VMs (it was started without a hypervisor)";

/// The pages' routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/vms", get(list_page).post(create::create))
        .route("/vms/events", get(events))
        .route("/vms/new", get(create::new_page))
        .route("/vm/{name}", get(vm::vm_page))
        .route("/vm/{name}/action", post(vm::action))
        .route("/vm/{name}/delete", post(vm::delete))
        .route("/vm/{name}/clone", post(vm::clone))
        .route("/vm/{name}/snapshots", post(vm::snapshot_create))
        .route("/vm/{name}/snapshots/{snap}/{op}", post(vm::snapshot_op))
        .route("/vm/{name}/console", get(console::page))
        .route("/vm/{name}/console/ws", get(console::socket))
        .route("/static/vm_console.js", get(console::script))
}

/// A button that posts an action.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionButton {
    /// The form value (`start`, `stop`, ...).
    pub action: &'static str,
    /// Its label.
    pub label: &'static str,
    /// Whether it is destructive (styled as such, confirmed by the page).
    pub danger: bool,
}

/// A VM in the list.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRow {
    /// Its name.
    pub name: String,
    /// Its page.
    pub href: String,
    /// The state's word.
    pub state: String,
    /// The state tag's class: ok, warn, fail or muted.
    pub state_class: &'static str,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, "512 MiB".
    pub memory: String,
    /// CPU use over the last sample ("12%") or "-".
    pub cpu: String,
    /// The CPU bar's width in percent of one full host (0-100).
    pub cpu_bar: u32,
    /// Starts with the node.
    pub autostart: bool,
    /// What the state allows.
    pub actions: Vec<ActionButton>,
    /// Where its actions post.
    pub post: String,
}

/// `s` percent-encoded as one path segment.
pub fn segment(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The page of the VM `name`.
pub fn vm_href(name: &str) -> String {
    format!("/vm/{}", segment(name))
}

fn state_class(s: &str) -> &'static str {
    match s {
        "running" | "blocked" => "ok",
        "paused" | "pm-suspended" | "shutting-down" => "warn",
        "crashed" => "fail",
        _ => "muted",
    }
}

const fn button(action: &'static str, label: &'static str, danger: bool) -> ActionButton {
    ActionButton { action, label, danger }
}

/// The actions a VM in `state` can take.
pub fn actions_for(state: &str) -> Vec<ActionButton> {
    match state {
        "running" | "blocked" => vec![
            button("shutdown", "Shut down", false),
            button("reboot", "Reboot", false),
            button("suspend", "Pause", false),
            button("stop", "Force off", true),
        ],
        "paused" | "pm-suspended" => vec![button("resume", "Resume", false), button("stop", "Force off", true)],
        "shutting-down" => vec![button("stop", "Force off", true)],
        _ => vec![button("start", "Start", false)],
    }
}

fn mib_text(mib: u64) -> String {
    human_bytes(mib.saturating_mul(1 << 20))
}

/// The list's rows; `cpu` has each running VM's CPU use in percent of one
/// vCPU-second per second, summed over its vCPUs (where a sample exists).
pub fn rows(vms: &[pb::VmSummary], cpu: &HashMap<String, f64>, host_cpus: u32) -> Vec<VmRow> {
    vms.iter()
        .map(|v| {
            let used = cpu.get(&v.name).copied().filter(|_| v.state_text == "running");
            VmRow {
                name: v.name.clone(),
                href: vm_href(&v.name),
                state: v.state_text.clone(),
                state_class: state_class(&v.state_text),
                vcpus: v.vcpus,
                memory: mib_text(v.memory_mib),
                cpu: used.map_or_else(|| "-".into(), |p| format!("{p:.0}%")),
                cpu_bar: used.map_or(0, |p| (p / f64::from(host_cpus.max(1))).clamp(0.0, 100.0) as u32),
                autostart: v.autostart,
                actions: actions_for(&v.state_text),
                post: format!("{}/action", vm_href(&v.name)),
            }
        })
        .collect()
}

/// CPU use from two readings of the VMs' CPU time.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: HashMap<String, (u64, Instant)>,
}

impl CpuSampler {
    /// Each VM's CPU use since its last reading, in percent of one CPU,
    /// and the new readings kept for the next call.
    pub fn sample(&mut self, vms: &[pb::VmSummary], now: Instant) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        let mut next = HashMap::new();
        for v in vms {
            if let Some((ns, at)) = self.last.get(&v.name) {
                let secs = now.duration_since(*at).as_secs_f64();
                if secs > 0.0 && v.cpu_time_ns >= *ns {
                    out.insert(v.name.clone(), (v.cpu_time_ns - ns) as f64 / 1e9 / secs * 100.0);
                }
            }
            next.insert(v.name.clone(), (v.cpu_time_ns, now));
        }
        self.last = next;
        out
    }
}

/// The list's table (also sent live).
#[derive(Template)]
#[template(path = "vms_table.html")]
pub struct VmTable {
    /// The rows, or why there are none.
    pub rows: Result<Vec<VmRow>, String>,
    /// Whether the session may act.
    pub can_manage: bool,
    /// The session's CSRF token.
    pub csrf: String,
}

/// The list page.
#[derive(Template)]
#[template(path = "vms.html")]
pub struct VmsPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The table.
    pub table: VmTable,
    /// Whether the agent manages no VMs (the table's error says why).
    pub no_vms: bool,
    /// The outcome of the last action.
    pub flash: Option<Flash>,
}

async fn client(state: &AppState) -> Result<VmServiceClient<Channel>, AgentError> {
    Ok(VmServiceClient::new(state.node().channel().await?))
}

fn call_text(e: AgentError) -> String {
    match e {
        AgentError::Call(s) => s.message().chars().take(400).collect(),
        other => other.summary(),
    }
}

async fn list(state: &AppState, user: &str) -> Result<Vec<pb::VmSummary>, AgentError> {
    let mut c = client(state).await?;
    Ok(c.list_vms(on_behalf_of(ListVmsRequest {}, Some(user)))
        .await?
        .into_inner()
        .vms)
}

async fn host_cpus(state: &AppState, user: &str) -> u32 {
    state
        .node()
        .status(Some(user))
        .await
        .ok()
        .and_then(|s| s.cpu.map(|c| c.count))
        .unwrap_or(1)
}

fn table(session: &Session, rows: Result<Vec<VmRow>, String>) -> VmTable {
    VmTable {
        rows,
        can_manage: session.role.allows(Permission::ManageVms),
        csrf: session.csrf.clone(),
    }
}

async fn list_page(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewVms)?;
    let result = bounded("VM list", list(&state, &session.user)).await;
    // Only an agent without VMs, not libvirtd being down (also UNAVAILABLE,
    // shown as the table's error while the live list retries).
    let no_vms =
        matches!(&result, Err(AgentError::Call(s)) if s.code() == tonic::Code::Unavailable && s.message() == NO_VMS);
    let rows = result.map(|v| rows(&v, &HashMap::new(), 1)).map_err(call_text);
    let page = VmsPage {
        chrome: state.chrome(Some(nav(session, "vms"))).await,
        table: table(session, rows),
        no_vms,
        flash: state.flashes().take(session),
    };
    Ok(Html(page.render()?).into_response())
}

/// How long the live list waits for more events before it re-reads the
/// VMs (a burst, such as the agent resending every VM, costs one list).
const SETTLE: Duration = Duration::from_millis(200);
/// The longest a burst may put a redraw off.
const SETTLE_MAX: Duration = Duration::from_secs(1);

async fn events(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewVms)?.clone();
    let user = session.user.clone();
    let opened = bounded("VM watch", async {
        let mut c = client(&state).await?;
        let req = WatchVmsRequest {
            name: String::new(),
            initial: false,
        };
        Ok(c.watch_vms(on_behalf_of(req, Some(&user))).await?.into_inner())
    })
    .await;
    let mut watch = match opened {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("The VMs cannot be watched: {}", e.summary());
            return Ok(message_page(&state, &session, StatusCode::BAD_GATEWAY, "Agent unreachable", msg).await);
        }
    };
    let cpus = host_cpus(&state, &user).await;
    // One task per open list: it re-reads the VMs after each burst of
    // events and every sample period, and ends when the page goes (the
    // channel closes) or the agent's stream does.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<VmRow>, tonic::Status>>(2);
    let st = state.clone();
    let every = state.vm_sample();
    tokio::spawn(async move {
        let mut sampler = CpuSampler::default();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let ended = || tonic::Status::unavailable("the agent ended the VM event stream");
        loop {
            tokio::select! {
                m = watch.message() => {
                    if !matches!(m, Ok(Some(_))) {
                        let _ = tx.send(Err(ended())).await;
                        return;
                    }
                    // Let the burst settle.
                    let until = tokio::time::Instant::now() + SETTLE_MAX;
                    while tokio::time::Instant::now() < until {
                        match tokio::time::timeout(SETTLE, watch.message()).await {
                            Ok(Ok(Some(_))) => {}
                            Ok(_) => {
                                let _ = tx.send(Err(ended())).await;
                                return;
                            }
                            Err(_) => break,
                        }
                    }
                }
                _ = tick.tick() => {}
                _ = tx.closed() => return,
            }
            let Ok(vms) = bounded("VM list", list(&st, &user)).await else {
                continue;
            };
            let cpu = sampler.sample(&vms, Instant::now());
            if tx.send(Ok(rows(&vms, &cpu, cpus))).await.is_err() {
                return;
            }
        }
    });
    let s2 = session.clone();
    Ok(live_events(
        &state,
        &session,
        "VM table",
        tokio_stream::wrappers::ReceiverStream::new(rx),
        move |rows| Ok(Event::default().event("vms").data(table(&s2, Ok(rows)).render()?)),
    ))
}

fn check_csrf(session: &Session, csrf: &str, what: &str) -> Result<(), AppError> {
    if tokens_match(csrf, &session.csrf) {
        Ok(())
    } else {
        tracing::warn!(user = %session.user, "{what} refused: missing or wrong CSRF token");
        Err(AppError::Csrf)
    }
}

/// A form with only its CSRF token and maybe an action or a name.
#[derive(Debug, Deserialize)]
pub struct SmallForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    keep_disks: Option<String>,
    /// Where to go afterwards: "list" for the list, else the VM's page.
    #[serde(default)]
    back: String,
}

/// Runs one change for the session, flashes its outcome (`done` on
/// success, "Could not `what`: reason" on failure) and goes back.
async fn change<T>(
    state: &AppState,
    session: &Session,
    what: String,
    done: impl FnOnce(T) -> String,
    back: String,
    call: impl Future<Output = Result<T, AgentError>>,
) -> Response {
    let flash = match bounded("VM change", call).await {
        Ok(v) => Flash {
            level: "ok",
            text: done(v),
        },
        Err(e) => Flash {
            level: "fail",
            text: format!("Could not {what}: {}", call_text(e)),
        },
    };
    state.flashes().put(session, flash);
    Redirect::to(&back).into_response()
}

/// The session and form of a change to a VM: the role may manage VMs,
/// the form is readable and carries the session's CSRF token.
fn vm_change<'a>(
    required: &'a RequireSession,
    form: Result<Form<SmallForm>, FormRejection>,
    what: &str,
) -> Result<(&'a Session, SmallForm), AppError> {
    let session = required.require(Permission::ManageVms)?;
    let Form(form) = form.map_err(|_| AppError::BadRequest)?;
    check_csrf(session, &form.csrf, what)?;
    Ok((session, form))
}

fn back_to(form: &SmallForm, name: &str) -> String {
    if form.back == "list" {
        "/vms".into()
    } else {
        vm_href(name)
    }
}

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, state: &str, cpu_ns: u64) -> pb::VmSummary {
        pb::VmSummary {
            name: name.into(),
            state_text: state.into(),
            vcpus: 2,
            memory_mib: 1536,
            cpu_time_ns: cpu_ns,
            ..Default::default()
        }
    }

    #[test]
    fn rows_show_state_memory_cpu_and_the_actions_the_state_allows() {
        let mut s = CpuSampler::default();
        let t0 = Instant::now();
        assert!(s.sample(&[summary("a", "running", 1_000_000_000)], t0).is_empty());
        let cpu = s.sample(&[summary("a", "running", 2_000_000_000)], t0 + Duration::from_secs(4));
        assert_eq!(cpu["a"].round(), 25.0);
        let r = rows(&[summary("a", "running", 0), summary("b", "shutoff", 0)], &cpu, 2);
        assert_eq!(
            (r[0].cpu.as_str(), r[0].cpu_bar, r[0].memory.as_str()),
            ("25%", 12, "1.5 GiB")
        );
        assert_eq!(r[0].state_class, "ok");
        let acts: Vec<_> = r[0].actions.iter().map(|a| a.action).collect();
        assert_eq!(acts, ["shutdown", "reboot", "suspend", "stop"]);
        assert_eq!((r[1].cpu.as_str(), r[1].state_class), ("-", "muted"));
        assert_eq!(r[1].actions[0].action, "start");
        assert_eq!(r[1].post, "/vm/b/action");
        assert_eq!(vm_href("odd name/#1"), "/vm/odd%20name%2F%231");
    }
}
