//! The delivery loop: sink log → deliveries → signed POSTs.
//!
//! Signatures follow the Standard Webhooks scheme: headers `webhook-id`,
//! `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! (`v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` under the
//! secret's decoded bytes; the secret is `whsec_` and base64).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use sha2::Sha256;
use tokio::sync::Semaphore;

use super::guard::{self, Destinations, Resolver};
use super::{classify, event_id, sink_id};
use crate::config::WebhookConfig;
use crate::ids::{AppId, Clock, DeliveryId, EndpointId, Timestamp};
use crate::store::Store;
use crate::store::messaging::MessageStore;
use crate::store::outbox::{Attempt, Delivery, DeliveryState, Endpoint};

use super::Taps;

/// How often the loop looks when nothing wakes it.
const POLL: Duration = Duration::from_millis(250);

/// How long the loop waits, once woken by a new event, for more.
const GATHER: Duration = Duration::from_millis(10);

/// Sink events turned into deliveries per application per pass.
const FAN_IN_BATCH: u32 = 500;

/// A new signing secret: `whsec_` and base64 of 32 random bytes.
#[must_use]
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

/// The `webhook-signature` value of a delivery: `v1,` and the base64
/// HMAC-SHA256 of `id.timestamp.body`.
#[must_use]
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .unwrap_or_else(|_| secret.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header of a delivery to `endpoint` at `now`:
/// its secret's signature, then, while a rotated-out secret still signs,
/// that one's too (space-separated, as Standard Webhooks allows).
fn signatures(endpoint: &Endpoint, now: Timestamp, id: &str, timestamp: i64, body: &str) -> String {
    let mut header = signature(&endpoint.secret, id, timestamp, body);
    if let Some((previous, _)) = endpoint
        .previous_secret
        .as_ref()
        .filter(|(_, until)| now < *until)
    {
        header.push(' ');
        header.push_str(&signature(previous, id, timestamp, body));
    }
    header
}

/// Attempts deliveries; one per process.
#[derive(Debug)]
pub struct Outbox {
    store: Arc<dyn Store>,
    messages: Arc<dyn MessageStore>,
    clock: Arc<dyn Clock>,
    config: WebhookConfig,
    taps: Arc<Taps>,
    http: reqwest::Client,
    /// Where deliveries may go (its resolver is the client's).
    destinations: Arc<Destinations>,
    /// Attempts in flight, per endpoint.
    in_flight: Mutex<HashMap<EndpointId, u32>>,
    slots: Arc<Semaphore>,
}

impl Outbox {
    /// A sender over these backends.
    ///
    /// # Panics
    /// If the HTTP client cannot be built (no TLS provider installed).
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        messages: Arc<dyn MessageStore>,
        clock: Arc<dyn Clock>,
        config: WebhookConfig,
        taps: Arc<Taps>,
    ) -> Self {
        // (Built before any other client may have installed one.)
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let destinations = Arc::new(Destinations::new(&config.allowed_networks));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(Resolver::new(destinations.clone())))
            .user_agent(concat!("Confer-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client builds");
        let slots = Arc::new(Semaphore::new(config.concurrency as usize));
        Self {
            store,
            messages,
            clock,
            config,
            taps,
            http,
            destinations,
            in_flight: Mutex::default(),
            slots,
        }
    }

    /// Runs until aborted: every pass turns new sink events into
    /// deliveries and starts the due attempts.
    pub async fn run(self: Arc<Self>) {
        let mut endpoints: HashMap<EndpointId, Endpoint> = HashMap::new();
        loop {
            self.read_endpoints(&mut endpoints).await;
            if !endpoints.is_empty() {
                if let Err(e) = self.fan_in(&endpoints).await {
                    tracing::warn!(error = %e, "enqueueing webhook deliveries failed");
                }
                if let Err(e) = self.start_due(&mut endpoints).await {
                    tracing::warn!(error = %e, "claiming webhook deliveries failed");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = self.taps.wait_written() => {
                    // Events come in bursts: one pass takes a few.
                    tokio::time::sleep(GATHER).await;
                }
            }
        }
    }

    /// Replaces `endpoints` with the live endpoints, or keeps them (and
    /// logs) when they cannot be read.
    async fn read_endpoints(&self, endpoints: &mut HashMap<EndpointId, Endpoint>) {
        match self.store.live_endpoints().await {
            Ok(live) => *endpoints = live.into_iter().map(|e| (e.id, e)).collect(),
            Err(e) => tracing::warn!(error = %e, "reading webhook endpoints failed"),
        }
    }

    /// Turns each application's new sink events into deliveries.
    async fn fan_in(
        &self,
        endpoints: &HashMap<EndpointId, Endpoint>,
    ) -> Result<(), crate::store::StoreError> {
        let mut by_app: HashMap<AppId, Vec<&Endpoint>> = HashMap::new();
        for e in endpoints.values() {
            by_app.entry(e.app_id).or_default().push(e);
        }
        for (app, mine) in by_app {
            let first = mine.iter().map(|e| e.start_seq).min().unwrap_or(0);
            let mut cursor = self.store.outbox_cursor(app).await?.max(first);
            loop {
                let events = self
                    .messages
                    .events_after(sink_id(app), cursor, FAN_IN_BATCH)
                    .await?;
                let Some(last) = events.last().map(|e| e.seq) else {
                    break;
                };
                // The endpoints as they are now, read after the events: one
                // registered since the pass began gets what it is owed (in
                // id order, so that two nodes insert in the same order).
                let mut mine: Vec<Endpoint> = self
                    .store
                    .endpoints_of(app)
                    .await?
                    .into_iter()
                    .filter(|e| e.revoked_at.is_none())
                    .collect();
                mine.sort_by_key(|e| e.id);
                let now = self.clock.now();
                let mut deliveries = Vec::new();
                for event in &events {
                    let Ok(value) = serde_json::from_str::<serde_json::Value>(&event.payload)
                    else {
                        continue;
                    };
                    let Some((kind, event_type)) = classify(&value) else {
                        continue;
                    };
                    let body = serde_json::json!({
                        "id": event_id(app, event.seq),
                        "type": event_type,
                        "app_id": app,
                        "created_at": now.to_rfc3339(),
                        "data": value,
                    })
                    .to_string();
                    for e in &mine {
                        if event.seq > e.start_seq && e.kinds.iter().any(|k| k == kind.as_str()) {
                            deliveries.push(Delivery {
                                id: DeliveryId::random(),
                                endpoint_id: e.id,
                                app_id: app,
                                event_seq: event.seq,
                                event_type: event_type.to_owned(),
                                payload: body.clone(),
                                state: DeliveryState::Pending,
                                attempts: 0,
                                next_attempt_at: now,
                                last_status: None,
                                last_error: None,
                                last_attempt_at: None,
                                created_at: now,
                            });
                        }
                    }
                }
                self.store
                    .enqueue_deliveries(app, last, &deliveries)
                    .await?;
                cursor = last;
                if events.len() < FAN_IN_BATCH as usize {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Claims what is due (no more to an endpoint than its limit leaves
    /// beside the attempts in flight to it) and
    /// starts each attempt on its own task.
    ///
    /// The attempts sign with the endpoints as read after the claim: a
    /// delivery exists only once its event was written, so an event written
    /// after a secret rotation is never signed with the replaced secret
    /// alone (nor, with `keep_previous_secs` 0, at all).
    async fn start_due(
        self: &Arc<Self>,
        endpoints: &mut HashMap<EndpointId, Endpoint>,
    ) -> Result<(), crate::store::StoreError> {
        let free = self.slots.available_permits();
        if free == 0 {
            return Ok(());
        }
        let in_flight: Vec<(EndpointId, u32)> = self
            .in_flight
            .lock()
            .expect("in-flight lock")
            .iter()
            .map(|(id, n)| (*id, *n))
            .collect();
        let now = self.clock.now();
        // A claimed delivery is someone's until its attempt could have
        // ended, with a margin (after a crash, it waits this long).
        let lease = now.plus(Duration::from_secs(self.config.timeout_secs + 5));
        let claimed = self
            .store
            .claim_deliveries(
                now,
                lease,
                u32::try_from(free).unwrap_or(u32::MAX),
                self.config.per_endpoint,
                &in_flight,
            )
            .await?;
        if claimed.is_empty() {
            return Ok(());
        }
        // Read again for the signing (see above); should that fail, the
        // claimed deliveries are signed with the endpoints the pass read.
        self.read_endpoints(endpoints).await;
        for delivery in claimed {
            let Some(endpoint) = endpoints.get(&delivery.endpoint_id).cloned() else {
                // Revoked since: its pending deliveries are gone too.
                continue;
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            *self
                .in_flight
                .lock()
                .expect("in-flight lock")
                .entry(endpoint.id)
                .or_default() += 1;
            let this = self.clone();
            tokio::spawn(async move {
                let attempt = this.attempt(&endpoint, &delivery).await;
                if let Err(e) = this.store.record_attempt(delivery.id, &attempt).await {
                    tracing::warn!(delivery = %delivery.id, error = %e, "recording a webhook attempt failed");
                }
                metrics::counter!("webhook_attempts_total",
                    "outcome" => if attempt.delivered { "delivered" } else if attempt.retry_at.is_some() { "failed" } else { "dead" })
                .increment(1);
                let mut in_flight = this.in_flight.lock().expect("in-flight lock");
                if let Some(n) = in_flight.get_mut(&endpoint.id) {
                    *n -= 1;
                    if *n == 0 {
                        in_flight.remove(&endpoint.id);
                    }
                }
                drop(in_flight);
                drop(permit);
                // A slot is free: look again now.
                this.taps.written();
            });
        }
        Ok(())
    }

    /// POSTs one delivery, signed; says how it went and when to retry.
    async fn attempt(&self, endpoint: &Endpoint, delivery: &Delivery) -> Attempt {
        let id = event_id(delivery.app_id, delivery.event_seq);
        let now = self.clock.now();
        let timestamp = now.as_secs();
        if let Some(ip) = literal_ip(&endpoint.url).filter(|ip| !self.destinations.permits(*ip)) {
            return self.failed(delivery, None, Destinations::refusal(ip));
        }
        let sent = self
            .http
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signatures(endpoint, now, &id, timestamp, &delivery.payload),
            )
            .body(delivery.payload.clone())
            .send()
            .await;
        if let Some(refused) = sent.as_ref().err().and_then(|e| guard::not_allowed(e)) {
            let why = refused.to_string();
            return self.failed(delivery, None, why);
        }
        let (status, error) = match sent {
            Ok(answer) if answer.status().is_success() => {
                return Attempt {
                    delivered: true,
                    status: Some(answer.status().as_u16()),
                    error: None,
                    at: self.clock.now(),
                    retry_at: None,
                };
            }
            Ok(answer) => (
                Some(answer.status().as_u16()),
                format!("answered {}", answer.status()),
            ),
            Err(e) if e.is_timeout() => (
                None,
                format!("no answer within {} s", self.config.timeout_secs),
            ),
            Err(e) if e.is_connect() => (None, "could not connect".to_owned()),
            Err(e) => (None, format!("request failed: {e}")),
        };
        self.failed(delivery, status, error)
    }

    /// A failed attempt of `delivery`, retried with backoff until
    /// `max_attempts`.
    fn failed(&self, delivery: &Delivery, status: Option<u16>, error: String) -> Attempt {
        let at = self.clock.now();
        let attempts = delivery.attempts + 1;
        let retry_at = (attempts < self.config.max_attempts).then(|| {
            let wait = self
                .config
                .retry_base_ms
                .saturating_mul(1 << delivery.attempts.min(30))
                .min(self.config.max_backoff_secs * 1000);
            at.plus(Duration::from_millis(wait))
        });
        Attempt {
            delivered: false,
            status,
            error: Some(error),
            at,
            retry_at,
        }
    }

    /// Deletes delivered and dead deliveries older than the log keeps.
    ///
    /// # Errors
    /// On store failure.
    pub async fn prune(&self) -> Result<u64, crate::store::StoreError> {
        let days = i64::try_from(self.config.log_retention_days).unwrap_or(i64::MAX);
        let before = Timestamp(
            self.clock
                .now()
                .0
                .saturating_sub(days.saturating_mul(24 * 60 * 60 * 1000)),
        );
        self.store.prune_deliveries(before).await
    }
}

/// The IP address `url` names as its host, if it names one (a name is
/// checked when it is resolved: [`Resolver`]).
pub(super) fn literal_ip(url: &str) -> Option<std::net::IpAddr> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    // (An IPv6 host comes in brackets.)
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_out_secret_signs_beside_the_new_one_until_its_end() {
        let mut endpoint = Endpoint {
            id: EndpointId::random(),
            app_id: AppId::random(),
            url: "https://erp.example/hook".to_owned(),
            kinds: vec!["message".to_owned()],
            secret: new_secret(),
            previous_secret: None,
            start_seq: 0,
            created_at: Timestamp(0),
            revoked_at: None,
        };
        let new = signature(&endpoint.secret, "evt_1", 5, "{}");
        assert_eq!(
            signatures(&endpoint, Timestamp(1000), "evt_1", 5, "{}"),
            new
        );
        let old = new_secret();
        endpoint.previous_secret = Some((old.clone(), Timestamp(2000)));
        let both = format!("{new} {}", signature(&old, "evt_1", 5, "{}"));
        assert_eq!(
            signatures(&endpoint, Timestamp(1999), "evt_1", 5, "{}"),
            both
        );
        assert_eq!(
            signatures(&endpoint, Timestamp(2000), "evt_1", 5, "{}"),
            new
        );
    }
}
