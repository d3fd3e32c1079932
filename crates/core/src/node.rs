//! The sans-IO node: one state machine that is a client or a supernode and
//! can change role. Drivers feed it datagrams and timeouts and poll what it
//! wants to send, when it wants to wake and what happened:
//!
//! ```text
//! node.handle(now, from, bytes);      node.handle_timeout(now);
//! while let Some(t) = node.poll_transmit() { send(t.to, t.bytes) }
//! while let Some(e) = node.poll_event()    { ... }
//! wake at node.poll_timeout()
//! ```

use crate::client::ClientState;
use crate::durable::{DurableChange, DurableChanges, DurableError, DurableTable};
use crate::hostcache::HostCache;
use crate::identity::{CryptoMode, DeviceIdentity};
use crate::mail::{MailState, SendError};
use crate::params::Params;
use crate::revocation::AccountTable;
use crate::supernode::SupernodeState;
use crate::time::{Instant, Now};
use peerline_proto::{
    decode, encode, encode_version_info, Addr, Contact, DecodeError, DeviceList, Frame, Message,
    NameCertificate, NameClaim, NodeId, PresenceRecord, PublicKey, RootRotation,
};
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg32;
use std::collections::VecDeque;
use std::sync::Arc;

/// A datagram the node wants sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: Addr,
    pub bytes: Vec<u8>,
}

/// Something the application (or the simulator's log) may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Attached {
        supernode: Contact,
    },
    Detached {
        supernode: Contact,
        reason: DetachReason,
    },
    PresencePublished {
        sequence: u64,
    },
    LookupDone {
        account: PublicKey,
        record: Option<Box<PresenceRecord>>,
        hops: u8,
        elapsed_ms: u64,
    },
    Reachable,
    Promoted,
    Demoted,
    /// A graceful leave ([`Node::leave`]) is over: the node has said its
    /// goodbyes and stays silent until restarted.
    Left,
    /// A message for the application, exactly once and in conversation order.
    MessageReceived {
        from_device: PublicKey,
        from_account: PublicKey,
        seq: u64,
        payload: Vec<u8>,
    },
    /// The recipient device acknowledged every message up to `up_to_seq`
    /// of the conversation towards it; they left the outbox.
    MessageAcked {
        to_device: PublicKey,
        up_to_seq: u64,
    },
    /// A connection to `peer` carries traffic both ways (`punch.rs`).
    PathUp {
        peer: PublicKey,
        kind: crate::punch::PathKind,
        addr: Addr,
        elapsed_ms: u64,
    },
    /// No path to `peer` came up.
    PathFailed {
        peer: PublicKey,
        reason: crate::punch::PathFailure,
    },
    /// A quorum certified this device's claim: the name is the account's.
    NameRegistered {
        name_key: NodeId,
        certificate: Box<NameCertificate>,
        elapsed_ms: u64,
    },
    /// Another account holds the name.
    NameTaken {
        name_key: NodeId,
        owner: PublicKey,
        elapsed_ms: u64,
    },
    NameFailed {
        name_key: NodeId,
        reason: crate::client::NameFailure,
    },
    /// Who owns a name: its checked certificate, or `None` when nobody does.
    NameLookupDone {
        name_key: NodeId,
        result: Result<Option<Box<NameCertificate>>, crate::client::NameFailure>,
        /// The account that owns the name now: the certificate's, moved
        /// along the root rotations it made since (checked). `None` when
        /// nobody owns the name or the lookup failed.
        owner: Option<PublicKey>,
        elapsed_ms: u64,
    },
    /// The account's bundle went to its supernode for its replicas, and
    /// each share deal to the holders of its index (`holders` deals sent).
    /// `indices_unheld` share indices found no holder even after the
    /// device asked again (a network smaller than the sharing): a password
    /// login still opens the account, with fewer indices to spare. With
    /// fewer than the threshold held the outcome is
    /// `BundleFailed { reason: Unavailable }` instead.
    AccountSecretsPublished {
        account: PublicKey,
        holders: usize,
        indices_unheld: u8,
    },
    /// The password opened the account's bundle: here is the root key's
    /// seed (`Keypair::from_seed(CryptoMode::Full, *root_seed.expose())`).
    /// The node re-dealt the shares to the current holders already.
    BundleOpened {
        account: PublicKey,
        /// The version of the bundle opened (a password change seals the next).
        bundle_version: u64,
        root_seed: crate::bundle::RootSeed,
        elapsed_ms: u64,
        /// Sequential round trips: the fetch (device → supernode →
        /// replicas and back counts 2) and the evaluation rounds.
        round_trips: u32,
    },
    BundleFailed {
        account: PublicKey,
        reason: crate::client::BundleFailure,
    },
    /// A supernode refused this device's login: revoked, or its account
    /// moved to another root key. The node tries other supernodes (one
    /// supernode may lie); when they all refuse, the device is out.
    LoginRefused {
        supernode: Contact,
        reason: peerline_proto::LoginRefusal,
    },
    /// The account's newest device list its replicas hold, checked
    /// (`Ok(None)`: they hold none), or why the fetch failed.
    DeviceListFetched {
        account: PublicKey,
        result: Result<Option<Box<DeviceList>>, crate::client::BundleFailure>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetachReason {
    KeepaliveTimeout,
    NotAttached,
    DetachedBySupernode,
    AttachFailed,
    Busy,
    PeerDown,
    /// The supernode refused the login for good (`Event::LoginRefused`).
    LoginRefused,
}

/// Which roles a node may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolePolicy {
    /// Client that promotes itself when reachable and needed.
    Auto,
    /// Never a supernode.
    ClientOnly,
    /// Starts as a supernode and stays one.
    SupernodeOnly,
}

