//! The client role: attach to (log in at) several supernodes with a signed
//! challenge, keep the attachments alive, replace dead ones, publish a
//! signed presence record, run lookups through a supernode, check
//! reachability and decide on promotion.

mod bundles;
mod device_lists;
mod names;
mod own;
pub use bundles::BundleFailure;
pub(crate) use names::outcome_event;
pub use names::NameFailure;
pub use own::{OwnRecords, OWN_BUNDLES_MAX, OWN_NAMES_MAX, OWN_REFRESH_S};

use crate::hostcache::backoff_ms;
use crate::identity::{
    contact_id, domain, envelope_id, resume_proof_bytes, sign_envelope, sign_presence,
    verify_envelope,
};
use crate::mail::{Arrival, OutboxEntry, SendError, OUTBOX_MAX};
use crate::node::{DetachReason, Event, Io};
use crate::time::Instant;
use peerline_proto::{
    BoundedVec, Contact, Envelope, EnvelopeBody, EnvelopeKind, Message, PresenceBody,
    PresenceRecord, PublicKey, PAYLOAD_LEN_MAX, RECORD_SUPERNODES_MAX,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Hello sent, waiting for the challenge.
    Hello,
    /// Proof sent, waiting for acceptance.
    Proof {
        challenge: [u8; 32],
    },
    /// Ticket sent, waiting for acceptance (or a challenge: full login).
    Resume,
    Attached,
}

#[derive(Clone, Debug)]
struct Attachment {
    contact: Contact,
    phase: Phase,
    tries: u8,
    /// Attach step timeout or pong timeout; `NEVER` while idle (keepalives
    /// run on the client's shared schedule).
    deadline: Instant,
    step_started: Instant,
    awaiting_pong: bool,
    ping_sequence: u32,
    misses: u8,
    load_pct: u8,
    /// Another supernode reported this one as failing; a spare is being attached.
    suspected: bool,
    /// The supernode is shutting down (`Message::Leaving`); a spare is
    /// being attached, and this one is detached once the spare is in.
    leaving: bool,
    /// The network's average load as this supernode sees it.
    network_load_pct: u8,
}

impl Attachment {
    /// Whether a spare is being attached to replace this one.
    fn replacing(&self) -> bool {
        self.suspected || self.leaving
    }

    /// Attached, and not on its way out.
    fn healthy(&self) -> bool {
        self.phase == Phase::Attached && !self.replacing()
    }
}

#[derive(Clone, Debug)]
struct PendingLookup {
    query_id: u32,
    account: PublicKey,
    started: Instant,
    deadline: Instant,
    via: PublicKey,
    /// Requests sent so far (`LOOKUP_TRIES_MAX` at most).
    tries: u8,
}

/// Most lookups a client keeps open at once.
const CLIENT_LOOKUPS_MAX: usize = 16;
/// Requests one lookup may send, each after the previous one's
/// `lookup_timeout_ms`, alternating between the attached supernodes. A try
/// fails when its request or its answer is lost (~0.4% at 0.2% loss); with
/// two tries about one lookup in 60,000 still failed that way, with three
/// one in 15 million.
const LOOKUP_TRIES_MAX: u8 = 3;
/// Busy answers within one promotion period that make an eligible client
/// consider promotion even before the average load says so.
const PROMOTE_BUSY_MIN: u32 = 3;
/// A duplicate is acknowledged again only this long after the last ack
/// (copies pushed by several replicas arrive together).
const ACK_REPEAT_MS: u64 = 5_000;
/// Outbox messages beyond one tick's share are sent this much later.
const OUTBOX_PACE_MS: u64 = 1_000;
/// How soon an eligible client that keeps meeting busy supernodes checks
/// again (instead of the regular period).
const PROMOTE_BUSY_RECHECK_MS: u64 = 10_000;
/// A supernode that refused the login (revoked device, rotated root) is
/// asked again only after this long.
const LOGIN_REFUSED_RETRY_MS: u64 = 600_000;

#[derive(Debug, Default)]
pub struct ClientState {
    attachments: Vec<Attachment>,
    presence_sequence: u64,
    /// When presence must be re-published because the attachment set changed.
    presence_dirty_since: Option<Instant>,
    /// The publication was already held back once for handshakes in flight.
    presence_deferred: bool,
    presence_refresh_at: Option<Instant>,
    lookups: Vec<PendingLookup>,
    next_query_id: u32,
    probe_token: u64,
    probe_at: Option<Instant>,
    promote_check_at: Option<Instant>,
    promotion_due: bool,
    /// One keepalive schedule for every attachment: a single wake-up pings all.
    keepalive_at: Option<Instant>,
    /// Keepalive ticks so far: which of them are pings.
    keepalive_round: u32,
    /// When short of attachments with every candidate backed off: when the
    /// first becomes eligible again.
    retry_at: Option<Instant>,
    /// Failed handshakes since the last success: drives the client-wide
    /// back-off (jittered, exponential, capped).
    attach_failures: u32,
    /// No new handshake starts before this.
    attach_not_before: Instant,
    /// Busy answers since the last promotion check.
    busy_seen: u32,
    /// Promotion checks in a row that found the network turning clients
    /// away: each doubles the chance of promoting (up to 16×), so a deficit
    /// that outlasts the first round is closed faster, while one round is
    /// enough in a large network.
    busy_checks: u32,
    /// Hole punching towards other devices (`punch.rs`).
    pub(crate) punch: crate::punch::Punch,
    /// Name registrations and lookups in flight (`client/names.rs`).
    names: names::ClientNames,
    /// Bundle publications and password logins in flight (`client/bundles.rs`).
    bundles: bundles::ClientBundles,
    /// Device-list fetches in flight (`client/device_lists.rs`).
    device_lists: device_lists::ClientDeviceLists,
}

