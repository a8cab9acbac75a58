//! A lean HTTP/2 client for h2c (prior knowledge) and gRPC unary.
//!
//! One `Conn` per TCP connection, driven by a single task: requests are
//! written from a header block encoded once per run (literal HPACK, no
//! state), responses are parsed frame by frame in place. There is no per-request
//! task, channel or lock, so the client costs about as much CPU per request as
//! h2load (the `h2` crate behind hyper costs twice that, which made the load
//! generator the bottleneck against the faster proxies).
//!
//! Implemented: SETTINGS (+ACK), PING (+ACK), GOAWAY, RST_STREAM, WINDOW_UPDATE
//! in both directions, CONTINUATION, padding, the peer's
//! MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE and flow-control windows. Not
//! implemented: server push (disabled in our SETTINGS), priorities (ignored).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::ErrKind;
use crate::hpack;

pub const GRPC_PATH: &str = "/trellis.test.Echo/Unary";

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(crate) const DATA: u8 = 0;
pub(crate) const HEADERS: u8 = 1;
pub(crate) const RST_STREAM: u8 = 3;
pub(crate) const SETTINGS: u8 = 4;
pub(crate) const PUSH_PROMISE: u8 = 5;
pub(crate) const PING: u8 = 6;
pub(crate) const GOAWAY: u8 = 7;
pub(crate) const WINDOW_UPDATE: u8 = 8;
pub(crate) const CONTINUATION: u8 = 9;
pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY_FLAG: u8 = 0x20;
/// Our receive window per stream and for the connection.
pub(crate) const RECV_WINDOW: u32 = 1 << 30;
pub(crate) const HEADER_TABLE_SIZE: usize = 4096;
const MAX_STREAM_ID: u32 = 0x7fff_fff0;

/// What to send on every h2c / gRPC request.
pub struct H2Template {
    /// The HPACK-encoded request header block.
    block: Vec<u8>,
    pub grpc: bool,
    /// For gRPC: the length-prefixed message (5-byte header + protobuf bytes).
    body: Vec<u8>,
    /// For gRPC: the message length we expect back (the server echoes).
    pub grpc_msg_len: u64,
}

impl H2Template {
    pub fn new(
        authority: &str,
        path_and_query: &str,
        grpc: bool,
        grpc_message_bytes: usize,
    ) -> Result<Self, String> {
        let path = if grpc { GRPC_PATH } else { path_and_query };
        if authority.is_empty() || !path.starts_with('/') {
            return Err(format!("bad authority/path {authority:?} {path:?}"));
        }
        let mut block = Vec::new();
        block.push(if grpc { 0x83 } else { 0x82 }); // :method POST / GET
        block.push(0x86); // :scheme http
        if path == "/" {
            block.push(0x84);
        } else {
            hpack::encode_literal(&mut block, hpack::IDX_PATH, path.as_bytes());
        }
        hpack::encode_literal(&mut block, hpack::IDX_AUTHORITY, authority.as_bytes());
        if grpc {
            hpack::encode_literal(&mut block, hpack::IDX_CONTENT_TYPE, b"application/grpc");
            hpack::encode_literal_name(&mut block, b"te", b"trailers");
        }
        hpack::encode_literal(&mut block, hpack::IDX_USER_AGENT, b"trellis-loadgen");
        let (body, grpc_msg_len) = if grpc {
            let msg = echo_message(grpc_message_bytes);
            let mut b = Vec::with_capacity(5 + msg.len());
            b.push(0);
            b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            b.extend_from_slice(&msg);
            (b, msg.len() as u64)
        } else {
            (Vec::new(), 0)
        };
        Ok(Self {
            block,
            grpc,
            body,
            grpc_msg_len,
        })
    }
}

/// A protobuf message `{ bytes payload = 1; }` whose encoding is `total` bytes long
/// (or as close as the varint length allows).
fn echo_message(total: usize) -> Vec<u8> {
    let mut payload = total.saturating_sub(2);
    while payload > 0 && 1 + varint_len(payload) + payload > total {
        payload -= 1;
    }
    let mut m = Vec::with_capacity(total);
    m.push(0x0a);
    let mut v = payload;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            m.push(b);
            break;
        }
        m.push(b | 0x80);
    }
    m.resize(m.len() + payload, b'g');
    m
}

fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub struct H2Response {
    pub status: u16,
    /// Body bytes (h2c) or gRPC message bytes (gRPC).
    pub body_len: u64,
}

/// A finished request: its tag (whatever the caller attached) and outcome.
pub struct Done<T> {
    pub tag: T,
    pub result: Result<H2Response, ErrKind>,
}

struct Stream<T> {
    tag: T,
    status: u16,
    got_headers: bool,
    body: u64,
    prefix: [u8; 5],
    grpc_status: Option<Vec<u8>>,
    send_window: i64,
    /// Request body bytes not sent yet (flow control).
    body_sent: usize,
    body_pending: bool,
}

pub struct Conn<T> {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    pub rbuf: BytesMut,
    wbuf: Vec<u8>,
    hpack: hpack::Decoder,
    next_id: u32,
    streams: HashMap<u32, Stream<T>>,
    /// Stream ids in the order they were opened, for timeouts (may hold finished ones).
    order: VecDeque<(u32, Instant)>,
    conn_send_window: i64,
    peer_initial_window: i64,
    peer_max_streams: usize,
    peer_max_frame: usize,
    recv_unacked: u32,
    /// A header block being continued: (stream, fragment so far, END_STREAM seen).
    continuing: Option<(u32, Vec<u8>, bool)>,
    goaway: bool,
}