/// Counters the node keeps about itself (the simulator measures the
/// figures that matter from outside; these are for diagnosis).
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    pub datagrams_malformed: u64,
    pub datagrams_unsupported_version: u64,
    pub messages_unexpected: u64,
    pub signatures_rejected: u64,
    /// Relay requests this supernode refused (no room for another binding).
    pub relay_refused: u64,
    /// Membership changes seen by a supernode.
    pub members_joined: u64,
    pub members_left: u64,
    pub members_suspected: u64,
    /// Rumours of this supernode's failure it refuted (false suspicions).
    pub members_refuted: u64,
    /// Busy answers this supernode sent.
    pub busy_sent: u64,
    /// Logins, resumes and presence records refused because the device is
    /// revoked or its account's root was rotated away.
    pub revoked_refused: u64,
    /// Attachments this client made by resuming with a ticket, and by full login.
    pub resumed: u64,
    pub logged_in: u64,
    /// Envelopes a mailbox refused (full, or the sender over its quota).
    pub mail_refused: u64,
    /// Device lists and root rotations this supernode took (new and valid).
    pub device_lists_accepted: u64,
    pub root_rotations_accepted: u64,
    /// Account statements ignored unchecked: versions held already, and
    /// pushes beyond the check budget (or from strangers).
    pub account_pushes_stale: u64,
    pub account_pushes_unchecked: u64,
    /// Attached clients detached because a statement refuses them.
    pub revoked_detached: u64,
    /// Sealed punch candidates this device refused: the sender's
    /// certificate did not verify (or is revoked), or the seal did not open.
    pub punch_sealed_refused: u64,
    /// Offers this device answered without its addresses (the offerer is
    /// not a contact): the path is relayed.
    pub punch_addresses_withheld: u64,
}

/// What [`Node::restore_durable`] took back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurableRestored {
    /// Rows taken back, in every table.
    pub rows: usize,
    /// Votes signed by another device key (the directory's device was
    /// replaced by a login): another voter's, not restored.
    pub foreign_votes_skipped: usize,
}

/// What a device keeps on disk to re-attach cheaply after a restart: its
/// latest resumption ticket and the counter its resumes must exceed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Resumption {
    pub ticket: Option<Box<peerline_proto::Ticket>>,
    pub counter: u64,
}

/// Everything a role's handler may use while handling one input.
pub(crate) struct Io<'a> {
    pub now: Now,
    pub params: &'a Params,
    pub identity: &'a DeviceIdentity,
    pub mode: CryptoMode,
    pub rng: &'a mut Pcg32,
    pub transmits: &'a mut VecDeque<Transmit>,
    pub events: &'a mut VecDeque<Event>,
    pub stats: &'a mut NodeStats,
    pub host_cache: &'a mut HostCache,
    pub reachable: &'a mut bool,
    pub started_at: Instant,
    pub resumption: &'a mut Resumption,
    pub mail: &'a mut MailState,
    /// A supernode's votes and name records (kept on disk: survive restarts).
    pub names: &'a mut crate::registry::NameBook,
    /// Devices and roots this node refuses, the account statements it
    /// spreads, and its own account's (`revocation.rs`).
    pub accounts: &'a mut AccountTable,
    /// A supernode's key bundles and OPRF shares (kept on disk: survive
    /// restarts; `supernode/bundles.rs`).
    pub bundles: &'a mut crate::supernode::bundles::BundleBook,
    /// Whom this device tells its direct addresses (`punch.rs`).
    pub privacy: &'a crate::punch::AddressPrivacy,
    /// The names and bundles this device keeps alive (`client/own.rs`;
    /// kept on disk: survive restarts).
    pub own: &'a mut crate::client::OwnRecords,
}

impl Io<'_> {
    pub fn send(&mut self, to: Addr, message: &Message) {
        match encode(message) {
            Ok(bytes) => self.transmits.push_back(Transmit { to, bytes }),
            Err(error) => debug_assert!(false, "every message we build fits: {error}"),
        }
    }

    pub fn event(&mut self, event: Event) {
        self.events.push_back(event);
    }

    pub fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A random index in `[0, len)` (0 when `len` is 0).
    pub fn rng_index(&mut self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            self.rng.next_u32() as usize % len
        }
    }

    /// A uniformly random duration in `[0, max_ms)`.
    pub fn jitter_ms(&mut self, max_ms: u64) -> u64 {
        if max_ms == 0 {
            0
        } else {
            self.rng.next_u64() % max_ms
        }
    }
}

