//! The message writer of the SQLite store: one thread, one connection of
//! its own, group commits, and the upkeep of the WAL.
//!
//! Every new message, edit and delete is a [`Write`] handed to the writer
//! ([`SqliteStore::write`]); the writer stores whatever is waiting in one
//! transaction with one fsync ([`group_commit`]) and only then answers
//! each. Reads and the rarer writes (conversations, members, files) use
//! the store's connection pool. The writer does not: it keeps a
//! connection of its own ([`WriterConnection`]), so a commit never
//! queues behind requests for a pooled connection, and a pool that has
//! run dry (every connection held by slow requests) cannot hold back
//! acknowledgements.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions as _, Connection as _, SqlitePool};

use super::messaging::{NewMessage, PendingEvent, Posted, StoredMessage};
use super::sqlite::SqliteStore;
use super::sqlite_message_writes::{post_in, update_in};
use super::write_health::WriteHealth;
use super::{StoreError, StoreResult};
use crate::ids::{Timestamp, UserId};

/// A write the group-commit writer makes.
pub(super) enum Write {
    /// A new message.
    Post {
        message: NewMessage,
        event: PendingEvent,
    },
    /// A stored message, edited or deleted.
    Update {
        message: StoredMessage,
        event: String,
    },
}

/// What a [`Write`] did.
#[derive(Debug)]
pub(super) enum Written {
    /// The message, stored (or the one stored before with its `client_id`).
    Posted(Box<Posted>),
    /// The event's number in each notified user's log.
    Updated(Vec<(UserId, u64)>),
}

/// A write waiting for the group commit.
pub(super) struct PostJob {
    write: Write,
    notify: Vec<UserId>,
    now: Timestamp,
    reply: tokio::sync::oneshot::Sender<StoreResult<Written>>,
}

impl std::fmt::Debug for PostJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = match &self.write {
            Write::Post { message, .. } => message.id,
            Write::Update { message, .. } => message.id,
        };
        f.debug_struct("PostJob")
            .field("message", &id)
            .finish_non_exhaustive()
    }
}

/// Messages waiting for the writer before senders wait.
const POST_QUEUE: usize = 1024;

/// Most writes committed in one transaction.
const GROUP_COMMIT_MAX: usize = 128;

/// How often the WAL is copied back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// WAL frames (pages) past which the writer restarts the WAL.
pub(super) const WAL_RESTART_FRAMES: i64 = 4096;

/// The writer's connection.
pub(super) enum WriterConnection {
    /// A connection of its own (a database file). It is reopened when a
    /// failed write leaves it unusable (see [`consistent`]).
    Own {
        options: Box<SqliteConnectOptions>,
        conn: Option<SqliteConnection>,
    },
    /// One of the pool's for each commit: an in-memory database, where
    /// every connection is a database of its own.
    Pooled(SqlitePool),
}

impl WriterConnection {
    /// A connection of its own, opened with `options`.
    pub(super) async fn own(options: SqliteConnectOptions) -> StoreResult<Self> {
        let conn = options.connect().await?;
        Ok(Self::Own {
            options: Box::new(options),
            conn: Some(conn),
        })
    }

    /// Stores `jobs` in one transaction with one commit; any failure rolls
    /// back all of them.
    async fn commit(&mut self, jobs: &[PostJob]) -> StoreResult<Vec<Written>> {
        match self {
            Self::Pooled(pool) => commit_batch(&mut *pool.acquire().await?, jobs).await,
            Self::Own { options, conn } => {
                let c = match conn {
                    Some(c) => c,
                    None => conn.insert(options.connect().await?),
                };
                let result = commit_batch(c, jobs).await;
                if result.is_err()
                    && !matches!(consistent(c).await, Ok(true))
                    && let Some(c) = conn.take()
                {
                    let _ = c.close_hard().await;
                }
                result
            }
        }
    }

    /// Runs `PRAGMA wal_checkpoint(mode)`; returns the frames in the WAL.
    async fn checkpoint(&mut self, mode: &str) -> StoreResult<i64> {
        match self {
            Self::Pooled(pool) => Ok(checkpoint(&mut *pool.acquire().await?, mode).await?),
            Self::Own { options, conn } => {
                let c = match conn {
                    Some(c) => c,
                    None => conn.insert(options.connect().await?),
                };
                Ok(checkpoint(c, mode).await?)
            }
        }
    }
}

