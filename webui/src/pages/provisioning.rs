//! The provisioning page: what the node's PXE provisioner knows (the
//! machines it has seen, its profiles and groups, its DHCP leases), through
//! the agent's `debvisor.provision.v1`, and the one action a console user
//! takes there, letting an installed machine install again on its next PXE
//! boot. Profiles and groups are changed with `debvisorctl provision`.
//!
//! | route | permission | what |
//! |---|---|---|
//! | `GET /provisioning` | `ViewConfig` | machines, profiles, groups, leases; or why there are none |
//! | `POST /provisioning/machines/{mac}/reset` | `ManageProvisioning` | forget a machine's install (audited by the agent) |

use askama::Template;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use debvisor_api::provision::v1::provision_service_client::ProvisionServiceClient;
use debvisor_api::provision::v1::{
    self as pb, ListGroupsRequest, ListLeasesRequest, ListMachinesRequest, ListProfilesRequest, ResetMachineRequest,
};
use debvisor_api::provision::{disk_text, labels_text, mode_word, selector_text};
use serde::Deserialize;
use tonic::transport::Channel;

use crate::AppState;
use crate::agent::{AgentError, bounded, on_behalf_of};
use crate::auth::tokens_match;
use crate::error::AppError;
use crate::flash::Flash;
use crate::handlers::{RequireSession, nav};
use crate::pages::audit::utc_text;
use crate::roles::Permission;
use crate::views::Chrome;

/// The page's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/provisioning", get(page))
        .route("/provisioning/machines/{mac}/reset", post(reset))
}

/// A machine row.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineRow {
    /// Its MAC.
    pub mac: String,
    /// Its lease's address or "-".
    pub ip: String,
    /// How it booted last.
    pub client: String,
    /// The profile it was last given or "-".
    pub profile: String,
    /// Whether its install finished.
    pub installed: bool,
    /// When it was last seen.
    pub last_seen: String,
    /// `k=v, ...` or "-".
    pub labels: String,
    /// Where its reset form posts.
    pub reset: String,
}

/// A profile row.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRow {
    /// Its name.
    pub name: String,
    /// live or install.
    pub mode: &'static str,
    /// The image version.
    pub image: String,
    /// The disk an install writes, or "-".
    pub disk: String,
}

/// A group row.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    /// Its name.
    pub name: String,
    /// The profile it gives.
    pub profile: String,
    /// What it matches.
    pub matches: String,
}

/// A lease row.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRow {
    /// The address.
    pub ip: String,
    /// The MAC.
    pub mac: String,
    /// Its host name or "-".
    pub hostname: String,
    /// When it ends.
    pub expires: String,
    /// reservation or pool.
    pub kind: &'static str,
}

/// Everything the provisioner told.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// Machines, most recently seen first.
    pub machines: Vec<MachineRow>,
    /// Profiles by name.
    pub profiles: Vec<ProfileRow>,
    /// Groups by name.
    pub groups: Vec<GroupRow>,
    /// Leases by address.
    pub leases: Vec<LeaseRow>,
}

/// The page.
#[derive(Template)]
#[template(path = "provisioning.html")]
pub struct ProvisioningPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The catalog, or why it could not be read.
    pub catalog: Result<Catalog, String>,
    /// True when the agent runs no provisioner (the error says how to
    /// enable one).
    pub not_running: bool,
    /// Whether the session may reset machines.
    pub can_manage: bool,
    /// The session's CSRF token.
    pub csrf: String,
    /// The outcome of the last action.
    pub flash: Option<Flash>,
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn secs(s: u64) -> String {
    utc_text(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))
}

/// The rows of the provisioner's answers.
pub fn catalog(
    machines: &[pb::Machine],
    profiles: &[pb::Profile],
    groups: &[pb::Group],
    leases: &[pb::Lease],
) -> Catalog {
    Catalog {
        machines: machines
            .iter()
            .map(|m| MachineRow {
                mac: m.mac.clone(),
                ip: or_dash(&m.ip),
                client: m.client.clone(),
                profile: or_dash(&m.profile),
                installed: m.installed,
                last_seen: secs(m.last_seen),
                labels: labels_text(&m.labels, ", "),
                reset: format!("/provisioning/machines/{}/reset", m.mac),
            })
            .collect(),
        profiles: profiles
            .iter()
            .map(|p| ProfileRow {
                name: p.name.clone(),
                mode: mode_word(p.mode),
                image: p.image.clone(),
                disk: disk_text(p),
            })
            .collect(),
        groups: groups
            .iter()
            .map(|g| GroupRow {
                name: g.name.clone(),
                profile: g.profile.clone(),
                matches: selector_text(g.selector.as_ref()),
            })
            .collect(),
        leases: leases
            .iter()
            .map(|l| LeaseRow {
                ip: l.ip.clone(),
                mac: l.mac.clone(),
                hostname: or_dash(&l.hostname),
                expires: secs(l.expires),
                kind: if l.reserved { "reservation" } else { "pool" },
            })
            .collect(),
    }
}

