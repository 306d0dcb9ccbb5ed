//! A WebSocket client that truly stops reading its socket — a raw TCP
//! connection with a small receive buffer that completes the WebSocket
//! handshake and then never reads — is dropped with 4008
//! `slow_consumer`, which it finds after the events already sent when it
//! reads again; meanwhile three other readers of the same conversation
//! receive every message, and their delivery latency (send → receive)
//! p99 is measured without and with the stopped reader.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::latency::{END_TAG, percentile, send_tagged, spawn_readers};
use common::{TestServer, Ws, user_token};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Messages before the stopped reader connects.
const BASE: usize = 400;
/// Messages per batch (batches go on until the server has given up on
/// the stopped reader, and two more while it is being dropped).
const BATCH: usize = 10;
/// Batches start at most this often in both phases (at most 50 messages
/// a second): the stopped reader's socket fills within seconds, then
/// fewer than its 1024-event queue arrive during the 10 s its blocked
/// send is given, so the send timeout is what ends it, not the queue.
const BATCH_EVERY: Duration = Duration::from_millis(200);
/// Padding of every message: the stopped reader's buffers fill sooner.
const PAD: usize = 8 * 1024;
/// Readers that keep reading.
const READERS: usize = 3;
/// Generous bound for the server to notice the stopped reader: a send
/// makes no progress for `ws::SEND_TIMEOUT` (10 s) once its socket is
/// full.
const DETECT_DEADLINE: Duration = Duration::from_secs(120);
/// Absolute slack on the p99 comparison: see the assertion.
const P99_SLACK_MS: f64 = 10.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_socket_is_closed_and_slows_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    // The writer writes as fast as acks come: its frame limits are off.
    config.limits.frames_per_connection.count = 0;
    config.limits.writes_per_connection.count = 0;
    let server = TestServer::start_with(config, common::default_clock()).await;
    let app = server.register("stopped@example.com", "ERP").await;
    let (writer_token, _) = user_token(&server, &app, "writer", &[]).await;
    let (stopped_token, stopped_user) = user_token(&server, &app, "stopped", &[]).await;
    let mut members = vec![stopped_user.clone()];
    let mut reader_tokens = Vec::new();
    for i in 0..READERS {
        let (token, user) = user_token(&server, &app, &format!("r{i}"), &[]).await;
        reader_tokens.push(token);
        members.push(user);
    }
    let mut writer = Ws::connect(&server, &writer_token, None).await;
    let conv = writer
        .request(json!({"type": "create_conversation", "title": "load", "members": members}))
        .await["conversation"]["id"]
        .clone();
    let t0 = Instant::now();
    let readers = spawn_readers(&server, &reader_tokens, t0, usize::MAX).await;
    let pad = "x".repeat(PAD);
    // The fourth connection reads like the others while the baseline is
    // measured (the same load), then stops reading its socket.
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let fourth = StoppedReader::connect(&server, &stopped_token)
        .await
        .read_until(stop_rx);

    let mut pace = tokio::time::interval(BATCH_EVERY);
    for b in 0..BASE / BATCH {
        pace.tick().await;
        send_tagged(&mut writer, &conv, t0, &format!("base{b}"), BATCH, &pad).await;
    }

    let given_up_before = slow_consumers(&server);
    let stopped_id: confer_signalling::ids::UserId = stopped_user.parse().unwrap();
    stop.send(()).unwrap();
    let mut stopped = fourth.await.unwrap();
    let stopped_at = Instant::now();
    let mut batches = 0;
    // Whether the server still delivers to it is asked of the bus
    // (cheap); rendering the metrics between batches would stall the
    // runtime the readers share for tens of milliseconds each time.
    while server.services.bus.is_online(stopped_id) {
        assert!(
            stopped_at.elapsed() < DETECT_DEADLINE,
            "the stopped reader was not given up on within {DETECT_DEADLINE:?}"
        );
        pace.tick().await;
        send_tagged(
            &mut writer,
            &conv,
            t0,
            &format!("stop{batches}"),
            BATCH,
            &pad,
        )
        .await;
        batches += 1;
    }
    let detected = stopped_at.elapsed();
    // It reads again while the server drops it; the others go on.
    let closing = tokio::spawn(async move { stopped.read_until_closed().await });
    for _ in 0..2 {
        pace.tick().await;
        send_tagged(
            &mut writer,
            &conv,
            t0,
            &format!("stop{batches}"),
            BATCH,
            &pad,
        )
        .await;
        batches += 1;
    }
    send_tagged(&mut writer, &conv, t0, END_TAG, 1, "").await;
    let (code, reason, events_before_close) = tokio::time::timeout(DETECT_DEADLINE, closing)
        .await
        .expect("the stopped reader's connection ends")
        .unwrap();
    assert_eq!(
        (code, reason.as_str()),
        (4008, "slow_consumer"),
        "the documented close"
    );
    assert_eq!(
        slow_consumers(&server),
        given_up_before + 1,
        "counted once, as a send that made no progress"
    );

    let mut base = Vec::new();
    let mut with_stopped = Vec::new();
    let mut per_batch: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
    let mut base_batches: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
    for reader in readers {
        let latencies = reader.await.unwrap();
        let mut got_base = 0;
        let mut got_stopped = 0;
        for (tag, values) in latencies {
            if let Some(b) = tag.strip_prefix("base") {
                got_base += values.len();
                base_batches
                    .entry(b.parse::<usize>().unwrap())
                    .or_default()
                    .extend(&values);
                base.extend(values);
            } else {
                assert!(tag.starts_with("stop"), "{tag}");
                got_stopped += values.len();
                let batch: usize = tag["stop".len()..].parse().unwrap();
                per_batch.entry(batch).or_default().extend(&values);
                with_stopped.extend(values);
            }
        }
        assert_eq!(got_base, BASE, "every message before");
        assert_eq!(got_stopped, batches * BATCH, "every message with it");
    }
    let base_maxima: Vec<String> = base_batches
        .into_values()
        .map(|v| format!("{:.0}", percentile(v, 1.0)))
        .collect();
    println!(
        "slowest delivery per batch of {BATCH} without it, ms: {}",
        base_maxima.join(" ")
    );
    let batch_maxima: Vec<String> = per_batch
        .into_values()
        .map(|v| format!("{:.0}", percentile(v, 1.0)))
        .collect();
    println!(
        "slowest delivery per batch of {BATCH} with the stopped reader, ms: {}",
        batch_maxima.join(" ")
    );
    let p99_base = percentile(base, 0.99);
    let p99_stopped = percentile(with_stopped, 0.99);
    println!(
        "stopped reader: given up on after {detected:?} ({batches} batches of {BATCH} sent), \
         read {events_before_close} events then close 4008; delivery to {READERS} readers \
         p99 {p99_base:.2} ms without it, {p99_stopped:.2} ms with it ({:+.1} %)",
        (p99_stopped / p99_base - 1.0) * 100.0
    );
    // Within 10 %, or within P99_SLACK_MS: on a shared two-core machine
    // running a debug build a p99 of a few milliseconds moves by more
    // than 10 % from one run to the next with nothing stopped (one
    // scheduling delay of another process is several ms); 10 ms is far
    // below what a reader blocked behind the stopped one would see (the
    // send timeout, 10 s).
    assert!(
        p99_stopped <= (p99_base * 1.10).max(p99_base + P99_SLACK_MS),
        "the others were slowed: p99 {p99_base:.2} ms → {p99_stopped:.2} ms"
    );
    server.stop().await;
}

