//! `debvisor.provision.v1.ProvisionService` over the PXE provisioner this
//! agent runs (`provision = "FILE"` in agent.toml): profiles and groups
//! (validated, then stored in the provisioner's SQLite catalog), the machines
//! it has seen and its leases. Changes are for admins only and audited. An
//! agent that runs no provisioner answers UNAVAILABLE, saying how to enable
//! it.

use std::collections::{BTreeMap, HashMap};

use debvisor_api::provision::v1 as pb;
use debvisor_api::provision::v1::provision_service_server::ProvisionService;
use debvisor_provision::Provisioner;
use debvisor_provision::config::Mac;
use debvisor_provision::profiles::{self, Facts, Group, Invalid, Profile, Selector};
use debvisor_provision::store::{CatalogError, Machine, StoreError};
use debvisor_provision::wire;
use tonic::{Request, Response, Status};

use crate::audit_service::Auditor;
use crate::auth::Caller;
use crate::update_service::may_manage_updates;

/// The provisioning service.
#[derive(Clone)]
pub struct ProvisionApi {
    prov: Option<Provisioner>,
    audit: Auditor,
}

/// What UNAVAILABLE says when this agent runs no provisioner.
pub const NOT_RUNNING: &str = "This node runs no PXE provisioner: name its config in /etc/debvisor/agent.toml \
     (provision = \"/etc/debvisor/provision.toml\") and restart debvisor-agent";

impl ProvisionApi {
    /// The service over `prov` (`None`: every call is UNAVAILABLE).
    pub fn new(prov: Option<Provisioner>, audit: Auditor) -> Self {
        Self { prov, audit }
    }

    fn prov(&self) -> Result<&Provisioner, Status> {
        self.prov.as_ref().ok_or_else(|| Status::unavailable(NOT_RUNNING))
    }

