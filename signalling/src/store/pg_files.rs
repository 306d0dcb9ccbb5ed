//! [`FileStore`] on PostgreSQL, and the statements the message writer runs
//! to attach files to a message or forget them with it.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres};

use super::files::{FileRecord, FileState, FileStore};
use super::messaging::Author;
use super::pg::{PgStore, get, parse_id};
use super::pg_error::PgResult as _;
use super::sqlite_files::UPLOAD_GRACE_MS;
use super::{StoreError, StoreResult};
use crate::ids::{AppId, ConversationId, FileId, MessageId, Timestamp};

const FILE_COLUMNS: &str = "id, app_id, conversation_id, uploader, name, content_type, size, \
     declared_sha256, sha256, state, message_id, preview_width, preview_height, created_at, \
     upload_expires_at";

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn file_from(row: &PgRow) -> StoreResult<FileRecord> {
    let size: i64 = get(row, "size")?;
    let state: String = get(row, "state")?;
    let message: Option<String> = get(row, "message_id")?;
    let width: Option<i64> = get(row, "preview_width")?;
    let height: Option<i64> = get(row, "preview_height")?;
    let preview = match (width, height) {
        (Some(w), Some(h)) => Some((
            u32::try_from(w).map_err(|_| StoreError::Corrupt("preview_width".to_owned()))?,
            u32::try_from(h).map_err(|_| StoreError::Corrupt("preview_height".to_owned()))?,
        )),
        _ => None,
    };
    Ok(FileRecord {
        id: parse_id(row, "id")?,
        app_id: parse_id(row, "app_id")?,
        conversation_id: parse_id(row, "conversation_id")?,
        uploader: parse_id(row, "uploader")?,
        name: get(row, "name")?,
        content_type: get(row, "content_type")?,
        size: u64::try_from(size).map_err(|_| StoreError::Corrupt("size".to_owned()))?,
        declared_sha256: get(row, "declared_sha256")?,
        sha256: get(row, "sha256")?,
        state: match state.as_str() {
            "pending" => FileState::Pending,
            "ready" => FileState::Ready,
            other => return Err(StoreError::Corrupt(format!("file state {other:?}"))),
        },
        message_id: message
            .map(|m| m.parse::<MessageId>())
            .transpose()
            .map_err(|_| StoreError::Corrupt("message_id".to_owned()))?,
        preview,
        created_at: Timestamp(get(row, "created_at")?),
        upload_expires_at: Timestamp(get(row, "upload_expires_at")?),
    })
}

/// Binds the files `ids` to message `message`, inside the writer's
/// transaction that stores it. Each must be ready, uploaded by `author`
/// to `conversation`, and attached to nothing yet; otherwise nothing is
/// bound and the message fails with `attachment_unavailable`. (The bot
/// uploads as its participant id, which is its application's id.)
/// Lets the readers of a forwarded message (`message` in `conversation`)
/// fetch its original's files `ids`.
pub(super) async fn refer(
    tx: &mut PgConnection,
    ids: &[FileId],
    message: MessageId,
    conversation: ConversationId,
) -> StoreResult<()> {
    let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
    sqlx::query(
        "INSERT INTO file_references (file_id, conversation_id, message_id) \
         SELECT f.id, $2, $3 FROM files f WHERE f.id = ANY($1) ON CONFLICT DO NOTHING",
    )
    .bind(list)
    .bind(conversation.to_string())
    .bind(message.to_string())
    .execute(&mut *tx)
    .await
    .pg()?;
    Ok(())
}

pub(super) async fn attach(
    tx: &mut PgConnection,
    ids: &[FileId],
    message: MessageId,
    conversation: ConversationId,
    author: Author,
) -> StoreResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let bound = sqlx::query(
        "UPDATE files SET message_id = $1 WHERE id = ANY($2) \
         AND conversation_id = $3 AND uploader = CASE WHEN $4 = 'app' THEN app_id ELSE $4 END \
         AND state = 'ready' AND message_id IS NULL",
    )
    .bind(message.to_string())
    .bind(list)
    .bind(conversation.to_string())
    .bind(author.key())
    .execute(&mut *tx)
    .await
    .pg()?
    .rows_affected();
    if usize::try_from(bound).is_ok_and(|n| n == ids.len()) {
        Ok(())
    } else {
        Err(StoreError::Conflict(
            crate::error::Code::AttachmentUnavailable,
            "an attached file is not ready, not yours, in another conversation or already \
             attached to a message"
                .to_owned(),
        ))
    }
}

/// Forgets the files of a deleted message, inside the writer's
/// transaction that deletes it: their objects go to the garbage list.
pub(super) async fn discard_message_files(
    tx: &mut PgConnection,
    message: MessageId,
    now: Timestamp,
) -> StoreResult<()> {
    discard_where(tx, "message_id = $2", message.to_string(), now).await?;
    Ok(())
}

/// Moves the files matching `condition` (which names `value` as `$2`) to
/// the garbage list, due at `now`, in one statement; returns how many.
pub(super) async fn discard_where<T>(
    tx: &mut PgConnection,
    condition: &str,
    value: T,
    now: Timestamp,
) -> StoreResult<u64>
where
    T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
{
    let gone: i64 = sqlx::query_scalar(&format!(
        "WITH gone AS (DELETE FROM files WHERE {condition} \
                       RETURNING id, app_id, upload_expires_at), \
              listed AS (INSERT INTO file_garbage (id, app_id, not_before, upload_until) \
                         SELECT id, app_id, $1, upload_expires_at + {UPLOAD_GRACE_MS} FROM gone \
                         ON CONFLICT (id) DO NOTHING) \
         SELECT COUNT(*) FROM gone"
    ))
    .bind(now.0)
    .bind(value)
    .fetch_one(&mut *tx)
    .await
    .pg()?;
    Ok(u64::try_from(gone).unwrap_or(0))
}

