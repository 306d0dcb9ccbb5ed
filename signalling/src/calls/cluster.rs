//! Calls on a cluster: one owner per call, requests forwarded to it.
//!
//! A call lives in the machine of the node where it started (its owner),
//! whose id is written into the call's id (its first three bytes), so any
//! node knows where to send a request about it without asking anyone.
//! A request about a call another node owns (join, decline, leave,
//! signal, publish, subscribe, media, quality) goes to the owner over the
//! bus ([`Bus::request`]) with who asks (application, user, the token's
//! contexts) and from which device; the owner reads the application and
//! the user from the shared store, checks them as a session would, runs the
//! request in its machine and sends the answer back. What the machine then
//! says to devices goes through the bus like any event (a device id names
//! its node). The SFU sessions of a call are on the owner's SFU, which the
//! devices reach over UDP whatever node their WebSocket is on.
//!
//! A lost connection, a revocation and a removal from a conversation are
//! told to every node ([`Bus::notify_nodes`]): the owner of the call
//! concerned acts, the others find nothing to do.
//!
//! When the owner dies its calls end: every node looks every few seconds
//! for open calls whose owner it has not heard from for the bus's node
//! timeout, and records their end as `interrupted` (the record's
//! `client_id` makes that happen once, whichever node gets there first).

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use confer_sfu::api::Role;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bus::NodeHandlers;
use crate::config::IceServer;
use crate::error::{Code, Error};
use crate::ids::{AppId, CallId, ConversationId, UserId};
use crate::messaging::{Caller, Who};

use super::{CallView, Calls, Quality};

/// How often a node looks for calls whose owner is gone.
pub const ORPHAN_SWEEP: Duration = Duration::from_secs(2);

/// A call id owned by `node`: random, but for its first three bytes.
pub(super) fn call_id_on(node: u64) -> CallId {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[..3].copy_from_slice(&node.to_be_bytes()[5..]);
    CallId(uuid::Uuid::from_bytes(bytes))
}

/// The node that owns call `id` (on a cluster).
pub(super) fn owner_of(id: CallId) -> u64 {
    let b = id.0.as_bytes();
    u64::from_be_bytes([0, 0, 0, 0, 0, b[0], b[1], b[2]])
}

/// A request about a call, sent to its owner.
#[derive(Debug, Serialize, Deserialize)]
struct Forwarded {
    app: AppId,
    user: UserId,
    contexts: Vec<String>,
    device: u64,
    call: CallId,
    op: Op,
}

/// What the request asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Op {
    Join {
        key: Option<String>,
    },
    Decline {
        busy: bool,
    },
    Leave,
    Signal {
        to: UserId,
        signal: Value,
    },
    Negotiate {
        publish: bool,
        sdp: String,
        screen_mid: Option<String>,
    },
    Media {
        audio: Option<bool>,
        video: Option<bool>,
        screen: Option<bool>,
    },
    Quality {
        mid: Option<String>,
        quality: Quality,
    },
    /// The call as the asking user sees it (for its `welcome`).
    View,
}

/// The owner's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub(super) enum Answer {
    Joined {
        call: CallView,
        ice_servers: Vec<IceServer>,
    },
    Sdp {
        sdp: String,
    },
    View {
        call: Option<CallView>,
    },
    Done,
    Failed {
        code: Code,
        message: String,
    },
}

/// What every node is told.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
enum Notice {
    Disconnected {
        user: UserId,
        device: u64,
    },
    Revoked {
        user: UserId,
    },
    MemberRemoved {
        conversation: ConversationId,
        user: UserId,
    },
    CallOpened {
        call: CallId,
        asked: Vec<UserId>,
    },
    CallClosed {
        call: CallId,
    },
}

impl Answer {
    fn of(result: Result<Self, Error>) -> Self {
        result.unwrap_or_else(|e| Self::Failed {
            code: e.code(),
            message: e.to_string(),
        })
    }
}

impl Calls {
    /// Whether this node is part of a cluster (calls have owners).
    pub(super) fn clustered(&self) -> bool {
        self.bus.node() != 0
    }

    /// The owner of `id` when it is another node.
    pub(super) fn remote_owner(&self, id: CallId) -> Option<u64> {
        let owner = owner_of(id);
        (self.clustered() && owner != self.bus.node()).then_some(owner)
    }

    /// A new call id, owned by this node.
    pub(super) fn new_call_id(&self) -> CallId {
        if self.clustered() {
            call_id_on(self.bus.node())
        } else {
            CallId::random()
        }
    }

