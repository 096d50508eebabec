//! Who is calling: authorisation of local callers on the Unix socket by peer
//! credentials (root, or a member of the `debvisor` group), the identity of
//! mTLS clients from their verified certificate, and the end user the console
//! acts for. Each request gets a [`Caller`] in its extensions, which the audit
//! log records and the rate limiter keys on.

use debvisor_api::validate::SingleLineString;
use debvisor_telemetry::ClientIdentity;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

/// Metadata key in which the console names the user it acts for. Trusted
/// only from the console's own uid on the Unix socket.
pub const ON_BEHALF_OF: &str = "x-debvisor-user";

/// The identity of one request's caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who: the mTLS client certificate's common name, `uid:N` for a local
    /// caller, or `console:USER` when the console acts for a user.
    pub actor: String,
    /// From where: `tcp:ADDR` or `unix:pid=N`.
    pub source: String,
}

impl Caller {
    /// The caller recorded on `req` by [`PeerPolicy::check`] or
    /// [`identify_tls`]; a request that bypassed both is refused.
    pub fn of<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("The caller of this request is unknown"))
    }

    fn attach(self, mut req: Request<()>) -> Request<()> {
        req.extensions_mut().insert(ClientIdentity(self.actor.clone()));
        req.extensions_mut().insert(self);
        req
    }
}

/// Identifies an mTLS caller by its verified client certificate. The
/// handshake already refused clients without a certificate from the node CA;
/// a request without one here did not come through the mTLS listener.
pub fn identify_tls(req: Request<()>) -> Result<Request<()>, Status> {
    if req.metadata().contains_key(ON_BEHALF_OF) {
        return Err(Status::permission_denied(format!(
            "{ON_BEHALF_OF} is accepted only from the local console"
        )));
    }
    let actor = debvisor_api::tls::client_identity(&req)
        .ok_or_else(|| Status::unauthenticated("No verified client certificate on this connection"))?;
    let source = req
        .remote_addr()
        .map(|a| format!("tcp:{a}"))
        .unwrap_or_else(|| "tcp".into());
    Ok(Caller { actor, source }.attach(req))
}

/// The group whose members may use the local socket.
pub const SOCKET_GROUP: &str = "debvisor";

/// Who may call over the Unix socket.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// The gid of [`SOCKET_GROUP`], if that group exists on this host.
    pub group: Option<u32>,
    /// Our own uid: a process of the same user is always allowed (tests, sim).
    pub own_uid: u32,
    /// The console's uid: only its requests may name the end user they act
    /// for ([`ON_BEHALF_OF`]).
    pub console_uid: Option<u32>,
}

impl PeerPolicy {
    /// Looks up the `debvisor` group and the console's user on this host.
    pub fn from_host(console_user: &str) -> Self {
        let group = nix::unistd::Group::from_name(SOCKET_GROUP)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw());
        let console_uid = nix::unistd::User::from_name(console_user)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw());
        Self {
            group,
            own_uid: nix::unistd::getuid().as_raw(),
            console_uid,
        }
    }

    /// Accepts or refuses one request, from the credentials the transport
    /// recorded when the connection was accepted.
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let cred = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .ok_or_else(|| Status::unauthenticated("No peer credentials on this connection"))?;
        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
        let allowed = uid == 0
            || uid == self.own_uid
            || Some(uid) == self.console_uid
            || self
                .group
                .is_some_and(|group| gid == group || pid.is_some_and(|p| supplementary_groups(p).contains(&group)));
        if !allowed {
            return Err(Status::permission_denied(format!(
                "uid {uid} may not use the agent socket: run as root or join the '{SOCKET_GROUP}' group"
            )));
        }
        let source = match pid {
            Some(p) => format!("unix:pid={p}"),
            None => "unix".to_string(),
        };
        let actor = match req.metadata().get(ON_BEHALF_OF) {
            None => format!("uid:{uid}"),
            Some(_) if Some(uid) != self.console_uid => {
                return Err(Status::permission_denied(format!(
                    "{ON_BEHALF_OF} is accepted only from the console's user, not from uid {uid}"
                )));
            }
            Some(v) => {
                let user = v
                    .to_str()
                    .ok()
                    .and_then(|v| SingleLineString::<64>::try_from(v).ok())
                    .ok_or_else(|| Status::invalid_argument(format!("{ON_BEHALF_OF} is not a valid user name")))?;
                format!("console:{}", user.as_str())
            }
        };
        Ok(Caller { actor, source }.attach(req))
    }
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    parse_groups(&status)
}

/// The `Groups:` line of /proc/PID/status.
pub fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_line() {
        assert_eq!(parse_groups("Name:\tx\nGroups:\t4 24 27 \nUid: 0\n"), vec![4, 24, 27]);
        assert!(parse_groups("Name: x\n").is_empty());
    }

    #[test]
    fn no_credentials_is_refused() {
        let p = PeerPolicy {
            group: None,
            own_uid: 1000,
            console_uid: None,
        };
        let err = p.check(Request::new(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}
