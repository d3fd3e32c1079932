//! Hole punching, sans-IO: when to start, which candidates to offer, the
//! exchange through the supernodes, retries and time-outs. The driver only
//! executes what this asks ([`PathCommand`]) and feeds back what it learnt
//! ([`crate::Node::reflexive_found`]).
//!
//! ```text
//! A                    A's supernode          B's supernode               B
//! |-- Stun ------------>|  (reflexive address)
//! |-- PunchCandidates -->|-- PunchCandidates -->|-- PunchCandidates -------->|
//! |                      |                      |<-- Stun ------------------|
//! |<-- PunchCandidates --|<-- PunchCandidates --|<-- PunchCandidates (answer)|
//! |== spray to B's candidates ====================== spray to A's candidates |
//! |-- PathPing (over QUIC, dialled by the lower device key) --------------->|
//! |<------------------------------------------------------------ PathPong --|
//! ```
//!
//! Both sides spray small packets at the other's candidates at the same
//! time (each opens its own NAT for the other's packets); the side with
//! the lower device key is the QUIC client: its `PathPing` to every
//! candidate makes the driver dial each one, pinned to the peer's device
//! key; the other side only accepts. The first `PathPong` names the
//! direct path. A supernode passes a `PunchCandidates` from an attached
//! client (whose device key it checks) to the recipient if attached to
//! itself, else to the supernode the recipient's presence record names,
//! which hands it to its client.
//!
//! When no check comes through (both NATs map per destination, or filter
//! what the other sends), both sides fall back to a relay: the initiator's
//! supernode, which both know from the offer. Each asks it over its own
//! connection ([`crate::relay`]); once granted a channel, the driver opens
//! a *relayed path* — a virtual address that stands for "through the
//! relay on this channel" ([`PathCommand::OpenRelayedPath`]) — and the same
//! checks run over it. While the path lives its binding is refreshed.

use crate::attached::Attached;
use crate::identity::verify_device_cert;
use crate::node::{Event, Io};
use crate::sealed::{self, SealedHeader};
use crate::time::Instant;
use peerline_proto::message::PUNCH_CANDIDATES_MAX;
use peerline_proto::{Addr, BoundedVec, Contact, Message, PresenceRecord, PublicKey};
use rand_core::Rng;
use std::collections::{BTreeSet, VecDeque};

/// Punching sessions a device keeps at once (finished ones included, for
/// the status; the oldest finished one makes room).
pub const PUNCH_SESSIONS_MAX: usize = 16;
/// Driver commands waiting to be polled.
pub const PATH_COMMANDS_MAX: usize = 64;
/// How long to wait for the reflexive address before offering without it.
pub const GATHER_TIMEOUT_MS: u64 = 3_000;
/// Offer re-sent this often until answered…
pub const OFFER_RETRY_MS: u64 = 1_000;
/// …this many times in all.
pub const OFFER_ATTEMPTS_MAX: u32 = 6;
/// Connectivity checks (`PathPing` to every candidate) this often…
pub const CHECK_INTERVAL_MS: u64 = 500;
/// …this many rounds (10 s) before the direct path is given up.
pub const CHECK_ROUNDS_MAX: u32 = 20;
/// Packets sprayed at each peer candidate, and their spacing.
pub const SPRAY_PACKETS: u32 = 15;
pub const SPRAY_INTERVAL_MS: u64 = 300;
/// Relay requests re-sent this often until granted…
pub const RELAY_RETRY_MS: u64 = 1_000;
/// …this many times in all (the peer may reach the relay later).
pub const RELAY_ATTEMPTS_MAX: u32 = 15;
/// How long the driver may take to open a relayed path.
pub const RELAY_OPEN_TIMEOUT_MS: u64 = 5_000;
/// Longest wait a refusal may impose before the next request.
pub const RELAY_REFUSED_WAIT_MAX_MS: u64 = 10_000;
/// An established path is checked this often by the dialling side (a
/// `PathPing`, answered by a `PathPong`): it keeps the NAT bindings on the
/// way open (UDP bindings last 30 s or more, RFC 4787 REQ-5) and the QUIC
/// connection from its idle timeout.
pub const PATH_KEEPALIVE_MS: u64 = 15_000;
/// A path that carried nothing from the peer for this long is lost.
pub const PATH_LOST_MS: u64 = 50_000;

