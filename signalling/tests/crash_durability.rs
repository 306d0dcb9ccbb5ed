//! Crash durability: the real `signalling` binary is killed with SIGKILL at
//! seeded random moments while three users send to one group conversation
//! (each keeping several sends in flight, every one with its own
//! `client_id`), then started again on the same data directory. After each
//! kill it checks what `docs/reliability.md` promises:
//!
//! - every acknowledged message is in `history` exactly once, with the `id`
//!   and `seq` its `ack` carried, and the message numbers are 1, 2, 3 …
//!   without a gap;
//! - every member's event log replays from where the last check ended with
//!   no gap and no repeat in event numbers, and holds exactly one `message`
//!   event per message of the history;
//! - a send that was in flight at the kill (no `ack` seen), retried with the
//!   same `client_id`, returns the first copy when it was committed and is
//!   stored once when it was not.
//!
//! `CONFER_CRASH_TRIALS` sets the number of kills (default 20),
//! `CONFER_CRASH_SEED` repeats a run's kill moments and send windows (the
//! seed is printed; the server's own timing still varies).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Ws;
use common::process::Process;
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Kills in the default run.
const DEFAULT_TRIALS: usize = 20;
/// Sends one connection starts in one trial at most (the run stays far
/// below the 10 000 events a resume replays).
const SENDS_PER_TRIAL: u64 = 300;
/// The longest a client waits for a frame from a live server.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// One user's view: what it sent, what was acknowledged, what it has
/// checked of its event log.
struct Member {
    name: &'static str,
    token: String,
    user_id: String,
    /// The number in the next `client_id` (`<name>-<n>`).
    next: u64,
    /// `client_id` → (message id, seq) from its `ack`.
    acked: BTreeMap<String, (String, u64)>,
    /// Sent, no `ack` seen before the kill.
    in_flight: BTreeSet<String>,
    /// The last event number checked.
    event_seq: u64,
    /// Message ids of the `message` events seen in its log.
    message_events: BTreeSet<String>,
}

/// Figures of the run, printed at the end and quoted in docs/reliability.md.
#[derive(Debug, Default)]
struct Figures {
    trials: usize,
    acknowledged: usize,
    in_flight_at_kill: usize,
    in_flight_committed: usize,
    in_flight_stored_on_retry: usize,
    events_checked: u64,
}

fn text_of(client_id: &str) -> String {
    format!("message {client_id}")
}

fn ws_url(server: &Process, token: &str, since: u64) -> String {
    format!(
        "ws://{}/api/v1/ws?token={token}&since={since}",
        server.addr()
    )
}

/// A user token for `external_id`; (token, user id).
async fn user_token(server: &Process, app: &common::App, external_id: &str) -> (String, String) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/tokens", server.base))
        .basic_auth(&app.id, Some(&app.secret))
        .json(&json!({"external_id": external_id, "name": external_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    (
        body["token"].as_str().unwrap().to_owned(),
        body["user_id"].as_str().unwrap().to_owned(),
    )
}

/// The binary on `dir`, without rate limits on frames (the test is about
/// durability, and keeps sends in flight as fast as the server commits).
fn start(dir: &Path) -> Process {
    Process::start_with_env(
        dir,
        &[
            (
                "CONFER_LIMITS__FRAMES_PER_CONNECTION__COUNT",
                OsStr::new("0"),
            ),
            (
                "CONFER_LIMITS__WRITES_PER_CONNECTION__COUNT",
                OsStr::new("0"),
            ),
        ],
    )
}

/// What a sending connection saw before its server was killed.
struct Sent {
    acked: Vec<(String, String, u64)>,
    in_flight: Vec<String>,
    next: u64,
}

/// Keeps `window` sends in flight on `ws` until the connection ends (the
/// server is killed) or `SENDS_PER_TRIAL` were sent; reads every frame.
async fn send_until_killed(
    ws: Ws,
    conversation: String,
    name: &'static str,
    mut next: u64,
    window: usize,
) -> Sent {
    let (mut tx, mut rx) = ws.into_stream().split();
    let mut outstanding = BTreeSet::new();
    let mut acked = Vec::new();
    let last = next + SENDS_PER_TRIAL;
    'connection: loop {
        while outstanding.len() < window && next < last {
            let client_id = format!("{name}-{next}");
            next += 1;
            let frame = json!({"type": "send", "id": client_id, "conversation_id": conversation,
                "client_id": client_id, "text": text_of(&client_id)});
            // Sent or not, it may have reached the server: in flight.
            outstanding.insert(client_id);
            if tx
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                break 'connection;
            }
        }
        let frame = match tokio::time::timeout(FRAME_WAIT, rx.next()).await {
            Err(_) => panic!("{name}: no frame within {FRAME_WAIT:?} from a live server"),
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => break,
            Ok(Some(Ok(_))) => continue,
        };
        let frame: Value = serde_json::from_str(&frame).unwrap();
        match frame["type"].as_str() {
            Some("event" | "ephemeral") => {}
            Some("ack") => {
                let client_id = frame["id"].as_str().unwrap().to_owned();
                assert!(outstanding.remove(&client_id), "{name}: stray ack {frame}");
                let message = &frame["message"];
                assert_eq!(message["client_id"], client_id.as_str(), "{frame}");
                acked.push((
                    client_id,
                    message["id"].as_str().unwrap().to_owned(),
                    message["seq"].as_u64().unwrap(),
                ));
            }
            _ => panic!("{name}: unexpected frame while sending: {frame}"),
        }
    }
    Sent {
        acked,
        in_flight: outstanding.into_iter().collect(),
        next,
    }
}

