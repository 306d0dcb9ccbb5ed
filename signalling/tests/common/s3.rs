//! A real S3-protocol server for the S3 file backend's tests: `s3s-fs`
//! (crates.io), which checks SigV4 presigned signatures and expiry, on a
//! free loopback port with one bucket in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use confer_signalling::config::S3Config;

pub const BUCKET: &str = "confer-files";
const ACCESS_KEY: &str = "confer-test-key";
const SECRET_KEY: &str = "confer-test-secret-0123456789";

/// An `s3s-fs` process on a free loopback port with one bucket.
pub struct S3Server {
    child: Child,
    pub root: tempfile::TempDir,
    pub endpoint: String,
}

/// The `s3s-fs` binary: `S3S_FS`, or where `scripts/test.sh` installs it.
fn s3s_fs() -> PathBuf {
    let path = std::env::var_os("S3S_FS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/s3s-fs"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "s3s-fs is missing at {}: run scripts/test.sh, which installs it \
         (cargo install s3s-fs --features binary --root target/tools), or set S3S_FS",
        path.display()
    );
    path
}

impl S3Server {
    pub async fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self {
                    child,
                    root,
                    endpoint: format!("http://127.0.0.1:{port}"),
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("s3s-fs did not listen on port {port} within 10 s");
    }
}

impl S3Server {
    /// The `[files.s3]` settings for it.
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            bucket: BUCKET.to_owned(),
            region: "us-east-1".to_owned(),
            access_key: ACCESS_KEY.to_owned(),
            secret_key: SECRET_KEY.to_owned(),
            path_style: true,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
