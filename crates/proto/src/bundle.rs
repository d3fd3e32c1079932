//! Wire types of the password-sealed key bundle (issue #5: "username +
//! password on a new device"). The cryptography lives in
//! `peerline_core::bundle`; these are plain, fixed-size values.
//!
//! Every field has a fixed size or is an integer, so decoding allocates
//! nothing and is total without any `BoundedVec`.

use crate::types::{PublicKey, Signature};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Argon2id cost parameters, as stored in a bundle (the sealing device
/// chose them; the opening device checks their bounds before it runs them).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

/// How the account's OPRF key is shared: `threshold` of the `holders`
/// share indices `1..=holders` must answer to open the bundle.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct Sharing {
    pub threshold: u8,
    pub holders: u8,
}

/// Bytes of the random Argon2id salt in a bundle.
pub const BUNDLE_SALT_LEN: usize = 16;
/// Bytes of the XChaCha20-Poly1305 nonce in a bundle.
pub const BUNDLE_NONCE_LEN: usize = 24;
/// Bytes of the authentication tag of the sealed seed.
pub const BUNDLE_TAG_LEN: usize = 16;

/// The part of a key bundle that the account's root key signs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct KeyBundleBody {
    pub account_key: PublicKey,
    /// Grows with every re-seal (a password change); a replica keeps the
    /// highest it has seen.
    pub version: u64,
    pub sharing: Sharing,
    pub kdf: KdfParams,
    pub salt: [u8; BUNDLE_SALT_LEN],
    pub nonce: [u8; BUNDLE_NONCE_LEN],
    /// The root key's 32-byte seed, encrypted.
    pub sealed_seed: [u8; 32],
    pub tag: [u8; BUNDLE_TAG_LEN],
}

/// An account's root key sealed under its password and the holders' OPRF,
/// signed by the root key itself (so nobody else can replace it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct KeyBundle {
    pub body: KeyBundleBody,
    pub signature: Signature,
}

/// A client's blinded password element: a compressed ristretto255 point.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct BlindedElement(pub [u8; 32]);

/// A holder's answer to a [`BlindedElement`]: its key share times the
/// element, a compressed ristretto255 point.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct Evaluation(pub [u8; 32]);

/// The part of a share deal that the account's root key signs. It names
/// the share only by its public commitment (`share · B`, B the ristretto255
/// base point), so the signed part reveals nothing of the share.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct ShareDealBody {
    pub account_key: PublicKey,
    /// The bundle version whose OPRF key this is a share of (a password
    /// change seals a new version with a new key).
    pub bundle_version: u64,
    /// Grows with every re-deal; a holder replaces its share only with a
    /// higher epoch.
    pub epoch: u64,
    /// Which share, `1..=holders`.
    pub index: u8,
    pub commitment: [u8; 32],
}

/// One OPRF key share for one holder.
///
/// **The share travels in the clear inside this message**: it must only
/// ever be sent over an encrypted, authenticated channel to the holder
/// (on the real network the QUIC/TLS connection to that supernode, whose
/// key the sender pinned), never through a relay that could read it, and
/// never stored anywhere but at the holder. `Debug` does not print it.
/// Not `Copy`: every copy of the share is one more to wipe.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShareDeal {
    pub body: ShareDealBody,
    pub signature: Signature,
    /// The secret share: a canonical little-endian ristretto255 scalar.
    pub share: [u8; 32],
}

impl fmt::Debug for ShareDeal {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("ShareDeal")
            .field("body", &self.body)
            .field("signature", &self.signature)
            .field("share", &"<secret>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_deal_debug_hides_the_share() {
        let deal = ShareDeal {
            body: ShareDealBody {
                account_key: PublicKey([1; 32]),
                bundle_version: 1,
                epoch: 1,
                index: 1,
                commitment: [2; 32],
            },
            signature: Signature([3; 64]),
            share: [0xab; 32],
        };
        let text = format!("{deal:?}");
        assert!(text.contains("<secret>"));
        assert!(!text.contains("171"), "share bytes printed: {text}");
    }
}
