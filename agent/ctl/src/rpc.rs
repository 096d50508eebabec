//! Calling the agent: the per-run context (channel, output mode, timeout)
//! and the translation of every gRPC status into a message with a next step.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::StatusExt;

use crate::diagnose::{Cause, Diagnosis, Via, cause_of, diagnose};

/// What every command gets: the channel to the agent, how it was reached,
/// the output mode and the timeout of each answer.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The connected channel.
    pub channel: Channel,
    /// How the agent was reached (for messages).
    pub via: Via,
    /// `--json`: machine output.
    pub json: bool,
    /// `--timeout`: how long to wait for an answer (not in follow streams).
    pub timeout: Duration,
}

impl Ctx {
    /// Wraps `msg` in a request carrying the timeout as `grpc-timeout`, so
    /// that the agent gives up when we do.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    /// Awaits a call, failing with DEADLINE_EXCEEDED after the timeout.
    pub async fn call<T>(&self, fut: impl Future<Output = Result<Response<T>, Status>>) -> Result<T, RpcError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(self.error(status)),
            Err(_) => Err(self.error(self.deadline())),
        }
    }

    /// Prints `value` as JSON with `--json`, else the text `human` makes.
    pub fn show<T: serde::Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> anyhow::Result<()> {
        if self.json {
            crate::output::json(value)
        } else {
            Ok(crate::output::out(&human())?)
        }
    }

    /// The next message of a finite stream; gives up when none arrives within
    /// the timeout.
    pub async fn next<T>(&self, stream: &mut Streaming<T>) -> Result<Option<T>, RpcError> {
        match tokio::time::timeout(self.timeout, stream.message()).await {
            Ok(r) => r.map_err(|s| self.error(s)),
            Err(_) => Err(self.error(self.deadline())),
        }
    }

    /// The next message of a follow stream, waiting as long as it takes.
    pub async fn next_follow<T>(&self, stream: &mut Streaming<T>) -> Result<Option<T>, RpcError> {
        stream.message().await.map_err(|s| self.error(s))
    }

    /// An [`RpcError`] for a status received over this context's connection.
    pub fn error(&self, status: Status) -> RpcError {
        RpcError {
            status,
            via: self.via.clone(),
        }
    }

    fn deadline(&self) -> Status {
        Status::deadline_exceeded(format!("no answer within {} s", self.timeout.as_secs()))
    }
}

/// Catches Ctrl-C (SIGINT) from now on, for follow streams that end
/// cleanly on it. Registered at once (unlike `tokio::signal::ctrl_c`, which
/// registers when first polled), so that a Ctrl-C while printing is not lost
/// nor kills the process.
pub fn interrupts() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
}

/// A call that the agent (or the transport) answered with an error status.
#[derive(Debug)]
pub struct RpcError {
    /// The status as received.
    pub status: Status,
    /// How the agent was reached, which changes some advice.
    pub via: Via,
}

impl RpcError {
    /// The message and the next step for this status.
    pub fn diagnosis(&self) -> Diagnosis {
        explain(&self.status, &self.via)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnosis().what)
    }
}

impl Error for RpcError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.status.source().map(|s| s as &(dyn Error + 'static))
    }
}

/// How long the agent asks us to wait before retrying: google.rpc.RetryInfo
/// in the status details, else a `retry-after` header in seconds.
pub fn retry_delay(status: &Status) -> Option<Duration> {
    status.get_details_retry_info().and_then(|r| r.retry_delay).or_else(|| {
        status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    })
}

