//! Shared helpers: a config folder of Istio YAML, the real proxy binary
//! started on it, clients that talk to its listeners, and readers for its
//! admin endpoints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_testing::{FixedClient, ProxyProcess, h2c_client_to, http1_client_to, try_send};

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_trellis-proxy"))
}

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(10);

/// Poll `cond` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// ------------------------------------------------------------------ config

/// A temporary config folder the proxy watches.
pub struct ConfigDir {
    dir: TempDir,
}

impl ConfigDir {
    pub fn new() -> ConfigDir {
        ConfigDir {
            dir: tempfile::Builder::new()
                .prefix("trellis-e2e-config-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replace `name` atomically: write a hidden temp file, then rename it
    /// over the old one (what editors and ConfigMap updates do).
    pub fn write(&self, name: &str, yaml: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write temp config");
        std::fs::rename(&tmp, self.file(name)).expect("rename config");
    }

    /// Overwrite `name` in place (truncate + write), as `echo > file` does.
    pub fn write_in_place(&self, name: &str, yaml: &str) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.file(name))
            .expect("open config");
        std::io::Write::write_all(&mut f, yaml.as_bytes()).expect("write config");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.file(name)).expect("remove config");
    }
}

const HEAD: &str = "apiVersion: networking.istio.io/v1";

/// A ServiceEntry (STATIC) for `host` with `ports` (number, name, protocol);
/// each endpoint is a loopback server, labelled, serving every port on its
/// own address.
pub fn service_entry(
    host: &str,
    ports: &[(u16, &str, &str)],
    endpoints: &[(SocketAddr, &[(&str, &str)])],
) -> String {
    let mut y = format!(
        "{HEAD}\nkind: ServiceEntry\nmetadata:\n  name: {}\n  namespace: default\nspec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n",
        host.replace('.', "-")
    );
    for (number, name, protocol) in ports {
        y += &format!("  - number: {number}\n    name: {name}\n    protocol: {protocol}\n");
    }
    if endpoints.is_empty() {
        y += "  endpoints: []\n";
    } else {
        y += "  endpoints:\n";
    }
    for (addr, labels) in endpoints {
        y += &format!("  - address: {}\n    ports:\n", addr.ip());
        for (_, name, _) in ports {
            y += &format!("      {name}: {}\n", addr.port());
        }
        if !labels.is_empty() {
            y += "    labels:\n";
            for (k, v) in *labels {
                y += &format!("      {k}: {v}\n");
            }
        }
    }
    y
}

/// One HTTP port 9080 named `http`.
pub const HTTP_9080: &[(u16, &str, &str)] = &[(9080, "http", "HTTP")];

/// A ServiceEntry for `host` on HTTP port 9080 with unlabelled endpoints.
pub fn http_service(host: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<(SocketAddr, &[(&str, &str)])> = endpoints.iter().map(|a| (*a, &[][..])).collect();
    service_entry(host, HTTP_9080, &eps)
}

/// A DestinationRule for `host` with subsets selecting `version: <subset>`,
/// plus an optional `trafficPolicy` block (YAML, indented under `spec:`).
pub fn destination_rule(host: &str, subsets: &[&str], traffic_policy: Option<&str>) -> String {
    let mut y = format!(
        "{HEAD}\nkind: DestinationRule\nmetadata:\n  name: {}\n  namespace: default\nspec:\n  host: {host}\n",
        host.replace('.', "-")
    );
    if let Some(tp) = traffic_policy {
        y += "  trafficPolicy:\n";
        for line in tp.lines() {
            y += &format!("    {line}\n");
        }
    }
    if !subsets.is_empty() {
        y += "  subsets:\n";
        for s in subsets {
            y += &format!("  - name: {s}\n    labels:\n      version: {s}\n");
        }
    }
    y
}

/// A VirtualService `name` for `hosts`; `http` is the YAML list under
/// `spec.http:` (written at column 0, indented here).
pub fn virtual_service(name: &str, hosts: &[&str], http: &str) -> String {
    let mut y = format!(
        "{HEAD}\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts: [{}]\n  http:\n",
        hosts.join(", ")
    );
    for line in http.lines() {
        y += &format!("  {line}\n");
    }
    y
}

/// A weighted split of `host` over subsets.
pub fn split_vs(host: &str, weights: &[(&str, u32)]) -> String {
    let mut http = String::from("- route:\n");
    for (subset, w) in weights {
        http += &format!("  - destination: {{host: {host}, subset: {subset}}}\n    weight: {w}\n");
    }
    virtual_service(host, &[host], &http)
}

// ------------------------------------------------------------------- proxy

/// The real proxy on a config folder, with clients for its outbound listener.
pub struct Proxy {
    pub process: ProxyProcess,
    pub config: ConfigDir,
    pub h1: FixedClient,
    pub h2: FixedClient,
}