/// Most contacts (accounts) a node reveals its direct addresses to.
pub const CONTACTS_MAX: usize = 4_096;

/// Whom a device reveals its direct addresses (its punching candidates)
/// to when it answers an offer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RevealAddresses {
    /// Only devices certified by one of the accounts given to
    /// [`crate::Node::set_contacts`]. Anyone else gets an answer without
    /// addresses and a relayed path through this device's own supernode.
    #[default]
    ContactsOnly,
    /// Every device that offers, contact or not: anyone who looks the
    /// name up learns the device's IP addresses. For tests and demos only.
    AnyoneInsecure,
}

/// The node's contacts and its policy: which offers it answers with its
/// addresses. Kept by the node across restarts and role changes.
#[derive(Clone, Debug, Default)]
pub struct AddressPrivacy {
    pub(crate) policy: RevealAddresses,
    /// At most [`CONTACTS_MAX`].
    pub(crate) contacts: BTreeSet<PublicKey>,
}

impl AddressPrivacy {
    /// Replaces the contacts; keeps the first [`CONTACTS_MAX`] and
    /// returns how many it kept.
    pub(crate) fn set_contacts(&mut self, accounts: impl IntoIterator<Item = PublicKey>) -> usize {
        self.contacts = accounts.into_iter().take(CONTACTS_MAX).collect();
        debug_assert!(self.contacts.len() <= CONTACTS_MAX);
        self.contacts.len()
    }

    /// Whether a device of `account` may learn this device's addresses.
    pub(crate) fn reveals_to(&self, account: &PublicKey) -> bool {
        match self.policy {
            RevealAddresses::ContactsOnly => self.contacts.contains(account),
            RevealAddresses::AnyoneInsecure => true,
        }
    }
}

/// What the driver must do for the punching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathCommand {
    /// Ask `server` over STUN, from the node's port, for this node's
    /// reflexive address; answer with [`crate::Node::reflexive_found`].
    Stun { server: Addr },
    /// Send `count` small packets to each target, `interval_ms` apart, from
    /// the node's port: they open this side's NAT for the peer's packets.
    Spray {
        targets: Vec<Addr>,
        count: u32,
        interval_ms: u64,
    },
    /// Open a relayed path through `relay` on `channel` and answer with
    /// [`crate::Node::relayed_path_opened`] (the virtual address that
    /// stands for the path, or `None`).
    OpenRelayedPath {
        session: u64,
        relay: Addr,
        channel: u16,
    },
    /// The relayed path with this virtual address is no longer used.
    CloseRelayedPath { path: Addr },
    /// As a relay: forward frames between `a`'s channel and `b`'s.
    RelayBind { a: (Addr, u16), b: (Addr, u16) },
    /// As a relay: stop forwarding for the binding `a` belongs to.
    RelayUnbind { a: (Addr, u16) },
    /// Drop every relay binding and relayed path: the node changed role
    /// (a supernode relays, a client uses paths; neither carries over).
    RelayReset,
}

/// Which way a connection to a peer went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// Straight between the peers (after hole punching where needed).
    Direct,
    /// Through a supernode's relay.
    Relayed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathFailure {
    /// Not attached to any supernode, or the peer's record names none.
    NoSupernode,
    /// The peer never answered the offer.
    NoAnswer,
    /// Candidates exchanged, but no check came through (both NATs
    /// endpoint-dependent, or filtering), and hole punching was all that
    /// was tried.
    NoDirectPath,
    /// No direct path, and the relay refused, never answered, or carried
    /// no check either.
    NoRelay,
    /// The path was up, then carried no keepalive for `PATH_LOST_MS`.
    Lost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the reflexive address.
    Gathering,
    /// Offer sent, waiting for the answer.
    Offered,
    /// Candidates known (or a relayed path open), checks running.
    Checking,
    /// No direct path: asking the relay for a channel.
    Relaying,
    /// Channel granted: waiting for the driver's relayed path.
    Opening,
    Up,
    Failed,
}

