//! Outgoing webhooks: an application registers endpoints with the kinds of
//! events it wants; each event is POSTed to each of them, signed, from a
//! durable outbox, retried with exponential backoff until it is delivered
//! or dead.
//!
//! **Where events come from.** The messaging service writes each event an
//! endpoint may want (a message posted, edited or deleted; a click on a
//! bot's action; a call's start or end message) also to the log of the
//! application's *webhook sink* ([`sink_id`]), a participant no one
//! connects as, in the event's own transaction: once a message is
//! acknowledged to its sender, its webhook event is as durable as the
//! message. A user provisioned for the first time is written there right
//! after the user is. [`Taps`] says which applications want which kinds,
//! so applications without endpoints cost nothing.
//!
//! **From log to deliveries.** [`sender`] turns the sink log past the
//! application's cursor into one delivery per interested endpoint, in
//! one transaction with the cursor's move (idempotent: a delivery is
//! unique per endpoint and event), then claims due deliveries for a
//! lease and attempts them. A process killed mid-attempt leaves the lease
//! to run out and the attempt is made again: delivery is at least once,
//! and the `webhook-id` header (the same on every attempt and every
//! endpoint) lets the receiver drop repeats.
//!
//! **Isolation.** Attempts run off the message path, at most
//! `[webhooks] per_endpoint` at a time to one endpoint and `concurrency`
//! overall, each bounded by `timeout_secs`: a slow or dead endpoint holds
//! up only its own deliveries.
//!
//! **Destinations.** Deliveries reach only public addresses unless the
//! operator allows internal networks ([`guard`]): an application cannot
//! use the server to call into the network it runs in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::audit::Audited;
use crate::error::Error;
use crate::ids::{AppId, DeliveryId, EndpointId, UserId};
use crate::server::Services;
use crate::store::Application;
use crate::store::Store;
use crate::store::outbox::{Delivery, DeliveryState, Endpoint};

pub mod guard;
pub mod sender;

pub use sender::{Outbox, signature};

/// The kinds of events an endpoint may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `message.created`, `message.edited`, `message.deleted` in the
    /// application's conversations.
    Message,
    /// `action.clicked`: a user clicked a button of the bot's message.
    Action,
    /// `call.started`, `call.ended`.
    Call,
    /// `user.provisioned`: a user of the application was created.
    User,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::Message, Self::Action, Self::Call, Self::User];

    /// Its name in requests.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Action => "action",
            Self::Call => "call",
            Self::User => "user",
        }
    }

    /// The kind a name stands for.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The participant whose event log is an application's webhook outbox.
/// No one connects as it; it is never a member of anything.
#[must_use]
pub fn sink_id(app: AppId) -> UserId {
    const SINK: u128 = 0x5157_0000_0000_4000_8000_0000_0000_0000;
    UserId(uuid::Uuid::from_u128(app.0.as_u128() ^ SINK))
}

/// How long [`Taps`] trusts what it read: on a cluster, another node's
/// new endpoint is seen this late at the latest.
const TAP_TTL: Duration = Duration::from_secs(3);

/// Which applications have endpoints for which kinds of events (read from
/// the store, kept 3 s).
#[derive(Debug, Default)]
pub struct Taps {
    wanted: Mutex<HashMap<AppId, (Instant, u8)>>,
    /// Woken when an event is written to a sink.
    written: tokio::sync::Notify,
}

impl Taps {
    /// The application's sink when it has a live endpoint for any of
    /// `kinds` (also when the store cannot tell: an event too many is
    /// harmless, one too few is lost).
    pub async fn sink(&self, store: &dyn Store, app: AppId, kinds: &[Kind]) -> Option<UserId> {
        let mask = kinds.iter().fold(0, |m, k| m | k.bit());
        let known = self
            .wanted
            .lock()
            .expect("taps lock")
            .get(&app)
            .filter(|(at, _)| at.elapsed() < TAP_TTL)
            .map(|(_, bits)| *bits);
        let bits = match known {
            Some(bits) => bits,
            None => match store.endpoints_of(app).await {
                Ok(endpoints) => {
                    let bits = endpoints
                        .iter()
                        .filter(|e| e.revoked_at.is_none())
                        .flat_map(|e| e.kinds.iter().filter_map(|k| Kind::parse(k)))
                        .fold(0, |m, k| m | k.bit());
                    self.wanted
                        .lock()
                        .expect("taps lock")
                        .insert(app, (Instant::now(), bits));
                    bits
                }
                Err(e) => {
                    tracing::warn!(%app, error = %e, "reading webhook endpoints failed");
                    u8::MAX
                }
            },
        };
        (bits & mask != 0).then(|| sink_id(app))
    }

    /// The application's endpoints changed on this node.
    pub fn forget(&self, app: AppId) {
        self.wanted.lock().expect("taps lock").remove(&app);
    }

    /// An event was written to a sink: the sender looks now.
    pub fn written(&self) {
        self.written.notify_one();
    }

    /// Waits for [`Self::written`].
    pub async fn wait_written(&self) {
        self.written.notified().await;
    }
}

