//! Calls: ringing, joining and leaving, and the choice of topology.
//!
//! A call belongs to a conversation. Starting one makes every other member
//! ring (on every device); each answers by joining on one device, by
//! declining (or busy), or misses it when ringing times out. Below
//! `conference_server_based_threshold` joined participants the media goes
//! peer-to-peer: signalling relays SDP and ICE candidates between the two
//! devices (`call_signal`) and hands them the configured ICE servers. From
//! the threshold the call goes through the SFU: each joined device opens a
//! publish and a subscribe session over its WebSocket (`call_publish`,
//! `call_subscribe`), driven through [`SfuControl`]. A peer-to-peer call
//! that reaches the threshold is upgraded: every device is told the new
//! topology and moves its media to the SFU without leaving the call.
//!
//! The live state of calls is in memory on this node (a restart ends
//! them); what lasts is in the conversation: a message when a call starts
//! and one when it ends, with its duration and participants.
//!
//! Locking: one mutex over all calls, held only for the bookkeeping of one
//! request, never across an await; what follows from a change (events,
//! SFU commands, messages) is collected as [`Effect`]s and carried out
//! after the lock is released.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use confer_sfu::api::Preference;
use confer_sfu::api::{ParticipantId, Role, RoomId, SfuControl, SfuError, SfuEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bus::Bus;
use crate::config::{CallConfig, IceServer};
use crate::error::{Code, Error};
use crate::ids::{CallId, Clock, ConversationId, Timestamp, UserId};
use crate::messaging::{Caller, Messaging, Who};
use crate::store::messaging::MessageBody;

/// Audio only, or audio and video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallMedia {
    /// Audio only.
    Audio,
    /// Audio and video.
    Video,
}

/// How media flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// Directly between the two devices.
    P2p,
    /// Through the SFU.
    Sfu,
}

/// A member's part in a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Its devices ring.
    Ringing,
    /// In the call on one device.
    Joined,
    /// Said no.
    Declined,
    /// In another call, or said busy.
    Busy,
    /// Did not answer in time.
    Missed,
    /// Was in the call and left it.
    Left,
}

/// What a subscriber wants of a video slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// Small picture: the low layer.
    Thumbnail,
    /// Large picture: the highest layer the bandwidth allows.
    Spotlight,
    /// No video.
    Paused,
}

impl Quality {
    fn preference(self) -> Preference {
        match self {
            Self::Thumbnail => Preference {
                max_height: Some(180),
                paused: false,
            },
            Self::Spotlight => Preference::default(),
            Self::Paused => Preference {
                max_height: None,
                paused: true,
            },
        }
    }
}

/// One participant as clients see it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ParticipantView {
    /// The user.
    pub user_id: UserId,
    /// Its state.
    pub state: MemberState,
    /// Microphone on.
    pub audio: bool,
    /// Camera on.
    pub video: bool,
    /// Sharing its screen.
    pub screen: bool,
}

/// A call as clients see it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CallView {
    /// Id.
    pub id: CallId,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Audio or video.
    pub media: CallMedia,
    /// Current topology.
    pub topology: Topology,
    /// Who started it.
    pub started_by: UserId,
    /// RFC 3339 start time.
    pub started_at: String,
    /// `active` or `ended`.
    pub state: &'static str,
    /// Why it ended: `completed`, `cancelled`, `declined`, `busy` or `missed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Every member asked to the call.
    pub participants: Vec<ParticipantView>,
}

#[derive(Debug)]
struct Member {
    state: MemberState,
    /// The connection it joined on.
    device: Option<u64>,
    /// Join order (the earlier of two peer-to-peer devices makes the offer).
    joined_seq: u64,
    ever_joined: bool,
    audio: bool,
    video: bool,
    screen: bool,
    publish: Option<ParticipantId>,
    subscribe: Option<ParticipantId>,
    /// The mid of its screen-share track in its publish session.
    screen_mid: Option<String>,
    /// What each slot of its subscribe session shows (user, screen), to
    /// tell a device that comes back after a lost connection.
    slots: BTreeMap<String, (Option<UserId>, bool)>,
    /// The client's own name for its device (`device_id` of `call_join`):
    /// a join with the same name is that client coming back.
    device_key: Option<String>,
    /// Counts lost connections, so that a grace timer only acts on the
    /// loss it was started for.
    lost: u64,
    /// The topology its current device was last told.
    told: Option<Topology>,
}

impl Member {
    fn new(state: MemberState, video: bool) -> Self {
        Self {
            state,
            device: None,
            joined_seq: 0,
            ever_joined: false,
            audio: true,
            video,
            screen: false,
            publish: None,
            subscribe: None,
            screen_mid: None,
            slots: BTreeMap::new(),
            device_key: None,
            lost: 0,
            told: None,
        }
    }
}

#[derive(Debug)]
struct Call {
    id: CallId,
    caller: Caller,
    conversation_id: ConversationId,
    media: CallMedia,
    topology: Topology,
    started_by: UserId,
    started_at: Timestamp,
    members: BTreeMap<UserId, Member>,
    next_seq: u64,
    /// The two devices of a peer-to-peer call, once both joined.
    pair: Option<(UserId, UserId)>,
}

impl Call {
    fn view(&self, reason: Option<&'static str>) -> CallView {
        CallView {
            id: self.id,
            conversation_id: self.conversation_id,
            media: self.media,
            topology: self.topology,
            started_by: self.started_by,
            started_at: self.started_at.to_rfc3339(),
            state: if reason.is_some() { "ended" } else { "active" },
            reason,
            participants: self
                .members
                .iter()
                .map(|(u, m)| ParticipantView {
                    user_id: *u,
                    state: m.state,
                    audio: m.audio,
                    video: m.video,
                    screen: m.screen,
                })
                .collect(),
        }
    }

