//! Request frames: parsed, checked against the connection's limits and
//! answered by the domain; every answer and every error names the
//! request's `id`.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Code, Error};
use crate::ids::ConversationId;
use crate::limits::FrameKind;
use crate::messaging::{ConversationView, MessageView, NewConversation};
use crate::proto::Request;
use crate::store::messaging::MessageBody;
use confer_sfu::api::Role;

use super::*;

/// A client's name for its device: 1 to 256 characters.
pub(super) fn check_device_id(id: Option<&str>) -> Result<(), Error> {
    if id.is_some_and(|d| d.is_empty() || d.chars().count() > 256) {
        return Err(Error::InvalidRequest(
            "device_id: 1 to 256 characters".to_owned(),
        ));
    }
    Ok(())
}

/// A `list` cursor: `<last_activity ms>.<conversation id>`.
pub(super) fn parse_cursor(text: &str) -> Option<(crate::ids::Timestamp, ConversationId)> {
    let (at, id) = text.split_once('.')?;
    Some((crate::ids::Timestamp(at.parse().ok()?), id.parse().ok()?))
}

/// The WebSocket answer to an error: an error frame naming the request
/// (`id`) it answers, with the code and its sentence.
pub(super) fn error_frame(id: Option<&str>, code: Code, message: &str) -> String {
    json!({"type": "error", "id": id, "code": code, "message": message}).to_string()
}

/// The `id` of a request frame, read without keeping the rest.
pub(super) fn frame_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        id: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Head<'_>>(text)
        .ok()
        .and_then(|h| h.id)
        .map(std::borrow::Cow::into_owned)
}

/// The error frame of a request refused by a frame limit.
pub(super) fn rate_limited_frame(id: Option<&str>, limited: &crate::limits::RateLimited) -> String {
    json!({
        "type": "error",
        "id": id,
        "code": Code::RateLimited,
        "message": limited.to_string(),
        "retry_after_ms": u64::try_from(limited.retry_after.as_millis()).unwrap_or(u64::MAX).max(1),
    })
    .to_string()
}

pub(super) fn api_error_frame(id: &str, err: &Error) -> String {
    // As on REST: the client gets a generic `internal`, the log the detail.
    if let Error::Internal(detail) = err {
        tracing::error!(error = ?detail, "internal error answering a request frame");
    }
    error_frame(Some(id), err.code(), &err.to_string())
}

/// Answers one text frame.
pub(super) async fn handle_text(context: &Context, text: &str) -> String {
    // Every frame counts before any work is done on it; its id is read
    // without building a tree of it.
    if let Err(limited) = context.limits.check_frame() {
        return rate_limited_frame(frame_id(text).as_deref(), &limited);
    }
    if text.len() > MAX_FRAME_BYTES {
        return error_frame(
            frame_id(text).as_deref(),
            Code::FrameTooLarge,
            "frames are limited to 131072 bytes",
        );
    }
    let value: Result<Value, _> = serde_json::from_str(text);
    let id = value
        .as_ref()
        .ok()
        .and_then(|v| v.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let value = match value {
        Ok(v) => v,
        Err(e) => return error_frame(None, Code::MalformedJson, &e.to_string()),
    };
    let Some(id) = id else {
        return error_frame(
            None,
            Code::InvalidRequest,
            "every request needs a string \"id\"",
        );
    };
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    if !KNOWN_TYPES.contains(&kind) {
        return error_frame(
            Some(&id),
            Code::UnknownType,
            &format!("unknown frame type {kind:?}"),
        );
    }
    if let Err(limited) = context.limits.check_kind(FrameKind::of(kind)) {
        return rate_limited_frame(Some(&id), &limited);
    }
    let request: Request = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return error_frame(Some(&id), Code::InvalidRequest, &e.to_string()),
    };
    match answer(context, request).await {
        Ok(frame) => frame.to_string(),
        Err(e) => api_error_frame(&id, &e),
    }
}

