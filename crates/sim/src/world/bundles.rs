//! The `accounts` scenario's key bundles: accounts publish a password-
//! sealed bundle and their OPRF key shares after registering; all through
//! the run — in churn, across the partition, after it heals and after the
//! supernode crash wave — "new devices" (attached clients that hold
//! nothing of the account but its key) log in with the password, mostly
//! the right one, some a wrong one. Near the end every account is opened
//! once more with the right password (a few tries): an account that cannot
//! be, or whose bundle or shares no live supernode holds any more, is lost.
//!
//! The whole path runs — sealing, dealing, fetching, blinding, the
//! holders' evaluations, combining, Argon2id, opening and re-dealing —
//! only Argon2id with the cheapest parameters the core accepts
//! (`KDF_PARAMS_SIMULATION`, listed under `sim_overrides`). A bundle needs
//! a real Ed25519 root key: with modelled crypto (large runs) the workload
//! is off.

use super::{exponential_us, World};
use crate::network::uniform;
use crate::queue::EventKind;
use peerline_core::bundle::{
    deal, oprf_key, oprf_output_with_key, seal_bundle, BUNDLE_HOLDERS, BUNDLE_THRESHOLD,
    KDF_PARAMS_SIMULATION,
};
use peerline_core::client::BundleFailure;
use peerline_core::{CryptoMode, Event, Keypair};
use peerline_proto::{PublicKey, Sharing};
use rand_core::Rng;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};

/// The first bundle version an account seals (a password change seals the next).
const FIRST_BUNDLE_VERSION: u64 = 1;
/// Of the logins during the run, the share made with a wrong password.
const WRONG_PASSWORD_SHARE: f64 = 0.2;
/// Logins of one account during the run, and the least time between two:
/// each login spends one guess of a holder of every index (a budget of 5,
/// refilled one every 6 minutes), so a login more often would be refused.
const LOGINS_PER_ACCOUNT_MAX: u32 = 4;
const LOGIN_SPACING_S: u64 = 120;
/// An account is logged into only once its publication had time to reach
/// the holders.
const LOGIN_AFTER_PUBLISH_S: u64 = 30;
/// A publication or login without an answer by then is given up (its
/// device was promoted, crashed or left).
const OPERATION_TIMEOUT_S: u64 = 60;
/// The final check: tries per account, the wait between two, and how many
/// final logins start per second across the network.
const FINAL_TRIES_MAX: u32 = 3;
const FINAL_RETRY_S: u64 = 20;
const FINAL_LOGINS_PER_S_MIN: usize = 4;
/// Fewest supernodes the workload runs on: `n` = 5 indices, `t` = 3.
pub(super) const SUPERNODES_MIN: u32 = 7;

#[derive(Clone, Debug)]
struct Account {
    key: PublicKey,
    password: String,
    /// When its publication was confirmed (`None`: not (yet) published).
    published_us: Option<u64>,
    logins: u32,
    last_login_us: u64,
    final_tries: u32,
    final_opened: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Publish,
    Login { right_password: bool, last: bool },
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    account: usize,
    operation: Operation,
    started_us: u64,
}

/// The workload's state and what it measured.
#[derive(Clone, Debug, Default)]
pub struct Bundles {
    accounts: Vec<Account>,
    by_key: HashMap<PublicKey, usize>,
    /// Open operations by (device node, account key).
    pending: HashMap<(u32, PublicKey), Pending>,
    /// The final check's logins still to start: (not before µs, account).
    final_queue: VecDeque<(u64, usize)>,
    final_logins_per_s: usize,
    login_ms: Vec<u64>,
    figures: BundleFigures,
}

