//! One UDP port, three protocols: the node's socket as quinn sees it, with
//! every received datagram sorted by its first byte (RFC 9443):
//!
//! | first byte | what                              | goes to                      |
//! |-----------:|-----------------------------------|------------------------------|
//! | 0–3        | STUN (RFC 8489)                   | answered or matched here     |
//! | 64–127     | QUIC short header (fixed bit set) | quinn                        |
//! | 128–191    | relay frame ([`crate::relay`])    | forwarded, or to quinn       |
//! | 192–255    | QUIC long header (fixed bit set)  | quinn                        |
//! | 4–63       | nothing of ours                   | dropped, counted             |
//!
//! This holds because QUIC's fixed bit (0x40) is never greased on our
//! endpoints (`quic::endpoint` turns greasing off, so we do not invite
//! peers to grease towards us, and peerline peers never ask us to). See
//! `relay.rs` for why relay frames use 128–191 rather than TURN's 64–79.
//!
//! The sorting happens inside [`DemuxSocket::poll_recv`], on quinn's
//! endpoint task: a datagram that is not QUIC is handled there (STUN
//! answers are a parse, a token-bucket check and a non-blocking send;
//! a relay frame on a bound channel is sent on with its channel number
//! rewritten, one on a relayed path of this node's own is unwrapped and
//! queued for quinn, see [`crate::relay::table`]) and then hidden from quinn —
//! its first byte is zeroed, which quinn drops at once as "fixed bit
//! unset", the trick iroh's magicsock uses for GRO batches that mix its
//! packets with QUIC's; a batch with no QUIC left is handed on empty.
//!
//! No protocol decisions live here: the STUN server is stateless (it
//! reflects the sender's address), client transactions only retransmit as
//! RFC 8489 says, and what a reflexive address means is for the core.

use crate::clock::Clock;
use crate::relay::table::{self, BindError, FrameFate, RelayLimits, RelayTable};
use crate::relay::{self, HEADER_LEN};
use crate::stun::{self, SourceLimiter, StunError, StunInput, StunRetransmit};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use tokio::sync::oneshot;

/// Which protocol a datagram belongs to, by its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramKind {
    Stun,
    Quic,
    Relay,
    /// Empty, or a first byte none of our protocols uses.
    Unknown,
}

/// Sorts a datagram by its first byte; total over all inputs.
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        None => DatagramKind::Unknown,
        Some(&first) if stun::is_stun_first_byte(first) => DatagramKind::Stun,
        Some(&first) if relay::is_relay_first_byte(first) => DatagramKind::Relay,
        // The fixed bit: 64–127 and 192–255.
        Some(&first) if first & 0x40 != 0 => DatagramKind::Quic,
        Some(_) => DatagramKind::Unknown,
    }
}

/// Bounds on the unauthenticated traffic the socket handles itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemuxLimits {
    /// A STUN answer is at most this many times its request's size, or it
    /// is not sent (QUIC's anti-amplification factor).
    pub stun_response_to_request_ratio_max: usize,
    /// Source IPs with a token bucket at once (least recently seen evicted).
    pub stun_sources_max: usize,
    pub stun_source_rate_per_s: u64,
    pub stun_source_burst: u64,
    /// All STUN answers together.
    pub stun_global_rate_per_s: u64,
    pub stun_global_burst: u64,
    /// This node's own Binding transactions in flight at once.
    pub stun_transactions_max: usize,
    pub stun_retransmit: StunRetransmit,
    /// Frames of this node's relayed paths unwrapped and waiting for quinn.
    pub relay_queue_len_max: usize,
    pub relay: RelayLimits,
}

