//! Schemathesis (PyPI `schemathesis`, an independent property-based API
//! tester) against the live `/api/v1/openapi.json` of a real server: every
//! REST operation of the document gets generated requests, valid and
//! invalid, authenticated with a real application, user and subscriber
//! session, with every check schemathesis has: no 5xx; status codes,
//! content types, headers and bodies as documented; invalid data and
//! missing credentials refused; schema-valid data accepted.
//!
//! The path parameters are real ids (an application, a user, a
//! conversation, ready and pending files with their signed URLs), so the
//! requests reach the handlers instead of stopping at `not_found`. The
//! operations that end the credentials they run with (unregistering the
//! application, rotating its secret, locking the user, signing the session
//! out, deleting the file) run in the same pass, but each on its own
//! throwaway application, user, session or file: the first successful
//! case ends only that one, and the rest of the run keeps its credentials.
//!
//! Cases: at most `SCHEMATHESIS_MAX_EXAMPLES` per operation and phase
//! (default 100), seed `SCHEMATHESIS_SEED` (default 1), so a run is
//! reproducible. `SCHEMATHESIS_CHECKS` runs only the checks it names (e.g.
//! `not_a_server_error`). See "Schema testing" in `docs/reliability.md`.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::fmt::Write as _;

use common::{App, TestServer, Ws, json, upload_file, upload_file_as, user_token};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_in_any_operation() {
    common::require_python_module("schemathesis");
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        common::unlimited_config(&dir.path().join("data")),
        common::default_clock(),
    )
    .await;
    let ids = Ids::provision(&server).await;
    let work = dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("schemathesis.toml"), ids.config()).unwrap();
    if let Ok(keep) = std::env::var("SCHEMATHESIS_KEEP") {
        std::fs::write(keep, ids.config()).unwrap();
    }

    let max_examples = std::env::var("SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| "100".into());
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let location = server.url("/api/v1/openapi.json");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::python())
            .args([
                "-m",
                "schemathesis.cli",
                "--config-file",
                "schemathesis.toml",
            ])
            .args(["--no-color", "run", &location])
            // Every check schemathesis has (no 5xx; status codes, content
            // types, headers and bodies as documented; invalid data and
            // missing credentials refused; valid data accepted; …) unless
            // SCHEMATHESIS_CHECKS names some, but where the settings
            // turn one off for an operation.
            .args(
                std::env::var("SCHEMATHESIS_CHECKS")
                    .map(|checks| vec!["--checks".to_owned(), checks])
                    .unwrap_or_default(),
            )
            .args(["--max-examples", &max_examples, "--seed", &seed])
            .args(["--workers", "1", "--generation-database", "none"])
            .args(["--continue-on-failure"])
            .current_dir(&work)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "schemathesis reported failures:\n{report}"
    );
    // It ran every operation of the document but the document's own
    // (schemathesis leaves out the URL it loaded the document from).
    let operations = json(server.get("/api/v1/openapi.json")).await["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum::<usize>()
        - 1;
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "not all {operations} operations were tested:\n{report}"
    );
    server.stop().await;
}

/// The real ids and credentials the run uses.
struct Ids {
    app: App,
    user_token: String,
    user_id: String,
    subscriber_token: String,
    conversation: String,
    /// A ready file and the query of its signed download and preview URLs.
    file: String,
    download: Signed,
    preview: Signed,
    /// A pending file and the query of its signed upload URL.
    pending: String,
    upload: Signed,
    /// Throwaways: an application to rotate the secret of, one to
    /// unregister, a user to lock, a session to sign out, a file to delete.
    rotated: App,
    unregistered: App,
    locked_user: String,
    signed_out: String,
    deleted_file: String,
    /// An incoming webhook's token, and a webhook to revoke.
    hook_token: String,
    revoked_hook: String,
    /// An outgoing webhook endpoint of the application.
    endpoint: String,
}

/// `expires` and `signature` of a signed URL.
struct Signed {
    expires: String,
    signature: String,
}

impl Signed {
    fn of(url: &str) -> Self {
        let url = reqwest::Url::parse(url).unwrap();
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .unwrap_or_else(|| panic!("no {name} in {url}"))
                .1
                .into_owned()
        };
        Self {
            expires: param("expires"),
            signature: param("signature"),
        }
    }
}

const EMAIL: &str = "schemathesis@example.com";