    fn joined(&self) -> Vec<UserId> {
        let mut joined: Vec<(u64, UserId)> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == MemberState::Joined)
            .map(|(u, m)| (m.joined_seq, *u))
            .collect();
        joined.sort_unstable();
        joined.into_iter().map(|(_, u)| u).collect()
    }

    fn count(&self, state: MemberState) -> usize {
        self.members.values().filter(|m| m.state == state).count()
    }

    fn device(&self, user: UserId) -> Option<u64> {
        self.members
            .get(&user)
            .filter(|m| m.state == MemberState::Joined)
            .and_then(|m| m.device)
    }

    fn reason(&self) -> &'static str {
        let others_joined = self
            .members
            .iter()
            .any(|(u, m)| *u != self.started_by && m.ever_joined);
        let starter_left = self
            .members
            .get(&self.started_by)
            .is_some_and(|m| m.state == MemberState::Left);
        if others_joined {
            "completed"
        } else if starter_left {
            "cancelled"
        } else if self.count(MemberState::Declined) > 0 {
            "declined"
        } else if self.count(MemberState::Busy) > 0 {
            "busy"
        } else {
            "missed"
        }
    }
}

/// How a `call_join` changes the member's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceChange {
    /// It was not in the call.
    Joined,
    /// Joined on this connection already.
    Same,
    /// The same client on a new connection.
    Resumed,
    /// Another device (the one it was on, if still connected).
    Moved(Option<u64>),
}

/// Something to do once the lock is released.
#[derive(Debug)]
enum Effect {
    /// The call's state to every member (all their devices), and the
    /// call's conversation.
    Snapshot(Vec<UserId>, Arc<str>, ConversationId),
    /// An event for one device.
    Device(UserId, u64, Value),
    /// End an SFU session.
    SfuLeave(ParticipantId),
    /// Close the call's SFU room.
    SfuClose(RoomId),
    /// Record the end in the conversation.
    Ended(Box<Ended>),
}

/// A call that ended, to be recorded.
#[derive(Debug)]
struct Ended {
    caller: Caller,
    id: CallId,
    conversation: ConversationId,
    started_at: Timestamp,
    reason: &'static str,
    participants: Vec<UserId>,
}

#[derive(Debug, Default)]
struct State {
    calls: HashMap<CallId, Call>,
    /// The call each user is joined to: a user is in one call at a time.
    joined: HashMap<UserId, CallId>,
    /// SFU sessions: their call, user and role.
    sessions: HashMap<ParticipantId, (CallId, UserId, Role)>,
    /// Conversations whose call is being recorded as started.
    starting: std::collections::HashSet<ConversationId>,
}

