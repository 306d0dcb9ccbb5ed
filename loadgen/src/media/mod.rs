//! `loadgen media`: rooms of str0m publishers and subscribers.
//!
//! Each room has `--publishers` peers sending Opus audio and three-layer
//! simulcast VP8-shaped video ([`crate::peer`]) and `--subscribers` peers
//! receiving every publisher. Peers join through one of three doors:
//! signalling's call protocol (`--target`, the peers are users in a call),
//! WHIP/WHEP on a standalone `sfu` (`--sfu`), or a Janus VideoRoom
//! (`--janus`, [`crate::janus`]). After a warm-up the run measures for
//! `--duration` seconds: packets sent and received, loss (gaps in the
//! sequence numbers each subscriber sees), corrupt packets, jitter, added
//! latency (send time in the payload) and layer switches.
//!
//! `--ramp` adds `--rooms` rooms every `--step-secs` and measures each
//! step, until loss passes 0.5 % or p99 latency passes 50 ms; the last step
//! within both is the capacity.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use str0m::Rtc;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid, Simulcast, SimulcastLayer};

use crate::client::Conn;
use crate::measure::{self, Percentiles, ServerUse, histogram};
use crate::peer::{Control, Peer, Publisher, RIDS};
use crate::report;

mod rooms;
use rooms::{Door, Room, join_room};

/// Loss above which a ramp stops.
pub const MAX_LOSS: f64 = 0.005;
/// p99 latency (ms) above which a ramp stops.
pub const MAX_P99_MS: f64 = 50.0;

/// Arguments of `loadgen media`.
#[derive(Debug, Clone, clap::Args)]
pub struct MediaArgs {
    /// Base URL of a signalling server: peers join calls.
    #[arg(long, conflicts_with_all = ["sfu", "janus"])]
    pub target: Option<String>,
    /// Base URL of a standalone `sfu`: peers use WHIP and WHEP.
    #[arg(long, conflicts_with = "janus")]
    pub sfu: Option<String>,
    /// Janus HTTP API URL (e.g. http://10.77.0.2:8088/janus): peers use a
    /// VideoRoom.
    #[arg(long)]
    pub janus: Option<String>,
    /// Bearer token for `--sfu`.
    #[arg(long)]
    pub token: Option<String>,
    /// Rooms (per ramp step with `--ramp`).
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishers per room.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Subscribers per room (each receives every publisher).
    #[arg(long, default_value_t = 4)]
    pub subscribers: usize,
    /// Seconds of measurement (without `--ramp`).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Seconds between keyframes (besides those asked for).
    #[arg(long, default_value_t = 5)]
    pub keyframe_secs: u32,
    /// Send one video layer instead of three.
    #[arg(long)]
    pub no_simulcast: bool,
    /// Audio only.
    #[arg(long)]
    pub audio_only: bool,
    /// Raise the load until loss or latency passes its limit.
    #[arg(long)]
    pub ramp: bool,
    /// Seconds per ramp step.
    #[arg(long, default_value_t = 10)]
    pub step_secs: u64,
    /// Most rooms a ramp adds.
    #[arg(long, default_value_t = 200)]
    pub max_rooms: usize,
    /// p99 added latency (ms) at which a ramp stops.
    #[arg(long, default_value_t = MAX_P99_MS)]
    pub max_p99_ms: f64,
    /// Loss ratio at which a ramp stops.
    #[arg(long, default_value_t = MAX_LOSS)]
    pub max_loss: f64,
    /// Seconds between joining and measuring.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Subscribers only count what they receive, by the clear RTP header
    /// (rate and loss), except `--full-subscribers` per room, which decrypt
    /// and check everything (content, layers, latency): so that loadgen's
    /// own receiving costs far less than the server's forwarding.
    #[arg(long)]
    pub counting: bool,
    /// With `--counting`: subscribers per room that check everything.
    #[arg(long, default_value_t = 1)]
    pub full_subscribers: usize,
    /// Local address the peers bind (the host side of Janus's namespace).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Application, server process, report.
    #[command(flatten)]
    pub common: crate::args::Common,
}

impl MediaArgs {
    /// Whether subscriber `n` of a room only counts.
    #[must_use]
    pub fn counts(&self, n: usize) -> bool {
        self.counting && n >= self.full_subscribers
    }
}

