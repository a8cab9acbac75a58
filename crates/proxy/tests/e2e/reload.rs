//! Hot reload under continuous load: zero failed requests, the new weights
//! in effect within a second of the write, and connections opened before
//! the reloads still serving after them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use trellis_testing::EchoServer;

use crate::support::*;

/// One completed request: when it was sent, on which connection, and who answered.
#[derive(Debug, Clone, Copy)]
struct Sample {
    sent: Instant,
    conn: usize,
    upstream: &'static str,
}

#[derive(Default)]
struct Load {
    stop: AtomicBool,
    samples: Mutex<Vec<Sample>>,
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.failures.fetch_add(1, Ordering::SeqCst);
        self.first_failure.lock().unwrap().get_or_insert(what);
    }

    fn record(&self, sent: Instant, conn: usize, resp: Result<(u16, Option<String>), String>) {
        match resp {
            Ok((200, Some(up))) if up == "v1" || up == "v2" => {
                let upstream = if up == "v1" { "v1" } else { "v2" };
                self.samples.lock().unwrap().push(Sample {
                    sent,
                    conn,
                    upstream,
                });
            }
            Ok((status, up)) => self.fail(format!("conn {conn}: status {status} from {up:?}")),
            Err(e) => self.fail(format!("conn {conn}: {e}")),
        }
    }

    /// Samples sent at or after `t`.
    fn since(&self, t: Instant) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.sent >= t)
            .copied()
            .collect()
    }
}

async fn read<B>(resp: http::Response<B>) -> Result<(u16, Option<String>), String>
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let status = resp.status().as_u16();
    let up = resp
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok((status, up))
}

/// Requests back to back on one HTTP/1.1 keep-alive connection.
async fn h1_client(addr: std::net::SocketAddr, conn: usize, load: Arc<Load>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut tx, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(c);
    while !load.stop.load(Ordering::SeqCst) {
        if let Err(e) = tx.ready().await {
            load.fail(format!("conn {conn}: connection lost: {e}"));
            return;
        }
        let req = http::Request::get("/load")
            .header("host", "reviews:9080")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let sent = Instant::now();
        let resp = match tx.send_request(req).await {
            Ok(r) => read(r).await,
            Err(e) => Err(e.to_string()),
        };
        load.record(sent, conn, resp);
    }
}

/// Requests back to back on `streams` concurrent streams of one h2c connection.
async fn h2_client(addr: std::net::SocketAddr, conn: usize, streams: usize, load: Arc<Load>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (tx, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(c);
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut tx = tx.clone();
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            while !load.stop.load(Ordering::SeqCst) {
                if let Err(e) = tx.ready().await {
                    load.fail(format!("conn {conn}: connection lost: {e}"));
                    return;
                }
                let req = http::Request::get("http://reviews:9080/load")
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let sent = Instant::now();
                let resp = match tx.send_request(req).await {
                    Ok(r) => read(r).await,
                    Err(e) => Err(e.to_string()),
                };
                load.record(sent, conn, resp);
            }
        }));
    }
    for t in tasks {
        t.await.expect("h2 stream task");
    }
}

