//! A delta response that still points into the snapshot's shared map, and
//! its gRPC framing, written a chunk at a time, as `sotw/response.rs` does
//! for state of the world.
//!
//! Built as a `DeltaDiscoveryResponse`, a response copied every resource
//! body it carries when the push was decided, then again into the frame. A
//! proxy's first responses are its whole config (~1 MB at 1,000 services,
//! every proxy seeing every service), and 10,000 proxies connecting at once
//! each owed theirs: the delta connect storm took 33 s where state of the
//! world took 26 (bench/SCALE.md).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, Resource as DeltaResource,
};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::resource::{Resource, Resources};
use crate::sotw::response::{
    ANY_TYPE_URL, ANY_VALUE, CHUNK, any_len, put_string_field, string_field_len,
};

/// `DeltaDiscoveryResponse` field numbers (envoy/service/discovery/v3/discovery.proto).
const SYSTEM_VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6;
/// `Resource` field numbers.
const RESOURCE_VERSION: u32 = 1;
const RESOURCE_BODY: u32 = 2;
const RESOURCE_NAME: u32 = 3;

/// One delta response: header fields, the resources as names into a shared
/// map, and the names of removed resources.
#[derive(Debug, Clone)]
pub struct DeltaResponse {
    /// A hash of what the response carries (informational in delta).
    pub system_version_info: String,
    /// The type of every resource in it.
    pub type_url: String,
    /// Unique per stream; the client echoes it in its ACK/NACK.
    pub nonce: String,
    /// Names the client must drop.
    pub removed_resources: Vec<String>,
    map: Option<Arc<Resources>>,
    /// Names present in `map`, in the order they are sent.
    names: Vec<String>,
}

impl DeltaResponse {
    /// A response carrying `names` of `map` (names not in it are skipped)
    /// and removing `removed`.
    pub(crate) fn new(
        system_version_info: String,
        type_url: String,
        nonce: String,
        map: Option<Arc<Resources>>,
        names: Vec<String>,
        removed_resources: Vec<String>,
    ) -> DeltaResponse {
        DeltaResponse {
            system_version_info,
            type_url,
            nonce,
            removed_resources,
            map,
            names,
        }
    }

    /// The resources with their names, in the order they are sent.
    pub fn resources(&self) -> impl Iterator<Item = (&String, &Resource)> {
        let map = self.map.as_deref();
        self.names
            .iter()
            .filter_map(move |n| map.and_then(|m| m.get(n)).map(|r| (n, r)))
    }

    /// How many resources the response carries.
    pub fn len(&self) -> usize {
        self.resources().count()
    }

