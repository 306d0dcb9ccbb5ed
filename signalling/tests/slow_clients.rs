//! Slow and half-open HTTP clients, through the real server over real
//! sockets: a slowloris client (request head trickled a byte at a time)
//! and a silent one are closed after `http.header_read_timeout_secs` while
//! other clients are served; one client address gets at most
//! `http.connections_per_ip` open connections, the next is closed at
//! once, and a closed connection frees its place.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound on anything the server should do "at once" on a busy
/// two-core machine.
const DEADLINE: Duration = Duration::from_secs(20);

fn addr(server: &TestServer) -> SocketAddr {
    server.base.trim_start_matches("http://").parse().unwrap()
}

/// `GET /healthz` on `stream`, keeping it open; the status line.
async fn get_healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed before the answer");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer");
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

/// Waits until the server closes `stream` (end of stream or reset), and
/// returns what it sent before.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server should have closed the connection");
    got
}

/// Sends a request head a byte every 100 ms, never finishing it, until
/// a write fails.
async fn trickle(to: &mut tokio::net::tcp::OwnedWriteHalf) -> std::io::Result<()> {
    to.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
    for n in 1u64.. {
        tokio::time::sleep(Duration::from_millis(100)).await;
        to.write_all(b"X").await?;
        if n % 20 == 0 {
            to.write_all(b": y\r\n").await?;
        }
    }
    Ok(())
}

fn refused_total(server: &TestServer) -> u64 {
    server
        .services
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with("http_connections_refused_total{reason=\"per_ip\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.http.header_read_timeout_secs = 1;
    let server = TestServer::start_with(config, common::default_clock()).await;
    let timeout = Duration::from_secs(1);

    // Slowloris: a request head a byte every 100 ms, never finished.
    let opened = Instant::now();
    let slow = TcpStream::connect(addr(&server)).await.unwrap();
    let (mut slow_read, mut slow_write) = slow.into_split();
    let trickle = tokio::spawn(async move { trickle(&mut slow_write).await });
    // A silent connection: connects and sends nothing.
    let mut silent = TcpStream::connect(addr(&server)).await.unwrap();

    // Meanwhile another client is served.
    let mut normal = TcpStream::connect(addr(&server)).await.unwrap();
    assert_eq!(get_healthz(&mut normal).await, "HTTP/1.1 200 OK");

    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match slow_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the slowloris connection should have been closed");
    let slow_lived = opened.elapsed();
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "the trickled request was not served: {got:?}"
    );
    assert!(
        slow_lived >= timeout,
        "closed after {slow_lived:?}, before the timeout"
    );
    // The trickle was still going until the server closed: the timeout
    // counts from the accept, not from the last byte.
    let stopped = tokio::time::timeout(DEADLINE, trickle).await;
    assert!(
        matches!(stopped, Ok(Ok(Err(_)))),
        "the trickle ends on the closed connection: {stopped:?}"
    );

    let silent_got = closed_by_server(&mut silent, DEADLINE).await;
    assert!(silent_got.is_empty() || !String::from_utf8_lossy(&silent_got).contains("200"));
    let silent_lived = opened.elapsed();
    println!("slowloris closed after {slow_lived:?}, silent after {silent_lived:?}");

    // An idle keep-alive connection is closed the same way after its
    // answer, and a new connection is served.
    let _ = closed_by_server(&mut normal, DEADLINE).await;
    let mut again = TcpStream::connect(addr(&server)).await.unwrap();
    assert_eq!(get_healthz(&mut again).await, "HTTP/1.1 200 OK");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_at_most_its_connections_and_a_closed_one_frees_a_place() {
    const CAP: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.http.connections_per_ip = CAP;
    // Idle connections must outlive the test's steps.
    config.http.header_read_timeout_secs = 600;
    let server = TestServer::start_with(config, common::default_clock()).await;
    let refused_before = refused_total(&server);

    let mut open = Vec::new();
    for _ in 0..CAP {
        let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
        assert_eq!(get_healthz(&mut stream).await, "HTTP/1.1 200 OK");
        open.push(stream);
    }
    // One more from the same address: accepted by the kernel, closed by
    // the server without an answer.
    let mut extra = TcpStream::connect(addr(&server)).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    let got = closed_by_server(&mut extra, DEADLINE).await;
    assert!(got.is_empty(), "refused without an answer: {got:?}");
    assert!(refused_total(&server) > refused_before, "counted");

    // The admitted ones still work.
    for stream in &mut open {
        assert_eq!(get_healthz(stream).await, "HTTP/1.1 200 OK");
    }

    // Closing two frees two places (once the server has seen them close).
    drop(open.pop());
    drop(open.pop());
    let started = Instant::now();
    while open.len() < CAP {
        assert!(
            started.elapsed() < DEADLINE,
            "closed connections did not free their places"
        );
        let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await;
        let mut first = [0u8; 12];
        match tokio::time::timeout(DEADLINE, stream.read_exact(&mut first)).await {
            Ok(Ok(_)) => {
                assert_eq!(&first, b"HTTP/1.1 200");
                // Read the rest of the answer so that the next request
                // on it starts clean.
                let mut rest = [0u8; 4096];
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), stream.read(&mut rest)).await;
                open.push(stream);
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // Full again: the next one is refused.
    let mut extra = TcpStream::connect(addr(&server)).await.unwrap();
    assert!(closed_by_server(&mut extra, DEADLINE).await.is_empty());
    drop(open);
    server.stop().await;
}