/// A finished or running attempt, as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathReport {
    pub peer: PublicKey,
    pub session: u64,
    /// `None` while running or after failing.
    pub kind: Option<PathKind>,
    pub addr: Option<Addr>,
    /// The relay a relayed path goes through (`addr` is then the virtual
    /// address the driver gave the path).
    pub relay: Option<Addr>,
    pub failure: Option<PathFailure>,
    pub elapsed_ms: u64,
}

#[derive(Clone, Debug)]
struct Session {
    id: u64,
    peer: PublicKey,
    initiator: bool,
    /// The supernode this side sends its candidates through.
    via: Addr,
    /// The supernode they go to (one the peer's record names).
    peer_supernode: Addr,
    phase: Phase,
    deadline: Instant,
    attempts: u32,
    started: Instant,
    reflexive: Option<Addr>,
    peer_candidates: Vec<Addr>,
    path: Option<Addr>,
    failure: Option<PathFailure>,
    finished_ms: u64,
    /// The relay both sides use if punching fails: the initiator's
    /// supernode.
    relay: Addr,
    /// The relayed path's virtual address, once open.
    relayed: Option<Addr>,
    /// Once up: when the peer was last heard on the path, and when the
    /// relay binding is next refreshed.
    heard: Instant,
    refresh_at: Instant,
    /// This side answers without its addresses (the offerer is not a
    /// contact) and never sends to the peer's candidates: the path is
    /// relayed by this side's own supernode (`relay`), which knows its
    /// address already.
    withhold: bool,
}

impl Session {
    /// This side dials (is the QUIC client): the lower device key.
    fn dials(&self, own: &PublicKey) -> bool {
        own.0 < self.peer.0
    }

    fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Up | Phase::Failed)
    }

    /// Running, or up (kept alive, and a relay binding refreshed).
    fn has_timer(&self) -> bool {
        self.phase != Phase::Failed
    }

    fn kind(&self) -> PathKind {
        match self.relayed {
            Some(_) => PathKind::Relayed,
            None => PathKind::Direct,
        }
    }
}

/// A device's punching sessions.
#[derive(Clone, Debug, Default)]
pub struct Punch {
    sessions: Vec<Session>,
    commands: VecDeque<PathCommand>,
    /// The address the node advertises (its local candidate).
    pub(crate) local: Option<Addr>,
    /// The address a gateway maps to the node's port (UPnP-IGD, told by the
    /// driver): reachable from outside without punching, so offered first.
    pub(crate) mapped: Option<Addr>,
}

impl Punch {
    pub(crate) fn next_deadline(&self) -> Instant {
        self.sessions
            .iter()
            .filter(|s| s.has_timer())
            .map(|s| s.deadline)
            .min()
            .unwrap_or(Instant::NEVER)
    }

    pub(crate) fn poll_command(&mut self) -> Option<PathCommand> {
        self.commands.pop_front()
    }

    fn command(&mut self, command: PathCommand) {
        if self.commands.len() < PATH_COMMANDS_MAX {
            self.commands.push_back(command);
        }
    }

    /// The device key of the peer whose candidate `addr` is (a dial there
    /// must prove that key).
    pub(crate) fn peer_at(&self, addr: &Addr) -> Option<PublicKey> {
        self.sessions
            .iter()
            .rev()
            .find(|s| s.peer_candidates.contains(addr) || s.path == Some(*addr))
            .map(|s| s.peer)
    }

    pub(crate) fn reports(&self) -> Vec<PathReport> {
        self.sessions
            .iter()
            .map(|s| PathReport {
                peer: s.peer,
                session: s.id,
                kind: (s.phase == Phase::Up).then(|| s.kind()),
                addr: s.path,
                relay: s.relayed.map(|_| s.relay),
                failure: s.failure,
                elapsed_ms: s.finished_ms,
            })
            .collect()
    }

    /// Makes room for one more session; false when every one is running.
    fn room(&mut self) -> bool {
        if self.sessions.len() < PUNCH_SESSIONS_MAX {
            return true;
        }
        match self.sessions.iter().position(Session::is_finished) {
            Some(index) => {
                let gone = self.sessions.remove(index);
                if let Some(path) = gone.relayed {
                    self.command(PathCommand::CloseRelayedPath { path });
                }
                true
            }
            None => false,
        }
    }

