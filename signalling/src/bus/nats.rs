//! The bus of a cluster: signalling nodes that meet on NATS.
//!
//! Each node delivers to its own connections through an [`InProcessBus`]
//! and tells the other nodes over NATS core subjects (at most once, no
//! persistence). The store stays the truth: an event carries its number,
//! a session that sees a gap reads the store, and whenever messages may
//! have been lost (the connection to NATS dropped, or the outgoing queue
//! was full) every node asks all its sessions to read their logs up to
//! the head ([`super::Delivery::catch_up`]).
//!
//! Subjects (`confer.` then):
//! - `u.<user>`: an event, an ephemeral event for one connection, or the
//!   order to close a user's connections. Every node subscribes to `u.*`
//!   and keeps what is for its own connections, so each node receives the
//!   whole cluster's fan-out (see `docs/architecture.md`).
//! - `presence`: a node's presence of one user changed; `presence.sync`
//!   asks every node for all of its presence, sent back on
//!   `presence.full` (a reset, then the users). A user is online when it
//!   is online on any node.
//! - `node`: a heartbeat every [`HEARTBEAT`]; a node not heard for
//!   [`NODE_TIMEOUT`] is gone and so is the presence it made.
//! - `roster`: a conversation's membership changed (caches drop it).
//! - `catchup`: a node may have missed or failed to send events: every
//!   node's sessions read their logs.
//! - `nodes`: a notice for every node's [`NodeHandlers::notice`] (calls).
//!
//! Requests to one node (a call's owner) go to `confer-rpc.<node>`, outside
//! the `confer.>` wildcard, with NATS's request-reply: a node that is gone
//! answers "no responders" at once.
//!
//! Connections do not receive their own node's messages (`no_echo`): a
//! node delivers locally first, then publishes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{
    Bus, Gate, GateKind, InProcessBus, MembershipHook, NodeAnswer, NodeHandlers, Presence,
    PresenceChange, Subscription,
};
use crate::ids::{ConversationId, UserId};

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node not heard for this long is gone, with the presence it made.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(7);
/// Messages waiting to go to NATS; when full, a message is dropped and the
/// cluster is asked to catch up from the store.
const OUTBOX: usize = 65_536;
/// Users per `presence.full` message.
const SNAPSHOT_CHUNK: usize = 2_000;

/// A bus over NATS; see the module documentation.
#[derive(Debug)]
pub struct NatsBus {
    shared: Arc<Shared>,
}

struct Shared {
    /// This node, as the others know it.
    node: u64,
    local: Arc<InProcessBus>,
    client: async_nats::Client,
    outbox: mpsc::Sender<(String, Bytes)>,
    /// Presence other nodes made, per node.
    remote: Mutex<HashMap<u64, NodeView>>,
    membership: Mutex<Option<MembershipHook>>,
    handlers: Mutex<Option<NodeHandlers>>,
    /// A catch-up is owed to the cluster (a message could not be sent).
    owes_catch_up: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// What this node knows of another.
#[derive(Debug)]
struct NodeView {
    seen: Instant,
    users: HashMap<UserId, Presence>,
}

impl NodeView {
    fn new() -> Self {
        Self {
            seen: Instant::now(),
            users: HashMap::new(),
        }
    }
}

/// Subject prefix of everything the bus sends.
const PREFIX: &str = "confer";

impl NatsBus {
    /// Connects to the NATS servers in `urls` (comma-separated) and starts
    /// the tasks that send, receive and beat; each connection holds up to
    /// `queue` undelivered events.
    ///
    /// # Errors
    /// If no server of `urls` answers within a few seconds.
    pub async fn connect(urls: &str, queue: usize) -> anyhow::Result<Arc<Self>> {
        // Below 2^52, so that a connection id stays exact as a JSON number.
        let node = rand::random::<u64>() % (1 << 20) + 1;
        let (events_tx, events_rx) = mpsc::channel(16);
        let addrs = urls
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("bus.url {urls:?}: {e}"))?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("confer-signalling-{node}"))
            .no_echo()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            .max_reconnects(None)
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.try_send(event);
                }
            })
            .connect(addrs)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to NATS at {urls}: {e}"))?;
        let subscriber = client
            .subscribe(format!("{PREFIX}.>"))
            .await
            .map_err(|e| anyhow::anyhow!("subscribing on NATS: {e}"))?;
        let requests = client
            .subscribe(format!("confer-rpc.{node}"))
            .await
            .map_err(|e| anyhow::anyhow!("subscribing on NATS: {e}"))?;
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let shared = Arc::new(Shared {
            node,
            local: InProcessBus::numbering_from(queue, node << 32),
            client: client.clone(),
            outbox,
            remote: Mutex::new(HashMap::new()),
            membership: Mutex::new(None),
            handlers: Mutex::new(None),
            owes_catch_up: AtomicBool::new(false),
        });
        tokio::spawn(send(client, outbox_rx));
        tokio::spawn(receive(shared.clone(), subscriber));
        tokio::spawn(answer(shared.clone(), requests));
        tokio::spawn(beat(shared.clone()));
        tokio::spawn(follow_connection(shared.clone(), events_rx));
        shared.send("presence.sync", node.to_string());
        tracing::info!(node, %urls, "bus: connected to NATS");
        Ok(Arc::new(Self { shared }))
    }
}

