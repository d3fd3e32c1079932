//! A client node and a supernode node, driven by a sequence of operations
//! read from the fuzz input: raw datagrams from one of a few addresses,
//! structurally valid messages of every kind built from the input (some
//! with valid signatures), truncated and mis-versioned encodings, time
//! jumps with timeouts, lookups, shutdowns and restarts. The two nodes also
//! talk to each other, so the client really attaches and publishes while
//! the noise arrives.
//!
//! Nothing may panic (debug assertions and overflow checks are on in fuzz
//! builds). After `handle_timeout(now)` twice, a node must not ask to be
//! woken at or before `now` (a busy loop in any driver), and the two nodes
//! must fall quiet after a bounded number of exchanges.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peerline_core::account::{sign_device_list, sign_root_rotation};
use peerline_core::identity::{
    domain, issue_device_cert, presence_key, resume_proof_bytes, sign_envelope, sign_presence,
    sign_ticket, solve_id_puzzle,
};
use peerline_core::{
    CryptoMode, DeviceIdentity, Instant, Keypair, Node, NodeConfig, Now, Params, RolePolicy,
};
use peerline_proto::{
    encode, encode_versioned, Addr, BoundedVec, BusyReason, Contact, DeviceCert, DeviceCertBody,
    Envelope, EnvelopeBody, EnvelopeId, EnvelopeKind, MemberState, MemberUpdate, Message, NodeId,
    PresenceBody, PresenceRecord, PublicKey, Signature, Ticket, TicketBody,
};
use peerline_proto::{DeviceList, DeviceListBody, LoginRefusal, RootRotation, RootRotationBody};
use std::sync::{Arc, OnceLock};

const UNIX0: u64 = 1_800_000_000;
const PUZZLE_BITS: u32 = 4;
const CLIENT_SEED: u8 = 1;
const SUPERNODE_SEED: u8 = 2;
/// Operations taken from one input; the rest is ignored (keeps runs short).
const OPS_MAX: usize = 64;
/// Datagram rounds between the two nodes after one operation.
const EXCHANGE_ROUNDS_MAX: usize = 64;

// ---------------------------------------------------------------------------
// Fixtures (built once per process)
// ---------------------------------------------------------------------------

fn addr(host: u32) -> Addr {
    Addr::from_ipv4_u32(0x0a00_0000 | host, 7_000)
}

/// The client, the supernode, two supernodes that exist only in the
/// client's bootstrap list, and a stranger.
const ADDRESSES: usize = 5;
fn known_addr(index: u8) -> Addr {
    addr(1 + (index as u32 % ADDRESSES as u32))
}
const CLIENT_ADDR: u32 = 1;
const SUPERNODE_ADDR: u32 = 2;

struct Fixtures {
    params: Arc<Params>,
    client: DeviceIdentity,
    supernode: DeviceIdentity,
    stranger: DeviceIdentity,
    /// The real supernode's contact, then the two scripted ones.
    supernodes: [Contact; 3],
}

/// A deterministic account with one device (no RNG needed).
/// The client's account root (see [`identity`]).
fn client_root() -> Keypair {
    Keypair::from_seed(CryptoMode::Full, [CLIENT_SEED.wrapping_mul(2); 32])
}

fn identity(seed: u8) -> DeviceIdentity {
    let account = Keypair::from_seed(CryptoMode::Full, [seed.wrapping_mul(2); 32]);
    let device = Keypair::from_seed(CryptoMode::Full, [seed.wrapping_mul(2) + 1; 32]);
    let cert = issue_device_cert(&account, device.public(), UNIX0 + 30 * 24 * 3_600);
    DeviceIdentity {
        keypair: device,
        cert,
    }
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let params = Arc::new(Params {
            id_puzzle_difficulty_bits: PUZZLE_BITS,
            supernode_capacity_attachments: 2,
            lookups_in_flight_max: 2,
            ..Params::default()
        });
        let supernode = identity(SUPERNODE_SEED);
        let real = build_supernode(&params, &supernode)
            .supernode_contact()
            .expect("a supernode has a contact");
        let scripted = |seed: u8, host: u32| {
            let key = Keypair::from_seed(CryptoMode::Full, [seed; 32]).public();
            let (id_nonce, _) = solve_id_puzzle(&key, PUZZLE_BITS, 0);
            Contact {
                key,
                id_nonce,
                addr: addr(host),
            }
        };
        Fixtures {
            client: identity(CLIENT_SEED),
            stranger: identity(3),
            supernodes: [real, scripted(10, 3), scripted(11, 4)],
            supernode,
            params,
        }
    })
}