enum Role {
    Client(Box<ClientState>),
    Supernode(Box<SupernodeState>),
}

/// Configuration fixed for a node's life.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub params: Arc<Params>,
    pub identity: DeviceIdentity,
    pub policy: RolePolicy,
    /// The address other nodes reach this node at (a supernode advertises it).
    pub advertised_addr: Addr,
    /// Supernodes to try first (seed list); more come from the host cache.
    pub bootstrap: Vec<Contact>,
}

pub struct Node {
    params: Arc<Params>,
    identity: DeviceIdentity,
    policy: RolePolicy,
    advertised_addr: Addr,
    /// The address a gateway maps to this node's port, when the driver got
    /// one (`set_mapped_addr`): an extra hole-punching candidate.
    mapped_addr: Option<Addr>,
    role: Role,
    rng: Pcg32,
    host_cache: HostCache,
    reachable: bool,
    started_at: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: NodeStats,
    /// After `shutdown`: the node ignores input and wants no wake-ups until restarted.
    closed: bool,
    /// Survives restarts (a real node keeps it on disk).
    resumption: Resumption,
    mail: MailState,
    names: crate::registry::NameBook,
    bundles: crate::supernode::bundles::BundleBook,
    own: crate::client::OwnRecords,
    accounts: AccountTable,
    /// Path commands of the node itself (a role change resets the relay).
    path_commands: VecDeque<crate::PathCommand>,
    /// Contacts and the policy for revealing direct addresses.
    privacy: crate::punch::AddressPrivacy,
}

impl Node {
    /// A node that starts now. `rng_seed` makes it deterministic.
    pub fn new(config: NodeConfig, now: Now, rng_seed: u64) -> Node {
        let mut host_cache = HostCache::default();
        for contact in &config.bootstrap {
            host_cache.insert(*contact, config.params.host_cache_len_max);
        }
        let mode = config.identity.mode();
        let mut node = Node {
            params: config.params,
            identity: config.identity,
            policy: config.policy,
            advertised_addr: config.advertised_addr,
            mapped_addr: None,
            role: Role::Client(Box::default()),
            rng: Pcg32::seed_from_u64(rng_seed),
            host_cache,
            reachable: config.policy == RolePolicy::SupernodeOnly,
            started_at: now.instant,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: NodeStats::default(),
            closed: false,
            resumption: Resumption::default(),
            mail: MailState::default(),
            names: Default::default(),
            bundles: crate::supernode::bundles::BundleBook::new(mode),
            own: crate::client::OwnRecords::default(),
            accounts: AccountTable::new(now.instant),
            path_commands: VecDeque::new(),
            privacy: crate::punch::AddressPrivacy::default(),
        };
        if config.policy == RolePolicy::SupernodeOnly {
            node.become_supernode(now);
        } else {
            node.with_client(now, |client, io| client.start(io));
        }
        node
    }

    /// The process died: what lived only in memory (the role's state: a
    /// supernode's records, clients and mailboxes; a client's attachments)
    /// is gone now, as [`Node::restart`] would find it. A driver has no
    /// use for this (its process is gone); a simulator that keeps a crashed
    /// node for an hour does not hold its memory meanwhile (a 40% crash
    /// wave at 1M clients held ~1,000 supernodes' state while promoted
    /// clients built their own).
    pub fn crash(&mut self) {
        self.transmits.clear();
        self.events.clear();
        self.role = Role::Client(Box::default());
    }

    /// Restarts after a crash: volatile state is lost; identity and host
    /// cache (which a real node keeps on disk) survive.
    pub fn restart(&mut self, now: Now) {
        self.transmits.clear();
        self.events.clear();
        self.closed = false;
        self.started_at = now.instant;
        self.reachable = self.policy == RolePolicy::SupernodeOnly;
        self.role = Role::Client(Box::default());
        self.names.forget_pushes();
        self.bundles.forget_pushes();
        self.accounts.clear_rumors();
        if self.policy == RolePolicy::SupernodeOnly {
            self.become_supernode(now);
        } else {
            self.with_client(now, |client, io| client.start(io));
        }
    }

    /// Takes back the durable state a driver stored (rows as
    /// [`Node::take_durable_changes`] handed them out; removals are
    /// ignored) and starts recording changes. Call it once, before the
    /// first `poll_transmit`. A damaged row stops the restore with an
    /// error naming it; what was restored before it stays.
    pub fn restore_durable(
        &mut self,
        now: Now,
        rows: &[DurableChange],
    ) -> Result<DurableRestored, DurableError> {
        self.track_durable_changes();
        let me = self.identity.keypair.public();
        let mut restored = DurableRestored::default();
        for row in rows {
            let Some(bytes) = &row.value else { continue };
            let key = &row.key;
            match row.table {
                DurableTable::NameVotes => {
                    if !self.names.restore_vote(&me, key, bytes)? {
                        restored.foreign_votes_skipped += 1;
                        continue;
                    }
                }
                DurableTable::NameRecords => self.names.restore_record(key, bytes)?,
                DurableTable::KeyBundles => self.bundles.restore_bundle(key, bytes)?,
                DurableTable::DeviceLists => self.bundles.restore_device_list(key, bytes)?,
                DurableTable::OprfShares => self.bundles.restore_share(now.instant, key, bytes)?,
                DurableTable::Revocations => self.accounts.restore(key, bytes)?,
            }
            restored.rows += 1;
        }
        Ok(restored)
    }

