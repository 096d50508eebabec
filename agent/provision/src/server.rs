//! The running provisioner: a DHCP socket per network (and port 4011 in
//! proxy mode), bound to its interface, and a TFTP server per network on
//! the network's own address.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use prometheus_client::registry::Registry;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use crate::config::{Config, Mode, Network};
use crate::dhcp::leases::{Lease, LeaseTable};
use crate::dhcp::packet::{Request, encode};
use crate::dhcp::respond::{Change, Dest, Port, respond};
use crate::http::HttpState;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, committed};

/// The lease database's file name in the state directory.
pub const LEASE_DB: &str = "provision.db";

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

struct Inner {
    cfg: Arc<Config>,
    store: Store,
    table: Mutex<LeaseTable>,
    metrics: Arc<Metrics>,
}

/// The provisioner: its state, ready to [`run`](Provisioner::run).
#[derive(Clone)]
pub struct Provisioner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner").finish_non_exhaustive()
    }
}

impl Provisioner {
    /// Opens the lease database in `cfg.state_dir` and loads the leases.
    pub async fn open(cfg: Config, metrics: Arc<Metrics>) -> anyhow::Result<Provisioner> {
        let store = Store::open(&cfg.state_dir.join(LEASE_DB)).await?;
        let leases = store.leases().await?;
        tracing::info!(leases = leases.len(), db = %cfg.state_dir.join(LEASE_DB).display(), "leases loaded");
        let reserved = cfg.reservations.iter().map(|r| (r.ip, r.mac));
        let table = LeaseTable::new(leases, reserved);
        Ok(Provisioner {
            inner: Arc::new(Inner {
                cfg: Arc::new(cfg),
                store,
                table: Mutex::new(table),
                metrics,
            }),
        })
    }

    /// The current leases (including expired ones not yet taken over).
    pub fn leases(&self) -> Vec<Lease> {
        self.table().leases()
    }

    /// The store (machines seen, leases as stored).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The config it runs with.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Whether a reservation of the config holds `ip` for `mac`.
    pub fn reserved(&self, mac: crate::config::Mac, ip: Ipv4Addr) -> bool {
        self.inner.cfg.reservations.iter().any(|r| r.mac == mac && r.ip == ip)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        // A panic while holding the lock leaves a consistent table (every
        // update is a few map operations): keep serving.
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds every socket, then serves until one of them fails. `/metrics`
    /// of the HTTP server shows `registry` when given.
    pub async fn run(self, registry: Option<Arc<Registry>>) -> anyhow::Result<()> {
        let mut tasks = JoinSet::new();
        for (i, net) in self.inner.cfg.networks.iter().enumerate() {
            let mut ports = vec![(Port::Dhcp, 67)];
            if net.mode == Mode::Proxy {
                ports.push((Port::Pxe, 4011));
            }
            for (port, number) in ports {
                let socket = dhcp_socket(net, number)?;
                let p = self.clone();
                tasks.spawn(async move { p.dhcp_loop(i, port, Arc::new(socket)).await });
            }
            if self.inner.cfg.tftp.enabled {
                let socket = tftp_socket(net)?;
                let (root, metrics) = (self.inner.cfg.tftp.root.clone(), self.inner.metrics.clone());
                tasks.spawn(crate::tftp::serve(socket, root, metrics));
            }
            let http_addr = SocketAddrV4::new(net.address.addr, self.inner.cfg.boot.http_port);
            let listener = tokio::net::TcpListener::bind(http_addr).await.with_context(|| {
                format!(
                    "HTTP on {http_addr}: is the address on {} and the port free?",
                    net.interface
                )
            })?;
            let app = crate::http::router(Arc::new(HttpState {
                base: format!("http://{http_addr}"),
                cfg: self.inner.cfg.clone(),
                mode: net.mode,
                store: self.inner.store.clone(),
                metrics: self.inner.metrics.clone(),
                registry: registry.clone(),
            }));
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            tasks.spawn(async move { axum::serve(listener, app).await.context("HTTP server") });
            tracing::info!(interface = %net.interface, address = %net.address.addr, mode = ?net.mode, "serving");
        }
        let p = self.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let now = unix_now();
                let mut t = p.table();
                t.expire(now);
                p.inner.metrics.set_leases_active(t.active(now));
            }
        });
        match tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn dhcp_loop(self, net_index: usize, port: Port, socket: Arc<UdpSocket>) -> anyhow::Result<()> {
        let net = &self.inner.cfg.networks[net_index];
        let metrics = &self.inner.metrics;
        let mut buf = vec![0u8; 1500];
        loop {
            let (n, src) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // An interface going down and coming back (ENETDOWN and
                    // the like) must not stop the provisioner.
                    tracing::warn!(interface = %net.interface, error = %e, "receiving a DHCP datagram failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let SocketAddr::V4(src) = src else { continue };
            let req = match Request::parse(&buf[..n]) {
                Ok(r) => r,
                Err(m) => {
                    tracing::debug!(%src, reason = %m, "dropped a malformed DHCP datagram");
                    metrics.malformed(m.label());
                    continue;
                }
            };
            metrics.received(req.kind);
            let now = unix_now();
            let out = respond(&self.inner.cfg, net, port, &req, src, &mut self.table(), now);
            if let Some(seen) = out.seen
                && !self.inner.store.seen(seen, now)
            {
                tracing::debug!(mac = %req.mac, "store queue full: machine record dropped");
            }
            if let Some(why) = out.ignored {
                tracing::debug!(mac = %req.mac, kind = ?req.kind, why, "no reply");
                metrics.ignored(why);
            }
            match (out.change, out.reply) {
                (Some(change @ Change::Bind(_)), Some(reply)) => {
                    // The ACK goes out only once the lease is on disk.
                    let done = self.inner.store.commit(change);
                    let (socket, p) = (socket.clone(), self.clone());
                    tokio::spawn(async move {
                        match committed(done).await {
                            Ok(()) => send(&socket, &p.inner.metrics, reply).await,
                            Err(e) => {
                                // A full queue is a flood, not a fault: no log line per packet.
                                if matches!(e, StoreError::Busy) {
                                    tracing::debug!(error = %e, "lease not queued: no ACK sent");
                                } else {
                                    tracing::error!(error = %e, "lease not stored: no ACK sent");
                                }
                                p.inner.metrics.commit_failed();
                            }
                        }
                    });
                }
                (change, reply) => {
                    if let Some(c) = change
                        && !self.inner.store.record(c)
                    {
                        tracing::warn!(mac = %req.mac, "store queue full: a release was not stored (the lease runs out instead)");
                    }
                    if let Some(r) = reply {
                        send(&socket, metrics, r).await;
                    }
                }
            }
        }
    }
}

