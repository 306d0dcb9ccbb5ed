//! The `signalling` binary: parses the command line, loads the
//! configuration, sets up logging and runs the server or an admin command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use confer_sfu::tls::{Certificates, TlsListener};
use confer_signalling::config::{ConfigError, LogFormat, SignallingConfig};
use confer_signalling::ids::{AppId, SystemClock, UserId};
use confer_signalling::store::Store;
use confer_signalling::{Services, health, http, run};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

/// Confer collaboration server.
#[derive(Debug, Parser)]
#[command(name = "signalling", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options of `serve`, the default command.
    #[command(flatten)]
    serve: ConfigArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ConfigArgs),
    /// Operator commands working on the configured data directory.
    Admin {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Debug, Args, Default)]
struct ConfigArgs {
    /// TOML configuration file (default: built-in defaults).
    #[arg(long, env = "CONFER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Directory for the database, the outbox and files.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
enum AdminAction {
    /// Check the configuration and print the values in effect.
    CheckConfig,
    /// List subscribers.
    Subscribers,
    /// List applications.
    Applications {
        /// Only those of the subscriber with this e-mail.
        #[arg(long)]
        subscriber: Option<String>,
    },
    /// Check every component, as /healthz does.
    Health,
    /// Lock a user: its tokens are refused.
    LockUser(UserRef),
    /// Unlock a user.
    UnlockUser(UserRef),
    /// List the mails in the outbox, newest first.
    Outbox,
}

#[derive(Debug, Clone, Args)]
struct UserRef {
    /// Application id.
    #[arg(long)]
    app: AppId,
    /// Server user id.
    #[arg(
        long,
        conflicts_with = "external_id",
        required_unless_present = "external_id"
    )]
    user: Option<UserId>,
    /// The application's own id for the user.
    #[arg(long)]
    external_id: Option<String>,
}

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("signalling: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<()> {
    // Both ring and aws-lc-rs are in the dependency tree; rustls needs to be
    // told which one to use before any TLS connection (SMTP) is made.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        None => runtime.block_on(serve(&cli.serve)),
        Some(Command::Serve(args)) => runtime.block_on(serve(&merge(args, &cli.serve))),
        Some(Command::Admin { config, action }) => {
            runtime.block_on(admin(&merge(config, &cli.serve), action))
        }
        Some(Command::Openapi) => {
            println!("{}", serde_json::to_string_pretty(&http::openapi())?);
            Ok(())
        }
    }
}

/// Flags given before the subcommand apply unless repeated after it.
fn merge(args: ConfigArgs, outer: &ConfigArgs) -> ConfigArgs {
    ConfigArgs {
        config: args.config.or_else(|| outer.config.clone()),
        listen: args.listen.or(outer.listen),
        data_dir: args.data_dir.or_else(|| outer.data_dir.clone()),
    }
}