impl Shared {
    /// Queues a message for NATS; never waits.
    fn send(&self, subject: &str, body: impl Into<Bytes>) {
        let subject = format!("{PREFIX}.{subject}");
        if self.outbox.try_send((subject, body.into())).is_err() {
            metrics::counter!("bus_dropped_total").increment(1);
            self.owes_catch_up.store(true, Ordering::Relaxed);
        }
    }

    /// An event or order for `user`'s connections on other nodes.
    fn send_to_user(&self, user: UserId, head: &Head, payload: &str) {
        let mut body = head.encode();
        body.push('\n');
        body.push_str(payload);
        self.send(&format!("u.{user}"), body);
    }

    /// Presence of `user` as the other nodes make it.
    fn remote_presence(&self, user: UserId) -> Presence {
        let remote = self
            .remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        remote
            .values()
            .filter_map(|view| view.users.get(&user).copied())
            .fold(Presence::Offline, strongest)
    }

    fn publish_presence(&self, user: UserId, presence: Presence) {
        self.send(
            "presence",
            format!("{} {user} {}", self.node, presence_code(presence)),
        );
    }

    /// Sends all of this node's presence (after a `presence.sync`).
    fn send_snapshot(&self) {
        let all = self.local.local_presences();
        let mut body = format!("{} reset", self.node);
        let mut in_body = 0;
        for (user, presence) in all {
            body.push_str(&format!("\n{user} {}", presence_code(presence)));
            in_body += 1;
            if in_body == SNAPSHOT_CHUNK {
                self.send("presence.full", std::mem::take(&mut body));
                body = format!("{} more", self.node);
                in_body = 0;
            }
        }
        self.send("presence.full", body);
    }

    /// Every session here reads its log; with `cluster`, every other
    /// node's sessions too.
    fn catch_up(&self, cluster: bool) {
        metrics::counter!("bus_catch_ups_total").increment(1);
        self.local.catch_up_all();
        if cluster {
            self.send("catchup", self.node.to_string());
        }
    }

