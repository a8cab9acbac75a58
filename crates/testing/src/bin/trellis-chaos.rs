//! `trellis-chaos NAME ADDR [--idle-close MIN_MS,MAX_MS]`: the misbehaving
//! test upstream as a program. Prints its address on stdout (one line), then
//! serves until interrupted; steer it with `x-chaos-*` request headers or
//! its admin API (`POST /_chaos`, `GET /_chaos/stats`, `POST /_chaos/reset`).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use trellis_testing::{Behavior, ChaosServer};

const USAGE: &str = "usage: trellis-chaos NAME ADDR [--idle-close MIN_MS,MAX_MS]   \
                     (e.g. trellis-chaos flaky 127.0.0.1:0 --idle-close 50,200)";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, addr, behavior) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(msg) => {
            eprintln!("trellis-chaos: {msg}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let server = ChaosServer::start_on(&name, addr).await;
    server.set(behavior);
    eprintln!("trellis-chaos: {name} listening on {}", server.addr());
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{}", server.addr());
    let _ = stdout.flush();
    let _ = tokio::signal::ctrl_c().await;
}

fn parse(args: &[String]) -> Result<(String, SocketAddr, Behavior), String> {
    let mut positional = Vec::new();
    let mut behavior = Behavior::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--idle-close" => {
                let value = it.next().ok_or("--idle-close needs MIN_MS,MAX_MS")?;
                behavior.idle_close = Some(idle_range(value)?);
            }
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}")),
            _ => positional.push(arg),
        }
    }
    let [name, addr] = positional[..] else {
        return Err("expected NAME and ADDR".into());
    };
    let addr = addr
        .parse()
        .map_err(|e| format!("invalid address {addr:?}: {e}"))?;
    behavior.validate()?;
    Ok((name.clone(), addr, behavior))
}

fn idle_range(value: &str) -> Result<(Duration, Duration), String> {
    let bad = || format!("--idle-close: expected MIN_MS,MAX_MS, got {value:?}");
    let (min, max) = value.split_once(',').ok_or_else(bad)?;
    let ms = |s: &str| {
        s.trim()
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| bad())
    };
    Ok((ms(min)?, ms(max)?))
}
