//! Several signalling nodes on one PostgreSQL database and one NATS server
//! (real ones, started by `scripts/test.sh` and by these tests), with files
//! on S3: users connected to different nodes chat, search, see each
//! other's presence and typing, and lose nothing when a node is killed
//! with SIGKILL or NATS restarts.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Shared;
use common::process::Process;
use common::{TestServer, Ws, default_clock, test_config, user_token};
use confer_signalling::ids::ManualClock;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A node in this process, on the cluster's store and bus.
async fn node(shared: &Shared, clock: &Arc<ManualClock>) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = shared.node_config(test_config(dir.path()));
    (TestServer::start_with(config, clock.clone()).await, dir)
}

/// The next ephemeral `presence` event about `user`.
async fn presence_of(ws: &mut Ws, user: &str) -> String {
    loop {
        let e = ws.ephemeral_of("presence").await;
        if e["event"]["user_id"] == user {
            return e["event"]["presence"].as_str().unwrap().to_owned();
        }
    }
}

/// The next `message` event.
async fn next_message(ws: &mut Ws) -> Value {
    loop {
        let e = ws.event().await;
        if e["event"]["kind"] == "message" {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_three_nodes_chat_search_and_see_each_other() {
    let shared = Shared::start().await;
    let clock = default_clock();
    let (a, _da) = node(&shared, &clock).await;
    let (b, _db) = node(&shared, &clock).await;
    let (c, _dc) = node(&shared, &clock).await;
    for n in [&a, &b, &c] {
        let health: Value = n
            .get("/healthz")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["components"]["bus"]["backend"], "nats", "{health}");
        assert_eq!(
            health["components"]["store"]["backend"], "postgres",
            "{health}"
        );
        assert_eq!(health["status"], "ok", "{health}");
    }
    // Any node serves any application: registered on a, tokens from b and c.
    let app = a.register("cluster@example.com", "ERP").await;
    let (t1, _u1) = user_token(&a, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&b, &app, "bob", &[]).await;
    let (t3, u3) = user_token(&c, &app, "cat", &[]).await;

    let mut ann = Ws::connect(&a, &t1, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "Cluster", "members": [u2, u3]}))
        .await["conversation"]["id"]
        .clone();
    let mut bob = Ws::connect(&b, &t2, None).await;
    assert_eq!(
        presence_of(&mut ann, &u2).await,
        "online",
        "bob on b, seen from a"
    );
    let mut cat = Ws::connect(&c, &t3, None).await;
    assert_eq!(
        presence_of(&mut ann, &u3).await,
        "online",
        "cat on c, seen from a"
    );
    let asked = ann
        .request(json!({"type": "presence", "users": [u2, u3]}))
        .await;
    assert_eq!(
        asked["users"],
        json!({u2.clone(): "online", u3.clone(): "online"})
    );

    // A message sent on b reaches a and c, in everyone's log.
    let ack = bob
        .request(
            json!({"type": "send", "conversation_id": conv, "client_id": "b1",
            "text": "Договоры подписаны, отгрузка завтра"}),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let id = ack["message"]["id"].clone();
    for ws in [&mut ann, &mut cat] {
        let e = next_message(ws).await;
        assert_eq!(e["event"]["message"]["id"], id, "{e}");
    }
    // And back: a message from a reaches b.
    ann.request(
        json!({"type": "send", "conversation_id": conv, "client_id": "a1", "text": "Thanks"}),
    )
    .await;
    // (Bob's log has his own message first.)
    while next_message(&mut bob).await["event"]["message"]["text"] != "Thanks" {}

    // Typing on c reaches a.
    let typing = cat
        .request(json!({"type": "typing", "conversation_id": conv}))
        .await;
    assert_eq!(typing["sent"], true);
    let t = ann.ephemeral_of("typing").await;
    assert_eq!(t["event"]["user_id"], u3.as_str());

    // Search on c finds what was sent on b (Russian stemming: "договор").
    let found = cat
        .request(json!({"type": "search", "query": "договор"}))
        .await;
    let hits = found["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{found}"));
    assert!(hits.iter().any(|m| m["id"] == id), "{found}");

    // Locking a user on a closes its session on c.
    let r = a
        .post(&format!("/api/v1/users/{u3}/lock"))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let closed = loop {
        let f = cat.frame().await;
        if f["type"] == "closed" {
            break f;
        }
    };
    assert!(
        closed["close"].as_str().unwrap().contains("4003"),
        "{closed}"
    );

    // Bob leaves b: a hears it once the offline grace has passed.
    drop(bob);
    assert_eq!(presence_of(&mut ann, &u2).await, "offline");
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// A token and user id for each of `names`, from the node at `base`.
async fn tokens_from(base: &str, app: &common::App, names: &[&str]) -> Vec<(String, String)> {
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    for name in names {
        let body: Value = http
            .post(format!("{base}/api/v1/tokens"))
            .basic_auth(&app.id, Some(&app.secret))
            .json(&json!({"external_id": name, "name": name}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push((
            body["token"].as_str().unwrap().to_owned(),
            body["user_id"].as_str().unwrap().to_owned(),
        ));
    }
    tokens
}

/// A WebSocket of a user who moves between nodes.
struct Client {
    token: String,
    stream: Option<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
    /// The last event number seen.
    last: u64,
    /// Event number → message id of every `message` event seen.
    messages: BTreeMap<u64, String>,
}

impl Client {
    async fn connect(token: &str, base: &str) -> Self {
        let mut client = Self {
            token: token.to_owned(),
            stream: None,
            last: 0,
            messages: BTreeMap::new(),
        };
        client.reconnect(base).await.unwrap();
        client
    }

    /// Connects to `base`, resuming after the last event seen.
    async fn reconnect(&mut self, base: &str) -> Result<(), String> {
        let url = format!(
            "{}/api/v1/ws?token={}&since={}",
            base.replace("http://", "ws://"),
            self.token,
            self.last
        );
        let (mut stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| e.to_string())?;
        let welcome = read(&mut stream).await?;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        self.stream = Some(stream);
        Ok(())
    }

    /// Its node died: connects to the next node of `bases` that answers
    /// (5 s at most), resuming; how long that took.
    async fn move_on(&mut self, bases: &[String], node: &mut usize) -> Duration {
        let lost = Instant::now();
        *node = (*node + 1) % bases.len();
        while self.reconnect(&bases[*node]).await.is_err() {
            *node = (*node + 1) % bases.len();
            assert!(
                lost.elapsed() < Duration::from_secs(5),
                "no node took the user back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lost.elapsed()
    }

    /// The next frame, or why there is none (the node died).
    async fn frame(&mut self) -> Result<Value, String> {
        let stream = self.stream.as_mut().ok_or("not connected")?;
        let frame = read(stream).await;
        if let Ok(f) = &frame
            && f["type"] == "event"
        {
            let seq = f["seq"].as_u64().unwrap();
            assert!(seq > self.last, "event {seq} after {}: a repeat", self.last);
            assert_eq!(seq, self.last + 1, "a gap after event {}", self.last);
            self.last = seq;
            if f["event"]["kind"] == "message" {
                let id = f["event"]["message"]["id"].as_str().unwrap().to_owned();
                self.messages.insert(seq, id);
            }
        }
        if frame.is_err() {
            self.stream = None;
        }
        frame
    }

    async fn send(&mut self, frame: &Value) -> Result<(), String> {
        let stream = self.stream.as_mut().ok_or("not connected")?;
        let sent = stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .map_err(|e| e.to_string());
        if sent.is_err() {
            self.stream = None;
        }
        sent
    }
}

async fn read(
    stream: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Result<Value, String> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .map_err(|_| "no frame within 10 s".to_owned())?;
        match next {
            None => return Err("closed".to_owned()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
            Some(Ok(_)) => {}
        }
    }
}

/// Sends `count` messages one after another from `client`, each retried
/// with its `client_id` on the next node of `bases` when its node dies;
/// returns the acknowledged message ids and the longest time a reconnect
/// took.
async fn send_through(
    client: &mut Client,
    bases: &[String],
    name: &str,
    conv: &str,
    count: usize,
    pause: Duration,
) -> (BTreeSet<String>, Duration) {
    let mut acked = BTreeSet::new();
    let mut node = 0;
    let mut worst = Duration::ZERO;
    for i in 0..count {
        let frame = json!({"type": "send", "id": format!("{name}-{i}"), "conversation_id": conv,
            "client_id": format!("{name}-{i}"), "text": format!("{name} {i}")});
        loop {
            let answered = async {
                client.send(&frame).await?;
                loop {
                    let f = client.frame().await?;
                    if f["id"] == frame["id"] {
                        return Ok::<Value, String>(f);
                    }
                }
            }
            .await;
            match answered {
                Ok(ack) => {
                    assert_eq!(ack["type"], "ack", "{ack}");
                    acked.insert(ack["message"]["id"].as_str().unwrap().to_owned());
                    break;
                }
                Err(_) => worst = worst.max(client.move_on(bases, &mut node).await),
            }
        }
        tokio::time::sleep(pause).await;
    }
    (acked, worst)
}

/// Reads events until every id of `expected` has arrived, moving to the
/// next node of `bases` when its node dies; the longest reconnect.
async fn receive_all(
    client: &mut Client,
    bases: &[String],
    expected: &BTreeSet<String>,
) -> Duration {
    let mut node = 0;
    let mut worst = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: BTreeSet<&String> = client.messages.values().collect();
        if expected.iter().all(|id| seen.contains(id)) {
            return worst;
        }
        assert!(Instant::now() < deadline, "messages missing after 30 s");
        if client.frame().await.is_err() {
            worst = worst.max(client.move_on(bases, &mut node).await);
        }
    }
}

/// Three `signalling` processes; one is killed with SIGKILL while two
/// users send: its users reconnect to another node within 5 s, every
/// acknowledged message is stored once, and every receiver gets each once,
/// with event numbers that neither skip nor repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_costs_nobody_a_message() {
    let shared = Shared::start().await;
    let env = shared.node_env();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
    let mut nodes: Vec<Option<Process>> = dirs
        .iter()
        .map(|d| Some(Process::start_with_env(d.path(), &env)))
        .collect();
    let bases: Vec<String> = nodes
        .iter()
        .map(|n| n.as_ref().unwrap().base.clone())
        .collect();
    let first = nodes[0].as_ref().unwrap();
    let app = first
        .register(dirs[0].path(), "kill@example.com", "ERP")
        .await;
    let tokens = tokens_from(&bases[0], &app, &["s0", "s2", "r1", "r2"]).await;
    let mut s0 = Client::connect(&tokens[0].0, &bases[0]).await;
    let created = {
        let frame = json!({"type": "create_conversation", "id": "c", "title": "Kill",
            "members": [tokens[1].1, tokens[2].1, tokens[3].1]});
        s0.send(&frame).await.unwrap();
        loop {
            let f = s0.frame().await.unwrap();
            if f["id"] == "c" {
                break f;
            }
        }
    };
    let conv = created["conversation"]["id"].as_str().unwrap().to_owned();
    // s2 and r2 on node 2 (to be killed), r1 on node 1.
    let mut s2 = Client::connect(&tokens[1].0, &bases[2]).await;
    let mut r1 = Client::connect(&tokens[2].0, &bases[1]).await;
    let mut r2 = Client::connect(&tokens[3].0, &bases[2]).await;

    const SENDS: usize = 60;
    let pause = Duration::from_millis(40);
    let order_s0 = vec![bases[0].clone(), bases[1].clone()];
    let order_s2 = vec![bases[2].clone(), bases[0].clone(), bases[1].clone()];
    let sender0 = {
        let conv = conv.clone();
        let order = order_s0.clone();
        tokio::spawn(async move {
            let out = send_through(&mut s0, &order, "s0", &conv, SENDS, pause).await;
            (out, s0)
        })
    };
    let sender2 = {
        let conv = conv.clone();
        let order = order_s2.clone();
        tokio::spawn(async move {
            let out = send_through(&mut s2, &order, "s2", &conv, SENDS, pause).await;
            (out, s2)
        })
    };
    // Kill node 2 while both send.
    tokio::time::sleep(pause * (SENDS as u32) / 3).await;
    let mut victim = nodes[2].take().unwrap();
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let ((acked0, _), _s0) = sender0.await.unwrap();
    let ((acked2, moved2), _s2) = sender2.await.unwrap();
    assert!(
        moved2 > Duration::ZERO && moved2 < Duration::from_secs(5),
        "the sender on the killed node moved in {moved2:?}"
    );
    let mut expected = acked0.clone();
    expected.extend(acked2.iter().cloned());
    assert_eq!(expected.len(), 2 * SENDS, "every send acknowledged once");

    let moved_r2 = receive_all(&mut r2, &order_s2, &expected).await;
    assert!(
        moved_r2 > Duration::ZERO && moved_r2 < Duration::from_secs(5),
        "the receiver on the killed node moved in {moved_r2:?}"
    );
    eprintln!("moved after the kill: sender in {moved2:?}, receiver in {moved_r2:?}");
    receive_all(&mut r1, std::slice::from_ref(&bases[1]), &expected).await;

    // The history holds each message once, numbered without a gap, and
    // each receiver's log holds exactly one event per message.
    let mut reader = Client::connect(&tokens[2].0, &bases[0]).await;
    reader
        .send(&json!({"type": "history", "id": "h", "conversation_id": conv, "after": 0, "limit": 200}))
        .await
        .unwrap();
    let history = loop {
        let f = reader.frame().await.unwrap();
        if f["id"] == "h" {
            break f;
        }
    };
    let messages = history["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{history}"));
    let ids: Vec<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), expected.len(), "stored once each");
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m["seq"].as_u64(), Some(i as u64 + 1));
    }
    for r in [&r1, &r2] {
        let got: Vec<&String> = r.messages.values().collect();
        assert_eq!(got.len(), expected.len(), "one event per message");
        assert_eq!(
            got.iter().copied().cloned().collect::<BTreeSet<_>>(),
            expected
        );
    }
}