/// Connects `member` resuming after its last checked event and replays its
/// log up to the newest event: event numbers must follow one another, and
/// each message must come once. Returns the connection.
async fn replay(
    server: &Process,
    member: &mut Member,
    figures: &mut Figures,
    problems: &mut Vec<String>,
) -> Ws {
    let since = member.event_seq;
    let mut ws = Ws::connect_via(ws_url(server, &member.token, since), None).await;
    let head = ws.welcome["event_seq"].as_u64().unwrap();
    if head < since {
        problems.push(format!(
            "{}: the event log ends at {head}, but event {since} was seen before",
            member.name
        ));
        return ws;
    }
    while member.event_seq < head {
        let event = ws.event().await;
        let seq = event["seq"].as_u64().unwrap();
        if seq != member.event_seq + 1 {
            problems.push(format!(
                "{}: event {seq} follows event {}",
                member.name, member.event_seq
            ));
        }
        member.event_seq = seq;
        figures.events_checked += 1;
        if event["event"]["kind"] == "message" {
            let id = event["event"]["message"]["id"].as_str().unwrap().to_owned();
            if !member.message_events.insert(id.clone()) {
                problems.push(format!(
                    "{}: a second message event (event {seq}) for message {id}",
                    member.name
                ));
            }
        }
    }
    ws
}

