//! The PostgreSQL store, for several signalling nodes sharing one
//! database.
//!
//! [`PgStore`] keeps the SQLite store's model: reads and the rarer writes
//! (codes, applications, users, conversations, members, files) use a
//! connection pool; every new message, edit, delete and other event goes
//! to one group-commit writer per store, a task with a connection of its
//! own that commits whatever is queued in one transaction (a write that
//! fails makes it start again with a savepoint per write, so that the bad
//! one fails alone), and runs each write's `OnCommit` after the commit, in
//! commit order (`pg_writer`).
//!
//! Several nodes write the same users' event logs at once. A user's event
//! numbers come from its row in `user_event_heads`, which a writer locks
//! (and keeps locked to its commit) before it numbers: the next
//! transaction that numbers for that user waits for the commit, so a
//! user's events commit in the order of their numbers and a reader of
//! "events after N" never misses one that commits later. A batch locks
//! every row it will number from before its first write, in one fixed
//! order (conversations, then messages, then users, each by id), so two
//! nodes' writers cannot deadlock on them (`pg_message_writes`).
//!
//! Search is PostgreSQL's full-text search over a `tsvector` column that
//! follows each message's text (the `russian` configuration, which stems
//! Russian and English words, plus `simple` for words as written: see
//! migration 0002), with a GIN index; every query word is matched as a
//! prefix.
//!
//! The schema is `migrations_postgres/`, applied at connect under sqlx's
//! advisory lock, so nodes starting at once migrate one after the other.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use super::pg_error::PgResult as _;
use super::pg_writer::Writer;
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

/// Most pooled connections of one store (the writer has one more of its
/// own).
const POOL_CONNECTIONS: u32 = 16;

/// How long a request waits for a pooled connection, a new one's
/// connecting included. As long as the SQLite pool's (sqlx's default): in
/// a reconnect storm of 10 000 users on three nodes, requests waited up
/// to 5 s for one of the 16, and a shorter bound failed some of them.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the pool's connections and the writer's show in
/// `pg_stat_activity`.
const POOL_NAME: &str = "confer-signalling";
const WRITER_NAME: &str = "confer-signalling-writer";

/// PostgreSQL-backed [`Store`], [`super::MessageStore`] and
/// [`super::FileStore`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The group-commit writer's queue.
    writer: Writer,
    /// Whether writes go through, as the last ones found.
    writes: Arc<WriteHealth>,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`),
    /// applies the migrations (under PostgreSQL's advisory lock: nodes
    /// that start at once migrate one after the other) and starts the
    /// message writer.
    ///
    /// # Errors
    /// [`StoreError`] if the database cannot be reached or migrated.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)
            .pg()?
            // Notices (a search query of stop words only, `IF NOT EXISTS`)
            // are not for the log.
            .options([("client_min_messages", "warning")])
            .application_name(POOL_NAME);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .pg()?;
        // `locking` stays on (sqlx's default): the migrator holds
        // `pg_advisory_lock` while it reads and applies migrations.
        sqlx::migrate!("./migrations_postgres").run(&pool).await?;
        let writes = Arc::new(WriteHealth::default());
        let writer = Writer::start(options.application_name(WRITER_NAME), writes.clone());
        Ok(Self {
            pool,
            writer,
            writes,
        })
    }

    /// The connection pool (for the other store traits in this module).
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The group-commit writer.
    pub(super) fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Stops the writer once it has committed what is queued, and closes
    /// every connection (graceful shutdown).
    pub async fn close(&self) {
        self.writer.stop().await;
        self.pool.close().await;
    }
}

/// Creates an empty database with a random name (`confer_test_<hex>`) on
/// the server at `base` (a URL without a database name, such as
/// `postgres://postgres@127.0.0.1:55432`), through its `postgres`
/// database; returns the new database's URL. For tests: each gets a
/// database of its own. [`ThrowawayDatabase`] also drops it afterwards.
///
/// # Errors
/// [`StoreError`] if the server cannot be reached or refuses.
pub async fn fresh_test_database(base: &str) -> StoreResult<String> {
    use sqlx::Connection as _;
    let base = base.trim_end_matches('/');
    let name = format!("confer_test_{:032x}", rand::random::<u128>());
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .pg()?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .pg()?;
    admin.close().await.pg()?;
    Ok(format!("{base}/{name}"))
}

