//! Wire types of name registration (issue #5): a claim signed by the
//! account's root key, the votes of the supernodes responsible for the
//! name, and the certificate that binds a name to an account.

use crate::bounded::BoundedVec;
use crate::types::{Contact, NodeId, PublicKey, Signature};
use serde::{Deserialize, Serialize};

/// Longest normalized name on the wire, in bytes (32 characters of up to 4 bytes).
pub const NAME_BYTES_MAX: usize = 128;
/// Most votes one certificate carries.
pub const NAME_VOTES_MAX: usize = 8;

/// The part of a claim the account's root key signs: "this account wants
/// this (normalized) name". `pow_nonce` makes the claim's hash meet the
/// network's proof-of-work bound (a registration costs work).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct NameClaimBody {
    pub name: BoundedVec<u8, NAME_BYTES_MAX>,
    pub account: PublicKey,
    pub claimed_unix_s: u64,
    pub pow_nonce: u64,
}

#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct NameClaim {
    pub body: NameClaimBody,
    pub signature: Signature,
}

/// A supernode's single vote for a name: "the first claim I saw for this
/// name is the one with this hash, by this account". Signed by the voter's
/// node key; `voter` carries the puzzle nonce that proves its node ID.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct NameVoteBody {
    pub name_key: NodeId,
    pub claim_hash: [u8; 32],
    pub account: PublicKey,
    pub voter: Contact,
    pub voted_unix_s: u64,
}

#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct NameVote {
    pub body: NameVoteBody,
    pub signature: Signature,
}

/// A claim and a quorum of votes for it: the name record the directory
/// stores and any node can check.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct NameCertificate {
    pub claim: NameClaim,
    pub votes: BoundedVec<NameVote, NAME_VOTES_MAX>,
}

/// Why a registration was turned away before any vote.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub enum NameRefusal {
    /// The name is not in normal form or breaks the naming rules.
    Invalid,
    /// The claim's signature does not verify.
    BadSignature,
    /// The claim's hash does not meet the proof-of-work bound.
    ProofOfWork,
    /// Too many registrations by this account (or through this supernode) lately.
    RateLimited,
}

/// How a registration ended, as the coordinating supernode tells the client.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub enum NameOutcome {
    /// A quorum voted for the claim; the certificate is stored.
    Registered {
        certificate: Box<NameCertificate>,
    },
    /// Another account holds the name (or a quorum already voted for it).
    Taken {
        owner: PublicKey,
    },
    /// No decision yet (voters unreachable, or votes split): try again later.
    Unavailable {
        retry_after_ms: u32,
    },
    Refused {
        reason: NameRefusal,
    },
}
