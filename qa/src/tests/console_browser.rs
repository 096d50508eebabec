//! `console_browser`: the console in headless Chromium, on this host.
//!
//! Starts the release `debvisor-agent --sim` on a Unix socket (the test's
//! user is the console's user, so the agent records `console:USER`) and the
//! release `debvisor-webui` on 127.0.0.1 with a throwaway PKI (the server
//! key pinned in Chromium) and an admin password made as a node's first boot
//! makes it; then walks [`STEPS`] in Chromium. After every step the
//! browser's console log is read and any Content Security Policy violation
//! fails the test; every step leaves a screenshot in the artifacts.
//!
//! A step is a function of [`Web`]; add one to [`STEPS`] for a new page.
//!
//! Then a second Chromium session with JavaScript blocked walks
//! [`nojs::STEPS`]: the same console through plain links and forms.

mod nojs;
mod provisioning;
mod updates;
mod vms;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

use super::Ctx;
use crate::browser::{Browser, Scripts};
use crate::console_host::ConsoleHost;
use crate::host_agent::release_binary;

/// The simulated node's host name (`debvisor-agent --sim`).
const SIM_HOSTNAME: &str = "sim-node";
/// A unit of the simulated host that may be restarted.
const UNIT: &str = "debvisor-webui.service";

/// What every step works with.
pub struct Web {
    /// The browser.
    pub b: Browser,
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// The admin's password.
    pub password: String,
    /// debvisorctl and the agent's socket, for changes made beside the
    /// browser.
    pub ctl: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Web {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Opens the audit log and waits until its text satisfies `found`
    /// (`what` names the entry in the error).
    pub(crate) async fn audited(&self, what: &str, found: impl Fn(&str) -> bool) -> Result<()> {
        self.b.goto(&self.url("/audit")).await?;
        self.b.wait_text("main", what, found).await?;
        Ok(())
    }

    /// Fills and submits the sign-in form.
    async fn submit_login(&self, user: &str, password: &str) -> Result<()> {
        self.b.goto(&self.url("/login")).await?;
        self.b.fill("#username", user).await?;
        self.b.fill("#password", password).await?;
        self.b.click("form[action=\"/login\"] button[type=submit]").await
    }
}

pub(crate) type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// One step of the walk.
pub struct Step {
    /// Its name (screenshots are named after it).
    pub name: &'static str,
    /// What it does.
    pub run: for<'a> fn(&'a mut Web) -> StepFuture<'a>,
}

/// The walk, in order: each step starts where the previous one left off.
pub const STEPS: &[Step] = &[
    Step {
        name: "wrong-password",
        run: wrong_password,
    },
    Step {
        name: "sign-in",
        run: sign_in,
    },
    Step {
        name: "dashboard-live",
        run: dashboard_live,
    },
    Step {
        name: "status",
        run: status_figures,
    },
    Step {
        name: "csp-canary",
        run: csp_canary,
    },
    Step {
        name: "services",
        run: services_list,
    },
    Step {
        name: "restart-audited",
        run: restart_is_audited,
    },
    Step {
        name: "health",
        run: health_checks,
    },
    Step {
        name: "settings",
        run: settings_config,
    },
    Step {
        name: "bundle-download",
        run: bundle_download,
    },
    Step {
        name: "updates-slots",
        run: updates::slots,
    },
    Step {
        name: "updates-upload",
        run: updates::upload,
    },
    Step {
        name: "updates-url-refused",
        run: updates::url_refused,
    },
    Step {
        name: "provisioning",
        run: provisioning::page,
    },
    Step {
        name: "vms",
        run: vms::pages,
    },
    Step {
        name: "users-create-viewer",
        run: create_viewer,
    },
    Step {
        name: "sign-out",
        run: sign_out,
    },
    Step {
        name: "viewer-role",
        run: viewer_role,
    },
    Step {
        name: "idle-expiry",
        run: idle_expiry,
    },
];

/// The console's idle limit in this test (`--idle-timeout`): short, so that
/// the expiry step waits for it, yet longer than any pause between two
/// requests of the other steps.
const IDLE_TIMEOUT_SECS: u64 = 30;

/// Signed in on the live dashboard, the user does nothing: the page's
/// live stream does not count as use, so after the idle limit the session
/// is gone and the next page asks for the sign-in.
fn idle_expiry(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        let password = w.password.clone();
        w.submit_login("admin", &password).await?;
        w.b.wait_css("form.signout").await?;
        w.b.goto(&w.url("/dashboard")).await?;
        w.b.wait_css("#live").await?;
        // Waiting is the point here: the server must end the session.
        tokio::time::sleep(Duration::from_secs(IDLE_TIMEOUT_SECS + 3)).await;
        w.b.goto(&w.url("/services")).await?;
        w.b.wait_path("/login").await?;
        w.b.wait_css("#password").await?;
        Ok(())
    })
}