/// One measured window (the whole run, or one ramp step).
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Rooms running.
    pub rooms: usize,
    /// Seconds measured.
    pub seconds: f64,
    /// Packets the publishers wrote.
    pub packets_sent: u64,
    /// Packets the subscribers received (once each).
    pub packets_received: u64,
    /// Packets the sequence numbers say should have arrived.
    pub packets_expected: u64,
    /// (expected − received) / expected.
    pub loss_ratio: f64,
    /// Packets received per second: what the SFU forwarded.
    pub forwarded_per_sec: f64,
    /// Added latency (send → receive, same clock).
    pub latency_ms: Percentiles,
    /// Server CPU in the window, % of one core.
    pub server_cpu_pct: Option<f64>,
}

/// The result of a ramp.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// Rooms at the last step within both limits.
    pub rooms: usize,
    /// Forwarded packets per second at that step.
    pub forwarded_per_sec: f64,
    /// Why the ramp stopped.
    pub stopped_by: String,
}

/// `report.json` of a media run.
#[derive(Debug, Serialize)]
pub struct MediaReport {
    /// `media`.
    pub mode: &'static str,
    /// The command line.
    pub command: String,
    /// `signalling`, `sfu` (WHIP/WHEP) or `janus`.
    pub system: &'static str,
    /// Its URL.
    pub target: String,
    /// Rooms (at the end).
    pub rooms: usize,
    /// Publishers per room.
    pub publishers: usize,
    /// Subscribers per room.
    pub subscribers: usize,
    /// Peers whose ICE and DTLS came up, of all.
    pub connected: (usize, usize),
    /// Totals over the measured windows.
    pub packets_sent: u64,
    /// Received once each.
    pub packets_received: u64,
    /// (expected − received) / expected.
    pub loss_ratio: f64,
    /// Packets without a valid trailer.
    pub corrupt: u64,
    /// Packets received twice.
    pub duplicates: u64,
    /// Added latency.
    pub latency_ms: Percentiles,
    /// Average RFC 3550 jitter, ms.
    pub jitter_ms: f64,
    /// Video layer changes the subscribers saw.
    pub layer_switches: u64,
    /// Received packets per second.
    pub forwarded_per_sec: f64,
    /// Ramp steps (one step without `--ramp`).
    pub steps: Vec<Step>,
    /// With `--ramp`: the capacity reached.
    pub capacity: Option<Capacity>,
    /// The server process.
    pub server: Option<ServerUse>,
}

