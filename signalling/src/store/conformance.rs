//! The store conformance suite: what every store must do, whatever its
//! engine. Each test is a function over a [`Backend`] (the three store
//! traits together); [`conformance!`] runs all of them against one
//! implementation. They run against SQLite twice — a throwaway database
//! committed without fsync, and a durable file — and against PostgreSQL,
//! a fresh database per test on the server `TEST_POSTGRES` names.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::files::{FileRecord, FileState, FileStore};
use super::messaging::{
    Author, Conversation, GrantChange, MessageBody, MessageStore, NewMessage, PendingEvent, Posted,
    StoredMessage,
};
use super::pg::ThrowawayDatabase;
use super::sqlite_files::UPLOAD_GRACE_MS;
use super::{CodePurpose, NewApplication, PendingCode, PgStore, SqliteStore, Store};
use crate::auth::TokenKey;
use crate::ids::{AppId, ConversationId, FileId, MessageId, SubscriberId, Timestamp, UserId};

mod audit;
mod copies;
mod governance;
mod marks;
mod outbox;
mod threads;

use audit::{
    incoming_webhooks_are_found_listed_and_revoked, the_audit_log_appends_filters_pages_and_prunes,
};
use copies::a_forward_refers_to_files_it_does_not_take;
use governance::{exports_record_their_progress, retention_expires_what_no_hold_covers};
use marks::reactions_and_pins_count_in_their_transaction;
use outbox::the_webhook_outbox_enqueues_claims_and_records;
use threads::threads_page_count_and_follow;

/// Every store trait at once: what a store implementation offers.
pub(super) trait Backend: Store + MessageStore + FileStore {}

impl<T: Store + MessageStore + FileStore> Backend for T {}

/// Runs every conformance test against the store `$open` makes (an
/// expression giving the store and whatever must live as long as it).
macro_rules! conformance {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;

            conformance!(@tests $open;
                a_code_allows_its_tries_then_nothing,
                one_subscriber_many_applications_and_users_map_both_ways,
                quota_and_unregistration_are_kept_in_the_insert,
                garbage_is_swept_again_after_a_late_upload_could_land,
                grants_claims_and_unread_counts,
                a_bad_message_fails_alone_in_a_group_commit,
                a_retried_post_returns_the_first_message,
                history_pages_from_either_end,
                each_users_events_are_numbered_without_gaps,
                a_post_makes_its_author_a_member_in_its_transaction,
                search_finds_what_was_acknowledged_edited_text_and_no_deleted_message,
                reactions_and_pins_count_in_their_transaction,
                threads_page_count_and_follow,
                a_forward_refers_to_files_it_does_not_take,
                the_audit_log_appends_filters_pages_and_prunes,
                incoming_webhooks_are_found_listed_and_revoked,
                the_webhook_outbox_enqueues_claims_and_records,
                retention_expires_what_no_hold_covers,
                exports_record_their_progress,
            );
        }
    };
    (@tests $open:expr; $($test:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let (store, _keep) = $open.await;
                super::$test(store).await;
            }
        )*
    };
}

async fn sqlite_in_memory() -> (Arc<dyn Backend>, ()) {
    (Arc::new(SqliteStore::in_memory().await.unwrap()), ())
}

async fn sqlite_file() -> (Arc<dyn Backend>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("confer.db"))
        .await
        .unwrap();
    (Arc::new(store), dir)
}

/// The PostgreSQL server the tests use: a base URL without a database
/// name, from `TEST_POSTGRES`.
pub(super) fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES")
        .expect("set TEST_POSTGRES to a PostgreSQL base URL (scripts/test.sh starts one)")
}

/// A store on a database of its own, dropped after the test.
pub(super) async fn postgres() -> (Arc<dyn Backend>, ThrowawayDatabase) {
    let database = ThrowawayDatabase::create(&postgres_base()).await.unwrap();
    let store = PgStore::connect(database.url()).await.unwrap();
    (Arc::new(store), database)
}

conformance!(sqlite_in_memory, sqlite_in_memory());
conformance!(sqlite_file, sqlite_file());
conformance!(postgres, postgres());