    /// Sends a request about call `id` to its owner `node`.
    pub(super) async fn forward(
        &self,
        node: u64,
        caller: &Caller,
        device: u64,
        id: CallId,
        op: Op,
    ) -> Result<Answer, Error> {
        let Who::User { user, contexts } = &caller.who else {
            return Err(Error::InvalidRequest(
                "calls are for users, not the application's bot".to_owned(),
            ));
        };
        let request = Forwarded {
            app: caller.app.id,
            user: user.id,
            contexts: contexts.clone(),
            device,
            call: id,
            op,
        };
        let body =
            serde_json::to_vec(&request).map_err(|e| Error::internal(anyhow::Error::from(e)))?;
        metrics::counter!("calls_forwarded_total").increment(1);
        let answer = self
            .bus
            .request(node, Bytes::from(body))
            .await
            .map_err(|e| {
                tracing::debug!(call = %id, node, error = %e, "the call's node did not answer");
                Error::NotFound("call")
            })?;
        match serde_json::from_slice(&answer)
            .map_err(|e| Error::internal(anyhow::Error::from(e)))?
        {
            Answer::Failed { code, message } => Err(Error::Conflict(code, message)),
            answer => Ok(answer),
        }
    }

    /// Takes requests and notices from the other nodes (call once, when
    /// the service is made).
    pub(super) fn listen_to_nodes(self: &Arc<Self>) {
        if !self.clustered() {
            return;
        }
        let requests: Weak<Self> = Arc::downgrade(self);
        let notices: Weak<Self> = Arc::downgrade(self);
        self.bus.on_node_message(NodeHandlers {
            request: Arc::new(move |body| {
                let calls = requests.clone();
                Box::pin(async move {
                    let answer = match calls.upgrade() {
                        Some(calls) => calls.serve(&body).await,
                        None => Answer::Failed {
                            code: Code::NotFound,
                            message: "call not found".to_owned(),
                        },
                    };
                    Bytes::from(serde_json::to_vec(&answer).unwrap_or_default())
                })
            }),
            notice: Arc::new(move |body| {
                let Some(calls) = notices.upgrade() else {
                    return;
                };
                let Ok(notice) = serde_json::from_slice::<Notice>(&body) else {
                    return;
                };
                tokio::spawn(async move {
                    match notice {
                        Notice::Disconnected { user, device } => {
                            calls.disconnected_here(user, device).await;
                        }
                        Notice::Revoked { user } => calls.revoke_here(user).await,
                        Notice::MemberRemoved { conversation, user } => {
                            calls.member_removed_here(conversation, user).await;
                        }
                        Notice::CallOpened { call, asked } => calls.remote_opened(call, asked),
                        Notice::CallClosed { call } => calls.remote_closed(call),
                    }
                });
            }),
        });
    }

    /// Tells the other nodes (their calls' owners) of a lost connection.
    pub(super) fn tell_nodes_disconnected(&self, user: UserId, device: u64) {
        self.tell_nodes(&Notice::Disconnected { user, device });
    }

    /// Tells the other nodes of a revocation.
    pub(super) fn tell_nodes_revoked(&self, user: UserId) {
        self.tell_nodes(&Notice::Revoked { user });
    }

    /// Tells the other nodes of a removal from a conversation.
    pub(super) fn tell_nodes_removed(&self, conversation: ConversationId, user: UserId) {
        self.tell_nodes(&Notice::MemberRemoved { conversation, user });
    }

    /// Tells the other nodes of a call this node holds now.
    pub(super) fn tell_nodes_opened(&self, call: CallId, asked: Vec<UserId>) {
        self.tell_nodes(&Notice::CallOpened { call, asked });
    }

    /// Tells the other nodes that a call this node held ended.
    pub(super) fn tell_nodes_closed(&self, call: CallId) {
        self.tell_nodes(&Notice::CallClosed { call });
    }

