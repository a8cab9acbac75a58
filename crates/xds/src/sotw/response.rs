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
//! 32 KiB at a time (`chunked.rs`), so a stream holds at most about one chunk of
//! encoded data however large its response.

use std::sync::Arc;

use bytes::BytesMut;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;

use crate::chunked::{
    Frames, Layout, any_len, message_field_len, put_message_head, put_string_field,
    string_field_len,
};
use crate::resource::{Resource, Resources};

/// `DiscoveryResponse` field numbers (envoy/service/discovery/v3/discovery.proto).
const VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;

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

    /// The gRPC frame (flag, length, message), in chunks of about
    /// `chunked::CHUNK` bytes, each encoded when asked for.
    pub(crate) fn into_frames(self) -> SotwFrames {
        Frames::new(self)
    }
}

/// The chunks of one framed [`SotwResponse`].
pub(crate) type SotwFrames = Frames<SotwResponse>;

impl Layout for SotwResponse {
    fn names(&self) -> &[String] {
        &self.names
    }

    fn map(&self) -> Option<&Resources> {
        self.map.as_deref()
    }

    fn body_len(&self) -> usize {
        string_field_len(VERSION_INFO, &self.version_info)
            + self
                .resources()
                .map(|r| message_field_len(RESOURCES, any_len(&r.body)))
                .sum::<usize>()
            + string_field_len(TYPE_URL, &self.type_url)
            + string_field_len(NONCE, &self.nonce)
    }

    fn put_head(&self, buf: &mut BytesMut) {
        put_string_field(buf, VERSION_INFO, &self.version_info);
    }

    fn put_resource_head(&self, _name: &str, r: &Resource, buf: &mut BytesMut) {
        put_message_head(buf, RESOURCES, any_len(&r.body));
    }

    fn put_tail(&self, buf: &mut BytesMut) {
        put_string_field(buf, TYPE_URL, &self.type_url);
        put_string_field(buf, NONCE, &self.nonce);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunked::CHUNK;
    use crate::testutil::{frame_message, sized_map as map, strings};
    use bytes::Bytes;
    use prost::Message;

    fn names(list: &[&str]) -> Arc<Vec<String>> {
        Arc::new(strings(list))
    }

    /// The chunks joined are a gRPC frame of exactly what prost encodes.
    fn check(resp: SotwResponse) -> Vec<Bytes> {
        let expected = resp.to_message();
        let chunks: Vec<Bytes> = resp.into_frames().collect();
        assert_eq!(
            frame_message(&chunks),
            expected.encode_to_vec(),
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
