//! The h2c side of `serve`: one task per connection, no per-stream tasks, so
//! that the gRPC upstream costs little of the CPU it shares with the load
//! generator. GET (or anything not gRPC) gets `200` and the fixed body; gRPC
//! unary `POST /trellis.test.Echo/Unary` gets its message echoed, then
//! `grpc-status: 0` in the trailers (`13` if the request was not one
//! well-formed message).

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::h2::{
    ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, GRPC_PATH, HEADER_TABLE_SIZE,
    HEADERS, PING, PREFACE, PRIORITY_FLAG, RECV_WINDOW, RST_STREAM, SETTINGS, WINDOW_UPDATE,
    frame_header, unpad,
};
use crate::hpack;

struct Req {
    grpc: bool,
    data: Vec<u8>,
}

/// Response bytes waiting for flow-control window.
struct Pending {
    id: u32,
    data: Bytes,
    /// Trailers block to send after the data (gRPC), else the data ends the stream.
    trailers: Option<&'static [u8]>,
}

struct Blocks {
    plain: Vec<u8>,
    grpc: Vec<u8>,
    trailers_ok: Vec<u8>,
    trailers_err: Vec<u8>,
}

fn blocks(body_len: usize) -> &'static Blocks {
    static B: std::sync::OnceLock<Blocks> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let mut plain = vec![0x88]; // :status 200
        hpack::encode_literal(&mut plain, 31, b"text/plain");
        hpack::encode_literal(&mut plain, 28, body_len.to_string().as_bytes());
        let mut grpc = vec![0x88];
        hpack::encode_literal(&mut grpc, 31, b"application/grpc");
        let mut trailers_ok = Vec::new();
        hpack::encode_literal_name(&mut trailers_ok, b"grpc-status", b"0");
        let mut trailers_err = Vec::new();
        hpack::encode_literal_name(&mut trailers_err, b"grpc-status", b"13");
        Blocks {
            plain,
            grpc,
            trailers_ok,
            trailers_err,
        }
    })
}

struct Conn {
    wbuf: Vec<u8>,
    hpack: hpack::Decoder,
    reqs: HashMap<u32, Req>,
    pending: VecDeque<Pending>,
    send_windows: HashMap<u32, i64>,
    conn_send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    recv_unacked: u32,
    continuing: Option<(u32, Vec<u8>, bool)>,
    body: Bytes,
}

pub async fn connection(stream: TcpStream, body: Bytes) {
    let (mut rd, mut wr) = stream.into_split();
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut c = Conn {
        wbuf: Vec::with_capacity(16 * 1024),
        hpack: hpack::Decoder::new(HEADER_TABLE_SIZE),
        reqs: HashMap::new(),
        pending: VecDeque::new(),
        send_windows: HashMap::new(),
        conn_send_window: 65_535,
        peer_initial_window: 65_535,
        peer_max_frame: 16_384,
        recv_unacked: 0,
        continuing: None,
        body,
    };
    // SETTINGS: MAX_CONCURRENT_STREAMS = 1000, INITIAL_WINDOW_SIZE = RECV_WINDOW
    frame_header(&mut c.wbuf, 12, SETTINGS, 0, 0);
    c.wbuf.extend_from_slice(&[0, 3, 0, 0, 0x03, 0xe8, 0, 4]);
    c.wbuf.extend_from_slice(&RECV_WINDOW.to_be_bytes());
    frame_header(&mut c.wbuf, 4, WINDOW_UPDATE, 0, 0);
    c.wbuf
        .extend_from_slice(&(RECV_WINDOW - 65_535).to_be_bytes());
    let mut preface_seen = false;
    loop {
        if !c.wbuf.is_empty() {
            if wr.write_all(&c.wbuf).await.is_err() {
                return;
            }
            c.wbuf.clear();
        }
        if rbuf.capacity() - rbuf.len() < 16 * 1024 {
            rbuf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !preface_seen {
            if rbuf.len() < PREFACE.len() {
                continue;
            }
            if &rbuf[..PREFACE.len()] != PREFACE {
                return;
            }
            let _ = rbuf.split_to(PREFACE.len());
            preface_seen = true;
        }
        if c.process(&mut rbuf).is_err() {
            frame_header(&mut c.wbuf, 8, GOAWAY, 0, 0);
            c.wbuf.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]); // PROTOCOL_ERROR
            let _ = wr.write_all(&c.wbuf).await;
            return;
        }
    }
}

