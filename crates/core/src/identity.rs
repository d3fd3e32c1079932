//! Keys, signatures, device certificates and the node-ID puzzle.
//!
//! Two crypto modes share every code path. `Full` is real Ed25519. `Modelled`
//! replaces the curve arithmetic by a keyed BLAKE3 tag of the same size, for
//! simulations too large to afford ~36 µs per signature check; it offers no
//! security (anyone can compute a tag from a public key) and a node in one
//! mode rejects the other mode's signatures. The simulator's report says which
//! mode ran, and the tests run the full mode.

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use peerline_proto::{
    to_signing_bytes, Contact, DeviceCert, DeviceCertBody, Envelope, EnvelopeBody, EnvelopeId,
    NodeId, PresenceBody, PresenceRecord, PublicKey, Signature, Ticket, TicketBody,
};
use rand_core::Rng;
use serde::Serialize;

/// Domain-separation prefixes: a signature for one purpose never verifies for another.
pub mod domain {
    pub const DEVICE_CERT: &[u8] = b"peerline/v1/device-cert";
    pub const PRESENCE: &[u8] = b"peerline/v1/presence";
    pub const ATTACH: &[u8] = b"peerline/v1/attach";
    pub const TICKET: &[u8] = b"peerline/v1/ticket";
    pub const RESUME: &[u8] = b"peerline/v1/resume";
    pub const ENVELOPE: &[u8] = b"peerline/v1/envelope";
    pub const RELAY: &[u8] = b"peerline/v1/relay";
    pub const KEY_BUNDLE: &[u8] = b"peerline/v1/key-bundle";
    pub const SHARE_DEAL: &[u8] = b"peerline/v1/share-deal";
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CryptoMode {
    Full,
    Modelled,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("signature does not verify")]
    BadSignature,
    #[error("public key is not a valid Ed25519 point")]
    BadKey,
    #[error("certificate expired")]
    Expired,
    #[error("issued in the future")]
    NotYetValid,
    #[error("node ID does not solve the puzzle")]
    PuzzleUnsolved,
}

/// A signing key in either mode.
#[derive(Clone)]
pub struct Keypair {
    public: PublicKey,
    secret: Option<Box<SigningKey>>,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Keypair({:?})", self.public)
    }
}

impl Keypair {
    pub fn generate(mode: CryptoMode, rng: &mut impl Rng) -> Keypair {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Keypair::from_seed(mode, seed)
    }