/// The call service.
#[derive(Debug)]
pub struct Calls {
    config: CallConfig,
    messaging: Arc<Messaging>,
    bus: Arc<dyn Bus>,
    sfu: Arc<dyn SfuControl>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl Calls {
    /// The service; [`Self::pump_sfu_events`] must run for in-call
    /// features (slots, speaker, dynacast) to reach clients.
    #[must_use]
    pub fn new(
        config: CallConfig,
        messaging: Arc<Messaging>,
        bus: Arc<dyn Bus>,
        sfu: Arc<dyn SfuControl>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            messaging,
            bus,
            sfu,
            clock,
            state: Mutex::new(State::default()),
        })
    }

    /// The STUN/TURN servers `user` uses for peer-to-peer media.
    #[must_use]
    pub fn ice_servers(&self, user: UserId) -> Vec<IceServer> {
        ice_servers_for(&self.config, user)
    }

    /// The SFU the calls use.
    #[must_use]
    pub fn sfu(&self) -> &Arc<dyn SfuControl> {
        &self.sfu
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, Error> {
        self.state
            .lock()
            .map_err(|_| Error::internal(anyhow::anyhow!("calls lock poisoned")))
    }

    /// Active calls `user` was asked to, for a connection that starts.
    #[must_use]
    pub fn active_for(&self, user: UserId) -> Vec<CallView> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        state
            .calls
            .values()
            .filter(|c| c.members.contains_key(&user))
            .map(|c| c.view(None))
            .collect()
    }

    /// Starts a call in a conversation; the caller joins it on `device`
    /// and every other member rings (or is busy in another call).
    ///
    /// # Errors
    /// `forbidden` for a non-member; `busy` when the caller is in another
    /// call; `call_in_progress` when the conversation has one.
    pub async fn start(
        self: &Arc<Self>,
        caller: &Caller,
        device: u64,
        conversation_id: ConversationId,
        media: CallMedia,
        device_key: Option<String>,
    ) -> Result<CallView, Error> {
        let me = user_of(caller)?;
        let members = self.messaging.members_of(caller, conversation_id).await?;
        let now = self.clock.now();
        let id = CallId::random();
        {
            // Reserve: the caller is busy and the conversation has a call
            // from now on, while the start is recorded.
            let mut state = self.lock()?;
            if state.joined.contains_key(&me) {
                return Err(Error::Conflict(
                    Code::Busy,
                    "you are in another call: leave it first".to_owned(),
                ));
            }
            if let Some(c) = state
                .calls
                .values()
                .find(|c| c.conversation_id == conversation_id && c.caller.app.id == caller.app.id)
            {
                return Err(Error::Conflict(
                    Code::CallInProgress,
                    format!("call {} is going on in this conversation: join it", c.id),
                ));
            }
            if !state.starting.insert(conversation_id) {
                return Err(Error::Conflict(
                    Code::CallInProgress,
                    "a call is starting in this conversation: join it".to_owned(),
                ));
            }
            state.joined.insert(me, id);
        }
        // The start is recorded before anyone hears of the call, and the
        // call is marked open so that a restart records its end.
        let body = MessageBody {
            text: match media {
                CallMedia::Audio => "Audio call".to_owned(),
                CallMedia::Video => "Video call".to_owned(),
            },
            data: Some(json!({"call": {"id": id, "event": "started", "media": media}})),
            recipients: None,
            actions: Vec::new(),
            attachments: Vec::new(),
        };
        let recorded = match self
            .messaging
            .send(caller, conversation_id, &format!("call-{id}-start"), body)
            .await
        {
            Ok(_) => self
                .messaging
                .store()
                .set_call_open(id, Some((caller.app.id, conversation_id, now)))
                .await
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        let (view, effects) = {
            let mut state = self.lock()?;
            state.starting.remove(&conversation_id);
            if let Err(e) = recorded {
                state.joined.remove(&me);
                return Err(e);
            }
            let mut call = Call {
                id,
                caller: caller.clone(),
                conversation_id,
                media,
                topology: Topology::P2p,
                started_by: me,
                started_at: now,
                members: BTreeMap::new(),
                next_seq: 1,
                pair: None,
            };
            for user in members.iter().copied().filter(|u| *u != me) {
                let busy = state.joined.contains_key(&user);
                call.members.insert(
                    user,
                    Member::new(
                        if busy {
                            MemberState::Busy
                        } else {
                            MemberState::Ringing
                        },
                        media == CallMedia::Video,
                    ),
                );
            }
            let mut starter = Member::new(MemberState::Joined, media == CallMedia::Video);
            starter.device = Some(device);
            starter.device_key = device_key;
            starter.ever_joined = true;
            if state.joined.get(&me) != Some(&id) {
                // Locked or removed while the start was being recorded.
                starter.state = MemberState::Left;
                starter.device = None;
            }
            call.members.insert(me, starter);
            let view = call.view(None);
            state.calls.insert(id, call);
            let mut effects = Vec::new();
            snapshot(&state, id, &mut effects);
            check_end(&mut state, id, &mut effects);
            (view, effects)
        };
        self.run(effects).await;
        let this = self.clone();
        let timeout = Duration::from_secs(self.config.ring_timeout_secs);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            this.ring_expired(id).await;
        });
        Ok(view)
    }

    /// Joins a call (answering its ring, or later) on `device`.
    ///
    /// # Errors
    /// `not_found`; `forbidden` for a non-member; `busy` when in another
    /// call; `call_full` at the member limit.
    pub async fn join(
        &self,
        caller: &Caller,
        device: u64,
        id: CallId,
        device_key: Option<String>,
    ) -> Result<(CallView, Vec<IceServer>), Error> {
        let me = user_of(caller)?;
        let conversation = self.conversation_of(caller, id)?;
        // Membership is checked now, not when the call started.
        self.messaging.readable(caller, conversation).await?;
        let effects;
        let view;
        {
            let mut state = self.lock()?;
            if state.joined.get(&me).is_some_and(|c| *c != id) {
                return Err(Error::Conflict(
                    Code::Busy,
                    "you are in another call: leave it first".to_owned(),
                ));
            }
            let limit = self.config.conference_server_based_member_limit;
            let call = state.calls.get_mut(&id).ok_or(Error::NotFound("call"))?;
            let mut out = Vec::new();
            let already = call
                .members
                .get(&me)
                .is_some_and(|m| m.state == MemberState::Joined);
            if !already && call.count(MemberState::Joined) >= limit {
                return Err(Error::Conflict(
                    Code::CallFull,
                    format!("the call has its limit of {limit} participants"),
                ));
            }
            let seq = call.next_seq;
            call.next_seq += 1;
            let member = call
                .members
                .entry(me)
                .or_insert_with(|| Member::new(MemberState::Ringing, false));
            let change = if already && member.device == Some(device) {
                // Joined on this very connection already: nothing to do.
                DeviceChange::Same
            } else if already && device_key.is_some() && member.device_key == device_key {
                // The same client back on a new connection: its media
                // sessions went on meanwhile and stay.
                DeviceChange::Resumed
            } else if already {
                DeviceChange::Moved(member.device)
            } else {
                member.joined_seq = seq;
                member.video = call.media == CallMedia::Video;
                DeviceChange::Joined
            };
            if !matches!(change, DeviceChange::Same) {
                member.told = None;
            }
            member.state = MemberState::Joined;
            member.device = Some(device);
            member.device_key = device_key;
            member.ever_joined = true;
            let replay: Vec<Value> = member
                .slots
                .iter()
                .map(|(mid, (user, screen))| slot_event(id, mid, *user, *screen))
                .collect();
            state.joined.insert(me, id);
            match change {
                DeviceChange::Same => {}
                DeviceChange::Joined => retopology(&mut state, id, &self.config, &mut out, None),
                DeviceChange::Resumed => {
                    retopology(&mut state, id, &self.config, &mut out, Some((me, false)));
                    // Topology first, then what each slot shows.
                    out.extend(replay.into_iter().map(|e| Effect::Device(me, device, e)));
                }
                DeviceChange::Moved(old) => {
                    // Another device takes over: the old one's media ends
                    // and it is told so.
                    end_media(&mut state, id, me, &mut out);
                    if let Some(old) = old {
                        out.push(Effect::Device(
                            me,
                            old,
                            json!({"kind": "call_moved", "call_id": id}),
                        ));
                    }
                    retopology(&mut state, id, &self.config, &mut out, Some((me, true)));
                }
            }
            snapshot(&state, id, &mut out);
            view = state.calls.get(&id).map(|c| c.view(None));
            effects = out;
        }
        self.run(effects).await;
        let view = view.ok_or(Error::NotFound("call"))?;
        Ok((view, ice_servers_for(&self.config, me)))
    }

    /// Declines a ringing call, or says busy.
    ///
    /// # Errors
    /// `not_found`; `not_ringing` when the caller's devices do not ring.
    pub async fn decline(&self, caller: &Caller, id: CallId, busy: bool) -> Result<(), Error> {
        let me = user_of(caller)?;
        let effects = {
            let mut state = self.lock()?;
            let call = state
                .calls
                .get_mut(&id)
                .filter(|c| c.caller.app.id == caller.app.id)
                .ok_or(Error::NotFound("call"))?;
            let member = call
                .members
                .get_mut(&me)
                .filter(|m| m.state == MemberState::Ringing)
                .ok_or_else(|| {
                    Error::Conflict(
                        Code::NotRinging,
                        "this call is not ringing for you".to_owned(),
                    )
                })?;
            member.state = if busy {
                MemberState::Busy
            } else {
                MemberState::Declined
            };
            let mut out = Vec::new();
            snapshot(&state, id, &mut out);
            check_end(&mut state, id, &mut out);
            out
        };
        self.run(effects).await;
        Ok(())
    }

    /// Leaves (hangs up) a call.
    ///
    /// # Errors
    /// `not_found`; `not_joined`.
    pub async fn leave(&self, caller: &Caller, device: u64, id: CallId) -> Result<(), Error> {
        let me = user_of(caller)?;
        let effects = {
            let mut state = self.lock()?;
            if state
                .calls
                .get(&id)
                .is_none_or(|c| c.caller.app.id != caller.app.id)
            {
                return Err(Error::NotFound("call"));
            }
            if state.joined.get(&me) != Some(&id) {
                return Err(Error::Conflict(
                    Code::NotJoined,
                    "you are not in this call".to_owned(),
                ));
            }
            let elsewhere = state
                .calls
                .get(&id)
                .and_then(|c| c.members.get(&me))
                .and_then(|m| m.device)
                .is_some_and(|d| d != device);
            if elsewhere {
                return Err(Error::Conflict(
                    Code::NotJoined,
                    "the call is on another of your devices: join it here first".to_owned(),
                ));
            }
            let mut out = Vec::new();
            depart(&mut state, id, me, &self.config, &mut out);
            out
        };
        self.run(effects).await;
        Ok(())
    }

    /// A connection closed. If its user was in a call on it, the call
    /// keeps its place (and its media sessions, which do not depend on the
    /// WebSocket) for `reconnect_grace_secs`: a `call_join` from a new
    /// connection within that time takes it back; otherwise it leaves.
    pub async fn disconnected(self: &Arc<Self>, user: UserId, device: u64) {
        let call = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let Some(id) = state.joined.get(&user).copied() else {
                return;
            };
            let Some(member) = state
                .calls
                .get_mut(&id)
                .and_then(|c| c.members.get_mut(&user))
                .filter(|m| m.device == Some(device))
            else {
                return;
            };
            member.device = None;
            member.lost += 1;
            (id, member.lost)
        };
        let (call, generation) = call;
        let this = self.clone();
        let grace = Duration::from_secs(self.config.reconnect_grace_secs);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let effects = {
                let Ok(mut state) = this.state.lock() else {
                    return;
                };
                let gone = state.joined.get(&user) == Some(&call)
                    && state
                        .calls
                        .get(&call)
                        .and_then(|c| c.members.get(&user))
                        .is_some_and(|m| m.device.is_none() && m.lost == generation);
                if !gone {
                    return;
                }
                let mut out = Vec::new();
                depart(&mut state, call, user, &this.config, &mut out);
                out
            };
            this.run(effects).await;
        });
    }

    /// `user` was locked or its application unregistered: it leaves its
    /// call at once (no grace period), and its media sessions end.
    pub async fn revoke(&self, user: UserId) {
        let effects = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let Some(id) = state.joined.get(&user).copied() else {
                return;
            };
            let mut out = Vec::new();
            depart(&mut state, id, user, &self.config, &mut out);
            out
        };
        self.run(effects).await;
    }

    /// `user` is no longer a member of `conversation`: it is dropped from
    /// the conversation's call.
    pub async fn member_removed(&self, conversation: ConversationId, user: UserId) {
        let effects = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let Some(id) = state
                .calls
                .values()
                .find(|c| c.conversation_id == conversation)
                .map(|c| c.id)
            else {
                return;
            };
            let mut out = Vec::new();
            if state.joined.get(&user) == Some(&id) {
                // Its devices see it leave, then hear no more of the call.
                depart(&mut state, id, user, &self.config, &mut out);
            } else if let Some(m) = state
                .calls
                .get_mut(&id)
                .and_then(|c| c.members.get_mut(&user))
            {
                // Ringing stops.
                if m.state == MemberState::Ringing {
                    m.state = MemberState::Missed;
                }
                snapshot(&state, id, &mut out);
                check_end(&mut state, id, &mut out);
            }
            if let Some(call) = state.calls.get_mut(&id) {
                call.members.remove(&user);
            }
            out
        };
        self.run(effects).await;
    }

    async fn ring_expired(&self, id: CallId) {
        let effects = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let Some(call) = state.calls.get_mut(&id) else {
                return;
            };
            let mut changed = false;
            for m in call.members.values_mut() {
                if m.state == MemberState::Ringing {
                    m.state = MemberState::Missed;
                    changed = true;
                }
            }
            let mut out = Vec::new();
            if changed {
                snapshot(&state, id, &mut out);
                check_end(&mut state, id, &mut out);
            }
            out
        };
        self.run(effects).await;
    }

    /// Relays a peer-to-peer signal (SDP or ICE candidate) to the other
    /// device of the call.
    ///
    /// # Errors
    /// `not_joined`; `wrong_topology` when the call is not peer-to-peer;
    /// `not_found` when `to` is not the peer.
    pub async fn signal(
        &self,
        caller: &Caller,
        device: u64,
        id: CallId,
        to: UserId,
        signal: Value,
    ) -> Result<(), Error> {
        let me = user_of(caller)?;
        let target = {
            let state = self.lock()?;
            let call = joined_call(&state, caller, me, device, id)?;
            if call.topology != Topology::P2p {
                return Err(Error::Conflict(
                    Code::WrongTopology,
                    "the call goes through the SFU: use call_publish and call_subscribe".to_owned(),
                ));
            }
            if to == me || call.pair.is_none_or(|(a, b)| to != a && to != b) {
                return Err(Error::NotFound("peer"));
            }
            call.device(to).ok_or(Error::NotFound("peer"))?
        };
        let event = json!({"kind": "call_signal", "call_id": id, "from": me, "signal": signal});
        self.bus
            .publish_to(to, target, Arc::from(event.to_string()));
        Ok(())
    }

    /// Opens or renegotiates the caller's SFU session of `role` with an
    /// SDP offer; returns the answer.
    ///
    /// # Errors
    /// `not_joined`; `wrong_topology` when the call is peer-to-peer;
    /// `invalid_request` for an unusable offer; `media_unavailable`.
    pub async fn negotiate(
        &self,
        caller: &Caller,
        device: u64,
        id: CallId,
        role: Role,
        sdp: String,
        screen_mid: Option<String>,
    ) -> Result<String, Error> {
        let me = user_of(caller)?;
        let existing = {
            let mut state = self.lock()?;
            let call = joined_call(&state, caller, me, device, id)?;
            if call.topology != Topology::Sfu {
                return Err(Error::Conflict(
                    Code::WrongTopology,
                    "the call is peer-to-peer: use call_signal".to_owned(),
                ));
            }
            let call = state.calls.get_mut(&id).ok_or(Error::NotFound("call"))?;
            let member = call.members.get_mut(&me).ok_or(Error::NotFound("call"))?;
            if role == Role::Publish && screen_mid.is_some() {
                member.screen_mid = screen_mid;
            }
            match role {
                Role::Publish => (member.publish, member.subscribe),
                Role::Subscribe => (member.subscribe, member.publish),
            }
        };
        let (existing, linked) = existing;
        if let Some(session) = existing {
            match self.sfu.renegotiate(session, sdp.clone()).await {
                Ok(answer) => return Ok(answer),
                // The session ended without us hearing of it (a lost
                // event): forget it and open a new one.
                Err(SfuError::UnknownParticipant) => {
                    let mut state = self.lock()?;
                    state.sessions.remove(&session);
                    if let Some(slot) = state
                        .calls
                        .get_mut(&id)
                        .and_then(|c| c.members.get_mut(&me))
                        .map(|m| session_slot(m, role))
                        && *slot == Some(session)
                    {
                        *slot = None;
                    }
                }
                Err(e) => return Err(sfu_error(e)),
            }
        }
        // Registered before the SFU hears of it, so that its very first
        // events (its slots) find their device.
        let participant = ParticipantId::random();
        {
            let mut state = self.lock()?;
            joined_call(&state, caller, me, device, id)?;
            let member = state
                .calls
                .get_mut(&id)
                .and_then(|c| c.members.get_mut(&me))
                .ok_or(Error::NotFound("call"))?;
            let slot = session_slot(member, role);
            if slot.is_some() {
                return Err(Error::Conflict(
                    Code::Negotiating,
                    "another offer for this session is being answered".to_owned(),
                ));
            }
            *slot = Some(participant);
            state.sessions.insert(participant, (id, me, role));
        }
        let room = RoomId::from(id.to_string().as_str());
        let joined = self
            .sfu
            .join_as(&room, participant, role, sdp, linked)
            .await;
        // The member may have left, moved or lost the call meanwhile.
        let kept = {
            let mut state = self.lock()?;
            let still = joined_call(&state, caller, me, device, id).is_ok();
            let member = state
                .calls
                .get_mut(&id)
                .and_then(|c| c.members.get_mut(&me));
            let kept = member.is_some_and(|m| {
                let slot = session_slot(m, role);
                let ours = *slot == Some(participant);
                if ours && (joined.is_err() || !still) {
                    *slot = None;
                }
                ours && still && joined.is_ok()
            });
            if !kept {
                state.sessions.remove(&participant);
            }
            kept
        };
        let joined = joined.map_err(sfu_error)?;
        if !kept {
            let _ = self.sfu.leave(participant).await;
            return Err(Error::Conflict(
                Code::NotJoined,
                "you left the call while the SFU answered".to_owned(),
            ));
        }
        Ok(joined.answer)
    }

    /// The caller's microphone, camera and screen-share state.
    ///
    /// # Errors
    /// `not_joined`.
    pub async fn set_media(
        &self,
        caller: &Caller,
        device: u64,
        id: CallId,
        audio: Option<bool>,
        video: Option<bool>,
        screen: Option<bool>,
    ) -> Result<(), Error> {
        let me = user_of(caller)?;
        let effects = {
            let mut state = self.lock()?;
            joined_call(&state, caller, me, device, id)?;
            if let Some(m) = state
                .calls
                .get_mut(&id)
                .and_then(|c| c.members.get_mut(&me))
            {
                m.audio = audio.unwrap_or(m.audio);
                m.video = video.unwrap_or(m.video);
                m.screen = screen.unwrap_or(m.screen);
            }
            let mut out = Vec::new();
            snapshot(&state, id, &mut out);
            out
        };
        self.run(effects).await;
        Ok(())
    }

    /// What the caller wants of one received video slot (`mid`), or of
    /// all of them.
    ///
    /// # Errors
    /// `not_joined`; `wrong_topology` without an SFU subscribe session.
    pub async fn set_quality(
        &self,
        caller: &Caller,
        device: u64,
        id: CallId,
        mid: Option<String>,
        quality: Quality,
    ) -> Result<(), Error> {
        let me = user_of(caller)?;
        let session = {
            let state = self.lock()?;
            let call = joined_call(&state, caller, me, device, id)?;
            call.members
                .get(&me)
                .and_then(|m| m.subscribe)
                .ok_or_else(|| {
                    Error::Conflict(
                        Code::WrongTopology,
                        "no SFU subscribe session: send call_subscribe first".to_owned(),
                    )
                })?
        };
        let preference = quality.preference();
        match mid {
            Some(mid) => self.sfu.set_slot_preference(session, mid, preference).await,
            None => self.sfu.set_preference(session, preference).await,
        }
        .map_err(sfu_error)
    }

    fn conversation_of(&self, caller: &Caller, id: CallId) -> Result<ConversationId, Error> {
        let state = self.lock()?;
        state
            .calls
            .get(&id)
            .filter(|c| c.caller.app.id == caller.app.id)
            .map(|c| c.conversation_id)
            .ok_or(Error::NotFound("call"))
    }

    async fn run(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Snapshot(users, payload, conversation) => {
                    // A session shows it only while it may see the
                    // conversation (contextual ones: the object).
                    let gate = Some(crate::bus::Gate {
                        conversation,
                        kind: crate::bus::GateKind::Event,
                    });
                    for u in users {
                        crate::bus::Bus::publish_gated(&*self.bus, u, 0, payload.clone(), gate);
                    }
                }
                Effect::Device(user, device, event) => {
                    self.bus
                        .publish_to(user, device, Arc::from(event.to_string()));
                }
                Effect::SfuLeave(p) => {
                    if let Err(e) = self.sfu.leave(p).await {
                        tracing::debug!(error = %e, "ending an SFU session");
                    }
                }
                Effect::SfuClose(room) => {
                    if let Err(e) = self.sfu.close_room(&room).await {
                        tracing::debug!(error = %e, "closing an SFU room");
                    }
                }
                Effect::Ended(ended) => self.record_end(*ended).await,
            }
        }
    }

    async fn record_end(&self, ended: Ended) {
        let duration_ms = (self.clock.now().0 - ended.started_at.0).max(0);
        let text = match ended.reason {
            "completed" => format!("Call ended, {}", human_duration(duration_ms)),
            "cancelled" => "Call cancelled".to_owned(),
            "declined" => "Call declined".to_owned(),
            "busy" => "Call not answered: busy".to_owned(),
            _ => "Missed call".to_owned(),
        };
        let id = ended.id;
        let body = MessageBody {
            text,
            data: Some(json!({"call": {
                "id": id,
                "event": "ended",
                "reason": ended.reason,
                "duration_ms": duration_ms,
                "participants": ended.participants,
            }})),
            recipients: None,
            actions: Vec::new(),
            attachments: Vec::new(),
        };
        let app = Caller {
            app: ended.caller.app,
            who: Who::App,
        };
        if let Err(e) = self
            .messaging
            .send(&app, ended.conversation, &format!("call-{id}-end"), body)
            .await
        {
            tracing::warn!(call = %id, error = %e, "recording the call end failed");
            return;
        }
        if let Err(e) = self.messaging.store().set_call_open(id, None).await {
            tracing::warn!(call = %id, error = %e, "closing the open call failed");
        }
    }

    /// Records the end of every call a previous process left open (it
    /// stopped or crashed during them): an end message with reason
    /// `interrupted`. Run once at start, before serving.
    ///
    /// # Errors
    /// On store failure.
    pub async fn recover(&self, users: &dyn crate::store::Store) -> Result<usize, Error> {
        let open = self.messaging.store().open_calls().await?;
        let count = open.len();
        for (id, app, conversation, started_at) in open {
            if let Some(app) = users.application(app).await? {
                let body = MessageBody {
                    text: "Call interrupted: the server restarted".to_owned(),
                    data: Some(json!({"call": {
                        "id": id,
                        "event": "ended",
                        "reason": "interrupted",
                        "started_at": started_at.to_rfc3339(),
                        "participants": [],
                    }})),
                    recipients: None,
                    actions: Vec::new(),
                    attachments: Vec::new(),
                };
                let caller = Caller { app, who: Who::App };
                if let Err(e) = self
                    .messaging
                    .send(&caller, conversation, &format!("call-{id}-end"), body)
                    .await
                {
                    // The conversation may be gone with its application.
                    tracing::warn!(call = %id, error = %e, "recording an interrupted call failed");
                }
            }
            self.messaging.store().set_call_open(id, None).await?;
        }
        Ok(count)
    }

    /// Carries SFU events to the devices they concern: which participant a
    /// received slot shows (`call_slot`), the active speaker
    /// (`call_speaker`), and layers nobody needs (`call_layer`, for the
    /// publisher to pause them). Runs as long as the process: it reads
    /// the SFU's numbered event log from the first event, so an event that
    /// arrives while it is busy waits for it instead of being lost; only
    /// falling more than the log's capacity behind loses events, and that
    /// is logged and counted (`sfu_events_missed_total`).
    pub async fn pump_sfu_events(self: Arc<Self>) {
        let mut events = self.sfu.events(0);
        loop {
            match events.next().await {
                Ok(batch) => {
                    for sequenced in batch {
                        let effects = self.translate(&sequenced.event);
                        self.run(effects).await;
                    }
                }
                Err(missed) => {
                    tracing::warn!(
                        from = missed.from,
                        to = missed.to,
                        "call events fell behind the SFU"
                    );
                    metrics::counter!("sfu_events_missed_total")
                        .increment(missed.to - missed.from + 1);
                }
            }
        }
    }

    fn translate(&self, event: &SfuEvent) -> Vec<Effect> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match event {
            SfuEvent::SlotChanged {
                participant,
                mid,
                source,
                ..
            } => {
                let Some(&(call_id, user, _)) = state.sessions.get(participant) else {
                    return out;
                };
                let from = source.as_ref().and_then(|(p, src_mid)| {
                    let (_, src_user, _) = state.sessions.get(p)?;
                    let screen = state
                        .calls
                        .get(&call_id)?
                        .members
                        .get(src_user)
                        .and_then(|m| m.screen_mid.as_deref())
                        == Some(src_mid.as_str());
                    Some((*src_user, screen))
                });
                let Some(member) = state
                    .calls
                    .get_mut(&call_id)
                    .and_then(|c| c.members.get_mut(&user))
                else {
                    return out;
                };
                let shown = (from.map(|f| f.0), from.is_some_and(|f| f.1));
                member.slots.insert(mid.clone(), shown);
                if let Some(device) = member
                    .device
                    .filter(|_| member.state == MemberState::Joined)
                {
                    out.push(Effect::Device(
                        user,
                        device,
                        slot_event(call_id, mid, shown.0, shown.1),
                    ));
                }
            }
            SfuEvent::SpeakerChanged { participant, room } => {
                let speaker = participant
                    .and_then(|p| state.sessions.get(&p))
                    .map(|(_, u, _)| *u);
                let Ok(call_id) = room.0.parse::<CallId>() else {
                    return out;
                };
                if let Some(call) = state.calls.get(&call_id) {
                    for u in call.joined() {
                        if let Some(device) = call.device(u) {
                            out.push(Effect::Device(
                                u,
                                device,
                                json!({"kind": "call_speaker", "call_id": call_id, "user_id": speaker}),
                            ));
                        }
                    }
                }
            }
            SfuEvent::LayerNeeded {
                participant,
                mid,
                layer,
                needed,
                ..
            } => {
                let Some(&(call_id, user, _)) = state.sessions.get(participant) else {
                    return out;
                };
                if let Some(device) = state.calls.get(&call_id).and_then(|c| c.device(user)) {
                    let rid = ["q", "h", "f"][usize::from((*layer).min(2))];
                    out.push(Effect::Device(
                        user,
                        device,
                        json!({"kind": "call_layer", "call_id": call_id, "mid": mid, "rid": rid, "needed": needed}),
                    ));
                }
            }
            SfuEvent::Disconnected { participant, .. } => {
                // A session that failed or timed out: forget it, so that
                // the device can open a new one.
                if let Some((call_id, user, role)) = state.sessions.remove(participant)
                    && let Some(m) = state
                        .calls
                        .get_mut(&call_id)
                        .and_then(|c| c.members.get_mut(&user))
                {
                    let slot = match role {
                        Role::Publish => &mut m.publish,
                        Role::Subscribe => &mut m.subscribe,
                    };
                    if *slot == Some(*participant) {
                        *slot = None;
                    }
                }
            }
            SfuEvent::ParticipantLost {
                participant,
                reason,
                ..
            } => {
                // The SFU worker carrying the session died. Its room is no
                // longer placed, so new sessions land on a live worker: the
                // member's other session (on the same worker) is forgotten
                // too, and its device is told once to open both afresh.
                // The call itself goes on.
                if let Some(&(call_id, user, _)) = state.sessions.get(participant) {
                    end_media(&mut state, call_id, user, &mut out);
                    if let Some(device) = state.calls.get(&call_id).and_then(|c| c.device(user)) {
                        out.push(Effect::Device(
                            user,
                            device,
                            json!({"kind": "call_media_lost", "call_id": call_id, "reason": reason.as_str()}),
                        ));
                    }
                }
            }
            _ => {}
        }
        out
    }
}

