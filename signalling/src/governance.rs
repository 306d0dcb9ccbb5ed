//! Retention and legal holds, as the subscriber that owns an application
//! sets them.
//!
//! **Retention.** An application may have a period in days, and each of
//! its conversations one of its own that overrides it (0: kept forever).
//! The sweep ([`Services::sweep_retention`], hourly by default) deletes
//! the messages older than their period — rows, search index, reactions,
//! pins, thread marks — and sends their files to the garbage list, whose
//! objects the file sweeper deletes from the local directory or the S3
//! bucket; events older than the shortest period leave the logs of the
//! application's users. Each conversation's deletion is in the audit log
//! (`retention.deleted`, actor `system:retention`).
//!
//! **Legal holds.** A hold names a conversation, or a user (every
//! conversation the user is in, all-users ones included, and whatever
//! the user wrote). While it is live, retention skips what it covers,
//! and when an author edits or deletes a covered message, the version
//! replaced is kept (`held_copies`) — hidden from users, who see the edit
//! or the delete as always — with a deleted message's files. Once no live
//! hold covers a kept version it is deleted, with those files.

use std::net::IpAddr;

use crate::audit::Audited;
use crate::error::Error;
use crate::ids::{AppId, ConversationId, HoldId, Timestamp, UserId};
use crate::server::Services;
use crate::store::governance::{LegalHold, RetentionPolicy};
use crate::store::{Application, Subscriber};

/// Longest retention period, in days (100 years).
pub const MAX_RETENTION_DAYS: u64 = 36_500;

/// Messages one statement of the sweep deletes.
const EXPIRE_BATCH: u32 = 500;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Messages deleted.
    pub messages: u64,
    /// Kept versions deleted (their holds released).
    pub copies: u64,
    /// Events deleted from users' logs.
    pub events: u64,
}

fn day_ms(days: u64) -> i64 {
    i64::try_from(days)
        .unwrap_or(i64::MAX)
        .saturating_mul(24 * 60 * 60 * 1000)
}

/// An action of `subscriber` on application `app`'s `target`.
fn by_owner(
    subscriber: &Subscriber,
    app: &Application,
    action: &'static str,
    target: String,
) -> Audited {
    Audited {
        subscriber_id: subscriber.id,
        app_id: Some(app.id),
        actor: format!("subscriber:{}", subscriber.id),
        action,
        target: Some(target),
        details: None,
    }
}

impl Services {
    /// The application `app_id` if `subscriber` owns it.
    ///
    /// # Errors
    /// `not_found` for another subscriber's or an unknown application.
    pub async fn owned_application(
        &self,
        subscriber: &Subscriber,
        app_id: AppId,
    ) -> Result<Application, Error> {
        self.tenancy
            .application(
                &crate::tenancy::Actor::Subscriber(subscriber.clone()),
                app_id,
            )
            .await
    }

    /// The audit target of a scope that names exactly one of a
    /// conversation and a user of `app`: `conversation:<id>` or
    /// `user:<id>`.
    ///
    /// # Errors
    /// `invalid_request` for neither or both; `not_found` for one of
    /// another application.
    pub async fn scope_target(
        &self,
        app: &Application,
        conversation: Option<ConversationId>,
        user: Option<UserId>,
    ) -> Result<String, Error> {
        match (conversation, user) {
            (Some(c), None) => {
                self.messaging
                    .store()
                    .conversation(app.id, c)
                    .await?
                    .ok_or(Error::NotFound("conversation"))?;
                Ok(format!("conversation:{c}"))
            }
            (None, Some(u)) => {
                self.store
                    .user(app.id, u)
                    .await?
                    .ok_or(Error::NotFound("user"))?;
                Ok(format!("user:{u}"))
            }
            _ => Err(Error::InvalidRequest(
                "exactly one of conversation_id and user_id".to_owned(),
            )),
        }
    }

    /// Sets the application's retention period (`conversation` `None`,
    /// 1 to [`MAX_RETENTION_DAYS`] days) or a conversation's override (0:
    /// forever); `days` `None` removes it. Recorded in the audit log.
    ///
    /// # Errors
    /// `invalid_request` for days out of range; `not_found` for a
    /// conversation of another application.
    pub async fn set_retention(
        &self,
        subscriber: &Subscriber,
        app: &Application,
        conversation: Option<ConversationId>,
        days: Option<u64>,
        ip: Option<IpAddr>,
    ) -> Result<RetentionPolicy, Error> {
        let least = u64::from(conversation.is_none());
        if let Some(d) = days
            && !(least..=MAX_RETENTION_DAYS).contains(&d)
        {
            return Err(Error::InvalidRequest(format!(
                "days: {least} to {MAX_RETENTION_DAYS}, or null"
            )));
        }
        if let Some(c) = conversation {
            self.messaging
                .store()
                .conversation(app.id, c)
                .await?
                .ok_or(Error::NotFound("conversation"))?;
        }
        self.store.set_retention(app.id, conversation, days).await?;
        let target = conversation.map_or_else(
            || format!("application:{}", app.id),
            |c| format!("conversation:{c}"),
        );
        let what = by_owner(subscriber, app, "retention.changed", target)
            .with(serde_json::json!({"days": days}));
        self.audit(what, ip).await;
        Ok(self.store.retention_of(app.id).await?)
    }

