//! The TFTP server (async-tftp: RFC 1350 with the blksize, tsize and
//! timeout options) serving the iPXE binaries, read-only.
//!
//! A request names one plain file of the root directory; anything else (a
//! subdirectory, `..`, an absolute path, a write) is refused and counted.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_tftp::packet::Error as TftpError;
use async_tftp::server::{Handler, TftpServerBuilder};
use futures_util::io::{Cursor, Sink};

use crate::config::MAX_BOOT_FILE;
use crate::metrics::Metrics;

/// The largest file served (iPXE binaries are well under 1 MiB; the
/// kernel and images go over HTTP).
pub const MAX_FILE: u64 = 16 << 20;

/// Whether `name` is a plain file name: 1-128 bytes of `A-Z a-z 0-9 _ . -`,
/// not `.` or `..`.
pub fn is_plain_file_name(name: &str) -> bool {
    (1..=MAX_BOOT_FILE).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Why a read request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a plain file name of the root (traversal, a subdirectory, odd bytes).
    Path,
    /// No such file in the root.
    NotFound,
}

/// Maps a requested path to the file it may read: one plain name, with at
/// most one leading `/` (some firmware sends one).
pub fn resolve(root: &Path, requested: &Path) -> Result<PathBuf, Refusal> {
    let mut comps = requested.components().filter(|c| !matches!(c, Component::RootDir));
    let (Some(Component::Normal(name)), None) = (comps.next(), comps.next()) else {
        return Err(Refusal::Path);
    };
    if requested.as_os_str().as_encoded_bytes().starts_with(b"//") {
        return Err(Refusal::Path);
    }
    let name = name.to_str().filter(|n| is_plain_file_name(n)).ok_or(Refusal::Path)?;
    let path = root.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        _ => Err(Refusal::NotFound),
    }
}

/// The request handler.
#[derive(Debug)]
pub struct ReadOnly {
    root: PathBuf,
    metrics: Arc<Metrics>,
}

impl Handler for ReadOnly {
    type Reader = Cursor<Vec<u8>>;
    type Writer = Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), TftpError> {
        let refuse = |why: Refusal, err: TftpError| {
            tracing::info!(%client, path = %path.display(), ?why, "TFTP read refused");
            self.metrics
                .tftp(if why == Refusal::Path { "refused" } else { "not_found" });
            err
        };
        let file = resolve(&self.root, path).map_err(|why| match why {
            Refusal::Path => refuse(why, TftpError::PermissionDenied),
            Refusal::NotFound => refuse(why, TftpError::FileNotFound),
        })?;
        // The iPXE binaries are small (< 1 MiB): read whole, off the async
        // threads, and serve from memory; anything large is not one of them.
        let data = match tokio::fs::metadata(&file).await {
            Ok(m) if m.len() > MAX_FILE => Err(std::io::Error::other(format!(
                "{} bytes, more than the {MAX_FILE} a boot loader may have over TFTP",
                m.len()
            ))),
            Ok(_) => tokio::fs::read(&file).await,
            Err(e) => Err(e),
        }
        .map_err(|e| {
            tracing::warn!(file = %file.display(), error = %e, "TFTP read failed");
            self.metrics.tftp("error");
            TftpError::FileNotFound
        })?;
        tracing::info!(%client, file = %file.display(), bytes = data.len(), "TFTP read");
        self.metrics.tftp("ok");
        let len = data.len() as u64;
        Ok((Cursor::new(data), Some(len)))
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, TftpError> {
        tracing::info!(%client, path = %path.display(), "TFTP write refused");
        self.metrics.tftp("write_refused");
        Err(TftpError::IllegalOperation)
    }
}

/// Serves `root` on `socket` (bound to the interface's address, port 69) until the task is dropped.
pub async fn serve(socket: UdpSocket, root: PathBuf, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let server = TftpServerBuilder::with_handler(ReadOnly { root, metrics })
        .std_socket(socket)?
        .timeout(Duration::from_secs(3))
        .block_size_limit(1468)
        // One block in flight: a spoofed request with a large window would
        // otherwise have us blast a whole file at a third party.
        .ignore_client_window_size()
        .max_send_retries(5)
        .build()
        .await?;
    server.serve().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_files_of_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snponly.efi"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let r = |p: &str| resolve(dir.path(), Path::new(p));
        assert_eq!(r("snponly.efi").unwrap(), dir.path().join("snponly.efi"));
        assert_eq!(r("/snponly.efi").unwrap(), dir.path().join("snponly.efi"));
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "sub/f",
            "..",
            ".",
            "",
            "//snponly.efi",
            "a b",
            "sub/../snponly.efi",
        ] {
            assert_eq!(r(bad), Err(Refusal::Path), "{bad:?}");
        }
        assert_eq!(r("missing.efi"), Err(Refusal::NotFound));
        assert_eq!(r("sub"), Err(Refusal::NotFound), "a directory is not a file");
        assert_eq!(r("link"), Err(Refusal::NotFound), "symlinks are not followed");
    }

    #[tokio::test]
    async fn serves_small_files_and_refuses_large_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snponly.efi"), b"ipxe").unwrap();
        std::fs::File::create(dir.path().join("huge.img"))
            .unwrap()
            .set_len(MAX_FILE + 1)
            .unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut h = ReadOnly {
            root: dir.path().to_owned(),
            metrics: metrics.clone(),
        };
        let client: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let (_, len) = h.read_req_open(&client, Path::new("snponly.efi")).await.unwrap();
        assert_eq!(len, Some(4));
        let err = h.read_req_open(&client, Path::new("huge.img")).await.unwrap_err();
        assert!(matches!(err, TftpError::FileNotFound), "{err:?}");
        assert_eq!((metrics.tftp_count("ok"), metrics.tftp_count("error")), (1, 1));
    }
}
