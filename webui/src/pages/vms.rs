//! The virtual machine pages, through the agent's `debvisor.vm.v1`: the
//! list (live: libvirt's lifecycle events and a CPU sample every few
//! seconds), the create form, and a VM's page with its devices, actions,
//! snapshots, clone and delete. The agent validates every value and audits
//! every change as `vm.*` by `console:USER`; its refusals are shown as
//! they are (they name the field and what to change).
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

/// How often the live list samples CPU use.
pub const CPU_SAMPLE: Duration = Duration::from_secs(5);

/// What the agent says when it manages no VMs (its `vm_service::NO_VMS`).
pub const NO_VMS: &str = "This agent manages no VMs (it was started without a hypervisor)";

/// The pages' routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/vms", get(list_page).post(create))
        .route("/vms/events", get(events))
        .route("/vms/new", get(new_page))
        .route("/vm/{name}", get(vm_page))
        .route("/vm/{name}/action", post(action))
        .route("/vm/{name}/delete", post(delete))
        .route("/vm/{name}/clone", post(clone))
        .route("/vm/{name}/snapshots", post(snapshot_create))
        .route("/vm/{name}/snapshots/{snap}/{op}", post(snapshot_op))
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

/// The create form's values, as typed (kept on a refusal).
#[derive(Debug, Clone, Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    csrf: String,
    /// The VM's name.
    #[serde(default)]
    pub name: String,
    /// vCPUs.
    #[serde(default)]
    pub vcpus: String,
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mib: String,
    /// "bios" or "uefi".
    #[serde(default)]
    pub firmware: String,
    /// A new empty disk's size in GiB ("" or 0: none).
    #[serde(default)]
    pub disk_gib: String,
    /// An image volume to copy as the first disk ("": none).
    #[serde(default)]
    pub image: String,
    /// An ISO volume to attach ("": none).
    #[serde(default)]
    pub iso: String,
    /// "" for the NAT network, or a host bridge.
    #[serde(default)]
    pub bridge: String,
    /// A VLAN tag on the bridge ("": none).
    #[serde(default)]
    pub vlan: String,
    /// "on" when ticked.
    #[serde(default)]
    pub autostart: Option<String>,
    /// "on" to start it once created.
    #[serde(default)]
    pub start: Option<String>,
}

impl Default for CreateForm {
    fn default() -> Self {
        CreateForm {
            csrf: String::new(),
            name: String::new(),
            vcpus: "1".into(),
            memory_mib: "1024".into(),
            firmware: "bios".into(),
            disk_gib: "10".into(),
            image: String::new(),
            iso: String::new(),
            bridge: String::new(),
            vlan: String::new(),
            autostart: None,
            start: Some("on".into()),
        }
    }
}

/// The form's fields that can be wrong, each with its message or "".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateErrors {
    /// The name.
    pub name: String,
    /// vCPUs.
    pub vcpus: String,
    /// Memory.
    pub memory_mib: String,
    /// The new disk.
    pub disk_gib: String,
    /// The image.
    pub image: String,
    /// The ISO.
    pub iso: String,
    /// Bridge and VLAN.
    pub network: String,
    /// Anything else.
    pub general: String,
}

impl CreateErrors {
    fn any(&self) -> bool {
        *self != CreateErrors::default()
    }
}

fn number<T: std::str::FromStr>(raw: &str, what: &str, out: &mut String) -> Option<T> {
    match raw.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => {
            *out = format!(
                "{what} must be a whole number, not {:?}",
                raw.chars().take(20).collect::<String>()
            );
            None
        }
    }
}

