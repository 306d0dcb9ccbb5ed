//! The embedded store: SQLite in WAL mode.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use super::sqlite_writer::{Durability, WriterConnection};
use super::write_health::WriteHealth;
use super::{
    Application, CodePurpose, NewApplication, PendingCode, Store, StoreError, StoreResult,
    Subscriber, SubscriberSession, User,
};
use crate::auth::TokenKey;
use crate::ids::{AppId, SubscriberId, Timestamp, UserId};

const APPLICATION_COLUMNS: &str = "id, subscriber_id, name, secret_hash, token_key, \
     prev_token_key, prev_token_key_until, created_at, unregistered_at";
const USER_COLUMNS: &str = "id, app_id, external_id, name, email, locked, created_at";

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Messages to the group-commit writer (bounded: a full queue makes
    /// senders wait for their acknowledgement, nothing is dropped).
    poster: tokio::sync::mpsc::Sender<super::sqlite_writer::PostJob>,
    /// Whether writes go through, as the last ones found.
    writes: Arc<WriteHealth>,
    /// The directory of a throwaway database, deleted with the last handle.
    _scratch: Option<Arc<tempfile::TempDir>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    ///
    /// # Errors
    /// [`StoreError`] if the file cannot be opened or migrated.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with(path, Durability::Full, None).await
    }

    /// Opens the database at `path` with commits made `durability`;
    /// `scratch` is the directory to delete with the last handle.
    async fn open_with(
        path: &Path,
        durability: Durability,
        scratch: Option<tempfile::TempDir>,
    ) -> StoreResult<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged, also
            // across a power cut; the cost is one fsync per transaction.
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Off => SqliteSynchronous::Off,
            })
            // No checkpoint inside a commit (one took 265 ms and held up
            // every message behind it): the writer runs passive
            // checkpoints in the background instead.
            .pragma("wal_autocheckpoint", "0")
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .after_release(|conn, _| Box::pin(super::sqlite_writer::consistent(conn)))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let writer = WriterConnection::open(path, durability)?;
        let (poster, writes) = super::sqlite_writer::start(writer)?;
        Ok(Self {
            pool,
            poster,
            writes,
            _scratch: scratch.map(Arc::new),
        })
    }

    /// The message writer's queue.
    pub(super) fn poster(&self) -> &tokio::sync::mpsc::Sender<super::sqlite_writer::PostJob> {
        &self.poster
    }

    /// A throwaway database (tests and benchmarks): a file in a temporary
    /// directory that goes with the last handle, committed without
    /// fsync. (Not SQLite's `:memory:`, where every connection is a
    /// database of its own: the writer has its own connection.)
    ///
    /// # Errors
    /// [`StoreError`] if SQLite cannot start.
    pub async fn in_memory() -> StoreResult<Self> {
        let dir = tempfile::Builder::new()
            .prefix("confer-store-")
            .tempdir()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let path = dir.path().join("confer.db");
        Self::open_with(&path, Durability::Off, Some(dir)).await
    }

    /// The connection pool (for the other store traits in this module).
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes the write lock at once,
    /// so concurrent writers queue on the busy timeout instead of failing
    /// when a deferred transaction tries to upgrade from reading to writing.
    pub(super) async fn write_tx(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Closes every connection (graceful shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn parse_id<T: FromStr>(row: &SqliteRow, column: &str) -> StoreResult<T> {
    let text: String = row.try_get(column)?;
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("{column} is not a UUID: {text:?}")))
}

fn parse_key(text: &str) -> StoreResult<TokenKey> {
    TokenKey::decode(text).ok_or_else(|| StoreError::Corrupt("token key".to_owned()))
}

fn subscriber_from(row: &SqliteRow) -> StoreResult<Subscriber> {
    Ok(Subscriber {
        id: parse_id(row, "id")?,
        email: row.try_get("email")?,
        created_at: Timestamp(row.try_get("created_at")?),
    })
}

