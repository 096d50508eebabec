//! Who is calling: authorisation of local callers on the Unix socket by peer
//! credentials (root, or a member of the `debvisor` group), the identity of
//! mTLS clients from their verified certificate, and the end user the console
//! acts for. Each request gets a [`Caller`] in its extensions, which the audit
//! log records and the rate limiter keys on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use debvisor_api::validate::SingleLineString;
use debvisor_telemetry::ClientIdentity;
use tonic::transport::CertificateDer;
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
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("No verified client certificate on this connection"))?;
    let caller = TLS_CALLERS.get_or_insert(&certs, || {
        let actor = debvisor_api::tls::common_name(certs.first()?)?;
        let source = req
            .remote_addr()
            .map(|a| format!("tcp:{a}"))
            .unwrap_or_else(|| "tcp".into());
        Some(Caller { actor, source })
    });
    let caller = caller.ok_or_else(|| Status::unauthenticated("The client certificate names no common name"))?;
    Ok(caller.attach(req))
}

/// The callers of open mTLS connections. tonic gives every request of a
/// connection the same `Arc` of verified peer certificates, so the caller is
/// worked out (certificate parsed, address formatted) once per connection
/// rather than once per call.
static TLS_CALLERS: ConnectionCallers = ConnectionCallers::new();

/// Callers keyed by the address of their connection's certificate chain.
/// Each entry holds a [`Weak`] to that chain, which keeps its allocation
/// (and so its address) from being reused by another connection while the
/// entry exists; entries of closed connections are swept as the map grows.
struct ConnectionCallers {
    inner: Mutex<Callers>,
}

type PeerCerts = Vec<CertificateDer<'static>>;

struct Callers {
    map: Option<HashMap<usize, (Weak<PeerCerts>, Caller)>>,
    /// The size at which closed connections are next swept out.
    sweep_at: usize,
}

/// The least size at which the map is swept.
const SWEEP_AT: usize = 256;

impl ConnectionCallers {
    const fn new() -> Self {
        Self {
            inner: Mutex::new(Callers {
                map: None,
                sweep_at: SWEEP_AT,
            }),
        }
    }

    /// The caller of the connection whose certificate chain is `certs`,
    /// made by `make` the first time (`None` is not remembered).
    fn get_or_insert(&self, certs: &Arc<PeerCerts>, make: impl FnOnce() -> Option<Caller>) -> Option<Caller> {
        let key = Arc::as_ptr(certs) as usize;
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Callers { map, sweep_at } = &mut *guard;
        let map = map.get_or_insert_with(HashMap::new);
        if let Some((weak, caller)) = map.get(&key)
            && weak.strong_count() > 0
        {
            return Some(caller.clone());
        }
        let caller = make()?;
        if map.len() >= *sweep_at {
            map.retain(|_, (weak, _)| weak.strong_count() > 0);
            *sweep_at = SWEEP_AT.max(2 * map.len());
        }
        map.insert(key, (Arc::downgrade(certs), caller.clone()));
        Some(caller)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.map.as_ref().map_or(0, HashMap::len)
    }
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
    fn tls_callers_are_made_once_per_connection() {
        let cache = ConnectionCallers::new();
        let caller = |actor: &str| Caller {
            actor: actor.into(),
            source: "tcp:127.0.0.1:1".into(),
        };
        let a = Arc::new(vec![CertificateDer::from(vec![1u8])]);
        let b = Arc::new(vec![CertificateDer::from(vec![1u8])]);
        assert_eq!(cache.get_or_insert(&a, || Some(caller("a"))), Some(caller("a")));
        let again = cache.get_or_insert(&a.clone(), || panic!("made twice for one connection"));
        assert_eq!(again, Some(caller("a")));
        assert_eq!(cache.get_or_insert(&b, || Some(caller("b"))), Some(caller("b")));
        assert_eq!(cache.get_or_insert(&Arc::new(Vec::new()), || None), None);
        assert_eq!(cache.len(), 2);

        // Closed connections are swept once the map reaches its sweep size.
        drop(a);
        let open: Vec<_> = (0..SWEEP_AT).map(|_| Arc::new(PeerCerts::new())).collect();
        for c in &open {
            cache.get_or_insert(c, || Some(caller("x")));
        }
        assert_eq!(cache.len(), SWEEP_AT + 1, "b and every open connection, not a");
        assert_eq!(cache.get_or_insert(&b, || panic!("b is still open")), Some(caller("b")));
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
