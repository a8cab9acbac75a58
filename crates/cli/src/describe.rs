//! `trellis describe service NAME`: the answer of
//! `GET /api/v1/services/{namespace}/{name}` as an operator reads it.

use serde_json::Value;

use crate::output::columns;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn labels(v: &Value) -> String {
    let text: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    if text.is_empty() {
        "-".into()
    } else {
        text.join(",")
    }
}

/// `3 (2 acked): a, b, c`, or `none`.
fn proxies(v: &Value) -> String {
    let list = v.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if list.is_empty() {
        return "none".into();
    }
    let acked = list.iter().filter(|p| p["acked"] == true).count();
    let nodes: Vec<String> = list.iter().map(|p| s(&p["node"])).collect();
    format!("{} ({acked} acked): {}", list.len(), nodes.join(", "))
}

pub fn service(v: &Value) -> String {
    let mut out = String::new();
    let entry = &v["serviceEntry"];
    out.push_str(&columns(&[
        vec!["Name:".into(), s(&v["host"])],
        vec!["Namespace:".into(), s(&v["namespace"])],
        vec![
            "ServiceEntry:".into(),
            format!("{}/{}", s(&entry["namespace"]), s(&entry["name"])),
        ],
        vec!["  sent to:".into(), proxies(&entry["proxies"])],
        vec!["Resolution:".into(), s(&v["resolution"])],
        vec!["Selector:".into(), labels(&v["workloadSelector"])],
    ]));
    out.push_str("Ports:\n");
    let mut rows = vec![vec![
        "  PORT".to_string(),
        "NAME".into(),
        "PROTOCOL".into(),
        "TARGET PORT".into(),
    ]];
    for p in v["ports"].as_array().into_iter().flatten() {
        rows.push(vec![
            format!("  {}", s(&p["number"])),
            s(&p["name"]),
            s(&p["protocol"]),
            s(&p["targetPort"]),
        ]);
    }
    out.push_str(&columns(&rows));
    let eps = v["endpoints"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let rows = eps.iter().map(|e| {
        let proxy = match e["proxy"]["connected"].as_bool() {
            None => "-".to_string(),
            Some(false) => "disconnected".into(),
            Some(true) => format!(
                "{} (generation {})",
                if e["proxy"]["acked"] == true {
                    "acked"
                } else {
                    "not acked"
                },
                s(&e["proxy"]["generation"])
            ),
        };
        vec![
            format!("  {}", s(&e["address"])),
            format!("{} ({})", s(&e["port"]), s(&e["portName"])),
            s(&e["workload"]),
            s(&e["health"]),
            proxy,
            labels(&e["labels"]),
        ]
    });
    section(
        &mut out,
        "Endpoints",
        &["ADDRESS", "PORT", "WORKLOAD", "HEALTH", "PROXY", "LABELS"],
        rows.collect(),
    );
    let policies = v["policies"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let rows = policies.iter().map(|p| {
        vec![
            format!("  {}", s(&p["kind"])),
            format!("{}/{}", s(&p["namespace"]), s(&p["name"])),
            s(&p["why"]),
            proxies(&p["proxies"]),
        ]
    });
    section(
        &mut out,
        "Policies",
        &["KIND", "NAME", "APPLIES", "SENT TO"],
        rows.collect(),
    );
    out
}

/// `TITLE:` and an indented table of `rows` under `header`, or `TITLE:
/// none` when there are no rows.
fn section(out: &mut String, title: &str, header: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        out.push_str(&format!("{title}: none\n"));
        return;
    }
    out.push_str(&format!("{title}:\n"));
    let mut head: Vec<String> = header.iter().map(|h| (*h).to_string()).collect();
    head[0] = format!("  {}", head[0]);
    let mut table = vec![head];
    table.extend(rows);
    out.push_str(&columns(&table));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_service_reads_top_down() {
        let v = json!({
            "host": "inference.default.svc.cluster.local", "namespace": "default",
            "serviceEntry": {"kind": "ServiceEntry", "namespace": "default", "name": "inference",
                             "proxies": [{"node": "a", "acked": true, "generation": 3}]},
            "resolution": "STATIC", "workloadSelector": {"app": "inference"},
            "ports": [{"number": 9090, "name": "http", "protocol": "HTTP", "targetPort": null}],
            "endpoints": [{"address": "127.0.1.2", "port": 15006, "portName": "http", "workload": "inference-v1-0",
                           "health": "unhealthy", "labels": {"app": "inference"},
                           "proxy": {"connected": true, "acked": true, "generation": 3}}],
            "policies": [{"kind": "AuthorizationPolicy", "namespace": "default", "name": "only-preprocess",
                          "why": "authorizes requests to workloads inference-v1-0", "proxies": []}],
        });
        let text = super::service(&v);
        assert!(
            text.starts_with("Name:           inference.default.svc.cluster.local\n"),
            "{text}"
        );
        assert!(text.contains("  sent to:      1 (1 acked): a\n"), "{text}");
        assert!(text.contains("  127.0.1.2   15006 (http)   inference-v1-0   unhealthy   acked (generation 3)   app=inference\n"), "{text}");
        assert!(text.contains("  AuthorizationPolicy   default/only-preprocess   authorizes requests to workloads inference-v1-0   none\n"), "{text}");
    }
}
