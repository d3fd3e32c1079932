//! Hole-punching candidates sealed to the peer device
//! ([`Message::SealedCandidates`]): the supernodes that carry an offer or
//! an answer forward bytes they cannot read, and only the device the
//! message names can open them.
//!
//! The construction is Noise's one-way `X` pattern without its handshake
//! framing. Both device keys are Ed25519; their X25519 forms (the
//! birationally equivalent Montgomery point, and the secret scalar the
//! signing key expands to) give the static Diffie-Hellman. The sender makes
//! a one-time X25519 key per message, and
//!
//! ```text
//! key = BLAKE3-derive-key("peerline v1 sealed candidates",
//!                         DH(e, S_to) ‖ DH(s_from, S_to) ‖ e_pub ‖ transcript)
//! transcript = session ‖ from_cert ‖ to_device ‖ to_supernode ‖
//!              reply_supernode ‖ answer
//! sealed = XChaCha20-Poly1305(key, nonce 0, ad = transcript, plaintext)
//! ```
//!
//! The ephemeral term makes every key fresh (so the fixed nonce is never
//! reused under one key); the static term authenticates the sender: only
//! the holder of `from_cert`'s device key (or of the recipient's) can make
//! a blob that opens. The transcript binds every clear field, so a
//! supernode on the way can change none of them (the relay an empty answer
//! names included). The ephemeral secret is derived from the sender's
//! secret key, the caller's entropy, the transcript and the plaintext, so
//! it is unpredictable even when the entropy is not (the node's generator
//! is a seeded PCG, not a cryptographic one).
//!
//! The plaintext has a fixed size (a count byte and room for
//! [`PUNCH_CANDIDATES_MAX`] addresses), so the length tells an observer
//! nothing, not even whether an answer withholds every address.
//!
//! **Modelled crypto** (the simulator above 20,000 nodes) has no secret
//! keys: the key is then derived from public values only and the seal
//! hides nothing from anyone who recomputes it. It keeps the code path,
//! the sizes and the tamper check (a changed byte still fails to open);
//! the tests run the full mode.

use crate::identity::{CryptoMode, Keypair};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::VerifyingKey;
use peerline_proto::message::PUNCH_CANDIDATES_MAX;
use peerline_proto::{to_signing_bytes, Addr, BoundedVec, DeviceCert, Message, PublicKey};
use zeroize::Zeroizing;

/// Bytes of one address in the plaintext: IPv6 (v4-mapped) and port.
const ADDR_LEN: usize = 18;
/// The plaintext: a count byte, then room for every candidate (zeros past
/// the count).
pub const PLAINTEXT_LEN: usize = 1 + PUNCH_CANDIDATES_MAX * ADDR_LEN;
/// The Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// What `sealed` holds: 161 bytes.
pub const SEALED_LEN: usize = PLAINTEXT_LEN + TAG_LEN;

const _: () = assert!(SEALED_LEN <= peerline_proto::SEALED_CANDIDATES_LEN_MAX);

mod context {
    pub const KEY: &str = "peerline v1 sealed candidates";
    pub const EPHEMERAL: &str = "peerline v1 sealed candidates ephemeral";
    pub const MODELLED: &str = "peerline v1 sealed candidates modelled (no secrecy)";
}

/// The clear fields of a [`Message::SealedCandidates`]: where it goes and
/// for what, all bound into the seal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    pub session: u64,
    pub from_cert: DeviceCert,
    pub to_device: PublicKey,
    pub to_supernode: Addr,
    pub reply_supernode: Addr,
    pub answer: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a device key is not a valid curve point, or gives a degenerate Diffie-Hellman")]
    BadKey,
    #[error("sealed candidates do not open (tampered with, or not for this device)")]
    Tampered,
    #[error("sealed candidates of the wrong length or count")]
    Malformed,
    #[error("the device's key and the message's crypto mode differ")]
    WrongMode,
}

impl SealedHeader {
    fn transcript(&self) -> Vec<u8> {
        to_signing_bytes(&(
            self.session,
            &self.from_cert,
            &self.to_device,
            &self.to_supernode,
            &self.reply_supernode,
            self.answer,
        ))
    }
}

