//! Which devices and roots the network refuses: every node's table of the
//! account statements it learnt (`account.rs`), and their epidemic spread
//! among supernodes.
//!
//! A device publishes its account's signed device list (and root rotation,
//! if any) to the supernodes it attaches to (`DeviceListPush`,
//! `RootRotationPush`, again on every attach: a supernode that joined
//! later learns it then). A supernode ignores a version it holds — before
//! any signature check — and checks the rest within a budget
//! ([`ACCOUNT_CHECKS_PER_S`]); a newer statement is stored, pushed at once
//! to [`ACCOUNT_PUSH_FANOUT`] random members and then to one random member
//! per [`ACCOUNT_RUMOR_INTERVAL_MS`] for a few rounds, a different one each
//! round (rumour mongering:
//! each supernode passes a given (account, version) on only when it is news
//! to it, so the flood dies out). The supernode then detaches its clients
//! the statement refuses, drops their presence records and refuses their
//! logins, resumes and presence records.
//!
//! Only lists that revoke something are kept and spread: a list that
//! revokes nothing enforces nothing, and storing every account's list on
//! every supernode would not scale. Entries are forgotten once nothing
//! they refuse can still be valid: a revoked key after the longest
//! certificate lifetime (its certificate has expired by then); a rotation
//! after [`ROTATION_KEEP_S`] (the old root could still mint certificates,
//! so it is kept much longer). Every refusal an entry makes renews it.
//! *Limitation:* a certificate issued for longer than
//! `Params::device_cert_ttl_s` outlives a revocation nobody exercises.

use crate::account::{rotation_wins, verify_device_list, verify_root_rotation};
use crate::durable::{decode, encode, DirtyKeys, DurableChanges, DurableError, DurableTable};
use crate::identity::CryptoMode;
use crate::overload::TokenBucket;
use crate::params::Params;
use crate::time::{Instant, Now};
use peerline_proto::{DeviceList, Message, PublicKey, RootRotation};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Accounts with revocations or a rotation one node keeps.
pub const REVOCATION_ACCOUNTS_MAX: usize = 16_384;
/// Revoked device keys kept per account (the union over its lists).
pub const REVOKED_PER_ACCOUNT_MAX: usize = 256;
/// Account statements a supernode checks per second (each costs one
/// signature check, a rotation two), and the bucket's depth; beyond it a
/// push is dropped unchecked (the device re-publishes on its next attach).
pub const ACCOUNT_CHECKS_PER_S: u64 = 10;
pub const ACCOUNT_CHECK_BURST: u64 = 40;
/// Members a supernode pushes a new statement to at once.
pub const ACCOUNT_PUSH_FANOUT: usize = 3;
/// Period of the rumour rounds that follow, and statements in them.
pub const ACCOUNT_RUMOR_INTERVAL_MS: u64 = 1_000;
pub const ACCOUNT_RUMORS_MAX: usize = 256;
/// How long a rotation is kept without refusing anything.
pub const ROTATION_KEEP_S: u64 = 365 * 24 * 3_600;

/// What became of a pushed statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A version this node holds (or an older one, or a list that revokes
    /// nothing for an account it holds nothing of): ignored unchecked.
    Stale,
    /// The check budget is spent: dropped unchecked.
    OverBudget,
    /// The signature (or the times) do not check.
    Invalid,
    /// New and valid: stored; pass it on and enforce it for `account`.
    Taken { account: PublicKey },
}

#[derive(Clone, Debug, Default)]
struct AccountEntry {
    /// Highest list version taken (`None`: no list yet).
    list_version: Option<u64>,
    /// Every revoked key seen for the account, with when to forget it (unix s).
    revoked: BTreeMap<PublicKey, u64>,
    rotation: Option<(RootRotation, u64)>,
}

impl AccountEntry {
    fn forget_at_unix_s(&self) -> u64 {
        let revoked = self.revoked.values().copied().max().unwrap_or(0);
        let rotation = self.rotation.map_or(0, |(_, at)| at);
        revoked.max(rotation)
    }
}

#[derive(Clone, Debug)]
struct Rumor {
    message: Message,
    sends_left: u32,
    /// Where in the member list its next round's member is (a random
    /// start, then the next member each round: successive rounds reach
    /// distinct members, so in a network of n supernodes every holder has
    /// told every other within n − 1 rounds when it runs that many).
    position: u64,
}

