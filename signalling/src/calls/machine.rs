//! The calls as a sans-IO state machine, after str0m's `Rtc` and
//! quinn-proto's `Connection`: every input is a `handle_*` call, given the
//! moment it happens at when time matters; what follows from it is queued
//! as [`Effect`]s the driver takes with [`Machine::poll_effect`], and
//! [`Machine::poll_timeout`] says when [`Machine::handle_timeout`] is due
//! next. Nothing here awaits, reads a clock or does I/O: the async
//! [`Calls`](super::Calls) service is the driver, and the unit tests run
//! every transition in virtual time.
//!
//! What needs the store or the SFU is the driver's: whether the caller may
//! see the conversation (before `handle_start` and `handle_join`), the
//! message that records a start (between `handle_start` and
//! `handle_started`), and the SFU's answers (around the negotiation
//! inputs).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use confer_sfu::api::Role;
use serde_json::Value;

use crate::config::CallConfig;
use crate::error::{Code, Error};
use crate::ids::{CallId, ConversationId, Timestamp, UserId};
use crate::messaging::Caller;
use crate::proto::Ephemeral;

use super::state::*;
use super::view::{CallMedia, CallView, MemberState, Topology};

/// The state of every call on this node, and what is left to do.
#[derive(Debug)]
pub(super) struct Machine {
    pub(super) state: State,
    config: CallConfig,
    pub(super) effects: VecDeque<Effect>,
}

/// A call whose start was recorded (or failed to be): the input that
/// makes it ring.
#[derive(Debug)]
pub(super) struct Started {
    pub(super) caller: Caller,
    pub(super) id: CallId,
    pub(super) conversation_id: ConversationId,
    pub(super) media: CallMedia,
    /// Every member of the conversation, the caller included.
    pub(super) members: Vec<UserId>,
    pub(super) device: u64,
    pub(super) device_key: Option<String>,
    pub(super) started_at: Timestamp,
}

/// The session of one role of a member's device that an SDP offer is
/// about: the input the negotiation steps share.
#[derive(Debug, Clone, Copy)]
pub(super) struct Offer<'a> {
    pub(super) caller: &'a Caller,
    pub(super) me: UserId,
    pub(super) device: u64,
    pub(super) id: CallId,
    pub(super) role: Role,
}

impl Machine {
    pub(super) fn new(config: CallConfig) -> Self {
        Self {
            state: State::default(),
            config,
            effects: VecDeque::new(),
        }
    }

    /// The wall-clock time of the inputs that follow (TURN credentials
    /// handed out with a new topology expire relative to it).
    pub(super) fn set_wall_clock(&mut self, now: Timestamp) {
        self.state.wall = now;
    }

