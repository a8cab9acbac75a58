//! The ADS service: `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources` (incremental), served with responses framed
//! by `framed.rs`. One task per stream reads
//! requests and debounced generations and feeds them to the stream's state
//! machine ([`SotwStream`] or [`DeltaStream`]); the state machine decides
//! what to send.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tonic::transport::server::TcpIncoming;
use tracing::Instrument;

use crate::debounce;
use crate::delta::{DeltaResponse, DeltaStream};
use crate::framed::{IntoFrames, Requests};
use crate::metrics::{Mode, XdsMetrics};
use crate::protocol::{Event, Nack, Output, ProtocolError, TypeStatus};
use crate::resource::{Resources, Snapshot, TypeUrl};
use crate::snapshots::Snapshots;
use crate::sotw::{SotwResponse, SotwStream};

/// Tunables of the server.
#[derive(Debug, Clone)]
pub struct XdsOptions {
    /// Quiet period before a new generation is pushed (default 100 ms).
    pub debounce: Duration,
    /// Longest a generation waits while changes keep coming (default 300
    /// ms). The control plane already makes at most one registry generation
    /// per 100 ms, so under steady churn the quiet period never comes and
    /// this is the push interval: at 1 s it was most of the churn benchmark's
    /// join latency (bench/SCALE.md).
    pub debounce_max: Duration,
    /// Responses queued per stream before the stream's task waits for the
    /// client to read (default 16; with one pending push per type there
    /// are rarely more than a handful).
    pub response_buffer: usize,
    /// HTTP/2 pings to notice proxies that vanished without closing
    /// (default every 30 s, dead after 20 s without an answer: gRPC's
    /// default timeout. At 10 s a proxy busy applying a large config, or a
    /// control plane busy with a connect storm, was taken for dead and its
    /// stream cut, and the reconnect then cost a full push; bench/SCALE.md).
    pub keepalive_interval: Option<Duration>,
    /// See `keepalive_interval`.
    pub keepalive_timeout: Duration,
    /// Shortest time between two pushes of new generations on one stream:
    /// the larger of this and `push_interval_per_stream` times the open
    /// streams (default 0). A generation that comes sooner is pushed when
    /// the interval is over, together with any that came meanwhile.
    /// Answers to requests (a first request, a new subscription, the ACK
    /// that lets a pending push go) are not delayed.
    pub min_push_interval: Duration,
    /// Added to the interval per open stream (default 100 µs: 1 s at
    /// 10,000 streams, 10 ms at 100). Without it every stream takes every
    /// generation it can, so under steady churn pushes keep the CPUs busy
    /// and every step of every stream, a new proxy's handshake too, waits
    /// in a full run queue: at 10,000 proxies on 2 CPUs a join took 3.6-4.6
    /// s to reach every proxy at p99, 2.4 s with 1 s between pushes
    /// (bench/SCALE.md). A push costs the same however many changes it
    /// carries, so this bounds the control plane's push work at ~10,000
    /// pushes a second whatever the mesh's size.
    pub push_interval_per_stream: Duration,
}

impl Default for XdsOptions {
    fn default() -> Self {
        XdsOptions {
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_millis(300),
            response_buffer: 16,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(20),
            min_push_interval: Duration::ZERO,
            push_interval_per_stream: Duration::from_micros(100),
        }
    }
}

/// A bearer token a stream presented (`authorization: Bearer <token>` in
/// its request metadata; Envoy sends it from `grpc_service.initial_metadata`).
/// A secret: its Debug output is redacted, so a logged [`Connection`] never
/// shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Bearer(String);

impl Bearer {
    /// The token of an `authorization` header value, if it is `Bearer <token>`.
    pub fn from_header(value: &str) -> Option<Bearer> {
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
            .then(|| Bearer(token.to_owned()))
    }

