//! Name registration by quorum: first come, first served, with no server.
//!
//! A name (normalized by [`crate::names`]) lives at its key in the
//! directory. Registering it:
//!
//! 1. The account's root key signs a **claim** (name, account, time) whose
//!    hash meets a small proof of work ([`Params::name_pow_bits`]): a
//!    registration costs work, and each coordinating supernode allows an
//!    account a few claims an hour.
//! 2. The client's supernode **coordinates**: it asks the
//!    [`Params::name_quorum_len`] (5) supernodes closest to the name key in
//!    its view — at most one per /24 (/48 for IPv6), so an attacker who
//!    grinds many node IDs next to a name's key from one network gets one
//!    seat — for their **vote**.
//! 3. A voter votes **once per name**, for the first valid claim it sees,
//!    and keeps that vote on disk ([`NameBook`] survives restarts). Asked
//!    again, it answers with the same vote (or with the name's certificate
//!    when it holds one). A vote for a claim that never gathered a quorum is
//!    released after [`Params::name_vote_hold_s`], so a split vote does not
//!    lock a name forever.
//! 4. A claim with votes from a Byzantine quorum of the voters (4 of 5,
//!    [`votes_needed`]) is **certified**: the claim plus those signed votes
//!    is the name record, stored on the voters and on the name key's
//!    replicas, and checkable by anyone ([`verify_certificate`]). Two such
//!    sets drawn from one view share two voters, and an honest voter votes
//!    once, so even with one lying voter two claims cannot both be
//!    certified. A voter waits [`Params::name_vote_window_ms`] for
//!    concurrent claims and votes for the lowest claim hash among them
//!    ([`VoteWindows`]), so two people registering the same name at the
//!    same moment get the same votes everywhere: one is told "registered",
//!    the other "taken".
//! 5. Views can differ (churn, a partition), and then two certificates for
//!    one name can exist. **A deterministic rule decides between them**
//!    ([`CertificateInfo::beats`]): the certificate whose quorum was
//!    complete earlier (the time of its majority-th earliest vote, so one
//!    lying voter cannot backdate it), then the lower claim hash. Every
//!    replica keeps the winner and sends it back to whoever offered the
//!    loser, so the replicas converge and a lookup anywhere returns one
//!    owner; the losing client learns it when it looks its name up.
//!
//! Record holders also check that a certificate's voters are plausible:
//! each voter's node ID (which costs an ID puzzle to choose) must be no
//! farther from the name key than the `4·n`-th closest member of their own
//! view — a quorum of random nodes cannot certify a name — and, to replace
//! a record of another claim, that every counted voter is a member they
//! know at the address its vote names ([`voters_current`]): invented
//! voters with made-up addresses and backdated votes change nothing.
//!
//! Only registration needs a quorum; lookup reads any replica.

use crate::durable::{decode, encode, DirtyKeys, DurableChanges, DurableError, DurableTable};
use crate::identity::{contact_id, verify, CryptoError, CryptoMode, Keypair};
use crate::membership::Membership;
use crate::names::{normalize, Name};
use crate::params::Params;
use crate::time::Instant;
use peerline_proto::to_signing_bytes;
use peerline_proto::{
    Addr, BoundedVec, Contact, MemberState, NameCertificate, NameClaim, NameClaimBody, NameRefusal,
    NameVote, NameVoteBody, NodeId, PublicKey, NAME_VOTES_MAX,
};
use std::collections::BTreeMap;

/// Signature domains of names.
pub mod domain {
    pub const NAME_CLAIM: &[u8] = b"peerline/v1/name-claim";
    pub const NAME_VOTE: &[u8] = b"peerline/v1/name-vote";
}

/// Votes one supernode keeps; beyond it, released votes and then the
/// oldest undecided ones make room (a decided name keeps its record).
pub const NAME_VOTES_KEPT_MAX: usize = 65_536;
/// Name records one supernode keeps.
pub const NAME_RECORDS_MAX: usize = 65_536;
/// Every record is pushed to its replica set again at least this often.
pub const NAME_REPUSH_S: u64 = 600;
/// Accounts whose recent registrations a coordinator counts.
pub const NAME_ACCOUNTS_TRACKED_MAX: usize = 4_096;
/// Claims (distinct names) one account may have coordinated per hour by one supernode.
pub const NAME_CLAIMS_PER_ACCOUNT_PER_HOUR: u32 = 6;

/// The hash that identifies a claim (and that its proof of work is on).
pub fn claim_hash(claim: &NameClaim) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("peerline v1 name claim hash");
    hasher.update(&to_signing_bytes(&claim.body));
    *hasher.finalize().as_bytes()
}

