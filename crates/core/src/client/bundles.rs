//! The device's part in password login (`bundle.rs` has the cryptography,
//! `supernode/bundles.rs` the holders):
//!
//! - **Publishing** (account creation, password change): the bundle goes to
//!   an attached supernode, which stores it at its replicas; a `BundleFetch`
//!   names the holders of each share index, and each deal goes straight to
//!   the holders of its index (never through a third node).
//! - **Opening** (login on a new device): fetch the bundle and the holders
//!   through an attached supernode (2 round trips: device → supernode →
//!   replicas), blind the password once, send the same blinded element
//!   straight to the closest holder of every index at once (1 round trip);
//!   a holder that holds no share or does not answer within
//!   `OPRF_ANSWER_MS` is replaced by the next holder of its index. As soon
//!   as `t` answers of the bundle's version and one epoch are in, combine,
//!   run Argon2id and open. A budget refusal is final for its index (asking
//!   the next replica would spend one more guess). Then the device re-deals
//!   all `n` shares of the same OPRF key under a higher epoch to every
//!   holder named, so shares lost with their holders come back.
//!
//! Every failure says why: the bundle does not verify (`Tampered`), no
//! bundle or fewer than `t` indices answered (`Unavailable` — with fewer
//! than `t` holders the password cannot even be tested), the holders'
//! budgets are spent (`Refused`), or the password is wrong.

use super::ClientState;
use crate::bundle::{
    blind, deal, finalize, open_bundle, verify_bundle, Blinding, BundleError, RootSeed, SecretRng,
    BUNDLE_HOLDERS,
};
use crate::identity::CryptoMode;
use crate::node::{Event, Io};
use crate::time::Instant;
use peerline_proto::{
    Addr, BlindedElement, BoundedVec, Contact, Evaluation, KeyBundle, Message, PublicKey,
    ShareDeal, ShareHolder, Sharing, SHARE_HOLDERS_PER_MESSAGE_MAX,
};
use zeroize::Zeroizing;

/// Publications and logins one device keeps open at once.
const PUBLISHES_MAX: usize = 2;
const LOGINS_MAX: usize = 2;
/// Wait for a holder's answer before asking the next holder of its index.
const OPRF_ANSWER_MS: u64 = 2_000;
/// Tries of a fetch (each through another attached supernode if there is one).
const FETCH_TRIES_MAX: u32 = 2;
/// Fetches a publication makes before it deals with what it was told:
/// more than a login's, because a fetch can also name too few holders.
const PUBLISH_TRIES_MAX: u32 = 4;
/// A publication told of no holder for some share index asks again this
/// much later (through another supernode when it has one).
const PUBLISH_RECHECK_MS: u64 = 15_000;

/// Why a publication or a login ended without success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleFailure {
    /// The bundle opened to nothing: the password is wrong (or a holder lied).
    WrongPassword,
    /// The bundle found does not verify: a replica or the supernode changed it.
    Tampered,
    /// No bundle found, or fewer than `t` share indices answered.
    Unavailable,
    /// The holders' guess budgets are spent: retry after this long.
    Refused { retry_after_ms: u64 },
    /// The device is not attached to any supernode.
    NotAttached,
    /// Only a client device publishes or opens a bundle.
    NotAClient,
    /// Too many operations open at once.
    TooMany,
}

#[derive(Debug)]
struct PendingPublish {
    query_id: u32,
    bundle: Box<KeyBundle>,
    deals: Vec<ShareDeal>,
    tries: u32,
    via: PublicKey,
    deadline: Instant,
}

