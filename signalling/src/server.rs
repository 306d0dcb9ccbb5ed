//! Wiring: the backends behind [`Services`], and [`run`], which serves
//! them on a listener until a shutdown signal.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use confer_sfu::nodes::SfuNodes;
use confer_sfu::{EmbeddedSfu, SfuControl};

use crate::bus::{Bus, InProcessBus};
use crate::calls::Calls;
use crate::config::{SfuNodeConfig, SignallingConfig};
use crate::files::Files;
use crate::ids::{AppId, Clock, Timestamp, UserId};
use crate::mail::{self, Mailer};
use crate::messaging::Messaging;
use crate::store::{FileStore, MessageStore};
use crate::store::{PgStore, SqliteStore, Store};
use crate::tenancy::Tenancy;

/// Undelivered events a WebSocket connection may hold before the bus drops
/// it (see [`crate::bus`]).
pub const CONNECTION_QUEUE: usize = 1024;

/// Everything a request handler can reach.
#[derive(Debug)]
pub struct Services {
    /// The checked configuration.
    pub config: Arc<SignallingConfig>,
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Outgoing mail.
    pub mailer: Arc<dyn Mailer>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Registration, applications, users.
    pub tenancy: Tenancy,
    /// Conversations and messages.
    pub messaging: Arc<Messaging>,
    /// Live event fan-out.
    pub bus: Arc<dyn Bus>,
    /// The media plane (embedded SFU workers).
    pub sfu: Arc<dyn SfuControl>,
    /// Calls.
    pub calls: Arc<Calls>,
    /// Attachments.
    pub files: Arc<Files>,
    /// Outgoing webhook deliveries.
    pub outbox: Arc<crate::outbox::Outbox>,
    /// The last health report (`/healthz`).
    pub health: crate::health::HealthCache,
    /// Rate limits shared by every request.
    pub limits: Arc<crate::limits::Limits>,
    /// Prometheus exposition.
    pub metrics: PrometheusHandle,
}

impl Services {
    /// Opens the backends `config` asks for: the store (SQLite in the data
    /// directory, or PostgreSQL; migrated), the bus (in-process or NATS),
    /// SMTP or the outbox, and starts the embedded SFU workers; records the
    /// end of calls a previous process left open.
    ///
    /// # Errors
    /// If the configuration is invalid or a backend cannot be opened.
    pub async fn open(
        config: SignallingConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<Self>> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let store = open_store(&config).await?;
        let bus = open_bus(&config).await?;
        let mailer =
            mail::from_config(&config.mail, &config.outbox_dir()).context("setting up mail")?;
        // reqwest (the S3 backend) speaks TLS through rustls, which needs
        // its provider chosen; the binaries choose it too.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let storage = crate::files::open_storage(&config.files, &config.files_dir())
            .context("opening file storage")?;

        let sfu: Arc<dyn SfuControl> = if config.sfu.nodes.is_empty() {
            let sfu = EmbeddedSfu::start(&config.sfu.embedded()).context("starting the SFU")?;
            tracing::info!(udp = ?sfu.worker_addrs(), "SFU workers started");
            sfu
        } else {
            let specs = config.sfu.nodes.iter().map(SfuNodeConfig::spec).collect();
            let nodes = SfuNodes::connect(specs)
                .await
                .context("connecting to the SFU nodes")?;
            tracing::info!(nodes = config.sfu.nodes.len(), "placing calls on SFU nodes");
            nodes
        };
        let services = Self::with_backends(
            config,
            Backends {
                store: store.store,
                messages: store.messages,
                files: store.files,
                bus,
                storage,
                mailer,
                sfu,
            },
            clock,
        );
        let interrupted = services
            .calls
            .recover(services.store.as_ref())
            .await
            .context("recording calls interrupted by a restart")?;
        if interrupted > 0 {
            tracing::info!(
                calls = interrupted,
                "recorded the end of calls interrupted by a restart"
            );
        }
        Ok(services)
    }

