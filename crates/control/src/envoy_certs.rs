//! Workload certificates for a stock Envoy, which cannot make a CSR: a
//! stream that presented a bootstrap token (`authorization: Bearer` in its
//! ADS request metadata) gets the Secret `default`, a certificate for the
//! token's identity and a private key the control plane made for it. The
//! difference from a CSR (trellis-proxy) is that the key crosses the xDS
//! connection; docs/identity.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use trellis_identity::SpiffeId;
use trellis_xds::Connection;
use trellis_xds::envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use trellis_xds::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, secret,
};

use crate::identity::Identity;
use crate::metrics::Metrics;

/// The certificate Secret's name (Istio's).
pub const DEFAULT: &str = "default";

#[derive(Debug, Default)]
pub struct EnvoyCerts {
    identity: OnceLock<(Arc<Identity>, Arc<Metrics>)>,
    by_node: Mutex<HashMap<String, Authenticated>>,
}

#[derive(Debug)]
struct Authenticated {
    connection: u64,
    id: SpiffeId,
    issued: Option<(trellis_xds::Resource, SystemTime)>,
}

impl EnvoyCerts {
    /// Set once at start (the first one wins). Issuances and refusals count
    /// in `trellis_control_certificates_total` like CreateCertificate's.
    pub fn set_identity(&self, identity: Arc<Identity>, metrics: Arc<Metrics>) {
        let _ = self.identity.set((identity, metrics));
    }

    /// A stream started: if it presented a token that verifies, its node
    /// gets certificates for the token's identity.
    pub fn connect(&self, conn: &Connection, now: SystemTime) {
        let (Some(bearer), Some((identity, metrics))) = (&conn.bearer, self.identity.get()) else {
            return;
        };
        match identity.authenticate(bearer.token(), now) {
            Ok((id, claims)) => {
                tracing::info!(node = %conn.node.id, connection = conn.id, spiffe_id = %id, token_id = %claims.id, "xDS stream authenticated; it may ask for the `default` Secret");
                self.lock().insert(
                    conn.node.id.clone(),
                    Authenticated {
                        connection: conn.id,
                        id,
                        issued: None,
                    },
                );
            }
            Err(e) => {
                metrics.certificate(Some(e.reason()));
                tracing::warn!(
                    node = %conn.node.id,
                    connection = conn.id,
                    reason = e.reason(),
                    error = %e,
                    "xDS stream's bootstrap token refused; it gets no `default` Secret"
                );
            }
        }
    }

    /// The identity a stream's token proved, if it presented one that
    /// verified (see [`EnvoyCerts::connect`]).
    pub fn authenticated(&self, conn: &Connection) -> Option<SpiffeId> {
        self.lock()
            .get(&conn.node.id)
            .filter(|a| a.connection == conn.id)
            .map(|a| a.id.clone())
    }

    pub fn disconnect(&self, conn: &Connection) {
        let mut by_node = self.lock();
        if by_node
            .get(&conn.node.id)
            .is_some_and(|a| a.connection == conn.id)
        {
            by_node.remove(&conn.node.id);
        }
    }

    /// The `default` Secret of an authenticated node, issued anew when it
    /// has none or the last one is past half its life; with the time the
    /// new one is due for renewal, when one was issued.
    pub fn secret(
        &self,
        node_id: &str,
        now: SystemTime,
    ) -> Option<(trellis_xds::Resource, Option<SystemTime>)> {
        let (identity, metrics) = self.identity.get()?;
        let mut by_node = self.lock();
        let a = by_node.get_mut(node_id)?;
        if let Some((secret, renew_at)) = &a.issued
            && now < *renew_at
        {
            return Some((secret.clone(), None));
        }
        match issue(identity, &a.id, now) {
            Ok((secret, renew_at)) => {
                metrics.certificate(None);
                a.issued = Some((secret.clone(), renew_at));
                Some((secret, Some(renew_at)))
            }
            Err(e) => {
                metrics.certificate(Some("ca_error"));
                tracing::error!(node = %node_id, spiffe_id = %a.id, error = %e, "cannot issue the `default` Secret");
                a.issued.as_ref().map(|(s, _)| (s.clone(), None))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Authenticated>> {
        self.by_node.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A key, a certificate for `id` (through a CSR, as any workload's), and
/// the `default` Secret holding both; when to renew it (half its life).
fn issue(
    identity: &Identity,
    id: &SpiffeId,
    now: SystemTime,
) -> Result<(trellis_xds::Resource, SystemTime), String> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| e.to_string())?;
    let issued = identity
        .authority()
        .sign(csr.der(), id, None, now)
        .map_err(|e| e.to_string())?;
    // Leaf and intermediates; the root comes with ROOTCA.
    let chain: String = issued.chain[..issued.chain.len() - 1].concat();
    let secret = Secret {
        name: DEFAULT.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(chain.into_bytes())),
            private_key: Some(inline(key.serialize_pem().into_bytes())),
            ..Default::default()
        })),
    };
    let life = issued.not_after.duration_since(now).unwrap_or_default();
    tracing::info!(spiffe_id = %id, serial = %issued.serial, not_after = issued.not_after.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()), "certificate issued for an Envoy (`default` Secret)");
    Ok((trellis_xds::Resource::from_message(&secret), now + life / 2))
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..Default::default()
    }
}
