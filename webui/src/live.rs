//! The dashboard's live figures: a sampler task that asks the agent for the
//! node's status, health and service counts every [`SAMPLE_INTERVAL`],
//! keeps the last [`HISTORY`] of CPU, memory, disk and network figures in
//! ring buffers, and broadcasts each new [`Sample`] to the dashboards that
//! are open (server-sent events).
//!
//! There is one sampler per console ([`spawn`] starts it, or the first
//! dashboard request does); it stops when the console's state is dropped.
//! Memory is bounded: [`HISTORY`] / interval points per series, at most
//! [`MAX_TRACKED`] disks and interfaces.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use debvisor_api::health::v1::NodeHealth;
use debvisor_api::node::v1::GetStatusResponse;
use debvisor_api::units::v1::ListUnitsRequest;
use debvisor_api::units::v1::unit_service_client::UnitServiceClient;
use tokio::sync::broadcast;

use crate::AppState;
use crate::agent::{AgentError, NodeSource, bounded, on_behalf_of};
use crate::charts::Series;

/// How often the agent is asked.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// How much history is kept.
pub const HISTORY: Duration = Duration::from_secs(3600);
/// Disks and interfaces tracked at most (the first ones the agent lists).
pub const MAX_TRACKED: usize = 16;

/// The services' figures for the dashboard.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceCounts {
    /// Loaded service units.
    pub total: usize,
    /// Active ones.
    pub active: usize,
    /// Failed ones.
    pub failed: usize,
    /// The first failed units' names.
    pub failed_names: Vec<String>,
}

/// How many failed unit names a sample keeps.
const FAILED_NAMES: usize = 5;

impl ServiceCounts {
    /// Counts the `.service` units of a ListUnits answer.
    pub fn from_units(units: &[debvisor_api::units::v1::Unit]) -> Self {
        let services = units.iter().filter(|u| u.name.ends_with(".service"));
        let mut counts = ServiceCounts::default();
        for u in services {
            counts.total += 1;
            match u.active_state.as_str() {
                "active" | "reloading" => counts.active += 1,
                "failed" => {
                    counts.failed += 1;
                    if counts.failed_names.len() < FAILED_NAMES {
                        counts.failed_names.push(u.name.clone());
                    }
                }
                _ => {}
            }
        }
        counts
    }
}

/// One round of questions to the agent. Each part carries the agent's
/// answer or a one-line reason for the page.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Counts samples from 1.
    pub seq: u64,
    /// The node's status.
    pub status: Result<GetStatusResponse, String>,
    /// The node's health.
    pub health: Result<NodeHealth, String>,
    /// The services' counts.
    pub services: Result<ServiceCounts, String>,
}

/// A series' points, oldest first, at most `cap` of them.
#[derive(Debug, Clone)]
pub struct Ring {
    cap: usize,
    points: VecDeque<(i64, f64)>,
}

impl Ring {
    /// An empty ring of `cap` points.
    pub fn new(cap: usize) -> Self {
        Ring {
            cap,
            points: VecDeque::with_capacity(cap.min(64)),
        }
    }

    /// Adds a point, dropping the oldest when full. Non-finite values are
    /// left out.
    pub fn push(&mut self, t: i64, v: f64) {
        if !v.is_finite() {
            return;
        }
        if self.points.len() == self.cap {
            self.points.pop_front();
        }
        self.points.push_back((t, v));
    }