/// Seals `candidates` (at most [`PUNCH_CANDIDATES_MAX`]; more are cut)
/// from `sender` (the device `header.from_cert` certifies) to
/// `header.to_device`.
pub fn seal(
    sender: &Keypair,
    header: SealedHeader,
    candidates: &[Addr],
    entropy: &[u8; 32],
) -> Result<Message, SealError> {
    debug_assert_eq!(header.from_cert.body.device_key, sender.public());
    let transcript = header.transcript();
    let mut buffer = plaintext(candidates);
    let (ephemeral, key) = match sender.x25519_secret() {
        Some(static_secret) => {
            let mut hasher = blake3::Hasher::new_keyed(&blake3::derive_key(
                context::EPHEMERAL,
                static_secret.as_slice(),
            ));
            hasher.update(entropy);
            hasher.update(&transcript);
            hasher.update(&buffer);
            let ephemeral_secret = Zeroizing::new(*hasher.finalize().as_bytes());
            let ephemeral = MontgomeryPoint::mul_base_clamped(*ephemeral_secret).to_bytes();
            let recipient = montgomery(&header.to_device)?;
            let es = recipient.mul_clamped(*ephemeral_secret);
            let ss = recipient.mul_clamped(*static_secret);
            (ephemeral, full_key(&es, &ss, &ephemeral, &transcript)?)
        }
        None => {
            let mut hasher = blake3::Hasher::new_derive_key(context::EPHEMERAL);
            hasher.update(entropy);
            hasher.update(&transcript);
            let ephemeral = *hasher.finalize().as_bytes();
            let key = modelled_key(&sender.public(), &header.to_device, &ephemeral, &transcript);
            (ephemeral, key)
        }
    };
    let tag = XChaCha20Poly1305::new(&(*key).into())
        .encrypt_inout_detached(
            &XNonce::from([0u8; 24]),
            &transcript,
            buffer.as_mut_slice().into(),
        )
        .map_err(|_| SealError::Malformed)?;
    let mut sealed = Vec::with_capacity(SEALED_LEN);
    sealed.extend_from_slice(&buffer);
    sealed.extend_from_slice(&tag);
    Ok(Message::SealedCandidates {
        session: header.session,
        from_cert: header.from_cert,
        to_device: header.to_device,
        to_supernode: header.to_supernode,
        reply_supernode: header.reply_supernode,
        answer: header.answer,
        ephemeral,
        sealed: BoundedVec::truncating(sealed),
    })
}

/// Opens sealed candidates with the recipient's key. Checks the seal only:
/// whether `header.from_cert` is a valid certificate, and of whom, is the
/// caller's question.
pub fn open(
    recipient: &Keypair,
    header: &SealedHeader,
    ephemeral: &[u8; 32],
    sealed: &[u8],
) -> Result<Vec<Addr>, SealError> {
    if sealed.len() != SEALED_LEN {
        return Err(SealError::Malformed);
    }
    if header.to_device != recipient.public() {
        return Err(SealError::Tampered);
    }
    let transcript = header.transcript();
    let key = match (recipient.x25519_secret(), recipient.mode()) {
        (Some(static_secret), CryptoMode::Full) => {
            let sender = montgomery(&header.from_cert.body.device_key)?;
            let es = MontgomeryPoint(*ephemeral).mul_clamped(*static_secret);
            let ss = sender.mul_clamped(*static_secret);
            full_key(&es, &ss, ephemeral, &transcript)?
        }
        (None, CryptoMode::Modelled) => modelled_key(
            &header.from_cert.body.device_key,
            &header.to_device,
            ephemeral,
            &transcript,
        ),
        _ => return Err(SealError::WrongMode),
    };
    let (ciphertext, tag) = sealed.split_at(PLAINTEXT_LEN);
    let mut buffer = [0u8; PLAINTEXT_LEN];
    buffer.copy_from_slice(ciphertext);
    let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| SealError::Malformed)?;
    XChaCha20Poly1305::new(&(*key).into())
        .decrypt_inout_detached(
            &XNonce::from([0u8; 24]),
            &transcript,
            buffer.as_mut_slice().into(),
            &tag.into(),
        )
        .map_err(|_| SealError::Tampered)?;
    parse_plaintext(&buffer)
}

/// The X25519 form of an Ed25519 public key.
fn montgomery(key: &PublicKey) -> Result<MontgomeryPoint, SealError> {
    VerifyingKey::from_bytes(&key.0)
        .map(|key| key.to_montgomery())
        .map_err(|_| SealError::BadKey)
}

