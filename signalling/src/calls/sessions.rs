//! The machine's inputs about media sessions: SDP offers for the SFU and
//! their answers, and the SFU's events.

use confer_sfu::api::{ParticipantId, Role, SfuEvent};

use super::machine::{Machine, Offer};
use super::state::*;
use super::view::{MemberState, Topology};
use crate::error::{Code, Error};
use crate::ids::{CallId, UserId};
use crate::messaging::Caller;
use crate::proto::Ephemeral;
use crate::proto::server::Rid;

impl Machine {
    /// `me`'s SFU subscribe session in call `id`.
    pub(super) fn subscribe_session(
        &self,
        caller: &Caller,
        me: UserId,
        device: u64,
        id: CallId,
    ) -> Result<ParticipantId, Error> {
        let call = joined_call(&self.state, caller, me, device, id)?;
        call.members
            .get(&me)
            .and_then(|m| m.subscribe)
            .ok_or_else(|| {
                Error::Conflict(
                    Code::WrongTopology,
                    "no SFU subscribe session: send call_subscribe first".to_owned(),
                )
            })
    }

    /// An SDP offer of `me` for its session of `role`: the session it has
    /// of that role, to renegotiate, and of the other role, to link to.
    pub(super) fn handle_offer(
        &mut self,
        offer: Offer<'_>,
        screen_mid: Option<String>,
    ) -> Result<(Option<ParticipantId>, Option<ParticipantId>), Error> {
        let Offer {
            caller,
            me,
            device,
            id,
            role,
        } = offer;
        let call = joined_call(&self.state, caller, me, device, id)?;
        if call.topology != Topology::Sfu {
            return Err(Error::Conflict(
                Code::WrongTopology,
                "the call is peer-to-peer: use call_signal".to_owned(),
            ));
        }
        let member = self.member(id, me).ok_or(Error::NotFound("call"))?;
        if role == Role::Publish && screen_mid.is_some() {
            member.screen_mid = screen_mid;
        }
        Ok(match role {
            Role::Publish => (member.publish, member.subscribe),
            Role::Subscribe => (member.subscribe, member.publish),
        })
    }

    /// The SFU does not know `session` (it ended without us hearing of
    /// it): forget it, so that a new one is opened.
    pub(super) fn handle_session_unknown(&mut self, offer: Offer<'_>, session: ParticipantId) {
        self.state.sessions.remove(&session);
        if let Some(slot) = self
            .member(offer.id, offer.me)
            .map(|m| session_slot(m, offer.role))
            && *slot == Some(session)
        {
            *slot = None;
        }
    }

    /// A new SFU session for the offer, registered before the SFU hears of
    /// it so that its very first events find their device.
    pub(super) fn handle_session_opening(
        &mut self,
        offer: Offer<'_>,
        participant: ParticipantId,
    ) -> Result<(), Error> {
        let Offer {
            caller,
            me,
            device,
            id,
            role,
        } = offer;
        joined_call(&self.state, caller, me, device, id)?;
        let member = self.member(id, me).ok_or(Error::NotFound("call"))?;
        let slot = session_slot(member, role);
        if slot.is_some() {
            return Err(Error::Conflict(
                Code::Negotiating,
                "another offer for this session is being answered".to_owned(),
            ));
        }
        *slot = Some(participant);
        self.state.sessions.insert(participant, (id, me, role));
        Ok(())
    }

    /// The SFU answered the session's offer (`answered`) or refused it;
    /// whether the session is kept: not when it was refused, nor when `me`
    /// left, moved or lost the call meanwhile.
    pub(super) fn handle_session_answered(
        &mut self,
        offer: Offer<'_>,
        participant: ParticipantId,
        answered: bool,
    ) -> bool {
        let Offer {
            caller,
            me,
            device,
            id,
            role,
        } = offer;
        let still = joined_call(&self.state, caller, me, device, id).is_ok();
        let kept = self.member(id, me).is_some_and(|m| {
            let slot = session_slot(m, role);
            let ours = *slot == Some(participant);
            if ours && (!answered || !still) {
                *slot = None;
            }
            ours && still && answered
        });
        if !kept {
            self.state.sessions.remove(&participant);
        }
        kept
    }

    /// An event of the SFU: which participant a received slot shows, the
    /// active speaker, layers nobody needs, sessions that ended or were
    /// lost with their worker.
    pub(super) fn handle_sfu_event(&mut self, event: &SfuEvent) {
        let state = &mut self.state;
        let mut out = Vec::new();
        match event {
            SfuEvent::SlotChanged {
                participant,
                mid,
                source,
                ..
            } => {
                let Some(&(call_id, user, _)) = state.sessions.get(participant) else {
                    return;
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
                    return;
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
                    return;
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
                    return;
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
                    let slot = session_slot(m, role);
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
                    end_media(state, call_id, user, &mut out);
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
        self.effects.extend(out);
    }
}
