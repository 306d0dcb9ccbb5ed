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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::bus::{Bus, Gate, GateKind};
use crate::calls::{CallMedia, Calls, Quality};
use crate::error::{Code, Error};
use crate::ids::{CallId, ConversationId, MessageId, UserId};
use crate::limits::{FrameKind, FrameLimits};
use crate::messaging::{
    AttachmentRef, Caller, ConversationView, MessageView, Messaging, NewConversation,
};
use crate::store::messaging::{Action, MessageBody};
use confer_sfu::Role;

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
/// Events read from the store per page while replaying.
const REPLAY_PAGE: u32 = 500;
/// Most conversations a session remembers it may (or may not) show;
/// beyond, it forgets them all and asks again.
const ACCESS_CACHE: usize = 1024;

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

/// A request frame.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Send {
        id: String,
        conversation_id: ConversationId,
        client_id: String,
        #[serde(default)]
        text: String,
        #[serde(default)]
        data: Option<Value>,
        #[serde(default)]
        recipients: Option<Vec<UserId>>,
        #[serde(default)]
        actions: Vec<Action>,
        #[serde(default)]
        attachments: Vec<AttachmentRef>,
    },
    CreateConversation {
        id: String,
        title: String,
        #[serde(default)]
        members: Vec<UserId>,
        #[serde(default)]
        is_group: Option<bool>,
        #[serde(default)]
        displayed: Option<bool>,
        #[serde(default)]
        all_users: bool,
        #[serde(default)]
        key: Option<String>,
    },
    AddMembers {
        id: String,
        conversation_id: ConversationId,
        members: Vec<UserId>,
    },
    RemoveMember {
        id: String,
        conversation_id: ConversationId,
        user_id: UserId,
    },
    OpenContext {
        id: String,
        context: String,
        #[serde(default)]
        title: String,
    },
    History {
        id: String,
        conversation_id: ConversationId,
        #[serde(default)]
        after: Option<u64>,
        #[serde(default)]
        before: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
    },
    Read {
        id: String,
        conversation_id: ConversationId,
        seq: u64,
    },
    Edit {
        id: String,
        conversation_id: ConversationId,
        message_id: MessageId,
        text: String,
    },
    Delete {
        id: String,
        conversation_id: ConversationId,
        message_id: MessageId,
    },
    List {
        id: String,
        #[serde(default)]
        limit: Option<u32>,
        /// The `next` cursor of the previous page.
        #[serde(default)]
        after: Option<String>,
    },
    Click {
        id: String,
        conversation_id: ConversationId,
        message_id: MessageId,
        value: String,
    },
    Typing {
        id: String,
        conversation_id: ConversationId,
    },
    Members {
        id: String,
        conversation_id: ConversationId,
    },
    Presence {
        id: String,
        #[serde(default)]
        away: Option<bool>,
        #[serde(default)]
        users: Vec<UserId>,
    },
    Search {
        id: String,
        query: String,
        #[serde(default)]
        limit: Option<u32>,
    },
    Ping {
        id: String,
    },
    CallStart {
        id: String,
        conversation_id: ConversationId,
        media: CallMedia,
        #[serde(default)]
        device_id: Option<String>,
    },
    CallJoin {
        id: String,
        call_id: CallId,
        #[serde(default)]
        device_id: Option<String>,
    },
    CallDecline {
        id: String,
        call_id: CallId,
        #[serde(default)]
        busy: bool,
    },
    CallLeave {
        id: String,
        call_id: CallId,
    },
    CallSignal {
        id: String,
        call_id: CallId,
        to: UserId,
        signal: Value,
    },
    CallPublish {
        id: String,
        call_id: CallId,
        sdp: String,
        #[serde(default)]
        screen_mid: Option<String>,
    },
    CallSubscribe {
        id: String,
        call_id: CallId,
        sdp: String,
    },
    #[serde(rename = "call_media")]
    CallMediaState {
        id: String,
        call_id: CallId,
        #[serde(default)]
        audio: Option<bool>,
        #[serde(default)]
        video: Option<bool>,
        #[serde(default)]
        screen: Option<bool>,
    },
    CallQuality {
        id: String,
        call_id: CallId,
        #[serde(default)]
        mid: Option<String>,
        quality: Quality,
    },
}