/// The key bundle report keys of the `accounts` scenario.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BundleFigures {
    /// False when the workload did not run (modelled crypto, or too few
    /// supernodes for five share indices).
    pub key_bundles_simulated: bool,
    /// Accounts whose bundle and shares went out.
    pub key_bundles_published: u64,
    /// Of those, published with some share index no holder was named for
    /// even after asking again (fewer spare indices for a password login).
    pub key_bundles_published_short: u64,
    /// Publications that ended without it (no supernode to ask, no answer,
    /// or fewer than the threshold of indices with a holder).
    pub key_bundles_publish_failed: u64,
    /// Published accounts the right password could not open at the end
    /// (after `FINAL_TRIES_MAX` tries), or whose bundle, or `t` share
    /// indices, no live supernode still holds.
    pub key_bundles_lost: u64,
    /// Logins started (the run's and the final check's).
    pub bundle_logins: u64,
    /// Logins with the right password that opened the bundle.
    pub bundle_logins_ok: u64,
    /// Logins with the right password that did not (and why).
    pub bundle_logins_unavailable: u64,
    pub bundle_logins_refused: u64,
    pub bundle_logins_no_answer: u64,
    /// Right-password logins told "wrong password" (a holder lied, or a
    /// share of another epoch was combined): must stay zero.
    pub bundle_logins_right_password_refused: u64,
    /// Logins with a wrong password, those refused as such, and those that
    /// opened (must stay zero).
    pub bundle_logins_wrong_password: u64,
    pub bundle_logins_wrong_password_refused: u64,
    pub bundle_logins_wrong_password_opened: u64,
    /// Right-password logins that opened between the heal and the crash
    /// wave, and after the crash wave.
    pub bundle_logins_ok_after_heal: u64,
    pub bundle_logins_ok_after_crash: u64,
    pub bundle_login_ms_p50: u64,
    pub bundle_login_ms_p99: u64,
}

impl World {
    fn bundles_on(&self) -> bool {
        self.config.crypto == CryptoMode::Full
            && self.config.supernodes >= SUPERNODES_MIN
            && self.config.bundle_publishes_per_min > 0.0
    }

    /// Schedules the publications, the logins and the final check.
    pub(super) fn bundles_setup(&mut self) {
        if !self.bundles_on() {
            return;
        }
        self.bundles.figures.key_bundles_simulated = true;
        let start_us = (self.config.supernode_ramp_s + self.config.join_ramp_s + 60) * 1_000_000;
        self.queue.push(start_us, EventKind::BundlePublishTick);
        if self.config.bundle_logins_per_min > 0.0 {
            let first_login_us = start_us + LOGIN_AFTER_PUBLISH_S * 1_000_000;
            self.queue.push(first_login_us, EventKind::BundleLoginTick);
        }
        self.queue
            .push(self.bundle_check_us(), EventKind::BundleCheck);
    }

    fn bundle_check_us(&self) -> u64 {
        self.end_us
            .saturating_sub(self.config.names_check_before_end_s * 1_000_000)
    }

    /// A random attached client with no operation open for `account`.
    fn bundle_device(&mut self, account: Option<PublicKey>) -> Option<u32> {
        for _ in 0..20 {
            let client = self.live_clients.random(&mut self.rng)?;
            let free = account.is_none_or(|key| !self.bundles.pending.contains_key(&(client, key)));
            if free && self.valid_attachments(client).next().is_some() {
                return Some(client);
            }
        }
        None
    }

    /// A new account's device seals the root key under its password and
    /// deals the OPRF key's shares (`peerline account create` does the
    /// same with the production Argon2id cost).
    pub(super) fn bundle_publish_tick(&mut self) {
        let mean_us = 60e6 / self.config.bundle_publishes_per_min.max(1e-3);
        let next = self.script_us + exponential_us(&mut self.rng, mean_us);
        let stop_us = self.bundle_check_us() - LOGIN_AFTER_PUBLISH_S * 1_000_000;
        if next < stop_us {
            self.queue.push(next, EventKind::BundlePublishTick);
        }
        // Not while the network is split: deals are not acknowledged, and
        // a device's supernode names holders from its side's view, so
        // whole share indices can be dealt to nobody (see the report).
        if self.partitioned {
            return;
        }
        let Some(device) = self.bundle_device(None) else {
            return;
        };
        let number = self.bundles.accounts.len();
        let password = format!("correct horse battery staple {number}");
        let root = Keypair::generate(CryptoMode::Full, &mut self.rng);
        let now = self.now_for(device);
        let sharing = Sharing {
            threshold: BUNDLE_THRESHOLD,
            holders: BUNDLE_HOLDERS,
        };
        let seed = root.secret_seed().expect("a full-crypto key has a seed");
        let key = oprf_key(&seed, FIRST_BUNDLE_VERSION);
        let output = oprf_output_with_key(&key, &password, &root.public());
        let kdf = KDF_PARAMS_SIMULATION;
        let sealed = seal_bundle(
            &root,
            &password,
            &output,
            kdf,
            sharing,
            FIRST_BUNDLE_VERSION,
            &mut self.rng,
        );
        let epoch = now.unix_s.saturating_mul(1_000);
        let deals = deal(&root, FIRST_BUNDLE_VERSION, epoch, sharing, &mut self.rng);
        let (Ok(bundle), Ok(deals)) = (sealed, deals) else {
            debug_assert!(false, "a full-crypto key seals and deals");
            return;
        };
        let key = root.public();
        self.bundles.by_key.insert(key, number);
        self.bundles.accounts.push(Account {
            key,
            password,
            published_us: None,
            logins: 0,
            last_login_us: 0,
            final_tries: 0,
            final_opened: false,
        });
        self.bundles.pending.insert(
            (device, key),
            Pending {
                account: number,
                operation: Operation::Publish,
                started_us: self.now_us,
            },
        );
        if let Some(node) = self.nodes[device as usize].node.as_mut() {
            node.publish_account_secrets(now, bundle, deals);
        }
        self.flush(device);
    }

