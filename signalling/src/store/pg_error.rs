//! What PostgreSQL's errors mean to the rest of Confer: a full disk is
//! [`Unavailable`] (it passes by itself), anything else a
//! [`StoreError::Backend`] for the log.
//!
//! The `From<sqlx::Error>` conversion of [`StoreError`] reads SQLite's
//! result codes, so the PostgreSQL store never converts with a bare `?`:
//! every sqlx result goes through [`PgResult::pg`] first.

use super::{StoreError, StoreResult, Unavailable};

/// SQLSTATE of a full disk (class 53, insufficient resources).
const DISK_FULL: &str = "53100";
/// SQLSTATE of a deadlock the server broke by failing one transaction.
const DEADLOCK: &str = "40P01";
/// SQLSTATE of a serialization failure.
const SERIALIZATION: &str = "40001";
/// SQLSTATE of a lock not taken within `lock_timeout` (if one is set).
const LOCK_TIMEOUT: &str = "55P03";

/// The unavailability a PostgreSQL error stands for, if any.
#[must_use]
pub(super) fn unavailable(err: &sqlx::Error) -> Option<Unavailable> {
    match err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(DISK_FULL) => {
            Some(Unavailable::DiskFull("53100 disk_full"))
        }
        _ => None,
    }
}

/// The store error for a PostgreSQL error.
#[must_use]
pub(super) fn store_error(err: sqlx::Error) -> StoreError {
    match unavailable(&err) {
        Some(why) => StoreError::Unavailable(why),
        None => StoreError::Backend(Box::new(err)),
    }
}

/// Whether a failed transaction may succeed when made again as it was:
/// the server broke a deadlock or a serialization conflict by failing it
/// (or gave up waiting for a lock),
/// or the connection was lost or ended by the server (the transaction
/// then rolled back).
#[must_use]
pub(super) fn retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(code.as_ref(), DEADLOCK | SERIALIZATION | LOCK_TIMEOUT)
                // Connection exceptions; the server shutting down or
                // ending the session (57P01..57P05).
                || code.starts_with("08")
                || code.starts_with("57P")
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Whether the connection that met `err` is still fit to use: the server
/// failed the transaction (a deadlock, a constraint) and said so, and
/// ended nothing else. After a lost or ended session, or an error of
/// the client's, it is not.
#[must_use]
pub(super) fn connection_usable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| !code.starts_with("08") && !code.starts_with("57P")),
        _ => false,
    }
}

/// [`store_error`] on a result.
pub(super) trait PgResult<T> {
    /// The result with PostgreSQL's error made a [`StoreError`].
    fn pg(self) -> StoreResult<T>;
}

impl<T> PgResult<T> for Result<T, sqlx::Error> {
    fn pg(self) -> StoreResult<T> {
        self.map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_full_disk_is_unavailable() {
        assert!(unavailable(&sqlx::Error::RowNotFound).is_none());
        assert!(matches!(
            store_error(sqlx::Error::RowNotFound),
            StoreError::Backend(_)
        ));
        assert!(!retryable(&sqlx::Error::RowNotFound));
        assert!(retryable(&sqlx::Error::Io(std::io::Error::other("reset"))));
    }
}
