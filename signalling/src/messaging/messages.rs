//! Messages: sending (idempotent by client id, with attachments), edits
//! and deletes, action clicks, history, read marks and search.

use crate::bus::GateKind;
use crate::error::{Code, Error};
use crate::ids::{ConversationId, MessageId, UserId};
use crate::outbox::Kind;
use crate::store::files::FileState;
use crate::store::messaging::{
    Attachment, Author, MessageBody, NewMessage, PreviewSize, StoredMessage,
};

use super::*;

impl Messaging {
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
        // A first post to a contextual conversation makes its author a
        // member in the message's own transaction.
        let (roster, joins) = self.postable(caller, id).await?;
        let conversation = &roster.conversation;
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
        // (A forward's attachments are its original's, set already.)
        if !attachments.is_empty() {
            body.attachments = self.attachments(caller, id, attachments).await?;
        }
        check_body(&body)?;
        let root = self.as_reply(caller, id, &mut body).await?;
        let members = if conversation.all_users {
            self.audience(conversation).await?
        } else {
            roster.members.clone()
        };
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
        self.check_mentions(conversation, &mut body, &notify)
            .await?;
        let tapped = self
            .tap(caller.app.id, &[Kind::Message, Kind::Call], &mut notify)
            .await;
        let mentioned = body.mentions.clone();
        let thread = body.thread_seq;
        let new = NewMessage {
            conversation_id: id,
            id: MessageId::random(),
            author: caller.author(),
            client_id: client_id.to_owned(),
            body,
            joins,
        };
        // The event is rendered here, once; the writer only puts the
        // message's number into it.
        let now = self.clock.now();
        let event = Event::message_before_numbering(&new, now);
        let deliver = self.deliver(gate(conversation, GateKind::Event));
        let posted = self
            .store
            .post_then(&new, &notify, event, now, deliver)
            .await?;
        if tapped {
            self.taps.written();
        }
        if joins.is_some() {
            self.membership_changed(id);
        }
        if let Some(root) = root {
            self.replied(caller, &root).await?;
        }
        // Who is mentioned follows the message's thread (listed once it
        // has replies).
        let thread = thread.unwrap_or(posted.message.seq);
        for user in mentioned {
            self.store.follow_thread(id, thread, user, true).await?;
        }
        Ok(posted.message)
    }

    /// What `refs` attach, as the message will show it.
    pub(super) async fn attachments(
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
        let original = stored.clone();
        let deleted = match text {
            Some(text) => {
                let body = MessageBody {
                    text,
                    ..stored.body.clone()
                };
                check_body(&body)?;
                stored.body = body;
                stored.edited_at = Some(now);
                false
            }
            None => {
                // A deleted reply stays in its thread.
                stored.body = MessageBody {
                    thread_id: stored.body.thread_id,
                    thread_seq: stored.body.thread_seq,
                    ..MessageBody::deleted()
                };
                stored.deleted_at = Some(now);
                true
            }
        };
        // Under a legal hold the version replaced is kept, hidden from
        // users (and a deleted message's files with it).
        self.keep_if_held(&original, deleted, now).await?;
        let mut notify = match &stored.body.recipients {
            Some(r) => r.clone(),
            None => self.audience(&conversation).await?,
        };
        let tapped = self.tap(caller.app.id, &[Kind::Message], &mut notify).await;
        let message = MessageView::from(&stored);
        let had_files = deleted && !attached.is_empty();
        let payload = if deleted {
            Event::MessageDeleted { message }
        } else {
            Event::MessageEdited { message }
        }
        .render();
        let deliver = self.deliver(gate(&conversation, GateKind::Event));
        self.store
            .update_message_then(&stored, &notify, &payload, now, deliver)
            .await?;
        if tapped {
            self.taps.written();
        }
        if had_files {
            self.file_garbage.notify_one();
        }
        Ok(stored)
    }

    /// Keeps `original` when a legal hold covers it, before it is
    /// edited or `deleted`.
    async fn keep_if_held(
        &self,
        original: &StoredMessage,
        deleted: bool,
        now: crate::ids::Timestamp,
    ) -> Result<(), Error> {
        let author = original.author.key();
        if self
            .users
            .is_held(original.conversation_id, &author)
            .await?
        {
            let copy = crate::store::governance::HeldCopy {
                message_id: original.id,
                conversation_id: original.conversation_id,
                seq: original.seq,
                author,
                body: serde_json::to_string(&original.body)
                    .map_err(|e| Error::internal(anyhow::anyhow!(e)))?,
                created_at: original.created_at,
                why: if deleted { "deleted" } else { "edited" }.to_owned(),
                kept_at: now,
            };
            self.users.keep_copy(&copy).await?;
        }
        Ok(())
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
        let payload = Event::Action {
            conversation_id: id,
            message_id: message,
            value: value.to_owned(),
            user_id: caller.user_id(),
        }
        .render();
        let mut notify = vec![bot_id(caller.app.id)];
        let tapped = self.tap(caller.app.id, &[Kind::Action], &mut notify).await;
        self.emit(&notify, payload, None).await?;
        if tapped {
            self.taps.written();
        }
        Ok(())
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
            Event::Read {
                conversation_id: id,
                seq: mark,
                thread_id: None,
            }
            .render(),
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
}
