//! Supernode membership: a SWIM-style protocol (random probing, suspicion,
//! refutation by incarnation, updates piggybacked on probes) that gives every
//! supernode the full member list with load figures — so most lookups take
//! one hop — and a capped Kademlia-bucket view when the network outgrows it.

use crate::time::Instant;
use peerline_proto::{
    Addr, Contact, MemberState, MemberUpdate, NodeId, PublicKey, GOSSIP_UPDATES_MAX,
    URGENT_PUSH_SEQUENCE,
};
use rand_core::Rng;
use std::hash::BuildHasher;

/// Most updates waiting to be piggybacked.
const BROADCAST_QUEUE_LEN_MAX: usize = 2048;
/// Newest queued updates searched for one to replace.
const BROADCAST_DEDUP_WINDOW: usize = 64;
/// Most tombstones remembered.
const TOMBSTONES_LEN_MAX: usize = 4096;

#[derive(Clone, Debug)]
pub struct Member {
    pub id: NodeId,
    pub update: MemberUpdate,
    pub state_since: Instant,
}

/// What applying an update did to the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Joined(NodeId),
    Left(NodeId),
    /// The member is now suspected of having failed.
    Suspected(NodeId),
    Updated,
    /// A rumour said we were suspect or dead, and we refuted it: the
    /// suspicion was false (or we came back).
    Refuted,
}

#[derive(Clone, Debug)]
struct Probe {
    target: NodeId,
    contact: Contact,
    sequence: u32,
    deadline: Instant,
    /// Pings sent to the target in this probe.
    attempts: u8,
}

/// Pings per probe before the target is suspected (one loss is not a failure).
const PROBE_ATTEMPTS_MAX: u8 = 2;

#[derive(Clone, Debug)]
pub struct Membership {
    self_id: NodeId,
    /// Our own entry as we announce it.
    pub me: MemberUpdate,
    /// Every known member (ourselves included), sorted by ID.
    members: Vec<Member>,
    /// The first 64 bits of each member's ID, in the same order: searches
    /// run over this dense array instead of the members themselves.
    prefixes: Vec<u64>,
    tombstones: Vec<(NodeId, u32, Instant)>,
    /// Updates waiting to be piggybacked, by how many more times each is to
    /// be sent (`broadcasts[n]`: n sends left; index 0 stays empty), oldest
    /// first within a count. Taking the freshest and dropping the
    /// most-repeated then cost a look at a few dozen buckets, not a pass
    /// over the queue: a supernode of a 2,500-member network applies
    /// thousands of updates a minute, and a scan per update was a fifth of
    /// a million-node run.
    broadcasts: Vec<Vec<MemberUpdate>>,
    probe: Option<Probe>,
    next_probe_at: Instant,
    sequence: u32,
    view_len_max: usize,
    bucket_len_max: usize,
    suspect_timeout_ms: u64,
    /// True once an update was refused because the view was full: lookups
    /// must then route iteratively.
    pub capped: bool,
    /// Failure news to push at once to a few members instead of waiting for
    /// piggybacking: spreads in O(log n) message delays, not probe periods.
    urgent: Vec<MemberUpdate>,
    /// Members currently suspected and since when (kept in step with their
    /// `state_since`), oldest first (each is appended when suspected, at the
    /// node's current time), so the next deadline is the first entry's: a
    /// crash wave makes a thousand suspects per supernode.
    suspects: Vec<(NodeId, Instant)>,
    /// Sum of every member's announced load, kept in step with `members`.
    load_total: u64,
    /// What members hold now, for recognising updates that change nothing.
    held: HeldUpdates,
}

/// What each member holds now, keyed by a fingerprint of its contact, so
/// a gossiped update that would change nothing is recognised with one
/// probe of a dense table — no ID hash, no search of the view.
///
/// SWIM sends every update ~3·log2 n times and each gossip message carries
/// up to 48, so nearly every update a supernode receives is one it holds
/// already or one an update it holds supersedes: at 1M clients (2,500
/// supernodes) hashing each update's contact to an ID and searching the
/// view for it was a fifth of the run.
///
/// A 4-way set-associative cache (a set is one cache line): an entry is
/// overwritten only when its set is full, and every change to (or removal
/// of) a member's update clears the entry of the old one, so an entry
/// present describes what a member holds now. Applying an update about
/// that member (same contact) changes nothing when its incarnation is
/// older, or when it is the same incarnation, state and load (the merge
/// rules only act on a newer incarnation, another state at the same one,
/// or another load): skipping it then is exact. The hash is keyed with a
/// secret of the node, so nobody can aim a contact at another's set.
///
/// Measured at 300k clients (750 supernodes), steady phase: with one entry
/// per set 71% of updates were skipped (27% more were older or equal ones
/// whose entry a collision had overwritten); with four ways, 90%.
#[derive(Clone)]
struct HeldUpdates {
    hasher: foldhash::quality::FixedState,
    /// A power of two long (or empty).
    sets: Vec<HeldSet>,
}

const HELD_WAYS: usize = 4;

#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct HeldSet([Held; HELD_WAYS]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    /// The contact's fingerprint; 0 is an empty entry.
    contact: u64,
    incarnation: u32,
    state: MemberState,
    load_pct: u8,
}

impl Held {
    const EMPTY: Held = Held {
        contact: 0,
        incarnation: 0,
        state: MemberState::Alive,
        load_pct: 0,
    };
}

impl std::fmt::Debug for HeldUpdates {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        // Thousands of entries, and the hasher's secret: neither belongs
        // in a debug print.
        write!(f, "HeldUpdates({} sets)", self.sets.len())
    }
}

impl HeldUpdates {
    fn new(seed: u64) -> Self {
        HeldUpdates {
            hasher: foldhash::quality::FixedState::with_seed(seed),
            sets: Vec::new(),
        }
    }

    fn fingerprint(&self, contact: &Contact) -> u64 {
        self.hasher.hash_one(contact) | 1
    }

    fn set(&self, fingerprint: u64) -> Option<usize> {
        let mask = self.sets.len().checked_sub(1)?;
        Some(fingerprint as usize & mask)
    }

    fn find(&self, fingerprint: u64) -> Option<(usize, usize)> {
        let set = self.set(fingerprint)?;
        let way = self.sets[set]
            .0
            .iter()
            .position(|held| held.contact == fingerprint)?;
        Some((set, way))
    }

    /// The incarnation held for this contact, if the table has it.
    fn incarnation(&self, contact: &Contact) -> Option<u32> {
        let (set, way) = self.find(self.fingerprint(contact))?;
        Some(self.sets[set].0[way].incarnation)
    }

    /// Whether applying `update` would change nothing.
    fn supersedes(&self, update: &MemberUpdate) -> bool {
        let Some((set, way)) = self.find(self.fingerprint(&update.contact)) else {
            return false;
        };
        let held = self.sets[set].0[way];
        update.incarnation < held.incarnation
            || (update.incarnation == held.incarnation
                && update.state == held.state
                && update.load_pct == held.load_pct)
    }

    /// Records what a member holds now; the table grows (and starts over:
    /// it is a cache) to twice as many entries as the view has members.
    fn insert(&mut self, update: &MemberUpdate, members: usize) {
        let sets = (2 * members / HELD_WAYS).next_power_of_two().max(16);
        if self.sets.len() < sets {
            self.sets = vec![HeldSet([Held::EMPTY; HELD_WAYS]); sets];
        }
        let contact = self.fingerprint(&update.contact);
        let Some(set) = self.set(contact) else {
            return;
        };
        let ways = &mut self.sets[set].0;
        let way = ways
            .iter()
            .position(|held| held.contact == contact)
            .or_else(|| ways.iter().position(|held| held.contact == 0))
            // A full set: the fingerprint's top bits pick whom to replace.
            .unwrap_or((contact >> 62) as usize % HELD_WAYS);
        ways[way] = Held {
            contact,
            incarnation: update.incarnation,
            state: update.state,
            load_pct: update.load_pct,
        };
    }

