//! Tenancy: subscribers register applications by e-mail code, applications
//! vouch for their users, users get tokens.
//!
//! Plain domain logic over [`Store`], [`Mailer`] and [`Clock`]; the HTTP
//! handlers only extract input, call a method here and map the result.
//! Errors are [`Error`]s because they are what the client is told,
//! whichever transport carries them.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{self, AuthError, StoredSecret, TokenKey, UserClaims};
use crate::config::SignallingConfig;
use crate::error::Error;
use crate::ids::{AppId, Clock, SubscriberId, Timestamp, UserId};
use crate::mail::{self, CodeMail, Mailer};
use crate::store::{
    Application, CodePurpose, NewApplication, PendingCode, Store, Subscriber, SubscriberSession,
    User,
};

/// Longest application or user display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest external user id, in characters.
pub const MAX_EXTERNAL_ID_CHARS: usize = 256;
/// argon2 checks running at a time, for the secrets earlier versions
/// stored as argon2 hashes (each is replaced by a digest at its first
/// successful use). Each takes about 19 MiB and 17 ms of a core;
/// unbounded, a burst of requests held 600 MB. Waiting requests queue here.
static ARGON2_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Who is acting on an application.
#[derive(Debug, Clone)]
pub enum Actor {
    /// The application itself (HTTP Basic with its id and secret).
    Application(Application),
    /// Its owner, signed in with an e-mail code.
    Subscriber(Subscriber),
}

/// A freshly registered application; the secret is shown this once.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The new application.
    pub application: Application,
    /// Its secret, in clear.
    pub app_secret: String,
}

/// A new secret after a rotation.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The new secret, in clear.
    pub app_secret: String,
    /// Until when tokens signed with the previous key are still accepted.
    pub previous_tokens_valid_until: Timestamp,
}

/// A subscriber session token, shown once.
#[derive(Debug, Clone)]
pub struct SessionIssued {
    /// The opaque bearer token.
    pub token: String,
    /// Who it is for.
    pub subscriber: Subscriber,
    /// End of validity.
    pub expires_at: Timestamp,
}

/// A user token issued by the server.
#[derive(Debug, Clone)]
pub struct TokenIssued {
    /// The JWT.
    pub token: String,
    /// The user it is for (provisioned if new).
    pub user: User,
    /// End of validity.
    pub expires_at: Timestamp,
}

/// The tenancy service.
#[derive(Debug)]
pub struct Tenancy {
    store: Arc<dyn Store>,
    mailer: Arc<dyn Mailer>,
    clock: Arc<dyn Clock>,
    config: Arc<SignallingConfig>,
}

