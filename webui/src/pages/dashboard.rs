//! The dashboard: the node at a glance, live.
//!
//! | route | permission | what |
//! |---|---|---|
//! | `GET /dashboard` | `ViewDashboard` | identity, health, CPU, memory, disk and network charts with an hour of history, services |
//! | `GET /dashboard/events` | `ViewDashboard` | server-sent events: the page's live part, re-rendered at every sample (event `sample`) |
//! | `GET /static/vendor/HASH/NAME` | none | the vendored htmx files (see [`crate::assets`]) |
//!
//! Every figure comes from the console's sampler ([`crate::live`]), so a
//! page costs no call to the agent once the first sample is in. The page is
//! complete without JavaScript; with it, htmx's SSE extension swaps in the
//! fragment of each new sample.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;
use crate::charts::{self, Chart, LegendItem, Series, Unit};
use crate::error::AppError;
use crate::handlers::RequireSession;
use crate::live::{self, History, Live, Sample, ServiceCounts};
use crate::roles::Permission;
use crate::views::{Chrome, HealthView, NodeView};

/// How long a page waits for the console's first sample.
const FIRST_SAMPLE_WAIT: Duration = Duration::from_secs(6);
/// How long one event stream lasts; the browser reconnects (and the
/// session is checked again).
const STREAM_LIFETIME: Duration = Duration::from_secs(300);
/// Network interfaces that get a chart (up ones first).
const NET_CHARTS: usize = 4;

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/events", get(events))
        .merge(crate::assets::routes())
}

/// One chart with its headline figures.
#[derive(Debug, Clone)]
pub struct ChartCard {
    /// "CPU".
    pub title: String,
    /// The big figure ("23 %").
    pub headline: String,
    /// A line under it ("4 CPUs · load 0.52 0.40 0.31").
    pub detail: String,
    /// The SVG.
    pub svg: String,
    /// The legend with last values.
    pub legend: Vec<LegendItem>,
    /// An extra strip under the chart (CPU: one column per CPU), or "".
    pub strip: String,
}

/// One interface in the table.
#[derive(Debug, Clone)]
pub struct InterfaceRow {
    /// Its name.
    pub name: String,
    /// "up" or "down" (also the tag's class: ok / crit).
    pub state: String,
    /// The tag's class.
    pub level: &'static str,
    /// Received since boot.
    pub rx: String,
    /// Sent since boot.
    pub tx: String,
    /// Packets in / out.
    pub packets: String,
}

/// The live part of the dashboard (also the SSE fragment).
#[derive(Debug, Template)]
#[template(path = "dashboard_live.html")]
pub struct DashboardLive {
    /// The node's figures, or why the agent could not give them.
    pub node: Result<NodeView, String>,
    /// Health.
    pub health: Result<HealthView, String>,
    /// Services.
    pub services: Result<ServiceCounts, String>,
    /// CPU, memory and disk charts.
    pub charts: Vec<ChartCard>,
    /// Network charts.
    pub net_charts: Vec<ChartCard>,
    /// Every interface.
    pub interfaces: Vec<InterfaceRow>,
    /// "12:03:04 UTC".
    pub sampled: String,
    /// Seconds between samples.
    pub interval_s: u64,
}

/// The dashboard page.
#[derive(Debug, Template)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The rendered live part.
    pub live: Arc<str>,
}

/// "HH:MM:SS UTC" of a Unix time in ms.
pub fn clock_utc(unix_ms: i64) -> String {
    let s = unix_ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s % 3600 / 60, s % 60)
}

/// Where a chart's time axis starts and ends.
#[derive(Debug, Clone, Copy)]
struct Axis {
    now_ms: i64,
    window_ms: i64,
    gap_ms: i64,
}

fn card(title: &str, unit: Unit, axis: Axis, series: &[Series], headline: String, detail: String) -> ChartCard {
    ChartCard {
        title: title.to_string(),
        headline,
        detail,
        svg: charts::render(&Chart {
            title,
            unit,
            now_ms: axis.now_ms,
            window_ms: axis.window_ms,
            gap_ms: axis.gap_ms,
            series,
        }),
        legend: charts::legend(unit, series),
        strip: String::new(),
    }
}

