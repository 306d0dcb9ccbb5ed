//! Fan-out of user events to live connections, and their presence.
//!
//! The store's per-user event log is the truth; the bus only tells live
//! connections about events as they are committed, so that they need not
//! poll. Anything a connection misses it reads back from the log when it
//! resumes. [`InProcessBus`] serves one node; [`NatsBus`] (`nats.rs`)
//! serves the nodes of a cluster, each delivering to its own connections
//! through an [`InProcessBus`] of its own.
//!
//! Full-queue policy: every connection has a bounded queue. When a
//! publication finds it full, the bus drops that connection's sender; the
//! session sees its queue end, closes the WebSocket with code 4008
//! (`slow_consumer`), and the client resumes later from its last event
//! number. Nobody else waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ids::{ConversationId, UserId};

mod nats;

pub use nats::{HEARTBEAT, NODE_TIMEOUT, NatsBus};

/// Marks an event of a contextual conversation (one bound to a business
/// object): a session shows it only while its caller may see that object
/// (the `ctx` claim of the session's token, or a grant). Membership alone
/// does not vouch for it: one user's sessions may hold different tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// The conversation.
    pub conversation: ConversationId,
    /// What the event does to the session's access.
    pub kind: GateKind,
}

/// What an event of a contextual conversation does to access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateKind {
    /// An ordinary event: shown if the caller may see the object.
    Event,
    /// Access may have begun (a grant, a `conversation` event): check
    /// again, then show it if the caller may see the object.
    Opened,
    /// Access ended (`removed`): forget what was known, show it always.
    Closed,
}

/// One event for one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The user's event number; 0 for ephemeral events (typing, presence)
    /// that are not in the log and are not replayed.
    pub seq: u64,
    /// The event JSON (shared by every recipient).
    pub payload: Arc<str>,
    /// Set on the last delivery of a connection the server ends (its user
    /// was locked or its application unregistered): close code and reason.
    pub close: Option<(u16, &'static str)>,
    /// Set for events of contextual conversations; see [`Gate`].
    pub gate: Option<Gate>,
    /// Events may have been missed (the cluster's bus lost messages or
    /// its connection): the session reads its log from the store up to
    /// the head. Carries no event of its own.
    pub catch_up: bool,
}

impl Delivery {
    /// An event (or an ephemeral one, `seq` 0) for a connection.
    #[must_use]
    pub fn event(seq: u64, payload: Arc<str>, gate: Option<Gate>) -> Self {
        Self {
            seq,
            payload,
            close: None,
            gate,
            catch_up: false,
        }
    }
}

/// A live connection's subscription; dropping it unsubscribes.
pub struct Subscription {
    /// Deliveries in order; ends when the bus dropped the connection.
    pub rx: mpsc::Receiver<Delivery>,
    id: u64,
    /// Takes the connection off the bus (run once, when dropped).
    leave: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    /// A subscription over `rx` with connection id `id`; `leave` runs when
    /// it is dropped (for [`Bus`] implementations).
    #[must_use]
    pub fn new(
        rx: mpsc::Receiver<Delivery>,
        id: u64,
        leave: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self {
            rx,
            id,
            leave: Some(Box::new(leave)),
        }
    }

    /// The connection's id, unique on this node: events for one device
    /// (a call's media negotiation) are addressed to it.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(leave) = self.leave.take() {
            leave();
        }
    }
}

/// Presence of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Connected and active.
    Online,
    /// Connected, but the client says its person is away.
    Away,
    /// No connection.
    Offline,
}

/// What changes a user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    /// A connection of the user opened.
    Connected,
    /// A connection of the user closed.
    Disconnected,
    /// The client says its person is away (`true`) or back.
    Away(bool),
}