/// A database made by [`fresh_test_database`], dropped (best effort, its
/// sessions ended first) when this goes. A test process killed before
/// that leaves it behind: the throwaway cluster that `scripts/test.sh`
/// starts is deleted with all of them.
#[derive(Debug)]
pub struct ThrowawayDatabase {
    base: String,
    url: String,
}

impl ThrowawayDatabase {
    /// A fresh database on the server at `base`.
    ///
    /// # Errors
    /// [`StoreError`] if the server cannot be reached or refuses.
    pub async fn create(base: &str) -> StoreResult<Self> {
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            url: fresh_test_database(base).await?,
        })
    }

    /// Its URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ThrowawayDatabase {
    fn drop(&mut self) {
        let Some(name) = self.url.rsplit('/').next().map(str::to_owned) else {
            return;
        };
        let admin = format!("{}/postgres", self.base);
        // On a thread and a runtime of its own: a drop may run inside an
        // async runtime, which cannot be blocked on from within.
        let dropping = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                use sqlx::Connection as _;
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        });
        if dropping.join().ok().flatten().is_none() {
            tracing::debug!(url = %self.url, "a throwaway database was not dropped");
        }
    }
}

pub(super) fn parse_id<T: FromStr>(row: &PgRow, column: &str) -> StoreResult<T> {
    let text: String = row.try_get(column).pg()?;
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("{column}: {text:?}")))
}

/// A column of `row`.
pub(super) fn get<'r, T>(row: &'r PgRow, column: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).pg()
}

fn parse_key(text: &str) -> StoreResult<TokenKey> {
    TokenKey::decode(text).ok_or_else(|| StoreError::Corrupt("token key".to_owned()))
}

fn subscriber_from(row: &PgRow) -> StoreResult<Subscriber> {
    Ok(Subscriber {
        id: parse_id(row, "id")?,
        email: get(row, "email")?,
        created_at: Timestamp(get(row, "created_at")?),
    })
}

fn application_from(row: &PgRow) -> StoreResult<Application> {
    let prev: Option<String> = get(row, "prev_token_key")?;
    let key: String = get(row, "token_key")?;
    Ok(Application {
        id: parse_id(row, "id")?,
        subscriber_id: parse_id(row, "subscriber_id")?,
        name: get(row, "name")?,
        secret_hash: get(row, "secret_hash")?,
        token_key: parse_key(&key)?,
        prev_token_key: prev.as_deref().map(parse_key).transpose()?,
        prev_token_key_until: get::<Option<i64>>(row, "prev_token_key_until")?.map(Timestamp),
        created_at: Timestamp(get(row, "created_at")?),
        unregistered_at: get::<Option<i64>>(row, "unregistered_at")?.map(Timestamp),
    })
}

