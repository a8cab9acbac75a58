//! Helpers for the state machines' table tests: short type aliases, and
//! snapshots whose resources encode their own name and version so a
//! response can be printed as `name@version` without decoding Envoy types.

use envoy_types::pb::google::protobuf::Any;

use crate::resource::{Resource, Snapshot, type_url};

/// `CDS`, `EDS`, `LDS`, `RDS`, `SDS` -> type URL.
pub(crate) fn url(alias: &str) -> &'static str {
    match alias {
        "CDS" => type_url::CLUSTER,
        "EDS" => type_url::ENDPOINT,
        "LDS" => type_url::LISTENER,
        "RDS" => type_url::ROUTE,
        "SDS" => type_url::SECRET,
        "VHDS" => type_url::VIRTUAL_HOST,
        other => panic!("unknown type alias {other}"),
    }
}

/// Type URL -> alias.
pub(crate) fn alias(type_url: &str) -> &'static str {
    ["CDS", "EDS", "LDS", "RDS", "SDS", "VHDS"]
        .into_iter()
        .find(|a| url(a) == type_url)
        .unwrap_or("?")
}

/// A snapshot from `(type alias, name, version)` triples. Each resource's
/// body is `name@version` with the resource version `version`.
pub(crate) fn snapshot(entries: &[(&str, &str, &str)]) -> Snapshot {
    let mut s = Snapshot::new();
    for (t, name, version) in entries {
        s.insert(
            url(t),
            *name,
            Resource::with_version(
                Any {
                    type_url: url(t).to_string(),
                    value: format!("{name}@{version}").into_bytes(),
                },
                *version,
            ),
        );
    }
    s
}

/// `name@version` of a body made by [`snapshot`].
pub(crate) fn label(body: &Any) -> String {
    String::from_utf8_lossy(&body.value).into_owned()
}

pub(crate) fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}
