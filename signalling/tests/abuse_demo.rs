//! The demo sign-in (a user token for any name, no password) is offered by
//! default only to a real loopback peer: TCP peer on loopback, a `Host` of
//! `localhost`, `127.0.0.1` or `[::1]` (a page whose DNS name was rebound
//! to 127.0.0.1 sends its own), and no header a reverse proxy adds.
//! An operator's explicit `[demo] enabled = true` offers it to everyone.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{TestServer, expect_error};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::json;

/// Whether `GET /api/v1/demo` says the demo is on, and whether
/// `POST /api/v1/demo/sessions` gives a token, for the same request shape.
async fn offered(
    server: &TestServer,
    base: &str,
    shape: impl Fn(RequestBuilder) -> RequestBuilder,
) -> bool {
    let info = common::json(shape(server.client.get(format!("{base}/api/v1/demo")))).await;
    let r = shape(server.client.post(format!("{base}/api/v1/demo/sessions")))
        .json(&json!({"name": "Анна"}))
        .send()
        .await
        .unwrap();
    if r.status() == StatusCode::CREATED {
        assert_eq!(info["enabled"], true, "a token was given, but {info}");
        true
    } else {
        expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
        assert_eq!(info["enabled"], false, "no token, but {info}");
        false
    }
}

/// An address of this machine that is not loopback (the one it would use
/// to reach the internet; no packet is sent).
fn own_non_loopback_ip() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("198.51.100.1:9")
        .expect("this test needs a network interface besides loopback");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

#[tokio::test]
async fn the_demo_is_offered_by_default_only_to_a_plain_loopback_request() {
    let (server, _dir) = TestServer::start().await;
    let base = server.base.clone();
    let port = base.rsplit(':').next().unwrap().to_owned();

    assert!(offered(&server, &base, |r| r).await, "plain loopback");
    for host in ["localhost", "LOCALHOST", "127.0.0.1", "[::1]"] {
        let with_port = format!("{host}:{port}");
        assert!(
            offered(&server, &base, |r| r.header("host", &with_port)).await,
            "Host: {with_port}"
        );
        assert!(
            offered(&server, &base, |r| r.header("host", host)).await,
            "Host: {host}"
        );
    }

    // DNS rebinding: a page of evil.example whose name now resolves to
    // 127.0.0.1 reaches the server, but its requests name evil.example.
    for host in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "",
    ] {
        assert!(
            !offered(&server, &base, |r| r.header("host", host)).await,
            "Host: {host:?}"
        );
    }

    // Anything a proxy adds.
    for (name, value) in [
        ("x-real-ip", "127.0.0.1"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-host", "localhost"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=203.0.113.9"),
        ("via", "1.1 proxy"),
    ] {
        assert!(
            !offered(&server, &base, |r| r.header(name, value)).await,
            "{name}: {value}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_is_not_loopback_gets_no_demo_even_naming_localhost() {
    let dir = tempfile::tempdir().unwrap();
    // Listening on every address; the configured `listen` stays loopback,
    // so only the peer check can refuse.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = TestServer::start_on(
        common::test_config(dir.path()),
        common::default_clock(),
        listener,
    )
    .await;
    let ip = own_non_loopback_ip();
    let remote = format!("http://{}", std::net::SocketAddr::new(ip, port));
    let host = format!("localhost:{port}");
    assert!(
        !offered(&server, &remote, |r| r.header("host", &host)).await,
        "peer {ip}"
    );
    let local = format!("http://127.0.0.1:{port}");
    assert!(
        offered(&server, &local, |r| r).await,
        "the same server on loopback"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_operator_who_turns_the_demo_on_offers_it_to_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.demo.enabled = Some(true);
    let server = TestServer::start_with(config, common::default_clock()).await;
    let base = server.base.clone();
    assert!(
        offered(&server, &base, |r| r
            .header("host", "demo.example.com")
            .header("x-forwarded-for", "203.0.113.9"))
        .await
    );
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.demo.enabled = Some(false);
    let server = TestServer::start_with(config, common::default_clock()).await;
    let base = server.base.clone();
    assert!(!offered(&server, &base, |r| r).await);
    server.stop().await;
}
