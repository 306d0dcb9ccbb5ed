//! Conversations and messages: who may read and post where, numbering,
//! idempotent sends, edits, read marks; every change becomes an event in
//! the log of each user who must see it, then goes to the [`Bus`].

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

use crate::bus::{Bus, Gate, GateKind, PresenceChange};
use crate::error::{Code, Error};
use crate::ids::{Clock, ConversationId, FileId, MessageId, UserId};
use crate::store::files::FileState;
use crate::store::messaging::{
    Action, Attachment, Author, Conversation, ConversationEntry, MessageBody, MessageStore,
    NewMessage, PreviewSize, StoredMessage,
};
use crate::store::{Application, FileStore, Store, User};

/// Longest text of a message, in bytes.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
/// Longest client id, title, key or context, in characters.
pub const MAX_SHORT_CHARS: usize = 256;
/// Most messages one history page returns.
pub const MAX_PAGE: u32 = 200;

/// Who is acting.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The application everything happens in.
    pub app: Application,
    /// A user, or the application itself (its bot).
    pub who: Who,
}

/// The acting party within an application.
#[derive(Debug, Clone)]
pub enum Who {
    /// A user, with the contexts (business objects) its token says it may see.
    User {
        /// The user.
        user: User,
        /// Object references from the token's `ctx` claim.
        contexts: Vec<String>,
    },
    /// The application's bot.
    App,
}

/// The participant id of an application's bot: the application's own id.
#[must_use]
pub fn bot_id(app: crate::ids::AppId) -> UserId {
    UserId(app.0)
}

impl Caller {
    /// Whose event log and membership this caller uses: the user, or the
    /// application's bot.
    #[must_use]
    pub fn participant(&self) -> UserId {
        match &self.who {
            Who::User { user, .. } => user.id,
            Who::App => bot_id(self.app.id),
        }
    }

    fn author(&self) -> Author {
        match &self.who {
            Who::User { user, .. } => Author::User(user.id),
            Who::App => Author::App,
        }
    }

    fn user_id(&self) -> Option<UserId> {
        match &self.who {
            Who::User { user, .. } => Some(user.id),
            Who::App => None,
        }
    }

    /// The objects the caller's token claims; `None` for the application,
    /// which sees every object.
    fn contexts(&self) -> Option<&[String]> {
        match &self.who {
            Who::User { contexts, .. } => Some(contexts),
            Who::App => None,
        }
    }
}

/// How a conversation is shown to clients.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConversationView {
    /// Id.
    pub id: ConversationId,
    /// Title.
    pub title: String,
    /// Group rather than one-to-one.
    pub is_group: bool,
    /// Shown in lists.
    pub displayed: bool,
    /// Every user of the application is a member.
    pub all_users: bool,
    /// Application-unique key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Bound business object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Number of its last message.
    pub last_seq: u64,
    /// RFC 3339 time of its last activity.
    pub last_activity: String,
    /// Unread messages, in a user's list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
}

impl ConversationView {
    /// The view of a stored conversation.
    #[must_use]
    pub fn of(c: &Conversation, unread: Option<u64>) -> Self {
        Self {
            id: c.id,
            title: c.title.clone(),
            is_group: c.is_group,
            displayed: c.displayed,
            all_users: c.all_users,
            key: c.app_key.clone(),
            context: c.context.clone(),
            last_seq: c.last_seq,
            last_activity: c.last_activity.to_rfc3339(),
            unread,
        }
    }
}

/// How a message is shown to clients.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageView {
    /// Id.
    pub id: MessageId,
    /// Conversation.
    pub conversation_id: ConversationId,
    /// Position in the conversation.
    pub seq: u64,
    /// Author.
    pub author: Author,
    /// The sender's idempotency key.
    pub client_id: String,
    /// Content.
    #[serde(flatten)]
    pub body: MessageBody,
    /// RFC 3339 send time.
    pub created_at: String,
    /// RFC 3339 time of the last edit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<String>,
    /// RFC 3339 time of deletion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
}

