//! An independent peer: aiortc publishes VP8 + Opus over WHIP to the real
//! `sfu` binary and another aiortc subscribes over WHEP and decodes video
//! frames and audio; then the same with H.264, which the SFU passes through
//! without rewriting. One run at a time (CPU-bound). `scripts/test.sh`
//! installs aiortc.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sfu");

fn python() -> String {
    std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

#[test]
fn aiortc_publishes_over_whip_and_another_decodes_over_whep_vp8_then_h264() {
    let ok = Command::new(python())
        .args(["-c", "import aiortc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "aiortc is missing for {}: run scripts/test.sh, which installs it",
        python()
    );

    let mut sfu = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--token", "t0ken"])
        .env("CONFER_SFU_WORKERS", "1")
        .env("CONFER_SFU_PIN_WORKERS", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sfu.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aiortc/whip_whep.py");
    let mut results = Vec::new();
    for mime in ["video/VP8", "video/H264"] {
        let out = Command::new(python())
            .args([script, &base, "t0ken", "60", mime])
            .output()
            .unwrap();
        results.push((mime, out));
    }
    let _ = sfu.kill();
    let _ = sfu.wait();
    for (mime, out) in results {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "aiortc {mime} run failed:\n{stdout}\n{stderr}"
        );
        let counts: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert!(
            counts["video_frames"].as_u64().unwrap() >= 10,
            "{mime}: {counts}"
        );
        assert!(
            counts["audio_frames"].as_u64().unwrap() >= 50,
            "{mime}: {counts}"
        );
    }
}
