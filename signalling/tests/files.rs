//! Attachments, end to end: real HTTP clients send and fetch the bytes
//! through the signed URLs the server hands out, real WebSocket clients
//! attach them to messages. Every test runs twice: against the local
//! backend, and against a real S3-protocol server (`s3s-fs`, which checks
//! SigV4 presigned signatures and expiry) that it starts.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::s3::S3Server;
use common::{App, TestServer, Ws, expect_error, expect_refused, user_token};
use confer_signalling::SignallingConfig;
use confer_signalling::ids::{ManualClock, Timestamp};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Local,
    S3,
}

/// A server on the backend, an application, and a conversation between
/// Ann and Bob (Eve is in the application but not in it).
struct Setup {
    kind: Kind,
    server: TestServer,
    _dir: tempfile::TempDir,
    s3: Option<S3Server>,
    app: App,
    conversation: Value,
    ann: (String, String),
    bob: (String, String),
    eve: (String, String),
}

async fn setup(kind: Kind, tweak: impl FnOnce(&mut SignallingConfig)) -> Setup {
    setup_at(kind, tweak, common::default_clock()).await
}

async fn setup_at(
    kind: Kind,
    tweak: impl FnOnce(&mut SignallingConfig),
    clock: Arc<ManualClock>,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    let s3 = match kind {
        Kind::Local => None,
        Kind::S3 => {
            let s3 = S3Server::start().await;
            config.files.s3 = Some(s3.config());
            Some(s3)
        }
    };
    tweak(&mut config);
    let server = TestServer::start_with(config, clock).await;
    let app = server.register("files@example.com", "Документы").await;
    let ann = user_token(&server, &app, "ann", &[]).await;
    let bob = user_token(&server, &app, "bob", &[]).await;
    let eve = user_token(&server, &app, "eve", &[]).await;
    let mut ws = Ws::connect(&server, &ann.0, None).await;
    let created = ws
        .request(json!({"type": "create_conversation", "title": "Счета", "members": [bob.1]}))
        .await;
    assert_eq!(created["type"], "ack", "{created}");
    Setup {
        kind,
        server,
        _dir: dir,
        s3,
        app,
        conversation: created["conversation"]["id"].clone(),
        ann,
        bob,
        eve,
    }
}

