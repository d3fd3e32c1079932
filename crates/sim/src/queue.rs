//! The event queue: events ordered by (virtual time, insertion sequence), so
//! equal-time events run in a deterministic order.
//!
//! A calendar of 1 ms buckets covering the next ~65 s holds nearly every
//! event (keepalives are 25 s apart); later events wait in a binary heap and
//! move into the calendar as it advances. A bucket is sorted when it becomes
//! current. Popping is O(1) amortized and touches little memory, which is
//! what a million-node run needs (a plain binary heap spent most of its time
//! in cache misses).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Debug)]
pub enum EventKind {
    /// A node starts for the first time or restarts.
    Start { node: u32 },
    /// A node leaves (gracefully or by crashing).
    Leave { node: u32 },
    /// A datagram arrives.
    Deliver { to: u32, from: u32, bytes: Vec<u8> },
    /// A datagram that waited for its supernode's CPU is handled now.
    Served { to: u32, from: u32, bytes: Vec<u8> },
    /// A node's timer fires (ignored when `epoch` is stale).
    Timer { node: u32, epoch: u32 },
    /// Start the next directory lookup.
    LookupTick,
    /// Take a metrics sample.
    Sample,
    /// The scenario's outage begins.
    Storm,
    /// Send the next message.
    MessageTick,
    /// The partition heals.
    Heal,
    /// A node crashes now and is back after `down_us` (an outage's victim).
    Crash { node: u32, down_us: u64 },
    /// A fraction of the supernodes crash at once (`accounts`, after the partition).
    CrashWave,
    /// The `accounts` scenario starts its next contested registration…
    NameTick,
    /// …and, near the end, looks every contested name up.
    NameCheck,
    /// Revoke the next device (`accounts`)…
    RevokeTick,
    /// …and see how far pending revocations spread.
    RevocationCheck,
    /// An account publishes its key bundle and shares (`accounts`)…
    BundlePublishTick,
    /// …a new device logs into one with a password…
    BundleLoginTick,
    /// …and, near the end, every account is opened once more (each second).
    BundleCheck,
}

#[derive(Debug)]
pub struct Entry {
    pub time_us: u64,
    pub sequence: u64,
    pub kind: EventKind,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.time_us == other.time_us && self.sequence == other.sequence
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed: a max-heap of these pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time_us, other.sequence).cmp(&(self.time_us, self.sequence))
    }
}

/// Width of one calendar bucket.
const BUCKET_US: u64 = 1_000;
/// Buckets in the calendar (a power of two): 65.5 s of look-ahead.
const BUCKETS: usize = 1 << 16;
/// Largest allocation (in entries) an emptied bucket keeps for reuse.
const RECYCLED_CAPACITY_MAX: usize = 64;

pub struct Queue {
    buckets: Vec<Vec<Entry>>,
    /// Index (in bucket units since time zero) of the current bucket.
    current: u64,
    /// The current bucket, sorted latest-first so `pop` takes from the end.
    ready: Vec<Entry>,
    far: BinaryHeap<Entry>,
    sequence: u64,
    len: usize,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            current: 0,
            ready: Vec::new(),
            far: BinaryHeap::new(),
            sequence: 0,
            len: 0,
        }
    }
}

impl Queue {
    pub fn push(&mut self, time_us: u64, kind: EventKind) {
        self.sequence += 1;
        self.len += 1;
        let entry = Entry {
            time_us,
            sequence: self.sequence,
            kind,
        };
        let bucket = time_us / BUCKET_US;
        if bucket <= self.current {
            // Lands in the bucket being drained: keep `ready` sorted.
            let at = self
                .ready
                .partition_point(|e| (e.time_us, e.sequence) > (time_us, entry.sequence));
            self.ready.insert(at, entry);
        } else if bucket < self.current + BUCKETS as u64 {
            self.buckets[(bucket as usize) & (BUCKETS - 1)].push(entry);
        } else {
            self.far.push(entry);
        }
    }

    pub fn pop(&mut self) -> Option<Entry> {
        loop {
            if let Some(entry) = self.ready.pop() {
                self.len -= 1;
                return Some(entry);
            }
            if self.len == 0 {
                return None;
            }
            self.advance();
        }
    }

    /// The next event to pop.
    pub fn peek(&mut self) -> Option<&Entry> {
        while self.ready.is_empty() {
            if self.len == 0 {
                return None;
            }
            self.advance();
        }
        self.ready.last()
    }