impl<T> Conn<T> {
    pub async fn connect(addr: SocketAddr) -> Result<Self, ErrKind> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|_| ErrKind::Connect)?;
        tcp.set_nodelay(true).map_err(|_| ErrKind::Connect)?;
        let (rd, wr) = tcp.into_split();
        let mut c = Conn {
            rd,
            wr,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: Vec::with_capacity(16 * 1024),
            hpack: hpack::Decoder::new(HEADER_TABLE_SIZE),
            next_id: 1,
            streams: HashMap::new(),
            order: VecDeque::new(),
            conn_send_window: 65_535,
            peer_initial_window: 65_535,
            peer_max_streams: usize::MAX,
            peer_max_frame: 16_384,
            recv_unacked: 0,
            continuing: None,
            goaway: false,
        };
        c.wbuf.extend_from_slice(PREFACE);
        // SETTINGS: ENABLE_PUSH = 0, INITIAL_WINDOW_SIZE = RECV_WINDOW
        frame_header(&mut c.wbuf, 12, SETTINGS, 0, 0);
        c.wbuf.extend_from_slice(&[0, 2, 0, 0, 0, 0]);
        c.wbuf.extend_from_slice(&[0, 4]);
        c.wbuf.extend_from_slice(&RECV_WINDOW.to_be_bytes());
        frame_header(&mut c.wbuf, 4, WINDOW_UPDATE, 0, 0);
        c.wbuf
            .extend_from_slice(&(RECV_WINDOW - 65_535).to_be_bytes());
        c.flush().await.map_err(|_| ErrKind::Connect)?;
        Ok(c)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.streams.len()
    }

    /// Whether another request may be started now.
    pub fn can_start(&self) -> bool {
        !self.goaway && self.next_id < MAX_STREAM_ID && self.streams.len() < self.peer_max_streams
    }

    /// The connection takes no new requests (GOAWAY, ids exhausted): reconnect once drained.
    pub fn retiring(&self) -> bool {
        self.goaway || self.next_id >= MAX_STREAM_ID
    }

    /// Queues a request (written by the next `flush`).
    pub fn start(&mut self, tmpl: &H2Template, tag: T, now: Instant) {
        let id = self.next_id;
        self.next_id += 2;
        let has_body = !tmpl.body.is_empty();
        let mut stream = Stream {
            tag,
            status: 0,
            got_headers: false,
            body: 0,
            prefix: [0; 5],
            grpc_status: None,
            send_window: self.peer_initial_window,
            body_sent: 0,
            body_pending: has_body,
        };
        frame_header(
            &mut self.wbuf,
            tmpl.block.len(),
            HEADERS,
            END_HEADERS | if has_body { 0 } else { END_STREAM },
            id,
        );
        self.wbuf.extend_from_slice(&tmpl.block);
        if has_body {
            self.try_send_body(id, &mut stream, tmpl);
        }
        self.streams.insert(id, stream);
        self.order.push_back((id, now));
    }

    fn try_send_body(&mut self, id: u32, s: &mut Stream<T>, tmpl: &H2Template) {
        while s.body_pending {
            let left = tmpl.body.len() - s.body_sent;
            let n = (left as i64)
                .min(self.conn_send_window)
                .min(s.send_window)
                .min(self.peer_max_frame as i64);
            if n <= 0 {
                return;
            }
            let n = n as usize;
            let last = n == left;
            frame_header(
                &mut self.wbuf,
                n,
                DATA,
                if last { END_STREAM } else { 0 },
                id,
            );
            self.wbuf
                .extend_from_slice(&tmpl.body[s.body_sent..s.body_sent + n]);
            s.body_sent += n;
            self.conn_send_window -= n as i64;
            s.send_window -= n as i64;
            s.body_pending = !last;
        }
    }

    fn send_pending_bodies(&mut self, tmpl: &H2Template) {
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.body_pending)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(mut s) = self.streams.remove(&id) {
                self.try_send_body(id, &mut s, tmpl);
                self.streams.insert(id, s);
            }
        }
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.wr.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads once from the socket into `rbuf`; cancel-safe. Ok(0) is EOF.
    pub async fn read(rd: &mut OwnedReadHalf, rbuf: &mut BytesMut) -> std::io::Result<usize> {
        if rbuf.capacity() - rbuf.len() < 16 * 1024 {
            rbuf.reserve(64 * 1024);
        }
        rd.read_buf(rbuf).await
    }

    /// The read half and buffer, for `read` inside a `select!`.
    pub fn reader(&mut self) -> (&mut OwnedReadHalf, &mut BytesMut) {
        (&mut self.rd, &mut self.rbuf)
    }

    /// Parses the complete frames in `rbuf`, answering control frames and
    /// pushing finished requests to `done`. An error is fatal to the connection.
    pub fn process(&mut self, tmpl: &H2Template, done: &mut Vec<Done<T>>) -> Result<(), ErrKind> {
        loop {
            if self.rbuf.len() < 9 {
                return Ok(());
            }
            let len = u32::from_be_bytes([0, self.rbuf[0], self.rbuf[1], self.rbuf[2]]) as usize;
            if self.rbuf.len() < 9 + len {
                return Ok(());
            }
            let ty = self.rbuf[3];
            let flags = self.rbuf[4];
            let id = u32::from_be_bytes([self.rbuf[5], self.rbuf[6], self.rbuf[7], self.rbuf[8]])
                & 0x7fff_ffff;
            let frame = self.rbuf.split_to(9 + len);
            let payload = &frame[9..];
            if self.continuing.is_some() && ty != CONTINUATION {
                return Err(ErrKind::H2);
            }
            match ty {
                DATA => self.on_data(id, flags, payload, tmpl, done)?,
                HEADERS => {
                    let mut p = unpad(flags, payload)?;
                    if flags & PRIORITY_FLAG != 0 {
                        p = p.get(5..).ok_or(ErrKind::H2)?;
                    }
                    if flags & END_HEADERS != 0 {
                        self.on_headers(id, p, flags & END_STREAM != 0, tmpl, done)?;
                    } else {
                        self.continuing = Some((id, p.to_vec(), flags & END_STREAM != 0));
                    }
                }
                CONTINUATION => {
                    let Some((cid, mut block, end)) = self.continuing.take() else {
                        return Err(ErrKind::H2);
                    };
                    if cid != id {
                        return Err(ErrKind::H2);
                    }
                    block.extend_from_slice(payload);
                    if flags & END_HEADERS != 0 {
                        self.on_headers(id, &block, end, tmpl, done)?;
                    } else {
                        self.continuing = Some((cid, block, end));
                    }
                }
                RST_STREAM => {
                    if let Some(s) = self.streams.remove(&id) {
                        done.push(Done {
                            tag: s.tag,
                            result: Err(ErrKind::H2Reset),
                        });
                    }
                }
                SETTINGS if flags & ACK == 0 => {
                    self.on_settings(payload, tmpl)?;
                    frame_header(&mut self.wbuf, 0, SETTINGS, ACK, 0);
                }
                PING if flags & ACK == 0 && payload.len() == 8 => {
                    frame_header(&mut self.wbuf, 8, PING, ACK, 0);
                    self.wbuf.extend_from_slice(payload);
                }
                GOAWAY => {
                    self.goaway = true;
                    let last = payload.get(..4).map_or(0, |b| {
                        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
                    });
                    let refused: Vec<u32> = self
                        .streams
                        .keys()
                        .copied()
                        .filter(|&sid| sid > last)
                        .collect();
                    for sid in refused {
                        if let Some(s) = self.streams.remove(&sid) {
                            done.push(Done {
                                tag: s.tag,
                                result: Err(ErrKind::Closed),
                            });
                        }
                    }
                }
                WINDOW_UPDATE => {
                    let inc = payload.get(..4).map_or(0, |b| {
                        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
                    }) as i64;
                    if id == 0 {
                        self.conn_send_window += inc;
                    } else if let Some(s) = self.streams.get_mut(&id) {
                        s.send_window += inc;
                    }
                    self.send_pending_bodies(tmpl);
                }
                PUSH_PROMISE => return Err(ErrKind::H2), // we disabled push
                _ => {}                                  // PRIORITY and unknown types: ignore
            }
        }
    }

    fn on_data(
        &mut self,
        id: u32,
        flags: u8,
        payload: &[u8],
        tmpl: &H2Template,
        done: &mut Vec<Done<T>>,
    ) -> Result<(), ErrKind> {
        self.recv_unacked += payload.len() as u32;
        let data = unpad(flags, payload)?;
        if let Some(s) = self.streams.get_mut(&id) {
            if tmpl.grpc && s.body < 5 {
                for (i, b) in data.iter().take(5 - s.body as usize).enumerate() {
                    s.prefix[s.body as usize + i] = *b;
                }
            }
            s.body += data.len() as u64;
        }
        if self.recv_unacked >= RECV_WINDOW / 2 {
            // streams get a fresh window each; only the connection's needs topping up
            frame_header(&mut self.wbuf, 4, WINDOW_UPDATE, 0, 0);
            self.wbuf
                .extend_from_slice(&self.recv_unacked.to_be_bytes());
            self.recv_unacked = 0;
        }
        if flags & END_STREAM != 0 {
            self.finish(id, tmpl, done);
        }
        Ok(())
    }

    fn on_headers(
        &mut self,
        id: u32,
        block: &[u8],
        end: bool,
        tmpl: &H2Template,
        done: &mut Vec<Done<T>>,
    ) -> Result<(), ErrKind> {
        let mut status = None;
        let mut grpc_status = None;
        self.hpack
            .decode(block, |n, v| {
                if n == b":status" {
                    status = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<u16>().ok());
                } else if n == b"grpc-status" {
                    grpc_status = Some(v.to_vec());
                }
            })
            .map_err(|_| ErrKind::H2)?;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(()); // a stream we gave up on (timeout): the block still fed HPACK
        };
        if !s.got_headers {
            let st = status.ok_or(ErrKind::H2)?;
            if (100..200).contains(&st) && !end {
                return Ok(()); // interim response
            }
            s.status = st;
            s.got_headers = true;
        }
        if grpc_status.is_some() {
            s.grpc_status = grpc_status;
        }
        if end {
            self.finish(id, tmpl, done);
        }
        Ok(())
    }

    fn on_settings(&mut self, p: &[u8], tmpl: &H2Template) -> Result<(), ErrKind> {
        if !p.len().is_multiple_of(6) {
            return Err(ErrKind::H2);
        }
        for e in p.chunks_exact(6) {
            let key = u16::from_be_bytes([e[0], e[1]]);
            let val = u32::from_be_bytes([e[2], e[3], e[4], e[5]]);
            match key {
                3 => self.peer_max_streams = val as usize,
                4 => {
                    let delta = val as i64 - self.peer_initial_window;
                    self.peer_initial_window = val as i64;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                    }
                    self.send_pending_bodies(tmpl);
                }
                5 => self.peer_max_frame = val as usize,
                _ => {}
            }
        }
        Ok(())
    }

    fn finish(&mut self, id: u32, tmpl: &H2Template, done: &mut Vec<Done<T>>) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        let result = if !tmpl.grpc || s.status != 200 {
            Ok(H2Response {
                status: s.status,
                body_len: s.body,
            })
        } else {
            match s.grpc_status.as_deref() {
                None => Err(ErrKind::GrpcNoStatus),
                Some(b"0") => {
                    let msg_len =
                        u32::from_be_bytes([s.prefix[1], s.prefix[2], s.prefix[3], s.prefix[4]])
                            as u64;
                    if s.body < 5 || s.prefix[0] != 0 || msg_len + 5 != s.body {
                        Err(ErrKind::GrpcFrame)
                    } else {
                        Ok(H2Response {
                            status: 200,
                            body_len: msg_len,
                        })
                    }
                }
                Some(v) => Err(ErrKind::GrpcStatus(String::from_utf8_lossy(v).into_owned())),
            }
        };
        done.push(Done { tag: s.tag, result });
    }

    /// When the oldest request in flight was started (for timeouts).
    pub fn oldest(&mut self) -> Option<Instant> {
        while let Some(&(id, t)) = self.order.front() {
            if self.streams.contains_key(&id) {
                return Some(t);
            }
            self.order.pop_front();
        }
        None
    }

    /// Fails (and resets) every request started before `cutoff`.
    pub fn expire(&mut self, cutoff: Instant, done: &mut Vec<Done<T>>) {
        while let Some(&(id, t)) = self.order.front() {
            if t >= cutoff {
                break;
            }
            self.order.pop_front();
            if let Some(s) = self.streams.remove(&id) {
                frame_header(&mut self.wbuf, 4, RST_STREAM, 0, id);
                self.wbuf.extend_from_slice(&8u32.to_be_bytes()); // CANCEL
                done.push(Done {
                    tag: s.tag,
                    result: Err(ErrKind::Timeout),
                });
            }
        }
    }

    /// Fails every request in flight with `err` (the connection is lost).
    pub fn fail_all(&mut self, err: ErrKind, done: &mut Vec<Done<T>>) {
        for (_, s) in self.streams.drain() {
            done.push(Done {
                tag: s.tag,
                result: Err(err.clone()),
            });
        }
        self.order.clear();
    }
}

