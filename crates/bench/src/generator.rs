//! The one traffic generator every relay gets: socket A sends paced
//! datagrams at an offered rate, socket B counts what arrives.
//!
//! Per datagram the sender copies nothing: it writes a sequence number and
//! a send time into a prebuilt datagram (the relay's own header, if any,
//! then the payload) and makes one `sendto`. So the sender's work per packet
//! is the same whatever the relay, and what differs between relays is only
//! the relay.
//!
//! Pacing: the sender thread wakes every [`TICK`] (a sleep; about 60–150 µs
//! on Linux) and sends every datagram due by then, so bursts stay small
//! (≈ 30 datagrams at 200,000/s) instead of the 1-ms bursts of tokio's timer.
//!
//! The receiver runs on a tokio runtime of its own and reads with quinn-udp
//! (`recvmmsg`, up to [`quinn::udp::BATCH_SIZE`] datagrams a system call),
//! so that on this 2-core machine it takes as little CPU from the relay as it
//! can. Its socket has a 4 MiB receive buffer; what the kernel still drops
//! there is reported apart (`procfs::udp_drops`), since it is the generator's
//! loss and not the relay's.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::sync::oneshot;

/// How often the sender wakes to send what is due.
pub const TICK: Duration = Duration::from_micros(100);
/// Bytes at the start of every payload: sequence number, then send time in
/// nanoseconds since the run's epoch (both little-endian `u64`).
pub const STAMP_LEN: usize = 16;
/// Largest datagram the receiver reads.
const DATAGRAM_LEN_MAX: usize = 2_048;
/// Datagrams one step may send: the receiver's bitmap and latency samples
/// are sized by it (about 41 MB at most).
pub const STEP_DATAGRAMS_MAX: u64 = 10_000_000;

/// What the sender sends to one relay, and what the receiver expects back.
#[derive(Clone, Debug)]
pub struct Route {
    /// Where A sends.
    pub to: SocketAddr,
    /// One whole datagram as A sends it: the relay's header, then the
    /// payload with a zero stamp at `payload_offset`.
    pub template: Vec<u8>,
    pub payload_offset: usize,
    /// What B gets: these bytes first (the relay's header towards B, if
    /// any), then the payload; from this address.
    pub delivered_prefix: Vec<u8>,
    pub delivered_from: SocketAddr,
}

/// One offered load.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub rate_per_s: u64,
    pub payload_len: usize,
    pub duration: Duration,
}

impl Step {
    pub fn datagrams(&self) -> u64 {
        let datagrams = u128::from(self.rate_per_s) * self.duration.as_millis() / 1_000;
        u64::try_from(datagrams).unwrap_or(u64::MAX)
    }
}

/// What the sender did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub datagrams: u64,
    /// `sendto` calls that failed (the datagram counts as sent and lost).
    pub errors: u64,
    /// From the first datagram to the last.
    pub elapsed: Duration,
}

impl Sent {
    /// The rate the sender achieved (below the offered one when the sender
    /// itself could not keep up).
    pub fn rate_per_s(&self) -> f64 {
        self.datagrams as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the receiver counted.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// Distinct sequence numbers of this step.
    pub datagrams: u64,
    pub duplicates: u64,
    /// Datagrams from another address, with the wrong prefix, too short, or
    /// with a sequence number this step never sent.
    pub strays: u64,
    /// One-way latency, sender's `sendto` to receiver's read.
    pub latency_us_p50: Option<u64>,
    pub latency_us_p99: Option<u64>,
}

/// A's socket and the run's clock: sends `step` through `route`.
pub fn send_paced(socket: &UdpSocket, route: &Route, step: &Step, epoch: Instant) -> Sent {
    let total = step.datagrams();
    assert!(total <= STEP_DATAGRAMS_MAX, "step bounds are checked first");
    let offset = route.payload_offset;
    assert!(route.template.len() >= offset + STAMP_LEN);
    let mut datagram = route.template.clone();
    let mut sent = Sent::default();
    let start = Instant::now();
    while sent.datagrams < total {
        let elapsed = start.elapsed();
        let due = (elapsed.as_nanos() * u128::from(step.rate_per_s) / 1_000_000_000)
            .min(u128::from(total)) as u64;
        while sent.datagrams < due {
            datagram[offset..offset + 8].copy_from_slice(&sent.datagrams.to_le_bytes());
            let now_ns = epoch.elapsed().as_nanos() as u64;
            datagram[offset + 8..offset + 16].copy_from_slice(&now_ns.to_le_bytes());
            if socket.send_to(&datagram, route.to).is_err() {
                sent.errors += 1;
            }
            sent.datagrams += 1;
        }
        if sent.datagrams < total {
            std::thread::sleep(TICK);
        }
    }
    sent.elapsed = start.elapsed();
    sent
}

/// Counts what arrives on B until `stop` fires. `datagrams` is how many
/// the step sends (sequence numbers 0 to `datagrams - 1`).
pub async fn receive(
    socket: tokio::net::UdpSocket,
    route: Route,
    datagrams: u64,
    epoch: Instant,
    mut stop: oneshot::Receiver<()>,
) -> io::Result<Received> {
    assert!(datagrams <= STEP_DATAGRAMS_MAX);
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    let mut counter = Counter::new(route, datagrams, epoch);
    let batch = quinn::udp::BATCH_SIZE.max(1);
    let mut storage = vec![0u8; batch * DATAGRAM_LEN_MAX];
    let mut chunks = storage.chunks_mut(DATAGRAM_LEN_MAX);
    let mut buffers: Vec<IoSliceMut> = (0..batch)
        .map(|_| IoSliceMut::new(chunks.next().expect("storage holds a batch")))
        .collect();
    let mut metas = vec![quinn::udp::RecvMeta::default(); batch];
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            readable = socket.readable() => readable?,
        }
        loop {
            let read = socket.try_io(Interest::READABLE, || {
                state.recv((&socket).into(), &mut buffers, &mut metas)
            });
            let count = match read {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            };
            for (buffer, meta) in buffers.iter().zip(&metas).take(count) {
                let stride = meta.stride.max(1);
                for datagram in buffer[..meta.len].chunks(stride) {
                    counter.count(datagram, meta.addr);
                }
            }
        }
    }
    Ok(counter.finish())
}

