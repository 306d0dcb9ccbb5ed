//! The standalone `sfu` binary: WHIP/WHEP and metrics over HTTP, media on
//! the worker sockets.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use confer_sfu::config::ConfigError;
use confer_sfu::http::{HttpState, app};
use confer_sfu::serve::serve;
use confer_sfu::tls::{Certificates, TlsListener};
use confer_sfu::{EmbeddedSfu, SfuConfig};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

/// Confer's selective forwarding unit.
#[derive(Debug, Parser)]
#[command(name = "sfu", version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "CONFER_SFU_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP address for WHIP/WHEP and metrics.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Bearer token required by WHIP/WHEP.
    #[arg(long)]
    token: Option<String>,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sfu: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut figment = Figment::from(Serialized::defaults(SfuConfig::default()));
    if let Some(path) = &cli.config {
        if !path.is_file() {
            bail!("configuration file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    // `__` reaches into sections: CONFER_SFU_TLS__CERT.
    figment = figment.merge(Env::prefixed("CONFER_SFU_").split("__").ignore(&["config"]));
    let mut config: SfuConfig = figment.extract().context("cannot load configuration")?;
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(token) = cli.token {
        config.token = Some(token);
    }
    config.validate()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let certificates = config
        .tls
        .as_ref()
        .map(Certificates::load)
        .transpose()
        .map_err(ConfigError::from)?;

    let sfu = EmbeddedSfu::start(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let relay = match &config.relay {
            Some(relay) => Some(sfu.start_relay(relay, config.token.clone())?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addrs: Vec<String> = sfu.worker_addrs().iter().map(ToString::to_string).collect();
        // Before the ready line: from then on SIGHUP reloads instead of killing.
        let (watcher, scheme) = Certificates::watch_if_any(certificates.as_ref());
        let relay = relay.map_or_else(String::new, |r| format!(" relay on {}", r.addr));
        println!(
            "sfu listening on {scheme}://{} media on {}{relay}",
            listener.local_addr()?,
            addrs.join(",")
        );
        let state = HttpState {
            sfu: sfu.clone(),
            token: config.token.clone(),
            metrics_open: config.metrics_open,
        };
        let limits = config.serve_limits();
        // The peer address is not used by the SFU's routes.
        let peer = |addr: SocketAddr| addr;
        let served = match &certificates {
            Some(certificates) => {
                // HTTP/2 for the control API's client, HTTP/1.1 for others.
                let listener = TlsListener::new_h2(listener, certificates);
                serve(listener, app(state), peer, limits, shutdown_signal()).await
            }
            None => serve(listener, app(state), peer, limits, shutdown_signal()).await,
        };
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        served.context("serving HTTP")
    })?;
    sfu.shutdown();
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
