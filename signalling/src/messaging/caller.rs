//! Who is asking: a user of an application (with the business objects its
//! token names) or the application itself, acting as its bot.

use crate::ids::UserId;
use crate::store::messaging::Author;
use crate::store::{Application, User};

/// Who is acting.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The application everything happens in.
    pub app: Application,
    /// A user, or the application itself (its bot).
    pub who: Who,
}

/// The acting party within an application.
#[derive(Debug, Clone)]
pub enum Who {
    /// A user, with the contexts (business objects) its token says it may see.
    User {
        /// The user.
        user: User,
        /// Object references from the token's `ctx` claim.
        contexts: Vec<String>,
    },
    /// The application's bot.
    App,
}

/// The participant id of an application's bot: the application's own id.
#[must_use]
pub fn bot_id(app: crate::ids::AppId) -> UserId {
    UserId(app.0)
}

impl Caller {
    /// Whose event log and membership this caller uses: the user, or the
    /// application's bot.
    #[must_use]
    pub fn participant(&self) -> UserId {
        match &self.who {
            Who::User { user, .. } => user.id,
            Who::App => bot_id(self.app.id),
        }
    }

    pub(super) fn author(&self) -> Author {
        match &self.who {
            Who::User { user, .. } => Author::User(user.id),
            Who::App => Author::App,
        }
    }

    pub(super) fn user_id(&self) -> Option<UserId> {
        match &self.who {
            Who::User { user, .. } => Some(user.id),
            Who::App => None,
        }
    }

    /// The objects the caller's token claims; `None` for the application,
    /// which sees every object.
    pub(super) fn contexts(&self) -> Option<&[String]> {
        match &self.who {
            Who::User { contexts, .. } => Some(contexts),
            Who::App => None,
        }
    }
}

/// A user of a fresh application (unit tests).
#[cfg(test)]
pub(crate) fn test_user() -> Caller {
    use crate::auth::TokenKey;
    use crate::ids::{AppId, SubscriberId, Timestamp};
    let app = AppId::random();
    Caller {
        app: crate::store::Application {
            id: app,
            subscriber_id: SubscriberId::random(),
            name: "test".to_owned(),
            secret_hash: String::new(),
            token_key: TokenKey::derive(app, "s"),
            prev_token_key: None,
            prev_token_key_until: None,
            created_at: Timestamp(0),
            unregistered_at: None,
        },
        who: Who::User {
            user: crate::store::User {
                id: UserId::random(),
                app_id: app,
                external_id: "u".to_owned(),
                name: "U".to_owned(),
                email: None,
                locked: false,
                created_at: Timestamp(0),
            },
            contexts: Vec::new(),
        },
    }
}
