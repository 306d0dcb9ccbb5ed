//! The media of calls: peer-to-peer signals relayed between devices, SFU
//! sessions negotiated, media and quality changes, and the SFU's events
//! turned into call events.

use std::sync::Arc;

use confer_sfu::api::{ParticipantId, Role, RoomId, SfuError, SfuEvent};
use serde_json::Value;

use crate::error::{Code, Error};
use crate::ids::{CallId, UserId};
use crate::messaging::Caller;

use super::*;

impl Calls {
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
        let event = Ephemeral::CallSignal {
            call_id: id,
            from: me,
            signal,
        };
        self.bus.publish_to(to, target, Arc::from(event.render()));
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

    pub(super) fn translate(&self, event: &SfuEvent) -> Vec<Effect> {
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
                                Ephemeral::CallSpeaker {
                                    call_id,
                                    user_id: speaker,
                                },
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
                    out.push(Effect::Device(
                        user,
                        device,
                        Ephemeral::CallLayer {
                            call_id,
                            mid: mid.clone(),
                            rid: Rid::of_layer(*layer),
                            needed: *needed,
                        },
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
                            Ephemeral::CallMediaLost {
                                call_id,
                                reason: *reason,
                            },
                        ));
                    }
                }
            }
            _ => {}
        }
        out
    }
}