    /// Starts a direct connection to the device of `record`.
    pub(crate) fn start(&mut self, io: &mut Io, record: &PresenceRecord, attached: &[Contact]) {
        let peer = record.body.cert.body.device_key;
        let running = self
            .sessions
            .iter()
            .any(|s| s.peer == peer && !s.is_finished());
        if running {
            return;
        }
        let peer_supernodes: Vec<Addr> = record.body.supernodes.iter().map(|c| c.addr).collect();
        // A supernode both are attached to needs no forwarding.
        let shared = attached
            .iter()
            .map(|c| c.addr)
            .find(|addr| peer_supernodes.contains(addr));
        let via = shared.or_else(|| attached.first().map(|c| c.addr));
        let (Some(via), Some(peer_supernode)) = (via, shared.or(peer_supernodes.first().copied()))
        else {
            io.event(Event::PathFailed {
                peer,
                reason: PathFailure::NoSupernode,
            });
            return;
        };
        if !self.room() {
            return;
        }
        let now = io.now.instant;
        self.sessions.push(Session {
            id: io.random_u64(),
            peer,
            initiator: true,
            via,
            peer_supernode,
            phase: Phase::Gathering,
            deadline: now.add_ms(GATHER_TIMEOUT_MS),
            attempts: 0,
            started: now,
            reflexive: None,
            peer_candidates: Vec::new(),
            path: None,
            failure: None,
            finished_ms: 0,
            relay: via,
            relayed: None,
            heard: now,
            refresh_at: Instant::NEVER,
            withhold: false,
        });
        self.command(PathCommand::Stun { server: via });
    }

    /// The driver's STUN answer from `server` (`None`: it failed).
    pub(crate) fn reflexive_found(&mut self, io: &mut Io, server: Addr, reflexive: Option<Addr>) {
        for index in 0..self.sessions.len() {
            let session = &mut self.sessions[index];
            if session.phase == Phase::Gathering && session.via == server {
                session.reflexive = reflexive;
                self.gathered(io, index);
            }
        }
    }

    fn candidates(&self, session: &Session) -> BoundedVec<Addr, PUNCH_CANDIDATES_MAX> {
        let mut candidates = Vec::new();
        for candidate in [self.mapped, session.reflexive, self.local]
            .into_iter()
            .flatten()
        {
            if !candidates.contains(&candidate) {
                candidates.push(candidate);
            }
        }
        BoundedVec::truncating(candidates)
    }

    /// Sends this side's candidates, sealed to the peer device (none when
    /// withholding them), through `session.via`.
    fn send_candidates(&self, io: &mut Io, session: &Session) {
        let candidates = match session.withhold {
            true => Vec::new(),
            false => self.candidates(session).into_vec(),
        };
        let header = SealedHeader {
            session: session.id,
            from_cert: io.identity.cert,
            to_device: session.peer,
            to_supernode: session.peer_supernode,
            reply_supernode: session.via,
            answer: !session.initiator,
        };
        let mut entropy = [0u8; 32];
        io.rng.fill_bytes(&mut entropy);
        match sealed::seal(&io.identity.keypair, header, &candidates, &entropy) {
            Ok(message) => io.send(session.via, &message),
            // The peer's device key is no curve point: nothing can reach it.
            Err(_) => io.stats.punch_sealed_refused += 1,
        }
    }

    /// Candidates are ready: offer them, or answer and start checking.
    fn gathered(&mut self, io: &mut Io, index: usize) {
        let session = self.sessions[index].clone();
        self.send_candidates(io, &session);
        if session.initiator {
            let session = &mut self.sessions[index];
            session.phase = Phase::Offered;
            session.attempts = 1;
            session.deadline = io.now.instant.add_ms(OFFER_RETRY_MS);
        } else if session.withhold {
            self.start_relay(io, index);
        } else {
            self.begin_checks(io, index);
        }
    }

