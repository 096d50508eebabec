//! The vendored front-end files (htmx and its server-sent-events extension,
//! xterm.js and its style sheet for the serial console; pinned by
//! `webui/assets/package-lock.json` and copied in by `build.rs`),
//! embedded in the binary and served under `/static/vendor/HASH/NAME`.
//!
//! The URL carries the file's content hash, so a response may be cached for
//! a year (`immutable`); the hash is also the ETag. A request with another
//! hash (an old page after an upgrade) is answered with the current file.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::AppError;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// The name it is served under ("htmx.min.js").
    pub name: &'static str,
    /// The npm package it comes from.
    pub package: &'static str,
    /// The first 16 hex digits of its SHA-256.
    pub hash: &'static str,
    /// Its Content-Type.
    pub content_type: &'static str,
    /// Its contents.
    pub bytes: &'static [u8],
}

impl Asset {
    /// The URL that serves this version of the file.
    pub fn url(&self) -> String {
        format!("/static/vendor/{}/{}", self.hash, self.name)
    }
}

/// A package from the lockfile, for the about page.
#[derive(Debug)]
pub struct Package {
    /// npm name.
    pub name: &'static str,
    /// Locked version.
    pub version: &'static str,
    /// SPDX licence (or the first line of its LICENSE file).
    pub licence: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/vendored.rs"));

/// The file served as `name`, if any.
pub fn find(name: &str) -> Option<&'static Asset> {
    FILES.iter().find(|a| a.name == name)
}

/// The current URL of the vendored file `name` ("" if there is none).
pub fn url(name: &str) -> String {
    find(name).map(Asset::url).unwrap_or_default()
}

/// URL of htmx.
pub fn htmx_url() -> String {
    url("htmx.min.js")
}

/// URL of htmx's SSE extension.
pub fn sse_url() -> String {
    url("htmx-ext-sse.min.js")
}

/// URL of xterm.js (it defines the global `Terminal`).
pub fn xterm_js_url() -> String {
    url("xterm.js")
}

/// URL of xterm.js's style sheet.
pub fn xterm_css_url() -> String {
    url("xterm.css")
}

/// URL of the style sheet, versioned by its content hash.
pub fn css_url() -> String {
    format!("/static/app.css?v={APP_CSS_HASH}")
}

/// The routes of the vendored files.
pub fn routes() -> Router<AppState> {
    Router::new().route("/static/vendor/{hash}/{name}", get(serve))
}

async fn serve(Path((hash, name)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, AppError> {
    let asset = find(&name).ok_or(AppError::NotFound)?;
    let etag = format!("\"{}\"", asset.hash);
    let cache = if hash == asset.hash {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendored_files_and_packages_come_from_the_lockfile() {
        let htmx = find("htmx.min.js").unwrap();
        assert!(htmx.bytes.len() > 10_000);
        assert_eq!(htmx.hash.len(), 16);
        assert!(htmx_url().starts_with("/static/vendor/"));
        assert!(find("htmx-ext-sse.min.js").unwrap().bytes.len() > 1_000);
        let xterm = find("xterm.js").unwrap();
        assert!(String::from_utf8_lossy(xterm.bytes).contains("Terminal"));
        assert_eq!(xterm.content_type, "text/javascript; charset=utf-8");
        assert!(find("xterm.css").unwrap().content_type.starts_with("text/css"));
        assert_eq!(
            xterm_css_url(),
            format!("/static/vendor/{}/xterm.css", find("xterm.css").unwrap().hash)
        );
        assert_eq!(url("nothing.js"), "");
        let names: Vec<_> = PACKAGES.iter().map(|p| (p.name, p.version)).collect();
        let major = |n: &str, v: &str| names.iter().any(|(p, ver)| *p == n && ver.starts_with(v));
        assert!(major("htmx.org", "2."), "{names:?}");
        assert!(major("htmx-ext-sse", "2."), "{names:?}");
        assert!(major("@xterm/xterm", "6."), "{names:?}");
        assert!(PACKAGES.iter().all(|p| p.licence != "unknown"), "{PACKAGES:?}");
    }
}
