//! `--report DIR`: `report.json` (machine-readable), `report.md` (a
//! summary for people) and SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use plotters::prelude::*;

use serde::Serialize;

use crate::measure::{self, Percentiles, ServerUse};
use crate::media::MediaReport;

/// The chat part of `report.json`.
#[derive(Debug, Serialize)]
pub struct ChatReport {
    /// `chat`.
    pub mode: &'static str,
    /// The command line.
    pub command: String,
    /// Target.
    pub target: String,
    /// Users asked for.
    pub users: usize,
    /// Users connected.
    pub connected: usize,
    /// Conversations by size.
    pub conversations: Vec<(usize, usize)>,
    /// Connect time to `welcome`.
    pub connect_ms: Percentiles,
    /// Seconds of sending.
    pub duration_s: f64,
    /// Messages queued for sending.
    pub sent: u64,
    /// Messages the server acknowledged.
    pub acked: u64,
    /// Sends refused by the server.
    pub send_errors: u64,
    /// Sends not queued because the connection's queue was full.
    pub backlogged: u64,
    /// Deliveries expected (acknowledged messages × members).
    pub expected: u64,
    /// Deliveries counted once.
    pub delivered: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Deliveries that arrived twice.
    pub duplicated: u64,
    /// Deliveries per second while sending.
    pub deliveries_per_sec: f64,
    /// Delivery latency.
    pub latency_ms: Percentiles,
    /// Delivery latency by the kind of conversation delivered in
    /// (`direct`, `group`, `channel`): whether large conversations slow
    /// small ones.
    pub latency_by_kind_ms: std::collections::BTreeMap<&'static str, Percentiles>,
    /// The server process, if `--server-pid` was given.
    pub server: Option<ServerReport>,
    /// The reconnect storm, if asked for.
    pub reconnect_storm: Option<StormReport>,
    /// Reactions, when the mix has them.
    pub reactions: Option<ReactionReport>,
    /// Messages sent as replies in a thread (counted with the others in
    /// `sent`), when the mix has them.
    pub replies: Option<u64>,
    /// The outgoing webhook receiver, with `--webhook`.
    pub webhook: Option<crate::webhook::WebhookReport>,
}

/// What `--mix …,reactions=F` did.
#[derive(Debug, Default, Serialize)]
pub struct ReactionReport {
    /// Reactions sent.
    pub sent: u64,
    /// Acknowledged (a repeat of one already there too, unchanged).
    pub acked: u64,
    /// Refused.
    pub refused: u64,
    /// Reaction events received, by everyone.
    pub events: u64,
}

/// The server's use of the machine.
#[derive(Debug, Serialize)]
pub struct ServerReport {
    /// CPU and memory while the run lasted.
    #[serde(flatten)]
    pub usage: ServerUse,
    /// Resident memory before any connection, KiB.
    pub rss_before_kib: u64,
    /// Resident memory with every user connected and idle, KiB.
    pub rss_idle_kib: u64,
    /// (idle − before) / connections, KiB.
    pub kib_per_idle_connection: f64,
    /// One sample per second.
    pub samples: Vec<measure::ProcSample>,
}

/// The reconnect storm.
#[derive(Debug, Serialize)]
pub struct StormReport {
    /// Connections dropped at once.
    pub clients: usize,
    /// Clients that reconnected (got `welcome`).
    pub resumed: usize,
    /// Clients that received the message posted while they were away.
    pub caught_up: usize,
    /// Seconds from the first reconnect until every client resumed.
    pub resumed_s: f64,
    /// Seconds from the first reconnect until every client caught up.
    pub caught_up_s: f64,
    /// Clients that never caught up.
    pub lost: usize,
}