impl Conn {
    fn process(&mut self, rbuf: &mut BytesMut) -> Result<(), ()> {
        loop {
            if rbuf.len() < 9 {
                return Ok(());
            }
            let len = u32::from_be_bytes([0, rbuf[0], rbuf[1], rbuf[2]]) as usize;
            if rbuf.len() < 9 + len {
                return Ok(());
            }
            let (ty, flags) = (rbuf[3], rbuf[4]);
            let id = u32::from_be_bytes([rbuf[5], rbuf[6], rbuf[7], rbuf[8]]) & 0x7fff_ffff;
            let frame = rbuf.split_to(9 + len);
            let p = &frame[9..];
            if self.continuing.is_some() && ty != CONTINUATION {
                return Err(());
            }
            match ty {
                DATA => {
                    self.recv_unacked += p.len() as u32;
                    let data = unpad(flags, p).map_err(|_| ())?;
                    if let Some(r) = self.reqs.get_mut(&id)
                        && r.grpc
                    {
                        r.data.extend_from_slice(data);
                    }
                    if self.recv_unacked >= RECV_WINDOW / 2 {
                        frame_header(&mut self.wbuf, 4, WINDOW_UPDATE, 0, 0);
                        self.wbuf
                            .extend_from_slice(&self.recv_unacked.to_be_bytes());
                        self.recv_unacked = 0;
                    }
                    if flags & END_STREAM != 0 {
                        self.respond(id);
                    }
                }
                HEADERS => {
                    let mut h = unpad(flags, p).map_err(|_| ())?;
                    if flags & PRIORITY_FLAG != 0 {
                        h = h.get(5..).ok_or(())?;
                    }
                    if flags & END_HEADERS != 0 {
                        self.on_headers(id, h, flags & END_STREAM != 0)?;
                    } else {
                        self.continuing = Some((id, h.to_vec(), flags & END_STREAM != 0));
                    }
                }
                CONTINUATION => {
                    let (cid, mut block, end) = self.continuing.take().ok_or(())?;
                    if cid != id {
                        return Err(());
                    }
                    block.extend_from_slice(p);
                    if flags & END_HEADERS != 0 {
                        self.on_headers(id, &block, end)?;
                    } else {
                        self.continuing = Some((cid, block, end));
                    }
                }
                RST_STREAM => {
                    self.reqs.remove(&id);
                    self.send_windows.remove(&id);
                    self.pending.retain(|q| q.id != id);
                }
                SETTINGS if flags & ACK == 0 => {
                    if !p.len().is_multiple_of(6) {
                        return Err(());
                    }
                    for e in p.chunks_exact(6) {
                        let val = u32::from_be_bytes([e[2], e[3], e[4], e[5]]);
                        match u16::from_be_bytes([e[0], e[1]]) {
                            4 => {
                                let delta = val as i64 - self.peer_initial_window;
                                self.peer_initial_window = val as i64;
                                for w in self.send_windows.values_mut() {
                                    *w += delta;
                                }
                            }
                            5 => self.peer_max_frame = val as usize,
                            _ => {}
                        }
                    }
                    frame_header(&mut self.wbuf, 0, SETTINGS, ACK, 0);
                    self.send_pending();
                }
                PING if flags & ACK == 0 && p.len() == 8 => {
                    frame_header(&mut self.wbuf, 8, PING, ACK, 0);
                    self.wbuf.extend_from_slice(p);
                }
                WINDOW_UPDATE => {
                    let inc = p.get(..4).map_or(0, |b| {
                        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
                    });
                    if id == 0 {
                        self.conn_send_window += inc as i64;
                    } else if let Some(w) = self.send_windows.get_mut(&id) {
                        *w += inc as i64;
                    }
                    self.send_pending();
                }
                _ => {} // PRIORITY, GOAWAY (the peer closes), unknown
            }
        }
    }

