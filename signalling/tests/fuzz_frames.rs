//! Fuzz target: WebSocket client frames. One session of the real services
//! (`ws::run` over channels, the server's own store, bus, calls and
//! embedded SFU) takes arbitrary text, arbitrary binary frames and
//! structure-aware near-valid requests — every frame type, ids of every
//! JSON kind, known and unknown fields, real and random ids, huge numbers,
//! unicode, NUL, deep nesting, oversized text. Each frame gets exactly one
//! answer, of a type docs/protocol.md defines and matching its schema,
//! naming the request's id; an error carries a documented code and never
//! `internal`; the session never ends.
//!
//! Cases: `PROPTEST_CASES` (default 128 sequences of 1 to 11 frames);
//! `scripts/fuzz.sh` runs many more.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::Message;
use common::{TestServer, fuzz, protocol_schemas, user_token};
use confer_sfu::testing::fuzz_cases;
use confer_signalling::limits::FrameLimits;
use confer_signalling::messaging::{Caller, Who};
use confer_signalling::ws::{self, Admitted, MAX_FRAME_BYTES};
use futures_channel::mpsc;
use futures_util::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

/// Request types: the protocol's, and a few it does not define.
fn types() -> Vec<&'static str> {
    let unknown = ["", "SEND", "welcome", "event", "send\u{0}"];
    ws::KNOWN_TYPES.iter().copied().chain(unknown).collect()
}

/// Field names of requests (and some no request has).
const FIELDS: &[&str] = &[
    "conversation_id",
    "client_id",
    "text",
    "data",
    "recipients",
    "actions",
    "attachments",
    "title",
    "members",
    "is_group",
    "displayed",
    "all_users",
    "key",
    "user_id",
    "context",
    "limit",
    "before",
    "after",
    "seq",
    "message_id",
    "action_id",
    "cursor",
    "query",
    "away",
    "users",
    "call_id",
    "media",
    "device_id",
    "busy",
    "to",
    "signal",
    "sdp",
    "screen_mid",
    "audio",
    "video",
    "screen",
    "mid",
    "quality",
    "kind",
    "label",
    "url",
    "file_id",
    "value",
    "type",
    "id",
    "__proto__",
    "\u{0}",
    "поле",
];

/// Placeholders replaced by real ids of the session's world.
const CONVERSATION: &str = "$conversation";
const USER: &str = "$user";
const OTHER: &str = "$other";
const MESSAGE: &str = "$message";
const CALL: &str = "$call";

/// Codes an error frame may carry (docs/protocol.md, "Error codes of
/// request frames"), except `internal`: bad input is never a server
/// failure.
const CODES: &[&str] = &[
    "malformed_json",
    "invalid_request",
    "unknown_type",
    "frame_too_large",
    "forbidden",
    "not_a_group",
    "not_found",
    "unsupported_frame",
    "attachment_unavailable",
    "busy",
    "call_in_progress",
    "call_full",
    "not_ringing",
    "not_joined",
    "wrong_topology",
    "negotiating",
    "media_unavailable",
    "rate_limited",
];

/// A client frame.
#[derive(Clone, Debug)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// Placeholders of [`leaf`] values.
const PLACEHOLDERS: &[&str] = &[CONVERSATION, USER, OTHER, MESSAGE, CALL];

fn leaf() -> impl Strategy<Value = Value> {
    fuzz::leaf(PLACEHOLDERS)
}

fn value() -> impl Strategy<Value = Value> {
    fuzz::value(FIELDS, PLACEHOLDERS)
}

/// A request-shaped object: a `type`, an `id` of any kind (or none), and
/// fields of requests with arbitrary values.
fn request() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(types()),
        prop_oneof![
            4 => "[a-z0-9]{1,8}".prop_map(|id| Some(Value::from(id))),
            1 => Just(None),
            1 => leaf().prop_map(Some),
        ],
        proptest::collection::vec((proptest::sample::select(FIELDS), value()), 0..7),
    )
        .prop_map(|(kind, id, fields)| {
            let mut frame = Map::new();
            frame.insert("type".to_owned(), Value::from(kind));
            if let Some(id) = id {
                frame.insert("id".to_owned(), id);
            }
            for (k, v) in fields {
                if k != "type" && k != "id" {
                    frame.insert(k.to_owned(), v);
                }
            }
            Value::Object(frame)
        })
}