    fn begin_checks(&mut self, io: &mut Io, index: usize) {
        let own = io.identity.keypair.public();
        let session = &mut self.sessions[index];
        session.phase = Phase::Checking;
        session.attempts = 0;
        session.deadline = io.now.instant;
        let spray = PathCommand::Spray {
            targets: session.peer_candidates.clone(),
            count: SPRAY_PACKETS,
            interval_ms: SPRAY_INTERVAL_MS,
        };
        let dials = session.dials(&own);
        // A relayed path needs no NAT opened: the relay is reached already.
        if session.relayed.is_none() {
            self.command(spray);
        }
        if dials {
            self.check_round(io, index);
        } else {
            let session = &mut self.sessions[index];
            session.deadline = io.now.instant.add_ms(CHECK_INTERVAL_MS);
        }
    }

    /// One round of checks: the dialling side pings every candidate.
    fn check_round(&mut self, io: &mut Io, index: usize) {
        let own = io.identity.keypair.public();
        let session = &mut self.sessions[index];
        session.attempts += 1;
        session.deadline = io.now.instant.add_ms(CHECK_INTERVAL_MS);
        if session.dials(&own) {
            let ping = Message::PathPing {
                session: session.id,
            };
            for candidate in session.peer_candidates.clone() {
                io.send(candidate, &ping);
            }
        }
    }

    fn fail(&mut self, io: &mut Io, index: usize, reason: PathFailure) {
        if let Some(path) = self.sessions[index].relayed.take() {
            self.command(PathCommand::CloseRelayedPath { path });
        }
        let session = &mut self.sessions[index];
        session.phase = Phase::Failed;
        session.failure = Some(reason);
        session.deadline = Instant::NEVER;
        session.finished_ms = io.now.instant.since_ms(session.started);
        io.event(Event::PathFailed {
            peer: session.peer,
            reason,
        });
    }

    fn up(&mut self, io: &mut Io, index: usize, addr: Addr) {
        let now = io.now.instant;
        let session = &mut self.sessions[index];
        session.heard = now;
        if session.phase == Phase::Up {
            return;
        }
        session.phase = Phase::Up;
        session.path = Some(addr);
        session.deadline = now.add_ms(PATH_KEEPALIVE_MS);
        if session.relayed.is_some() {
            session.refresh_at = now.add_ms(relay_refresh_ms(io));
        }
        session.finished_ms = io.now.instant.since_ms(session.started);
        io.event(Event::PathUp {
            peer: session.peer,
            kind: session.kind(),
            addr,
            elapsed_ms: session.finished_ms,
        });
    }

    /// An established path's timer: the dialling side checks it, and a
    /// relayed path's binding is refreshed when due.
    fn keep_alive(&mut self, io: &mut Io, index: usize) {
        let now = io.now.instant;
        let own = io.identity.keypair.public();
        let session = &self.sessions[index];
        if let (true, Some(path)) = (session.dials(&own), session.path) {
            io.send(
                path,
                &Message::PathPing {
                    session: session.id,
                },
            );
        }
        if session.refresh_at <= now {
            let request = crate::relay::request(io, session.id, session.peer, session.relay);
            io.send(session.relay, &request);
            self.sessions[index].refresh_at = now.add_ms(relay_refresh_ms(io));
        }
        self.sessions[index].deadline = now.add_ms(PATH_KEEPALIVE_MS);
    }

    /// No direct path: ask the relay (both sides do).
    fn start_relay(&mut self, io: &mut Io, index: usize) {
        let session = &mut self.sessions[index];
        session.phase = Phase::Relaying;
        session.attempts = 1;
        session.deadline = io.now.instant.add_ms(RELAY_RETRY_MS);
        let request = crate::relay::request(io, session.id, session.peer, session.relay);
        io.send(session.relay, &request);
    }

    fn on_relay_granted(&mut self, io: &mut Io, from: Addr, id: u64, channel: u16) {
        let found = self
            .sessions
            .iter()
            .position(|s| s.id == id && s.relay == from && s.phase == Phase::Relaying);
        let Some(index) = found else {
            // A refresh's answer, or a duplicate.
            return;
        };
        let session = &mut self.sessions[index];
        session.phase = Phase::Opening;
        session.deadline = io.now.instant.add_ms(RELAY_OPEN_TIMEOUT_MS);
        let command = PathCommand::OpenRelayedPath {
            session: id,
            relay: from,
            channel,
        };
        self.command(command);
    }