    /// A new device logs into a random published account, with the right
    /// password or (sometimes) a wrong one.
    pub(super) fn bundle_login_tick(&mut self) {
        let mean_us = 60e6 / self.config.bundle_logins_per_min.max(1e-3);
        let next = self.script_us + exponential_us(&mut self.rng, mean_us);
        if next < self.bundle_check_us() {
            self.queue.push(next, EventKind::BundleLoginTick);
        }
        self.expire_bundle_operations();
        let Some(account) = self.login_candidate() else {
            return;
        };
        let right_password = uniform(&mut self.rng) >= WRONG_PASSWORD_SHARE;
        let key = self.bundles.accounts[account].key;
        let Some(device) = self.bundle_device(Some(key)) else {
            return;
        };
        let entry = &mut self.bundles.accounts[account];
        entry.logins += 1;
        entry.last_login_us = self.now_us;
        self.start_login(device, account, right_password, false);
    }

    fn login_candidate(&mut self) -> Option<usize> {
        let count = self.bundles.accounts.len();
        if count == 0 {
            return None;
        }
        for _ in 0..20 {
            let index = (self.rng.next_u64() % count as u64) as usize;
            let account = &self.bundles.accounts[index];
            let published_long_enough = account
                .published_us
                .is_some_and(|at| self.now_us >= at + LOGIN_AFTER_PUBLISH_S * 1_000_000);
            let rested = account.logins == 0
                || self.now_us >= account.last_login_us + LOGIN_SPACING_S * 1_000_000;
            if published_long_enough && rested && account.logins < LOGINS_PER_ACCOUNT_MAX {
                return Some(index);
            }
        }
        None
    }

    fn start_login(&mut self, device: u32, account: usize, right_password: bool, last: bool) {
        let key = self.bundles.accounts[account].key;
        let password = if right_password {
            self.bundles.accounts[account].password.clone()
        } else {
            format!("wrong guess {}", self.rng.next_u32())
        };
        let mut entropy = [0u8; 32];
        self.rng.fill_bytes(&mut entropy);
        self.bundles.figures.bundle_logins += 1;
        self.bundles.figures.bundle_logins_wrong_password += !right_password as u64;
        self.bundles.pending.insert(
            (device, key),
            Pending {
                account,
                operation: Operation::Login {
                    right_password,
                    last,
                },
                started_us: self.now_us,
            },
        );
        let now = self.now_for(device);
        if let Some(node) = self.nodes[device as usize].node.as_mut() {
            node.open_bundle(now, key, &password, entropy);
        }
        self.flush(device);
    }