fn leading_zero_bits(hash: &[u8; 32]) -> u32 {
    let mut bits = 0;
    for byte in hash {
        if *byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// The account's claim on `name`, with its proof of work solved
/// (~2^`pow_bits` hashes).
pub fn make_claim(account: &Keypair, name: &Name, now_unix_s: u64, pow_bits: u32) -> NameClaim {
    let mut claim = NameClaim {
        body: NameClaimBody {
            name: BoundedVec::truncating(name.as_str().bytes()),
            account: account.public(),
            claimed_unix_s: now_unix_s,
            pow_nonce: 0,
        },
        signature: Default::default(),
    };
    while leading_zero_bits(&claim_hash(&claim)) < pow_bits {
        claim.body.pow_nonce += 1;
    }
    claim.signature = account.sign(domain::NAME_CLAIM, &to_signing_bytes(&claim.body));
    claim
}

/// Checks a claim: normal form, proof of work (cheap, first), signature.
/// Returns the name's key.
pub fn check_claim(
    mode: CryptoMode,
    claim: &NameClaim,
    pow_bits: u32,
) -> Result<NodeId, NameRefusal> {
    let text = std::str::from_utf8(claim.body.name.as_slice()).map_err(|_| NameRefusal::Invalid)?;
    let name = normalize(text).map_err(|_| NameRefusal::Invalid)?;
    if name.as_str() != text {
        return Err(NameRefusal::Invalid);
    }
    if leading_zero_bits(&claim_hash(claim)) < pow_bits {
        return Err(NameRefusal::ProofOfWork);
    }
    verify(
        mode,
        &claim.body.account,
        domain::NAME_CLAIM,
        &to_signing_bytes(&claim.body),
        &claim.signature,
    )
    .map_err(|_| NameRefusal::BadSignature)?;
    Ok(name.key())
}

/// The network a voter sits in for the one-seat-per-network rule: the /24
/// of an IPv4 address, the /48 of an IPv6 one.
pub fn subnet(addr: &Addr) -> [u8; 6] {
    let mut out = [0u8; 6];
    match addr.ipv4_u32() {
        Some(v4) => out[..3].copy_from_slice(&v4.to_be_bytes()[..3]),
        None => out.copy_from_slice(&addr.ip[..6]),
    }
    out
}

/// Votes a certificate needs: a Byzantine quorum of the `n` voters asked,
/// `n − ⌊(n − 1) / 3⌋` (4 of 5). Any two such sets share at least
/// `⌊(n − 1) / 3⌋ + 1` voters, so one voter who votes for everything (an
/// attacker's seat) cannot make two claims certified: an honest voter
/// would have to vote twice.
pub fn votes_needed(params: &Params) -> usize {
    let n = params.name_quorum_len;
    n - n.saturating_sub(1) / 3
}

pub fn sign_vote(node: &Keypair, body: NameVoteBody) -> NameVote {
    let signature = node.sign(domain::NAME_VOTE, &to_signing_bytes(&body));
    NameVote { body, signature }
}

/// Checks a vote's signature and its voter's ID puzzle; returns the voter's node ID.
pub fn verify_vote(
    mode: CryptoMode,
    vote: &NameVote,
    difficulty_bits: u32,
) -> Result<NodeId, CryptoError> {
    let id = contact_id(&vote.body.voter, difficulty_bits)?;
    verify(
        mode,
        &vote.body.voter.key,
        domain::NAME_VOTE,
        &to_signing_bytes(&vote.body),
        &vote.signature,
    )?;
    Ok(id)
}

/// What a checked certificate says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertificateInfo {
    pub name_key: NodeId,
    pub claim_hash: [u8; 32],
    pub owner: PublicKey,
    /// When the quorum was complete: the majority-th earliest vote time.
    pub quorum_unix_s: u64,
    pub voters: Vec<NodeId>,
    /// The address each voter signed into its vote (same order).
    pub voter_addrs: Vec<Addr>,
}

impl CertificateInfo {
    /// The conflict rule: the quorum complete earlier wins, then the lower
    /// claim hash. Total and the same on every node.
    pub fn beats(&self, other: &CertificateInfo) -> bool {
        (self.quorum_unix_s, self.claim_hash) < (other.quorum_unix_s, other.claim_hash)
    }
}

/// Why a certificate is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("the claim is not valid: {0:?}")]
    Claim(NameRefusal),
    #[error("a vote does not verify")]
    BadVote,
    #[error("a vote is for another name or claim")]
    WrongVote,
    #[error("two votes from one voter or one network")]
    DuplicateVoter,
    #[error("fewer votes than a quorum's majority")]
    TooFewVotes,
}

/// Checks a certificate completely (claim, every vote, one voter per
/// network, a majority) — everything but whether the voters are near the
/// name, which needs a view of the network ([`voters_plausible`]).
pub fn verify_certificate(
    mode: CryptoMode,
    params: &Params,
    certificate: &NameCertificate,
) -> Result<CertificateInfo, CertificateError> {
    let name_key = check_claim(mode, &certificate.claim, params.name_pow_bits)
        .map_err(CertificateError::Claim)?;
    let hash = claim_hash(&certificate.claim);
    let mut voters = Vec::with_capacity(certificate.votes.len());
    let mut voter_addrs = Vec::with_capacity(certificate.votes.len());
    let mut networks = Vec::with_capacity(certificate.votes.len());
    let mut times = Vec::with_capacity(certificate.votes.len());
    for vote in certificate.votes.iter() {
        let body = &vote.body;
        if body.name_key != name_key
            || body.claim_hash != hash
            || body.account != certificate.claim.body.account
        {
            return Err(CertificateError::WrongVote);
        }
        let id = verify_vote(mode, vote, params.id_puzzle_difficulty_bits)
            .map_err(|_| CertificateError::BadVote)?;
        let network = subnet(&body.voter.addr);
        if voters.contains(&id)
            || (params.name_one_voter_per_network && networks.contains(&network))
        {
            return Err(CertificateError::DuplicateVoter);
        }
        voters.push(id);
        voter_addrs.push(body.voter.addr);
        networks.push(network);
        times.push(body.voted_unix_s);
    }
    let needed = votes_needed(params);
    if voters.len() < needed {
        return Err(CertificateError::TooFewVotes);
    }
    times.sort_unstable();
    Ok(CertificateInfo {
        name_key,
        claim_hash: hash,
        owner: certificate.claim.body.account,
        quorum_unix_s: times[needed - 1],
        voters,
        voter_addrs,
    })
}

