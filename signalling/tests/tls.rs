//! Built-in TLS: with `[tls]` the server speaks HTTPS and WSS itself from
//! the configured PEM files (and hands out `https://` file URLs), the real
//! binary picks up replaced files on
//! SIGHUP or by itself (new connections get the new certificate, open ones
//! continue), keeps the old certificate when the new files are bad, and
//! refuses to start on a missing or mismatched key.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::Process;
use common::tls::{self, TestCert};
use common::{TestServer, Ws, default_clock, test_config, user_token};
use confer_signalling::config::TlsConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_signalling");

/// The certificate and key paths in `dir`.
fn pem_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// A signalling process serving `cert.pem`/`key.pem` of `dir`, checking
/// the files every `watch_secs` (0: on SIGHUP only).
fn start_tls_process(dir: &Path, watch_secs: &str) -> Process {
    let (cert, key) = pem_paths(dir);
    let server = Process::start_with_env(
        &dir.join("data"),
        &[
            ("CONFER_TLS__CERT", cert.as_os_str()),
            ("CONFER_TLS__KEY", key.as_os_str()),
            ("CONFER_TLS__WATCH_SECS", OsStr::new(watch_secs)),
        ],
    );
    assert!(server.base.starts_with("https://"), "{}", server.base);
    server
}

/// Opens new connections until one presents `expected` (10 s at most).
async fn wait_for_certificate(server: &Process, trusted: &[&TestCert], expected: &TestCert) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, presented) = tls::connect(server.addr(), trusted).await;
        if presented == expected.der {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "new connections still get the old certificate after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.1 request on an established TLS connection; the status line.
async fn status_line(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
        .await
        .expect("an answer within 20 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// An in-process server with `[tls]` on a new certificate for `name` in
/// `dir`; returns the server and the certificate.
async fn tls_server(dir: &Path, name: &str, watch_secs: u64) -> (TestServer, TestCert) {
    let cert = TestCert::new(name);
    let (cert_path, key_path) = pem_paths(dir);
    cert.write(&cert_path, &key_path);
    let mut config = test_config(&dir.join("data"));
    config.tls = Some(TlsConfig {
        cert: cert_path,
        key: key_path,
        watch_secs,
    });
    let server = TestServer::start_with(config, default_clock()).await;
    assert!(server.base.starts_with("https://"), "{}", server.base);
    (server, cert)
}

#[tokio::test]
async fn https_and_wss_are_served_from_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path(), "first.confer.test", 5).await;

    // HTTPS from a client that trusts only this certificate.
    let r = server.get("/healthz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let addr = server.base.trim_start_matches("https://").parse().unwrap();
    let (_, presented) = tls::connect(addr, &[&cert]).await;
    assert_eq!(presented, cert.der);

    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(server.base.replacen("https://", "http://", 1) + "/healthz")
        .send()
        .await;
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| r.status() != StatusCode::OK),
        "{plain:?}"
    );

    // WSS: a user authenticates with a token and gets its welcome.
    let app = server.register("tls@example.com", "TLS ERP").await;
    let (token, user_id) = user_token(&server, &app, "alice", &[]).await;
    let mut ws = Ws::connect(&server, &token, None).await;
    assert_eq!(ws.welcome["user_id"], user_id, "{}", ws.welcome);

    // The local file backend's URLs are https:// too.
    let (_, bob) = user_token(&server, &app, "bob", &[]).await;
    let created = ws
        .request(json!({"type": "create_conversation", "title": "TLS", "members": [bob]}))
        .await;
    assert_eq!(created["type"], "ack", "{created}");
    let r = server
        .post(&format!(
            "/api/v1/conversations/{}/files",
            created["conversation"]["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .json(&json!({"name": "a.txt", "size": 5, "content_type": "text/plain"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let ticket: Value = r.json().await.unwrap();
    let url = ticket["upload"]["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/", server.base)), "{url}");
    drop(ws);

    // Graceful shutdown returns (stop() checks that run() ended with Ok).
    server.stop().await;
}

#[tokio::test]
async fn the_binary_reloads_its_certificate_on_sighup_and_keeps_it_when_the_new_one_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = pem_paths(dir.path());
    let first = TestCert::new("first.confer.test");
    let second = TestCert::new("second.confer.test");
    let both = [&first, &second];
    first.write(&cert_path, &key_path);
    let server = start_tls_process(dir.path(), "0");

    let r = tls::https_client(&[&first])
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (mut kept, presented) = tls::connect(server.addr(), &both).await;
    assert_eq!(presented, first.der);

    // New files alone change nothing (no polling with watch_secs = 0) …
    second.write(&cert_path, &key_path);
    let (_, presented) = tls::connect(server.addr(), &both).await;
    assert_eq!(presented, first.der, "reloaded without SIGHUP");
    // … SIGHUP does, for new connections.
    server.signal("HUP");
    wait_for_certificate(&server, &both, &second).await;
    let r = tls::https_client(&[&second])
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The connection made before the reload goes on.
    assert_eq!(status_line(&mut kept, "/healthz").await, "HTTP/1.1 200 OK");

    // A certificate file that is not PEM: the reload fails, is logged, and
    // the current certificate stays.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    server.signal("HUP");
    server.wait_for_log("TLS certificate not reloaded", 1);
    let (_, presented) = tls::connect(server.addr(), &both).await;
    assert_eq!(presented, second.der);

    // A key that does not fit the certificate (the first certificate with
    // the second's key, still in place): likewise.
    std::fs::write(&cert_path, &first.cert_pem).unwrap();
    server.signal("HUP");
    server.wait_for_log("TLS certificate not reloaded", 2);
    let (_, presented) = tls::connect(server.addr(), &both).await;
    assert_eq!(presented, second.der);

    // Graceful stop with TLS.
    assert!(server.terminate().success());
}

