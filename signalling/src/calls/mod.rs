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
//!
//! Files: this one holds the service and the life of a call (start, ring,
//! join, decline, leave, end, recovery after a restart); `media` relays
//! peer-to-peer signals, negotiates SFU sessions and turns SFU events into
//! call events; `state` is the bookkeeping and its pure transitions;
//! `view` what clients see; `turn` the ICE servers and TURN credentials.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use confer_sfu::api::{SfuControl, SfuError};

use crate::bus::Bus;
use crate::config::{CallConfig, IceServer};
use crate::error::{Code, Error};
use crate::ids::{CallId, Clock, ConversationId, UserId};
use crate::messaging::{Caller, Messaging, Who};
use crate::proto::Ephemeral;
use crate::proto::server::CallRecord;
use crate::proto::server::Rid;
use crate::store::messaging::MessageBody;

mod media;
mod state;
#[cfg(test)]
mod tests;
mod turn;
mod view;

use state::*;
use turn::ice_servers_for;
pub use view::{CallMedia, CallView, MemberState, ParticipantView, Quality, Topology};

/// The call service.
#[derive(Debug)]
pub struct Calls {
    config: CallConfig,
    messaging: Arc<Messaging>,
    bus: Arc<dyn Bus>,
    sfu: Arc<dyn SfuControl>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Told when a timer is added, so that [`Self::run_timers`] looks at
    /// the next deadline again.
    timers_changed: tokio::sync::Notify,
}

impl Calls {
    /// The service; [`Self::run_timers`] must run for rings to expire and
    /// lost connections to leave, and [`Self::pump_sfu_events`] for
    /// in-call features (slots, speaker, dynacast) to reach clients.
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
            timers_changed: tokio::sync::Notify::new(),
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
            data: Some(CallRecord::Started { id, media }.data()),
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
            let expiry =
                std::time::Instant::now() + Duration::from_secs(self.config.ring_timeout_secs);
            state.timers.insert((expiry, Timer::RingExpiry(id)));
            (view, effects)
        };
        self.timers_changed.notify_one();
        self.run(effects).await;
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
            let replay: Vec<Ephemeral> = member
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
                            Ephemeral::CallMoved { call_id: id },
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
        {
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
            let lost = member.lost;
            let at =
                std::time::Instant::now() + Duration::from_secs(self.config.reconnect_grace_secs);
            state.timers.insert((
                at,
                Timer::Grace {
                    call: id,
                    user,
                    lost,
                },
            ));
        }
        self.timers_changed.notify_one();
    }

    /// Runs the calls' timers (ring expiry, reconnection grace) as they
    /// fall due: the state says when the next one is due
    /// ([`state::poll_timeout`]) and what it does ([`state::handle_timeout`]);
    /// this only waits for it. Runs as long as the process.
    pub async fn run_timers(self: Arc<Self>) {
        loop {
            // Registered before looking, so that a timer added meanwhile
            // is not slept through.
            let changed = self.timers_changed.notified();
            let next = match self.state.lock() {
                Ok(state) => poll_timeout(&state),
                Err(_) => return,
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = changed => continue,
                    }
                }
                None => {
                    changed.await;
                    continue;
                }
            }
            let effects = {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                let mut out = Vec::new();
                handle_timeout(
                    &mut state,
                    std::time::Instant::now(),
                    &self.config,
                    &mut out,
                );
                out
            };
            self.run(effects).await;
        }
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
                    self.bus.publish_to(user, device, Arc::from(event.render()));
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
            data: Some(
                CallRecord::Ended {
                    id,
                    reason: ended.reason,
                    duration_ms: Some(duration_ms),
                    started_at: None,
                    participants: ended.participants,
                }
                .data(),
            ),
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
                    data: Some(
                        CallRecord::Ended {
                            id,
                            reason: "interrupted",
                            duration_ms: None,
                            started_at: Some(started_at.to_rfc3339()),
                            participants: Vec::new(),
                        }
                        .data(),
                    ),
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
}

fn user_of(caller: &Caller) -> Result<UserId, Error> {
    match &caller.who {
        Who::User { user, .. } => Ok(user.id),
        Who::App => Err(Error::InvalidRequest(
            "calls are for users, not the application's bot".to_owned(),
        )),
    }
}

fn sfu_error(e: SfuError) -> Error {
    match e {
        SfuError::Join(e) => Error::InvalidRequest(format!("sdp: {e}")),
        other => Error::MediaUnavailable(format!("the SFU cannot take this session: {other}")),
    }
}
