//! Incoming webhooks: secret URLs that post into one conversation as the
//! application's bot. Every [`super::Store`] is one.

use async_trait::async_trait;

use super::StoreResult;
use crate::ids::{AppId, ConversationId, Timestamp, WebhookId};

/// An incoming webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingWebhook {
    /// Id.
    pub id: WebhookId,
    /// Its application.
    pub app_id: AppId,
    /// Where it posts.
    pub conversation_id: ConversationId,
    /// The application's name for it.
    pub name: String,
    /// SHA-256 of its URL's token, hex.
    pub token_digest: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it was revoked: it posts nothing after.
    pub revoked_at: Option<Timestamp>,
}

/// Persistence of incoming webhooks.
#[async_trait]
pub trait HookStore: Send + Sync {
    /// Stores a new webhook.
    async fn create_hook(&self, hook: &IncomingWebhook) -> StoreResult<()>;

    /// The webhook whose token has this digest (revoked ones too).
    async fn hook_by_digest(&self, digest: &str) -> StoreResult<Option<IncomingWebhook>>;

    /// An application's webhooks of one conversation, oldest first.
    async fn hooks_of(
        &self,
        app: AppId,
        conversation: ConversationId,
    ) -> StoreResult<Vec<IncomingWebhook>>;

    /// Revokes an application's webhook; false when it has none so (or it
    /// was revoked already).
    async fn revoke_hook(&self, app: AppId, id: WebhookId, now: Timestamp) -> StoreResult<bool>;
}
