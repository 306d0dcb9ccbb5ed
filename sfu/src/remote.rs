//! An [`SfuControl`] for an SFU in another process, over HTTP/2 (one
//! connection, multiplexed): every command is a
//! `POST /control` of the standalone SFU ([`crate::wire`]), events are
//! read by long polls of `/control/events` that resume from the last
//! number seen (so a dropped connection loses nothing the SFU still
//! keeps), and health is polled once a second in the background so that
//! [`SfuControl::health`] stays a read without a round trip.
//!
//! A command that cannot reach the SFU, or gets no answer within
//! [`COMMAND_TIMEOUT`], fails with [`SfuError::Unavailable`] (the cause is
//! logged); one the SFU refused fails with the error it gave.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::control::{Joined, SfuControl, SfuError, SfuHealth, SfuStats};
use crate::core::simulcast::Preference;
use crate::engine::Role;
use crate::events::{EventSource, EventStream, Missed, Sequenced};
use crate::ids::{ParticipantId, RoomId};
use crate::relay::RelayPeer;
use crate::wire::{ControlAnswer, ControlCommand, EVENTS_WAIT, EventsPage};

/// How long a command may take, the SFU's answer included.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How often health is asked for (a media cluster notices a dead node
/// from it: [`crate::nodes`]).
pub const HEALTH_EVERY: Duration = Duration::from_millis(500);
/// How long a health request may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// A standalone SFU, driven over HTTP.
#[derive(Debug)]
pub struct RemoteSfu {
    link: Link,
    health: Arc<Mutex<SfuHealth>>,
    last: Arc<AtomicU64>,
    poller: tokio::task::JoinHandle<()>,
}

/// Where the SFU is and how to ask it.
#[derive(Debug, Clone)]
struct Link {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Link {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, timeout: Duration) -> Result<T, String> {
        let response = self
            .request(reqwest::Method::GET, path)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{path} answered {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    async fn command(&self, command: &ControlCommand) -> Result<ControlAnswer, SfuError> {
        let sent = self
            .request(reqwest::Method::POST, "/control")
            .timeout(COMMAND_TIMEOUT)
            .json(command)
            .send()
            .await;
        let answer = match sent {
            Ok(response) if response.status().is_success() => {
                response.json::<ControlAnswer>().await
            }
            Ok(response) => {
                tracing::warn!(status = %response.status(), "the SFU refused a control request");
                return Err(SfuError::Unavailable);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the SFU did not answer a command");
                return Err(SfuError::Unavailable);
            }
        };
        answer
            .map_err(|e| {
                tracing::warn!(error = %e, "the SFU's answer is not one");
                SfuError::Unavailable
            })?
            .into_result()
    }

    async fn done(&self, command: &ControlCommand) -> Result<(), SfuError> {
        match self.command(command).await? {
            ControlAnswer::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(answer: &ControlAnswer) -> SfuError {
    tracing::warn!(?answer, "the SFU answered another command");
    SfuError::Unavailable
}

impl RemoteSfu {
    /// Connects to the SFU whose HTTP front is at `base` (e.g.
    /// `http://10.0.0.5:8089`), with its bearer token if it has one.
    ///
    /// # Errors
    /// [`SfuError::Start`] when it does not answer its health route, or
    /// refuses the token.
    pub async fn connect(base: &str, token: Option<String>) -> Result<Arc<Self>, SfuError> {
        let remote = Self::open(base, token);
        match remote.check().await {
            Ok(()) => Ok(remote),
            Err(Check::Refused(why) | Check::Unreachable(why)) => Err(SfuError::Start(why)),
        }
    }

    /// A client of the SFU at `base` that does not ask it anything yet:
    /// its health says "unreachable" until the first answer (polled in
    /// the background, every [`HEALTH_EVERY`]).
    #[must_use]
    pub fn open(base: &str, token: Option<String>) -> Arc<Self> {
        // reqwest speaks TLS through rustls, which needs its provider
        // chosen (a no-op when the process already did).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // HTTP/2: commands, event long polls and health polls share one
        // connection (by prior knowledge on http://, by ALPN on https://).
        let mut client = reqwest::Client::builder();
        if base.starts_with("http://") {
            client = client.http2_prior_knowledge();
        }
        let link = Link {
            base: base.trim_end_matches('/').to_owned(),
            token,
            client: client.build().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no HTTP/2 client; using the default one");
                reqwest::Client::new()
            }),
        };
        let health = Arc::new(Mutex::new(SfuHealth {
            unreachable: Some("not asked yet".to_owned()),
            ..SfuHealth::default()
        }));
        let last = Arc::new(AtomicU64::new(0));
        let poller = tokio::spawn(poll_health(link.clone(), health.clone()));
        Arc::new(Self {
            link,
            health,
            last,
            poller,
        })
    }

    /// Asks the SFU for its health once, now (and keeps the answer).
    ///
    /// # Errors
    /// [`Check::Refused`] when it refuses the token (or answers with
    /// another error status), [`Check::Unreachable`] when it does not
    /// answer.
    pub async fn check(&self) -> Result<(), Check> {
        let base = &self.link.base;
        let response = self
            .link
            .request(reqwest::Method::GET, "/control/health")
            .timeout(COMMAND_TIMEOUT)
            .send()
            .await
            .map_err(|e| Check::Unreachable(format!("the SFU at {base} does not answer: {e}")))?;
        if !response.status().is_success() {
            return Err(Check::Refused(format!(
                "the SFU at {base} answered {} (is its token right?)",
                response.status()
            )));
        }
        let now: SfuHealth = response.json().await.map_err(|e| {
            Check::Unreachable(format!("the SFU at {base} answered no health: {e}"))
        })?;
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = now;
        Ok(())
    }

    /// The URL of its HTTP front.
    #[must_use]
    pub fn base(&self) -> &str {
        &self.link.base
    }
}

/// Why [`RemoteSfu::check`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Check {
    /// It answered, with an error status (a wrong token, most likely).
    #[error("{0}")]
    Refused(String),
    /// It did not answer.
    #[error("{0}")]
    Unreachable(String),
}

impl Drop for RemoteSfu {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Keeps `health` as the SFU last said, or says why it did not.
async fn poll_health(link: Link, health: Arc<Mutex<SfuHealth>>) {
    loop {
        tokio::time::sleep(HEALTH_EVERY).await;
        let now = match link
            .get::<SfuHealth>("/control/health", HEALTH_TIMEOUT)
            .await
        {
            Ok(now) => now,
            Err(why) => SfuHealth {
                unreachable: Some(why),
                ..SfuHealth::default()
            },
        };
        *health.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }
}

#[async_trait]
impl SfuControl for RemoteSfu {
    async fn create_room(&self, room: &RoomId) -> Result<(), SfuError> {
        self.link
            .done(&ControlCommand::CreateRoom { room: room.clone() })
            .await
    }