/// One share index's evaluation during a login.
#[derive(Debug)]
struct IndexAsk {
    /// Its holders, closest first, and the next one to ask.
    holders: Vec<Contact>,
    next: usize,
    /// The holder asked now, with the query ID, and when to give up on it.
    asked: Option<(Addr, u32, Instant)>,
    state: AskState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AskState {
    Waiting,
    Answered {
        index: u8,
        epoch: u64,
        evaluation: Evaluation,
    },
    Refused {
        retry_after_ms: u64,
    },
    /// Every holder of the index was asked: none holds a share or answered.
    Exhausted,
}

enum LoginStage {
    Fetching {
        query_id: u32,
        via: PublicKey,
        tries: u32,
        deadline: Instant,
    },
    Evaluating {
        bundle: Box<KeyBundle>,
        holders: Vec<ShareHolder>,
        blinding: Blinding,
        blinded: BlindedElement,
        asks: Vec<IndexAsk>,
    },
}

struct PendingLogin {
    account: PublicKey,
    password: Zeroizing<String>,
    rng: SecretRng,
    started: Instant,
    /// Sequential round trips so far (for the report in `BundleOpened`).
    round_trips: u32,
    stage: LoginStage,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "PendingLogin({:?}, <secrets>)", self.account)
    }
}

/// Holder contacts remembered for pinning dials (the last fetch answers').
const HOLDER_KEYS_MAX: usize = 2 * SHARE_HOLDERS_PER_MESSAGE_MAX;

#[derive(Debug, Default)]
pub(crate) struct ClientBundles {
    publishes: Vec<PendingPublish>,
    logins: Vec<PendingLogin>,
    /// The keys of the holders the last fetches named, by address: the
    /// driver pins a dial to a holder to its key (`Node::path_peer_key`),
    /// so a share or a blinded password reaches that holder and nobody else.
    holder_keys: std::collections::VecDeque<(Addr, PublicKey)>,
}

impl ClientBundles {
    /// The key a dial to `addr` must meet, when a fetch named a holder there.
    pub(crate) fn holder_key(&self, addr: &Addr) -> Option<PublicKey> {
        self.holder_keys
            .iter()
            .rev()
            .find(|(at, _)| at == addr)
            .map(|(_, key)| *key)
    }

    fn remember_holders(&mut self, holders: &[ShareHolder]) {
        for holder in holders {
            let contact = holder.contact;
            self.holder_keys.retain(|(at, _)| *at != contact.addr);
            if self.holder_keys.len() >= HOLDER_KEYS_MAX {
                self.holder_keys.pop_front();
            }
            self.holder_keys.push_back((contact.addr, contact.key));
        }
    }

    pub(crate) fn next_deadline(&self) -> Instant {
        let publishes = self.publishes.iter().map(|p| p.deadline);
        let logins = self.logins.iter().map(|login| match &login.stage {
            LoginStage::Fetching { deadline, .. } => *deadline,
            LoginStage::Evaluating { asks, .. } => asks
                .iter()
                .filter_map(|ask| ask.asked.map(|(_, _, deadline)| deadline))
                .min()
                .unwrap_or(Instant::NEVER),
        });
        publishes.chain(logins).min().unwrap_or(Instant::NEVER)
    }
}

impl ClientState {
    pub(crate) fn bundle_holder_key(&self, addr: &Addr) -> Option<PublicKey> {
        self.bundles.holder_key(addr)
    }

    pub(super) fn next_bundle_query_id(&mut self) -> u32 {
        self.next_query_id = self.next_query_id.wrapping_add(1);
        self.next_query_id
    }

    /// The attached supernode to ask, another than `last` when there is one.
    pub(super) fn bundle_via(&self, last: Option<PublicKey>) -> Option<Contact> {
        let attached = self.attached();
        attached
            .iter()
            .find(|c| Some(c.key) != last)
            .or(attached.first())
            .copied()
    }