impl ClientState {
    pub(crate) fn start(&mut self, io: &mut Io) {
        let now = io.now.instant;
        // Spread periodic work so nodes that start together do not act together.
        self.probe_at = Some(now.add_ms(10_000 + io.jitter_ms(20_000)));
        let check_ms = io.params.promote_check_interval_s * 1000;
        self.promote_check_at = Some(now.add_ms(check_ms + io.jitter_ms(check_ms)));
        self.presence_sequence = io.now.unix_s.saturating_mul(1000);
        self.fill_attachments(io);
    }

    pub(crate) fn attached(&self) -> Vec<Contact> {
        self.attachments
            .iter()
            .filter(|a| a.phase == Phase::Attached)
            .map(|a| a.contact)
            .collect()
    }

    pub(crate) fn is_attached(&self) -> bool {
        self.attachments.iter().any(|a| a.phase == Phase::Attached)
    }

    pub(crate) fn wants_promotion(&self) -> bool {
        self.promotion_due
    }

    pub(crate) fn next_deadline(&self) -> Instant {
        let mut deadline = self
            .punch
            .next_deadline()
            .min(self.names.next_deadline())
            .min(self.bundles.next_deadline())
            .min(self.device_lists.next_deadline());
        for attachment in &self.attachments {
            deadline = deadline.min(attachment.deadline);
        }
        for lookup in &self.lookups {
            deadline = deadline.min(lookup.deadline);
        }
        if let Some(at) = self.presence_dirty_since {
            deadline = deadline.min(at);
        }
        for at in [
            self.presence_refresh_at,
            self.probe_at,
            self.promote_check_at,
            self.keepalive_at,
        ]
        .into_iter()
        .flatten()
        {
            deadline = deadline.min(at);
        }
        if let Some(at) = self.retry_at {
            deadline = deadline.min(at);
        }
        deadline
    }

    fn attachment_index(&self, from: &peerline_proto::Addr) -> Option<usize> {
        self.attachments
            .iter()
            .position(|a| a.contact.addr == *from)
    }

    /// Attachments wanted now: the target, plus a spare while one is
    /// suspected or leaving — and a second spare handshake *hedging* the first when
    /// that one has gone unanswered for `attach_hedge_ms` while the client
    /// is not whole without the suspect. A spare from the host cache may
    /// itself be gone, and waiting out its handshake timeouts (two tries of
    /// `attach_step_timeout_ms`) was most of the slowest re-attachments
    /// after a supernode crash. Hedging only a silent handshake (not racing
    /// two from the start) adds no load where spares answer — a busy answer
    /// is an answer — so a crash wave's orphans do not double the
    /// handshakes on the supernodes left. Whichever loses is detached as
    /// soon as the client is whole again (`trim_surplus`).
    fn wanted(&self, io: &Io) -> usize {
        let replacing = self.attachments.iter().any(Attachment::replacing);
        let hedging = self.hedge_due(io).is_some_and(|at| at <= io.now.instant);
        io.params.attachments_target + replacing as usize + hedging as usize
    }

    /// When the spare handshake in flight gets a second one hedging it:
    /// `None` unless one of the client's supernodes is suspected or
    /// leaving, the client is not whole without it, and exactly one spare
    /// is in flight.
    fn hedge_due(&self, io: &Io) -> Option<Instant> {
        let healthy = self.attachments.iter().filter(|a| a.healthy()).count();
        let mut in_flight = self
            .attachments
            .iter()
            .filter(|a| a.phase != Phase::Attached);
        let spare = in_flight.next()?;
        if in_flight.next().is_some()
            || healthy >= io.params.attachments_target
            || !self.attachments.iter().any(Attachment::replacing)
        {
            return None;
        }
        Some(spare.step_started.add_ms(io.params.attach_hedge_ms))
    }

    /// Starts attach handshakes until enough are attached or in progress,
    /// no sooner than the back-off allows.
    pub(crate) fn fill_attachments(&mut self, io: &mut Io) {
        self.retry_at = None;
        while self.attachments.len() < self.wanted(io) {
            if io.now.instant < self.attach_not_before {
                self.retry_at = Some(self.attach_not_before);
                return;
            }
            let exclude: Vec<PublicKey> = self.attachments.iter().map(|a| a.contact.key).collect();
            let Some(contact) = io.host_cache.choose(
                io.now.instant,
                io.rng,
                io.params.host_cache_choices,
                &exclude,
            ) else {
                // Every candidate is backed off: wake when the first is not.
                let at = io.host_cache.next_eligible(&exclude);
                self.retry_at = at.map(|at| at.max(io.now.instant.add_ms(1)));
                return;
            };
            let mut attachment = Attachment {
                contact,
                phase: Phase::Hello,
                tries: 1,
                deadline: io.now.instant.add_ms(io.params.attach_step_timeout_ms),
                step_started: io.now.instant,
                awaiting_pong: false,
                ping_sequence: 0,
                misses: 0,
                load_pct: 0,
                suspected: false,
                leaving: false,
                network_load_pct: 0,
            };
            Self::send_attach_start(io, &mut attachment);
            self.attachments.push(attachment);
        }
        if let Some(at) = self.hedge_due(io) {
            self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
        }
    }