    /// Runs `op` for an admin `caller` and records it as `action` on
    /// `target`, whatever the outcome.
    async fn change<T>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        op: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let op = async {
            if !may_manage_updates(caller) {
                return Err(Status::permission_denied(format!(
                    "Changing the provisioner's catalog is allowed only to root on the node's socket, mTLS admin \
                     clients and console admins, not to {}",
                    caller.actor
                )));
            }
            op.await
        };
        self.audit.audited(caller, action, target, op).await
    }

    async fn groups(&self) -> Result<Vec<Group>, Status> {
        self.prov()?.store().groups().await.map_err(store_status)
    }

    async fn profiles(&self) -> Result<Vec<Profile>, Status> {
        self.prov()?.store().profiles().await.map_err(store_status)
    }

    async fn machine(&self, raw: &str) -> Result<pb::Machine, Status> {
        let prov = self.prov()?;
        let mac = mac_field("mac", raw)?;
        let m = prov
            .store()
            .machine(mac)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("No machine {mac} has been seen by the provisioner")))?;
        let groups = self.groups().await?;
        let mut out = wire::machine_to_pb(&m, lease_ip(prov, mac));
        if let Some(g) = profiles::select(&groups, &facts(&m)) {
            out.selected_group = g.name.clone();
            out.selected_profile = g.profile.clone();
        }
        Ok(out)
    }

    /// Checks what the profile's own validation cannot: its image is one
    /// the provisioner holds, and its config template renders to a valid
    /// machine config.
    fn check_profile(&self, p: &Profile) -> Result<(), Status> {
        p.validate().map_err(invalid_status)?;
        let images = self.prov()?.config().images_dir();
        if !images.join(&p.image).is_dir() {
            let held: Vec<String> = std::fs::read_dir(&images)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            return Err(Status::invalid_argument(format!(
                "profile.image = {:?}: the provisioner holds no such image in {} (it holds: {}); copy the image's \
                 pxe/ set to {}",
                p.image,
                images.display(),
                if held.is_empty() {
                    "none".into()
                } else {
                    held.join(", ")
                },
                images.join(&p.image).display()
            )));
        }
        if !p.config.trim().is_empty() {
            let sample = Mac([0x52, 0x54, 0, 0, 0, 1]);
            let text = p.render_config(sample, &profiles::default_hostname(sample));
            debvisor_api::machine::MachineConfig::from_toml(&text).map_err(|e| {
                Status::invalid_argument(format!(
                    "profile.config: rendered for {sample} it is not a valid machine config: {}",
                    crate::error_chain(&e)
                ))
            })?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ProvisionService for ProvisionApi {
    async fn list_profiles(
        &self,
        req: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        Caller::of(&req)?;
        let profiles = self.profiles().await?.iter().map(wire::profile_to_pb).collect();
        Ok(Response::new(pb::ListProfilesResponse { profiles }))
    }

    async fn get_profile(&self, req: Request<pb::GetProfileRequest>) -> Result<Response<pb::Profile>, Status> {
        Caller::of(&req)?;
        let name = req.into_inner().name;
        name_field("name", &name)?;
        self.profiles()
            .await?
            .iter()
            .find(|p| p.name == name)
            .map(|p| Response::new(wire::profile_to_pb(p)))
            .ok_or_else(|| Status::not_found(format!("No profile {name:?}")))
    }

    async fn put_profile(&self, req: Request<pb::PutProfileRequest>) -> Result<Response<pb::Profile>, Status> {
        let caller = Caller::of(&req)?;
        let raw = req.into_inner().profile.unwrap_or_default();
        let target = format!("profile:{}", raw.name);
        let op = async {
            let p = wire::profile_from_pb(&raw).map_err(invalid_status)?;
            self.check_profile(&p)?;
            self.prov()?.store().put_profile(&p).await.map_err(catalog_status)?;
            Ok(wire::profile_to_pb(&p))
        };
        self.change(&caller, "provision.profile.put", &target, op).await
    }

    async fn delete_profile(
        &self,
        req: Request<pb::DeleteProfileRequest>,
    ) -> Result<Response<pb::DeleteProfileResponse>, Status> {
        let caller = Caller::of(&req)?;
        let name = req.into_inner().name;
        let target = format!("profile:{name}");
        let op = async {
            name_field("name", &name)?;
            match self.prov()?.store().delete_profile(&name).await {
                Ok(true) => Ok(pb::DeleteProfileResponse {}),
                Ok(false) => Err(Status::not_found(format!("No profile {name:?}"))),
                Err(e) => Err(catalog_status(e)),
            }
        };
        self.change(&caller, "provision.profile.delete", &target, op).await
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        Caller::of(&req)?;
        let groups = self.groups().await?.iter().map(wire::group_to_pb).collect();
        Ok(Response::new(pb::ListGroupsResponse { groups }))
    }

    async fn get_group(&self, req: Request<pb::GetGroupRequest>) -> Result<Response<pb::Group>, Status> {
        Caller::of(&req)?;
        let name = req.into_inner().name;
        name_field("name", &name)?;
        self.groups()
            .await?
            .iter()
            .find(|g| g.name == name)
            .map(|g| Response::new(wire::group_to_pb(g)))
            .ok_or_else(|| Status::not_found(format!("No group {name:?}")))
    }

    async fn put_group(&self, req: Request<pb::PutGroupRequest>) -> Result<Response<pb::Group>, Status> {
        let caller = Caller::of(&req)?;
        let raw = req.into_inner().group.unwrap_or_default();
        let target = format!("group:{}", raw.name);
        let op = async {
            let g = wire::group_from_pb(&raw).map_err(invalid_status)?;
            g.validate().map_err(invalid_status)?;
            self.prov()?.store().put_group(&g).await.map_err(catalog_status)?;
            Ok(wire::group_to_pb(&g))
        };
        self.change(&caller, "provision.group.put", &target, op).await
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let caller = Caller::of(&req)?;
        let name = req.into_inner().name;
        let target = format!("group:{name}");
        let op = async {
            name_field("name", &name)?;
            match self.prov()?.store().delete_group(&name).await {
                Ok(true) => Ok(pb::DeleteGroupResponse {}),
                Ok(false) => Err(Status::not_found(format!("No group {name:?}"))),
                Err(e) => Err(store_status(e)),
            }
        };
        self.change(&caller, "provision.group.delete", &target, op).await
    }

    async fn list_machines(
        &self,
        req: Request<pb::ListMachinesRequest>,
    ) -> Result<Response<pb::ListMachinesResponse>, Status> {
        Caller::of(&req)?;
        let r = req.into_inner();
        if !r.profile.is_empty() {
            name_field("profile", &r.profile)?;
        }
        let prov = self.prov()?;
        let mut all = prov.store().machines().await.map_err(store_status)?;
        all.retain(|m| {
            (r.profile.is_empty() || m.profile.as_deref() == Some(r.profile.as_str()))
                && r.installed.is_none_or(|i| m.installed == i)
        });
        all.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.mac.cmp(&b.mac)));
        let mut ips = lease_ips(prov);
        let machines = all
            .iter()
            .map(|m| wire::machine_to_pb(m, ips.remove(&m.mac).unwrap_or_default()))
            .collect();
        Ok(Response::new(pb::ListMachinesResponse { machines }))
    }

    async fn get_machine(&self, req: Request<pb::GetMachineRequest>) -> Result<Response<pb::Machine>, Status> {
        Caller::of(&req)?;
        self.machine(&req.into_inner().mac).await.map(Response::new)
    }

    async fn set_machine_labels(
        &self,
        req: Request<pb::SetMachineLabelsRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.into_inner();
        let target = format!("machine:{}", r.mac);
        let op = async {
            let mac = mac_field("mac", &r.mac)?;
            let labels: BTreeMap<String, String> = r.labels.clone().into_iter().collect();
            // The rules of a group selector's labels, checked by the group's
            // own validation.
            Group {
                name: "labels".into(),
                profile: "labels".into(),
                selector: Selector {
                    labels: labels.clone(),
                    ..Default::default()
                },
            }
            .validate()
            .map_err(|e| Status::invalid_argument(e.to_string().replacen("group.selector.labels", "labels", 1)))?;
            let known = self
                .prov()?
                .store()
                .set_labels(mac, &labels)
                .await
                .map_err(store_status)?;
            if !known {
                return Err(Status::not_found(format!(
                    "No machine {mac} has been seen by the provisioner"
                )));
            }
            self.machine(&r.mac).await
        };
        self.change(&caller, "provision.machine.labels", &target, op).await
    }

    async fn reset_machine(&self, req: Request<pb::ResetMachineRequest>) -> Result<Response<pb::Machine>, Status> {
        let caller = Caller::of(&req)?;
        let raw = req.into_inner().mac;
        let target = format!("machine:{raw}");
        let op = async {
            let mac = mac_field("mac", &raw)?;
            let known = self
                .prov()?
                .store()
                .set_installed(mac, false)
                .await
                .map_err(store_status)?;
            if !known {
                return Err(Status::not_found(format!(
                    "No machine {mac} has been seen by the provisioner"
                )));
            }
            self.machine(&raw).await
        };
        self.change(&caller, "provision.machine.reset", &target, op).await
    }

    async fn delete_machine(
        &self,
        req: Request<pb::DeleteMachineRequest>,
    ) -> Result<Response<pb::DeleteMachineResponse>, Status> {
        let caller = Caller::of(&req)?;
        let raw = req.into_inner().mac;
        let target = format!("machine:{raw}");
        let op = async {
            let mac = mac_field("mac", &raw)?;
            match self.prov()?.store().delete_machine(mac).await {
                Ok(true) => Ok(pb::DeleteMachineResponse {}),
                Ok(false) => Err(Status::not_found(format!(
                    "No machine {mac} has been seen by the provisioner"
                ))),
                Err(e) => Err(store_status(e)),
            }
        };
        self.change(&caller, "provision.machine.delete", &target, op).await
    }

    async fn list_leases(
        &self,
        req: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        Caller::of(&req)?;
        let all = req.into_inner().include_expired;
        let prov = self.prov()?;
        let now = debvisor_provision::server::unix_now();
        let mut leases: Vec<pb::Lease> = prov
            .leases()
            .into_iter()
            .filter(|l| all || l.expires > now)
            .map(|l| pb::Lease {
                ip: l.ip.to_string(),
                mac: l.mac.to_string(),
                expires: l.expires,
                hostname: l.hostname.clone().unwrap_or_default(),
                reserved: prov.reserved(l.mac, l.ip),
            })
            .collect();
        leases.sort_by_key(|l| l.ip.parse::<std::net::Ipv4Addr>().ok());
        Ok(Response::new(pb::ListLeasesResponse { leases }))
    }
}

