//! The `accounts` scenario's workload and checker: contested name
//! registrations (two people claim the same name at the same moment) all
//! through the run — in steady churn, across a partition, during a
//! supernode crash wave, and against an attacker whose supernodes sit
//! next to the names it targets and vote for every claim (equivocating) —
//! then, near the end, lookups of every contested name from random
//! clients: each name must have exactly one owner everywhere.

use super::{exponential_us, node_seed_rng, World};
use crate::queue::EventKind;
use peerline_core::account::sign_device_list;
use peerline_core::names::normalize;
use peerline_core::registry::make_claim;
use peerline_core::{Event, Keypair};
use peerline_proto::{BoundedVec, DeviceListBody};
use peerline_proto::{NodeId, PublicKey};
use rand_core::Rng;
use serde::Serialize;
use std::collections::HashMap;

/// Claimants per contested name.
const CLAIMANTS: usize = 2;
/// Of the contests, the share whose name the attacker ground next to one
/// of its supernodes.
const TARGETED_SHARE: f64 = 0.2;
/// Name candidates tried to land next to an attacker supernode.
const GRIND_TRIES_MAX: u32 = 200_000;
/// Lookups of each contested name at the end, from different clients.
const FINAL_LOOKUPS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pending,
    Registered,
    Taken,
    Failed,
}

#[derive(Clone, Debug)]
struct Claimant {
    node: u32,
    account: PublicKey,
    outcome: Outcome,
}

#[derive(Clone, Debug)]
struct Contest {
    name_key: NodeId,
    claimants: Vec<Claimant>,
    targeted: bool,
    /// What the final lookups found (`None` inside: no owner).
    final_owners: Vec<Option<PublicKey>>,
    final_failures: u32,
    started_s: u64,
}

/// The workload's state and what it measured.
#[derive(Clone, Debug, Default)]
pub struct Names {
    contests: Vec<Contest>,
    /// Open registrations and lookups: (node, name key) → contest.
    pending: HashMap<(u32, NodeId), usize>,
    lookups: HashMap<(u32, NodeId), usize>,
    /// Supernodes of the attacker (one /24, equivocating voters).
    pub attackers: Vec<u32>,
    registration_ms: Vec<u64>,
    /// Set once the final lookups were sent.
    checking: bool,
    /// Revoked devices, and when every live supernode refused them.
    revocations: Vec<Revocation>,
    revocation_check_due: bool,
}

/// How often the spread of pending revocations is checked, and how long
/// a revocation may take before it counts as never spread.
const REVOCATION_CHECK_MS: u64 = 250;
const REVOCATION_GIVE_UP_S: u64 = 300;

#[derive(Clone, Debug)]
struct Revocation {
    device: PublicKey,
    account: PublicKey,
    started_us: u64,
    spread_us: Option<u64>,
    /// The supernodes live when it was published: the ones it must reach
    /// (one that joins later learns it when the account's devices attach
    /// to it — not measured here).
    supernodes: Vec<u32>,
}

/// The `accounts` scenario's report keys.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NameFigures {
    /// Contested names (each claimed by two accounts at the same moment).
    pub names_contested: u64,
    /// Of those targeted by the attacker's ground supernode IDs.
    pub names_targeted: u64,
    /// Contested names with an owner at the end.
    pub names_registered: u64,
    /// Names the final lookups saw with two different owners.
    pub names_duplicated: u64,
    /// Names both claimants were told they registered (two certificates,
    /// settled by the conflict rule afterwards)…
    pub names_double_certified: u64,
    /// …of which outside the partition (when the two sides cannot know of
    /// each other's claim, both are certified by design).
    pub names_double_certified_outside_partition: u64,
    /// Contested names nobody owns at the end.
    pub names_unresolved: u64,
    /// Names a claimant was told it registered that the final lookups
    /// found without owner.
    pub name_records_lost: u64,
    pub name_registration_ms_p50: u64,
    pub name_registration_ms_p99: u64,
    /// Registrations that ended without an answer (network unavailable).
    pub name_claims_failed: u64,
    /// Final lookups that got no answer.
    pub name_lookups_failed: u64,
    /// Names whose final owner was never told "registered" (it was told
    /// "taken", or got no answer): the owner learns it by looking up.
    pub names_owner_not_told: u64,
    /// Devices revoked (their account's signed list published by another
    /// client), and how long until every live supernode refused them.
    pub revocations: u64,
    pub revocation_spread_s_p50: f64,
    pub revocation_spread_s_p99: f64,
    pub revocation_spread_s_max: f64,
    /// Revocations not everywhere within 300 s.
    pub revocations_unfinished: u64,
}

