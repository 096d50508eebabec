//! The console with JavaScript turned off: everything but the live updates
//! must work with plain links and forms (the issue's "works with JavaScript
//! disabled"). A second Chromium session, with scripts blocked for every
//! site, walks [`STEPS`] after the scripted walk.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use fantoccini::Locator;

use super::{SIM_HOSTNAME, Step, StepFuture, UNIT, Web};

/// The user the walk creates, and a name the users page must refuse.
const NEW_USER: (&str, &str) = ("nora", "no-script-password-qa");
const BAD_NAME: &str = "Nora Smith!";

/// The walk without JavaScript, in order.
pub const STEPS: &[Step] = &[
    Step {
        name: "nojs-sign-in",
        run: super::sign_in,
    },
    Step {
        name: "nojs-dashboard",
        run: dashboard,
    },
    Step {
        name: "nojs-services-filter",
        run: services_filter,
    },
    Step {
        name: "nojs-restart-audited",
        run: restart_audited,
    },
    Step {
        name: "nojs-users-bad-name",
        run: user_bad_name,
    },
    Step {
        name: "nojs-users-create",
        run: user_create,
    },
    Step {
        name: "nojs-settings",
        run: super::settings_config,
    },
    Step {
        name: "nojs-sign-out",
        run: super::sign_out,
    },
];

/// The texts of every element matching `css` (no script needed to read them).
async fn texts(w: &Web, css: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in w.b.client().find_all(Locator::Css(css)).await? {
        out.push(e.text().await?.trim().to_string());
    }
    Ok(out)
}

/// The dashboard as the server renders it: figures and charts are there,
/// and nothing changes them (no script runs to swap the live part).
fn dashboard(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url("/dashboard")).await?;
        w.b.wait_text("#live .hostname", "the host name", |t| t == SIM_HOSTNAME)
            .await?;
        let charts = w.b.client().find_all(Locator::Css("#live svg.chart")).await?;
        ensure!(!charts.is_empty(), "the server-rendered dashboard has no chart");
        let figures = texts(w, "#live .figure .value").await?;
        ensure!(
            !figures.is_empty() && figures.iter().all(|f| !f.is_empty()),
            "the server-rendered dashboard has empty figures: {figures:?}"
        );
        // Scripts are really off: htmx never ran (a driver's script may
        // still be refused outright, which says the same).
        if let Ok(v) = w.b.client().execute("return typeof window.htmx;", vec![]).await {
            ensure!(
                v == "undefined",
                "htmx ran on the page (typeof window.htmx is {v}): scripts are on"
            );
        }
        let first = w.b.wait_css("#live").await?.text().await?;
        // The JavaScript walk sees a new sample within this time.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let later = w.b.wait_css("#live").await?.text().await?;
        ensure!(
            first == later,
            "the dashboard changed without JavaScript: scripts are on"
        );
        Ok(())
    })
}

/// The filter is a GET form: the list and the address follow it.
fn services_filter(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url("/services")).await?;
        w.b.wait_text("main", "the unit list", |t| t.contains(UNIT)).await?;
        let all = texts(w, "table.data tbody td:first-child code").await?;
        w.b.fill("#q", "webui").await?;
        w.b.click("form.filters button[type=submit]").await?;
        let deadline = std::time::Instant::now() + crate::browser::WAIT;
        loop {
            let url = w.b.client().current_url().await?;
            if url.path() == "/services" && url.query().is_some_and(|q| q.contains("q=webui")) {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "the filter form did not load /services?q=webui; the browser is on {url}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shown = texts(w, "table.data tbody td:first-child code").await?;
        ensure!(
            shown.iter().any(|u| u == UNIT),
            "{UNIT} is not in the filtered list: {shown:?}"
        );
        ensure!(
            shown.iter().all(|u| u.contains("webui")) && shown.len() < all.len(),
            "the filter 'webui' shows {shown:?} of {all:?}"
        );
        ensure!(
            w.b.wait_css("#q").await?.prop("value").await?.as_deref() == Some("webui"),
            "the filter field lost what was typed"
        );
        Ok(())
    })
}

