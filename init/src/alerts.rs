//! Alerts: what the supervisor did or gave up on. Each alert goes to the
//! journal (tracing), to [`Health`]'s recent alerts, to the audit log
//! (actor `debvisor-init`, source `supervisor`) and to every configured
//! webhook as a JSON POST with retries and exponential backoff, from a
//! bounded queue so that raising an alert never blocks the supervisor.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use debvisor_api::health::v1::{Alert, Severity};
use debvisor_audit::{AuditLog, NewEntry, Outcome};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::health::Webhook;
use crate::health::engine::{Health, now_unix_ms};

/// Alerts waiting for the audit log and the webhooks; more are dropped.
pub const QUEUE: usize = 64;

/// The agent's config, where the audit log's path is set.
pub const AGENT_CONFIG: &str = "/etc/debvisor/agent.toml";

/// The audit log's path: `[audit] path` in the agent's config at `config`,
/// or `/data/debvisor/audit.db`.
pub fn audit_path(config: &str) -> PathBuf {
    #[derive(serde::Deserialize, Default)]
    struct Agent {
        #[serde(default)]
        audit: Audit,
    }
    #[derive(serde::Deserialize, Default)]
    struct Audit {
        path: Option<PathBuf>,
    }
    let parsed: Agent = std::fs::read_to_string(config)
        .ok()
        .and_then(|t| toml::from_str(&t).ok())
        .unwrap_or_default();
    parsed
        .audit
        .path
        .unwrap_or_else(|| PathBuf::from(debvisor_api::paths::DATA_MOUNT).join("debvisor/audit.db"))
}

/// The JSON body POSTed to webhooks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WebhookBody {
    /// The node's hostname.
    pub node: String,
    /// RFC 3339 time.
    pub time: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The check (empty for boot gate alerts).
    pub check: String,
    /// `restarted`, `escalated`, `recovered`, `boot-good`, `boot-bad`, ...
    pub action: String,
    /// For people.
    pub message: String,
}

fn severity_name(s: i32) -> &'static str {
    match Severity::try_from(s) {
        Ok(Severity::Info) => "info",
        Ok(Severity::Warning) => "warning",
        _ => "critical",
    }
}

impl WebhookBody {
    /// The body for `alert` from `node`.
    pub fn new(node: &str, alert: &Alert) -> Self {
        let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(alert.time_unix_ms) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        Self {
            node: node.to_string(),
            time,
            severity: severity_name(alert.severity).to_string(),
            check: alert.check.clone(),
            action: alert.action.clone(),
            message: alert.message.clone(),
        }
    }
}

/// The audit entry of `alert`: actor `debvisor-init`, source `supervisor`,
/// target the check; action `health.restart` (`restarted`,
/// `restart-failed`), `health.escalate`, `health.recover`, `boot.good`,
/// `boot.bad`, `config.invalid`; outcome error for critical alerts and
/// failed restarts, ok otherwise.
pub fn audit_entry(alert: &Alert) -> NewEntry {
    let action = match alert.action.as_str() {
        "restarted" | "restart-failed" => "health.restart".to_string(),
        "escalated" => "health.escalate".to_string(),
        "recovered" => "health.recover".to_string(),
        "boot-good" => "boot.good".to_string(),
        "boot-bad" => "boot.bad".to_string(),
        "config-invalid" => "config.invalid".to_string(),
        other => format!("health.{}", other.replace('-', "_")),
    };
    let ok = alert.severity != Severity::Critical as i32 && !alert.action.ends_with("-failed");
    NewEntry {
        actor: "debvisor-init".to_string(),
        source: "supervisor".to_string(),
        action,
        target: alert.check.clone(),
        outcome: if ok {
            Outcome::Ok
        } else {
            Outcome::Error(alert.message.clone())
        },
    }
}

/// An HTTP client whose TLS trusts the system's CA bundle (rustls with ring).
pub fn http_client() -> reqwest::Client {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(certs) = CertificateDer::pem_file_iter("/etc/ssl/certs/ca-certificates.crt") {
        roots.add_parsable_certificates(certs.flatten());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let builder = reqwest::Client::builder();
    let builder = match tls {
        Ok(tls) => builder.tls_backend_preconfigured(tls),
        Err(_) => builder,
    };
    builder.build().unwrap_or_default()
}

/// POSTs `body` to `hook`, retrying `hook.retries` times after a failure
/// (a connection error, a timeout or a non-2xx status) with a backoff of
/// `backoff`, doubling each time (at most 60 s). Returns the attempts made,
/// or the last error.
pub async fn post(
    client: &reqwest::Client,
    hook: &Webhook,
    body: &WebhookBody,
    backoff: Duration,
) -> Result<u32, String> {
    let timeout = Duration::from_secs(u64::from(hook.timeout_seconds.max(1)));
    let mut wait = backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent = client.post(&hook.url).timeout(timeout).json(body).send().await;
        let error = match sent {
            Ok(r) if r.status().is_success() => return Ok(attempt),
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("{e}"),
        };
        if attempt > hook.retries {
            return Err(format!(
                "webhook {} {error} (gave up after {attempt} attempts)",
                hook.url
            ));
        }
        tracing::debug!(url = %hook.url, attempt, "webhook {error}; retrying in {wait:?}");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(60));
    }
}

/// Raises alerts. Cloning shares the queue.
#[derive(Clone, Debug)]
pub struct Alerts {
    health: Option<Arc<Health>>,
    queue: mpsc::Sender<Alert>,
}

