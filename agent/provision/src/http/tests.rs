use std::path::Path as FsPath;

use axum::body::Body;
use http_body_util::BodyExt;

use super::*;
use crate::dhcp::leases::Lease;
use crate::dhcp::respond::Change;
use crate::profiles::{Group, InstallDisk, Selector};
use crate::store::committed;

const SUM_ROOT: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const SECRET: &str = "sentinel-7f3a-must-never-be-served";
const SUM_DISK: &str = "2222222222222222222222222222222222222222222222222222222222222222";

struct Lab {
    _dir: tempfile::TempDir,
    app: Router,
    store: Store,
}

async fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("images/0.1.0");
    std::fs::create_dir_all(&img).unwrap();
    for f in ["vmlinuz", "initrd.img", "install.img"] {
        std::fs::write(img.join(f), f.as_bytes()).unwrap();
    }
    std::fs::write(img.join("rootfs.squashfs"), b"hsqs-and-more").unwrap();
    std::fs::write(
        img.join("SHA256SUMS"),
        format!("{SUM_ROOT}  rootfs.squashfs\n{SUM_DISK}  install.img\n"),
    )
    .unwrap();
    std::fs::write(d.join("secret"), SECRET).unwrap();
    std::fs::create_dir_all(d.join("ipxe")).unwrap();
    std::fs::write(d.join("ipxe/snponly.efi"), b"MZ").unwrap();
    let cfg = Config::parse(
        &format!(
            "state_dir = \"{s}\"\n[[network]]\ninterface = \"prov0\"\naddress = \"198.51.100.1/24\"\nmode = \"server\"\n\
             range = [\"198.51.100.100\", \"198.51.100.199\"]\n[[reservation]]\nmac = \"52:54:00:00:00:11\"\n\
             ip = \"198.51.100.20\"\nhostname = \"node-a\"\n[tftp]\nroot = \"{s}/ipxe\"\n",
            s = d.display()
        ),
        FsPath::new("t"),
    )
    .unwrap();
    let store = Store::open(&d.join("state/p.db")).await.unwrap();
    store
        .put_profile(&Profile {
            name: "live".into(),
            mode: BootMode::Live,
            image: "0.1.0".into(),
            kernel_args: vec!["console=ttyS0".into()],
            config: "[node]\nhostname = \"{{hostname}}\"\n".into(),
            install_disk: None,
        })
        .await
        .unwrap();
    store
        .put_profile(&Profile {
            name: "install".into(),
            mode: BootMode::Install,
            image: "0.1.0".into(),
            kernel_args: vec![],
            config: "[node]\nhostname = \"{{hostname}}\"\n# {{mac}} {{profile}}\n".into(),
            install_disk: Some(InstallDisk::ById("/dev/disk/by-id/virtio-DVDISK01".into())),
        })
        .await
        .unwrap();
    for (name, profile, mac) in [("all", "live", None), ("node-a", "install", Some("52:54:00:00:00:11"))] {
        store
            .put_group(&Group {
                name: name.into(),
                profile: profile.into(),
                selector: Selector {
                    mac: mac.map(|m| m.parse().unwrap()),
                    ..Selector::default()
                },
            })
            .await
            .unwrap();
    }
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let state = HttpState {
        base: "http://198.51.100.1:8080".into(),
        cfg: Arc::new(cfg),
        mode: Mode::Server,
        store: store.clone(),
        metrics,
        registry: Some(Arc::new(registry)),
    };
    Lab {
        _dir: dir,
        app: router(Arc::new(state)),
        store,
    }
}

/// Stores a lease of `ip` for `mac`, as the DHCP server does before its ACK.
async fn bind(l: &Lab, mac: &str, ip: &str) {
    let lease = Lease {
        mac: mac.parse().unwrap(),
        ip: ip.parse().unwrap(),
        expires: u64::MAX / 4,
        hostname: None,
    };
    committed(l.store.commit(Change::Bind(lease))).await.unwrap();
}

/// Another host on the provisioning network.
const OTHER: &str = "198.51.100.150:5000";

/// The reservation's address of 52:54:00:00:00:11 in [`lab`].
const NODE_A: &str = "198.51.100.20:40000";

async fn call(app: &Router, method: &str, uri: &str, range: Option<&str>) -> (StatusCode, String) {
    call_from(app, NODE_A, method, uri, range).await
}