#[async_trait]
impl FileStore for PgStore {
    async fn create_file(&self, f: &FileRecord, quota: u64) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await.pg()?;
        // The application's row, locked: concurrent uploads of one
        // application are counted against the quota one after the other,
        // and an unregistration waits for them (or they for it).
        let registered: Option<bool> = sqlx::query_scalar(
            "SELECT unregistered_at IS NULL FROM applications WHERE id = $1 FOR UPDATE",
        )
        .bind(f.app_id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .pg()?;
        if registered != Some(true) {
            return Ok(false);
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO files ({FILE_COLUMNS}) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, NULL, 'pending', NULL, NULL, NULL, $9, $10 \
             WHERE $11 = 0 OR (SELECT COALESCE(SUM(size), 0) FROM files WHERE app_id = $2) + $7 <= $11"
        ))
        .bind(f.id.to_string())
        .bind(f.app_id.to_string())
        .bind(f.conversation_id.to_string())
        .bind(f.uploader.to_string())
        .bind(&f.name)
        .bind(&f.content_type)
        .bind(to_i64(f.size))
        .bind(&f.declared_sha256)
        .bind(f.created_at.0)
        .bind(f.upload_expires_at.0)
        .bind(to_i64(quota))
        .execute(&mut *tx)
        .await
        .pg()?
        .rows_affected();
        tx.commit().await.pg()?;
        Ok(inserted == 1)
    }

    async fn file_references(&self, id: FileId) -> StoreResult<Vec<(ConversationId, MessageId)>> {
        let rows = sqlx::query(
            "SELECT conversation_id, message_id FROM file_references WHERE file_id = $1",
        )
        .bind(id.to_string())
        .fetch_all(self.pool())
        .await
        .pg()?;
        rows.iter()
            .map(|row| {
                Ok((
                    parse_id(row, "conversation_id")?,
                    parse_id(row, "message_id")?,
                ))
            })
            .collect()
    }

    async fn file(&self, id: FileId) -> StoreResult<Option<FileRecord>> {
        sqlx::query(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await
            .pg()?
            .as_ref()
            .map(file_from)
            .transpose()
    }

    async fn mark_ready(
        &self,
        id: FileId,
        sha256: &str,
        preview: Option<(u32, u32)>,
    ) -> StoreResult<bool> {
        let n = sqlx::query(
            "UPDATE files SET state = 'ready', sha256 = $1, preview_width = $2, preview_height = $3 \
             WHERE id = $4 AND state = 'pending'",
        )
        .bind(sha256)
        .bind(preview.map(|p| i64::from(p.0)))
        .bind(preview.map(|p| i64::from(p.1)))
        .bind(id.to_string())
        .execute(self.pool())
        .await
        .pg()?
        .rows_affected();
        Ok(n == 1)
    }

    async fn discard_unattached(&self, id: FileId, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.pool().acquire().await.pg()?;
        let n = discard_where(
            &mut tx,
            "id = $2 AND message_id IS NULL",
            id.to_string(),
            now,
        )
        .await?;
        Ok(n == 1)
    }

    async fn discard_stale(
        &self,
        pending_before: Timestamp,
        created_before: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let mut tx = self.pool().begin().await.pg()?;
        let mut n = discard_where(
            &mut tx,
            "state = 'pending' AND upload_expires_at < $2",
            pending_before.0,
            now,
        )
        .await?;
        if let Some(before) = created_before {
            n += discard_where(&mut tx, "created_at < $2", before.0, now).await?;
        }
        tx.commit().await.pg()?;
        Ok(n)
    }

    async fn garbage(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<(FileId, AppId)>> {
        sqlx::query(
            "SELECT id, app_id FROM file_garbage WHERE not_before <= $1 \
             ORDER BY not_before LIMIT $2",
        )
        .bind(now.0)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .pg()?
        .iter()
        .map(|row| Ok((parse_id(row, "id")?, parse_id(row, "app_id")?)))
        .collect()
    }

    async fn swept(&self, id: FileId, now: Timestamp) -> StoreResult<()> {
        let mut tx = self.pool().begin().await.pg()?;
        // Swept for good once no upload can land any more; otherwise once
        // more when the last one could have.
        sqlx::query("DELETE FROM file_garbage WHERE id = $1 AND upload_until <= $2")
            .bind(id.to_string())
            .bind(now.0)
            .execute(&mut *tx)
            .await
            .pg()?;
        sqlx::query("UPDATE file_garbage SET not_before = upload_until WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .pg()?;
        tx.commit().await.pg()?;
        Ok(())
    }

    async fn postpone_garbage(&self, id: FileId, until: Timestamp) -> StoreResult<()> {
        sqlx::query("UPDATE file_garbage SET not_before = $1 WHERE id = $2")
            .bind(until.0)
            .bind(id.to_string())
            .execute(self.pool())
            .await
            .pg()?;
        Ok(())
    }

    async fn app_usage(&self, app: AppId) -> StoreResult<u64> {
        let used: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(size), 0)::bigint FROM files WHERE app_id = $1",
        )
        .bind(app.to_string())
        .fetch_one(self.pool())
        .await
        .pg()?;
        Ok(u64::try_from(used).unwrap_or(0))
    }
}
