//! Fuzz targets: REST bodies, query strings, path segments and
//! credentials, through the whole HTTP application
//! (`confer_signalling::http::app` called with `tower::ServiceExt::oneshot`,
//! the server's own services); and user tokens (JWTs) given to
//! `auth::verify_token`. A request is never answered with a 5xx, and every
//! error is `{"error": {"code", "message"}}` with a code of the documented
//! table; a token verifies only when everything about it is right.
//!
//! Cases: `PROPTEST_CASES` (default 256 requests, 512 tokens);
//! `scripts/fuzz.sh` runs many more.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{TestServer, Ws, fuzz, user_token};
use confer_sfu::testing::fuzz_cases;
use confer_signalling::auth::{self, TOKEN_AUDIENCE, TokenKey};
use confer_signalling::ids::{AppId, Timestamp};
use hmac::{Hmac, Mac};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

const APP: &str = "$app";
const USER: &str = "$user";
const CONVERSATION: &str = "$conversation";
const PLACEHOLDERS: &[&str] = &[APP, USER, CONVERSATION];

/// Field names of request bodies (and some no body has).
const FIELDS: &[&str] = &[
    "external_id",
    "name",
    "email",
    "contexts",
    "app_name",
    "code",
    "size",
    "content_type",
    "sha256",
    "title",
    "id",
    "__proto__",
    "\u{0}",
    "поле",
];

/// Who a request is made as.
#[derive(Clone, Copy, Debug)]
enum As {
    Nobody,
    App,
    User,
    Subscriber,
}

/// A route, its credentials, a valid body and a valid query.
struct Route {
    method: &'static str,
    path: &'static str,
    auth: As,
    body: Option<&'static str>,
    query: &'static str,
}