    /// The points, oldest first.
    pub fn points(&self) -> Vec<(i64, f64)> {
        self.points.iter().copied().collect()
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// No points yet.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// A network interface's history: receive and transmit rates in bytes/s.
#[derive(Debug, Clone)]
pub struct NetHistory {
    /// Received bytes per second.
    pub rx: Ring,
    /// Sent bytes per second.
    pub tx: Ring,
}

/// The last hour of figures.
#[derive(Debug, Clone)]
pub struct History {
    cap: usize,
    /// CPU busy, percent.
    pub cpu: Ring,
    /// Memory used, percent.
    pub memory: Ring,
    /// Each disk's used percent, by name.
    pub disks: BTreeMap<String, Ring>,
    /// Each interface's rates, by name.
    pub net: BTreeMap<String, NetHistory>,
    /// The previous counters: interface -> (time, rx bytes, tx bytes).
    previous: HashMap<String, (i64, u64, u64)>,
}

impl History {
    /// An empty history of `cap` points per series.
    pub fn new(cap: usize) -> Self {
        History {
            cap,
            cpu: Ring::new(cap),
            memory: Ring::new(cap),
            disks: BTreeMap::new(),
            net: BTreeMap::new(),
            previous: HashMap::new(),
        }
    }

    /// Records a status. Rates need two samples of an interface; a counter
    /// that went backwards (reset) or no time between samples gives no point.
    pub fn record(&mut self, s: &GetStatusResponse) {
        let t = s.sampled_at_unix_ms;
        if let Some(cpu) = &s.cpu {
            self.cpu.push(t, cpu.busy_fraction * 100.0);
        }
        if let Some(m) = &s.memory {
            self.memory.push(t, crate::views::percent(m.used_bytes, m.total_bytes));
        }
        for d in &s.disks {
            if !self.disks.contains_key(&d.name) && self.disks.len() >= MAX_TRACKED {
                continue;
            }
            let cap = self.cap;
            self.disks
                .entry(d.name.clone())
                .or_insert_with(|| Ring::new(cap))
                .push(t, crate::views::percent(d.used_bytes, d.total_bytes));
        }
        for i in &s.interfaces {
            if !self.net.contains_key(&i.name) && self.net.len() >= MAX_TRACKED {
                continue;
            }
            let cap = self.cap;
            let entry = self.net.entry(i.name.clone()).or_insert_with(|| NetHistory {
                rx: Ring::new(cap),
                tx: Ring::new(cap),
            });
            if let Some((t0, rx0, tx0)) = self.previous.get(&i.name)
                && t > *t0
                && i.rx_bytes >= *rx0
                && i.tx_bytes >= *tx0
            {
                let secs = (t - t0) as f64 / 1000.0;
                entry.rx.push(t, (i.rx_bytes - rx0) as f64 / secs);
                entry.tx.push(t, (i.tx_bytes - tx0) as f64 / secs);
            }
            if self.previous.get(&i.name).is_none_or(|(t0, _, _)| t != *t0) {
                self.previous.insert(i.name.clone(), (t, i.rx_bytes, i.tx_bytes));
            }
        }
    }

    /// How far back the history reaches from `now_ms` (0 when empty).
    pub fn span_ms(&self, now_ms: i64) -> i64 {
        self.cpu
            .points
            .front()
            .or(self.memory.points.front())
            .map_or(0, |(t, _)| (now_ms - t).max(0))
    }

    /// The CPU series for a chart.
    pub fn cpu_series(&self) -> Vec<Series> {
        vec![Series {
            label: "busy".into(),
            points: self.cpu.points(),
        }]
    }

    /// The memory series for a chart.
    pub fn memory_series(&self) -> Vec<Series> {
        vec![Series {
            label: "used".into(),
            points: self.memory.points(),
        }]
    }

    /// One series per disk.
    pub fn disk_series(&self) -> Vec<Series> {
        self.disks
            .iter()
            .map(|(name, ring)| Series {
                label: name.clone(),
                points: ring.points(),
            })
            .collect()
    }

    /// Received and sent series of interface `name` (empty when unknown).
    pub fn net_series(&self, name: &str) -> Vec<Series> {
        self.net
            .get(name)
            .map(|n| {
                vec![
                    Series {
                        label: "received".into(),
                        points: n.rx.points(),
                    },
                    Series {
                        label: "sent".into(),
                        points: n.tx.points(),
                    },
                ]
            })
            .unwrap_or_default()
    }
}

/// The live state of one console: history, newest sample, subscribers.
#[derive(Debug)]
pub struct Live {
    interval: Duration,
    history: Mutex<History>,
    latest: Mutex<Option<Arc<Sample>>>,
    /// The newest rendered dashboard fragment, shared by every dashboard.
    fragment: Mutex<Option<(u64, Arc<str>)>>,
    tx: broadcast::Sender<Arc<Sample>>,
}

impl Live {
    fn new(interval: Duration) -> Self {
        let cap = (HISTORY.as_millis() / interval.as_millis().max(1)).clamp(2, 100_000) as usize;
        Live {
            interval,
            history: Mutex::new(History::new(cap)),
            latest: Mutex::new(None),
            fragment: Mutex::new(None),
            tx: broadcast::channel(4).0,
        }
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The newest sample, if one was taken.
    pub fn latest(&self) -> Option<Arc<Sample>> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The newest sample, waiting up to `wait` for the first one.
    pub async fn latest_or_wait(&self, wait: Duration) -> Option<Arc<Sample>> {
        let mut rx = self.tx.subscribe();
        if let Some(s) = self.latest() {
            return Some(s);
        }
        tokio::time::timeout(wait, rx.recv()).await.ok()?.ok()
    }

    /// A receiver of every new sample.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Sample>> {
        self.tx.subscribe()
    }

    /// Runs `f` on the history.
    pub fn with_history<T>(&self, f: impl FnOnce(&History) -> T) -> T {
        f(&self.history.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The fragment rendered for sample `seq`, rendering it with `render`
    /// only the first time it is asked for.
    pub fn fragment(&self, seq: u64, render: impl FnOnce() -> String) -> Arc<str> {
        let mut cached = self.fragment.lock().unwrap_or_else(|p| p.into_inner());
        match cached.as_ref() {
            Some((s, html)) if *s == seq => html.clone(),
            _ => {
                let html: Arc<str> = render().into();
                *cached = Some((seq, html.clone()));
                html
            }
        }
    }

    fn publish(&self, sample: Sample) {
        if let Ok(s) = &sample.status {
            self.history.lock().unwrap_or_else(|p| p.into_inner()).record(s);
        }
        let sample = Arc::new(sample);
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(sample.clone());
        // No receiver is fine: nobody is watching.
        let _ = self.tx.send(sample);
    }
}

/// The consoles' samplers, by their node source.
type Registry = Vec<(Weak<dyn NodeSource>, Arc<Live>)>;
static REGISTRY: Mutex<Registry> = Mutex::new(Vec::new());

fn same(a: &Weak<dyn NodeSource>, b: &Arc<dyn NodeSource>) -> bool {
    std::ptr::addr_eq(a.as_ptr(), Arc::as_ptr(b))
}

/// The console's live state, starting its sampler (every
/// [`SAMPLE_INTERVAL`]) if it is not running. Call it once at start-up so
/// that history begins then; pages call it too.
pub fn spawn(state: &AppState) -> Arc<Live> {
    spawn_with(state, SAMPLE_INTERVAL)
}

/// Like [`spawn`] with another interval (tests); a running sampler keeps
/// its interval.
pub fn spawn_with(state: &AppState, interval: Duration) -> Arc<Live> {
    let node = state.node();
    let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    registry.retain(|(w, _)| w.strong_count() > 0);
    if let Some((_, live)) = registry.iter().find(|(w, _)| same(w, node)) {
        return live.clone();
    }
    let live = Arc::new(Live::new(interval));
    let weak = Arc::downgrade(node);
    registry.push((weak.clone(), live.clone()));
    tokio::spawn(run(weak, live.clone()));
    live
}

/// The sampler: one round every interval until the console is gone.
async fn run(node: Weak<dyn NodeSource>, live: Arc<Live>) {
    let mut ticks = tokio::time::interval(live.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    loop {
        ticks.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        seq += 1;
        let sample = take(node.as_ref(), seq).await;
        drop(node);
        live.publish(sample);
    }
}

/// Asks the agent for everything a dashboard shows, as the console itself.
pub async fn take(node: &dyn NodeSource, seq: u64) -> Sample {
    let services = async {
        let channel = node.channel().await?;
        let request = ListUnitsRequest {
            types: vec!["service".into()],
            ..Default::default()
        };
        let units = UnitServiceClient::new(channel)
            .list_units(on_behalf_of(request, None))
            .await?
            .into_inner();
        Ok::<_, AgentError>(ServiceCounts::from_units(&units.units))
    };
    let (status, health, services) =
        tokio::join!(node.status(None), node.health(None), bounded("service list", services));
    Sample {
        seq,
        status: status.map_err(|e| e.summary()),
        health: health.map_err(|e| e.summary()),
        services: services.map_err(|e| e.summary()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use debvisor_api::node::v1::{Cpu, Disk, Memory, NetworkInterface};

    fn status(t: i64, cpu: f64, rx: u64) -> GetStatusResponse {
        GetStatusResponse {
            sampled_at_unix_ms: t,
            cpu: Some(Cpu {
                count: 1,
                busy_fraction: cpu,
                per_cpu_busy_fraction: vec![cpu],
                period_ms: 5000,
            }),
            memory: Some(Memory {
                total_bytes: 200,
                available_bytes: 150,
                used_bytes: 50,
            }),
            disks: vec![Disk {
                name: "data".into(),
                total_bytes: 10,
                used_bytes: 1,
                ..Default::default()
            }],
            interfaces: vec![NetworkInterface {
                name: "eth0".into(),
                rx_bytes: rx,
                tx_bytes: 0,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn rings_are_bounded_and_skip_non_finite_values() {
        let mut r = Ring::new(3);
        for i in 0..5 {
            r.push(i, i as f64);
        }
        r.push(9, f64::NAN);
        assert_eq!(r.points(), [(2, 2.0), (3, 3.0), (4, 4.0)]);
    }

    #[test]
    fn history_records_percentages_and_rates() {
        let mut h = History::new(10);
        h.record(&status(1_000, 0.25, 1_000));
        assert!(h.net["eth0"].rx.is_empty(), "a rate needs two samples");
        h.record(&status(1_000, 0.25, 1_000));
        assert!(h.net["eth0"].rx.is_empty(), "no time passed");
        h.record(&status(6_000, 0.5, 11_000));
        assert_eq!(h.net["eth0"].rx.points(), [(6_000, 2_000.0)]);
        h.record(&status(11_000, 0.5, 5));
        assert_eq!(h.net["eth0"].rx.len(), 1, "a counter reset gives no point");
        h.record(&status(16_000, 0.5, 5_005));
        assert_eq!(h.net["eth0"].rx.points()[1], (16_000, 1_000.0));
        assert_eq!(h.cpu.points()[0], (1_000, 25.0));
        assert_eq!(h.memory.points()[0], (1_000, 25.0));
        assert_eq!(h.disks["data"].points()[0], (1_000, 10.0));
        assert_eq!(h.net_series("eth0")[0].label, "received");
        assert_eq!(h.span_ms(21_000), 20_000);
        assert_eq!(History::new(3).span_ms(5), 0);
        assert!(h.net_series("nope").is_empty());
    }

    #[test]
    fn tracked_disks_and_interfaces_are_bounded() {
        let mut h = History::new(4);
        let mut s = status(1, 0.1, 1);
        s.interfaces = (0..40)
            .map(|i| NetworkInterface {
                name: format!("veth{i}"),
                ..Default::default()
            })
            .collect();
        h.record(&s);
        assert_eq!(h.net.len(), MAX_TRACKED);
    }

    #[test]
    fn service_counts() {
        let unit = |name: &str, state: &str| debvisor_api::units::v1::Unit {
            name: name.into(),
            active_state: state.into(),
            ..Default::default()
        };
        let c = ServiceCounts::from_units(&[
            unit("a.service", "active"),
            unit("b.service", "failed"),
            unit("c.service", "inactive"),
            unit("d.timer", "failed"),
        ]);
        assert_eq!((c.total, c.active, c.failed), (3, 1, 1));
        assert_eq!(c.failed_names, ["b.service"]);
    }
}