/// The webhook type of a sink event (the event as WebSocket clients get
/// it), with its kind; `None` for an event no endpoint is sent.
#[must_use]
pub fn classify(event: &serde_json::Value) -> Option<(Kind, &'static str)> {
    let message = &event["message"];
    // A call's records: its start is posted by the caller, its end by the
    // application, each with the client id the calls service gives it.
    let client_id = message["client_id"].as_str().unwrap_or_default();
    let record = client_id.starts_with("call-");
    Some(match event["kind"].as_str()? {
        "message" => match message["data"]["call"]["event"].as_str() {
            Some("started") if record && client_id.ends_with("-start") => {
                (Kind::Call, "call.started")
            }
            Some("ended") if record && message["author"]["kind"] == "app" => {
                (Kind::Call, "call.ended")
            }
            _ => (Kind::Message, "message.created"),
        },
        "message_edited" => (Kind::Message, "message.edited"),
        "message_deleted" => (Kind::Message, "message.deleted"),
        "action" => (Kind::Action, "action.clicked"),
        "user_provisioned" => (Kind::User, "user.provisioned"),
        _ => return None,
    })
}

/// The idempotency id of an application's sink event `seq`: the same on
/// every attempt and every endpoint.
#[must_use]
pub fn event_id(app: AppId, seq: u64) -> String {
    format!("evt_{}_{seq}", app.0.simple())
}

/// Most endpoints of one application.
pub const MAX_ENDPOINTS: usize = 20;

/// Longest time a rotated endpoint secret keeps signing: a week.
pub const MAX_KEEP_PREVIOUS: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a rotated endpoint secret keeps signing unless told: a day.
pub const KEEP_PREVIOUS: Duration = Duration::from_secs(24 * 3600);

/// Longest endpoint URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

