//! `debvisor.provision.v1` through the agent's gRPC server on its Unix
//! socket, over a real provisioner state (SQLite catalog and machine
//! records, an images directory) and a real audit log: catalog CRUD with
//! its refusals, machines with the profile they would get, labels, reset,
//! and an agent without a provisioner.

use std::sync::Arc;

use debvisor_agent::provision_service::NOT_RUNNING;
use debvisor_api::provision::v1::provision_service_client::ProvisionServiceClient;
use debvisor_api::provision::v1::{
    BootMode, DeleteGroupRequest, DeleteMachineRequest, DeleteProfileRequest, GetMachineRequest, GetProfileRequest,
    Group, InstallDisk, ListGroupsRequest, ListLeasesRequest, ListMachinesRequest, ListProfilesRequest, Machine,
    Profile, PutGroupRequest, PutProfileRequest, ResetMachineRequest, Selector, SetMachineLabelsRequest, install_disk,
};
use debvisor_audit::{AuditLog, Query};
use debvisor_provision::{Config, Metrics, Provisioner};
use tonic::Code;
use tonic::transport::Channel;

struct Agent {
    client: ProvisionServiceClient<Channel>,
    prov: Option<Provisioner>,
    audit: AuditLog,
    _served: crate::Served,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// The audit records of provisioning changes.
    async fn provision_records(&self) -> Vec<debvisor_audit::AuditRecord> {
        self.audit
            .query(&Query {
                action: Some("provision.*".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .records
    }
}

async fn agent(with_provisioner: bool) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let prov = if with_provisioner {
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("images/0.1.0")).unwrap();
        let text = format!(
            "state_dir = \"{}\"\n\n[[network]]\ninterface = \"dvtest0\"\naddress = \"198.51.100.1/24\"\nmode = \"server\"\n\
             range = [\"198.51.100.100\", \"198.51.100.149\"]\nlease_secs = 3600\n",
            state.display()
        );
        let cfg = Config::parse(&text, std::path::Path::new("provision.toml")).unwrap();
        // Opened, not run: the catalog and the records need no sockets.
        Some(Provisioner::open(cfg, Arc::new(Metrics::default())).await.unwrap())
    } else {
        None
    };
    let audit = AuditLog::open_in_memory().await.unwrap();
    let served = crate::serve(
        dir.path(),
        crate::sim_backends("provision-test", audit.clone(), prov.clone()),
    )
    .await;
    let client = ProvisionServiceClient::new(served.channel.clone());
    Agent {
        client,
        prov,
        audit,
        _served: served,
        _dir: dir,
    }
}

fn live(name: &str) -> Profile {
    Profile {
        name: name.into(),
        mode: BootMode::Live as i32,
        image: "0.1.0".into(),
        kernel_args: vec!["quiet".into()],
        config: "version = 1\n[node]\nhostname = \"{{hostname}}\"\n".into(),
        install_disk: None,
    }
}

/// The machines `req` selects.
async fn machines(c: &mut ProvisionServiceClient<Channel>, req: ListMachinesRequest) -> Vec<Machine> {
    c.list_machines(req).await.unwrap().into_inner().machines
}

fn put(p: Profile) -> PutProfileRequest {
    PutProfileRequest { profile: Some(p) }
}

fn group(name: &str, profile: &str, selector: Selector) -> PutGroupRequest {
    PutGroupRequest {
        group: Some(Group {
            name: name.into(),
            profile: profile.into(),
            selector: Some(selector),
        }),
    }
}

#[tokio::test]
async fn catalog_crud_with_refusals_naming_the_field_and_audited() {
    let mut a = agent(true).await;
    let c = &mut a.client;
    let stored = c.put_profile(put(live("edge-live"))).await.unwrap().into_inner();
    assert_eq!(stored, live("edge-live"));
    let install = Profile {
        name: "edge-install".into(),
        mode: BootMode::Install as i32,
        install_disk: Some(InstallDisk {
            disk: Some(install_disk::Disk::OnlyEmptyMinGb(8)),
        }),
        ..live("x")
    };
    c.put_profile(put(install.clone())).await.unwrap();
    let names: Vec<String> = c
        .list_profiles(ListProfilesRequest {})
        .await
        .unwrap()
        .into_inner()
        .profiles
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["edge-install", "edge-live"]);
    let got = c
        .get_profile(GetProfileRequest {
            name: "edge-install".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, install);

    // Refusals: each names the field and stores nothing.
    let refused = [
        (live("Bad_Name"), "profile.name"),
        (
            Profile {
                image: "9.9.9".into(),
                ..live("no-image")
            },
            "profile.image",
        ),
        (
            Profile {
                kernel_args: vec!["debvisor.live=http://elsewhere/".into()],
                ..live("reserved-arg")
            },
            "profile.kernel_args[0]",
        ),
        (
            Profile {
                mode: BootMode::Install as i32,
                ..live("no-disk")
            },
            "profile.install_disk",
        ),
        (
            Profile {
                config: "version = 1\n[node]\nhostname = 5\n".into(),
                ..live("bad-config")
            },
            "profile.config",
        ),
        (
            Profile {
                mode: 7,
                ..live("bad-mode")
            },
            "profile.mode",
        ),
    ];
    for (p, field) in refused {
        let e = c.put_profile(put(p.clone())).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}: {}", p.name, e.message());
        assert!(
            e.message().contains(field),
            "{} should name {field}: {}",
            p.name,
            e.message()
        );
    }
    let e = c
        .put_profile(put(Profile {
            image: "9.9.9".into(),
            ..live("no-image")
        }))
        .await
        .unwrap_err();
    assert!(e.message().contains("it holds: 0.1.0"), "{}", e.message());
    assert_eq!(
        c.list_profiles(ListProfilesRequest {})
            .await
            .unwrap()
            .into_inner()
            .profiles
            .len(),
        2,
        "a refused profile was stored"
    );