impl Default for DemuxLimits {
    fn default() -> Self {
        DemuxLimits {
            stun_response_to_request_ratio_max: 3,
            stun_sources_max: 4_096,
            // A client asks a few supernodes once per NAT-binding refresh
            // (tens of seconds); a burst covers retransmissions and restarts.
            stun_source_rate_per_s: 5,
            stun_source_burst: 20,
            // At most ~2,000 × 52 bytes/s ≈ 0.8 Mbit/s reflected.
            stun_global_rate_per_s: 2_000,
            stun_global_burst: 500,
            stun_transactions_max: 32,
            stun_retransmit: StunRetransmit::default(),
            relay_queue_len_max: 1_024,
            relay: RelayLimits::default(),
        }
    }
}

/// What the demultiplexer counted (datagrams; a GRO batch counts each).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DemuxStats {
    pub quic_datagrams: u64,
    /// Binding requests answered.
    pub stun_answered: u64,
    /// Binding requests refused by a token bucket.
    pub stun_rate_limited: u64,
    /// Binding requests whose answer would break the amplification bound.
    pub stun_too_large: u64,
    /// STUN datagrams that did not parse (or a response with no address).
    pub stun_malformed: u64,
    /// Well-formed STUN that asks nothing of us (indications, other methods).
    pub stun_ignored: u64,
    /// Answers the socket would not take at that moment.
    pub stun_send_failed: u64,
    /// Responses to this node's own transactions.
    pub stun_responses_matched: u64,
    /// Responses to no transaction of ours (late, spoofed, or from elsewhere).
    pub stun_responses_unmatched: u64,
    /// Relay frames sent on to a bound channel's peer (as a relay).
    pub relay_frames_forwarded: u64,
    pub relay_bytes_forwarded: u64,
    pub relay_frames_malformed: u64,
    /// Relay frames on no bound channel and no path of ours.
    pub relay_frames_unbound: u64,
    /// Relay frames over their binding's byte rate.
    pub relay_frames_over_rate: u64,
    /// Forwarded or wrapped frames the socket would not take at that moment.
    pub relay_frames_send_failed: u64,
    /// Frames of our own relayed paths handed to quinn.
    pub relay_frames_delivered: u64,
    /// Frames of our own relayed paths dropped: quinn's queue was full.
    pub relay_frames_dropped: u64,
    /// QUIC packets this node sent through a relay, wrapped in frames.
    pub relay_frames_sent: u64,
    /// QUIC packets for a virtual address with no path, or too long to wrap.
    pub relay_frames_unsendable: u64,
    /// Empty datagrams and first bytes of no protocol of ours.
    pub unknown_dropped: u64,
}

#[derive(Debug, Default)]
pub(crate) struct DemuxCounters {
    pub(crate) quic_datagrams: AtomicU64,
    pub(crate) stun_answered: AtomicU64,
    pub(crate) stun_rate_limited: AtomicU64,
    pub(crate) stun_too_large: AtomicU64,
    pub(crate) stun_malformed: AtomicU64,
    pub(crate) stun_ignored: AtomicU64,
    pub(crate) stun_send_failed: AtomicU64,
    pub(crate) stun_responses_matched: AtomicU64,
    pub(crate) stun_responses_unmatched: AtomicU64,
    pub(crate) relay_frames_forwarded: AtomicU64,
    pub(crate) relay_bytes_forwarded: AtomicU64,
    pub(crate) relay_frames_malformed: AtomicU64,
    pub(crate) relay_frames_unbound: AtomicU64,
    pub(crate) relay_frames_over_rate: AtomicU64,
    pub(crate) relay_frames_send_failed: AtomicU64,
    pub(crate) relay_frames_delivered: AtomicU64,
    pub(crate) relay_frames_dropped: AtomicU64,
    pub(crate) relay_frames_sent: AtomicU64,
    pub(crate) relay_frames_unsendable: AtomicU64,
    pub(crate) unknown_dropped: AtomicU64,
}

