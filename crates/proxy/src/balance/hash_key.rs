//! The consistent-hash key of a request (Istio's `consistentHash` sources) and
//! the 64-bit hash Trellis uses for it and for ring points.
//!
//! The hash is FNV-1a (64-bit) followed by murmur3's `fmix64` finalizer: FNV-1a
//! alone mixes its last bytes poorly, which would cluster ring points whose
//! keys differ only in a trailing counter. Both halves are fixed algorithms, so
//! a key maps to the same point on every platform, Rust release and restart
//! (std's `DefaultHasher` promises none of that).

use std::fmt;
use std::net::IpAddr;

use http::{HeaderMap, Uri, header};

use super::HashKey;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Streaming FNV-1a with an `fmix64` finish. Also a [`fmt::Write`], so ring
/// point keys such as `10.0.0.1:80_7` are hashed without building a string.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hasher64(u64);

impl Hasher64 {
    pub(crate) fn new() -> Self {
        Self(FNV_OFFSET)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    /// The raw FNV-1a state, before the finalizer (for the reference vectors).
    #[cfg(test)]
    fn fnv(&self) -> u64 {
        self.0
    }

    pub(crate) fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

impl fmt::Write for Hasher64 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write(s.as_bytes());
        Ok(())
    }
}

/// murmur3's 64-bit finalizer: every input bit affects every output bit.
pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The hash of `bytes` used for request keys and ring points. Stable across
/// platforms, releases and restarts.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = Hasher64::new();
    h.write(bytes);
    h.finish()
}

/// The consistent-hash key of a request, hashed; `None` when the request does
/// not carry the key (no such header, cookie or query parameter).
///
/// On `None` the caller passes `hash: None` to
/// [`Balancer::pick`](super::Balancer::pick), which then makes a weighted
/// random pick, as Envoy does for a ring-hash request without a key.
///
/// - `Header`: every value of the header, combined independently of their
///   order (so `a, b` on one line or two lines hash alike). A present but
///   empty value is a key. For `host`, a request without a `Host` header
///   (HTTP/2 carries it in `:authority`) uses the URI's authority.
/// - `Cookie`: the first cookie with exactly that name, across all `Cookie`
///   headers (HTTP/2 clients may send one per cookie); surrounding double
///   quotes are stripped. An empty value counts as absent, as in Envoy.
///   Generating the cookie when it is absent (Istio's `httpCookie.ttl`) is the
///   HTTP layer's business, not this function's.
/// - `SourceIp`: the client's IP; an IPv4-mapped IPv6 address hashes like the
///   IPv4 address, so dual-stack listeners do not split a client in two.
/// - `QueryParam`: the raw value of the first parameter with exactly that raw
///   name (no percent-decoding, as in Envoy); `?name` with no `=` is an empty,
///   present value.
///
/// Cost: one pass over the relevant header or query bytes, no allocation.
pub fn request_hash(
    key: &HashKey,
    headers: &HeaderMap,
    uri: &Uri,
    source_ip: IpAddr,
) -> Option<u64> {
    match key {
        HashKey::Header(name) => header_hash(name, headers, uri),
        HashKey::Cookie { name } => cookie_value(headers, name.as_bytes()).map(hash_bytes),
        HashKey::SourceIp => Some(ip_hash(source_ip)),
        HashKey::QueryParam(name) => query_value(uri, name.as_bytes()).map(hash_bytes),
    }
}

fn header_hash(name: &header::HeaderName, headers: &HeaderMap, uri: &Uri) -> Option<u64> {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        if *name == header::HOST {
            return uri.authority().map(|a| hash_bytes(a.as_str().as_bytes()));
        }
        return None;
    }
    // One value hashes as itself; several are summed (order-independent) and
    // mixed again.
    let mut sum = 0u64;
    let mut count = 0u32;
    for v in values {
        sum = sum.wrapping_add(hash_bytes(v.as_bytes()));
        count += 1;
    }
    Some(if count == 1 { sum } else { fmix64(sum) })
}

/// The value of the first cookie named `name` in any `Cookie` header.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &[u8]) -> Option<&'h [u8]> {
    for line in headers.get_all(header::COOKIE) {
        for pair in line.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != name {
                continue;
            }
            let mut value = pair[eq + 1..].trim_ascii();
            if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                value = &value[1..value.len() - 1];
            }
            if value.is_empty() {
                return None;
            }
            return Some(value);
        }
    }
    None
}

/// The raw value of the first query parameter named `name`.
fn query_value<'u>(uri: &'u Uri, name: &[u8]) -> Option<&'u [u8]> {
    let query = uri.query()?;
    query.as_bytes().split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (k == name).then_some(v)
    })
}

