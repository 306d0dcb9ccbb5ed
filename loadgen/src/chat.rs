//! `loadgen chat`: provisions applications and users through the REST
//! API, connects every user over the WebSocket, creates conversations in
//! the requested mix, sends messages carrying their send time, and counts
//! what every member receives.
//!
//! Phases: provision → connect (at `--ramp` connections per second;
//! connect time measured to the `welcome` frame) → conversations → idle
//! memory sample → send for `--duration` seconds at `--message-rate` →
//! drain → optional reconnect storm → report.
//!
//! A message is expected once by every member of its conversation
//! (including its sender) once the server acknowledged it; `lost` is what
//! was expected and never arrived, `duplicated` what arrived twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rand::Rng;
use serde_json::{Value, json};

use crate::client::{CaughtUp, Conn, Shared, Tally};
use crate::measure::{self, Percentiles, ProcWatch, ServerUse, histogram, micros_since};
use crate::plan::{Mix, kind_of, plan};
use crate::report;
pub use crate::report::{ChatReport, ReactionReport, ServerReport, StormReport};

/// Arguments of `loadgen chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// Base URL of the signalling server, e.g. http://127.0.0.1:8080; for
    /// a cluster, its nodes separated by commas: user `i` connects to node
    /// `i mod n`, and after `--reconnect-storm` to the next node.
    #[arg(long)]
    pub target: String,
    /// Users to provision and connect.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Applications the users are spread over.
    #[arg(long, default_value_t = 1)]
    pub apps: usize,
    /// Share of users in one-to-one conversations, groups of 10 and
    /// channels of 500, as weights; `reactions=F` also spends a share F
    /// (0 to 1) of the rate on reactions to the newest message each
    /// sender has seen, and `replies=F` sends a share F of the messages as
    /// replies in that message's thread, e.g.
    /// `direct=5,group=4,channel=1,reactions=0.2,replies=0.3`.
    #[arg(long, default_value = "direct=5,group=4,channel=1")]
    pub mix: Mix,
    /// New connections per second while connecting.
    #[arg(long, default_value_t = 500.0)]
    pub ramp: f64,
    /// Messages (and reactions) per second over all users.
    #[arg(long, default_value_t = 100.0)]
    pub message_rate: f64,
    /// After sending, drop every connection at once and measure how long
    /// until all have resumed and caught up.
    #[arg(long)]
    pub reconnect_storm: bool,
    /// Register an outgoing webhook endpoint for each application's
    /// messages, received by this process: reports the deliveries and
    /// their lag. (The server must allow deliveries to this host:
    /// `CONFER_WEBHOOKS__ALLOWED_NETWORKS='["127.0.0.0/8"]'`.)
    #[arg(long)]
    pub webhook: bool,
    /// Seconds to wait for deliveries after sending stops.
    #[arg(long, default_value_t = 5)]
    pub drain: u64,
    /// Application, server process, report.
    #[command(flatten)]
    pub common: crate::args::Common,
}

/// The reactions `loadgen chat` sends, in turn.
const REACTIONS: [&str; 5] = ["👍", "🎉", "👀", "✅", "❤️"];

#[derive(Debug, Clone)]
struct App {
    id: String,
    secret: String,
}

#[derive(Debug, Clone)]
struct User {
    app: usize,
    id: String,
    token: String,
    conversation: usize,
}

fn bar(multi: &MultiProgress, quiet: bool, len: u64, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = multi.add(ProgressBar::new(len));
    b.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(what.to_owned());
    b
}

