//! HTTPS for the HTTP fronts: a certificate that reloads, and a listener
//! that terminates TLS in front of `axum::serve`.
//!
//! Both `sfu` (WHIP/WHEP, metrics) and `signalling` (REST, WebSocket, web
//! client) serve axum routers, and `signalling` already depends on this
//! crate for its embedded SFU; one module here serves both without a third
//! crate, and without writing the accept loop twice. It is a
//! [`axum::serve::Listener`] on tokio-rustls rather than `axum-server`
//! (whose `RustlsConfig` reloads too) because `axum-server` replaces
//! `axum::serve`: plain and TLS would then be two servers with two
//! graceful-shutdown mechanisms, while a listener keeps one serving path
//! (and signalling's connection gauge) for both.
//!
//! # Model
//!
//! * [`TlsConfig`] names a PEM certificate chain and a PEM private key.
//! * [`Certificates::load`] reads and checks them (the key must fit the
//!   leaf certificate); a bad file is an error at start-up.
//! * [`Certificates`] is the rustls certificate resolver: every handshake
//!   takes the certificate current at that moment, so after
//!   [`Certificates::reload`] new connections get the new certificate while
//!   established ones continue on theirs. A reload that fails keeps the old
//!   certificate. [`Certificates::watch`] reloads on `SIGHUP` and when the
//!   files' modification time, size or inode changes (checked every
//!   `watch_secs`).
//! * [`TlsListener`] is an [`axum::serve::Listener`]: it accepts TCP
//!   connections and runs each handshake in its own task (a slow or silent
//!   client holds up nobody), at most [`MAX_HANDSHAKES`] at once, at most
//!   [`MAX_HANDSHAKES_PER_CLIENT`] from one client address (more are
//!   closed at once, so one client cannot fill the rest), and each for at
//!   most [`HANDSHAKE_TIMEOUT`]; beyond that, connections wait in the
//!   kernel's backlog. Dropping the listener (axum does when a graceful
//!   shutdown begins) aborts the handshakes in progress.
//!
//! Only HTTP/1.1 is offered (ALPN `http/1.1`): the servers speak HTTP/1.1
//! and WebSocket upgrades over it. The crypto provider is aws-lc-rs, chosen
//! explicitly rather than through the process default.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Handshakes in progress at once; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 1024;

/// Handshakes in progress at once from one client address (an IPv6 client
/// by its /64); a connection beyond it is closed at once, so that one
/// client holding silent connections cannot fill [`MAX_HANDSHAKES`].
pub const MAX_HANDSHAKES_PER_CLIENT: usize = 16;

/// A client that has not finished its handshake by then is disconnected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the certificate and key are, and how often to look for new ones.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, the server's certificate first
    /// (such as Let's Encrypt's `fullchain.pem`).
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Seconds between checks of the two files for a change; 0 checks only
    /// on `SIGHUP`.
    #[serde(default = "default_watch_secs")]
    pub watch_secs: u64,
}

/// Default of [`TlsConfig::watch_secs`].
#[must_use]
pub const fn default_watch_secs() -> u64 {
    5
}

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file is missing or unreadable.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not PEM, or holds nothing of the expected kind.
    #[error("{} holds no usable PEM {what}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// What the PEM reader said.
        reason: String,
    },
    /// The key does not fit the certificate, or rustls cannot use it.
    #[error("the key in {} cannot serve the certificate in {}: {reason}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// The certificate in use, reloadable; the rustls resolver of every
/// handshake.
#[derive(Debug)]
pub struct Certificates {
    config: TlsConfig,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' state when they were last read (successfully or not).
    seen: Mutex<FileStamp>,
}

