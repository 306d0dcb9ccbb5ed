//! What comes in besides media: SDP offers (parsed, their m-lines and
//! whether they negotiate congestion feedback) and the ICE ufrag a STUN
//! binding request names.

use str0m::change::SdpOffer;
use str0m::media::{MediaKind, Mid};

use super::JoinError;

/// Whether an offer negotiates transport-wide congestion control feedback
/// (the header extension the bandwidth estimate is built on).
pub(super) fn offers_transport_cc(offer: &SdpOffer) -> bool {
    offer.to_string().contains("transport-wide-cc")
}

/// Parses an SDP offer; the control plane does it before the offer
/// reaches a worker.
///
/// # Errors
/// [`JoinError::BadOffer`] when it is not an SDP offer str0m can read.
pub fn parse_offer(sdp: &str) -> Result<SdpOffer, JoinError> {
    SdpOffer::from_sdp_string(sdp).map_err(|e| JoinError::BadOffer(e.to_string()))
}

/// The STUN magic cookie (RFC 8489 §5).
pub(super) const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// The USERNAME attribute (RFC 8489 §14.3).
const STUN_USERNAME: u16 = 0x0006;

/// Our ufrag in a STUN message's USERNAME (`<receiver's ufrag>:<sender's
/// ufrag>`, RFC 8445 §7.2.2), read in place. `None` for anything that is
/// not a STUN message with such an attribute; never panics.
#[must_use]
pub fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    // RFC 7983: STUN starts with 0 or 1 (what str0m classifies as STUN).
    if data.len() < 20 || data[0] > 1 || data[4..8] != STUN_MAGIC {
        return None;
    }
    let mut rest = &data[20..];
    while rest.len() >= 4 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if typ == STUN_USERNAME {
            let (local, _) = std::str::from_utf8(value).ok()?.split_once(':')?;
            return Some(local);
        }
        // Values are padded to a multiple of four bytes.
        rest = rest.get((4 + len).next_multiple_of(4)..)?;
    }
    None
}

/// `(mid, kind)` of every m-line of an SDP, in order.
pub(super) fn answer_mids(sdp: &str) -> Vec<(Mid, MediaKind)> {
    let mut out = Vec::new();
    let mut kind = None;
    for line in sdp.lines() {
        if let Some(rest) = line.strip_prefix("m=") {
            kind = if rest.starts_with("audio") {
                Some(MediaKind::Audio)
            } else if rest.starts_with("video") {
                Some(MediaKind::Video)
            } else {
                None
            };
        } else if let Some(mid) = line.strip_prefix("a=mid:")
            && let Some(k) = kind
        {
            out.push((Mid::from(mid.trim()), k));
        }
    }
    out
}
