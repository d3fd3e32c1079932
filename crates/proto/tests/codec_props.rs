//! Property tests of the wire codec: decoding is total, every message round
//! trips, version bytes are classified correctly, and damaged encodings are
//! refused rather than misread.
//!
//! The ignored test `write_seed_corpus` also writes the fuzzer's seed corpus:
//!
//! ```text
//! PEERLINE_SEED_CORPUS_DIR=$PWD/fuzz/corpus/decode_frame \
//!     cargo test -p peerline-proto --test codec_props -- --ignored write_seed_corpus
//! ```

use peerline_proto::message::LoginRefusal;
use peerline_proto::message::{
    CONTACTS_PER_MESSAGE_MAX, GOSSIP_UPDATES_MAX, MAIL_BATCH_MAX, MAIL_IDS_MAX, NAME_ROTATIONS_MAX,
    PUNCH_CANDIDATES_MAX, SEALED_CANDIDATES_LEN_MAX, SYNC_PAGE_MEMBERS_MAX,
};
use peerline_proto::{
    decode, encode, encode_version_info, encode_versioned, peek_kind, Addr, BoundedVec, BusyReason,
    Contact, DecodeError, DeviceCert, DeviceCertBody, Envelope, EnvelopeBody, EnvelopeId,
    EnvelopeKind, Frame, MemberState, MemberUpdate, Message, MessageKind, NameCertificate,
    NameClaim, NameClaimBody, NameOutcome, NameRefusal, NameVote, NameVoteBody, NodeId,
    PresenceBody, PresenceRecord, PublicKey, RelayRequestBody, Signature, Ticket, TicketBody,
    VersionInfo, MESSAGE_LEN_MAX, NAME_BYTES_MAX, NAME_VOTES_MAX, PAYLOAD_LEN_MAX,
    PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, RECORD_SUPERNODES_MAX, VERSION_INFO_BYTE,
};
use peerline_proto::{
    BlindedElement, Evaluation, KdfParams, KeyBundle, KeyBundleBody, ShareDeal, ShareDealBody,
    ShareHolder, Sharing, SHARE_HOLDERS_PER_MESSAGE_MAX,
};
use peerline_proto::{
    DeviceList, DeviceListBody, RootRotation, RootRotationBody, DEVICE_LIST_DEVICES_MAX,
    DEVICE_LIST_REVOKED_MAX,
};
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Strategies for the wire types
// ---------------------------------------------------------------------------

/// Integers biased towards the varint length boundaries (postcard encodes
/// u16/u32/u64 as LEB128 varints), plus uniformly random ones.
fn varint_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => (0u32..64).prop_map(|shift| 1u64 << shift),
        1 => (1u32..64).prop_map(|shift| (1u64 << shift) - 1),
        1 => 0u64..300,
    ]
}

fn varint_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => any::<u32>(),
        1 => Just(0u32),
        1 => Just(u32::MAX),
        1 => (0u32..32).prop_map(|shift| 1u32 << shift),
        1 => (1u32..32).prop_map(|shift| (1u32 << shift) - 1),
        1 => 0u32..300,
    ]
}

fn varint_u16() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => any::<u16>(),
        1 => Just(0u16),
        1 => Just(u16::MAX),
        1 => (0u32..16).prop_map(|shift| 1u16 << shift),
        1 => 0u16..300,
    ]
}

/// A bounded vector from up to `N + 2` generated items, so that the
/// truncation at the bound (and full vectors) are exercised too.
fn bounded<S, const N: usize>(item: S) -> impl Strategy<Value = BoundedVec<S::Value, N>>
where
    S: Strategy,
    S::Value: Clone + std::fmt::Debug,
{
    vec(item, 0..=N + 2).prop_map(BoundedVec::truncating)
}

fn public_key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_map(PublicKey)
}

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<[u8; 32]>().prop_map(NodeId)
}

fn signature() -> impl Strategy<Value = Signature> {
    any::<[u8; 64]>().prop_map(Signature)
}

fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        (any::<[u8; 16]>(), varint_u16()).prop_map(|(ip, port)| Addr { ip, port }),
        (any::<u32>(), varint_u16()).prop_map(|(ip, port)| Addr::from_ipv4_u32(ip, port)),
    ]
}

fn contact() -> impl Strategy<Value = Contact> {
    (public_key(), varint_u64(), addr()).prop_map(|(key, id_nonce, addr)| Contact {
        key,
        id_nonce,
        addr,
    })
}

fn device_cert_body() -> impl Strategy<Value = DeviceCertBody> {
    (public_key(), public_key(), varint_u64()).prop_map(
        |(device_key, account_key, expires_unix_s)| DeviceCertBody {
            device_key,
            account_key,
            expires_unix_s,
        },
    )
}

fn device_cert() -> impl Strategy<Value = DeviceCert> {
    (device_cert_body(), signature()).prop_map(|(body, signature)| DeviceCert { body, signature })
}

fn presence_body() -> impl Strategy<Value = PresenceBody> {
    (
        device_cert(),
        varint_u64(),
        varint_u64(),
        varint_u64(),
        bounded::<_, RECORD_SUPERNODES_MAX>(contact()),
    )
        .prop_map(
            |(cert, sequence, issued_unix_s, expires_unix_s, supernodes)| PresenceBody {
                cert,
                sequence,
                issued_unix_s,
                expires_unix_s,
                supernodes,
            },
        )
}

fn presence_record() -> impl Strategy<Value = PresenceRecord> {
    (presence_body(), signature()).prop_map(|(body, signature)| PresenceRecord { body, signature })
}

fn ticket() -> impl Strategy<Value = Ticket> {
    (
        (public_key(), public_key(), varint_u64(), addr()),
        (varint_u64(), varint_u64(), contact(), signature()),
    )
        .prop_map(
            |(
                (device_key, account_key, cert_expires_unix_s, addr),
                (issued_unix_s, expires_unix_s, issuer, signature),
            )| Ticket {
                body: TicketBody {
                    device_key,
                    account_key,
                    cert_expires_unix_s,
                    addr,
                    issued_unix_s,
                    expires_unix_s,
                    issuer,
                },
                signature,
            },
        )
}

fn envelope() -> impl Strategy<Value = Envelope> {
    let kind = prop_oneof![
        vec(any::<u8>(), 0..=PAYLOAD_LEN_MAX + 2).prop_map(|p| EnvelopeKind::Data {
            payload: BoundedVec::truncating(p)
        }),
        varint_u64().prop_map(|up_to_seq| EnvelopeKind::Ack { up_to_seq }),
    ];
    (
        (public_key(), public_key(), public_key(), public_key()),
        (varint_u64(), varint_u64(), kind, signature()),
    )
        .prop_map(
            |(
                (from_device, from_account, to_device, to_account),
                (seq, sent_unix_s, kind, signature),
            )| {
                Envelope {
                    body: EnvelopeBody {
                        from_device,
                        from_account,
                        to_device,
                        to_account,
                        seq,
                        sent_unix_s,
                        kind,
                    },
                    signature,
                }
            },
        )
}

fn envelope_ids() -> impl Strategy<Value = BoundedVec<EnvelopeId, MAIL_IDS_MAX>> {
    bounded::<_, MAIL_IDS_MAX>(any::<[u8; 16]>().prop_map(EnvelopeId))
}

fn member_state() -> impl Strategy<Value = MemberState> {
    prop_oneof![
        Just(MemberState::Alive),
        Just(MemberState::Suspect),
        Just(MemberState::Dead),
    ]
}

fn member_update() -> impl Strategy<Value = MemberUpdate> {
    (contact(), varint_u32(), member_state(), any::<u8>()).prop_map(
        |(contact, incarnation, state, load_pct)| MemberUpdate {
            contact,
            incarnation,
            state,
            load_pct,
        },
    )
}

fn busy_reason() -> impl Strategy<Value = BusyReason> {
    prop_oneof![
        Just(BusyReason::AttachmentsFull),
        Just(BusyReason::Demoting),
        Just(BusyReason::LookupsFull),
        Just(BusyReason::HandshakesFull),
    ]
}

fn version_info() -> impl Strategy<Value = VersionInfo> {
    (any::<u8>(), any::<u8>()).prop_map(|(min, max)| VersionInfo { min, max })
}

