//! The supernode's part in password login (`bundle.rs` has the
//! cryptography): replicating key bundles at `bundle_key(account)`,
//! holding OPRF key shares at `share_key(account, i)` and answering
//! evaluations within each account's guess budget, and fetching a bundle
//! and the names of its share holders for an attached device.
//!
//! **The shares never pass through a third node.** The device sends each
//! `ShareDealPush` straight to the holders its supernode named (over the
//! QUIC connection pinned to the holder's key), and a holder hands a share
//! on only to the supernodes closest to that share's own key. A supernode
//! that relayed deals would see all `n` shares, hence the OPRF key: it could
//! then guess passwords offline at Argon2id's cost, which is what the
//! threshold exists to prevent. Evaluations go straight to the holders too
//! (one round trip instead of two; a blinded element and its answer reveal
//! nothing to anyone else either way).
//!
//! **Re-replication.** Every sweep, a bundle or share whose replica set
//! changed since it was last pushed from here is pushed to the new set
//! (`due_pushes`, like name records). A holder that accepts a new deal
//! pushes it to the other holders of its index at its next sweep (they
//! ignore a deal they hold, before any check), so a deal one of them missed
//! still reaches it. When *every* holder of an index dies between two
//! sweeps, that share is gone: logins still work with `t` of the other
//! indices, and each successful login re-deals all `n` indices under a
//! higher epoch (`client/bundles.rs`), which restores it. With fewer than
//! `t` indices alive nobody can open the bundle — not even with the right
//! password — until the account's root key re-deals from a device that
//! still holds it.
//!
//! A holder keeps one share per account (`BundleHolder`: one node must
//! never count twice towards `t`), so the holders of index `i` are the
//! closest to its share key *that hold no lower index*
//! ([`share_holder_sets`]). In a network with fewer than
//! `n × SHARE_REPLICAS` supernodes the last indices get fewer holders; after
//! churn moves a node from one index's set to another's, it keeps the
//! share it has until a re-deal (a higher epoch) gives it the other.

use super::SupernodeState;
use crate::account::verify_device_list;
use crate::bundle::{
    bundle_key, newer_bundle, share_key, verify_bundle, BundleHolder, HolderError,
    BUNDLE_HOLDERS_MAX, HELD_SHARES_MAX,
};
use crate::durable::{decode, encode, DirtyKeys, DurableChanges, DurableError, DurableTable};
use crate::identity::CryptoMode;
use crate::membership::Membership;
use crate::node::Io;
use crate::registry::PLAUSIBLE_REACH;
use crate::time::Instant;
use peerline_proto::{
    Addr, BlindedElement, BoundedVec, Contact, DeviceList, KeyBundle, Message, NodeId, PublicKey,
    ShareDeal, ShareHolder,
};
use std::collections::BTreeMap;

/// Supernodes each share index is kept on (the closest to its share key).
/// Three: one loss is repaired at the next sweep, and each replica keeps
/// its own guess budget, so more replicas would mean more guesses.
pub const SHARE_REPLICAS: usize = 3;
/// Most key bundles one supernode replicates (~330 bytes each: ~66 MiB).
pub const BUNDLES_HELD_MAX: usize = 200_000;
/// Bundle fetches one supernode runs for its clients at once.
const BUNDLE_QUERIES_IN_FLIGHT_MAX: usize = 512;
/// Signature checks (bundles, deals) and evaluations per second, across
/// every account: each costs about one signature check.
pub(super) const BUNDLE_WORK_PER_S: u64 = 100;
pub(super) const BUNDLE_WORK_BURST: u64 = 200;

/// A bundle this supernode replicates, checked.
#[derive(Clone, Debug)]
struct HeldBundle {
    bundle: Box<KeyBundle>,
    /// Fingerprint of the replica set it was last pushed to (0: never).
    pushed_to: u64,
}

/// An account's device list this supernode replicates (beside its
/// bundle, at the same key), checked.
#[derive(Clone, Debug)]
struct HeldList {
    list: Box<DeviceList>,
    /// Fingerprint of the replica set it was last pushed to (0: never).
    pushed_to: u64,
}

