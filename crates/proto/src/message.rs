//! Every message of protocol version 1.
//!
//! Client ↔ supernode: attach (= login), keepalive, presence, lookups,
//! reachability probes. Supernode ↔ supernode: membership gossip, directory
//! store and find. Both: account statements (device lists, root rotations)
//! spread network-wide. Every collection is bounded; see [`crate::MESSAGE_LEN_MAX`].

use crate::account::{DeviceList, RootRotation};
use crate::bounded::BoundedVec;
use crate::bundle::{BlindedElement, Evaluation, KeyBundle, ShareDeal};
use crate::names::{NameCertificate, NameClaim, NameOutcome, NameVote};
use crate::types::{
    Addr, Contact, DeviceCert, Envelope, EnvelopeId, MemberUpdate, NodeId, PresenceRecord,
    PublicKey, Signature, Ticket,
};
use serde::{Deserialize, Serialize};

/// Most alternates or peers a supernode names in one answer.
pub const CONTACTS_PER_MESSAGE_MAX: usize = 16;
/// Most membership updates piggybacked on one gossip message.
pub const GOSSIP_UPDATES_MAX: usize = 48;
/// The `GossipPing` sequence of a one-way push (urgent failure news): no
/// probe uses it, and nobody acknowledges it.
pub const URGENT_PUSH_SEQUENCE: u32 = 0;
/// Most members in one page of a membership sync.
pub const SYNC_PAGE_MEMBERS_MAX: usize = 128;
/// Most envelopes a mailbox hands out at once (the replay window).
pub const MAIL_BATCH_MAX: usize = 4;
/// Most envelope IDs in one delete.
pub const MAIL_IDS_MAX: usize = 16;
/// Most address candidates a device offers for hole punching.
pub const PUNCH_CANDIDATES_MAX: usize = 8;
/// Most bytes of a [`Message::SealedCandidates`]' sealed candidates: the
/// core seals a fixed-size plaintext (a count byte and room for
/// [`PUNCH_CANDIDATES_MAX`] addresses of 18 bytes) and a 16-byte tag, 161
/// bytes; the bound leaves room for a later format.
pub const SEALED_CANDIDATES_LEN_MAX: usize = 256;
/// Most share holders named in one answer: 16 share indices (the most a
/// bundle may have) × 3 holders each.
pub const SHARE_HOLDERS_PER_MESSAGE_MAX: usize = 48;

/// A supernode that should hold share `index` of an account's OPRF key
/// (one of the closest to `share_key(account, index)`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ShareHolder {
    pub index: u8,
    pub contact: Contact,
}