impl From<&StoredMessage> for MessageView {
    fn from(m: &StoredMessage) -> Self {
        Self {
            id: m.id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            author: m.author,
            client_id: m.client_id.clone(),
            body: m.body.clone(),
            created_at: m.created_at.to_rfc3339(),
            edited_at: m.edited_at.map(|t| t.to_rfc3339()),
            deleted_at: m.deleted_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// A new conversation.
#[derive(Debug, Clone, Default)]
pub struct NewConversation {
    /// Title.
    pub title: String,
    /// Members besides the caller.
    pub members: Vec<UserId>,
    /// Group flag (default: more than two people).
    pub is_group: Option<bool>,
    /// Displayed flag (default true).
    pub displayed: Option<bool>,
    /// Every user of the application is a member.
    pub all_users: bool,
    /// Application-unique key: a second create with it returns the first.
    /// Only the application (its bot) sets keys.
    pub key: Option<String>,
}

/// Most members `member_list` names.
pub const MAX_MEMBERS_LISTED: usize = 1000;

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
}

/// A file a sender attaches (`send`'s `attachments`).
#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRef {
    /// A ready file the sender uploaded to this conversation.
    pub file_id: FileId,
    /// Shown in the message rather than only listed (default true).
    #[serde(default = "shown")]
    pub displayed: bool,
}

fn shown() -> bool {
    true
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
        Self {
            store,
            users,
            bus,
            clock,
            typing: std::sync::Mutex::new(std::collections::HashMap::new()),
            files: None,
            file_garbage: Arc::new(tokio::sync::Notify::new()),
        }
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

    /// A connection of `user` opened (`true`) or closed (`false`); tells
    /// the people it shares conversations with when its presence changes.
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn connection(&self, caller: &Caller, opened: bool) -> Result<(), Error> {
        let Some(user) = caller.user_id() else {
            return Ok(());
        };
        let change = if opened {
            PresenceChange::Connected
        } else {
            PresenceChange::Disconnected
        };
        let (before, after) = self.bus.change_presence(user, change);
        if before != after {
            self.announce_presence(caller, user, after).await?;
        }
        Ok(())
    }

    /// The client says its person is away (or back).
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn set_away(&self, caller: &Caller, away: bool) -> Result<Presence, Error> {
        let user = caller
            .user_id()
            .ok_or_else(|| Error::InvalidRequest("presence is for users".to_owned()))?;
        let (before, after) = self.bus.change_presence(user, PresenceChange::Away(away));
        if before != after {
            self.announce_presence(caller, user, after).await?;
        }
        Ok(after)
    }

    /// Presence of users who share a conversation with the caller; others
    /// are left out.
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn presence_of(
        &self,
        caller: &Caller,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Presence)>, Error> {
        let known = self.contacts(caller).await?;
        Ok(users
            .iter()
            .filter(|u| known.contains(u))
            .map(|u| (*u, self.bus.presence(*u)))
            .collect())
    }

    /// A typing notice: sent to the other members now, not stored; at most
    /// one per user and conversation every [`TYPING_INTERVAL_MS`].
    ///
    /// # Errors
    /// As [`Self::readable`].
    pub async fn typing(&self, caller: &Caller, id: ConversationId) -> Result<bool, Error> {
        let conversation = self.readable(caller, id).await?;
        let me = caller.participant();
        let now = self.clock.now().0;
        {
            let mut map = self
                .typing
                .lock()
                .map_err(|_| Error::internal(anyhow::anyhow!("typing lock")))?;
            if map
                .get(&(me, id))
                .is_some_and(|at| now - at < TYPING_INTERVAL_MS)
            {
                return Ok(false);
            }
            if map.len() > 100_000 {
                map.retain(|_, at| now - *at < TYPING_INTERVAL_MS);
            }
            map.insert((me, id), now);
        }
        let payload: Arc<str> =
            Arc::from(json!({"kind": "typing", "conversation_id": id, "user_id": me}).to_string());
        let gate = gate(&conversation, GateKind::Event);
        for member in self.audience(&conversation).await? {
            if member != me {
                self.bus.publish_gated(member, 0, payload.clone(), gate);
            }
        }
        Ok(true)
    }

    /// The people whose presence the caller sees and who see the
    /// caller's: members of its conversations with at most
    /// [`PRESENCE_MAX_MEMBERS`] members. Channels and "all users"
    /// conversations carry no presence: with hundreds of members every
    /// connect and disconnect would fan out to all of them (a reconnect
    /// storm of 1000 channel members meant 500 000 presence frames).
    async fn contacts(&self, caller: &Caller) -> Result<BTreeSet<UserId>, Error> {
        let mut out = BTreeSet::new();
        for entry in self
            .store
            .conversations_of(
                caller.app.id,
                caller.participant(),
                caller.contexts(),
                None,
                MAX_PAGE,
            )
            .await?
        {
            if entry.conversation.all_users {
                continue;
            }
            if let Some(members) = self
                .store
                .members_up_to(entry.conversation.id, PRESENCE_MAX_MEMBERS)
                .await?
            {
                out.extend(members);
            }
        }
        Ok(out)
    }

    async fn announce_presence(
        &self,
        caller: &Caller,
        user: UserId,
        presence: Presence,
    ) -> Result<(), Error> {
        let payload: Arc<str> = Arc::from(
            json!({"kind": "presence", "user_id": user, "presence": presence}).to_string(),
        );
        for contact in self.contacts(caller).await? {
            if contact != user {
                self.bus.publish(contact, 0, payload.clone());
            }
        }
        Ok(())
    }

    /// Creates a non-contextual conversation; the caller is a member.
    /// Keys and "all users" conversations are the application's: a key
    /// names a conversation the bot finds again, so a user who could set
    /// one could take it first and be handed the bot's later messages.
    ///
    /// # Errors
    /// `invalid_request` for bad fields, unknown members or a one-to-one
    /// conversation of more than two; `forbidden` when a user sets a key
    /// or `all_users`.
    pub async fn create_conversation(
        &self,
        caller: &Caller,
        new: NewConversation,
    ) -> Result<Conversation, Error> {
        check_short("title", &new.title, true)?;
        if let Some(key) = &new.key {
            check_short("key", key, true)?;
        }
        if caller.user_id().is_some() {
            if new.key.is_some() {
                return Err(Error::Forbidden(
                    "only the application sets conversation keys",
                ));
            }
            if new.all_users {
                return Err(Error::Forbidden(
                    "only the application creates conversations of all users",
                ));
            }
        }
        let mut members: BTreeSet<UserId> = new.members.iter().copied().collect();
        for m in &members {
            if self.users.user(caller.app.id, *m).await?.is_none() {
                return Err(Error::InvalidRequest(format!(
                    "members: no user {m} in this application"
                )));
            }
        }
        members.insert(caller.participant());
        if new.is_group == Some(false) && (members.len() > 2 || new.all_users) {
            return Err(Error::InvalidRequest(
                "is_group: a one-to-one conversation has at most two members".to_owned(),
            ));
        }
        let now = self.clock.now();
        let conversation = Conversation {
            id: ConversationId::random(),
            app_id: caller.app.id,
            title: new.title,
            is_group: new.is_group.unwrap_or(members.len() > 2 || new.all_users),
            displayed: new.displayed.unwrap_or(true),
            all_users: new.all_users,
            app_key: new.key,
            context: None,
            last_seq: 0,
            last_activity: now,
            created_at: now,
        };
        let members: Vec<UserId> = members.into_iter().collect();
        let (conversation, created) = self
            .store
            .create_conversation(&conversation, &members)
            .await?;
        if created {
            self.notify_conversation(&conversation, &members).await?;
        }
        Ok(conversation)
    }

    /// The conversation bound to a business object, created on first use
    /// (exactly one per application and context). A user must be allowed
    /// to see the object; it becomes a member so that it receives events.
    ///
    /// # Errors
    /// `forbidden` when the user's token does not list the context.
    pub async fn open_context(
        &self,
        caller: &Caller,
        context: &str,
        title: &str,
    ) -> Result<Conversation, Error> {
        check_short("context", context, true)?;
        check_short("title", title, false)?;
        if !self.may_see(caller, context).await? {
            return Err(Error::Forbidden(
                "the application does not let this user see that object",
            ));
        }
        let now = self.clock.now();
        let conversation = Conversation {
            id: ConversationId::random(),
            app_id: caller.app.id,
            title: if title.is_empty() {
                context.to_owned()
            } else {
                title.to_owned()
            },
            is_group: true,
            displayed: true,
            all_users: false,
            app_key: None,
            context: Some(context.to_owned()),
            last_seq: 0,
            last_activity: now,
            created_at: now,
        };
        let members: Vec<UserId> = caller.user_id().into_iter().collect();
        let (conversation, created) = self
            .store
            .create_conversation(&conversation, &members)
            .await?;
        if !created && let Some(user) = caller.user_id() {
            self.join_context(conversation.id, user).await?;
        }
        Ok(conversation)
    }

    /// Makes a user who may see a contextual conversation's object one of
    /// its members (so that events reach its log), writing only when it
    /// is not one yet.
    async fn join_context(&self, id: ConversationId, user: UserId) -> Result<(), Error> {
        if !self.store.is_member(id, user).await? {
            self.store
                .add_members(id, &[user], self.clock.now())
                .await?;
        }
        Ok(())
    }

    /// Whether a session of `caller` shows the events of conversation
    /// `id`: always, unless it is contextual and the caller may not see its
    /// object now (membership is checked when events are written).
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn shows(&self, caller: &Caller, id: ConversationId) -> Result<bool, Error> {
        if matches!(caller.who, Who::App) {
            return Ok(true);
        }
        match self.store.conversation(caller.app.id, id).await? {
            None => Ok(false),
            Some(c) => match &c.context {
                None => Ok(true),
                Some(context) => self.may_see(caller, context).await,
            },
        }
    }

    /// A conversation the caller may read.
    ///
    /// # Errors
    /// `not_found` outside the caller's application; `forbidden` when the
    /// caller is not a member and may not see its object.
    pub async fn readable(
        &self,
        caller: &Caller,
        id: ConversationId,
    ) -> Result<Conversation, Error> {
        let conversation = self
            .store
            .conversation(caller.app.id, id)
            .await?
            .ok_or(Error::NotFound("conversation"))?;
        match &caller.who {
            Who::App => Ok(conversation),
            Who::User { user, .. } => {
                // A contextual conversation is open to whoever may see its
                // object, now: a withdrawn grant closes it at once.
                if let Some(context) = &conversation.context {
                    if self.may_see(caller, context).await? {
                        self.join_context(id, user.id).await?;
                        return Ok(conversation);
                    }
                    return Err(Error::Forbidden(
                        "the application does not let this user see that object",
                    ));
                }
                if conversation.all_users || self.store.is_member(id, user.id).await? {
                    return Ok(conversation);
                }
                Err(Error::Forbidden("not a member of this conversation"))
            }
        }
    }

    /// Who is in a conversation the caller may read, with names and
    /// presence (presence only where conversations carry it), at most
    /// `MAX_MEMBERS_LISTED`; `true` when there were more.
    ///
    /// # Errors
    /// As [`Self::readable`].
    pub async fn member_list(
        &self,
        caller: &Caller,
        id: ConversationId,
    ) -> Result<(Vec<(UserId, String, Option<Presence>)>, bool), Error> {
        let conversation = self.readable(caller, id).await?;
        let everyone = self.audience(&conversation).await?;
        let with_presence = everyone.len() <= PRESENCE_MAX_MEMBERS;
        let truncated = everyone.len() > MAX_MEMBERS_LISTED;
        let listed: Vec<UserId> = everyone.into_iter().take(MAX_MEMBERS_LISTED).collect();
        let users = self.users.users(caller.app.id, &listed).await?;
        let out = users
            .into_iter()
            .map(|u| {
                let presence = with_presence.then(|| self.bus.presence(u.id));
                (u.id, u.name, presence)
            })
            .collect();
        Ok((out, truncated))
    }

    /// Everyone who sees the events of a conversation the caller may read.
    ///
    /// # Errors
    /// As [`Self::readable`].
    pub async fn members_of(
        &self,
        caller: &Caller,
        id: ConversationId,
    ) -> Result<Vec<UserId>, Error> {
        let conversation = self.readable(caller, id).await?;
        self.audience(&conversation).await
    }

    /// Posts a message. Retrying with the same `client_id` returns the
    /// first message and writes nothing. The message is committed before
    /// this returns.
    ///
    /// # Errors
    /// `invalid_request`, `forbidden`, `not_found`.
    pub async fn send(
        &self,
        caller: &Caller,
        id: ConversationId,
        client_id: &str,
        body: MessageBody,
    ) -> Result<StoredMessage, Error> {
        self.send_with_files(caller, id, client_id, body, &[]).await
    }

    /// [`Self::send`] with files attached: each must be a ready file the
    /// caller uploaded to this conversation and attached to nothing yet.
    ///
    /// # Errors
    /// As [`Self::send`]; `attachment_unavailable` (409).
    pub async fn send_with_files(
        &self,
        caller: &Caller,
        id: ConversationId,
        client_id: &str,
        mut body: MessageBody,
        attachments: &[AttachmentRef],
    ) -> Result<StoredMessage, Error> {
        check_short("client_id", client_id, true)?;
        let conversation = self.readable(caller, id).await?;
        // A retry whose acknowledgement was lost gets the first message
        // before its files are checked: they are attached to it by now.
        // (Without files the writer's own check is enough.)
        if !attachments.is_empty()
            && let Some(first) = self
                .store
                .message_by_client_id(id, caller.author(), client_id)
                .await?
        {
            return Ok(first);
        }
        body.attachments = self.attachments(caller, id, attachments).await?;
        check_body(&body)?;
        let members = self.audience(&conversation).await?;
        let mut notify: Vec<UserId> = match &body.recipients {
            Some(recipients) => {
                if let Some(bad) = recipients.iter().find(|r| !members.contains(r)) {
                    return Err(Error::InvalidRequest(format!(
                        "recipients: {bad} is not a member"
                    )));
                }
                recipients.clone()
            }
            None => members,
        };
        if let Some(me) = caller.user_id()
            && !notify.contains(&me)
        {
            notify.push(me);
        }
        let new = NewMessage {
            conversation_id: id,
            id: MessageId::random(),
            author: caller.author(),
            client_id: client_id.to_owned(),
            body,
        };
        let event: crate::store::messaging::EventFn = Arc::new(|m: &StoredMessage| {
            json!({"kind": "message", "message": MessageView::from(m)}).to_string()
        });
        let posted = self
            .store
            .post(&new, &notify, event, self.clock.now())
            .await?;
        if let Some(payload) = posted.event {
            self.publish(posted.seqs, &payload, gate(&conversation, GateKind::Event));
        }
        Ok(posted.message)
    }

    /// What `refs` attach, as the message will show it.
    async fn attachments(
        &self,
        caller: &Caller,
        conversation: ConversationId,
        refs: &[AttachmentRef],
    ) -> Result<Vec<Attachment>, Error> {
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        if refs.len() > MAX_ATTACHMENTS {
            return Err(Error::InvalidRequest(format!(
                "attachments: at most {MAX_ATTACHMENTS} files per message"
            )));
        }
        let unavailable = |why: String| Error::Conflict(Code::AttachmentUnavailable, why);
        let files = self
            .files
            .as_ref()
            .ok_or_else(|| unavailable("this server keeps no files".to_owned()))?;
        let mut out: Vec<Attachment> = Vec::with_capacity(refs.len());
        for r in refs {
            if out.iter().any(|a| a.file_id == r.file_id) {
                return Err(Error::InvalidRequest(format!(
                    "attachments: file {} is listed twice",
                    r.file_id
                )));
            }
            let file = files
                .file(r.file_id)
                .await?
                .filter(|f| f.app_id == caller.app.id && f.uploader == caller.participant())
                .ok_or_else(|| {
                    unavailable(format!("file {} is not one you uploaded", r.file_id))
                })?;
            if file.conversation_id != conversation {
                return Err(unavailable(format!(
                    "file {} was uploaded to another conversation",
                    r.file_id
                )));
            }
            if file.message_id.is_some() {
                return Err(unavailable(format!(
                    "file {} is already attached to a message",
                    r.file_id
                )));
            }
            let (FileState::Ready, Some(sha256)) = (file.state, file.sha256) else {
                return Err(unavailable(format!(
                    "file {} is not ready: complete its upload first",
                    r.file_id
                )));
            };
            out.push(Attachment {
                file_id: file.id,
                name: file.name,
                content_type: file.content_type,
                size: file.size,
                sha256,
                displayed: r.displayed,
                preview: file
                    .preview
                    .map(|(width, height)| PreviewSize { width, height }),
            });
        }
        Ok(out)
    }

    /// Edits (new text) or deletes (`text` = `None`) a message. Only its
    /// author edits; its author or the application deletes.
    ///
    /// # Errors
    /// `forbidden` for someone else's message; `not_found`.
    pub async fn change(
        &self,
        caller: &Caller,
        id: ConversationId,
        message: MessageId,
        text: Option<String>,
    ) -> Result<StoredMessage, Error> {
        let conversation = self.readable(caller, id).await?;
        let mut stored = self
            .store
            .message(id, message)
            .await?
            .ok_or(Error::NotFound("message"))?;
        let own = stored.author == caller.author();
        let moderating = matches!(caller.who, Who::App) && text.is_none();
        if !own && !moderating {
            return Err(Error::Forbidden("only the author may change this message"));
        }
        if stored.deleted_at.is_some() {
            return Err(Error::InvalidRequest("message: already deleted".to_owned()));
        }
        let now = self.clock.now();
        let attached = stored.body.attachments.clone();
        let kind = match text {
            Some(text) => {
                let body = MessageBody {
                    text,
                    ..stored.body.clone()
                };
                check_body(&body)?;
                stored.body = body;
                stored.edited_at = Some(now);
                "message_edited"
            }
            None => {
                stored.body = MessageBody::deleted();
                stored.deleted_at = Some(now);
                "message_deleted"
            }
        };
        let notify = match &stored.body.recipients {
            Some(r) => r.clone(),
            None => self.audience(&conversation).await?,
        };
        let payload = json!({"kind": kind, "message": MessageView::from(&stored)}).to_string();
        let had_files = kind == "message_deleted" && !attached.is_empty();
        let seqs = self
            .store
            .update_message(&stored, &notify, &payload, now)
            .await?;
        if had_files {
            self.file_garbage.notify_one();
        }
        self.publish(
            seqs,
            &Arc::from(payload),
            gate(&conversation, GateKind::Event),
        );
        Ok(stored)
    }

    /// Adds members to a non-contextual group conversation; any member (or
    /// the application) may. New members get a `conversation` event. A
    /// one-to-one conversation never gets new ones: a member who left and
    /// a newcomer would otherwise share its history.
    ///
    /// # Errors
    /// `invalid_request` for unknown users or a contextual conversation;
    /// `not_a_group` (409) for a one-to-one conversation.
    pub async fn add_members(
        &self,
        caller: &Caller,
        id: ConversationId,
        users: &[UserId],
    ) -> Result<Conversation, Error> {
        let conversation = self.readable(caller, id).await?;
        if conversation.context.is_some() {
            return Err(Error::InvalidRequest(
                "members of a contextual conversation are whoever may see its object".to_owned(),
            ));
        }
        for u in users {
            if self.users.user(caller.app.id, *u).await?.is_none() {
                return Err(Error::InvalidRequest(format!(
                    "members: no user {u} in this application"
                )));
            }
        }
        if !conversation.is_group {
            return Err(Error::Conflict(
                Code::NotAGroup,
                "a one-to-one conversation cannot get more members: create a group".to_owned(),
            ));
        }
        let existing = self.store.members(id).await?;
        let new: Vec<UserId> = users
            .iter()
            .filter(|u| !existing.contains(u))
            .copied()
            .collect();
        self.store.add_members(id, &new, self.clock.now()).await?;
        self.notify_conversation(&conversation, &new).await?;
        Ok(conversation)
    }

    /// Removes a member: a user may leave; the application may remove
    /// anyone. The removed user gets a `removed` event.
    ///
    /// # Errors
    /// `forbidden` when a user tries to remove someone else.
    pub async fn remove_member(
        &self,
        caller: &Caller,
        id: ConversationId,
        user: UserId,
    ) -> Result<(), Error> {
        let conversation = self.readable(caller, id).await?;
        if caller.user_id().is_some_and(|me| me != user) {
            return Err(Error::Forbidden("users may only remove themselves"));
        }
        if !self.store.remove_member(id, user).await? {
            return Err(Error::NotFound("member"));
        }
        self.emit(
            &[user],
            json!({"kind": "removed", "conversation_id": id}).to_string(),
            gate(&conversation, GateKind::Closed),
        )
        .await
    }

    /// The application grants (or withdraws) a user access to a business
    /// object, as the token's `ctx` claim does. The grant and the user's
    /// membership of the object's conversation change in one transaction;
    /// the user then gets a `conversation` event (granted) or a `removed`
    /// one (withdrawn), and its sessions without the object in their
    /// token's claim stop showing the conversation's events at once. A
    /// withdrawal returns the conversation the user left.
    ///
    /// # Errors
    /// `not_found` for a user of another application; `invalid_request`.
    pub async fn set_grant(
        &self,
        app: &Application,
        user: UserId,
        context: &str,
        granted: bool,
    ) -> Result<Option<ConversationId>, Error> {
        check_short("context", context, true)?;
        if self.users.user(app.id, user).await?.is_none() {
            return Err(Error::NotFound("user"));
        }
        let change = self
            .store
            .set_grant(app.id, user, context, granted, self.clock.now())
            .await?;
        let Some(id) = change.conversation.filter(|_| change.changed) else {
            return Ok(None);
        };
        if granted {
            if let Some(conversation) = self.store.conversation(app.id, id).await? {
                let payload = json!({"kind": "conversation", "conversation": ConversationView::of(&conversation, None)});
                self.emit(
                    &[user],
                    payload.to_string(),
                    gate(&conversation, GateKind::Opened),
                )
                .await?;
            }
            return Ok(None);
        }
        self.emit(
            &[user],
            json!({"kind": "removed", "conversation_id": id}).to_string(),
            Some(Gate {
                conversation: id,
                kind: GateKind::Closed,
            }),
        )
        .await?;
        Ok(Some(id))
    }

    async fn may_see(&self, caller: &Caller, context: &str) -> Result<bool, Error> {
        match &caller.who {
            Who::App => Ok(true),
            Who::User { user, contexts } => Ok(contexts.iter().any(|c| c == context)
                || self
                    .store
                    .has_grant(caller.app.id, user.id, context)
                    .await?),
        }
    }

    /// A user clicks an action of a bot's message: the click goes to the
    /// application's bot as an `action` event.
    ///
    /// # Errors
    /// `invalid_request` when the message has no such action or was not
    /// written by the application.
    pub async fn click(
        &self,
        caller: &Caller,
        id: ConversationId,
        message: MessageId,
        value: &str,
    ) -> Result<(), Error> {
        self.readable(caller, id).await?;
        let stored = self
            .store
            .message(id, message)
            .await?
            .ok_or(Error::NotFound("message"))?;
        if stored.author != Author::App || !stored.body.actions.iter().any(|a| a.value == value) {
            return Err(Error::InvalidRequest(
                "value: the message has no such action".to_owned(),
            ));
        }
        let payload = json!({
            "kind": "action",
            "conversation_id": id,
            "message_id": message,
            "value": value,
            "user_id": caller.user_id(),
        })
        .to_string();
        self.emit(&[bot_id(caller.app.id)], payload, None).await
    }

    /// A page of history the caller may see (messages addressed to others
    /// are left out).
    ///
    /// # Errors
    /// As [`Self::readable`]; `invalid_request` for a `limit` outside 1 to
    /// [`MAX_PAGE`].
    pub async fn history(
        &self,
        caller: &Caller,
        id: ConversationId,
        after: Option<u64>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, Error> {
        check_page(limit)?;
        self.readable(caller, id).await?;
        let messages = self.store.history(id, after, before, limit).await?;
        Ok(messages
            .into_iter()
            .filter(|m| visible_to(m, caller))
            .collect())
    }

    /// Moves the caller's read mark.
    ///
    /// # Errors
    /// As [`Self::readable`]; `invalid_request` for the application.
    pub async fn mark_read(
        &self,
        caller: &Caller,
        id: ConversationId,
        seq: u64,
    ) -> Result<u64, Error> {
        let conversation = self.readable(caller, id).await?;
        let user = caller
            .user_id()
            .ok_or_else(|| Error::InvalidRequest("read marks are for users".to_owned()))?;
        let mark = self
            .store
            .mark_read(id, user, seq.min(conversation.last_seq))
            .await?;
        self.emit(
            &[user],
            json!({"kind": "read", "conversation_id": id, "seq": mark}).to_string(),
            gate(&conversation, GateKind::Event),
        )
        .await?;
        Ok(mark)
    }

    /// Full-text search over the messages the caller may read (Cyrillic
    /// and Latin, case-insensitive, word prefixes).
    ///
    /// # Errors
    /// `invalid_request` for an empty or too long query, or a `limit`
    /// outside 1 to [`MAX_PAGE`].
    pub async fn search(
        &self,
        caller: &Caller,
        query: &str,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, Error> {
        if query.trim().is_empty() || query.chars().count() > MAX_SHORT_CHARS {
            return Err(Error::InvalidRequest(format!(
                "query: 1 to {MAX_SHORT_CHARS} characters"
            )));
        }
        // The full-text index's query parser ends a string at U+0000.
        if query.contains('\0') {
            return Err(Error::InvalidRequest(
                "query: must not contain U+0000".to_owned(),
            ));
        }
        check_page(limit)?;
        let found = self
            .store
            .search(
                caller.app.id,
                caller.participant(),
                caller.contexts(),
                query,
                limit,
            )
            .await?;
        Ok(found
            .into_iter()
            .filter(|m| visible_to(m, caller))
            .collect())
    }

    /// The caller's conversations (the bot's, for the application) with
    /// unread counts, newest first; `before` continues a page.
    ///
    /// # Errors
    /// `invalid_request` for a `limit` outside 1 to [`MAX_PAGE`];
    /// `internal` on store failure.
    pub async fn list(
        &self,
        caller: &Caller,
        before: Option<(crate::ids::Timestamp, ConversationId)>,
        limit: u32,
    ) -> Result<Vec<ConversationEntry>, Error> {
        check_page(limit)?;
        Ok(self
            .store
            .conversations_of(
                caller.app.id,
                caller.participant(),
                caller.contexts(),
                before,
                limit,
            )
            .await?)
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
        let seqs = self
            .store
            .append_events(users, &payload, self.clock.now())
            .await?;
        self.publish(seqs, &Arc::from(payload), gate);
        Ok(())
    }

    /// Tells each user's live connections about its event number `seq`
    /// (one shared payload).
    fn publish(&self, seqs: Vec<(UserId, u64)>, payload: &Arc<str>, gate: Option<Gate>) {
        for (user, seq) in seqs {
            self.bus.publish_gated(user, seq, payload.clone(), gate);
        }
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
        let payload = json!({"kind": "conversation", "conversation": ConversationView::of(conversation, None)});
        self.emit(
            members,
            payload.to_string(),
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