    /// Moves to the next bucket and makes it ready.
    fn advance(&mut self) {
        self.current += 1;
        // Far events that now fall inside the calendar window move in.
        let horizon = (self.current + BUCKETS as u64 - 1) * BUCKET_US;
        while self.far.peek().is_some_and(|e| e.time_us < horizon) {
            let entry = self.far.pop().expect("peeked");
            let bucket = entry.time_us / BUCKET_US;
            self.buckets[(bucket as usize) & (BUCKETS - 1)].push(entry);
        }
        let slot = (self.current as usize) & (BUCKETS - 1);
        // The drained `ready` goes back into the calendar as an empty bucket.
        // Its allocation is kept only if small: the vectors travel round the
        // calendar, so otherwise each of the 65,536 would end up as large as
        // the largest bucket it ever held (hundreds of MB after a storm).
        if self.ready.capacity() > RECYCLED_CAPACITY_MAX {
            self.ready = Vec::new();
        }
        std::mem::swap(&mut self.ready, &mut self.buckets[slot]);
        self.ready
            .sort_unstable_by_key(|e| std::cmp::Reverse((e.time_us, e.sequence)));
        // Skip quickly over empty stretches when only far events remain.
        if self.ready.is_empty() && self.buckets_empty() {
            if let Some(next) = self.far.peek() {
                self.current = (next.time_us / BUCKET_US).saturating_sub(1);
            }
        }
    }

    fn buckets_empty(&self) -> bool {
        self.len == self.far.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Largest allocation (in entries) held by an empty calendar bucket.
    #[cfg(test)]
    fn idle_allocation_max(&self) -> usize {
        self.buckets
            .iter()
            .filter(|b| b.is_empty())
            .map(Vec::capacity)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{Rng, SeedableRng};

    #[test]
    fn pops_in_time_then_insertion_order() {
        let mut queue = Queue::default();
        queue.push(5, EventKind::Sample);
        queue.push(1, EventKind::LookupTick);
        queue.push(5, EventKind::LookupTick);
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| queue.pop())
            .map(|e| (e.time_us, e.sequence))
            .collect();
        assert_eq!(order, vec![(1, 2), (5, 1), (5, 3)]);
    }

    #[test]
    fn a_burst_does_not_leave_its_allocation_behind() {
        let mut queue = Queue::default();
        // One burst of 100k events in one millisecond, then a few events
        // per millisecond for two turns of the calendar: without a limit,
        // the burst's allocation travels round the calendar for ever (and
        // every bucket ends up holding the largest burst it met).
        for _ in 0..100_000 {
            queue.push(2_000, EventKind::Sample);
        }
        let mut now = 2_000;
        while now < 2_000 + 2 * BUCKETS as u64 * BUCKET_US {
            for i in 0..3 {
                queue.push(now + 1_000 + i, EventKind::Sample);
            }
            while queue.len() > 3 {
                now = queue.pop().expect("queued").time_us;
            }
            now += BUCKET_US;
        }
        assert!(queue.idle_allocation_max() <= RECYCLED_CAPACITY_MAX);
    }

    #[test]
    fn matches_a_binary_heap_on_random_interleavings() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(11);
        let mut queue = Queue::default();
        let mut reference = BinaryHeap::new();
        let mut now = 0u64;
        let mut sequence = 0u64;
        for _ in 0..200_000 {
            if rng.next_u32() % 3 != 0 {
                // Mostly near future, sometimes far (beyond the calendar) or now.
                let delay = match rng.next_u32() % 10 {
                    0 => 0,
                    1 => 100_000_000 + rng.next_u64() % 500_000_000,
                    _ => rng.next_u64() % 30_000_000,
                };
                sequence += 1;
                queue.push(now + delay, EventKind::Sample);
                reference.push(Entry {
                    time_us: now + delay,
                    sequence,
                    kind: EventKind::Sample,
                });
            } else if let Some(expected) = reference.pop() {
                let got = queue.pop().expect("same length");
                assert_eq!(
                    (got.time_us, got.sequence),
                    (expected.time_us, expected.sequence)
                );
                now = got.time_us;
            }
        }
        while let Some(expected) = reference.pop() {
            let got = queue.pop().expect("same length");
            assert_eq!(
                (got.time_us, got.sequence),
                (expected.time_us, expected.sequence)
            );
        }
        assert!(queue.pop().is_none());
    }
}
