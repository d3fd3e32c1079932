//! Relay data frames: the header a supernode relay will put in front of the
//! peers' own end-to-end QUIC packets (TURN ChannelData-style, RFC 8656
//! §12.4: a channel number, a length, the data; no re-encryption).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |1 0|    channel number (14)    |        payload length         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 payload (the peers' QUIC packet)              |
//! ```
//!
//! **Why channel numbers 0x8000–0xBFFF and not TURN's 0x4000–0x4FFF.** The
//! demultiplexer tells protocols apart by the first byte (RFC 9443). With
//! the fixed bit kept set, QUIC uses 64–127 (short headers: `0b01xxxxxx`,
//! the low five bits scrambled by header protection) and 192–255 (long
//! headers). TURN's channel range (first byte 64–79) therefore collides
//! with about a quarter of QUIC's 1-RTT packets, and a client sends both to
//! its supernode from the same address; RFC 9443 leaves that overlap to be
//! resolved by looking up bound channels, which still misroutes a QUIC
//! packet whose first two bytes happen to equal a bound channel. The range
//! 128–191 (`0b10xxxxxx`, long-header form with the fixed bit clear) is
//! one QUIC never sends once greasing is off, and peerline speaks no RTP on
//! this port, so frames there are unambiguous.
//!
//! Decoding is total: any byte string yields a frame or an error, and the
//! payload is borrowed (no allocation). The length must match exactly (no
//! padding: our own format, on UDP only).
//!
//! What a node does with the frames it receives, as a relay and as a peer
//! using one, is in [`table`].

pub mod table;

/// Lowest relay channel number (first byte 128).
pub const CHANNEL_MIN: u16 = 0x8000;
/// Highest relay channel number (first byte 191).
pub const CHANNEL_MAX: u16 = 0xBFFF;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 4;
/// Largest payload: a QUIC packet in the largest UDP payload quinn sends
/// by default (1472 bytes) less this header. Larger frames are refused.
pub const PAYLOAD_LEN_MAX: usize = 1_472 - HEADER_LEN;

/// A relay frame, borrowing its payload from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayFrame<'a> {
    pub channel: u16,
    pub payload: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelayFrameError {
    #[error("relay frame shorter than its {HEADER_LEN}-byte header")]
    Truncated,
    #[error("channel number {0:#06x} is outside 0x8000-0xbfff")]
    BadChannel(u16),
    #[error("relay frame says {declared} payload bytes but carries {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("relay payload of {0} bytes is over the {PAYLOAD_LEN_MAX}-byte bound")]
    TooLong(usize),
}

/// Whether `first_byte` starts a relay frame (128–191).
pub fn is_relay_first_byte(first_byte: u8) -> bool {
    first_byte & 0b1100_0000 == 0b1000_0000
}

/// Reads a frame from a whole datagram.
pub fn decode(datagram: &[u8]) -> Result<RelayFrame<'_>, RelayFrameError> {
    let [c0, c1, l0, l1, payload @ ..] = datagram else {
        return Err(RelayFrameError::Truncated);
    };
    let channel = u16::from_be_bytes([*c0, *c1]);
    if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) {
        return Err(RelayFrameError::BadChannel(channel));
    }
    let declared = usize::from(u16::from_be_bytes([*l0, *l1]));
    if declared > PAYLOAD_LEN_MAX {
        return Err(RelayFrameError::TooLong(declared));
    }
    if declared != payload.len() {
        return Err(RelayFrameError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    Ok(RelayFrame { channel, payload })
}

/// Appends the frame to `out`.
pub fn encode(frame: RelayFrame<'_>, out: &mut Vec<u8>) -> Result<(), RelayFrameError> {
    if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&frame.channel) {
        return Err(RelayFrameError::BadChannel(frame.channel));
    }
    let length = frame.payload.len();
    if length > PAYLOAD_LEN_MAX {
        return Err(RelayFrameError::TooLong(length));
    }
    out.reserve(HEADER_LEN + length);
    out.extend_from_slice(&frame.channel.to_be_bytes());
    // Fits: PAYLOAD_LEN_MAX < u16::MAX.
    out.extend_from_slice(&(length as u16).to_be_bytes());
    out.extend_from_slice(frame.payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_frame_round_trips() {
        let mut bytes = Vec::new();
        let frame = RelayFrame {
            channel: 0x8123,
            payload: b"quic packet",
        };
        encode(frame, &mut bytes).unwrap();
        assert_eq!(&bytes[..4], &[0x81, 0x23, 0, 11]);
        assert_eq!(decode(&bytes), Ok(frame));
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(decode(&[0x80, 0]), Err(RelayFrameError::Truncated));
        assert_eq!(
            decode(&[0x40, 0, 0, 0]),
            Err(RelayFrameError::BadChannel(0x4000))
        );
        assert_eq!(
            decode(&[0x80, 0, 0, 2, 1]),
            Err(RelayFrameError::LengthMismatch {
                declared: 2,
                actual: 1
            })
        );
        assert_eq!(
            decode(&[0x80, 0, 0, 0, 1]),
            Err(RelayFrameError::LengthMismatch {
                declared: 0,
                actual: 1
            })
        );
        assert_eq!(
            decode(&[0x80, 0, 0xff, 0xff]),
            Err(RelayFrameError::TooLong(0xffff))
        );
        let long = [0u8; PAYLOAD_LEN_MAX + 1];
        let mut out = Vec::new();
        let too_long = RelayFrame {
            channel: CHANNEL_MIN,
            payload: &long,
        };
        assert_eq!(
            encode(too_long, &mut out),
            Err(RelayFrameError::TooLong(PAYLOAD_LEN_MAX + 1))
        );
        let low = RelayFrame {
            channel: 0x7fff,
            payload: &[],
        };
        assert_eq!(
            encode(low, &mut out),
            Err(RelayFrameError::BadChannel(0x7fff))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn relay_first_bytes_are_128_to_191() {
        let relay: Vec<u8> = (0..=255u8).filter(|&b| is_relay_first_byte(b)).collect();
        assert_eq!(relay, (128..=191).collect::<Vec<u8>>());
    }

    proptest! {
        #[test]
        fn decoding_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            if let Ok(frame) = decode(&bytes) {
                // A decoded frame is exactly what encoding it gives back.
                let mut again = Vec::new();
                encode(frame, &mut again).unwrap();
                prop_assert_eq!(again, bytes);
            }
        }

        #[test]
        fn every_valid_frame_round_trips(
            channel in CHANNEL_MIN..=CHANNEL_MAX,
            payload in proptest::collection::vec(any::<u8>(), 0..=PAYLOAD_LEN_MAX),
        ) {
            let frame = RelayFrame { channel, payload: &payload };
            let mut bytes = Vec::new();
            encode(frame, &mut bytes).unwrap();
            prop_assert!(is_relay_first_byte(bytes[0]));
            prop_assert_eq!(decode(&bytes), Ok(frame));
        }
    }
}