    /// The token itself: for verifying it, never for logging.
    pub fn token(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

/// One ADS stream: who is on it.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Unique per server process; a reconnecting proxy gets a new id.
    pub id: u64,
    /// State of the world or delta.
    pub mode: Mode,
    /// The node from the stream's first request (id, cluster, metadata).
    pub node: Node,
    /// The peer's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// When the first request arrived.
    pub connected_at: SystemTime,
    /// The stream's bearer token, if it sent one; the server does not check
    /// it (the hooks and snapshots decide what it grants).
    pub bearer: Option<Bearer>,
}

/// A stream and the state of each of its types.
#[derive(Debug, Clone)]
pub struct ConnectionStatus {
    /// Who is on the stream.
    pub connection: Connection,
    /// Per type URL: subscription, versions sent and ACKed, last NACK.
    pub types: BTreeMap<TypeUrl, TypeStatus>,
    /// The snapshot the stream serves now, read with `types` (one lock):
    /// a control plane compares it with the one it gave the node to tell
    /// whether `types` already reflect that one (its responses are pending
    /// from the same call that took it).
    pub snapshot: Arc<Snapshot>,
}

/// Callbacks into the control plane. Called on the stream's task: return
/// quickly (hand work to a channel if it is slow).
pub trait XdsHooks: Send + Sync + 'static {
    /// A stream sent its first request (before its first snapshot is
    /// computed, so a registry can register the workload from the node's
    /// metadata and have it in that snapshot).
    fn on_connect(&self, _conn: &Connection) {}
    /// A stream ended (client gone, error, or server shutdown). Another
    /// stream of the same node may already be connected: key registrations
    /// by [`Connection::id`], not only by node id.
    fn on_disconnect(&self, _conn: &Connection) {}
    /// A proxy rejected a response. It keeps running its previous config.
    fn on_nack(&self, _conn: &Connection, _nack: &Nack) {}
}

/// [`XdsHooks`] that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;
impl XdsHooks for NoHooks {}

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The gRPC transport failed (e.g. accepting connections).
    #[error("xDS server transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The ADS server. Cheap to clone; clones share streams and metrics.
#[derive(Clone)]
pub struct XdsServer {
    inner: Arc<Inner>,
}

struct Inner {
    snapshots: Arc<dyn Snapshots>,
    /// Debounced generations.
    generations: watch::Receiver<u64>,
    hooks: Arc<dyn XdsHooks>,
    metrics: XdsMetrics,
    options: XdsOptions,
    next_id: AtomicU64,
    streams: Mutex<HashMap<u64, Arc<dyn StreamView>>>,
    /// How many entries `streams` has, read without its lock.
    open: AtomicU64,
    /// Set when serving stops: streams end so graceful shutdown can finish
    /// (ADS streams never end on their own).
    closing: watch::Sender<bool>,
}

/// Builds an [`XdsServer`].
pub struct XdsServerBuilder {
    snapshots: Arc<dyn Snapshots>,
    options: XdsOptions,
    hooks: Arc<dyn XdsHooks>,
    metrics: XdsMetrics,
}

