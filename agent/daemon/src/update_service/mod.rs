//! `debvisor.update.v1.UpdateService` over the [`Rauc`] facility: the slot
//! table, installs from a URL or an upload (one at a time, followed by any
//! number of clients), and the boot marks. Mutations are allowed to admins
//! only and audited.

pub mod backend;
mod errors;
pub mod fetch;
pub mod jobs;
mod slots;

use std::path::PathBuf;

use debvisor_api::update::v1 as pb;
use debvisor_api::update::v1::update_service_server::UpdateService;
use debvisor_api::validate::SingleLineString;
use debvisor_rauc::{Completion, InstallErrorKind, InstallEvent, MarkState, RaucError, RaucStatus, SlotRef};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

pub use backend::UpdateBackend;
pub use errors::rauc_status;
use errors::{error_kind, explain};
use jobs::{Job, Jobs, ProgressStream};
pub use slots::{check_installable, slots_state};

use crate::audit_service::Auditor;
use crate::auth::Caller;

/// The update service.
#[derive(Clone)]
pub struct UpdateApi {
    backend: UpdateBackend,
    jobs: Jobs,
    audit: Auditor,
}

/// True for the callers that may change slots: root on the socket, mTLS
/// clients (their certificates come from the node CA, like the admin
/// bundle's) and the console acting for a signed-in user (the console checks
/// its ManageUpdates permission first). Other local uids may only look.
pub fn may_manage_updates(caller: &Caller) -> bool {
    match caller.actor.split_once(':') {
        Some(("uid", uid)) => uid == "0",
        Some(("console", user)) => !user.is_empty(),
        _ => !caller.actor.is_empty(),
    }
}

fn require_admin(caller: &Caller, what: &str) -> Result<(), Status> {
    if may_manage_updates(caller) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{what} is allowed only to root on the node's socket, mTLS admin clients and console users with the \
         ManageUpdates permission, not to {}",
        caller.actor
    )))
}

/// A 64-hex-digit sha256 from the wire (any case), lower-cased; empty stays
/// empty.
fn sha256_field(field: &str, raw: &str) -> Result<String, Status> {
    if raw.is_empty() || (raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Ok(raw.to_ascii_lowercase());
    }
    Err(Status::invalid_argument(format!(
        "{field}: {raw:?} is not a sha256 (64 hex digits); leave it empty to skip the check"
    )))
}

/// An http or https URL with a host, at most 2048 characters.
fn url_field(raw: &str) -> Result<String, Status> {
    let bad = |why: &str| Status::invalid_argument(format!("url: {raw:?} {why}"));
    if raw.len() > 2048 {
        return Err(bad("is longer than 2048 characters"));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("names no host"));
    }
    Ok(url.to_string())
}

/// What is installed.
enum Source {
    Url {
        url: String,
    },
    Upload {
        first: Vec<u8>,
        rest: Box<Streaming<pb::UploadChunk>>,
        size: u64,
    },
}

impl UpdateApi {
    /// An update service over `backend`, auditing into `audit`.
    pub fn new(backend: UpdateBackend, audit: Auditor) -> Self {
        Self {
            backend,
            jobs: Jobs::default(),
            audit,
        }
    }

    async fn state(&self) -> Result<pb::SlotsState, Status> {
        let st = self.backend.rauc.status().await.map_err(rauc_status)?;
        Ok(slots_state(&st, self.jobs.current(), self.backend.simulated))
    }

    /// Refuses an install while one runs, RAUC is busy or the booted slot
    /// is not confirmed good.
    async fn preflight(&self) -> Result<RaucStatus, Status> {
        self.jobs.check_idle()?;
        let st = self.backend.rauc.status().await.map_err(rauc_status)?;
        check_installable(&st)?;
        Ok(st)
    }

    /// Checks, claims the one install slot and spawns the install; audits
    /// the start as `action` on `target`, and the end as `action` +
    /// `.finished`.
    async fn start(
        &self,
        caller: Caller,
        action: &'static str,
        target: String,
        check: impl Future<Output = Result<(), Status>>,
        source: impl FnOnce() -> Source,
        expected_sha256: String,
    ) -> Result<ProgressStream, Status> {
        let started = async {
            require_admin(&caller, "Installing an update")?;
            check.await?;
            let st = self.preflight().await?;
            let job = self.jobs.start(&target, &caller.actor)?;
            Ok((job, st.compatible))
        }
        .await;
        let (job, compatible) = self.audit.record(&caller, action, &target, started).await?;
        let follow = self.jobs.follow(job.id());
        let me = self.clone();
        let source = source();
        tokio::spawn(async move {
            let end = me.run(job, source, expected_sha256, compatible).await;
            let result = if end.phase == pb::Phase::Done as i32 {
                Ok(())
            } else {
                Err(Status::aborted(end.error.clone()))
            };
            let _ = me
                .audit
                .record(&caller, &format!("{action}.finished"), &target, result)
                .await;
        });
        Ok(follow)
    }