/// The viewer the users step creates (a throwaway console on 127.0.0.1).
const VIEWER: (&str, &str) = ("vera", "viewer-password-for-qa");

fn wrong_password(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.submit_login("admin", "not the password").await?;
        let text =
            w.b.wait_text(".login .alert", "the sign-in error", |t| !t.is_empty())
                .await?;
        ensure!(
            text.contains("Wrong user name or password"),
            "the sign-in error says {text:?}"
        );
        w.b.wait_path("/login").await
    })
}

pub(crate) fn sign_in(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        let password = w.password.clone();
        w.submit_login("admin", &password).await?;
        // Signed in: the sign-out form is in the top bar.
        w.b.wait_css("form.signout").await?;
        let path = w.b.client().current_url().await?.path().to_string();
        ensure!(path != "/login", "still on the sign-in page after a correct password");
        Ok(())
    })
}

fn dashboard_live(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url("/dashboard")).await?;
        w.b.wait_text("#live .hostname", "the host name", |t| t == SIM_HOSTNAME)
            .await?;
        let charts =
            w.b.client()
                .find_all(fantoccini::Locator::Css("#live svg.chart"))
                .await?;
        ensure!(!charts.is_empty(), "the dashboard shows no chart");
        let first = w.b.wait_css("#live").await?.text().await?;
        // A mark on the page: it survives a swap by server-sent events, not
        // a reload.
        w.b.client().execute("window.dvLiveMark = 1;", vec![]).await?;
        w.b.wait_text("#live", "new figures without a reload", |t| t != first)
            .await?;
        let mark = w.b.client().execute("return window.dvLiveMark === 1;", vec![]).await?;
        ensure!(
            mark == serde_json::Value::Bool(true),
            "the dashboard reloaded instead of updating in place"
        );
        Ok(())
    })
}

fn status_figures(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url("/status")).await?;
        w.b.wait_text(".topbar .host", "the host name", |t| t == SIM_HOSTNAME)
            .await?;
        w.b.wait_css(".sim-banner").await?;
        let main =
            w.b.wait_text("main", "the node's figures", |t| t.contains(SIM_HOSTNAME))
                .await?;
        ensure!(
            main.contains('%') || main.contains("MiB") || main.contains("GiB"),
            "the status page shows no resource figures: {main:?}"
        );
        Ok(())
    })
}

/// Proves that the CSP check after each step can fail: an inline script
/// added to the page must be refused, and the refusal must reach the log.
fn csp_canary(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.read_log().await?;
        w.b.client()
            .execute(
                "const s = document.createElement('script'); s.textContent = 'window.dvInline = 1;'; \
                 document.body.appendChild(s);",
                vec![],
            )
            .await?;
        let ran = w.b.client().execute("return window.dvInline === 1;", vec![]).await?;
        ensure!(
            ran == serde_json::Value::Bool(false),
            "an inline script ran: the CSP allows it"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = w.b.read_log().await?;
            if seen.iter().any(|e| e.is_csp_violation()) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the refused inline script left no CSP message in the browser log: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn services_list(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url("/services")).await?;
        w.b.wait_text("main", "the unit list", |t| t.contains(UNIT)).await?;
        Ok(())
    })
}

fn restart_is_audited(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url(&format!("/services/{UNIT}"))).await?;
        let link = w.b.wait_css("a[data-action=\"restart\"]").await?;
        let href = link.attr("href").await?.context("the restart link has no href")?;
        // The confirmation page (what the link opens without JavaScript).
        w.b.goto(&w.url(&href)).await?;
        w.b.click(".confirm-form button[type=submit]").await?;
        w.b.wait_text(".flash", "the restart's outcome", |t| t.contains("restarted"))
            .await?;
        w.audited("the restart in the audit log", |t| {
            t.contains("units.Restart") && t.contains(UNIT) && t.contains("console:admin")
        })
        .await?;
        Ok(())
    })
}

fn health_checks(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url("/health")).await?;
        w.b.wait_text("main", "the simulated checks", |t| t.contains("(simulated)"))
            .await?;
        Ok(())
    })
}

fn settings_config(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url("/settings")).await?;
        let toml =
            w.b.wait_text("#config-toml", "the sample machine config", |t| {
                t.contains("worker-07.edge.example")
            })
            .await?;
        ensure!(
            toml.contains("join_token = \"<redacted>\""),
            "the join token is not redacted: {toml}"
        );
        w.b.wait_css("#download-bundle").await?;
        Ok(())
    })
}

fn bundle_download(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.goto(&w.url("/settings")).await?;
        w.b.click("#download-bundle").await?;
        let name = format!("debvisor-{SIM_HOSTNAME}.toml");
        let text = w.b.wait_download(&name).await?;
        ensure!(
            text.contains("SIMULATED") && text.contains("[contexts.simulated]"),
            "the downloaded {name} is not the simulated bundle: {text}"
        );
        // A download leaves the page as it was.
        w.b.wait_path("/settings").await?;
        w.audited("the download in the audit log", |t| {
            t.contains("config.bundle.download") && t.contains("console:admin")
        })
        .await?;
        Ok(())
    })
}

