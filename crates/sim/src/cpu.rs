//! The supernodes' CPU: every datagram a supernode handles costs it
//! service time by message kind, measured on the real driver, and a
//! datagram that arrives while the CPU is busy waits its turn (one FIFO
//! server per supernode). Overload then shows as queueing delay, and past
//! a bounded backlog as drops, as on a real host whose socket buffer
//! fills — the way the 2010 outage's surviving supernodes drowned.
//!
//! Clients have no CPU model: a client handles about one datagram a second
//! (keepalives, its own lookups and messages), far from any CPU limit.
//! Timers cost nothing either: what a supernode does on its own schedule
//! (gossip, sweeps, lookups it drives) is charged where it lands, at the
//! supernodes that receive its datagrams.
//!
//! A datagram is handled when its service starts and its answers leave
//! when the service ends (`World::deliver`): for the node's state the
//! difference is one service time, for its peers there is none. State per
//! supernode is [`Cpu`], two words; a datagram costs O(1) and allocates
//! nothing (a queued one moves its bytes into one more event).

use peerline_proto::MessageKind;

/// Supernode CPU time per operation in the real driver (`peerline-net`:
/// quinn, key-bound TLS 1.3, the production core with Ed25519), in µs.
///
/// From `bench/results/calibration-2026-11-27.md`, produced by
/// `bench/calibrate.sh --rounds 15` (crates/net/examples/calibrate.rs): the
/// median over 15 rounds, on loopback, of the on-CPU time of a supernode's
/// runtime thread per operation, 8 clients at a time. Measured on a shared
/// 2-vCPU AMD EPYC virtual machine; the file gives each figure's spread,
/// three more runs (their medians within about ±20% of these) and how the
/// simulator uses each figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Calibration {
    /// A new QUIC connection with its TLS handshake and `AttachHello`,
    /// answered with a challenge (or a busy answer: the handshake is paid
    /// before the core can refuse).
    pub attach_hello_us: u32,
    /// The same plus `AttachProof` (two signature checks, a ticket signed,
    /// the client's mail asked of its replicas) and `AttachAccepted`.
    pub attach_full_us: u32,
    /// A new connection carrying `AttachResume` (two signature checks, a
    /// ticket signed, mail asked) answered with `AttachAccepted`.
    pub attach_resume_us: u32,
    /// `Ping` → `Pong` on an open connection: a core message with no
    /// cryptography, read from a stream and answered on another.
    pub ping_us: u32,
    /// `LookupRequest` answered from the supernode's own directory.
    pub lookup_local_us: u32,
    /// `Publish`: two signature checks, the record stored and sent to the
    /// three other replicas.
    pub publish_us: u32,
    /// One Ed25519 signature check (`identity::verify`), alone.
    pub verify_us: u32,
}

/// The calibration the simulator runs with (see [`Calibration`]).
pub const MEASURED: Calibration = Calibration {
    attach_hello_us: 446,
    attach_full_us: 710,
    attach_resume_us: 579,
    ping_us: 18,
    lookup_local_us: 18,
    publish_us: 151,
    verify_us: 39,
};

/// Service time by message kind, from a calibration.
#[derive(Clone, Copy, Debug)]
pub struct CostTable {
    /// The calibration with every figure multiplied by the cost factor.
    calibration: Calibration,
}

impl CostTable {
    /// Costs from `calibration`, each multiplied by `factor` (a host
    /// `factor` times slower than the calibration machine).
    pub fn new(calibration: Calibration, factor: f64) -> CostTable {
        assert!(factor > 0.0 && factor.is_finite(), "cost factor {factor}");
        assert!(
            calibration.attach_full_us > calibration.attach_hello_us && calibration.ping_us > 0,
            "a calibration where a proof costs nothing or a ping is free is a bad measurement: {calibration:?}"
        );
        let scale = |us: u32| ((us as f64 * factor).round() as u32).max(1);
        let hello = scale(calibration.attach_hello_us);
        CostTable {
            calibration: Calibration {
                attach_hello_us: hello,
                // The proof keeps at least a microsecond.
                attach_full_us: scale(calibration.attach_full_us).max(hello + 1),
                attach_resume_us: scale(calibration.attach_resume_us),
                ping_us: scale(calibration.ping_us),
                lookup_local_us: scale(calibration.lookup_local_us),
                publish_us: scale(calibration.publish_us),
                verify_us: scale(calibration.verify_us),
            },
        }
    }

