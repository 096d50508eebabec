//! Pages: askama templates (in `webui/templates/`) and the helpers that turn
//! the agent's figures into text people read.
//!
//! Templates get everything pre-formatted, so they hold no logic beyond
//! loops and conditionals.

use askama::Template;
use debvisor_api::health::v1::{CheckStatus, GateState, NodeHealth, NodeState};
use debvisor_api::node::v1::GetStatusResponse;

use crate::roles::{Permission, Role};

/// What every page shows around its content.
#[derive(Debug, Clone, Default)]
pub struct Chrome {
    /// The node's host name, when the agent has told us.
    pub hostname: Option<String>,
    /// True when the agent runs in simulation mode: every page says so.
    pub simulated: bool,
    /// The signed-in navigation (present only with a session).
    pub nav: Option<Nav>,
}

impl Chrome {
    /// URL of the style sheet (versioned by its content).
    pub fn css_url(&self) -> String {
        crate::assets::css_url()
    }

    /// URL of the vendored htmx.
    pub fn htmx_url(&self) -> String {
        crate::assets::htmx_url()
    }

    /// URL of htmx's server-sent-events extension.
    pub fn sse_url(&self) -> String {
        crate::assets::sse_url()
    }
}

/// Navigation for a signed-in user.
#[derive(Debug, Clone)]
pub struct Nav {
    /// The signed-in user.
    pub user: String,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: String,
    /// Which entry is current ("dashboard", "services"...).
    pub current: &'static str,
    /// The session's role: the bar shows only what it may open.
    pub role: Role,
}

/// One entry of the navigation bar.
#[derive(Debug, Clone, PartialEq)]
pub struct NavLink {
    /// Where it goes.
    pub href: &'static str,
    /// What it says.
    pub label: &'static str,
    /// The page shown now.
    pub current: bool,
}

/// The navigation bar's entries: (name, path, label, what the page needs).
pub const NAV_LINKS: &[(&str, &str, &str, Permission)] = &[
    ("dashboard", "/dashboard", "Dashboard", Permission::ViewDashboard),
    ("services", "/services", "Services", Permission::ViewDashboard),
    ("health", "/health", "Health", Permission::ViewDashboard),
    ("vms", "/vms", "VMs", Permission::ViewVms),
    ("audit", "/audit", "Audit", Permission::ViewAudit),
    ("users", "/users", "Users", Permission::ManageUsers),
    ("provisioning", "/provisioning", "Provisioning", Permission::ViewConfig),
    ("settings", "/settings", "Settings", Permission::ViewConfig),
    ("about", "/about", "About", Permission::ViewDashboard),
];

impl Nav {
    /// The bar for `session` with `current` (a [`NAV_LINKS`] name) marked.
    pub fn new(session: &crate::auth::Session, current: &'static str) -> Self {
        Nav {
            user: session.user.clone(),
            csrf: session.csrf.clone(),
            current,
            role: session.role,
        }
    }

    /// The entries the role may open, in order.
    pub fn links(&self) -> Vec<NavLink> {
        NAV_LINKS
            .iter()
            .filter(|(_, _, _, p)| self.role.allows(*p))
            .map(|(name, href, label, _)| NavLink {
                href,
                label,
                current: *name == self.current,
            })
            .collect()
    }
}

/// The sign-in page.
#[derive(Debug, Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The double-submit CSRF token (also in the cookie).
    pub csrf: String,
    /// The user name to pre-fill after a failure.
    pub username: String,
    /// An error to show above the form.
    pub error: Option<String>,
}

/// The node status page.
#[derive(Debug, Template)]
#[template(path = "status.html")]
pub struct StatusPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The figures, or why the agent could not give them.
    pub node: Result<NodeView, String>,
    /// The node's health, or why it could not be read.
    pub health: Result<HealthView, String>,
}

/// One check that is not passing, for the status page.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRow {
    /// "service/debvisor-webui".
    pub name: String,
    /// "warn" or "fail" (also the CSS class).
    pub status: &'static str,
    /// Required for a good boot.
    pub required: bool,
    /// What the check found.
    pub message: String,
}

