//! Signs `--count` CSRs through `istio.v1.auth.IstioCertificateService/
//! CreateCertificate` of a running `trellis control` (its xDS address),
//! `--concurrency` requests in flight over `--connections` HTTP/2
//! connections, and prints the rate and latency as one JSON line.
//!
//! The CSRs are made before the clock starts (a pool of distinct keys,
//! reused round-robin: the CA's work does not depend on the key), so the
//! number is the control plane's: token check, CSR signature check, signing.
//!
//! ```text
//! TOKEN=$(trellis token create -n bench --service-account load)
//! trellis-ca-sign --xds 127.0.0.1:15010 --token "$TOKEN" --count 20000 --concurrency 64
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use trellis_identity::proto::{
    CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse,
};

#[derive(Parser, Debug)]
struct Args {
    /// The control plane's xDS listener (where CreateCertificate is served).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: String,
    /// A bootstrap token (`trellis token create`).
    #[arg(long, env = "TRELLIS_TOKEN")]
    token: String,
    /// CSRs to sign (after `--warmup` more).
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Distinct CSRs (keys) generated up front.
    #[arg(long, default_value_t = 256)]
    keys: usize,
    /// Requested certificate lifetime, seconds (0: the CA's default).
    #[arg(long, default_value_t = 3600)]
    validity: i64,
}

type Grpc = tonic::client::Grpc<tonic::transport::Channel>;

async fn sign(grpc: &mut Grpc, token: &str, csr: &str, validity: i64) -> Result<(), String> {
    grpc.ready().await.map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: validity,
        metadata: None,
    });
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token is not a valid header value".to_owned())?;
    req.metadata_mut().insert("authorization", auth);
    let resp: tonic::Response<IstioCertificateResponse> = grpc
        .unary(
            req,
            http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    if resp.get_ref().cert_chain.len() < 2 {
        return Err("a chain without its root".into());
    }
    Ok(())
}

/// Runs `total` requests with `args.concurrency` workers; latencies in µs.
async fn run(
    args: &Args,
    channels: &[tonic::transport::Channel],
    csrs: &Arc<Vec<String>>,
    total: usize,
) -> Result<(Duration, Histogram<u64>), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let mut grpc = tonic::client::Grpc::new(channels[w % channels.len()].clone());
        let (next, csrs, token, validity) = (
            next.clone(),
            csrs.clone(),
            args.token.clone(),
            args.validity,
        );
        workers.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, String>(h);
                }
                let t = Instant::now();
                sign(&mut grpc, &token, &csrs[i % csrs.len()], validity).await?;
                let _ = h.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
        }));
    }
    let mut all = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for w in workers {
        let h = w.await.map_err(|e| e.to_string())??;
        all.add(h).map_err(|e| e.to_string())?;
    }
    Ok((started.elapsed(), all))
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..args.keys.max(1))
            .map(|_| {
                let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
                rcgen::CertificateParams::default()
                    .serialize_request(&key)
                    .and_then(|c| c.pem())
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut channels = Vec::new();
        for _ in 0..args.connections.max(1) {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", args.xds))
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", args.xds))?;
            channels.push(ch);
        }
        run(&args, &channels, &csrs, args.warmup).await?;
        let (took, h) = run(&args, &channels, &csrs, args.count).await?;
        let rate = args.count as f64 / took.as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "csrs": args.count,
                "concurrency": args.concurrency,
                "connections": channels.len(),
                "seconds": took.as_secs_f64(),
                "csrs_per_second": rate.round(),
                "latency_us": {
                    "p50": h.value_at_quantile(0.5),
                    "p99": h.value_at_quantile(0.99),
                    "max": h.max(),
                },
            })
        );
        Ok(())
    })
}