    /// First message of a handshake: a resume when we hold a ticket that
    /// is still good, else a hello (full login).
    fn send_attach_start(io: &mut Io, attachment: &mut Attachment) {
        let addr = attachment.contact.addr;
        let usable = io.resumption.ticket.as_deref().copied().filter(|t| {
            !io.params.naive
                && attachment.tries == 1
                && t.body.expires_unix_s > io.now.unix_s
                && t.body.cert_expires_unix_s > io.now.unix_s
        });
        if let Some(ticket) = usable {
            io.resumption.counter += 1;
            let counter = io.resumption.counter;
            let proof = resume_proof_bytes(&attachment.contact.key, &ticket, counter);
            let signature = io.identity.keypair.sign(domain::RESUME, &proof);
            attachment.phase = Phase::Resume;
            io.send(
                addr,
                &Message::AttachResume {
                    ticket,
                    counter,
                    signature,
                },
            );
        } else {
            attachment.phase = Phase::Hello;
            io.send(
                addr,
                &Message::AttachHello {
                    cert: io.identity.cert,
                },
            );
        }
    }

    /// A supernode turned us away: wait before the next try. The first failure
    /// costs nothing (go to an alternate at once); after that the wait grows
    /// exponentially with jitter up to the cap. The naive baseline retries
    /// at a fixed interval instead.
    fn note_attach_failure(&mut self, io: &mut Io) {
        self.attach_failures = self.attach_failures.saturating_add(1);
        let params = io.params;
        let wait_ms = if params.naive {
            params.retry_backoff_base_ms
        } else if self.attach_failures <= 1 {
            0
        } else {
            backoff_ms(
                self.attach_failures - 1,
                params.retry_backoff_base_ms,
                params.retry_backoff_max_ms,
                io.rng,
            )
        };
        self.attach_not_before = self.attach_not_before.max(io.now.instant.add_ms(wait_ms));
    }

    fn drop_attachment(&mut self, io: &mut Io, index: usize, reason: DetachReason) {
        let attachment = self.attachments.swap_remove(index);
        let params = io.params;
        match reason {
            DetachReason::Busy | DetachReason::DetachedBySupernode => {}
            _ if params.naive => io.host_cache.defer(
                &attachment.contact.key,
                io.now.instant,
                params.retry_backoff_base_ms,
            ),
            _ => io.host_cache.record_failure(
                &attachment.contact.key,
                io.now.instant,
                io.rng,
                params.retry_backoff_base_ms,
                params.retry_backoff_max_ms,
            ),
        }
        // Only an overloaded supernode's busy answer slows the client down
        // as a whole. A handshake nobody answered (the supernode is dead or
        // out of reach) already cost its step timeouts and backs off that
        // entry alone; the next candidate is tried at once (after a crash
        // wave or a partition, many entries of a host cache are dead).
        if reason == DetachReason::Busy || (params.naive && reason == DetachReason::AttachFailed) {
            self.note_attach_failure(io);
        }
        if attachment.phase == Phase::Attached {
            io.event(Event::Detached {
                supernode: attachment.contact,
                reason,
            });
            self.mark_presence_dirty(io);
        }
    }

    fn mark_presence_dirty(&mut self, io: &mut Io) {
        if self.presence_dirty_since.is_none() {
            self.presence_dirty_since = Some(io.now.instant.add_ms(io.params.presence_debounce_ms));
        }
    }