impl Services {
    /// Registers an endpoint of `app` for `kinds`; it gets the events
    /// written from now on. Its signing secret is in the answer (and in
    /// [`Self::webhook_endpoints`]).
    ///
    /// # Errors
    /// `invalid_request` for a bad URL, an unknown or no kind, or past
    /// [`MAX_ENDPOINTS`].
    pub async fn create_endpoint(
        &self,
        app: &Application,
        url: &str,
        kinds: &[String],
        ip: Option<IpAddr>,
    ) -> Result<Endpoint, Error> {
        check_url(url, &self.config.webhooks.allowed_networks)?;
        let mut wanted: Vec<String> = Vec::new();
        for kind in kinds {
            let kind = Kind::parse(kind).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "events: unknown kind {kind:?} (message, action, call, user)"
                ))
            })?;
            if !wanted.iter().any(|k| k == kind.as_str()) {
                wanted.push(kind.as_str().to_owned());
            }
        }
        if wanted.is_empty() {
            return Err(Error::InvalidRequest(
                "events: at least one kind (message, action, call, user)".to_owned(),
            ));
        }
        let live = self.store.endpoints_of(app.id).await?;
        if live.iter().filter(|e| e.revoked_at.is_none()).count() >= MAX_ENDPOINTS {
            return Err(Error::InvalidRequest(format!(
                "an application has at most {MAX_ENDPOINTS} endpoints"
            )));
        }
        let endpoint = Endpoint {
            id: EndpointId::random(),
            app_id: app.id,
            url: url.to_owned(),
            kinds: wanted,
            secret: sender::new_secret(),
            previous_secret: None,
            start_seq: self.messaging.store().event_head(sink_id(app.id)).await?,
            created_at: self.clock.now(),
            revoked_at: None,
        };
        self.store.create_endpoint(&endpoint).await?;
        self.messaging.taps().forget(app.id);
        let what = Audited::by_app_on(app, "endpoint.created", format!("endpoint:{}", endpoint.id))
            .with(serde_json::json!({"url": url, "events": endpoint.kinds}));
        self.audit(what, ip).await;
        Ok(endpoint)
    }

    /// An application's endpoints, revoked ones too.
    ///
    /// # Errors
    /// On store failure.
    pub async fn webhook_endpoints(&self, app: &Application) -> Result<Vec<Endpoint>, Error> {
        Ok(self.store.endpoints_of(app.id).await?)
    }

    /// Revokes an endpoint: nothing more is sent to it, and what was
    /// waiting is dropped.
    ///
    /// # Errors
    /// `not_found` for another application's, an unknown or a revoked one.
    pub async fn revoke_endpoint(
        &self,
        app: &Application,
        id: EndpointId,
        ip: Option<IpAddr>,
    ) -> Result<(), Error> {
        if !self
            .store
            .revoke_endpoint(app.id, id, self.clock.now())
            .await?
        {
            return Err(Error::NotFound("endpoint"));
        }
        self.messaging.taps().forget(app.id);
        let what = Audited::by_app_on(app, "endpoint.revoked", format!("endpoint:{id}"));
        self.audit(what, ip).await;
        Ok(())
    }

    /// Gives an endpoint a new signing secret. The one it had keeps
    /// signing beside it for `keep_previous` (deliveries then carry both
    /// signatures), so that receivers can switch without refusing any; zero
    /// ends it at once (a leaked secret).
    ///
    /// # Errors
    /// `invalid_request` past [`MAX_KEEP_PREVIOUS`]; `not_found` for
    /// another application's, an unknown or a revoked endpoint.
    pub async fn rotate_endpoint_secret(
        &self,
        app: &Application,
        id: EndpointId,
        keep_previous: Duration,
        ip: Option<IpAddr>,
    ) -> Result<Endpoint, Error> {
        if keep_previous > MAX_KEEP_PREVIOUS {
            return Err(Error::InvalidRequest(format!(
                "keep_previous_secs: at most {}",
                MAX_KEEP_PREVIOUS.as_secs()
            )));
        }
        let secret = sender::new_secret();
        let keep_until = (!keep_previous.is_zero()).then(|| self.clock.now().plus(keep_previous));
        if !self
            .store
            .rotate_endpoint_secret(app.id, id, &secret, keep_until)
            .await?
        {
            return Err(Error::NotFound("endpoint"));
        }
        let what = Audited::by_app_on(app, "endpoint.secret_rotated", format!("endpoint:{id}"))
            .with(serde_json::json!({"keep_previous_secs": keep_previous.as_secs()}));
        self.audit(what, ip).await;
        self.store
            .endpoints_of(app.id)
            .await?
            .into_iter()
            .find(|e| e.id == id)
            .ok_or(Error::NotFound("endpoint"))
    }

    /// An endpoint's delivery log, newest first.
    ///
    /// # Errors
    /// `not_found` for an endpoint of another application.
    pub async fn endpoint_deliveries(
        &self,
        app: &Application,
        id: EndpointId,
        state: Option<DeliveryState>,
        before: Option<DeliveryId>,
        limit: u32,
    ) -> Result<Vec<Delivery>, Error> {
        self.own_endpoint(app, id).await?;
        Ok(self.store.deliveries(id, state, before, limit).await?)
    }

    /// Makes a dead delivery pending again (attempts start over).
    ///
    /// # Errors
    /// `not_found` for an endpoint of another application or no such dead
    /// delivery of it.
    pub async fn retry_delivery(
        &self,
        app: &Application,
        endpoint: EndpointId,
        id: DeliveryId,
        ip: Option<IpAddr>,
    ) -> Result<(), Error> {
        self.own_endpoint(app, endpoint).await?;
        if !self
            .store
            .retry_delivery(app.id, endpoint, id, self.clock.now())
            .await?
        {
            return Err(Error::NotFound("dead delivery"));
        }
        self.messaging.taps().written();
        let what = Audited::by_app_on(app, "delivery.retried", format!("delivery:{id}"))
            .with(serde_json::json!({"endpoint_id": endpoint}));
        self.audit(what, ip).await;
        Ok(())
    }

    async fn own_endpoint(&self, app: &Application, id: EndpointId) -> Result<Endpoint, Error> {
        self.store
            .endpoints_of(app.id)
            .await?
            .into_iter()
            .find(|e| e.id == id)
            .ok_or(Error::NotFound("endpoint"))
    }
}

fn check_url(url: &str, allowed_networks: &[String]) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::InvalidRequest(format!("url: {why}")));
    if url.len() > MAX_URL_BYTES {
        return bad("at most 2048 bytes");
    }
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return bad("not an absolute URL");
    };
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return bad("an http or https URL with a host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return bad("no user or password in it (the signature authenticates deliveries)");
    }
    // (A host name is checked at each attempt, when it is resolved.)
    if let Some(ip) = sender::literal_ip(url)
        && !guard::Destinations::new(allowed_networks).permits(ip)
    {
        return bad(&guard::Destinations::refusal(ip));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Kind, classify};

    fn message(author: &str, client_id: &str, call: &str) -> serde_json::Value {
        json!({"kind": "message", "message": {"author": {"kind": author},
            "client_id": client_id, "data": {"call": {"event": call}}}})
    }

    #[test]
    fn call_records_are_told_from_messages_that_look_like_them() {
        // The start is posted by the caller, the end by the application.
        assert_eq!(
            classify(&message("user", "call-7-start", "started")),
            Some((Kind::Call, "call.started"))
        );
        assert_eq!(
            classify(&message("app", "call-7-end", "ended")),
            Some((Kind::Call, "call.ended"))
        );
        // A user's own message with such data is a message.
        for (author, client_id, call) in [
            ("user", "mine", "started"),
            ("user", "call-7-end", "ended"),
            ("app", "bot-1", "ended"),
        ] {
            assert_eq!(
                classify(&message(author, client_id, call)),
                Some((Kind::Message, "message.created"))
            );
        }
        assert_eq!(
            classify(&json!({"kind": "action", "value": "yes"})),
            Some((Kind::Action, "action.clicked"))
        );
        assert_eq!(classify(&json!({"kind": "read", "seq": 3})), None);
    }
}