    /// The figures this table charges (the calibration times the factor).
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// What a supernode's CPU spends on one datagram of `kind` (`None`:
    /// undecodable, read and dropped). Kinds measured directly use their
    /// figure; the others are a ping (read one frame, send one) plus the
    /// signature checks they make. Every kind is listed, so a new message
    /// must be costed here before it compiles.
    pub fn service_us(&self, kind: Option<MessageKind>) -> u32 {
        use MessageKind::*;
        let c = &self.calibration;
        let frame_us = c.ping_us;
        let Some(kind) = kind else {
            return frame_us;
        };
        match kind {
            AttachHello => c.attach_hello_us,
            // The connection is open and the hello paid for its handshake.
            AttachProof => c.attach_full_us - c.attach_hello_us,
            AttachResume => c.attach_resume_us,
            Publish => c.publish_us,
            LookupRequest | FindValue => c.lookup_local_us,
            // An upper bound: a record the replica already holds (about
            // half the stores: every origin supernode replicates) is
            // refused before its two checks.
            Store => frame_us + 2 * c.verify_us,
            MailPut | MailStore | RelayRequest | NameRegister => frame_us + c.verify_us,
            // A vote is a claim check and a signature (a signature costs
            // about what a check does); a reply is a vote check, and a
            // record (in a store, a find's answer or a reply) is the claim
            // and a majority of votes.
            NameVoteRequest | NameVoteReply => frame_us + 2 * c.verify_us,
            NameStore | NameFindResponse => frame_us + 4 * c.verify_us,
            NameLookup | NameFind => c.lookup_local_us,
            // An upper bound: a version the supernode holds is ignored
            // before its check (a rotation carries two signatures).
            DeviceListPush => frame_us + c.verify_us,
            RootRotationPush => frame_us + 2 * c.verify_us,
            // A bundle and a share deal carry one root signature each (a
            // deal also a scalar multiplication, about a check's cost); an
            // evaluation is one scalar multiplication. A fetch from a client
            // fans out to the replicas like a name lookup; a reply is checked.
            BundleStore | BundleFetchResponse => frame_us + c.verify_us,
            // A device list carries one root signature; a fetch fans out
            // like a bundle fetch.
            DeviceListStore | DeviceListFetchResponse => frame_us + c.verify_us,
            DeviceListFetch => c.lookup_local_us,
            ShareDealPush => frame_us + 2 * c.verify_us,
            OprfEvaluate => frame_us + c.verify_us,
            BundleFetch => c.lookup_local_us,
            OprfAnswer | OprfRefused => frame_us,
            // Sealed candidates are forwarded unread (the recipient device
            // opens them): a frame, like the plaintext ones were.
            AttachChallenge | AttachAccepted | Busy | Detach | Leaving | Ping | Pong
            | NotAttached | PeerDown | LookupResponse | ProbeRequest | Probe | ProbeForward
            | GossipPing | GossipAck | SyncRequest | SyncResponse | FindValueResponse
            | MailDeliver | MailFetch | MailBatch | MailDone | MailDelete | PunchCandidates
            | PathPing | PathPong | RelayGranted | RelayRefused | NameResult
            | NameLookupResponse | NameLookupAnswer | LoginRefused | SealedCandidates
            | Keepalive => frame_us,
        }
    }
}

/// What became of a datagram arriving at a supernode's CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The CPU was idle: handle it now.
    Now,
    /// The CPU is busy: its service starts at `start_us`.
    Queued { start_us: u64 },
    /// The backlog is full: dropped, like a datagram on a full socket buffer.
    Dropped,
}

