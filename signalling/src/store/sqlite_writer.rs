//! The message writer of the SQLite store: one thread, one synchronous
//! connection of its own, group commits, and the upkeep of the WAL.
//!
//! Every new message, edit, delete and other event is a [`Write`] handed
//! to the writer ([`SqliteStore::write`]); the writer stores whatever is
//! waiting in one transaction with one fsync ([`group_commit`]) and only
//! then answers each. Reads and the rarer writes (conversations, members,
//! files) use the store's connection pool.
//!
//! The writer does not go through the pool's driver (sqlx), whose SQLite
//! connections each run on a thread of their own: every statement would
//! be a round trip between two threads, eight of them per message. It
//! owns a plain SQLite connection ([`WriterConnection`], `rusqlite`) on
//! its own thread, with every statement prepared once and cached: a batch
//! is a loop of B-tree writes and one fsync, and the only thread hops
//! left are the job's arrival and its answer. Because it keeps a
//! connection of its own, a commit never queues behind requests for a
//! pooled connection, and a pool that has run dry cannot hold back
//! acknowledgements.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::messaging::{
    MarkChange, Marked, NewMessage, OnCommit, PendingEvent, Posted, StoredMessage,
};
use super::sqlite::SqliteStore;
use super::sqlite_message_writes::{append, index_pending, mark_in, post_in, update_in};
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
        event: Arc<str>,
    },
    /// An event that changes no message (a conversation's, a click's…).
    Append { event: Arc<str> },
    /// A reaction or pin added or withdrawn.
    Mark {
        change: MarkChange,
        event: PendingEvent,
    },
    /// Every message committed so far into the full-text index (before a
    /// search).
    Index,
}

/// What a [`Write`] did.
#[derive(Debug)]
pub(super) enum Written {
    /// The message, stored (or the one stored before with its `client_id`).
    Posted(Box<Posted>),
    /// The event's number in each notified user's log.
    Appended(Vec<(UserId, u64)>),
    /// What a mark's change did, and its event when it wrote one.
    Marked(Marked, Option<Arc<str>>),
}

/// A write waiting for the group commit.
pub(super) struct PostJob {
    write: Write,
    notify: Vec<UserId>,
    now: Timestamp,
    /// Run once the write is committed, in commit order.
    then: Option<OnCommit>,
    reply: tokio::sync::oneshot::Sender<StoreResult<Written>>,
}

impl PostJob {
    /// Answers the writer with `result`; a committed write's event goes
    /// to its [`OnCommit`] first.
    fn answer(mut self, result: StoreResult<Written>) {
        if let (Ok(written), Some(then)) = (&result, self.then.take()) {
            match (written, &self.write) {
                (Written::Posted(posted), _) => {
                    if let Some(event) = &posted.event {
                        then(&posted.seqs, event);
                    }
                }
                (
                    Written::Appended(seqs),
                    Write::Update { event, .. } | Write::Append { event },
                ) => then(seqs, event),
                (Written::Marked(Marked::Changed { seqs, .. }, Some(event)), _) => {
                    then(seqs, event);
                }
                (Written::Appended(_), Write::Post { .. } | Write::Index | Write::Mark { .. })
                | (Written::Marked(..), _) => {}
            }
        }
        let _ = self.reply.send(result);
    }
}

impl std::fmt::Debug for PostJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = match &self.write {
            Write::Post { message, .. } => Some(message.id),
            Write::Update { message, .. } => Some(message.id),
            Write::Mark { change, .. } => Some(change.message_id),
            Write::Append { .. } | Write::Index => None,
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
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// WAL frames (pages) past which the writer restarts the WAL.
pub(super) const WAL_RESTART_FRAMES: i64 = 4096;

/// Most messages added to the full-text index in one of the writer's
/// index transactions.
const INDEX_BATCH: usize = 2000;

/// Under a steady stream of writes, how often the writer stops to index
/// (it also indexes whenever its queue is empty).
const INDEX_INTERVAL: Duration = Duration::from_millis(100);

/// How long a connection of the writer waits for the write lock that a
/// pooled connection holds (a conversation created, members added).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Statements a writer connection keeps prepared.
const STATEMENT_CACHE: usize = 64;

/// How commits reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Durability {
    /// `synchronous = FULL`: a commit is on disk before it is
    /// acknowledged, also across a power cut.
    Full,
    /// `synchronous = OFF`: for throwaway databases (tests, benchmarks).
    Off,
}