/// Writes the chat report and its latency chart.
///
/// # Errors
/// If a file cannot be written.
pub fn write_chat(dir: &Path, r: &ChatReport, latency: &Histogram<u64>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)?;
    latency_chart(&dir.join("latency.svg"), latency, "Delivery latency")?;
    let mut md = String::new();
    let _ = writeln!(md, "# loadgen chat\n\n`{}`\n", r.command);
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| users connected | {} of {} |", r.connected, r.users);
    let _ = writeln!(
        md,
        "| connect time p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        r.connect_ms.p50, r.connect_ms.p99, r.connect_ms.max
    );
    let _ = writeln!(md, "| sending | {:.1} s |", r.duration_s);
    let _ = writeln!(
        md,
        "| messages sent / acknowledged / refused / not queued | {} / {} / {} / {} |",
        r.sent, r.acked, r.send_errors, r.backlogged
    );
    let _ = writeln!(
        md,
        "| deliveries expected / delivered / lost / duplicated | {} / {} / {} / {} |",
        r.expected, r.delivered, r.lost, r.duplicated
    );
    if let Some(replies) = r.replies {
        let _ = writeln!(
            md,
            "| of the messages sent, replies in a thread | {replies} |"
        );
    }
    if let Some(x) = &r.reactions {
        let _ = writeln!(
            md,
            "| reactions sent / acknowledged / refused / events received | {} / {} / {} / {} |",
            x.sent, x.acked, x.refused, x.events
        );
    }
    if let Some(w) = &r.webhook {
        let _ = writeln!(
            md,
            "| webhook events expected / received once / missing / repeated | {} / {} / {} / {} |",
            w.expected, w.unique, w.missing, w.duplicates
        );
        let _ = writeln!(
            md,
            "| webhook lag p50 / p90 / p99 / max | {:.1} / {:.1} / {:.1} / {:.1} ms |",
            w.lag_ms.p50, w.lag_ms.p90, w.lag_ms.p99, w.lag_ms.max
        );
    }
    let _ = writeln!(
        md,
        "| deliveries per second | {:.0} |",
        r.deliveries_per_sec
    );
    let _ = writeln!(
        md,
        "| delivery latency p50 / p90 / p99 / max | {:.1} / {:.1} / {:.1} / {:.1} ms |",
        r.latency_ms.p50, r.latency_ms.p90, r.latency_ms.p99, r.latency_ms.max
    );
    if let Some(s) = &r.server {
        let _ = writeln!(
            md,
            "| server CPU average / max | {:.0} % / {:.0} % (of one core) |",
            s.usage.cpu_avg_pct, s.usage.cpu_max_pct
        );
        let _ = writeln!(
            md,
            "| server memory before / idle / max | {} / {} / {} KiB |",
            s.rss_before_kib, s.rss_idle_kib, s.usage.rss_max_kib
        );
        let _ = writeln!(
            md,
            "| memory per idle connection | {:.1} KiB |",
            s.kib_per_idle_connection
        );
    }
    if let Some(s) = &r.reconnect_storm {
        let _ = writeln!(
            md,
            "| reconnect storm: resumed / caught up / lost | {} / {} / {} of {} |",
            s.resumed, s.caught_up, s.lost, s.clients
        );
        let _ = writeln!(
            md,
            "| reconnect storm: all resumed / all caught up | {:.2} s / {:.2} s |",
            s.resumed_s, s.caught_up_s
        );
    }
    let _ = writeln!(md, "\n![latency](latency.svg)");
    std::fs::write(dir.join("report.md"), md)?;
    Ok(())
}

/// Writes the media report, its latency chart and, after a ramp, the
/// capacity curve.
///
/// # Errors
/// If a file cannot be written.
pub fn write_media(dir: &Path, r: &MediaReport, latency: &Histogram<u64>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)?;
    latency_chart(
        &dir.join("latency.svg"),
        latency,
        "Added latency (send → receive)",
    )?;
    if !r.steps.is_empty() {
        capacity_chart(&dir.join("capacity.svg"), r)?;
    }
    std::fs::write(dir.join("report.md"), crate::media::markdown(r))?;
    Ok(())
}

/// The latency distribution: value at each percentile, up to 99.99.
pub(crate) fn latency_chart(path: &Path, h: &Histogram<u64>, title: &str) -> anyhow::Result<()> {
    let quantiles: [f64; 16] = [
        0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999,
    ];
    // x: "nines" (0 = 0 %, 1 = 90 %, 2 = 99 %, 3 = 99.9 %, 4 = 99.99 %).
    let points: Vec<(f64, f64)> = quantiles
        .iter()
        .map(|q| {
            let nines = -(1.0_f64 - q).max(1e-4).log10();
            (nines, h.value_at_quantile(*q) as f64 / 1000.0)
        })
        .collect();
    let top = points.iter().map(|p| p.1).fold(0.001, f64::max) * 1.1;
    let root = SVGBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..4.0, 0.0..top)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_labels(5)
        .x_label_formatter(&|x: &f64| match x.round() as i32 {
            0 => "0%".to_owned(),
            1 => "90%".to_owned(),
            2 => "99%".to_owned(),
            3 => "99.9%".to_owned(),
            _ => "99.99%".to_owned(),
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(points, &BLUE))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Loss and p99 latency against offered load, one point per ramp step.
fn capacity_chart(path: &Path, r: &MediaReport) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let max_x = r
        .steps
        .iter()
        .map(|s| s.forwarded_per_sec)
        .fold(1.0, f64::max)
        * 1.1;
    let max_y = r.steps.iter().map(|s| s.latency_ms.p99).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Capacity: p99 added latency by forwarded packets/s",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("packets received by subscribers per second")
        .y_desc("p99 ms")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(
            r.steps
                .iter()
                .map(|s| (s.forwarded_per_sec, s.latency_ms.p99)),
            &RED,
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(
            r.steps
                .iter()
                .map(|s| Circle::new((s.forwarded_per_sec, s.latency_ms.p99), 4, RED.filled())),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