/// Runs the chat load and writes the report.
///
/// # Errors
/// When provisioning fails or nobody can connect.
pub async fn run(args: ChatArgs, command: String) -> anyhow::Result<ChatReport> {
    if args.users < 2 {
        bail!("--users: at least 2");
    }
    let bases: Vec<String> = args
        .target
        .split(',')
        .map(|t| t.trim().trim_end_matches('/').to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    let Some(base) = bases.first().cloned() else {
        bail!("--target: give at least one URL");
    };
    let ws_bases: Vec<String> = bases
        .iter()
        .map(|b| {
            b.replacen("http://", "ws://", 1)
                .replacen("https://", "wss://", 1)
        })
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let multi = MultiProgress::new();
    let epoch = Instant::now();
    let run_id: u32 = rand::rng().random();

    // Applications, and their webhook receiver.
    let apps = applications(&http, &base, &args, run_id).await?;
    let receiver = if args.webhook {
        let receiver = crate::webhook::Receiver::start(epoch).await?;
        for app in &apps {
            receiver
                .register(&http, &base, (&app.id, &app.secret))
                .await?;
        }
        Some(receiver)
    } else {
        None
    };

    // Users, through POST /api/v1/tokens (provisions each on first use).
    let sizes = plan(args.users, args.mix);
    let mut conversation_of = Vec::with_capacity(args.users);
    for (c, size) in sizes.iter().enumerate() {
        conversation_of.extend(std::iter::repeat_n(c, *size));
    }
    let provision = bar(&multi, args.common.quiet, args.users as u64, "provision");
    let users: Vec<anyhow::Result<User>> = futures_util::stream::iter(0..args.users)
        .map(|i| {
            let http = http.clone();
            let base = base.clone();
            // A conversation's members share an application.
            let app_index = conversation_of[i] % apps.len();
            let app = apps[app_index].clone();
            let conversation = conversation_of[i];
            let provision = provision.clone();
            async move {
                let (id, token) = user_token(
                    &http,
                    &base,
                    (&app.id, &app.secret),
                    &format!("lg-{run_id:08x}-{i}"),
                    &format!("Load {i}"),
                )
                .await?;
                provision.inc(1);
                Ok(User {
                    app: app_index,
                    id,
                    token,
                    conversation,
                })
            }
        })
        .buffered(32)
        .collect()
        .await;
    let users: Vec<User> = users.into_iter().collect::<anyhow::Result<_>>()?;
    provision.finish();

    // Server memory before any connection.
    let mut watch = args.common.server_pid.and_then(ProcWatch::new);
    let rss_before = watch.as_ref().and_then(ProcWatch::rss_kib).unwrap_or(0);
    let (stop_sampler, sampler) = measure::spawn_sampler(args.common.server_pid);

    // Connect at the ramp rate.
    let connecting = bar(&multi, args.common.quiet, users.len() as u64, "connect");
    let shared: Vec<Arc<Shared>> = users.iter().map(|_| Arc::default()).collect();
    let (conns, connect_times) = connect_all(
        &ws_bases,
        0,
        &users,
        &shared,
        epoch,
        args.ramp,
        None,
        &connecting,
    )
    .await;
    connecting.finish();
    let connected = conns.iter().filter(|c| c.is_some()).count();
    if connected < 2 {
        bail!("only {connected} users could connect");
    }

    // Conversations, created by their first member.
    let creating = bar(
        &multi,
        args.common.quiet,
        sizes.len() as u64,
        "conversations",
    );
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); sizes.len()];
    for (i, u) in users.iter().enumerate() {
        members[u.conversation].push(i);
    }
    let conversation_ids = create_conversations(&users, &members, &conns, &creating).await?;
    creating.finish();

    // Idle memory: everyone connected, nothing happening.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = watch.as_mut().and_then(|w| w.rss_kib()).unwrap_or(0);

    // Send.
    let sending = bar(&multi, args.common.quiet, args.duration, "send (s)");
    let started = Instant::now();
    let mut counters = vec![0u64; users.len()];
    let (mut sent, mut backlogged, mut reactions_sent, mut replies_sent) = (0u64, 0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut owed = 0.0f64;
    let mut rng = rand::rng();
    while started.elapsed() < Duration::from_secs(args.duration) {
        tick.tick().await;
        owed += args.message_rate / 100.0;
        while owed >= 1.0 {
            owed -= 1.0;
            let i = rng.random_range(0..users.len());
            let Some(conn) = &conns[i] else { continue };
            if args.mix.reactions > 0.0 && rng.random_bool(args.mix.reactions) {
                let target = shared[i].last_message.lock().ok().and_then(|m| m.clone());
                if let Some(message_id) = target {
                    reactions_sent += 1;
                    let frame = json!({
                        "type": "react",
                        "id": format!("x{reactions_sent}"),
                        "conversation_id": conversation_ids[users[i].conversation],
                        "message_id": message_id,
                        "emoji": REACTIONS[reactions_sent as usize % REACTIONS.len()],
                    });
                    if !conn.try_send(frame.to_string()) {
                        backlogged += 1;
                    }
                    continue;
                }
            }
            counters[i] += 1;
            let n = counters[i];
            let mut frame = json!({
                "type": "send",
                "id": format!("s{n}"),
                "conversation_id": conversation_ids[users[i].conversation],
                "client_id": format!("lg-{n}"),
                "text": "load",
                "data": {"lg": [i, n, micros_since(epoch)]},
            });
            if args.mix.replies > 0.0
                && rng.random_bool(args.mix.replies)
                && let Some(root) = shared[i].last_message.lock().ok().and_then(|m| m.clone())
            {
                frame["thread_id"] = Value::String(root);
                replies_sent += 1;
            }
            if conn.try_send(frame.to_string()) {
                sent += 1;
            } else {
                counters[i] -= 1;
                backlogged += 1;
            }
        }
        sending.set_position(started.elapsed().as_secs());
    }
    let send_secs = started.elapsed().as_secs_f64();
    sending.finish();
    tokio::time::sleep(Duration::from_secs(args.drain)).await;

    // Tally.
    let storm = args.reconnect_storm;
    let mut tallies: Vec<Option<Tally>> = Vec::with_capacity(conns.len());
    for c in conns {
        tallies.push(match c {
            Some(c) if storm => Some(c.kill().await),
            Some(c) => Some(c.finish().await),
            None => None,
        });
    }
    let mut latency = histogram();
    let mut by_kind: std::collections::BTreeMap<&'static str, Histogram<u64>> = Default::default();
    let (mut delivered, mut duplicated, mut acked, mut errors, mut expected) = (0, 0, 0, 0, 0);
    let mut reactions = ReactionReport {
        sent: reactions_sent,
        ..ReactionReport::default()
    };
    for (i, t) in tallies.iter().enumerate() {
        let Some(t) = t else { continue };
        let _ = latency.add(&t.latency);
        // Each user is in one conversation: all it receives comes from there.
        let _ = by_kind
            .entry(kind_of(members[users[i].conversation].len()))
            .or_insert_with(histogram)
            .add(&t.latency);
        delivered += t.delivered;
        duplicated += t.duplicated;
        reactions.acked += t.reactions_acked;
        reactions.refused += t.reaction_errors;
        reactions.events += t.reaction_events;
        acked += t.acked;
        errors += t.errors;
        let audience = members[users[i].conversation]
            .iter()
            .filter(|m| tallies[**m].is_some())
            .count() as u64;
        expected += t.acked * audience;
    }

    let storm_report = if storm {
        Some(
            reconnect_storm(
                &ws_bases,
                &apps,
                &users,
                &shared,
                &conversation_ids,
                epoch,
                &multi,
                args.common.quiet,
            )
            .await?,
        )
    } else {
        None
    };

    let _ = stop_sampler.send(true);
    let samples = sampler.await.unwrap_or_default();
    let mut census: std::collections::BTreeMap<usize, usize> = Default::default();
    for s in &sizes {
        *census.entry(*s).or_default() += 1;
    }
    let report = ChatReport {
        mode: "chat",
        command,
        target: bases.join(","),
        users: args.users,
        connected,
        conversations: census.into_iter().collect(),
        connect_ms: Percentiles::of(&connect_times),
        duration_s: send_secs,
        sent,
        acked,
        send_errors: errors,
        backlogged,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicated,
        deliveries_per_sec: delivered as f64 / send_secs.max(1e-9),
        latency_ms: Percentiles::of(&latency),
        latency_by_kind_ms: by_kind
            .iter()
            .map(|(kind, h)| (*kind, Percentiles::of(h)))
            .collect(),
        server: args.common.server_pid.map(|_| ServerReport {
            usage: ServerUse::of(&samples),
            rss_before_kib: rss_before,
            rss_idle_kib: rss_idle,
            kib_per_idle_connection: rss_idle.saturating_sub(rss_before) as f64
                / connected.max(1) as f64,
            samples,
        }),
        reconnect_storm: storm_report,
        reactions: (args.mix.reactions > 0.0).then_some(reactions),
        replies: (args.mix.replies > 0.0).then_some(replies_sent),
        webhook: receiver.map(|r| r.report(acked)),
    };
    if let Some(dir) = &args.common.report {
        report::write_chat(dir, &report, &latency)?;
    }
    Ok(report)
}

