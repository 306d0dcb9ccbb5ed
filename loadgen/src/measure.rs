//! Measurements: latency histograms and the server's CPU and memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// A histogram of microseconds, 1 µs to 1 h, three significant digits.
#[must_use]
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid bounds")
}

/// Percentiles of a histogram of microseconds, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Of a histogram of microseconds.
    #[must_use]
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// One sample of the server process.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProcSample {
    /// Seconds since the run started.
    pub at_s: f64,
    /// CPU use since the previous sample, in percent of one core.
    pub cpu_pct: f64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
}

/// Reads CPU time and resident memory of a process from `/proc`.
#[derive(Debug)]
pub struct ProcWatch {
    dir: PathBuf,
    ticks_per_sec: f64,
    last: Option<(Instant, u64)>,
    started: Instant,
}

impl ProcWatch {
    /// Watches `pid`; `None` when it does not exist.
    #[must_use]
    pub fn new(pid: u32) -> Option<Self> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        dir.exists().then(|| Self {
            dir,
            // USER_HZ is 100 on every Linux architecture Confer targets.
            ticks_per_sec: 100.0,
            last: None,
            started: Instant::now(),
        })
    }

    /// Current resident memory in KiB.
    #[must_use]
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(self.dir.join("status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(self.dir.join("stat")).ok()?;
        // Fields after the command name (which may contain spaces).
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and
        // 13 after the name and state.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    /// A sample: CPU since the previous one, and memory now.
    pub fn sample(&mut self) -> Option<ProcSample> {
        let now = Instant::now();
        let ticks = self.cpu_ticks()?;
        let cpu_pct = match self.last {
            Some((at, before)) => {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                (ticks.saturating_sub(before)) as f64 / self.ticks_per_sec / secs * 100.0
            }
            None => 0.0,
        };
        self.last = Some((now, ticks));
        Some(ProcSample {
            at_s: now.duration_since(self.started).as_secs_f64(),
            cpu_pct,
            rss_kib: self.rss_kib()?,
        })
    }
}

/// Samples a process every second until stopped; returns the samples.
pub fn spawn_sampler(
    pid: Option<u32>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Vec<ProcSample>>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut samples = Vec::new();
        let Some(mut watch) = pid.and_then(ProcWatch::new) else {
            return samples;
        };
        let _ = watch.sample();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(s) = watch.sample() {
                        samples.push(s);
                    }
                }
                _ = stopped.changed() => return samples,
            }
        }
    });
    (stop, task)
}

/// Summary of the server's samples.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ServerUse {
    /// Average CPU, percent of one core (200 = both cores of two).
    pub cpu_avg_pct: f64,
    /// Highest one-second CPU.
    pub cpu_max_pct: f64,
    /// Highest resident memory, KiB.
    pub rss_max_kib: u64,
}

impl ServerUse {
    /// Of samples (zero when there are none).
    #[must_use]
    pub fn of(samples: &[ProcSample]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        Self {
            cpu_avg_pct: samples.iter().map(|s| s.cpu_pct).sum::<f64>() / samples.len() as f64,
            cpu_max_pct: samples.iter().map(|s| s.cpu_pct).fold(0.0, f64::max),
            rss_max_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        }
    }
}

/// Microseconds since `epoch`, for send times embedded in payloads.
#[must_use]
pub fn micros_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}
