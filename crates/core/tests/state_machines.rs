//! The node's state machines driven by hand, in the style of quinn-proto's
//! tests: build a node, feed it bytes and a time, assert on what it polls
//! out. Supernodes the client talks to are either scripted here
//! ([`Script`]) or real nodes with the datagrams shuttled by the test
//! ([`Net`] and the step-by-step supernode tests).
//!
//! Several tests pin defects found by this suite and fixed since (lookup
//! busy answers detaching clients, expiry overflow, incarnation wrap-around,
//! LIFO transmits, nodes acting after shutdown).

use peerline_core::account::{sign_device_list, sign_root_rotation};
use peerline_core::bundle::{
    deal, oprf_key, oprf_output_with_key, seal_bundle, RootSeed, BUNDLE_HOLDERS, BUNDLE_THRESHOLD,
    GUESS_BURST, KDF_PARAMS_SIMULATION,
};
use peerline_core::client::{BundleFailure, NameFailure};
use peerline_core::identity::{
    contact_id, domain, issue_device_cert, presence_key, resume_proof_bytes, sign_envelope,
    sign_presence, sign_ticket, solve_id_puzzle, verify, verify_id_puzzle, verify_presence,
};
use peerline_core::names::normalize;
use peerline_core::registry::{
    claim_hash, make_claim, sign_vote, verify_certificate, CertificateError,
};
use peerline_core::sealed::{seal, SealedHeader};
use peerline_core::supernode::bundles::SHARE_REPLICAS;
use peerline_core::{
    CryptoMode, DetachReason, DeviceIdentity, Event, Instant, Keypair, Node, NodeConfig, Now,
    Params, PathCommand, PathFailure, PathKind, RolePolicy,
};
use peerline_proto::{
    decode, encode, Addr, BoundedVec, BusyReason, Contact, DeviceCert, DeviceListBody, Envelope,
    EnvelopeBody, EnvelopeKind, Frame, MemberState, MemberUpdate, Message, NameCertificate,
    NameClaim, NameRefusal, NameVoteBody, NodeId, PresenceBody, PresenceRecord, PublicKey,
    RelayRequestBody, Signature, Ticket, TicketBody, VersionInfo, URGENT_PUSH_SEQUENCE,
};
use peerline_proto::{KeyBundle, ShareDeal, Sharing};
use rand_core::SeedableRng;
use rand_pcg::Pcg64Mcg;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// The wall clock at instant zero of every test.
const UNIX0: u64 = 1_800_000_000;
/// A cheap ID puzzle, so that building supernodes costs nothing.
const PUZZLE_BITS: u32 = 4;
const CERT_TTL_S: u64 = 30 * 24 * 3_600;

fn params() -> Params {
    Params {
        id_puzzle_difficulty_bits: PUZZLE_BITS,
        ..Params::default()
    }
}

/// The node's view of time `ms` milliseconds into the test.
fn at(ms: u64) -> Now {
    Now {
        instant: Instant::from_ms(ms),
        unix_s: UNIX0 + ms / 1_000,
    }
}

fn addr(host: u32) -> Addr {
    Addr::from_ipv4_u32(0x0a00_0000 | host, 7_000)
}

fn rng(seed: u64) -> Pcg64Mcg {
    Pcg64Mcg::seed_from_u64(seed)
}

fn identity(seed: u64) -> DeviceIdentity {
    DeviceIdentity::new_account(CryptoMode::Full, &mut rng(seed), UNIX0, CERT_TTL_S)
}

/// The contact of a supernode that exists only in the test's script.
fn scripted_contact(seed: u64, address: Addr) -> Contact {
    let key = Keypair::generate(CryptoMode::Full, &mut rng(seed)).public();
    let (id_nonce, _) = solve_id_puzzle(&key, PUZZLE_BITS, 0);
    Contact {
        key,
        id_nonce,
        addr: address,
    }
}

fn node(
    params: &Arc<Params>,
    seed: u64,
    policy: RolePolicy,
    address: Addr,
    bootstrap: Vec<Contact>,
    now: Now,
) -> Node {
    let config = NodeConfig {
        params: Arc::clone(params),
        identity: identity(seed),
        policy,
        advertised_addr: address,
        bootstrap,
    };
    Node::new(config, now, seed)
}

fn client(
    params: &Arc<Params>,
    seed: u64,
    address: Addr,
    bootstrap: Vec<Contact>,
    now: Now,
) -> Node {
    node(
        params,
        seed,
        RolePolicy::ClientOnly,
        address,
        bootstrap,
        now,
    )
}

fn supernode(
    params: &Arc<Params>,
    seed: u64,
    address: Addr,
    bootstrap: Vec<Contact>,
    now: Now,
) -> Node {
    node(
        params,
        seed,
        RolePolicy::SupernodeOnly,
        address,
        bootstrap,
        now,
    )
}

/// A member's first word about itself, as gossip carries it.
fn alive(contact: Contact) -> MemberUpdate {
    MemberUpdate {
        contact,
        incarnation: 1,
        state: MemberState::Alive,
        load_pct: 0,
    }
}

fn decode_message(bytes: &[u8]) -> Message {
    match decode(bytes) {
        Ok(Frame::Message(message)) => message,
        other => panic!("the node sent something that is not a message: {other:?}"),
    }
}

/// Everything the node queued, in the order it queued it.
fn sent(node: &mut Node) -> Vec<(Addr, Message)> {
    node.drain_transmits()
        .map(|t| (t.to, decode_message(&t.bytes)))
        .collect()
}

fn events(node: &mut Node) -> Vec<Event> {
    node.drain_events().collect()
}

fn deliver(node: &mut Node, now: Now, from: Addr, message: &Message) {
    node.handle(now, from, &encode(message).expect("test messages encode"));
}

/// The one message the node sent, which must go to `to`.
fn only_reply(node: &mut Node, to: Addr) -> Message {
    let out = sent(node);
    assert_eq!(out.len(), 1, "expected exactly one datagram, got {out:?}");
    assert_eq!(out[0].0, to, "the reply went to the wrong address: {out:?}");
    out.into_iter().next().map(|(_, m)| m).unwrap()
}

/// The one message the node sent to `to` (it may also have written to
/// others, e.g. asked the mailbox replicas for a newly attached client's mail).
fn answer_to(node: &mut Node, to: Addr) -> Message {
    let out: Vec<Message> = sent(node)
        .into_iter()
        .filter(|(a, _)| *a == to)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(out.len(), 1, "expected one answer to {to}, got {out:?}");
    out.into_iter().next().unwrap()
}

fn contacts_set(contacts: &[Contact]) -> BTreeSet<[u8; 32]> {
    contacts.iter().map(|c| c.key.0).collect()
}

/// What a device signs at attach: the challenge, then the supernode's key.
fn attach_proof_bytes(challenge: &[u8; 32], supernode: &PublicKey) -> Vec<u8> {
    let mut bytes = challenge.to_vec();
    bytes.extend_from_slice(&supernode.0);
    bytes
}

// ---------------------------------------------------------------------------
// Scripted supernodes: the client under test against supernodes played here
// ---------------------------------------------------------------------------

/// How a scripted supernode treats the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// Answers every step like an honest supernode.
    Honest,
    /// Answers nothing at all (crashed, or the path is down).
    Silent,
    /// Answers every hello with `Busy`.
    Busy,
}

/// A scripted answer: (due at ms, tie-break sequence, from, datagram).
type Reply = (u64, u64, Addr, Vec<u8>);

struct Script {
    contacts: Vec<Contact>,
    behaviour: HashMap<Addr, Behaviour>,
    /// Alternates a busy supernode names.
    busy_alternates: Vec<Contact>,
    busy_retry_after_ms: u32,
    latency_ms: u64,
    /// Everything the client sent, with the time in ms.
    log: Vec<(u64, Addr, Message)>,
    /// Everything the client reported, with the time in ms.
    events: Vec<(u64, Event)>,
}

impl Script {
    fn new(contacts: &[Contact]) -> Script {
        Script {
            contacts: contacts.to_vec(),
            behaviour: contacts
                .iter()
                .map(|c| (c.addr, Behaviour::Honest))
                .collect(),
            busy_alternates: Vec::new(),
            busy_retry_after_ms: 60_000,
            latency_ms: 5,
            log: Vec::new(),
            events: Vec::new(),
        }
    }

    fn set(&mut self, contact: &Contact, behaviour: Behaviour) {
        self.behaviour.insert(contact.addr, behaviour);
    }

    fn answer(&self, to: Addr, message: &Message) -> Option<Message> {
        let index = self.contacts.iter().position(|c| c.addr == to)?;
        let behaviour = self
            .behaviour
            .get(&to)
            .copied()
            .unwrap_or(Behaviour::Honest);
        match (behaviour, message) {
            (Behaviour::Silent, _) => None,
            (Behaviour::Busy, Message::AttachHello { .. }) => Some(Message::Busy {
                reason: BusyReason::AttachmentsFull,
                retry_after_ms: self.busy_retry_after_ms,
                alternates: BoundedVec::truncating(self.busy_alternates.iter().copied()),
            }),
            (_, Message::AttachHello { .. }) => Some(Message::AttachChallenge {
                supernode: self.contacts[index],
                challenge: [index as u8 + 1; 32],
            }),
            (_, Message::AttachProof { .. }) => Some(Message::AttachAccepted {
                keepalive_interval_s: 25,
                load_pct: 10,
                peers: BoundedVec::new(),
                ticket: None,
            }),
            (_, Message::Ping { sequence }) => Some(Message::Pong {
                sequence: *sequence,
                load_pct: 10,
                network_load_pct: 10,
                ticket: None,
            }),
            _ => None,
        }
    }