    /// Whether it carries no resource (it may still remove some).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The response as a message (copies every resource; for tests and
    /// clients that want the message itself).
    pub fn to_message(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources()
                .map(|(name, r)| DeltaResource {
                    name: name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.clone(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }

    /// The gRPC frame (flag, length, message), in chunks of about [`CHUNK`]
    /// bytes, each encoded when asked for.
    pub(crate) fn into_frames(self) -> DeltaFrames {
        let body_len = string_field_len(SYSTEM_VERSION_INFO, &self.system_version_info)
            + self
                .resources()
                .map(|(name, r)| {
                    let len = resource_len(name, r);
                    key_len(RESOURCES) + encoded_len_varint(len as u64) + len
                })
                .sum::<usize>()
            + string_field_len(TYPE_URL, &self.type_url)
            + self
                .removed_resources
                .iter()
                .map(|n| string_field_len(REMOVED_RESOURCES, n))
                .sum::<usize>()
            + string_field_len(NONCE, &self.nonce);
        DeltaFrames {
            resp: self,
            body_len,
            stage: Stage::Head,
            index: 0,
            offset: 0,
        }
    }
}

/// The encoded length of one `Resource` (name, version, body).
fn resource_len(name: &str, r: &Resource) -> usize {
    let any = any_len(&r.body);
    string_field_len(RESOURCE_NAME, name)
        + string_field_len(RESOURCE_VERSION, &r.version)
        + key_len(RESOURCE_BODY)
        + encoded_len_varint(any as u64)
        + any
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The gRPC prefix and `system_version_info`.
    Head,
    /// Resource `index`, its body's value from `offset` on.
    Resources,
    /// `type_url`, `removed_resources` and `nonce`.
    Tail,
    Done,
}

/// The chunks of one framed [`DeltaResponse`].
pub(crate) struct DeltaFrames {
    resp: DeltaResponse,
    body_len: usize,
    stage: Stage,
    index: usize,
    offset: usize,
}

impl Iterator for DeltaFrames {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.stage == Stage::Done {
            return None;
        }
        let mut buf = BytesMut::with_capacity(CHUNK);
        if self.stage == Stage::Head {
            buf.put_u8(0);
            // A message over 4 GiB cannot be framed; clients refuse far less.
            buf.put_u32(u32::try_from(self.body_len).unwrap_or(u32::MAX));
            put_string_field(
                &mut buf,
                SYSTEM_VERSION_INFO,
                &self.resp.system_version_info,
            );
            self.stage = Stage::Resources;
        }
        while self.stage == Stage::Resources && buf.len() < CHUNK {
            let Some(name) = self.resp.names.get(self.index) else {
                self.stage = Stage::Tail;
                break;
            };
            let Some(r) = self.resp.map.as_deref().and_then(|m| m.get(name)) else {
                self.index += 1;
                continue;
            };
            let any = &r.body;
            if self.offset == 0 {
                encode_key(RESOURCES, WireType::LengthDelimited, &mut buf);
                encode_varint(resource_len(name, r) as u64, &mut buf);
                put_string_field(&mut buf, RESOURCE_NAME, name);
                put_string_field(&mut buf, RESOURCE_VERSION, &r.version);
                encode_key(RESOURCE_BODY, WireType::LengthDelimited, &mut buf);
                encode_varint(any_len(any) as u64, &mut buf);
                put_string_field(&mut buf, ANY_TYPE_URL, &any.type_url);
                if !any.value.is_empty() {
                    encode_key(ANY_VALUE, WireType::LengthDelimited, &mut buf);
                    encode_varint(any.value.len() as u64, &mut buf);
                }
            }
            let room = CHUNK.saturating_sub(buf.len()).max(1);
            let end = any.value.len().min(self.offset + room);
            buf.put_slice(&any.value[self.offset..end]);
            if end == any.value.len() {
                self.index += 1;
                self.offset = 0;
            } else {
                self.offset = end;
            }
        }
        if self.stage == Stage::Tail {
            put_string_field(&mut buf, TYPE_URL, &self.resp.type_url);
            for name in &self.resp.removed_resources {
                put_string_field(&mut buf, REMOVED_RESOURCES, name);
            }
            put_string_field(&mut buf, NONCE, &self.resp.nonce);
            self.stage = Stage::Done;
        }
        Some(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    fn map(sizes: &[(&str, usize)]) -> Arc<Resources> {
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

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// The chunks joined are a gRPC frame that decodes to the message.
    fn check(resp: DeltaResponse) -> Vec<Bytes> {
        let expected = resp.to_message();
        let chunks: Vec<Bytes> = resp.into_frames().collect();
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(all[0], 0, "uncompressed");
        let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
        assert_eq!(len, all.len() - 5, "length prefix");
        let decoded = DeltaDiscoveryResponse::decode(&all[5..]).expect("decodes");
        assert_eq!(decoded, expected);
        assert_eq!(len, expected.encoded_len(), "prost's length");
        chunks
    }

    #[test]
    fn frames_decode_to_the_message_in_bounded_chunks() {
        let m = map(&[("a", 10), ("b", 0), ("c", 3 * CHUNK + 7), ("d", 100)]);
        let resp = DeltaResponse::new(
            "v1".into(),
            "t".into(),
            "n1".into(),
            Some(m),
            names(&["a", "b", "c", "d"]),
            names(&["gone", "also-gone"]),
        );
        assert_eq!(resp.len(), 4);
        let chunks = check(resp);
        assert!(chunks.len() >= 4, "a large body is split: {}", chunks.len());
        assert!(chunks.iter().all(|c| c.len() <= CHUNK + 256));
    }

    #[test]
    fn empty_removals_only_and_missing_names() {
        check(DeltaResponse::new(
            String::new(),
            "t".into(),
            "n".into(),
            None,
            names(&[]),
            names(&[]),
        ));
        let m = map(&[("a", 5), ("b", 6)]);
        let resp = DeltaResponse::new(
            "v".into(),
            "t".into(),
            "n".into(),
            Some(m),
            names(&["b", "zz"]),
            names(&["x"]),
        );
        assert_eq!(resp.len(), 1, "names not in the map are skipped");
        check(resp);
    }
}
