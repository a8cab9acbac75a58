//! The tonic server over real loopback sockets, driven by a scripted gRPC
//! client (envoy-types' generated ADS client): node identity, hooks,
//! debounced pushes, ACK/NACK bookkeeping, cleanup on disconnect, shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value};
use envoy_types::pb::google::rpc;
use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::Streaming;
use tonic::transport::Channel;
use trellis_xds::{
    Connection, MemorySnapshots, Mode, Nack, Resource, Snapshot, XdsHooks, XdsOptions, XdsServer,
    type_url,
};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Recorder {
    lines: Mutex<Vec<String>>,
}

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl XdsHooks for Recorder {
    fn on_connect(&self, conn: &Connection) {
        let workload = conn
            .node
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("workload"))
            .and_then(|v| match &v.kind {
                Some(value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        self.lines.lock().unwrap().push(format!(
            "connect {} {} {workload}",
            conn.node.id,
            conn.mode.as_str()
        ));
    }
    fn on_disconnect(&self, conn: &Connection) {
        self.lines
            .lock()
            .unwrap()
            .push(format!("disconnect {}", conn.node.id));
    }
    fn on_nack(&self, conn: &Connection, nack: &Nack) {
        self.lines
            .lock()
            .unwrap()
            .push(format!("nack {} {}", conn.node.id, nack.message));
    }
}

fn cluster(name: &str, version: &str) -> (String, Resource) {
    (
        name.to_string(),
        Resource::with_version(
            Any {
                type_url: type_url::CLUSTER.into(),
                value: format!("{name}@{version}").into_bytes(),
            },
            version,
        ),
    )
}

fn clusters(list: &[(&str, &str)]) -> Snapshot {
    let mut s = Snapshot::new();
    for (n, v) in list {
        let (name, r) = cluster(n, v);
        s.insert(type_url::CLUSTER, name, r);
    }
    s
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        cluster: "test".into(),
        metadata: Some(Struct {
            fields: [(
                "workload".to_string(),
                Value {
                    kind: Some(value::Kind::StringValue(format!("{id}-workload"))),
                },
            )]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

struct Harness {
    server: XdsServer,
    snapshots: Arc<MemorySnapshots>,
    hooks: Arc<Recorder>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<Result<(), trellis_xds::XdsError>>,
}

async fn start(initial: Snapshot) -> Harness {
    start_with(
        initial,
        XdsOptions {
            debounce: Duration::from_millis(50),
            ..XdsOptions::default()
        },
    )
    .await
}

async fn start_with(initial: Snapshot, options: XdsOptions) -> Harness {
    let snapshots = Arc::new(MemorySnapshots::new(initial));
    let hooks = Arc::new(Recorder::default());
    let server = XdsServer::builder(snapshots.clone())
        .options(options)
        .hooks(hooks.clone())
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let s = server.clone();
    let served = tokio::spawn(async move {
        s.serve(listener, async {
            let _ = stopped.await;
        })
        .await
    });
    Harness {
        server,
        snapshots,
        hooks,
        addr,
        stop: Some(stop),
        served,
    }
}

async fn client(addr: SocketAddr) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the xDS server")
}

fn request_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

/// Opens a SotW stream whose first request is `first`: the sender of the
/// later requests, and the responses.
async fn open_sotw(
    addr: SocketAddr,
    first: DiscoveryRequest,
) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let responses = client(addr)
        .await
        .stream_aggregated_resources(request_stream(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, responses)
}

async fn next<T>(responses: &mut Streaming<T>) -> T {
    tokio::time::timeout(WAIT, responses.next())
        .await
        .expect("a response in time")
        .expect("stream open")
        .expect("not an error")
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn labels(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources
        .iter()
        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
        .collect()
}

fn sotw(node: Option<Node>, version: &str, nonce: &str, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        node,
        type_url: type_url::CLUSTER.into(),
        response_nonce: nonce.into(),
        error_detail: error.map(|m| rpc::Status {
            code: 3,
            message: m.into(),
            details: vec![],
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn sotw_stream_from_connect_to_disconnect() {
    let h = start(clusters(&[("a", "1"), ("b", "1")])).await;
    let (tx, mut responses) = open_sotw(h.addr, sotw(Some(node("n1")), "", "", None)).await;

    // The whole wildcard set, and the node (with its metadata) reached the hooks.
    let r1 = next(&mut responses).await;
    assert_eq!(labels(&r1), ["a@1", "b@1"]);
    assert_eq!(h.hooks.lines(), ["connect n1 sotw n1-workload"]);
    assert_eq!(
        h.snapshots
            .node("n1")
            .and_then(|n| n.metadata)
            .map(|m| m.fields.len()),
        Some(1)
    );
    let conns = h.server.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].connection.node.id, "n1");
    assert!(conns[0].types[type_url::CLUSTER].pending);

    // ACK: the state shows the acknowledged version.
    tx.send(sotw(None, &r1.version_info, &r1.nonce, None))
        .await
        .unwrap();
    eventually("the ACK", || {
        h.server.connections()[0].types[type_url::CLUSTER].acked_version
            == Some(r1.version_info.clone())
    })
    .await;
    assert_eq!(h.server.metrics().acks(Mode::Sotw, type_url::CLUSTER), 1);

    // Three quick changes: one push, after the debounce, with the last one.
    let t0 = Instant::now();
    h.snapshots.set(clusters(&[("a", "2"), ("b", "1")]));
    h.snapshots.set(clusters(&[("a", "3"), ("b", "1")]));
    h.snapshots.set(clusters(&[("a", "4")]));
    let r2 = next(&mut responses).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(50),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(labels(&r2), ["a@4"]);

    // NACK: recorded, reported to the hook, counted; nothing resent.
    tx.send(sotw(
        None,
        &r1.version_info,
        &r2.nonce,
        Some("cluster a: bad"),
    ))
    .await
    .unwrap();
    eventually("the NACK hook", || {
        h.hooks
            .lines()
            .contains(&"nack n1 cluster a: bad".to_string())
    })
    .await;
    let st = h.server.connections()[0].types[type_url::CLUSTER].clone();
    assert_eq!(st.acked_version, Some(r1.version_info.clone()));
    assert_eq!(
        st.last_nack.map(|n| n.message).as_deref(),
        Some("cluster a: bad")
    );
    assert_eq!(h.server.metrics().nacks(Mode::Sotw, type_url::CLUSTER), 1);
    let nothing = tokio::time::timeout(Duration::from_millis(300), responses.next()).await;
    assert!(nothing.is_err(), "the NACKed content must not be resent");

    // The client goes away: its state is dropped and the hook told.
    drop(tx);
    drop(responses);
    eventually("cleanup", || h.server.connections().is_empty()).await;
    eventually("the disconnect hook", || {
        h.hooks.lines().last().map(String::as_str) == Some("disconnect n1")
    })
    .await;
    assert_eq!(h.server.metrics().streams(Mode::Sotw), 0);
}

#[tokio::test]
async fn a_stream_awaiting_its_ack_takes_the_newest_snapshot_when_the_ack_comes() {
    let h = start(clusters(&[("a", "1")])).await;
    let (tx, mut responses) = open_sotw(h.addr, sotw(Some(node("n1")), "", "", None)).await;
    let r1 = next(&mut responses).await;
    assert_eq!(h.snapshots.taken("n1"), 1);

    // Two generations while r1 awaits its answer: the stream could push
    // nothing, so it computes no snapshot for either.
    h.snapshots.set(clusters(&[("a", "2")]));
    eventually("the first generation", || h.snapshots.generation() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.snapshots.set(clusters(&[("a", "3")]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h.snapshots.taken("n1"),
        1,
        "no snapshot while the push is unanswered"
    );

    // The ACK: one snapshot, the newest, in one push.
    tx.send(sotw(None, &r1.version_info, &r1.nonce, None))
        .await
        .unwrap();
    let r2 = next(&mut responses).await;
    assert_eq!(labels(&r2), ["a@3"]);
    assert_eq!(h.snapshots.taken("n1"), 2);
    let nothing = tokio::time::timeout(Duration::from_millis(300), responses.next()).await;
    assert!(nothing.is_err(), "one push for both generations");
}

#[tokio::test]
async fn pushes_of_new_generations_are_paced_per_stream_but_answers_are_not() {
    let pace = Duration::from_millis(600);
    let h = start_with(
        clusters(&[("a", "1")]),
        XdsOptions {
            debounce: Duration::from_millis(20),
            debounce_max: Duration::from_millis(40),
            min_push_interval: pace,
            ..XdsOptions::default()
        },
    )
    .await;
    let t0 = Instant::now();
    let (tx, mut responses) = open_sotw(h.addr, sotw(Some(node("n1")), "", "", None)).await;
    let r1 = next(&mut responses).await;
    assert!(t0.elapsed() < pace, "the first response is not paced");
    tx.send(sotw(None, &r1.version_info, &r1.nonce, None))
        .await
        .unwrap();

    // A new generation right away: it waits for the interval since the
    // last push of a generation... (the first response counts as none, so
    // this one goes at once).
    h.snapshots.set(clusters(&[("a", "2")]));
    let r2 = next(&mut responses).await;
    let pushed = Instant::now();
    assert_eq!(labels(&r2), ["a@2"]);
    tx.send(sotw(None, &r2.version_info, &r2.nonce, None))
        .await
        .unwrap();
    // ...so the next two wait, and go out as one push with the newest.
    h.snapshots.set(clusters(&[("a", "3")]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.snapshots.set(clusters(&[("a", "4")]));
    let r3 = next(&mut responses).await;
    let waited = pushed.elapsed();
    assert_eq!(labels(&r3), ["a@4"], "one push with the newest");
    assert!(
        waited >= pace - Duration::from_millis(50),
        "paced: {waited:?}"
    );

    // A request is answered at once, paced or not: a new subscription on
    // another type while the interval runs.
    let asked = Instant::now();
    tx.send(DiscoveryRequest {
        node: None,
        type_url: type_url::ENDPOINT.into(),
        resource_names: vec!["x".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let r4 = next(&mut responses).await;
    assert_eq!(r4.type_url, type_url::ENDPOINT);
    assert!(asked.elapsed() < pace / 2, "{:?}", asked.elapsed());
}

#[tokio::test]
async fn the_first_request_must_carry_the_node() {
    let h = start(clusters(&[("a", "1")])).await;
    let (_tx, mut responses) = open_sotw(h.addr, sotw(None, "", "", None)).await;
    let err = tokio::time::timeout(WAIT, responses.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node"), "{}", err.message());
    assert!(h.server.connections().is_empty());
}

#[tokio::test]
async fn a_request_without_type_url_ends_the_stream() {
    let h = start(clusters(&[("a", "1")])).await;
    let mut first = sotw(Some(node("n2")), "", "", None);
    first.type_url.clear();
    let (_tx, mut responses) = open_sotw(h.addr, first).await;
    let err = tokio::time::timeout(WAIT, responses.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("type_url"), "{}", err.message());
    eventually("cleanup", || h.server.connections().is_empty()).await;
}

fn delta_labels(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut out: Vec<String> = resp
        .resources
        .iter()
        .map(|r| String::from_utf8_lossy(&r.resource.as_ref().unwrap().value).into_owned())
        .collect();
    out.extend(resp.removed_resources.iter().map(|n| format!("-{n}")));
    out
}

#[tokio::test]
async fn delta_stream_sends_changes_and_removals_only() {
    let h = start(clusters(&[("a", "1"), ("b", "1"), ("c", "1")])).await;
    let mut c = client(h.addr).await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("d1")),
        type_url: type_url::CLUSTER.into(),
        // A reconnecting client that already holds a@1 and b@0.
        initial_resource_versions: [("a".to_string(), "1".to_string()), ("b".into(), "0".into())]
            .into_iter()
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = c
        .delta_aggregated_resources(request_stream(rx))
        .await
        .unwrap()
        .into_inner();
    let r1 = next(&mut responses).await;
    assert_eq!(delta_labels(&r1), ["b@1", "c@1"]);
    assert_eq!(h.hooks.lines(), ["connect d1 delta d1-workload"]);

    tx.send(DeltaDiscoveryRequest {
        type_url: type_url::CLUSTER.into(),
        response_nonce: r1.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    eventually("the ACK", || {
        h.server.connections()[0].types[type_url::CLUSTER].acked_version
            == Some(r1.system_version_info.clone())
    })
    .await;

    h.snapshots.set(clusters(&[("a", "1"), ("c", "2")]));
    let r2 = next(&mut responses).await;
    assert_eq!(delta_labels(&r2), ["c@2", "-b"]);
    assert_eq!(h.server.metrics().pushes(Mode::Delta, type_url::CLUSTER), 2);
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let mut h = start(clusters(&[("a", "1")])).await;
    let (tx, mut responses) = open_sotw(h.addr, sotw(Some(node("n3")), "", "", None)).await;
    next(&mut responses).await;
    h.stop.take().unwrap().send(()).unwrap();
    let served = tokio::time::timeout(WAIT, &mut h.served)
        .await
        .expect("serve returns once streams are closed");
    assert!(served.unwrap().is_ok());
    let end = tokio::time::timeout(WAIT, responses.next()).await.unwrap();
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
    eventually("the disconnect hook", || {
        h.hooks.lines().contains(&"disconnect n3".to_string())
    })
    .await;
    drop(tx);
}
