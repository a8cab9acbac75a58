//! ProxyProcess against a fake proxy (tests/fake_proxy.py).

use std::path::{Path, PathBuf};
use std::time::Duration;

use trellis_testing::{ProxyProcess, StartError, python};

fn fake() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fake_proxy.py")
        .display()
        .to_string()
}

fn alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn start_reads_addr_file_and_serves_admin() {
    let fake = fake();
    let proxy = ProxyProcess::start(&python(), &[&fake, "--mode", "ok"]).await;
    for addr in [proxy.outbound(), proxy.inbound(), proxy.admin()] {
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
    }
    assert_eq!(proxy.addr("hbone"), None);
    assert_eq!(proxy.admin_get("/ready").await, (200, "ready\n".to_owned()));
    assert_eq!(
        proxy.admin_get("/nope").await,
        (404, "no route /nope\n".to_owned())
    );
    assert!(
        proxy
            .wait_for_log("admin: \"GET /nope", Duration::from_secs(5))
            .await
    );
    let logs = proxy.logs();
    assert!(logs.contains("fake-proxy: stdout hello"), "{logs}");
    assert!(logs.contains("fake-proxy: starting in mode ok"), "{logs}");
    let pid = proxy.pid();
    assert!(alive(pid));
    drop(proxy);
    assert!(!alive(pid), "the proxy outlived its handle");
}

#[tokio::test]
async fn early_exit_reports_status_and_output() {
    let err = ProxyProcess::command(&python())
        .args([fake().as_str(), "--mode", "exit"])
        .start()
        .await
        .err()
        .expect("the fake exits, start must fail");
    match &err {
        StartError::Exited { status, logs } => {
            assert_eq!(status.code(), Some(3));
            assert!(
                logs.contains("listeners[0].port: expected a number"),
                "{logs}"
            );
        }
        other => panic!("expected Exited, got {other}"),
    }
    assert!(err.to_string().contains("listeners[0].port"));
}

#[tokio::test]
async fn timeout_kills_the_process() {
    let err = ProxyProcess::command(&python())
        .args([fake().as_str(), "--mode", "hang"])
        .env("PYTHONUNBUFFERED", "1")
        .start_timeout(Duration::from_millis(700))
        .start()
        .await
        .err()
        .expect("the fake never writes the file");
    match err {
        StartError::Timeout { after, logs } => {
            assert_eq!(after, Duration::from_millis(700));
            assert!(logs.contains("starting in mode hang"), "{logs}");
        }
        other => panic!("expected Timeout, got {other}"),
    }
}

#[tokio::test]
async fn garbage_addr_file_is_reported() {
    let err = ProxyProcess::command(&python())
        .args([fake().as_str(), "--mode", "garbage"])
        .start()
        .await
        .err()
        .expect("the addr file is not JSON");
    match err {
        StartError::BadAddrFile {
            contents, reason, ..
        } => {
            assert_eq!(contents, "not json");
            assert!(reason.starts_with("not JSON"), "{reason}");
        }
        other => panic!("expected BadAddrFile, got {other}"),
    }
}

#[tokio::test]
async fn missing_binary_is_a_spawn_error() {
    let err = ProxyProcess::command(Path::new("/nonexistent/trellis-proxy"))
        .start()
        .await
        .err()
        .expect("no such binary");
    assert!(matches!(err, StartError::Spawn { .. }), "{err}");
}

#[tokio::test]
async fn sigterm_ends_the_process() {
    let fake = fake();
    let mut proxy = ProxyProcess::start(&python(), &[&fake]).await;
    proxy.sigterm();
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("still running after SIGTERM");
    assert!(!status.success());
}
