//! Harness shared by the integration tests: a real server on an ephemeral
//! loopback port, a real HTTP client, and helpers that read mailed codes
//! from the outbox.

#![allow(dead_code)]

pub mod calls;
pub mod cluster;
pub mod fuzz;
pub mod latency;
pub mod process;
pub mod s3;
#[path = "../../../sfu/tests/common/tls.rs"]
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use confer_signalling::ids::{Clock, ManualClock, Timestamp};
use confer_signalling::{Services, SignallingConfig};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server with its own data directory and a manual clock.
pub struct TestServer {
    pub base: String,
    pub client: Client,
    pub services: Arc<Services>,
    pub clock: Arc<ManualClock>,
    pub data_dir: PathBuf,
    /// With `[tls]`: a client configuration trusting the served
    /// certificate (the HTTP client and [`Ws`] use it).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Credentials of a registered application.
#[derive(Clone, Debug)]
pub struct App {
    pub id: String,
    pub secret: String,
    pub subscriber_id: String,
}

impl TestServer {
    /// A server on a fresh temporary data directory.
    pub async fn start() -> (Self, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let server = Self::start_in(dir.path(), default_clock()).await;
        (server, dir)
    }

    /// A server on `data_dir` with `clock`.
    pub async fn start_in(data_dir: &Path, clock: Arc<ManualClock>) -> Self {
        Self::start_with(test_config(data_dir), clock).await
    }

    /// A server with this configuration; HTTPS and WSS when it has `[tls]`.
    pub async fn start_with(config: SignallingConfig, clock: Arc<ManualClock>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(config, clock, listener).await
    }

    /// A server with this configuration on `listener` (`base` is its
    /// address as bound).
    pub async fn start_on(
        config: SignallingConfig,
        clock: Arc<ManualClock>,
        listener: tokio::net::TcpListener,
    ) -> Self {
        let data_dir = config.data_dir.clone();
        let certificates = config
            .tls
            .as_ref()
            .map(|tls| confer_sfu::tls::Certificates::load(tls).unwrap());
        let services = Services::open(config, clock.clone() as Arc<dyn Clock>)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let shutdown = async {
            let _ = rx.await;
        };
        let (base, client, tls, task) = match certificates {
            None => (
                format!("http://{addr}"),
                Client::new(),
                None,
                tokio::spawn(confer_signalling::run(listener, services.clone(), shutdown)),
            ),
            Some(certificates) => {
                let tls = tls::trusting(certificates.chain().into_iter().take(1));
                let listener = confer_sfu::tls::TlsListener::new(listener, &certificates);
                (
                    format!("https://{addr}"),
                    tls::https_client_with(tls.clone()),
                    Some(tls),
                    tokio::spawn(confer_signalling::run(listener, services.clone(), shutdown)),
                )
            }
        };
        Self {
            base,
            client,
            services,
            clock,
            data_dir,
            tls,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The WebSocket URL of `path` (`ws://` or `wss://`).
    pub fn ws_url(&self, path: &str) -> String {
        let base = self
            .base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        format!("{base}{path}")
    }

    /// Graceful stop; waits until the server has returned.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(self.url(path))
    }

    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.client.patch(self.url(path))
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.client.delete(self.url(path))
    }

    /// The code in the newest mail to `email` in the outbox.
    pub fn last_code(&self, email: &str) -> String {
        last_code_in(&self.data_dir.join("outbox"), email)
            .expect("a mail with a code for this address")
    }

