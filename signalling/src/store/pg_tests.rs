//! Tests of the PostgreSQL store's own mechanics, beside the conformance
//! suite that every store passes: migrations raced by nodes starting at
//! once, event numbers shared by two nodes, the search configuration, and
//! what PostgreSQL's errors become. They need the server that
//! `TEST_POSTGRES` names, as the suite does.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::conformance::{group_of_the_app, message, postgres_base, seq_event};
use super::messaging::MessageStore as _;
use super::pg::{PgStore, ThrowawayDatabase};
use super::pg_error::PgResult as _;
use super::pg_messaging::search_words;
use super::{Store as _, StoreError, Unavailable};
use crate::ids::{Timestamp, UserId};

/// A store on a fresh database, and the database.
async fn store() -> (PgStore, ThrowawayDatabase) {
    let database = ThrowawayDatabase::create(&postgres_base()).await.unwrap();
    (PgStore::connect(database.url()).await.unwrap(), database)
}

/// Nodes of a cluster start at the same moment: both migrate the same
/// fresh database, one after the other under the migrator's lock, and
/// both connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_starting_at_once_both_migrate_and_connect() {
    let database = ThrowawayDatabase::create(&postgres_base()).await.unwrap();
    let (a, b) = tokio::join!(
        PgStore::connect(database.url()),
        PgStore::connect(database.url())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(a.pool())
        .await
        .unwrap();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations_postgres"))
        .unwrap()
        .count();
    assert_eq!(applied, i64::try_from(migrations).unwrap());
    a.close().await;
    b.close().await;
}

/// Two nodes (two stores on one database) append to the same users at
/// once: every user's log is numbered 1..=n, each number given once, and
/// the numbers each node got back are the ones stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_number_the_same_users_without_gaps_or_repeats() {
    let (a, database) = store().await;
    let b = PgStore::connect(database.url()).await.unwrap();
    let users: Vec<UserId> = (0..5).map(|_| UserId::random()).collect();
    let rounds = 60;
    let mut tasks = Vec::new();
    for (node, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for i in 0..rounds {
            let store = store.clone();
            // Overlapping sets, in different orders on each node.
            let mut notify: Vec<UserId> = users.iter().copied().skip(i % 3).collect();
            if node == 1 {
                notify.reverse();
            }
            tasks.push(tokio::spawn(async move {
                let payload = format!("{{\"node\":{node},\"i\":{i}}}");
                store
                    .append_events(&notify, &payload, Timestamp(1))
                    .await
                    .unwrap()
            }));
        }
    }
    let mut given: Vec<(UserId, u64)> = Vec::new();
    for task in tasks {
        given.extend(task.await.unwrap());
    }
    for user in &users {
        let mut mine: Vec<u64> = given
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, n)| *n)
            .collect();
        mine.sort_unstable();
        let n = u64::try_from(mine.len()).unwrap();
        assert_eq!(mine, (1..=n).collect::<Vec<_>>(), "numbers given");
        let stored: Vec<u64> = a
            .events_after(*user, 0, 1000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(stored, mine, "numbers stored");
        assert_eq!(b.event_head(*user).await.unwrap(), n);
    }
    a.close().await;
    b.close().await;
}

/// The `russian` configuration finds Russian words by other forms of
/// them and English ones by their stem or a prefix; a stop word is still
/// found; no input is query syntax.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_stems_russian_and_english_and_takes_any_input() {
    let (store, _database) = store().await;
    let conversation = group_of_the_app(&store).await;
    let user = UserId::random();
    store
        .add_members(conversation.id, &[user], Timestamp(2))
        .await
        .unwrap();
    for (i, text) in [
        "Договоры подписаны",
        "The contracts were signed yesterday",
        "не забыть (важно!)",
    ]
    .into_iter()
    .enumerate()
    {
        let m = message(i, conversation.id, text.to_owned());
        store
            .post(&m, &[user], seq_event(), Timestamp(3))
            .await
            .unwrap();
    }
    let found = |query: &'static str| {
        let store = store.clone();
        async move {
            store
                .search(conversation.app_id, user, None, query, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.body.text)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found("договор").await, ["Договоры подписаны"]);
    assert_eq!(found("подписан").await, ["Договоры подписаны"]);
    assert_eq!(found("договоров подписанных").await, ["Договоры подписаны"]);
    assert_eq!(
        found("contract").await,
        ["The contracts were signed yesterday"]
    );
    assert_eq!(
        found("signing").await,
        ["The contracts were signed yesterday"]
    );
    assert_eq!(found("yest").await, ["The contracts were signed yesterday"]);
    assert_eq!(found("не").await, ["не забыть (важно!)"]);
    assert!(found("договор contract").await.is_empty());
    for hostile in [
        "'",
        "\"",
        "&",
        "|",
        "!",
        ":",
        "(",
        ")",
        "':*",
        "a & | b",
        "!(x",
        "\\",
        "договор:*'",
        "(важно!)",
        "<->",
        "",
    ] {
        let result = store
            .search(conversation.app_id, user, None, hostile, 10)
            .await;
        assert!(result.is_ok(), "{hostile:?}: {result:?}");
    }
    assert_eq!(found("(важно!)").await, ["не забыть (важно!)"]);
    assert_eq!(found("\"договор\"").await, ["Договоры подписаны"]);
}

/// A query's words are its runs of letters and digits.
#[test]
fn search_words_keep_letters_and_digits_only() {
    assert_eq!(
        search_words("  'a' & b|c!(d:*) договор-2 "),
        ["a", "b", "c", "d", "договор", "2"]
    );
    assert!(search_words("&|!:*()'\"").is_empty());
}