/// Runs the media load.
///
/// # Errors
/// When no door is given or peers cannot join.
pub async fn run(args: MediaArgs, command: String) -> anyhow::Result<MediaReport> {
    let http = reqwest::Client::new();
    let door = if let Some(base) = &args.target {
        let base = base.trim_end_matches('/').to_owned();
        if args.publishers + args.subscribers < 3 {
            bail!("--target: a call through the SFU needs at least 3 peers per room");
        }
        let app = crate::chat::application(
            &http,
            &base,
            &args.common.app_creds,
            args.common.outbox.as_deref(),
        )
        .await?;
        Door::Signalling { base, http, app }
    } else if let Some(base) = &args.sfu {
        Door::Whip {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token: args.token.clone(),
        }
    } else if let Some(url) = &args.janus {
        Door::Janus(crate::janus::Janus::new(url.trim_end_matches('/')))
    } else {
        bail!("give --target (signalling), --sfu (standalone SFU) or --janus (Janus VideoRoom)");
    };
    if args.publishers == 0 {
        bail!("--publishers: at least 1");
    }
    let target = args
        .target
        .clone()
        .or_else(|| args.sfu.clone())
        .or_else(|| args.janus.clone())
        .unwrap_or_default();
    let epoch = Instant::now();
    let opus = crate::peer::opus_frames()?;
    let (stop_sampler, sampler) = measure::spawn_sampler(args.common.server_pid);
    let run_id: u32 = rand::rng().random();
    let progress = if args.common.quiet {
        ProgressBar::hidden()
    } else {
        let p = ProgressBar::new_spinner();
        p.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        p.enable_steady_tick(Duration::from_millis(200));
        p
    };

    let mut rooms: Vec<Room> = Vec::new();
    let mut steps = Vec::new();
    let mut capacity = None;
    let mut all_latency = histogram();
    loop {
        for _ in 0..args.rooms {
            let n = rooms.len();
            progress.set_message(format!("joining room {}", n + 1));
            rooms.push(
                join_room(&door, &args, n, run_id, epoch, &opus)
                    .await
                    .with_context(|| format!("room {}", n + 1))?,
            );
        }
        progress.set_message(format!("{} rooms: warming up", rooms.len()));
        tokio::time::sleep(Duration::from_secs(args.warmup)).await;
        let window = if args.ramp {
            args.step_secs
        } else {
            args.duration
        };
        progress.set_message(format!("{} rooms: measuring {window} s", rooms.len()));
        let (step, latency) = measure_window(&rooms, window, args.common.server_pid).await;
        let _ = all_latency.add(&latency);
        let over_loss = step.loss_ratio > args.max_loss;
        let over_latency = step.latency_ms.p99 > args.max_p99_ms;
        progress.println(format!(
            "{:>4} rooms: {:>9.0} packets/s forwarded, loss {:.3} %, p99 {:.2} ms",
            step.rooms,
            step.forwarded_per_sec,
            step.loss_ratio * 100.0,
            step.latency_ms.p99
        ));
        steps.push(step);
        if !args.ramp {
            break;
        }
        if over_loss || over_latency || rooms.len() + args.rooms > args.max_rooms {
            let within = steps
                .iter()
                .rev()
                .find(|s| s.loss_ratio <= args.max_loss && s.latency_ms.p99 <= args.max_p99_ms);
            capacity = Some(Capacity {
                rooms: within.map_or(0, |s| s.rooms),
                forwarded_per_sec: within.map_or(0.0, |s| s.forwarded_per_sec),
                stopped_by: if over_loss {
                    format!("loss above {} %", args.max_loss * 100.0)
                } else if over_latency {
                    format!("p99 latency above {} ms", args.max_p99_ms)
                } else {
                    format!("--max-rooms {}", args.max_rooms)
                },
            });
            break;
        }
    }
    progress.finish_and_clear();

    let mut report = MediaReport {
        mode: "media",
        command,
        system: door.system(),
        target,
        rooms: rooms.len(),
        publishers: args.publishers,
        subscribers: args.subscribers,
        connected: (0, 0),
        packets_sent: steps.iter().map(|s| s.packets_sent).sum(),
        packets_received: steps.iter().map(|s| s.packets_received).sum(),
        loss_ratio: 0.0,
        corrupt: 0,
        duplicates: 0,
        latency_ms: Percentiles::of(&all_latency),
        jitter_ms: 0.0,
        layer_switches: 0,
        forwarded_per_sec: 0.0,
        steps: steps.clone(),
        capacity,
        server: None,
    };
    let expected: u64 = steps.iter().map(|s| s.packets_expected).sum();
    report.loss_ratio = ratio(expected.saturating_sub(report.packets_received), expected);
    let secs: f64 = steps.iter().map(|s| s.seconds).sum();
    report.forwarded_per_sec = report.packets_received as f64 / secs.max(1e-9);
    let (mut connected, mut total, mut jitter, mut jn) = (0, 0, 0.0, 0);
    for room in &rooms {
        for p in room.publishers.iter().chain(&room.subscribers) {
            total += 1;
            if let Ok(s) = p.stats.lock() {
                connected += usize::from(s.connected);
            }
        }
        for p in &room.subscribers {
            if let Ok(s) = p.stats.lock() {
                report.corrupt += s.corrupt;
                report.duplicates += s.duplicates;
                report.layer_switches += s.layer_switches;
                jitter += s.jitter_ms();
                jn += 1;
            }
        }
    }
    report.connected = (connected, total);
    report.jitter_ms = jitter / f64::from(jn.max(1));
    for room in &rooms {
        for p in room.publishers.iter().chain(&room.subscribers) {
            p.stop();
        }
    }
    let _ = stop_sampler.send(true);
    let samples = sampler.await.unwrap_or_default();
    if args.common.server_pid.is_some() {
        report.server = Some(ServerUse::of(&samples));
    }
    if let Some(dir) = &args.common.report {
        report::write_media(dir, &report, &all_latency)?;
    }
    Ok(report)
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Measures every subscriber for `secs` seconds (counters are read at the
/// start and the end; latency histograms are emptied at the start).
async fn measure_window(
    rooms: &[Room],
    secs: u64,
    server_pid: Option<u32>,
) -> (Step, Histogram<u64>) {
    let read = |rooms: &[Room]| {
        let (mut sent, mut received, mut expected) = (0u64, 0u64, 0u64);
        for room in rooms {
            for p in &room.publishers {
                if let Ok(s) = p.stats.lock() {
                    sent += s.sent;
                }
            }
            for p in &room.subscribers {
                if let Ok(s) = p.stats.lock() {
                    received += s.received;
                    expected += s.expected();
                }
            }
        }
        (sent, received, expected)
    };
    for room in rooms {
        for p in &room.subscribers {
            if let Ok(mut s) = p.stats.lock() {
                let _ = s.take_latency();
            }
        }
    }
    let mut watch = server_pid.and_then(measure::ProcWatch::new);
    if let Some(w) = watch.as_mut() {
        let _ = w.sample();
    }
    let before = read(rooms);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = read(rooms);
    let seconds = started.elapsed().as_secs_f64();
    let cpu = watch
        .as_mut()
        .and_then(measure::ProcWatch::sample)
        .map(|s| s.cpu_pct);
    let mut latency = histogram();
    for room in rooms {
        for p in &room.subscribers {
            if let Ok(mut s) = p.stats.lock() {
                let _ = latency.add(s.take_latency());
            }
        }
    }
    let received = after.1 - before.1;
    let expected = after.2 - before.2;
    (
        Step {
            rooms: rooms.len(),
            seconds,
            packets_sent: after.0 - before.0,
            packets_received: received,
            packets_expected: expected,
            loss_ratio: ratio(expected.saturating_sub(received), expected),
            forwarded_per_sec: received as f64 / seconds,
            latency_ms: Percentiles::of(&latency),
            server_cpu_pct: cpu,
        },
        latency,
    )
}

/// The Markdown summary.
#[must_use]
pub fn markdown(r: &MediaReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# loadgen media: {}\n\n`{}`\n", r.system, r.command);
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| rooms × (publishers + subscribers) | {} × ({} + {}) |",
        r.rooms, r.publishers, r.subscribers
    );
    let _ = writeln!(
        md,
        "| peers connected | {} of {} |",
        r.connected.0, r.connected.1
    );
    let _ = writeln!(
        md,
        "| packets sent / received | {} / {} |",
        r.packets_sent, r.packets_received
    );
    let _ = writeln!(
        md,
        "| forwarded packets per second | {:.0} |",
        r.forwarded_per_sec
    );
    let _ = writeln!(md, "| loss | {:.3} % |", r.loss_ratio * 100.0);
    let _ = writeln!(
        md,
        "| corrupt / duplicate packets | {} / {} |",
        r.corrupt, r.duplicates
    );
    let _ = writeln!(
        md,
        "| added latency p50 / p90 / p99 / max | {:.2} / {:.2} / {:.2} / {:.2} ms |",
        r.latency_ms.p50, r.latency_ms.p90, r.latency_ms.p99, r.latency_ms.max
    );
    let _ = writeln!(md, "| jitter (RFC 3550, average) | {:.2} ms |", r.jitter_ms);
    let _ = writeln!(md, "| layer switches | {} |", r.layer_switches);
    if let Some(s) = &r.server {
        let _ = writeln!(
            md,
            "| server CPU average / max | {:.0} % / {:.0} % (of one core) |",
            s.cpu_avg_pct, s.cpu_max_pct
        );
        let _ = writeln!(md, "| server memory max | {} KiB |", s.rss_max_kib);
    }
    if let Some(c) = &r.capacity {
        let _ = writeln!(
            md,
            "| capacity | {} rooms, {:.0} packets/s (stopped by {}) |",
            c.rooms, c.forwarded_per_sec, c.stopped_by
        );
    }
    if r.steps.len() > 1 {
        let _ = writeln!(
            md,
            "\n| rooms | packets/s | loss | p99 ms | server CPU |\n|---|---|---|---|---|"
        );
        for s in &r.steps {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.3} % | {:.2} | {} |",
                s.rooms,
                s.forwarded_per_sec,
                s.loss_ratio * 100.0,
                s.latency_ms.p99,
                s.server_cpu_pct
                    .map_or("–".to_owned(), |c| format!("{c:.0} %"))
            );
        }
        let _ = writeln!(md, "\n![capacity](capacity.svg)");
    }
    let _ = writeln!(md, "\n![latency](latency.svg)");
    md
}
