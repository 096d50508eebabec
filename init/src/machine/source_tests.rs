use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::machine::fakes::RecordingHost;

const VALID: &str = "version = 1\n[node]\nhostname = \"from-url\"\n";
const BAD_VLAN: &str = "version = 1\n[[network.vlans]]\nname = \"v\"\nid = 5000\nparent = \"eth0\"\n";

struct Dirs {
    _tmp: tempfile::TempDir,
    paths: SourcePaths,
    medium: PathBuf,
    base: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let medium = base.join("medium");
    std::fs::create_dir_all(&medium).unwrap();
    let paths = SourcePaths {
        medium: Medium::Directory(medium.clone()),
        handover: base.join("data/install/machine.toml"),
        machine_config: base.join("state/machine.toml"),
        last_good: base.join("state/machine.last-good.toml"),
        fetch: FetchPolicy {
            timeout: Duration::from_millis(300),
            retries: 2,
            backoff: Duration::from_millis(10),
        },
    };
    Dirs {
        _tmp: tmp,
        paths,
        medium,
        base,
    }
}

fn hostname(l: &Loaded) -> Option<&str> {
    l.config.node.hostname.as_deref()
}

/// Serves `response` to every connection (or, when `None`, accepts and
/// never answers); counts connections.
async fn server(response: Option<&'static str>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/machine.toml", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                match response {
                    Some(r) => {
                        let _ = sock.write_all(r.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    (url, hits)
}

fn ok_response(body: &str) -> &'static str {
    let r = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Box::leak(r.into_boxed_str())
}

#[tokio::test]
async fn installer_handover_is_adopted_once() {
    let d = dirs();
    std::fs::create_dir_all(d.paths.handover.parent().unwrap()).unwrap();
    std::fs::write(&d.paths.handover, VALID).unwrap();
    // An older copy on the data partition loses to the installer's.
    std::fs::create_dir_all(d.paths.machine_config.parent().unwrap()).unwrap();
    std::fs::write(&d.paths.machine_config, "version = 1\n[node]\nhostname = \"old\"\n").unwrap();
    let l = load("", &d.paths).await;
    assert_eq!(hostname(&l), Some("from-url"));
    assert_eq!(l.source, Source::Installer(d.paths.handover.clone()));
    assert!(!d.paths.handover.exists(), "the hand-over is removed once kept");
    assert_eq!(std::fs::read_to_string(&d.paths.machine_config).unwrap(), VALID);
    // The next boot reads the kept copy.
    let l = load("", &d.paths).await;
    assert_eq!(l.source, Source::DataPartition(d.paths.machine_config.clone()));

    // An invalid hand-over is kept for inspection and reported.
    std::fs::write(&d.paths.handover, BAD_VLAN).unwrap();
    let l = load("", &d.paths).await;
    assert!(
        l.error.as_deref().unwrap().contains("installer's config"),
        "{:?}",
        l.error
    );
    assert!(d.paths.handover.exists());
}

#[test]
fn cmdline_url_is_found() {
    assert_eq!(
        cmdline_url("quiet debvisor.config=http://h/x root=/dev/sda"),
        Some("http://h/x")
    );
    assert_eq!(cmdline_url("debvisor.config=a debvisor.config=b"), Some("b"));
    assert_eq!(cmdline_url("debvisor.configx=a debvisor.config="), None);
    assert_eq!(cmdline_url(""), None);
}

#[tokio::test]
async fn command_line_wins_and_is_kept_on_the_data_partition() {
    let d = dirs();
    let url_file = d.base.join("url.toml");
    std::fs::write(&url_file, VALID).unwrap();
    std::fs::write(
        d.medium.join(MEDIUM_FILE),
        "version = 1\n[node]\nhostname = \"medium\"\n",
    )
    .unwrap();
    let cmdline = format!("ro debvisor.config=file://{}", url_file.display());
    let l = load(&cmdline, &d.paths).await;
    assert_eq!(hostname(&l), Some("from-url"));
    assert_eq!(l.source, Source::CommandLine(format!("file://{}", url_file.display())));
    assert_eq!(l.error, None);
    assert_eq!(l.digest, l.config.digest());
    assert_eq!(std::fs::read_to_string(&d.paths.machine_config).unwrap(), VALID);
}

#[tokio::test]
async fn medium_wins_over_the_data_partition() {
    let d = dirs();
    let medium_text = "version = 1\n[node]\nhostname = \"medium\"\n";
    std::fs::write(d.medium.join(MEDIUM_FILE), medium_text).unwrap();
    write_atomic(
        &d.paths.machine_config,
        b"version = 1\n[node]\nhostname = \"data\"\n",
        0o600,
    )
    .unwrap();
    let l = load("ro quiet", &d.paths).await;
    assert_eq!(
        (hostname(&l), &l.source),
        (Some("medium"), &Source::Medium(d.medium.join(MEDIUM_FILE)))
    );
    assert_eq!(std::fs::read_to_string(&d.paths.machine_config).unwrap(), medium_text);
}

#[tokio::test]
async fn data_partition_then_defaults() {
    let d = dirs();
    let l = load("", &d.paths).await;
    assert_eq!(
        (l.config.clone(), l.source.clone(), l.error.clone()),
        (MachineConfig::default(), Source::Default, None)
    );
    write_atomic(
        &d.paths.machine_config,
        b"version = 1\n[node]\nhostname = \"data\"\n",
        0o600,
    )
    .unwrap();
    let l = load("", &d.paths).await;
    assert_eq!(
        (hostname(&l), &l.source),
        (Some("data"), &Source::DataPartition(d.paths.machine_config.clone()))
    );
}

#[tokio::test]
async fn an_absent_device_medium_is_skipped() {
    let mut d = dirs();
    d.paths.medium = Medium::Device {
        device: d.base.join("no-such-device"),
        mount_dir: d.base.join("mnt"),
    };
    assert_eq!(load("", &d.paths).await.source, Source::Default);
    assert!(!d.base.join("mnt").exists());
}

#[tokio::test]
async fn invalid_config_falls_back_to_last_good_then_defaults() {
    let d = dirs();
    let bad = d.base.join("bad.toml");
    std::fs::write(&bad, BAD_VLAN).unwrap();
    let cmdline = format!("debvisor.config=file://{}", bad.display());
    let l = load(&cmdline, &d.paths).await;
    assert_eq!(l.source, Source::Default);
    assert_eq!(
        l.error.as_deref(),
        Some(
            format!(
                "machine config from debvisor.config=file://{}: network.vlans[0].id = 5000: a VLAN id is 1-4094",
                bad.display()
            )
            .as_str()
        )
    );
    assert!(!d.paths.machine_config.exists(), "an invalid config is not kept");

    write_atomic(&d.paths.last_good, b"version = 1\n[node]\nhostname = \"good\"\n", 0o600).unwrap();
    let l = load(&cmdline, &d.paths).await;
    assert_eq!(
        (hostname(&l), &l.source),
        (Some("good"), &Source::LastGood(d.paths.last_good.clone()))
    );
    assert!(l.error.is_some());

    // An invalid last good copy is not used either.
    write_atomic(&d.paths.last_good, b"version = 3\n", 0o600).unwrap();
    assert_eq!(load(&cmdline, &d.paths).await.source, Source::Default);
}

#[tokio::test]
async fn http_source_ok_404_and_timeout() {
    let d = dirs();
    let (url, hits) = server(Some(ok_response(VALID))).await;
    let l = load(&format!("debvisor.config={url}"), &d.paths).await;
    assert_eq!((hostname(&l), l.error.as_deref()), (Some("from-url"), None));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let (url, hits) = server(Some(
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ))
    .await;
    let l = load(&format!("debvisor.config={url}"), &d.paths).await;
    assert_eq!(
        l.error.as_deref(),
        Some(format!("machine config from debvisor.config={url}: HTTP 404 Not Found").as_str())
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a 404 is not retried");
    // load() alone records no last good config (load_and_apply does).
    assert_eq!(l.source, Source::Default);

    let (url, hits) = server(None).await;
    let err = fetch(&url, &d.paths.fetch).await.unwrap_err();
    assert!(
        err.starts_with("GET timed out") && err.ends_with("(after 3 attempts)"),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3, "1 attempt + 2 retries");

    let (url, hits) = server(Some("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")).await;
    let err = fetch(&url, &d.paths.fetch).await.unwrap_err();
    assert_eq!(err, "HTTP 503 Service Unavailable (after 3 attempts)");
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    assert!(
        fetch("ftp://x/y", &d.paths.fetch)
            .await
            .unwrap_err()
            .starts_with("unsupported URL scheme")
    );
}

#[tokio::test]
async fn load_and_apply_records_last_good_and_survives_a_bad_config() {
    let d = dirs();
    let root = d.base.join("root");
    let host = RecordingHost::new();
    let good = d.base.join("good.toml");
    std::fs::write(&good, VALID).unwrap();
    let out = load_and_apply(
        &format!("debvisor.config=file://{}", good.display()),
        &d.paths,
        &root,
        &host,
    )
    .await;
    assert_eq!(out.error, None);
    let digest = out.loaded.digest.clone();
    assert_eq!(out.markers, [("config-applied", digest.clone())]);
    assert!(out.report.as_ref().unwrap().changes.contains(&"hostname".to_string()));
    assert_eq!(
        MachineConfig::from_toml(&std::fs::read_to_string(&d.paths.last_good).unwrap()).unwrap(),
        out.loaded.config
    );
    assert!(host.take().contains(&"set_hostname from-url".to_string()));

    // The same config again: nothing changes.
    let out = load_and_apply("", &d.paths, &root, &host).await;
    assert_eq!(out.loaded.source, Source::DataPartition(d.paths.machine_config.clone()));
    assert!(out.report.unwrap().is_empty());

    // A bad config on the command line: the error is kept and the node stays
    // on the last good config.
    let bad = d.base.join("bad.toml");
    std::fs::write(&bad, BAD_VLAN).unwrap();
    let out = load_and_apply(
        &format!("debvisor.config=file://{}", bad.display()),
        &d.paths,
        &root,
        &host,
    )
    .await;
    assert!(
        out.error
            .unwrap()
            .ends_with("network.vlans[0].id = 5000: a VLAN id is 1-4094")
    );
    assert_eq!(hostname(&out.loaded), Some("from-url"));
    assert_eq!(
        out.markers,
        [
            (
                "config-error",
                format!(
                    "machine config from debvisor.config=file://{}: network.vlans[0].id = 5000: a VLAN id is 1-4094",
                    bad.display()
                )
            ),
            (
                "config-fallback",
                format!("{digest} last good config {}", d.paths.last_good.display())
            ),
        ]
    );
    assert!(out.report.unwrap().is_empty());
    assert!(host.take().is_empty());

    // A valid config that cannot be applied (unknown zone) falls back too.
    std::fs::write(&good, "version = 1\n[node]\ntimezone = \"Mars/Base\"\n").unwrap();
    let out = load_and_apply(
        &format!("debvisor.config=file://{}", good.display()),
        &d.paths,
        &root,
        &host,
    )
    .await;
    assert!(
        out.error
            .unwrap()
            .contains("node.timezone = \"Mars/Base\": no such zone")
    );
    assert_eq!(out.loaded.source, Source::LastGood(d.paths.last_good.clone()));
    assert!(out.report.is_some());
    assert_eq!(out.markers.len(), 2);
    assert_eq!(out.markers[1].0, "config-fallback");
    assert_eq!(
        MachineConfig::from_toml(&std::fs::read_to_string(&d.paths.last_good).unwrap()).unwrap(),
        out.loaded.config,
        "a config that failed to apply does not become the last good one"
    );
}

#[tokio::test]
async fn when_nothing_can_be_applied_the_error_is_kept() {
    let d = dirs();
    let root = d.base.join("root");
    let host = RecordingHost::new();
    host.fail_on("reload_network");
    std::fs::write(d.medium.join(MEDIUM_FILE), "version = 1\n[node]\nhostname = \"m\"\n").unwrap();
    let out = load_and_apply("", &d.paths, &root, &host).await;
    assert!(out.report.is_none());
    assert_eq!(out.loaded.source, Source::Default);
    let medium = d.medium.join(MEDIUM_FILE);
    assert_eq!(
        out.error.as_deref(),
        Some(
            format!(
                "machine config from config medium {}: Cannot reload systemd-networkd: reload_network refused by the test",
                medium.display()
            )
            .as_str()
        )
    );
    // The medium's config, then the defaults: both fail; no success marker.
    assert_eq!(out.markers.len(), 2);
    assert!(out.markers.iter().all(|(what, _)| *what == "config-error"));
    assert!(!d.paths.last_good.exists());
}

#[test]
fn markers_are_one_line() {
    assert_eq!(
        one_line("TOML parse error at line 2\n  |\n2 | x\n  | ^\nunknown field"),
        "TOML parse error at line 2 / | / 2 | x / | ^ / unknown field"
    );
}