/// How far from a name, in quorum sizes, a voter may be and still count.
/// Views differ (a certificate made on one side of a partition was voted
/// by the closest of half the network), so the bound is loose; it still
/// keeps random nodes from certifying a name in a large network.
pub const PLAUSIBLE_REACH: usize = 4;

/// Whether every voter of a certificate is one of the supernodes that
/// could be responsible for its name, as far as `membership` can tell: no
/// farther from the key than the `4·n`-th closest member (a small view
/// cannot tell, and accepts).
pub fn voters_plausible(membership: &Membership, params: &Params, info: &CertificateInfo) -> bool {
    let reach = PLAUSIBLE_REACH * params.name_quorum_len;
    let closest = membership.closest(&info.name_key, reach);
    if closest.len() < reach {
        return true;
    }
    let bound = closest[reach - 1].id.distance(&info.name_key);
    info.voters
        .iter()
        .all(|voter| voter.distance(&info.name_key) <= bound)
}

/// How many of a certificate's voters are members of `membership` at the
/// address their vote names. A vote's address is the voter's own claim
/// (it signs it), so the one-voter-per-network rule means something only
/// for voters the network knows at that address: keys ground next to a
/// name with made-up addresses in four /24s make a certificate that
/// verifies, and are no members.
pub fn voters_current(
    membership: &Membership,
    departed: &Departed,
    info: &CertificateInfo,
) -> usize {
    info.voters
        .iter()
        .zip(&info.voter_addrs)
        .filter(|(id, addr)| {
            membership
                .get(id)
                .map(|m| m.update.contact.addr)
                .or_else(|| departed.addr_of(id))
                == Some(**addr)
        })
        .count()
}

/// Members that left recently, with the address they had: a certificate
/// whose voters died since (a crash wave right after a partition healed)
/// still counts them, so conflicts settle; invented voters were never
/// members, and stay unknown.
#[derive(Clone, Debug, Default)]
pub struct Departed {
    members: BTreeMap<NodeId, (Addr, Instant)>,
}

/// Departed members remembered, and for how long.
pub const DEPARTED_MAX: usize = 16_384;
pub const DEPARTED_KEEP_MS: u64 = 3_600_000;

impl Departed {
    pub fn left(&mut self, id: NodeId, addr: Addr, now: Instant) {
        if self.members.len() >= DEPARTED_MAX {
            self.members
                .retain(|_, (_, at)| now.since_ms(*at) < DEPARTED_KEEP_MS);
            if self.members.len() >= DEPARTED_MAX {
                return;
            }
        }
        self.members.insert(id, (addr, now));
    }

    pub fn expire(&mut self, now: Instant) {
        self.members
            .retain(|_, (_, at)| now.since_ms(*at) < DEPARTED_KEEP_MS);
    }

    fn addr_of(&self, id: &NodeId) -> Option<Addr> {
        self.members.get(id).map(|(addr, _)| *addr)
    }
}

/// Current voters (see [`voters_current`]) a record holder wants before it
/// takes a certificate: for a name it holds no record of, one (a record
/// whose other voters died since is still taken over); to replace another
/// claim's record, all the votes a certificate needs — whoever would take
/// a held name must be a quorum the holder can see, so backdated votes of
/// invented voters change nothing.
pub fn current_voters_wanted(params: &Params, replaces_another_claim: bool) -> usize {
    if replaces_another_claim {
        votes_needed(params)
    } else {
        1
    }
}

/// The supernodes asked to vote on a name: the closest alive members of
/// the view (ourselves included), one per network.
pub fn quorum(
    membership: &Membership,
    params: &Params,
    name_key: &NodeId,
) -> Vec<(NodeId, Contact)> {
    let wanted = params.name_quorum_len;
    let mut networks: Vec<[u8; 6]> = Vec::with_capacity(wanted);
    let mut out = Vec::with_capacity(wanted);
    for member in membership.closest(name_key, 4 * wanted) {
        if member.update.state == MemberState::Dead {
            continue;
        }
        let network = subnet(&member.update.contact.addr);
        if params.name_one_voter_per_network && networks.contains(&network) {
            continue;
        }
        networks.push(network);
        out.push((member.id, member.update.contact));
        if out.len() == wanted {
            break;
        }
    }
    out
}

/// A vote this node cast.
#[derive(Clone, Debug)]
struct CastVote {
    vote: NameVote,
}

/// A name record this node holds, checked.
#[derive(Clone, Debug)]
struct HeldName {
    certificate: Box<NameCertificate>,
    info: CertificateInfo,
    /// Fingerprint of the replica set it was last pushed to (0: never).
    pushed_to: u64,
    /// When it was last pushed (wall clock, s).
    pushed_unix_s: u64,
}

/// What a supernode keeps on disk about names: the votes it cast (one per
/// name, for ever, or until released undecided) and the records it holds.
/// Survives restarts and role changes, like the mail state.
#[derive(Clone, Debug, Default)]
pub struct NameBook {
    votes: BTreeMap<NodeId, CastVote>,
    records: BTreeMap<NodeId, HeldName>,
    /// Votes and records changed since the driver last took them
    /// (`durable.rs`; only once a driver persists).
    dirty_votes: DirtyKeys,
    dirty_records: DirtyKeys,
}

/// A name record as stored: the certificate and what its check said
/// (kept, so a restart need not check every vote again).
#[derive(serde::Serialize, serde::Deserialize)]
struct RecordRow {
    certificate: NameCertificate,
    info: CertificateInfo,
}