    fn handle(&self, subject: &str, body: &[u8]) {
        let Some(rest) = subject
            .strip_prefix(PREFIX)
            .and_then(|s| s.strip_prefix('.'))
        else {
            return;
        };
        let Ok(body) = std::str::from_utf8(body) else {
            return;
        };
        if let Some(user) = rest.strip_prefix("u.") {
            if let Ok(user) = user.parse::<UserId>() {
                self.handle_user(user, body);
            }
            return;
        }
        match rest {
            "presence" => self.handle_presence(body),
            "presence.full" => self.handle_snapshot(body),
            "presence.sync" => self.send_snapshot(),
            "node" => {
                if let Ok(node) = body.trim().parse::<u64>() {
                    if node == self.node {
                        // Two nodes drew the same id (one chance in about
                        // a million for two): they would take each
                        // other's presence and calls for their own.
                        tracing::error!(
                            node,
                            "bus: another node has this node's id; restart one of them"
                        );
                        metrics::counter!("bus_node_id_clashes_total").increment(1);
                    }
                    let mut remote = self
                        .remote
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    remote.entry(node).or_insert_with(NodeView::new).seen = Instant::now();
                }
            }
            "roster" => {
                if let Ok(id) = body.trim().parse::<ConversationId>() {
                    let hook = self
                        .membership
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    if let Some(hook) = hook {
                        hook(id);
                    }
                }
            }
            "catchup" => self.catch_up(false),
            "nodes" => {
                if let Some(handlers) = self.handlers() {
                    (handlers.notice)(Bytes::copy_from_slice(body.as_bytes()));
                }
            }
            _ => {}
        }
    }

    fn handle_user(&self, user: UserId, body: &str) {
        let Some((head, payload)) = body.split_once('\n') else {
            return;
        };
        let Some(head) = Head::decode(head) else {
            return;
        };
        match head {
            Head::Event { seq, gate } => {
                self.local
                    .publish_gated(user, seq, Arc::from(payload), gate);
            }
            Head::To { connection } => self.local.publish_to(user, connection, Arc::from(payload)),
            Head::Close { code } => self.local.close_user(user, code, "revoked"),
        }
    }

    fn handle_presence(&self, body: &str) {
        let mut parts = body.split(' ');
        let (Some(node), Some(user), Some(code)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Ok(node), Ok(user), Some(presence)) = (
            node.parse::<u64>(),
            user.parse::<UserId>(),
            presence_of_code(code),
        ) else {
            return;
        };
        let mut remote = self
            .remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let view = remote.entry(node).or_insert_with(NodeView::new);
        view.seen = Instant::now();
        if presence == Presence::Offline {
            view.users.remove(&user);
        } else {
            view.users.insert(user, presence);
        }
    }

    fn handle_snapshot(&self, body: &str) {
        let mut lines = body.lines();
        let Some(first) = lines.next() else {
            return;
        };
        let Some((node, kind)) = first.split_once(' ') else {
            return;
        };
        let Ok(node) = node.parse::<u64>() else {
            return;
        };
        let mut remote = self
            .remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let view = remote.entry(node).or_insert_with(NodeView::new);
        view.seen = Instant::now();
        if kind == "reset" {
            view.users.clear();
        }
        for line in lines {
            if let Some((user, code)) = line.split_once(' ')
                && let (Ok(user), Some(presence)) = (user.parse::<UserId>(), presence_of_code(code))
                && presence != Presence::Offline
            {
                view.users.insert(user, presence);
            }
        }
    }

    fn handlers(&self) -> Option<NodeHandlers> {
        self.handlers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Forgets nodes not heard for [`NODE_TIMEOUT`].
    fn expire_nodes(&self) {
        let mut remote = self
            .remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        remote.retain(|node, view| {
            let alive = view.seen.elapsed() < NODE_TIMEOUT;
            if !alive {
                tracing::warn!(
                    node,
                    users = view.users.len(),
                    "bus: a node went silent; its presence is dropped"
                );
            }
            alive
        });
        metrics::gauge!("bus_nodes").set((remote.len() + 1) as f64);
    }
}

/// What a `u.<user>` message carries before its payload.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// An event (`seq` 0: ephemeral) for every connection of the user.
    Event { seq: u64, gate: Option<Gate> },
    /// An ephemeral event for one connection.
    To { connection: u64 },
    /// Close every connection of the user with this code.
    Close { code: u16 },
}

