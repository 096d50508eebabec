//! The serial console in the browser: its page, and its WebSocket over the
//! real HTTPS listener (a WebSocket client on TLS, as a browser connects).
//!
//! In front of a real agent whose VMs run on libvirt's test driver, which
//! has no consoles: the agent refuses `OpenConsole`, and the console must
//! say so, close with 1011 and leave the failed `vm.console` in the audit
//! log as the user; a foreign origin, a viewer and a browser without a
//! session never get a socket. In front of a fake agent that serves only
//! `OpenConsole` (a greeting, then an echo of each message): keystrokes and
//! output cross the socket, and each way the console ends (too much input,
//! the guest's output ending, the browser leaving, signing out, a refusal)
//! is explained.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use debvisor_api::vm::v1::{ConsoleInput, ConsoleOutput};
use debvisor_audit::Query;
use debvisor_webui::tls::{serve_https, server_config};
use futures_util::{SinkExt, StreamExt};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use support::{Console, Reply, add_user, page_csrf, router_on_db, sign_in, sign_in_as};

const VM: &str = "con-1";
const VIEWER_PW: &str = "correct horse battery";

/// A console (database file, admin and viewer `watcher`, a running VM
/// [`VM`]) behind the real HTTPS listener on 127.0.0.1.
struct Served {
    c: Console,
    port: u16,
    cert: CertificateDer<'static>,
    admin: String,
    viewer: String,
}

async fn get(c: &Console, path: &str, s: &str) -> Reply {
    c.clock.advance(Duration::from_millis(150));
    support::get(&c.app, path, s).await
}

async fn serve() -> Served {
    let mut c = Console::with_vms(&[]).await;
    c.app = router_on_db(&c, &c.dir.join("console.db")).await;
    let admin = sign_in(&c.app).await;
    let csrf = page_csrf(&c.app, "/vms/new", &admin).await;
    let form = [
        ("csrf", csrf.as_str()),
        ("name", VM),
        ("vcpus", "1"),
        ("memory_mib", "64"),
        ("disk_gib", "1"),
        ("start", "on"),
    ];
    let made = support::post(&c.app, "203.0.113.9", "/vms", &admin, &form).await;
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.body);
    let added = add_user(&c.app, &admin, "watcher", "viewer", VIEWER_PW).await;
    assert_eq!(added.status, StatusCode::SEE_OTHER, "{}", added.body);
    let viewer = sign_in_as(&c.app, "watcher", VIEWER_PW).await;
    listen(c, admin, viewer).await
}

/// Serves `c` on the real HTTPS listener (127.0.0.1, a new self-signed
/// certificate).
async fn listen(c: Console, admin: String, viewer: String) -> Served {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (c.dir.join("server.pem"), c.dir.join("server.key"));
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    let tls = server_config(&cert_path, &key_path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_https(listener, tls, c.app.clone()));
    Served {
        c,
        port,
        cert: ck.cert.der().clone(),
        admin,
        viewer,
    }
}

type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// Opens `path`'s WebSocket over TLS (ALPN http/1.1, as browsers open
/// WebSockets) with the session `cookies` and `origin` (None: no header).
async fn open(s: &Served, path: &str, cookies: &str, origin: Option<&str>) -> Result<Socket, WsError> {
    s.c.clock.advance(Duration::from_millis(150));
    let mut roots = RootCertStore::empty();
    roots.add(s.cert.clone()).unwrap();
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!("wss://localhost:{}{path}", s.port)
        .into_client_request()
        .unwrap();
    if !cookies.is_empty() {
        req.headers_mut().insert(header::COOKIE, cookies.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert(header::ORIGIN, o.parse().unwrap());
    }
    tokio_tungstenite::client_async(req, tls).await.map(|(ws, _)| ws)
}

/// The HTTP status a refused handshake got.
fn refused(result: Result<Socket, WsError>) -> (StatusCode, String) {
    match result {
        Err(WsError::Http(response)) => {
            let location = response
                .headers()
                .get(header::LOCATION)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (response.status(), location)
        }
        Err(e) => panic!("the handshake failed otherwise: {e}"),
        Ok(_) => panic!("the WebSocket opened"),
    }
}

/// The next message within 30 s.
async fn next(ws: &mut Socket) -> Message {
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(m))) => m,
        Ok(other) => panic!("the socket ended: {other:?}"),
        Err(_) => panic!("nothing within 30 s"),
    }
}

