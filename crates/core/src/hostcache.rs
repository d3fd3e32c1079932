//! A client's host cache: many supernodes, scored by round-trip time and
//! failures, with per-entry back-off. Kept compact (one fixed-size entry per
//! supernode) because a simulation holds a million of them.

use crate::time::Instant;
use peerline_proto::{Contact, PublicKey};
use rand_core::Rng;

/// Recommendations (from the front of the latest list) a choice is made among.
const HINTED_CHOICES: usize = 3;
/// Entries a full cache's vector grows by.
const GROWTH_STEP: usize = 8;

#[derive(Clone, Copy, Debug)]
pub struct HostEntry {
    pub contact: Contact,
    /// Smoothed attach round-trip time; `u16::MAX` until measured.
    pub rtt_ms: u16,
    /// Failures since the last success (drives back-off and eviction).
    pub failures: u8,
    /// Not to be tried before this monotonic second.
    pub not_before_s: u32,
    /// A supernode recommended (as having room) by the latest busy or
    /// detach answer and not tried since: its place in that answer's list
    /// (1 = least loaded), 0 when not recommended. Tried before the others.
    pub hint_rank: u8,
}

impl HostEntry {
    /// A supernode just heard of: never tried, nothing known.
    fn fresh(contact: Contact) -> HostEntry {
        HostEntry {
            contact,
            rtt_ms: u16::MAX,
            failures: 0,
            not_before_s: 0,
            hint_rank: 0,
        }
    }

    /// Lower is better.
    fn score(&self) -> (u8, u16) {
        (self.failures, self.rtt_ms)
    }
}

#[derive(Clone, Debug, Default)]
pub struct HostCache {
    entries: Vec<HostEntry>,
}

fn mono_s(now: Instant) -> u32 {
    now.as_s().min(u32::MAX as u64) as u32
}

impl HostCache {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[HostEntry] {
        &self.entries
    }

    pub fn contains(&self, key: &PublicKey) -> bool {
        self.entries.iter().any(|e| e.contact.key == *key)
    }