impl Head {
    fn encode(&self) -> String {
        match self {
            Self::Event { seq, gate: None } => format!("e {seq}"),
            Self::Event {
                seq,
                gate: Some(gate),
            } => {
                let kind = match gate.kind {
                    GateKind::Event => 'e',
                    GateKind::Opened => 'o',
                    GateKind::Closed => 'c',
                };
                format!("e {seq} {} {kind}", gate.conversation)
            }
            Self::To { connection } => format!("t {connection}"),
            Self::Close { code } => format!("c {code}"),
        }
    }

    fn decode(line: &str) -> Option<Self> {
        let mut parts = line.split(' ');
        match parts.next()? {
            "e" => {
                let seq = parts.next()?.parse().ok()?;
                let gate = match (parts.next(), parts.next()) {
                    (Some(conversation), Some(kind)) => Some(Gate {
                        conversation: conversation.parse().ok()?,
                        kind: match kind {
                            "e" => GateKind::Event,
                            "o" => GateKind::Opened,
                            "c" => GateKind::Closed,
                            _ => return None,
                        },
                    }),
                    _ => None,
                };
                Some(Self::Event { seq, gate })
            }
            "t" => Some(Self::To {
                connection: parts.next()?.parse().ok()?,
            }),
            "c" => Some(Self::Close {
                code: parts.next()?.parse().ok()?,
            }),
            _ => None,
        }
    }
}

fn presence_code(presence: Presence) -> &'static str {
    match presence {
        Presence::Online => "on",
        Presence::Away => "away",
        Presence::Offline => "off",
    }
}

fn presence_of_code(code: &str) -> Option<Presence> {
    match code {
        "on" => Some(Presence::Online),
        "away" => Some(Presence::Away),
        "off" => Some(Presence::Offline),
        _ => None,
    }
}

