//! Outbound TLS per cluster: which endpoints get TLS and how (Istio's
//! auto-mTLS and DestinationRule `tls`), and the handshake itself.
//!
//! The decision is data: a cluster's [`ClusterTls`] picks an
//! [`Origination`] per endpoint from its labels. Connections made with one
//! origination are pooled apart from plaintext ones and from other
//! originations ([`Origination::key`]), so the two are never mixed.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::client::{ClientTlsError, MeshConnector, identity_not_allowed};
use super::credentials::CredentialsRx;
use crate::http::ProxyError;

/// Istio's label on an endpoint whose workload has a sidecar that
/// terminates mTLS: `security.istio.io/tlsMode: istio`.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// How a cluster's connections are secured.
#[derive(Debug, Clone, Default)]
pub enum ClusterTls {
    /// Plaintext to every endpoint (DestinationRule `DISABLE`, or no
    /// DestinationRule TLS and a proxy without a certificate).
    #[default]
    Plaintext,
    /// No DestinationRule TLS: ISTIO_MUTUAL to endpoints labelled
    /// `security.istio.io/tlsMode: istio`, plaintext to the others.
    Auto(Arc<Origination>),
    /// DestinationRule SIMPLE, MUTUAL or ISTIO_MUTUAL: every endpoint.
    All(Arc<Origination>),
}

impl ClusterTls {
    /// The TLS to use for one endpoint, None for plaintext.
    pub fn for_endpoint(&self, labels: &BTreeMap<String, String>) -> Option<&Arc<Origination>> {
        match self {
            ClusterTls::Plaintext => None,
            ClusterTls::Auto(o) => labels
                .get(TLS_MODE_LABEL)
                .is_some_and(|m| m == "istio")
                .then_some(o),
            ClusterTls::All(o) => Some(o),
        }
    }

    /// For `/config_dump`.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            ClusterTls::Plaintext => serde_json::json!({"mode": "DISABLE"}),
            ClusterTls::Auto(o) => {
                serde_json::json!({"mode": "AUTO", "istio_endpoints": o.describe()})
            }
            ClusterTls::All(o) => o.describe(),
        }
    }
}

/// One way of speaking TLS to a cluster's endpoints.
#[derive(Debug)]
pub struct Origination {
    /// `ISTIO_MUTUAL`, `SIMPLE` or `MUTUAL`.
    pub mode: &'static str,
    /// Pools connections apart: equal settings, equal key (so a config
    /// reload that changes nothing keeps the pooled connections).
    pub key: u64,
    pub sni: ServerName<'static>,
    connector: Connector,
}

#[derive(Debug)]
enum Connector {
    /// The workload certificate, rebuilt on rotation.
    Mesh(MeshConnector),
    /// Certificates from files, loaded with the config.
    External(Arc<ClientConfig>),
}

impl Origination {
    /// ISTIO_MUTUAL. `settings` is what the key is made of: everything that
    /// decides who is accepted.
    pub fn mesh(sni: ServerName<'static>, connector: MeshConnector, settings: &impl Hash) -> Self {
        Origination {
            mode: "ISTIO_MUTUAL",
            key: key_of(("ISTIO_MUTUAL", sni.to_str(), settings)),
            sni,
            connector: Connector::Mesh(connector),
        }
    }

    /// SIMPLE or MUTUAL, with a config built from the DestinationRule's files.
    pub fn external(
        mode: &'static str,
        sni: ServerName<'static>,
        config: Arc<ClientConfig>,
        settings: &impl Hash,
    ) -> Self {
        Origination {
            mode,
            key: key_of((mode, sni.to_str(), settings)),
            sni,
            connector: Connector::External(config),
        }
    }