    fn on_relay_refused(&mut self, io: &mut Io, from: Addr, id: u64, retry_after_ms: u32) {
        let found = self
            .sessions
            .iter_mut()
            .find(|s| s.id == id && s.relay == from && s.phase == Phase::Relaying);
        if let Some(session) = found {
            let wait = u64::from(retry_after_ms).clamp(RELAY_RETRY_MS, RELAY_REFUSED_WAIT_MAX_MS);
            session.deadline = io.now.instant.add_ms(wait);
        }
    }

    /// The driver's answer to [`PathCommand::OpenRelayedPath`].
    pub(crate) fn relayed_path_opened(&mut self, io: &mut Io, id: u64, path: Option<Addr>) {
        let Some(index) = self
            .sessions
            .iter()
            .position(|s| s.id == id && s.phase == Phase::Opening)
        else {
            if let Some(path) = path {
                self.command(PathCommand::CloseRelayedPath { path });
            }
            return;
        };
        match path {
            Some(path) => {
                let session = &mut self.sessions[index];
                session.relayed = Some(path);
                session.peer_candidates = vec![path];
                self.begin_checks(io, index);
            }
            None => self.fail(io, index, PathFailure::NoRelay),
        }
    }

    pub(crate) fn handle_timeout(&mut self, io: &mut Io) {
        let now = io.now.instant;
        for index in 0..self.sessions.len() {
            let session = &self.sessions[index];
            if !session.has_timer() || session.deadline > now {
                continue;
            }
            match session.phase {
                Phase::Gathering => self.gathered(io, index),
                Phase::Offered if session.attempts >= OFFER_ATTEMPTS_MAX => {
                    self.fail(io, index, PathFailure::NoAnswer)
                }
                Phase::Offered => {
                    let session = self.sessions[index].clone();
                    self.send_candidates(io, &session);
                    let session = &mut self.sessions[index];
                    session.attempts += 1;
                    session.deadline = now.add_ms(OFFER_RETRY_MS);
                }
                Phase::Checking if session.attempts >= CHECK_ROUNDS_MAX => match session.relayed {
                    None => self.start_relay(io, index),
                    Some(_) => self.fail(io, index, PathFailure::NoRelay),
                },
                Phase::Checking => self.check_round(io, index),
                Phase::Relaying if session.attempts >= RELAY_ATTEMPTS_MAX => {
                    self.fail(io, index, PathFailure::NoRelay)
                }
                Phase::Relaying => {
                    let request =
                        crate::relay::request(io, session.id, session.peer, session.relay);
                    let relay = session.relay;
                    let session = &mut self.sessions[index];
                    session.attempts += 1;
                    session.deadline = now.add_ms(RELAY_RETRY_MS);
                    io.send(relay, &request);
                }
                Phase::Up if now.since_ms(session.heard) >= PATH_LOST_MS => {
                    self.fail(io, index, PathFailure::Lost)
                }
                Phase::Up => self.keep_alive(io, index),
                Phase::Opening => self.fail(io, index, PathFailure::NoRelay),
                Phase::Failed => {}
            }
        }
    }

    /// A punching message. `supernodes`: where candidates may come from.
    pub(crate) fn handle(
        &mut self,
        io: &mut Io,
        from: Addr,
        message: Message,
        supernodes: &[Addr],
    ) {
        match message {
            Message::SealedCandidates {
                session,
                from_cert,
                to_device,
                to_supernode,
                reply_supernode,
                answer,
                ephemeral,
                sealed,
            } if supernodes.contains(&from) && to_device == io.identity.keypair.public() => {
                let header = SealedHeader {
                    session,
                    from_cert,
                    to_device,
                    to_supernode,
                    reply_supernode,
                    answer,
                };
                self.on_sealed(io, from, header, &ephemeral, &sealed);
            }
            Message::PathPing { session } => {
                let found = self.sessions.iter().position(|s| {
                    s.id == session && matches!(s.phase, Phase::Checking | Phase::Up)
                });
                match found {
                    Some(index) => {
                        io.send(from, &Message::PathPong { session });
                        self.up(io, index, from);
                    }
                    None => io.stats.messages_unexpected += 1,
                }
            }
            Message::RelayGranted {
                session, channel, ..
            } => self.on_relay_granted(io, from, session, channel),
            Message::RelayRefused {
                session,
                retry_after_ms,
            } => self.on_relay_refused(io, from, session, retry_after_ms),
            Message::PathPong { session } => {
                let found = self.sessions.iter().position(|s| {
                    s.id == session && matches!(s.phase, Phase::Checking | Phase::Up)
                });
                match found {
                    Some(index) => self.up(io, index, from),
                    None => io.stats.messages_unexpected += 1,
                }
            }
            _ => io.stats.messages_unexpected += 1,
        }
    }