    pub(crate) fn handle(&mut self, io: &mut Io, from: peerline_proto::Addr, message: Message) {
        if matches!(
            message,
            Message::SealedCandidates { .. }
                | Message::PathPing { .. }
                | Message::PathPong { .. }
                | Message::RelayGranted { .. }
                | Message::RelayRefused { .. }
        ) {
            let supernodes: Vec<_> = self.attached().iter().map(|c| c.addr).collect();
            self.punch.handle(io, from, message, &supernodes);
            return;
        }
        // Share holders answer straight, whether attached to or not.
        if matches!(
            message,
            Message::OprfAnswer { .. } | Message::OprfRefused { .. }
        ) {
            return self.on_oprf_reply(io, from, message);
        }
        let Some(index) = self.attachment_index(&from) else {
            match message {
                Message::Probe { token } if token == self.probe_token && token != 0 => {
                    *io.reachable = true;
                    self.probe_token = 0;
                    io.event(Event::Reachable);
                }
                _ => io.stats.messages_unexpected += 1,
            }
            return;
        };
        match message {
            Message::AttachChallenge {
                supernode,
                challenge,
            } => self.on_challenge(io, index, supernode, challenge),
            Message::AttachAccepted {
                load_pct,
                peers,
                ticket,
                ..
            } => self.on_accepted(io, index, load_pct, &peers, ticket),
            Message::Busy {
                retry_after_ms,
                alternates,
                ..
            } => {
                self.busy_seen = self.busy_seen.saturating_add(1);
                if self.busy_seen == PROMOTE_BUSY_MIN {
                    // Look at promotion soon rather than at the next period.
                    let soon = io.now.instant.add_ms(io.jitter_ms(PROMOTE_BUSY_RECHECK_MS));
                    self.promote_check_at = self.promote_check_at.map(|at| at.min(soon));
                }
                if !io.params.naive {
                    io.host_cache
                        .hint(&alternates, io.params.host_cache_len_max);
                }
                if self.attachments[index].phase == Phase::Attached {
                    // Our own supernode turned a lookup away: keep the
                    // attachment, send pending lookups through another one.
                    let key = self.attachments[index].contact.key;
                    for lookup in self.lookups.iter_mut().filter(|l| l.via == key) {
                        lookup.deadline = io.now.instant;
                    }
                    return;
                }
                let key = self.attachments[index].contact.key;
                let retry_after_ms = if io.params.naive {
                    io.params.retry_backoff_base_ms
                } else {
                    retry_after_ms as u64
                };
                io.host_cache.defer(&key, io.now.instant, retry_after_ms);
                self.drop_attachment(io, index, DetachReason::Busy);
                self.fill_attachments(io);
            }
            Message::LoginRefused { reason } => {
                if self.attachments[index].phase == Phase::Attached {
                    io.stats.messages_unexpected += 1;
                    return;
                }
                // The supernode will not change its mind: try it again
                // only much later, and go on with the others.
                let supernode = self.attachments[index].contact;
                io.host_cache
                    .defer(&supernode.key, io.now.instant, LOGIN_REFUSED_RETRY_MS);
                io.event(Event::LoginRefused { supernode, reason });
                self.drop_attachment(io, index, DetachReason::LoginRefused);
                self.fill_attachments(io);
            }
            Message::Detach { alternates } => {
                self.look_elsewhere(io, index, &alternates);
                self.drop_attachment(io, index, DetachReason::DetachedBySupernode);
                self.fill_attachments(io);
            }
            Message::Leaving { alternates } => {
                if self.attachments[index].phase != Phase::Attached {
                    // A handshake with it fails on its own (busy answer).
                    io.stats.messages_unexpected += 1;
                    return;
                }
                self.look_elsewhere(io, index, &alternates);
                self.attachments[index].leaving = true;
                // Make before break: the spare first, then the detach
                // (`trim_surplus`, once the spare is in).
                self.fill_attachments(io);
            }
            Message::NotAttached => {
                if self.attachments[index].phase == Phase::Attached {
                    self.drop_attachment(io, index, DetachReason::NotAttached);
                    self.fill_attachments(io);
                }
            }
            Message::Pong {
                sequence,
                load_pct,
                network_load_pct,
                ticket,
            } => {
                let attachment = &mut self.attachments[index];
                if attachment.phase == Phase::Attached {
                    if let Some(ticket) = ticket {
                        Self::keep_ticket(io, ticket);
                    }
                }
                // A late pong to an earlier ping of this round counts too.
                let in_round =
                    attachment.ping_sequence.wrapping_sub(sequence) <= attachment.misses as u32;
                if attachment.phase == Phase::Attached && attachment.awaiting_pong && in_round {
                    attachment.awaiting_pong = false;
                    attachment.misses = 0;
                    attachment.load_pct = load_pct;
                    attachment.network_load_pct = network_load_pct;
                    attachment.deadline = Instant::NEVER;
                    attachment.suspected = false;
                    self.trim_surplus(io);
                }
            }
            Message::PeerDown { supernode } => self.on_peer_down(io, supernode),
            Message::MailDeliver { envelope } => self.on_mail(io, from, envelope),
            Message::LookupResponse {
                query_id,
                record,
                hops,
            } => self.on_lookup_response(io, query_id, record, hops),
            Message::NameResult { name_key, outcome } => self.on_name_result(io, name_key, outcome),
            Message::NameLookupResponse {
                query_id,
                name_key,
                certificate,
            } => self.on_name_lookup_response(io, query_id, name_key, certificate, &[]),
            Message::NameLookupAnswer {
                query_id,
                name_key,
                certificate,
                moved,
            } => self.on_name_lookup_response(io, query_id, name_key, certificate, &moved),
            Message::BundleFetchResponse {
                query_id,
                bundle,
                holders,
            } => self.on_bundle_fetch_response(io, query_id, bundle, holders),
            Message::DeviceListFetchResponse { query_id, list } => {
                self.on_device_list_fetch_response(io, query_id, list)
            }
            _ => io.stats.messages_unexpected += 1,
        }
    }

    /// A supernode sends us away: its alternates go into the host cache,
    /// and it is not tried again for a while.
    fn look_elsewhere(&self, io: &mut Io, index: usize, alternates: &[Contact]) {
        if !io.params.naive {
            io.host_cache.hint(alternates, io.params.host_cache_len_max);
        }
        let key = self.attachments[index].contact.key;
        io.host_cache
            .defer(&key, io.now.instant, io.params.retry_backoff_base_ms);
    }

    fn on_challenge(&mut self, io: &mut Io, index: usize, supernode: Contact, challenge: [u8; 32]) {
        let attachment = &mut self.attachments[index];
        // A challenge answers a hello, or a resume the supernode would not
        // take as it stands (then this is a full login after all).
        if !matches!(attachment.phase, Phase::Hello | Phase::Resume) {
            return;
        }
        // The supernode must be the one we meant (key pinned by the host
        // cache) and its ID must solve the puzzle.
        if supernode.key != attachment.contact.key
            || contact_id(&supernode, io.params.id_puzzle_difficulty_bits).is_err()
        {
            io.stats.signatures_rejected += 1;
            return;
        }
        let signature = io.identity.keypair.sign(
            domain::ATTACH,
            &attach_proof_bytes(&challenge, &supernode.key),
        );
        attachment.phase = Phase::Proof { challenge };
        attachment.deadline = io.now.instant.add_ms(io.params.attach_step_timeout_ms);
        io.send(
            attachment.contact.addr,
            &Message::AttachProof {
                cert: io.identity.cert,
                challenge,
                signature,
            },
        );
    }

