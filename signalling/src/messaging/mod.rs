//! Conversations and messages: who may read and post where, numbering,
//! idempotent sends, edits, read marks; every change becomes an event in
//! the log of each user who must see it, then goes to the [`Bus`].

use std::sync::Arc;

use crate::bus::{Bus, Gate, GateKind};
use crate::error::Error;
use crate::ids::{Clock, ConversationId, UserId};
use crate::proto::{Ephemeral, Event};
use crate::store::messaging::{
    Action, Author, Conversation, MessageBody, MessageStore, OnCommit, StoredMessage,
};
use crate::store::{FileStore, Store};

pub(crate) mod caller;
mod conversations;
mod copies;
mod marks;
mod messages;
mod presence;
mod rosters;
mod threads;
mod views;

pub use caller::{Caller, Who, bot_id};
pub use copies::QUOTE_CHARS;
pub use marks::{MAX_EMOJI_BYTES, MAX_PINS, MAX_REACTIONS, MarkOutcome, REACTION_USERS_LISTED};
pub use rosters::{ROSTERS_MAX, Roster, Rosters};
pub use threads::{MAX_MENTIONS, MAX_THREADS_LISTED};
pub use views::{
    AttachmentRef, ConversationView, MessageView, NewConversation, ReactionView, ThreadView,
};

/// Longest text of a message, in bytes.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;

/// Longest client id, title, key or context, in characters.
pub const MAX_SHORT_CHARS: usize = 256;

/// Most messages one history page returns.
pub const MAX_PAGE: u32 = 200;

/// Most members `member_list` names.
pub const MAX_MEMBERS_LISTED: usize = 1000;

/// How long a user whose last connection closed still shows as it was to
/// its contacts before they are told it is offline.
pub const OFFLINE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A user not yet told offline: the [`Messaging::disconnected`] call's
/// token, the presence its contacts last saw, and the rosters' generation
/// then (who its contacts were).
type GoingOffline = (u64, Presence, u64);

/// Conversations with more members than this carry no presence.
pub const PRESENCE_MAX_MEMBERS: usize = 50;

/// Shortest time between two typing notices of one user in one
/// conversation; more frequent ones are dropped.
pub const TYPING_INTERVAL_MS: i64 = 2_000;

pub use crate::bus::Presence;

/// The messaging service.
#[derive(Debug)]
pub struct Messaging {
    store: Arc<dyn MessageStore>,
    users: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    /// Last typing notice per (user, conversation), for rate limiting.
    typing: std::sync::Mutex<std::collections::HashMap<(UserId, ConversationId), i64>>,
    /// Files, for attachments; without it a message cannot carry any.
    files: Option<Arc<dyn FileStore>>,
    /// Woken when a deleted message leaves files to delete.
    file_garbage: Arc<tokio::sync::Notify>,
    /// Who is in which conversation, for the send path (also dropped when
    /// another node of a cluster announces a change).
    rosters: Arc<Rosters>,
    /// Users whose last connection closed, not yet told offline.
    going_offline: std::sync::Mutex<std::collections::HashMap<UserId, GoingOffline>>,
    /// Tokens of [`Self::going_offline`].
    offline_tokens: std::sync::atomic::AtomicU64,
    /// Which applications' events also go to their webhook outbox.
    taps: Arc<crate::outbox::Taps>,
}

/// Most files one message carries.
pub const MAX_ATTACHMENTS: usize = 20;

impl Messaging {
    /// A service over these backends.
    #[must_use]
    pub fn new(
        store: Arc<dyn MessageStore>,
        users: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let rosters = Arc::new(Rosters::default());
        let dropped = rosters.clone();
        bus.on_membership_change(Arc::new(move |id| dropped.changed(id)));
        Self {
            store,
            users,
            bus,
            clock,
            typing: std::sync::Mutex::new(std::collections::HashMap::new()),
            files: None,
            file_garbage: Arc::new(tokio::sync::Notify::new()),
            rosters,
            going_offline: std::sync::Mutex::default(),
            offline_tokens: std::sync::atomic::AtomicU64::new(0),
            taps: Arc::default(),
        }
    }

    /// A conversation's membership changed: what this node caches of it
    /// goes, and the other nodes of a cluster are told.
    fn membership_changed(&self, id: ConversationId) {
        self.rosters.changed(id);
        self.bus.membership_changed(id);
    }

    /// Lets messages carry files from `files`; `garbage` is woken when a
    /// deleted message leaves files whose bytes must go.
    #[must_use]
    pub fn with_files(
        mut self,
        files: Arc<dyn FileStore>,
        garbage: Arc<tokio::sync::Notify>,
    ) -> Self {
        self.files = Some(files);
        self.file_garbage = garbage;
        self
    }

    /// Whether the caller's credentials still hold as far as the store
    /// knows: its application is registered, its secret (for the bot) not
    /// rotated since it was checked, and (for a user) it is not locked. A
    /// failed read says no: the client connects again.
    pub async fn still_admitted(&self, caller: &Caller) -> bool {
        let app = match self.users.application(caller.app.id).await {
            Err(_) => return false,
            Ok(Some(app)) if app.unregistered_at.is_some() => return false,
            Ok(app) => app,
        };
        match &caller.who {
            Who::User { user, .. } => match self.users.user(caller.app.id, user.id).await {
                Ok(Some(u)) => !u.locked,
                Ok(None) => true,
                Err(_) => false,
            },
            // The key is derived from the secret: a rotation changes it.
            Who::App => app.is_none_or(|app| app.token_key == caller.app.token_key),
        }
    }