impl World {
    /// Picks the attacker's supernodes (the scenario's first few after the
    /// seed): they live in one /24 and vote for every claim.
    pub(super) fn accounts_setup(&mut self) {
        let count = self
            .config
            .attackers
            .min(self.config.supernodes.saturating_sub(1));
        self.names.attackers = (1..=count).collect();
        let start_us = (self.config.supernode_ramp_s + self.config.join_ramp_s + 60) * 1_000_000;
        self.queue.push(start_us, EventKind::NameTick);
        let check_us = self
            .end_us
            .saturating_sub(self.config.names_check_before_end_s * 1_000_000);
        self.queue.push(check_us, EventKind::NameCheck);
        if self.config.revocations_per_min > 0.0 {
            self.queue.push(start_us, EventKind::RevokeTick);
        }
    }

    /// Starts the next contest: two random attached clients claim one
    /// fresh name at the same moment.
    pub(super) fn name_tick(&mut self) {
        // Contests stop early enough that a split vote is released and
        // decided again before the final lookups.
        let stop_us = self
            .end_us
            .saturating_sub(self.config.names_stop_before_end_s * 1_000_000);
        if self.names.checking || self.now_us >= stop_us {
            return;
        }
        let mean_us = 60e6 / self.config.contests_per_min.max(1e-3);
        let next = self.script_us + exponential_us(&mut self.rng, mean_us);
        self.queue.push(next, EventKind::NameTick);
        let mut claimants: Vec<u32> = Vec::with_capacity(CLAIMANTS);
        for _ in 0..20 {
            let Some(client) = self.live_clients.random(&mut self.rng) else {
                return;
            };
            if self.valid_attachments(client).next().is_some() && !claimants.contains(&client) {
                claimants.push(client);
            }
            if claimants.len() == CLAIMANTS {
                break;
            }
        }
        if claimants.len() < CLAIMANTS {
            return;
        }
        let number = self.names.contests.len();
        let targeted =
            !self.names.attackers.is_empty() && super::uniform(&mut self.rng) < TARGETED_SHARE;
        let name = match targeted.then(|| self.name_near_attacker(number)).flatten() {
            Some(name) => name,
            None => format!("name{number}"),
        };
        let Ok(normalized) = normalize(&name) else {
            return;
        };
        let mut contest = Contest {
            name_key: normalized.key(),
            claimants: Vec::new(),
            targeted,
            final_owners: Vec::new(),
            final_failures: 0,
            started_s: self.now_us / 1_000_000,
        };
        // The contest is in place before any claim goes out: a claim can
        // end at once (refused, or no supernode to ask).
        let index = self.names.contests.len();
        let mut claims = Vec::with_capacity(claimants.len());
        for &node in &claimants {
            let account = Keypair::generate(self.config.crypto, &mut self.rng);
            let unix_s = self.now_for(node).unix_s;
            claims.push(make_claim(
                &account,
                &normalized,
                unix_s,
                self.params.name_pow_bits,
            ));
            contest.claimants.push(Claimant {
                node,
                account: account.public(),
                outcome: Outcome::Pending,
            });
            self.names.pending.insert((node, normalized.key()), index);
        }
        self.names.contests.push(contest);
        for (node, claim) in claimants.into_iter().zip(claims) {
            let now = self.now_for(node);
            if let Some(handle) = self.nodes[node as usize].node.as_mut() {
                handle.register_name(now, claim);
            }
            self.flush(node);
        }
    }