impl XdsServerBuilder {
    /// Replaces the default [`XdsOptions`].
    pub fn options(mut self, options: XdsOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the callbacks (default: [`NoHooks`]).
    pub fn hooks(mut self, hooks: Arc<dyn XdsHooks>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Uses these counters (register them first to expose them).
    pub fn metrics(mut self, metrics: XdsMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Starts the debouncing task and returns the server.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn build(self) -> XdsServer {
        let source = self.snapshots.generations();
        let (tx, rx) = watch::channel(*source.borrow());
        tokio::spawn(debounce::run(
            source,
            tx,
            self.options.debounce,
            self.options.debounce_max,
        ));
        XdsServer {
            inner: Arc::new(Inner {
                snapshots: self.snapshots,
                generations: rx,
                hooks: self.hooks,
                metrics: self.metrics,
                options: self.options,
                next_id: AtomicU64::new(1),
                open: AtomicU64::new(0),
                streams: Mutex::new(HashMap::new()),
                closing: watch::Sender::new(false),
            }),
        }
    }
}

impl XdsServer {
    /// A builder serving what `snapshots` says.
    pub fn builder(snapshots: Arc<dyn Snapshots>) -> XdsServerBuilder {
        XdsServerBuilder {
            snapshots,
            options: XdsOptions::default(),
            hooks: Arc::new(NoHooks),
            metrics: XdsMetrics::new(),
        }
    }

    /// Serves ADS on `listener` until `shutdown` completes, then ends every
    /// stream and returns.
    ///
    /// # Errors
    /// [`XdsError::Transport`] if the transport fails.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let this = self.clone();
        let signal = async move {
            shutdown.await;
            this.close_streams();
        };
        self.transport()
            .add_service(crate::framed::FramedAds {
                server: self.clone(),
            })
            .serve_with_incoming_shutdown(incoming, signal)
            .await?;
        Ok(())
    }

    /// [`XdsServer::serve`] with one more gRPC service on the same listener
    /// (the control plane's CA: proxies reach one address for both).
    ///
    /// # Errors
    /// [`XdsError::Transport`] if the transport fails.
    pub async fn serve_with<S>(
        &self,
        listener: TcpListener,
        extra: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError>
    where
        S: tonic::codegen::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let this = self.clone();
        let signal = async move {
            shutdown.await;
            this.close_streams();
        };
        self.transport()
            .add_service(crate::framed::FramedAds {
                server: self.clone(),
            })
            .add_service(extra)
            .serve_with_incoming_shutdown(incoming, signal)
            .await?;
        Ok(())
    }

    fn transport(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(self.inner.options.keepalive_interval)
            .http2_keepalive_timeout(Some(self.inner.options.keepalive_timeout))
    }

    /// Ends every stream (now and any that opens later), as [`XdsServer::serve`]
    /// does on shutdown. For a [`XdsServer::service`] mounted in another
    /// tonic server: call it before that server's graceful shutdown, which
    /// would otherwise wait for ADS streams that never end by themselves.
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Every connected stream and its per-type state.
    pub fn connections(&self) -> Vec<ConnectionStatus> {
        let streams: Vec<_> = self.inner.lock_streams().values().cloned().collect();
        let mut all: Vec<_> = streams.iter().map(|s| s.status()).collect();
        all.sort_by_key(|s| s.connection.id);
        all
    }

    /// One open stream's status and, per type, the resources of the last
    /// response it was sent (what its proxy ACKed, or is about to answer):
    /// for `trellis proxy-config`. None if the stream is gone.
    pub fn sent(
        &self,
        connection_id: u64,
    ) -> Option<(ConnectionStatus, BTreeMap<TypeUrl, Resources>)> {
        let stream = self.inner.lock_streams().get(&connection_id).cloned()?;
        Some(stream.sent())
    }

    /// The server's counters.
    pub fn metrics(&self) -> &XdsMetrics {
        &self.inner.metrics
    }
}

impl Inner {
    /// The shortest time between two pushes on one stream now.
    fn push_interval(&self) -> Duration {
        let open = u32::try_from(self.open.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        self.options
            .min_push_interval
            .max(self.options.push_interval_per_stream.saturating_mul(open))
    }

    fn lock_streams(&self) -> MutexGuard<'_, HashMap<u64, Arc<dyn StreamView>>> {
        // Plain inserts and removes: consistent even after a panic.
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl XdsServer {
    pub(crate) fn start_sotw(
        &self,
        requests: Requests<DiscoveryRequest>,
        peer: Option<SocketAddr>,
        bearer: Option<Bearer>,
    ) -> mpsc::Receiver<Result<SotwResponse, Status>> {
        self.spawn::<SotwStream>(requests, peer, bearer)
    }

    pub(crate) fn start_delta(
        &self,
        requests: Requests<DeltaDiscoveryRequest>,
        peer: Option<SocketAddr>,
        bearer: Option<Bearer>,
    ) -> mpsc::Receiver<Result<DeltaResponse, Status>> {
        self.spawn::<DeltaStream>(requests, peer, bearer)
    }

    /// Starts a stream's task; its responses come out of the receiver.
    fn spawn<P: Protocol>(
        &self,
        requests: Requests<P::Req>,
        peer: Option<SocketAddr>,
        bearer: Option<Bearer>,
    ) -> mpsc::Receiver<Result<P::Resp, Status>> {
        let (tx, rx) = mpsc::channel(self.inner.options.response_buffer.max(1));
        let span = tracing::debug_span!("xds", mode = P::MODE.as_str(), peer = ?peer);
        tokio::spawn(drive::<P>(self.inner.clone(), requests, tx, peer, bearer).instrument(span));
        rx
    }
}

/// What the driver needs of a state machine; implemented by both variants.
trait Protocol: Send + Sized + 'static {
    type Req: prost::Message + Default + Send + Sync + 'static;
    type Resp: IntoFrames;
    const MODE: Mode;
    fn new(snapshot: Arc<Snapshot>) -> Self;
    fn node(req: &Self::Req) -> Option<&Node>;
    fn type_of(resp: &Self::Resp) -> &str;
    fn on_request(&mut self, req: &Self::Req) -> Result<Output<Self::Resp>, ProtocolError>;
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Output<Self::Resp>;
    fn status(&self) -> BTreeMap<TypeUrl, TypeStatus>;
    fn sent(&self) -> BTreeMap<TypeUrl, Resources>;
    fn snapshot(&self) -> &Arc<Snapshot>;
    fn awaiting_all(&self) -> bool;
}

impl Protocol for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = SotwResponse;
    const MODE: Mode = Mode::Sotw;
    fn new(snapshot: Arc<Snapshot>) -> Self {
        SotwStream::new(snapshot)
    }
    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_of(resp: &SotwResponse) -> &str {
        &resp.type_url
    }
    fn on_request(
        &mut self,
        req: &DiscoveryRequest,
    ) -> Result<Output<SotwResponse>, ProtocolError> {
        SotwStream::on_request(self, req)
    }
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Output<SotwResponse> {
        SotwStream::on_snapshot(self, snapshot)
    }
    fn status(&self) -> BTreeMap<TypeUrl, TypeStatus> {
        SotwStream::status(self)
    }
    fn sent(&self) -> BTreeMap<TypeUrl, Resources> {
        SotwStream::sent(self)
    }
    fn snapshot(&self) -> &Arc<Snapshot> {
        SotwStream::snapshot(self)
    }
    fn awaiting_all(&self) -> bool {
        SotwStream::awaiting_all(self)
    }
}

impl Protocol for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaResponse;
    const MODE: Mode = Mode::Delta;
    fn new(snapshot: Arc<Snapshot>) -> Self {
        DeltaStream::new(snapshot)
    }
    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_of(resp: &DeltaResponse) -> &str {
        &resp.type_url
    }
    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
    ) -> Result<Output<DeltaResponse>, ProtocolError> {
        DeltaStream::on_request(self, req)
    }
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Output<DeltaResponse> {
        DeltaStream::on_snapshot(self, snapshot)
    }
    fn status(&self) -> BTreeMap<TypeUrl, TypeStatus> {
        DeltaStream::status(self)
    }
    fn sent(&self) -> BTreeMap<TypeUrl, Resources> {
        DeltaStream::sent(self)
    }
    fn snapshot(&self) -> &Arc<Snapshot> {
        DeltaStream::snapshot(self)
    }
    fn awaiting_all(&self) -> bool {
        DeltaStream::awaiting_all(self)
    }
}

