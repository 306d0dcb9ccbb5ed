//! In-process fan-out of one message to N connections: the bus alone, and
//! a whole send (store transaction with N event-log rows, then the bus).

use std::hint::black_box;
use std::sync::Arc;

use confer_signalling::bus::{Bus, InProcessBus};
use confer_signalling::ids::{AppId, ManualClock, SubscriberId, Timestamp, UserId};
use confer_signalling::messaging::{Caller, Messaging, NewConversation, Who};
use confer_signalling::store::messaging::MessageBody;
use confer_signalling::store::{NewApplication, SqliteStore, Store};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn bus(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout/bus_publish");
    for n in [10usize, 100, 500] {
        let bus = InProcessBus::new(1024);
        let users: Vec<UserId> = (0..n).map(|_| UserId::random()).collect();
        let mut subs: Vec<_> = users.iter().map(|u| bus.subscribe(*u)).collect();
        let payload: Arc<str> = Arc::from(r#"{"kind":"message","message":{"text":"hello"}}"#);
        let mut seq = 0;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                seq += 1;
                for u in &users {
                    bus.publish(*u, seq, payload.clone());
                }
                for s in &mut subs {
                    black_box(s.rx.try_recv().expect("delivered"));
                }
            });
        });
    }
    group.finish();
}

fn send(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("fanout/send_to_n_members");
    group.sample_size(20);
    for n in [10usize, 100] {
        let (messaging, caller, conversation, mut subs) = rt.block_on(async {
            let store = Arc::new(SqliteStore::in_memory().await.expect("sqlite"));
            let app_id = AppId::random();
            let (_, app) = store
                .register_application(
                    "bench@example.com",
                    SubscriberId::random(),
                    &NewApplication {
                        id: app_id,
                        name: "bench".to_owned(),
                        secret_hash: String::new(),
                        token_key: confer_signalling::auth::TokenKey::derive(app_id, "s"),
                    },
                    Timestamp(0),
                )
                .await
                .expect("app");
            let mut users = Vec::new();
            for i in 0..n {
                users.push(
                    store
                        .provision_user(
                            app.id,
                            UserId::random(),
                            &format!("u{i}"),
                            "U",
                            None,
                            Timestamp(0),
                        )
                        .await
                        .expect("user"),
                );
            }
            let bus = InProcessBus::new(1 << 20);
            let subs: Vec<_> = users.iter().map(|u| bus.subscribe(u.id)).collect();
            let messaging = Messaging::new(
                store.clone(),
                store,
                bus,
                Arc::new(ManualClock::new(Timestamp(0))),
            );
            let caller = Caller {
                app,
                who: Who::User {
                    user: users[0].clone(),
                    contexts: Vec::new(),
                },
            };
            let conversation = messaging
                .create_conversation(
                    &caller,
                    NewConversation {
                        title: "bench".to_owned(),
                        members: users.iter().map(|u| u.id).collect(),
                        ..NewConversation::default()
                    },
                )
                .await
                .expect("conversation");
            (messaging, caller, conversation.id, subs)
        });
        let mut i = 0u64;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i += 1;
                let body = MessageBody {
                    text: "hello".to_owned(),
                    ..MessageBody::default()
                };
                rt.block_on(messaging.send(&caller, conversation, &format!("c{i}"), body))
                    .expect("sent");
                for s in &mut subs {
                    while s.rx.try_recv().is_ok() {}
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bus, send);
criterion_main!(benches);
