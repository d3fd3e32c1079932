//! STUN Binding (RFC 8489) on the node's port: the server side every node
//! runs (a Binding request gets a success response with the sender's
//! reflexive address in XOR-MAPPED-ADDRESS, and a FINGERPRINT), the client
//! side (a transaction with the RFC's retransmissions, bounded), and the
//! limits that keep an unauthenticated request from costing much:
//!
//! - **amplification**: a response larger than
//!   `response_to_request_ratio_max` (3, QUIC's anti-amplification factor)
//!   times the request is not sent. A minimal request (20 bytes) is always
//!   answered: the largest response is 52 bytes (IPv6 address).
//! - **rate**: a token bucket per source IP, in a table of at most
//!   `sources_max` entries with least-recently-used eviction (a flood of
//!   spoofed sources costs bounded memory; an evicted source comes back
//!   with a full bucket, so eviction never starves anyone), and one global
//!   bucket that bounds what all sources together can make the node send.
//!   A request refused by its source's bucket takes nothing from the global
//!   one, so one source's flood does not starve another.
//!
//! Messages are parsed and written with the `stun-types` crate. Only
//! Binding is served; requests with attributes that need comprehension are
//! answered all the same (Binding has none that change the answer), and
//! anything that does not parse is counted and dropped — never answered.

use crate::demux::{DemuxCounters, DemuxLimits};
use lru::LruCache;
use peerline_core::overload::TokenBucket;
use peerline_core::Instant;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;
use stun_types::attribute::XorMappedAddress;
use stun_types::message::{
    Message, MessageClass, MessageHeader, MessageType, MessageWrite, MessageWriteExt,
    MessageWriteVec, TransactionId, BINDING,
};

/// STUN's magic cookie (RFC 8489 §5), bytes 4–7 of every message.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// Whether `first_byte` starts a STUN message (0–3: the top two bits zero).
pub fn is_stun_first_byte(first_byte: u8) -> bool {
    first_byte < 4
}

/// A parsed message: exact length, magic cookie, valid FINGERPRINT if any.
fn parse(datagram: &[u8]) -> Option<Message<'_>> {
    // The classifier's range (RFC 9443: 0–3), even though a STUN type
    // could start with up to 63: what the port calls STUN and what this
    // parser accepts must agree.
    if datagram.len() < MessageHeader::LENGTH
        || !is_stun_first_byte(datagram[0])
        || datagram[4..8] != MAGIC_COOKIE
    {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if MessageHeader::LENGTH + declared != datagram.len() || declared % 4 != 0 {
        return None;
    }
    Message::from_bytes(datagram).ok()
}

/// What a node does with one STUN datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StunInput {
    /// A Binding request: send `response` back to the requester.
    Answer(Vec<u8>),
    /// A Binding success response to a transaction of ours.
    Mapped {
        transaction: u128,
        reflexive: SocketAddr,
    },
    /// A Binding error response to a transaction of ours.
    Refused { transaction: u128 },
    /// Well-formed but nothing to do (an indication, another method).
    Ignored,
    /// A request whose answer would exceed the amplification bound.
    TooLarge,
    /// Does not parse, or a response without a usable address.
    Malformed,
}

/// Reads one STUN datagram from `from`; `ratio_max` bounds the answer's
/// size against the request's. Pure: no I/O, no clock.
pub fn handle_datagram(datagram: &[u8], from: SocketAddr, ratio_max: usize) -> StunInput {
    let Some(message) = parse(datagram) else {
        return StunInput::Malformed;
    };
    if !message.has_method(BINDING) {
        return StunInput::Ignored;
    }
    let transaction = message.transaction_id();
    match message.class() {
        MessageClass::Request => {
            let response = binding_success(&message, from);
            if response.len() > datagram.len().saturating_mul(ratio_max) {
                StunInput::TooLarge
            } else {
                StunInput::Answer(response)
            }
        }
        MessageClass::Success => match message.attribute::<XorMappedAddress>() {
            Ok(mapped) => StunInput::Mapped {
                transaction: transaction.into(),
                reflexive: mapped.addr(transaction),
            },
            Err(_) => StunInput::Malformed,
        },
        MessageClass::Error => StunInput::Refused {
            transaction: transaction.into(),
        },
        MessageClass::Indication => StunInput::Ignored,
    }
}

