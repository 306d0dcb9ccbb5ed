//! [`ThreadStore`] on SQLite.

use async_trait::async_trait;
use sqlx::Row as _;

use super::StoreResult;
use super::messaging::StoredMessage;
use super::sqlite::SqliteStore;
use super::sqlite_messaging::{MESSAGE_COLUMNS, message_from, parse, seq, to_i64};
use super::threads::{Scope, ThreadStore, ThreadSummary};
use crate::ids::{ConversationId, Timestamp, UserId};

#[async_trait]
impl ThreadStore for SqliteStore {
    async fn history_in(
        &self,
        conversation: ConversationId,
        scope: Scope,
        after: Option<u64>,
        before: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        // Paging backwards (no `after`) takes the newest below `before`;
        // `after: 0` pages forwards from the first message.
        let newest_first = after.is_none();
        let after = to_i64(after.unwrap_or(0));
        let before = to_i64(before.unwrap_or(u64::MAX >> 1));
        let order = if newest_first { "DESC" } else { "ASC" };
        let (filter, root) = match scope {
            Scope::All => ("", 0),
            Scope::TopLevel => ("AND thread_seq IS NULL", 0),
            Scope::Thread(root) => ("AND thread_seq = ?", to_i64(root)),
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND seq > ? AND seq < ? \
             {filter} ORDER BY seq {order} LIMIT ?"
        );
        let mut query = sqlx::query(&sql)
            .bind(conversation.to_string())
            .bind(after)
            .bind(before);
        if matches!(scope, Scope::Thread(_)) {
            query = query.bind(root);
        }
        let mut rows: Vec<StoredMessage> = query
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(message_from)
            .collect::<StoreResult<_>>()?;
        if newest_first {
            rows.reverse();
        }
        Ok(rows)
    }

    async fn thread_summaries(
        &self,
        conversation: ConversationId,
        from: u64,
        to: u64,
        user: UserId,
    ) -> StoreResult<Vec<ThreadSummary>> {
        sqlx::query(
            "SELECT m.thread_seq AS root, COUNT(*) AS replies, MAX(m.seq) AS last_seq, \
             MAX(m.created_at) AS last_at, \
             SUM(CASE WHEN m.seq > COALESCE(t.seq, 0) AND m.author <> ?4 THEN 1 ELSE 0 END) AS unread \
             FROM messages m LEFT JOIN thread_read_marks t ON t.conversation_id = m.conversation_id \
             AND t.root_seq = m.thread_seq AND t.user_id = ?4 \
             WHERE m.conversation_id = ?1 AND m.thread_seq >= ?2 AND m.thread_seq <= ?3 \
             AND m.deleted_at IS NULL GROUP BY m.thread_seq",
        )
        .bind(conversation.to_string())
        .bind(to_i64(from))
        .bind(to_i64(to))
        .bind(user.to_string())
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| {
            Ok(ThreadSummary {
                root_seq: seq(row, "root")?,
                replies: seq(row, "replies")?,
                last_seq: seq(row, "last_seq")?,
                last_at: Timestamp(row.try_get("last_at")?),
                unread: seq(row, "unread")?,
            })
        })
        .collect()
    }

    async fn mark_thread_read(
        &self,
        conversation: ConversationId,
        root_seq: u64,
        user: UserId,
        seq_no: u64,
    ) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "INSERT INTO thread_read_marks (conversation_id, root_seq, user_id, seq) VALUES (?, ?, ?, ?) \
             ON CONFLICT (conversation_id, root_seq, user_id) \
             DO UPDATE SET seq = MAX(thread_read_marks.seq, excluded.seq) RETURNING seq",
        )
        .bind(conversation.to_string())
        .bind(to_i64(root_seq))
        .bind(user.to_string())
        .bind(to_i64(seq_no))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        seq(&row, "seq")
    }

    async fn follow_thread(
        &self,
        conversation: ConversationId,
        root_seq: u64,
        user: UserId,
        follow: bool,
    ) -> StoreResult<()> {
        let sql = if follow {
            "INSERT INTO thread_followers (conversation_id, root_seq, user_id) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM thread_followers WHERE conversation_id = ? AND root_seq = ? AND user_id = ?"
        };
        let mut tx = self.write_tx().await?;
        sqlx::query(sql)
            .bind(conversation.to_string())
            .bind(to_i64(root_seq))
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn follows_thread(
        &self,
        conversation: ConversationId,
        root_seq: u64,
        user: UserId,
    ) -> StoreResult<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM thread_followers WHERE conversation_id = ? AND root_seq = ? AND user_id = ?",
        )
        .bind(conversation.to_string())
        .bind(to_i64(root_seq))
        .bind(user.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }

    async fn followed_threads(
        &self,
        user: UserId,
        limit: u32,
    ) -> StoreResult<Vec<(ConversationId, u64)>> {
        sqlx::query(
            "SELECT f.conversation_id, f.root_seq FROM thread_followers f \
             JOIN messages m ON m.conversation_id = f.conversation_id AND m.thread_seq = f.root_seq \
             WHERE f.user_id = ? GROUP BY f.conversation_id, f.root_seq \
             ORDER BY MAX(m.created_at) DESC, MAX(m.seq) DESC LIMIT ?",
        )
        .bind(user.to_string())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| Ok((parse(row, "conversation_id")?, seq(row, "root_seq")?)))
        .collect()
    }
}
