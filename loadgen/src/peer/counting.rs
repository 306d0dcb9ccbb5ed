//! The counting subscriber (`--counting`): once connected it only counts
//! RTP datagrams by their clear header; see the parent module's docs.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use super::PeerStats;

/// Sequence numbers of one counted stream, extended past 16 bits.
#[derive(Debug, Clone, Copy)]
pub(super) struct SeqCount {
    pub(super) first: u64,
    pub(super) max: u64,
}

impl SeqCount {
    /// Extends a 16-bit sequence number around the highest seen; `None`
    /// for a number from before the first (reordered at the start).
    fn extend(&mut self, seq: u16) -> Option<u64> {
        let low = (self.max & 0xffff) as u16;
        let delta = i64::from(seq.wrapping_sub(low) as i16);
        let ext = u64::try_from(self.max as i64 + delta).ok()?;
        if ext < self.first {
            return None;
        }
        self.max = self.max.max(ext);
        Some(ext)
    }
}

impl PeerStats {
    /// Counts RTP datagrams by their clear header (a counting subscriber):
    /// `headers` are (SSRC, sequence number) pairs.
    pub(super) fn count(&mut self, headers: &[(u32, u16)]) {
        for &(ssrc, seq) in headers {
            let stream = self.counted.entry(ssrc).or_insert(SeqCount {
                // Room below, for packets reordered before the first.
                first: (1 << 16) + u64::from(seq),
                max: (1 << 16) + u64::from(seq),
            });
            if stream.extend(seq).is_some() {
                self.received += 1;
            }
        }
    }
}

/// A connected counting subscriber: reads datagrams in batches, counts
/// RTP by its clear header, hands the rest (STUN, DTLS, RTCP) to str0m.
pub(super) async fn count_only(
    mut rtc: Rtc,
    socket: tokio::net::UdpSocket,
    local: SocketAddr,
    stats: &Mutex<PeerStats>,
) {
    use std::io::IoSliceMut;

    use quinn_udp::{RecvMeta, UdpSocketState};
    use tokio::io::Interest;

    let Ok(state) = UdpSocketState::new((&socket).into()) else {
        return;
    };
    let batch = quinn_udp::BATCH_SIZE;
    // Large enough for a GRO batch of full-size datagrams.
    let mut buffers = vec![vec![0u8; 64 * 1024]; batch];
    let mut meta = vec![RecvMeta::default(); batch];
    let mut headers: Vec<(u32, u16)> = Vec::with_capacity(4096);
    loop {
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                ))) => rtc.disconnect(),
                Ok(Output::Event(_)) => {}
                Err(_) => return,
            }
        };
        if !rtc.is_alive() {
            return;
        }
        let now = Instant::now();
        if timeout <= now {
            if rtc.handle_input(Input::Timeout(now)).is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            r = socket.readable() => {
                if r.is_err() {
                    return;
                }
                let mut others: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
                // Read until the socket is empty, then count under one lock.
                loop {
                    let mut slices: Vec<IoSliceMut<'_>> =
                        buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                    let read = socket.try_io(Interest::READABLE, || {
                        state.recv((&socket).into(), &mut slices, &mut meta)
                    });
                    let n = match read {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => return,
                    };
                    for (m, buf) in meta.iter().zip(&buffers).take(n) {
                        let data = &buf[..m.len];
                        let stride = if m.stride == 0 { data.len().max(1) } else { m.stride };
                        for datagram in data.chunks(stride) {
                            match clear_rtp(datagram) {
                                Some(header) => headers.push(header),
                                None => others.push((m.addr, datagram.to_vec())),
                            }
                        }
                    }
                }
                if !headers.is_empty() {
                    if let Ok(mut s) = stats.lock() {
                        s.count(&headers);
                    }
                    headers.clear();
                }
                for (source, data) in others {
                    let Ok(contents) = data.as_slice().try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents,
                    });
                    if rtc.handle_input(input).is_err() {
                        return;
                    }
                }
            }
            () = tokio::time::sleep(timeout.saturating_duration_since(now)) => {
                if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    return;
                }
            }
        }
    }
}

/// SSRC and sequence number of an RTP datagram (RFC 3550 header, in the
/// clear in SRTP); `None` for anything else: STUN (first byte 0–3), DTLS
/// (20–63), RTCP (payload types 192–223, RFC 5761).
fn clear_rtp(datagram: &[u8]) -> Option<(u32, u16)> {
    if datagram.len() < 12 || datagram[0] >> 6 != 2 {
        return None;
    }
    // RTCP's packet types 192-223 are where RTP's marker bit and payload
    // type would be: 64-95 without the marker bit.
    if (64..=95).contains(&(datagram[1] & 0x7f)) {
        return None;
    }
    let seq = u16::from_be_bytes([datagram[2], datagram[3]]);
    let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
    Some((ssrc, seq))
}
