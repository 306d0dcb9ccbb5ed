//! The bookkeeping of live calls: members, devices and SFU sessions per
//! call, and the pure transitions (a member departs, media ends, the
//! topology changes, a call ends) that change it and collect what follows
//! as [`Effect`]s for the service to carry out after the lock is released.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use confer_sfu::api::{ParticipantId, Role, RoomId};

use crate::config::CallConfig;
use crate::error::{Code, Error};
use crate::ids::{CallId, ConversationId, Timestamp, UserId};
use crate::messaging::Caller;

use super::*;

#[derive(Debug)]
pub(super) struct Member {
    pub(super) state: MemberState,
    /// The connection it joined on.
    pub(super) device: Option<u64>,
    /// Join order (the earlier of two peer-to-peer devices makes the offer).
    pub(super) joined_seq: u64,
    pub(super) ever_joined: bool,
    pub(super) audio: bool,
    pub(super) video: bool,
    pub(super) screen: bool,
    pub(super) publish: Option<ParticipantId>,
    pub(super) subscribe: Option<ParticipantId>,
    /// The mid of its screen-share track in its publish session.
    pub(super) screen_mid: Option<String>,
    /// What each slot of its subscribe session shows (user, screen), to
    /// tell a device that comes back after a lost connection.
    pub(super) slots: BTreeMap<String, (Option<UserId>, bool)>,
    /// The client's own name for its device (`device_id` of `call_join`):
    /// a join with the same name is that client coming back.
    pub(super) device_key: Option<String>,
    /// Counts lost connections, so that a grace timer only acts on the
    /// loss it was started for.
    pub(super) lost: u64,
    /// The topology its current device was last told.
    pub(super) told: Option<Topology>,
}