    fn on_headers(&mut self, id: u32, block: &[u8], end: bool) -> Result<(), ()> {
        let mut path_ok = false;
        let mut ct_ok = false;
        self.hpack
            .decode(block, |n, v| {
                if n == b":path" {
                    path_ok = v == GRPC_PATH.as_bytes();
                } else if n == b"content-type" {
                    ct_ok = v.starts_with(b"application/grpc");
                }
            })
            .map_err(|_| ())?;
        if self.reqs.contains_key(&id) {
            // trailers of a request
            if end {
                self.respond(id);
            }
            return Ok(());
        }
        self.reqs.insert(
            id,
            Req {
                grpc: path_ok && ct_ok,
                data: Vec::new(),
            },
        );
        self.send_windows.insert(id, self.peer_initial_window);
        if end {
            self.respond(id);
        }
        Ok(())
    }

    fn respond(&mut self, id: u32) {
        let Some(req) = self.reqs.remove(&id) else {
            return;
        };
        let b = blocks(self.body.len());
        if !req.grpc {
            frame_header(&mut self.wbuf, b.plain.len(), HEADERS, END_HEADERS, id);
            self.wbuf.extend_from_slice(&b.plain);
            self.pending.push_back(Pending {
                id,
                data: self.body.clone(),
                trailers: None,
            });
        } else {
            let d = &req.data;
            let ok = d.len() >= 5
                && d[0] == 0
                && u32::from_be_bytes([d[1], d[2], d[3], d[4]]) as usize + 5 == d.len();
            frame_header(&mut self.wbuf, b.grpc.len(), HEADERS, END_HEADERS, id);
            self.wbuf.extend_from_slice(&b.grpc);
            let (data, trailers) = if ok {
                (Bytes::from(req.data), &b.trailers_ok)
            } else {
                (Bytes::new(), &b.trailers_err)
            };
            self.pending.push_back(Pending {
                id,
                data,
                trailers: Some(trailers.as_slice()),
            });
        }
        self.send_pending();
    }

    /// Sends queued response data as far as the flow-control windows allow.
    fn send_pending(&mut self) {
        while let Some(mut q) = self.pending.pop_front() {
            let mut blocked = false;
            while !q.data.is_empty() {
                let w = self.send_windows.get(&q.id).copied().unwrap_or(0);
                let n = (q.data.len() as i64)
                    .min(w)
                    .min(self.conn_send_window)
                    .min(self.peer_max_frame as i64);
                if n <= 0 {
                    blocked = true;
                    break;
                }
                let chunk = q.data.split_to(n as usize);
                let last = q.data.is_empty() && q.trailers.is_none();
                frame_header(
                    &mut self.wbuf,
                    chunk.len(),
                    DATA,
                    if last { END_STREAM } else { 0 },
                    q.id,
                );
                self.wbuf.extend_from_slice(&chunk);
                self.conn_send_window -= n;
                if let Some(w) = self.send_windows.get_mut(&q.id) {
                    *w -= n;
                }
            }
            if blocked {
                self.pending.push_front(q);
                return;
            }
            match q.trailers {
                Some(t) => {
                    frame_header(
                        &mut self.wbuf,
                        t.len(),
                        HEADERS,
                        END_HEADERS | END_STREAM,
                        q.id,
                    );
                    self.wbuf.extend_from_slice(t);
                }
                None if self.body.is_empty() => {
                    frame_header(&mut self.wbuf, 0, DATA, END_STREAM, q.id);
                }
                None => {}
            }
            self.send_windows.remove(&q.id);
        }
    }
}