async fn applications(
    http: &reqwest::Client,
    base: &str,
    args: &ChatArgs,
    _run_id: u32,
) -> anyhow::Result<Vec<App>> {
    if !args.common.app_creds.is_empty() {
        return args
            .common
            .app_creds
            .iter()
            .map(|c| {
                let (id, secret) = c
                    .split_once(':')
                    .ok_or_else(|| anyhow!("--app {c:?}: expected ID:SECRET"))?;
                Ok(App {
                    id: id.to_owned(),
                    secret: secret.to_owned(),
                })
            })
            .collect();
    }
    let mut apps = Vec::new();
    for _ in 0..args.apps.max(1) {
        let (id, secret) = application(http, base, &[], args.common.outbox.as_deref()).await?;
        apps.push(App { id, secret });
    }
    Ok(apps)
}

/// Provisions (on first use) the application's user `external_id` and
/// returns its id and a token, through `POST /api/v1/tokens`.
///
/// # Errors
/// When the server refuses.
pub async fn user_token(
    http: &reqwest::Client,
    base: &str,
    (app_id, secret): (&str, &str),
    external_id: &str,
    name: &str,
) -> anyhow::Result<(String, String)> {
    let r = http
        .post(format!("{base}/api/v1/tokens"))
        .basic_auth(app_id, Some(secret))
        .json(&json!({"external_id": external_id, "name": name}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("POST /api/v1/tokens: {} {}", r.status(), r.text().await?);
    }
    let v: Value = r.json().await?;
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    Ok((field("user_id"), field("token")))
}

/// An application to load: the first `ID:SECRET` of `creds`, or a new one
/// registered by e-mail code read from `outbox`.
///
/// # Errors
/// When neither is given or registration fails.
pub async fn application(
    http: &reqwest::Client,
    base: &str,
    creds: &[String],
    outbox: Option<&std::path::Path>,
) -> anyhow::Result<(String, String)> {
    if let Some(c) = creds.first() {
        let (id, secret) = c
            .split_once(':')
            .ok_or_else(|| anyhow!("--app {c:?}: expected ID:SECRET"))?;
        return Ok((id.to_owned(), secret.to_owned()));
    }
    let outbox = outbox.ok_or_else(|| {
        anyhow!("give --app ID:SECRET, or --outbox DIR to register applications by e-mail code")
    })?;
    let tag: u64 = rand::rng().random();
    let email = format!("loadgen-{tag:016x}@example.com");
    let name = "loadgen".to_owned();
    let r = http
        .post(format!("{base}/api/v1/registrations"))
        .json(&json!({"email": email, "app_name": name}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "POST /api/v1/registrations: {} {}",
            r.status(),
            r.text().await?
        );
    }
    let code = read_code(outbox, &email).await?;
    let r = http
        .post(format!("{base}/api/v1/registrations/confirm"))
        .json(&json!({"email": email, "app_name": name, "code": code}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "POST /api/v1/registrations/confirm: {} {}",
            r.status(),
            r.text().await?
        );
    }
    let v: Value = r.json().await?;
    Ok((
        v["app_id"].as_str().unwrap_or_default().to_owned(),
        v["app_secret"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// The code mailed to `email`, from the outbox (10 s at most).
async fn read_code(outbox: &std::path::Path, email: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(dir) = std::fs::read_dir(outbox) {
            for entry in dir.flatten() {
                let Ok(text) = std::fs::read_to_string(entry.path()) else {
                    continue;
                };
                if !text.contains(email) {
                    continue;
                }
                if let Some(code) = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Confer code: "))
                {
                    return Ok(code.trim().to_owned());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no code for {email} in {}", outbox.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects every user, user `i` to node `(i + shift) mod n` of
/// `ws_bases`.
#[allow(clippy::too_many_arguments)]
async fn connect_all(
    ws_bases: &[String],
    shift: usize,
    users: &[User],
    shared: &[Arc<Shared>],
    epoch: Instant,
    ramp: f64,
    caught: Option<CaughtUp>,
    progress: &ProgressBar,
) -> (Vec<Option<Conn>>, Histogram<u64>) {
    let interval = if ramp > 0.0 {
        Duration::from_secs_f64(1.0 / ramp)
    } else {
        Duration::ZERO
    };
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(users.len());
    for (i, u) in users.iter().enumerate() {
        let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let since = shared[i].last_seq.load(Ordering::Relaxed);
        let ws_base = &ws_bases[(i + shift) % ws_bases.len()];
        let mut url = format!("{ws_base}/api/v1/ws?token={}", u.token);
        if caught.is_some() {
            url.push_str(&format!("&since={since}"));
        }
        let shared = shared[i].clone();
        let caught = caught.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let r = Conn::connect(url, epoch, shared, caught).await;
            progress.inc(1);
            r
        }));
    }
    let mut conns = Vec::with_capacity(users.len());
    let mut times = histogram();
    for t in tasks {
        match t.await {
            Ok(Ok((c, took))) => {
                let _ = times.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
                conns.push(Some(c));
            }
            Ok(Err(e)) => {
                progress.println(format!("connect failed: {e:#}"));
                conns.push(None);
            }
            Err(_) => conns.push(None),
        }
    }
    (conns, times)
}

async fn create_conversations(
    users: &[User],
    members: &[Vec<usize>],
    conns: &[Option<Conn>],
    progress: &ProgressBar,
) -> anyhow::Result<Vec<String>> {
    let results: Vec<anyhow::Result<String>> = futures_util::stream::iter(members.iter())
        .map(|m| async move {
            let creator = m
                .iter()
                .find(|i| conns[**i].is_some())
                .ok_or_else(|| anyhow!("a conversation with nobody connected"))?;
            let others: Vec<&str> = m
                .iter()
                .filter(|i| *i != creator)
                .map(|i| users[*i].id.as_str())
                .collect();
            let conn = conns[*creator].as_ref().ok_or_else(|| anyhow!("gone"))?;
            let ack = conn
                .request(json!({"type": "create_conversation", "title": "load", "members": others}))
                .await
                .context("create_conversation")?;
            progress.inc(1);
            ack["conversation"]["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no conversation id in {ack}"))
        })
        .buffered(64)
        .collect()
        .await;
    results.into_iter().collect()
}

#[allow(clippy::too_many_arguments)]
async fn reconnect_storm(
    ws_bases: &[String],
    apps: &[App],
    users: &[User],
    shared: &[Arc<Shared>],
    conversation_ids: &[String],
    epoch: Instant,
    multi: &MultiProgress,
    quiet: bool,
) -> anyhow::Result<StormReport> {
    // While everyone is away, each application's bot posts one marker
    // message into each of its conversations.
    for (a, app) in apps.iter().enumerate() {
        let url = format!("{}/api/v1/ws", ws_bases[0]);
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)?;
        use base64::Engine;
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", app.id, app.secret));
        request
            .headers_mut()
            .insert("authorization", format!("Basic {basic}").parse()?);
        let (bot, _) = Conn::connect(request, epoch, Arc::default(), None).await?;
        let mut posted = std::collections::BTreeSet::new();
        for u in users.iter().filter(|u| u.app == a) {
            if posted.insert(u.conversation) {
                bot.request(json!({
                    "type": "send",
                    "conversation_id": conversation_ids[u.conversation],
                    "client_id": format!("storm-{}", u.conversation),
                    "text": "storm",
                    "data": {"storm": true},
                }))
                .await
                .context("posting the storm marker")?;
            }
        }
        bot.finish().await;
    }
    let caught: CaughtUp = Arc::new(tokio::sync::Notify::new());
    let progress = bar(multi, quiet, users.len() as u64, "storm");
    let started = Instant::now();
    // Against a cluster, each user comes back on another node.
    let (conns, _) = connect_all(
        ws_bases,
        1,
        users,
        shared,
        epoch,
        0.0,
        Some(caught.clone()),
        &progress,
    )
    .await;
    let resumed_s = started.elapsed().as_secs_f64();
    let resumed = conns.iter().filter(|c| c.is_some()).count();
    let deadline = started + Duration::from_secs(60);
    loop {
        let done = shared
            .iter()
            .filter(|s| s.caught_up.load(Ordering::Relaxed))
            .count();
        if done == users.len() || Instant::now() > deadline {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), caught.notified()).await;
    }
    let caught_up_s = started.elapsed().as_secs_f64();
    progress.finish();
    let caught_up = shared
        .iter()
        .filter(|s| s.caught_up.load(Ordering::Relaxed))
        .count();
    for c in conns.into_iter().flatten() {
        c.finish().await;
    }
    Ok(StormReport {
        clients: users.len(),
        resumed,
        caught_up,
        resumed_s,
        caught_up_s,
        lost: users.len() - caught_up,
    })
}
