//! Conversations: creating them (also bound to a business object), who
//! may read them, members, grants and the caller's list.

use std::collections::BTreeSet;

use crate::bus::{Gate, GateKind};
use crate::error::{Code, Error};
use crate::ids::{ConversationId, UserId};
use crate::store::Application;
use crate::store::messaging::{Conversation, ConversationEntry};

use super::*;

impl Messaging {
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
        Ok(self.create_or_find_conversation(caller, new).await?.0)
    }

    /// [`Self::create_conversation`], also saying whether it was created
    /// (`false`: the application's key named an existing one).
    ///
    /// # Errors
    /// As [`Self::create_conversation`].
    pub async fn create_or_find_conversation(
        &self,
        caller: &Caller,
        new: NewConversation,
    ) -> Result<(Conversation, bool), Error> {
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
            self.membership_changed(conversation.id);
            self.notify_conversation(&conversation, &members).await?;
        }
        Ok((conversation, created))
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
        if created {
            // Granted users became members with it.
            self.membership_changed(conversation.id);
        }
        if !created && let Some(user) = caller.user_id() {
            self.join_context(conversation.id, user).await?;
        }
        Ok(conversation)
    }

    /// Makes a user who may see a contextual conversation's object one of
    /// its members (so that events reach its log), writing only when it
    /// is not one yet.
    pub(super) async fn join_context(&self, id: ConversationId, user: UserId) -> Result<(), Error> {
        if !self.store.is_member(id, user).await? {
            self.store
                .add_members(id, &[user], self.clock.now())
                .await?;
            self.membership_changed(id);
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

    /// A conversation the caller may read; a viewer of a contextual
    /// conversation who is not a member yet is made one (a write only
    /// then).
    ///
    /// # Errors
    /// `not_found` outside the caller's application; `forbidden` when the
    /// caller is not a member and may not see its object.
    pub async fn readable(
        &self,
        caller: &Caller,
        id: ConversationId,
    ) -> Result<Conversation, Error> {
        let (conversation, joins) = self.reachable(caller, id).await?;
        if let Some(user) = joins {
            self.join_context(id, user).await?;
        }
        Ok(conversation)
    }

    /// As [`Self::readable`] without the write: the conversation, and the
    /// user to make a member of it (a viewer of a contextual conversation
    /// who is not one yet), for a caller that writes anyway and makes the
    /// membership part of its own transaction.
    pub(super) async fn reachable(
        &self,
        caller: &Caller,
        id: ConversationId,
    ) -> Result<(Conversation, Option<UserId>), Error> {
        let conversation = self
            .store
            .conversation(caller.app.id, id)
            .await?
            .ok_or(Error::NotFound("conversation"))?;
        let member = match caller.user_id() {
            Some(user) if !conversation.all_users => self.store.is_member(id, user).await?,
            _ => false,
        };
        let joins = self.admits(caller, &conversation, member).await?;
        Ok((conversation, joins))
    }

    /// As [`Self::reachable`], from the conversation's roster in memory
    /// (the send path): its `last_seq` and `last_activity` are not
    /// current.
    pub(super) async fn postable(
        &self,
        caller: &Caller,
        id: ConversationId,
    ) -> Result<(Arc<Roster>, Option<UserId>), Error> {
        let roster = self
            .rosters
            .get(&*self.store, caller.app.id, id)
            .await?
            .ok_or(Error::NotFound("conversation"))?;
        let member = caller.user_id().is_some_and(|user| roster.has(user));
        let joins = self.admits(caller, &roster.conversation, member).await?;
        Ok((roster, joins))
    }

    /// Whether `caller` may use `conversation` (`member`: whether it is
    /// one): `Some(user)` when the caller must become a member to (a
    /// viewer of a contextual conversation who is not one yet).
    async fn admits(
        &self,
        caller: &Caller,
        conversation: &Conversation,
        member: bool,
    ) -> Result<Option<UserId>, Error> {
        let Who::User { user, .. } = &caller.who else {
            return Ok(None);
        };
        // A contextual conversation is open to whoever may see its
        // object, now: a withdrawn grant closes it at once.
        if let Some(context) = &conversation.context {
            if self.may_see(caller, context).await? {
                return Ok((!member).then_some(user.id));
            }
            return Err(Error::Forbidden(
                "the application does not let this user see that object",
            ));
        }
        if conversation.all_users || member {
            return Ok(None);
        }
        Err(Error::Forbidden("not a member of this conversation"))
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
        self.membership_changed(id);
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
        self.membership_changed(id);
        self.emit(
            &[user],
            Event::Removed {
                conversation_id: id,
            }
            .render(),
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
        self.membership_changed(id);
        if granted {
            if let Some(conversation) = self.store.conversation(app.id, id).await? {
                let payload = Event::Conversation {
                    conversation: ConversationView::of(&conversation, None),
                };
                self.emit(
                    &[user],
                    payload.render(),
                    gate(&conversation, GateKind::Opened),
                )
                .await?;
            }
            return Ok(None);
        }
        self.emit(
            &[user],
            Event::Removed {
                conversation_id: id,
            }
            .render(),
            Some(Gate {
                conversation: id,
                kind: GateKind::Closed,
            }),
        )
        .await?;
        Ok(Some(id))
    }

    pub(super) async fn may_see(&self, caller: &Caller, context: &str) -> Result<bool, Error> {
        match &caller.who {
            Who::App => Ok(true),
            Who::User { user, contexts } => Ok(contexts.iter().any(|c| c == context)
                || self
                    .store
                    .has_grant(caller.app.id, user.id, context)
                    .await?),
        }
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
}
