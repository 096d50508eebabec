//! Tests of the node PKI.

use super::*;

use rustls::client::danger::ServerCertVerifier;
use std::os::unix::fs::PermissionsExt;

const ADDRS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
];

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The DER of the first certificate in a PEM string.
fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// DER of the extended key usage OIDs id-kp-serverAuth and id-kp-clientAuth.
const SERVER_AUTH: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const CLIENT_AUTH: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Verifies the server chain for `name` as a client with the bundle's CA would.
fn verify_server(chain_pem: &str, ca_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(CertificateDer::pem_slice_iter(ca_pem.as_bytes()).map(Result::unwrap));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let chain: Vec<_> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn writes_the_admin_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path().join("pki"));
    let state = pki.ensure_with("node1", &ADDRS).unwrap();
    assert!(state.created && state.admin_bundle_created);

    let path = dir.path().join("pki/clients/admin.toml");
    assert_eq!(pki.admin_bundle_path(), path);
    assert_eq!(mode(&path), 0o600);
    let bundle = ClientConfig::load(&path).unwrap();
    bundle.validate().unwrap();
    assert_eq!(bundle.context, "node1");
    let ctx = bundle.current().unwrap();
    assert_eq!(ctx.endpoints, ["192.0.2.10:7443", "[2001:db8::1]:7443"]);
    assert_eq!(ctx.server_name, SERVER_NAME);
    let ca_pem = std::fs::read_to_string(dir.path().join("pki/ca.pem")).unwrap();
    assert_eq!(ctx.ca, ca_pem);

    // The client certificate: admin, clientAuth only, chains to the CA,
    // good for a year but not two.
    let crt = der(&ctx.crt);
    assert_eq!(debvisor_api::tls::common_name(&crt).as_deref(), Some("admin"));
    assert!(contains(&crt, CLIENT_AUTH) && !contains(&crt, SERVER_AUTH));
    verify_client(&ctx.crt, &ca_pem, SystemTime::now()).unwrap();
    verify_client(&ctx.crt, &ca_pem, SystemTime::now() + Duration::from_secs(364 * 86400)).unwrap();
    verify_client(&ctx.crt, &ca_pem, SystemTime::now() + Duration::from_secs(366 * 86400)).unwrap_err();

    // The server certificate: serverAuth, the stable name and the hostname.
    let chain = std::fs::read_to_string(dir.path().join("pki/server.pem")).unwrap();
    assert!(contains(&der(&chain), SERVER_AUTH) && !contains(&der(&chain), CLIENT_AUTH));
    for name in [SERVER_NAME, "node1", "localhost", "127.0.0.1"] {
        verify_server(&chain, &ca_pem, name).unwrap();
    }
    assert!(verify_server(&chain, &ca_pem, "other").is_err());
    // The client certificate is no server certificate, nor the reverse.
    assert!(verify_client(&chain, &ca_pem, SystemTime::now()).is_err());
}

#[tokio::test]
async fn bundle_connects_to_the_node_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.ensure_with("node1", &ADDRS).unwrap();
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    let server = debvisor_api::tls::server_config(&read("server.pem"), &read("server.key"), &read("ca.pem")).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let cn = debvisor_api::tls::common_name(&tls.get_ref().1.peer_certificates().unwrap()[0]);
        (cn, tls)
    });
    let bundle = ClientConfig::load(pki.admin_bundle_path()).unwrap();
    let ctx = bundle
        .current()
        .unwrap()
        .clone()
        .with_endpoint_override(&addr.to_string())
        .unwrap();
    let _channel = debvisor_api::tls::connect_mtls(&ctx).await.unwrap();
    let (cn, _tls) = served.await.unwrap();
    assert_eq!(cn.as_deref(), Some("admin"));
}

#[test]
fn second_run_keeps_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.ensure_with("node1", &ADDRS).unwrap();
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    let before: Vec<_> = ["ca.pem", "ca.key", "server.pem", "server.key", "clients/admin.toml"]
        .map(read)
        .into();
    // Another hostname and no addresses: nothing changes.
    let state = pki.ensure_with("renamed", &[]).unwrap();
    assert!(!state.created && !state.admin_bundle_created);
    let after: Vec<_> = ["ca.pem", "ca.key", "server.pem", "server.key", "clients/admin.toml"]
        .map(read)
        .into();
    assert_eq!(before, after);
}

#[test]
fn bundle_without_endpoints_gets_them_later() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    assert!(pki.ensure_with("node1", &[]).unwrap().admin_bundle_created);
    let first = ClientConfig::load(pki.admin_bundle_path()).unwrap();
    assert!(first.current().unwrap().endpoints.is_empty());
    assert!(!pki.ensure_with("node1", &ADDRS[..1]).unwrap().admin_bundle_created);
    let second = ClientConfig::load(pki.admin_bundle_path()).unwrap();
    let ctx = second.current().unwrap();
    assert_eq!(ctx.endpoints, ["192.0.2.10:7443"]);
    assert_eq!(ctx.crt, first.current().unwrap().crt);
}