/// A request from `peer` (what `into_make_service_with_connect_info` gives
/// the handlers).
async fn call_from(app: &Router, peer: &str, method: &str, uri: &str, range: Option<&str>) -> (StatusCode, String) {
    let peer: SocketAddr = peer.parse().unwrap();
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .extension(ConnectInfo(peer));
    if let Some(r) = range {
        req = req.header(header::RANGE, r);
    }
    let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_chain_leads_each_machine_to_its_profile() {
    let l = lab().await;
    let (st, body) = call(&l.app, "GET", "/boot.ipxe", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        body.starts_with("#!ipxe\nchain http://198.51.100.1:8080/ipxe?mac=${mac:hexhyp}&uuid=${uuid}"),
        "{body}"
    );

    let (st, live) = call(
        &l.app,
        "GET",
        "/ipxe?mac=52-54-00-00-00-22&uuid=&arch=x86_64&platform=efi",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{live}");
    assert!(
        live.contains(
            "kernel http://198.51.100.1:8080/images/0.1.0/vmlinuz initrd=initrd.img boot=debvisor ip=dhcp \
             BOOTIF=01-52-54-00-00-00-22 "
        ),
        "{live}"
    );
    assert!(
        live.contains(&format!(
            "debvisor.live=http://198.51.100.1:8080/images/0.1.0/rootfs.squashfs debvisor.live_sha256={SUM_ROOT}"
        )),
        "{live}"
    );
    assert!(
        live.contains(" console=ttyS0\ninitrd http://198.51.100.1:8080/images/0.1.0/initrd.img\nboot\n"),
        "{live}"
    );
    assert!(!live.contains("install"), "{live}");

    let (st, inst) = call(
        &l.app,
        "GET",
        "/ipxe?mac=52-54-00-00-00-11&uuid=5C3A8E2E-0F4E-4C1A-9D0E-3F1B2A4C5D6E&arch=x86_64",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{inst}");
    assert!(
        inst.contains(&format!(
            "debvisor.install=http://198.51.100.1:8080/images/0.1.0/install.img debvisor.install_sha256={SUM_DISK}"
        )),
        "{inst}"
    );
    assert!(
        inst.contains("debvisor.install_disk=/dev/disk/by-id/virtio-DVDISK01"),
        "{inst}"
    );

    let (st, cfg) = call(&l.app, "GET", "/machines/52-54-00-00-00-11/config", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(cfg, "[node]\nhostname = \"node-a\"\n# 52:54:00:00:00:11 install\n");

    // Once installed, the machine is sent on to its disk, not installed again.
    let (st, _) = call(&l.app, "POST", "/machines/52-54-00-00-00-11/installed", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, again) = call(&l.app, "GET", "/ipxe?mac=52-54-00-00-00-11", None).await;
    assert!(
        again.contains("is installed") && again.trim_end().ends_with("exit 1"),
        "{again}"
    );
    // A machine never seen cannot report an install: it has no address
    // here, and with a lease but no boot script asked for, nothing is known.
    let (st, _) = call(&l.app, "POST", "/machines/52-54-00-00-00-99/installed", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    bind(&l, "52:54:00:00:00:99", "198.51.100.199").await;
    let uri = "/machines/52-54-00-00-00-99/installed";
    let (st, body) = call_from(&l.app, "198.51.100.199:5000", "POST", uri, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn configs_and_install_reports_come_only_from_the_machines_address() {
    let l = lab().await;
    let (st, _) = call(&l.app, "GET", "/ipxe?mac=52-54-00-00-00-11", None).await;
    assert_eq!(st, StatusCode::OK);
    // Another host on the network.
    for (method, uri) in [
        ("GET", "/machines/52-54-00-00-00-11/config"),
        ("POST", "/machines/52-54-00-00-00-11/installed"),
    ] {
        let (st, body) = call_from(&l.app, OTHER, method, uri, None).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{method} {uri}: {body}");
        assert!(body.contains("has address 198.51.100.20"), "{body}");
    }
    let (_, again) = call(&l.app, "GET", "/ipxe?mac=52-54-00-00-00-11", None).await;
    assert!(
        !again.contains("is installed"),
        "a refused report changed nothing: {again}"
    );
    // A MAC with neither a lease nor a reservation.
    let uri = "/machines/52-54-00-00-00-22/config";
    let (st, body) = call_from(&l.app, OTHER, "GET", uri, None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("no lease or reservation"), "{body}");
    // With a lease, from the leased address.
    bind(&l, "52:54:00:00:00:22", "198.51.100.150").await;
    let (st, cfg) = call_from(&l.app, OTHER, "GET", uri, None).await;
    assert_eq!(st, StatusCode::OK, "{cfg}");
    assert_eq!(cfg, "[node]\nhostname = \"node-525400000022\"\n");
    // The same address as a dual-stack listener reports it.
    let (st, mapped) = call_from(&l.app, "[::ffff:198.51.100.150]:40000", "GET", uri, None).await;
    assert_eq!(st, StatusCode::OK, "{mapped}");
    assert_eq!(mapped, cfg);
}

#[tokio::test]
async fn files_are_served_by_name_and_nothing_else() {
    let l = lab().await;
    let (st, body) = call(&l.app, "GET", "/images/0.1.0/rootfs.squashfs", Some("bytes=0-3")).await;
    assert_eq!((st, body.as_str()), (StatusCode::PARTIAL_CONTENT, "hsqs"));
    let (st, body) = call(&l.app, "GET", "/ipxe/snponly.efi", None).await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "MZ"));
    for uri in [
        "/images/0.1.0/secret",
        "/images/0.1.0/..%2F..%2Fsecret",
        "/images/..%2F..%2F/vmlinuz",
        "/images/../vmlinuz",
        "/ipxe/..%2Fsecret",
        "/ipxe/%2Fetc%2Fpasswd",
    ] {
        let (st, body) = call(&l.app, "GET", uri, None).await;
        assert!(
            st == StatusCode::FORBIDDEN || st == StatusCode::NOT_FOUND,
            "{uri}: {st} {body}"
        );
        assert!(!body.contains(SECRET), "{uri} leaked the file outside the image set");
    }
    let (st, _) = call(&l.app, "GET", "/images/0.2.0/vmlinuz", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_queries_say_what_is_wrong() {
    let l = lab().await;
    let (st, body) = call(&l.app, "GET", "/ipxe?mac=zz", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("not a MAC address"), "{body}");
    let (st, body) = call(&l.app, "GET", "/ipxe?mac=52-54-00-00-00-22&uuid=x'", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("not a UUID"), "{body}");
    let (st, body) = call(&l.app, "GET", "/ipxe?mac=52-54-00-00-00-22&platform=efi%0Ashell", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("expected pcbios or efi"), "{body}");
    let (_, metrics) = call(&l.app, "GET", "/metrics", None).await;
    assert!(
        metrics.contains("provision_http_requests_total{result=\"bad_request\"} 3"),
        "{metrics}"
    );
}