/// A node's revocations: those its operator made (`Node::revoke_device`),
/// those it learnt from device lists and rotations, the rumours it is
/// spreading, and (on a device) its own account's statements.
#[derive(Clone, Debug)]
pub(crate) struct AccountTable {
    local: BTreeSet<PublicKey>,
    accounts: BTreeMap<PublicKey, AccountEntry>,
    rumors: VecDeque<Rumor>,
    checks: TokenBucket,
    next_rumor_at: Instant,
    /// This device's account's list and rotation, re-published on attach.
    pub(crate) own_list: Option<Box<DeviceList>>,
    pub(crate) own_rotation: Option<Box<RootRotation>>,
    /// Accounts whose entry changed since the driver last took them
    /// (`durable.rs`). A refusal's renewal alone marks nothing: it is
    /// written with the entry's next change (or lost to a restart, which
    /// leaves the entry its time from when it was learnt).
    dirty: DirtyKeys,
}

/// An account's entry as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct AccountRow {
    list_version: Option<u64>,
    revoked: Vec<(PublicKey, u64)>,
    rotation: Option<(RootRotation, u64)>,
}

fn revocation_keep_s(params: &Params) -> u64 {
    params
        .device_cert_ttl_s
        .saturating_add(2 * params.clock_skew_tolerance_s)
}

impl AccountTable {
    pub(crate) fn new(now: Instant) -> AccountTable {
        AccountTable {
            local: BTreeSet::new(),
            accounts: BTreeMap::new(),
            rumors: VecDeque::new(),
            checks: TokenBucket::new(ACCOUNT_CHECKS_PER_S, ACCOUNT_CHECK_BURST, now),
            next_rumor_at: Instant::NEVER,
            own_list: None,
            own_rotation: None,
            dirty: DirtyKeys::default(),
        }
    }

    /// From now on, remember what changed for [`AccountTable::take_changes`].
    pub(crate) fn track_changes(&mut self) {
        self.dirty.switch_on();
    }

    /// The entries changed since the last call, as rows.
    pub(crate) fn take_changes(&mut self, out: &mut DurableChanges) {
        for key in self.dirty.take() {
            let value = self.accounts.get(&PublicKey(key)).map(|entry| {
                encode(&AccountRow {
                    list_version: entry.list_version,
                    revoked: entry.revoked.iter().map(|(k, at)| (*k, *at)).collect(),
                    rotation: entry.rotation,
                })
            });
            out.push(DurableTable::Revocations, key, value);
        }
    }

    /// Takes back a stored entry.
    pub(crate) fn restore(&mut self, key: &[u8; 32], bytes: &[u8]) -> Result<(), DurableError> {
        let table = DurableTable::Revocations;
        let row: AccountRow = decode(table, key, bytes)?;
        if row.revoked.len() > REVOKED_PER_ACCOUNT_MAX {
            return Err(DurableError::new(table, key, "revokes too many keys"));
        }
        if row
            .rotation
            .is_some_and(|(rotation, _)| rotation.body.old_account.0 != *key)
        {
            return Err(DurableError::new(
                table,
                key,
                "is a rotation of another account",
            ));
        }
        let account = PublicKey(*key);
        if self.accounts.len() >= REVOCATION_ACCOUNTS_MAX && !self.accounts.contains_key(&account) {
            return Err(DurableError::new(table, key, "is one row too many"));
        }
        self.accounts.insert(
            account,
            AccountEntry {
                list_version: row.list_version,
                revoked: row.revoked.into_iter().collect(),
                rotation: row.rotation,
            },
        );
        Ok(())
    }

    pub(crate) fn revoke_local(&mut self, device: PublicKey) {
        self.local.insert(device);
    }

    /// Whether a certificate of `device` under `account` is refused: the
    /// device is revoked, or the account's root was rotated away. A
    /// refusal renews the entry that made it.
    pub(crate) fn refuses(
        &mut self,
        device: &PublicKey,
        account: &PublicKey,
        now_unix_s: u64,
        params: &Params,
    ) -> bool {
        if self.local.contains(device) {
            return true;
        }
        let Some(entry) = self.accounts.get_mut(account) else {
            return false;
        };
        if let Some((_, forget_at)) = &mut entry.rotation {
            *forget_at = (*forget_at).max(now_unix_s.saturating_add(ROTATION_KEEP_S));
            return true;
        }
        match entry.revoked.get_mut(device) {
            Some(forget_at) => {
                *forget_at = (*forget_at).max(now_unix_s.saturating_add(revocation_keep_s(params)));
                true
            }
            None => false,
        }
    }

