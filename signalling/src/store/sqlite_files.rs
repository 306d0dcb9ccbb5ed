//! [`FileStore`] on SQLite, and the statements the message writer runs to
//! attach files to a message or forget them with it.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::files::{FileRecord, FileState, FileStore};
use super::messaging::Author;
use super::sqlite::SqliteStore;
use super::{StoreError, StoreResult};
use crate::ids::{AppId, ConversationId, FileId, MessageId, Timestamp};

const FILE_COLUMNS: &str = "id, app_id, conversation_id, uploader, name, content_type, size, \
     declared_sha256, sha256, state, message_id, preview_width, preview_height, created_at, \
     upload_expires_at";

fn parse<T: std::str::FromStr>(row: &SqliteRow, column: &str) -> StoreResult<T> {
    let text: String = row.try_get(column)?;
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("{column}: {text:?}")))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn file_from(row: &SqliteRow) -> StoreResult<FileRecord> {
    let size: i64 = row.try_get("size")?;
    let state: String = row.try_get("state")?;
    let message: Option<String> = row.try_get("message_id")?;
    let width: Option<i64> = row.try_get("preview_width")?;
    let height: Option<i64> = row.try_get("preview_height")?;
    let preview = match (width, height) {
        (Some(w), Some(h)) => Some((
            u32::try_from(w).map_err(|_| StoreError::Corrupt("preview_width".to_owned()))?,
            u32::try_from(h).map_err(|_| StoreError::Corrupt("preview_height".to_owned()))?,
        )),
        _ => None,
    };
    Ok(FileRecord {
        id: parse(row, "id")?,
        app_id: parse(row, "app_id")?,
        conversation_id: parse(row, "conversation_id")?,
        uploader: parse(row, "uploader")?,
        name: row.try_get("name")?,
        content_type: row.try_get("content_type")?,
        size: u64::try_from(size).map_err(|_| StoreError::Corrupt("size".to_owned()))?,
        declared_sha256: row.try_get("declared_sha256")?,
        sha256: row.try_get("sha256")?,
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
        created_at: Timestamp(row.try_get("created_at")?),
        upload_expires_at: Timestamp(row.try_get("upload_expires_at")?),
    })
}

/// Binds the files `ids` to message `message`, inside the writer's
/// transaction that stores it. Each must be ready, uploaded by `author`
/// to `conversation`, and attached to nothing yet; otherwise nothing is
/// bound and the message fails with `attachment_unavailable`. (The bot
/// uploads as its participant id, which is its application's id.)
pub(super) fn attach(
    tx: &rusqlite::Connection,
    ids: &[FileId],
    message: MessageId,
    conversation: ConversationId,
    author: Author,
) -> StoreResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let list = serde_json::to_string(&ids.iter().map(ToString::to_string).collect::<Vec<_>>())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let bound = tx
        .prepare_cached(
            "UPDATE files SET message_id = ?1 WHERE id IN (SELECT value FROM json_each(?2)) \
             AND conversation_id = ?3 AND uploader = CASE WHEN ?4 = 'app' THEN app_id ELSE ?4 END \
             AND state = 'ready' AND message_id IS NULL",
        )?
        .execute(rusqlite::params![
            message.to_string(),
            list,
            conversation.to_string(),
            author.key()
        ])?;
    if bound == ids.len() {
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
pub(super) fn discard_message_files(
    tx: &rusqlite::Connection,
    message: MessageId,
    now: Timestamp,
) -> StoreResult<()> {
    let [garbage, delete] = discarding("message_id = ?");
    let message = message.to_string();
    tx.prepare_cached(&garbage)?
        .execute(rusqlite::params![now.0, message])?;
    tx.prepare_cached(&delete)?
        .execute(rusqlite::params![message])?;
    Ok(())
}

/// Lets the readers of a forwarded message (`message` in `conversation`)
/// fetch its original's files `ids`.
pub(super) fn refer(
    tx: &rusqlite::Connection,
    ids: &[FileId],
    message: MessageId,
    conversation: ConversationId,
) -> StoreResult<()> {
    let list = serde_json::to_string(&ids.iter().map(ToString::to_string).collect::<Vec<_>>())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO file_references (file_id, conversation_id, message_id) \
         SELECT value, ?2, ?3 FROM json_each(?1) WHERE value IN (SELECT id FROM files) \
         ON CONFLICT DO NOTHING",
    )?
    .execute(rusqlite::params![
        list,
        conversation.to_string(),
        message.to_string()
    ])?;
    Ok(())
}

