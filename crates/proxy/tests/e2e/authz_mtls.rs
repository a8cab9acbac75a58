//! AuthorizationPolicy rules on the peer's identity (principals,
//! namespaces, `source.principal`, `source.namespace`) over real mTLS
//! connections: the sidecar terminates mTLS (`--identity-dir`), and the
//! verified SPIFFE ID is what the rules match. The decisions themselves are
//! table-tested without sockets in `crates/proxy/src/authz/tests.rs`.

use std::path::Path;
use std::process::{Command, Stdio};

use trellis_testing::EchoServer;

use crate::support::*;

/// The sidecar's identity: the server certificate, its key and the CA, as
/// the `--identity-dir` layout wants them.
fn inbound_tls_args(c: &Certs) -> Vec<String> {
    let dir = c.path().join("identity");
    std::fs::create_dir_all(&dir).expect("identity dir");
    for (from, to) in [
        ("server.pem", "cert.pem"),
        ("server.key", "key.pem"),
        ("ca.pem", "roots.pem"),
    ] {
        std::fs::copy(c.path().join(from), dir.join(to)).expect("copy identity file");
    }
    vec!["--identity-dir".into(), dir.display().to_string()]
}

/// A CA and certificates with SPIFFE URI SANs, made with the openssl CLI.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Certs { dir };
        c.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/O=trellis-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        c.issue("server", "spiffe://cluster.local/ns/shop/sa/api");
        c.issue("web", "spiffe://cluster.local/ns/front/sa/web");
        c.issue("batch", "spiffe://cluster.local/ns/jobs/sa/batch");
        c
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn issue(&self, name: &str, spiffe_id: &str) {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        std::fs::write(
            self.path().join(&ext),
            format!(
                "subjectAltName=URI:{spiffe_id}\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n"
            ),
        )
        .expect("write ext");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/O=trellis-test",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
    }
}

/// `GET path` over mTLS as `client` (a name given to [`Certs::issue`]);
/// returns the status code.
fn get_as(certs: &Certs, client: &str, to: std::net::SocketAddr, path: &str) -> u16 {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-alpn",
            "http/1.1",
            "-connect",
            &to.to_string(),
            "-cert",
            &certs.file(&format!("{client}.pem")),
            "-key",
            &certs.file(&format!("{client}.key")),
            "-CAfile",
            &certs.file("ca.pem"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let req = format!("GET {path} HTTP/1.1\r\nHost: api.shop\r\nConnection: close\r\n\r\n");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), req.as_bytes()).unwrap();
    let out = child.wait_with_output().expect("s_client output");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("HTTP/1.1 "))
        .map(status_of)
        .unwrap_or_else(|| {
            panic!(
                "no HTTP response from {to} as {client}: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn principal_and_namespace_rules_over_mtls() {
    let certs = Certs::new();
    let app = EchoServer::start("app").await;
    let files = [
        (
            "allow.yaml",
            policy(
                "from-front",
                "rules:\n- from: [{source: {namespaces: [front]}}]\n- from: [{source: {principals: ['cluster.local/ns/jobs/sa/batch']}}]\n  to: [{operation: {paths: ['/jobs*']}}]",
            ),
        ),
        (
            "deny.yaml",
            policy(
                "no-batch-admin",
                "action: DENY\nrules:\n- when: [{key: source.principal, values: ['*/sa/batch']}, {key: source.namespace, values: [jobs]}]\n  to: [{operation: {paths: ['/jobs/admin*']}}]",
            ),
        ),
    ];
    let app_addr = app.addr().to_string();
    let mut extra: Vec<String> = vec![
        "--app".into(),
        app_addr,
        "--namespace".into(),
        "shop".into(),
    ];
    extra.extend(inbound_tls_args(&certs));
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let proxy = Proxy::start_with(&files, &extra).await;
    let to = proxy.inbound();
    let cases = [
        ("web", "/anything", 200),     // namespace front
        ("batch", "/jobs/1", 200),     // principal + path
        ("batch", "/other", 403),      // principal, wrong path: default deny
        ("batch", "/jobs/admin", 403), // DENY on principal and namespace
        ("web", "/jobs/admin", 200),   // the DENY is for batch only
    ];
    for (client, path, want) in cases {
        let certs = &certs;
        let got = tokio::task::block_in_place(|| get_as(certs, client, to, path));
        assert_eq!(got, want, "{client} {path}");
    }
}
