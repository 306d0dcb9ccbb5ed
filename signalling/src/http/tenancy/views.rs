//! What the tenancy routes take and answer (their OpenAPI schemas).

use super::*;

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