    /// Near the end: every published account is opened with the right
    /// password, a few per second, each up to `FINAL_TRIES_MAX` times.
    pub(super) fn bundle_check(&mut self) {
        if self.bundles.final_logins_per_s == 0 {
            let published = self
                .bundles
                .accounts
                .iter()
                .enumerate()
                .filter(|(_, a)| a.published_us.is_some())
                .map(|(index, _)| (0, index));
            self.bundles.final_queue = published.collect();
            // The whole set within about half a minute.
            self.bundles.final_logins_per_s =
                (self.bundles.final_queue.len() / 30).max(FINAL_LOGINS_PER_S_MIN);
        }
        self.expire_bundle_operations();
        let mut started = 0;
        let mut waiting = VecDeque::new();
        while let Some((due_us, account)) = self.bundles.final_queue.pop_front() {
            if due_us > self.now_us || started >= self.bundles.final_logins_per_s {
                waiting.push_back((due_us, account));
                continue;
            }
            let key = self.bundles.accounts[account].key;
            let Some(device) = self.bundle_device(Some(key)) else {
                waiting.push_back((self.script_us + 1_000_000, account));
                continue;
            };
            self.bundles.accounts[account].final_tries += 1;
            self.start_login(device, account, true, true);
            started += 1;
        }
        self.bundles.final_queue = waiting;
        let next = self.script_us + 1_000_000;
        if next < self.end_us {
            self.queue.push(next, EventKind::BundleCheck);
        }
    }

    /// Gives up operations whose device never answered.
    fn expire_bundle_operations(&mut self) {
        let timeout_us = OPERATION_TIMEOUT_S * 1_000_000;
        let now_us = self.now_us;
        let late: Vec<((u32, PublicKey), Pending)> = self
            .bundles
            .pending
            .iter()
            .filter(|(_, p)| now_us >= p.started_us + timeout_us)
            .map(|(k, p)| (*k, *p))
            .collect();
        for (key, pending) in late {
            self.bundles.pending.remove(&key);
            match pending.operation {
                Operation::Publish => self.bundles.figures.key_bundles_publish_failed += 1,
                Operation::Login { right_password, .. } => {
                    self.bundles.figures.bundle_logins_no_answer += right_password as u64;
                    self.login_failed(pending);
                }
            }
        }
    }

    /// A final login that failed is tried again a little later.
    fn login_failed(&mut self, pending: Pending) {
        let Operation::Login { last: true, .. } = pending.operation else {
            return;
        };
        if self.bundles.accounts[pending.account].final_tries < FINAL_TRIES_MAX {
            let due_us = self.now_us + FINAL_RETRY_S * 1_000_000;
            self.bundles
                .final_queue
                .push_back((due_us, pending.account));
        }
    }

    /// The node events of the workload.
    pub(super) fn bundle_event(&mut self, index: u32, event: &Event) {
        /// What a node event says about the operation it belongs to.
        enum Outcome {
            /// Deals went out, with this many share indices unheld.
            Dealt(u8),
            /// The operation ended: opened (with the right key?) or failed.
            Ended(Result<bool, BundleFailure>),
        }
        let (account_key, outcome) = match event {
            Event::AccountSecretsPublished {
                account,
                indices_unheld,
                ..
            } => (*account, Outcome::Dealt(*indices_unheld)),
            Event::BundleOpened {
                account, root_seed, ..
            } => {
                let opened = Keypair::from_seed(CryptoMode::Full, *root_seed.expose());
                (*account, Outcome::Ended(Ok(opened.public() == *account)))
            }
            Event::BundleFailed { account, reason } => (*account, Outcome::Ended(Err(*reason))),
            _ => return,
        };
        let Some(pending) = self.bundles.pending.get(&(index, account_key)).copied() else {
            return;
        };
        match (pending.operation, outcome) {
            (Operation::Publish, Outcome::Dealt(unheld)) => {
                self.bundles.pending.remove(&(index, account_key));
                self.bundles.accounts[pending.account].published_us = Some(self.now_us);
                self.bundles.figures.key_bundles_published += 1;
                self.bundles.figures.key_bundles_published_short += (unheld > 0) as u64;
            }
            (Operation::Publish, Outcome::Ended(_)) => {
                self.bundles.pending.remove(&(index, account_key));
                self.bundles.figures.key_bundles_publish_failed += 1;
            }
            // A login's re-deal reports its deals too: its end follows.
            (Operation::Login { .. }, Outcome::Dealt(_)) => {}
            (Operation::Login { right_password, .. }, Outcome::Ended(result)) => {
                self.bundles.pending.remove(&(index, account_key));
                self.login_ended(pending, right_password, result, event);
            }
        }
    }