impl Alerts {
    /// Starts the worker that writes alerts to the audit log at `audit`
    /// (opened at the first alert, again after a failure) and POSTs them to
    /// `webhooks` as coming from `node`, waiting `backoff` before the first
    /// retry. Alerts also go to `health`'s recent alerts.
    pub fn spawn(
        node: String,
        webhooks: Vec<Webhook>,
        audit: Option<PathBuf>,
        health: Option<Arc<Health>>,
        backoff: Duration,
    ) -> Self {
        let (queue, mut rx) = mpsc::channel::<Alert>(QUEUE);
        tokio::spawn(async move {
            let client = http_client();
            let mut log: Option<AuditLog> = None;
            while let Some(alert) = rx.recv().await {
                if let Some(path) = &audit {
                    if log.is_none() {
                        match AuditLog::open(path).await {
                            Ok(l) => log = Some(l),
                            Err(e) => tracing::warn!("Cannot open the audit log {}: {e}", path.display()),
                        }
                    }
                    if let Some(l) = &log
                        && let Err(e) = l.append(audit_entry(&alert)).await
                    {
                        tracing::warn!("Cannot append alert {} to the audit log: {e}", alert.action);
                        log = None;
                    }
                }
                let body = WebhookBody::new(&node, &alert);
                for hook in &webhooks {
                    let (client, hook, body) = (client.clone(), hook.clone(), body.clone());
                    tokio::spawn(async move {
                        if let Err(e) = post(&client, &hook, &body, backoff).await {
                            tracing::warn!("Alert {} not delivered: {e}", body.action);
                        }
                    });
                }
            }
        });
        Self { health, queue }
    }

    /// Raises an alert: logs it, adds it to the node's recent alerts and
    /// queues it for the audit log and the webhooks (dropped, with a log
    /// line, when the queue is full).
    pub fn raise(&self, severity: Severity, check: &str, action: &str, message: &str) {
        let alert = Alert {
            time_unix_ms: now_unix_ms(),
            severity: severity as i32,
            check: check.to_string(),
            action: action.to_string(),
            message: message.to_string(),
        };
        match severity {
            Severity::Critical => tracing::error!(check, action, "Alert {action} {check}: {message}"),
            _ => tracing::warn!(check, action, "Alert {action} {check}: {message}"),
        }
        if let Some(h) = &self.health {
            h.push_alert(alert.clone());
        }
        if self.queue.try_send(alert).is_err() {
            tracing::error!(
                check,
                action,
                "Alert queue full; alert not sent to the audit log and webhooks"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An HTTP server on loopback answering each request with the next
    /// status of `statuses` (200 when none is left); returns its URL and the
    /// bodies received.
    async fn server(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let got = bodies.clone();
        tokio::spawn(async move {
            let mut statuses = statuses.into_iter();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then Content-Length bytes of body.
                let body = loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break text[end + 4..end + 4 + len].to_string();
                        }
                    }
                    if n == 0 {
                        break String::new();
                    }
                };
                got.lock().unwrap().push(body);
                let status = statuses.next().unwrap_or(200);
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        (url, bodies)
    }

    fn alert() -> WebhookBody {
        let a = Alert {
            time_unix_ms: 1_700_000_000_000,
            severity: Severity::Critical as i32,
            check: "service/debvisor-agent".into(),
            action: "escalated".into(),
            message: "gave up".into(),
        };
        WebhookBody::new("node1", &a)
    }

    #[tokio::test]
    async fn retries_after_a_500() {
        let (url, bodies) = server(vec![500, 200]).await;
        let hook = Webhook::new(url);
        let attempts = post(&http_client(), &hook, &alert(), Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(attempts, 2);
        let bodies = bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 2);
        let json: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
        assert_eq!(json["node"], "node1");
        assert_eq!(json["severity"], "critical");
        assert_eq!(json["check"], "service/debvisor-agent");
        assert_eq!(json["action"], "escalated");
        assert_eq!(json["message"], "gave up");
        assert_eq!(json["time"], "2023-11-14T22:13:20Z");
    }

    #[tokio::test]
    async fn gives_up_on_a_dead_endpoint() {
        // Bind then drop: nothing listens on the port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hook = Webhook {
            url: format!("http://127.0.0.1:{port}/hook"),
            retries: 3,
            timeout_seconds: 1,
        };
        let err = post(&http_client(), &hook, &alert(), Duration::from_millis(5))
            .await
            .unwrap_err();
        assert!(err.contains("gave up after 4 attempts"), "{err}");
    }

    #[tokio::test]
    async fn alerts_reach_the_audit_log_and_webhooks() {
        let (url, bodies) = server(vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let alerts = Alerts::spawn(
            "node1".into(),
            vec![Webhook::new(url)],
            Some(db.clone()),
            None,
            Duration::from_millis(10),
        );
        alerts.raise(
            Severity::Info,
            "service/debvisor-agent",
            "restarted",
            "restarted debvisor-agent.service",
        );
        for _ in 0..200 {
            if !bodies.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(bodies.lock().unwrap().len(), 1);
        let log = AuditLog::open(&db).await.unwrap();
        let page = log.query(&debvisor_audit::Query::default()).await.unwrap();
        let r = &page.records[0];
        assert_eq!((r.actor.as_str(), r.source.as_str()), ("debvisor-init", "supervisor"));
        assert_eq!(
            (r.action.as_str(), r.target.as_str()),
            ("health.restart", "service/debvisor-agent")
        );
    }

    #[test]
    fn audit_path_from_the_agent_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("agent.toml");
        assert_eq!(
            audit_path(cfg.to_str().unwrap()),
            PathBuf::from("/data/debvisor/audit.db")
        );
        std::fs::write(&cfg, "[audit]\npath = \"/tmp/a.db\"\n").unwrap();
        assert_eq!(audit_path(cfg.to_str().unwrap()), PathBuf::from("/tmp/a.db"));
    }
}
