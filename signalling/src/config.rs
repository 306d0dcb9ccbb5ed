//! Typed configuration of the signalling server.
//!
//! [`SignallingConfig`] holds every setting with its documented default
//! (`config/signalling.toml` ships the same values, commented). The library
//! never reads files or the environment: the binary merges the TOML file,
//! `CONFER_*` environment variables and command-line flags, then calls
//! [`SignallingConfig::validate`], which names every bad value and what is
//! allowed.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use confer_sfu::tls::TlsConfig;
use confer_sfu::tls::TlsError;
use serde::{Deserialize, Serialize};

/// Everything `signalling serve` can be told.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SignallingConfig {
    /// Address the HTTP and WebSocket server listens on.
    pub listen: SocketAddr,
    /// Directory for the SQLite database, the mail outbox and local files.
    pub data_dir: PathBuf,
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
            tls: None,
            log: LogConfig::default(),
            http: HttpConfig::default(),
            mail: MailConfig::default(),
            codes: CodeConfig::default(),
            tokens: TokenConfig::default(),
            subscribers: SubscriberConfig::default(),
            events: EventConfig::default(),
            calls: CallConfig::default(),
            sfu: SfuSection::default(),
            files: FilesConfig::default(),
            demo: DemoConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            web: WebConfig::default(),
        }
    }
}

/// The demo application: anyone who opens the web client can type a name
/// and use Confer as a user of it, with no application of their own.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// `true` or `false`; unset: on when `listen` is a loopback address (a
    /// first run on one's own machine) for requests that did not come
    /// through a reverse proxy, off otherwise.
    pub enabled: Option<bool>,
}

/// The web client served at `/`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Origins (`https://erp.example.com`, scheme, host and port only) of
    /// the applications that may embed the page in a frame and hand it
    /// tokens with `postMessage`. The page's CSP gets `frame-ancestors
    /// 'self'` and these; empty: only pages of this server may frame it.
    pub parent_origins: Vec<String>,
}

impl WebConfig {
    /// Whether `origin` is an origin as a browser writes it: `http` or
    /// `https`, a host, an optional port; no path, no trailing slash, no
    /// wildcard. Anything else could not match `MessageEvent.origin`, or
    /// would change the meaning of the CSP it is copied into.
    #[must_use]
    pub fn is_origin(origin: &str) -> bool {
        let Some(rest) = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
        else {
            return false;
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') && !port.contains(']') => (host, Some(port)),
            _ => (rest, None),
        };
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                })
        };
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        host_ok && port_ok
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `confer_signalling=debug,info`;
    /// `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// HTTP limits.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest accepted REST request body, in bytes.
    pub max_body_bytes: usize,
    /// Connections the kernel queues before they are accepted (capped by
    /// `net.core.somaxconn`); large enough for thousands of clients
    /// reconnecting at once.
    pub listen_backlog: u32,
    /// Seconds a connection may take to send a whole request head, from
    /// its accept or its previous response (an idle keep-alive
    /// connection); past it the connection is closed without an answer
    /// (slowloris clients, silent connections).
    pub header_read_timeout_secs: u64,
    /// Open connections per client address (IPv6 by /64), WebSocket
    /// sessions included; more are closed when accepted. 0 turns the
    /// limit off. Behind a reverse proxy every connection is the proxy's:
    /// set it above the proxy's pool, or 0, and limit clients there.
    pub connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            listen_backlog: 4096,
            header_read_timeout_secs: 10,
            connections_per_ip: 256,
        }
    }
}

impl HttpConfig {
    /// The limits the accept loop enforces.
    #[must_use]
    pub fn serve_limits(&self) -> confer_sfu::serve::ServeLimits {
        confer_sfu::serve::ServeLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            connections_per_ip: self.connections_per_ip,
        }
    }
}