fn build_supernode(params: &Arc<Params>, identity: &DeviceIdentity) -> Node {
    let config = NodeConfig {
        params: Arc::clone(params),
        identity: identity.clone(),
        policy: RolePolicy::SupernodeOnly,
        advertised_addr: addr(SUPERNODE_ADDR),
        bootstrap: Vec::new(),
    };
    Node::new(config, now(0), SUPERNODE_SEED as u64)
}

fn build_client(fixtures: &Fixtures) -> Node {
    let config = NodeConfig {
        params: Arc::clone(&fixtures.params),
        identity: fixtures.client.clone(),
        policy: RolePolicy::Auto,
        advertised_addr: addr(CLIENT_ADDR),
        bootstrap: fixtures.supernodes.to_vec(),
    };
    Node::new(config, now(0), CLIENT_SEED as u64)
}

fn now(ms: u64) -> Now {
    Now {
        instant: Instant::from_ms(ms),
        unix_s: UNIX0 + ms / 1_000,
    }
}

// ---------------------------------------------------------------------------
// Message fields, chosen by the input
// ---------------------------------------------------------------------------

#[derive(Arbitrary, Debug, Clone, Copy)]
enum AddrChoice {
    Known(u8),
    Raw([u8; 16], u16),
}

impl AddrChoice {
    fn build(self) -> Addr {
        match self {
            AddrChoice::Known(i) => known_addr(i),
            AddrChoice::Raw(ip, port) => Addr { ip, port },
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum KeyChoice {
    Supernode(u8),
    ClientAccount,
    ClientDevice,
    StrangerAccount,
    SupernodeAccount,
    Raw([u8; 32]),
}

impl KeyChoice {
    fn build(self) -> PublicKey {
        let f = fixtures();
        match self {
            KeyChoice::Supernode(i) => f.supernodes[i as usize % 3].key,
            KeyChoice::ClientAccount => f.client.account(),
            KeyChoice::ClientDevice => f.client.keypair.public(),
            KeyChoice::StrangerAccount => f.stranger.account(),
            KeyChoice::SupernodeAccount => f.supernode.account(),
            KeyChoice::Raw(bytes) => PublicKey(bytes),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ContactChoice {
    Known(u8),
    KnownAt(u8, AddrChoice),
    Raw(KeyChoice, u64, AddrChoice),
}

impl ContactChoice {
    fn build(self) -> Contact {
        let f = fixtures();
        match self {
            ContactChoice::Known(i) => f.supernodes[i as usize % 3],
            ContactChoice::KnownAt(i, addr) => Contact {
                addr: addr.build(),
                ..f.supernodes[i as usize % 3]
            },
            ContactChoice::Raw(key, id_nonce, addr) => Contact {
                key: key.build(),
                id_nonce,
                addr: addr.build(),
            },
        }
    }
}

fn contacts<const N: usize>(choices: &[ContactChoice]) -> BoundedVec<Contact, N> {
    BoundedVec::truncating(choices.iter().map(|c| c.build()))
}

/// A wall-clock second: near the test's clock, or anything at all.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum TimeChoice {
    /// Seconds from a day before the start.
    Near(u32),
    Raw(u64),
    Max,
}

impl TimeChoice {
    fn build(self) -> u64 {
        match self {
            TimeChoice::Near(s) => UNIX0 - 86_400 + s as u64 % (4 * 86_400),
            TimeChoice::Raw(s) => s,
            TimeChoice::Max => u64::MAX,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SignatureChoice {
    Zero,
    Raw([u8; 64]),
}

impl SignatureChoice {
    fn build(self) -> Signature {
        match self {
            SignatureChoice::Zero => Signature([0; 64]),
            SignatureChoice::Raw(bytes) => Signature(bytes),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum CertChoice {
    Client,
    Stranger,
    Supernode,
    Raw {
        device: KeyChoice,
        account: KeyChoice,
        expires: TimeChoice,
        signature: SignatureChoice,
    },
}

impl CertChoice {
    fn build(self) -> DeviceCert {
        let f = fixtures();
        match self {
            CertChoice::Client => f.client.cert,
            CertChoice::Stranger => f.stranger.cert,
            CertChoice::Supernode => f.supernode.cert,
            CertChoice::Raw {
                device,
                account,
                expires,
                signature,
            } => DeviceCert {
                body: DeviceCertBody {
                    device_key: device.build(),
                    account_key: account.build(),
                    expires_unix_s: expires.build(),
                },
                signature: signature.build(),
            },
        }
    }
}

/// A record with any fields and any signature.
#[derive(Arbitrary, Debug, Clone)]
struct RawRecord {
    cert: CertChoice,
    sequence: u64,
    issued: TimeChoice,
    expires: TimeChoice,
    supernodes: Vec<ContactChoice>,
    signature: SignatureChoice,
}

#[derive(Arbitrary, Debug, Clone)]
enum RecordChoice {
    /// Validly signed by the client's or the stranger's device.
    Signed {
        by_client: bool,
        sequence: u64,
        issued: TimeChoice,
        expires: TimeChoice,
        supernodes: Vec<ContactChoice>,
    },
    Raw(Box<RawRecord>),
}

impl RecordChoice {
    fn build(&self) -> PresenceRecord {
        let f = fixtures();
        match self {
            RecordChoice::Signed {
                by_client,
                sequence,
                issued,
                expires,
                supernodes,
            } => {
                let device = if *by_client { &f.client } else { &f.stranger };
                let body = PresenceBody {
                    cert: device.cert,
                    sequence: *sequence,
                    issued_unix_s: issued.build(),
                    expires_unix_s: expires.build(),
                    supernodes: contacts(supernodes),
                };
                sign_presence(&device.keypair, body)
            }
            RecordChoice::Raw(raw) => PresenceRecord {
                body: PresenceBody {
                    cert: raw.cert.build(),
                    sequence: raw.sequence,
                    issued_unix_s: raw.issued.build(),
                    expires_unix_s: raw.expires.build(),
                    supernodes: contacts(&raw.supernodes),
                },
                signature: raw.signature.build(),
            },
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct UpdateChoice {
    contact: ContactChoice,
    incarnation: u32,
    state: u8,
    load_pct: u8,
}

impl UpdateChoice {
    fn build(self) -> MemberUpdate {
        MemberUpdate {
            contact: self.contact.build(),
            incarnation: self.incarnation,
            state: match self.state % 3 {
                0 => MemberState::Alive,
                1 => MemberState::Suspect,
                _ => MemberState::Dead,
            },
            load_pct: self.load_pct,
        }
    }
}

fn updates<const N: usize>(choices: &[UpdateChoice]) -> BoundedVec<MemberUpdate, N> {
    BoundedVec::truncating(choices.iter().map(|u| u.build()))
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum IdChoice {
    PresenceOf(KeyChoice),
    Raw([u8; 32]),
}

impl IdChoice {
    fn build(self) -> NodeId {
        match self {
            IdChoice::PresenceOf(key) => presence_key(&key.build()),
            IdChoice::Raw(bytes) => NodeId(bytes),
        }
    }
}

/// A ticket: issued by the real supernode to the client (valid unless the
/// times say otherwise), or any fields with any signature.
#[derive(Arbitrary, Debug, Clone)]
enum TicketChoice {
    Issued {
        issued: TimeChoice,
        expires: TimeChoice,
    },
    Raw {
        device: KeyChoice,
        account: KeyChoice,
        times: [TimeChoice; 3],
        addr: AddrChoice,
        issuer: ContactChoice,
        signature: SignatureChoice,
    },
}

impl TicketChoice {
    fn build(&self) -> Ticket {
        let f = fixtures();
        match self {
            TicketChoice::Issued { issued, expires } => sign_ticket(
                &f.supernode.keypair,
                TicketBody {
                    device_key: f.client.keypair.public(),
                    account_key: f.client.account(),
                    cert_expires_unix_s: f.client.cert.body.expires_unix_s,
                    addr: addr(CLIENT_ADDR),
                    issued_unix_s: issued.build(),
                    expires_unix_s: expires.build(),
                    issuer: f.supernodes[0],
                },
            ),
            TicketChoice::Raw {
                device,
                account,
                times,
                addr,
                issuer,
                signature,
            } => Ticket {
                body: TicketBody {
                    device_key: device.build(),
                    account_key: account.build(),
                    cert_expires_unix_s: times[0].build(),
                    addr: addr.build(),
                    issued_unix_s: times[1].build(),
                    expires_unix_s: times[2].build(),
                    issuer: issuer.build(),
                },
                signature: signature.build(),
            },
        }
    }
}

/// One variant per `Message` variant.
#[derive(Arbitrary, Debug, Clone)]
enum MessageChoice {
    AttachHello(CertChoice),
    AttachChallenge(ContactChoice, [u8; 32]),
    AttachProof(CertChoice, [u8; 32], SignatureChoice),
    AttachAccepted(u16, u8, Vec<ContactChoice>, Option<TicketChoice>),
    Busy(u8, u32, Vec<ContactChoice>),
    Detach(Vec<ContactChoice>),
    Ping(u32),
    Pong(u32, u8, u8, Option<TicketChoice>),
    NotAttached,
    Keepalive,
    Leaving(Vec<ContactChoice>),
    PeerDown(KeyChoice),
    Publish(RecordChoice),
    LookupRequest(u32, KeyChoice),
    LookupResponse(u32, Option<RecordChoice>, u8),
    ProbeRequest(u64),
    Probe(u64),
    ProbeForward(AddrChoice, u64),
    GossipPing(u32, UpdateChoice, Vec<UpdateChoice>),
    GossipAck(u32, UpdateChoice, Vec<UpdateChoice>),
    SyncRequest(u32, UpdateChoice),
    SyncResponse(Vec<UpdateChoice>, Option<u32>),
    Store(RecordChoice),
    FindValue(u32, IdChoice),
    FindValueResponse(u32, Option<RecordChoice>, Vec<ContactChoice>),
    /// Signed by the client for the real supernode when `signed`.
    AttachResume(TicketChoice, u64, Option<SignatureChoice>),
    MailPut(EnvelopeChoice),
    MailStore(EnvelopeChoice, bool),
    MailDeliver(EnvelopeChoice),
    MailFetch(KeyChoice, KeyChoice),
    MailBatch(KeyChoice, Vec<EnvelopeChoice>, bool),
    MailDone(Vec<[u8; 16]>),
    MailDelete(KeyChoice, Vec<[u8; 16]>),
    PunchCandidates(
        u64,
        KeyChoice,
        KeyChoice,
        AddrChoice,
        AddrChoice,
        bool,
        Vec<AddrChoice>,
    ),
    PathPing(u64),
    PathPong(u64),
    /// Signed by the client's root when `signed` (revoking whom the keys
    /// say), else with the signature given.
    DeviceListPush {
        signed: Option<()>,
        account: KeyChoice,
        version: u64,
        devices: Vec<KeyChoice>,
        revoked: Vec<KeyChoice>,
        issued_unix_s: Option<u64>,
        signature: SignatureChoice,
    },
    /// The client's root rotated to the key from `new_seed` when `signed`.
    RootRotationPush {
        signed: Option<()>,
        old: KeyChoice,
        new_seed: [u8; 32],
        issued_unix_s: Option<u64>,
        signatures: (SignatureChoice, SignatureChoice),
    },
    /// A device list offered for storage: the client root's version
    /// `version` revoking the keys given when `signed`, else raw.
    DeviceListStore {
        signed: bool,
        account: KeyChoice,
        version: u64,
        revoked: Vec<KeyChoice>,
        signature: SignatureChoice,
    },
    DeviceListFetch(u32, KeyChoice),
    /// With the client root's list of `version` when `Some`.
    DeviceListFetchResponse(u32, Option<u64>),
    /// No certificate, and rotations of the client's root to the seeds'
    /// keys (each signed properly when its flag is set).
    NameLookupAnswer(u32, IdChoice, Vec<([u8; 32], bool)>),
    LoginRefused(bool),
    SealedCandidates {
        session: u64,
        from: CertChoice,
        to: KeyChoice,
        supernodes: (AddrChoice, AddrChoice),
        answer: bool,
        ephemeral: [u8; 32],
        sealed: Vec<u8>,
    },
}

/// An envelope: signed by the stranger to the client or the reverse (valid
/// unless the fields say otherwise), or any fields with any signature.
#[derive(Arbitrary, Debug, Clone)]
enum EnvelopeChoice {
    Signed {
        to_client: bool,
        seq: u64,
        ack: Option<u64>,
        payload: Vec<u8>,
    },
    Raw {
        keys: [KeyChoice; 4],
        seq: u64,
        ack: Option<u64>,
        payload: Vec<u8>,
        signature: SignatureChoice,
    },
}

impl EnvelopeChoice {
    fn build(&self) -> Envelope {
        let kind = |ack: &Option<u64>, payload: &Vec<u8>| match ack {
            Some(up_to_seq) => EnvelopeKind::Ack {
                up_to_seq: *up_to_seq,
            },
            None => EnvelopeKind::Data {
                payload: BoundedVec::truncating(payload.iter().copied()),
            },
        };
        let f = fixtures();
        match self {
            EnvelopeChoice::Signed {
                to_client,
                seq,
                ack,
                payload,
            } => {
                let (from, to) = if *to_client {
                    (&f.stranger, &f.client)
                } else {
                    (&f.client, &f.stranger)
                };
                sign_envelope(
                    &from.keypair,
                    EnvelopeBody {
                        from_device: from.keypair.public(),
                        from_account: from.account(),
                        to_device: to.keypair.public(),
                        to_account: to.account(),
                        seq: *seq,
                        sent_unix_s: UNIX0,
                        kind: kind(ack, payload),
                    },
                )
            }
            EnvelopeChoice::Raw {
                keys,
                seq,
                ack,
                payload,
                signature,
            } => Envelope {
                body: EnvelopeBody {
                    from_device: keys[0].build(),
                    from_account: keys[1].build(),
                    to_device: keys[2].build(),
                    to_account: keys[3].build(),
                    seq: *seq,
                    sent_unix_s: UNIX0,
                    kind: kind(ack, payload),
                },
                signature: signature.build(),
            },
        }
    }
}

fn envelope_ids(ids: &[[u8; 16]]) -> BoundedVec<EnvelopeId, 16> {
    BoundedVec::truncating(ids.iter().copied().map(EnvelopeId))
}

impl MessageChoice {
    fn build(&self) -> Message {
        match self {
            MessageChoice::AttachHello(cert) => Message::AttachHello { cert: cert.build() },
            MessageChoice::AttachChallenge(contact, challenge) => Message::AttachChallenge {
                supernode: contact.build(),
                challenge: *challenge,
            },
            MessageChoice::AttachProof(cert, challenge, signature) => Message::AttachProof {
                cert: cert.build(),
                challenge: *challenge,
                signature: signature.build(),
            },
            MessageChoice::AttachAccepted(keepalive_interval_s, load_pct, peers, ticket) => {
                Message::AttachAccepted {
                    keepalive_interval_s: *keepalive_interval_s,
                    load_pct: *load_pct,
                    peers: contacts(peers),
                    ticket: ticket.as_ref().map(TicketChoice::build),
                }
            }
            MessageChoice::Busy(reason, retry_after_ms, alternates) => Message::Busy {
                reason: match reason % 4 {
                    0 => BusyReason::AttachmentsFull,
                    1 => BusyReason::Demoting,
                    2 => BusyReason::LookupsFull,
                    _ => BusyReason::HandshakesFull,
                },
                retry_after_ms: *retry_after_ms,
                alternates: contacts(alternates),
            },
            MessageChoice::Detach(alternates) => Message::Detach {
                alternates: contacts(alternates),
            },
            MessageChoice::Ping(sequence) => Message::Ping {
                sequence: *sequence,
            },
            MessageChoice::Pong(sequence, load_pct, network_load_pct, ticket) => Message::Pong {
                sequence: *sequence,
                load_pct: *load_pct,
                network_load_pct: *network_load_pct,
                ticket: ticket.as_ref().map(TicketChoice::build),
            },
            MessageChoice::NotAttached => Message::NotAttached,
            MessageChoice::Keepalive => Message::Keepalive,
            MessageChoice::Leaving(alternates) => Message::Leaving {
                alternates: contacts(alternates),
            },
            MessageChoice::PeerDown(key) => Message::PeerDown {
                supernode: key.build(),
            },
            MessageChoice::Publish(record) => Message::Publish {
                record: record.build(),
            },
            MessageChoice::LookupRequest(query_id, account) => Message::LookupRequest {
                query_id: *query_id,
                account: account.build(),
            },
            MessageChoice::LookupResponse(query_id, record, hops) => Message::LookupResponse {
                query_id: *query_id,
                record: record.as_ref().map(|r| r.build()),
                hops: *hops,
            },
            MessageChoice::ProbeRequest(token) => Message::ProbeRequest { token: *token },
            MessageChoice::Probe(token) => Message::Probe { token: *token },
            MessageChoice::ProbeForward(target, token) => Message::ProbeForward {
                target: target.build(),
                token: *token,
            },
            MessageChoice::GossipPing(sequence, sender, list) => Message::GossipPing {
                sequence: *sequence,
                sender: sender.build(),
                updates: updates(list),
            },
            MessageChoice::GossipAck(sequence, sender, list) => Message::GossipAck {
                sequence: *sequence,
                sender: sender.build(),
                updates: updates(list),
            },
            MessageChoice::SyncRequest(cursor, sender) => Message::SyncRequest {
                cursor: *cursor,
                sender: sender.build(),
            },
            MessageChoice::SyncResponse(members, next_cursor) => Message::SyncResponse {
                members: updates(members),
                next_cursor: *next_cursor,
            },
            MessageChoice::Store(record) => Message::Store {
                record: record.build(),
            },
            MessageChoice::FindValue(query_id, key) => Message::FindValue {
                query_id: *query_id,
                key: key.build(),
            },
            MessageChoice::FindValueResponse(query_id, record, closer) => {
                Message::FindValueResponse {
                    query_id: *query_id,
                    record: record.as_ref().map(|r| r.build()),
                    closer: contacts(closer),
                }
            }
            MessageChoice::AttachResume(ticket, counter, signature) => {
                let ticket = ticket.build();
                let signature = match signature {
                    Some(signature) => signature.build(),
                    None => {
                        let f = fixtures();
                        let proof = resume_proof_bytes(&f.supernodes[0].key, &ticket, *counter);
                        f.client.keypair.sign(domain::RESUME, &proof)
                    }
                };
                Message::AttachResume {
                    ticket,
                    counter: *counter,
                    signature,
                }
            }
            MessageChoice::MailPut(envelope) => Message::MailPut {
                envelope: envelope.build(),
            },
            MessageChoice::MailStore(envelope, push) => Message::MailStore {
                envelope: envelope.build(),
                push: *push,
            },
            MessageChoice::MailDeliver(envelope) => Message::MailDeliver {
                envelope: envelope.build(),
            },
            MessageChoice::MailFetch(account, device) => Message::MailFetch {
                account: account.build(),
                device: device.build(),
            },
            MessageChoice::MailBatch(device, envelopes, more) => Message::MailBatch {
                device: device.build(),
                envelopes: BoundedVec::truncating(envelopes.iter().map(EnvelopeChoice::build)),
                more: *more,
            },
            MessageChoice::MailDone(ids) => Message::MailDone {
                ids: envelope_ids(ids),
            },
            MessageChoice::MailDelete(device, ids) => Message::MailDelete {
                device: device.build(),
                ids: envelope_ids(ids),
            },
            MessageChoice::PunchCandidates(
                session,
                from_device,
                to_device,
                to_supernode,
                reply_supernode,
                answer,
                candidates,
            ) => Message::PunchCandidates {
                session: *session,
                from_device: from_device.build(),
                to_device: to_device.build(),
                to_supernode: to_supernode.build(),
                reply_supernode: reply_supernode.build(),
                answer: *answer,
                candidates: BoundedVec::truncating(candidates.iter().map(|c| c.build())),
            },
            MessageChoice::PathPing(session) => Message::PathPing { session: *session },
            MessageChoice::PathPong(session) => Message::PathPong { session: *session },
            MessageChoice::DeviceListPush {
                signed,
                account,
                version,
                devices,
                revoked,
                issued_unix_s,
                signature,
            } => {
                let body = DeviceListBody {
                    account_key: account.build(),
                    version: *version,
                    devices: BoundedVec::truncating(devices.iter().map(|k| k.build())),
                    revoked: BoundedVec::truncating(revoked.iter().map(|k| k.build())),
                    issued_unix_s: issued_unix_s.unwrap_or(UNIX0),
                };
                let list = match signed {
                    Some(()) => {
                        let root = client_root();
                        sign_device_list(
                            &root,
                            DeviceListBody {
                                account_key: root.public(),
                                ..body
                            },
                        )
                    }
                    None => DeviceList {
                        body,
                        signature: signature.build(),
                    },
                };
                Message::DeviceListPush { list }
            }
            MessageChoice::RootRotationPush {
                signed,
                old,
                new_seed,
                issued_unix_s,
                signatures,
            } => {
                let issued_unix_s = issued_unix_s.unwrap_or(UNIX0);
                let new_root = Keypair::from_seed(CryptoMode::Full, *new_seed);
                let rotation = match signed {
                    Some(()) => sign_root_rotation(&client_root(), &new_root, issued_unix_s),
                    None => RootRotation {
                        body: RootRotationBody {
                            old_account: old.build(),
                            new_account: new_root.public(),
                            issued_unix_s,
                        },
                        signature_old: signatures.0.build(),
                        signature_new: signatures.1.build(),
                    },
                };
                Message::RootRotationPush { rotation }
            }
            MessageChoice::DeviceListStore {
                signed,
                account,
                version,
                revoked,
                signature,
            } => {
                let root = client_root();
                let body = DeviceListBody {
                    account_key: if *signed {
                        root.public()
                    } else {
                        account.build()
                    },
                    version: *version,
                    devices: BoundedVec::new(),
                    revoked: BoundedVec::truncating(revoked.iter().map(|k| k.build())),
                    issued_unix_s: UNIX0,
                };
                let list = match signed {
                    true => sign_device_list(&root, body),
                    false => DeviceList {
                        body,
                        signature: signature.build(),
                    },
                };
                Message::DeviceListStore {
                    list: Box::new(list),
                }
            }
            MessageChoice::DeviceListFetch(query_id, account) => Message::DeviceListFetch {
                query_id: *query_id,
                account: account.build(),
            },
            MessageChoice::DeviceListFetchResponse(query_id, version) => {
                let list = version.map(|version| {
                    let root = client_root();
                    let body = DeviceListBody {
                        account_key: root.public(),
                        version,
                        devices: BoundedVec::truncating([fixtures().client.keypair.public()]),
                        revoked: BoundedVec::new(),
                        issued_unix_s: UNIX0,
                    };
                    Box::new(sign_device_list(&root, body))
                });
                Message::DeviceListFetchResponse {
                    query_id: *query_id,
                    list,
                }
            }
            MessageChoice::NameLookupAnswer(query_id, name_key, rotations) => {
                let moved = rotations.iter().map(|(seed, valid)| {
                    let new_root = Keypair::from_seed(CryptoMode::Full, *seed);
                    let mut rotation = sign_root_rotation(&client_root(), &new_root, UNIX0);
                    if !valid {
                        rotation.signature_new = Signature([seed[0]; 64]);
                    }
                    rotation
                });
                Message::NameLookupAnswer {
                    query_id: *query_id,
                    name_key: name_key.build(),
                    certificate: None,
                    moved: BoundedVec::truncating(moved),
                }
            }
            MessageChoice::LoginRefused(rotated) => Message::LoginRefused {
                reason: match rotated {
                    true => LoginRefusal::RootRotated,
                    false => LoginRefusal::DeviceRevoked,
                },
            },
            MessageChoice::SealedCandidates {
                session,
                from,
                to,
                supernodes,
                answer,
                ephemeral,
                sealed,
            } => Message::SealedCandidates {
                session: *session,
                from_cert: from.build(),
                to_device: to.build(),
                to_supernode: supernodes.0.build(),
                reply_supernode: supernodes.1.build(),
                answer: *answer,
                ephemeral: *ephemeral,
                sealed: BoundedVec::truncating(sealed.iter().copied()),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Raw {
        to_supernode: bool,
        from: u8,
        bytes: Vec<u8>,
    },
    Message {
        to_supernode: bool,
        from: u8,
        message: MessageChoice,
    },
    /// The encoding cut to `keep`/256 of its length.
    Truncated {
        to_supernode: bool,
        from: u8,
        message: MessageChoice,
        keep: u8,
    },
    /// The message behind another version byte.
    Versioned {
        to_supernode: bool,
        from: u8,
        version: u8,
        message: MessageChoice,
    },
    AdvanceMs(u16),
    AdvanceS(u16),
    AdvanceToDeadline,
    Lookup {
        to_supernode: bool,
        account: KeyChoice,
    },
    Shutdown {
        to_supernode: bool,
    },
    Restart {
        to_supernode: bool,
    },
}

struct Pair {
    client: Node,
    supernode: Node,
    now_ms: u64,
}

impl Pair {
    fn node(&mut self, supernode: bool) -> &mut Node {
        if supernode {
            &mut self.supernode
        } else {
            &mut self.client
        }
    }

    fn deliver(&mut self, to_supernode: bool, from: u8, bytes: &[u8]) {
        let now = now(self.now_ms);
        self.node(to_supernode).handle(now, known_addr(from), bytes);
    }

    fn exchange(&mut self) {
        let (client_addr, supernode_addr) = (addr(CLIENT_ADDR), addr(SUPERNODE_ADDR));
        for _ in 0..EXCHANGE_ROUNDS_MAX {
            let to_supernode: Vec<Vec<u8>> = self
                .client
                .drain_transmits()
                .filter(|t| t.to == supernode_addr)
                .map(|t| t.bytes)
                .collect();
            let to_client: Vec<Vec<u8>> = self
                .supernode
                .drain_transmits()
                .filter(|t| t.to == client_addr)
                .map(|t| t.bytes)
                .collect();
            self.client.drain_events().for_each(drop);
            self.supernode.drain_events().for_each(drop);
            if to_supernode.is_empty() && to_client.is_empty() {
                return;
            }
            let now = now(self.now_ms);
            for bytes in to_supernode {
                self.supernode.handle(now, client_addr, &bytes);
            }
            for bytes in to_client {
                self.client.handle(now, supernode_addr, &bytes);
            }
        }
        panic!("client and supernode still exchanging after {EXCHANGE_ROUNDS_MAX} rounds");
    }

    fn advance_to(&mut self, ms: u64) {
        self.now_ms = self.now_ms.max(ms);
        let now = now(self.now_ms);
        for supernode in [false, true] {
            let node = self.node(supernode);
            node.handle_timeout(now);
            node.handle_timeout(now);
            let deadline = node.poll_timeout();
            assert!(
                deadline.is_none_or(|d| d > now.instant),
                "busy loop: {} due at {deadline:?} after handle_timeout({:?}) twice",
                if supernode { "supernode" } else { "client" },
                now.instant
            );
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Raw {
                to_supernode,
                from,
                bytes,
            } => self.deliver(*to_supernode, *from, bytes),
            Op::Message {
                to_supernode,
                from,
                message,
            } => {
                if let Ok(bytes) = encode(&message.build()) {
                    self.deliver(*to_supernode, *from, &bytes);
                }
            }
            Op::Truncated {
                to_supernode,
                from,
                message,
                keep,
            } => {
                if let Ok(bytes) = encode(&message.build()) {
                    let len = bytes.len() * *keep as usize / 256;
                    self.deliver(*to_supernode, *from, &bytes[..len]);
                }
            }
            Op::Versioned {
                to_supernode,
                from,
                version,
                message,
            } => {
                if let Ok(bytes) = encode_versioned((*version).max(1), &message.build()) {
                    self.deliver(*to_supernode, *from, &bytes);
                }
            }
            Op::AdvanceMs(ms) => self.advance_to(self.now_ms + *ms as u64),
            Op::AdvanceS(s) => self.advance_to(self.now_ms + *s as u64 * 1_000),
            Op::AdvanceToDeadline => {
                let next = [&self.client, &self.supernode]
                    .iter()
                    .filter_map(|n| n.poll_timeout())
                    .min()
                    .map_or(self.now_ms, |t| t.0.div_ceil(1_000));
                self.advance_to(next);
            }
            Op::Lookup {
                to_supernode,
                account,
            } => {
                let now = now(self.now_ms);
                self.node(*to_supernode).lookup(now, account.build());
            }
            Op::Shutdown { to_supernode } => {
                let now = now(self.now_ms);
                self.node(*to_supernode).shutdown(now);
            }
            Op::Restart { to_supernode } => {
                let now = now(self.now_ms);
                self.node(*to_supernode).restart(now);
            }
        }
        self.exchange();
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let f = fixtures();
    let mut pair = Pair {
        client: build_client(f),
        supernode: build_supernode(&f.params, &f.supernode),
        now_ms: 0,
    };
    pair.exchange();
    for op in ops.iter().take(OPS_MAX) {
        pair.apply(op);
    }
    for _ in 0..8 {
        pair.apply(&Op::AdvanceToDeadline);
    }
});
