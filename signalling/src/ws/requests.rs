//! Request frames: parsed, checked against the connection's limits and
//! answered by the domain; every answer and every error names the
//! request's `id`.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Code, Error};
use crate::ids::ConversationId;
use crate::limits::FrameKind;
use crate::messaging::{ConversationView, MessageView, NewConversation};
use crate::proto::{Ack, Member, Request, ServerFrame};
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
    ServerFrame::Error {
        id: id.map(str::to_owned),
        code,
        message: message.to_owned(),
        retry_after_ms: None,
    }
    .render()
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
    ServerFrame::Error {
        id: id.map(str::to_owned),
        code: Code::RateLimited,
        message: limited.to_string(),
        retry_after_ms: Some(
            u64::try_from(limited.retry_after.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        ),
    }
    .render()
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
        Ok(frame) => frame.render(),
        Err(e) => api_error_frame(&id, &e),
    }
}

/// Records a change the application's bot made to a conversation's
/// membership in the audit log (a user's session records nothing).
async fn bot_changed(
    context: &Context,
    action: &'static str,
    conversation: ConversationId,
    details: Value,
) {
    if let Some(sink) = &context.audit {
        let app = &context.caller.app;
        let what =
            crate::audit::Audited::by_app_on(app, action, format!("conversation:{conversation}"))
                .with(details);
        sink.record(what).await;
    }
}

