//! A state-of-the-world response that still points into the snapshot's
//! shared maps, and its gRPC framing, written a chunk at a time.
//!
//! A proxy's first CDS response is the whole mesh (~1 MB at 1,000 services).
//! Building it as a `DiscoveryResponse` copies every `Any` into it when the
//! push is decided, and the copy then waits until the client reads it: with
//! 10,000 proxies connecting at once that was 10+ GB (bench/SCALE.md). Here
//! a response is the map (an `Arc` shared by every proxy of its class) and
//! the names to send (also shared when they are the whole map or a memoised
//! diff); its bytes are produced only when HTTP/2 has room for them,
//! [`CHUNK`] at a time, so a stream holds at most about one chunk of
//! encoded data however large its response.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::resource::{Resource, Resources};

/// Bytes per chunk handed to HTTP/2: a few DATA frames (16 KiB each by
/// default), small against a connection's flow-control window.
pub(crate) const CHUNK: usize = 32 * 1024;

/// `DiscoveryResponse` field numbers (envoy/service/discovery/v3/discovery.proto).
const VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
/// `google.protobuf.Any` field numbers.
pub(crate) const ANY_TYPE_URL: u32 = 1;
pub(crate) const ANY_VALUE: u32 = 2;

/// One state-of-the-world response: header fields, and the resources as
/// names into a shared map.
#[derive(Debug, Clone)]
pub struct SotwResponse {
    /// The version of the whole subscribed view.
    pub version_info: String,
    /// The type of every resource in it.
    pub type_url: String,
    /// Unique per stream; the client echoes it in its ACK/NACK.
    pub nonce: String,
    map: Option<Arc<Resources>>,
    /// Names present in `map`, in the order they are sent.
    names: Arc<Vec<String>>,
}

impl SotwResponse {
    /// A response carrying `names` of `map` (each must be in it; names that
    /// are not are skipped).
    pub(crate) fn new(
        version_info: String,
        type_url: String,
        nonce: String,
        map: Option<Arc<Resources>>,
        names: Arc<Vec<String>>,
    ) -> SotwResponse {
        SotwResponse {
            version_info,
            type_url,
            nonce,
            map,
            names,
        }
    }

    /// The resources, in the order they are sent.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        let map = self.map.as_deref();
        self.names
            .iter()
            .filter_map(move |n| map.and_then(|m| m.get(n)))
    }

    /// How many resources the response carries.
    pub fn len(&self) -> usize {
        self.resources().count()
    }

    /// Whether it carries no resource (e.g. the answer to a subscription to
    /// names that do not exist).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The response as a message (copies every resource; for tests and
    /// clients that want the message itself).
    pub fn to_message(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources().map(|r| r.body.clone()).collect(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }

    /// The gRPC frame (flag, length, message), in chunks of about [`CHUNK`]
    /// bytes, each encoded when asked for.
    pub(crate) fn into_frames(self) -> SotwFrames {
        let body_len = string_field_len(VERSION_INFO, &self.version_info)
            + self
                .resources()
                .map(|r| {
                    let len = any_len(&r.body);
                    key_len(RESOURCES) + encoded_len_varint(len as u64) + len
                })
                .sum::<usize>()
            + string_field_len(TYPE_URL, &self.type_url)
            + string_field_len(NONCE, &self.nonce);
        SotwFrames {
            resp: self,
            body_len,
            stage: Stage::Head,
            index: 0,
            offset: 0,
        }
    }
}

/// Where a [`SotwFrames`] is in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The gRPC prefix and `version_info`.
    Head,
    /// Resource `index`, its value from `offset` on.
    Resources,
    /// `type_url` and `nonce`.
    Tail,
    Done,
}

/// The chunks of one framed [`SotwResponse`].
pub(crate) struct SotwFrames {
    resp: SotwResponse,
    body_len: usize,
    stage: Stage,
    /// The next name of `resp.names` to write.
    index: usize,
    /// How much of the current resource's value is written (its header
    /// goes out with offset 0).
    offset: usize,
}

impl Iterator for SotwFrames {
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
            put_string_field(&mut buf, VERSION_INFO, &self.resp.version_info);
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
            put_string_field(&mut buf, NONCE, &self.resp.nonce);
            self.stage = Stage::Done;
        }
        Some(buf.freeze())
    }
}

/// The encoded length of an `Any` (proto3: empty fields are left out).
pub(crate) fn any_len(any: &Any) -> usize {
    string_field_len(ANY_TYPE_URL, &any.type_url) + bytes_field_len(ANY_VALUE, &any.value)
}

pub(crate) fn string_field_len(tag: u32, s: &str) -> usize {
    bytes_field_len(tag, s.as_bytes())
}

fn bytes_field_len(tag: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(b.len() as u64) + b.len()
    }
}

pub(crate) fn put_string_field(buf: &mut BytesMut, tag: u32, s: &str) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn names(list: &[&str]) -> Arc<Vec<String>> {
        Arc::new(list.iter().map(|s| s.to_string()).collect())
    }

    /// The chunks joined are a gRPC frame of exactly what prost encodes.
    fn check(resp: SotwResponse) -> Vec<Bytes> {
        let expected = resp.to_message();
        let chunks: Vec<Bytes> = resp.into_frames().collect();
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(all[0], 0, "uncompressed");
        let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
        assert_eq!(len, all.len() - 5, "length prefix");
        assert_eq!(
            &all[5..],
            expected.encode_to_vec().as_slice(),
            "prost's bytes"
        );
        chunks
    }

    #[test]
    fn frames_equal_prost_encoding_in_bounded_chunks() {
        let m = map(&[("a", 10), ("b", 0), ("c", 3 * CHUNK + 7), ("d", 100)]);
        let all = names(&["a", "b", "c", "d"]);
        let resp = SotwResponse::new("v1".into(), "t".into(), "n1".into(), Some(m), all);
        assert_eq!(resp.len(), 4);
        let chunks = check(resp);
        assert!(
            chunks.len() >= 4,
            "a large resource is split: {}",
            chunks.len()
        );
        assert!(
            chunks.iter().all(|c| c.len() <= CHUNK + 64),
            "chunks stay small"
        );
    }

    #[test]
    fn empty_and_missing_and_subset() {
        check(SotwResponse::new(
            String::new(),
            "t".into(),
            "n".into(),
            None,
            names(&[]),
        ));
        let m = map(&[("a", 5), ("b", 6)]);
        let resp = SotwResponse::new(
            "v".into(),
            "t".into(),
            "n".into(),
            Some(m),
            names(&["b", "zz"]),
        );
        assert_eq!(resp.len(), 1, "names not in the map are skipped");
        check(resp);
    }
}
