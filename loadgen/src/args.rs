//! Options every `loadgen` mode has.

use std::path::PathBuf;

/// How to reach the server's application and process, and where the
/// report goes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// An existing application to use, `ID:SECRET` (repeatable); without
    /// it, applications are registered by e-mail code read from `--outbox`.
    #[arg(long = "app")]
    pub app_creds: Vec<String>,
    /// The signalling server's mail outbox (`<data_dir>/outbox`), to read
    /// registration codes from.
    #[arg(long)]
    pub outbox: Option<PathBuf>,
    /// The server's process id, to sample its CPU and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write report.json, report.md and charts to this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}
