//! A running VM's serial console in the browser: a page with xterm.js
//! (`vm_console.html` and `static/vm_console.js`) and a WebSocket that
//! bridges the terminal to the agent's `OpenConsole` as the signed-in user,
//! so the agent audits `vm.console` on `vm:NAME` by `console:USER`.
//!
//! The WebSocket is checked like a page before it is upgraded: a session
//! (else to sign-in), `ManageVms` (else 403), an `Origin` naming the host
//! the request was sent to (else 403: a page of another site must not drive
//! a console with the user's cookie), a VM name worth asking about (else
//! 404). Then each binary (or text) frame from the browser is one
//! `ConsoleInput` of at most [`MAX_INPUT`] bytes, and each `ConsoleOutput`
//! one binary frame. When the console closes, a text frame says why and a
//! close frame follows:
//!
//! | when | text frame | close code |
//! |---|---|---|
//! | `OpenConsole` refused or the agent unreachable | `The console did not open: MESSAGE` | 1011 |
//! | the guest's output ends | `The VM's console closed (the VM stopped)` | 1000 |
//! | the output fails later | `The console failed: MESSAGE` | 1011 |
//! | a frame over [`MAX_INPUT`] | `Input refused: ...` | 1009 |
//! | the session ends or loses `ManageVms` | `Your session ended...` | 1008 |
//!
//! When the browser goes, the input stream is dropped, which makes the agent
//! and the VM daemon close the console.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, Uri, header};
use debvisor_api::vm::v1::{ConsoleInput, ConsoleOutput};
use tokio::sync::mpsc;

use super::*;
use crate::auth::random_token;
use crate::handlers::{LIVE_SESSION_CHECK, csp_with_style_nonce};

/// The most bytes one frame from the browser may carry: the agent's limit
/// for one `ConsoleInput`.
pub const MAX_INPUT: usize = 64 * 1024;

/// The console page's script.
pub const CONSOLE_JS: &str = include_str!("../../../static/vm_console.js");

/// How long the closing handshake may take once the console has closed.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The serial console page.
#[derive(Template)]
#[template(path = "vm_console.html")]
pub struct ConsolePage {
    /// Page chrome.
    pub chrome: Chrome,
    /// The VM's name (as asked, at most 64 characters).
    pub name: String,
    /// The VM's page.
    pub href: String,
    /// The WebSocket's path.
    pub ws: String,
    /// The VM's state as the agent reported it ("" if it could not say).
    pub state: String,
    /// The state tag's class.
    pub state_class: &'static str,
    /// The nonce the script stamps on xterm.js's `<style>` elements
    /// ([`csp_with_style_nonce`]).
    pub nonce: String,
}

impl ConsolePage {
    /// URL of the vendored xterm.js.
    pub fn xterm_js(&self) -> String {
        crate::assets::xterm_js_url()
    }

    /// URL of xterm.js's style sheet.
    pub fn xterm_css(&self) -> String {
        crate::assets::xterm_css_url()
    }
}

/// The WebSocket path of the console of VM `name`.
pub fn console_ws_href(name: &str) -> String {
    format!("{}/console/ws", vm_href(name))
}

/// A VM name worth asking the agent about: 1-255 bytes without control
/// characters (the agent has the real rules and names what is wrong).
fn check_name(name: &str) -> Result<(), AppError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(AppError::NotFound);
    }
    Ok(())
}

/// Whether the request's `Origin` is the origin it was sent to: its host
/// (and port) is the request's `Host` (HTTP/1.1) or authority (HTTP/2).
/// Browsers send `Origin` with every WebSocket handshake, so a missing or
/// foreign one did not come from the console's own page.
pub fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, origin_host)) = origin.split_once("://") else {
        return false; // "null" and garbage
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return false,
    };
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()));
    let Some(host) = host else {
        return false;
    };
    let plain = |a: &str| {
        let a = a.to_ascii_lowercase();
        a.strip_suffix(default_port).map(str::to_string).unwrap_or(a)
    };
    let bad = |c: char| matches!(c, '/' | '?' | '#' | '@') || c.is_whitespace();
    !origin_host.is_empty() && !origin_host.contains(bad) && plain(origin_host) == plain(host)
}

