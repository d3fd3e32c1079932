//! The event queue: a binary heap ordered by (virtual time, insertion
//! sequence), so equal-time events run in a deterministic order.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Debug)]
pub enum EventKind {
    /// A node starts for the first time or restarts.
    Start { node: u32 },
    /// A node leaves (gracefully or by crashing).
    Leave { node: u32 },
    /// A datagram arrives.
    Deliver { to: u32, from: u32, bytes: Box<[u8]> },
    /// A node's timer fires (ignored when `epoch` is stale).
    Timer { node: u32, epoch: u32 },
    /// Start the next directory lookup.
    LookupTick,
    /// Take a metrics sample.
    Sample,
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
    /// Reversed: the heap pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time_us, other.sequence).cmp(&(self.time_us, self.sequence))
    }
}

#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Entry>,
    sequence: u64,
}

impl Queue {
    pub fn push(&mut self, time_us: u64, kind: EventKind) {
        self.sequence += 1;
        self.heap.push(Entry {
            time_us,
            sequence: self.sequence,
            kind,
        });
    }

    pub fn pop(&mut self) -> Option<Entry> {
        self.heap.pop()
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_then_insertion_order() {
        let mut queue = Queue::default();
        queue.push(5, EventKind::Sample);
        queue.push(1, EventKind::LookupTick);
        queue.push(5, EventKind::LookupTick);
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| queue.pop()).map(|e| (e.time_us, e.sequence)).collect();
        assert_eq!(order, vec![(1, 2), (5, 1), (5, 3)]);
    }
}