/// Why a supernode turned a request away.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub enum BusyReason {
    /// All attachment slots are taken.
    AttachmentsFull,
    /// The node is leaving the supernode role (demoting, or shutting down:
    /// [`Message::Leaving`]).
    Demoting,
    /// Too many lookups in flight or per second.
    LookupsFull,
    /// The login budget (handshakes per second) is spent for now.
    HandshakesFull,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Message {
    // ---- client → supernode: login ----
    /// First step of attaching: "I am this certified device".
    AttachHello {
        cert: DeviceCert,
    },
    /// The supernode's stateless challenge, bound to the client's address.
    AttachChallenge {
        supernode: Contact,
        challenge: [u8; 32],
    },
    /// The device signs the challenge and the supernode's ID: possession of
    /// the device key is the whole login.
    AttachProof {
        cert: DeviceCert,
        challenge: [u8; 32],
        signature: Signature,
    },
    AttachAccepted {
        keepalive_interval_s: u16,
        load_pct: u8,
        /// Other supernodes, for the client's host cache.
        peers: BoundedVec<Contact, CONTACTS_PER_MESSAGE_MAX>,
        /// A resumption ticket for the next re-attach (anywhere).
        ticket: Option<Ticket>,
    },
    /// A refusal that says when to come back and where to go instead.
    Busy {
        reason: BusyReason,
        retry_after_ms: u32,
        alternates: BoundedVec<Contact, CONTACTS_PER_MESSAGE_MAX>,
    },
    /// The attachment ends (either side may send it).
    Detach {
        alternates: BoundedVec<Contact, CONTACTS_PER_MESSAGE_MAX>,
    },

    // ---- client ↔ supernode: session ----
    Ping {
        sequence: u32,
    },
    Pong {
        sequence: u32,
        /// This supernode's load, percent of its attachment capacity.
        load_pct: u8,
        /// Average load of the supernodes it knows (drives promotion).
        network_load_pct: u8,
        /// A fresh resumption ticket when the last one is getting old.
        ticket: Option<Ticket>,
    },
    /// Answer to a client message from a client the supernode does not hold.
    NotAttached,
    /// One of the supernodes named in the client's presence record was
    /// declared dead by membership gossip: check it now instead of waiting for
    /// the next keepalive.
    PeerDown {
        supernode: PublicKey,
    },
    /// Store my presence in the directory.
    Publish {
        record: PresenceRecord,
    },
    LookupRequest {
        query_id: u32,
        account: PublicKey,
    },
    LookupResponse {
        query_id: u32,
        record: Option<PresenceRecord>,
        hops: u8,
    },
    /// "Have someone else try to reach me at the address you see."
    ProbeRequest {
        token: u64,
    },
    /// The probe arrived: the sender is reachable from strangers.
    Probe {
        token: u64,
    },

    // ---- supernode ↔ supernode ----
    /// Send a probe to `target` from here (a node it never contacted).
    ProbeForward {
        target: Addr,
        token: u64,
    },
    /// A probe's ping (answered by a `GossipAck` with its `sequence`), or
    /// with `sequence` = [`URGENT_PUSH_SEQUENCE`] a one-way push of
    /// failure news, not answered.
    GossipPing {
        sequence: u32,
        sender: MemberUpdate,
        updates: BoundedVec<MemberUpdate, GOSSIP_UPDATES_MAX>,
    },
    GossipAck {
        sequence: u32,
        sender: MemberUpdate,
        updates: BoundedVec<MemberUpdate, GOSSIP_UPDATES_MAX>,
    },
    /// A joining supernode asks for the membership table page by page.
    SyncRequest {
        cursor: u32,
        sender: MemberUpdate,
    },
    SyncResponse {
        members: BoundedVec<MemberUpdate, SYNC_PAGE_MEMBERS_MAX>,
        next_cursor: Option<u32>,
    },
    /// Keep this record (the receiver is, or was told it is, a replica).
    Store {
        record: PresenceRecord,
    },
    FindValue {
        query_id: u32,
        key: NodeId,
    },
    FindValueResponse {
        query_id: u32,
        record: Option<PresenceRecord>,
        closer: BoundedVec<Contact, CONTACTS_PER_MESSAGE_MAX>,
    },

    // ---- client → supernode: cheap re-attach ----
    /// Re-attach in one round trip with a ticket from any supernode. The
    /// device signs this supernode's key, the ticket and a counter that
    /// grows with every resume, proving possession of the device key.
    AttachResume {
        ticket: Ticket,
        counter: u64,
        signature: Signature,
    },

    // ---- store-and-forward messaging ----
    /// Client → its supernode: store this envelope in the recipient's mailbox.
    MailPut {
        envelope: Envelope,
    },
    /// Supernode → mailbox replica. `push`: this replica forwards it to the
    /// recipient's supernodes if the recipient is online.
    MailStore {
        envelope: Envelope,
        push: bool,
    },
    /// Mailbox replica → the recipient's supernode, or supernode → client.
    MailDeliver {
        envelope: Envelope,
    },
    /// Supernode → mailbox replica: the oldest envelopes for this device,
    /// please. A replica holding nothing for the device does not answer (a
    /// fetch goes out on every attachment, to several replicas, and nearly
    /// all of them hold nothing).
    MailFetch {
        account: PublicKey,
        device: PublicKey,
    },
    /// Mailbox replica → supernode: a window of envelopes for `device`.
    MailBatch {
        device: PublicKey,
        envelopes: BoundedVec<Envelope, MAIL_BATCH_MAX>,
        more: bool,
    },
    /// Client → its supernode: I have these (committed); they may go.
    MailDone {
        ids: BoundedVec<EnvelopeId, MAIL_IDS_MAX>,
    },
    /// Supernode → mailbox replica: delete these envelopes of `device`.
    MailDelete {
        device: PublicKey,
        ids: BoundedVec<EnvelopeId, MAIL_IDS_MAX>,
    },

    // ---- hole punching (device ↔ its supernode ↔ the peer's supernode ↔ the peer) ----
    /// The addresses a device can be reached at (its reflexive address from
    /// STUN against its supernode, then its local ones), for `to_device`.
    /// The sender's supernode checks `from_device` is the attached client
    /// that sent it and forwards it to `to_supernode` (one the recipient's
    /// presence record names) unless `to_device` is attached to itself;
    /// that supernode hands it to `to_device`. `reply_supernode` is where
    /// the answer goes (the sender's supernode). `answer`: this answers an
    /// offer with the same `session`.
    PunchCandidates {
        session: u64,
        from_device: PublicKey,
        to_device: PublicKey,
        to_supernode: Addr,
        reply_supernode: Addr,
        answer: bool,
        candidates: BoundedVec<Addr, PUNCH_CANDIDATES_MAX>,
    },
    /// Peer → peer over a punched path: does it carry traffic both ways?
    PathPing {
        session: u64,
    },
    PathPong {
        session: u64,
    },

    // ---- relay (device ↔ the relaying supernode) ----
    /// Device → the relay (the punch initiator's supernode) once hole
    /// punching found no direct path: "bind me to `to_device` for
    /// `session`". Both peers send it, each over its own QUIC connection to
    /// the relay, so the relay learns the address each one's NAT shows it;
    /// `signature` (by `from_device`, over [`RelayRequestBody`]) proves
    /// the sender holds the device key. Re-sent to refresh the binding.
    RelayRequest {
        body: RelayRequestBody,
        signature: Signature,
    },
    /// Relay → device: frames on `channel` from the address this came to
    /// reach the peer; the binding lapses after `lifetime_s` unrefreshed.
    RelayGranted {
        session: u64,
        channel: u16,
        lifetime_s: u16,
    },
    /// Relay → device: no binding (all relay slots taken, or this device
    /// holds its share); try again after `retry_after_ms`.
    RelayRefused {
        session: u64,
        retry_after_ms: u32,
    },

    // ---- names (issue #5): registration by quorum, lookup ----
    /// Client → its supernode: register this claim (the supernode coordinates the vote).
    NameRegister {
        claim: NameClaim,
    },
    /// Coordinator → a supernode responsible for the name: your vote, please.
    NameVoteRequest {
        query_id: u32,
        claim: NameClaim,
    },
    /// The voter's one vote for the name (for this claim or an earlier
    /// one), and the name's certificate when it holds one.
    NameVoteReply {
        query_id: u32,
        vote: Option<NameVote>,
        certificate: Option<Box<NameCertificate>>,
    },
    /// Keep this name record (the receiver is one of its replicas or voters).
    NameStore {
        certificate: Box<NameCertificate>,
    },
    /// Supernode → client: how its registration ended.
    NameResult {
        name_key: NodeId,
        outcome: NameOutcome,
    },
    /// Client → its supernode: who owns the name with this key?
    NameLookup {
        query_id: u32,
        name_key: NodeId,
    },
    /// Supernode → supernode: your record for this name key.
    NameFind {
        query_id: u32,
        name_key: NodeId,
    },
    NameFindResponse {
        query_id: u32,
        certificate: Option<Box<NameCertificate>>,
    },
    /// Supernode → client: the answer to a `NameLookup` (the winning
    /// certificate among the replicas' answers).
    NameLookupResponse {
        query_id: u32,
        name_key: NodeId,
        certificate: Option<Box<NameCertificate>>,
    },

    // ---- account statements, spread network-wide ----
    /// A device → its supernodes, and supernode → supernode (epidemic):
    /// the account's signed device list. A supernode that takes a newer
    /// version passes it on and refuses the devices it revokes.
    DeviceListPush {
        list: DeviceList,
    },
    /// The same for a root rotation: certificates signed by the old root
    /// are refused from then on.
    RootRotationPush {
        rotation: RootRotation,
    },

    // ---- the password-sealed key bundle (issue #5, part 3) ----
    /// Device → its supernode, which passes it to the replicas of
    /// `bundle_key(account)`; each keeps the newer valid bundle.
    BundleStore {
        bundle: Box<KeyBundle>,
    },
    /// Device → its supernode: the account's bundle, and the holders of
    /// share indices `1..=indices` (or the bundle's count, if higher).
    /// Supernode → replica: your bundle (`indices` 0).
    BundleFetch {
        query_id: u32,
        account: PublicKey,
        indices: u8,
    },
    /// Replica → supernode: its bundle (no holders). Supernode → device:
    /// the newest valid bundle the replicas hold and the holders of each
    /// share index, closest first.
    BundleFetchResponse {
        query_id: u32,
        bundle: Option<Box<KeyBundle>>,
        holders: BoundedVec<ShareHolder, SHARE_HOLDERS_PER_MESSAGE_MAX>,
    },
    /// Device → a share holder, directly; holder → the other holders of
    /// the same index (re-replication). Carries the secret share: never
    /// sent through a third node (see `ShareDeal`).
    ShareDealPush {
        deal: Box<ShareDeal>,
    },
    /// Device → a share holder, directly: evaluate the OPRF on a blinded
    /// password for this account (spends one guess of its budget).
    OprfEvaluate {
        query_id: u32,
        account: PublicKey,
        blinded: BlindedElement,
    },
    /// Holder → device: its share's index, deal and evaluation.
    OprfAnswer {
        query_id: u32,
        index: u8,
        bundle_version: u64,
        epoch: u64,
        evaluation: Evaluation,
    },
    /// Holder → device: no answer. `retry_after_ms` 0: it holds no share
    /// of the account (or the element was invalid); otherwise the
    /// account's guess budget is spent until then.
    OprfRefused {
        query_id: u32,
        retry_after_ms: u32,
    },

    // ---- the account's device list, kept with its bundle (issue #5) ----
    /// Device → its supernode, which passes it to the replicas of
    /// `bundle_key(account)`; each keeps the highest valid version. Every
    /// device of the account (and nobody else's) can then read which
    /// devices are current and which are revoked.
    DeviceListStore {
        list: Box<DeviceList>,
    },
    /// Device → its supernode: the account's newest device list.
    /// Supernode → replica: yours.
    DeviceListFetch {
        query_id: u32,
        account: PublicKey,
    },
    /// Replica → supernode, supernode → device: the newest valid list
    /// held or found (`None`: none).
    DeviceListFetchResponse {
        query_id: u32,
        list: Option<Box<DeviceList>>,
    },

    /// Supernode → device: who owns a name — its certificate, and the root
    /// rotations the owning account made since (oldest first, each one's
    /// old account the previous one's new), so a name follows its
    /// account's rotations. Replaces `NameLookupResponse` towards devices.
    NameLookupAnswer {
        query_id: u32,
        name_key: NodeId,
        certificate: Option<Box<NameCertificate>>,
        moved: BoundedVec<RootRotation, NAME_ROTATIONS_MAX>,
    },

    /// Supernode → device, instead of accepting its login: the account
    /// revoked this device, or moved to another root key. Sent only after
    /// the device proved its key (a stranger cannot aim it anywhere).
    LoginRefused {
        reason: LoginRefusal,
    },

    // ---- hole punching, sealed (appended: variant order is wire format) ----
    /// [`Message::PunchCandidates`] with the candidates sealed to
    /// `to_device`: the supernodes on the way forward it unread
    /// (`from_cert.body.device_key` must be the attached client that sent
    /// it, as for `PunchCandidates`). `from_cert` tells the recipient the
    /// sender's account, which decides whether it answers with its own
    /// addresses (only to its contacts). `ephemeral` is the sender's
    /// one-time X25519 key; `sealed` the AEAD ciphertext and tag, under a
    /// key from the ephemeral and the static (device key) Diffie-Hellman
    /// and a transcript binding every other field. An answer with no
    /// candidates means "use the relay at `reply_supernode`".
    SealedCandidates {
        session: u64,
        from_cert: DeviceCert,
        to_device: PublicKey,
        to_supernode: Addr,
        reply_supernode: Addr,
        answer: bool,
        ephemeral: [u8; 32],
        sealed: BoundedVec<u8, SEALED_CANDIDATES_LEN_MAX>,
    },
    /// Client → its supernode between [`Message::Ping`]s: keeps the NAT
    /// binding and the attachment alive and asks for no answer (a
    /// supernode that does not hold the attachment says
    /// [`Message::NotAttached`]). Liveness is checked by every
    /// `keepalive_check_every`-th keepalive only, which is a ping.
    Keepalive,
    /// Supernode → its client: "I am shutting down; attach elsewhere,
    /// then detach from me." The supernode keeps serving until its clients
    /// have moved or `drain_max_ms` has passed, then sends
    /// [`Message::Detach`] to any left: a graceful leave never drops a
    /// client below its attachment target (make before break).
    Leaving {
        alternates: BoundedVec<Contact, CONTACTS_PER_MESSAGE_MAX>,
    },
}