fn binding_success(request: &Message<'_>, from: SocketAddr) -> Vec<u8> {
    let mut response = Message::builder_success(request, MessageWriteVec::with_capacity(52));
    let mapped = XorMappedAddress::new(from, request.transaction_id());
    // Neither can fail on a fresh message: each attribute is added once.
    let added = response.add_attribute(&mapped).is_ok() && response.add_fingerprint().is_ok();
    debug_assert!(added, "a fresh Binding response takes both attributes");
    response.finish()
}

/// A new Binding request and its transaction id.
pub fn binding_request() -> (u128, Vec<u8>) {
    let transaction = TransactionId::generate();
    let mut request = Message::builder(
        MessageType::from_class_method(MessageClass::Request, BINDING),
        transaction,
        MessageWriteVec::with_capacity(28),
    );
    let added = request.add_fingerprint().is_ok();
    debug_assert!(added, "a fresh request takes a fingerprint");
    (transaction.into(), request.finish())
}

/// Retransmission of a Binding request (RFC 8489 §6.2.1): sent at 0, then
/// after `rto_initial`, doubling each time, `requests_max` times in all;
/// after the last one the client waits `last_wait_rto_multiple ×
/// rto_initial` and gives up. The defaults are the RFC's (500 ms, 7, 16):
/// a transaction fails after 39.5 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StunRetransmit {
    pub rto_initial: Duration,
    pub requests_max: u32,
    pub last_wait_rto_multiple: u32,
}

impl Default for StunRetransmit {
    fn default() -> Self {
        StunRetransmit {
            rto_initial: Duration::from_millis(500),
            requests_max: 7,
            last_wait_rto_multiple: 16,
        }
    }
}

impl StunRetransmit {
    /// How long to wait after each request before the next (or, after
    /// the last, before giving up). At least one request, at most 16.
    pub fn waits(&self) -> Vec<Duration> {
        let requests = self.requests_max.clamp(1, 16);
        let mut waits = Vec::with_capacity(requests as usize);
        let mut rto = self.rto_initial;
        for _ in 1..requests {
            waits.push(rto);
            rto = rto.saturating_mul(2);
        }
        waits.push(self.rto_initial.saturating_mul(self.last_wait_rto_multiple));
        waits
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StunError {
    #[error("no STUN answer from {server} after {requests} requests")]
    Timeout { server: SocketAddr, requests: usize },
    #[error("{0} answered the Binding request with an error")]
    Refused(SocketAddr),
    #[error("too many STUN transactions in flight; try again later")]
    Busy,
    #[error("the node is no longer running")]
    Gone,
    #[error("could not send to {server}: {reason}")]
    Send { server: SocketAddr, reason: String },
}

/// Learns this socket's reflexive address from a STUN server (any RFC 8489
/// server; a peerline node is one). For a plain socket that nothing else
/// reads: other datagrams arriving meanwhile are discarded. A running node
/// asks through [`crate::Control::stun_binding`] instead.
pub async fn stun_binding(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
    retransmit: StunRetransmit,
) -> Result<SocketAddr, StunError> {
    let (transaction, request) = binding_request();
    let waits = retransmit.waits();
    let mut buffer = vec![0u8; 1_500];
    for wait in &waits {
        socket
            .send_to(&request, server)
            .await
            .map_err(|error| StunError::Send {
                server,
                reason: error.to_string(),
            })?;
        let deadline = tokio::time::Instant::now() + *wait;
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buffer)).await;
            let Ok(Ok((length, from))) = received else {
                break;
            };
            if from != server {
                continue;
            }
            match handle_datagram(&buffer[..length], from, 0) {
                StunInput::Mapped {
                    transaction: id,
                    reflexive,
                } if id == transaction => return Ok(reflexive),
                StunInput::Refused { transaction: id } if id == transaction => {
                    return Err(StunError::Refused(server))
                }
                _ => {}
            }
        }
    }
    Err(StunError::Timeout {
        server,
        requests: waits.len(),
    })
}

/// Per-source and global token buckets for STUN requests.
#[derive(Debug)]
pub struct SourceLimiter {
    sources: LruCache<IpAddr, TokenBucket>,
    global: TokenBucket,
    rate_per_s: u64,
    burst: u64,
}

