//! Helpers for the state machines' table tests: short type aliases, and
//! snapshots whose resources encode their own name and version so a
//! response can be printed as `name@version` without decoding Envoy types;
//! and for the framing tests of both responses.

use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;

use crate::resource::{Resource, Resources, Snapshot, type_url};

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

/// A map of resources whose bodies have the given sizes.
pub(crate) fn sized_map(sizes: &[(&str, usize)]) -> Arc<Resources> {
    Arc::new(
        sizes
            .iter()
            .map(|(name, size)| {
                let value: Vec<u8> = (0..*size).map(|i| (i % 251) as u8).collect();
                let body = Any {
                    type_url: "type.googleapis.com/x".into(),
                    value,
                };
                (name.to_string(), Resource::new(body))
            })
            .collect(),
    )
}

/// The message in a gRPC frame sent as `chunks`, once its flag (not
/// compressed) and length prefix are checked.
pub(crate) fn frame_message(chunks: &[Bytes]) -> Vec<u8> {
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(all[0], 0, "uncompressed");
    let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
    assert_eq!(len, all.len() - 5, "length prefix");
    all[5..].to_vec()
}