/// The stronger of two presences: online beats away beats offline.
fn strongest(a: Presence, b: Presence) -> Presence {
    let rank = |p| match p {
        Presence::Online => 2,
        Presence::Away => 1,
        Presence::Offline => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// Sends what the node queued, in order.
async fn send(client: async_nats::Client, mut outbox: mpsc::Receiver<(String, Bytes)>) {
    while let Some((subject, body)) = outbox.recv().await {
        if let Err(e) = client.publish(subject, body).await {
            tracing::debug!(error = %e, "bus: a message did not go to NATS");
        }
    }
}

/// Hands every message of the cluster to [`Shared::handle`].
async fn receive(shared: Arc<Shared>, mut subscriber: async_nats::Subscriber) {
    while let Some(message) = subscriber.next().await {
        shared.handle(message.subject.as_str(), &message.payload);
    }
    tracing::error!("bus: the NATS subscription ended");
}

/// Answers the requests other nodes address to this one, each in a task
/// of its own.
async fn answer(shared: Arc<Shared>, mut requests: async_nats::Subscriber) {
    while let Some(message) = requests.next().await {
        let (Some(reply), Some(handlers)) = (message.reply, shared.handlers()) else {
            continue;
        };
        let client = shared.client.clone();
        tokio::spawn(async move {
            let answer = (handlers.request)(message.payload).await;
            if let Err(e) = client.publish(reply, answer).await {
                tracing::debug!(error = %e, "bus: an answer did not go to NATS");
            }
        });
    }
}

/// Beats, forgets silent nodes, and pays owed catch-ups.
async fn beat(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        shared.send("node", shared.node.to_string());
        shared.expire_nodes();
        if shared.owes_catch_up.swap(false, Ordering::Relaxed) {
            shared.catch_up(true);
        }
    }
}

/// After NATS comes back: presence is asked again and sent again, and
/// every session of the cluster reads its log (events published while the
/// connection was down are lost to the bus, not to the store).
async fn follow_connection(shared: Arc<Shared>, mut events: mpsc::Receiver<async_nats::Event>) {
    let mut was_down = false;
    while let Some(event) = events.recv().await {
        match event {
            async_nats::Event::Disconnected => {
                tracing::warn!("bus: lost the connection to NATS; reconnecting");
                metrics::counter!("bus_disconnects_total").increment(1);
                was_down = true;
            }
            async_nats::Event::Connected if was_down => {
                was_down = false;
                tracing::info!("bus: connected to NATS again; sessions catch up from the store");
                shared.send("presence.sync", shared.node.to_string());
                shared.send_snapshot();
                shared.catch_up(true);
            }
            _ => {}
        }
    }
}

impl Bus for NatsBus {
    fn subscribe(&self, user: UserId) -> Subscription {
        self.shared.local.subscribe(user)
    }

    fn publish_gated(&self, user: UserId, seq: u64, payload: Arc<str>, gate: Option<Gate>) {
        self.shared
            .send_to_user(user, &Head::Event { seq, gate }, &payload);
        self.shared.local.publish_gated(user, seq, payload, gate);
    }

    fn publish_to(&self, user: UserId, connection: u64, payload: Arc<str>) {
        if connection >> 32 == self.shared.node {
            self.shared.local.publish_to(user, connection, payload);
        } else {
            self.shared
                .send_to_user(user, &Head::To { connection }, &payload);
        }
    }

    fn close_user(&self, user: UserId, code: u16, reason: &'static str) {
        self.shared.send_to_user(user, &Head::Close { code }, "");
        self.shared.local.close_user(user, code, reason);
    }

    fn is_online(&self, user: UserId) -> bool {
        self.shared.local.is_online(user) || self.shared.remote_presence(user) != Presence::Offline
    }

    fn change_presence(&self, user: UserId, change: PresenceChange) -> (Presence, Presence) {
        let (before, after) = self.shared.local.change_presence(user, change);
        if before != after {
            self.shared.publish_presence(user, after);
        }
        let remote = self.shared.remote_presence(user);
        (strongest(before, remote), strongest(after, remote))
    }

    fn presence(&self, user: UserId) -> Presence {
        strongest(
            self.shared.local.presence(user),
            self.shared.remote_presence(user),
        )
    }

    fn membership_changed(&self, conversation: ConversationId) {
        self.shared.send("roster", conversation.to_string());
    }

    fn on_membership_change(&self, hook: MembershipHook) {
        *self
            .shared
            .membership
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(hook);
    }

    fn problem(&self) -> Option<String> {
        match self.shared.client.connection_state() {
            async_nats::connection::State::Connected => None,
            state => Some(format!("NATS connection {state}")),
        }
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn node(&self) -> u64 {
        self.shared.node
    }

    fn live_nodes(&self) -> Vec<u64> {
        let remote = self
            .shared
            .remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::iter::once(self.shared.node)
            .chain(remote.keys().copied())
            .collect()
    }

    fn request(&self, node: u64, body: Bytes) -> NodeAnswer {
        let client = self.shared.client.clone();
        Box::pin(async move {
            client
                .request(format!("confer-rpc.{node}"), body)
                .await
                .map(|m| m.payload)
                .map_err(|e| e.to_string())
        })
    }

    fn notify_nodes(&self, body: Bytes) {
        self.shared.send("nodes", body);
    }

    fn on_node_message(&self, handlers: NodeHandlers) {
        *self
            .shared
            .handlers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handlers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_read_back_as_written() {
        let conversation = ConversationId::random();
        for head in [
            Head::Event { seq: 7, gate: None },
            Head::Event {
                seq: 0,
                gate: Some(Gate {
                    conversation,
                    kind: GateKind::Opened,
                }),
            },
            Head::To {
                connection: 5 << 32 | 9,
            },
            Head::Close { code: 4003 },
        ] {
            assert_eq!(Head::decode(&head.encode()), Some(head));
        }
        assert_eq!(Head::decode("x 1"), None);
        assert_eq!(Head::decode("e"), None);
    }

    #[test]
    fn online_anywhere_is_online() {
        assert_eq!(
            strongest(Presence::Away, Presence::Online),
            Presence::Online
        );
        assert_eq!(strongest(Presence::Offline, Presence::Away), Presence::Away);
        assert_eq!(
            strongest(Presence::Online, Presence::Offline),
            Presence::Online
        );
    }
}