/// Routes that read bodies, queries and path segments. None of them
/// destroys what the others need (no unregistering, rotating or locking).
const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: "/api/v1/tokens",
        auth: As::App,
        body: Some(r#"{"external_id":"fz","name":"Fuzz","contexts":["order:1"]}"#),
        query: "",
    },
    Route {
        method: "GET",
        path: "/api/v1/users",
        auth: As::App,
        body: None,
        query: "external_id=fuzzer",
    },
    Route {
        method: "GET",
        path: "/api/v1/users/$user",
        auth: As::App,
        body: None,
        query: "",
    },
    Route {
        method: "PUT",
        path: "/api/v1/users/$user/contexts/$segment",
        auth: As::App,
        body: None,
        query: "",
    },
    Route {
        method: "DELETE",
        path: "/api/v1/users/$user/contexts/$segment",
        auth: As::App,
        body: None,
        query: "",
    },
    Route {
        method: "GET",
        path: "/web/$segment",
        auth: As::Nobody,
        body: None,
        query: "",
    },
    Route {
        method: "POST",
        path: "/api/v1/conversations/$conversation/files",
        auth: As::User,
        body: Some(r#"{"name":"a.txt","size":3,"content_type":"text/plain"}"#),
        query: "",
    },
    Route {
        method: "GET",
        path: "/api/v1/files/$segment",
        auth: As::User,
        body: None,
        query: "",
    },
    Route {
        method: "GET",
        path: "/api/v1/me",
        auth: As::User,
        body: None,
        query: "",
    },
    Route {
        method: "PATCH",
        path: "/api/v1/applications/$app",
        auth: As::Subscriber,
        body: Some(r#"{"name":"Renamed"}"#),
        query: "",
    },
    Route {
        method: "GET",
        path: "/api/v1/applications",
        auth: As::Subscriber,
        body: None,
        query: "",
    },
    Route {
        method: "POST",
        path: "/api/v1/registrations",
        auth: As::Nobody,
        body: Some(r#"{"email":"new@example.com","app_name":"New"}"#),
        query: "",
    },
    Route {
        method: "POST",
        path: "/api/v1/registrations/confirm",
        auth: As::Nobody,
        body: Some(r#"{"email":"new@example.com","app_name":"New","code":"123456"}"#),
        query: "",
    },
    Route {
        method: "POST",
        path: "/api/v1/subscriber/sessions/confirm",
        auth: As::Nobody,
        body: Some(r#"{"email":"fuzz@example.com","code":"123456"}"#),
        query: "",
    },
    Route {
        method: "GET",
        path: "/api/v1/$segment",
        auth: As::Nobody,
        body: None,
        query: "",
    },
];

/// Codes of the REST error table (docs/protocol.md, "Errors"), without
/// `internal`.
const CODES: &[&str] = &[
    "malformed_json",
    "invalid_request",
    "unknown_field",
    "upload_size_mismatch",
    "checksum_mismatch",
    "unauthorized",
    "access_denied",
    "user_locked",
    "application_unregistered",
    "forbidden",
    "bad_signature",
    "url_expired",
    "quota_exceeded",
    "upload_missing",
    "upload_completing",
    "file_not_ready",
    "file_attached",
    "already_uploaded",
    "file_too_large",
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    "rate_limited",
];

/// What a case changes about a route's valid request.
#[derive(Clone, Debug)]
struct Case {
    route: usize,
    body: Option<Vec<u8>>,
    query: Option<String>,
    segment: String,
    content_type: Option<&'static str>,
    credentials: Credentials,
}

#[derive(Clone, Debug)]
enum Credentials {
    Right,
    None,
    /// An `Authorization` header of any shape.
    Header(String),
    /// The right token or secret, damaged.
    Damaged(usize, u8),
}

/// Text percent-encoded for a path segment or query value.
fn encoded() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}".prop_map(|s| utf8_percent_encode(&s, NON_ALPHANUMERIC).to_string()),
        "[a-zA-Z0-9._~-]{0,20}",
        // Escapes of bytes that are not UTF-8, and of NUL.
        proptest::collection::vec(any::<u8>(), 0..8)
            .prop_map(|b| b.iter().map(|b| format!("%{b:02X}")).collect()),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let body = prop_oneof![
        3 => Just(None),
        3 => fuzz::value(FIELDS, PLACEHOLDERS).prop_map(|v| Some(v.to_string().into_bytes())),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Some),
        1 => (".{0,200}", any::<usize>(), any::<u8>())
            .prop_map(|(s, at, b)| Some(fuzz::damaged(s, at, b).into_bytes())),
    ];
    let query = prop_oneof![
        3 => Just(None),
        1 => proptest::collection::vec(
            (prop_oneof![Just("external_id".to_owned()), encoded()], encoded()),
            0..4,
        )
        .prop_map(|pairs| Some(pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"))),
        1 => "[a-zA-Z0-9=&%._~+-]{0,60}".prop_map(Some),
    ];
    let credentials = prop_oneof![
        6 => Just(Credentials::Right),
        1 => Just(Credentials::None),
        1 => prop_oneof![
            ".{0,80}",
            "(Bearer|Basic|bearer|basic) [ -~]{0,120}",
            "Basic [A-Za-z0-9+/=]{0,60}",
        ]
        .prop_map(Credentials::Header),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Credentials::Damaged(at, b)),
    ];
    (
        0..ROUTES.len(),
        body,
        query,
        encoded(),
        prop_oneof![
            6 => Just(Some("application/json")),
            1 => Just(None),
            1 => Just(Some("text/plain")),
            1 => Just(Some("application/json; charset=latin1")),
        ],
        credentials,
    )
        .prop_map(
            |(route, body, query, segment, content_type, credentials)| Case {
                route,
                body,
                query,
                segment,
                content_type,
                credentials,
            },
        )
}

/// What the requests are made with.
struct World {
    ids: BTreeMap<&'static str, String>,
    basic: String,
    user_token: String,
    subscriber_token: String,
}

impl World {
    fn request(&self, case: &Case) -> Request<Body> {
        let route = &ROUTES[case.route];
        let mut path = route.path.replace("$segment", &case.segment);
        for (placeholder, id) in &self.ids {
            path = path.replace(placeholder, id);
        }
        if path.ends_with('/') || path.contains("//") {
            path.push('x');
        }
        let query = case.query.as_deref().unwrap_or(route.query);
        let uri = if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        let mut request = Request::builder().method(route.method).uri(uri);
        let right = match route.auth {
            As::Nobody => None,
            As::App => Some(format!("Basic {}", self.basic)),
            As::User => Some(format!("Bearer {}", self.user_token)),
            As::Subscriber => Some(format!("Bearer {}", self.subscriber_token)),
        };
        let authorization = match (&case.credentials, right) {
            (Credentials::Right, right) => right,
            (Credentials::None, _) => None,
            (Credentials::Header(h), _) => Some(h.clone()),
            (Credentials::Damaged(at, b), Some(right)) => Some(fuzz::damaged(right, *at, *b)),
            (Credentials::Damaged(..), None) => None,
        };
        // Bytes no header may carry cannot come over the wire either.
        if let Some(a) = authorization.and_then(|a| HeaderValue::from_bytes(a.as_bytes()).ok()) {
            request = request.header("authorization", a);
        }
        if let Some(t) = case.content_type {
            request = request.header("content-type", t);
        }
        let body = match (&case.body, route.body) {
            (Some(b), _) => {
                // Placeholders in JSON bodies become real ids.
                match serde_json::from_slice::<Value>(b) {
                    Ok(mut v) => {
                        fuzz::fill(&mut v, &self.ids);
                        v.to_string().into_bytes()
                    }
                    Err(_) => b.clone(),
                }
            }
            (None, Some(valid)) => valid.as_bytes().to_vec(),
            (None, None) => Vec::new(),
        };
        request.body(Body::from(body)).unwrap()
    }
}

/// Requests of every shape to the routes that read input: never a 5xx,
/// errors in the documented shape with a documented code.
#[test]
fn no_request_gets_a_server_error() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::unlimited_config(dir.path());
    let server = rt.block_on(TestServer::start_with(config, common::default_clock()));
    let app = confer_signalling::http::app(server.services.clone());
    let world = rt.block_on(async {
        let registered = server.register("fuzz@example.com", "Fuzz").await;
        let (token, user) = user_token(&server, &registered, "fuzzer", &[]).await;
        let mut ws = Ws::connect(&server, &token, None).await;
        let created = ws
            .request(json!({"type": "create_conversation", "title": "Fuzz", "members": []}))
            .await;
        let subscriber_token = server.sign_in("fuzz@example.com").await;
        World {
            ids: BTreeMap::from([
                (APP, registered.id.clone()),
                (USER, user),
                (
                    CONVERSATION,
                    created["conversation"]["id"].as_str().unwrap().to_owned(),
                ),
            ]),
            basic: STANDARD.encode(format!("{}:{}", registered.id, registered.secret)),
            user_token: token,
            subscriber_token,
        }
    });

    let seen = std::sync::Mutex::new(BTreeMap::<String, u64>::new());
    let mut runner = TestRunner::new(Config {
        cases: fuzz_cases(256),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        let request = world.request(&case);
        let what = format!("{} {}", request.method(), request.uri());
        rt.block_on(async {
            let response = app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let route = ROUTES[case.route].path;
            *seen
                .lock()
                .unwrap()
                .entry(format!("{route} {}", status.as_u16() / 100))
                .or_default() += 1;
            prop_assert!(
                !status.is_server_error(),
                "{what} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
            if status.is_client_error() {
                let error: Value = serde_json::from_slice(&body).map_err(|e| {
                    TestCaseError::fail(format!("{what} {status}: error body not JSON ({e})"))
                })?;
                let code = error["error"]["code"].as_str().unwrap_or("");
                prop_assert!(
                    CODES.contains(&code) && error["error"]["message"].is_string(),
                    "{what} {status}: undocumented error {error}"
                );
            }
            Ok(())
        })
    });
    rt.block_on(server.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
    // Valid requests were made too: the routes were reached, not only
    // refused at the door.
    let seen = seen.into_inner().unwrap();
    eprintln!("statuses seen: {seen:?}");
    let succeeded = seen.keys().filter(|k| k.ends_with(" 2")).count();
    assert!(succeeded >= 5, "few routes answered 2xx: {seen:?}");
}

/// A token: header and claims of any shape, signed with the right key
/// (the signature is what an attacker cannot make, so everything behind
/// it is fuzzed), or a damaged real token, or any text.
fn token(
    key: &'static TokenKey,
    app: AppId,
    real: &'static str,
    now: i64,
) -> impl Strategy<Value = String> {
    let header = prop_oneof![
        6 => Just(json!({"alg": "HS256", "typ": "JWT"})),
        1 => Just(json!({"alg": "none"})),
        1 => Just(json!({"alg": "HS512"})),
        1 => Just(json!({"alg": "RS256", "kid": "x"})),
        1 => Just(json!({"alg": "HS256", "crit": ["exp"]})),
        1 => fuzz::value(&["alg", "typ", "kid", "crit", "jku"], &["HS256"]),
    ];
    // Times that make a right token (issued a little before now, ending
    // within the allowed lifetime), times around now, and edges.
    let time = |right: std::ops::Range<i64>| {
        prop_oneof![
            4 => right.prop_map(move |d| json!(now + d)),
            2 => (-10_000i64..10_000).prop_map(move |d| json!(now + d)),
            1 => any::<i64>().prop_map(Value::from),
            1 => prop_oneof![
                Just(json!(u64::MAX)),
                Just(json!(i64::MIN)),
                Just(json!(1e300)),
                Just(json!(-1)),
                Just(Value::Null),
                Just(json!(now.to_string())),
            ],
        ]
    };
    let other = || fuzz::leaf(&["u-1"]);
    let claims = (
        prop_oneof![3 => Just(json!(app.to_string())), 1 => other()],
        prop_oneof![
            3 => Just(json!(TOKEN_AUDIENCE)),
            1 => Just(json!([TOKEN_AUDIENCE, "x"])),
            1 => other(),
        ],
        prop_oneof![3 => Just(json!("u-1")), 1 => other()],
        time(-300..30),
        time(1..3000),
        proptest::collection::vec(("[a-z]{1,6}", other()), 0..3),
    )
        .prop_map(|(iss, aud, sub, iat, exp, extra)| {
            let mut claims =
                json!({"iss": iss, "aud": aud, "sub": sub, "iat": iat, "exp": exp, "name": "N"});
            for (k, v) in extra {
                claims[k] = v;
            }
            claims
        });
    prop_oneof![
        6 => (header, claims).prop_map(move |(h, c)| {
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(h.to_string()),
                URL_SAFE_NO_PAD.encode(c.to_string())
            );
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key.0).unwrap();
            mac.update(signed.as_bytes());
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
        }),
        1 => (any::<usize>(), any::<u8>()).prop_map(move |(at, b)| fuzz::damaged(real.to_owned(), at, b)),
        1 => ".{0,300}",
        1 => "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,50}",
    ]
}

/// Tokens of every shape: verification never panics, and a token is
/// accepted only with HS256, the right issuer-independent audience, and
/// times inside the allowed window.
#[test]
fn token_verification_accepts_only_what_is_right() {
    const NOW: i64 = 1_700_000_050;
    const TTL: u64 = 3600;
    const LEEWAY: u64 = 60;
    let app = AppId::random();
    let key: &'static TokenKey = Box::leak(Box::new(TokenKey::derive(app, "secret")));
    let real: &'static str = Box::leak(
        auth::mint_token(
            key,
            &auth::UserClaims {
                iss: app.to_string(),
                aud: TOKEN_AUDIENCE.to_owned(),
                sub: "u-1".to_owned(),
                name: "N".to_owned(),
                email: None,
                iat: NOW - 10,
                exp: NOW + 100,
                ctx: Vec::new(),
            },
        )
        .unwrap()
        .into_boxed_str(),
    );
    let mut runner = TestRunner::new(Config {
        cases: fuzz_cases(512),
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::cell::Cell::new(0u64);
    runner
        .run(&token(key, app, real, NOW), |token| {
            let _ = auth::unverified_issuer(&token);
            if let Ok(claims) = auth::verify_token(&token, key, Timestamp(NOW * 1000), TTL, LEEWAY)
            {
                let header: Value = serde_json::from_slice(
                    &URL_SAFE_NO_PAD
                        .decode(token.split('.').next().unwrap_or(""))
                        .unwrap_or_default(),
                )
                .unwrap_or(Value::Null);
                prop_assert_eq!(&header["alg"], "HS256", "{}", token);
                prop_assert!(claims.exp > NOW, "expired token accepted: {:?}", claims);
                prop_assert!(
                    claims.iat <= NOW + LEEWAY as i64,
                    "future token accepted: {:?}",
                    claims
                );
                prop_assert!(
                    claims.exp - claims.iat <= TTL as i64,
                    "long-lived token accepted: {:?}",
                    claims
                );
                accepted.set(accepted.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    eprintln!("tokens accepted: {}", accepted.get());
    // Signed tokens with times around now: some are right.
    assert!(accepted.get() > 0, "no token was accepted");
}

/// Found by the fuzzer: a path segment that is not UTF-8 once decoded
/// (`%80`) got axum's plain-text 400 from the grant routes and `/web/`,
/// not a JSON error with a code. Over a real socket.
#[tokio::test]
async fn a_path_segment_that_is_not_utf8_gets_a_documented_error() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("paths@example.com", "Paths").await;
    let (_, user) = user_token(&server, &app, "u", &[]).await;
    let path = format!("/api/v1/users/{user}/contexts/%80");
    let r = server
        .client
        .put(server.url(&path))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    common::expect_error(r, reqwest::StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = server
        .delete(&path)
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    common::expect_error(r, reqwest::StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = server.get("/web/%80").send().await.unwrap();
    common::expect_error(r, reqwest::StatusCode::NOT_FOUND, "not_found").await;
    // Assets are still served.
    let r = server.get("/web/app.js").send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    server.stop().await;
}
