//! The WebSocket session of `GET /api/v1/ws`.
//!
//! One session per connection, written against a generic `Sink` and
//! `Stream` of WebSocket messages. On connect the session subscribes to the
//! [`crate::bus`], then replays from the store every event after the
//! client's `since` number, then forwards live events, each exactly once and
//! in order (a gap in live numbers is filled from the store). Requests are
//! JSON frames with a `type` and an `id`; every answer and every error
//! names that `id`.
//!
//! Events of a contextual conversation (bound to a business object) are
//! shown only while this session's caller may see the object: its token's
//! `ctx` claim or a grant. Membership decides whose log an event goes to;
//! the session decides whether to show it, with a small cache
//! (conversation → shown) that `conversation` and `removed` events of that
//! conversation reset. A skipped event still moves the session's number
//! on, so clients see gaps in `seq`.
//!
//! Limits: text frames up to 128 KiB (larger, up to 1 MiB:
//! `frame_too_large`, the connection stays open; beyond 1 MiB the
//! transport refuses to read the frame and the session closes with 1009
//! `frame_too_large`), a ping every 25 s, closed after 60 s without any
//! frame from the client (4000 `idle`), closed with 4008 `slow_consumer`
//! when the bus drops a connection that does not keep up or when a send
//! makes no progress for [`SEND_TIMEOUT`] (the client stopped reading
//! its socket).
//!
//! A client that stopped reading: its session stops forwarding events
//! (the bus drops its queue when full; other connections are not
//! waited for), queues the close frame behind what the socket still
//! holds and waits [`STALLED_CLOSE_WAIT`] for it to go out (a client
//! that reads again gets the events already sent, then 4008), then
//! drops the connection. Counted in `ws_slow_consumers_total{cause}`
//! (`queue_full` or `send_stalled`) when detected.
//!
//! Files: this one holds the session loop (the socket, the bus, the
//! order of deliveries); `requests` parses request frames and answers
//! them through the domain; `access` decides what the session shows
//! (replays from the store, the gates of contextual conversations).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::server::ResyncReason;
use crate::proto::{ServerFrame, ephemeral_frame, event_frame};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::Instant;

use crate::bus::{Bus, Gate, GateKind};
use crate::calls::Calls;
use crate::error::Code;
use crate::limits::FrameLimits;
use crate::messaging::{Caller, Messaging};

mod access;
mod requests;
#[cfg(test)]
mod tests;

pub use crate::proto::KNOWN_TYPES;
use access::{Access, replay};
use requests::{error_frame, handle_text, rate_limited_frame};

