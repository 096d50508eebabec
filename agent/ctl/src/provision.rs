//! `provision profiles|profile|groups|group|machines|machine|leases`
//! (debvisor.provision.v1).

use std::path::Path;

use anyhow::Context as _;
use debvisor_api::provision::v1::provision_service_client::ProvisionServiceClient;
use debvisor_api::provision::v1::{
    self as pb, DeleteGroupRequest, DeleteMachineRequest, DeleteProfileRequest, GetGroupRequest, GetMachineRequest,
    GetProfileRequest, ListGroupsRequest, ListLeasesRequest, ListMachinesRequest, ListProfilesRequest, PutGroupRequest,
    PutProfileRequest, ResetMachineRequest, SetMachineLabelsRequest,
};
use debvisor_api::provision::{disk_text, labels_text, mode_word, selector_text};
use debvisor_provision::profiles::{Group, Profile};
use debvisor_provision::wire;
use tonic::transport::Channel;

use crate::UsageError;
use crate::cli::{CatalogCmd, MachineCmd, ProvisionCmd};
use crate::output::{Table, or_dash, render_kv};
use crate::rpc::Ctx;
use crate::timefmt::format_unix_ms;

fn client(ctx: &Ctx) -> ProvisionServiceClient<Channel> {
    ProvisionServiceClient::new(ctx.channel.clone())
}

/// Runs one `provision` subcommand.
pub async fn run(ctx: &Ctx, cmd: &ProvisionCmd) -> anyhow::Result<()> {
    match cmd {
        ProvisionCmd::Profiles => {
            let r = ctx
                .call(client(ctx).list_profiles(ctx.req(ListProfilesRequest {})))
                .await
                .context("Cannot list the profiles")?;
            ctx.show(&r, || render_profiles(&r.profiles))
        }
        ProvisionCmd::Profile(CatalogCmd::Show(a)) => {
            let p = ctx
                .call(client(ctx).get_profile(ctx.req(GetProfileRequest { name: a.name.clone() })))
                .await
                .with_context(|| format!("Cannot read profile {}", a.name))?;
            ctx.show(&p, || render_profile(&p))
        }
        ProvisionCmd::Profile(CatalogCmd::Put(f)) => {
            let p: Profile = read_toml(&f.file, "profile")?;
            let name = p.name.clone();
            let stored = ctx
                .call(client(ctx).put_profile(ctx.req(PutProfileRequest {
                    profile: Some(wire::profile_to_pb(&p)),
                })))
                .await
                .with_context(|| format!("Cannot store profile {name}"))?;
            ctx.show(&stored, || format!("profile {name} stored\n"))
        }
        ProvisionCmd::Profile(CatalogCmd::Delete(a)) => {
            let r = ctx
                .call(client(ctx).delete_profile(ctx.req(DeleteProfileRequest { name: a.name.clone() })))
                .await
                .with_context(|| format!("Cannot delete profile {}", a.name))?;
            ctx.show(&r, || format!("profile {} deleted\n", a.name))
        }
        ProvisionCmd::Groups => {
            let r = ctx
                .call(client(ctx).list_groups(ctx.req(ListGroupsRequest {})))
                .await
                .context("Cannot list the groups")?;
            ctx.show(&r, || render_groups(&r.groups))
        }
        ProvisionCmd::Group(CatalogCmd::Show(a)) => {
            let g = ctx
                .call(client(ctx).get_group(ctx.req(GetGroupRequest { name: a.name.clone() })))
                .await
                .with_context(|| format!("Cannot read group {}", a.name))?;
            ctx.show(&g, || render_groups(std::slice::from_ref(&g)))
        }
        ProvisionCmd::Group(CatalogCmd::Put(f)) => {
            let g: Group = read_toml(&f.file, "group")?;
            let name = g.name.clone();
            let stored = ctx
                .call(client(ctx).put_group(ctx.req(PutGroupRequest {
                    group: Some(wire::group_to_pb(&g)),
                })))
                .await
                .with_context(|| format!("Cannot store group {name}"))?;
            ctx.show(&stored, || {
                format!("group {name} stored (profile {})\n", stored.profile)
            })
        }
        ProvisionCmd::Group(CatalogCmd::Delete(a)) => {
            let r = ctx
                .call(client(ctx).delete_group(ctx.req(DeleteGroupRequest { name: a.name.clone() })))
                .await
                .with_context(|| format!("Cannot delete group {}", a.name))?;
            ctx.show(&r, || format!("group {} deleted\n", a.name))
        }
        ProvisionCmd::Machines(a) => {
            let installed = match (a.installed, a.not_installed) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let r = ctx
                .call(client(ctx).list_machines(ctx.req(ListMachinesRequest {
                    profile: a.profile.clone().unwrap_or_default(),
                    installed,
                })))
                .await
                .context("Cannot list the machines")?;
            ctx.show(&r, || render_machines(&r.machines))
        }
        ProvisionCmd::Machine(MachineCmd::Show(a)) => {
            let m = ctx
                .call(client(ctx).get_machine(ctx.req(GetMachineRequest { mac: a.mac.clone() })))
                .await
                .with_context(|| format!("Cannot read machine {}", a.mac))?;
            ctx.show(&m, || render_machine(&m))
        }
        ProvisionCmd::Machine(MachineCmd::Label(a)) => {
            let m = ctx
                .call(client(ctx).set_machine_labels(ctx.req(SetMachineLabelsRequest {
                    mac: a.mac.clone(),
                    labels: a.labels.iter().cloned().collect(),
                })))
                .await
                .with_context(|| format!("Cannot label machine {}", a.mac))?;
            ctx.show(&m, || render_machine(&m))
        }
        ProvisionCmd::Machine(MachineCmd::Reset(a)) => {
            let m = ctx
                .call(client(ctx).reset_machine(ctx.req(ResetMachineRequest { mac: a.mac.clone() })))
                .await
                .with_context(|| format!("Cannot reset machine {}", a.mac))?;
            ctx.show(&m, || {
                format!(
                    "machine {} reset: its next PXE boot follows profile {}\n",
                    m.mac,
                    or_dash(&m.selected_profile)
                )
            })
        }
        ProvisionCmd::Machine(MachineCmd::Delete(a)) => {
            let r = ctx
                .call(client(ctx).delete_machine(ctx.req(DeleteMachineRequest { mac: a.mac.clone() })))
                .await
                .with_context(|| format!("Cannot delete machine {}", a.mac))?;
            ctx.show(&r, || format!("machine {} forgotten\n", a.mac))
        }
        ProvisionCmd::Leases(a) => {
            let r = ctx
                .call(client(ctx).list_leases(ctx.req(ListLeasesRequest { include_expired: a.all })))
                .await
                .context("Cannot list the leases")?;
            ctx.show(&r, || render_leases(&r.leases))
        }
    }
}

