//! Rate limits: how often a stranger, an application or a connection may
//! make the server work.
//!
//! Every limit is a [`Rate`] (`count` per `per_secs`, as a GCRA from the
//! `governor` crate: up to `count` at once, then one more every
//! `per_secs / count`), set in the `[limits]` section; `count = 0` turns a
//! limit off. Keyed limits (per e-mail, IP, application, user) live in
//! [`Limits`], shared by the whole server; per-connection limits are a
//! [`FrameLimits`] owned by each WebSocket session.
//!
//! What a client sees: REST answers `429 rate_limited` with `Retry-After`
//! (seconds, rounded up); a WebSocket request frame gets an `error` frame
//! with code `rate_limited` and `retry_after_ms`, and the connection stays
//! open.
//!
//! Two kinds of limit:
//! * a **rate** counts every attempt (code mails, token requests,
//!   connections, frames);
//! * a **failure gate** ([`FailureGate`]) counts failures only (wrong
//!   application secrets): once a key has failed more than its rate allows,
//!   every attempt of that key, right or wrong, is refused until the rate
//!   lets one more failure through.
//!
//! Memory: keyed state is one small entry per key seen recently;
//! [`Limits::tidy`] (every minute) forgets keys whose limits are full
//! again, so a flood of distinct keys costs memory only while it lasts.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::ids::{AppId, UserId};

/// `count` events per `per_secs` seconds, at most `count` at once.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Events allowed per window (and at once); `0` turns the limit off.
    pub count: u32,
    /// The window, in seconds.
    pub per_secs: u64,
}

impl Rate {
    /// `count` per `per_secs`.
    #[must_use]
    pub const fn new(count: u32, per_secs: u64) -> Self {
        Self { count, per_secs }
    }

    /// The governor quota; `None` when the limit is off.
    fn quota(self) -> Option<Quota> {
        let burst = NonZeroU32::new(self.count)?;
        let period = Duration::from_secs(self.per_secs) / self.count;
        Some(Quota::with_period(period)?.allow_burst(burst))
    }

    /// Whether the values make a limit (or switch it off).
    #[must_use]
    pub fn is_valid(self) -> bool {
        self.count == 0
            || ((1..=7 * 24 * 60 * 60).contains(&self.per_secs) && self.quota().is_some())
    }
}

/// The `[limits]` section.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Registration and sign-in code mails per e-mail address.
    pub code_requests_per_email: Rate,
    /// Registration and sign-in code mails per client IP.
    pub code_requests_per_ip: Rate,
    /// Failed code confirmations per e-mail address; past it every
    /// confirmation for that address, right or wrong, waits. Requesting a
    /// new code does not reset it.
    pub code_confirmations_per_email: Rate,
    /// `POST /api/v1/tokens` per application.
    pub tokens_per_app: Rate,
    /// Messages posted through one incoming webhook.
    pub incoming_webhook_posts: Rate,
    /// Failed HTTP Basic attempts per application id; past it every
    /// attempt of that id is refused for a while.
    pub basic_failures_per_app: Rate,
    /// Failed HTTP Basic attempts per client IP; likewise.
    pub basic_failures_per_ip: Rate,
    /// WebSocket connections per user (or bot).
    pub ws_connects_per_user: Rate,
    /// WebSocket connection attempts per client IP (checked before the
    /// credentials are).
    pub ws_connects_per_ip: Rate,
    /// Request frames of any kind per connection.
    pub frames_per_connection: Rate,
    /// Frames that write (send, edit, delete, read, click, create, open,
    /// add or remove members) per connection.
    pub writes_per_connection: Rate,
    /// `typing` frames per connection.
    pub typing_per_connection: Rate,
    /// `presence` frames per connection.
    pub presence_per_connection: Rate,
    /// `call_*` frames per connection.
    pub call_frames_per_connection: Rate,
    /// Request frames of any kind per bot connection (the application's
    /// own integration: one limit, higher, instead of the five above).
    pub bot_frames_per_connection: Rate,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            code_requests_per_email: Rate::new(5, 60 * 60),
            code_requests_per_ip: Rate::new(30, 60 * 60),
            code_confirmations_per_email: Rate::new(10, 60 * 60),
            tokens_per_app: Rate::new(10_000, 60),
            incoming_webhook_posts: Rate::new(60, 60),
            basic_failures_per_app: Rate::new(20, 60),
            basic_failures_per_ip: Rate::new(20, 60),
            ws_connects_per_user: Rate::new(60, 60),
            ws_connects_per_ip: Rate::new(3_000, 60),
            frames_per_connection: Rate::new(300, 10),
            writes_per_connection: Rate::new(100, 10),
            typing_per_connection: Rate::new(20, 10),
            presence_per_connection: Rate::new(20, 10),
            call_frames_per_connection: Rate::new(300, 10),
            bot_frames_per_connection: Rate::new(3_000, 10),
        }
    }
}

