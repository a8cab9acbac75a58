use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_testing::{BannerServer, TcpEchoServer};

async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("no EOF from the server within 5 s")
        .unwrap();
    out
}

#[tokio::test]
async fn tcp_echo_answers_after_half_close_then_closes() {
    let server = TcpEchoServer::start().await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let data: Vec<u8> = b"0123456789"
        .iter()
        .copied()
        .cycle()
        .take(100_000)
        .collect();
    stream.write_all(&data).await.unwrap();
    // Nothing comes back before our half-close.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "server answered before the half-close: {early:?}"
    );
    stream.shutdown().await.unwrap();
    let reply = read_to_end(&mut stream).await;
    let expected = format!(
        "received 100000 bytes: {}",
        "0123456789".repeat(7).get(..64).unwrap()
    );
    assert_eq!(String::from_utf8(reply).unwrap(), expected);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn tcp_echo_counts_empty_stream() {
    let server = TcpEchoServer::start().await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut stream).await, b"received 0 bytes: ");
}

#[tokio::test]
async fn banner_comes_first_then_echo() {
    let server = BannerServer::start(b"220 smtp.test ready\r\n").await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    // The client sends nothing: the banner must arrive anyway.
    let mut banner = [0u8; 21];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut banner))
        .await
        .expect("no banner within 5 s")
        .unwrap();
    assert_eq!(&banner, b"220 smtp.test ready\r\n");
    stream.write_all(b"EHLO client\r\n").await.unwrap();
    let mut echo = [0u8; 13];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"EHLO client\r\n");
    stream.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut stream).await, b"");
    assert_eq!(server.connections(), 1);
}