    fn describe(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"mode": self.mode, "sni": self.sni.to_str()});
        if let Connector::Mesh(m) = &self.connector {
            v["subject_alt_names"] = serde_json::json!(m.allowed_names());
        }
        v
    }

    /// Handshake over a connected socket.
    pub async fn handshake(
        &self,
        addr: SocketAddr,
        tcp: TcpStream,
        creds: Option<&CredentialsRx>,
    ) -> Result<TlsStream<TcpStream>, ProxyError> {
        let connector = match &self.connector {
            Connector::Mesh(m) => m.connector(creds).map_err(|e| match e {
                ClientTlsError::NoCredentials => ProxyError::UpstreamTlsUnavailable {
                    addr,
                    detail: e.to_string(),
                },
                e => ProxyError::UpstreamTlsUnavailable {
                    addr,
                    detail: e.to_string(),
                },
            })?,
            Connector::External(c) => TlsConnector::from(c.clone()),
        };
        connector
            .connect(self.sni.clone(), tcp)
            .await
            .map_err(|e| match identity_not_allowed(&e) {
                Some(why) => ProxyError::UpstreamIdentityMismatch {
                    addr,
                    detail: why.to_string(),
                },
                None => ProxyError::UpstreamTlsHandshake {
                    addr,
                    detail: e.to_string(),
                },
            })
    }
}

/// An upstream connection: plaintext, or TLS over it.
#[derive(Debug)]
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for UpstreamIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpstreamIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl UpstreamIo {
    /// `tcp` as is, or with TLS as `tls` says.
    pub async fn secure(
        addr: SocketAddr,
        tcp: TcpStream,
        tls: Option<&Origination>,
        creds: Option<&CredentialsRx>,
    ) -> Result<UpstreamIo, ProxyError> {
        Ok(match tls {
            None => UpstreamIo::Plain(tcp),
            Some(t) => UpstreamIo::Tls(Box::new(t.handshake(addr, tcp, creds).await?)),
        })
    }
}

fn key_of(v: impl Hash) -> u64 {
    // Per-process and only compared within it: the std hasher will do.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    // 0 is plaintext's key.
    h.finish().max(1)
}

/// Istio's SNI for a mesh destination:
/// `outbound_.<port>_.<subset>_.<host>`.
pub fn mesh_sni(port: u16, subset: Option<&str>, host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(format!(
        "outbound_.{port}_.{}_.{host}",
        subset.unwrap_or("")
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh() -> Arc<Origination> {
        Arc::new(Origination::mesh(
            mesh_sni(9080, None, "reviews.default.svc.cluster.local").unwrap(),
            MeshConnector::new(vec![], vec![], &[b"http/1.1"], crate::tls::provider()),
            &(),
        ))
    }

    #[test]
    fn per_endpoint_choice() {
        let istio: BTreeMap<String, String> =
            [(TLS_MODE_LABEL.to_string(), "istio".to_string())].into();
        let disabled: BTreeMap<String, String> =
            [(TLS_MODE_LABEL.to_string(), "disabled".to_string())].into();
        let none = BTreeMap::new();
        let auto = ClusterTls::Auto(mesh());
        assert!(auto.for_endpoint(&istio).is_some());
        assert!(auto.for_endpoint(&disabled).is_none());
        assert!(auto.for_endpoint(&none).is_none());
        let all = ClusterTls::All(mesh());
        assert!(all.for_endpoint(&none).is_some());
        assert!(ClusterTls::Plaintext.for_endpoint(&istio).is_none());
    }

    #[test]
    fn sni_and_keys() {
        let sni = mesh_sni(9080, Some("v1"), "reviews.default.svc.cluster.local").unwrap();
        assert_eq!(
            sni.to_str(),
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        );
        assert_eq!(mesh().key, mesh().key, "equal settings pool together");
        let other = Origination::mesh(
            sni,
            MeshConnector::new(vec![], vec![], &[b"h2"], crate::tls::provider()),
            &(),
        );
        assert_ne!(mesh().key, other.key);
        assert_ne!(mesh().key, 0);
    }
}
