//! The relay's wire format: the control messages (length-prefixed JSON on
//! one bidirectional stream per connection), the media datagram's header,
//! and the pinned-certificate check.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::engine::{RelayedPacket, TrackInfo, TrackRef};
use crate::ids::{ParticipantId, RoomId};

/// Bytes before the payload in a media datagram.
pub(super) const HEADER: usize = 19;
/// Largest control message.
const MAX_CONTROL: u32 = 1 << 20;

/// The control messages of a relay connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "message", rename_all = "snake_case")]
pub(super) enum Control {
    /// First from the dialer: who it is (its own relay address) and the
    /// peer's token.
    Hello {
        from: SocketAddr,
        token: Option<String>,
    },
    /// A track of the dialer; its datagrams carry `number`.
    Track {
        number: u32,
        room: RoomId,
        publisher: ParticipantId,
        mid: String,
        info: TrackInfo,
    },
    /// The track `number` has ended.
    Withdraw { number: u32 },
    /// What the peer needs of one of the dialer's tracks.
    Needs {
        room: RoomId,
        publisher: ParticipantId,
        mid: String,
        layers: [bool; 3],
    },
    /// The peer wants a keyframe of a layer of one of the dialer's tracks.
    Keyframe {
        room: RoomId,
        publisher: ParticipantId,
        mid: String,
        layer: u8,
    },
}

pub(super) async fn write_controls(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Control>) {
    while let Some(message) = rx.recv().await {
        let Ok(body) = serde_json::to_vec(&message) else {
            continue;
        };
        let Ok(len) = u32::try_from(body.len()) else {
            continue;
        };
        if send.write_all(&len.to_be_bytes()).await.is_err() || send.write_all(&body).await.is_err()
        {
            return;
        }
    }
    let _ = send.finish();
}

pub(super) async fn read_control(recv: &mut quinn::RecvStream) -> Result<Control, String> {
    let len = recv.read_u32().await.map_err(|e| e.to_string())?;
    if len > MAX_CONTROL {
        return Err(format!("control message of {len} bytes"));
    }
    let mut body = vec![0; len as usize];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("bad control message: {e}"))
}

/// SHA-256 of a certificate, lower-case hex.
pub(super) fn fingerprint(cert: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a media datagram into `buf`.
pub(super) fn encode(buf: &mut BytesMut, number: u32, p: &RelayedPacket) {
    buf.reserve(HEADER + p.payload.len());
    buf.put_u32(number);
    buf.put_u8(p.layer);
    let flags = u8::from(p.marker)
        | u8::from(p.audio_level.is_some()) << 1
        | u8::from(p.voice_activity.is_some()) << 2
        | u8::from(p.voice_activity == Some(true)) << 3;
    buf.put_u8(flags);
    buf.put_i8(p.audio_level.unwrap_or(0));
    buf.put_u64(p.seq);
    buf.put_u32(p.timestamp);
    buf.put_slice(&p.payload);
}

/// Reads a media datagram: its track number, and the packet once the
/// track is known.
pub(super) fn decode(mut d: Bytes) -> Option<(u32, impl FnOnce(TrackRef) -> RelayedPacket)> {
    if d.len() < HEADER {
        return None;
    }
    let number = d.get_u32();
    let layer = d.get_u8();
    let flags = d.get_u8();
    let level = d.get_i8();
    let seq = d.get_u64();
    let timestamp = d.get_u32();
    if layer > 2 {
        return None;
    }
    Some((number, move |track| RelayedPacket {
        track,
        layer,
        seq,
        timestamp,
        marker: flags & 1 != 0,
        audio_level: (flags & 2 != 0).then_some(level),
        voice_activity: (flags & 4 != 0).then_some(flags & 8 != 0),
        payload: Arc::from(&d[..]),
    }))
}

/// Accepts exactly the certificate whose fingerprint signalling gave.
#[derive(Debug)]
pub(super) struct Pinned {
    pub(super) fingerprint: String,
    pub(super) provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "relay certificate does not match its fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only (QUIC).
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_media_datagram_reads_back_as_written() {
        let packet = RelayedPacket {
            track: TrackRef {
                room: RoomId::from("r"),
                publisher: ParticipantId(9),
                mid: "0".into(),
            },
            layer: 2,
            seq: 70_000,
            timestamp: 123_456,
            marker: true,
            audio_level: Some(-30),
            voice_activity: Some(false),
            payload: Arc::from(&[1u8, 2, 3][..]),
        };
        let mut buf = BytesMut::new();
        encode(&mut buf, 77, &packet);
        assert_eq!(buf.len(), HEADER + 3);
        let (number, make) = decode(buf.freeze()).unwrap();
        assert_eq!(number, 77);
        let back = make(packet.track.clone());
        assert_eq!(back.layer, 2);
        assert_eq!(back.seq, 70_000);
        assert_eq!(back.timestamp, 123_456);
        assert!(back.marker);
        assert_eq!(back.audio_level, Some(-30));
        assert_eq!(back.voice_activity, Some(false));
        assert_eq!(&back.payload[..], &[1, 2, 3]);
        assert!(decode(Bytes::from_static(&[0; HEADER - 1])).is_none());
        let mut bad = BytesMut::new();
        encode(&mut bad, 1, &RelayedPacket { layer: 3, ..packet });
        assert!(decode(bad.freeze()).is_none(), "layer out of range");
    }
}