/// The writer's connection: opened on the database file with the
/// writer's settings, and opened again when a failed write leaves it
/// inside a transaction it cannot end (a full disk).
pub(super) struct WriterConnection {
    path: PathBuf,
    durability: Durability,
    conn: Option<Connection>,
}

impl WriterConnection {
    /// A connection to the database file at `path`.
    pub(super) fn open(path: &Path, durability: Durability) -> StoreResult<Self> {
        let mut this = Self {
            path: path.to_owned(),
            durability,
            conn: None,
        };
        this.connection()?;
        Ok(this)
    }

    /// The open connection, opened if needed.
    fn connection(&mut self) -> StoreResult<&mut Connection> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.path, self.durability)?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Corrupt("no writer connection".to_owned()))
    }

    /// Stores `jobs` in one transaction with one commit; any failure rolls
    /// back all of them.
    fn commit(&mut self, jobs: &[PostJob]) -> StoreResult<Vec<Written>> {
        let conn = self.connection()?;
        let result = commit_batch(conn, jobs);
        if result.is_err() && !conn.is_autocommit() {
            // The transaction could not be rolled back (SQLite refuses
            // to after some I/O errors): start again on a fresh
            // connection rather than refuse every later BEGIN.
            tracing::debug!("reopening the writer's connection after a failed rollback");
            metrics::counter!("store_connections_discarded_total").increment(1);
            self.conn = None;
        }
        result
    }

    /// Adds up to [`INDEX_BATCH`] messages waiting for the full-text index
    /// to it, in a transaction of its own; returns how many.
    fn index(&mut self) -> StoreResult<usize> {
        let durability = self.durability;
        let conn = self.connection()?;
        let started = std::time::Instant::now();
        let result = (|| {
            // No fsync of its own: the index is rebuilt from the messages
            // (what a crash loses is found unindexed again), and the next
            // message commit's fsync covers these WAL frames too. NORMAL,
            // not OFF: in WAL mode it never risks the database.
            if durability == Durability::Full {
                conn.pragma_update(None, "synchronous", "NORMAL")?;
            }
            let indexed = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let n = index_pending(&tx, INDEX_BATCH)?;
                tx.commit()?;
                Ok::<_, StoreError>(n)
            })();
            if durability == Durability::Full {
                conn.pragma_update(None, "synchronous", "FULL")?;
            }
            indexed
        })();
        // A connection left inside a transaction, or one whose commits
        // might no longer be `FULL` (the pragma failed), is not used
        // again: the next one is opened with the writer's settings.
        if result.is_err() {
            self.conn = None;
        }
        metrics::histogram!("store_index_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    /// Runs `PRAGMA wal_checkpoint(mode)`; returns the frames in the WAL.
    fn checkpoint(&mut self, mode: &str) -> StoreResult<i64> {
        checkpoint(self.connection()?, mode)
    }
}

/// A connection to `path` with the writer's settings. (The pool's
/// connections get the same ones from the store's options; these are set
/// per connection.)
fn connect(path: &Path, durability: Durability) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Off => "OFF",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    // No checkpoint inside a commit: see [`checkpoints`].
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// Stores `jobs` in one transaction on `conn`.
fn commit_batch(conn: &mut Connection, jobs: &[PostJob]) -> StoreResult<Vec<Written>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut written = Vec::with_capacity(jobs.len());
    for job in jobs {
        written.push(match &job.write {
            Write::Post { message, event } => Written::Posted(Box::new(post_in(
                &tx,
                message,
                &job.notify,
                event,
                job.now,
            )?)),
            Write::Update { message, event } => {
                Written::Appended(update_in(&tx, message, &job.notify, event, job.now)?)
            }
            Write::Append { event } => Written::Appended(append(&tx, &job.notify, event, job.now)?),
            Write::Mark { change, event } => {
                let (marked, event) = mark_in(&tx, change, &job.notify, event, job.now)?;
                Written::Marked(marked, event)
            }
            Write::Index => {
                while index_pending(&tx, INDEX_BATCH)? == INDEX_BATCH {}
                Written::Appended(Vec::new())
            }
        });
    }
    let committing = std::time::Instant::now();
    tx.commit()?;
    metrics::histogram!("store_group_commit_seconds").record(committing.elapsed().as_secs_f64());
    Ok(written)
}

