//! What members add to messages besides replies: reactions and pins.
//!
//! Each is a row of its own beside the message (never a rewrite of its
//! body, so an edit and a reaction at the same moment both land), changed
//! with its event in one transaction by the store's writer, which also
//! counts what the change left: the event says how many members have that
//! reaction now, or how many messages are pinned. Changing a mark to what
//! it already is writes nothing and sends no event.

use crate::bus::GateKind;
use crate::error::{Code, Error};
use crate::ids::{ConversationId, MessageId};
use crate::store::marks::ConversationSettings;
use crate::store::messaging::{Author, Mark, MarkChange, Marked, StoredMessage};

use super::*;

/// Most distinct reactions on one message.
pub const MAX_REACTIONS: u32 = 20;

/// Most pinned messages in one conversation.
pub const MAX_PINS: u32 = 50;

/// Longest reaction, in bytes (an emoji with modifiers, or a short name).
pub const MAX_EMOJI_BYTES: usize = 64;

/// Most users a message's view lists for one reaction (the count is
/// exact).
pub const REACTION_USERS_LISTED: usize = 100;

/// What a reaction or pin request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkOutcome {
    /// It changed (false: it was already so).
    pub changed: bool,
    /// Users with the reaction on the message now, or pinned messages in
    /// the conversation now; `None` when nothing changed.
    pub count: Option<u64>,
}

impl Messaging {
    /// Adds (`on`) or takes back the caller's reaction `emoji` to a
    /// message it can see.
    ///
    /// # Errors
    /// `invalid_request` for an empty, long or spaced emoji or a deleted
    /// message; `limit_reached` past [`MAX_REACTIONS`] distinct ones; as
    /// [`Self::readable`]; `not_found` for a message the caller cannot
    /// see.
    pub async fn react(
        &self,
        caller: &Caller,
        id: ConversationId,
        message: MessageId,
        emoji: &str,
        on: bool,
    ) -> Result<MarkOutcome, Error> {
        check_emoji(emoji)?;
        let (conversation, stored) = self.markable(caller, id, message).await?;
        let user = caller.participant();
        let change = MarkChange {
            conversation_id: id,
            message_id: message,
            seq: stored.seq,
            mark: Mark::Reaction {
                emoji: emoji.to_owned(),
                user,
                limit: MAX_REACTIONS,
            },
            on,
        };
        let event = Event::mark_before_count(|count| Event::Reaction {
            count,
            conversation_id: id,
            message_id: message,
            seq: stored.seq,
            user_id: user,
            added: on,
            emoji: emoji.to_owned(),
        });
        self.mark(&conversation, &stored, &change, event, || {
            format!("a message holds at most {MAX_REACTIONS} different reactions")
        })
        .await
    }

    /// Pins (`on`) or unpins a message in its conversation. Members may
    /// unless the application keeps pins to itself
    /// ([`Self::settings`]); the application always may.
    ///
    /// # Errors
    /// `forbidden` for a member when only the application pins;
    /// `invalid_request` for a deleted message or one addressed to some
    /// members only; `limit_reached` past [`MAX_PINS`]; as
    /// [`Self::readable`].
    pub async fn pin(
        &self,
        caller: &Caller,
        id: ConversationId,
        message: MessageId,
        on: bool,
    ) -> Result<MarkOutcome, Error> {
        let (conversation, stored) = self.markable(caller, id, message).await?;
        if matches!(caller.who, Who::User { .. }) && self.store.settings(id).await?.pins_app_only {
            return Err(Error::Forbidden(
                "only the application pins messages in this conversation",
            ));
        }
        if stored.body.recipients.is_some() {
            return Err(Error::InvalidRequest(
                "message: one addressed to some members only cannot be pinned".to_owned(),
            ));
        }
        let by = caller.author();
        let change = MarkChange {
            conversation_id: id,
            message_id: message,
            seq: stored.seq,
            mark: Mark::Pin {
                by,
                limit: MAX_PINS,
            },
            on,
        };
        let event = Event::mark_before_count(|count| Event::Pin {
            count,
            conversation_id: id,
            message_id: message,
            seq: stored.seq,
            pinned: on,
            by,
        });
        self.mark(&conversation, &stored, &change, event, || {
            format!("a conversation holds at most {MAX_PINS} pinned messages")
        })
        .await
    }

    /// A conversation's settings; the application (only) changes them
    /// with `pins_app_only` and `mention_all` (each left as it is when
    /// `None`).
    ///
    /// # Errors
    /// `forbidden` for a user changing them; as [`Self::readable`].
    pub async fn settings(
        &self,
        caller: &Caller,
        id: ConversationId,
        pins_app_only: Option<bool>,
        mention_all: Option<bool>,
    ) -> Result<ConversationSettings, Error> {
        self.readable(caller, id).await?;
        let mut settings = self.store.settings(id).await?;
        if pins_app_only.is_none() && mention_all.is_none() {
            return Ok(settings);
        }
        if !matches!(caller.who, Who::App) {
            return Err(Error::Forbidden(
                "only the application changes a conversation's settings",
            ));
        }
        settings.pins_app_only = pins_app_only.unwrap_or(settings.pins_app_only);
        settings.mention_all = mention_all.unwrap_or(settings.mention_all);
        self.store.set_settings(id, settings).await?;
        Ok(settings)
    }

