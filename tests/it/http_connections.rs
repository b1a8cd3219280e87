//! Idle HTTP connections must not take the service down. The probes server
//! closes idle and slow connections, caps open connections, and the service keeps answering
//! dispatches and probes while hundreds of idle sockets are held open.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;
use operation_runs::client::producer::{DispatchRequest, Producer};
use operation_runs::http::server::HttpLimits;
use operation_runs::service::health;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::helpers::{amqp_url, wait_until, TestApp, DEADLINE};

/// One request on a fresh connection that asks to be closed; the whole response.
pub async fn http_get_close(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut out))
        .await
        .expect("the response ends in time")
        .unwrap();
    out
}

/// Reads (and discards) until the server closes `stream`; how long that took from `since`.
/// Panics if it stays open past `limit`.
async fn wait_closed(mut stream: TcpStream, since: Instant, limit: Duration) -> Duration {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout_at(since + limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept an idle connection open for more than {limit:?}"
    );
    since.elapsed()
}

/// Sends one keep-alive request and reads its complete (small) response, leaving the
/// connection open and idle.
async fn one_keep_alive_request(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"ok\n") {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("the response arrives")
            .unwrap();
        assert!(n > 0, "the server closed a keep-alive connection early");
        seen.extend_from_slice(&buf[..n]);
    }
}

fn policy_request(policy_id: i64) -> DispatchRequest {
    DispatchRequest {
        run_type: "policy.sync".into(),
        workspace_id: 1,
        tenant_id: Some(10),
        user_id: None,
        initiator_name: None,
        context: json!({ "policy_id": policy_id }),
    }
}

#[sqlx::test]
async fn hundreds_of_idle_connections_neither_starve_dispatches_nor_stay_open(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let service = app.service();
    let stop = CancellationToken::new();
    let idle = Duration::from_secs(4);
    let server = health::spawn_with(
        "127.0.0.1:0".parse().unwrap(),
        service.health.clone(),
        service.metrics.clone(),
        HttpLimits {
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: idle,
            max_connections: 1000,
        },
        stop.clone(),
    )
    .await
    .unwrap();

    // 300 connections that never send a byte, 100 that made one keep-alive request and went
    // quiet: the two ways a client leaves a socket idle.
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut kept_alive = join_all((0..100).map(|_| async {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        one_keep_alive_request(&mut s).await;
        s
    }))
    .await;
    let last_activity = Instant::now();

    let producer = Producer::connect(&amqp_url(), app.topology.namespace())
        .await
        .unwrap();
    for policy_id in 1..=5 {
        let reply = producer
            .dispatch_and_wait(&policy_request(policy_id), DEADLINE)
            .await
            .expect("a dispatch is answered while idle connections are held");
        assert!(!reply.deduplicated);
        assert!(http_get_close(server.addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200"));
    }
    assert!(
        server.open_connections() >= 400,
        "the 400 idle connections were still open during the dispatches (open: {})",
        server.open_connections()
    );
    producer.close().await;

    // Every one of them is closed by the server within the idle timeout (plus the watchdog's
    // check period and scheduling slack), not left open for ever.
    let limit = idle + Duration::from_secs(4);
    let closed_after = join_all(
        silent
            .into_iter()
            .map(|s| wait_closed(s, opened, limit + opened.elapsed())),
    )
    .await;
    assert!(closed_after.iter().all(|d| *d >= idle), "{closed_after:?}");
    let kept_alive_closed = join_all(
        kept_alive
            .drain(..)
            .map(|s| wait_closed(s, last_activity, limit)),
    )
    .await;
    assert_eq!(kept_alive_closed.len(), 100);
    wait_until("the server to count no open connection", || async {
        (server.open_connections() == 0).then_some(())
    })
    .await;
    stop.cancel();
    app.shutdown().await;
}

#[sqlx::test]
async fn the_connection_cap_bounds_open_sockets_and_later_clients_are_still_served(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let service = app.service();
    let stop = CancellationToken::new();
    let cap = 16;
    let server = health::spawn_with(
        "127.0.0.1:0".parse().unwrap(),
        service.health.clone(),
        service.metrics.clone(),
        HttpLimits {
            header_read_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(500),
            max_connections: cap,
        },
        stop.clone(),
    )
    .await
    .unwrap();

    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // While the 100 are queued, the server never holds more than the cap. The sampling runs for
    // a fixed time on purpose: what is tested is the cap holding while the 500 ms idle timeout
    // closes sockets and queued ones are accepted (three idle periods), not a unit of work that
    // could be driven.
    let mut most = 0;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_millis(1500) {
        most = most.max(server.open_connections());
        assert!(most <= cap, "{most} connections open, cap {cap}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(most, cap, "the server fills its cap");
    // A client behind them all is served once the idle ones have been closed.
    assert!(http_get_close(server.addr, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    join_all(idle.into_iter().map(|s| wait_closed(s, opened, DEADLINE))).await;
    stop.cancel();
    app.shutdown().await;
}

#[sqlx::test]
async fn a_client_trickling_its_headers_is_cut_off_by_the_header_timeout(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let service = app.service();
    let stop = CancellationToken::new();
    let server = health::spawn_with(
        "127.0.0.1:0".parse().unwrap(),
        service.health.clone(),
        service.metrics.clone(),
        HttpLimits {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
            max_connections: 10,
        },
        stop.clone(),
    )
    .await
    .unwrap();

    // One header byte every 100 ms keeps the connection busy, so only the header timeout can
    // end it.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let request = b"GET /healthz HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut_off = false;
    for byte in request {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    assert!(cut_off, "the server waited for a trickled header for ever");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off after {:?}",
        started.elapsed()
    );
    stop.cancel();
    app.shutdown().await;
}
