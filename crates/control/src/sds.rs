//! The trust bundle as an xDS `Secret` (SDS): `ROOTCA`, a validation context
//! holding every trusted root (PEM, inline), served to every proxy that
//! asks for it and pushed again whenever the bundle changes (rotation).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, secret,
};
use tokio::sync::watch;
use trellis_identity::TrustBundle;

use crate::xds::Mesh;

/// The trust bundle's Secret name (Istio's).
pub const ROOT_CA: &str = "ROOTCA";

/// The `ROOTCA` Secret for `bundle`.
pub fn root_ca(bundle: &TrustBundle) -> Secret {
    Secret {
        name: ROOT_CA.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineBytes(
                        bundle.to_pem().into_bytes(),
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

/// The Secrets every proxy may ask for, by name.
pub fn secrets(bundle: &TrustBundle) -> trellis_xds::Resources {
    let mut out = trellis_xds::Resources::new();
    out.insert(
        ROOT_CA.to_owned(),
        trellis_xds::Resource::from_message(&root_ca(bundle)),
    );
    out
}

/// Serves the bundle now, then returns the task that keeps the mesh's
/// Secrets in step with it (until the bundle goes away). Set before the
/// first stream, so no proxy starts without `ROOTCA`.
pub fn follow_bundle(
    mesh: Arc<Mesh>,
    mut bundle: watch::Receiver<Arc<TrustBundle>>,
) -> impl std::future::Future<Output = ()> {
    mesh.set_secrets(Arc::new(secrets(&bundle.borrow_and_update())));
    follow(mesh, bundle)
}

async fn follow(mesh: Arc<Mesh>, mut bundle: watch::Receiver<Arc<TrustBundle>>) {
    while bundle.changed().await.is_ok() {
        let now = bundle.borrow_and_update().clone();
        tracing::info!(
            roots = now.roots().len(),
            "trust bundle changed; pushing ROOTCA"
        );
        mesh.set_secrets(Arc::new(secrets(&now)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use trellis_identity::Authority;

    #[test]
    fn rootca_holds_every_root_and_its_version_follows_them() {
        let now = std::time::SystemTime::now();
        let a = Authority::generate("cluster.local", now).unwrap();
        let b = Authority::generate("cluster.local", now).unwrap();
        let mut bundle = TrustBundle::default();
        bundle.add(a.root().clone());
        let one = secrets(&bundle);
        bundle.add(b.root().clone());
        let two = secrets(&bundle);
        assert_ne!(one[ROOT_CA].version, two[ROOT_CA].version);
        let decoded = Secret::decode(two[ROOT_CA].body.value.as_slice()).unwrap();
        let Some(secret::Type::ValidationContext(v)) = decoded.r#type else {
            panic!("not a validation context: {decoded:?}");
        };
        let Some(data_source::Specifier::InlineBytes(pem)) = v.trusted_ca.unwrap().specifier else {
            panic!("not inline bytes");
        };
        assert_eq!(
            String::from_utf8(pem).unwrap(),
            format!("{}{}", a.root().pem, b.root().pem)
        );
        assert_eq!(two[ROOT_CA].body.type_url, trellis_xds::type_url::SECRET);
    }
}