    /// The next thing to do, in order.
    pub(super) fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Self::handle_timeout`] is due next, if ever.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        poll_timeout(&self.state)
    }

    /// Runs every timer due at `now`: rings run out, members whose
    /// connection was lost leave.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        let mut out = Vec::new();
        handle_timeout(&mut self.state, now, &self.config, &mut out);
        self.effects.extend(out);
    }

    /// Active calls `user` was asked to.
    pub(super) fn active_for(&self, user: UserId) -> Vec<CallView> {
        self.state
            .calls
            .values()
            .filter(|c| c.members.contains_key(&user))
            .map(|c| c.view(None))
            .collect()
    }

    /// The conversation of a call of the caller's application.
    pub(super) fn conversation_of(
        &self,
        caller: &Caller,
        id: CallId,
    ) -> Result<ConversationId, Error> {
        self.state
            .calls
            .get(&id)
            .filter(|c| c.caller.app.id == caller.app.id)
            .map(|c| c.conversation_id)
            .ok_or(Error::NotFound("call"))
    }

    /// A call is asked for: `me` is busy and the conversation has a call
    /// from now on, while its start is recorded ([`Self::handle_started`]
    /// follows, whatever the recording gave).
    pub(super) fn handle_start(
        &mut self,
        caller: &Caller,
        me: UserId,
        conversation_id: ConversationId,
        id: CallId,
    ) -> Result<(), Error> {
        let state = &mut self.state;
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
        Ok(())
    }

    /// The start was recorded (`recorded` is `Ok`): the starter is in the
    /// call on its device and every other member rings, or is busy in
    /// another call; the ringing runs out `ring_timeout_secs` after `now`.
    pub(super) fn handle_started(
        &mut self,
        now: Instant,
        started: Started,
        recorded: Result<(), Error>,
    ) -> Result<CallView, Error> {
        let Started {
            caller,
            id,
            conversation_id,
            media,
            members,
            device,
            device_key,
            started_at,
        } = started;
        let me = caller.participant();
        let state = &mut self.state;
        state.starting.remove(&conversation_id);
        if let Err(e) = recorded {
            state.joined.remove(&me);
            return Err(e);
        }
        let mut call = Call {
            id,
            caller,
            conversation_id,
            media,
            topology: Topology::P2p,
            started_by: me,
            started_at,
            members: BTreeMap::new(),
            next_seq: 1,
            pair: None,
        };
        let video = media == CallMedia::Video;
        for user in members.iter().copied().filter(|u| *u != me) {
            let busy = state.joined.contains_key(&user);
            let member_state = if busy {
                MemberState::Busy
            } else {
                MemberState::Ringing
            };
            call.members.insert(user, Member::new(member_state, video));
        }
        let mut starter = Member::new(MemberState::Joined, video);
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
        let mut out = Vec::new();
        snapshot(state, id, &mut out);
        check_end(state, id, &mut out);
        let expiry = now + Duration::from_secs(self.config.ring_timeout_secs);
        state.timers.insert((expiry, Timer::RingExpiry(id)));
        self.effects.extend(out);
        Ok(view)
    }

    /// `me` joins call `id` on `device`: answering its ring, coming back
    /// on a new connection (`device_key` as before), or moving the call to
    /// another device.
    pub(super) fn handle_join(
        &mut self,
        me: UserId,
        device: u64,
        id: CallId,
        device_key: Option<String>,
    ) -> Result<CallView, Error> {
        let state = &mut self.state;
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
        let media = call.media;
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
            member.video = media == CallMedia::Video;
            DeviceChange::Joined
        };
        if !matches!(change, DeviceChange::Same) {
            member.told = None;
        }
        member.state = MemberState::Joined;
        member.device = Some(device);
        member.device_key = device_key;
        member.ever_joined = true;
        let replay: Vec<Ephemeral> = member
            .slots
            .iter()
            .map(|(mid, (user, screen))| slot_event(id, mid, *user, *screen))
            .collect();
        state.joined.insert(me, id);
        let config = &self.config;
        match change {
            DeviceChange::Same => {}
            DeviceChange::Joined => retopology(state, id, config, &mut out, None),
            DeviceChange::Resumed => {
                retopology(state, id, config, &mut out, Some((me, false)));
                // Topology first, then what each slot shows.
                out.extend(replay.into_iter().map(|e| Effect::Device(me, device, e)));
            }
            DeviceChange::Moved(old) => {
                // Another device takes over: the old one's media ends and
                // it is told so.
                end_media(state, id, me, &mut out);
                if let Some(old) = old {
                    out.push(Effect::Device(
                        me,
                        old,
                        Ephemeral::CallMoved { call_id: id },
                    ));
                }
                retopology(state, id, config, &mut out, Some((me, true)));
            }
        }
        snapshot(state, id, &mut out);
        let view = state.calls.get(&id).map(|c| c.view(None));
        self.effects.extend(out);
        view.ok_or(Error::NotFound("call"))
    }

    /// `me` declines a call that rings for it, or says busy.
    pub(super) fn handle_decline(
        &mut self,
        caller: &Caller,
        me: UserId,
        id: CallId,
        busy: bool,
    ) -> Result<(), Error> {
        let state = &mut self.state;
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
        snapshot(state, id, &mut out);
        check_end(state, id, &mut out);
        self.effects.extend(out);
        Ok(())
    }

    /// `me` hangs up on `device`.
    pub(super) fn handle_leave(
        &mut self,
        caller: &Caller,
        me: UserId,
        device: u64,
        id: CallId,
    ) -> Result<(), Error> {
        let state = &mut self.state;
        let Some(call) = state
            .calls
            .get(&id)
            .filter(|c| c.caller.app.id == caller.app.id)
        else {
            return Err(Error::NotFound("call"));
        };
        if state.joined.get(&me) != Some(&id) {
            return Err(Error::Conflict(
                Code::NotJoined,
                "you are not in this call".to_owned(),
            ));
        }
        let elsewhere = call
            .members
            .get(&me)
            .and_then(|m| m.device)
            .is_some_and(|d| d != device);
        if elsewhere {
            return Err(Error::Conflict(
                Code::NotJoined,
                "the call is on another of your devices: join it here first".to_owned(),
            ));
        }
        self.depart(id, me);
        Ok(())
    }

    /// A connection of `user` closed at `now`. If the user was in a call
    /// on it, the call keeps its place for `reconnect_grace_secs`.
    pub(super) fn handle_disconnected(&mut self, now: Instant, user: UserId, device: u64) {
        let state = &mut self.state;
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
        let lost = member.lost;
        let at = now + Duration::from_secs(self.config.reconnect_grace_secs);
        state.timers.insert((
            at,
            Timer::Grace {
                call: id,
                user,
                lost,
            },
        ));
    }

    /// `user` was locked or its application unregistered: it leaves its
    /// call at once.
    pub(super) fn handle_revoke(&mut self, user: UserId) {
        if let Some(id) = self.state.joined.get(&user).copied() {
            self.depart(id, user);
        }
    }

    /// `user` is no longer a member of `conversation`: it is dropped from
    /// the conversation's call.
    pub(super) fn handle_member_removed(&mut self, conversation: ConversationId, user: UserId) {
        let state = &mut self.state;
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
            depart(state, id, user, &self.config, &mut out);
        } else if let Some(m) = state
            .calls
            .get_mut(&id)
            .and_then(|c| c.members.get_mut(&user))
        {
            // Ringing stops.
            if m.state == MemberState::Ringing {
                m.state = MemberState::Missed;
            }
            snapshot(state, id, &mut out);
            check_end(state, id, &mut out);
        }
        if let Some(call) = state.calls.get_mut(&id) {
            call.members.remove(&user);
        }
        self.effects.extend(out);
    }

    /// A peer-to-peer signal from `me` on `device` for `to`'s device.
    pub(super) fn handle_signal(
        &mut self,
        caller: &Caller,
        me: UserId,
        device: u64,
        id: CallId,
        to: UserId,
        signal: Value,
    ) -> Result<(), Error> {
        let call = joined_call(&self.state, caller, me, device, id)?;
        if call.topology != Topology::P2p {
            return Err(Error::Conflict(
                Code::WrongTopology,
                "the call goes through the SFU: use call_publish and call_subscribe".to_owned(),
            ));
        }
        if to == me || call.pair.is_none_or(|(a, b)| to != a && to != b) {
            return Err(Error::NotFound("peer"));
        }
        let target = call.device(to).ok_or(Error::NotFound("peer"))?;
        self.effects.push_back(Effect::Device(
            to,
            target,
            Ephemeral::CallSignal {
                call_id: id,
                from: me,
                signal,
            },
        ));
        Ok(())
    }

    /// `me`'s microphone, camera and screen flags.
    #[allow(clippy::too_many_arguments)] // one per flag of the request
    pub(super) fn handle_media(
        &mut self,
        caller: &Caller,
        me: UserId,
        device: u64,
        id: CallId,
        audio: Option<bool>,
        video: Option<bool>,
        screen: Option<bool>,
    ) -> Result<(), Error> {
        joined_call(&self.state, caller, me, device, id)?;
        if let Some(m) = self
            .state
            .calls
            .get_mut(&id)
            .and_then(|c| c.members.get_mut(&me))
        {
            m.audio = audio.unwrap_or(m.audio);
            m.video = video.unwrap_or(m.video);
            m.screen = screen.unwrap_or(m.screen);
        }
        let mut out = Vec::new();
        snapshot(&self.state, id, &mut out);
        self.effects.extend(out);
        Ok(())
    }

    pub(super) fn member(&mut self, id: CallId, user: UserId) -> Option<&mut Member> {
        self.state
            .calls
            .get_mut(&id)
            .and_then(|c| c.members.get_mut(&user))
    }

    fn depart(&mut self, id: CallId, user: UserId) {
        let mut out = Vec::new();
        depart(&mut self.state, id, user, &self.config, &mut out);
        self.effects.extend(out);
    }
}