    /// Runs the client from `from_ms` to `until_ms`: answers what it sends
    /// after `latency_ms`, and wakes it at every deadline it asks for.
    fn run(&mut self, client: &mut Node, from_ms: u64, until_ms: u64) {
        let mut now_ms = from_ms;
        let mut replies: BinaryHeap<Reverse<Reply>> = BinaryHeap::new();
        let mut sequence = 0u64;
        loop {
            for transmit in client.drain_transmits() {
                let message = decode_message(&transmit.bytes);
                if let Some(reply) = self.answer(transmit.to, &message) {
                    sequence += 1;
                    let bytes = encode(&reply).unwrap();
                    replies.push(Reverse((
                        now_ms + self.latency_ms,
                        sequence,
                        transmit.to,
                        bytes,
                    )));
                }
                self.log.push((now_ms, transmit.to, message));
            }
            for event in client.drain_events() {
                self.events.push((now_ms, event));
            }
            let next_reply = replies.peek().map(|Reverse((t, ..))| *t);
            // Deadlines are in µs; wake at the first whole ms at or after one.
            let next_timer = client
                .poll_timeout()
                .map(|t| t.0.div_ceil(1_000).max(now_ms));
            let next = match (next_reply, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > until_ms {
                break;
            }
            now_ms = next;
            if next_reply == Some(now_ms) {
                let Reverse((_, _, from, bytes)) = replies.pop().unwrap();
                client.handle(at(now_ms), from, &bytes);
            } else {
                client.handle_timeout(at(now_ms));
                let deadline = client.poll_timeout();
                assert!(
                    deadline.is_none_or(|d| d > at(now_ms).instant),
                    "client still due at {now_ms} ms after handle_timeout: {deadline:?}"
                );
            }
        }
    }

    fn sent_to(&self, to: Addr, kind: fn(&Message) -> bool) -> Vec<u64> {
        self.log
            .iter()
            .filter(|(_, a, m)| *a == to && kind(m))
            .map(|(t, ..)| *t)
            .collect()
    }
}

fn is_hello(m: &Message) -> bool {
    matches!(m, Message::AttachHello { .. })
}

fn is_ping(m: &Message) -> bool {
    matches!(m, Message::Ping { .. })
}

/// Three scripted supernodes and a client that bootstraps from them.
fn client_with_three_supernodes(params: &Arc<Params>) -> (Node, Vec<Contact>) {
    let contacts: Vec<Contact> = (0..3)
        .map(|i| scripted_contact(100 + i, addr(100 + i as u32)))
        .collect();
    let client = client(params, 1, addr(1), contacts.clone(), at(0));
    (client, contacts)
}

/// The supernodes the client said hello to, by their contacts.
fn hellos(out: &[(Addr, Message)], contacts: &[Contact]) -> Vec<Contact> {
    out.iter()
        .filter(|(_, m)| is_hello(m))
        .map(|(to, _)| {
            *contacts
                .iter()
                .find(|c| c.addr == *to)
                .expect("hello to a known supernode")
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

#[test]
fn client_logs_in_with_a_signed_proof_and_publishes_presence() {
    let params = Arc::new(params());
    let (mut client, contacts) = client_with_three_supernodes(&params);
    let cert = client.identity().cert;

    // At start: a hello to two of the three supernodes, carrying the cert.
    let out = sent(&mut client);
    assert_eq!(out.len(), 2, "{out:?}");
    for (_, message) in &out {
        assert_eq!(*message, Message::AttachHello { cert });
    }
    let chosen = hellos(&out, &contacts);
    assert_ne!(chosen[0].key, chosen[1].key, "two different supernodes");
    let [a, b] = [chosen[0], chosen[1]];
    let other = *contacts
        .iter()
        .find(|c| c.key != a.key && c.key != b.key)
        .unwrap();

    // A challenge from an address the client never said hello to is ignored.
    let unexpected_before = client.stats().messages_unexpected;
    deliver(
        &mut client,
        at(5),
        other.addr,
        &Message::AttachChallenge {
            supernode: other,
            challenge: [7; 32],
        },
    );
    assert!(sent(&mut client).is_empty());
    assert_eq!(client.stats().messages_unexpected, unexpected_before + 1);

    // A challenge from A's address that names another key is refused: the
    // key is pinned by the host cache.
    let rejected_before = client.stats().signatures_rejected;
    deliver(
        &mut client,
        at(5),
        a.addr,
        &Message::AttachChallenge {
            supernode: Contact {
                addr: a.addr,
                ..other
            },
            challenge: [7; 32],
        },
    );
    assert!(sent(&mut client).is_empty());
    // So is A's key with a nonce that does not solve A's ID puzzle.
    let bad_nonce = (0..)
        .find(|n| verify_id_puzzle(&a.key, *n, PUZZLE_BITS).is_err())
        .unwrap();
    deliver(
        &mut client,
        at(5),
        a.addr,
        &Message::AttachChallenge {
            supernode: Contact {
                id_nonce: bad_nonce,
                ..a
            },
            challenge: [7; 32],
        },
    );
    assert!(sent(&mut client).is_empty());
    assert_eq!(client.stats().signatures_rejected, rejected_before + 2);

    // The right challenge gets a proof: the device key signs challenge || supernode key.
    for (supernode, challenge, time_ms) in [(a, [7u8; 32], 10), (b, [8u8; 32], 20)] {
        deliver(
            &mut client,
            at(time_ms),
            supernode.addr,
            &Message::AttachChallenge {
                supernode,
                challenge,
            },
        );
        let Message::AttachProof {
            cert: proof_cert,
            challenge: proof_challenge,
            signature,
        } = only_reply(&mut client, supernode.addr)
        else {
            panic!("expected an attach proof");
        };
        assert_eq!(proof_cert, cert);
        assert_eq!(proof_challenge, challenge);
        let device = cert.body.device_key;
        let signed = attach_proof_bytes(&challenge, &supernode.key);
        verify(
            CryptoMode::Full,
            &device,
            domain::ATTACH,
            &signed,
            &signature,
        )
        .expect("proof signature verifies");
        // The proof is bound to this supernode: it is worthless at another.
        let elsewhere = attach_proof_bytes(&challenge, &other.key);
        assert!(verify(
            CryptoMode::Full,
            &device,
            domain::ATTACH,
            &elsewhere,
            &signature
        )
        .is_err());
    }

    // Acceptance: an Attached event, and the peers it names enter the host cache.
    let peer = scripted_contact(200, addr(200));
    deliver(
        &mut client,
        at(30),
        a.addr,
        &Message::AttachAccepted {
            keepalive_interval_s: 25,
            load_pct: 5,
            peers: BoundedVec::truncating([peer]),
            ticket: None,
        },
    );
    assert_eq!(events(&mut client), vec![Event::Attached { supernode: a }]);
    assert!(client.host_cache().contains(&peer.key));
    deliver(
        &mut client,
        at(40),
        b.addr,
        &Message::AttachAccepted {
            keepalive_interval_s: 25,
            load_pct: 5,
            peers: BoundedVec::new(),
            ticket: None,
        },
    );
    assert_eq!(events(&mut client), vec![Event::Attached { supernode: b }]);
    assert_eq!(
        contacts_set(&client.attached_supernodes()),
        contacts_set(&[a, b])
    );
    assert!(
        sent(&mut client).is_empty(),
        "nothing is published before the debounce"
    );

    // Presence goes out once the debounce (from the first change) has passed.
    let publish_at_ms = 30 + params.presence_debounce_ms;
    let deadline = client.poll_timeout().expect("a publication is pending");
    assert!(
        deadline <= at(publish_at_ms).instant,
        "wake-up {deadline:?} after the debounce"
    );
    client.handle_timeout(at(publish_at_ms - 1));
    assert!(
        sent(&mut client).is_empty(),
        "published before the debounce"
    );
    client.handle_timeout(at(publish_at_ms));
    let out = sent(&mut client);
    assert_eq!(out.len(), 2, "one Publish per attached supernode: {out:?}");
    assert_eq!(
        out.iter().map(|(to, _)| *to).collect::<BTreeSet<_>>(),
        BTreeSet::from([a.addr, b.addr])
    );
    let Message::Publish { record } = &out[0].1 else {
        panic!("expected Publish, got {:?}", out[0].1);
    };
    assert_eq!(out[1].1, out[0].1, "both supernodes get the same record");
    let now = at(publish_at_ms);
    verify_presence(
        CryptoMode::Full,
        record,
        now.unix_s,
        params.clock_skew_tolerance_s,
    )
    .expect("record verifies");
    assert_eq!(record.body.cert, cert);
    assert_eq!(contacts_set(&record.body.supernodes), contacts_set(&[a, b]));
    assert!(record.body.expires_unix_s > now.unix_s);
    assert_eq!(
        events(&mut client),
        vec![Event::PresencePublished {
            sequence: record.body.sequence
        }]
    );
}

#[test]
fn client_replaces_a_supernode_that_stops_answering_pings() {
    let params = Arc::new(params());
    let (mut client, contacts) = client_with_three_supernodes(&params);
    let mut script = Script::new(&contacts);
    script.run(&mut client, 0, 5_000);
    let attached = client.attached_supernodes();
    assert_eq!(attached.len(), 2, "{:?}", script.events);
    let first_attached_ms = script
        .events
        .iter()
        .find(|(_, e)| matches!(e, Event::Attached { .. }))
        .map(|(t, _)| *t)
        .unwrap();
    let (alive, dead) = (attached[0], attached[1]);
    let spare = *contacts
        .iter()
        .find(|c| c.key != alive.key && c.key != dead.key)
        .unwrap();

    // From now on `dead` answers nothing.
    script.set(&dead, Behaviour::Silent);
    // Every `keepalive_check_every`-th keepalive is a ping; a missed pong
    // is retried with short pong timeouts: detection within
    // `keepalive_check_every` intervals plus the retries.
    let bound_ms = first_attached_ms
        + params.keepalive_check_every as u64 * params.keepalive_interval_ms
        + params.keepalive_misses_max as u64 * params.pong_timeout_ms;
    script.run(&mut client, 5_000, bound_ms + 5_000);

    let detached: Vec<(u64, Event)> = script
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Detached { .. }))
        .cloned()
        .collect();
    assert_eq!(detached.len(), 1, "{detached:?}");
    let (detached_ms, event) = &detached[0];
    assert_eq!(
        *event,
        Event::Detached {
            supernode: dead,
            reason: DetachReason::KeepaliveTimeout
        }
    );
    assert!(
        *detached_ms <= bound_ms,
        "detached at {detached_ms} ms, later than 2 x keepalive + misses x pong timeout ({bound_ms} ms)"
    );
    assert!(
        *detached_ms >= first_attached_ms + params.keepalive_interval_ms,
        "detached before any keepalive was due"
    );
    // It pinged the dead supernode before giving up on it, and never the spare.
    let pings = script.sent_to(dead.addr, is_ping);
    assert!(
        pings.len() >= 2,
        "one unanswered ping is not a failure: {pings:?}"
    );
    assert!(pings.iter().all(|t| t <= detached_ms));
    // The ticks between the checks were bare keepalives, to both supernodes.
    for supernode in [alive, dead] {
        let keepalives = script.sent_to(supernode.addr, |m| matches!(m, Message::Keepalive));
        assert!(!keepalives.is_empty(), "no keepalive to {supernode:?}");
    }
    // The replacement hello goes out at once, to the third supernode.
    let spare_hellos = script.sent_to(spare.addr, is_hello);
    assert_eq!(
        spare_hellos.first(),
        Some(detached_ms),
        "no immediate hello to the spare"
    );
    assert!(
        script
            .sent_to(dead.addr, is_hello)
            .iter()
            .all(|t| t < detached_ms),
        "retried the dead one at once"
    );
    assert_eq!(
        contacts_set(&client.attached_supernodes()),
        contacts_set(&[alive, spare])
    );
    // And the new attachment set is published.
    let last_publish = script
        .log
        .iter()
        .rev()
        .find_map(|(_, _, m)| match m {
            Message::Publish { record } => Some(record.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        contacts_set(&last_publish.body.supernodes),
        contacts_set(&[alive, spare])
    );
}

/// When both of a client's supernodes die at once (a crash wave takes 40%
/// of the supernodes, so 16% of clients lose both and nobody is left to
/// tell them), the client notices at its next ping, whenever the deaths
/// fall: an unanswered routine ping is retried after a pong timeout, not
/// after a whole keepalive interval.
#[test]
fn client_notices_at_the_next_ping_when_all_its_supernodes_die_at_once() {
    let params = Arc::new(params());
    let interval = params.keepalive_interval_ms;
    let retries = params.keepalive_misses_max as u64 * params.pong_timeout_ms;
    // Deaths spread over a whole ping cycle (two intervals), so some fall
    // just after a tick that pinged both supernodes under the old schedule.
    let cycle = params.keepalive_check_every as u64 * interval;
    let mut slowest_ms = 0;
    for step in 0..8 {
        let (mut client, contacts) = client_with_three_supernodes(&params);
        let mut script = Script::new(&contacts);
        let died_ms = 10 * interval + step * cycle / 8;
        script.run(&mut client, 0, died_ms);
        let attached = client.attached_supernodes();
        assert_eq!(attached.len(), 2, "{:?}", script.events);
        for supernode in &attached {
            script.set(supernode, Behaviour::Silent);
        }
        script.run(&mut client, died_ms, died_ms + 4 * interval);
        let noticed: Vec<u64> = script
            .events
            .iter()
            .filter(|(t, e)| {
                *t > died_ms
                    && matches!(
                        e,
                        Event::Detached {
                            reason: DetachReason::KeepaliveTimeout,
                            ..
                        }
                    )
            })
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(noticed.len(), 2, "step {step}: {:?}", script.events);
        let last = noticed.iter().max().unwrap() - died_ms;
        assert!(
            last <= cycle + retries,
            "step {step}: both noticed only {last} ms after they died (a ping \
             every {cycle} ms, retries {retries} ms)"
        );
        slowest_ms = slowest_ms.max(last);
    }
    // The bound is not loose: some death falls just after a ping.
    assert!(slowest_ms > cycle / 2 + retries, "{slowest_ms} ms");
}

/// A supernode reported down (`PeerDown` from the client's other one): the
/// client starts a spare handshake at once, hedges it with a second one
/// when it goes unanswered for `attach_hedge_ms` (a spare from the host
/// cache may itself be gone), and is back to exactly two attachments once
/// the report is settled, whether it was true or a false alarm.
#[test]
fn client_hedges_a_silent_spare_when_a_supernode_is_reported_down() {
    let params = Arc::new(params());
    let hedge_ms = params.attach_hedge_ms;
    for reported in [Behaviour::Silent, Behaviour::Honest] {
        let contacts: Vec<Contact> = (0..4)
            .map(|i| scripted_contact(100 + i, addr(100 + i as u32)))
            .collect();
        let mut client = client(&params, 1, addr(1), contacts.clone(), at(0));
        let mut script = Script::new(&contacts);
        script.run(&mut client, 0, 5_000);
        let attached = client.attached_supernodes();
        assert_eq!(attached.len(), 2, "{:?}", script.events);
        let (other, down) = (attached[0], attached[1]);
        let spares: Vec<Contact> = contacts
            .iter()
            .filter(|c| c.key != other.key && c.key != down.key)
            .copied()
            .collect();
        // Both spares are silent for now.
        script.set(&down, reported);
        for spare in &spares {
            script.set(spare, Behaviour::Silent);
        }
        let report = encode(&Message::PeerDown {
            supernode: down.key,
        })
        .unwrap();
        client.handle(at(5_000), other.addr, &report);
        script.run(&mut client, 5_000, 5_000 + hedge_ms + 100);
        let mut first_hellos: Vec<Option<u64>> = spares
            .iter()
            .map(|c| script.sent_to(c.addr, is_hello).first().copied())
            .collect();
        first_hellos.sort();
        if reported == Behaviour::Silent {
            // One spare at once, the other when the first stayed silent.
            assert_eq!(
                first_hellos,
                vec![Some(5_000), Some(5_000 + hedge_ms)],
                "{:?}",
                script.log
            );
        } else {
            // The report was false (the pong came back): no hedge.
            assert_eq!(first_hellos, vec![None, Some(5_000)], "{:?}", script.log);
        }
        assert!(
            !script.sent_to(down.addr, is_ping).is_empty(),
            "{reported:?}: the reported supernode was not checked"
        );
        // The spares come back; their retried handshakes are answered.
        for spare in &spares {
            script.set(spare, Behaviour::Honest);
        }
        script.run(&mut client, 5_000 + hedge_ms + 100, 20_000);
        let now = client.attached_supernodes();
        assert_eq!(now.len(), 2, "{reported:?}: {now:?}");
        assert!(
            now.iter().any(|c| c.key == other.key),
            "{reported:?}: {now:?}"
        );
        if reported == Behaviour::Silent {
            assert!(now.iter().all(|c| c.key != down.key), "{now:?}");
        }
        // Each surplus attachment was detached, not just forgotten.
        let detaches = script
            .log
            .iter()
            .filter(|(t, _, m)| *t >= 5_000 && matches!(m, Message::Detach { .. }))
            .count();
        assert_eq!(detaches, 1, "{reported:?}: {:?}", script.log);
    }
}

#[test]
fn unanswered_handshakes_do_not_slow_the_next_one() {
    // After a crash wave or a partition most of a host cache is dead: each
    // silent supernode costs its step timeouts, then the next is tried at
    // once (only busy answers back the client off as a whole).
    let params = Arc::new(params());
    let contacts: Vec<Contact> = (0..10)
        .map(|i| scripted_contact(400 + i, addr(400 + i as u32)))
        .collect();
    let mut client = client(&params, 1, addr(1), contacts.clone(), at(0));
    let mut script = Script::new(&contacts);
    for silent in &contacts[..8] {
        script.set(silent, Behaviour::Silent);
    }
    script.run(&mut client, 0, 60_000);
    let attached = client.attached_supernodes();
    assert_eq!(attached.len(), 2, "{:?}", script.events);
    // Two handshakes at a time, each given up after its tries: even with
    // all eight silent ones tried first, both are up by four rounds.
    let round_ms = params.attach_step_timeout_ms * params.attach_tries_max as u64;
    let attached_by = script
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Attached { .. }))
        .map(|(t, _)| *t)
        .max()
        .unwrap();
    assert!(
        attached_by <= 4 * round_ms + 1_000,
        "attached only at {attached_by} ms"
    );
    // Every new handshake starts when one was given up, never later.
    let starts: Vec<u64> = script
        .log
        .iter()
        .filter(|(_, _, m)| is_hello(m) || matches!(m, Message::AttachResume { .. }))
        .map(|(t, _, _)| *t)
        .collect();
    for t in starts {
        assert_eq!(
            t % (params.attach_step_timeout_ms),
            0,
            "a handshake began at {t} ms"
        );
    }
}

#[test]
fn client_defers_a_busy_supernode_and_attaches_elsewhere() {
    let params = Arc::new(params());
    let (mut client, contacts) = client_with_three_supernodes(&params);
    let out = sent(&mut client);
    let chosen = hellos(&out, &contacts);
    let busy = chosen[0];
    let alternates = [
        scripted_contact(300, addr(300)),
        scripted_contact(301, addr(301)),
    ];

    deliver(
        &mut client,
        at(10),
        busy.addr,
        &Message::Busy {
            reason: BusyReason::AttachmentsFull,
            retry_after_ms: 60_000,
            alternates: BoundedVec::truncating(alternates),
        },
    );
    // Alternates enter the host cache; the busy one is not tried before its hint.
    for alternate in &alternates {
        assert!(
            client.host_cache().contains(&alternate.key),
            "alternate missing from the host cache"
        );
    }
    let entry = client
        .host_cache()
        .entries()
        .iter()
        .find(|e| e.contact.key == busy.key)
        .copied()
        .unwrap();
    assert!(
        entry.not_before_s as u64 >= at(10 + 60_000).instant.as_s(),
        "busy supernode deferred only until {} s",
        entry.not_before_s
    );
    // It never attached there, so no Detached event; a new hello goes elsewhere.
    assert!(events(&mut client).is_empty());
    let out = sent(&mut client);
    let replacement: Vec<Contact> = out
        .iter()
        .filter(|(_, m)| is_hello(m))
        .map(|(to, _)| {
            contacts
                .iter()
                .chain(alternates.iter())
                .find(|c| c.addr == *to)
                .copied()
                .unwrap()
        })
        .collect();
    assert_eq!(replacement.len(), 1, "{out:?}");
    assert!(replacement[0].key != busy.key && replacement[0].key != chosen[1].key);

    // Run on with the busy one still busy: the client attaches to two others
    // and leaves the busy one alone until its retry-after has passed.
    let mut all = contacts.clone();
    all.extend(alternates);
    let mut script = Script::new(&all);
    script.set(&busy, Behaviour::Busy);
    script
        .log
        .extend(out.into_iter().map(|(to, m)| (10, to, m)));
    // Replay the outstanding hellos so the script answers them.
    for (to, cert) in [
        (chosen[1].addr, client.identity().cert),
        (replacement[0].addr, client.identity().cert),
    ] {
        let reply = script.answer(to, &Message::AttachHello { cert }).unwrap();
        deliver(&mut client, at(15), to, &reply);
    }
    script.run(&mut client, 15, 50_000);
    let attached = client.attached_supernodes();
    assert_eq!(attached.len(), 2, "{:?}", script.events);
    assert!(attached.iter().all(|c| c.key != busy.key));
    assert!(
        script.sent_to(busy.addr, is_hello).is_empty(),
        "busy supernode retried before its hint"
    );
}

#[test]
fn client_keeps_its_attachment_when_a_lookup_is_turned_away() {
    let params = Arc::new(params());
    let (mut client, contacts) = client_with_three_supernodes(&params);
    let mut script = Script::new(&contacts);
    script.run(&mut client, 0, 5_000);
    let attached = client.attached_supernodes();
    assert_eq!(attached.len(), 2);
    client.drain_events().for_each(drop);

    let account = identity(77).account();
    client.lookup(at(5_000), account);
    let (to, request) = sent(&mut client).pop().unwrap();
    let Message::LookupRequest { .. } = request else {
        panic!("expected a lookup request, got {request:?}");
    };
    // The supernode has too many lookups in flight and says so.
    deliver(
        &mut client,
        at(5_010),
        to,
        &Message::Busy {
            reason: BusyReason::LookupsFull,
            retry_after_ms: 2_000,
            alternates: BoundedVec::new(),
        },
    );
    let detached: Vec<Event> = events(&mut client)
        .into_iter()
        .filter(|e| matches!(e, Event::Detached { .. }))
        .collect();
    assert!(
        detached.is_empty(),
        "a busy lookup service dropped a healthy attachment: {detached:?}"
    );
    assert_eq!(
        contacts_set(&client.attached_supernodes()),
        contacts_set(&attached)
    );
}

/// A lookup whose answers are all lost is tried three times, alternating
/// between the two attached supernodes, then reported as failed once.
#[test]
fn an_unanswered_lookup_is_tried_three_times_across_both_supernodes() {
    let params = Arc::new(params());
    let (mut client, contacts) = client_with_three_supernodes(&params);
    let mut script = Script::new(&contacts);
    script.run(&mut client, 0, 5_000);
    assert_eq!(client.attached_supernodes().len(), 2);
    client.drain_events().for_each(drop);
    let account = identity(77).account();
    client.lookup(at(5_000), account);
    let mut tries: Vec<Addr> = Vec::new();
    let mut done = Vec::new();
    // The supernodes stay attached (pongs answered) but every lookup
    // answer is lost.
    let mut now_ms = 5_000;
    while now_ms < 5_000 + 4 * params.lookup_timeout_ms {
        for (to, message) in sent(&mut client) {
            match message {
                Message::LookupRequest { account: a, .. } if a == account => tries.push(to),
                other => {
                    if let Some(reply) = script.answer(to, &other) {
                        deliver(&mut client, at(now_ms), to, &reply);
                    }
                }
            }
        }
        done.extend(
            events(&mut client)
                .into_iter()
                .filter(|e| matches!(e, Event::LookupDone { .. })),
        );
        now_ms = client.poll_timeout().unwrap().as_ms().max(now_ms + 1);
        client.handle_timeout(at(now_ms));
    }
    assert_eq!(tries.len(), 3, "tries: {tries:?}");
    assert_ne!(tries[0], tries[1], "the second try goes elsewhere");
    assert_eq!(tries[0], tries[2], "the third goes back");
    assert!(
        matches!(done.as_slice(), [Event::LookupDone { record: None, .. }]),
        "{done:?}"
    );
}

#[test]
fn client_moves_on_when_its_supernode_detaches_it() {
    let params = Arc::new(params());
    let (mut client, contacts) = client_with_three_supernodes(&params);
    let mut script = Script::new(&contacts);
    script.run(&mut client, 0, 5_000);
    let attached = client.attached_supernodes();
    client.drain_events().for_each(drop);
    let leaving = attached[0];
    let spare = *contacts
        .iter()
        .find(|c| !attached.iter().any(|a| a.key == c.key))
        .unwrap();
    let alternate = scripted_contact(400, addr(400));
    deliver(
        &mut client,
        at(6_000),
        leaving.addr,
        &Message::Detach {
            alternates: BoundedVec::truncating([alternate]),
        },
    );
    assert_eq!(
        events(&mut client),
        vec![Event::Detached {
            supernode: leaving,
            reason: DetachReason::DetachedBySupernode
        }]
    );
    assert!(client.host_cache().contains(&alternate.key));
    let out = sent(&mut client);
    let hello_to: Vec<Addr> = out
        .iter()
        .filter(|(_, m)| is_hello(m))
        .map(|(a, _)| *a)
        .collect();
    assert_eq!(hello_to.len(), 1, "{out:?}");
    assert!(hello_to[0] == spare.addr || hello_to[0] == alternate.addr);
}

// ---------------------------------------------------------------------------
// Supernode, driven step by step
// ---------------------------------------------------------------------------

/// A supernode alone at `addr(1)`, started at 0 ms.
fn lone_supernode(params: &Arc<Params>) -> Node {
    let mut supernode = supernode(params, 50, addr(1), Vec::new(), at(0));
    assert!(supernode.is_supernode());
    assert!(
        sent(&mut supernode).is_empty(),
        "a supernode without seeds has nobody to talk to"
    );
    supernode
}

/// A client made by hand: sends exactly what the test says.
struct RawClient {
    addr: Addr,
    keypair: Keypair,
    cert: DeviceCert,
}

impl RawClient {
    fn honest(seed: u64, address: Addr) -> RawClient {
        let identity = identity(seed);
        RawClient {
            addr: address,
            keypair: identity.keypair,
            cert: identity.cert,
        }
    }

    /// A device certified by `signer` while the certificate names `account`.
    fn with_cert(
        seed: u64,
        address: Addr,
        cert_for: impl FnOnce(PublicKey) -> DeviceCert,
    ) -> RawClient {
        let keypair = Keypair::generate(CryptoMode::Full, &mut rng(seed));
        let cert = cert_for(keypair.public());
        RawClient {
            addr: address,
            keypair,
            cert,
        }
    }

    fn hello(&self, supernode: &mut Node, now: Now) -> Message {
        deliver(
            supernode,
            now,
            self.addr,
            &Message::AttachHello { cert: self.cert },
        );
        only_reply(supernode, self.addr)
    }

    /// Says hello and returns the challenge.
    fn challenge(&self, supernode: &mut Node, now: Now) -> [u8; 32] {
        match self.hello(supernode, now) {
            Message::AttachChallenge {
                supernode: contact,
                challenge,
            } => {
                assert_eq!(Some(contact), supernode.supernode_contact());
                challenge
            }
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    fn proof(&self, challenge: [u8; 32], supernode_key: &PublicKey) -> Message {
        Message::AttachProof {
            cert: self.cert,
            challenge,
            signature: self.keypair.sign(
                domain::ATTACH,
                &attach_proof_bytes(&challenge, supernode_key),
            ),
        }
    }

    /// Runs the whole handshake and returns the supernode's last answer (if any).
    fn attach(&self, supernode: &mut Node, now: Now) -> Option<Message> {
        let challenge = self.challenge(supernode, now);
        let key = supernode.supernode_contact().unwrap().key;
        deliver(supernode, now, self.addr, &self.proof(challenge, &key));
        // The answer to us (the supernode may also ask for our mail).
        sent(supernode)
            .into_iter()
            .filter(|(to, _)| *to == self.addr)
            .map(|(_, m)| m)
            .next_back()
    }
}

fn is_accepted(message: &Option<Message>) -> bool {
    matches!(message, Some(Message::AttachAccepted { .. }))
}

#[test]
fn supernode_admits_a_real_client_and_keeps_it_alive() {
    let params = Arc::new(params());
    let mut supernode = lone_supernode(&params);
    let contact = supernode.supernode_contact().unwrap();
    assert!(verify_id_puzzle(&contact.key, contact.id_nonce, PUZZLE_BITS).is_ok());
    let client_addr = addr(2);
    let mut client = client(&params, 2, client_addr, vec![contact], at(0));

    // Hello → challenge naming the supernode's own contact.
    let hello = only_reply(&mut client, contact.addr);
    assert!(is_hello(&hello));
    deliver(&mut supernode, at(10), client_addr, &hello);
    let challenge = only_reply(&mut supernode, client_addr);
    let Message::AttachChallenge {
        supernode: named, ..
    } = &challenge
    else {
        panic!("expected a challenge, got {challenge:?}");
    };
    assert_eq!(*named, contact);
    assert_eq!(
        supernode.attached_clients(),
        0,
        "a hello alone takes no slot"
    );

    // Challenge → proof → accepted.
    deliver(&mut client, at(20), contact.addr, &challenge);
    let proof = only_reply(&mut client, contact.addr);
    assert!(matches!(proof, Message::AttachProof { .. }));
    deliver(&mut supernode, at(30), client_addr, &proof);
    let accepted = only_reply(&mut supernode, client_addr);
    let Message::AttachAccepted {
        keepalive_interval_s,
        ..
    } = &accepted
    else {
        panic!("expected acceptance, got {accepted:?}");
    };
    assert_eq!(
        *keepalive_interval_s as u64,
        params.keepalive_interval_ms / 1_000
    );
    assert_eq!(supernode.attached_clients(), 1);
    deliver(&mut client, at(40), contact.addr, &accepted);
    assert_eq!(
        events(&mut client),
        vec![Event::Attached { supernode: contact }]
    );

    // Ping → pong with the same sequence.
    deliver(
        &mut supernode,
        at(50),
        client_addr,
        &Message::Ping { sequence: 41 },
    );
    let pong = only_reply(&mut supernode, client_addr);
    assert!(
        matches!(pong, Message::Pong { sequence: 41, .. }),
        "{pong:?}"
    );
    // A bare keepalive is not answered.
    deliver(&mut supernode, at(55), client_addr, &Message::Keepalive);
    assert_eq!(supernode.drain_transmits().count(), 0);

    // A stranger's ping, keepalive, publish or lookup: NotAttached, and nothing else.
    let stranger = addr(99);
    deliver(
        &mut supernode,
        at(60),
        stranger,
        &Message::Ping { sequence: 1 },
    );
    assert_eq!(only_reply(&mut supernode, stranger), Message::NotAttached);
    deliver(&mut supernode, at(60), stranger, &Message::Keepalive);
    assert_eq!(only_reply(&mut supernode, stranger), Message::NotAttached);
    deliver(
        &mut supernode,
        at(60),
        stranger,
        &Message::LookupRequest {
            query_id: 1,
            account: PublicKey([3; 32]),
        },
    );
    assert_eq!(only_reply(&mut supernode, stranger), Message::NotAttached);
    assert_eq!(supernode.attached_clients(), 1);

    // The client publishes after the debounce; the supernode stores the
    // record (it is the only replica) and answers a lookup from it.
    client.handle_timeout(at(40 + params.presence_debounce_ms));
    let publish = only_reply(&mut client, contact.addr);
    let Message::Publish { record } = &publish else {
        panic!("expected Publish, got {publish:?}");
    };
    deliver(&mut supernode, at(2_000), client_addr, &publish);
    assert!(sent(&mut supernode).is_empty());
    assert_eq!(supernode.stored_records(), 1);
    deliver(
        &mut supernode,
        at(2_100),
        client_addr,
        &Message::LookupRequest {
            query_id: 9,
            account: client.identity().account(),
        },
    );
    assert_eq!(
        only_reply(&mut supernode, client_addr),
        Message::LookupResponse {
            query_id: 9,
            record: Some(record.clone()),
            hops: 0
        }
    );

    // A client that stops pinging loses its slot after the idle timeout.
    let idle_ms = 2_100 + params.client_idle_timeout_ms + params.sweep_interval_ms;
    let mut now_ms = 2_100;
    while now_ms < idle_ms {
        now_ms = supernode.poll_timeout().unwrap().as_ms().max(now_ms + 1);
        supernode.handle_timeout(at(now_ms));
    }
    assert_eq!(supernode.attached_clients(), 0);
    deliver(
        &mut supernode,
        at(now_ms),
        client_addr,
        &Message::Ping { sequence: 42 },
    );
    assert_eq!(
        only_reply(&mut supernode, client_addr),
        Message::NotAttached
    );
}

#[test]
fn supernode_refuses_forged_and_stale_logins_and_keeps_serving() {
    let params = Arc::new(params());
    let mut supernode = lone_supernode(&params);
    let key = supernode.supernode_contact().unwrap().key;
    let now = at(1_000);

    // An honest client attaches first.
    let honest = RawClient::honest(10, addr(10));
    assert!(is_accepted(&honest.attach(&mut supernode, now)));
    assert_eq!(supernode.attached_clients(), 1);

    let refused = |supernode: &mut Node, from: Addr, proof: &Message, now: Now| {
        let rejected =
            supernode.stats().signatures_rejected + supernode.stats().messages_unexpected;
        deliver(supernode, now, from, proof);
        let out = sent(supernode);
        assert!(
            !out.iter()
                .any(|(_, m)| matches!(m, Message::AttachAccepted { .. })),
            "accepted a bad proof {proof:?}"
        );
        assert!(
            supernode.stats().signatures_rejected + supernode.stats().messages_unexpected
                > rejected,
            "a refused proof should be counted"
        );
    };

    // 1. Forged signature: right challenge, one bit of the signature flipped.
    let mallory = RawClient::honest(11, addr(11));
    let challenge = mallory.challenge(&mut supernode, now);
    let Message::AttachProof {
        cert, signature, ..
    } = mallory.proof(challenge, &key)
    else {
        unreachable!()
    };
    let mut forged = signature;
    forged.0[0] ^= 1;
    refused(
        &mut supernode,
        mallory.addr,
        &Message::AttachProof {
            cert,
            challenge,
            signature: forged,
        },
        now,
    );
    refused(
        &mut supernode,
        mallory.addr,
        &Message::AttachProof {
            cert,
            challenge,
            signature: Signature([0; 64]),
        },
        now,
    );
    // 2. A proof made for another supernode's key.
    refused(
        &mut supernode,
        mallory.addr,
        &mallory.proof(challenge, &PublicKey([9; 32])),
        now,
    );
    // 3. A challenge issued to another address (a replayed or relayed login).
    let elsewhere = RawClient {
        addr: addr(12),
        ..RawClient::honest(11, addr(12))
    };
    refused(
        &mut supernode,
        elsewhere.addr,
        &elsewhere.proof(challenge, &key),
        now,
    );
    // 4. A challenge issued for another device.
    let other_device = RawClient::honest(13, mallory.addr);
    refused(
        &mut supernode,
        mallory.addr,
        &other_device.proof(challenge, &key),
        now,
    );
    // 5. A certificate signed by an account other than the one it names.
    let victim_account = identity(14).account();
    let wrong_signer = RawClient::with_cert(15, addr(15), |device| {
        let impostor = Keypair::generate(CryptoMode::Full, &mut rng(16));
        let mut cert = issue_device_cert(&impostor, device, UNIX0 + 3_600);
        cert.body.account_key = victim_account;
        cert
    });
    let challenge = wrong_signer.challenge(&mut supernode, now);
    refused(
        &mut supernode,
        wrong_signer.addr,
        &wrong_signer.proof(challenge, &key),
        now,
    );
    // 6. An expired certificate (beyond the clock-skew tolerance).
    let expired = RawClient::with_cert(17, addr(17), |device| {
        let account = Keypair::generate(CryptoMode::Full, &mut rng(18));
        issue_device_cert(
            &account,
            device,
            UNIX0 - params.clock_skew_tolerance_s - 3_600,
        )
    });
    let challenge = expired.challenge(&mut supernode, now);
    refused(
        &mut supernode,
        expired.addr,
        &expired.proof(challenge, &key),
        now,
    );
    // 7. A stale challenge: valid in its window and the next only.
    let late = RawClient::honest(19, addr(19));
    let challenge = late.challenge(&mut supernode, now);
    let much_later = at(1_000 + 2 * params.challenge_window_s * 1_000 + 1_000);
    refused(
        &mut supernode,
        late.addr,
        &late.proof(challenge, &key),
        much_later,
    );
    // 8. The honest client's own proof replayed from another address.
    let replayed_challenge = honest.challenge(&mut supernode, now);
    let replay = honest.proof(replayed_challenge, &key);
    refused(&mut supernode, addr(20), &replay, now);

    assert_eq!(supernode.attached_clients(), 1, "a bad proof took a slot");
    // The honest client is still served, and a new honest one still gets in.
    deliver(
        &mut supernode,
        now,
        honest.addr,
        &Message::Ping { sequence: 5 },
    );
    assert!(matches!(
        only_reply(&mut supernode, honest.addr),
        Message::Pong { sequence: 5, .. }
    ));
    let newcomer = RawClient::honest(21, addr(21));
    assert!(is_accepted(&newcomer.attach(&mut supernode, now)));
    assert_eq!(supernode.attached_clients(), 2);
    // A certificate expired by less than the skew tolerance is still accepted.
    let skewed = RawClient::with_cert(22, addr(22), |device| {
        let account = Keypair::generate(CryptoMode::Full, &mut rng(23));
        issue_device_cert(&account, device, UNIX0 - params.clock_skew_tolerance_s / 2)
    });
    assert!(is_accepted(&skewed.attach(&mut supernode, now)));
}

/// Two supernodes, B joined through A, gossip shuttled until both know each other.
fn two_supernodes(params: &Arc<Params>) -> (Node, Node) {
    let mut a = supernode(params, 60, addr(1), Vec::new(), at(0));
    let mut b = supernode(
        params,
        61,
        addr(2),
        vec![a.supernode_contact().unwrap()],
        at(0),
    );
    let (a_addr, b_addr) = (addr(1), addr(2));
    for step in 0..10 {
        let now = at(step);
        for (to, message) in sent(&mut b) {
            assert_eq!(to, a_addr);
            deliver(&mut a, now, b_addr, &message);
        }
        for (to, message) in sent(&mut a) {
            assert_eq!(to, b_addr);
            deliver(&mut b, now, a_addr, &message);
        }
    }
    assert_eq!((a.membership_len(), b.membership_len()), (2, 2));
    (a, b)
}

#[test]
fn supernode_at_capacity_answers_busy_with_alternates() {
    let params = Arc::new(Params {
        supernode_capacity_attachments: 1,
        ..params()
    });
    let (mut supernode, other) = two_supernodes(&params);
    let other_contact = other.supernode_contact().unwrap();
    let now = at(100);

    let first = RawClient::honest(30, addr(30));
    assert!(is_accepted(&first.attach(&mut supernode, now)));
    let second = RawClient::honest(31, addr(31));
    let Message::Busy {
        reason,
        retry_after_ms,
        alternates,
    } = second.hello(&mut supernode, now)
    else {
        panic!("expected Busy");
    };
    assert_eq!(reason, BusyReason::AttachmentsFull);
    assert!(retry_after_ms > 0);
    assert_eq!(
        alternates.as_slice(),
        &[other_contact],
        "the alternate is the supernode with room"
    );
    // The attached client may say hello again (its slot is its own).
    assert!(matches!(
        first.hello(&mut supernode, now),
        Message::AttachChallenge { .. }
    ));

    // Two clients both challenged while a slot is free: only one gets it.

    let mut lone = lone_supernode(&params);
    let key = lone.supernode_contact().unwrap().key;
    let (x, y) = (
        RawClient::honest(32, addr(32)),
        RawClient::honest(33, addr(33)),
    );
    let (cx, cy) = (x.challenge(&mut lone, now), y.challenge(&mut lone, now));
    deliver(&mut lone, now, x.addr, &x.proof(cx, &key));
    assert!(matches!(
        only_reply(&mut lone, x.addr),
        Message::AttachAccepted { .. }
    ));
    deliver(&mut lone, now, y.addr, &y.proof(cy, &key));
    assert!(matches!(
        only_reply(&mut lone, y.addr),
        Message::Busy {
            reason: BusyReason::AttachmentsFull,
            ..
        }
    ));
    assert_eq!(lone.attached_clients(), 1);
    // Once the first leaves, the second gets in.
    deliver(
        &mut lone,
        now,
        x.addr,
        &Message::Detach {
            alternates: BoundedVec::new(),
        },
    );
    assert_eq!(lone.attached_clients(), 0);
    assert!(is_accepted(&y.attach(&mut lone, now)));
}

#[test]
fn supernode_answers_unknown_versions_and_counts_garbage() {
    let params = Arc::new(params());
    let mut supernode = lone_supernode(&params);
    let mut client = client(
        &params,
        3,
        addr(3),
        vec![supernode.supernode_contact().unwrap()],
        at(0),
    );
    client.drain_transmits().for_each(drop);
    let peer = addr(40);

    for node in [&mut supernode, &mut client] {
        for (i, datagram) in [vec![2u8, 0, 1, 2], vec![2], vec![0xff; 40]]
            .iter()
            .enumerate()
        {
            node.handle(at(10), peer, datagram);
            let out: Vec<_> = node.drain_transmits().collect();
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!(out[0].to, peer);
            assert_eq!(
                decode(&out[0].bytes),
                Ok(Frame::Versions(VersionInfo::OURS))
            );
            assert_eq!(node.stats().datagrams_unsupported_version, i as u64 + 1);
        }

        // A version frame is taken in silently (no answer, so no loop between two nodes).
        node.handle(at(10), peer, &[0, 1, 1]);
        assert_eq!(node.drain_transmits().count(), 0);

        let valid = encode(&Message::Ping { sequence: 300 }).unwrap();
        let mut trailing = valid.clone();
        trailing.push(0);
        let garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![1],
            vec![1, 0xff, 0xff, 0xff, 0xff, 0x0f],
            vec![1, 200],
            valid[..valid.len() - 1].to_vec(),
            trailing,
            vec![0, 1],
            vec![1; 20_000],
        ];
        let malformed_before = node.stats().datagrams_malformed;
        for datagram in &garbage {
            node.handle(at(20), peer, datagram);
        }
        assert_eq!(
            node.stats().datagrams_malformed,
            malformed_before + garbage.len() as u64
        );
        assert_eq!(node.drain_transmits().count(), 0, "garbage got an answer");
        assert_eq!(node.drain_events().count(), 0, "garbage caused an event");
    }
    assert_eq!(supernode.attached_clients(), 0);
}

#[test]
fn supernode_turns_lookups_away_when_too_many_are_in_flight() {
    let params = Arc::new(Params {
        lookups_in_flight_max: 1,
        ..params()
    });
    let (mut supernode, _other) = two_supernodes(&params);
    let now = at(100);
    let (x, y) = (
        RawClient::honest(34, addr(34)),
        RawClient::honest(35, addr(35)),
    );
    assert!(is_accepted(&x.attach(&mut supernode, now)));
    assert!(is_accepted(&y.attach(&mut supernode, now)));
    let account = identity(36).account();
    // X's lookup goes out to the other supernode (which, here, never answers)...
    deliver(
        &mut supernode,
        now,
        x.addr,
        &Message::LookupRequest {
            query_id: 1,
            account,
        },
    );
    let out = sent(&mut supernode);
    assert!(
        out.iter().any(|(to, m)| *to == addr(2)
            && matches!(m, Message::FindValue { key, .. } if *key == presence_key(&account))),
        "{out:?}"
    );
    // ...so Y's is turned away with LookupsFull.
    deliver(
        &mut supernode,
        now,
        y.addr,
        &Message::LookupRequest {
            query_id: 2,
            account,
        },
    );
    assert!(matches!(
        only_reply(&mut supernode, y.addr),
        Message::Busy {
            reason: BusyReason::LookupsFull,
            ..
        }
    ));
    // When X's lookup round times out, X gets its (empty) answer and room is free again.
    let later = at(100 + params.find_request_timeout_ms);
    supernode.handle_timeout(later);
    let out = sent(&mut supernode);
    assert!(
        out.iter().any(|(to, m)| *to == x.addr
            && *m
                == Message::LookupResponse {
                    query_id: 1,
                    record: None,
                    hops: 0
                }),
        "{out:?}"
    );
    deliver(
        &mut supernode,
        later,
        y.addr,
        &Message::LookupRequest {
            query_id: 3,
            account,
        },
    );
    assert!(sent(&mut supernode)
        .iter()
        .all(|(_, m)| !matches!(m, Message::Busy { .. })));
}

/// A record for `device` signed properly, with the given expiry.
fn signed_record(
    device: &DeviceIdentity,
    sequence: u64,
    issued_unix_s: u64,
    expires_unix_s: u64,
) -> PresenceRecord {
    sign_presence(
        &device.keypair,
        PresenceBody {
            cert: device.cert,
            sequence,
            issued_unix_s,
            expires_unix_s,
            supernodes: BoundedVec::new(),
        },
    )
}

#[test]
fn supernode_stores_only_valid_records_and_serves_them() {
    let params = Arc::new(params());
    let mut supernode = lone_supernode(&params);
    let now = at(1_000);
    let device = identity(37);
    let record = signed_record(&device, 5, now.unix_s, now.unix_s + 3_600);
    let key = presence_key(&device.account());

    // A tampered record is refused.
    let mut tampered = record.clone();
    tampered.body.sequence = 6;
    let rejected = supernode.stats().signatures_rejected;
    deliver(
        &mut supernode,
        now,
        addr(50),
        &Message::Store { record: tampered },
    );
    assert_eq!(supernode.stats().signatures_rejected, rejected + 1);
    assert_eq!(supernode.stored_records(), 0);

    deliver(
        &mut supernode,
        now,
        addr(50),
        &Message::Store {
            record: record.clone(),
        },
    );
    assert_eq!(supernode.stored_records(), 1);
    // An older sequence does not replace it.
    let older = signed_record(&device, 4, now.unix_s, now.unix_s + 7_200);
    deliver(
        &mut supernode,
        now,
        addr(50),
        &Message::Store { record: older },
    );
    deliver(
        &mut supernode,
        now,
        addr(51),
        &Message::FindValue { query_id: 8, key },
    );
    assert_eq!(
        only_reply(&mut supernode, addr(51)),
        Message::FindValueResponse {
            query_id: 8,
            record: Some(record.clone()),
            closer: BoundedVec::new()
        }
    );
    // Once expired (beyond the skew tolerance) it is no longer served.
    let expired_at = at((3_600 + params.clock_skew_tolerance_s + 10) * 1_000);
    deliver(
        &mut supernode,
        expired_at,
        addr(51),
        &Message::FindValue { query_id: 9, key },
    );
    let Message::FindValueResponse { record: served, .. } = only_reply(&mut supernode, addr(51))
    else {
        panic!("expected FindValueResponse");
    };
    assert_eq!(served, None);
}

#[test]
fn supernode_survives_a_record_that_never_expires() {
    let params = Arc::new(params());
    let mut supernode = lone_supernode(&params);
    let now = at(1_000);
    // Anyone can make an account and certify a device until the end of time;
    // the signatures are valid, so the record is stored.
    let account = Keypair::generate(CryptoMode::Full, &mut rng(38));
    let device = Keypair::generate(CryptoMode::Full, &mut rng(39));
    let forever = DeviceIdentity {
        cert: issue_device_cert(&account, device.public(), u64::MAX),
        keypair: device,
    };
    let record = signed_record(&forever, 1, now.unix_s, u64::MAX);
    verify_presence(
        CryptoMode::Full,
        &record,
        now.unix_s,
        params.clock_skew_tolerance_s,
    )
    .unwrap();
    deliver(
        &mut supernode,
        now,
        addr(52),
        &Message::Store {
            record: record.clone(),
        },
    );
    assert_eq!(supernode.stored_records(), 1);
    // Reading it back adds the skew tolerance to the expiry: overflow.
    let key = presence_key(&account.public());
    deliver(
        &mut supernode,
        now,
        addr(53),
        &Message::FindValue { query_id: 1, key },
    );
    assert!(matches!(
        only_reply(&mut supernode, addr(53)),
        Message::FindValueResponse {
            record: Some(_),
            ..
        }
    ));
    // So does the periodic record sweep.
    let mut now_ms = 1_000;
    while now_ms < 130_000 {
        now_ms = supernode.poll_timeout().unwrap().as_ms().max(now_ms + 1);
        supernode.handle_timeout(at(now_ms));
    }
}

#[test]
fn refuting_a_rumour_never_lowers_the_incarnation() {
    let params = Arc::new(params());
    let (mut a, _b) = two_supernodes(&params);
    let me = a.supernode_contact().unwrap();
    let rumour = MemberUpdate {
        contact: me,
        incarnation: u32::MAX,
        state: MemberState::Suspect,
        load_pct: 0,
    };
    let gossiper = scripted_contact(500, addr(500));
    let sender = alive(gossiper);
    deliver(
        &mut a,
        at(100),
        gossiper.addr,
        &Message::GossipPing {
            sequence: 1,
            sender,
            updates: BoundedVec::truncating([rumour]),
        },
    );
    let acks: Vec<MemberUpdate> = sent(&mut a)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::GossipAck { sender, .. } if sender.contact.key == me.key => Some(sender),
            _ => None,
        })
        .collect();
    assert!(!acks.is_empty());
    // A rumour implausibly far ahead of our incarnation is ignored (it is
    // forged or corrupt); either way the incarnation must never wrap.
    for me_now in acks {
        assert_eq!(me_now.state, MemberState::Alive);
        assert!(
            me_now.incarnation >= 1_000_000_000,
            "the incarnation wrapped to {}",
            me_now.incarnation
        );
    }
}

/// A probe's ping is answered; a push of failure news (sequence
/// `URGENT_PUSH_SEQUENCE`) is applied and passed on, never answered.
#[test]
fn urgent_pushes_are_not_acknowledged_but_probes_are() {
    let params = Arc::new(params());
    let (mut a, mut b) = two_supernodes(&params);
    let gossiper = scripted_contact(500, addr(500));
    // b's word about itself, as a probe's ack carries it; then b dies.
    let probe = Message::GossipPing {
        sequence: 1,
        sender: alive(gossiper),
        updates: BoundedVec::new(),
    };
    deliver(&mut b, at(50), gossiper.addr, &probe);
    let b_alive = sent(&mut b)
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::GossipAck { sender, .. } => Some(sender),
            _ => None,
        })
        .expect("b answers a probe");
    let news = MemberUpdate {
        state: MemberState::Dead,
        ..b_alive
    };
    deliver(
        &mut a,
        at(100),
        gossiper.addr,
        &Message::GossipPing {
            sequence: URGENT_PUSH_SEQUENCE,
            sender: alive(gossiper),
            updates: BoundedVec::truncating([news]),
        },
    );
    let out = sent(&mut a);
    assert!(
        !out.iter()
            .any(|(_, m)| matches!(m, Message::GossipAck { .. })),
        "an urgent push was acknowledged: {out:?}"
    );
    let passed_on = out.iter().any(|(_, m)| {
        matches!(m, Message::GossipPing { sequence, updates, .. }
            if *sequence == URGENT_PUSH_SEQUENCE && updates.as_slice().contains(&news))
    });
    assert!(passed_on, "the news was not pushed on: {out:?}");
    deliver(
        &mut a,
        at(200),
        gossiper.addr,
        &Message::GossipPing {
            sequence: 9,
            sender: alive(gossiper),
            updates: BoundedVec::new(),
        },
    );
    let acked = sent(&mut a)
        .into_iter()
        .any(|(to, m)| to == gossiper.addr && matches!(m, Message::GossipAck { sequence: 9, .. }));
    assert!(acked, "a probe's ping went unanswered");
}