    fn remote_calls(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<CallId, Vec<UserId>>> {
        self.remote_calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remote_opened(&self, call: CallId, asked: Vec<UserId>) {
        if self.remote_owner(call).is_some() {
            self.remote_calls().insert(call, asked);
        }
    }

    fn remote_closed(&self, call: CallId) {
        self.remote_calls().remove(&call);
    }

    /// The calls `caller` was asked to, on this node and (on a cluster) on
    /// the others, each as its owner sees it now.
    pub async fn active_anywhere(&self, caller: &Caller) -> Vec<CallView> {
        let Who::User { user, .. } = &caller.who else {
            return Vec::new();
        };
        let user = user.id;
        let mut calls = self.active_for(user);
        let remote: Vec<CallId> = self
            .remote_calls()
            .iter()
            .filter(|(_, asked)| asked.contains(&user))
            .map(|(id, _)| *id)
            .collect();
        for id in remote {
            let Some(node) = self.remote_owner(id) else {
                continue;
            };
            match self.forward(node, caller, 0, id, Op::View).await {
                Ok(Answer::View { call: Some(call) }) => calls.push(call),
                Ok(_) => {}
                // Its node is gone: so is the call.
                Err(_) => self.remote_closed(id),
            }
        }
        calls
    }

    fn tell_nodes(&self, notice: &Notice) {
        if self.clustered()
            && let Ok(body) = serde_json::to_vec(notice)
        {
            self.bus.notify_nodes(Bytes::from(body));
        }
    }

    /// Runs a request another node forwarded: who asks is read from the
    /// store and checked as a session checks its caller.
    async fn serve(&self, body: &[u8]) -> Answer {
        let request: Forwarded = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return Answer::Failed {
                    code: Code::InvalidRequest,
                    message: format!("a forwarded call request does not parse: {e}"),
                };
            }
        };
        Answer::of(self.serve_request(request).await)
    }

    async fn serve_request(&self, request: Forwarded) -> Result<Answer, Error> {
        let users = self.messaging.users();
        let app = users
            .application(request.app)
            .await?
            .filter(|a| a.unregistered_at.is_none())
            .ok_or(Error::ApplicationUnregistered)?;
        let user = users
            .user(request.app, request.user)
            .await?
            .ok_or(Error::NotFound("user"))?;
        if user.locked {
            return Err(Error::UserLocked);
        }
        let caller = Caller {
            app,
            who: Who::User {
                user,
                contexts: request.contexts,
            },
        };
        let (device, id) = (request.device, request.call);
        if self.remote_owner(id).is_some() {
            return Err(Error::NotFound("call"));
        }
        Ok(match request.op {
            Op::Join { key } => {
                let (call, ice_servers) = self.join(&caller, device, id, key).await?;
                Answer::Joined { call, ice_servers }
            }
            Op::Decline { busy } => {
                self.decline(&caller, id, busy).await?;
                Answer::Done
            }
            Op::Leave => {
                self.leave(&caller, device, id).await?;
                Answer::Done
            }
            Op::Signal { to, signal } => {
                self.signal(&caller, device, id, to, signal).await?;
                Answer::Done
            }
            Op::Negotiate {
                publish,
                sdp,
                screen_mid,
            } => {
                let role = if publish {
                    Role::Publish
                } else {
                    Role::Subscribe
                };
                let sdp = self
                    .negotiate(&caller, device, id, role, sdp, screen_mid)
                    .await?;
                Answer::Sdp { sdp }
            }
            Op::Media {
                audio,
                video,
                screen,
            } => {
                self.set_media(&caller, device, id, audio, video, screen)
                    .await?;
                Answer::Done
            }
            Op::Quality { mid, quality } => {
                self.set_quality(&caller, device, id, mid, quality).await?;
                Answer::Done
            }
            Op::View => Answer::View {
                call: self
                    .active_for(caller.participant())
                    .into_iter()
                    .find(|c| c.id == id),
            },
        })
    }

    /// On a cluster: ends, as `interrupted`, the open calls whose owner
    /// has gone silent. Runs as long as the process; the first look waits
    /// until the other nodes have had time to be heard.
    pub async fn sweep_orphans(self: Arc<Self>) {
        if !self.clustered() {
            return;
        }
        tokio::time::sleep(crate::bus::NODE_TIMEOUT).await;
        let mut tick = tokio::time::interval(ORPHAN_SWEEP);
        loop {
            tick.tick().await;
            let open = match self.messaging.store().open_calls().await {
                Ok(open) => open,
                Err(e) => {
                    tracing::debug!(error = %e, "listing open calls failed");
                    continue;
                }
            };
            let live = self.bus.live_nodes();
            self.remote_calls()
                .retain(|id, _| live.contains(&owner_of(*id)));
            for (id, app, conversation, started_at) in open {
                let owner = owner_of(id);
                if live.contains(&owner) {
                    continue;
                }
                tracing::warn!(call = %id, owner, "the node of a call is gone: the call ends, interrupted");
                metrics::counter!("calls_orphaned_total").increment(1);
                if let Err(e) = self
                    .record_interrupted(
                        id,
                        app,
                        conversation,
                        started_at,
                        "the server of the call stopped",
                    )
                    .await
                {
                    tracing::warn!(call = %id, error = %e, "recording an orphaned call failed");
                }
            }
        }
    }
}