/// The spec of a filled-in form, and which form field each of its disks
/// came from; or the fields that cannot be read. Ranges and names are the
/// agent's to check (it names the field).
pub fn spec_of(f: &CreateForm) -> Result<(pb::VmSpec, Vec<&'static str>), Box<CreateErrors>> {
    let mut e = CreateErrors::default();
    let vcpus = number::<u32>(&f.vcpus, "vCPUs", &mut e.vcpus);
    let memory = number::<u64>(&f.memory_mib, "Memory", &mut e.memory_mib);
    let disk_gib = if f.disk_gib.trim().is_empty() {
        Some(0)
    } else {
        number::<u64>(&f.disk_gib, "The disk size", &mut e.disk_gib)
    };
    let vlan = if f.vlan.trim().is_empty() {
        Some(0)
    } else {
        number::<u32>(&f.vlan, "The VLAN tag", &mut e.network)
    };
    let firmware = match f.firmware.as_str() {
        "" | "bios" => Firmware::Bios,
        "uefi" => Firmware::Uefi,
        other => {
            e.general = format!(
                "Firmware must be BIOS or UEFI, not {:?}",
                other.chars().take(20).collect::<String>()
            );
            Firmware::Bios
        }
    };
    let (Some(vcpus), Some(memory_mib), Some(disk_gib), Some(vlan)) = (vcpus, memory, disk_gib, vlan) else {
        return Err(Box::new(e));
    };
    if e.any() {
        return Err(Box::new(e));
    }
    let mut disks = Vec::new();
    let mut from = Vec::new();
    if !f.image.is_empty() {
        disks.push(disk_spec::Source::ImportVolume(f.image.clone()));
        from.push("image");
    }
    if disk_gib > 0 {
        disks.push(disk_spec::Source::NewSizeMib(disk_gib.saturating_mul(1024)));
        from.push("disk_gib");
    }
    if !f.iso.is_empty() {
        disks.push(disk_spec::Source::IsoVolume(f.iso.clone()));
        from.push("iso");
    }
    if disks.is_empty() {
        e.disk_gib = "Give the VM a disk, an image or an ISO to boot from".into();
        return Err(Box::new(e));
    }
    let spec = pb::VmSpec {
        name: f.name.trim().to_string(),
        vcpus,
        memory_mib,
        firmware: firmware as i32,
        disks: disks.into_iter().map(|s| DiskSpec { source: Some(s) }).collect(),
        nics: vec![NicSpec {
            bridge: f.bridge.trim().to_string(),
            vlan,
            mac: String::new(),
        }],
        boot: Vec::new(),
        autostart: f.autostart.is_some(),
    };
    Ok((spec, from))
}

/// Puts the agent's refusal `msg` ("memory_mib: ...", "disks[1].iso_volume:
/// ...") under the form field it names.
pub fn refusal_errors(msg: &str, disks_from: &[&'static str]) -> CreateErrors {
    let mut e = CreateErrors::default();
    let msg: String = msg.chars().take(400).collect();
    let head = msg.split(':').next().unwrap_or("");
    let root = head.split(['.', '[']).next().unwrap_or("");
    let slot = match root {
        "name" => &mut e.name,
        "vcpus" => &mut e.vcpus,
        "memory_mib" => &mut e.memory_mib,
        "nics" => &mut e.network,
        "disks" => {
            let index = head
                .strip_prefix("disks[")
                .and_then(|r| r.split(']').next())
                .and_then(|i| i.parse::<usize>().ok());
            match index.and_then(|i| disks_from.get(i)) {
                Some(&"image") => &mut e.image,
                Some(&"iso") => &mut e.iso,
                _ => &mut e.disk_gib,
            }
        }
        _ => &mut e.general,
    };
    *slot = msg;
    e
}

/// The create form.
#[derive(Template)]
#[template(path = "vm_new.html")]
pub struct NewVmPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The values.
    pub form: CreateForm,
    /// What is wrong with them.
    pub errors: CreateErrors,
    /// Image volumes to copy.
    pub images: Vec<String>,
    /// ISO volumes.
    pub isos: Vec<String>,
    /// Why the volumes could not be listed, if so.
    pub volumes_error: Option<String>,
    /// The session's CSRF token.
    pub csrf: String,
}

/// The pool's volumes, split into images and ISOs; a VM's own disks
/// (`NAME-diskN.qcow2`) are not offered.
pub fn volume_choices(volumes: &[pb::Volume]) -> (Vec<String>, Vec<String>) {
    let mut images = Vec::new();
    let mut isos = Vec::new();
    for v in volumes {
        if v.name.to_ascii_lowercase().ends_with(".iso") {
            isos.push(v.name.clone());
        } else if !is_vm_disk(&v.name) {
            images.push(v.name.clone());
        }
    }
    (images, isos)
}