async fn client(state: &AppState) -> Result<ProvisionServiceClient<Channel>, AgentError> {
    Ok(ProvisionServiceClient::new(state.node().channel().await?))
}

async fn fetch(state: &AppState, user: &str) -> Result<Catalog, AgentError> {
    let mut c = client(state).await?;
    let u = Some(user);
    let machines = c
        .list_machines(on_behalf_of(ListMachinesRequest::default(), u))
        .await?
        .into_inner();
    let profiles = c
        .list_profiles(on_behalf_of(ListProfilesRequest {}, u))
        .await?
        .into_inner();
    let groups = c.list_groups(on_behalf_of(ListGroupsRequest {}, u)).await?.into_inner();
    let leases = c
        .list_leases(on_behalf_of(ListLeasesRequest { include_expired: false }, u))
        .await?
        .into_inner();
    Ok(catalog(
        &machines.machines,
        &profiles.profiles,
        &groups.groups,
        &leases.leases,
    ))
}

async fn page(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewConfig)?;
    let result = bounded("provisioning", fetch(&state, &session.user)).await;
    let not_running = matches!(&result, Err(AgentError::Call(s)) if s.code() == tonic::Code::Unavailable);
    let catalog = result.map_err(|e| match e {
        AgentError::Call(s) => s.message().chars().take(400).collect(),
        other => other.summary(),
    });
    let page = ProvisioningPage {
        chrome: state.chrome(Some(nav(session, "provisioning"))).await,
        catalog,
        not_running,
        can_manage: session.role.allows(Permission::ManageProvisioning),
        csrf: session.csrf.clone(),
        flash: state.flashes().take(session),
    };
    Ok(Html(page.render()?).into_response())
}

/// The reset form.
#[derive(Debug, Deserialize)]
pub struct ResetForm {
    #[serde(default)]
    csrf: String,
}

async fn reset(
    State(state): State<AppState>,
    required: RequireSession,
    Path(mac): Path<String>,
    form: Result<Form<ResetForm>, FormRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageProvisioning)?;
    let Form(form) = form.map_err(|_| AppError::BadRequest)?;
    if !tokens_match(&form.csrf, &session.csrf) {
        tracing::warn!(user = %session.user, "machine reset refused: missing or wrong CSRF token");
        return Err(AppError::Csrf);
    }
    let user = session.user.clone();
    // The agent validates the MAC and names it in its refusal.
    let request = ResetMachineRequest { mac: mac.clone() };
    let result = bounded("machine reset", async {
        let mut c = client(&state).await?;
        Ok(c.reset_machine(on_behalf_of(request, Some(&user))).await?.into_inner())
    })
    .await;
    let shown: String = mac.chars().take(40).collect();
    let flash = match result {
        Ok(m) => Flash {
            level: "ok",
            text: format!(
                "{} will install again on its next PXE boot{}.",
                m.mac,
                if m.selected_profile.is_empty() {
                    String::from(" (no group matches it now: give it one first)")
                } else {
                    format!(" (profile {})", m.selected_profile)
                }
            ),
        },
        Err(AgentError::Call(s)) => Flash {
            level: "fail",
            text: format!(
                "Could not reset {shown}: {}",
                s.message().chars().take(300).collect::<String>()
            ),
        },
        Err(e) => Flash {
            level: "fail",
            text: format!("Could not reset {shown}: {}", e.summary()),
        },
    };
    state.flashes().put(session, flash);
    Ok(Redirect::to("/provisioning").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_like_the_cli() {
        let m = pb::Machine {
            mac: "52:54:00:aa:bb:01".into(),
            client: "ipxe".into(),
            installed: true,
            last_seen: 1_795_000_000,
            labels: [("rack".to_string(), "r1".to_string())].into_iter().collect(),
            ..Default::default()
        };
        let g = pb::Group {
            name: "all".into(),
            profile: "live".into(),
            selector: None,
        };
        let c = catalog(&[m], &[], &[g], &[]);
        assert_eq!(c.machines[0].ip, "-");
        assert_eq!(c.machines[0].labels, "rack=r1");
        assert_eq!(c.machines[0].reset, "/provisioning/machines/52:54:00:aa:bb:01/reset");
        assert!(c.machines[0].last_seen.ends_with(" UTC"), "{}", c.machines[0].last_seen);
        assert_eq!(c.groups[0].matches, "every machine");
    }
}
