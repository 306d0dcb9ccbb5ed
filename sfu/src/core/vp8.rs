//! The VP8 RTP payload descriptor (RFC 7741 §4.2): reading the fields an
//! SFU needs and rewriting picture id and TL0PICIDX in place.
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! |X|R|N|S|R| PID |  required
//! |I|L|T|K| RSV   |  if X
//! |M| PictureID   |  if I (M: 15-bit id, second byte follows)
//! |  TL0PICIDX    |  if L
//! |TID|Y| KEYIDX  |  if T or K
//! ```

/// The fields of a VP8 payload descriptor, with byte offsets for rewriting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// S bit with partition index 0: this packet starts a frame.
    pub start_of_frame: bool,
    /// The frame is a keyframe (only known on the first packet of a frame).
    pub keyframe: bool,
    /// Picture id and whether it is 15 bits wide.
    pub picture_id: Option<(u16, bool)>,
    /// TL0PICIDX.
    pub tl0picidx: Option<u8>,
    /// Temporal layer index.
    pub tid: Option<u8>,
    picture_id_at: usize,
    tl0picidx_at: usize,
    /// Length of the descriptor in bytes.
    pub len: usize,
}

/// Why a payload is not a VP8 payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Vp8Error {
    /// Shorter than its descriptor says.
    #[error("VP8 payload truncated")]
    Truncated,
}

impl Vp8Descriptor {
    /// Parses the descriptor at the start of an RTP payload.
    ///
    /// # Errors
    /// [`Vp8Error::Truncated`] when the payload ends inside the descriptor.
    pub fn parse(payload: &[u8]) -> Result<Self, Vp8Error> {
        let first = *payload.first().ok_or(Vp8Error::Truncated)?;
        let extended = first & 0x80 != 0;
        let start = first & 0x10 != 0;
        let partition = first & 0x07;
        let mut at = 1;
        let mut d = Self {
            start_of_frame: start && partition == 0,
            keyframe: false,
            picture_id: None,
            tl0picidx: None,
            tid: None,
            picture_id_at: 0,
            tl0picidx_at: 0,
            len: 0,
        };
        if extended {
            let x = *payload.get(at).ok_or(Vp8Error::Truncated)?;
            at += 1;
            let (has_i, has_l, has_t, has_k) =
                (x & 0x80 != 0, x & 0x40 != 0, x & 0x20 != 0, x & 0x10 != 0);
            if has_i {
                let b = *payload.get(at).ok_or(Vp8Error::Truncated)?;
                d.picture_id_at = at;
                if b & 0x80 != 0 {
                    let b2 = *payload.get(at + 1).ok_or(Vp8Error::Truncated)?;
                    d.picture_id = Some(((u16::from(b & 0x7f) << 8) | u16::from(b2), true));
                    at += 2;
                } else {
                    d.picture_id = Some((u16::from(b), false));
                    at += 1;
                }
            }
            if has_l {
                d.tl0picidx = Some(*payload.get(at).ok_or(Vp8Error::Truncated)?);
                d.tl0picidx_at = at;
                at += 1;
            }
            if has_t || has_k {
                let b = *payload.get(at).ok_or(Vp8Error::Truncated)?;
                if has_t {
                    d.tid = Some(b >> 6);
                }
                at += 1;
            }
        }
        d.len = at;
        if d.start_of_frame {
            // First byte of the VP8 frame header: bit 0 (P) is 0 on keyframes.
            let header = *payload.get(at).ok_or(Vp8Error::Truncated)?;
            d.keyframe = header & 0x01 == 0;
        }
        Ok(d)
    }

    /// Writes a new picture id (same width as the original) and TL0PICIDX
    /// into `payload`, which must be the payload this was parsed from.
    pub fn rewrite(&self, payload: &mut [u8], picture_id: u16, tl0picidx: u8) {
        if let Some((_, wide)) = self.picture_id {
            if wide {
                payload[self.picture_id_at] = 0x80 | ((picture_id >> 8) as u8 & 0x7f);
                payload[self.picture_id_at + 1] = (picture_id & 0xff) as u8;
            } else {
                payload[self.picture_id_at] = (picture_id & 0x7f) as u8;
            }
        }
        if self.tl0picidx.is_some() {
            payload[self.tl0picidx_at] = tl0picidx;
        }
    }
}

