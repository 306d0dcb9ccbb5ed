//! Rewriting of sequence numbers, timestamps and VP8 picture ids so that a
//! subscriber sees one continuous stream while its source changes (a
//! simulcast layer switch, or another publisher in the same slot).
//!
//! Input sequence numbers are extended 64-bit numbers (str0m's `SeqNo`),
//! so nothing here reasons about wrap-around; output numbers start at 1.

use std::time::Instant;

use super::vp8::Vp8Descriptor;

/// Identifies where forwarded packets currently come from: any change of
/// source (publisher track or simulcast layer) is a splice point.
pub type SourceKey = (u64, u8);

/// What the rewriter did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// Output sequence number (extended).
    pub seq: u64,
    /// Output RTP timestamp (32-bit, as on the wire).
    pub timestamp: u32,
    /// The VP8 descriptor's new picture id and TL0PICIDX (for a VP8
    /// packet): the caller has them written as the packet is sent, so
    /// that the payload itself is shared by every subscriber, not copied.
    pub vp8: Option<Vp8Ids>,
}

/// New values of a VP8 descriptor's fields, each `None` when the
/// descriptor has no such field. A picture id fits its field's width.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vp8Ids {
    /// The picture id (7 or 15 bits, as in the original).
    pub picture_id: Option<u16>,
    /// TL0PICIDX.
    pub tl0picidx: Option<u8>,
}

/// Per outgoing stream rewriting state.
#[derive(Debug, Clone)]
pub struct StreamRewriter {
    clock_rate: u32,
    source: Option<SourceKey>,
    /// First input sequence number of the current source.
    source_first_seq: u64,
    seq_offset: i128,
    ts_offset: i64,
    /// Highest output sequence number and its timestamp and send time.
    last_out: Option<(u64, i64, Instant)>,
    /// Extension of 32-bit input timestamps of the current source.
    ts_unwrap: Unwrapper,
    pid: PictureIdRewriter,
}

impl StreamRewriter {
    /// A rewriter for a stream with this RTP clock rate (48000, 90000).
    #[must_use]
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate,
            source: None,
            source_first_seq: 0,
            seq_offset: 0,
            ts_offset: 0,
            last_out: None,
            ts_unwrap: Unwrapper::default(),
            pid: PictureIdRewriter::default(),
        }
    }

    /// Rewrites one packet from `source`; `None` means drop it (it belongs
    /// to before the current source started). Splicing onto a new source
    /// should happen on a keyframe for video; the caller decides when.
    pub fn rewrite(
        &mut self,
        source: SourceKey,
        seq: u64,
        timestamp: u32,
        now: Instant,
        vp8: Option<&Vp8Descriptor>,
    ) -> Option<Rewritten> {
        if self.source != Some(source) {
            self.splice(source, seq, timestamp, now);
            if let Some(d) = vp8 {
                self.pid.splice(d);
            }
        }
        if seq < self.source_first_seq {
            return None;
        }
        let out_seq = u64::try_from(i128::from(seq) + self.seq_offset).ok()?;
        let ts_in = self.ts_unwrap.extend(timestamp);
        let ts_out = ts_in + self.ts_offset;
        if self.last_out.is_none_or(|(s, _, _)| out_seq > s) {
            self.last_out = Some((out_seq, ts_out, now));
        }
        Some(Rewritten {
            seq: out_seq,
            // Truncation to the wire's 32 bits is the point.
            timestamp: ts_out as u32,
            vp8: vp8.map(|d| self.pid.rewrite(d)),
        })
    }

    fn splice(&mut self, source: SourceKey, seq: u64, timestamp: u32, now: Instant) {
        self.source = Some(source);
        self.source_first_seq = seq;
        self.ts_unwrap = Unwrapper::default();
        let ts_in = self.ts_unwrap.extend(timestamp);
        match self.last_out {
            None => {
                self.seq_offset = 1 - i128::from(seq);
                self.ts_offset = 0;
            }
            Some((last_seq, last_ts, last_at)) => {
                self.seq_offset = i128::from(last_seq) + 1 - i128::from(seq);
                // Advance the timestamp by the wall time since the last
                // packet (at least one tick) so the receiver's jitter
                // buffer sees time move on.
                let elapsed = now.saturating_duration_since(last_at);
                let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)) as i64;
                self.ts_offset = last_ts + ticks.max(1) - ts_in;
            }
        }
    }
}

/// Extends 32-bit RTP timestamps to 64 bits around the last value seen.
#[derive(Debug, Clone, Copy, Default)]
struct Unwrapper {
    last: Option<i64>,
}

impl Unwrapper {
    fn extend(&mut self, value: u32) -> i64 {
        let v = i64::from(value);
        let extended = match self.last {
            None => v,
            Some(last) => {
                let base = last & !0xffff_ffff;
                let candidates = [base - (1 << 32) + v, base + v, base + (1 << 32) + v];
                *candidates
                    .iter()
                    .min_by_key(|c| (*c - last).abs())
                    .expect("three candidates")
            }
        };
        if self.last.is_none_or(|l| extended > l) {
            self.last = Some(extended);
        }
        extended
    }
}

/// Keeps VP8 picture ids and TL0PICIDX continuous across splices.
#[derive(Debug, Clone, Copy, Default)]
struct PictureIdRewriter {
    pid_offset: u16,
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
}

impl PictureIdRewriter {
    fn splice(&mut self, d: &Vp8Descriptor) {
        if let (Some((pid, _)), Some(last)) = (d.picture_id, self.last_pid) {
            self.pid_offset = last.wrapping_add(1).wrapping_sub(pid) & 0x7fff;
        }
        if let (Some(tl0), Some(last)) = (d.tl0picidx, self.last_tl0) {
            self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
        }
    }

    fn rewrite(&mut self, d: &Vp8Descriptor) -> Vp8Ids {
        let pid = d
            .picture_id
            .map(|(p, _)| p.wrapping_add(self.pid_offset) & 0x7fff);
        let tl0 = d.tl0picidx.map(|t| t.wrapping_add(self.tl0_offset));
        if let Some(p) = pid {
            self.last_pid = Some(p);
        }
        if let Some(t) = tl0 {
            self.last_tl0 = Some(t);
        }
        Vp8Ids {
            // A 7-bit field keeps the low 7 bits (as written in place).
            picture_id: d
                .picture_id
                .zip(pid)
                .map(|((_, wide), p)| if wide { p } else { p & 0x7f }),
            tl0picidx: tl0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn output_starts_at_one_and_stays_contiguous_across_a_splice() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(90_000);
        let a: Vec<_> = (70_000u64..70_005)
            .map(|s| r.rewrite((1, 0), s, 1000, t0, None).unwrap().seq)
            .collect();
        assert_eq!(a, vec![1, 2, 3, 4, 5]);
        let b = r
            .rewrite((1, 2), 9, 5_000_000, t0 + Duration::from_millis(33), None)
            .unwrap();
        assert_eq!(b.seq, 6);
        assert_eq!(b.timestamp, 1000 + 2970);
        // A late packet of the new source from before its first is dropped.
        assert_eq!(r.rewrite((1, 2), 8, 5_000_000, t0, None), None);
    }

    #[test]
    fn timestamps_unwrap() {
        let mut u = Unwrapper::default();
        assert_eq!(u.extend(u32::MAX - 10), i64::from(u32::MAX) - 10);
        assert_eq!(u.extend(5), (1 << 32) + 5);
        assert_eq!(u.extend(u32::MAX - 20), i64::from(u32::MAX) - 20);
    }
}