    /// Sealed candidates for this device: the sender's certificate must
    /// verify (and not be revoked here) and the seal must open.
    fn on_sealed(
        &mut self,
        io: &mut Io,
        from: Addr,
        header: SealedHeader,
        ephemeral: &[u8; 32],
        sealed: &[u8],
    ) {
        let peer = header.from_cert.body.device_key;
        let account = header.from_cert.body.account_key;
        let certified = verify_device_cert(
            io.mode,
            &header.from_cert,
            io.now.unix_s,
            io.params.clock_skew_tolerance_s,
        )
        .is_ok();
        if !certified || io.accounts.is_refused(&peer, &account) {
            io.stats.punch_sealed_refused += 1;
            return;
        }
        let candidates = match sealed::open(&io.identity.keypair, &header, ephemeral, sealed) {
            Ok(candidates) => candidates,
            Err(_) => {
                io.stats.punch_sealed_refused += 1;
                return;
            }
        };
        if header.answer {
            self.on_answer(io, header.session, peer, header.reply_supernode, candidates);
        } else {
            let reveal = io.privacy.reveals_to(&account);
            let offer = Offer {
                from,
                id: header.session,
                peer,
                reply_supernode: header.reply_supernode,
                candidates,
            };
            self.on_offer(io, offer, reveal);
        }
    }

    fn on_answer(
        &mut self,
        io: &mut Io,
        id: u64,
        peer: PublicKey,
        reply_supernode: Addr,
        candidates: Vec<Addr>,
    ) {
        let found = self
            .sessions
            .iter()
            .position(|s| s.id == id && s.peer == peer && s.initiator && s.phase == Phase::Offered);
        let Some(index) = found else {
            // A duplicate answer (our offer was re-sent) or a stray one.
            return;
        };
        if candidates.is_empty() {
            // The peer withholds its addresses: a relayed path through its
            // supernode, the one our offer went to (or, if the peer had
            // attached to ours meanwhile, ours) — never an address the
            // answer could name freely.
            let session = &self.sessions[index];
            if reply_supernode != session.peer_supernode && reply_supernode != session.via {
                io.stats.messages_unexpected += 1;
                return;
            }
            self.sessions[index].relay = reply_supernode;
            self.start_relay(io, index);
            return;
        }
        self.sessions[index].peer_candidates = candidates;
        self.begin_checks(io, index);
    }

    /// An offer that opened. `reveal`: the offerer's account is one this
    /// device tells its addresses to; if not, the answer carries none,
    /// nothing is sent to the offerer's candidates (a packet shows its
    /// source address), and the path is relayed by this device's own
    /// supernode — the one the offer came through.
    fn on_offer(&mut self, io: &mut Io, offer: Offer, reveal: bool) {
        let Offer {
            from,
            id,
            peer,
            reply_supernode,
            candidates,
        } = offer;
        if let Some(index) = self
            .sessions
            .iter()
            .position(|s| s.id == id && s.peer == peer)
        {
            // A re-sent offer: our answer was lost; send it again.
            let session = self.sessions[index].clone();
            if session.phase != Phase::Gathering {
                self.send_candidates(io, &session);
            }
            return;
        }
        if !self.room() {
            return;
        }
        let now = io.now.instant;
        self.sessions.push(Session {
            id,
            peer,
            initiator: false,
            via: from,
            peer_supernode: reply_supernode,
            phase: Phase::Gathering,
            deadline: now.add_ms(GATHER_TIMEOUT_MS),
            attempts: 0,
            started: now,
            reflexive: None,
            peer_candidates: candidates,
            path: None,
            failure: None,
            finished_ms: 0,
            relay: reply_supernode,
            relayed: None,
            heard: now,
            refresh_at: Instant::NEVER,
            withhold: false,
        });
        if reveal {
            self.command(PathCommand::Stun { server: from });
            return;
        }
        io.stats.punch_addresses_withheld += 1;
        let index = self.sessions.len() - 1;
        let session = &mut self.sessions[index];
        session.withhold = true;
        session.peer_candidates = Vec::new();
        session.relay = from;
        self.gathered(io, index);
    }
}

