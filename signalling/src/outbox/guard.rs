//! Where deliveries may go: not into the network the server runs in.
//!
//! An endpoint's URL is chosen by an application, and its delivery log
//! shows how each attempt went: without a guard, any application could make
//! the server call its own loopback services, the cloud's metadata address
//! or the company's private network, and read the outcome back. So a
//! delivery goes only to public addresses, unless the operator allows a
//! network with `[webhooks] allowed_networks` (an on-premises ERP at
//! `10.1.2.3`, say).
//!
//! The check is made on the addresses actually connected to: an IP in the
//! URL is checked before the attempt (and when the endpoint is registered),
//! a host name is resolved by [`Resolver`] at each attempt, which drops the
//! addresses not allowed, so a name that later resolves to `127.0.0.1` is
//! refused too. Redirects are never followed. (An HTTP proxy configured
//! through the environment would connect for the server: it must apply the
//! same rule.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The networks deliveries may reach besides the public internet.
#[derive(Clone, Debug, Default)]
pub struct Destinations {
    allowed: Vec<IpNet>,
}

impl Destinations {
    /// The internal networks in `allowed` (CIDR, e.g. `10.0.0.0/8`, or one
    /// address) become reachable; entries that do not parse are skipped
    /// (the configuration's validation names them).
    #[must_use]
    pub fn new(allowed: &[String]) -> Self {
        Self {
            allowed: allowed.iter().filter_map(|s| parse_network(s)).collect(),
        }
    }

    /// Whether a delivery may connect to `ip`.
    #[must_use]
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !internal(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// Why `ip` is refused, for the delivery log and the registration's
    /// error.
    #[must_use]
    pub fn refusal(ip: IpAddr) -> String {
        format!(
            "{ip} is an internal address (the operator may allow its network with \
             [webhooks] allowed_networks)"
        )
    }
}

/// `text` as a network: CIDR notation, or one address (a /32 or /128).
#[must_use]
pub fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is checked as the
/// IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Addresses that are not the public internet's: this host, private and
/// shared networks, link-local (cloud metadata services live there),
/// multicast, reserved and unspecified ones, and IPv6 forms that embed an
/// IPv4 address (NAT64, 6to4), checked as that address.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24.
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        // Benchmarking, 198.18.0.0/15.
        || (a == 198 && (b == 18 || b == 19))
        // Reserved, 240.0.0.0/4.
        || a >= 240
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let embedded = |high: u16, low: u16| {
        let [h0, h1] = high.to_be_bytes();
        let [l0, l1] = low.to_be_bytes();
        internal_v4(Ipv4Addr::new(h0, h1, l0, l1))
    };
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local, fc00::/7.
        || (segments[0] & 0xfe00) == 0xfc00
        // Link-local, fe80::/10, and the old site-local, fec0::/10.
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        // Documentation, 2001:db8::/32.
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        // IPv4-compatible (deprecated), ::a.b.c.d.
        || (segments[..6].iter().all(|s| *s == 0))
        // NAT64, 64:ff9b::/96: the IPv4 address in the last 32 bits.
        || (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && embedded(segments[6], segments[7]))
        // 6to4, 2002::/16: the IPv4 address in the next 32 bits.
        || (segments[0] == 0x2002 && embedded(segments[1], segments[2]))
}

/// Host names resolved for deliveries: the system's resolver, keeping only
/// the addresses [`Destinations`] permits. A name with none left fails to
/// resolve with [`NotAllowed`], which the attempt reports.
#[derive(Debug)]
pub struct Resolver {
    destinations: Arc<Destinations>,
}

impl Resolver {
    /// A resolver that applies `destinations`.
    #[must_use]
    pub fn new(destinations: Arc<Destinations>) -> Self {
        Self { destinations }
    }
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let destinations = self.destinations.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| destinations.permits(a.ip()))
                .collect();
            if kept.is_empty() && !found.is_empty() {
                let mut ips: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
                ips.dedup();
                return Err(Box::new(NotAllowed(format!(
                    "{host} resolves only to internal addresses ({}; the operator may \
                     allow their network with [webhooks] allowed_networks)",
                    ips.join(", ")
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A host name that resolves only to addresses deliveries may not reach.
#[derive(Debug)]
pub struct NotAllowed(pub String);

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotAllowed {}

/// The [`NotAllowed`] somewhere in `error`'s chain of causes.
#[must_use]
pub fn not_allowed<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a NotAllowed> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<NotAllowed>() {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::Destinations;

    fn permits(d: &Destinations, ip: &str) -> bool {
        d.permits(ip.parse().unwrap())
    }

    #[test]
    fn only_public_addresses_unless_a_network_is_allowed() {
        let default = Destinations::default();
        for public in ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(permits(&default, public), "{public}");
        }
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::10.0.0.1",
        ] {
            assert!(!permits(&default, internal), "{internal}");
        }
        let erp = Destinations::new(&["10.0.0.0/8".to_owned(), " 127.0.0.1 ".to_owned()]);
        assert!(permits(&erp, "10.1.2.3"));
        assert!(permits(&erp, "::ffff:10.1.2.3"));
        assert!(permits(&erp, "127.0.0.1"));
        assert!(!permits(&erp, "127.0.0.2"));
        assert!(!permits(&erp, "192.168.1.1"));
    }
}