    /// A name whose key lands closer to one attacker supernode than to
    /// (almost surely) any honest one: the attacker's ID grinding, played
    /// the other way round (grinding names is cheaper to simulate than
    /// grinding ID puzzles, and the geometry is the same).
    fn name_near_attacker(&mut self, number: usize) -> Option<String> {
        let pick = self.names.attackers[self.rng.next_u32() as usize % self.names.attackers.len()];
        let contact = self.nodes[pick as usize]
            .node
            .as_ref()?
            .supernode_contact()?;
        let id = peerline_core::identity::node_id(&contact.key, contact.id_nonce);
        let wanted_bits = 64 - (self.config.supernodes.max(2) as u64).leading_zeros() + 3;
        for attempt in 0..GRIND_TRIES_MAX {
            let name = format!("t{number}x{attempt}");
            let key = normalize(&name).ok()?.key();
            if key.common_prefix_len(&id) as u32 >= wanted_bits {
                return Some(name);
            }
        }
        None
    }

    /// Near the end: looks every contested name up from random clients.
    pub(super) fn name_check(&mut self) {
        self.names.checking = true;
        for index in 0..self.names.contests.len() {
            let name_key = self.names.contests[index].name_key;
            for _ in 0..FINAL_LOOKUPS {
                let mut asker = None;
                for _ in 0..20 {
                    let Some(candidate) = self.live_clients.random(&mut self.rng) else {
                        break;
                    };
                    if self.valid_attachments(candidate).next().is_some()
                        && !self.names.lookups.contains_key(&(candidate, name_key))
                    {
                        asker = Some(candidate);
                        break;
                    }
                }
                let Some(asker) = asker else {
                    continue;
                };
                self.names.lookups.insert((asker, name_key), index);
                let now = self.now_for(asker);
                if let Some(node) = self.nodes[asker as usize].node.as_mut() {
                    node.lookup_name(now, name_key);
                }
                self.flush(asker);
            }
        }
    }

    /// The node events of the workload.
    pub(super) fn name_event(&mut self, index: u32, event: &Event) {
        let (name_key, outcome) = match event {
            Event::NameRegistered {
                name_key,
                elapsed_ms,
                ..
            } => {
                self.names.registration_ms.push(*elapsed_ms);
                (*name_key, Outcome::Registered)
            }
            Event::NameTaken { name_key, .. } => (*name_key, Outcome::Taken),
            Event::NameFailed { name_key, .. } => (*name_key, Outcome::Failed),
            Event::NameLookupDone {
                name_key, result, ..
            } => {
                let Some(contest) = self.names.lookups.remove(&(index, *name_key)) else {
                    return;
                };
                let contest = &mut self.names.contests[contest];
                match result {
                    Ok(certificate) => contest
                        .final_owners
                        .push(certificate.as_ref().map(|c| c.claim.body.account)),
                    Err(_) => contest.final_failures += 1,
                }
                return;
            }
            _ => return,
        };
        let Some(contest) = self.names.pending.remove(&(index, name_key)) else {
            return;
        };
        for claimant in &mut self.names.contests[contest].claimants {
            if claimant.node == index {
                claimant.outcome = outcome;
            }
        }
    }

