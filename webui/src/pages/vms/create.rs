//! The create form: its values, their checks, and the agent's refusals put
//! under the field they name.

use super::*;

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

pub(super) async fn new_page(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
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

pub(super) async fn create(
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

#[cfg(test)]
mod tests {
    use super::*;

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