/// Starts the message writer on a thread of its own and the WAL
/// checkpoints on another: commits never wait for a busy request thread,
/// and neither thread ever runs on the ones that deliver. The writer ends
/// when the last store handle (the last sender) is dropped, and the
/// checkpoints with it. Returns the writer's queue and what its commits
/// find of the disk.
pub(super) fn start(
    connection: WriterConnection,
) -> StoreResult<(tokio::sync::mpsc::Sender<PostJob>, Arc<WriteHealth>)> {
    let (poster, jobs) = tokio::sync::mpsc::channel(POST_QUEUE);
    let writes = Arc::new(WriteHealth::default());
    let writer_writes = writes.clone();
    let wal_frames = Arc::new(AtomicI64::new(0));
    let checkpointer = Checkpointer {
        path: connection.path.clone(),
        durability: connection.durability,
        wal_frames: wal_frames.clone(),
    };
    let failed =
        |e: std::io::Error| StoreError::Corrupt(format!("starting the message writer: {e}"));
    let (writer_alive, checkpoints_stop) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("store-checkpoint".to_owned())
        .spawn(move || checkpointer.run(&checkpoints_stop))
        .map_err(failed)?;
    std::thread::Builder::new()
        .name("store-writer".to_owned())
        .spawn(move || {
            group_commit(connection, jobs, &writer_writes, &wal_frames);
            drop(writer_alive);
        })
        .map_err(failed)?;
    Ok((poster, writes))
}