    fn login_ended(
        &mut self,
        pending: Pending,
        right_password: bool,
        result: Result<bool, BundleFailure>,
        event: &Event,
    ) {
        let figures = &mut self.bundles.figures;
        if !right_password {
            match result {
                Ok(_) => figures.bundle_logins_wrong_password_opened += 1,
                Err(BundleFailure::WrongPassword) => {
                    figures.bundle_logins_wrong_password_refused += 1
                }
                Err(_) => {}
            }
            return;
        }
        match result {
            Ok(true) => {
                figures.bundle_logins_ok += 1;
                if let Event::BundleOpened { elapsed_ms, .. } = event {
                    self.bundles.login_ms.push(*elapsed_ms);
                }
                let heal_us = (self.config.storm_at_s + self.config.partition_s) * 1_000_000;
                let crash_us = heal_us + self.config.accounts_crash_after_heal_s * 1_000_000;
                let figures = &mut self.bundles.figures;
                if pending.started_us >= crash_us {
                    figures.bundle_logins_ok_after_crash += 1;
                } else if pending.started_us >= heal_us {
                    figures.bundle_logins_ok_after_heal += 1;
                }
                if let Operation::Login { last: true, .. } = pending.operation {
                    self.bundles.accounts[pending.account].final_opened = true;
                }
                return;
            }
            // Opened to another key: the bundle was not the account's.
            Ok(false) => figures.bundle_logins_right_password_refused += 1,
            Err(BundleFailure::WrongPassword | BundleFailure::Tampered) => {
                figures.bundle_logins_right_password_refused += 1
            }
            Err(BundleFailure::Refused { .. }) => figures.bundle_logins_refused += 1,
            Err(_) => figures.bundle_logins_unavailable += 1,
        }
        self.login_failed(pending);
    }

    /// How many live supernodes hold `account`'s bundle, and how many
    /// hold a share of each index (1 to `n`).
    fn bundle_holders(&self, account: &PublicKey) -> (usize, [usize; BUNDLE_HOLDERS as usize]) {
        let mut bundles = 0;
        let mut shares = [0; BUNDLE_HOLDERS as usize];
        for &supernode in &self.live_supernodes.items {
            let Some(node) = self.nodes[supernode as usize].node.as_ref() else {
                continue;
            };
            bundles += node.held_bundle(account).is_some() as usize;
            if let Some(index) = node.held_share_index(account) {
                if let Some(count) = shares.get_mut(usize::from(index).wrapping_sub(1)) {
                    *count += 1;
                }
            }
        }
        (bundles, shares)
    }

    /// Whether live supernodes still hold `account`'s bundle and `t`
    /// distinct share indices.
    fn bundle_held(&self, account: &PublicKey) -> bool {
        let (bundles, shares) = self.bundle_holders(account);
        let indices = shares.iter().filter(|count| **count > 0).count();
        bundles > 0 && indices >= usize::from(BUNDLE_THRESHOLD)
    }

    /// The figures, from the accounts as they ended.
    pub fn bundle_figures(&self) -> BundleFigures {
        let mut figures = self.bundles.figures.clone();
        figures.key_bundles_lost = self.lost_bundles().len() as u64;
        let mut times = self.bundles.login_ms.clone();
        times.sort_unstable();
        let quantile = |q: f64| -> u64 {
            if times.is_empty() {
                return 0;
            }
            times[((times.len() - 1) as f64 * q).round() as usize]
        };
        figures.bundle_login_ms_p50 = quantile(0.5);
        figures.bundle_login_ms_p99 = quantile(0.99);
        figures
    }

    /// The published accounts lost, one line each (for debugging a failed run).
    pub fn lost_bundles(&self) -> Vec<String> {
        self.bundles
            .accounts
            .iter()
            .filter(|a| a.published_us.is_some())
            .filter_map(|a| {
                let held = self.bundle_held(&a.key);
                let holders = self.bundle_holders(&a.key);
                (!a.final_opened || !held).then(|| {
                    format!(
                        "account {:?} published at {} s: {} logins during the run, final tries {}, opened at the end {}; held by live supernodes: bundle {}, shares of each index {:?}",
                        a.key,
                        a.published_us.unwrap_or(0) / 1_000_000,
                        a.logins,
                        a.final_tries,
                        a.final_opened,
                        holders.0,
                        holders.1
                    )
                })
            })
            .collect()
    }
}