/// The configured ICE servers, and the TURN server with a credential of
/// `user`'s own that expires `turn.ttl_secs` from now (coturn's REST API
/// scheme; checked by the TURN server against its real clock).
fn ice_servers_for(config: &CallConfig, user: UserId) -> Vec<IceServer> {
    let mut servers = config.ice_servers.clone();
    if let Some(turn) = &config.turn {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (username, credential) = turn_credential(&turn.secret, now + turn.ttl_secs, user);
        servers.push(IceServer {
            urls: turn.urls.clone(),
            username: Some(username),
            credential: Some(credential),
        });
    }
    servers
}

/// `(<expiry>:<user>, base64(HMAC-SHA1(secret, that)))`.
fn turn_credential(secret: &str, expiry: u64, user: UserId) -> (String, String) {
    use base64::Engine;
    use hmac::Mac;
    let username = format!("{expiry}:{user}");
    let mut mac = <hmac::Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

fn session_slot(m: &mut Member, role: Role) -> &mut Option<ParticipantId> {
    match role {
        Role::Publish => &mut m.publish,
        Role::Subscribe => &mut m.subscribe,
    }
}

fn slot_event(call: CallId, mid: &str, user: Option<UserId>, screen: bool) -> Value {
    json!({"kind": "call_slot", "call_id": call, "mid": mid, "user_id": user, "screen": screen})
}

fn user_of(caller: &Caller) -> Result<UserId, Error> {
    match &caller.who {
        Who::User { user, .. } => Ok(user.id),
        Who::App => Err(Error::InvalidRequest(
            "calls are for users, not the application's bot".to_owned(),
        )),
    }
}

/// The call `me` is joined to on `device`.
fn joined_call<'a>(
    state: &'a State,
    caller: &Caller,
    me: UserId,
    device: u64,
    id: CallId,
) -> Result<&'a Call, Error> {
    let call = state
        .calls
        .get(&id)
        .filter(|c| c.caller.app.id == caller.app.id)
        .ok_or(Error::NotFound("call"))?;
    if call.device(me) != Some(device) {
        return Err(Error::Conflict(
            Code::NotJoined,
            "you are not in this call on this connection: send call_join".to_owned(),
        ));
    }
    Ok(call)
}