    /// Adds or refreshes a supernode. When full, the entry with the most
    /// failures (then the slowest) makes room, unless the newcomer would be
    /// the worst itself.
    pub fn insert(&mut self, contact: Contact, len_max: usize) {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.contact.key == contact.key)
        {
            entry.contact = contact;
            return;
        }
        let fresh = HostEntry::fresh(contact);
        if self.entries.len() < len_max {
            // Grown a few entries at a time, not doubled: a simulation
            // holds a million of these, and doubling leaves a cache of 33
            // entries with room for 64 (4.6 kB instead of 2.9 kB).
            if self.entries.len() == self.entries.capacity() {
                let room = (len_max - self.entries.len()).min(GROWTH_STEP);
                self.entries.reserve_exact(room);
            }
            self.entries.push(fresh);
            return;
        }
        let worst = self
            .entries
            .iter()
            .enumerate()
            .max_by_key(|(_, e)| e.score())
            .map(|(i, _)| i);
        if let Some(worst) = worst {
            if self.entries[worst].failures > 0 {
                self.entries[worst] = fresh;
            }
        }
    }

    /// Takes the supernodes another one just recommended as having room:
    /// the next choices prefer them. Only the latest recommendation counts
    /// (older ones describe loads that have since changed). A full cache
    /// makes room for them: a fresh recommendation beats the worst entry we
    /// have not heard from, and after a crash wave that entry is often dead
    /// (without this, a cache full of untried entries ignored every hint and
    /// the client kept knocking on the same full supernodes).
    pub fn hint(&mut self, contacts: &[Contact], len_max: usize) {
        for entry in &mut self.entries {
            entry.hint_rank = 0;
        }
        for (rank, contact) in contacts.iter().enumerate() {
            let known = self
                .entries
                .iter()
                .position(|e| e.contact.key == contact.key);
            let index = match known {
                Some(index) => {
                    self.entries[index].contact = *contact;
                    Some(index)
                }
                None if self.entries.len() < len_max => {
                    self.insert(*contact, len_max);
                    Some(self.entries.len() - 1)
                }
                None => self.evict_for(*contact),
            };
            if let Some(index) = index {
                self.entries[index].hint_rank = (rank + 1).min(u8::MAX as usize) as u8;
            }
        }
    }

    /// Replaces the worst entry that is not itself a current
    /// recommendation; where the newcomer went.
    fn evict_for(&mut self, contact: Contact) -> Option<usize> {
        let worst = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.hint_rank == 0)
            .max_by_key(|(_, e)| e.score())
            .map(|(i, _)| i)?;
        self.entries[worst] = HostEntry::fresh(contact);
        Some(worst)
    }

    /// Picks a supernode to attach to: one of the first recommended ones if
    /// there are any, else the best of a few random eligible entries (power of
    /// choices spreads clients instead of herding them onto the single best
    /// supernode).
    pub fn choose(
        &self,
        now: Instant,
        rng: &mut impl Rng,
        choices: usize,
        exclude: &[PublicKey],
    ) -> Option<Contact> {
        let now_s = mono_s(now);
        let eligible = |e: &HostEntry| e.not_before_s <= now_s && !exclude.contains(&e.contact.key);
        if self.entries.is_empty() {
            return None;
        }
        // One of the few least loaded recommendations, at random: the
        // front of the list has the most room, and a little randomness keeps
        // everyone turned away by one supernode from landing on one other.
        let mut hinted: Vec<&HostEntry> = self
            .entries
            .iter()
            .filter(|e| e.hint_rank > 0 && eligible(e))
            .collect();
        if !hinted.is_empty() {
            hinted.sort_unstable_by_key(|e| e.hint_rank);
            let pick = rng.next_u32() as usize % hinted.len().min(HINTED_CHOICES);
            return Some(hinted[pick].contact);
        }
        let mut best: Option<&HostEntry> = None;
        for _ in 0..choices {
            let entry = &self.entries[rng.next_u32() as usize % self.entries.len()];
            if eligible(entry) && best.is_none_or(|b| entry.score() < b.score()) {
                best = Some(entry);
            }
        }
        best.or_else(|| {
            // Random probes missed: take the best eligible entry, if any.
            self.entries
                .iter()
                .filter(|e| eligible(e))
                .min_by_key(|e| e.score())
        })
        .map(|e| e.contact)
    }

    /// When the earliest entry not excluded becomes eligible (a past
    /// instant when one already is).
    pub fn next_eligible(&self, exclude: &[PublicKey]) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|e| !exclude.contains(&e.contact.key))
            .map(|e| Instant::from_s(e.not_before_s as u64))
            .min()
    }

    pub fn record_success(&mut self, key: &PublicKey, rtt_ms: u64) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.contact.key == *key) {
            let rtt = rtt_ms.min(u16::MAX as u64 - 1) as u16;
            entry.rtt_ms = if entry.rtt_ms == u16::MAX {
                rtt
            } else {
                ((entry.rtt_ms as u32 * 7 + rtt as u32) / 8) as u16
            };
            entry.failures = 0;
            entry.not_before_s = 0;
            entry.hint_rank = 0;
        }
    }

    /// Counts a failure and backs off exponentially with jitter (0.5–1.5×),
    /// so clients that failed together do not retry together.
    pub fn record_failure(
        &mut self,
        key: &PublicKey,
        now: Instant,
        rng: &mut impl Rng,
        base_ms: u64,
        max_ms: u64,
    ) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.contact.key == *key) {
            entry.failures = entry.failures.saturating_add(1);
            entry.hint_rank = 0;
            let backoff_ms = backoff_ms(entry.failures as u32, base_ms, max_ms, rng);
            entry.not_before_s = mono_s(now.add_ms(backoff_ms)).max(1);
        }
    }

    /// Asks not to be contacted before `retry_after_ms` (a busy answer).
    pub fn defer(&mut self, key: &PublicKey, now: Instant, retry_after_ms: u64) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.contact.key == *key) {
            entry.hint_rank = 0;
            entry.not_before_s = entry
                .not_before_s
                .max(mono_s(now.add_ms(retry_after_ms)).max(1));
        }
    }
}