/// The `type`s of request frames (anything else is `unknown_type`).
pub const KNOWN_TYPES: &[&str] = &[
    "send",
    "create_conversation",
    "add_members",
    "remove_member",
    "open_context",
    "history",
    "read",
    "edit",
    "delete",
    "list",
    "click",
    "typing",
    "members",
    "presence",
    "search",
    "ping",
    "call_start",
    "call_join",
    "call_decline",
    "call_leave",
    "call_signal",
    "call_publish",
    "call_subscribe",
    "call_media",
    "call_quality",
];

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
    let _ = context.messaging.connection(&context.caller, false).await;
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
    for call in context.calls.active_for(user_id) {
        let gate = Gate {
            conversation: call.conversation_id,
            kind: GateKind::Event,
        };
        if access.shows(context, Some(gate)).await.unwrap_or(false) {
            calls.push(call);
        }
    }
    let welcome = json!({"type": "welcome", "user_id": user_id, "event_seq": head, "calls": calls});
    if send(&mut sink, welcome.to_string()).await.is_err() {
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
        let frame = json!({"type": "resync", "reason": "too_far_behind", "event_seq": head});
        if send(&mut sink, frame.to_string()).await.is_err() {
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
                if delivery.seq == 0 {
                    match access.shows(context, delivery.gate).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(()) => break store_failed(&mut sink).await,
                    }
                    let frame = format!(r#"{{"type":"ephemeral","event":{}}}"#, delivery.payload);
                    if send(&mut sink, frame).await.is_err() {
                        break Ended::ClientGone;
                    }
                    continue;
                }
                if delivery.seq <= last {
                    continue;
                }
                if delivery.seq > last + 1 && replay(&mut sink, context, &mut access, &mut last, delivery.seq).await.is_err() {
                    break Ended::ClientGone;
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

/// Sends stored events after `*last` and below `until` that this session
/// shows, advancing `*last`.
async fn replay<S: Sink<Message> + Unpin>(
    sink: &mut S,
    context: &Context,
    access: &mut Access,
    last: &mut u64,
    until: u64,
) -> Result<(), ()> {
    let user = context.caller.participant();
    loop {
        let events = context
            .messaging
            .store()
            .events_after(user, *last, REPLAY_PAGE)
            .await
            .map_err(|_| ())?;
        if events.is_empty() {
            return Ok(());
        }
        for e in events {
            if e.seq >= until {
                return Ok(());
            }
            if access.shows(context, gate_of(&e.payload)).await? {
                send(sink, event_frame(e.seq, &e.payload)).await?;
            }
            *last = e.seq;
        }
    }
}

/// What this session knows of the conversations whose events it may show.
#[derive(Debug, Default)]
struct Access {
    shown: std::collections::HashMap<ConversationId, bool>,
}

impl Access {
    /// Whether the session shows an event with `gate`; `Err` when the store
    /// could not say.
    async fn shows(&mut self, context: &Context, gate: Option<Gate>) -> Result<bool, ()> {
        let Some(gate) = gate else {
            return Ok(true);
        };
        match gate.kind {
            GateKind::Event => {}
            GateKind::Opened => {
                self.shown.remove(&gate.conversation);
            }
            GateKind::Closed => {
                self.shown.remove(&gate.conversation);
                return Ok(true);
            }
        }
        if let Some(shown) = self.shown.get(&gate.conversation) {
            return Ok(*shown);
        }
        let shown = context
            .messaging
            .shows(&context.caller, gate.conversation)
            .await
            .map_err(|_| ())?;
        if self.shown.len() >= ACCESS_CACHE {
            self.shown.clear();
        }
        self.shown.insert(gate.conversation, shown);
        Ok(shown)
    }
}

/// The gate of a stored event (the log keeps payloads only): its
/// conversation, checked like a live one. Events of conversations that
/// are not contextual pass [`Access::shows`] after one look-up.
fn gate_of(payload: &str) -> Option<Gate> {
    #[derive(Deserialize)]
    struct InMessage {
        conversation_id: ConversationId,
    }
    #[derive(Deserialize)]
    struct Conversation {
        id: ConversationId,
    }
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow)]
        kind: std::borrow::Cow<'a, str>,
        conversation_id: Option<ConversationId>,
        message: Option<InMessage>,
        conversation: Option<Conversation>,
    }
    let peek: Peek<'_> = serde_json::from_str(payload).ok()?;
    let conversation = peek
        .conversation_id
        .or(peek.message.map(|m| m.conversation_id))
        .or(peek.conversation.map(|c| c.id))?;
    let kind = match peek.kind.as_ref() {
        "removed" => GateKind::Closed,
        "conversation" => GateKind::Opened,
        _ => GateKind::Event,
    };
    Some(Gate { conversation, kind })
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

/// A client's name for its device: 1 to 256 characters.
fn check_device_id(id: Option<&str>) -> Result<(), Error> {
    if id.is_some_and(|d| d.is_empty() || d.chars().count() > 256) {
        return Err(Error::InvalidRequest(
            "device_id: 1 to 256 characters".to_owned(),
        ));
    }
    Ok(())
}

/// A `list` cursor: `<last_activity ms>.<conversation id>`.
fn parse_cursor(text: &str) -> Option<(crate::ids::Timestamp, ConversationId)> {
    let (at, id) = text.split_once('.')?;
    Some((crate::ids::Timestamp(at.parse().ok()?), id.parse().ok()?))
}

fn event_frame(seq: u64, payload: &str) -> String {
    format!(r#"{{"type":"event","seq":{seq},"event":{payload}}}"#)
}

/// The WebSocket answer to an error: an error frame naming the request
/// (`id`) it answers, with the code and its sentence.
fn error_frame(id: Option<&str>, code: Code, message: &str) -> String {
    json!({"type": "error", "id": id, "code": code, "message": message}).to_string()
}

/// The `id` of a request frame, read without keeping the rest.
fn frame_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        id: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Head<'_>>(text)
        .ok()
        .and_then(|h| h.id)
        .map(std::borrow::Cow::into_owned)
}

/// The error frame of a request refused by a frame limit.
fn rate_limited_frame(id: Option<&str>, limited: &crate::limits::RateLimited) -> String {
    json!({
        "type": "error",
        "id": id,
        "code": Code::RateLimited,
        "message": limited.to_string(),
        "retry_after_ms": u64::try_from(limited.retry_after.as_millis()).unwrap_or(u64::MAX).max(1),
    })
    .to_string()
}

fn api_error_frame(id: &str, err: &Error) -> String {
    // As on REST: the client gets a generic `internal`, the log the detail.
    if let Error::Internal(detail) = err {
        tracing::error!(error = ?detail, "internal error answering a request frame");
    }
    error_frame(Some(id), err.code(), &err.to_string())
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

/// Answers one text frame.
async fn handle_text(context: &Context, text: &str) -> String {
    // Every frame counts before any work is done on it; its id is read
    // without building a tree of it.
    if let Err(limited) = context.limits.check_frame() {
        return rate_limited_frame(frame_id(text).as_deref(), &limited);
    }
    if text.len() > MAX_FRAME_BYTES {
        return error_frame(
            frame_id(text).as_deref(),
            Code::FrameTooLarge,
            "frames are limited to 131072 bytes",
        );
    }
    let value: Result<Value, _> = serde_json::from_str(text);
    let id = value
        .as_ref()
        .ok()
        .and_then(|v| v.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let value = match value {
        Ok(v) => v,
        Err(e) => return error_frame(None, Code::MalformedJson, &e.to_string()),
    };
    let Some(id) = id else {
        return error_frame(
            None,
            Code::InvalidRequest,
            "every request needs a string \"id\"",
        );
    };
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    if !KNOWN_TYPES.contains(&kind) {
        return error_frame(
            Some(&id),
            Code::UnknownType,
            &format!("unknown frame type {kind:?}"),
        );
    }
    if let Err(limited) = context.limits.check_kind(FrameKind::of(kind)) {
        return rate_limited_frame(Some(&id), &limited);
    }
    let request: Request = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return error_frame(Some(&id), Code::InvalidRequest, &e.to_string()),
    };
    match answer(context, request).await {
        Ok(frame) => frame.to_string(),
        Err(e) => api_error_frame(&id, &e),
    }
}

async fn answer(context: &Context, request: Request) -> Result<Value, Error> {
    let messaging = &context.messaging;
    let caller = &context.caller;
    let calls = &context.calls;
    let device = context.device;
    Ok(match request {
        Request::Send {
            id,
            conversation_id,
            client_id,
            text,
            data,
            recipients,
            actions,
            attachments,
        } => {
            let body = MessageBody {
                text,
                data,
                recipients,
                actions,
                attachments: Vec::new(),
            };
            let m = messaging
                .send_with_files(caller, conversation_id, &client_id, body, &attachments)
                .await?;
            json!({"type": "ack", "id": id, "message": MessageView::from(&m)})
        }
        Request::CreateConversation {
            id,
            title,
            members,
            is_group,
            displayed,
            all_users,
            key,
        } => {
            let c = messaging
                .create_conversation(
                    caller,
                    NewConversation {
                        title,
                        members,
                        is_group,
                        displayed,
                        all_users,
                        key,
                    },
                )
                .await?;
            json!({"type": "ack", "id": id, "conversation": ConversationView::of(&c, None)})
        }
        Request::AddMembers {
            id,
            conversation_id,
            members,
        } => {
            let c = messaging
                .add_members(caller, conversation_id, &members)
                .await?;
            json!({"type": "ack", "id": id, "conversation": ConversationView::of(&c, None)})
        }
        Request::RemoveMember {
            id,
            conversation_id,
            user_id,
        } => {
            messaging
                .remove_member(caller, conversation_id, user_id)
                .await?;
            calls.member_removed(conversation_id, user_id).await;
            json!({"type": "ack", "id": id})
        }
        Request::OpenContext { id, context, title } => {
            let c = messaging.open_context(caller, &context, &title).await?;
            json!({"type": "ack", "id": id, "conversation": ConversationView::of(&c, None)})
        }
        Request::History {
            id,
            conversation_id,
            after,
            before,
            limit,
        } => {
            let messages = messaging
                .history(caller, conversation_id, after, before, limit.unwrap_or(50))
                .await?;
            let views: Vec<MessageView> = messages.iter().map(MessageView::from).collect();
            json!({"type": "history", "id": id, "conversation_id": conversation_id, "messages": views})
        }
        Request::Read {
            id,
            conversation_id,
            seq,
        } => {
            let mark = messaging.mark_read(caller, conversation_id, seq).await?;
            json!({"type": "ack", "id": id, "read_seq": mark})
        }
        Request::Edit {
            id,
            conversation_id,
            message_id,
            text,
        } => {
            let m = messaging
                .change(caller, conversation_id, message_id, Some(text))
                .await?;
            json!({"type": "ack", "id": id, "message": MessageView::from(&m)})
        }
        Request::Delete {
            id,
            conversation_id,
            message_id,
        } => {
            let m = messaging
                .change(caller, conversation_id, message_id, None)
                .await?;
            json!({"type": "ack", "id": id, "message": MessageView::from(&m)})
        }
        Request::List { id, limit, after } => {
            let cursor = match after {
                Some(c) => Some(parse_cursor(&c).ok_or_else(|| {
                    Error::InvalidRequest("after: not a cursor from `next`".to_owned())
                })?),
                None => None,
            };
            let limit = limit.unwrap_or(50);
            let entries = messaging.list(caller, cursor, limit).await?;
            let views: Vec<ConversationView> = entries
                .iter()
                .map(|e| ConversationView::of(&e.conversation, Some(e.unread)))
                .collect();
            let next = (entries.len() == limit as usize)
                .then(|| {
                    entries.last().map(|e| {
                        format!("{}.{}", e.conversation.last_activity.0, e.conversation.id)
                    })
                })
                .flatten();
            json!({"type": "conversations", "id": id, "conversations": views, "next": next})
        }
        Request::Click {
            id,
            conversation_id,
            message_id,
            value,
        } => {
            messaging
                .click(caller, conversation_id, message_id, &value)
                .await?;
            json!({"type": "ack", "id": id})
        }
        Request::Typing {
            id,
            conversation_id,
        } => {
            let sent = messaging.typing(caller, conversation_id).await?;
            json!({"type": "ack", "id": id, "sent": sent})
        }
        Request::Presence { id, away, users } => {
            if let Some(away) = away {
                messaging.set_away(caller, away).await?;
            }
            let known = messaging.presence_of(caller, &users).await?;
            let map: serde_json::Map<String, Value> = known
                .into_iter()
                .map(|(u, p)| (u.to_string(), json!(p)))
                .collect();
            json!({"type": "presence", "id": id, "users": map})
        }
        Request::Members {
            id,
            conversation_id,
        } => {
            let (members, truncated) = messaging.member_list(caller, conversation_id).await?;
            let members: Vec<Value> = members
                .into_iter()
                .map(|(user_id, name, presence)| match presence {
                    Some(p) => json!({"user_id": user_id, "name": name, "presence": p}),
                    None => json!({"user_id": user_id, "name": name}),
                })
                .collect();
            json!({"type": "members", "id": id, "members": members, "truncated": truncated})
        }
        Request::Search { id, query, limit } => {
            let found = messaging
                .search(caller, &query, limit.unwrap_or(50))
                .await?;
            let views: Vec<MessageView> = found.iter().map(MessageView::from).collect();
            json!({"type": "search", "id": id, "messages": views})
        }
        Request::Ping { id } => json!({"type": "pong", "id": id}),
        Request::CallStart {
            id,
            conversation_id,
            media,
            device_id,
        } => {
            check_device_id(device_id.as_deref())?;
            let call = calls
                .start(caller, device, conversation_id, media, device_id)
                .await?;
            json!({"type": "ack", "id": id, "call": call, "ice_servers": calls.ice_servers(caller.participant())})
        }
        Request::CallJoin {
            id,
            call_id,
            device_id,
        } => {
            check_device_id(device_id.as_deref())?;
            let (call, ice_servers) = calls.join(caller, device, call_id, device_id).await?;
            json!({"type": "ack", "id": id, "call": call, "ice_servers": ice_servers})
        }
        Request::CallDecline { id, call_id, busy } => {
            calls.decline(caller, call_id, busy).await?;
            json!({"type": "ack", "id": id})
        }
        Request::CallLeave { id, call_id } => {
            calls.leave(caller, device, call_id).await?;
            json!({"type": "ack", "id": id})
        }
        Request::CallSignal {
            id,
            call_id,
            to,
            signal,
        } => {
            // Checked before the call is looked up: a malformed request is
            // refused as such, whatever the call's state.
            if !signal.is_object() {
                return Err(Error::InvalidRequest(
                    "signal: must be a JSON object".to_owned(),
                ));
            }
            calls.signal(caller, device, call_id, to, signal).await?;
            json!({"type": "ack", "id": id})
        }
        Request::CallPublish {
            id,
            call_id,
            sdp,
            screen_mid,
        } => {
            let sdp = calls
                .negotiate(caller, device, call_id, Role::Publish, sdp, screen_mid)
                .await?;
            json!({"type": "call_answer", "id": id, "call_id": call_id, "sdp": sdp})
        }
        Request::CallSubscribe { id, call_id, sdp } => {
            let sdp = calls
                .negotiate(caller, device, call_id, Role::Subscribe, sdp, None)
                .await?;
            json!({"type": "call_answer", "id": id, "call_id": call_id, "sdp": sdp})
        }
        Request::CallMediaState {
            id,
            call_id,
            audio,
            video,
            screen,
        } => {
            calls
                .set_media(caller, device, call_id, audio, video, screen)
                .await?;
            json!({"type": "ack", "id": id})
        }
        Request::CallQuality {
            id,
            call_id,
            mid,
            quality,
        } => {
            calls
                .set_quality(caller, device, call_id, mid, quality)
                .await?;
            json!({"type": "ack", "id": id})
        }
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_channel::mpsc;

    use super::*;
    use crate::auth::TokenKey;
    use crate::bus::InProcessBus;
    use crate::ids::{AppId, ManualClock, SubscriberId, Timestamp};
    use crate::store::{Application, SqliteStore, User};

    fn caller() -> Caller {
        let app = AppId::random();
        Caller {
            app: Application {
                id: app,
                subscriber_id: SubscriberId::random(),
                name: "test".to_owned(),
                secret_hash: String::new(),
                token_key: TokenKey::derive(app, "s"),
                prev_token_key: None,
                prev_token_key_until: None,
                created_at: Timestamp(0),
                unregistered_at: None,
            },
            who: crate::messaging::Who::User {
                user: User {
                    id: UserId::random(),
                    app_id: app,
                    external_id: "u".to_owned(),
                    name: "U".to_owned(),
                    email: None,
                    locked: false,
                    created_at: Timestamp(0),
                },
                contexts: Vec::new(),
            },
        }
    }

    /// A session over channels standing in for the socket, on an
    /// in-memory store (whose pool has a single connection), welcomed.
    struct Harness {
        out: mpsc::UnboundedReceiver<Message>,
        input: mpsc::UnboundedSender<Result<Message, Infallible>>,
        bus: Arc<dyn Bus>,
        user: UserId,
        session: tokio::task::JoinHandle<Ended>,
    }

    impl Harness {
        async fn start() -> Self {
            let store = Arc::new(SqliteStore::in_memory().await.unwrap());
            let bus = InProcessBus::new(16);
            let messaging = Arc::new(Messaging::new(
                store.clone(),
                store,
                bus.clone(),
                Arc::new(ManualClock::new(Timestamp(0))),
            ));
            let (sink, mut out) = mpsc::unbounded::<Message>();
            let (input, stream) = mpsc::unbounded::<Result<Message, Infallible>>();
            let sfu = confer_sfu::EmbeddedSfu::start(&confer_sfu::SfuConfig {
                workers: 1,
                pin_workers: false,
                ..confer_sfu::SfuConfig::default()
            })
            .unwrap();
            let calls = Calls::new(
                crate::config::CallConfig::default(),
                messaging.clone(),
                bus.clone(),
                sfu,
                Arc::new(ManualClock::new(Timestamp(0))),
            );
            let caller = caller();
            let user = caller.participant();
            let admitted = Admitted {
                caller,
                since: None,
                until: None,
                limits: FrameLimits::unlimited(),
            };
            let session = tokio::spawn(run(sink, stream, messaging, bus.clone(), calls, admitted));
            let welcome = out.next().await.unwrap();
            assert!(matches!(&welcome, Message::Text(t) if t.as_str().contains("welcome")));
            Self {
                out,
                input,
                bus,
                user,
                session,
            }
        }

        fn send(&self, frame: &str) {
            self.input
                .unbounded_send(Ok(Message::Text(frame.into())))
                .unwrap();
        }
    }

    /// The session pings every 25 s and closes after 60 s of silence, in
    /// virtual time, over channels standing in for the socket.
    #[tokio::test]
    async fn pings_then_closes_an_idle_connection() {
        let Harness {
            mut out,
            input,
            session,
            ..
        } = Harness::start().await;
        // A request answered means the session finished its start-up (store
        // reads) and waits in its loop: only now may time be frozen.
        input
            .unbounded_send(Ok(Message::Text(r#"{"type":"ping","id":"p"}"#.into())))
            .unwrap();
        assert!(matches!(out.next().await, Some(Message::Text(t)) if t.as_str().contains("pong")));

        tokio::time::pause();
        tokio::time::advance(PING_INTERVAL + Duration::from_secs(1)).await;
        assert!(matches!(out.next().await, Some(Message::Ping(_))));
        tokio::time::advance(IDLE_TIMEOUT).await;
        // Another ping at 50 s, then the close at 60 s of silence.
        loop {
            match out.next().await {
                Some(Message::Ping(_)) => {}
                Some(Message::Close(Some(frame))) => {
                    assert_eq!(frame.code, close::IDLE);
                    break;
                }
                other => panic!("expected pings then a close frame, got {other:?}"),
            }
        }
        assert_eq!(session.await.unwrap(), Ended::Idle);
    }

    /// A request whose query holds the store's only pooled connection and
    /// a delivery that needs the store (a gap in the user's events, so a
    /// replay) never wait for each other. Before the request became a
    /// task of its own, the session stopped polling it while it awaited
    /// the replay, and both waited until the pool's 30 s acquire timeout.
    #[tokio::test]
    async fn a_request_and_a_replay_never_wait_for_each_other() {
        let mut h = Harness::start().await;
        for round in 0..20_u64 {
            // Seq far past the last one seen: the session replays first.
            h.bus
                .publish(h.user, 1_000 + 2 * round, Arc::from(r#"{"kind":"x"}"#));
            h.send(&format!(r#"{{"type":"list","id":"r{round}"}}"#));
            let answered = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match h.out.next().await {
                        Some(Message::Text(t))
                            if t.as_str().contains(&format!(r#""id":"r{round}""#)) =>
                        {
                            return t;
                        }
                        Some(_) => {}
                        None => panic!("the session ended"),
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("request r{round} not answered in 10 s"));
            assert!(
                !answered.as_str().contains(r#""type":"error""#),
                "{answered}"
            );
        }
        drop(h.input);
        let _ = h.session.await;
    }
}