    /// Keeps a ticket that is about us and newer than the one we hold.
    fn keep_ticket(io: &mut Io, ticket: peerline_proto::Ticket) {
        let ours = ticket.body.device_key == io.identity.keypair.public();
        let newer = io
            .resumption
            .ticket
            .as_ref()
            .is_none_or(|held| held.body.expires_unix_s <= ticket.body.expires_unix_s);
        if ours && newer {
            io.resumption.ticket = Some(Box::new(ticket));
        }
    }

    fn on_accepted(
        &mut self,
        io: &mut Io,
        index: usize,
        load_pct: u8,
        peers: &[Contact],
        ticket: Option<peerline_proto::Ticket>,
    ) {
        let attachment = &mut self.attachments[index];
        let resumed = match attachment.phase {
            Phase::Proof { .. } => false,
            Phase::Resume => true,
            _ => return,
        };
        if resumed {
            io.stats.resumed += 1;
        } else {
            io.stats.logged_in += 1;
        }
        self.attach_failures = 0;
        let rtt_ms = io.now.instant.since_ms(attachment.step_started);
        attachment.phase = Phase::Attached;
        attachment.load_pct = load_pct;
        attachment.step_started = io.now.instant;
        attachment.deadline = Instant::NEVER;
        let contact = attachment.contact;
        // The handshake refreshed the NAT binding; the shared schedule's next
        // tick (at most one interval away) keeps it.
        if self.keepalive_at.is_none() {
            self.keepalive_at = Some(io.now.instant.add_ms(io.params.keepalive_interval_ms));
        }
        io.host_cache.record_success(&contact.key, rtt_ms);
        for peer in peers {
            io.host_cache.insert(*peer, io.params.host_cache_len_max);
        }
        if let Some(ticket) = ticket {
            Self::keep_ticket(io, ticket);
        }
        io.event(Event::Attached { supernode: contact });
        // The account's statements go to every supernode attached to: one
        // that joined after they spread learns them now.
        for push in io.accounts.own_pushes() {
            io.send(contact.addr, &push);
        }
        self.send_outbox(io);
        self.mark_presence_dirty(io);
        self.trim_surplus(io);
    }

    /// Sends `message` to every supernode attached now.
    pub(crate) fn push_to_attached(&self, io: &mut Io, message: &Message) {
        for contact in self.attached() {
            io.send(contact.addr, message);
        }
    }

    fn on_peer_down(&mut self, io: &mut Io, supernode: PublicKey) {
        // Do not take the word of one supernode about another: probe it now
        // with a single pong timeout left.
        let misses_max = io.params.keepalive_misses_max as u8;
        if let Some(attachment) = self
            .attachments
            .iter_mut()
            .find(|a| a.contact.key == supernode && a.phase == Phase::Attached)
        {
            if attachment.suspected {
                return;
            }
            attachment.misses = attachment.misses.max(misses_max.saturating_sub(1));
            attachment.awaiting_pong = true;
            attachment.suspected = true;
            attachment.ping_sequence = attachment.ping_sequence.wrapping_add(1);
            attachment.deadline = io.now.instant.add_ms(io.params.pong_timeout_ms);
            let (addr, sequence) = (attachment.contact.addr, attachment.ping_sequence);
            io.send(addr, &Message::Ping { sequence });
            // Attach a spare at once rather than after the check: if the
            // report was right, the client never drops below its target.
            self.fill_attachments(io);
        }
    }

    /// Detaches attachments beyond the target, the most loaded supernode
    /// first, counting only those not suspected or leaving: a suspect is
    /// kept until its check settles (if it answers, the client has one too
    /// many and trims then), but the loser of a spare race goes at once.
    /// A leaving supernode goes as soon as the client is whole without it.
    fn trim_surplus(&mut self, io: &mut Io) {
        let target = io.params.attachments_target;
        loop {
            let healthy = self.attachments.iter().filter(|a| a.healthy()).count();
            let index = if healthy > target {
                (0..self.attachments.len())
                    .filter(|i| self.attachments[*i].healthy())
                    .max_by_key(|i| self.attachments[*i].load_pct)
            } else if healthy == target {
                self.attachments
                    .iter()
                    .position(|a| a.leaving && a.phase == Phase::Attached)
            } else {
                None
            };
            let Some(index) = index else {
                return;
            };
            let attachment = self.attachments.swap_remove(index);
            io.send(
                attachment.contact.addr,
                &Message::Detach {
                    alternates: BoundedVec::new(),
                },
            );
            self.mark_presence_dirty(io);
        }
    }

    pub(crate) fn handle_timeout(&mut self, io: &mut Io) {
        self.punch.handle_timeout(io);
        let now = io.now.instant;
        let mut index = 0;
        while index < self.attachments.len() {
            if self.attachments[index].deadline > now {
                index += 1;
                continue;
            }
            if self.attachment_timeout(io, index) {
                index += 1;
            }
        }
        self.keepalive_if_due(io);
        // A suspect dropped on a timeout may leave the spares it raced surplus.
        self.trim_surplus(io);
        self.fill_attachments(io);
        self.publish_if_due(io);
        self.send_outbox(io);
        self.expire_lookups(io);
        self.names_timeout(io);
        self.bundles_timeout(io);
        self.device_lists_timeout(io);
        self.refresh_own_records(io);
        self.probe_if_due(io);
        self.check_promotion(io);
    }

