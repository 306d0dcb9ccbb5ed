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

mod applications;
mod credentials;
mod registration;

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
    /// Told of each user provisioned for the first time (webhooks).
    messaging: Option<Arc<crate::messaging::Messaging>>,
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
            messaging: None,
        }
    }

    /// Tells `messaging` of each user provisioned for the first time.
    #[must_use]
    pub fn with_messaging(mut self, messaging: Arc<crate::messaging::Messaging>) -> Self {
        self.messaging = Some(messaging);
        self
    }

    /// A user was just provisioned with the id `fresh`: if it is new (it
    /// kept that id), the application's webhooks hear of it.
    async fn provisioned(&self, user: &User, fresh: UserId) {
        if user.id == fresh
            && let Some(messaging) = &self.messaging
            && let Err(e) = messaging.user_provisioned(user).await
        {
            tracing::warn!(user = %user.id, error = %e, "writing user.provisioned failed");
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