/// The node's health, formatted for the status page.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthView {
    /// "Healthy", "Degraded" or "Starting".
    pub state: &'static str,
    /// "ok", "warn" or "crit".
    pub level: &'static str,
    /// Why the node is degraded (empty otherwise).
    pub degraded_reason: String,
    /// "Good", "Bad" or "Pending".
    pub gate: &'static str,
    /// The gate's reason.
    pub gate_reason: String,
    /// The machine config that was refused, if any.
    pub config_error: Option<String>,
    /// Passing checks.
    pub passing: usize,
    /// Every check.
    pub total: usize,
    /// Checks that warn or fail, failing and required first.
    pub problems: Vec<CheckRow>,
}

impl From<&NodeHealth> for HealthView {
    fn from(h: &NodeHealth) -> Self {
        let (state, level) = match NodeState::try_from(h.state).unwrap_or_default() {
            NodeState::Healthy => ("Healthy", "ok"),
            NodeState::Degraded => ("Degraded", "crit"),
            _ => ("Starting", "warn"),
        };
        let gate = h.gate.clone().unwrap_or_default();
        let status_of = |c: &debvisor_api::health::v1::Check| {
            c.last
                .as_ref()
                .and_then(|r| CheckStatus::try_from(r.status).ok())
                .unwrap_or_default()
        };
        let mut problems: Vec<CheckRow> = h
            .checks
            .iter()
            .filter_map(|c| {
                let status = match status_of(c) {
                    CheckStatus::Warn => "warn",
                    CheckStatus::Fail => "fail",
                    _ => return None,
                };
                Some(CheckRow {
                    name: c.name.clone(),
                    status,
                    required: c.required,
                    message: c.last.as_ref().map(|r| r.message.clone()).unwrap_or_default(),
                })
            })
            .collect();
        problems.sort_by_key(|r| (r.status != "fail", !r.required));
        HealthView {
            state,
            level,
            degraded_reason: h.degraded_reason.clone(),
            gate: match GateState::try_from(gate.state).unwrap_or_default() {
                GateState::Good => "Good",
                GateState::Bad => "Bad",
                _ => "Pending",
            },
            gate_reason: gate.reason,
            config_error: Some(h.config_error.clone()).filter(|e| !e.is_empty()),
            passing: h.checks.iter().filter(|c| status_of(c) == CheckStatus::Pass).count(),
            total: h.checks.len(),
            problems,
        }
    }
}

/// A friendly error page.
#[derive(Debug, Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The HTTP status code.
    pub code: u16,
    /// A short title ("Page not found").
    pub title: String,
    /// One or two sentences for the user.
    pub message: String,
}

/// A used/total figure with a bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// "1.5 GiB".
    pub used: String,
    /// "8.0 GiB".
    pub total: String,
    /// "1.0 GiB".
    pub available: String,
    /// Percentage used, 0-100, for the bar width.
    pub percent: f64,
    /// Rounded percentage for text ("19").
    pub percent_text: String,
    /// "ok", "warn" or "crit": the bar's colour class.
    pub level: &'static str,
}

impl Usage {
    /// Builds the figure from byte counts.
    pub fn new(used: u64, total: u64, available: u64) -> Self {
        let percent = percent(used, total);
        Usage {
            used: human_bytes(used),
            total: human_bytes(total),
            available: human_bytes(available),
            percent,
            percent_text: format!("{percent:.0}"),
            level: level(percent),
        }
    }
}

/// One disk on the status page.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskView {
    /// "root" or "data".
    pub name: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// Space used.
    pub usage: Usage,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The status page's figures, formatted.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Host name.
    pub hostname: String,
    /// Image name.
    pub image_id: String,
    /// Image version.
    pub image_version: String,
    /// "A", "B" or an explanation that there is no slot.
    pub booted_slot: String,
    /// "1 day, 2 hours, 3 minutes".
    pub uptime: String,
    /// Load averages, two decimals.
    pub load: [String; 3],
    /// Memory use.
    pub memory: Usage,
    /// File systems.
    pub disks: Vec<DiskView>,
    /// Kernel release.
    pub kernel: String,
    /// Agent version.
    pub agent_version: String,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".to_string()
    } else {
        s.to_string()
    }
}