/// Outgoing mail: SMTP when `smtp` is set, otherwise `.eml` files in
/// `<data_dir>/outbox/`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MailConfig {
    /// The `From:` of every mail.
    pub from: String,
    /// The SMTP relay; absent means the outbox directory.
    pub smtp: Option<SmtpConfig>,
    /// Hours an outbox `.eml` file is kept before it is deleted.
    pub outbox_retention_hours: u64,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            from: "Confer <confer@localhost>".to_owned(),
            smtp: None,
            outbox_retention_hours: 24,
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP, upgraded with STARTTLS (required).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption at all: only for a relay on the same host.
    None,
}

/// An SMTP relay.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name of the relay.
    pub host: String,
    /// Port; 587 for STARTTLS and 465 for TLS when absent, 25 for `none`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls`, `tls` or `none`.
    #[serde(default)]
    pub tls: SmtpTls,
    /// User name for SMTP AUTH, if the relay needs it.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for SMTP AUTH.
    #[serde(default)]
    pub password: Option<String>,
}

/// E-mail codes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CodeConfig {
    /// How long a mailed code is valid, in seconds.
    pub ttl_secs: u64,
    /// How many confirmations a code allows before it is burnt.
    pub max_tries: u32,
}

impl Default for CodeConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 15 * 60,
            max_tries: 5,
        }
    }
}

impl CodeConfig {
    /// The validity as a [`Duration`].
    #[must_use]
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }
}

/// User tokens.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Lifetime of tokens issued by `POST /api/v1/tokens`, in seconds.
    pub ttl_secs: u64,
    /// Longest lifetime (`exp - iat`) accepted from a token an application
    /// minted itself, in seconds.
    pub max_ttl_secs: u64,
    /// After a secret rotation, how long tokens signed with the old key are
    /// still accepted, in seconds.
    pub rotation_grace_secs: u64,
    /// Tolerated clock difference for `iat`, in seconds.
    pub leeway_secs: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 60 * 60,
            max_ttl_secs: 24 * 60 * 60,
            rotation_grace_secs: 5 * 60,
            leeway_secs: 60,
        }
    }
}

/// The per-user event log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventConfig {
    /// Events older than this many days are deleted; a client that resumes
    /// from before the oldest kept event is told to resynchronise.
    pub retention_days: u64,
}

impl Default for EventConfig {
    fn default() -> Self {
        Self { retention_days: 30 }
    }
}

/// Calls.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CallConfig {
    /// A call with this many joined participants goes through the SFU; a
    /// peer-to-peer call that reaches it is upgraded.
    pub conference_server_based_threshold: usize,
    /// Most participants joined to one call.
    pub conference_server_based_member_limit: usize,
    /// A member who neither joins nor declines within this many seconds
    /// has missed the call.
    pub ring_timeout_secs: u64,
    /// Whether an SFU call goes back to peer-to-peer when two remain.
    pub back_to_p2p: bool,
    /// A participant whose WebSocket closed keeps its place (and media)
    /// this many seconds, for its client to reconnect and `call_join`.
    pub reconnect_grace_secs: u64,
    /// STUN/TURN servers handed to clients for peer-to-peer calls.
    pub ice_servers: Vec<IceServer>,
    /// A TURN server with time-limited credentials (coturn's
    /// `use-auth-secret`), handed to each user with its own credential.
    pub turn: Option<TurnConfig>,
}

/// TURN with the "REST API" credentials of coturn (`use-auth-secret`,
/// `static-auth-secret`): the user name is `<expiry unix time>:<user id>`
/// and the password is base64(HMAC-SHA1(secret, user name)), so no
/// password is stored and each expires.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    /// `turn:host:port?transport=udp`, `turns:host:5349?transport=tcp` …
    pub urls: Vec<String>,
    /// coturn's `static-auth-secret`.
    pub secret: String,
    /// How long a credential is valid, in seconds.
    #[serde(default = "TurnConfig::default_ttl")]
    pub ttl_secs: u64,
}

impl TurnConfig {
    fn default_ttl() -> u64 {
        24 * 60 * 60
    }
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            conference_server_based_threshold: 3,
            conference_server_based_member_limit: 34,
            ring_timeout_secs: 45,
            back_to_p2p: false,
            reconnect_grace_secs: 20,
            ice_servers: Vec::new(),
            turn: None,
        }
    }
}

