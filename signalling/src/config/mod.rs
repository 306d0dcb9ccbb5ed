//! Typed configuration of the signalling server.
//!
//! [`SignallingConfig`] holds every setting with its documented default
//! (`config/signalling.toml` ships the same values, commented). The library
//! never reads files or the environment: the binary merges the TOML file,
//! `CONFER_*` environment variables and command-line flags, then calls
//! [`SignallingConfig::validate`], which names every bad value and what is
//! allowed.
//!
//! The sections of the file (`[http]`, `[calls]`, `[files]`, …) are types
//! of their own in `sections.rs`; this file holds the whole and its
//! validation.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use confer_sfu::tls::TlsConfig;
use confer_sfu::tls::TlsError;
use serde::{Deserialize, Serialize};

mod sections;

pub use sections::*;

/// Everything `signalling serve` can be told.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SignallingConfig {
    /// Address the HTTP and WebSocket server listens on.
    pub listen: SocketAddr,
    /// Directory for the SQLite database, the mail outbox and local files.
    pub data_dir: PathBuf,
    /// The store: SQLite in `data_dir`, or PostgreSQL.
    pub store: StoreSection,
    /// The bus between nodes: in-process, or NATS.
    pub bus: BusSection,
    /// HTTPS and WSS on `listen` from this certificate and key; plain
    /// HTTP (for a reverse proxy that terminates TLS) when absent.
    pub tls: Option<TlsConfig>,
    /// Logging.
    pub log: LogConfig,
    /// HTTP limits.
    pub http: HttpConfig,
    /// Outgoing mail.
    pub mail: MailConfig,
    /// E-mail codes for registration and subscriber sign-in.
    pub codes: CodeConfig,
    /// User tokens and secret rotation.
    pub tokens: TokenConfig,
    /// Subscriber sessions.
    pub subscribers: SubscriberConfig,
    /// The per-user event log that clients resume from.
    pub events: EventConfig,
    /// The audit log of administrative actions.
    pub audit: AuditConfig,
    /// Outgoing webhooks.
    pub webhooks: WebhookConfig,
    /// Retention sweeps.
    pub retention: RetentionConfig,
    /// Export archives.
    pub exports: ExportConfig,
    /// Calls: topology thresholds, ringing, ICE servers.
    pub calls: CallConfig,
    /// The media plane: the SFU workers started in this process.
    pub sfu: SfuSection,
    /// Attachments: limits, lifetime, and the storage backend.
    pub files: FilesConfig,
    /// The demo application of the web client.
    pub demo: DemoConfig,
    /// Rate limits.
    pub limits: crate::limits::LimitsConfig,
    /// The web client: who may embed it.
    pub web: WebConfig,
}

impl Default for SignallingConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            store: StoreSection::default(),
            bus: BusSection::default(),
            tls: None,
            log: LogConfig::default(),
            http: HttpConfig::default(),
            mail: MailConfig::default(),
            codes: CodeConfig::default(),
            tokens: TokenConfig::default(),
            subscribers: SubscriberConfig::default(),
            events: EventConfig::default(),
            audit: AuditConfig::default(),
            webhooks: WebhookConfig::default(),
            retention: RetentionConfig::default(),
            exports: ExportConfig::default(),
            calls: CallConfig::default(),
            sfu: SfuSection::default(),
            files: FilesConfig::default(),
            demo: DemoConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            web: WebConfig::default(),
        }
    }
}