/// A supernode asks members it saw die now and then for their view, in
/// case they were only across a partition. One that answers with nobody
/// new had merely restarted: the rest of its view (20 pages of 128 at
/// 2,500 supernodes) is not asked for. One that answers with strangers is
/// the far side of a healed partition, and is paged through.
#[test]
fn rediscovery_pages_through_a_lost_members_view_only_while_it_brings_news() {
    for healed in [false, true] {
        let params = Arc::new(params());
        let (mut a, _b) = two_supernodes(&params);
        let me = a.supernode_contact().unwrap();
        let lost = scripted_contact(600, addr(600));
        let lost_alive = alive(lost);
        let ping = |sequence, sender, updates: Vec<MemberUpdate>| Message::GossipPing {
            sequence,
            sender,
            updates: BoundedVec::truncating(updates),
        };
        deliver(&mut a, at(100), lost.addr, &ping(1, lost_alive, vec![]));
        let gossiper = scripted_contact(601, addr(601));
        let gossiper_alive = alive(gossiper);
        let lost_dead = MemberUpdate {
            state: MemberState::Dead,
            ..lost_alive
        };
        deliver(
            &mut a,
            at(200),
            gossiper.addr,
            &ping(2, gossiper_alive, vec![lost_dead]),
        );
        let mut now_ms = 200;
        let asked = loop {
            now_ms += 100;
            assert!(now_ms < 600_000, "the lost member was never asked");
            a.handle_timeout(at(now_ms));
            let asked = sent(&mut a).into_iter().any(|(to, message)| {
                to == lost.addr && matches!(message, Message::SyncRequest { cursor: 0, .. })
            });
            if asked {
                break now_ms;
            }
        };
        // The first page: ourselves only, or also a stranger.
        let mut members = vec![alive(me)];
        if healed {
            members.push(alive(scripted_contact(602, addr(602))));
        }
        deliver(
            &mut a,
            at(asked + 50),
            lost.addr,
            &Message::SyncResponse {
                members: BoundedVec::truncating(members),
                next_cursor: Some(2),
            },
        );
        let next_page = sent(&mut a).into_iter().any(|(to, message)| {
            to == lost.addr && matches!(message, Message::SyncRequest { cursor: 2, .. })
        });
        assert_eq!(next_page, healed, "healed partition: {healed}");
    }
}

#[test]
fn poll_transmit_yields_datagrams_in_the_order_they_were_queued() {
    let params = Arc::new(params());
    let contacts: Vec<Contact> = (0..3)
        .map(|i| scripted_contact(100 + i, addr(100 + i as u32)))
        .collect();
    let mut drained = client(&params, 1, addr(1), contacts.clone(), at(0));
    let mut polled = client(&params, 1, addr(1), contacts, at(0));
    let in_order: Vec<Addr> = drained.drain_transmits().map(|t| t.to).collect();
    let by_poll: Vec<Addr> = std::iter::from_fn(|| polled.poll_transmit())
        .map(|t| t.to)
        .collect();
    assert_eq!(in_order.len(), 2);
    assert_eq!(by_poll, in_order);
}

#[test]
fn client_stays_detached_after_shutdown() {
    let params = Arc::new(params());
    let (mut client, contacts) = client_with_three_supernodes(&params);
    let mut script = Script::new(&contacts);
    script.run(&mut client, 0, 5_000);
    assert_eq!(client.attached_supernodes().len(), 2);
    client.shutdown(at(5_000));
    let out = sent(&mut client);
    assert_eq!(out.len(), 2, "one Detach per attached supernode: {out:?}");
    assert!(out.iter().all(|(_, m)| matches!(m, Message::Detach { .. })));
    // A driver that keeps the node until its datagrams are flushed keeps
    // waking it; the node must not log in again.
    script.log.clear();
    script.run(&mut client, 5_000, 120_000);
    let hellos: Vec<&(u64, Addr, Message)> =
        script.log.iter().filter(|(_, _, m)| is_hello(m)).collect();
    assert!(
        hellos.is_empty(),
        "logged in again after shutdown: {hellos:?}"
    );
}

#[test]
fn supernode_admits_nobody_after_shutdown() {
    let params = Arc::new(params());
    let mut supernode = lone_supernode(&params);
    supernode.shutdown(at(10));
    supernode.drain_transmits().for_each(drop);
    let late = RawClient::honest(40, addr(40));
    deliver(
        &mut supernode,
        at(20),
        late.addr,
        &Message::AttachHello { cert: late.cert },
    );
    let answer = sent(&mut supernode).pop().map(|(_, m)| m);
    assert!(
        !matches!(answer, Some(Message::AttachChallenge { .. })),
        "a supernode that has left still hands out challenges"
    );
}

// ---------------------------------------------------------------------------
// A small network: real nodes, a fixed latency, one event loop
// ---------------------------------------------------------------------------

/// A datagram on the wire: (arrival µs, tie-break sequence, to node, from, bytes).
type InFlight = (u64, u64, usize, Addr, Vec<u8>);

/// Real nodes exchanging datagrams with a fixed one-way latency. Time is in
/// µs; every node shares one clock. A crashed node neither sends, receives
/// nor wakes.
struct Net {
    nodes: Vec<Node>,
    addrs: Vec<Addr>,
    crashed: Vec<bool>,
    index_of: HashMap<Addr, usize>,
    queue: BinaryHeap<Reverse<InFlight>>,
    sequence: u64,
    now_us: u64,
    latency_us: u64,
    /// Every event, with the node's index and the time in µs.
    events: Vec<(usize, u64, Event)>,
    delivered: u64,
    /// Address pairs that cannot reach each other directly (NATs that
    /// defeat hole punching), either way.
    blocked: Vec<(Addr, Addr)>,
    /// The driver's relay tables, played here: a relay's routes by
    /// (relay, source, channel), and each node's relayed paths by its
    /// virtual address and by (relay address, channel).
    relay_routes: HashMap<(usize, Addr, u16), (Addr, u16)>,
    paths: HashMap<(usize, Addr), (Addr, u16)>,
    virtuals: HashMap<(usize, Addr, u16), Addr>,
    /// Every datagram delivered, when `tap` is on: (to, seen from, bytes).
    tap: bool,
    tapped: Vec<(usize, Addr, Vec<u8>)>,
}

impl Net {
    fn new(latency_ms: u64) -> Net {
        Net {
            nodes: Vec::new(),
            addrs: Vec::new(),
            crashed: Vec::new(),
            index_of: HashMap::new(),
            queue: BinaryHeap::new(),
            sequence: 0,
            now_us: 0,
            latency_us: latency_ms * 1_000,
            events: Vec::new(),
            delivered: 0,
            blocked: Vec::new(),
            relay_routes: HashMap::new(),
            paths: HashMap::new(),
            virtuals: HashMap::new(),
            tap: false,
            tapped: Vec::new(),
        }
    }

    fn is_blocked(&self, a: Addr, b: Addr) -> bool {
        self.blocked.contains(&(a, b)) || self.blocked.contains(&(b, a))
    }

    /// Does what the node's driver would for its path commands: no
    /// reflexive address (the node offers its advertised one), sprays
    /// ignored, relay tables kept here.
    fn drive_paths(&mut self, index: usize) {
        while let Some(command) = self.nodes[index].poll_path_command() {
            let now = self.now();
            match command {
                PathCommand::Stun { server } => {
                    self.nodes[index].reflexive_found(now, server, None)
                }
                PathCommand::Spray { .. } => {}
                PathCommand::OpenRelayedPath {
                    session,
                    relay,
                    channel,
                } => {
                    // Unique: the sequence never repeats.
                    self.sequence += 1;
                    let path = Addr::from_ipv4_u32(0xf000_0000 | (self.sequence as u32), 443);
                    self.paths.insert((index, path), (relay, channel));
                    self.virtuals.insert((index, relay, channel), path);
                    self.nodes[index].relayed_path_opened(now, session, Some(path));
                }
                PathCommand::CloseRelayedPath { path } => {
                    if let Some((relay, channel)) = self.paths.remove(&(index, path)) {
                        self.virtuals.remove(&(index, relay, channel));
                    }
                }
                PathCommand::RelayBind { a, b } => {
                    self.relay_routes.insert((index, a.0, a.1), b);
                    self.relay_routes.insert((index, b.0, b.1), a);
                }
                PathCommand::RelayUnbind { a } => {
                    if let Some(b) = self.relay_routes.remove(&(index, a.0, a.1)) {
                        self.relay_routes.remove(&(index, b.0, b.1));
                    }
                }
                PathCommand::RelayReset => {
                    self.relay_routes.retain(|(relay, ..), _| *relay != index);
                    self.paths.retain(|(node, _), _| *node != index);
                    self.virtuals.retain(|(node, ..), _| *node != index);
                }
            }
        }
    }

    /// Where a datagram from `from` (node `index`) to `to` arrives, and as
    /// coming from which address: straight, or through a relayed path.
    fn route(&self, index: usize, from: Addr, to: Addr) -> Option<(usize, Addr)> {
        let Some(&(relay_addr, channel)) = self.paths.get(&(index, to)) else {
            let &peer = self.index_of.get(&to)?;
            return (!self.is_blocked(from, to)).then_some((peer, from));
        };
        let &relay = self.index_of.get(&relay_addr)?;
        if self.crashed[relay] {
            return None;
        }
        let &(peer_addr, peer_channel) = self.relay_routes.get(&(relay, from, channel))?;
        let &peer = self.index_of.get(&peer_addr)?;
        let &seen_as = self.virtuals.get(&(peer, relay_addr, peer_channel))?;
        Some((peer, seen_as))
    }

    fn now(&self) -> Now {
        Now {
            instant: Instant(self.now_us),
            unix_s: UNIX0 + self.now_us / 1_000_000,
        }
    }

    fn add(&mut self, node: Node, address: Addr) -> usize {
        let index = self.nodes.len();
        self.nodes.push(node);
        self.addrs.push(address);
        self.crashed.push(false);
        self.index_of.insert(address, index);
        self.flush(index);
        index
    }

    fn crash(&mut self, index: usize) {
        self.crashed[index] = true;
        self.nodes[index].crash();
    }

    /// Brings a crashed node back (what it keeps on disk survives).
    fn restart(&mut self, index: usize) {
        self.crashed[index] = false;
        let now = self.now();
        self.nodes[index].restart(now);
        self.flush(index);
    }

    fn flush(&mut self, index: usize) {
        self.drive_paths(index);
        let from = self.addrs[index];
        let at_us = self.now_us + self.latency_us;
        let transmits: Vec<_> = self.nodes[index].drain_transmits().collect();
        for transmit in transmits {
            if let Some((to, seen_as)) = self.route(index, from, transmit.to) {
                self.sequence += 1;
                self.queue
                    .push(Reverse((at_us, self.sequence, to, seen_as, transmit.bytes)));
            }
        }
        let now_us = self.now_us;
        let events: Vec<_> = self.nodes[index].drain_events().collect();
        self.events
            .extend(events.into_iter().map(|e| (index, now_us, e)));
    }

    fn next_timer_us(&self) -> Option<u64> {
        (0..self.nodes.len())
            .filter(|i| !self.crashed[*i])
            .filter_map(|i| self.nodes[i].poll_timeout())
            .map(|t| t.0.max(self.now_us))
            .min()
    }

    fn run_until_ms(&mut self, end_ms: u64) {
        let end_us = end_ms * 1_000;
        loop {
            let next_message = self.queue.peek().map(|Reverse((t, ..))| *t);
            let next_timer = self.next_timer_us();
            let next = match (next_message, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(u64::MAX),
            };
            if next > end_us {
                self.now_us = end_us;
                return;
            }
            self.now_us = next;
            let now = self.now();
            if next_message == Some(next) {
                let Reverse((_, _, to, from, bytes)) = self.queue.pop().unwrap();
                let from_crashed = self.index_of.get(&from).is_some_and(|i| self.crashed[*i]);
                if self.crashed[to] || from_crashed {
                    continue;
                }
                self.delivered += 1;
                if self.tap {
                    self.tapped.push((to, from, bytes.clone()));
                }
                self.nodes[to].handle(now, from, &bytes);
                self.flush(to);
                continue;
            }
            for index in 0..self.nodes.len() {
                if self.crashed[index] {
                    continue;
                }
                if self.nodes[index]
                    .poll_timeout()
                    .is_some_and(|t| t <= now.instant)
                {
                    self.nodes[index].handle_timeout(now);
                    let deadline = self.nodes[index].poll_timeout();
                    assert!(
                        deadline.is_none_or(|d| d > now.instant),
                        "node {index} still due after handle_timeout at {} µs: {deadline:?}",
                        self.now_us
                    );
                    self.flush(index);
                }
            }
        }
    }

    /// Runs a lookup from `asker` to completion and returns its record.
    fn lookup(
        &mut self,
        params: &Params,
        asker: usize,
        account: PublicKey,
    ) -> Option<PresenceRecord> {
        let started = self.events.len();
        let now = self.now();
        self.nodes[asker].lookup(now, account);
        self.flush(asker);
        let end_ms = now.instant.as_ms() + 3 * params.lookup_timeout_ms + 1_000;
        self.run_until_ms(end_ms);
        let done: Vec<Option<PresenceRecord>> = self.events[started..]
            .iter()
            .filter_map(|(i, _, e)| match e {
                Event::LookupDone {
                    account: a, record, ..
                } if *i == asker && *a == account => Some(record.as_deref().cloned()),
                _ => None,
            })
            .collect();
        assert_eq!(done.len(), 1, "one LookupDone per lookup: {done:?}");
        done.into_iter().next().unwrap()
    }
}

const NET_SUPERNODES: usize = 6;

/// `count` supernodes at hosts (and seeds) `base`, `base + 1`, …, all
/// joined through the first.
fn joined_supernodes(params: &Arc<Params>, count: usize, base: u32) -> (Net, Vec<Contact>) {
    let mut net = Net::new(10);
    let mut contacts: Vec<Contact> = Vec::new();
    for i in 0..count as u32 {
        let address = addr(base + i);
        let seeds = contacts.first().copied().into_iter().collect();
        let node = supernode(params, (base + i) as u64, address, seeds, net.now());
        contacts.push(node.supernode_contact().unwrap());
        net.add(node, address);
    }
    (net, contacts)
}
const NET_CLIENTS: usize = 10;

/// Six supernodes (all joined through the first) and ten clients that come
/// up over the first two seconds, each knowing every supernode.
fn small_network(params: &Arc<Params>) -> (Net, Vec<Contact>, Vec<usize>) {
    let (mut net, supernode_contacts) = joined_supernodes(params, NET_SUPERNODES, 1_000);
    let mut clients = Vec::new();
    for i in 0..NET_CLIENTS {
        net.run_until_ms(200 * i as u64);
        let address = addr(2_000 + i as u32);
        let node = client(
            params,
            2_000 + i as u64,
            address,
            supernode_contacts.clone(),
            net.now(),
        );
        clients.push(net.add(node, address));
    }
    (net, supernode_contacts, clients)
}

/// `count` clients that know only the first two supernodes, so that every
/// one attaches to both.
fn clients_of_the_first_two(
    net: &mut Net,
    params: &Arc<Params>,
    contacts: &[Contact],
    count: u32,
) -> Vec<usize> {
    (0..count)
        .map(|i| {
            let address = addr(3_000 + i);
            let node = client(
                params,
                3_000 + i as u64,
                address,
                contacts[..2].to_vec(),
                net.now(),
            );
            net.add(node, address)
        })
        .collect()
}

/// A supernode that leaves names alternates to each client from its own
/// random sample of the view: one list for all sent every client to the
/// same few supernodes at once (a busy storm after every graceful leave).
#[test]
fn a_leaving_supernode_spreads_its_clients_over_many_alternates() {
    let params = Arc::new(params());
    let (mut net, contacts) = joined_supernodes(&params, 60, 1_000);
    net.run_until_ms(5_000);
    let clients = clients_of_the_first_two(&mut net, &params, &contacts, 24);
    net.run_until_ms(15_000);
    let leaving = 0;
    let attached_here = clients
        .iter()
        .filter(|&&c| {
            net.nodes[c]
                .attached_supernodes()
                .iter()
                .any(|a| a.key == contacts[0].key)
        })
        .count();
    assert!(
        attached_here >= 20,
        "only {attached_here} clients on the supernode"
    );
    let now = net.now();
    net.nodes[leaving].shutdown(now);
    let firsts: BTreeSet<[u8; 32]> = net.nodes[leaving]
        .drain_transmits()
        .filter_map(|t| match decode_message(&t.bytes) {
            Message::Detach { alternates } => Some(alternates.first().expect("alternates").key.0),
            _ => None,
        })
        .collect();
    assert!(
        firsts.len() >= 4,
        "{attached_here} clients were told to go first to only {} supernodes",
        firsts.len()
    );
}