/// The arguments every test proxy gets (ProxyProcess appends --addr-file).
pub fn sidecar_args(config: &Path) -> Vec<String> {
    [
        "sidecar",
        "--config-dir",
        &config.display().to_string(),
        "--outbound",
        "127.0.0.1:0",
        "--inbound",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Proxy {
    /// Write `files` into a fresh config folder and start the proxy on it.
    pub async fn start(files: &[(&str, String)]) -> Proxy {
        Self::start_with(files, &[]).await
    }

    pub async fn start_with(files: &[(&str, String)], extra: &[&str]) -> Proxy {
        let config = ConfigDir::new();
        for (name, yaml) in files {
            config.write(name, yaml);
        }
        let mut args = sidecar_args(config.path());
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = ProxyProcess::command(bin())
            .args(args)
            .start()
            .await
            .unwrap_or_else(|e| panic!("starting trellis-proxy: {e}"));
        let h1 = http1_client_to(process.outbound());
        let h2 = h2c_client_to(process.outbound());
        Proxy {
            process,
            config,
            h1,
            h2,
        }
    }

    pub fn outbound(&self) -> SocketAddr {
        self.process.outbound()
    }

    pub fn inbound(&self) -> SocketAddr {
        self.process.inbound()
    }

    /// Send through the outbound listener over HTTP/1.1 keep-alive.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        send_with(&self.h1, req, &self.process).await
    }

    /// Send through the outbound listener over h2c.
    pub async fn send_h2(&self, req: Request<Full<Bytes>>) -> Reply {
        send_with(&self.h2, req, &self.process).await
    }

    /// `GET url` through the outbound listener (HTTP/1.1).
    pub async fn get(&self, url: &str) -> Reply {
        self.send(get(url)).await
    }

    /// `GET url` with extra headers.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        let mut b = Request::get(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Full::new(Bytes::new())).expect("request"))
            .await
    }

    pub async fn config_dump(&self) -> Value {
        let (status, body) = self.process.admin_get("/config_dump").await;
        assert_eq!(status, 200, "/config_dump: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/config_dump is not JSON: {e}: {body}"))
    }

    pub async fn generation(&self) -> u64 {
        self.config_dump().await["config"]["generation"]
            .as_u64()
            .expect("config.generation")
    }

    /// Wait until the proxy serves a generation above `than`; returns it.
    pub async fn wait_generation_above(&self, than: u64, timeout: Duration) -> u64 {
        let logs = || self.process.logs();
        let deadline = Instant::now() + timeout;
        loop {
            let g = self.generation().await;
            if g > than {
                return g;
            }
            assert!(
                Instant::now() < deadline,
                "config generation stayed at {g} for {timeout:?}; proxy output:\n{}",
                logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = self.process.admin_get("/stats/prometheus").await;
        assert_eq!(status, 200, "/stats/prometheus: {body}");
        body
    }

    /// The value of one series, e.g.
    /// `trellis_local_replies_total{direction="outbound",reason="upstream_timeout"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics().await, series)
    }
}