    /// Handles one expired attachment deadline; false if it was removed.
    fn attachment_timeout(&mut self, io: &mut Io, index: usize) -> bool {
        let now = io.now.instant;
        let params = io.params;
        let attachment = &mut self.attachments[index];
        match attachment.phase {
            Phase::Hello | Phase::Proof { .. } | Phase::Resume => {
                if attachment.tries as u32 >= params.attach_tries_max {
                    self.drop_attachment(io, index, DetachReason::AttachFailed);
                    return false;
                }
                // The retry is a full login: it works whatever became of the ticket.
                attachment.tries += 1;
                attachment.step_started = now;
                attachment.deadline = now.add_ms(params.attach_step_timeout_ms);
                Self::send_attach_start(io, attachment);
                true
            }
            Phase::Attached => {
                // A pong timed out.
                attachment.misses += 1;
                if attachment.misses as u32 >= params.keepalive_misses_max {
                    self.drop_attachment(io, index, DetachReason::KeepaliveTimeout);
                    return false;
                }
                Self::send_ping(io, attachment);
                true
            }
        }
    }

    /// Pings a supernode; a missing pong is noticed after `pong_timeout_ms`.
    /// Even the routine ping waits only that long rather than until the
    /// next tick: a client whose supernodes all died at once (a crash wave
    /// takes 40% of them, so 16% of clients lose both) has nobody to tell
    /// it, and this is how soon it finds out (one wake-up more per ping).
    fn send_ping(io: &mut Io, attachment: &mut Attachment) {
        attachment.awaiting_pong = true;
        attachment.ping_sequence = attachment.ping_sequence.wrapping_add(1);
        attachment.deadline = io.now.instant.add_ms(io.params.pong_timeout_ms);
        let (addr, sequence) = (attachment.contact.addr, attachment.ping_sequence);
        io.send(addr, &Message::Ping { sequence });
    }

    /// The shared keepalive tick: every attachment gets a keepalive, and
    /// every `keepalive_check_every`-th tick it is a ping. An unanswered
    /// ping is retried on its own deadline (`attachment_timeout`) and the
    /// supernode dropped after `keepalive_misses_max` misses.
    fn keepalive_if_due(&mut self, io: &mut Io) {
        let now = io.now.instant;
        if self.keepalive_at.is_none_or(|at| at > now) {
            return;
        }
        self.keepalive_round = self.keepalive_round.wrapping_add(1);
        let check = self
            .keepalive_round
            .is_multiple_of(io.params.keepalive_check_every.max(1));
        let mut index = 0;
        while index < self.attachments.len() {
            let attachment = &mut self.attachments[index];
            if attachment.phase != Phase::Attached || attachment.deadline != Instant::NEVER {
                // Handshaking, or already retrying on its own deadline.
                index += 1;
                continue;
            }
            if check {
                attachment.misses = 0;
                Self::send_ping(io, attachment);
            } else {
                io.send(attachment.contact.addr, &Message::Keepalive);
            }
            index += 1;
        }
        let any = self.attachments.iter().any(|a| a.phase == Phase::Attached);
        self.keepalive_at = any.then(|| now.add_ms(io.params.keepalive_interval_ms));
    }

    fn publish_if_due(&mut self, io: &mut Io) {
        let now = io.now.instant;
        let refresh_due = self.presence_refresh_at.is_some_and(|at| at <= now);
        let dirty_due = self.presence_dirty_since.is_some_and(|at| at <= now);
        let handshakes_pending = self.attachments.iter().any(|a| a.phase != Phase::Attached);
        if dirty_due && handshakes_pending && !self.presence_deferred && !refresh_due {
            // Wait once more for handshakes in flight, so one record names them all.
            self.presence_deferred = true;
            self.presence_dirty_since = Some(now.add_ms(io.params.presence_debounce_ms));
            return;
        }
        if !(refresh_due || dirty_due) {
            return;
        }
        self.presence_deferred = false;
        let attached = self.attached();
        if attached.is_empty() {
            self.presence_refresh_at = None;
            self.presence_dirty_since = None;
            return;
        }
        self.presence_dirty_since = None;
        self.presence_refresh_at = Some(now.add_ms(io.params.presence_refresh_s * 1000));
        let record = self.sign_record(io, &attached);
        for contact in &attached {
            io.send(
                contact.addr,
                &Message::Publish {
                    record: record.clone(),
                },
            );
        }
        io.event(Event::PresencePublished {
            sequence: record.body.sequence,
        });
    }

    fn sign_record(&mut self, io: &mut Io, attached: &[Contact]) -> PresenceRecord {
        self.presence_sequence += 1;
        let body = PresenceBody {
            cert: io.identity.cert,
            sequence: self.presence_sequence,
            issued_unix_s: io.now.unix_s,
            expires_unix_s: io.now.unix_s + io.params.presence_ttl_s,
            supernodes: BoundedVec::truncating(
                attached.iter().copied().take(RECORD_SUPERNODES_MAX),
            ),
        };
        sign_presence(&io.identity.keypair, body)
    }