    /// A member no longer holds `update`.
    fn forget(&mut self, update: &MemberUpdate) {
        if let Some((set, way)) = self.find(self.fingerprint(&update.contact)) {
            self.sets[set].0[way] = Held::EMPTY;
        }
    }
}

/// How far ahead of our own incarnation a rumour about us may be and still
/// be refuted (load announcements and refutations advance it by one each).
const REFUTE_AHEAD_MAX: u32 = 1 << 20;
/// Announced load at which a member has no room left for another client.
pub const FULL_LOAD_PCT: u8 = 100;
/// Highest announced load at which a member is still named as an alternate.
/// A member just below full (a crash wave's survivor, flapping between 99
/// and 100 as its clients come and go) has room for a handful of clients,
/// and every busy supernode that names it sends it hundreds (a client
/// traced in a 100k crash wave met nine busy answers in 80 s, survivors
/// among them, backing off up to 15 s after each; with this margin the p99
/// re-attach fell from ~100 s to ~70 s). Announcements lag by up to
/// `load_announce_delta_pct`, so this leaves real room.
pub const ALTERNATE_LOAD_MAX_PCT: u8 = 90;

/// Most urgent updates waiting to be pushed.
const URGENT_LEN_MAX: usize = 64;

impl Membership {
    pub fn new(
        self_id: NodeId,
        me: MemberUpdate,
        now: Instant,
        view_len_max: usize,
        bucket_len_max: usize,
        suspect_timeout_ms: u64,
        filter_seed: u64,
    ) -> Self {
        let mut membership = Membership {
            self_id,
            me,
            members: Vec::new(),
            prefixes: Vec::new(),
            tombstones: Vec::new(),
            broadcasts: Vec::new(),
            probe: None,
            next_probe_at: now,
            sequence: 0,
            view_len_max: view_len_max.max(1),
            bucket_len_max: bucket_len_max.max(1),
            suspect_timeout_ms,
            capped: false,
            urgent: Vec::new(),
            suspects: Vec::new(),
            load_total: me.load_pct as u64,
            held: HeldUpdates::new(filter_seed),
        };
        membership.members.push(Member {
            id: self_id,
            update: me,
            state_since: now,
        });
        membership.prefixes.push(prefix(&self_id));
        membership.enqueue(me);
        membership
    }