/// Stores `jobs` in one transaction on `conn`.
async fn commit_batch(conn: &mut SqliteConnection, jobs: &[PostJob]) -> StoreResult<Vec<Written>> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut written = Vec::with_capacity(jobs.len());
    for job in jobs {
        written.push(match &job.write {
            Write::Post { message, event } => Written::Posted(Box::new(
                post_in(&mut tx, message, &job.notify, event, job.now).await?,
            )),
            Write::Update { message, event } => {
                Written::Updated(update_in(&mut tx, message, &job.notify, event, job.now).await?)
            }
        });
    }
    let committing = std::time::Instant::now();
    tx.commit().await?;
    metrics::histogram!("store_group_commit_seconds").record(committing.elapsed().as_secs_f64());
    Ok(written)
}

/// Starts the message writer on a thread of its own (with its own small
/// runtime): commits never wait for a busy request thread, and the writer
/// ends when the last store handle (the last sender) is dropped. Returns
/// the writer's queue and what its commits find of the disk.
pub(super) fn start(
    pool: SqlitePool,
    connection: WriterConnection,
) -> StoreResult<(tokio::sync::mpsc::Sender<PostJob>, Arc<WriteHealth>)> {
    let (poster, jobs) = tokio::sync::mpsc::channel(POST_QUEUE);
    let writes = Arc::new(WriteHealth::default());
    let writer_writes = writes.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Corrupt(format!("starting the message writer: {e}")))?;
    std::thread::Builder::new()
        .name("store-writer".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let wal_frames = Rc::new(Cell::new(0));
                tokio::select! {
                    () = group_commit(connection, jobs, writer_writes, wal_frames.clone()) => {}
                    () = checkpoints(pool, wal_frames) => {}
                }
            });
        })
        .map_err(|e| StoreError::Corrupt(format!("starting the message writer: {e}")))?;
    Ok((poster, writes))
}

/// The message writer: takes every write waiting (up to
/// [`GROUP_COMMIT_MAX`]: new messages, edits and deletes) and stores them
/// in one transaction with one fsync; only then does each writer get its
/// answer. Edits and deletes share the commits of new messages rather
/// than taking the database's write lock for a transaction and an fsync
/// each: an application editing in a loop then adds statements to the
/// next commit instead of queueing every other application's messages
/// behind its own commits. If the batch fails, its writes are made again
/// one transaction each, so that a bad one fails alone. (Savepoints per
/// write cost two of the eight statements of every message; this costs
/// nothing when nothing fails.) Under load, writes that arrive during a
/// commit share the next one. A batch the disk refuses (full) is refused
/// as a whole, without retries: no write spoiled it, and each alone would
/// be refused the same way; the writer goes on with the next batch, which
/// succeeds once space returns. Every outcome is reported to `writes`. It
/// runs on its own thread ([`start`]), so its future need not be `Send`.
///
/// Between two commits it restarts the WAL when the last checkpoint found
/// it longer than [`WAL_RESTART_FRAMES`] (`wal_frames`).
async fn group_commit(
    mut connection: WriterConnection,
    mut jobs: tokio::sync::mpsc::Receiver<PostJob>,
    writes: Arc<WriteHealth>,
    wal_frames: Rc<Cell<i64>>,
) {
    while let Some(first) = jobs.recv().await {
        if wal_frames.get() > WAL_RESTART_FRAMES {
            wal_frames.set(0);
            restart_wal(&mut connection).await;
        }
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("store_group_commit_size").record(batch.len() as f64);
        match connection.commit(&batch).await {
            Ok(written) => {
                writes.succeeded();
                for (job, result) in batch.into_iter().zip(written) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(StoreError::Unavailable(why)) => {
                writes.refused(&why);
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Unavailable(why.clone())));
                }
            }
            // Alone in its batch: its own error, so that a conflict keeps
            // its code (as it does when a batch is retried one by one).
            Err(e) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    let _ = job.reply.send(Err(e));
                }
            }
            // One write spoiled the batch: each on its own, so that it
            // fails alone.
            Err(_) => {
                for job in batch {
                    let result = connection
                        .commit(std::slice::from_ref(&job))
                        .await
                        .map(|mut w| w.remove(0));
                    writes.note(&result);
                    let _ = job.reply.send(result);
                }
            }
        }
    }
}