    pub(crate) fn publish_account_secrets(
        &mut self,
        io: &mut Io,
        bundle: KeyBundle,
        deals: Vec<ShareDeal>,
    ) {
        let account = bundle.body.account_key;
        let failure = if self.bundles.publishes.len() >= PUBLISHES_MAX {
            Some(BundleFailure::TooMany)
        } else if verify_bundle(CryptoMode::Full, &bundle).is_err()
            || deals.iter().any(|d| d.body.account_key != account)
        {
            Some(BundleFailure::Tampered)
        } else {
            None
        };
        let via = self.bundle_via(None);
        let (None, Some(via)) = (failure, via) else {
            let reason = failure.unwrap_or(BundleFailure::NotAttached);
            return io.event(Event::BundleFailed { account, reason });
        };
        let bundle = Box::new(bundle);
        let query_id = self.next_bundle_query_id();
        io.send(
            via.addr,
            &Message::BundleStore {
                bundle: bundle.clone(),
            },
        );
        io.send(
            via.addr,
            &Message::BundleFetch {
                query_id,
                account,
                indices: bundle.body.sharing.holders,
            },
        );
        self.bundles.publishes.push(PendingPublish {
            query_id,
            bundle,
            deals,
            tries: 1,
            via: via.key,
            deadline: io.now.instant.add_ms(io.params.lookup_timeout_ms),
        });
    }

    pub(crate) fn open_bundle(
        &mut self,
        io: &mut Io,
        account: PublicKey,
        password: &str,
        entropy: [u8; 32],
    ) {
        let via = self.bundle_via(None);
        let failure = if self.bundles.logins.len() >= LOGINS_MAX {
            Some(BundleFailure::TooMany)
        } else {
            None
        };
        let (None, Some(via)) = (failure, via) else {
            let reason = failure.unwrap_or(BundleFailure::NotAttached);
            return io.event(Event::BundleFailed { account, reason });
        };
        let query_id = self.next_bundle_query_id();
        io.send(
            via.addr,
            &Message::BundleFetch {
                query_id,
                account,
                indices: BUNDLE_HOLDERS,
            },
        );
        self.bundles.logins.push(PendingLogin {
            account,
            password: Zeroizing::new(password.to_owned()),
            rng: SecretRng::new(&entropy),
            started: io.now.instant,
            round_trips: 2,
            stage: LoginStage::Fetching {
                query_id,
                via: via.key,
                tries: 1,
                deadline: io.now.instant.add_ms(io.params.lookup_timeout_ms),
            },
        });
    }

    pub(crate) fn on_bundle_fetch_response(
        &mut self,
        io: &mut Io,
        query_id: u32,
        bundle: Option<Box<KeyBundle>>,
        holders: BoundedVec<ShareHolder, SHARE_HOLDERS_PER_MESSAGE_MAX>,
    ) {
        let known = self.bundles.publishes.iter().any(|p| p.query_id == query_id)
            || self.bundles.logins.iter().any(|login| {
                matches!(login.stage, LoginStage::Fetching { query_id: id, .. } if id == query_id)
            });
        if !known {
            io.stats.messages_unexpected += 1;
            return;
        }
        self.bundles.remember_holders(holders.as_slice());
        if let Some(slot) = self
            .bundles
            .publishes
            .iter()
            .position(|p| p.query_id == query_id)
        {
            let mut publish = self.bundles.publishes.swap_remove(slot);
            io.own.keep_bundle(io.now.instant, *publish.bundle);
            let sharing = publish.bundle.body.sharing;
            let unheld = unheld_indices(sharing, holders.as_slice());
            if unheld > 0 && publish.tries < PUBLISH_TRIES_MAX {
                // A supernode whose view is small (just after a partition
                // heals) names holders for only some indices, and a share
                // nobody holds cannot be re-replicated: deal to those named
                // now and ask again once the view has grown.
                send_deals(io, &publish.deals, holders.as_slice());
                publish.deadline = io.now.instant.add_ms(PUBLISH_RECHECK_MS);
                self.bundles.publishes.push(publish);
                return;
            }
            if sharing.holders - unheld < sharing.threshold {
                // Every fetch left too many indices without a holder: a
                // password login could never gather the threshold.
                let account = publish.bundle.body.account_key;
                let reason = BundleFailure::Unavailable;
                return io.event(Event::BundleFailed { account, reason });
            }
            return deal_to_holders(io, &publish.bundle, &publish.deals, holders.as_slice());
        }
        let Some(slot) = self.bundles.logins.iter().position(|login| {
            matches!(login.stage, LoginStage::Fetching { query_id: id, .. } if id == query_id)
        }) else {
            return;
        };
        let account = self.bundles.logins[slot].account;
        let Some(bundle) = bundle else {
            self.bundles.logins.swap_remove(slot);
            let reason = BundleFailure::Unavailable;
            return io.event(Event::BundleFailed { account, reason });
        };
        if bundle.body.account_key != account || verify_bundle(CryptoMode::Full, &bundle).is_err() {
            self.bundles.logins.swap_remove(slot);
            let reason = BundleFailure::Tampered;
            return io.event(Event::BundleFailed { account, reason });
        }
        self.start_evaluations(io, slot, bundle, holders.as_slice().to_vec());
    }

