//! Unit tests of the pure parts of calls.

use super::turn::turn_credential;
use super::*;

/// The credential coturn expects, checked against Python's hmac:
/// `base64(hmac.new(b"north-wind", b"1700086400:4b1e…", sha1))`.
#[test]
fn turn_credentials_follow_coturns_rest_scheme() {
    let user: UserId = "4b1e2f0a-8c3d-4e5f-9a6b-7c8d9e0f1a2b"
        .parse()
        .unwrap_or_else(|_| unreachable!());
    let (name, password) = turn_credential("north-wind", 1_700_086_400, user);
    assert_eq!(name, "1700086400:4b1e2f0a-8c3d-4e5f-9a6b-7c8d9e0f1a2b");
    assert_eq!(password, "vfF0j0IN2HkyTgu+ypB0cRXcsvs=");
    let config = CallConfig {
        turn: Some(crate::config::TurnConfig {
            urls: vec!["turn:turn.example.com:3478".to_owned()],
            secret: "north-wind".to_owned(),
            ttl_secs: 3600,
        }),
        ..CallConfig::default()
    };
    let servers = ice_servers_for(&config, user);
    assert_eq!(servers.len(), 1);
    let name = servers[0].username.clone().unwrap_or_default();
    let expiry: u64 = name.split(':').next().unwrap_or("0").parse().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    assert!((now + 3590..=now + 3610).contains(&expiry), "{name}");
}

#[test]
fn durations_read_well() {
    assert_eq!(human_duration(5_400), "5s");
    assert_eq!(human_duration(65_000), "1m 05s");
    assert_eq!(human_duration(3_725_000), "1h 02m 05s");
}