impl LimitsConfig {
    /// Every limit with its setting name, for validation.
    #[must_use]
    pub fn named(&self) -> [(&'static str, Rate); 15] {
        [
            (
                "limits.code_requests_per_email",
                self.code_requests_per_email,
            ),
            ("limits.code_requests_per_ip", self.code_requests_per_ip),
            (
                "limits.code_confirmations_per_email",
                self.code_confirmations_per_email,
            ),
            ("limits.tokens_per_app", self.tokens_per_app),
            ("limits.incoming_webhook_posts", self.incoming_webhook_posts),
            ("limits.basic_failures_per_app", self.basic_failures_per_app),
            ("limits.basic_failures_per_ip", self.basic_failures_per_ip),
            ("limits.ws_connects_per_user", self.ws_connects_per_user),
            ("limits.ws_connects_per_ip", self.ws_connects_per_ip),
            ("limits.frames_per_connection", self.frames_per_connection),
            ("limits.writes_per_connection", self.writes_per_connection),
            ("limits.typing_per_connection", self.typing_per_connection),
            (
                "limits.presence_per_connection",
                self.presence_per_connection,
            ),
            (
                "limits.call_frames_per_connection",
                self.call_frames_per_connection,
            ),
            (
                "limits.bot_frames_per_connection",
                self.bot_frames_per_connection,
            ),
        ]
    }
}

/// A request refused by a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many requests ({limit}); retry in {} ms", retry_after.as_millis())]
pub struct RateLimited {
    /// Which limit (its setting name without `limits.`).
    pub limit: &'static str,
    /// When the next attempt may succeed.
    pub retry_after: Duration,
}

/// One limit over many keys.
struct Keyed<K: Hash + Eq + Clone> {
    name: &'static str,
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(name: &'static str, rate: Rate) -> Self {
        Self {
            name,
            limiter: rate.quota().map(RateLimiter::keyed),
        }
    }

    fn check(&self, key: &K) -> Result<(), RateLimited> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(key)
            .map_err(|not_until| refused(self.name, &not_until))
    }

