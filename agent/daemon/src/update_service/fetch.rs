//! Getting a bundle onto the data partition: fetched from a URL or received
//! from an upload stream, hashed (sha256) on the way, with progress.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use debvisor_api::update::v1::{ErrorKind, UploadChunk};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_stream::{Stream, StreamExt};

use super::backend::{SPACE_MARGIN_BYTES, UpdateBackend};
use super::jobs::Job;

/// Progress is published at most this often while bytes arrive.
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// Why a bundle did not arrive.
#[derive(Debug)]
pub struct Failure {
    /// The class.
    pub kind: ErrorKind,
    /// For people.
    pub error: String,
}

impl Failure {
    fn new(kind: ErrorKind, error: String) -> Self {
        Self { kind, error }
    }
}

/// A bundle file that arrived.
#[derive(Debug)]
pub struct Stored {
    /// Where.
    pub path: PathBuf,
    /// Its sha256, lower-case hex.
    pub sha256: String,
}

/// Bytes free for unprivileged files on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Creates the bundle directory (mode 0700) and checks that `size` bytes fit
/// in it with [`SPACE_MARGIN_BYTES`] to spare and within the size limit.
pub fn ensure_space(b: &UpdateBackend, size: u64) -> Result<(), Failure> {
    if size > b.max_bundle_bytes {
        return Err(Failure::new(
            ErrorKind::NotEnoughSpace,
            format!(
                "The bundle is {size} bytes, more than the agent accepts ({} bytes)",
                b.max_bundle_bytes
            ),
        ));
    }
    create_dir(&b.dir).map_err(|e| Failure::new(ErrorKind::NotEnoughSpace, e))?;
    let free = free_bytes(&b.dir).map_err(|e| {
        Failure::new(
            ErrorKind::NotEnoughSpace,
            format!("Cannot read the free space of {}: {e}", b.dir.display()),
        )
    })?;
    if free < size.saturating_add(SPACE_MARGIN_BYTES) {
        return Err(Failure::new(
            ErrorKind::NotEnoughSpace,
            format!(
                "Not enough space on the data partition for the bundle: {} has {free} bytes free, the bundle needs \
                 {size} plus {SPACE_MARGIN_BYTES} to spare; free some space there and retry",
                b.dir.display()
            ),
        ));
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("Cannot create the bundle directory {}: {e}", dir.display()))
}

/// The file being written, its hash and the progress published.
struct Sink {
    file: tokio::fs::File,
    path: PathBuf,
    hasher: Sha256,
    done: u64,
    limit: u64,
    last_report: Instant,
}