/// What a supernode keeps on disk about key bundles: the bundles it
/// replicates and the OPRF shares it holds (with their guess budgets).
/// Kept by `Node`: survives restarts and role changes, like the `NameBook`.
#[derive(Debug)]
pub struct BundleBook {
    holder: BundleHolder,
    bundles: BTreeMap<PublicKey, HeldBundle>,
    /// The device lists it replicates (at most `BUNDLES_HELD_MAX`).
    lists: BTreeMap<PublicKey, HeldList>,
    /// Per held share, the fingerprint of the holder set it was last
    /// pushed to (absent or 0: never).
    shares_pushed_to: BTreeMap<PublicKey, u64>,
    /// Bundles and device lists kept since the driver last took them
    /// (`durable.rs`).
    dirty_bundles: DirtyKeys,
    dirty_lists: DirtyKeys,
}

impl BundleBook {
    pub fn new(mode: CryptoMode) -> BundleBook {
        BundleBook {
            holder: BundleHolder::new(mode, HELD_SHARES_MAX),
            bundles: BTreeMap::new(),
            lists: BTreeMap::new(),
            shares_pushed_to: BTreeMap::new(),
            dirty_bundles: DirtyKeys::default(),
            dirty_lists: DirtyKeys::default(),
        }
    }

    /// From now on, remember what changed for [`BundleBook::take_changes`].
    pub(crate) fn track_changes(&mut self) {
        self.dirty_bundles.switch_on();
        self.dirty_lists.switch_on();
        self.holder.track_changes();
    }

    /// The bundles and shares changed since the last call, as rows.
    pub(crate) fn take_changes(&mut self, now: Instant, out: &mut DurableChanges) {
        for key in self.dirty_bundles.take() {
            let value = self
                .bundles
                .get(&PublicKey(key))
                .map(|held| encode(&*held.bundle));
            out.push(DurableTable::KeyBundles, key, value);
        }
        for key in self.dirty_lists.take() {
            let value = self
                .lists
                .get(&PublicKey(key))
                .map(|held| encode(&*held.list));
            out.push(DurableTable::DeviceLists, key, value);
        }
        self.holder.take_changes(now, out);
    }