/// The version of this client, named when the agent does not know a call.
const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Translates a status into what happened and what to do next, in one
/// exhaustive match over the gRPC codes. Transport failures (UNAVAILABLE,
/// UNKNOWN, ... with an I/O or TLS error inside) are explained by their
/// cause, as when connecting.
pub fn explain(status: &Status, via: &Via) -> Diagnosis {
    let m = match status.message() {
        "" => "(no message)",
        m => m,
    };
    if let Some(src) = status.source() {
        let cause = cause_of(src);
        if cause != Cause::Unknown {
            let d = diagnose(&cause, via);
            return Diagnosis {
                what: format!("{} ({m})", d.what),
                next: d.next,
            };
        }
    }
    let d = |what: String, next: String| Diagnosis { what, next };
    let socket = via.is_socket();
    match status.code() {
        Code::Ok => d(
            format!("the agent answered OK with an error flag: {m}"),
            "This is a bug in the agent; report it with the output of `debvisorctl status`.".into(),
        ),
        Code::Cancelled => d(format!("the call was cancelled: {m}"), "Run the command again.".into()),
        Code::Unknown => d(
            format!("the agent failed: {m}"),
            "See the agent's log: `debvisorctl logs -u debvisor-agent.service -n 50`.".into(),
        ),
        Code::InvalidArgument => d(
            format!("the agent refused an argument: {m}"),
            "Fix the value it names; `debvisorctl help <command>` says what each argument takes.".into(),
        ),
        Code::DeadlineExceeded => d(
            format!("timed out: {m}"),
            "Retry with a longer --timeout SECS, or check whether the node is overloaded (`debvisorctl status`)."
                .into(),
        ),
        Code::NotFound => d(
            format!("not found: {m}"),
            "Check the name; `debvisorctl units list --all` lists the units the node knows.".into(),
        ),
        Code::AlreadyExists => d(
            format!("already exists: {m}"),
            "Nothing to do, or choose another name.".into(),
        ),
        Code::PermissionDenied if socket => d(
            format!("permission denied: {m}"),
            "Join the 'debvisor' group (sudo adduser $USER debvisor, then log in again) or run with sudo.".into(),
        ),
        Code::PermissionDenied => d(
            format!("permission denied: {m}"),
            "Your client certificate does not allow this call; use a bundle issued for this task.".into(),
        ),
        Code::ResourceExhausted => d(
            format!("the agent is rate limiting this client: {m}"),
            match retry_delay(status) {
                Some(delay) if delay < Duration::from_secs(1) => {
                    format!("Retry in {} ms.", delay.as_millis().max(1))
                }
                Some(delay) => format!("Retry in {:.1} s.", delay.as_secs_f64()),
                None => "Retry in a few seconds.".into(),
            },
        ),
        Code::FailedPrecondition => d(
            format!("the agent cannot do this now: {m}"),
            "Look at the unit's state and log (`debvisorctl units show NAME`, `debvisorctl logs -u NAME`), \
             fix the cause and retry."
                .into(),
        ),
        Code::Aborted => d(
            format!("aborted by a conflicting operation: {m}"),
            "Run the command again.".into(),
        ),
        Code::OutOfRange => d(
            format!("a value is out of range: {m}"),
            "Choose a value inside the range the message names.".into(),
        ),
        Code::Unimplemented => d(
            format!("the agent does not implement this call: {m}"),
            format!(
                "The agent is older or newer than this debvisorctl ({CLIENT_VERSION}); use the debvisorctl \
                 of the node's release."
            ),
        ),
        Code::Internal => d(
            format!("internal error in the agent: {m}"),
            "See the agent's log: `debvisorctl logs -u debvisor-agent.service -n 50`, and report it.".into(),
        ),
        Code::Unavailable if socket => d(
            format!("the agent is unavailable: {m}"),
            "Is the agent running? On the node: systemctl status debvisor-agent.service; then retry.".into(),
        ),
        Code::Unavailable => d(
            format!("the agent is unavailable: {m}"),
            "Check that the node is up and the agent running, the address and port, and the firewall; then retry."
                .into(),
        ),
        Code::DataLoss => d(
            format!("the agent reports data loss: {m}"),
            "Run `debvisorctl audit verify` and check the node's disks.".into(),
        ),
        Code::Unauthenticated if socket => d(
            format!("not authenticated: {m}"),
            "Run on the node as root or as a member of the 'debvisor' group.".into(),
        ),
        Code::Unauthenticated => d(
            format!("not authenticated: {m}"),
            "Use a client config bundle with a valid client certificate (--config, --context).".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    const ALL_CODES: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    fn vias() -> [Via; 2] {
        [
            Via::Socket("/run/debvisor/agent.sock".into()),
            Via::Tls {
                endpoint: "n1:7443".into(),
                pinned: false,
            },
        ]
    }

    #[test]
    fn every_code_gives_the_server_message_and_a_next_step() {
        for via in vias() {
            for code in ALL_CODES {
                let d = explain(&Status::new(code, "the server says so"), &via);
                assert!(d.what.contains("the server says so"), "{code:?}: {d:?}");
                assert!(d.next.ends_with('.') && d.next.len() > 15, "{code:?}: {d:?}");
                assert!(d.next.starts_with(|c: char| c.is_uppercase()), "{code:?}: {d:?}");
            }
        }
    }

    #[test]
    fn permission_denied_on_the_socket_names_the_group() {
        let [socket, tls] = vias();
        let d = explain(&Status::permission_denied("uid 1000"), &socket);
        assert!(d.next.contains("'debvisor' group") && d.next.contains("sudo"), "{d:?}");
        let d = explain(&Status::permission_denied("role"), &tls);
        assert!(d.next.contains("client certificate"), "{d:?}");
    }

    #[test]
    fn unimplemented_prints_the_server_message_and_versions() {
        let d = explain(
            &Status::unimplemented("debvisor.vms.v1.VmService is not served; this agent serves ..."),
            &vias()[0],
        );
        assert!(d.what.contains("debvisor.vms.v1.VmService is not served"), "{d:?}");
        assert!(d.next.contains("older or newer"), "{d:?}");
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let d = explain(&Status::invalid_argument("name: has no unit type suffix"), &vias()[0]);
        assert!(d.what.contains("name: has no unit type suffix"), "{d:?}");
    }

    #[test]
    fn resource_exhausted_gives_the_retry_delay() {
        let details = ErrorDetails::with_retry_info(Some(Duration::from_millis(2500)));
        let s = Status::with_error_details(Code::ResourceExhausted, "too many calls", details);
        assert_eq!(explain(&s, &vias()[0]).next, "Retry in 2.5 s.");
        let details = ErrorDetails::with_retry_info(Some(Duration::from_micros(150_500)));
        let s = Status::with_error_details(Code::ResourceExhausted, "too many calls", details);
        assert_eq!(explain(&s, &vias()[0]).next, "Retry in 150 ms.");

        let mut s = Status::resource_exhausted("slow down");
        s.metadata_mut().insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_delay(&s), Some(Duration::from_secs(7)));
        assert_eq!(explain(&s, &vias()[0]).next, "Retry in 7.0 s.");

        let s = Status::resource_exhausted("slow down");
        assert_eq!(explain(&s, &vias()[0]).next, "Retry in a few seconds.");
    }

    #[test]
    fn transport_failures_are_explained_by_their_cause() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
        );
        let s = Status::from_error(Box::new(io));
        let d = explain(&s, &vias()[1]);
        assert!(d.what.contains("client certificate rejected"), "{d:?}");
    }
}