    /// What changed in the durable state since the last call (votes cast
    /// and released, records, bundles and shares kept, guess budgets spent,
    /// revocations learnt and forgotten): one row per changed key. **A
    /// driver that persists commits these before it sends the datagrams
    /// the same steps queued** (the ordering rule, `durable.rs`): call it
    /// after every `handle`/`handle_timeout`/command, before draining
    /// `poll_transmit`.
    pub fn take_durable_changes(&mut self, now: Now) -> DurableChanges {
        self.track_durable_changes();
        let mut changes = DurableChanges::default();
        self.names.take_changes(&mut changes);
        self.bundles.take_changes(now.instant, &mut changes);
        self.accounts.take_changes(&mut changes);
        changes
    }

    fn track_durable_changes(&mut self) {
        self.names.track_changes();
        self.bundles.track_changes();
        self.accounts.track_changes();
    }

    /// Refuses this device from now on (logins, resumes, presence), on
    /// this node only. Network-wide revocation is the account's signed
    /// device list ([`Node::set_device_list`]).
    pub fn revoke_device(&mut self, device_key: PublicKey) {
        self.accounts.revoke_local(device_key);
        if let Role::Supernode(supernode) = &mut self.role {
            supernode.drop_device(&device_key);
        }
    }

    /// Forgets every name vote this node cast (its records stay). Only the
    /// simulator's equivocating attacker calls this: an honest node keeps
    /// its votes on disk for ever.
    pub fn forget_name_votes(&mut self) {
        self.names.forget_votes();
    }

    /// This device's account's signed device list (made with the root key,
    /// `account::sign_device_list`): sent to the supernodes the device is
    /// attached to now and again on every attach, so that the network
    /// refuses the devices it revokes (`revocation.rs`), and stored now at
    /// the account's bundle replicas, where every device of the account
    /// reads it back ([`Node::fetch_device_list`]). A newer version
    /// (or a list of another account, after a rotation) replaces the one
    /// held; an older one is ignored.
    pub fn set_device_list(&mut self, now: Now, list: DeviceList) {
        if self.accounts.own_list.as_ref().is_some_and(|held| {
            held.body.account_key == list.body.account_key && !list.supersedes(held.body.version)
        }) {
            return;
        }
        self.accounts.own_list = Some(Box::new(list.clone()));
        self.with_client(now, |client, io| {
            client.store_device_list(io, &list);
            client.push_to_attached(io, &Message::DeviceListPush { list })
        });
    }

    /// A certificate of a name this device's account owns (from the
    /// device's data directory): the device stores it again at the name's
    /// replicas every `client::own::OWN_REFRESH_S`, so the name outlives a
    /// crash wave that takes every one of its holders.
    pub fn keep_own_name(&mut self, now: Now, certificate: NameCertificate) {
        if self.closed {
            return;
        }
        self.own.keep_name(now.instant, certificate);
    }

    /// Fetches `account`'s newest device list from its replicas (the
    /// account's bundle replicas). Ends in [`Event::DeviceListFetched`].
    /// Clients only.
    pub fn fetch_device_list(&mut self, now: Now, account: PublicKey) {
        if self.closed || self.is_supernode() {
            let result = Err(crate::client::BundleFailure::NotAClient);
            return self
                .events
                .push_back(Event::DeviceListFetched { account, result });
        }
        self.with_client(now, |client, io| client.fetch_device_list(io, account));
    }

    /// The account's device list this supernode replicates, if any.
    pub fn held_device_list(&self, account: &PublicKey) -> Option<&DeviceList> {
        self.bundles.device_list(account)
    }

    /// The rotation of this device's account's root (signed by both roots,
    /// `account::sign_root_rotation`), published like the device list:
    /// supernodes then refuse certificates of the old root.
    pub fn set_root_rotation(&mut self, now: Now, rotation: RootRotation) {
        self.accounts.own_rotation = Some(Box::new(rotation));
        self.with_client(now, |client, io| {
            client.push_to_attached(io, &Message::RootRotationPush { rotation })
        });
    }

    /// Whether this node refuses `device` of `account` (revoked, or the
    /// account's root rotated away).
    pub fn refuses_device(&self, device: &PublicKey, account: &PublicKey) -> bool {
        self.accounts.is_refused(device, account)
    }

    /// The highest device-list version this node holds for `account`.
    pub fn device_list_version(&self, account: &PublicKey) -> Option<u64> {
        self.accounts.list_version(account)
    }

    /// Accounts with revocations or a rotation this node holds.
    pub fn revocation_accounts(&self) -> usize {
        self.accounts.len()
    }

