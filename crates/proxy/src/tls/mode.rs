//! The inbound side's decisions, as plain functions: which mode applies
//! (the effective PeerAuthentication and whether the proxy has a
//! certificate), and what to do with a new connection given its first bytes.

use trellis_model::peer_authentication::{Effective, MtlsMode};

use crate::http::detect::Detected;

/// What the inbound listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum InboundMode {
    /// As without a mesh: HTTP and opaque bytes, TLS passed through to the app.
    Plaintext,
    /// mTLS terminated when the client starts with a TLS ClientHello,
    /// plaintext otherwise.
    Permissive,
    /// mTLS only: anything else is closed.
    Strict,
    /// STRICT was asked for but the proxy has no certificate: everything
    /// is refused (configuration loading rejects this; it is here so the
    /// data path cannot fall back to plaintext silently).
    StrictWithoutCertificate,
}

/// The mode for the effective policy. No policy: STRICT with a
/// certificate (zero trust by default), plaintext without one (a proxy
/// outside any mesh behaves as before). PERMISSIVE without a certificate
/// can only accept plaintext.
pub fn inbound_mode(policy: &Effective, has_certificate: bool) -> InboundMode {
    match (policy.mode, has_certificate) {
        (MtlsMode::Strict, true) | (MtlsMode::Unset, true) => InboundMode::Strict,
        (MtlsMode::Strict, false) => InboundMode::StrictWithoutCertificate,
        (MtlsMode::Permissive, true) => InboundMode::Permissive,
        (MtlsMode::Permissive, false) | (MtlsMode::Disable, _) | (MtlsMode::Unset, false) => {
            InboundMode::Plaintext
        }
    }
}

/// Why a policy cannot be served (a start or reload error), if it cannot.
pub fn check(policy: &Effective, has_certificate: bool) -> Result<(), String> {
    match inbound_mode(policy, has_certificate) {
        InboundMode::StrictWithoutCertificate => Err(format!(
            "{} sets mTLS mode STRICT for this workload, but this proxy has no certificate: \
             start it with --identity-dir DIR (cert.pem, key.pem, roots.pem), or set PERMISSIVE or DISABLE",
            policy.from.as_deref().unwrap_or("a PeerAuthentication")
        )),
        _ => Ok(()),
    }
}

/// What happens to a new inbound connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Terminate TLS (the client must present a certificate).
    Tls,
    /// Serve as the first bytes say, without TLS.
    Plain,
    /// Close it; the reason is the metric label.
    Refuse(&'static str),
}

pub const REFUSED_PLAINTEXT: &str = "plaintext_refused";
pub const REFUSED_HANDSHAKE: &str = "tls_handshake";
pub const REFUSED_NO_CERTIFICATE: &str = "no_certificate";

pub fn admit(mode: InboundMode, first_bytes: Detected) -> Admit {
    match (mode, first_bytes) {
        (InboundMode::Strict | InboundMode::Permissive, Detected::Tls) => Admit::Tls,
        (InboundMode::Strict, _) => Admit::Refuse(REFUSED_PLAINTEXT),
        (InboundMode::StrictWithoutCertificate, _) => Admit::Refuse(REFUSED_NO_CERTIFICATE),
        (InboundMode::Permissive | InboundMode::Plaintext, _) => Admit::Plain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_admission() {
        use Detected::*;
        use InboundMode::*;
        let eff = |mode| Effective {
            mode,
            from: Some("shop/pa".into()),
        };
        let cases = [
            (MtlsMode::Unset, true, Strict),
            (MtlsMode::Unset, false, Plaintext),
            (MtlsMode::Strict, true, Strict),
            (MtlsMode::Strict, false, StrictWithoutCertificate),
            (MtlsMode::Permissive, true, Permissive),
            (MtlsMode::Permissive, false, Plaintext),
            (MtlsMode::Disable, true, Plaintext),
            (MtlsMode::Disable, false, Plaintext),
        ];
        for (policy, cert, want) in cases {
            assert_eq!(
                inbound_mode(&eff(policy), cert),
                want,
                "{policy:?} cert={cert}"
            );
            assert_eq!(
                check(&eff(policy), cert).is_err(),
                want == StrictWithoutCertificate
            );
        }
        let err = check(&eff(MtlsMode::Strict), false).unwrap_err();
        assert!(
            err.contains("shop/pa") && err.contains("--identity-dir"),
            "{err}"
        );

        let admission = [
            (Strict, Tls, Admit::Tls),
            (Strict, Http1, Admit::Refuse(REFUSED_PLAINTEXT)),
            (Strict, Http2, Admit::Refuse(REFUSED_PLAINTEXT)),
            (Strict, Opaque, Admit::Refuse(REFUSED_PLAINTEXT)),
            (Permissive, Tls, Admit::Tls),
            (Permissive, Http1, Admit::Plain),
            (Permissive, Opaque, Admit::Plain),
            (Plaintext, Tls, Admit::Plain),
            (Plaintext, Http2, Admit::Plain),
            (
                StrictWithoutCertificate,
                Tls,
                Admit::Refuse(REFUSED_NO_CERTIFICATE),
            ),
        ];
        for (mode, first, want) in admission {
            assert_eq!(admit(mode, first), want, "{mode:?} {first:?}");
        }
    }
}
