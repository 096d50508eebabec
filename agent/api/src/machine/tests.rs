use argon2::password_hash::PasswordHasher;

use super::*;

fn err(text: &str) -> String {
    MachineConfig::from_toml(text).expect_err("must be refused").to_string()
}

fn with_network(net: &str) -> String {
    format!("version = 1\n{net}")
}

#[test]
fn minimal_config_is_the_default() {
    let cfg = MachineConfig::from_toml("version = 1\n").unwrap();
    assert_eq!(cfg, MachineConfig::default());
    assert!(cfg.network.is_none());
    assert_eq!(cfg.role.kind, RoleKind::Standalone);
    assert_eq!(cfg.boot.gate_deadline_seconds, 300);
}

#[test]
fn health_defaults_are_the_documented_ones() {
    let h = MachineConfig::from_toml("version = 1\n[health]\n").unwrap().health;
    assert_eq!(
        (
            h.interval_seconds,
            h.timeout_seconds,
            h.history,
            h.disk_warn_percent,
            h.disk_fail_percent
        ),
        (10, 5, 20, 85, 95)
    );
    assert_eq!(
        (h.memory_min_available_mib, h.load_per_cpu_warn, h.cert_renew_days),
        (32, 4.0, 30)
    );
    assert!(h.dns_names.is_empty());
    assert_eq!(
        (h.failures_before_restart, h.restart_limit, h.restart_window_seconds),
        (3, 3, 600)
    );
    assert_eq!(h, HealthConfig::default());
}

#[test]
fn version_is_required_and_checked() {
    assert_eq!(
        err("[node]\nhostname = \"a\"\n"),
        "version is missing: add `version = 1` (the version this DebVisor reads)"
    );
    assert_eq!(
        err("version = 2\n"),
        "version = 2: unsupported; this DebVisor reads version = 1"
    );
    assert_eq!(
        err("version = \"1\"\n"),
        "version = \"1\": unsupported; this DebVisor reads version = 1"
    );
}

#[test]
fn unknown_keys_are_refused_everywhere() {
    let e = err("version = 1\n[node]\nhostnme = \"x\"\n");
    assert!(e.contains("hostnme") && e.contains("line 3"), "{e}");
    let e = err(&with_network(
        "[[network.vlans]]\nname = \"vlan100\"\nid = 100\nparent = \"eth0\"\ndhcp = true\n",
    ));
    assert!(e.contains("unknown field `dhcp`") && e.contains("line 6"), "{e}");
    let e = err(&with_network(
        "[[network.interfaces]]\nname = \"eth0\"\n[[network.interfaces.routes]]\ndestination = \"10.0.0.0/8\"\ngateway = \"10.0.0.1\"\nweight = 3\n",
    ));
    assert!(e.contains("unknown field `weight`"), "{e}");
    let e = err("version = 1\n[health]\ninterval = 3\n");
    assert!(e.contains("unknown field `interval`"), "{e}");
    let e = err("version = 1\nextra = true\n");
    assert!(e.contains("unknown field `extra`"), "{e}");
}

#[test]
fn type_errors_name_the_key() {
    let e = err("version = 1\n[health]\ninterval_seconds = \"ten\"\n");
    assert!(e.contains("interval_seconds") && e.contains("line 3"), "{e}");
    let e = err("version = 1\n[role]\nkind = \"master\"\n");
    assert!(e.contains("unknown variant `master`") && e.contains("worker"), "{e}");
}

#[test]
fn vlan_id_out_of_range_names_key_and_value() {
    let e = err(&with_network(
        "[[network.vlans]]\nname = \"v\"\nid = 4095\nparent = \"eth0\"\n",
    ));
    assert_eq!(e, "network.vlans[0].id = 4095: a VLAN id is 1-4094");
    let e = err(&with_network(
        "[[network.vlans]]\nname = \"v\"\nid = 0\nparent = \"eth0\"\n",
    ));
    assert_eq!(e, "network.vlans[0].id = 0: a VLAN id is 1-4094");
}

