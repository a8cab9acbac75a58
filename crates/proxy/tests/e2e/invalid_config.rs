//! Invalid config is kept out: explained in the logs and /config_dump,
//! counted, and the last good config keeps serving. At startup it stops the
//! proxy with exit code 2.

use std::time::Duration;

use trellis_testing::{EchoServer, ProxyProcess, StartError};

use crate::support::*;

const REJECTED: &str = r#"trellis_config_reloads_total{result="rejected"}"#;
const ACCEPTED: &str = r#"trellis_config_reloads_total{result="accepted"}"#;

async fn wait_metric(proxy: &Proxy, series: &str, want: f64) {
    let what = format!("{series} to reach {want}");
    eventually(&what, Duration::from_secs(5), || async {
        (proxy.metric(series).await == Some(want)).then_some(())
    })
    .await;
}

/// `n` requests all answered by `upstream`.
async fn assert_all_to(proxy: &Proxy, upstream: &str, n: usize) {
    for _ in 0..n {
        let r = proxy.get("http://reviews:9080/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.upstream(), upstream);
    }
}

/// The single error of the last rejected change, from /config_dump.
async fn last_rejected(proxy: &Proxy) -> serde_json::Value {
    let dump = proxy.config_dump().await;
    let errors = dump["last_rejected"]["errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(errors.len(), 1, "last_rejected: {}", dump["last_rejected"]);
    errors[0].clone()
}

fn vs_with(route_extra: &str) -> String {
    virtual_service(
        "reviews",
        &["reviews"],
        &format!("- route: [{{destination: {{host: reviews, subset: v2}}}}]\n{route_extra}"),
    )
}

#[tokio::test]
async fn invalid_changes_are_explained_and_kept_out() {
    let v1 = EchoServer::start("v1").await;
    let v2 = EchoServer::start("v2").await;
    let se = service_entry(
        "reviews",
        HTTP_9080,
        &[
            (v1.addr(), &[("version", "v1")]),
            (v2.addr(), &[("version", "v2")]),
        ],
    );
    let proxy = Proxy::start(&[
        ("se.yaml", se),
        ("dr.yaml", destination_rule("reviews", &["v1", "v2"], None)),
        ("vs.yaml", split_vs("reviews", &[("v1", 100), ("v2", 0)])),
    ])
    .await;
    let vs_path = proxy.config.file("vs.yaml").display().to_string();
    let g0 = proxy.generation().await;
    assert_all_to(&proxy, "v1", 5).await;
    assert_eq!(
        proxy.config_dump().await["last_rejected"],
        serde_json::Value::Null
    );

    // 1. Weights that sum to 90.
    proxy
        .config
        .write("vs.yaml", &split_vs("reviews", &[("v1", 10), ("v2", 80)]));
    wait_metric(&proxy, REJECTED, 1.0).await;
    let e = last_rejected(&proxy).await;
    assert_eq!(e["file"], vs_path.as_str(), "{e}");
    assert_eq!(e["resource"], "VirtualService default/reviews", "{e}");
    assert_eq!(e["field"], "spec.http[0].route", "{e}");
    assert!(
        e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("weights sum to 90"),
        "{e}"
    );
    let logs = proxy.process.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("config rejected"))
        .unwrap_or_else(|| panic!("no 'config rejected' log line:\n{logs}"));
    for needle in [
        vs_path.as_str(),
        "VirtualService default/reviews",
        "spec.http[0].route",
        "weights sum to 90",
        &format!("still serving generation {g0}"),
    ] {
        assert!(
            line.contains(needle),
            "{needle:?} missing from the log line:\n{line}"
        );
    }
    assert_eq!(proxy.generation().await, g0);
    assert_all_to(&proxy, "v1", 10).await;

    // A valid change is accepted and clears the rejection.
    let accepted = proxy.metric(ACCEPTED).await.unwrap_or(0.0);
    proxy
        .config
        .write("vs.yaml", &split_vs("reviews", &[("v1", 0), ("v2", 100)]));
    let g1 = proxy
        .wait_generation_above(g0, Duration::from_secs(5))
        .await;
    assert_eq!(proxy.metric(ACCEPTED).await, Some(accepted + 1.0));
    assert_eq!(
        proxy.config_dump().await["last_rejected"],
        serde_json::Value::Null
    );
    assert_all_to(&proxy, "v2", 5).await;

    // 2. A malformed YAML file next to the good ones.
    proxy.config.write(
        "broken.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: [unclosed\n",
    );
    wait_metric(&proxy, REJECTED, 2.0).await;
    let e = last_rejected(&proxy).await;
    assert_eq!(
        e["file"],
        proxy.config.file("broken.yaml").display().to_string(),
        "{e}"
    );
    assert!(
        e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not valid YAML"),
        "{e}"
    );
    let logs = proxy.process.logs();
    assert!(
        logs.lines().any(|l| l.contains("config rejected")
            && l.contains("broken.yaml")
            && l.contains("not valid YAML")),
        "{logs}"
    );
    assert_all_to(&proxy, "v2", 5).await;
    proxy.config.remove("broken.yaml");
    let g2 = proxy
        .wait_generation_above(g1, Duration::from_secs(5))
        .await;

    // 3. An unknown field, and a field Trellis does not implement yet.
    for (extra, field, reason) in [
        ("  timeoutt: 1s\n", "spec.http[0].timeoutt", "unknown field"),
        (
            "  corsPolicy: {allowOrigins: [{exact: x}]}\n",
            "spec.http[0].corsPolicy",
            "not supported by Trellis yet",
        ),
    ] {
        let before = proxy.metric(REJECTED).await.unwrap_or(0.0);
        proxy.config.write("vs.yaml", &vs_with(extra));
        wait_metric(&proxy, REJECTED, before + 1.0).await;
        let e = last_rejected(&proxy).await;
        assert_eq!(e["file"], vs_path.as_str(), "{e}");
        assert_eq!(e["field"], field, "{e}");
        assert!(e["reason"].as_str().unwrap_or("").contains(reason), "{e}");
        let logs = proxy.process.logs();
        assert!(
            logs.lines()
                .any(|l| l.contains("config rejected") && l.contains(field) && l.contains(reason)),
            "no log line names {field} and {reason:?}:\n{logs}"
        );
        assert_eq!(proxy.generation().await, g2);
        assert_all_to(&proxy, "v2", 3).await;
    }
}

#[tokio::test]
async fn refuses_to_start_with_invalid_config() {
    let cases = [
        (
            "vs.yaml",
            split_vs("reviews", &[("v1", 50), ("v2", 40)]),
            vec![
                "vs.yaml",
                "VirtualService default/reviews",
                "spec.http[0].route",
                "weights sum to 90",
            ],
        ),
        (
            "broken.yaml",
            "kind: ServiceEntry\n  hosts: [a\n".to_string(),
            vec!["broken.yaml", "not valid YAML"],
        ),
    ];
    for (file, yaml, needles) in cases {
        let dir = ConfigDir::new();
        dir.write(
            "se.yaml",
            &service_entry(
                "reviews",
                HTTP_9080,
                &[
                    ("127.0.0.1:1".parse().unwrap(), &[("version", "v1")]),
                    ("127.0.0.1:2".parse().unwrap(), &[("version", "v2")]),
                ],
            ),
        );
        dir.write("dr.yaml", &destination_rule("reviews", &["v1", "v2"], None));
        dir.write(file, &yaml);
        let err = ProxyProcess::command(bin())
            .args(sidecar_args(dir.path()))
            .start()
            .await
            .err()
            .unwrap_or_else(|| panic!("the proxy started with an invalid {file}"));
        match err {
            StartError::Exited { status, logs } => {
                assert_eq!(status.code(), Some(2), "{logs}");
                assert!(logs.contains("cannot start"), "{logs}");
                for n in needles {
                    assert!(logs.contains(n), "{n:?} missing from:\n{logs}");
                }
                assert!(
                    logs.contains(&dir.file(file).display().to_string()),
                    "{logs}"
                );
            }
            other => panic!("expected the proxy to exit, got: {other}"),
        }
    }
}