pub(crate) fn unpad(flags: u8, p: &[u8]) -> Result<&[u8], ErrKind> {
    if flags & PADDED == 0 {
        return Ok(p);
    }
    let pad = *p.first().ok_or(ErrKind::H2)? as usize;
    if pad + 1 > p.len() {
        return Err(ErrKind::H2);
    }
    Ok(&p[1..p.len() - pad])
}

pub(crate) fn frame_header(dst: &mut Vec<u8>, len: usize, ty: u8, flags: u8, id: u32) {
    let l = (len as u32).to_be_bytes();
    dst.extend_from_slice(&[l[1], l[2], l[3], ty, flags]);
    dst.extend_from_slice(&id.to_be_bytes());
}

/// One request on a fresh connection (for `check`).
pub async fn one_request(addr: SocketAddr, tmpl: &H2Template) -> Result<H2Response, ErrKind> {
    let mut conn: Conn<()> = Conn::connect(addr).await?;
    conn.start(tmpl, (), Instant::now());
    let mut done = Vec::new();
    loop {
        conn.flush().await.map_err(|_| ErrKind::Io)?;
        let (rd, rbuf) = conn.reader();
        match Conn::<()>::read(rd, rbuf).await {
            Ok(0) => return Err(ErrKind::Closed),
            Ok(_) => {}
            Err(_) => return Err(ErrKind::Io),
        }
        conn.process(tmpl, &mut done)?;
        if let Some(d) = done.pop() {
            let _ = conn.flush().await;
            return d.result;
        }
    }
}