impl DemuxCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DemuxStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DemuxStats {
            quic_datagrams: read(&self.quic_datagrams),
            stun_answered: read(&self.stun_answered),
            stun_rate_limited: read(&self.stun_rate_limited),
            stun_too_large: read(&self.stun_too_large),
            stun_malformed: read(&self.stun_malformed),
            stun_ignored: read(&self.stun_ignored),
            stun_send_failed: read(&self.stun_send_failed),
            stun_responses_matched: read(&self.stun_responses_matched),
            stun_responses_unmatched: read(&self.stun_responses_unmatched),
            relay_frames_forwarded: read(&self.relay_frames_forwarded),
            relay_bytes_forwarded: read(&self.relay_bytes_forwarded),
            relay_frames_malformed: read(&self.relay_frames_malformed),
            relay_frames_unbound: read(&self.relay_frames_unbound),
            relay_frames_over_rate: read(&self.relay_frames_over_rate),
            relay_frames_send_failed: read(&self.relay_frames_send_failed),
            relay_frames_delivered: read(&self.relay_frames_delivered),
            relay_frames_dropped: read(&self.relay_frames_dropped),
            relay_frames_sent: read(&self.relay_frames_sent),
            relay_frames_unsendable: read(&self.relay_frames_unsendable),
            unknown_dropped: read(&self.unknown_dropped),
        }
    }
}

/// A Binding transaction of this node waiting for its answer.
struct Pending {
    server: SocketAddr,
    reply: oneshot::Sender<Result<SocketAddr, StunError>>,
}

struct Shared {
    inner: Arc<dyn AsyncUdpSocket>,
    limits: DemuxLimits,
    counters: DemuxCounters,
    clock: Clock,
    limiter: Mutex<SourceLimiter>,
    pending: Mutex<HashMap<u128, Pending>>,
    relay: Mutex<RelayTable>,
    /// Unwrapped frames of our relayed paths: (virtual source, payload).
    delivered: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    /// quinn sees every peer in the socket's family (v4-mapped on IPv6).
    ipv6_socket: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

use table::canonical;

impl Shared {
    /// Handles the non-QUIC datagrams of one received batch and hides
    /// them from quinn.
    fn sort(&self, received: &mut [u8], meta: &mut RecvMeta) {
        if received.is_empty() {
            DemuxCounters::bump(&self.counters.unknown_dropped);
            return;
        }
        let mut quic_left = false;
        for segment in received.chunks_mut(meta.stride.max(1)) {
            match classify(segment) {
                DatagramKind::Quic => {
                    DemuxCounters::bump(&self.counters.quic_datagrams);
                    quic_left = true;
                    continue;
                }
                DatagramKind::Stun => self.on_stun(segment, meta.addr, meta.dst_ip),
                DatagramKind::Relay => self.on_relay(segment, meta.addr, meta.dst_ip),
                DatagramKind::Unknown => DemuxCounters::bump(&self.counters.unknown_dropped),
            }
            // Fixed bit unset: quinn (greasing off) drops it unread.
            segment[0] = 0;
        }
        if !quic_left {
            meta.len = 0;
        }
    }

    fn on_stun(&self, datagram: &[u8], from: SocketAddr, local_ip: Option<IpAddr>) {
        let now = self.clock.now().instant;
        let input = {
            let mut limiter = lock(&self.limiter);
            stun::serve(
                datagram,
                canonical(from),
                now,
                &mut limiter,
                &self.limits,
                &self.counters,
            )
        };
        match input {
            Some(StunInput::Answer(response)) => {
                let sent = self.inner.try_send(&Transmit {
                    destination: from,
                    ecn: None,
                    contents: &response,
                    segment_size: None,
                    src_ip: local_ip,
                });
                let counter = match sent {
                    Ok(()) => &self.counters.stun_answered,
                    Err(_) => &self.counters.stun_send_failed,
                };
                DemuxCounters::bump(counter);
            }
            Some(StunInput::Mapped {
                transaction,
                reflexive,
            }) => self.complete(transaction, from, Ok(reflexive)),
            Some(StunInput::Refused { transaction }) => {
                self.complete(transaction, from, Err(StunError::Refused(canonical(from))))
            }
            _ => {}
        }
    }