/// `ws_slow_consumers_total{cause="send_stalled"}` now.
fn slow_consumers(server: &TestServer) -> u64 {
    server
        .services
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("ws_slow_consumers_total{cause=\"send_stalled\"}"))
        .filter_map(|l| l.rsplit(' ').next())
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .sum()
}

/// A WebSocket client on a raw TCP socket with a small receive buffer
/// that reads nothing after the handshake until told to.
struct StoppedReader {
    stream: TcpStream,
    /// Bytes read that belong to frames not yet taken.
    buffered: Vec<u8>,
    /// Event frames taken.
    events: usize,
}

impl StoppedReader {
    async fn connect(server: &TestServer, token: &str) -> Self {
        let addr = server.base.trim_start_matches("http://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // Before connecting, so that the window it offers is small.
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let request = format!(
            "GET /api/v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffered = Vec::new();
        let mut chunk = [0u8; 1024];
        let head_end = loop {
            if let Some(at) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
                .await
                .expect("a handshake answer")
                .unwrap();
            assert_ne!(n, 0, "closed during the handshake");
            buffered.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffered[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buffered.drain(..head_end);
        Self {
            stream,
            buffered,
            events: 0,
        }
    }

    /// Reads and drops whole frames like any client until `stop` fires,
    /// then stops reading.
    fn read_until(
        mut self,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<Self> {
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    _ = &mut stop => return self,
                    n = self.stream.read(&mut chunk) => {
                        let n = n.unwrap();
                        assert_ne!(n, 0, "closed while reading");
                        self.buffered.extend_from_slice(&chunk[..n]);
                        assert!(self.take_frames().is_none(), "closed while reading");
                    }
                }
            }
        })
    }

    /// Reads again: every frame until a close frame, then until the
    /// server ends the connection. Returns the close code, its reason and
    /// how many event frames came before it.
    async fn read_until_closed(&mut self) -> (u16, String, usize) {
        self.events = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some((code, reason)) = self.take_frames() {
                self.until_end().await;
                return (code, reason, self.events);
            }
            let n = self.stream.read(&mut chunk).await.unwrap_or(0);
            assert_ne!(
                n, 0,
                "the connection ended without a close frame after {} events",
                self.events
            );
            self.buffered.extend_from_slice(&chunk[..n]);
        }
    }

    /// Takes the whole frames buffered, counting events, up to a close
    /// frame: its code and reason.
    fn take_frames(&mut self) -> Option<(u16, String)> {
        // Whole frames are taken from the front, then the rest moves
        // once (not once per frame: megabytes may be waiting).
        let mut at = 0;
        let mut closed = None;
        while let Some((opcode, range)) = parse_frame(&self.buffered[at..]) {
            let payload = &self.buffered[at + range.start..at + range.end];
            at += range.end;
            match opcode {
                0x1 if payload.starts_with(br#"{"type":"event""#) => self.events += 1,
                0x8 => {
                    assert!(payload.len() >= 2, "a close frame with a code");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    closed = Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
                    break;
                }
                _ => {}
            }
        }
        self.buffered.drain(..at);
        closed
    }

    /// Waits for the server to close the connection.
    async fn until_end(&mut self) {
        let mut chunk = [0u8; 1024];
        while let Ok(n) = self.stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// One unmasked server frame at the start of `buf`: its opcode and where
/// its payload is in `buf`; `None` until it is whole.
fn parse_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    let opcode = buf.first()? & 0x0f;
    let (len, start) = match buf.get(1)? & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    (buf.len() >= start + len).then_some((opcode, start..start + len))
}