    /// A supernode learnt of after start (the daemon's LAN discovery): it
    /// goes into the host cache (so a dial to it is pinned to its key, like
    /// a seed's) and is used at once when the node has nothing better — a
    /// client short of attachments tries to attach (within its back-off),
    /// a supernode that knows no other member joins through it. The node's
    /// own contact and input after `shutdown` are ignored.
    pub fn add_bootstrap(&mut self, now: Now, contact: Contact) {
        if self.closed || contact.key == self.identity.keypair.public() {
            return;
        }
        self.host_cache
            .insert(contact, self.params.host_cache_len_max);
        if self.is_supernode() {
            self.with_supernode(now, |supernode, io| supernode.join_if_alone(io, contact));
        } else {
            self.with_client(now, |client, io| client.fill_attachments(io));
        }
    }

    /// The address a gateway maps to this node's port (UPnP-IGD), or `None`
    /// when the mapping is gone: offered as a hole-punching candidate
    /// before the reflexive and advertised addresses.
    pub fn set_mapped_addr(&mut self, mapped: Option<Addr>) {
        self.mapped_addr = mapped;
        if let Role::Client(client) = &mut self.role {
            client.punch.mapped = mapped;
        }
    }

    /// The device's current resumption ticket, if it holds one.
    pub fn ticket(&self) -> Option<&peerline_proto::Ticket> {
        self.resumption.ticket.as_deref()
    }

    pub fn is_supernode(&self) -> bool {
        matches!(self.role, Role::Supernode(_))
    }

    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn host_cache(&self) -> &HostCache {
        &self.host_cache
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable
    }

    /// This node's supernode contact, when it is one.
    pub fn supernode_contact(&self) -> Option<Contact> {
        match &self.role {
            Role::Supernode(s) => Some(s.contact()),
            Role::Client(_) => None,
        }
    }

    /// Supernodes this client is attached to (empty for a supernode).
    pub fn attached_supernodes(&self) -> Vec<Contact> {
        match &self.role {
            Role::Client(c) => c.attached(),
            Role::Supernode(_) => Vec::new(),
        }
    }

    /// Clients attached to this supernode, by its own count.
    pub fn attached_clients(&self) -> usize {
        match &self.role {
            Role::Supernode(s) => s.client_count(),
            Role::Client(_) => 0,
        }
    }

    /// Records this supernode holds as a directory replica.
    pub fn stored_records(&self) -> usize {
        match &self.role {
            Role::Supernode(s) => s.record_count(),
            Role::Client(_) => 0,
        }
    }

    /// Up to `len_max` supernodes of this supernode's view believed
    /// alive, spread over the keyspace (empty for a client). A driver saves
    /// them with the host cache: a supernode's host cache holds only the
    /// seeds it started from, which may be gone by its next start.
    pub fn members_sample(&self, len_max: usize) -> Vec<Contact> {
        match &self.role {
            Role::Supernode(s) => s.alive_members_sample(len_max),
            Role::Client(_) => Vec::new(),
        }
    }

    /// Members in this supernode's view.
    pub fn membership_len(&self) -> usize {
        match &self.role {
            Role::Supernode(s) => s.membership_len(),
            Role::Client(_) => 0,
        }
    }

    /// One datagram from the network. Bad input is counted and dropped; it
    /// never panics the node.
    pub fn handle(&mut self, now: Now, from: Addr, bytes: &[u8]) {
        if self.closed {
            return;
        }
        match decode(bytes) {
            Ok(Frame::Message(message)) => {
                self.handle_message(now, from, message);
                // The last client of a draining supernode may have gone.
                self.finish_leave_if_drained(now);
            }
            Ok(Frame::Versions(_)) => {
                // We speak only version 1 and so does every version range
                // that includes it: nothing to renegotiate yet.
            }
            Err(DecodeError::UnsupportedVersion { .. }) => {
                self.stats.datagrams_unsupported_version += 1;
                self.transmits.push_back(Transmit {
                    to: from,
                    bytes: encode_version_info(),
                });
            }
            Err(_) => self.stats.datagrams_malformed += 1,
        }
    }

    fn handle_message(&mut self, now: Now, from: Addr, message: Message) {
        if let Role::Client(client) = &mut self.role {
            client.punch.local = Some(self.advertised_addr);
            client.punch.mapped = self.mapped_addr;
        }
        let mut promote = false;
        let mut demote = false;
        if self.is_supernode() {
            self.with_supernode(now, |supernode, io| supernode.handle(io, from, message));
            demote = self.supernode_wants_demotion();
        } else {
            self.with_client(now, |client, io| client.handle(io, from, message));
            promote = self.client_wants_promotion();
        }
        self.change_role(now, promote, demote);
    }

    pub fn handle_timeout(&mut self, now: Now) {
        if self.closed {
            return;
        }
        let mut promote = false;
        let mut demote = false;
        if self.is_supernode() {
            self.with_supernode(now, |supernode, io| supernode.handle_timeout(io));
            // A draining supernode finishes its leave instead.
            demote = self.supernode_wants_demotion() && !self.is_leaving();
            self.finish_leave_if_drained(now);
        } else {
            self.with_client(now, |client, io| client.handle_timeout(io));
            promote = self.client_wants_promotion();
        }
        self.change_role(now, promote, demote);
    }

