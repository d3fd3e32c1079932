//! The supernode role: admits attachments within an explicit capacity,
//! verifies logins, keeps its clients' presence in the directory (records on
//! the k closest supernodes, re-replicated on churn), answers and runs
//! lookups, forwards reachability probes and gossips membership and load.

use crate::attached::{Attached, ClientSlot};
use crate::client::attach_proof_bytes;
use crate::identity::DeviceIdentity;
use crate::identity::{
    contact_id, domain, node_id, presence_key, resume_proof_bytes, sign_ticket, solve_id_puzzle,
    verify, verify_device_cert, verify_envelope, verify_presence, verify_ticket,
};
use crate::lookup::{CandidateState, Lookup, Purpose};
use crate::mail::Mailbox;
use crate::membership::{Change, Membership, FULL_LOAD_PCT};
use crate::node::Io;
use crate::overload::TokenBucket;
use crate::params::Params;
use crate::revocation::{Verdict, ACCOUNT_PUSH_FANOUT};
use crate::time::{Instant, Now};
use peerline_proto::{
    Addr, BoundedVec, BusyReason, Contact, DeviceCert, Envelope, EnvelopeId, LoginRefusal,
    MemberState, MemberUpdate, Message, NodeId, PresenceRecord, PublicKey, Signature, Ticket,
    TicketBody, CONTACTS_PER_MESSAGE_MAX, GOSSIP_UPDATES_MAX, SYNC_PAGE_MEMBERS_MAX,
    URGENT_PUSH_SEQUENCE,
};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

pub mod bundles;
mod names;

/// Alternates named in a busy answer or an acceptance.
const ALTERNATES_PER_ANSWER: usize = 8;
/// Closer contacts returned by FindValue.
const CLOSER_PER_ANSWER: usize = 8;
/// Join attempts (seed after seed) before running alone.
const JOIN_TRIES_MAX: usize = 8;
/// Wait for one sync page.
const SYNC_TIMEOUT_MS: u64 = 2_000;
/// Expired records are dropped this often (they are also refused on read).
const RECORD_SWEEP_INTERVAL_MS: u64 = 60_000;
/// Members an urgent update is pushed to by each node that learns it.
const URGENT_FANOUT: usize = 6;
/// Delay before the one anti-entropy re-sync after joining.
const RESYNC_DELAY_MS: u64 = 15_000;
/// Lost members remembered for rediscovery, and for how long.
const LOST_MAX: usize = 64;
const LOST_FORGET_MS: u64 = 3_600_000;
/// Mean period of asking a lost member whether it is back.
const REDISCOVER_MS: u64 = 30_000;
/// Copies of one pushed envelope within this window are forwarded once.
const FORWARD_DEDUP_MS: u64 = 5_000;
/// Envelopes a replica pushes again per record sweep (`re_push_old_mail`).
const MAIL_REPUSH_PER_SWEEP_MAX: usize = 256;
/// Most envelope IDs remembered for that.
const RECENT_FORWARDS_MAX: usize = 4_096;
/// Membership changes near our clients' records are gathered until none
/// came for this long (but no longer than the bound below) before the
/// records are stored again, once for the whole burst.
const RESTORE_SETTLE_MS: u64 = 2_000;
const RESTORE_DELAY_MAX_MS: u64 = 15_000;
/// Member changes remembered for that; beyond, every record is stored again on every replica.
const RESTORE_CHANGES_MAX: usize = 64;
/// An outstanding FindValue is forgotten after this long.
const REQUEST_FORGET_MS: u64 = 10_000;

/// A presence record correctly signed and not expired (and of `device`,
/// when one is expected); anything else is counted as rejected.
fn presence_valid(io: &mut Io, record: &PresenceRecord, device: Option<PublicKey>) -> bool {
    let cert = &record.body.cert.body;
    if io.accounts.refuses(
        &cert.device_key,
        &cert.account_key,
        io.now.unix_s,
        io.params,
    ) {
        io.stats.revoked_refused += 1;
        return false;
    }
    let valid = device.is_none_or(|device| record.body.cert.body.device_key == device)
        && verify_presence(
            io.mode,
            record,
            io.now.unix_s,
            io.params.clock_skew_tolerance_s,
        )
        .is_ok();
    if !valid {
        io.stats.signatures_rejected += 1;
    }
    valid
}

/// Why a resume was not accepted as it stands (the client falls back to a
/// full login, except when the supernode is busy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResumeRefusal {
    WrongAddress,
    UnknownIssuer,
    BadTicket,
    Revoked,
    BadProof,
    Replayed,
    GuardFull,
}

#[derive(Clone, Copy, Debug)]
struct Request {
    slot: u32,
    generation: u32,
    target: NodeId,
    sent_at: Instant,
}

#[derive(Clone, Debug)]
struct Join {
    seeds: Vec<Contact>,
    tries: usize,
    cursor: u32,
    deadline: Instant,
    /// Asking a lost member whether a partition healed: the next page is
    /// asked for only while pages bring members we did not know.
    rediscovery: bool,
}

/// A member that joined or left, remembered until our clients' records
/// near it are stored again.
struct MemberChange {
    id: NodeId,
    joined: bool,
    /// The keys whose replica sets it can change.
    range: (NodeId, NodeId),
}

pub struct SupernodeState {
    contact: Contact,
    node_id: NodeId,
    challenge_secret: [u8; 32],
    clients: Attached,
    membership: Membership,
    records: BTreeMap<NodeId, Box<PresenceRecord>>,
    lookups: Vec<Option<(u32, Lookup)>>,
    lookups_live: usize,
    lookup_generation: u32,
    requests: BTreeMap<u32, Request>,
    next_query_id: u32,
    lookup_check_at: Instant,
    next_sweep_at: Instant,
    next_record_sweep_at: Instant,
    join: Option<Join>,
    /// One more full sync from another member shortly after joining picks
    /// up the members that joined while we did (anti-entropy).
    resync_at: Option<Instant>,
    resynced: bool,
    demotable: bool,
    idle_since: Option<Instant>,
    demotion_due: bool,
    /// Login budget (full logins and resumes).
    handshakes: TokenBucket,
    /// Budget of network lookups started for clients.
    lookup_budget: TokenBucket,
    /// Budget of relay requests checked (each a signature verification).
    relay_budget: TokenBucket,
    /// Highest resume counter seen per device (replay guard), with when.
    resume_counters: FxHashMap<PublicKey, (u64, Instant)>,
    /// Envelopes for the devices of the accounts whose presence we hold.
    mailbox: Mailbox,
    /// Peer pairs this supernode relays for (`relay.rs`).
    pub(crate) relays: crate::relay::Relays,
    /// Members declared dead in the last hour (bounded), with when: asked
    /// now and then whether they are back (a healed partition).
    lost: Vec<(Contact, Instant)>,
    rediscover_at: Option<Instant>,
    /// Set by [`SupernodeState::drain`]: the shutdown is under way and
    /// ends when the last client has moved, or at this instant.
    leaving_at: Option<Instant>,
    /// Members that joined or left (with the key range near them), whose
    /// own clients' records are re-stored together once the burst of
    /// changes settles (`None`: the list overflowed, re-store every record
    /// on every replica).
    restore_changes: Option<Vec<MemberChange>>,
    /// When the gathered re-store runs, and when the burst began.
    restore_at: Option<(Instant, Instant)>,
    /// Envelopes recently forwarded to our clients, so the copies the other
    /// replicas push are not forwarded again (bounded, short-lived).
    recent_forwards: BTreeMap<EnvelopeId, Instant>,
    /// Name registrations this supernode coordinates, lookups it runs for
    /// its clients, and its per-account claim counts (`supernode/names.rs`).
    registrations: BTreeMap<u32, crate::registry::Registration>,
    name_queries: BTreeMap<u32, crate::registry::NameQuery>,
    claim_limits: crate::registry::ClaimLimits,
    vote_windows: crate::registry::VoteWindows,
    /// Certificates that would win but whose voters are not known yet.
    name_challengers: BTreeMap<NodeId, crate::registry::SetAside>,
    /// Members that left in the last hour, for checking name votes.
    departed: crate::registry::Departed,
    /// Bundle fetches this supernode runs for its clients, and the budget
    /// of bundle and deal checks and evaluations (`supernode/bundles.rs`).
    bundle_queries: BTreeMap<u32, bundles::BundleQuery>,
    bundle_budget: crate::overload::TokenBucket,
}

impl SupernodeState {
    /// `secret` is 32 random bytes: the challenge key and the puzzle's start nonce.
    pub(crate) fn new(
        params: &Params,
        identity: &DeviceIdentity,
        addr: Addr,
        now: Now,
        secret: [u8; 32],
        demotable: bool,
    ) -> Self {
        let key = identity.keypair.public();
        let start_nonce = u64::from_le_bytes(secret[..8].try_into().unwrap_or_default());
        let (id_nonce, node_id) =
            solve_id_puzzle(&key, params.id_puzzle_difficulty_bits, start_nonce);
        let contact = Contact {
            key,
            id_nonce,
            addr,
        };
        // Restarts get a higher incarnation than anything said before (seconds of wall clock).
        let me = MemberUpdate {
            contact,
            incarnation: now.unix_s.min(u32::MAX as u64 / 2) as u32,
            state: MemberState::Alive,
            load_pct: 0,
        };
        let challenge_secret = blake3::derive_key("peerline v1 attach challenge", &secret);
        SupernodeState {
            contact,
            node_id,
            challenge_secret,
            clients: Attached::default(),
            membership: Membership::new(
                node_id,
                me,
                now.instant,
                params.membership_view_len_max,
                params.membership_bucket_len_max,
                params.suspect_timeout_ms,
                u64::from_le_bytes(
                    blake3::derive_key("peerline v1 membership filter", &secret)[..8]
                        .try_into()
                        .expect("8 bytes"),
                ),
            ),
            records: BTreeMap::new(),
            lookups: Vec::new(),
            lookups_live: 0,
            lookup_generation: 0,
            requests: BTreeMap::new(),
            next_query_id: 0,
            lookup_check_at: Instant::NEVER,
            next_sweep_at: now.instant.add_ms(params.sweep_interval_ms),
            next_record_sweep_at: now.instant.add_ms(RECORD_SWEEP_INTERVAL_MS),
            join: None,
            resync_at: None,
            resynced: false,
            demotable,
            idle_since: None,
            demotion_due: false,
            handshakes: TokenBucket::new(
                params.handshakes_per_s,
                params.handshake_burst,
                now.instant,
            ),
            lookup_budget: TokenBucket::new(params.lookups_per_s, params.lookup_burst, now.instant),
            relay_budget: TokenBucket::new(
                params.relay_requests_per_s,
                params.relay_request_burst,
                now.instant,
            ),
            resume_counters: FxHashMap::default(),
            mailbox: Mailbox::default(),
            relays: crate::relay::Relays::default(),
            recent_forwards: BTreeMap::new(),
            lost: Vec::new(),
            rediscover_at: None,
            leaving_at: None,
            restore_changes: Some(Vec::new()),
            restore_at: None,
            registrations: BTreeMap::new(),
            name_queries: BTreeMap::new(),
            claim_limits: Default::default(),
            vote_windows: Default::default(),
            name_challengers: BTreeMap::new(),
            departed: Default::default(),
            bundle_queries: BTreeMap::new(),
            bundle_budget: crate::overload::TokenBucket::new(
                bundles::BUNDLE_WORK_PER_S,
                bundles::BUNDLE_WORK_BURST,
                now.instant,
            ),
        }
    }