/// One setting that failed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSetting {
    /// Dotted name, as in the TOML file (`codes.ttl_secs`).
    pub name: &'static str,
    /// The value that was given.
    pub value: String,
    /// What would have been accepted.
    pub allowed: &'static str,
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` = {}: allowed is {}",
            self.name, self.value, self.allowed
        )
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file or variable could not be read or did not have the right type.
    #[error("cannot load configuration: {0}")]
    Load(String),
    /// Values of the right type that are out of range.
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<InvalidSetting>),
    /// The TLS certificate or key (`tls.cert`, `tls.key`) cannot be used.
    #[error("invalid TLS certificate or key")]
    Tls(#[from] TlsError),
}

/// A database URL with its password hidden, for messages and logs.
#[must_use]
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn list(items: &[InvalidSetting]) -> String {
    items
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl SignallingConfig {
    /// Checks every value and reports all bad ones at once.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming each bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut bad = Vec::new();
        let mut check = |ok: bool, name: &'static str, value: String, allowed: &'static str| {
            if !ok {
                bad.push(InvalidSetting {
                    name,
                    value,
                    allowed,
                });
            }
        };
        check(
            !self.data_dir.as_os_str().is_empty(),
            "data_dir",
            format!("{:?}", self.data_dir),
            "a non-empty path",
        );
        if let Some(url) = &self.store.url {
            check(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "store.url",
                redact_url(url),
                "unset (SQLite in data_dir) or postgres://user:password@host:port/database",
            );
        }
        if let Some(url) = &self.bus.url {
            check(
                !url.trim().is_empty()
                    && url.split(',').all(|u| {
                        let u = u.trim();
                        u.starts_with("nats://") || u.starts_with("tls://")
                    }),
                "bus.url",
                format!("{url:?}"),
                "unset (in-process) or nats://host:port, several separated by commas",
            );
        }
        check(
            self.bus.url.is_none() || self.files.s3.is_some(),
            "files.s3",
            "unset".to_owned(),
            "set when bus.url is: the nodes of a cluster cannot share files kept in each \
             node's data directory, configure S3 ([files.s3], see docs/operations.md)",
        );
        if let Some(tls) = &self.tls {
            check(
                !tls.cert.as_os_str().is_empty(),
                "tls.cert",
                format!("{:?}", tls.cert),
                "the path of a PEM file with the certificate chain",
            );
            check(
                !tls.key.as_os_str().is_empty(),
                "tls.key",
                format!("{:?}", tls.key),
                "the path of a PEM file with the private key",
            );
            check(
                tls.watch_secs <= 24 * 60 * 60,
                "tls.watch_secs",
                tls.watch_secs.to_string(),
                "0 (reload on SIGHUP only) to 86400",
            );
        }
        check(
            (1024..=16 * 1024 * 1024).contains(&self.http.max_body_bytes),
            "http.max_body_bytes",
            self.http.max_body_bytes.to_string(),
            "1024 to 16777216",
        );
        check(
            (1..=65_535).contains(&self.http.listen_backlog),
            "http.listen_backlog",
            self.http.listen_backlog.to_string(),
            "1 to 65535",
        );
        check(
            (1..=3600).contains(&self.http.header_read_timeout_secs),
            "http.header_read_timeout_secs",
            self.http.header_read_timeout_secs.to_string(),
            "1 to 3600",
        );
        check(
            self.http.connections_per_ip <= 1_000_000,
            "http.connections_per_ip",
            self.http.connections_per_ip.to_string(),
            "0 (off) to 1000000",
        );
        check(
            self.mail.from.parse::<lettre::message::Mailbox>().is_ok(),
            "mail.from",
            format!("{:?}", self.mail.from),
            "a mailbox such as \"Confer <confer@example.com>\"",
        );
        if let Some(smtp) = &self.mail.smtp {
            check(
                !smtp.host.trim().is_empty(),
                "mail.smtp.host",
                format!("{:?}", smtp.host),
                "a host name",
            );
            check(
                smtp.username.is_some() == smtp.password.is_some(),
                "mail.smtp.password",
                if smtp.password.is_some() {
                    "set"
                } else {
                    "unset"
                }
                .to_owned(),
                "set exactly when mail.smtp.username is set",
            );
        }
        check(
            self.mail.outbox_retention_hours >= 1,
            "mail.outbox_retention_hours",
            self.mail.outbox_retention_hours.to_string(),
            "1 or more",
        );
        for (name, rate) in self.limits.named() {
            check(
                rate.is_valid(),
                name,
                format!("{{ count = {}, per_secs = {} }}", rate.count, rate.per_secs),
                "count 0 (off), or per_secs from 1 to 604800",
            );
        }
        check(
            (60..=24 * 60 * 60).contains(&self.codes.ttl_secs),
            "codes.ttl_secs",
            self.codes.ttl_secs.to_string(),
            "60 to 86400",
        );
        check(
            (1..=20).contains(&self.codes.max_tries),
            "codes.max_tries",
            self.codes.max_tries.to_string(),
            "1 to 20",
        );
        check(
            (60..=7 * 24 * 60 * 60).contains(&self.tokens.max_ttl_secs),
            "tokens.max_ttl_secs",
            self.tokens.max_ttl_secs.to_string(),
            "60 to 604800",
        );
        check(
            self.tokens.ttl_secs >= 60 && self.tokens.ttl_secs <= self.tokens.max_ttl_secs,
            "tokens.ttl_secs",
            self.tokens.ttl_secs.to_string(),
            "60 to tokens.max_ttl_secs",
        );
        check(
            self.tokens.rotation_grace_secs <= 7 * 24 * 60 * 60,
            "tokens.rotation_grace_secs",
            self.tokens.rotation_grace_secs.to_string(),
            "0 to 604800",
        );
        check(
            self.tokens.leeway_secs <= 600,
            "tokens.leeway_secs",
            self.tokens.leeway_secs.to_string(),
            "0 to 600",
        );
        check(
            (60..=30 * 24 * 60 * 60).contains(&self.subscribers.session_ttl_secs),
            "subscribers.session_ttl_secs",
            self.subscribers.session_ttl_secs.to_string(),
            "60 to 2592000",
        );
        check(
            (1..=3650).contains(&self.events.retention_days),
            "events.retention_days",
            self.events.retention_days.to_string(),
            "1 to 3650",
        );
        check(
            (1..=36500).contains(&self.audit.retention_days),
            "audit.retention_days",
            self.audit.retention_days.to_string(),
            "1 to 36500",
        );
        check(
            (1..=7 * 24 * 3600).contains(&self.retention.sweep_interval_secs),
            "retention.sweep_interval_secs",
            self.retention.sweep_interval_secs.to_string(),
            "1 to 604800",
        );
        check(
            (1..=3650).contains(&self.exports.keep_days),
            "exports.keep_days",
            self.exports.keep_days.to_string(),
            "1 to 3650",
        );
        let hooks = &self.webhooks;
        check(
            (1..=100).contains(&hooks.max_attempts),
            "webhooks.max_attempts",
            hooks.max_attempts.to_string(),
            "1 to 100",
        );
        check(
            (10..=3_600_000).contains(&hooks.retry_base_ms)
                && (1..=7 * 24 * 3600).contains(&hooks.max_backoff_secs),
            "webhooks.retry_base_ms",
            format!(
                "{} (max_backoff_secs {})",
                hooks.retry_base_ms, hooks.max_backoff_secs
            ),
            "10 to 3600000, and max_backoff_secs 1 to 604800",
        );
        check(
            (1..=120).contains(&hooks.timeout_secs)
                && (1..=1024).contains(&hooks.concurrency)
                && (1..=64).contains(&hooks.per_endpoint)
                && (1..=3650).contains(&hooks.log_retention_days),
            "webhooks.timeout_secs",
            format!(
                "{} (concurrency {}, per_endpoint {}, log_retention_days {})",
                hooks.timeout_secs, hooks.concurrency, hooks.per_endpoint, hooks.log_retention_days
            ),
            "1 to 120; concurrency 1 to 1024, per_endpoint 1 to 64, log_retention_days 1 to 3650",
        );
        for network in &hooks.allowed_networks {
            check(
                crate::outbox::guard::parse_network(network).is_some(),
                "webhooks.allowed_networks",
                format!("{network:?}"),
                "networks in CIDR notation (10.0.0.0/8, fd00::/8) or single addresses",
            );
        }
        let calls = &self.calls;
        check(
            (2..=1000).contains(&calls.conference_server_based_member_limit),
            "calls.conference_server_based_member_limit",
            calls.conference_server_based_member_limit.to_string(),
            "2 to 1000",
        );
        check(
            (2..=3).contains(&calls.conference_server_based_threshold),
            "calls.conference_server_based_threshold",
            calls.conference_server_based_threshold.to_string(),
            "2 or 3 (peer-to-peer is for two people; there is no mesh of three or more)",
        );
        check(
            (1..=600).contains(&calls.ring_timeout_secs),
            "calls.ring_timeout_secs",
            calls.ring_timeout_secs.to_string(),
            "1 to 600",
        );
        check(
            calls.reconnect_grace_secs <= 300,
            "calls.reconnect_grace_secs",
            calls.reconnect_grace_secs.to_string(),
            "0 to 300",
        );
        check(
            calls.ice_servers.iter().all(|s| {
                !s.urls.is_empty()
                    && s.urls.iter().all(|u| {
                        ["stun:", "stuns:", "turn:", "turns:"]
                            .iter()
                            .any(|p| u.starts_with(p))
                    })
            }),
            "calls.ice_servers",
            format!("{:?}", calls.ice_servers),
            "servers whose urls start with stun:, stuns:, turn: or turns:",
        );
        if let Some(turn) = &calls.turn {
            check(
                !turn.urls.is_empty()
                    && turn
                        .urls
                        .iter()
                        .all(|u| u.starts_with("turn:") || u.starts_with("turns:")),
                "calls.turn.urls",
                format!("{:?}", turn.urls),
                "one or more urls starting with turn: or turns:",
            );
            check(
                turn.secret.len() >= 16,
                "calls.turn.secret",
                "(hidden)".to_owned(),
                "at least 16 characters",
            );
            check(
                (60..=7 * 24 * 60 * 60).contains(&turn.ttl_secs),
                "calls.turn.ttl_secs",
                turn.ttl_secs.to_string(),
                "60 to 604800",
            );
        }
        check(
            !self.sfu.udp_bind.ip().is_unspecified() || self.sfu.announced_ip.is_some(),
            "sfu.udp_bind",
            self.sfu.udp_bind.to_string(),
            "a specific address, or 0.0.0.0 together with sfu.announced_ip",
        );
        check(
            self.sfu.workers <= 256,
            "sfu.workers",
            self.sfu.workers.to_string(),
            "0 (one per core) to 256",
        );
        check(
            (1..=600).contains(&self.sfu.connect_timeout_secs),
            "sfu.connect_timeout_secs",
            self.sfu.connect_timeout_secs.to_string(),
            "1 to 600",
        );
        let files = &self.files;
        check(
            (1..=1 << 40).contains(&files.max_size),
            "files.max_size",
            files.max_size.to_string(),
            "1 to 1099511627776 (1 TiB)",
        );
        check(
            (60..=7 * 24 * 60 * 60).contains(&files.url_ttl_secs),
            "files.url_ttl_secs",
            files.url_ttl_secs.to_string(),
            "60 to 604800",
        );
        check(
            files.retention_days <= 36_500,
            "files.retention_days",
            files.retention_days.to_string(),
            "0 (keep) to 36500",
        );
        check(
            files.preview_max_bytes <= 256 * 1024 * 1024,
            "files.preview_max_bytes",
            files.preview_max_bytes.to_string(),
            "0 (no previews) to 268435456",
        );
        if let Some(url) = &files.public_url {
            check(
                (url.starts_with("http://") || url.starts_with("https://")) && !url.ends_with('/'),
                "files.public_url",
                format!("{url:?}"),
                "an http:// or https:// URL without a trailing slash",
            );
        }
        if let Some(s3) = &files.s3 {
            check(
                files.max_size <= 5 << 30,
                "files.max_size",
                files.max_size.to_string(),
                "at most 5368709120 (5 GiB, one S3 PUT) with [files.s3]",
            );
            check(
                s3.endpoint.starts_with("http://") || s3.endpoint.starts_with("https://"),
                "files.s3.endpoint",
                format!("{:?}", s3.endpoint),
                "an http:// or https:// URL",
            );
            check(
                !s3.bucket.is_empty()
                    && s3
                        .bucket
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c)),
                "files.s3.bucket",
                format!("{:?}", s3.bucket),
                "a bucket name (lower-case letters, digits, - and .)",
            );
            check(
                !s3.access_key.is_empty() && !s3.secret_key.is_empty(),
                "files.s3.secret_key",
                "(hidden)".to_owned(),
                "both files.s3.access_key and files.s3.secret_key set",
            );
        }
        check(
            self.web
                .parent_origins
                .iter()
                .all(|o| WebConfig::is_origin(o)),
            "web.parent_origins",
            format!("{:?}", self.web.parent_origins),
            "origins such as \"https://erp.example.com\" or \"http://10.0.0.5:8443\" \
             (lower-case scheme and host, optional port, no path or trailing slash)",
        );
        check(
            self.sfu.nodes.iter().all(|n| {
                (n.url.starts_with("http://") || n.url.starts_with("https://"))
                    && n.max_participants > 0
                    && n.max_packets_per_second > 0
            }),
            "sfu.nodes",
            format!(
                "{:?}",
                self.sfu.nodes.iter().map(|n| &n.url).collect::<Vec<_>>()
            ),
            "[[sfu.nodes]] entries, each with the url of a standalone sfu's HTTP front \
             (such as \"http://10.0.0.5:8089\"), its token, and limits above 0",
        );
        if bad.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(bad))
        }
    }

    /// The SQLite database file.
    #[must_use]
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("confer.db")
    }

    /// The directory `.eml` files go to when no SMTP relay is configured.
    #[must_use]
    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }

    /// Whether the demo application is offered.
    #[must_use]
    pub fn demo_enabled(&self) -> bool {
        self.demo
            .enabled
            .unwrap_or_else(|| self.listen.ip().is_loopback())
    }

    /// The directory of the local file backend.
    #[must_use]
    pub fn files_dir(&self) -> PathBuf {
        self.data_dir.join("files")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        SignallingConfig::default().validate().unwrap();
    }

    #[test]
    fn every_bad_value_is_named() {
        let mut config = SignallingConfig::default();
        config.codes.ttl_secs = 5;
        config.codes.max_tries = 0;
        config.mail.from = "not a mailbox".to_owned();
        let err = config.validate().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("codes.ttl_secs"), "{text}");
        assert!(text.contains("codes.max_tries"), "{text}");
        assert!(text.contains("mail.from"), "{text}");
    }

    #[test]
    fn parent_origins_are_plain_origins() {
        for good in [
            "https://erp.example.com",
            "http://10.0.0.5:8443",
            "http://localhost:3000",
            "https://[::1]:8443",
        ] {
            assert!(WebConfig::is_origin(good), "{good} refused");
        }
        for bad in [
            "erp.example.com",
            "https://erp.example.com/",
            "https://erp.example.com/app",
            "https://*.example.com",
            "https://ERP.example.com",
            "https://erp.example.com:0",
            "https://erp.example.com:99999",
            "https://erp.example.com 'unsafe-inline'",
            "https://erp.example.com;script-src",
            "ftp://erp.example.com",
            "https://",
        ] {
            assert!(!WebConfig::is_origin(bad), "{bad} accepted");
        }
    }

    #[test]
    fn a_cluster_needs_files_on_s3() {
        let mut config = SignallingConfig::default();
        config.bus.url = Some("nats://127.0.0.1:4222".to_owned());
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("files.s3") && err.contains("configure S3"),
            "{err}"
        );
        config.bus.url = Some("http://nats:4222".to_owned());
        config.store.url = Some("mysql://x".to_owned());
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("bus.url") && err.contains("store.url"),
            "{err}"
        );
    }

    #[test]
    fn database_passwords_are_not_shown() {
        assert_eq!(
            redact_url("postgres://confer:s3cret@db:5432/confer"),
            "postgres://confer:***@db:5432/confer"
        );
        assert_eq!(redact_url("postgres://db/confer"), "postgres://db/confer");
    }

    #[test]
    fn shipped_file_matches_defaults() {
        let text = include_str!("../../../config/signalling.toml");
        let parsed: SignallingConfig = toml::from_str(&uncomment(text)).unwrap();
        assert_eq!(parsed, SignallingConfig::default());
    }

    /// The shipped file comments out every setting; turning `# key = value`
    /// lines back on must give exactly the defaults. Lines starting with
    /// `##` are prose.
    fn uncomment(text: &str) -> String {
        text.lines()
            .map(|l| {
                if l.starts_with("##") {
                    ""
                } else if let Some(rest) = l.strip_prefix("# ") {
                    rest
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
