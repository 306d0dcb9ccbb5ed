//! Incoming webhooks: an application makes a secret URL for one of its
//! conversations; whoever holds the URL posts messages there as the
//! application's bot (text, data, buttons), up to
//! `[limits] incoming_webhook_posts`, until the application revokes it.
//!
//! The URL's token is 256 random bits shown once; only its SHA-256 is
//! kept, so a stolen database posts nothing. An unknown, revoked or
//! unregistered application's token is answered `not_found` alike.
//! Making and revoking one are in the audit log.

use std::net::IpAddr;

use serde_json::Value;

use crate::audit::Audited;
use crate::error::Error;
use crate::ids::{ConversationId, WebhookId};
use crate::messaging::{Caller, Who};
use crate::server::Services;
use crate::store::Application;
use crate::store::hooks::IncomingWebhook;
use crate::store::messaging::{Action, MessageBody, StoredMessage};

/// What a post through a webhook carries.
#[derive(Debug, Clone, Default)]
pub struct HookPost {
    /// Text.
    pub text: String,
    /// Data for applications.
    pub data: Option<Value>,
    /// Buttons (clicks go to the application's bot).
    pub actions: Vec<Action>,
    /// The sender's name for it: a retry with the same one posts nothing
    /// new.
    pub client_id: Option<String>,
}

impl Services {
    /// Makes an incoming webhook for a conversation of `app`; returns it
    /// and its token (shown this once).
    ///
    /// # Errors
    /// `not_found` for a conversation of another application;
    /// `invalid_request` for a bad name.
    pub async fn create_hook(
        &self,
        app: &Application,
        conversation: ConversationId,
        name: &str,
        ip: Option<IpAddr>,
    ) -> Result<(IncomingWebhook, String), Error> {
        if name.is_empty() || name.chars().count() > 256 {
            return Err(Error::InvalidRequest(
                "name: 1 to 256 characters".to_owned(),
            ));
        }
        let caller = bot(app);
        self.messaging.readable(&caller, conversation).await?;
        let token = crate::auth::generate_secret();
        let hook = IncomingWebhook {
            id: WebhookId::random(),
            app_id: app.id,
            conversation_id: conversation,
            name: name.to_owned(),
            token_digest: crate::auth::digest(&[&token]),
            created_at: self.clock.now(),
            revoked_at: None,
        };
        self.store.create_hook(&hook).await?;
        let what = Audited::by_app_on(app, "webhook.created", format!("webhook:{}", hook.id))
            .with(serde_json::json!({"conversation_id": conversation, "name": name}));
        self.audit(what, ip).await;
        Ok((hook, token))
    }

    /// An application's webhooks of one conversation.
    ///
    /// # Errors
    /// `not_found` for a conversation of another application.
    pub async fn hooks(
        &self,
        app: &Application,
        conversation: ConversationId,
    ) -> Result<Vec<IncomingWebhook>, Error> {
        self.messaging.readable(&bot(app), conversation).await?;
        Ok(self.store.hooks_of(app.id, conversation).await?)
    }

    /// Revokes a webhook of `app`: its URL posts nothing more.
    ///
    /// # Errors
    /// `not_found` for another application's, an unknown or a revoked one.
    pub async fn revoke_hook(
        &self,
        app: &Application,
        id: WebhookId,
        ip: Option<IpAddr>,
    ) -> Result<(), Error> {
        if !self.store.revoke_hook(app.id, id, self.clock.now()).await? {
            return Err(Error::NotFound("webhook"));
        }
        let what = Audited::by_app_on(app, "webhook.revoked", format!("webhook:{id}"));
        self.audit(what, ip).await;
        Ok(())
    }

    /// Posts through the webhook whose token is `token`.
    ///
    /// # Errors
    /// `not_found` for a token of no live webhook; `rate_limited`; as
    /// `Messaging::send` for the message.
    pub async fn post_via_hook(&self, token: &str, post: HookPost) -> Result<StoredMessage, Error> {
        let unknown = || Error::NotFound("webhook");
        let hook = self
            .store
            .hook_by_digest(&crate::auth::digest(&[token]))
            .await?
            .filter(|h| h.revoked_at.is_none())
            .ok_or_else(unknown)?;
        let app = self
            .store
            .application(hook.app_id)
            .await?
            .filter(|a| a.unregistered_at.is_none())
            .ok_or_else(unknown)?;
        self.limits.webhook_post(hook.id)?;
        let client_id = post
            .client_id
            .unwrap_or_else(|| format!("webhook:{}", uuid::Uuid::new_v4()));
        let body = MessageBody {
            text: post.text,
            data: post.data,
            actions: post.actions,
            ..MessageBody::default()
        };
        self.messaging
            .send(&bot(&app), hook.conversation_id, &client_id, body)
            .await
    }
}

/// The application acting as its bot.
fn bot(app: &Application) -> Caller {
    Caller {
        app: app.clone(),
        who: Who::App,
    }
}