/// A supernode that leaves gracefully drains first (make before break):
/// its clients attach elsewhere while it still serves them, so none is
/// ever below its target, and it goes as soon as the last one has moved.
#[test]
fn a_leaving_supernode_keeps_its_clients_whole_until_they_have_moved() {
    let params = Arc::new(params());
    let (mut net, contacts) = joined_supernodes(&params, 20, 1_000);
    net.run_until_ms(5_000);
    let clients = clients_of_the_first_two(&mut net, &params, &contacts, 16);
    net.run_until_ms(15_000);
    let leaving = 0;
    assert_eq!(net.nodes[leaving].attached_clients(), clients.len());
    let started_ms = net.now_us / 1_000;
    let now = net.now();
    net.nodes[leaving].leave(now);
    net.flush(leaving);
    assert!(!net.nodes[leaving].is_closed(), "it drains first");
    let serving = |net: &Net, c: &Contact| {
        let index = net.index_of[&c.addr];
        !net.nodes[index].is_closed() && !net.crashed[index]
    };
    let mut left_ms = None;
    for step in 1..=(params.drain_max_ms / 20 + 10) {
        net.run_until_ms(started_ms + step * 20);
        for &c in &clients {
            let attached = net.nodes[c].attached_supernodes();
            let live = attached.iter().filter(|s| serving(&net, s)).count();
            assert!(
                live >= params.attachments_target,
                "client {c} has {live} serving supernodes at +{} ms: {attached:?}",
                step * 20
            );
        }
        if left_ms.is_none() {
            left_ms = net
                .events
                .iter()
                .find(|(i, _, e)| *i == leaving && *e == Event::Left)
                .map(|(_, at_us, _)| at_us / 1_000 - started_ms);
        }
    }
    let left_ms = left_ms.expect("the leave finished");
    assert!(
        left_ms < params.drain_max_ms,
        "it waited out the drain ({left_ms} ms): some client did not move"
    );
    assert!(net.nodes[leaving].is_closed());
    for &c in &clients {
        let attached = net.nodes[c].attached_supernodes();
        assert_eq!(attached.len(), params.attachments_target, "client {c}");
        assert!(!attached.contains(&contacts[leaving]), "client {c}");
    }
}

/// Every live client is attached to the target number of distinct live supernodes.
fn assert_everyone_attached(
    net: &Net,
    params: &Params,
    live_supernodes: &[Contact],
    clients: &[usize],
) {
    for &index in clients {
        let attached = net.nodes[index].attached_supernodes();
        assert_eq!(
            attached.len(),
            params.attachments_target,
            "client {index} is attached to {attached:?}"
        );
        assert_eq!(
            contacts_set(&attached).len(),
            attached.len(),
            "client {index} attached twice to one"
        );
        assert!(
            attached.iter().all(|c| live_supernodes.contains(c)),
            "client {index} is attached to a dead supernode: {attached:?}"
        );
    }
    for (index, node) in net.nodes.iter().enumerate() {
        assert!(
            node.attached_clients() <= params.supernode_capacity_attachments,
            "supernode {index} over capacity"
        );
    }
}

#[test]
fn small_network_attaches_everyone_and_finds_presence() {
    let params = Arc::new(params());
    let (mut net, supernode_contacts, clients) = small_network(&params);
    net.run_until_ms(60_000);

    for index in 0..NET_SUPERNODES {
        assert_eq!(
            net.nodes[index].membership_len(),
            NET_SUPERNODES,
            "supernode {index} does not know every supernode"
        );
    }
    assert_everyone_attached(&net, &params, &supernode_contacts, &clients);
    let attachments: usize = (0..NET_SUPERNODES)
        .map(|i| net.nodes[i].attached_clients())
        .sum();
    assert_eq!(
        attachments,
        NET_CLIENTS * params.attachments_target,
        "supernodes and clients disagree"
    );
    let detached = net
        .events
        .iter()
        .filter(|(_, _, e)| matches!(e, Event::Detached { .. }))
        .count();
    assert_eq!(detached, 0, "a healthy network detached someone");
    // Gossip ran: at least one probe a second per supernode.
    assert!(
        net.delivered > (NET_SUPERNODES * 60) as u64,
        "only {} datagrams delivered",
        net.delivered
    );

    // Client 0 looks up client 7, and an account nobody uses.
    let (asker, target) = (clients[0], clients[7]);
    let account = net.nodes[target].identity().account();
    let record = net
        .lookup(&params, asker, account)
        .expect("no record found for an online client");
    assert_eq!(record.body.cert.body.account_key, account);
    verify_presence(
        CryptoMode::Full,
        &record,
        net.now().unix_s,
        params.clock_skew_tolerance_s,
    )
    .unwrap();
    assert_eq!(
        contacts_set(&record.body.supernodes),
        contacts_set(&net.nodes[target].attached_supernodes())
    );
    let nobody = identity(9_999).account();
    assert_eq!(
        net.lookup(&params, asker, nobody),
        None,
        "an unknown account must come back empty"
    );
}

#[test]
fn small_network_recovers_from_a_supernode_crash() {
    let params = Arc::new(params());
    let (mut net, supernode_contacts, clients) = small_network(&params);
    net.run_until_ms(60_000);
    assert_everyone_attached(&net, &params, &supernode_contacts, &clients);

    // Crash the supernode with the most clients.
    let victim = (0..NET_SUPERNODES)
        .max_by_key(|i| net.nodes[*i].attached_clients())
        .unwrap();
    let orphans: Vec<usize> = clients
        .iter()
        .copied()
        .filter(|c| {
            net.nodes[*c]
                .attached_supernodes()
                .contains(&supernode_contacts[victim])
        })
        .collect();
    assert!(!orphans.is_empty());
    net.crash(victim);
    let crashed_at_ms = 60_000;
    let bound_ms = crashed_at_ms
        + params.keepalive_interval_ms
        + params.keepalive_misses_max as u64 * params.pong_timeout_ms
        + 5_000;
    net.run_until_ms(bound_ms);

    let live: Vec<Contact> = supernode_contacts
        .iter()
        .copied()
        .filter(|c| *c != supernode_contacts[victim])
        .collect();
    assert_everyone_attached(&net, &params, &live, &clients);
    for index in 0..NET_SUPERNODES {
        if index != victim {
            assert_eq!(
                net.nodes[index].membership_len(),
                NET_SUPERNODES - 1,
                "supernode {index} still counts the dead one"
            );
        }
    }
    // Only the orphans lost an attachment, each exactly one.
    let detached: Vec<usize> = net
        .events
        .iter()
        .filter(|(_, _, e)| matches!(e, Event::Detached { .. }))
        .map(|(i, _, _)| *i)
        .collect();
    let mut expected = orphans.clone();
    expected.sort_unstable();
    let mut got = detached.clone();
    got.sort_unstable();
    assert_eq!(
        got, expected,
        "detached clients differ from the dead supernode's clients"
    );

    // An orphan's presence names its new supernodes and is still found.
    let orphan = orphans[0];
    let asker = *clients
        .iter()
        .find(|c| !orphans.contains(c))
        .unwrap_or(&clients[0]);
    let account = net.nodes[orphan].identity().account();
    let record = net
        .lookup(&params, asker, account)
        .expect("an orphaned client's record was lost");
    assert_eq!(
        contacts_set(&record.body.supernodes),
        contacts_set(&net.nodes[orphan].attached_supernodes())
    );
}

// ---------------------------------------------------------------------------
// Overload control, back-off and resumption tickets
// ---------------------------------------------------------------------------

impl RawClient {
    /// A resume at the supernode with key `supernode_key`, signed by this device.
    fn resume(&self, ticket: &Ticket, counter: u64, supernode_key: &PublicKey) -> Message {
        Message::AttachResume {
            ticket: *ticket,
            counter,
            signature: self.keypair.sign(
                domain::RESUME,
                &resume_proof_bytes(supernode_key, ticket, counter),
            ),
        }
    }
}

/// Full login of `client` at `supernode`; returns the ticket it got.
fn ticket_from(client: &RawClient, supernode: &mut Node, now: Now) -> Ticket {
    match client.attach(supernode, now) {
        Some(Message::AttachAccepted {
            ticket: Some(ticket),
            ..
        }) => ticket,
        other => panic!("expected acceptance with a ticket, got {other:?}"),
    }
}

/// Delivers `message` and says whether the supernode fell back to a full
/// login (a challenge) without admitting anyone.
fn falls_back_to_login(supernode: &mut Node, now: Now, from: Addr, message: &Message) -> bool {
    let attached = supernode.attached_clients();
    deliver(supernode, now, from, message);
    let reply = only_reply(supernode, from);
    matches!(reply, Message::AttachChallenge { .. }) && supernode.attached_clients() == attached
}

#[test]
fn a_ticket_from_one_supernode_resumes_at_another_in_one_round_trip() {
    let params = Arc::new(params());
    let (mut a, mut b) = two_supernodes(&params);
    let now = at(100);
    let client = RawClient::honest(40, addr(40));
    let ticket = ticket_from(&client, &mut a, now);
    assert_eq!(ticket.body.issuer, a.supernode_contact().unwrap());
    assert_eq!(ticket.body.device_key, client.keypair.public());
    assert_eq!(ticket.body.account_key, client.cert.body.account_key);
    assert_eq!(ticket.body.addr, client.addr);
    assert!(ticket.body.expires_unix_s - ticket.body.issued_unix_s <= params.ticket_ttl_s);

    // One datagram each way at b, which never saw this client.
    let b_contact = b.supernode_contact().unwrap();
    deliver(
        &mut b,
        now,
        client.addr,
        &client.resume(&ticket, 1, &b_contact.key),
    );
    let Message::AttachAccepted {
        ticket: Some(renewed),
        ..
    } = answer_to(&mut b, client.addr)
    else {
        panic!("the resume was not accepted");
    };
    assert_eq!(renewed.body.issuer, b_contact);
    assert_eq!(b.attached_clients(), 1);
}

#[test]
fn forged_expired_replayed_misdirected_and_revoked_resumes_are_refused() {
    let params = Arc::new(params());
    let (mut a, mut b) = two_supernodes(&params);
    let now = at(100);
    let client = RawClient::honest(41, addr(41));
    let ticket = ticket_from(&client, &mut a, now);
    let (a_key, b_key) = (
        a.supernode_contact().unwrap().key,
        b.supernode_contact().unwrap().key,
    );

    // Forged: fields changed after the issuer signed (a longer life, another device).
    let mut longer = ticket;
    longer.body.expires_unix_s += 1_000_000;
    assert!(falls_back_to_login(
        &mut b,
        now,
        client.addr,
        &client.resume(&longer, 1, &b_key)
    ));
    let thief = RawClient::honest(42, client.addr);
    let mut stolen = ticket;
    stolen.body.device_key = thief.keypair.public();
    assert!(falls_back_to_login(
        &mut b,
        now,
        client.addr,
        &thief.resume(&stolen, 1, &b_key)
    ));
    // A real ticket with somebody else's proof.
    assert!(falls_back_to_login(
        &mut b,
        now,
        client.addr,
        &thief.resume(&ticket, 1, &b_key)
    ));
    // Issued by a key that solves the puzzle but is nobody's supernode.
    let rogue = Keypair::generate(CryptoMode::Full, &mut rng(43));
    let (id_nonce, _) = solve_id_puzzle(&rogue.public(), PUZZLE_BITS, 0);
    let minted = sign_ticket(
        &rogue,
        TicketBody {
            issuer: Contact {
                key: rogue.public(),
                id_nonce,
                addr: addr(43),
            },
            ..ticket.body
        },
    );
    assert!(falls_back_to_login(
        &mut b,
        now,
        client.addr,
        &client.resume(&minted, 1, &b_key)
    ));
    // Misdirected: signed for a, shown to b; or shown from another address.
    assert!(falls_back_to_login(
        &mut b,
        now,
        client.addr,
        &client.resume(&ticket, 1, &a_key)
    ));
    assert!(falls_back_to_login(
        &mut b,
        now,
        addr(99),
        &client.resume(&ticket, 1, &b_key)
    ));
    // Expired (beyond the skew tolerance).
    let late_s = ticket.body.expires_unix_s - UNIX0 + params.clock_skew_tolerance_s + 1;
    let late = at(late_s * 1_000);
    assert!(falls_back_to_login(
        &mut b,
        late,
        client.addr,
        &client.resume(&ticket, 1, &b_key)
    ));
    assert_eq!(b.attached_clients(), 0);

    // The genuine resume works once; a replay of it, or an older counter,
    // does not; a newer counter does.
    let genuine = client.resume(&ticket, 5, &b_key);
    deliver(&mut b, now, client.addr, &genuine);
    assert!(matches!(
        answer_to(&mut b, client.addr),
        Message::AttachAccepted { .. }
    ));
    assert!(falls_back_to_login(&mut b, now, client.addr, &genuine));
    assert!(falls_back_to_login(
        &mut b,
        now,
        client.addr,
        &client.resume(&ticket, 4, &b_key)
    ));
    deliver(&mut b, now, client.addr, &client.resume(&ticket, 6, &b_key));
    assert!(matches!(
        answer_to(&mut b, client.addr),
        Message::AttachAccepted { .. }
    ));

    // Revoked: the attachment goes, and neither a resume nor a full login
    // brings the device back.
    b.revoke_device(client.keypair.public());
    assert_eq!(b.attached_clients(), 0);
    deliver(&mut b, now, client.addr, &client.resume(&ticket, 7, &b_key));
    assert!(sent(&mut b).is_empty(), "a revoked device gets no answer");
    assert!(!is_accepted(&client.attach(&mut b, now)));
    assert_eq!(b.attached_clients(), 0);
    assert!(b.stats().revoked_refused >= 2);
}

#[test]
fn login_budget_turns_new_logins_away_first_and_keeps_a_reserve_for_resumes() {
    let params = Arc::new(Params {
        handshakes_per_s: 1,
        handshake_burst: 4,
        login_cost_tokens: 2,
        login_reserve_tokens: 2,
        ..params()
    });
    let (mut a, mut b) = two_supernodes(&params);
    let now = at(100);
    let resuming = RawClient::honest(50, addr(50));
    let ticket = ticket_from(&resuming, &mut a, now);

    // The first new login takes two tokens; the second would eat the reserve.
    let first = RawClient::honest(51, addr(51));
    assert!(is_accepted(&first.attach(&mut b, now)));
    let second = RawClient::honest(52, addr(52));
    let Message::Busy {
        reason,
        retry_after_ms,
        alternates,
    } = second.hello(&mut b, now)
    else {
        panic!("expected Busy");
    };
    assert_eq!(reason, BusyReason::HandshakesFull);
    // Four tokens are needed, two are there, one comes per second.
    assert!(retry_after_ms >= 1_900, "retry after {retry_after_ms} ms");
    assert_eq!(alternates.as_slice(), &[a.supernode_contact().unwrap()]);
    // A resuming client still gets in, on the reserve.
    let b_key = b.supernode_contact().unwrap().key;
    deliver(
        &mut b,
        now,
        resuming.addr,
        &resuming.resume(&ticket, 1, &b_key),
    );
    assert!(matches!(
        answer_to(&mut b, resuming.addr),
        Message::AttachAccepted { .. }
    ));
    // Once the bucket refills, the new login is served.
    assert!(is_accepted(
        &second.attach(&mut b, at(100 + retry_after_ms as u64))
    ));
    assert_eq!(b.attached_clients(), 3);
}

/// `count` clients whose three supernodes all answer busy; returns, per
/// client, the times (ms) at which it said hello.
fn hello_times_under_busy(params: &Arc<Params>, count: u64, until_ms: u64) -> Vec<Vec<u64>> {
    let contacts: Vec<Contact> = (0..3)
        .map(|i| scripted_contact(100 + i, addr(100 + i as u32)))
        .collect();
    (0..count)
        .map(|seed| {
            let mut client = client(params, 1_000 + seed, addr(1), contacts.clone(), at(0));
            let mut script = Script::new(&contacts);
            script.busy_retry_after_ms = 2_000;
            for contact in &contacts {
                script.set(contact, Behaviour::Busy);
            }
            script.run(&mut client, 0, until_ms);
            let mut times: Vec<u64> = contacts
                .iter()
                .flat_map(|c| script.sent_to(c.addr, is_hello))
                .collect();
            times.sort_unstable();
            times
        })
        .collect()
}

#[test]
fn clients_turned_away_together_back_off_and_come_back_spread_out() {
    let params = Arc::new(params());
    let runs = hello_times_under_busy(&params, 30, 300_000);
    let max_ms = params.retry_backoff_max_ms;
    for times in &runs {
        // Exponential up to the cap: the waits between rounds of attempts
        // start short and settle around the cap (jittered 0.5–1.5×).
        let mut rounds = times.clone();
        rounds.dedup();
        let gaps: Vec<u64> = rounds.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 8, "{} rounds in 5 minutes", rounds.len());
        let mean = |g: &[u64]| g.iter().sum::<u64>() / g.len() as u64;
        let (early, late) = (mean(&gaps[..3]), mean(&gaps[gaps.len() / 2..]));
        assert!(early < late, "waits do not grow: {gaps:?}");
        assert!(
            late >= max_ms / 2 && late <= max_ms * 3 / 2 + 3_000,
            "late waits average {late} ms against a cap of {max_ms} ms: {gaps:?}"
        );
    }
    // Jitter: the clients' sixth attempts are spread over seconds, not synchronized.
    let sixth: BTreeSet<u64> = runs.iter().filter_map(|t| t.get(5).copied()).collect();
    assert!(sixth.len() >= 25, "only {} distinct times", sixth.len());
    let spread = sixth.last().unwrap() - sixth.first().unwrap();
    assert!(spread >= 2_000, "sixth attempts within {spread} ms");

    // The naive baseline retries on a fixed clock: everyone together, for ever.
    let naive = Arc::new(Params {
        naive: true,
        ..params.as_ref().clone()
    });
    let runs = hello_times_under_busy(&naive, 30, 300_000);
    let sixth: BTreeSet<u64> = runs.iter().filter_map(|t| t.get(5).copied()).collect();
    assert!(sixth.len() <= 2, "naive clients spread: {sixth:?}");
    assert!(
        runs[0].len() > 60,
        "naive retried only {} times",
        runs[0].len()
    );
}

// ---------------------------------------------------------------------------
// Store-and-forward messaging
// ---------------------------------------------------------------------------

/// Messages node `index` handed to its application, as (sender, seq, payload).
fn received(net: &Net, index: usize) -> Vec<(PublicKey, u64, Vec<u8>)> {
    net.events
        .iter()
        .filter(|(i, ..)| *i == index)
        .filter_map(|(_, _, e)| match e {
            Event::MessageReceived {
                from_device,
                seq,
                payload,
                ..
            } => Some((*from_device, *seq, payload.clone())),
            _ => None,
        })
        .collect()
}

