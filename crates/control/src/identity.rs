//! The control plane's identity state: the CA (made in the data directory
//! on first start, or the operator's `--ca-cert`), the trust bundle
//! (persisted; SDS follows it), and the bootstrap-token key. Issuing a
//! certificate = verify the token, name the SPIFFE ID from the token's
//! claims (never from the CSR), sign. See docs/identity.md.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use trellis_identity::token::TokenKeyError;
use trellis_identity::{
    Authority, BundleError, CaError, Claims, Issued, Root, SignError, SpiffeError, SpiffeId,
    TokenError, TokenKey, TrustBundle,
};

/// The token key's file inside the CA directory.
pub const TOKEN_KEY_FILE: &str = "token.key";

/// An operator's CA: `cert` signs (a root or an intermediate), `chain` holds
/// its issuers up to the root.
#[derive(Debug, Clone)]
pub struct OperatorCa {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub trust_domain: String,
    /// None: a root made (once) in the data directory.
    pub operator_ca: Option<OperatorCa>,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        IdentitySettings {
            trust_domain: "cluster.local".into(),
            operator_ca: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot create the CA directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the certificate authority: {0}")]
    Ca(#[from] CaError),
    #[error("the trust bundle: {0}")]
    Bundle(#[from] BundleError),
    #[error("the bootstrap token key: {0}")]
    TokenKey(#[from] TokenKeyError),
}

/// Why a CSR got no certificate.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "no bootstrap token: send gRPC metadata `authorization: Bearer <token>` (make one with `trellis token create`)"
    )]
    NoToken,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the token's identity: {0}")]
    Identity(#[from] SpiffeError),
    #[error(transparent)]
    Csr(#[from] SignError),
}

impl Refused {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::NoToken => "no_token",
            Refused::Token(TokenError::Expired { .. }) => "token_expired",
            Refused::Token(TokenError::BadSignature) => "token_bad_signature",
            Refused::Token(_) => "token_malformed",
            Refused::Identity(_) => "bad_identity",
            Refused::Csr(SignError::Signature) => "csr_bad_signature",
            Refused::Csr(SignError::Parse(_) | SignError::KeyType) => "csr_malformed",
            Refused::Csr(_) => "ca_error",
        }
    }

    /// The caller's fault (its token or CSR), as opposed to the CA's.
    pub fn is_authentication(&self) -> bool {
        matches!(
            self,
            Refused::NoToken | Refused::Token(_) | Refused::Identity(_)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error(
        "the CA is the operator's (--ca-cert): rotate by restarting with the new --ca-cert; the old root stays trusted until `trellis ca remove`"
    )]
    OperatorCa,
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// One trusted root, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RootView {
    pub fingerprint: String,
    pub subject: String,
    #[serde(rename = "notAfter")]
    pub not_after: String,
    /// Whether it signs new workload certificates.
    pub signer: bool,
}

pub struct Identity {
    ca_dir: PathBuf,
    authority: RwLock<Arc<Authority>>,
    bundle: watch::Sender<Arc<TrustBundle>>,
    tokens: TokenKey,
    /// Serializes root changes (each writes files, then swaps).
    changing: Mutex<()>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("ca_dir", &self.ca_dir)
            .field("authority", &self.authority())
            .field("roots", &self.bundle.borrow().roots().len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Open (or, on first start, create) the CA state in `data_dir/ca`.
    pub fn open(
        data_dir: &Path,
        settings: &IdentitySettings,
        now: SystemTime,
    ) -> Result<Identity, IdentityError> {
        let ca_dir = data_dir.join(trellis_identity::CA_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ca_dir)
            .map_err(|source| IdentityError::Dir {
                path: ca_dir.clone(),
                source,
            })?;
        let tokens = TokenKey::load_or_create(&ca_dir.join(TOKEN_KEY_FILE))?;
        let authority = match &settings.operator_ca {
            Some(op) => Authority::load(
                &op.cert,
                &op.key,
                op.chain.as_deref(),
                &settings.trust_domain,
                now,
            )?,
            None => {
                let (ca, created) =
                    Authority::load_or_create(&ca_dir, &settings.trust_domain, now)?;
                if created {
                    tracing::info!(
                        root = %ca.root().fingerprint,
                        dir = %ca_dir.display(),
                        "created the CA root (key 0600 in the data directory)"
                    );
                }
                ca
            }
        };
        let mut bundle = TrustBundle::load(&ca_dir)?.unwrap_or_default();
        if bundle.add(authority.root().clone()) {
            bundle.save(&ca_dir)?;
        }
        tracing::info!(
            trust_domain = %settings.trust_domain,
            signer_root = %authority.root().fingerprint,
            operator_ca = authority.is_operator(),
            trusted_roots = bundle.roots().len(),
            "certificate authority ready"
        );
        Ok(Identity {
            ca_dir,
            authority: RwLock::new(Arc::new(authority)),
            bundle: watch::Sender::new(Arc::new(bundle)),
            tokens,
            changing: Mutex::new(()),
        })
    }

    pub fn authority(&self) -> Arc<Authority> {
        self.authority
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn trust_domain(&self) -> String {
        self.authority().trust_domain().to_owned()
    }

    /// The trusted roots, now and after every change.
    pub fn bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    pub fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(String, Claims), TokenError> {
        self.tokens.create(namespace, service_account, ttl, now)
    }

    /// The identity a token grants.
    pub fn authenticate(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<(SpiffeId, Claims), Refused> {
        let claims = self.tokens.verify(token, now)?;
        let id = SpiffeId::new(
            &self.trust_domain(),
            &claims.namespace,
            &claims.service_account,
        )?;
        Ok((id, claims))
    }

    /// A certificate for `csr`'s key, naming the token's identity.
    pub fn issue(
        &self,
        token: Option<&str>,
        csr: &[u8],
        lifetime: Option<Duration>,
        now: SystemTime,
    ) -> Result<(SpiffeId, Claims, Issued), Refused> {
        let (id, claims) = self.authenticate(token.ok_or(Refused::NoToken)?, now)?;
        let issued = self.authority().sign(csr, &id, lifetime, now)?;
        Ok((id, claims, issued))
    }

    /// A new root, the signer from now on; the old ones stay trusted.
    pub fn rotate(&self, now: SystemTime) -> Result<RootView, RootsError> {
        let _guard = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.authority();
        if current.is_operator() {
            return Err(RootsError::OperatorCa);
        }
        let next = Authority::generate(current.trust_domain(), now)?;
        // Trusted before it signs anything: a crash after this line leaves
        // an extra trusted root, never a certificate nobody trusts.
        let mut bundle = TrustBundle::clone(&self.bundle.borrow());
        bundle.add(next.root().clone());
        bundle.save(&self.ca_dir)?;
        next.save_root(&self.ca_dir)?;
        let view = view(next.root(), true);
        tracing::info!(root = %view.fingerprint, replaces = %current.root().fingerprint, "CA root rotated; the old root stays trusted until removed");
        *self
            .authority
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        self.bundle.send_replace(Arc::new(bundle));
        Ok(view)
    }

    /// Stop trusting a root (not the signer's).
    pub fn remove_root(&self, fingerprint: &str) -> Result<RootView, RootsError> {
        let _guard = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let signer = self.authority().root().fingerprint.clone();
        let mut bundle = TrustBundle::clone(&self.bundle.borrow());
        let removed = bundle.remove(fingerprint, &signer)?;
        bundle.save(&self.ca_dir)?;
        tracing::info!(root = %removed.fingerprint, "CA root no longer trusted");
        self.bundle.send_replace(Arc::new(bundle));
        Ok(view(&removed, false))
    }

    pub fn roots(&self) -> Vec<RootView> {
        let signer = self.authority().root().fingerprint.clone();
        self.bundle
            .borrow()
            .roots()
            .iter()
            .map(|r| view(r, r.fingerprint == signer))
            .collect()
    }
}

fn view(root: &Root, signer: bool) -> RootView {
    RootView {
        fingerprint: root.fingerprint.clone(),
        subject: root.subject.clone(),
        not_after: root.not_after_rfc3339(),
        signer,
    }
}

#[cfg(test)]
mod tests;
