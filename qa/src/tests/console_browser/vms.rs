//! The VM pages in the browser, over the console's agent (`--sim`: libvirt's
//! own test driver, whose host has a running VM called `test`): the live
//! list, the create form (a refusal on its field, then a VM made and
//! started), the list following a change made elsewhere (debvisorctl on the
//! agent's socket) without a reload, a snapshot from the VM's page, and the
//! audit log naming the console user.

use std::process::Command;

use anyhow::{Context as _, ensure};

use super::{StepFuture, Web};

const VM: &str = "browser-vm";
/// The cells of the VM table, row by row.
const VM_ROWS: &str = "return [...document.querySelectorAll('#vms tbody tr')]\
     .map(r => [...r.querySelectorAll('td')].map(c => c.innerText.trim()));";

fn row_state(rows: &[Vec<String>], name: &str) -> Option<String> {
    rows.iter()
        .find(|r| r.first().is_some_and(|c| c == name))
        .and_then(|r| r.get(1).cloned())
}

/// The list, the create form, live updates, a snapshot, the audit log.
pub(super) fn pages(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url("/vms")).await?;
        w.b.wait_css("#vms").await?;
        let rows = w.b.rows(VM_ROWS).await?;
        ensure!(
            row_state(&rows, "test").as_deref() == Some("running"),
            "The test driver's VM 'test' should be listed running: {rows:?}"
        );

        // The form: a refusal lands on its field, with the values kept.
        w.b.click("a[href=\"/vms/new\"]").await?;
        w.b.wait_path("/vms/new").await?;
        w.b.fill("#name", VM).await?;
        w.b.fill("#memory_mib", "lots").await?;
        w.b.fill("#disk_gib", "1").await?;
        w.b.click("form[action=\"/vms\"] button[type=submit]").await?;
        w.b.wait_text("#memory-error", "the memory field's error", |t| {
            t.contains("Memory must be a whole number")
        })
        .await?;
        w.b.fill("#memory_mib", "256").await?;
        w.b.click("form[action=\"/vms\"] button[type=submit]").await?;
        w.b.wait_path(&format!("/vm/{VM}")).await?;
        w.b.wait_text(".flash", "the create's outcome", |t| {
            t.contains(&format!("VM {VM} created and started."))
        })
        .await?;
        w.b.wait_text("#vm-state", "the VM's state", |t| t == "running").await?;

        // The list follows a change made elsewhere, without a reload.
        w.b.goto(&w.url("/vms")).await?;
        w.b.wait_css("#vms").await?;
        // A mark on the document: a reload would lose it.
        let mark = "document.body.dataset.samePage = 'yes'; return 1;";
        w.b.client().execute(mark, vec![]).await?;
        let (ctl, socket) = w.ctl.clone().context("this walk has no debvisorctl")?;
        let out = Command::new(&ctl)
            .arg("--socket")
            .arg(&socket)
            .args(["vm", "suspend", VM])
            .output()
            .context("Cannot run debvisorctl")?;
        ensure!(
            out.status.success(),
            "debvisorctl vm suspend {VM}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        w.b.wait_text(&format!("#vm-{VM}"), "the row turning paused", |t| t.contains("paused"))
            .await?;
        let rows = w.b.rows(VM_ROWS).await?;
        ensure!(
            row_state(&rows, VM).as_deref() == Some("paused"),
            "{VM} should read paused: {rows:?}"
        );
        let same =
            w.b.client()
                .execute("return document.body.dataset.samePage || 'reloaded';", vec![])
                .await?;
        ensure!(same == "yes", "the list was reloaded instead of updated live ({same})");
        w.b.click(&format!("#vm-{VM} button[value=\"resume\"]")).await?;
        w.b.wait_text(".flash", "the resume's outcome", |t| {
            t.contains(&format!("{VM} resumed (now running)."))
        })
        .await?;

        // A snapshot from the VM's page.
        w.b.goto(&w.url(&format!("/vm/{VM}"))).await?;
        w.b.fill("#snap-name", "first").await?;
        w.b.fill("#snap-desc", "taken in the browser").await?;
        w.b.click("#snapshot-form button[type=submit]").await?;
        w.b.wait_text(".flash", "the snapshot's outcome", |t| {
            t.contains(&format!("Snapshot first of {VM} taken."))
        })
        .await?;
        w.b.wait_text("#vm-snapshots", "the snapshot listed", |t| {
            t.contains("taken in the browser")
        })
        .await?;

        w.audited("vm.snapshot.create by console:admin", |t| {
            t.contains("vm.snapshot.create")
                && t.contains(&format!("vm:{VM}/snapshot:first"))
                && t.contains("console:admin")
        })
        .await
    })
}