    // Groups need their profile; a profile in use stays.
    let e = c
        .put_group(group("all", "missing", Selector::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("missing"), "{}", e.message());
    let e = c
        .put_group(group(
            "bad-mac",
            "edge-live",
            Selector {
                mac: "52:54:00".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("group.selector.mac"), "{}", e.message());
    c.put_group(group("all", "edge-live", Selector::default()))
        .await
        .unwrap();
    c.put_group(group(
        "rack-1",
        "edge-install",
        Selector {
            labels: [("rack".to_string(), "r1".to_string())].into_iter().collect(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        c.list_groups(ListGroupsRequest {})
            .await
            .unwrap()
            .into_inner()
            .groups
            .len(),
        2
    );
    let e = c
        .delete_profile(DeleteProfileRequest {
            name: "edge-live".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("all"), "{}", e.message());
    let e = c
        .delete_group(DeleteGroupRequest { name: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    c.delete_group(DeleteGroupRequest { name: "all".into() }).await.unwrap();
    c.delete_profile(DeleteProfileRequest {
        name: "edge-live".into(),
    })
    .await
    .unwrap();

    // Every change, refused or not, is in the audit log.
    let records = a.provision_records().await;
    let ok = records.iter().filter(|r| r.ok).count();
    let failed = records.iter().filter(|r| !r.ok).count();
    assert_eq!(ok, 6, "{:?}", records);
    assert_eq!(failed, 11, "{:?}", records);
    assert!(
        records
            .iter()
            .any(|r| r.action == "provision.profile.delete" && r.target == "profile:edge-live" && r.ok)
    );
}

#[tokio::test]
async fn machines_show_the_profile_they_would_get_and_take_labels_and_resets() {
    let mut a = agent(true).await;
    let prov = a.prov.clone().unwrap();
    let c = &mut a.client;
    c.put_profile(put(live("edge-live"))).await.unwrap();
    c.put_profile(put(Profile {
        name: "rack-install".into(),
        mode: BootMode::Install as i32,
        install_disk: Some(InstallDisk {
            disk: Some(install_disk::Disk::ById("/dev/disk/by-id/virtio-DISK1".into())),
        }),
        ..live("x")
    }))
    .await
    .unwrap();
    c.put_group(group("all", "edge-live", Selector::default()))
        .await
        .unwrap();
    c.put_group(group(
        "rack-1",
        "rack-install",
        Selector {
            labels: [("rack".to_string(), "r1".to_string())].into_iter().collect(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();

    // A machine as the provisioner records it when its iPXE asks for a script.
    let mac: debvisor_provision::Mac = "52:54:00:aa:bb:01".parse().unwrap();
    let other: debvisor_provision::Mac = "52:54:00:aa:bb:02".parse().unwrap();
    prov.store()
        .machine_booted(mac, None, Some("edge-live"), 100)
        .await
        .unwrap();
    prov.store()
        .machine_booted(other, None, Some("edge-live"), 200)
        .await
        .unwrap();
    let m = c
        .get_machine(GetMachineRequest {
            mac: "52:54:00:AA:BB:01".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((m.mac.as_str(), m.client.as_str()), ("52:54:00:aa:bb:01", "ipxe"));
    assert_eq!(
        (m.selected_group.as_str(), m.selected_profile.as_str()),
        ("all", "edge-live")
    );

    let m = c
        .set_machine_labels(SetMachineLabelsRequest {
            mac: mac.to_string(),
            labels: [("rack".to_string(), "r1".to_string())].into_iter().collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.labels.get("rack").map(String::as_str), Some("r1"));
    assert_eq!(
        (m.selected_group.as_str(), m.selected_profile.as_str()),
        ("rack-1", "rack-install")
    );
    let e = c
        .set_machine_labels(SetMachineLabelsRequest {
            mac: mac.to_string(),
            labels: [("Rack".to_string(), "r1".to_string())].into_iter().collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("labels.Rack"), "{}", e.message());

    // Newest first; filters.
    let all = machines(c, ListMachinesRequest::default()).await;
    let macs: Vec<&str> = all.iter().map(|m| m.mac.as_str()).collect();
    assert_eq!(macs, ["52:54:00:aa:bb:02", "52:54:00:aa:bb:01"]);
    prov.store().set_installed(mac, true).await.unwrap();
    let installed = machines(
        c,
        ListMachinesRequest {
            installed: Some(true),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(installed.len(), 1);
    assert_eq!(installed[0].mac, "52:54:00:aa:bb:01");
    let m = c
        .reset_machine(ResetMachineRequest { mac: mac.to_string() })
        .await
        .unwrap()
        .into_inner();
    assert!(!m.installed);

    for bad in ["52:54:00", "zz:54:00:aa:bb:01", ""] {
        let e = c.get_machine(GetMachineRequest { mac: bad.into() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
        assert!(e.message().starts_with("mac: "), "{}", e.message());
    }
    let e = c
        .reset_machine(ResetMachineRequest {
            mac: "52:54:00:aa:bb:99".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    c.delete_machine(DeleteMachineRequest { mac: other.to_string() })
        .await
        .unwrap();
    let left = machines(c, ListMachinesRequest::default()).await;
    assert_eq!(left.len(), 1, "{left:?}");
    let e = c
        .delete_machine(DeleteMachineRequest { mac: other.to_string() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        c.list_leases(ListLeasesRequest { include_expired: true })
            .await
            .unwrap()
            .into_inner()
            .leases
            .is_empty()
    );
}

#[tokio::test]
async fn an_agent_without_a_provisioner_says_how_to_enable_it() {
    let mut a = agent(false).await;
    let e = a.client.list_profiles(ListProfilesRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(e.message(), NOT_RUNNING);
    let e = a.client.put_profile(put(live("edge-live"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    let records = a.provision_records().await;
    assert_eq!(records.len(), 1, "the refused change is audited");
}