    /// Which applications' events also go to their webhook outbox.
    #[must_use]
    pub fn taps(&self) -> &Arc<crate::outbox::Taps> {
        &self.taps
    }

    /// Adds the application's webhook sink to `notify` when one of its
    /// endpoints wants `kinds`; says whether it did.
    async fn tap(
        &self,
        app: crate::ids::AppId,
        kinds: &[crate::outbox::Kind],
        notify: &mut Vec<UserId>,
    ) -> bool {
        match self.taps.sink(self.users.as_ref(), app, kinds).await {
            Some(sink) => {
                notify.push(sink);
                true
            }
            None => false,
        }
    }

    /// Writes a user's first provisioning to the application's webhook
    /// outbox, when an endpoint wants it. Not in the user's transaction:
    /// a crash in between loses the event, not the user.
    ///
    /// # Errors
    /// On store failure.
    pub async fn user_provisioned(&self, user: &crate::store::User) -> Result<(), Error> {
        let mut sink = Vec::new();
        if self
            .tap(user.app_id, &[crate::outbox::Kind::User], &mut sink)
            .await
        {
            let payload = serde_json::json!({
                "kind": "user_provisioned",
                "user": {
                    "id": user.id,
                    "external_id": user.external_id,
                    "name": user.name,
                    "email": user.email,
                },
            })
            .to_string();
            self.store
                .append_events(&sink, &payload, self.clock.now())
                .await?;
            self.taps.written();
        }
        Ok(())
    }

    /// The tenancy store (applications and users).
    #[must_use]
    pub fn users(&self) -> &Arc<dyn Store> {
        &self.users
    }

    /// The messaging store (sessions replay events from it).
    #[must_use]
    pub fn store(&self) -> &Arc<dyn MessageStore> {
        &self.store
    }

    /// Appends one event to the logs of `users`, then tells their live
    /// connections.
    async fn emit(
        &self,
        users: &[UserId],
        payload: String,
        gate: Option<Gate>,
    ) -> Result<(), Error> {
        self.store
            .append_events_then(users, &payload, self.clock.now(), self.deliver(gate))
            .await?;
        Ok(())
    }

    /// What tells each notified user's live connections about its event
    /// number (one shared payload), run by the store once the event is
    /// committed, in commit order.
    fn deliver(&self, gate: Option<Gate>) -> OnCommit {
        let bus = self.bus.clone();
        Box::new(move |seqs, payload| {
            for (user, seq) in seqs {
                bus.publish_gated(*user, *seq, payload.clone(), gate);
            }
        })
    }

    async fn audience(&self, conversation: &Conversation) -> Result<Vec<UserId>, Error> {
        Ok(if conversation.all_users {
            self.store.app_users(conversation.app_id).await?
        } else {
            self.store.members(conversation.id).await?
        })
    }

    async fn notify_conversation(
        &self,
        conversation: &Conversation,
        members: &[UserId],
    ) -> Result<(), Error> {
        let payload = Event::Conversation {
            conversation: ConversationView::of(conversation, None),
        };
        self.emit(
            members,
            payload.render(),
            gate(conversation, GateKind::Opened),
        )
        .await
    }
}

/// The gate of an event of `conversation`: none unless it is contextual.
fn gate(conversation: &Conversation, kind: GateKind) -> Option<Gate> {
    conversation.context.as_ref().map(|_| Gate {
        conversation: conversation.id,
        kind,
    })
}

/// Whether `caller` sees `m` (a message with recipients is for them and
/// its author only).
pub(crate) fn visible_to(m: &StoredMessage, caller: &Caller) -> bool {
    match (&m.body.recipients, caller.user_id()) {
        (Some(recipients), Some(me)) => recipients.contains(&me) || m.author == Author::User(me),
        _ => true,
    }
}

/// A page size: 1 to [`MAX_PAGE`], refused (not clamped) outside, as the
/// protocol's schemas say.
fn check_page(limit: u32) -> Result<(), Error> {
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!("limit: 1 to {MAX_PAGE}")))
    }
}

fn check_short(field: &str, value: &str, required: bool) -> Result<(), Error> {
    if required && value.trim().is_empty() {
        return Err(Error::InvalidRequest(format!("{field}: must not be empty")));
    }
    if value.chars().count() > MAX_SHORT_CHARS {
        return Err(Error::InvalidRequest(format!(
            "{field}: longer than {MAX_SHORT_CHARS} characters"
        )));
    }
    Ok(())
}

fn check_body(body: &MessageBody) -> Result<(), Error> {
    if body.text.len() > MAX_TEXT_BYTES {
        return Err(Error::InvalidRequest(format!(
            "text: longer than {MAX_TEXT_BYTES} bytes"
        )));
    }
    if body.text.trim().is_empty()
        && body.data.is_none()
        && body.actions.is_empty()
        && body.attachments.is_empty()
    {
        return Err(Error::InvalidRequest(
            "a message needs text, data, actions or attachments".to_owned(),
        ));
    }
    if body
        .actions
        .iter()
        .any(|a: &Action| a.value.is_empty() || a.presentation.is_empty())
    {
        return Err(Error::InvalidRequest(
            "actions: value and presentation must not be empty".to_owned(),
        ));
    }
    Ok(())
}