/// An offer as [`Punch::on_offer`] takes it.
struct Offer {
    /// The supernode that handed it over.
    from: Addr,
    id: u64,
    peer: PublicKey,
    reply_supernode: Addr,
    candidates: Vec<Addr>,
}

/// How often an open relayed path's binding is refreshed: three times
/// per lifetime, so one lost refresh does not lose the binding.
fn relay_refresh_ms(io: &Io) -> u64 {
    (u64::from(io.params.relay_lifetime_s) * 1_000 / 3).max(RELAY_RETRY_MS)
}

/// A supernode passes sealed candidates on, unread: from an attached
/// client (the certificate's device key must be the client's) to the recipient attached here, or to the supernode the
/// recipient's record names; from elsewhere only to a client attached here.
pub(crate) fn forward(
    io: &mut Io,
    clients: &Attached,
    own_addr: Addr,
    from: Addr,
    message: Message,
    is_member: impl Fn(&Addr) -> bool,
) {
    let Message::SealedCandidates {
        from_cert,
        to_device,
        to_supernode,
        ..
    } = &message
    else {
        return;
    };
    let from_device = &from_cert.body.device_key;
    let recipient = clients.addr_of(to_device);
    match clients.get(&from) {
        Some(slot) if slot.device_key != *from_device => io.stats.messages_unexpected += 1,
        Some(_) => match recipient {
            Some(addr) => io.send(addr, &message),
            // Passed on only to a live member: an attached client must not
            // turn a supernode into a reflector towards any address.
            None if *to_supernode != own_addr && is_member(to_supernode) => {
                io.send(*to_supernode, &message)
            }
            None => io.stats.messages_unexpected += 1,
        },
        // From another supernode only: nobody else may hand our clients
        // candidates (they would point them at any address).
        None if is_member(&from) => match recipient {
            Some(addr) => io.send(addr, &message),
            None => io.stats.messages_unexpected += 1,
        },
        None => io.stats.messages_unexpected += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8, port: u16) -> Addr {
        Addr::from_socket(std::net::SocketAddr::from(([10, 0, 0, last], port)))
    }

    fn gathering(reflexive: Option<Addr>) -> Session {
        Session {
            id: 1,
            peer: PublicKey([9; 32]),
            initiator: true,
            via: addr(1, 1),
            peer_supernode: addr(1, 1),
            phase: Phase::Gathering,
            deadline: Instant::from_ms(0),
            attempts: 0,
            started: Instant::from_ms(0),
            reflexive,
            peer_candidates: Vec::new(),
            path: None,
            failure: None,
            finished_ms: 0,
            relay: addr(1, 1),
            relayed: None,
            heard: Instant::from_ms(0),
            refresh_at: Instant::NEVER,
            withhold: false,
        }
    }

    #[test]
    fn a_mapped_address_is_offered_first_and_no_candidate_twice() {
        let reflexive = addr(200, 5000);
        let local = addr(2, 4433);
        let mut punch = Punch {
            local: Some(local),
            ..Punch::default()
        };
        let offered = |punch: &Punch, session: &Session| -> Vec<Addr> {
            punch.candidates(session).iter().copied().collect()
        };
        assert_eq!(
            offered(&punch, &gathering(Some(reflexive))),
            vec![reflexive, local]
        );
        let mapped = addr(200, 4433);
        punch.mapped = Some(mapped);
        assert_eq!(
            offered(&punch, &gathering(Some(reflexive))),
            vec![mapped, reflexive, local]
        );
        assert_eq!(
            offered(&punch, &gathering(Some(mapped))),
            vec![mapped, local],
            "a gateway that maps the port it already showed STUN: one candidate"
        );
        assert_eq!(offered(&punch, &gathering(None)), vec![mapped, local]);
    }
}
