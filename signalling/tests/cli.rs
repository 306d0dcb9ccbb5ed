//! The real `signalling` binary: the README's run command, graceful
//! shutdown on SIGTERM, restart on the same data directory, configuration
//! errors named, and the `admin` commands.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::path::Path;
use std::process::Command;

use common::expect_error;
use common::process::Process;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_signalling");

fn admin(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("admin")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("CONFER_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_binary_serves_stops_gracefully_and_restarts_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = Client::new();
    let server = Process::start(dir.path());

    let health = client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let app = server
        .register(dir.path(), "cli@example.com", "CLI ERP")
        .await;
    let (id, secret) = (app.id, app.secret);
    let status = server.terminate();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    // Admin commands read the same data directory.
    let (ok, out, _) = admin(dir.path(), &["applications"]);
    assert!(ok);
    assert!(out.contains(&id) && out.contains("CLI ERP"), "{out}");
    let (ok, out, _) = admin(dir.path(), &["subscribers"]);
    assert!(ok && out.contains("cli@example.com"), "{out}");
    let (ok, out, _) = admin(dir.path(), &["outbox"]);
    assert!(
        ok && out.contains("1 mail(s)") && out.contains("cli@example.com"),
        "{out}"
    );
    let (ok, out, _) = admin(dir.path(), &["health"]);
    assert!(ok && out.contains("\"ok\""), "{out}");

    let server = Process::start(dir.path());
    let token: Value = common::json(
        client
            .post(format!("{}/api/v1/tokens", server.base))
            .basic_auth(&id, Some(&secret))
            .json(&json!({"external_id": "u1", "name": "Ann"})),
    )
    .await;
    let token = token["token"].as_str().unwrap().to_owned();
    let me = || {
        client
            .get(format!("{}/api/v1/me", server.base))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(me().await.unwrap().status(), StatusCode::OK);

    // An operator locks the user while the server runs.
    let (ok, out, err) = admin(
        dir.path(),
        &["lock-user", "--app", &id, "--external-id", "u1"],
    );
    assert!(ok, "{out}{err}");
    expect_error(me().await.unwrap(), StatusCode::FORBIDDEN, "user_locked").await;
    let (ok, _, _) = admin(
        dir.path(),
        &["unlock-user", "--app", &id, "--external-id", "u1"],
    );
    assert!(ok);
    assert_eq!(me().await.unwrap().status(), StatusCode::OK);
    assert!(server.terminate().success());
}

/// SFU nodes come from `[[sfu.nodes]]` tables or from the environment
/// (an array of inline tables), and `check-config` shows them without
/// their tokens (nor any other secret).
#[test]
fn sfu_nodes_are_configured_by_file_or_environment_and_their_tokens_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nodes.toml");
    std::fs::write(
        &file,
        "[[sfu.nodes]]\nurl = \"http://10.0.0.5:8089\"\ntoken = \"first-s3cret\"\n\n\
         [[sfu.nodes]]\nurl = \"https://10.0.0.6:8089\"\ntoken = \"second-s3cret\"\n\
         max_participants = 300\ndrain = true\n\n\
         [calls.turn]\nurls = [\"turn:10.0.0.7:3478\"]\nsecret = \"turn-s3cret-of-16-chars\"\n",
    )
    .unwrap();
    let (ok, out, err) = admin(
        dir.path(),
        &["--config", file.to_str().unwrap(), "check-config"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("url = \"https://10.0.0.6:8089\""), "{out}");
    assert!(out.contains("max_participants = 300"), "{out}");
    assert!(out.contains("drain = true"), "{out}");
    assert!(!out.contains("s3cret"), "a secret was shown: {out}");

    let out = Command::new(BIN)
        .args(["admin", "--data-dir"])
        .arg(dir.path())
        .arg("check-config")
        .env_remove("CONFER_CONFIG")
        .env(
            "CONFER_SFU__NODES",
            r#"[{url="http://10.0.0.5:8089",token="env-s3cret"}]"#,
        )
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("url = \"http://10.0.0.5:8089\""), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");

    std::fs::write(&file, "[[sfu.nodes]]\nurl = \"10.0.0.5:8089\"\n").unwrap();
    let (ok, _, err) = admin(
        dir.path(),
        &["--config", file.to_str().unwrap(), "check-config"],
    );
    assert!(!ok);
    assert!(
        err.contains("sfu.nodes") && err.contains("http://"),
        "{err}"
    );
}

#[test]
fn configuration_errors_name_the_setting_and_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");

    std::fs::write(&file, "[codes]\nttl_secs = 5\nmax_tries = 0\n").unwrap();
    let (ok, _, err) = admin(
        dir.path(),
        &["--config", file.to_str().unwrap(), "check-config"],
    );
    assert!(!ok);
    assert!(
        err.contains("codes.ttl_secs") && err.contains("60 to 86400"),
        "{err}"
    );
    assert!(
        err.contains("codes.max_tries") && err.contains("1 to 20"),
        "{err}"
    );

    std::fs::write(&file, "[log]\nformat = \"xml\"\n").unwrap();
    let (ok, _, err) = admin(
        dir.path(),
        &["--config", file.to_str().unwrap(), "check-config"],
    );
    assert!(!ok);
    assert!(
        err.contains("xml") && err.contains("text") && err.contains("json"),
        "{err}"
    );
    assert!(err.contains("format"), "{err}");

    std::fs::write(&file, "lissen = \"127.0.0.1:1\"\n").unwrap();
    let (ok, _, err) = admin(
        dir.path(),
        &["--config", file.to_str().unwrap(), "check-config"],
    );
    assert!(!ok);
    assert!(err.contains("lissen"), "{err}");

    let out = Command::new(BIN)
        .args(["admin", "check-config"])
        .env("CONFER_LISTEN", "not-an-address")
        .env_remove("CONFER_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen"), "{err}");

    // The shipped file is valid and equal to the defaults.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/signalling.toml");
    let (ok, out, err) = admin(dir.path(), &["--config", shipped, "check-config"]);
    assert!(ok, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
}
