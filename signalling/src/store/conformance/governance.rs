//! Retention and legal holds: periods set and read; messages expired with
//! their files unless a hold on their conversation, a member or their
//! author covers them; kept versions released with the last hold.

use std::sync::Arc;

use super::{Backend, group_of_the_app, message, pending, seq_event};
use crate::ids::{HoldId, Timestamp, UserId};
use crate::store::governance::{HeldCopy, LegalHold};
use crate::store::messaging::{Attachment, Author};

pub(in crate::store) async fn retention_expires_what_no_hold_covers(store: Arc<dyn Backend>) {
    let conversation = group_of_the_app(&*store).await;
    let (app, id) = (conversation.app_id, conversation.id);

    // Periods: the application's, a conversation's override, removed.
    store.set_retention(app, None, Some(30)).await.unwrap();
    store.set_retention(app, Some(id), Some(0)).await.unwrap();
    let policy = store.retention_of(app).await.unwrap();
    assert_eq!(
        (policy.days, policy.conversations.clone()),
        (Some(30), vec![(id, 0)])
    );
    assert!(
        store
            .retention_policies()
            .await
            .unwrap()
            .iter()
            .any(|p| p.app_id == Some(app))
    );
    store.set_retention(app, Some(id), None).await.unwrap();
    assert!(
        store
            .retention_of(app)
            .await
            .unwrap()
            .conversations
            .is_empty()
    );
    assert_eq!(store.conversation_ids(app).await.unwrap(), [id]);

    // Three messages at 10, 20, 30; the first with a file.
    let file = pending(app, id, 10);
    assert!(store.create_file(&file, 1 << 20).await.unwrap());
    assert!(
        store
            .mark_ready(file.id, &"0".repeat(64), None)
            .await
            .unwrap()
    );
    let mut first = message(1, id, "one".to_owned());
    first.author = Author::User(file.uploader);
    first.body.attachments = vec![Attachment {
        file_id: file.id,
        name: file.name.clone(),
        content_type: file.content_type.clone(),
        size: 10,
        sha256: "0".repeat(64),
        displayed: true,
        preview: None,
    }];
    store
        .post(&first, &[], seq_event(), Timestamp(10))
        .await
        .unwrap();
    let ann = UserId::random();
    for (i, at) in [(2, 20), (3, 30)] {
        let mut m = message(i, id, format!("m{i}"));
        m.author = Author::User(ann);
        store
            .post(&m, &[], seq_event(), Timestamp(at))
            .await
            .unwrap();
    }
    assert_eq!(
        store.file(file.id).await.unwrap().unwrap().message_id,
        Some(first.id)
    );

    // Expired before 25: the first two, the file to the garbage list.
    assert_eq!(
        store
            .expire_messages(id, Timestamp(25), Timestamp(40), 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .expire_messages(id, Timestamp(25), Timestamp(40), 10)
            .await
            .unwrap(),
        1
    );
    let left = store.history(id, Some(0), None, 10).await.unwrap();
    assert_eq!(left.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);
    assert!(store.file(file.id).await.unwrap().is_none());
    let garbage = store.garbage(Timestamp(i64::MAX / 2), 100).await.unwrap();
    assert!(garbage.iter().any(|(f, _)| *f == file.id), "{garbage:?}");

    // A hold on Ann covers what she wrote; not another conversation's.
    let hold = |conversation_id, user_id| LegalHold {
        id: HoldId::random(),
        app_id: app,
        conversation_id,
        user_id,
        reason: "case".to_owned(),
        created_at: Timestamp(50),
        released_at: None,
    };
    let on_ann = hold(None, Some(ann));
    store.create_hold(&on_ann).await.unwrap();
    assert!(store.is_held(id, &ann.to_string()).await.unwrap());
    assert!(!store.is_held(id, "app").await.unwrap());
    assert_eq!(
        store
            .expire_messages(id, Timestamp(100), Timestamp(100), 10)
            .await
            .unwrap(),
        0
    );
    // A kept version stays while the hold is live.
    let kept = HeldCopy {
        message_id: left[0].id,
        conversation_id: id,
        seq: 3,
        author: ann.to_string(),
        body: "{\"text\":\"m3\"}".to_owned(),
        created_at: Timestamp(30),
        why: "edited".to_owned(),
        kept_at: Timestamp(60),
    };
    store.keep_copy(&kept).await.unwrap();
    assert_eq!(store.release_copies(Timestamp(70)).await.unwrap(), 0);
    let copies = store
        .held_copies(id, Timestamp(0), Timestamp(100))
        .await
        .unwrap();
    assert_eq!(copies, std::slice::from_ref(&kept));
    assert!(
        store
            .held_copies(id, Timestamp(31), Timestamp(100))
            .await
            .unwrap()
            .is_empty()
    );

    // Ann a member: a message by the bot there is covered too.
    store.add_members(id, &[ann], Timestamp(80)).await.unwrap();
    assert!(store.is_held(id, "app").await.unwrap());
    store.remove_member(id, ann).await.unwrap();

    // A hold on the conversation; both released: the version goes, then
    // the message.
    let on_conversation = hold(Some(id), None);
    store.create_hold(&on_conversation).await.unwrap();
    assert!(store.is_held(id, "app").await.unwrap());
    assert_eq!(store.holds_of(app).await.unwrap().len(), 2);
    for h in [&on_ann, &on_conversation] {
        assert!(store.release_hold(app, h.id, Timestamp(90)).await.unwrap());
        assert!(!store.release_hold(app, h.id, Timestamp(91)).await.unwrap());
    }
    assert_eq!(
        store.holds_of(app).await.unwrap()[0].released_at,
        Some(Timestamp(90))
    );
    assert_eq!(store.release_copies(Timestamp(95)).await.unwrap(), 1);
    assert_eq!(
        store
            .expire_messages(id, Timestamp(100), Timestamp(100), 10)
            .await
            .unwrap(),
        1
    );
    assert!(
        store
            .history(id, Some(0), None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Events of the application's users (and the given ids) before a time.
    let bot = crate::messaging::bot_id(app);
    store
        .append_events(&[bot], "{}", Timestamp(5))
        .await
        .unwrap();
    store
        .append_events(&[bot], "{}", Timestamp(500))
        .await
        .unwrap();
    assert_eq!(
        store
            .prune_app_events(app, &[bot], Timestamp(100))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.events_after(bot, 0, 10).await.unwrap().len(), 1);
}

/// Exports: stored, read back, their progress updated, found by state and
/// age; a user's conversations listed (member or all-users).
pub(in crate::store) async fn exports_record_their_progress(store: Arc<dyn Backend>) {
    use crate::ids::{ExportId, SubscriberId};
    use crate::store::exports::ExportRecord;
    let conversation = group_of_the_app(&*store).await;
    let (app, id) = (conversation.app_id, conversation.id);
    let ann = UserId::random();
    assert!(
        store
            .member_conversations(app, ann)
            .await
            .unwrap()
            .is_empty()
    );
    store.add_members(id, &[ann], Timestamp(3)).await.unwrap();
    assert_eq!(store.member_conversations(app, ann).await.unwrap(), [id]);
    let mut export = ExportRecord {
        id: ExportId::random(),
        app_id: app,
        subscriber_id: SubscriberId::random(),
        conversation_id: None,
        user_id: Some(ann),
        from: Timestamp(0),
        to: Timestamp(1_000),
        state: "running".to_owned(),
        conversations_total: 0,
        conversations_done: 0,
        messages: 0,
        files: 0,
        bytes: 0,
        error: None,
        token: "t".to_owned(),
        created_at: Timestamp(10),
        updated_at: Timestamp(10),
        finished_at: None,
    };
    store.create_export(&export).await.unwrap();
    assert_eq!(store.export(export.id).await.unwrap().unwrap(), export);
    assert_eq!(
        store.exports_in("running", Timestamp(11)).await.unwrap(),
        [export.clone()]
    );
    assert!(
        store
            .exports_in("running", Timestamp(10))
            .await
            .unwrap()
            .is_empty()
    );
    export.state = "ready".to_owned();
    export.conversations_total = 1;
    export.conversations_done = 1;
    export.messages = 5;
    export.files = 2;
    export.bytes = 4096;
    export.updated_at = Timestamp(20);
    export.finished_at = Some(Timestamp(20));
    assert!(store.update_export(&export, "running").await.unwrap());
    // Only from the state it was read in: a stale copy changes nothing.
    assert!(!store.update_export(&export, "running").await.unwrap());
    assert_eq!(store.exports_of(app, 10).await.unwrap(), [export.clone()]);
    assert!(
        store
            .exports_in("running", Timestamp(100))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .exports_in("ready", Timestamp(21))
            .await
            .unwrap()
            .len(),
        1
    );
}