pub(super) fn new_app(name: &str) -> NewApplication {
    let id = AppId::random();
    NewApplication {
        id,
        name: name.to_owned(),
        secret_hash: "hash".to_owned(),
        token_key: TokenKey::derive(id, "secret"),
    }
}

pub(super) async fn a_code_allows_its_tries_then_nothing(store: Arc<dyn Backend>) {
    let now = Timestamp(1_000);
    store
        .put_code(&PendingCode {
            purpose: CodePurpose::Register,
            email: "a@example.com".to_owned(),
            code_hash: "h".to_owned(),
            expires_at: Timestamp(2_000),
            max_tries: 2,
            created_at: now,
        })
        .await
        .unwrap();
    let spend = || store.spend_code_try(CodePurpose::Register, "a@example.com", now);
    assert_eq!(spend().await.unwrap().as_deref(), Some("h"));
    assert_eq!(spend().await.unwrap().as_deref(), Some("h"));
    assert_eq!(spend().await.unwrap(), None);
    let other = store
        .spend_code_try(CodePurpose::SignIn, "a@example.com", now)
        .await
        .unwrap();
    assert_eq!(other, None);
}

pub(super) async fn one_subscriber_many_applications_and_users_map_both_ways(
    store: Arc<dyn Backend>,
) {
    let now = Timestamp(1);
    let (s1, a1) = store
        .register_application(
            "a@example.com",
            SubscriberId::random(),
            &new_app("One"),
            now,
        )
        .await
        .unwrap();
    let (s2, a2) = store
        .register_application(
            "a@example.com",
            SubscriberId::random(),
            &new_app("One"),
            now,
        )
        .await
        .unwrap();
    assert_eq!(s1, s2);
    assert_ne!(a1.id, a2.id);
    assert_eq!(store.applications(Some(s1.id)).await.unwrap().len(), 2);

    let u = store
        .provision_user(a1.id, UserId::random(), "ext-1", "Ann", None, now)
        .await
        .unwrap();
    let again = store
        .provision_user(
            a1.id,
            UserId::random(),
            "ext-1",
            "Ann B.",
            Some("ann@x.org"),
            now,
        )
        .await
        .unwrap();
    assert_eq!(u.id, again.id);
    assert_eq!(again.name, "Ann B.");
    assert_eq!(
        store
            .user_by_external_id(a1.id, "ext-1")
            .await
            .unwrap()
            .map(|u| u.id),
        Some(u.id)
    );
    assert_eq!(store.user(a2.id, u.id).await.unwrap(), None);
}

pub(super) async fn app_with_conversation(store: &dyn Backend) -> (AppId, ConversationId) {
    let app = AppId::random();
    store
        .register_application(
            "f@example.com",
            SubscriberId::random(),
            &NewApplication {
                id: app,
                name: "F".to_owned(),
                secret_hash: "h".to_owned(),
                token_key: TokenKey::derive(app, "s"),
            },
            Timestamp(1),
        )
        .await
        .unwrap();
    let conversation = Conversation {
        id: ConversationId::random(),
        app_id: app,
        title: "t".to_owned(),
        is_group: true,
        displayed: true,
        all_users: false,
        app_key: None,
        context: None,
        last_seq: 0,
        last_activity: Timestamp(1),
        created_at: Timestamp(1),
    };
    store.create_conversation(&conversation, &[]).await.unwrap();
    (app, conversation.id)
}

pub(super) fn pending(app: AppId, conversation: ConversationId, size: u64) -> FileRecord {
    FileRecord {
        id: FileId::random(),
        app_id: app,
        conversation_id: conversation,
        uploader: UserId::random(),
        name: "a.bin".to_owned(),
        content_type: "application/octet-stream".to_owned(),
        size,
        declared_sha256: None,
        sha256: None,
        state: FileState::Pending,
        message_id: None,
        preview: None,
        created_at: Timestamp(1_000),
        upload_expires_at: Timestamp(2_000),
    }
}