#[test]
fn missing_or_foreign_bundle_is_replaced_not_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.ensure_with("node1", &ADDRS).unwrap();
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();

    std::fs::remove_file(pki.admin_bundle_path()).unwrap();
    assert!(pki.ensure_with("node1", &ADDRS).unwrap().admin_bundle_created);

    // A bundle from another node: its certificate does not verify here.
    let other = tempfile::tempdir().unwrap();
    Pki::new(other.path()).ensure_with("node2", &ADDRS).unwrap();
    std::fs::copy(other.path().join("clients/admin.toml"), pki.admin_bundle_path()).unwrap();
    assert!(pki.ensure_with("node1", &ADDRS).unwrap().admin_bundle_created);
    let ctx = ClientConfig::load(pki.admin_bundle_path()).unwrap();
    assert_eq!(ctx.context, "node1");

    std::fs::write(pki.admin_bundle_path(), "garbage").unwrap();
    assert!(pki.ensure_with("node1", &ADDRS).unwrap().admin_bundle_created);
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
}

#[test]
fn expiring_admin_certificate_is_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.ensure_with("node1", &ADDRS).unwrap();
    // Replace the admin bundle with one whose certificate ends in 10 days.
    let short = pki.issue_client("admin", 10).unwrap();
    short.save(pki.admin_bundle_path()).unwrap();
    assert!(pki.ensure_with("node1", &ADDRS).unwrap().admin_bundle_created);
    let renewed = ClientConfig::load(pki.admin_bundle_path()).unwrap();
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let in_60_days = SystemTime::now() + Duration::from_secs(60 * 86400);
    verify_client(&renewed.current().unwrap().crt, &ca_pem, in_60_days).unwrap();
}

#[test]
fn issues_further_clients_after_a_rename() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // Issue after the hostname changed: the CA subject comes from ca.pem.
    pki.ensure_with("old-name", &ADDRS).unwrap();
    pki.ensure_with("new-name", &ADDRS).unwrap();
    let bundle = pki.issue_client("alice", 7).unwrap();
    bundle.validate().unwrap();
    assert_eq!(bundle.context, "old-name");
    let ctx = bundle.current().unwrap();
    assert_eq!(ctx.endpoints.len(), 2);
    assert_eq!(debvisor_api::tls::common_name(&der(&ctx.crt)).as_deref(), Some("alice"));
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    verify_client(&ctx.crt, &ca_pem, SystemTime::now() + Duration::from_secs(6 * 86400)).unwrap();
    verify_client(&ctx.crt, &ca_pem, SystemTime::now() + Duration::from_secs(8 * 86400)).unwrap_err();

    assert!(matches!(pki.issue_client("", 7), Err(PkiError::ClientName(_))));
    assert!(matches!(pki.issue_client("a b", 7), Err(PkiError::ClientName(_))));
    assert!(matches!(pki.issue_client("bob", 0), Err(PkiError::ClientDays(0))));
    assert!(matches!(pki.issue_client("bob", 5000), Err(PkiError::ClientDays(5000))));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Pki::new(empty.path()).issue_client("bob", 7),
        Err(PkiError::Io { .. })
    ));
}

#[test]
fn empty_hostname_still_gives_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.ensure_with("", &[]).unwrap();
    assert_eq!(ClientConfig::load(pki.admin_bundle_path()).unwrap().context, "debvisor");
}

#[test]
fn parses_proc_addresses() {
    let fib = "Main:
  +-- 0.0.0.0/0 3 0 5
 |-- 0.0.0.0
    /0 universe UNICAST
 +-- 10.0.2.0/24 2 0 2
    |-- 10.0.2.0
       /24 link UNICAST
    |-- 10.0.2.15
       /32 host LOCAL
 +-- 127.0.0.0/8 2 0 2
    |-- 127.0.0.1
       /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
    |-- 10.0.2.15
       /32 host LOCAL
    |-- 10.0.2.255
       /32 link BROADCAST
    |-- 192.168.1.5
       /32 host LOCAL
";
    assert_eq!(
        parse_fib_trie(fib),
        [Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(192, 168, 1, 5)]
    );
    let inet6 = "00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000505400fffe123456 02 40 20 80     eth0
20010db8000000000000000000000001 02 40 00 00     eth0
bad line
";
    assert_eq!(parse_if_inet6(inet6), ["2001:db8::1".parse::<Ipv6Addr>().unwrap()]);
    // The real files parse (whatever this machine has).
    let _ = local_addresses();
}

#[test]
fn creates_once_then_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path().join("pki"));
    let a = pki.ensure("node1").unwrap();
    assert!(a.created);
    assert_eq!(a.server_fingerprint.len(), 64);
    let b = pki.ensure("node1").unwrap();
    assert!(!b.created);
    assert_eq!(a.server_fingerprint, b.server_fingerprint);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("pki/server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let chain = std::fs::read_to_string(dir.path().join("pki/server.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
}

#[test]
fn garbage_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "server.key", "server.pem"] {
        std::fs::write(dir.path().join(f), "garbage").unwrap();
    }
    let err = Pki::new(dir.path()).ensure("n").unwrap_err().to_string();
    assert!(err.contains("server.pem"), "{err}");
}
