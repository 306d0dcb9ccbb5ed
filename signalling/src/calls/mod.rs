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
//! Shape: a sans-IO state machine (`machine`: every request, SFU event,
//! lost connection and timer is a `handle_*` input; what follows is a
//! queue of `Effect`s and the next deadline) and this async service, its
//! driver. One mutex over the machine is held for one input, never across
//! an await; the driver then carries the effects out (events to devices,
//! SFU commands, the messages that record a call) and does what needs the
//! store or the SFU between inputs.
//!
//! Files: this one holds the driver of a call's life (start, join,
//! decline, leave, timers, recovery after a restart); `media` the driver
//! of signals, SFU sessions and SFU events; `machine` the inputs (those
//! about media sessions and SFU events in `sessions`);
//! `state` the bookkeeping and the transitions the inputs share; `view`
//! what clients see; `turn` the ICE servers and TURN credentials.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use confer_sfu::api::{SfuControl, SfuError};

use crate::bus::Bus;
use crate::config::{CallConfig, IceServer};
use crate::error::Error;
use crate::ids::{CallId, Clock, ConversationId, UserId};
use crate::messaging::{Caller, Messaging, Who};
use crate::proto::Ephemeral;
use crate::proto::server::CallRecord;
use crate::store::messaging::MessageBody;

mod cluster;
mod machine;
mod media;
mod sessions;
mod state;
#[cfg(test)]
mod tests;
mod turn;
mod view;

