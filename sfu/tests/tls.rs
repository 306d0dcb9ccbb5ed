//! The standalone `sfu` serves its HTTP front (WHIP/WHEP, metrics,
//! health) over HTTPS when given a certificate and key, reloads them on
//! SIGHUP, and stops gracefully on SIGTERM.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::{self, TestCert};

const BIN: &str = env!("CARGO_BIN_EXE_sfu");

/// Kills the child if the test fails before it stopped it.
struct Sfu(Child);

impl Drop for Sfu {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Sfu {
    fn signal(&self, name: &str) {
        let pid = self.0.id().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{name}"), &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

#[tokio::test]
async fn the_sfu_serves_https_and_reloads_its_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = TestCert::new("first.sfu.test");
    let second = TestCert::new("second.sfu.test");
    first.write(&cert_path, &key_path);

    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env("CONFER_SFU_WORKERS", "1")
        .env("CONFER_SFU_PIN_WORKERS", "false")
        .env("CONFER_SFU_TLS__CERT", &cert_path)
        .env("CONFER_SFU_TLS__KEY", &key_path)
        .env("CONFER_SFU_TLS__WATCH_SECS", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let sfu = Sfu(child);
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no https:// address in {line:?}"))
        .to_owned();
    let addr = base.trim_start_matches("https://").parse().unwrap();

    let r = tls::https_client(&[&first])
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok");
    // A client offering HTTP/2 by ALPN (as the control API's does) gets it.
    let mut h2 = std::sync::Arc::unwrap_or_clone(tls::client_config(&[&first]));
    h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let r = tls::https_client_with(std::sync::Arc::new(h2))
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);

    second.write(&cert_path, &key_path);
    sfu.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, presented) = tls::connect(addr, &[&first, &second]).await;
        if presented == second.der {
            break;
        }
        assert!(Instant::now() < deadline, "still the old certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = tls::https_client(&[&second])
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);

    sfu.signal("TERM");
    let mut sfu = sfu;
    for _ in 0..100 {
        if let Some(status) = sfu.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("sfu did not stop within 10 s of SIGTERM");
}