/// Prints `value` as JSON with `--json`, else the text `human` makes.
/// A profile or group definition file, read and parsed here so that a typo
/// is a usage error naming the file and the line.
fn read_toml<T: serde::de::DeserializeOwned>(file: &Path, what: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(file).map_err(|e| UsageError(format!("Cannot read {}: {e}", file.display())))?;
    toml::from_str(&text)
        .map_err(|e| UsageError(format!("{} is not a valid {what} definition: {e}", file.display())).into())
}

fn render_profiles(profiles: &[pb::Profile]) -> String {
    if profiles.is_empty() {
        return "no profiles: `debvisorctl provision profile put FILE` creates one\n".into();
    }
    let mut t = Table::new(&["NAME", "MODE", "IMAGE", "DISK", "KERNEL ARGS"]);
    for p in profiles {
        t.row(vec![
            p.name.clone(),
            mode_word(p.mode).into(),
            p.image.clone(),
            disk_text(p),
            or_dash(&p.kernel_args.join(" ")),
        ]);
    }
    t.render()
}

fn render_profile(p: &pb::Profile) -> String {
    let mut out = render_kv(&[
        ("NAME".into(), p.name.clone()),
        ("MODE".into(), mode_word(p.mode).into()),
        ("IMAGE".into(), p.image.clone()),
        ("DISK".into(), disk_text(p)),
        ("KERNEL ARGS".into(), or_dash(&p.kernel_args.join(" "))),
    ]);
    if p.config.trim().is_empty() {
        out.push_str("CONFIG       (none)\n");
    } else {
        out.push_str("CONFIG\n");
        for line in p.config.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

fn render_groups(groups: &[pb::Group]) -> String {
    if groups.is_empty() {
        return "no groups: `debvisorctl provision group put FILE` creates one\n".into();
    }
    let mut t = Table::new(&["NAME", "PROFILE", "MATCHES"]);
    for g in groups {
        t.row(vec![
            g.name.clone(),
            g.profile.clone(),
            selector_text(g.selector.as_ref()),
        ]);
    }
    t.render()
}

fn seen(secs: u64) -> String {
    format_unix_ms(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
}

fn render_machines(machines: &[pb::Machine]) -> String {
    if machines.is_empty() {
        return "no machine has PXE booted from this provisioner yet\n".into();
    }
    let mut t = Table::new(&[
        "MAC",
        "ADDRESS",
        "CLIENT",
        "PROFILE",
        "INSTALLED",
        "LAST SEEN",
        "LABELS",
    ]);
    for m in machines {
        t.row(vec![
            m.mac.clone(),
            or_dash(&m.ip),
            m.client.clone(),
            or_dash(&m.profile),
            if m.installed { "yes" } else { "no" }.into(),
            seen(m.last_seen),
            labels_text(&m.labels, ","),
        ]);
    }
    t.render()
}

fn render_machine(m: &pb::Machine) -> String {
    render_kv(&[
        ("MAC".into(), m.mac.clone()),
        ("ADDRESS".into(), or_dash(&m.ip)),
        ("CLIENT".into(), m.client.clone()),
        ("ARCH (OPTION 93)".into(), m.arch.map_or("-".into(), |a| a.to_string())),
        ("UUID".into(), or_dash(&m.uuid)),
        ("BOOT FILE".into(), or_dash(&m.boot_file)),
        ("LAST PROFILE".into(), or_dash(&m.profile)),
        (
            "WOULD GET".into(),
            if m.selected_profile.is_empty() {
                "nothing: no group matches it".into()
            } else {
                format!("profile {} (group {})", m.selected_profile, m.selected_group)
            },
        ),
        (
            "INSTALLED".into(),
            if m.installed {
                "yes: PXE sends it to its disk (`provision machine reset` to install again)".into()
            } else {
                "no".into()
            },
        ),
        ("FIRST SEEN".into(), seen(m.first_seen)),
        ("LAST SEEN".into(), seen(m.last_seen)),
        ("LABELS".into(), labels_text(&m.labels, ",")),
    ])
}

fn render_leases(leases: &[pb::Lease]) -> String {
    if leases.is_empty() {
        return "no leases (in proxy mode the site's DHCP server gives the addresses)\n".into();
    }
    let mut t = Table::new(&["ADDRESS", "MAC", "HOSTNAME", "EXPIRES", "KIND"]);
    for l in leases {
        t.row(vec![
            l.ip.clone(),
            l.mac.clone(),
            or_dash(&l.hostname),
            seen(l.expires),
            if l.reserved { "reservation" } else { "pool" }.into(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_name_what_to_do_when_empty_and_show_selectors() {
        assert!(render_profiles(&[]).contains("profile put FILE"));
        let g = pb::Group {
            name: "rack-1".into(),
            profile: "live".into(),
            selector: Some(pb::Selector {
                mac: String::new(),
                uuid: String::new(),
                arch: "x86_64".into(),
                labels: [("rack".to_string(), "r1".to_string())].into_iter().collect(),
            }),
        };
        let out = render_groups(&[g]);
        assert!(out.contains("arch=x86_64, labels rack=r1"), "{out}");
        let p = pb::Profile {
            name: "inst".into(),
            mode: pb::BootMode::Install as i32,
            image: "0.1.0".into(),
            install_disk: Some(pb::InstallDisk {
                disk: Some(pb::install_disk::Disk::OnlyEmptyMinGb(8)),
            }),
            ..Default::default()
        };
        let out = render_profiles(&[p]);
        assert!(
            out.contains("install") && out.contains("the only empty disk of 8 GB or more"),
            "{out}"
        );
    }
}