async fn send(socket: &UdpSocket, metrics: &Metrics, (msg, dest): (dhcproto::v4::Message, Dest)) {
    let to = match dest {
        Dest::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
        Dest::Unicast(a) => a,
    };
    let kind = msg.opts().msg_type();
    let bytes = encode(&msg);
    if bytes.is_empty() {
        return; // logged by encode
    }
    match socket.send_to(&bytes, to).await {
        Ok(_) => {
            if let Some(k) = kind {
                metrics.sent(k);
            }
        }
        Err(e) => tracing::warn!(%to, error = %e, "sending a DHCP reply failed"),
    }
}

/// A UDP socket bound to `addr` on the network's interface. With `share`
/// (SO_REUSEADDR) another socket may hold the same port there too.
fn udp_socket(net: &Network, addr: SocketAddrV4, what: &str, share: bool) -> anyhow::Result<StdUdpSocket> {
    let ctx = || format!("{what} socket on {} ({addr})", net.interface);
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).with_context(ctx)?;
    s.set_reuse_address(share).with_context(ctx)?;
    s.set_broadcast(true).with_context(ctx)?;
    s.bind_device(Some(net.interface.as_bytes())).with_context(|| {
        format!(
            "{}: is there an interface {:?}? (`ip link` lists them)",
            ctx(),
            net.interface
        )
    })?;
    s.set_nonblocking(true).with_context(ctx)?;
    s.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse && !share && addr.port() == 67 {
            anyhow::anyhow!(
                "{}: port 67 is taken on {}: another DHCP server runs here (`ss -ulpn sport = :67` names it). \
                 Two servers handing out addresses on one network give clients conflicting leases: stop the other \
                 one, or set mode = \"proxy\" for this network to answer only PXE clients beside it",
                ctx(),
                net.interface
            )
        } else if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() == 67 {
            anyhow::anyhow!(
                "{}: port 67 is held on {} by a program that does not share it (SO_REUSEADDR;                  `ss -ulpn sport = :67` names it). Proxy mode needs the site's DHCP server elsewhere on the                  network, or one that shares the port on this host (dnsmasq does)",
                ctx(),
                net.interface
            )
        } else {
            anyhow::Error::new(e).context(format!(
                "{}: is {} configured on {}, and is the port free (run as root)?",
                ctx(),
                addr.ip(),
                net.interface
            ))
        }
    })?;
    Ok(s.into())
}

/// Port 67 is shared only in proxy mode, which is meant to run beside the
/// site's DHCP server, on this host too; a server-mode network refuses to
/// start next to another DHCP server instead of silently answering with it.
fn dhcp_socket(net: &Network, port: u16) -> anyhow::Result<UdpSocket> {
    let share = net.mode == Mode::Proxy;
    let s = udp_socket(net, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port), "DHCP", share)?;
    Ok(UdpSocket::from_std(s)?)
}

fn tftp_socket(net: &Network) -> anyhow::Result<StdUdpSocket> {
    udp_socket(net, SocketAddrV4::new(net.address.addr, 69), "TFTP", false)
}