    /// A conversation's pinned messages the caller can see, most recently
    /// pinned first, and whether only the application pins.
    ///
    /// # Errors
    /// As [`Self::readable`].
    pub async fn pinned(
        &self,
        caller: &Caller,
        id: ConversationId,
    ) -> Result<(Vec<MessageView>, bool), Error> {
        self.readable(caller, id).await?;
        let pins = self.store.pins(id).await?;
        let mut messages = Vec::with_capacity(pins.len());
        for pin in &pins {
            let found = self
                .store
                .history(id, Some(pin.seq - 1), Some(pin.seq + 1), 1)
                .await?;
            messages.extend(found.into_iter().filter(|m| visible_to(m, caller)));
        }
        let views = self.views(caller, id, &messages).await?;
        Ok((views, self.store.settings(id).await?.pins_app_only))
    }

    /// Who has read a message the caller can see: the members (of its
    /// recipients, for a message addressed to some) whose read mark is at
    /// it or past it, its author left out; at most
    /// [`MAX_MEMBERS_LISTED`], and whether there were more.
    ///
    /// # Errors
    /// As [`Self::readable`]; `not_found` for a message the caller cannot
    /// see.
    pub async fn read_by(
        &self,
        caller: &Caller,
        id: ConversationId,
        message: MessageId,
    ) -> Result<(Vec<UserId>, bool), Error> {
        let conversation = self.readable(caller, id).await?;
        let stored = self
            .store
            .message(id, message)
            .await?
            .filter(|m| visible_to(m, caller))
            .ok_or(Error::NotFound("message"))?;
        let limit = u32::try_from(MAX_MEMBERS_LISTED + 1).unwrap_or(u32::MAX);
        let mut readers = self.store.read_by(id, stored.seq, limit).await?;
        // Read marks outlive membership: only who may still see it counts.
        let audience: Option<Vec<UserId>> = match (&stored.body.recipients, conversation.all_users)
        {
            (Some(recipients), _) => Some(recipients.clone()),
            (None, true) => None,
            (None, false) => Some(self.store.members(id).await?),
        };
        readers.retain(|u| {
            stored.author != Author::User(*u) && audience.as_ref().is_none_or(|a| a.contains(u))
        });
        let truncated = readers.len() > MAX_MEMBERS_LISTED;
        readers.truncate(MAX_MEMBERS_LISTED);
        Ok((readers, truncated))
    }

    /// The conversation and message a reaction or pin is for: a message
    /// the caller can see, not deleted.
    async fn markable(
        &self,
        caller: &Caller,
        id: ConversationId,
        message: MessageId,
    ) -> Result<(Conversation, StoredMessage), Error> {
        let conversation = self.readable(caller, id).await?;
        let stored = self
            .store
            .message(id, message)
            .await?
            .filter(|m| visible_to(m, caller))
            .ok_or(Error::NotFound("message"))?;
        if stored.deleted_at.is_some() {
            return Err(Error::InvalidRequest("message: deleted".to_owned()));
        }
        Ok((conversation, stored))
    }

    /// Writes a mark's change and its event to the message's audience.
    async fn mark(
        &self,
        conversation: &Conversation,
        stored: &StoredMessage,
        change: &MarkChange,
        event: crate::store::messaging::PendingEvent,
        full: impl FnOnce() -> String,
    ) -> Result<MarkOutcome, Error> {
        let notify = match &stored.body.recipients {
            Some(recipients) => {
                let mut to = recipients.clone();
                if let Author::User(author) = stored.author {
                    to.push(author);
                }
                to
            }
            None => self.audience(conversation).await?,
        };
        let deliver = self.deliver(gate(conversation, GateKind::Event));
        match self
            .store
            .mark_then(change, &notify, event, self.clock.now(), deliver)
            .await?
        {
            Marked::Changed { count, .. } => Ok(MarkOutcome {
                changed: true,
                count: Some(count),
            }),
            Marked::Unchanged => Ok(MarkOutcome {
                changed: false,
                count: None,
            }),
            Marked::Full => Err(Error::Conflict(Code::LimitReached, full())),
        }
    }
}

/// A reaction: 1 to [`MAX_EMOJI_BYTES`] bytes, no spaces or control
/// characters.
fn check_emoji(emoji: &str) -> Result<(), Error> {
    if emoji.is_empty()
        || emoji.len() > MAX_EMOJI_BYTES
        || emoji.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidRequest(format!(
            "emoji: 1 to {MAX_EMOJI_BYTES} bytes without spaces"
        )));
    }
    Ok(())
}