/// The quota counts pending uploads; an unregistered application gets
/// no new file, and its files went to the garbage list with it.
pub(super) async fn quota_and_unregistration_are_kept_in_the_insert(store: Arc<dyn Backend>) {
    let (app, conversation) = app_with_conversation(&*store).await;
    let first = pending(app, conversation, 600);
    assert!(store.create_file(&first, 1_000).await.unwrap());
    assert!(
        !store
            .create_file(&pending(app, conversation, 401), 1_000)
            .await
            .unwrap()
    );
    assert!(
        store
            .create_file(&pending(app, conversation, 400), 1_000)
            .await
            .unwrap()
    );
    assert_eq!(store.app_usage(app).await.unwrap(), 1_000);

    assert!(
        store
            .unregister_application(app, Timestamp(3_000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_file(&pending(app, conversation, 1), 0)
            .await
            .unwrap()
    );
    assert_eq!(store.app_usage(app).await.unwrap(), 0);
    assert!(store.file(first.id).await.unwrap().is_none());
    assert_eq!(store.garbage(Timestamp(3_000), 10).await.unwrap().len(), 2);
}

/// A forgotten file's objects are deleted at once, and once more after
/// its upload URL (plus the grace) could have landed a late object;
/// a failed deletion waits without holding up the others.
pub(super) async fn garbage_is_swept_again_after_a_late_upload_could_land(store: Arc<dyn Backend>) {
    let (app, conversation) = app_with_conversation(&*store).await;
    let a = pending(app, conversation, 1);
    let b = pending(app, conversation, 1);
    store.create_file(&a, 0).await.unwrap();
    store.create_file(&b, 0).await.unwrap();
    let now = Timestamp(3_000);
    assert!(store.discard_unattached(a.id, now).await.unwrap());
    assert!(store.discard_unattached(b.id, now).await.unwrap());
    assert_eq!(store.garbage(now, 10).await.unwrap().len(), 2);

    store.swept(a.id, now).await.unwrap();
    store
        .postpone_garbage(b.id, Timestamp(4_000))
        .await
        .unwrap();
    assert!(store.garbage(now, 10).await.unwrap().is_empty());
    let retry = store.garbage(Timestamp(4_000), 10).await.unwrap();
    assert_eq!(retry, vec![(b.id, app)]);

    let last_landing = Timestamp(2_000 + UPLOAD_GRACE_MS);
    let due = store.garbage(last_landing, 10).await.unwrap();
    assert!(due.contains(&(a.id, app)), "swept again: {due:?}");
    store.swept(a.id, last_landing).await.unwrap();
    store.swept(b.id, last_landing).await.unwrap();
    assert!(
        store
            .garbage(Timestamp(i64::MAX), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A grant and the membership of the object's conversation change
/// together; a contextual conversation is listed and searched only for
/// a caller whose claims or grants name its object; unread counts leave
/// out messages addressed to others.
pub(super) async fn grants_claims_and_unread_counts(store: Arc<dyn Backend>) {
    let app_id = AppId::random();
    let (_, app) = store
        .register_application(
            "c@example.com",
            SubscriberId::random(),
            &NewApplication {
                id: app_id,
                name: "C".to_owned(),
                secret_hash: "h".to_owned(),
                token_key: TokenKey::derive(app_id, "s"),
            },
            Timestamp(1),
        )
        .await
        .unwrap();
    let mut users = Vec::new();
    for name in ["ann", "bob"] {
        let u = store
            .provision_user(app.id, UserId::random(), name, name, None, Timestamp(1))
            .await
            .unwrap();
        users.push(u.id);
    }
    let (ann, bob) = (users[0], users[1]);
    let now = Timestamp(2);
    let conversation = Conversation {
        id: ConversationId::random(),
        app_id: app.id,
        title: "order".to_owned(),
        is_group: true,
        displayed: true,
        all_users: false,
        app_key: None,
        context: Some("order:1".to_owned()),
        last_seq: 0,
        last_activity: now,
        created_at: now,
    };
    store
        .create_conversation(&conversation, &[ann, bob])
        .await
        .unwrap();
    let body = |text: &str, recipients: Option<Vec<UserId>>| MessageBody {
        text: text.to_owned(),
        recipients,
        ..MessageBody::default()
    };
    let event = seq_event();
    for (i, recipients) in [None, Some(vec![bob])].into_iter().enumerate() {
        let message = NewMessage {
            conversation_id: conversation.id,
            id: MessageId::random(),
            author: Author::App,
            client_id: format!("c{i}"),
            body: body("plan", recipients),
            joins: None,
        };
        store.post(&message, &[], event.clone(), now).await.unwrap();
    }
    let listed = |claims: &'static [&'static str], user: UserId| {
        let store = store.clone();
        async move {
            let claims: Vec<String> = claims.iter().map(|c| (*c).to_owned()).collect();
            let list = store
                .conversations_of(app.id, user, Some(&claims), None, 10)
                .await
                .unwrap();
            let found = store
                .search(app.id, user, Some(&claims), "plan", 10)
                .await
                .unwrap();
            (list.first().map(|e| e.unread), found.len())
        }
    };
    // Claimed: listed, one unread (the other is Bob's only), found.
    assert_eq!(listed(&["order:1"], ann).await, (Some(1), 2));
    assert_eq!(listed(&["order:1"], bob).await, (Some(2), 2));
    // A member without the claim or a grant: nothing.
    assert_eq!(listed(&[], ann).await, (None, 0));
    let granted = store
        .set_grant(app.id, ann, "order:1", true, now)
        .await
        .unwrap();
    assert_eq!(
        granted,
        GrantChange {
            conversation: Some(conversation.id),
            changed: true
        }
    );
    assert_eq!(listed(&[], ann).await, (Some(1), 2));
    let withdrawn = store
        .set_grant(app.id, ann, "order:1", false, now)
        .await
        .unwrap();
    assert!(withdrawn.changed);
    assert!(!store.is_member(conversation.id, ann).await.unwrap());
    assert!(!store.has_grant(app.id, ann, "order:1").await.unwrap());
    assert_eq!(listed(&["order:1"], ann).await, (None, 0));
    // Withdrawing again changes nothing.
    let again = store
        .set_grant(app.id, ann, "order:1", false, now)
        .await
        .unwrap();
    assert!(!again.changed);
}

/// Messages posted at once share commits; one that cannot be stored
/// (its conversation does not exist) fails alone and the others are
/// stored, each exactly once, numbered without gaps.
pub(super) async fn a_bad_message_fails_alone_in_a_group_commit(store: Arc<dyn Backend>) {
    let conversation = group_of_the_app(&*store).await;
    let now = Timestamp(2);
    let event = seq_event();
    let posts = (0..40).map(|i| {
        let store = store.clone();
        let event = event.clone();
        // Message 17 goes to a conversation that does not exist.
        let target = if i == 17 {
            ConversationId::random()
        } else {
            conversation.id
        };
        tokio::spawn(async move {
            store
                .post(&message(i, target, format!("m{i}")), &[], event, now)
                .await
        })
    });
    let results: Vec<_> = futures_util::future::join_all(posts).await;
    let mut seqs = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r.unwrap() {
            Ok(Posted { message, event, .. }) => {
                assert_ne!(i, 17);
                assert!(event.is_some());
                seqs.push(message.seq);
            }
            Err(_) => assert_eq!(i, 17, "only the bad message fails"),
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=39).collect::<Vec<u64>>());
    let stored = store
        .history(conversation.id, None, None, 100)
        .await
        .unwrap();
    assert_eq!(stored.len(), 39);
}

pub(super) fn message(i: usize, conversation_id: ConversationId, text: String) -> NewMessage {
    NewMessage {
        conversation_id,
        id: MessageId::random(),
        author: Author::App,
        client_id: format!("c{i}"),
        body: MessageBody {
            text,
            data: None,
            ..MessageBody::default()
        },
        joins: None,
    }
}

/// A registered application and an empty group conversation of it.
pub(super) async fn group_of_the_app(store: &dyn Backend) -> Conversation {
    let app_id = AppId::random();
    let (_, app) = store
        .register_application(
            "g@example.com",
            SubscriberId::random(),
            &NewApplication {
                id: app_id,
                name: "G".to_owned(),
                secret_hash: "h".to_owned(),
                token_key: TokenKey::derive(app_id, "s"),
            },
            Timestamp(1),
        )
        .await
        .unwrap();
    let now = Timestamp(2);
    let conversation = Conversation {
        id: ConversationId::random(),
        app_id: app.id,
        title: "t".to_owned(),
        is_group: true,
        displayed: true,
        all_users: false,
        app_key: None,
        context: None,
        last_seq: 0,
        last_activity: now,
        created_at: now,
    };
    store.create_conversation(&conversation, &[]).await.unwrap();
    conversation
}

/// An event that is only the message's number: `{"seq":N}`.
pub(super) fn seq_event() -> PendingEvent {
    PendingEvent {
        before_seq: "{\"seq\":".to_owned(),
        after_seq: "}".to_owned(),
    }
}

/// A search finds every message acknowledged before it, by its current
/// text: an edit's new words and not its old ones, nothing of a deleted
/// message (the SQLite store indexes in batches, apart from the commits).
pub(super) async fn search_finds_what_was_acknowledged_edited_text_and_no_deleted_message(
    store: Arc<dyn Backend>,
) {
    let conversation = group_of_the_app(&*store).await;
    let user = UserId::random();
    store
        .add_members(conversation.id, &[user], Timestamp(2))
        .await
        .unwrap();
    let found = |query: &'static str| {
        let store = store.clone();
        async move {
            store
                .search(conversation.app_id, user, Some(&[]), query, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.body.text)
                .collect::<Vec<_>>()
        }
    };
    let mut posted = Vec::new();
    for (i, text) in ["alpha one", "beta two", "alpha three"]
        .into_iter()
        .enumerate()
    {
        let m = message(i, conversation.id, text.to_owned());
        posted.push(
            store
                .post(&m, &[user], seq_event(), Timestamp(3))
                .await
                .unwrap()
                .message,
        );
    }
    assert_eq!(found("alpha").await.len(), 2);
    let mut edited = posted[0].clone();
    edited.body.text = "gamma one".to_owned();
    edited.edited_at = Some(Timestamp(4));
    store
        .update_message(&edited, &[user], "{}", Timestamp(4))
        .await
        .unwrap();
    let mut deleted = posted[1].clone();
    deleted.body.text = String::new();
    deleted.deleted_at = Some(Timestamp(5));
    store
        .update_message(&deleted, &[user], "{}", Timestamp(5))
        .await
        .unwrap();
    assert_eq!(found("alpha").await, ["alpha three"]);
    assert_eq!(found("gamma").await, ["gamma one"]);
    assert!(found("beta").await.is_empty());
    assert_eq!(found("one").await, ["gamma one"]);
}

/// A post retried with its client id finds the first message and writes
/// nothing: no second message, no second event.
pub(super) async fn a_retried_post_returns_the_first_message(store: Arc<dyn Backend>) {
    let conversation = group_of_the_app(&*store).await;
    let user = UserId::random();
    let m = message(1, conversation.id, "hello".to_owned());
    let first = store
        .post(&m, &[user], seq_event(), Timestamp(3))
        .await
        .unwrap();
    assert!(first.event.is_some());
    let mut again = m.clone();
    again.id = MessageId::random();
    let second = store
        .post(&again, &[user], seq_event(), Timestamp(4))
        .await
        .unwrap();
    assert_eq!(second.message.id, first.message.id);
    assert_eq!(second.message.seq, first.message.seq);
    assert!(second.event.is_none());
    assert_eq!(
        store
            .history(conversation.id, Some(0), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.event_head(user).await.unwrap(), 1);
}

/// History pages from the start (`after: 0`, oldest first) and from the
/// end (newest below `before`, still oldest first).
pub(super) async fn history_pages_from_either_end(store: Arc<dyn Backend>) {
    let conversation = group_of_the_app(&*store).await;
    for i in 1..=5 {
        let m = message(i, conversation.id, format!("m{i}"));
        store
            .post(&m, &[], seq_event(), Timestamp(3))
            .await
            .unwrap();
    }
    let seqs = |page: Vec<StoredMessage>| page.iter().map(|m| m.seq).collect::<Vec<_>>();
    let from_start = store
        .history(conversation.id, Some(0), None, 2)
        .await
        .unwrap();
    assert_eq!(seqs(from_start), [1, 2]);
    let next = store
        .history(conversation.id, Some(2), None, 2)
        .await
        .unwrap();
    assert_eq!(seqs(next), [3, 4]);
    let newest = store.history(conversation.id, None, None, 2).await.unwrap();
    assert_eq!(seqs(newest), [4, 5]);
    let before = store
        .history(conversation.id, None, Some(4), 2)
        .await
        .unwrap();
    assert_eq!(seqs(before), [2, 3]);
}

/// Every user's events are numbered from 1 without gaps, whatever the
/// interleaving of messages, edits and ephemeral appends; the log reads
/// back in order from any point.
pub(super) async fn each_users_events_are_numbered_without_gaps(store: Arc<dyn Backend>) {
    let conversation = group_of_the_app(&*store).await;
    let (a, b) = (UserId::random(), UserId::random());
    let mut posted = Vec::new();
    for i in 1..=4 {
        // Even messages reach both users, odd ones only `a`.
        let notify: Vec<UserId> = if i % 2 == 0 { vec![a, b] } else { vec![a] };
        let m = message(i, conversation.id, format!("m{i}"));
        posted.push(
            store
                .post(&m, &notify, seq_event(), Timestamp(3))
                .await
                .unwrap(),
        );
    }
    let mut edited = posted[1].message.clone();
    edited.body.text = "edited".to_owned();
    store
        .update_message(&edited, &[a, b], "{\"kind\":\"edited\"}", Timestamp(4))
        .await
        .unwrap();
    let numbers = |events: Vec<super::messaging::EventRecord>| {
        events.iter().map(|e| e.seq).collect::<Vec<_>>()
    };
    assert_eq!(
        numbers(store.events_after(a, 0, 100).await.unwrap()),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        numbers(store.events_after(b, 0, 100).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        numbers(store.events_after(a, 3, 100).await.unwrap()),
        [4, 5]
    );
    assert_eq!(store.event_head(a).await.unwrap(), 5);
    assert_eq!(store.event_head(b).await.unwrap(), 3);
    assert_eq!(
        store
            .message(conversation.id, edited.id)
            .await
            .unwrap()
            .map(|m| m.body.text),
        Some("edited".to_owned())
    );
}

/// A post that names a user to join makes it a member in the message's
/// own transaction: a member after the post, once, also when retried; a
/// post refused (here: a bad conversation) leaves it a non-member.
pub(super) async fn a_post_makes_its_author_a_member_in_its_transaction(store: Arc<dyn Backend>) {
    let conversation = group_of_the_app(&*store).await;
    let viewer = UserId::random();
    assert!(!store.is_member(conversation.id, viewer).await.unwrap());
    let mut m = message(1, conversation.id, "first".to_owned());
    m.joins = Some(viewer);
    store
        .post(&m, &[viewer], seq_event(), Timestamp(3))
        .await
        .unwrap();
    assert!(store.is_member(conversation.id, viewer).await.unwrap());
    assert_eq!(store.members(conversation.id).await.unwrap(), [viewer]);
    store
        .post(&m, &[viewer], seq_event(), Timestamp(4))
        .await
        .unwrap();
    assert_eq!(store.members(conversation.id).await.unwrap(), [viewer]);

    let other = UserId::random();
    let mut lost = message(2, ConversationId::random(), "nowhere".to_owned());
    lost.joins = Some(other);
    assert!(
        store
            .post(&lost, &[other], seq_event(), Timestamp(5))
            .await
            .is_err()
    );
    assert!(!store.is_member(lost.conversation_id, other).await.unwrap());
}
