//! `loadgen`: chat and media load against Confer from outside.
//!
//! Not built yet: it only parses its command line and says so. Chat load
//! (many WebSocket users) needs the WebSocket protocol, and media load needs
//! the SFU; both come later.

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
    Chat {
        /// Base URL of the signalling server.
        #[arg(long)]
        target: String,
    },
    /// Publishers and subscribers of audio and simulcast video.
    Media {
        /// Base URL of the signalling server or a standalone SFU.
        #[arg(long)]
        target: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (mode, target) = match &cli.command {
        Mode::Chat { target } => ("chat", target),
        Mode::Media { target } => ("media", target),
    };
    anyhow::bail!("loadgen {mode} against {target}: not implemented yet")
}
