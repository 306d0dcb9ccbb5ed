//! The HTTP accept loop both HTTP fronts share (`signalling`'s REST,
//! WebSocket and web client; the standalone `sfu`'s WHIP/WHEP and
//! metrics), with the limits a server facing the internet needs against
//! slow and half-open clients.
//!
//! It replaces `axum::serve`, which has neither limit below, and keeps
//! what the servers relied on from it: any [`axum::serve::Listener`]
//! (plain TCP, or [`crate::tls::TlsListener`]), HTTP/1.1 with upgrades
//! (WebSocket), the peer address in each request as
//! `ConnectInfo<C>`, and a graceful shutdown (stop accepting, let the
//! requests in flight finish; upgraded connections are their owner's
//! business). With [`ServeLimits::http2`] it also serves HTTP/2 (h2c by
//! prior knowledge, h2 over TLS by ALPN): the standalone `sfu`'s control
//! API, whose client multiplexes its commands, long polls and health
//! polls on one connection.
//!
//! # Limits
//!
//! * **Header read timeout** ([`ServeLimits::header_read_timeout`]): a
//!   connection that has not sent a whole request head that long after it
//!   was accepted, or after its previous response (an idle keep-alive
//!   connection), is closed without an answer. A slowloris client that
//!   trickles header bytes, or one that connects and sends nothing, holds
//!   a connection only that long. The timer is hyper's.
//! * **Connections per client** ([`ServeLimits::connections_per_ip`]): at
//!   most that many open connections from one client address (an IPv6
//!   client by its /64, as the rate limits count it), WebSocket sessions
//!   included; a connection beyond it is closed as soon as it is accepted,
//!   without an answer, counted in `http_connections_refused_total
//!   {reason="per_ip"}`, and logged (a warning at most every
//!   [`REFUSAL_LOG_INTERVAL`], with the number refused since the last
//!   one). A connection counts from its accept (after its TLS handshake,
//!   which [`crate::tls::TlsListener`] limits on its own) until its socket
//!   is closed. Behind a reverse proxy every connection comes from the
//!   proxy's address: the proxy must enforce its own per-client limit, and
//!   this one must be at least the proxy's connection pool (or 0, off).
//!
//! Open connections are in the gauge `http_connections_open` (`metrics`
//! facade: exported where a recorder is installed, as in `signalling`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tower::ServiceExt as _;

/// A connection whose small writes go out at once (`TCP_NODELAY`):
/// WebSocket frames are written one by one as events come, and with
/// Nagle's algorithm a frame written while the previous one is not yet
/// acknowledged waits for the peer's delayed acknowledgement (up to
/// 40 ms on Linux).
pub trait NoDelay {
    /// Turns Nagle's algorithm off; a failure only costs latency.
    fn no_delay(&self);
}

impl NoDelay for tokio::net::TcpStream {
    fn no_delay(&self) {
        if let Err(e) = self.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    }
}

impl NoDelay for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn no_delay(&self) {
        self.get_ref().0.no_delay();
    }
}

/// Shortest time between two warnings about refused connections.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What [`serve`] allows a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Longest wait for a complete request head (see the module
    /// documentation).
    pub header_read_timeout: Duration,
    /// Open connections per client address; 0 means no limit.
    pub connections_per_ip: usize,
    /// Serve HTTP/2 besides HTTP/1.1. An HTTP/2 connection must send its
    /// first bytes within `header_read_timeout` of its accept (a silent
    /// one is closed then); after that, its requests are not timed.
    pub http2: bool,
    /// After the shutdown began, how long the connections in flight may
    /// take to finish before the loop returns anyway (`None`: as long as
    /// they need). An HTTP/2 client that keeps its connection open after
    /// the server's GOAWAY would otherwise hold the process.
    pub shutdown_grace: Option<Duration>,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            connections_per_ip: 256,
            http2: false,
            shutdown_grace: None,
        }
    }
}