    /// Hands an answer to the transaction that waits for it, if it came
    /// from the server that transaction asked.
    fn complete(
        &self,
        transaction: u128,
        from: SocketAddr,
        outcome: Result<SocketAddr, StunError>,
    ) {
        let mut pending = lock(&self.pending);
        let matches = pending
            .get(&transaction)
            .is_some_and(|waiting| waiting.server == canonical(from));
        let waiting = if matches {
            pending.remove(&transaction)
        } else {
            None
        };
        drop(pending);
        match waiting {
            Some(waiting) => {
                DemuxCounters::bump(&self.counters.stun_responses_matched);
                let _ = waiting.reply.send(outcome);
            }
            None => DemuxCounters::bump(&self.counters.stun_responses_unmatched),
        }
    }

    fn on_relay(&self, datagram: &mut [u8], from: SocketAddr, local_ip: Option<IpAddr>) {
        let channel = match relay::decode(datagram) {
            Ok(frame) => frame.channel,
            Err(_) => {
                DemuxCounters::bump(&self.counters.relay_frames_malformed);
                return;
            }
        };
        let now = self.clock.now().instant;
        let fate = lock(&self.relay).receive(from, channel, datagram.len(), now);
        match fate {
            FrameFate::Forward { to, to_channel } => {
                // Only the channel changes: the length and payload stay.
                datagram[..2].copy_from_slice(&to_channel.to_be_bytes());
                let sent = self.inner.try_send(&Transmit {
                    destination: self.towards(to),
                    ecn: None,
                    contents: datagram,
                    segment_size: None,
                    src_ip: local_ip,
                });
                match sent {
                    Ok(()) => {
                        DemuxCounters::bump(&self.counters.relay_frames_forwarded);
                        self.counters
                            .relay_bytes_forwarded
                            .fetch_add(datagram.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => DemuxCounters::bump(&self.counters.relay_frames_send_failed),
                }
            }
            FrameFate::Deliver { from } => {
                let mut delivered = lock(&self.delivered);
                if delivered.len() < self.limits.relay_queue_len_max {
                    delivered.push_back((self.towards(from), datagram[HEADER_LEN..].to_vec()));
                    DemuxCounters::bump(&self.counters.relay_frames_delivered);
                } else {
                    DemuxCounters::bump(&self.counters.relay_frames_dropped);
                }
            }
            FrameFate::Unbound => DemuxCounters::bump(&self.counters.relay_frames_unbound),
            FrameFate::OverRate => DemuxCounters::bump(&self.counters.relay_frames_over_rate),
        }
    }

    /// `addr` in the socket's family.
    fn towards(&self, addr: SocketAddr) -> SocketAddr {
        match addr.ip() {
            IpAddr::V4(v4) if self.ipv6_socket => {
                SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port())
            }
            _ => addr,
        }
    }

    /// Hands quinn the unwrapped frames waiting, as many as `bufs` holds.
    fn take_delivered(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut delivered = lock(&self.delivered);
        let mut count = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            // quinn's buffers hold its largest datagram; a payload over
            // that is one quinn would refuse anyway. Skipping it must not
            // leave this slot empty (quinn reads the first `count`).
            let fitting = loop {
                match delivered.pop_front() {
                    Some((_, payload)) if payload.len() > buf.len() => {
                        DemuxCounters::bump(&self.counters.relay_frames_dropped)
                    }
                    other => break other,
                }
            };
            let Some((from, payload)) = fitting else {
                break;
            };
            buf[..payload.len()].copy_from_slice(&payload);
            *meta = RecvMeta {
                addr: from,
                len: payload.len(),
                stride: payload.len(),
                ecn: None,
                dst_ip: None,
            };
            count += 1;
        }
        count
    }