#[tokio::test]
async fn the_console_socket_is_same_origin_role_checked_and_says_why_it_closed() {
    let s = serve().await;
    let path = format!("/vm/{VM}/console/ws");
    let own = format!("https://localhost:{}", s.port);

    // A page of another site (or no Origin at all) gets no socket, even
    // with the admin's cookie.
    for origin in [Some("https://evil.example"), Some("null"), None] {
        let (status, _) = refused(open(&s, &path, &s.admin, origin).await);
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin:?}");
    }
    let other_port = format!("https://localhost:{}", s.port.wrapping_add(1));
    let (status, _) = refused(open(&s, &path, &s.admin, Some(&other_port)).await);
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A viewer may not use consoles; without a session, sign in first.
    let (status, _) = refused(open(&s, &path, &s.viewer, Some(&own)).await);
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, location) = refused(open(&s, &path, "", Some(&own)).await);
    assert_eq!((status, location.as_str()), (StatusCode::SEE_OTHER, "/login"));
    // A name no VM can have is not asked about.
    let (status, _) = refused(open(&s, "/vm/a%0Ab/console/ws", &s.admin, Some(&own)).await);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        s.c.agent()
            .audit
            .query(&Query {
                action: Some("vm.console".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .records
            .is_empty(),
        "no refused handshake reached the agent"
    );

    // The admin's socket opens; the test driver has no consoles, so the
    // agent's refusal comes as text, then the close frame.
    let mut ws = open(&s, &path, &s.admin, Some(&own))
        .await
        .expect("the admin's socket opens");
    let said = next(&mut ws).await;
    let Message::Text(text) = said else {
        panic!("expected the reason as text, got {said:?}");
    };
    assert!(text.starts_with("The console did not open: "), "{text}");
    assert!(text.contains("no consoles"), "{text}");
    let closing = next(&mut ws).await;
    let Message::Close(Some(frame)) = closing else {
        panic!("expected a close frame, got {closing:?}");
    };
    assert_eq!(frame.code, CloseCode::Error, "{frame:?}");
    assert_eq!(u16::from(frame.code), 1011);
    assert_eq!(frame.reason.as_str(), "the console did not open");

    let records =
        s.c.agent()
            .audit
            .query(&Query {
                action: Some("vm.console".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .records;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (r.actor.as_str(), r.target.as_str(), r.ok),
        ("console:admin", "vm:con-1", false),
        "{r:?}"
    );
    assert!(r.error.contains("no consoles"), "{r:?}");
}

#[tokio::test]
async fn the_console_page_shows_the_terminal_to_those_who_may_use_it() {
    let s = serve().await;
    let c = &s.c;
    let page = get(c, &format!("/vm/{VM}/console"), &s.admin).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let xterm_js = debvisor_webui::assets::xterm_js_url();
    let xterm_css = debvisor_webui::assets::xterm_css_url();
    assert!(xterm_js.starts_with("/static/vendor/") && xterm_js.ends_with("/xterm.js"));
    for needle in [
        "Serial console of con-1",
        "id=\"vm-state\">running</span>",
        "id=\"console\"",
        "data-ws=\"/vm/con-1/console/ws\"",
        "id=\"console-status\"",
        "href=\"/vm/con-1\" id=\"console-back\">&larr; Back to VM</a>",
        "<script src=\"/static/vm_console.js\" defer></script>",
        &format!("<script src=\"{xterm_js}\" defer></script>"),
        &format!("<link rel=\"stylesheet\" href=\"{xterm_css}\">"),
    ] {
        assert!(page.body.contains(needle), "no {needle:?} in {}", page.body);
    }
    // The page's own policy lets in xterm.js's <style> elements with the
    // nonce the page hands its script, and nothing else inline.
    let csp = page.header(header::CONTENT_SECURITY_POLICY);
    let marker = "data-style-nonce=\"";
    let at = page.body.find(marker).unwrap() + marker.len();
    let nonce = &page.body[at..at + 64];
    assert!(csp.contains(&format!("style-src-elem 'self' 'nonce-{nonce}'")), "{csp}");
    assert!(csp.contains("script-src 'self';") && !csp.contains("unsafe"), "{csp}");
    let again = get(c, &format!("/vm/{VM}/console"), &s.admin).await;
    assert!(!again.body.contains(nonce), "a fresh nonce per page");
    // Every other page keeps the strict policy.
    assert_eq!(
        get(c, "/vms", &s.admin).await.header(header::CONTENT_SECURITY_POLICY),
        debvisor_webui::handlers::CSP
    );

    // The VM's page links to it while the VM runs, for those who may use it.
    let vm = get(c, &format!("/vm/{VM}"), &s.admin).await;
    assert!(
        vm.body
            .contains("<a href=\"/vm/con-1/console\" class=\"button subtle\" id=\"vm-console\">Serial console</a>"),
        "{}",
        vm.body
    );
    let vm = get(c, &format!("/vm/{VM}"), &s.viewer).await;
    assert_eq!(vm.status, StatusCode::OK);
    assert!(!vm.body.contains("Serial console"), "{}", vm.body);
    assert_eq!(
        get(c, &format!("/vm/{VM}/console"), &s.viewer).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(c, "/vm/no-such-vm/console", &s.admin).await.status,
        StatusCode::NOT_FOUND
    );
    let anonymous = get(c, &format!("/vm/{VM}/console"), "").await;
    assert_eq!(anonymous.header(header::LOCATION), "/login");

    // Off, the VM offers no console.
    let csrf = page_csrf(&c.app, "/vms", &s.admin).await;
    c.clock.advance(Duration::from_millis(150));
    let r = support::post(
        &c.app,
        "203.0.113.9",
        &format!("/vm/{VM}/action"),
        &s.admin,
        &[("csrf", &csrf), ("action", "stop")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let vm = get(c, &format!("/vm/{VM}"), &s.admin).await;
    assert!(vm.body.contains("id=\"vm-state\">shutoff</span>"), "{}", vm.body);
    assert!(!vm.body.contains("Serial console"), "{}", vm.body);

    // The script is public, like the other pages' scripts.
    let js = get(c, "/static/vm_console.js", "").await;
    assert_eq!(js.status, StatusCode::OK);
    assert_eq!(js.header(header::CONTENT_TYPE), "text/javascript; charset=utf-8");
    for needle in [
        "new Terminal(",
        "binaryType = \"arraybuffer\"",
        "Console closed: ",
        "onData",
    ] {
        assert!(js.body.contains(needle), "no {needle:?} in the script");
    }
}

/// What the fake agent saw.
#[derive(Debug, PartialEq)]
enum Seen {
    /// A console opened: the user the console named, the first message.
    Opened { user: String, name: String, data: Vec<u8> },
    /// A later message's bytes.
    Keys(Vec<u8>),
    /// The console's input ended (the console dropped its side).
    InputEnded,
}

/// A fake agent on `socket` that serves only `OpenConsole` (any other call
/// is UNIMPLEMENTED): it refuses VM `off`, greets with `login: `, echoes
/// each message as `echo:DATA`, and ends the output after `quit`.
fn fake_agent(socket: &std::path::Path) -> mpsc::UnboundedReceiver<Seen> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let (seen_tx, seen) = mpsc::unbounded_channel();
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen_tx = seen_tx.clone();
            let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let seen_tx = seen_tx.clone();
                async move {
                    if req.uri().path() != "/debvisor.vm.v1.VmService/OpenConsole" {
                        let no = tonic::Status::unimplemented("this fake agent serves only OpenConsole");
                        return Ok::<_, std::convert::Infallible>(no.into_http::<tonic::body::Body>());
                    }
                    let mut grpc =
                        tonic::server::Grpc::new(tonic_prost::ProstCodec::<ConsoleOutput, ConsoleInput>::default());
                    let console = tower::service_fn(move |r| fake_open_console(r, seen_tx.clone()));
                    Ok(grpc.streaming(console, req).await)
                }
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    seen
}

type Output = tokio_stream::wrappers::ReceiverStream<Result<ConsoleOutput, tonic::Status>>;

async fn fake_open_console(
    req: tonic::Request<tonic::Streaming<ConsoleInput>>,
    seen: mpsc::UnboundedSender<Seen>,
) -> Result<tonic::Response<Output>, tonic::Status> {
    let user = req
        .metadata()
        .get("x-debvisor-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut input = req.into_inner();
    let first = input
        .message()
        .await?
        .ok_or_else(|| tonic::Status::invalid_argument("no first message"))?;
    let _ = seen.send(Seen::Opened {
        user,
        name: first.name.clone(),
        data: first.data,
    });
    if first.name == "off" {
        return Err(tonic::Status::failed_precondition(
            "VM off is not running: start it first",
        ));
    }
    let (tx, rx) = mpsc::channel(8);
    let greeting = ConsoleOutput {
        data: b"login: ".to_vec(),
    };
    tx.send(Ok(greeting)).await.unwrap();
    tokio::spawn(async move {
        loop {
            match input.message().await {
                Ok(Some(m)) => {
                    let _ = seen.send(Seen::Keys(m.data.clone()));
                    if m.data == b"quit" {
                        return; // the output ends: the VM stopped
                    }
                    let data = [&b"echo:"[..], &m.data].concat();
                    if tx.send(Ok(ConsoleOutput { data })).await.is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    let _ = seen.send(Seen::InputEnded);
                    return;
                }
            }
        }
    });
    Ok(tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The next thing the fake agent saw, within 10 s.
async fn saw(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the fake agent saw nothing within 10 s")
        .expect("the fake agent is gone")
}

/// Reads the text frame and the close frame that end a console.
async fn ending(ws: &mut Socket) -> (String, u16, String) {
    let said = next(ws).await;
    let Message::Text(text) = said else {
        panic!("expected the reason as text, got {said:?}");
    };
    let closing = next(ws).await;
    let Message::Close(Some(frame)) = closing else {
        panic!("expected a close frame, got {closing:?}");
    };
    (text.to_string(), u16::from(frame.code), frame.reason.to_string())
}

fn opened(name: &str) -> Seen {
    Seen::Opened {
        user: "admin".into(),
        name: name.into(),
        data: Vec::new(),
    }
}

#[tokio::test]
async fn keystrokes_and_output_cross_the_socket_and_each_end_is_explained() {
    let dir = support::temp_dir();
    let mut seen = fake_agent(&dir.join("agent.sock"));
    let c = Console::new(dir);
    let admin = sign_in(&c.app).await;
    let s = listen(c, admin, String::new()).await;
    let own = format!("https://localhost:{}", s.port);
    let binary = |b: &[u8]| Message::Binary(b.to_vec().into());

    // The first message names the VM, as the signed-in user; then each
    // frame is one message, and each output message one binary frame.
    let mut ws = open(&s, "/vm/web-1/console/ws", &s.admin, Some(&own)).await.unwrap();
    assert_eq!(next(&mut ws).await, binary(b"login: "));
    assert_eq!(saw(&mut seen).await, opened("web-1"));
    ws.send(binary(b"root\r")).await.unwrap();
    assert_eq!(next(&mut ws).await, binary(b"echo:root\r"));
    assert_eq!(saw(&mut seen).await, Seen::Keys(b"root\r".to_vec()));
    ws.send(Message::text("ls -l \u{e9}")).await.unwrap();
    assert_eq!(next(&mut ws).await, binary("echo:ls -l \u{e9}".as_bytes()));
    assert_eq!(saw(&mut seen).await, Seen::Keys("ls -l \u{e9}".as_bytes().to_vec()));
    // 64 KiB pass; more in one frame is refused, and the console closes.
    ws.send(Message::Binary(vec![b'x'; 64 * 1024].into())).await.unwrap();
    let Message::Binary(echo) = next(&mut ws).await else {
        panic!("no echo of 64 KiB");
    };
    assert_eq!(echo.len(), 64 * 1024 + 5);
    assert_eq!(saw(&mut seen).await, Seen::Keys(vec![b'x'; 64 * 1024]));
    ws.send(Message::Binary(vec![b'x'; 70 * 1024].into())).await.unwrap();
    let (text, code, reason) = ending(&mut ws).await;
    assert_eq!(
        text,
        "Input refused: 71680 bytes in one message; the console takes at most 64 KiB at a time"
    );
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    assert_eq!(saw(&mut seen).await, Seen::InputEnded, "the agent's console closes");

    // The guest's output ends: the VM stopped.
    let mut ws = open(&s, "/vm/web-1/console/ws", &s.admin, Some(&own)).await.unwrap();
    assert_eq!(next(&mut ws).await, binary(b"login: "));
    assert_eq!(saw(&mut seen).await, opened("web-1"));
    ws.send(binary(b"quit")).await.unwrap();
    let (text, code, reason) = ending(&mut ws).await;
    assert_eq!(text, "The VM's console closed (the VM stopped)");
    assert_eq!((code, reason.as_str()), (1000, "the VM stopped"));
    assert_eq!(saw(&mut seen).await, Seen::Keys(b"quit".to_vec()));

    // The browser leaves: the agent's input ends, so its console closes.
    let mut ws = open(&s, "/vm/web-1/console/ws", &s.admin, Some(&own)).await.unwrap();
    assert_eq!(next(&mut ws).await, binary(b"login: "));
    assert_eq!(saw(&mut seen).await, opened("web-1"));
    ws.close(None).await.unwrap();
    assert_eq!(saw(&mut seen).await, Seen::InputEnded);

    // Signing out (or expiring, or losing the role) ends the console too,
    // within a session check.
    let mut ws = open(&s, "/vm/web-1/console/ws", &s.admin, Some(&own)).await.unwrap();
    assert_eq!(next(&mut ws).await, binary(b"login: "));
    assert_eq!(saw(&mut seen).await, opened("web-1"));
    let csrf = page_csrf(&s.c.app, "/users", &s.admin).await;
    let out = support::post(&s.c.app, "203.0.113.9", "/logout", &s.admin, &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let (text, code, reason) = ending(&mut ws).await;
    assert_eq!(text, "Your session ended or no longer allows consoles: sign in again");
    assert_eq!((code, reason.as_str()), (1008, "session ended"));
    assert_eq!(saw(&mut seen).await, Seen::InputEnded);
    let admin = sign_in(&s.c.app).await;

    // The agent refuses: its message, then 1011.
    let mut ws = open(&s, "/vm/off/console/ws", &admin, Some(&own)).await.unwrap();
    let (text, code, reason) = ending(&mut ws).await;
    assert_eq!(text, "The console did not open: VM off is not running: start it first");
    assert_eq!((code, reason.as_str()), (1011, "the console did not open"));
    assert_eq!(saw(&mut seen).await, opened("off"));
}
