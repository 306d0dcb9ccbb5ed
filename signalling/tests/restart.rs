//! A restart on the same data directory keeps everything: subscribers,
//! applications and their secrets, users, tokens and sessions.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{TestServer, default_clock};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = default_clock();

    let server = TestServer::start_in(dir.path(), clock.clone()).await;
    let app = server.register("keep@example.com", "Persistent ERP").await;
    let token = server.token(&app, "u1", "Ann").await;
    let session = server.sign_in("keep@example.com").await;
    let user_id = token["user_id"].as_str().unwrap().to_owned();
    server.stop().await;

    let server = TestServer::start_in(dir.path(), clock).await;
    // The application's secret still works.
    let again = server.token(&app, "u1", "Ann").await;
    assert_eq!(again["user_id"], user_id.as_str());
    // The token issued before the restart still works.
    let r = server
        .get("/api/v1/me")
        .bearer_auth(token["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The subscriber session still works and sees the application.
    let list: Value = common::json(server.get("/api/v1/applications").bearer_auth(&session)).await;
    assert_eq!(list["applications"][0]["app_id"], app.id.as_str());
    assert_eq!(list["applications"][0]["name"], "Persistent ERP");
    server.stop().await;
}
