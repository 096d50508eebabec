//! The install in progress: one at a time, its state published to every
//! client that follows it, the final states of recent installs kept so that
//! a slow follower still sees how its install ended.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use debvisor_api::update::v1::{ErrorKind, InstallProgress, Phase};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::Status;

pub use debvisor_api::update::phase_word as phase_name;

/// How many finished installs are remembered.
const HISTORY: usize = 8;

/// A stream of install progress for a gRPC answer.
pub type ProgressStream = Pin<Box<dyn Stream<Item = Result<InstallProgress, Status>> + Send>>;

/// True for DONE and FAILED.
pub fn is_final(p: &InstallProgress) -> bool {
    matches!(Phase::try_from(p.phase), Ok(Phase::Done | Phase::Failed))
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    running: Option<String>,
    finished: VecDeque<InstallProgress>,
}

/// The installs of this agent.
#[derive(Clone)]
pub struct Jobs {
    registry: Arc<Mutex<Registry>>,
    state: watch::Sender<Option<InstallProgress>>,
}

impl Default for Jobs {
    fn default() -> Self {
        Self {
            registry: Arc::default(),
            state: watch::Sender::new(None),
        }
    }
}

impl Jobs {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running install, or the last one; `None` when there was none.
    pub fn current(&self) -> Option<InstallProgress> {
        self.state.borrow().clone()
    }

    /// Refuses with FAILED_PRECONDITION naming the install that runs, if
    /// one does.
    pub fn check_idle(&self) -> Result<(), Status> {
        if self.lock().running.is_some() {
            return Err(self.busy_error());
        }
        Ok(())
    }

    fn busy_error(&self) -> Status {
        let cur = self.current().unwrap_or_default();
        Status::failed_precondition(format!(
            "Install {} of {} (started by {}) is still running ({}, {}%); one install runs at a time: follow it \
             with `debvisorctl update watch` and try again when it has ended",
            cur.job_id,
            cur.source,
            cur.started_by,
            phase_name(cur.phase),
            cur.percent
        ))
    }

    /// Starts an install of `source` for `started_by`, or refuses with
    /// FAILED_PRECONDITION naming the one that runs.
    pub fn start(&self, source: &str, started_by: &str) -> Result<Job, Status> {
        let mut reg = self.lock();
        if reg.running.is_some() {
            return Err(self.busy_error());
        }
        reg.next_id += 1;
        let id = format!("install-{}", reg.next_id);
        reg.running = Some(id.clone());
        let first = InstallProgress {
            job_id: id,
            source: source.to_string(),
            started_by: started_by.to_string(),
            started_unix_ms: now_unix_ms(),
            phase: Phase::Downloading as i32,
            message: format!("Fetching {source}"),
            ..Default::default()
        };
        self.state.send_replace(Some(first.clone()));
        Ok(Job {
            jobs: self.clone(),
            progress: first,
            finished: false,
        })
    }

    /// Follows install `job_id` from its current state to its end.
    pub fn follow(&self, job_id: &str) -> ProgressStream {
        let rx = self.state.subscribe();
        let jobs = self.clone();
        let id = job_id.to_string();
        Box::pin(futures_util::stream::unfold(
            (rx, false, true),
            move |(mut rx, done, first)| {
                let jobs = jobs.clone();
                let id = id.clone();
                async move {
                    if done {
                        return None;
                    }
                    if !first && rx.changed().await.is_err() {
                        return None;
                    }
                    let now = rx.borrow_and_update().clone()?;
                    // The state moved on to a newer install before this
                    // follower looked: answer with how this one ended.
                    let p = if now.job_id == id { now } else { jobs.finished(&id)? };
                    let end = is_final(&p);
                    Some((Ok(p), (rx, end, false)))
                }
            },
        ))
    }

    /// The final state of the finished install `job_id`, if remembered.
    fn finished(&self, job_id: &str) -> Option<InstallProgress> {
        self.lock().finished.iter().find(|p| p.job_id == job_id).cloned()
    }

    /// The running install's id, or the last one's.
    pub fn latest_id(&self) -> Option<String> {
        self.current().map(|p| p.job_id)
    }
}

