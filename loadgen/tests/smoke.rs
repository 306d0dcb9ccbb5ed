//! The real `loadgen` binary against real servers started in this test
//! process (signalling with its embedded SFU, and a standalone SFU front):
//! small runs that must deliver everything, lose nothing and write their
//! reports. Media runs go one at a time.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use confer_signalling::ids::SystemClock;
use confer_signalling::limits::Rate;
use confer_signalling::{Services, SignallingConfig};
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A signalling server on a free port; returns its URL.
async fn signalling(dir: &Path) -> String {
    let mut config = SignallingConfig {
        data_dir: dir.to_owned(),
        ..SignallingConfig::default()
    };
    // (`--webhook` receives the deliveries in loadgen, on this host.)
    config.webhooks.allowed_networks = vec!["127.0.0.0/8".to_owned()];
    signalling_with(config).await
}

async fn signalling_with(config: SignallingConfig) -> String {
    let services = Services::open(config, Arc::new(SystemClock)).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(confer_signalling::run(
        listener,
        services,
        std::future::pending(),
    ));
    base
}

/// Runs loadgen with `args` on a blocking thread; returns report.json.
async fn loadgen(args: Vec<String>, report: &Path) -> Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "loadgen failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["report.json", "report.md", "latency.svg"] {
        assert!(report.join(file).exists(), "{file} written");
    }
    serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap()).unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_delivers_everything_once_and_survives_a_reconnect_storm() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let base = signalling(dir.path()).await;
    let report = dir.path().join("report");
    let outbox = dir.path().join("outbox");
    let r = loadgen(
        args(&[
            "chat",
            "--target",
            &base,
            "--users",
            "60",
            "--duration",
            "3",
            "--message-rate",
            "40",
            "--drain",
            "2",
            "--reconnect-storm",
            "--webhook",
            "--quiet",
            "--outbox",
            outbox.to_str().unwrap(),
            "--server-pid",
            &std::process::id().to_string(),
            "--report",
            report.to_str().unwrap(),
        ]),
        &report,
    )
    .await;
    assert_eq!(r["connected"], 60, "{r}");
    assert!(r["delivered"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["delivered"], r["expected"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    assert!(r["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    // 60 users make one-to-one conversations and groups, no channel; each
    // delivery is counted under the kind it was delivered in.
    let kinds = r["latency_by_kind_ms"].as_object().unwrap();
    assert_eq!(kinds.keys().collect::<Vec<_>>(), ["direct", "group"], "{r}");
    let counted: u64 = kinds.values().map(|k| k["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, r["latency_ms"]["count"].as_u64().unwrap(), "{r}");
    let storm = &r["reconnect_storm"];
    assert_eq!(storm["caught_up"], 60, "{r}");
    assert_eq!(storm["lost"], 0, "{r}");
    assert!(r["server"]["rss_idle_kib"].as_u64().unwrap() > 0, "{r}");
    // Every acknowledged message came to the webhook endpoint, once.
    let hook = &r["webhook"];
    assert!(hook["expected"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(hook["unique"], hook["expected"], "{r}");
    assert_eq!(hook["missing"], 0, "{r}");
    assert!(hook["lag_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_compares_a_tenants_sends_with_and_without_anothers_edits() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Seeding pipelines sends: lift the per-connection frame limits.
    let mut config = SignallingConfig {
        data_dir: dir.path().to_owned(),
        ..SignallingConfig::default()
    };
    config.limits.frames_per_connection = Rate::new(0, 1);
    config.limits.writes_per_connection = Rate::new(0, 1);
    let base = signalling_with(config).await;
    let report = dir.path().join("report");
    let outbox = dir.path().join("outbox");
    let r = loadgen(
        args(&[
            "isolation",
            "--target",
            &base,
            "--seed-messages",
            "400",
            "--noisy-users",
            "2",
            "--victim-users",
            "2",
            "--victim-rate",
            "20",
            "--noise-rate",
            "20",
            "--phase-secs",
            "1",
            "--rounds",
            "1",
            "--settle-secs",
            "0",
            "--quiet",
            "--outbox",
            outbox.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]),
        &report,
    )
    .await;
    assert_eq!(r["seeded"], 400, "{r}");
    // Every send and every edit or delete was answered with an ack.
    assert_eq!(r["quiet_ack_ms"]["count"], 20, "{r}");
    assert_eq!(r["noisy_ack_ms"]["count"], 20, "{r}");
    assert_eq!(r["noise_done"], 20, "{r}");
    assert_eq!(r["victim_errors"], 0, "{r}");
    assert_eq!(r["noise_errors"], 0, "{r}");
    assert!(r["p99_ratio"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["phase_p99_ms"].as_array().unwrap().len(), 2, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_through_signalling_calls_arrives_intact() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let base = signalling(dir.path()).await;
    let report = dir.path().join("report");
    let outbox = dir.path().join("outbox");
    let r = loadgen(
        args(&[
            "media",
            "--target",
            &base,
            "--rooms",
            "1",
            "--publishers",
            "1",
            "--subscribers",
            "2",
            "--duration",
            "3",
            "--fps",
            "15",
            "--quiet",
            "--outbox",
            outbox.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]),
        &report,
    )
    .await;
    assert_eq!(r["system"], "signalling");
    assert_eq!(r["connected"], serde_json::json!([3, 3]), "{r}");
    // Speed is the benchmarks' business: on a loaded 2-core machine a debug
    // build may connect late and UDP may drop some packets on loopback, so
    // these bounds catch a broken path (which loses nearly everything), not
    // a slow one. Every packet that arrives must be intact.
    assert!(r["packets_received"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["corrupt"], 0, "{r}");
    assert!(r["loss_ratio"].as_f64().unwrap() < 0.25, "{r}");
}

/// Counting subscribers (`--counting`) account for every packet from the
/// clear RTP header alone: with one unlayered publisher, four subscribers
/// receive four times what it sends, though only one of them decrypts
/// (and measures latency and content).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_subscribers_account_for_every_packet() {
    let _serial = SERIAL.lock().await;
    let (base, _sfu, _serving) = confer_sfu::testing::serve_front("secret").await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let r = loadgen(
        args(&[
            "media",
            "--sfu",
            &base,
            "--token",
            "secret",
            "--rooms",
            "1",
            "--publishers",
            "1",
            "--subscribers",
            "4",
            "--no-simulcast",
            "--fps",
            "15",
            "--counting",
            "--full-subscribers",
            "1",
            "--duration",
            "3",
            "--warmup",
            "2",
            "--quiet",
            "--report",
            report.to_str().unwrap(),
        ]),
        &report,
    )
    .await;
    assert_eq!(r["connected"], json!([5, 5]), "{r}");
    let sent = r["packets_sent"].as_f64().unwrap();
    let received = r["packets_received"].as_f64().unwrap();
    assert!(sent > 100.0, "{r}");
    // The window opens and closes a few milliseconds apart for sender and
    // receivers: about four times, not exactly.
    let ratio = received / sent;
    assert!(
        (3.6..4.4).contains(&ratio),
        "received {ratio:.2} × sent: {r}"
    );
    assert!(r["loss_ratio"].as_f64().unwrap() < 0.05, "{r}");
    assert_eq!(r["corrupt"], 0, "{r}");
    // Latency comes from the full subscriber.
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_over_whip_whep_ramps_and_reports_capacity() {
    let _serial = SERIAL.lock().await;
    let (base, _sfu, _serving) = confer_sfu::testing::serve_front("secret").await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let r = loadgen(
        args(&[
            "media",
            "--sfu",
            &base,
            "--token",
            "secret",
            "--rooms",
            "1",
            "--publishers",
            "1",
            "--subscribers",
            "1",
            "--fps",
            "15",
            "--ramp",
            "--step-secs",
            "2",
            "--warmup",
            "2",
            "--max-rooms",
            "2",
            // The ramp's mechanics, not this machine's speed: limits no
            // debug build on a busy machine reaches, so --max-rooms ends it.
            "--max-p99-ms",
            "1000000",
            "--max-loss",
            "0.5",
            "--quiet",
            "--report",
            report.to_str().unwrap(),
        ]),
        &report,
    )
    .await;
    assert_eq!(r["system"], "sfu");
    assert_eq!(r["steps"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["capacity"]["stopped_by"], "--max-rooms 2", "{r}");
    assert_eq!(r["capacity"]["rooms"], 2, "{r}");
    assert!(
        r["capacity"]["forwarded_per_sec"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert_eq!(r["corrupt"], 0, "{r}");
    assert!(report.join("capacity.svg").exists());
    // A wrong token is a clear failure, not a hang.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "media",
            "--sfu",
            &base,
            "--token",
            "wrong",
            "--duration",
            "1",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
