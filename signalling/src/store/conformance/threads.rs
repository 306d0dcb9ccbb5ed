//! Threads: scoped history, summaries with each reader's unread replies,
//! thread read marks, followers.

use std::sync::Arc;

use super::{Backend, group_of_the_app, message, seq_event};
use crate::ids::{Timestamp, UserId};
use crate::store::messaging::{Author, StoredMessage};
use crate::store::threads::Scope;

pub(in crate::store) async fn threads_page_count_and_follow(store: Arc<dyn Backend>) {
    let conversation = group_of_the_app(&*store).await;
    let (ann, bob) = (UserId::random(), UserId::random());
    let post = |i: usize, author: Author, root: Option<&StoredMessage>| {
        let store = store.clone();
        let mut m = message(i, conversation.id, format!("m{i}"));
        m.author = author;
        if let Some(root) = root {
            m.body.thread_id = Some(root.id);
            m.body.thread_seq = Some(root.seq);
        }
        async move {
            store
                .post(&m, &[ann], seq_event(), Timestamp(10 + i as i64))
                .await
                .unwrap()
                .message
        }
    };
    let root = post(1, Author::User(ann), None).await;
    post(2, Author::App, None).await;
    let r1 = post(3, Author::User(bob), Some(&root)).await;
    let r2 = post(4, Author::User(ann), Some(&root)).await;
    let r3 = post(5, Author::User(bob), Some(&root)).await;

    let seqs = |ms: Vec<StoredMessage>| ms.iter().map(|m| m.seq).collect::<Vec<_>>();
    let page = |scope, after, before, limit| {
        let store = store.clone();
        async move {
            store
                .history_in(conversation.id, scope, after, before, limit)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        seqs(page(Scope::All, None, None, 10).await),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(seqs(page(Scope::TopLevel, None, None, 10).await), [1, 2]);
    assert_eq!(
        seqs(page(Scope::Thread(1), None, None, 10).await),
        [3, 4, 5]
    );
    assert_eq!(seqs(page(Scope::Thread(1), None, Some(5), 1).await), [4]);
    assert_eq!(
        seqs(page(Scope::Thread(1), Some(3), None, 10).await),
        [4, 5]
    );

    let summary = |user| {
        let store = store.clone();
        async move {
            store
                .thread_summaries(conversation.id, 1, 2, user)
                .await
                .unwrap()
        }
    };
    let for_ann = summary(ann).await;
    assert_eq!(for_ann.len(), 1);
    assert_eq!(
        (
            for_ann[0].root_seq,
            for_ann[0].replies,
            for_ann[0].last_seq,
            for_ann[0].unread
        ),
        (1, 3, 5, 2)
    );
    assert_eq!(for_ann[0].last_at, r3.created_at);
    assert_eq!(summary(bob).await[0].unread, 1);
    assert_eq!(
        store
            .mark_thread_read(conversation.id, 1, ann, r1.seq)
            .await
            .unwrap(),
        3
    );
    assert_eq!(summary(ann).await[0].unread, 1);
    // Never back.
    assert_eq!(
        store
            .mark_thread_read(conversation.id, 1, ann, 2)
            .await
            .unwrap(),
        3
    );
    // A deleted reply is not counted.
    let mut gone = r2.clone();
    gone.body.text = String::new();
    gone.deleted_at = Some(Timestamp(20));
    store
        .update_message(&gone, &[ann], "{}", Timestamp(20))
        .await
        .unwrap();
    assert_eq!(summary(bob).await[0].replies, 2);

    assert!(store.followed_threads(bob, 10).await.unwrap().is_empty());
    store
        .follow_thread(conversation.id, 1, bob, true)
        .await
        .unwrap();
    store
        .follow_thread(conversation.id, 1, bob, true)
        .await
        .unwrap();
    assert!(store.follows_thread(conversation.id, 1, bob).await.unwrap());
    assert_eq!(
        store.followed_threads(bob, 10).await.unwrap(),
        [(conversation.id, 1)]
    );
    // A followed root without replies is not listed.
    store
        .follow_thread(conversation.id, 2, bob, true)
        .await
        .unwrap();
    assert_eq!(store.followed_threads(bob, 10).await.unwrap().len(), 1);
    store
        .follow_thread(conversation.id, 1, bob, false)
        .await
        .unwrap();
    assert!(!store.follows_thread(conversation.id, 1, bob).await.unwrap());
    assert!(store.followed_threads(bob, 10).await.unwrap().is_empty());
}