fn acked_up_to(net: &Net, index: usize, to: &PublicKey) -> u64 {
    net.events
        .iter()
        .filter(|(i, ..)| *i == index)
        .filter_map(|(_, _, e)| match e {
            Event::MessageAcked {
                to_device,
                up_to_seq,
            } if to_device == to => Some(*up_to_seq),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// A data envelope from node `from` to node `to`, signed as `from` would.
fn data_envelope(net: &Net, from: usize, to: usize, seq: u64, payload: u8) -> Envelope {
    let (sender, recipient) = (net.nodes[from].identity(), net.nodes[to].identity());
    sign_envelope(
        &sender.keypair,
        EnvelopeBody {
            from_device: sender.keypair.public(),
            from_account: sender.account(),
            to_device: recipient.keypair.public(),
            to_account: recipient.account(),
            seq,
            sent_unix_s: UNIX0,
            kind: EnvelopeKind::Data {
                payload: BoundedVec::truncating([payload]),
            },
        },
    )
}

fn send(net: &mut Net, from: usize, to: usize, payload: u8) -> u64 {
    let (device, account) = (
        net.nodes[to].identity().keypair.public(),
        net.nodes[to].identity().account(),
    );
    let now = net.now();
    let seq = net.nodes[from]
        .send_message(now, device, account, &[payload])
        .expect("queued");
    net.flush(from);
    seq
}

#[test]
fn messages_reach_online_and_offline_devices_once_in_order_and_are_acked() {
    let params = Arc::new(params());
    let (mut net, _, clients) = small_network(&params);
    net.run_until_ms(60_000);
    let (a, b) = (clients[0], clients[5]);
    let (a_device, b_device) = (
        net.nodes[a].identity().keypair.public(),
        net.nodes[b].identity().keypair.public(),
    );

    // Online: delivered at once, acknowledged end to end, outbox empty.
    for payload in 1..=3 {
        assert_eq!(send(&mut net, a, b, payload), payload as u64);
    }
    net.run_until_ms(65_000);
    let expected: Vec<(PublicKey, u64, Vec<u8>)> =
        (1..=3).map(|i| (a_device, i as u64, vec![i])).collect();
    assert_eq!(received(&net, b), expected);
    assert_eq!(acked_up_to(&net, a, &b_device), 3);
    assert_eq!(net.nodes[a].outbox_len(), 0);

    // Offline: the mailbox holds them, the outbox keeps them until acked.
    net.crash(b);
    for payload in 4..=8 {
        send(&mut net, a, b, payload);
    }
    net.run_until_ms(120_000);
    assert_eq!(received(&net, b).len(), 3, "delivered to a crashed device");
    assert_eq!(net.nodes[a].outbox_len(), 5);
    let stored: usize = (0..NET_SUPERNODES)
        .map(|i| net.nodes[i].mailbox_len())
        .sum();
    assert!(stored >= 5, "mailboxes hold {stored} envelopes");

    // Back: everything arrives once, in order, and the sender hears of it.
    net.restart(b);
    net.run_until_ms(200_000);
    let expected: Vec<(PublicKey, u64, Vec<u8>)> =
        (1..=8).map(|i| (a_device, i as u64, vec![i])).collect();
    assert_eq!(received(&net, b), expected);
    assert_eq!(acked_up_to(&net, a, &b_device), 8);
    assert_eq!(net.nodes[a].outbox_len(), 0);
    let stored: usize = (0..NET_SUPERNODES)
        .map(|i| net.nodes[i].mailbox_len())
        .sum();
    assert_eq!(stored, 0, "delivered envelopes left in mailboxes");

    // A re-sent old message after another restart: not delivered again,
    // but acknowledged again (the sender may have missed the first ack).
    net.crash(b);
    net.restart(b);
    net.run_until_ms(230_000);
    let old = data_envelope(&net, a, b, 2, 2);
    let via = net.nodes[b].attached_supernodes()[0].addr;
    let now = net.now();
    deliver(
        &mut net.nodes[b],
        now,
        via,
        &Message::MailDeliver { envelope: old },
    );
    let out = sent(&mut net.nodes[b]);
    assert!(
        matches!(
            &out[..],
            [
                (_, Message::MailPut { envelope: ack }),
                (_, Message::MailDone { .. })
            ] if ack.body.kind == EnvelopeKind::Ack { up_to_seq: 8 }
        ),
        "{out:?}"
    );
    net.flush(b);
    assert_eq!(
        received(&net, b).len(),
        8,
        "a duplicate reached the application"
    );

    // Far past a gap: not kept, but released from the mailbox (left there
    // it would block the window for every other sender; the sender's
    // outbox still holds it).
    let far = data_envelope(&net, a, b, 8 + 65 + 1, 9);
    let now = net.now();
    deliver(
        &mut net.nodes[b],
        now,
        via,
        &Message::MailDeliver { envelope: far },
    );
    let out = sent(&mut net.nodes[b]);
    assert!(
        out.iter()
            .any(|(_, m)| matches!(m, Message::MailDone { .. })),
        "{out:?}"
    );
    net.flush(b);
    assert_eq!(received(&net, b).len(), 8, "delivered past a gap");
}

/// A mailbox replica that missed the delete of a delivered envelope (here
/// its links to the recipient's supernodes are cut for the two seconds
/// the delivery and the delete take; after a partition heals it is the
/// far side's replicas, not yet in the deleting supernode's view) pushes
/// the copy again two minutes after it was sent: the recipient, who has
/// it, acknowledges it again, and the delete reaches the replica this
/// time. The application sees the message once.
#[test]
fn a_replica_that_missed_the_delete_pushes_again_and_its_copy_is_deleted() {
    let params = Arc::new(params());
    let (mut net, contacts, clients) = small_network(&params);
    net.run_until_ms(60_000);
    let index_of = |net: &Net, addr: Addr| net.addrs.iter().position(|a| *a == addr).unwrap();
    let attached = |net: &Net, client: usize| -> Vec<usize> {
        net.nodes[client]
            .attached_supernodes()
            .iter()
            .map(|c| index_of(net, c.addr))
            .collect()
    };
    let k = params.replication_k;
    // A pair of clients and a replica of the recipient's mailbox that is
    // none of their supernodes.
    let (sender, recipient, replica) = clients
        .iter()
        .flat_map(|s| clients.iter().map(move |r| (*s, *r)))
        .filter(|(s, r)| s != r)
        .find_map(|(s, r)| {
            let key = presence_key(&net.nodes[r].identity().account());
            let mut by_distance: Vec<(usize, NodeId)> = (0..NET_SUPERNODES)
                .map(|i| (i, contact_id(&contacts[i], PUZZLE_BITS).unwrap()))
                .collect();
            by_distance.sort_by_key(|(_, id)| id.distance(&key));
            let theirs = [attached(&net, s), attached(&net, r)].concat();
            by_distance[..k]
                .iter()
                .map(|(i, _)| *i)
                .find(|i| !theirs.contains(i))
                .map(|replica| (s, r, replica))
        })
        .expect("a replica apart from both clients' supernodes");
    for supernode in attached(&net, recipient) {
        net.blocked.push((net.addrs[replica], net.addrs[supernode]));
    }
    send(&mut net, sender, recipient, 7);
    net.run_until_ms(62_000);
    assert_eq!(received(&net, recipient).len(), 1, "delivered");
    assert_eq!(net.nodes[replica].mailbox_len(), 1, "the delete missed it");
    net.blocked.clear();
    net.run_until_ms(150_000);
    assert_eq!(
        net.nodes[replica].mailbox_len(),
        1,
        "held until pushed again"
    );
    net.run_until_ms(250_000);
    assert_eq!(
        net.nodes[replica].mailbox_len(),
        0,
        "deleted after the push"
    );
    assert_eq!(
        received(&net, recipient).len(),
        1,
        "once to the application"
    );
}

/// A crash loses what lived only in memory at once (a simulator holds a
/// crashed node for an hour; 1,000 crashed supernodes' records and client
/// tables were gigabytes at 1M clients), and the restart finds what a
/// real restart would: the device keys and host cache, and a supernode
/// that rejoins and takes clients again.
#[test]
fn a_crash_drops_volatile_state_and_the_restart_rebuilds_it() {
    let params = Arc::new(params());
    let (mut net, _, clients) = small_network(&params);
    net.run_until_ms(60_000);
    let (sender, recipient) = (clients[0], clients[1]);
    net.crash(recipient);
    send(&mut net, sender, recipient, 1);
    net.run_until_ms(65_000);
    let victim = (0..NET_SUPERNODES)
        .find(|i| net.nodes[*i].mailbox_len() > 0 && net.nodes[*i].attached_clients() > 0)
        .expect("a supernode with clients and mail");
    let key = net.nodes[victim].identity().keypair.public();
    let host_cache = net.nodes[victim].host_cache().len();
    net.crash(victim);
    assert!(net.nodes[victim].poll_transmit().is_none());
    let crashed = &net.nodes[victim];
    assert!(!crashed.is_supernode());
    assert_eq!(crashed.attached_clients(), 0);
    assert_eq!(crashed.mailbox_len(), 0);
    assert_eq!(crashed.identity().keypair.public(), key);
    assert_eq!(crashed.host_cache().len(), host_cache);
    net.run_until_ms(120_000);
    net.restart(victim);
    net.run_until_ms(240_000);
    assert!(net.nodes[victim].is_supernode());
    assert_eq!(
        net.nodes[victim].membership_len(),
        NET_SUPERNODES,
        "the restarted supernode rejoined"
    );
    net.restart(recipient);
    net.run_until_ms(400_000);
    assert_eq!(
        received(&net, recipient).len(),
        1,
        "the mail survived the crash"
    );
}

/// `count` supernodes and one client whose presence record they hold:
/// the network, the index of each supernode the client is attached to,
/// and the supernodes by distance to the record's key (nearest first).
struct RecordOwner {
    net: Net,
    attached: Vec<usize>,
    by_distance: Vec<usize>,
    key: NodeId,
}

fn record_owner(
    params: &Arc<Params>,
    count: usize,
    bootstrap: usize,
    settle_ms: u64,
) -> RecordOwner {
    let (mut net, contacts) = joined_supernodes(params, count, 1_000);
    net.run_until_ms(settle_ms);
    let address = addr(3_000);
    let node = client(
        params,
        3_000,
        address,
        contacts[..bootstrap].to_vec(),
        net.now(),
    );
    let owner = net.add(node, address);
    net.run_until_ms(settle_ms + 20_000);
    let key = presence_key(&net.nodes[owner].identity().account());
    let attached: Vec<usize> = net.nodes[owner]
        .attached_supernodes()
        .iter()
        .map(|s| net.addrs.iter().position(|a| *a == s.addr).unwrap())
        .collect();
    assert_eq!(attached.len(), 2);
    let mut by_distance: Vec<(usize, NodeId)> = (0..count)
        .map(|i| (i, contact_id(&contacts[i], PUZZLE_BITS).unwrap()))
        .collect();
    by_distance.sort_by_key(|(_, id)| id.distance(&key));
    let by_distance = by_distance.into_iter().map(|(i, _)| i).collect();
    RecordOwner {
        net,
        attached,
        by_distance,
        key,
    }
}

/// The nodes a tapped `Store` of the record under `key` went to.
fn stores_of(net: &Net, key: &NodeId) -> Vec<usize> {
    net.tapped
        .iter()
        .filter_map(|(to, _, bytes)| match decode(bytes) {
            Ok(Frame::Message(Message::Store { record }))
                if presence_key(&record.body.cert.body.account_key) == *key =>
            {
                Some(*to)
            }
            _ => None,
        })
        .collect()
}

/// More member changes at once than a supernode remembers to re-store
/// by (`RESTORE_CHANGES_MAX`, 64): it stores its clients' records again on
/// every replica instead. Here 140 of 150 members leave at once (their
/// news arrives over several seconds; 70 did not fill one re-store's
/// window), none of them a replica of the record nor one of its owner's
/// supernodes: re-storing by the changes would send nothing (no replica
/// left, none joined), so a `Store` reaching every replica shows the
/// fallback ran.
#[test]
fn more_changes_at_once_than_remembered_store_every_record_on_every_replica() {
    let params = Arc::new(params());
    let count = 150;
    let RecordOwner {
        mut net,
        attached,
        by_distance,
        key,
    } = record_owner(&params, count, 4, 20_000);
    let replicas = &by_distance[..params.replication_k];
    let leaving: Vec<usize> = (0..count)
        .filter(|i| !replicas.contains(i) && !attached.contains(i))
        .take(140)
        .collect();
    assert_eq!(leaving.len(), 140);
    net.tap = true;
    let now = net.now();
    for &i in &leaving {
        net.nodes[i].shutdown(now);
        net.flush(i);
    }
    net.run_until_ms(70_000);
    let stored_on: BTreeSet<usize> = stores_of(&net, &key).into_iter().collect();
    for replica in replicas {
        if !attached.contains(replica) {
            assert!(stored_on.contains(replica), "{replica}: {stored_on:?}");
        }
    }
}

/// When a replica of a record dies, the record's own supernodes store it
/// again only on the member that moved up into the k closest: the
/// replicas that were there hold it already (storing on all k sent each
/// of them the same record from both of its owner's supernodes at once,
/// and in a restart storm those bursts overran supernodes' backlogs).
#[test]
fn a_dead_replica_is_replaced_by_storing_on_the_member_that_moved_up_only() {
    let params = Arc::new(params());
    let RecordOwner {
        mut net,
        attached,
        by_distance,
        key,
    } = record_owner(&params, 12, 12, 5_000);
    let k = params.replication_k;
    let dead = *by_distance[..k]
        .iter()
        .find(|i| !attached.contains(i))
        .expect("a replica the owner is not attached to");
    let moved_up = by_distance[k];
    net.tap = true;
    net.crash(dead);
    net.run_until_ms(60_000);
    let stored_on = stores_of(&net, &key);
    assert!(stored_on.contains(&moved_up), "{stored_on:?}");
    assert!(stored_on.iter().all(|to| *to == moved_up), "{stored_on:?}");
}

#[test]
fn the_outbox_resends_when_every_mailbox_replica_died() {
    let params = Arc::new(params());
    let (mut net, _, clients) = small_network(&params);
    net.run_until_ms(60_000);
    let (a, b) = (clients[1], clients[6]);
    let b_device = net.nodes[b].identity().keypair.public();
    net.crash(b);
    for payload in 1..=4 {
        send(&mut net, a, b, payload);
    }
    net.run_until_ms(63_000);
    // Every supernode holding a copy dies.
    let holders: Vec<usize> = (0..NET_SUPERNODES)
        .filter(|i| net.nodes[*i].mailbox_len() > 0)
        .collect();
    assert!(!holders.is_empty());
    assert!(holders.len() < NET_SUPERNODES, "someone must survive");
    for holder in &holders {
        net.crash(*holder);
    }
    net.run_until_ms(180_000);
    net.restart(b);
    net.run_until_ms(400_000);
    let got: Vec<u64> = received(&net, b).iter().map(|(_, seq, _)| *seq).collect();
    assert_eq!(got, vec![1, 2, 3, 4]);
    assert_eq!(acked_up_to(&net, a, &b_device), 4);
    assert_eq!(net.nodes[a].outbox_len(), 0);
}

#[test]
fn a_full_outbox_refuses_new_messages_with_a_clear_error() {
    let params = Arc::new(params());
    let (mut client, _) = client_with_three_supernodes(&params);
    let stranger = identity(77);
    let (device, account) = (stranger.keypair.public(), stranger.account());
    // Never attached: everything stays in the outbox.
    for n in 0..peerline_core::mail::OUTBOX_MAX {
        assert_eq!(
            client.send_message(at(10), device, account, b"hi"),
            Ok(n as u64 + 1)
        );
    }
    assert_eq!(
        client.send_message(at(10), device, account, b"hi"),
        Err(peerline_core::mail::SendError::OutboxFull)
    );
    assert_eq!(client.outbox_len(), peerline_core::mail::OUTBOX_MAX);
    let too_large = vec![0u8; peerline_proto::PAYLOAD_LEN_MAX + 1];
    assert!(client
        .send_message(at(10), device, account, &too_large)
        .is_err());
}

#[test]
fn a_full_replay_guard_sends_resumes_to_a_full_login() {
    let params = Arc::new(Params {
        resume_counters_max: 1,
        ..params()
    });
    let (mut a, mut b) = two_supernodes(&params);
    let now = at(100);
    let b_key = b.supernode_contact().unwrap().key;
    let first = RawClient::honest(60, addr(60));
    let second = RawClient::honest(61, addr(61));
    let (t1, t2) = (
        ticket_from(&first, &mut a, now),
        ticket_from(&second, &mut a, now),
    );
    deliver(&mut b, now, first.addr, &first.resume(&t1, 1, &b_key));
    assert!(matches!(
        answer_to(&mut b, first.addr),
        Message::AttachAccepted { .. }
    ));
    // The guard holds one device: a second device cannot be guarded, so
    // it must log in in full rather than resume unguarded.
    assert!(falls_back_to_login(
        &mut b,
        now,
        second.addr,
        &second.resume(&t2, 1, &b_key)
    ));
}

/// A punch offer for `to` from `from`, naming `to_supernode` as the
/// recipient's supernode.
/// `from`'s offer for `to`, its own address sealed inside.
fn punch_offer(from: &RawClient, to: PublicKey, to_supernode: Addr) -> Message {
    let header = SealedHeader {
        session: 7,
        from_cert: from.cert,
        to_device: to,
        to_supernode,
        reply_supernode: addr(1),
        answer: false,
    };
    seal(&from.keypair, header, &[from.addr], &[7; 32]).expect("a valid key")
}

/// Whether `bytes` hold `address`'s IP as the wire writes it (16 bytes,
/// IPv4 mapped): no key, signature or ciphertext holds it by chance.
fn contains_ip(bytes: &[u8], address: Addr) -> bool {
    bytes.windows(16).any(|window| window == address.ip)
}

#[test]
fn supernode_relays_punch_offers_only_between_members_and_their_clients() {
    let params = Arc::new(params());
    let (mut a, mut b) = two_supernodes(&params);
    let (alice, bob) = (
        RawClient::honest(70, addr(70)),
        RawClient::honest(71, addr(71)),
    );
    assert!(is_accepted(&alice.attach(&mut a, at(20))));
    assert!(is_accepted(&bob.attach(&mut b, at(20))));
    let bob_key = bob.keypair.public();

    // Alice's offer for Bob, who is attached elsewhere: passed on to the
    // member she names…
    deliver(
        &mut a,
        at(21),
        alice.addr,
        &punch_offer(&alice, bob_key, addr(2)),
    );
    let out = sent(&mut a);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr(2));
    // Neither supernode can read Alice's candidates: the forwarded bytes
    // do not hold her address (the message as built holds it sealed).
    let forwarded = encode(&out[0].1).unwrap();
    assert!(matches!(out[0].1, Message::SealedCandidates { .. }));
    assert!(!contains_ip(&forwarded, alice.addr), "{:?}", out[0].1);
    // …and that member hands it to Bob, still sealed.
    deliver(&mut b, at(21), addr(1), &out[0].1);
    let out = sent(&mut b);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, bob.addr);
    assert!(!contains_ip(&encode(&out[0].1).unwrap(), alice.addr));

    // An address that is no member is not a target: the supernode is no
    // reflector for its clients.
    deliver(
        &mut a,
        at(22),
        alice.addr,
        &punch_offer(&alice, bob_key, addr(99)),
    );
    assert!(sent(&mut a).is_empty());
    // A stranger (neither a client nor a member) cannot hand Bob candidates.
    let stranger = RawClient::honest(72, addr(72));
    deliver(
        &mut b,
        at(22),
        stranger.addr,
        &punch_offer(&stranger, bob_key, addr(2)),
    );
    assert!(sent(&mut b).is_empty());
    // A client speaking for another device is refused too.
    let mut forged = punch_offer(&alice, bob_key, addr(2));
    if let Message::SealedCandidates { from_cert, .. } = &mut forged {
        *from_cert = stranger.cert;
    }
    deliver(&mut a, at(23), alice.addr, &forged);
    assert!(sent(&mut a).is_empty());
    // The plaintext offer of earlier builds is no longer passed on.
    let plaintext = Message::PunchCandidates {
        session: 8,
        from_device: alice.keypair.public(),
        to_device: bob_key,
        to_supernode: addr(2),
        reply_supernode: addr(1),
        answer: false,
        candidates: BoundedVec::truncating([alice.addr]),
    };
    deliver(&mut a, at(24), alice.addr, &plaintext);
    assert!(sent(&mut a).is_empty());
}

/// `from`'s signed request to `relay` for a binding to `to`.
fn relay_request(from: &RawClient, to: PublicKey, relay: Addr, session: u64) -> Message {
    let body = RelayRequestBody {
        session,
        from_device: from.keypair.public(),
        to_device: to,
        relay,
    };
    let signature = from
        .keypair
        .sign(domain::RELAY, &peerline_proto::to_signing_bytes(&body));
    Message::RelayRequest { body, signature }
}

/// The channel granted to `to` among `out`.
fn granted_channel(out: &[(Addr, Message)], to: Addr, session: u64) -> Option<u16> {
    out.iter().find_map(|(addr, message)| match message {
        Message::RelayGranted {
            session: s,
            channel,
            ..
        } if *addr == to && *s == session => Some(*channel),
        _ => None,
    })
}

#[test]
fn a_relay_binds_two_signed_halves_and_nothing_else() {
    let params = Arc::new(params());
    let (mut relay, _other) = two_supernodes(&params);
    let relay_addr = addr(1);
    let (alice, bob) = (
        RawClient::honest(80, addr(80)),
        RawClient::honest(81, addr(81)),
    );
    let (alice_key, bob_key) = (alice.keypair.public(), bob.keypair.public());
    // Alice is the relay's client; Bob is not.
    assert!(is_accepted(&alice.attach(&mut relay, at(15))));
    sent(&mut relay);

    // Bob asking first opens nothing: he is told to come back shortly.
    deliver(
        &mut relay,
        at(19),
        bob.addr,
        &relay_request(&bob, alice_key, relay_addr, 5),
    );
    assert!(matches!(
        only_reply(&mut relay, bob.addr),
        Message::RelayRefused { session: 5, retry_after_ms } if retry_after_ms <= 1_000
    ));
    assert_eq!(relay.relay_bindings(), 0);
    // Alice's half waits for Bob's.
    deliver(
        &mut relay,
        at(20),
        alice.addr,
        &relay_request(&alice, bob_key, relay_addr, 5),
    );
    assert!(sent(&mut relay).is_empty());
    assert_eq!(relay.relay_bindings(), 1);
    assert_eq!(relay.poll_path_command(), None);
    // Bob's half completes it: both are granted, the driver binds.
    deliver(
        &mut relay,
        at(21),
        bob.addr,
        &relay_request(&bob, alice_key, relay_addr, 5),
    );
    let out = sent(&mut relay);
    let a_channel = granted_channel(&out, alice.addr, 5).expect("alice is granted");
    let b_channel = granted_channel(&out, bob.addr, 5).expect("bob is granted");
    assert_ne!(a_channel, b_channel);
    for channel in [a_channel, b_channel] {
        assert!((0x8000..=0xbfff).contains(&channel));
    }
    assert_eq!(
        relay.poll_path_command(),
        Some(peerline_core::PathCommand::RelayBind {
            a: (alice.addr, a_channel),
            b: (bob.addr, b_channel),
        })
    );
    assert_eq!(relay.relay_bindings(), 1);

    // A refresh from the bound address is granted the same channel.
    deliver(
        &mut relay,
        at(30),
        alice.addr,
        &relay_request(&alice, bob_key, relay_addr, 5),
    );
    assert_eq!(
        granted_channel(&sent(&mut relay), alice.addr, 5),
        Some(a_channel)
    );

    // Refused without an answer: Alice's request replayed from elsewhere,
    // a forged signature, a request for another relay, a device asking for
    // itself.
    let unexpected = relay.stats().messages_unexpected;
    deliver(
        &mut relay,
        at(31),
        addr(99),
        &relay_request(&alice, bob_key, relay_addr, 5),
    );
    let mut forged = relay_request(&alice, bob_key, relay_addr, 6);
    if let Message::RelayRequest { body, .. } = &mut forged {
        body.from_device = RawClient::honest(82, addr(82)).keypair.public();
    }
    deliver(&mut relay, at(31), alice.addr, &forged);
    deliver(
        &mut relay,
        at(31),
        alice.addr,
        &relay_request(&alice, bob_key, addr(2), 7),
    );
    deliver(
        &mut relay,
        at(31),
        alice.addr,
        &relay_request(&alice, alice_key, relay_addr, 8),
    );
    assert!(sent(&mut relay).is_empty());
    assert_eq!(relay.stats().messages_unexpected, unexpected + 4);
    assert_eq!(relay.relay_bindings(), 1);
    assert_eq!(relay.poll_path_command(), None);

    // Unrefreshed, the binding lapses and the driver unbinds it.
    let lapsed = 30_000 + u64::from(params.relay_lifetime_s) * 1_000 + params.sweep_interval_ms;
    relay.handle_timeout(at(lapsed));
    assert_eq!(relay.relay_bindings(), 0);
    let mut commands = std::iter::from_fn(|| relay.poll_path_command());
    assert!(commands.any(|command| command
        == peerline_core::PathCommand::RelayUnbind {
            a: (alice.addr, a_channel)
        }));
}

#[test]
fn a_full_relay_refuses_with_a_retry_hint() {
    let params = Arc::new(Params {
        relay_bindings_max: 6,
        ..params()
    });
    let (mut relay, _other) = two_supernodes(&params);
    let relay_addr = addr(1);
    sent(&mut relay);
    let alice = RawClient::honest(83, addr(83));
    let peers: Vec<RawClient> = (0..6)
        .map(|n| RawClient::honest(90 + n, addr(90 + n as u32)))
        .collect();
    // Halves are opened by the relay's own clients only.
    for client in std::iter::once(&alice).chain(&peers) {
        assert!(is_accepted(&client.attach(&mut relay, at(15))));
    }
    sent(&mut relay);
    let refused = |out: &[(Addr, Message)], to: Addr| {
        out.iter().any(|(addr, message)| {
            *addr == to
                && matches!(message, Message::RelayRefused { retry_after_ms, .. } if *retry_after_ms > 0)
        })
    };
    // One device holds at most its share of the relay…
    for (session, peer) in peers.iter().enumerate() {
        let request = relay_request(&alice, peer.keypair.public(), relay_addr, session as u64);
        deliver(&mut relay, at(20), alice.addr, &request);
    }
    let share = peerline_core::relay::BINDINGS_PER_DEVICE_MAX;
    assert_eq!(relay.relay_bindings(), share);
    assert!(refused(&sent(&mut relay), alice.addr));
    // …and the relay its capacity.
    for (n, peer) in peers.iter().enumerate().take(3) {
        let request = relay_request(peer, alice.keypair.public(), relay_addr, 100 + n as u64);
        deliver(&mut relay, at(21), peer.addr, &request);
    }
    assert_eq!(relay.relay_bindings(), 6);
    assert!(refused(&sent(&mut relay), peers[2].addr));
    assert!(relay.stats().relay_refused >= 2);
    // Halves nobody completes make room again.
    relay.handle_timeout(at(21_000
        + peerline_core::relay::HALF_WAIT_MS
        + params.sweep_interval_ms));
    assert_eq!(relay.relay_bindings(), 0);
}

/// What `index` reported about its path to `peer` since event `from`.
fn path_events(net: &Net, since: usize, index: usize, peer: PublicKey) -> Vec<Event> {
    net.events[since..]
        .iter()
        .filter(|(i, _, event)| {
            *i == index
                && matches!(event,
                    Event::PathUp { peer: p, .. } | Event::PathFailed { peer: p, .. } if *p == peer)
        })
        .map(|(_, _, event)| event.clone())
        .collect()
}

/// Each (node, peer) reported its path to the peer lost, last.
fn assert_path_lost(net: &Net, since: usize, sides: [(usize, PublicKey); 2]) {
    for (node, peer) in sides {
        let events = path_events(net, since, node, peer);
        assert!(
            matches!(
                events.last(),
                Some(Event::PathFailed {
                    reason: PathFailure::Lost,
                    ..
                })
            ),
            "node {node}: {events:?}"
        );
    }
}

/// Two attached clients of a small network, each the other's contact;
/// `a` looks `b` up and starts connecting to it. Returns (a, b, their
/// device keys, events so far).
fn start_punching(
    net: &mut Net,
    params: &Params,
    clients: &[usize],
) -> (usize, usize, PublicKey, PublicKey, usize) {
    let (a, b) = (clients[0], clients[1]);
    befriend(net, a, b);
    start_punching_as_is(net, params, clients)
}

/// Each of `a` and `b` holds the other's account as a contact.
fn befriend(net: &mut Net, a: usize, b: usize) {
    let (a_account, b_account) = (
        net.nodes[a].identity().account(),
        net.nodes[b].identity().account(),
    );
    assert_eq!(net.nodes[a].set_contacts([b_account]), 1);
    assert_eq!(net.nodes[b].set_contacts([a_account]), 1);
}

/// [`start_punching`] with the contacts the nodes hold already.
fn start_punching_as_is(
    net: &mut Net,
    params: &Params,
    clients: &[usize],
) -> (usize, usize, PublicKey, PublicKey, usize) {
    net.run_until_ms(10_000);
    let (a, b) = (clients[0], clients[1]);
    let (a_device, b_device) = (
        net.nodes[a].identity().keypair.public(),
        net.nodes[b].identity().keypair.public(),
    );
    let record = net
        .lookup(params, a, net.nodes[b].identity().account())
        .expect("b's presence record");
    let since = net.events.len();
    let now = net.now();
    net.nodes[a].connect_peer(now, &record);
    net.flush(a);
    (a, b, a_device, b_device, since)
}

#[test]
fn two_clients_punch_a_direct_path_keep_it_alive_and_notice_its_loss() {
    let params = Arc::new(params());
    let (mut net, _, clients) = small_network(&params);
    let (a, b, a_device, b_device, since) = start_punching(&mut net, &params, &clients);
    let started_ms = net.now().instant.as_ms();
    net.run_until_ms(started_ms + 5_000);
    for (node, peer, peer_addr) in [(a, b_device, net.addrs[b]), (b, a_device, net.addrs[a])] {
        let events = path_events(&net, since, node, peer);
        assert!(
            matches!(events.as_slice(), [Event::PathUp { kind: PathKind::Direct, addr, .. }] if *addr == peer_addr),
            "node {node}: {events:?}"
        );
    }
    // Keepalives hold it up far past the QUIC idle timeout…
    net.run_until_ms(started_ms + 120_000);
    assert_eq!(path_events(&net, since, a, b_device).len(), 1);
    let report = &net.nodes[a].paths()[0];
    assert_eq!(report.kind, Some(PathKind::Direct));
    assert_eq!(report.relay, None);
    // …and when the path breaks, both sides notice.
    let (a_addr, b_addr) = (net.addrs[a], net.addrs[b]);
    net.blocked.push((a_addr, b_addr));
    net.run_until_ms(started_ms + 120_000 + peerline_core::punch::PATH_LOST_MS + 20_000);
    assert_path_lost(&net, since, [(a, b_device), (b, a_device)]);
}

#[test]
fn clients_no_check_reaches_fall_back_to_a_relayed_path() {
    let params = Arc::new(params());
    let (mut net, _, clients) = small_network(&params);
    let (a_addr, b_addr) = (net.addrs[clients[0]], net.addrs[clients[1]]);
    net.blocked.push((a_addr, b_addr));
    let (a, b, a_device, b_device, since) = start_punching(&mut net, &params, &clients);
    let started_ms = net.now().instant.as_ms();
    // 20 check rounds of 500 ms fail, then the relay.
    net.run_until_ms(started_ms + 20_000);
    let mut relays = Vec::new();
    for (node, peer) in [(a, b_device), (b, a_device)] {
        let events = path_events(&net, since, node, peer);
        assert!(
            matches!(events.as_slice(), [Event::PathUp { kind: PathKind::Relayed, elapsed_ms, .. }] if *elapsed_ms >= 10_000),
            "node {node}: {events:?}"
        );
        let report = net.nodes[node].paths().into_iter().next().unwrap();
        relays.push(report.relay.expect("a relayed path names its relay"));
    }
    // Both use the same relay: the initiator's supernode, which holds one
    // binding.
    assert_eq!(relays[0], relays[1]);
    let relay = net.index_of[&relays[0]];
    assert!(net.nodes[a]
        .attached_supernodes()
        .iter()
        .any(|c| c.addr == relays[0]));
    assert_eq!(net.nodes[relay].relay_bindings(), 1);
    // Past the binding's lifetime, refreshes and keepalives hold it up.
    let lifetime_ms = u64::from(params.relay_lifetime_s) * 1_000;
    net.run_until_ms(started_ms + 20_000 + 3 * lifetime_ms);
    assert_eq!(path_events(&net, since, a, b_device).len(), 1);
    assert_eq!(path_events(&net, since, b, a_device).len(), 1);
    assert_eq!(net.nodes[relay].relay_bindings(), 1);
    // When the relay dies, the path is lost on both sides.
    net.crash(relay);
    net.run_until_ms(
        started_ms + 20_000 + 3 * lifetime_ms + peerline_core::punch::PATH_LOST_MS + 20_000,
    );
    assert_path_lost(&net, since, [(a, b_device), (b, a_device)]);
}

/// The candidates in every sealed answer `index` received, opened with
/// its own key.
fn candidates_received(net: &Net, index: usize) -> Vec<Addr> {
    let keypair = &net.nodes[index].identity().keypair;
    let mut out = Vec::new();
    for (to, _, bytes) in &net.tapped {
        let Ok(Frame::Message(Message::SealedCandidates {
            session,
            from_cert,
            to_device,
            to_supernode,
            reply_supernode,
            answer,
            ephemeral,
            sealed,
        })) = decode(bytes)
        else {
            continue;
        };
        if *to != index {
            continue;
        }
        let header = SealedHeader {
            session,
            from_cert,
            to_device,
            to_supernode,
            reply_supernode,
            answer,
        };
        let opened = peerline_core::sealed::open(keypair, &header, &ephemeral, &sealed);
        out.extend(opened.expect("sealed to this node, and opens"));
    }
    out
}

#[test]
fn a_stranger_gets_a_relayed_path_and_never_the_callees_addresses() {
    let params = Arc::new(params());
    let (mut net, _, clients) = small_network(&params);
    net.tap = true;
    let (a, b) = (clients[0], clients[1]);
    // The caller reveals itself; the callee knows someone else, not it.
    let b_account = net.nodes[b].identity().account();
    net.nodes[a].set_contacts([b_account]);
    net.nodes[b].set_contacts([PublicKey([0x55; 32])]);
    let (a, b, a_device, b_device, since) = start_punching_as_is(&mut net, &params, &clients);
    let started_ms = net.now().instant.as_ms();
    net.run_until_ms(started_ms + 5_000);
    // Straight to the relay: no 10 s of direct checks first.
    let mut relays = Vec::new();
    for (node, peer) in [(a, b_device), (b, a_device)] {
        let events = path_events(&net, since, node, peer);
        assert!(
            matches!(events.as_slice(), [Event::PathUp { kind: PathKind::Relayed, elapsed_ms, .. }] if *elapsed_ms < 5_000),
            "node {node}: {events:?}"
        );
        let report = net.nodes[node].paths().into_iter().next().unwrap();
        relays.push(report.relay.expect("a relayed path names its relay"));
    }
    // The relay is the callee's own supernode, which knows its address
    // already (the caller's could be a supernode the caller runs).
    assert_eq!(relays[0], relays[1]);
    assert!(net.nodes[b]
        .attached_supernodes()
        .iter()
        .any(|c| c.addr == relays[0]));
    assert_eq!(net.nodes[b].stats().punch_addresses_withheld, 1);
    net.run_until_ms(started_ms + 60_000);
    assert_eq!(path_events(&net, since, a, b_device).len(), 1, "still up");

    let (a_addr, b_addr) = (net.addrs[a], net.addrs[b]);
    // The caller never learnt the callee's address: no answer held it, no
    // datagram came from it or carried it, no dial was pinned to it.
    let learnt = candidates_received(&net, a);
    assert!(learnt.is_empty(), "{learnt:?}");
    for (to, from, bytes) in &net.tapped {
        if *to == a {
            assert_ne!(*from, b_addr, "the callee sent to the caller directly");
            assert!(!contains_ip(bytes, b_addr));
        }
    }
    assert_eq!(net.nodes[a].path_peer_key(&b_addr), None);
    // The callee did learn the caller's (the caller chose to reveal it).
    assert!(candidates_received(&net, b).contains(&a_addr));
    // And no supernode on the way read either address.
    for (to, _, bytes) in &net.tapped {
        if ![a, b].contains(to)
            && matches!(
                decode(bytes),
                Ok(Frame::Message(Message::SealedCandidates { .. }))
            )
        {
            assert!(!contains_ip(bytes, a_addr) && !contains_ip(bytes, b_addr));
        }
    }
}

#[test]
fn a_contact_learns_the_callees_addresses_and_gets_a_direct_path() {
    let params = Arc::new(params());
    let (mut net, _, clients) = small_network(&params);
    net.tap = true;
    let (a, b, _, b_device, since) = start_punching(&mut net, &params, &clients);
    let started_ms = net.now().instant.as_ms();
    net.run_until_ms(started_ms + 5_000);
    let b_addr = net.addrs[b];
    assert!(candidates_received(&net, a).contains(&b_addr));
    assert!(matches!(
        path_events(&net, since, a, b_device).as_slice(),
        [Event::PathUp { kind: PathKind::Direct, addr, .. }] if *addr == b_addr
    ));
    assert_eq!(net.nodes[b].stats().punch_addresses_withheld, 0);
    // Supernodes forwarded both offer and answer without reading them.
    let mut sealed_at_supernodes = 0;
    for (to, _, bytes) in &net.tapped {
        if ![a, b].contains(to)
            && matches!(
                decode(bytes),
                Ok(Frame::Message(Message::SealedCandidates { .. }))
            )
        {
            sealed_at_supernodes += 1;
            assert!(!contains_ip(bytes, b_addr) && !contains_ip(bytes, net.addrs[a]));
        }
    }
    assert!(
        sealed_at_supernodes >= 2,
        "offer and answer passed supernodes"
    );
}

#[test]
fn tampered_or_forged_sealed_candidates_are_refused_without_an_answer() {
    let params = Arc::new(params());
    let (mut net, _, clients) = small_network(&params);
    net.run_until_ms(10_000);
    let b = clients[1];
    let b_device = net.nodes[b].identity().keypair.public();
    let supernode = net.nodes[b].attached_supernodes()[0].addr;
    let friend = RawClient::honest(90, addr(90));
    net.nodes[b].set_contacts([friend.cert.body.account_key]);
    let now = net.now();
    let answered = |node: &mut Node| {
        let out = sent(node);
        out.iter()
            .any(|(_, m)| matches!(m, Message::SealedCandidates { .. }))
    };
    let bytes = encode(&punch_offer(&friend, b_device, supernode)).unwrap();
    // Every byte after the version and the variant index, flipped.
    for index in 2..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[index] ^= 0x01;
        net.nodes[b].handle(now, supernode, &damaged);
        assert!(!answered(&mut net.nodes[b]), "byte {index} flipped");
        assert!(net.nodes[b].poll_path_command().is_none());
    }
    let refused = net.nodes[b].stats().punch_sealed_refused;
    assert!(
        refused >= peerline_core::sealed::SEALED_LEN as u64,
        "{refused}"
    );
    // A stranger's device claiming the friend's account (its certificate
    // signed by a key of its own) is refused too: no contact by claim.
    let impostor = RawClient::with_cert(91, addr(91), |device| {
        let mut cert = issue_device_cert(
            &Keypair::generate(CryptoMode::Full, &mut rng(92)),
            device,
            UNIX0 + CERT_TTL_S,
        );
        cert.body.account_key = friend.cert.body.account_key;
        cert
    });
    deliver(
        &mut net.nodes[b],
        now,
        supernode,
        &punch_offer(&impostor, b_device, supernode),
    );
    assert!(!answered(&mut net.nodes[b]));
    assert_eq!(net.nodes[b].stats().punch_sealed_refused, refused + 1);
    // The intact offer is answered (the checks above can fail).
    net.nodes[b].handle(now, supernode, &bytes);
    net.drive_paths(b);
    assert!(answered(&mut net.nodes[b]));
}

