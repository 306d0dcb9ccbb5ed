//! Typed configuration of the SFU.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::relay::RelayConfig;
use crate::tls::{TlsConfig, TlsError};

/// Everything the SFU can be told; defaults in `config/sfu.toml`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SfuConfig {
    /// HTTP address for WHIP/WHEP and metrics (standalone `sfu` only).
    pub listen: SocketAddr,
    /// Address the UDP media sockets bind to; each worker takes its own
    /// port (`0` = any free port, otherwise consecutive ports from this one).
    pub udp_bind: SocketAddr,
    /// Address announced in ICE candidates, for a server behind 1:1 NAT;
    /// defaults to the bound address.
    pub announced_ip: Option<IpAddr>,
    /// Number of worker threads; 0 means one per core.
    pub workers: usize,
    /// Pin each worker to a core.
    pub pin_workers: bool,
    /// Bearer token required by WHIP/WHEP and `/metrics` (standalone `sfu`
    /// only).
    pub token: Option<String>,
    /// Serve `/metrics` without the token (for a scraper on a private
    /// network); off by default.
    pub metrics_open: bool,
    /// Shortest time between two keyframe requests to one publisher layer, ms.
    pub keyframe_min_interval_ms: u64,
    /// A participant that has not connected after this many seconds is dropped.
    pub connect_timeout_secs: u64,
    /// Commands waiting for a worker before callers are told it is overloaded.
    pub command_queue: usize,
    /// HTTPS for the HTTP front (standalone `sfu` only); plain HTTP when
    /// absent.
    pub tls: Option<TlsConfig>,
    /// Seconds an HTTP connection may take to send a whole request head
    /// (standalone `sfu` only; see [`crate::serve`]).
    pub header_read_timeout_secs: u64,
    /// Open HTTP connections per client address, IPv6 by /64 (standalone
    /// `sfu` only); 0 turns the limit off.
    pub connections_per_ip: usize,
    /// The relay to other nodes (the cascade, standalone `sfu` only): a
    /// QUIC endpoint; off when absent.
    pub relay: Option<RelayConfig>,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            udp_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            announced_ip: None,
            workers: 0,
            pin_workers: true,
            token: None,
            metrics_open: false,
            keyframe_min_interval_ms: 500,
            connect_timeout_secs: 30,
            command_queue: 1024,
            tls: None,
            header_read_timeout_secs: 10,
            connections_per_ip: 256,
            relay: None,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Values out of range, each named with what is allowed.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The TLS certificate or key cannot be used.
    #[error("invalid TLS certificate or key")]
    Tls(#[from] TlsError),
}

impl SfuConfig {
    /// Checks every value.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming each bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut bad = Vec::new();
        if self.udp_bind.ip().is_unspecified() && self.announced_ip.is_none() {
            bad.push("`udp_bind` is unspecified (0.0.0.0): set `announced_ip` to the address peers reach".to_owned());
        }
        if self.workers > 256 {
            bad.push(format!("`workers` = {}: allowed is 0 to 256", self.workers));
        }
        if !(10..=10_000).contains(&self.keyframe_min_interval_ms) {
            bad.push(format!(
                "`keyframe_min_interval_ms` = {}: allowed is 10 to 10000",
                self.keyframe_min_interval_ms
            ));
        }
        if !(1..=600).contains(&self.connect_timeout_secs) {
            bad.push(format!(
                "`connect_timeout_secs` = {}: allowed is 1 to 600",
                self.connect_timeout_secs
            ));
        }
        if !(1..=1_000_000).contains(&self.command_queue) {
            bad.push(format!(
                "`command_queue` = {}: allowed is 1 to 1000000",
                self.command_queue
            ));
        }
        if !(1..=3600).contains(&self.header_read_timeout_secs) {
            bad.push(format!(
                "`header_read_timeout_secs` = {}: allowed is 1 to 3600",
                self.header_read_timeout_secs
            ));
        }
        if self.connections_per_ip > 1_000_000 {
            bad.push(format!(
                "`connections_per_ip` = {}: allowed is 0 (off) to 1000000",
                self.connections_per_ip
            ));
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            bad.push("`token` is empty: leave it out to disable authentication".to_owned());
        }
        if let Some(tls) = &self.tls {
            if tls.cert.as_os_str().is_empty() || tls.key.as_os_str().is_empty() {
                bad.push("`tls.cert` and `tls.key` must both name PEM files".to_owned());
            }
            if tls.watch_secs > 24 * 60 * 60 {
                bad.push(format!(
                    "`tls.watch_secs` = {}: allowed is 0 (SIGHUP only) to 86400",
                    tls.watch_secs
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(bad.join("; ")))
        }
    }

    /// The limits of the HTTP front's accept loop.
    #[must_use]
    pub fn serve_limits(&self) -> crate::serve::ServeLimits {
        crate::serve::ServeLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            connections_per_ip: self.connections_per_ip,
            // The control API's client multiplexes on one connection.
            http2: true,
            shutdown_grace: Some(Duration::from_secs(5)),
        }
    }

    /// The number of workers to start.
    #[must_use]
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            self.workers
        }
    }

    /// Keyframe request interval.
    #[must_use]
    pub fn keyframe_min_interval(&self) -> Duration {
        Duration::from_millis(self.keyframe_min_interval_ms)
    }

    /// Connect timeout.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_shipped_file() {
        SfuConfig::default().validate().unwrap();
        let text: String = include_str!("../../config/sfu.toml")
            .lines()
            .filter(|l| !l.starts_with("##"))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            // Examples without a default stay commented.
            .filter(|l| !l.starts_with("announced_ip") && !l.starts_with("token"))
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: SfuConfig = toml::from_str(&text).unwrap();
        assert_eq!(parsed, SfuConfig::default());
    }

    #[test]
    fn bad_values_are_named() {
        let config = SfuConfig {
            keyframe_min_interval_ms: 1,
            token: Some(String::new()),
            ..SfuConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("keyframe_min_interval_ms") && err.contains("token"),
            "{err}"
        );
    }
}