/// Largest accepted text frame.
pub const MAX_FRAME_BYTES: usize = 128 * 1024;
/// Largest frame (or fragmented message) the transport reads, to answer
/// it with `frame_too_large`; a larger one closes the connection (1009).
pub const MAX_READ_BYTES: usize = 1024 * 1024;
/// How long a session closed for an oversized frame keeps its socket
/// after the close frame: dropping it with the frame's bytes unread sends
/// a reset, which can overtake the close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Interval of server pings.
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
/// Silence after which the server closes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a single send may make no progress before the client counts
/// as no longer reading (4008).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection whose client stopped reading is kept for its
/// close frame to be read, after it was detected.
pub const STALLED_CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Most events replayed on resume; further behind (or behind the oldest
/// kept event) means resynchronise.
pub const RESUME_LIMIT: u64 = 10_000;
/// Requests read and waiting to be answered; past this the session stops
/// reading the socket (TCP then holds the client back).
const MAX_PENDING_REQUESTS: usize = 16;
/// Close codes.
pub mod close {
    /// No frame from the client for 60 s.
    pub const IDLE: u16 = 4000;
    /// The credentials ended: the user was locked, its application
    /// unregistered, the token expired (reason `expired`) or, for a bot,
    /// the application's secret was rotated.
    pub const REVOKED: u16 = 4003;
    /// The client did not keep up with its events, or stopped reading
    /// its socket.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// A frame or message over [`super::MAX_READ_BYTES`] (RFC 6455's
    /// "message too big").
    pub const TOO_BIG: u16 = 1009;
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client closed or the connection broke.
    ClientGone,
    /// No frame for [`IDLE_TIMEOUT`].
    Idle,
    /// The client did not keep up: its queue of events overflowed.
    SlowConsumer,
    /// The client stopped reading: a send made no progress for
    /// [`SEND_TIMEOUT`].
    Stalled,
    /// The client sent a frame over [`MAX_READ_BYTES`].
    TooBig,
    /// The server ended it: user locked or application unregistered.
    Revoked,
}

/// Who a session is for and on what terms.
#[derive(Debug)]
pub struct Admitted {
    /// The authenticated caller.
    pub caller: Caller,
    /// The last event number the client has.
    pub since: Option<u64>,
    /// When its credentials end (a user token's `exp`, plus the allowed
    /// leeway): the session closes then with 4003 `expired`.
    pub until: Option<Duration>,
    /// The connection's frame limits.
    pub limits: FrameLimits,
    /// Where the bot's membership changes are recorded (none: not
    /// recorded, as in tests of the session alone).
    pub audit: Option<crate::audit::AuditSink>,
}

/// Runs one session until it ends.
pub async fn run<S, R, E>(
    sink: S,
    mut stream: R,
    messaging: Arc<Messaging>,
    bus: Arc<dyn Bus>,
    calls: Arc<Calls>,
    admitted: Admitted,
) -> Ended
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + 'static,
{
    let Admitted {
        caller,
        since,
        until,
        limits,
        audit,
    } = admitted;
    let mut sink = Watched::new(sink);
    let user_id = caller.participant();
    let mut subscription = bus.subscribe(user_id);
    let device = subscription.id();
    // A lock or unregistration that landed between the credentials check
    // and the subscription closed nobody: look again now that closes reach
    // this session.
    if !messaging.still_admitted(&caller).await {
        let _ = close_with(&mut sink, close::REVOKED, "revoked").await;
        return Ended::Revoked;
    }
    let _ = messaging.connection(&caller, true).await;
    let context = Arc::new(Context {
        messaging,
        calls,
        caller,
        device,
        limits,
        expires_at: until.map(|d| Instant::now() + d),
        audit,
    });
    let mut ended = session(&mut sink, &mut stream, &context, since, &mut subscription).await;
    // A send that never completed (as opposed to one that failed) means
    // the client stopped reading its socket.
    if ended == Ended::ClientGone && sink.blocked {
        ended = Ended::Stalled;
        metrics::counter!("ws_slow_consumers_total", "cause" => "send_stalled").increment(1);
    }
    drop(subscription);
    context.calls.disconnected(user_id, device).await;
    context.messaging.disconnected(&context.caller).await;
    if ended == Ended::Stalled {
        // The close frame goes behind what the socket still holds: a
        // client that reads again within the wait gets it.
        let closed = tokio::time::timeout(
            STALLED_CLOSE_WAIT,
            sink.send(Message::Close(Some(CloseFrame {
                code: close::SLOW_CONSUMER,
                reason: Utf8Bytes::from_static("slow_consumer"),
            }))),
        )
        .await;
        if matches!(closed, Ok(Ok(()))) {
            linger(&mut stream).await;
        }
    }
    ended
}

/// The session's sink, remembering whether the last send was left
/// unfinished (its timeout gave up on it while the socket accepted
/// nothing) rather than failed.
struct Watched<S> {
    inner: S,
    blocked: bool,
}

impl<S> Watched<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            blocked: false,
        }
    }

    fn watch<T>(&mut self, poll: std::task::Poll<T>) -> std::task::Poll<T> {
        self.blocked = poll.is_pending();
        poll
    }
}

impl<S: Sink<Message> + Unpin> Sink<Message> for Watched<S> {
    type Error = S::Error;

    fn poll_ready(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_ready(cx);
        self.watch(poll)
    }

    fn start_send(mut self: std::pin::Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        std::pin::Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(poll)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_close(cx);
        self.watch(poll)
    }
}

/// What a session's requests act with.
struct Context {
    messaging: Arc<Messaging>,
    calls: Arc<Calls>,
    caller: Caller,
    /// This connection's id on the bus: the device calls address.
    device: u64,
    /// Frame limits of this connection.
    limits: FrameLimits,
    /// When the credentials end.
    expires_at: Option<Instant>,
    /// Where the bot's membership changes are recorded.
    audit: Option<crate::audit::AuditSink>,
}