/// Where live connections meet: committed events go out to them, and the
/// presence they make is kept. Everything a session or a service needs of
/// other connections goes through this trait (held as `Arc<dyn Bus>`):
/// [`InProcessBus`] serves one node, [`NatsBus`] several (see
/// `docs/architecture.md`, "Node-local state").
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Subscribes a new connection of `user`; dropping the subscription
    /// unsubscribes it.
    fn subscribe(&self, user: UserId) -> Subscription;
    /// Tells `user`'s live connections about event `seq`.
    fn publish(&self, user: UserId, seq: u64, payload: Arc<str>) {
        self.publish_gated(user, seq, payload, None);
    }
    /// [`Bus::publish`] for an event that sessions show only while their
    /// caller may see a contextual conversation (`gate`).
    fn publish_gated(&self, user: UserId, seq: u64, payload: Arc<str>, gate: Option<Gate>);
    /// Sends an ephemeral event to one connection of `user` only (a
    /// device in a call); a full queue ends that connection, as in
    /// [`Bus::publish`].
    fn publish_to(&self, user: UserId, connection: u64, payload: Arc<str>);
    /// Ends every live connection of `user`: each gets a last delivery
    /// asking it to close with `code` and `reason`, then its queue ends.
    fn close_user(&self, user: UserId, code: u16, reason: &'static str);
    /// Whether `user` has a live connection.
    fn is_online(&self, user: UserId) -> bool;
    /// Applies `change` to `user`'s presence; returns it before and after.
    fn change_presence(&self, user: UserId, change: PresenceChange) -> (Presence, Presence);
    /// `user`'s presence.
    fn presence(&self, user: UserId) -> Presence;
    /// Tells the other nodes that a conversation's membership changed, so
    /// that they drop what they cache of it (nothing on one node).
    fn membership_changed(&self, _conversation: ConversationId) {}
    /// Runs `hook` for every membership change another node announces.
    fn on_membership_change(&self, _hook: MembershipHook) {}
    /// Why the bus cannot reach the other nodes now, if it cannot.
    fn problem(&self) -> Option<String> {
        None
    }
    /// Which implementation, for `/healthz`: `in-process` or `nats`.
    fn kind(&self) -> &'static str {
        "in-process"
    }
    /// This node's id in its cluster; 0 for a node on its own.
    fn node(&self) -> u64 {
        0
    }
    /// The nodes heard from lately, this one included.
    fn live_nodes(&self) -> Vec<u64> {
        vec![self.node()]
    }
    /// Asks node `node` (its [`NodeHandlers::request`]) and waits for the
    /// answer; an error when it does not answer.
    fn request(&self, node: u64, body: bytes::Bytes) -> NodeAnswer {
        let _ = (node, body);
        Box::pin(async { Err("no other node".to_owned()) })
    }
    /// Tells every other node (its [`NodeHandlers::notice`]); at most once.
    fn notify_nodes(&self, _body: bytes::Bytes) {}
    /// What this node does with requests and notices from the others.
    fn on_node_message(&self, _handlers: NodeHandlers) {}
}

/// What a node does when another announces a membership change.
pub type MembershipHook = Arc<dyn Fn(ConversationId) + Send + Sync>;

/// The answer of another node to [`Bus::request`].
pub type NodeAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<bytes::Bytes, String>> + Send>>;

/// Answers another node's request.
pub type RequestHandler = Arc<
    dyn Fn(
            bytes::Bytes,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bytes::Bytes> + Send>>
        + Send
        + Sync,
>;

/// What a node does with the messages other nodes address to it.
#[derive(Clone)]
pub struct NodeHandlers {
    /// Answers a request.
    pub request: RequestHandler,
    /// Takes a notice.
    pub notice: Arc<dyn Fn(bytes::Bytes) + Send + Sync>,
}

impl std::fmt::Debug for NodeHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeHandlers")
    }
}

/// A live connection: its id and the sending side of its queue.
type Connection = (u64, mpsc::Sender<Delivery>);

/// The bus of a single node.
#[derive(Debug)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: usize,
    next_id: AtomicU64,
    connections: Mutex<HashMap<UserId, Vec<Connection>>>,
    /// Connections counted by presence and the away flag, per user;
    /// offline when absent.
    presence: Mutex<HashMap<UserId, (usize, bool)>>,
}

impl InProcessBus {
    /// A bus whose connections each hold up to `queue` undelivered events.
    #[must_use]
    pub fn new(queue: usize) -> Arc<Self> {
        Self::numbering_from(queue, 1)
    }