    /// Registers a name with a claim the account's root key signed
    /// (`registry::make_claim`): a client through an attached supernode
    /// (retrying while there is no decision), a supernode coordinating the
    /// vote itself (one try).
    pub fn register_name(&mut self, now: Now, claim: NameClaim) {
        let name_key = match crate::registry::check_claim(self.identity.mode(), &claim, 0) {
            Ok(key) => key,
            Err(reason) => {
                return self.events.push_back(Event::NameFailed {
                    name_key: NodeId::default(),
                    reason: crate::client::NameFailure::Refused(reason),
                })
            }
        };
        match self.is_supernode() {
            false => self.with_client(now, |client, io| client.register_name(io, claim, name_key)),
            true => self.with_supernode(now, |supernode, io| supernode.register_local(io, claim)),
        }
    }

    /// Looks up who owns a name (through an attached supernode, or a
    /// supernode asking the name's replicas itself).
    pub fn lookup_name(&mut self, now: Now, name_key: NodeId) {
        match self.is_supernode() {
            false => self.with_client(now, |client, io| client.lookup_name(io, name_key)),
            true => self.with_supernode(now, |supernode, io| {
                supernode.lookup_name_local(io, name_key)
            }),
        }
    }

    /// After account creation or a password change (made with the root
    /// key: `bundle::seal_bundle`, `bundle::deal` with a higher epoch):
    /// stores the bundle at its replicas and deals each share straight to
    /// the holders of its index. Ends in [`Event::AccountSecretsPublished`]
    /// or [`Event::BundleFailed`]. Clients only.
    pub fn publish_account_secrets(
        &mut self,
        now: Now,
        bundle: peerline_proto::KeyBundle,
        deals: Vec<peerline_proto::ShareDeal>,
    ) {
        let account = bundle.body.account_key;
        if self.closed || self.is_supernode() {
            return self.events.push_back(Event::BundleFailed {
                account,
                reason: crate::client::BundleFailure::NotAClient,
            });
        }
        self.with_client(now, |client, io| {
            client.publish_account_secrets(io, bundle, deals)
        });
    }

    /// Password login on a device that holds nothing of the account but
    /// its key (from the name record): fetches the bundle, blinds the
    /// password, asks the holders of each share index, combines `t`
    /// answers, opens the bundle, then re-deals the shares under a higher
    /// epoch. Ends in [`Event::BundleOpened`] or [`Event::BundleFailed`].
    /// `entropy`: 32 fresh bytes from the operating system's generator (the
    /// blinding factor and the re-dealt polynomial come from them). Opening
    /// runs Argon2id within the call that completes the login — ~150 ms on
    /// `KDF_PARAMS_PRODUCTION`. Clients only.
    pub fn open_bundle(&mut self, now: Now, account: PublicKey, password: &str, entropy: [u8; 32]) {
        if self.closed || self.is_supernode() {
            return self.events.push_back(Event::BundleFailed {
                account,
                reason: crate::client::BundleFailure::NotAClient,
            });
        }
        self.with_client(now, |client, io| {
            client.open_bundle(io, account, password, entropy)
        });
    }

    /// The name record this node holds for `name_key`, if any
    /// (diagnostics and tests).
    pub fn held_name(&self, name_key: &NodeId) -> Option<&NameCertificate> {
        self.names.record(name_key)
    }

    /// The account's bundle this supernode replicates, if any.
    pub fn held_bundle(&self, account: &PublicKey) -> Option<&peerline_proto::KeyBundle> {
        self.bundles.bundle(account)
    }

    /// The index of the account's OPRF share this node holds, if any.
    pub fn held_share_index(&self, account: &PublicKey) -> Option<u8> {
        self.bundles.share_index(account)
    }

    /// Replaces the bundle this node replicates with `bundle`, unchecked:
    /// the simulation of a corrupt replica (tests only; an honest node
    /// stores only bundles that verify).
    pub fn replace_bundle_unchecked(&mut self, bundle: peerline_proto::KeyBundle) {
        self.bundles.replace_bundle_unchecked(bundle);
    }

    /// Looks up an account's presence (clients only; a supernode answers
    /// with an immediate empty result).
    pub fn lookup(&mut self, now: Now, account: PublicKey) {
        match self.is_supernode() {
            false => self.with_client(now, |client, io| client.lookup(io, account)),
            true => self.events.push_back(Event::LookupDone {
                account,
                record: None,
                hops: 0,
                elapsed_ms: 0,
            }),
        }
    }

    /// Queues a message for another device: it is sent through a supernode
    /// now (or once attached) and re-sent until that device acknowledges
    /// it. Returns its sequence number in the conversation.
    pub fn send_message(
        &mut self,
        now: Now,
        to_device: PublicKey,
        to_account: PublicKey,
        payload: &[u8],
    ) -> Result<u64, SendError> {
        if self.closed || self.is_supernode() {
            return Err(SendError::NotAClient);
        }
        let mut outcome = Err(SendError::NotAClient);
        self.with_client(now, |client, io| {
            outcome = client.send_message(io, to_device, to_account, payload)
        });
        outcome
    }

