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
use crate::error::Error;
use crate::ids::{AppId, UserId};
use crate::server::Services;
use crate::store::{Application, User};

/// Asks for a registration code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationRequest {
    /// Where the code goes; becomes the subscriber's identity.
    #[schema(example = "it@example.com", format = Email, max_length = 254)]
    pub email: String,
    /// Display name of the application: any printable text.
    #[schema(
        example = "Склад \"Север\"",
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub app_name: String,
}

/// Confirms a registration with the mailed code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfirm {
    /// The e-mail the code was sent to.
    #[schema(example = "it@example.com", format = Email, max_length = 254)]
    pub email: String,
    /// Display name of the new application (may differ from the request's).
    #[schema(
        example = "Склад \"Север\"",
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub app_name: String,
    /// The 6-digit code.
    #[schema(example = "042137", pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// A code was mailed (or, for sign-in, would have been if the address is
/// known).
#[derive(Debug, Serialize, ToSchema)]
pub struct CodeSent {
    /// Always `"code_sent"`.
    pub status: &'static str,
    /// Seconds the code stays valid.
    pub expires_in_secs: u64,
}

/// A new application; the secret is shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredView {
    /// Server-generated id of the application.
    pub app_id: AppId,
    /// The secret; store it, it is not shown again.
    pub app_secret: String,
    /// The subscriber (e-mail owner) that owns the application.
    pub subscriber_id: crate::ids::SubscriberId,
    /// The display name.
    pub app_name: String,
}

/// Asks for a sign-in code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    /// The subscriber's e-mail.
    #[schema(format = Email, max_length = 254)]
    pub email: String,
}

/// Confirms a sign-in with the mailed code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInConfirm {
    /// The subscriber's e-mail.
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// The 6-digit code.
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// A subscriber session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Bearer token for the application-management routes.
    pub token: String,
    /// The subscriber.
    pub subscriber_id: crate::ids::SubscriberId,
    /// The subscriber's e-mail.
    pub email: String,
    /// RFC 3339 end of validity.
    pub expires_at: String,
}

/// An application as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplicationView {
    /// Id.
    pub app_id: AppId,
    /// Display name.
    pub name: String,
    /// Owner.
    pub subscriber_id: crate::ids::SubscriberId,
    /// `registered` or `unregistered`.
    pub status: &'static str,
    /// RFC 3339 registration time.
    pub created_at: String,
    /// RFC 3339 time of unregistration, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unregistered_at: Option<String>,
}

impl From<&Application> for ApplicationView {
    fn from(app: &Application) -> Self {
        Self {
            app_id: app.id,
            name: app.name.clone(),
            subscriber_id: app.subscriber_id,
            status: if app.unregistered_at.is_some() {
                "unregistered"
            } else {
                "registered"
            },
            created_at: app.created_at.to_rfc3339(),
            unregistered_at: app.unregistered_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// A list of applications.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplicationList {
    /// Oldest first.
    pub applications: Vec<ApplicationView>,
}

/// Renames an application.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    /// The new display name.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
}

/// A rotated secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedView {
    /// The new secret; shown only here.
    pub app_secret: String,
    /// RFC 3339 time until which tokens signed with the old secret's key are
    /// still accepted. HTTP Basic with the old secret stops at once.
    pub previous_tokens_valid_until: String,
}

/// Asks for a user token; vouches for the user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The application's own id for the user.
    #[schema(
        example = "employee-0042",
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub external_id: String,
    /// The user's display name.
    #[schema(
        example = "Анна Петрова",
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
    /// The user's e-mail, if the application shares it.
    #[serde(default)]
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
    /// Business objects (context strings) the user may see: the token's
    /// `ctx` claim, which opens their contextual conversations.
    #[serde(default)]
    #[schema(value_type = Vec<ContextString>, inline, max_items = 1000)]
    pub contexts: Vec<String>,
}

/// A context string (a business object, such as `order:1`), as a
/// token's `contexts` lists it: only in the document (the field is a
/// plain `String`), to say the length the server checks.
struct ContextString;

impl utoipa::PartialSchema for ContextString {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(256))
            .into()
    }
}

impl ToSchema for ContextString {}

