//! Small gRPC-over-HTTP/2 helpers shared by the layers.

use http::HeaderMap;

/// The label used when a request path is not `/package.Service/Method` or
/// names a method the server does not implement (keeps label sets bounded).
pub(crate) const UNKNOWN: &str = "unknown";

/// Path prefix of the standard health service, which rate limiting exempts.
pub(crate) const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Splits `/package.Service/Method` into its service and method.
pub(crate) fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// The numeric `grpc-status` in a header or trailer map, if any.
pub(crate) fn status_code(headers: &HeaderMap) -> Option<i32> {
    let value = headers.get("grpc-status")?;
    Some(tonic::Code::from_bytes(value.as_bytes()) as i32)
}

/// The canonical upper-case name of a gRPC status code (`OK`, `NOT_FOUND`…).
pub(crate) fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Code of a call that succeeded.
pub(crate) const OK: i32 = 0;
/// Code reported when a response body is dropped before it ended.
pub(crate) const CANCELLED: i32 = 1;
/// Code reported when a call fails without a gRPC status.
pub(crate) const UNKNOWN_CODE: i32 = 2;
/// Code of a method the server does not know.
pub(crate) const UNIMPLEMENTED: i32 = 12;

/// The message compression named by a `grpc-encoding` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// No header, or `identity`.
    Identity,
    /// `gzip`.
    Gzip,
    /// `zstd`.
    Zstd,
    /// Something this crate cannot decompress.
    Other,
}

impl Encoding {
    /// Reads the `grpc-encoding` header.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        match headers.get("grpc-encoding").map(|v| v.as_bytes()) {
            None | Some(b"identity") => Self::Identity,
            Some(b"gzip") => Self::Gzip,
            Some(b"zstd") => Self::Zstd,
            Some(_) => Self::Other,
        }
    }
}

/// Tracks how one gRPC call ends: the status in the response headers
/// (trailers-only responses) or in the trailers after the body.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    header_code: Option<i32>,
}

impl Outcome {
    /// Remembers the `grpc-status` of the response headers, if any.
    pub(crate) fn headers(headers: &HeaderMap) -> Self {
        Self {
            header_code: status_code(headers),
        }
    }

    /// The code of a call whose body ended, given its trailers (if any).
    pub(crate) fn ended(&self, trailers: Option<&HeaderMap>) -> i32 {
        trailers
            .and_then(status_code)
            .or(self.header_code)
            .unwrap_or(UNKNOWN_CODE)
    }

    /// The code of a call whose body was dropped before it ended: a
    /// trailers-only response needs no body, anything else was cancelled.
    pub(crate) fn dropped(&self) -> i32 {
        self.header_code.unwrap_or(CANCELLED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/grpc.health.v1.Health/Check"),
            Some(("grpc.health.v1.Health", "Check"))
        );
        assert_eq!(split_path("/"), None);
        assert_eq!(split_path("/a"), None);
        assert_eq!(split_path("/a/"), None);
        assert_eq!(split_path("/a/b/c"), None);
        assert_eq!(split_path("a/b"), None);
    }

    #[test]
    fn codes_have_canonical_names() {
        for code in 0..=16 {
            let expected = format!("{:?}", tonic::Code::from_i32(code));
            // tonic's Debug names are CamelCase; compare ignoring case and underscores.
            assert_eq!(code_name(code).replace('_', "").to_lowercase(), expected.to_lowercase(),);
        }
        assert_eq!(code_name(42), "UNKNOWN");
    }

    #[test]
    fn status_comes_from_trailers_then_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "5".parse().unwrap());
        let outcome = Outcome::headers(&headers);
        assert_eq!(outcome.ended(None), 5);
        assert_eq!(outcome.dropped(), 5);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(Outcome::default().ended(Some(&trailers)), 0);
        assert_eq!(Outcome::default().ended(None), UNKNOWN_CODE);
        assert_eq!(Outcome::default().dropped(), CANCELLED);
    }
}