fn user_from(row: &PgRow) -> StoreResult<User> {
    Ok(User {
        id: parse_id(row, "id")?,
        app_id: parse_id(row, "app_id")?,
        external_id: get(row, "external_id")?,
        name: get(row, "name")?,
        email: get(row, "email")?,
        locked: get(row, "locked")?,
        created_at: Timestamp(get(row, "created_at")?),
    })
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.pg()?;
        // A write as small as can be, committed like any other: a full
        // disk refuses it, and once space returns it clears the fault
        // even if nothing else is written.
        let probe = sqlx::query(
            "INSERT INTO store_probe (id, checked_at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
        )
        .bind(Timestamp::from_system(SystemTime::now()).0)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .pg();
        self.writes.note(&probe);
        match self.writes.problem() {
            Some(problem) => Err(StoreError::WritesRefused(problem)),
            None => probe,
        }
    }

    async fn put_code(&self, code: &PendingCode) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO email_codes (purpose, email, code_hash, expires_at, tries, max_tries, used, created_at) \
             VALUES ($1, $2, $3, $4, 0, $5, FALSE, $6) \
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
        .await
        .pg()?;
        Ok(())
    }

    async fn spend_code_try(
        &self,
        purpose: CodePurpose,
        email: &str,
        now: Timestamp,
    ) -> StoreResult<Option<String>> {
        // One statement: the row lock makes concurrent tries queue, and
        // each spends one.
        let row = sqlx::query(
            "UPDATE email_codes SET tries = tries + 1 \
             WHERE purpose = $1 AND email = $2 AND used = FALSE AND expires_at > $3 \
             AND tries < max_tries RETURNING code_hash",
        )
        .bind(purpose.as_str())
        .bind(email)
        .bind(now.0)
        .fetch_optional(&self.pool)
        .await
        .pg()?;
        row.map(|r| get(&r, "code_hash")).transpose()
    }

    async fn mark_code_used(&self, purpose: CodePurpose, email: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE email_codes SET used = TRUE WHERE purpose = $1 AND email = $2 AND used = FALSE",
        )
        .bind(purpose.as_str())
        .bind(email)
        .execute(&self.pool)
        .await
        .pg()?;
        Ok(done.rows_affected() == 1)
    }

    async fn register_application(
        &self,
        email: &str,
        new_subscriber: SubscriberId,
        app: &NewApplication,
        now: Timestamp,
    ) -> StoreResult<(Subscriber, Application)> {
        let mut tx = self.pool.begin().await.pg()?;
        // A concurrent first registration of the same e-mail waits on the
        // unique index, then finds the other's row below.
        sqlx::query(
            "INSERT INTO subscribers (id, email, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (email) DO NOTHING",
        )
        .bind(new_subscriber.to_string())
        .bind(email)
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .pg()?;
        let subscriber = subscriber_from(
            &sqlx::query("SELECT id, email, created_at FROM subscribers WHERE email = $1")
                .bind(email)
                .fetch_one(&mut *tx)
                .await
                .pg()?,
        )?;
        let row = sqlx::query(&format!(
            "INSERT INTO applications (id, subscriber_id, name, secret_hash, token_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {APPLICATION_COLUMNS}"
        ))
        .bind(app.id.to_string())
        .bind(subscriber.id.to_string())
        .bind(&app.name)
        .bind(&app.secret_hash)
        .bind(app.token_key.encode())
        .bind(now.0)
        .fetch_one(&mut *tx)
        .await
        .pg()?;
        let application = application_from(&row)?;
        tx.commit().await.pg()?;
        Ok((subscriber, application))
    }

    async fn subscriber_by_email(&self, email: &str) -> StoreResult<Option<Subscriber>> {
        sqlx::query("SELECT id, email, created_at FROM subscribers WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await
            .pg()?
            .as_ref()
            .map(subscriber_from)
            .transpose()
    }

    async fn subscriber(&self, id: SubscriberId) -> StoreResult<Option<Subscriber>> {
        sqlx::query("SELECT id, email, created_at FROM subscribers WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .pg()?
            .as_ref()
            .map(subscriber_from)
            .transpose()
    }

    async fn subscribers(&self) -> StoreResult<Vec<Subscriber>> {
        sqlx::query("SELECT id, email, created_at FROM subscribers ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .pg()?
            .iter()
            .map(subscriber_from)
            .collect()
    }

    async fn put_session(&self, session: &SubscriberSession) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO subscriber_sessions (token_hash, subscriber_id, expires_at, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&session.token_hash)
        .bind(session.subscriber_id.to_string())
        .bind(session.expires_at.0)
        .bind(session.created_at.0)
        .execute(&self.pool)
        .await
        .pg()?;
        Ok(())
    }

    async fn session(&self, token_hash: &str) -> StoreResult<Option<SubscriberSession>> {
        let Some(row) = sqlx::query(
            "SELECT token_hash, subscriber_id, expires_at, created_at FROM subscriber_sessions \
             WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .pg()?
        else {
            return Ok(None);
        };
        Ok(Some(SubscriberSession {
            token_hash: get(&row, "token_hash")?,
            subscriber_id: parse_id(&row, "subscriber_id")?,
            expires_at: Timestamp(get(&row, "expires_at")?),
            created_at: Timestamp(get(&row, "created_at")?),
        }))
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM subscriber_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await
            .pg()?;
        Ok(())
    }

    async fn application(&self, id: AppId) -> StoreResult<Option<Application>> {
        sqlx::query(&format!(
            "SELECT {APPLICATION_COLUMNS} FROM applications WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .pg()?
        .as_ref()
        .map(application_from)
        .transpose()
    }

    async fn applications(&self, owner: Option<SubscriberId>) -> StoreResult<Vec<Application>> {
        sqlx::query(&format!(
            "SELECT {APPLICATION_COLUMNS} FROM applications \
             WHERE $1::text IS NULL OR subscriber_id = $1 ORDER BY created_at, id"
        ))
        .bind(owner.map(|o| o.to_string()))
        .fetch_all(&self.pool)
        .await
        .pg()?
        .iter()
        .map(application_from)
        .collect()
    }

    async fn rename_application(&self, id: AppId, name: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE applications SET name = $1 WHERE id = $2 AND unregistered_at IS NULL",
        )
        .bind(name)
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .pg()?;
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
            "UPDATE applications SET prev_token_key = token_key, prev_token_key_until = $1, \
             secret_hash = $2, token_key = $3 WHERE id = $4 AND unregistered_at IS NULL",
        )
        .bind(prev_until.0)
        .bind(secret_hash)
        .bind(token_key.encode())
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .pg()?;
        Ok(done.rows_affected() == 1)
    }

    async fn replace_secret_hash(&self, id: AppId, old: &str, new: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE applications SET secret_hash = $1 WHERE id = $2 AND secret_hash = $3",
        )
        .bind(new)
        .bind(id.to_string())
        .bind(old)
        .execute(&self.pool)
        .await
        .pg()?;
        Ok(done.rows_affected() == 1)
    }

    async fn unregister_application(&self, id: AppId, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.pg()?;
        let done = sqlx::query(
            "UPDATE applications SET unregistered_at = $1 WHERE id = $2 AND unregistered_at IS NULL",
        )
        .bind(now.0)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .pg()?;
        // Its files go with it (their objects through the garbage list).
        super::pg_files::discard_where(&mut tx, "app_id = $2", &id.to_string(), now).await?;
        tx.commit().await.pg()?;
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
             VALUES ($1, $2, $3, $4, $5, FALSE, $6) \
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
        .await
        .pg()?;
        user_from(&row)
    }

    async fn user(&self, app_id: AppId, id: UserId) -> StoreResult<Option<User>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE app_id = $1 AND id = $2"
        ))
        .bind(app_id.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .pg()?
        .as_ref()
        .map(user_from)
        .transpose()
    }

    async fn users(&self, app_id: AppId, ids: &[UserId]) -> StoreResult<Vec<User>> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE app_id = $1 AND id = ANY($2)"
        ))
        .bind(app_id.to_string())
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .pg()?
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
            "SELECT {USER_COLUMNS} FROM users WHERE app_id = $1 AND external_id = $2"
        ))
        .bind(app_id.to_string())
        .bind(external_id)
        .fetch_optional(&self.pool)
        .await
        .pg()?
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
            "UPDATE users SET locked = $1 WHERE app_id = $2 AND id = $3 RETURNING {USER_COLUMNS}"
        ))
        .bind(locked)
        .bind(app_id.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .pg()?
        .as_ref()
        .map(user_from)
        .transpose()
    }

    async fn locked_users(&self) -> StoreResult<Vec<UserId>> {
        let rows = sqlx::query("SELECT id FROM users WHERE locked")
            .fetch_all(&self.pool)
            .await
            .pg()?;
        rows.iter().map(|row| parse_id(row, "id")).collect()
    }
}