/// `GET /vm/{name}/console`: the terminal page (404 for a VM the agent does
/// not know; other agent failures show on the page when the socket opens).
pub(super) async fn page(
    State(state): State<AppState>,
    required: RequireSession,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageVms)?;
    check_name(&name)?;
    let user = session.user.clone();
    let got = bounded("VM get", async {
        let mut c = client(&state).await?;
        let vm = c.get_vm(on_behalf_of(VmRef { name: name.clone() }, Some(&user)));
        Ok(vm.await?.into_inner())
    })
    .await;
    let state_text = match got {
        Ok(vm) => vm.summary.map(|s| s.state_text).unwrap_or_default(),
        Err(AgentError::Call(s)) if s.code() == tonic::Code::NotFound => return Err(AppError::NotFound),
        Err(_) => String::new(),
    };
    let nonce = random_token();
    let page = ConsolePage {
        chrome: state.chrome(Some(nav(session, "vms"))).await,
        name: shown(&name),
        href: vm_href(&name),
        ws: console_ws_href(&name),
        state_class: state_class(&state_text),
        state: state_text,
        nonce,
    };
    let csp = csp_with_style_nonce(&page.nonce);
    Ok(([(header::CONTENT_SECURITY_POLICY, csp)], Html(page.render()?)).into_response())
}

/// `GET /vm/{name}/console/ws`: the checks above, then the bridge.
pub(super) async fn socket(
    State(state): State<AppState>,
    required: RequireSession,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageVms)?.clone();
    if !same_origin(&headers, &uri) {
        tracing::warn!(user = %session.user, origin = ?headers.get(header::ORIGIN), "console WebSocket refused: not from the console's origin");
        return Err(AppError::CrossOrigin);
    }
    check_name(&name)?;
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    // Frames a little over the limit are refused with a reason (below);
    // far bigger ones are not even buffered.
    Ok(upgrade
        .max_message_size(2 * MAX_INPUT)
        .max_frame_size(2 * MAX_INPUT)
        .on_upgrade(move |ws| bridge(state, session, name, ws)))
}

/// Why the console closed: the text frame, the close code and its short
/// reason.
type Ending = (String, u16, &'static str);

async fn bridge(state: AppState, session: Session, name: String, mut ws: WebSocket) {
    let (keys, input) = mpsc::channel::<ConsoleInput>(16);
    let first = ConsoleInput {
        name: name.clone(),
        data: Vec::new(),
    };
    if keys.try_send(first).is_err() {
        return; // cannot happen: the channel is new and empty
    }
    let user = session.user.clone();
    let opened = bounded("VM console", async {
        let mut c = client(&state).await?;
        let req = on_behalf_of(tokio_stream::wrappers::ReceiverStream::new(input), Some(&user));
        Ok(c.open_console(req).await?.into_inner())
    })
    .await;
    let mut output = match opened {
        Ok(o) => o,
        Err(e) => {
            let text = format!("The console did not open: {}", call_text(e));
            close(&mut ws, (text, close_code::ERROR, "the console did not open")).await;
            return;
        }
    };
    tracing::info!(user = %user, vm = %shown(&name), "serial console opened");
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + LIVE_SESSION_CHECK, LIVE_SESSION_CHECK);
    let mut typed = false;
    let ending: Option<Ending> = loop {
        tokio::select! {
            out = output.message() => match out {
                Ok(Some(ConsoleOutput { data })) => {
                    if ws.send(Message::Binary(data.into())).await.is_err() {
                        break None; // the browser is gone
                    }
                }
                Ok(None) => {
                    break Some(("The VM's console closed (the VM stopped)".into(), close_code::NORMAL, "the VM stopped"));
                }
                Err(s) => {
                    let text = format!("The console failed: {}", shown_long(s.message()));
                    break Some((text, close_code::ERROR, "the console failed"));
                }
            },
            frame = ws.recv() => {
                let data: Vec<u8> = match frame {
                    Some(Ok(Message::Binary(b))) => b.into(),
                    Some(Ok(Message::Text(t))) => t.as_str().as_bytes().to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                };
                if data.len() > MAX_INPUT {
                    let text = format!(
                        "Input refused: {} bytes in one message; the console takes at most {} KiB at a time",
                        data.len(),
                        MAX_INPUT / 1024
                    );
                    break Some((text, close_code::SIZE, "message too big"));
                }
                if data.is_empty() {
                    continue;
                }
                typed = true;
                // A refused send means the agent dropped the input: its
                // output says why next.
                let _ = keys.send(ConsoleInput { name: String::new(), data }).await;
            },
            _ = check.tick() => {
                // Typing counts as using the session; watching does not.
                let store = state.store();
                let now = if std::mem::take(&mut typed) {
                    store.touch(&session.id).await
                } else {
                    store.peek(&session.id).await
                };
                if !matches!(&now, Ok(Some(s)) if s.role.allows(Permission::ManageVms)) {
                    let text = "Your session ended or no longer allows consoles: sign in again".to_string();
                    break Some((text, close_code::POLICY, "session ended"));
                }
            },
        }
    };
    // The agent and the VM daemon close the console when its input ends.
    drop(keys);
    drop(output);
    tracing::info!(user = %user, vm = %shown(&name), why = ending.as_ref().map_or("the browser left", |e| e.2), "serial console closed");
    if let Some(ending) = ending {
        close(&mut ws, ending).await;
    }
}

