//! What the SQLite store's engine errors mean to the rest of Confer: a
//! full or failing disk is [`Unavailable`] (it passes by itself), anything
//! else a [`StoreError::Backend`] for the log. Nothing outside the SQLite
//! store sees an sqlx or rusqlite type.

use super::{StoreError, Unavailable};

/// SQLite's primary result codes that say the machine, not the query,
/// failed (<https://www.sqlite.org/rescode.html>).
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;

/// The unavailability an error of the database or of the operating system
/// stands for, if any.
#[must_use]
pub fn unavailable(err: &sqlx::Error) -> Option<Unavailable> {
    match err {
        sqlx::Error::Database(db) => {
            let code: i32 = db.code()?.parse().ok()?;
            match code & 0xff {
                SQLITE_FULL => Some(Unavailable::DiskFull("SQLITE_FULL")),
                // SQLite maps ENOSPC on a plain write to SQLITE_FULL; on
                // other calls (growing the shared-memory file, truncating)
                // it is an I/O error.
                SQLITE_IOERR => Some(Unavailable::Io(code)),
                _ => None,
            }
        }
        sqlx::Error::Io(io) => Unavailable::of_io(io),
        _ => None,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match unavailable(&err) {
            Some(why) => Self::Unavailable(why),
            None => Self::Backend(Box::new(err)),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(e, _) = &err {
            match e.code {
                rusqlite::ErrorCode::DiskFull => {
                    return Self::Unavailable(Unavailable::DiskFull("SQLITE_FULL"));
                }
                rusqlite::ErrorCode::SystemIoFailure => {
                    return Self::Unavailable(Unavailable::Io(e.extended_code));
                }
                _ => {}
            }
        }
        Self::Backend(Box::new(err))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        Self::Backend(Box::new(err))
    }
}
