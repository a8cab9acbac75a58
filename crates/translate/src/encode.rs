//! Deterministic protobuf encoding, content hashes and small builders for
//! protobuf well-known types.
//!
//! prost encodes `map<..>` fields (held in `HashMap`s with random seeds) in
//! whatever order the map iterates, so two encodings of equal messages may
//! differ byte for byte. The xDS server compares content hashes to decide
//! what to push, so the resources whose messages carry maps (clusters:
//! `metadata`, `typed_extension_protocol_options`; route configurations:
//! `typed_per_filter_config`) are encoded here with their map entries in key
//! order. Protobuf lets fields appear in any order and repeated fields be
//! split, so the result is ordinary protobuf: such a map field is cleared,
//! the rest encoded by prost, and the entries appended sorted.

use std::collections::HashMap;
use std::time::Duration as StdDuration;

use envoy_types::pb::google::protobuf::{
    Any, BoolValue, Duration, ListValue, Struct, UInt32Value, Value, value::Kind,
};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

/// One xDS resource, encoded once and shared (behind an `Arc`) by every
/// proxy's snapshot that includes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The resource name (cluster name, listener name, ...).
    pub name: String,
    /// The resource, ready for a `DiscoveryResponse`.
    pub any: Any,
    /// FNV-1a 64 of the type URL and the (deterministic) encoding: equal
    /// content gives an equal hash, in every process and on every run.
    pub hash: u64,
}

impl Resource {
    /// A resource from its deterministic encoding.
    pub fn new(name: impl Into<String>, type_url: &str, value: Vec<u8>) -> Self {
        let mut h = Fnv::new();
        h.write(type_url.as_bytes());
        h.write(&[0]);
        h.write(&value);
        Resource {
            name: name.into(),
            any: Any {
                type_url: type_url.to_string(),
                value,
            },
            hash: h.finish(),
        }
    }

    /// The hash as 16 hex digits, usable as a resource version.
    pub fn version(&self) -> String {
        format!("{:016x}", self.hash)
    }
}

/// FNV-1a, 64 bits: stable across Rust versions and processes (unlike std's
/// `DefaultHasher`), and needs no dependency.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Appends a length-delimited field `tag` holding `bytes`.
pub(crate) fn put_field(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Appends the entries of a `map<string, V>` field `tag`, sorted by key;
/// `value` encodes one value message.
pub(crate) fn put_sorted_map<V>(
    out: &mut Vec<u8>,
    tag: u32,
    map: &HashMap<String, V>,
    value: impl Fn(&V) -> Vec<u8>,
) {
    let mut entries: Vec<(&String, &V)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in entries {
        let mut entry = Vec::new();
        put_field(&mut entry, 1, k.as_bytes());
        put_field(&mut entry, 2, &value(v));
        put_field(out, tag, &entry);
    }
}

/// A `map<string, Any>` field, sorted (Any values carry no maps of ours:
/// their payloads are encoded by [`any`], which is deterministic for the
/// messages packed in this crate).
pub(crate) fn put_sorted_any_map(out: &mut Vec<u8>, tag: u32, map: &HashMap<String, Any>) {
    put_sorted_map(out, tag, map, Message::encode_to_vec);
}

/// `google.protobuf.Struct`, fields sorted at every level.
pub(crate) fn struct_bytes(s: &Struct) -> Vec<u8> {
    let mut out = Vec::new();
    put_sorted_map(&mut out, 1, &s.fields, value_bytes);
    out
}

fn value_bytes(v: &Value) -> Vec<u8> {
    match &v.kind {
        Some(Kind::StructValue(s)) => {
            let mut out = Vec::new();
            put_field(&mut out, 5, &struct_bytes(s));
            out
        }
        Some(Kind::ListValue(l)) => {
            let mut list = Vec::new();
            for item in &l.values {
                put_field(&mut list, 1, &value_bytes(item));
            }
            let mut out = Vec::new();
            put_field(&mut out, 6, &list);
            out
        }
        _ => v.encode_to_vec(),
    }
}

/// `envoy.config.core.v3.Metadata`, maps sorted.
pub(crate) fn metadata_bytes(m: &envoy_types::pb::envoy::config::core::v3::Metadata) -> Vec<u8> {
    let mut out = Vec::new();
    put_sorted_map(&mut out, 1, &m.filter_metadata, struct_bytes);
    put_sorted_any_map(&mut out, 2, &m.typed_filter_metadata);
    out
}

/// Packs a message with no map fields (its encoding is deterministic).
pub(crate) fn any<M: Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// A protobuf Duration from a std one.
pub(crate) fn duration(d: StdDuration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn u32v(v: u32) -> UInt32Value {
    UInt32Value { value: v }
}

pub(crate) fn boolv(v: bool) -> BoolValue {
    BoolValue { value: v }
}

/// Builders for `google.protobuf.Value`.
pub(crate) fn string_value(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

pub(crate) fn number_value(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

pub(crate) fn struct_value(fields: Vec<(&str, Value)>) -> Value {
    Value {
        kind: Some(Kind::StructValue(make_struct(fields))),
    }
}

#[allow(
    dead_code,
    reason = "kept beside the other Value builders for metadata lists"
)]
pub(crate) fn list_value(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

pub(crate) fn make_struct(fields: Vec<(&str, Value)>) -> Struct {
    Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_the_published_function() {
        // Test vectors of FNV-1a 64.
        let h = |s: &str| {
            let mut f = Fnv::new();
            f.write(s.as_bytes());
            f.finish()
        };
        assert_eq!(h(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(h("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(h("foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn structs_encode_in_key_order_and_round_trip() {
        let s = make_struct(vec![
            ("b", number_value(1.0)),
            ("a", string_value("x")),
            (
                "c",
                struct_value(vec![("z", number_value(2.0)), ("y", string_value("q"))]),
            ),
            ("d", list_value(vec![string_value("l")])),
        ]);
        let bytes = struct_bytes(&s);
        assert_eq!(Struct::decode(bytes.as_slice()).unwrap(), s);
        // A map built in another order (another hasher seed) encodes the same.
        let mut fields: Vec<_> = s.fields.clone().into_iter().collect();
        fields.reverse();
        let again = Struct {
            fields: fields.into_iter().collect(),
        };
        assert_eq!(struct_bytes(&again), bytes);
    }
}