fn sfu_error(e: SfuError) -> Error {
    match e {
        SfuError::Join(e) => Error::InvalidRequest(format!("sdp: {e}")),
        other => Error::MediaUnavailable(format!("the SFU cannot take this session: {other}")),
    }
}

/// The call's state to every member.
fn snapshot(state: &State, id: CallId, out: &mut Vec<Effect>) {
    if let Some(call) = state.calls.get(&id) {
        let payload = json!({"kind": "call", "call": call.view(None)}).to_string();
        out.push(Effect::Snapshot(
            call.members.keys().copied().collect(),
            Arc::from(payload),
            call.conversation_id,
        ));
    }
}

/// Ends `user`'s SFU sessions in call `id` and forgets them at once.
fn end_media(state: &mut State, id: CallId, user: UserId, out: &mut Vec<Effect>) {
    let Some(m) = state
        .calls
        .get_mut(&id)
        .and_then(|c| c.members.get_mut(&user))
    else {
        return;
    };
    m.slots.clear();
    let ended: Vec<ParticipantId> = [m.publish.take(), m.subscribe.take()]
        .into_iter()
        .flatten()
        .collect();
    for p in ended {
        state.sessions.remove(&p);
        out.push(Effect::SfuLeave(p));
    }
}

/// `user` leaves the call: its SFU sessions end, the topology may change,
/// and the call may end.
fn depart(state: &mut State, id: CallId, user: UserId, config: &CallConfig, out: &mut Vec<Effect>) {
    state.joined.remove(&user);
    end_media(state, id, user, out);
    if let Some(m) = state
        .calls
        .get_mut(&id)
        .and_then(|c| c.members.get_mut(&user))
    {
        m.state = MemberState::Left;
        m.device = None;
        m.told = None;
    }
    retopology(state, id, config, out, None);
    snapshot(state, id, out);
    check_end(state, id, out);
}

