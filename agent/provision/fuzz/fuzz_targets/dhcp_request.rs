//! Any datagram on the DHCP ports: parse, answer (server and proxy mode,
//! both ports, one lease table across inputs), encode the reply. Nothing may
//! panic; a malformed datagram is an `Err` from `Request::parse`.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use debvisor_provision::Config;
use debvisor_provision::dhcp::leases::LeaseTable;
use debvisor_provision::dhcp::packet::{Request, encode};
use debvisor_provision::dhcp::respond::{Port, respond};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
state_dir = "/nonexistent"
[[network]]
interface = "prov0"
address = "198.51.100.1/24"
mode = "server"
range = ["198.51.100.100", "198.51.100.110"]
router = "198.51.100.1"
dns = ["198.51.100.1"]
domain = "lab.example"
[[network]]
interface = "site0"
address = "203.0.113.5/24"
mode = "proxy"
[[reservation]]
mac = "52:54:00:00:00:11"
ip = "198.51.100.20"
hostname = "node-a"
[boot]
efi_arm64 = "ipxe-arm64.efi"
"#;

struct State {
    cfg: Config,
    table: Mutex<LeaseTable>,
    now: Mutex<u64>,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let cfg = Config::parse(CONFIG, Path::new("fuzz.toml")).expect("the fuzz config is valid");
        let reserved: Vec<_> = cfg.reservations.iter().map(|r| (r.ip, r.mac)).collect();
        State {
            table: Mutex::new(LeaseTable::new([], reserved)),
            cfg,
            now: Mutex::new(1_000_000),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = Request::parse(data) else { return };
    let s = state();
    let mut now = s.now.lock().unwrap();
    *now += 7; // offers and leases expire as inputs go by
    let mut table = s.table.lock().unwrap();
    let src = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 150), 68);
    for net in &s.cfg.networks {
        for port in [Port::Dhcp, Port::Pxe] {
            let out = respond(&s.cfg, net, port, &req, src, &mut table, *now);
            if let Some((msg, _)) = out.reply {
                let bytes = encode(&msg);
                assert!(bytes.len() >= 300, "replies are padded to the BOOTP minimum");
                Request::parse(&bytes).expect_err("a reply is never taken for a request");
            }
        }
    }
});