    /// The accounts whose devices may learn this device's direct
    /// addresses (replacing the previous set): an offer from any other
    /// device is answered without them and gets a relayed path
    /// ([`crate::punch::RevealAddresses::ContactsOnly`], the default).
    /// Keeps the first [`crate::punch::CONTACTS_MAX`]; returns how many it
    /// kept. Survives restarts and role changes.
    pub fn set_contacts(&mut self, accounts: impl IntoIterator<Item = PublicKey>) -> usize {
        self.privacy.set_contacts(accounts)
    }

    /// Whom this device reveals its direct addresses to when answering an
    /// offer (contacts only unless told otherwise).
    pub fn set_reveal_addresses(&mut self, policy: crate::punch::RevealAddresses) {
        self.privacy.policy = policy;
    }

    /// Starts a direct connection (hole punching) to the device whose
    /// presence record this is (clients only; the outcome comes as
    /// [`Event::PathUp`] or [`Event::PathFailed`]).
    pub fn connect_peer(&mut self, now: Now, record: &PresenceRecord) {
        let advertised = self.advertised_addr;
        let mapped = self.mapped_addr;
        self.with_client(now, |client, io| {
            client.punch.local = Some(advertised);
            client.punch.mapped = mapped;
            let attached = client.attached();
            client.punch.start(io, record, &attached);
        });
    }

    /// The driver's answer to [`crate::PathCommand::Stun`].
    pub fn reflexive_found(&mut self, now: Now, server: Addr, reflexive: Option<Addr>) {
        self.with_client(now, |client, io| {
            client.punch.reflexive_found(io, server, reflexive)
        });
    }

    /// The driver's answer to [`crate::PathCommand::OpenRelayedPath`]: the
    /// virtual address of the relayed path, or `None` when it could not
    /// open one.
    pub fn relayed_path_opened(&mut self, now: Now, session: u64, path: Option<Addr>) {
        self.with_client(now, |client, io| {
            client.punch.relayed_path_opened(io, session, path)
        });
    }

    /// What the driver must do for hole punching and relaying next.
    pub fn poll_path_command(&mut self) -> Option<crate::PathCommand> {
        if let Some(command) = self.path_commands.pop_front() {
            return Some(command);
        }
        match &mut self.role {
            Role::Client(client) => client.punch.poll_command(),
            Role::Supernode(supernode) => supernode.relays.poll_command(),
        }
    }

    /// The device key a dial to `addr` must meet, when `addr` is a punching
    /// peer's candidate, or the supernode key, when it is a share holder a
    /// bundle fetch named (a share deal or a blinded password goes there).
    pub fn path_peer_key(&self, addr: &Addr) -> Option<PublicKey> {
        match &self.role {
            Role::Client(client) => client
                .punch
                .peer_at(addr)
                .or_else(|| client.bundle_holder_key(addr)),
            Role::Supernode(_) => None,
        }
    }

    /// Relay bindings a supernode holds (halves included); 0 on a client.
    pub fn relay_bindings(&self) -> usize {
        match &self.role {
            Role::Supernode(supernode) => supernode.relays.len(),
            Role::Client(_) => 0,
        }
    }

    /// Connections to peers: running, up (and how) or failed.
    pub fn paths(&self) -> Vec<crate::PathReport> {
        match &self.role {
            Role::Client(client) => client.punch.reports(),
            Role::Supernode(_) => Vec::new(),
        }
    }

    /// Messages waiting for their recipient's acknowledgement.
    pub fn outbox_len(&self) -> usize {
        self.mail.outbox.len()
    }

    /// Envelopes this supernode holds in mailboxes.
    pub fn mailbox_len(&self) -> usize {
        match &self.role {
            Role::Supernode(s) => s.mailbox_len(),
            Role::Client(_) => 0,
        }
    }

    /// Whether this supernode holds `account`'s presence record (diagnostics).
    pub fn holds_record(&self, account: &PublicKey) -> bool {
        match &self.role {
            Role::Supernode(s) => s.holds_record(account),
            Role::Client(_) => false,
        }
    }

    /// The recipient device of every envelope this supernode holds (diagnostics).
    pub fn mailbox_recipients(&self) -> Vec<(PublicKey, PublicKey, u64)> {
        match &self.role {
            Role::Supernode(s) => s.mailbox_recipients(),
            Role::Client(_) => Vec::new(),
        }
    }

    /// Leaves gracefully without dropping anyone below their attachment
    /// target: a supernode first drains (its clients are told
    /// [`Message::Leaving`] and attach elsewhere while it serves them, for
    /// `drain_max_ms` at most), then shuts down as [`Node::shutdown`]
    /// does; a client shuts down at once. [`Event::Left`] says when it is
    /// over; until then keep feeding the node input and wake-ups.
    pub fn leave(&mut self, now: Now) {
        if self.closed {
            return;
        }
        if self.is_supernode() {
            self.with_supernode(now, |supernode, io| supernode.drain(io));
            self.finish_leave_if_drained(now);
        } else {
            self.shutdown(now);
            self.events.push_back(Event::Left);
        }
    }