fn application_from(row: &SqliteRow) -> StoreResult<Application> {
    let prev: Option<String> = row.try_get("prev_token_key")?;
    let key: String = row.try_get("token_key")?;
    Ok(Application {
        id: parse_id(row, "id")?,
        subscriber_id: parse_id(row, "subscriber_id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        token_key: parse_key(&key)?,
        prev_token_key: prev.as_deref().map(parse_key).transpose()?,
        prev_token_key_until: row
            .try_get::<Option<i64>, _>("prev_token_key_until")?
            .map(Timestamp),
        created_at: Timestamp(row.try_get("created_at")?),
        unregistered_at: row
            .try_get::<Option<i64>, _>("unregistered_at")?
            .map(Timestamp),
    })
}

fn user_from(row: &SqliteRow) -> StoreResult<User> {
    Ok(User {
        id: parse_id(row, "id")?,
        app_id: parse_id(row, "app_id")?,
        external_id: row.try_get("external_id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        locked: row.try_get("locked")?,
        created_at: Timestamp(row.try_get("created_at")?),
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        // A write as small as can be, committed like any other: a full
        // disk refuses it, and once space returns it clears the fault
        // even if nothing else is written.
        let probe = sqlx::query(
            "INSERT INTO store_probe (id, checked_at) VALUES (1, ?) \
             ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
        )
        .bind(Timestamp::from_system(SystemTime::now()).0)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from);
        self.writes.note(&probe);
        match self.writes.problem() {
            Some(problem) => Err(StoreError::WritesRefused(problem)),
            None => probe,
        }
    }

    async fn put_code(&self, code: &PendingCode) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO email_codes (purpose, email, code_hash, expires_at, tries, max_tries, used, created_at) \
             VALUES (?, ?, ?, ?, 0, ?, FALSE, ?) \
             ON CONFLICT (purpose, email) DO UPDATE SET code_hash = excluded.code_hash, \
             expires_at = excluded.expires_at, tries = 0, max_tries = excluded.max_tries, \
             used = FALSE, created_at = excluded.created_at",
        )
        .bind(code.purpose.as_str())
        .bind(&code.email)
        .bind(&code.code_hash)
        .bind(code.expires_at.0)
        .bind(i64::from(code.max_tries))
        .bind(code.created_at.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn spend_code_try(
        &self,
        purpose: CodePurpose,
        email: &str,
        now: Timestamp,
    ) -> StoreResult<Option<String>> {
        let row = sqlx::query(
            "UPDATE email_codes SET tries = tries + 1 \
             WHERE purpose = ? AND email = ? AND used = FALSE AND expires_at > ? AND tries < max_tries \
             RETURNING code_hash",
        )
        .bind(purpose.as_str())
        .bind(email)
        .bind(now.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("code_hash")).transpose()?)
    }

    async fn mark_code_used(&self, purpose: CodePurpose, email: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE email_codes SET used = TRUE WHERE purpose = ? AND email = ? AND used = FALSE",
        )
        .bind(purpose.as_str())
        .bind(email)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn register_application(
        &self,
        email: &str,
        new_subscriber: SubscriberId,
        app: &NewApplication,
        now: Timestamp,
    ) -> StoreResult<(Subscriber, Application)> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO subscribers (id, email, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (email) DO NOTHING",
        )
        .bind(new_subscriber.to_string())
        .bind(email)
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
        let subscriber = subscriber_from(
            &sqlx::query("SELECT id, email, created_at FROM subscribers WHERE email = ?")
                .bind(email)
                .fetch_one(&mut *tx)
                .await?,
        )?;
        let row = sqlx::query(&format!(
            "INSERT INTO applications (id, subscriber_id, name, secret_hash, token_key, created_at) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING {APPLICATION_COLUMNS}"
        ))
        .bind(app.id.to_string())
        .bind(subscriber.id.to_string())
        .bind(&app.name)
        .bind(&app.secret_hash)
        .bind(app.token_key.encode())
        .bind(now.0)
        .fetch_one(&mut *tx)
        .await?;
        let application = application_from(&row)?;
        tx.commit().await?;
        Ok((subscriber, application))
    }

    async fn subscriber_by_email(&self, email: &str) -> StoreResult<Option<Subscriber>> {
        sqlx::query("SELECT id, email, created_at FROM subscribers WHERE email = ?")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(subscriber_from)
            .transpose()
    }

    async fn subscriber(&self, id: SubscriberId) -> StoreResult<Option<Subscriber>> {
        sqlx::query("SELECT id, email, created_at FROM subscribers WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(subscriber_from)
            .transpose()
    }

    async fn subscribers(&self) -> StoreResult<Vec<Subscriber>> {
        sqlx::query("SELECT id, email, created_at FROM subscribers ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(subscriber_from)
            .collect()
    }

    async fn put_session(&self, session: &SubscriberSession) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO subscriber_sessions (token_hash, subscriber_id, expires_at, created_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(&session.token_hash)
        .bind(session.subscriber_id.to_string())
        .bind(session.expires_at.0)
        .bind(session.created_at.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn session(&self, token_hash: &str) -> StoreResult<Option<SubscriberSession>> {
        let Some(row) = sqlx::query(
            "SELECT token_hash, subscriber_id, expires_at, created_at FROM subscriber_sessions \
             WHERE token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(SubscriberSession {
            token_hash: row.try_get("token_hash")?,
            subscriber_id: parse_id(&row, "subscriber_id")?,
            expires_at: Timestamp(row.try_get("expires_at")?),
            created_at: Timestamp(row.try_get("created_at")?),
        }))
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM subscriber_sessions WHERE token_hash = ?")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn application(&self, id: AppId) -> StoreResult<Option<Application>> {
        sqlx::query(&format!(
            "SELECT {APPLICATION_COLUMNS} FROM applications WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(application_from)
        .transpose()
    }

    async fn applications(&self, owner: Option<SubscriberId>) -> StoreResult<Vec<Application>> {
        let rows = match owner {
            Some(owner) => {
                sqlx::query(&format!(
                    "SELECT {APPLICATION_COLUMNS} FROM applications WHERE subscriber_id = ? \
                     ORDER BY created_at, id"
                ))
                .bind(owner.to_string())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {APPLICATION_COLUMNS} FROM applications ORDER BY created_at, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(application_from).collect()
    }

    async fn rename_application(&self, id: AppId, name: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE applications SET name = ? WHERE id = ? AND unregistered_at IS NULL",
        )
        .bind(name)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn rotate_secret(
        &self,
        id: AppId,
        secret_hash: &str,
        token_key: &TokenKey,
        prev_until: Timestamp,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE applications SET prev_token_key = token_key, prev_token_key_until = ?, \
             secret_hash = ?, token_key = ? WHERE id = ? AND unregistered_at IS NULL",
        )
        .bind(prev_until.0)
        .bind(secret_hash)
        .bind(token_key.encode())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn replace_secret_hash(&self, id: AppId, old: &str, new: &str) -> StoreResult<bool> {
        let done =
            sqlx::query("UPDATE applications SET secret_hash = ? WHERE id = ? AND secret_hash = ?")
                .bind(new)
                .bind(id.to_string())
                .bind(old)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn unregister_application(&self, id: AppId, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE applications SET unregistered_at = ? WHERE id = ? AND unregistered_at IS NULL",
        )
        .bind(now.0)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        // Its files go with it (their objects through the garbage list).
        super::sqlite_files::discard_where(&mut tx, "app_id = ?", &id.to_string(), now).await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn provision_user(
        &self,
        app_id: AppId,
        new_id: UserId,
        external_id: &str,
        name: &str,
        email: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<User> {
        let row = sqlx::query(&format!(
            "INSERT INTO users (id, app_id, external_id, name, email, locked, created_at) \
             VALUES (?, ?, ?, ?, ?, FALSE, ?) \
             ON CONFLICT (app_id, external_id) DO UPDATE SET name = excluded.name, \
             email = COALESCE(excluded.email, users.email) \
             RETURNING {USER_COLUMNS}"
        ))
        .bind(new_id.to_string())
        .bind(app_id.to_string())
        .bind(external_id)
        .bind(name)
        .bind(email)
        .bind(now.0)
        .fetch_one(&self.pool)
        .await?;
        user_from(&row)
    }

    async fn user(&self, app_id: AppId, id: UserId) -> StoreResult<Option<User>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE app_id = ? AND id = ?"
        ))
        .bind(app_id.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_from)
        .transpose()
    }

    async fn users(&self, app_id: AppId, ids: &[UserId]) -> StoreResult<Vec<User>> {
        let list = serde_json::to_string(&ids.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE app_id = ? AND id IN (SELECT value FROM json_each(?))"
        ))
        .bind(app_id.to_string())
        .bind(list)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user_from)
        .collect()
    }

    async fn user_by_external_id(
        &self,
        app_id: AppId,
        external_id: &str,
    ) -> StoreResult<Option<User>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE app_id = ? AND external_id = ?"
        ))
        .bind(app_id.to_string())
        .bind(external_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_from)
        .transpose()
    }

    async fn set_user_locked(
        &self,
        app_id: AppId,
        id: UserId,
        locked: bool,
    ) -> StoreResult<Option<User>> {
        sqlx::query(&format!(
            "UPDATE users SET locked = ? WHERE app_id = ? AND id = ? RETURNING {USER_COLUMNS}"
        ))
        .bind(locked)
        .bind(app_id.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_from)
        .transpose()
    }

    async fn locked_users(&self) -> StoreResult<Vec<UserId>> {
        let rows = sqlx::query("SELECT id FROM users WHERE locked")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| parse_id(row, "id")).collect()
    }
}