    pub(crate) fn mailbox_len(&self) -> usize {
        self.mailbox.len()
    }

    pub(crate) fn holds_record(&self, account: &PublicKey) -> bool {
        self.records.contains_key(&presence_key(account))
    }

    pub(crate) fn mailbox_recipients(&self) -> Vec<(PublicKey, PublicKey, u64)> {
        self.mailbox.recipients()
    }

    pub(crate) fn contact(&self) -> Contact {
        self.contact
    }

    pub(crate) fn client_count(&self) -> usize {
        self.clients.len()
    }

    pub(crate) fn record_count(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn membership_len(&self) -> usize {
        self.membership.len()
    }

    /// Up to `len_max` other members believed alive, spread evenly over the
    /// view (in ID order): what a restarted supernode can rejoin through.
    pub(crate) fn alive_members_sample(&self, len_max: usize) -> Vec<Contact> {
        let alive: Vec<Contact> = self
            .membership
            .members()
            .iter()
            .filter(|m| m.id != self.node_id && m.update.state == MemberState::Alive)
            .map(|m| m.update.contact)
            .collect();
        if alive.len() <= len_max {
            return alive;
        }
        (0..len_max)
            .map(|i| alive[i * alive.len() / len_max])
            .collect()
    }

    /// Forgets every attachment of a (revoked) device.
    pub(crate) fn drop_device(&mut self, device_key: &PublicKey) {
        self.clients
            .retain(|_, slot| slot.device_key != *device_key);
    }

    pub(crate) fn wants_demotion(&self) -> bool {
        self.demotion_due
    }

    fn load_pct(&self, params: &Params) -> u8 {
        (self.clients.len() * 100 / params.supernode_capacity_attachments.max(1)).min(255) as u8
    }

    fn me(&self) -> MemberUpdate {
        self.membership.me
    }

    pub(crate) fn next_deadline(&self) -> Instant {
        let join = self.join.as_ref().map_or(Instant::NEVER, |j| j.deadline);
        let join = join
            .min(self.resync_at.unwrap_or(Instant::NEVER))
            .min(self.rediscover_at.unwrap_or(Instant::NEVER))
            .min(self.restore_at.map_or(Instant::NEVER, |(at, _)| at));
        self.membership
            .next_deadline()
            .min(self.next_sweep_at)
            .min(self.lookup_check_at)
            .min(self.names_deadline())
            .min(self.bundles_deadline())
            .min(join)
            .min(self.leaving_at.unwrap_or(Instant::NEVER))
    }

    /// Joins the supernode overlay through any of `seeds`.
    pub(crate) fn join(&mut self, io: &mut Io, seeds: &[Contact]) {
        let seeds: Vec<Contact> = seeds
            .iter()
            .filter(|c| c.key != self.contact.key)
            .copied()
            .take(JOIN_TRIES_MAX)
            .collect();
        if seeds.is_empty() {
            return;
        }
        let first = seeds[0];
        self.join = Some(Join {
            seeds,
            tries: 1,
            cursor: 0,
            deadline: io.now.instant.add_ms(SYNC_TIMEOUT_MS),
            rediscovery: false,
        });
        io.send(
            first.addr,
            &Message::SyncRequest {
                cursor: 0,
                sender: self.me(),
            },
        );
    }

    /// A supernode learnt of after start (the daemon's LAN discovery): join
    /// through it when this one knows no other member and is not joining
    /// already. A supernode in an overlay ignores it (membership finds
    /// members; a contact from the local network is only a way in).
    pub(crate) fn join_if_alone(&mut self, io: &mut Io, contact: Contact) {
        if self.join.is_none() && self.membership.len() <= 1 {
            self.join(io, &[contact]);
        }
    }

    /// Starts a graceful shutdown that never drops a client below its
    /// attachment target: every client is told [`Message::Leaving`] with
    /// alternates, attaches elsewhere and then detaches from us, while we
    /// go on serving it and take no new clients. [`Self::drained`] says
    /// when to finish with [`Self::shutdown`]: when the last client has
    /// gone, or after `drain_max_ms`.
    pub(crate) fn drain(&mut self, io: &mut Io) {
        if self.leaving_at.is_some() {
            return;
        }
        if io.params.naive {
            // The classic baseline just goes: `shutdown` detaches at once.
            self.leaving_at = Some(io.now.instant);
            return;
        }
        self.leaving_at = Some(io.now.instant.add_ms(io.params.drain_max_ms));
        // Full, so that nobody names us as an alternate any more.
        self.membership.announce_load(FULL_LOAD_PCT, io.now.instant);
        for addr in self.sorted_client_addrs() {
            let alternates = self.alternates_for_one(io);
            io.send(addr, &Message::Leaving { alternates });
        }
    }

    pub(crate) fn is_leaving(&self) -> bool {
        self.leaving_at.is_some()
    }

    /// Whether a drain begun by [`Self::drain`] is over.
    pub(crate) fn drained(&self, now: Instant) -> bool {
        self.leaving_at
            .is_some_and(|at| self.clients.is_empty() || now >= at)
    }

    /// Alternates for one client of a leaving supernode. Each client gets
    /// its own random sample: one list for all ~800 sent them all to the
    /// same few supernodes at once — most were answered busy and were
    /// seconds late re-attaching (measured at 1M clients: ~620 busy
    /// answers per graceful leave).
    fn alternates_for_one(&self, io: &mut Io) -> BoundedVec<Contact, CONTACTS_PER_MESSAGE_MAX> {
        BoundedVec::truncating(self.membership.least_loaded(
            ALTERNATES_PER_ANSWER,
            &self.node_id,
            io.rng,
        ))
    }

    pub(crate) fn shutdown(&mut self, io: &mut Io) {
        for addr in self.sorted_client_addrs() {
            let alternates = self.alternates_for_one(io);
            io.send(addr, &Message::Detach { alternates });
        }
        self.clients.clear();
        // Hand our records to the nearest other members, then say goodbye.
        self.membership.announce_leaving(io.now.instant);
        let records: Vec<Box<PresenceRecord>> =
            std::mem::take(&mut self.records).into_values().collect();
        for record in records {
            let key = presence_key(&record.body.cert.body.account_key);
            let targets: Vec<Contact> = self
                .membership
                .closest(&key, io.params.replication_k + 1)
                .iter()
                .filter(|m| m.id != self.node_id)
                .map(|m| m.update.contact)
                .collect();
            for contact in targets {
                io.send(
                    contact.addr,
                    &Message::Store {
                        record: (*record).clone(),
                    },
                );
            }
        }
        // Our goodbye is failure news: push it like any other.
        self.push_urgent(io);
    }

    pub(crate) fn handle(&mut self, io: &mut Io, from: Addr, message: Message) {
        match message {
            Message::AttachHello { cert } => self.on_attach_hello(io, from, cert),
            Message::AttachProof {
                cert,
                challenge,
                signature,
            } => self.on_attach_proof(io, from, cert, challenge, signature),
            Message::AttachResume {
                ticket,
                counter,
                signature,
            } => self.on_attach_resume(io, from, ticket, counter, signature),
            Message::Ping { sequence } => self.on_ping(io, from, sequence),
            Message::Keepalive => match self.clients.get_mut(&from) {
                Some(slot) => slot.last_seen = io.now.instant,
                None => io.send(from, &Message::NotAttached),
            },
            Message::Detach { .. } => {
                self.clients.remove(&from);
            }
            Message::Publish { record } => self.on_publish(io, from, record),
            Message::LookupRequest { query_id, account } => {
                self.on_lookup_request(io, from, query_id, account)
            }
            Message::ProbeRequest { token } => {
                if self.clients.contains_key(&from) {
                    if let Some(member) = self.membership.random_other(io.rng) {
                        let addr = member.update.contact.addr;
                        io.send(
                            addr,
                            &Message::ProbeForward {
                                target: from,
                                token,
                            },
                        );
                    }
                }
            }
            Message::ProbeForward { target, token } => io.send(target, &Message::Probe { token }),
            Message::GossipPing {
                sequence,
                sender,
                updates,
            } => {
                self.apply_update(io, sender);
                for update in updates.iter() {
                    self.apply_update(io, *update);
                }
                self.push_urgent(io);
                if sequence == URGENT_PUSH_SEQUENCE {
                    // A one-way push of failure news: nobody waits for
                    // its ack. Each supernode's death reaches every member
                    // ~`URGENT_FANOUT` times, so these pushes grow with the
                    // square of the supernode count: their acks were 6% of
                    // all gossip acks at 250 supernodes (measured), and
                    // should be ~40% at 2,500 (10× the deaths, each pushed
                    // to 10× the members; not measured).
                    return;
                }
                let updates = BoundedVec::truncating(self.membership.take_updates());
                io.send(
                    from,
                    &Message::GossipAck {
                        sequence,
                        sender: self.me(),
                        updates,
                    },
                );
            }
            Message::GossipAck {
                sequence,
                sender,
                updates,
            } => {
                self.membership.ack_received(sequence);
                self.apply_update(io, sender);
                for update in updates.iter() {
                    self.apply_update(io, *update);
                }
                self.push_urgent(io);
            }
            Message::SyncRequest { cursor, sender } => {
                self.apply_update(io, sender);
                let (page, next) = self.membership.page(cursor as usize, SYNC_PAGE_MEMBERS_MAX);
                io.send(
                    from,
                    &Message::SyncResponse {
                        members: BoundedVec::truncating(page),
                        next_cursor: next.map(|n| n as u32),
                    },
                );
            }
            Message::SyncResponse {
                members,
                next_cursor,
            } => self.on_sync_response(io, from, &members, next_cursor),
            Message::Store { record } => self.on_store(io, record),
            Message::FindValue { query_id, key } => self.on_find_value(io, from, query_id, key),
            Message::FindValueResponse {
                query_id,
                record,
                closer,
            } => self.on_find_value_response(io, query_id, record, &closer),
            Message::MailPut { envelope } => self.on_mail_put(io, from, envelope),
            Message::MailStore { envelope, push } => self.on_mail_store(io, envelope, push),
            Message::MailDeliver { envelope } => self.deliver_to_client(io, envelope),
            Message::MailFetch { account, device } => {
                let (envelopes, more) = self.mailbox.window(&account, &device);
                if envelopes.is_empty() && !more {
                    return;
                }
                io.send(
                    from,
                    &Message::MailBatch {
                        device,
                        envelopes: BoundedVec::truncating(envelopes),
                        more,
                    },
                );
            }
            Message::MailBatch {
                device,
                envelopes,
                more,
            } => self.on_mail_batch(io, device, envelopes.as_slice(), more),
            Message::MailDone { ids } => self.on_mail_done(io, from, ids.as_slice()),
            Message::MailDelete { device, ids } => {
                for id in ids.iter() {
                    self.mailbox.delete(&device, id);
                }
            }
            Message::RelayRequest { body, signature } => {
                self.on_relay_request(io, from, body, &signature)
            }
            message @ (Message::DeviceListPush { .. } | Message::RootRotationPush { .. }) => {
                self.on_account_push(io, from, message)
            }
            // The plaintext `PunchCandidates` of earlier builds is no longer
            // forwarded (its candidates were readable on the way).
            message @ Message::SealedCandidates { .. } => {
                let own = self.contact().addr;
                let membership = &self.membership;
                crate::punch::forward(io, &self.clients, own, from, message, |addr| {
                    membership.alive_at(addr)
                });
            }
            Message::NameRegister { claim } => self.on_name_register(io, from, claim),
            Message::NameVoteRequest { query_id, claim } => {
                self.on_name_vote_request(io, from, query_id, claim)
            }
            Message::NameVoteReply {
                query_id,
                vote,
                certificate,
            } => self.on_name_vote_reply(io, from, query_id, vote, certificate),
            Message::NameStore { certificate } => self.on_name_store(io, from, certificate),
            Message::NameLookup { query_id, name_key } => {
                self.on_name_lookup(io, from, query_id, name_key)
            }
            Message::NameFind { query_id, name_key } => {
                self.on_name_find(io, from, query_id, name_key)
            }
            Message::NameFindResponse {
                query_id,
                certificate,
            } => self.on_name_find_response(io, from, query_id, certificate),
            Message::BundleStore { bundle } => self.on_bundle_store(io, from, bundle),
            Message::BundleFetch {
                query_id,
                account,
                indices,
            } => self.on_bundle_fetch(io, from, query_id, account, indices),
            Message::BundleFetchResponse {
                query_id, bundle, ..
            } => self.on_bundle_fetch_response(io, from, query_id, bundle),
            Message::DeviceListStore { list } => self.on_device_list_store(io, from, list),
            Message::DeviceListFetch { query_id, account } => {
                self.on_device_list_fetch(io, from, query_id, account)
            }
            Message::DeviceListFetchResponse { query_id, list } => {
                self.on_device_list_fetch_response(io, from, query_id, list)
            }
            Message::ShareDealPush { deal } => self.on_share_deal_push(io, deal),
            Message::OprfEvaluate {
                query_id,
                account,
                blinded,
            } => self.on_oprf_evaluate(io, from, query_id, account, blinded),
            _ => io.stats.messages_unexpected += 1,
        }
    }

    /// A relay request, within the budget of signature checks relaying
    /// may spend (beyond it: refused with the wait).
    fn on_relay_request(
        &mut self,
        io: &mut Io,
        from: Addr,
        body: peerline_proto::RelayRequestBody,
        signature: &peerline_proto::Signature,
    ) {
        let now = io.now.instant;
        if !self.relay_budget.try_take(now, 1, 0) {
            io.stats.relay_refused += 1;
            let wait_ms = self.relay_budget.wait_ms(now, 1, 0);
            io.send(
                from,
                &Message::RelayRefused {
                    session: body.session,
                    retry_after_ms: u32::try_from(wait_ms).unwrap_or(u32::MAX),
                },
            );
            return;
        }
        let own = self.contact().addr;
        let attached = self
            .clients
            .get(&from)
            .is_some_and(|slot| slot.device_key == body.from_device);
        self.relays
            .on_request(io, from, own, attached, body, signature);
    }

    // ---- account statements (revocation.rs) ----

    /// A device list or root rotation from an attached client or a member
    /// (strangers are not worth a signature check): a new one is stored,
    /// passed on and enforced at once.
    fn on_account_push(&mut self, io: &mut Io, from: Addr, message: Message) {
        if !self.clients.contains_key(&from) && !self.membership.alive_at(&from) {
            io.stats.account_pushes_unchecked += 1;
            return;
        }
        let verdict = match &message {
            Message::DeviceListPush { list } => {
                io.accounts.on_device_list(io.mode, list, io.now, io.params)
            }
            Message::RootRotationPush { rotation } => io
                .accounts
                .on_rotation(io.mode, rotation, io.now, io.params),
            _ => return,
        };
        let account = match verdict {
            Verdict::Stale => {
                io.stats.account_pushes_stale += 1;
                return;
            }
            Verdict::OverBudget => {
                io.stats.account_pushes_unchecked += 1;
                return;
            }
            Verdict::Invalid => {
                io.stats.signatures_rejected += 1;
                return;
            }
            Verdict::Taken { account } => account,
        };
        match message {
            Message::DeviceListPush { .. } => io.stats.device_lists_accepted += 1,
            _ => io.stats.root_rotations_accepted += 1,
        }
        for member in self.random_members(io, ACCOUNT_PUSH_FANOUT, from) {
            io.send(member.addr, &message);
        }
        // Then a few rumour rounds, one member each: as many as membership
        // gossip retransmits an update (3·log2 n), so that a member the
        // first pushes missed hears it too.
        let members = self.membership.len().max(2) as u32;
        let rounds = io.params.gossip_retransmit_mult * (u32::BITS - members.leading_zeros());
        let start = io.random_u64();
        io.accounts.spread(message, rounds, start, io.now.instant);
        self.enforce_account(io, &account);
    }

    /// Detaches the clients of `account` the table now refuses and drops
    /// the account's presence record when it is theirs.
    fn enforce_account(&mut self, io: &mut Io, account: &PublicKey) {
        let refused: Vec<Addr> = self
            .sorted_client_addrs()
            .into_iter()
            .filter(|addr| {
                self.clients.get(addr).is_some_and(|slot| {
                    slot.account_key == *account
                        && io.accounts.is_refused(&slot.device_key, &slot.account_key)
                })
            })
            .collect();
        for addr in refused {
            self.clients.remove(&addr);
            io.stats.revoked_detached += 1;
            io.send(
                addr,
                &Message::Detach {
                    alternates: BoundedVec::new(),
                },
            );
        }
        let key = presence_key(account);
        if self.records.get(&key).is_some_and(|record| {
            let cert = &record.body.cert.body;
            io.accounts.is_refused(&cert.device_key, &cert.account_key)
        }) {
            self.records.remove(&key);
        }
    }

    /// Up to `count` distinct random members other than ourselves and `not`.
    fn random_members(&self, io: &mut Io, count: usize, not: Addr) -> Vec<Contact> {
        let mut picked: Vec<Contact> = Vec::with_capacity(count);
        for _ in 0..count * 4 {
            if picked.len() == count {
                break;
            }
            let Some(member) = self.membership.random_other(io.rng) else {
                break;
            };
            let contact = member.update.contact;
            if contact.addr != not
                && member.update.state == MemberState::Alive
                && !picked.iter().any(|c| c.key == contact.key)
            {
                picked.push(contact);
            }
        }
        picked
    }

    /// One rumour round: every statement being spread goes to one member,
    /// the next one (in ID order, ourselves left out) after the member of
    /// its previous round.
    fn spread_account_rumors(&mut self, io: &mut Io) {
        let round = io.accounts.take_rumor_round(io.now.instant);
        if round.is_empty() {
            return;
        }
        let members = self.membership.members();
        let own = members.iter().position(|m| m.id == self.node_id);
        let others = members.len() - usize::from(own.is_some());
        if others == 0 {
            return;
        }
        for (message, position) in round {
            let mut index = (position % others as u64) as usize;
            if own.is_some_and(|own| index >= own) {
                index += 1;
            }
            io.send(members[index].update.contact.addr, &message);
        }
    }

    // ---- attach (login) ----

    fn challenge_for(&self, from: &Addr, device_key: &PublicKey, window: u64) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.challenge_secret);
        hasher.update(&from.ip);
        hasher.update(&from.port.to_le_bytes());
        hasher.update(&device_key.0);
        hasher.update(&window.to_le_bytes());
        *hasher.finalize().as_bytes()
    }

    /// Turns a request away with alternates that have room and a retry
    /// hint: at least `wait_ms` (when our budget refills), spread by jitter
    /// so the clients we turn away together do not come back together.
    fn busy(&self, io: &mut Io, to: Addr, reason: BusyReason, wait_ms: u64) {
        let alternates = BoundedVec::truncating(self.membership.least_loaded(
            ALTERNATES_PER_ANSWER,
            &self.node_id,
            io.rng,
        ));
        let spread_ms = io.params.retry_backoff_base_ms.max(wait_ms);
        let retry_after_ms =
            (wait_ms + io.params.retry_backoff_base_ms / 2 + io.jitter_ms(spread_ms))
                .min(u32::MAX as u64) as u32;
        io.stats.busy_sent += 1;
        io.send(
            to,
            &Message::Busy {
                reason,
                retry_after_ms,
                alternates,
            },
        );
    }

    fn has_room_for(&self, io: &Io, from: &Addr) -> bool {
        io.params.naive
            || self.clients.contains_key(from)
            || self.clients.len() < io.params.supernode_capacity_attachments
    }

    /// Admission of a handshake: room for one more client, and budget. A
    /// full login must leave the reserve for resuming clients.
    fn admit_handshake(&mut self, io: &mut Io, from: Addr, resume: bool) -> bool {
        if self.leaving_at.is_some() && !self.clients.contains_key(&from) {
            self.busy(io, from, BusyReason::Demoting, 0);
            return false;
        }
        if io.params.naive {
            return true;
        }
        if !self.has_room_for(io, &from) {
            self.busy(io, from, BusyReason::AttachmentsFull, 0);
            return false;
        }
        let (cost, reserve) = if resume {
            (1, 0)
        } else {
            (io.params.login_cost_tokens, io.params.login_reserve_tokens)
        };
        let now = io.now.instant;
        if self.handshakes.try_take(now, cost, reserve) {
            return true;
        }
        let wait_ms = self.handshakes.wait_ms(now, cost, reserve);
        self.busy(io, from, BusyReason::HandshakesFull, wait_ms);
        false
    }

    fn send_challenge(&self, io: &mut Io, from: Addr, device_key: &PublicKey) {
        // Stateless: nothing is kept until the client proves its key.
        let window = io.now.instant.as_s() / io.params.challenge_window_s.max(1);
        let challenge = self.challenge_for(&from, device_key, window);
        io.send(
            from,
            &Message::AttachChallenge {
                supernode: self.contact,
                challenge,
            },
        );
    }

    fn on_attach_hello(&mut self, io: &mut Io, from: Addr, cert: DeviceCert) {
        if !self.admit_handshake(io, from, false) {
            return;
        }
        self.send_challenge(io, from, &cert.body.device_key);
    }

    fn on_attach_proof(
        &mut self,
        io: &mut Io,
        from: Addr,
        cert: DeviceCert,
        challenge: [u8; 32],
        signature: Signature,
    ) {
        let window = io.now.instant.as_s() / io.params.challenge_window_s.max(1);
        let fresh = challenge == self.challenge_for(&from, &cert.body.device_key, window)
            || challenge
                == self.challenge_for(&from, &cert.body.device_key, window.saturating_sub(1));
        if !fresh {
            io.stats.messages_unexpected += 1;
            return;
        }
        let proof = attach_proof_bytes(&challenge, &self.contact.key);
        let valid = verify_device_cert(
            io.mode,
            &cert,
            io.now.unix_s,
            io.params.clock_skew_tolerance_s,
        )
        .is_ok()
            && verify(
                io.mode,
                &cert.body.device_key,
                domain::ATTACH,
                &proof,
                &signature,
            )
            .is_ok();
        if !valid {
            io.stats.signatures_rejected += 1;
            return;
        }
        if io.accounts.refuses(
            &cert.body.device_key,
            &cert.body.account_key,
            io.now.unix_s,
            io.params,
        ) {
            io.stats.revoked_refused += 1;
            // The device proved its key: tell it why, so it stops trying.
            let reason = match io.accounts.rotation(&cert.body.account_key) {
                Some(_) => LoginRefusal::RootRotated,
                None => LoginRefusal::DeviceRevoked,
            };
            return io.send(from, &Message::LoginRefused { reason });
        }
        if self.leaving_at.is_some() && !self.clients.contains_key(&from) {
            // Challenged before the drain began.
            self.busy(io, from, BusyReason::Demoting, 0);
            return;
        }
        if !self.has_room_for(io, &from) {
            self.busy(io, from, BusyReason::AttachmentsFull, 0);
            return;
        }
        self.accept(
            io,
            from,
            cert.body.device_key,
            cert.body.account_key,
            cert.body.expires_unix_s,
        );
    }

    /// Takes the client in and answers with peers and a fresh ticket.
    fn accept(
        &mut self,
        io: &mut Io,
        from: Addr,
        device_key: PublicKey,
        account_key: PublicKey,
        cert_expires_unix_s: u64,
    ) {
        let now = io.now.instant;
        let mut slot = ClientSlot {
            device_key,
            account_key,
            cert_expires_unix_s,
            last_seen: now,
            ticket_issued: now,
            record: None,
            record_key: NodeId::default(),
            mail_more: false,
        };
        let ticket = Self::issue_ticket(io, self.contact, from, &mut slot);
        self.clients.insert(from, slot);
        let peers = BoundedVec::truncating(self.membership.least_loaded(
            ALTERNATES_PER_ANSWER,
            &self.node_id,
            io.rng,
        ));
        io.send(
            from,
            &Message::AttachAccepted {
                keepalive_interval_s: (io.params.keepalive_interval_ms / 1000) as u16,
                load_pct: self.load_pct(io.params),
                peers,
                ticket,
            },
        );
        // Whatever waited for this device comes now, a window at a time.
        self.fetch_mail(io, account_key, device_key);
    }

    /// A resumption ticket for the client in `slot`, issued by `issuer`
    /// (none in naive mode).
    fn issue_ticket(
        io: &mut Io,
        issuer: Contact,
        addr: Addr,
        slot: &mut ClientSlot,
    ) -> Option<Ticket> {
        if io.params.naive {
            return None;
        }
        slot.ticket_issued = io.now.instant;
        let body = TicketBody {
            device_key: slot.device_key,
            account_key: slot.account_key,
            cert_expires_unix_s: slot.cert_expires_unix_s,
            addr,
            issued_unix_s: io.now.unix_s,
            expires_unix_s: io.now.unix_s + io.params.ticket_ttl_s,
            issuer,
        };
        Some(sign_ticket(&io.identity.keypair, body))
    }

    fn on_ping(&mut self, io: &mut Io, from: Addr, sequence: u32) {
        let load_pct = self.load_pct(io.params);
        let network_load_pct = self.membership.average_load_with_own(load_pct);
        let now = io.now.instant;
        let refresh_ms = io.params.ticket_refresh_s * 1000;
        let issuer = self.contact;
        let Some(slot) = self.clients.get_mut(&from) else {
            io.send(from, &Message::NotAttached);
            return;
        };
        slot.last_seen = now;
        let ticket = if now.since_ms(slot.ticket_issued) >= refresh_ms {
            Self::issue_ticket(io, issuer, from, slot)
        } else {
            None
        };
        io.send(
            from,
            &Message::Pong {
                sequence,
                load_pct,
                network_load_pct,
                ticket,
            },
        );
    }

    /// Re-attach with a ticket: one round trip. Anything wrong with the
    /// ticket or proof falls back to the full login (a challenge), so a
    /// stale ticket costs the client one round trip, never the attachment.
    fn on_attach_resume(
        &mut self,
        io: &mut Io,
        from: Addr,
        ticket: Ticket,
        counter: u64,
        signature: Signature,
    ) {
        if io.params.naive {
            io.stats.messages_unexpected += 1;
            return;
        }
        if !self.admit_handshake(io, from, true) {
            return;
        }
        match self.check_resume(io, from, &ticket, counter, &signature) {
            Ok(()) => {
                let body = ticket.body;
                self.accept(
                    io,
                    from,
                    body.device_key,
                    body.account_key,
                    body.cert_expires_unix_s,
                );
            }
            Err(ResumeRefusal::Revoked) => io.stats.revoked_refused += 1,
            Err(refusal) => {
                if matches!(
                    refusal,
                    ResumeRefusal::BadTicket | ResumeRefusal::BadProof | ResumeRefusal::Replayed
                ) {
                    io.stats.signatures_rejected += 1;
                }
                self.send_challenge(io, from, &ticket.body.device_key);
            }
        }
    }

    fn check_resume(
        &mut self,
        io: &mut Io,
        from: Addr,
        ticket: &Ticket,
        counter: u64,
        signature: &Signature,
    ) -> Result<(), ResumeRefusal> {
        let body = &ticket.body;
        if body.addr != from {
            return Err(ResumeRefusal::WrongAddress);
        }
        // A ticket is worth what its issuer is: a supernode we know (or
        // knew until recently — it may be the one that just died).
        let issuer_id = node_id(&body.issuer.key, body.issuer.id_nonce);
        let known = body.issuer.key == self.contact.key
            || (contact_id(&body.issuer, io.params.id_puzzle_difficulty_bits).is_ok()
                && self.membership.knows(&issuer_id));
        if !known {
            return Err(ResumeRefusal::UnknownIssuer);
        }
        verify_ticket(
            io.mode,
            ticket,
            io.now.unix_s,
            io.params.clock_skew_tolerance_s,
        )
        .map_err(|_| ResumeRefusal::BadTicket)?;
        if io.accounts.refuses(
            &body.device_key,
            &body.account_key,
            io.now.unix_s,
            io.params,
        ) {
            return Err(ResumeRefusal::Revoked);
        }
        let last = self.resume_counters.get(&body.device_key).map(|(c, _)| *c);
        if last.is_some_and(|last| counter <= last) {
            return Err(ResumeRefusal::Replayed);
        }
        if last.is_none() && self.resume_counters.len() >= io.params.resume_counters_max {
            return Err(ResumeRefusal::GuardFull);
        }
        let proof = resume_proof_bytes(&self.contact.key, ticket, counter);
        verify(io.mode, &body.device_key, domain::RESUME, &proof, signature)
            .map_err(|_| ResumeRefusal::BadProof)?;
        self.resume_counters
            .insert(body.device_key, (counter, io.now.instant));
        Ok(())
    }

    // ---- directory ----

    fn on_publish(&mut self, io: &mut Io, from: Addr, record: PresenceRecord) {
        let Some(slot) = self.clients.get_mut(&from) else {
            io.send(from, &Message::NotAttached);
            return;
        };
        if !presence_valid(io, &record, Some(slot.device_key)) {
            return;
        }
        slot.last_seen = io.now.instant;
        let key = presence_key(&record.body.cert.body.account_key);
        self.clients.set_record(&from, key, record.clone());
        // Every supernode the record names pushes it to the replicas: a lost
        // Publish at one of them must not leave the record unstored
        // (replicas keep one copy; the duplicate Store is idempotent).
        self.replicate(io, record);
    }

    /// Stores a record on its replica set.
    fn replicate(&mut self, io: &mut Io, record: PresenceRecord) {
        let key = presence_key(&record.body.cert.body.account_key);
        if self.membership.capped {
            self.start_lookup(
                io,
                Purpose::Replicate {
                    record: Box::new(record),
                },
                key,
            );
            return;
        }
        let targets: Vec<(NodeId, Contact)> = self
            .membership
            .closest(&key, io.params.replication_k)
            .iter()
            .map(|m| (m.id, m.update.contact))
            .collect();
        self.store_on(io, &targets, &record);
    }

    fn store_on(&mut self, io: &mut Io, targets: &[(NodeId, Contact)], record: &PresenceRecord) {
        for (id, contact) in targets {
            if *id == self.node_id {
                self.keep_record(io, record.clone());
            } else {
                io.send(
                    contact.addr,
                    &Message::Store {
                        record: record.clone(),
                    },
                );
            }
        }
    }

    /// Keeps the record if it is newer than ours; then any mail waiting
    /// for that device goes to the supernodes the record names (a device
    /// that moved, or whose record arrived late, gets what it missed).
    fn keep_record(&mut self, io: &mut Io, record: PresenceRecord) {
        let key = presence_key(&record.body.cert.body.account_key);
        match self.records.get_mut(&key) {
            Some(existing) if existing.body.sequence >= record.body.sequence => return,
            Some(existing) => **existing = record,
            None => {
                self.records.insert(key, Box::new(record));
            }
        }
        if self.mailbox.is_empty() {
            return;
        }
        let Some(record) = self.records.get(&key).map(|r| (**r).clone()) else {
            return;
        };
        let cert = &record.body.cert.body;
        let (waiting, _) = self.mailbox.window(&cert.account_key, &cert.device_key);
        for envelope in waiting {
            self.push_to(io, &record, envelope);
        }
    }

    fn on_store(&mut self, io: &mut Io, record: PresenceRecord) {
        // The cheap refusals first: a record we would not keep is not worth
        // a signature check (most stores repeat a record we already hold).
        let key = presence_key(&record.body.cert.body.account_key);
        if self
            .records
            .get(&key)
            .is_some_and(|existing| existing.body.sequence >= record.body.sequence)
        {
            return;
        }
        // Keep only what we are (nearly) responsible for; a capped view
        // cannot judge that, so it trusts the sender's iterative search.
        let k = io.params.replication_k * 2;
        let responsible = self.membership.capped
            || (!self
                .membership
                .surely_outside_closest(&key, &self.node_id, k)
                && self
                    .membership
                    .closest(&key, k)
                    .iter()
                    .any(|m| m.id == self.node_id));
        if !responsible {
            return;
        }
        if !presence_valid(io, &record, None) {
            return;
        }
        self.keep_record(io, record);
    }

    fn valid_record(&self, io: &Io, key: &NodeId) -> Option<PresenceRecord> {
        let record = self.records.get(key)?;
        let expired = record
            .body
            .expires_unix_s
            .saturating_add(io.params.clock_skew_tolerance_s)
            < io.now.unix_s;
        (!expired).then(|| (**record).clone())
    }

    fn on_find_value(&mut self, io: &mut Io, from: Addr, query_id: u32, key: NodeId) {
        let record = self.valid_record(io, &key);
        let closer = if record.is_some() {
            BoundedVec::new()
        } else {
            BoundedVec::truncating(
                self.membership
                    .closest(&key, CLOSER_PER_ANSWER.min(CONTACTS_PER_MESSAGE_MAX))
                    .iter()
                    .map(|m| m.update.contact),
            )
        };
        io.send(
            from,
            &Message::FindValueResponse {
                query_id,
                record,
                closer,
            },
        );
    }

    // ---- mailboxes ----

    /// The supernodes that keep `account`'s mailbox: its presence replicas
    /// (`wide`: twice as many, for fetching and deleting, because views of
    /// who is closest differ while membership changes).
    fn mail_replicas(&self, io: &Io, account: &PublicKey, wide: bool) -> Vec<(NodeId, Contact)> {
        let k = io.params.replication_k * if wide { 2 } else { 1 };
        self.membership
            .closest(&presence_key(account), k)
            .iter()
            .map(|m| (m.id, m.update.contact))
            .collect()
    }

    /// A client hands us an envelope: store it with the recipient's replicas.
    fn on_mail_put(&mut self, io: &mut Io, from: Addr, envelope: Envelope) {
        let Some(slot) = self.clients.get(&from) else {
            io.send(from, &Message::NotAttached);
            return;
        };
        if envelope.body.from_device != slot.device_key
            || verify_envelope(io.mode, &envelope).is_err()
        {
            io.stats.signatures_rejected += 1;
            return;
        }
        let replicas = self.mail_replicas(io, &envelope.body.to_account, false);
        // Every replica pushes if it holds the recipient's record: the
        // closest one may not (it joined since, or a handover was lost), and
        // the recipient's supernode forwards only the first copy.
        let push = true;
        for (id, contact) in replicas {
            if id == self.node_id {
                self.keep_mail(io, envelope.clone(), push);
            } else {
                io.send(
                    contact.addr,
                    &Message::MailStore {
                        envelope: envelope.clone(),
                        push,
                    },
                );
            }
        }
    }

    fn on_mail_store(&mut self, io: &mut Io, envelope: Envelope, push: bool) {
        if verify_envelope(io.mode, &envelope).is_err() {
            io.stats.signatures_rejected += 1;
            return;
        }
        self.keep_mail(io, envelope, push);
    }

    /// Keeps an envelope; the replica asked to push forwards a new one to
    /// the supernodes the recipient's presence record names.
    fn keep_mail(&mut self, io: &mut Io, envelope: Envelope, push: bool) {
        let params = io.params;
        match self.mailbox.store(
            envelope.clone(),
            params.mailbox_len_max,
            params.mailbox_sender_quota,
        ) {
            Ok(true) => {}
            // Already here (a re-send): push again, the first push may be lost.
            Ok(false) => {}
            Err(_) => {
                io.stats.mail_refused += 1;
                return;
            }
        }
        if !push {
            return;
        }
        let key = presence_key(&envelope.body.to_account);
        let Some(record) = self.valid_record(io, &key) else {
            return;
        };
        if record.body.cert.body.device_key == envelope.body.to_device {
            self.push_to(io, &record, envelope);
        }
    }

    /// Sends an envelope to every supernode `record` names (ourselves
    /// included: then straight to our client).
    fn push_to(&mut self, io: &mut Io, record: &PresenceRecord, envelope: Envelope) {
        for contact in record.body.supernodes.iter() {
            if contact.key == self.contact.key {
                self.deliver_to_client(io, envelope.clone());
            } else {
                io.send(
                    contact.addr,
                    &Message::MailDeliver {
                        envelope: envelope.clone(),
                    },
                );
            }
        }
    }

    /// Pushes envelopes still held 2, 4, 8, 16, … minutes after they were
    /// sent to their recipient again, when it is online (its record is
    /// here). A recipient that has one already acknowledges the copy, and
    /// that deletes it on the replicas the recipient's supernode knows now.
    /// Right after a partition heals those views lack the far side: the
    /// first deletes missed the far replicas, whose copies of delivered
    /// mail otherwise sat out the mailbox TTL (14 days; 4,648 delivered
    /// copies 14 minutes after a 20k-client partition healed, 3,971 of them
    /// on the key's true replicas). The doubling ages need no state and
    /// bound the pushes of a copy nobody deletes to ~15 over the TTL.
    fn re_push_old_mail(&mut self, io: &mut Io) {
        let now_s = io.now.unix_s;
        let due: Vec<Envelope> = self
            .mailbox
            .envelopes()
            .filter(|e| {
                let minutes = now_s.saturating_sub(e.body.sent_unix_s) / 60;
                minutes >= 2 && minutes.is_power_of_two()
            })
            .take(MAIL_REPUSH_PER_SWEEP_MAX)
            .cloned()
            .collect();
        for envelope in due {
            let key = presence_key(&envelope.body.to_account);
            let Some(record) = self.valid_record(io, &key) else {
                continue;
            };
            if record.body.cert.body.device_key == envelope.body.to_device {
                self.push_to(io, &record, envelope);
            }
        }
    }

    /// Hands a pushed envelope to the recipient if it is attached here,
    /// once: copies from the other replicas within a few seconds are dropped
    /// (a re-send after that goes through, the first may have been lost).
    fn deliver_to_client(&mut self, io: &mut Io, envelope: Envelope) {
        let device = envelope.body.to_device;
        let Some(addr) = self.clients.addr_of(&device) else {
            return;
        };
        let now = io.now.instant;
        let id = crate::identity::envelope_id(&envelope);
        if self
            .recent_forwards
            .get(&id)
            .is_some_and(|at| now.since_ms(*at) < FORWARD_DEDUP_MS)
        {
            return;
        }
        if self.recent_forwards.len() >= RECENT_FORWARDS_MAX {
            self.recent_forwards
                .retain(|_, at| now.since_ms(*at) < FORWARD_DEDUP_MS);
            if self.recent_forwards.len() >= RECENT_FORWARDS_MAX {
                self.recent_forwards.clear();
            }
        }
        self.recent_forwards.insert(id, now);
        io.send(addr, &Message::MailDeliver { envelope });
    }

    /// Asks the recipient's mailbox replicas for their first window.
    fn fetch_mail(&mut self, io: &mut Io, account: PublicKey, device: PublicKey) {
        for (id, contact) in self.mail_replicas(io, &account, true) {
            if id == self.node_id {
                let (envelopes, more) = self.mailbox.window(&account, &device);
                self.on_mail_batch(io, device, &envelopes, more);
            } else {
                io.send(contact.addr, &Message::MailFetch { account, device });
            }
        }
    }

    fn on_mail_batch(
        &mut self,
        io: &mut Io,
        device: PublicKey,
        envelopes: &[Envelope],
        more: bool,
    ) {
        let Some(addr) = self.clients.addr_of(&device) else {
            return;
        };
        if let Some(slot) = self.clients.get_mut(&addr) {
            slot.mail_more |= more;
        }
        for envelope in envelopes {
            if envelope.body.to_device == device {
                io.send(
                    addr,
                    &Message::MailDeliver {
                        envelope: envelope.clone(),
                    },
                );
            }
        }
    }

    /// The client has these: the replicas may drop them; if its mailbox
    /// had more, the next window follows (the client's pace, not a flood).
    fn on_mail_done(&mut self, io: &mut Io, from: Addr, ids: &[EnvelopeId]) {
        let Some(slot) = self.clients.get_mut(&from) else {
            return;
        };
        let (account, device) = (slot.account_key, slot.device_key);
        let fetch = std::mem::take(&mut slot.mail_more);
        let ids = BoundedVec::truncating(ids.iter().copied());
        for (id, contact) in self.mail_replicas(io, &account, true) {
            if id == self.node_id {
                for envelope_id in ids.iter() {
                    self.mailbox.delete(&device, envelope_id);
                }
            } else {
                io.send(
                    contact.addr,
                    &Message::MailDelete {
                        device,
                        ids: ids.clone(),
                    },
                );
            }
        }
        if fetch {
            self.fetch_mail(io, account, device);
        }
    }

    // ---- lookups ----

    fn on_lookup_request(&mut self, io: &mut Io, from: Addr, query_id: u32, account: PublicKey) {
        if !self.clients.contains_key(&from) {
            io.send(from, &Message::NotAttached);
            return;
        }
        let key = presence_key(&account);
        // Answer from our own store only as one of the record's replicas: a
        // copy kept from before (a healed partition, a shifted replica set)
        // may be stale, and the replicas hold the newest.
        let replica = self
            .membership
            .closest(&key, io.params.replication_k)
            .iter()
            .any(|m| m.id == self.node_id);
        if let Some(record) = self.valid_record(io, &key).filter(|_| replica) {
            io.send(
                from,
                &Message::LookupResponse {
                    query_id,
                    record: Some(record),
                    hops: 0,
                },
            );
            return;
        }
        let now = io.now.instant;
        if !io.params.naive
            && (self.lookups_live >= io.params.lookups_in_flight_max
                || !self.lookup_budget.try_take(now, 1, 0))
        {
            let wait_ms = self.lookup_budget.wait_ms(now, 1, 0);
            self.busy(io, from, BusyReason::LookupsFull, wait_ms);
            return;
        }
        self.start_lookup(
            io,
            Purpose::Client {
                addr: from,
                query_id,
            },
            key,
        );
    }

    fn start_lookup(&mut self, io: &mut Io, purpose: Purpose, key: NodeId) {
        let mut lookup = Lookup::new(purpose, key);
        let k = io.params.replication_k;
        for member in self
            .membership
            .closest(&key, k + io.params.lookup_alpha + 1)
        {
            if member.id != self.node_id && member.update.state != MemberState::Dead {
                lookup.offer(member.id, member.update.contact);
            }
        }
        self.lookup_generation = self.lookup_generation.wrapping_add(1);
        let slot = match self.lookups.iter().position(|l| l.is_none()) {
            Some(free) => free,
            None => {
                self.lookups.push(None);
                self.lookups.len() - 1
            }
        };
        self.lookups[slot] = Some((self.lookup_generation, lookup));
        self.lookups_live += 1;
        self.advance_lookup(io, slot);
    }

    /// Sends the next round, or finishes the lookup.
    fn advance_lookup(&mut self, io: &mut Io, slot: usize) {
        let Some((generation, lookup)) = self.lookups[slot].as_mut() else {
            return;
        };
        let generation = *generation;
        let k = io.params.replication_k;
        let done = match &lookup.purpose {
            Purpose::Client { .. } => lookup.best.is_some(),
            Purpose::Replicate { .. } => lookup.round > 0 && lookup.converged(k),
        };
        let targets = if done || lookup.round as u32 >= io.params.lookup_rounds_max {
            Vec::new()
        } else {
            lookup.next_targets(io.params.lookup_alpha)
        };
        if targets.is_empty() {
            self.finish_lookup(io, slot);
            return;
        }
        lookup.round += 1;
        lookup.outstanding = targets.len() as u8;
        lookup.round_deadline = io.now.instant.add_ms(io.params.find_request_timeout_ms);
        self.lookup_check_at = self.lookup_check_at.min(lookup.round_deadline);
        let key = lookup.key;
        for contact in targets {
            self.next_query_id = self.next_query_id.wrapping_add(1);
            let target = crate::identity::node_id(&contact.key, contact.id_nonce);
            self.requests.insert(
                self.next_query_id,
                Request {
                    slot: slot as u32,
                    generation,
                    target,
                    sent_at: io.now.instant,
                },
            );
            io.send(
                contact.addr,
                &Message::FindValue {
                    query_id: self.next_query_id,
                    key,
                },
            );
        }
    }

    fn finish_lookup(&mut self, io: &mut Io, slot: usize) {
        let Some((_, lookup)) = self.lookups[slot].take() else {
            return;
        };
        self.lookups_live -= 1;
        match lookup.purpose {
            Purpose::Client { addr, query_id } => {
                let record = lookup.best.map(|b| *b);
                let hops = if record.is_some() { lookup.round } else { 0 };
                io.send(
                    addr,
                    &Message::LookupResponse {
                        query_id,
                        record,
                        hops,
                    },
                );
            }
            Purpose::Replicate { ref record } => {
                let k = io.params.replication_k;
                let mut targets: Vec<(NodeId, Contact)> = lookup
                    .closest_answered(k)
                    .into_iter()
                    .map(|c| (crate::identity::node_id(&c.key, c.id_nonce), c))
                    .collect();
                // We are a replica too if we are closer than the k-th one found.
                let self_distance = self.node_id.distance(&lookup.key);
                if targets.len() < k
                    || targets
                        .last()
                        .is_some_and(|(id, _)| self_distance < id.distance(&lookup.key))
                {
                    targets.truncate(k.saturating_sub(1));
                    targets.push((self.node_id, self.contact));
                }
                let record = (**record).clone();
                self.store_on(io, &targets, &record);
            }
        }
    }

    fn on_find_value_response(
        &mut self,
        io: &mut Io,
        query_id: u32,
        record: Option<PresenceRecord>,
        closer: &[Contact],
    ) {
        let Some(request) = self.requests.remove(&query_id) else {
            return;
        };
        let slot = request.slot as usize;
        let difficulty = io.params.id_puzzle_difficulty_bits;
        let (mode, now_unix_s, skew) = (io.mode, io.now.unix_s, io.params.clock_skew_tolerance_s);
        let Some(Some((generation, lookup))) = self.lookups.get_mut(slot) else {
            return;
        };
        if *generation != request.generation
            || !lookup.mark(&request.target, CandidateState::Answered)
        {
            return;
        }
        if let Some(record) = record {
            let matches = presence_key(&record.body.cert.body.account_key) == lookup.key;
            if matches && verify_presence(mode, &record, now_unix_s, skew).is_ok() {
                lookup.consider(record);
            }
        }
        for contact in closer {
            if let Ok(id) = contact_id(contact, difficulty) {
                if id != self.node_id {
                    lookup.offer(id, *contact);
                }
            }
        }
        lookup.outstanding = lookup.outstanding.saturating_sub(1);
        if lookup.outstanding == 0 {
            self.advance_lookup(io, slot);
        }
    }

    fn expire_lookup_rounds(&mut self, io: &mut Io) {
        let now = io.now.instant;
        if now < self.lookup_check_at {
            return;
        }
        self.lookup_check_at = Instant::NEVER;
        for slot in 0..self.lookups.len() {
            let Some((_, lookup)) = self.lookups[slot].as_mut() else {
                continue;
            };
            if lookup.round_deadline <= now {
                lookup.fail_outstanding();
                self.advance_lookup(io, slot);
            }
            if let Some((_, lookup)) = self.lookups[slot].as_ref() {
                self.lookup_check_at = self.lookup_check_at.min(lookup.round_deadline);
            }
        }
    }

    // ---- membership ----

    fn apply_update(&mut self, io: &mut Io, update: MemberUpdate) {
        // Most gossiped updates are ones we hold already, or older: they
        // change nothing.
        if self.membership.supersedes(&update) {
            return;
        }
        // A member we already hold under this exact contact passed the
        // puzzle when admitted: one hash (the ID) instead of two.
        let id = crate::identity::node_id(&update.contact.key, update.contact.id_nonce);
        let known = self
            .membership
            .get(&id)
            .is_some_and(|m| m.update.contact.key == update.contact.key);
        if !known && contact_id(&update.contact, io.params.id_puzzle_difficulty_bits).is_err() {
            io.stats.signatures_rejected += 1;
            return;
        }
        let change = self
            .membership
            .apply(id, update, io.now.instant, io.params.tombstone_ttl_ms);
        self.handle_change(io, change, update);
    }

    fn handle_change(&mut self, io: &mut Io, change: Change, update: MemberUpdate) {
        match change {
            Change::Joined(id) => {
                io.stats.members_joined += 1;
                self.on_member_joined(io, id, update.contact)
            }
            Change::Left(id) => {
                io.stats.members_left += 1;
                self.on_member_left(io, id, update.contact)
            }
            Change::Suspected(_) => {
                io.stats.members_suspected += 1;
                self.warn_clients(io, update.contact.key)
            }
            Change::Refuted => io.stats.members_refuted += 1,
            Change::Updated | Change::None => {}
        }
    }

    /// Records the newcomer is now a replica of: the closest other replica
    /// (us, if so) hands them over.
    fn on_member_joined(&mut self, io: &mut Io, joined: NodeId, contact: Contact) {
        self.hand_over_mail(io, joined, contact);
        // After a partition heals, the far side's replicas hold what our
        // clients published before the cut: give them the current records.
        self.re_store_own_clients(io, joined, true);
        if self.records.is_empty() {
            return;
        }
        let k = io.params.replication_k;
        let (low, high) = self.membership.neighbourhood_range(&joined, 3 * k);
        let mut handover = Vec::new();
        for (key, record) in self.records.range(low..=high) {
            if self.membership.surely_outside_closest(key, &joined, k) {
                continue;
            }
            let closest = self.membership.closest(key, k);
            let includes_newcomer = closest.iter().any(|m| m.id == joined);
            let first_other = closest.iter().find(|m| m.id != joined).map(|m| m.id);
            if includes_newcomer && first_other == Some(self.node_id) {
                handover.push((**record).clone());
            }
        }
        for record in handover {
            io.send(contact.addr, &Message::Store { record });
        }
    }

    /// A member joined: mailboxes it is now a replica of get a copy from
    /// the nearest old replica, and a replica pushed out of the k closest
    /// drops its copies (nobody would delete them there).
    fn hand_over_mail(&mut self, io: &mut Io, joined: NodeId, contact: Contact) {
        if self.mailbox.is_empty() {
            return;
        }
        let k = io.params.replication_k;
        let (low, high) = self.membership.neighbourhood_range(&joined, 3 * k);
        for key in self.mailbox.keys_in(low, high) {
            if self.membership.surely_outside_closest(&key, &joined, k) {
                continue;
            }
            let closest = self.membership.closest(&key, k);
            if !closest.iter().any(|m| m.id == joined) {
                continue;
            }
            let first_other = closest.iter().find(|m| m.id != joined).map(|m| m.id);
            let still_replica = closest.iter().any(|m| m.id == self.node_id);
            if first_other == Some(self.node_id) {
                for envelope in self.mailbox.under(&key) {
                    io.send(
                        contact.addr,
                        &Message::MailStore {
                            envelope,
                            push: true,
                        },
                    );
                }
            }
            if !still_replica {
                self.mailbox.drop_key(&key);
            }
        }
    }

    /// Remembers a member declared dead: it may only be on the far side of
    /// a partition, and is asked now and then whether it is back.
    fn remember_lost(&mut self, io: &mut Io, contact: Contact) {
        let now = io.now.instant;
        self.lost
            .retain(|(c, since)| c.key != contact.key && now.since_ms(*since) < LOST_FORGET_MS);
        if self.lost.len() >= LOST_MAX {
            self.lost.remove(0);
        }
        self.lost.push((contact, now));
        if self.rediscover_at.is_none() {
            self.rediscover_at = Some(now.add_ms(REDISCOVER_MS / 2 + io.jitter_ms(REDISCOVER_MS)));
        }
    }

    /// Every so often, asks one lost member for its membership table: if
    /// it answers, a partition has healed and the two views merge (its
    /// members arrive in pages; it learns us from the request).
    fn rediscover_if_due(&mut self, io: &mut Io) {
        let now = io.now.instant;
        if self.rediscover_at.is_none_or(|at| at > now) {
            return;
        }
        self.lost.retain(|(c, since)| {
            now.since_ms(*since) < LOST_FORGET_MS && {
                let id = node_id(&c.key, c.id_nonce);
                self.membership.get(&id).is_none()
            }
        });
        if self.lost.is_empty() {
            self.rediscover_at = None;
            return;
        }
        self.rediscover_at = Some(now.add_ms(REDISCOVER_MS / 2 + io.jitter_ms(REDISCOVER_MS)));
        if self.join.is_none() {
            let (contact, _) = self.lost[io.rng_index(self.lost.len())];
            self.join(io, &[contact]);
            if let Some(join) = self.join.as_mut() {
                join.rediscovery = true;
            }
        }
    }

    /// A member left or joined near our clients' records: store them again
    /// on the replicas that are new to them. The replicas re-replicate
    /// among themselves, but a crash wave can take every replica of a key
    /// at once, and a healed partition leaves the far side with records
    /// from before the cut; the supernodes the owner is attached to hold
    /// the latest.
    fn re_store_own_clients(&mut self, io: &mut Io, changed: NodeId, joined: bool) {
        // Gathered and sent once the changes settle: a crash wave is a
        // thousand departures within seconds, and re-storing per departure
        // sent each record ~10 times.
        let k = io.params.replication_k;
        let range = self.membership.neighbourhood_range(&changed, 3 * k);
        if let Some(changes) = &mut self.restore_changes {
            if changes.len() < RESTORE_CHANGES_MAX {
                changes.push(MemberChange {
                    id: changed,
                    joined,
                    range,
                });
            } else {
                self.restore_changes = None;
            }
        }
        // Each change pushes the re-store back, up to a bound from the first.
        let now = io.now.instant;
        let first = self.restore_at.map_or(now, |(_, first)| first);
        let at = now
            .add_ms(RESTORE_SETTLE_MS)
            .min(first.add_ms(RESTORE_DELAY_MAX_MS));
        self.restore_at = Some((at, first));
    }

    fn re_store_if_due(&mut self, io: &mut Io) {
        if self.restore_at.is_none_or(|(at, _)| at > io.now.instant) {
            return;
        }
        self.restore_at = None;
        let changes = self.restore_changes.replace(Vec::new());
        let near = |key: &NodeId| {
            changes.as_ref().is_none_or(|changes| {
                changes
                    .iter()
                    .any(|c| c.range.0 <= *key && *key <= c.range.1)
            })
        };
        let mut records: Vec<(Addr, PresenceRecord)> = self
            .clients
            .iter()
            .filter(|(_, slot)| near(&slot.record_key))
            .filter_map(|(addr, slot)| slot.record.as_ref().map(|r| (*addr, (**r).clone())))
            .collect();
        records.sort_unstable_by_key(|(addr, _)| *addr);
        for (_, record) in records {
            match (&changes, self.membership.capped) {
                (Some(changes), false) => self.store_on_new_replicas(io, record, changes),
                _ => self.replicate(io, record),
            }
        }
    }

    /// Stores a record only on the replicas the changes made new to it:
    /// members that joined and are among the k closest, and for each
    /// replica that left, one member that moved up into the k closest (the
    /// farthest of them). The replicas that were there already hold it:
    /// storing on all k sent every one of them the same record from both
    /// of its owner's supernodes, all within the same second, and those
    /// bursts overran rejoining supernodes' backlogs (100k restart storm:
    /// 5,387 of 5,406 datagrams dropped at a full CPU backlog were
    /// `Store`s).
    fn store_on_new_replicas(
        &mut self,
        io: &mut Io,
        record: PresenceRecord,
        changes: &[MemberChange],
    ) {
        let key = presence_key(&record.body.cert.body.account_key);
        let k = io.params.replication_k;
        let closest = self.membership.closest(&key, k);
        let farthest = (closest.len() == k).then(|| closest[k - 1].id.distance(&key));
        let replicas_left = changes
            .iter()
            .filter(|c| !c.joined && farthest.is_none_or(|far| c.id.distance(&key) < far))
            .count();
        let moved_up_from = closest.len().saturating_sub(replicas_left);
        let targets: Vec<(NodeId, Contact)> = closest
            .iter()
            .enumerate()
            .filter(|(rank, m)| {
                *rank >= moved_up_from || changes.iter().any(|c| c.joined && c.id == m.id)
            })
            .map(|(_, m)| (m.id, m.update.contact))
            .collect();
        self.store_on(io, &targets, &record);
    }

    /// A member left: the mailboxes it held get a new replica (the one now
    /// k-th closest), from the closest remaining one.
    fn re_replicate_mail(&mut self, io: &mut Io, left: NodeId) {
        if self.mailbox.is_empty() {
            return;
        }
        let k = io.params.replication_k;
        let (low, high) = self.membership.neighbourhood_range(&left, 3 * k);
        for key in self.mailbox.keys_in(low, high) {
            let closest = self.membership.closest(&key, k);
            let Some(newest) = closest.last() else {
                continue;
            };
            let left_was_replica =
                closest.len() < k || left.distance(&key) < newest.id.distance(&key);
            if left_was_replica
                && closest.first().map(|m| m.id) == Some(self.node_id)
                && newest.id != self.node_id
            {
                let addr = newest.update.contact.addr;
                for envelope in self.mailbox.under(&key) {
                    io.send(
                        addr,
                        &Message::MailStore {
                            envelope,
                            push: true,
                        },
                    );
                }
            }
        }
    }

    /// A member left: re-replicate the records it held to the member that
    /// replaces it, and warn our clients whose records name it.
    fn on_member_left(&mut self, io: &mut Io, left: NodeId, contact: Contact) {
        let left_key = contact.key;
        self.departed.left(left, contact.addr, io.now.instant);
        self.remember_lost(io, contact);
        self.re_replicate_mail(io, left);
        self.re_store_own_clients(io, left, false);
        if self.records.is_empty() && self.clients.is_empty() {
            return;
        }
        let k = io.params.replication_k;
        let (low, high) = self.membership.neighbourhood_range(&left, 3 * k);
        let mut pushes = Vec::new();
        for (key, record) in self.records.range(low..=high) {
            let closest = self.membership.closest(key, k);
            let Some(newest) = closest.last() else {
                continue;
            };
            let left_was_replica =
                closest.len() < k || left.distance(key) < newest.id.distance(key);
            if left_was_replica
                && closest.first().map(|m| m.id) == Some(self.node_id)
                && newest.id != self.node_id
            {
                pushes.push((newest.update.contact, (**record).clone()));
            }
        }
        for (contact, record) in pushes {
            io.send(contact.addr, &Message::Store { record });
        }
        self.warn_clients(io, left_key);
    }

    /// Tells our clients whose records name a failed (or suspected)
    /// supernode to check it now.
    fn warn_clients(&mut self, io: &mut Io, left_key: PublicKey) {
        let warned: Vec<Addr> = self.clients.naming(&left_key).to_vec();
        for addr in warned {
            io.send(
                addr,
                &Message::PeerDown {
                    supernode: left_key,
                },
            );
        }
    }

    fn sorted_client_addrs(&self) -> Vec<Addr> {
        let mut addrs: Vec<Addr> = self.clients.keys().copied().collect();
        addrs.sort_unstable();
        addrs
    }

    fn on_sync_response(
        &mut self,
        io: &mut Io,
        from: Addr,
        members: &[MemberUpdate],
        next_cursor: Option<u32>,
    ) {
        let Some(join) = self.join.as_ref() else {
            return;
        };
        let seed = join.seeds[(join.tries - 1) % join.seeds.len()];
        if seed.addr != from {
            return;
        }
        let mut verified = Vec::with_capacity(members.len());
        for update in members {
            match contact_id(&update.contact, io.params.id_puzzle_difficulty_bits) {
                Ok(id) => verified.push((id, *update)),
                Err(_) => io.stats.signatures_rejected += 1,
            }
        }
        let mut news = false;
        for (change, update) in
            self.membership
                .apply_batch(&verified, io.now.instant, io.params.tombstone_ttl_ms)
        {
            news |= matches!(change, Change::Joined(_));
            self.handle_change(io, change, update);
        }
        // A lost member that answers with nobody new is one that restarted,
        // not the far side of a healed partition: its other pages are ours
        // too (at 2,500 supernodes, 20 pages of 128 members each time).
        let wanted = news || !self.join.as_ref().is_some_and(|j| j.rediscovery);
        match next_cursor {
            Some(cursor)
                if wanted
                    && cursor as usize > self.join.as_ref().map_or(0, |j| j.cursor as usize) =>
            {
                if let Some(join) = self.join.as_mut() {
                    join.cursor = cursor;
                    join.deadline = io.now.instant.add_ms(SYNC_TIMEOUT_MS);
                }
                io.send(
                    from,
                    &Message::SyncRequest {
                        cursor,
                        sender: self.me(),
                    },
                );
            }
            _ => {
                self.join = None;
                if !self.resynced {
                    self.resync_at = Some(io.now.instant.add_ms(RESYNC_DELAY_MS));
                }
            }
        }
    }

    fn retry_join(&mut self, io: &mut Io) {
        let Some(join) = self.join.as_mut() else {
            return;
        };
        if join.deadline > io.now.instant {
            return;
        }
        if join.tries >= join.seeds.len().min(JOIN_TRIES_MAX) {
            self.join = None;
            return;
        }
        join.tries += 1;
        join.deadline = io.now.instant.add_ms(SYNC_TIMEOUT_MS);
        let seed = join.seeds[(join.tries - 1) % join.seeds.len()];
        let cursor = join.cursor;
        let me = self.me();
        io.send(seed.addr, &Message::SyncRequest { cursor, sender: me });
    }

    /// Pushes fresh failure news to a few random members at once (they push
    /// on only what is news to them, so the burst dies out).
    fn push_urgent(&mut self, io: &mut Io) {
        let urgent = self.membership.take_urgent();
        if urgent.is_empty() {
            return;
        }
        for chunk in urgent.chunks(GOSSIP_UPDATES_MAX) {
            for _ in 0..URGENT_FANOUT {
                let Some(member) = self
                    .membership
                    .random_other(io.rng)
                    .map(|m| m.update.contact)
                else {
                    return;
                };
                let updates = BoundedVec::truncating(chunk.iter().copied());
                io.send(
                    member.addr,
                    &Message::GossipPing {
                        sequence: URGENT_PUSH_SEQUENCE,
                        sender: self.me(),
                        updates,
                    },
                );
            }
        }
    }

    pub(crate) fn handle_timeout(&mut self, io: &mut Io) {
        let now = io.now.instant;
        let params = io.params;
        if let Some((contact, sequence)) = self
            .membership
            .retry_probe(now, params.gossip_ack_timeout_ms)
        {
            io.send(
                contact.addr,
                &Message::GossipPing {
                    sequence,
                    sender: self.me(),
                    updates: BoundedVec::new(),
                },
            );
        }
        for (change, contact) in self.membership.expire(now, params.tombstone_ttl_ms) {
            match change {
                Change::Left(id) => self.on_member_left(io, id, contact),
                Change::Suspected(_) => self.warn_clients(io, contact.key),
                _ => {}
            }
        }
        self.rediscover_if_due(io);
        self.re_store_if_due(io);
        self.spread_account_rumors(io);
        self.push_urgent(io);
        if let Some((contact, sequence)) = self.membership.start_probe(
            now,
            params.gossip_period_ms,
            params.gossip_probe_retry_ms,
            io.rng,
        ) {
            let updates = BoundedVec::truncating(self.membership.take_updates());
            io.send(
                contact.addr,
                &Message::GossipPing {
                    sequence,
                    sender: self.me(),
                    updates,
                },
            );
        }
        self.retry_join(io);
        if self.resync_at.is_some_and(|at| at <= now) {
            self.resync_at = None;
            self.resynced = true;
            if let Some(contact) = self
                .membership
                .random_other(io.rng)
                .map(|m| m.update.contact)
            {
                self.join(io, &[contact]);
            }
        }
        self.expire_lookup_rounds(io);
        self.expire_names(io);
        self.expire_bundle_queries(io);
        if now >= self.next_sweep_at {
            self.sweep(io);
        }
    }

    /// Periodic housekeeping: idle clients, expired records, forgotten
    /// requests, load announcement, demotion.
    fn sweep(&mut self, io: &mut Io) {
        let now = io.now.instant;
        let params = io.params;
        self.next_sweep_at = now.add_ms(params.sweep_interval_ms);
        self.relays.expire(now);
        self.re_replicate_names(io);
        self.re_replicate_bundles(io);
        self.clients
            .retain(|_, slot| now.since_ms(slot.last_seen) < params.client_idle_timeout_ms);
        let now_unix_s = io.now.unix_s;
        if now >= self.next_record_sweep_at {
            self.next_record_sweep_at = now.add_ms(RECORD_SWEEP_INTERVAL_MS);
            self.records.retain(|_, r| {
                r.body
                    .expires_unix_s
                    .saturating_add(params.clock_skew_tolerance_s)
                    >= now_unix_s
            });
            self.mailbox
                .expire(now_unix_s.saturating_sub(params.mailbox_ttl_s));
            self.re_push_old_mail(io);
            io.accounts.expire(now_unix_s);
        }
        self.requests
            .retain(|_, request| now.since_ms(request.sent_at) < REQUEST_FORGET_MS);
        // A counter older than any ticket that could still be valid guards nothing.
        let guard_ms = (params.ticket_ttl_s + 2 * params.clock_skew_tolerance_s) * 1000;
        self.resume_counters
            .retain(|_, (_, seen)| now.since_ms(*seen) < guard_ms);
        if params.naive {
            self.shed_naively(io);
        }
        let load = self.load_pct(params);
        // A draining supernode stays announced as full (`drain`).
        let shown = if self.leaving_at.is_some() {
            FULL_LOAD_PCT
        } else {
            load
        };
        let announced = self.membership.me.load_pct;
        // Becoming full (or having room again) is news however small the
        // step: others name only members with room as alternates.
        let full_changed = (shown >= FULL_LOAD_PCT) != (announced >= FULL_LOAD_PCT);
        if shown.abs_diff(announced) >= params.load_announce_delta_pct || full_changed {
            self.membership.announce_load(shown, now);
        }
        self.check_demotion(io, load);
    }

    /// The naive baseline protects itself the way classic supernodes did:
    /// over capacity, it drops clients (without saying where to go) until it
    /// is well below capacity again. This is the behaviour that cascades.
    fn shed_naively(&mut self, io: &mut Io) {
        let capacity = io.params.supernode_capacity_attachments;
        if self.clients.len() <= capacity {
            return;
        }
        let keep = capacity * 4 / 5;
        let mut addrs = self.sorted_client_addrs();
        let drop = addrs.len() - keep;
        for _ in 0..drop {
            let at = io.rng_index(addrs.len());
            let addr = addrs.swap_remove(at);
            self.clients.remove(&addr);
            io.send(
                addr,
                &Message::Detach {
                    alternates: BoundedVec::new(),
                },
            );
        }
    }

    fn check_demotion(&mut self, io: &mut Io, load: u8) {
        let params = io.params;
        if !self.demotable || load >= params.demote_load_pct {
            self.idle_since = None;
            return;
        }
        let idle_since = *self.idle_since.get_or_insert(io.now.instant);
        let idle_long = io.now.instant.since_ms(idle_since) >= params.demote_idle_s * 1000;
        let network_has_room = self.membership.average_load_pct() < params.demote_network_load_pct;
        if idle_long && network_has_room && self.membership.len() > 2 * params.replication_k {
            self.demotion_due = true;
        }
    }
}
