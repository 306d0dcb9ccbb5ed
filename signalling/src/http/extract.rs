//! Extractors that turn requests into domain input or a clear [`Error`].

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize as _;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::ids::{AppId, Timestamp};
use crate::messaging::{Caller, Who};
use crate::server::{PeerAddr, Services};
use crate::store::{Application, User};
use crate::tenancy::Actor;

/// A JSON body whose every rejection becomes a documented [`Error`].
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Services>> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &Arc<Services>) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::JsonDataError(e)) => {
                let text = e.body_text();
                if text.contains("unknown field") {
                    Err(Error::UnknownField(text))
                } else {
                    Err(Error::InvalidRequest(text))
                }
            }
            Err(JsonRejection::JsonSyntaxError(e)) => Err(Error::MalformedJson(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(Error::UnsupportedMediaType),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Error::PayloadTooLarge(state.config.http.max_body_bytes))
            }
            Err(e) => Err(Error::InvalidRequest(e.body_text())),
        }
    }
}

/// Credentials from the `Authorization` header.
#[derive(Debug)]
pub enum Credentials {
    /// HTTP Basic: application id and secret.
    Basic(String, String),
    /// A bearer token.
    Bearer(String),
}

impl Credentials {
    /// Parses the header; `None` when absent.
    ///
    /// # Errors
    /// `unauthorized` for a header that is present but malformed.
    pub fn from_parts(parts: &Parts) -> Result<Option<Self>, Error> {
        const BAD: Error = Error::Unauthorized("malformed Authorization header");
        let Some(value) = parts.headers.get(AUTHORIZATION) else {
            return Ok(None);
        };
        let value = value.to_str().map_err(|_| BAD)?;
        let (scheme, rest) = value.split_once(' ').ok_or(BAD)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD.decode(rest).map_err(|_| BAD)?;
            let text = String::from_utf8(decoded).map_err(|_| BAD)?;
            let (id, secret) = text.split_once(':').ok_or(BAD)?;
            Ok(Some(Self::Basic(id.to_owned(), secret.to_owned())))
        } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            Ok(Some(Self::Bearer(rest.to_owned())))
        } else {
            Err(BAD)
        }
    }
}

/// The application calling with HTTP Basic `app_id:app_secret`.
#[derive(Debug)]
pub struct AppAuth(pub Application);

impl FromRequestParts<Arc<Services>> for AppAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Services>) -> Result<Self, Error> {
        match Credentials::from_parts(parts)? {
            Some(Credentials::Basic(id, secret)) => Ok(Self(
                application(state, client_ip(parts), &id, &secret).await?,
            )),
            _ => Err(Error::Unauthorized(
                "application credentials required (HTTP Basic app_id:app_secret)",
            )),
        }
    }
}

/// The user calling with a bearer user token.
#[derive(Debug)]
pub struct UserAuth {
    /// The user's application.
    pub app: Application,
    /// The user.
    pub user: User,
}

impl FromRequestParts<Arc<Services>> for UserAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Services>) -> Result<Self, Error> {
        match Credentials::from_parts(parts)? {
            Some(Credentials::Bearer(token)) => {
                let (app, user) = state.tenancy.authenticate_user(&token).await?;
                Ok(Self { app, user })
            }
            _ => Err(Error::Unauthorized(
                "user token required (Authorization: Bearer)",
            )),
        }
    }
}

/// An application (HTTP Basic) or a subscriber (bearer session token).
#[derive(Debug)]
pub struct ActorAuth(pub Actor);

impl FromRequestParts<Arc<Services>> for ActorAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Services>) -> Result<Self, Error> {
        match Credentials::from_parts(parts)? {
            Some(Credentials::Basic(id, secret)) => Ok(Self(Actor::Application(
                application(state, client_ip(parts), &id, &secret).await?,
            ))),
            Some(Credentials::Bearer(token)) => Ok(Self(Actor::Subscriber(
                state.tenancy.authenticate_subscriber(&token).await?,
            ))),
            None => Err(Error::Unauthorized(
                "credentials required: HTTP Basic app_id:app_secret or a subscriber session token",
            )),
        }
    }
}

/// A user (bearer user token) or an application's bot (HTTP Basic
/// `app_id:app_secret`), as the WebSocket accepts them.
#[derive(Debug)]
pub struct CallerAuth(pub Caller);