impl From<&GetStatusResponse> for NodeView {
    fn from(s: &GetStatusResponse) -> Self {
        let load = s.load.unwrap_or_default();
        let mem = s.memory.unwrap_or_default();
        NodeView {
            hostname: or_unknown(&s.hostname),
            image_id: or_unknown(&s.image_id),
            image_version: or_unknown(&s.image_version),
            booted_slot: if s.booted_slot.is_empty() {
                "none (not booted from an A/B disk)".to_string()
            } else {
                s.booted_slot.clone()
            },
            uptime: human_uptime(s.uptime_seconds),
            load: [load.one, load.five, load.fifteen].map(|l| format!("{l:.2}")),
            memory: Usage::new(mem.used_bytes, mem.total_bytes, mem.available_bytes),
            disks: s
                .disks
                .iter()
                .map(|d| DiskView {
                    name: or_unknown(&d.name),
                    mount_point: d.mount_point.clone(),
                    usage: Usage::new(d.used_bytes, d.total_bytes, d.available_bytes),
                    read_only: d.read_only,
                })
                .collect(),
            kernel: or_unknown(&s.kernel),
            agent_version: or_unknown(&s.agent_version),
        }
    }
}

/// Bytes in binary units with one decimal: "512 B", "1.5 KiB", "8.0 GiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Uptime in words, to the minute: "3 days, 4 hours, 5 minutes"; under a
/// minute "42 seconds". Negative or non-finite input counts as zero.
pub fn human_uptime(seconds: f64) -> String {
    let total = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    if total < 60 {
        return plural(total, "second");
    }
    let (days, hours, minutes) = (total / 86_400, total % 86_400 / 3600, total % 3600 / 60);
    let mut parts = Vec::new();
    if days > 0 {
        parts.push(plural(days, "day"));
    }
    if hours > 0 {
        parts.push(plural(hours, "hour"));
    }
    if minutes > 0 {
        parts.push(plural(minutes, "minute"));
    }
    parts.join(", ")
}

/// `used` as a percentage of `total`, clamped to 0-100 (0 when total is 0).
pub fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (used as f64 / total as f64 * 100.0).clamp(0.0, 100.0)
}

