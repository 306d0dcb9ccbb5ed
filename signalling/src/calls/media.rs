//! The driver of the calls' media: peer-to-peer signals relayed between
//! devices, SFU sessions negotiated, media and quality changes, and the
//! SFU's events fed to the machine, which turns them into call events.

use std::sync::Arc;

use confer_sfu::api::{ParticipantId, Role, RoomId, SfuError};
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
        if let Some(node) = self.remote_owner(id) {
            return self
                .forward(node, caller, device, id, cluster::Op::Signal { to, signal })
                .await
                .map(drop);
        }
        self.step(|m| m.handle_signal(caller, me, device, id, to, signal))
            .await
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
        if let Some(node) = self.remote_owner(id) {
            let op = cluster::Op::Negotiate {
                publish: role == Role::Publish,
                sdp,
                screen_mid,
            };
            return match self.forward(node, caller, device, id, op).await? {
                cluster::Answer::Sdp { sdp } => Ok(sdp),
                other => Err(unexpected(&other)),
            };
        }
        let offer = Offer {
            caller,
            me: user_of(caller)?,
            device,
            id,
            role,
        };
        let (existing, linked) = self.lock()?.handle_offer(offer, screen_mid)?;
        if let Some(session) = existing {
            match self.sfu.renegotiate(session, sdp.clone()).await {
                Ok(answer) => return Ok(answer),
                // The session ended without us hearing of it (a lost
                // event): forget it and open a new one.
                Err(SfuError::UnknownParticipant) => {
                    self.lock()?.handle_session_unknown(offer, session);
                }
                Err(e) => return Err(sfu_error(e)),
            }
        }
        let participant = ParticipantId::random();
        self.lock()?.handle_session_opening(offer, participant)?;
        let room = RoomId::from(id.to_string().as_str());
        let joined = self
            .sfu
            .join_as(&room, participant, role, sdp, linked)
            .await;
        // The member may have left, moved or lost the call meanwhile.
        let kept = self
            .lock()?
            .handle_session_answered(offer, participant, joined.is_ok());
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
        if let Some(node) = self.remote_owner(id) {
            let op = cluster::Op::Media {
                audio,
                video,
                screen,
            };
            return self.forward(node, caller, device, id, op).await.map(drop);
        }
        self.step(|m| m.handle_media(caller, me, device, id, audio, video, screen))
            .await
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
        if let Some(node) = self.remote_owner(id) {
            return self
                .forward(
                    node,
                    caller,
                    device,
                    id,
                    cluster::Op::Quality { mid, quality },
                )
                .await
                .map(drop);
        }
        let session = self.lock()?.subscribe_session(caller, me, device, id)?;
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
                        let _ = self
                            .step(|m| {
                                m.handle_sfu_event(&sequenced.event);
                                Ok(())
                            })
                            .await;
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
}
