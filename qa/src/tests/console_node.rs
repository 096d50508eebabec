//! `console_node_browser`: the console of a booted node image in headless
//! Chromium.
//!
//! One boot. The node's console certificate is fetched through QEMU's
//! forwarded port, accepted only when its SHA-256 is the fingerprint the
//! node printed, and its key is the only one Chromium trusts
//! ([`crate::browser::save_pinned_cert`]). Then, as admin with the first
//! boot's password: the dashboard shows the node's real host name and image
//! version and updates in place; the services page lists
//! debvisor-agent.service as active; [`UNIT`] is restarted after the
//! confirmation and its unit page shows a new main PID (the one the agent
//! reports over mTLS); the audit page has that restart by `console:admin`;
//! the health page lists every check the agent reports; sign-out. After
//! every step a screenshot (`NN-<step>.png` in the artifacts) and the
//! browser's console log is read: a Content Security Policy violation fails
//! the test.
//!
//! TCG is slow: page content is waited for up to [`LOAD`].

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use debvisor_api::health::v1::ListRequest;
use debvisor_api::health::v1::node_health_service_client::NodeHealthServiceClient;
use debvisor_api::units::v1::GetUnitRequest;
use debvisor_api::units::v1::unit_service_client::UnitServiceClient;
use tonic::transport::Channel;

use super::Ctx;
use super::console_browser::{self, StepFuture, Web};
use crate::browser::{self, Browser};
use crate::probes;

/// The unit restarted from the console: running on every node and harmless
/// to restart. (Not systemd-timesyncd: on the node it fails to start,
/// "Failed to set up mount namespacing: /run/systemd/unit-root/dev:
/// Read-only file system".)
const UNIT: &str = "systemd-udevd.service";
/// The agent, which the services page must list as active.
const AGENT_UNIT: &str = "debvisor-agent.service";
/// How long a page's content may take to show under TCG.
const LOAD: Duration = Duration::from_secs(30);
/// How long the dashboard may take to show new figures by itself.
const LIVE: Duration = Duration::from_secs(60);

/// What the steps work with: the browser, and the truth from the agent.
struct NodeWeb {
    w: Web,
    /// The node's host name (GetStatus).
    hostname: String,
    /// The image version (manifest.json; GetStatus agrees).
    version: String,
    /// mTLS to the agent as admin.
    agent: Channel,
    /// [`UNIT`]'s main PID before the restart.
    old_pid: u32,
}

struct NodeStep {
    name: &'static str,
    run: for<'a> fn(&'a mut NodeWeb) -> StepFuture<'a>,
}

const STEPS: &[NodeStep] = &[
    NodeStep {
        name: "sign-in",
        run: sign_in,
    },
    NodeStep {
        name: "dashboard-live",
        run: dashboard_live,
    },
    NodeStep {
        name: "services",
        run: services_agent_active,
    },
    NodeStep {
        name: "unit-before",
        run: unit_before,
    },
    NodeStep {
        name: "restart-new-pid",
        run: restart_new_pid,
    },
    NodeStep {
        name: "audit",
        run: restart_audited,
    },
    NodeStep {
        name: "health",
        run: health_checks,
    },
    NodeStep {
        name: "sign-out",
        run: sign_out,
    },
];

fn sign_in(n: &mut NodeWeb) -> StepFuture<'_> {
    console_browser::sign_in(&mut n.w)
}

fn sign_out(n: &mut NodeWeb) -> StepFuture<'_> {
    console_browser::sign_out(&mut n.w)
}

fn dashboard_live(n: &mut NodeWeb) -> StepFuture<'_> {
    Box::pin(async move {
        let b = &n.w.b;
        b.goto(&n.w.url("/dashboard")).await?;
        let host = n.hostname.as_str();
        b.wait_text_within("#live .hostname", "the node's host name", LOAD, |t| t == host)
            .await?;
        let version = n.version.as_str();
        b.wait_text_within("#live .identity", "the image version", LOAD, |t| t.contains(version))
            .await?;
        let first = b.wait_text_within("#live", "figures", LOAD, |t| !t.is_empty()).await?;
        // A mark on the page survives an in-place update, not a reload.
        b.client().execute("window.dvLiveMark = 1;", vec![]).await?;
        b.wait_text_within("#live", "new figures without a reload", LIVE, |t| t != first)
            .await?;
        let mark = b.client().execute("return window.dvLiveMark === 1;", vec![]).await?;
        ensure!(
            mark == serde_json::Value::Bool(true),
            "the dashboard reloaded instead of updating in place"
        );
        Ok(())
    })
}

