//! Open-loop and closed-loop drivers.
//!
//! Each worker thread runs a current-thread Tokio runtime with a LocalSet and
//! owns the connections whose index is congruent to its thread number.
//!
//! Open loop: request n (n = 0, 1, 2, ...) is intended at `start + n / rate`
//! and goes to connection `n mod C`, so every connection has its own fixed
//! schedule (rate / C). HTTP/1.1 carries one request at a time: when a
//! connection is still busy at a request's intended time, the request waits,
//! and that wait is part of its latency (coordinated-omission correction, as
//! in wrk2). h2c/gRPC multiplex: every request is sent at its intended time
//! on its own stream, whatever is outstanding.
//!
//! The schedule is kept by one timer thread (nanosleep with the timer slack
//! lowered to 1 ns; Tokio's own timers have 1 ms granularity), which hands
//! each request's intended time to its connection's task over a channel.
//!
//! Latency charged to the target is
//!   (completion - actual send) + max(0, connection free - intended),
//! which equals completion - intended for a load generator with a perfect
//! timer, but does not charge the target for our own wake-up lateness. The
//! raw completion - intended figure and the send lag are reported too.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::LocalSet;
use tokio::time::{sleep, sleep_until, timeout};

use crate::h1::H1Conn;
use crate::h2::{self, H2Template};
use crate::stats::Stats;
use crate::{ErrKind, Proto};

pub struct Plan {
    pub proto: Proto,
    pub addr: SocketAddr,
    /// Open loop at this total rate (req/s) when Some, else closed loop.
    pub rate: Option<f64>,
    pub connections: usize,
    pub streams: usize,
    pub threads: usize,
    pub start: Instant,
    pub measure_start: Instant,
    pub end: Instant,
    pub timeout: Duration,
    pub expect_bytes: Option<u64>,
    pub h1_request: Bytes,
    pub h2: H2Template,
}

impl Plan {
    fn check(&self, status: u16, body: u64) -> Result<u64, ErrKind> {
        if !(200..300).contains(&status) {
            return Err(ErrKind::Status(status));
        }
        let want = if self.proto == Proto::Grpc {
            Some(self.h2.grpc_msg_len)
        } else {
            self.expect_bytes
        };
        match want {
            Some(w) if w != body => Err(ErrKind::BodySize),
            _ => Ok(body),
        }
    }
}

type Shared = Rc<RefCell<Stats>>;

type Ticks = UnboundedReceiver<Instant>;

pub fn run(plan: Arc<Plan>) -> Stats {
    // open loop: one channel of intended send times per connection, fed by the timer thread
    let mut ticks: Vec<Option<Ticks>> = Vec::new();
    let mut timer = None;
    if let Some(rate) = plan.rate {
        let (txs, rxs): (Vec<_>, Vec<_>) =
            (0..plan.connections).map(|_| unbounded_channel()).unzip();
        ticks = rxs.into_iter().map(Some).collect();
        let plan = plan.clone();
        timer = Some(
            std::thread::Builder::new()
                .name("loadgen-timer".into())
                .spawn(move || schedule(&plan, rate, txs))
                .expect("spawn timer thread"),
        );
    }
    let ticks = Arc::new(Mutex::new(ticks));
    let handles: Vec<_> = (0..plan.threads)
        .map(|t| {
            let (plan, ticks) = (plan.clone(), ticks.clone());
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || worker(plan, t, &ticks))
                .expect("spawn worker thread")
        })
        .collect();
    let mut total = Stats::new();
    for h in handles {
        if let Ok(s) = h.join() {
            total.merge(&s);
        }
    }
    if let Some(t) = timer {
        let _ = t.join();
    }
    total
}

