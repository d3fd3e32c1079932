//! What the observers count, and the run digest.

use crate::config::SimConfig;
use crate::cpu::DelayHistogram;
use serde::Serialize;

/// One point of the time series.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_s: u64,
    pub live_clients: u64,
    /// Live clients attached to at least two supernodes.
    pub attached_two: u64,
    pub attached_one: u64,
    pub supernodes: u64,
    pub load_p50: u32,
    pub load_p99: u32,
    pub load_max: u32,
    pub load_max_ratio: f64,
    /// Busy answers seen on the wire since the previous sample.
    pub busy: u64,
    /// Of those, for a spent login budget (`HandshakesFull`) ...
    pub busy_handshakes: u64,
    /// ... and naming no alternate.
    pub busy_no_alternates: u64,
    /// Supernodes holding more attachments than their capacity.
    pub over_capacity: u64,
    /// The most CPU work (service time) any supernode was given since the
    /// previous sample, as a share of the interval: above 1 its queue grew.
    pub cpu_load_max_ratio: f64,
    /// The longest a datagram waited for a supernode's CPU since the
    /// previous sample (ms).
    pub cpu_delay_max_ms: u64,
    /// Clients knocked below two attachments by the outage and not back yet.
    pub reattach_pending: u64,
    /// Clients below two attachments because a supernode of theirs crashed
    /// in ordinary churn within the last minute (re-attaching now; timed by
    /// `churn_reattach_s_*`).
    pub churn_orphans: u64,
    /// Envelope copies in mailboxes addressed to devices that are online
    /// (as clients): the backlog waiting to be delivered or cleaned up.
    pub mailbox_backlog: u64,
    /// Every envelope copy held in mailboxes (offline recipients included).
    pub mailbox_held: u64,
    /// Events waiting in the simulator's queue (datagrams in flight and
    /// armed timers): where a run's memory goes in a storm.
    pub queued_events: u64,
    /// The process's resident memory at the sample (bytes; 0 where
    /// `/proc` is missing). Wall-clock side only: no outcome depends on it.
    pub rss_bytes: u64,
}

impl Sample {
    pub fn attached_ratio(&self) -> f64 {
        self.share_of_live(self.attached_two)
    }

    /// The same, not counting clients re-attaching after a supernode of
    /// theirs crashed in ordinary churn within the last minute: what an
    /// outage did, net of failures that happen in every run anyway.
    pub fn attached_ratio_net_of_churn(&self) -> f64 {
        self.share_of_live(self.attached_two + self.churn_orphans)
    }

