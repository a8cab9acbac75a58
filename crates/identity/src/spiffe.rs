//! SPIFFE IDs of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`
//! (Istio's form), parsed, formatted and read from a certificate's URI SAN.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// A workload's identity. Every part is checked when made, so a `SpiffeId`
/// always formats to a valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("{0:?} is not a SPIFFE ID: it must start with spiffe://")]
    Scheme(String),
    #[error(
        "{0:?} is not a workload SPIFFE ID: the path must be /ns/<namespace>/sa/<service-account>"
    )]
    Path(String),
    #[error(
        "the trust domain {0:?} is not valid: use lowercase letters, digits, '.', '-' and '_' (at most 255)"
    )]
    TrustDomain(String),
    #[error(
        "the {what} {value:?} is not valid: use letters, digits, '.', '-' and '_' (not empty, not '.' or '..', at most 253)"
    )]
    Segment { what: &'static str, value: String },
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("the certificate has no spiffe:// URI SAN")]
    NoUriSan,
    #[error("the certificate has {0} spiffe:// URI SANs; an SVID has exactly one")]
    SeveralUriSans(usize),
}

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeError> {
        check_trust_domain(trust_domain)?;
        check_segment("namespace", namespace)?;
        check_segment("service account", service_account)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeError> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeError::Scheme(s.to_owned()))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| SpiffeError::Path(s.to_owned()))?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] => SpiffeId::new(td, ns, sa),
            _ => Err(SpiffeError::Path(s.to_owned())),
        }
    }

    /// The one `spiffe://` URI SAN of a DER certificate (an X.509 SVID).
    pub fn from_cert_der(der: &[u8]) -> Result<SpiffeId, SpiffeError> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| SpiffeError::Certificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| SpiffeError::Certificate(e.to_string()))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|s| s.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(SpiffeError::NoUriSan),
            [one] => SpiffeId::parse(one),
            many => Err(SpiffeError::SeveralUriSans(many.len())),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// SPIFFE's trust-domain characters (lowercase only, so two spellings of
/// one domain cannot be two identities).
pub fn check_trust_domain(td: &str) -> Result<(), SpiffeError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::TrustDomain(td.to_owned()))
    }
}

/// SPIFFE's path-segment characters; the length limit is Kubernetes'
/// (names are DNS subdomains).
pub fn check_segment(what: &'static str, value: &str) -> Result<(), SpiffeError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::Segment {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let ok = [
            "spiffe://cluster.local/ns/default/sa/reviews",
            "spiffe://example.org/ns/a-b_c.d/sa/S1",
        ];
        for s in ok {
            assert_eq!(SpiffeId::parse(s).unwrap().to_string(), s);
        }
        let id = SpiffeId::parse(ok[0]).unwrap();
        assert_eq!(
            (id.trust_domain(), id.namespace(), id.service_account()),
            ("cluster.local", "default", "reviews")
        );
    }

    #[test]
    fn rejects() {
        type Is = fn(&SpiffeError) -> bool;
        let cases: &[(&str, Is)] = &[
            ("https://cluster.local/ns/a/sa/b", |e| {
                matches!(e, SpiffeError::Scheme(_))
            }),
            ("spiffe://cluster.local", |e| {
                matches!(e, SpiffeError::Path(_))
            }),
            ("spiffe://cluster.local/ns/a", |e| {
                matches!(e, SpiffeError::Path(_))
            }),
            ("spiffe://cluster.local/ns/a/sa/b/c", |e| {
                matches!(e, SpiffeError::Path(_))
            }),
            ("spiffe://cluster.local/sa/a/ns/b", |e| {
                matches!(e, SpiffeError::Path(_))
            }),
            ("spiffe://Cluster.Local/ns/a/sa/b", |e| {
                matches!(e, SpiffeError::TrustDomain(_))
            }),
            ("spiffe:///ns/a/sa/b", |e| {
                matches!(e, SpiffeError::TrustDomain(_))
            }),
            ("spiffe://td/ns//sa/b", |e| {
                matches!(
                    e,
                    SpiffeError::Segment {
                        what: "namespace",
                        ..
                    }
                )
            }),
            ("spiffe://td/ns/../sa/b", |e| {
                matches!(
                    e,
                    SpiffeError::Segment {
                        what: "namespace",
                        ..
                    }
                )
            }),
            ("spiffe://td/ns/a/sa/b%20c", |e| {
                matches!(
                    e,
                    SpiffeError::Segment {
                        what: "service account",
                        ..
                    }
                )
            }),
        ];
        for (input, want) in cases {
            let err = SpiffeId::parse(input).unwrap_err();
            assert!(want(&err), "{input}: {err:?}");
        }
    }

    #[test]
    fn from_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let make = |sans: Vec<rcgen::SanType>| {
            let mut p = rcgen::CertificateParams::default();
            p.subject_alt_names = sans;
            p.self_signed(&key).unwrap().der().to_vec()
        };
        let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());
        let dns = rcgen::SanType::DnsName("x.example".try_into().unwrap());
        let one = make(vec![dns.clone(), uri("spiffe://td/ns/n/sa/s")]);
        assert_eq!(
            SpiffeId::from_cert_der(&one).unwrap().to_string(),
            "spiffe://td/ns/n/sa/s"
        );
        assert_eq!(
            SpiffeId::from_cert_der(&make(vec![dns])).unwrap_err(),
            SpiffeError::NoUriSan
        );
        assert_eq!(
            SpiffeId::from_cert_der(&make(vec![
                uri("spiffe://td/ns/n/sa/s"),
                uri("spiffe://td/ns/n/sa/t")
            ]))
            .unwrap_err(),
            SpiffeError::SeveralUriSans(2)
        );
        assert!(matches!(
            SpiffeId::from_cert_der(b"junk").unwrap_err(),
            SpiffeError::Certificate(_)
        ));
    }
}