impl Ids {
    async fn provision(server: &TestServer) -> Self {
        let app = server.register(EMAIL, "Schemathesis").await;
        let rotated = server.register(EMAIL, "Rotated").await;
        let unregistered = server.register(EMAIL, "Unregistered").await;
        let subscriber_token = server.sign_in(EMAIL).await;
        let signed_out = server.sign_in(EMAIL).await;
        let (_, locked_user) = user_token(server, &app, "lockable", &[]).await;
        let (user_token, user_id) = user_token(server, &app, "ann", &["order:1"]).await;

        let mut ws = Ws::connect(server, &user_token, None).await;
        let created = ws
            .request(json!({"type": "create_conversation", "title": "Schema", "members": []}))
            .await;
        assert_eq!(created["type"], "ack", "{created}");
        let conversation = created["conversation"]["id"].as_str().unwrap().to_owned();

        let file = upload_file_as(
            server,
            &user_token,
            &conversation,
            ("dot.png", "image/png"),
            &tiny_png(),
        )
        .await;
        let file = file["id"].as_str().unwrap().to_owned();
        let ticket = json(
            server
                .get(&format!("/api/v1/files/{file}"))
                .bearer_auth(&user_token),
        )
        .await;
        let download = Signed::of(ticket["url"].as_str().unwrap());
        let preview = Signed::of(ticket["preview_url"].as_str().unwrap());
        let deleted = upload_file(server, &user_token, &conversation, b"deleted").await;
        let hook = |name: &'static str| {
            let conversation = conversation.clone();
            let app = &app;
            async move {
                json(
                    server
                        .post(&format!("/api/v1/conversations/{conversation}/webhooks"))
                        .basic_auth(&app.id, Some(&app.secret))
                        .json(&json!({"name": name})),
                )
                .await
            }
        };
        let kept = hook("kept").await;
        let endpoint = json(
            server
                .post("/api/v1/webhook-endpoints")
                .basic_auth(&app.id, Some(&app.secret))
                .json(&json!({"url": "http://hooks.example.invalid/hook", "events": ["user"]})),
        )
        .await;
        let revoked = hook("revoked").await;
        let ticket = json(
            server
                .post(&format!("/api/v1/conversations/{conversation}/files"))
                .bearer_auth(&user_token)
                .json(&json!({"name": "pending.bin", "size": 4,
                    "content_type": "application/octet-stream"})),
        )
        .await;
        Self {
            app,
            user_token,
            user_id,
            subscriber_token,
            conversation,
            file,
            download,
            preview,
            pending: ticket["file"]["id"].as_str().unwrap().to_owned(),
            upload: Signed::of(ticket["upload"]["url"].as_str().unwrap()),
            rotated,
            unregistered,
            locked_user,
            signed_out,
            deleted_file: deleted["id"].as_str().unwrap().to_owned(),
            hook_token: kept["url"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned(),
            revoked_hook: revoked["webhook"]["id"].as_str().unwrap().to_owned(),
            endpoint: endpoint["id"].as_str().unwrap().to_owned(),
        }
    }