/// The rows of the page's first data table, each as its cells' text.
const TABLE_ROWS: &str = "return [...document.querySelectorAll('table.data tbody tr')]\
     .map(r => [...r.querySelectorAll('td')].map(c => c.innerText));";

/// Reloads `path` until a row of its table satisfies `ok` (at most
/// [`LOAD`]); returns the rows last seen on failure.
async fn wait_row(w: &Web, path: &str, what: &str, ok: impl Fn(&[String]) -> bool) -> Result<Vec<String>> {
    let deadline = Instant::now() + LOAD;
    loop {
        w.b.goto(&w.url(path)).await?;
        w.b.wait_text_within("main", "the page", LOAD, |t| !t.is_empty())
            .await?;
        let rows = w.b.rows(TABLE_ROWS).await?;
        if let Some(row) = rows.iter().find(|r| ok(r)) {
            return Ok(row.clone());
        }
        if Instant::now() >= deadline {
            bail!(
                "{path} shows no row with {what} within {} s; its rows: {rows:?}",
                LOAD.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn services_agent_active(n: &mut NodeWeb) -> StepFuture<'_> {
    Box::pin(async move {
        // Unit, State ("active running"), Enabled, Description.
        wait_row(&n.w, "/services", &format!("{AGENT_UNIT} active"), |r| {
            r.len() >= 2 && r[0] == AGENT_UNIT && r[1].split_whitespace().next() == Some("active")
        })
        .await?;
        Ok(())
    })
}

/// The "Main PID" the unit page shows, as a number (None: "none").
async fn page_pid(b: &Browser) -> Result<Option<u32>> {
    let cells = b
        .rows(
            "return [...document.querySelectorAll('dl.facts dt')]\
             .filter(d => d.textContent.trim() === 'Main PID')\
             .map(d => d.nextElementSibling ? d.nextElementSibling.innerText : '');",
        )
        .await?;
    let text = cells
        .first()
        .and_then(|r| r.first())
        .context("the unit page has no \"Main PID\"")?;
    if text == "none" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .with_context(|| format!("the unit page's Main PID is {text:?}, not a number"))
}

async fn agent_pid(agent: &Channel) -> Result<u32> {
    Ok(UnitServiceClient::new(agent.clone())
        .get_unit(GetUnitRequest { name: UNIT.into() })
        .await
        .with_context(|| format!("GetUnit {UNIT} over mTLS"))?
        .into_inner()
        .main_pid)
}

fn unit_before(n: &mut NodeWeb) -> StepFuture<'_> {
    Box::pin(async move {
        n.w.b.goto(&n.w.url(&format!("/services/{UNIT}"))).await?;
        n.w.b
            .wait_text_within("h1", "the unit's name", LOAD, |t| t.contains(UNIT))
            .await?;
        let shown = page_pid(&n.w.b)
            .await?
            .with_context(|| format!("{UNIT} has no main PID before the restart: it is not running"))?;
        let real = agent_pid(&n.agent).await?;
        ensure!(
            shown == real,
            "the unit page shows Main PID {shown}, the agent reports {real}"
        );
        n.old_pid = shown;
        Ok(())
    })
}

fn restart_new_pid(n: &mut NodeWeb) -> StepFuture<'_> {
    Box::pin(async move {
        let w = &mut n.w;
        w.b.goto(&w.url(&format!("/services/{UNIT}"))).await?;
        let link = w.b.wait_css("a[data-action=\"restart\"]").await?;
        let href = link.attr("href").await?.context("the restart link has no href")?;
        // The confirmation page (what the link opens without JavaScript).
        w.b.goto(&w.url(&href)).await?;
        w.b.wait_css(".confirm-form button[type=submit]").await?;
        w.b.screenshot("restart-confirm").await?;
        w.b.click(".confirm-form button[type=submit]").await?;
        w.b.wait_text_within(".flash", "the restart's outcome", LOAD, |t| t.contains("restarted"))
            .await?;
        let old = n.old_pid;
        let deadline = Instant::now() + LOAD;
        loop {
            let w = &n.w;
            w.b.goto(&w.url(&format!("/services/{UNIT}"))).await?;
            w.b.wait_text_within("h1", "the unit's name", LOAD, |t| t.contains(UNIT))
                .await?;
            let shown = page_pid(&w.b).await?;
            if let Some(pid) = shown
                && pid != old
            {
                let real = agent_pid(&n.agent).await?;
                ensure!(
                    pid == real,
                    "after the restart the unit page shows Main PID {pid}, the agent reports {real}"
                );
                eprintln!("  {UNIT}: main PID {old} -> {pid}");
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{UNIT}'s page shows Main PID {shown:?} {} s after the restart; before it was {old}",
                    LOAD.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

fn restart_audited(n: &mut NodeWeb) -> StepFuture<'_> {
    Box::pin(async move {
        // #, Time, User, Action, Target, Result, Source.
        wait_row(
            &n.w,
            "/audit",
            &format!("units.Restart of {UNIT} by console:admin"),
            |r| {
                r.len() >= 6
                    && r[2] == "console:admin"
                    && r[3] == "units.Restart"
                    && r[4].contains(UNIT)
                    && r[5] == "ok"
            },
        )
        .await?;
        Ok(())
    })
}

fn health_checks(n: &mut NodeWeb) -> StepFuture<'_> {
    Box::pin(async move {
        let h = NodeHealthServiceClient::new(n.agent.clone())
            .list(ListRequest::default())
            .await
            .context("health List over mTLS")?
            .into_inner();
        let names: Vec<String> = h.checks.into_iter().map(|c| c.name).collect();
        ensure!(!names.is_empty(), "the agent reports no health checks");
        n.w.b.goto(&n.w.url("/health")).await?;
        let rows = n.w.b.wait_css("table.checks-full").await.map(|_| ());
        rows.context("the health page has no table of checks")?;
        let shown: Vec<String> =
            n.w.b
                .rows(
                    "return [...document.querySelectorAll('table.checks-full tbody tr td:first-child code')]\
                 .map(c => c.innerText);",
                )
                .await?
                .into_iter()
                .filter_map(|r| r.into_iter().next())
                .collect();
        let missing: Vec<&String> = names.iter().filter(|c| !shown.contains(c)).collect();
        ensure!(
            missing.is_empty(),
            "the health page does not list the checks {missing:?}; it lists {shown:?}"
        );
        Ok(())
    })
}

/// The test.
pub fn console_node_browser(ctx: &Ctx) -> Result<()> {
    let n = ctx.shared_node()?;
    let password = n.password()?;
    let dir = &ctx.dir;
    ensure!(
        n.status.image_version == ctx.version,
        "GetStatus reports image {:?}, manifest.json {:?}",
        n.status.image_version,
        ctx.version
    );
    let port = n.vm.console_port;
    let agent = ctx.rt.block_on(probes::connect(&n.client))?;
    ctx.rt.block_on(async {
        let cert = browser::save_pinned_cert(port, &n.fingerprint, &dir.join("node-console.pem")).await?;
        let b = Browser::start(dir, Some(&cert)).await?;
        let mut nw = NodeWeb {
            w: Web {
                b,
                base: format!("https://127.0.0.1:{port}"),
                password,
                ctl: None,
            },
            hostname: n.status.hostname.clone(),
            version: ctx.version.clone(),
            agent,
            old_pid: 0,
        };
        let walked = walk(&mut nw).await;
        let log: Vec<String> =
            nw.w.b
                .log
                .iter()
                .map(|e| format!("{} {}", e.level, e.message))
                .collect();
        let _ = std::fs::write(dir.join("browser-console.log"), log.join("\n"));
        let closed = nw.w.b.close().await;
        walked?;
        closed
    })
}

/// Runs [`STEPS`]; after each one a screenshot and the CSP check.
async fn walk(n: &mut NodeWeb) -> Result<()> {
    for step in STEPS {
        let t = Instant::now();
        let res = (step.run)(n).await;
        let shot = n.w.b.screenshot(step.name).await;
        res.with_context(|| format!("step {} (screenshot {shot:?})", step.name))?;
        let violations = n.w.b.csp_violations().await?;
        ensure!(
            violations.is_empty(),
            "step {}: Content Security Policy violations in the browser:\n{}",
            step.name,
            violations.join("\n")
        );
        eprintln!("  step {:<16} ok ({:.1} s)", step.name, t.elapsed().as_secs_f64());
    }
    Ok(())
}
