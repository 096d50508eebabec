//! Naming the client of each request.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use http::request::Parts;
use tower::{Layer, Service};

/// Who sent a request: the mTLS client certificate's CN, a Unix peer's uid…
///
/// [`IdentityLayer`] puts it into the request extensions, where
/// [`RateLimitLayer`](crate::RateLimitLayer) and handlers find it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientIdentity(pub String);

/// A layer that names each request's client with a function of the request
/// head (URI, headers, and extensions such as `UdsConnectInfo` or
/// `TlsConnectInfo`), storing the result as a [`ClientIdentity`] extension.
pub struct IdentityLayer<F> {
    identify: Arc<F>,
}

impl<F> Clone for IdentityLayer<F> {
    fn clone(&self) -> Self {
        Self {
            identify: Arc::clone(&self.identify),
        }
    }
}

impl<F> IdentityLayer<F>
where
    F: Fn(&Parts) -> Option<ClientIdentity>,
{
    /// A layer that runs `identify` on each request; `None` leaves the
    /// request without a [`ClientIdentity`].
    pub fn new(identify: F) -> Self {
        Self {
            identify: Arc::new(identify),
        }
    }
}

impl<S, F> Layer<S> for IdentityLayer<F> {
    type Service = IdentityService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        IdentityService {
            inner,
            identify: Arc::clone(&self.identify),
        }
    }
}

/// The service made by [`IdentityLayer`].
pub struct IdentityService<S, F> {
    inner: S,
    identify: Arc<F>,
}

impl<S: Clone, F> Clone for IdentityService<S, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            identify: Arc::clone(&self.identify),
        }
    }
}

impl<S, F, B> Service<Request<B>> for IdentityService<S, F>
where
    S: Service<Request<B>>,
    F: Fn(&Parts) -> Option<ClientIdentity>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        if let Some(identity) = (self.identify)(&parts) {
            parts.extensions.insert(identity);
        }
        self.inner.call(Request::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_identity_reaches_the_inner_service() {
        let inner = tower::service_fn(|request: Request<()>| async move {
            Ok::<_, Infallible>(request.extensions().get::<ClientIdentity>().cloned())
        });
        let layer = IdentityLayer::new(|parts: &Parts| {
            let user = parts.headers.get("x-user")?.to_str().ok()?;
            Some(ClientIdentity(user.to_owned()))
        });
        let service = layer.layer(inner);
        let request = Request::builder().header("x-user", "alice").body(()).unwrap();
        let seen = service.clone().oneshot(request).await.unwrap();
        assert_eq!(seen, Some(ClientIdentity("alice".into())));
        let seen = service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(seen, None);
    }
}
