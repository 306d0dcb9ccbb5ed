//! Outgoing webhooks through the real server: a receiver in the test (a
//! local HTTP server) verifies each delivery's signature and gets every
//! event at least once, with one body per idempotency id, across a
//! graceful restart and a `kill -9` of the `signalling` binary; failed
//! attempts are retried; a dead endpoint reaches dead-letter and a hanging
//! one times out while another application's deliveries stay on time;
//! endpoints are the application's own, validated, revocable and audited;
//! a rotated secret signs beside the new one for the time asked.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::process::Process;
use common::{App, TestServer, Ws, expect_error, user_token};
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;

/// `[webhooks] allowed_networks` for receivers on this host.
const LOOPBACK: &str = r#"["127.0.0.0/8"]"#;

/// One delivery as the receiver saw it.
#[derive(Clone, Debug)]
struct Got {
    id: String,
    body: String,
    at: Instant,
    timestamp: String,
    /// The `webhook-signature` header.
    signature: String,
}

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// 204 after `delay`; the first attempt of every third event 500.
    Flaky { delay: Duration },
    /// 204 at once.
    Prompt,
    /// Never answers.
    Hang,
}

/// A local HTTP server standing in for an integration's endpoint.
#[derive(Clone)]
struct Receiver {
    url: String,
    secret: Arc<Mutex<String>>,
    got: Arc<Mutex<Vec<Got>>>,
    refused_once: Arc<Mutex<BTreeSet<String>>>,
    bad_signatures: Arc<Mutex<u32>>,
    /// The server runs on the real clock: timestamps are checked.
    real_clock: bool,
}

impl Receiver {
    async fn start(mode: Mode) -> Self {
        Self::start_with(mode, true).await
    }

    async fn start_with(mode: Mode, real_clock: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let this = Self {
            url,
            secret: Arc::default(),
            got: Arc::default(),
            refused_once: Arc::default(),
            bad_signatures: Arc::default(),
            real_clock,
        };
        let state = this.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { state.take(mode, &headers, &body).await }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        this
    }

    async fn take(&self, mode: Mode, headers: &HeaderMap, body: &[u8]) -> StatusCode {
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
        let body = String::from_utf8(body.to_vec()).unwrap();
        let signature = header("webhook-signature");
        if !verify(
            &self.secret.lock().unwrap(),
            &id,
            &timestamp,
            &body,
            &signature,
        ) {
            *self.bad_signatures.lock().unwrap() += 1;
            return StatusCode::UNAUTHORIZED;
        }
        // (A server on a manual clock stamps its own time.)
        let age = (jiff::Timestamp::now().as_second() - timestamp.parse::<i64>().unwrap()).abs();
        assert!(
            !self.real_clock || age < 300,
            "timestamp {timestamp} is {age} s off"
        );
        match mode {
            Mode::Hang => std::future::pending().await,
            Mode::Prompt => {}
            Mode::Flaky { delay } => {
                tokio::time::sleep(delay).await;
                let seq: u64 = id.rsplit('_').next().unwrap().parse().unwrap();
                if seq.is_multiple_of(3) && self.refused_once.lock().unwrap().insert(id.clone()) {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
            }
        }
        self.got.lock().unwrap().push(Got {
            id,
            body,
            at: Instant::now(),
            timestamp,
            signature,
        });
        StatusCode::NO_CONTENT
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The bodies received, one per idempotency id; panics when one id
    /// came with two different bodies.
    fn by_id(&self) -> BTreeMap<String, Value> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for g in self.got() {
            let first = out.entry(g.id.clone()).or_insert_with(|| g.body.clone());
            assert_eq!(*first, g.body, "id {} came with two bodies", g.id);
        }
        out.into_iter()
            .map(|(id, body)| {
                let value: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(value["id"], id.as_str());
                (id, value)
            })
            .collect()
    }
}

/// The Standard Webhooks check: `v1,` and base64 HMAC-SHA256 of
/// `id.timestamp.body` under the secret's decoded bytes.
fn verify(secret: &str, id: &str, timestamp: &str, body: &str, signature: &str) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|given| mac.clone().verify_slice(&given).is_ok())
}