    /// Runs one install to its end; returns the final state, published
    /// once the bundle file is deleted.
    async fn run(&self, mut job: Job, source: Source, sha256: String, compatible: String) -> pb::InstallProgress {
        let path: PathBuf = self.backend.dir.join(format!("{}.raucb", job.id()));
        let stored = match source {
            Source::Url { url } => fetch::download(&self.backend, &mut job, &url, &path).await,
            Source::Upload { first, rest, size } => fetch::receive(&mut job, &first, rest, size, &path).await,
        };
        let outcome = match stored {
            Err(f) => Err((f.kind, f.error)),
            Ok(stored) if !sha256.is_empty() && stored.sha256 != sha256 => Err((
                pb::ErrorKind::ChecksumMismatch,
                format!(
                    "The bundle's sha256 is {}, not the expected {sha256}: the file is not the one asked for",
                    stored.sha256
                ),
            )),
            Ok(stored) => self.install(&mut job, &stored.path, &compatible).await,
        };
        if let Err(e) = tokio::fs::remove_file(&path).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), "cannot delete the bundle file: {e}");
        }
        let end = match outcome {
            Ok((slot, version)) => job.finish(slot, version),
            Err((kind, error)) => job.fail(kind, error),
        };
        tracing::info!(
            job = %end.job_id,
            source = %end.source,
            phase = jobs::phase_name(end.phase),
            error = %end.error,
            "update install ended"
        );
        end
    }

    /// RAUC's part: InstallBundle on the stored file, followed to Completed;
    /// the slot written and the bundle version, or the failure.
    async fn install(
        &self,
        job: &mut Job,
        path: &std::path::Path,
        compatible: &str,
    ) -> Result<(String, String), (pb::ErrorKind, String)> {
        let info = self.verify(job, path, compatible).await?;
        job.update(|p| {
            p.phase = pb::Phase::Verifying as i32;
            p.percent = 0;
            p.message = format!("Bundle {} verified; handing it to RAUC", info.version);
        });
        let mut events = self.backend.rauc.install(path).await.map_err(|e| {
            let kind = match e {
                RaucError::Unavailable { .. } => pb::ErrorKind::RaucUnavailable,
                _ => pb::ErrorKind::InstallFailed,
            };
            (kind, crate::error_chain(&e))
        })?;
        let completion = loop {
            match events.recv().await {
                Some(InstallEvent::Progress(p)) => job.update(|s| {
                    if p.is_writing() {
                        s.phase = pb::Phase::Installing as i32;
                    }
                    s.percent = p.percent;
                    s.message = p.message;
                    s.depth = p.depth;
                }),
                Some(InstallEvent::Completed(c)) => break c,
                None => {
                    break Completion::Failed {
                        result: -1,
                        error: "RAUC's event stream ended without a result".into(),
                        kind: InstallErrorKind::RaucUnavailable,
                    };
                }
            }
        };
        match completion {
            Completion::Succeeded => match self.backend.rauc.status().await {
                Ok(st) => {
                    let version = st
                        .slots
                        .iter()
                        .find(|s| s.name == st.primary)
                        .map(|s| s.bundle_version.clone())
                        .unwrap_or_default();
                    Ok((st.primary, version))
                }
                Err(e) => {
                    tracing::warn!("install done, but RAUC's status is unreadable: {e}");
                    Ok((String::new(), String::new()))
                }
            },
            Completion::Failed { error, kind, .. } => Err((error_kind(kind), explain(kind, &error, compatible))),
        }
    }

    /// The VERIFYING phase: the whole bundle is checked (signature, signed
    /// manifest, dm-verity root hash of the payload) and its compatible
    /// compared with the node's before RAUC writes anything, since RAUC 1.8
    /// notices a corrupt verity payload only part-way through the copy.
    async fn verify(
        &self,
        job: &mut Job,
        path: &std::path::Path,
        compatible: &str,
    ) -> Result<debvisor_rauc::BundleInfo, (pb::ErrorKind, String)> {
        job.update(|p| {
            p.phase = pb::Phase::Verifying as i32;
            p.percent = 0;
            p.depth = 1;
            p.message = "Verifying the bundle's signature and content".into();
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u8>(16);
        let verifier = self.backend.verifier.clone();
        let verified = verifier.verify(path, tx);
        tokio::pin!(verified);
        let mut progress_open = true;
        let result = loop {
            tokio::select! {
                biased;
                p = rx.recv(), if progress_open => match p {
                    Some(pct) => job.update(|s| {
                        s.percent = u32::from(pct.min(100));
                        s.message = format!("Verifying the bundle's signature and content ({pct}%)");
                    }),
                    None => progress_open = false,
                },
                r = &mut verified => break r,
            }
        };
        let info = result.map_err(|e| (error_kind(e.kind), explain(e.kind, &e.message, compatible)))?;
        if info.compatible != compatible {
            let error = format!(
                "Compatible mismatch: the bundle is for '{}' (version '{}'), this node is '{compatible}'; nothing \
                 was written",
                info.compatible, info.version
            );
            return Err((
                pb::ErrorKind::WrongCompatible,
                explain(InstallErrorKind::WrongCompatible, &error, compatible),
            ));
        }
        Ok(info)
    }

    /// MarkGood, MarkBad or Rollback: admin check, RAUC call, audit.
    async fn mark(
        &self,
        caller: Caller,
        action: &'static str,
        target: &str,
        op: impl Future<Output = Result<debvisor_rauc::MarkOutcome, Status>>,
    ) -> Result<Response<pb::MarkResponse>, Status> {
        let result = async {
            require_admin(&caller, "Changing a slot's boot mark")?;
            let out = op.await?;
            let state = self.state().await.ok();
            Ok(pb::MarkResponse {
                slot: out.slot,
                message: out.message,
                state,
            })
        }
        .await;
        self.audit
            .record(&caller, action, target, result)
            .await
            .map(Response::new)
    }
}

fn slot_ref(raw: &str) -> Result<SlotRef, Status> {
    let raw = if raw.is_empty() { "booted" } else { raw };
    SlotRef::try_from(raw).map_err(|e| Status::invalid_argument(format!("slot: {e}")))
}

#[tonic::async_trait]
impl UpdateService for UpdateApi {
    type InstallStream = ProgressStream;
    type UploadStream = ProgressStream;
    type WatchInstallStream = ProgressStream;

    async fn get_slots(&self, req: Request<pb::GetSlotsRequest>) -> Result<Response<pb::SlotsState>, Status> {
        Caller::of(&req)?;
        self.state().await.map(Response::new)
    }

    async fn install(&self, req: Request<pb::InstallRequest>) -> Result<Response<ProgressStream>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.into_inner();
        let checked = url_field(&r.url).and_then(|url| Ok((url, sha256_field("sha256", &r.sha256)?)));
        let (url, sha) = match &checked {
            Ok((u, s)) => (u.clone(), s.clone()),
            Err(_) => (r.url.clone(), String::new()),
        };
        let check = async { checked.map(|_| ()) };
        let target = url.clone();
        self.start(
            caller,
            "update.install",
            target,
            check,
            move || Source::Url { url },
            sha,
        )
        .await
        .map(Response::new)
    }

    async fn upload(&self, req: Request<Streaming<pb::UploadChunk>>) -> Result<Response<ProgressStream>, Status> {
        let caller = Caller::of(&req)?;
        let mut rest = req.into_inner();
        // The header decides the audit target, so read it before auditing;
        // non-admins are refused before anything is read.
        if let Err(e) = require_admin(&caller, "Installing an update") {
            return self.audit.record(&caller, "update.upload", "upload", Err(e)).await;
        }
        let first = match rest.next().await {
            Some(Ok(c)) => c,
            Some(Err(s)) => return Err(s),
            None => return Err(Status::invalid_argument("header: the upload sent no message")),
        };
        let header = first.header.clone().unwrap_or_default();
        let name = if header.filename.is_empty() {
            "bundle".to_string()
        } else {
            header.filename.clone()
        };
        let target = format!("upload:{}", name.escape_debug());
        let sha = sha256_field("header.sha256", &header.sha256);
        let sha_check = sha.clone();
        let backend = self.backend.clone();
        let check = async move {
            if first.header.is_none() {
                return Err(Status::invalid_argument(
                    "header: the first upload message must carry the header (size_bytes, sha256, filename)",
                ));
            }
            SingleLineString::<255>::try_from(name.as_str())
                .map_err(|e| Status::invalid_argument(format!("header.filename: {e}")))?;
            sha_check?;
            if header.size_bytes == 0 {
                return Err(Status::invalid_argument(
                    "header.size_bytes: 0; give the bundle file's size",
                ));
            }
            let size = header.size_bytes;
            tokio::task::spawn_blocking(move || fetch::ensure_space(&backend, size))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|f| Status::failed_precondition(format!("{} (NOT_ENOUGH_SPACE)", f.error)))
        };
        let size = header.size_bytes;
        let data = first.data;
        let sha = sha.unwrap_or_default();
        self.start(
            caller,
            "update.upload",
            target,
            check,
            move || Source::Upload {
                first: data,
                rest: Box::new(rest),
                size,
            },
            sha,
        )
        .await
        .map(Response::new)
    }

    async fn watch_install(&self, req: Request<pb::WatchInstallRequest>) -> Result<Response<ProgressStream>, Status> {
        Caller::of(&req)?;
        let id = self.jobs.latest_id().ok_or_else(|| {
            Status::not_found("No install has run since the agent started; start one with `debvisorctl update install`")
        })?;
        Ok(Response::new(self.jobs.follow(&id)))
    }

    async fn mark_good(&self, req: Request<pb::MarkRequest>) -> Result<Response<pb::MarkResponse>, Status> {
        let caller = Caller::of(&req)?;
        let raw = req.into_inner().slot;
        let op = async {
            let slot = slot_ref(&raw)?;
            self.backend
                .rauc
                .mark(MarkState::Good, &slot)
                .await
                .map_err(rauc_status)
        };
        self.mark(caller, "update.mark-good", &raw, op).await
    }

    async fn mark_bad(&self, req: Request<pb::MarkRequest>) -> Result<Response<pb::MarkResponse>, Status> {
        let caller = Caller::of(&req)?;
        let raw = req.into_inner().slot;
        let op = async {
            let slot = slot_ref(&raw)?;
            self.backend.rauc.mark(MarkState::Bad, &slot).await.map_err(rauc_status)
        };
        self.mark(caller, "update.mark-bad", &raw, op).await
    }

    async fn rollback(&self, req: Request<pb::RollbackRequest>) -> Result<Response<pb::MarkResponse>, Status> {
        let caller = Caller::of(&req)?;
        let op = async {
            let st = self.backend.rauc.status().await.map_err(rauc_status)?;
            if st.operation != "idle" {
                return Err(Status::failed_precondition(format!(
                    "RAUC is {} into the other slot; roll back after the install has ended (`debvisorctl update \
                     watch`)",
                    st.operation
                )));
            }
            let other = st.other().ok_or_else(|| {
                Status::failed_precondition("There is no other slot to roll back to (RAUC knows no booted slot)")
            })?;
            if !other.is_good() {
                return Err(Status::failed_precondition(format!(
                    "The other slot {} ({}) is marked {:?}, not good: it failed or was never completed, so the node \
                     cannot roll back to it",
                    other.name, other.bootname, other.boot_status
                )));
            }
            let slot = SlotRef::try_from(other.name.as_str()).map_err(|e| Status::internal(e.to_string()))?;
            self.backend
                .rauc
                .mark(MarkState::Active, &slot)
                .await
                .map_err(rauc_status)
        };
        self.mark(caller, "update.rollback", "other", op).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(actor: &str) -> Caller {
        Caller {
            actor: actor.into(),
            source: "test".into(),
        }
    }

    #[test]
    fn who_may_manage_updates() {
        for ok in ["uid:0", "admin", "console:alice"] {
            assert!(may_manage_updates(&caller(ok)), "{ok}");
        }
        for no in ["uid:1000", "console:", ""] {
            assert!(!may_manage_updates(&caller(no)), "{no}");
        }
    }

    #[test]
    fn fields_are_checked() {
        assert!(url_field("https://updates.example/node/update.raucb").is_ok());
        for bad in ["ftp://x/y", "file:///tmp/a", "not a url", "http://"] {
            let e = url_field(bad).unwrap_err();
            assert!(e.message().starts_with("url: "), "{}", e.message());
        }
        assert_eq!(sha256_field("sha256", &"AB".repeat(32)).unwrap(), "ab".repeat(32));
        assert!(sha256_field("sha256", "").unwrap().is_empty());
        let e = sha256_field("header.sha256", "xyz").unwrap_err();
        assert!(e.message().contains("header.sha256"), "{}", e.message());
        assert!(slot_ref("").unwrap() == SlotRef::booted());
        assert!(slot_ref("a/b").unwrap_err().message().starts_with("slot: "));
    }
}