/// The colour class of a bar: "ok" below 75 %, "warn" below 90 %, else "crit".
pub fn level(percent: f64) -> &'static str {
    if percent < 75.0 {
        "ok"
    } else if percent < 90.0 {
        "warn"
    } else {
        "crit"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FixedNode;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(8 << 30), "8.0 GiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn uptime_is_human() {
        assert_eq!(human_uptime(0.0), "0 seconds");
        assert_eq!(human_uptime(1.9), "1 second");
        assert_eq!(human_uptime(59.0), "59 seconds");
        assert_eq!(human_uptime(60.0), "1 minute");
        assert_eq!(human_uptime(3600.0), "1 hour");
        assert_eq!(human_uptime(3660.0), "1 hour, 1 minute");
        assert_eq!(human_uptime(93_784.0), "1 day, 2 hours, 3 minutes");
        assert_eq!(human_uptime(2.0 * 86_400.0), "2 days");
        assert_eq!(human_uptime(-5.0), "0 seconds");
        assert_eq!(human_uptime(f64::NAN), "0 seconds");
    }

    #[test]
    fn percentages_and_levels() {
        assert_eq!(percent(1, 0), 0.0);
        assert_eq!(percent(50, 200), 25.0);
        assert_eq!(percent(300, 200), 100.0);
        assert_eq!(level(74.9), "ok");
        assert_eq!(level(75.0), "warn");
        assert_eq!(level(95.0), "crit");
        let u = Usage::new(3 << 30, 4 << 30, 1 << 30);
        assert_eq!(
            (u.percent_text.as_str(), u.level, u.used.as_str()),
            ("75", "warn", "3.0 GiB")
        );
    }

    #[test]
    fn status_page_renders_figures_and_escapes() {
        let mut status = FixedNode::sample("node-1").0.unwrap();
        status.hostname = "<b>x</b>".into();
        let page = StatusPage {
            chrome: Chrome {
                hostname: Some(status.hostname.clone()),
                simulated: true,
                nav: Some(Nav {
                    user: "admin".into(),
                    csrf: "t0k3n".into(),
                    current: "status",
                    role: Role::Admin,
                }),
            },
            node: Ok(NodeView::from(&status)),
            health: Ok(HealthView::from(&crate::fakes::sample_health())),
        };
        let html = page.render().unwrap();
        assert!(
            html.contains("&#60;b&#62;x&#60;/b&#62;") || html.contains("&lt;b&gt;x&lt;/b&gt;"),
            "{html}"
        );
        assert!(!html.contains("<b>x</b>"));
        assert!(html.contains("SIMULATION"));
        assert!(html.contains("1 day, 2 hours, 3 minutes"));
        assert!(html.contains("read-only"));
        assert!(html.contains("t0k3n"));
        assert!(!html.contains("style="), "CSP forbids inline styles");
        assert!(html.contains("Healthy"), "{html}");
        assert!(html.contains("3 of 4 checks pass"), "{html}");
        assert!(html.contains("no resolver answered"), "{html}");
    }

    #[test]
    fn the_bar_shows_only_what_the_role_may_open() {
        let nav = |role| Nav {
            user: "u".into(),
            csrf: String::new(),
            current: "health",
            role,
        };
        let labels = |role| nav(role).links().iter().map(|l| l.label).collect::<Vec<_>>();
        assert_eq!(
            labels(Role::Admin),
            [
                "Dashboard",
                "Services",
                "Health",
                "VMs",
                "Audit",
                "Users",
                "Provisioning",
                "Settings",
                "About"
            ]
        );
        assert_eq!(
            labels(Role::Viewer),
            ["Dashboard", "Services", "Health", "VMs", "About"]
        );
        assert_eq!(
            labels(Role::Operator),
            [
                "Dashboard",
                "Services",
                "Health",
                "VMs",
                "Audit",
                "Provisioning",
                "Settings",
                "About"
            ]
        );
        let current: Vec<_> = nav(Role::Viewer).links().into_iter().filter(|l| l.current).collect();
        assert_eq!(current.len(), 1);
        assert_eq!(current[0].href, "/health");
    }

    #[test]
    fn refused_machine_config_and_degraded_state_show() {
        let mut health = crate::fakes::sample_health();
        health.state = NodeState::Degraded as i32;
        health.degraded_reason = "service/debvisor-webui failed after 3 restarts".into();
        health.config_error = "network.vlans[0].id = 5000: a VLAN id is 1-4094".into();
        health.checks[1].last.as_mut().unwrap().status = CheckStatus::Fail as i32;
        let view = HealthView::from(&health);
        assert_eq!((view.state, view.level), ("Degraded", "crit"));
        assert_eq!(
            view.problems[0].name, "storage/data",
            "failing required checks come first"
        );
        let page = StatusPage {
            chrome: Chrome::default(),
            node: Ok(NodeView::from(&FixedNode::sample("n").0.unwrap())),
            health: Ok(view),
        };
        let html = page.render().unwrap();
        assert!(html.contains("Machine config refused"), "{html}");
        assert!(html.contains("network.vlans[0].id = 5000"), "{html}");
        assert!(html.contains("failed after 3 restarts"), "{html}");
    }

    #[test]
    fn unreachable_agent_is_a_page_state() {
        let page = StatusPage {
            chrome: Chrome::default(),
            node: Err("Cannot connect to the agent socket /run/x.sock".into()),
            health: Err("Cannot connect to the agent socket /run/x.sock".into()),
        };
        let html = page.render().unwrap();
        assert!(html.contains("Agent unreachable"));
        assert!(html.contains("/run/x.sock"));
        assert!(html.contains("retry in a few seconds"));
        assert!(!html.contains("SIMULATION"));
    }
}