/// A live stream as the registry of streams sees it.
trait StreamView: Send + Sync {
    fn status(&self) -> ConnectionStatus;
    /// The status and, per type, the resources last sent, read together
    /// (one lock), so versions and contents agree.
    fn sent(&self) -> (ConnectionStatus, BTreeMap<TypeUrl, Resources>);
}

struct Entry<P> {
    conn: Connection,
    /// Locked only for one state-machine call at a time (never across an
    /// await), by the stream's task and by [`XdsServer::connections`].
    machine: Mutex<P>,
}

impl<P: Protocol> Entry<P> {
    fn lock(&self) -> MutexGuard<'_, P> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<P: Protocol> StreamView for Entry<P> {
    fn status(&self) -> ConnectionStatus {
        let machine = self.lock();
        ConnectionStatus {
            connection: self.conn.clone(),
            types: machine.status(),
            snapshot: machine.snapshot().clone(),
        }
    }
    fn sent(&self) -> (ConnectionStatus, BTreeMap<TypeUrl, Resources>) {
        let machine = self.lock();
        let status = ConnectionStatus {
            connection: self.conn.clone(),
            types: machine.status(),
            snapshot: machine.snapshot().clone(),
        };
        (status, machine.sent())
    }
}

/// Removes a stream from the registry, however its task ends.
struct Registered<P: Protocol> {
    inner: Arc<Inner>,
    entry: Arc<Entry<P>>,
}