fn is_vm_disk(name: &str) -> bool {
    name.strip_suffix(".qcow2")
        .and_then(|s| s.rsplit_once("-disk"))
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

async fn render_new(
    state: &AppState,
    session: &Session,
    form: CreateForm,
    errors: CreateErrors,
    status: StatusCode,
) -> Result<Response, AppError> {
    let user = session.user.clone();
    let volumes = bounded("volume list", async {
        let mut c = client(state).await?;
        Ok(c.list_volumes(on_behalf_of(ListVolumesRequest {}, Some(&user)))
            .await?
            .into_inner()
            .volumes)
    })
    .await;
    let (images, isos, volumes_error) = match volumes {
        Ok(v) => {
            let (i, s) = volume_choices(&v);
            (i, s, None)
        }
        Err(e) => (Vec::new(), Vec::new(), Some(call_text(e))),
    };
    let page = NewVmPage {
        chrome: state.chrome(Some(nav(session, "vms"))).await,
        form,
        errors,
        images,
        isos,
        volumes_error,
        csrf: session.csrf.clone(),
    };
    Ok((status, Html(page.render()?)).into_response())
}

async fn new_page(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageVms)?;
    render_new(
        &state,
        session,
        CreateForm::default(),
        CreateErrors::default(),
        StatusCode::OK,
    )
    .await
}

fn check_csrf(session: &Session, csrf: &str, what: &str) -> Result<(), AppError> {
    if tokens_match(csrf, &session.csrf) {
        Ok(())
    } else {
        tracing::warn!(user = %session.user, "{what} refused: missing or wrong CSRF token");
        Err(AppError::Csrf)
    }
}

async fn create(
    State(state): State<AppState>,
    required: RequireSession,
    form: Result<Form<CreateForm>, FormRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageVms)?;
    let Form(form) = form.map_err(|_| AppError::BadRequest)?;
    check_csrf(session, &form.csrf, "VM create")?;
    let (spec, from) = match spec_of(&form) {
        Ok(s) => s,
        Err(errors) => return render_new(&state, session, form, *errors, StatusCode::UNPROCESSABLE_ENTITY).await,
    };
    let name = spec.name.clone();
    let user = session.user.clone();
    let start = form.start.is_some();
    /// Which call failed.
    enum Failed {
        Create(AgentError),
        Start(AgentError),
    }
    let created = tokio::time::timeout(crate::agent::AGENT_TIMEOUT * 2, async {
        let mut c = client(&state).await.map_err(Failed::Create)?;
        c.create_vm(on_behalf_of(CreateVmRequest { spec: Some(spec) }, Some(&user)))
            .await
            .map_err(|s| Failed::Create(s.into()))?;
        if start {
            c.start_vm(on_behalf_of(VmRef { name: name.clone() }, Some(&user)))
                .await
                .map_err(|s| Failed::Start(s.into()))?;
        }
        Ok(())
    })
    .await
    .unwrap_or(Err(Failed::Create(AgentError::Timeout)));
    match created {
        Ok(()) => {
            let text = if start {
                format!("VM {name} created and started.")
            } else {
                format!("VM {name} created (off).")
            };
            state.flashes().put(session, Flash { level: "ok", text });
            Ok(Redirect::to(&vm_href(&name)).into_response())
        }
        // Created, but the start failed: the VM exists, its page says so.
        Err(Failed::Start(e)) => {
            state.flashes().put(
                session,
                Flash {
                    level: "fail",
                    text: format!("VM {name} was created but did not start: {}", call_text(e)),
                },
            );
            Ok(Redirect::to(&vm_href(&name)).into_response())
        }
        Err(Failed::Create(AgentError::Call(s))) => {
            let mut errors = refusal_errors(s.message(), &from);
            if s.code() == tonic::Code::AlreadyExists {
                errors = CreateErrors {
                    name: std::mem::take(&mut errors.general),
                    ..errors
                };
            }
            render_new(&state, session, form, errors, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(Failed::Create(e)) => {
            tracing::warn!(error = %e, "agent VM create request failed");
            let errors = CreateErrors {
                general: e.summary(),
                ..Default::default()
            };
            render_new(&state, session, form, errors, StatusCode::BAD_GATEWAY).await
        }
    }
}

/// A snapshot row.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    /// Its name.
    pub name: String,
    /// Its description or "".
    pub description: String,
    /// When it was taken.
    pub created: String,
    /// The VM's state then.
    pub vm_state: String,
    /// Whether it is the current one.
    pub current: bool,
    /// Where its revert form posts.
    pub revert: String,
    /// Where its delete form posts.
    pub delete: String,
}