impl Tenancy {
    /// A service over these backends.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        mailer: Arc<dyn Mailer>,
        clock: Arc<dyn Clock>,
        config: Arc<SignallingConfig>,
    ) -> Self {
        Self {
            store,
            mailer,
            clock,
            config,
        }
    }

    /// Mails a registration code to `email`.
    ///
    /// # Errors
    /// `invalid_request` for a malformed e-mail or name; `internal` if the
    /// mail cannot go out.
    pub async fn request_registration(&self, email: &str, app_name: &str) -> Result<(), Error> {
        let email = normalize_email(email)?;
        check_name("app_name", app_name)?;
        self.send_code(
            CodePurpose::Register,
            &email,
            CodeMail::Register { app_name },
        )
        .await
    }

    /// Checks the code and registers a new application for the subscriber
    /// of `email` (created on first registration).
    ///
    /// # Errors
    /// `access_denied` for a wrong e-mail or code, an expired, used or
    /// exhausted code, without saying which; `invalid_request` for malformed
    /// input.
    pub async fn confirm_registration(
        &self,
        email: &str,
        app_name: &str,
        code: &str,
    ) -> Result<Registered, Error> {
        let email = normalize_email(email)?;
        check_name("app_name", app_name)?;
        check_code_format(code)?;
        self.spend_code(CodePurpose::Register, &email, code).await?;

        let id = AppId::random();
        let app_secret = auth::generate_secret();
        let new_app = NewApplication {
            id,
            name: app_name.to_owned(),
            secret_hash: auth::secret_digest(&app_secret),
            token_key: TokenKey::derive(id, &app_secret),
        };
        let (_, application) = self
            .store
            .register_application(&email, SubscriberId::random(), &new_app, self.clock.now())
            .await?;
        tracing::info!(app_id = %application.id, subscriber_id = %application.subscriber_id, "application registered");
        Ok(Registered {
            application,
            app_secret,
        })
    }

    /// Mails a sign-in code if a subscriber owns `email`; says nothing
    /// either way, so that addresses cannot be probed.
    ///
    /// # Errors
    /// `invalid_request` for a malformed e-mail; `internal` on failure.
    pub async fn request_sign_in(&self, email: &str) -> Result<(), Error> {
        let email = normalize_email(email)?;
        if self.store.subscriber_by_email(&email).await?.is_some() {
            self.send_code(CodePurpose::SignIn, &email, CodeMail::SignIn)
                .await?;
        }
        Ok(())
    }

    /// Checks a sign-in code and opens a subscriber session.
    ///
    /// # Errors
    /// `access_denied` as for registration.
    pub async fn confirm_sign_in(&self, email: &str, code: &str) -> Result<SessionIssued, Error> {
        let email = normalize_email(email)?;
        check_code_format(code)?;
        self.spend_code(CodePurpose::SignIn, &email, code).await?;
        let subscriber = self
            .store
            .subscriber_by_email(&email)
            .await?
            .ok_or(Error::AccessDenied)?;
        let token = auth::generate_opaque_token();
        let now = self.clock.now();
        let expires_at = now.plus(Duration::from_secs(
            self.config.subscribers.session_ttl_secs,
        ));
        self.store
            .put_session(&SubscriberSession {
                token_hash: auth::digest(&[&token]),
                subscriber_id: subscriber.id,
                expires_at,
                created_at: now,
            })
            .await?;
        Ok(SessionIssued {
            token,
            subscriber,
            expires_at,
        })
    }

    /// Ends a subscriber session.
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn sign_out(&self, token: &str) -> Result<(), Error> {
        self.store.delete_session(&auth::digest(&[token])).await?;
        Ok(())
    }

    /// The subscriber whose session token this is.
    ///
    /// # Errors
    /// `unauthorized` for an unknown or expired session.
    pub async fn authenticate_subscriber(&self, token: &str) -> Result<Subscriber, Error> {
        const BAD: Error = Error::Unauthorized("invalid or expired subscriber session");
        let session = self
            .store
            .session(&auth::digest(&[token]))
            .await?
            .ok_or(BAD)?;
        if session.expires_at <= self.clock.now() {
            return Err(BAD);
        }
        self.store
            .subscriber(session.subscriber_id)
            .await?
            .ok_or(BAD)
    }

    /// The application whose id and secret these are.
    ///
    /// # Errors
    /// `unauthorized` for a wrong id or secret; `application_unregistered`
    /// once the right secret of an unregistered application is given.
    pub async fn authenticate_application(
        &self,
        app_id: &str,
        secret: &str,
    ) -> Result<Application, Error> {
        const BAD: Error = Error::Unauthorized("invalid application credentials");
        let id: AppId = app_id.parse().map_err(|_| BAD)?;
        let app = self.store.application(id).await?.ok_or(BAD)?;
        if !self.secret_matches(&app, secret).await? {
            return Err(BAD);
        }
        if app.unregistered_at.is_some() {
            return Err(Error::ApplicationUnregistered);
        }
        Ok(app)
    }

    /// The application and user a user token speaks for, provisioning the
    /// user the first time its application vouches for it.
    ///
    /// # Errors
    /// `unauthorized` for a bad, expired or foreign token;
    /// `application_unregistered`; `user_locked`.
    pub async fn authenticate_user(&self, token: &str) -> Result<(Application, User), Error> {
        self.authenticate_user_with_contexts(token)
            .await
            .map(|(app, user, _, _)| (app, user))
    }

    /// As [`Self::authenticate_user`], also returning the token's `ctx`
    /// claim (the business objects the application lets the user see) and
    /// the moment the token stops being accepted (`exp` plus the leeway).
    ///
    /// # Errors
    /// As [`Self::authenticate_user`].
    pub async fn authenticate_user_with_contexts(
        &self,
        token: &str,
    ) -> Result<(Application, User, Vec<String>, Timestamp), Error> {
        const BAD: Error = Error::Unauthorized("invalid user token");
        let app_id = auth::unverified_issuer(token).ok_or(BAD)?;
        let app = self.store.application(app_id).await?.ok_or(BAD)?;
        let now = self.clock.now();
        let (claims, key_until) = self.verify_user_token(&app, token, now)?;
        if app.unregistered_at.is_some() {
            return Err(Error::ApplicationUnregistered);
        }
        if claims.iss != app.id.to_string() {
            return Err(BAD);
        }
        let email = claims
            .email
            .as_deref()
            .map(normalize_email)
            .transpose()
            .map_err(|_| {
                Error::Unauthorized("invalid user token: email claim is not an e-mail address")
            })?;
        let user = match self.store.user_by_external_id(app.id, &claims.sub).await? {
            Some(user) if user.name == claims.name && (email.is_none() || user.email == email) => {
                user
            }
            _ => {
                check_user_fields(&claims.sub, &claims.name, None).map_err(|_| {
                    Error::Unauthorized("invalid user token: sub or name not acceptable")
                })?;
                self.store
                    .provision_user(
                        app.id,
                        UserId::random(),
                        &claims.sub,
                        &claims.name,
                        email.as_deref(),
                        now,
                    )
                    .await?
            }
        };
        if user.locked {
            return Err(Error::UserLocked);
        }
        let mut until = Timestamp::from_secs(
            claims
                .exp
                .saturating_add(i64::try_from(self.config.tokens.leeway_secs).unwrap_or(i64::MAX)),
        );
        if let Some(key_until) = key_until {
            until = until.min(key_until);
        }
        Ok((app, user, claims.ctx, until))
    }

    /// Issues a user token, provisioning the user if the application
    /// vouches for it for the first time.
    ///
    /// # Errors
    /// `invalid_request` for bad fields; `user_locked`.
    pub async fn issue_token(
        &self,
        app: &Application,
        external_id: &str,
        name: &str,
        email: Option<&str>,
        contexts: &[String],
    ) -> Result<TokenIssued, Error> {
        check_user_fields(external_id, name, email)?;
        if contexts.len() > 1000
            || contexts
                .iter()
                .any(|c| c.is_empty() || c.chars().count() > 256)
        {
            return Err(Error::InvalidRequest(
                "contexts: at most 1000 non-empty strings of up to 256 characters".to_owned(),
            ));
        }
        let email = email.map(normalize_email).transpose()?;
        let now = self.clock.now();
        let user = self
            .store
            .provision_user(
                app.id,
                UserId::random(),
                external_id,
                name,
                email.as_deref(),
                now,
            )
            .await?;
        if user.locked {
            return Err(Error::UserLocked);
        }
        let expires_at = Timestamp::from_secs(now.as_secs())
            .plus(Duration::from_secs(self.config.tokens.ttl_secs));
        let claims = UserClaims {
            iss: app.id.to_string(),
            aud: auth::TOKEN_AUDIENCE.to_owned(),
            sub: user.external_id.clone(),
            name: user.name.clone(),
            email: user.email.clone(),
            iat: now.as_secs(),
            exp: expires_at.as_secs(),
            ctx: contexts.to_vec(),
        };
        let token = auth::mint_token(&app.token_key, &claims).map_err(Error::internal)?;
        Ok(TokenIssued {
            token,
            user,
            expires_at,
        })
    }

    /// The demo application (made on first use): owned by the subscriber
    /// `demo@confer.invalid`, named "Confer demo". Its secret is made and
    /// forgotten: only this server issues its tokens.
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn demo_application(&self) -> Result<Application, Error> {
        const EMAIL: &str = "demo@confer.invalid";
        if let Some(owner) = self.store.subscriber_by_email(EMAIL).await?
            && let Some(app) = self
                .store
                .applications(Some(owner.id))
                .await?
                .into_iter()
                .find(|a| a.unregistered_at.is_none())
        {
            return Ok(app);
        }
        let id = AppId::random();
        let secret = auth::generate_secret();
        let new_app = NewApplication {
            id,
            name: "Confer demo".to_owned(),
            secret_hash: auth::secret_digest(&secret),
            token_key: TokenKey::derive(id, &secret),
        };
        let (_, app) = self
            .store
            .register_application(EMAIL, SubscriberId::random(), &new_app, self.clock.now())
            .await?;
        tracing::info!(app_id = %app.id, "demo application created");
        Ok(app)
    }

    /// The applications an actor may see: its subscriber's for a
    /// subscriber, itself for an application.
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn applications(&self, actor: &Actor) -> Result<Vec<Application>, Error> {
        match actor {
            Actor::Application(app) => Ok(vec![app.clone()]),
            Actor::Subscriber(s) => Ok(self.store.applications(Some(s.id)).await?),
        }
    }

    /// One application the actor may see.
    ///
    /// # Errors
    /// `not_found` for an application of someone else, as for none at all.
    pub async fn application(&self, actor: &Actor, id: AppId) -> Result<Application, Error> {
        const NONE: Error = Error::NotFound("application");
        match actor {
            Actor::Application(app) if app.id == id => Ok(app.clone()),
            Actor::Application(_) => Err(NONE),
            Actor::Subscriber(s) => {
                let app = self.store.application(id).await?.ok_or(NONE)?;
                if app.subscriber_id == s.id {
                    Ok(app)
                } else {
                    Err(NONE)
                }
            }
        }
    }

    /// Renames an application.
    ///
    /// # Errors
    /// `not_found`, `application_unregistered`, `invalid_request`.
    pub async fn rename(&self, actor: &Actor, id: AppId, name: &str) -> Result<Application, Error> {
        check_name("name", name)?;
        let app = self.registered(actor, id).await?;
        if !self.store.rename_application(app.id, name).await? {
            return Err(Error::ApplicationUnregistered);
        }
        Ok(Application {
            name: name.to_owned(),
            ..app
        })
    }

    /// Replaces an application's secret. HTTP Basic with the old secret
    /// stops working at once; user tokens signed with the old key keep
    /// working for `tokens.rotation_grace_secs`.
    ///
    /// # Errors
    /// `not_found`, `application_unregistered`.
    pub async fn rotate_secret(&self, actor: &Actor, id: AppId) -> Result<Rotated, Error> {
        let app = self.registered(actor, id).await?;
        let app_secret = auth::generate_secret();
        let secret_hash = auth::secret_digest(&app_secret);
        let until = self
            .clock
            .now()
            .plus(Duration::from_secs(self.config.tokens.rotation_grace_secs));
        let key = TokenKey::derive(app.id, &app_secret);
        if !self
            .store
            .rotate_secret(app.id, &secret_hash, &key, until)
            .await?
        {
            return Err(Error::ApplicationUnregistered);
        }
        tracing::info!(app_id = %app.id, "application secret rotated");
        Ok(Rotated {
            app_secret,
            previous_tokens_valid_until: until,
        })
    }

    /// Unregisters an application: its credentials, its users' tokens and
    /// its users' connections stop working at once. Its data stays in the
    /// store, unreachable through the API.
    ///
    /// # Errors
    /// `not_found`, `application_unregistered`.
    pub async fn unregister(&self, actor: &Actor, id: AppId) -> Result<(), Error> {
        let app = self.registered(actor, id).await?;
        if !self
            .store
            .unregister_application(app.id, self.clock.now())
            .await?
        {
            return Err(Error::ApplicationUnregistered);
        }
        tracing::info!(app_id = %app.id, "application unregistered");
        Ok(())
    }

    /// A user of `app` by server id.
    ///
    /// # Errors
    /// `not_found`, also for a user of another application.
    pub async fn user(&self, app: &Application, id: UserId) -> Result<User, Error> {
        self.store
            .user(app.id, id)
            .await?
            .ok_or(Error::NotFound("user"))
    }

    /// A user of `app` by the application's own id.
    ///
    /// # Errors
    /// `not_found`.
    pub async fn user_by_external_id(
        &self,
        app: &Application,
        external_id: &str,
    ) -> Result<User, Error> {
        self.store
            .user_by_external_id(app.id, external_id)
            .await?
            .ok_or(Error::NotFound("user"))
    }

    /// Locks or unlocks a user of `app`.
    ///
    /// # Errors
    /// `not_found`.
    pub async fn set_locked(
        &self,
        app: &Application,
        id: UserId,
        locked: bool,
    ) -> Result<User, Error> {
        let user = self
            .store
            .set_user_locked(app.id, id, locked)
            .await?
            .ok_or(Error::NotFound("user"))?;
        tracing::info!(app_id = %app.id, user_id = %id, locked, "user lock changed");
        Ok(user)
    }

    async fn registered(&self, actor: &Actor, id: AppId) -> Result<Application, Error> {
        let app = self.application(actor, id).await?;
        if app.unregistered_at.is_some() {
            return Err(Error::ApplicationUnregistered);
        }
        Ok(app)
    }

    async fn send_code(
        &self,
        purpose: CodePurpose,
        email: &str,
        what: CodeMail<'_>,
    ) -> Result<(), Error> {
        let code = auth::generate_code();
        let now = self.clock.now();
        let codes = &self.config.codes;
        let message = mail::code_message(
            &self.config.mail.from,
            email,
            &code,
            what,
            codes.ttl_secs / 60,
        )?;
        self.store
            .put_code(&PendingCode {
                purpose,
                email: email.to_owned(),
                code_hash: auth::digest(&[purpose.as_str(), email, &code]),
                expires_at: now.plus(codes.ttl()),
                max_tries: codes.max_tries,
                created_at: now,
            })
            .await?;
        self.mailer.send(message).await?;
        Ok(())
    }

    async fn spend_code(&self, purpose: CodePurpose, email: &str, code: &str) -> Result<(), Error> {
        let stored = self
            .store
            .spend_code_try(purpose, email, self.clock.now())
            .await?
            .ok_or(Error::AccessDenied)?;
        let given = auth::digest(&[purpose.as_str(), email, code]);
        if !auth::digests_equal(&stored, &given) {
            return Err(Error::AccessDenied);
        }
        if !self.store.mark_code_used(purpose, email).await? {
            return Err(Error::AccessDenied);
        }
        Ok(())
    }

    /// The token's claims, and — when it was signed with the key of the
    /// previous secret — the end of that key's grace period.
    fn verify_user_token(
        &self,
        app: &Application,
        token: &str,
        now: Timestamp,
    ) -> Result<(UserClaims, Option<Timestamp>), Error> {
        let tokens = &self.config.tokens;
        let verify = |key: &TokenKey| {
            auth::verify_token(token, key, now, tokens.max_ttl_secs, tokens.leeway_secs)
        };
        let result = match verify(&app.token_key) {
            Err(AuthError::Invalid) => match (&app.prev_token_key, app.prev_token_key_until) {
                (Some(prev), Some(until)) if now < until => verify(prev).map(|c| (c, Some(until))),
                _ => Err(AuthError::Invalid),
            },
            other => other.map(|c| (c, None)),
        };
        result.map_err(|e| match e {
            AuthError::Expired => Error::Unauthorized("user token expired"),
            AuthError::BadLifetime => Error::Unauthorized("user token lifetime not acceptable"),
            _ => Error::Unauthorized("invalid user token"),
        })
    }

    /// Whether `secret` is the application's: a digest compared in
    /// constant time; an argon2 hash of an earlier version is checked (on a
    /// blocking thread, a few at a time) and, when it matches, replaced by
    /// the digest, unless the secret was rotated meanwhile.
    async fn secret_matches(&self, app: &Application, secret: &str) -> Result<bool, Error> {
        match StoredSecret::parse(&app.secret_hash) {
            StoredSecret::Digest(stored) => Ok(auth::secret_matches_digest(secret, stored)),
            StoredSecret::Argon2(phc) => {
                let _slot = ARGON2_SLOTS.acquire().await.map_err(Error::internal)?;
                let (given, phc) = (secret.to_owned(), phc.to_owned());
                let ok =
                    tokio::task::spawn_blocking(move || auth::verify_argon2_secret(&given, &phc))
                        .await
                        .map_err(Error::internal)?;
                if ok {
                    let upgraded = self
                        .store
                        .replace_secret_hash(app.id, &app.secret_hash, &auth::secret_digest(secret))
                        .await?;
                    if upgraded {
                        tracing::info!(app_id = %app.id, "application secret hash replaced by a digest");
                    }
                }
                Ok(ok)
            }
            StoredSecret::Unknown => Ok(false),
        }
    }
}

