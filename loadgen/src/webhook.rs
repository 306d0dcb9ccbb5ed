//! `chat --webhook`: a receiver of the applications' outgoing webhooks, to
//! measure what an endpoint costs the message path and how late its
//! deliveries come.
//!
//! Each application registers an endpoint for `message` events pointing
//! at an HTTP server of this process on loopback. Every `message.created`
//! delivery is counted once per `webhook-id` and its lag — from the moment
//! loadgen sent the message (the time it wrote into the message's `data`)
//! to the delivery's arrival — recorded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, bail};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::measure::{Percentiles, histogram};

/// What the receiver saw.
#[derive(Debug, Default, Serialize)]
pub struct WebhookReport {
    /// `message.created` deliveries of loadgen's messages received.
    pub received: u64,
    /// Of those, distinct events.
    pub unique: u64,
    /// Received more than once (at least once delivery).
    pub duplicates: u64,
    /// Messages the server acknowledged, each one event.
    pub expected: u64,
    /// Acknowledged messages whose event did not arrive before the report.
    pub missing: u64,
    /// From sending the message to its delivery's arrival.
    pub lag_ms: Percentiles,
}

#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    received: u64,
    lag: Option<Histogram<u64>>,
}

/// The receiver: its URL and what it counted.
#[derive(Clone)]
pub struct Receiver {
    /// Where deliveries go.
    pub url: String,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    /// Listens on a free loopback port.
    ///
    /// # Errors
    /// When it cannot bind.
    pub async fn start(epoch: Instant) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/webhook", listener.local_addr()?);
        let seen = Arc::new(Mutex::new(Seen {
            lag: Some(histogram()),
            ..Seen::default()
        }));
        let state = seen.clone();
        let app = axum::Router::new().route(
            "/webhook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    take(&state, epoch, &headers, &body);
                    StatusCode::NO_CONTENT
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, seen })
    }

    /// Registers this receiver as an endpoint of application `app` for
    /// its `message` events.
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn register(
        &self,
        http: &reqwest::Client,
        base: &str,
        (app_id, secret): (&str, &str),
    ) -> anyhow::Result<()> {
        let r = http
            .post(format!("{base}/api/v1/webhook-endpoints"))
            .basic_auth(app_id, Some(secret))
            .json(&serde_json::json!({"url": self.url, "events": ["message"]}))
            .send()
            .await
            .context("POST /api/v1/webhook-endpoints")?;
        if !r.status().is_success() {
            bail!(
                "POST /api/v1/webhook-endpoints: {} {}",
                r.status(),
                r.text().await?
            );
        }
        Ok(())
    }

    /// The report, against `expected` acknowledged messages.
    #[must_use]
    pub fn report(&self, expected: u64) -> WebhookReport {
        let seen = self.seen.lock().expect("receiver lock");
        let unique = seen.ids.len() as u64;
        WebhookReport {
            received: seen.received,
            unique,
            duplicates: seen.received - unique,
            expected,
            missing: expected.saturating_sub(unique),
            lag_ms: seen.lag.as_ref().map(Percentiles::of).unwrap_or_default(),
        }
    }
}

fn take(seen: &Mutex<Seen>, epoch: Instant, headers: &HeaderMap, body: &[u8]) {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    if event["type"] != "message.created" {
        return;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // `data.lg` is [sender, number, microseconds since `epoch` at sending].
    let lag_us = event["data"]["message"]["data"]["lg"][2]
        .as_u64()
        .map(|sent| crate::measure::micros_since(epoch).saturating_sub(sent));
    // Only loadgen's own messages count (not, say, a bot's).
    let Some(lag) = lag_us else {
        return;
    };
    let mut seen = seen.lock().expect("receiver lock");
    seen.received += 1;
    if seen.ids.insert(id)
        && let Some(h) = seen.lag.as_mut()
    {
        let _ = h.record(lag.max(1));
    }
}