    /// Whether `device` of `account` is refused, without renewing anything.
    pub(crate) fn is_refused(&self, device: &PublicKey, account: &PublicKey) -> bool {
        self.local.contains(device)
            || self
                .accounts
                .get(account)
                .is_some_and(|entry| entry.rotation.is_some() || entry.revoked.contains_key(device))
    }

    /// The highest list version held for `account`.
    pub(crate) fn list_version(&self, account: &PublicKey) -> Option<u64> {
        self.accounts.get(account).and_then(|e| e.list_version)
    }

    /// The rotation held for `old_account`.
    pub(crate) fn rotation(&self, old_account: &PublicKey) -> Option<&RootRotation> {
        self.accounts
            .get(old_account)
            .and_then(|e| e.rotation.as_ref().map(|(r, _)| r))
    }

    /// The rotations held that lead on from `account`, oldest first (at
    /// most `max`; a cycle ends the chain).
    pub(crate) fn rotations_from(&self, account: &PublicKey, max: usize) -> Vec<RootRotation> {
        let mut chain: Vec<RootRotation> = Vec::new();
        let mut current = *account;
        while chain.len() < max {
            let Some(rotation) = self.rotation(&current) else {
                break;
            };
            let next = rotation.body.new_account;
            if next == *account || chain.iter().any(|r| r.body.old_account == next) {
                break;
            }
            chain.push(*rotation);
            current = next;
        }
        chain
    }

    pub(crate) fn len(&self) -> usize {
        self.accounts.len()
    }