/// The open-loop clock: request n is due at start + n / rate on connection n mod C.
fn schedule(plan: &Plan, rate: f64, txs: Vec<UnboundedSender<Instant>>) {
    // precise sleeps: the default 50 us timer slack would delay every send
    lower_timer_slack("loadgen-timer");
    let c = txs.len() as u64;
    for n in 0u64.. {
        let intended = plan.start + Duration::from_secs_f64(n as f64 / rate);
        if intended >= plan.end {
            break;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let _ = txs[(n % c) as usize].send(intended);
    }
}

/// Sets the timer slack of our thread named `name` to 1 ns, through procfs
/// (`/proc/TID/timerslack_ns`; the thread is found by its name).
fn lower_timer_slack(name: &str) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let tid = t.file_name();
            let _ = std::fs::write(
                format!("/proc/{}/timerslack_ns", tid.to_string_lossy()),
                "1",
            );
        }
    }
}

fn worker(plan: Arc<Plan>, t: usize, ticks: &Mutex<Vec<Option<Ticks>>>) -> Stats {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build tokio runtime");
    let stats: Shared = Rc::new(RefCell::new(Stats::new()));
    let local = LocalSet::new();
    local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for g in (t..plan.connections).step_by(plan.threads) {
            let rx = ticks
                .lock()
                .ok()
                .and_then(|mut v| v.get_mut(g).and_then(Option::take));
            let (plan, stats) = (plan.clone(), stats.clone());
            tasks.push(tokio::task::spawn_local(async move {
                match (plan.proto, rx) {
                    (Proto::H1, Some(rx)) => h1_open(&plan, &stats, rx).await,
                    (Proto::H1, None) => h1_closed(&plan, &stats).await,
                    (_, rx) => h2_conn(&plan, &stats, rx).await,
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    stats.replace(Stats::new())
}

fn measuring(plan: &Plan, t: Instant) -> bool {
    t >= plan.measure_start && t < plan.end
}

async fn h1_connect(plan: &Plan) -> Result<H1Conn, ErrKind> {
    match timeout(plan.timeout, H1Conn::connect(plan.addr)).await {
        Ok(Ok(c)) => Ok(c),
        _ => Err(ErrKind::Connect),
    }
}

/// One request on an open connection: its verdict (the checked body length,
/// or why it failed) and whether the connection may be reused. A complete
/// response keeps the connection whatever its status or size: a 503 is an
/// answer, not a broken connection, and reconnecting after each one would
/// turn a failing upstream into a connection storm of our own. Only an I/O
/// error, a timeout or `Connection: close` ends it.
async fn h1_exchange(plan: &Plan, c: &mut H1Conn) -> (Result<u64, ErrKind>, bool) {
    match timeout(plan.timeout, c.request(&plan.h1_request)).await {
        Ok(Ok(r)) => (plan.check(r.status, r.body_len), !r.close),
        Ok(Err(e)) => (Err(e), false),
        Err(_) => (Err(ErrKind::Timeout), false),
    }
}

async fn h1_open(plan: &Plan, stats: &Shared, mut ticks: Ticks) {
    let mut conn: Option<H1Conn> = None;
    if Instant::now() < plan.start {
        conn = h1_connect(plan).await.ok();
    }
    let mut free_at = Instant::now();
    while let Some(intended) = ticks.recv().await {
        let sent = Instant::now();
        let record = measuring(plan, intended);
        if sent.duration_since(intended) > plan.timeout {
            // queued behind a stuck connection longer than the timeout: give up on it
            if record {
                stats.borrow_mut().error(&ErrKind::Timeout);
            }
            continue;
        }
        if conn.is_none() {
            match h1_connect(plan).await {
                Ok(c) => {
                    conn = Some(c);
                    free_at = Instant::now();
                }
                Err(e) => {
                    if record {
                        stats.borrow_mut().error(&e);
                    }
                    sleep(Duration::from_millis(10)).await;
                    free_at = Instant::now();
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if record {
            stats.borrow_mut().sent += 1;
        }
        let (result, keep) = h1_exchange(plan, c).await;
        let done = Instant::now();
        if !keep {
            conn = None;
        }
        if record {
            let mut s = stats.borrow_mut();
            match result {
                Ok(body) => {
                    let queued = free_at.saturating_duration_since(intended);
                    s.ok(done.duration_since(sent) + queued, body);
                    s.open_extra(
                        done.duration_since(intended),
                        sent.saturating_duration_since(intended.max(free_at)),
                    );
                }
                Err(e) => s.error(&e),
            }
        }
        free_at = done;
    }
}

async fn h1_closed(plan: &Plan, stats: &Shared) {
    let mut conn: Option<H1Conn> = None;
    if Instant::now() < plan.start {
        conn = h1_connect(plan).await.ok();
        sleep_until(plan.start.into()).await;
    }
    loop {
        let sent = Instant::now();
        if sent >= plan.end {
            break;
        }
        let record = measuring(plan, sent);
        if conn.is_none() {
            match h1_connect(plan).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    if record {
                        stats.borrow_mut().error(&e);
                    }
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if record {
            stats.borrow_mut().sent += 1;
        }
        let (result, keep) = h1_exchange(plan, c).await;
        let done = Instant::now();
        if !keep {
            conn = None;
        }
        if record {
            let mut s = stats.borrow_mut();
            match result {
                Ok(body) => s.ok(done.duration_since(sent), body),
                Err(e) => s.error(&e),
            }
        }
    }
}

/// What an h2 request carries through its connection.
struct Tag {
    /// When it was due (open loop; closed loop: when it went out).
    intended: Instant,
    /// Where its latency counts from: when this task received it from the
    /// timer (after the timer's own lateness) if the connection was up when it
    /// was due, else when it was due (a reconnect is the target's doing).
    /// Waiting for a stream slot counts either way.
    charged_from: Instant,
    /// When this task received it (open loop).
    received: Instant,
}

/// One h2c/gRPC connection, driven by this one task: in open loop, sends each
/// tick's request on a new stream at once (multiplexed); in closed loop, keeps
/// `--streams` requests in flight. Reconnects when the connection is lost.
async fn h2_conn(plan: &Plan, stats: &Shared, mut ticks: Option<Ticks>) {
    let open = ticks.is_some();
    let per_conn = if open { 0 } else { plan.streams.max(1) };
    let hard_stop = plan.end + plan.timeout + Duration::from_secs(1);
    let mut done: Vec<h2::Done<Tag>> = Vec::new();
    // open loop: requests due while the connection was down or at its stream limit
    let mut waiting: VecDeque<(Instant, Instant)> = VecDeque::new();
    let mut first = true;
    'connection: loop {
        let now = Instant::now();
        let ticks_done = ticks.is_none() && open;
        if now >= hard_stop || (!open && now >= plan.end) || (ticks_done && waiting.is_empty()) {
            break;
        }
        let mut conn: h2::Conn<Tag> =
            match timeout(plan.timeout, h2::Conn::connect(plan.addr)).await {
                Ok(Ok(c)) => c,
                r => {
                    let e = match r {
                        Ok(Err(e)) => e,
                        _ => ErrKind::Connect,
                    };
                    if let Some(rx) = ticks.as_mut() {
                        // open loop: the requests due by now fail, one error each
                        loop {
                            match rx.try_recv() {
                                Ok(intended) => waiting.push_back((intended, Instant::now())),
                                Err(TryRecvError::Empty) => break,
                                Err(TryRecvError::Disconnected) => {
                                    ticks = None;
                                    break;
                                }
                            }
                        }
                        let mut s = stats.borrow_mut();
                        for (intended, _) in waiting.drain(..) {
                            if measuring(plan, intended) {
                                s.error(&e);
                            }
                        }
                    } else if measuring(plan, Instant::now()) {
                        stats.borrow_mut().error(&e);
                    }
                    sleep(Duration::from_millis(10)).await;
                    continue 'connection;
                }
            };
        if first {
            first = false;
            if Instant::now() < plan.start && !open {
                sleep_until(plan.start.into()).await;
            }
        }
        let ready_at = Instant::now();
        loop {
            let now = Instant::now();
            // start what we can
            if open {
                while conn.can_start() {
                    let Some((intended, received)) = waiting.pop_front() else {
                        break;
                    };
                    let charged_from = if intended >= ready_at {
                        received
                    } else {
                        intended
                    };
                    if measuring(plan, intended) {
                        stats.borrow_mut().sent += 1;
                    }
                    conn.start(
                        &plan.h2,
                        Tag {
                            intended,
                            charged_from,
                            received,
                        },
                        now,
                    );
                }
            } else if now < plan.end {
                while conn.can_start() && conn.in_flight() < per_conn {
                    if measuring(plan, now) {
                        stats.borrow_mut().sent += 1;
                    }
                    conn.start(
                        &plan.h2,
                        Tag {
                            intended: now,
                            charged_from: now,
                            received: now,
                        },
                        now,
                    );
                }
            }
            if conn.flush().await.is_err() {
                conn.fail_all(ErrKind::Io, &mut done);
                record_h2(plan, stats, &mut done, open);
                continue 'connection;
            }
            let now = Instant::now();
            let idle = conn.in_flight() == 0;
            if idle
                && (now >= hard_stop
                    || (!open && now >= plan.end)
                    || (ticks.is_none() && waiting.is_empty()))
            {
                break 'connection;
            }
            if idle && conn.retiring() {
                continue 'connection;
            }
            let deadline = conn
                .oldest()
                .map(|t| t + plan.timeout)
                .unwrap_or(hard_stop)
                .min(hard_stop);
            let (rd, rbuf) = conn.reader();
            tokio::select! {
                biased;
                t = async { ticks.as_mut()?.recv().await }, if ticks.is_some() => match t {
                    Some(intended) => waiting.push_back((intended, Instant::now())),
                    None => ticks = None,
                },
                r = h2::Conn::<Tag>::read(rd, rbuf) => {
                    let result = match r {
                        Ok(0) => Err(ErrKind::Closed),
                        Ok(_) => conn.process(&plan.h2, &mut done),
                        Err(_) => Err(ErrKind::Io),
                    };
                    if let Err(e) = result {
                        conn.fail_all(e, &mut done);
                        record_h2(plan, stats, &mut done, open);
                        continue 'connection;
                    }
                }
                _ = sleep_until(deadline.into()) => {
                    if Instant::now() >= hard_stop {
                        conn.fail_all(ErrKind::Timeout, &mut done);
                        record_h2(plan, stats, &mut done, open);
                        break 'connection;
                    }
                    conn.expire(Instant::now() - plan.timeout, &mut done);
                }
            }
            record_h2(plan, stats, &mut done, open);
        }
    }
    // whatever could not be sent before the end
    let mut s = stats.borrow_mut();
    for (intended, _) in waiting {
        if measuring(plan, intended) {
            s.error(&ErrKind::Timeout);
        }
    }
}

/// Records finished h2 requests (see `Tag` for where latency counts from).
fn record_h2(plan: &Plan, stats: &Shared, done: &mut Vec<h2::Done<Tag>>, open: bool) {
    if done.is_empty() {
        return;
    }
    let now = Instant::now();
    let mut s = stats.borrow_mut();
    for d in done.drain(..) {
        let Tag {
            intended,
            charged_from,
            received,
        } = d.tag;
        if !measuring(plan, intended) {
            continue;
        }
        match d.result.and_then(|r| plan.check(r.status, r.body_len)) {
            Ok(body) => {
                s.ok(now.duration_since(charged_from), body);
                if open {
                    s.open_extra(
                        now.duration_since(intended),
                        received.saturating_duration_since(intended),
                    );
                }
            }
            Err(e) => s.error(&e),
        }
    }
}