/// NATS killed and started again while a user sends: the receiver on
/// another node gets every message (the bus asks the sessions to read the
/// store when it is back), and `/healthz` says the bus was down meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_run_loses_nothing() {
    let mut shared = Shared::start().await;
    let clock = default_clock();
    let (a, _da) = node(&shared, &clock).await;
    let (b, _db) = node(&shared, &clock).await;
    let app = a.register("nats@example.com", "ERP").await;
    let (t1, _u1) = user_token(&a, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&a, &app, "bob", &[]).await;
    let mut ann = Ws::connect(&a, &t1, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "t", "members": [u2]}))
        .await["conversation"]["id"]
        .clone();
    let mut bob = Client::connect(&t2, &b.base).await;
    let mut expected = BTreeSet::new();
    let send = async |ann: &mut Ws, i: usize| {
        let ack = ann
            .request(json!({"type": "send", "conversation_id": conv, "client_id": format!("m{i}"), "text": format!("m{i}")}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        ack["message"]["id"].as_str().unwrap().to_owned()
    };
    for i in 0..10 {
        expected.insert(send(&mut ann, i).await);
    }
    shared.nats.kill();
    // Sent while the bus is down: stored, told to nobody on b yet.
    for i in 10..20 {
        expected.insert(send(&mut ann, i).await);
    }
    let health: Value = common::healthz_after_a_failure(&b)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(health["components"]["bus"]["status"], "down", "{health}");
    shared.nats.start_again();
    // Nothing is sent after the restart: what was sent while NATS was
    // down reaches Bob only because his node asks its sessions to read
    // the store once it is connected again.
    receive_all(&mut bob, std::slice::from_ref(&b.base), &expected).await;
    assert_eq!(bob.messages.len(), 20);
    for i in 20..30 {
        expected.insert(send(&mut ann, i).await);
    }
    receive_all(&mut bob, std::slice::from_ref(&b.base), &expected).await;
    assert_eq!(bob.messages.len(), 30);
    // Health is checked again once its last report is 5 s old.
    let mut health = Value::Null;
    for _ in 0..80 {
        health = b
            .get("/healthz")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["status"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health["components"]["bus"]["status"], "up", "{health}");
    a.stop().await;
    b.stop().await;
}

/// Media tests run one at a time: real-time peers are CPU-bound on a
/// small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A call started on node a: Bob joins from node b and the two negotiate
/// peer-to-peer media through `call_signal` relayed across the nodes;
/// Carol joins from node c, the call moves to the SFU (node a's, where the
/// call lives), and everyone's media flows through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_spans_three_nodes_peer_to_peer_then_through_the_sfu() {
    use common::calls::{Person, conversation, p2p, sfu_sessions, start_call, until_media};
    let _serial = SERIAL.lock().await;
    let shared = Shared::start().await;
    let clock = default_clock();
    let (a, _da) = node(&shared, &clock).await;
    let (b, _db) = node(&shared, &clock).await;
    let (c, _dc) = node(&shared, &clock).await;
    let app = a.register("calls@example.com", "ERP").await;
    let mut p = Vec::new();
    for (i, (server, name)) in [(&a, "ann"), (&b, "bob"), (&c, "carol")]
        .into_iter()
        .enumerate()
    {
        let (token, user) = user_token(server, &app, name, &[]).await;
        p.push(Person {
            ws: Ws::connect(server, &token, None).await,
            user,
            token,
            tag: u8::try_from(i + 1).unwrap(),
        });
    }
    let conv = conversation(&mut p).await;
    let call = start_call(&mut p[0].ws, &conv, "video").await;
    // Bob, on b, rings and joins a call that lives on a.
    let ring = p[1].ws.ephemeral_of("call").await;
    assert_eq!(ring["event"]["call"]["id"], call, "{ring}");
    // A device Carol opens on c while it rings is told of the call in its
    // `welcome`, as a's machine sees it.
    let late = Ws::connect(&c, &p[2].token, None).await;
    let calls = late.welcome["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{}", late.welcome);
    assert_eq!(calls[0]["id"], call);
    assert_eq!(calls[0]["state"], "active");
    drop(late);
    let join = p[1]
        .ws
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(join["type"], "ack", "{join}");
    assert!(join["ice_servers"].is_array(), "{join}");
    for i in [0, 1] {
        assert_eq!(
            p[i].ws.ephemeral_of("call_topology").await["event"]["topology"],
            "p2p"
        );
    }
    let (head, tail) = p.split_at_mut(1);
    let (pa, pb) = p2p(&call, &mut head[0], &mut tail[0]).await;
    until_media(&pa, &[2], 30).await;
    until_media(&pb, &[1], 30).await;

    // Carol, on c, joins: the call moves to the SFU.
    let join = p[2]
        .ws
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(join["type"], "ack", "{join}");
    let mut media = Vec::new();
    for person in &mut p {
        let t = person.ws.ephemeral_of("call_topology").await;
        assert_eq!(t["event"]["topology"], "sfu", "{t}");
        media.push(sfu_sessions(&call, person, 2).await);
    }
    for (i, m) in media.iter().enumerate() {
        let others: Vec<u8> = (1..=3).filter(|t| usize::from(*t) != i + 1).collect();
        until_media(&m.subscribe, &others, 5).await;
        assert_eq!(m.subscribe.corrupt(), 0);
    }
    drop((pa, pb));
    // Every session is on a's SFU; b's and c's have none.
    for (server, sessions) in [(&a, 6), (&b, 0), (&c, 0)] {
        let stats = server.services.sfu.stats().await.unwrap();
        let open: usize = stats.workers.iter().map(Vec::len).sum();
        assert_eq!(open, sessions, "{}", server.base);
    }
    // Carol hangs up from c; then Bob from b.
    for i in [2, 1] {
        let left = p[i]
            .ws
            .request(json!({"type": "call_leave", "call_id": call}))
            .await;
        assert_eq!(left["type"], "ack", "{left}");
    }
    drop(media);
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// The node that holds a call is killed: the call ends, recorded in its
/// conversation as `interrupted` by a node that is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_node_dies_ends_as_interrupted() {
    let shared = Shared::start().await;
    let env = shared.node_env();
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut owner = Process::start_with_env(dirs[0].path(), &env);
    let other = Process::start_with_env(dirs[1].path(), &env);
    let app = owner
        .register(dirs[0].path(), "orphan@example.com", "ERP")
        .await;
    let people = tokens_from(&other.base, &app, &["ann", "bob"]).await;
    let ws_of = |base: &str, token: &str| {
        format!(
            "{}/api/v1/ws?token={token}",
            base.replace("http://", "ws://")
        )
    };
    let mut ann = Ws::connect_via(ws_of(&owner.base, &people[0].0), None).await;
    let mut bob = Ws::connect_via(ws_of(&other.base, &people[1].0), None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "t", "members": [people[1].1]}))
        .await["conversation"]["id"]
        .clone();
    let started = ann
        .request(json!({"type": "call_start", "conversation_id": conv, "media": "audio"}))
        .await;
    let call = started["call"]["id"].clone();
    let join = bob
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(join["type"], "ack", "{join}");

    owner.child.kill().unwrap();
    owner.child.wait().unwrap();
    let killed = Instant::now();
    // Within the node timeout (7 s) and a sweep (2 s), and some margin.
    let end = loop {
        let e = next_message(&mut bob).await;
        if e["event"]["message"]["data"]["call"]["event"] == "ended" {
            break e;
        }
    };
    let took = killed.elapsed();
    let data = &end["event"]["message"]["data"]["call"];
    assert_eq!(data["id"], call, "{end}");
    assert_eq!(data["reason"], "interrupted", "{end}");
    assert!(
        took < Duration::from_secs(15),
        "recorded {took:?} after the kill"
    );
    eprintln!("the call of the killed node was recorded interrupted {took:?} after the kill");
    // Once: the history has one end record for the call.
    let history = bob
        .request(json!({"type": "history", "conversation_id": conv}))
        .await;
    let ends = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["data"]["call"]["event"] == "ended")
        .count();
    assert_eq!(ends, 1, "{history}");
    // The call is gone: joining it again says so.
    let again = bob
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(again["type"], "error", "{again}");
}

