//! Turning the command line into a running service: settings resolved,
//! listener bound, handlers served until SIGINT/SIGTERM.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::Uri;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use thiserror::Error;
use tokio::net::TcpListener;

use crate::cli::{Command, Model};
use crate::client::Upstream;
use crate::latency::Latency;
use crate::load::{self, LoadSettings, Stats};
use crate::settings::{Identity, SettingsError, parse_duration, resolve_via};
use crate::stages::{Role, Stage};

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(
        "cannot listen on {addr}: {source} (is another process on that port? set TRELLIS_LISTEN or --listen)"
    )]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot write the addr file {path}: {source}")]
    AddrFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot wait for signals: {0}")]
    Signals(std::io::Error),
}

/// Runs the command until a signal (or, for `load --count`, until done).
pub async fn run(command: Command) -> Result<(), RunError> {
    let env = |k: &str| std::env::var(k).ok();
    let common = command.common();
    let via = resolve_via(common.proxy.as_deref(), common.outbound.as_deref(), env)?;
    let timeout = flag_duration("timeout", &common.timeout)?;
    let upstream = Upstream::new(via, timeout);
    let listen = common
        .listen
        .clone()
        .or_else(|| env("TRELLIS_LISTEN").filter(|v| !v.is_empty()))
        .unwrap_or_else(|| command.default_listen().to_string());
    let addr_file = common.addr_file.clone();
    let mut load_settings = None;
    let role = match &command {
        Command::Gateway { next, .. } => Role::Gateway {
            next: next_hop("next", next)?,
        },
        Command::Preprocess {
            next,
            max_prompt_chars,
            ..
        } => Role::Preprocess {
            next: next_hop("next", next)?,
            max_prompt_chars: *max_prompt_chars,
        },
        Command::Inference {
            model,
            latency_ms,
            sigma,
            max_tokens,
            next,
            ..
        } => {
            let mut latency = match model {
                Model::Slow => Latency::SLOW,
                Model::Fast => Latency::FAST,
            };
            if let Some(ms) = latency_ms {
                latency.median = std::time::Duration::try_from_secs_f64(ms / 1000.0)
                    .map_err(|e| bad_flag("latency-ms", &ms.to_string(), e.to_string()))?;
            }
            if !(0.0..=2.0).contains(sigma) {
                return Err(bad_flag(
                    "sigma",
                    &sigma.to_string(),
                    "must be between 0 and 2".into(),
                )
                .into());
            }
            latency.sigma = *sigma;
            Role::Inference {
                next: next_hop("next", next)?,
                model: model.name().to_string(),
                latency,
                max_tokens: *max_tokens,
            }
        }
        Command::Postprocess { .. } => Role::Postprocess,
        Command::Load {
            target,
            rate,
            concurrency,
            report_every,
            count,
            ..
        } => {
            if !(rate.is_finite() && *rate > 0.0 && *rate <= 100_000.0) {
                return Err(bad_flag(
                    "rate",
                    &rate.to_string(),
                    "must be above 0 and at most 100000 requests per second".into(),
                )
                .into());
            }
            if !(1..=10_000).contains(concurrency) {
                return Err(bad_flag(
                    "concurrency",
                    &concurrency.to_string(),
                    "must be between 1 and 10000".into(),
                )
                .into());
            }
            load_settings = Some(LoadSettings {
                target: next_hop("target", target)?,
                rate: *rate,
                concurrency: *concurrency,
                report_every: flag_duration("report-every", report_every)?,
                count: *count,
            });
            Role::Load {
                stats: Arc::new(Stats::default()),
            }
        }
    };
    let me = Identity::from_env(role.default_service(), env);
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: listen.clone(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| RunError::Listen {
        addr: listen.clone(),
        source,
    })?;
    if let Some(path) = &addr_file {
        write_addr_file(path, bound)?;
    }
    let stats = match &role {
        Role::Load { stats } => Some(stats.clone()),
        _ => None,
    };
    let stage = Arc::new(Stage {
        me,
        role,
        upstream: upstream.clone(),
    });
    let serving = tokio::spawn(serve(listener, stage));
    let work = async {
        match (load_settings, stats) {
            (Some(settings), Some(stats)) => {
                let once = settings.count.is_some();
                load::run(settings, upstream, stats.clone()).await;
                if once {
                    println!(
                        "{}",
                        serde_json::to_string(&stats.snapshot()).unwrap_or_default()
                    );
                    return;
                }
                std::future::pending::<()>().await;
            }
            _ => std::future::pending::<()>().await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Signals)?;
    tokio::select! {
        () = work => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    serving.abort();
    Ok(())
}

async fn serve(listener: TcpListener, stage: Arc<Stage>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stage = stage.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let stage = stage.clone();
                async move { Ok::<_, Infallible>(stage.handle(req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `http://name:port` for a next hop or load target.
fn next_hop(flag: &'static str, value: &str) -> Result<Uri, SettingsError> {
    let uri: Uri = value
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad_flag(flag, value, e.to_string()))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(bad_flag(
            flag,
            value,
            "expected http://SERVICE:PORT (the sidecar originates TLS, the app speaks plain HTTP)"
                .into(),
        ));
    }
    Ok(uri)
}

fn flag_duration(flag: &'static str, value: &str) -> Result<std::time::Duration, SettingsError> {
    parse_duration(value).map_err(|reason| bad_flag(flag, value, reason))
}

fn bad_flag(flag: &'static str, value: &str, reason: String) -> SettingsError {
    SettingsError::BadFlag {
        flag,
        value: value.to_string(),
        reason,
    }
}

/// Written to a temp name and renamed, so a reader never sees half of it.
fn write_addr_file(path: &Path, addr: SocketAddr) -> Result<(), RunError> {
    let err = |source| RunError::AddrFile {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{{\"listen\":\"{addr}\"}}")).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