impl FromRequestParts<Arc<Services>> for CallerAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Services>) -> Result<Self, Error> {
        match Credentials::from_parts(parts)? {
            Some(credentials) => Ok(Self(caller(state, credentials, client_ip(parts)).await?)),
            None => Err(Error::Unauthorized(
                "credentials required: a user token (Authorization: Bearer) or the \
                 application's HTTP Basic app_id:app_secret",
            )),
        }
    }
}

/// Who `credentials` speak for: a user (a user token), or an
/// application's bot (its HTTP Basic id and secret).
///
/// # Errors
/// `unauthorized`, `user_locked`, `application_unregistered`.
pub async fn caller(
    services: &Services,
    credentials: Credentials,
    ip: Option<IpAddr>,
) -> Result<Caller, Error> {
    caller_until(services, credentials, ip)
        .await
        .map(|(caller, _)| caller)
}

/// As [`caller`], with the moment a user token stops being accepted (an
/// application's secret does not expire).
///
/// # Errors
/// As [`caller`].
pub async fn caller_until(
    services: &Services,
    credentials: Credentials,
    ip: Option<IpAddr>,
) -> Result<(Caller, Option<Timestamp>), Error> {
    match credentials {
        Credentials::Bearer(token) => {
            let (app, user, contexts, until) = services
                .tenancy
                .authenticate_user_with_contexts(&token)
                .await?;
            let who = Who::User { user, contexts };
            Ok((Caller { app, who }, Some(until)))
        }
        Credentials::Basic(id, secret) => {
            let app = application(services, ip, &id, &secret).await?;
            Ok((Caller { app, who: Who::App }, None))
        }
    }
}

/// The application whose HTTP Basic id and secret these are. Wrong
/// secrets are counted per application id and per client IP; past the
/// limit a wrong secret is answered `rate_limited` instead of
/// `unauthorized`. The right secret always passes: checking it costs a
/// microsecond, and refusing it would let anyone who knows an application's
/// id (every user token names it) lock the application out.
///
/// # Errors
/// `rate_limited`, and as [`crate::tenancy::Tenancy::authenticate_application`].
pub async fn application(
    services: &Services,
    ip: Option<IpAddr>,
    id: &str,
    secret: &str,
) -> Result<Application, Error> {
    let result = services.tenancy.authenticate_application(id, secret).await;
    if let Err(Error::Unauthorized(_)) = &result {
        let limits = &services.limits;
        let mut refused = Ok(());
        if let Ok(app_id) = id.parse::<AppId>() {
            limits.basic_failures_per_app.failed(&app_id);
            refused = refused.and(limits.basic_failures_per_app.check(&app_id));
        }
        if let Some(ip) = ip {
            let ip = crate::limits::ip_key(ip);
            limits.basic_failures_per_ip.failed(&ip);
            refused = refused.and(limits.basic_failures_per_ip.check(&ip));
        }
        refused?;
    }
    result
}

/// The client's IP address: the TCP peer (behind a reverse proxy, the
/// proxy's). `None` when the router runs without a listener (tests).
#[must_use]
pub fn client_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|ConnectInfo(PeerAddr(addr))| addr.ip())
}

/// The client's IP address, see [`client_ip`].
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(client_ip(parts)))
    }
}

/// The subscriber session token of the caller.
#[derive(Debug)]
pub struct SessionToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SessionToken {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        match Credentials::from_parts(parts)? {
            Some(Credentials::Bearer(token)) => Ok(Self(token)),
            _ => Err(Error::Unauthorized("subscriber session token required")),
        }
    }
}

/// A single path parameter parsed as an id; anything unparsable is a
/// resource that does not exist.
#[derive(Debug)]
pub struct PathId<T>(pub T);

impl<S: Send + Sync, T: FromStr + Send> FromRequestParts<S> for PathId<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::NoRoute)?;
        text.parse().map(Self).map_err(|_| Error::NoRoute)
    }
}

/// A JSON number without a fraction (`30` or `30.0`, as JSON Schema's
/// `integer` allows), or null.
pub(super) fn whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(n) = n.as_u64() {
        return Ok(Some(n));
    }
    match n.as_f64() {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= 1e15 => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom("a whole number, 0 or more")),
    }
}
