//! The VM pages against a real agent whose VMs run on libvirt's test driver
//! (real libvirt: its checks, state machine, pool and snapshots, no QEMU):
//! the create form and its refusals on the right field, the live list,
//! actions, snapshots, clone and delete, each audited as the console user;
//! and a viewer who reads but cannot act.

use crate::support;

use axum::http::{StatusCode, header};
use debvisor_audit::Query;
use std::time::Duration;

use support::{Console, Reply, add_user, open, page_csrf, read_until, router_on_db, sign_in, sign_in_as};

const IP: &str = "203.0.113.9";

/// Moves the console's clock on before each request, so that the test
/// stays under the per-user request rate.
async fn get(c: &Console, path: &str, s: &str) -> Reply {
    c.clock.advance(Duration::from_millis(150));
    support::get(&c.app, path, s).await
}

async fn post(c: &Console, path: &str, s: &str, form: &[(&str, &str)]) -> Reply {
    c.clock.advance(Duration::from_millis(150));
    support::post(&c.app, IP, path, s, form).await
}

async fn console() -> Console {
    let mut c = Console::with_vms(&[("debian-12.qcow2", 2048), ("installer.iso", 310)]).await;
    c.app = router_on_db(&c, &c.dir.join("console.db")).await;
    c
}

fn create_form<'a>(csrf: &'a str, name: &'a str, memory: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf", csrf),
        ("name", name),
        ("vcpus", "2"),
        ("memory_mib", memory),
        ("firmware", "bios"),
        ("image", "debian-12.qcow2"),
        ("disk_gib", "1"),
        ("iso", "installer.iso"),
        ("bridge", ""),
        ("vlan", ""),
        ("start", "on"),
    ]
}