/// The receiver's tally of one step.
struct Counter {
    route: Route,
    datagrams: u64,
    epoch: Instant,
    seen: Vec<u64>,
    latencies_us: Vec<u32>,
    received: Received,
}

impl Counter {
    fn new(route: Route, datagrams: u64, epoch: Instant) -> Counter {
        let datagrams_usize = usize::try_from(datagrams).expect("bounded by STEP_DATAGRAMS_MAX");
        Counter {
            route,
            datagrams,
            epoch,
            seen: vec![0; datagrams_usize.div_ceil(64)],
            latencies_us: Vec::with_capacity(datagrams_usize),
            received: Received::default(),
        }
    }

    fn count(&mut self, datagram: &[u8], from: SocketAddr) {
        let offset = self.route.delivered_prefix.len();
        let stamp = datagram.get(offset..offset + STAMP_LEN);
        let (Some(stamp), true, true) = (
            stamp,
            from == self.route.delivered_from,
            datagram.starts_with(&self.route.delivered_prefix),
        ) else {
            self.received.strays += 1;
            return;
        };
        let sequence = u64::from_le_bytes(stamp[..8].try_into().expect("8 bytes"));
        let sent_ns = u64::from_le_bytes(stamp[8..].try_into().expect("8 bytes"));
        if sequence >= self.datagrams {
            self.received.strays += 1;
            return;
        }
        let (word, bit) = ((sequence / 64) as usize, 1u64 << (sequence % 64));
        if self.seen[word] & bit != 0 {
            self.received.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        self.received.datagrams += 1;
        let now_ns = self.epoch.elapsed().as_nanos() as u64;
        let latency_us = now_ns.saturating_sub(sent_ns) / 1_000;
        self.latencies_us
            .push(u32::try_from(latency_us).unwrap_or(u32::MAX));
    }

    fn finish(mut self) -> Received {
        self.latencies_us.sort_unstable();
        let quantile = |q: f64| -> Option<u64> {
            let last = self.latencies_us.len().checked_sub(1)?;
            let index = ((last as f64) * q).round() as usize;
            Some(u64::from(self.latencies_us[index]))
        };
        self.received.latency_us_p50 = quantile(0.50);
        self.received.latency_us_p99 = quantile(0.99);
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        Route {
            to: "127.0.0.1:1".parse().unwrap(),
            template: vec![0; 4 + 32],
            payload_offset: 4,
            delivered_prefix: vec![0x80, 0x02],
            delivered_from: "127.0.0.1:2".parse().unwrap(),
        }
    }

    fn datagram(prefix: &[u8], sequence: u64) -> Vec<u8> {
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(&sequence.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes
    }

    #[test]
    fn the_counter_counts_each_sequence_once_and_only_from_the_relay() {
        let route = route();
        let from = route.delivered_from;
        let mut counter = Counter::new(route, 100, Instant::now());
        counter.count(&datagram(&[0x80, 0x02], 0), from);
        counter.count(&datagram(&[0x80, 0x02], 99), from);
        counter.count(&datagram(&[0x80, 0x02], 99), from);
        counter.count(&datagram(&[0x80, 0x02], 100), from);
        counter.count(&datagram(&[0x80, 0x03], 1), from);
        counter.count(&datagram(&[0x80, 0x02], 2), "127.0.0.1:3".parse().unwrap());
        counter.count(&[0x80, 0x02, 0], from);
        let received = counter.finish();
        assert_eq!(received.datagrams, 2);
        assert_eq!(received.duplicates, 1);
        assert_eq!(received.strays, 4);
        assert!(received.latency_us_p99.is_some());
    }

    #[test]
    fn a_step_sends_rate_times_duration() {
        let step = Step {
            rate_per_s: 25_000,
            payload_len: 170,
            duration: Duration::from_millis(2_000),
        };
        assert_eq!(step.datagrams(), 50_000);
    }
}