pub(super) async fn answer(context: &Context, request: Request) -> Result<ServerFrame, Error> {
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
            thread_id,
            mentions,
            mention_all,
            quote,
        } => {
            let mut body = MessageBody {
                text,
                data,
                recipients,
                actions,
                thread_id,
                mentions,
                mention_all,
                ..MessageBody::default()
            };
            if let Some(quoted) = quote {
                body.quote = Some(
                    messaging
                        .quote(caller, conversation_id, quoted, body.recipients.as_deref())
                        .await?,
                );
            }
            let m = messaging
                .send_with_files(caller, conversation_id, &client_id, body, &attachments)
                .await?;
            ServerFrame::ack(Ack {
                message: Some(MessageView::from(&m)),
                ..Ack::of(id)
            })
        }
        Request::Forward {
            id,
            conversation_id,
            client_id,
            from_conversation_id,
            message_id,
        } => {
            let m = messaging
                .forward(
                    caller,
                    from_conversation_id,
                    message_id,
                    conversation_id,
                    &client_id,
                )
                .await?;
            ServerFrame::ack(Ack {
                message: Some(MessageView::from(&m)),
                ..Ack::of(id)
            })
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
            let details = serde_json::json!({"title": title, "members": members,
                "all_users": all_users});
            let (c, created) = messaging
                .create_or_find_conversation(
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
            // (A key that names an existing conversation creates nothing.)
            if created {
                bot_changed(context, "conversation.created", c.id, details).await;
            }
            ServerFrame::ack(Ack {
                conversation: Some(ConversationView::of(&c, None)),
                ..Ack::of(id)
            })
        }
        Request::AddMembers {
            id,
            conversation_id,
            members,
        } => {
            let c = messaging
                .add_members(caller, conversation_id, &members)
                .await?;
            bot_changed(
                context,
                "conversation.members_added",
                conversation_id,
                serde_json::json!({"members": members}),
            )
            .await;
            ServerFrame::ack(Ack {
                conversation: Some(ConversationView::of(&c, None)),
                ..Ack::of(id)
            })
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
            bot_changed(
                context,
                "conversation.member_removed",
                conversation_id,
                serde_json::json!({"user_id": user_id}),
            )
            .await;
            ServerFrame::ack(Ack::of(id))
        }
        Request::OpenContext { id, context, title } => {
            let c = messaging.open_context(caller, &context, &title).await?;
            ServerFrame::ack(Ack {
                conversation: Some(ConversationView::of(&c, None)),
                ..Ack::of(id)
            })
        }
        Request::History {
            id,
            conversation_id,
            after,
            before,
            limit,
            thread_id,
            top_level,
        } => {
            let messages = messaging
                .history_in(
                    caller,
                    conversation_id,
                    thread_id,
                    top_level,
                    after,
                    before,
                    limit.unwrap_or(50),
                )
                .await?;
            let views = messaging.views(caller, conversation_id, &messages).await?;
            ServerFrame::History {
                id,
                conversation_id,
                messages: views,
            }
        }
        Request::Read {
            id,
            conversation_id,
            seq,
            thread_id,
        } => {
            let mark = match thread_id {
                Some(thread) => {
                    messaging
                        .mark_thread_read(caller, conversation_id, thread, seq)
                        .await?
                }
                None => messaging.mark_read(caller, conversation_id, seq).await?,
            };
            ServerFrame::ack(Ack {
                read_seq: Some(mark),
                ..Ack::of(id)
            })
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
            ServerFrame::ack(Ack {
                message: Some(MessageView::from(&m)),
                ..Ack::of(id)
            })
        }
        Request::Delete {
            id,
            conversation_id,
            message_id,
        } => {
            let m = messaging
                .change(caller, conversation_id, message_id, None)
                .await?;
            ServerFrame::ack(Ack {
                message: Some(MessageView::from(&m)),
                ..Ack::of(id)
            })
        }
        Request::React {
            id,
            conversation_id,
            message_id,
            emoji,
            remove,
        } => {
            let done = messaging
                .react(caller, conversation_id, message_id, &emoji, !remove)
                .await?;
            ServerFrame::ack(Ack {
                changed: Some(done.changed),
                count: done.count,
                ..Ack::of(id)
            })
        }
        Request::Pin {
            id,
            conversation_id,
            message_id,
            unpin,
        } => {
            let done = messaging
                .pin(caller, conversation_id, message_id, !unpin)
                .await?;
            ServerFrame::ack(Ack {
                changed: Some(done.changed),
                count: done.count,
                ..Ack::of(id)
            })
        }
        Request::Pins {
            id,
            conversation_id,
        } => {
            let (messages, app_only) = messaging.pinned(caller, conversation_id).await?;
            ServerFrame::Pins {
                id,
                conversation_id,
                messages,
                app_only,
            }
        }
        Request::ConversationSettings {
            id,
            conversation_id,
            pins_app_only,
            mention_all,
        } => {
            let settings = messaging
                .settings(caller, conversation_id, pins_app_only, mention_all)
                .await?;
            ServerFrame::ConversationSettings {
                id,
                conversation_id,
                pins_app_only: settings.pins_app_only,
                mention_all: settings.mention_all,
            }
        }
        Request::Follow {
            id,
            conversation_id,
            thread_id,
            unfollow,
        } => {
            messaging
                .follow(caller, conversation_id, thread_id, !unfollow)
                .await?;
            ServerFrame::ack(Ack::of(id))
        }
        Request::Mentions { id, limit } => ServerFrame::Mentions {
            messages: messaging.mentioned(caller, limit.unwrap_or(50)).await?,
            id,
        },
        Request::Threads { id, limit } => ServerFrame::Threads {
            threads: messaging.followed(caller, limit.unwrap_or(50)).await?,
            id,
        },
        Request::ReadBy {
            id,
            conversation_id,
            message_id,
        } => {
            let (users, truncated) = messaging
                .read_by(caller, conversation_id, message_id)
                .await?;
            ServerFrame::ReadBy {
                id,
                conversation_id,
                message_id,
                users,
                truncated,
            }
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
                .map(|e| ConversationView {
                    mentions: Some(e.mentions),
                    ..ConversationView::of(&e.conversation, Some(e.unread))
                })
                .collect();
            let next = (entries.len() == limit as usize)
                .then(|| {
                    entries.last().map(|e| {
                        format!("{}.{}", e.conversation.last_activity.0, e.conversation.id)
                    })
                })
                .flatten();
            ServerFrame::Conversations {
                id,
                conversations: views,
                next,
            }
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
            ServerFrame::ack(Ack::of(id))
        }
        Request::Typing {
            id,
            conversation_id,
        } => {
            let sent = messaging.typing(caller, conversation_id).await?;
            ServerFrame::ack(Ack {
                sent: Some(sent),
                ..Ack::of(id)
            })
        }
        Request::Presence { id, away, users } => {
            if let Some(away) = away {
                messaging.set_away(caller, away).await?;
            }
            let known = messaging.presence_of(caller, &users).await?;
            ServerFrame::Presence {
                id,
                users: known.into_iter().collect(),
            }
        }
        Request::Members {
            id,
            conversation_id,
        } => {
            let (members, truncated) = messaging.member_list(caller, conversation_id).await?;
            let members = members
                .into_iter()
                .map(|(user_id, name, presence)| Member {
                    user_id,
                    name,
                    presence,
                })
                .collect();
            ServerFrame::Members {
                id,
                members,
                truncated,
            }
        }
        Request::Search { id, query, limit } => {
            let found = messaging
                .search(caller, &query, limit.unwrap_or(50))
                .await?;
            let views = messaging.views_across(caller, &found).await?;
            ServerFrame::Search {
                id,
                messages: views,
            }
        }
        Request::Ping { id } => ServerFrame::Pong { id },
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
            ServerFrame::ack(Ack {
                call: Some(call),
                ice_servers: Some(calls.ice_servers(caller.participant())),
                ..Ack::of(id)
            })
        }
        Request::CallJoin {
            id,
            call_id,
            device_id,
        } => {
            check_device_id(device_id.as_deref())?;
            let (call, ice_servers) = calls.join(caller, device, call_id, device_id).await?;
            ServerFrame::ack(Ack {
                call: Some(call),
                ice_servers: Some(ice_servers),
                ..Ack::of(id)
            })
        }
        Request::CallDecline { id, call_id, busy } => {
            calls.decline(caller, call_id, busy).await?;
            ServerFrame::ack(Ack::of(id))
        }
        Request::CallLeave { id, call_id } => {
            calls.leave(caller, device, call_id).await?;
            ServerFrame::ack(Ack::of(id))
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
            ServerFrame::ack(Ack::of(id))
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
            ServerFrame::CallAnswer { id, call_id, sdp }
        }
        Request::CallSubscribe { id, call_id, sdp } => {
            let sdp = calls
                .negotiate(caller, device, call_id, Role::Subscribe, sdp, None)
                .await?;
            ServerFrame::CallAnswer { id, call_id, sdp }
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
            ServerFrame::ack(Ack::of(id))
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
            ServerFrame::ack(Ack::of(id))
        }
    })
}
