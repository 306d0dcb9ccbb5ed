//! REST routes of tenancy: registration, subscriber sign-in, applications,
//! user tokens and users.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::extract::{ActorAuth, ApiJson, AppAuth, ClientIp, PathId, SessionToken, UserAuth};
use crate::audit::Audited;
use crate::error::Error;
use crate::ids::{AppId, UserId};
use crate::server::Services;
use crate::store::{Application, User};

mod views;
pub use views::*;

/// Runs a code confirmation behind the per-address failure gate: an
/// address that failed too often waits (`rate_limited`), right code or
/// not; a wrong code counts as a failure.
async fn confirming<T, F>(
    services: &Services,
    email: &str,
    confirm: impl FnOnce() -> F,
) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    let Ok(email) = crate::tenancy::normalize_email(email) else {
        return confirm().await;
    };
    let gate = &services.limits.code_confirmations_per_email;
    gate.check(&email)?;
    let result = confirm().await;
    if let Err(Error::AccessDenied) = &result {
        gate.failed(&email);
    }
    result
}

/// A subscriber's action on its own account.
fn subscriber_action(subscriber: crate::ids::SubscriberId, action: &'static str) -> Audited {
    Audited {
        subscriber_id: subscriber,
        app_id: None,
        actor: format!("subscriber:{subscriber}"),
        action,
        target: Some(format!("subscriber:{subscriber}")),
        details: None,
    }
}

fn code_sent(services: &Services) -> (StatusCode, Json<CodeSent>) {
    (
        StatusCode::ACCEPTED,
        Json(CodeSent {
            status: "code_sent",
            expires_in_secs: services.config.codes.ttl_secs,
        }),
    )
}

/// Mails a 6-digit registration code to the e-mail.
#[utoipa::path(post, path = "/api/v1/registrations", tag = "registration",
    request_body = RegistrationRequest,
    responses(
        (status = 202, description = "Code mailed", body = CodeSent),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: see `Retry-After`", body = ErrorBody),
    ))]
pub async fn register(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<RegistrationRequest>,
) -> Result<(StatusCode, Json<CodeSent>), Error> {
    let email = crate::tenancy::normalize_email(&body.email).ok();
    services.limits.code_request(email.as_deref(), ip)?;
    services
        .tenancy
        .request_registration(&body.email, &body.app_name)
        .await?;
    Ok(code_sent(&services))
}

/// Confirms the code; creates the subscriber the first time and a new
/// application every time.
#[utoipa::path(post, path = "/api/v1/registrations/confirm", tag = "registration",
    request_body = RegistrationConfirm,
    responses(
        (status = 201, description = "Application registered", body = RegisteredView),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 403, description = "`access_denied`: wrong e-mail or code, or the code is expired, used or out of tries", body = ErrorBody),
        (status = 429, description = "`rate_limited`: see `Retry-After`", body = ErrorBody),
    ))]
pub async fn confirm_registration(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<RegistrationConfirm>,
) -> Result<(StatusCode, Json<RegisteredView>), Error> {
    let done = confirming(&services, &body.email, || {
        services
            .tenancy
            .confirm_registration(&body.email, &body.app_name, &body.code)
    })
    .await?;
    let subscriber = done.application.subscriber_id;
    services
        .audit(
            Audited {
                subscriber_id: subscriber,
                app_id: Some(done.application.id),
                actor: format!("subscriber:{subscriber}"),
                action: "application.registered",
                target: Some(format!("application:{}", done.application.id)),
                details: Some(serde_json::json!({"name": done.application.name})),
            },
            ip,
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(RegisteredView {
            app_id: done.application.id,
            app_secret: done.app_secret,
            subscriber_id: done.application.subscriber_id,
            app_name: done.application.name,
        }),
    ))
}

/// Mails a sign-in code to a subscriber. Answers the same whether or not
/// the address belongs to a subscriber.
#[utoipa::path(post, path = "/api/v1/subscriber/sessions", tag = "subscribers",
    request_body = SignInRequest,
    responses(
        (status = 202, description = "Code mailed if the address is a subscriber's", body = CodeSent),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: see `Retry-After`", body = ErrorBody),
    ))]
