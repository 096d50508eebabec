//! A VM's page and the changes made from it and from the list: actions,
//! delete, clone, snapshots.

use super::*;

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
    /// Its serial console's page, when it runs and the session may use it.
    pub console: Option<String>,
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

pub(super) async fn vm_page(
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
    let can_manage = session.role.allows(Permission::ManageVms);
    let running = matches!(state_text.as_str(), "running" | "blocked");
    let page = VmPage {
        chrome: state.chrome(Some(nav(session, "vms"))).await,
        console: (can_manage && running).then(|| format!("{}/console", vm_href(&name))),
        href: vm_href(&name),
        name: name.chars().take(64).collect(),
        state_class: state_class(&state_text),
        actions: actions_for(&state_text),
        state: state_text,
        vm,
        can_manage,
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

pub(super) async fn action(
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

pub(super) async fn delete(
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

pub(super) async fn clone(
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

pub(super) async fn snapshot_create(
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

pub(super) async fn snapshot_op(
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