    /// Places a legal hold on a conversation or a user of `app`.
    ///
    /// # Errors
    /// `invalid_request` unless exactly one of them is given, or for a
    /// bad reason; `not_found` for one of another application.
    pub async fn place_hold(
        &self,
        subscriber: &Subscriber,
        app: &Application,
        conversation: Option<ConversationId>,
        user: Option<UserId>,
        reason: &str,
        ip: Option<IpAddr>,
    ) -> Result<LegalHold, Error> {
        if reason.trim().is_empty() || reason.chars().count() > 1000 {
            return Err(Error::InvalidRequest(
                "reason: 1 to 1000 characters, not only spaces".to_owned(),
            ));
        }
        let target = self.scope_target(app, conversation, user).await?;
        let hold = LegalHold {
            id: HoldId::random(),
            app_id: app.id,
            conversation_id: conversation,
            user_id: user,
            reason: reason.to_owned(),
            created_at: self.clock.now(),
            released_at: None,
        };
        self.store.create_hold(&hold).await?;
        let what = by_owner(subscriber, app, "legal_hold.placed", target)
            .with(serde_json::json!({"hold_id": hold.id, "reason": reason}));
        self.audit(what, ip).await;
        Ok(hold)
    }

    /// Releases a live hold of `app`: what it alone kept may be deleted
    /// from the next sweep on.
    ///
    /// # Errors
    /// `not_found` for an unknown, released or another application's hold.
    pub async fn release_hold(
        &self,
        subscriber: &Subscriber,
        app: &Application,
        id: HoldId,
        ip: Option<IpAddr>,
    ) -> Result<(), Error> {
        if !self
            .store
            .release_hold(app.id, id, self.clock.now())
            .await?
        {
            return Err(Error::NotFound("legal hold"));
        }
        let what = by_owner(subscriber, app, "legal_hold.released", format!("hold:{id}"));
        self.audit(what, ip).await;
        Ok(())
    }

    /// Deletes what retention no longer keeps, in every application with a
    /// period (see the module's docs); then the kept versions no live hold
    /// covers. File objects go on the file sweeper's next round.
    ///
    /// # Errors
    /// On store failure (what was deleted before stays deleted).
    pub async fn sweep_retention(&self) -> Result<Swept, Error> {
        let now = self.clock.now();
        let mut swept = Swept::default();
        for policy in self.store.retention_policies().await? {
            let Some(app_id) = policy.app_id else {
                continue;
            };
            let Some(app) = self.store.application(app_id).await? else {
                continue;
            };
            let mut shortest: Option<u64> = policy.days;
            let ids = match policy.days {
                // Every conversation: the application's period applies.
                Some(_) => self.store.conversation_ids(app_id).await?,
                None => policy.conversations.iter().map(|(c, _)| *c).collect(),
            };
            for conversation in ids {
                let days = policy
                    .conversations
                    .iter()
                    .find(|(c, _)| *c == conversation)
                    .map_or(policy.days, |(_, d)| (*d > 0).then_some(*d));
                let Some(days) = days else {
                    continue;
                };
                shortest = Some(shortest.map_or(days, |s| s.min(days)));
                let before = Timestamp(now.0.saturating_sub(day_ms(days)));
                let mut deleted = 0;
                loop {
                    let n = self
                        .store
                        .expire_messages(conversation, before, now, EXPIRE_BATCH)
                        .await?;
                    deleted += n;
                    if n < u64::from(EXPIRE_BATCH) {
                        break;
                    }
                }
                if deleted > 0 {
                    swept.messages += deleted;
                    let what = Audited {
                        subscriber_id: app.subscriber_id,
                        app_id: Some(app_id),
                        actor: "system:retention".to_owned(),
                        action: "retention.deleted",
                        target: Some(format!("conversation:{conversation}")),
                        details: Some(serde_json::json!({
                            "messages": deleted,
                            "before": before.to_rfc3339(),
                            "days": days,
                        })),
                    };
                    self.audit(what, None).await;
                }
            }
            if let Some(days) = shortest {
                let before = Timestamp(now.0.saturating_sub(day_ms(days)));
                let also = [
                    crate::messaging::bot_id(app_id),
                    crate::outbox::sink_id(app_id),
                ];
                swept.events += self.store.prune_app_events(app_id, &also, before).await?;
                // Webhook deliveries carry the messages too.
                self.store.prune_app_deliveries(app_id, before).await?;
            }
        }
        swept.copies = self.store.release_copies(now).await?;
        if swept.messages > 0 || swept.copies > 0 {
            tracing::info!(
                messages = swept.messages,
                copies = swept.copies,
                "retention deleted old messages"
            );
            self.files.files_discarded();
        }
        Ok(swept)
    }
}