    /// [`Self::new`] whose connection ids start at `first` (a node of a
    /// cluster gives its own a range no other node uses).
    #[must_use]
    pub fn numbering_from(queue: usize, first: u64) -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::new(Inner {
                queue: queue.max(1),
                next_id: AtomicU64::new(first),
                connections: Mutex::new(HashMap::new()),
                presence: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Every user with a connection here, with the presence they make here.
    #[must_use]
    pub fn local_presences(&self) -> Vec<(UserId, Presence)> {
        let map = self
            .inner
            .presence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .map(|(user, entry)| (*user, presence_of(Some(entry))))
            .collect()
    }

    /// Asks every connection to read its log from the store up to the
    /// head (events may have been missed); a full queue ends the
    /// connection, as in [`Bus::publish`].
    pub fn catch_up_all(&self) {
        let Ok(mut map) = self.inner.connections.lock() else {
            return;
        };
        map.retain(|_, list| {
            list.retain(|(_, tx)| {
                tx.try_send(Delivery {
                    catch_up: true,
                    ..Delivery::event(0, Arc::from(""), None)
                })
                .is_ok()
            });
            !list.is_empty()
        });
    }
}

impl Inner {
    fn unsubscribe(&self, user: UserId, id: u64) {
        if let Ok(mut map) = self.connections.lock()
            && let Some(list) = map.get_mut(&user)
        {
            list.retain(|(i, _)| *i != id);
            if list.is_empty() {
                map.remove(&user);
            }
        }
    }
}

fn presence_of(entry: Option<&(usize, bool)>) -> Presence {
    match entry {
        None => Presence::Offline,
        Some((_, true)) => Presence::Away,
        Some(_) => Presence::Online,
    }
}

impl Bus for InProcessBus {
    fn subscribe(&self, user: UserId) -> Subscription {
        let inner = &self.inner;
        let (tx, rx) = mpsc::channel(inner.queue);
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = inner.connections.lock() {
            map.entry(user).or_default().push((id, tx));
        }
        let inner = inner.clone();
        Subscription::new(rx, id, move || inner.unsubscribe(user, id))
    }

    fn publish_gated(&self, user: UserId, seq: u64, payload: Arc<str>, gate: Option<Gate>) {
        let Ok(mut map) = self.inner.connections.lock() else {
            return;
        };
        let Some(list) = map.get_mut(&user) else {
            return;
        };
        // A full or closed queue loses its sender: that connection ends.
        list.retain(|(_, tx)| {
            tx.try_send(Delivery::event(seq, payload.clone(), gate))
                .is_ok()
        });
        if list.is_empty() {
            map.remove(&user);
        }
    }

    fn publish_to(&self, user: UserId, connection: u64, payload: Arc<str>) {
        let Ok(mut map) = self.inner.connections.lock() else {
            return;
        };
        let Some(list) = map.get_mut(&user) else {
            return;
        };
        list.retain(|(id, tx)| {
            *id != connection
                || tx
                    .try_send(Delivery::event(0, payload.clone(), None))
                    .is_ok()
        });
        if list.is_empty() {
            map.remove(&user);
        }
    }

    fn close_user(&self, user: UserId, code: u16, reason: &'static str) {
        let Ok(mut map) = self.inner.connections.lock() else {
            return;
        };
        for (_, tx) in map.remove(&user).unwrap_or_default() {
            // A full queue ends the connection all the same (as slow).
            let _ = tx.try_send(Delivery {
                close: Some((code, reason)),
                ..Delivery::event(0, Arc::from(""), None)
            });
        }
    }

    fn is_online(&self, user: UserId) -> bool {
        self.inner
            .connections
            .lock()
            .map(|m| m.contains_key(&user))
            .unwrap_or(false)
    }

    fn change_presence(&self, user: UserId, change: PresenceChange) -> (Presence, Presence) {
        // A poisoned lock (a panic while it was held) still holds a
        // consistent map: every change below is a single step.
        let mut map = self
            .inner
            .presence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = presence_of(map.get(&user));
        match change {
            PresenceChange::Connected => map.entry(user).or_insert((0, false)).0 += 1,
            PresenceChange::Disconnected => {
                if let Some(entry) = map.get_mut(&user) {
                    entry.0 = entry.0.saturating_sub(1);
                    if entry.0 == 0 {
                        map.remove(&user);
                    }
                }
            }
            PresenceChange::Away(away) => {
                if let Some(entry) = map.get_mut(&user) {
                    entry.1 = away;
                }
            }
        }
        (before, presence_of(map.get(&user)))
    }

    fn presence(&self, user: UserId) -> Presence {
        let map = self
            .inner
            .presence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        presence_of(map.get(&user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_ends_only_that_connection() {
        let bus = InProcessBus::new(2);
        let user = UserId::random();
        let mut slow = bus.subscribe(user);
        let mut fast = bus.subscribe(user);
        for seq in 1..=2 {
            bus.publish(user, seq, Arc::from("{}"));
            assert_eq!(fast.rx.recv().await.unwrap().seq, seq);
        }
        bus.publish(user, 3, Arc::from("{}"));
        assert_eq!(fast.rx.recv().await.unwrap().seq, 3);
        // The slow one got 1 and 2, then its sender was dropped.
        assert_eq!(slow.rx.recv().await.unwrap().seq, 1);
        assert_eq!(slow.rx.recv().await.unwrap().seq, 2);
        assert!(slow.rx.recv().await.is_none());
        assert!(bus.is_online(user));
    }
}
