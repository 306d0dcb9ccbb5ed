//! What a session shows: replays from the store and the gate of
//! contextual conversations' events.

use axum::extract::ws::Message;
use futures_util::Sink;
use serde::Deserialize;

use crate::bus::{Gate, GateKind};
use crate::ids::ConversationId;

use super::*;

/// Events read from the store per page while replaying.
pub(super) const REPLAY_PAGE: u32 = 500;
/// Most conversations a session remembers it may (or may not) show;
/// beyond, it forgets them all and asks again.
pub(super) const ACCESS_CACHE: usize = 1024;

/// Sends stored events after `*last` and below `until` that this session
/// shows, advancing `*last`.
pub(super) async fn replay<S: Sink<Message> + Unpin>(
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
pub(super) struct Access {
    shown: std::collections::HashMap<ConversationId, bool>,
}

impl Access {
    /// Whether the session shows an event with `gate`; `Err` when the store
    /// could not say.
    pub(super) async fn shows(
        &mut self,
        context: &Context,
        gate: Option<Gate>,
    ) -> Result<bool, ()> {
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
pub(super) fn gate_of(payload: &str) -> Option<Gate> {
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