/// What storing a certificate did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// New, or it beat the one held.
    Kept,
    /// The same certificate (or an equal one) was held already.
    Known,
    /// The held one wins; here it is, for whoever offered the loser.
    Lost(Box<NameCertificate>),
    /// No room.
    Full,
    /// Not taken: too few of its voters are members the holder knows
    /// ([`current_voters_wanted`]).
    Refused,
}

impl NameBook {
    pub fn record(&self, name_key: &NodeId) -> Option<&NameCertificate> {
        self.records.get(name_key).map(|held| &*held.certificate)
    }

    pub fn record_info(&self, name_key: &NodeId) -> Option<&CertificateInfo> {
        self.records.get(name_key).map(|held| &held.info)
    }

    pub fn records_len(&self) -> usize {
        self.records.len()
    }

    pub fn votes_len(&self) -> usize {
        self.votes.len()
    }

    /// Whether this node holds a record of the name or a vote on it that
    /// still holds (then it answers a vote request at once).
    pub fn decided(&self, name_key: &NodeId, now_unix_s: u64, hold_s: u64) -> bool {
        self.records.contains_key(name_key)
            || self.votes.get(name_key).is_some_and(|cast| {
                cast.vote.body.voted_unix_s.saturating_add(hold_s) >= now_unix_s
            })
    }

    /// This node's vote on `name_key`, casting one for `claim` if it has
    /// none (or only a released one). `None`: no room for another vote.
    pub fn vote(
        &mut self,
        me: &Keypair,
        contact: Contact,
        name_key: NodeId,
        claim: &NameClaim,
        now_unix_s: u64,
        hold_s: u64,
    ) -> Option<NameVote> {
        if let Some(cast) = self.votes.get(&name_key) {
            let released = !self.records.contains_key(&name_key)
                && cast.vote.body.voted_unix_s.saturating_add(hold_s) < now_unix_s;
            if !released {
                return Some(cast.vote.clone());
            }
        }
        if self.votes.len() >= NAME_VOTES_KEPT_MAX && !self.votes.contains_key(&name_key) {
            self.release_votes(now_unix_s, hold_s);
            if self.votes.len() >= NAME_VOTES_KEPT_MAX {
                return None;
            }
        }
        let vote = sign_vote(
            me,
            NameVoteBody {
                name_key,
                claim_hash: claim_hash(claim),
                account: claim.body.account,
                voter: contact,
                voted_unix_s: now_unix_s,
            },
        );
        self.votes.insert(name_key, CastVote { vote: vote.clone() });
        self.dirty_votes.mark(name_key.0);
        Some(vote)
    }

    /// Forgets every vote (an attacker's equivocation, in the simulator).
    pub fn forget_votes(&mut self) {
        for key in self.votes.keys() {
            self.dirty_votes.mark(key.0);
        }
        self.votes.clear();
    }

    /// Forgets undecided votes older than the hold time.
    pub fn release_votes(&mut self, now_unix_s: u64, hold_s: u64) {
        let records = &self.records;
        let dirty = &mut self.dirty_votes;
        self.votes.retain(|key, cast| {
            let keep = records.contains_key(key)
                || cast.vote.body.voted_unix_s.saturating_add(hold_s) >= now_unix_s;
            if !keep {
                dirty.mark(key.0);
            }
            keep
        });
    }

    /// From now on, remember what changed for [`NameBook::take_changes`].
    pub(crate) fn track_changes(&mut self) {
        self.dirty_votes.switch_on();
        self.dirty_records.switch_on();
    }

    /// The votes and records changed since the last call, as rows.
    pub(crate) fn take_changes(&mut self, out: &mut DurableChanges) {
        for key in self.dirty_votes.take() {
            let value = self.votes.get(&NodeId(key)).map(|cast| encode(&cast.vote));
            out.push(DurableTable::NameVotes, key, value);
        }
        for key in self.dirty_records.take() {
            let value = self.records.get(&NodeId(key)).map(|held| {
                encode(&RecordRow {
                    certificate: (*held.certificate).clone(),
                    info: held.info.clone(),
                })
            });
            out.push(DurableTable::NameRecords, key, value);
        }
    }

    /// Takes back a stored vote. A vote signed by another key (the data
    /// directory got a new device: another voter) is skipped: `Ok(false)`.
    pub(crate) fn restore_vote(
        &mut self,
        me: &PublicKey,
        key: &[u8; 32],
        bytes: &[u8],
    ) -> Result<bool, DurableError> {
        let table = DurableTable::NameVotes;
        let vote: NameVote = decode(table, key, bytes)?;
        if vote.body.name_key.0 != *key {
            return Err(DurableError::new(table, key, "is a vote on another name"));
        }
        if vote.body.voter.key != *me {
            return Ok(false);
        }
        if self.votes.len() >= NAME_VOTES_KEPT_MAX && !self.votes.contains_key(&NodeId(*key)) {
            return Err(DurableError::new(table, key, "is one row too many"));
        }
        self.votes.insert(NodeId(*key), CastVote { vote });
        Ok(true)
    }