/// One supernode's CPU: a single FIFO server. Two words per node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu {
    /// When the last admitted datagram's service ends.
    busy_until_us: u64,
    /// Datagrams admitted whose service has not started.
    queued: u32,
    /// Service admitted since the last [`Cpu::take_work_us`].
    work_us: u32,
}

impl Cpu {
    /// A datagram needing `service_us` arrives at `now_us`; at most
    /// `backlog_max` may wait.
    pub fn arrive(&mut self, now_us: u64, service_us: u32, backlog_max: u32) -> Admission {
        let admission = if self.busy_until_us <= now_us {
            self.busy_until_us = now_us;
            Admission::Now
        } else if self.queued >= backlog_max {
            return Admission::Dropped;
        } else {
            self.queued += 1;
            Admission::Queued {
                start_us: self.busy_until_us,
            }
        };
        self.busy_until_us += service_us as u64;
        self.work_us = self.work_us.saturating_add(service_us);
        admission
    }

    /// A queued datagram's service starts (its node may have crashed since:
    /// the count still goes down, one for each datagram admitted).
    pub fn start_queued(&mut self) {
        assert!(
            self.queued > 0,
            "a queued datagram started that was never queued"
        );
        self.queued -= 1;
    }

    /// Datagrams waiting.
    pub fn queued(&self) -> u32 {
        self.queued
    }

    /// Service admitted since the last call (µs): the work the CPU was given.
    pub fn take_work_us(&mut self) -> u32 {
        std::mem::take(&mut self.work_us)
    }
}

/// Queueing delays of the datagrams supernodes handled, by millisecond.
#[derive(Clone, Debug, Default)]
pub struct DelayHistogram {
    /// Index = delay in ms; the last bucket holds everything longer.
    by_ms: Vec<u64>,
    pub max_us: u64,
}

/// Delays tracked to the millisecond up to this; longer ones share a bucket.
const DELAY_TRACKED_MS: usize = 60_000;

impl DelayHistogram {
    pub fn record(&mut self, delay_us: u64) {
        if self.by_ms.is_empty() {
            self.by_ms = vec![0; DELAY_TRACKED_MS + 1];
        }
        let bucket = ((delay_us / 1000) as usize).min(DELAY_TRACKED_MS);
        self.by_ms[bucket] += 1;
        self.max_us = self.max_us.max(delay_us);
    }

    pub fn count(&self) -> u64 {
        self.by_ms.iter().sum()
    }

    /// Datagrams that waited at least a millisecond.
    pub fn delayed(&self) -> u64 {
        self.by_ms.iter().skip(1).sum()
    }