impl Member {
    pub(super) fn new(state: MemberState, video: bool) -> Self {
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
pub(super) struct Call {
    pub(super) id: CallId,
    pub(super) caller: Caller,
    pub(super) conversation_id: ConversationId,
    pub(super) media: CallMedia,
    pub(super) topology: Topology,
    pub(super) started_by: UserId,
    pub(super) started_at: Timestamp,
    pub(super) members: BTreeMap<UserId, Member>,
    pub(super) next_seq: u64,
    /// The two devices of a peer-to-peer call, once both joined.
    pub(super) pair: Option<(UserId, UserId)>,
}

impl Call {
    pub(super) fn view(&self, reason: Option<&'static str>) -> CallView {
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

    pub(super) fn joined(&self) -> Vec<UserId> {
        let mut joined: Vec<(u64, UserId)> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == MemberState::Joined)
            .map(|(u, m)| (m.joined_seq, *u))
            .collect();
        joined.sort_unstable();
        joined.into_iter().map(|(_, u)| u).collect()
    }

    pub(super) fn count(&self, state: MemberState) -> usize {
        self.members.values().filter(|m| m.state == state).count()
    }

    pub(super) fn device(&self, user: UserId) -> Option<u64> {
        self.members
            .get(&user)
            .filter(|m| m.state == MemberState::Joined)
            .and_then(|m| m.device)
    }

    pub(super) fn reason(&self) -> &'static str {
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
pub(super) enum DeviceChange {
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
pub(super) enum Effect {
    /// The call's state to every member (all their devices), and the
    /// call's conversation.
    Snapshot(Vec<UserId>, Arc<str>, ConversationId),
    /// An event for one device.
    Device(UserId, u64, Ephemeral),
    /// End an SFU session.
    SfuLeave(ParticipantId),
    /// Close the call's SFU room.
    SfuClose(RoomId),
    /// Record the end in the conversation.
    Ended(Box<Ended>),
}

/// A call that ended, to be recorded.
#[derive(Debug)]
pub(super) struct Ended {
    pub(super) caller: Caller,
    pub(super) id: CallId,
    pub(super) conversation: ConversationId,
    pub(super) started_at: Timestamp,
    pub(super) reason: &'static str,
    pub(super) participants: Vec<UserId>,
}

/// Something the calls must do at a moment of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A call's ringing runs out: who still rings has missed it.
    RingExpiry(CallId),
    /// A member that lost its connection has not come back: it leaves,
    /// unless it lost another connection since (`lost` counts them).
    Grace {
        call: CallId,
        user: UserId,
        lost: u64,
    },
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// The wall-clock time of the input being handled (for the expiry of
    /// TURN credentials); the driver sets it with each input.
    pub(super) wall: Timestamp,
    /// When each timer is due, earliest first.
    pub(super) timers: std::collections::BTreeSet<(std::time::Instant, Timer)>,
    pub(super) calls: HashMap<CallId, Call>,
    /// The call each user is joined to: a user is in one call at a time.
    pub(super) joined: HashMap<UserId, CallId>,
    /// SFU sessions: their call, user and role.
    pub(super) sessions: HashMap<ParticipantId, (CallId, UserId, Role)>,
    /// Conversations whose call is being recorded as started.
    pub(super) starting: std::collections::HashSet<ConversationId>,
}

pub(super) fn session_slot(m: &mut Member, role: Role) -> &mut Option<ParticipantId> {
    match role {
        Role::Publish => &mut m.publish,
        Role::Subscribe => &mut m.subscribe,
    }
}

pub(super) fn slot_event(call: CallId, mid: &str, user: Option<UserId>, screen: bool) -> Ephemeral {
    Ephemeral::CallSlot {
        call_id: call,
        mid: mid.to_owned(),
        user_id: user,
        screen,
    }
}

/// The call `me` is joined to on `device`.
pub(super) fn joined_call<'a>(
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

/// The call's state to every member.
pub(super) fn snapshot(state: &State, id: CallId, out: &mut Vec<Effect>) {
    if let Some(call) = state.calls.get(&id) {
        let payload = Ephemeral::Call {
            call: call.view(None),
        }
        .render();
        out.push(Effect::Snapshot(
            call.members.keys().copied().collect(),
            Arc::from(payload),
            call.conversation_id,
        ));
    }
}

/// Ends `user`'s SFU sessions in call `id` and forgets them at once.
pub(super) fn end_media(state: &mut State, id: CallId, user: UserId, out: &mut Vec<Effect>) {
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
pub(super) fn depart(
    state: &mut State,
    id: CallId,
    user: UserId,
    config: &CallConfig,
    out: &mut Vec<Effect>,
) {
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
pub(super) fn retopology(
    state: &mut State,
    id: CallId,
    config: &CallConfig,
    out: &mut Vec<Effect>,
    rejoined: Option<(UserId, bool)>,
) {
    let wall = state.wall;
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
            (Topology::Sfu, _) => Ephemeral::CallTopology {
                call_id: id,
                topology: Topology::Sfu,
                peer: None,
                offerer: None,
                ice_servers: None,
            },
            (Topology::P2p, Some((first, second))) => Ephemeral::CallTopology {
                call_id: id,
                topology: Topology::P2p,
                peer: Some(Some(if *u == first { second } else { first })),
                offerer: Some(*u == first),
                ice_servers: Some(ice_servers_for(config, *u, wall)),
            },
            (Topology::P2p, None) => Ephemeral::CallTopology {
                call_id: id,
                topology: Topology::P2p,
                peer: Some(None),
                offerer: None,
                ice_servers: None,
            },
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
pub(super) fn check_end(state: &mut State, id: CallId, out: &mut Vec<Effect>) {
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
    let payload = Ephemeral::Call {
        call: call.view(Some(reason)),
    }
    .render();
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

/// When the next timer is due, if any.
pub(super) fn poll_timeout(state: &State) -> Option<std::time::Instant> {
    state.timers.first().map(|(at, _)| *at)
}

/// Runs every timer due at `now`.
pub(super) fn handle_timeout(
    state: &mut State,
    now: std::time::Instant,
    config: &CallConfig,
    out: &mut Vec<Effect>,
) {
    while let Some(&(at, timer)) = state.timers.first() {
        if at > now {
            break;
        }
        state.timers.remove(&(at, timer));
        match timer {
            Timer::RingExpiry(id) => ring_expiry(state, id, out),
            Timer::Grace { call, user, lost } => {
                let gone = state.joined.get(&user) == Some(&call)
                    && state
                        .calls
                        .get(&call)
                        .and_then(|c| c.members.get(&user))
                        .is_some_and(|m| m.device.is_none() && m.lost == lost);
                if gone {
                    depart(state, call, user, config, out);
                }
            }
        }
    }
}

/// Whoever still rings in call `id` has missed it; the call may end.
fn ring_expiry(state: &mut State, id: CallId, out: &mut Vec<Effect>) {
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
    if changed {
        snapshot(state, id, out);
        check_end(state, id, out);
    }
}

pub(super) fn human_duration(ms: i64) -> String {
    let secs = ms / 1000;
    if secs >= 3600 {
        format!("{}h {:02}m {:02}s", secs / 3600, secs / 60 % 60, secs % 60)
    } else if secs >= 60 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}
