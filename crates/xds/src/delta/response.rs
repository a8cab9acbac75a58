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

use bytes::BytesMut;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, Resource as DeltaResource,
};

use crate::chunked::{
    Frames, Layout, any_len, message_field_len, put_message_head, put_string_field,
    string_field_len,
};
use crate::resource::{Resource, Resources};

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
    /// Names present in `map`, in the order they are sent (shared by the
    /// streams that send the same changes).
    names: Arc<Vec<String>>,
}

impl DeltaResponse {
    /// A response carrying `names` of `map` (names not in it are skipped)
    /// and removing `removed`.
    pub(crate) fn new(
        system_version_info: String,
        type_url: String,
        nonce: String,
        map: Option<Arc<Resources>>,
        names: Arc<Vec<String>>,
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

    /// The gRPC frame (flag, length, message), in chunks of about
    /// `chunked::CHUNK` bytes, each encoded when asked for.
    pub(crate) fn into_frames(self) -> DeltaFrames {
        Frames::new(self)
    }
}

/// The chunks of one framed [`DeltaResponse`].
pub(crate) type DeltaFrames = Frames<DeltaResponse>;

/// The encoded length of one `Resource` (name, version, body).
fn resource_len(name: &str, r: &Resource) -> usize {
    string_field_len(RESOURCE_NAME, name)
        + string_field_len(RESOURCE_VERSION, &r.version)
        + message_field_len(RESOURCE_BODY, any_len(&r.body))
}

impl Layout for DeltaResponse {
    fn names(&self) -> &[String] {
        &self.names
    }

    fn map(&self) -> Option<&Resources> {
        self.map.as_deref()
    }

    fn body_len(&self) -> usize {
        string_field_len(SYSTEM_VERSION_INFO, &self.system_version_info)
            + self
                .resources()
                .map(|(name, r)| message_field_len(RESOURCES, resource_len(name, r)))
                .sum::<usize>()
            + string_field_len(TYPE_URL, &self.type_url)
            + self
                .removed_resources
                .iter()
                .map(|n| string_field_len(REMOVED_RESOURCES, n))
                .sum::<usize>()
            + string_field_len(NONCE, &self.nonce)
    }

    fn put_head(&self, buf: &mut BytesMut) {
        put_string_field(buf, SYSTEM_VERSION_INFO, &self.system_version_info);
    }

    fn put_resource_head(&self, name: &str, r: &Resource, buf: &mut BytesMut) {
        put_message_head(buf, RESOURCES, resource_len(name, r));
        put_string_field(buf, RESOURCE_NAME, name);
        put_string_field(buf, RESOURCE_VERSION, &r.version);
        put_message_head(buf, RESOURCE_BODY, any_len(&r.body));
    }

    fn put_tail(&self, buf: &mut BytesMut) {
        put_string_field(buf, TYPE_URL, &self.type_url);
        for name in &self.removed_resources {
            put_string_field(buf, REMOVED_RESOURCES, name);
        }
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

    /// The chunks joined are a gRPC frame that decodes to the message.
    fn check(resp: DeltaResponse) -> Vec<Bytes> {
        let expected = resp.to_message();
        let chunks: Vec<Bytes> = resp.into_frames().collect();
        let message = frame_message(&chunks);
        let decoded = DeltaDiscoveryResponse::decode(message.as_slice()).expect("decodes");
        assert_eq!(decoded, expected);
        assert_eq!(message.len(), expected.encoded_len(), "prost's length");
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
            strings(&["gone", "also-gone"]),
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
            strings(&[]),
        ));
        let m = map(&[("a", 5), ("b", 6)]);
        let resp = DeltaResponse::new(
            "v".into(),
            "t".into(),
            "n".into(),
            Some(m),
            names(&["b", "zz"]),
            strings(&["x"]),
        );
        assert_eq!(resp.len(), 1, "names not in the map are skipped");
        check(resp);
    }
}