    /// Takes back a stored name record.
    pub(crate) fn restore_record(
        &mut self,
        key: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(), DurableError> {
        let table = DurableTable::NameRecords;
        let row: RecordRow = decode(table, key, bytes)?;
        if row.info.name_key.0 != *key || row.info.voters.len() != row.info.voter_addrs.len() {
            return Err(DurableError::new(table, key, "does not match its name"));
        }
        if self.records.len() >= NAME_RECORDS_MAX && !self.records.contains_key(&NodeId(*key)) {
            return Err(DurableError::new(table, key, "is one row too many"));
        }
        self.records.insert(
            NodeId(*key),
            HeldName {
                certificate: Box::new(row.certificate),
                info: row.info,
                pushed_to: 0,
                pushed_unix_s: 0,
            },
        );
        Ok(())
    }

    /// Keeps a checked certificate unless the one held beats it.
    pub fn store(&mut self, certificate: Box<NameCertificate>, info: CertificateInfo) -> Stored {
        if let Some(held) = self.records.get_mut(&info.name_key) {
            if held.info.claim_hash == info.claim_hash {
                // The same claim: keep the earlier-complete certificate of it.
                if info.beats(&held.info) {
                    self.dirty_records.mark(info.name_key.0);
                    held.certificate = certificate;
                    held.info = info;
                }
                return Stored::Known;
            }
            if held.info.beats(&info) {
                return Stored::Lost(held.certificate.clone());
            }
            self.dirty_records.mark(info.name_key.0);
            held.certificate = certificate;
            held.info = info;
            held.pushed_to = 0;
            return Stored::Kept;
        }
        if self.records.len() >= NAME_RECORDS_MAX {
            return Stored::Full;
        }
        self.dirty_records.mark(info.name_key.0);
        self.records.insert(
            info.name_key,
            HeldName {
                certificate,
                info,
                pushed_to: 0,
                pushed_unix_s: 0,
            },
        );
        Stored::Kept
    }

    /// After a restart nothing was pushed from here yet.
    pub fn forget_pushes(&mut self) {
        for held in self.records.values_mut() {
            held.pushed_to = 0;
        }
    }

    /// Records whose replica set changed since they were last pushed from
    /// here, with the new set (`replicas` gives it for a key); marks them pushed.
    pub fn due_pushes(
        &mut self,
        now_unix_s: u64,
        mut replicas: impl FnMut(&NodeId) -> Vec<(NodeId, Contact)>,
    ) -> Vec<(Box<NameCertificate>, Replicas)> {
        let mut out = Vec::new();
        for (key, held) in self.records.iter_mut() {
            let targets = replicas(key);
            let fingerprint = replica_fingerprint(&targets);
            // Also now and then whatever changed: a push is one datagram
            // nobody acknowledges, and a lost one would leave a replica
            // with the loser of a conflict for good.
            let stale = now_unix_s.saturating_sub(held.pushed_unix_s) >= NAME_REPUSH_S;
            if fingerprint != held.pushed_to || stale {
                held.pushed_to = fingerprint;
                held.pushed_unix_s = now_unix_s;
                out.push((held.certificate.clone(), targets));
            }
        }
        out
    }
}

/// A certificate set aside until its voters are known, and since when.
pub(crate) type SetAside = (Box<NameCertificate>, CertificateInfo, Instant);

/// The supernodes a record goes to, with their node IDs.
pub type Replicas = Vec<(NodeId, Contact)>;

/// A replica set in 64 bits (never 0, which means "not pushed yet"):
/// a record is pushed again when its set's fingerprint changes.
pub(crate) fn replica_fingerprint(targets: &[(NodeId, Contact)]) -> u64 {
    let mut hasher = blake3::Hasher::new();
    for (id, _) in targets {
        hasher.update(&id.0);
    }
    let bytes = hasher.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or_default()).max(1)
}

/// Names a supernode is collecting concurrent claims for, before voting.
pub const VOTE_WINDOWS_MAX: usize = 4_096;
/// Distinct claims and askers one window keeps.
const WINDOW_CLAIMS_MAX: usize = 8;
const WINDOW_ASKERS_MAX: usize = 16;

/// Who asked for a vote: a coordinator's address and its query.
pub(crate) type Asker = (Addr, u32);

/// The claims for one name a voter heard within its vote window.
#[derive(Clone, Debug)]
struct VoteWindow {
    claims: Vec<([u8; 32], NameClaim)>,
    askers: Vec<Asker>,
    due: Instant,
}

/// A voter does not vote for the first claim the moment it arrives: it
/// waits [`Params::name_vote_window_ms`] for other claims on the same name
/// and votes for the lowest claim hash among them. Two people who claim a
/// name at the same moment reach voters in different orders; voting in
/// arrival order would split the votes (and with one lying voter, split
/// votes certify both claims). Claims further apart than the window are
/// first come, first served.
#[derive(Clone, Debug, Default)]
pub(crate) struct VoteWindows {
    windows: BTreeMap<NodeId, VoteWindow>,
}

impl VoteWindows {
    /// Adds a claim and its asker to the name's window (opening one due
    /// at `due`); false when there is no room.
    pub fn add(&mut self, name_key: NodeId, claim: NameClaim, asker: Asker, due: Instant) -> bool {
        if !self.windows.contains_key(&name_key) && self.windows.len() >= VOTE_WINDOWS_MAX {
            return false;
        }
        let window = self.windows.entry(name_key).or_insert_with(|| VoteWindow {
            claims: Vec::new(),
            askers: Vec::new(),
            due,
        });
        let hash = claim_hash(&claim);
        if !window.claims.iter().any(|(h, _)| *h == hash) {
            if window.claims.len() >= WINDOW_CLAIMS_MAX {
                return false;
            }
            window.claims.push((hash, claim));
        }
        if !window.askers.contains(&asker) {
            if window.askers.len() >= WINDOW_ASKERS_MAX {
                return false;
            }
            window.askers.push(asker);
        }
        true
    }