/// Chooses the topology after a join or a leave and tells the joined
/// devices what changed. `rejoined` is a user on a new connection: back
/// (`false`: only it is told the topology again) or on another device
/// (`true`: in a peer-to-peer call its peer is told too, to negotiate
/// with the new device).
fn retopology(
    state: &mut State,
    id: CallId,
    config: &CallConfig,
    out: &mut Vec<Effect>,
    rejoined: Option<(UserId, bool)>,
) {
    let Some(call) = state.calls.get_mut(&id) else {
        return;
    };
    let joined = call.joined();
    let mut back_to_p2p = false;
    // More than two people cannot talk peer-to-peer (no mesh).
    if joined.len() >= config.conference_server_based_threshold.min(3) {
        call.topology = Topology::Sfu;
        call.pair = None;
    } else if call.topology == Topology::Sfu && config.back_to_p2p && joined.len() == 2 {
        call.topology = Topology::P2p;
        back_to_p2p = true;
    }
    let mut pair_changed = false;
    if call.topology == Topology::P2p {
        let pair = (joined.len() == 2).then(|| (joined[0], joined[1]));
        pair_changed = pair != call.pair;
        call.pair = pair;
    }
    let topology = call.topology;
    let pair = call.pair;
    let mut events = Vec::new();
    for u in &joined {
        let Some(m) = call.members.get_mut(u) else {
            continue;
        };
        let Some(device) = m.device else {
            continue;
        };
        let is_rejoined = rejoined.is_some_and(|(r, _)| r == *u);
        let peer_moved = rejoined.is_some_and(|(r, moved)| {
            moved && r != *u && pair.is_some_and(|(a, b)| a == r || b == r)
        });
        let tell = match (topology, pair) {
            (Topology::Sfu, _) => m.told != Some(Topology::Sfu) || is_rejoined,
            (Topology::P2p, Some(_)) => pair_changed || is_rejoined || peer_moved,
            (Topology::P2p, None) => is_rejoined,
        };
        if !tell {
            continue;
        }
        m.told = Some(topology);
        let event = match (topology, pair) {
            (Topology::Sfu, _) => {
                json!({"kind": "call_topology", "call_id": id, "topology": "sfu"})
            }
            (Topology::P2p, Some((first, second))) => {
                let peer = if *u == first { second } else { first };
                json!({
                    "kind": "call_topology",
                    "call_id": id,
                    "topology": "p2p",
                    "peer": peer,
                    "offerer": *u == first,
                    "ice_servers": ice_servers_for(config, *u),
                })
            }
            (Topology::P2p, None) => {
                json!({"kind": "call_topology", "call_id": id, "topology": "p2p", "peer": null})
            }
        };
        events.push(Effect::Device(*u, device, event));
    }
    if back_to_p2p {
        for u in &joined {
            end_media(state, id, *u, out);
        }
    }
    out.extend(events);
}