/// Length of [`synthetic_head`]'s descriptor.
pub const SYNTHETIC_DESCRIPTOR: usize = 6;

/// The head of one RTP payload of a synthetic VP8 frame, for test peers
/// and load generators: a 6-byte descriptor as browsers send it (X; I with
/// a 15-bit picture id; L with TL0PICIDX = the frame number's low byte and
/// T with TID 0, Y set; S at a frame start) and, at a frame start, the VP8 frame tag (bit 0 clear on
/// keyframes), then on keyframes the start code and the 16:9 frame size
/// for `height`. The caller appends the body.
#[must_use]
pub fn synthetic_head(frame: u32, start: bool, keyframe: bool, height: u16) -> Vec<u8> {
    let pid = (frame as u16) & 0x7fff;
    let mut head = vec![
        if start { 0x90 } else { 0x80 },
        0xe0,
        0x80 | (pid >> 8) as u8,
        pid as u8,
        frame as u8,
        0x20,
    ];
    if start {
        head.extend_from_slice(&[if keyframe { 0x10 } else { 0x11 }, 0, 0]);
        if keyframe {
            let width = height * 16 / 9;
            head.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            head.extend_from_slice(&width.to_le_bytes());
            head.extend_from_slice(&height.to_le_bytes());
        }
    }
    head
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// X=1, S=1, PID=0 | I=1, L=1, T=1 | M=1 picture id 0x1234 | TL0PICIDX 7 | TID 1 | keyframe header
    const KEY: [u8; 7] = [0x90, 0xe0, 0x92, 0x34, 0x07, 0x40, 0x10];

    #[test]
    fn parses_a_keyframe_start() {
        let d = Vp8Descriptor::parse(&KEY).unwrap();
        assert!(d.start_of_frame && d.keyframe);
        assert_eq!(d.picture_id, Some((0x1234, true)));
        assert_eq!(d.tl0picidx, Some(7));
        assert_eq!(d.tid, Some(1));
        assert_eq!(d.len, 6);
    }

    #[test]
    fn delta_frames_and_continuations_are_not_keyframes() {
        let mut delta = KEY;
        delta[6] = 0x11;
        assert!(!Vp8Descriptor::parse(&delta).unwrap().keyframe);
        let mut cont = KEY;
        cont[0] = 0x80;
        let d = Vp8Descriptor::parse(&cont).unwrap();
        assert!(!d.start_of_frame && !d.keyframe);
    }

    #[test]
    fn rewrites_in_place() {
        let mut p = KEY;
        let d = Vp8Descriptor::parse(&p).unwrap();
        d.rewrite(&mut p, 0x0abc, 200);
        let again = Vp8Descriptor::parse(&p).unwrap();
        assert_eq!(again.picture_id, Some((0x0abc, true)));
        assert_eq!(again.tl0picidx, Some(200));
        assert!(again.keyframe);
    }

    #[test]
    fn truncated_payloads_are_errors_not_panics() {
        for n in 0..KEY.len() {
            let r = Vp8Descriptor::parse(&KEY[..n]);
            assert!(r.is_err(), "{n} bytes parsed");
        }
        assert!(Vp8Descriptor::parse(&[0x10, 0x00]).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::testing::fuzz_cases(2000)))]

        /// Fuzz target: any payload parses to a descriptor that lies inside
        /// it, or is `Truncated`; rewriting what parsed stays in bounds and
        /// leaves the descriptor's shape as it was.
        #[test]
        fn any_payload_parses_inside_itself_or_is_truncated(
            mut payload in proptest::collection::vec(any::<u8>(), 0..24),
            picture_id in any::<u16>(),
            tl0picidx in any::<u8>(),
        ) {
            match Vp8Descriptor::parse(&payload) {
                Err(e) => prop_assert_eq!(e, Vp8Error::Truncated),
                Ok(d) => {
                    prop_assert!(d.len >= 1 && d.len <= payload.len());
                    d.rewrite(&mut payload, picture_id, tl0picidx);
                    let again = Vp8Descriptor::parse(&payload).unwrap();
                    prop_assert_eq!(again.len, d.len);
                    prop_assert_eq!(again.picture_id.map(|(_, wide)| wide), d.picture_id.map(|(_, wide)| wide));
                    prop_assert_eq!(again.tl0picidx.is_some(), d.tl0picidx.is_some());
                }
            }
        }
    }
}