    fn tidy(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Counts failures per key; a key that failed too often is refused
/// outright (right or wrong) until its rate lets one more failure through.
pub struct FailureGate<K: Hash + Eq + Clone> {
    failures: Keyed<K>,
    blocked: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> FailureGate<K> {
    fn new(name: &'static str, rate: Rate) -> Self {
        Self {
            failures: Keyed::new(name, rate),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses a key that is blocked.
    ///
    /// # Errors
    /// [`RateLimited`] while the key is blocked.
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        let Ok(mut blocked) = self.blocked.lock() else {
            return Ok(());
        };
        match blocked.get(key) {
            Some(until) if *until > Instant::now() => Err(RateLimited {
                limit: self.failures.name,
                retry_after: until.saturating_duration_since(Instant::now()),
            }),
            Some(_) => {
                blocked.remove(key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failure of `key`; one too many blocks it.
    pub fn failed(&self, key: &K) {
        if let Err(limited) = self.failures.check(key)
            && let Ok(mut blocked) = self.blocked.lock()
        {
            blocked.insert(key.clone(), Instant::now() + limited.retry_after);
        }
    }

    fn tidy(&self) {
        self.failures.tidy();
        if let Ok(mut blocked) = self.blocked.lock() {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            blocked.shrink_to_fit();
        }
    }
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for FailureGate<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureGate")
            .field("limit", &self.failures.name)
            .finish_non_exhaustive()
    }
}

/// The server-wide keyed limits.
pub struct Limits {
    config: LimitsConfig,
    code_requests_per_email: Keyed<String>,
    code_requests_per_ip: Keyed<IpAddr>,
    /// Failed code confirmations per (normalised) e-mail address.
    pub code_confirmations_per_email: FailureGate<String>,
    tokens_per_app: Keyed<AppId>,
    incoming_webhook_posts: Keyed<crate::ids::WebhookId>,
    /// Failed HTTP Basic attempts per application id.
    pub basic_failures_per_app: FailureGate<AppId>,
    /// Failed HTTP Basic attempts per client IP.
    pub basic_failures_per_ip: FailureGate<IpAddr>,
    ws_connects_per_user: Keyed<UserId>,
    ws_connects_per_ip: Keyed<IpAddr>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Limits {
    /// The limits `config` sets.
    #[must_use]
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            config: config.clone(),
            code_requests_per_email: Keyed::new(
                "code_requests_per_email",
                config.code_requests_per_email,
            ),
            code_requests_per_ip: Keyed::new("code_requests_per_ip", config.code_requests_per_ip),
            code_confirmations_per_email: FailureGate::new(
                "code_confirmations_per_email",
                config.code_confirmations_per_email,
            ),
            tokens_per_app: Keyed::new("tokens_per_app", config.tokens_per_app),
            incoming_webhook_posts: Keyed::new(
                "incoming_webhook_posts",
                config.incoming_webhook_posts,
            ),
            basic_failures_per_app: FailureGate::new(
                "basic_failures_per_app",
                config.basic_failures_per_app,
            ),
            basic_failures_per_ip: FailureGate::new(
                "basic_failures_per_ip",
                config.basic_failures_per_ip,
            ),
            ws_connects_per_user: Keyed::new("ws_connects_per_user", config.ws_connects_per_user),
            ws_connects_per_ip: Keyed::new("ws_connects_per_ip", config.ws_connects_per_ip),
        }
    }

    /// A code mail to `email` (normalised; `None` when it is not an
    /// address, which mails nothing) asked for from `ip`.
    ///
    /// # Errors
    /// [`RateLimited`] by either limit.
    pub fn code_request(&self, email: Option<&str>, ip: Option<IpAddr>) -> Result<(), RateLimited> {
        if let Some(ip) = ip {
            counted(self.code_requests_per_ip.check(&ip_key(ip)))?;
        }
        match email {
            Some(email) => counted(self.code_requests_per_email.check(&email.to_owned())),
            None => Ok(()),
        }
    }

    /// A user token asked for by `app`.
    ///
    /// # Errors
    /// [`RateLimited`].
    pub fn token(&self, app: AppId) -> Result<(), RateLimited> {
        counted(self.tokens_per_app.check(&app))
    }

    /// A message posted through incoming webhook `hook`.
    ///
    /// # Errors
    /// [`RateLimited`].
    pub fn webhook_post(&self, hook: crate::ids::WebhookId) -> Result<(), RateLimited> {
        counted(self.incoming_webhook_posts.check(&hook))
    }

    /// A WebSocket connection attempt from `ip`, before its credentials are
    /// checked.
    ///
    /// # Errors
    /// [`RateLimited`].
    pub fn ws_attempt(&self, ip: Option<IpAddr>) -> Result<(), RateLimited> {
        match ip {
            Some(ip) => counted(self.ws_connects_per_ip.check(&ip_key(ip))),
            None => Ok(()),
        }
    }

    /// A WebSocket connection of `user` (or bot).
    ///
    /// # Errors
    /// [`RateLimited`].
    pub fn ws_connect(&self, user: UserId) -> Result<(), RateLimited> {
        counted(self.ws_connects_per_user.check(&user))
    }

    /// The limits of one new WebSocket connection of a user.
    #[must_use]
    pub fn frames(&self) -> FrameLimits {
        FrameLimits::new(&self.config)
    }

    /// The limits of one new WebSocket connection of a bot.
    #[must_use]
    pub fn bot_frames(&self) -> FrameLimits {
        FrameLimits {
            frames: self
                .config
                .bot_frames_per_connection
                .quota()
                .map(RateLimiter::direct),
            ..FrameLimits::unlimited()
        }
    }

    /// Forgets keys whose limits are full again (run every minute).
    pub fn tidy(&self) {
        self.code_requests_per_email.tidy();
        self.code_requests_per_ip.tidy();
        self.code_confirmations_per_email.tidy();
        self.tokens_per_app.tidy();
        self.incoming_webhook_posts.tidy();
        self.basic_failures_per_app.tidy();
        self.basic_failures_per_ip.tidy();
        self.ws_connects_per_user.tidy();
        self.ws_connects_per_ip.tidy();
    }
}

/// The key of a client address: an IPv4 address as it is (also when it
/// comes IPv4-mapped), an IPv6 address by its /64 prefix — one host
/// usually has a whole /64, so single addresses would be free to vary.
#[must_use]
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// What a request frame costs, besides counting as a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Reads: history, list, search, members, pins, ping.
    Read,
    /// Writes to the store.
    Write,
    /// `typing`.
    Typing,
    /// `presence`.
    Presence,
    /// `call_*`.
    Call,
}

impl FrameKind {
    /// The kind of a request frame by its `type`.
    #[must_use]
    pub fn of(frame_type: &str) -> Self {
        match frame_type {
            "send"
            | "forward"
            | "edit"
            | "delete"
            | "react"
            | "pin"
            | "follow"
            | "read"
            | "click"
            | "create_conversation"
            | "open_context"
            | "add_members"
            | "remove_member" => Self::Write,
            "typing" => Self::Typing,
            "presence" => Self::Presence,
            t if t.starts_with("call_") => Self::Call,
            _ => Self::Read,
        }
    }
}

/// The per-connection limits of one WebSocket session.
pub struct FrameLimits {
    frames: Option<DefaultDirectRateLimiter>,
    writes: Option<DefaultDirectRateLimiter>,
    typing: Option<DefaultDirectRateLimiter>,
    presence: Option<DefaultDirectRateLimiter>,
    calls: Option<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for FrameLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameLimits").finish_non_exhaustive()
    }
}

impl FrameLimits {
    /// Fresh limits for a new connection.
    #[must_use]
    pub fn new(config: &LimitsConfig) -> Self {
        let direct = |rate: Rate| rate.quota().map(RateLimiter::direct);
        Self {
            frames: direct(config.frames_per_connection),
            writes: direct(config.writes_per_connection),
            typing: direct(config.typing_per_connection),
            presence: direct(config.presence_per_connection),
            calls: direct(config.call_frames_per_connection),
        }
    }

    /// No limits (sessions driven by tests or trusted callers).
    #[must_use]
    pub fn unlimited() -> Self {
        Self {
            frames: None,
            writes: None,
            typing: None,
            presence: None,
            calls: None,
        }
    }

    /// Counts one incoming frame of any kind (before it is read).
    ///
    /// # Errors
    /// [`RateLimited`] by `frames_per_connection`.
    pub fn check_frame(&self) -> Result<(), RateLimited> {
        counted(direct_check("frames_per_connection", &self.frames))
    }

    /// Counts one request of `kind` (after its type is known).
    ///
    /// # Errors
    /// [`RateLimited`] by the kind's own limit.
    pub fn check_kind(&self, kind: FrameKind) -> Result<(), RateLimited> {
        let check = direct_check;
        counted(match kind {
            FrameKind::Read => Ok(()),
            FrameKind::Write => check("writes_per_connection", &self.writes),
            FrameKind::Typing => check("typing_per_connection", &self.typing),
            FrameKind::Presence => check("presence_per_connection", &self.presence),
            FrameKind::Call => check("call_frames_per_connection", &self.calls),
        })
    }
}

fn direct_check(
    name: &'static str,
    limiter: &Option<DefaultDirectRateLimiter>,
) -> Result<(), RateLimited> {
    limiter.as_ref().map_or(Ok(()), |l| {
        l.check().map_err(|not_until| refused(name, &not_until))
    })
}

fn refused(
    name: &'static str,
    not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>,
) -> RateLimited {
    RateLimited {
        limit: name,
        retry_after: not_until.wait_time_from(DefaultClock::default().now()),
    }
}

/// Counts a refusal in `rate_limited_total{limit}`.
fn counted(result: Result<(), RateLimited>) -> Result<(), RateLimited> {
    if let Err(limited) = &result {
        metrics::counter!("rate_limited_total", "limit" => limited.limit).increment(1);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_allows_its_count_then_refuses_with_a_wait() {
        let keyed = Keyed::new("test", Rate::new(3, 60));
        for _ in 0..3 {
            assert!(keyed.check(&"a".to_owned()).is_ok());
        }
        let refused = keyed.check(&"a".to_owned()).unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(10), "{refused:?}");
        assert!(
            refused.retry_after <= Duration::from_secs(20),
            "{refused:?}"
        );
        // Other keys are not affected.
        assert!(keyed.check(&"b".to_owned()).is_ok());
    }

    #[test]
    fn a_zero_count_is_no_limit() {
        let keyed = Keyed::new("test", Rate::new(0, 60));
        for _ in 0..10_000 {
            assert!(keyed.check(&1u8).is_ok());
        }
    }

    #[test]
    fn a_failure_gate_blocks_only_after_too_many_failures() {
        let gate = FailureGate::new("test", Rate::new(2, 60));
        let key = "app".to_owned();
        gate.failed(&key);
        gate.failed(&key);
        assert!(gate.check(&key).is_ok(), "two failures are within the rate");
        gate.failed(&key);
        let refused = gate.check(&key).unwrap_err();
        assert_eq!(refused.limit, "test");
        assert!(gate.check(&"other".to_owned()).is_ok());
    }

    #[test]
    fn frames_are_limited_per_kind_and_overall() {
        let config = LimitsConfig {
            frames_per_connection: Rate::new(5, 60),
            typing_per_connection: Rate::new(2, 60),
            ..LimitsConfig::default()
        };
        let limits = FrameLimits::new(&config);
        let check = |kind| limits.check_frame().and_then(|()| limits.check_kind(kind));
        assert!(check(FrameKind::Typing).is_ok());
        assert!(check(FrameKind::Typing).is_ok());
        assert_eq!(
            check(FrameKind::Typing).unwrap_err().limit,
            "typing_per_connection"
        );
        // The refused typing frame still counted as a frame: two more fit.
        assert!(check(FrameKind::Read).is_ok());
        assert!(check(FrameKind::Read).is_ok());
        assert_eq!(
            check(FrameKind::Read).unwrap_err().limit,
            "frames_per_connection"
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_bit_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn frame_kinds() {
        assert_eq!(FrameKind::of("send"), FrameKind::Write);
        assert_eq!(FrameKind::of("call_signal"), FrameKind::Call);
        assert_eq!(FrameKind::of("history"), FrameKind::Read);
    }
}
