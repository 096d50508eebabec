//! Authorisation of local callers on the Unix socket by peer credentials:
//! root, or a member of the `debvisor` group.

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

/// The group whose members may use the local socket.
pub const SOCKET_GROUP: &str = "debvisor";

/// Who may call over the Unix socket.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// The gid of [`SOCKET_GROUP`], if that group exists on this host.
    pub group: Option<u32>,
    /// Our own uid: a process of the same user is always allowed (tests, sim).
    pub own_uid: u32,
}

impl PeerPolicy {
    /// Looks up the `debvisor` group on this host.
    pub fn from_host() -> Self {
        let group = nix::unistd::Group::from_name(SOCKET_GROUP)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw());
        Self {
            group,
            own_uid: nix::unistd::getuid().as_raw(),
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
        if uid == 0 || uid == self.own_uid {
            return Ok(req);
        }
        if let Some(group) = self.group
            && (gid == group || pid.is_some_and(|p| supplementary_groups(p).contains(&group)))
        {
            return Ok(req);
        }
        Err(Status::permission_denied(format!(
            "uid {uid} may not use the agent socket: run as root or join the '{SOCKET_GROUP}' group"
        )))
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
        };
        let err = p.check(Request::new(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}