    /// The figures, from the contests as they ended.
    pub fn name_figures(&self) -> NameFigures {
        let mut figures = NameFigures::default();
        for contest in &self.names.contests {
            figures.names_contested += 1;
            figures.names_targeted += contest.targeted as u64;
            figures.name_lookups_failed += contest.final_failures as u64;
            let registered = contest
                .claimants
                .iter()
                .filter(|c| c.outcome == Outcome::Registered)
                .count();
            figures.name_claims_failed += contest
                .claimants
                .iter()
                .filter(|c| matches!(c.outcome, Outcome::Failed | Outcome::Pending))
                .count() as u64;
            figures.names_double_certified += (registered > 1) as u64;
            let split_from = self.config.storm_at_s;
            let split_until = split_from + self.config.partition_s;
            let in_partition = (split_from..split_until).contains(&contest.started_s);
            figures.names_double_certified_outside_partition +=
                (registered > 1 && !in_partition) as u64;
            let owners: Vec<PublicKey> = contest.final_owners.iter().flatten().copied().collect();
            let mut distinct = owners.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let answered_empty = contest.final_owners.iter().any(|o| o.is_none());
            if distinct.len() > 1 {
                figures.names_duplicated += 1;
            }
            if distinct.is_empty() {
                if registered > 0 && answered_empty {
                    figures.name_records_lost += 1;
                } else if registered == 0 {
                    figures.names_unresolved += 1;
                }
            } else {
                figures.names_registered += 1;
                let told = contest
                    .claimants
                    .iter()
                    .any(|c| c.account == distinct[0] && c.outcome == Outcome::Registered);
                figures.names_owner_not_told += !told as u64;
                if answered_empty {
                    // One lookup found the owner, another found nothing.
                    figures.name_records_lost += 1;
                }
            }
        }
        let mut times = self.names.registration_ms.clone();
        times.sort_unstable();
        let quantile = |q: f64| -> u64 {
            if times.is_empty() {
                return 0;
            }
            times[((times.len() - 1) as f64 * q).round() as usize]
        };
        figures.name_registration_ms_p50 = quantile(0.5);
        figures.name_registration_ms_p99 = quantile(0.99);
        let mut spreads: Vec<f64> = Vec::new();
        for revocation in &self.names.revocations {
            figures.revocations += 1;
            match revocation.spread_us {
                Some(at) => spreads.push((at - revocation.started_us) as f64 / 1e6),
                None => figures.revocations_unfinished += 1,
            }
        }
        spreads.sort_by(f64::total_cmp);
        let spread = |q: f64| -> f64 {
            if spreads.is_empty() {
                return 0.0;
            }
            spreads[((spreads.len() - 1) as f64 * q).round() as usize]
        };
        figures.revocation_spread_s_p50 = spread(0.5);
        figures.revocation_spread_s_p99 = spread(0.99);
        figures.revocation_spread_s_max = spreads.last().copied().unwrap_or(0.0);
        figures
    }

    /// Revokes a random attached client's device: its account's list,
    /// signed by the account's root key, is published through another
    /// attached client (the owner's other device, say).
    pub(super) fn revoke_tick(&mut self) {
        let mean_us = 60e6 / self.config.revocations_per_min.max(1e-3);
        let next = self.script_us + exponential_us(&mut self.rng, mean_us);
        let stop_us = self
            .end_us
            .saturating_sub(self.config.names_check_before_end_s * 1_000_000);
        if next < stop_us {
            self.queue.push(next, EventKind::RevokeTick);
        }
        let mut picked: Vec<u32> = Vec::with_capacity(2);
        for _ in 0..20 {
            let Some(client) = self.live_clients.random(&mut self.rng) else {
                return;
            };
            let attached = self.valid_attachments(client).next().is_some();
            let revoked = self
                .names
                .revocations
                .iter()
                .any(|r| Some(r.device) == self.device_key(client));
            if attached && !revoked && !picked.contains(&client) {
                picked.push(client);
            }
            if picked.len() == 2 {
                break;
            }
        }
        let [victim, publisher] = picked[..] else {
            return;
        };
        // Not while the network is split: the other side cannot hear of it
        // until the heal (spread is measured in churn and the crash wave).
        if self.partitioned {
            return;
        }
        let Some(device) = self.device_key(victim) else {
            return;
        };
        let root = self.account_root(victim);
        let now = self.now_for(publisher);
        let list = sign_device_list(
            &root,
            DeviceListBody {
                account_key: root.public(),
                version: 1,
                devices: BoundedVec::new(),
                revoked: BoundedVec::truncating([device]),
                issued_unix_s: now.unix_s,
            },
        );
        self.names.revocations.push(Revocation {
            device,
            account: root.public(),
            started_us: self.now_us,
            spread_us: None,
            supernodes: self.live_supernodes.items.clone(),
        });
        if let Some(node) = self.nodes[publisher as usize].node.as_mut() {
            node.set_device_list(now, list);
        }
        self.flush(publisher);
        if !self.names.revocation_check_due {
            self.names.revocation_check_due = true;
            self.queue.push(
                self.script_us + REVOCATION_CHECK_MS * 1_000,
                EventKind::RevocationCheck,
            );
        }
    }

