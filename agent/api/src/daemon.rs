//! Start-up pieces every DebVisor daemon shares: logging to the journal when
//! running under systemd (stderr otherwise), binding a Unix socket, and a
//! shutdown signal future.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// Logs to the journal when stderr is connected to it (`JOURNAL_STREAM`),
/// else to stderr. `RUST_LOG` filters; the default is `info`.
pub fn init_logging() {
    init_logging_with(None::<tracing_subscriber::layer::Identity>);
}

/// [`init_logging`] plus one more layer, such as an OpenTelemetry exporter.
pub fn init_logging_with<L>(extra: Option<L>)
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(extra).with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        registry.with(journald).init();
        return;
    }
    registry
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

/// Binds a Unix socket at `path` with the file mode `mode`, replacing a
/// stale socket and creating its directory. The error names the path and
/// the step that failed.
pub fn bind_unix(path: &std::path::Path, mode: u32) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |what: &'static str, p: &std::path::Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("Cannot {what} {p}: {e}"))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed("create", dir))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed("remove the stale socket", path)(e)),
    }
    let l = tokio::net::UnixListener::bind(path).map_err(failed("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(failed("set the mode of", path))?;
    Ok(l)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
