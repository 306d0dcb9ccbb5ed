//! The real `signalling` binary as a child process, for tests of what
//! only the binary does (its command line, signals, its own memory).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_signalling");

/// A `signalling` process and the base URL it printed.
pub struct Process {
    pub child: Child,
    pub base: String,
}

impl Process {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[], Stdio::null())
    }

    /// Started with extra environment variables, its log (stderr) going
    /// to `log`.
    pub fn start_with(data_dir: &Path, env: &[(&str, &str)], log: impl Into<Stdio>) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env_remove("CONFER_CONFIG")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
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
        Self { child, base }
    }

    /// SIGTERM, then the exit status (must come within 10 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
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
