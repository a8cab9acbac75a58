//! The gRPC framing both response kinds share: a message whose resources
//! are names into a snapshot's shared map, encoded a chunk at a time as
//! HTTP/2 asks for bytes, so a stream holds about one chunk of encoded data
//! however large its response (`sotw/response.rs`, `delta/response.rs` say
//! why). A response lays itself out through [`Layout`]: the fields before
//! the resources, each resource's header up to its `Any`, the fields after;
//! [`Frames`] writes the `Any`s and slices their values.

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::google::protobuf::Any;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::resource::{Resource, Resources};

/// Bytes per chunk handed to HTTP/2: a few DATA frames (16 KiB each by
/// default), small against a connection's flow-control window.
pub(crate) const CHUNK: usize = 32 * 1024;

/// `google.protobuf.Any` field numbers.
const ANY_TYPE_URL: u32 = 1;
const ANY_VALUE: u32 = 2;

/// How a response message is laid out around its resources.
pub(crate) trait Layout {
    /// The names of the resources to send, in order (names not in `map`
    /// are skipped).
    fn names(&self) -> &[String];
    /// The map holding them.
    fn map(&self) -> Option<&Resources>;
    /// The encoded length of the message.
    fn body_len(&self) -> usize;
    /// The fields before the resources.
    fn put_head(&self, buf: &mut BytesMut);
    /// One resource's field up to its `Any`'s own fields (key, length, and
    /// whatever the message wraps the `Any` in).
    fn put_resource_head(&self, name: &str, r: &Resource, buf: &mut BytesMut);
    /// The fields after the resources.
    fn put_tail(&self, buf: &mut BytesMut);
}

/// Where a [`Frames`] is in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The gRPC prefix and the head fields.
    Head,
    /// Resource `index`, its value from `offset` on.
    Resources,
    /// The tail fields.
    Tail,
    Done,
}

/// The chunks of one framed response (flag, length, message).
pub(crate) struct Frames<M> {
    resp: M,
    body_len: usize,
    stage: Stage,
    /// The next name of `resp.names()` to write.
    index: usize,
    /// How much of the current resource's value is written (its header
    /// goes out with offset 0).
    offset: usize,
}

impl<M: Layout> Frames<M> {
    pub(crate) fn new(resp: M) -> Frames<M> {
        Frames {
            body_len: resp.body_len(),
            resp,
            stage: Stage::Head,
            index: 0,
            offset: 0,
        }
    }
}

impl<M: Layout> Iterator for Frames<M> {
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
            self.resp.put_head(&mut buf);
            self.stage = Stage::Resources;
        }
        while self.stage == Stage::Resources && buf.len() < CHUNK {
            let Some(name) = self.resp.names().get(self.index) else {
                self.stage = Stage::Tail;
                break;
            };
            let Some(r) = self.resp.map().and_then(|m| m.get(name)) else {
                self.index += 1;
                continue;
            };
            let any = &r.body;
            if self.offset == 0 {
                self.resp.put_resource_head(name, r, &mut buf);
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
            self.resp.put_tail(&mut buf);
            self.stage = Stage::Done;
        }
        Some(buf.freeze())
    }
}

/// The encoded length of an `Any` (proto3: empty fields are left out).
pub(crate) fn any_len(any: &Any) -> usize {
    string_field_len(ANY_TYPE_URL, &any.type_url) + bytes_field_len(ANY_VALUE, &any.value)
}

/// The encoded length of a length-delimited field holding `len` bytes.
pub(crate) fn message_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A length-delimited field's key and length, its content to follow.
pub(crate) fn put_message_head(buf: &mut BytesMut, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

pub(crate) fn string_field_len(tag: u32, s: &str) -> usize {
    bytes_field_len(tag, s.as_bytes())
}

fn bytes_field_len(tag: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        message_field_len(tag, b.len())
    }
}

pub(crate) fn put_string_field(buf: &mut BytesMut, tag: u32, s: &str) {
    if !s.is_empty() {
        put_message_head(buf, tag, s.len());
        buf.put_slice(s.as_bytes());
    }
}