pub async fn request_sign_in(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<SignInRequest>,
) -> Result<(StatusCode, Json<CodeSent>), Error> {
    let email = crate::tenancy::normalize_email(&body.email).ok();
    services.limits.code_request(email.as_deref(), ip)?;
    services.tenancy.request_sign_in(&body.email).await?;
    Ok(code_sent(&services))
}

/// Confirms a sign-in code and opens a subscriber session.
#[utoipa::path(post, path = "/api/v1/subscriber/sessions/confirm", tag = "subscribers",
    request_body = SignInConfirm,
    responses(
        (status = 201, description = "Session opened", body = SessionView),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 403, description = "`access_denied`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: see `Retry-After`", body = ErrorBody),
    ))]
pub async fn confirm_sign_in(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<SignInConfirm>,
) -> Result<(StatusCode, Json<SessionView>), Error> {
    let confirmed = confirming(&services, &body.email, || {
        services.tenancy.confirm_sign_in(&body.email, &body.code)
    })
    .await;
    // A wrong code for a subscriber's address is in its log (one for no
    // subscriber is in nobody's).
    if let Err(Error::AccessDenied) = &confirmed
        && let Ok(email) = crate::tenancy::normalize_email(&body.email)
        && let Ok(Some(subscriber)) = services.store.subscriber_by_email(&email).await
    {
        services
            .audit(
                subscriber_action(subscriber.id, "subscriber.sign_in_failed"),
                ip,
            )
            .await;
    }
    let session = confirmed?;
    services
        .audit(
            subscriber_action(session.subscriber.id, "subscriber.signed_in"),
            ip,
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(SessionView {
            token: session.token,
            subscriber_id: session.subscriber.id,
            email: session.subscriber.email,
            expires_at: session.expires_at.to_rfc3339(),
        }),
    ))
}

/// Ends the caller's subscriber session.
#[utoipa::path(delete, path = "/api/v1/subscriber/sessions/current", tag = "subscribers",
    security(("subscriber" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ))]