#[test]
fn addresses_gateways_and_routes_are_checked() {
    let e = err(&with_network(
        "[[network.interfaces]]\nname = \"eth0\"\naddresses = [\"10.0.0.5\"]\n",
    ));
    assert!(
        e.starts_with("network.interfaces[0].addresses[0] = \"10.0.0.5\": an address with prefix"),
        "{e}"
    );
    let e = err(&with_network(
        "[[network.interfaces]]\nname = \"eth0\"\naddresses = [\"10.0.0.5/33\"]\n",
    ));
    assert!(
        e.starts_with("network.interfaces[0].addresses[0] = \"10.0.0.5/33\""),
        "{e}"
    );
    let e = err(&with_network(
        "[[network.interfaces]]\nname = \"eth0\"\ngateway4 = \"2001:db8::1\"\n",
    ));
    assert_eq!(e, "network.interfaces[0].gateway4 = \"2001:db8::1\": an IPv4 address");
    let e = err(&with_network(
        "[[network.interfaces]]\nname = \"eth0\"\n[[network.interfaces.routes]]\ndestination = \"10.1.0.0/16\"\ngateway = \"fe80::1\"\n",
    ));
    assert_eq!(
        e,
        "network.interfaces[0].routes[0].gateway = \"fe80::1\": of the same IP family as the destination"
    );
    let e = err(&with_network("[[network.interfaces]]\nname = \"eth0\"\nmtu = 20\n"));
    assert_eq!(e, "network.interfaces[0].mtu = 20: an MTU of 68-65535 bytes");
    let ok = with_network(
        "[[network.interfaces]]\nname = \"eth0\"\ndhcp4 = true\naddresses = [\"10.0.0.5/24\", \"2001:db8::5/64\"]\ngateway6 = \"2001:db8::1\"\n",
    );
    MachineConfig::from_toml(&ok).expect("static and DHCP may coexist");
}

#[test]
fn interface_needs_exactly_one_match() {
    let e = err(&with_network("[[network.interfaces]]\ndhcp4 = true\n"));
    assert!(
        e.starts_with("network.interfaces[0] = { ... }: set exactly one of name"),
        "{e}"
    );
    let e = err(&with_network(
        "[[network.interfaces]]\nname = \"eth0\"\nmac = \"52:54:00:12:34:56\"\n",
    ));
    assert!(e.starts_with("network.interfaces[0] = { ... }"), "{e}");
    let e = err(&with_network("[[network.interfaces]]\nmac = \"52:54:00:12:34\"\n"));
    assert!(e.starts_with("network.interfaces[0].mac = \"52:54:00:12:34\""), "{e}");
    let e = err(&with_network("[[network.interfaces]]\nname = \"eth0/../x\"\n"));
    assert!(
        e.starts_with("network.interfaces[0].name = \"eth0/../x\": a kernel interface name"),
        "{e}"
    );
}

#[test]
fn references_between_links_are_checked() {
    let dup = "[[network.interfaces]]\nname = \"eth0\"\n[[network.bridges]]\nname = \"eth0\"\n";
    assert_eq!(
        err(&with_network(dup)),
        "network.bridges[0].name = \"eth0\": the name is already used by network.interfaces[0].name"
    );
    let twice = "[[network.bonds]]\nname = \"bond0\"\nmode = \"802.3ad\"\nmembers = [\"eth0\", \"eth1\"]\n\
                 [[network.bonds]]\nname = \"bond1\"\nmode = \"balance-rr\"\nmembers = [\"eth1\"]\n";
    assert_eq!(
        err(&with_network(twice)),
        "network.bonds[1].members[0] = \"eth1\": already a member at network.bonds[0].members[1]; \
         a link joins one bond or bridge"
    );
    let bridge_in_bond = "[[network.bridges]]\nname = \"br0\"\n[[network.bonds]]\nname = \"bond0\"\nmode = \"broadcast\"\nmembers = [\"br0\"]\n";
    assert_eq!(
        err(&with_network(bridge_in_bond)),
        "network.bonds[0].members[0] = \"br0\": a bridge cannot be a member of a bond or bridge"
    );
    let bad_parent = "[[network.vlans]]\nname = \"v1\"\nid = 1\nparent = \"a very long name!\"\n";
    assert!(err(&with_network(bad_parent)).starts_with("network.vlans[0].parent = \"a very long name!\""));
    let empty = "[[network.bonds]]\nname = \"bond0\"\nmode = \"active-backup\"\nmembers = []\n";
    assert_eq!(
        err(&with_network(empty)),
        "network.bonds[0].members = []: a bond needs at least one member"
    );
    let e = err(&with_network(
        "[[network.bonds]]\nname = \"bond0\"\nmode = \"lacp\"\nmembers = [\"eth0\"]\n",
    ));
    assert!(e.contains("unknown variant `lacp`") && e.contains("802.3ad"), "{e}");
}

