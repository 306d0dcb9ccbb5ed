//! WHIP and WHEP over real HTTP against the SFU's router, with the in-repo
//! str0m peers, the bearer token, every error answer, and `/metrics`
//! (behind the token unless `metrics_open`).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{MEDIA_DEADLINE, Peer, Streaming, Subscriber, contiguous, flowing};
use confer_sfu::http::{HttpState, app};
use confer_sfu::{EmbeddedSfu, SfuConfig};
use reqwest::{Client, StatusCode};

const TOKEN: &str = "s3cret-token";

async fn serve() -> (String, Arc<EmbeddedSfu>) {
    serve_with(false).await
}

async fn serve_with(metrics_open: bool) -> (String, Arc<EmbeddedSfu>) {
    let config = SfuConfig {
        workers: 2,
        pin_workers: false,
        ..SfuConfig::default()
    };
    let sfu = EmbeddedSfu::start(&config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = HttpState {
        sfu: sfu.clone(),
        token: Some(TOKEN.to_owned()),
        metrics_open,
    };
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    (base, sfu)
}

/// An HTTP client; reqwest's TLS (rustls, enabled by another workspace
/// member) needs the process's crypto provider installed first.
fn client() -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Client::new()
}

async fn post_sdp(client: &Client, url: &str, sdp: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client
        .post(url)
        .header("content-type", "application/sdp")
        .body(sdp.to_owned());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_whip_subscribe_over_whep() {
    let (base, _sfu) = serve().await;
    let client = client();

    let mut publisher = Peer::new();
    let (offer, pending, audio, video) = publisher.offer_publish(true);
    let r = post_sdp(&client, &format!("{base}/whip/room-1"), &offer, Some(TOKEN)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["content-type"], "application/sdp");
    let pub_location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(pub_location.starts_with("/whip/room-1/"), "{pub_location}");
    publisher.accept_answer(pending, &r.text().await.unwrap());

    let mut subscriber = Peer::new();
    let (offer, pending) = subscriber.offer_subscribe();
    let r = post_sdp(&client, &format!("{base}/whep/room-1"), &offer, Some(TOKEN)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let sub_location = r.headers()["location"].to_str().unwrap().to_owned();
    subscriber.accept_answer(pending, &r.text().await.unwrap());

    let streaming = Streaming::start(publisher, audio, video);
    let received = tokio::task::spawn_blocking(move || {
        let mut s = Subscriber::default();
        subscriber.run_until(Instant::now() + MEDIA_DEADLINE, &mut s, flowing);
        s
    })
    .await
    .unwrap();
    streaming.stop();
    assert!(
        flowing(&received),
        "audio {} video {}, video contiguous: {}",
        received.audio_packets,
        received.video_packets,
        contiguous(&received.seqs["video"])
    );
    assert_eq!(received.corrupt, 0);

    let metrics = client
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sfu_tx_packets_total{worker="),
        "{metrics}"
    );
    assert!(metrics.contains("sfu_worker_participants"), "{metrics}");
    assert!(metrics.contains("room=\"room-1\""), "{metrics}");
    assert!(metrics.contains("sfu_track_rx_packets_total{"), "{metrics}");
    assert!(metrics.contains("layer=\"2\""), "{metrics}");
    assert!(metrics.contains("sfu_subscriber_layer{"), "{metrics}");

    for location in [sub_location, pub_location] {
        let r = client
            .delete(format!("{base}{location}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = client
            .delete(format!("{base}{location}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn bad_requests_get_clear_answers() {
    let (base, _sfu) = serve().await;
    let client = client();
    let mut peer = Peer::new();
    let (offer, _pending) = peer.offer_subscribe();
    let url = format!("{base}/whep/room-2");

    let r = post_sdp(&client, &url, &offer, None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = post_sdp(&client, &url, &offer, Some("wrong")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(offer.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = post_sdp(&client, &url, "v=0\r\nnot an sdp", Some(TOKEN)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body = r.text().await.unwrap();
    assert!(body.contains("bad_offer"), "{body}");
    let r = client
        .patch(format!("{url}/0000000000000001"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = client
        .delete(format!("{url}/zz"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_need_the_token_unless_configured_open() {
    let client = client();
    let (base, _sfu) = serve().await;
    let url = format!("{base}/metrics");
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("unauthorized"));
    let r = client.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("sfu_worker_up"));
    // /healthz stays open: it says nothing about rooms.
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let (base, _sfu) = serve_with(true).await;
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
