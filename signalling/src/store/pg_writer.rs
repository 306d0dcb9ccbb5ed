//! The message writer of the PostgreSQL store: one task per store, one
//! connection of its own, group commits.
//!
//! Every new message, edit, delete and other event is a [`Write`] queued
//! to the writer ([`Writer::write`]). The writer takes whatever is queued
//! (up to [`GROUP_COMMIT_MAX`]) and stores it in one transaction: the
//! batch's locks first, then each write (`pg_message_writes`). When a
//! write fails (its conversation gone, a file already attached) the
//! transaction rolls back and the batch is made again with each write
//! inside a savepoint, so that the bad one fails alone and the others
//! commit; savepoints cost two round trips per write, so they are only
//! paid for a batch that needs them. Only after
//! the commit does each caller get its answer, and each write's
//! [`OnCommit`] runs, in commit order.
//!
//! A batch that fails as a whole — the connection lost, or the server
//! breaking a deadlock or a serialization conflict — is made again from
//! the start (on a new connection if the old one is gone) up to
//! [`ATTEMPTS`] times, then its writes fail with the error. A full disk
//! fails the batch at once: each write alone would be refused the same
//! way.
//!
//! The writer keeps a connection of its own rather than one of the pool:
//! a commit never queues behind requests for a pooled connection, and
//! closing the pool never waits for the writer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Acquire as _, Connection as _, PgConnection};
use tokio::sync::{mpsc, oneshot, watch};

use super::messaging::{
    Mark, MarkChange, Marked, NewMessage, OnCommit, PendingEvent, Posted, StoredMessage,
};
use super::pg_error::{PgResult as _, connection_usable, retryable};
use super::pg_marks::mark_in;
use super::pg_message_writes::{
    LockSet, Numbers, Taken, append, lock, post_in, store_numbers, update_in,
};
use super::write_health::WriteHealth;
use super::{StoreError, StoreResult};
use crate::ids::{Timestamp, UserId};

/// Writes waiting for the writer before senders wait (a full queue makes
/// them wait for room; nothing is dropped).
const QUEUE: usize = 1024;

/// Most writes committed in one transaction.
const GROUP_COMMIT_MAX: usize = 256;

/// Times a batch that failed as a whole is tried, the first included.
const ATTEMPTS: u32 = 4;

/// The wait before the second attempt, doubled before each next one.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// How long the writer waits for a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A write waiting for the group commit: what to write, and whom to
/// answer. (Apart, because the transaction borrows the first across its
/// awaits and the second holds a callback that is not `Sync`.)
struct Job {
    request: Request,
    reply: Reply,
}

/// What to write.
struct Request {
    write: Write,
    notify: Vec<UserId>,
    now: Timestamp,
}

/// Whom to tell.
struct Reply {
    /// Run once the write is committed, in commit order.
    then: Option<OnCommit>,
    answer: oneshot::Sender<StoreResult<Written>>,
}

impl Reply {
    /// Answers the caller of `request` with `result`; a committed write's
    /// event goes to its [`OnCommit`] first.
    fn send(mut self, request: &Request, result: StoreResult<Written>) {
        if let (Ok(written), Some(then)) = (&result, self.then.take()) {
            match (written, &request.write) {
                (Written::Posted(posted), _) => {
                    if let Some(event) = &posted.event {
                        then(&posted.seqs, event);
                    }
                }
                (
                    Written::Appended(seqs),
                    Write::Update { event, .. } | Write::Append { event },
                ) => {
                    then(seqs, event);
                }
                (Written::Marked(Marked::Changed { seqs, .. }, Some(event)), _) => {
                    then(seqs, event);
                }
                (Written::Appended(_), Write::Post { .. } | Write::Mark { .. })
                | (Written::Marked(..), _) => {}
            }
        }
        let _ = self.answer.send(result);
    }
}