/// How long after its URL expired an upload may still land (a request that
/// started just before the expiry).
pub const UPLOAD_GRACE_MS: i64 = 60 * 60 * 1000;

/// Moves the files matching `condition` (one `?`, bound to `value`) to
/// the garbage list, due at once.
pub(super) async fn discard_where(
    tx: &mut sqlx::SqliteConnection,
    condition: &str,
    value: &str,
    now: Timestamp,
) -> StoreResult<u64> {
    let [garbage, delete] = discarding(condition);
    sqlx::query(&garbage)
        .bind(now.0)
        .bind(value)
        .execute(&mut *tx)
        .await?;
    Ok(sqlx::query(&delete)
        .bind(value)
        .execute(&mut *tx)
        .await?
        .rows_affected())
}

/// The two statements that move the files matching `condition` to the
/// garbage list: the first binds the time, then the condition's value;
/// the second only the condition's value.
pub(super) fn discarding(condition: &str) -> [String; 2] {
    [
        format!(
            "INSERT OR IGNORE INTO file_garbage (id, app_id, not_before, upload_until) \
             SELECT id, app_id, ?, upload_expires_at + {UPLOAD_GRACE_MS} FROM files WHERE {condition}"
        ),
        format!("DELETE FROM files WHERE {condition}"),
    ]
}

#[async_trait]
impl FileStore for SqliteStore {
    async fn create_file(&self, f: &FileRecord, quota: u64) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO files ({FILE_COLUMNS}) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, NULL, 'pending', NULL, NULL, NULL, ?, ? \
             WHERE (SELECT unregistered_at FROM applications WHERE id = ?) IS NULL \
             AND (? = 0 OR (SELECT COALESCE(SUM(size), 0) FROM files WHERE app_id = ?) + ? <= ?)"
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
        .bind(f.app_id.to_string())
        .bind(to_i64(quota))
        .bind(f.app_id.to_string())
        .bind(to_i64(f.size))
        .bind(to_i64(quota))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(inserted == 1)
    }

    async fn file_references(&self, id: FileId) -> StoreResult<Vec<(ConversationId, MessageId)>> {
        sqlx::query("SELECT conversation_id, message_id FROM file_references WHERE file_id = ?")
            .bind(id.to_string())
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|row| {
                Ok((
                    super::sqlite_messaging::parse(row, "conversation_id")?,
                    super::sqlite_messaging::parse(row, "message_id")?,
                ))
            })
            .collect()
    }

    async fn file(&self, id: FileId) -> StoreResult<Option<FileRecord>> {
        sqlx::query(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?
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
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE files SET state = 'ready', sha256 = ?, preview_width = ?, preview_height = ? \
             WHERE id = ? AND state = 'pending'",
        )
        .bind(sha256)
        .bind(preview.map(|p| i64::from(p.0)))
        .bind(preview.map(|p| i64::from(p.1)))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn discard_unattached(&self, id: FileId, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let n = discard_where(
            &mut tx,
            "id = ? AND message_id IS NULL",
            &id.to_string(),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn discard_stale(
        &self,
        pending_before: Timestamp,
        created_before: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let mut n = discard_where(
            &mut tx,
            "state = 'pending' AND upload_expires_at < ?",
            &pending_before.0.to_string(),
            now,
        )
        .await?;
        if let Some(before) = created_before {
            n += discard_where(&mut tx, "created_at < ?", &before.0.to_string(), now).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn garbage(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<(FileId, AppId)>> {
        sqlx::query(
            "SELECT id, app_id FROM file_garbage WHERE not_before <= ? ORDER BY not_before LIMIT ?",
        )
        .bind(now.0)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| Ok((parse(row, "id")?, parse(row, "app_id")?)))
        .collect()
    }

    async fn swept(&self, id: FileId, now: Timestamp) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        // Swept for good once no upload can land any more; otherwise once
        // more when the last one could have.
        sqlx::query("DELETE FROM file_garbage WHERE id = ? AND upload_until <= ?")
            .bind(id.to_string())
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE file_garbage SET not_before = upload_until WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn postpone_garbage(&self, id: FileId, until: Timestamp) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE file_garbage SET not_before = ? WHERE id = ?")
            .bind(until.0)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn app_usage(&self, app: AppId) -> StoreResult<u64> {
        let used: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(size), 0) FROM files WHERE app_id = ?")
                .bind(app.to_string())
                .fetch_one(self.pool())
                .await?;
        Ok(u64::try_from(used).unwrap_or(0))
    }
}
