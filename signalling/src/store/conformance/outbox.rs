//! The webhook outbox: endpoints per application; deliveries enqueued
//! once per endpoint and event with the cursor's move; claimed for a
//! lease, fairly per endpoint; attempts recorded; the log paged;
//! a dead delivery retried; old ones pruned; secrets rotated.

use std::sync::Arc;

use super::Backend;
use crate::ids::{DeliveryId, EndpointId, Timestamp};
use crate::store::outbox::{Attempt, Delivery, DeliveryState, Endpoint};

fn delivery(endpoint: &Endpoint, seq: u64) -> Delivery {
    Delivery {
        id: DeliveryId::random(),
        endpoint_id: endpoint.id,
        app_id: endpoint.app_id,
        event_seq: seq,
        event_type: "message.created".to_owned(),
        payload: format!("{{\"n\":{seq}}}"),
        state: DeliveryState::Pending,
        attempts: 0,
        next_attempt_at: Timestamp(100),
        last_status: None,
        last_error: None,
        last_attempt_at: None,
        created_at: Timestamp(100 + i64::try_from(seq).unwrap()),
    }
}

pub(in crate::store) async fn the_webhook_outbox_enqueues_claims_and_records(
    store: Arc<dyn Backend>,
) {
    let app = super::group_of_the_app(&*store).await.app_id;
    let endpoint = |url: &str| Endpoint {
        id: EndpointId::random(),
        app_id: app,
        url: url.to_owned(),
        kinds: vec!["message".to_owned(), "action".to_owned()],
        secret: "whsec_x".to_owned(),
        previous_secret: None,
        start_seq: 0,
        created_at: Timestamp(1),
        revoked_at: None,
    };
    let (fast, slow) = (endpoint("http://a/"), endpoint("http://b/"));
    store.create_endpoint(&fast).await.unwrap();
    store.create_endpoint(&slow).await.unwrap();
    assert_eq!(store.endpoints_of(app).await.unwrap().len(), 2);
    assert_eq!(store.endpoints_of(app).await.unwrap()[0].kinds, fast.kinds);

    // Enqueued with the cursor; enqueued again (another node), kept once.
    assert_eq!(store.outbox_cursor(app).await.unwrap(), 0);
    let batch: Vec<Delivery> = (1..=5)
        .flat_map(|seq| [delivery(&fast, seq), delivery(&slow, seq)])
        .collect();
    store.enqueue_deliveries(app, 5, &batch).await.unwrap();
    let again: Vec<Delivery> = (1..=5).map(|seq| delivery(&fast, seq)).collect();
    store.enqueue_deliveries(app, 3, &again).await.unwrap();
    assert_eq!(store.outbox_cursor(app).await.unwrap(), 5, "never back");
    let log = store.deliveries(fast.id, None, None, 100).await.unwrap();
    assert_eq!(log.len(), 5);
    let seqs: Vec<u64> = log.iter().map(|d| d.event_seq).collect();
    assert_eq!(seqs, [5, 4, 3, 2, 1], "newest first");
    let page = store
        .deliveries(fast.id, None, Some(log[1].id), 2)
        .await
        .unwrap();
    assert_eq!(page.iter().map(|d| d.event_seq).collect::<Vec<_>>(), [3, 2]);

    // Claimed fairly (at most 2 of each), not again while leased, and no
    // more than an endpoint's limit leaves beside its attempts in flight.
    let claimed = store
        .claim_deliveries(Timestamp(100), Timestamp(1000), 10, 2, &[])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4, "{claimed:?}");
    assert_eq!(
        claimed.iter().filter(|d| d.endpoint_id == fast.id).count(),
        2
    );
    let partly = store
        .claim_deliveries(
            Timestamp(100),
            Timestamp(1000),
            10,
            2,
            &[(slow.id, 2), (fast.id, 1)],
        )
        .await
        .unwrap();
    assert!(
        partly.iter().all(|d| d.endpoint_id == fast.id),
        "{partly:?}"
    );
    assert_eq!(partly.len(), 1, "one of two left to the fast endpoint");
    let rest = store
        .claim_deliveries(Timestamp(999), Timestamp(2000), 2, 5, &[(slow.id, 5)])
        .await
        .unwrap();
    assert!(rest.iter().all(|d| d.endpoint_id == fast.id), "{rest:?}");
    assert_eq!(rest.len(), 2, "the fast endpoint's last two: {rest:?}");
    // The lease ends: claimable again.
    let later = store
        .claim_deliveries(Timestamp(1000), Timestamp(3000), 100, 100, &[])
        .await
        .unwrap();
    assert_eq!(later.len(), 8, "{later:?}");

    // Attempts: delivered, failed with a retry, failed for good.
    let attempt = |delivered, retry_at: Option<i64>| Attempt {
        delivered,
        status: Some(if delivered { 204 } else { 500 }),
        error: (!delivered).then(|| "answered 500".to_owned()),
        at: Timestamp(1500),
        retry_at: retry_at.map(Timestamp),
    };
    let of = |seq: u64| log.iter().find(|d| d.event_seq == seq).unwrap().id;
    store
        .record_attempt(of(1), &attempt(true, None))
        .await
        .unwrap();
    store
        .record_attempt(of(2), &attempt(false, Some(1600)))
        .await
        .unwrap();
    store
        .record_attempt(of(3), &attempt(false, None))
        .await
        .unwrap();
    // A delivered one records nothing more.
    store
        .record_attempt(of(1), &attempt(false, None))
        .await
        .unwrap();
    let log = store.deliveries(fast.id, None, None, 100).await.unwrap();
    let get = |seq: u64| log.iter().find(|d| d.event_seq == seq).unwrap().clone();
    assert_eq!(get(1).state, DeliveryState::Delivered);
    assert_eq!((get(1).attempts, get(1).last_status), (1, Some(204)));
    assert_eq!(get(2).state, DeliveryState::Pending);
    assert_eq!(get(2).next_attempt_at, Timestamp(1600));
    assert_eq!(get(2).last_error.as_deref(), Some("answered 500"));
    assert_eq!(get(3).state, DeliveryState::Dead);
    let dead = store
        .deliveries(fast.id, Some(DeliveryState::Dead), None, 100)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);

    // A dead one retried by hand is due now, attempts anew; only a dead
    // one of the application's own endpoint.
    let other = crate::ids::AppId::random();
    assert!(
        !store
            .retry_delivery(other, fast.id, of(3), Timestamp(1700))
            .await
            .unwrap()
    );
    assert!(
        !store
            .retry_delivery(app, fast.id, of(2), Timestamp(1700))
            .await
            .unwrap()
    );
    assert!(
        store
            .retry_delivery(app, fast.id, of(3), Timestamp(1700))
            .await
            .unwrap()
    );
    let retried = store
        .deliveries(fast.id, Some(DeliveryState::Pending), None, 100)
        .await
        .unwrap();
    let three = retried.iter().find(|d| d.event_seq == 3).unwrap();
    assert_eq!(
        (three.attempts, three.next_attempt_at),
        (0, Timestamp(1700))
    );

    // Pruned: finished before the cut only.
    assert_eq!(store.prune_deliveries(Timestamp(1501)).await.unwrap(), 1);
    assert_eq!(
        store
            .deliveries(fast.id, None, None, 100)
            .await
            .unwrap()
            .len(),
        4
    );

    // An application's deliveries before a time go whatever their state.
    assert_eq!(
        store
            .prune_app_deliveries(crate::ids::AppId::random(), Timestamp(i64::MAX))
            .await
            .unwrap(),
        0
    );
    // Revoked: its pending deliveries go, it is listed revoked, once.
    assert!(
        store
            .revoke_endpoint(app, slow.id, Timestamp(2000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_endpoint(app, slow.id, Timestamp(2001))
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_endpoint(other, fast.id, Timestamp(2001))
            .await
            .unwrap()
    );
    assert!(
        store
            .deliveries(slow.id, None, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let live = store.live_endpoints().await.unwrap();
    assert!(live.iter().any(|e| e.id == fast.id));
    assert!(!live.iter().any(|e| e.id == slow.id));

    // Rotated: the old secret is kept until told, or dropped; only a live
    // endpoint of the application.
    let secret_of = |id| {
        let store = store.clone();
        async move {
            let e = store.live_endpoints().await.unwrap();
            let e = e.into_iter().find(|e| e.id == id).unwrap();
            (e.secret, e.previous_secret)
        }
    };
    let keep = Some(Timestamp(5000));
    assert!(
        store
            .rotate_endpoint_secret(app, fast.id, "whsec_y", keep)
            .await
            .unwrap()
    );
    assert_eq!(
        secret_of(fast.id).await,
        (
            "whsec_y".to_owned(),
            Some(("whsec_x".to_owned(), Timestamp(5000)))
        )
    );
    assert!(
        store
            .rotate_endpoint_secret(app, fast.id, "whsec_z", None)
            .await
            .unwrap()
    );
    assert_eq!(secret_of(fast.id).await, ("whsec_z".to_owned(), None));
    for (owner, id) in [(other, fast.id), (app, slow.id)] {
        assert!(
            !store
                .rotate_endpoint_secret(owner, id, "whsec_w", keep)
                .await
                .unwrap()
        );
    }
    assert_eq!(secret_of(fast.id).await.0, "whsec_z");
}
