//! mTLS as Istio sends it to Envoy: auto mTLS clusters and endpoint
//! metadata, DestinationRule `tls` modes, and the inbound listener's
//! chains per PeerAuthentication mode.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{data_source, transport_socket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::value::Kind;
use trellis_translate::tls::{MATCH_DISABLED, MATCH_ISTIO, TLS_MODE_LABEL};
use trellis_translate::{Registry, Workload, translate};

use crate::support::*;

fn upstream(
    socket: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
) -> UpstreamTlsContext {
    assert_eq!(socket.name, "envoy.transport_sockets.tls");
    match &socket.config_type {
        Some(transport_socket::ConfigType::TypedConfig(a)) => unpack(a),
        None => panic!("no typed_config"),
    }
}

/// (SDS certificate names, SDS validation name, URI SANs, ALPN).
fn mesh_parts(c: &CommonTlsContext) -> (Vec<String>, String, Vec<String>, Vec<String>) {
    let certs = c
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
        &c.validation_context_type
    else {
        panic!("not a combined validation context: {c:?}")
    };
    let sans = v
        .default_validation_context
        .as_ref()
        .map(|d| {
            d.match_typed_subject_alt_names
                .iter()
                .map(
                    |m| match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
                        Some(MatchPattern::Exact(s)) => s.clone(),
                        other => panic!("not exact: {other:?}"),
                    },
                )
                .collect()
        })
        .unwrap_or_default();
    let roots = v
        .validation_context_sds_secret_config
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    (certs, roots, sans, c.alpn_protocols.clone())
}

fn mesh_workload(name: &str, labels: &[(&str, &str)], mesh: bool, ip: &str) -> Workload {
    let mut l: std::collections::BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if mesh {
        l.insert(TLS_MODE_LABEL.into(), "istio".into());
    }
    Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: name.into(),
        labels: l,
        addresses: vec![ip.parse().unwrap()],
        healthy: true,
        ..Default::default()
    }
}

const SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings]
  resolution: STATIC
  ports: [{number: 9080, name: http}, {number: 9090, name: grpc}, {number: 5432, name: tcp}]
  workloadSelector: {labels: {app: ratings}}
"#;

const RATINGS: &str = "ratings.default.svc.cluster.local";

#[test]
fn auto_mtls_matches_endpoints_of_workloads_with_a_sidecar() {
    let registry = Registry::new(vec![
        mesh_workload("ratings-a", &[("app", "ratings")], true, "10.0.0.1"),
        mesh_workload("legacy", &[("app", "ratings")], false, "10.0.0.2"),
    ]);
    let snap = translate(&validated(SERVICE), &registry, &proxy("default"));
    let cases = [
        (9080, vec!["http/1.1".to_string()]),
        (9090, vec!["h2".to_string()]),
        (5432, vec![]),
    ];
    for (port, alpn) in cases {
        let cl: Cluster = cluster(&snap, &c(port, "", RATINGS));
        assert!(cl.transport_socket.is_none());
        let names: Vec<&str> = cl
            .transport_socket_matches
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, [MATCH_ISTIO, MATCH_DISABLED]);
        let m = &cl.transport_socket_matches[0];
        let want = m
            .r#match
            .as_ref()
            .unwrap()
            .fields
            .get("tlsMode")
            .and_then(|v| v.kind.clone());
        assert_eq!(want, Some(Kind::StringValue("istio".into())));
        let ctx = upstream(m.transport_socket.as_ref().unwrap());
        assert_eq!(ctx.sni, format!("outbound_.{port}_._.{RATINGS}"));
        let (certs, roots, sans, got_alpn) = mesh_parts(ctx.common_tls_context.as_ref().unwrap());
        assert_eq!(certs, ["default"]);
        assert_eq!(roots, "ROOTCA");
        // Secure naming: the service accounts of the selected workloads.
        assert_eq!(
            sans,
            [
                "spiffe://cluster.local/ns/default/sa/legacy",
                "spiffe://cluster.local/ns/default/sa/ratings-a"
            ]
        );
        assert_eq!(got_alpn, alpn, "port {port}");
        assert_eq!(
            cl.transport_socket_matches[1]
                .transport_socket
                .as_ref()
                .unwrap()
                .name,
            "envoy.transport_sockets.raw_buffer"
        );
        assert!(
            cl.transport_socket_matches[1]
                .r#match
                .as_ref()
                .unwrap()
                .fields
                .is_empty()
        );
    }
    // Only the sidecar's endpoint says tlsMode: istio.
    let cla = assignment(&snap, &c(9080, "", RATINGS));
    let eps: Vec<(String, bool)> = cla.endpoints[0]
        .lb_endpoints
        .iter()
        .map(|lb| {
            let addr = format!("{:?}", lb.host_identifier);
            let istio = lb.metadata.as_ref().is_some_and(|m| {
                m.filter_metadata["envoy.transport_socket_match"].fields["tlsMode"].kind
                    == Some(Kind::StringValue("istio".into()))
            });
            (
                if addr.contains("10.0.0.1") {
                    "a"
                } else {
                    "legacy"
                }
                .to_string(),
                istio,
            )
        })
        .collect();
    assert!(eps.contains(&("a".into(), true)), "{eps:?}");
    assert!(eps.contains(&("legacy".into(), false)), "{eps:?}");

    // No endpoint with a sidecar: the cluster stays plaintext (no SDS).
    let plain = Registry::new(vec![mesh_workload(
        "legacy",
        &[("app", "ratings")],
        false,
        "10.0.0.2",
    )]);
    let snap = translate(&validated(SERVICE), &plain, &proxy("default"));
    let cl = cluster(&snap, &c(9080, "", RATINGS));
    assert!(cl.transport_socket.is_none() && cl.transport_socket_matches.is_empty());
}

