//! The web client in a real browser: each scenario in `tests/browser/` is
//! a Playwright script (playwright-core from npm) that drives Debian's
//! Chromium with a fake camera and microphone against the real
//! `signalling` binary, and exits 0 when every check holds. Screenshots go
//! to `target/browser-artifacts/`. WebRTC scenarios are CPU-bound on a
//! small machine, so they run one at a time.
//!
//! `scripts/test.sh` installs what they need (chromium, node and npm,
//! `npm ci` in `tests/browser/`).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One browser scenario at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

fn run(script: &str) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let playwright = dir().join("node_modules/playwright-core");
    assert!(
        playwright.is_dir(),
        "{} is missing: run scripts/test.sh, which installs it (npm ci in {})",
        playwright.display(),
        dir().display()
    );
    assert!(
        chromium().is_file(),
        "{} is missing: run scripts/test.sh, which installs Debian's chromium, or set CHROMIUM",
        chromium().display()
    );
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    let out = Command::new("node")
        .arg(script)
        .current_dir(dir())
        .env("SIGNALLING_BIN", env!("CARGO_BIN_EXE_signalling"))
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium())
        .output()
        .expect("node runs (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser scenario {script} failed:\n{stdout}\n{stderr}"
    );
}

#[test]
fn two_people_chat_with_unread_counts_read_marks_files_and_search() {
    run("chat.mjs");
}

#[test]
fn people_react_to_messages_and_pin_them() {
    run("marks.mjs");
}

#[test]
fn people_talk_in_a_thread_beside_the_conversation() {
    run("threads.mjs");
}

#[test]
fn a_mention_shows_on_the_conversation_until_read() {
    run("mentions.mjs");
}

#[test]
fn people_quote_and_forward_messages() {
    run("copies.mjs");
}

#[test]
fn a_message_posted_through_a_webhook_shows_as_the_bots() {
    run("webhooks.mjs");
}

#[test]
fn the_page_reconnects_after_a_server_restart_and_shows_what_it_missed() {
    run("restart.mjs");
}

#[test]
fn two_browsers_talk_peer_to_peer_and_three_through_the_sfu() {
    run("call.mjs");
}

#[test]
fn a_thumbnail_gets_the_low_layer_and_the_spotlight_the_high_one() {
    run("simulcast.mjs");
}
