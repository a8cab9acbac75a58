//! AuthorizationPolicy through the real binary: policies in the config
//! folder, real requests to the inbound listener (HTTP/1.1 from chosen
//! loopback source addresses, h2c, opaque TCP), the app behind it, the
//! audit log on disk, hot reload and rejection of bad policies.
//!
//! Principal and namespace rules need a peer identity (mTLS); their
//! end-to-end test is `authz_mtls.rs`, enabled when mTLS is merged.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use trellis_testing::{EchoServer, ProxyProcess, StartError, TcpEchoServer, h2c_client_to};

use crate::support::*;

const DENIED: &str = r#"trellis_local_replies_total{direction="inbound",reason="rbac_denied"}"#;

fn policy(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

/// A proxy for workload `api` (namespace `shop`, label `app=api`) in front
/// of `app`, with an audit log file in its own temp folder.
struct Authz {
    proxy: Proxy,
    audit_dir: tempfile::TempDir,
}

impl Authz {
    async fn start(app: SocketAddr, files: &[(&str, String)], extra: &[&str]) -> Authz {
        let audit_dir = tempfile::tempdir().expect("tempdir");
        let app = app.to_string();
        let audit = audit_dir.path().join("audit.log").display().to_string();
        let mut args = vec![
            "--app",
            &app,
            "--namespace",
            "shop",
            "--workload",
            "api",
            "--labels",
            "app=api,version=v1",
            "--inbound-detect-timeout",
            "100ms",
            "--audit-log",
            &audit,
        ];
        args.extend_from_slice(extra);
        let proxy = Proxy::start_with(files, &args).await;
        Authz { proxy, audit_dir }
    }

    fn audit_path(&self) -> PathBuf {
        self.audit_dir.path().join("audit.log")
    }

    /// Wait for at least `n` audit lines; returns them all, parsed.
    async fn audit_lines(&self, n: usize) -> Vec<Value> {
        let path = self.audit_path();
        eventually(
            &format!("{n} audit lines in {}", path.display()),
            Duration::from_secs(5),
            || {
                let path = path.clone();
                async move {
                    let lines = read_lines(&path);
                    (lines.len() >= n).then_some(lines)
                }
            },
        )
        .await
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

/// One HTTP/1.1 request to `to` from the loopback address `from`, raw, so
/// the source address is ours to choose (ipBlocks). Returns the status and
/// the whole response head.
async fn request_from(
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind source");
    let mut s = socket.connect(to).await.expect("connect");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: api.shop:8080\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).await.expect("write");
    let (head, _) = read_head(&mut s).await;
    (status_of(&head), head)
}

/// Extra request headers, name and value.
type Headers<'a> = &'a [(&'a str, &'a str)];

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

async fn status(proxy: &Proxy, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    request_from(LOCAL, proxy.inbound(), method, path, headers)
        .await
        .0
}

#[tokio::test]
async fn authorization_table_over_real_requests() {
    let app = EchoServer::start("app").await;
    let files = [
        (
            "deny.yaml",
            policy(
                "no-admin",
                "shop",
                "action: DENY\nrules:\n- to: [{operation: {paths: ['/admin*']}}]\n- from: [{source: {ipBlocks: [127.0.0.2]}}]",
            ),
        ),
        (
            "allow.yaml",
            policy(
                "readers",
                "shop",
                "selector: {matchLabels: {app: api}}\nrules:\n- to: [{operation: {methods: [GET, HEAD], paths: ['/items*', '*.json']}}]\n- when: [{key: 'request.headers[x-user]', values: [alice, 'adm-*']}]",
            ),
        ),
        // Selects another workload: must change nothing here.
        (
            "other.yaml",
            policy(
                "db-only",
                "shop",
                "action: DENY\nselector: {matchLabels: {app: db}}\nrules: [{}]",
            ),
        ),
    ];
    let a = Authz::start(app.addr(), &files, &[]).await;
    let p = &a.proxy;

    let cases: &[(&str, &str, Headers, u16)] = &[
        ("GET", "/items/1", &[], 200),
        ("HEAD", "/items", &[], 200),
        ("GET", "/a/b.json", &[], 200),
        ("POST", "/items/1", &[], 403), // method: default deny
        ("GET", "/other", &[], 403),    // path: default deny
        ("POST", "/other", &[("x-user", "alice")], 200), // header rule
        ("DELETE", "/x", &[("x-user", "adm-bob")], 200), // header prefix
        ("DELETE", "/x", &[("x-user", "mallory")], 403), // header mismatch
        ("GET", "/admin/users", &[("x-user", "alice")], 403), // DENY before ALLOW
        ("GET", "/items/../admin", &[], 403), // dot segments removed first
        ("GET", "/items/?q=/admin", &[], 200), // the query is not the path
    ];
    let mut allowed = 0;
    for (method, path, headers, want) in cases {
        let (got, head) = request_from(LOCAL, p.inbound(), method, path, headers).await;
        assert_eq!(got, *want, "{method} {path} {headers:?}:\n{head}");
        if *want == 403 {
            assert!(head.contains("x-trellis-reason: rbac_denied"), "{head}");
        } else {
            allowed += 1;
        }
    }
    assert_eq!(
        app.requests(),
        allowed,
        "only allowed requests reach the app"
    );

    // ipBlocks: the DENY rule names 127.0.0.2; 127.0.0.3 is not in it.
    let from = |last: u8| IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last));
    assert_eq!(
        request_from(from(2), p.inbound(), "GET", "/items/1", &[])
            .await
            .0,
        403
    );
    assert_eq!(
        request_from(from(3), p.inbound(), "GET", "/items/1", &[])
            .await
            .0,
        200
    );

    // HTTP/2 requests are checked one by one too.
    let h2 = h2c_client_to(p.inbound());
    let ok = send_with(&h2, get("http://api.shop/items/2"), &p.process).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let no = send_with(&h2, get("http://api.shop/admin"), &p.process).await;
    no.assert_local(403, "rbac_denied");

    // Every denial is counted under its reason ...
    let denials = 5.0 + 1.0 + 1.0;
    assert_eq!(
        p.metric(DENIED).await,
        Some(denials),
        "{}",
        p.metrics().await
    );
    // ... and logged, with who, what and which policy.
    let lines = a.audit_lines(denials as usize).await;
    assert_eq!(lines.len(), denials as usize, "{lines:#?}");
    assert!(lines.iter().all(|l| l["outcome"] == "denied"), "{lines:#?}");
    let first = &lines[0];
    assert_eq!(first["reason"], "no_allow_match", "{first}");
    assert_eq!(first["policy"], Value::Null, "{first}");
    assert_eq!(first["request"]["method"], "POST", "{first}");
    assert_eq!(first["request"]["path"], "/items/1", "{first}");
    assert_eq!(first["destination"]["workload"], "api", "{first}");
    assert_eq!(first["destination"]["namespace"], "shop", "{first}");
    assert_eq!(first["destination"]["host"], "api.shop:8080", "{first}");
    assert_eq!(first["destination"]["port"], app.addr().port(), "{first}");
    assert_eq!(first["destination"]["protocol"], "http", "{first}");
    assert_eq!(first["source"]["principal"], Value::Null, "{first}");
    assert!(
        first["source"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{first}"
    );
    assert!(first["time"].as_str().unwrap().ends_with('Z'), "{first}");
    let admin = lines
        .iter()
        .find(|l| l["request"]["path"] == "/admin/users")
        .expect("the /admin/users denial is logged");
    assert_eq!(admin["reason"], "deny_rule", "{admin}");
    assert_eq!(admin["policy"]["name"], "shop/no-admin", "{admin}");
    assert_eq!(admin["policy"]["action"], "DENY", "{admin}");
    assert_eq!(admin["policy"]["rule"], 0, "{admin}");
    let by_ip = lines
        .iter()
        .find(|l| l["policy"]["rule"] == 1)
        .expect("the ipBlocks denial is logged");
    assert!(
        by_ip["source"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.2:"),
        "{by_ip}"
    );
    // The audit file is not world-readable.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(a.audit_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode & 0o137,
        0,
        "audit log mode {mode:o} is wider than 0640"
    );
}

#[tokio::test]
async fn ports_and_hot_reload() {
    let app = EchoServer::start("app").await;
    let port = app.addr().port();
    let allow_port = |p: u16| {
        policy(
            "by-port",
            "shop",
            &format!("rules:\n- to: [{{operation: {{ports: ['{p}']}}}}]"),
        )
    };
    let a = Authz::start(app.addr(), &[("p.yaml", allow_port(port))], &[]).await;
    let p = &a.proxy;
    assert_eq!(
        status(p, "GET", "/", &[]).await,
        200,
        "the app's port is allowed"
    );

    // The policy now names another port: the same request is denied.
    let g = p.generation().await;
    p.config
        .write("p.yaml", &allow_port(port.wrapping_add(1).max(1)));
    p.wait_generation_above(g, Duration::from_secs(5)).await;
    assert_eq!(status(p, "GET", "/", &[]).await, 403);

    // No policy left: everything is allowed again.
    let g = p.generation().await;
    p.config.remove("p.yaml");
    p.wait_generation_above(g, Duration::from_secs(5)).await;
    assert_eq!(status(p, "GET", "/", &[]).await, 200);
}

#[tokio::test]
async fn audit_policy_logs_and_allows() {
    let app = EchoServer::start("app").await;
    let files = [(
        "audit.yaml",
        policy(
            "watch-exports",
            "shop",
            "action: AUDIT\nrules:\n- to: [{operation: {paths: ['/export*']}}]",
        ),
    )];
    let a = Authz::start(app.addr(), &files, &[]).await;
    let p = &a.proxy;
    assert_eq!(status(p, "GET", "/export/all", &[]).await, 200);
    assert_eq!(status(p, "GET", "/items", &[]).await, 200);
    assert_eq!(app.requests(), 2);
    let lines = a.audit_lines(1).await;
    // Only the audited request is logged (give a second line time to show).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines_after = read_lines(&a.audit_path());
    assert_eq!(lines_after.len(), 1, "{lines_after:#?}");
    let l = &lines[0];
    assert_eq!(l["outcome"], "allowed", "{l}");
    assert_eq!(l["audit"]["name"], "shop/watch-exports", "{l}");
    assert_eq!(l["audit"]["action"], "AUDIT", "{l}");
    assert_eq!(l["request"]["path"], "/export/all", "{l}");
    assert_eq!(p.metric(DENIED).await, None);
}

/// Send opaque bytes (not HTTP) and half-close; returns what came back
/// before the proxy or the app closed.
async fn opaque_roundtrip(to: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(to).await.expect("connect");
    s.write_all(b"\x16\x03\x01 not http at all")
        .await
        .expect("write");
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the connection was neither answered nor closed within 5 s");
    // A close with unread input may arrive as a reset: also a close.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    out
}

#[tokio::test]
async fn tcp_connections_are_authorized_once_and_denied_ones_closed() {
    let app = TcpEchoServer::start().await;
    // ALLOW rules that use HTTP-only fields never match TCP (Istio's rule):
    // with only such a rule, opaque connections are denied.
    let http_only = policy(
        "http-only",
        "shop",
        "rules:\n- to: [{operation: {methods: [GET]}}]",
    );
    let a = Authz::start(app.addr(), &[("p.yaml", http_only)], &[]).await;
    let p = &a.proxy;
    let out = opaque_roundtrip(p.inbound()).await;
    assert!(
        out.is_empty(),
        "a denied connection got {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(app.connections(), 0, "the app saw a denied connection");
    assert_eq!(p.metric(DENIED).await, Some(1.0));
    let lines = a.audit_lines(1).await;
    assert_eq!(lines[0]["destination"]["protocol"], "tcp", "{}", lines[0]);
    assert_eq!(lines[0]["reason"], "no_allow_match", "{}", lines[0]);
    assert!(lines[0].get("request").is_none(), "{}", lines[0]);

    // A rule on the port alone is not HTTP-only: TCP is allowed.
    let g = p.generation().await;
    p.config.write(
        "p.yaml",
        &policy(
            "by-port",
            "shop",
            &format!(
                "rules:\n- to: [{{operation: {{ports: ['{}']}}}}]",
                app.addr().port()
            ),
        ),
    );
    p.wait_generation_above(g, Duration::from_secs(5)).await;
    let out = opaque_roundtrip(p.inbound()).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("received 19 bytes"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );

    // DENY rules ignore HTTP-only fields on TCP: this one denies every connection.
    let g = p.generation().await;
    p.config.write(
        "deny.yaml",
        &policy(
            "no-get",
            "shop",
            "action: DENY\nrules:\n- to: [{operation: {methods: [GET]}}]",
        ),
    );
    p.wait_generation_above(g, Duration::from_secs(5)).await;
    assert!(opaque_roundtrip(p.inbound()).await.is_empty());
    assert_eq!(app.connections(), 1);
}

#[tokio::test]
async fn invalid_policy_is_rejected_and_the_last_good_one_kept() {
    let app = EchoServer::start("app").await;
    let deny_admin = policy(
        "no-admin",
        "shop",
        "action: DENY\nrules:\n- to: [{operation: {paths: ['/admin*']}}]",
    );
    let a = Authz::start(app.addr(), &[("p.yaml", deny_admin)], &[]).await;
    let p = &a.proxy;
    assert_eq!(status(p, "GET", "/admin", &[]).await, 403);

    let bad = [
        (
            policy(
                "no-admin",
                "shop",
                "action: CUSTOM\nprovider: {name: ext-authz}\nrules: [{}]",
            ),
            "spec.action",
            "CUSTOM (an external authorization service) is not supported",
        ),
        (
            policy(
                "no-admin",
                "shop",
                "action: DENY\nrules:\n- from: [{source: {ipBlocks: [10.0.0.0/33]}}]",
            ),
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "not an IP address or CIDR",
        ),
        (
            policy(
                "no-admin",
                "shop",
                "action: DENY\nrules:\n- when: [{key: request.auth.claims, values: [x]}]",
            ),
            "spec.rules[0].when[0].key",
            "use one of request.headers[<name>]",
        ),
    ];
    for (yaml, field, reason) in bad {
        p.config.write("p.yaml", &yaml);
        let err = eventually(
            "the change to be rejected",
            Duration::from_secs(5),
            || async {
                let dump = p.config_dump().await;
                let errors = dump["last_rejected"]["errors"].as_array().cloned()?;
                errors.into_iter().find(|e| e["field"] == field)
            },
        )
        .await;
        assert!(err["file"].as_str().unwrap().ends_with("p.yaml"), "{err}");
        assert_eq!(
            err["resource"], "AuthorizationPolicy shop/no-admin",
            "{err}"
        );
        assert!(err["reason"].as_str().unwrap().contains(reason), "{err}");
        // Still the old policy: /admin denied, the rest allowed.
        assert_eq!(status(p, "GET", "/admin", &[]).await, 403, "{field}");
        assert_eq!(status(p, "GET", "/items", &[]).await, 200, "{field}");
    }
    assert!(
        p.process
            .logs()
            .contains("AuthorizationPolicy shop/no-admin")
    );

    // At start, a bad policy stops the proxy with exit code 2 and the error.
    let dir = ConfigDir::new();
    dir.write(
        "p.yaml",
        &policy(
            "bad",
            "shop",
            "rules:\n- from: [{source: {requestPrincipals: ['*']}}]",
        ),
    );
    let err = ProxyProcess::command(bin())
        .args(sidecar_args(dir.path()))
        .start()
        .await
        .err()
        .expect("the proxy started with an invalid policy");
    match err {
        StartError::Exited { status, logs } => {
            assert_eq!(status.code(), Some(2), "{logs}");
            for needle in [
                "p.yaml",
                "AuthorizationPolicy shop/bad",
                "spec.rules[0].from[0].source.requestPrincipals",
                "RequestAuthentication",
            ] {
                assert!(logs.contains(needle), "{needle:?} not in {logs}");
            }
        }
        other => panic!("expected exit 2, got {other:?}"),
    }
}

#[tokio::test]
async fn audit_log_rotation_keeps_at_most_n_files() {
    let app = EchoServer::start("app").await;
    let deny_all = policy("deny-all", "shop", "action: DENY\nrules: [{}]");
    let a = Authz::start(
        app.addr(),
        &[("p.yaml", deny_all)],
        &[
            "--audit-log-max-bytes",
            "2000",
            "--audit-log-max-files",
            "3",
        ],
    )
    .await;
    let p = &a.proxy;
    for _ in 0..60 {
        assert_eq!(status(p, "GET", "/x", &[]).await, 403);
    }
    let written = r#"trellis_audit_log_lines_total"#;
    eventually("60 audit lines written", Duration::from_secs(5), || async {
        (p.metric(written).await == Some(60.0)).then_some(())
    })
    .await;
    let mut names: Vec<String> = std::fs::read_dir(a.audit_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["audit.log", "audit.log.1", "audit.log.2"]);
    for n in &names {
        let len = std::fs::metadata(a.audit_dir.path().join(n)).unwrap().len();
        assert!(len <= 2000, "{n} is {len} bytes");
    }
    // 60 lines of ~400 bytes do not fit in 3 files of 2000: the oldest went.
    let kept: usize = names
        .iter()
        .map(|n| read_lines(&a.audit_dir.path().join(n)).len())
        .sum();
    assert!(kept < 60 && kept > 0, "{kept} lines kept");
    assert_eq!(p.metric("trellis_audit_log_dropped_total").await, Some(0.0));
}
