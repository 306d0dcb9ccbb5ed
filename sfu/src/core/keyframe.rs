//! Throttled keyframe requests, one [`KeyframeRequester`] per publisher
//! layer: however many subscribers ask, the publisher gets at most one PLI
//! per interval, and a request is repeated each interval until a keyframe
//! arrives.

use std::time::{Duration, Instant};

/// Default shortest time between two PLIs to one publisher layer.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Request state of one publisher layer.
#[derive(Debug, Clone, Copy)]
pub struct KeyframeRequester {
    min_interval: Duration,
    last_sent: Option<Instant>,
    /// When the oldest unanswered request was made.
    pending: Option<Instant>,
}

impl KeyframeRequester {
    /// A requester that sends at most one request per `min_interval`.
    #[must_use]
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last_sent: None,
            pending: None,
        }
    }

    /// Someone needs a keyframe.
    pub fn handle_request(&mut self, now: Instant) {
        self.pending.get_or_insert(now);
    }

    /// A keyframe arrived: nobody is waiting any more.
    pub fn handle_keyframe(&mut self) {
        self.pending = None;
    }

    /// Whether a request should go out now; if so it counts as sent.
    #[must_use]
    pub fn poll_request(&mut self, now: Instant) -> bool {
        if self.pending.is_none() {
            return false;
        }
        if self
            .last_sent
            .is_some_and(|at| now < at + self.min_interval)
        {
            return false;
        }
        self.last_sent = Some(now);
        true
    }

    /// When [`Self::poll_request`] may next say yes, if anything is pending.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let since = self.pending?;
        Some(
            self.last_sent
                .map_or(since, |at| (at + self.min_interval).max(since)),
        )
    }
}

impl Default for KeyframeRequester {
    fn default() -> Self {
        Self::new(DEFAULT_MIN_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_requests_make_one_pli_per_interval_until_a_keyframe() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        assert!(!k.poll_request(t0));
        for _ in 0..100 {
            k.handle_request(t0);
        }
        assert!(k.poll_request(t0));
        assert!(!k.poll_request(t0 + Duration::from_millis(499)));
        assert_eq!(k.poll_timeout(), Some(t0 + DEFAULT_MIN_INTERVAL));
        assert!(
            k.poll_request(t0 + DEFAULT_MIN_INTERVAL),
            "repeated until a keyframe"
        );
        k.handle_keyframe();
        assert!(!k.poll_request(t0 + Duration::from_secs(5)));
        assert_eq!(k.poll_timeout(), None);
    }
}