    /// Services over backends the caller built.
    pub fn with_backends(
        config: SignallingConfig,
        backends: Backends,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let Backends {
            store,
            messages,
            files,
            bus,
            storage,
            mailer,
            sfu,
        } = backends;
        let config = Arc::new(config);
        let limits = Arc::new(crate::limits::Limits::new(&config.limits));
        let file_garbage = Arc::new(tokio::sync::Notify::new());
        let messaging = Arc::new(
            Messaging::new(messages.clone(), store.clone(), bus.clone(), clock.clone())
                .with_files(files.clone(), file_garbage.clone()),
        );
        let tenancy = Tenancy::new(store.clone(), mailer.clone(), clock.clone(), config.clone())
            .with_messaging(messaging.clone());
        let outbox = Arc::new(crate::outbox::Outbox::new(
            store.clone(),
            messages,
            clock.clone(),
            config.webhooks.clone(),
            messaging.taps().clone(),
        ));
        let files = Arc::new(Files::new(
            config.files.clone(),
            storage,
            files,
            messaging.clone(),
            clock.clone(),
            file_garbage,
        ));
        let calls = Calls::new(
            config.calls.clone(),
            messaging.clone(),
            bus.clone(),
            sfu.clone(),
            clock.clone(),
        );
        Arc::new(Self {
            config,
            store,
            mailer,
            clock,
            tenancy,
            messaging,
            bus,
            sfu,
            calls,
            files,
            outbox,
            limits,
            health: crate::health::HealthCache::default(),
            metrics: metrics_handle(),
        })
    }
}

/// The backends [`Services`] run on.
#[derive(Debug)]
pub struct Backends {
    /// Tenancy persistence.
    pub store: Arc<dyn Store>,
    /// Messaging persistence.
    pub messages: Arc<dyn MessageStore>,
    /// File records.
    pub files: Arc<dyn FileStore>,
    /// Live event fan-out between connections (and nodes).
    pub bus: Arc<dyn Bus>,
    /// File bytes.
    pub storage: crate::files::Backend,
    /// Outgoing mail.
    pub mailer: Arc<dyn Mailer>,
    /// The media plane.
    pub sfu: Arc<dyn SfuControl>,
}

/// An opened store: each of its faces, and the engine, to close it.
#[derive(Debug)]
pub struct OpenedStore {
    /// Tenancy persistence.
    pub store: Arc<dyn Store>,
    /// Messaging persistence.
    pub messages: Arc<dyn MessageStore>,
    /// File records.
    pub files: Arc<dyn FileStore>,
    engine: Engine,
}