// ---------------------------------------------------------------------------
// Strategy for every Message variant
// ---------------------------------------------------------------------------

fn name_claim() -> impl Strategy<Value = NameClaim> {
    (
        bounded::<_, NAME_BYTES_MAX>(any::<u8>()),
        public_key(),
        (varint_u64(), varint_u64()),
        signature(),
    )
        .prop_map(
            |(name, account, (claimed_unix_s, pow_nonce), signature)| NameClaim {
                body: NameClaimBody {
                    name,
                    account,
                    claimed_unix_s,
                    pow_nonce,
                },
                signature,
            },
        )
}

fn name_vote() -> impl Strategy<Value = NameVote> {
    (
        (node_id(), any::<[u8; 32]>(), public_key()),
        (contact(), varint_u64(), signature()),
    )
        .prop_map(
            |((name_key, claim_hash, account), (voter, voted_unix_s, signature))| NameVote {
                body: NameVoteBody {
                    name_key,
                    claim_hash,
                    account,
                    voter,
                    voted_unix_s,
                },
                signature,
            },
        )
}

fn name_certificate() -> impl Strategy<Value = Box<NameCertificate>> {
    (name_claim(), bounded::<_, NAME_VOTES_MAX>(name_vote()))
        .prop_map(|(claim, votes)| Box::new(NameCertificate { claim, votes }))
}

fn name_outcome() -> impl Strategy<Value = NameOutcome> {
    let reason = prop_oneof![
        Just(NameRefusal::Invalid),
        Just(NameRefusal::BadSignature),
        Just(NameRefusal::ProofOfWork),
        Just(NameRefusal::RateLimited),
    ];
    prop_oneof![
        name_certificate().prop_map(|certificate| NameOutcome::Registered { certificate }),
        public_key().prop_map(|owner| NameOutcome::Taken { owner }),
        varint_u32().prop_map(|retry_after_ms| NameOutcome::Unavailable { retry_after_ms }),
        reason.prop_map(|reason| NameOutcome::Refused { reason }),
    ]
}

fn key_bundle() -> impl Strategy<Value = Box<KeyBundle>> {
    (
        (public_key(), varint_u64(), any::<(u8, u8)>()),
        (varint_u32(), varint_u32(), varint_u32()),
        (any::<[u8; 16]>(), any::<[u8; 24]>(), any::<[u8; 32]>()),
        (any::<[u8; 16]>(), signature()),
    )
        .prop_map(
            |(
                (account_key, version, (threshold, holders)),
                (memory_kib, iterations, parallelism),
                (salt, nonce, sealed_seed),
                (tag, signature),
            )| {
                Box::new(KeyBundle {
                    body: KeyBundleBody {
                        account_key,
                        version,
                        sharing: Sharing { threshold, holders },
                        kdf: KdfParams {
                            memory_kib,
                            iterations,
                            parallelism,
                        },
                        salt,
                        nonce,
                        sealed_seed,
                        tag,
                    },
                    signature,
                })
            },
        )
}

fn share_deal() -> impl Strategy<Value = Box<ShareDeal>> {
    (
        (public_key(), varint_u64(), varint_u64(), any::<u8>()),
        (any::<[u8; 32]>(), signature(), any::<[u8; 32]>()),
    )
        .prop_map(
            |((account_key, bundle_version, epoch, index), (commitment, signature, share))| {
                Box::new(ShareDeal {
                    body: ShareDealBody {
                        account_key,
                        bundle_version,
                        epoch,
                        index,
                        commitment,
                    },
                    signature,
                    share,
                })
            },
        )
}

fn share_holder() -> impl Strategy<Value = ShareHolder> {
    (any::<u8>(), contact()).prop_map(|(index, contact)| ShareHolder { index, contact })
}

fn bundle_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        key_bundle().prop_map(|bundle| Message::BundleStore { bundle }),
        (varint_u32(), public_key(), any::<u8>()).prop_map(|(query_id, account, indices)| {
            Message::BundleFetch {
                query_id,
                account,
                indices,
            }
        }),
        (
            varint_u32(),
            proptest::option::of(key_bundle()),
            bounded::<_, SHARE_HOLDERS_PER_MESSAGE_MAX>(share_holder())
        )
            .prop_map(|(query_id, bundle, holders)| Message::BundleFetchResponse {
                query_id,
                bundle,
                holders,
            }),
        share_deal().prop_map(|deal| Message::ShareDealPush { deal }),
        (varint_u32(), public_key(), any::<[u8; 32]>()).prop_map(|(query_id, account, blinded)| {
            Message::OprfEvaluate {
                query_id,
                account,
                blinded: BlindedElement(blinded),
            }
        }),
        (
            varint_u32(),
            any::<u8>(),
            (varint_u64(), varint_u64()),
            any::<[u8; 32]>()
        )
            .prop_map(|(query_id, index, (bundle_version, epoch), evaluation)| {
                Message::OprfAnswer {
                    query_id,
                    index,
                    bundle_version,
                    epoch,
                    evaluation: Evaluation(evaluation),
                }
            }),
        (varint_u32(), varint_u32()).prop_map(|(query_id, retry_after_ms)| {
            Message::OprfRefused {
                query_id,
                retry_after_ms,
            }
        }),
        device_list().prop_map(|list| Message::DeviceListStore {
            list: Box::new(list)
        }),
        (varint_u32(), public_key())
            .prop_map(|(query_id, account)| Message::DeviceListFetch { query_id, account }),
        (varint_u32(), proptest::option::of(device_list())).prop_map(|(query_id, list)| {
            Message::DeviceListFetchResponse {
                query_id,
                list: list.map(Box::new),
            }
        }),
        (
            varint_u32(),
            node_id(),
            proptest::option::of(name_certificate()),
            bounded::<_, NAME_ROTATIONS_MAX>(root_rotation())
        )
            .prop_map(|(query_id, name_key, certificate, moved)| {
                Message::NameLookupAnswer {
                    query_id,
                    name_key,
                    certificate,
                    moved,
                }
            }),
        prop_oneof![
            Just(LoginRefusal::DeviceRevoked),
            Just(LoginRefusal::RootRotated)
        ]
        .prop_map(|reason| Message::LoginRefused { reason }),
    ]
}

fn root_rotation() -> impl Strategy<Value = RootRotation> {
    (
        public_key(),
        public_key(),
        varint_u64(),
        signature(),
        signature(),
    )
        .prop_map(
            |(old_account, new_account, issued_unix_s, signature_old, signature_new)| {
                RootRotation {
                    body: RootRotationBody {
                        old_account,
                        new_account,
                        issued_unix_s,
                    },
                    signature_old,
                    signature_new,
                }
            },
        )
}

fn device_list() -> impl Strategy<Value = DeviceList> {
    (
        public_key(),
        varint_u64(),
        bounded::<_, DEVICE_LIST_DEVICES_MAX>(public_key()),
        bounded::<_, DEVICE_LIST_REVOKED_MAX>(public_key()),
        varint_u64(),
        signature(),
    )
        .prop_map(
            |(account_key, version, devices, revoked, issued_unix_s, signature)| DeviceList {
                body: DeviceListBody {
                    account_key,
                    version,
                    devices,
                    revoked,
                    issued_unix_s,
                },
                signature,
            },
        )
}

