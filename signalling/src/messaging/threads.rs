//! Threads — replies to a message, in its conversation — and how
//! messages are shown with what is kept beside them (reactions, thread).
//!
//! A reply is a message like any other (numbered in its conversation, in
//! every member's log as a `message` event, found by search) whose body
//! names its root (`thread_id`, `thread_seq`). A reply to a reply goes to
//! the same root: threads are one level deep. The root's view carries the
//! thread as its reader sees it: replies, the last one, and the reader's
//! unread replies after its read mark in that thread (apart from its
//! conversation's read mark). Whoever wrote the root or replied follows
//! the thread; `threads` lists the followed threads with replies, the
//! most recent first.

use std::collections::BTreeMap;

use crate::bus::GateKind;
use crate::error::Error;
use crate::ids::{ConversationId, MessageId, UserId};
use crate::store::messaging::{Author, Conversation, MessageBody, StoredMessage};
use crate::store::threads::Scope;

use super::*;

/// Most members one message mentions.
pub const MAX_MENTIONS: usize = 50;

/// Most threads `threads` lists.
pub const MAX_THREADS_LISTED: u32 = 50;

impl Messaging {
    /// The root of the thread a reply to `target` goes in: `target`
    /// itself, or its root when it is a reply. It must be a message of the
    /// conversation the caller sees, addressed to every member.
    ///
    /// # Errors
    /// `not_found` for a message the caller cannot see; `invalid_request`
    /// for one addressed to some members only.
    pub(super) async fn thread_root(
        &self,
        caller: &Caller,
        id: ConversationId,
        target: MessageId,
    ) -> Result<StoredMessage, Error> {
        let found = self
            .store
            .message(id, target)
            .await?
            .filter(|m| visible_to(m, caller))
            .ok_or(Error::NotFound("message"))?;
        let root = match found.body.thread_id {
            Some(root) => self
                .store
                .message(id, root)
                .await?
                .ok_or(Error::NotFound("message"))?,
            None => found,
        };
        if root.body.recipients.is_some() {
            return Err(Error::InvalidRequest(
                "thread_id: a message addressed to some members only has no thread".to_owned(),
            ));
        }
        Ok(root)
    }

    /// Makes `body` a reply in the thread of `target` (see
    /// `thread_root`); a reply goes to every member.
    pub(super) async fn as_reply(
        &self,
        caller: &Caller,
        id: ConversationId,
        body: &mut MessageBody,
    ) -> Result<Option<StoredMessage>, Error> {
        let Some(target) = body.thread_id else {
            return Ok(None);
        };
        if body.recipients.is_some() {
            return Err(Error::InvalidRequest(
                "recipients: a reply goes to every member".to_owned(),
            ));
        }
        let root = self.thread_root(caller, id, target).await?;
        // A deleted root keeps its thread readable, but takes no replies.
        if root.deleted_at.is_some() {
            return Err(Error::InvalidRequest(
                "thread_id: the message was deleted".to_owned(),
            ));
        }
        body.thread_id = Some(root.id);
        body.thread_seq = Some(root.seq);
        Ok(Some(root))
    }

    /// After a reply: its author and the root's author follow the thread.
    pub(super) async fn replied(&self, caller: &Caller, root: &StoredMessage) -> Result<(), Error> {
        let mut followers = vec![caller.participant()];
        if let Author::User(author) = root.author {
            followers.push(author);
        }
        for user in followers {
            self.store
                .follow_thread(root.conversation_id, root.seq, user, true)
                .await?;
        }
        Ok(())
    }

    /// Checks a message's mentions: at most [`MAX_MENTIONS`] members,
    /// each one who sees the message (`audience`); `@all` only in a group
    /// that is not for all users, when the application allows it there.
    ///
    /// # Errors
    /// `invalid_request` for a mention of someone who does not see the
    /// message or too many; `forbidden` for an `@all` not allowed.
    pub(super) async fn check_mentions(
        &self,
        conversation: &Conversation,
        body: &mut MessageBody,
        audience: &[UserId],
    ) -> Result<(), Error> {
        let mut seen = std::collections::HashSet::new();
        body.mentions.retain(|u| seen.insert(*u));
        if body.mentions.len() > MAX_MENTIONS {
            return Err(Error::InvalidRequest(format!(
                "mentions: at most {MAX_MENTIONS} members"
            )));
        }
        if let Some(stranger) = body.mentions.iter().find(|u| !audience.contains(u)) {
            return Err(Error::InvalidRequest(format!(
                "mentions: {stranger} does not see this message"
            )));
        }
        if body.mention_all
            && (!conversation.is_group
                || conversation.all_users
                || body.recipients.is_some()
                || !self.store.settings(conversation.id).await?.mention_all)
        {
            return Err(Error::Forbidden(
                "mention_all: @all is for groups whose application allows it",
            ));
        }
        Ok(())
    }

