//! `/healthz` answers from a recent check: a flood of health requests
//! costs the components (here an SMTP relay) one check per few seconds,
//! not one per request.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{TestServer, default_clock, test_config};
use confer_signalling::config::{SmtpConfig, SmtpTls};

#[tokio::test]
async fn health_requests_share_one_check_of_the_mail_relay() {
    // A "relay" that counts the connections made to it and closes them:
    // mail is down, and every check would show here.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = relay.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = relay.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.mail.smtp = Some(SmtpConfig {
        host: "127.0.0.1".to_owned(),
        port: Some(port),
        tls: SmtpTls::None,
        username: None,
        password: None,
    });
    let server = TestServer::start_with(config, default_clock()).await;
    let before = connections.load(Ordering::SeqCst);
    let mut requests = Vec::new();
    for _ in 0..50 {
        requests.push(server.get("/healthz").send());
    }
    for r in futures_util::future::join_all(requests).await {
        let r = r.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["components"]["mail"]["status"], "down", "{body}");
    }
    let made = connections.load(Ordering::SeqCst) - before;
    // lettre may retry a connection within one check; 50 checks would
    // make 50 or more.
    assert!(
        (1..=3).contains(&made),
        "{made} connections for 50 requests"
    );
    server.stop().await;
}