/// Builds the live part from a sample and the history.
pub fn build(sample: &Sample, history: &History, interval: Duration) -> DashboardLive {
    let gap_ms = (interval.as_millis() as i64) * 3;
    let (mut charts, mut net_charts, mut interfaces) = (Vec::new(), Vec::new(), Vec::new());
    let mut sampled = "no answer from the agent".to_string();
    if let Ok(s) = &sample.status {
        let now = s.sampled_at_unix_ms;
        sampled = clock_utc(now);
        let axis = Axis {
            now_ms: now,
            window_ms: charts::window_for(history.span_ms(now)),
            gap_ms,
        };
        let cpu = s.cpu.clone().unwrap_or_default();
        let load = s.load.unwrap_or_default();
        charts.push(card(
            "CPU",
            Unit::Percent,
            axis,
            &history.cpu_series(),
            Unit::Percent.format(cpu.busy_fraction * 100.0),
            format!(
                "{} CPU{} · load {:.2} {:.2} {:.2}",
                cpu.count,
                if cpu.count == 1 { "" } else { "s" },
                load.one,
                load.five,
                load.fifteen
            ),
        ));
        if let Some(cpu_card) = charts.last_mut() {
            let labels: Vec<String> = (0..cpu.per_cpu_busy_fraction.len())
                .map(|i| format!("cpu{i}"))
                .collect();
            let percents: Vec<f64> = cpu.per_cpu_busy_fraction.iter().map(|f| f * 100.0).collect();
            cpu_card.strip = charts::columns("Busy share of each CPU", &labels, &percents);
        }
        let mem = s.memory.unwrap_or_default();
        charts.push(card(
            "Memory",
            Unit::Percent,
            axis,
            &history.memory_series(),
            Unit::Percent.format(crate::views::percent(mem.used_bytes, mem.total_bytes)),
            format!(
                "{} of {} used · {} available",
                crate::views::human_bytes(mem.used_bytes),
                crate::views::human_bytes(mem.total_bytes),
                crate::views::human_bytes(mem.available_bytes)
            ),
        ));
        let disks: Vec<String> = s
            .disks
            .iter()
            .map(|d| {
                format!(
                    "{} {} of {}",
                    d.name,
                    crate::views::human_bytes(d.used_bytes),
                    crate::views::human_bytes(d.total_bytes)
                )
            })
            .collect();
        // The read-only root image is always full: rate the writable ones.
        let writable = s.disks.iter().any(|d| !d.read_only);
        let fullest = s
            .disks
            .iter()
            .filter(|d| !writable || !d.read_only)
            .map(|d| crate::views::percent(d.used_bytes, d.total_bytes))
            .fold(0.0, f64::max);
        charts.push(card(
            "Disks",
            Unit::Percent,
            axis,
            &history.disk_series(),
            format!("{} used", Unit::Percent.format(fullest)),
            disks.join(" · "),
        ));
        let mut ordered: Vec<_> = s.interfaces.iter().collect();
        ordered.sort_by_key(|i| !i.up);
        for i in ordered.iter().take(NET_CHARTS) {
            let series = history.net_series(&i.name);
            let last = |k: usize| {
                series
                    .get(k)
                    .and_then(|s| s.points.last())
                    .map_or_else(|| "–".to_string(), |(_, v)| Unit::BytesPerSecond.format(*v))
            };
            net_charts.push(card(
                &format!("Network {}", i.name),
                Unit::BytesPerSecond,
                axis,
                &series,
                format!("↓ {} ↑ {}", last(0), last(1)),
                format!(
                    "{} since boot: {} received, {} sent",
                    i.operstate,
                    crate::views::human_bytes(i.rx_bytes),
                    crate::views::human_bytes(i.tx_bytes)
                ),
            ));
        }
        interfaces = s
            .interfaces
            .iter()
            .map(|i| InterfaceRow {
                name: i.name.clone(),
                state: i.operstate.clone(),
                level: if i.up { "ok" } else { "crit" },
                rx: crate::views::human_bytes(i.rx_bytes),
                tx: crate::views::human_bytes(i.tx_bytes),
                packets: format!("{} / {}", i.rx_packets, i.tx_packets),
            })
            .collect();
    }
    DashboardLive {
        node: sample.status.as_ref().map(NodeView::from).map_err(Clone::clone),
        health: sample.health.as_ref().map(HealthView::from).map_err(Clone::clone),
        services: sample.services.clone(),
        charts,
        net_charts,
        interfaces,
        sampled,
        interval_s: interval.as_secs().max(1),
    }
}

/// The fragment of `sample`, rendered once and shared.
fn fragment(live: &Live, sample: &Sample) -> Arc<str> {
    live.fragment(sample.seq, || {
        let view = live.with_history(|h| build(sample, h, live.interval()));
        view.render().unwrap_or_else(|e| {
            tracing::error!(error = %e, "dashboard fragment rendering failed");
            "<p class=\"muted\">The dashboard could not be rendered.</p>".to_string()
        })
    })
}

async fn page(State(state): State<AppState>, required: RequireSession) -> Result<Response, AppError> {
    let session = required.require(Permission::ViewDashboard)?;
    let live = live::spawn(&state);
    let html = match live.latest_or_wait(FIRST_SAMPLE_WAIT).await {
        Some(sample) => fragment(&live, &sample),
        None => Arc::from(
            "<section class=\"card problem\" role=\"alert\"><h2>Agent unreachable</h2>\
             <p>The agent has not answered yet; the supervisor restarts it. Retry in a few seconds.</p>\
             <p><a class=\"button primary\" href=\"/dashboard\">Retry</a></p></section>",
        ),
    };
    let chrome = state.chrome(Some(crate::handlers::nav(session, "dashboard"))).await;
    let page = DashboardPage { chrome, live: html };
    Ok(Html(page.render()?).into_response())
}

async fn events(
    State(state): State<AppState>,
    required: RequireSession,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let session = required.require(Permission::ViewDashboard)?.clone();
    let live = live::spawn(&state);
    let rx = live.subscribe();
    let deadline = tokio::time::Instant::now() + STREAM_LIFETIME;
    let stream = futures_util::stream::unfold((rx, live), move |(mut rx, live)| async move {
        loop {
            let next = tokio::time::timeout_at(deadline, rx.recv()).await.ok()?;
            match next {
                Ok(sample) => {
                    let html = fragment(&live, &sample);
                    let event = Event::default().event("sample").data(&*html);
                    return Some((Ok(event), (rx, live)));
                }
                // A slow client missed samples: send the newest next.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    let stream = crate::handlers::while_signed_in(&state, &session, stream);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc() {
        assert_eq!(clock_utc(0), "00:00:00 UTC");
        assert_eq!(clock_utc(1_764_000_000_000 + 3_723_000), "17:02:03 UTC");
    }
}
