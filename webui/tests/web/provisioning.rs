//! The provisioning page against a real agent that runs a provisioner (its
//! SQLite catalog and machine records; no network served): machines,
//! profiles and groups listed, the "install again" action audited as the
//! console user, CSRF; and a node without a provisioner saying how to enable
//! one.

use crate::support;

use std::sync::Arc;

use axum::http::{StatusCode, header};
use debvisor_audit::Query;
use debvisor_provision::profiles::{BootMode, Group, InstallDisk, Profile, Selector};
use debvisor_provision::{Config, Mac, Metrics, Provisioner};
use support::{Console, get, page_csrf, post, sign_in};

const MAC: &str = "52:54:00:aa:bb:07";

async fn provisioner(dir: std::path::PathBuf) -> Provisioner {
    std::fs::create_dir_all(dir.join("images/0.1.0")).unwrap();
    let text = format!(
        "state_dir = \"{}\"\n\n[[network]]\ninterface = \"dvtest0\"\naddress = \"198.51.100.1/24\"\nmode = \"proxy\"\n",
        dir.display()
    );
    let p = Provisioner::open(
        Config::parse(&text, std::path::Path::new("provision.toml")).unwrap(),
        Arc::new(Metrics::default()),
    )
    .await
    .unwrap();
    let store = p.store();
    store
        .put_profile(&Profile {
            name: "rack-install".into(),
            mode: BootMode::Install,
            image: "0.1.0".into(),
            kernel_args: vec![],
            config: String::new(),
            install_disk: Some(InstallDisk::OnlyEmpty { min_gb: 8 }),
        })
        .await
        .unwrap();
    store
        .put_group(&Group {
            name: "everyone".into(),
            profile: "rack-install".into(),
            selector: Selector::default(),
        })
        .await
        .unwrap();
    let mac: Mac = MAC.parse().unwrap();
    store
        .machine_booted(mac, None, Some("rack-install"), 1_795_000_000)
        .await
        .unwrap();
    store.set_installed(mac, true).await.unwrap();
    p
}

#[tokio::test]
async fn machines_profiles_and_groups_are_listed_and_a_machine_can_install_again() {
    let c = Console::with_provisioner(provisioner).await;
    let s = sign_in(&c.app).await;
    let page = get(&c.app, "/provisioning", &s).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for needle in [
        MAC,
        "rack-install",
        "the only empty disk of 8 GB or more",
        "everyone",
        "every machine",
        "<span class=\"tag ok\">installed</span>",
        "Install again",
        "No active lease",
    ] {
        assert!(page.body.contains(needle), "no {needle:?} in {}", page.body);
    }
    let action = format!("/provisioning/machines/{MAC}/reset");

    // Without the session's CSRF token nothing happens.
    let r = post(&c.app, "203.0.113.9", &action, &s, &[("csrf", "wrong")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let csrf = page_csrf(&c.app, "/provisioning", &s).await;
    let r = post(&c.app, "203.0.113.9", &action, &s, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.header(header::LOCATION), "/provisioning");
    let page = get(&c.app, "/provisioning", &s).await;
    assert!(
        page.body
            .contains("will install again on its next PXE boot (profile rack-install)"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("Install again"),
        "the machine is no longer installed"
    );

    let records = c
        .agent()
        .audit
        .query(&Query {
            action: Some("provision.*".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .records;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].action, "provision.machine.reset");
    assert_eq!(records[0].target, format!("machine:{MAC}"));
    assert_eq!(records[0].actor, "console:admin");
    assert!(records[0].ok);

    // A bad MAC is the agent's refusal, shown as such.
    let r = post(
        &c.app,
        "203.0.113.9",
        "/provisioning/machines/52:54:00/reset",
        &s,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let page = get(&c.app, "/provisioning", &s).await;
    assert!(page.body.contains("Could not reset 52:54:00: mac: "), "{}", page.body);
}

#[tokio::test]
async fn a_node_without_a_provisioner_says_how_to_enable_one() {
    let c = Console::with_agent().await;
    let s = sign_in(&c.app).await;
    let page = get(&c.app, "/provisioning", &s).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("No provisioner on this node"), "{}", page.body);
    assert!(page.body.contains("agent.toml"), "{}", page.body);
}