    /// Messages that mention the caller (or `@all`) in conversations it
    /// can read, the newest first.
    ///
    /// # Errors
    /// `invalid_request` for a `limit` outside 1 to [`MAX_PAGE`].
    pub async fn mentioned(&self, caller: &Caller, limit: u32) -> Result<Vec<MessageView>, Error> {
        check_page(limit)?;
        let found = self
            .store
            .mentioning(caller.app.id, caller.participant(), limit)
            .await?;
        let mut readable: BTreeMap<ConversationId, bool> = BTreeMap::new();
        let mut kept = Vec::with_capacity(found.len());
        for m in found {
            let ok = match readable.get(&m.conversation_id) {
                Some(ok) => *ok,
                None => {
                    let ok = match self.readable(caller, m.conversation_id).await {
                        Ok(_) => true,
                        Err(Error::Forbidden(_) | Error::NotFound(_)) => false,
                        Err(e) => return Err(e),
                    };
                    readable.insert(m.conversation_id, ok);
                    ok
                }
            };
            if ok && visible_to(&m, caller) {
                kept.push(m);
            }
        }
        self.views_across(caller, &kept).await
    }

    /// A page of a conversation's history the caller may see (messages
    /// addressed to others are left out): every message, those that are
    /// not replies (`top_level`), or the replies of one thread (`thread`,
    /// any of its messages).
    ///
    /// # Errors
    /// As [`Self::readable`]; `invalid_request` for a `limit` outside 1 to
    /// [`MAX_PAGE`] or both `thread` and `top_level`; as
    /// `thread_root` for `thread`.
    #[allow(clippy::too_many_arguments)]
    pub async fn history_in(
        &self,
        caller: &Caller,
        id: ConversationId,
        thread: Option<MessageId>,
        top_level: bool,
        after: Option<u64>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, Error> {
        check_page(limit)?;
        self.readable(caller, id).await?;
        let scope = match (thread, top_level) {
            (Some(_), true) => {
                return Err(Error::InvalidRequest(
                    "thread_id and top_level: one or the other".to_owned(),
                ));
            }
            (Some(target), false) => Scope::Thread(self.thread_root(caller, id, target).await?.seq),
            (None, true) => Scope::TopLevel,
            (None, false) => Scope::All,
        };
        let messages = self
            .store
            .history_in(id, scope, after, before, limit)
            .await?;
        Ok(messages
            .into_iter()
            .filter(|m| visible_to(m, caller))
            .collect())
    }

    /// Moves the caller's read mark in a thread; tells its devices with a
    /// `read` event naming the thread.
    ///
    /// # Errors
    /// As [`Self::readable`] and `thread_root`; `invalid_request`
    /// for the application.
    pub async fn mark_thread_read(
        &self,
        caller: &Caller,
        id: ConversationId,
        thread: MessageId,
        seq: u64,
    ) -> Result<u64, Error> {
        let conversation = self.readable(caller, id).await?;
        let user = caller
            .user_id()
            .ok_or_else(|| Error::InvalidRequest("read marks are for users".to_owned()))?;
        let root = self.thread_root(caller, id, thread).await?;
        let mark = self
            .store
            .mark_thread_read(id, root.seq, user, seq.min(conversation.last_seq))
            .await?;
        self.emit(
            &[user],
            Event::Read {
                conversation_id: id,
                seq: mark,
                thread_id: Some(root.id),
            }
            .render(),
            gate(&conversation, GateKind::Event),
        )
        .await?;
        Ok(mark)
    }

    /// Follows a thread (or stops).
    ///
    /// # Errors
    /// As [`Self::readable`] and `thread_root`.
    pub async fn follow(
        &self,
        caller: &Caller,
        id: ConversationId,
        thread: MessageId,
        follow: bool,
    ) -> Result<(), Error> {
        self.readable(caller, id).await?;
        let root = self.thread_root(caller, id, thread).await?;
        self.store
            .follow_thread(id, root.seq, caller.participant(), follow)
            .await?;
        Ok(())
    }

    /// The threads the caller follows in conversations it can still read,
    /// the most recently replied first: their roots, each with its thread.
    ///
    /// # Errors
    /// `invalid_request` for a `limit` outside 1 to
    /// [`MAX_THREADS_LISTED`].
    pub async fn followed(&self, caller: &Caller, limit: u32) -> Result<Vec<MessageView>, Error> {
        if !(1..=MAX_THREADS_LISTED).contains(&limit) {
            return Err(Error::InvalidRequest(format!(
                "limit: 1 to {MAX_THREADS_LISTED}"
            )));
        }
        let followed = self
            .store
            .followed_threads(caller.participant(), limit)
            .await?;
        let mut roots = Vec::with_capacity(followed.len());
        for (id, root_seq) in followed {
            // Left, removed, or no longer allowed to see its object.
            match self.readable(caller, id).await {
                Ok(_) => {}
                Err(Error::Forbidden(_) | Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
            let root = self
                .store
                .history_in(id, Scope::All, Some(root_seq - 1), Some(root_seq + 1), 1)
                .await?;
            for view in self.views(caller, id, &root).await? {
                roots.push(view);
            }
        }
        Ok(roots)
    }

    /// The views of messages of one conversation, with their reactions
    /// and, for roots of threads, the thread as the caller sees it.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn views(
        &self,
        caller: &Caller,
        id: ConversationId,
        messages: &[StoredMessage],
    ) -> Result<Vec<MessageView>, Error> {
        let mut views: Vec<MessageView> = messages.iter().map(MessageView::from).collect();
        let (Some(from), Some(to)) = (
            messages.iter().map(|m| m.seq).min(),
            messages.iter().map(|m| m.seq).max(),
        ) else {
            return Ok(views);
        };
        let mut by_seq: BTreeMap<u64, Vec<ReactionView>> = BTreeMap::new();
        for r in self.store.reactions(id, from, to).await? {
            let list = by_seq.entry(r.seq).or_default();
            let i = match list.iter().position(|v| v.emoji == r.emoji) {
                Some(i) => i,
                None => {
                    list.push(ReactionView {
                        emoji: r.emoji,
                        count: 0,
                        users: Vec::new(),
                    });
                    list.len() - 1
                }
            };
            let view = &mut list[i];
            view.count += 1;
            if view.users.len() < REACTION_USERS_LISTED {
                view.users.push(r.user);
            }
        }
        let mut threads: BTreeMap<u64, ThreadView> = self
            .store
            .thread_summaries(id, from, to, caller.participant())
            .await?
            .into_iter()
            .map(|t| (t.root_seq, ThreadView::from(&t)))
            .collect();
        for view in &mut views {
            if let Some(reactions) = by_seq.remove(&view.seq) {
                view.reactions = reactions;
            }
            view.thread = threads.remove(&view.seq);
        }
        Ok(views)
    }

    /// The views of messages of any conversations (search results), with
    /// their reactions, in their order.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn views_across(
        &self,
        caller: &Caller,
        messages: &[StoredMessage],
    ) -> Result<Vec<MessageView>, Error> {
        let mut views: Vec<Option<MessageView>> = vec![None; messages.len()];
        let mut conversations: Vec<ConversationId> =
            messages.iter().map(|m| m.conversation_id).collect();
        conversations.sort_unstable();
        conversations.dedup();
        for id in conversations {
            let (at, of): (Vec<usize>, Vec<StoredMessage>) = messages
                .iter()
                .enumerate()
                .filter(|(_, m)| m.conversation_id == id)
                .map(|(i, m)| (i, m.clone()))
                .unzip();
            for (i, view) in at.into_iter().zip(self.views(caller, id, &of).await?) {
                views[i] = Some(view);
            }
        }
        Ok(views.into_iter().flatten().collect())
    }
}