    /// Sends what quinn addressed to a relayed path's virtual address as
    /// frames to its relay (each GSO segment its own frame).
    fn send_relayed(&self, transmit: &Transmit) -> io::Result<()> {
        let Some((relay_addr, channel)) = lock(&self.relay).path(&transmit.destination) else {
            DemuxCounters::bump(&self.counters.relay_frames_unsendable);
            return Ok(());
        };
        let segment_size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        let mut frame = Vec::with_capacity(HEADER_LEN + segment_size);
        for segment in transmit.contents.chunks(segment_size) {
            if table::frame_into(channel, segment, &mut frame).is_err() {
                DemuxCounters::bump(&self.counters.relay_frames_unsendable);
                continue;
            }
            self.inner.try_send(&Transmit {
                destination: self.towards(relay_addr),
                ecn: transmit.ecn,
                contents: &frame,
                segment_size: None,
                src_ip: transmit.src_ip,
            })?;
            DemuxCounters::bump(&self.counters.relay_frames_sent);
        }
        Ok(())
    }
}

/// The node's UDP socket as quinn sees it: only QUIC gets through.
pub struct DemuxSocket {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("DemuxSocket")
            .field("inner", &self.shared.inner)
            .finish_non_exhaustive()
    }
}

impl DemuxSocket {
    /// Wraps `inner` (a socket from quinn's runtime). Must be called
    /// inside a tokio runtime.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, limits: DemuxLimits) -> (DemuxSocket, DemuxHandle) {
        let clock = Clock::start();
        let ipv6_socket = inner.local_addr().is_ok_and(|addr| addr.is_ipv6());
        let shared = Arc::new(Shared {
            inner,
            limits,
            counters: DemuxCounters::default(),
            clock,
            limiter: Mutex::new(SourceLimiter::new(&limits, clock.now().instant)),
            pending: Mutex::new(HashMap::new()),
            relay: Mutex::new(RelayTable::new(limits.relay)),
            delivered: Mutex::new(VecDeque::new()),
            ipv6_socket,
        });
        (
            DemuxSocket {
                shared: shared.clone(),
            },
            DemuxHandle { shared },
        )
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.shared.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if table::is_virtual(&transmit.destination) {
            return self.shared.send_relayed(transmit);
        }
        self.shared.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let delivered = self.shared.take_delivered(bufs, meta);
        if delivered > 0 {
            return Poll::Ready(Ok(delivered));
        }
        let count = ready!(self.shared.inner.poll_recv(cx, bufs, meta))?;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()).take(count) {
            let length = meta.len.min(buf.len());
            self.shared.sort(&mut buf[..length], meta);
        }
        Poll::Ready(Ok(count))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.shared.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.shared.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.shared.inner.may_fragment()
    }
}

/// The driver's side of the socket: counters, and this node's own STUN
/// Binding transactions (sent from the node's port, so the reflexive
/// address learnt is the one peers see for QUIC too).
#[derive(Clone)]
pub struct DemuxHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DemuxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("DemuxHandle").finish_non_exhaustive()
    }
}

/// Removes a transaction that ended without an answer (timeout, cancel).
struct PendingGuard<'a> {
    shared: &'a Shared,
    transaction: u128,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.transaction);
    }
}

impl DemuxHandle {
    pub fn stats(&self) -> DemuxStats {
        self.shared.counters.snapshot()
    }