/// A user token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// HS256 JWT; see "User tokens" in `docs/protocol.md`.
    pub token: String,
    /// The server's id of the user.
    pub user_id: UserId,
    /// RFC 3339 expiry of the token.
    pub expires_at: String,
}

/// A user as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// The server's id.
    pub user_id: UserId,
    /// The application the user belongs to.
    pub app_id: AppId,
    /// The application's own id for the user.
    pub external_id: String,
    /// Display name.
    pub name: String,
    /// E-mail, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Whether the application locked the user.
    pub locked: bool,
    /// RFC 3339 time of provisioning.
    pub created_at: String,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            user_id: user.id,
            app_id: user.app_id,
            external_id: user.external_id.clone(),
            name: user.name.clone(),
            email: user.email.clone(),
            locked: user.locked,
            created_at: user.created_at.to_rfc3339(),
        }
    }
}

/// Query of the user lookup by external id.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    /// The application's own id for the user.
    pub external_id: String,
}

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
    ApiJson(body): ApiJson<RegistrationConfirm>,
) -> Result<(StatusCode, Json<RegisteredView>), Error> {
    let done = confirming(&services, &body.email, || {
        services
            .tenancy
            .confirm_registration(&body.email, &body.app_name, &body.code)
    })
    .await?;
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
    ApiJson(body): ApiJson<SignInConfirm>,
) -> Result<(StatusCode, Json<SessionView>), Error> {
    let session = confirming(&services, &body.email, || {
        services.tenancy.confirm_sign_in(&body.email, &body.code)
    })
    .await?;
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
    SessionToken(token): SessionToken,
) -> Result<StatusCode, Error> {
    services.tenancy.authenticate_subscriber(&token).await?;
    services.tenancy.sign_out(&token).await?;
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
    ActorAuth(actor): ActorAuth,
    PathId(id): PathId<AppId>,
    ApiJson(body): ApiJson<RenameRequest>,
) -> Result<Json<ApplicationView>, Error> {
    let app = services.tenancy.rename(&actor, id, &body.name).await?;
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
    ActorAuth(actor): ActorAuth,
    PathId(id): PathId<AppId>,
) -> Result<StatusCode, Error> {
    services.tenancy.unregister(&actor, id).await?;
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
    ActorAuth(actor): ActorAuth,
    PathId(id): PathId<AppId>,
) -> Result<Json<RotatedView>, Error> {
    let rotated = services.tenancy.rotate_secret(&actor, id).await?;
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
    AppAuth(app): AppAuth,
    PathId(id): PathId<UserId>,
) -> Result<Json<UserView>, Error> {
    let user = services.tenancy.set_locked(&app, id, true).await?;
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
    AppAuth(app): AppAuth,
    PathId(id): PathId<UserId>,
) -> Result<Json<UserView>, Error> {
    let user = services.tenancy.set_locked(&app, id, false).await?;
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
           ("context" = String, Path, description = "The object reference, URL-encoded")),
    security(("application" = [])),
    responses(
        (status = 204, description = "Granted"),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn grant_context(
    State(services): State<Arc<Services>>,
    AppAuth(app): AppAuth,
    path: Result<GrantPath, PathRejection>,
) -> Result<StatusCode, Error> {
    let Path((user, context)) = grant_path(path)?;
    set_grant(&services, &app, &user, &context, true).await
}

/// Withdraws a grant; the user leaves the object's conversation at once.
#[utoipa::path(delete, path = "/api/v1/users/{user_id}/contexts/{context}", tag = "users",
    params(("user_id" = UserId, Path, description = "User id"),
           ("context" = String, Path, description = "The object reference, URL-encoded")),
    security(("application" = [])),
    responses(
        (status = 204, description = "Withdrawn"),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn revoke_context(
    State(services): State<Arc<Services>>,
    AppAuth(app): AppAuth,
    path: Result<GrantPath, PathRejection>,
) -> Result<StatusCode, Error> {
    let Path((user, context)) = grant_path(path)?;
    set_grant(&services, &app, &user, &context, false).await
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
) -> Result<StatusCode, Error> {
    let user: UserId = user.parse().map_err(|_| Error::NotFound("user"))?;
    if let Some(left) = services
        .messaging
        .set_grant(app, user, context, granted)
        .await?
    {
        services.calls.member_removed(left, user).await;
    }
    Ok(StatusCode::NO_CONTENT)
}