/// `signalling admin` works on the shared PostgreSQL store: it lists the
/// subscribers, and a user it locks loses its session on a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_command_works_on_the_shared_store() {
    let shared = Shared::start().await;
    let clock = default_clock();
    let (a, _da) = node(&shared, &clock).await;
    let app = a.register("admin@example.com", "ERP").await;
    let (token, user) = user_token(&a, &app, "ann", &[]).await;
    let mut ann = Ws::connect(&a, &token, None).await;
    let admin = |args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signalling"))
            .arg("admin")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env_remove("CONFER_CONFIG")
            .env("CONFER_STORE__URL", &shared.database)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(admin(&["subscribers"]).contains("admin@example.com"));
    admin(&["lock-user", "--app", &app.id, "--user", &user]);
    // The node reads locked users from the store every 2 s.
    let closed = loop {
        let f = ann.frame().await;
        if f["type"] == "closed" {
            break f;
        }
    };
    assert!(
        closed["close"].as_str().unwrap().contains("4003"),
        "{closed}"
    );
    a.stop().await;
}

/// Who is in a conversation is cached per node for the send path: a
/// member added on one node receives the next message sent on another
/// (the change travels on NATS and drops the other node's cached roster;
/// without it, this test waits in vain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_on_one_node_reach_the_others_caches() {
    let shared = Shared::start().await;
    let clock = default_clock();
    let (a, _da) = node(&shared, &clock).await;
    let (b, _db) = node(&shared, &clock).await;
    let app = a.register("rosters@example.com", "ERP").await;
    let (t1, _u1) = user_token(&a, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&a, &app, "bob", &[]).await;
    let (t3, u3) = user_token(&a, &app, "cat", &[]).await;
    let mut ann = Ws::connect(&a, &t1, None).await;
    let conv = ann
        .request(
            json!({"type": "create_conversation", "title": "g", "is_group": true, "members": [u2]}),
        )
        .await["conversation"]["id"]
        .clone();
    let mut bob = Ws::connect(&b, &t2, None).await;
    let mut cat = Ws::connect(&b, &t3, None).await;
    // Bob's first send loads the conversation's roster on b.
    let ack = bob
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "1", "text": "one"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // Ann adds Cat on a; Bob's next send on b reaches her.
    let added = ann
        .request(json!({"type": "add_members", "conversation_id": conv, "members": [u3]}))
        .await;
    assert_eq!(added["type"], "ack", "{added}");
    // The change reaches b over NATS within a moment of the ack.
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.request(json!({"type": "send", "conversation_id": conv, "client_id": "2", "text": "two"}))
        .await;
    assert_eq!(
        next_message(&mut cat).await["event"]["message"]["text"],
        "two"
    );
    a.stop().await;
    b.stop().await;
}
