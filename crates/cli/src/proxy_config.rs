//! `trellis proxy-config WORKLOAD`: find the workload's proxy, then print
//! what the control plane sent it (`GET /api/v1/proxies/{node}/config`).

use serde_json::Value;

use crate::output::columns;

/// The node id of the connected proxy running `workload` in `namespace`
/// (or whose node id is `workload`), from `GET /api/v1/proxies`. The error
/// lists the candidates.
pub fn pick_node(proxies: &Value, workload: &str, namespace: &str) -> Result<String, String> {
    let items = proxies["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if let Some(p) = items.iter().find(|p| p["node"] == workload) {
        return Ok(p["node"].as_str().unwrap_or(workload).to_string());
    }
    let matches: Vec<&str> = items
        .iter()
        .filter(|p| p["workload"]["name"] == workload && p["workload"]["namespace"] == namespace)
        .filter_map(|p| p["node"].as_str())
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => {
            let known: Vec<String> = items
                .iter()
                .map(|p| match p["workload"]["name"].as_str() {
                    Some(name) => format!(
                        "{}/{name}",
                        p["workload"]["namespace"].as_str().unwrap_or("?")
                    ),
                    None => format!("node {}", p["node"].as_str().unwrap_or("?")),
                })
                .collect();
            Err(format!(
                "no connected proxy runs workload {workload:?} in namespace {namespace}; connected: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        }
        many => Err(format!(
            "{} proxies run workload {workload:?} in namespace {namespace} (nodes {}); name one by its node id",
            many.len(),
            many.join(", ")
        )),
    }
}

fn short(v: &Value) -> String {
    match v.as_str() {
        Some(s) if s.len() > 12 => s[..12].to_string(),
        Some(s) => s.to_string(),
        None => "-".into(),
    }
}

fn nack(t: &Value) -> String {
    match t["lastNack"]["message"].as_str() {
        Some(m) => format!("{} rejected: {m}", short(&t["lastNack"]["version"])),
        None => "-".into(),
    }
}

/// One row per type; with `names`, every resource's name and version under
/// its type.
pub fn table(v: &Value, names: bool) -> String {
    let mut out = format!(
        "Node {}: generation {}, {}\n",
        v["node"].as_str().unwrap_or("?"),
        v["generation"],
        if v["acked"] == true {
            "everything sent is ACKed"
        } else {
            "not everything sent is ACKed"
        }
    );
    let mut rows = vec![vec![
        "TYPE".to_string(),
        "SENT".into(),
        "ACKED".into(),
        "PENDING".into(),
        "RESOURCES".into(),
        "LAST NACK".into(),
    ]];
    let types = v["types"].as_object().cloned().unwrap_or_default();
    for (name, t) in &types {
        let count = t["resources"].as_array().map_or(0, Vec::len);
        rows.push(vec![
            name.clone(),
            short(&t["sent"]),
            short(&t["acked"]),
            if t["pending"] == true { "yes" } else { "no" }.into(),
            count.to_string(),
            nack(t),
        ]);
    }
    out.push_str(&columns(&rows));
    if names {
        for (name, t) in &types {
            out.push_str(&format!("\n{name}:\n"));
            let mut rows = vec![vec!["  NAME".to_string(), "VERSION".into()]];
            for r in t["resources"].as_array().into_iter().flatten() {
                rows.push(vec![
                    format!("  {}", r["name"].as_str().unwrap_or("?")),
                    short(&r["version"]),
                ]);
            }
            out.push_str(&columns(&rows));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_workload_name_finds_one_node_or_explains() {
        let proxies = json!({"items": [
            {"node": "inference-v1-0.default", "workload": {"name": "inference-v1-0", "namespace": "default"}},
            {"node": "x1", "workload": {"name": "twin", "namespace": "default"}},
            {"node": "x2", "workload": {"name": "twin", "namespace": "default"}},
            {"node": "broken", "workload": null},
        ]});
        assert_eq!(
            pick_node(&proxies, "inference-v1-0", "default"),
            Ok("inference-v1-0.default".into())
        );
        assert_eq!(pick_node(&proxies, "x2", "other"), Ok("x2".into()));
        assert_eq!(
            pick_node(&proxies, "twin", "default"),
            Err("2 proxies run workload \"twin\" in namespace default (nodes x1, x2); name one by its node id".into())
        );
        assert_eq!(
            pick_node(&proxies, "inference-v1-0", "shop"),
            Err("no connected proxy runs workload \"inference-v1-0\" in namespace shop; connected: \
                 default/inference-v1-0, default/twin, default/twin, node broken".into())
        );
    }
}