/// Valid requests (placeholders filled in later), for [`near_valid`].
const TEMPLATES: &[&str] = &[
    r#"{"type":"send","conversation_id":"$conversation","client_id":"c","text":"hi"}"#,
    r#"{"type":"send","conversation_id":"$conversation","client_id":"d","text":"*b*","data":{"k":[1]},"actions":[{"id":"a","label":"OK"}]}"#,
    r#"{"type":"history","conversation_id":"$conversation","limit":10}"#,
    r#"{"type":"history","conversation_id":"$conversation","after":0}"#,
    r#"{"type":"list","limit":5}"#,
    r#"{"type":"search","query":"hello"}"#,
    r#"{"type":"typing","conversation_id":"$conversation"}"#,
    r#"{"type":"members","conversation_id":"$conversation"}"#,
    r#"{"type":"presence","users":["$other"]}"#,
    r#"{"type":"read","conversation_id":"$conversation","seq":1}"#,
    r#"{"type":"edit","conversation_id":"$conversation","message_id":"$message","text":"edited"}"#,
    r#"{"type":"click","conversation_id":"$conversation","message_id":"$message","value":"v"}"#,
    r#"{"type":"open_context","context":"order:1","title":"Order"}"#,
    r#"{"type":"create_conversation","title":"t","members":["$other"]}"#,
    r#"{"type":"call_media","call_id":"$call","audio":true}"#,
    r#"{"type":"call_join","call_id":"$call"}"#,
    r#"{"type":"call_signal","call_id":"$call","to":"$other","signal":{"x":1}}"#,
    r#"{"type":"call_publish","call_id":"$call","sdp":"v=0\r\n"}"#,
    r#"{"type":"call_quality","call_id":"$call","quality":"low"}"#,
];

