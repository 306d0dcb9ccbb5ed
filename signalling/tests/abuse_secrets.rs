//! Application secrets are stored as SHA-256 digests, not argon2 hashes:
//! HTTP Basic costs microseconds, so nobody can queue everyone's requests
//! behind argon2. A row an earlier version wrote with an argon2 hash still
//! authenticates, and is rewritten to the digest by that first success.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use argon2::password_hash::{PasswordHasher, SaltString};
use common::{App, TestServer, expect_refused};
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The stored form of the application's secret, read from the database
/// file with SQL, as an operator (or a thief) would see it.
async fn stored_secret(server: &TestServer, app: &App) -> String {
    let url = format!(
        "sqlite://{}",
        server.services.config.database_path().display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let (stored,): (String,) = sqlx::query_as("SELECT secret_hash FROM applications WHERE id = ?")
        .bind(&app.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    stored
}

/// Writes an argon2id hash of `secret` into the row, as earlier versions
/// did when they registered the application.
async fn store_argon2_hash(server: &TestServer, app: &App, secret: &str) -> String {
    let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
    let phc = argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .unwrap()
        .to_string();
    let url = format!(
        "sqlite://{}",
        server.services.config.database_path().display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let done = sqlx::query("UPDATE applications SET secret_hash = ? WHERE id = ?")
        .bind(&phc)
        .bind(&app.id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    pool.close().await;
    phc
}

async fn basic_status(server: &TestServer, app: &App, secret: &str) -> StatusCode {
    server
        .post("/api/v1/tokens")
        .basic_auth(&app.id, Some(secret))
        .json(&json!({"external_id": "u-1", "name": "Анна"}))
        .send()
        .await
        .unwrap()
        .status()
}

/// The secret authenticates; another one does not.
async fn only_this_secret_works(server: &TestServer, app: &App, secret: &str) {
    assert_eq!(basic_status(server, app, secret).await, StatusCode::OK);
    assert_eq!(
        basic_status(server, app, "not the secret").await,
        StatusCode::UNAUTHORIZED
    );
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn secrets_are_stored_as_digests_and_old_argon2_hashes_are_replaced_on_use() {
    let (server, _dir) = TestServer::start().await;

    // A new registration stores the digest, nothing argon2 can read.
    let app = server.register("erp@example.com", "ERP").await;
    let stored = stored_secret(&server, &app).await;
    assert!(!stored.starts_with("$argon2"), "{stored}");
    assert_eq!(stored, format!("sha256:{}", sha256_hex(&app.secret)));
    only_this_secret_works(&server, &app, &app.secret).await;

    // A row written by an earlier version: an argon2 PHC string.
    let phc = store_argon2_hash(&server, &app, &app.secret).await;
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    // A wrong secret fails and leaves it as it is.
    expect_refused(
        server
            .post("/api/v1/tokens")
            .basic_auth(&app.id, Some("not the secret"))
            .json(&json!({"external_id": "u-1", "name": "Анна"})),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(stored_secret(&server, &app).await, phc);
    // The right one works and replaces the hash by the digest.
    assert_eq!(
        basic_status(&server, &app, &app.secret).await,
        StatusCode::OK
    );
    let upgraded = stored_secret(&server, &app).await;
    assert_eq!(upgraded, format!("sha256:{}", sha256_hex(&app.secret)));
    only_this_secret_works(&server, &app, &app.secret).await;

    // A rotation stores the new secret's digest; the old secret is refused.
    let body = common::json(
        server
            .post(&format!("/api/v1/applications/{}/secret", app.id))
            .basic_auth(&app.id, Some(&app.secret)),
    )
    .await;
    let new_secret = body["app_secret"].as_str().unwrap().to_owned();
    assert_eq!(
        stored_secret(&server, &app).await,
        format!("sha256:{}", sha256_hex(&new_secret))
    );
    only_this_secret_works(&server, &app, &new_secret).await;
    assert_eq!(
        basic_status(&server, &app, &app.secret).await,
        StatusCode::UNAUTHORIZED
    );
    server.stop().await;
}