    /// Marks the revocations every live supernode now refuses.
    pub(super) fn revocation_check(&mut self) {
        self.names.revocation_check_due = false;
        let mut pending = false;
        for index in 0..self.names.revocations.len() {
            let revocation = &self.names.revocations[index];
            if revocation.spread_us.is_some()
                || self.now_us - revocation.started_us > REVOCATION_GIVE_UP_S * 1_000_000
            {
                continue;
            }
            let (device, account) = (revocation.device, revocation.account);
            // Every supernode of then that is still one and alive refuses it.
            let everywhere = revocation.supernodes.iter().all(|&s| {
                let slot = &self.nodes[s as usize];
                !slot.alive
                    || !slot.is_supernode()
                    || slot
                        .node
                        .as_ref()
                        .is_none_or(|n| n.refuses_device(&device, &account))
            });
            if everywhere {
                self.names.revocations[index].spread_us = Some(self.now_us);
            } else {
                pending = true;
            }
        }
        if pending {
            self.names.revocation_check_due = true;
            self.queue.push(
                self.script_us + REVOCATION_CHECK_MS * 1_000,
                EventKind::RevocationCheck,
            );
        }
    }

    fn device_key(&self, node: u32) -> Option<PublicKey> {
        self.nodes[node as usize]
            .node
            .as_ref()
            .map(|n| n.identity().keypair.public())
    }

    /// The account root key of a simulated node: made first from the
    /// node's seed when the node was created (`World::create_node`).
    fn account_root(&self, node: u32) -> Keypair {
        let mut seed_rng = node_seed_rng(self.config.seed, node);
        Keypair::generate(self.config.crypto, &mut seed_rng)
    }

    /// The contested names the final lookups saw with more than one owner
    /// (or none), one line each: for debugging a failed run.
    pub fn name_conflicts(&self) -> Vec<String> {
        self.names
            .contests
            .iter()
            .filter(|c| {
                let mut owners: Vec<_> = c.final_owners.iter().collect();
                owners.sort();
                owners.dedup();
                let registered = c
                    .claimants
                    .iter()
                    .filter(|m| matches!(m.outcome, Outcome::Registered))
                    .count();
                owners.len() != 1 || owners[0].is_none() || registered > 1
            })
            .map(|c| {
                format!(
                    "name {} started at {} s (targeted: {}): claimants {:?}; final lookups {:?}; held by {:?}",
                    c.name_key,
                    c.started_s,
                    c.targeted,
                    c.claimants
                        .iter()
                        .map(|m| (m.node, m.account, m.outcome))
                        .collect::<Vec<_>>(),
                    c.final_owners,
                    self.name_holders(&c.name_key)
                )
            })
            .collect()
    }

    /// The nodes holding a record for `name_key`: (node, alive, supernode).
    fn name_holders(&self, name_key: &NodeId) -> Vec<(u32, bool, bool)> {
        (0..self.nodes.len() as u32)
            .filter(|&index| {
                let slot = &self.nodes[index as usize];
                slot.node
                    .as_ref()
                    .is_some_and(|n| n.held_name(name_key).is_some())
            })
            .map(|index| {
                let slot = &self.nodes[index as usize];
                (index, slot.alive, slot.is_supernode())
            })
            .collect()
    }
}
