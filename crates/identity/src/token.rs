//! Bootstrap tokens: what a proxy shows to get a certificate. A token names
//! one namespace and service account, an expiry and an id, and is signed
//! with HMAC-SHA256 under a key only the control plane has
//! (`ca/token.key`). Format (docs/identity.md):
//!
//! `tbt1.<base64url(JSON claims)>.<base64url(HMAC-SHA256 over "tbt1.<claims>")>`
//!
//! A token is a bearer secret: it never appears in a log line, an error
//! message or Debug output. Its `id` may (it names the token, grants nothing).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::files::{self, FileError};
use crate::spiffe::{SpiffeError, check_segment};

const PREFIX: &str = "tbt1.";
const KEY_LEN: usize = 32;
/// Longer than any sensible token; bounds the work an unauthenticated
/// caller can make us do.
const MAX_TOKEN_LEN: usize = 2048;

/// What a token authorizes: certificates for one namespace and service
/// account, until `expires`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// Random, 16 bytes hex: names the token in logs and audit.
    pub id: String,
    #[serde(rename = "ns")]
    pub namespace: String,
    #[serde(rename = "sa")]
    pub service_account: String,
    /// Unix seconds.
    #[serde(rename = "exp")]
    pub expires: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bootstrap token is malformed ({0}); create one with `trellis token create`")]
    Malformed(&'static str),
    #[error(
        "the bootstrap token's signature does not verify: it was not made by this control plane (or its ca/token.key changed)"
    )]
    BadSignature,
    #[error(
        "the bootstrap token {id} expired {ago}s ago; create a new one with `trellis token create`"
    )]
    Expired { id: String, ago: u64 },
    #[error("cannot make a token: {0}")]
    Claims(#[from] SpiffeError),
    #[error("cannot make a token: the ttl must be at least one second")]
    Ttl,
    #[error("cannot make a token: no randomness from the system")]
    Random,
}

/// The HMAC key. Debug shows no key material.
pub struct TokenKey {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{} is not a token key: it must hold {KEY_LEN} bytes; remove it to make a new one (every token made with it stops working)", path.display())]
    Length { path: std::path::PathBuf },
    #[error("no randomness from the system to make the token key")]
    Random,
}

impl TokenKey {
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> TokenKey {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    pub fn generate() -> Result<(TokenKey, [u8; KEY_LEN]), TokenKeyError> {
        let mut bytes = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| TokenKeyError::Random)?;
        Ok((TokenKey::from_bytes(&bytes), bytes))
    }

