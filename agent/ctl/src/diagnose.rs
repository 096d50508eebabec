//! Telling a user why the agent could not be reached: the error chains of
//! tonic, hyper, tokio-rustls and the OS are walked for the one fact that
//! matters (socket missing, connection refused, unknown CA, client
//! certificate refused, ...), which is then said in words with a next step.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::PathBuf;

use rustls::{AlertDescription, CertificateError};

/// How this run reaches the agent; named in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The local Unix socket.
    Socket(PathBuf),
    /// TLS to `endpoint`: mutual TLS from a client config, or server-only TLS
    /// pinned by `--fingerprint`.
    Tls {
        /// The endpoint, host:port.
        endpoint: String,
        /// True with `--fingerprint` (no client certificate).
        pinned: bool,
    },
}

impl Via {
    /// True for the local socket.
    pub fn is_socket(&self) -> bool {
        matches!(self, Via::Socket(_))
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Socket(p) => write!(f, "socket {}", p.display()),
            Via::Tls { endpoint, .. } => write!(f, "{endpoint}"),
        }
    }
}

/// The fact that explains a failed connection or call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// No socket file at the path.
    SocketMissing,
    /// The socket exists but this user may not connect to it.
    SocketPermission,
    /// Nothing listens at the address (RST / ECONNREFUSED).
    Refused,
    /// No answer: timeout, no route to the host or network.
    Unreachable,
    /// The host name does not resolve.
    NameNotResolved,
    /// The server certificate is not signed by the config's CA.
    ServerNotFromCa,
    /// The server certificate does not name the context's `server_name`.
    ServerNameMismatch,
    /// The server certificate is expired or not yet valid.
    ServerCertExpired,
    /// The server certificate does not match `--fingerprint`.
    PinMismatch,
    /// The server refused our client certificate (TLS alert).
    ClientCertRejected,
    /// Another TLS failure, with rustls' description.
    Tls(String),
    /// The peer closed the connection while it was being set up.
    Dropped,
    /// Nothing recognisable in the chain.
    Unknown,
}

/// Walks an error chain (looking inside `io::Error`s too, whose `source()`
/// skips the wrapped error) for the most telling fact: a TLS error wins over
/// an I/O error kind, which wins over nothing.
pub fn cause_of(err: &(dyn Error + 'static)) -> Cause {
    let mut io_cause = None;
    let mut next: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return tls_cause(tls);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                return tls_cause(tls);
            }
            io_cause = io_cause.or_else(|| io_kind_cause(io));
        }
        if e.is::<tokio::time::error::Elapsed>() {
            io_cause = io_cause.or(Some(Cause::Unreachable));
        }
        if e.to_string().contains("failed to lookup address") {
            io_cause = io_cause.or(Some(Cause::NameNotResolved));
        }
        next = e.source();
    }
    io_cause.unwrap_or(Cause::Unknown)
}

fn tls_cause(e: &rustls::Error) -> Cause {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::UnhandledCriticalExtension => Cause::ServerNotFromCa,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Cause::ServerNameMismatch
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Cause::ServerCertExpired,
            other => Cause::Tls(format!("{other:?}")),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
            | AlertDescription::DecryptError => Cause::ClientCertRejected,
            other => Cause::Tls(format!("the node sent the TLS alert {other:?}")),
        },
        rustls::Error::General(m) if m.contains("pinned") => Cause::PinMismatch,
        other => Cause::Tls(other.to_string()),
    }
}

fn io_kind_cause(e: &io::Error) -> Option<Cause> {
    use io::ErrorKind::*;
    Some(match e.kind() {
        NotFound => Cause::SocketMissing,
        PermissionDenied => Cause::SocketPermission,
        ConnectionRefused => Cause::Refused,
        TimedOut | HostUnreachable | NetworkUnreachable | AddrNotAvailable => Cause::Unreachable,
        ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe => Cause::Dropped,
        _ => return None,
    })
}

/// A failure in words: what happened, and what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// What went wrong, lower-case, to follow "Cannot ...: ".
    pub what: String,
    /// The next step, a full sentence.
    pub next: String,
}

fn d(what: impl Into<String>, next: impl Into<String>) -> Diagnosis {
    Diagnosis {
        what: what.into(),
        next: next.into(),
    }
}

const NETWORK_NEXT: &str = "Check the address and port (the agent listens on TCP 7443), that the node is up, \
                            and that no firewall blocks the port.";
const WRONG_CONFIG_NEXT: &str = "This config belongs to another node or cluster (or the node was reinstalled): \
                                 pick the right one with --context or --config, or get a fresh bundle from this node.";
const AGENT_RUNNING_NEXT: &str = "Is the agent running? On the node: systemctl status debvisor-agent.service";