/// A valid request with an id and some fields replaced, added or removed.
fn near_valid() -> impl Strategy<Value = Value> {
    (
        fuzz::near_valid(TEMPLATES, FIELDS, PLACEHOLDERS),
        "[a-z0-9]{1,8}",
    )
        .prop_map(|(mut v, id)| {
            v.as_object_mut()
                .unwrap()
                .entry("id")
                .or_insert_with(|| Value::from(id));
            v
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        5 => near_valid().prop_map(|v| Frame::Text(v.to_string())),
        6 => request().prop_map(|v| Frame::Text(v.to_string())),
        // Near-valid: a request cut short or with a byte changed.
        1 => (request(), any::<usize>(), any::<u8>())
            .prop_map(|(v, at, b)| Frame::Text(fuzz::damaged(v.to_string(), at, b))),
        1 => ".{0,200}".prop_map(Frame::Text),
        1 => (0usize..200_000).prop_map(|n| Frame::Text(format!(r#"{{"type":"ping","id":"big","pad":"{}"}}"#, "x".repeat(n)))),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Frame::Binary),
    ]
}

/// The real ids that placeholders stand for.
struct World {
    ids: BTreeMap<&'static str, String>,
}

impl World {
    /// `frame` with placeholders replaced, when it is a JSON text.
    fn resolve(&self, frame: Frame) -> Frame {
        match frame {
            Frame::Text(text) => match serde_json::from_str::<Value>(&text) {
                Ok(mut v) if text.contains('$') => {
                    fuzz::fill(&mut v, &self.ids);
                    Frame::Text(v.to_string())
                }
                _ => Frame::Text(text),
            },
            binary => binary,
        }
    }
}

/// A session over channels and the frames it answers.
struct Session {
    input: mpsc::UnboundedSender<Result<Message, Infallible>>,
    out: mpsc::UnboundedReceiver<Message>,
    sentinel: u64,
    /// Answers seen, by type and error code.
    seen: BTreeMap<String, u64>,
}

impl Session {
    fn send(&self, message: Message) -> Result<(), TestCaseError> {
        self.input
            .unbounded_send(Ok(message))
            .map_err(|_| TestCaseError::fail("the session ended"))
    }

    /// The text frames up to the `pong` of a sentinel `ping`, events left
    /// out.
    async fn answers(&mut self) -> Result<Vec<Value>, TestCaseError> {
        self.sentinel += 1;
        let sentinel = format!("fuzz-sentinel-{}", self.sentinel);
        let ping = json!({"type": "ping", "id": sentinel}).to_string();
        self.send(Message::Text(ping.into()))?;
        let mut answers = Vec::new();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.out.next())
                .await
                .map_err(|_| TestCaseError::fail("no answer within 30 s"))?
                .ok_or_else(|| TestCaseError::fail("the session ended"))?;
            let Message::Text(text) = message else {
                if let Message::Close(close) = message {
                    return Err(TestCaseError::fail(format!("closed: {close:?}")));
                }
                continue;
            };
            let frame: Value = serde_json::from_str(text.as_str())
                .map_err(|e| TestCaseError::fail(format!("answer not JSON ({e}): {text}")))?;
            if frame["type"] == "pong" && frame["id"] == sentinel.as_str() {
                return Ok(answers);
            }
            if frame["type"] != "event" && frame["type"] != "ephemeral" {
                answers.push(frame);
            }
        }
    }
}

/// Sends `frame` and checks its one answer.
async fn check(
    session: &mut Session,
    validators: &BTreeMap<String, jsonschema::Validator>,
    frame: &Frame,
) -> Result<(), TestCaseError> {
    let (request_id, binary) = match frame {
        Frame::Text(text) => {
            session.send(Message::Text(text.clone().into()))?;
            let id = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
                .filter(|_| text.len() <= MAX_FRAME_BYTES);
            (id, false)
        }
        Frame::Binary(bytes) => {
            session.send(Message::Binary(bytes.clone().into()))?;
            (None, true)
        }
    };
    let answers = session.answers().await?;
    prop_assert_eq!(answers.len(), 1, "one answer per frame: {:?}", answers);
    let answer = &answers[0];
    let kind = answer["type"].as_str().unwrap_or("");
    let validator = validators
        .get(kind)
        .ok_or_else(|| TestCaseError::fail(format!("answer of undocumented type: {answer}")))?;
    if let Err(e) = validator.validate(answer) {
        return Err(TestCaseError::fail(format!(
            "answer does not match its schema: {e}\n{answer}"
        )));
    }
    let code = answer["code"].as_str().unwrap_or("");
    *session
        .seen
        .entry(format!("{kind} {code}").trim().to_owned())
        .or_default() += 1;
    if kind == "error" {
        prop_assert!(CODES.contains(&code), "undocumented code: {}", answer);
    }
    if binary {
        prop_assert_eq!(&answer["code"], "unsupported_frame");
    }
    if let Some(id) = request_id {
        let answered = answer["id"].as_str();
        // An unparseable request is answered with a null id.
        prop_assert!(
            answered == Some(id.as_str()) || answer["code"] == "malformed_json",
            "answer names another id than {:?}: {}",
            id,
            answer
        );
    }
    Ok(())
}

/// Frames of every shape, in sequences, to one session: exactly one
/// documented answer each, and the session lives on.
#[test]
fn every_client_frame_gets_one_documented_answer() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, _dir) = rt.block_on(TestServer::start());
    let services = server.services.clone();
    let schemas = protocol_schemas("### Server frames");
    let validators: BTreeMap<String, jsonschema::Validator> = schemas
        .iter()
        .map(|(kind, schema)| (kind.clone(), jsonschema::validator_for(schema).unwrap()))
        .collect();

    // The world: an application, the fuzzing user, another user, a group
    // conversation of both with one message, and a call in it.
    let (session, world) = rt.block_on(async {
        let app = server.register("fuzz@example.com", "Fuzz").await;
        let (token, user) = user_token(&server, &app, "fuzzer", &["order:1"]).await;
        let (_, other) = user_token(&server, &app, "other", &[]).await;
        let (app, user_record, contexts, _) = services
            .tenancy
            .authenticate_user_with_contexts(&token)
            .await
            .unwrap();
        let caller = Caller {
            app,
            who: Who::User {
                user: user_record,
                contexts,
            },
        };
        let (sink, out) = mpsc::unbounded::<Message>();
        let (input, stream) = mpsc::unbounded::<Result<Message, Infallible>>();
        tokio::spawn(ws::run(
            sink,
            stream,
            services.messaging.clone(),
            services.bus.clone(),
            services.calls.clone(),
            Admitted {
                caller,
                since: None,
                until: None,
                limits: FrameLimits::unlimited(),
                audit: None,
            },
        ));
        let mut session = Session {
            input,
            out,
            sentinel: 0,
            seen: BTreeMap::new(),
        };
        let welcome = session.out.next().await.unwrap();
        assert!(matches!(&welcome, Message::Text(t) if t.as_str().contains("welcome")));
        let mut request = async |frame: Value| {
            session.send(Message::Text(frame.to_string().into())).unwrap();
            let answers = session.answers().await.unwrap();
            assert_eq!(answers.len(), 1, "{answers:?}");
            answers[0].clone()
        };
        let created = request(json!({"type": "create_conversation", "id": "c", "title": "Fuzz", "members": [other], "is_group": true})).await;
        let conversation = created["conversation"]["id"].as_str().unwrap().to_owned();
        let sent = request(json!({"type": "send", "id": "s", "conversation_id": conversation, "client_id": "m1", "text": "hello"})).await;
        let message = sent["message"]["id"].as_str().unwrap().to_owned();
        let started = request(json!({"type": "call_start", "id": "k", "conversation_id": conversation, "media": "video"})).await;
        let call = started["call"]["id"].as_str().unwrap().to_owned();
        let ids = BTreeMap::from([
            (CONVERSATION, conversation),
            (USER, user),
            (OTHER, other),
            (MESSAGE, message),
            (CALL, call),
        ]);
        (session, World { ids })
    });

    // The runner takes a `Fn`; the one session is shared across cases.
    let session = tokio::sync::Mutex::new(session);
    let mut runner = TestRunner::new(Config {
        cases: fuzz_cases(128),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(frame(), 1..12), |frames| {
        rt.block_on(async {
            let mut session = session.lock().await;
            for frame in frames {
                let frame = world.resolve(frame);
                check(&mut session, &validators, &frame)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{e}\nframe: {frame:?}")))?;
            }
            Ok(())
        })
    });
    rt.block_on(server.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
    // The fuzzer got past parsing: requests were carried out, not only
    // refused.
    let seen = session.into_inner().seen;
    eprintln!("{} frames answered: {seen:?}", seen.values().sum::<u64>());
    for kind in ["ack", "error invalid_request"] {
        assert!(seen.contains_key(kind), "no {kind:?} answer among {seen:?}");
    }
    assert!(seen.len() >= 6, "few kinds of answer: {seen:?}");
}
