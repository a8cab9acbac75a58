//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`): parsing, and reading the
//! one a certificate carries in its URI SAN.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A workload identity. Istio's form is `spiffe://<td>/ns/<ns>/sa/<sa>`, but
/// any path is kept as given: authorization compares whole IDs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(into = "String")]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("{0:?} is not a SPIFFE ID: it must start with spiffe://")]
    Scheme(String),
    #[error(
        "{0:?} is not a SPIFFE ID: the trust domain must be non-empty lower-case letters, digits, '.', '-' or '_'"
    )]
    TrustDomain(String),
    #[error(
        "{0:?} is not a SPIFFE ID: the path must be non-empty segments of letters, digits, '.', '-' or '_' (no query or fragment)"
    )]
    Path(String),
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error(
        "the certificate carries {0} spiffe:// URI SANs; a workload certificate has exactly one"
    )]
    Several(usize),
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeError> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeError::Scheme(s.to_string()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let td_ok = !td.is_empty()
            && td.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if !td_ok {
            return Err(SpiffeError::TrustDomain(s.to_string()));
        }
        // The SPIFFE spec: segments are non-empty, not `.` or `..`, and use
        // only these characters.
        let path_ok = !path.is_empty()
            && path[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            });
        if !path_ok {
            return Err(SpiffeError::Path(s.to_string()));
        }
        Ok(SpiffeId {
            trust_domain: td.to_string(),
            path: path.to_string(),
        })
    }

    /// Istio's identity of a service account.
    pub fn istio(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeError> {
        SpiffeId::parse(&format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Istio's namespace segment (`/ns/<ns>/...`), for `source.namespace`.
    pub fn namespace(&self) -> Option<&str> {
        let mut segs = self.path[1..].split('/');
        (segs.next() == Some("ns")).then(|| segs.next()).flatten()
    }

    /// The certificate's SPIFFE ID: its one `spiffe://` URI SAN. None when it
    /// has none (a certificate from outside the mesh).
    pub fn from_cert(der: &[u8]) -> Result<Option<SpiffeId>, SpiffeError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| SpiffeError::Certificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| SpiffeError::Certificate(e.to_string()))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Ok(None),
            [one] => SpiffeId::parse(one).map(Some),
            many => Err(SpiffeError::Several(many.len())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.to_string()
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let ok = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").unwrap();
        assert_eq!(ok.trust_domain(), "cluster.local");
        assert_eq!(ok.namespace(), Some("default"));
        assert_eq!(
            ok.to_string(),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
        let bad = [
            ("http://cluster.local/ns/a/sa/b", "spiffe://"),
            ("spiffe:///ns/a", "trust domain"),
            ("spiffe://Cluster.local/ns/a", "trust domain"),
            ("spiffe://cluster.local", "path"),
            ("spiffe://cluster.local/", "path"),
            ("spiffe://cluster.local/ns//sa", "path"),
            ("spiffe://cluster.local/ns/../sa", "path"),
            ("spiffe://cluster.local/ns/a?x=1", "path"),
        ];
        for (input, why) in bad {
            let err = SpiffeId::parse(input).unwrap_err().to_string();
            assert!(err.contains(why), "{input}: {err}");
        }
        assert_eq!(
            SpiffeId::parse("spiffe://td/other").unwrap().namespace(),
            None
        );
    }
}
