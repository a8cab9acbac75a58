//! A minimal HTTP/1.1 client connection: one request in flight, keep-alive,
//! Content-Length / chunked / read-until-close bodies. Hand-rolled (with
//! `httparse` for the response head) so that the load generator costs about
//! as much CPU per request as wrk does, far less than a general client.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ErrKind;

pub struct H1Conn {
    stream: TcpStream,
    buf: BytesMut,
}

pub struct H1Response {
    pub status: u16,
    pub body_len: u64,
    /// The server will close the connection after this response.
    pub close: bool,
}

enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

impl H1Conn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        })
    }

    /// Sends `req` (a complete request head, no body) and reads one response.
    pub async fn request(&mut self, req: &[u8]) -> Result<H1Response, ErrKind> {
        self.stream.write_all(req).await.map_err(|_| ErrKind::Io)?;
        loop {
            let (status, framing, close) = self.read_head().await?;
            if (100..200).contains(&status) && status != 101 {
                continue; // interim response: the final one follows
            }
            let (body_len, eof) = match framing {
                Framing::Length(n) => (self.skip_exact(n).await?, false),
                Framing::Chunked => (self.skip_chunked().await?, false),
                Framing::UntilClose => (self.skip_to_eof().await?, true),
            };
            return Ok(H1Response {
                status,
                body_len,
                close: close || eof,
            });
        }
    }

    async fn fill(&mut self) -> Result<(), ErrKind> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(ErrKind::Closed),
            Ok(_) => Ok(()),
            Err(_) => Err(ErrKind::Io),
        }
    }

    async fn read_head(&mut self) -> Result<(u16, Framing, bool), ErrKind> {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 48];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let mut framing = Framing::UntilClose;
                        let mut close = resp.version == Some(0);
                        for h in resp.headers.iter() {
                            if h.name.eq_ignore_ascii_case("content-length") {
                                let v = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|s| s.trim().parse::<u64>().ok())
                                    .ok_or(ErrKind::Parse)?;
                                if !matches!(framing, Framing::Chunked) {
                                    framing = Framing::Length(v);
                                }
                            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                if contains_token(h.value, b"chunked") {
                                    framing = Framing::Chunked;
                                }
                            } else if h.name.eq_ignore_ascii_case("connection") {
                                if contains_token(h.value, b"close") {
                                    close = true;
                                } else if contains_token(h.value, b"keep-alive") {
                                    close = false;
                                }
                            }
                        }
                        if status == 204 || status == 304 || (100..200).contains(&status) {
                            framing = Framing::Length(0);
                        }
                        self.buf.advance(n);
                        return Ok((status, framing, close));
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > 64 * 1024 {
                            return Err(ErrKind::Parse);
                        }
                    }
                    Err(_) => return Err(ErrKind::Parse),
                }
            }
            self.fill().await?;
        }
    }

    async fn skip_exact(&mut self, n: u64) -> Result<u64, ErrKind> {
        let mut left = n;
        loop {
            let take = (self.buf.len() as u64).min(left);
            self.buf.advance(take as usize);
            left -= take;
            if left == 0 {
                return Ok(n);
            }
            self.fill().await?;
        }
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, ErrKind> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.advance(i + 2);
                return Ok(line);
            }
            if self.buf.len() > 8 * 1024 {
                return Err(ErrKind::Parse);
            }
            self.fill().await?;
        }
    }

    async fn skip_chunked(&mut self) -> Result<u64, ErrKind> {
        let mut total = 0u64;
        loop {
            let line = self.read_line().await?;
            let hex = line.split(|&b| b == b';').next().unwrap_or(&[]);
            let size = std::str::from_utf8(hex)
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .ok_or(ErrKind::Parse)?;
            if size == 0 {
                // trailer section, ended by an empty line
                while !self.read_line().await?.is_empty() {}
                return Ok(total);
            }
            self.skip_exact(size).await?;
            if !self.read_line().await?.is_empty() {
                return Err(ErrKind::Parse);
            }
            total += size;
        }
    }

    async fn skip_to_eof(&mut self) -> Result<u64, ErrKind> {
        let mut total = self.buf.len() as u64;
        self.buf.clear();
        loop {
            match self.fill().await {
                Ok(()) => {
                    total += self.buf.len() as u64;
                    self.buf.clear();
                }
                Err(ErrKind::Closed) => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    }
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}
