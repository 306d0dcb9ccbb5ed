//! ICE servers handed to devices, with TURN credentials in coturn's REST
//! scheme (a name that ends, and an HMAC of it).

use crate::config::{CallConfig, IceServer};
use crate::ids::{Timestamp, UserId};

/// The configured ICE servers, and the TURN server with a credential of
/// `user`'s own that expires `turn.ttl_secs` after `now` (coturn's REST
/// API scheme; checked by the TURN server against its real clock, so
/// `now` is the server's wall clock, given by the caller).
pub(super) fn ice_servers_for(config: &CallConfig, user: UserId, now: Timestamp) -> Vec<IceServer> {
    let mut servers = config.ice_servers.clone();
    if let Some(turn) = &config.turn {
        let now = u64::try_from(now.0 / 1000).unwrap_or(0);
        let (username, credential) = turn_credential(&turn.secret, now + turn.ttl_secs, user);
        servers.push(IceServer {
            urls: turn.urls.clone(),
            username: Some(username),
            credential: Some(credential),
        });
    }
    servers
}

/// `(<expiry>:<user>, base64(HMAC-SHA1(secret, that)))`.
pub(super) fn turn_credential(secret: &str, expiry: u64, user: UserId) -> (String, String) {
    use base64::Engine;
    use hmac::Mac;
    let username = format!("{expiry}:{user}");
    let mut mac = <hmac::Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}
