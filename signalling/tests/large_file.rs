//! A 100 MiB file streams through upload, completion and download without
//! being held in memory: in process (server and client alike, each
//! streaming, the process grows by far less than the file), and through
//! the real `signalling` binary, whose peak memory is read from /proc. A
//! test binary of its own, so that no other test's memory is counted.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use common::{TestServer, Ws, user_token};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const SIZE: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

/// The file, generated chunk by chunk (never whole).
fn chunks() -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::iter((0..SIZE / CHUNK as u64).map(|i| {
        let chunk: Vec<u8> = (0..CHUNK)
            .map(|j| (i as usize * 31 + j * 7 + j / 251) as u8)
            .collect();
        Ok(Bytes::from(chunk))
    }))
}

async fn sha_of_generated() -> String {
    let mut hash = Sha256::new();
    let mut stream = Box::pin(chunks());
    while let Some(chunk) = stream.next().await {
        hash.update(chunk.unwrap());
    }
    hex(&hash.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Samples the RSS every 10 ms until stopped; returns the peak.
fn sample_peak() -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let handle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            peak.load(Ordering::Relaxed)
        })
    };
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_file_streams_through_without_being_held() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::start_with(common::test_config(dir.path()), common::default_clock()).await;
    in_process(&server, "local").await;
}

/// With S3 the bytes go between client and store; the server only copies
/// the object inside the store and reads it once when completing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_s3_completion_streams_too() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = common::s3::S3Server::start().await;
    let mut config = common::test_config(dir.path());
    config.files.s3 = Some(s3.config());
    let server = TestServer::start_with(config, common::default_clock()).await;
    in_process(&server, "s3").await;
}

/// The round trip in this process (server and client), its peak memory
/// sampled throughout.
async fn in_process(server: &TestServer, backend: &str) {
    // One at a time: they measure the same process.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = server.register("big@example.com", "Архив").await;
    let (token, _) = user_token(server, &app, "ann", &[]).await;
    let mut ws = Ws::connect(server, &token, None).await;
    let conversation = ws
        .request(json!({"type": "create_conversation", "title": "Архив"}))
        .await["conversation"]["id"]
        .clone();
    let sha = sha_of_generated().await;
    // An upload pool of its own, so the generated body is not kept.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let baseline = rss();
    let (stop, sampler) = sample_peak();
    round_trip(
        &http,
        &server.base,
        &token,
        conversation.as_str().unwrap(),
        &sha,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();

    let grew = peak.saturating_sub(baseline);
    println!(
        "{backend}: 100 MiB up, completed and down: RSS {} MiB before, peak {} MiB (+{} MiB)",
        baseline >> 20,
        peak >> 20,
        grew >> 20
    );
    assert!(
        grew < 48 * 1024 * 1024,
        "the process grew by {} MiB moving a 100 MiB file",
        grew >> 20
    );
}

/// Asks to upload the file, sends it from the generator, completes it,
/// and downloads it hashing as it arrives; checks size and SHA-256.
async fn round_trip(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    conversation: &str,
    sha: &str,
) {
    let ticket: Value = common::json(
        http.post(format!("{base}/api/v1/conversations/{conversation}/files"))
            .bearer_auth(token)
            .json(&json!({"name": "архив.bin", "size": SIZE, "sha256": sha})),
    )
    .await;
    let put = http
        .put(ticket["upload"]["url"].as_str().unwrap())
        .header("content-length", SIZE)
        .header(
            "content-type",
            ticket["upload"]["headers"]["Content-Type"]
                .as_str()
                .unwrap(),
        )
        .body(reqwest::Body::wrap_stream(chunks()))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let file = ticket["file"]["id"].as_str().unwrap();
    let done: Value = common::json(
        http.post(format!("{base}/api/v1/files/{file}/complete"))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(done["sha256"], sha);
    let download: Value = common::json(
        http.get(format!("{base}/api/v1/files/{file}"))
            .bearer_auth(token),
    )
    .await;
    let got = http
        .get(download["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["content-length"], SIZE.to_string().as_str());
    let mut hash = Sha256::new();
    let mut received = 0u64;
    let mut body = got.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        received += chunk.len() as u64;
        hash.update(&chunk);
    }
    assert_eq!(received, SIZE);
    assert_eq!(hex(&hash.finalize()), sha);
}

/// Reads a field (kB) of /proc/<pid>/status, in bytes.
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The same through the `signalling` binary: its resident memory before,
/// and its peak (VmHWM) after a 100 MiB upload, completion and download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_binary_moves_100_mib_in_a_few_mib() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::process::Process::start(dir.path());
    let (base, pid) = (server.base.clone(), server.child.id());
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // An application, a user and a conversation, as a client would.
    let email = "bin@example.com";
    http.post(format!("{base}/api/v1/registrations"))
        .json(&json!({"email": email, "app_name": "Архив"}))
        .send()
        .await
        .unwrap();
    let code = common::last_code_in(&dir.path().join("outbox"), email).unwrap();
    let app: Value = common::json(
        http.post(format!("{base}/api/v1/registrations/confirm"))
            .json(&json!({"email": email, "app_name": "Архив", "code": code})),
    )
    .await;
    let token: Value = common::json(
        http.post(format!("{base}/api/v1/tokens"))
            .basic_auth(app["app_id"].as_str().unwrap(), app["app_secret"].as_str())
            .json(&json!({"external_id": "ann", "name": "Ann"})),
    )
    .await;
    let token = token["token"].as_str().unwrap().to_owned();
    let ws_url = format!(
        "{}/api/v1/ws?token={token}",
        base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "create_conversation", "id": "c", "title": "Архив"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let conversation = loop {
        let frame = ws.next().await.unwrap().unwrap();
        let Ok(text) = frame.to_text() else { continue };
        let v: Value = serde_json::from_str(text).unwrap();
        if v["type"] == "ack" {
            break v["conversation"]["id"].as_str().unwrap().to_owned();
        }
    };
    let sha = sha_of_generated().await;
    let before = proc_status(pid, "VmRSS:");

    round_trip(&http, &base, &token, &conversation, &sha).await;
    let peak = proc_status(pid, "VmHWM:");
    drop(server);
    println!(
        "signalling (pid {pid}): RSS {:.1} MiB before a 100 MiB upload, completion and download; \
         peak RSS {:.1} MiB",
        before as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
    assert!(
        peak < before + 48 * 1024 * 1024,
        "the server peaked at {} MiB from {} MiB",
        peak >> 20,
        before >> 20
    );
}