/// Ends the call when nobody is in it, or one person is left with nobody
/// ringing.
fn check_end(state: &mut State, id: CallId, out: &mut Vec<Effect>) {
    let Some(call) = state.calls.get(&id) else {
        return;
    };
    let joined = call.count(MemberState::Joined);
    let ringing = call.count(MemberState::Ringing);
    if joined > 1 || (joined == 1 && ringing > 0) {
        return;
    }
    let Some(mut call) = state.calls.remove(&id) else {
        return;
    };
    let reason = call.reason();
    for (user, m) in &mut call.members {
        if m.state == MemberState::Joined {
            m.state = MemberState::Left;
            state.joined.remove(user);
        }
        if m.state == MemberState::Ringing {
            m.state = MemberState::Missed;
        }
        for p in [m.publish.take(), m.subscribe.take()].into_iter().flatten() {
            state.sessions.remove(&p);
            out.push(Effect::SfuLeave(p));
        }
    }
    out.push(Effect::SfuClose(RoomId::from(id.to_string().as_str())));
    // The end is recorded in the conversation before anyone is told.
    let payload = json!({"kind": "call", "call": call.view(Some(reason))}).to_string();
    let members: Vec<UserId> = call.members.keys().copied().collect();
    let participants: Vec<UserId> = call
        .members
        .iter()
        .filter(|(_, m)| m.ever_joined)
        .map(|(u, _)| *u)
        .collect();
    out.push(Effect::Ended(Box::new(Ended {
        caller: call.caller,
        id,
        conversation: call.conversation_id,
        started_at: call.started_at,
        reason,
        participants,
    })));
    out.push(Effect::Snapshot(
        members,
        Arc::from(payload),
        call.conversation_id,
    ));
}

