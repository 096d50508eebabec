//! Runs the built `debvisorctl` with a client config (mutual TLS) against the
//! fake agent served on 127.0.0.1 with a throwaway PKI: the good case, a
//! config from another CA, a client certificate from another CA, an
//! unreachable endpoint and an unknown context.

use crate::common;

use std::path::{Path, PathBuf};

use debvisor_api::config::{ClientConfig, Context};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use common::{Agent, Fake, code, run, stderr, stdout};

/// The name in the fake node's server certificate.
const SERVER_NAME: &str = "debvisor-node";

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate and key (PEM) signed by `ca`.
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str, eku: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut p = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![eku];
    let key = KeyPair::generate().unwrap();
    (p.signed_by(&key, ca).unwrap().pem(), key.serialize_pem())
}

/// The node's PKI (CA, server certificate, admin client certificate) and a
/// second, unrelated CA.
struct Pki {
    node_ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
    server: (String, String),
}

impl Pki {
    fn new() -> Self {
        let node_ca = ca("node CA");
        let server = leaf(&node_ca, SERVER_NAME, ExtendedKeyUsagePurpose::ServerAuth);
        Self {
            node_ca,
            other_ca: ca("another CA"),
            server,
        }
    }

    async fn agent(&self) -> (Agent, String) {
        Agent::start_tls(Fake::default(), &self.server.0, &self.server.1, &self.node_ca.pem()).await
    }

    /// A context for `endpoint` trusting `trust` with a client certificate
    /// issued by `issuer`.
    fn context(
        &self,
        endpoint: &str,
        trust: &CertifiedIssuer<'static, KeyPair>,
        issuer: &CertifiedIssuer<'static, KeyPair>,
    ) -> Context {
        let (crt, key) = leaf(issuer, "admin", ExtendedKeyUsagePurpose::ClientAuth);
        Context {
            endpoints: vec![endpoint.to_string()],
            server_name: SERVER_NAME.into(),
            ca: trust.pem(),
            crt,
            key,
        }
    }
}

fn save(dir: &Path, context: Context) -> PathBuf {
    let path = dir.join("config.toml");
    ClientConfig::single("node1", context).save(&path).unwrap();
    path
}

fn args(config: &Path, rest: &[&str]) -> Vec<String> {
    let mut all = vec!["--config".to_string(), config.display().to_string()];
    all.extend(rest.iter().map(|a| a.to_string()));
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_of_this_node_works_from_the_default_path() {
    let pki = Pki::new();
    let (agent, addr) = pki.agent().await;
    let home = agent.dir.path().join("home");
    save(
        &home.join(".config/debvisor"),
        pki.context(&addr, &pki.node_ca, &pki.node_ca),
    );
    let o = run(&["status".into(), "--json".into()], &[("HOME", home.to_str().unwrap())]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["hostname"], "fake-node");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_of_another_cluster_is_named_as_such() {
    let pki = Pki::new();
    let (agent, addr) = pki.agent().await;
    let config = save(agent.dir.path(), pki.context(&addr, &pki.other_ca, &pki.other_ca));
    let o = run(&args(&config, &["status"]), &[]).await;
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("another node or cluster"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_from_another_ca_is_rejected_with_advice() {
    let pki = Pki::new();
    let (agent, addr) = pki.agent().await;
    let config = save(agent.dir.path(), pki.context(&addr, &pki.node_ca, &pki.other_ca));
    let o = run(&args(&config, &["units", "list"]), &[]).await;
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("refused the client certificate"), "{err}");
    assert!(err.contains("new client bundle"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_endpoint_says_what_to_check() {
    let pki = Pki::new();
    let (agent, addr) = pki.agent().await;
    let config = save(agent.dir.path(), pki.context(&addr, &pki.node_ca, &pki.node_ca));
    // Port 1 on localhost: refused at once.
    let o = run(&args(&config, &["--endpoint", "127.0.0.1:1", "status"]), &[]).await;
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(err.contains("firewall"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_context_lists_the_known_ones() {
    let pki = Pki::new();
    let (agent, addr) = pki.agent().await;
    let config = save(agent.dir.path(), pki.context(&addr, &pki.node_ca, &pki.node_ca));
    let o = run(&args(&config, &["--context", "node9", "status"]), &[]).await;
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("\"node9\"") && err.contains("node1"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_config_and_no_socket_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["status".into()], &[("HOME", dir.path().to_str().unwrap())]).await;
    // On a machine that runs an agent the socket would be used instead.
    if Path::new(debvisor_api::paths::AGENT_SOCKET).exists() {
        return;
    }
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}/.config/debvisor/config.toml", dir.path().display())),
        "{err}"
    );
    assert!(err.contains("admin bundle"), "{err}");
}
