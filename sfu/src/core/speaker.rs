//! Active speaker detection from RFC 6464 audio levels.
//!
//! Each participant's loudness (127 minus the level in -dBov, so silence is
//! 0) is smoothed with an exponential moving average. Every
//! [`EVALUATION_INTERVAL`] the loudest participant becomes the speaker if it
//! is above [`MIN_LOUDNESS`] and louder than the current speaker by
//! [`HYSTERESIS`]; a participant that sends no level for [`SILENCE_AFTER`]
//! counts as silent.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How often the speaker is re-evaluated.
pub const EVALUATION_INTERVAL: Duration = Duration::from_millis(300);
/// Loudness (127 - dBov) below which nobody is speaking (-60 dBov).
pub const MIN_LOUDNESS: f32 = 67.0;
/// How much louder a newcomer must be to take over.
pub const HYSTERESIS: f32 = 6.0;
/// No level for this long means silence.
pub const SILENCE_AFTER: Duration = Duration::from_millis(600);
/// Weight of a new sample in the moving average.
const SMOOTHING: f32 = 0.2;

#[derive(Debug, Clone, Copy)]
struct Loudness {
    average: f32,
    last: Instant,
}

/// Tracks who is speaking among participants identified by `P`.
#[derive(Debug)]
pub struct SpeakerDetector<P> {
    loudness: HashMap<P, Loudness>,
    current: Option<P>,
    next_evaluation: Option<Instant>,
    changed: Option<Option<P>>,
}

impl<P: Copy + Eq + Hash> Default for SpeakerDetector<P> {
    fn default() -> Self {
        Self {
            loudness: HashMap::new(),
            current: None,
            next_evaluation: None,
            changed: None,
        }
    }
}

impl<P: Copy + Eq + Hash> SpeakerDetector<P> {
    /// One audio level sample (0 = loudest, 127 = silence) from `who`.
    pub fn handle_level(&mut self, who: P, level_dbov: i8, now: Instant) {
        let sample = 127.0 - f32::from(level_dbov.clamp(0, 127));
        let entry = self.loudness.entry(who).or_insert(Loudness {
            average: 0.0,
            last: now,
        });
        entry.average += SMOOTHING * (sample - entry.average);
        entry.last = now;
        self.next_evaluation
            .get_or_insert(now + EVALUATION_INTERVAL);
    }

    /// `who` left: it can no longer be the speaker.
    pub fn remove(&mut self, who: P) {
        self.loudness.remove(&who);
        if self.current == Some(who) {
            self.current = None;
            self.changed = Some(None);
        }
    }

    /// Re-evaluates when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.next_evaluation else {
            return;
        };
        if now < due {
            return;
        }
        let heard = |l: &Loudness| {
            if now.saturating_duration_since(l.last) > SILENCE_AFTER {
                0.0
            } else {
                l.average
            }
        };
        let loudest = self
            .loudness
            .iter()
            .map(|(p, l)| (*p, heard(l)))
            .filter(|(_, v)| *v >= MIN_LOUDNESS)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let current = self
            .current
            .and_then(|c| self.loudness.get(&c).map(|l| (c, heard(l))));
        // While everyone is silent the last speaker stays the speaker.
        let next = match (loudest, current) {
            (Some((p, v)), Some((c, cv))) if p != c && v >= cv + HYSTERESIS => Some(p),
            (_, Some((c, _))) => Some(c),
            (Some((p, _)), None) => Some(p),
            (None, None) => None,
        };
        if next != self.current {
            self.current = next;
            self.changed = Some(next);
        }
        self.next_evaluation = if self.loudness.is_empty() {
            None
        } else {
            Some(now + EVALUATION_INTERVAL)
        };
    }

    /// The speaker, when it changed since the last call.
    #[must_use]
    pub fn poll_change(&mut self) -> Option<Option<P>> {
        self.changed.take()
    }

    /// The current speaker.
    #[must_use]
    pub fn current(&self) -> Option<P> {
        self.current
    }

    /// When [`Self::handle_timeout`] has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_evaluation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut SpeakerDetector<u32>, t0: Instant, ms: u64, levels: &[(u32, i8)]) -> Instant {
        let mut now = t0;
        for step in 0..ms / 20 {
            now = t0 + Duration::from_millis(step * 20);
            for (p, l) in levels {
                d.handle_level(*p, *l, now);
            }
            d.handle_timeout(now);
        }
        now
    }

    #[test]
    fn the_loudest_becomes_speaker_with_hysteresis() {
        let mut d = SpeakerDetector::default();
        let t0 = Instant::now();
        let t = feed(&mut d, t0, 1000, &[(1, 30), (2, 127)]);
        assert_eq!(d.poll_change(), Some(Some(1)));
        // Slightly louder is not enough.
        let t = feed(&mut d, t, 1000, &[(1, 30), (2, 28)]);
        assert_eq!(d.current(), Some(1));
        assert_eq!(d.poll_change(), None);
        // Clearly louder while 1 falls silent: 2 takes over.
        feed(&mut d, t, 2000, &[(1, 127), (2, 20)]);
        assert_eq!(d.poll_change(), Some(Some(2)));
        d.remove(2);
        assert_eq!(d.poll_change(), Some(None));
    }
}
