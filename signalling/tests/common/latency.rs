//! Delivery latency through the real server: a writer sends messages
//! whose text carries their send time, readers note when each arrives.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

use super::Ws;

/// The tag of a last message that ends [`spawn_reader`] whatever it
/// expected.
pub const END_TAG: &str = "end";

/// A reader that keeps reading: returns, per tag, the delivery latencies
/// (receive time minus the send time written into the text, in ms since
/// `t0`), until it has seen `expected` messages or one tagged
/// [`END_TAG`].
pub fn spawn_reader(
    mut ws: Ws,
    t0: Instant,
    expected: usize,
) -> tokio::task::JoinHandle<BTreeMap<String, Vec<f64>>> {
    tokio::spawn(async move {
        let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut got = 0;
        while got < expected {
            let e = ws.event().await;
            if e["event"]["kind"] != "message" {
                continue;
            }
            got += 1;
            let text = e["event"]["message"]["text"].as_str().unwrap();
            let mut parts = text.split(' ');
            let tag = parts.next().unwrap().to_owned();
            if tag == END_TAG {
                break;
            }
            let sent_ms: f64 = parts.next().unwrap().parse().unwrap();
            let latency = t0.elapsed().as_secs_f64() * 1000.0 - sent_ms;
            out.entry(tag).or_default().push(latency);
        }
        out
    })
}

/// Connects a reader for each of `tokens` and starts it ([`spawn_reader`]).
pub async fn spawn_readers(
    server: &super::TestServer,
    tokens: &[String],
    t0: Instant,
    expected: usize,
) -> Vec<tokio::task::JoinHandle<BTreeMap<String, Vec<f64>>>> {
    let mut readers = Vec::with_capacity(tokens.len());
    for token in tokens {
        readers.push(spawn_reader(
            Ws::connect(server, token, None).await,
            t0,
            expected,
        ));
    }
    readers
}

/// Sends `n` messages tagged `tag` (padded with `pad`) one after the
/// other, each after the previous one's `ack`. Their `client_id`s are
/// the tag and a number: a tag must not be sent twice.
pub async fn send_tagged(
    writer: &mut Ws,
    conv: &Value,
    t0: Instant,
    tag: &str,
    n: usize,
    pad: &str,
) {
    for i in 0..n {
        let sent_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let ack = writer
            .request(json!({"type": "send", "conversation_id": conv, "client_id": format!("{tag}.{i}"), "text": format!("{tag} {sent_ms:.3} {pad}")}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
}

/// The `p` quantile (0 to 1) of `v`.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p) as usize]
}