    /// Takes back a stored device list (not checked again: this node
    /// checked it).
    pub(crate) fn restore_device_list(
        &mut self,
        key: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(), DurableError> {
        let table = DurableTable::DeviceLists;
        let list: DeviceList = decode(table, key, bytes)?;
        if list.body.account_key.0 != *key {
            return Err(DurableError::new(
                table,
                key,
                "is a list of another account",
            ));
        }
        if self.lists.len() >= BUNDLES_HELD_MAX && !self.lists.contains_key(&PublicKey(*key)) {
            return Err(DurableError::new(table, key, "is one row too many"));
        }
        let held = HeldList {
            list: Box::new(list),
            pushed_to: 0,
        };
        self.lists.insert(PublicKey(*key), held);
        Ok(())
    }

    /// Takes back a stored bundle (not checked again: this node checked it).
    pub(crate) fn restore_bundle(
        &mut self,
        key: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(), DurableError> {
        let table = DurableTable::KeyBundles;
        let bundle: KeyBundle = decode(table, key, bytes)?;
        if bundle.body.account_key.0 != *key {
            return Err(DurableError::new(
                table,
                key,
                "is a bundle of another account",
            ));
        }
        if self.bundles.len() >= BUNDLES_HELD_MAX && !self.bundles.contains_key(&PublicKey(*key)) {
            return Err(DurableError::new(table, key, "is one row too many"));
        }
        self.bundles.insert(
            PublicKey(*key),
            HeldBundle {
                bundle: Box::new(bundle),
                pushed_to: 0,
            },
        );
        Ok(())
    }

    pub(crate) fn restore_share(
        &mut self,
        now: Instant,
        key: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(), DurableError> {
        self.holder.restore_share(now, key, bytes)
    }

    /// After a restart nothing was pushed from here yet.
    pub fn forget_pushes(&mut self) {
        self.shares_pushed_to.clear();
        for held in self.bundles.values_mut() {
            held.pushed_to = 0;
        }
        for held in self.lists.values_mut() {
            held.pushed_to = 0;
        }
    }

    /// The account's device list this node replicates, if any.
    pub fn device_list(&self, account: &PublicKey) -> Option<&DeviceList> {
        self.lists.get(account).map(|held| &*held.list)
    }

    pub fn bundle(&self, account: &PublicKey) -> Option<&KeyBundle> {
        self.bundles.get(account).map(|held| &*held.bundle)
    }

    /// The index of the share held for `account` (diagnostics and tests).
    pub fn share_index(&self, account: &PublicKey) -> Option<u8> {
        self.holder.index(account)
    }

    /// Replaces a bundle held by a tampered copy (the simulation of a
    /// corrupt replica; tests only).
    pub fn replace_bundle_unchecked(&mut self, bundle: KeyBundle) {
        self.bundles.insert(
            bundle.body.account_key,
            HeldBundle {
                bundle: Box::new(bundle),
                pushed_to: u64::MAX,
            },
        );
    }
}

/// A fetch run for a client at the replicas of `bundle_key(account)`:
/// its bundle (and share holders), or its device list.
#[derive(Debug)]
pub(crate) struct BundleQuery {
    client: Addr,
    client_query_id: u32,
    account: PublicKey,
    wanted: Wanted,
    outstanding: Vec<Addr>,
    deadline: Instant,
}

/// What a [`BundleQuery`] fetches, with the best answer so far.
#[derive(Debug)]
enum Wanted {
    /// The bundle and the holders of share indices `1..=indices`.
    Bundle {
        indices: u8,
        best: Option<Box<KeyBundle>>,
    },
    DeviceList {
        best: Option<Box<DeviceList>>,
    },
}

impl SupernodeState {
    /// Takes one unit of the bundle work budget.
    fn bundle_work(&mut self, io: &mut Io) -> bool {
        self.bundle_budget.try_take(io.now.instant, 1, 0)
    }

    /// Keeps a valid bundle when it is newer than the one held. Older and
    /// equal versions are ignored before their check.
    fn keep_bundle(&mut self, io: &mut Io, bundle: Box<KeyBundle>) -> bool {
        let account = bundle.body.account_key;
        let held = io.bundles.bundles.get(&account);
        if held.is_some_and(|held| held.bundle.body.version >= bundle.body.version) {
            return false;
        }
        if held.is_none() && io.bundles.bundles.len() >= BUNDLES_HELD_MAX {
            return false;
        }
        if !self.bundle_work(io) {
            return false;
        }
        if verify_bundle(io.mode, &bundle).is_err() {
            io.stats.signatures_rejected += 1;
            return false;
        }
        let keep = match io.bundles.bundles.get(&account) {
            Some(held) => std::ptr::eq(newer_bundle(&held.bundle, &bundle), &*bundle),
            None => true,
        };
        if keep {
            io.bundles.dirty_bundles.mark(account.0);
            io.bundles.bundles.insert(
                account,
                HeldBundle {
                    bundle,
                    pushed_to: 0,
                },
            );
        }
        keep
    }

    pub(super) fn on_bundle_store(&mut self, io: &mut Io, from: Addr, bundle: Box<KeyBundle>) {
        let key = bundle_key(&bundle.body.account_key);
        if self.clients.contains_key(&from) {
            // From a device: checked here first (no forwarding junk to
            // `replication_k` replicas), then every replica gets it
            // (ourselves included).
            if !self.bundle_work(io) {
                return;
            }
            if verify_bundle(io.mode, &bundle).is_err() {
                io.stats.signatures_rejected += 1;
                return;
            }
            let store = |bundle| Message::BundleStore { bundle };
            return self.store_at_replicas(io, &key, bundle, store, Self::keep_bundle);
        }
        if self.plausible_replica(io, &key) {
            self.keep_bundle(io, bundle);
        }
    }

    /// A record from an attached device, checked: to every replica of
    /// `key` (`wrap` makes the message), ourselves included (`keep`).
    fn store_at_replicas<T: Clone>(
        &mut self,
        io: &mut Io,
        key: &NodeId,
        record: Box<T>,
        wrap: impl Fn(Box<T>) -> Message,
        keep: fn(&mut Self, &mut Io, Box<T>) -> bool,
    ) {
        let replicas = closest_contacts(&self.membership, key, io.params.replication_k);
        for (id, contact) in replicas {
            if id == self.node_id {
                keep(self, io, record.clone());
            } else {
                io.send(contact.addr, &wrap(record.clone()));
            }
        }
    }

    /// Whether this node may be among the replicas of `key` (a record
    /// from another member is kept only then).
    fn plausible_replica(&self, io: &Io, key: &NodeId) -> bool {
        let reach = PLAUSIBLE_REACH * io.params.replication_k;
        !self
            .membership
            .surely_outside_closest(key, &self.node_id, reach)
    }

    pub(super) fn on_bundle_fetch(
        &mut self,
        io: &mut Io,
        from: Addr,
        query_id: u32,
        account: PublicKey,
        indices: u8,
    ) {
        if !self.clients.contains_key(&from) {
            if indices > 0 {
                // A device asks through a supernode it is attached to.
                return io.send(from, &Message::NotAttached);
            }
            // A replica's answer: what it holds, no holders.
            let bundle = io.bundles.bundle(&account).cloned().map(Box::new);
            let answer = Message::BundleFetchResponse {
                query_id,
                bundle,
                holders: BoundedVec::new(),
            };
            return io.send(from, &answer);
        }
        // Our own copy is checked like a replica's answer.
        let mut best = None;
        if let Some(held) = io.bundles.bundle(&account).cloned() {
            if self.bundle_work(io) && verify_bundle(io.mode, &held).is_ok() {
                best = Some(Box::new(held));
            }
        }
        let wanted = Wanted::Bundle {
            indices: indices.min(BUNDLE_HOLDERS_MAX),
            best,
        };
        self.start_replica_query(io, from, query_id, account, wanted);
    }

    /// Asks the other replicas of `bundle_key(account)` for what `wanted`
    /// names, on behalf of the attached client at `client`.
    fn start_replica_query(
        &mut self,
        io: &mut Io,
        client: Addr,
        client_query_id: u32,
        account: PublicKey,
        wanted: Wanted,
    ) {
        let mut query = BundleQuery {
            client,
            client_query_id,
            account,
            wanted,
            outstanding: Vec::new(),
            deadline: io.now.instant.add_ms(io.params.find_request_timeout_ms),
        };
        if self.bundle_queries.len() >= BUNDLE_QUERIES_IN_FLIGHT_MAX {
            return self.answer_replica_query(io, query);
        }
        let own_query_id = self.next_bundle_query_id();
        let key = bundle_key(&account);
        for (id, contact) in closest_contacts(&self.membership, &key, io.params.replication_k) {
            if id != self.node_id {
                query.outstanding.push(contact.addr);
                let fetch = match query.wanted {
                    Wanted::Bundle { .. } => Message::BundleFetch {
                        query_id: own_query_id,
                        account,
                        indices: 0,
                    },
                    Wanted::DeviceList { .. } => Message::DeviceListFetch {
                        query_id: own_query_id,
                        account,
                    },
                };
                io.send(contact.addr, &fetch);
            }
        }
        self.bundle_queries.insert(own_query_id, query);
        self.finish_bundle_query_if_done(io, own_query_id);
    }

    /// A replica's answer to a query: counted once per replica asked.
    /// Returns the query's account when `from` was awaited.
    fn replica_answered(&mut self, from: Addr, query_id: u32) -> Option<PublicKey> {
        let query = self.bundle_queries.get_mut(&query_id)?;
        let slot = query.outstanding.iter().position(|addr| *addr == from)?;
        query.outstanding.swap_remove(slot);
        Some(query.account)
    }

    fn next_bundle_query_id(&mut self) -> u32 {
        self.next_query_id = self.next_query_id.wrapping_add(1);
        self.next_query_id
    }

    pub(super) fn on_bundle_fetch_response(
        &mut self,
        io: &mut Io,
        from: Addr,
        query_id: u32,
        bundle: Option<Box<KeyBundle>>,
    ) {
        let Some(account) = self.replica_answered(from, query_id) else {
            return;
        };
        let held_version = match self.bundle_queries.get(&query_id).map(|q| &q.wanted) {
            Some(Wanted::Bundle { best, .. }) => best.as_ref().map(|b| b.body.version),
            _ => return,
        };
        if let Some(bundle) = bundle {
            let newer = held_version.is_none_or(|held| bundle.body.version > held);
            if bundle.body.account_key == account && newer && self.bundle_work(io) {
                if verify_bundle(io.mode, &bundle).is_ok() {
                    if let Some(BundleQuery {
                        wanted: Wanted::Bundle { best, .. },
                        ..
                    }) = self.bundle_queries.get_mut(&query_id)
                    {
                        *best = Some(bundle);
                    }
                } else {
                    // A replica holding a bundle that does not verify is lying.
                    io.stats.signatures_rejected += 1;
                }
            }
        }
        self.finish_bundle_query_if_done(io, query_id);
    }

    fn finish_bundle_query_if_done(&mut self, io: &mut Io, query_id: u32) {
        let done = self
            .bundle_queries
            .get(&query_id)
            .is_some_and(|q| q.outstanding.is_empty() || q.deadline <= io.now.instant);
        if done {
            if let Some(query) = self.bundle_queries.remove(&query_id) {
                self.answer_replica_query(io, query);
            }
        }
    }

    /// Tells the client what the replicas answered: the newest device
    /// list, or the newest bundle and the holders of each share index (the
    /// bundle's count, at least the one asked for).
    fn answer_replica_query(&mut self, io: &mut Io, query: BundleQuery) {
        let (indices, best) = match query.wanted {
            Wanted::Bundle { indices, best } => (indices, best),
            Wanted::DeviceList { best } => {
                let answer = Message::DeviceListFetchResponse {
                    query_id: query.client_query_id,
                    list: best,
                };
                return io.send(query.client, &answer);
            }
        };
        let bundle_indices = best.as_ref().map_or(0, |b| b.body.sharing.holders);
        let indices = indices.max(bundle_indices).min(BUNDLE_HOLDERS_MAX);
        let mut holders = BoundedVec::new();
        for (index, set) in share_holder_sets(&self.membership, &query.account, indices) {
            for (_, contact) in set {
                let holder = ShareHolder { index, contact };
                if !holders.push(holder) {
                    debug_assert!(false, "16 indices × 3 holders fit");
                }
            }
        }
        let answer = Message::BundleFetchResponse {
            query_id: query.client_query_id,
            bundle: best,
            holders,
        };
        io.send(query.client, &answer);
    }

    /// Keeps a valid device list when its version is higher than the one
    /// held. Lower and equal versions are ignored before their check.
    fn keep_device_list(&mut self, io: &mut Io, list: Box<DeviceList>) -> bool {
        let account = list.body.account_key;
        let held = io.bundles.lists.get(&account);
        if held.is_some_and(|held| !list.supersedes(held.list.body.version)) {
            return false;
        }
        if held.is_none() && io.bundles.lists.len() >= BUNDLES_HELD_MAX {
            return false;
        }
        if !self.device_list_checks(io, &list) {
            return false;
        }
        let held = HeldList { list, pushed_to: 0 };
        io.bundles.dirty_lists.mark(account.0);
        io.bundles.lists.insert(account, held);
        true
    }

    /// One unit of the work budget and the list's signature.
    fn device_list_checks(&mut self, io: &mut Io, list: &DeviceList) -> bool {
        if !self.bundle_work(io) {
            return false;
        }
        let tolerance_s = io.params.clock_skew_tolerance_s;
        let valid = verify_device_list(io.mode, list, io.now.unix_s, tolerance_s).is_ok();
        if !valid {
            io.stats.signatures_rejected += 1;
        }
        valid
    }

    pub(super) fn on_device_list_store(&mut self, io: &mut Io, from: Addr, list: Box<DeviceList>) {
        let key = bundle_key(&list.body.account_key);
        if self.clients.contains_key(&from) {
            // From a device: checked here first, then every replica gets it.
            if !self.device_list_checks(io, &list) {
                return;
            }
            let store = |list| Message::DeviceListStore { list };
            return self.store_at_replicas(io, &key, list, store, Self::keep_device_list);
        }
        if self.plausible_replica(io, &key) {
            self.keep_device_list(io, list);
        }
    }

    pub(super) fn on_device_list_fetch(
        &mut self,
        io: &mut Io,
        from: Addr,
        query_id: u32,
        account: PublicKey,
    ) {
        if !self.clients.contains_key(&from) {
            // Another supernode asks this replica: what it holds.
            let list = io.bundles.device_list(&account).cloned().map(Box::new);
            let answer = Message::DeviceListFetchResponse { query_id, list };
            return io.send(from, &answer);
        }
        let best = io.bundles.device_list(&account).cloned().map(Box::new);
        let wanted = Wanted::DeviceList { best };
        self.start_replica_query(io, from, query_id, account, wanted);
    }

    pub(super) fn on_device_list_fetch_response(
        &mut self,
        io: &mut Io,
        from: Addr,
        query_id: u32,
        list: Option<Box<DeviceList>>,
    ) {
        let Some(account) = self.replica_answered(from, query_id) else {
            return;
        };
        let held_version = match self.bundle_queries.get(&query_id).map(|q| &q.wanted) {
            Some(Wanted::DeviceList { best }) => best.as_ref().map(|l| l.body.version),
            _ => return,
        };
        if let Some(list) = list {
            let newer = held_version.is_none_or(|held| list.supersedes(held));
            if list.body.account_key == account && newer && self.device_list_checks(io, &list) {
                if let Some(BundleQuery {
                    wanted: Wanted::DeviceList { best },
                    ..
                }) = self.bundle_queries.get_mut(&query_id)
                {
                    *best = Some(list);
                }
            }
        }
        self.finish_bundle_query_if_done(io, query_id);
    }

    /// A share from its account's device or from another holder of its
    /// index. Taken only when this node may be among the closest to the
    /// share's key; a deal of an epoch held already is ignored unchecked.
    pub(super) fn on_share_deal_push(&mut self, io: &mut Io, deal: Box<ShareDeal>) {
        let body = &deal.body;
        let key = share_key(&body.account_key, body.index);
        let reach = PLAUSIBLE_REACH * SHARE_REPLICAS * usize::from(body.index.max(1));
        if self
            .membership
            .surely_outside_closest(&key, &self.node_id, reach)
        {
            return;
        }
        let holder = &io.bundles.holder;
        let news = holder.would_take(&body.account_key, body.bundle_version, body.epoch);
        if !news || !self.bundle_work(io) {
            return;
        }
        match io.bundles.holder.accept_deal(io.now.instant, &deal) {
            Ok(()) => {
                // Pushed to the other holders of the index at the next sweep.
                io.bundles.shares_pushed_to.insert(body.account_key, 0);
            }
            Err(HolderError::BadSignature | HolderError::BadShare) => {
                io.stats.signatures_rejected += 1
            }
            Err(_) => {}
        }
    }

    pub(super) fn on_oprf_evaluate(
        &mut self,
        io: &mut Io,
        from: Addr,
        query_id: u32,
        account: PublicKey,
        blinded: BlindedElement,
    ) {
        if !self.bundle_work(io) {
            let wait_ms = self.bundle_budget.wait_ms(io.now.instant, 1, 0).max(1);
            let retry_after_ms = u32::try_from(wait_ms).unwrap_or(u32::MAX);
            let refused = Message::OprfRefused {
                query_id,
                retry_after_ms,
            };
            return io.send(from, &refused);
        }
        let answer = match io
            .bundles
            .holder
            .evaluate(io.now.instant, &account, &blinded)
        {
            Ok(answer) => Message::OprfAnswer {
                query_id,
                index: answer.index,
                bundle_version: answer.bundle_version,
                epoch: answer.epoch,
                evaluation: answer.evaluation,
            },
            Err(HolderError::Refused { retry_after_ms }) => Message::OprfRefused {
                query_id,
                retry_after_ms: u32::try_from(retry_after_ms.max(1)).unwrap_or(u32::MAX),
            },
            Err(_) => Message::OprfRefused {
                query_id,
                retry_after_ms: 0,
            },
        };
        io.send(from, &answer);
    }

    pub(super) fn expire_bundle_queries(&mut self, io: &mut Io) {
        let now = io.now.instant;
        let late: Vec<u32> = self
            .bundle_queries
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for query_id in late {
            self.finish_bundle_query_if_done(io, query_id);
        }
    }

    pub(super) fn bundles_deadline(&self) -> Instant {
        self.bundle_queries
            .values()
            .map(|q| q.deadline)
            .min()
            .unwrap_or(Instant::NEVER)
    }

    /// Pushes each bundle and share this node holds to its replica set
    /// when that set changed (or, for a share, when a new deal came), so
    /// they outlive their holders. A share goes only to the holders of its
    /// own index.
    pub(super) fn re_replicate_bundles(&mut self, io: &mut Io) {
        let replication_k = io.params.replication_k;
        let mut sends: Vec<(Addr, Message)> = Vec::new();
        let (membership, own) = (&self.membership, self.node_id);
        for (account, held) in io.bundles.bundles.iter_mut() {
            let store = || Message::BundleStore {
                bundle: held.bundle.clone(),
            };
            let targets =
                due_replicas(membership, own, account, replication_k, &mut held.pushed_to);
            sends.extend(targets.into_iter().map(|addr| (addr, store())));
        }
        for (account, held) in io.bundles.lists.iter_mut() {
            let store = || Message::DeviceListStore {
                list: held.list.clone(),
            };
            let targets =
                due_replicas(membership, own, account, replication_k, &mut held.pushed_to);
            sends.extend(targets.into_iter().map(|addr| (addr, store())));
        }
        let accounts: Vec<PublicKey> = io.bundles.holder.accounts().copied().collect();
        for account in accounts {
            let (Some(index), Some(deal)) = (
                io.bundles.holder.index(&account),
                io.bundles.holder.deal(&account),
            ) else {
                continue;
            };
            let targets = share_holder_sets(&self.membership, &account, index)
                .pop()
                .map_or_else(Vec::new, |(_, set)| set);
            let fingerprint = crate::registry::replica_fingerprint(&targets);
            let pushed = io.bundles.shares_pushed_to.entry(account).or_insert(0);
            if *pushed == fingerprint {
                continue;
            }
            *pushed = fingerprint;
            for (id, contact) in targets {
                if id != self.node_id {
                    let push = Message::ShareDealPush {
                        deal: Box::new(deal.clone()),
                    };
                    sends.push((contact.addr, push));
                }
            }
        }
        for (to, message) in sends {
            io.send(to, &message);
        }
    }
}

/// The holders of share indices `1..=indices` of `account`: for each index
/// in turn, the `SHARE_REPLICAS` members closest to its share key that
/// hold no lower index (ourselves included). With XOR distance the
/// closest sets of unrelated keys coincide often in a small network (16
/// supernodes have only ~5 distinct closest-3 sets), and a node keeps one
/// share per account: without the exclusion, indices went unheld.
/// Every node with the same view computes the same sets; the set of index
/// `i` depends only on the indices below it.
pub fn share_holder_sets(
    membership: &Membership,
    account: &PublicKey,
    indices: u8,
) -> Vec<(u8, Vec<(NodeId, Contact)>)> {
    let mut taken: Vec<NodeId> = Vec::new();
    let mut sets = Vec::with_capacity(usize::from(indices));
    for index in 1..=indices.min(BUNDLE_HOLDERS_MAX) {
        let wanted = SHARE_REPLICAS * usize::from(index);
        let set: Vec<(NodeId, Contact)> =
            closest_contacts(membership, &share_key(account, index), wanted)
                .into_iter()
                .filter(|(id, _)| !taken.contains(id))
                .take(SHARE_REPLICAS)
                .collect();
        taken.extend(set.iter().map(|(id, _)| *id));
        sets.push((index, set));
    }
    sets
}

/// The other replicas of `account`'s bundle key to push its record to,
/// when that set changed since `pushed_to` (which then becomes the set's
/// fingerprint); none otherwise.
fn due_replicas(
    membership: &Membership,
    own: NodeId,
    account: &PublicKey,
    replication_k: usize,
    pushed_to: &mut u64,
) -> Vec<Addr> {
    let targets = closest_contacts(membership, &bundle_key(account), replication_k);
    let fingerprint = crate::registry::replica_fingerprint(&targets);
    if fingerprint == *pushed_to {
        return Vec::new();
    }
    *pushed_to = fingerprint;
    targets
        .into_iter()
        .filter(|(id, _)| *id != own)
        .map(|(_, contact)| contact.addr)
        .collect()
}

/// The `k` members closest to `key` (ourselves included), nearest first.
fn closest_contacts(membership: &Membership, key: &NodeId, k: usize) -> Vec<(NodeId, Contact)> {
    membership
        .closest(key, k)
        .into_iter()
        .map(|member| (member.id, member.update.contact))
        .collect()
}