fn full_key(
    es: &MontgomeryPoint,
    ss: &MontgomeryPoint,
    ephemeral: &[u8; 32],
    transcript: &[u8],
) -> Result<Zeroizing<[u8; 32]>, SealError> {
    // A small-order point makes the shared secret all zeros: contributory
    // behaviour (RFC 7748 §6.1) refuses it.
    if es.to_bytes() == [0; 32] || ss.to_bytes() == [0; 32] {
        return Err(SealError::BadKey);
    }
    let mut input = Zeroizing::new(Vec::with_capacity(96 + transcript.len()));
    input.extend_from_slice(es.as_bytes());
    input.extend_from_slice(ss.as_bytes());
    input.extend_from_slice(ephemeral);
    input.extend_from_slice(transcript);
    Ok(Zeroizing::new(blake3::derive_key(context::KEY, &input)))
}

fn modelled_key(
    from_device: &PublicKey,
    to_device: &PublicKey,
    ephemeral: &[u8; 32],
    transcript: &[u8],
) -> Zeroizing<[u8; 32]> {
    let mut hasher = blake3::Hasher::new_derive_key(context::MODELLED);
    hasher.update(&from_device.0);
    hasher.update(&to_device.0);
    hasher.update(ephemeral);
    hasher.update(transcript);
    Zeroizing::new(*hasher.finalize().as_bytes())
}

fn plaintext(candidates: &[Addr]) -> [u8; PLAINTEXT_LEN] {
    let mut out = [0u8; PLAINTEXT_LEN];
    let count = candidates.len().min(PUNCH_CANDIDATES_MAX);
    out[0] = count as u8;
    for (slot, addr) in out[1..]
        .chunks_exact_mut(ADDR_LEN)
        .zip(&candidates[..count])
    {
        slot[..16].copy_from_slice(&addr.ip);
        slot[16..].copy_from_slice(&addr.port.to_be_bytes());
    }
    out
}