impl SourceLimiter {
    pub fn new(limits: &DemuxLimits, now: Instant) -> SourceLimiter {
        let capacity =
            NonZeroUsize::new(limits.stun_sources_max.max(1)).unwrap_or(NonZeroUsize::MIN);
        SourceLimiter {
            sources: LruCache::new(capacity),
            global: TokenBucket::new(limits.stun_global_rate_per_s, limits.stun_global_burst, now),
            rate_per_s: limits.stun_source_rate_per_s,
            burst: limits.stun_source_burst,
        }
    }

    /// Whether a request from `source` may be answered now.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let (rate, burst) = (self.rate_per_s, self.burst);
        let bucket = self
            .sources
            .get_or_insert_mut(source, || TokenBucket::new(rate, burst, now));
        if bucket.available(now) == 0 {
            return false;
        }
        if !self.global.try_take(now, 1, 0) {
            return false;
        }
        bucket.try_take(now, 1, 0)
    }

    /// Sources in the table (at most `stun_sources_max`).
    pub fn sources_len(&self) -> usize {
        self.sources.len()
    }
}

/// Answers or drops one STUN request and counts the outcome; returns the
/// response to send, if any.
pub(crate) fn serve(
    datagram: &[u8],
    from: SocketAddr,
    now: Instant,
    limiter: &mut SourceLimiter,
    limits: &DemuxLimits,
    stats: &DemuxCounters,
) -> Option<StunInput> {
    let input = handle_datagram(datagram, from, limits.stun_response_to_request_ratio_max);
    match input {
        StunInput::Answer(_) => {
            if limiter.allow(from.ip(), now) {
                return Some(input);
            }
            DemuxCounters::bump(&stats.stun_rate_limited);
            None
        }
        StunInput::TooLarge => {
            DemuxCounters::bump(&stats.stun_too_large);
            None
        }
        StunInput::Malformed => {
            DemuxCounters::bump(&stats.stun_malformed);
            None
        }
        StunInput::Ignored => {
            DemuxCounters::bump(&stats.stun_ignored);
            None
        }
        StunInput::Mapped { .. } | StunInput::Refused { .. } => Some(input),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(192, 0, 2, 7), 40_000))
    }

    fn v6() -> SocketAddr {
        SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9), 40_001))
    }

    fn minimal_request() -> Vec<u8> {
        Message::builder_request(BINDING, MessageWriteVec::new()).finish()
    }

    #[test]
    fn a_binding_request_is_answered_with_the_reflexive_address() {
        for from in [v4(), v6()] {
            let (transaction, request) = binding_request();
            let StunInput::Answer(response) = handle_datagram(&request, from, 3) else {
                panic!("a Binding request is answered");
            };
            let parsed = Message::from_bytes(&response).unwrap();
            use stun_types::attribute::{AttributeStaticType, Fingerprint};
            assert!(parsed.has_attribute(Fingerprint::TYPE));
            assert_eq!(
                handle_datagram(&response, from, 3),
                StunInput::Mapped {
                    transaction,
                    reflexive: from
                }
            );
        }
    }

    #[test]
    fn a_minimal_request_is_answered_within_three_times_its_size() {
        let request = minimal_request();
        assert_eq!(request.len(), 20);
        for from in [v4(), v6()] {
            let StunInput::Answer(response) = handle_datagram(&request, from, 3) else {
                panic!("answered");
            };
            assert!(response.len() <= 3 * request.len(), "{}", response.len());
        }
    }

    #[test]
    fn an_answer_over_the_ratio_is_dropped() {
        // With a ratio of 2 a 20-byte request may get 40 bytes: enough for
        // an IPv4 answer (40), not an IPv6 one (52).
        let request = minimal_request();
        assert!(matches!(
            handle_datagram(&request, v4(), 2),
            StunInput::Answer(_)
        ));
        assert_eq!(handle_datagram(&request, v6(), 2), StunInput::TooLarge);
        assert_eq!(handle_datagram(&request, v4(), 1), StunInput::TooLarge);
    }

    #[test]
    fn malformed_messages_are_refused() {
        let request = minimal_request();
        // Truncated, trailing bytes, wrong cookie, bad fingerprint.
        assert_eq!(
            handle_datagram(&request[..19], v4(), 3),
            StunInput::Malformed
        );
        let mut longer = request.clone();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(handle_datagram(&longer, v4(), 3), StunInput::Malformed);
        let mut cookie = request.clone();
        cookie[4] ^= 1;
        assert_eq!(handle_datagram(&cookie, v4(), 3), StunInput::Malformed);
        let (_, mut fingerprinted) = binding_request();
        let last = fingerprinted.len() - 1;
        fingerprinted[last] ^= 1;
        assert_eq!(
            handle_datagram(&fingerprinted, v4(), 3),
            StunInput::Malformed
        );
        assert_eq!(handle_datagram(&[], v4(), 3), StunInput::Malformed);
        // A first byte outside 0–3 (found by the fuzzer: 0x10 parses as a
        // STUN type) is not STUN on this port.
        let mut type_0x1001 = request.clone();
        type_0x1001[0] = 0x10;
        assert_eq!(handle_datagram(&type_0x1001, v4(), 3), StunInput::Malformed);
    }

    #[test]
    fn the_rfc_schedule_sends_seven_requests_and_gives_up_after_39_5_s() {
        let waits = StunRetransmit::default().waits();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1_000, 2_000, 4_000, 8_000, 16_000, 8_000]);
        assert_eq!(ms.iter().sum::<u128>(), 39_500);
        let unbounded = StunRetransmit {
            requests_max: 1_000,
            ..StunRetransmit::default()
        };
        assert_eq!(unbounded.waits().len(), 16);
    }

    fn limits() -> DemuxLimits {
        DemuxLimits {
            stun_sources_max: 64,
            stun_source_rate_per_s: 10,
            stun_source_burst: 5,
            stun_global_rate_per_s: 1_000,
            stun_global_burst: 100,
            ..DemuxLimits::default()
        }
    }

    fn ip(index: u32) -> IpAddr {
        IpAddr::from(Ipv4Addr::from(0x0a00_0000_u32.wrapping_add(index)))
    }

    #[test]
    fn a_flooding_source_is_limited_and_does_not_starve_another() {
        let mut limiter = SourceLimiter::new(&limits(), Instant::ZERO);
        let now = Instant::from_ms(1);
        let allowed = (0..1_000).filter(|_| limiter.allow(ip(1), now)).count();
        assert_eq!(allowed, 5, "the burst, then nothing until tokens flow in");
        assert!(limiter.allow(ip(2), now), "another source is still served");
        // Tokens flow back in at the source's rate.
        assert!(limiter.allow(ip(1), Instant::from_ms(101)));
        assert!(!limiter.allow(ip(1), Instant::from_ms(101)));
    }

    #[test]
    fn a_spoofed_source_flood_keeps_the_table_bounded() {
        let mut limiter = SourceLimiter::new(&limits(), Instant::ZERO);
        let mut now = Instant::ZERO;
        for index in 0..100_000 {
            // 1 ms apart: the global bucket (1,000/s) keeps up.
            now = now.add_ms(1);
            limiter.allow(ip(index), now);
            assert!(limiter.sources_len() <= 64);
        }
        assert_eq!(limiter.sources_len(), 64);
        // A legitimate source in the middle of it is answered.
        assert!(limiter.allow(ip(1_000_000), now.add_ms(1)));
    }

    #[test]
    fn the_global_bucket_bounds_all_sources_together() {
        let mut limiter = SourceLimiter::new(&limits(), Instant::ZERO);
        let now = Instant::from_ms(1);
        let allowed = (0..1_000).filter(|&i| limiter.allow(ip(i), now)).count();
        assert_eq!(allowed, 100);
    }

    proptest! {
        #[test]
        fn any_bytes_are_handled_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            ratio in 0usize..5,
        ) {
            if let StunInput::Answer(response) = handle_datagram(&bytes, v6(), ratio) {
                prop_assert!(response.len() <= bytes.len() * ratio);
            }
        }

        #[test]
        fn a_mutated_request_never_panics_and_answers_stay_bounded(
            flips in proptest::collection::vec((0usize..28, any::<u8>()), 0..6),
        ) {
            let (_, mut request) = binding_request();
            for (index, value) in flips {
                request[index] = value;
            }
            if let StunInput::Answer(response) = handle_datagram(&request, v4(), 3) {
                prop_assert!(response.len() <= 3 * request.len());
            }
        }
    }
}