/// The handle of a store's writer task: its queue, and how to stop it.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
    stop: Arc<watch::Sender<bool>>,
    task: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("queued", &(QUEUE - self.jobs.capacity()))
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer task, which connects with `options` when it
    /// first has something to write, and reports every outcome to
    /// `writes`. It ends once stopped ([`Self::stop`]) or when the last
    /// handle is dropped.
    pub(super) fn start(options: PgConnectOptions, writes: Arc<WriteHealth>) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(run(options, queue, stopping, writes));
        Self {
            jobs,
            stop: Arc::new(stop),
            task: Arc::new(tokio::sync::Mutex::new(Some(task))),
        }
    }

    /// Hands `write` to the writer and waits for its commit.
    pub(super) async fn write(
        &self,
        write: Write,
        notify: &[UserId],
        now: Timestamp,
        then: OnCommit,
    ) -> StoreResult<Written> {
        let stopped = || StoreError::Backend("the message writer has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                request: Request {
                    write,
                    notify: notify.to_vec(),
                    now,
                },
                reply: Reply {
                    then: Some(then),
                    answer: reply,
                },
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Stops the writer: what is queued is committed, later writes fail.
    pub(super) async fn stop(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().await.take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The writer task: a batch of what is queued at a time, until stopped.
async fn run(
    options: PgConnectOptions,
    mut queue: mpsc::Receiver<Job>,
    mut stopping: watch::Receiver<bool>,
    writes: Arc<WriteHealth>,
) {
    let mut conn: Option<PgConnection> = None;
    let mut stopped = false;
    loop {
        let first = if stopped {
            queue.recv().await
        } else {
            tokio::select! {
                biased;
                job = queue.recv() => job,
                _ = stopping.wait_for(|stop| *stop) => {
                    // No more writes: what is queued is still committed.
                    stopped = true;
                    queue.close();
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("store_group_commit_size").record(batch.len() as f64);
        let (requests, replies) = batch.into_iter().map(|j| (j.request, j.reply)).unzip();
        commit_with_retries(&options, &mut conn, requests, replies, &writes).await;
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

/// Commits `batch`, trying again a batch that failed as a whole, and
/// answers every write.
async fn commit_with_retries(
    options: &PgConnectOptions,
    conn: &mut Option<PgConnection>,
    batch: Vec<Request>,
    replies: Vec<Reply>,
    writes: &WriteHealth,
) {
    let mut backoff = RETRY_BACKOFF;
    let mut attempt = 1;
    // First without a savepoint per write (two round trips fewer each);
    // when one write fails, the batch is done again with them, so that
    // it fails alone.
    let mut isolate = false;
    let error = loop {
        let result = match connection(options, conn).await {
            Ok(c) => commit_batch(c, &batch, isolate).await,
            Err(e) => Err(Failure::Retry(e)),
        };
        let result = match result {
            Err(Failure::Isolate) => {
                metrics::counter!("store_batch_isolations_total").increment(1);
                isolate = true;
                continue;
            }
            other => other,
        };
        let failure = match result {
            Ok(outcomes) => {
                writes.succeeded();
                for ((request, reply), outcome) in batch.iter().zip(replies).zip(outcomes) {
                    reply.send(request, outcome);
                }
                return;
            }
            Err(failure) => failure,
        };
        // A refusal of the server's (a deadlock, a full disk) leaves the
        // connection usable: the transaction rolls back. After any other
        // failure its state is not worth finding out.
        let (Failure::Retry(e) | Failure::Final(e)) = &failure else {
            continue;
        };
        let usable = matches!(e, StoreError::Unavailable(_))
            || matches!(e, StoreError::Backend(inner)
                if inner.downcast_ref::<sqlx::Error>().is_some_and(connection_usable));
        if !usable {
            *conn = None;
        }
        match failure {
            Failure::Retry(e) if attempt < ATTEMPTS => {
                metrics::counter!("store_batch_retries_total").increment(1);
                tracing::debug!(error = %e, attempt, "the writer's batch failed; trying again");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Failure::Retry(e) | Failure::Final(e) => break e,
            Failure::Isolate => {}
        }
    };
    match &error {
        StoreError::Unavailable(why) => writes.refused(why),
        _ => tracing::warn!(error = %error, writes = batch.len(), "the writer's batch failed"),
    }
    // Each caller gets the error: the first the error itself, the others
    // its like.
    let unavailable = error.unavailable().cloned();
    let message = error.to_string();
    let mut first = Some(error);
    for (request, reply) in batch.iter().zip(replies) {
        let e = first.take().unwrap_or_else(|| match &unavailable {
            Some(why) => StoreError::Unavailable(why.clone()),
            None => StoreError::Backend(message.clone().into()),
        });
        reply.send(request, Err(e));
    }
}

/// Why a batch failed.
enum Failure {
    /// As a whole, for a reason that may pass: try again.
    Retry(StoreError),
    /// For good.
    Final(StoreError),
    /// A write failed in a batch without savepoints (which rolled back):
    /// do it again with a savepoint per write.
    Isolate,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let retry = match &e {
            StoreError::Backend(inner) => {
                inner.downcast_ref::<sqlx::Error>().is_some_and(retryable)
            }
            _ => false,
        };
        if retry {
            Self::Retry(e)
        } else {
            Self::Final(e)
        }
    }
}

/// The writer's connection, opened if needed.
async fn connection<'c>(
    options: &PgConnectOptions,
    conn: &'c mut Option<PgConnection>,
) -> StoreResult<&'c mut PgConnection> {
    if conn.is_none() {
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
            .await
            .map_err(|_| StoreError::Backend("connecting the message writer timed out".into()))?
            .pg()?;
        *conn = Some(opened);
    }
    conn.as_mut()
        .ok_or_else(|| StoreError::Backend("no writer connection".into()))
}

/// Whether a write's own error spoils the whole batch: one the next
/// attempt may not meet (a deadlock, a lost connection), or a full disk.
fn spoils_batch(e: &StoreError) -> bool {
    match e {
        StoreError::Unavailable(_) => true,
        StoreError::Backend(inner) => inner.downcast_ref::<sqlx::Error>().is_some_and(retryable),
        _ => false,
    }
}

/// Stores `jobs` in one transaction on `conn`: each job's outcome, or the
/// batch's failure.
async fn commit_batch(
    conn: &mut PgConnection,
    jobs: &[Request],
    isolate: bool,
) -> Result<Vec<StoreResult<Written>>, Failure> {
    let mut tx = sqlx::Connection::begin(conn).await.pg()?;
    let mut set = LockSet::default();
    for job in jobs {
        match &job.write {
            Write::Post { message, .. } => {
                set.conversations
                    .insert(message.conversation_id.to_string());
            }
            Write::Update { message, .. } => {
                set.messages.insert(message.id.to_string());
            }
            Write::Mark { change, .. } => {
                // A message's reactions are counted under its lock, a
                // conversation's pins under the conversation's.
                set.messages.insert(change.message_id.to_string());
                if matches!(change.mark, Mark::Pin { .. }) {
                    set.conversations.insert(change.conversation_id.to_string());
                }
            }
            Write::Append { .. } => {}
        }
        set.users.extend(job.notify.iter().map(ToString::to_string));
    }
    let mut numbers: Numbers = lock(&mut tx, set).await?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut taken = Taken::default();
        let outcome = if isolate {
            let mut savepoint = tx.begin().await.pg()?;
            let outcome = run_job(&mut savepoint, &numbers, &mut taken, job).await;
            match &outcome {
                Ok(_) => savepoint.commit().await.pg()?,
                Err(e) if spoils_batch(e) => {}
                Err(_) => savepoint.rollback().await.pg()?,
            }
            outcome
        } else {
            run_job(&mut tx, &numbers, &mut taken, job).await
        };
        match outcome {
            Ok(written) => {
                numbers.keep(taken);
                outcomes.push(Ok(written));
            }
            Err(e) if spoils_batch(&e) => return Err(e.into()),
            // Without a savepoint the failed write spoiled the transaction
            // (dropped here, so rolled back).
            Err(_) if !isolate => return Err(Failure::Isolate),
            Err(e) => outcomes.push(Err(e)),
        }
    }
    store_numbers(&mut tx, &numbers).await?;
    let committing = Instant::now();
    tx.commit().await.pg()?;
    metrics::histogram!("store_group_commit_seconds").record(committing.elapsed().as_secs_f64());
    Ok(outcomes)
}

/// Stores one write of a batch.
async fn run_job(
    conn: &mut PgConnection,
    numbers: &Numbers,
    taken: &mut Taken,
    job: &Request,
) -> StoreResult<Written> {
    match &job.write {
        Write::Post { message, event } => {
            post_in(conn, numbers, taken, message, &job.notify, event, job.now)
                .await
                .map(|posted| Written::Posted(Box::new(posted)))
        }
        Write::Update { message, event } => {
            update_in(conn, numbers, taken, message, &job.notify, event, job.now)
                .await
                .map(Written::Appended)
        }
        Write::Append { event } => append(conn, numbers, taken, &job.notify, event, job.now)
            .await
            .map(Written::Appended),
        Write::Mark { change, event } => {
            mark_in(conn, numbers, taken, change, &job.notify, event, job.now)
                .await
                .map(|(marked, event)| Written::Marked(marked, event))
        }
    }
}