    /// `count` live clients as a share of all of them (1 when none live).
    fn share_of_live(&self, count: u64) -> f64 {
        if self.live_clients == 0 {
            1.0
        } else {
            (count as f64 / self.live_clients as f64).min(1.0)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupFailure {
    /// No record came back (including timeouts).
    NotFound,
    /// A record came back that names none of the target's current supernodes.
    Stale,
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub events: u64,
    /// Look-ahead windows of node events, and those split between threads
    /// (`world/batch.rs`).
    pub windows: u64,
    pub windows_split: u64,
    pub timers: u64,
    pub sent: u64,
    pub bytes_sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub dropped_dead: u64,
    pub dropped_nat: u64,
    pub dropped_unroutable: u64,
    /// Delivered datagrams by message kind (index = variant index).
    pub delivered_by_kind: Vec<u64>,
    pub crashes: u64,
    pub graceful_leaves: u64,
    /// Clients a supernode's graceful leave left below two attachments
    /// when it went (the drain's stragglers: it lets them move first).
    pub graceful_leave_orphans: u64,
    pub promotions: u64,
    /// Promotions of nodes behind a NAT (must stay 0: they are unreachable).
    pub promotions_unreachable: u64,
    pub demotions: u64,
    pub lookups_started: u64,
    pub lookups_ok: u64,
    pub lookups_not_found: u64,
    pub lookups_stale: u64,
    pub lookups_abandoned: u64,
    /// Successful lookups by hop count (index = hops, last bucket = more).
    pub lookup_hops: Vec<u64>,
    /// Latency of every completed lookup, ms.
    pub lookup_latency_ms: Vec<u32>,
    pub samples: Vec<Sample>,
    pub final_loads: Vec<u32>,
    pub digest: String,
    /// Busy answers seen on the wire (total, and since the last sample).
    pub busy_answers: u64,
    pub busy_since_sample: u64,
    /// Busy answers by reason (named in the report; never iterated here).
    pub busy_by_reason: std::collections::HashMap<peerline_proto::BusyReason, u64>,
    /// Busy answers for a spent login budget since the last sample.
    pub busy_handshakes_since_sample: u64,
    /// Busy answers that named no alternate (total, and since the last
    /// sample): the client has only its host cache to go on.
    pub busy_without_alternates: u64,
    pub busy_without_alternates_since_sample: u64,
    /// Sum over samples of supernodes over capacity.
    pub over_capacity_events: u64,
    /// Nodes crashed or restarted by the outage.
    pub outage_crashes: u64,
    /// Time (ms) each client knocked below two attachments by the outage
    /// took to be back at two.
    pub reattach_ms: Vec<u32>,
    /// Same, for clients of supernodes that crashed in ordinary churn.
    pub churn_reattach_ms: Vec<u32>,
    pub messages_sent: u64,
    /// Refused by the sender's node (outbox full): not counted as sent.
    pub messages_refused: u64,
    pub messages_delivered: u64,
    /// Acknowledged to the sender but never delivered: must stay 0.
    pub messages_lost: u64,
    pub messages_duplicated: u64,
    pub messages_out_of_order: u64,
    /// Datagrams dropped because they would cross the partition.
    pub dropped_partition: u64,
    /// Lookups started well after a partition healed: completed, and found.
    pub lookups_after_heal: u64,
    pub lookups_after_heal_ok: u64,
    /// How long datagrams to supernodes waited for the CPU (every one
    /// handled, the ones that did not wait included).
    pub cpu_delay: DelayHistogram,
    pub cpu_delay_max_since_sample_us: u64,
    /// Datagrams dropped at a supernode's full CPU backlog.
    pub cpu_dropped: u64,
    /// The same by message kind (index = variant index).
    pub cpu_dropped_by_kind: Vec<u64>,
}

/// Counts one datagram of `kind` in a tally indexed by variant.
pub fn tally_kind(tally: &mut Vec<u64>, kind: Option<peerline_proto::MessageKind>) {
    if let Some(kind) = kind {
        let index = kind as usize;
        if tally.len() <= index {
            tally.resize(index + 1, 0);
        }
        tally[index] += 1;
    }
}

/// A tally by variant index as a map from the kind's name (zeros left out).
pub fn named_tally(tally: &[u64]) -> std::collections::BTreeMap<String, u64> {
    tally
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .filter_map(|(index, count)| {
            peerline_proto::MessageKind::from_index(index as u32)
                .map(|kind| (format!("{kind:?}"), *count))
        })
        .collect()
}

impl Metrics {
    pub fn new(_config: &SimConfig) -> Metrics {
        Metrics {
            lookup_hops: vec![0; 9],
            ..Metrics::default()
        }
    }

    pub fn lookup_done(&mut self, outcome: Result<u8, LookupFailure>, elapsed_ms: u64) {
        self.lookup_latency_ms
            .push(elapsed_ms.min(u32::MAX as u64) as u32);
        match outcome {
            Ok(hops) => {
                self.lookups_ok += 1;
                let bucket = (hops as usize).min(self.lookup_hops.len() - 1);
                self.lookup_hops[bucket] += 1;
            }
            Err(LookupFailure::NotFound) => self.lookups_not_found += 1,
            Err(LookupFailure::Stale) => self.lookups_stale += 1,
        }
    }

    pub fn lookups_completed(&self) -> u64 {
        self.lookups_ok + self.lookups_not_found + self.lookups_stale
    }

    /// Hop count at quantile `q` of successful lookups.
    pub fn hops_quantile(&self, q: f64) -> u64 {
        let total: u64 = self.lookup_hops.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (hops, count) in self.lookup_hops.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return hops as u64;
            }
        }
        (self.lookup_hops.len() - 1) as u64
    }
}

/// Quantile of an unsorted list (sorts a copy).
pub fn quantile(values: &[u32], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as u64
}

/// Hashes every delivered datagram and fired timer in order. A cheap
/// 64-bit fold per event feeds BLAKE3 in batches.
#[derive(Default)]
pub struct Digest {
    batch: Vec<u8>,
    hasher: blake3::Hasher,
}

const DIGEST_BATCH_BYTES: usize = 64 * 1024;

fn fold(mut state: u64, word: u64) -> u64 {
    state ^= word;
    state = state.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    state.rotate_left(29)
}

impl Digest {
    /// The word a delivered datagram adds to the digest ([`Digest::push`]).
    pub fn delivered_word(time_us: u64, from: u32, to: u32, bytes: &[u8]) -> u64 {
        // Four independent lanes over 32-byte blocks: the multiplies overlap
        // instead of waiting on each other (this runs for every datagram).
        let mut lanes = [
            fold(0x5EED, time_us),
            fold(0x5EEE, ((from as u64) << 32) | to as u64),
            fold(0x5EEF, bytes.len() as u64),
            0x5EF0,
        ];
        let mut blocks = bytes.chunks_exact(32);
        for block in &mut blocks {
            for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                *lane = fold(*lane, u64::from_le_bytes(word.try_into().expect("8 bytes")));
            }
        }
        let mut tail = [0u8; 32];
        tail[..blocks.remainder().len()].copy_from_slice(blocks.remainder());
        for (lane, word) in lanes.iter_mut().zip(tail.chunks_exact(8)) {
            *lane = fold(*lane, u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        lanes.iter().fold(0, |state, lane| fold(state, *lane))
    }

    pub fn timer(&mut self, time_us: u64, node: u32) {
        self.push(fold(fold(0x71AE, time_us), node as u64));
    }

    pub fn push(&mut self, value: u64) {
        self.batch.extend_from_slice(&value.to_le_bytes());
        if self.batch.len() >= DIGEST_BATCH_BYTES {
            self.hasher.update(&self.batch);
            self.batch.clear();
        }
    }

    pub fn finish(&mut self) -> String {
        self.hasher.update(&self.batch);
        self.batch.clear();
        self.hasher.finalize().to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerline_proto::MessageKind;

    #[test]
    fn a_tally_by_kind_names_each_counted_kind_and_leaves_out_the_rest() {
        let mut tally = Vec::new();
        for kind in [MessageKind::Store, MessageKind::Ping, MessageKind::Store] {
            tally_kind(&mut tally, Some(kind));
        }
        tally_kind(&mut tally, None);
        let named = named_tally(&tally);
        assert_eq!(named.len(), 2, "{named:?}");
        assert_eq!(named["Store"], 2);
        assert_eq!(named["Ping"], 1);
    }
}
