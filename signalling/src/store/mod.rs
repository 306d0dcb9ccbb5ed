//! Persistence behind one trait.
//!
//! [`Store`] is what the domain needs, in domain types, with two
//! implementations that pass the same conformance suite: SQLite and
//! PostgreSQL (ids as UUID text, times as BIGINT milliseconds in both).
//! [`pg::PgStore`] serves a cluster: its own migrations, a group-commit
//! writer task per node that numbers each user's events under a lock on
//! the user's head row, so that they commit in order across nodes (`pg`
//! module docs). [`sqlite::SqliteStore`]
//! is the embedded default: one file in the data directory, WAL mode,
//! `synchronous = FULL`, migrations embedded in the binary and applied at
//! start. Its reads and rarer writes use a pool (sqlx); messages and every
//! event go through one group-commit writer on a synchronous connection of
//! its own, which hands each committed event to the caller's
//! [`messaging::OnCommit`] in commit order (`sqlite_writer`).

pub mod audit;
#[cfg(test)]
mod conformance;
pub mod exports;
pub mod files;
pub mod governance;
pub mod hooks;
pub mod marks;
pub mod messaging;
pub mod outbox;
pub mod pg;
mod pg_audit;
mod pg_error;
mod pg_exports;
mod pg_files;
mod pg_governance;
mod pg_hooks;
mod pg_marks;
mod pg_message_writes;
mod pg_messaging;
mod pg_outbox;
#[cfg(test)]
mod pg_tests;
mod pg_threads;
mod pg_writer;
pub mod sqlite;
mod sqlite_audit;
mod sqlite_error;
mod sqlite_exports;
mod sqlite_files;
mod sqlite_governance;
mod sqlite_hooks;
mod sqlite_marks;
mod sqlite_message_writes;
mod sqlite_messaging;
mod sqlite_outbox;
#[cfg(test)]
mod sqlite_tests;
mod sqlite_threads;
mod sqlite_writer;
pub mod threads;
mod write_health;

use async_trait::async_trait;

use crate::auth::TokenKey;
use crate::ids::{AppId, SubscriberId, Timestamp, UserId};

pub use files::FileStore;
pub use messaging::MessageStore;
pub use pg::PgStore;
pub use sqlite::SqliteStore;

/// A store failure: never the client's fault. [`StoreError::Unavailable`]
/// is a fault of the machine (a full disk) that passes by itself; the
/// others are internal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database answered with an error or could not be reached (the
    /// engine's own error, for the log).
    #[error("database error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store cannot write now: the disk is full or failed a write.
    /// The write was not carried out (its transaction rolled back) and
    /// the same write can succeed once the cause is gone.
    #[error("store unavailable: {0}")]
    Unavailable(Unavailable),
    /// Writes have been refused for a while: why and since when (what a
    /// health check reports, e.g. `disk full (SQLITE_FULL) since
    /// 2026-12-02T00:40:12Z`).
    #[error("{0}")]
    WritesRefused(String),
    /// A stored row does not decode (corruption or a bug).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The write does not fit what is stored (a file already attached
    /// …): a stable code for the client and a sentence.
    #[error("{1}")]
    Conflict(crate::error::Code, String),
}

/// Store result.
pub type StoreResult<T> = Result<T, StoreError>;

/// Why the store cannot write now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// No space left on the data directory's file system: `SQLITE_FULL`,
    /// or `ENOSPC` / `EDQUOT` from the operating system (the name is the
    /// one that was seen).
    #[error("disk full ({0})")]
    DiskFull(&'static str),
    /// The file system failed a read or a write (`SQLITE_IOERR`, with
    /// SQLite's extended code).
    #[error("I/O error (SQLITE_IOERR, extended code {0})")]
    Io(i32),
}

/// Linux `errno` values of a full file system or quota.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

impl Unavailable {
    /// `DiskFull` for an I/O error that says the disk or a quota is full.
    #[must_use]
    pub fn of_io(err: &std::io::Error) -> Option<Self> {
        match err.raw_os_error() {
            Some(ENOSPC) => Some(Self::DiskFull("ENOSPC")),
            Some(EDQUOT) => Some(Self::DiskFull("EDQUOT")),
            _ if err.kind() == std::io::ErrorKind::StorageFull => {
                Some(Self::DiskFull("storage full"))
            }
            _ if err.kind() == std::io::ErrorKind::QuotaExceeded => {
                Some(Self::DiskFull("quota exceeded"))
            }
            _ => None,
        }
    }

