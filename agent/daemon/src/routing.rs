//! Answers calls to services or methods this agent does not serve with
//! UNIMPLEMENTED and a message that names the versions it does serve (tonic's
//! own answer has no message), so that a client built for another API
//! version learns what to use instead.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message;
use tonic::Status;

/// The gRPC paths (`/package.Service/Method`) this agent serves, read from
/// the descriptor sets it also serves through reflection.
#[derive(Debug, Clone)]
pub struct KnownMethods {
    paths: Arc<BTreeSet<String>>,
    services: Arc<BTreeSet<String>>,
}

impl KnownMethods {
    /// Collects every method of every service in the encoded
    /// `FileDescriptorSet`s.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut paths = BTreeSet::new();
        let mut services = BTreeSet::new();
        for set in sets {
            let fds = prost_types::FileDescriptorSet::decode(*set)?;
            for file in fds.file {
                let package = file.package.unwrap_or_default();
                for svc in file.service {
                    let full = match package.as_str() {
                        "" => svc.name().to_string(),
                        p => format!("{p}.{}", svc.name()),
                    };
                    for m in svc.method {
                        paths.insert(format!("/{full}/{}", m.name()));
                    }
                    services.insert(full);
                }
            }
        }
        Ok(Self {
            paths: Arc::new(paths),
            services: Arc::new(services),
        })
    }

    /// The descriptor sets of everything the agent serves: the DebVisor
    /// services, grpc.health.v1 and both reflection versions.
    pub fn agent() -> Self {
        Self::from_descriptor_sets(&[
            debvisor_api::DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])
        .expect("the built-in descriptor sets decode")
    }

    /// `None` when `path` is served; otherwise the UNIMPLEMENTED status to
    /// answer with.
    pub fn check(&self, path: &str) -> Option<Status> {
        if self.paths.contains(path) {
            return None;
        }
        let supported = debvisor_api::SUPPORTED_SERVICES.join(", ");
        let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        let msg = if self.services.contains(service) {
            format!("Method {path} is not part of {service}; this agent serves {supported}")
        } else {
            format!(
                "Service {service:?} is not served by this agent (version {}); it serves {supported}, plus grpc.health.v1.Health and server reflection",
                env!("CARGO_PKG_VERSION")
            )
        };
        Some(Status::unimplemented(msg))
    }
}

/// A tower layer answering unknown paths before they reach tonic's router.
#[derive(Debug, Clone)]
pub struct UnknownMethodLayer {
    known: KnownMethods,
}

impl UnknownMethodLayer {
    /// A layer checking paths against `known`.
    pub fn new(known: KnownMethods) -> Self {
        Self { known }
    }
}

impl<S> tower::Layer<S> for UnknownMethodLayer {
    type Service = UnknownMethod<S>;
    fn layer(&self, inner: S) -> Self::Service {
        UnknownMethod {
            inner,
            known: self.known.clone(),
        }
    }
}

/// The service made by [`UnknownMethodLayer`].
#[derive(Debug, Clone)]
pub struct UnknownMethod<S> {
    inner: S,
    known: KnownMethods,
}

impl<S, B, RB> tower::Service<http::Request<B>> for UnknownMethod<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, std::future::Ready<Result<http::Response<RB>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.known.check(req.uri().path()) {
            None => futures_util::future::Either::Left(self.inner.call(req)),
            Some(status) => futures_util::future::Either::Right(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_paths() {
        let k = KnownMethods::agent();
        assert!(k.check("/debvisor.node.v1.NodeService/GetStatus").is_none());
        assert!(k.check("/debvisor.units.v1.UnitService/Restart").is_none());
        assert!(k.check("/debvisor.config.v1.ConfigService/GetClientBundle").is_none());
        assert!(k.check("/debvisor.config.v1.ConfigService/GetMachineConfig").is_none());
        for m in [
            "GetSlots",
            "Install",
            "Upload",
            "WatchInstall",
            "MarkGood",
            "MarkBad",
            "Rollback",
        ] {
            assert!(
                k.check(&format!("/debvisor.update.v1.UpdateService/{m}")).is_none(),
                "{m}"
            );
        }
        assert!(k.check("/grpc.health.v1.Health/Check").is_none());
        assert!(
            k.check("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
                .is_none()
        );

        let s = k.check("/debvisor.node.v2.NodeService/GetStatus").unwrap();
        assert_eq!(s.code(), tonic::Code::Unimplemented);
        assert!(s.message().contains("debvisor.node.v1.NodeService"), "{}", s.message());
        assert!(s.message().contains("debvisor.node.v2.NodeService"), "{}", s.message());
        assert!(
            s.message().contains("debvisor.config.v1.ConfigService"),
            "{}",
            s.message()
        );

        let s = k.check("/debvisor.node.v1.NodeService/Explode").unwrap();
        assert!(
            s.message().contains("Method /debvisor.node.v1.NodeService/Explode"),
            "{}",
            s.message()
        );
    }
}