    /// Load the key at `path`, or create it (0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<TokenKey, TokenKeyError> {
        if path.exists() {
            let bytes = files::read_private(path)?;
            let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| TokenKeyError::Length {
                path: path.to_path_buf(),
            })?;
            return Ok(TokenKey::from_bytes(&bytes));
        }
        let (key, bytes) = TokenKey::generate()?;
        files::write_private(path, &bytes)?;
        Ok(key)
    }

    /// A new token for `namespace`/`service_account`, valid for `ttl` from `now`.
    pub fn create(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(String, Claims), TokenError> {
        check_segment("namespace", namespace)?;
        check_segment("service account", service_account)?;
        if ttl < Duration::from_secs(1) {
            return Err(TokenError::Ttl);
        }
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| TokenError::Random)?;
        let claims = Claims {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            expires: unix(now).saturating_add(ttl.as_secs()),
        };
        Ok((self.encode(&claims), claims))
    }

    /// Sign `claims` as they are (tests make expired tokens with it).
    pub fn encode(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = format!("{PREFIX}{}", B64.encode(json));
        let tag = hmac::sign(&self.key, token.as_bytes());
        token.push('.');
        token.push_str(&B64.encode(tag.as_ref()));
        token
    }

    /// The claims of a token this key signed, if it has not expired at `now`.
    /// The signature is checked (in constant time) before anything in the
    /// token is believed or parsed as JSON.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        if !token.starts_with(PREFIX) {
            return Err(TokenError::Malformed("it does not start with tbt1."));
        }
        let (signed, tag) = token
            .rsplit_once('.')
            .filter(|(s, _)| s.len() > PREFIX.len())
            .ok_or(TokenError::Malformed("no signature part"))?;
        let tag = B64
            .decode(tag)
            .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
        hmac::verify(&self.key, signed.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
        let json = B64
            .decode(&signed[PREFIX.len()..])
            .map_err(|_| TokenError::Malformed("the claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("the claims are not the expected JSON"))?;
        let now = unix(now);
        if claims.expires <= now {
            return Err(TokenError::Expired {
                id: claims.id,
                ago: now - claims.expires,
            });
        }
        // Signed by us, so made by `create`, which checked these; checked
        // again so a token from a future format cannot smuggle a path in.
        check_segment("namespace", &claims.namespace)
            .and_then(|()| check_segment("service account", &claims.service_account))
            .map_err(|_| TokenError::Malformed("bad namespace or service account"))?;
        Ok(claims)
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn create_then_verify() {
        let key = TokenKey::from_bytes(&[7; KEY_LEN]);
        let (token, claims) = key
            .create("default", "reviews", Duration::from_secs(3600), at(1000))
            .unwrap();
        assert_eq!(claims.expires, 4600);
        assert_eq!(claims.id.len(), 32);
        assert_eq!(key.verify(&token, at(4599)).unwrap(), claims);
        let expired = key.verify(&token, at(4600)).unwrap_err();
        assert_eq!(
            expired,
            TokenError::Expired {
                id: claims.id.clone(),
                ago: 0
            }
        );
    }

    #[test]
    fn refusals() {
        let key = TokenKey::from_bytes(&[7; KEY_LEN]);
        let other = TokenKey::from_bytes(&[8; KEY_LEN]);
        let (token, claims) = key
            .create("default", "reviews", Duration::from_secs(60), at(0))
            .unwrap();
        // Claims changed but the old signature kept: another SA's identity
        // cannot be had by editing a token.
        let forged = {
            let mut c = claims.clone();
            c.service_account = "admin".into();
            let sig = token.rsplit_once('.').unwrap().1;
            let body = key.encode(&c);
            format!("{}.{sig}", body.rsplit_once('.').unwrap().0)
        };
        let cases: Vec<(String, TokenError)> = vec![
            (
                "".into(),
                TokenError::Malformed("it does not start with tbt1."),
            ),
            (
                "Bearer x".into(),
                TokenError::Malformed("it does not start with tbt1."),
            ),
            ("tbt1.".into(), TokenError::Malformed("no signature part")),
            (
                "tbt1.abc.!!".into(),
                TokenError::Malformed("the signature is not base64url"),
            ),
            ("tbt1.abc.AAAA".into(), TokenError::BadSignature),
            ("x".repeat(5000), TokenError::Malformed("too long")),
            (other.encode(&claims), TokenError::BadSignature),
            (forged, TokenError::BadSignature),
            (
                key.encode(&Claims {
                    namespace: "../etc".into(),
                    ..claims.clone()
                }),
                TokenError::Malformed("bad namespace or service account"),
            ),
        ];
        for (input, want) in cases {
            let got = key.verify(&input, at(1)).unwrap_err();
            assert_eq!(got, want, "{input}");
            // Messages never repeat the token.
            if input.len() > 8 {
                assert!(!got.to_string().contains(&input));
            }
        }
        assert!(matches!(
            key.create("default", "a/b", Duration::from_secs(60), at(0)),
            Err(TokenError::Claims(_))
        ));
        assert_eq!(
            key.create("default", "a", Duration::ZERO, at(0)),
            Err(TokenError::Ttl)
        );
    }

    #[test]
    fn key_file_is_private_and_survives_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let first = TokenKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (token, _) = first
            .create("ns", "sa", Duration::from_secs(60), at(0))
            .unwrap();
        let again = TokenKey::load_or_create(&path).unwrap();
        assert!(again.verify(&token, at(1)).is_ok());
        assert_eq!(format!("{again:?}"), "TokenKey(<redacted>)");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            TokenKey::load_or_create(&path),
            Err(TokenKeyError::File(FileError::Exposed { .. }))
        ));
    }
}