    /// `DiskFull` if an I/O error is found in `err` or its sources.
    #[must_use]
    pub fn of_error(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut cause = Some(err);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(found) = Self::of_io(io) {
                    return Some(found);
                }
                // A wrapping io::Error's `source` skips what it wraps.
                if let Some(found) = io.get_ref().and_then(|inner| Self::of_error(inner)) {
                    return Some(found);
                }
            }
            cause = e.source();
        }
        None
    }
}

impl StoreError {
    /// Why the store cannot write now, if that is what this error is.
    #[must_use]
    pub fn unavailable(&self) -> Option<&Unavailable> {
        match self {
            Self::Unavailable(why) => Some(why),
            _ => None,
        }
    }
}

/// An e-mail owner; owns applications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscriber {
    /// Server id.
    pub id: SubscriberId,
    /// Normalised e-mail address.
    pub email: String,
    /// When it was created.
    pub created_at: Timestamp,
}

/// A registered application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Application {
    /// Server-generated id.
    pub id: AppId,
    /// Owner.
    pub subscriber_id: SubscriberId,
    /// Free-text display name; no effect on identity.
    pub name: String,
    /// The secret's stored form (see [`crate::auth::StoredSecret`]).
    pub secret_hash: String,
    /// Current user-token key.
    pub token_key: TokenKey,
    /// The key before the last rotation, accepted until `prev_token_key_until`.
    pub prev_token_key: Option<TokenKey>,
    /// End of the rotation grace period.
    pub prev_token_key_until: Option<Timestamp>,
    /// Registration time.
    pub created_at: Timestamp,
    /// Set once unregistered; such an application can do nothing.
    pub unregistered_at: Option<Timestamp>,
}

/// A new application to insert.
#[derive(Clone, Debug)]
pub struct NewApplication {
    /// Server-generated id.
    pub id: AppId,
    /// Display name.
    pub name: String,
    /// The secret's digest ([`crate::auth::secret_digest`]).
    pub secret_hash: String,
    /// User-token key.
    pub token_key: TokenKey,
}

/// A collaboration user of one application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Server id.
    pub id: UserId,
    /// The application it belongs to.
    pub app_id: AppId,
    /// The application's own id for this user.
    pub external_id: String,
    /// Display name, as last vouched for by the application.
    pub name: String,
    /// E-mail, if the application shares it.
    pub email: Option<String>,
    /// Locked users cannot authenticate.
    pub locked: bool,
    /// First time the application vouched for the user.
    pub created_at: Timestamp,
}

/// What a mailed code is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodePurpose {
    /// Registering an application.
    Register,
    /// A subscriber signing in.
    SignIn,
}

impl CodePurpose {
    /// Stored form.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::SignIn => "sign_in",
        }
    }
}

/// A code waiting for confirmation.
#[derive(Clone, Debug)]
pub struct PendingCode {
    /// What it is for.
    pub purpose: CodePurpose,
    /// Normalised e-mail it was sent to.
    pub email: String,
    /// Digest of (purpose, e-mail, code).
    pub code_hash: String,
    /// End of validity.
    pub expires_at: Timestamp,
    /// Confirmations allowed.
    pub max_tries: u32,
    /// When it was sent.
    pub created_at: Timestamp,
}

/// A signed-in subscriber's session.
#[derive(Clone, Debug)]
pub struct SubscriberSession {
    /// Digest of the opaque token.
    pub token_hash: String,
    /// Who signed in.
    pub subscriber_id: SubscriberId,
    /// End of validity.
    pub expires_at: Timestamp,
    /// When it was created.
    pub created_at: Timestamp,
}