    /// Deterministic key from 32 secret bytes (the simulator derives these from its seed).
    pub fn from_seed(mode: CryptoMode, seed: [u8; 32]) -> Keypair {
        match mode {
            CryptoMode::Full => {
                let signing = SigningKey::from_bytes(&seed);
                Keypair {
                    public: PublicKey(signing.verifying_key().to_bytes()),
                    secret: Some(Box::new(signing)),
                }
            }
            CryptoMode::Modelled => Keypair {
                public: PublicKey(*blake3::hash(&seed).as_bytes()),
                secret: None,
            },
        }
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The 32 secret bytes of a real Ed25519 key (`None` in modelled mode,
    /// which has no secret). The real-network driver needs them to make the
    /// node's TLS certificate from the same key as its peerline identity
    /// and to sign its TLS handshakes; nothing else should, and they never
    /// leave the process.
    pub fn secret_seed(&self) -> Option<[u8; 32]> {
        self.secret.as_ref().map(|signing| signing.to_bytes())
    }

    /// The X25519 secret this Ed25519 key expands to (the scalar half of
    /// SHA-512 of the seed; X25519 clamps it), whose public key is the
    /// Montgomery form of [`Keypair::public`]. Only the sealing of punch
    /// candidates (`sealed.rs`) uses it. `None` in modelled mode.
    pub(crate) fn x25519_secret(&self) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        self.secret
            .as_ref()
            .map(|signing| zeroize::Zeroizing::new(signing.to_scalar_bytes()))
    }

    pub fn mode(&self) -> CryptoMode {
        if self.secret.is_some() {
            CryptoMode::Full
        } else {
            CryptoMode::Modelled
        }
    }

    pub fn sign(&self, domain: &[u8], message: &[u8]) -> Signature {
        match &self.secret {
            Some(signing) => {
                let mut bytes = Vec::with_capacity(domain.len() + message.len());
                bytes.extend_from_slice(domain);
                bytes.extend_from_slice(message);
                Signature(signing.sign(&bytes).to_bytes())
            }
            None => modelled_tag(&self.public, domain, message),
        }
    }
}

fn modelled_tag(public: &PublicKey, domain: &[u8], message: &[u8]) -> Signature {
    let mut hasher = blake3::Hasher::new_keyed(&public.0);
    hasher.update(domain);
    hasher.update(message);
    let mut out = [0u8; 64];
    hasher.finalize_xof().fill(&mut out);
    Signature(out)
}

/// Checks `signature` by `key` over `domain || message`.
pub fn verify(
    mode: CryptoMode,
    key: &PublicKey,
    domain: &[u8],
    message: &[u8],
    signature: &Signature,
) -> Result<(), CryptoError> {
    match mode {
        CryptoMode::Full => {
            let verifying = VerifyingKey::from_bytes(&key.0).map_err(|_| CryptoError::BadKey)?;
            let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
            let mut bytes = Vec::with_capacity(domain.len() + message.len());
            bytes.extend_from_slice(domain);
            bytes.extend_from_slice(message);
            verifying
                .verify(&bytes, &signature)
                .map_err(|_| CryptoError::BadSignature)
        }
        CryptoMode::Modelled => {
            if modelled_tag(key, domain, message) == *signature {
                Ok(())
            } else {
                Err(CryptoError::BadSignature)
            }
        }
    }
}

/// The account signs a certificate for one of its devices.
pub fn issue_device_cert(account: &Keypair, device: PublicKey, expires_unix_s: u64) -> DeviceCert {
    let body = DeviceCertBody {
        device_key: device,
        account_key: account.public(),
        expires_unix_s,
    };
    let signature = account.sign(domain::DEVICE_CERT, &to_signing_bytes(&body));
    DeviceCert { body, signature }
}

/// Checks the account's signature and the expiry (with skew tolerance).
pub fn verify_device_cert(
    mode: CryptoMode,
    cert: &DeviceCert,
    now_unix_s: u64,
    skew_tolerance_s: u64,
) -> Result<(), CryptoError> {
    if cert.body.expires_unix_s.saturating_add(skew_tolerance_s) < now_unix_s {
        return Err(CryptoError::Expired);
    }
    verify(
        mode,
        &cert.body.account_key,
        domain::DEVICE_CERT,
        &to_signing_bytes(&cert.body),
        &cert.signature,
    )
}

/// The device signs its presence record.
pub fn sign_presence(device: &Keypair, body: PresenceBody) -> PresenceRecord {
    debug_assert_eq!(body.cert.body.device_key, device.public());
    let signature = device.sign(domain::PRESENCE, &to_signing_bytes(&body));
    PresenceRecord { body, signature }
}

/// Checks a presence record: certificate, device signature, issue and expiry
/// times against the local clock with skew tolerance.
pub fn verify_presence(
    mode: CryptoMode,
    record: &PresenceRecord,
    now_unix_s: u64,
    skew_tolerance_s: u64,
) -> Result<(), CryptoError> {
    let body = &record.body;
    if body.expires_unix_s.saturating_add(skew_tolerance_s) < now_unix_s {
        return Err(CryptoError::Expired);
    }
    if body.issued_unix_s > now_unix_s.saturating_add(skew_tolerance_s) {
        return Err(CryptoError::NotYetValid);
    }
    verify_device_cert(mode, &body.cert, now_unix_s, skew_tolerance_s)?;
    verify(
        mode,
        &body.cert.body.device_key,
        domain::PRESENCE,
        &to_signing_bytes(body),
        &record.signature,
    )
}

/// A supernode signs a resumption ticket with its node key.
pub fn sign_ticket(issuer: &Keypair, body: TicketBody) -> Ticket {
    debug_assert_eq!(body.issuer.key, issuer.public());
    let signature = issuer.sign(domain::TICKET, &to_signing_bytes(&body));
    Ticket { body, signature }
}

/// Checks a ticket's times (with skew tolerance: they are in the issuer's
/// clock) and the issuer's signature. Whether the issuer is a supernode
/// worth believing is the caller's question.
pub fn verify_ticket(
    mode: CryptoMode,
    ticket: &Ticket,
    now_unix_s: u64,
    skew_tolerance_s: u64,
) -> Result<(), CryptoError> {
    let body = &ticket.body;
    let expires = body.expires_unix_s.min(body.cert_expires_unix_s);
    if expires.saturating_add(skew_tolerance_s) < now_unix_s {
        return Err(CryptoError::Expired);
    }
    if body.issued_unix_s > now_unix_s.saturating_add(skew_tolerance_s) {
        return Err(CryptoError::NotYetValid);
    }
    verify(
        mode,
        &body.issuer.key,
        domain::TICKET,
        &to_signing_bytes(body),
        &ticket.signature,
    )
}

/// What a device signs to resume at `supernode`: the supernode's key (a
/// resume for one supernode is useless at another), the ticket and a
/// counter that grows with every resume of this device.
pub fn resume_proof_bytes(supernode: &PublicKey, ticket: &Ticket, counter: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(&supernode.0);
    bytes.extend_from_slice(&counter.to_le_bytes());
    bytes.extend_from_slice(&to_signing_bytes(ticket));
    bytes
}

/// The sending device signs an envelope.
pub fn sign_envelope(device: &Keypair, body: EnvelopeBody) -> Envelope {
    debug_assert_eq!(body.from_device, device.public());
    let signature = device.sign(domain::ENVELOPE, &to_signing_bytes(&body));
    Envelope { body, signature }
}

/// Checks that the envelope was signed by the device it names as sender.
pub fn verify_envelope(mode: CryptoMode, envelope: &Envelope) -> Result<(), CryptoError> {
    verify(
        mode,
        &envelope.body.from_device,
        domain::ENVELOPE,
        &to_signing_bytes(&envelope.body),
        &envelope.signature,
    )
}

/// An envelope's identity: a hash of its signed body.
pub fn envelope_id(envelope: &Envelope) -> EnvelopeId {
    let mut hasher = blake3::Hasher::new_derive_key("peerline v1 envelope id");
    hasher.update(&to_signing_bytes(&envelope.body));
    let mut id = [0u8; 16];
    id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    EnvelopeId(id)
}

/// Where an account's presence lives in the directory keyspace.
pub fn presence_key(account: &PublicKey) -> NodeId {
    let mut hasher = blake3::Hasher::new_derive_key("peerline v1 presence key");
    hasher.update(&account.0);
    NodeId(*hasher.finalize().as_bytes())
}

/// The node ID a key and puzzle nonce give (whether or not the puzzle is solved).
pub fn node_id(key: &PublicKey, nonce: u64) -> NodeId {
    let mut hasher = blake3::Hasher::new_derive_key("peerline v1 node id");
    hasher.update(&key.0);
    hasher.update(&nonce.to_le_bytes());
    NodeId(*hasher.finalize().as_bytes())
}

fn puzzle_zero_bits(id: &NodeId) -> u32 {
    let hash = blake3::hash(&id.0);
    let mut bits = 0;
    for byte in hash.as_bytes() {
        if *byte == 0 {
            bits += 8;
        } else {
            bits += byte.leading_zeros();
            break;
        }
    }
    bits
}

/// Checks the ID puzzle and returns the node ID it yields.
///
/// A node ID is `H(key, nonce)`, valid only if `H(node ID)` starts with
/// `difficulty_bits` zero bits. The ID cannot be chosen, only re-drawn, and
/// each draw costs `2^difficulty_bits` hashes on average: placing an ID within
/// `m` bits of a chosen key costs about `2^(m + difficulty_bits)` hashes
/// (S/Kademlia's static puzzle).
pub fn verify_id_puzzle(
    key: &PublicKey,
    nonce: u64,
    difficulty_bits: u32,
) -> Result<NodeId, CryptoError> {
    let id = node_id(key, nonce);
    if puzzle_zero_bits(&id) >= difficulty_bits {
        Ok(id)
    } else {
        Err(CryptoError::PuzzleUnsolved)
    }
}

/// Searches for a nonce that solves the ID puzzle (expected `2^difficulty_bits` tries).
pub fn solve_id_puzzle(key: &PublicKey, difficulty_bits: u32, start_nonce: u64) -> (u64, NodeId) {
    let mut nonce = start_nonce;
    loop {
        if let Ok(id) = verify_id_puzzle(key, nonce, difficulty_bits) {
            return (nonce, id);
        }
        nonce = nonce.wrapping_add(1);
    }
}

/// Checks a supernode contact's puzzle and returns its node ID.
pub fn contact_id(contact: &Contact, difficulty_bits: u32) -> Result<NodeId, CryptoError> {
    verify_id_puzzle(&contact.key, contact.id_nonce, difficulty_bits)
}

/// A device's identity: its key and the certificate its account gave it.
#[derive(Clone, Debug)]
pub struct DeviceIdentity {
    pub keypair: Keypair,
    pub cert: DeviceCert,
}

impl DeviceIdentity {
    /// A fresh account with one device (the account key is used once, to certify).
    pub fn new_account(
        mode: CryptoMode,
        rng: &mut impl Rng,
        now_unix_s: u64,
        cert_ttl_s: u64,
    ) -> DeviceIdentity {
        let account = Keypair::generate(mode, rng);
        let device = Keypair::generate(mode, rng);
        let cert = issue_device_cert(&account, device.public(), now_unix_s + cert_ttl_s);
        DeviceIdentity {
            keypair: device,
            cert,
        }
    }

