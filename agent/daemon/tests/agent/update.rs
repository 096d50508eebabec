//! `debvisor.update.v1` through the agent's gRPC server on its Unix socket,
//! with a fake RAUC and a real audit log: installs from a local HTTP server
//! and from uploads, progress streams, one install at a time, followers,
//! refusals, classified errors, marks and rollback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use debvisor_agent::config::AgentConfig;
use debvisor_agent::server::{self, ServeConfig};
use debvisor_agent::update_service::UpdateBackend;
use debvisor_api::update::v1::update_service_client::UpdateServiceClient;
use debvisor_api::update::v1::{
    ErrorKind, GetSlotsRequest, InstallProgress, InstallRequest, MarkRequest, Phase, RollbackRequest, UploadChunk,
    UploadHeader, WatchInstallRequest,
};
use debvisor_audit::{AuditLog, Query};
use debvisor_rauc::InstallErrorKind;
use debvisor_rauc::fakes::{FakeRauc, FakeVerifier};
use debvisor_telemetry::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const LIMIT: Duration = Duration::from_secs(20);
const COMPATIBLE: &str = "debvisor-node-x86_64";

/// A bundle the fake RAUC accepts (squashfs magic, manifest lines).
fn fake_bundle(compatible: &str, version: &str, pad: usize) -> Vec<u8> {
    let mut b = format!("hsqs\0[update]\ncompatible={compatible}\nversion={version}\n").into_bytes();
    b.extend(std::iter::repeat_n(0x42u8, pad));
    b
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

struct Agent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    updates: PathBuf,
    rauc: FakeRauc,
    verifier: FakeVerifier,
    audit: AuditLog,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Agent {
    async fn start(step: Duration) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let serve = ServeConfig {
            socket: dir.path().join("agent.sock"),
            tls: None,
            metrics: None,
        };
        let bound = server::bind(&serve).await.unwrap();
        let audit = AuditLog::open_in_memory().await.unwrap();
        let backends = crate::sim_backends("update-test", audit.clone(), None);
        let rauc = FakeRauc::new(COMPATIBLE).with_step(step);
        let updates = dir.path().join("updates");
        let verifier = FakeVerifier::default().with_step(step * 10);
        let update = UpdateBackend::with_rauc(Arc::new(rauc.clone()), updates.clone(), true)
            .with_verifier(Arc::new(verifier.clone()));
        let config = server::default_config_origin(backends.host.as_ref());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::serve_with_update(
            bound,
            backends,
            config,
            update,
            AgentConfig::default(),
            Metrics::new(),
            async {
                let _ = stopped.await;
            },
        ));
        Agent {
            socket: serve.socket,
            updates,
            rauc,
            verifier,
            audit,
            stop: Some(stop),
            _dir: dir,
        }
    }

    async fn client(&self) -> UpdateServiceClient<Channel> {
        UpdateServiceClient::new(debvisor_api::client::connect_unix(&self.socket).await.unwrap())
    }

    async fn actions(&self) -> Vec<(String, String, bool, String)> {
        let page = self
            .audit
            .query(&Query {
                action: Some("update.*".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        page.records
            .into_iter()
            .rev()
            .map(|r| (r.action, r.target, r.ok, r.error))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn collect(mut s: Streaming<InstallProgress>) -> Vec<InstallProgress> {
    let mut all = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, s.message())
            .await
            .expect("progress within the limit")
        {
            Ok(Some(p)) => all.push(p),
            Ok(None) => return all,
            Err(e) => panic!("stream error {e:?} after {all:?}"),
        }
    }
}

fn last(all: &[InstallProgress]) -> &InstallProgress {
    all.last().expect("at least one progress message")
}

/// A one-shot HTTP/1.1 server: `/bundle.raucb` is `body`, anything else 404.
async fn http_server(body: Vec<u8>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let (status, body) = if line.starts_with("GET /bundle.raucb ") {
                    ("200 OK", body)
                } else {
                    ("404 Not Found", b"no such bundle".to_vec())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}")
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn slots_and_install_from_url() {
    let agent = Agent::start(Duration::from_millis(5)).await;
    let mut c = agent.client().await;

    let st = c.get_slots(GetSlotsRequest {}).await.unwrap().into_inner();
    assert_eq!(st.compatible, COMPATIBLE);
    assert_eq!(
        (st.booted_slot.as_str(), st.booted_bootname.as_str()),
        ("rootfs.0", "A")
    );
    assert_eq!(st.primary_slot, "rootfs.0");
    assert!(st.booted_good && st.simulated);
    assert_eq!(st.slots.len(), 2);
    assert!(st.slots[0].booted && st.slots[0].primary);
    assert_eq!(st.slots[1].boot_status, "bad");
    assert!(st.install.is_none());

    let bundle = fake_bundle(COMPATIBLE, "0.2.0", 300_000);
    let base = http_server(bundle.clone()).await;
    let url = format!("{base}/bundle.raucb");
    let all = collect(
        c.install(InstallRequest {
            url: url.clone(),
            sha256: sha256(&bundle).to_uppercase(),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    let phases: Vec<i32> = all.iter().map(|p| p.phase).collect();
    for want in [Phase::Downloading, Phase::Verifying, Phase::Installing, Phase::Done] {
        assert!(phases.contains(&(want as i32)), "{want:?} missing in {all:?}");
    }
    let end = last(&all);
    assert_eq!(end.phase, Phase::Done as i32, "{end:?}");
    assert_eq!(
        (end.target_slot.as_str(), end.bundle_version.as_str()),
        ("rootfs.1", "0.2.0")
    );
    assert_eq!(end.http_status, 200);
    assert_eq!(
        (end.bytes_done, end.bytes_total),
        (bundle.len() as u64, bundle.len() as u64)
    );
    assert_eq!(end.started_by, "uid:0");
    assert_eq!(end.source, url);
    assert!(
        all.iter()
            .any(|p| p.message == "Copying image to rootfs.1" && p.depth == 3)
    );
    assert!(
        files_in(&agent.updates).is_empty(),
        "bundle deleted: {:?}",
        files_in(&agent.updates)
    );

    let st = c.get_slots(GetSlotsRequest {}).await.unwrap().into_inner();
    assert_eq!(st.primary_slot, "rootfs.1");
    assert_eq!(st.slots[1].bundle_version, "0.2.0");
    assert!(st.slots[1].primary && st.slots[1].boot_status == "good");
    assert_eq!(st.install.unwrap().job_id, end.job_id);

    // A missing URL: the HTTP status is named.
    let all = collect(
        c.install(InstallRequest {
            url: format!("{base}/nothing.raucb"),
            sha256: String::new(),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    let end = last(&all);
    assert_eq!(end.error_kind, ErrorKind::DownloadFailed as i32, "{end:?}");
    assert_eq!(end.http_status, 404);
    assert!(end.error.contains("HTTP 404 Not Found"), "{}", end.error);

    // A checksum that does not match.
    let all = collect(
        c.install(InstallRequest {
            url: url.clone(),
            sha256: "0".repeat(64),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    assert_eq!(last(&all).error_kind, ErrorKind::ChecksumMismatch as i32, "{all:?}");
    assert!(files_in(&agent.updates).is_empty());

    // Bad arguments are refused before anything starts.
    let e = refused(&mut c, "ftp://example.org/b.raucb").await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("url: "), "{}", e.message());

    let actions = agent.actions().await;
    let names: Vec<&str> = actions.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "update.install",
            "update.install.finished",
            "update.install",
            "update.install.finished",
            "update.install",
            "update.install.finished",
            "update.install"
        ]
    );
    assert!(actions[1].2 && !actions[3].2 && !actions[6].2);
    assert_eq!(actions[0].1, url);
    assert!(actions[3].3.contains("HTTP 404"), "{:?}", actions[3]);
}

/// An install of `url` that must be refused before it starts.
async fn refused(c: &mut UpdateServiceClient<Channel>, url: &str) -> tonic::Status {
    c.install(InstallRequest {
        url: url.to_string(),
        sha256: String::new(),
    })
    .await
    .unwrap_err()
}

/// A second install while `job` (of `url`) runs is refused, naming it.
async fn second_install_refused(c: &mut UpdateServiceClient<Channel>, url: &str, job: &str) {
    let e = refused(c, url).await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains(&format!("Install {job} of {url}")),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn one_install_at_a_time_and_watchers() {
    let agent = Agent::start(Duration::from_millis(60)).await;
    let mut c = agent.client().await;
    let e = c.watch_install(WatchInstallRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let bundle = fake_bundle(COMPATIBLE, "0.3.0", 10);
    let url = format!("{}/bundle.raucb", http_server(bundle).await);
    let mut first = c
        .install(InstallRequest {
            url: url.clone(),
            sha256: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let p = first.message().await.unwrap().unwrap();
    let job = p.job_id.clone();

    second_install_refused(&mut c, &url, &job).await;

    // While RAUC itself is busy with this agent's install, the refusal
    // still names that install (not "an operation this agent did not start").
    loop {
        let p = first
            .message()
            .await
            .unwrap()
            .expect("the install ended before RAUC ran");
        if p.phase == Phase::Installing as i32 {
            break;
        }
    }
    second_install_refused(&mut c, &url, &job).await;

    // The slot table still answers while RAUC installs (RAUC itself
    // answers no GetSlotStatus then): the one from before, saying so.
    let s = c.get_slots(GetSlotsRequest {}).await.unwrap().into_inner();
    assert_eq!(s.operation, "installing");
    assert!(s.slots_note.contains("while it is installing"), "{s:?}");
    assert_eq!(s.slots.len(), 2);
    assert_eq!(s.install.as_ref().map(|p| p.job_id.as_str()), Some(job.as_str()));

    // A second client follows the running install to its end; the first
    // client goes away without stopping it.
    let mut other = agent.client().await;
    let watched = collect(other.watch_install(WatchInstallRequest {}).await.unwrap().into_inner()).await;
    drop(first);
    assert!(watched.iter().all(|p| p.job_id == job));
    let end = last(&watched);
    assert_eq!(end.phase, Phase::Done as i32, "{end:?}");
    // Later watchers get the final state at once.
    let again = collect(other.watch_install(WatchInstallRequest {}).await.unwrap().into_inner()).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].phase, Phase::Done as i32);
}

#[tokio::test]
async fn uploads_and_classified_errors() {
    let agent = Agent::start(Duration::from_millis(2)).await;
    let mut c = agent.client().await;
    let upload = |data: Vec<u8>, size: u64, sha: String| {
        let mut chunks: Vec<UploadChunk> = data
            .chunks(64 * 1024)
            .map(|d| UploadChunk {
                header: None,
                data: d.to_vec(),
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(UploadChunk::default());
        }
        chunks[0].header = Some(UploadHeader {
            size_bytes: size,
            sha256: sha,
            filename: "update.raucb".into(),
        });
        tokio_stream::iter(chunks)
    };

    let good = fake_bundle(COMPATIBLE, "0.4.0", 200_000);
    let all = collect(
        c.upload(upload(good.clone(), good.len() as u64, sha256(&good)))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let end = last(&all);
    assert_eq!(end.phase, Phase::Done as i32, "{end:?}");
    assert_eq!(end.source, "upload:update.raucb");
    assert_eq!(end.bundle_version, "0.4.0");

    let wrong = fake_bundle("some-other-board", "9", 10);
    let all = collect(
        c.upload(upload(wrong.clone(), wrong.len() as u64, String::new()))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let end = last(&all);
    assert_eq!(end.error_kind, ErrorKind::WrongCompatible as i32, "{end:?}");
    assert!(
        end.error.contains("this node is 'debvisor-node-x86_64'"),
        "{}",
        end.error
    );
    assert!(end.error.contains("some-other-board"), "{}", end.error);

    agent
        .rauc
        .fail_next_install("signature verification failed: error:02000068:rsa routines::bad signature");
    let all = collect(
        c.upload(upload(good.clone(), good.len() as u64, String::new()))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let end = last(&all);
    assert_eq!(end.error_kind, ErrorKind::BadSignature as i32, "{end:?}");
    assert!(end.error.contains("bad signature"), "{}", end.error);
    assert!(
        all.iter().all(|p| p.phase != Phase::Installing as i32),
        "never written: {all:?}"
    );

    let junk = b"not a bundle at all".to_vec();
    let all = collect(
        c.upload(upload(junk.clone(), junk.len() as u64, String::new()))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(last(&all).error_kind, ErrorKind::InvalidBundle as i32, "{all:?}");

    // Fewer bytes than announced.
    let all = collect(
        c.upload(upload(good[..1000].to_vec(), 5000, String::new()))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let end = last(&all);
    assert_eq!(end.error_kind, ErrorKind::UploadFailed as i32, "{end:?}");
    assert!(
        end.error.contains("1000 bytes; its header announced 5000"),
        "{}",
        end.error
    );

    // Wrong checksum.
    let all = collect(
        c.upload(upload(good.clone(), good.len() as u64, "f".repeat(64)))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(last(&all).error_kind, ErrorKind::ChecksumMismatch as i32);

    // More than fits: refused before anything is stored.
    let e = c
        .upload(upload(vec![1, 2, 3], 1 << 40, String::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("NOT_ENOUGH_SPACE"), "{}", e.message());

    let e = c
        .upload(tokio_stream::iter(vec![UploadChunk {
            header: None,
            data: vec![1],
        }]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("header: "), "{}", e.message());
    assert!(files_in(&agent.updates).is_empty(), "{:?}", files_in(&agent.updates));
}

#[tokio::test]
async fn marks_rollback_and_the_good_slot_rule() {
    let agent = Agent::start(Duration::from_millis(1)).await;
    let mut c = agent.client().await;

    // Nothing to roll back to: the other slot is bad.
    let e = c.rollback(RollbackRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("rootfs.1 (B) is marked \"bad\""),
        "{}",
        e.message()
    );

    // The booted slot on trial (GRUB tried it, the boot gate has not
    // confirmed it): RAUC calls it bad, the agent says on trial, and
    // installs are refused.
    agent.rauc.set_booted_trying(true);
    let e = refused(&mut c, "http://127.0.0.1:9/b.raucb").await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("rootfs.0 (A) is on trial"), "{}", e.message());
    let s = c.get_slots(GetSlotsRequest {}).await.unwrap().into_inner();
    assert!(!s.booted_good, "{s:?}");
    assert!(
        s.slots
            .iter()
            .any(|x| x.name == "rootfs.0" && x.trying && x.boot_status == "bad")
    );

    // The booted slot not yet good: installs are refused.
    agent.rauc.set_booted_trying(false);
    agent.rauc.set_booted_status("bad");
    let e = refused(&mut c, "http://127.0.0.1:9/b.raucb").await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("rootfs.0 (A) is not marked good"),
        "{}",
        e.message()
    );
    assert!(e.message().contains("debvisorctl update mark-good"), "{}", e.message());

    let r = c
        .mark_good(MarkRequest { slot: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.slot.as_str(), r.message.as_str()),
        ("rootfs.0", "marked slot rootfs.0 as good")
    );
    assert!(r.state.unwrap().booted_good);

    let r = c
        .mark_good(MarkRequest { slot: "other".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.slot, "rootfs.1");
    let r = c.rollback(RollbackRequest {}).await.unwrap().into_inner();
    assert_eq!(r.message, "activated slot rootfs.1");
    assert_eq!(r.state.unwrap().primary_slot, "rootfs.1");
    let r = c
        .mark_bad(MarkRequest {
            slot: "rootfs.1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.message, "marked slot rootfs.1 as bad");

    let e = c
        .mark_bad(MarkRequest {
            slot: "rootfs.9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c.mark_good(MarkRequest { slot: "../x".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    agent.rauc.set_unreachable(true);
    let e = c.get_slots(GetSlotsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("rauc.service"), "{}", e.message());

    let actions = agent.actions().await;
    let summary: Vec<(&str, &str, bool)> = actions.iter().map(|a| (a.0.as_str(), a.1.as_str(), a.2)).collect();
    assert_eq!(
        summary,
        [
            ("update.rollback", "other", false),
            ("update.install", "http://127.0.0.1:9/b.raucb", false),
            ("update.install", "http://127.0.0.1:9/b.raucb", false),
            ("update.mark-good", "", true),
            ("update.mark-good", "other", true),
            ("update.rollback", "other", true),
            ("update.mark-bad", "rootfs.1", true),
            ("update.mark-bad", "rootfs.9", false),
            ("update.mark-good", "../x", false),
        ]
    );
}

/// Installs from `url` (no checksum) and collects the progress.
async fn install_url(c: &mut UpdateServiceClient<Channel>, url: impl Into<String>) -> Vec<InstallProgress> {
    let req = InstallRequest {
        url: url.into(),
        sha256: String::new(),
    };
    collect(c.install(req).await.unwrap().into_inner()).await
}

/// The whole bundle is verified (VERIFYING with percentages) before RAUC is
/// called: a corrupt payload or a foreign compatible ends the install there,
/// RAUC never runs and no slot changes.
#[tokio::test]
async fn bundles_are_verified_before_rauc_writes() {
    let agent = Agent::start(Duration::from_millis(2)).await;
    let mut c = agent.client().await;
    let before = c.get_slots(GetSlotsRequest::default()).await.unwrap().into_inner();
    let good = fake_bundle(COMPATIBLE, "0.5.0", 1000);
    let url = format!("{}/bundle.raucb", http_server(good.clone()).await);

    agent.verifier.fail_next(
        InstallErrorKind::BadSignature,
        "The bundle's content does not match its signature (corrupt or tampered download): verity root 00 != 11",
    );
    let all = install_url(&mut c, url.clone()).await;
    let end = last(&all);
    assert_eq!(end.phase, Phase::Failed as i32, "{end:?}");
    assert_eq!(end.error_kind, ErrorKind::BadSignature as i32, "{end:?}");
    assert!(end.error.contains("does not match its signature"), "{}", end.error);
    assert!(
        all.iter()
            .any(|p| p.phase == Phase::Verifying as i32 && p.percent == 50 && p.message.contains("50%")),
        "VERIFYING reports percentages: {all:?}"
    );
    assert!(
        !all.iter().any(|p| p.phase == Phase::Installing as i32),
        "RAUC never started writing: {all:?}"
    );
    let after = c.get_slots(GetSlotsRequest::default()).await.unwrap().into_inner();
    assert_eq!(after.slots, before.slots, "no slot changed");
    assert_eq!(after.primary_slot, before.primary_slot);
    assert_eq!(after.last_error, "", "RAUC was not asked: {after:?}");

    // Another node's bundle is refused by the verification step too.
    let wrong = fake_bundle("another-board", "7", 10);
    let url_wrong = format!("{}/bundle.raucb", http_server(wrong).await);
    let all = install_url(&mut c, url_wrong).await;
    let end = last(&all);
    assert_eq!(end.error_kind, ErrorKind::WrongCompatible as i32, "{end:?}");
    assert!(end.error.contains("nothing was written"), "{}", end.error);
    assert!(end.error.contains("another-board"), "{}", end.error);
    let after = c.get_slots(GetSlotsRequest::default()).await.unwrap().into_inner();
    assert_eq!(after.slots, before.slots, "no slot changed");
    assert_eq!(agent.verifier.calls(), 2);

    // A bundle that verifies goes on to RAUC and is installed.
    let all = install_url(&mut c, url).await;
    let end = last(&all);
    assert_eq!(end.phase, Phase::Done as i32, "{end:?}");
    assert_eq!(end.bundle_version, "0.5.0");
    let verified = all
        .iter()
        .position(|p| p.message.contains("Bundle 0.5.0 verified"))
        .expect("verified step");
    let writing = all
        .iter()
        .position(|p| p.phase == Phase::Installing as i32)
        .expect("installing step");
    assert!(verified < writing, "verification comes before RAUC writes");
}