async fn register_endpoint(base: &str, app: &App, url: &str, events: &[&str]) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/webhook-endpoints"))
        .basic_auth(&app.id, Some(&app.secret))
        .json(&json!({"url": url, "events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

async fn revoke(server: &TestServer, app: &App, id: &str) -> reqwest::Response {
    server
        .delete(&format!("/api/v1/webhook-endpoints/{id}"))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap()
}

async fn deliveries(base: &str, app: &App, endpoint: &Value, query: &str) -> Vec<Value> {
    let r = reqwest::Client::new()
        .get(format!(
            "{base}/api/v1/webhook-endpoints/{}/deliveries?limit=200{query}",
            endpoint["id"].as_str().unwrap()
        ))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.unwrap();
    page["deliveries"].as_array().unwrap().clone()
}

/// A user token from the binary's REST API (provisions the user).
async fn process_token(base: &str, app: &App, external_id: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/tokens"))
        .basic_auth(&app.id, Some(&app.secret))
        .json(&json!({"external_id": external_id, "name": external_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

async fn connect(server: &Process, token: &str) -> Ws {
    Ws::connect_via(
        format!("ws://{}/api/v1/ws?token={token}", server.addr()),
        None,
    )
    .await
}

/// Sends `count` messages `<prefix>-<n>`, each acknowledged; returns the
/// moment of each acknowledgement by client id.
async fn send(
    ws: &mut Ws,
    conversation: &Value,
    prefix: &str,
    count: usize,
) -> Vec<(String, Instant)> {
    let mut acked = Vec::new();
    for n in 0..count {
        let client_id = format!("{prefix}-{n}");
        let answer = ws
            .request(json!({"type": "send", "conversation_id": conversation,
                "client_id": client_id, "text": format!("text of {client_id}")}))
            .await;
        assert_eq!(answer["type"], "ack", "{answer}");
        acked.push((client_id, Instant::now()));
    }
    acked
}

fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Process {
    // (The test's own HTTP clients need a TLS provider.)
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(*v))).collect();
    Process::start_with_env(dir, &env)
}

/// The client ids of the `message.created` deliveries received.
fn created(receiver: &Receiver) -> BTreeSet<String> {
    receiver
        .by_id()
        .values()
        .filter(|v| v["type"] == "message.created")
        .map(|v| {
            v["data"]["message"]["client_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// (Two threads: the receiver answers while the test waits for the
// process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_across_a_restart_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CONFER_WEBHOOKS__RETRY_BASE_MS", "200"),
        ("CONFER_WEBHOOKS__MAX_ATTEMPTS", "30"),
        ("CONFER_WEBHOOKS__TIMEOUT_SECS", "2"),
        // (The receivers are on this host.)
        ("CONFER_WEBHOOKS__ALLOWED_NETWORKS", LOOPBACK),
    ];
    let mut server = start(dir.path(), &env);
    let app = server.register(dir.path(), "ops@example.com", "ERP").await;
    // A slow receiver, so that a kill finds deliveries waiting and in
    // flight; every third event's first attempt is refused.
    let receiver = Receiver::start(Mode::Flaky {
        delay: Duration::from_millis(40),
    })
    .await;
    let endpoint = register_endpoint(
        &server.base,
        &app,
        &receiver.url,
        &["message", "user", "action"],
    )
    .await;
    *receiver.secret.lock().unwrap() = endpoint["secret"].as_str().unwrap().to_owned();
    assert!(endpoint["secret"].as_str().unwrap().starts_with("whsec_"));

    let token = process_token(&server.base, &app, "ann").await;
    let mut ann = connect(&server, &token).await;
    let conversation = ann
        .request(json!({"type": "create_conversation", "title": "Orders"}))
        .await["conversation"]["id"]
        .clone();
    let mut expected = BTreeSet::new();
    for (round, stop) in ["kill", "term", "none"].into_iter().enumerate() {
        let acked = send(&mut ann, &conversation, &format!("r{round}"), 15).await;
        expected.extend(acked.into_iter().map(|(c, _)| c));
        // Stopped mid-stream: some delivered, some in flight, some waiting.
        let before = expected.len() - 12;
        wait_until("the first deliveries", Duration::from_secs(30), || {
            created(&receiver).len() >= before
        })
        .await;
        match stop {
            "kill" => {
                server.child.kill().unwrap();
                server.child.wait().unwrap();
            }
            // (Off the runtime: the receiver keeps answering while the
            // test waits for the process.)
            "term" => {
                let stopped = tokio::task::spawn_blocking(move || server.terminate());
                assert!(stopped.await.unwrap().success());
            }
            _ => break,
        }
        let undelivered = expected.difference(&created(&receiver)).count();
        eprintln!(
            "after {stop}: {undelivered} of {} not yet delivered",
            expected.len()
        );
        let path = dir.path().to_owned();
        server = tokio::task::spawn_blocking(move || start(&path, &env))
            .await
            .unwrap();
        ann = connect(&server, &token).await;
    }
    wait_until("every message delivered", Duration::from_secs(60), || {
        created(&receiver).is_superset(&expected)
    })
    .await;
    let by_id = receiver.by_id();
    assert_eq!(created(&receiver), expected, "only the messages sent");
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);
    let provisioned: Vec<&Value> = by_id
        .values()
        .filter(|v| v["type"] == "user.provisioned")
        .collect();
    assert_eq!(provisioned.len(), 1, "{by_id:?}");
    assert_eq!(provisioned[0]["data"]["user"]["external_id"], "ann");
    for v in by_id.values() {
        assert_eq!(v["app_id"], app.id.as_str());
    }
    let repeats = receiver.got().len() - by_id.len();
    eprintln!(
        "{} events, {} deliveries received ({repeats} repeats), {} refused once",
        by_id.len(),
        receiver.got().len(),
        receiver.refused_once.lock().unwrap().len()
    );
    // The delivery log has them all delivered, and records the retries of
    // refused ones (not all: an attempt cut off by the kill before its
    // outcome was written is not counted).
    // (The receiver records a delivery before it answers, and an attempt
    // cut off by the kill is sent again only when its lease ends: the log
    // catches up a little after the receiver.)
    let started = Instant::now();
    let log = loop {
        let log = deliveries(&server.base, &app, &endpoint, "").await;
        if log.iter().all(|d| d["state"] == "delivered")
            || started.elapsed() > Duration::from_secs(60)
        {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(log.len(), by_id.len());
    let refused = receiver.refused_once.lock().unwrap().clone();
    assert!(!refused.is_empty());
    let mut retried = 0;
    for d in &log {
        assert_eq!(d["state"], "delivered", "{d}");
        assert_eq!(d["last_status"], 204, "{d}");
        if d["attempts"].as_u64().unwrap() >= 2 {
            assert!(refused.contains(d["event_id"].as_str().unwrap()), "{d}");
            retried += 1;
        }
    }
    assert!(
        retried * 2 >= refused.len(),
        "{retried} of {} retries recorded",
        refused.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_dead_lettered_and_others_stay_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CONFER_WEBHOOKS__RETRY_BASE_MS", "100"),
        ("CONFER_WEBHOOKS__MAX_ATTEMPTS", "3"),
        ("CONFER_WEBHOOKS__TIMEOUT_SECS", "2"),
        // (The receivers are on this host.)
        ("CONFER_WEBHOOKS__ALLOWED_NETWORKS", LOOPBACK),
    ];
    let server = start(dir.path(), &env);
    let on_time = server.register(dir.path(), "a@example.com", "A").await;
    let dead = server.register(dir.path(), "b@example.com", "B").await;
    let hanging = server.register(dir.path(), "c@example.com", "C").await;
    let good = Receiver::start(Mode::Prompt).await;
    let stuck = Receiver::start(Mode::Hang).await;
    let closed: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let good_endpoint = register_endpoint(&server.base, &on_time, &good.url, &["message"]).await;
    *good.secret.lock().unwrap() = good_endpoint["secret"].as_str().unwrap().to_owned();
    let dead_endpoint = register_endpoint(
        &server.base,
        &dead,
        &format!("http://{closed}/hook"),
        &["message"],
    )
    .await;
    let stuck_endpoint = register_endpoint(&server.base, &hanging, &stuck.url, &["message"]).await;
    *stuck.secret.lock().unwrap() = stuck_endpoint["secret"].as_str().unwrap().to_owned();

    let mut sockets = Vec::new();
    for app in [&on_time, &dead, &hanging] {
        let token = process_token(&server.base, app, "ann").await;
        let mut ws = connect(&server, &token).await;
        let conversation = ws
            .request(json!({"type": "create_conversation", "title": "Feed"}))
            .await["conversation"]["id"]
            .clone();
        sockets.push((ws, conversation));
    }
    // The dead and the hanging endpoints get their load first …
    for (ws, conversation) in &mut sockets[1..] {
        send(ws, conversation, "load", 20).await;
    }
    // … then each message of A is delivered soon after its ack.
    let (ws, conversation) = &mut sockets[0];
    let mut worst = Duration::ZERO;
    for (client_id, acked) in send(ws, conversation, "a", 10).await {
        let mut arrived = None;
        wait_until("A's delivery", Duration::from_secs(10), || {
            arrived = good
                .got()
                .into_iter()
                .find(|g| g.body.contains(&format!("\"client_id\":\"{client_id}\"")))
                .map(|g| g.at);
            arrived.is_some()
        })
        .await;
        worst = worst.max(arrived.unwrap().saturating_duration_since(acked));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("A's slowest delivery after its ack: {worst:?}");
    assert!(
        worst < Duration::from_secs(2),
        "A waited {worst:?} behind the other applications' endpoints"
    );
    // B's deliveries are dead after three attempts, with the reason.
    let start = Instant::now();
    let dead_log = loop {
        let log = deliveries(&server.base, &dead, &dead_endpoint, "&state=dead").await;
        if log.len() == 20 || start.elapsed() > Duration::from_secs(20) {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dead_log.len(), 20, "{dead_log:?}");
    for d in &dead_log {
        assert_eq!(d["attempts"], 3, "{d}");
        assert_eq!(d["last_error"], "could not connect", "{d}");
        assert!(d.get("next_attempt_at").is_none(), "{d}");
    }
    // A dead delivery retried by hand is pending again, attempts anew.
    let one = dead_log[0]["id"].as_str().unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/webhook-endpoints/{}/deliveries/{one}/retry",
            server.base,
            dead_endpoint["id"].as_str().unwrap()
        ))
        .basic_auth(&dead.id, Some(&dead.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let log = deliveries(&server.base, &dead, &dead_endpoint, "").await;
    let again = log.iter().find(|d| d["id"] == one).unwrap();
    assert!(
        again["state"] == "pending" || again["attempts"].as_u64().unwrap() < 3,
        "{again}"
    );
    // The hanging endpoint's attempts end by the timeout.
    let start = Instant::now();
    loop {
        let log = deliveries(&server.base, &hanging, &stuck_endpoint, "").await;
        if let Some(d) = log.iter().find(|d| d["attempts"].as_u64().unwrap() >= 1) {
            assert_eq!(d["last_error"], "no answer within 2 s", "{d}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{log:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stuck.got().is_empty());
}

#[tokio::test]
async fn endpoints_are_the_applications_own_validated_filtered_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.webhooks.allowed_networks = vec!["127.0.0.0/8".to_owned()];
    let server = TestServer::start_with(config, common::default_clock()).await;
    let app = server.register("erp@example.com", "ERP").await;
    let other = server.register("crm@example.com", "CRM").await;
    let receiver = Receiver::start_with(Mode::Prompt, false).await;
    let create = |app: &App, body: Value| {
        server
            .post("/api/v1/webhook-endpoints")
            .basic_auth(&app.id, Some(&app.secret))
            .json(&body)
            .send()
    };
    for (body, code) in [
        (
            json!({"url": "ftp://x/y", "events": ["message"]}),
            "invalid_request",
        ),
        (
            json!({"url": "not a url", "events": ["message"]}),
            "invalid_request",
        ),
        (
            json!({"url": "http://u:p@x/y", "events": ["message"]}),
            "invalid_request",
        ),
        (
            json!({"url": receiver.url, "events": []}),
            "invalid_request",
        ),
        (
            json!({"url": receiver.url, "events": ["everything"]}),
            "invalid_request",
        ),
        (json!({"url": receiver.url}), "invalid_request"),
        (
            json!({"url": receiver.url, "events": ["message"], "x": 1}),
            "unknown_field",
        ),
    ] {
        let r = create(&app, body.clone()).await.unwrap();
        expect_error(r, StatusCode::BAD_REQUEST, code).await;
    }
    // Only clicks: a message is not sent, a click is.
    let r = create(&app, json!({"url": receiver.url, "events": ["action"]}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let endpoint: Value = r.json().await.unwrap();
    *receiver.secret.lock().unwrap() = endpoint["secret"].as_str().unwrap().to_owned();
    assert_eq!(endpoint["events"], json!(["action"]));
    let (token, _) = user_token(&server, &app, "ann", &[]).await;
    let mut ann = Ws::connect(&server, &token, None).await;
    let mut bot = Ws::connect_bot(&server, &app).await;
    let conversation = ann
        .request(json!({"type": "create_conversation", "title": "Orders"}))
        .await["conversation"]["id"]
        .clone();
    ann.request(
        json!({"type": "send", "conversation_id": conversation, "client_id": "m1", "text": "hi"}),
    )
    .await;
    let sent = bot
        .request(
            json!({"type": "send", "conversation_id": conversation, "client_id": "b1",
            "text": "Approve?", "actions": [{"value": "yes", "presentation": "Yes"}]}),
        )
        .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let clicked = ann
        .request(json!({"type": "click", "conversation_id": conversation,
            "message_id": sent["message"]["id"], "value": "yes"}))
        .await;
    assert_eq!(clicked["type"], "ack", "{clicked}");
    wait_until("the click", Duration::from_secs(10), || {
        !receiver.got().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.by_id();
    assert_eq!(got.len(), 1, "{got:?}");
    let click = got.values().next().unwrap();
    assert_eq!(click["type"], "action.clicked");
    assert_eq!(click["data"]["value"], "yes");
    assert_eq!(click["data"]["conversation_id"], conversation);

    // Another application neither sees, reads the log of, nor revokes it.
    let id = endpoint["id"].as_str().unwrap();
    let listed: Value = common::json(
        server
            .get("/api/v1/webhook-endpoints")
            .basic_auth(&other.id, Some(&other.secret)),
    )
    .await;
    assert_eq!(listed["endpoints"], json!([]));
    for r in [
        server
            .get(&format!("/api/v1/webhook-endpoints/{id}/deliveries"))
            .basic_auth(&other.id, Some(&other.secret)),
        server
            .delete(&format!("/api/v1/webhook-endpoints/{id}"))
            .basic_auth(&other.id, Some(&other.secret)),
    ] {
        expect_error(r.send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    }
    let r = server
        .get(&format!(
            "/api/v1/webhook-endpoints/{id}/deliveries?limit=0"
        ))
        .basic_auth(&app.id, Some(&app.secret));
    expect_error(
        r.send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let r = server.get("/api/v1/webhook-endpoints");
    expect_error(
        r.send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    // Revoked: a second click reaches it no more.
    assert_eq!(
        revoke(&server, &app, id).await.status(),
        StatusCode::NO_CONTENT
    );
    expect_error(
        revoke(&server, &app, id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    ann.request(json!({"type": "click", "conversation_id": conversation,
        "message_id": sent["message"]["id"], "value": "yes"}))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.by_id().len(), 1);
    let listed: Value = common::json(
        server
            .get("/api/v1/webhook-endpoints")
            .basic_auth(&app.id, Some(&app.secret)),
    )
    .await;
    assert!(listed["endpoints"][0]["revoked_at"].is_string(), "{listed}");

    // Both changes are in the audit log.
    let session = server.sign_in("erp@example.com").await;
    let audit: Value = common::json(
        server
            .get(&format!("/api/v1/audit?app_id={}", app.id))
            .bearer_auth(&session),
    )
    .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"endpoint.created"), "{actions:?}");
    assert!(actions.contains(&"endpoint.revoked"), "{actions:?}");
}

/// By default deliveries go only to public addresses: an internal IP in the
/// URL is refused when the endpoint is registered, and a name that resolves
/// to one is refused at each attempt, before anything is sent.
#[tokio::test]
async fn internal_addresses_are_refused_unless_allowed() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("erp@example.com", "ERP").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/erp",
        "http://[::ffff:192.168.0.1]/",
    ] {
        let r = server
            .post("/api/v1/webhook-endpoints")
            .basic_auth(&app.id, Some(&app.secret))
            .json(&json!({"url": url, "events": ["user"]}))
            .send()
            .await
            .unwrap();
        let body = expect_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("is an internal address"),
            "{url}: {body}"
        );
    }
    // A name is checked where it leads, at each attempt.
    let receiver = Receiver::start_with(Mode::Prompt, false).await;
    let port = receiver.url.rsplit(':').next().unwrap();
    let endpoint = register_endpoint(
        &server.base,
        &app,
        &format!("http://localhost:{port}"),
        &["user"],
    )
    .await;
    user_token(&server, &app, "ann", &[]).await;
    let started = Instant::now();
    let refused = loop {
        let log = deliveries(&server.base, &app, &endpoint, "").await;
        if let Some(d) = log.iter().find(|d| d["attempts"].as_u64() >= Some(1)) {
            break d.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = refused["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("localhost resolves only to internal addresses"),
        "{refused}"
    );
    assert!(refused["last_status"].is_null(), "{refused}");
    assert!(receiver.got().is_empty());
    assert_eq!(
        *receiver.bad_signatures.lock().unwrap(),
        0,
        "nothing was sent"
    );
}

/// A rotated endpoint secret keeps signing beside the new one for the time
/// asked (a day by default), so the receiver switches without refusing a
/// delivery; with 0 it stops at once. Rotations are the application's own,
/// validated and audited.
#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one_for_the_time_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.webhooks.allowed_networks = vec!["127.0.0.0/8".to_owned()];
    let server = TestServer::start_with(config, common::default_clock()).await;
    let app = server.register("erp@example.com", "ERP").await;
    let other = server.register("crm@example.com", "CRM").await;
    let receiver = Receiver::start_with(Mode::Prompt, false).await;
    let endpoint = register_endpoint(&server.base, &app, &receiver.url, &["user"]).await;
    let id = endpoint["id"].as_str().unwrap();
    let first = endpoint["secret"].as_str().unwrap().to_owned();
    *receiver.secret.lock().unwrap() = first.clone();
    // (Every delivery below is of an event written after the rotation
    // before it: it is signed with the secrets as rotated, even by a
    // sender pass that began before the rotation.)
    let rotate = |app: &App, body: Value| {
        server
            .post(&format!("/api/v1/webhook-endpoints/{id}/secret"))
            .basic_auth(&app.id, Some(&app.secret))
            .json(&body)
            .send()
    };
    // Each new user is one `user.provisioned` delivery; its signatures,
    // one by one.
    let provision = |n: usize| {
        let (server, app, receiver) = (&server, &app, &receiver);
        async move {
            user_token(server, app, &format!("user-{n}"), &[]).await;
            wait_until("the delivery", Duration::from_secs(10), || {
                receiver.got().len() == n
            })
            .await;
            let got = receiver.got().pop().unwrap();
            let signatures: Vec<String> = got.signature.split(' ').map(str::to_owned).collect();
            (got, signatures)
        }
    };
    let signs = |got: &Got, secret: &str, signature: &str| {
        verify(secret, &got.id, &got.timestamp, &got.body, signature)
    };

    let (got, signatures) = provision(1).await;
    assert_eq!(signatures.len(), 1, "{signatures:?}");
    assert!(signs(&got, &first, &signatures[0]));

    // Rotated with the default: both sign for a day, the new one first.
    let r = rotate(&app, json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let rotated: Value = r.json().await.unwrap();
    let second = rotated["secret"].as_str().unwrap().to_owned();
    assert!(second.starts_with("whsec_") && second != first, "{rotated}");
    let until = rotated["previous_secret_until"].as_str().unwrap();
    let until: jiff::Timestamp = until.parse().unwrap();
    let day_after = confer_signalling::ids::Clock::now(&*server.clock).as_secs() + 86_400;
    assert!((until.as_second() - day_after).abs() <= 1, "{rotated}");
    let listed: Value = common::json(
        server
            .get("/api/v1/webhook-endpoints")
            .basic_auth(&app.id, Some(&app.secret)),
    )
    .await;
    assert_eq!(listed["endpoints"][0]["secret"], second.as_str());
    assert!(listed["endpoints"][0]["previous_secret_until"].is_string());
    let (got, signatures) = provision(2).await;
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(signs(&got, &second, &signatures[0]));
    assert!(signs(&got, &first, &signatures[1]));
    assert!(!signs(&got, &first, &signatures[0]));
    // The receiver switches whenever it likes within the day.
    *receiver.secret.lock().unwrap() = second.clone();
    let (got, signatures) = provision(3).await;
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(signs(&got, &second, &signatures[0]));

    // A day later only the new one signs.
    common::advance(&server, 86_401);
    let (got, signatures) = provision(4).await;
    assert_eq!(signatures.len(), 1, "{signatures:?}");
    assert!(signs(&got, &second, &signatures[0]));
    let listed: Value = common::json(
        server
            .get("/api/v1/webhook-endpoints")
            .basic_auth(&app.id, Some(&app.secret)),
    )
    .await;
    assert!(
        listed["endpoints"][0]["previous_secret_until"].is_null(),
        "{listed}"
    );

    // A leaked secret: 0 ends it at once.
    let rotated: Value = rotate(&app, json!({"keep_previous_secs": 0}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let third = rotated["secret"].as_str().unwrap().to_owned();
    assert!(rotated["previous_secret_until"].is_null(), "{rotated}");
    *receiver.secret.lock().unwrap() = third.clone();
    let (got, signatures) = provision(5).await;
    assert_eq!(signatures.len(), 1, "{signatures:?}");
    assert!(signs(&got, &third, &signatures[0]));
    assert!(!signs(&got, &second, &signatures[0]));
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);

    // Refusals: too long a keep, an unknown field, another application's
    // endpoint, a revoked one, no credentials.
    for (body, code) in [
        (json!({"keep_previous_secs": 604_801}), "invalid_request"),
        (json!({"keep_previous_secs": -1}), "invalid_request"),
        (json!({"keep": 1}), "unknown_field"),
    ] {
        expect_error(
            rotate(&app, body).await.unwrap(),
            StatusCode::BAD_REQUEST,
            code,
        )
        .await;
    }
    expect_error(
        rotate(&other, json!({})).await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let r = server
        .post(&format!("/api/v1/webhook-endpoints/{id}/secret"))
        .json(&json!({}));
    expect_error(
        r.send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(
        revoke(&server, &app, id).await.status(),
        StatusCode::NO_CONTENT
    );
    expect_error(
        rotate(&app, json!({})).await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Each rotation is audited with the time the old secret was kept.
    let session = server.sign_in("erp@example.com").await;
    let audit: Value = common::json(
        server
            .get(&format!(
                "/api/v1/audit?app_id={}&action=endpoint.secret_rotated",
                app.id
            ))
            .bearer_auth(&session),
    )
    .await;
    let kept: Vec<u64> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["target"], format!("endpoint:{id}"));
            e["details"]["keep_previous_secs"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(kept, [0, 86_400], "newest first");
}