/// Checks the store after a restart: history against every `ack`, every
/// event log, then retries what was in flight. Returns the members'
/// connections, ready to send.
async fn check_and_retry(
    server: &Process,
    conversation: &str,
    members: &mut [Member],
    figures: &mut Figures,
    problems: &mut Vec<String>,
) -> Vec<Ws> {
    let mut connections = Vec::new();
    for member in members.iter_mut() {
        connections.push(replay(server, member, figures, problems).await);
    }
    let messages = connections[0].history(conversation).await;

    // Numbered 1, 2, 3 … and each (author, client_id) once.
    let mut by_client_id: BTreeMap<(String, String), &Value> = BTreeMap::new();
    for (i, m) in messages.iter().enumerate() {
        if m["seq"].as_u64() != Some(i as u64 + 1) {
            problems.push(format!(
                "message {} of the history has seq {}",
                i + 1,
                m["seq"]
            ));
        }
        let key = (
            m["author"]["user_id"].as_str().unwrap().to_owned(),
            m["client_id"].as_str().unwrap().to_owned(),
        );
        if let Some(first) = by_client_id.insert(key.clone(), m) {
            problems.push(format!(
                "client_id {} stored twice: seq {} and {}",
                key.1, first["seq"], m["seq"]
            ));
        }
    }
    let ids: BTreeSet<String> = messages
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();

    for member in members.iter_mut() {
        // Every acknowledged message, as acknowledged.
        for (client_id, (id, seq)) in &member.acked {
            match by_client_id.remove(&(member.user_id.clone(), client_id.clone())) {
                None => problems.push(format!(
                    "{}: acknowledged message {client_id} (seq {seq}) lost",
                    member.name
                )),
                Some(m) => {
                    if m["id"] != id.as_str() || m["seq"] != *seq || m["text"] != text_of(client_id)
                    {
                        problems.push(format!(
                            "{}: acknowledged {client_id} as {id} seq {seq}, history has {m}",
                            member.name
                        ));
                    }
                }
            }
        }
        // Its log holds the message events of exactly these messages.
        if member.message_events != ids {
            let missing = ids.difference(&member.message_events).count();
            let extra = member.message_events.difference(&ids).count();
            problems.push(format!(
                "{}: its log lacks {missing} message(s) of the history and has {extra} not in it",
                member.name
            ));
        }
    }
    // What is left was in flight: committed or not, once at most.
    let mut committed: BTreeMap<String, &Value> = BTreeMap::new();
    for ((author, client_id), m) in by_client_id {
        let sender = members.iter().find(|m| m.user_id == author);
        if sender.is_none_or(|s| !s.in_flight.contains(&client_id)) {
            problems.push(format!(
                "message {client_id} in history was neither acknowledged nor in flight"
            ));
        }
        committed.insert(client_id, m);
    }

    // Retries with the same client_id: the first copy, or stored now.
    for (member, ws) in members.iter_mut().zip(&mut connections) {
        for client_id in std::mem::take(&mut member.in_flight) {
            let ack = ws
                .request(json!({"type": "send", "conversation_id": conversation,
                    "client_id": client_id, "text": text_of(&client_id)}))
                .await;
            assert_eq!(
                ack["type"], "ack",
                "{}: retry of {client_id}: {ack}",
                member.name
            );
            let id = ack["message"]["id"].as_str().unwrap().to_owned();
            let seq = ack["message"]["seq"].as_u64().unwrap();
            match committed.get(&client_id) {
                Some(first) => {
                    figures.in_flight_committed += 1;
                    if first["id"] != id.as_str() || first["seq"] != seq {
                        problems.push(format!(
                            "{}: retry of committed {client_id} answered {id} seq {seq}, \
                             the first copy is {first}",
                            member.name
                        ));
                    }
                }
                None => {
                    figures.in_flight_stored_on_retry += 1;
                    if seq <= messages.len() as u64 {
                        problems.push(format!(
                            "{}: retry of uncommitted {client_id} got the taken seq {seq}",
                            member.name
                        ));
                    }
                }
            }
            member.acked.insert(client_id, (id, seq));
        }
    }
    connections
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_or_doubled_across_sigkills() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let trials: usize = std::env::var("CONFER_CRASH_TRIALS")
        .ok()
        .map_or(DEFAULT_TRIALS, |t| {
            t.parse().expect("CONFER_CRASH_TRIALS: a number")
        });
    let seed: u64 = std::env::var("CONFER_CRASH_SEED").ok().map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        },
        |s| s.parse().expect("CONFER_CRASH_SEED: a number"),
    );
    println!("crash_durability: {trials} trials, CONFER_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let app = server
        .register(dir.path(), "crash@example.com", "Crash ERP")
        .await;
    let mut members = Vec::new();
    for name in ["ann", "bob", "cid"] {
        let (token, user_id) = user_token(&server, &app, name).await;
        members.push(Member {
            name,
            token,
            user_id,
            next: 0,
            acked: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            event_seq: 0,
            message_events: BTreeSet::new(),
        });
    }
    // A plain group: no per-session hiding of events (contextual
    // conversations may leave gaps in what one connection sees).
    let created = {
        let mut ann = Ws::connect_via(ws_url(&server, &members[0].token, 0), None).await;
        ann.request(json!({"type": "create_conversation", "title": "Durable",
            "is_group": true, "members": [members[1].user_id, members[2].user_id]}))
            .await
    };
    assert_eq!(created["type"], "ack", "{created}");
    let conversation = created["conversation"]["id"].as_str().unwrap().to_owned();

    let mut figures = Figures::default();
    let mut problems = Vec::new();
    let mut connections = check_and_retry(
        &server,
        &conversation,
        &mut members,
        &mut figures,
        &mut problems,
    )
    .await;
    for trial in 1..=trials {
        let kill_after = Duration::from_millis(rng.random_range(5..=400));
        let mut senders = Vec::new();
        for (member, ws) in members.iter().zip(connections.drain(..)) {
            let window = rng.random_range(1..=6);
            senders.push(tokio::spawn(send_until_killed(
                ws,
                conversation.clone(),
                member.name,
                member.next,
                window,
            )));
        }
        tokio::time::sleep(kill_after).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        for (member, sender) in members.iter_mut().zip(senders) {
            let sent = sender.await.unwrap();
            figures.acknowledged += sent.acked.len();
            figures.in_flight_at_kill += sent.in_flight.len();
            for (client_id, id, seq) in sent.acked {
                member.acked.insert(client_id, (id, seq));
            }
            member.in_flight.extend(sent.in_flight);
            member.next = sent.next;
        }
        figures.trials = trial;

        server = start(dir.path());
        connections = check_and_retry(
            &server,
            &conversation,
            &mut members,
            &mut figures,
            &mut problems,
        )
        .await;
        assert!(
            problems.is_empty(),
            "trial {trial} (killed after {kill_after:?}, CONFER_CRASH_SEED={seed}):\n{}",
            problems.join("\n")
        );
    }
    drop(connections);

    // The retries of the last trial, checked on the running server; then
    check_and_retry(
        &server,
        &conversation,
        &mut members,
        &mut figures,
        &mut problems,
    )
    .await;
    // each log replayed from its start against the whole history (when
    // it is short enough to be replayed rather than answered `resync`).
    if members.iter().all(|m| m.event_seq <= 10_000) {
        for member in &mut members {
            member.event_seq = 0;
            member.message_events.clear();
        }
        let mut from_start = Figures::default();
        drop(
            check_and_retry(
                &server,
                &conversation,
                &mut members,
                &mut from_start,
                &mut problems,
            )
            .await,
        );
    }
    assert!(
        problems.is_empty(),
        "after the last trial (CONFER_CRASH_SEED={seed}):\n{}",
        problems.join("\n")
    );
    let acked: usize = members.iter().map(|m| m.acked.len()).sum();
    println!(
        "crash_durability: {figures:?}; {acked} messages acknowledged in all, 0 lost, \
         0 duplicated, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(server.terminate().success());
}