/// Why a supernode refused a device's login for good.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub enum LoginRefusal {
    /// The account's device list revokes this device.
    DeviceRevoked,
    /// The account rotated its root key; this device's certificate is the old key's.
    RootRotated,
}

/// Root rotations a name lookup's answer follows at most.
pub const NAME_ROTATIONS_MAX: usize = 4;

/// What a [`Message::RelayRequest`] signs: the session, both devices, and
/// the relay (so the request is good at that relay only).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RelayRequestBody {
    pub session: u64,
    pub from_device: PublicKey,
    pub to_device: PublicKey,
    pub relay: Addr,
}

impl Message {
    /// A short stable name for metrics and logs.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::AttachHello { .. } => MessageKind::AttachHello,
            Message::AttachChallenge { .. } => MessageKind::AttachChallenge,
            Message::AttachProof { .. } => MessageKind::AttachProof,
            Message::AttachAccepted { .. } => MessageKind::AttachAccepted,
            Message::Busy { .. } => MessageKind::Busy,
            Message::Detach { .. } => MessageKind::Detach,
            Message::Ping { .. } => MessageKind::Ping,
            Message::Pong { .. } => MessageKind::Pong,
            Message::NotAttached => MessageKind::NotAttached,
            Message::PeerDown { .. } => MessageKind::PeerDown,
            Message::Publish { .. } => MessageKind::Publish,
            Message::LookupRequest { .. } => MessageKind::LookupRequest,
            Message::LookupResponse { .. } => MessageKind::LookupResponse,
            Message::ProbeRequest { .. } => MessageKind::ProbeRequest,
            Message::Probe { .. } => MessageKind::Probe,
            Message::ProbeForward { .. } => MessageKind::ProbeForward,
            Message::GossipPing { .. } => MessageKind::GossipPing,
            Message::GossipAck { .. } => MessageKind::GossipAck,
            Message::SyncRequest { .. } => MessageKind::SyncRequest,
            Message::SyncResponse { .. } => MessageKind::SyncResponse,
            Message::Store { .. } => MessageKind::Store,
            Message::FindValue { .. } => MessageKind::FindValue,
            Message::FindValueResponse { .. } => MessageKind::FindValueResponse,
            Message::AttachResume { .. } => MessageKind::AttachResume,
            Message::MailPut { .. } => MessageKind::MailPut,
            Message::MailStore { .. } => MessageKind::MailStore,
            Message::MailDeliver { .. } => MessageKind::MailDeliver,
            Message::MailFetch { .. } => MessageKind::MailFetch,
            Message::MailBatch { .. } => MessageKind::MailBatch,
            Message::MailDone { .. } => MessageKind::MailDone,
            Message::MailDelete { .. } => MessageKind::MailDelete,
            Message::PunchCandidates { .. } => MessageKind::PunchCandidates,
            Message::PathPing { .. } => MessageKind::PathPing,
            Message::PathPong { .. } => MessageKind::PathPong,
            Message::RelayRequest { .. } => MessageKind::RelayRequest,
            Message::RelayGranted { .. } => MessageKind::RelayGranted,
            Message::RelayRefused { .. } => MessageKind::RelayRefused,
            Message::NameRegister { .. } => MessageKind::NameRegister,
            Message::NameVoteRequest { .. } => MessageKind::NameVoteRequest,
            Message::NameVoteReply { .. } => MessageKind::NameVoteReply,
            Message::NameStore { .. } => MessageKind::NameStore,
            Message::NameResult { .. } => MessageKind::NameResult,
            Message::NameLookup { .. } => MessageKind::NameLookup,
            Message::NameFind { .. } => MessageKind::NameFind,
            Message::NameFindResponse { .. } => MessageKind::NameFindResponse,
            Message::NameLookupResponse { .. } => MessageKind::NameLookupResponse,
            Message::DeviceListPush { .. } => MessageKind::DeviceListPush,
            Message::RootRotationPush { .. } => MessageKind::RootRotationPush,
            Message::BundleStore { .. } => MessageKind::BundleStore,
            Message::BundleFetch { .. } => MessageKind::BundleFetch,
            Message::BundleFetchResponse { .. } => MessageKind::BundleFetchResponse,
            Message::ShareDealPush { .. } => MessageKind::ShareDealPush,
            Message::OprfEvaluate { .. } => MessageKind::OprfEvaluate,
            Message::OprfAnswer { .. } => MessageKind::OprfAnswer,
            Message::OprfRefused { .. } => MessageKind::OprfRefused,
            Message::DeviceListStore { .. } => MessageKind::DeviceListStore,
            Message::DeviceListFetch { .. } => MessageKind::DeviceListFetch,
            Message::DeviceListFetchResponse { .. } => MessageKind::DeviceListFetchResponse,
            Message::NameLookupAnswer { .. } => MessageKind::NameLookupAnswer,
            Message::LoginRefused { .. } => MessageKind::LoginRefused,
            Message::SealedCandidates { .. } => MessageKind::SealedCandidates,
            Message::Keepalive => MessageKind::Keepalive,
            Message::Leaving { .. } => MessageKind::Leaving,
        }
    }
}