/// Defaults, then the TOML file, then `CONFER_*` variables (`__` separates
/// sections: `CONFER_MAIL__SMTP__HOST`), then flags.
fn load_config(args: &ConfigArgs) -> anyhow::Result<SignallingConfig> {
    let mut figment = Figment::from(Serialized::defaults(SignallingConfig::default()));
    if let Some(path) = &args.config {
        if !path.is_file() {
            bail!("configuration file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(Env::prefixed("CONFER_").split("__").ignore(&["config"]));
    let mut config: SignallingConfig = figment
        .extract()
        .map_err(describe_figment_error)
        .context("cannot load configuration")?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir.clone_from(dir);
    }
    config.validate()?;
    Ok(config)
}

/// One line per problem: the dotted setting name, what is wrong, and where
/// the value came from.
fn describe_figment_error(err: figment::Error) -> anyhow::Error {
    let lines: Vec<String> = err
        .into_iter()
        .map(|e| {
            let name = e.path.join(".").to_lowercase();
            let origin = e.metadata.as_ref().map_or_else(String::new, |m| {
                let source = m
                    .source
                    .as_ref()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default();
                format!(" (from {}{source})", m.name)
            });
            if name.is_empty() {
                format!("  - {}{origin}", e.kind)
            } else {
                format!("  - `{name}`: {}{origin}", e.kind)
            }
        })
        .collect();
    anyhow::anyhow!("invalid configuration:\n{}", lines.join("\n"))
}

fn init_logging(config: &SignallingConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(args: &ConfigArgs) -> anyhow::Result<()> {
    let config = load_config(args)?;
    init_logging(&config);
    let certificates = load_certificates(&config)?;
    let listener = confer_signalling::server::listen(config.listen, config.http.listen_backlog)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let services = Services::open(config, Arc::new(SystemClock)).await?;
    // Before the ready line: from then on SIGHUP reloads instead of killing.
    let (watcher, scheme) = Certificates::watch_if_any(certificates.as_ref());
    println!(
        "signalling listening on {scheme}://{}",
        listener.local_addr()?
    );
    let served = match &certificates {
        Some(certificates) => {
            run(
                TlsListener::new(listener, certificates),
                services.clone(),
                shutdown_signal(),
            )
            .await
        }
        None => run(listener, services.clone(), shutdown_signal()).await,
    };
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    served?;
    services.store.ping().await.ok();
    Ok(())
}

/// The `[tls]` certificate and key, read and checked, if configured.
fn load_certificates(config: &SignallingConfig) -> anyhow::Result<Option<Arc<Certificates>>> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let certificates = Certificates::load(tls).map_err(ConfigError::from)?;
    Ok(Some(certificates))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

async fn admin(args: &ConfigArgs, action: AdminAction) -> anyhow::Result<()> {
    let config = load_config(args)?;
    match action {
        AdminAction::CheckConfig => {
            load_certificates(&config)?;
            let mut shown = config.clone();
            shown.store.url = shown
                .store
                .url
                .as_deref()
                .map(confer_signalling::config::redact_url);
            // Secrets are not shown: only whether they are set.
            const HIDDEN: &str = "********";
            if let Some(smtp) = &mut shown.mail.smtp
                && smtp.password.is_some()
            {
                smtp.password = Some(HIDDEN.to_owned());
            }
            if let Some(s3) = &mut shown.files.s3 {
                HIDDEN.clone_into(&mut s3.secret_key);
            }
            if let Some(turn) = &mut shown.calls.turn {
                HIDDEN.clone_into(&mut turn.secret);
            }
            for node in &mut shown.sfu.nodes {
                if node.token.is_some() {
                    node.token = Some(HIDDEN.to_owned());
                }
            }
            println!("configuration OK\n\n{}", toml::to_string_pretty(&shown)?);
        }
        AdminAction::Health => {
            let services = Services::open(config, Arc::new(SystemClock)).await?;
            let report = health::check(&services).await;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.is_ok() {
                bail!("at least one component is down");
            }
        }
        AdminAction::Outbox => list_outbox(&config.outbox_dir())?,
        other => {
            // A running server may hold SQLite's write lock at the moment
            // this process opens the database or writes (SQLITE_BUSY comes
            // back at once when waiting could deadlock): try again.
            let mut attempt = 1;
            loop {
                let result = async {
                    let opened = confer_signalling::server::open_store(&config).await?;
                    let result = admin_store(opened.store.as_ref(), other.clone()).await;
                    opened.close().await;
                    result
                }
                .await;
                match result {
                    Err(e) if attempt < 5 && format!("{e:#}").contains("database is locked") => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    other => break other?,
                }
            }
        }
    }
    Ok(())
}

async fn admin_store(store: &dyn Store, action: AdminAction) -> anyhow::Result<()> {
    match action {
        AdminAction::Subscribers => {
            println!("{:<36}  {:<20}  email", "subscriber_id", "created_at");
            for s in store.subscribers().await? {
                println!(
                    "{:<36}  {:<20}  {}",
                    s.id,
                    s.created_at.to_rfc3339(),
                    s.email
                );
            }
        }
        AdminAction::Applications { subscriber } => {
            let owner = match subscriber {
                Some(email) => Some(
                    store
                        .subscriber_by_email(&email.trim().to_lowercase())
                        .await?
                        .with_context(|| format!("no subscriber with e-mail {email}"))?
                        .id,
                ),
                None => None,
            };
            println!(
                "{:<36}  {:<36}  {:<12}  name",
                "app_id", "subscriber_id", "status"
            );
            for a in store.applications(owner).await? {
                let status = if a.unregistered_at.is_some() {
                    "unregistered"
                } else {
                    "registered"
                };
                println!(
                    "{:<36}  {:<36}  {:<12}  {}",
                    a.id, a.subscriber_id, status, a.name
                );
            }
        }
        AdminAction::LockUser(user) => set_locked(store, &user, true).await?,
        AdminAction::UnlockUser(user) => set_locked(store, &user, false).await?,
        AdminAction::CheckConfig | AdminAction::Health | AdminAction::Outbox => {}
    }
    Ok(())
}

async fn set_locked(store: &dyn Store, user: &UserRef, locked: bool) -> anyhow::Result<()> {
    let id = match (&user.user, &user.external_id) {
        (Some(id), _) => *id,
        (None, Some(ext)) => {
            store
                .user_by_external_id(user.app, ext)
                .await?
                .with_context(|| {
                    format!(
                        "application {} has no user with external id {ext:?}",
                        user.app
                    )
                })?
                .id
        }
        (None, None) => bail!("give --user or --external-id"),
    };
    let updated = store
        .set_user_locked(user.app, id, locked)
        .await?
        .with_context(|| format!("application {} has no user {id}", user.app))?;
    println!(
        "user {} ({}) of application {} is now {}",
        updated.id,
        updated.name,
        updated.app_id,
        if updated.locked { "locked" } else { "unlocked" }
    );
    Ok(())
}

fn list_outbox(dir: &Path) -> anyhow::Result<()> {
    let mut mails = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("the outbox {} is empty", dir.display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "eml") {
            let modified = entry.metadata()?.modified()?;
            mails.push((modified, path));
        }
    }
    mails.sort_by_key(|m| std::cmp::Reverse(m.0));
    println!("{} mail(s) in {}", mails.len(), dir.display());
    for (modified, path) in mails {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim))
                .unwrap_or("")
                .to_owned()
        };
        println!(
            "{}  to: {}  subject: {}  file: {}",
            humantime::format_rfc3339_seconds(modified),
            header("To:"),
            header("Subject:"),
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
        );
    }
    Ok(())
}