    pub fn mode(&self) -> CryptoMode {
        self.keypair.mode()
    }

    pub fn account(&self) -> PublicKey {
        self.cert.body.account_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerline_proto::{Addr, BoundedVec};
    use rand_core::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    const NOW: u64 = 1_800_000_000;
    const SKEW: u64 = 600;

    fn rng() -> Pcg64Mcg {
        Pcg64Mcg::seed_from_u64(7)
    }

    #[test]
    fn device_cert_verifies_in_both_modes() {
        for mode in [CryptoMode::Full, CryptoMode::Modelled] {
            let identity = DeviceIdentity::new_account(mode, &mut rng(), NOW, 3600);
            verify_device_cert(mode, &identity.cert, NOW, SKEW).unwrap();
        }
    }

    #[test]
    fn forged_device_cert_is_rejected() {
        for mode in [CryptoMode::Full, CryptoMode::Modelled] {
            let mut rng = rng();
            let victim = DeviceIdentity::new_account(mode, &mut rng, NOW, 3600);
            let attacker = Keypair::generate(mode, &mut rng);
            // The attacker certifies its own device in the victim's account name.
            let mut forged = issue_device_cert(&attacker, attacker.public(), NOW + 3600);
            forged.body.account_key = victim.account();
            assert_eq!(
                verify_device_cert(mode, &forged, NOW, SKEW),
                Err(CryptoError::BadSignature)
            );
            // Tampering with the expiry breaks the signature too.
            let mut extended = victim.cert;
            extended.body.expires_unix_s += 1;
            assert_eq!(
                verify_device_cert(mode, &extended, NOW, SKEW),
                Err(CryptoError::BadSignature)
            );
        }
    }

    #[test]
    fn expired_device_cert_is_rejected_beyond_skew() {
        let identity = DeviceIdentity::new_account(CryptoMode::Full, &mut rng(), NOW, 100);
        let expiry = NOW + 100;
        verify_device_cert(CryptoMode::Full, &identity.cert, expiry + SKEW, SKEW).unwrap();
        assert_eq!(
            verify_device_cert(CryptoMode::Full, &identity.cert, expiry + SKEW + 1, SKEW),
            Err(CryptoError::Expired)
        );
    }

    #[test]
    fn secret_seed_rebuilds_the_same_key_and_modelled_has_none() {
        let keypair = Keypair::from_seed(CryptoMode::Full, [5; 32]);
        assert_eq!(keypair.secret_seed(), Some([5; 32]));
        let again = Keypair::from_seed(CryptoMode::Full, keypair.secret_seed().unwrap());
        assert_eq!(again.public(), keypair.public());
        assert_eq!(
            Keypair::from_seed(CryptoMode::Modelled, [5; 32]).secret_seed(),
            None
        );
    }

    #[test]
    fn modes_do_not_accept_each_other() {
        let identity = DeviceIdentity::new_account(CryptoMode::Modelled, &mut rng(), NOW, 3600);
        assert!(verify_device_cert(CryptoMode::Full, &identity.cert, NOW, SKEW).is_err());
    }

    fn presence(identity: &DeviceIdentity, issued: u64) -> PresenceRecord {
        let body = PresenceBody {
            cert: identity.cert,
            sequence: 1,
            issued_unix_s: issued,
            expires_unix_s: issued + 3600,
            supernodes: BoundedVec::truncating([Contact {
                key: PublicKey([1; 32]),
                id_nonce: 0,
                addr: Addr::default(),
            }]),
        };
        sign_presence(&identity.keypair, body)
    }

    #[test]
    fn presence_record_checks() {
        let mode = CryptoMode::Full;
        let identity = DeviceIdentity::new_account(mode, &mut rng(), NOW, 86_400);
        let record = presence(&identity, NOW);
        verify_presence(mode, &record, NOW, SKEW).unwrap();
        // A skewed clock within tolerance still accepts it.
        verify_presence(mode, &record, NOW - SKEW + 1, SKEW).unwrap();
        verify_presence(mode, &record, NOW + 3600 + SKEW, SKEW).unwrap();
        // Outside the tolerance it does not.
        assert_eq!(
            verify_presence(mode, &record, NOW - SKEW - 1, SKEW),
            Err(CryptoError::NotYetValid)
        );
        assert_eq!(
            verify_presence(mode, &record, NOW + 3600 + SKEW + 1, SKEW),
            Err(CryptoError::Expired)
        );
        let mut tampered = record.clone();
        tampered.body.sequence = 99;
        assert_eq!(
            verify_presence(mode, &tampered, NOW, SKEW),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn id_puzzle_costs_work_and_verifies_cheaply() {
        let key = PublicKey([9; 32]);
        let (nonce, id) = solve_id_puzzle(&key, 10, 0);
        assert_eq!(verify_id_puzzle(&key, nonce, 10), Ok(id));
        assert_eq!(id, node_id(&key, nonce));
        // Most nonces do not solve it: the ID cannot be picked freely.
        let unsolved = (0..64)
            .filter(|n| verify_id_puzzle(&key, *n, 10).is_err())
            .count();
        assert!(
            unsolved >= 60,
            "only {unsolved} of 64 nonces failed a 10-bit puzzle"
        );
        // A different key with the same nonce gives an unrelated ID.
        assert_ne!(node_id(&PublicKey([8; 32]), nonce), id);
    }
}