/// The running install; publishes its progress. Dropping it before
/// [`finish`](Job::finish) or [`fail`](Job::fail) marks it failed, so that a
/// panicking or cancelled install never blocks the next one.
pub struct Job {
    jobs: Jobs,
    progress: InstallProgress,
    finished: bool,
}

impl Job {
    /// This install's id.
    pub fn id(&self) -> &str {
        &self.progress.job_id
    }

    /// The state as last published.
    pub fn progress(&self) -> &InstallProgress {
        &self.progress
    }

    /// Changes the state with `f` and publishes it.
    pub fn update(&mut self, f: impl FnOnce(&mut InstallProgress)) {
        f(&mut self.progress);
        self.jobs.state.send_replace(Some(self.progress.clone()));
    }

    /// Ends the install as DONE.
    pub fn finish(mut self, target_slot: String, bundle_version: String) -> InstallProgress {
        self.end(|p| {
            p.phase = Phase::Done as i32;
            p.percent = 100;
            p.depth = 0;
            p.message = format!("Installed into {target_slot}; it boots at the next reboot");
            p.target_slot = target_slot;
            p.bundle_version = bundle_version;
        })
    }

    /// Ends the install as FAILED with `error` of `kind`.
    pub fn fail(mut self, kind: ErrorKind, error: String) -> InstallProgress {
        self.end(failed(kind, error))
    }

    /// Sets the final state with `f`, then frees the install slot and
    /// publishes under one lock: a client that sees the end and starts the
    /// next install at once is never told that this one still runs, and a
    /// next install that starts meanwhile is never overwritten by this end.
    fn end(&mut self, f: impl FnOnce(&mut InstallProgress)) -> InstallProgress {
        f(&mut self.progress);
        self.finished = true;
        let mut reg = self.jobs.lock();
        reg.running = None;
        if reg.finished.len() == HISTORY {
            reg.finished.pop_front();
        }
        reg.finished.push_back(self.progress.clone());
        self.jobs.state.send_replace(Some(self.progress.clone()));
        self.progress.clone()
    }
}

/// The final state of a failed install.
fn failed(kind: ErrorKind, error: String) -> impl FnOnce(&mut InstallProgress) {
    move |p| {
        p.phase = Phase::Failed as i32;
        p.depth = 0;
        p.message = "Install failed; the booted slot is unchanged".into();
        p.error = error;
        p.error_kind = kind as i32;
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if !self.finished {
            self.end(failed(
                ErrorKind::InstallFailed,
                "The install ended unexpectedly inside the agent; see `journalctl -u debvisor-agent`".into(),
            ));
        }
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn one_at_a_time_and_followers_see_the_end() {
        let jobs = Jobs::default();
        let mut job = jobs.start("http://x/b.raucb", "uid:0").unwrap();
        let e = jobs.start("upload:b", "admin").err().unwrap();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("install-1 of http://x/b.raucb"), "{}", e.message());
        assert!(e.message().contains("uid:0"), "{}", e.message());

        let follower = jobs.follow(job.id());
        let mut watcher = jobs.state.subscribe();
        job.update(|p| p.percent = 50);
        let id = job.id().to_string();
        job.finish("rootfs.1".into(), "0.2".into());
        // Whoever sees the end may start the next install at once.
        assert!(is_final(watcher.borrow_and_update().as_ref().unwrap()));
        assert!(jobs.check_idle().is_ok());
        // The next install starts before the follower reads anything.
        let next = jobs.start("upload:c", "admin").unwrap();
        let seen: Vec<InstallProgress> = follower.map(Result::unwrap).collect().await;
        let last = seen.last().unwrap();
        assert_eq!(last.job_id, id);
        assert_eq!(last.phase, Phase::Done as i32);
        assert_eq!(last.target_slot, "rootfs.1");

        drop(next);
        let cur = jobs.current().unwrap();
        assert_eq!(cur.phase, Phase::Failed as i32, "a dropped job fails");
        assert!(jobs.start("again", "uid:0").is_ok());
    }
}
