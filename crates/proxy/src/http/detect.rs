//! What protocol a new connection speaks, from its first bytes.
//!
//! Peeks without consuming, so the chosen server reads the stream from byte
//! zero. A server-first protocol (the client waits for a banner) sends
//! nothing; the inbound listener gives up after a bounded wait and proxies it
//! as opaque TCP instead of stalling it.

use std::time::Duration;

use tokio::net::TcpStream;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest method token we wait for before deciding it is not HTTP/1.
const MAX_METHOD_LEN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// A TLS record header (handshake, TLS 1.0-1.3): a ClientHello.
    Tls,
    Opaque,
}

/// Decide from a prefix of the stream; `None` means "need more bytes".
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    if prefix.is_empty() {
        return None;
    }
    if prefix[0] == TLS_HANDSHAKE {
        return match prefix.get(1) {
            None => None,
            Some(3) => Some(Detected::Tls),
            Some(_) => Some(Detected::Opaque),
        };
    }
    if prefix.len() >= H2_PREFACE.len() {
        if prefix.starts_with(H2_PREFACE) {
            return Some(Detected::Http2);
        }
    } else if H2_PREFACE.starts_with(prefix) {
        return None;
    }
    // HTTP/1: a method token (RFC 9110 tchar, in practice upper-case letters)
    // followed by a space.
    match prefix.iter().position(|b| *b == b' ') {
        Some(0) => Some(Detected::Opaque),
        Some(n) if n <= MAX_METHOD_LEN && prefix[..n].iter().all(is_method_char) => {
            Some(Detected::Http1)
        }
        Some(_) => Some(Detected::Opaque),
        None if prefix.len() <= MAX_METHOD_LEN && prefix.iter().all(is_method_char) => None,
        None => Some(Detected::Opaque),
    }
}

fn is_method_char(b: &u8) -> bool {
    b.is_ascii_uppercase() || *b == b'-' || *b == b'_'
}

/// Peek until the protocol is known. With `wait`, give up after it (no bytes,
/// or not enough to tell) and call the connection opaque.
pub async fn detect(stream: &TcpStream, wait: Option<Duration>) -> std::io::Result<Detected> {
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let mut buf = [0u8; 32];
    loop {
        let peeked = match deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.peek(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => return Ok(Detected::Opaque),
            },
            None => stream.peek(&mut buf).await?,
        };
        if peeked == 0 {
            return Ok(Detected::Opaque);
        }
        if let Some(d) = classify(&buf[..peeked]) {
            return Ok(d);
        }
        // A partial first packet: peek would return the same bytes at once,
        // so wait a moment for the rest instead of spinning.
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Ok(Detected::Opaque);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Like [`detect`], for a stream that cannot peek (the inside of TLS):
/// reads into `buf` until the protocol is known; the caller replays `buf`
/// (see `http::rewind`).
pub async fn detect_read<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    wait: Duration,
) -> std::io::Result<Detected> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + wait;
    let mut chunk = [0u8; 32];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Ok(Detected::Opaque),
        };
        if n == 0 {
            return Ok(Detected::Opaque);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(d) = classify(buf) {
            return Ok(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        let cases: &[(&[u8], Option<Detected>)] = &[
            (b"GET / HTTP/1.1\r\n", Some(Detected::Http1)),
            (b"POST /x HTTP/1.1\r\n", Some(Detected::Http1)),
            (b"CONNECT a:443 HTTP/1.1\r\n", Some(Detected::Http1)),
            (b"M-SEARCH * HTTP/1.1\r\n", Some(Detected::Http1)),
            (H2_PREFACE, Some(Detected::Http2)),
            (&H2_PREFACE[..10], None),
            (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", Some(Detected::Http1)),
            (b"GE", None),
            (b"\x16\x03\x01\x02\x00", Some(Detected::Tls)),
            (b"\x16", None),
            (b"\x16\x04", Some(Detected::Opaque)),
            (b"SSH-2.0-OpenSSH\r\n", Some(Detected::Opaque)),
            (b"get / HTTP/1.1", Some(Detected::Opaque)),
            (b" GET", Some(Detected::Opaque)),
            (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", Some(Detected::Opaque)),
            (b"", None),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                classify(bytes),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