impl Setup {
    /// Asks to upload; returns the answer.
    async fn begin(&self, token: &str, body: Value) -> reqwest::Response {
        self.server
            .post(&format!(
                "/api/v1/conversations/{}/files",
                self.conversation.as_str().unwrap()
            ))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Asks to upload `bytes` as `name`, and checks the answer.
    async fn ticket(&self, name: &str, content_type: &str, bytes: &[u8], sha: bool) -> Value {
        let mut body = json!({"name": name, "size": bytes.len(), "content_type": content_type});
        if sha {
            body["sha256"] = json!(hex(&Sha256::digest(bytes)));
        }
        let r = self.begin(&self.ann.0, body).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let ticket: Value = r.json().await.unwrap();
        assert_eq!(ticket["file"]["state"], "pending", "{ticket}");
        assert_eq!(ticket["upload"]["method"], "PUT");
        ticket
    }

    /// Sends `bytes` to the ticket's upload URL with its headers.
    async fn put(&self, ticket: &Value, bytes: Vec<u8>) -> reqwest::Response {
        self.put_to(ticket["upload"]["url"].as_str().unwrap(), ticket, bytes)
            .await
    }

    async fn put_to(&self, url: &str, ticket: &Value, bytes: Vec<u8>) -> reqwest::Response {
        // A connection of its own: a refused upload is answered before its
        // body is read, and the server then closes the connection.
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
            .put(url)
            .header(
                "content-type",
                ticket["upload"]["headers"]["Content-Type"]
                    .as_str()
                    .unwrap(),
            )
            .body(bytes)
            .send()
            .await
            .unwrap()
    }

    async fn complete(&self, token: &str, file: &Value) -> reqwest::Response {
        self.server
            .post(&format!(
                "/api/v1/files/{}/complete",
                file.as_str().unwrap()
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn get_file(&self, token: &str, file: &Value) -> reqwest::Response {
        self.server
            .get(&format!("/api/v1/files/{}", file.as_str().unwrap()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Uploads and completes a file of Ann's; returns the ready file.
    async fn upload(&self, name: &str, content_type: &str, bytes: &[u8]) -> Value {
        let ticket = self.ticket(name, content_type, bytes, true).await;
        let put = self.put(&ticket, bytes.to_vec()).await;
        assert!(put.status().is_success(), "{}", put.status());
        let done = self.complete(&self.ann.0, &ticket["file"]["id"]).await;
        assert_eq!(done.status(), StatusCode::OK);
        let file: Value = done.json().await.unwrap();
        assert_eq!(file["state"], "ready", "{file}");
        file
    }

    /// Every stored object (or leftover) whose name mentions `file`.
    fn objects_of(&self, file: &Value) -> Vec<PathBuf> {
        let id = file.as_str().unwrap();
        let root = match &self.s3 {
            Some(s3) => s3.root.path().to_owned(),
            None => self.server.data_dir.join("files"),
        };
        let mut found = Vec::new();
        walk(&root, &mut |p| {
            if p.to_string_lossy().contains(id) {
                found.push(p.to_owned());
            }
        });
        found
    }

    /// Waits (up to 10 s) until no object of `file` is left.
    async fn wait_gone(&self, file: &Value) {
        for _ in 0..100 {
            if self.objects_of(file).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("objects left: {:?}", self.objects_of(file));
    }
}

/// Asserts a successful answer, showing the body of any other.
async fn ok(r: reqwest::Response) -> reqwest::Response {
    if !r.status().is_success() {
        panic!("{}: {}", r.status(), r.text().await.unwrap_or_default());
    }
    r
}

fn walk(dir: &Path, f: &mut impl FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, f);
        } else {
            f(&path);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pseudo_random(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// The whole path: upload with a name in three scripts, complete, attach,
/// the other member sees the attachment and downloads the same bytes under
/// the same name; a non-member gets nothing.
async fn attach_and_download_with_names_in_any_script(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let name = "Счёт №5 — 报告 «final».pdf";
    let bytes = pseudo_random(300_000, 1);
    let file = s.upload(name, "application/pdf", &bytes).await;
    assert_eq!(file["name"], name);
    assert_eq!(file["size"], bytes.len());
    assert_eq!(file["sha256"], hex(&Sha256::digest(&bytes)));
    assert!(file.get("preview").is_none());

    let mut ann = Ws::connect(&s.server, &s.ann.0, None).await;
    let mut bob = Ws::connect(&s.server, &s.bob.0, None).await;
    let ack = ann
        .request(
            json!({"type": "send", "conversation_id": s.conversation, "client_id": "f1",
            "text": "Счёт во вложении", "attachments": [{"file_id": file["id"]}]}),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let attached = &ack["message"]["attachments"][0];
    assert_eq!(attached["file_id"], file["id"]);
    assert_eq!(attached["name"], name);
    assert_eq!(attached["displayed"], true);
    assert_eq!(attached["sha256"], file["sha256"]);
    loop {
        let e = bob.event().await;
        if e["event"]["kind"] == "message" && e["event"]["message"]["client_id"] == "f1" {
            assert_eq!(e["event"]["message"]["attachments"][0]["name"], name);
            break;
        }
    }

    // Bob may read the message: he gets URLs and the very bytes.
    let r = s.get_file(&s.bob.0, &file["id"]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let ticket: Value = r.json().await.unwrap();
    assert_eq!(ticket["file"]["message_id"], ack["message"]["id"]);
    let got = s
        .server
        .client
        .get(ticket["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    let disposition = got.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with("attachment; ")
            && disposition.contains(
                "filename*=UTF-8''%D0%A1%D1%87%D1%91%D1%82%20%E2%84%965%20%E2%80%94%20\
                 %E6%8A%A5%E5%91%8A%20%C2%ABfinal%C2%BB.pdf"
            ),
        "{disposition}"
    );
    assert_eq!(got.headers()["content-type"], "application/pdf");
    assert_eq!(got.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // Eve is not a member: refused, and she cannot attach it either.
    expect_error(
        s.get_file(&s.eve.0, &file["id"]).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // A file already attached cannot be attached again.
    let again = ann
        .request(
            json!({"type": "send", "conversation_id": s.conversation, "client_id": "f2",
            "text": "again", "attachments": [{"file_id": file["id"]}]}),
        )
        .await;
    assert_eq!(again["code"], "attachment_unavailable", "{again}");

    // The application's bot may read every file of its application.
    let r = s
        .server
        .get(&format!("/api/v1/files/{}", file["id"].as_str().unwrap()))
        .basic_auth(&s.app.id, Some(&s.app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let health: Value = common::json(s.server.get("/healthz")).await;
    let backend = if s.kind == Kind::S3 { "s3" } else { "local" };
    assert_eq!(
        health["components"]["files"],
        json!({"status": "up", "backend": backend})
    );
}

/// An image gets a JPEG preview at most 320 px on its long side.
async fn images_get_a_preview(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let file = s.upload("склад.png", "image/png", &png(1000, 500)).await;
    assert_eq!(file["preview"], json!({"width": 320, "height": 160}));
    let ticket: Value = s
        .get_file(&s.ann.0, &file["id"])
        .await
        .json()
        .await
        .unwrap();
    let preview = s
        .server
        .client
        .get(ticket["preview_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(preview.status(), StatusCode::OK);
    assert_eq!(preview.headers()["content-type"], "image/jpeg");
    let jpeg = preview.bytes().await.unwrap();
    let image = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((image.width(), image.height()), (320, 160));

    // Declared an image but is not one: no preview, still a file.
    let fake = s.upload("fake.png", "image/png", b"not a png at all").await;
    assert!(fake.get("preview").is_none(), "{fake}");
}

/// Uploads that are too large, over quota, shorter or longer than
/// declared, or not matching their SHA-256 are refused, and nothing of
/// them stays visible.
async fn bad_uploads_leave_nothing(kind: Kind) {
    let s = setup(kind, |c| {
        c.files.max_size = 200_000;
        c.files.app_quota_bytes = 500_000;
    })
    .await;
    let too_large = s
        .begin(&s.ann.0, json!({"name": "big.bin", "size": 200_001}))
        .await;
    expect_error(too_large, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    let bad = s.begin(&s.ann.0, json!({"name": "", "size": 1})).await;
    expect_error(bad, StatusCode::BAD_REQUEST, "invalid_request").await;
    let bad = s
        .begin(
            &s.ann.0,
            json!({"name": "a", "size": 1, "content_type": "png"}),
        )
        .await;
    expect_error(bad, StatusCode::BAD_REQUEST, "invalid_request").await;
    let outsider = s.begin(&s.eve.0, json!({"name": "x.txt", "size": 1})).await;
    expect_error(outsider, StatusCode::FORBIDDEN, "forbidden").await;

    let bytes = pseudo_random(100_000, 2);
    for (case, sent) in [
        ("shorter", bytes[..99_999].to_vec()),
        ("longer", [bytes.as_slice(), b"!"].concat()),
    ] {
        let ticket = s
            .ticket(
                &format!("{case}.bin"),
                "application/octet-stream",
                &bytes,
                false,
            )
            .await;
        let put = s.put(&ticket, sent).await;
        assert!(put.status().is_client_error(), "{case}: {}", put.status());
        let put = if s.kind == Kind::S3 {
            let text = put.text().await.unwrap();
            assert!(
                text.contains("<Code>SignatureDoesNotMatch</Code>"),
                "{case}: {text}"
            );
            None
        } else {
            Some(put)
        };
        if let Some(put) = put {
            expect_error(put, StatusCode::BAD_REQUEST, "upload_size_mismatch").await;
        }
        let file = &ticket["file"]["id"];
        expect_error(
            s.complete(&s.ann.0, file).await,
            StatusCode::CONFLICT,
            "upload_missing",
        )
        .await;
        expect_error(
            s.get_file(&s.ann.0, file).await,
            StatusCode::CONFLICT,
            "file_not_ready",
        )
        .await;
        assert!(
            s.objects_of(file).is_empty(),
            "{case}: {:?}",
            s.objects_of(file)
        );
    }

    // Right length, wrong bytes: the declared SHA-256 catches them (the
    // local backend while receiving, S3 when completing).
    let ticket = s
        .ticket("swapped.bin", "application/octet-stream", &bytes, true)
        .await;
    let put = s.put(&ticket, pseudo_random(100_000, 3)).await;
    let file = &ticket["file"]["id"];
    if s.kind == Kind::Local {
        expect_error(put, StatusCode::BAD_REQUEST, "checksum_mismatch").await;
        expect_error(
            s.complete(&s.ann.0, file).await,
            StatusCode::CONFLICT,
            "upload_missing",
        )
        .await;
    } else {
        assert!(put.status().is_success());
        expect_error(
            s.complete(&s.ann.0, file).await,
            StatusCode::BAD_REQUEST,
            "checksum_mismatch",
        )
        .await;
    }
    assert!(s.objects_of(file).is_empty(), "{:?}", s.objects_of(file));
    // The same URL then takes the right bytes.
    assert!(s.put(&ticket, bytes.clone()).await.status().is_success());
    assert_eq!(s.complete(&s.ann.0, file).await.status(), StatusCode::OK);

    // Four files of 100 000 bytes are kept or pending: a fifth fits the
    // 500 000 quota exactly, one byte more does not.
    let fits = s
        .begin(&s.ann.0, json!({"name": "fits.bin", "size": 100_000}))
        .await;
    assert_eq!(fits.status(), StatusCode::CREATED);
    let over = s
        .begin(&s.ann.0, json!({"name": "over.bin", "size": 100_001}))
        .await;
    let body = expect_error(over, StatusCode::CONFLICT, "quota_exceeded").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("500000"),
        "{body}"
    );

    // Attaching what is not ready, or someone else's, is refused.
    let mut ann = Ws::connect(&s.server, &s.ann.0, None).await;
    let pending: Value = fits.json().await.unwrap();
    let refused = ann
        .request(
            json!({"type": "send", "conversation_id": s.conversation, "client_id": "p",
            "text": "x", "attachments": [{"file_id": pending["file"]["id"]}]}),
        )
        .await;
    assert_eq!(refused["code"], "attachment_unavailable", "{refused}");
    let mut bob = Ws::connect(&s.server, &s.bob.0, None).await;
    let refused = bob
        .request(
            json!({"type": "send", "conversation_id": s.conversation, "client_id": "q",
            "text": "x", "attachments": [{"file_id": file}]}),
        )
        .await;
    assert_eq!(refused["code"], "attachment_unavailable", "{refused}");
}

/// An expired URL and a tampered signature are refused, for uploads and
/// downloads.
async fn expired_and_tampered_urls_are_refused(kind: Kind) {
    // Tokens are made 20 minutes in the past, so that they are valid at
    // both times the clock is set to below.
    let real = Timestamp::from_system(std::time::SystemTime::now());
    let past = Timestamp(real.0 - 20 * 60 * 1000);
    let clock = Arc::new(ManualClock::new(past));
    let s = setup_at(kind, |_| {}, clock.clone()).await;
    clock.set(real);
    let bytes = pseudo_random(10_000, 4);
    let ready = s
        .upload("ready.bin", "application/octet-stream", &bytes)
        .await;

    // URLs signed 20 minutes ago (valid 15) have expired, for S3's real
    // clock and for the server's.
    clock.set(past);
    let late = s
        .ticket("late.bin", "application/octet-stream", &bytes, false)
        .await;
    let old: Value = s
        .get_file(&s.ann.0, &ready["id"])
        .await
        .json()
        .await
        .unwrap();
    clock.set(real);
    let put = s.put(&late, bytes.clone()).await;
    assert_eq!(put.status(), StatusCode::FORBIDDEN);
    if s.kind == Kind::Local {
        expect_error(put, StatusCode::FORBIDDEN, "url_expired").await;
    }
    assert!(s.objects_of(&late["file"]["id"]).is_empty());
    let get = s
        .server
        .client
        .get(old["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::FORBIDDEN);
    if s.kind == Kind::Local {
        expect_error(get, StatusCode::FORBIDDEN, "url_expired").await;
    }

    // Fresh URLs with one character of the signature changed are refused.
    let fresh = s
        .ticket("fresh.bin", "application/octet-stream", &bytes, false)
        .await;
    let url = fresh["upload"]["url"].as_str().unwrap();
    let put = s.put_to(&tamper(url), &fresh, bytes.clone()).await;
    assert_eq!(put.status(), StatusCode::FORBIDDEN);
    if s.kind == Kind::Local {
        expect_error(put, StatusCode::FORBIDDEN, "bad_signature").await;
    }
    assert!(s.objects_of(&fresh["file"]["id"]).is_empty());
    let download: Value = s
        .get_file(&s.ann.0, &ready["id"])
        .await
        .json()
        .await
        .unwrap();
    let url = download["url"].as_str().unwrap();
    let get = s.server.client.get(tamper(url)).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::FORBIDDEN);
    if s.kind == Kind::Local {
        expect_error(get, StatusCode::FORBIDDEN, "bad_signature").await;
    }
    // Untouched, they work.
    let get = s.server.client.get(url).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert!(s.put(&fresh, bytes).await.status().is_success());
}

/// Changes the last character of the URL's signature.
fn tamper(url: &str) -> String {
    let key = if url.contains("X-Amz-Signature=") {
        "X-Amz-Signature="
    } else {
        "signature="
    };
    let start = url.find(key).unwrap() + key.len();
    let end = url[start..].find('&').map_or(url.len(), |i| start + i);
    let mut out = url.to_owned();
    let last = &url[end - 1..end];
    // A digit is valid in both hex (S3) and base64url (local).
    out.replace_range(end - 1..end, if last == "0" { "1" } else { "0" });
    out
}

/// Deleting the message removes its files; unregistering the application
/// removes all of them.
async fn deleting_messages_and_applications_removes_files(kind: Kind) {
    let mut s = setup(kind, |_| {}).await;
    let first = s.upload("one.txt", "text/plain", b"first file").await;
    let second = s.upload("two.png", "image/png", &png(400, 400)).await;
    let kept = s
        .upload("three.txt", "text/plain", b"kept until unregistered")
        .await;
    assert!(!s.objects_of(&second["id"]).is_empty());
    let mut ann = Ws::connect(&s.server, &s.ann.0, None).await;
    let ack = ann
        .request(json!({"type": "send", "conversation_id": s.conversation, "client_id": "d1",
            "text": "two files", "attachments": [{"file_id": first["id"]}, {"file_id": second["id"], "displayed": false}]}))
        .await;
    assert_eq!(
        ack["message"]["attachments"][1]["displayed"], false,
        "{ack}"
    );
    assert_eq!(
        ack["message"]["attachments"][1]["preview"],
        json!({"width": 320, "height": 320})
    );
    let deleted = ann
        .request(json!({"type": "delete", "conversation_id": s.conversation, "message_id": ack["message"]["id"]}))
        .await;
    assert_eq!(deleted["type"], "ack", "{deleted}");
    s.wait_gone(&first["id"]).await;
    s.wait_gone(&second["id"]).await;
    expect_error(
        s.get_file(&s.ann.0, &first["id"]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // An upload URL outlives its file: a late PUT through it is refused
    // (local) or lands an object (S3) that the sweeper deletes once no
    // upload can land any more.
    let bytes = b"late bytes".to_vec();
    let ticket = s.ticket("late.txt", "text/plain", &bytes, false).await;
    let file = ticket["file"]["id"].clone();
    let r = s
        .server
        .delete(&format!("/api/v1/files/{}", file.as_str().unwrap()))
        .bearer_auth(&s.ann.0)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let late = s.put(&ticket, bytes).await;
    if s.kind == Kind::Local {
        expect_error(late, StatusCode::NOT_FOUND, "not_found").await;
    } else {
        assert!(late.status().is_success());
        assert!(!s.objects_of(&file).is_empty());
    }
    common::advance(&s.server, 2 * 60 * 60);
    s.server.services.files.sweep().await.unwrap();
    assert!(s.objects_of(&file).is_empty(), "{:?}", s.objects_of(&file));
    s.ann = user_token(&s.server, &s.app, "ann", &[]).await;
    s.bob = user_token(&s.server, &s.app, "bob", &[]).await;

    // A file not attached yet can be discarded by its uploader.
    expect_refused(
        s.server
            .delete(&format!("/api/v1/files/{}", kept["id"].as_str().unwrap()))
            .bearer_auth(&s.bob.0),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(!s.objects_of(&kept["id"]).is_empty());

    let r = s
        .server
        .delete(&format!("/api/v1/applications/{}", s.app.id))
        .basic_auth(&s.app.id, Some(&s.app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    s.wait_gone(&kept["id"]).await;
}

/// With a retention period, old files go; an upload never completed goes
/// an hour after its URL expired. (S3 checks signing times against its
/// real clock, so every upload happens within minutes of it.)
async fn retention_and_abandoned_uploads(kind: Kind) {
    let real = Timestamp::from_system(std::time::SystemTime::now());
    let minute = 60 * 1000;
    let clock = Arc::new(ManualClock::new(Timestamp(real.0 - 10 * minute)));
    let mut s = setup_at(kind, |c| c.files.retention_days = 30, clock.clone()).await;
    let old = s.upload("old.txt", "text/plain", b"old news").await;
    let abandoned = s
        .ticket(
            "abandoned.bin",
            "application/octet-stream",
            b"never sent",
            false,
        )
        .await;
    let half = s
        .ticket(
            "half.bin",
            "application/octet-stream",
            b"sent, never completed",
            false,
        )
        .await;
    ok(s.put(&half, b"sent, never completed".to_vec()).await).await;
    assert!(!s.objects_of(&half["file"]["id"]).is_empty());
    clock.set(real);
    let young = s.upload("young.txt", "text/plain", b"still here").await;

    // Two hours on, both uploads are abandoned; the files are kept.
    clock.set(Timestamp(real.0 + 120 * minute));
    s.ann = user_token(&s.server, &s.app, "ann", &[]).await;
    s.server.services.files.sweep().await.unwrap();
    let gone = |r| expect_error(r, StatusCode::NOT_FOUND, "not_found");
    gone(s.get_file(&s.ann.0, &abandoned["file"]["id"]).await).await;
    gone(s.get_file(&s.ann.0, &half["file"]["id"]).await).await;
    assert!(s.objects_of(&half["file"]["id"]).is_empty());
    assert_eq!(
        s.get_file(&s.ann.0, &old["id"]).await.status(),
        StatusCode::OK
    );

    // 30 days after the old file (and less after the young one), only the
    // old one goes.
    clock.set(Timestamp(real.0 - 9 * minute + 30 * 24 * 60 * minute));
    s.ann = user_token(&s.server, &s.app, "ann", &[]).await;
    s.server.services.files.sweep().await.unwrap();
    gone(s.get_file(&s.ann.0, &old["id"]).await).await;
    assert!(s.objects_of(&old["id"]).is_empty());
    assert_eq!(
        s.get_file(&s.ann.0, &young["id"]).await.status(),
        StatusCode::OK
    );
    assert!(!s.objects_of(&young["id"]).is_empty());
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Local).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::S3).await;
                }
            )*
        }
    };
}

on_both_backends!(
    attach_and_download_with_names_in_any_script,
    images_get_a_preview,
    bad_uploads_leave_nothing,
    expired_and_tampered_urls_are_refused,
    deleting_messages_and_applications_removes_files,
    retention_and_abandoned_uploads,
);
