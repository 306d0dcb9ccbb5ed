//! The real `signalling` binary as a child process, for tests of what
//! only the binary does (its command line, signals, its own memory).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_signalling");

/// A `signalling` process and the base URL it printed.
pub struct Process {
    pub child: Child,
    pub base: String,
    /// Where its standard error (the log) goes, if kept.
    pub log: Option<PathBuf>,
}

impl Process {
    pub fn start(data_dir: &Path) -> Self {
        Self::spawn(data_dir, &[], None)
    }

    /// With extra environment variables (`CONFER_TLS__CERT` …); the log
    /// is kept in `<data_dir>/signalling.log`.
    pub fn start_with_env(data_dir: &Path, env: &[(&str, &OsStr)]) -> Self {
        std::fs::create_dir_all(data_dir).unwrap();
        Self::spawn(data_dir, env, Some(data_dir.join("signalling.log")))
    }

    fn spawn(data_dir: &Path, env: &[(&str, &OsStr)], log: Option<PathBuf>) -> Self {
        let stderr = match &log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let mut command = Command::new(BIN);
        // Only the settings given here: the binary reads every `CONFER_*`
        // variable as configuration and refuses unknown ones, such as the
        // tests' own knobs (`CONFER_CRASH_TRIALS`).
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CONFER_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("signalling listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        Self { child, base, log }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        let (_, authority) = self.base.split_once("://").unwrap();
        authority.parse().unwrap()
    }

    /// Registers an application through the e-mail code flow (the code is
    /// read from the outbox in `data_dir`).
    pub async fn register(&self, data_dir: &Path, email: &str, app_name: &str) -> super::App {
        let client = reqwest::Client::new();
        let r = client
            .post(format!("{}/api/v1/registrations", self.base))
            .json(&serde_json::json!({"email": email, "app_name": app_name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
        let code = super::last_code_in(&data_dir.join("outbox"), email).unwrap();
        let r = client
            .post(format!("{}/api/v1/registrations/confirm", self.base))
            .json(&serde_json::json!({"email": email, "app_name": app_name, "code": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
        let body: serde_json::Value = r.json().await.unwrap();
        super::App {
            id: body["app_id"].as_str().unwrap().to_owned(),
            secret: body["app_secret"].as_str().unwrap().to_owned(),
            subscriber_id: body["subscriber_id"].as_str().unwrap().to_owned(),
        }
    }

    /// Sends a signal (`HUP`, `TERM` …).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{name}"), &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits up to 10 s for the `count`th log line containing `text`.
    pub fn wait_for_log(&self, text: &str, count: usize) {
        let path = self.log.as_ref().expect("started with start_with_env");
        for _ in 0..100 {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            if log.lines().filter(|l| l.contains(text)).count() >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "no {count} log lines with {text:?} within 10 s:\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        );
    }

    /// SIGTERM, then the exit status (must come within 10 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill().unwrap();
        panic!("signalling did not stop within 10 s of SIGTERM");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The workspace's `sfu` binary (built beside this one by `cargo test
/// --workspace`) on loopback with `token`: see
/// [`confer_sfu::testing::Standalone`].
pub fn sfu_node(token: &str) -> confer_sfu::testing::Standalone {
    sfu_node_with(token, &[])
}

/// As [`sfu_node`], with more of its environment (e.g. a relay).
pub fn sfu_node_with(token: &str, env: &[(&str, &str)]) -> confer_sfu::testing::Standalone {
    confer_sfu::testing::Standalone::spawn(&Path::new(BIN).with_file_name("sfu"), token, env)
}