impl<P: Protocol> Drop for Registered<P> {
    fn drop(&mut self) {
        self.inner.lock_streams().remove(&self.entry.conn.id);
        self.inner.open.fetch_sub(1, Ordering::Relaxed);
        self.inner.metrics.stream_closed(P::MODE);
        self.inner.hooks.on_disconnect(&self.entry.conn);
        tracing::debug!(node = %self.entry.conn.node.id, stream = self.entry.conn.id, "xDS stream closed");
    }
}

type Tx<T> = mpsc::Sender<Result<T, Status>>;

/// Runs one stream: first request (node), then requests and generations
/// until the client goes away or the server closes.
async fn drive<P: Protocol>(
    inner: Arc<Inner>,
    mut requests: Requests<P::Req>,
    tx: Tx<P::Resp>,
    peer: Option<SocketAddr>,
    bearer: Option<Bearer>,
) {
    let first = match requests.next().await {
        Some(Ok(req)) => req,
        Some(Err(status)) => {
            tracing::debug!(%status, "xDS stream failed before its first request");
            return;
        }
        None => return,
    };
    let Some(node) = P::node(&first).cloned() else {
        let status = Status::invalid_argument("the first request of an xDS stream must carry node");
        let _ = tx.send(Err(status)).await;
        return;
    };

    let conn = Connection {
        id: inner.next_id.fetch_add(1, Ordering::Relaxed),
        mode: P::MODE,
        node,
        peer,
        connected_at: SystemTime::now(),
        bearer,
    };
    // Watch generations from before the first snapshot is taken, so none
    // made in between is missed.
    let mut generations = inner.generations.clone();
    generations.mark_unchanged();
    let mut closing = inner.closing.subscribe();
    if *closing.borrow_and_update() {
        return;
    }
    inner.hooks.on_connect(&conn);
    let snapshot = inner.snapshots.snapshot(&conn.node);
    let entry = Arc::new(Entry {
        conn,
        machine: Mutex::new(P::new(snapshot)),
    });
    inner
        .lock_streams()
        .insert(entry.conn.id, entry.clone() as Arc<dyn StreamView>);
    inner.open.fetch_add(1, Ordering::Relaxed);
    inner.metrics.stream_opened(P::MODE);
    let _registered = Registered {
        inner: inner.clone(),
        entry: entry.clone(),
    };
    tracing::debug!(node = %entry.conn.node.id, stream = entry.conn.id, "xDS stream opened");

    if !step(&inner, &entry, &tx, |m| m.on_request(&first)).await {
        return;
    }
    let mut source_open = true;
    // A generation came while every type awaited its ACK: nothing could be
    // pushed, so the snapshot is taken when the client next speaks. Under
    // load most streams are in that state, and each skipped snapshot is
    // one less view computed under the control plane's lock.
    let mut deferred = false;
    // Pacing (`min_push_interval`): when the last push of a new generation
    // went out, and whether one waits for the interval to end.
    let mut last_push: Option<tokio::time::Instant> = None;
    let mut paced = false;
    loop {
        let wait_until =
            last_push.map_or_else(tokio::time::Instant::now, |t| t + inner.push_interval());
        tokio::select! {
            msg = requests.next() => match msg {
                Some(Ok(req)) => {
                    if deferred && tokio::time::Instant::now() < wait_until {
                        // The ACK is handled now; the newer generation when
                        // the interval ends.
                        deferred = false;
                        paced = true;
                    }
                    if std::mem::take(&mut deferred) {
                        last_push = Some(tokio::time::Instant::now());
                        // Pushes nothing for types still pending; the ACK
                        // below then pushes its type from this snapshot.
                        if !push_newest(&inner, &entry, &tx, &mut generations).await {
                            return;
                        }
                    }
                    if !step(&inner, &entry, &tx, |m| m.on_request(&req)).await {
                        return;
                    }
                }
                Some(Err(status)) => {
                    tracing::debug!(node = %entry.conn.node.id, %status, "xDS stream ended with an error");
                    return;
                }
                None => return,
            },
            // A paced or deferred stream needs no wake-up per generation: it
            // takes the newest when its interval ends or its client speaks.
            changed = generations.changed(), if source_open && !paced && !deferred => {
                if changed.is_err() {
                    // The source is gone: keep answering requests from the
                    // last snapshot; there will be no newer one.
                    source_open = false;
                    continue;
                }
                if entry.lock().awaiting_all() {
                    deferred = true;
                    continue;
                }
                if tokio::time::Instant::now() < wait_until {
                    paced = true;
                    continue;
                }
                last_push = Some(tokio::time::Instant::now());
                if !push_newest(&inner, &entry, &tx, &mut generations).await {
                    return;
                }
            }
            () = tokio::time::sleep_until(wait_until), if paced => {
                paced = false;
                if entry.lock().awaiting_all() {
                    deferred = true;
                    continue;
                }
                last_push = Some(tokio::time::Instant::now());
                if !push_newest(&inner, &entry, &tx, &mut generations).await {
                    return;
                }
            }
            () = tx.closed() => return,
            // Only ever set to true; the sender lives as long as `inner`.
            _ = closing.changed() => return,
        }
    }
}