/// Runs a connection (any of hyper's kinds) to its end, finishing it
/// gracefully once `signal` says the shutdown began. A macro: the two
/// connection types share the methods, not a trait.
macro_rules! drive {
    ($connection:expr, $signal:expr, $remote:expr) => {{
        let connection = $connection;
        tokio::pin!(connection);
        let mut signal = $signal;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                        let timed_out = e
                            .downcast_ref::<hyper::Error>()
                            .is_some_and(hyper::Error::is_timeout)
                            || e.downcast_ref::<io::Error>()
                                .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut);
                        if timed_out {
                            metrics::counter!("http_header_timeouts_total").increment(1);
                        }
                        tracing::debug!(remote = %$remote, error = %e, "connection ended with an error");
                    }
                    break;
                }
                // `changed` fails when the sender is dropped: the shutdown
                // began.
                Err(_) = signal.changed() => connection.as_mut().graceful_shutdown(),
            }
        }
    }};
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, lets the requests in flight finish and returns. Every
/// request carries `ConnectInfo(peer(remote address))`.
///
/// # Errors
/// If the listener cannot say its address.
pub async fn serve<L, C>(
    listener: L,
    router: Router,
    peer: fn(SocketAddr) -> C,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: NoDelay,
    C: Clone + Send + Sync + 'static,
{
    let mut listener = listener;
    listener.local_addr()?;
    // HTTP/1.1 alone through hyper's own builder (its header timeout
    // covers a connection from its accept); with HTTP/2 through
    // hyper-util's, which tells the two apart by the first bytes.
    let builder = if limits.http2 {
        let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        auto.http2().timer(TokioTimer::new());
        Builder::Both(auto)
    } else {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        Builder::Http1(http1)
    };
    let clients = Clients::new(limits.connections_per_ip);
    let mut refusals = Refusals::default();
    // Connections watch `signal_tx` to start their graceful shutdown, and
    // hold a `close_rx` each until they end (axum::serve does the same).
    let (signal_tx, _) = watch::channel(());
    let (close_tx, close_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Some(slot) = clients.admit(remote.ip()) else {
            refusals.refused(remote);
            continue;
        };
        io.no_delay();
        let first_bytes = limits.http2.then_some(limits.header_read_timeout);
        let io = TokioIo::new(Tracked::new(io, slot, first_bytes));
        let router = router.clone();
        let info = ConnectInfo(peer(remote));
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(info.clone());
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let builder = builder.clone();
        let signal = signal_tx.subscribe();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            match &builder {
                Builder::Http1(http1) => {
                    drive!(
                        http1.serve_connection(io, service).with_upgrades(),
                        signal,
                        remote
                    );
                }
                Builder::Both(auto) => {
                    drive!(
                        auto.serve_connection_with_upgrades(io, service),
                        signal,
                        remote
                    );
                }
            }
            drop(close_rx);
        });
    }
    // Stop accepting (a TLS listener aborts its handshakes), then wait
    // for the connections in flight.
    drop(listener);
    drop(signal_tx);
    drop(close_rx);
    match limits.shutdown_grace {
        Some(grace) => {
            if tokio::time::timeout(grace, close_tx.closed())
                .await
                .is_err()
            {
                tracing::info!(
                    ?grace,
                    "connections still open after the shutdown grace; stopping"
                );
            }
        }
        None => close_tx.closed().await,
    }
    Ok(())
}

/// The builder of every connection.
#[derive(Clone)]
enum Builder {
    Http1(hyper::server::conn::http1::Builder),
    Both(hyper_util::server::conn::auto::Builder<TokioExecutor>),
}

/// Open connections per client key.
#[derive(Debug, Clone)]
struct Clients {
    cap: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Clients {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for one more connection of `ip`, or `None` at the cap.
    fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let key = crate::tls::client_key(ip);
        // The map is whole between statements: a poisoned lock still
        // holds good counts.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if self.cap != 0 && *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            clients: self.clone(),
            key,
        })
    }
}

/// One open connection of a client; dropping it frees the slot.
#[derive(Debug)]
struct Slot {
    clients: Clients,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Counts refused connections and warns about them, at most once per
/// [`REFUSAL_LOG_INTERVAL`].
#[derive(Debug, Default)]
struct Refusals {
    last_warning: Option<tokio::time::Instant>,
    since_warning: u64,
}

impl Refusals {
    fn refused(&mut self, remote: SocketAddr) {
        metrics::counter!("http_connections_refused_total", "reason" => "per_ip").increment(1);
        self.since_warning += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL)
        {
            tracing::warn!(
                client = %remote.ip(),
                refused = self.since_warning,
                "connections refused: too many open connections from one client address \
                 (http.connections_per_ip)"
            );
            self.last_warning = Some(now);
            self.since_warning = 0;
        } else {
            tracing::debug!(client = %remote.ip(), "connection refused: too many from this client");
        }
    }
}

/// An accepted connection: counted in `http_connections_open` and in its
/// client's slots until dropped (after an upgrade, when the WebSocket
/// session drops it).
#[derive(Debug)]
struct Tracked<S> {
    io: S,
    _slot: Slot,
    /// Until the first bytes arrive: when the connection is closed if
    /// none has (an HTTP/2 connection, which hyper's header timeout does
    /// not cover while the protocol is being detected).
    first_bytes: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Tracked<S> {
    fn new(io: S, slot: Slot, first_bytes: Option<Duration>) -> Self {
        metrics::gauge!("http_connections_open").increment(1.0);
        Self {
            io,
            _slot: slot,
            first_bytes: first_bytes.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        metrics::gauge!("http_connections_open").decrement(1.0);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.first_bytes.is_some() {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_bytes = None,
                Poll::Pending => {
                    if let Some(deadline) = self.first_bytes.as_mut()
                        && deadline.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "nothing sent since the connection opened",
                        )));
                    }
                }
                _ => {}
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_cap_and_a_freed_slot_is_reusable() {
        let clients = Clients::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = clients.admit(a).unwrap();
        let _second = clients.admit(a).unwrap();
        assert!(clients.admit(a).is_none());
        assert!(
            clients.admit("192.0.2.2".parse().unwrap()).is_some(),
            "other clients are not affected"
        );
        drop(first);
        assert!(clients.admit(a).is_some());
    }

    #[test]
    fn ipv6_clients_share_their_64_and_zero_is_no_cap() {
        let clients = Clients::new(1);
        let _one = clients.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(clients.admit("2001:db8:1:2::9".parse().unwrap()).is_none());
        assert!(clients.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
        let unlimited = Clients::new(0);
        let held: Vec<_> = (0..1000)
            .map(|_| unlimited.admit("192.0.2.1".parse().unwrap()).unwrap())
            .collect();
        assert_eq!(held.len(), 1000);
        drop(held);
        assert!(
            unlimited.open.lock().unwrap().is_empty(),
            "forgotten when closed"
        );
    }
}