#[derive(Debug)]
enum Engine {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

impl OpenedStore {
    /// Finishes pending writes and closes the connections.
    pub async fn close(&self) {
        match &self.engine {
            Engine::Sqlite(s) => s.close().await,
            Engine::Postgres(s) => s.close().await,
        }
    }
}

/// Opens (and migrates) the store `config` names: PostgreSQL at
/// `store.url`, else SQLite in the data directory.
///
/// # Errors
/// If the database cannot be reached, opened or migrated.
pub async fn open_store(config: &SignallingConfig) -> anyhow::Result<OpenedStore> {
    match &config.store.url {
        Some(url) => {
            let pg = Arc::new(PgStore::connect(url).await.with_context(|| {
                format!(
                    "opening the PostgreSQL store at {}",
                    crate::config::redact_url(url)
                )
            })?);
            Ok(OpenedStore {
                store: pg.clone(),
                messages: pg.clone(),
                files: pg.clone(),
                engine: Engine::Postgres(pg),
            })
        }
        None => {
            let path = config.database_path();
            let sqlite = Arc::new(
                SqliteStore::open(&path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?,
            );
            Ok(OpenedStore {
                store: sqlite.clone(),
                messages: sqlite.clone(),
                files: sqlite.clone(),
                engine: Engine::Sqlite(sqlite),
            })
        }
    }
}

/// The bus `config` names: NATS at `bus.url`, else in-process.
///
/// # Errors
/// If no NATS server answers.
pub async fn open_bus(config: &SignallingConfig) -> anyhow::Result<Arc<dyn Bus>> {
    Ok(match &config.bus.url {
        Some(url) => crate::bus::NatsBus::connect(url, CONNECTION_QUEUE).await?,
        None => InProcessBus::new(CONNECTION_QUEUE),
    })
}

impl Services {
    /// Closes the live WebSocket sessions of `user` (4003 `revoked`) and
    /// drops it from its call.
    pub async fn end_sessions_of_user(&self, user: crate::ids::UserId) {
        self.bus
            .close_user(user, crate::ws::close::REVOKED, "revoked");
        self.calls.revoke(user).await;
    }

    /// Closes every live WebSocket session of an application: its users'
    /// and its bot's.
    ///
    /// # Errors
    /// If the store cannot list the users.
    pub async fn end_sessions_of_app(
        &self,
        app: crate::ids::AppId,
    ) -> Result<(), crate::store::StoreError> {
        for user in self.messaging.store().app_users(app).await? {
            self.end_sessions_of_user(user).await;
        }
        self.end_sessions_of_user(crate::messaging::bot_id(app))
            .await;
        Ok(())
    }
}

/// How often the store is read for users locked and applications
/// unregistered by another process (`signalling admin lock-user`).
const REVOCATION_POLL: Duration = Duration::from_secs(2);

/// Closes the sessions of users locked and applications unregistered
/// since the last look, whoever did it: this process closes them at once
/// when it does it itself, this catches the others (within
/// [`REVOCATION_POLL`]). A session that was being opened while a lock
/// landed checks again once subscribed ([`crate::ws::run`]).
async fn watch_revocations(services: Arc<Services>) {
    let mut locked: Option<HashSet<UserId>> = None;
    let mut unregistered: Option<HashSet<AppId>> = None;
    let mut tick = tokio::time::interval(REVOCATION_POLL);
    loop {
        tick.tick().await;
        // The first look only learns what is already so: no session of
        // theirs can have been admitted.
        match services.store.locked_users().await {
            Ok(now_locked) => {
                let now_locked: HashSet<UserId> = now_locked.into_iter().collect();
                if let Some(before) = &locked {
                    for user in now_locked.difference(before) {
                        services.end_sessions_of_user(*user).await;
                    }
                }
                locked = Some(now_locked);
            }
            Err(e) => tracing::warn!(error = %e, "reading locked users failed"),
        }
        match services.store.applications(None).await {
            Ok(apps) => {
                let now_unregistered: HashSet<AppId> = apps
                    .iter()
                    .filter(|a| a.unregistered_at.is_some())
                    .map(|a| a.id)
                    .collect();
                if let Some(before) = &unregistered {
                    for app in now_unregistered.difference(before) {
                        if let Err(e) = services.end_sessions_of_app(*app).await {
                            tracing::warn!(error = %e, "closing an application's sessions failed");
                        }
                    }
                }
                unregistered = Some(now_unregistered);
            }
            Err(e) => tracing::warn!(error = %e, "reading applications failed"),
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is already installed (a host
            // program embedding the library); metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A listening socket with a `backlog` of connections waiting to be
/// accepted. tokio's default (1024) is too short for a reconnect storm:
/// connections beyond it lose their SYN and retry after 1, 3, 7, 15 … s.
/// The kernel caps it at `net.core.somaxconn`.
///
/// # Errors
/// If the address cannot be bound.
pub fn listen(addr: std::net::SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves the HTTP application on `listener` until `shutdown` completes,
/// then stops accepting, lets requests in flight finish and returns.
/// Connections are held to `[http]`'s `header_read_timeout_secs` and
/// `connections_per_ip` (see [`confer_sfu::serve`]).
///
/// `listener` is a [`TcpListener`] for plain HTTP, or a
/// [`confer_sfu::tls::TlsListener`] for HTTPS and WSS.
///
/// # Errors
/// If the server fails while running.
pub async fn run<L>(
    listener: L,
    services: Arc<Services>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
    L::Io: confer_sfu::serve::NoDelay,
{
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "signalling listening");
    let upkeep = {
        let handle = services.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    };
    let pruning = {
        let services = services.clone();
        tokio::spawn(async move {
            let keep = Duration::from_secs(services.config.events.retention_days * 24 * 60 * 60);
            let mut tick = tokio::time::interval(Duration::from_secs(60 * 60));
            loop {
                tick.tick().await;
                let before = Timestamp(
                    services
                        .clock
                        .now()
                        .0
                        .saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX)),
                );
                match services.messaging.store().prune_events(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "pruned old events"),
                    Err(e) => tracing::warn!(error = %e, "pruning events failed"),
                }
                let audit_days =
                    i64::try_from(services.config.audit.retention_days).unwrap_or(i64::MAX);
                let audit_before = Timestamp(
                    services
                        .clock
                        .now()
                        .0
                        .saturating_sub(audit_days.saturating_mul(24 * 60 * 60 * 1000)),
                );
                match services.store.prune_audit(audit_before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "pruned old audit entries"),
                    Err(e) => tracing::warn!(error = %e, "pruning the audit log failed"),
                }
                if let Err(e) = services.tidy_exports().await {
                    tracing::warn!(error = %e, "tidying exports failed");
                }
                match services.outbox.prune().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "pruned old webhook deliveries"),
                    Err(e) => tracing::warn!(error = %e, "pruning webhook deliveries failed"),
                }
            }
        })
    };
    match services.calls.recover(services.store.as_ref()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            calls = n,
            "recorded the end of calls interrupted by a restart"
        ),
        Err(e) => tracing::warn!(error = %e, "recovering interrupted calls failed"),
    }
    let housekeeping = {
        let services = services.clone();
        tokio::spawn(async move {
            let outbox_age =
                Duration::from_secs(services.config.mail.outbox_retention_hours * 3600);
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                // Walking a map a flood filled can take a while: off the
                // runtime's threads.
                let limits = services.limits.clone();
                let _ = tokio::task::spawn_blocking(move || limits.tidy()).await;
                match services.mailer.tidy(outbox_age).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "deleted old outbox mail"),
                    Err(e) => tracing::warn!(error = %e, "deleting old outbox mail failed"),
                }
            }
        })
    };
    let revocations = tokio::spawn(watch_revocations(services.clone()));
    let stalls = tokio::spawn(watch_stalls());
    let call_events = tokio::spawn(services.calls.clone().pump_sfu_events());
    let call_timers = tokio::spawn(services.calls.clone().run_timers());
    let call_orphans = tokio::spawn(services.calls.clone().sweep_orphans());
    let file_upkeep = tokio::spawn(services.files.clone().run_sweeper());
    let webhooks = tokio::spawn(services.outbox.clone().run());
    let retention = {
        let services = services.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs(services.config.retention.sweep_interval_secs);
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = services.sweep_retention().await {
                    tracing::warn!(error = %e, "the retention sweep failed");
                }
            }
        })
    };
    let limits = services.config.http.serve_limits();
    let app = crate::http::app(services);
    let served = confer_sfu::serve::serve(listener, app, PeerAddr, limits, shutdown).await;
    upkeep.abort();
    pruning.abort();
    housekeeping.abort();
    revocations.abort();
    stalls.abort();
    call_events.abort();
    call_timers.abort();
    call_orphans.abort();
    file_upkeep.abort();
    webhooks.abort();
    retention.abort();
    tracing::info!("signalling stopped");
    served.context("serving HTTP")
}

/// How often [`watch_stalls`] looks.
const STALL_TICK: Duration = Duration::from_millis(10);

/// Measures how late the runtime runs a task that asked to wake up every
/// [`STALL_TICK`]: a request thread busy for long (a slow poll, blocking
/// work on a thread that delivers) shows as lateness. Recorded in the
/// `runtime_stall_seconds` histogram of `/metrics`.
async fn watch_stalls() {
    let mut expected = tokio::time::Instant::now() + STALL_TICK;
    loop {
        tokio::time::sleep_until(expected).await;
        let now = tokio::time::Instant::now();
        metrics::histogram!("runtime_stall_seconds")
            .record(now.saturating_duration_since(expected).as_secs_f64());
        expected = now + STALL_TICK;
    }
}

/// The TCP peer of a connection, in each request's extensions as
/// `ConnectInfo<PeerAddr>` (per-IP limits, and the demo is offered to
/// loopback peers only; see [`crate::http::extract::client_ip`]).
/// [`run`] puts it there; a request without it (a router called without a
/// server) counts as coming from elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);