#[test]
fn node_values_are_checked() {
    assert!(err("version = 1\n[node]\nhostname = \"-bad\"\n").starts_with("node.hostname = \"-bad\": an RFC 1123"));
    assert!(err("version = 1\n[node]\nhostname = \"a_b\"\n").starts_with("node.hostname = \"a_b\""));
    assert!(
        err("version = 1\n[node]\ntimezone = \"../etc/passwd\"\n").starts_with("node.timezone = \"../etc/passwd\"")
    );
    assert!(err("version = 1\n[node]\nntp = [\"pool ntp\"]\n").starts_with("node.ntp[0] = \"pool ntp\""));
    let ok = "version = 1\n[node]\nhostname = \"node-1.example.com\"\ntimezone = \"America/Argentina/Buenos_Aires\"\n\
              ntp = [\"pool.ntp.org\", \"2001:db8::123\"]\n";
    MachineConfig::from_toml(ok).unwrap();
    MachineConfig::from_toml("version = 1\n[node]\ntimezone = \"Etc/GMT+5\"\n").unwrap();
}

#[test]
fn admin_values_are_checked() {
    let hash = argon2::Argon2::default()
        .hash_password_with_salt(b"secret", b"saltsaltsaltsalt")
        .unwrap()
        .to_string();
    let ok = format!("version = 1\n[admin]\npassword_hash = '{hash}'\n");
    assert_eq!(
        MachineConfig::from_toml(&ok).unwrap().admin.password_hash.as_deref(),
        Some(hash.as_str())
    );
    let e = err("version = 1\n[admin]\npassword_hash = \"hunter2\"\n");
    assert!(
        e.starts_with("admin.password_hash = \"hunter2\": an argon2id PHC string"),
        "{e}"
    );
    let argon2i = hash.replacen("$argon2id$", "$argon2i$", 1);
    assert!(err(&format!("version = 1\n[admin]\npassword_hash = '{argon2i}'\n")).starts_with("admin.password_hash"));

    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICRFRfS0d9jd0A9uawfS85b1ZlQOJnm+JghzcXpvN8Ix me@host";
    MachineConfig::from_toml(&format!("version = 1\n[admin]\nssh_authorized_keys = [\"{key}\"]\n")).unwrap();
    let wrong_type = key.replacen("ssh-ed25519", "ssh-rsa", 1);
    let e = err(&format!(
        "version = 1\n[admin]\nssh_authorized_keys = [\"{wrong_type}\"]\n"
    ));
    assert!(e.starts_with("admin.ssh_authorized_keys[0] = \"ssh-rsa AAAA"), "{e}");
    let two_lines = format!("{key}\\nssh-ed25519 AAAA");
    let e = err(&format!(
        "version = 1\n[admin]\nssh_authorized_keys = [\"{two_lines}\"]\n"
    ));
    assert!(e.starts_with("admin.ssh_authorized_keys[0] = "), "{e}");
    let e = err("version = 1\n[admin]\nssh_authorized_keys = [\"ssh-dss AAAAB3NzaC1kc3MAAACB\"]\n");
    assert!(e.starts_with("admin.ssh_authorized_keys[0] = \"ssh-dss"), "{e}");
}

#[test]
fn worker_needs_cluster_settings() {
    assert_eq!(
        err("version = 1\n[role]\nkind = \"worker\"\n"),
        "role.kind = \"worker\": a worker needs [cluster] with controller = \"host:port\" and join_token"
    );
    let base = "version = 1\n[role]\nkind = \"worker\"\n[cluster]\n";
    let e = err(&format!(
        "{base}controller = \"ctl\"\njoin_token = \"0123456789abcdef\"\n"
    ));
    assert!(e.starts_with("cluster.controller = \"ctl\": host:port"), "{e}");
    let e = err(&format!("{base}controller = \"ctl:7443\"\njoin_token = \"short\"\n"));
    assert!(e.starts_with("cluster.join_token = \"short\""), "{e}");
    MachineConfig::from_toml(&format!(
        "{base}controller = \"[2001:db8::1]:7443\"\njoin_token = \"0123456789abcdef\"\n"
    ))
    .unwrap();
    let e = err("version = 1\n[cluster]\njoin_token = \"0123456789abcdef\"\n");
    assert!(e.contains("missing field `controller`"), "{e}");
}