fn sealed_candidates() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        device_cert(),
        public_key(),
        (addr(), addr()),
        any::<bool>(),
        any::<[u8; 32]>(),
        bounded::<_, SEALED_CANDIDATES_LEN_MAX>(any::<u8>()),
    )
        .prop_map(
            |(
                session,
                from_cert,
                to_device,
                (to_supernode, reply_supernode),
                answer,
                ephemeral,
                sealed,
            )| Message::SealedCandidates {
                session,
                from_cert,
                to_device,
                to_supernode,
                reply_supernode,
                answer,
                ephemeral,
                sealed,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        bundle_message(),
        sealed_candidates(),
        device_cert().prop_map(|cert| Message::AttachHello { cert }),
        (contact(), any::<[u8; 32]>()).prop_map(|(supernode, challenge)| {
            Message::AttachChallenge {
                supernode,
                challenge,
            }
        }),
        (device_cert(), any::<[u8; 32]>(), signature()).prop_map(|(cert, challenge, signature)| {
            Message::AttachProof {
                cert,
                challenge,
                signature,
            }
        }),
        (
            varint_u16(),
            any::<u8>(),
            bounded::<_, CONTACTS_PER_MESSAGE_MAX>(contact()),
            proptest::option::of(ticket())
        )
            .prop_map(|(keepalive_interval_s, load_pct, peers, ticket)| {
                Message::AttachAccepted {
                    keepalive_interval_s,
                    load_pct,
                    peers,
                    ticket,
                }
            }),
        (
            busy_reason(),
            varint_u32(),
            bounded::<_, CONTACTS_PER_MESSAGE_MAX>(contact())
        )
            .prop_map(|(reason, retry_after_ms, alternates)| Message::Busy {
                reason,
                retry_after_ms,
                alternates,
            }),
        bounded::<_, CONTACTS_PER_MESSAGE_MAX>(contact())
            .prop_map(|alternates| Message::Detach { alternates }),
        bounded::<_, CONTACTS_PER_MESSAGE_MAX>(contact())
            .prop_map(|alternates| Message::Leaving { alternates }),
        varint_u32().prop_map(|sequence| Message::Ping { sequence }),
        (varint_u32(), any::<u8>(), proptest::option::of(ticket())).prop_map(
            |(sequence, load_pct, ticket)| Message::Pong {
                sequence,
                load_pct,
                network_load_pct: load_pct / 2,
                ticket,
            }
        ),
        Just(Message::NotAttached),
        Just(Message::Keepalive),
        public_key().prop_map(|supernode| Message::PeerDown { supernode }),
        presence_record().prop_map(|record| Message::Publish { record }),
        (varint_u32(), public_key())
            .prop_map(|(query_id, account)| Message::LookupRequest { query_id, account }),
        (
            varint_u32(),
            proptest::option::of(presence_record()),
            any::<u8>()
        )
            .prop_map(|(query_id, record, hops)| Message::LookupResponse {
                query_id,
                record,
                hops,
            }),
        varint_u64().prop_map(|token| Message::ProbeRequest { token }),
        varint_u64().prop_map(|token| Message::Probe { token }),
        (addr(), varint_u64()).prop_map(|(target, token)| Message::ProbeForward { target, token }),
        (
            varint_u32(),
            member_update(),
            bounded::<_, GOSSIP_UPDATES_MAX>(member_update())
        )
            .prop_map(|(sequence, sender, updates)| Message::GossipPing {
                sequence,
                sender,
                updates,
            }),
        (
            varint_u32(),
            member_update(),
            bounded::<_, GOSSIP_UPDATES_MAX>(member_update())
        )
            .prop_map(|(sequence, sender, updates)| Message::GossipAck {
                sequence,
                sender,
                updates,
            }),
        (varint_u32(), member_update())
            .prop_map(|(cursor, sender)| Message::SyncRequest { cursor, sender }),
        (
            bounded::<_, SYNC_PAGE_MEMBERS_MAX>(member_update()),
            proptest::option::of(varint_u32())
        )
            .prop_map(|(members, next_cursor)| Message::SyncResponse {
                members,
                next_cursor,
            }),
        presence_record().prop_map(|record| Message::Store { record }),
        (varint_u32(), node_id()).prop_map(|(query_id, key)| Message::FindValue { query_id, key }),
        (
            varint_u32(),
            proptest::option::of(presence_record()),
            bounded::<_, CONTACTS_PER_MESSAGE_MAX>(contact())
        )
            .prop_map(|(query_id, record, closer)| Message::FindValueResponse {
                query_id,
                record,
                closer,
            }),
        (ticket(), varint_u64(), signature()).prop_map(|(ticket, counter, signature)| {
            Message::AttachResume {
                ticket,
                counter,
                signature,
            }
        }),
        envelope().prop_map(|envelope| Message::MailPut { envelope }),
        (envelope(), any::<bool>())
            .prop_map(|(envelope, push)| Message::MailStore { envelope, push }),
        envelope().prop_map(|envelope| Message::MailDeliver { envelope }),
        (public_key(), public_key())
            .prop_map(|(account, device)| Message::MailFetch { account, device }),
        (
            public_key(),
            bounded::<_, MAIL_BATCH_MAX>(envelope()),
            any::<bool>()
        )
            .prop_map(|(device, envelopes, more)| Message::MailBatch {
                device,
                envelopes,
                more
            }),
        envelope_ids().prop_map(|ids| Message::MailDone { ids }),
        (public_key(), envelope_ids())
            .prop_map(|(device, ids)| Message::MailDelete { device, ids }),
        (
            any::<u64>(),
            (public_key(), public_key()),
            (addr(), addr()),
            any::<bool>(),
            bounded::<_, PUNCH_CANDIDATES_MAX>(addr())
        )
            .prop_map(
                |(
                    session,
                    (from_device, to_device),
                    (to_supernode, reply_supernode),
                    answer,
                    candidates,
                )| {
                    Message::PunchCandidates {
                        session,
                        from_device,
                        to_device,
                        to_supernode,
                        reply_supernode,
                        answer,
                        candidates,
                    }
                }
            ),
        any::<u64>().prop_map(|session| Message::PathPing { session }),
        any::<u64>().prop_map(|session| Message::PathPong { session }),
        (
            any::<u64>(),
            (public_key(), public_key()),
            addr(),
            signature()
        )
            .prop_map(|(session, (from_device, to_device), relay, signature)| {
                Message::RelayRequest {
                    body: RelayRequestBody {
                        session,
                        from_device,
                        to_device,
                        relay,
                    },
                    signature,
                }
            }),
        (any::<u64>(), any::<u16>(), any::<u16>()).prop_map(|(session, channel, lifetime_s)| {
            Message::RelayGranted {
                session,
                channel,
                lifetime_s,
            }
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(session, retry_after_ms)| {
            Message::RelayRefused {
                session,
                retry_after_ms,
            }
        }),
        name_claim().prop_map(|claim| Message::NameRegister { claim }),
        (varint_u32(), name_claim())
            .prop_map(|(query_id, claim)| Message::NameVoteRequest { query_id, claim }),
        (
            varint_u32(),
            proptest::option::of(name_vote()),
            proptest::option::of(name_certificate())
        )
            .prop_map(|(query_id, vote, certificate)| Message::NameVoteReply {
                query_id,
                vote,
                certificate,
            }),
        name_certificate().prop_map(|certificate| Message::NameStore { certificate }),
        (node_id(), name_outcome())
            .prop_map(|(name_key, outcome)| Message::NameResult { name_key, outcome }),
        (varint_u32(), node_id())
            .prop_map(|(query_id, name_key)| Message::NameLookup { query_id, name_key }),
        (varint_u32(), node_id())
            .prop_map(|(query_id, name_key)| Message::NameFind { query_id, name_key }),
        (varint_u32(), proptest::option::of(name_certificate())).prop_map(
            |(query_id, certificate)| Message::NameFindResponse {
                query_id,
                certificate,
            }
        ),
        (
            varint_u32(),
            node_id(),
            proptest::option::of(name_certificate())
        )
            .prop_map(|(query_id, name_key, certificate)| {
                Message::NameLookupResponse {
                    query_id,
                    name_key,
                    certificate,
                }
            }),
        (
            public_key(),
            varint_u64(),
            bounded::<_, DEVICE_LIST_DEVICES_MAX>(public_key()),
            bounded::<_, DEVICE_LIST_REVOKED_MAX>(public_key()),
            varint_u64(),
            signature(),
        )
            .prop_map(
                |(account_key, version, devices, revoked, issued_unix_s, signature)| {
                    Message::DeviceListPush {
                        list: DeviceList {
                            body: DeviceListBody {
                                account_key,
                                version,
                                devices,
                                revoked,
                                issued_unix_s,
                            },
                            signature,
                        },
                    }
                }
            ),
        (
            public_key(),
            public_key(),
            varint_u64(),
            signature(),
            signature()
        )
            .prop_map(
                |(old_account, new_account, issued_unix_s, signature_old, signature_new)| {
                    Message::RootRotationPush {
                        rotation: RootRotation {
                            body: RootRotationBody {
                                old_account,
                                new_account,
                                issued_unix_s,
                            },
                            signature_old,
                            signature_new,
                        },
                    }
                }
            ),
    ]
}

/// Fails to compile when a variant is added without updating this file
/// (the strategy above and the examples below must cover every variant).
#[allow(dead_code)]
fn every_variant_is_covered(m: &Message) {
    match m {
        Message::AttachHello { .. }
        | Message::AttachChallenge { .. }
        | Message::AttachProof { .. }
        | Message::AttachAccepted { .. }
        | Message::Busy { .. }
        | Message::Detach { .. }
        | Message::Ping { .. }
        | Message::Pong { .. }
        | Message::NotAttached
        | Message::Keepalive
        | Message::Leaving { .. }
        | Message::PeerDown { .. }
        | Message::Publish { .. }
        | Message::LookupRequest { .. }
        | Message::LookupResponse { .. }
        | Message::ProbeRequest { .. }
        | Message::Probe { .. }
        | Message::ProbeForward { .. }
        | Message::GossipPing { .. }
        | Message::GossipAck { .. }
        | Message::SyncRequest { .. }
        | Message::SyncResponse { .. }
        | Message::Store { .. }
        | Message::FindValue { .. }
        | Message::FindValueResponse { .. }
        | Message::AttachResume { .. }
        | Message::MailPut { .. }
        | Message::MailStore { .. }
        | Message::MailDeliver { .. }
        | Message::MailFetch { .. }
        | Message::MailBatch { .. }
        | Message::MailDone { .. }
        | Message::MailDelete { .. }
        | Message::PunchCandidates { .. }
        | Message::PathPing { .. }
        | Message::PathPong { .. }
        | Message::RelayRequest { .. }
        | Message::RelayGranted { .. }
        | Message::RelayRefused { .. }
        | Message::NameRegister { .. }
        | Message::NameVoteRequest { .. }
        | Message::NameVoteReply { .. }
        | Message::NameStore { .. }
        | Message::NameResult { .. }
        | Message::NameLookup { .. }
        | Message::NameFind { .. }
        | Message::NameFindResponse { .. }
        | Message::NameLookupResponse { .. }
        | Message::DeviceListPush { .. }
        | Message::RootRotationPush { .. }
        | Message::BundleStore { .. }
        | Message::BundleFetch { .. }
        | Message::BundleFetchResponse { .. }
        | Message::ShareDealPush { .. }
        | Message::OprfEvaluate { .. }
        | Message::OprfAnswer { .. }
        | Message::OprfRefused { .. }
        | Message::DeviceListStore { .. }
        | Message::DeviceListFetch { .. }
        | Message::DeviceListFetchResponse { .. }
        | Message::NameLookupAnswer { .. }
        | Message::LoginRefused { .. }
        | Message::SealedCandidates { .. } => {}
    }
}

// ---------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------

/// What must hold for any input to `decode`: no panic, the right error class,
/// and any accepted message re-encodes (canonically, so no longer than the
/// input) to bytes that decode to the same message.
fn check_decode_total(bytes: &[u8]) -> Result<(), TestCaseError> {
    let result = decode(bytes);
    let peeked = peek_kind(bytes);
    match &result {
        Ok(Frame::Message(m)) => {
            prop_assert_eq!(peeked, Some(m.kind()));
            prop_assert!(bytes.len() <= MESSAGE_LEN_MAX);
            let re = encode_versioned(bytes[0], m).map_err(|e| {
                TestCaseError::fail(format!("decoded message does not re-encode: {e}"))
            })?;
            prop_assert!(
                re.len() <= bytes.len(),
                "re-encoding is longer than the input"
            );
            prop_assert_eq!(decode(&re), Ok(Frame::Message(m.clone())));
            let re_default = encode(m).expect("encodes");
            prop_assert_eq!(decode(&re_default), Ok(Frame::Message(m.clone())));
        }
        Ok(Frame::Versions(v)) => {
            prop_assert_eq!(bytes, &[VERSION_INFO_BYTE, v.min, v.max][..]);
        }
        Err(DecodeError::Empty) => prop_assert!(bytes.is_empty()),
        Err(DecodeError::TooLong { len }) => {
            prop_assert_eq!(*len, bytes.len());
            prop_assert!(bytes.len() > MESSAGE_LEN_MAX);
        }
        Err(DecodeError::UnsupportedVersion { version }) => {
            prop_assert_eq!(*version, bytes[0]);
            prop_assert!(*version != VERSION_INFO_BYTE);
            prop_assert!(!(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(version));
        }
        Err(DecodeError::Malformed) | Err(DecodeError::TrailingBytes { .. }) => {}
    }
    // Classification of the envelope, independent of the body.
    if bytes.is_empty() {
        prop_assert_eq!(result, Err(DecodeError::Empty));
    } else if bytes.len() > MESSAGE_LEN_MAX {
        prop_assert_eq!(result, Err(DecodeError::TooLong { len: bytes.len() }));
    } else if bytes[0] != VERSION_INFO_BYTE
        && !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&bytes[0])
    {
        prop_assert_eq!(
            result,
            Err(DecodeError::UnsupportedVersion { version: bytes[0] })
        );
    }
    Ok(())
}

fn encode_checked(m: &Message) -> Result<Vec<u8>, TestCaseError> {
    let bytes = encode(m).map_err(|e| TestCaseError::fail(format!("encode failed: {e}")))?;
    prop_assert!(bytes.len() <= MESSAGE_LEN_MAX, "{} bytes", bytes.len());
    prop_assert_eq!(bytes[0], PROTOCOL_VERSION_MAX);
    Ok(bytes)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Failures are reported, not persisted: this file must not write
        // into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..=20_000)) {
        check_decode_total(&bytes)?;
    }

    #[test]
    fn decode_never_panics_on_short_v1_bodies(body in vec(any::<u8>(), 0..64)) {
        let mut bytes = vec![PROTOCOL_VERSION_MAX];
        bytes.extend_from_slice(&body);
        check_decode_total(&bytes)?;
    }

    #[test]
    fn decode_never_panics_on_short_version_info_bodies(body in vec(any::<u8>(), 0..8)) {
        let mut bytes = vec![VERSION_INFO_BYTE];
        bytes.extend_from_slice(&body);
        check_decode_total(&bytes)?;
        if body.len() == 2 {
            prop_assert_eq!(
                decode(&bytes),
                Ok(Frame::Versions(VersionInfo { min: body[0], max: body[1] }))
            );
        } else {
            prop_assert!(decode(&bytes).is_err());
        }
    }

    /// Valid encodings with a few bytes overwritten: reaches much deeper into
    /// the decoder than uniformly random bytes.
    #[test]
    fn decode_never_panics_on_damaged_encodings(
        m in message(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = encode_checked(&m)?;
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        check_decode_total(&bytes)?;
    }

    #[test]
    fn every_message_round_trips(m in message()) {
        let bytes = encode_checked(&m)?;
        prop_assert_eq!(decode(&bytes), Ok(Frame::Message(m.clone())));
        prop_assert_eq!(peek_kind(&bytes), Some(m.kind()));
        // Encoding is deterministic.
        prop_assert_eq!(encode(&m).unwrap(), bytes);
        prop_assert_eq!(m.kind(), m.clone().kind());
    }

    #[test]
    fn unsupported_version_bytes_are_refused(m in message(), version in 2u8..=255) {
        let mut bytes = encode_checked(&m)?;
        bytes[0] = version;
        prop_assert_eq!(decode(&bytes), Err(DecodeError::UnsupportedVersion { version }));
        let versioned = encode_versioned(version, &m).unwrap();
        prop_assert_eq!(&versioned, &bytes);
        prop_assert_eq!(decode(&versioned), Err(DecodeError::UnsupportedVersion { version }));
    }

    #[test]
    fn version_byte_zero_carries_version_info(v in version_info()) {
        let bytes = [VERSION_INFO_BYTE, v.min, v.max];
        prop_assert_eq!(decode(&bytes), Ok(Frame::Versions(v)));
    }

    #[test]
    fn common_version_is_the_highest_shared_version(a in version_info(), b in version_info()) {
        let expected = (0..=u8::MAX)
            .rev()
            .find(|v| (a.min..=a.max).contains(v) && (b.min..=b.max).contains(v));
        prop_assert_eq!(a.common_version(&b), expected);
        prop_assert_eq!(b.common_version(&a), expected);
    }

    #[test]
    fn every_truncation_is_refused(m in message()) {
        let bytes = encode_checked(&m)?;
        for len in 0..bytes.len() {
            let result = decode(&bytes[..len]);
            prop_assert!(result.is_err(), "prefix of {} of {} bytes decoded: {:?}", len, bytes.len(), result);
            if len == 0 {
                prop_assert_eq!(result, Err(DecodeError::Empty));
            }
        }
    }

    #[test]
    fn appended_bytes_are_refused(m in message(), extra in vec(any::<u8>(), 1..4)) {
        let mut bytes = encode_checked(&m)?;
        bytes.push(extra[0]);
        prop_assert_eq!(decode(&bytes), Err(DecodeError::TrailingBytes { extra: 1 }));
        bytes.extend_from_slice(&extra[1..]);
        prop_assert_eq!(decode(&bytes), Err(DecodeError::TrailingBytes { extra: extra.len() }));
    }
}

// ---------------------------------------------------------------------------
// Deterministic examples
// ---------------------------------------------------------------------------

#[test]
fn our_version_info_decodes_to_ours() {
    assert_eq!(
        decode(&encode_version_info()),
        Ok(Frame::Versions(VersionInfo::OURS))
    );
    assert_eq!(
        VersionInfo::OURS.common_version(&VersionInfo::OURS),
        Some(PROTOCOL_VERSION_MAX)
    );
    let disjoint = VersionInfo { min: 2, max: 9 };
    assert_eq!(VersionInfo::OURS.common_version(&disjoint), None);
    let wide = VersionInfo { min: 0, max: 255 };
    assert_eq!(
        VersionInfo::OURS.common_version(&wide),
        Some(PROTOCOL_VERSION_MAX)
    );
    assert_eq!(
        VersionInfo { min: 1, max: 5 }.common_version(&VersionInfo { min: 3, max: 7 }),
        Some(5)
    );
}

#[test]
fn empty_and_oversized_datagrams_are_refused() {
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
    let big = vec![PROTOCOL_VERSION_MAX; MESSAGE_LEN_MAX + 1];
    assert_eq!(
        decode(&big),
        Err(DecodeError::TooLong {
            len: MESSAGE_LEN_MAX + 1
        })
    );
}

/// A contact whose fields all take their longest encoding.
fn widest_addr() -> Addr {
    Addr {
        ip: [0xff; 16],
        port: u16::MAX,
    }
}

fn widest_contact(i: u8) -> Contact {
    Contact {
        key: PublicKey([i; 32]),
        id_nonce: u64::MAX,
        addr: Addr {
            ip: [0xff; 16],
            port: u16::MAX,
        },
    }
}

fn widest_member(i: u8) -> MemberUpdate {
    MemberUpdate {
        contact: widest_contact(i),
        incarnation: u32::MAX,
        state: MemberState::Suspect,
        load_pct: u8::MAX,
    }
}

fn widest_record() -> PresenceRecord {
    PresenceRecord {
        body: PresenceBody {
            cert: DeviceCert {
                body: DeviceCertBody {
                    device_key: PublicKey([0xaa; 32]),
                    account_key: PublicKey([0xbb; 32]),
                    expires_unix_s: u64::MAX,
                },
                signature: Signature([0xcc; 64]),
            },
            sequence: u64::MAX,
            issued_unix_s: u64::MAX,
            expires_unix_s: u64::MAX,
            supernodes: BoundedVec::truncating((0..=255).map(widest_contact)),
        },
        signature: Signature([0xdd; 64]),
    }
}

fn widest_envelope() -> Envelope {
    Envelope {
        body: EnvelopeBody {
            from_device: PublicKey([0x21; 32]),
            from_account: PublicKey([0x22; 32]),
            to_device: PublicKey([0x23; 32]),
            to_account: PublicKey([0x24; 32]),
            seq: u64::MAX,
            sent_unix_s: u64::MAX,
            kind: EnvelopeKind::Data {
                payload: BoundedVec::truncating(std::iter::repeat_n(0xffu8, PAYLOAD_LEN_MAX)),
            },
        },
        signature: Signature([0x25; 64]),
    }
}

fn widest_ticket() -> Ticket {
    Ticket {
        body: TicketBody {
            device_key: PublicKey([0x55; 32]),
            account_key: PublicKey([0x66; 32]),
            cert_expires_unix_s: u64::MAX,
            addr: widest_contact(2).addr,
            issued_unix_s: u64::MAX,
            expires_unix_s: u64::MAX,
            issuer: widest_contact(3),
        },
        signature: Signature([0x77; 64]),
    }
}

/// Every variant with every collection full and every integer at its widest:
/// the largest encoding each variant can have.
fn widest_certificate() -> Box<NameCertificate> {
    let vote = |i: u8| NameVote {
        body: NameVoteBody {
            name_key: NodeId([0xb0; 32]),
            claim_hash: [0xb1; 32],
            account: PublicKey([0xb2; 32]),
            voter: widest_contact(i),
            voted_unix_s: u64::MAX,
        },
        signature: Signature([0xb3; 64]),
    };
    Box::new(NameCertificate {
        claim: NameClaim {
            body: NameClaimBody {
                name: BoundedVec::truncating(std::iter::repeat_n(0xff, NAME_BYTES_MAX)),
                account: PublicKey([0xb4; 32]),
                claimed_unix_s: u64::MAX,
                pow_nonce: u64::MAX,
            },
            signature: Signature([0xb5; 64]),
        },
        votes: BoundedVec::truncating((0..NAME_VOTES_MAX as u8).map(vote)),
    })
}

fn widest_messages() -> Vec<Message> {
    fn contacts<const N: usize>() -> BoundedVec<Contact, N> {
        BoundedVec::truncating((0..=255).map(widest_contact))
    }
    fn members<const N: usize>() -> BoundedVec<MemberUpdate, N> {
        BoundedVec::truncating((0..=255).cycle().map(widest_member))
    }
    let out = vec![
        Message::AttachHello {
            cert: widest_record().body.cert,
        },
        Message::AttachChallenge {
            supernode: widest_contact(1),
            challenge: [0xee; 32],
        },
        Message::AttachProof {
            cert: widest_record().body.cert,
            challenge: [0xee; 32],
            signature: Signature([0x11; 64]),
        },
        Message::AttachAccepted {
            keepalive_interval_s: u16::MAX,
            load_pct: u8::MAX,
            peers: contacts(),
            ticket: Some(widest_ticket()),
        },
        Message::Busy {
            reason: BusyReason::Demoting,
            retry_after_ms: u32::MAX,
            alternates: contacts(),
        },
        Message::Detach {
            alternates: contacts(),
        },
        Message::Ping { sequence: u32::MAX },
        Message::Pong {
            sequence: u32::MAX,
            load_pct: u8::MAX,
            network_load_pct: u8::MAX,
            ticket: Some(widest_ticket()),
        },
        Message::NotAttached,
        Message::PeerDown {
            supernode: PublicKey([0x44; 32]),
        },
        Message::Publish {
            record: widest_record(),
        },
        Message::LookupRequest {
            query_id: u32::MAX,
            account: PublicKey([0x22; 32]),
        },
        Message::LookupResponse {
            query_id: u32::MAX,
            record: Some(widest_record()),
            hops: u8::MAX,
        },
        Message::ProbeRequest { token: u64::MAX },
        Message::Probe { token: u64::MAX },
        Message::ProbeForward {
            target: widest_contact(3).addr,
            token: u64::MAX,
        },
        Message::GossipPing {
            sequence: u32::MAX,
            sender: widest_member(4),
            updates: members(),
        },
        Message::GossipAck {
            sequence: u32::MAX,
            sender: widest_member(5),
            updates: members(),
        },
        Message::SyncRequest {
            cursor: u32::MAX,
            sender: widest_member(6),
        },
        Message::SyncResponse {
            members: members(),
            next_cursor: Some(u32::MAX),
        },
        Message::Store {
            record: widest_record(),
        },
        Message::FindValue {
            query_id: u32::MAX,
            key: NodeId([0x33; 32]),
        },
        Message::FindValueResponse {
            query_id: u32::MAX,
            record: Some(widest_record()),
            closer: contacts(),
        },
        Message::AttachResume {
            ticket: widest_ticket(),
            counter: u64::MAX,
            signature: Signature([0x88; 64]),
        },
        Message::MailPut {
            envelope: widest_envelope(),
        },
        Message::MailStore {
            envelope: widest_envelope(),
            push: true,
        },
        Message::MailDeliver {
            envelope: widest_envelope(),
        },
        Message::MailFetch {
            account: PublicKey([0x99; 32]),
            device: PublicKey([0x9a; 32]),
        },
        Message::MailBatch {
            device: PublicKey([0x9b; 32]),
            envelopes: BoundedVec::truncating(std::iter::repeat_n(
                widest_envelope(),
                MAIL_BATCH_MAX,
            )),
            more: true,
        },
        Message::MailDone {
            ids: BoundedVec::truncating((0..=255u8).map(|i| EnvelopeId([i; 16]))),
        },
        Message::MailDelete {
            device: PublicKey([0x9c; 32]),
            ids: BoundedVec::truncating((0..=255u8).map(|i| EnvelopeId([i; 16]))),
        },
        Message::PunchCandidates {
            session: u64::MAX,
            from_device: PublicKey([0x9d; 32]),
            to_device: PublicKey([0x9e; 32]),
            to_supernode: widest_addr(),
            reply_supernode: widest_addr(),
            answer: true,
            candidates: BoundedVec::truncating(std::iter::repeat_n(
                widest_addr(),
                PUNCH_CANDIDATES_MAX,
            )),
        },
        Message::PathPing { session: u64::MAX },
        Message::PathPong { session: u64::MAX },
        Message::RelayRequest {
            body: RelayRequestBody {
                session: u64::MAX,
                from_device: PublicKey([0x9f; 32]),
                to_device: PublicKey([0xa0; 32]),
                relay: widest_addr(),
            },
            signature: Signature([0xa1; 64]),
        },
        Message::RelayGranted {
            session: u64::MAX,
            channel: u16::MAX,
            lifetime_s: u16::MAX,
        },
        Message::RelayRefused {
            session: u64::MAX,
            retry_after_ms: u32::MAX,
        },
        Message::NameRegister {
            claim: widest_certificate().claim,
        },
        Message::NameVoteRequest {
            query_id: u32::MAX,
            claim: widest_certificate().claim,
        },
        Message::NameVoteReply {
            query_id: u32::MAX,
            vote: Some(widest_certificate().votes.as_slice()[0].clone()),
            certificate: Some(widest_certificate()),
        },
        Message::NameStore {
            certificate: widest_certificate(),
        },
        Message::NameResult {
            name_key: NodeId([0xb6; 32]),
            outcome: NameOutcome::Registered {
                certificate: widest_certificate(),
            },
        },
        Message::NameLookup {
            query_id: u32::MAX,
            name_key: NodeId([0xb7; 32]),
        },
        Message::NameFind {
            query_id: u32::MAX,
            name_key: NodeId([0xb8; 32]),
        },
        Message::NameFindResponse {
            query_id: u32::MAX,
            certificate: Some(widest_certificate()),
        },
        Message::NameLookupResponse {
            query_id: u32::MAX,
            name_key: NodeId([0xb9; 32]),
            certificate: Some(widest_certificate()),
        },
        Message::DeviceListPush {
            list: widest_device_list(),
        },
        Message::RootRotationPush {
            rotation: RootRotation {
                body: RootRotationBody {
                    old_account: PublicKey([0xa4; 32]),
                    new_account: PublicKey([0xa5; 32]),
                    issued_unix_s: u64::MAX,
                },
                signature_old: Signature([0xa6; 64]),
                signature_new: Signature([0xa7; 64]),
            },
        },
        Message::BundleStore {
            bundle: example_bundle(u64::MAX, u32::MAX, 0xb0),
        },
        Message::BundleFetch {
            query_id: u32::MAX,
            account: PublicKey([0xb1; 32]),
            indices: u8::MAX,
        },
        Message::BundleFetchResponse {
            query_id: u32::MAX,
            bundle: Some(example_bundle(u64::MAX, u32::MAX, 0xb2)),
            holders: BoundedVec::truncating((0..=255).map(|i| ShareHolder {
                index: i,
                contact: widest_contact(i),
            })),
        },
        Message::ShareDealPush {
            deal: example_deal(u64::MAX, 0xb3),
        },
        Message::OprfEvaluate {
            query_id: u32::MAX,
            account: PublicKey([0xb4; 32]),
            blinded: BlindedElement([0xb5; 32]),
        },
        Message::OprfAnswer {
            query_id: u32::MAX,
            index: u8::MAX,
            bundle_version: u64::MAX,
            epoch: u64::MAX,
            evaluation: Evaluation([0xb6; 32]),
        },
        Message::OprfRefused {
            query_id: u32::MAX,
            retry_after_ms: u32::MAX,
        },
        Message::DeviceListStore {
            list: Box::new(widest_device_list()),
        },
        Message::DeviceListFetch {
            query_id: u32::MAX,
            account: PublicKey([0xb7; 32]),
        },
        Message::DeviceListFetchResponse {
            query_id: u32::MAX,
            list: Some(Box::new(widest_device_list())),
        },
        Message::NameLookupAnswer {
            query_id: u32::MAX,
            name_key: NodeId([0xba; 32]),
            certificate: Some(widest_certificate()),
            moved: BoundedVec::truncating((0..NAME_ROTATIONS_MAX as u8).map(|i| RootRotation {
                body: RootRotationBody {
                    old_account: PublicKey([i; 32]),
                    new_account: PublicKey([i + 1; 32]),
                    issued_unix_s: u64::MAX,
                },
                signature_old: Signature([0xbb; 64]),
                signature_new: Signature([0xbc; 64]),
            })),
        },
        Message::LoginRefused {
            reason: LoginRefusal::RootRotated,
        },
        Message::SealedCandidates {
            session: u64::MAX,
            from_cert: DeviceCert {
                body: DeviceCertBody {
                    device_key: PublicKey([0xb7; 32]),
                    account_key: PublicKey([0xb8; 32]),
                    expires_unix_s: u64::MAX,
                },
                signature: Signature([0xb9; 64]),
            },
            to_device: PublicKey([0xba; 32]),
            to_supernode: widest_addr(),
            reply_supernode: widest_addr(),
            answer: true,
            ephemeral: [0xbb; 32],
            sealed: BoundedVec::truncating([0xbc; SEALED_CANDIDATES_LEN_MAX]),
        },
        Message::Keepalive,
        Message::Leaving {
            alternates: contacts(),
        },
    ];
    assert_one_per_variant(&out);
    out
}

fn example_bundle(version: u64, memory_kib: u32, fill: u8) -> Box<KeyBundle> {
    Box::new(KeyBundle {
        body: KeyBundleBody {
            account_key: PublicKey([fill; 32]),
            version,
            sharing: Sharing {
                threshold: 3,
                holders: 5,
            },
            kdf: KdfParams {
                memory_kib,
                iterations: 3,
                parallelism: 1,
            },
            salt: [fill; 16],
            nonce: [fill; 24],
            sealed_seed: [fill; 32],
            tag: [fill; 16],
        },
        signature: Signature([fill; 64]),
    })
}

fn example_deal(epoch: u64, fill: u8) -> Box<ShareDeal> {
    Box::new(ShareDeal {
        body: ShareDealBody {
            account_key: PublicKey([fill; 32]),
            bundle_version: epoch / 2,
            epoch,
            index: 5,
            commitment: [fill; 32],
        },
        signature: Signature([fill; 64]),
        share: [fill; 32],
    })
}

fn typical_envelope() -> Envelope {
    Envelope {
        body: EnvelopeBody {
            from_device: PublicKey([19; 32]),
            from_account: PublicKey([20; 32]),
            to_device: PublicKey([16; 32]),
            to_account: PublicKey([15; 32]),
            seq: 7,
            sent_unix_s: 1_800_000_000,
            kind: EnvelopeKind::Data {
                payload: BoundedVec::truncating(*b"hello"),
            },
        },
        signature: Signature([21; 64]),
    }
}

/// Every kind, in declaration order (`from_index` is the wire's variant index).
fn all_kinds() -> Vec<MessageKind> {
    (0..).map_while(MessageKind::from_index).collect()
}

fn assert_one_per_variant(messages: &[Message]) {
    let kinds: Vec<MessageKind> = messages.iter().map(Message::kind).collect();
    assert_eq!(kinds, all_kinds(), "one example per variant, in order");
}

#[test]
fn widest_encoding_of_every_variant_fits_the_datagram_limit() {
    for m in widest_messages() {
        let bytes = encode(&m).unwrap_or_else(|e| panic!("{:?}: {e}", m.kind()));
        assert!(
            bytes.len() <= MESSAGE_LEN_MAX,
            "{:?}: {} bytes",
            m.kind(),
            bytes.len()
        );
        assert_eq!(decode(&bytes), Ok(Frame::Message(m)));
    }
}

#[test]
fn collections_over_the_bound_are_refused() {
    // Hand-build a SyncResponse announcing one member more than the bound:
    // the encoder of a plain Vec writes the same bytes as a BoundedVec would.
    let member = widest_member(7);
    let too_many: Vec<MemberUpdate> = vec![member; SYNC_PAGE_MEMBERS_MAX + 1];
    let full = Message::SyncResponse {
        members: BoundedVec::truncating(too_many.iter().copied()),
        next_cursor: None,
    };
    let full_bytes = encode(&full).unwrap();
    assert_eq!(decode(&full_bytes), Ok(Frame::Message(full)));

    // [version][variant index][len varint][members...][None]
    let variant_index = full_bytes[1];
    let mut over = vec![PROTOCOL_VERSION_MAX, variant_index];
    over.extend(postcard_varint(too_many.len() as u64));
    for m in &too_many {
        over.extend(peerline_proto::to_signing_bytes(m));
    }
    over.push(0); // next_cursor: None
    assert!(over.len() <= MESSAGE_LEN_MAX);
    assert_eq!(decode(&over), Err(DecodeError::Malformed));

    // A huge announced length with nothing behind it.
    let mut huge = vec![PROTOCOL_VERSION_MAX, variant_index];
    huge.extend(postcard_varint(u32::MAX as u64));
    assert_eq!(decode(&huge), Err(DecodeError::Malformed));
}

fn postcard_varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

// ---------------------------------------------------------------------------
// Seed corpus for the fuzzer
// ---------------------------------------------------------------------------

/// Small, typical examples of every variant.
fn typical_claim() -> NameClaim {
    NameClaim {
        body: NameClaimBody {
            name: BoundedVec::truncating("alice".bytes()),
            account: PublicKey([41; 32]),
            claimed_unix_s: 1_800_000_000,
            pow_nonce: 70_000,
        },
        signature: Signature([42; 64]),
    }
}

fn typical_vote() -> NameVote {
    NameVote {
        body: NameVoteBody {
            name_key: NodeId([43; 32]),
            claim_hash: [44; 32],
            account: PublicKey([41; 32]),
            voter: Contact {
                key: PublicKey([45; 32]),
                id_nonce: 3,
                addr: Addr::default(),
            },
            voted_unix_s: 1_800_000_001,
        },
        signature: Signature([46; 64]),
    }
}

fn typical_certificate() -> Box<NameCertificate> {
    Box::new(NameCertificate {
        claim: typical_claim(),
        votes: BoundedVec::truncating(std::iter::repeat_n(typical_vote(), 3)),
    })
}

fn typical_messages() -> Vec<Message> {
    let contact = |i: u8| Contact {
        key: PublicKey([i; 32]),
        id_nonce: 1000 + i as u64,
        addr: Addr::from_ipv4_u32(0x0a00_0000 + i as u32, 4000 + i as u16),
    };
    let member = |i: u8| MemberUpdate {
        contact: contact(i),
        incarnation: i as u32,
        state: [MemberState::Alive, MemberState::Suspect, MemberState::Dead][i as usize % 3],
        load_pct: 10 * i,
    };
    let cert = DeviceCert {
        body: DeviceCertBody {
            device_key: PublicKey([1; 32]),
            account_key: PublicKey([2; 32]),
            expires_unix_s: 1_900_000_000,
        },
        signature: Signature([3; 64]),
    };
    let record = PresenceRecord {
        body: PresenceBody {
            cert,
            sequence: 7,
            issued_unix_s: 1_800_000_000,
            expires_unix_s: 1_800_003_600,
            supernodes: BoundedVec::truncating((0..2).map(contact)),
        },
        signature: Signature([4; 64]),
    };
    let out = vec![
        Message::AttachHello { cert },
        Message::AttachChallenge {
            supernode: contact(5),
            challenge: [6; 32],
        },
        Message::AttachProof {
            cert,
            challenge: [6; 32],
            signature: Signature([7; 64]),
        },
        Message::AttachAccepted {
            keepalive_interval_s: 25,
            load_pct: 40,
            peers: BoundedVec::truncating((0..3).map(contact)),
            ticket: None,
        },
        Message::Busy {
            reason: BusyReason::AttachmentsFull,
            retry_after_ms: 30_000,
            alternates: BoundedVec::truncating((0..2).map(contact)),
        },
        Message::Detach {
            alternates: BoundedVec::new(),
        },
        Message::Ping { sequence: 1 },
        Message::Pong {
            sequence: 1,
            load_pct: 55,
            network_load_pct: 50,
            ticket: None,
        },
        Message::NotAttached,
        Message::PeerDown {
            supernode: PublicKey([5; 32]),
        },
        Message::Publish {
            record: record.clone(),
        },
        Message::LookupRequest {
            query_id: 300,
            account: PublicKey([2; 32]),
        },
        Message::LookupResponse {
            query_id: 300,
            record: Some(record.clone()),
            hops: 3,
        },
        Message::ProbeRequest { token: 0xdead_beef },
        Message::Probe { token: 0xdead_beef },
        Message::ProbeForward {
            target: Addr::from_ipv4_u32(0xc0a8_0001, 5000),
            token: 0xdead_beef,
        },
        Message::GossipPing {
            sequence: 9,
            sender: member(1),
            updates: BoundedVec::truncating((2..5).map(member)),
        },
        Message::GossipAck {
            sequence: 9,
            sender: member(2),
            updates: BoundedVec::new(),
        },
        Message::SyncRequest {
            cursor: 0,
            sender: member(9),
        },
        Message::SyncResponse {
            members: BoundedVec::truncating((0..4).map(member)),
            next_cursor: Some(4),
        },
        Message::Store {
            record: record.clone(),
        },
        Message::FindValue {
            query_id: 301,
            key: NodeId([8; 32]),
        },
        Message::FindValueResponse {
            query_id: 301,
            record: None,
            closer: BoundedVec::truncating((0..2).map(contact)),
        },
        Message::AttachResume {
            ticket: Ticket {
                body: TicketBody {
                    device_key: PublicKey([9; 32]),
                    account_key: PublicKey([10; 32]),
                    cert_expires_unix_s: 1_802_592_000,
                    addr: contact(11).addr,
                    issued_unix_s: 1_800_000_000,
                    expires_unix_s: 1_800_000_600,
                    issuer: contact(12),
                },
                signature: Signature([13; 64]),
            },
            counter: 3,
            signature: Signature([14; 64]),
        },
        Message::MailPut {
            envelope: typical_envelope(),
        },
        Message::MailStore {
            envelope: typical_envelope(),
            push: true,
        },
        Message::MailDeliver {
            envelope: typical_envelope(),
        },
        Message::MailFetch {
            account: PublicKey([15; 32]),
            device: PublicKey([16; 32]),
        },
        Message::MailBatch {
            device: PublicKey([16; 32]),
            envelopes: BoundedVec::truncating([typical_envelope()]),
            more: false,
        },
        Message::MailDone {
            ids: BoundedVec::truncating([EnvelopeId([17; 16])]),
        },
        Message::MailDelete {
            device: PublicKey([16; 32]),
            ids: BoundedVec::truncating([EnvelopeId([17; 16]), EnvelopeId([18; 16])]),
        },
        Message::PunchCandidates {
            session: 19,
            from_device: PublicKey([20; 32]),
            to_device: PublicKey([21; 32]),
            to_supernode: Addr::default(),
            reply_supernode: Addr::default(),
            answer: false,
            candidates: BoundedVec::truncating([Addr::default()]),
        },
        Message::PathPing { session: 22 },
        Message::PathPong { session: 23 },
        Message::RelayRequest {
            body: RelayRequestBody {
                session: 24,
                from_device: PublicKey([25; 32]),
                to_device: PublicKey([26; 32]),
                relay: Addr::default(),
            },
            signature: Signature([27; 64]),
        },
        Message::RelayGranted {
            session: 28,
            channel: 0x8123,
            lifetime_s: 120,
        },
        Message::RelayRefused {
            session: 29,
            retry_after_ms: 2_000,
        },
        Message::NameRegister {
            claim: typical_claim(),
        },
        Message::NameVoteRequest {
            query_id: 30,
            claim: typical_claim(),
        },
        Message::NameVoteReply {
            query_id: 31,
            vote: Some(typical_vote()),
            certificate: None,
        },
        Message::NameStore {
            certificate: typical_certificate(),
        },
        Message::NameResult {
            name_key: NodeId([32; 32]),
            outcome: NameOutcome::Taken {
                owner: PublicKey([33; 32]),
            },
        },
        Message::NameLookup {
            query_id: 34,
            name_key: NodeId([35; 32]),
        },
        Message::NameFind {
            query_id: 36,
            name_key: NodeId([37; 32]),
        },
        Message::NameFindResponse {
            query_id: 38,
            certificate: None,
        },
        Message::NameLookupResponse {
            query_id: 39,
            name_key: NodeId([40; 32]),
            certificate: Some(typical_certificate()),
        },
        Message::DeviceListPush {
            list: typical_device_list(),
        },
        Message::RootRotationPush {
            rotation: RootRotation {
                body: RootRotationBody {
                    old_account: PublicKey([34; 32]),
                    new_account: PublicKey([35; 32]),
                    issued_unix_s: 1_800_000_000,
                },
                signature_old: Signature([36; 64]),
                signature_new: Signature([37; 64]),
            },
        },
        Message::BundleStore {
            bundle: example_bundle(2, 65_536, 40),
        },
        Message::BundleFetch {
            query_id: 7,
            account: PublicKey([41; 32]),
            indices: 5,
        },
        Message::BundleFetchResponse {
            query_id: 7,
            bundle: Some(example_bundle(2, 65_536, 42)),
            holders: BoundedVec::truncating((1..=5).map(|i| ShareHolder {
                index: i,
                contact: Contact {
                    key: PublicKey([43 + i; 32]),
                    id_nonce: 9,
                    addr: Addr::from_ipv4_u32(0x0a00_0001 + u32::from(i), 7_000),
                },
            })),
        },
        Message::ShareDealPush {
            deal: example_deal(1_800_000_000_000, 50),
        },
        Message::OprfEvaluate {
            query_id: 8,
            account: PublicKey([51; 32]),
            blinded: BlindedElement([52; 32]),
        },
        Message::OprfAnswer {
            query_id: 8,
            index: 3,
            bundle_version: 2,
            epoch: 1_800_000_000_000,
            evaluation: Evaluation([53; 32]),
        },
        Message::OprfRefused {
            query_id: 8,
            retry_after_ms: 360_000,
        },
        Message::DeviceListStore {
            list: Box::new(typical_device_list()),
        },
        Message::DeviceListFetch {
            query_id: 9,
            account: PublicKey([30; 32]),
        },
        Message::DeviceListFetchResponse {
            query_id: 9,
            list: Some(Box::new(typical_device_list())),
        },
        Message::NameLookupAnswer {
            query_id: 10,
            name_key: NodeId([41; 32]),
            certificate: Some(typical_certificate()),
            moved: BoundedVec::truncating([RootRotation {
                body: RootRotationBody {
                    old_account: PublicKey([42; 32]),
                    new_account: PublicKey([43; 32]),
                    issued_unix_s: 1_800_000_000,
                },
                signature_old: Signature([44; 64]),
                signature_new: Signature([45; 64]),
            }]),
        },
        Message::LoginRefused {
            reason: LoginRefusal::DeviceRevoked,
        },
        Message::SealedCandidates {
            session: 19,
            from_cert: DeviceCert {
                body: DeviceCertBody {
                    device_key: PublicKey([20; 32]),
                    account_key: PublicKey([54; 32]),
                    expires_unix_s: 1_800_000_000,
                },
                signature: Signature([55; 64]),
            },
            to_device: PublicKey([21; 32]),
            to_supernode: Addr::default(),
            reply_supernode: Addr::default(),
            answer: false,
            ephemeral: [56; 32],
            sealed: BoundedVec::truncating([57; 161]),
        },
        Message::Keepalive,
        Message::Leaving {
            alternates: BoundedVec::new(),
        },
    ];
    assert_one_per_variant(&out);
    out
}

#[test]
fn typical_messages_round_trip() {
    for m in typical_messages() {
        let bytes = encode(&m).unwrap();
        assert_eq!(decode(&bytes), Ok(Frame::Message(m)));
    }
}

/// Writes the fuzzer's seed corpus into `$PEERLINE_SEED_CORPUS_DIR` (an
/// absolute path: tests run in the crate's directory): every variant in a
/// typical form, some in their widest, plus envelope edge cases.
#[test]
#[ignore = "writes files; run by hand to refresh fuzz/corpus/decode_frame"]
fn write_seed_corpus() {
    let Some(dir) = std::env::var_os("PEERLINE_SEED_CORPUS_DIR") else {
        eprintln!("PEERLINE_SEED_CORPUS_DIR is not set; nothing written");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for m in typical_messages() {
        seeds.push((format!("seed-{:?}", m.kind()), encode(&m).unwrap()));
    }
    for m in widest_messages() {
        use MessageKind as K;
        // Widest forms of the variants with collections or options (full
        // length prefixes) and of a few with only integers (longest varints).
        // The widest SyncResponse and FindValueResponse pages are too large
        // for a fast seed; the fuzzer reaches them from the typical ones.
        let wanted = matches!(
            m.kind(),
            K::AttachAccepted
                | K::Busy
                | K::Detach
                | K::Publish
                | K::LookupResponse
                | K::GossipPing
                | K::GossipAck
                | K::Ping
                | K::Pong
                | K::SyncRequest
                | K::ProbeForward
                | K::AttachResume
                | K::MailFetch
                | K::MailDone
                | K::SealedCandidates
        );
        let bytes = encode(&m).unwrap();
        if wanted && bytes.len() <= 1024 {
            seeds.push((format!("seed-{:?}-widest", m.kind()), bytes));
        }
    }
    seeds.push(("seed-version-info".into(), encode_version_info()));
    seeds.push((
        "seed-unsupported-version".into(),
        encode_versioned(2, &Message::Ping { sequence: 1 }).unwrap(),
    ));
    assert!(seeds.len() <= 64, "{} seeds", seeds.len());
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    eprintln!("wrote {} seeds to {}", seeds.len(), dir.display());
}

fn widest_device_list() -> DeviceList {
    DeviceList {
        body: DeviceListBody {
            account_key: PublicKey([0xa2; 32]),
            version: u64::MAX,
            devices: BoundedVec::truncating(
                (0..DEVICE_LIST_DEVICES_MAX as u8).map(|i| PublicKey([i; 32])),
            ),
            revoked: BoundedVec::truncating(
                (0..DEVICE_LIST_REVOKED_MAX as u8).map(|i| PublicKey([0x80 | i; 32])),
            ),
            issued_unix_s: u64::MAX,
        },
        signature: Signature([0xa3; 64]),
    }
}

fn typical_device_list() -> DeviceList {
    DeviceList {
        body: DeviceListBody {
            account_key: PublicKey([30; 32]),
            version: 2,
            devices: BoundedVec::truncating([PublicKey([31; 32])]),
            revoked: BoundedVec::truncating([PublicKey([32; 32])]),
            issued_unix_s: 1_800_000_000,
        },
        signature: Signature([33; 64]),
    }
}