/// How many records the audit page's filter form finds for `action` by
/// the admin (the form is a plain GET).
async fn audit_count(w: &Web, action: &str) -> Result<u64> {
    w.b.goto(&w.url("/audit")).await?;
    w.b.fill("#actor", "console:admin").await?;
    w.b.fill("#action", action).await?;
    w.b.click("form.filters button[type=submit]").await?;
    let text =
        w.b.wait_text("main section.card p.muted", "the number of records", |t| {
            t.contains("matching records")
        })
        .await?;
    let url = w.b.client().current_url().await?;
    ensure!(
        url.query().is_some_and(|q| q.contains("actor=console")),
        "the audit filter did not load a filtered page: {url}"
    );
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("the audit page's count is not a number: {text:?}"))
}

/// The restart link opens a real confirmation page whose form restarts;
/// the audit log gains the restart in the admin's name.
fn restart_audited(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        let before = audit_count(w, "units.Restart").await?;
        w.b.goto(&w.url(&format!("/services/{UNIT}"))).await?;
        w.b.click("a[data-action=\"restart\"]").await?;
        w.b.wait_path(&format!("/services/{UNIT}/confirm")).await?;
        w.b.wait_text("main h1", "the question", |t| t.contains(UNIT)).await?;
        w.b.click(".confirm-form button[type=submit]").await?;
        w.b.wait_text(".flash", "the restart's outcome", |t| t.contains("restarted"))
            .await?;
        let after = audit_count(w, "units.Restart").await?;
        ensure!(
            after == before + 1,
            "the audit log holds {after} restarts by console:admin after the restart, {before} before"
        );
        let rows = texts(w, "table.audit tbody tr").await?;
        ensure!(
            rows.iter().any(|r| r.contains(UNIT) && r.contains("console:admin")),
            "no audit row names {UNIT} and console:admin: {rows:?}"
        );
        Ok(())
    })
}

async fn fill_new_user(w: &Web, name: &str, password: &str) -> Result<()> {
    w.b.goto(&w.url("/users")).await?;
    w.b.fill("#name", name).await?;
    w.b.click("#role option[value=\"operator\"]").await?;
    w.b.fill("#password", password).await?;
    w.b.fill("#confirm", password).await?;
    w.b.click("form[action=\"/users\"] button[type=submit]").await
}

/// A bad name comes back with the message next to the field, what was
/// typed kept and the password not.
fn user_bad_name(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        fill_new_user(w, BAD_NAME, NEW_USER.1).await?;
        let msg =
            w.b.wait_text("#name-error", "the name's error", |t| !t.is_empty())
                .await?;
        ensure!(
            msg.contains(BAD_NAME) && msg.contains("lowercase"),
            "the name's error says {msg:?}"
        );
        let kept = w.b.wait_css("#name").await?.prop("value").await?;
        ensure!(
            kept.as_deref() == Some(BAD_NAME),
            "the form kept {kept:?}, not what was typed"
        );
        let password = w.b.wait_css("#password").await?.prop("value").await?;
        ensure!(
            password.as_deref().unwrap_or_default().is_empty(),
            "the re-rendered form holds the password"
        );
        let listed = texts(w, "table.users tbody td:first-child").await?;
        ensure!(
            !listed.iter().any(|n| n == BAD_NAME),
            "the bad name was created: {listed:?}"
        );
        Ok(())
    })
}

fn user_create(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        let (name, password) = NEW_USER;
        fill_new_user(w, name, password).await?;
        w.b.wait_text("main", "the new user", |t| t.contains(name) && t.contains("operator"))
            .await?;
        w.b.goto(&w.url("/users")).await?;
        let listed = texts(w, "table.users tbody td:first-child").await?;
        ensure!(listed.iter().any(|n| n == name), "{name} is not listed: {listed:?}");
        Ok(())
    })
}
