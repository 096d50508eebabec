//! The provisioner's HTTP server: the iPXE scripts (the chain from
//! `/boot.ipxe` to a per-machine script chosen by groups and profiles), the
//! iPXE binaries for UEFI HTTP boot, the image sets, the per-machine config
//! and the installer's "done" report.
//!
//! No request path is ever joined onto a directory as given: versions and
//! file names are checked against fixed shapes and lists first.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::config::{Config, Mac, Mode};
use crate::metrics::Metrics;
use crate::profiles::{BootMode, Facts, Profile, default_hostname, is_version, select};
use crate::server::unix_now;
use crate::store::{Machine, Store};

/// The files of an image set served under `/images/VERSION/`.
pub const IMAGE_FILES: &[&str] = &["vmlinuz", "initrd.img", "rootfs.squashfs", "install.img", "SHA256SUMS"];

/// What the handlers share.
pub struct HttpState {
    /// `http://ADDRESS:PORT` of the network this server answers on.
    pub base: String,
    /// The provisioner config.
    pub cfg: Arc<Config>,
    /// The mode of the network this server answers on.
    pub mode: Mode,
    /// Profiles, groups, machines.
    pub store: Store,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The registry `/metrics` shows (None inside the agent, which has its own).
    pub registry: Option<Arc<Registry>>,
}

/// The routes.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/ipxe", get(machine_script))
        .route("/ipxe/{file}", get(ipxe_binary))
        .route("/images/{version}/{file}", get(image_file))
        .route("/machines/{mac}/config", get(machine_config))
        .route("/machines/{mac}/installed", post(installed))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// An HTTP error with a message that says what to do.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1 + "\n",
        )
            .into_response()
    }
}

fn refused(s: &HttpState, code: StatusCode, what: &'static str, msg: String) -> Refused {
    tracing::info!(status = %code, "HTTP {what}: {msg}");
    s.metrics.http(what);
    Refused(code, msg)
}

fn internal(s: &HttpState, e: impl std::fmt::Display) -> Refused {
    refused(s, StatusCode::INTERNAL_SERVER_ERROR, "error", e.to_string())
}