/// The weights of the first route as the proxy's config dump shows them.
async fn served_weights(proxy: &Proxy) -> Vec<u64> {
    let dump = proxy.config_dump().await;
    dump["config"]["resources"]["virtual_services"][0]["spec"]["http"][0]["route"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|d| d["weight"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_no_request() {
    let v1 = EchoServer::start("v1").await;
    let v2 = EchoServer::start("v2").await;
    let host = "reviews";
    let se = service_entry(
        host,
        HTTP_9080,
        &[
            (v1.addr(), &[("version", "v1")]),
            (v2.addr(), &[("version", "v2")]),
        ],
    );
    let proxy = Proxy::start(&[
        ("se.yaml", se),
        ("dr.yaml", destination_rule(host, &["v1", "v2"], None)),
        ("vs.yaml", split_vs(host, &[("v1", 100), ("v2", 0)])),
    ])
    .await;

    let load = Arc::new(Load::default());
    let mut clients = Vec::new();
    // Connections 0..3: HTTP/1.1; 3 and 4: h2c with two streams each.
    for conn in 0..3 {
        clients.push(tokio::spawn(h1_client(
            proxy.outbound(),
            conn,
            load.clone(),
        )));
    }
    for conn in 3..5 {
        clients.push(tokio::spawn(h2_client(
            proxy.outbound(),
            conn,
            2,
            load.clone(),
        )));
    }
    let connections = 5;
    let started = Instant::now();
    eventually(
        "every connection to serve a request",
        Duration::from_secs(10),
        || async {
            let s = load.since(started);
            (0..connections)
                .all(|c| s.iter().any(|x| x.conn == c))
                .then_some(())
        },
    )
    .await;
    assert!(load.since(started).iter().all(|s| s.upstream == "v1"));

    let mut reload_times = Vec::new();
    for step in 0..6 {
        let (target, weights) = if step % 2 == 0 {
            ("v2", [("v1", 0), ("v2", 100)])
        } else {
            ("v1", [("v1", 100), ("v2", 0)])
        };
        let yaml = split_vs(host, &weights);
        let written = Instant::now();
        if step % 3 == 2 {
            proxy.config.write_in_place("vs.yaml", &yaml);
        } else {
            proxy.config.write("vs.yaml", &yaml);
        }
        let want: Vec<u64> = weights.iter().map(|(_, w)| u64::from(*w)).collect();
        let seen = eventually(
            "the new weights in /config_dump",
            Duration::from_secs(5),
            || async { (served_weights(&proxy).await == want).then(Instant::now) },
        )
        .await;
        let took = seen - written;
        reload_times.push(took);
        assert!(
            took < Duration::from_secs(1),
            "step {step}: the reload took {took:?}"
        );
        // Every request sent after the new config was visible goes to the
        // new target; wait until a fair number has come back.
        let after = eventually(
            "requests after the reload",
            Duration::from_secs(10),
            || async {
                let s = load.since(seen);
                (s.len() >= 40).then_some(s)
            },
        )
        .await;
        let wrong: Vec<_> = after.iter().filter(|s| s.upstream != target).collect();
        assert!(
            wrong.is_empty(),
            "step {step}: {} of {} requests after the reload went to the old subset: {:?}",
            wrong.len(),
            after.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
    let last = Instant::now();
    // Connections opened before the first reload still serve after the last.
    eventually(
        "every connection to serve after the last reload",
        Duration::from_secs(10),
        || async {
            let s = load.since(last);
            (0..connections)
                .all(|c| s.iter().any(|x| x.conn == c))
                .then_some(())
        },
    )
    .await;
    load.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client task");
    }

    let failures = load.failures.load(Ordering::SeqCst);
    let total = load.samples.lock().unwrap().len();
    assert_eq!(
        failures,
        0,
        "{failures} failed requests (of {total}); first: {:?}",
        load.first_failure.lock().unwrap()
    );
    assert!(total > 500, "only {total} requests were sent");
    // No reconnects: the proxy accepted exactly the clients' connections.
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"trellis_connections_total{listener="outbound"}"#
        ),
        Some(connections as f64),
        "{metrics}"
    );
    let accepted = metric_value(
        &metrics,
        r#"trellis_config_reloads_total{result="accepted"}"#,
    );
    assert!(accepted >= Some(6.0), "accepted reloads: {accepted:?}");
    eprintln!("reload took {reload_times:?}; {total} requests");
}

/// Kubernetes mounts a ConfigMap as `file -> ..data/file` with `..data` a
/// symlink to a timestamped folder, and updates it by swapping `..data`
/// atomically. The watcher must see that.
#[tokio::test]
async fn config_map_style_symlink_swap_is_seen() {
    use std::os::unix::fs::symlink;

    let v1 = EchoServer::start("v1").await;
    let v2 = EchoServer::start("v2").await;
    let host = "reviews";
    let se = service_entry(
        host,
        HTTP_9080,
        &[
            (v1.addr(), &[("version", "v1")]),
            (v2.addr(), &[("version", "v2")]),
        ],
    );
    let proxy = Proxy::start(&[
        ("se.yaml", se),
        ("dr.yaml", destination_rule(host, &["v1", "v2"], None)),
    ])
    .await;
    let dir = proxy.config.path();
    let version = |name: &str, weights: [(&str, u32); 2]| {
        std::fs::create_dir(dir.join(name)).expect("mkdir");
        std::fs::write(dir.join(name).join("vs.yaml"), split_vs(host, &weights)).expect("write");
    };

    version("..2026_01_01", [("v1", 100), ("v2", 0)]);
    symlink("..2026_01_01", dir.join("..data")).expect("symlink ..data");
    symlink("..data/vs.yaml", dir.join("vs.yaml")).expect("symlink vs.yaml");
    eventually(
        "the mounted VirtualService",
        Duration::from_secs(5),
        || async { (served_weights(&proxy).await == [100, 0]).then_some(()) },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(proxy.get("http://reviews:9080/").await.upstream(), "v1");
    }

    // The update: a new folder, then `..data` replaced in one rename.
    version("..2026_01_02", [("v1", 0), ("v2", 100)]);
    symlink("..2026_01_02", dir.join("..data_tmp")).expect("symlink ..data_tmp");
    let swapped = Instant::now();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    eventually(
        "the swapped VirtualService",
        Duration::from_secs(5),
        || async { (served_weights(&proxy).await == [0, 100]).then_some(()) },
    )
    .await;
    assert!(
        swapped.elapsed() < Duration::from_secs(1),
        "took {:?}",
        swapped.elapsed()
    );
    for _ in 0..10 {
        assert_eq!(proxy.get("http://reviews:9080/").await.upstream(), "v2");
    }
}