/// Exponential back-off `base · 2^(attempt-1)`, capped, times a random factor in [0.5, 1.5).
pub fn backoff_ms(attempt: u32, base_ms: u64, max_ms: u64, rng: &mut impl Rng) -> u64 {
    let exponent = attempt.saturating_sub(1).min(20);
    let nominal = base_ms.saturating_mul(1 << exponent).min(max_ms);
    let jitter_per_mille = 500 + (rng.next_u32() % 1000) as u64;
    nominal * jitter_per_mille / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerline_proto::Addr;
    use rand_core::SeedableRng;
    use rand_pcg::Pcg32;

    fn contact(i: u8) -> Contact {
        Contact {
            key: PublicKey([i; 32]),
            id_nonce: 0,
            addr: Addr::from_ipv4_u32(i as u32, 1),
        }
    }

    #[test]
    fn a_choice_is_among_the_first_recommendations() {
        let mut cache = HostCache::default();
        for i in 0..20 {
            cache.insert(contact(i), 64);
        }
        let hints: Vec<Contact> = (10..18).map(contact).collect();
        cache.hint(&hints, 64);
        let mut rng = Pcg32::seed_from_u64(5);
        let mut picked = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let chosen = cache.choose(Instant::ZERO, &mut rng, 3, &[]).unwrap();
            picked.insert(chosen.key.0[0]);
        }
        // The least loaded three, each of them (spread, not herded).
        assert_eq!(picked.into_iter().collect::<Vec<_>>(), vec![10, 11, 12]);
        // Recommendations being tried are excluded: the next ones move up.
        let tried = [contact(10).key, contact(11).key, contact(12).key];
        for _ in 0..50 {
            let chosen = cache.choose(Instant::ZERO, &mut rng, 3, &tried).unwrap();
            assert!((13..=15).contains(&chosen.key.0[0]));
        }
    }

    #[test]
    fn bounded_and_evicts_failed_entries_first() {
        let mut cache = HostCache::default();
        for i in 0..10 {
            cache.insert(contact(i), 4);
        }
        assert_eq!(
            cache.len(),
            4,
            "healthy entries are not evicted by newcomers"
        );
        let mut rng = Pcg32::seed_from_u64(1);
        cache.record_failure(&PublicKey([2; 32]), Instant::ZERO, &mut rng, 1000, 10_000);
        cache.insert(contact(9), 4);
        assert!(cache.contains(&PublicKey([9; 32])));
        assert!(!cache.contains(&PublicKey([2; 32])));
    }

    #[test]
    fn a_full_cache_makes_room_for_recommendations() {
        // A cache full of supernodes never tried yet (after a crash wave,
        // many of them dead): the supernodes a busy answer recommends
        // still get in, and are what the client tries next.
        let mut cache = HostCache::default();
        for i in 0..8 {
            cache.insert(contact(i), 8);
        }
        let mut rng = Pcg32::seed_from_u64(7);
        cache.record_success(&PublicKey([0; 32]), 40);
        let hints = [contact(20), contact(21)];
        cache.hint(&hints, 8);
        assert_eq!(cache.len(), 8);
        for hint in &hints {
            assert!(cache.contains(&hint.key), "{hint:?} was dropped");
        }
        // The one that answered before is kept; unmeasured ones made room.
        assert!(cache.contains(&PublicKey([0; 32])));
        for _ in 0..20 {
            let chosen = cache.choose(Instant::ZERO, &mut rng, 2, &[]).unwrap();
            assert!([20, 21].contains(&chosen.key.0[0]), "{chosen:?}");
        }
        // A longer list than the cache keeps the first ones, never
        // evicting a recommendation of the same list for another.
        let many: Vec<Contact> = (30..40).map(contact).collect();
        cache.hint(&many, 8);
        assert_eq!(cache.len(), 8);
        let hinted = cache.entries().iter().filter(|e| e.hint_rank > 0).count();
        assert_eq!(hinted, 8);
        assert!(cache.contains(&PublicKey([30; 32])));
    }

    #[test]
    fn backoff_grows_caps_and_spreads() {
        let mut rng = Pcg32::seed_from_u64(3);
        let samples: Vec<u64> = (0..200)
            .map(|_| backoff_ms(1, 1000, 60_000, &mut rng))
            .collect();
        assert!(samples.iter().all(|s| (500..1500).contains(s)));
        let distinct: std::collections::BTreeSet<_> = samples.iter().map(|s| s / 50).collect();
        assert!(
            distinct.len() > 10,
            "jitter must spread retries, got {} buckets",
            distinct.len()
        );
        assert!(backoff_ms(4, 1000, 60_000, &mut rng) >= 4_000);
        assert!(backoff_ms(30, 1000, 60_000, &mut rng) < 90_000);
    }

    #[test]
    fn choose_skips_excluded_and_backed_off() {
        let mut cache = HostCache::default();
        for i in 0..3 {
            cache.insert(contact(i), 8);
        }
        let mut rng = Pcg32::seed_from_u64(5);
        let now = Instant::from_s(100);
        cache.defer(&PublicKey([0; 32]), now, 60_000);
        for _ in 0..20 {
            let chosen = cache
                .choose(now, &mut rng, 2, &[PublicKey([1; 32])])
                .unwrap();
            assert_eq!(chosen.key, PublicKey([2; 32]));
        }
        cache.defer(&PublicKey([2; 32]), now, 60_000);
        assert!(cache
            .choose(now, &mut rng, 2, &[PublicKey([1; 32])])
            .is_none());
        assert!(cache.next_eligible(&[PublicKey([1; 32])]).unwrap() > now);
    }
}
