//! `trellis-echo [NAME [ADDR]]`: the test suite's echo server as a program, for
//! the runnable examples (HTTP/1.1, h2c, gRPC echo, WebSocket on one port).
//! Under `trellis up` both come from the app's environment: NAME from
//! `TRELLIS_WORKLOAD`, ADDR from `TRELLIS_LISTEN`.

use std::net::SocketAddr;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .or_else(|| std::env::var("TRELLIS_WORKLOAD").ok());
    let addr = args.next().or_else(|| std::env::var("TRELLIS_LISTEN").ok());
    let (Some(name), Some(addr)) = (name, addr) else {
        eprintln!(
            "usage: trellis-echo NAME ADDR   (e.g. trellis-echo reviews-v1 127.0.0.1:9081)\n       or set TRELLIS_WORKLOAD and TRELLIS_LISTEN, as `trellis up` does"
        );
        std::process::exit(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("trellis-echo: invalid address {addr:?}: {e}");
            std::process::exit(2);
        }
    };
    let server = trellis_testing::EchoServer::start_on(&name, addr).await;
    eprintln!("trellis-echo: {name} listening on {}", server.addr());
    let _ = tokio::signal::ctrl_c().await;
}
