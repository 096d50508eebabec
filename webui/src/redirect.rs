//! The plain-HTTP listener: every request is sent to the same host and path
//! over HTTPS (301 for GET and HEAD, 308 otherwise so that the method is
//! kept).

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A router that answers everything with a redirect to HTTPS on
/// `https_port`.
pub fn redirect_router(https_port: u16) -> Router {
    Router::new().fallback(redirect).with_state(https_port)
}

/// The host part of a `Host` header without its port: `example.org`,
/// `192.0.2.1` or `[2001:db8::1]`. `None` when the header is not a plain
/// host name or address, so that nothing odd is echoed into `Location`.
pub fn host_without_port(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        if !(rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())))
        {
            return None;
        }
        let inner = &host[1..end];
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        &host[..=end]
    } else {
        let name = match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
            Some(_) => return None,
            None => host,
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return None;
        }
        name
    };
    Some(name)
}

/// The HTTPS URL for `host` (a `Host` header), `https_port` and the request
/// path with query.
pub fn https_location(host: &str, https_port: u16, path_and_query: &str) -> Option<String> {
    let name = host_without_port(host)?;
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    Some(if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    })
}

async fn redirect(State(https_port): State<u16>, request: Request) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host());
    let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = host
        .and_then(|h| https_location(h, https_port, path))
        .and_then(|l| HeaderValue::from_str(&l).ok());
    let Some(location) = location else {
        return (
            StatusCode::BAD_REQUEST,
            "Use HTTPS: this console needs a host name in the request.\n",
        )
            .into_response();
    };
    let status = if matches!(*request.method(), Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    (status, [(header::LOCATION, location)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_without_port("node1.lan:80"), Some("node1.lan"));
        assert_eq!(host_without_port("node1.lan"), Some("node1.lan"));
        assert_eq!(host_without_port("192.0.2.7:8080"), Some("192.0.2.7"));
        assert_eq!(host_without_port("[2001:db8::1]:80"), Some("[2001:db8::1]"));
        assert_eq!(host_without_port("[2001:db8::1]"), Some("[2001:db8::1]"));
        assert_eq!(host_without_port("[nope]"), None);
        assert_eq!(host_without_port("evil.org/x"), None);
        assert_eq!(host_without_port("a b"), None);
        assert_eq!(host_without_port(":80"), None);
        assert_eq!(host_without_port("host:8x"), None);
    }

    #[test]
    fn locations_carry_the_https_port_when_not_443() {
        assert_eq!(
            https_location("n:80", 443, "/status?x=1").as_deref(),
            Some("https://n/status?x=1")
        );
        assert_eq!(https_location("n", 8443, "/").as_deref(), Some("https://n:8443/"));
        assert_eq!(https_location("n", 443, "*").as_deref(), Some("https://n/"));
    }

    #[tokio::test]
    async fn every_request_is_redirected() {
        let app = redirect_router(8443);
        let req = Request::builder()
            .uri("/login?next=1")
            .header(header::HOST, "node.lan:8080")
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(res.headers()[header::LOCATION], "https://node.lan:8443/login?next=1");
        let req = Request::builder()
            .method(Method::POST)
            .uri("/logout")
            .header(header::HOST, "node.lan")
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
        let req = Request::builder().uri("/").body(Body::empty()).unwrap();
        assert_eq!(app.oneshot(req).await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
}