    /// The windows that closed: each name's lowest-hash claim and its askers.
    pub fn take_due(&mut self, now: Instant) -> Vec<(NodeId, NameClaim, Vec<Asker>)> {
        let due: Vec<NodeId> = self
            .windows
            .iter()
            .filter(|(_, w)| w.due <= now)
            .map(|(key, _)| *key)
            .collect();
        due.into_iter()
            .filter_map(|key| {
                let window = self.windows.remove(&key)?;
                let (_, best) = window.claims.into_iter().min_by_key(|(hash, _)| *hash)?;
                Some((key, best, window.askers))
            })
            .collect()
    }

    pub fn next_deadline(&self) -> Instant {
        self.windows
            .values()
            .map(|w| w.due)
            .min()
            .unwrap_or(Instant::NEVER)
    }
}

/// A registration a supernode coordinates.
#[derive(Clone, Debug)]
pub(crate) struct Registration {
    pub client: Addr,
    pub claim: NameClaim,
    pub claim_hash: [u8; 32],
    pub name_key: NodeId,
    /// The voters asked, and whether each answered.
    pub voters: Vec<(NodeId, Contact, bool)>,
    pub votes_for: Vec<NameVote>,
    /// Votes for other claims, by owner account.
    pub votes_against: Vec<PublicKey>,
    pub started: Instant,
    pub deadline: Instant,
}

/// How a registration stands after a vote.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tally {
    Pending,
    Certified,
    Taken(PublicKey),
    /// Every voter answered and no claim has a majority.
    Split,
}

impl Registration {
    pub fn tally(&self, needed: usize) -> Tally {
        if self.votes_for.len() >= needed {
            return Tally::Certified;
        }
        let mut counts: BTreeMap<PublicKey, usize> = BTreeMap::new();
        for owner in &self.votes_against {
            *counts.entry(*owner).or_default() += 1;
        }
        if let Some((owner, _)) = counts.iter().find(|(_, count)| **count >= needed) {
            return Tally::Taken(*owner);
        }
        if self.voters.iter().all(|(_, _, answered)| *answered) {
            return Tally::Split;
        }
        Tally::Pending
    }

    pub fn certificate(&self) -> NameCertificate {
        NameCertificate {
            claim: self.claim.clone(),
            votes: BoundedVec::truncating(self.votes_for.iter().take(NAME_VOTES_MAX).cloned()),
        }
    }
}

/// Per-account count of claims coordinated in the current hour.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClaimLimits {
    accounts: BTreeMap<PublicKey, (u64, u32, Option<[u8; 32]>)>,
}

impl ClaimLimits {
    /// Whether the account may start a registration for this claim now
    /// (retries of the same claim are free).
    pub fn allow(&mut self, account: PublicKey, hash: [u8; 32], now_unix_s: u64) -> bool {
        let hour = now_unix_s / 3_600;
        if self.accounts.len() >= NAME_ACCOUNTS_TRACKED_MAX && !self.accounts.contains_key(&account)
        {
            self.accounts.retain(|_, (at, _, _)| *at == hour);
            if self.accounts.len() >= NAME_ACCOUNTS_TRACKED_MAX {
                return false;
            }
        }
        let entry = self.accounts.entry(account).or_insert((hour, 0, None));
        if entry.0 != hour {
            *entry = (hour, 0, None);
        }
        if entry.2 == Some(hash) {
            return true;
        }
        if entry.1 >= NAME_CLAIMS_PER_ACCOUNT_PER_HOUR {
            return false;
        }
        entry.1 += 1;
        entry.2 = Some(hash);
        true
    }
}

/// A name lookup a supernode runs for a client.
#[derive(Clone, Debug)]
pub(crate) struct NameQuery {
    pub client: Addr,
    pub client_query_id: u32,
    pub name_key: NodeId,
    pub best: Option<(Box<NameCertificate>, CertificateInfo)>,
    pub outstanding: Vec<Addr>,
    pub started: Instant,
    pub deadline: Instant,
}