/// The message's variant without its fields.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum MessageKind {
    AttachHello,
    AttachChallenge,
    AttachProof,
    AttachAccepted,
    Busy,
    Detach,
    Ping,
    Pong,
    NotAttached,
    PeerDown,
    Publish,
    LookupRequest,
    LookupResponse,
    ProbeRequest,
    Probe,
    ProbeForward,
    GossipPing,
    GossipAck,
    SyncRequest,
    SyncResponse,
    Store,
    FindValue,
    FindValueResponse,
    AttachResume,
    MailPut,
    MailStore,
    MailDeliver,
    MailFetch,
    MailBatch,
    MailDone,
    MailDelete,
    PunchCandidates,
    PathPing,
    PathPong,
    RelayRequest,
    RelayGranted,
    RelayRefused,
    NameRegister,
    NameVoteRequest,
    NameVoteReply,
    NameStore,
    NameResult,
    NameLookup,
    NameFind,
    NameFindResponse,
    NameLookupResponse,
    DeviceListPush,
    RootRotationPush,
    BundleStore,
    BundleFetch,
    BundleFetchResponse,
    ShareDealPush,
    OprfEvaluate,
    OprfAnswer,
    OprfRefused,
    DeviceListStore,
    DeviceListFetch,
    DeviceListFetchResponse,
    NameLookupAnswer,
    LoginRefused,
    SealedCandidates,
    Keepalive,
    Leaving,
}

