//! Quoting and forwarding: a message that carries another.
//!
//! A **quote** keeps, in the new message, a snapshot of a message of the
//! same conversation as the quoter saw it then (author, number, the first
//! 500 characters): whoever sees the new message sees the quote, also
//! after the original is edited or deleted — the quoter could see it when
//! quoting, as could everyone the quote is shown to. A message addressed
//! to some members only is quoted only to them.
//!
//! A **forward** copies a message the caller can see (text, data, and its
//! files by reference) into another conversation the caller may post in,
//! marked with where it came from; buttons stay behind (they answer the
//! original's bot). The forward's readers may fetch those files while the
//! original keeps them; deleting the original deletes its files for the
//! forwards too.

use crate::error::Error;
use crate::ids::{ConversationId, MessageId, UserId};
use crate::store::messaging::{Author, Forwarded, MessageBody, Quote, StoredMessage};

use super::*;

/// The longest quoted text, in characters.
pub const QUOTE_CHARS: usize = 500;

impl Messaging {
    /// A message of the conversation the caller can see, not deleted.
    async fn original(
        &self,
        caller: &Caller,
        id: ConversationId,
        message: MessageId,
        field: &str,
    ) -> Result<StoredMessage, Error> {
        self.readable(caller, id).await?;
        let found = self
            .store
            .message(id, message)
            .await?
            .filter(|m| visible_to(m, caller))
            .ok_or(Error::NotFound("message"))?;
        if found.deleted_at.is_some() {
            return Err(Error::InvalidRequest(format!(
                "{field}: the message was deleted"
            )));
        }
        Ok(found)
    }

    /// The quote of `message` for a new message of the same conversation
    /// addressed to `recipients` (every member when `None`).
    ///
    /// # Errors
    /// As [`Self::readable`]; `not_found` for a message the caller cannot
    /// see; `invalid_request` for a deleted one, or one addressed to some
    /// members quoted to others.
    pub async fn quote(
        &self,
        caller: &Caller,
        id: ConversationId,
        message: MessageId,
        recipients: Option<&[UserId]>,
    ) -> Result<Quote, Error> {
        let quoted = self.original(caller, id, message, "quote").await?;
        if let Some(allowed) = &quoted.body.recipients {
            let shown_to_them = recipients.is_some_and(|to| {
                to.iter()
                    .all(|u| allowed.contains(u) || quoted.author == Author::User(*u))
            });
            if !shown_to_them {
                return Err(Error::InvalidRequest(
                    "quote: a message for some members is quoted only to them".to_owned(),
                ));
            }
        }
        Ok(Quote {
            message_id: quoted.id,
            seq: quoted.seq,
            author: quoted.author,
            text: quoted.body.text.chars().take(QUOTE_CHARS).collect(),
            attachments: !quoted.body.attachments.is_empty(),
            created_at: quoted.created_at.to_rfc3339(),
        })
    }

    /// Forwards `message` of `from` into `to` as the caller's message,
    /// idempotent by `client_id` like `send`.
    ///
    /// # Errors
    /// As [`Self::readable`] for `from` and [`Self::send`] for `to`;
    /// `not_found` for a message the caller cannot see; `invalid_request`
    /// for a deleted one or one with nothing left to forward.
    pub async fn forward(
        &self,
        caller: &Caller,
        from: ConversationId,
        message: MessageId,
        to: ConversationId,
        client_id: &str,
    ) -> Result<StoredMessage, Error> {
        let original = self.original(caller, from, message, "message_id").await?;
        // A forward of a forward names the first original.
        let forwarded = original.body.forwarded.clone().unwrap_or(Forwarded {
            conversation_id: from,
            message_id: original.id,
            author: original.author,
            created_at: original.created_at.to_rfc3339(),
        });
        let body = MessageBody {
            text: original.body.text,
            data: original.body.data,
            attachments: original.body.attachments,
            forwarded: Some(forwarded),
            ..MessageBody::default()
        };
        self.send_with_files(caller, to, client_id, body, &[]).await
    }
}