/// A VM's page.
#[derive(Template)]
#[template(path = "vm.html")]
pub struct VmPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// Its name (as asked).
    pub name: String,
    /// Its page (where its forms post, below).
    pub href: String,
    /// The VM and its snapshots, or why they could not be read.
    pub vm: Result<(pb::Vm, Vec<SnapshotRow>), String>,
    /// The state's word.
    pub state: String,
    /// The state tag's class.
    pub state_class: &'static str,
    /// The actions its state allows.
    pub actions: Vec<ActionButton>,
    /// Whether the session may act.
    pub can_manage: bool,
    /// The session's CSRF token.
    pub csrf: String,
    /// The outcome of the last action.
    pub flash: Option<Flash>,
}

impl VmPage {
    /// Memory as text.
    pub fn memory(&self, vm: &pb::Vm) -> String {
        mib_text(vm.summary.as_ref().map_or(0, |s| s.memory_mib))
    }

    /// A disk's size, or "-".
    pub fn disk_size(&self, d: &pb::VmDisk) -> String {
        if d.capacity_bytes == 0 {
            "-".into()
        } else {
            human_bytes(d.capacity_bytes)
        }
    }
}

async fn vm_page(
    State(state): State<AppState>,
    required: RequireSession,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewVms)?;
    let user = session.user.clone();
    let got = bounded("VM get", async {
        let mut c = client(&state).await?;
        let vm = c
            .get_vm(on_behalf_of(VmRef { name: name.clone() }, Some(&user)))
            .await?
            .into_inner();
        let snaps = c
            .list_snapshots(on_behalf_of(VmRef { name: name.clone() }, Some(&user)))
            .await?
            .into_inner()
            .snapshots;
        Ok((vm, snaps))
    })
    .await;
    let not_found = matches!(&got, Err(AgentError::Call(s)) if s.code() == tonic::Code::NotFound);
    let vm = got.map_err(call_text).map(|(vm, snaps)| {
        let rows = snaps
            .into_iter()
            .map(|s| SnapshotRow {
                revert: format!("{}/snapshots/{}/revert", vm_href(&name), segment(&s.name)),
                delete: format!("{}/snapshots/{}/delete", vm_href(&name), segment(&s.name)),
                created: utc_text(s.created_unix.saturating_mul(1000)),
                name: s.name,
                description: s.description,
                vm_state: s.vm_state,
                current: s.current,
            })
            .collect();
        (vm, rows)
    });
    let state_text = match &vm {
        Ok((v, _)) => v.summary.as_ref().map(|s| s.state_text.clone()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let page = VmPage {
        chrome: state.chrome(Some(nav(session, "vms"))).await,
        href: vm_href(&name),
        name: name.chars().take(64).collect(),
        state_class: state_class(&state_text),
        actions: actions_for(&state_text),
        state: state_text,
        vm,
        can_manage: session.role.allows(Permission::ManageVms),
        csrf: session.csrf.clone(),
        flash: state.flashes().take(session),
    };
    let status = if not_found {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    Ok((status, Html(page.render()?)).into_response())
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

async fn action(
    State(state): State<AppState>,
    required: RequireSession,
    Path(name): Path<String>,
    form: Result<Form<SmallForm>, FormRejection>,
) -> Result<Response, AppError> {
    let (session, form) = vm_change(&required, form, "VM action")?;
    let (verb, done) = match form.action.as_str() {
        "start" => ("start", "started"),
        "shutdown" => ("shut down", "asked to shut down"),
        "stop" => ("force off", "switched off"),
        "reboot" => ("reboot", "asked to reboot"),
        "suspend" => ("pause", "paused"),
        "resume" => ("resume", "resumed"),
        "autostart-on" => ("turn autostart on for", "will start with the node"),
        "autostart-off" => ("turn autostart off for", "will not start with the node"),
        _ => return Err(AppError::BadRequest),
    };
    let user = session.user.clone();
    let back = back_to(&form, &name);
    let act = form.action.clone();
    let n = name.clone();
    let st = state.clone();
    let call = async move {
        let mut c = client(&st).await?;
        let r = VmRef { name: n.clone() };
        let u = Some(user.as_str());
        let vm = match act.as_str() {
            "start" => c.start_vm(on_behalf_of(r, u)).await?,
            "shutdown" => c.shutdown_vm(on_behalf_of(r, u)).await?,
            "stop" => c.stop_vm(on_behalf_of(r, u)).await?,
            "reboot" => c.reboot_vm(on_behalf_of(r, u)).await?,
            "suspend" => c.suspend_vm(on_behalf_of(r, u)).await?,
            "resume" => c.resume_vm(on_behalf_of(r, u)).await?,
            on_off => {
                let req = SetAutostartRequest {
                    name: n.clone(),
                    autostart: on_off == "autostart-on",
                };
                c.set_autostart(on_behalf_of(req, u)).await?
            }
        };
        Ok(vm.into_inner())
    };
    let label = shown(&name);
    Ok(change(
        &state,
        session,
        format!("{verb} {label}"),
        |vm: pb::Vm| {
            let now = vm.summary.map(|s| s.state_text).unwrap_or_default();
            format!("{label} {done} (now {now}).")
        },
        back,
        call,
    )
    .await)
}

async fn delete(
    State(state): State<AppState>,
    required: RequireSession,
    Path(name): Path<String>,
    form: Result<Form<SmallForm>, FormRejection>,
) -> Result<Response, AppError> {
    let (session, form) = vm_change(&required, form, "VM delete")?;
    let keep = form.keep_disks.is_some();
    let user = session.user.clone();
    let label = shown(&name);
    let call = async {
        let mut c = client(&state).await?;
        let req = DeleteVmRequest {
            name: name.clone(),
            delete_disks: !keep,
        };
        Ok(c.delete_vm(on_behalf_of(req, Some(&user))).await?.into_inner())
    };
    let flash = match bounded("VM delete", call).await {
        Ok(_) => Flash {
            level: "ok",
            text: if keep {
                format!("VM {label} deleted; its disk volumes are kept in the pool.")
            } else {
                format!("VM {label} deleted with its disks.")
            },
        },
        Err(e) => {
            state.flashes().put(
                session,
                Flash {
                    level: "fail",
                    text: format!("Could not delete {label}: {}", call_text(e)),
                },
            );
            return Ok(Redirect::to(&vm_href(&name)).into_response());
        }
    };
    state.flashes().put(session, flash);
    Ok(Redirect::to("/vms").into_response())
}

async fn clone(
    State(state): State<AppState>,
    required: RequireSession,
    Path(name): Path<String>,
    form: Result<Form<SmallForm>, FormRejection>,
) -> Result<Response, AppError> {
    let (session, form) = vm_change(&required, form, "VM clone")?;
    let user = session.user.clone();
    let to = form.name.trim().to_string();
    let label = shown(&name);
    let call = async {
        let mut c = client(&state).await?;
        let req = CloneVmRequest {
            name: name.clone(),
            new_name: to.clone(),
        };
        Ok(c.clone_vm(on_behalf_of(req, Some(&user))).await?.into_inner())
    };
    Ok(change(
        &state,
        session,
        format!("clone {label}"),
        |vm: pb::Vm| {
            let n = vm.summary.map(|s| s.name).unwrap_or_default();
            format!("{label} cloned to {n} (off, with copies of its disks).")
        },
        vm_href(&name),
        call,
    )
    .await)
}

async fn snapshot_create(
    State(state): State<AppState>,
    required: RequireSession,
    Path(name): Path<String>,
    form: Result<Form<SmallForm>, FormRejection>,
) -> Result<Response, AppError> {
    let (session, form) = vm_change(&required, form, "snapshot")?;
    let user = session.user.clone();
    let label = shown(&name);
    let call = async {
        let mut c = client(&state).await?;
        let req = CreateSnapshotRequest {
            name: name.clone(),
            snapshot: form.name.trim().to_string(),
            description: form.description.trim().to_string(),
        };
        Ok(c.create_snapshot(on_behalf_of(req, Some(&user))).await?.into_inner())
    };
    Ok(change(
        &state,
        session,
        format!("snapshot {label}"),
        |s: pb::Snapshot| format!("Snapshot {} of {label} taken.", s.name),
        vm_href(&name),
        call,
    )
    .await)
}

async fn snapshot_op(
    State(state): State<AppState>,
    required: RequireSession,
    Path((name, snap, op)): Path<(String, String, String)>,
    form: Result<Form<SmallForm>, FormRejection>,
) -> Result<Response, AppError> {
    let (session, _) = vm_change(&required, form, "snapshot")?;
    if op != "revert" && op != "delete" {
        return Err(AppError::NotFound);
    }
    let user = session.user.clone();
    let (label, s) = (shown(&name), shown(&snap));
    let call = async {
        let mut c = client(&state).await?;
        let req = SnapshotRef {
            name: name.clone(),
            snapshot: snap.clone(),
        };
        if op == "revert" {
            c.revert_snapshot(on_behalf_of(req, Some(&user))).await?;
        } else {
            c.delete_snapshot(on_behalf_of(req, Some(&user))).await?;
        }
        Ok(())
    };
    let (what, done) = if op == "revert" {
        (
            format!("revert {label} to {s}"),
            format!("{label} reverted to snapshot {s}."),
        )
    } else {
        (
            format!("delete snapshot {s} of {label}"),
            format!("Snapshot {s} of {label} deleted."),
        )
    };
    Ok(change(&state, session, what, |()| done, vm_href(&name), call).await)
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

    #[test]
    fn the_form_becomes_a_spec_and_refusals_land_on_their_field() {
        let f = CreateForm {
            name: " web-1 ".into(),
            image: "debian.qcow2".into(),
            iso: "installer.iso".into(),
            bridge: "br0".into(),
            vlan: "20".into(),
            ..Default::default()
        };
        let (spec, from) = spec_of(&f).unwrap();
        assert_eq!(spec.name, "web-1");
        assert_eq!(from, ["image", "disk_gib", "iso"]);
        assert_eq!(spec.disks[1].source, Some(disk_spec::Source::NewSizeMib(10 * 1024)));
        assert_eq!((spec.nics[0].bridge.as_str(), spec.nics[0].vlan), ("br0", 20));
        assert!(!spec.autostart);

        let bad = CreateForm {
            vcpus: "two".into(),
            memory_mib: "".into(),
            ..Default::default()
        };
        let e = spec_of(&bad).unwrap_err();
        assert_eq!(e.vcpus, "vCPUs must be a whole number, not \"two\"");
        assert!(e.memory_mib.starts_with("Memory must be a whole number"));
        let none = CreateForm {
            disk_gib: "0".into(),
            ..Default::default()
        };
        assert!(spec_of(&none).unwrap_err().disk_gib.starts_with("Give the VM a disk"));

        let e = refusal_errors("disks[2].iso_volume: the storage pool has no volume", &from);
        assert!(e.iso.starts_with("disks[2].iso_volume"));
        let e = refusal_errors("memory_mib: 9999 MiB is more than the 3000 MiB", &from);
        assert!(e.memory_mib.starts_with("memory_mib: 9999"));
        let e = refusal_errors("nics[0].vlan: 5000 is not a VLAN id", &from);
        assert!(e.network.starts_with("nics[0].vlan"));
        let e = refusal_errors("VM web-1 exists already", &from);
        assert_eq!(e.general, "VM web-1 exists already");
    }

    #[test]
    fn the_pool_offers_images_and_isos_but_not_vm_disks() {
        let v = |n: &str| pb::Volume {
            name: n.into(),
            ..Default::default()
        };
        let (images, isos) = volume_choices(&[
            v("debian.qcow2"),
            v("web-1-disk0.qcow2"),
            v("Installer.ISO"),
            v("raw.img"),
        ]);
        assert_eq!(images, ["debian.qcow2", "raw.img"]);
        assert_eq!(isos, ["Installer.ISO"]);
    }
}
