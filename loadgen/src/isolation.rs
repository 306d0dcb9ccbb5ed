//! `loadgen isolation`: does one tenant's heavy editing slow down another
//! tenant's sends?
//!
//! Application A (the noisy tenant) first posts `--seed-messages` messages
//! with searchable text, so the shared store and its full-text index are
//! large. Then the run alternates two phases of `--phase-secs` each, for
//! `--rounds` rounds: **quiet**, where only application B (the victim)
//! sends at `--victim-rate`; and **noisy**, where B sends the same way
//! while A edits and deletes its own messages at `--noise-rate`. Each
//! phase records B's send → `ack` latency (the time the server took to
//! make the message durable and say so); the report compares the two.
//!
//! Every frame counts against the server's per-connection rate limits:
//! run the server with them lifted (see `docs/benchmarks.md`), or the
//! seeding is refused with `rate_limited`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::chat::{application, user_token};
use crate::client::Conn;
use crate::measure::{self, Percentiles, ServerUse, histogram};

/// Arguments of `loadgen isolation`.
#[derive(Debug, Clone, clap::Args)]
pub struct IsolationArgs {
    /// Base URL of the signalling server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub target: String,
    /// Messages application A posts before the phases.
    #[arg(long, default_value_t = 200_000)]
    pub seed_messages: usize,
    /// A's users (one connection each), sharing the seeding and the noise.
    #[arg(long, default_value_t = 8)]
    pub noisy_users: usize,
    /// B's users (one connection each), sharing B's sends.
    #[arg(long, default_value_t = 4)]
    pub victim_users: usize,
    /// B's messages per second, in every phase.
    #[arg(long, default_value_t = 100.0)]
    pub victim_rate: f64,
    /// A's edits and deletes per second in the noisy phases.
    #[arg(long, default_value_t = 100.0)]
    pub noise_rate: f64,
    /// Share of A's operations that are deletes (the rest are edits).
    #[arg(long, default_value_t = 0.25)]
    pub delete_share: f64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 20)]
    pub phase_secs: u64,
    /// Quiet + noisy pairs.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds of rest between seeding and the first phase, so that the
    /// server's background work after the bulk load (checkpoints) is done.
    #[arg(long, default_value_t = 10)]
    pub settle_secs: u64,
    /// Application, server process, report.
    #[command(flatten)]
    pub common: crate::args::Common,
}

/// `report.json` of `loadgen isolation`.
#[derive(Debug, Serialize)]
pub struct IsolationReport {
    /// `isolation`.
    pub mode: &'static str,
    /// The command line.
    pub command: String,
    /// Messages A posted before the phases.
    pub seeded: usize,
    /// Seconds the seeding took.
    pub seed_s: f64,
    /// B's send → ack latency with A idle.
    pub quiet_ack_ms: Percentiles,
    /// B's send → ack latency while A edits and deletes.
    pub noisy_ack_ms: Percentiles,
    /// noisy p99 / quiet p99.
    pub p99_ratio: f64,
    /// B's p99 in each phase, ms, in order (quiet, noisy, quiet, …).
    pub phase_p99_ms: Vec<f64>,
    /// B's sends refused or unanswered, over all phases.
    pub victim_errors: u64,
    /// A's edits and deletes done in the noisy phases.
    pub noise_done: u64,
    /// A's edits and deletes refused or unanswered.
    pub noise_errors: u64,
    /// A's edit/delete → ack latency.
    pub noise_ack_ms: Percentiles,
    /// The server's CPU and memory, if `--server-pid` was given.
    pub server: Option<ServerUse>,
}

/// A's message that can still be edited or deleted.
#[derive(Debug, Clone)]
struct Posted {
    conversation: Arc<str>,
    message: String,
}

/// One connected user of an application, in its application's group.
#[derive(Debug)]
struct Member {
    conn: Arc<Conn>,
    conversation: Arc<str>,
}