#[test]
fn services_health_alerts_and_boot_are_checked() {
    let e = err("version = 1\n[services]\nsupervise = [\"libvirtd\"]\n");
    assert!(
        e.starts_with("services.supervise[0] = \"libvirtd\": Invalid unit name"),
        "{e}"
    );
    let e = err("version = 1\n[services]\nsupervise = [\"a.service\", \"a.service\"]\n");
    assert_eq!(e, "services.supervise[1] = \"a.service\": listed twice");
    assert_eq!(
        err("version = 1\n[health]\ntimeout_seconds = 10\n"),
        "health.timeout_seconds = 10: at least 1 and below interval_seconds (10)"
    );
    assert_eq!(
        err("version = 1\n[health]\ndisk_warn_percent = 95\n"),
        "health.disk_warn_percent = 95: at least 1 and below disk_fail_percent (95)"
    );
    assert_eq!(
        err("version = 1\n[health]\ndisk_fail_percent = 101\n"),
        "health.disk_fail_percent = 101: at most 100"
    );
    assert_eq!(
        err("version = 1\n[health]\ninterval_seconds = 0\ntimeout_seconds = 0\n"),
        "health.interval_seconds = 0: at least 1 second"
    );
    assert_eq!(
        err("version = 1\n[health]\nload_per_cpu_warn = -1.0\n"),
        "health.load_per_cpu_warn = -1: a positive number"
    );
    let e = err("version = 1\n[[alerts.webhooks]]\nurl = \"ftp://x/\"\n");
    assert_eq!(
        e,
        "alerts.webhooks[0].url = \"ftp://x/\": an http:// or https:// URL with a host"
    );
    let hook =
        MachineConfig::from_toml("version = 1\n[[alerts.webhooks]]\nurl = \"http://10.0.2.2:8080/h\"\n").unwrap();
    assert_eq!(
        (hook.alerts.webhooks[0].retries, hook.alerts.webhooks[0].timeout_seconds),
        (5, 5)
    );
    assert_eq!(
        err("version = 1\n[boot]\ngate_deadline_seconds = 10\n"),
        "boot.gate_deadline_seconds = 10: at least 30 seconds, so that a healthy boot has time to settle"
    );
}

#[test]
fn digest_follows_content_not_formatting() {
    let a = MachineConfig::from_toml("version = 1\n[node]\nhostname = \"a\"\n").unwrap();
    let b = MachineConfig::from_toml("# comment\nversion = 1\n\n[node]\n  hostname = 'a'\n").unwrap();
    let c = MachineConfig::from_toml("version = 1\n[node]\nhostname = \"b\"\n").unwrap();
    assert_eq!(a.digest(), b.digest());
    assert_ne!(a.digest(), c.digest());
    assert_eq!(a.digest().len(), 12);
    assert_eq!(MachineConfig::from_toml(&a.to_toml()).unwrap(), a);
    assert_eq!(
        MachineConfig::from_toml(&MachineConfig::default().to_toml()).unwrap(),
        MachineConfig::default()
    );
}

#[test]
fn install_disk_takes_what_the_installer_takes() {
    for disk in [
        "/dev/disk/by-id/virtio-DVDISK01",
        "/dev/disk/by-id/nvme-Samsung_SSD_980_1TB_S64ANS0T:1",
        "empty:16",
    ] {
        let cfg = MachineConfig::from_toml(&format!("version = 1\n[install]\ndisk = \"{disk}\"\n")).unwrap();
        // It survives the canonical form (the installed node keeps it).
        assert_eq!(MachineConfig::from_toml(&cfg.to_toml()).unwrap(), cfg);
        assert_eq!(cfg.install.unwrap().disk, disk);
    }
    for (disk, needle) in [
        ("/dev/sda", "a disk by id"),
        ("/dev/disk/by-id/", "a disk by id"),
        ("/dev/disk/by-id/../sda", "a disk by id"),
        ("/dev/disk/by-id/a b", "a disk by id"),
        ("/dev/disk/by-id/x;reboot", "a disk by id"),
        ("empty:", "from 1 to 9999999"),
        ("empty:0", "from 1 to 9999999"),
        ("empty:12x", "from 1 to 9999999"),
        ("empty:99999999", "from 1 to 9999999"),
    ] {
        let e = err(&format!("version = 1\n[install]\ndisk = \"{disk}\"\n"));
        assert!(e.starts_with("install.disk = "), "{disk}: {e}");
        assert!(e.contains(needle), "{disk}: {e}");
    }
    let e = err("version = 1\n[install]\ndisk = \"empty:8\"\nwipe = true\n");
    assert!(e.contains("wipe"), "{e}");
    let e = err("version = 1\n[install]\n");
    assert!(e.contains("disk"), "{e}");
}
