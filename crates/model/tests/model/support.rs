//! Builders for YAML documents and helpers that compare errors exactly.

use trellis_model::validate::{Validated, validate};
use trellis_model::{ConfigError, ConfigErrors, ResourceSet, parse_documents};

/// One expected error. `reason` is a substring of the actual reason; the
/// other three parts must match exactly.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    pub file: &'a str,
    pub resource: &'a str,
    pub field: &'a str,
    pub reason: &'a str,
}

pub const fn want<'a>(
    file: &'a str,
    resource: &'a str,
    field: &'a str,
    reason: &'a str,
) -> Want<'a> {
    Want {
        file,
        resource,
        field,
        reason,
    }
}

/// Assert that `got` holds exactly the `want`ed errors, in order.
#[track_caller]
pub fn assert_errors(case: &str, got: &ConfigErrors, want: &[Want<'_>]) {
    let ok = got.0.len() == want.len() && got.0.iter().zip(want).all(|(g, w)| matches(g, w));
    assert!(
        ok,
        "case {case:?}:\n got {got}\nwant {} error(s):\n{}",
        want.len(),
        want.iter()
            .map(|w| format!(
                "  {}: {}: {}: ..{}..",
                w.file, w.resource, w.field, w.reason
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn matches(g: &ConfigError, w: &Want<'_>) -> bool {
    g.file == w.file
        && g.resource == w.resource
        && g.field == w.field
        && g.reason.contains(w.reason)
}

/// A document of `kind` with `spec` written inline (YAML flow or block
/// style). `meta` is the inside of `metadata: {...}`.
pub fn doc(kind: &str, meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{{meta}}}\nspec: {spec}\n"
    )
}

/// Like [`doc`], for a Trellis kind (`trellis.dev/v1alpha1`).
pub fn trellis_doc(kind: &str, meta: &str, spec: &str) -> String {
    format!("apiVersion: trellis.dev/v1alpha1\nkind: {kind}\nmetadata: {{{meta}}}\nspec: {spec}\n")
}

pub fn rate_limit(name: &str, spec: &str) -> String {
    trellis_doc("RateLimitPolicy", &format!("name: {name}"), spec)
}

pub fn retry_budget(name: &str, spec: &str) -> String {
    trellis_doc("RetryBudget", &format!("name: {name}"), spec)
}

pub fn se(name: &str, spec: &str) -> String {
    doc("ServiceEntry", &format!("name: {name}"), spec)
}

pub fn dr(name: &str, spec: &str) -> String {
    doc("DestinationRule", &format!("name: {name}"), spec)
}

pub fn sidecar(name: &str, spec: &str) -> String {
    doc("Sidecar", &format!("name: {name}"), spec)
}

pub fn vs(name: &str, spec: &str) -> String {
    doc("VirtualService", &format!("name: {name}"), spec)
}

/// Join documents into one multi-document YAML text.
pub fn docs(ds: &[String]) -> String {
    ds.iter().map(|d| format!("---\n{d}")).collect()
}

/// The services most cases route to, in `base.yaml`:
/// `reviews` (namespace default; HTTP 9080, gRPC 9090, TCP 3306; subsets v1
/// and v2) and `ratings.example.com` (DNS, HTTP 80).
pub fn base() -> String {
    docs(&[
        se(
            "reviews",
            "{hosts: [reviews], resolution: STATIC, \
             ports: [{number: 9080, name: http}, {number: 9090, name: grpc}, {number: 3306, name: mysql, protocol: TCP}], \
             endpoints: [{address: 10.0.0.1, labels: {version: v1}}, {address: 10.0.0.2, labels: {version: v2}}]}",
        ),
        dr(
            "reviews",
            "{host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}",
        ),
        se(
            "ratings",
            "{hosts: [ratings.example.com], resolution: DNS, ports: [{number: 80, name: http}]}",
        ),
    ])
}

/// Parse each `(file, text)` (which must parse) and validate them together.
#[track_caller]
pub fn check(files: &[(&str, &str)]) -> Result<Validated, ConfigErrors> {
    validate(&parse_all(files))
}

#[track_caller]
pub fn parse_all(files: &[(&str, &str)]) -> ResourceSet {
    let mut set = ResourceSet::default();
    for (file, text) in files {
        match parse_documents(file, text) {
            Ok(rs) => rs.into_iter().for_each(|r| set.push(r)),
            Err(e) => panic!("{file} should parse: {e}"),
        }
    }
    set
}

/// `base.yaml` plus `case.yaml` holding `text`, validated.
#[track_caller]
pub fn check_with_base(text: &str) -> Result<Validated, ConfigErrors> {
    check(&[("base.yaml", &base()), ("case.yaml", text)])
}

/// A `security.istio.io/v1` PeerAuthentication in namespace `ns`.
pub fn peer_auth(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}