const WORDS: &[&str] = &[
    "order",
    "invoice",
    "shipment",
    "warehouse",
    "customer",
    "contract",
    "approved",
    "pending",
    "delivery",
    "payment",
    "return",
    "discount",
    "supplier",
    "quarter",
    "report",
    "budget",
    "meeting",
    "review",
];

fn text(rng: &mut impl Rng) -> String {
    let mut t = String::new();
    for _ in 0..8 {
        t.push_str(WORDS.choose(rng).copied().unwrap_or("order"));
        t.push(' ');
    }
    t.push_str(&rng.random_range(10_000..99_999u32).to_string());
    t
}

/// Runs the comparison and writes the report.
///
/// # Errors
/// When provisioning, connecting or seeding fails.
pub async fn run(args: IsolationArgs, command: String) -> anyhow::Result<IsolationReport> {
    if args.noisy_users == 0 || args.victim_users == 0 {
        bail!("--noisy-users and --victim-users: at least 1");
    }
    let base = args.target.trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let creds = &args.common.app_creds;
    let outbox = args.common.outbox.as_deref();
    let noisy_app = application(&http, &base, creds, outbox).await?;
    let victim_app = application(&http, &base, creds.get(1..).unwrap_or(&[]), outbox).await?;
    if noisy_app.0 == victim_app.0 {
        bail!("--app: give two different applications (A, then B)");
    }
    let tag: u32 = rand::rng().random();
    let noisy = group(
        &http,
        &base,
        &noisy_app,
        &format!("iso-a-{tag:08x}"),
        args.noisy_users,
    )
    .await?;
    let victims = group(
        &http,
        &base,
        &victim_app,
        &format!("iso-b-{tag:08x}"),
        args.victim_users,
    )
    .await?;

    let log = |m: String| {
        if !args.common.quiet {
            eprintln!("{m}");
        }
    };
    log(format!("seeding {} messages of A", args.seed_messages));
    let started = Instant::now();
    let mut pool = seed(&noisy, args.seed_messages).await?;
    let seed_s = started.elapsed().as_secs_f64();
    log(format!(
        "seeded {} in {seed_s:.1} s",
        pool.iter().map(Vec::len).sum::<usize>()
    ));

    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let (stop_sampler, sampler) = measure::spawn_sampler(args.common.server_pid);
    let mut phase_p99_ms = Vec::new();
    let (mut quiet, mut noisy_h, mut noise_h) = (histogram(), histogram(), histogram());
    let (mut victim_errors, mut noise_done, mut noise_errors) = (0, 0, 0);
    let phase = Duration::from_secs(args.phase_secs);
    for round in 0..args.rounds {
        for loud in [false, true] {
            log(format!(
                "round {} {} phase",
                round + 1,
                if loud { "noisy" } else { "quiet" }
            ));
            let noise = loud.then(|| noise(&noisy, &mut pool, &args, phase));
            let (sends, errors) = paced(args.victim_rate, phase, |n, rng| {
                let who = &victims[n % victims.len()];
                (
                    who.conn.clone(),
                    json!({
                        "type": "send",
                        "conversation_id": &*who.conversation,
                        "client_id": format!("iso-{tag:08x}-{n}"),
                        "text": text(rng),
                    }),
                )
            })
            .await;
            victim_errors += errors;
            phase_p99_ms.push(Percentiles::of(&sends).p99);
            let _ = if loud { &mut noisy_h } else { &mut quiet }.add(&sends);
            if let Some(noise) = noise {
                let (done, errors) = noise.await.context("noise task")?;
                noise_done += done.len();
                noise_errors += errors;
                let _ = noise_h.add(&done);
            }
        }
    }
    let _ = stop_sampler.send(true);
    let samples = sampler.await.unwrap_or_default();
    for m in noisy.into_iter().chain(victims) {
        if let Ok(conn) = Arc::try_unwrap(m.conn) {
            conn.finish().await;
        }
    }

    let quiet_ack_ms = Percentiles::of(&quiet);
    let noisy_ack_ms = Percentiles::of(&noisy_h);
    let report = IsolationReport {
        mode: "isolation",
        command,
        seeded: args.seed_messages,
        seed_s,
        quiet_ack_ms,
        noisy_ack_ms,
        p99_ratio: if quiet_ack_ms.p99 > 0.0 {
            noisy_ack_ms.p99 / quiet_ack_ms.p99
        } else {
            0.0
        },
        phase_p99_ms,
        victim_errors,
        noise_done,
        noise_errors,
        noise_ack_ms: Percentiles::of(&noise_h),
        server: (!samples.is_empty()).then(|| ServerUse::of(&samples)),
    };
    if let Some(dir) = &args.common.report {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(dir.join("report.md"), markdown(&report))?;
        crate::report::latency_chart(
            &dir.join("latency.svg"),
            &noisy_h,
            "B's send → ack while A edits and deletes",
        )?;
    }
    Ok(report)
}