pub(super) async fn answer(context: &Context, request: Request) -> Result<Value, Error> {
    let messaging = &context.messaging;
    let caller = &context.caller;
    let calls = &context.calls;
    let device = context.device;
    Ok(match request {
        Request::Send {
            id,
            conversation_id,
            client_id,
            text,
            data,
            recipients,
            actions,
            attachments,
        } => {
            let body = MessageBody {
                text,
                data,
                recipients,
                actions,
                attachments: Vec::new(),
            };
            let m = messaging
                .send_with_files(caller, conversation_id, &client_id, body, &attachments)
                .await?;
            json!({"type": "ack", "id": id, "message": MessageView::from(&m)})
        }
        Request::CreateConversation {
            id,
            title,
            members,
            is_group,
            displayed,
            all_users,
            key,
        } => {
            let c = messaging
                .create_conversation(
                    caller,
                    NewConversation {
                        title,
                        members,
                        is_group,
                        displayed,
                        all_users,
                        key,
                    },
                )
                .await?;
            json!({"type": "ack", "id": id, "conversation": ConversationView::of(&c, None)})
        }
        Request::AddMembers {
            id,
            conversation_id,
            members,
        } => {
            let c = messaging
                .add_members(caller, conversation_id, &members)
                .await?;
            json!({"type": "ack", "id": id, "conversation": ConversationView::of(&c, None)})
        }
        Request::RemoveMember {
            id,
            conversation_id,
            user_id,
        } => {
            messaging
                .remove_member(caller, conversation_id, user_id)
                .await?;
            calls.member_removed(conversation_id, user_id).await;
            json!({"type": "ack", "id": id})
        }
        Request::OpenContext { id, context, title } => {
            let c = messaging.open_context(caller, &context, &title).await?;
            json!({"type": "ack", "id": id, "conversation": ConversationView::of(&c, None)})
        }
        Request::History {
            id,
            conversation_id,
            after,
            before,
            limit,
        } => {
            let messages = messaging
                .history(caller, conversation_id, after, before, limit.unwrap_or(50))
                .await?;
            let views: Vec<MessageView> = messages.iter().map(MessageView::from).collect();
            json!({"type": "history", "id": id, "conversation_id": conversation_id, "messages": views})
        }
        Request::Read {
            id,
            conversation_id,
            seq,
        } => {
            let mark = messaging.mark_read(caller, conversation_id, seq).await?;
            json!({"type": "ack", "id": id, "read_seq": mark})
        }
        Request::Edit {
            id,
            conversation_id,
            message_id,
            text,
        } => {
            let m = messaging
                .change(caller, conversation_id, message_id, Some(text))
                .await?;
            json!({"type": "ack", "id": id, "message": MessageView::from(&m)})
        }
        Request::Delete {
            id,
            conversation_id,
            message_id,
        } => {
            let m = messaging
                .change(caller, conversation_id, message_id, None)
                .await?;
            json!({"type": "ack", "id": id, "message": MessageView::from(&m)})
        }
        Request::List { id, limit, after } => {
            let cursor = match after {
                Some(c) => Some(parse_cursor(&c).ok_or_else(|| {
                    Error::InvalidRequest("after: not a cursor from `next`".to_owned())
                })?),
                None => None,
            };
            let limit = limit.unwrap_or(50);
            let entries = messaging.list(caller, cursor, limit).await?;
            let views: Vec<ConversationView> = entries
                .iter()
                .map(|e| ConversationView::of(&e.conversation, Some(e.unread)))
                .collect();
            let next = (entries.len() == limit as usize)
                .then(|| {
                    entries.last().map(|e| {
                        format!("{}.{}", e.conversation.last_activity.0, e.conversation.id)
                    })
                })
                .flatten();
            json!({"type": "conversations", "id": id, "conversations": views, "next": next})
        }
        Request::Click {
            id,
            conversation_id,
            message_id,
            value,
        } => {
            messaging
                .click(caller, conversation_id, message_id, &value)
                .await?;
            json!({"type": "ack", "id": id})
        }
        Request::Typing {
            id,
            conversation_id,
        } => {
            let sent = messaging.typing(caller, conversation_id).await?;
            json!({"type": "ack", "id": id, "sent": sent})
        }
        Request::Presence { id, away, users } => {
            if let Some(away) = away {
                messaging.set_away(caller, away).await?;
            }
            let known = messaging.presence_of(caller, &users).await?;
            let map: serde_json::Map<String, Value> = known
                .into_iter()
                .map(|(u, p)| (u.to_string(), json!(p)))
                .collect();
            json!({"type": "presence", "id": id, "users": map})
        }
        Request::Members {
            id,
            conversation_id,
        } => {
            let (members, truncated) = messaging.member_list(caller, conversation_id).await?;
            let members: Vec<Value> = members
                .into_iter()
                .map(|(user_id, name, presence)| match presence {
                    Some(p) => json!({"user_id": user_id, "name": name, "presence": p}),
                    None => json!({"user_id": user_id, "name": name}),
                })
                .collect();
            json!({"type": "members", "id": id, "members": members, "truncated": truncated})
        }
        Request::Search { id, query, limit } => {
            let found = messaging
                .search(caller, &query, limit.unwrap_or(50))
                .await?;
            let views: Vec<MessageView> = found.iter().map(MessageView::from).collect();
            json!({"type": "search", "id": id, "messages": views})
        }
        Request::Ping { id } => json!({"type": "pong", "id": id}),
        Request::CallStart {
            id,
            conversation_id,
            media,
            device_id,
        } => {
            check_device_id(device_id.as_deref())?;
            let call = calls
                .start(caller, device, conversation_id, media, device_id)
                .await?;
            json!({"type": "ack", "id": id, "call": call, "ice_servers": calls.ice_servers(caller.participant())})
        }
        Request::CallJoin {
            id,
            call_id,
            device_id,
        } => {
            check_device_id(device_id.as_deref())?;
            let (call, ice_servers) = calls.join(caller, device, call_id, device_id).await?;
            json!({"type": "ack", "id": id, "call": call, "ice_servers": ice_servers})
        }
        Request::CallDecline { id, call_id, busy } => {
            calls.decline(caller, call_id, busy).await?;
            json!({"type": "ack", "id": id})
        }
        Request::CallLeave { id, call_id } => {
            calls.leave(caller, device, call_id).await?;
            json!({"type": "ack", "id": id})
        }
        Request::CallSignal {
            id,
            call_id,
            to,
            signal,
        } => {
            // Checked before the call is looked up: a malformed request is
            // refused as such, whatever the call's state.
            if !signal.is_object() {
                return Err(Error::InvalidRequest(
                    "signal: must be a JSON object".to_owned(),
                ));
            }
            calls.signal(caller, device, call_id, to, signal).await?;
            json!({"type": "ack", "id": id})
        }
        Request::CallPublish {
            id,
            call_id,
            sdp,
            screen_mid,
        } => {
            let sdp = calls
                .negotiate(caller, device, call_id, Role::Publish, sdp, screen_mid)
                .await?;
            json!({"type": "call_answer", "id": id, "call_id": call_id, "sdp": sdp})
        }
        Request::CallSubscribe { id, call_id, sdp } => {
            let sdp = calls
                .negotiate(caller, device, call_id, Role::Subscribe, sdp, None)
                .await?;
            json!({"type": "call_answer", "id": id, "call_id": call_id, "sdp": sdp})
        }
        Request::CallMediaState {
            id,
            call_id,
            audio,
            video,
            screen,
        } => {
            calls
                .set_media(caller, device, call_id, audio, video, screen)
                .await?;
            json!({"type": "ack", "id": id})
        }
        Request::CallQuality {
            id,
            call_id,
            mid,
            quality,
        } => {
            calls
                .set_quality(caller, device, call_id, mid, quality)
                .await?;
            json!({"type": "ack", "id": id})
        }
    })
}