fn human_duration(ms: i64) -> String {
    let secs = ms / 1000;
    if secs >= 3600 {
        format!("{}h {:02}m {:02}s", secs / 3600, secs / 60 % 60, secs % 60)
    } else if secs >= 60 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credential coturn expects, checked against Python's hmac:
    /// `base64(hmac.new(b"north-wind", b"1700086400:4b1e…", sha1))`.
    #[test]
    fn turn_credentials_follow_coturns_rest_scheme() {
        let user: UserId = "4b1e2f0a-8c3d-4e5f-9a6b-7c8d9e0f1a2b"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let (name, password) = turn_credential("north-wind", 1_700_086_400, user);
        assert_eq!(name, "1700086400:4b1e2f0a-8c3d-4e5f-9a6b-7c8d9e0f1a2b");
        assert_eq!(password, "vfF0j0IN2HkyTgu+ypB0cRXcsvs=");
        let config = CallConfig {
            turn: Some(crate::config::TurnConfig {
                urls: vec!["turn:turn.example.com:3478".to_owned()],
                secret: "north-wind".to_owned(),
                ttl_secs: 3600,
            }),
            ..CallConfig::default()
        };
        let servers = ice_servers_for(&config, user);
        assert_eq!(servers.len(), 1);
        let name = servers[0].username.clone().unwrap_or_default();
        let expiry: u64 = name.split(':').next().unwrap_or("0").parse().unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        assert!((now + 3590..=now + 3610).contains(&expiry), "{name}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(5_400), "5s");
        assert_eq!(human_duration(65_000), "1m 05s");
        assert_eq!(human_duration(3_725_000), "1h 02m 05s");
    }
}