    /// Sends one datagram from the node's port as it is (hole-punching
    /// packets: a Binding request, which a peerline node answers and any
    /// NAT on the way takes for outgoing traffic). A full socket buffer
    /// loses it, as the network might.
    pub fn send_punch(&self, to: SocketAddr) -> io::Result<()> {
        let (_transaction, request) = stun::binding_request();
        let sent = self.shared.inner.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: &request,
            segment_size: None,
            src_ip: None,
        });
        match sent {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// As a relay: binds `a`'s channel to `b`'s (see [`RelayTable::bind`]).
    pub fn relay_bind(&self, a: (SocketAddr, u16), b: (SocketAddr, u16)) -> Result<(), BindError> {
        let now = self.shared.clock.now().instant;
        lock(&self.shared.relay).bind(a, b, now)
    }

    /// As a relay: removes the binding `from` belongs to.
    pub fn relay_unbind(&self, from: (SocketAddr, u16)) {
        lock(&self.shared.relay).unbind(from);
    }

    /// As a peer: the virtual address quinn dials for the path through
    /// `relay` on `channel`.
    pub fn open_relayed_path(
        &self,
        relay: SocketAddr,
        channel: u16,
    ) -> Result<SocketAddr, BindError> {
        lock(&self.shared.relay).open_path(relay, channel)
    }

    pub fn close_relayed_path(&self, virtual_addr: SocketAddr) {
        lock(&self.shared.relay).close_path(virtual_addr);
    }

    /// Forgets every relay binding and relayed path.
    pub fn relay_reset(&self) {
        lock(&self.shared.relay).reset();
    }

    /// Channels bound on this node as a relay, and relayed paths it uses.
    pub fn relay_usage(&self) -> (usize, usize) {
        let relay = lock(&self.shared.relay);
        (relay.channels(), relay.paths())
    }

    /// Transactions waiting for an answer (at most `stun_transactions_max`).
    pub fn stun_transactions_len(&self) -> usize {
        lock(&self.shared.pending).len()
    }

    /// Asks `server` for this socket's reflexive address, retransmitting
    /// as RFC 8489 §6.2.1 says (`DemuxLimits::stun_retransmit`).
    pub async fn stun_binding(&self, server: SocketAddr) -> Result<SocketAddr, StunError> {
        let (transaction, request) = stun::binding_request();
        let (reply, mut answer) = oneshot::channel();
        {
            let mut pending = lock(&self.shared.pending);
            if pending.len() >= self.shared.limits.stun_transactions_max {
                return Err(StunError::Busy);
            }
            let server = canonical(server);
            pending.insert(transaction, Pending { server, reply });
        }
        let _guard = PendingGuard {
            shared: &self.shared,
            transaction,
        };
        let waits = self.shared.limits.stun_retransmit.waits();
        for wait in &waits {
            let sent = self.shared.inner.try_send(&Transmit {
                destination: server,
                ecn: None,
                contents: &request,
                segment_size: None,
                src_ip: None,
            });
            match sent {
                // A full socket buffer loses this copy, like the network
                // would; the next retransmission covers it.
                Err(error) if error.kind() != io::ErrorKind::WouldBlock => {
                    return Err(StunError::Send {
                        server,
                        reason: error.to_string(),
                    })
                }
                _ => {}
            }
            match tokio::time::timeout(*wait, &mut answer).await {
                Ok(Ok(outcome)) => return outcome,
                Ok(Err(_)) => return Err(StunError::Gone),
                Err(_elapsed) => {}
            }
        }
        Err(StunError::Timeout {
            server,
            requests: waits.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_first_byte_sorts_every_datagram() {
        let kinds: Vec<DatagramKind> = (0..=255u8).map(|b| classify(&[b])).collect();
        for (byte, kind) in kinds.iter().enumerate() {
            let expected = match byte {
                0..=3 => DatagramKind::Stun,
                4..=63 => DatagramKind::Unknown,
                64..=127 => DatagramKind::Quic,
                128..=191 => DatagramKind::Relay,
                _ => DatagramKind::Quic,
            };
            assert_eq!(*kind, expected, "first byte {byte}");
        }
        assert_eq!(classify(&[]), DatagramKind::Unknown);
    }

    proptest! {
        #[test]
        fn classification_is_total_and_depends_on_the_first_byte_only(
            bytes in proptest::collection::vec(any::<u8>(), 1..64),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let kind = classify(&bytes);
            prop_assert_eq!(kind, classify(&bytes[..1]));
            let mut longer = bytes.clone();
            longer.extend_from_slice(&tail);
            prop_assert_eq!(kind, classify(&longer));
            // QUIC exactly when the fixed bit is set and it is no relay frame.
            let quic = bytes[0] & 0x40 != 0;
            prop_assert_eq!(kind == DatagramKind::Quic, quic);
        }
    }
}