    /// How many mails are in the outbox.
    pub fn outbox_len(&self) -> usize {
        std::fs::read_dir(self.data_dir.join("outbox"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "eml"))
                })
                .count()
            })
            .unwrap_or(0)
    }

    /// Requests a registration code for `email`.
    pub async fn request_code(&self, email: &str, app_name: &str) {
        let r = self
            .post("/api/v1/registrations")
            .json(&json!({"email": email, "app_name": app_name}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::ACCEPTED,
            "{}",
            r.text().await.unwrap()
        );
    }

    /// Registers an application through the whole e-mail code flow.
    pub async fn register(&self, email: &str, app_name: &str) -> App {
        self.request_code(email, app_name).await;
        let code = self.last_code(email);
        let r = self
            .post("/api/v1/registrations/confirm")
            .json(&json!({"email": email, "app_name": app_name, "code": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        App {
            id: body["app_id"].as_str().unwrap().to_owned(),
            secret: body["app_secret"].as_str().unwrap().to_owned(),
            subscriber_id: body["subscriber_id"].as_str().unwrap().to_owned(),
        }
    }

    /// A user token from `POST /api/v1/tokens`; returns the whole body.
    pub async fn token(&self, app: &App, external_id: &str, name: &str) -> Value {
        let r = self
            .post("/api/v1/tokens")
            .basic_auth(&app.id, Some(&app.secret))
            .json(&json!({"external_id": external_id, "name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// Signs a subscriber in by e-mail code; returns the session token.
    pub async fn sign_in(&self, email: &str) -> String {
        let r = self
            .post("/api/v1/subscriber/sessions")
            .json(&json!({"email": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let code = self.last_code(email);
        let r = self
            .post("/api/v1/subscriber/sessions/confirm")
            .json(&json!({"email": email, "code": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    /// Number of (subscribers, applications, users of `app`) in the store.
    pub async fn counts(&self) -> (usize, usize) {
        let store = &self.services.store;
        (
            store.subscribers().await.unwrap().len(),
            store.applications(None).await.unwrap().len(),
        )
    }
}

/// Settings for tests: defaults with the data directory set.
pub fn test_config(data_dir: &Path) -> SignallingConfig {
    SignallingConfig {
        data_dir: data_dir.to_owned(),
        ..SignallingConfig::default()
    }
}

/// As [`test_config`], with the limits that would refuse a fuzzer's
/// repeated mails, tokens and wrong secrets off: they would hide the
/// routes behind 429.
pub fn unlimited_config(data_dir: &Path) -> SignallingConfig {
    use confer_signalling::limits::{LimitsConfig, Rate};
    let off = Rate::new(0, 60);
    SignallingConfig {
        limits: LimitsConfig {
            code_requests_per_email: off,
            code_requests_per_ip: off,
            code_confirmations_per_email: off,
            tokens_per_app: off,
            incoming_webhook_posts: off,
            basic_failures_per_app: off,
            basic_failures_per_ip: off,
            ..LimitsConfig::default()
        },
        ..test_config(data_dir)
    }
}

/// A manual clock at the current time (tokens carry real-looking times).
pub fn default_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Timestamp::from_system(
        std::time::SystemTime::now(),
    )))
}

/// `/healthz` once a component went down: health is checked again when
/// its last report is 5 s old, so this asks until the answer is not 200
/// (7 s at most) and returns that answer.
pub async fn healthz_after_a_failure(server: &TestServer) -> Response {
    for _ in 0..70 {
        let r = server.get("/healthz").send().await.unwrap();
        if r.status() != StatusCode::OK {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.get("/healthz").send().await.unwrap()
}

/// Sends a request and returns its JSON body.
pub async fn json(request: RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// Sends `request` and checks that it is refused with `status` and
/// `code` (see [`expect_error`]); returns the error body.
pub async fn expect_refused(
    request: reqwest::RequestBuilder,
    status: StatusCode,
    code: &str,
) -> Value {
    expect_error(request.send().await.unwrap(), status, code).await
}

/// Asserts an error response: status, stable code, and a message.
pub async fn expect_error(response: Response, status: StatusCode, code: &str) -> Value {
    let got = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(got, status, "body: {body}");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
    body
}

/// The code in the newest `.eml` addressed to `email` in `dir`.
pub fn last_code_in(dir: &Path, email: &str) -> Option<String> {
    let mut mails: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let modified = e.metadata().ok()?.modified().ok()?;
            Some((modified, text))
        })
        .filter(|(_, text)| {
            text.lines().any(|l| {
                l.strip_prefix("To:")
                    .is_some_and(|to| to.trim().eq_ignore_ascii_case(email))
            })
        })
        .collect();
    mails.sort_by_key(|(modified, _)| *modified);
    code_in(&mails.last()?.1)
}

/// The 6-digit code in a mail's text.
pub fn code_in(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Confer code: "))
        .map(|c| c.trim().to_owned())
}

/// Advances the clock by `secs` seconds.
pub fn advance(server: &TestServer, secs: u64) {
    server.clock.advance(Duration::from_secs(secs));
}

/// The Python that has the test tools (`openapi-spec-validator`,
/// `aiosmtpd`, `schemathesis` …): `TEST_PYTHON`, set by `scripts/test.sh`, or `python3`.
pub fn python() -> String {
    std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fails with a clear message if `module` cannot be imported.
pub fn require_python_module(module: &str) {
    let ok = std::process::Command::new(python())
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Python module {module} is missing for {}: run scripts/test.sh, which installs it, \
         or set TEST_PYTHON to a Python that has it",
        python()
    );
}

/// A real WebSocket client (tokio-tungstenite) speaking Confer's frames.
pub struct Ws {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Events received while waiting for answers.
    pub events: std::collections::VecDeque<Value>,
    /// The `welcome` frame.
    pub welcome: Value,
    /// Ephemeral frames received while waiting for something else.
    pub ephemerals: std::collections::VecDeque<Value>,
    /// Every frame received, and every JSON frame sent, in order.
    pub received: Vec<Value>,
    pub sent: Vec<Value>,
    next_id: u64,
}

impl Ws {
    /// Connects with a user token, resuming after `since` if given.
    pub async fn connect(server: &TestServer, token: &str, since: Option<u64>) -> Self {
        let mut url = server.ws_url(&format!("/api/v1/ws?token={token}"));
        if let Some(s) = since {
            url.push_str(&format!("&since={s}"));
        }
        Self::connect_via(url, server.tls.clone()).await
    }

    /// Connects as the application's bot (HTTP Basic).
    pub async fn connect_bot(server: &TestServer, app: &App) -> Self {
        use base64::Engine;
        let url = server.ws_url("/api/v1/ws");
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", app.id, app.secret));
        request
            .headers_mut()
            .insert("authorization", format!("Basic {basic}").parse().unwrap());
        Self::connect_via(request, server.tls.clone()).await
    }

    /// Connects with a prepared request (headers of the caller's choice).
    pub async fn connect_request(
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    ) -> Self {
        Self::connect_via(request, None).await
    }

    /// Connects over TLS with `tls` (a `wss://` request), plainly without.
    pub async fn connect_via(
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self::connect_with(request, tls, None).await
    }

    /// As [`Self::connect_via`], with the client's own transport settings
    /// (e.g. its size limits).
    pub async fn connect_with(
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
        tls: Option<Arc<rustls::ClientConfig>>,
        config: Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>,
    ) -> Self {
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let (stream, _) =
            tokio_tungstenite::connect_async_tls_with_config(request, config, false, connector)
                .await
                .unwrap();
        let mut ws = Self {
            stream,
            events: Default::default(),
            ephemerals: Default::default(),
            welcome: Value::Null,
            received: Vec::new(),
            sent: Vec::new(),
            next_id: 0,
        };
        ws.welcome = ws.frame().await;
        assert_eq!(ws.welcome["type"], "welcome", "{}", ws.welcome);
        ws
    }

    /// The socket itself, after the `welcome` (to write and read at once,
    /// or to see how it ends).
    pub fn into_stream(
        self,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        self.stream
    }

    /// The next frame that is not a ping (20 s at most: generous, so a busy
    /// machine is not a failure; a passing test never waits for it).
    pub async fn frame(&mut self) -> Value {
        use futures_util::StreamExt;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.stream.next())
                .await
                .expect("a frame within 20 s")
                .expect("connection open")
                .unwrap();
            match msg {
                tokio_tungstenite::tungstenite::Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    self.received.push(v.clone());
                    return v;
                }
                tokio_tungstenite::tungstenite::Message::Close(c) => {
                    return json!({"type": "closed", "close": format!("{c:?}")});
                }
                _ => {}
            }
        }
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: String) {
        use futures_util::SinkExt;
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            self.sent.push(v);
        }
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .unwrap();
    }

    /// Sends a request (an `id` is added when missing) and returns the frame
    /// answering it; events that arrive meanwhile are kept.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        if frame.get("id").is_none() {
            self.next_id += 1;
            frame["id"] = json!(format!("r{}", self.next_id));
        }
        let id = frame["id"].clone();
        self.send_text(frame.to_string()).await;
        self.answer(&id).await
    }

    /// Waits for the frame answering `id`.
    pub async fn answer(&mut self, id: &Value) -> Value {
        loop {
            let f = self.frame().await;
            if f["type"] == "event" {
                self.events.push_back(f);
            } else if f["type"] == "ephemeral" {
                self.ephemerals.push_back(f);
            } else if &f["id"] == id {
                return f;
            }
        }
    }

    /// The next ephemeral event of `kind` (a call's `call`, `call_signal`
    /// …); other frames meanwhile are kept in order.
    pub async fn ephemeral_of(&mut self, kind: &str) -> Value {
        if let Some(i) = self
            .ephemerals
            .iter()
            .position(|f| f["event"]["kind"] == kind)
        {
            return self.ephemerals.remove(i).unwrap();
        }
        loop {
            let f = self.frame().await;
            if f["type"] == "ephemeral" && f["event"]["kind"] == kind {
                return f;
            }
            if f["type"] == "event" {
                self.events.push_back(f);
            } else if f["type"] == "ephemeral" {
                self.ephemerals.push_back(f);
            }
        }
    }

    /// The next ephemeral frame (typing, presence); events meanwhile are kept.
    pub async fn ephemeral(&mut self) -> Value {
        if let Some(f) = self.ephemerals.pop_front() {
            return f;
        }
        loop {
            let f = self.frame().await;
            if f["type"] == "ephemeral" {
                return f;
            }
            if f["type"] == "event" {
                self.events.push_back(f);
            }
        }
    }

    /// The whole history of `conversation`, oldest first (pages of 200
    /// from `after: 0`).
    pub async fn history(&mut self, conversation: &str) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        loop {
            let after = all.last().map_or(0, |m| m["seq"].as_u64().unwrap());
            let page = self
                .request(json!({"type": "history", "conversation_id": conversation,
                    "after": after, "limit": 200}))
                .await;
            let messages = page["messages"]
                .as_array()
                .unwrap_or_else(|| panic!("{page}"));
            all.extend(messages.iter().cloned());
            if messages.len() < 200 {
                return all;
            }
        }
    }

    /// The next event frame.
    pub async fn event(&mut self) -> Value {
        if let Some(e) = self.events.pop_front() {
            return e;
        }
        loop {
            let f = self.frame().await;
            if f["type"] == "event" {
                return f;
            }
        }
    }
}

/// A user token with the given contexts (business objects it may see).
pub async fn user_token(
    server: &TestServer,
    app: &App,
    external_id: &str,
    contexts: &[&str],
) -> (String, String) {
    let r = server
        .post("/api/v1/tokens")
        .basic_auth(&app.id, Some(&app.secret))
        .json(&json!({"external_id": external_id, "name": external_id, "contexts": contexts}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    (
        body["token"].as_str().unwrap().to_owned(),
        body["user_id"].as_str().unwrap().to_owned(),
    )
}

/// Uploads `bytes` as a file of `token`'s user to `conversation` (ask,
/// `PUT` to the signed URL, complete) and returns the ready file.
pub async fn upload_file(
    server: &TestServer,
    token: &str,
    conversation: &str,
    bytes: &[u8],
) -> Value {
    upload_file_as(
        server,
        token,
        conversation,
        ("a.bin", "application/octet-stream"),
        bytes,
    )
    .await
}

/// As [`upload_file`], with the file's name and content type.
pub async fn upload_file_as(
    server: &TestServer,
    token: &str,
    conversation: &str,
    (name, content_type): (&str, &str),
    bytes: &[u8],
) -> Value {
    use sha2::{Digest, Sha256};
    let sha256: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let ticket = json(
        server
            .post(&format!("/api/v1/conversations/{conversation}/files"))
            .bearer_auth(token)
            .json(&json!({"name": name, "size": bytes.len(),
                "content_type": content_type, "sha256": sha256})),
    )
    .await;
    let put = server
        .client
        .put(ticket["upload"]["url"].as_str().unwrap())
        .header(
            "content-type",
            ticket["upload"]["headers"]["Content-Type"]
                .as_str()
                .unwrap(),
        )
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let file = json(
        server
            .post(&format!(
                "/api/v1/files/{}/complete",
                ticket["file"]["id"].as_str().unwrap()
            ))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(file["state"], "ready", "{file}");
    file
}

/// The JSON Schemas of docs/protocol.md, the contract of the WebSocket
/// protocol: `#### \`name\`` headings and their ```json blocks, per section.
pub fn protocol_schemas(section: &str) -> BTreeMap<String, Value> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    let doc = doc.as_str();
    let start = doc
        .find(section)
        .unwrap_or_else(|| panic!("no {section} in docs/protocol.md"));
    let rest = &doc[start + section.len()..];
    let end = rest.find("\n### ").unwrap_or(rest.len());
    let mut out = BTreeMap::new();
    let mut name = None;
    let mut lines = rest[..end].lines();
    while let Some(line) = lines.next() {
        if let Some(n) = line
            .strip_prefix("#### `")
            .and_then(|l| l.strip_suffix('`'))
        {
            name = Some(n.to_owned());
        } else if line == "```json" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            let schema: Value = serde_json::from_str(&block.join("\n")).unwrap();
            out.insert(name.take().expect("a heading before the schema"), schema);
        }
    }
    out
}

/// Checks every frame against the schema of its type; returns the types
/// (and `type.kind` of events) seen.
pub fn check_frames(
    schemas: &BTreeMap<String, Value>,
    frames: &[Value],
    what: &str,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for frame in frames {
        let kind = frame["type"].as_str().unwrap();
        let schema = schemas
            .get(kind)
            .unwrap_or_else(|| panic!("{what} frame type {kind:?} has no schema"));
        let validator = jsonschema::validator_for(schema).unwrap();
        if let Err(e) = validator.validate(frame) {
            panic!("{what} frame does not match its schema: {e}\n{frame}");
        }
        seen.insert(kind.to_owned());
        if let Some(k) = frame["event"]["kind"].as_str() {
            seen.insert(format!("{kind}.{k}"));
        }
    }
    seen
}

/// Whether a file whose name holds `id` is anywhere under `root` (an
/// object of the local file directory or of an S3 server's bucket).
pub fn stored(root: &Path, id: &str) -> bool {
    std::fs::read_dir(root).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let path = e.path();
            if path.is_dir() {
                stored(&path, id)
            } else {
                path.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(id))
            }
        })
    })
}