    pub(crate) fn lookup(&mut self, io: &mut Io, account: PublicKey) {
        let attached = self.attached();
        if attached.is_empty() || self.lookups.len() >= CLIENT_LOOKUPS_MAX {
            io.event(Event::LookupDone {
                account,
                record: None,
                hops: 0,
                elapsed_ms: 0,
            });
            return;
        }
        let via = attached[io.rng_index(attached.len())];
        self.next_query_id = self.next_query_id.wrapping_add(1);
        let query_id = self.next_query_id;
        self.lookups.push(PendingLookup {
            query_id,
            account,
            started: io.now.instant,
            deadline: io.now.instant.add_ms(io.params.lookup_timeout_ms),
            via: via.key,
            tries: 1,
        });
        io.send(via.addr, &Message::LookupRequest { query_id, account });
    }

    fn on_lookup_response(
        &mut self,
        io: &mut Io,
        query_id: u32,
        record: Option<PresenceRecord>,
        hops: u8,
    ) {
        let Some(index) = self.lookups.iter().position(|l| l.query_id == query_id) else {
            return;
        };
        let lookup = self.lookups.swap_remove(index);
        // Check what the supernode handed us: right account, valid signature, fresh.
        let record = record.filter(|r| {
            r.body.cert.body.account_key == lookup.account
                && crate::identity::verify_presence(
                    io.mode,
                    r,
                    io.now.unix_s,
                    io.params.clock_skew_tolerance_s,
                )
                .is_ok()
        });
        io.event(Event::LookupDone {
            account: lookup.account,
            record: record.map(Box::new),
            hops,
            elapsed_ms: io.now.instant.since_ms(lookup.started),
        });
    }

    fn expire_lookups(&mut self, io: &mut Io) {
        let now = io.now.instant;
        let mut index = 0;
        while index < self.lookups.len() {
            if self.lookups[index].deadline > now {
                index += 1;
                continue;
            }
            let lookup = &self.lookups[index];
            let other = self.attached().into_iter().find(|c| c.key != lookup.via);
            match other {
                Some(contact) if lookup.tries < LOOKUP_TRIES_MAX => {
                    // Try again through another supernode.
                    let lookup = &mut self.lookups[index];
                    lookup.tries += 1;
                    lookup.via = contact.key;
                    lookup.deadline = now.add_ms(io.params.lookup_timeout_ms);
                    let (query_id, account) = (lookup.query_id, lookup.account);
                    io.send(contact.addr, &Message::LookupRequest { query_id, account });
                    index += 1;
                }
                _ => {
                    let lookup = self.lookups.swap_remove(index);
                    io.event(Event::LookupDone {
                        account: lookup.account,
                        record: None,
                        hops: 0,
                        elapsed_ms: now.since_ms(lookup.started),
                    });
                }
            }
        }
    }

    fn probe_if_due(&mut self, io: &mut Io) {
        let now = io.now.instant;
        if self.probe_at.is_none_or(|at| at > now) {
            return;
        }
        if *io.reachable {
            self.probe_at = None;
            return;
        }
        self.probe_at = Some(now.add_ms(io.params.probe_interval_s * 1000));
        if let Some(contact) = self.attached().first() {
            self.probe_token = io.random_u64() | 1;
            io.send(
                contact.addr,
                &Message::ProbeRequest {
                    token: self.probe_token,
                },
            );
        }
    }

    fn check_promotion(&mut self, io: &mut Io) {
        let now = io.now.instant;
        if self.promote_check_at.is_none_or(|at| at > now) {
            return;
        }
        // The first busy round needs a few busy answers; once in one, any
        // busy answer since the last check keeps it going.
        let busy_min = if self.busy_checks > 0 {
            1
        } else {
            PROMOTE_BUSY_MIN
        };
        let busy = self.busy_seen >= busy_min;
        self.busy_seen = 0;
        // A quiet round lowers the escalation instead of ending it: a client
        // backing off between attempts (up to 15 s) meets a busy supernode
        // only every other round even while the deficit lasts.
        self.busy_checks = if busy {
            self.busy_checks + 1
        } else {
            self.busy_checks.saturating_sub(1)
        };
        let period_ms = if self.busy_checks > 0 {
            PROMOTE_BUSY_RECHECK_MS
        } else {
            io.params.promote_check_interval_s * 1000
        };
        self.promote_check_at = Some(now.add_ms(period_ms));
        let attached: Vec<&Attachment> = self
            .attachments
            .iter()
            .filter(|a| a.phase == Phase::Attached)
            .collect();
        if !*io.reachable
            || attached.is_empty()
            || now.since_ms(io.started_at) < io.params.promote_uptime_s * 1000
        {
            return;
        }
        // The network's load, not just our supernodes': a freshly promoted
        // supernode (load 0) lowers it at once, so promotions stop when
        // enough capacity has joined instead of going on until clients move.
        let load: u32 = attached
            .iter()
            .map(|a| a.network_load_pct as u32)
            .sum::<u32>()
            / attached.len() as u32;
        // Supernodes turning clients away is the other sign of need: the
        // average load lags (gossip), busy answers do not.
        // Chance per million; see `Params::promote_share_pct`.
        let capacity = io.params.supernode_capacity_attachments.max(1) as u64;
        let chance = (io.params.promote_share_pct as u64 * 10_000 / capacity)
            << self.busy_checks.saturating_sub(1).min(4);
        if (load >= io.params.promote_load_pct as u32 || busy)
            && (io.rng_index(1_000_000) as u64) < chance
        {
            self.promotion_due = true;
        }
    }

    // ---- messaging ----

