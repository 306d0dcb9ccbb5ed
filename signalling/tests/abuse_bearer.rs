//! No bearer secret in logs, and none in the web client's WebSocket URL:
//! the request log of the real binary redacts `?token=` and the signatures
//! of file URLs; a client passes its token in `Sec-WebSocket-Protocol`
//! (`confer.bearer.<token>`, the server selects `confer.v1`); the page
//! may be framed only by the configured parent origins (CSP
//! `frame-ancestors`), which it also reads to accept `postMessage` tokens.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::process::Process;
use common::{TestServer, Ws, expect_refused};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Registers an application on a running binary and returns a user token.
async fn token_from(base: &str, data_dir: &std::path::Path) -> String {
    let client = reqwest::Client::new();
    let (email, app_name) = ("erp@example.com", "ERP");
    let r = client
        .post(format!("{base}/api/v1/registrations"))
        .json(&json!({"email": email, "app_name": app_name}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let code = common::last_code_in(&data_dir.join("outbox"), email).unwrap();
    let app: Value = common::json(
        client
            .post(format!("{base}/api/v1/registrations/confirm"))
            .json(&json!({"email": email, "app_name": app_name, "code": code})),
    )
    .await;
    let issued: Value = common::json(
        client
            .post(format!("{base}/api/v1/tokens"))
            .basic_auth(app["app_id"].as_str().unwrap(), app["app_secret"].as_str())
            .json(&json!({"external_id": "u-1", "name": "Анна"})),
    )
    .await;
    issued["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_request_log_shows_no_token_and_no_url_signature() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("signalling.log");
    // The level at which the request log shows every URI.
    let server = Process::start_with_env(
        dir.path(),
        &[("RUST_LOG", std::ffi::OsStr::new("tower_http=debug,info"))],
    );
    let token = token_from(&server.base, dir.path()).await;

    // A client of an earlier version: the token in the URL still works.
    let ws_base = server.base.replace("http://", "ws://");
    let ws = Ws::connect_request(format!("{ws_base}/api/v1/ws?token={token}&since=0")).await;
    assert_eq!(ws.welcome["type"], "welcome");
    drop(ws);
    // A signed file URL (refused here: what matters is what is logged).
    let signature = "c2lnbmF0dXJlLXRoYXQtbXVzdC1ub3QtYmUtbG9nZ2Vk";
    let r = reqwest::get(format!(
        "{}/api/v1/files/{}/content?expires=1700000000&signature={signature}",
        server.base,
        uuid::Uuid::new_v4()
    ))
    .await
    .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // A parameter nobody knows is not logged either.
    let _ = reqwest::get(format!(
        "{}/healthz?ticket=unknown-secret-value",
        server.base
    ))
    .await;

    assert!(server.terminate().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("/api/v1/ws?token=REDACTED&since=0"),
        "the WebSocket request is logged, redacted:\n{log}"
    );
    assert!(
        log.contains("expires=1700000000&signature=REDACTED"),
        "the file request is logged, redacted:\n{log}"
    );
    assert!(log.contains("/healthz?ticket=REDACTED"), "{log}");
    let token_signature = token.rsplit('.').next().unwrap();
    for secret in [
        token.as_str(),
        token_signature,
        signature,
        "unknown-secret-value",
    ] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}

#[tokio::test]
async fn a_token_in_the_websocket_subprotocol_authenticates_and_is_not_echoed() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("erp@example.com", "ERP").await;
    let (token, user_id) = common::user_token(&server, &app, "u-1", &[]).await;
    let url = format!("{}/api/v1/ws", server.base.replace("http://", "ws://"));

    let mut request = url.clone().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("confer.v1, confer.bearer.{token}").parse().unwrap(),
    );
    let (stream, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "confer.v1",
        "the server selects confer.v1, not the token"
    );
    drop(stream);
    let mut request = url.clone().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("confer.v1, confer.bearer.{token}").parse().unwrap(),
    );
    let ws = Ws::connect_request(request).await;
    assert_eq!(ws.welcome["user_id"], user_id.as_str(), "{}", ws.welcome);

    // A wrong token in the subprotocol is refused before the upgrade.
    expect_refused(
        server
            .get("/api/v1/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header(
                "sec-websocket-protocol",
                "confer.v1, confer.bearer.not.a.token",
            ),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    server.stop().await;
}

fn frame_ancestors(csp: &str) -> &str {
    csp.split(';')
        .map(str::trim)
        .find(|d| d.starts_with("frame-ancestors"))
        .unwrap_or_else(|| panic!("no frame-ancestors in {csp}"))
}

#[tokio::test]
async fn only_the_configured_parent_origins_may_frame_the_page() {
    // Default: only this server's own pages.
    let (server, _dir) = TestServer::start().await;
    let r = server.get("/").send().await.unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(frame_ancestors(&csp), "frame-ancestors 'self'");
    let page = r.text().await.unwrap();
    assert!(
        page.contains(r#"<meta name="confer-parent-origins" content="">"#),
        "{page}"
    );
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.web.parent_origins = vec![
        "https://erp.example.com".to_owned(),
        "http://10.0.0.5:8443".to_owned(),
    ];
    let server = TestServer::start_with(config, common::default_clock()).await;
    let r = server.get("/").send().await.unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        frame_ancestors(&csp),
        "frame-ancestors 'self' https://erp.example.com http://10.0.0.5:8443"
    );
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let page = r.text().await.unwrap();
    assert!(
        page.contains(
            r#"<meta name="confer-parent-origins" content="https://erp.example.com http://10.0.0.5:8443">"#
        ),
        "{page}"
    );
    server.stop().await;

    // An origin that is not one (a path, a wildcard, CSP syntax) is refused
    // with the configuration, naming the setting.
    let mut config = common::test_config(dir.path());
    config.web.parent_origins = vec!["https://erp.example.com/app; script-src *".to_owned()];
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("web.parent_origins"), "{err}");
}