impl Sink {
    async fn create(path: &Path, limit: u64) -> Result<Self, Failure> {
        let file = tokio::fs::File::create(path).await.map_err(|e| {
            Failure::new(
                ErrorKind::NotEnoughSpace,
                format!("Cannot create {}: {e}", path.display()),
            )
        })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            hasher: Sha256::new(),
            done: 0,
            limit,
            last_report: Instant::now(),
        })
    }

    async fn write(&mut self, job: &mut Job, data: &[u8], kind: ErrorKind) -> Result<(), Failure> {
        self.done += data.len() as u64;
        if self.done > self.limit {
            return Err(Failure::new(
                kind,
                format!("The bundle is larger than announced or allowed ({} bytes)", self.limit),
            ));
        }
        self.hasher.update(data);
        self.file.write_all(data).await.map_err(|e| {
            let kind = if e.raw_os_error() == Some(28) {
                ErrorKind::NotEnoughSpace
            } else {
                ErrorKind::InstallFailed
            };
            Failure::new(kind, format!("Cannot write {}: {e}", self.path.display()))
        })?;
        if self.last_report.elapsed() >= REPORT_EVERY {
            self.last_report = Instant::now();
            let done = self.done;
            job.update(|p| {
                p.bytes_done = done;
                p.percent = percent(done, p.bytes_total);
            });
        }
        Ok(())
    }

    async fn close(self, job: &mut Job) -> Result<Stored, Failure> {
        self.file.sync_all().await.map_err(|e| {
            Failure::new(
                ErrorKind::InstallFailed,
                format!("Cannot sync {}: {e}", self.path.display()),
            )
        })?;
        let done = self.done;
        job.update(|p| {
            p.bytes_done = done;
            p.percent = 100;
        });
        Ok(Stored {
            path: self.path,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }
}

/// `done` of `total` in percent; 0 when the total is unknown.
fn percent(done: u64, total: u64) -> u32 {
    if total == 0 {
        return 0;
    }
    u32::try_from((done.min(total) * 100) / total).unwrap_or(100)
}

/// Fetches `url` into `path`.
pub async fn download(b: &UpdateBackend, job: &mut Job, url: &str, path: &Path) -> Result<Stored, Failure> {
    let failed = |e: String| Failure::new(ErrorKind::DownloadFailed, e);
    let mut resp = b
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| failed(format!("Download of {url} failed: {}", crate::error_chain(&e))))?;
    let status = resp.status();
    job.update(|p| p.http_status = u32::from(status.as_u16()));
    if status != reqwest::StatusCode::OK {
        return Err(failed(format!(
            "Download of {url} failed: the server answered HTTP {status} (expected 200 OK)"
        )));
    }
    let total = resp.content_length().unwrap_or(0);
    if total > 0 {
        ensure_space(b, total)?;
    } else {
        create_dir(&b.dir).map_err(|e| Failure::new(ErrorKind::NotEnoughSpace, e))?;
    }
    job.update(|p| {
        p.bytes_total = total;
        p.message = format!("Downloading {url}");
    });
    let limit = if total > 0 { total } else { b.max_bundle_bytes };
    let mut sink = Sink::create(path, limit).await?;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => sink.write(job, &chunk, ErrorKind::DownloadFailed).await?,
            Ok(None) => break,
            Err(e) => {
                return Err(failed(format!(
                    "Download of {url} broke off after {} bytes: {}",
                    sink.done,
                    crate::error_chain(&e)
                )));
            }
        }
    }
    if total > 0 && sink.done != total {
        return Err(failed(format!(
            "Download of {url} ended after {} of {total} bytes",
            sink.done
        )));
    }
    sink.close(job).await
}

/// Receives the rest of an upload (`first` is the data of the header
/// message) into `path`; `size` is announced by the header.
pub async fn receive<S>(job: &mut Job, first: &[u8], mut rest: S, size: u64, path: &Path) -> Result<Stored, Failure>
where
    S: Stream<Item = Result<UploadChunk, tonic::Status>> + Unpin,
{
    let failed = |e: String| Failure::new(ErrorKind::UploadFailed, e);
    job.update(|p| {
        p.bytes_total = size;
        p.message = "Receiving the upload".into();
    });
    let mut sink = Sink::create(path, size).await?;
    sink.write(job, first, ErrorKind::UploadFailed).await?;
    while let Some(chunk) = rest.next().await {
        let chunk = chunk.map_err(|s| {
            failed(format!(
                "The upload stream broke after {} of {size} bytes: {}",
                sink.done,
                s.message()
            ))
        })?;
        if chunk.header.is_some() {
            return Err(failed("Only the first upload message may carry a header".into()));
        }
        sink.write(job, &chunk.data, ErrorKind::UploadFailed).await?;
    }
    if sink.done != size {
        return Err(failed(format!(
            "The upload ended after {} bytes; its header announced {size}",
            sink.done
        )));
    }
    sink.close(job).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_free_space() {
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(50, 200), 25);
        assert_eq!(percent(300, 200), 100);
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        let mut b = UpdateBackend::simulated(dir.path().join("updates"));
        assert!(ensure_space(&b, 1024).is_ok());
        assert!(dir.path().join("updates").is_dir());
        let e = ensure_space(&b, u64::MAX / 2).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotEnoughSpace);
        b.max_bundle_bytes = u64::MAX;
        let e = ensure_space(&b, u64::MAX / 2).unwrap_err();
        assert!(
            e.error.contains("Not enough space on the data partition"),
            "{}",
            e.error
        );
    }
}
