//! SFUs behind their HTTP front, for the tests of this and other crates:
//! in this process ([`serve_front`]) or as the standalone binary
//! ([`Standalone`]).

/// An SFU of one unpinned worker behind its HTTP front (WHIP/WHEP and the
/// control API, the router the standalone `sfu` serves) on a loopback
/// port, requiring `token`: its base URL, the SFU, and the task serving
/// it.
///
/// # Panics
/// When the SFU cannot start or no loopback port can be bound.
pub async fn serve_front(
    token: &str,
) -> (
    String,
    std::sync::Arc<crate::EmbeddedSfu>,
    tokio::task::JoinHandle<()>,
) {
    let sfu = crate::EmbeddedSfu::start(&crate::SfuConfig {
        workers: 1,
        pin_workers: false,
        ..crate::SfuConfig::default()
    })
    .expect("the SFU starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("a bound address"));
    let front = crate::http::app(crate::http::HttpState {
        sfu: sfu.clone(),
        token: Some(token.to_owned()),
        metrics_open: false,
    });
    let serving = tokio::spawn(async move {
        let _ = axum::serve(listener, front).await;
    });
    (base, sfu, serving)
}

/// A standalone `sfu` process (the binary at `bin`) on loopback with one
/// unpinned worker and `token`, plus more `CONFER_SFU_*` settings in `env`;
/// killed with SIGKILL (as a crash would) when dropped.
pub struct Standalone {
    pub child: std::process::Child,
    /// The URL of its HTTP front.
    pub base: String,
}

impl Standalone {
    pub fn spawn(bin: &std::path::Path, token: &str, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        assert!(
            bin.exists(),
            "{} is missing: build it first (cargo build -p confer-sfu)",
            bin.display()
        );
        let mut child = std::process::Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .env("CONFER_SFU_WORKERS", "1")
            .env("CONFER_SFU_PIN_WORKERS", "false")
            .env("CONFER_SFU_TOKEN", token)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no http:// address in {line:?}"))
            .to_owned();
        Self { child, base }
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        self.kill();
    }
}