use machine::{Machine, Offer, Started};
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
    machine: Mutex<Machine>,
    /// Told when a timer is added, so that [`Self::run_timers`] looks at
    /// the next deadline again.
    timers_changed: tokio::sync::Notify,
    /// On a cluster: the calls other nodes hold, with the users asked to
    /// each (for the `calls` of a `welcome` on this node).
    remote_calls: Mutex<std::collections::HashMap<CallId, Vec<UserId>>>,
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
        let machine = Mutex::new(Machine::new(config.clone()));
        let calls = Arc::new(Self {
            config,
            messaging,
            bus,
            sfu,
            clock,
            machine,
            timers_changed: tokio::sync::Notify::new(),
            remote_calls: Mutex::default(),
        });
        calls.listen_to_nodes();
        calls
    }

    /// The STUN/TURN servers `user` uses for peer-to-peer media.
    #[must_use]
    pub fn ice_servers(&self, user: UserId) -> Vec<IceServer> {
        ice_servers_for(&self.config, user, self.clock.now())
    }

    /// The SFU the calls use.
    #[must_use]
    pub fn sfu(&self) -> &Arc<dyn SfuControl> {
        &self.sfu
    }

    fn lock(&self) -> Result<MutexGuard<'_, Machine>, Error> {
        self.machine
            .lock()
            .map_err(|_| Error::internal(anyhow::anyhow!("calls lock poisoned")))
    }

    /// Gives the machine one input, then carries out what follows from it
    /// once the lock is released (and wakes the timer task when the next
    /// deadline moved).
    async fn step<T>(
        &self,
        input: impl FnOnce(&mut Machine) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (answer, effects, timers_moved) = {
            let mut machine = self.lock()?;
            machine.set_wall_clock(self.clock.now());
            let before = machine.poll_timeout();
            let answer = input(&mut machine);
            let effects: Vec<Effect> = std::iter::from_fn(|| machine.poll_effect()).collect();
            (answer, effects, machine.poll_timeout() != before)
        };
        if timers_moved {
            self.timers_changed.notify_one();
        }
        self.run(effects).await;
        answer
    }

    /// Active calls `user` was asked to, for a connection that starts.
    #[must_use]
    pub fn active_for(&self, user: UserId) -> Vec<CallView> {
        self.lock().map(|m| m.active_for(user)).unwrap_or_default()
    }

    /// Starts a call in a conversation; the caller joins it on `device`
    /// and every other member rings (or is busy in another call).
    ///
    /// # Errors
    /// `forbidden` for a non-member; `busy` when the caller is in another
    /// call; `call_in_progress` when the conversation has one.
    pub async fn start(
        &self,
        caller: &Caller,
        device: u64,
        conversation_id: ConversationId,
        media: CallMedia,
        device_key: Option<String>,
    ) -> Result<CallView, Error> {
        let me = user_of(caller)?;
        let members = self.messaging.members_of(caller, conversation_id).await?;
        let started_at = self.clock.now();
        let id = self.new_call_id();
        self.step(|m| m.handle_start(caller, me, conversation_id, id))
            .await?;
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
            ..MessageBody::default()
        };
        let recorded = match self
            .messaging
            .send(caller, conversation_id, &format!("call-{id}-start"), body)
            .await
        {
            Ok(_) => self
                .messaging
                .store()
                .set_call_open(id, Some((caller.app.id, conversation_id, started_at)))
                .await
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        let asked = members.clone();
        let started = Started {
            caller: caller.clone(),
            id,
            conversation_id,
            media,
            members,
            device,
            device_key,
            started_at,
        };
        let view = self
            .step(|m| m.handle_started(Instant::now(), started, recorded))
            .await?;
        self.tell_nodes_opened(id, asked);
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
        if let Some(node) = self.remote_owner(id) {
            return match self
                .forward(
                    node,
                    caller,
                    device,
                    id,
                    cluster::Op::Join { key: device_key },
                )
                .await?
            {
                cluster::Answer::Joined { call, ice_servers } => Ok((call, ice_servers)),
                other => Err(unexpected(&other)),
            };
        }
        let conversation = self.lock()?.conversation_of(caller, id)?;
        // Membership is checked now, not when the call started.
        self.messaging.readable(caller, conversation).await?;
        let view = self
            .step(|m| m.handle_join(me, device, id, device_key))
            .await?;
        Ok((view, ice_servers_for(&self.config, me, self.clock.now())))
    }

    /// Declines a ringing call, or says busy.
    ///
    /// # Errors
    /// `not_found`; `not_ringing` when the caller's devices do not ring.
    pub async fn decline(&self, caller: &Caller, id: CallId, busy: bool) -> Result<(), Error> {
        let me = user_of(caller)?;
        if let Some(node) = self.remote_owner(id) {
            return self
                .forward(node, caller, 0, id, cluster::Op::Decline { busy })
                .await
                .map(drop);
        }
        self.step(|m| m.handle_decline(caller, me, id, busy)).await
    }

    /// Leaves (hangs up) a call.
    ///
    /// # Errors
    /// `not_found`; `not_joined`.
    pub async fn leave(&self, caller: &Caller, device: u64, id: CallId) -> Result<(), Error> {
        let me = user_of(caller)?;
        if let Some(node) = self.remote_owner(id) {
            return self
                .forward(node, caller, device, id, cluster::Op::Leave)
                .await
                .map(drop);
        }
        self.step(|m| m.handle_leave(caller, me, device, id)).await
    }

    /// A connection closed. If its user was in a call on it, the call
    /// keeps its place (and its media sessions, which do not depend on the
    /// WebSocket) for `reconnect_grace_secs`: a `call_join` from a new
    /// connection within that time takes it back; otherwise it leaves.
    pub async fn disconnected(&self, user: UserId, device: u64) {
        // On a cluster the call may be another node's.
        self.tell_nodes_disconnected(user, device);
        self.disconnected_here(user, device).await;
    }

    async fn disconnected_here(&self, user: UserId, device: u64) {
        let _ = self
            .step(|m| {
                m.handle_disconnected(Instant::now(), user, device);
                Ok(())
            })
            .await;
    }

    /// Runs the calls' timers (ring expiry, reconnection grace) as they
    /// fall due: the machine says when the next one is due and what it
    /// does; this only waits for it. Runs as long as the process.
    pub async fn run_timers(self: Arc<Self>) {
        loop {
            // Registered before looking, so that a timer added meanwhile
            // is not slept through.
            let changed = self.timers_changed.notified();
            let next = match self.lock() {
                Ok(machine) => machine.poll_timeout(),
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
            let _ = self
                .step(|m| {
                    m.handle_timeout(Instant::now());
                    Ok(())
                })
                .await;
        }
    }

    /// `user` was locked or its application unregistered: it leaves its
    /// call at once (no grace period), and its media sessions end.
    pub async fn revoke(&self, user: UserId) {
        self.tell_nodes_revoked(user);
        self.revoke_here(user).await;
    }

    async fn revoke_here(&self, user: UserId) {
        let _ = self
            .step(|m| {
                m.handle_revoke(user);
                Ok(())
            })
            .await;
    }

    /// `user` is no longer a member of `conversation`: it is dropped from
    /// the conversation's call.
    pub async fn member_removed(&self, conversation: ConversationId, user: UserId) {
        self.tell_nodes_removed(conversation, user);
        self.member_removed_here(conversation, user).await;
    }

    async fn member_removed_here(&self, conversation: ConversationId, user: UserId) {
        let _ = self
            .step(|m| {
                m.handle_member_removed(conversation, user);
                Ok(())
            })
            .await;
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
        self.tell_nodes_closed(ended.id);
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
            ..MessageBody::default()
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
    /// `interrupted`. Run once at start, before serving. On a cluster it
    /// does nothing: the calls of a node that is gone are found by
    /// [`Self::sweep_orphans`], and the open calls of other nodes go on.
    ///
    /// # Errors
    /// On store failure.
    pub async fn recover(&self, _users: &dyn crate::store::Store) -> Result<usize, Error> {
        if self.clustered() {
            return Ok(0);
        }
        let open = self.messaging.store().open_calls().await?;
        let count = open.len();
        for (id, app, conversation, started_at) in open {
            self.record_interrupted(id, app, conversation, started_at, "the server restarted")
                .await?;
        }
        Ok(count)
    }

    /// Records a call's end as `interrupted` (its state was lost with its
    /// process) and closes it in the store.
    async fn record_interrupted(
        &self,
        id: CallId,
        app: crate::ids::AppId,
        conversation: ConversationId,
        started_at: crate::ids::Timestamp,
        why: &str,
    ) -> Result<(), Error> {
        {
            if let Some(app) = self.messaging.users().application(app).await? {
                let body = MessageBody {
                    text: format!("Call interrupted: {why}"),
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
                    ..MessageBody::default()
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
        }
        self.messaging.store().set_call_open(id, None).await?;
        Ok(())
    }
}

/// A forwarded request answered with the wrong kind of answer (a bug).
fn unexpected(answer: &cluster::Answer) -> Error {
    Error::internal(anyhow::anyhow!("the call's node answered {answer:?}"))
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