fn parse_plaintext(bytes: &[u8; PLAINTEXT_LEN]) -> Result<Vec<Addr>, SealError> {
    let count = usize::from(bytes[0]);
    if count > PUNCH_CANDIDATES_MAX {
        return Err(SealError::Malformed);
    }
    Ok(bytes[1..]
        .chunks_exact(ADDR_LEN)
        .take(count)
        .map(|slot| {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&slot[..16]);
            Addr {
                ip,
                port: u16::from_be_bytes([slot[16], slot[17]]),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DeviceIdentity;
    use rand_core::SeedableRng;

    const NOW: u64 = 1_800_000_000;

    fn devices(mode: CryptoMode) -> (DeviceIdentity, DeviceIdentity, DeviceIdentity) {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(11);
        (
            DeviceIdentity::new_account(mode, &mut rng, NOW, 3_600),
            DeviceIdentity::new_account(mode, &mut rng, NOW, 3_600),
            DeviceIdentity::new_account(mode, &mut rng, NOW, 3_600),
        )
    }

    fn header(from: &DeviceIdentity, to: &DeviceIdentity) -> SealedHeader {
        SealedHeader {
            session: 42,
            from_cert: from.cert,
            to_device: to.keypair.public(),
            to_supernode: Addr::from_ipv4_u32(0x0a00_0001, 4433),
            reply_supernode: Addr::from_ipv4_u32(0x0a00_0002, 4433),
            answer: false,
        }
    }

    fn candidates() -> Vec<Addr> {
        vec![
            Addr::from_ipv4_u32(0xc633_6407, 51_000),
            Addr::from_ipv4_u32(0xc0a8_0105, 4433),
        ]
    }

    fn parts(message: &Message) -> (SealedHeader, [u8; 32], Vec<u8>) {
        let Message::SealedCandidates {
            session,
            from_cert,
            to_device,
            to_supernode,
            reply_supernode,
            answer,
            ephemeral,
            sealed,
        } = message
        else {
            panic!("not sealed: {message:?}");
        };
        let header = SealedHeader {
            session: *session,
            from_cert: *from_cert,
            to_device: *to_device,
            to_supernode: *to_supernode,
            reply_supernode: *reply_supernode,
            answer: *answer,
        };
        (header, *ephemeral, sealed.to_vec())
    }

    #[test]
    fn the_recipient_opens_what_was_sealed_to_it_in_both_modes() {
        for mode in [CryptoMode::Full, CryptoMode::Modelled] {
            let (alice, bob, _) = devices(mode);
            let message = seal(
                &alice.keypair,
                header(&alice, &bob),
                &candidates(),
                &[1; 32],
            )
            .expect("seals");
            let (header, ephemeral, sealed) = parts(&message);
            assert_eq!(sealed.len(), SEALED_LEN);
            assert_eq!(
                open(&bob.keypair, &header, &ephemeral, &sealed),
                Ok(candidates())
            );
            let none = seal(&alice.keypair, header.clone(), &[], &[2; 32]).unwrap();
            let (header, ephemeral, sealed) = parts(&none);
            assert_eq!(sealed.len(), SEALED_LEN, "no address: same length");
            assert_eq!(open(&bob.keypair, &header, &ephemeral, &sealed), Ok(vec![]));
        }
    }

    #[test]
    fn the_sealed_bytes_do_not_contain_the_addresses() {
        let (alice, bob, _) = devices(CryptoMode::Full);
        let message = seal(
            &alice.keypair,
            header(&alice, &bob),
            &candidates(),
            &[1; 32],
        )
        .unwrap();
        let bytes = peerline_proto::encode(&message).unwrap();
        for candidate in candidates() {
            let ip = candidate.ip;
            assert!(
                !bytes.windows(4).any(|window| window == &ip[12..]),
                "{candidate:?} in clear"
            );
        }
    }

    #[test]
    fn a_changed_byte_or_field_or_another_recipient_does_not_open() {
        let (alice, bob, carol) = devices(CryptoMode::Full);
        let message = seal(
            &alice.keypair,
            header(&alice, &bob),
            &candidates(),
            &[1; 32],
        )
        .unwrap();
        let (header, ephemeral, sealed) = parts(&message);
        for index in [0, 1, PLAINTEXT_LEN - 1, PLAINTEXT_LEN, SEALED_LEN - 1] {
            let mut damaged = sealed.clone();
            damaged[index] ^= 0x40;
            assert_eq!(
                open(&bob.keypair, &header, &ephemeral, &damaged),
                Err(SealError::Tampered)
            );
        }
        let mut other_ephemeral = ephemeral;
        other_ephemeral[3] ^= 1;
        assert!(open(&bob.keypair, &header, &other_ephemeral, &sealed).is_err());
        let mut relay_swapped = header.clone();
        relay_swapped.reply_supernode = Addr::from_ipv4_u32(0x0a00_0063, 4433);
        assert_eq!(
            open(&bob.keypair, &relay_swapped, &ephemeral, &sealed),
            Err(SealError::Tampered)
        );
        let mut flipped = header.clone();
        flipped.answer = true;
        assert_eq!(
            open(&bob.keypair, &flipped, &ephemeral, &sealed),
            Err(SealError::Tampered)
        );
        // Carol, handed Bob's message re-addressed to her, cannot open it.
        let mut to_carol = header.clone();
        to_carol.to_device = carol.keypair.public();
        assert_eq!(
            open(&carol.keypair, &to_carol, &ephemeral, &sealed),
            Err(SealError::Tampered)
        );
        // Carol cannot seal in Alice's name: her blob under Alice's
        // certificate does not open at Bob's.
        let forged_header = SealedHeader {
            from_cert: carol.cert,
            ..header.clone()
        };
        let forged = seal(&carol.keypair, forged_header, &candidates(), &[3; 32]).unwrap();
        let (_, forged_ephemeral, forged_sealed) = parts(&forged);
        assert_eq!(
            open(&bob.keypair, &header, &forged_ephemeral, &forged_sealed),
            Err(SealError::Tampered)
        );
        assert_eq!(
            open(&bob.keypair, &header, &ephemeral, &sealed[..SEALED_LEN - 1]),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn a_small_order_ephemeral_is_refused() {
        let (alice, bob, _) = devices(CryptoMode::Full);
        let message = seal(
            &alice.keypair,
            header(&alice, &bob),
            &candidates(),
            &[1; 32],
        )
        .unwrap();
        let (header, _, sealed) = parts(&message);
        // The identity and the point of order 2 on the Montgomery curve.
        for low_order in [[0u8; 32], {
            let mut point = [0u8; 32];
            point[0] = 1;
            point
        }] {
            assert!(open(&bob.keypair, &header, &low_order, &sealed).is_err());
        }
    }

    #[test]
    fn ephemeral_keys_differ_between_messages() {
        let (alice, bob, _) = devices(CryptoMode::Full);
        let one = seal(
            &alice.keypair,
            header(&alice, &bob),
            &candidates(),
            &[1; 32],
        )
        .unwrap();
        let two = seal(
            &alice.keypair,
            header(&alice, &bob),
            &candidates(),
            &[2; 32],
        )
        .unwrap();
        assert_ne!(parts(&one).1, parts(&two).1);
        assert_ne!(parts(&one).2, parts(&two).2);
    }
}