#[test]
fn destination_rule_tls_modes() {
    let yaml = format!(
        r#"{SERVICE}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext}}
spec:
  hosts: [api.example.com]
  resolution: DNS
  subjectAltNames: [spiffe://other/ns/x/sa/y]
  ports: [{{number: 443, name: tls}}, {{number: 8443, name: tls-m}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ext}}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: /etc/ca.pem, subjectAltNames: [api.example.com]}}
    portLevelSettings:
    - port: {{number: 8443}}
      tls: {{mode: MUTUAL, caCertificates: /etc/ca.pem, clientCertificate: /etc/c.pem, privateKey: /etc/k.pem, sni: m.example.com}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings}}
spec:
  host: ratings
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/v1]}}}}}}
  - {{name: plain, labels: {{version: v0}}, trafficPolicy: {{tls: {{mode: DISABLE}}}}}}
"#
    );
    let snap = translate(&validated(&yaml), &Registry::default(), &proxy("default"));

    // ISTIO_MUTUAL: every endpoint, SDS certificates.
    let whole = cluster(&snap, &c(9080, "", RATINGS));
    assert!(whole.transport_socket_matches.is_empty());
    let ctx = upstream(whole.transport_socket.as_ref().unwrap());
    let (certs, roots, sans, _) = mesh_parts(ctx.common_tls_context.as_ref().unwrap());
    assert_eq!(
        (certs, roots.as_str()),
        (vec!["default".to_string()], "ROOTCA")
    );
    assert!(sans.is_empty(), "no workloads, no SANs: {sans:?}");
    let v1 = upstream(
        cluster(&snap, &c(9080, "v1", RATINGS))
            .transport_socket
            .as_ref()
            .unwrap(),
    );
    assert_eq!(v1.sni, format!("outbound_.9080_.v1_.{RATINGS}"));
    let (_, _, sans, _) = mesh_parts(v1.common_tls_context.as_ref().unwrap());
    assert_eq!(sans, ["spiffe://cluster.local/ns/default/sa/v1"]);
    // DISABLE: plaintext.
    let off = cluster(&snap, &c(9080, "plain", RATINGS));
    assert!(off.transport_socket.is_none() && off.transport_socket_matches.is_empty());

    // SIMPLE and MUTUAL: the rule's files.
    let file = |d: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>| match d
        .as_ref()
        .and_then(|d| d.specifier.as_ref())
    {
        Some(data_source::Specifier::Filename(f)) => f.clone(),
        other => panic!("not a file: {other:?}"),
    };
    let simple = upstream(
        cluster(&snap, &c(443, "", "api.example.com"))
            .transport_socket
            .as_ref()
            .unwrap(),
    );
    assert_eq!(simple.sni, "api.example.com");
    let common = simple.common_tls_context.unwrap();
    assert!(common.tls_certificates.is_empty());
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        common.validation_context_type
    else {
        panic!("no validation context")
    };
    assert_eq!(file(&v.trusted_ca), "/etc/ca.pem");
    assert_eq!(v.match_typed_subject_alt_names.len(), 1);
    let mutual = upstream(
        cluster(&snap, &c(8443, "", "api.example.com"))
            .transport_socket
            .as_ref()
            .unwrap(),
    );
    assert_eq!(mutual.sni, "m.example.com");
    let common = mutual.common_tls_context.unwrap();
    assert_eq!(
        file(&common.tls_certificates[0].certificate_chain),
        "/etc/c.pem"
    );
    assert_eq!(file(&common.tls_certificates[0].private_key), "/etc/k.pem");
}