/// The address each MAC holds an unexpired lease on, read once from the
/// provisioner's lease table.
fn lease_ips(prov: &Provisioner) -> HashMap<Mac, String> {
    let now = debvisor_provision::server::unix_now();
    prov.leases()
        .into_iter()
        .filter(|l| l.expires > now)
        .map(|l| (l.mac, l.ip.to_string()))
        .collect()
}

/// The address `mac` holds a lease on, or "" without one.
fn lease_ip(prov: &Provisioner, mac: Mac) -> String {
    lease_ips(prov).remove(&mac).unwrap_or_default()
}

/// iPXE's build architecture for a DHCP option 93 value, as group selectors
/// name it.
fn buildarch(option93: Option<u16>) -> Option<String> {
    match option93? {
        0 => Some("i386".into()),
        6 => Some("i386".into()),
        7 | 9 | 16 => Some("x86_64".into()),
        11 | 19 => Some("arm64".into()),
        10 | 18 => Some("arm32".into()),
        _ => None,
    }
}

fn facts(m: &Machine) -> Facts {
    Facts {
        mac: Some(m.mac),
        uuid: m.uuid.clone(),
        arch: buildarch(m.arch),
        labels: m.labels.clone(),
    }
}

fn name_field(field: &str, raw: &str) -> Result<(), Status> {
    if profiles::is_name(raw) {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "{field} = {:?}: 1-63 of a-z 0-9 -, not starting or ending with -",
        raw.chars().take(80).collect::<String>()
    )))
}

fn mac_field(field: &str, raw: &str) -> Result<Mac, Status> {
    raw.parse::<Mac>()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn invalid_status(e: Invalid) -> Status {
    Status::invalid_argument(e.to_string())
}

fn store_status(e: StoreError) -> Status {
    let msg = crate::error_chain(&e);
    match e {
        StoreError::Busy => Status::resource_exhausted(msg),
        _ => Status::unavailable(msg),
    }
}

fn catalog_status(e: CatalogError) -> Status {
    match e {
        CatalogError::Invalid(i) => invalid_status(i),
        CatalogError::NoProfile { .. } => Status::failed_precondition(e.to_string()),
        CatalogError::InUse { .. } => Status::failed_precondition(e.to_string()),
        CatalogError::Store(s) => store_status(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_93_maps_to_ipxe_buildarch() {
        assert_eq!(buildarch(Some(7)).as_deref(), Some("x86_64"));
        assert_eq!(buildarch(Some(0)).as_deref(), Some("i386"));
        assert_eq!(buildarch(Some(11)).as_deref(), Some("arm64"));
        assert_eq!(buildarch(None), None);
        assert_eq!(buildarch(Some(999)), None);
    }
}