/// Says what `cause` means for a connection made `via`.
pub fn diagnose(cause: &Cause, via: &Via) -> Diagnosis {
    let socket = via.is_socket();
    match cause {
        Cause::SocketMissing if socket => d(
            "no agent socket there",
            format!("{AGENT_RUNNING_NEXT}. From another machine, use a client config (--config) instead of --socket."),
        ),
        Cause::SocketPermission if socket => d(
            "permission denied on the socket",
            "Join the 'debvisor' group (sudo adduser $USER debvisor, then log in again) or run with sudo.",
        ),
        Cause::Refused if socket => d("the agent is not listening on the socket", AGENT_RUNNING_NEXT),
        Cause::SocketMissing | Cause::SocketPermission | Cause::Refused => d("connection refused", NETWORK_NEXT),
        Cause::Unreachable => d("no answer from the node", NETWORK_NEXT),
        Cause::NameNotResolved => d(
            "the host name does not resolve",
            "Check the endpoint's spelling, or use the node's IP address (--endpoint ADDRESS:7443).",
        ),
        Cause::ServerNotFromCa => d(
            "the node's certificate is not signed by the CA in the client config",
            WRONG_CONFIG_NEXT,
        ),
        Cause::ServerNameMismatch => d(
            "the node's certificate does not carry the server_name of the client config",
            WRONG_CONFIG_NEXT,
        ),
        Cause::ServerCertExpired => d(
            "the node's certificate has expired or is not valid yet",
            "Check the clocks of this machine and of the node.",
        ),
        Cause::PinMismatch => d(
            "the node's certificate does not match --fingerprint",
            "Compare with the fingerprint the node printed on its serial console at first boot; \
             a reinstalled node has a new certificate.",
        ),
        Cause::ClientCertRejected => d(
            "client certificate rejected (expired or from another CA)",
            "Get a fresh client config bundle for this node and pass it with --config.",
        ),
        Cause::Tls(detail) => d(
            format!("TLS handshake failed: {detail}"),
            "Check that the endpoint is the agent's TLS port (7443) of a DebVisor node.",
        ),
        Cause::Dropped if socket => d("the agent closed the connection", AGENT_RUNNING_NEXT),
        Cause::Dropped => d(
            "the node closed the connection during setup",
            "Check that the endpoint is the agent's TLS port (7443); if it is, the node may have refused \
             the client certificate: get a fresh bundle.",
        ),
        Cause::Unknown if socket => d("the connection failed", AGENT_RUNNING_NEXT),
        Cause::Unknown => d("the connection failed", NETWORK_NEXT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a source, like the wrappers of tonic and hyper.
    #[derive(Debug)]
    struct Wrap(Box<dyn Error + Send + Sync>);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("transport error")
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    fn wrapped_io(e: io::Error) -> Wrap {
        Wrap(Box::new(Wrap(Box::new(e))))
    }

    #[test]
    fn io_kinds_are_found_below_wrappers() {
        let cause = |kind| cause_of(&wrapped_io(io::Error::from(kind)));
        assert_eq!(cause(io::ErrorKind::NotFound), Cause::SocketMissing);
        assert_eq!(cause(io::ErrorKind::PermissionDenied), Cause::SocketPermission);
        assert_eq!(cause(io::ErrorKind::ConnectionRefused), Cause::Refused);
        assert_eq!(cause(io::ErrorKind::TimedOut), Cause::Unreachable);
        assert_eq!(cause(io::ErrorKind::ConnectionReset), Cause::Dropped);
        assert_eq!(cause(io::ErrorKind::Other), Cause::Unknown);
    }

    #[test]
    fn tls_errors_inside_io_errors_are_found() {
        let tls = |e: rustls::Error| cause_of(&wrapped_io(io::Error::new(io::ErrorKind::InvalidData, e)));
        assert_eq!(
            tls(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            Cause::ServerNotFromCa
        );
        assert_eq!(
            tls(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)),
            Cause::ServerNameMismatch
        );
        assert_eq!(
            tls(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
            Cause::ClientCertRejected
        );
        assert_eq!(
            tls(rustls::Error::AlertReceived(AlertDescription::CertificateExpired)),
            Cause::ClientCertRejected
        );
        assert_eq!(
            tls(rustls::Error::General(
                "fingerprint x does not match the pinned one".into()
            )),
            Cause::PinMismatch
        );
    }

    #[test]
    fn wrong_ca_and_refused_client_cert_say_what_to_do() {
        let via = Via::Tls {
            endpoint: "n1:7443".into(),
            pinned: false,
        };
        let ca = diagnose(&Cause::ServerNotFromCa, &via);
        assert!(ca.next.contains("another node or cluster"), "{ca:?}");
        let client = diagnose(&Cause::ClientCertRejected, &via);
        assert!(client.what.contains("client certificate rejected"), "{client:?}");
        assert!(client.next.contains("fresh"), "{client:?}");
        let refused = diagnose(&Cause::Refused, &via);
        assert!(refused.next.contains("firewall"), "{refused:?}");
    }

    #[test]
    fn socket_permission_suggests_the_group_or_sudo() {
        let d = diagnose(&Cause::SocketPermission, &Via::Socket("/run/x.sock".into()));
        assert!(d.next.contains("'debvisor' group") && d.next.contains("sudo"), "{d:?}");
    }
}
