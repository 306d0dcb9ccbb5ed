//! With `[mail.smtp]` configured, codes go through a real SMTP server
//! (aiosmtpd, installed by `scripts/test.sh`) instead of the outbox, and
//! `/healthz` reports the relay.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestServer, default_clock, test_config};
use confer_signalling::config::{SmtpConfig, SmtpTls};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct SmtpServer {
    child: Child,
    maildir: tempfile::TempDir,
    port: u16,
}

impl SmtpServer {
    async fn start() -> Self {
        common::require_python_module("aiosmtpd");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = tempfile::tempdir().unwrap();
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir(maildir.path().join(sub)).unwrap();
        }
        let mut child = Command::new(common::python())
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Readiness: bounded retries until the port accepts.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self {
                    child,
                    maildir,
                    port,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("aiosmtpd did not listen on {port} within 10 s");
    }

    /// Texts of the delivered mails.
    fn mails(&self) -> Vec<String> {
        std::fs::read_dir(self.maildir.path().join("new"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn codes_go_through_smtp_when_configured() {
    let smtp = SmtpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.mail.smtp = Some(SmtpConfig {
        host: "127.0.0.1".to_owned(),
        port: Some(smtp.port),
        tls: SmtpTls::None,
        username: None,
        password: None,
    });
    let server = TestServer::start_with(config, default_clock()).await;

    let health: Value = common::json(server.get("/healthz")).await;
    assert_eq!(health["components"]["mail"]["backend"], "smtp");
    assert_eq!(health["components"]["mail"]["status"], "up");

    server
        .request_code("smtp@example.com", "Почтовое ERP")
        .await;
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "one mail delivered");
    assert_eq!(server.outbox_len(), 0, "nothing in the outbox");
    let code = common::code_in(&mails[0]).expect("code in the delivered mail");

    let r = server
        .post("/api/v1/registrations/confirm")
        .json(&json!({"email": "smtp@example.com", "app_name": "Почтовое ERP", "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // The relay goes away: health says so.
    drop(smtp);
    let r = common::healthz_after_a_failure(&server).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health: Value = r.json().await.unwrap();
    assert_eq!(health["components"]["mail"]["status"], "down");
    server.stop().await;
}
