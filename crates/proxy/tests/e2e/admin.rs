//! The admin listener: health, effective config, metrics and log level.

use std::time::Duration;

use trellis_testing::{EchoServer, http1_client_to};

use crate::support::*;

const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";
const ROUTE: &str = "default|reviews.default.svc.cluster.local:9080";

#[tokio::test]
async fn admin_endpoints() {
    let a = EchoServer::start("a").await;
    let b = EchoServer::start("b").await;
    let proxy = Proxy::start(&[("se.yaml", http_service("reviews", &[a.addr(), b.addr()]))]).await;
    let p = &proxy.process;

    assert_eq!(p.admin_get("/ready").await, (200, "ready\n".into()));
    assert_eq!(p.admin_get("/live").await, (200, "live\n".into()));
    let (status, body) = p.admin_get("/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("/config_dump"), "{body}");

    // /config_dump: listeners, and the cluster with its endpoints.
    let dump = proxy.config_dump().await;
    assert_eq!(dump["proxy"]["mode"], "sidecar");
    assert_eq!(
        dump["proxy"]["listeners"]["outbound"],
        proxy.outbound().to_string()
    );
    assert_eq!(dump["proxy"]["listeners"]["admin"], p.admin().to_string());
    assert_eq!(dump["config"]["generation"], 1);
    let clusters = dump["config"]["clusters"].as_array().expect("clusters");
    let c = clusters
        .iter()
        .find(|c| c["name"] == CLUSTER)
        .unwrap_or_else(|| panic!("no cluster {CLUSTER} in {clusters:?}"));
    assert_eq!(c["protocol"], "Http1");
    let mut eps: Vec<String> = c["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            assert_eq!(e["healthy"], true, "{e}");
            e["address"].as_str().expect("address").to_string()
        })
        .collect();
    eps.sort();
    let mut want = vec![a.addr().to_string(), b.addr().to_string()];
    want.sort();
    assert_eq!(eps, want);
    let hosts: Vec<&str> = dump["config"]["outbound_hosts"]
        .as_array()
        .expect("outbound_hosts")
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    for name in [
        "reviews",
        "reviews.default",
        "reviews.default.svc.cluster.local",
    ] {
        assert!(hosts.contains(&name), "{name} not in {hosts:?}");
    }

    // /stats/prometheus after three requests on one keep-alive connection.
    let client = http1_client_to(proxy.outbound());
    for _ in 0..3 {
        let r = send_with(&client, get("http://reviews:9080/m"), p).await;
        assert_eq!(r.status, 200);
    }
    let m = proxy.metrics().await;
    let requests = format!(
        r#"trellis_requests_total{{direction="outbound",route="{ROUTE}",cluster="{CLUSTER}",code_class="2xx"}}"#
    );
    assert_eq!(metric_value(&m, &requests), Some(3.0), "{m}");
    let count = format!(
        r#"trellis_request_duration_seconds_count{{direction="outbound",cluster="{CLUSTER}"}}"#
    );
    assert_eq!(metric_value(&m, &count), Some(3.0), "{m}");
    let inf = format!(
        r#"trellis_request_duration_seconds_bucket{{le="+Inf",direction="outbound",cluster="{CLUSTER}"}}"#
    );
    assert_eq!(metric_value(&m, &inf), Some(3.0), "{m}");
    assert!(
        m.contains("# TYPE trellis_request_duration_seconds histogram"),
        "{m}"
    );
    let active = r#"trellis_connections_active{listener="outbound"}"#;
    assert_eq!(metric_value(&m, active), Some(1.0), "{m}");
    assert_eq!(
        metric_value(&m, r#"trellis_connections_total{listener="outbound"}"#),
        Some(1.0),
        "{m}"
    );
    drop(client);
    eventually(
        "connections_active to drop to 0",
        Duration::from_secs(5),
        || async { (proxy.metric(active).await == Some(0.0)).then_some(()) },
    )
    .await;

    // /logging: a local reply is logged at debug only.
    let (status, body) = p.admin_get("/logging").await;
    assert_eq!((status, body.as_str()), (200, "level: info\n"));
    proxy
        .get("http://nope.example/before")
        .await
        .assert_local(404, "route_not_found");
    let (status, body) = p.admin_get("/logging?level=debug").await;
    assert_eq!((status, body.as_str()), (200, "level: debug\n"));
    proxy
        .get("http://nope.example/after")
        .await
        .assert_local(404, "route_not_found");
    assert!(
        p.wait_for_log("local reply", Duration::from_secs(5)).await,
        "no debug log after level=debug:\n{}",
        p.logs()
    );
    let logs = p.logs();
    assert_eq!(
        logs.matches("local reply").count(),
        1,
        "only the request after the change is logged at debug:\n{logs}"
    );
    assert!(logs.contains("log level changed"), "{logs}");
    for bad in [
        "/logging?level=loud",
        "/logging?level=info,[",
        "/logging?level=",
    ] {
        let (status, body) = p.admin_get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // A rejected level leaves the current one alone.
    assert_eq!(
        p.admin_get("/logging").await,
        (200, "level: debug\n".into())
    );
}