    /// The delay (ms, rounded down) at quantile `q`.
    pub fn quantile_ms(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, count) in self.by_ms.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return ms as u64;
            }
        }
        DELAY_TRACKED_MS as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKLOG: u32 = 3;

    #[test]
    fn an_idle_cpu_serves_at_once_and_is_busy_for_the_service_time() {
        let mut cpu = Cpu::default();
        assert_eq!(cpu.arrive(1_000, 500, BACKLOG), Admission::Now);
        assert_eq!(
            cpu.arrive(1_200, 100, BACKLOG),
            Admission::Queued { start_us: 1_500 }
        );
        // Idle again from 1,600: the next one is served when it comes.
        cpu.start_queued();
        assert_eq!(cpu.arrive(1_600, 100, BACKLOG), Admission::Now);
        assert_eq!(cpu.arrive(5_000, 100, BACKLOG), Admission::Now);
    }

    #[test]
    fn arrivals_while_busy_wait_in_arrival_order() {
        let mut cpu = Cpu::default();
        assert_eq!(cpu.arrive(0, 10, BACKLOG), Admission::Now);
        let starts: Vec<Admission> = [(1, 20), (2, 30), (3, 40)]
            .iter()
            .map(|&(at, service)| cpu.arrive(at, service, BACKLOG))
            .collect();
        assert_eq!(
            starts,
            [
                Admission::Queued { start_us: 10 },
                Admission::Queued { start_us: 30 },
                Admission::Queued { start_us: 60 },
            ]
        );
        assert_eq!(cpu.queued(), 3);
    }

    #[test]
    fn a_full_backlog_drops_and_makes_no_work() {
        let mut cpu = Cpu::default();
        cpu.arrive(0, 1_000, BACKLOG);
        for at in 1..=BACKLOG as u64 {
            assert!(matches!(
                cpu.arrive(at, 1_000, BACKLOG),
                Admission::Queued { .. }
            ));
        }
        assert_eq!(cpu.arrive(10, 1_000, BACKLOG), Admission::Dropped);
        assert_eq!(cpu.take_work_us(), 4_000, "the dropped one costs nothing");
        // One starts: room for one more, behind the others.
        cpu.start_queued();
        assert_eq!(
            cpu.arrive(11, 1_000, BACKLOG),
            Admission::Queued { start_us: 4_000 }
        );
    }

    #[test]
    fn work_is_counted_per_period() {
        let mut cpu = Cpu::default();
        cpu.arrive(0, 300, BACKLOG);
        cpu.arrive(100, 200, BACKLOG);
        assert_eq!(cpu.take_work_us(), 500);
        assert_eq!(cpu.take_work_us(), 0);
    }

    #[test]
    #[should_panic(expected = "never queued")]
    fn starting_more_than_was_queued_is_a_bug() {
        Cpu::default().start_queued();
    }

    #[test]
    fn every_kind_costs_something_and_cryptography_costs_more() {
        let table = CostTable::new(MEASURED, 1.0);
        let ping = table.service_us(Some(MessageKind::Ping));
        assert!(ping > 0);
        for index in 0.. {
            let Some(kind) = MessageKind::from_index(index) else {
                break;
            };
            assert!(table.service_us(Some(kind)) >= ping, "{kind:?}");
        }
        for kind in [
            MessageKind::AttachHello,
            MessageKind::AttachProof,
            MessageKind::AttachResume,
            MessageKind::Publish,
            MessageKind::Store,
            MessageKind::MailPut,
        ] {
            assert!(table.service_us(Some(kind)) > ping, "{kind:?}");
        }
        // A new connection's handshake costs more than the checks on an open one.
        let proof = table.service_us(Some(MessageKind::AttachProof));
        assert!(table.service_us(Some(MessageKind::AttachHello)) > proof);
        assert!(table.service_us(Some(MessageKind::AttachResume)) > proof);
        assert_eq!(table.service_us(None), ping);
    }

    #[test]
    fn a_cost_factor_scales_every_service_time() {
        let base = CostTable::new(MEASURED, 1.0);
        let slow = CostTable::new(MEASURED, 4.0);
        for index in 0.. {
            let Some(kind) = MessageKind::from_index(index) else {
                break;
            };
            let (base_us, slow_us) = (base.service_us(Some(kind)), slow.service_us(Some(kind)));
            assert!(
                slow_us.abs_diff(4 * base_us) <= 4,
                "{kind:?}: {base_us} → {slow_us}"
            );
        }
        let fast = CostTable::new(MEASURED, 1e-6);
        assert!(fast.service_us(Some(MessageKind::Ping)) >= 1);
        assert!(fast.service_us(Some(MessageKind::AttachProof)) >= 1);
    }

    #[test]
    fn the_delay_quantiles_come_from_the_histogram() {
        let mut delays = DelayHistogram::default();
        for _ in 0..98 {
            delays.record(0);
        }
        delays.record(5_400);
        delays.record(120_000_000);
        assert_eq!(delays.count(), 100);
        assert_eq!(delays.delayed(), 2);
        assert_eq!(delays.quantile_ms(0.5), 0);
        assert_eq!(delays.quantile_ms(0.99), 5);
        assert_eq!(delays.quantile_ms(1.0), DELAY_TRACKED_MS as u64);
        assert_eq!(delays.max_us, 120_000_000);
    }
}