    pub(crate) fn on_device_list(
        &mut self,
        mode: CryptoMode,
        list: &DeviceList,
        now: Now,
        params: &Params,
    ) -> Verdict {
        let account = list.body.account_key;
        let held = self.accounts.get(&account);
        let stale = match held.and_then(|e| e.list_version) {
            Some(version) => !list.supersedes(version),
            None => held.is_none() && list.body.revoked.is_empty(),
        };
        if stale {
            return Verdict::Stale;
        }
        if !self.checks.try_take(now.instant, 1, 0) {
            return Verdict::OverBudget;
        }
        if verify_device_list(mode, list, now.unix_s, params.clock_skew_tolerance_s).is_err() {
            return Verdict::Invalid;
        }
        let forget_at = now.unix_s.saturating_add(revocation_keep_s(params));
        self.dirty.mark(account.0);
        let entry = self.entry(account, now.unix_s);
        entry.list_version = Some(list.body.version);
        for device in list.body.revoked.iter() {
            let at = entry.revoked.entry(*device).or_insert(forget_at);
            *at = (*at).max(forget_at);
        }
        while entry.revoked.len() > REVOKED_PER_ACCOUNT_MAX {
            // The one learnt longest ago goes first.
            let Some(oldest) = entry
                .revoked
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| *k)
            else {
                break;
            };
            entry.revoked.remove(&oldest);
        }
        Verdict::Taken { account }
    }

    pub(crate) fn on_rotation(
        &mut self,
        mode: CryptoMode,
        rotation: &RootRotation,
        now: Now,
        params: &Params,
    ) -> Verdict {
        let account = rotation.body.old_account;
        let held = self.rotation(&account);
        if held.is_some_and(|held| !rotation_wins(rotation, held)) {
            return Verdict::Stale;
        }
        if !self.checks.try_take(now.instant, 2, 0) {
            return Verdict::OverBudget;
        }
        if verify_root_rotation(mode, rotation, now.unix_s, params.clock_skew_tolerance_s).is_err()
        {
            return Verdict::Invalid;
        }
        let forget_at = now.unix_s.saturating_add(ROTATION_KEEP_S);
        self.dirty.mark(account.0);
        self.entry(account, now.unix_s).rotation = Some((*rotation, forget_at));
        Verdict::Taken { account }
    }

    /// The entry of `account`, made room for when the table is full (the
    /// entry to be forgotten soonest goes).
    fn entry(&mut self, account: PublicKey, now_unix_s: u64) -> &mut AccountEntry {
        if !self.accounts.contains_key(&account) && self.accounts.len() >= REVOCATION_ACCOUNTS_MAX {
            self.expire(now_unix_s);
            if self.accounts.len() >= REVOCATION_ACCOUNTS_MAX {
                let soonest = self
                    .accounts
                    .iter()
                    .min_by_key(|(_, e)| e.forget_at_unix_s())
                    .map(|(k, _)| *k);
                if let Some(soonest) = soonest {
                    self.accounts.remove(&soonest);
                    self.dirty.mark(soonest.0);
                }
            }
        }
        debug_assert!(self.accounts.len() <= REVOCATION_ACCOUNTS_MAX);
        self.accounts.entry(account).or_default()
    }

    /// Forgets what can no longer refuse anything valid.
    pub(crate) fn expire(&mut self, now_unix_s: u64) {
        let dirty = &mut self.dirty;
        self.accounts.retain(|account, entry| {
            let before = entry.revoked.len();
            entry.revoked.retain(|_, at| *at >= now_unix_s);
            let mut changed = entry.revoked.len() != before;
            if entry.rotation.is_some_and(|(_, at)| at < now_unix_s) {
                entry.rotation = None;
                changed = true;
            }
            if changed {
                dirty.mark(account.0);
            }
            !entry.revoked.is_empty() || entry.rotation.is_some()
        });
    }

    /// Queues `message` for `rounds` rumour rounds (the oldest rumour makes
    /// room when the queue is full).
    pub(crate) fn spread(&mut self, message: Message, rounds: u32, start: u64, now: Instant) {
        if self.rumors.len() >= ACCOUNT_RUMORS_MAX {
            self.rumors.pop_front();
        }
        self.rumors.push_back(Rumor {
            message,
            sends_left: rounds,
            position: start,
        });
        if self.next_rumor_at == Instant::NEVER {
            self.next_rumor_at = now.add_ms(ACCOUNT_RUMOR_INTERVAL_MS);
        }
    }

    /// The rumours due for a round now (each once), with the position of
    /// the member each goes to.
    pub(crate) fn take_rumor_round(&mut self, now: Instant) -> Vec<(Message, u64)> {
        if now < self.next_rumor_at {
            return Vec::new();
        }
        let round = self
            .rumors
            .iter()
            .map(|r| (r.message.clone(), r.position))
            .collect();
        for rumor in self.rumors.iter_mut() {
            rumor.sends_left = rumor.sends_left.saturating_sub(1);
            rumor.position = rumor.position.wrapping_add(1);
        }
        self.rumors.retain(|r| r.sends_left > 0);
        self.next_rumor_at = if self.rumors.is_empty() {
            Instant::NEVER
        } else {
            now.add_ms(ACCOUNT_RUMOR_INTERVAL_MS)
        };
        round
    }

    pub(crate) fn next_deadline(&self) -> Instant {
        self.next_rumor_at
    }

    /// A role change ends the rumours (a client spreads nothing).
    pub(crate) fn clear_rumors(&mut self) {
        self.rumors.clear();
        self.next_rumor_at = Instant::NEVER;
    }

    /// The pushes a device sends a supernode it attaches to.
    pub(crate) fn own_pushes(&self) -> Vec<Message> {
        let mut pushes = Vec::new();
        if let Some(rotation) = &self.own_rotation {
            pushes.push(Message::RootRotationPush {
                rotation: **rotation,
            });
        }
        if let Some(list) = &self.own_list {
            pushes.push(Message::DeviceListPush {
                list: (**list).clone(),
            });
        }
        pushes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{sign_device_list, sign_root_rotation};
    use crate::identity::Keypair;
    use peerline_proto::{BoundedVec, DeviceListBody};

    const UNIX0: u64 = 1_800_000_000;

    fn now(s: u64) -> Now {
        Now {
            instant: Instant::from_ms(s * 1_000),
            unix_s: UNIX0 + s,
        }
    }

    fn key(seed: u8) -> Keypair {
        Keypair::from_seed(CryptoMode::Full, [seed; 32])
    }

    fn list(root: &Keypair, version: u64, revoked: &[PublicKey]) -> DeviceList {
        sign_device_list(
            root,
            DeviceListBody {
                account_key: root.public(),
                version,
                devices: BoundedVec::new(),
                revoked: BoundedVec::truncating(revoked.iter().copied()),
                issued_unix_s: UNIX0,
            },
        )
    }

    #[test]
    fn newer_lists_supersede_and_the_revoked_union_stays() {
        let params = Params::default();
        let mode = CryptoMode::Full;
        let (root, a, b) = (key(1), key(2).public(), key(3).public());
        let mut table = AccountTable::new(now(0).instant);
        let v2 = list(&root, 2, &[a]);
        assert_eq!(
            table.on_device_list(mode, &v2, now(0), &params),
            Verdict::Taken {
                account: root.public()
            }
        );
        assert!(table.refuses(&a, &root.public(), UNIX0, &params));
        // The same version again, or an older one: ignored before any check.
        assert_eq!(
            table.on_device_list(mode, &v2, now(0), &params),
            Verdict::Stale
        );
        let v1 = list(&root, 1, &[]);
        assert_eq!(
            table.on_device_list(mode, &v1, now(0), &params),
            Verdict::Stale
        );
        // A newer list that drops `a` and revokes `b`: both stay refused.
        let v3 = list(&root, 3, &[b]);
        assert!(matches!(
            table.on_device_list(mode, &v3, now(0), &params),
            Verdict::Taken { .. }
        ));
        assert_eq!(table.list_version(&root.public()), Some(3));
        assert!(table.is_refused(&a, &root.public()));
        assert!(table.is_refused(&b, &root.public()));
        // A forged newer version is refused and changes nothing.
        let mut forged = list(&key(9), 4, &[]);
        forged.body.account_key = root.public();
        assert_eq!(
            table.on_device_list(mode, &forged, now(0), &params),
            Verdict::Invalid
        );
        assert_eq!(table.list_version(&root.public()), Some(3));
        // Forgotten after the longest certificate lifetime.
        let keep_s = revocation_keep_s(&params);
        table.expire(UNIX0 + keep_s + 1);
        assert!(!table.is_refused(&a, &root.public()));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn checks_are_budgeted_and_stale_versions_cost_nothing() {
        let params = Params::default();
        let mode = CryptoMode::Full;
        let mut table = AccountTable::new(now(0).instant);
        let victim = key(1).public();
        let mut forged: Vec<DeviceList> = (0..ACCOUNT_CHECK_BURST + 5)
            .map(|v| list(&key(2), v + 1, &[victim]))
            .collect();
        for f in &mut forged {
            f.body.account_key = victim;
        }
        let verdicts: Vec<Verdict> = forged
            .iter()
            .map(|f| table.on_device_list(mode, f, now(0), &params))
            .collect();
        let checked = verdicts.iter().filter(|v| **v == Verdict::Invalid).count();
        assert_eq!(checked as u64, ACCOUNT_CHECK_BURST);
        assert_eq!(verdicts.last(), Some(&Verdict::OverBudget));
        // Refills at the stated rate.
        let later = now(1);
        let refilled = forged
            .iter()
            .filter(|f| table.on_device_list(mode, f, later, &params) == Verdict::Invalid)
            .count();
        assert_eq!(refilled as u64, ACCOUNT_CHECKS_PER_S);
    }

    #[test]
    fn a_rotation_refuses_every_device_of_the_old_root() {
        let params = Params::default();
        let mode = CryptoMode::Full;
        let (old, new, evil) = (key(1), key(2), key(3));
        let mut table = AccountTable::new(now(0).instant);
        let later = sign_root_rotation(&old, &evil, UNIX0 + 5);
        let rotation = sign_root_rotation(&old, &new, UNIX0);
        assert!(matches!(
            table.on_rotation(mode, &later, now(10), &params),
            Verdict::Taken { .. }
        ));
        // The earlier one wins wherever it arrives; the later one is stale then.
        assert!(matches!(
            table.on_rotation(mode, &rotation, now(10), &params),
            Verdict::Taken { .. }
        ));
        assert_eq!(
            table.on_rotation(mode, &later, now(10), &params),
            Verdict::Stale
        );
        assert_eq!(table.rotation(&old.public()), Some(&rotation));
        assert!(table.refuses(&key(4).public(), &old.public(), UNIX0, &params));
        assert!(!table.is_refused(&key(4).public(), &new.public()));
    }

    #[test]
    fn rumours_run_their_rounds_then_stop() {
        let mut table = AccountTable::new(now(0).instant);
        table.spread(Message::NotAttached, 2, 7, now(0).instant);
        assert!(table.take_rumor_round(now(0).instant).is_empty());
        assert_eq!(
            table.take_rumor_round(now(1).instant),
            vec![(Message::NotAttached, 7)]
        );
        assert_eq!(
            table.take_rumor_round(now(2).instant),
            vec![(Message::NotAttached, 8)]
        );
        assert_eq!(table.next_deadline(), Instant::NEVER);
        for _ in 0..ACCOUNT_RUMORS_MAX + 3 {
            table.spread(Message::NotAttached, 1, 0, now(3).instant);
        }
        assert_eq!(
            table.take_rumor_round(now(4).instant).len(),
            ACCOUNT_RUMORS_MAX
        );
    }
}