/// Checks and normalises an e-mail address (trimmed, lower-cased).
///
/// # Errors
/// `invalid_request` naming the problem.
pub fn normalize_email(email: &str) -> Result<String, Error> {
    let email = email.trim();
    if email.len() > 254 {
        return Err(Error::InvalidRequest(
            "email: longer than 254 bytes".to_owned(),
        ));
    }
    email
        .parse::<lettre::Address>()
        .map(|a| a.to_string().to_lowercase())
        .map_err(|_| Error::InvalidRequest(format!("email: not a valid e-mail address: {email:?}")))
}

fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), Error> {
    if value.trim().is_empty() {
        return Err(Error::InvalidRequest(format!("{field}: must not be empty")));
    }
    if value.chars().count() > max_chars {
        return Err(Error::InvalidRequest(format!(
            "{field}: longer than {max_chars} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidRequest(format!(
            "{field}: must not contain control characters"
        )));
    }
    Ok(())
}

fn check_name(field: &str, name: &str) -> Result<(), Error> {
    check_text(field, name, MAX_NAME_CHARS)
}

fn check_user_fields(external_id: &str, name: &str, email: Option<&str>) -> Result<(), Error> {
    check_text("external_id", external_id, MAX_EXTERNAL_ID_CHARS)?;
    check_name("name", name)?;
    if let Some(email) = email {
        normalize_email(email)?;
    }
    Ok(())
}

fn check_code_format(code: &str) -> Result<(), Error> {
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Error::InvalidRequest("code: must be 6 digits".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_normalised() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "a b@example.com",
            "ann@@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_take_any_printable_text() {
        check_name("n", "Склад \"Север\" <&> 🚚").unwrap();
        assert!(check_name("n", "  ").is_err());
        assert!(check_name("n", "a\nb").is_err());
        assert!(check_name("n", &"я".repeat(MAX_NAME_CHARS + 1)).is_err());
    }
}