// ---------------------------------------------------------------------------
// Supernodes learnt of after start (the daemon's LAN discovery)
// ---------------------------------------------------------------------------

#[test]
fn a_client_without_supernodes_attaches_to_those_added_later() {
    let params = Arc::new(params());
    let mut client = client(&params, 1, addr(1), Vec::new(), at(0));
    assert!(sent(&mut client).is_empty(), "nobody to talk to yet");
    let own = Contact {
        key: client.identity().keypair.public(),
        id_nonce: 0,
        addr: addr(1),
    };
    client.add_bootstrap(at(1_000), own);
    assert!(sent(&mut client).is_empty(), "its own contact is no way in");
    assert!(client.host_cache().is_empty());

    let first = scripted_contact(100, addr(100));
    client.add_bootstrap(at(1_000), first);
    let out = sent(&mut client);
    assert_eq!(hellos(&out, &[first]), vec![first], "{out:?}");
    assert!(
        client.host_cache().contains(&first.key),
        "pinned from there"
    );
    let second = scripted_contact(101, addr(101));
    client.add_bootstrap(at(1_100), second);
    assert_eq!(hellos(&sent(&mut client), &[second]), vec![second]);
    // Two handshakes run (the target): a third contact waits in the cache.
    let third = scripted_contact(102, addr(102));
    client.add_bootstrap(at(1_200), third);
    assert!(sent(&mut client).is_empty());
    assert_eq!(client.host_cache().len(), 3);
}

#[test]
fn a_lone_supernode_joins_through_one_added_later_and_only_once() {
    let params = Arc::new(params());
    let mut lone = lone_supernode(&params);
    let found = scripted_contact(100, addr(100));
    lone.add_bootstrap(at(1_000), found);
    let out = sent(&mut lone);
    assert!(
        matches!(out.as_slice(), [(to, Message::SyncRequest { .. })] if *to == found.addr),
        "{out:?}"
    );
    let other = scripted_contact(101, addr(101));
    lone.add_bootstrap(at(1_100), other);
    assert!(
        sent(&mut lone)
            .iter()
            .all(|(_, m)| !matches!(m, Message::SyncRequest { .. })),
        "a join is already running"
    );
    assert!(lone.host_cache().contains(&other.key));
}