/// Everything the server persists.
#[async_trait]
pub trait Store:
    audit::AuditStore
    + exports::ExportStore
    + governance::GovernanceStore
    + hooks::HookStore
    + outbox::OutboxStore
    + Send
    + Sync
    + std::fmt::Debug
{
    /// A trivial query and the smallest write, for health checks: an
    /// error when either fails, [`StoreError::WritesRefused`] while
    /// writes are refused (a full disk).
    async fn ping(&self) -> StoreResult<()>;

    /// Stores a code, replacing any earlier one for the same purpose and
    /// e-mail.
    async fn put_code(&self, code: &PendingCode) -> StoreResult<()>;

    /// Spends one try of the live code for (purpose, e-mail) and returns its
    /// digest, or `None` when there is no usable code (none, expired, used or
    /// out of tries). Atomic: concurrent tries each spend one.
    async fn spend_code_try(
        &self,
        purpose: CodePurpose,
        email: &str,
        now: Timestamp,
    ) -> StoreResult<Option<String>>;

    /// Marks the code used; false if another request used it first.
    async fn mark_code_used(&self, purpose: CodePurpose, email: &str) -> StoreResult<bool>;

    /// Creates the subscriber for `email` if needed and the application, in
    /// one transaction.
    async fn register_application(
        &self,
        email: &str,
        new_subscriber: SubscriberId,
        app: &NewApplication,
        now: Timestamp,
    ) -> StoreResult<(Subscriber, Application)>;

    /// The subscriber with this e-mail.
    async fn subscriber_by_email(&self, email: &str) -> StoreResult<Option<Subscriber>>;

    /// The subscriber with this id.
    async fn subscriber(&self, id: SubscriberId) -> StoreResult<Option<Subscriber>>;

    /// All subscribers, oldest first.
    async fn subscribers(&self) -> StoreResult<Vec<Subscriber>>;

    /// Stores a session.
    async fn put_session(&self, session: &SubscriberSession) -> StoreResult<()>;

    /// The session with this token digest.
    async fn session(&self, token_hash: &str) -> StoreResult<Option<SubscriberSession>>;

    /// Deletes a session (sign-out).
    async fn delete_session(&self, token_hash: &str) -> StoreResult<()>;

    /// The application with this id, registered or not.
    async fn application(&self, id: AppId) -> StoreResult<Option<Application>>;

    /// Applications, of one subscriber or of all, oldest first.
    async fn applications(&self, owner: Option<SubscriberId>) -> StoreResult<Vec<Application>>;

    /// Renames a registered application; false if there is none.
    async fn rename_application(&self, id: AppId, name: &str) -> StoreResult<bool>;

    /// Replaces the secret hash and token key; the old key is kept as the
    /// previous one until `prev_until`. False if there is no registered
    /// application.
    async fn rotate_secret(
        &self,
        id: AppId,
        secret_hash: &str,
        token_key: &TokenKey,
        prev_until: Timestamp,
    ) -> StoreResult<bool>;

    /// Replaces the stored form of the secret by another of the same
    /// secret (an argon2 hash by its digest), only if it is still `old`:
    /// false when a rotation came first.
    async fn replace_secret_hash(&self, id: AppId, old: &str, new: &str) -> StoreResult<bool>;

    /// Marks a registered application unregistered; false if there is none.
    async fn unregister_application(&self, id: AppId, now: Timestamp) -> StoreResult<bool>;

    /// Creates the user for (app, external id), or updates its name and
    /// e-mail; returns it either way. Safe under concurrent calls.
    async fn provision_user(
        &self,
        app_id: AppId,
        new_id: UserId,
        external_id: &str,
        name: &str,
        email: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<User>;

    /// A user of an application.
    async fn user(&self, app_id: AppId, id: UserId) -> StoreResult<Option<User>>;

    /// The users of an application among `ids` (unknown ids are left out).
    async fn users(&self, app_id: AppId, ids: &[UserId]) -> StoreResult<Vec<User>>;

    /// A user of an application by the application's own id.
    async fn user_by_external_id(
        &self,
        app_id: AppId,
        external_id: &str,
    ) -> StoreResult<Option<User>>;

    /// Locks or unlocks a user; the updated user, or `None` if there is none.
    async fn set_user_locked(
        &self,
        app_id: AppId,
        id: UserId,
        locked: bool,
    ) -> StoreResult<Option<User>>;

    /// Every locked user, of every application.
    async fn locked_users(&self) -> StoreResult<Vec<UserId>>;
}

#[cfg(test)]
mod tests {
    use super::Unavailable;

    #[test]
    fn a_full_disk_or_quota_is_told_from_other_io_errors() {
        let os = std::io::Error::from_raw_os_error;
        assert_eq!(
            Unavailable::of_io(&os(28)),
            Some(Unavailable::DiskFull("ENOSPC"))
        );
        assert_eq!(
            Unavailable::of_io(&os(122)),
            Some(Unavailable::DiskFull("EDQUOT"))
        );
        assert_eq!(Unavailable::of_io(&os(13)), None);
        // Found below a wrapper, as lettre's file transport returns it.
        let wrapped = std::io::Error::other(os(28));
        assert_eq!(
            Unavailable::of_error(&wrapped),
            Some(Unavailable::DiskFull("ENOSPC"))
        );
    }
}