/// The value of the exact series `name{labels}` in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let rest = rest.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The echo server's JSON description of the request it got.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {} {:?} {}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The echo server that answered (`x-upstream`).
    pub fn upstream(&self) -> &str {
        self.header("x-upstream").unwrap_or_else(|| {
            panic!(
                "no x-upstream in {} {:?}: {}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }

    /// The proxy's explanation of a local reply.
    pub fn reason(&self) -> Option<&str> {
        self.header("x-trellis-reason")
    }

    /// Assert a local reply: status and reason.
    #[track_caller]
    pub fn assert_local(&self, status: u16, reason: &str) {
        assert_eq!(
            (self.status.as_u16(), self.reason()),
            (status, Some(reason)),
            "body: {}",
            self.text()
        );
    }
}

pub async fn send_with(
    client: &FixedClient,
    req: Request<Full<Bytes>>,
    proxy: &ProxyProcess,
) -> Reply {
    let what = format!("{} {}", req.method(), req.uri());
    match try_send(client, req).await {
        Ok((status, headers, body)) => Reply {
            status,
            headers,
            body,
        },
        Err(e) => panic!("{what}: {e}; proxy output:\n{}", proxy.logs()),
    }
}

// -------------------------------------------------------------- raw sockets

/// Read from `stream` until the end of an HTTP head (`\r\n\r\n`); returns
/// the head, and any bytes read past it.
pub async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("no response head within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "connection closed inside the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The status code of an HTTP/1.1 response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response head: {head:?}"))
}

/// A loopback port where connections are refused: bound but not listening,
/// so no other server (of a test running in parallel) can take it while
/// this lives.
pub struct ClosedPort {
    _socket: socket2::Socket,
    addr: SocketAddr,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("local addr");
        ClosedPort {
            _socket: socket,
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Write `request` on a new connection and read one response: its head and
/// its body (by content-length).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    read_response(&mut s).await
}

/// Read one response with a content-length body from `s`.
pub async fn read_response(s: &mut TcpStream) -> (String, String) {
    let (head, mut body) = read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("no response body within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// A header's value in a raw response head (case-insensitive name).
pub fn head_header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

// -------------------------------------------------------------- resilience

/// The cluster of `host`'s port 9080 (namespace `default`), as metrics and
/// local replies name it.
pub fn cluster_9080(host: &str) -> String {
    format!("outbound|9080||{host}.default.svc.cluster.local")
}

/// A Trellis `RateLimitPolicy` `name` for `host`: `routes` empty limits the
/// whole host; `bucket` is the inline `tokenBucket` mapping, e.g.
/// `{maxTokens: 5, fillInterval: 1h}`.
pub fn rate_limit_policy(name: &str, host: &str, routes: &[&str], bucket: &str) -> String {
    let mut y = format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  host: {host}\n  tokenBucket: {bucket}\n"
    );
    if !routes.is_empty() {
        y += &format!("  routes: [{}]\n", routes.join(", "));
    }
    y
}

/// `GET url` with extra headers.
pub fn get_headers(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

/// One reply and how long it took.
#[derive(Debug)]
pub struct Timed {
    pub reply: Reply,
    pub took: Duration,
}

/// Send `n` requests made by `make(i)` through `client` (the proxy's `h1` or
/// `h2`), at most `concurrency` at a time; the replies come back in request
/// order.
pub async fn send_many<F>(
    proxy: &Proxy,
    client: &FixedClient,
    n: usize,
    concurrency: usize,
    make: F,
) -> Vec<Timed>
where
    F: Fn(usize) -> Request<Full<Bytes>>,
{
    use futures_util::stream::{self, StreamExt};
    stream::iter((0..n).map(|i| {
        let req = make(i);
        async move {
            let started = Instant::now();
            let reply = send_with(client, req, &proxy.process).await;
            Timed {
                reply,
                took: started.elapsed(),
            }
        }
    }))
    .buffered(concurrency)
    .collect()
    .await
}

impl Proxy {
    /// The cluster `name` as `/config_dump` shows it (limits, counts in use,
    /// endpoints with their outlier state).
    pub async fn cluster_dump(&self, name: &str) -> Value {
        let dump = self.config_dump().await;
        dump["config"]["clusters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no cluster {name} in /config_dump: {dump}"))
    }

    /// Wait until `series` has the value `want` (an absent series reads 0).
    pub async fn wait_metric(&self, series: &str, want: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(series).await.unwrap_or(0.0);
            if v == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {v}, not {want}, after {timeout:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

// ------------------------------------------------------ retries, timeouts

/// The series of `trellis_upstream_retries_total` for `cluster` and `reason`.
pub fn retries_series(cluster: &str, reason: &str) -> String {
    format!(r#"trellis_upstream_retries_total{{cluster="{cluster}",reason="{reason}"}}"#)
}

/// The series of `trellis_upstream_retries_denied_total` for `cluster` and `reason`.
pub fn denied_series(cluster: &str, reason: &str) -> String {
    format!(r#"trellis_upstream_retries_denied_total{{cluster="{cluster}",reason="{reason}"}}"#)
}

/// A Trellis `RetryBudget` for `host` (namespace `default`).
pub fn retry_budget(host: &str, ratio: f64, min_per_sec: u32, ttl: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: RetryBudget\nmetadata:\n  name: {}\n  namespace: default\nspec:\n  host: {host}\n  retryRatio: {ratio}\n  minRetriesPerSecond: {min_per_sec}\n  ttl: {ttl}\n",
        host.replace('.', "-")
    )
}

/// A gRPC call as its client sees it: the HTTP reply, the trailers (none
/// for a trailers-only reply) and how long it took.
#[derive(Debug)]
pub struct GrpcReply {
    pub reply: Reply,
    pub trailers: Option<HeaderMap>,
    pub took: Duration,
}

impl GrpcReply {
    /// `grpc-status`: from the trailers, else from the headers
    /// (trailers-only reply).
    pub fn grpc_status(&self) -> Option<u32> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.reply.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    /// The messages of the body, unframed.
    pub fn messages(&self) -> Vec<Bytes> {
        trellis_testing::decode_messages(&self.reply.body)
            .unwrap_or_else(|| panic!("not gRPC framing: {:?}", self.reply))
    }
}

/// A unary gRPC call through the proxy's outbound listener over h2c: `POST
/// url` with `message` framed, `content-type: application/grpc`, and
/// `headers`.
pub async fn grpc_call(
    proxy: &Proxy,
    url: &str,
    headers: &[(&str, &str)],
    message: &[u8],
) -> GrpcReply {
    use http_body_util::BodyExt;
    let mut b = Request::post(url)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(trellis_testing::encode_message(message)))
        .expect("request");
    let started = Instant::now();
    let call = async {
        let resp = proxy.h2.request(req).await?;
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok::<_, trellis_testing::BoxError>((parts, trailers, collected.to_bytes()))
    };
    match tokio::time::timeout(trellis_testing::SEND_TIMEOUT, call).await {
        Ok(Ok((parts, trailers, body))) => GrpcReply {
            reply: Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            },
            trailers,
            took: started.elapsed(),
        },
        Ok(Err(e)) => panic!(
            "gRPC call {url}: {e}; proxy output:\n{}",
            proxy.process.logs()
        ),
        Err(_) => panic!(
            "gRPC call {url}: no reply; proxy output:\n{}",
            proxy.process.logs()
        ),
    }
}