fn ip_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use http::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    /// (case name, request headers, expected key)
    type Case<'a, T> = (&'a str, &'a [(&'a str, &'a str)], Option<T>);

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

    #[test]
    fn fnv1a_reference_vectors() {
        // From the FNV reference test suite.
        for (input, want) in [
            ("", 0xcbf2_9ce4_8422_2325u64),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut h = Hasher64::new();
            h.write(input.as_bytes());
            assert_eq!(h.fnv(), want, "fnv1a({input:?})");
        }
    }

    #[test]
    fn hash_is_pinned() {
        // Ring layouts (and so which endpoint a session sticks to) depend on
        // these values: changing the hash reshuffles every ring on upgrade.
        assert_eq!(fmix64(0), 0);
        assert_eq!(hash_bytes(b""), fmix64(FNV_OFFSET));
        assert_eq!(hash_bytes(b"trellis"), 0xd568_71b5_9071_f831);
        let mut streamed = Hasher64::new();
        let addr = "10.0.0.1:80";
        write!(streamed, "{addr}_{}", 7).unwrap();
        assert_eq!(streamed.finish(), hash_bytes(b"10.0.0.1:80_7"));
    }

    #[test]
    fn header_key() {
        let key = HashKey::Header(HeaderName::from_static("x-user"));
        let uri: Uri = "http://svc.local/p".parse().unwrap();
        let cases: &[Case<u64>] = &[
            (
                "present",
                &[("x-user", "alice")],
                Some(hash_bytes(b"alice")),
            ),
            ("absent", &[("x-other", "alice")], None),
            (
                "empty value is a key",
                &[("x-user", "")],
                Some(hash_bytes(b"")),
            ),
            ("no headers", &[], None),
        ];
        for (name, hs, want) in cases {
            assert_eq!(
                request_hash(&key, &headers(hs), &uri, IP),
                *want,
                "case {name}"
            );
        }
        let ab = request_hash(
            &key,
            &headers(&[("x-user", "a"), ("x-user", "b")]),
            &uri,
            IP,
        );
        let ba = request_hash(
            &key,
            &headers(&[("x-user", "b"), ("x-user", "a")]),
            &uri,
            IP,
        );
        let a = request_hash(&key, &headers(&[("x-user", "a")]), &uri, IP);
        assert!(ab.is_some());
        assert_eq!(ab, ba, "several values hash independently of order");
        assert_ne!(ab, a, "several values differ from one of them");
    }

    #[test]
    fn host_header_falls_back_to_authority() {
        let key = HashKey::Header(header::HOST);
        let h2: Uri = "http://reviews:9080/x".parse().unwrap();
        assert_eq!(
            request_hash(&key, &HeaderMap::new(), &h2, IP),
            Some(hash_bytes(b"reviews:9080"))
        );
        let h1: Uri = "/x".parse().unwrap();
        assert_eq!(
            request_hash(&key, &headers(&[("host", "reviews:9080")]), &h1, IP),
            Some(hash_bytes(b"reviews:9080"))
        );
        assert_eq!(request_hash(&key, &HeaderMap::new(), &h1, IP), None);
    }

    #[test]
    fn cookie_key() {
        let key = HashKey::Cookie {
            name: "session".into(),
        };
        let uri: Uri = "/".parse().unwrap();
        let cases: &[Case<&[u8]>] = &[
            ("only cookie", &[("cookie", "session=abc")], Some(b"abc")),
            (
                "several in one header",
                &[("cookie", "theme=dark; session=abc; lang=en")],
                Some(b"abc"),
            ),
            (
                "last in header",
                &[("cookie", "a=1;session=xyz")],
                Some(b"xyz"),
            ),
            (
                "several cookie headers",
                &[("cookie", "theme=dark"), ("cookie", "lang=en; session=s2")],
                Some(b"s2"),
            ),
            (
                "first one wins",
                &[("cookie", "session=first"), ("cookie", "session=second")],
                Some(b"first"),
            ),
            ("quoted", &[("cookie", "session=\"q v\"")], Some(b"q v")),
            (
                "value keeps '='",
                &[("cookie", "session=a=b")],
                Some(b"a=b"),
            ),
            (
                "longer name is not a match",
                &[("cookie", "xsession=no; session_id=no")],
                None,
            ),
            ("name is case-sensitive", &[("cookie", "Session=no")], None),
            ("empty value is absent", &[("cookie", "session=")], None),
            ("bare word is skipped", &[("cookie", "session; a=1")], None),
            ("no cookie header", &[("x-session", "session=abc")], None),
        ];
        for (name, hs, want) in cases {
            assert_eq!(
                request_hash(&key, &headers(hs), &uri, IP),
                want.map(hash_bytes),
                "case {name}"
            );
        }
    }

    #[test]
    fn source_ip_key() {
        let uri: Uri = "/".parse().unwrap();
        let h = |ip: IpAddr| request_hash(&HashKey::SourceIp, &HeaderMap::new(), &uri, ip);
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 7));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 168, 0, 7).to_ipv6_mapped());
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7));
        assert_eq!(h(v4), Some(hash_bytes(&[192, 168, 0, 7])));
        assert_eq!(h(mapped), h(v4), "v4-mapped v6 is the v4 client");
        assert_ne!(h(v6), h(v4));
        assert_ne!(h(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 8))), h(v4));
    }

    #[test]
    fn query_param_key() {
        let key = HashKey::QueryParam("user".into());
        let cases: &[(&str, &str, Option<&[u8]>)] = &[
            ("only param", "/p?user=alice", Some(b"alice")),
            ("among others", "/p?a=1&user=bob&b=2", Some(b"bob")),
            ("first occurrence", "/p?user=1&user=2", Some(b"1")),
            ("no '=' is empty", "/p?x=1&user", Some(b"")),
            ("empty value", "/p?user=", Some(b"")),
            ("raw, not decoded", "/p?user=a%40b", Some(b"a%40b")),
            ("prefix name is not a match", "/p?username=x&xuser=y", None),
            ("absent", "/p?a=1", None),
            ("no query", "/p", None),
            ("fragment is not query", "/p#user=x", None),
        ];
        for (name, uri, want) in cases {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(
                request_hash(&key, &HeaderMap::new(), &uri, IP),
                want.map(hash_bytes),
                "case {name}"
            );
        }
    }
}
