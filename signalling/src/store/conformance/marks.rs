//! Reactions and pins: counted in the writer's transaction, so that
//! concurrent changes each see the one before; limits; what an edit keeps
//! and a delete removes.

use std::sync::Arc;

use super::{Backend, group_of_the_app, message, seq_event};
use crate::ids::{Timestamp, UserId};
use crate::store::messaging::{Author, Mark, MarkChange, Marked, PendingEvent, StoredMessage};

/// An event whose text is its count.
fn count_event() -> PendingEvent {
    PendingEvent {
        before_seq: String::new(),
        after_seq: String::new(),
    }
}

fn reaction(m: &StoredMessage, emoji: &str, user: UserId, on: bool) -> MarkChange {
    MarkChange {
        conversation_id: m.conversation_id,
        message_id: m.id,
        seq: m.seq,
        mark: Mark::Reaction {
            emoji: emoji.to_owned(),
            user,
            limit: 3,
        },
        on,
    }
}

fn pin(m: &StoredMessage, on: bool) -> MarkChange {
    MarkChange {
        conversation_id: m.conversation_id,
        message_id: m.id,
        seq: m.seq,
        mark: Mark::Pin {
            by: Author::App,
            limit: 2,
        },
        on,
    }
}

pub(in crate::store) async fn reactions_and_pins_count_in_their_transaction(
    store: Arc<dyn Backend>,
) {
    let conversation = group_of_the_app(&*store).await;
    let reader = UserId::random();
    let mut posted = Vec::new();
    for i in 0..4 {
        let m = message(i, conversation.id, format!("m{i}"));
        posted.push(
            store
                .post(&m, &[reader], seq_event(), Timestamp(3))
                .await
                .unwrap()
                .message,
        );
    }
    let first = posted[0].clone();

    // Twenty users at once: each event carries another count, the last 20.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        let change = reaction(&first, "👍", UserId::random(), true);
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::oneshot::channel::<String>();
            let marked = store
                .mark_then(
                    &change,
                    &[reader],
                    count_event(),
                    Timestamp(4),
                    Box::new(move |_, event| {
                        let _ = tx.send(event.to_string());
                    }),
                )
                .await
                .unwrap();
            (marked, rx.await.unwrap())
        }));
    }
    let mut counts = Vec::new();
    for task in tasks {
        let (marked, event) = task.await.unwrap();
        let Marked::Changed { count, seqs } = marked else {
            panic!("{marked:?}");
        };
        assert_eq!(event, count.to_string());
        assert_eq!(seqs.len(), 1);
        counts.push(count);
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=20).collect::<Vec<u64>>());

    // The same change again writes nothing; the limit is on distinct ones.
    let ann = UserId::random();
    let mark = |c: MarkChange| {
        let store = store.clone();
        async move {
            store
                .mark_then(
                    &c,
                    &[reader],
                    count_event(),
                    Timestamp(5),
                    Box::new(|_, _| {}),
                )
                .await
                .unwrap()
        }
    };
    assert!(matches!(
        mark(reaction(&first, "a", ann, true)).await,
        Marked::Changed { count: 1, .. }
    ));
    assert_eq!(
        mark(reaction(&first, "a", ann, true)).await,
        Marked::Unchanged
    );
    assert_eq!(
        mark(reaction(&first, "zzz", ann, false)).await,
        Marked::Unchanged
    );
    assert!(matches!(
        mark(reaction(&first, "b", ann, true)).await,
        Marked::Changed { .. }
    ));
    assert_eq!(mark(reaction(&first, "c", ann, true)).await, Marked::Full);
    assert!(matches!(
        mark(reaction(&first, "b", reader, true)).await,
        Marked::Changed { count: 2, .. }
    ));
    assert!(matches!(
        mark(reaction(&first, "b", ann, false)).await,
        Marked::Changed { count: 1, .. }
    ));

    let read = store.reactions(first.conversation_id, 1, 4).await.unwrap();
    assert_eq!(read.len(), 22);
    let emojis: Vec<&str> = read.iter().map(|r| r.emoji.as_str()).collect();
    assert_eq!(emojis[..20], ["👍"; 20]);
    assert_eq!(emojis[20..], ["a", "b"]);

    // Pins: at most two; an edit keeps reactions and pin, a delete takes
    // both.
    assert!(matches!(
        mark(pin(&posted[1], true)).await,
        Marked::Changed { count: 1, .. }
    ));
    assert!(matches!(
        mark(pin(&first, true)).await,
        Marked::Changed { count: 2, .. }
    ));
    assert_eq!(mark(pin(&posted[2], true)).await, Marked::Full);
    assert_eq!(mark(pin(&first, true)).await, Marked::Unchanged);
    let pins = store.pins(first.conversation_id).await.unwrap();
    assert_eq!(pins.len(), 2);
    let mut edited = first.clone();
    edited.body.text = "edited".to_owned();
    edited.edited_at = Some(Timestamp(6));
    store
        .update_message(&edited, &[reader], "{}", Timestamp(6))
        .await
        .unwrap();
    assert_eq!(
        store
            .reactions(first.conversation_id, 1, 1)
            .await
            .unwrap()
            .len(),
        22
    );
    let mut deleted = edited.clone();
    deleted.body = crate::store::messaging::MessageBody::default();
    deleted.deleted_at = Some(Timestamp(7));
    store
        .update_message(&deleted, &[reader], "{}", Timestamp(7))
        .await
        .unwrap();
    assert!(
        store
            .reactions(first.conversation_id, 1, 4)
            .await
            .unwrap()
            .is_empty()
    );
    let pins = store.pins(first.conversation_id).await.unwrap();
    assert_eq!(
        pins.iter().map(|p| p.seq).collect::<Vec<_>>(),
        [posted[1].seq]
    );
    assert!(matches!(
        mark(pin(&posted[2], true)).await,
        Marked::Changed { count: 2, .. }
    ));

    // What the application chose: the defaults until it chooses.
    use crate::store::marks::ConversationSettings;
    let defaults = store.settings(conversation.id).await.unwrap();
    assert_eq!(defaults, ConversationSettings::default());
    let chosen = ConversationSettings {
        pins_app_only: true,
        mention_all: false,
    };
    store.set_settings(conversation.id, chosen).await.unwrap();
    assert_eq!(store.settings(conversation.id).await.unwrap(), chosen);
    store.set_settings(conversation.id, defaults).await.unwrap();
    assert_eq!(store.settings(conversation.id).await.unwrap(), defaults);
}