fn ipxe(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// A script that says `msg` and hands the machine back to its firmware's
/// next boot option. `exit 1`, not `exit`: a UEFI boot manager (edk2's BDS)
/// takes a successful return as "show the boot menu" and stops there; only
/// a failure makes it go on through the boot order.
fn next_device(msg: &str) -> Response {
    ipxe(format!("#!ipxe\necho DebVisor provisioner: {msg}\nexit 1\n"))
}

/// The first script every iPXE gets: it chains to its own script, passing
/// what iPXE knows of the machine.
async fn boot_ipxe(State(s): State<Arc<HttpState>>) -> Response {
    s.metrics.http("ok");
    ipxe(format!(
        "#!ipxe\nchain {}/ipxe?mac=${{mac:hexhyp}}&uuid=${{uuid}}&arch=${{buildarch}}&platform=${{platform}}\n",
        s.base
    ))
}

#[derive(Debug, Deserialize)]
struct MachineQuery {
    mac: Option<String>,
    uuid: Option<String>,
    arch: Option<String>,
    platform: Option<String>,
}

fn parse_mac(s: &HttpState, m: &str) -> Result<Mac, Refused> {
    m.parse()
        .map_err(|e: String| refused(s, StatusCode::BAD_REQUEST, "bad_request", e))
}

/// The facts of a machine (what it says, plus its stored labels) and its record.
async fn facts(
    s: &HttpState,
    mac: Mac,
    uuid: Option<String>,
    arch: Option<String>,
) -> Result<(Facts, Option<Machine>), Refused> {
    let record = s.store.machine(mac).await.map_err(|e| internal(s, e))?;
    let facts = Facts {
        mac: Some(mac),
        uuid: uuid.or_else(|| record.as_ref().and_then(|r| r.uuid.clone())),
        arch,
        labels: record.as_ref().map(|r| r.labels.clone()).unwrap_or_default(),
    };
    Ok((facts, record))
}

/// The profile the groups give `f`, or a message saying why there is none.
async fn profile_for(s: &HttpState, f: &Facts) -> Result<Result<Profile, String>, Refused> {
    let groups = s.store.groups().await.map_err(|e| internal(s, e))?;
    let Some(group) = select(&groups, f) else {
        return Ok(Err(
            "no group matches this machine: add a group (or a default group with an empty selector)".into(),
        ));
    };
    let profiles = s.store.profiles().await.map_err(|e| internal(s, e))?;
    Ok(profiles.into_iter().find(|p| p.name == group.profile).ok_or_else(|| {
        format!(
            "group {} names profile {}, which does not exist",
            group.name, group.profile
        )
    }))
}

fn is_uuid(u: &str) -> bool {
    u.len() == 36 && u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

async fn machine_script(State(s): State<Arc<HttpState>>, Query(q): Query<MachineQuery>) -> Result<Response, Refused> {
    let mac = parse_mac(&s, q.mac.as_deref().unwrap_or(""))?;
    // iPXE sends an empty ${uuid} when the firmware has none.
    let uuid = q.uuid.filter(|u| !u.is_empty()).map(|u| u.to_ascii_lowercase());
    if let Some(u) = uuid.as_deref().filter(|u| !is_uuid(u)) {
        return Err(refused(
            &s,
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("uuid {u:?} is not a UUID"),
        ));
    }
    let arch = q.arch.filter(|a| !a.is_empty());
    if let Some(a) = arch
        .as_deref()
        .filter(|a| !["x86_64", "i386", "arm64", "arm32"].contains(a))
    {
        return Err(refused(
            &s,
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("arch {a:?}: expected iPXE's buildarch"),
        ));
    }
    let platform = q.platform.unwrap_or_default();
    if !["", "pcbios", "efi"].contains(&platform.as_str()) {
        return Err(refused(
            &s,
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("platform {platform:?}: expected pcbios or efi"),
        ));
    }
    let (f, record) = facts(&s, mac, uuid.clone(), arch).await?;
    let profile = profile_for(&s, &f).await?;
    s.store
        .machine_booted(
            mac,
            uuid.as_deref(),
            profile.as_ref().ok().map(|p| p.name.as_str()),
            unix_now(),
        )
        .await
        .map_err(|e| internal(&s, e))?;
    s.metrics.http("ok");
    let profile = match profile {
        Ok(p) => p,
        Err(why) => {
            tracing::warn!(%mac, "{why}");
            return Ok(next_device(&format!("{mac}: {why}. Booting the next device.")));
        }
    };
    if profile.mode == BootMode::Install && record.is_some_and(|r| r.installed) {
        return Ok(next_device(&format!(
            "{mac} is installed (profile {}): booting the next device, its disk.",
            profile.name
        )));
    }
    let sums = read_sums(&s, &profile.image).await?;
    let img = format!("{}/images/{}", s.base, profile.image);
    // The MAC the server knows, not iPXE's ${mac} (which names net0, not
    // necessarily the NIC that booted).
    let mac_path = mac.to_string().replace(':', "-");
    // boot=debvisor selects the image's initramfs script; BOOTIF (PXELINUX
    // style) tells it which NIC to bring up: the one that booted.
    let mut args = format!(
        "initrd=initrd.img boot=debvisor ip=dhcp BOOTIF=01-{mac_path} debvisor.config={}/machines/{mac_path}/config",
        s.base
    );
    match profile.mode {
        BootMode::Live => {
            let sha = sum_of(&s, &sums, &profile.image, "rootfs.squashfs")?;
            let _ = write!(args, " debvisor.live={img}/rootfs.squashfs debvisor.live_sha256={sha}");
        }
        BootMode::Install => {
            let sha = sum_of(&s, &sums, &profile.image, "install.img")?;
            let disk = profile
                .install_disk
                .as_ref()
                .map(|d| d.kernel_arg())
                .unwrap_or_default();
            let _ = write!(
                args,
                " debvisor.install={img}/install.img debvisor.install_sha256={sha} debvisor.install_disk={disk} \
                 debvisor.installed={}/machines/{mac_path}/installed",
                s.base
            );
        }
    }
    for a in &profile.kernel_args {
        let _ = write!(args, " {a}");
    }
    let mode = if profile.mode == BootMode::Live {
        "live"
    } else {
        "install"
    };
    Ok(ipxe(format!(
        "#!ipxe\necho DebVisor provisioner: {mac} ({platform}): profile {} ({mode}), image {}\n\
         kernel {img}/vmlinuz {args}\ninitrd {img}/initrd.img\nboot\n",
        profile.name, profile.image
    )))
}

/// The image set's SHA256SUMS.
async fn read_sums(s: &HttpState, version: &str) -> Result<String, Refused> {
    if !is_version(version) {
        return Err(internal(s, format!("profile image {version:?} is not a version")));
    }
    let path = s.cfg.images_dir().join(version).join("SHA256SUMS");
    tokio::fs::read_to_string(&path).await.map_err(|e| {
        internal(
            s,
            format!(
                "image {version}: cannot read {}: {e}: copy the image builder's PXE set there",
                path.display()
            ),
        )
    })
}

fn sum_of(s: &HttpState, sums: &str, version: &str, file: &str) -> Result<String, Refused> {
    sums.lines()
        .find_map(|l| {
            let (hex, name) = l.split_once(char::is_whitespace)?;
            (name.trim_start_matches([' ', '*']) == file
                && hex.len() == 64
                && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| hex.to_ascii_lowercase())
        })
        .ok_or_else(|| internal(s, format!("image {version}: SHA256SUMS has no sum for {file}")))
}

async fn serve_file(s: &HttpState, path: PathBuf, req: Request) -> Result<Response, Refused> {
    match ServeFile::new(path).oneshot(req).await {
        Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_MODIFIED => {
            s.metrics.http("ok");
            Ok(r.into_response())
        }
        Ok(r) => Err(refused(s, r.status(), "not_found", "no such file".into())),
        Err(e) => Err(internal(s, e)),
    }
}

async fn ipxe_binary(
    State(s): State<Arc<HttpState>>,
    Path(file): Path<String>,
    req: Request,
) -> Result<Response, Refused> {
    let path = crate::tftp::resolve(&s.cfg.tftp.root, std::path::Path::new(&file)).map_err(|why| {
        let (code, what) = match why {
            crate::tftp::Refusal::Path => (StatusCode::FORBIDDEN, "refused"),
            crate::tftp::Refusal::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        };
        refused(
            &s,
            code,
            what,
            format!(
                "{file:?}: only the iPXE binaries of {} are served",
                s.cfg.tftp.root.display()
            ),
        )
    })?;
    serve_file(&s, path, req).await
}

async fn image_file(
    State(s): State<Arc<HttpState>>,
    Path((version, file)): Path<(String, String)>,
    req: Request,
) -> Result<Response, Refused> {
    if !is_version(&version) || !IMAGE_FILES.contains(&file.as_str()) {
        return Err(refused(
            &s,
            StatusCode::FORBIDDEN,
            "refused",
            format!(
                "/images/{version}/{file}: only {} of an image version are served",
                IMAGE_FILES.join(", ")
            ),
        ));
    }
    serve_file(&s, s.cfg.images_dir().join(&version).join(&file), req).await
}

/// In server mode a machine's config and its install report are taken only
/// from the address this provisioner gave that MAC (its reservation or its
/// lease), so another host on the network can neither read a machine's
/// config nor mark it installed. Proxy mode hands out no addresses (the
/// site's server does): there the provisioning network is the boundary.
async fn check_peer(s: &HttpState, mac: Mac, peer: SocketAddr) -> Result<(), Refused> {
    if s.mode == Mode::Proxy {
        return Ok(());
    }
    let ip = match s.cfg.reservation(mac) {
        Some(r) => Some(r.ip),
        None => s.store.lease_ip(mac).await.map_err(|e| internal(s, e))?,
    };
    // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
    let from = peer.ip().to_canonical();
    match ip {
        Some(ip) if from == IpAddr::V4(ip) => Ok(()),
        Some(ip) => Err(refused(
            s,
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{mac} has address {ip}; its config and install report are taken only from there (this request came from {from})"
            ),
        )),
        None => Err(refused(
            s,
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{mac} has no lease or reservation here: boot it from this network first"),
        )),
    }
}

async fn machine_config(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(mac): Path<String>,
) -> Result<Response, Refused> {
    let mac = parse_mac(&s, &mac)?;
    check_peer(&s, mac, peer).await?;
    let (f, _) = facts(&s, mac, None, None).await?;
    let profile = profile_for(&s, &f)
        .await?
        .map_err(|why| refused(&s, StatusCode::NOT_FOUND, "not_found", format!("{mac}: {why}")))?;
    let hostname = s
        .cfg
        .reservation(mac)
        .and_then(|r| r.hostname.clone())
        .unwrap_or_else(|| default_hostname(mac));
    s.metrics.http("ok");
    Ok((
        [(header::CONTENT_TYPE, "application/toml")],
        profile.render_config(mac, &hostname),
    )
        .into_response())
}

async fn installed(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(mac): Path<String>,
) -> Result<Response, Refused> {
    let mac = parse_mac(&s, &mac)?;
    check_peer(&s, mac, peer).await?;
    if !s.store.set_installed(mac, true).await.map_err(|e| internal(&s, e))? {
        return Err(refused(
            &s,
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{mac} never asked for a boot script here"),
        ));
    }
    tracing::info!(%mac, "install reported done: the machine boots from its disk from now on");
    s.metrics.http("ok");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn metrics(State(s): State<Arc<HttpState>>) -> Result<Response, Refused> {
    let Some(reg) = &s.registry else {
        return Err(refused(
            &s,
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are on the agent's /metrics".into(),
        ));
    };
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, reg).map_err(|e| internal(&s, e))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

#[cfg(test)]
mod tests;