    pub(crate) fn send_message(
        &mut self,
        io: &mut Io,
        to_device: PublicKey,
        to_account: PublicKey,
        payload: &[u8],
    ) -> Result<u64, SendError> {
        if payload.len() > PAYLOAD_LEN_MAX {
            return Err(SendError::TooLarge);
        }
        if io.mail.outbox.len() >= OUTBOX_MAX {
            return Err(SendError::OutboxFull);
        }
        let seq = io.mail.next_seq(to_device);
        let envelope = self.seal(
            io,
            to_device,
            to_account,
            seq,
            EnvelopeKind::Data {
                payload: BoundedVec::truncating(payload.iter().copied()),
            },
        );
        io.mail.outbox.push(OutboxEntry {
            envelope,
            attempts: 0,
            next_send: io.now.instant,
        });
        self.send_outbox(io);
        Ok(seq)
    }

    fn seal(
        &self,
        io: &Io,
        to_device: PublicKey,
        to_account: PublicKey,
        seq: u64,
        kind: EnvelopeKind,
    ) -> Envelope {
        sign_envelope(
            &io.identity.keypair,
            EnvelopeBody {
                from_device: io.identity.keypair.public(),
                from_account: io.identity.account(),
                to_device,
                to_account,
                seq,
                sent_unix_s: io.now.unix_s,
                kind,
            },
        )
    }

    /// Sends (or re-sends) the outbox messages that are due, a bounded
    /// number per call, through a random attached supernode; each waits a
    /// jittered, doubling interval for its acknowledgement before the next try.
    fn send_outbox(&mut self, io: &mut Io) {
        let now = io.now.instant;
        // Every wake-up of every client comes here: nothing to allocate
        // when nothing is due.
        if io.mail.outbox.iter().all(|entry| entry.next_send > now) {
            return;
        }
        let attached = self.attached();
        if attached.is_empty() {
            return;
        }
        let params = io.params;
        let mut due = Vec::new();
        for (index, entry) in io.mail.outbox.iter().enumerate() {
            if entry.next_send <= now {
                due.push(index);
            }
        }
        for (n, index) in due.into_iter().enumerate() {
            if n >= params.outbox_sends_per_tick {
                // Paced: the rest go out a little later.
                io.mail.outbox[index].next_send = now.add_ms(OUTBOX_PACE_MS);
                continue;
            }
            let attempts = io.mail.outbox[index].attempts + 1;
            let wait_ms = crate::hostcache::backoff_ms(
                attempts,
                params.outbox_resend_base_ms,
                params.outbox_resend_max_ms,
                io.rng,
            );
            let entry = &mut io.mail.outbox[index];
            entry.attempts = attempts;
            entry.next_send = now.add_ms(wait_ms);
            let envelope = entry.envelope.clone();
            let via = attached[io.rng_index(attached.len())];
            io.send(via.addr, &Message::MailPut { envelope });
        }
    }

    /// An envelope for us from our supernode: deliver, acknowledge, and let
    /// the mailbox drop it.
    fn on_mail(&mut self, io: &mut Io, from: peerline_proto::Addr, envelope: Envelope) {
        let me = io.identity.keypair.public();
        if envelope.body.to_device != me || verify_envelope(io.mode, &envelope).is_err() {
            io.stats.signatures_rejected += 1;
            return;
        }
        let id = envelope_id(&envelope);
        let (sender, sender_account) = (envelope.body.from_device, envelope.body.from_account);
        match envelope.body.kind {
            EnvelopeKind::Ack { up_to_seq } => {
                if io.mail.acknowledged(&sender, up_to_seq) > 0 {
                    io.event(Event::MessageAcked {
                        to_device: sender,
                        up_to_seq,
                    });
                }
            }
            EnvelopeKind::Data { .. } => {
                match io.mail.arrive(envelope) {
                    Arrival::Deliver(list) => {
                        for envelope in list {
                            if let EnvelopeKind::Data { payload } = envelope.body.kind {
                                io.event(Event::MessageReceived {
                                    from_device: sender,
                                    from_account: envelope.body.from_account,
                                    seq: envelope.body.seq,
                                    payload: payload.as_slice().to_vec(),
                                });
                            }
                        }
                    }
                    // Refused (far past a gap): not kept, yet let the mailbox drop
                    // it — left there it would block the window for every
                    // other sender, and the sender's outbox still holds it.
                    Arrival::Duplicate | Arrival::Held | Arrival::Refused => {}
                }
                if let Some(up_to_seq) = io.mail.should_ack(&sender, io.now.instant, ACK_REPEAT_MS)
                {
                    let ack = self.seal(
                        io,
                        sender,
                        sender_account,
                        0,
                        EnvelopeKind::Ack { up_to_seq },
                    );
                    io.send(from, &Message::MailPut { envelope: ack });
                }
            }
        }
        io.send(
            from,
            &Message::MailDone {
                ids: BoundedVec::truncating([id]),
            },
        );
    }

    /// Detaches from every supernode (graceful exit or promotion).
    pub(crate) fn shutdown(&mut self, io: &mut Io) {
        for attachment in self.attachments.drain(..) {
            io.send(
                attachment.contact.addr,
                &Message::Detach {
                    alternates: BoundedVec::new(),
                },
            );
        }
        self.lookups.clear();
    }
}

/// What a device signs to prove possession of its key at attach: the
/// supernode's challenge and the supernode's key (so a proof for one
/// supernode is useless at another).
pub fn attach_proof_bytes(challenge: &[u8; 32], supernode: &PublicKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(challenge);
    bytes.extend_from_slice(&supernode.0);
    bytes
}