impl NameQuery {
    /// Takes an answer's certificate if it is checked, plausible and wins.
    pub fn consider(&mut self, certificate: Box<NameCertificate>, info: CertificateInfo) {
        if info.name_key != self.name_key {
            return;
        }
        if self.best.as_ref().is_none_or(|(_, best)| info.beats(best)) {
            self.best = Some((certificate, info));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::normalize;
    use rand_core::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    fn params() -> Params {
        Params {
            id_puzzle_difficulty_bits: 2,
            name_pow_bits: 6,
            ..Params::default()
        }
    }

    fn voter(seed: u64, ip: u32) -> (Keypair, Contact) {
        let key = Keypair::generate(CryptoMode::Full, &mut Pcg64Mcg::seed_from_u64(seed));
        let (id_nonce, _) = crate::identity::solve_id_puzzle(&key.public(), 2, 0);
        let contact = Contact {
            key: key.public(),
            id_nonce,
            addr: Addr::from_ipv4_u32(ip, 4000),
        };
        (key, contact)
    }

    fn certified(claim: &NameClaim, voters: &[(Keypair, Contact)], at: u64) -> NameCertificate {
        let key = check_claim(CryptoMode::Full, claim, 6).unwrap();
        let votes = voters
            .iter()
            .enumerate()
            .map(|(i, (k, c))| {
                sign_vote(
                    k,
                    NameVoteBody {
                        name_key: key,
                        claim_hash: claim_hash(claim),
                        account: claim.body.account,
                        voter: *c,
                        voted_unix_s: at + i as u64,
                    },
                )
            })
            .collect::<Vec<_>>();
        NameCertificate {
            claim: claim.clone(),
            votes: BoundedVec::truncating(votes),
        }
    }

    fn account(seed: u64) -> Keypair {
        Keypair::generate(CryptoMode::Full, &mut Pcg64Mcg::seed_from_u64(1_000 + seed))
    }

    #[test]
    fn a_claim_checks_and_its_tampered_copies_do_not() {
        let name = normalize("Alice").unwrap();
        let claim = make_claim(&account(1), &name, 1_000, 6);
        assert_eq!(check_claim(CryptoMode::Full, &claim, 6), Ok(name.key()));
        let mut other_name = claim.clone();
        other_name.body.name = BoundedVec::truncating("alicf".bytes());
        assert!(check_claim(CryptoMode::Full, &other_name, 0).is_err());
        let mut upper = claim.clone();
        upper.body.name = BoundedVec::truncating("Alice".bytes());
        assert_eq!(
            check_claim(CryptoMode::Full, &upper, 0),
            Err(NameRefusal::Invalid)
        );
        let mut stolen = claim.clone();
        stolen.body.account = account(2).public();
        assert_eq!(
            check_claim(CryptoMode::Full, &stolen, 0),
            Err(NameRefusal::BadSignature)
        );
        // More work asked than was done (overwhelmingly likely at 30 bits).
        assert_eq!(
            check_claim(CryptoMode::Full, &claim, 30),
            Err(NameRefusal::ProofOfWork)
        );
    }

    #[test]
    fn a_certificate_needs_four_of_five_from_distinct_networks() {
        let params = params();
        assert_eq!(votes_needed(&params), 4);
        let claim = make_claim(&account(1), &normalize("bob").unwrap(), 1_000, 6);
        let voters: Vec<_> = (0..4)
            .map(|i| voter(i, 0x0a00_0001 + (i as u32) * 256))
            .collect();
        let good = certified(&claim, &voters, 2_000);
        let info = verify_certificate(CryptoMode::Full, &params, &good).unwrap();
        assert_eq!(info.owner, account(1).public());
        assert_eq!(info.quorum_unix_s, 2_003);
        let three = certified(&claim, &voters[..3], 2_000);
        assert_eq!(
            verify_certificate(CryptoMode::Full, &params, &three),
            Err(CertificateError::TooFewVotes)
        );
        // Four voters in one /24: one seat.
        let same_net: Vec<_> = (0..4)
            .map(|i| voter(10 + i, 0x0a00_0101 + i as u32))
            .collect();
        let grinder = certified(&claim, &same_net, 2_000);
        assert_eq!(
            verify_certificate(CryptoMode::Full, &params, &grinder),
            Err(CertificateError::DuplicateVoter)
        );
        // A vote moved to another claim does not count for this one.
        let other = make_claim(&account(2), &normalize("bob").unwrap(), 1_000, 6);
        let mut mixed = good.clone();
        mixed.votes = certified(&other, &voters, 2_000).votes;
        assert_eq!(
            verify_certificate(CryptoMode::Full, &params, &mixed),
            Err(CertificateError::WrongVote)
        );
        let mut forged = good.clone();
        let mut votes = forged.votes.as_slice().to_vec();
        votes[0].body.voted_unix_s = 1;
        forged.votes = BoundedVec::truncating(votes);
        assert_eq!(
            verify_certificate(CryptoMode::Full, &params, &forged),
            Err(CertificateError::BadVote)
        );
    }

    #[test]
    fn conflicting_certificates_resolve_the_same_way_everywhere() {
        let params = params();
        let name = normalize("carol").unwrap();
        let first = make_claim(&account(1), &name, 1_000, 6);
        let second = make_claim(&account(2), &name, 1_000, 6);
        let voters: Vec<_> = (0..5)
            .map(|i| voter(i, 0x0a00_0001 + (i as u32) * 256))
            .collect();
        let early = certified(&first, &voters[..4], 2_000);
        let late = certified(&second, &voters[1..], 2_010);
        let early_info = verify_certificate(CryptoMode::Full, &params, &early).unwrap();
        let late_info = verify_certificate(CryptoMode::Full, &params, &late).unwrap();
        for order in [[0, 1], [1, 0]] {
            let mut book = NameBook::default();
            let offered = [
                (Box::new(early.clone()), early_info.clone()),
                (Box::new(late.clone()), late_info.clone()),
            ];
            for i in order {
                book.store(offered[i].0.clone(), offered[i].1.clone());
            }
            assert_eq!(
                book.record_info(&name.key()).unwrap().owner,
                account(1).public()
            );
        }
        let mut book = NameBook::default();
        book.store(Box::new(early.clone()), early_info.clone());
        assert_eq!(
            book.store(Box::new(late), late_info),
            Stored::Lost(Box::new(early))
        );
    }

    #[test]
    fn a_voter_votes_once_until_an_undecided_vote_is_released() {
        let params = params();
        let (me, contact) = voter(1, 0x0a00_0001);
        let name = normalize("dave").unwrap();
        let first = make_claim(&account(1), &name, 1_000, 6);
        let second = make_claim(&account(2), &name, 1_000, 6);
        let mut book = NameBook::default();
        let hold = params.name_vote_hold_s;
        let vote = book
            .vote(&me, contact, name.key(), &first, 1_000, hold)
            .unwrap();
        assert_eq!(vote.body.claim_hash, claim_hash(&first));
        let again = book
            .vote(&me, contact, name.key(), &second, 1_010, hold)
            .unwrap();
        assert_eq!(again, vote, "one vote per name");
        let later = book
            .vote(&me, contact, name.key(), &second, 1_001 + hold, hold)
            .unwrap();
        assert_eq!(
            later.body.claim_hash,
            claim_hash(&second),
            "released after the hold"
        );
    }

    /// The rows one book hands out, taken back by a fresh one (a restart).
    fn restarted(book: &mut NameBook, me: &Keypair) -> NameBook {
        let mut changes = DurableChanges::default();
        book.take_changes(&mut changes);
        let mut fresh = NameBook::default();
        fresh.track_changes();
        for change in &changes.changes {
            let Some(bytes) = &change.value else { continue };
            match change.table {
                DurableTable::NameVotes => {
                    assert!(fresh
                        .restore_vote(&me.public(), &change.key, bytes)
                        .unwrap())
                }
                DurableTable::NameRecords => fresh.restore_record(&change.key, bytes).unwrap(),
                other => panic!("a name book wrote to {other}"),
            }
        }
        fresh
    }

    #[test]
    fn a_restarted_voter_keeps_its_vote_and_records() {
        let params = params();
        let (me, contact) = voter(1, 0x0a00_0001);
        let name = normalize("dave").unwrap();
        let first = make_claim(&account(1), &name, 1_000, 6);
        let second = make_claim(&account(2), &name, 1_000, 6);
        let hold = params.name_vote_hold_s;
        let mut book = NameBook::default();
        book.track_changes();
        let vote = book
            .vote(&me, contact, name.key(), &first, 1_000, hold)
            .unwrap();
        let other = normalize("erin").unwrap();
        let other_claim = make_claim(&account(3), &other, 1_000, 6);
        let voters: Vec<_> = (10..15)
            .map(|i| voter(i, 0x0a00_0000 + (i as u32) * 256))
            .collect();
        let certificate = certified(&other_claim, &voters, 1_000);
        let info = verify_certificate(CryptoMode::Full, &params, &certificate).unwrap();
        assert_eq!(
            book.store(Box::new(certificate.clone()), info.clone()),
            Stored::Kept
        );

        let mut fresh = restarted(&mut book, &me);
        let again = fresh
            .vote(&me, contact, name.key(), &second, 1_010, hold)
            .unwrap();
        assert_eq!(again, vote, "a restarted voter votes as before");
        assert_eq!(fresh.record(&other.key()), Some(&certificate));
        assert_eq!(fresh.record_info(&other.key()), Some(&info));
        let mut none = DurableChanges::default();
        fresh.take_changes(&mut none);
        assert!(none.is_empty(), "restoring is not a change: {none:?}");

        // A released vote is a removal.
        fresh.release_votes(1_001 + hold, hold);
        let mut released = DurableChanges::default();
        fresh.take_changes(&mut released);
        assert_eq!(released.changes.len(), 1);
        assert_eq!(released.changes[0].value, None);
        assert!(released.must_sync());
    }

    #[test]
    fn a_vote_of_another_device_key_is_skipped_and_damage_is_an_error() {
        let params = params();
        let (me, contact) = voter(1, 0x0a00_0001);
        let (other, _) = voter(2, 0x0a00_0101);
        let name = normalize("dave").unwrap();
        let claim = make_claim(&account(1), &name, 1_000, 6);
        let mut book = NameBook::default();
        book.track_changes();
        book.vote(
            &me,
            contact,
            name.key(),
            &claim,
            1_000,
            params.name_vote_hold_s,
        );
        let mut changes = DurableChanges::default();
        book.take_changes(&mut changes);
        let row = &changes.changes[0];
        let bytes = row.value.as_ref().unwrap();
        let mut fresh = NameBook::default();
        assert_eq!(
            fresh.restore_vote(&other.public(), &row.key, bytes),
            Ok(false)
        );
        assert_eq!(fresh.votes_len(), 0);
        let error = fresh
            .restore_vote(&me.public(), &[0; 32], bytes)
            .unwrap_err();
        assert!(
            error.to_string().contains("a vote on another name"),
            "{error}"
        );
        for cut in 0..bytes.len() {
            assert!(fresh
                .restore_vote(&me.public(), &row.key, &bytes[..cut])
                .is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(fresh.restore_vote(&me.public(), &row.key, &long).is_err());
    }

    #[test]
    fn a_vote_window_picks_the_lowest_claim_hash_whatever_the_order() {
        let name = normalize("erin").unwrap();
        let claims: Vec<NameClaim> = (0..3)
            .map(|i| make_claim(&account(i), &name, 1_000, 6))
            .collect();
        let lowest = claims.iter().min_by_key(|c| claim_hash(c)).unwrap().clone();
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut windows = VoteWindows::default();
            for (n, i) in order.into_iter().enumerate() {
                let asker = (Addr::from_ipv4_u32(1, 1), n as u32);
                assert!(windows.add(name.key(), claims[i].clone(), asker, Instant::from_ms(500)));
            }
            assert_eq!(windows.next_deadline(), Instant::from_ms(500));
            assert!(windows.take_due(Instant::from_ms(499)).is_empty());
            let due = windows.take_due(Instant::from_ms(500));
            assert_eq!(due.len(), 1);
            assert_eq!(due[0].1, lowest);
            assert_eq!(due[0].2.len(), 3, "every asker gets the answer");
        }
    }

    #[test]
    fn claim_limits_count_names_not_retries() {
        let mut limits = ClaimLimits::default();
        let owner = account(1).public();
        for i in 0..NAME_CLAIMS_PER_ACCOUNT_PER_HOUR {
            assert!(limits.allow(owner, [i as u8; 32], 7_200));
            assert!(limits.allow(owner, [i as u8; 32], 7_201), "a retry is free");
        }
        assert!(!limits.allow(owner, [99; 32], 7_202));
        assert!(limits.allow(owner, [99; 32], 10_800), "a new hour");
    }
}
