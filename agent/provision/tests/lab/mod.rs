//! The namespace lab of the provisioner's host tests: a server namespace
//! with a bridge, a client namespace with two veth ports on it, the
//! provisioner started in the first, and a small DHCP client for probes.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dhcproto::v4::{Decodable, Decoder, DhcpOption, Encodable, Encoder, Message, MessageType, Opcode};

pub const BIN: &str = env!("CARGO_BIN_EXE_debvisor-provision");
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const RESERVED_MAC: &str = "52:54:00:00:00:11";

/// Kills a child process when dropped.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn can_run(test: &str) -> bool {
    let missing: Vec<&str> = ["ip", "dhclient", "busybox", "curl", "tftp"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if !nix_is_root() {
        // CI runs as root: there a skip would hide the test.
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: needs root for network namespaces"
        );
        eprintln!("{test}: skipped: needs root for network namespaces");
        return false;
    }
    assert!(
        missing.is_empty(),
        "{test}: missing {missing:?}: run qa/setup-host.sh as root"
    );
    true
}

pub fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        || Path::new("/usr/sbin").join(tool).is_file()
        || Path::new("/sbin").join(tool).is_file()
}

pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two namespaces joined by a bridge; removed (with what runs in them) on drop.
pub struct Lab {
    pub srv: String,
    pub cli: String,
    dir: tempfile::TempDir,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let id = format!("{}{}", tag, std::process::id() % 100_000);
        let (srv, cli) = (format!("dvp-s-{id}"), format!("dvp-c-{id}"));
        let lab = Lab {
            srv,
            cli,
            dir: tempfile::tempdir().unwrap(),
        };
        let (s, c) = (lab.srv.as_str(), lab.cli.as_str());
        run(&["ip", "netns", "add", s]);
        run(&["ip", "netns", "add", c]);
        run(&[
            "ip",
            "-n",
            s,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        run(&["ip", "-n", s, "addr", "add", "198.51.100.1/24", "dev", "br0"]);
        run(&["ip", "-n", s, "link", "set", "br0", "up"]);
        for (i, mac) in [(0, "02:aa:00:00:00:01"), (1, RESERVED_MAC)] {
            let (port, client) = (format!("p{i}"), format!("cli{i}"));
            run(&[
                "ip", "-n", s, "link", "add", &port, "type", "veth", "peer", "name", &client, "netns", c,
            ]);
            run(&["ip", "-n", c, "link", "set", &client, "address", mac, "up"]);
            run(&["ip", "-n", s, "link", "set", &port, "master", "br0", "up"]);
        }
        run(&["ip", "-n", c, "link", "set", "lo", "up"]);
        run(&["ip", "-n", s, "link", "set", "lo", "up"]);
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the provisioner config and the TFTP root; returns the config path.
    pub fn config(&self) -> PathBuf {
        let root = self.path("tftp");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("snponly.efi"), payload()).unwrap();
        let cfg = self.path("provision.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"state_dir = "{state}"
[[network]]
interface = "br0"
address = "198.51.100.1/24"
mode = "server"
range = ["198.51.100.100", "198.51.100.250"]
router = "198.51.100.1"
lease_secs = 600

[[reservation]]
mac = "{RESERVED_MAC}"
ip = "198.51.100.20"
hostname = "node-a"

[tftp]
root = "{root}"
"#,
                state = self.path("state").display(),
                root = root.display()
            ),
        )
        .unwrap();
        cfg
    }

    /// Starts the provisioner in `srv` and waits until it serves.
    pub fn serve(&self, cfg: &Path) -> Reaper {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.srv, BIN, "serve", "--config"])
            .arg(cfg)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("provisioner: {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("serving") => return Reaper(child),
                Ok(_) => {}
                Err(e) => panic!(
                    "the provisioner did not start serving: {e} (exit {:?})",
                    child.try_wait()
                ),
            }
        }
    }

    /// Runs argv in the client namespace.
    pub fn cli(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.cli])
            .args(argv)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.srv, &self.cli] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// 300 KiB that no two offsets share, so a misplaced block shows.
pub fn payload() -> Vec<u8> {
    (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// The value of one sample of a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

pub fn stdout(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn client_socket(iface: &str) -> UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(iface.as_bytes())).unwrap();
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into()).unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s
}

/// One DISCOVER-OFFER-REQUEST-ACK; None on a timeout or a NAK.
pub fn dora(socket: &UdpSocket, mac: [u8; 6], xid: u32) -> Option<Ipv4Addr> {
    let u = Ipv4Addr::UNSPECIFIED;
    let send = |kind, extra: Vec<DhcpOption>| {
        let mut m = Message::new_with_id(xid, u, u, u, u, &mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in extra {
            m.opts_mut().insert(o);
        }
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        socket
            .send_to(&buf, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
            .unwrap();
    };
    let recv = |want: MessageType| -> Option<Message> {
        let mut buf = [0u8; 1500];
        loop {
            let (n, _) = socket.recv_from(&mut buf).ok()?;
            let m = Message::decode(&mut Decoder::new(&buf[..n])).ok()?;
            if m.opcode() == Opcode::BootReply && m.xid() == xid && m.chaddr() == mac {
                let kind = m.opts().msg_type()?;
                return (kind == want).then_some(m);
            }
        }
    };
    send(MessageType::Discover, vec![]);
    let offer = recv(MessageType::Offer)?;
    let server = match offer.opts().get(dhcproto::v4::OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => return None,
    };
    send(
        MessageType::Request,
        vec![
            DhcpOption::ServerIdentifier(server),
            DhcpOption::RequestedIpAddress(offer.yiaddr()),
        ],
    );
    recv(MessageType::Ack).map(|m| m.yiaddr())
}