    /// Whether the node has shut down (and ignores input until restarted).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn is_leaving(&self) -> bool {
        matches!(&self.role, Role::Supernode(s) if s.is_leaving())
    }

    fn finish_leave_if_drained(&mut self, now: Now) {
        if matches!(&self.role, Role::Supernode(s) if s.drained(now.instant)) {
            self.shutdown(now);
            self.events.push_back(Event::Left);
        }
    }

    /// Leaves gracefully: detaches clients or supernodes and tells peers.
    /// The node then stays silent until [`Node::restart`].
    pub fn shutdown(&mut self, now: Now) {
        if self.closed {
            return;
        }
        if self.is_supernode() {
            self.with_supernode(now, |supernode, io| supernode.shutdown(io));
        } else {
            self.with_client(now, |client, io| client.shutdown(io));
        }
        self.closed = true;
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Takes every pending transmit at once (cheaper for the simulator).
    pub fn drain_transmits(&mut self) -> std::collections::vec_deque::Drain<'_, Transmit> {
        self.transmits.drain(..)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn drain_events(&mut self) -> std::collections::vec_deque::Drain<'_, Event> {
        self.events.drain(..)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let deadline = match &self.role {
            // The outbox can only be worked through a supernode.
            Role::Client(c) if c.is_attached() => c
                .next_deadline()
                .min(self.mail.next_deadline())
                .min(self.own.next_deadline()),
            Role::Client(c) => c.next_deadline().min(self.own.next_deadline()),
            Role::Supernode(s) => s.next_deadline().min(self.accounts.next_deadline()),
        };
        (deadline != Instant::NEVER).then_some(deadline)
    }

    fn client_wants_promotion(&self) -> bool {
        match &self.role {
            Role::Client(c) => self.policy == RolePolicy::Auto && c.wants_promotion(),
            Role::Supernode(_) => false,
        }
    }

    fn supernode_wants_demotion(&self) -> bool {
        match &self.role {
            Role::Supernode(s) => self.policy == RolePolicy::Auto && s.wants_demotion(),
            Role::Client(_) => false,
        }
    }

    fn change_role(&mut self, now: Now, promote: bool, demote: bool) {
        if promote || demote {
            self.accounts.clear_rumors();
            self.path_commands.clear();
            self.path_commands.push_back(crate::PathCommand::RelayReset);
        }
        if promote {
            self.with_client(now, |client, io| client.shutdown(io));
            self.become_supernode(now);
            self.events.push_back(Event::Promoted);
        } else if demote {
            self.with_supernode(now, |supernode, io| supernode.shutdown(io));
            self.role = Role::Client(Box::default());
            self.with_client(now, |client, io| client.start(io));
            self.events.push_back(Event::Demoted);
        }
    }

    fn become_supernode(&mut self, now: Now) {
        let seeds: Vec<Contact> = match &self.role {
            Role::Client(c) => c.attached(),
            Role::Supernode(_) => Vec::new(),
        };
        let seeds = if seeds.is_empty() {
            self.host_cache
                .entries()
                .iter()
                .map(|e| e.contact)
                .collect()
        } else {
            seeds
        };
        let mut secret = [0u8; 32];
        self.rng.fill_bytes(&mut secret);
        let state = SupernodeState::new(
            &self.params,
            &self.identity,
            self.advertised_addr,
            now,
            secret,
            self.policy == RolePolicy::Auto,
        );
        self.role = Role::Supernode(Box::new(state));
        self.with_supernode(now, |supernode, io| supernode.join(io, &seeds));
    }

    /// The role and everything its handlers may use, borrowed apart.
    fn split(&mut self, now: Now) -> (&mut Role, Io<'_>) {
        let io = Io {
            now,
            params: &self.params,
            identity: &self.identity,
            mode: self.identity.mode(),
            rng: &mut self.rng,
            transmits: &mut self.transmits,
            events: &mut self.events,
            stats: &mut self.stats,
            host_cache: &mut self.host_cache,
            reachable: &mut self.reachable,
            started_at: self.started_at,
            resumption: &mut self.resumption,
            mail: &mut self.mail,
            names: &mut self.names,
            accounts: &mut self.accounts,
            bundles: &mut self.bundles,
            privacy: &self.privacy,
            own: &mut self.own,
        };
        (&mut self.role, io)
    }

    fn with_client(&mut self, now: Now, f: impl FnOnce(&mut ClientState, &mut Io)) {
        if let (Role::Client(client), mut io) = self.split(now) {
            f(client, &mut io);
        }
    }

    fn with_supernode(&mut self, now: Now, f: impl FnOnce(&mut SupernodeState, &mut Io)) {
        if let (Role::Supernode(supernode), mut io) = self.split(now) {
            f(supernode, &mut io);
        }
    }
}
