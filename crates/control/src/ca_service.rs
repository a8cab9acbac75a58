//! Istio's CA protocol on the xDS listener:
//! `istio.v1.auth.IstioCertificateService/CreateCertificate`. The caller
//! authenticates with `authorization: Bearer <bootstrap token>`; the
//! certificate names the token's identity whatever the CSR asks for.
//! Written against tonic's server pieces (no protoc): the messages are in
//! `trellis_identity::proto`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tonic::codegen::Service;
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use trellis_identity::proto::{
    CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse,
};

use crate::identity::{Identity, Refused};
use crate::metrics::Metrics;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The service, for `tonic::transport::Server::add_service`.
#[derive(Clone)]
pub struct CaService {
    identity: Arc<Identity>,
    metrics: Arc<Metrics>,
}

impl CaService {
    pub fn new(identity: Arc<Identity>, metrics: Arc<Metrics>) -> CaService {
        CaService { identity, metrics }
    }

    /// One request, start to end: the gRPC status says what to fix.
    pub fn create_certificate(
        &self,
        token: Option<&str>,
        request: &IstioCertificateRequest,
        now: SystemTime,
    ) -> Result<IstioCertificateResponse, Status> {
        let lifetime = u64::try_from(request.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        match self
            .identity
            .issue(token, request.csr.as_bytes(), lifetime, now)
        {
            Ok((id, claims, issued)) => {
                self.metrics.certificate(None);
                tracing::info!(
                    spiffe_id = %id,
                    serial = %issued.serial,
                    not_after = issued.not_after.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    token_id = %claims.id,
                    "certificate issued"
                );
                Ok(IstioCertificateResponse {
                    cert_chain: issued.chain,
                })
            }
            Err(e) => {
                self.metrics.certificate(Some(e.reason()));
                tracing::warn!(reason = e.reason(), error = %e, "certificate refused");
                Err(if e.is_authentication() {
                    Status::unauthenticated(e.to_string())
                } else if matches!(
                    e,
                    Refused::Csr(
                        trellis_identity::SignError::SignerExpired
                            | trellis_identity::SignError::Sign(_)
                    )
                ) {
                    Status::internal(e.to_string())
                } else {
                    Status::invalid_argument(e.to_string())
                })
            }
        }
    }
}

impl NamedService for CaService {
    const NAME: &'static str = trellis_identity::proto::SERVICE;
}

/// The token from `authorization: Bearer <token>`, if any (the same
/// parsing as the ADS streams').
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<trellis_xds::Bearer> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    trellis_xds::Bearer::from_header(value)
}

struct Create(CaService);

impl UnaryService<IstioCertificateRequest> for Create {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<Result<Response<IstioCertificateResponse>, Status>>;

    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        // Signing is ~100 µs of CPU: done in place rather than paying a
        // hop to the blocking pool per certificate.
        let result = self
            .0
            .create_certificate(
                bearer(request.metadata())
                    .as_ref()
                    .map(trellis_xds::Bearer::token),
                request.get_ref(),
                SystemTime::now(),
            )
            .map(Response::new);
        Box::pin(std::future::ready(result))
    }
}

impl Service<http::Request<tonic::body::Body>> for CaService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != CREATE_CERTIFICATE {
            let status = Status::unimplemented(format!(
                "{} is not a method of {}; it has CreateCertificate",
                req.uri().path(),
                trellis_identity::proto::SERVICE
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let svc = Create(self.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(svc, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;
    use tonic::metadata::MetadataMap;

    #[test]
    fn bearer_tokens() {
        let cases = [
            (Some("Bearer tbt1.a.b"), Some("tbt1.a.b")),
            (Some("bearer  tbt1.a.b "), Some("tbt1.a.b")),
            (Some("Basic dXNlcg=="), None),
            (Some("Bearer "), None),
            (Some("tbt1.a.b"), None),
            (None, None),
        ];
        for (header, want) in cases {
            let mut m = MetadataMap::new();
            if let Some(h) = header {
                m.insert("authorization", h.parse().unwrap());
            }
            assert_eq!(
                bearer(&m).as_ref().map(trellis_xds::Bearer::token),
                want,
                "{header:?}"
            );
            if let Some(b) = bearer(&m) {
                assert_eq!(format!("{b:?}"), "Bearer(<redacted>)");
            }
        }
    }
}