/// PostgreSQL's full disk (SQLSTATE 53100) is the store's `DiskFull`; a
/// write the disk refuses fails as `Unavailable` and commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_unavailable() {
    let (store, _database) = store().await;
    let raised =
        sqlx::query("DO $$ BEGIN RAISE EXCEPTION 'no space' USING ERRCODE = 'disk_full'; END $$")
            .execute(store.pool())
            .await
            .pg();
    assert!(matches!(
        raised,
        Err(StoreError::Unavailable(Unavailable::DiskFull(_)))
    ));

    let conversation = group_of_the_app(&store).await;
    sqlx::query(
        "CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'no space' USING ERRCODE = 'disk_full'; END $$",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER full_disk BEFORE INSERT ON user_events \
         FOR EACH ROW EXECUTE FUNCTION full_disk()",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let user = UserId::random();
    let m = message(1, conversation.id, "lost".to_owned());
    let refused = store.post(&m, &[user], seq_event(), Timestamp(3)).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Unavailable(Unavailable::DiskFull(_)))
        ),
        "{refused:?}"
    );
    assert!(
        store
            .history(conversation.id, None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Space returns: the same write goes through.
    sqlx::query("DROP TRIGGER full_disk ON user_events")
        .execute(store.pool())
        .await
        .unwrap();
    let posted = store
        .post(&m, &[user], seq_event(), Timestamp(4))
        .await
        .unwrap();
    assert_eq!(posted.message.seq, 1);
    assert_eq!(posted.seqs, [(user, 1)]);
    store.ping().await.unwrap();
}

/// A batch's writes share one commit and each runs its `OnCommit` after
/// it, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_commit_runs_after_the_commit_in_order() {
    let (store, _database) = store().await;
    let conversation = group_of_the_app(&store).await;
    let user = UserId::random();
    let (seen, mut order) = tokio::sync::mpsc::unbounded_channel();
    let posts = (0..30).map(|i| {
        let store = store.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let m = message(i, conversation.id, format!("m{i}"));
            store
                .post_then(
                    &m,
                    &[user],
                    seq_event(),
                    Timestamp(3),
                    Box::new(move |seqs, _| {
                        let _ = seen.send(seqs[0].1);
                    }),
                )
                .await
                .unwrap()
        })
    });
    let posted = futures_util::future::join_all(posts).await;
    drop(seen);
    assert_eq!(posted.len(), 30);
    let mut numbers = Vec::new();
    while let Some(n) = order.recv().await {
        numbers.push(n);
    }
    assert_eq!(numbers, (1..=30).collect::<Vec<u64>>());
    let store: Arc<PgStore> = Arc::new(store);
    assert_eq!(store.event_head(user).await.unwrap(), 30);
}

/// A user's events commit in the order of their numbers, also when two
/// nodes write them: a reader that asks for "events after the last one I
/// have" again and again never finds a gap (a number that would commit
/// later than a higher one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_never_sees_a_gap_while_two_nodes_write() {
    let (a, database) = store().await;
    let b = PgStore::connect(database.url()).await.unwrap();
    let user = UserId::random();
    let others: Vec<UserId> = (0..3).map(|_| UserId::random()).collect();
    let per_node = 150u64;
    let writers = [a.clone(), b.clone()].map(|store| {
        let others = others.clone();
        tokio::spawn(async move {
            let mut pending = Vec::new();
            for i in 0..per_node {
                let store = store.clone();
                let notify = [others[usize::try_from(i % 3).unwrap()], user];
                pending.push(tokio::spawn(async move {
                    store
                        .append_events(&notify, "{}", Timestamp(1))
                        .await
                        .unwrap()
                }));
                if pending.len() == 20 {
                    for p in pending.drain(..) {
                        p.await.unwrap();
                    }
                }
            }
            for p in pending {
                p.await.unwrap();
            }
        })
    });
    let mut last = 0;
    while last < 2 * per_node {
        for event in a.events_after(user, last, 1000).await.unwrap() {
            assert_eq!(event.seq, last + 1, "a gap after {last}");
            last = event.seq;
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    a.close().await;
    b.close().await;
}

/// A batch the server fails as a whole (here a deadlock it reports
/// once) is made again, and its writes succeed; so is one whose
/// connection was cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_made_again_after_a_deadlock_or_a_lost_connection() {
    let (store, _database) = store().await;
    let user = UserId::random();
    // A sequence is not rolled back: the trigger fails the first try only.
    for statement in [
        "CREATE SEQUENCE tries",
        "CREATE FUNCTION deadlock_once() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN IF nextval('tries') = 1 THEN \
         RAISE EXCEPTION 'once' USING ERRCODE = 'deadlock_detected'; END IF; \
         RETURN NEW; END $$",
        "CREATE TRIGGER deadlock_once BEFORE INSERT ON event_payloads \
         FOR EACH ROW EXECUTE FUNCTION deadlock_once()",
    ] {
        sqlx::query(statement).execute(store.pool()).await.unwrap();
    }
    let seqs = store
        .append_events(&[user], "{}", Timestamp(1))
        .await
        .unwrap();
    assert_eq!(seqs, [(user, 1)]);
    let tries: i64 = sqlx::query_scalar("SELECT last_value FROM tries")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(tries, 2);

    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'confer-signalling-writer'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(cut, [true]);
    let seqs = store
        .append_events(&[user], "{}", Timestamp(2))
        .await
        .unwrap();
    assert_eq!(seqs, [(user, 2)]);
    assert_eq!(store.event_head(user).await.unwrap(), 2);
}
