use super::*;

const GOOD: &str = r#"
state_dir = "/tmp/x"
[[network]]
interface = "prov0"
address = "198.51.100.1/24"
mode = "server"
range = ["198.51.100.100", "198.51.100.199"]
router = "198.51.100.1"
dns = ["198.51.100.1"]
[[network]]
interface = "site0"
address = "203.0.113.5/24"
mode = "proxy"
[[reservation]]
mac = "52:54:00:00:00:11"
ip = "198.51.100.20"
hostname = "node-a"
"#;

fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::parse(s, Path::new("test.toml"))
}

fn err(s: &str) -> String {
    parse(s).unwrap_err().to_string()
}

#[test]
fn a_good_config_parses() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.networks.len(), 2);
    assert_eq!(c.networks[0].lease_secs, 3600);
    assert_eq!(c.networks[0].address.mask(), Ipv4Addr::new(255, 255, 255, 0));
    assert_eq!(
        c.reservation("52:54:00:00:00:11".parse().unwrap())
            .unwrap()
            .hostname
            .as_deref(),
        Some("node-a")
    );
    assert_eq!(c.boot.efi_x64, "snponly.efi");
}

#[test]
fn bad_values_are_named() {
    let cases = [
        (GOOD.replace("prov0", "a/b"), "network[0].interface"),
        (GOOD.replace("198.51.100.1/24", "198.51.100.1/33"), "prefix length"),
        (
            GOOD.replace("\"198.51.100.199\"", "\"198.51.101.199\""),
            "network[0].range",
        ),
        (
            GOOD.replace("\"198.51.100.100\"", "\"198.51.100.1\""),
            "server's own address",
        ),
        (
            GOOD.replace(
                "mode = \"proxy\"",
                "mode = \"proxy\"\nrange = [\"203.0.113.10\", \"203.0.113.20\"]",
            ),
            "proxy mode",
        ),
        (GOOD.replace("52:54:00:00:00:11", "52:54:00:00:00"), "not a MAC address"),
        (
            GOOD.replace("ip = \"198.51.100.20\"", "ip = \"203.0.113.20\""),
            "no server-mode network",
        ),
        (GOOD.replace("node-a", "node_a"), "reservation[0].hostname"),
        (GOOD.replace("mode = \"server\"", "mode = \"relay\""), "unknown variant"),
        (GOOD.replace("router =", "routr ="), "unknown field"),
        (format!("{GOOD}[boot]\nbios = \"../../etc/passwd\"\n"), "boot.bios"),
        (GOOD.replace("site0", "prov0"), "served twice"),
        (GOOD.replace("203.0.113.5/24", "198.51.100.7/24"), "overlaps"),
        (
            GOOD.replace("\"198.51.100.199\"", "\"198.51.100.255\""),
            "network or broadcast",
        ),
        (
            GOOD.replace("198.51.100.1/24", "198.51.100.1/8")
                .replace("\"198.51.100.199\"", "\"198.60.0.0\""),
            "more than 131072",
        ),
        (
            GOOD.replace("ip = \"198.51.100.20\"", "ip = \"198.51.100.0\""),
            "the network or the broadcast",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "{want:?} not in {e:?}");
    }
    assert!(err("state_dir = \"/x\"\n").contains("no network to serve"));
}
