//! Just enough HPACK (RFC 7541) for a client: a full decoder (static and
//! dynamic tables, Huffman) for response headers, and literal-only encoding of
//! the fixed request headers, built once per run.

use std::collections::VecDeque;
use std::sync::OnceLock;

#[derive(Debug)]
pub struct HpackError;

/// RFC 7541 Appendix A.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Static-table indices used when encoding requests.
pub const IDX_AUTHORITY: usize = 1;
pub const IDX_PATH: usize = 4;
pub const IDX_CONTENT_TYPE: usize = 31;
pub const IDX_USER_AGENT: usize = 58;

/// The decoding context of one connection.
pub struct Decoder {
    dynamic: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
    limit: usize,
}

impl Decoder {
    /// `limit`: the SETTINGS_HEADER_TABLE_SIZE we advertised.
    pub fn new(limit: usize) -> Self {
        Self {
            dynamic: VecDeque::new(),
            size: 0,
            max: limit,
            limit,
        }
    }

    fn get(&self, idx: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match idx {
            0 => Err(HpackError),
            1..=61 => Ok(STATIC[idx - 1]),
            _ => self
                .dynamic
                .get(idx - 62)
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .ok_or(HpackError),
        }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            match self.dynamic.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let sz = name.len() + value.len() + 32;
        if sz > self.max {
            self.dynamic.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - sz);
        self.size += sz;
        self.dynamic.push_front((name, value));
    }

    /// Decodes a complete header block, calling `on(name, value)` for each field.
    pub fn decode(
        &mut self,
        mut src: &[u8],
        mut on: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        while let Some(&b) = src.first() {
            if b & 0x80 != 0 {
                // indexed field
                let idx = decode_int(&mut src, 7)?;
                let (n, v) = self.get(idx)?;
                on(n, v);
            } else if b & 0xc0 == 0x40 {
                // literal with incremental indexing
                let idx = decode_int(&mut src, 6)?;
                let name = if idx == 0 {
                    decode_string(&mut src)?
                } else {
                    self.get(idx)?.0.to_vec()
                };
                let value = decode_string(&mut src)?;
                on(&name, &value);
                self.insert(name, value);
            } else if b & 0xe0 == 0x20 {
                // dynamic table size update
                let max = decode_int(&mut src, 5)?;
                if max > self.limit {
                    return Err(HpackError);
                }
                self.max = max;
                self.evict_to(max);
            } else {
                // literal without indexing (0000) or never indexed (0001)
                let idx = decode_int(&mut src, 4)?;
                let value;
                if idx == 0 {
                    let name = decode_string(&mut src)?;
                    value = decode_string(&mut src)?;
                    on(&name, &value);
                } else {
                    value = decode_string(&mut src)?;
                    let (n, _) = self.get(idx)?;
                    on(n, &value);
                }
            }
        }
        Ok(())
    }
}

fn decode_int(src: &mut &[u8], prefix: u8) -> Result<usize, HpackError> {
    let mask = (1u16 << prefix) as usize - 1;
    let (&first, rest) = src.split_first().ok_or(HpackError)?;
    *src = rest;
    let mut v = first as usize & mask;
    if v < mask {
        return Ok(v);
    }
    let mut shift = 0;
    loop {
        let (&b, rest) = src.split_first().ok_or(HpackError)?;
        *src = rest;
        v += ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError);
        }
    }
}

fn decode_string(src: &mut &[u8]) -> Result<Vec<u8>, HpackError> {
    let huffman = src.first().ok_or(HpackError)? & 0x80 != 0;
    let len = decode_int(src, 7)?;
    if src.len() < len {
        return Err(HpackError);
    }
    let (s, rest) = src.split_at(len);
    *src = rest;
    if huffman {
        huffman_decode(s)
    } else {
        Ok(s.to_vec())
    }
}

pub fn encode_int(dst: &mut Vec<u8>, first: u8, prefix: u8, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        dst.push(first | v as u8);
        return;
    }
    dst.push(first | max as u8);
    v -= max;
    while v >= 128 {
        dst.push((v % 128 + 128) as u8);
        v /= 128;
    }
    dst.push(v as u8);
}

/// A literal field without indexing, its name from the static table.
pub fn encode_literal(dst: &mut Vec<u8>, name_idx: usize, value: &[u8]) {
    encode_int(dst, 0x00, 4, name_idx);
    encode_int(dst, 0x00, 7, value.len());
    dst.extend_from_slice(value);
}