fn create_viewer(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        let (name, password) = VIEWER;
        w.b.goto(&w.url("/users")).await?;
        w.b.fill("#name", name).await?;
        w.b.click("#role option[value=\"viewer\"]").await?;
        w.b.fill("#password", password).await?;
        w.b.fill("#confirm", password).await?;
        w.b.click("form[action=\"/users\"] button[type=submit]").await?;
        // The new user's page, or the list, names the user and the role.
        w.b.wait_text("main", "the new user", |t| t.contains(name) && t.contains("viewer"))
            .await?;
        Ok(())
    })
}

fn viewer_role(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        let (name, password) = VIEWER;
        w.submit_login(name, password).await?;
        w.b.wait_css("form.signout").await?;
        let nav =
            w.b.wait_text("nav.nav", "the viewer's links", |t| t.contains("Dashboard"))
                .await?;
        for hidden in ["Settings", "Users", "Audit"] {
            ensure!(!nav.contains(hidden), "a viewer's bar shows {hidden}: {nav:?}");
        }
        w.b.goto(&w.url("/settings")).await?;
        let body = w.b.wait_text("main", "the refusal", |t| t.contains("403")).await?;
        ensure!(!body.contains("worker-07"), "a viewer sees the machine config: {body}");
        w.b.goto(&w.url("/dashboard")).await?;
        w.b.click("form.signout button[type=submit]").await?;
        w.b.wait_path("/login").await
    })
}

pub(crate) fn sign_out(w: &mut Web) -> StepFuture<'_> {
    Box::pin(async move {
        w.b.click("form.signout button[type=submit]").await?;
        w.b.wait_path("/login").await?;
        // The session is gone: a page asks for the sign-in again.
        w.b.goto(&w.url("/settings")).await?;
        w.b.wait_path("/login").await?;
        w.b.wait_css("#password").await?;
        Ok(())
    })
}

/// The test.
pub fn console_browser(ctx: &Ctx) -> Result<()> {
    let dir = &ctx.dir;
    // CPU samples of the VM list far apart: only libvirt's events redraw
    // it during the walk, so the vms step sees events at work.
    let idle = [
        "--idle-timeout".to_string(),
        IDLE_TIMEOUT_SECS.to_string(),
        "--vm-sample-secs".to_string(),
        "3600".to_string(),
    ];
    // The agent runs a provisioner on a network of its own.
    let net = provisioning::ProvisionNet::create("dvq-cb", dir)?;
    let mut host = ConsoleHost::start_with(ctx.paths, dir, &idle, &net.agent_setup())?;
    let ctl = release_binary(ctx.paths, "debvisorctl", "debvisorctl")?;
    net.seed(&ctl, &host.agent_socket)?;
    ctx.rt.block_on(async {
        session(&host, &ctl, dir, Scripts::On, STEPS).await?;
        eprintln!("  JavaScript off ({}):", dir.join("nojs").display());
        session(&host, &ctl, &dir.join("nojs"), Scripts::Off, nojs::STEPS).await
    })?;
    host.check()
}

/// One Chromium session (artifacts in `dir`) that walks `steps`.
async fn session(
    host: &ConsoleHost,
    ctl: &std::path::Path,
    dir: &std::path::Path,
    scripts: Scripts,
    steps: &[Step],
) -> Result<()> {
    let b = Browser::start_with(dir, Some(&host.pki.server_cert()), scripts).await?;
    let mut w = Web {
        b,
        base: host.base(),
        password: host.password.clone(),
        ctl: Some((ctl.to_path_buf(), host.agent_socket.clone())),
    };
    let walked = walk(&mut w, steps).await;
    let log: Vec<String> = w.b.log.iter().map(|e| format!("{} {}", e.level, e.message)).collect();
    let _ = std::fs::write(dir.join("browser-console.log"), log.join("\n"));
    let closed = w.b.close().await;
    walked?;
    closed
}

/// Runs every step; after each one, a screenshot and the console check.
async fn walk(w: &mut Web, steps: &[Step]) -> Result<()> {
    for step in steps {
        let t = Instant::now();
        let res = (step.run)(w).await;
        let shot = w.b.screenshot(step.name).await;
        res.with_context(|| format!("step {}", step.name))?;
        let shot = shot?;
        let csp: Vec<String> =
            w.b.read_log()
                .await?
                .into_iter()
                .filter(|e| e.is_csp_violation())
                .map(|e| e.message)
                .collect();
        ensure!(
            csp.is_empty(),
            "step {}: the browser reported Content Security Policy violations:\n{}",
            step.name,
            csp.join("\n")
        );
        eprintln!(
            "  step {:<20} ok ({} ms, {})",
            step.name,
            t.elapsed().as_millis(),
            shot.display()
        );
    }
    Ok(())
}