#[test]
fn relay_requests_beyond_the_budget_are_refused_with_the_wait() {
    let params = Arc::new(Params {
        relay_requests_per_s: 2,
        relay_request_burst: 3,
        ..params()
    });
    let (mut relay, _other) = two_supernodes(&params);
    let relay_addr = addr(1);
    sent(&mut relay);
    let stranger = RawClient::honest(85, addr(85));
    let peer = RawClient::honest(86, addr(86)).keypair.public();
    // Not attached here: each checked request is told to retry in 1 s;
    // past the burst, without a check, to wait for the budget.
    let waits: Vec<u32> = (0..5)
        .map(|session| {
            deliver(
                &mut relay,
                at(20),
                stranger.addr,
                &relay_request(&stranger, peer, relay_addr, session),
            );
            match only_reply(&mut relay, stranger.addr) {
                Message::RelayRefused { retry_after_ms, .. } => retry_after_ms,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(waits[..3], [1_000, 1_000, 1_000]);
    // 2 tokens a second: the next one in 500 ms.
    assert_eq!(waits[3..], [500, 500]);
    assert_eq!(relay.stats().relay_refused, 2);
    // The budget refills.
    deliver(
        &mut relay,
        at(1_020),
        stranger.addr,
        &relay_request(&stranger, peer, relay_addr, 9),
    );
    assert!(matches!(
        only_reply(&mut relay, stranger.addr),
        Message::RelayRefused {
            retry_after_ms: 1_000,
            ..
        }
    ));
}

// ---------------------------------------------------------------------------
// Names: registration by quorum, conflicts, lookups (`registry.rs`)
// ---------------------------------------------------------------------------

fn name_params() -> Params {
    Params {
        name_pow_bits: 8,
        ..params()
    }
}

/// A supernode address in its own /24 (one voter seat per network).
fn network_addr(network: u32) -> Addr {
    Addr::from_ipv4_u32(0x0a00_0000 | (network << 8) | 1, 7_000)
}

/// `count` supernodes in distinct /24s, all joined through the first.
fn names_network(params: &Arc<Params>, count: usize) -> (Net, Vec<Contact>) {
    let mut net = Net::new(10);
    let mut contacts: Vec<Contact> = Vec::new();
    for i in 0..count {
        let address = network_addr(10 + i as u32);
        let seeds = contacts.first().copied().into_iter().collect();
        let node = supernode(params, 3_000 + i as u64, address, seeds, net.now());
        contacts.push(node.supernode_contact().unwrap());
        net.add(node, address);
    }
    (net, contacts)
}

fn add_client(net: &mut Net, params: &Arc<Params>, seed: u64, bootstrap: Vec<Contact>) -> usize {
    let address = addr(seed as u32);
    let node = client(params, seed, address, bootstrap, net.now());
    net.add(node, address)
}

fn account_key(seed: u64) -> Keypair {
    Keypair::generate(CryptoMode::Full, &mut rng(90_000 + seed))
}

fn claim_for(net: &Net, params: &Params, account: &Keypair, name: &str) -> NameClaim {
    let name = normalize(name).unwrap();
    make_claim(account, &name, net.now().unix_s, params.name_pow_bits)
}

fn register_as(net: &mut Net, node: usize, params: &Params, account: &Keypair, name: &str) {
    let claim = claim_for(net, params, account, name);
    register(net, node, claim);
}

fn register(net: &mut Net, node: usize, claim: NameClaim) {
    let now = net.now();
    net.nodes[node].register_name(now, claim);
    net.flush(node);
}

/// How each node's registration of `name_key` ended: `Some(true)`
/// registered, `Some(false)` taken, `None` no answer (or a failure).
fn registration_outcomes(net: &Net, name_key: NodeId) -> HashMap<usize, Option<bool>> {
    let mut out = HashMap::new();
    for (index, _, event) in &net.events {
        match event {
            Event::NameRegistered { name_key: key, .. } if *key == name_key => {
                out.insert(*index, Some(true));
            }
            Event::NameTaken { name_key: key, .. } if *key == name_key => {
                out.insert(*index, Some(false));
            }
            Event::NameFailed { name_key: key, .. } if *key == name_key => {
                out.insert(*index, None);
            }
            _ => {}
        }
    }
    out
}

impl Net {
    /// Who owns the name, as `asker` finds out by looking it up.
    fn owner_of(&mut self, asker: usize, name_key: NodeId) -> Option<PublicKey> {
        let started = self.events.len();
        let now = self.now();
        self.nodes[asker].lookup_name(now, name_key);
        self.flush(asker);
        self.run_until_ms(now.instant.as_ms() + 15_000);
        let done: Vec<_> = self.events[started..]
            .iter()
            .filter_map(|(i, _, e)| match e {
                Event::NameLookupDone {
                    name_key: key,
                    result,
                    ..
                } if *i == asker && *key == name_key => Some(result.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(done.len(), 1, "one NameLookupDone per lookup: {done:?}");
        let certificate = done[0].clone().expect("the lookup got an answer");
        certificate.map(|c| c.claim.body.account)
    }
}

#[test]
fn two_people_registering_one_name_at_once_get_one_owner() {
    let params = Arc::new(name_params());
    let (mut net, supernodes) = names_network(&params, 9);
    // Each claimant attached only to supernodes far apart in the list, so
    // the two registrations are coordinated by different supernodes.
    let first = add_client(&mut net, &params, 500, supernodes[..3].to_vec());
    let second = add_client(&mut net, &params, 501, supernodes[6..].to_vec());
    let reader = add_client(&mut net, &params, 502, supernodes[3..6].to_vec());
    net.run_until_ms(20_000);
    let mut winners = Vec::new();
    for round in 0..12u64 {
        let name = format!("contested{round}");
        let (a, b) = (account_key(2 * round), account_key(2 * round + 1));
        let claim_a = claim_for(&net, &params, &a, &name);
        let claim_b = claim_for(&net, &params, &b, &name);
        let key = normalize(&name).unwrap().key();
        // The same moment, or one a few milliseconds ahead.
        let lead_ms = round % 4 * 3;
        if round % 2 == 0 {
            register(&mut net, first, claim_a);
            net.run_until_ms(net.now().instant.as_ms() + lead_ms);
            register(&mut net, second, claim_b);
        } else {
            register(&mut net, second, claim_b);
            net.run_until_ms(net.now().instant.as_ms() + lead_ms);
            register(&mut net, first, claim_a);
        }
        net.run_until_ms(net.now().instant.as_ms() + 20_000);
        let outcomes = registration_outcomes(&net, key);
        let registered: Vec<usize> = outcomes
            .iter()
            .filter(|(_, o)| **o == Some(true))
            .map(|(i, _)| *i)
            .collect();
        let taken = outcomes.values().filter(|o| **o == Some(false)).count();
        assert_eq!(registered.len(), 1, "round {round}: {outcomes:?}");
        assert_eq!(
            taken, 1,
            "the other one is told the name is taken: {outcomes:?}"
        );
        let owner = if registered[0] == first {
            a.public()
        } else {
            b.public()
        };
        assert_eq!(net.owner_of(reader, key), Some(owner), "round {round}");
        assert_eq!(net.owner_of(first, key), Some(owner));
        winners.push(registered[0]);
    }
    // Races go both ways: the rule is not "the first client always wins".
    assert!(
        winners.contains(&first) && winners.contains(&second),
        "{winners:?}"
    );
    assert_eq!(
        net.owner_of(reader, normalize("nobody").unwrap().key()),
        None
    );
}

#[test]
fn a_registered_name_survives_its_voters_and_a_late_claim_is_taken() {
    let params = Arc::new(name_params());
    let (mut net, supernodes) = names_network(&params, 10);
    let owner = add_client(&mut net, &params, 600, supernodes.clone());
    let latecomer = add_client(&mut net, &params, 601, supernodes.clone());
    net.run_until_ms(20_000);
    let alice = account_key(600);
    let claim = claim_for(&net, &params, &alice, "Alice");
    let key = normalize("alice").unwrap().key();
    register(&mut net, owner, claim);
    net.run_until_ms(40_000);
    assert_eq!(
        registration_outcomes(&net, key).get(&owner),
        Some(&Some(true))
    );
    // Look-alike spellings are the same name.
    let mallory = account_key(601);
    register_as(&mut net, latecomer, &params, &mallory, "ALICE");
    net.run_until_ms(60_000);
    assert_eq!(
        registration_outcomes(&net, key).get(&latecomer),
        Some(&Some(false))
    );
    // Crash 4 of the 5 supernodes closest to the name; the record was
    // re-replicated to the next ones and the name still has its owner.
    let mut by_distance: Vec<(usize, [u8; 32])> = (0..supernodes.len())
        .map(|i| {
            let id = peerline_core::identity::node_id(&supernodes[i].key, supernodes[i].id_nonce);
            (i, id.distance(&key))
        })
        .collect();
    by_distance.sort_by_key(|(_, d)| *d);
    for &(index, _) in &by_distance[..4] {
        net.crash(index);
    }
    net.run_until_ms(150_000);
    assert_eq!(net.owner_of(latecomer, key), Some(alice.public()));
    // A restarted voter remembers its vote (and the record): a new claim is still taken.
    net.restart(by_distance[0].0);
    net.run_until_ms(200_000);
    let eve = account_key(602);
    let third = add_client(&mut net, &params, 603, supernodes.clone());
    net.run_until_ms(230_000);
    register_as(&mut net, third, &params, &eve, "alice");
    net.run_until_ms(260_000);
    assert_eq!(
        registration_outcomes(&net, key).get(&third),
        Some(&Some(false))
    );
}

#[test]
fn registrations_on_both_sides_of_a_partition_resolve_to_one_owner_on_healing() {
    let params = Arc::new(name_params());
    let (mut net, supernodes) = names_network(&params, 10);
    let (left, right) = supernodes.split_at(5);
    let west = add_client(&mut net, &params, 700, left.to_vec());
    let east = add_client(&mut net, &params, 701, right.to_vec());
    net.run_until_ms(20_000);
    // Split: neither half reaches the other (clients included).
    let west_side: Vec<Addr> = left
        .iter()
        .map(|c| c.addr)
        .chain([net.addrs[west]])
        .collect();
    let east_side: Vec<Addr> = right
        .iter()
        .map(|c| c.addr)
        .chain([net.addrs[east]])
        .collect();
    for a in &west_side {
        for b in &east_side {
            net.blocked.push((*a, *b));
        }
    }
    net.run_until_ms(60_000);
    let mut keys = Vec::new();
    for round in 0..6u64 {
        let name = format!("split{round}");
        let key = normalize(&name).unwrap().key();
        let (a, b) = (account_key(700 + 2 * round), account_key(701 + 2 * round));
        register_as(&mut net, west, &params, &a, &name);
        register_as(&mut net, east, &params, &b, &name);
        net.run_until_ms(net.now().instant.as_ms() + 20_000);
        keys.push((key, a.public(), b.public()));
    }
    let certified_both = keys
        .iter()
        .filter(|(key, ..)| {
            let outcomes = registration_outcomes(&net, *key);
            outcomes.get(&west) == Some(&Some(true)) && outcomes.get(&east) == Some(&Some(true))
        })
        .count();
    // Heal, and give gossip, rediscovery and re-replication time.
    net.blocked.clear();
    net.run_until_ms(net.now().instant.as_ms() + 300_000);
    for (key, a, b) in &keys {
        let seen_west = net.owner_of(west, *key);
        let seen_east = net.owner_of(east, *key);
        assert!(seen_west.is_some(), "the name has an owner");
        assert_eq!(seen_west, seen_east, "both sides agree on one owner");
        assert!(seen_west == Some(*a) || seen_west == Some(*b));
    }
    // The interesting case happened: each half certified on its own.
    assert!(certified_both > 0, "no round certified on both sides");
}

#[test]
fn an_attacker_grinding_ids_next_to_a_name_gets_one_seat() {
    let params = Arc::new(name_params());
    let name = normalize("victim").unwrap();
    let key = name.key();
    // The attacker makes many supernodes and keeps the 4 whose IDs land
    // nearest the name, all run from one /24.
    let (mut net, honest) = names_network(&params, 7);
    let mut candidates: Vec<(u64, [u8; 32])> = (0..1_500u64)
        .map(|seed| {
            let probe = supernode(&params, 50_000 + seed, addr(1), Vec::new(), net.now());
            let contact = probe.supernode_contact().unwrap();
            let id = peerline_core::identity::node_id(&contact.key, contact.id_nonce);
            (50_000 + seed, id.distance(&key))
        })
        .collect();
    candidates.sort_by_key(|(_, d)| *d);
    let mut attackers = Vec::new();
    for (i, (seed, _)) in candidates[..4].iter().enumerate() {
        let address = Addr::from_ipv4_u32(0x0b00_0001 + i as u32, 7_000);
        let node = supernode(&params, *seed, address, vec![honest[0]], net.now());
        attackers.push(node.supernode_contact().unwrap());
        net.add(node, address);
    }
    // They are the name's closest supernodes.
    let mut everyone: Vec<(bool, [u8; 32])> = honest
        .iter()
        .map(|c| (false, c))
        .chain(attackers.iter().map(|c| (true, c)))
        .map(|(attacker, c)| {
            let id = peerline_core::identity::node_id(&c.key, c.id_nonce);
            (attacker, id.distance(&key))
        })
        .collect();
    everyone.sort_by_key(|(_, d)| *d);
    assert!(everyone[..4].iter().all(|(attacker, _)| *attacker));
    let victim = add_client(&mut net, &params, 800, honest.clone());
    net.run_until_ms(30_000);
    // The victim registers; the quorum it gets has at most one attacker seat.
    let owner = account_key(800);
    register_as(&mut net, victim, &params, &owner, "victim");
    net.run_until_ms(60_000);
    let certificate = net
        .events
        .iter()
        .find_map(|(_, _, e)| match e {
            Event::NameRegistered { certificate, .. } => Some(certificate.clone()),
            _ => None,
        })
        .expect("the victim registered");
    let attacker_votes = certificate
        .votes
        .iter()
        .filter(|v| attackers.iter().any(|a| a.key == v.body.voter.key))
        .count();
    assert!(attacker_votes <= 1, "{attacker_votes} attacker seats");
    // A certificate signed by the attacker's own supernodes for the
    // attacker's claim is refused by checkers: they share a /24.
    let attacker_account = account_key(801);
    let forged_claim = claim_for(&net, &params, &attacker_account, "victim");
    // Votes of the attacker's supernodes for its own claim, with the
    // address and time each writes into its vote.
    let forge = |vote_of: &dyn Fn(usize, Contact) -> (Addr, u64)| NameCertificate {
        claim: forged_claim.clone(),
        votes: BoundedVec::truncating(attackers.iter().enumerate().map(|(i, contact)| {
            let (addr, voted_unix_s) = vote_of(i, *contact);
            sign_vote(
                &identity(candidates[i].0).keypair,
                NameVoteBody {
                    name_key: key,
                    claim_hash: claim_hash(&forged_claim),
                    account: attacker_account.public(),
                    voter: Contact { addr, ..*contact },
                    voted_unix_s,
                },
            )
        })),
    };
    let forged = forge(&|_, contact| (contact.addr, UNIX0));
    assert_eq!(
        verify_certificate(CryptoMode::Full, &params, &forged),
        Err(CertificateError::DuplicateVoter)
    );
    // Offered to every supernode anyway, it changes nobody's answer.
    for index in 0..honest.len() {
        let now = net.now();
        deliver(
            &mut net.nodes[index],
            now,
            attackers[0].addr,
            &Message::NameStore {
                certificate: Box::new(forged.clone()),
            },
        );
    }
    net.run_until_ms(70_000);
    assert_eq!(net.owner_of(victim, key), Some(owner.public()));

    // The same keys writing made-up addresses in four /24s into their
    // votes, backdated to the epoch: a certificate that verifies (and
    // would win the conflict rule) but whose voters the network does not
    // know at those addresses. Nobody replaces the owner's record with it.
    let invented = forge(&|i, _| {
        let addr = Addr::from_ipv4_u32(0x0c00_0001 + ((i as u32) << 8), 7_000);
        (addr, i as u64)
    });
    let info = verify_certificate(CryptoMode::Full, &params, &invented).expect("it verifies");
    assert_eq!(info.quorum_unix_s, 3, "and it would win on time");
    for index in 0..honest.len() + attackers.len() {
        let now = net.now();
        deliver(
            &mut net.nodes[index],
            now,
            attackers[0].addr,
            &Message::NameStore {
                certificate: Box::new(invented.clone()),
            },
        );
    }
    net.run_until_ms(80_000);
    assert_eq!(net.owner_of(victim, key), Some(owner.public()));
}

#[test]
fn a_bad_claim_is_refused_with_its_reason() {
    let params = Arc::new(name_params());
    let (mut net, supernodes) = names_network(&params, 3);
    let device = add_client(&mut net, &params, 900, supernodes.clone());
    net.run_until_ms(20_000);
    let account = account_key(900);
    let mut no_work = claim_for(&net, &params, &account, "lazy");
    // A claim with too little work: re-signed, but its hash misses the bound.
    while leading_zeros(&claim_hash(&no_work)) >= params.name_pow_bits {
        no_work.body.pow_nonce += 1;
    }
    no_work.signature = account.sign(
        peerline_core::registry::domain::NAME_CLAIM,
        &peerline_proto::to_signing_bytes(&no_work.body),
    );
    register(&mut net, device, no_work);
    net.run_until_ms(30_000);
    let failure = net.events.iter().find_map(|(i, _, e)| match e {
        Event::NameFailed { reason, .. } if *i == device => Some(*reason),
        _ => None,
    });
    assert_eq!(
        failure,
        Some(NameFailure::Refused(NameRefusal::ProofOfWork))
    );
}

fn leading_zeros(hash: &[u8; 32]) -> u32 {
    let mut bits = 0;
    for byte in hash {
        if *byte != 0 {
            return bits + byte.leading_zeros();
        }
        bits += 8;
    }
    bits
}

#[test]
fn a_supernode_registers_and_looks_up_names_itself() {
    let params = Arc::new(name_params());
    let (mut net, _) = names_network(&params, 6);
    net.run_until_ms(20_000);
    let own = account_key(950);
    register_as(&mut net, 2, &params, &own, "relay-op");
    net.run_until_ms(40_000);
    let key = normalize("relay-op").unwrap().key();
    assert_eq!(registration_outcomes(&net, key).get(&2), Some(&Some(true)));
    assert_eq!(net.owner_of(4, key), Some(own.public()));
    register_as(&mut net, 5, &params, &account_key(951), "Relay-Op");
    net.run_until_ms(60_000);
    assert_eq!(registration_outcomes(&net, key).get(&5), Some(&Some(false)));
}

// ---------------------------------------------------------------------------
// Signed device lists, network-wide revocation, root rotation
// ---------------------------------------------------------------------------

const REVOKE_SUPERNODES: usize = 8;

/// A device of the account whose root is `root`.
fn device_of(root: &Keypair, seed: u64) -> DeviceIdentity {
    let keypair = Keypair::generate(CryptoMode::Full, &mut rng(seed));
    let cert = issue_device_cert(root, keypair.public(), UNIX0 + CERT_TTL_S);
    DeviceIdentity { keypair, cert }
}

fn client_node(
    params: &Arc<Params>,
    identity: DeviceIdentity,
    address: Addr,
    bootstrap: Vec<Contact>,
    now: Now,
    seed: u64,
) -> Node {
    let config = NodeConfig {
        params: Arc::clone(params),
        identity,
        policy: RolePolicy::ClientOnly,
        advertised_addr: address,
        bootstrap,
    };
    Node::new(config, now, seed)
}

/// Eight supernodes joined through the first, settled for 20 s.
fn revocation_network(params: &Arc<Params>) -> (Net, Vec<Contact>) {
    let (mut net, contacts) = joined_supernodes(params, REVOKE_SUPERNODES, 5_000);
    net.run_until_ms(20_000);
    for index in 0..REVOKE_SUPERNODES {
        assert_eq!(
            net.nodes[index].membership_len(),
            REVOKE_SUPERNODES,
            "supernode {index}"
        );
    }
    (net, contacts)
}

fn device_list(
    root: &Keypair,
    version: u64,
    devices: &[PublicKey],
    revoked: &[PublicKey],
) -> peerline_proto::DeviceList {
    sign_device_list(
        root,
        DeviceListBody {
            account_key: root.public(),
            version,
            devices: BoundedVec::truncating(devices.iter().copied()),
            revoked: BoundedVec::truncating(revoked.iter().copied()),
            issued_unix_s: UNIX0,
        },
    )
}

/// Runs in steps of 1 ms until every supernode refuses `device` of
/// `account` (or `limit_ms` passes); returns the virtual ms it took.
fn spread_time_ms(
    net: &mut Net,
    device: &PublicKey,
    account: &PublicKey,
    limit_ms: u64,
) -> Option<u64> {
    let start_ms = net.now_us / 1_000;
    loop {
        if (0..REVOKE_SUPERNODES).all(|i| net.nodes[i].refuses_device(device, account)) {
            return Some(net.now_us / 1_000 - start_ms);
        }
        if net.now_us / 1_000 - start_ms >= limit_ms {
            return None;
        }
        let next = net.now_us / 1_000 + 1;
        net.run_until_ms(next);
    }
}

/// A full login of `device` at supernode `index`, driven by hand: whether
/// it was accepted.
fn raw_login(net: &mut Net, index: usize, device: &DeviceIdentity, from: Addr) -> bool {
    let raw = RawClient {
        addr: from,
        keypair: device.keypair.clone(),
        cert: device.cert,
    };
    let now = net.now();
    is_accepted(&raw.attach(&mut net.nodes[index], now))
}

/// Spread bound stated by the revocation tests: a statement reaches every
/// supernode of the eight within this. The pushes (fanout 3) usually reach
/// all in 2–3 hops of 10 ms; a member they all miss is told in a rumour
/// round (one a second, each holder telling a different member each round,
/// 12 rounds ≥ 7 others), so within 7 rounds of the first holder at worst.
const REVOKE_SPREAD_BOUND_MS: u64 = (REVOKE_SUPERNODES as u64 - 1) * 1_000 + 100;

#[test]
fn revoked_device_is_detached_and_refused_at_every_supernode() {
    let params = Arc::new(params());
    let (mut net, contacts) = revocation_network(&params);
    let root = Keypair::generate(CryptoMode::Full, &mut rng(70));
    let account = root.public();
    let phone = device_of(&root, 71);
    let stolen = device_of(&root, 72);
    let (phone_addr, stolen_addr) = (addr(6_001), addr(6_002));
    let phone_index = net.add(
        client_node(
            &params,
            phone.clone(),
            phone_addr,
            contacts.clone(),
            net.now(),
            71,
        ),
        phone_addr,
    );
    let stolen_index = net.add(
        client_node(
            &params,
            stolen.clone(),
            stolen_addr,
            contacts.clone(),
            net.now(),
            72,
        ),
        stolen_addr,
    );
    net.run_until_ms(30_000);
    assert_eq!(
        net.nodes[stolen_index].attached_supernodes().len(),
        params.attachments_target
    );
    assert_eq!(
        net.nodes[phone_index].attached_supernodes().len(),
        params.attachments_target
    );

    let stolen_ticket = *net.nodes[stolen_index]
        .ticket()
        .expect("a resumption ticket");

    // The owner, from the phone, revokes the stolen laptop.
    let list = device_list(
        &root,
        1,
        &[phone.keypair.public()],
        &[stolen.keypair.public()],
    );
    let now = net.now();
    net.nodes[phone_index].set_device_list(now, list.clone());
    net.flush(phone_index);
    let started = net.events.len();
    let spread_ms = spread_time_ms(&mut net, &stolen.keypair.public(), &account, 60_000)
        .expect("the revocation reached every supernode");
    println!("revocation spread to all {REVOKE_SUPERNODES} supernodes in {spread_ms} ms (virtual)");
    assert!(
        spread_ms <= REVOKE_SPREAD_BOUND_MS,
        "spread took {spread_ms} ms"
    );

    // The stolen device was detached, and stays out: every re-login is refused.
    net.run_until_ms(net.now_us / 1_000 + 60_000);
    assert!(net.nodes[stolen_index].attached_supernodes().is_empty());
    let detached = net.events[started..]
        .iter()
        .filter(|(i, _, e)| {
            *i == stolen_index
                && matches!(
                    e,
                    Event::Detached {
                        reason: DetachReason::DetachedBySupernode,
                        ..
                    }
                )
        })
        .count();
    assert!(detached >= 1, "the stolen device was told to go");
    // Its logins since were refused with the reason, not dropped silently.
    let told_why = net.events[started..]
        .iter()
        .filter(|(i, _, e)| {
            *i == stolen_index
                && matches!(
                    e,
                    Event::LoginRefused {
                        reason: peerline_proto::LoginRefusal::DeviceRevoked,
                        ..
                    }
                )
        })
        .count();
    assert!(told_why >= 1, "the stolen device was told why");
    let detached_by: u64 = (0..REVOKE_SUPERNODES)
        .map(|i| net.nodes[i].stats().revoked_detached)
        .sum();
    assert_eq!(detached_by, params.attachments_target as u64);
    assert_eq!(
        net.nodes[phone_index].attached_supernodes().len(),
        params.attachments_target
    );
    for index in 0..REVOKE_SUPERNODES {
        let refused = net.nodes[index].stats().revoked_refused;
        assert!(
            !raw_login(&mut net, index, &stolen, addr(6_100 + index as u32)),
            "supernode {index} let the stolen device in"
        );
        assert_eq!(net.nodes[index].stats().revoked_refused, refused + 1);
        // Resuming with its ticket (from the address the ticket names) is refused too.
        let raw = RawClient {
            addr: stolen_addr,
            keypair: stolen.keypair.clone(),
            cert: stolen.cert,
        };
        let key = net.nodes[index].supernode_contact().unwrap().key;
        let now = net.now();
        deliver(
            &mut net.nodes[index],
            now,
            stolen_addr,
            &raw.resume(&stolen_ticket, u64::MAX / 2 + index as u64, &key),
        );
        let answers: Vec<Message> = sent(&mut net.nodes[index])
            .into_iter()
            .filter(|(to, _)| *to == stolen_addr)
            .map(|(_, m)| m)
            .collect();
        assert!(
            answers.is_empty(),
            "supernode {index} answered a revoked resume: {answers:?}"
        );
        assert_eq!(net.nodes[index].stats().revoked_refused, refused + 2);
        assert_eq!(net.nodes[index].device_list_version(&account), Some(1));
        assert!(!net.nodes[index].refuses_device(&phone.keypair.public(), &account));
    }

    // Its presence record is refused by every replica; lookups find the phone.
    let record = sign_presence(
        &stolen.keypair,
        PresenceBody {
            cert: stolen.cert,
            sequence: u64::MAX / 2,
            issued_unix_s: net.now().unix_s,
            expires_unix_s: net.now().unix_s + 3_600,
            supernodes: BoundedVec::truncating([contacts[0]]),
        },
    );
    for index in 0..REVOKE_SUPERNODES {
        let refused = net.nodes[index].stats().revoked_refused;
        let now = net.now();
        deliver(
            &mut net.nodes[index],
            now,
            addr(5_000 + ((index as u32 + 1) % 8)),
            &Message::Store {
                record: record.clone(),
            },
        );
        net.flush(index);
        assert_eq!(
            net.nodes[index].stats().revoked_refused,
            refused + 1,
            "supernode {index}"
        );
    }
    let found = net
        .lookup(&params, phone_index, account)
        .expect("the phone's record");
    assert_eq!(found.body.cert.body.device_key, phone.keypair.public());

    // The stolen device cannot undo it: a list it signs does not verify.
    let mut undo = device_list(&root, 2, &[stolen.keypair.public()], &[]);
    undo.signature = stolen.keypair.sign(
        b"peerline/v1/device-list",
        &peerline_proto::to_signing_bytes(&undo.body),
    );
    let rejected: u64 = (0..REVOKE_SUPERNODES)
        .map(|i| net.nodes[i].stats().signatures_rejected)
        .sum();
    let now = net.now();
    deliver(
        &mut net.nodes[0],
        now,
        addr(5_001),
        &Message::DeviceListPush { list: undo },
    );
    net.flush(0);
    net.run_until_ms(net.now_us / 1_000 + 5_000);
    let rejected_after: u64 = (0..REVOKE_SUPERNODES)
        .map(|i| net.nodes[i].stats().signatures_rejected)
        .sum();
    assert_eq!(
        rejected_after,
        rejected + 1,
        "checked once, refused, not passed on"
    );
    assert!((0..REVOKE_SUPERNODES).all(|i| net.nodes[i].device_list_version(&account) == Some(1)));
    assert!(!raw_login(&mut net, 3, &stolen, addr(6_200)));
}

#[test]
fn forged_stale_and_strangers_device_lists_change_nothing() {
    let params = Arc::new(params());
    let (mut a, mut b) = two_supernodes(&params);
    let b_addr = addr(2);
    let root = Keypair::generate(CryptoMode::Full, &mut rng(80));
    let victim = device_of(&root, 81);
    let attacker = Keypair::generate(CryptoMode::Full, &mut rng(82));
    // Signed by another key in the account's name: refused, not passed on.
    let mut forged = device_list(&attacker, 5, &[], &[victim.keypair.public()]);
    forged.body.account_key = root.public();
    deliver(
        &mut a,
        at(100),
        b_addr,
        &Message::DeviceListPush { list: forged },
    );
    assert!(sent(&mut a).is_empty());
    assert_eq!(a.stats().signatures_rejected, 1);
    assert!(!a.refuses_device(&victim.keypair.public(), &root.public()));
    // A genuine one is taken and passed on to the other member.
    let v2 = device_list(&root, 2, &[], &[victim.keypair.public()]);
    deliver(
        &mut a,
        at(200),
        addr(3),
        &Message::DeviceListPush { list: v2.clone() },
    );
    assert_eq!(
        a.stats().account_pushes_unchecked,
        1,
        "a stranger's push is not checked"
    );
    deliver(
        &mut a,
        at(200),
        b_addr,
        &Message::DeviceListPush { list: v2.clone() },
    );
    assert_eq!(a.stats().device_lists_accepted, 1);
    assert!(a.refuses_device(&victim.keypair.public(), &root.public()));
    // Passed on to members other than the sender (here: none but b, so none).
    assert!(sent(&mut a).iter().all(|(to, _)| *to != b_addr));
    // The same version, or an older one, again: ignored before any check.
    let v1 = device_list(&root, 1, &[victim.keypair.public()], &[]);
    deliver(
        &mut a,
        at(300),
        b_addr,
        &Message::DeviceListPush { list: v2 },
    );
    deliver(
        &mut a,
        at(300),
        b_addr,
        &Message::DeviceListPush { list: v1 },
    );
    assert_eq!(a.stats().account_pushes_stale, 2);
    assert_eq!(a.stats().signatures_rejected, 1);
    assert_eq!(a.device_list_version(&root.public()), Some(2));
    assert!(a.refuses_device(&victim.keypair.public(), &root.public()));
    // b learns nothing from a's traffic here (a forwarded nothing to it).
    assert!(!b.refuses_device(&victim.keypair.public(), &root.public()));
    let _ = sent(&mut b);
}

#[test]
fn root_rotation_refuses_old_root_devices_and_admits_the_new_roots() {
    let params = Arc::new(params());
    let (mut net, contacts) = revocation_network(&params);
    let old_root = Keypair::generate(CryptoMode::Full, &mut rng(90));
    let new_root = Keypair::generate(CryptoMode::Full, &mut rng(91));
    let old_phone = device_of(&old_root, 92);
    let old_addr = addr(6_010);
    let old_index = net.add(
        client_node(
            &params,
            old_phone.clone(),
            old_addr,
            contacts.clone(),
            net.now(),
            92,
        ),
        old_addr,
    );
    net.run_until_ms(net.now_us / 1_000 + 10_000);
    assert_eq!(
        net.nodes[old_index].attached_supernodes().len(),
        params.attachments_target
    );

    let rotation = sign_root_rotation(&old_root, &new_root, net.now().unix_s);
    let now = net.now();
    net.nodes[old_index].set_root_rotation(now, rotation);
    net.flush(old_index);
    let spread_ms = spread_time_ms(
        &mut net,
        &old_phone.keypair.public(),
        &old_root.public(),
        60_000,
    )
    .expect("the rotation reached every supernode");
    println!("rotation spread to all {REVOKE_SUPERNODES} supernodes in {spread_ms} ms (virtual)");
    assert!(
        spread_ms <= REVOKE_SPREAD_BOUND_MS,
        "spread took {spread_ms} ms"
    );
    net.run_until_ms(net.now_us / 1_000 + 30_000);
    assert!(
        net.nodes[old_index].attached_supernodes().is_empty(),
        "old-root devices are detached"
    );

    // Whoever holds the old root mints a fresh certificate: refused everywhere.
    let minted = device_of(&old_root, 93);
    for index in 0..REVOKE_SUPERNODES {
        assert!(
            !raw_login(&mut net, index, &minted, addr(6_300 + index as u32)),
            "supernode {index}"
        );
    }
    // A device certified by the new root logs in (as a node, and by hand everywhere).
    let new_phone = device_of(&new_root, 94);
    let new_addr = addr(6_020);
    let new_index = net.add(
        client_node(
            &params,
            new_phone.clone(),
            new_addr,
            contacts.clone(),
            net.now(),
            94,
        ),
        new_addr,
    );
    net.run_until_ms(net.now_us / 1_000 + 10_000);
    assert_eq!(
        net.nodes[new_index].attached_supernodes().len(),
        params.attachments_target
    );
    let other = device_of(&new_root, 95);
    for index in 0..REVOKE_SUPERNODES {
        assert!(
            raw_login(&mut net, index, &other, addr(6_400 + index as u32)),
            "supernode {index}"
        );
        assert!(!net.nodes[index].refuses_device(&new_phone.keypair.public(), &new_root.public()));
    }
}

#[test]
fn a_supernode_that_joins_later_learns_the_list_when_a_device_attaches() {
    let params = Arc::new(params());
    let (mut net, contacts) = revocation_network(&params);
    let root = Keypair::generate(CryptoMode::Full, &mut rng(100));
    let phone = device_of(&root, 101);
    let stolen = device_of(&root, 102);
    let phone_addr = addr(6_030);
    let phone_index = net.add(
        client_node(
            &params,
            phone.clone(),
            phone_addr,
            contacts.clone(),
            net.now(),
            101,
        ),
        phone_addr,
    );
    net.run_until_ms(net.now_us / 1_000 + 10_000);
    let now = net.now();
    net.nodes[phone_index].set_device_list(
        now,
        device_list(
            &root,
            1,
            &[phone.keypair.public()],
            &[stolen.keypair.public()],
        ),
    );
    net.flush(phone_index);
    // Past the rumour rounds (3·log2 8 = 12 s).
    net.run_until_ms(net.now_us / 1_000 + 20_000);
    // A new supernode joins; the phone attaches to it (its only choice).
    let late_addr = addr(5_100);
    let late = supernode(&params, 5_100, late_addr, vec![contacts[0]], net.now());
    let late_contact = late.supernode_contact().unwrap();
    let late_index = net.add(late, late_addr);
    net.run_until_ms(net.now_us / 1_000 + 10_000);
    assert!(!net.nodes[late_index].refuses_device(&stolen.keypair.public(), &root.public()));
    let again_addr = addr(6_031);
    let again = net.add(
        client_node(
            &params,
            phone.clone(),
            again_addr,
            vec![late_contact],
            net.now(),
            103,
        ),
        again_addr,
    );
    // The second instance holds the list too (the daemon sets it at start).
    let now = net.now();
    net.nodes[again].set_device_list(
        now,
        device_list(
            &root,
            1,
            &[phone.keypair.public()],
            &[stolen.keypair.public()],
        ),
    );
    net.run_until_ms(net.now_us / 1_000 + 10_000);
    assert!(net.nodes[again]
        .attached_supernodes()
        .contains(&late_contact));
    assert!(net.nodes[late_index].refuses_device(&stolen.keypair.public(), &root.public()));
}

/// The spread time of a revocation over the eight supernodes, for twenty
/// accounts pushed one after another by one attached device (each list
/// goes to its 2 supernodes, then fanout 3 and rumour rounds).
#[test]
fn revocation_spread_time_in_a_small_network() {
    let params = Arc::new(params());
    let (mut net, contacts) = revocation_network(&params);
    let root = Keypair::generate(CryptoMode::Full, &mut rng(110));
    let pusher = device_of(&root, 111);
    let pusher_addr = addr(6_040);
    let index = net.add(
        client_node(&params, pusher, pusher_addr, contacts, net.now(), 111),
        pusher_addr,
    );
    net.run_until_ms(net.now_us / 1_000 + 10_000);
    let mut times_ms = Vec::new();
    for account in 0..20u64 {
        let other_root = Keypair::generate(CryptoMode::Full, &mut rng(1_000 + account));
        let revoked = Keypair::generate(CryptoMode::Full, &mut rng(2_000 + account)).public();
        let now = net.now();
        // A device list of another account: the supernodes check it like any.
        net.nodes[index]
            .set_device_list(now, device_list(&other_root, account + 1, &[], &[revoked]));
        net.flush(index);
        let spread_ms = spread_time_ms(&mut net, &revoked, &other_root.public(), 60_000)
            .expect("every supernode learnt the revocation");
        times_ms.push(spread_ms);
        net.run_until_ms(net.now_us / 1_000 + 15_000);
    }
    times_ms.sort_unstable();
    println!(
        "revocation spread over {REVOKE_SUPERNODES} supernodes (10 ms links, fanout 3): \
         min {} ms, median {} ms, max {} ms over {} lists",
        times_ms[0],
        times_ms[times_ms.len() / 2],
        times_ms[times_ms.len() - 1],
        times_ms.len()
    );
    assert!(times_ms[times_ms.len() - 1] <= REVOKE_SPREAD_BOUND_MS);
    let stale: u64 = (0..REVOKE_SUPERNODES)
        .map(|i| net.nodes[i].stats().account_pushes_stale)
        .sum();
    let accepted: u64 = (0..REVOKE_SUPERNODES)
        .map(|i| net.nodes[i].stats().device_lists_accepted)
        .sum();
    assert_eq!(
        accepted,
        20 * REVOKE_SUPERNODES as u64,
        "each supernode checks each list once"
    );
    println!(
        "pushes per list: {:.1} ignored unchecked, 1 checked per supernode",
        stale as f64 / 20.0
    );
}

// ---------------------------------------------------------------------------
// Key bundles: password login on a new device (`bundle.rs`,
// `supernode/bundles.rs`, `client/bundles.rs`)
// ---------------------------------------------------------------------------

const PASSWORD: &str = "correct horse battery staple";

struct AccountSecrets {
    root: Keypair,
    bundle: KeyBundle,
    deals: Vec<ShareDeal>,
}

/// A fresh account's root key, its bundle sealed under `PASSWORD` (with the
/// simulation's Argon2id cost) and the first deal of its OPRF shares.
fn account_secrets(seed: u64) -> AccountSecrets {
    let mut rng = rng(70_000 + seed);
    let root = Keypair::generate(CryptoMode::Full, &mut rng);
    let sharing = Sharing {
        threshold: BUNDLE_THRESHOLD,
        holders: BUNDLE_HOLDERS,
    };
    let key = oprf_key(&root.secret_seed().unwrap(), 1);
    let output = oprf_output_with_key(&key, PASSWORD, &root.public());
    let bundle = seal_bundle(
        &root,
        PASSWORD,
        &output,
        KDF_PARAMS_SIMULATION,
        sharing,
        1,
        &mut rng,
    )
    .unwrap();
    let deals = deal(&root, 1, 1, sharing, &mut rng).unwrap();
    AccountSecrets {
        root,
        bundle,
        deals,
    }
}

/// `count` supernodes and the device that creates the account, attached
/// and with its secrets published.
fn bundle_network(count: usize, secrets: &AccountSecrets) -> (Net, Arc<Params>, Vec<Contact>) {
    let (net, params, supernodes, creator) = publishing_network(count, secrets);
    let published = net.events.iter().any(|(i, _, e)| {
        *i == creator
            && matches!(e, Event::AccountSecretsPublished { holders, .. }
                if *holders == usize::from(BUNDLE_HOLDERS) * SHARE_REPLICAS)
    });
    assert!(published, "the creator dealt every share: {:?}", net.events);
    (net, params, supernodes)
}

/// `count` supernodes and a device that attached and, at 20 s, started
/// publishing the account's secrets; run to 25 s. The device's index last.
fn publishing_network(
    count: usize,
    secrets: &AccountSecrets,
) -> (Net, Arc<Params>, Vec<Contact>, usize) {
    let params = Arc::new(params());
    let (mut net, supernodes) = names_network(&params, count);
    let creator = add_client(&mut net, &params, 800, supernodes[..3].to_vec());
    net.run_until_ms(20_000);
    let now = net.now();
    net.nodes[creator].publish_account_secrets(now, secrets.bundle, secrets.deals.clone());
    net.flush(creator);
    net.run_until_ms(25_000);
    (net, params, supernodes, creator)
}

/// The creator's publication outcomes: (ms, deals sent, indices unheld)
/// for each report, and the failures.
fn publication_outcomes(net: &Net, creator: usize) -> (Vec<(u64, usize, u8)>, Vec<BundleFailure>) {
    let mut published = Vec::new();
    let mut failed = Vec::new();
    for (i, t, e) in &net.events {
        match e {
            Event::AccountSecretsPublished {
                holders,
                indices_unheld,
                ..
            } if *i == creator => published.push((*t / 1_000, *holders, *indices_unheld)),
            Event::BundleFailed { reason, .. } if *i == creator => failed.push(*reason),
            _ => {}
        }
    }
    (published, failed)
}

/// A network that stays smaller than the sharing (three holders per index,
/// each supernode holding one index): after asking again the device
/// publishes what it can and says how many indices found no holder, and
/// the password still opens the account from the indices held.
#[test]
fn a_publication_in_a_network_too_small_for_every_index_says_how_many_are_unheld() {
    let secrets = account_secrets(42);
    // Seven supernodes: indices 1 and 2 get three holders, index 3 one.
    let (mut net, params, supernodes, creator) = publishing_network(7, &secrets);
    net.run_until_ms(120_000);
    let (published, failed) = publication_outcomes(&net, creator);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(published.len(), 1, "{published:?}");
    let (at_ms, holders, unheld) = published[0];
    assert_eq!((holders, unheld), (7, 2), "{published:?}");
    // Reported only after the last fetch, not at the first answer.
    assert!(at_ms > 60_000, "{at_ms}");
    let device = add_client(&mut net, &params, 801, supernodes[..3].to_vec());
    net.run_until_ms(140_000);
    let login = net.login(device, secrets.root.public(), PASSWORD);
    assert!(matches!(login, Login::Opened { .. }), "{login:?}");
}

/// With fewer indices held than the threshold a password login could
/// never open the account: the publication fails instead of reporting
/// success.
#[test]
fn a_publication_left_below_the_threshold_of_held_indices_fails() {
    let secrets = account_secrets(43);
    // Four supernodes: two indices held, three needed.
    let (mut net, _params, _supernodes, creator) = publishing_network(4, &secrets);
    net.run_until_ms(120_000);
    let (published, failed) = publication_outcomes(&net, creator);
    assert!(published.is_empty(), "{published:?}");
    assert_eq!(failed, vec![BundleFailure::Unavailable]);
}

/// A supernode with a small view (just after a partition heals) names
/// holders for only some share indices. A share dealt to nobody could
/// never be re-replicated, so the device deals to those named and asks
/// again until every index has holders, and reports the publication then.
#[test]
fn a_publication_told_of_too_few_holders_asks_again_as_the_view_grows() {
    let secrets = account_secrets(41);
    // Four supernodes: index 1 gets three holders, index 2 one, the rest none.
    let (mut net, params, supernodes, creator) = publishing_network(4, &secrets);
    let published = |net: &Net| -> Vec<(u64, usize)> {
        net.events
            .iter()
            .filter_map(|(i, t, e)| match e {
                Event::AccountSecretsPublished { holders, .. } if *i == creator => {
                    Some((*t / 1_000, *holders))
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(published(&net), vec![], "reported with indices unheld");
    // The network grows; the next fetch names holders for every index.
    for i in 4..16 {
        let address = network_addr(10 + i as u32);
        let node = supernode(
            &params,
            3_000 + i as u64,
            address,
            vec![supernodes[0]],
            net.now(),
        );
        net.add(node, address);
    }
    net.run_until_ms(120_000);
    let reports = published(&net);
    assert_eq!(reports.len(), 1, "{reports:?}");
    let (at_ms, holders) = reports[0];
    assert_eq!(holders, usize::from(BUNDLE_HOLDERS) * SHARE_REPLICAS);
    assert!(at_ms > 25_000, "{at_ms}");
    // And the account opens with the password.
    let device = add_client(&mut net, &params, 801, supernodes[..3].to_vec());
    net.run_until_ms(140_000);
    let login = net.login(device, secrets.root.public(), PASSWORD);
    assert!(matches!(login, Login::Opened { .. }), "{login:?}");
}

/// What a login ended in.
#[derive(Debug)]
enum Login {
    Opened {
        root_seed: RootSeed,
        elapsed_ms: u64,
        round_trips: u32,
    },
    Failed(BundleFailure),
}

impl Net {
    /// Runs a password login on `device` to its end.
    fn login(&mut self, device: usize, account: PublicKey, password: &str) -> Login {
        let started = self.events.len();
        let now = self.now();
        let entropy = [device as u8 ^ (started as u8); 32];
        self.nodes[device].open_bundle(now, account, password, entropy);
        self.flush(device);
        self.run_until_ms(now.instant.as_ms() + 30_000);
        let ends: Vec<Login> = self.events[started..]
            .iter()
            .filter(|(i, _, _)| *i == device)
            .filter_map(|(_, _, e)| match e {
                Event::BundleOpened {
                    account: a,
                    root_seed,
                    elapsed_ms,
                    round_trips,
                    ..
                } if *a == account => Some(Login::Opened {
                    root_seed: root_seed.clone(),
                    elapsed_ms: *elapsed_ms,
                    round_trips: *round_trips,
                }),
                Event::BundleFailed { account: a, reason } if *a == account => {
                    Some(Login::Failed(*reason))
                }
                _ => None,
            })
            .collect();
        assert_eq!(ends.len(), 1, "one end per login: {ends:?}");
        ends.into_iter().next().unwrap()
    }

    /// The live nodes holding a share of `account`, by share index.
    fn share_holders(&self, account: &PublicKey) -> BTreeMap<u8, Vec<usize>> {
        let mut out: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if self.crashed[index] {
                continue;
            }
            if let Some(share) = node.held_share_index(account) {
                out.entry(share).or_default().push(index);
            }
        }
        out
    }

    /// The live nodes replicating `account`'s bundle.
    fn bundle_replicas(&self, account: &PublicKey) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| !self.crashed[*i] && self.nodes[*i].held_bundle(account).is_some())
            .collect()
    }
}

fn assert_opened(login: Login, root: &Keypair) -> (u64, u32) {
    match login {
        Login::Opened {
            root_seed,
            elapsed_ms,
            round_trips,
        } => {
            assert_eq!(root_seed.expose(), &root.secret_seed().unwrap());
            (elapsed_ms, round_trips)
        }
        Login::Failed(reason) => panic!("the login failed: {reason:?}"),
    }
}

#[test]
fn a_new_device_opens_the_bundle_and_the_holders_budget_stops_guessing() {
    let secrets = account_secrets(1);
    let account = secrets.root.public();
    let (mut net, params, supernodes) = bundle_network(16, &secrets);
    let holders = net.share_holders(&account);
    assert_eq!(
        holders.keys().copied().collect::<Vec<u8>>(),
        (1..=BUNDLE_HOLDERS).collect::<Vec<u8>>(),
        "every index has a holder: {holders:?}"
    );
    assert!(holders.values().all(|h| h.len() <= SHARE_REPLICAS));
    assert!(!net.bundle_replicas(&account).is_empty());
    // A device that knows only the account key and the password.
    let device = add_client(&mut net, &params, 801, supernodes[8..11].to_vec());
    net.run_until_ms(40_000);
    let (elapsed_ms, round_trips) =
        assert_opened(net.login(device, account, PASSWORD), &secrets.root);
    println!(
        "login on a new device: {round_trips} round trips, {elapsed_ms} ms virtual (10 ms links)"
    );
    assert_eq!(
        round_trips, 3,
        "fetch through the supernode (2) and one evaluation round"
    );
    assert!(elapsed_ms <= 60, "{elapsed_ms} ms");
    // The driver pins a dial to each holder to the holder's key.
    for &holder in holders.values().flatten() {
        let key = net.nodes[holder].supernode_contact().unwrap().key;
        assert_eq!(
            net.nodes[device].path_peer_key(&net.addrs[holder]),
            Some(key)
        );
    }
    // Wrong passwords: each one spends a guess at every holder asked.
    for guess in 2..=GUESS_BURST {
        let login = net.login(device, account, &format!("wrong password {guess}"));
        assert!(
            matches!(login, Login::Failed(BundleFailure::WrongPassword)),
            "guess {guess}: {login:?}"
        );
    }
    // The burst is spent: refused, even with the right password.
    for password in ["wrong password again", PASSWORD] {
        match net.login(device, account, password) {
            Login::Failed(BundleFailure::Refused { retry_after_ms }) => {
                assert!(
                    retry_after_ms > 0 && retry_after_ms <= 360_000,
                    "{retry_after_ms}"
                )
            }
            other => panic!("expected a refusal: {other:?}"),
        }
    }
    // One guess comes back every 6 minutes.
    net.run_until_ms(net.now().instant.as_ms() + 361_000);
    assert_opened(net.login(device, account, PASSWORD), &secrets.root);
}

#[test]
fn a_tampered_bundle_is_refused_by_devices_replicas_and_fetches() {
    let secrets = account_secrets(2);
    let account = secrets.root.public();
    let (mut net, params, supernodes) = bundle_network(16, &secrets);
    let device = add_client(&mut net, &params, 802, supernodes[6..9].to_vec());
    net.run_until_ms(30_000);
    let mut tampered = secrets.bundle;
    tampered.body.version = 2;
    tampered.body.sealed_seed[0] ^= 1;
    // A device will not publish it...
    let now = net.now();
    net.nodes[device].publish_account_secrets(now, tampered, Vec::new());
    let refused = net.nodes[device].drain_events().any(|e| {
        matches!(
            e,
            Event::BundleFailed {
                reason: BundleFailure::Tampered,
                ..
            }
        )
    });
    assert!(refused);
    // ...replicas will not store it...
    let replicas = net.bundle_replicas(&account);
    assert!(!replicas.is_empty());
    for &replica in &replicas {
        let rejected = net.nodes[replica].stats().signatures_rejected;
        let bytes = encode(&Message::BundleStore {
            bundle: Box::new(tampered),
        })
        .unwrap();
        net.nodes[replica].handle(now, addr(9_999), &bytes);
        assert_eq!(
            net.nodes[replica].held_bundle(&account),
            Some(&secrets.bundle)
        );
        assert_eq!(net.nodes[replica].stats().signatures_rejected, rejected + 1);
    }
    // ...and one that a corrupt replica holds anyway is dropped by the
    // supernode that fetches it: the login uses an honest copy.
    for &replica in &replicas[1..] {
        net.nodes[replica].replace_bundle_unchecked(tampered);
    }
    assert_opened(net.login(device, account, PASSWORD), &secrets.root);
    // With every replica corrupt there is no bundle to open.
    net.nodes[replicas[0]].replace_bundle_unchecked(tampered);
    let login = net.login(device, account, PASSWORD);
    assert!(
        matches!(login, Login::Failed(BundleFailure::Unavailable)),
        "{login:?}"
    );
}

#[test]
fn with_fewer_than_t_share_indices_alive_the_password_cannot_be_tested() {
    let secrets = account_secrets(3);
    let account = secrets.root.public();
    let (mut net, params, supernodes) = bundle_network(24, &secrets);
    let holders = net.share_holders(&account);
    // Every holder of indices 3, 4 and 5 crashes: t - 1 indices are left.
    let doomed: BTreeSet<usize> = holders
        .iter()
        .filter(|(index, _)| **index > BUNDLE_THRESHOLD - 1)
        .flat_map(|(_, nodes)| nodes.iter().copied())
        .collect();
    for &node in &doomed {
        net.crash(node);
    }
    net.run_until_ms(net.now().instant.as_ms() + 40_000);
    let left = net.share_holders(&account);
    assert_eq!(
        left.keys().copied().collect::<Vec<u8>>(),
        vec![1, 2],
        "re-replication cannot bring back a share nobody holds: {left:?}"
    );
    assert!(
        !net.bundle_replicas(&account).is_empty(),
        "the bundle is still there"
    );
    let alive: Vec<Contact> = supernodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !doomed.contains(i))
        .map(|(_, c)| *c)
        .take(3)
        .collect();
    let device = add_client(&mut net, &params, 803, alive);
    net.run_until_ms(net.now().instant.as_ms() + 20_000);
    for password in [PASSWORD, "a wrong guess"] {
        let login = net.login(device, account, password);
        assert!(
            matches!(login, Login::Failed(BundleFailure::Unavailable)),
            "the right and a wrong password end alike: {login:?}"
        );
    }
}

#[test]
fn login_survives_losing_every_holder_of_two_indices_and_re_deals_them() {
    let secrets = account_secrets(4);
    let account = secrets.root.public();
    let (mut net, params, supernodes) = bundle_network(20, &secrets);
    // Any supernode may hold a share: the device knows them all, to
    // re-attach when the crashes take its own.
    let device = add_client(&mut net, &params, 804, supernodes.clone());
    net.run_until_ms(30_000);
    // One holder of index 5 crashes: re-replication hands its share on.
    let before = net.share_holders(&account);
    let lost = before[&5][0];
    net.crash(lost);
    net.run_until_ms(net.now().instant.as_ms() + 30_000);
    let after = net.share_holders(&account);
    assert!(
        after[&5].len() >= before[&5].len() - 1
            && after[&5].iter().any(|n| !before[&5].contains(n)),
        "a new node holds index 5: {before:?} → {after:?}"
    );
    // Every holder of indices 1 and 2 crashes.
    let crash_indices = |net: &mut Net, indices: [u8; 2]| {
        let holders = net.share_holders(&account);
        for index in indices {
            for &node in holders.get(&index).into_iter().flatten() {
                net.crash(node);
            }
        }
    };
    crash_indices(&mut net, [1, 2]);
    net.run_until_ms(net.now().instant.as_ms() + 30_000);
    assert!(!net.bundle_replicas(&account).is_empty());
    assert_opened(net.login(device, account, PASSWORD), &secrets.root);
    // The login re-dealt every index to the current holders.
    net.run_until_ms(net.now().instant.as_ms() + 20_000);
    let redealt = net.share_holders(&account);
    assert_eq!(
        redealt.keys().copied().collect::<Vec<u8>>(),
        (1..=BUNDLE_HOLDERS).collect::<Vec<u8>>(),
        "{redealt:?}"
    );
    // So losing every holder of two other indices is survivable too.
    crash_indices(&mut net, [3, 4]);
    net.run_until_ms(net.now().instant.as_ms() + 30_000);
    assert!(!net.bundle_replicas(&account).is_empty());
    assert_opened(net.login(device, account, PASSWORD), &secrets.root);
}

impl Net {
    /// Fetches `account`'s device list from `device`: what the fetch ended in.
    fn fetch_device_list(
        &mut self,
        device: usize,
        account: PublicKey,
    ) -> Result<Option<Box<peerline_proto::DeviceList>>, BundleFailure> {
        let started = self.events.len();
        let now = self.now();
        self.nodes[device].fetch_device_list(now, account);
        self.flush(device);
        self.run_until_ms(now.instant.as_ms() + 10_000);
        let ends: Vec<_> = self.events[started..]
            .iter()
            .filter(|(i, _, _)| *i == device)
            .filter_map(|(_, _, e)| match e {
                Event::DeviceListFetched { account: a, result } if *a == account => {
                    Some(result.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(ends.len(), 1, "one end per fetch: {ends:?}");
        ends.into_iter().next().unwrap()
    }

    /// The live nodes replicating `account`'s device list, with its version.
    fn device_list_replicas(&self, account: &PublicKey) -> Vec<(usize, u64)> {
        (0..self.nodes.len())
            .filter(|i| !self.crashed[*i])
            .filter_map(|i| {
                let list = self.nodes[i].held_device_list(account)?;
                Some((i, list.body.version))
            })
            .collect()
    }
}

#[test]
fn the_device_list_is_kept_with_the_bundle_and_outlives_its_replicas() {
    let secrets = account_secrets(4);
    let root = &secrets.root;
    let account = root.public();
    let (mut net, params, supernodes) = bundle_network(16, &secrets);
    let laptop = add_client(&mut net, &params, 803, supernodes[2..5].to_vec());
    let phone = add_client(&mut net, &params, 804, supernodes[9..12].to_vec());
    let stranger = add_client(&mut net, &params, 805, supernodes[5..8].to_vec());
    net.run_until_ms(30_000);
    assert_eq!(net.fetch_device_list(phone, account), Ok(None));
    // The laptop publishes version 1: both devices current.
    let laptop_key = net.nodes[laptop].identity().keypair.public();
    let phone_key = net.nodes[phone].identity().keypair.public();
    let first = device_list(root, 1, &[laptop_key, phone_key], &[]);
    let now = net.now();
    net.nodes[laptop].set_device_list(now, first.clone());
    net.flush(laptop);
    net.run_until_ms(now.instant.as_ms() + 2_000);
    let replicas = net.device_list_replicas(&account);
    assert_eq!(replicas.len(), params.replication_k, "{replicas:?}");
    assert_eq!(
        net.fetch_device_list(phone, account),
        Ok(Some(Box::new(first.clone())))
    );
    // The phone revokes a lost tablet: version 2 replaces version 1.
    let tablet = PublicKey([77; 32]);
    let second = device_list(root, 2, &[laptop_key, phone_key], &[tablet]);
    let now = net.now();
    net.nodes[phone].set_device_list(now, second.clone());
    net.flush(phone);
    net.run_until_ms(now.instant.as_ms() + 2_000);
    // A replay of version 1 and a list the root did not sign change nothing.
    let forger = Keypair::generate(CryptoMode::Full, &mut rng(806));
    let mut forged = device_list(&forger, 3, &[tablet], &[]);
    forged.body.account_key = account;
    for list in [first, forged] {
        let now = net.now();
        net.nodes[stranger].set_device_list(now, list);
        net.flush(stranger);
        net.run_until_ms(now.instant.as_ms() + 2_000);
    }
    let expected = Ok(Some(Box::new(second)));
    assert_eq!(net.fetch_device_list(laptop, account), expected);
    assert!(net
        .device_list_replicas(&account)
        .iter()
        .all(|(_, version)| *version == 2));
    // Every replica but one crashes: the survivor re-replicates it to the
    // new replica set, and the fetch still finds version 2.
    let replicas = net.device_list_replicas(&account);
    for &(replica, _) in &replicas[1..] {
        net.crash(replica);
    }
    net.run_until_ms(net.now().instant.as_ms() + 40_000);
    let replicas = net.device_list_replicas(&account);
    assert!(replicas.len() >= params.replication_k - 1, "{replicas:?}");
    assert_eq!(net.fetch_device_list(phone, account), expected);
}

impl Net {
    /// `asker`'s lookup of a name: the certificate's account and the owner
    /// after the rotations the answer carried.
    fn name_owner(
        &mut self,
        asker: usize,
        name_key: NodeId,
    ) -> (Option<PublicKey>, Option<PublicKey>) {
        let started = self.events.len();
        let now = self.now();
        self.nodes[asker].lookup_name(now, name_key);
        self.flush(asker);
        self.run_until_ms(now.instant.as_ms() + 15_000);
        let done: Vec<_> = self.events[started..]
            .iter()
            .filter_map(|(i, _, e)| match e {
                Event::NameLookupDone {
                    name_key: key,
                    result: Ok(certificate),
                    owner,
                    ..
                } if *i == asker && *key == name_key => {
                    Some((certificate.as_ref().map(|c| c.claim.body.account), *owner))
                }
                _ => None,
            })
            .collect();
        assert_eq!(done.len(), 1, "one answered lookup: {done:?}");
        done[0]
    }
}

#[test]
fn a_name_follows_its_accounts_root_rotations() {
    let params = Arc::new(params());
    let (mut net, supernodes) = names_network(&params, 12);
    let device = add_client(&mut net, &params, 820, supernodes[..3].to_vec());
    let asker = add_client(&mut net, &params, 821, supernodes[6..9].to_vec());
    net.run_until_ms(20_000);
    let roots: Vec<Keypair> = (30..33).map(account_key).collect();
    register_as(&mut net, device, &params, &roots[0], "alice");
    net.run_until_ms(40_000);
    let key = normalize("alice").unwrap().key();
    let first = Some(roots[0].public());
    assert_eq!(net.name_owner(asker, key), (first, first));
    // Two rotations in turn: the certificate stays the first account's,
    // the owner follows.
    for step in 0..2 {
        let now = net.now();
        let rotation = sign_root_rotation(&roots[step], &roots[step + 1], now.unix_s);
        net.nodes[device].set_root_rotation(now, rotation);
        net.flush(device);
        net.run_until_ms(now.instant.as_ms() + REVOKE_SPREAD_BOUND_MS + 2_000);
        let owner = Some(roots[step + 1].public());
        assert_eq!(
            net.name_owner(asker, key),
            (first, owner),
            "rotation {step}"
        );
    }
    // A supernode that hands out a forged rotation gets nowhere: the owner
    // stays where the checked chain ends.
    let mallory = account_key(40);
    let mut forged = sign_root_rotation(&roots[2], &mallory, net.now().unix_s);
    forged.signature_old = peerline_proto::Signature([7; 64]);
    let owner = peerline_core::account::follow_rotations(
        CryptoMode::Full,
        roots[0].public(),
        &[
            sign_root_rotation(&roots[0], &roots[1], UNIX0),
            sign_root_rotation(&roots[1], &roots[2], UNIX0),
            forged,
        ],
        UNIX0,
        params.clock_skew_tolerance_s,
    );
    assert_eq!(owner, roots[2].public());
}

/// The vote a supernode answers `claim` with (asked by a coordinator at
/// `asker`, the vote window run to its end).
fn vote_answer(node: &mut Node, asker: Addr, claim: &NameClaim, now_ms: u64) -> Option<[u8; 32]> {
    let request = Message::NameVoteRequest {
        query_id: 7,
        claim: claim.clone(),
    };
    node.handle(at(now_ms), asker, &encode(&request).unwrap());
    node.handle_timeout(at(now_ms + params().name_vote_window_ms));
    node.drain_transmits()
        .filter(|t| t.to == asker)
        .find_map(|t| match decode(&t.bytes) {
            Ok(Frame::Message(Message::NameVoteReply { vote, .. })) => {
                vote.map(|v| v.body.claim_hash)
            }
            _ => None,
        })
}

/// Issue #5: a supernode restarted from its stored rows (a new `Node`, as
/// the daemon makes at every start) keeps the one vote it cast per name,
/// so a second claim on the name gets the first vote again; the vote's
/// row is among the changes of the very step whose datagram reveals it.
#[test]
fn a_restarted_supernode_votes_as_before_from_its_stored_rows() {
    let params = Arc::new(Params {
        name_pow_bits: 0,
        ..params()
    });
    let name = normalize("persisted").unwrap();
    let first = make_claim(
        &Keypair::generate(CryptoMode::Full, &mut rng(71)),
        &name,
        UNIX0,
        0,
    );
    let second = make_claim(
        &Keypair::generate(CryptoMode::Full, &mut rng(72)),
        &name,
        UNIX0,
        0,
    );
    let coordinator = addr(9);
    let mut voter = supernode(&params, 70, addr(1), vec![], at(0));
    voter.restore_durable(at(0), &[]).unwrap();
    assert!(voter.take_durable_changes(at(0)).is_empty());
    let request = Message::NameVoteRequest {
        query_id: 7,
        claim: first.clone(),
    };
    voter.handle(at(10), coordinator, &encode(&request).unwrap());
    voter.handle_timeout(at(10 + params.name_vote_window_ms));
    // The reply is queued and the vote is a pending change: a driver
    // commits the change before it drains the reply.
    let changes = voter.take_durable_changes(at(10 + params.name_vote_window_ms));
    assert!(changes.must_sync(), "{changes:?}");
    assert_eq!(changes.changes[0].key, name.key().0);
    let voted = voter
        .drain_transmits()
        .find_map(|t| match decode(&t.bytes) {
            Ok(Frame::Message(Message::NameVoteReply { vote, .. })) => vote,
            _ => None,
        });
    assert_eq!(voted.unwrap().body.claim_hash, claim_hash(&first));

    // Killed; started again from the same directory: same identity, the rows.
    let mut restarted = supernode(&params, 70, addr(1), vec![], at(0));
    let restored = restarted.restore_durable(at(0), &changes.changes).unwrap();
    assert_eq!(restored.rows, 1);
    assert_eq!(
        vote_answer(&mut restarted, coordinator, &second, 20),
        Some(claim_hash(&first)),
        "a restarted voter must not vote for another claim"
    );
    // Without the rows (the daemon before issue #5) it would have.
    let mut forgetful = supernode(&params, 70, addr(1), vec![], at(0));
    assert_eq!(
        vote_answer(&mut forgetful, coordinator, &second, 20),
        Some(claim_hash(&second))
    );
}

#[test]
fn a_login_asks_again_when_a_partial_re_deal_split_the_holders_epochs() {
    let secrets = account_secrets(5);
    let account = secrets.root.public();
    let (mut net, params, supernodes) = bundle_network(24, &secrets);
    let device = add_client(&mut net, &params, 806, supernodes[10..13].to_vec());
    net.run_until_ms(net.now().instant.as_ms() + 20_000);
    let holders = net.share_holders(&account);
    // Each index's holders, closest to its share key first (the order a
    // login asks them in).
    let by_closeness = |net: &Net, index: u8| -> Vec<usize> {
        let key = peerline_core::bundle::share_key(&account, index);
        let mut nodes = holders[&index].clone();
        nodes.sort_by_key(|&n| {
            let contact = net.nodes[n].supernode_contact().unwrap();
            let id = peerline_core::identity::node_id(&contact.key, contact.id_nonce);
            std::array::from_fn::<u8, 32, _>(|i| id.0[i] ^ key.0[i])
        });
        nodes
    };
    // The closest holders of indices 1 and 2 miss the next re-deal (cut
    // off from the device and from their index's other holders, which
    // would pass it on).
    for index in [1, 2] {
        let nodes = by_closeness(&net, index);
        assert!(nodes.len() >= 2, "index {index}: {nodes:?}");
        let cut = net.addrs[nodes[0]];
        net.blocked.push((net.addrs[device], cut));
        for &other in &nodes[1..] {
            net.blocked.push((cut, net.addrs[other]));
        }
    }
    // The first login opens with epoch 1 everywhere and re-deals epoch 2,
    // which the two cut-off holders miss.
    assert_opened(net.login(device, account, PASSWORD), &secrets.root);
    net.run_until_ms(net.now().instant.as_ms() + 30_000);
    // Then every holder of index 5 crashes.
    for &node in &net.share_holders(&account)[&5] {
        net.crash(node);
    }
    // Now the closest holders answer a new device: indices 1, 2 with
    // epoch 1, indices 3, 4 with epoch 2, index 5 not at all; no epoch has
    // 3 answers. The login asks the next holders of 1 and 2 (epoch 2).
    let other = add_client(&mut net, &params, 807, supernodes[14..17].to_vec());
    net.run_until_ms(net.now().instant.as_ms() + 20_000);
    let (_, round_trips) = assert_opened(net.login(other, account, PASSWORD), &secrets.root);
    assert!(round_trips >= 4, "a second round was needed: {round_trips}");
}