    /// Blinds the password and asks the closest holder of every index.
    fn start_evaluations(
        &mut self,
        io: &mut Io,
        slot: usize,
        bundle: Box<KeyBundle>,
        holders: Vec<ShareHolder>,
    ) {
        let mut query_ids = Vec::new();
        for _ in 0..bundle.body.sharing.holders {
            query_ids.push(self.next_bundle_query_id());
        }
        let login = &mut self.bundles.logins[slot];
        let (blinding, blinded) = blind(&login.password, &login.account, &mut login.rng);
        let mut asks: Vec<IndexAsk> = (1..=bundle.body.sharing.holders)
            .map(|index| IndexAsk {
                holders: holders
                    .iter()
                    .filter(|h| h.index == index)
                    .map(|h| h.contact)
                    .collect(),
                next: 0,
                asked: None,
                state: AskState::Waiting,
            })
            .collect();
        for (ask, query_id) in asks.iter_mut().zip(query_ids) {
            ask_next_holder(io, ask, login.account, blinded, query_id);
        }
        login.round_trips += 1;
        login.stage = LoginStage::Evaluating {
            bundle,
            holders,
            blinding,
            blinded,
            asks,
        };
        self.settle_login(io, slot);
    }

    pub(crate) fn on_oprf_reply(&mut self, io: &mut Io, from: Addr, message: Message) {
        let query_id = match &message {
            Message::OprfAnswer { query_id, .. } | Message::OprfRefused { query_id, .. } => {
                *query_id
            }
            _ => return,
        };
        let mut found = None;
        for (slot, login) in self.bundles.logins.iter_mut().enumerate() {
            let LoginStage::Evaluating { bundle, asks, .. } = &mut login.stage else {
                continue;
            };
            let version = bundle.body.version;
            let Some(ask) = asks.iter_mut().find(|ask| {
                ask.asked
                    .is_some_and(|(a, q, _)| a == from && q == query_id)
            }) else {
                continue;
            };
            found = Some((slot, login.account));
            ask.state = match message {
                Message::OprfAnswer {
                    index,
                    bundle_version,
                    epoch,
                    evaluation,
                    ..
                } if bundle_version == version => AskState::Answered {
                    index,
                    epoch,
                    evaluation,
                },
                Message::OprfRefused { retry_after_ms, .. } if retry_after_ms > 0 => {
                    AskState::Refused {
                        retry_after_ms: u64::from(retry_after_ms),
                    }
                }
                // No share here, or a share of another version: the next holder.
                _ => AskState::Waiting,
            };
            ask.asked = None;
            break;
        }
        let Some((slot, account)) = found else {
            io.stats.messages_unexpected += 1;
            return;
        };
        self.advance_asks(io, slot, account);
        self.settle_login(io, slot);
    }

