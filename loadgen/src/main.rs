//! `loadgen`: load against Confer from outside, on one machine.
//!
//! * `loadgen chat` provisions applications and users through the REST API,
//!   connects them over the WebSocket and measures connect time, delivery
//!   latency, loss and duplicates, the server's CPU and memory, and a
//!   reconnect storm ([`chat`]).
//! * `loadgen media` joins str0m peers to the SFU (through signalling's
//!   call protocol, WHIP/WHEP against a standalone `sfu`, or a Janus
//!   VideoRoom) and measures loss, jitter, added latency and layer
//!   switches, optionally ramping up to the capacity limit ([`media`]).
//!
//! Both print a summary and, with `--report DIR`, write `report.json`,
//! `report.md` and SVG charts ([`report`]).

mod args;
mod chat;
mod client;
mod isolation;
mod janus;
mod measure;
mod media;
mod peer;
mod plan;
mod report;
mod webhook;

use clap::{Parser, Subcommand};

/// Load generator for Confer.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Many WebSocket users exchanging messages.
    Chat(chat::ChatArgs),
    /// Publishers and subscribers of audio and simulcast video.
    Media(media::MediaArgs),
    /// One application edits and deletes over a large store while another
    /// sends: the other's send → ack latency with and without it.
    Isolation(isolation::IsolationArgs),
}

fn main() -> anyhow::Result<()> {
    // reqwest speaks TLS through rustls, which needs its provider chosen.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Mode::Chat(args) => {
                let report = chat::run(args, command).await?;
                println!("{}", serde_json::to_string_pretty(&summary_chat(&report))?);
            }
            Mode::Media(args) => {
                let report = media::run(args, command).await?;
                println!("{}", media::markdown(&report));
            }
            Mode::Isolation(args) => {
                let report = isolation::run(args, command).await?;
                println!("{}", isolation::markdown(&report));
            }
        }
        Ok(())
    })
}

fn summary_chat(r: &chat::ChatReport) -> serde_json::Value {
    serde_json::json!({
        "connected": r.connected,
        "connect_ms": r.connect_ms,
        "delivered": r.delivered,
        "lost": r.lost,
        "duplicated": r.duplicated,
        "deliveries_per_sec": r.deliveries_per_sec.round(),
        "latency_ms": r.latency_ms,
        "server": r.server.as_ref().map(|s| serde_json::json!({
            "cpu_avg_pct": s.usage.cpu_avg_pct.round(),
            "cpu_max_pct": s.usage.cpu_max_pct.round(),
            "rss_max_kib": s.usage.rss_max_kib,
            "kib_per_idle_connection": s.kib_per_idle_connection,
        })),
        "reconnect_storm": r.reconnect_storm,
        "webhook": r.webhook,
    })
}