/// `count` users of `app`, connected, in one group conversation.
async fn group(
    http: &reqwest::Client,
    base: &str,
    (app_id, secret): &(String, String),
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<Member>> {
    let ws_base = base
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1);
    let epoch = Instant::now();
    let mut ids = Vec::with_capacity(count);
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let (id, token) = user_token(
            http,
            base,
            (app_id, secret),
            &format!("{prefix}-{i}"),
            prefix,
        )
        .await?;
        let url = format!("{ws_base}/api/v1/ws?token={token}");
        let (conn, _) = Conn::connect(url, epoch, Arc::default(), None)
            .await
            .with_context(|| format!("connecting {prefix}-{i}"))?;
        ids.push(id);
        conns.push(Arc::new(conn));
    }
    let ack = conns[0]
        .request(json!({
            "type": "create_conversation",
            "title": prefix,
            "is_group": true,
            "members": &ids[1..],
        }))
        .await
        .context("create_conversation")?;
    let conversation: Arc<str> = ack["conversation"]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no conversation id in {ack}"))?
        .into();
    Ok(conns
        .into_iter()
        .map(|conn| Member {
            conn,
            conversation: conversation.clone(),
        })
        .collect())
}

/// Sends per A connection awaiting their `ack` at once while seeding (the
/// server answers up to 16 in order per connection).
const SEED_WINDOW: usize = 12;

/// Posts `count` messages over A's connections; returns them.
async fn seed(members: &[Member], count: usize) -> anyhow::Result<Vec<Vec<Posted>>> {
    let per = count.div_ceil(members.len());
    let mut tasks = JoinSet::new();
    for (m, member) in members.iter().enumerate() {
        let n = per.min(count.saturating_sub(m * per));
        let conn = member.conn.clone();
        let conversation = member.conversation.clone();
        tasks.spawn(async move {
            let posted: Vec<anyhow::Result<Posted>> = futures_util::stream::iter(0..n)
                .map(|i| {
                    let conn = conn.clone();
                    let conversation = conversation.clone();
                    async move {
                        let body = text(&mut rand::rng());
                        let ack = conn
                            .request(json!({
                                "type": "send",
                                "conversation_id": &*conversation,
                                "client_id": format!("seed-{m}-{i}"),
                                "text": body,
                            }))
                            .await
                            .context("seeding (lift the server's per-connection limits)")?;
                        let message = ack["message"]["id"]
                            .as_str()
                            .ok_or_else(|| anyhow!("no message id in {ack}"))?
                            .to_owned();
                        Ok(Posted {
                            conversation,
                            message,
                        })
                    }
                })
                .buffer_unordered(SEED_WINDOW)
                .collect()
                .await;
            (m, posted.into_iter().collect::<anyhow::Result<Vec<_>>>())
        });
    }
    let mut pools = vec![Vec::new(); members.len()];
    while let Some(done) = tasks.join_next().await {
        let (m, posted) = done.context("seeding task")?;
        pools[m] = posted?;
    }
    Ok(pools)
}

