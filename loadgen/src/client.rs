//! One WebSocket user of the chat load: a writer task fed by a bounded
//! channel, and a reader task that answers requests and tallies every
//! message event (latency from the send time in its payload, duplicates).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::measure::{histogram, micros_since};

/// Frames a connection may have queued for sending; more are refused
/// (counted as backlog) rather than waited for.
pub const OUT_QUEUE: usize = 256;

/// What a reader saw.
#[derive(Debug)]
pub struct Tally {
    /// Delivery latency (send time in the payload → arrival), µs.
    pub latency: Histogram<u64>,
    /// Message events counted once.
    pub delivered: u64,
    /// Message events seen again.
    pub duplicated: u64,
    /// `ack`s of this user's own sends.
    pub acked: u64,
    /// `error`s answering this user's sends.
    pub errors: u64,
    /// `ack`s of this user's reactions.
    pub reactions_acked: u64,
    /// `error`s answering this user's reactions.
    pub reaction_errors: u64,
    /// `reaction` events received.
    pub reaction_events: u64,
    /// Highest message number seen per sender.
    seen: HashMap<u32, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: histogram(),
            reactions_acked: 0,
            reaction_errors: 0,
            reaction_events: 0,
            delivered: 0,
            duplicated: 0,
            acked: 0,
            errors: 0,
            seen: HashMap::new(),
        }
    }
}

/// Shared between a connection's reader and the driver.
#[derive(Debug, Default)]
pub struct Shared {
    /// The user's latest event number (to resume from).
    pub last_seq: AtomicU64,
    /// Set once the storm marker message arrived.
    pub caught_up: std::sync::atomic::AtomicBool,
    /// Where ephemeral events go, if anyone wants them (call events).
    pub ephemerals: Mutex<Option<mpsc::Sender<Value>>>,
    /// The newest message this user has seen (what its reactions go to).
    pub last_message: Mutex<Option<String>>,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// A connected user.
#[derive(Debug)]
pub struct Conn {
    out: mpsc::Sender<Message>,
    pending: Pending,
    reader: tokio::task::JoinHandle<Tally>,
    writer: tokio::task::JoinHandle<()>,
    stop: oneshot::Sender<()>,
    next_id: AtomicU64,
}

/// Notified when a reader sees the storm marker.
pub type CaughtUp = Arc<tokio::sync::Notify>;

impl Conn {
    /// Connects (`request`: a `ws://…/api/v1/ws?…` URL, or a request with
    /// headers) and waits for
    /// `welcome`; returns the connection and how long that took.
    ///
    /// # Errors
    /// If the connection or the upgrade fails, or no welcome comes in 30 s.
    pub async fn connect<R>(
        request: R,
        epoch: Instant,
        shared: Arc<Shared>,
        caught: Option<CaughtUp>,
    ) -> anyhow::Result<(Self, Duration)>
    where
        R: tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    {
        let started = Instant::now();
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            // Small frames go out at once, as browsers send them.
            tokio_tungstenite::connect_async_with_config(request, None, true),
        )
        .await
        .context("connect timed out")?
        .context("connect")?;
        let (mut sink, mut stream) = ws.split();
        let welcome = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .context("no welcome in 30 s")?
            .ok_or_else(|| anyhow!("closed before welcome"))??;
        let welcome: Value = serde_json::from_str(welcome.to_text()?)?;
        if welcome["type"] != "welcome" {
            return Err(anyhow!("expected welcome, got {welcome}"));
        }
        let took = started.elapsed();
        if let Some(seq) = welcome["event_seq"].as_u64() {
            shared.last_seq.fetch_max(seq, Ordering::Relaxed);
        }
        let (out, mut rx) = mpsc::channel::<Message>(OUT_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let pending: Pending = Arc::default();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let reader = {
            let pending = pending.clone();
            tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    tokio::select! {
                        m = stream.next() => match m {
                            Some(Ok(Message::Text(t))) => {
                                handle(&t, epoch, &mut tally, &pending, &shared, caught.as_ref());
                            }
                            Some(Ok(_)) => {}
                            _ => return tally,
                        },
                        _ = &mut stopped => return tally,
                    }
                }
            })
        };
        Ok((
            Self {
                out,
                pending,
                reader,
                writer,
                stop,
                next_id: AtomicU64::new(1),
            },
            took,
        ))
    }

    /// Sends a request and waits (30 s at most) for the frame answering it.
    ///
    /// # Errors
    /// If the connection is gone or nothing answers.
    pub async fn request(&self, mut frame: Value) -> anyhow::Result<Value> {
        let id = format!("q{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        frame["id"] = Value::String(id.clone());
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(id, tx);
        self.out
            .send(Message::Text(frame.to_string().into()))
            .await
            .map_err(|_| anyhow!("connection closed"))?;
        let answer = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .context("no answer in 30 s")??;
        if answer["type"] == "error" {
            return Err(anyhow!("{}", answer));
        }
        Ok(answer)
    }

    /// Queues a frame without waiting; `false` when the queue is full or
    /// the connection gone.
    pub fn try_send(&self, frame: String) -> bool {
        self.out.try_send(Message::Text(frame.into())).is_ok()
    }

    /// Closes politely and returns what the reader saw.
    pub async fn finish(self) -> Tally {
        drop(self.out);
        let _ = self.writer.await;
        // The server answers our close; the reader ends with it.
        let stop = self.stop;
        match tokio::time::timeout(Duration::from_secs(10), self.reader).await {
            Ok(Ok(t)) => t,
            _ => {
                drop(stop);
                Tally::new()
            }
        }
    }

    /// Drops the connection at once (no close handshake), as a network
    /// failure would; returns what the reader saw until then.
    pub async fn kill(self) -> Tally {
        self.writer.abort();
        let _ = self.stop.send(());
        self.reader.await.unwrap_or_else(|_| Tally::new())
    }
}

