//! The sections of the configuration file, one type each, with their
//! defaults.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// Where the server keeps its data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// Unset: SQLite in `data_dir` (one node). `postgres://user:password@host:port/db`:
    /// PostgreSQL (15 or later), which every node of a cluster shares.
    pub url: Option<String>,
}

impl StoreSection {
    /// Whether the store is PostgreSQL.
    #[must_use]
    pub fn is_postgres(&self) -> bool {
        self.url.is_some()
    }
}

/// How the nodes of a cluster reach each other's connections.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BusSection {
    /// Unset: in-process (one node). `nats://host:port`, several
    /// comma-separated allowed: NATS, shared by every node of a cluster.
    pub url: Option<String>,
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
            http2: false,
            shutdown_grace: None,
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

/// The audit log of administrative actions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Entries older than this many days are deleted.
    pub retention_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 400,
        }
    }
}

/// Retention (periods are set per application through the API).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// How often the retention sweep runs, in seconds.
    pub sweep_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            sweep_interval_secs: 3600,
        }
    }
}

/// Exports (asked for through the API).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// A ready archive is deleted this many days after it was built.
    pub keep_days: u64,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self { keep_days: 7 }
    }
}

/// Outgoing webhooks: how deliveries are attempted and retried.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Attempts before a delivery is dead (1 to 100).
    pub max_attempts: u32,
    /// Wait before the first retry, in milliseconds; each further retry
    /// waits twice as long, up to `max_backoff_secs`.
    pub retry_base_ms: u64,
    /// Longest wait between two attempts, in seconds.
    pub max_backoff_secs: u64,
    /// How long one attempt may take (connect, send, answer), in seconds.
    pub timeout_secs: u64,
    /// Attempts in flight at once, over all endpoints.
    pub concurrency: u32,
    /// Attempts in flight at once to one endpoint.
    pub per_endpoint: u32,
    /// Delivered and dead deliveries are kept this many days in the
    /// delivery log.
    pub log_retention_days: u64,
    /// Internal networks deliveries may reach (CIDR or one address, e.g.
    /// `["10.0.0.0/8"]`). By default only public addresses are: not this
    /// host, private, link-local (cloud metadata) or other reserved ones.
    pub allowed_networks: Vec<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            retry_base_ms: 10_000,
            max_backoff_secs: 3600,
            timeout_secs: 10,
            concurrency: 64,
            per_endpoint: 4,
            log_retention_days: 30,
            allowed_networks: Vec::new(),
        }
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
#[derive(
    Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, `turns:…`.
    #[schemars(inner(regex(pattern = "^(stun|stuns|turn|turns):")))]
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
    /// Standalone `sfu` nodes to place calls on instead of running the
    /// SFU in-process (`[[sfu.nodes]]`).
    pub nodes: Vec<SfuNodeConfig>,
}

/// One standalone `sfu` of a media cluster (`[[sfu.nodes]]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SfuNodeConfig {
    /// The URL of its HTTP front, where its control API is
    /// (`http://10.0.0.5:8089`, or `https://` when it serves TLS).
    pub url: String,
    /// Its bearer token (`CONFER_SFU_TOKEN` of that node).
    #[serde(default)]
    pub token: Option<String>,
    /// Sessions it may carry; a node at this many takes no new call.
    #[serde(default = "SfuNodeConfig::default_max_participants")]
    pub max_participants: u64,
    /// Datagrams per second it may receive; a node at this rate takes no
    /// new call.
    #[serde(default = "SfuNodeConfig::default_max_packets_per_second")]
    pub max_packets_per_second: u64,
    /// Takes no new call; calls on it go on (to take it out of service).
    #[serde(default)]
    pub drain: bool,
}

impl SfuNodeConfig {
    fn default_max_participants() -> u64 {
        confer_sfu::nodes::NodeSpec::new("", None).max_participants
    }

    fn default_max_packets_per_second() -> u64 {
        confer_sfu::nodes::NodeSpec::new("", None).max_packets_per_second
    }

    /// A node at `url` with this token and the default limits.
    #[must_use]
    pub fn new(url: impl Into<String>, token: Option<String>) -> Self {
        Self {
            url: url.into(),
            token,
            max_participants: Self::default_max_participants(),
            max_packets_per_second: Self::default_max_packets_per_second(),
            drain: false,
        }
    }

    /// What the media cluster's client needs of it.
    #[must_use]
    pub fn spec(&self) -> confer_sfu::nodes::NodeSpec {
        confer_sfu::nodes::NodeSpec {
            url: self.url.clone(),
            token: self.token.clone(),
            max_participants: self.max_participants,
            max_packets_per_second: self.max_packets_per_second,
            drain: self.drain,
        }
    }
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
