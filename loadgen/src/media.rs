//! `loadgen media` (being written).

use std::path::PathBuf;

use serde::Serialize;

use crate::measure::Percentiles;

/// Arguments of `loadgen media`.
#[derive(Debug, Clone, clap::Args)]
pub struct MediaArgs {
    /// Base URL of the signalling server or a standalone SFU.
    #[arg(long)]
    pub target: String,
    /// Write report.json, report.md and charts to this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// One step of a ramp.
#[derive(Debug, Serialize)]
pub struct Step {
    /// Packets received by subscribers per second.
    pub forwarded_per_sec: f64,
    /// Added latency.
    pub latency_ms: Percentiles,
}

/// The media report.
#[derive(Debug, Serialize)]
pub struct MediaReport {
    /// Ramp steps.
    pub steps: Vec<Step>,
}

/// Runs the media load.
///
/// # Errors
/// Always, for now.
pub async fn run(args: MediaArgs, _command: String) -> anyhow::Result<MediaReport> {
    anyhow::bail!("loadgen media against {}: being written", args.target)
}

/// The Markdown summary.
#[must_use]
pub fn markdown(_r: &MediaReport) -> String {
    String::new()
}
