//! `trellis top`: live golden signals per service pair, from every
//! connected proxy's admin `/stats/prometheus`. The proxies come from the
//! control plane (`GET /api/v1/proxies`); a proxy's admin is its workload
//! `ADDRESS` on port 15000, the standard port every sidecar of `trellis
//! up` uses (a proxy elsewhere is skipped and counted as unreachable).
//! `trellis up` shows the same table.

pub mod prom;
pub mod signals;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::time::Instant;

use signals::Counts;

/// The admin port of a proxy, derived rather than sent in node metadata:
/// every sidecar of `trellis up` has its own address and the standard port.
pub const ADMIN_PORT: u16 = 15000;

#[derive(Args, Debug)]
pub struct TopArgs {
    /// The control plane's HTTP API (host:port).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub api: SocketAddr,
    /// Print the table once (after one interval) and exit.
    #[arg(long)]
    pub once: bool,
    /// Time between two scrapes.
    #[arg(long, default_value = "1s", value_parser = trellis_model::duration::parse)]
    pub interval: Duration,
}

/// A small async HTTP/1.1 client for the API and the proxies' admin.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Http {
    /// `(status, body)` of a request, within 5 s.
    pub async fn request(
        &self,
        method: http::Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, String), String> {
        let mut req = http::Request::builder().method(method).uri(url);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("bad request to {url}: {e}"))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{url}: reading the body: {e}"))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .map_err(|_| format!("{url}: no answer within 5 s"))?
    }

    /// The JSON body of a 2xx GET.
    pub async fn get_json(&self, url: &str) -> Result<Value, String> {
        let (status, body) = self.request(http::Method::GET, url, None).await?;
        if !(200..300).contains(&status) {
            return Err(format!("{url}: HTTP {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    }
}

/// One round of scrapes.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub counts: Counts,
    pub proxies: usize,
    /// Proxies whose admin did not answer: `name: why`.
    pub unreachable: Vec<String>,
}

/// A proxy from `GET /api/v1/proxies`: its source service and admin URL.
pub fn targets(proxies: &Value) -> Vec<(String, String)> {
    proxies["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let w = &p["workload"];
            let address = w["address"].as_str()?;
            let service = w["labels"]["app"]
                .as_str()
                .or_else(|| w["name"].as_str())?
                .to_string();
            let admin = match address.parse::<std::net::IpAddr>().ok()? {
                std::net::IpAddr::V6(a) => format!("http://[{a}]:{ADMIN_PORT}"),
                a => format!("http://{a}:{ADMIN_PORT}"),
            };
            Some((service, admin))
        })
        .collect()
}

/// Scrape every connected proxy once.
pub async fn snapshot(http: &Http, api: SocketAddr) -> Result<Snapshot, String> {
    let proxies = http
        .get_json(&format!("http://{api}/api/v1/proxies"))
        .await?;
    let targets = targets(&proxies);
    let scrapes = futures_util::future::join_all(targets.iter().map(|(service, admin)| {
        let http = http.clone();
        let url = format!("{admin}/stats/prometheus");
        let service = service.clone();
        async move { (service, http.request(http::Method::GET, &url, None).await) }
    }))
    .await;
    let mut counts = Counts::new();
    let mut unreachable = Vec::new();
    for (service, result) in scrapes {
        match result {
            Ok((200, text)) => signals::add(&mut counts, &service, &prom::parse(&text)),
            Ok((status, _)) => unreachable.push(format!("{service}: HTTP {status}")),
            Err(e) => unreachable.push(e),
        }
    }
    Ok(Snapshot {
        at: Instant::now(),
        counts,
        proxies: targets.len(),
        unreachable,
    })
}

/// The table between two snapshots, with a footer on who was not reached.
pub fn table(prev: &Snapshot, cur: &Snapshot) -> String {
    let secs = cur.at.duration_since(prev.at).as_secs_f64();
    let mut out = signals::render(&signals::rows(&prev.counts, &cur.counts, secs));
    out.push_str(&format!(
        "{} proxies scraped",
        cur.proxies - cur.unreachable.len()
    ));
    if !cur.unreachable.is_empty() {
        out.push_str(&format!("; not reached: {}", cur.unreachable.join("; ")));
    }
    out.push('\n');
    out
}

/// Clear the terminal and draw `text` from the top left.
pub fn redraw(text: &str) {
    print!("\x1b[H\x1b[2J{text}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

pub fn run(a: TopArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let http = Http::default();
        let mut prev = snapshot(&http, a.api)
            .await
            .map_err(|e| format!("cannot read the proxies from the control plane: {e}; is `trellis up` or `trellis control` running (--api)?"))?;
        let live = !a.once && std::io::stdout().is_terminal();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(a.interval) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            let cur = snapshot(&http, a.api).await?;
            let text = table(&prev, &cur);
            if a.once {
                print!("{text}");
                return Ok(());
            }
            if live {
                redraw(&text);
            } else {
                println!("{text}");
            }
            prev = cur;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_the_registered_workloads() {
        let proxies = serde_json::json!({"items": [
            {"node": "a-0.default", "workload": {"name": "a-0", "address": "127.0.1.1", "labels": {"app": "a"}}},
            {"node": "x.default", "workload": {"name": "x", "address": "127.0.1.2", "labels": {}}},
            {"node": "broken", "workload": null, "error": "no ADDRESS"},
        ]});
        assert_eq!(
            targets(&proxies),
            [
                ("a".to_string(), "http://127.0.1.1:15000".to_string()),
                ("x".to_string(), "http://127.0.1.2:15000".to_string()),
            ]
        );
    }
}