#[tokio::test]
async fn the_binary_picks_up_replaced_files_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = pem_paths(dir.path());
    let first = TestCert::new("first.confer.test");
    let second = TestCert::new("second.confer.test");
    first.write(&cert_path, &key_path);
    let server = start_tls_process(dir.path(), "1");
    let (_, presented) = tls::connect(server.addr(), &[&first, &second]).await;
    assert_eq!(presented, first.der);

    second.write(&cert_path, &key_path);
    wait_for_certificate(&server, &[&first, &second], &second).await;
}

#[test]
fn a_missing_or_mismatched_key_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = pem_paths(dir.path());
    let first = TestCert::new("first.confer.test");
    let second = TestCert::new("second.confer.test");
    std::fs::write(&cert_path, &first.cert_pem).unwrap();
    let start = || {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env_remove("CONFER_CONFIG")
            .env("CONFER_TLS__CERT", &cert_path)
            .env("CONFER_TLS__KEY", &key_path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "started without a usable key");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let missing = start();
    assert!(
        missing.contains("cannot read") && missing.contains(&key_path.display().to_string()),
        "{missing}"
    );

    std::fs::write(&key_path, &second.key_pem).unwrap();
    let mismatched = start();
    assert!(
        mismatched.contains("cannot serve the certificate")
            && mismatched.contains(&cert_path.display().to_string()),
        "{mismatched}"
    );
}

#[tokio::test]
async fn silent_connections_from_one_client_do_not_hold_up_others() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path(), "silent.confer.test", 0).await;
    let addr: std::net::SocketAddr = server.base.trim_start_matches("https://").parse().unwrap();
    // One client opens connections and never says a word.
    let cap = confer_sfu::tls::MAX_HANDSHAKES_PER_CLIENT;
    let mut silent = Vec::new();
    for _ in 0..cap {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // One more from it is closed at once, not after the handshake timeout.
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3), extra.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the connection over the cap is closed: {read:?}"
    );
    // Another client (127.0.0.2 is loopback too) is served meanwhile.
    let other = reqwest::Client::builder()
        .use_preconfigured_tls((*tls::client_config(&[&cert])).clone())
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let r = other
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    drop(silent);
    server.stop().await;
}
