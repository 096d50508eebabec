//! The updates page in the browser, against the simulated agent (a fake
//! RAUC behind the real update service): the slot table, an upload with
//! the console's progress bar that ends in "reboot to activate", a URL
//! install of a bundle for another compatible refused with its cause, both
//! in the audit log.

use std::io::Write as _;

use anyhow::{Context as _, Result, ensure};

use super::{StepFuture, Web};
use crate::fileserve::FileServer;

/// The simulated node's compatible string (the agent's `SIM_COMPATIBLE`).
const COMPATIBLE: &str = "debvisor-node-x86_64";

/// A bundle as the simulated agent's fake RAUC reads it: a squashfs magic,
/// then the manifest, padded to `size` bytes.
fn fake_bundle(compatible: &str, version: &str, size: usize) -> Result<tempfile::NamedTempFile> {
    let mut f = tempfile::Builder::new().suffix(".raucb").tempfile()?;
    let mut bytes = format!("hsqs\0[update]\ncompatible={compatible}\nversion={version}\n").into_bytes();
    bytes.resize(size.max(bytes.len()), 0x42);
    f.write_all(&bytes)?;
    f.flush()?;
    Ok(f)
}

pub(super) fn slots(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url("/updates")).await?;
        let table =
            w.b.wait_text("#slots", "the slot table", |t| {
                t.contains("rootfs.0") && t.contains("rootfs.1")
            })
            .await?;
        ensure!(table.contains("good"), "no slot shows good: {table}");
        w.b.wait_css("#url-form").await?;
        w.b.wait_css("#upload-form").await?;
        Ok(())
    })
}

pub(super) fn upload(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        let bundle = fake_bundle(COMPATIBLE, "9.1.0-qa", 8 << 20)?;
        w.b.goto(&w.url("/updates")).await?;
        let input = w.b.wait_css("#bundle").await?;
        let path = bundle.path().to_str().context("temporary path is not UTF-8")?;
        input.send_keys(path).await.context("Cannot choose the bundle file")?;
        w.b.click("#install-upload").await?;
        // The page's script shows the upload's own progress bar first.
        w.b.wait_css("#upload-status:not([hidden]) #upload-progress").await?;
        let done =
            w.b.wait_text("#install-live", "the install's end", |t| {
                t.contains("now holds version 9.1.0-qa") || t.contains("failed") || t.contains("Failed")
            })
            .await?;
        ensure!(
            done.contains("now holds version 9.1.0-qa"),
            "the upload did not install: {done}"
        );
        w.b.wait_css("#install-state[data-phase=\"done\"] #install-progress")
            .await?;
        w.b.wait_css("#reboot-to-activate").await?;
        w.audited("the upload in the audit log", |t| {
            t.contains("update.upload") && t.contains("console:admin")
        })
        .await?;
        Ok(())
    })
}

pub(super) fn url_refused(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        let bundle = fake_bundle("some-other-node", "9.2.0", 64 << 10)?;
        let srv = FileServer::start()?;
        srv.add("other.raucb", bundle.path().to_path_buf());
        let url = format!("http://127.0.0.1:{}/other.raucb", srv.port);
        w.b.goto(&w.url("/updates")).await?;
        w.b.fill("#url", &url).await?;
        w.b.click("#install-url").await?;
        let error =
            w.b.wait_text("#install-error", "the refusal", |t| {
                t.to_lowercase().contains("compatible")
            })
            .await?;
        ensure!(
            error.contains("some-other-node"),
            "the refusal does not name the bundle's compatible: {error}"
        );
        w.b.goto(&w.url("/updates")).await?;
        let table =
            w.b.wait_text("#slots", "the slot table", |t| t.contains("9.1.0-qa"))
                .await?;
        ensure!(!table.contains("9.2.0"), "a refused bundle reached a slot: {table}");
        w.audited("the URL install in the audit log", |t| {
            t.contains("update.install") && t.contains("other.raucb")
        })
        .await?;
        Ok(())
    })
}