    /// Asks the next holder of every index still waiting without a question out.
    fn advance_asks(&mut self, io: &mut Io, slot: usize, account: PublicKey) {
        let waiting = match &self.bundles.logins[slot].stage {
            LoginStage::Evaluating { asks, .. } => asks
                .iter()
                .filter(|a| a.state == AskState::Waiting && a.asked.is_none())
                .count(),
            LoginStage::Fetching { .. } => 0,
        };
        let query_ids: Vec<u32> = (0..waiting).map(|_| self.next_bundle_query_id()).collect();
        let login = &mut self.bundles.logins[slot];
        let LoginStage::Evaluating { asks, blinded, .. } = &mut login.stage else {
            return;
        };
        let mut asked_again = false;
        let pending = asks
            .iter_mut()
            .filter(|a| a.state == AskState::Waiting && a.asked.is_none());
        for (ask, query_id) in pending.zip(query_ids) {
            asked_again |= ask_next_holder(io, ask, account, *blinded, query_id);
        }
        if asked_again {
            login.round_trips += 1;
        }
    }

    /// Ends the login when `t` answers of one epoch are in, or when every
    /// index has settled without them.
    fn settle_login(&mut self, io: &mut Io, slot: usize) {
        let login = &self.bundles.logins[slot];
        let LoginStage::Evaluating { bundle, asks, .. } = &login.stage else {
            return;
        };
        let threshold = usize::from(bundle.body.sharing.threshold);
        if let Some(chosen) = threshold_answers(asks, threshold) {
            let login = self.bundles.logins.swap_remove(slot);
            return self.finish_login(io, login, &chosen);
        }
        if asks.iter().any(|a| a.state == AskState::Waiting) {
            return;
        }
        if retarget_epoch(asks_mut(&mut self.bundles.logins[slot]), threshold) {
            let account = self.bundles.logins[slot].account;
            return self.advance_asks(io, slot, account);
        }
        let login = &self.bundles.logins[slot];
        let LoginStage::Evaluating { asks, .. } = &login.stage else {
            return;
        };
        let retry_after_ms = asks
            .iter()
            .filter_map(|a| match a.state {
                AskState::Refused { retry_after_ms } => Some(retry_after_ms),
                _ => None,
            })
            .min();
        let account = login.account;
        self.bundles.logins.swap_remove(slot);
        let reason = match retry_after_ms {
            Some(retry_after_ms) => BundleFailure::Refused { retry_after_ms },
            None => BundleFailure::Unavailable,
        };
        io.event(Event::BundleFailed { account, reason });
    }