/// A's edits and deletes for one phase, in the background; returns their
/// latencies and errors when the phase ends. Deleted messages leave
/// `pool` at once (chosen here, before the task starts).
fn noise(
    members: &[Member],
    pool: &mut [Vec<Posted>],
    args: &IsolationArgs,
    phase: Duration,
) -> tokio::task::JoinHandle<(Histogram<u64>, u64)> {
    let mut rng = rand::rng();
    let planned = (args.noise_rate * phase.as_secs_f64()).ceil() as usize;
    let mut ops = Vec::with_capacity(planned);
    for n in 0..planned {
        let m = n % members.len();
        let mine = &mut pool[m];
        if mine.is_empty() {
            continue;
        }
        let i = rng.random_range(0..mine.len());
        let frame = if rng.random_bool(args.delete_share.clamp(0.0, 1.0)) {
            let p = mine.swap_remove(i);
            json!({"type": "delete", "conversation_id": &*p.conversation, "message_id": p.message})
        } else {
            let p = &mine[i];
            json!({"type": "edit", "conversation_id": &*p.conversation, "message_id": p.message, "text": text(&mut rng)})
        };
        ops.push((members[m].conn.clone(), frame));
    }
    let rate = args.noise_rate;
    tokio::spawn(async move {
        let mut ops = ops.into_iter();
        paced(rate, phase, move |_, _| {
            ops.next()
                .unwrap_or_else(|| unreachable!("planned for the whole phase"))
        })
        .await
    })
}

/// Issues `rate` requests a second for `phase` (the frame of the n-th from
/// `next`), each on its own task so a slow answer never delays the next;
/// returns the latency histogram of the answered ones and the count of
/// the others.
async fn paced(
    rate: f64,
    phase: Duration,
    mut next: impl FnMut(usize, &mut StdRng) -> (Arc<Conn>, Value),
) -> (Histogram<u64>, u64) {
    let total = (rate * phase.as_secs_f64()).floor() as usize;
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let started = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for n in 0..total {
        tokio::time::sleep_until(started + Duration::from_secs_f64(n as f64 / rate)).await;
        let (conn, frame) = next(n, &mut rng);
        tasks.spawn(async move {
            let sent = Instant::now();
            conn.request(frame).await.map(|_| sent.elapsed())
        });
    }
    let mut latency = histogram();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(took)) => {
                let _ = latency.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
            }
            _ => errors += 1,
        }
    }
    (latency, errors)
}

/// `report.md`.
#[must_use]
pub fn markdown(r: &IsolationReport) -> String {
    let row = |name: &str, p: &Percentiles| {
        format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            p.count, p.p50, p.p90, p.p99, p.max
        )
    };
    let mut md = format!(
        "# loadgen isolation\n\n`{}`\n\n{} messages of A seeded in {:.1} s.\n\n\
         | B's send → ack | sends | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n",
        r.command, r.seeded, r.seed_s
    );
    md.push_str(&row("A idle", &r.quiet_ack_ms));
    md.push_str(&row("A editing and deleting", &r.noisy_ack_ms));
    md.push_str(&row("(A's edits and deletes)", &r.noise_ack_ms));
    let phases: Vec<String> = r.phase_p99_ms.iter().map(|p| format!("{p:.2}")).collect();
    md.push_str(&format!(
        "\np99 with A busy / p99 with A idle: **{:.3}**. B's p99 per phase (quiet, noisy, …): {} ms. \
         B's errors: {}; A's: {}.\n",
        r.p99_ratio,
        phases.join(", "),
        r.victim_errors,
        r.noise_errors
    ));
    if let Some(s) = &r.server {
        md.push_str(&format!(
            "Server CPU: {:.0} % average, {:.0} % peak (of one core).\n",
            s.cpu_avg_pct, s.cpu_max_pct
        ));
    }
    md
}