fn handle(
    text: &str,
    epoch: Instant,
    tally: &mut Tally,
    pending: &Pending,
    shared: &Shared,
    caught: Option<&CaughtUp>,
) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match v["type"].as_str() {
        Some("ephemeral") => {
            if let Ok(tx) = shared.ephemerals.lock()
                && let Some(tx) = tx.as_ref()
            {
                let _ = tx.try_send(v["event"].clone());
            }
        }
        Some("event") => {
            if let Some(seq) = v["seq"].as_u64() {
                shared.last_seq.fetch_max(seq, Ordering::Relaxed);
            }
            let message = &v["event"]["message"];
            if v["event"]["kind"] == "reaction" {
                tally.reaction_events += 1;
                return;
            }
            if v["event"]["kind"] != "message" {
                return;
            }
            if let (Some(id), Ok(mut last)) = (message["id"].as_str(), shared.last_message.lock()) {
                *last = Some(id.to_owned());
            }
            let data = &message["data"];
            if data["storm"] == true {
                if !shared.caught_up.swap(true, Ordering::Relaxed)
                    && let Some(n) = caught
                {
                    n.notify_one();
                }
                return;
            }
            let Some(lg) = data["lg"].as_array() else {
                return;
            };
            let (Some(sender), Some(n), Some(sent)) = (
                lg.first().and_then(Value::as_u64),
                lg.get(1).and_then(Value::as_u64),
                lg.get(2).and_then(Value::as_u64),
            ) else {
                return;
            };
            let seen = tally.seen.entry(sender as u32).or_insert(0);
            if n <= *seen {
                tally.duplicated += 1;
                return;
            }
            *seen = n;
            tally.delivered += 1;
            let now = micros_since(epoch);
            let _ = tally.latency.record(now.saturating_sub(sent).max(1));
        }
        Some(kind) => {
            let Some(id) = v["id"].as_str() else {
                return;
            };
            if id.starts_with('x') {
                // Our own reactions, likewise.
                if kind == "ack" {
                    tally.reactions_acked += 1;
                } else {
                    tally.reaction_errors += 1;
                }
                return;
            }
            if id.starts_with('s') {
                // Our own sends: counted, never waited for.
                if kind == "ack" {
                    tally.acked += 1;
                } else {
                    tally.errors += 1;
                }
                return;
            }
            let waiter = pending.lock().ok().and_then(|mut p| p.remove(id));
            if let Some(w) = waiter {
                let _ = w.send(v);
            }
        }
        None => {}
    }
}