/// A literal field without indexing, with a literal name.
pub fn encode_literal_name(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.push(0x00);
    encode_int(dst, 0x00, 7, name.len());
    dst.extend_from_slice(name);
    encode_int(dst, 0x00, 7, value.len());
    dst.extend_from_slice(value);
}

/// The Huffman code as a binary tree: node i has children `tree[i][bit]`;
/// a child >= 0 is a node index, < 0 is a leaf for symbol `-child - 1`.
fn tree() -> &'static Vec<[i32; 2]> {
    static TREE: OnceLock<Vec<[i32; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut t: Vec<[i32; 2]> = vec![[0, 0]];
        let mut add = |sym: usize, code: u32, len: u8| {
            let mut node = 0usize;
            for i in (0..len).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    t[node][bit] = -(sym as i32) - 1;
                } else {
                    if t[node][bit] <= 0 {
                        t.push([0, 0]);
                        let n = (t.len() - 1) as i32;
                        t[node][bit] = n;
                    }
                    node = t[node][bit] as usize;
                }
            }
        };
        for sym in 0..256 {
            add(sym, CODES[sym], CODE_LENGTHS[sym]);
        }
        add(256, 0x3fff_ffff, 30);
        t
    })
}

pub fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, HpackError> {
    let t = tree();
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let mut node = 0usize;
    let mut depth = 0u32;
    for &byte in src {
        for i in (0..8).rev() {
            let next = t[node][((byte >> i) & 1) as usize];
            depth += 1;
            if next < 0 {
                let sym = (-next - 1) as usize;
                if sym == 256 {
                    return Err(HpackError); // EOS in a string
                }
                out.push(sym as u8);
                node = 0;
                depth = 0;
            } else if next == 0 {
                return Err(HpackError);
            } else {
                node = next as usize;
            }
        }
    }
    // padding: at most 7 bits, all ones (a prefix of EOS)
    if depth > 7 {
        return Err(HpackError);
    }
    Ok(out)
}

/// RFC 7541 Appendix B: the Huffman code of each byte value (EOS, symbol 256, is
/// 0x3fffffff in 30 bits).
const CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

/// RFC 7541 Appendix B: the length in bits of each code above.
const CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7541_c4_huffman_requests() {
        // C.4.1: "www.example.com"
        let enc = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(huffman_decode(&enc).unwrap(), b"www.example.com");
        // C.4.2: "no-cache"
        assert_eq!(
            huffman_decode(&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]).unwrap(),
            b"no-cache"
        );
    }

    #[test]
    fn rfc7541_c6_responses_with_huffman() {
        let mut d = Decoder::new(256);
        let block1: Vec<u8> = [
            "48826402",
            "5885aec3771a4b",
            "6196d07abe941054d444a8200595040b8166e082a62d1bff",
            "6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        ]
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect();
        let mut got = Vec::new();
        d.decode(&block1, |n, v| got.push((n.to_vec(), v.to_vec())))
            .unwrap();
        assert_eq!(got[0], (b":status".to_vec(), b"302".to_vec()));
        assert_eq!(
            got[3],
            (b"location".to_vec(), b"https://www.example.com".to_vec())
        );
        // C.6.2: ":status 307", the rest indexed from the dynamic table
        let block2 = [0x48, 0x83, 0x64, 0x0e, 0xff, 0xc1, 0xc0, 0xbf];
        got.clear();
        d.decode(&block2, |n, v| got.push((n.to_vec(), v.to_vec())))
            .unwrap();
        assert_eq!(got[0], (b":status".to_vec(), b"307".to_vec()));
        assert_eq!(got[1], (b"cache-control".to_vec(), b"private".to_vec()));
        assert_eq!(got[2].0, b"date".to_vec());
        assert_eq!(
            got[3],
            (b"location".to_vec(), b"https://www.example.com".to_vec())
        );
    }

    #[test]
    fn integers() {
        let mut b = Vec::new();
        encode_int(&mut b, 0, 5, 1337);
        assert_eq!(b, [31, 154, 10]);
        let mut s: &[u8] = &b;
        assert_eq!(decode_int(&mut s, 5).unwrap(), 1337);
    }
}