    /// `schemathesis.toml`: the credentials and ids, and per operation
    /// the throwaways and signed URLs.
    fn config(&self) -> String {
        let mut toml = String::new();
        writeln!(toml, "[auth.openapi.application]").unwrap();
        writeln!(
            toml,
            "username = {:?}\npassword = {:?}",
            self.app.id, self.app.secret
        )
        .unwrap();
        writeln!(toml, "[auth.openapi.subscriber]").unwrap();
        writeln!(toml, "bearer = {:?}", self.subscriber_token).unwrap();
        writeln!(toml, "[auth.openapi.user]\nbearer = {:?}", self.user_token).unwrap();
        parameters(
            &mut toml,
            "[parameters]",
            &[
                ("path.app_id", &self.app.id),
                ("path.user_id", &self.user_id),
                ("path.conversation_id", &self.conversation),
                ("path.file_id", &self.file),
                ("path.endpoint_id", &self.endpoint),
            ],
        );
        // 413 `payload_too_large` refuses a body as well as 400 does
        // (schemathesis's default list lacks it).
        writeln!(
            toml,
            "[checks.negative_data_rejection]\nexpected-statuses = [\"400\", \"401\", \"403\", \
             \"404\", \"405\", \"406\", \"409\", \"413\", \"415\", \"422\", \"428\", \"429\", \"5xx\"]"
        )
        .unwrap();
        let mut signed = |method: &str, path: &str, file: &str, signed: &Signed| {
            operation(&mut toml, method, path);
            parameters(
                &mut toml,
                "[operations.parameters]",
                &[
                    ("path.file_id", file),
                    ("query.expires", &signed.expires),
                    ("query.signature", &signed.signature),
                ],
            );
        };
        signed(
            "GET",
            "/api/v1/files/{file_id}/content",
            &self.file,
            &self.download,
        );
        signed(
            "GET",
            "/api/v1/files/{file_id}/preview",
            &self.file,
            &self.preview,
        );
        signed(
            "PUT",
            "/api/v1/files/{file_id}/content",
            &self.pending,
            &self.upload,
        );
        for (method, path, name, value) in [
            (
                "DELETE",
                "/api/v1/files/{file_id}",
                "path.file_id",
                &self.deleted_file,
            ),
            (
                "POST",
                "/api/v1/users/{user_id}/lock",
                "path.user_id",
                &self.locked_user,
            ),
            (
                "DELETE",
                "/api/v1/webhooks/{webhook_id}",
                "path.webhook_id",
                &self.revoked_hook,
            ),
            (
                "POST",
                "/api/v1/hooks/{token}",
                "path.token",
                &self.hook_token,
            ),
        ] {
            operation(&mut toml, method, path);
            parameters(&mut toml, "[operations.parameters]", &[(name, value)]);
        }
        // The owner's session rather than the application's own secret, so
        // that every case after the first rotation still reaches the
        // handler. Per operation, schemathesis takes fixed headers, and
        // they win over the run's credentials.
        for (method, path, app) in [
            (
                "POST",
                "/api/v1/applications/{app_id}/secret",
                &self.rotated,
            ),
            (
                "DELETE",
                "/api/v1/applications/{app_id}",
                &self.unregistered,
            ),
        ] {
            operation(&mut toml, method, path);
            parameters(
                &mut toml,
                "[operations.parameters]",
                &[("path.app_id", &app.id)],
            );
            bearer(&mut toml, &self.subscriber_token);
        }
        // A body valid against the schema can still be refused: the upload
        // request's size against the file size limit and quota, the bytes
        // against the size and SHA-256 declared (`413 file_too_large`,
        // `400 upload_size_mismatch`): no schema can say that.
        // Likewise a webhook's message needs text, data or buttons (the
        // schema has each optional), an endpoint's URL must parse as an
        // http(s) URL (and an application has at most 20), an
        // application's retention is at least a day (a conversation's may
        // be 0), a legal hold and an export name a conversation or a user,
        // not both, and the audit log's times are RFC
        // 3339, of which `date-time` strings are a wider set (leap seconds).
        for (method, path) in [
            ("POST", "/api/v1/conversations/{conversation_id}/files"),
            ("PUT", "/api/v1/files/{file_id}/content"),
            ("POST", "/api/v1/hooks/{token}"),
            ("GET", "/api/v1/audit"),
            ("POST", "/api/v1/webhook-endpoints"),
            ("PUT", "/api/v1/applications/{app_id}/retention"),
            ("POST", "/api/v1/applications/{app_id}/legal-holds"),
            ("POST", "/api/v1/applications/{app_id}/exports"),
        ] {
            operation(&mut toml, method, path);
            writeln!(
                toml,
                "[operations.checks.positive_data_acceptance]\nenabled = false"
            )
            .unwrap();
        }
        operation(&mut toml, "DELETE", "/api/v1/subscriber/sessions/current");
        bearer(&mut toml, &self.signed_out);
        toml
    }
}

/// The last operation's `Authorization: Bearer` header.
fn bearer(toml: &mut String, token: &str) {
    writeln!(
        toml,
        "[operations.headers]\nAuthorization = \"Bearer {token}\""
    )
    .unwrap();
}

/// A table of fixed parameter values (`"path.app_id" = "…"`).
fn parameters(toml: &mut String, table: &str, values: &[(&str, &str)]) {
    writeln!(toml, "{table}").unwrap();
    for (name, value) in values {
        writeln!(toml, "{name:?} = {value:?}").unwrap();
    }
}

/// Starts the settings of one operation (by name: separate
/// `include-method` and `include-path` keys would each select operations).
fn operation(toml: &mut String, method: &str, path: &str) {
    writeln!(toml, "\n[[operations]]").unwrap();
    writeln!(toml, "include-name = \"{method} {path}\"").unwrap();
}

/// A 1×1 PNG, so that the file has a preview.
fn tiny_png() -> Vec<u8> {
    let mut png = Vec::new();
    image::DynamicImage::new_rgb8(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}