/// Takes the node's newest snapshot and pushes what it changes for the
/// stream. Returns false when the stream must end.
async fn push_newest<P: Protocol>(
    inner: &Inner,
    entry: &Entry<P>,
    tx: &Tx<P::Resp>,
    generations: &mut watch::Receiver<u64>,
) -> bool {
    // What it takes covers every generation until now.
    generations.borrow_and_update();
    let snapshot = inner.snapshots.snapshot(&entry.conn.node);
    step(inner, entry, tx, |m| Ok(m.on_snapshot(snapshot))).await
}

/// Runs one state-machine call, records its events and sends its
/// responses. Returns false when the stream must end.
async fn step<P: Protocol>(
    inner: &Inner,
    entry: &Entry<P>,
    tx: &Tx<P::Resp>,
    call: impl FnOnce(&mut P) -> Result<Output<P::Resp>, ProtocolError>,
) -> bool {
    let result = call(&mut entry.lock());
    let out = match result {
        Ok(out) => out,
        Err(err) => {
            tracing::warn!(node = %entry.conn.node.id, %err, "closing xDS stream: protocol error");
            let _ = tx
                .send(Err(Status::invalid_argument(err.to_string())))
                .await;
            return false;
        }
    };
    for event in &out.events {
        match event {
            Event::Ack {
                type_url, version, ..
            } => {
                inner.metrics.ack(P::MODE, type_url);
                tracing::debug!(node = %entry.conn.node.id, type_url, version, "ACK");
            }
            Event::Nack(nack) => {
                inner.metrics.nack(P::MODE, &nack.type_url);
                tracing::warn!(
                    node = %entry.conn.node.id,
                    type_url = nack.type_url,
                    version = nack.rejected_version,
                    message = nack.message,
                    "proxy rejected config (NACK); it keeps its previous config"
                );
                inner.hooks.on_nack(&entry.conn, nack);
            }
            Event::Stale { type_url, .. } => inner.metrics.stale(P::MODE, type_url),
        }
    }
    for resp in out.responses {
        inner.metrics.push(P::MODE, P::type_of(&resp));
        // Waits while the client is not reading: backpressure per stream,
        // on top of the one-pending-push-per-type rule.
        if tx.send(Ok(resp)).await.is_err() {
            return false;
        }
    }
    true
}