impl SqliteStore {
    /// Hands `write` to the group-commit writer and waits for its commit.
    pub(super) async fn write(
        &self,
        write: Write,
        notify: &[UserId],
        now: Timestamp,
    ) -> StoreResult<Written> {
        let stopped = || StoreError::Corrupt("the message writer has stopped".to_owned());
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.poster()
            .send(PostJob {
                write,
                notify: notify.to_vec(),
                now,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Passive checkpoints: they copy what no reader still needs from the WAL
/// into the database without taking the write lock, so commits go on
/// meanwhile. (In-memory databases have no WAL; the pragma is a no-op.)
/// They run on a pooled connection, beside the writer's commits. Each
/// leaves the number of frames in the WAL in `wal_frames` for the writer,
/// which restarts the WAL when it is long ([`restart_wal`]). On a full
/// disk they fail every time (the database file cannot grow): that is
/// logged when it starts and when it ends, not twice a second.
async fn checkpoints(pool: SqlitePool, wal_frames: Rc<Cell<i64>>) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    let mut failing = false;
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        let started = std::time::Instant::now();
        let frames = match pool.acquire().await {
            Ok(mut conn) => checkpoint(&mut conn, "PASSIVE").await,
            Err(e) => Err(e),
        };
        match frames {
            Ok(frames) if failing => {
                tracing::info!("WAL checkpoints succeed again");
                failing = false;
                wal_frames.set(frames);
            }
            Ok(frames) => wal_frames.set(frames),
            Err(e) if !failing => {
                tracing::warn!(error = %e, "WAL checkpoints fail (logged again once they succeed)");
                failing = true;
            }
            Err(_) => {}
        }
        metrics::histogram!("store_checkpoint_seconds").record(started.elapsed().as_secs_f64());
    }
}

/// Lets the WAL start over: a passive checkpoint run by the writer on its
/// own connection between two commits, so no commit adds frames while it
/// copies.
///
/// SQLite rewinds the WAL only when a commit finds every frame copied
/// back. The background checkpoints never get there under a steady stream
/// of commits (new frames arrive while each runs), so the file grew with
/// everything ever written (11 GB for 200 000 messages in the
/// writer-isolation benchmark). The writer calls this once the WAL is
/// longer than [`WAL_RESTART_FRAMES`]; the background checkpoints have
/// already copied most frames, so it has little left to do, and the next
/// commit starts the WAL from its beginning. It stays passive on purpose:
/// a `RESTART` or `TRUNCATE` checkpoint waits for every reader (up to the
/// busy timeout) while it holds back other writers; a passive one never
/// waits — if a reader still needs old frames, it copies what it can and
/// the next turn tries again.
async fn restart_wal(connection: &mut WriterConnection) {
    let started = std::time::Instant::now();
    match connection.checkpoint("PASSIVE").await {
        Ok(_) => metrics::counter!("store_wal_restarts_total").increment(1),
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint by the writer failed"),
    }
    metrics::histogram!("store_wal_restart_seconds").record(started.elapsed().as_secs_f64());
}

/// Runs `PRAGMA wal_checkpoint(mode)` on `conn`; returns the frames in the
/// WAL.
async fn checkpoint(conn: &mut SqliteConnection, mode: &str) -> Result<i64, sqlx::Error> {
    let (_busy, frames, _copied): (i64, i64, i64) =
        sqlx::query_as(&format!("PRAGMA wal_checkpoint({mode})"))
            .fetch_one(conn)
            .await?;
    Ok(frames)
}

/// Whether a connection may be used again after a failed write: false
/// when sqlx still counts a transaction open on it. That happens when a
/// write fails with `SQLITE_FULL` or `SQLITE_IOERR`: SQLite rolls the
/// transaction back by itself, so the `ROLLBACK` sqlx issues when the
/// transaction is dropped fails, and sqlx, which only counts a rollback
/// that succeeded, would refuse every later `BEGIN` on that connection
/// (`InvalidSavePointStatement`) for good. Such a connection is closed
/// and a fresh one opened (by the pool for its connections, which run
/// this when they are released; by the writer for its own): the store
/// recovers by itself once space returns.
pub(super) async fn consistent(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::TransactionManager as _;
    use sqlx::sqlite::SqliteTransactionManager as Manager;
    if Manager::get_transaction_depth(conn) == 0 {
        return Ok(true);
    }
    // The rollback a dropped transaction queued runs before this ping.
    conn.ping().await?;
    let consistent = Manager::get_transaction_depth(conn) == 0;
    if !consistent {
        tracing::debug!(
            "closing a store connection whose rolled-back transaction sqlx still counts"
        );
        metrics::counter!("store_connections_discarded_total").increment(1);
    }
    Ok(consistent)
}