    pub fn self_id(&self) -> NodeId {
        self.self_id
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    fn position(&self, id: &NodeId) -> Result<usize, usize> {
        let key = prefix(id);
        let start = interpolation_search(&self.prefixes, key);
        let mut at = start;
        while at < self.members.len() && self.prefixes[at] == key {
            match self.members[at].id.cmp(id) {
                std::cmp::Ordering::Less => at += 1,
                std::cmp::Ordering::Equal => return Ok(at),
                std::cmp::Ordering::Greater => break,
            }
        }
        Err(at)
    }

    /// Whether a live member (other than us) is reachable at `addr`: a
    /// linear scan, for rare checks only (relaying a punch offer).
    pub fn alive_at(&self, addr: &Addr) -> bool {
        self.members.iter().any(|m| {
            m.id != self.self_id
                && m.update.contact.addr == *addr
                && m.update.state != MemberState::Dead
        })
    }

    pub fn get(&self, id: &NodeId) -> Option<&Member> {
        self.position(id).ok().map(|i| &self.members[i])
    }

    /// Whether `id` is a member or died recently (its tombstone is kept).
    pub fn knows(&self, id: &NodeId) -> bool {
        self.get(id).is_some() || self.tombstones.iter().any(|(dead, _, _)| dead == id)
    }

    /// Announces a new load figure under a fresh incarnation.
    pub fn announce_load(&mut self, load_pct: u8, now: Instant) {
        self.me.load_pct = load_pct;
        self.me.incarnation = self.me.incarnation.wrapping_add(1);
        self.refresh_self(now);
    }

    /// Announces that we leave (graceful demotion or shutdown).
    pub fn announce_leaving(&mut self, now: Instant) {
        self.me.state = MemberState::Dead;
        self.me.incarnation = self.me.incarnation.wrapping_add(1);
        self.refresh_self(now);
        self.push_urgent(self.me);
    }

    fn refresh_self(&mut self, now: Instant) {
        let me = self.me;
        if let Ok(i) = self.position(&self.self_id.clone()) {
            self.set_update(i, me);
            self.members[i].state_since = now;
        }
        self.enqueue(me);
    }

    fn retransmissions(&self) -> u8 {
        let log2 = usize::BITS - self.members.len().leading_zeros();
        (3 * log2.max(1)).min(60) as u8
    }

    fn enqueue(&mut self, update: MemberUpdate) {
        let count = self.retransmissions() as usize;
        if self.broadcasts.len() <= count {
            self.broadcasts.resize_with(count + 1, Vec::new);
        }
        // Only the newest updates of the freshest count are checked for a
        // same-member update to replace: an older duplicate is harmless
        // (incarnations order them).
        let fresh = &mut self.broadcasts[count];
        let recent = fresh.len().saturating_sub(BROADCAST_DEDUP_WINDOW);
        if let Some(slot) = fresh[recent..]
            .iter_mut()
            .find(|u| u.contact.key == update.contact.key)
        {
            *slot = update;
            return;
        }
        if self.broadcast_len() >= BROADCAST_QUEUE_LEN_MAX {
            // Drop a quarter at once, the most-repeated (and, among equals,
            // the oldest) first: they have had the most chances to spread.
            let mut excess = BROADCAST_QUEUE_LEN_MAX / 4;
            for bucket in self.broadcasts.iter_mut() {
                let drop = bucket.len().min(excess);
                bucket.drain(..drop);
                shrink_if_sparse(bucket);
                excess -= drop;
                if excess == 0 {
                    break;
                }
            }
        }
        self.broadcasts[count].push(update);
    }

    /// Updates waiting to be piggybacked (a sum over a few dozen buckets).
    fn broadcast_len(&self) -> usize {
        self.broadcasts.iter().map(Vec::len).sum()
    }

    /// Drops the queued updates about a member that just left (the news of
    /// its death is queued after this). Left queued, its older `Alive`
    /// updates kept circulating for as long as a full queue holds an
    /// update (~13 minutes at 2,500 members), outlived the tombstone, and
    /// brought the dead member back to every view it had left: at 1M
    /// clients each supernode saw ~880 members leave in 30 minutes where
    /// ~110 really had, and every return and departure re-stored records.
    fn forget_broadcasts_about(&mut self, key: &PublicKey) {
        for bucket in self.broadcasts.iter_mut() {
            bucket.retain(|u| u.contact.key != *key);
        }
    }

    fn push_urgent(&mut self, update: MemberUpdate) {
        if self.urgent.len() < URGENT_LEN_MAX {
            self.urgent.push(update);
        }
    }

    /// Failure news to push right now.
    pub fn take_urgent(&mut self) -> Vec<MemberUpdate> {
        std::mem::take(&mut self.urgent)
    }

    /// Updates to piggyback on the next gossip message, freshest first.
    pub fn take_updates(&mut self) -> Vec<MemberUpdate> {
        let take = self.broadcast_len().min(GOSSIP_UPDATES_MAX);
        let mut out = Vec::with_capacity(take);
        // (update, sends left after this one), re-queued once all are taken
        // so that one message never carries an update twice.
        let mut again: Vec<(MemberUpdate, usize)> = Vec::with_capacity(take);
        for count in (1..self.broadcasts.len()).rev() {
            while out.len() < take {
                let Some(update) = self.broadcasts[count].pop() else {
                    break;
                };
                if self.superseded_here(&update) {
                    continue;
                }
                out.push(update);
                again.push((update, count - 1));
            }
            shrink_if_sparse(&mut self.broadcasts[count]);
            if out.len() == take {
                break;
            }
        }
        // Back in taking order reversed, so the freshest stays at the end
        // of its new count (taken first next time).
        for (update, left) in again.into_iter().rev() {
            if left > 0 {
                self.broadcasts[left].push(update);
            }
        }
        out
    }

    /// Whether a queued update is older than what we hold about its member
    /// now: a supernode filling up during the join ramp announces its load
    /// a dozen times, and each announcement used to be sent its full
    /// 3·log2 n times after the next one made it worthless (every receiver
    /// skipped it). Dropped when taken, it leaves its room to news. A
    /// member we hold nothing about (it left: its `Dead` update is queued)
    /// keeps its updates.
    fn superseded_here(&self, update: &MemberUpdate) -> bool {
        if update.contact.key == self.me.contact.key {
            return update.incarnation < self.me.incarnation;
        }
        self.held
            .incarnation(&update.contact)
            .is_some_and(|held| update.incarnation < held)
    }

    fn is_tombstoned(&self, id: &NodeId, incarnation: u32, now: Instant) -> bool {
        self.tombstones
            .iter()
            .any(|(dead, dead_incarnation, until)| {
                dead == id && incarnation <= *dead_incarnation && *until > now
            })
    }

    /// Whether a newcomer fits the view, evicting a member to make room if
    /// needed. Below the cap everyone fits (full membership). At the cap,
    /// Kademlia buckets decide, with far buckets (which cover more of the
    /// keyspace) allowed more entries: bucket `b` (IDs sharing `b` leading
    /// bits with ours) holds up to `max(bucket_len_max, view_len_max /
    /// 2^(b+1))`. Within a full bucket the members with the lowest
    /// [`admission_rank`] stay, so a view is a random sample that does not
    /// depend on the order members were heard of (syncs arrive in ID order,
    /// which would otherwise give every node the same view).
    fn admit(&mut self, id: &NodeId) -> bool {
        let full = self.members.len() >= self.view_len_max;
        if !full && self.bucket_len_max >= self.view_len_max {
            return true;
        }
        let bucket = self.self_id.common_prefix_len(id);
        let bucket_limit = self
            .bucket_len_max
            .max(self.view_len_max >> (bucket + 1).min(63));
        let in_bucket: Vec<usize> = (0..self.members.len())
            .filter(|i| {
                self.members[*i].id != self.self_id
                    && self.self_id.common_prefix_len(&self.members[*i].id) == bucket
            })
            .collect();
        if !full && in_bucket.len() < bucket_limit {
            return true;
        }
        self.capped = true;
        let rank = admission_rank(&self.self_id, id);
        let worst = in_bucket
            .into_iter()
            .max_by_key(|i| admission_rank(&self.self_id, &self.members[*i].id));
        match worst {
            Some(i) if admission_rank(&self.self_id, &self.members[i].id) > rank => {
                let evicted = self.members.remove(i);
                self.held.forget(&evicted.update);
                self.load_total -= evicted.update.load_pct as u64;
                self.prefixes.remove(i);
                if evicted.update.state == MemberState::Suspect {
                    self.track_suspect(evicted.id, false);
                }
                if self.probe.as_ref().is_some_and(|p| p.target == evicted.id) {
                    self.probe = None;
                }
                true
            }
            _ => false,
        }
    }

    /// Applies many updates at once (a sync page): newcomers are merged into
    /// the sorted view in one pass instead of one shifting insert each —
    /// a supernode joining a network of thousands learns them all at once.
    pub fn apply_batch(
        &mut self,
        updates: &[(NodeId, MemberUpdate)],
        now: Instant,
        tombstone_ttl_ms: u64,
    ) -> Vec<(Change, MemberUpdate)> {
        let mut changes = Vec::new();
        let mut fresh: Vec<Member> = Vec::new();
        let uncapped = self.bucket_len_max >= self.view_len_max;
        for (id, update) in updates {
            if let Some(pending) = fresh.iter_mut().find(|m| m.id == *id) {
                // The same newcomer twice in one batch: keep the newer word.
                if update.incarnation > pending.update.incarnation
                    && update.state != MemberState::Dead
                {
                    pending.update = *update;
                }
                continue;
            }
            let newcomer = *id != self.self_id
                && update.state != MemberState::Dead
                && self.position(id).is_err()
                && !self.is_tombstoned(id, update.incarnation, now);
            if newcomer && uncapped && self.members.len() + fresh.len() < self.view_len_max {
                fresh.push(Member {
                    id: *id,
                    update: *update,
                    state_since: now,
                });
            } else {
                changes.push((self.apply(*id, *update, now, tombstone_ttl_ms), *update));
            }
        }
        if fresh.is_empty() {
            return changes;
        }
        fresh.sort_unstable_by_key(|m| m.id);
        for member in &fresh {
            self.load_total += member.update.load_pct as u64;
            self.enqueue(member.update);
            changes.push((Change::Joined(member.id), member.update));
        }
        let old = std::mem::take(&mut self.members);
        let mut merged = Vec::with_capacity(old.len() + fresh.len());
        let (mut a, mut b) = (old.into_iter().peekable(), fresh.into_iter().peekable());
        loop {
            let take_old = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => x.id < y.id,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            merged.push(if take_old { a.next() } else { b.next() }.expect("peeked"));
        }
        self.prefixes = merged.iter().map(|m| prefix(&m.id)).collect();
        self.members = merged;
        changes
    }

    /// Whether applying `update` would surely change nothing: a member
    /// holds it already, or a newer incarnation (see [`HeldUpdates`]).
    pub fn supersedes(&self, update: &MemberUpdate) -> bool {
        self.held.supersedes(update)
    }

    /// Applies one update (SWIM merge rules). `id` must be the contact's
    /// verified node ID.
    pub fn apply(
        &mut self,
        id: NodeId,
        update: MemberUpdate,
        now: Instant,
        tombstone_ttl_ms: u64,
    ) -> Change {
        let change = self.merge(id, update, now, tombstone_ttl_ms);
        if id != self.self_id {
            if let Ok(i) = self.position(&id) {
                if self.members[i].update.contact == update.contact {
                    let held = self.members[i].update;
                    self.held.insert(&held, self.members.len());
                }
            }
        }
        change
    }

    fn merge(
        &mut self,
        id: NodeId,
        update: MemberUpdate,
        now: Instant,
        tombstone_ttl_ms: u64,
    ) -> Change {
        if id == self.self_id {
            return self.apply_about_self(update, now);
        }
        match self.position(&id) {
            Err(_) => {
                if update.state == MemberState::Dead {
                    return Change::None;
                }
                if self.is_tombstoned(&id, update.incarnation, now) || !self.admit(&id) {
                    return Change::None;
                }
                // Eviction may have shifted positions.
                let insert_at = self.position(&id).unwrap_err();
                self.load_total += update.load_pct as u64;
                self.members.insert(
                    insert_at,
                    Member {
                        id,
                        update,
                        state_since: now,
                    },
                );
                self.prefixes.insert(insert_at, prefix(&id));
                self.enqueue(update);
                Change::Joined(id)
            }
            Ok(i) => {
                let current = self.members[i].update;
                let newer = update.incarnation > current.incarnation;
                let same = update.incarnation == current.incarnation;
                match update.state {
                    MemberState::Alive if newer => {
                        self.set_update(i, update);
                        self.members[i].state_since = now;
                        self.enqueue(update);
                        if current.state == MemberState::Suspect {
                            // A refutation: spread it as fast as the suspicion.
                            self.track_suspect(id, false);
                            self.push_urgent(update);
                        }
                        Change::Updated
                    }
                    MemberState::Alive if same && current.state == MemberState::Alive => {
                        // The sender field of a probe: refresh contact/load quietly.
                        let mut refreshed = current;
                        refreshed.load_pct = update.load_pct;
                        self.set_update(i, refreshed);
                        Change::None
                    }
                    MemberState::Suspect
                        if newer || (same && current.state == MemberState::Alive) =>
                    {
                        self.set_update(i, update);
                        self.members[i].state_since = now;
                        self.enqueue(update);
                        self.track_suspect(id, true);
                        if current.state == MemberState::Alive {
                            self.push_urgent(update);
                            Change::Suspected(id)
                        } else {
                            Change::Updated
                        }
                    }
                    MemberState::Dead if newer || same => {
                        self.remove(i, update.incarnation, now, tombstone_ttl_ms);
                        self.enqueue(update);
                        self.push_urgent(update);
                        Change::Left(id)
                    }
                    _ => Change::None,
                }
            }
        }
    }

    fn apply_about_self(&mut self, update: MemberUpdate, now: Instant) -> Change {
        // A rumour far ahead of any incarnation we used is forged or corrupt:
        // following it could exhaust the counter.
        let plausible = update.incarnation <= self.me.incarnation.saturating_add(REFUTE_AHEAD_MAX);
        if update.state != MemberState::Alive
            && update.incarnation >= self.me.incarnation
            && plausible
            && self.me.state == MemberState::Alive
        {
            // Refute the rumour with a newer incarnation, as urgently as the
            // rumour itself spread: a refutation that loses the race against
            // the suspicion timeout turns one lost probe into a
            // network-wide death and rejoin.
            self.me.incarnation = update.incarnation.saturating_add(1);
            self.refresh_self(now);
            self.push_urgent(self.me);
            return Change::Refuted;
        }
        Change::None
    }

    fn remove(&mut self, index: usize, incarnation: u32, now: Instant, tombstone_ttl_ms: u64) {
        let removed = self.members.remove(index);
        self.held.forget(&removed.update);
        self.load_total -= removed.update.load_pct as u64;
        self.prefixes.remove(index);
        if removed.update.state == MemberState::Suspect {
            self.track_suspect(removed.id, false);
        }
        self.tombstones.retain(|(_, _, until)| *until > now);
        if self.tombstones.len() >= TOMBSTONES_LEN_MAX {
            self.tombstones.remove(0);
        }
        self.tombstones
            .push((removed.id, incarnation, now.add_ms(tombstone_ttl_ms)));
        self.forget_broadcasts_about(&removed.update.contact.key);
        if self.probe.as_ref().is_some_and(|p| p.target == removed.id) {
            self.probe = None;
        }
    }

    /// A random member other than ourselves.
    pub fn random_other(&self, rng: &mut impl Rng) -> Option<&Member> {
        if self.members.len() < 2 {
            return None;
        }
        let mut index = rng.next_u32() as usize % self.members.len();
        if self.members[index].id == self.self_id {
            index = (index + 1) % self.members.len();
        }
        Some(&self.members[index])
    }

    /// Up to `count` members with spare capacity (lowest load first, ties by
    /// ID distance from `near`), never ourselves.
    pub fn least_loaded(&self, count: usize, near: &NodeId, rng: &mut impl Rng) -> Vec<Contact> {
        // Sample instead of sorting the whole view: cheap and spreads clients.
        let mut sample: Vec<&Member> = Vec::with_capacity(count * 4);
        for _ in 0..count * 4 {
            if let Some(member) = self.random_other(rng) {
                // A full (or nearly full) member is no alternate: naming it
                // sends the client into one more busy answer and a longer
                // back-off.
                if member.update.state == MemberState::Alive
                    && member.update.load_pct <= ALTERNATE_LOAD_MAX_PCT
                    && !sample.iter().any(|m| m.id == member.id)
                {
                    sample.push(member);
                }
            }
        }
        sample.sort_by_key(|m| (m.update.load_pct, m.id.distance(near)));
        sample
            .into_iter()
            .take(count)
            .map(|m| m.update.contact)
            .collect()
    }

    /// Average announced load of the view, in percent.
    pub fn average_load_pct(&self) -> u8 {
        debug_assert_eq!(
            self.load_total,
            self.members
                .iter()
                .map(|m| m.update.load_pct as u64)
                .sum::<u64>()
        );
        (self.load_total / self.members.len().max(1) as u64).min(255) as u8
    }

    /// Average load counting our own current load instead of the last one
    /// we announced (announcements lag by up to `load_announce_delta_pct`).
    pub fn average_load_with_own(&self, own_load_pct: u8) -> u8 {
        let total = self.load_total - self.me.load_pct as u64 + own_load_pct as u64;
        (total / self.members.len().max(1) as u64).min(255) as u8
    }

    /// Replaces a member's update, keeping the load total in step.
    fn set_update(&mut self, index: usize, update: MemberUpdate) {
        self.held.forget(&self.members[index].update);
        self.load_total -= self.members[index].update.load_pct as u64;
        self.load_total += update.load_pct as u64;
        self.members[index].update = update;
    }

    /// The `k` members closest to `key` by XOR distance (ourselves included),
    /// nearest first. O(k · log n) on the sorted view.
    pub fn closest(&self, key: &NodeId, k: usize) -> Vec<&Member> {
        let mut indices: Vec<usize> = Vec::with_capacity(k + 4);
        collect_closest(&self.prefixes, 0, key, 0, k, &mut indices);
        let mut out: Vec<&Member> = indices.into_iter().map(|i| &self.members[i]).collect();
        out.sort_by_key(|m| m.id.distance(key));
        out.truncate(k);
        out
    }

    /// Whether `candidate` is certainly *not* among the `k` members closest
    /// to `key`: at least `k` members share a longer prefix with `key` than
    /// it does (each of those is closer). Two binary searches; a `false`
    /// answer means "maybe" and calls for [`Membership::closest`].
    pub fn surely_outside_closest(&self, key: &NodeId, candidate: &NodeId, k: usize) -> bool {
        let shared = key.common_prefix_len(candidate);
        if shared >= 63 {
            return false;
        }
        let mask = u64::MAX >> (shared + 1);
        let key_prefix = prefix(key);
        let (low, high) = (key_prefix & !mask, key_prefix | mask);
        let closer = self.prefixes.partition_point(|p| *p <= high)
            - self.prefixes.partition_point(|p| *p < low);
        closer >= k
    }

    /// Members whose IDs fall in the smallest aligned subtree around `id`
    /// holding at least `count` members: the range of keys whose replica
    /// sets can change when `id` joins or leaves.
    pub fn neighbourhood_range(&self, id: &NodeId, count: usize) -> (NodeId, NodeId) {
        // Members in the subtree shrink as the prefix grows: binary-search
        // the longest prefix (up to the 64 bits the dense array resolves)
        // whose subtree still holds `count` members.
        let key = prefix(id);
        let members_within = |prefix_len: usize| {
            let mask = if prefix_len >= 64 {
                0
            } else {
                u64::MAX >> prefix_len
            };
            let (low, high) = (key & !mask, key | mask);
            self.prefixes.partition_point(|p| *p <= high)
                - self.prefixes.partition_point(|p| *p < low)
        };
        let (mut enough, mut too_few) = (0usize, 65usize);
        while too_few - enough > 1 {
            let middle = (enough + too_few) / 2;
            if members_within(middle) >= count {
                enough = middle;
            } else {
                too_few = middle;
            }
        }
        subtree_bounds(id, enough)
    }

    // ---- probing ----

    /// Next time the membership protocol needs attention.
    pub fn next_deadline(&self) -> Instant {
        // One probe at a time: the next starts once the current one ends.
        let probe_deadline = self
            .probe
            .as_ref()
            .map_or(self.next_probe_at, |p| p.deadline);
        probe_deadline.min(self.next_suspect_deadline())
    }

    fn next_suspect_deadline(&self) -> Instant {
        // Suspects are appended as they are suspected: the first is the oldest.
        self.suspects.first().map_or(Instant::NEVER, |(_, since)| {
            since.add_ms(self.suspect_timeout_ms)
        })
    }

    /// Keeps the suspect index in step with a member's state.
    fn track_suspect(&mut self, id: NodeId, suspected: bool) {
        self.suspects.retain(|(s, _)| *s != id);
        if suspected {
            if let Ok(i) = self.position(&id) {
                let since = self.members[i].state_since;
                debug_assert!(self.suspects.last().is_none_or(|(_, last)| *last <= since));
                self.suspects.push((id, since));
            }
        }
    }

    /// Starts the next probe if due; returns (target, sequence). Its second
    /// ping is due `retry_after_ms` later (`retry_probe`).
    pub fn start_probe(
        &mut self,
        now: Instant,
        period_ms: u64,
        retry_after_ms: u64,
        rng: &mut impl Rng,
    ) -> Option<(Contact, u32)> {
        if now < self.next_probe_at || self.probe.is_some() {
            return None;
        }
        self.next_probe_at = now.add_ms(period_ms);
        let target = self.random_other(rng)?.clone();
        self.sequence = self.sequence.wrapping_add(1);
        if self.sequence == URGENT_PUSH_SEQUENCE {
            // Never a probe's: its pings would not be acknowledged.
            self.sequence += 1;
        }
        self.probe = Some(Probe {
            target: target.id,
            contact: target.update.contact,
            sequence: self.sequence,
            deadline: now.add_ms(retry_after_ms),
            attempts: 1,
        });
        Some((target.update.contact, self.sequence))
    }

    /// Pings the probe target again if its first ping went unanswered.
    pub fn retry_probe(&mut self, now: Instant, ack_timeout_ms: u64) -> Option<(Contact, u32)> {
        let probe = self.probe.as_mut()?;
        if probe.deadline > now || probe.attempts >= PROBE_ATTEMPTS_MAX {
            return None;
        }
        probe.attempts += 1;
        probe.deadline = now.add_ms(ack_timeout_ms);
        Some((probe.contact, probe.sequence))
    }

    pub fn ack_received(&mut self, sequence: u32) {
        if self.probe.as_ref().is_some_and(|p| p.sequence == sequence) {
            self.probe = None;
        }
    }

    /// Expires probes (target becomes suspect) and suspicions (member
    /// declared dead). Returns what changed, with the members' keys.
    pub fn expire(&mut self, now: Instant, tombstone_ttl_ms: u64) -> Vec<(Change, Contact)> {
        let suspect_timeout_ms = self.suspect_timeout_ms;
        let mut changes = Vec::new();
        if let Some(probe) = self.probe.clone() {
            if probe.deadline <= now && probe.attempts >= PROBE_ATTEMPTS_MAX {
                self.probe = None;
                if let Ok(i) = self.position(&probe.target) {
                    if self.members[i].update.state == MemberState::Alive {
                        let mut suspect = self.members[i].update;
                        suspect.state = MemberState::Suspect;
                        self.set_update(i, suspect);
                        self.members[i].state_since = now;
                        self.enqueue(suspect);
                        self.push_urgent(suspect);
                        self.track_suspect(probe.target, true);
                        changes.push((Change::Suspected(probe.target), suspect.contact));
                    }
                }
            }
        }
        let expired: Vec<NodeId> = self
            .suspects
            .iter()
            .take_while(|(_, since)| since.add_ms(suspect_timeout_ms) <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Ok(i) = self.position(&id) else { continue };
            let member = &self.members[i];
            debug_assert!(self.suspects.contains(&(id, member.state_since)));
            if member.state_since.add_ms(suspect_timeout_ms) <= now {
                let mut dead = member.update;
                dead.state = MemberState::Dead;
                self.remove(i, dead.incarnation, now, tombstone_ttl_ms);
                self.enqueue(dead);
                self.push_urgent(dead);
                changes.push((Change::Left(id), dead.contact));
            }
        }
        changes
    }

    /// Members from `cursor` on, for a sync page.
    pub fn page(&self, cursor: usize, len: usize) -> (Vec<MemberUpdate>, Option<usize>) {
        let end = (cursor + len).min(self.members.len());
        let page = self
            .members
            .get(cursor..end)
            .unwrap_or(&[])
            .iter()
            .map(|m| m.update)
            .collect();
        let next = (end < self.members.len()).then_some(end);
        (page, next)
    }
}

/// Lowest and highest IDs sharing the first `prefix_len` bits with `id`.
fn subtree_bounds(id: &NodeId, prefix_len: usize) -> (NodeId, NodeId) {
    let mut low = *id;
    let mut high = *id;
    for bit in prefix_len..256 {
        let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
        low.0[byte] &= !mask;
        high.0[byte] |= mask;
    }
    (low, high)
}

/// A per-viewer pseudo-random rank of a member (lower stays in a capped view).
fn admission_rank(viewer: &NodeId, member: &NodeId) -> u64 {
    let salt = u64::from_le_bytes(viewer.0[24..32].try_into().expect("8 bytes"));
    let mut x = prefix(member) ^ salt;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Gives back most of a broadcast bucket's allocation once it is mostly
/// empty: a burst of updates passes through every count's bucket in turn,
/// and buckets that kept their peak size held megabytes per supernode.
fn shrink_if_sparse(bucket: &mut Vec<MemberUpdate>) {
    if bucket.capacity() > 32 && bucket.len() < bucket.capacity() / 4 {
        bucket.shrink_to(bucket.len() * 2);
    }
}

fn prefix(id: &NodeId) -> u64 {
    u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"))
}

/// The first index whose prefix is not below `key` (`partition_point(|p| p
/// < key)`), found by interpolation: node IDs are hashes, so their prefixes
/// are spread evenly and the first guess lands within a few entries. A
/// binary search over a 2,500-member view touched a dozen cache lines per
/// update applied, and a supernode applies every gossip update it gets.
fn interpolation_search(prefixes: &[u64], key: u64) -> usize {
    let (mut low, mut high) = (0usize, prefixes.len());
    // Invariant: everything before `low` is < key, everything from `high` on is >= key.
    for _ in 0..4 {
        if high - low <= 16 {
            break;
        }
        let (first, last) = (prefixes[low], prefixes[high - 1]);
        if key <= first {
            return low;
        }
        if key > last {
            return high;
        }
        let span = (last - first) as u128;
        let offset = ((key - first) as u128 * (high - 1 - low) as u128 / span.max(1)) as usize;
        let guess = (low + offset).clamp(low, high - 1);
        if prefixes[guess] < key {
            low = guess + 1;
            // Step ahead by a small stride to bound `high` quickly.
            let mut step = 8;
            while low + step < high && prefixes[low + step] < key {
                low += step + 1;
                step *= 2;
            }
            high = high.min(low + step);
        } else {
            high = guess;
            let mut step = 8;
            while high > low + step && prefixes[high - step - 1] >= key {
                high -= step + 1;
                step *= 2;
            }
            low = low.max(high.saturating_sub(step));
        }
    }
    low + prefixes[low..high].partition_point(|p| *p < key)
}

/// Collects (as indices from `offset`) at least the `need` XOR-closest
/// members of a sorted slice of ID prefixes that all share their first `bit`
/// bits: the half matching `key`'s next bit first, then the other half.
/// Below 64 bits the prefixes cannot split a slice, so it is taken whole and
/// the caller's sort by full distance decides.
fn collect_closest(
    prefixes: &[u64],
    offset: usize,
    key: &NodeId,
    bit: usize,
    need: usize,
    out: &mut Vec<usize>,
) {
    if need == 0 || prefixes.is_empty() {
        return;
    }
    if prefixes.len() <= need || bit >= 64 {
        out.extend(offset..offset + prefixes.len());
        return;
    }
    let mask = 1u64 << (63 - bit);
    let split = prefixes.partition_point(|p| p & mask == 0);
    let (zeros, ones) = prefixes.split_at(split);
    let ((near, near_offset), (far, far_offset)) = if key.bit(bit) {
        ((ones, offset + split), (zeros, offset))
    } else {
        ((zeros, offset), (ones, offset + split))
    };
    let before = out.len();
    collect_closest(near, near_offset, key, bit + 1, need, out);
    let taken = out.len() - before;
    if taken < need {
        collect_closest(far, far_offset, key, bit + 1, need - taken, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerline_proto::Addr;
    use peerline_proto::PublicKey;
    use rand_core::SeedableRng;
    use rand_pcg::Pcg32;

    #[test]
    fn interpolation_search_agrees_with_a_binary_search() {
        let mut rng = Pcg32::seed_from_u64(7);
        for case in 0..400 {
            let len = (rng.next_u32() % 3000) as usize;
            let mut prefixes: Vec<u64> = (0..len)
                .map(|_| match case % 4 {
                    // Even (hashes), clustered, few distinct values, skewed.
                    0 => rng.next_u64(),
                    1 => rng.next_u64() >> 40,
                    2 => (rng.next_u32() % 5) as u64,
                    _ => rng.next_u64().saturating_mul(rng.next_u64() % 3),
                })
                .collect();
            prefixes.sort_unstable();
            for probe in 0..50 {
                let key = if probe % 2 == 0 && !prefixes.is_empty() {
                    prefixes[(rng.next_u32() as usize) % len].wrapping_add((probe % 3) as u64)
                } else {
                    rng.next_u64()
                };
                assert_eq!(
                    interpolation_search(&prefixes, key),
                    prefixes.partition_point(|p| *p < key),
                    "case {case} key {key}"
                );
            }
            assert_eq!(interpolation_search(&prefixes, 0), 0);
            assert_eq!(
                interpolation_search(&prefixes, u64::MAX),
                prefixes.partition_point(|p| *p < u64::MAX)
            );
        }
    }

    fn update(i: u32) -> (NodeId, MemberUpdate) {
        let id = NodeId(*blake3::hash(&i.to_le_bytes()).as_bytes());
        let contact = Contact {
            key: PublicKey(id.0),
            id_nonce: 0,
            addr: Addr::from_ipv4_u32(i, 1),
        };
        (
            id,
            MemberUpdate {
                contact,
                incarnation: 1,
                state: MemberState::Alive,
                load_pct: 0,
            },
        )
    }

    fn view(n: u32) -> Membership {
        let (id, me) = update(0);
        let mut m = Membership::new(id, me, Instant::ZERO, 100_000, 100_000, 4000, 7);
        for i in 1..n {
            let (id, u) = update(i);
            m.apply(id, u, Instant::ZERO, 1000);
        }
        m
    }

    /// Skipping the updates `supersedes` names changes nothing: a view
    /// that applies every update and one that skips those end up the same
    /// after every step, through suspicions, deaths, refutations, address
    /// changes, evictions from a capped view and the table growing.
    #[test]
    fn skipping_superseded_updates_changes_nothing() {
        for (view_len_max, bucket_len_max) in [(100_000, 100_000), (24, 4)] {
            let (id, me) = update(0);
            let new =
                || Membership::new(id, me, Instant::ZERO, view_len_max, bucket_len_max, 4000, 7);
            let (mut plain, mut filtered) = (new(), new());
            let mut rng = Pcg32::seed_from_u64(view_len_max as u64);
            let mut skipped = 0;
            for step in 0..20_000u64 {
                let now = Instant(step * 50_000);
                if step % 40 == 0 {
                    // Probe timeouts and suspicion expiry change updates too.
                    let a = plain.expire(now, 1000);
                    let b = filtered.expire(now, 1000);
                    assert_eq!(a.len(), b.len());
                }
                let (id, mut u) = update(1 + rng.next_u32() % 60);
                u.incarnation = 1 + rng.next_u32() % 6;
                u.state = match rng.next_u32() % 8 {
                    0 => MemberState::Suspect,
                    1 => MemberState::Dead,
                    _ => MemberState::Alive,
                };
                u.load_pct = [0, 40, 100][rng.next_u32() as usize % 3];
                if rng.next_u32() % 10 == 0 {
                    u.contact.addr.port = 2;
                }
                let expected = plain.apply(id, u, now, 1000);
                if filtered.supersedes(&u) {
                    skipped += 1;
                    assert_eq!(expected, Change::None, "step {step}: {u:?}");
                } else {
                    assert_eq!(filtered.apply(id, u, now, 1000), expected);
                }
                let view = |m: &Membership| {
                    m.members()
                        .iter()
                        .map(|m| (m.id, m.update, m.state_since))
                        .collect::<Vec<_>>()
                };
                assert_eq!(view(&plain), view(&filtered), "step {step}");
                assert_eq!(plain.broadcast_len(), filtered.broadcast_len());
            }
            // The filter did its job, not only no harm.
            assert!(skipped > 2_000, "{skipped} of 20,000 skipped");
        }
    }

    /// Far more members than entries: full sets replace an entry, and a
    /// lookup then finds the member's latest entry or none, never an old
    /// one; a forgotten update is no longer named.
    #[test]
    fn held_table_evicts_from_full_sets_and_never_answers_stale() {
        let mut held = HeldUpdates::new(7);
        let updates: Vec<MemberUpdate> = (1..400).map(|i| update(i).1).collect();
        // Sized for 8 members: 16 sets of 4, so most of the 399 are evicted.
        for u in &updates {
            held.insert(u, 8);
        }
        assert_eq!(held.sets.len(), 16);
        let present = updates.iter().filter(|u| held.supersedes(u)).count();
        assert!(
            present > 0 && present <= 16 * HELD_WAYS,
            "{present} present"
        );
        for u in &updates {
            // Newer news about any member is never skipped.
            let mut newer = *u;
            newer.incarnation += 1;
            assert!(!held.supersedes(&newer));
            // A member that moved on: its older update is skipped, the
            // one it held before (same incarnation, other load) is not.
            if held.supersedes(u) {
                let mut moved = newer;
                moved.load_pct = 50;
                held.forget(u);
                assert!(!held.supersedes(u));
                held.insert(&moved, 8);
                assert!(held.supersedes(u), "older than what it holds");
                let mut other_load = moved;
                other_load.load_pct = 60;
                assert!(!held.supersedes(&other_load));
            }
        }
    }

    #[test]
    fn full_members_are_never_named_as_alternates() {
        let (id, me) = update(0);
        let mut m = Membership::new(id, me, Instant::ZERO, 100_000, 100_000, 4000, 7);
        for i in 1..40 {
            let (id, mut u) = update(i);
            // Every third member is full, every third nearly full; the
            // others have room.
            u.load_pct = match i % 3 {
                0 => FULL_LOAD_PCT,
                1 => ALTERNATE_LOAD_MAX_PCT + 1 + (i % 9) as u8,
                _ => (i % 91) as u8,
            };
            m.apply(id, u, Instant::ZERO, 1000);
        }
        let mut rng = Pcg32::seed_from_u64(3);
        for _ in 0..50 {
            let named = m.least_loaded(8, &id, &mut rng);
            assert!(!named.is_empty());
            for contact in named {
                let member = m
                    .members()
                    .iter()
                    .find(|x| x.update.contact == contact)
                    .unwrap();
                assert!(
                    member.update.load_pct <= ALTERNATE_LOAD_MAX_PCT,
                    "a (nearly) full member named"
                );
            }
        }
    }

    #[test]
    fn closest_matches_a_full_sort() {
        let m = view(500);
        let mut rng = Pcg32::seed_from_u64(9);
        for _ in 0..200 {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            let key = NodeId(key);
            let mut all: Vec<&Member> = m.members().iter().collect();
            all.sort_by_key(|x| x.id.distance(&key));
            let expected: Vec<NodeId> = all.iter().take(8).map(|x| x.id).collect();
            let got: Vec<NodeId> = m.closest(&key, 8).iter().map(|x| x.id).collect();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn swim_rules_suspect_refute_dead() {
        let mut m = view(10);
        let (id3, mut u3) = update(3);
        u3.state = MemberState::Suspect;
        assert_eq!(
            m.apply(id3, u3, Instant::ZERO, 1000),
            Change::Suspected(id3)
        );
        // A stale alive of the same incarnation does not clear suspicion...
        u3.state = MemberState::Alive;
        assert_eq!(m.apply(id3, u3, Instant::ZERO, 1000), Change::None);
        assert_eq!(m.get(&id3).unwrap().update.state, MemberState::Suspect);
        // ...a refutation with a higher incarnation does.
        u3.incarnation = 2;
        assert_eq!(m.apply(id3, u3, Instant::ZERO, 1000), Change::Updated);
        // Dead removes and tombstones: an old alive cannot revive it.
        u3.state = MemberState::Dead;
        assert_eq!(m.apply(id3, u3, Instant::ZERO, 1000), Change::Left(id3));
        u3.state = MemberState::Alive;
        assert_eq!(m.apply(id3, u3, Instant::from_ms(10), 1000), Change::None);
        // A restart (newer incarnation) rejoins.
        u3.incarnation = 3;
        assert_eq!(
            m.apply(id3, u3, Instant::from_ms(10), 1000),
            Change::Joined(id3)
        );
    }

    /// Every update still to be sent, message after message.
    fn drain_updates(m: &mut Membership) -> Vec<MemberUpdate> {
        std::iter::from_fn(|| Some(m.take_updates()).filter(|taken| !taken.is_empty()))
            .flatten()
            .collect()
    }

    /// An update overtaken by a newer one about the same member is not sent
    /// again: the newer one and news about others still are.
    #[test]
    fn superseded_updates_are_dropped_when_taken() {
        let mut m = view(3);
        while !m.take_updates().is_empty() {}
        let (id1, mut u1) = update(1);
        u1.incarnation = 2;
        u1.load_pct = 40;
        assert_eq!(m.apply(id1, u1, Instant::ZERO, 1000), Change::Updated);
        // Sent once: now one count lower than fresh news would be.
        assert_eq!(m.take_updates(), vec![u1]);
        let mut newer = u1;
        newer.incarnation = 3;
        newer.load_pct = 45;
        assert_eq!(m.apply(id1, newer, Instant::ZERO, 1000), Change::Updated);
        let (id2, mut u2) = update(2);
        u2.incarnation = 2;
        assert_eq!(m.apply(id2, u2, Instant::ZERO, 1000), Change::Updated);
        let sent = drain_updates(&mut m);
        assert!(
            !sent.contains(&u1),
            "the overtaken load figure was sent again"
        );
        assert!(sent.contains(&newer) && sent.contains(&u2));
        // Our own overtaken announcements are dropped the same way.
        m.announce_load(10, Instant::ZERO);
        let first = m.me;
        m.take_updates();
        m.announce_load(20, Instant::ZERO);
        let own = drain_updates(&mut m);
        assert!(!own.contains(&first) && own.contains(&m.me));
    }

    #[test]
    fn a_refuted_rumour_is_reported() {
        let mut m = view(3);
        let (id0, mut rumour) = update(0);
        rumour.state = MemberState::Suspect;
        assert_eq!(m.apply(id0, rumour, Instant::ZERO, 1000), Change::Refuted);
        assert_eq!(m.me.incarnation, 2);
        // The same rumour again is old news.
        assert_eq!(m.apply(id0, rumour, Instant::ZERO, 1000), Change::None);
    }

    #[test]
    fn a_dead_members_queued_alive_updates_go_with_it() {
        let mut m = view(10);
        let (id3, mut u3) = update(3);
        // Its newer alive update is queued to be passed on…
        u3.incarnation = 5;
        assert_eq!(m.apply(id3, u3, Instant::ZERO, 1000), Change::Updated);
        // …when it dies.
        u3.state = MemberState::Dead;
        assert_eq!(m.apply(id3, u3, Instant::ZERO, 1000), Change::Left(id3));
        // Only the news of its death is passed on about it from now on: an
        // old alive update outliving the tombstone would bring it back in
        // every view that took it.
        let mut about = Vec::new();
        loop {
            let taken = m.take_updates();
            if taken.is_empty() {
                break;
            }
            about.extend(
                taken
                    .into_iter()
                    .filter(|u| u.contact.key == u3.contact.key),
            );
        }
        assert!(!about.is_empty());
        assert!(about.iter().all(|u| u.state == MemberState::Dead));
        // Why it matters: once the tombstone has expired, an old alive
        // update that reached us would make it a member again.
        u3.state = MemberState::Alive;
        assert_eq!(
            m.apply(id3, u3, Instant::from_ms(5000), 1000),
            Change::Joined(id3),
            "the tombstone lasts tombstone_ttl_ms only"
        );
    }

    #[test]
    fn suspicion_about_self_is_refuted() {
        let mut m = view(3);
        let (id0, mut me) = update(0);
        me.state = MemberState::Suspect;
        m.apply(id0, me, Instant::ZERO, 1000);
        assert_eq!(m.me.incarnation, 2);
        assert_eq!(m.me.state, MemberState::Alive);
        assert!(m
            .take_updates()
            .iter()
            .any(|u| u.contact.key == me.contact.key && u.incarnation == 2));
    }

    /// A probe's sequence wraps past `URGENT_PUSH_SEQUENCE`: pings carrying
    /// it would go unanswered and raise a false suspicion.
    #[test]
    fn probe_sequences_skip_the_urgent_push_sequence() {
        let mut m = view(2);
        let mut rng = Pcg32::seed_from_u64(1);
        m.sequence = u32::MAX;
        let (_, sequence) = m.start_probe(Instant::ZERO, 1000, 500, &mut rng).unwrap();
        assert_ne!(sequence, URGENT_PUSH_SEQUENCE);
        assert_eq!(sequence, URGENT_PUSH_SEQUENCE.wrapping_add(1));
    }

    #[test]
    fn unanswered_probe_leads_to_suspect_then_dead() {
        let mut m = view(2);
        let mut rng = Pcg32::seed_from_u64(1);
        let (target, _) = m.start_probe(Instant::ZERO, 1000, 500, &mut rng).unwrap();
        assert!(
            m.expire(Instant::from_ms(550), 1000).is_empty(),
            "one lost ping is not a failure"
        );
        assert!(m.retry_probe(Instant::from_ms(550), 50).is_some());
        let id = m
            .members()
            .iter()
            .find(|x| x.update.contact.key == target.key)
            .unwrap()
            .id;
        assert_eq!(
            m.expire(Instant::from_ms(600), 1000),
            vec![(Change::Suspected(id), target)]
        );
        assert_eq!(m.get(&id).unwrap().update.state, MemberState::Suspect);
        assert_eq!(
            m.expire(Instant::from_ms(4700), 1000),
            vec![(Change::Left(id), target)]
        );
        assert_eq!(
            m.take_urgent().len(),
            2,
            "suspicion and death are pushed at once"
        );
        assert!(m.get(&id).is_none());
    }

    #[test]
    fn capped_view_keeps_bucket_limits() {
        let (id, me) = update(0);
        let mut m = Membership::new(id, me, Instant::ZERO, 64, 8, 4000, 7);
        for i in 1..2000 {
            let (id, u) = update(i);
            m.apply(id, u, Instant::ZERO, 1000);
        }
        assert!(m.len() <= 64);
        assert!(m.capped);
        let far_bucket = m
            .members()
            .iter()
            .filter(|x| id.common_prefix_len(&x.id) == 0)
            .count();
        assert!(far_bucket <= 32, "far half holds up to 64 / 2");
        let third_bucket = m
            .members()
            .iter()
            .filter(|x| id.common_prefix_len(&x.id) == 3)
            .count();
        assert!(third_bucket <= 8);
    }

    #[test]
    fn gossip_queue_sends_each_update_its_count_freshest_first_and_stays_bounded() {
        let mut m = view(3000);
        // 3,000 joins overflowed the queue: it dropped the most-repeated.
        assert!(m.broadcast_len() <= BROADCAST_QUEUE_LEN_MAX);
        let count = m.retransmissions() as usize;
        let mut sent: std::collections::HashMap<PublicKey, usize> = Default::default();
        let mut late = Vec::new();
        for round in 0u32.. {
            // Updates keep arriving while the burst drains, and once it has
            // drained; each goes out in the very next message.
            if round % 40 == 0 && round < 4000 {
                let (id, mut u) = update(10_000 + round);
                u.incarnation = 1;
                m.apply(id, u, Instant::ZERO, 1000);
                assert!(m.broadcast_len() <= BROADCAST_QUEUE_LEN_MAX);
                late.push((u.contact.key, m.broadcast_len()));
            }
            let taken = m.take_updates();
            if taken.is_empty() && round >= 4000 {
                break;
            }
            if round % 40 == 0 && round < 4000 {
                assert!(taken
                    .iter()
                    .any(|u| Some(&u.contact.key) == late.last().map(|l| &l.0)));
            }
            assert!(taken.len() <= GOSSIP_UPDATES_MAX);
            let mut keys: Vec<_> = taken.iter().map(|u| u.contact.key).collect();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), taken.len(), "an update twice in one message");
            for update in &taken {
                *sent.entry(update.contact.key).or_default() += 1;
            }
        }
        assert!(sent.values().all(|n| *n <= count));
        // An update that arrived once the queue had room went out exactly
        // its count.
        let roomy: Vec<_> = late.iter().filter(|(_, len)| *len < 1000).collect();
        assert!(roomy.len() > 10);
        for (key, _) in roomy {
            assert_eq!(sent.get(key), Some(&count));
        }
        // What drained gave its buckets' memory back.
        assert!(m.broadcasts.iter().all(|b| b.capacity() <= 64));
    }

    #[test]
    fn gossip_queue_is_bounded_and_drains() {
        let mut m = view(300);
        let mut total = 0;
        for _ in 0..10_000 {
            let taken = m.take_updates();
            if taken.is_empty() {
                break;
            }
            assert!(taken.len() <= GOSSIP_UPDATES_MAX);
            total += taken.len();
        }
        assert!(m.take_updates().is_empty());
        assert!(total >= 300);
    }
}

#[cfg(test)]
mod neighbourhood_tests {
    use super::*;
    use peerline_proto::Addr;
    use peerline_proto::PublicKey;

    /// A full view of `n` members with pseudo-random IDs.
    pub(super) fn full_view(n: u32) -> (Membership, Vec<NodeId>) {
        let ids: Vec<NodeId> = (0..n)
            .map(|i| NodeId(*blake3::hash(&i.to_be_bytes()).as_bytes()))
            .collect();
        let me = MemberUpdate {
            contact: Contact {
                key: PublicKey(ids[0].0),
                id_nonce: 0,
                addr: Addr::default(),
            },
            incarnation: 1,
            state: MemberState::Alive,
            load_pct: 0,
        };
        let mut m = Membership::new(ids[0], me, Instant::ZERO, 100_000, 100_000, 1000, 7);
        for id in &ids[1..] {
            let update = MemberUpdate {
                contact: Contact {
                    key: PublicKey(id.0),
                    ..me.contact
                },
                ..me
            };
            m.apply(*id, update, Instant::ZERO, 1000);
        }
        (m, ids)
    }

    #[test]
    fn neighbourhood_is_the_smallest_subtree_with_enough_members() {
        let (m, ids) = full_view(300);
        for id in ids.iter().take(50) {
            let (low, high) = m.neighbourhood_range(id, 12);
            let inside = ids.iter().filter(|x| **x >= low && **x <= high).count();
            assert!(inside >= 12, "only {inside} members in the range");
            // One bit longer would hold fewer than 12: the range is minimal.
            let bits = (0..64).take_while(|b| low.bit(*b) == high.bit(*b)).count();
            let (low2, high2) = subtree_bounds(id, bits + 1);
            let inside2 = ids.iter().filter(|x| **x >= low2 && **x <= high2).count();
            assert!(inside2 < 12, "a narrower range holds {inside2}");
        }
    }
}

#[cfg(test)]
mod outside_tests {
    use super::*;

    #[test]
    fn surely_outside_never_contradicts_closest() {
        let (m, ids) = super::neighbourhood_tests::full_view(500);
        let mut filtered = 0;
        for key_seed in 0..200u32 {
            let key = NodeId(*blake3::hash(&(key_seed + 10_000).to_le_bytes()).as_bytes());
            let closest: Vec<NodeId> = m.closest(&key, 8).iter().map(|x| x.id).collect();
            for id in &ids {
                if m.surely_outside_closest(&key, id, 8) {
                    filtered += 1;
                    assert!(!closest.contains(id));
                }
            }
        }
        assert!(
            filtered > 90_000,
            "the filter should rule out most members ({filtered})"
        );
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use peerline_proto::Addr;
    use peerline_proto::PublicKey;

    fn member(i: u32) -> (NodeId, MemberUpdate) {
        let id = NodeId(*blake3::hash(&i.to_le_bytes()).as_bytes());
        let update = MemberUpdate {
            contact: Contact {
                key: PublicKey(id.0),
                id_nonce: 0,
                addr: Addr::from_ipv4_u32(i, 1),
            },
            incarnation: 1,
            state: MemberState::Alive,
            load_pct: (i % 100) as u8,
        };
        (id, update)
    }

    #[test]
    fn batch_equals_one_by_one() {
        let (self_id, me) = member(0);
        let mut one = Membership::new(self_id, me, Instant::ZERO, 100_000, 100_000, 1000, 7);
        let mut batch = one.clone();
        let updates: Vec<(NodeId, MemberUpdate)> = (1..400).chain(100..150).map(member).collect();
        for (id, update) in &updates {
            one.apply(*id, *update, Instant::ZERO, 1000);
        }
        let changes = batch.apply_batch(&updates, Instant::ZERO, 1000);
        let ids = |m: &Membership| m.members().iter().map(|x| x.id).collect::<Vec<_>>();
        assert_eq!(ids(&one), ids(&batch));
        assert_eq!(one.average_load_pct(), batch.average_load_pct());
        assert_eq!(
            changes
                .iter()
                .filter(|(c, _)| matches!(c, Change::Joined(_)))
                .count(),
            399
        );
        for (change, update) in changes {
            if let Change::Joined(id) = change {
                assert_eq!(
                    id,
                    NodeId(update.contact.key.0),
                    "change paired with its own update"
                );
            }
        }
    }
}