    fn finish_login(&mut self, io: &mut Io, mut login: PendingLogin, chosen: &[(u8, Evaluation)]) {
        let LoginStage::Evaluating {
            bundle,
            holders,
            blinding,
            asks,
            ..
        } = &login.stage
        else {
            return;
        };
        let account = login.account;
        let opened = finalize(blinding, &login.password, &account, chosen)
            .and_then(|output| open_bundle(bundle, &login.password, &output));
        let root = match opened {
            Ok(root) => root,
            Err(error) => {
                let reason = match error {
                    BundleError::Tampered | BundleError::KeyMismatch => BundleFailure::Tampered,
                    BundleError::KdfParams { .. } | BundleError::Sharing { .. } => {
                        BundleFailure::Tampered
                    }
                    _ => BundleFailure::WrongPassword,
                };
                return io.event(Event::BundleFailed { account, reason });
            }
        };
        let Some(seed) = root.secret_seed() else {
            return;
        };
        // Re-deal under an epoch above every one seen, so the shares
        // follow the current holders.
        let seen = asks
            .iter()
            .filter_map(|a| match a.state {
                AskState::Answered { epoch, .. } => Some(epoch),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let epoch = io.now.unix_s.saturating_mul(1_000).max(seen + 1);
        let sharing = bundle.body.sharing;
        io.own.keep_bundle(io.now.instant, **bundle);
        if let Ok(deals) = deal(&root, bundle.body.version, epoch, sharing, &mut login.rng) {
            deal_to_holders(io, bundle, &deals, holders);
        }
        io.event(Event::BundleOpened {
            account,
            bundle_version: bundle.body.version,
            root_seed: RootSeed::new(seed),
            elapsed_ms: io.now.instant.since_ms(login.started),
            round_trips: login.round_trips,
        });
    }

    pub(crate) fn bundles_timeout(&mut self, io: &mut Io) {
        let now = io.now.instant;
        self.retry_publishes(io, now);
        let mut slot = 0;
        while slot < self.bundles.logins.len() {
            let login = &mut self.bundles.logins[slot];
            let account = login.account;
            match &mut login.stage {
                LoginStage::Fetching {
                    deadline,
                    tries,
                    via,
                    ..
                } if *deadline <= now => {
                    let last = *via;
                    let tries_done = *tries;
                    let next = self.bundle_via(Some(last));
                    match next {
                        Some(contact) if tries_done < FETCH_TRIES_MAX => {
                            let query_id = self.next_bundle_query_id();
                            let login = &mut self.bundles.logins[slot];
                            login.round_trips += 2;
                            login.stage = LoginStage::Fetching {
                                query_id,
                                via: contact.key,
                                tries: tries_done + 1,
                                deadline: now.add_ms(io.params.lookup_timeout_ms),
                            };
                            let fetch = Message::BundleFetch {
                                query_id,
                                account,
                                indices: BUNDLE_HOLDERS,
                            };
                            io.send(contact.addr, &fetch);
                            slot += 1;
                        }
                        _ => {
                            self.bundles.logins.swap_remove(slot);
                            let reason = BundleFailure::Unavailable;
                            io.event(Event::BundleFailed { account, reason });
                        }
                    }
                }
                LoginStage::Evaluating { asks, .. } => {
                    let mut late = false;
                    for ask in asks.iter_mut() {
                        if ask.asked.is_some_and(|(_, _, deadline)| deadline <= now) {
                            ask.asked = None;
                            late = true;
                        }
                    }
                    if late {
                        self.advance_asks(io, slot, account);
                        let before = self.bundles.logins.len();
                        self.settle_login(io, slot);
                        if self.bundles.logins.len() == before {
                            slot += 1;
                        }
                    } else {
                        slot += 1;
                    }
                }
                LoginStage::Fetching { .. } => slot += 1,
            }
        }
    }

    fn retry_publishes(&mut self, io: &mut Io, now: Instant) {
        let mut slot = 0;
        while slot < self.bundles.publishes.len() {
            let publish = &self.bundles.publishes[slot];
            if publish.deadline > now {
                slot += 1;
                continue;
            }
            let account = publish.bundle.body.account_key;
            let next = self.bundle_via(Some(publish.via));
            match next {
                Some(contact) if publish.tries < PUBLISH_TRIES_MAX => {
                    let query_id = self.next_bundle_query_id();
                    let publish = &mut self.bundles.publishes[slot];
                    publish.query_id = query_id;
                    publish.tries += 1;
                    publish.via = contact.key;
                    publish.deadline = now.add_ms(io.params.lookup_timeout_ms);
                    let store = Message::BundleStore {
                        bundle: publish.bundle.clone(),
                    };
                    let fetch = Message::BundleFetch {
                        query_id,
                        account,
                        indices: publish.bundle.body.sharing.holders,
                    };
                    io.send(contact.addr, &store);
                    io.send(contact.addr, &fetch);
                    slot += 1;
                }
                _ => {
                    self.bundles.publishes.swap_remove(slot);
                    let reason = BundleFailure::Unavailable;
                    io.event(Event::BundleFailed { account, reason });
                }
            }
        }
    }
}

/// Sends the next holder of `ask`'s index the blinded element; marks the
/// index exhausted when none is left. True when a question went out.
fn ask_next_holder(
    io: &mut Io,
    ask: &mut IndexAsk,
    account: PublicKey,
    blinded: BlindedElement,
    query_id: u32,
) -> bool {
    let Some(holder) = ask.holders.get(ask.next).copied() else {
        ask.state = AskState::Exhausted;
        return false;
    };
    ask.next += 1;
    ask.asked = Some((holder.addr, query_id, io.now.instant.add_ms(OPRF_ANSWER_MS)));
    let evaluate = Message::OprfEvaluate {
        query_id,
        account,
        blinded,
    };
    io.send(holder.addr, &evaluate);
    true
}

fn asks_mut(login: &mut PendingLogin) -> &mut [IndexAsk] {
    match &mut login.stage {
        LoginStage::Evaluating { asks, .. } => asks,
        LoginStage::Fetching { .. } => &mut [],
    }
}

/// When the answers are of different epochs and none has `threshold` of
/// them (a re-deal reached some holders of an index and not others), asks
/// again the next holder of each index that answered with an older epoch
/// than the newest, if that can still make `threshold`. True when some
/// index waits again. Each index has at most `SHARE_REPLICAS` holders, so
/// this ends.
fn retarget_epoch(asks: &mut [IndexAsk], threshold: usize) -> bool {
    let newest = asks
        .iter()
        .filter_map(|a| match a.state {
            AskState::Answered { epoch, .. } => Some(epoch),
            _ => None,
        })
        .max();
    let Some(newest) = newest else {
        return false;
    };
    let at_newest = asks
        .iter()
        .filter(|a| matches!(a.state, AskState::Answered { epoch, .. } if epoch == newest))
        .count();
    let can_move = |a: &IndexAsk| {
        matches!(a.state, AskState::Answered { epoch, .. } if epoch < newest)
            && a.next < a.holders.len()
    };
    let movable = asks.iter().filter(|a| can_move(a)).count();
    if movable == 0 || at_newest + movable < threshold {
        return false;
    }
    for ask in asks.iter_mut().filter(|a| can_move(a)) {
        ask.state = AskState::Waiting;
    }
    true
}

/// `threshold` answers with distinct share indices and one epoch, if the
/// asks hold that many (the epoch with the most answers first).
fn threshold_answers(asks: &[IndexAsk], threshold: usize) -> Option<Vec<(u8, Evaluation)>> {
    let answers: Vec<(u8, u64, Evaluation)> = asks
        .iter()
        .filter_map(|a| match a.state {
            AskState::Answered {
                index,
                epoch,
                evaluation,
            } => Some((index, epoch, evaluation)),
            _ => None,
        })
        .collect();
    for &(_, epoch, _) in &answers {
        let mut chosen: Vec<(u8, Evaluation)> = Vec::new();
        for &(index, other_epoch, evaluation) in &answers {
            if other_epoch == epoch && !chosen.iter().any(|(i, _)| *i == index) {
                chosen.push((index, evaluation));
            }
        }
        if chosen.len() >= threshold {
            chosen.truncate(threshold);
            return Some(chosen);
        }
    }
    None
}

/// Sends each deal straight to every named holder of its index, then
/// reports how many went out and how many indices had no holder.
fn deal_to_holders(io: &mut Io, bundle: &KeyBundle, deals: &[ShareDeal], holders: &[ShareHolder]) {
    let sent = send_deals(io, deals, holders);
    io.event(Event::AccountSecretsPublished {
        account: bundle.body.account_key,
        holders: sent,
        indices_unheld: unheld_indices(bundle.body.sharing, holders),
    });
}

/// Share indices of `sharing` that none of `holders` holds.
fn unheld_indices(sharing: Sharing, holders: &[ShareHolder]) -> u8 {
    (1..=sharing.holders)
        .filter(|index| holders.iter().all(|h| h.index != *index))
        .count() as u8
}

/// Sends each deal straight to every named holder of its index; how many
/// went out.
fn send_deals(io: &mut Io, deals: &[ShareDeal], holders: &[ShareHolder]) -> usize {
    let mut sent = 0;
    for deal in deals {
        for holder in holders.iter().filter(|h| h.index == deal.body.index) {
            let push = Message::ShareDealPush {
                deal: Box::new(deal.clone()),
            };
            io.send(holder.contact.addr, &push);
            sent += 1;
        }
    }
    sent
}
