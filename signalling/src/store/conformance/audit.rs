//! The audit log: appended in order, read newest first per subscriber
//! with filters and pages, pruned by age.

use std::sync::Arc;

use super::Backend;
use crate::ids::{AppId, SubscriberId, Timestamp};
use crate::store::audit::{AuditEntry, AuditQuery};

pub(in crate::store) async fn the_audit_log_appends_filters_pages_and_prunes(
    store: Arc<dyn Backend>,
) {
    let (mine, theirs) = (SubscriberId::random(), SubscriberId::random());
    let app = AppId::random();
    let entry = |at: i64, subscriber, app_id, action: &str| AuditEntry {
        id: 0,
        at: Timestamp(at),
        subscriber_id: subscriber,
        app_id,
        actor: format!("subscriber:{subscriber}"),
        action: action.to_owned(),
        target: Some("user:x".to_owned()),
        source_ip: Some("10.0.0.1".to_owned()),
        details: Some(serde_json::json!({"context": "order:1"})),
    };
    let mut ids = Vec::new();
    for (at, subscriber, app_id, action) in [
        (10, mine, None, "subscriber.signed_in"),
        (20, mine, Some(app), "user.locked"),
        (30, theirs, None, "subscriber.signed_in"),
        (40, mine, Some(app), "grant.added"),
    ] {
        ids.push(
            store
                .append_audit(&entry(at, subscriber, app_id, action))
                .await
                .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let read = |q: AuditQuery, limit| {
        let store = store.clone();
        async move {
            store
                .audit_entries(mine, &q, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.action)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        read(AuditQuery::default(), 10).await,
        ["grant.added", "user.locked", "subscriber.signed_in"]
    );
    let full = store
        .audit_entries(mine, &AuditQuery::default(), 1)
        .await
        .unwrap();
    assert_eq!(
        full[0],
        AuditEntry {
            id: ids[3],
            ..entry(40, mine, Some(app), "grant.added")
        }
    );
    let q = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery::default();
        f(&mut q);
        q
    };
    assert_eq!(
        read(q(|q| q.app_id = Some(AppId::random())), 10)
            .await
            .len(),
        0
    );
    assert_eq!(
        read(
            AuditQuery {
                app_id: Some(app),
                ..AuditQuery::default()
            },
            10
        )
        .await
        .len(),
        2
    );
    assert_eq!(
        read(q(|q| q.action = Some("user.locked".to_owned())), 10).await,
        ["user.locked"]
    );
    assert_eq!(
        read(
            q(|q| {
                q.from = Some(Timestamp(20));
                q.to = Some(Timestamp(40));
            }),
            10
        )
        .await,
        ["user.locked"]
    );
    assert_eq!(
        read(
            AuditQuery {
                before_id: Some(ids[3]),
                ..AuditQuery::default()
            },
            1
        )
        .await,
        ["user.locked"]
    );
    assert_eq!(store.prune_audit(Timestamp(25)).await.unwrap(), 2);
    assert_eq!(read(AuditQuery::default(), 10).await, ["grant.added"]);
    assert_eq!(
        store
            .audit_entries(theirs, &AuditQuery::default(), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Incoming webhooks: found by their token's digest, listed per
/// conversation, revoked once and by their own application only.
pub(in crate::store) async fn incoming_webhooks_are_found_listed_and_revoked(
    store: Arc<dyn Backend>,
) {
    use crate::ids::WebhookId;
    use crate::store::hooks::IncomingWebhook;
    let conversation = super::group_of_the_app(&*store).await;
    let hook = IncomingWebhook {
        id: WebhookId::random(),
        app_id: conversation.app_id,
        conversation_id: conversation.id,
        name: "ci".to_owned(),
        token_digest: "d1".to_owned(),
        created_at: Timestamp(5),
        revoked_at: None,
    };
    store.create_hook(&hook).await.unwrap();
    assert_eq!(
        store.hook_by_digest("d1").await.unwrap(),
        Some(hook.clone())
    );
    assert_eq!(store.hook_by_digest("d2").await.unwrap(), None);
    assert_eq!(
        store
            .hooks_of(conversation.app_id, conversation.id)
            .await
            .unwrap(),
        std::slice::from_ref(&hook)
    );
    assert!(
        store
            .hooks_of(AppId::random(), conversation.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !store
            .revoke_hook(AppId::random(), hook.id, Timestamp(6))
            .await
            .unwrap()
    );
    assert!(
        store
            .revoke_hook(conversation.app_id, hook.id, Timestamp(6))
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_hook(conversation.app_id, hook.id, Timestamp(7))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .hook_by_digest("d1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(Timestamp(6))
    );
}