pub async fn sign_out(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    SessionToken(token): SessionToken,
) -> Result<StatusCode, Error> {
    let subscriber = services.tenancy.authenticate_subscriber(&token).await?;
    services.tenancy.sign_out(&token).await?;
    services
        .audit(
            subscriber_action(subscriber.id, "subscriber.signed_out"),
            ip,
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists the applications the caller may see: all of a subscriber's, or
/// just itself for an application.
#[utoipa::path(get, path = "/api/v1/applications", tag = "applications",
    security(("subscriber" = []), ("application" = [])),
    responses(
        (status = 200, description = "Applications, oldest first", body = ApplicationList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
    ))]
pub async fn list_applications(
    State(services): State<Arc<Services>>,
    ActorAuth(actor): ActorAuth,
) -> Result<Json<ApplicationList>, Error> {
    let apps = services.tenancy.applications(&actor).await?;
    Ok(Json(ApplicationList {
        applications: apps.iter().map(ApplicationView::from).collect(),
    }))
}

/// One application.
#[utoipa::path(get, path = "/api/v1/applications/{app_id}", tag = "applications",
    params(("app_id" = AppId, Path, description = "Application id")),
    security(("subscriber" = []), ("application" = [])),
    responses(
        (status = 200, description = "The application", body = ApplicationView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`, also for another owner's application", body = ErrorBody),
    ))]
pub async fn get_application(
    State(services): State<Arc<Services>>,
    ActorAuth(actor): ActorAuth,
    PathId(id): PathId<AppId>,
) -> Result<Json<ApplicationView>, Error> {
    let app = services.tenancy.application(&actor, id).await?;
    Ok(Json(ApplicationView::from(&app)))
}

/// Renames an application.
#[utoipa::path(patch, path = "/api/v1/applications/{app_id}", tag = "applications",
    params(("app_id" = AppId, Path, description = "Application id")),
    request_body = RenameRequest,
    security(("subscriber" = []), ("application" = [])),
    responses(
        (status = 200, description = "Renamed", body = ApplicationView),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn rename_application(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    ActorAuth(actor): ActorAuth,
    PathId(id): PathId<AppId>,
    ApiJson(body): ApiJson<RenameRequest>,
) -> Result<Json<ApplicationView>, Error> {
    let app = services.tenancy.rename(&actor, id, &body.name).await?;
    let what =
        Audited::by(&actor, id, "application.renamed").with(serde_json::json!({"name": app.name}));
    services.audit(what, ip).await;
    Ok(Json(ApplicationView::from(&app)))
}

/// Unregisters an application. Its credentials and its users' tokens stop
/// working at once; its data is kept but unreachable.
#[utoipa::path(delete, path = "/api/v1/applications/{app_id}", tag = "applications",
    params(("app_id" = AppId, Path, description = "Application id")),
    security(("subscriber" = []), ("application" = [])),
    responses(
        (status = 204, description = "Unregistered"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn unregister_application(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    ActorAuth(actor): ActorAuth,
    PathId(id): PathId<AppId>,
) -> Result<StatusCode, Error> {
    services.tenancy.unregister(&actor, id).await?;
    services
        .audit(Audited::by(&actor, id, "application.unregistered"), ip)
        .await;
    services.end_sessions_of_app(id).await?;
    services.files.app_unregistered();
    Ok(StatusCode::NO_CONTENT)
}

/// Rotates an application's secret.
#[utoipa::path(post, path = "/api/v1/applications/{app_id}/secret", tag = "applications",
    params(("app_id" = AppId, Path, description = "Application id")),
    security(("subscriber" = []), ("application" = [])),
    responses(
        (status = 200, description = "New secret", body = RotatedView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn rotate_secret(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    ActorAuth(actor): ActorAuth,
    PathId(id): PathId<AppId>,
) -> Result<Json<RotatedView>, Error> {
    let rotated = services.tenancy.rotate_secret(&actor, id).await?;
    services
        .audit(Audited::by(&actor, id, "application.secret_rotated"), ip)
        .await;
    // The bot's sessions were opened with the secret that just ended.
    services
        .end_sessions_of_user(crate::messaging::bot_id(id))
        .await;
    Ok(Json(RotatedView {
        app_secret: rotated.app_secret,
        previous_tokens_valid_until: rotated.previous_tokens_valid_until.to_rfc3339(),
    }))
}

/// Issues a user token; the first one for an unknown `external_id`
/// provisions the user.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "users",
    request_body = TokenRequest,
    security(("application" = [])),
    responses(
        (status = 200, description = "Token", body = TokenView),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`user_locked`, `application_unregistered`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: see `Retry-After`", body = ErrorBody),
    ))]
pub async fn issue_token(
    State(services): State<Arc<Services>>,
    AppAuth(app): AppAuth,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<Json<TokenView>, Error> {
    services.limits.token(app.id)?;
    let issued = services
        .tenancy
        .issue_token(
            &app,
            &body.external_id,
            &body.name,
            body.email.as_deref(),
            &body.contexts,
        )
        .await?;
    Ok(Json(TokenView {
        token: issued.token,
        user_id: issued.user.id,
        expires_at: issued.expires_at.to_rfc3339(),
    }))
}

/// Finds a user of the calling application by its external id.
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    params(UserQuery),
    security(("application" = [])),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 400, description = "`invalid_request`: no `external_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn find_user(
    State(services): State<Arc<Services>>,
    AppAuth(app): AppAuth,
    query: Result<Query<UserQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UserView>, Error> {
    let Query(query) = query.map_err(|e| Error::InvalidRequest(e.body_text()))?;
    let user = services
        .tenancy
        .user_by_external_id(&app, &query.external_id)
        .await?;
    Ok(Json(UserView::from(&user)))
}

/// A user of the calling application by server id.
#[utoipa::path(get, path = "/api/v1/users/{user_id}", tag = "users",
    params(("user_id" = UserId, Path, description = "User id")),
    security(("application" = [])),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`, also for another application's user", body = ErrorBody),
    ))]
pub async fn get_user(
    State(services): State<Arc<Services>>,
    AppAuth(app): AppAuth,
    PathId(id): PathId<UserId>,
) -> Result<Json<UserView>, Error> {
    let user = services.tenancy.user(&app, id).await?;
    Ok(Json(UserView::from(&user)))
}

/// Locks a user: its tokens are refused until it is unlocked.
#[utoipa::path(post, path = "/api/v1/users/{user_id}/lock", tag = "users",
    params(("user_id" = UserId, Path, description = "User id")),
    security(("application" = [])),
    responses(
        (status = 200, description = "Locked", body = UserView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn lock_user(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    AppAuth(app): AppAuth,
    PathId(id): PathId<UserId>,
) -> Result<Json<UserView>, Error> {
    let user = services.tenancy.set_locked(&app, id, true).await?;
    let what = Audited::by_app_on(&app, "user.locked", format!("user:{}", user.id));
    services.audit(what, ip).await;
    services.end_sessions_of_user(user.id).await;
    Ok(Json(UserView::from(&user)))
}

/// Unlocks a user.
#[utoipa::path(post, path = "/api/v1/users/{user_id}/unlock", tag = "users",
    params(("user_id" = UserId, Path, description = "User id")),
    security(("application" = [])),
    responses(
        (status = 200, description = "Unlocked", body = UserView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn unlock_user(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    AppAuth(app): AppAuth,
    PathId(id): PathId<UserId>,
) -> Result<Json<UserView>, Error> {
    let user = services.tenancy.set_locked(&app, id, false).await?;
    let what = Audited::by_app_on(&app, "user.unlocked", format!("user:{}", user.id));
    services.audit(what, ip).await;
    Ok(Json(UserView::from(&user)))
}

/// The user the bearer token speaks for.
#[utoipa::path(get, path = "/api/v1/me", tag = "users",
    security(("user" = [])),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`user_locked`, `application_unregistered`", body = ErrorBody),
    ))]
pub async fn me(auth: UserAuth) -> Json<UserView> {
    debug_assert_eq!(auth.app.id, auth.user.app_id);
    Json(UserView::from(&auth.user))
}

/// Grants a user access to a business object (context), as the `ctx`
/// claim of its token would: it may open, read and post in the object's
/// contextual conversation.
#[utoipa::path(put, path = "/api/v1/users/{user_id}/contexts/{context}", tag = "users",
    params(("user_id" = UserId, Path, description = "User id"),
           ("context" = String, Path, description = "The object reference, URL-encoded; not only spaces", pattern = r"\S")),
    security(("application" = [])),
    responses(
        (status = 204, description = "Granted"),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn grant_context(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    AppAuth(app): AppAuth,
    path: Result<GrantPath, PathRejection>,
) -> Result<StatusCode, Error> {
    let Path((user, context)) = grant_path(path)?;
    set_grant(&services, &app, &user, &context, true, ip).await
}

/// Withdraws a grant; the user leaves the object's conversation at once.
#[utoipa::path(delete, path = "/api/v1/users/{user_id}/contexts/{context}", tag = "users",
    params(("user_id" = UserId, Path, description = "User id"),
           ("context" = String, Path, description = "The object reference, URL-encoded; not only spaces", pattern = r"\S")),
    security(("application" = [])),
    responses(
        (status = 204, description = "Withdrawn"),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn revoke_context(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    AppAuth(app): AppAuth,
    path: Result<GrantPath, PathRejection>,
) -> Result<StatusCode, Error> {
    let Path((user, context)) = grant_path(path)?;
    set_grant(&services, &app, &user, &context, false, ip).await
}

/// The user id and context of a grant's path.
type GrantPath = Path<(String, String)>;

/// A context that is not UTF-8 once URL-decoded (`%80`) is
/// `invalid_request`, not the extractor's plain-text 400.
fn grant_path(path: Result<GrantPath, PathRejection>) -> Result<GrantPath, Error> {
    path.map_err(|_| Error::InvalidRequest("context: not valid UTF-8 once URL-decoded".to_owned()))
}

async fn set_grant(
    services: &Services,
    app: &Application,
    user: &str,
    context: &str,
    granted: bool,
    ip: Option<std::net::IpAddr>,
) -> Result<StatusCode, Error> {
    let user: UserId = user.parse().map_err(|_| Error::NotFound("user"))?;
    if let Some(left) = services
        .messaging
        .set_grant(app, user, context, granted)
        .await?
    {
        services.calls.member_removed(left, user).await;
    }
    let action = if granted {
        "grant.added"
    } else {
        "grant.removed"
    };
    let what = Audited::by_app_on(app, action, format!("user:{user}"))
        .with(serde_json::json!({"context": context}));
    services.audit(what, ip).await;
    Ok(StatusCode::NO_CONTENT)
}