    async fn join_as(
        &self,
        room: &RoomId,
        participant: ParticipantId,
        role: Role,
        offer: String,
        linked: Option<ParticipantId>,
    ) -> Result<Joined, SfuError> {
        let command = ControlCommand::Join {
            room: room.clone(),
            participant,
            role,
            offer,
            linked,
        };
        match self.link.command(&command).await? {
            ControlAnswer::Joined { participant, sdp } => Ok(Joined {
                participant,
                answer: sdp,
            }),
            other => Err(unexpected(&other)),
        }
    }

    async fn renegotiate(
        &self,
        participant: ParticipantId,
        offer: String,
    ) -> Result<String, SfuError> {
        let command = ControlCommand::Renegotiate { participant, offer };
        match self.link.command(&command).await? {
            ControlAnswer::Sdp { sdp } => Ok(sdp),
            other => Err(unexpected(&other)),
        }
    }

    async fn leave(&self, participant: ParticipantId) -> Result<(), SfuError> {
        self.link.done(&ControlCommand::Leave { participant }).await
    }

    async fn set_preference(
        &self,
        participant: ParticipantId,
        preference: Preference,
    ) -> Result<(), SfuError> {
        self.link
            .done(&ControlCommand::SetPreference {
                participant,
                preference,
            })
            .await
    }

    async fn set_slot_preference(
        &self,
        participant: ParticipantId,
        mid: String,
        preference: Preference,
    ) -> Result<(), SfuError> {
        self.link
            .done(&ControlCommand::SetSlotPreference {
                participant,
                mid,
                preference,
            })
            .await
    }

    async fn close_room(&self, room: &RoomId) -> Result<(), SfuError> {
        self.link
            .done(&ControlCommand::CloseRoom { room: room.clone() })
            .await
    }

    async fn link_room(&self, room: &RoomId, peers: Vec<RelayPeer>) -> Result<(), SfuError> {
        self.link
            .done(&ControlCommand::LinkRoom {
                room: room.clone(),
                peers,
            })
            .await
    }

    async fn stats(&self) -> Result<SfuStats, SfuError> {
        self.link
            .get("/control/stats", COMMAND_TIMEOUT)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "the SFU did not give its counters");
                SfuError::Unavailable
            })
    }

    fn health(&self) -> SfuHealth {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn events(&self, after: u64) -> EventStream {
        EventStream::from_source(Box::new(RemoteEvents {
            link: self.link.clone(),
            after,
            last: self.last.clone(),
        }))
    }

    /// The last event number the SFU reported in a page of events read
    /// by any stream of this client (0 before the first page).
    fn last_event(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }
}

/// A stream of a standalone SFU's events, by long polls.
#[derive(Debug)]
struct RemoteEvents {
    link: Link,
    after: u64,
    last: Arc<AtomicU64>,
}

#[async_trait]
impl EventSource for RemoteEvents {
    async fn next(&mut self) -> Result<Vec<Sequenced>, Missed> {
        loop {
            let path = format!("/control/events?after={}", self.after);
            match self
                .link
                .get::<EventsPage>(&path, EVENTS_WAIT + COMMAND_TIMEOUT)
                .await
            {
                Ok(page) if page.last < self.after => {
                    // The SFU numbers from 1 again: it restarted (and its
                    // sessions went with it). Follow its new log from the
                    // start.
                    tracing::warn!(
                        was = self.after,
                        now = page.last,
                        "the SFU's event log started over"
                    );
                    self.after = 0;
                    self.last.store(page.last, Ordering::Relaxed);
                }
                Ok(page) => {
                    self.last.fetch_max(page.last, Ordering::Relaxed);
                    if let Some(missed) = page.missed {
                        self.after = missed.to;
                        return Err(missed);
                    }
                    if let Some(last) = page.events.last() {
                        self.after = last.seq;
                        return Ok(page.events);
                    }
                }
                Err(e) => {
                    // Down or restarting: ask again shortly, from where
                    // this stream was.
                    tracing::warn!(error = %e, "reading the SFU's events");
                    tokio::time::sleep(HEALTH_EVERY).await;
                }
            }
        }
    }

    fn position(&self) -> u64 {
        self.after
    }
}
