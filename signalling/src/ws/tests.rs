//! The session over channels standing in for the socket.

use std::convert::Infallible;

use futures_channel::mpsc;

use super::*;
use crate::bus::InProcessBus;
use crate::ids::UserId;
use crate::ids::{ManualClock, Timestamp};
use crate::store::SqliteStore;

fn caller() -> Caller {
    crate::messaging::caller::test_user()
}

/// A session over channels standing in for the socket, on an
/// in-memory store (whose pool has a single connection), welcomed.
struct Harness {
    out: mpsc::UnboundedReceiver<Message>,
    input: mpsc::UnboundedSender<Result<Message, Infallible>>,
    bus: Arc<dyn Bus>,
    user: UserId,
    session: tokio::task::JoinHandle<Ended>,
}

impl Harness {
    async fn start() -> Self {
        let store = Arc::new(SqliteStore::in_memory().await.unwrap());
        let bus = InProcessBus::new(16);
        let messaging = Arc::new(Messaging::new(
            store.clone(),
            store,
            bus.clone(),
            Arc::new(ManualClock::new(Timestamp(0))),
        ));
        let (sink, mut out) = mpsc::unbounded::<Message>();
        let (input, stream) = mpsc::unbounded::<Result<Message, Infallible>>();
        let sfu = confer_sfu::EmbeddedSfu::start(&confer_sfu::SfuConfig {
            workers: 1,
            pin_workers: false,
            ..confer_sfu::SfuConfig::default()
        })
        .unwrap();
        let calls = Calls::new(
            crate::config::CallConfig::default(),
            messaging.clone(),
            bus.clone(),
            sfu,
            Arc::new(ManualClock::new(Timestamp(0))),
        );
        let caller = caller();
        let user = caller.participant();
        let admitted = Admitted {
            caller,
            since: None,
            until: None,
            limits: FrameLimits::unlimited(),
            audit: None,
        };
        let session = tokio::spawn(run(sink, stream, messaging, bus.clone(), calls, admitted));
        let welcome = out.next().await.unwrap();
        assert!(matches!(&welcome, Message::Text(t) if t.as_str().contains("welcome")));
        Self {
            out,
            input,
            bus,
            user,
            session,
        }
    }

    fn send(&self, frame: &str) {
        self.input
            .unbounded_send(Ok(Message::Text(frame.into())))
            .unwrap();
    }
}

/// The session pings every 25 s and closes after 60 s of silence, in
/// virtual time, over channels standing in for the socket.
#[tokio::test]
async fn pings_then_closes_an_idle_connection() {
    let Harness {
        mut out,
        input,
        session,
        ..
    } = Harness::start().await;
    // A request answered means the session finished its start-up (store
    // reads) and waits in its loop: only now may time be frozen.
    input
        .unbounded_send(Ok(Message::Text(r#"{"type":"ping","id":"p"}"#.into())))
        .unwrap();
    assert!(matches!(out.next().await, Some(Message::Text(t)) if t.as_str().contains("pong")));

    tokio::time::pause();
    tokio::time::advance(PING_INTERVAL + Duration::from_secs(1)).await;
    assert!(matches!(out.next().await, Some(Message::Ping(_))));
    tokio::time::advance(IDLE_TIMEOUT).await;
    // Another ping at 50 s, then the close at 60 s of silence.
    loop {
        match out.next().await {
            Some(Message::Ping(_)) => {}
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, close::IDLE);
                break;
            }
            other => panic!("expected pings then a close frame, got {other:?}"),
        }
    }
    assert_eq!(session.await.unwrap(), Ended::Idle);
}

/// A request whose query holds the store's only pooled connection and
/// a delivery that needs the store (a gap in the user's events, so a
/// replay) never wait for each other. Before the request became a
/// task of its own, the session stopped polling it while it awaited
/// the replay, and both waited until the pool's 30 s acquire timeout.
#[tokio::test]
async fn a_request_and_a_replay_never_wait_for_each_other() {
    let mut h = Harness::start().await;
    for round in 0..20_u64 {
        // Seq far past the last one seen: the session replays first.
        h.bus
            .publish(h.user, 1_000 + 2 * round, Arc::from(r#"{"kind":"x"}"#));
        h.send(&format!(r#"{{"type":"list","id":"r{round}"}}"#));
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match h.out.next().await {
                    Some(Message::Text(t))
                        if t.as_str().contains(&format!(r#""id":"r{round}""#)) =>
                    {
                        return t;
                    }
                    Some(_) => {}
                    None => panic!("the session ended"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("request r{round} not answered in 10 s"));
        assert!(
            !answered.as_str().contains(r#""type":"error""#),
            "{answered}"
        );
    }
    drop(h.input);
    let _ = h.session.await;
}