impl Certificates {
    /// Reads and checks the certificate chain and key.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and the problem.
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let stamp = FileStamp::of(config);
        let key = read_pair(config)?;
        Ok(Arc::new(Self {
            config: config.clone(),
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(stamp),
        }))
    }

    /// Reads the files again; on success new handshakes use the new
    /// certificate, on failure the old one stays.
    ///
    /// # Errors
    /// [`TlsError`] if the files cannot be used (nothing changed then).
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = FileStamp::of(&self.config);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = stamp;
        let key = read_pair(&self.config)?;
        // Replacing an `Arc` cannot panic half-way, so a poisoned lock
        // still holds a whole value.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    /// The certificate chain new handshakes present, server's first.
    #[must_use]
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .cert
            .clone()
    }

    /// A rustls server configuration that asks `self` for the certificate
    /// of each handshake.
    ///
    /// # Panics
    /// Never: aws-lc-rs supports rustls' default protocol versions.
    #[must_use]
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        self.server_config_for(&[b"http/1.1"])
    }

    /// As [`Self::server_config`], offering these ALPN protocols.
    ///
    /// # Panics
    /// Never: aws-lc-rs supports rustls' default protocol versions.
    #[must_use]
    pub fn server_config_for(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// What a binary does before its ready line: with certificates, start
    /// [`Self::watch`] (from then on `SIGHUP` reloads instead of killing)
    /// and say `https`; without, say `http`. Returns the watcher's task and
    /// the scheme to print.
    #[must_use]
    pub fn watch_if_any(
        certificates: Option<&Arc<Self>>,
    ) -> (Option<tokio::task::JoinHandle<()>>, &'static str) {
        match certificates {
            Some(c) => (Some(tokio::spawn(c.clone().watch())), "https"),
            None => (None, "http"),
        }
    }

    /// A task that reloads on `SIGHUP` and when the files change; it runs
    /// until dropped. The `SIGHUP` handler is installed by this call, not
    /// when the task first runs, so a binary that calls it before saying it
    /// is ready never dies of an early `SIGHUP` (the default action). Meant
    /// for binaries: it changes what `SIGHUP` does to the process. A failed
    /// reload is logged as a warning and keeps the old certificate.
    ///
    /// Must be called within a tokio runtime.
    pub fn watch(self: Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; certificates reload only when their files change");
                None
            }
        };
        self.run_watch(hup)
    }

    async fn run_watch(self: Arc<Self>, mut hup: Option<tokio::signal::unix::Signal>) {
        let every = Duration::from_secs(self.config.watch_secs);
        let mut tick = (!every.is_zero()).then(|| {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        if hup.is_none() && tick.is_none() {
            return;
        }
        loop {
            let cause = tokio::select! {
                Some(()) = async { hup.as_mut()?.recv().await }, if hup.is_some() => "SIGHUP",
                () = async {
                    match tick.as_mut() {
                        Some(t) => {
                            t.tick().await;
                        }
                        None => std::future::pending().await,
                    }
                } => {
                    if !self.changed() {
                        continue;
                    }
                    "a file changed"
                }
            };
            match self.reload() {
                Ok(()) => tracing::info!(
                    cause,
                    cert = %self.config.cert.display(),
                    "TLS certificate reloaded"
                ),
                Err(e) => tracing::warn!(
                    cause,
                    error = %with_causes(&e),
                    "TLS certificate not reloaded; the previous one stays in use"
                ),
            }
        }
    }

    /// Whether either file differs from when it was last read.
    fn changed(&self) -> bool {
        let now = FileStamp::of(&self.config);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) != now
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// A connection whose handshake completed, and its peer.
type Accepted = (TlsStream<TcpStream>, SocketAddr);

/// Accepts TCP connections and hands out those that completed a TLS
/// handshake (see the module documentation).
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<(IpAddr, Option<Accepted>)>,
    /// Handshakes in progress per client address.
    per_client: HashMap<IpAddr, usize>,
    /// After an accept error such as "too many open files", accepting
    /// pauses until then (handshakes still complete).
    paused_until: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("tcp", &self.tcp)
            .field("handshakes", &self.handshakes.len())
            .field("paused_until", &self.paused_until)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// TLS on `tcp` with the certificate `certificates` holds at each
    /// handshake.
    #[must_use]
    pub fn new(tcp: TcpListener, certificates: &Arc<Certificates>) -> Self {
        Self::with_config(tcp, certificates.server_config())
    }

    /// As [`Self::new`], offering HTTP/2 (ALPN `h2`) before HTTP/1.1,
    /// for a server whose [`crate::serve::ServeLimits::http2`] is on.
    #[must_use]
    pub fn new_h2(tcp: TcpListener, certificates: &Arc<Certificates>) -> Self {
        Self::with_config(tcp, certificates.server_config_for(&[b"h2", b"http/1.1"]))
    }

    fn with_config(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
            per_client: HashMap::new(),
            paused_until: None,
        }
    }

    fn start_handshake(&mut self, stream: TcpStream, peer: SocketAddr) {
        let client = client_key(peer.ip());
        let in_flight = self.per_client.entry(client).or_insert(0);
        if *in_flight >= MAX_HANDSHAKES_PER_CLIENT {
            tracing::debug!(%peer, "too many TLS handshakes from this client; closed");
            return;
        }
        *in_flight += 1;
        let acceptor = self.acceptor.clone();
        self.handshakes.spawn(async move {
            let done = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                Ok(Ok(tls)) => Some((tls, peer)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    None
                }
            };
            (client, done)
        });
    }

    /// A handshake of `client` ended.
    fn finished(&mut self, client: IpAddr) {
        if let Some(n) = self.per_client.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(&client);
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel-safe, as axum needs: the TCP accept and `join_next` are, and
    // all state lives in `self` between polls.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let accepting = self.paused_until.is_none() && self.handshakes.len() < MAX_HANDSHAKES;
            tokio::select! {
                accepted = self.tcp.accept(), if accepting => match accepted {
                    Ok((stream, peer)) => self.start_handshake(stream, peer),
                    Err(e) if is_connection_error(&e) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "accepting a connection failed; pausing for 1 s");
                        self.paused_until =
                            Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                },
                () = sleep_until(self.paused_until), if self.paused_until.is_some() => {
                    self.paused_until = None;
                }
                Some(done) = self.handshakes.join_next() => {
                    // A handshake task does not panic; one that did has
                    // lost its client's count, which only loosens the cap.
                    if let Ok((client, connection)) = done {
                        self.finished(client);
                        if let Some(connection) = connection {
                            return connection;
                        }
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A client's address as the per-client cap counts it: IPv4 as it is
/// (also when IPv4-mapped), IPv6 by its /64 prefix.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

/// `e` and its sources, `: `-separated (an I/O error's reason is a source).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The aws-lc-rs provider every Confer binary uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_pair(config: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(&config.cert)?;
    let key_pem = read(&config.key)?;
    let pem_error = |path: &Path, what, reason: String| TlsError::Pem {
        path: path.to_owned(),
        what,
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&config.cert, "certificate", e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(
            &config.cert,
            "certificate",
            "no CERTIFICATE section".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(&config.key, "private key", e.to_string()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Mismatch {
        cert: config.cert.clone(),
        key: config.key.clone(),
        reason: e.to_string(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// What tells that a file was replaced or rewritten: modification time,
/// size and inode (an atomic rename or a certbot symlink switch changes
/// the inode even within the same second).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp([Option<(SystemTime, u64, u64)>; 2]);

impl FileStamp {
    fn of(config: &TlsConfig) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let one = |path: &Path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
        };
        Self([one(&config.cert), one(&config.key)])
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Errors that concern one connection, not the listening socket.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named() {
        let config = TlsConfig {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
            watch_secs: 5,
        };
        let err = Certificates::load(&config).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }

    fn write_self_signed(config: &TlsConfig) -> CertificateDer<'static> {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&config.cert, cert.pem()).unwrap();
        std::fs::write(&config.key, signing_key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    #[test]
    fn a_failed_reload_keeps_the_certificate_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            watch_secs: 0,
        };
        let first = write_self_signed(&config);
        let certificates = Certificates::load(&config).unwrap();
        assert_eq!(certificates.chain(), std::slice::from_ref(&first));
        assert!(!certificates.changed());

        std::fs::write(&config.cert, "garbage").unwrap();
        assert!(certificates.changed());
        let err = certificates.reload().unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
        assert_eq!(certificates.chain(), [first]);
        assert!(
            !certificates.changed(),
            "a failed attempt is not retried until the next change"
        );

        let second = write_self_signed(&config);
        certificates.reload().unwrap();
        assert_eq!(certificates.chain(), [second]);
    }
}