fn pa(name: &str, selector: Option<&str>, mode: &str, port: Option<(u16, &str)>) -> String {
    let selector = selector
        .map(|app| format!("  selector: {{matchLabels: {{app: {app}}}}}\n"))
        .unwrap_or_default();
    let ports = port
        .map(|(p, m)| format!("  portLevelMtls: {{\"{p}\": {{mode: {m}}}}}\n"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}}}\nspec:\n{selector}  mtls: {{mode: {mode}}}\n{ports}"
    )
}

/// (what, policies, identity, chains, default chain, decided by)
type InboundCase<'a> = (&'a str, String, bool, Vec<&'a str>, bool, Option<&'a str>);

#[test]
fn inbound_chains_follow_peer_authentication() {
    let cases: Vec<InboundCase> = vec![
        (
            "no identity: plaintext",
            String::new(),
            false,
            vec!["http"],
            true,
            None,
        ),
        (
            "identity, no policy: STRICT",
            String::new(),
            true,
            vec!["mtls-http", "mtls-tcp"],
            false,
            None,
        ),
        (
            "namespace PERMISSIVE",
            pa("ns", None, "PERMISSIVE", None),
            true,
            vec!["mtls-http", "mtls-tcp", "http"],
            true,
            Some("default/ns"),
        ),
        (
            "DISABLE",
            pa("disabled", Some("app"), "DISABLE", None),
            true,
            vec!["http"],
            true,
            Some("default/disabled"),
        ),
        (
            "port level for the app's port",
            pa("wl", Some("app"), "DISABLE", Some((8080, "STRICT"))),
            true,
            vec!["mtls-http", "mtls-tcp"],
            false,
            Some("default/wl"),
        ),
        (
            "STRICT without identity stays plaintext",
            pa("ns", None, "STRICT", None),
            false,
            vec!["http"],
            true,
            Some("default/ns"),
        ),
    ];
    for (what, policies, identity, chains, default, from) in cases {
        let v = validated(&format!("{SERVICE}{policies}"));
        let mut p = proxy("default");
        p.labels.insert("app".into(), "app".into());
        if identity {
            p.labels.insert(TLS_MODE_LABEL.into(), "istio".into());
        }
        let snap = translate(&v, &Registry::default(), &p);
        let l = listener(&snap, "inbound");
        let names: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, chains, "{what}");
        assert_eq!(l.default_filter_chain.is_some(), default, "{what}");
        let inspectors: Vec<&str> = l.listener_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            inspectors.contains(&"envoy.filters.listener.tls_inspector"),
            identity && chains.len() > 1,
            "{what}"
        );
        for chain in &l.filter_chains {
            let m = chain.filter_chain_match.as_ref().unwrap();
            if chain.name.starts_with("mtls") {
                assert_eq!(m.transport_protocol, "tls", "{what}");
                let socket = chain.transport_socket.as_ref().unwrap();
                let Some(transport_socket::ConfigType::TypedConfig(a)) = &socket.config_type else {
                    panic!()
                };
                let d: DownstreamTlsContext = unpack(a);
                assert_eq!(d.require_client_certificate.map(|b| b.value), Some(true));
                let (certs, roots, sans, alpn) = mesh_parts(d.common_tls_context.as_ref().unwrap());
                assert_eq!(
                    (certs, roots.as_str()),
                    (vec!["default".to_string()], "ROOTCA")
                );
                assert!(sans.is_empty());
                assert_eq!(alpn, ["h2", "http/1.1"]);
            } else {
                assert!(chain.transport_socket.is_none());
                let want = if chains.len() > 1 { "raw_buffer" } else { "" };
                assert_eq!(m.transport_protocol, want, "{what}");
            }
        }
        let got_from = l.metadata.as_ref().and_then(|m| {
            match &m.filter_metadata["trellis"].fields["peer_authentication"].kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            }
        });
        assert_eq!(got_from.as_deref(), from, "{what}");
    }
}