/// Attachments. Without `[files.s3]` the bytes are kept in
/// `<data_dir>/files/` and the signed URLs point at this server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Largest file, in bytes.
    pub max_size: u64,
    /// Bytes one application may keep (uploads in progress count); 0 is
    /// no quota.
    pub app_quota_bytes: u64,
    /// How long an upload or download URL is valid, in seconds.
    pub url_ttl_secs: u64,
    /// Files older than this many days are removed; 0 keeps them until
    /// their message is deleted.
    pub retention_days: u64,
    /// Images up to this size get a preview.
    pub preview_max_bytes: u64,
    /// Base of the URLs the local backend signs (`https://confer.example.com`),
    /// when clients reach this server under another name than the `Host`
    /// they send (behind a proxy). Unset: `http://` + the request's `Host`.
    pub public_url: Option<String>,
    /// An S3-compatible store instead of the local directory.
    pub s3: Option<S3Config>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            max_size: 100 * 1024 * 1024,
            app_quota_bytes: 0,
            url_ttl_secs: 15 * 60,
            retention_days: 0,
            preview_max_bytes: 25 * 1024 * 1024,
            public_url: None,
            s3: None,
        }
    }
}

/// An S3-compatible bucket (AWS, MinIO, Yandex Object Storage, Ceph RGW…).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The service's address: `https://s3.eu-central-1.amazonaws.com`,
    /// `https://storage.yandexcloud.net`, `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// The bucket (it must exist).
    pub bucket: String,
    /// The region the signature names (`us-east-1` for most others).
    #[serde(default = "S3Config::default_region")]
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// `true`: `endpoint/bucket/key` (MinIO, Ceph, most self-hosted);
    /// `false`: `bucket.endpoint/key` (virtual-host style, AWS).
    #[serde(default = "S3Config::default_path_style")]
    pub path_style: bool,
}

impl S3Config {
    fn default_region() -> String {
        "us-east-1".to_owned()
    }

    fn default_path_style() -> bool {
        true
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

/// A STUN or TURN server, as a browser's `RTCIceServer`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, `turns:…`.
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The SFU that `signalling serve` runs in-process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SfuSection {
    /// Address the UDP media sockets bind to; each worker takes its own
    /// port (`0` = any free port, otherwise consecutive ports from this one).
    pub udp_bind: SocketAddr,
    /// Address announced in ICE candidates (a server behind 1:1 NAT, or
    /// bound to 0.0.0.0).
    pub announced_ip: Option<std::net::IpAddr>,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Pin each worker to a core.
    pub pin_workers: bool,
    /// A participant that has not connected after this many seconds is dropped.
    pub connect_timeout_secs: u64,
    /// Remote `sfu` nodes (scale-out). Not supported yet: must be empty.
    pub nodes: Vec<String>,
}

impl Default for SfuSection {
    fn default() -> Self {
        let sfu = confer_sfu::SfuConfig::default();
        Self {
            udp_bind: sfu.udp_bind,
            announced_ip: None,
            workers: 0,
            pin_workers: true,
            connect_timeout_secs: sfu.connect_timeout_secs,
            nodes: Vec::new(),
        }
    }
}

impl SfuSection {
    /// The embedded SFU's own configuration.
    #[must_use]
    pub fn embedded(&self) -> confer_sfu::SfuConfig {
        confer_sfu::SfuConfig {
            udp_bind: self.udp_bind,
            announced_ip: self.announced_ip,
            workers: self.workers,
            pin_workers: self.pin_workers,
            connect_timeout_secs: self.connect_timeout_secs,
            ..confer_sfu::SfuConfig::default()
        }
    }
}

/// Subscriber sessions (a subscriber signed in with an e-mail code).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriberConfig {
    /// Lifetime of a subscriber session token, in seconds.
    pub session_ttl_secs: u64,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            session_ttl_secs: 12 * 60 * 60,
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
            self.sfu.nodes.is_empty(),
            "sfu.nodes",
            format!("{:?}", self.sfu.nodes),
            "empty: remote SFU nodes are not supported in this version",
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
    fn shipped_file_matches_defaults() {
        let text = include_str!("../../config/signalling.toml");
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