impl MessageKind {
    /// The kind whose variant index (declaration order of [`Message`]) is `index`.
    pub fn from_index(index: u32) -> Option<MessageKind> {
        Some(match index {
            0 => MessageKind::AttachHello,
            1 => MessageKind::AttachChallenge,
            2 => MessageKind::AttachProof,
            3 => MessageKind::AttachAccepted,
            4 => MessageKind::Busy,
            5 => MessageKind::Detach,
            6 => MessageKind::Ping,
            7 => MessageKind::Pong,
            8 => MessageKind::NotAttached,
            9 => MessageKind::PeerDown,
            10 => MessageKind::Publish,
            11 => MessageKind::LookupRequest,
            12 => MessageKind::LookupResponse,
            13 => MessageKind::ProbeRequest,
            14 => MessageKind::Probe,
            15 => MessageKind::ProbeForward,
            16 => MessageKind::GossipPing,
            17 => MessageKind::GossipAck,
            18 => MessageKind::SyncRequest,
            19 => MessageKind::SyncResponse,
            20 => MessageKind::Store,
            21 => MessageKind::FindValue,
            22 => MessageKind::FindValueResponse,
            23 => MessageKind::AttachResume,
            24 => MessageKind::MailPut,
            25 => MessageKind::MailStore,
            26 => MessageKind::MailDeliver,
            27 => MessageKind::MailFetch,
            28 => MessageKind::MailBatch,
            29 => MessageKind::MailDone,
            30 => MessageKind::MailDelete,
            31 => MessageKind::PunchCandidates,
            32 => MessageKind::PathPing,
            33 => MessageKind::PathPong,
            34 => MessageKind::RelayRequest,
            35 => MessageKind::RelayGranted,
            36 => MessageKind::RelayRefused,
            37 => MessageKind::NameRegister,
            38 => MessageKind::NameVoteRequest,
            39 => MessageKind::NameVoteReply,
            40 => MessageKind::NameStore,
            41 => MessageKind::NameResult,
            42 => MessageKind::NameLookup,
            43 => MessageKind::NameFind,
            44 => MessageKind::NameFindResponse,
            45 => MessageKind::NameLookupResponse,
            46 => MessageKind::DeviceListPush,
            47 => MessageKind::RootRotationPush,
            48 => MessageKind::BundleStore,
            49 => MessageKind::BundleFetch,
            50 => MessageKind::BundleFetchResponse,
            51 => MessageKind::ShareDealPush,
            52 => MessageKind::OprfEvaluate,
            53 => MessageKind::OprfAnswer,
            54 => MessageKind::OprfRefused,
            55 => MessageKind::DeviceListStore,
            56 => MessageKind::DeviceListFetch,
            57 => MessageKind::DeviceListFetchResponse,
            58 => MessageKind::NameLookupAnswer,
            59 => MessageKind::LoginRefused,
            60 => MessageKind::SealedCandidates,
            61 => MessageKind::Keepalive,
            62 => MessageKind::Leaving,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, peek_kind};

    #[test]
    fn peek_kind_agrees_with_decoding_for_each_variant_order() {
        let samples = [
            Message::NotAttached,
            Message::Keepalive,
            Message::Leaving {
                alternates: BoundedVec::new(),
            },
            Message::Ping { sequence: 1 },
            Message::Pong {
                sequence: 1,
                load_pct: 3,
                network_load_pct: 4,
                ticket: None,
            },
            Message::Detach {
                alternates: BoundedVec::new(),
            },
            Message::PeerDown {
                supernode: PublicKey([1; 32]),
            },
            Message::SyncRequest {
                cursor: 3,
                sender: MemberUpdate {
                    contact: Contact {
                        key: PublicKey([2; 32]),
                        id_nonce: 1,
                        addr: Addr::default(),
                    },
                    incarnation: 1,
                    state: crate::MemberState::Alive,
                    load_pct: 0,
                },
            },
            Message::FindValue {
                query_id: 1,
                key: NodeId([0; 32]),
            },
            Message::ProbeForward {
                target: Addr::default(),
                token: 5,
            },
            Message::PunchCandidates {
                session: 7,
                from_device: PublicKey([3; 32]),
                to_device: PublicKey([4; 32]),
                to_supernode: Addr::default(),
                reply_supernode: Addr::default(),
                answer: true,
                candidates: BoundedVec::new(),
            },
            Message::PathPing { session: 8 },
            Message::PathPong { session: 9 },
            Message::SealedCandidates {
                session: 7,
                from_cert: DeviceCert {
                    body: crate::DeviceCertBody {
                        device_key: PublicKey([3; 32]),
                        account_key: PublicKey([16; 32]),
                        expires_unix_s: 1_800_000_000,
                    },
                    signature: Signature([17; 64]),
                },
                to_device: PublicKey([4; 32]),
                to_supernode: Addr::default(),
                reply_supernode: Addr::default(),
                answer: false,
                ephemeral: [18; 32],
                sealed: BoundedVec::truncating([19; 161]),
            },
            Message::RelayRequest {
                body: RelayRequestBody {
                    session: 10,
                    from_device: PublicKey([5; 32]),
                    to_device: PublicKey([6; 32]),
                    relay: Addr::default(),
                },
                signature: Signature([7; 64]),
            },
            Message::RelayGranted {
                session: 11,
                channel: 0x8000,
                lifetime_s: 120,
            },
            Message::RelayRefused {
                session: 12,
                retry_after_ms: 1_000,
            },
            Message::DeviceListPush {
                list: crate::DeviceList {
                    body: crate::DeviceListBody {
                        account_key: PublicKey([8; 32]),
                        version: 3,
                        devices: BoundedVec::truncating([PublicKey([9; 32])]),
                        revoked: BoundedVec::truncating([PublicKey([10; 32])]),
                        issued_unix_s: 1_800_000_000,
                    },
                    signature: Signature([11; 64]),
                },
            },
            Message::RootRotationPush {
                rotation: crate::RootRotation {
                    body: crate::RootRotationBody {
                        old_account: PublicKey([12; 32]),
                        new_account: PublicKey([13; 32]),
                        issued_unix_s: 1_800_000_000,
                    },
                    signature_old: Signature([14; 64]),
                    signature_new: Signature([15; 64]),
                },
            },
        ];
        for message in samples {
            assert_eq!(
                peek_kind(&encode(&message).unwrap()),
                Some(message.kind()),
                "{message:?}"
            );
        }
        assert_eq!(peek_kind(&[]), None);
        assert_eq!(peek_kind(&[1, 0xff]), None);
    }
}