async fn session<S, R, E>(
    mut sink: &mut S,
    stream: &mut R,
    context: &Arc<Context>,
    since: Option<u64>,
    subscription: &mut crate::bus::Subscription,
) -> Ended
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + 'static,
{
    let messaging = &context.messaging;
    let user_id = context.caller.participant();
    let store = messaging.store().clone();
    let head = store.event_head(user_id).await.unwrap_or(0);
    let mut access = Access::default();
    let mut calls = Vec::new();
    for call in context.calls.active_anywhere(&context.caller).await {
        let gate = Gate {
            conversation: call.conversation_id,
            kind: GateKind::Event,
        };
        if access.shows(context, Some(gate)).await.unwrap_or(false) {
            calls.push(call);
        }
    }
    let welcome = ServerFrame::Welcome {
        user_id,
        event_seq: head,
        calls,
    };
    if send(&mut sink, welcome.render()).await.is_err() {
        return Ended::ClientGone;
    }
    let mut last = since.unwrap_or(head).min(head);
    // Events after `last` that were pruned cannot be replayed.
    let pruned = match messaging.store().oldest_event(user_id).await {
        Ok(Some(oldest)) => last + 1 < oldest,
        Ok(None) => last < head,
        Err(_) => false,
    };
    if head - last > RESUME_LIMIT || pruned {
        let frame = ServerFrame::Resync {
            reason: ResyncReason::TooFarBehind,
            event_seq: head,
        };
        if send(&mut sink, frame.render()).await.is_err() {
            return Ended::ClientGone;
        }
        last = head;
    }
    if replay(&mut sink, context, &mut access, &mut last, u64::MAX)
        .await
        .is_err()
    {
        return Ended::ClientGone;
    }

    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let mut last_heard = Instant::now();
    let expiry = async {
        match context.expires_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    // Requests are answered one at a time, in order, while deliveries go
    // on: a request waiting for its commit never holds back the events
    // (a client that reads everything is never a slow consumer because
    // of its own requests). At most MAX_PENDING_REQUESTS wait; past that
    // the session stops reading the socket until one is answered.
    //
    // The request being answered is a task of its own, not a future this
    // loop polls: while the loop awaits the store for a delivery (access,
    // replay), an unpolled request would keep the pooled connection its
    // query holds, and sessions doing that to each other emptied the pool
    // until its 30 s acquire timeout (seen seeding 200 000 messages with
    // 96 sends in flight).
    let mut pending: VecDeque<Utf8Bytes> = VecDeque::new();
    let mut current: Option<tokio::task::JoinHandle<String>> = None;
    let ended = loop {
        if current.is_none()
            && let Some(text) = pending.pop_front()
        {
            let context = context.clone();
            current = Some(tokio::spawn(async move {
                handle_text(&context, text.as_str()).await
            }));
        }
        let idle_at = last_heard + IDLE_TIMEOUT;
        tokio::select! {
            reply = async {
                match current.as_mut() {
                    Some(answering) => answering.await,
                    None => std::future::pending().await,
                }
            } => {
                current = None;
                let reply = reply.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "answering a request frame failed");
                    error_frame(None, Code::Internal, "internal error")
                });
                if send(&mut sink, reply).await.is_err() {
                    break Ended::ClientGone;
                }
            }
            incoming = stream.next(), if pending.len() < MAX_PENDING_REQUESTS => {
                let message = match incoming {
                    Some(Ok(message)) => message,
                    Some(Err(e)) if too_big(&e) => {
                        let _ = close_with(&mut sink, close::TOO_BIG, "frame_too_large").await;
                        tokio::time::sleep(CLOSE_LINGER).await;
                        break Ended::TooBig;
                    }
                    _ => break Ended::ClientGone,
                };
                last_heard = Instant::now();
                let reply = match message {
                    Message::Text(text) => {
                        pending.push_back(text);
                        None
                    }
                    Message::Binary(_) => Some(match context.limits.check_frame() {
                        Err(limited) => rate_limited_frame(None, &limited),
                        Ok(()) => error_frame(None, Code::UnsupportedFrame, "frames are JSON text"),
                    }),
                    Message::Close(_) => break Ended::ClientGone,
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(reply) = reply
                    && send(&mut sink, reply).await.is_err() {
                        break Ended::ClientGone;
                    }
            }
            delivery = subscription.rx.recv() => {
                let Some(delivery) = delivery else {
                    // Close cleanly: the close frame, then read (and drop)
                    // what the client still sends for a moment, so that the
                    // socket is not reset with unread requests in it and the
                    // client sees 4008, not 1006.
                    metrics::counter!("ws_slow_consumers_total", "cause" => "queue_full").increment(1);
                    let _ = close_with(&mut sink, close::SLOW_CONSUMER, "slow_consumer").await;
                    linger(stream).await;
                    break Ended::SlowConsumer;
                };
                if let Some((code, reason)) = delivery.close {
                    let _ = close_with(sink, code, reason).await;
                    break Ended::Revoked;
                }
                if delivery.catch_up {
                    // The cluster's bus may have lost events: the log has them.
                    if replay(&mut sink, context, &mut access, &mut last, u64::MAX).await.is_err() {
                        break Ended::ClientGone;
                    }
                    continue;
                }
                if delivery.seq == 0 {
                    match access.shows(context, delivery.gate).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(()) => break store_failed(&mut sink).await,
                    }
                    let frame = ephemeral_frame(&delivery.payload);
                    if send(&mut sink, frame).await.is_err() {
                        break Ended::ClientGone;
                    }
                    continue;
                }
                if delivery.seq <= last {
                    continue;
                }
                if delivery.seq > last + 1 {
                    // Events this session has not seen (published out of
                    // order, or before it subscribed): from the store.
                    metrics::counter!("ws_gap_replays_total").increment(1);
                    if replay(&mut sink, context, &mut access, &mut last, delivery.seq).await.is_err() {
                        break Ended::ClientGone;
                    }
                }
                match access.shows(context, delivery.gate).await {
                    Ok(true) => {
                        if send(&mut sink, event_frame(delivery.seq, &delivery.payload)).await.is_err() {
                            break Ended::ClientGone;
                        }
                    }
                    Ok(false) => {}
                    Err(()) => break store_failed(&mut sink).await,
                }
                last = delivery.seq;
            }
            _ = ping.tick() => {
                if timed(sink.send(Message::Ping(Vec::new().into()))).await.is_err() {
                    break Ended::ClientGone;
                }
            }
            () = tokio::time::sleep_until(idle_at) => {
                let _ = close_with(&mut sink, close::IDLE, "idle").await;
                break Ended::Idle;
            }
            () = &mut expiry => {
                let _ = close_with(&mut sink, close::REVOKED, "expired").await;
                break Ended::Revoked;
            }
        }
    };
    // A request being answered finishes: its commit or call change is not
    // cut in half (its answer may no longer reach the client).
    if let Some(answering) = current.take() {
        let _ = tokio::time::timeout(SEND_TIMEOUT, answering).await;
    }
    ended
}

/// Reads and drops what the client still sends, until it closes or
/// [`CLOSE_LINGER`] passes.
async fn linger<R, E>(stream: &mut R)
where
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// Whether the transport refused a frame or message over its size limit
/// (it then reads nothing more of it: the connection must close).
fn too_big(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(tungstenite::Error::Capacity(
            tungstenite::error::CapacityError::MessageTooLong { .. },
        )) = e.downcast_ref::<tungstenite::Error>()
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The store failed while deciding what to show: the session ends (1011)
/// rather than skip events silently; the client resumes.
async fn store_failed<S: Sink<Message> + Unpin>(sink: &mut S) -> Ended {
    let _ = close_with(sink, 1011, "internal").await;
    Ended::ClientGone
}

async fn timed<F: std::future::Future<Output = Result<(), E>>, E>(f: F) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, f).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn send<S: Sink<Message> + Unpin>(sink: &mut S, text: String) -> Result<(), ()> {
    timed(sink.send(Message::Text(Utf8Bytes::from(text)))).await
}

async fn close_with<S: Sink<Message> + Unpin>(
    sink: &mut S,
    code: u16,
    reason: &'static str,
) -> Result<(), ()> {
    timed(sink.send(Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))))
    .await
}