/// The message writer: takes every write waiting (up to
/// [`GROUP_COMMIT_MAX`]: new messages, edits, deletes and other events)
/// and stores them in one transaction with one fsync; only then does each
/// writer get its answer. Edits and deletes share the commits of new
/// messages rather than taking the database's write lock for a
/// transaction and an fsync each: an application editing in a loop then
/// adds statements to the next commit instead of queueing every other
/// application's messages behind its own commits. If the batch fails, its
/// writes are made again one transaction each, so that a bad one fails
/// alone. (Savepoints per write would cost two statements of every
/// message; this costs nothing when nothing fails.) Under load, writes
/// that arrive during a commit share the next one. A batch the disk
/// refuses (full) is refused as a whole, without retries: no write
/// spoiled it, and each alone would be refused the same way; the writer
/// goes on with the next batch, which succeeds once space returns. Every
/// outcome is reported to `writes`. It runs on its own thread ([`start`])
/// and blocks it.
///
/// Between two commits it adds the messages committed since the last time
/// to the full-text index, in a transaction of its own: whenever its
/// queue is empty, and at least every [`INDEX_INTERVAL`] under a steady
/// stream (FTS5 writes a segment per transaction, so a batch of many
/// messages costs far less than a little in every commit). A search
/// first has the writer index everything committed ([`Write::Index`]), so
/// it finds every message acknowledged before it.
///
/// Between two commits it restarts the WAL when the last checkpoint found
/// it longer than [`WAL_RESTART_FRAMES`] (`wal_frames`).
fn group_commit(
    mut connection: WriterConnection,
    mut jobs: tokio::sync::mpsc::Receiver<PostJob>,
    writes: &WriteHealth,
    wal_frames: &AtomicI64,
) {
    // Messages waiting for the full-text index may be left from before a
    // restart: look once.
    let mut unindexed = 1usize;
    let mut indexed_at = std::time::Instant::now();
    loop {
        // Index when the queue is empty (the writer is idle) or, under a
        // steady stream, every INDEX_INTERVAL.
        if unindexed > 0 && (jobs.is_empty() || indexed_at.elapsed() >= INDEX_INTERVAL) {
            indexed_at = std::time::Instant::now();
            match connection.index() {
                Ok(n) if n < INDEX_BATCH => unindexed = 0,
                Ok(_) => {}
                // As a commit would (a full disk): counted, tried again.
                Err(e) => {
                    metrics::counter!("store_index_failures_total").increment(1);
                    tracing::debug!(error = %e, "indexing messages for search failed");
                }
            }
        }
        let Some(first) = jobs.blocking_recv() else {
            break;
        };
        if wal_frames.load(Ordering::Relaxed) > WAL_RESTART_FRAMES {
            wal_frames.store(0, Ordering::Relaxed);
            restart_wal(&mut connection);
        }
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("store_group_commit_size").record(batch.len() as f64);
        unindexed += batch
            .iter()
            .filter(|job| matches!(job.write, Write::Post { .. } | Write::Update { .. }))
            .count();
        match connection.commit(&batch) {
            Ok(written) => {
                writes.succeeded();
                for (job, result) in batch.into_iter().zip(written) {
                    job.answer(Ok(result));
                }
            }
            Err(StoreError::Unavailable(why)) => {
                writes.refused(&why);
                for job in batch {
                    job.answer(Err(StoreError::Unavailable(why.clone())));
                }
            }
            // Alone in its batch: its own error, so that a conflict keeps
            // its code (as it does when a batch is retried one by one).
            Err(e) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    job.answer(Err(e));
                }
            }
            // One write spoiled the batch: each on its own, so that it
            // fails alone.
            Err(_) => {
                for job in batch {
                    let result = connection
                        .commit(std::slice::from_ref(&job))
                        .map(|mut w| w.remove(0));
                    writes.note(&result);
                    job.answer(result);
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
        then: OnCommit,
    ) -> StoreResult<Written> {
        let stopped = || StoreError::Corrupt("the message writer has stopped".to_owned());
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.poster()
            .send(PostJob {
                write,
                notify: notify.to_vec(),
                now,
                then: Some(then),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The background checkpoints: a thread with a connection of its own.
struct Checkpointer {
    path: PathBuf,
    durability: Durability,
    /// The frames in the WAL, as the last checkpoint found them.
    wal_frames: Arc<AtomicI64>,
}

impl Checkpointer {
    /// Passive checkpoints every [`CHECKPOINT_INTERVAL`] until the writer
    /// ends (`writer` disconnects): they copy what no reader still needs
    /// from the WAL into the database without taking the write lock, so
    /// commits go on meanwhile. Each leaves the number of frames in the
    /// WAL for the writer, which restarts the WAL when it is long
    /// ([`restart_wal`]). On a full disk they fail every time (the
    /// database file cannot grow): that is logged when it starts and when
    /// it ends, not at every turn.
    fn run(self, writer: &std::sync::mpsc::Receiver<()>) {
        let mut conn: Option<Connection> = None;
        let mut failing = false;
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            writer.recv_timeout(CHECKPOINT_INTERVAL)
        {
            let started = std::time::Instant::now();
            let frames = match conn.as_mut() {
                Some(c) => checkpoint(c, "PASSIVE"),
                None => connect(&self.path, self.durability)
                    .and_then(|c| checkpoint(conn.insert(c), "PASSIVE")),
            };
            match frames {
                Ok(frames) if failing => {
                    tracing::info!("WAL checkpoints succeed again");
                    failing = false;
                    self.wal_frames.store(frames, Ordering::Relaxed);
                }
                Ok(frames) => self.wal_frames.store(frames, Ordering::Relaxed),
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "WAL checkpoints fail (logged again once they succeed)");
                    failing = true;
                }
                Err(_) => {}
            }
            metrics::histogram!("store_checkpoint_seconds").record(started.elapsed().as_secs_f64());
        }
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
fn restart_wal(connection: &mut WriterConnection) {
    let started = std::time::Instant::now();
    match connection.checkpoint("PASSIVE") {
        Ok(_) => metrics::counter!("store_wal_restarts_total").increment(1),
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint by the writer failed"),
    }
    metrics::histogram!("store_wal_restart_seconds").record(started.elapsed().as_secs_f64());
}

/// Runs `PRAGMA wal_checkpoint(mode)` on `conn`; returns the frames in the
/// WAL.
fn checkpoint(conn: &Connection, mode: &str) -> StoreResult<i64> {
    Ok(
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            row.get::<_, i64>(1)
        })?,
    )
}

/// Whether a pooled connection may be used again after a failed write:
/// false when sqlx still counts a transaction open on it. That happens
/// when a write fails with `SQLITE_FULL` or `SQLITE_IOERR`: SQLite rolls
/// the transaction back by itself, so the `ROLLBACK` sqlx issues when the
/// transaction is dropped fails, and sqlx, which only counts a rollback
/// that succeeded, would refuse every later `BEGIN` on that connection
/// (`InvalidSavePointStatement`) for good. Such a connection is closed
/// and the pool opens a fresh one (it runs this when a connection is
/// released): the store recovers by itself once space returns.
pub(super) async fn consistent(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection as _;
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