#[tokio::test]
async fn vms_are_created_watched_driven_snapshotted_and_deleted_from_the_console() {
    let c = console().await;
    let s = sign_in(&c.app).await;
    let page = get(&c, "/vms", &s).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("No VMs yet"), "{}", page.body);
    assert!(page.body.contains("sse-connect=\"/vms/events\""), "{}", page.body);

    let form = get(&c, "/vms/new", &s).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("<option value=\"installer.iso\""), "{}", form.body);
    assert!(form.body.contains("<option value=\"debian-12.qcow2\""), "{}", form.body);
    let csrf = page_csrf(&c.app, "/vms/new", &s).await;

    // Garbage is refused on its field, and the values are kept.
    let r = post(&c, "/vms", &s, &create_form(&csrf, "web-1", "lots")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.body
            .contains("id=\"memory-error\">Memory must be a whole number, not &#34;lots&#34;"),
        "{}",
        r.body
    );
    assert!(r.body.contains("value=\"web-1\""), "{}", r.body);
    // The agent's refusals too: a name libvirt would misread, too much memory.
    let r = post(&c, "/vms", &s, &create_form(&csrf, "../web", "512")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"name-error\">name: "), "{}", r.body);
    let r = post(&c, "/vms", &s, &create_form(&csrf, "web-1", "999999")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.body
            .contains("id=\"memory-error\">memory_mib: 999999 MiB is more than"),
        "{}",
        r.body
    );
    assert!(
        get(&c, "/vms", &s).await.body.contains("No VMs yet"),
        "nothing was made"
    );

    let r = post(&c, "/vms", &s, &create_form(&csrf, "web-1", "512")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.header(header::LOCATION), "/vm/web-1");
    // The same name again is refused on the name, and nothing says created.
    let again = post(&c, "/vms", &s, &create_form(&csrf, "web-1", "512")).await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        again
            .body
            .contains("id=\"name-error\">A VM called web-1 exists already: pick another name"),
        "{}",
        again.body
    );
    assert!(!again.body.contains("was created"), "{}", again.body);
    let vm = get(&c, "/vm/web-1", &s).await;
    for needle in [
        "VM web-1 created and started.",
        "id=\"vm-state\">running</span>",
        "web-1-disk0.qcow2",
        "web-1-disk1.qcow2",
        "installer.iso",
        "CD-ROM",
        "network:default",
        "Force off",
    ] {
        assert!(vm.body.contains(needle), "no {needle:?} in {}", vm.body);
    }

    // The list is live: an action elsewhere shows up in the open stream.
    let live = open(&c.app, "/vms/events", &s).await;
    assert_eq!(live.status(), StatusCode::OK);
    let mut body = live.into_body().into_data_stream();
    let r = post(
        &c,
        "/vm/web-1/action",
        &s,
        &[("csrf", &csrf), ("action", "suspend"), ("back", "list")],
    )
    .await;
    assert_eq!(r.header(header::LOCATION), "/vms");
    let seen = read_until(&mut body, "data-state=\"paused\"", 30).await;
    assert!(seen.contains("event: vms"), "{seen}");
    assert!(seen.contains(">Resume</button>"), "{seen}");
    drop(body);
    assert!(
        get(&c, "/vms", &s).await.body.contains("web-1 paused (now paused)."),
        "the flash says what happened"
    );

    // A refusal is shown with what to do.
    let r = post(&c, "/vm/web-1/clone", &s, &[("csrf", &csrf), ("name", "web-2")]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let vm = get(&c, "/vm/web-1", &s).await;
    assert!(
        vm.body
            .contains("Could not clone web-1: Cannot clone web-1: it is paused"),
        "{}",
        vm.body
    );

    // Snapshots: take, revert, delete.
    let r = post(
        &c,
        "/vm/web-1/snapshots",
        &s,
        &[("csrf", &csrf), ("name", "before"), ("description", "before the test")],
    )
    .await;
    assert_eq!(r.header(header::LOCATION), "/vm/web-1");
    let vm = get(&c, "/vm/web-1", &s).await;
    assert!(vm.body.contains("Snapshot before of web-1 taken."), "{}", vm.body);
    assert!(vm.body.contains("before the test"), "{}", vm.body);
    post(&c, "/vm/web-1/action", &s, &[("csrf", &csrf), ("action", "stop")]).await;
    post(&c, "/vm/web-1/snapshots/before/revert", &s, &[("csrf", &csrf)]).await;
    let vm = get(&c, "/vm/web-1", &s).await;
    assert!(vm.body.contains("web-1 reverted to snapshot before."), "{}", vm.body);
    let r = post(&c, "/vm/web-1/snapshots/before/delete", &s, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let vm = get(&c, "/vm/web-1", &s).await;
    assert!(vm.body.contains("Snapshot before of web-1 deleted."), "{}", vm.body);
    assert!(vm.body.contains("No snapshots."), "{}", vm.body);

    // Off: clone it, then delete both.
    post(&c, "/vm/web-1/action", &s, &[("csrf", &csrf), ("action", "stop")]).await;
    let r = post(&c, "/vm/web-1/clone", &s, &[("csrf", &csrf), ("name", "web-2")]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let vm = get(&c, "/vm/web-1", &s).await;
    assert!(vm.body.contains("web-1 cloned to web-2"), "{}", vm.body);
    for name in ["web-1", "web-2"] {
        let r = post(&c, &format!("/vm/{name}/delete"), &s, &[("csrf", &csrf)]).await;
        assert_eq!(r.header(header::LOCATION), "/vms", "{name}");
    }
    let list = get(&c, "/vms", &s).await;
    assert!(list.body.contains("VM web-2 deleted with its disks."), "{}", list.body);
    assert!(list.body.contains("No VMs yet"), "{}", list.body);
    assert_eq!(get(&c, "/vm/web-1", &s).await.status, StatusCode::NOT_FOUND);

    // Without the CSRF token nothing happens.
    let r = post(&c, "/vms", &s, &create_form("wrong", "web-3", "512")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let records = c
        .agent()
        .audit
        .query(&Query {
            action: Some("vm.*".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .records;
    let actions: Vec<_> = records.iter().filter(|r| r.ok).map(|r| r.action.as_str()).collect();
    for a in [
        "vm.create",
        "vm.start",
        "vm.suspend",
        "vm.snapshot.create",
        "vm.snapshot.revert",
        "vm.snapshot.delete",
        "vm.clone",
        "vm.delete",
    ] {
        assert!(actions.contains(&a), "no {a} in {actions:?}");
    }
    assert!(records.iter().all(|r| r.actor == "console:admin"), "{records:?}");
}

#[tokio::test]
async fn a_viewer_reads_the_vms_but_cannot_act() {
    let c = console().await;
    let admin = sign_in(&c.app).await;
    let csrf = page_csrf(&c.app, "/vms/new", &admin).await;
    let r = post(&c, "/vms", &admin, &create_form(&csrf, "db-1", "256")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        add_user(&c.app, &admin, "watcher", "viewer", "correct horse battery")
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    let v = sign_in_as(&c.app, "watcher", "correct horse battery").await;
    let list = get(&c, "/vms", &v).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("<a href=\"/vm/db-1\">db-1</a>"), "{}", list.body);
    assert!(
        !list.body.contains("Create VM") && !list.body.contains("Force off"),
        "{}",
        list.body
    );
    let vm = get(&c, "/vm/db-1", &v).await;
    assert_eq!(vm.status, StatusCode::OK);
    assert!(!vm.body.contains("Take snapshot"), "{}", vm.body);
    assert_eq!(get(&c, "/vms/new", &v).await.status, StatusCode::FORBIDDEN);
    let vcsrf = page_csrf(&c.app, "/vms", &v).await;
    let r = post(&c, "/vm/db-1/action", &v, &[("csrf", &vcsrf), ("action", "stop")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let vm = get(&c, "/vm/db-1", &admin).await;
    assert!(vm.body.contains("id=\"vm-state\">running</span>"), "still running");
}
