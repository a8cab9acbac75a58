//! Istio's CA protocol (`istio.v1.auth.IstioCertificateService`, from
//! istio/api `security/v1alpha1/ca.proto`), written out as prost messages
//! so neither side needs protoc. `trellis control` serves it on the xDS
//! listener; a proxy calls it with `authorization: Bearer <token>`.

/// The one method's gRPC path.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// The service name (tonic's `NamedService`).
pub const SERVICE: &str = "istio.v1.auth.IstioCertificateService";

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded PKCS#10 CSR. Only its public key is used.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds; 0 or less: the default (24 h).
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Istio's opaque node metadata; ignored.
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: the leaf first, the root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}
