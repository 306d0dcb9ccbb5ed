//! The same media load against a Janus VideoRoom, over Janus's HTTP API
//! (`POST /janus` to create a session, `POST /janus/{session}` to attach
//! the `janus.plugin.videoroom` plugin, `POST /janus/{session}/{handle}`
//! for plugin messages, `GET /janus/{session}` long polls for the
//! asynchronous answers, which also keep the session alive).
//!
//! Publishers join with `joinandconfigure` and an SDP offer (audio, VP8
//! with three rid simulcast layers) and get Janus's answer. Subscribers use
//! one multistream handle for every publisher of the room: Janus offers,
//! the peer answers with `start`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// A Janus server.
#[derive(Debug, Clone)]
pub struct Janus {
    url: String,
    http: reqwest::Client,
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// One Janus session with its long-poll task.
#[derive(Debug)]
struct Session {
    janus: Janus,
    id: u64,
    waiters: Waiters,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// A VideoRoom with its publishers' and subscribers' handles.
#[derive(Debug)]
pub struct Room {
    session: Arc<Session>,
    room: u64,
    /// The subscriber handle waiting for its answer.
    pending: Mutex<Option<u64>>,
}

fn transaction() -> String {
    format!("t{:016x}", rand::rng().random::<u64>())
}

impl Janus {
    /// A client of the Janus HTTP API at `url` (…/janus).
    #[must_use]
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        body["transaction"] = json!(transaction());
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {}{path}", self.url))?;
        let v: Value = r.json().await?;
        if v["janus"] == "error" {
            bail!("Janus: {}", v["error"]);
        }
        Ok(v)
    }

    async fn session(&self) -> anyhow::Result<Arc<Session>> {
        let created = self.post("", json!({"janus": "create"})).await?;
        let id = created["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no session id in {created}"))?;
        let waiters: Waiters = Arc::default();
        let poller = {
            let janus = self.clone();
            let waiters = waiters.clone();
            tokio::spawn(async move {
                loop {
                    let got = janus
                        .http
                        .get(format!("{}/{id}?maxev=10", janus.url))
                        .timeout(Duration::from_secs(40))
                        .send()
                        .await;
                    let Ok(resp) = got else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let Ok(v) = resp.json::<Value>().await else {
                        continue;
                    };
                    let events = match v {
                        Value::Array(a) => a,
                        other => vec![other],
                    };
                    for e in events {
                        let Some(t) = e["transaction"].as_str() else {
                            continue;
                        };
                        let waiter = waiters.lock().ok().and_then(|mut w| w.remove(t));
                        if let Some(w) = waiter {
                            let _ = w.send(e);
                        }
                    }
                }
            })
        };
        Ok(Arc::new(Session {
            janus: self.clone(),
            id,
            waiters,
            poller,
        }))
    }

    /// Creates a VideoRoom for `publishers` publishers (VP8, Opus, rid
    /// simulcast, 2 Mbps per publisher).
    ///
    /// # Errors
    /// If Janus refuses.
    pub async fn create_room(&self, publishers: usize) -> anyhow::Result<Room> {
        let session = self.session().await?;
        let handle = session.attach().await?;
        let room: u64 = rand::rng().random_range(1..(1 << 50));
        let created = session
            .message(
                handle,
                json!({
                    "request": "create",
                    "room": room,
                    "publishers": publishers.max(1),
                    "bitrate": 2_000_000,
                    "videocodec": "vp8",
                    "audiocodec": "opus",
                    "audiolevel_event": false,
                    "notify_joining": false,
                }),
                None,
            )
            .await?;
        if created["plugindata"]["data"]["videoroom"] != "created" {
            bail!("creating a VideoRoom: {created}");
        }
        Ok(Room {
            session,
            room,
            pending: Mutex::new(None),
        })
    }
}

impl Session {
    async fn attach(&self) -> anyhow::Result<u64> {
        let attached = self
            .janus
            .post(
                &format!("/{}", self.id),
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await?;
        attached["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no handle id in {attached}"))
    }

    /// A plugin message; waits for the asynchronous event when Janus only
    /// acknowledges it.
    async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let t = transaction();
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(t.clone(), tx);
        let mut msg = json!({"janus": "message", "body": body, "transaction": t});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let r = self
            .janus
            .http
            .post(format!("{}/{}/{handle}", self.janus.url, self.id))
            .json(&msg)
            .send()
            .await?;
        let v: Value = r.json().await?;
        match v["janus"].as_str() {
            Some("ack") => {
                let e = tokio::time::timeout(Duration::from_secs(20), rx)
                    .await
                    .context("no answer from Janus in 20 s")??;
                if let Some(err) = e["plugindata"]["data"]["error"].as_str() {
                    bail!("Janus VideoRoom: {err}");
                }
                Ok(e)
            }
            Some("success") => {
                if let Ok(mut w) = self.waiters.lock() {
                    w.remove(&t);
                }
                if let Some(err) = v["plugindata"]["data"]["error"].as_str() {
                    bail!("Janus VideoRoom: {err}");
                }
                Ok(v)
            }
            _ => bail!("Janus: {v}"),
        }
    }

    async fn trickle_done(&self, handle: u64) -> anyhow::Result<()> {
        self.janus
            .post(
                &format!("/{}/{handle}", self.id),
                json!({"janus": "trickle", "candidate": {"completed": true}}),
            )
            .await?;
        Ok(())
    }
}

impl Room {
    /// Publishes with an SDP offer; returns the feed id and the answer.
    ///
    /// # Errors
    /// If Janus refuses.
    pub async fn publish(&self, offer: &str) -> anyhow::Result<(u64, String)> {
        let handle = self.session.attach().await?;
        let e = self
            .session
            .message(
                handle,
                json!({"request": "joinandconfigure", "ptype": "publisher", "room": self.room, "audio": true, "video": true}),
                Some(json!({"type": "offer", "sdp": offer})),
            )
            .await?;
        self.session.trickle_done(handle).await?;
        let feed = e["plugindata"]["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no feed id in {e}"))?;
        let answer = e["jsep"]["sdp"]
            .as_str()
            .ok_or_else(|| anyhow!("no answer in {e}"))?;
        Ok((feed, answer.to_owned()))
    }

    /// Subscribes to `feeds` (highest simulcast layer); returns Janus's
    /// offer. [`Self::start_subscription`] sends the answer.
    ///
    /// # Errors
    /// If Janus refuses.
    pub async fn subscribe(&self, feeds: &[u64]) -> anyhow::Result<String> {
        let handle = self.session.attach().await?;
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        let e = self
            .session
            .message(
                handle,
                json!({"request": "join", "ptype": "subscriber", "room": self.room, "streams": streams}),
                None,
            )
            .await?;
        let offer = e["jsep"]["sdp"]
            .as_str()
            .ok_or_else(|| anyhow!("no offer in {e}"))?;
        *self.pending.lock().map_err(|_| anyhow!("poisoned"))? = Some(handle);
        Ok(offer.to_owned())
    }

    /// Answers the offer of the last [`Self::subscribe`].
    ///
    /// # Errors
    /// If Janus refuses.
    pub async fn start_subscription(&self, answer: &str) -> anyhow::Result<()> {
        let handle = self
            .pending
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .take()
            .ok_or_else(|| anyhow!("no subscription waiting for its answer"))?;
        self.session
            .message(
                handle,
                json!({"request": "start"}),
                Some(json!({"type": "answer", "sdp": answer})),
            )
            .await?;
        self.session.trickle_done(handle).await?;
        Ok(())
    }
}