/// Sends the text frame and the close frame of `ending`, then waits a
/// little for the browser's close frame.
async fn close(ws: &mut WebSocket, (text, code, reason): Ending) {
    let _ = ws.send(Message::Text(text.into())).await;
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async { while let Some(Ok(_)) = ws.recv().await {} }).await;
}

/// `s` cut to 400 characters.
fn shown_long(s: &str) -> String {
    s.chars().take(400).collect()
}

/// `GET /static/vm_console.js`.
pub(super) async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CONSOLE_JS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn origin_check(origin: Option<&str>, host: &str, uri: &str) -> bool {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        if !host.is_empty() {
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        same_origin(&h, &uri.parse().unwrap())
    }

    #[test]
    fn only_the_consoles_own_origin_may_open_the_socket() {
        let p = "/vm/a/console/ws";
        assert!(origin_check(Some("https://node-7.lan"), "node-7.lan", p));
        assert!(origin_check(Some("https://Node-7.LAN"), "node-7.lan:443", p));
        assert!(origin_check(Some("https://[fd00::7]:8443"), "[fd00::7]:8443", p));
        assert!(origin_check(Some("http://127.0.0.1:8080"), "127.0.0.1:8080", p));
        // HTTP/2: the authority is in the URI.
        assert!(origin_check(
            Some("https://node-7.lan"),
            "",
            "https://node-7.lan/vm/a/console/ws"
        ));
        for (origin, host) in [
            (None, "node-7.lan"),
            (Some("null"), "node-7.lan"),
            (Some("https://evil.example"), "node-7.lan"),
            (Some("https://node-7.lan.evil.example"), "node-7.lan"),
            (Some("https://node-7.lan:8443"), "node-7.lan"),
            (Some("https://node-7.lan"), "node-7.lan:4443"),
            (Some("https://evil.example@node-7.lan"), "node-7.lan"),
            (Some("https://node-7.lan/"), "node-7.lan"),
            (Some("ftp://node-7.lan"), "node-7.lan"),
            (Some("https://"), ""),
            (Some("https://node-7.lan"), ""),
        ] {
            assert!(!origin_check(origin, host, p), "{origin:?} on {host}");
        }
    }

    #[test]
    fn names_worth_asking_about() {
        assert!(check_name("web-1").is_ok());
        assert!(check_name("odd name/#1").is_ok());
        for bad in [String::new(), "a\nb".into(), "x".repeat(256)] {
            assert!(matches!(check_name(&bad), Err(AppError::NotFound)), "{bad:?}");
        }
        assert_eq!(console_ws_href("odd name"), "/vm/odd%20name/console/ws");
    }
}
