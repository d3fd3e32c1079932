//! The password-sealed key bundle: "username + password on a new device"
//! (issue #5, part 3).
//!
//! An account's root Ed25519 key lives on no device. It is sealed in a
//! [`KeyBundle`] that the directory replicates, and a new device unseals it
//! for a moment at login from the username (→ account key, through the name
//! record) and the password. A bundle fetched from one replica must not
//! allow *offline* password guessing, so the key that seals it depends on
//! more than the password:
//!
//! 1. **Threshold OPRF** (2HashDH over ristretto255). The account has an
//!    OPRF key `k` ([`oprf_key`], derived from the root seed and the bundle
//!    version, so a password change retires the old password), Shamir-shared
//!    `t` of `n` ([`deal_shares`], default 3 of 5) among holders that do not
//!    know each other's shares. The client blinds the password
//!    (`P = r · H(account ‖ password)`, [`blind`]), each holder answers
//!    `k_i · P` ([`evaluate`]) within a per-account guess budget
//!    ([`BundleHolder`]), and the client combines any `t` answers at 0,
//!    unblinds and hashes ([`finalize`]): `F = H(account ‖ password ‖ k·H(..))`.
//!    The holders never see the password; the client never learns `k`;
//!    every guess costs the cooperation of `t` holders.
//! 2. **Argon2id** over `F ‖ password` with the bundle's salt and cost
//!    ([`KdfParams`], production [`KDF_PARAMS_PRODUCTION`]): even a
//!    coalition of `t` holders (who can compute `F` for any guess) pays a
//!    memory-hard cost per guess.
//! 3. **XChaCha20-Poly1305** seals the 32-byte root seed, with the account
//!    key and the bundle version as associated data.
//! 4. **The root key signs the bundle** ([`seal_bundle`]), so a replica can
//!    check it before storing it ([`verify_bundle`]) and nobody else can
//!    replace it. [`open_bundle`] checks the signature first
//!    ([`BundleError::Tampered`]), then the bounds of the cost parameters,
//!    then opens the seal ([`BundleError::WrongPassword`]) and checks that the
//!    seed is the account's key.
//!
//! **Where the shares live.** Share `i` of an account is stored on the `r`
//! supernodes closest to [`share_key`]`(account, i)` = `blake3(account ‖ i)`,
//! so the holders of different indices are (with overwhelming probability)
//! different nodes, and a share survives the loss of `r - 1` of its
//! replicas; the directory's re-replication on churn hands it on like any
//! record. Every login (which unseals the root key, hence `k`) may re-deal
//! fresh shares of the same `k` under a higher epoch ([`deal`]), so the
//! shares follow the current holders without re-sealing the bundle; a
//! password change seals version `v + 1` and deals its new `k`, after which
//! honest holders can no longer answer for the old bundle and password. The
//! bundle itself lives at [`bundle_key`]`(account)`.
//!
//! **What this does not protect against.** `t` colluding holders of one
//! epoch learn `k` and can guess offline at Argon2id's cost; re-dealing does
//! not help against a coalition that kept its old shares (`k` is the same),
//! only a root-key rotation does. The `r` replicas of one index keep
//! separate budgets, so the online guessing rate per account is up to
//! `r` × [`GUESS_REFILL_PER_HOUR`]. Anyone may spend an account's budget, so
//! a stranger who keeps asking keeps that account's password logins
//! refused for as long as it asks (devices already logged in hold device
//! keys and are unaffected): the price of limiting guesses without knowing
//! who guesses; per-source budgets or a proof of work per request would
//! narrow it.
//! Holders do not prove their answers (no DLEQ proof yet): a lying holder
//! makes a login fail as a wrong password would, and the client must then
//! retry with another set of `t` holders.
//!
//! Pure functions and one sans-IO state machine: randomness and time come
//! from the caller; nothing here sends anything.

use crate::durable::{decode, encode, DirtyKeys, DurableChanges, DurableError, DurableTable};
use crate::identity::{domain as sign_domain, verify, CryptoMode, Keypair};
use crate::time::Instant;
use argon2::{Algorithm, Argon2, Version};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use peerline_proto::{
    to_signing_bytes, BlindedElement, Evaluation, KdfParams, KeyBundle, KeyBundleBody, NodeId,
    PublicKey, ShareDeal, ShareDealBody, Sharing, Signature, BUNDLE_NONCE_LEN, BUNDLE_SALT_LEN,
};
use rand_core::Rng;
use std::collections::BTreeMap;
use unicode_normalization::UnicodeNormalization;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Share indices an account's OPRF key is dealt to by default (`n`).
pub const BUNDLE_HOLDERS: u8 = 5;
/// Answers needed to open a bundle by default (`t`).
pub const BUNDLE_THRESHOLD: u8 = 3;
/// Most share indices a bundle may name (bounds a client's work and the
/// Lagrange combination).
pub const BUNDLE_HOLDERS_MAX: u8 = 16;

/// The production Argon2id cost: 64 MiB, 3 passes, 1 lane (RFC 9106's
/// second recommended option, with one lane: the client runs it on one
/// thread). `cargo run --release -p peerline-core --example bundle_cost`
/// measures what a seal or an open costs: on the development machine (2
/// shared cores, 2026-11-28) a median of ~150 ms each at load ~2 (min
/// ~142 ms), 155–170 ms at load ~4.5, once 335 ms while other builds
/// competed for memory bandwidth — against 0.4 ms for a whole OPRF round. So every offline
/// guess of a coalition of `t` holders costs ~0.15 s of a core and 64 MiB,
/// and a login pays it once.
pub const KDF_PARAMS_PRODUCTION: KdfParams = KdfParams {
    memory_kib: 64 * 1024,
    iterations: 3,
    parallelism: 1,
};

/// The cheapest Argon2id the crate accepts (8 KiB, 1 pass): **no
/// protection at all**, for tests and the simulator, which exercise the
/// code, not the cost. Never seal a real account's bundle with it.
pub const KDF_PARAMS_SIMULATION: KdfParams = KdfParams {
    memory_kib: 8,
    iterations: 1,
    parallelism: 1,
};

/// Largest Argon2id memory a bundle may ask for (1 GiB): a bundle comes
/// from the network, and a larger one is refused before it runs.
pub const KDF_MEMORY_KIB_MAX: u32 = 1024 * 1024;
/// Most Argon2id passes a bundle may ask for.
pub const KDF_ITERATIONS_MAX: u32 = 16;
/// Most Argon2id lanes a bundle may ask for.
pub const KDF_PARALLELISM_MAX: u32 = 16;

/// A holder's guess budget per account: this many evaluations at once...
pub const GUESS_BURST: u64 = 5;
/// ...refilled at this rate (one every 6 minutes).
pub const GUESS_REFILL_PER_HOUR: u64 = 10;
const GUESS_REFILL_INTERVAL_MS: u64 = 3_600_000 / GUESS_REFILL_PER_HOUR;

/// Most accounts whose shares one holder keeps (~150 bytes each: ~30 MiB).
/// With 5 indices on 3 replicas each, a supernode holds 15 × accounts /
/// supernodes shares: enough for 33M accounts on 2,500 supernodes.
pub const HELD_SHARES_MAX: usize = 200_000;

/// Domain separation of every hash in this module (BLAKE3 `derive_key`
/// contexts) and of the AEAD's associated data. The two root-key signatures
/// have theirs in `identity::domain` with every other signature's.
mod context {
    pub const OPRF_KEY: &str = "peerline v1 oprf key";
    pub const HASH_TO_GROUP: &str = "peerline v1 oprf hash to group";
    pub const OPRF_OUTPUT: &str = "peerline v1 oprf output";
    pub const SHARE_KEY: &str = "peerline v1 bundle share key";
    pub const BUNDLE_KEY: &str = "peerline v1 bundle key";
    pub const SEAL_AD: &[u8] = b"peerline/v1/bundle-seal";
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the key bundle has been tampered with: its signature does not verify")]
    Tampered,
    #[error("wrong password")]
    WrongPassword,
    #[error("the key bundle holds a key that is not its account's")]
    KeyMismatch,
    #[error(
        "key-stretching parameters out of bounds ({memory_kib} KiB, {iterations} passes, \
         {parallelism} lanes; at most {KDF_MEMORY_KIB_MAX} KiB, {KDF_ITERATIONS_MAX} passes, \
         {KDF_PARALLELISM_MAX} lanes)"
    )]
    KdfParams {
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
    },
    #[error("a threshold of {threshold} of {holders} holders is not possible (1 ≤ t ≤ n ≤ {BUNDLE_HOLDERS_MAX})")]
    Sharing { threshold: u8, holders: u8 },
    #[error("the root key has no secret (modelled crypto cannot seal a key bundle)")]
    NoSecret,
    #[error("not a valid ristretto255 element")]
    InvalidElement,
    #[error("share index {index} is not in 1..={BUNDLE_HOLDERS_MAX}")]
    BadIndex { index: u8 },
    #[error("share index {index} answered twice")]
    DuplicateIndex { index: u8 },
    #[error("no evaluations to combine")]
    NoEvaluations,
}

// ---------------------------------------------------------------------------
// Secrets handed across the node's API
// ---------------------------------------------------------------------------

/// An account's 32-byte root seed, unsealed from its bundle: wiped when
/// dropped, never printed. `Keypair::from_seed(CryptoMode::Full, *seed.expose())`
/// is the root key.
#[derive(Clone, PartialEq, Eq)]
pub struct RootSeed(Zeroizing<[u8; 32]>);

impl RootSeed {
    pub fn new(seed: [u8; 32]) -> RootSeed {
        RootSeed(Zeroizing::new(seed))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for RootSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("RootSeed(<secret>)")
    }
}

/// A random number generator for secrets (blinding factors, share
/// polynomials) from 32 bytes of the caller's entropy: a BLAKE3 XOF keyed
/// by them. The node's own RNG is a PCG seeded with 64 bits — fine for
/// jitter, predictable for secrets — so the driver hands in fresh bytes
/// from its operating system's generator for each login.
pub struct SecretRng {
    reader: blake3::OutputReader,
}

impl SecretRng {
    pub fn new(entropy: &[u8; 32]) -> SecretRng {
        let hasher = blake3::Hasher::new_keyed(entropy);
        SecretRng {
            reader: hasher.finalize_xof(),
        }
    }
}

impl std::fmt::Debug for SecretRng {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("SecretRng(<secret>)")
    }
}

impl rand_core::TryRng for SecretRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0u8; 4];
        self.reader.fill(&mut bytes);
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0u8; 8];
        self.reader.fill(&mut bytes);
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.reader.fill(dst);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SecretRng {}

// ---------------------------------------------------------------------------
// Scalars, points, hashes
// ---------------------------------------------------------------------------

/// A uniformly random non-zero scalar from 64 bytes of the injected RNG
/// (curve25519-dalek's own `Scalar::random` needs a `CryptoRng`, which the
/// simulator's seeded RNG is not).
fn random_scalar(rng: &mut impl Rng) -> Scalar {
    let mut wide = Zeroizing::new([0u8; 64]);
    // A zero scalar has probability 2^-252; four zeros in a row mean the RNG is broken.
    for _ in 0..4 {
        rng.fill_bytes(&mut wide[..]);
        let scalar = Scalar::from_bytes_mod_order_wide(&wide);
        if scalar != Scalar::ZERO {
            return scalar;
        }
    }
    panic!("the random number generator returns only zeros");
}

fn decode_point(bytes: &[u8; 32]) -> Result<RistrettoPoint, BundleError> {
    let point = CompressedRistretto(*bytes)
        .decompress()
        .ok_or(BundleError::InvalidElement)?;
    if point == RistrettoPoint::identity() {
        return Err(BundleError::InvalidElement);
    }
    Ok(point)
}

/// Passwords are compared as NFC-normalized UTF-8 (RFC 8265's
/// OpaqueString keeps case and width but normalizes composition), so "é"
/// typed as one or two code points is the same password on every device.
fn password_bytes(password: &str) -> Zeroizing<String> {
    Zeroizing::new(password.nfc().collect())
}

/// `H(account ‖ password)`: 64 bytes of a domain-separated BLAKE3 XOF,
/// mapped to ristretto255 with the Elligator map (`from_uniform_bytes`,
/// RFC 9496's hash-to-group).
fn hash_to_group(account_key: &PublicKey, password: &[u8]) -> RistrettoPoint {
    let mut hasher = blake3::Hasher::new_derive_key(context::HASH_TO_GROUP);
    hasher.update(&account_key.0);
    hasher.update(password);
    let mut wide = Zeroizing::new([0u8; 64]);
    hasher.finalize_xof().fill(&mut wide[..]);
    RistrettoPoint::from_uniform_bytes(&wide)
}

fn oprf_output(account_key: &PublicKey, password: &[u8], unblinded: &RistrettoPoint) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(context::OPRF_OUTPUT);
    hasher.update(&account_key.0);
    hasher.update(&(password.len() as u64).to_le_bytes());
    hasher.update(password);
    hasher.update(unblinded.compress().as_bytes());
    *hasher.finalize().as_bytes()
}

// ---------------------------------------------------------------------------
// The OPRF key and its shares
// ---------------------------------------------------------------------------

/// The OPRF key of bundle `version`, derived from the root seed: whoever
/// unseals the root key (any later login) can re-deal shares of the same
/// key, and the bundle need not be re-sealed when the holders change.
///
/// *Changed from the first design* (`oprf_key(root_seed)` alone): with one
/// key for every version, a password change did not retire the old
/// password — anyone who had fetched the old bundle (any replica, any
/// time) could still open it online through the holders with the old,
/// perhaps leaked, password. With the version in the key, the re-deal that
/// goes with a new version leaves honest holders unable to answer for the
/// old one.
pub fn oprf_key(root_seed: &[u8; 32], version: u64) -> Scalar {
    let mut hasher = blake3::Hasher::new_derive_key(context::OPRF_KEY);
    hasher.update(root_seed);
    hasher.update(&version.to_le_bytes());
    let mut wide = Zeroizing::new([0u8; 64]);
    hasher.finalize_xof().fill(&mut wide[..]);
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// One Shamir share of an OPRF key: the polynomial's value at `index`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct OprfShare {
    pub index: u8,
    pub scalar: Scalar,
}

impl std::fmt::Debug for OprfShare {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "OprfShare({}, <secret>)", self.index)
    }
}

fn check_sharing(sharing: Sharing) -> Result<(), BundleError> {
    let Sharing { threshold, holders } = sharing;
    if threshold == 0 || threshold > holders || holders > BUNDLE_HOLDERS_MAX {
        return Err(BundleError::Sharing { threshold, holders });
    }
    Ok(())
}

/// Shamir-shares `key` among `sharing.holders` indices (1..=n) so that any
/// `sharing.threshold` of them determine it and fewer reveal nothing: a
/// random polynomial of degree `t - 1` over the scalar field with `key` at 0.
pub fn deal_shares(
    key: &Scalar,
    sharing: Sharing,
    rng: &mut impl Rng,
) -> Result<Vec<OprfShare>, BundleError> {
    check_sharing(sharing)?;
    let mut coefficients: Zeroizing<Vec<Scalar>> = Zeroizing::new(vec![*key]);
    for _ in 1..sharing.threshold {
        coefficients.push(random_scalar(rng));
    }
    let shares = (1..=sharing.holders)
        .map(|index| {
            let x = Scalar::from(u64::from(index));
            // Horner's rule from the highest coefficient down.
            let scalar = coefficients
                .iter()
                .rev()
                .fold(Scalar::ZERO, |acc, coefficient| acc * x + coefficient);
            OprfShare { index, scalar }
        })
        .collect();
    Ok(shares)
}

/// The Lagrange coefficient of `index` for interpolating at 0 over `indices`.
fn lagrange_at_zero(index: u8, indices: &[u8]) -> Scalar {
    let x_i = Scalar::from(u64::from(index));
    let mut numerator = Scalar::ONE;
    let mut denominator = Scalar::ONE;
    for &other in indices.iter().filter(|&&other| other != index) {
        let x_j = Scalar::from(u64::from(other));
        numerator *= x_j;
        denominator *= x_j - x_i;
    }
    debug_assert!(denominator != Scalar::ZERO, "indices are distinct");
    numerator * denominator.invert()
}

// ---------------------------------------------------------------------------
// The OPRF protocol
// ---------------------------------------------------------------------------

/// The client's secret blinding factor for one login attempt.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Blinding {
    scalar: Scalar,
}

impl std::fmt::Debug for Blinding {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Blinding(<secret>)")
    }
}

/// Client, step 1: blind the password. `P = r · H(account ‖ password)`
/// looks uniformly random to the holders, whatever the password.
pub fn blind(
    password: &str,
    account_key: &PublicKey,
    rng: &mut impl Rng,
) -> (Blinding, BlindedElement) {
    let password = password_bytes(password);
    let scalar = random_scalar(rng);
    let element = (scalar * hash_to_group(account_key, password.as_bytes())).compress();
    (Blinding { scalar }, BlindedElement(element.to_bytes()))
}

/// Holder: `k_i · P`. Refuses bytes that are not a ristretto255 point, and
/// the identity (which would answer the identity whatever the share).
pub fn evaluate(share: &OprfShare, blinded: &BlindedElement) -> Result<Evaluation, BundleError> {
    let point = decode_point(&blinded.0)?;
    Ok(Evaluation((share.scalar * point).compress().to_bytes()))
}

/// Client, step 2: combine the holders' answers (share index and
/// evaluation) at 0, unblind and hash. Exactly `t` honest answers with
/// distinct indices give the true output (more honest ones too); fewer give
/// an unrelated value, which does not open the bundle.
pub fn finalize(
    blinding: &Blinding,
    password: &str,
    account_key: &PublicKey,
    evaluations: &[(u8, Evaluation)],
) -> Result<[u8; 32], BundleError> {
    if evaluations.is_empty() {
        return Err(BundleError::NoEvaluations);
    }
    // Distinct indices in 1..=BUNDLE_HOLDERS_MAX: the loop stops at the
    // 17th answer at the latest.
    let mut indices = Vec::with_capacity(evaluations.len());
    for &(index, _) in evaluations {
        if index == 0 || index > BUNDLE_HOLDERS_MAX {
            return Err(BundleError::BadIndex { index });
        }
        if indices.contains(&index) {
            return Err(BundleError::DuplicateIndex { index });
        }
        indices.push(index);
    }
    let mut combined = RistrettoPoint::identity();
    for (index, evaluation) in evaluations {
        let point = decode_point(&evaluation.0)?;
        combined += lagrange_at_zero(*index, &indices) * point;
    }
    let unblinded = blinding.scalar.invert() * combined;
    let password = password_bytes(password);
    Ok(oprf_output(account_key, password.as_bytes(), &unblinded))
}

/// The OPRF output computed with the whole key, as a device that holds the
/// root key does when it seals a bundle (account creation, password change).
pub fn oprf_output_with_key(key: &Scalar, password: &str, account_key: &PublicKey) -> [u8; 32] {
    let password = password_bytes(password);
    let point = key * hash_to_group(account_key, password.as_bytes());
    oprf_output(account_key, password.as_bytes(), &point)
}

// ---------------------------------------------------------------------------
// Sealing and opening the bundle
// ---------------------------------------------------------------------------

/// Checks a bundle's cost parameters before anything runs them.
pub fn check_kdf_params(params: &KdfParams) -> Result<(), BundleError> {
    let KdfParams {
        memory_kib,
        iterations,
        parallelism,
    } = *params;
    let in_bounds = (1..=KDF_PARALLELISM_MAX).contains(&parallelism)
        && (1..=KDF_ITERATIONS_MAX).contains(&iterations)
        && memory_kib <= KDF_MEMORY_KIB_MAX
        && memory_kib >= 8 * parallelism;
    if !in_bounds {
        return Err(BundleError::KdfParams {
            memory_kib,
            iterations,
            parallelism,
        });
    }
    Ok(())
}

/// Argon2id over `oprf_output ‖ password`, salted: the sealing key.
fn stretch(
    oprf_output: &[u8; 32],
    password: &str,
    params: &KdfParams,
    salt: &[u8; BUNDLE_SALT_LEN],
) -> Result<Zeroizing<[u8; 32]>, BundleError> {
    check_kdf_params(params)?;
    let bounds_error = BundleError::KdfParams {
        memory_kib: params.memory_kib,
        iterations: params.iterations,
        parallelism: params.parallelism,
    };
    let argon_params = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|_| bounds_error)?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
    let password = password_bytes(password);
    let mut input = Zeroizing::new(Vec::with_capacity(32 + password.len()));
    input.extend_from_slice(oprf_output);
    input.extend_from_slice(password.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(&input, salt, &mut key[..])
        .map_err(|_| bounds_error)?;
    Ok(key)
}

fn seal_associated_data(account_key: &PublicKey, version: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(context::SEAL_AD.len() + 40);
    data.extend_from_slice(context::SEAL_AD);
    data.extend_from_slice(&account_key.0);
    data.extend_from_slice(&version.to_le_bytes());
    data
}

/// Seals `root`'s seed under the password and the OPRF output (from
/// [`finalize`] or [`oprf_output_with_key`]), with Argon2id at `kdf`, and
/// signs the bundle with `root`. A password change seals again with
/// `version + 1`.
pub fn seal_bundle(
    root: &Keypair,
    password: &str,
    oprf_output: &[u8; 32],
    kdf: KdfParams,
    sharing: Sharing,
    version: u64,
    rng: &mut impl Rng,
) -> Result<KeyBundle, BundleError> {
    check_sharing(sharing)?;
    let seed = Zeroizing::new(root.secret_seed().ok_or(BundleError::NoSecret)?);
    let mut salt = [0u8; BUNDLE_SALT_LEN];
    rng.fill_bytes(&mut salt);
    let mut nonce = [0u8; BUNDLE_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let key = stretch(oprf_output, password, &kdf, &salt)?;
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let mut sealed_seed = *seed;
    let tag = cipher
        .encrypt_inout_detached(
            &XNonce::from(nonce),
            &seal_associated_data(&root.public(), version),
            sealed_seed.as_mut_slice().into(),
        )
        .expect("a 32-byte message always encrypts");
    let body = KeyBundleBody {
        account_key: root.public(),
        version,
        sharing,
        kdf,
        salt,
        nonce,
        sealed_seed,
        tag: tag.into(),
    };
    let signature = root.sign(sign_domain::KEY_BUNDLE, &to_signing_bytes(&body));
    Ok(KeyBundle { body, signature })
}

/// What a replica checks before it stores a bundle: the root key's
/// signature, the sharing and the cost bounds. No password needed.
pub fn verify_bundle(mode: CryptoMode, bundle: &KeyBundle) -> Result<(), BundleError> {
    verify(
        mode,
        &bundle.body.account_key,
        sign_domain::KEY_BUNDLE,
        &to_signing_bytes(&bundle.body),
        &bundle.signature,
    )
    .map_err(|_| BundleError::Tampered)?;
    check_sharing(bundle.body.sharing)?;
    check_kdf_params(&bundle.body.kdf)
}

/// Opens a bundle: the signature first (a changed byte anywhere is
/// [`BundleError::Tampered`]), then the cost bounds, then Argon2id and the
/// seal ([`BundleError::WrongPassword`]), then the seed must be the
/// account's key. The root key is real Ed25519 (modelled keys have no seed).
pub fn open_bundle(
    bundle: &KeyBundle,
    password: &str,
    oprf_output: &[u8; 32],
) -> Result<Keypair, BundleError> {
    verify_bundle(CryptoMode::Full, bundle)?;
    let body = &bundle.body;
    let key = stretch(oprf_output, password, &body.kdf, &body.salt)?;
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let mut seed = Zeroizing::new(body.sealed_seed);
    cipher
        .decrypt_inout_detached(
            &XNonce::from(body.nonce),
            &seal_associated_data(&body.account_key, body.version),
            seed.as_mut_slice().into(),
            &body.tag.into(),
        )
        .map_err(|_| BundleError::WrongPassword)?;
    let root = Keypair::from_seed(CryptoMode::Full, *seed);
    if root.public() != body.account_key {
        return Err(BundleError::KeyMismatch);
    }
    Ok(root)
}

/// Of two valid bundles for one account, the one a replica keeps.
pub fn newer_bundle<'a>(held: &'a KeyBundle, offered: &'a KeyBundle) -> &'a KeyBundle {
    debug_assert_eq!(held.body.account_key, offered.body.account_key);
    if offered.body.version > held.body.version {
        offered
    } else {
        held
    }
}

// ---------------------------------------------------------------------------
// Where shares and bundles live in the directory
// ---------------------------------------------------------------------------

/// Where share `index` of `account` lives: its `r` replicas are the
/// supernodes closest to this key. Each index hashes to an unrelated point,
/// so different indices land on different nodes.
pub fn share_key(account: &PublicKey, index: u8) -> NodeId {
    let mut hasher = blake3::Hasher::new_derive_key(context::SHARE_KEY);
    hasher.update(&account.0);
    hasher.update(&[index]);
    NodeId(*hasher.finalize().as_bytes())
}

/// Where an account's key bundle lives in the directory.
pub fn bundle_key(account: &PublicKey) -> NodeId {
    let mut hasher = blake3::Hasher::new_derive_key(context::BUNDLE_KEY);
    hasher.update(&account.0);
    NodeId(*hasher.finalize().as_bytes())
}

// ---------------------------------------------------------------------------
// Dealing shares to holders
// ---------------------------------------------------------------------------

fn deal_signing_bytes(body: &ShareDealBody) -> Vec<u8> {
    to_signing_bytes(body)
}

/// The root key deals fresh shares of the OPRF key of bundle
/// `bundle_version` for `epoch`, one signed [`ShareDeal`] per index (index
/// `i` goes to the holders of [`share_key`]`(account, i)`, over an encrypted
/// connection only). A password change seals version `v + 1` and deals its
/// key under a higher epoch; a login may re-deal the current version's key
/// under a higher epoch to follow the holders. The epoch only has to grow:
/// the dealing device's wall clock in ms will do, and a holder that holds a
/// higher one says so ([`HolderError::StaleEpoch`]).
pub fn deal(
    root: &Keypair,
    bundle_version: u64,
    epoch: u64,
    sharing: Sharing,
    rng: &mut impl Rng,
) -> Result<Vec<ShareDeal>, BundleError> {
    let seed = Zeroizing::new(root.secret_seed().ok_or(BundleError::NoSecret)?);
    let mut key = oprf_key(&seed, bundle_version);
    let shares = deal_shares(&key, sharing, rng);
    key.zeroize();
    let deals = shares?
        .iter()
        .map(|share| {
            let body = ShareDealBody {
                account_key: root.public(),
                bundle_version,
                epoch,
                index: share.index,
                commitment: share_commitment(&share.scalar),
            };
            let signature = root.sign(sign_domain::SHARE_DEAL, &deal_signing_bytes(&body));
            ShareDeal {
                body,
                signature,
                share: share.scalar.to_bytes(),
            }
        })
        .collect();
    Ok(deals)
}

/// A share's public commitment `share · B`: binds the signed deal to the
/// share without revealing it (and is the public key a later verifiable
/// OPRF would prove answers against).
fn share_commitment(share: &Scalar) -> [u8; 32] {
    (share * RISTRETTO_BASEPOINT_TABLE).compress().to_bytes()
}

// ---------------------------------------------------------------------------
// The holder
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum HolderError {
    #[error("no share held for this account")]
    UnknownAccount,
    #[error("too many guesses for this account; retry in {retry_after_ms} ms")]
    Refused { retry_after_ms: u64 },
    #[error("holding shares for {accounts_max} accounts already; no room for another")]
    Full { accounts_max: usize },
    #[error("share deal of epoch {offered} is not newer than the held share (epoch {held}, or a newer bundle)")]
    StaleEpoch { held: u64, offered: u64 },
    #[error("share deal not signed by the account's root key")]
    BadSignature,
    #[error("share deal is malformed: index out of range or share not matching its commitment")]
    BadShare,
    #[error("not a valid ristretto255 element")]
    InvalidElement,
}

/// A holder's answer to one evaluation request. The bundle version and the
/// epoch go back to the client, which combines only answers for the
/// bundle's version and of one epoch (shares of different deals do not
/// combine).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HolderAnswer {
    pub index: u8,
    pub bundle_version: u64,
    pub epoch: u64,
    pub evaluation: Evaluation,
}

/// A per-account guess budget: `GUESS_BURST` evaluations, one more every
/// `GUESS_REFILL_INTERVAL_MS`. (`overload::TokenBucket` counts whole
/// tokens per second, too coarse for ten per hour.)
#[derive(Clone, Debug)]
struct GuessBudget {
    tokens: u64,
    /// When the next token is due (meaningful while below the burst).
    next_refill: Instant,
}

impl GuessBudget {
    fn full(now: Instant) -> GuessBudget {
        GuessBudget {
            tokens: GUESS_BURST,
            next_refill: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= GUESS_BURST || now < self.next_refill {
            return;
        }
        let elapsed_ms = now.since_ms(self.next_refill);
        let due = 1 + elapsed_ms / GUESS_REFILL_INTERVAL_MS;
        self.tokens = (self.tokens + due).min(GUESS_BURST);
        self.next_refill = self.next_refill.add_ms(due * GUESS_REFILL_INTERVAL_MS);
    }

    /// Takes one guess, or says in how many ms the next one is allowed.
    fn take(&mut self, now: Instant) -> Result<(), u64> {
        self.refill(now);
        if self.tokens == 0 {
            // Rounded up: a retry after the named wait finds the token there.
            return Err(self.next_refill.since_us(now).div_ceil(1_000).max(1));
        }
        if self.tokens == GUESS_BURST {
            self.next_refill = now.add_ms(GUESS_REFILL_INTERVAL_MS);
        }
        self.tokens -= 1;
        Ok(())
    }
}

struct HeldShare {
    share: OprfShare,
    bundle_version: u64,
    epoch: u64,
    /// The deal's signed part, kept to hand the share on to the other
    /// holders of its index ([`BundleHolder::deal`]).
    body: ShareDealBody,
    signature: Signature,
    budget: GuessBudget,
}

/// A supernode's side: the OPRF shares it holds, one per account, each with
/// its guess budget. Sans-IO: the driver hands in deals and evaluation
/// requests with the time, and sends the answers.
pub struct BundleHolder {
    mode: CryptoMode,
    accounts_max: usize,
    /// A B-tree, not a hash map: account keys are chosen by strangers.
    shares: BTreeMap<PublicKey, HeldShare>,
    /// Shares taken or budgets spent since the driver last took them
    /// (`durable.rs`; only once a driver persists).
    dirty: DirtyKeys,
}

/// A held share as stored: its signed deal (with the secret share: the
/// store is as private as the device key) and its guess budget.
#[derive(serde::Serialize, serde::Deserialize)]
struct ShareRow {
    deal: ShareDeal,
    tokens: u64,
    /// From when the row was taken to the next token (0 when full).
    refill_wait_ms: u64,
}

impl std::fmt::Debug for BundleHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "BundleHolder({} accounts)", self.shares.len())
    }
}

impl BundleHolder {
    /// A holder for at most `accounts_max` accounts ([`HELD_SHARES_MAX`] in
    /// production), checking signatures in `mode`.
    pub fn new(mode: CryptoMode, accounts_max: usize) -> BundleHolder {
        BundleHolder {
            mode,
            accounts_max,
            shares: BTreeMap::new(),
            dirty: DirtyKeys::default(),
        }
    }

    /// From now on, remember what changed for [`BundleHolder::take_changes`].
    pub(crate) fn track_changes(&mut self) {
        self.dirty.switch_on();
    }

    /// The shares taken and budgets spent since the last call, as rows;
    /// budget waits are measured from `now`.
    pub(crate) fn take_changes(&mut self, now: Instant, out: &mut DurableChanges) {
        for key in self.dirty.take() {
            let account = PublicKey(key);
            let value = self.shares.get(&account).map(|held| {
                let mut budget = held.budget.clone();
                budget.refill(now);
                let refill_wait_ms = match budget.tokens >= GUESS_BURST {
                    true => 0,
                    false => budget.next_refill.since_us(now).div_ceil(1_000),
                };
                encode(&ShareRow {
                    deal: ShareDeal {
                        body: held.body,
                        signature: held.signature,
                        share: held.share.scalar.to_bytes(),
                    },
                    tokens: budget.tokens,
                    refill_wait_ms,
                })
            });
            out.push(DurableTable::OprfShares, key, value);
        }
    }

    /// Takes back a stored share, checked against its commitment, with its
    /// budget as it was (the time down refills nothing).
    pub(crate) fn restore_share(
        &mut self,
        now: Instant,
        key: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(), DurableError> {
        let table = DurableTable::OprfShares;
        let row: ShareRow = decode(table, key, bytes)?;
        let account = PublicKey(*key);
        if row.deal.body.account_key != account {
            return Err(DurableError::new(
                table,
                key,
                "is a share of another account",
            ));
        }
        let share = verified_share(&row.deal).map_err(|_| {
            DurableError::new(
                table,
                key,
                "holds a share that does not match its commitment",
            )
        })?;
        if row.tokens > GUESS_BURST || row.refill_wait_ms > GUESS_REFILL_INTERVAL_MS {
            return Err(DurableError::new(
                table,
                key,
                "holds a guess budget out of range",
            ));
        }
        if self.shares.len() >= self.accounts_max && !self.shares.contains_key(&account) {
            return Err(DurableError::new(table, key, "is one row too many"));
        }
        let body = row.deal.body;
        self.shares.insert(
            account,
            HeldShare {
                share,
                bundle_version: body.bundle_version,
                epoch: body.epoch,
                body,
                signature: row.deal.signature,
                budget: GuessBudget {
                    tokens: row.tokens,
                    next_refill: now.add_ms(row.refill_wait_ms),
                },
            },
        );
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.shares.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    /// The epoch of the share held for `account`, if any.
    pub fn epoch(&self, account: &PublicKey) -> Option<u64> {
        self.shares.get(account).map(|held| held.epoch)
    }

    /// Whether a deal of (`bundle_version`, `epoch`) would replace the
    /// share held for `account`: a deal of a newer bundle (a password
    /// change) always does, one of the same bundle only with a higher
    /// epoch. True when nothing is held.
    pub fn would_take(&self, account: &PublicKey, bundle_version: u64, epoch: u64) -> bool {
        self.shares
            .get(account)
            .is_none_or(|held| (bundle_version, epoch) > (held.bundle_version, held.epoch))
    }

    /// The index of the share held for `account`, if any.
    pub fn index(&self, account: &PublicKey) -> Option<u8> {
        self.shares.get(account).map(|held| held.share.index)
    }

    /// The accounts this holder holds a share of, in key order.
    pub fn accounts(&self) -> impl Iterator<Item = &PublicKey> {
        self.shares.keys()
    }

    /// The signed deal of the share held for `account`, to hand to another
    /// holder of its index — over an encrypted connection only.
    pub fn deal(&self, account: &PublicKey) -> Option<ShareDeal> {
        self.shares.get(account).map(|held| ShareDeal {
            body: held.body,
            signature: held.signature,
            share: held.share.scalar.to_bytes(),
        })
    }

    /// Takes a share deal: the root key's signature, an index in range, the
    /// share matching its commitment, and an epoch above the held one. A
    /// replaced share keeps its account's guess budget.
    pub fn accept_deal(&mut self, now: Instant, deal: &ShareDeal) -> Result<(), HolderError> {
        let body = &deal.body;
        let held_epoch = self.epoch(&body.account_key);
        if let Some(held) = held_epoch {
            if !self.would_take(&body.account_key, body.bundle_version, body.epoch) {
                return Err(HolderError::StaleEpoch {
                    held,
                    offered: body.epoch,
                });
            }
        } else if self.shares.len() >= self.accounts_max {
            return Err(HolderError::Full {
                accounts_max: self.accounts_max,
            });
        }
        verify(
            self.mode,
            &body.account_key,
            sign_domain::SHARE_DEAL,
            &deal_signing_bytes(body),
            &deal.signature,
        )
        .map_err(|_| HolderError::BadSignature)?;
        let share = verified_share(deal)?;
        self.dirty.mark(body.account_key.0);
        match self.shares.get_mut(&body.account_key) {
            Some(held) => {
                held.share = share;
                held.bundle_version = body.bundle_version;
                held.epoch = body.epoch;
                held.body = *body;
                held.signature = deal.signature;
            }
            None => {
                self.shares.insert(
                    body.account_key,
                    HeldShare {
                        share,
                        bundle_version: body.bundle_version,
                        epoch: body.epoch,
                        body: *body,
                        signature: deal.signature,
                        budget: GuessBudget::full(now),
                    },
                );
            }
        }
        debug_assert!(self.shares.len() <= self.accounts_max);
        Ok(())
    }

    /// Answers one blinded element for `account` within its guess budget.
    /// Invalid elements are refused without spending the budget (they
    /// teach the asker nothing).
    pub fn evaluate(
        &mut self,
        now: Instant,
        account: &PublicKey,
        blinded: &BlindedElement,
    ) -> Result<HolderAnswer, HolderError> {
        let held = self
            .shares
            .get_mut(account)
            .ok_or(HolderError::UnknownAccount)?;
        let point = decode_point(&blinded.0).map_err(|_| HolderError::InvalidElement)?;
        held.budget
            .take(now)
            .map_err(|retry_after_ms| HolderError::Refused { retry_after_ms })?;
        self.dirty.mark(account.0);
        Ok(HolderAnswer {
            index: held.share.index,
            bundle_version: held.bundle_version,
            epoch: held.epoch,
            evaluation: Evaluation((held.share.scalar * point).compress().to_bytes()),
        })
    }
}

/// The share a deal carries, if its index is in range, it is a canonical
/// non-zero scalar and it matches the signed commitment.
fn verified_share(deal: &ShareDeal) -> Result<OprfShare, HolderError> {
    let index = deal.body.index;
    if index == 0 || index > BUNDLE_HOLDERS_MAX {
        return Err(HolderError::BadShare);
    }
    let scalar: Option<Scalar> = Scalar::from_canonical_bytes(deal.share).into();
    let scalar = scalar.ok_or(HolderError::BadShare)?;
    if scalar == Scalar::ZERO || share_commitment(&scalar) != deal.body.commitment {
        return Err(HolderError::BadShare);
    }
    Ok(OprfShare { index, scalar })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_core::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    const PASSWORD: &str = "correct horse battery staple";
    const NEW_PASSWORD: &str = "new password, longer";
    const KDF_TINY: KdfParams = KDF_PARAMS_SIMULATION;
    const SHARING: Sharing = Sharing {
        threshold: BUNDLE_THRESHOLD,
        holders: BUNDLE_HOLDERS,
    };

    fn rng() -> Pcg64Mcg {
        Pcg64Mcg::seed_from_u64(11)
    }

    struct Account {
        root: Keypair,
        key: Scalar,
        shares: Vec<OprfShare>,
        bundle: KeyBundle,
    }

    fn account(rng: &mut Pcg64Mcg) -> Account {
        let root = Keypair::generate(CryptoMode::Full, rng);
        let key = oprf_key(&root.secret_seed().unwrap(), 1);
        let shares = deal_shares(&key, SHARING, rng).unwrap();
        let output = oprf_output_with_key(&key, PASSWORD, &root.public());
        let bundle = seal_bundle(&root, PASSWORD, &output, KDF_TINY, SHARING, 1, rng).unwrap();
        Account {
            root,
            key,
            shares,
            bundle,
        }
    }

    /// The whole client side against the given shares: blind, one
    /// evaluation per share, finalize.
    fn login_output(
        password: &str,
        account_key: &PublicKey,
        shares: &[&OprfShare],
        rng: &mut Pcg64Mcg,
    ) -> [u8; 32] {
        let (blinding, blinded) = blind(password, account_key, rng);
        let evaluations: Vec<(u8, Evaluation)> = shares
            .iter()
            .map(|share| (share.index, evaluate(share, &blinded).unwrap()))
            .collect();
        finalize(&blinding, password, account_key, &evaluations).unwrap()
    }

    fn subsets(n: usize, size: usize) -> Vec<Vec<usize>> {
        (0u32..(1 << n))
            .filter(|mask| mask.count_ones() as usize == size)
            .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
            .collect()
    }

    #[test]
    fn any_threshold_of_the_holders_opens_the_bundle() {
        let mut rng = rng();
        let account = account(&mut rng);
        let account_key = account.root.public();
        let expected = oprf_output_with_key(&account.key, PASSWORD, &account_key);
        let triples = subsets(5, 3);
        assert_eq!(triples.len(), 10);
        for subset in triples.iter().chain(&subsets(5, 4)).chain(&subsets(5, 5)) {
            let shares: Vec<&OprfShare> = subset.iter().map(|&i| &account.shares[i]).collect();
            let output = login_output(PASSWORD, &account_key, &shares, &mut rng);
            assert_eq!(output, expected, "shares {subset:?}");
        }
        let output = login_output(
            PASSWORD,
            &account_key,
            &[&account.shares[4], &account.shares[0], &account.shares[2]],
            &mut rng,
        );
        let opened = open_bundle(&account.bundle, PASSWORD, &output).unwrap();
        assert_eq!(opened.public(), account_key);
        assert_eq!(opened.secret_seed(), account.root.secret_seed());
    }

    #[test]
    fn blinding_hides_the_password_and_changes_every_time() {
        let mut rng = rng();
        let account_key = PublicKey([7; 32]);
        let (_, first) = blind(PASSWORD, &account_key, &mut rng);
        let (_, second) = blind(PASSWORD, &account_key, &mut rng);
        assert_ne!(first, second);
    }

    #[test]
    fn wrong_password_is_refused() {
        let mut rng = rng();
        let account = account(&mut rng);
        let account_key = account.root.public();
        let shares: Vec<&OprfShare> = account.shares.iter().take(3).collect();
        let wrong = login_output(
            "correct horse battery stapl",
            &account_key,
            &shares,
            &mut rng,
        );
        assert_eq!(
            open_bundle(&account.bundle, "correct horse battery stapl", &wrong).unwrap_err(),
            BundleError::WrongPassword
        );
        // The right OPRF output with a wrong password in Argon2id fails too.
        let right = login_output(PASSWORD, &account_key, &shares, &mut rng);
        assert_eq!(
            open_bundle(&account.bundle, "Correct horse battery staple", &right).unwrap_err(),
            BundleError::WrongPassword
        );
        assert_eq!(BundleError::WrongPassword.to_string(), "wrong password");
    }

    #[test]
    fn composed_and_decomposed_accents_are_one_password() {
        let mut rng = rng();
        let root = Keypair::generate(CryptoMode::Full, &mut rng);
        let key = oprf_key(&root.secret_seed().unwrap(), 1);
        let composed = "caf\u{e9} au lait";
        let decomposed = "cafe\u{301} au lait";
        let output = oprf_output_with_key(&key, composed, &root.public());
        assert_eq!(
            output,
            oprf_output_with_key(&key, decomposed, &root.public())
        );
        let bundle = seal_bundle(&root, composed, &output, KDF_TINY, SHARING, 1, &mut rng).unwrap();
        open_bundle(&bundle, decomposed, &output).unwrap();
    }

    #[test]
    fn one_replica_short_of_the_threshold_cannot_open() {
        let mut rng = rng();
        let account = account(&mut rng);
        let account_key = account.root.public();
        let expected = oprf_output_with_key(&account.key, PASSWORD, &account_key);
        // With the right password, every pair of holders (t - 1) and every
        // single holder gives an output unrelated to the true one: a thief
        // with the bundle and t - 1 shares still cannot test guesses offline.
        for size in 1..usize::from(BUNDLE_THRESHOLD) {
            for subset in subsets(5, size) {
                let shares: Vec<&OprfShare> = subset.iter().map(|&i| &account.shares[i]).collect();
                let output = login_output(PASSWORD, &account_key, &shares, &mut rng);
                assert_ne!(output, expected, "shares {subset:?}");
                assert_eq!(
                    open_bundle(&account.bundle, PASSWORD, &output).unwrap_err(),
                    BundleError::WrongPassword,
                    "shares {subset:?}"
                );
            }
        }
    }

    /// A named change of one field of a bundle.
    type FieldChange = (&'static str, fn(&mut KeyBundle));

    /// Every field of the bundle, each changed in one byte.
    fn field_changes() -> Vec<FieldChange> {
        vec![
            ("account_key", |b| b.body.account_key.0[3] ^= 1),
            ("version", |b| b.body.version ^= 1),
            ("threshold", |b| b.body.sharing.threshold ^= 1),
            ("holders", |b| b.body.sharing.holders ^= 1),
            ("memory_kib", |b| b.body.kdf.memory_kib ^= 1),
            ("iterations", |b| b.body.kdf.iterations ^= 1),
            ("parallelism", |b| b.body.kdf.parallelism ^= 1),
            ("salt", |b| b.body.salt[0] ^= 1),
            ("nonce", |b| b.body.nonce[23] ^= 1),
            ("sealed_seed", |b| b.body.sealed_seed[31] ^= 1),
            ("tag", |b| b.body.tag[5] ^= 1),
            ("signature", |b| b.signature.0[10] ^= 1),
        ]
    }

    #[test]
    fn a_changed_byte_anywhere_is_tampering() {
        let mut rng = rng();
        let account = account(&mut rng);
        let output = oprf_output_with_key(&account.key, PASSWORD, &account.root.public());
        verify_bundle(CryptoMode::Full, &account.bundle).unwrap();
        for (field, change) in field_changes() {
            let mut bundle = account.bundle;
            change(&mut bundle);
            assert_eq!(
                open_bundle(&bundle, PASSWORD, &output).unwrap_err(),
                BundleError::Tampered,
                "{field}"
            );
            assert_eq!(
                verify_bundle(CryptoMode::Full, &bundle),
                Err(BundleError::Tampered)
            );
        }
        // Every single-bit change of the encoding that still decodes.
        let bytes = postcard::to_allocvec(&account.bundle).unwrap();
        for position in 0..bytes.len() * 8 {
            let mut changed = bytes.clone();
            changed[position / 8] ^= 1 << (position % 8);
            if let Ok(bundle) = postcard::from_bytes::<KeyBundle>(&changed) {
                assert_eq!(
                    open_bundle(&bundle, PASSWORD, &output).unwrap_err(),
                    BundleError::Tampered,
                    "bit {position}"
                );
            }
        }
        assert_eq!(
            BundleError::Tampered.to_string(),
            "the key bundle has been tampered with: its signature does not verify"
        );
    }

    #[test]
    fn a_bundle_signed_by_another_key_is_tampering() {
        let mut rng = rng();
        let victim = account(&mut rng);
        let thief = account(&mut rng);
        let mut bundle = thief.bundle;
        bundle.body.account_key = victim.root.public();
        bundle.signature = thief
            .root
            .sign(sign_domain::KEY_BUNDLE, &to_signing_bytes(&bundle.body));
        let output = oprf_output_with_key(&thief.key, PASSWORD, &thief.root.public());
        assert_eq!(
            open_bundle(&bundle, PASSWORD, &output).unwrap_err(),
            BundleError::Tampered
        );
    }

    #[test]
    fn a_password_change_retires_the_old_password() {
        let mut rng = rng();
        let root = Keypair::generate(CryptoMode::Full, &mut rng);
        let account_key = root.public();
        let seed = root.secret_seed().unwrap();
        let seal = |password: &str, version: u64, rng: &mut Pcg64Mcg| {
            let output = oprf_output_with_key(&oprf_key(&seed, version), password, &account_key);
            seal_bundle(&root, password, &output, KDF_TINY, SHARING, version, rng).unwrap()
        };
        let holders_for = |version: u64, epoch: u64, rng: &mut Pcg64Mcg| -> Vec<BundleHolder> {
            deal(&root, version, epoch, SHARING, rng)
                .unwrap()
                .iter()
                .map(|deal| {
                    let mut holder = BundleHolder::new(CryptoMode::Full, 4);
                    holder.accept_deal(Instant::ZERO, deal).unwrap();
                    holder
                })
                .collect()
        };
        // Through three holders, as a client does.
        let login = |holders: &mut [BundleHolder], password: &str, rng: &mut Pcg64Mcg| {
            let (blinding, blinded) = blind(password, &account_key, rng);
            let answers: Vec<(u8, Evaluation)> = holders[..3]
                .iter_mut()
                .map(|holder| {
                    let answer = holder
                        .evaluate(Instant::ZERO, &account_key, &blinded)
                        .unwrap();
                    (answer.index, answer.evaluation)
                })
                .collect();
            finalize(&blinding, password, &account_key, &answers).unwrap()
        };

        let old = seal(PASSWORD, 1, &mut rng);
        let mut holders = holders_for(1, 1, &mut rng);
        let output = login(&mut holders, PASSWORD, &mut rng);
        open_bundle(&old, PASSWORD, &output).unwrap();

        // The password changes: version 2, its own key, dealt under epoch 2.
        let new = seal(NEW_PASSWORD, 2, &mut rng);
        verify_bundle(CryptoMode::Full, &new).unwrap();
        assert_eq!(newer_bundle(&old, &new), &new);
        assert_eq!(newer_bundle(&new, &old), &new);
        for (holder, deal) in holders
            .iter_mut()
            .zip(deal(&root, 2, 2, SHARING, &mut rng).unwrap())
        {
            holder.accept_deal(Instant::ZERO, &deal).unwrap();
        }
        let output = login(&mut holders, NEW_PASSWORD, &mut rng);
        assert_eq!(
            open_bundle(&new, NEW_PASSWORD, &output).unwrap().public(),
            account_key
        );
        // Whoever kept the old bundle cannot open it with the old password
        // any more: the holders now answer with version 2's key.
        let stale = login(&mut holders, PASSWORD, &mut rng);
        assert_eq!(
            open_bundle(&old, PASSWORD, &stale).unwrap_err(),
            BundleError::WrongPassword
        );
        assert_eq!(
            open_bundle(&new, PASSWORD, &stale).unwrap_err(),
            BundleError::WrongPassword
        );
        let answer = holders[0]
            .evaluate(
                Instant::ZERO,
                &account_key,
                &blind(PASSWORD, &account_key, &mut rng).1,
            )
            .unwrap();
        assert_eq!((answer.bundle_version, answer.epoch), (2, 2));
    }

    #[test]
    fn absurd_kdf_params_are_refused_before_running() {
        let absurd = [
            KdfParams {
                memory_kib: KDF_MEMORY_KIB_MAX + 1,
                ..KDF_TINY
            },
            KdfParams {
                memory_kib: u32::MAX,
                ..KDF_TINY
            },
            KdfParams {
                iterations: KDF_ITERATIONS_MAX + 1,
                ..KDF_TINY
            },
            KdfParams {
                iterations: 0,
                ..KDF_TINY
            },
            KdfParams {
                parallelism: 0,
                ..KDF_TINY
            },
            KdfParams {
                parallelism: KDF_PARALLELISM_MAX + 1,
                memory_kib: 1024,
                ..KDF_TINY
            },
            KdfParams {
                memory_kib: 7,
                ..KDF_TINY
            },
            KdfParams {
                memory_kib: 31,
                parallelism: 4,
                ..KDF_TINY
            },
        ];
        let mut rng = rng();
        let account = account(&mut rng);
        let output = oprf_output_with_key(&account.key, PASSWORD, &account.root.public());
        check_kdf_params(&KDF_PARAMS_PRODUCTION).unwrap();
        for params in absurd {
            let error = BundleError::KdfParams {
                memory_kib: params.memory_kib,
                iterations: params.iterations,
                parallelism: params.parallelism,
            };
            assert_eq!(check_kdf_params(&params), Err(error));
            assert_eq!(
                seal_bundle(
                    &account.root,
                    PASSWORD,
                    &output,
                    params,
                    SHARING,
                    2,
                    &mut rng
                )
                .unwrap_err(),
                error
            );
            // Signed by the account itself (a buggy or hostile client): a
            // replica refuses to store it and a login refuses to run it
            // (4 TiB would abort the test if it ran).
            let mut bundle = account.bundle;
            bundle.body.kdf = params;
            bundle.signature = account
                .root
                .sign(sign_domain::KEY_BUNDLE, &to_signing_bytes(&bundle.body));
            assert_eq!(verify_bundle(CryptoMode::Full, &bundle), Err(error));
            assert_eq!(open_bundle(&bundle, PASSWORD, &output).unwrap_err(), error);
        }
    }

    #[test]
    fn impossible_sharings_are_refused() {
        let mut rng = rng();
        let key = random_scalar(&mut rng);
        for (threshold, holders) in [(0, 5), (6, 5), (3, BUNDLE_HOLDERS_MAX + 1), (0, 0)] {
            let sharing = Sharing { threshold, holders };
            assert_eq!(
                deal_shares(&key, sharing, &mut rng).unwrap_err(),
                BundleError::Sharing { threshold, holders }
            );
        }
        let shares = deal_shares(
            &key,
            Sharing {
                threshold: 1,
                holders: 1,
            },
            &mut rng,
        )
        .unwrap();
        assert_eq!(shares[0].scalar, key, "a 1-of-1 sharing is the key itself");
    }

    #[test]
    fn modelled_keys_cannot_seal_or_deal() {
        let mut rng = rng();
        let root = Keypair::generate(CryptoMode::Modelled, &mut rng);
        assert_eq!(
            seal_bundle(&root, PASSWORD, &[0; 32], KDF_TINY, SHARING, 1, &mut rng).unwrap_err(),
            BundleError::NoSecret
        );
        assert_eq!(
            deal(&root, 1, 1, SHARING, &mut rng).unwrap_err(),
            BundleError::NoSecret
        );
    }

    #[test]
    fn invalid_point_bytes_are_errors() {
        let mut rng = rng();
        let account = account(&mut rng);
        let account_key = account.root.public();
        let share = &account.shares[0];
        // Not a canonical encoding, and the identity (all zeros).
        for bytes in [[0xff; 32], [0; 32], {
            let mut b = [0; 32];
            b[0] = 1;
            b
        }] {
            assert_eq!(
                evaluate(share, &BlindedElement(bytes)),
                Err(BundleError::InvalidElement)
            );
            let (blinding, blinded) = blind(PASSWORD, &account_key, &mut rng);
            let good = evaluate(share, &blinded).unwrap();
            let evaluations = [(1, good), (2, Evaluation(bytes)), (3, good)];
            assert_eq!(
                finalize(&blinding, PASSWORD, &account_key, &evaluations),
                Err(BundleError::InvalidElement)
            );
        }
    }

    #[test]
    fn finalize_refuses_bad_and_repeated_indices() {
        let mut rng = rng();
        let account_key = PublicKey([3; 32]);
        let (blinding, blinded) = blind(PASSWORD, &account_key, &mut rng);
        let share = OprfShare {
            index: 1,
            scalar: random_scalar(&mut rng),
        };
        let evaluation = evaluate(&share, &blinded).unwrap();
        let finalize_with = |evaluations: &[(u8, Evaluation)]| {
            finalize(&blinding, PASSWORD, &account_key, evaluations)
        };
        assert_eq!(finalize_with(&[]), Err(BundleError::NoEvaluations));
        assert_eq!(
            finalize_with(&[(1, evaluation), (0, evaluation)]),
            Err(BundleError::BadIndex { index: 0 })
        );
        assert_eq!(
            finalize_with(&[(BUNDLE_HOLDERS_MAX + 1, evaluation)]),
            Err(BundleError::BadIndex {
                index: BUNDLE_HOLDERS_MAX + 1
            })
        );
        assert_eq!(
            finalize_with(&[(2, evaluation), (4, evaluation), (2, evaluation)]),
            Err(BundleError::DuplicateIndex { index: 2 })
        );
        let many: Vec<(u8, Evaluation)> = (1..=40).map(|i| (i, evaluation)).collect();
        assert_eq!(
            finalize_with(&many),
            Err(BundleError::BadIndex {
                index: BUNDLE_HOLDERS_MAX + 1
            })
        );
    }

    #[test]
    fn share_keys_differ_per_index_and_account() {
        let account = PublicKey([1; 32]);
        let keys: Vec<NodeId> = (1..=BUNDLE_HOLDERS)
            .map(|i| share_key(&account, i))
            .collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
            assert_ne!(*a, bundle_key(&account));
        }
        assert_ne!(share_key(&PublicKey([2; 32]), 1), keys[0]);
        assert_eq!(share_key(&account, 1), keys[0], "deterministic");
    }

    // -- the holder --------------------------------------------------------

    fn holder_with_deals(
        rng: &mut Pcg64Mcg,
        accounts_max: usize,
    ) -> (BundleHolder, Keypair, Vec<ShareDeal>) {
        let root = Keypair::generate(CryptoMode::Full, rng);
        let deals = deal(&root, 1, 1, SHARING, rng).unwrap();
        let mut holder = BundleHolder::new(CryptoMode::Full, accounts_max);
        holder.accept_deal(Instant::ZERO, &deals[0]).unwrap();
        (holder, root, deals)
    }

    #[test]
    fn holders_answer_and_the_client_opens_the_bundle() {
        let mut rng = rng();
        let root = Keypair::generate(CryptoMode::Full, &mut rng);
        let account_key = root.public();
        let key = oprf_key(&root.secret_seed().unwrap(), 1);
        let output = oprf_output_with_key(&key, PASSWORD, &account_key);
        let bundle = seal_bundle(&root, PASSWORD, &output, KDF_TINY, SHARING, 1, &mut rng).unwrap();
        let deals = deal(&root, 1, 7, SHARING, &mut rng).unwrap();
        assert_eq!(deals.len(), usize::from(BUNDLE_HOLDERS));
        let mut holders: Vec<BundleHolder> = deals
            .iter()
            .map(|deal| {
                let mut holder = BundleHolder::new(CryptoMode::Full, 4);
                holder.accept_deal(Instant::ZERO, deal).unwrap();
                holder
            })
            .collect();
        let (blinding, blinded) = blind(PASSWORD, &account_key, &mut rng);
        let answers: Vec<(u8, Evaluation)> = holders[1..4]
            .iter_mut()
            .map(|holder| {
                let answer = holder
                    .evaluate(Instant::ZERO, &account_key, &blinded)
                    .unwrap();
                assert_eq!(answer.epoch, 7);
                (answer.index, answer.evaluation)
            })
            .collect();
        let login = finalize(&blinding, PASSWORD, &account_key, &answers).unwrap();
        assert_eq!(login, output);
        assert_eq!(
            open_bundle(&bundle, PASSWORD, &login).unwrap().public(),
            account_key
        );
    }

    /// The rows one holder hands out at `at`, taken back by a fresh one
    /// started at `restart` (another process: its clock starts anew).
    fn restarted(holder: &mut BundleHolder, at: Instant, restart: Instant) -> BundleHolder {
        let mut changes = DurableChanges::default();
        holder.take_changes(at, &mut changes);
        let mut fresh = BundleHolder::new(CryptoMode::Full, 4);
        fresh.track_changes();
        for change in &changes.changes {
            assert_eq!(change.table, DurableTable::OprfShares);
            let bytes = change.value.as_ref().unwrap();
            fresh.restore_share(restart, &change.key, bytes).unwrap();
        }
        fresh
    }

    #[test]
    fn a_spent_guess_budget_survives_a_restart() {
        let mut rng = rng();
        let root = Keypair::generate(CryptoMode::Full, &mut rng);
        let deals = deal(&root, 1, 1, SHARING, &mut rng).unwrap();
        let mut holder = BundleHolder::new(CryptoMode::Full, 4);
        holder.track_changes();
        holder.accept_deal(Instant::ZERO, &deals[0]).unwrap();
        let account = root.public();
        let (_, blinded) = blind(PASSWORD, &account, &mut rng);
        let t0 = Instant::from_s(1_000);
        for guess in 0..GUESS_BURST {
            holder
                .evaluate(t0, &account, &blinded)
                .unwrap_or_else(|e| panic!("guess {guess}: {e}"));
        }
        // Restarted a minute later, in a process whose clock starts at 0.
        let at = t0.add_ms(60_000);
        let mut fresh = restarted(&mut holder, at, Instant::ZERO);
        assert_eq!(fresh.epoch(&account), Some(deals[0].body.epoch));
        let refused = fresh.evaluate(Instant::ZERO, &account, &blinded);
        let Err(HolderError::Refused { retry_after_ms }) = refused else {
            panic!("a restart gave the budget back: {refused:?}");
        };
        assert_eq!(retry_after_ms, GUESS_REFILL_INTERVAL_MS - 60_000);
        let refill = Instant::from_ms(GUESS_REFILL_INTERVAL_MS - 60_000);
        assert!(fresh.evaluate(refill, &account, &blinded).is_ok());
        assert!(fresh.evaluate(refill, &account, &blinded).is_err());
        // The answer is the same share's.
        let mut again = restarted(&mut fresh, refill, Instant::ZERO);
        assert_eq!(again.deal(&account), holder.deal(&account));
        assert!(again.evaluate(Instant::ZERO, &account, &blinded).is_err());
    }

    #[test]
    fn a_damaged_share_row_is_an_error_never_a_panic() {
        let mut rng = rng();
        let (mut holder, root, _) = holder_with_deals(&mut rng, 4);
        holder.track_changes();
        let account = root.public();
        let (_, blinded) = blind(PASSWORD, &account, &mut rng);
        holder.evaluate(Instant::ZERO, &account, &blinded).unwrap();
        let mut changes = DurableChanges::default();
        holder.take_changes(Instant::ZERO, &mut changes);
        let row = changes.changes[0].clone();
        let bytes = row.value.clone().unwrap();
        let mut fresh = BundleHolder::new(CryptoMode::Full, 4);
        for cut in 0..bytes.len() {
            assert!(fresh
                .restore_share(Instant::ZERO, &row.key, &bytes[..cut])
                .is_err());
        }
        for position in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[position] ^= 0x40;
            // A flip may still decode (a budget, an epoch); it never panics.
            let _ = fresh.restore_share(Instant::ZERO, &row.key, &flipped);
        }
        let mut fresh = BundleHolder::new(CryptoMode::Full, 4);
        let error = fresh
            .restore_share(Instant::ZERO, &[1; 32], &bytes)
            .unwrap_err();
        assert!(error.to_string().contains("another account"), "{error}");
        let deal_len = postcard::to_allocvec(&holder.deal(&account).unwrap())
            .unwrap()
            .len();
        let share_at = deal_len - 32;
        let mut bad_share = bytes.clone();
        bad_share[share_at] ^= 1;
        let error = fresh
            .restore_share(Instant::ZERO, &row.key, &bad_share)
            .unwrap_err();
        assert!(error.to_string().contains("commitment"), "{error}");
    }

    #[test]
    fn the_sixth_guess_in_a_burst_is_refused_until_the_refill() {
        let mut rng = rng();
        let (mut holder, root, _) = holder_with_deals(&mut rng, 4);
        let account = root.public();
        let (_, blinded) = blind(PASSWORD, &account, &mut rng);
        let t0 = Instant::from_s(1_000);
        for guess in 0..GUESS_BURST {
            holder
                .evaluate(t0.add_ms(guess), &account, &blinded)
                .unwrap_or_else(|e| panic!("guess {guess}: {e}"));
        }
        let refused = holder.evaluate(t0.add_ms(GUESS_BURST), &account, &blinded);
        let Err(HolderError::Refused { retry_after_ms }) = refused else {
            panic!("sixth guess answered: {refused:?}");
        };
        assert_eq!(retry_after_ms, GUESS_REFILL_INTERVAL_MS - GUESS_BURST);
        assert_eq!(GUESS_REFILL_INTERVAL_MS, 6 * 60 * 1_000);
        // Invalid elements are refused without spending (nor needing) the budget.
        assert_eq!(
            holder.evaluate(t0, &account, &BlindedElement([0xff; 32])),
            Err(HolderError::InvalidElement)
        );
        let refill = t0.add_ms(GUESS_REFILL_INTERVAL_MS);
        assert!(matches!(
            holder.evaluate(Instant(refill.0 - 1_000), &account, &blinded),
            Err(HolderError::Refused { retry_after_ms: 1 })
        ));
        assert!(holder.evaluate(refill, &account, &blinded).is_ok());
        assert!(matches!(
            holder.evaluate(refill, &account, &blinded),
            Err(HolderError::Refused { .. })
        ));
        // An idle hour refills the burst, not more.
        let later = refill.add_ms(3_600_000);
        for _ in 0..GUESS_BURST {
            holder.evaluate(later, &account, &blinded).unwrap();
        }
        assert!(holder.evaluate(later, &account, &blinded).is_err());
    }

    #[test]
    fn a_re_deal_needs_a_higher_epoch_and_the_root_signature() {
        let mut rng = rng();
        let (mut holder, root, first) = holder_with_deals(&mut rng, 4);
        let account = root.public();
        let t0 = Instant::ZERO;
        // Equal or lower epochs are refused.
        assert_eq!(
            holder.accept_deal(t0, &first[0]),
            Err(HolderError::StaleEpoch {
                held: 1,
                offered: 1
            })
        );
        let second = deal(&root, 1, 2, SHARING, &mut rng).unwrap();
        // A stranger cannot overwrite the share, even with a higher epoch.
        let stranger = Keypair::generate(CryptoMode::Full, &mut rng);
        let mut forged = deal(&stranger, 1, 9, SHARING, &mut rng).unwrap().remove(0);
        forged.body.account_key = account;
        assert_eq!(
            holder.accept_deal(t0, &forged),
            Err(HolderError::BadSignature)
        );
        // A share that does not match its signed commitment is refused.
        let mut swapped = second[0].clone();
        swapped.share = second[1].share;
        assert_eq!(holder.accept_deal(t0, &swapped), Err(HolderError::BadShare));
        let mut out_of_range = second[0].clone();
        out_of_range.body.index = 0;
        out_of_range.signature = root.sign(
            sign_domain::SHARE_DEAL,
            &deal_signing_bytes(&out_of_range.body),
        );
        assert_eq!(
            holder.accept_deal(t0, &out_of_range),
            Err(HolderError::BadShare)
        );
        assert_eq!(holder.epoch(&account), Some(1));
        // Spend some budget; the re-deal must not refill it.
        let (_, blinded) = blind(PASSWORD, &account, &mut rng);
        for _ in 0..GUESS_BURST {
            holder.evaluate(t0, &account, &blinded).unwrap();
        }
        holder.accept_deal(t0, &second[0]).unwrap();
        assert_eq!(holder.epoch(&account), Some(2));
        assert!(matches!(
            holder.evaluate(t0, &account, &blinded),
            Err(HolderError::Refused { .. })
        ));
        let answer = holder
            .evaluate(t0.add_ms(GUESS_REFILL_INTERVAL_MS), &account, &blinded)
            .unwrap();
        assert_eq!(answer.epoch, 2);
        let expected = OprfShare {
            index: 1,
            scalar: Option::<Scalar>::from(Scalar::from_canonical_bytes(second[0].share)).unwrap(),
        };
        assert_eq!(answer.evaluation, evaluate(&expected, &blinded).unwrap());
        assert_eq!(
            holder.accept_deal(t0, &first[0]),
            Err(HolderError::StaleEpoch {
                held: 2,
                offered: 1
            })
        );
        // A password change seals bundle version 2: its deal replaces the
        // share even under a lower epoch, and version 1's deals no longer do.
        let changed = deal(&root, 2, 1, SHARING, &mut rng).unwrap();
        holder.accept_deal(t0, &changed[0]).unwrap();
        assert_eq!(holder.epoch(&account), Some(1));
        let old_version = deal(&root, 1, 9, SHARING, &mut rng).unwrap();
        assert_eq!(
            holder.accept_deal(t0, &old_version[0]),
            Err(HolderError::StaleEpoch {
                held: 1,
                offered: 9
            })
        );
    }

    #[test]
    fn a_full_holder_refuses_new_accounts_but_takes_re_deals() {
        let mut rng = rng();
        let (mut holder, root, _) = holder_with_deals(&mut rng, 1);
        let other = Keypair::generate(CryptoMode::Full, &mut rng);
        let deals = deal(&other, 1, 1, SHARING, &mut rng).unwrap();
        assert_eq!(
            holder.accept_deal(Instant::ZERO, &deals[0]),
            Err(HolderError::Full { accounts_max: 1 })
        );
        assert_eq!(holder.len(), 1);
        let again = deal(&root, 1, 2, SHARING, &mut rng).unwrap();
        holder.accept_deal(Instant::ZERO, &again[3]).unwrap();
        assert_eq!(
            holder.evaluate(Instant::ZERO, &other.public(), &BlindedElement([0; 32])),
            Err(HolderError::UnknownAccount)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Random bytes as elements and evaluations: an answer or an error, never a panic.
        #[test]
        fn random_elements_never_panic(
            blinded in any::<[u8; 32]>(),
            answers in proptest::collection::vec((any::<u8>(), any::<[u8; 32]>()), 0..6),
            seed in any::<u64>(),
        ) {
            let mut rng = Pcg64Mcg::seed_from_u64(seed);
            let (mut holder, root, _) = holder_with_deals(&mut rng, 2);
            let share = OprfShare { index: 1, scalar: random_scalar(&mut rng) };
            let evaluated = evaluate(&share, &BlindedElement(blinded));
            let held = holder.evaluate(Instant::ZERO, &root.public(), &BlindedElement(blinded));
            prop_assert_eq!(evaluated.is_ok(), held.is_ok());
            let (blinding, _) = blind(PASSWORD, &root.public(), &mut rng);
            let answers: Vec<(u8, Evaluation)> =
                answers.into_iter().map(|(i, bytes)| (i, Evaluation(bytes))).collect();
            let _ = finalize(&blinding, PASSWORD, &root.public(), &answers);
        }

        /// Any sharing t of n (n ≤ 16): any t answers, in any order, give
        /// the output of the whole key; t - 1 answers give something else.
        #[test]
        fn any_t_answers_of_any_sharing_give_the_key_output(
            holders in 1..=BUNDLE_HOLDERS_MAX,
            threshold_seed in any::<u8>(),
            order_seed in any::<u64>(),
            seed in any::<u64>(),
        ) {
            let threshold = 1 + threshold_seed % holders;
            let mut rng = Pcg64Mcg::seed_from_u64(seed);
            let key = random_scalar(&mut rng);
            let account_key = PublicKey([5; 32]);
            let shares = deal_shares(&key, Sharing { threshold, holders }, &mut rng).unwrap();
            // A pseudo-random order of the shares, then the first t.
            let mut order: Vec<usize> = (0..shares.len()).collect();
            let mut state = order_seed;
            for i in (1..order.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (state >> 33) as usize % (i + 1));
            }
            let chosen: Vec<&OprfShare> =
                order.iter().take(usize::from(threshold)).map(|&i| &shares[i]).collect();
            let expected = oprf_output_with_key(&key, PASSWORD, &account_key);
            prop_assert_eq!(login_output(PASSWORD, &account_key, &chosen, &mut rng), expected);
            if threshold > 1 {
                let short = &chosen[..usize::from(threshold) - 1];
                prop_assert_ne!(login_output(PASSWORD, &account_key, short, &mut rng), expected);
            }
        }

        /// Whatever the request times, a budget grants at most the burst
        /// plus one guess per refill interval elapsed since the first
        /// request, and the wait it names on a refusal is exact.
        #[test]
        fn the_guess_budget_bounds_answers_over_any_window(
            steps_ms in proptest::collection::vec(0u64..900_000, 1..80),
        ) {
            let start = Instant::from_s(10);
            let mut budget = GuessBudget::full(start);
            let mut now = start;
            let mut granted = 0u64;
            for step in steps_ms {
                now = now.add_ms(step);
                match budget.take(now) {
                    Ok(()) => granted += 1,
                    Err(wait_ms) => {
                        prop_assert!((1..=GUESS_REFILL_INTERVAL_MS).contains(&wait_ms));
                        prop_assert!(budget.clone().take(now.add_ms(wait_ms - 1)).is_err());
                        prop_assert!(budget.clone().take(now.add_ms(wait_ms)).is_ok());
                    }
                }
                let allowed = GUESS_BURST + now.since_ms(start) / GUESS_REFILL_INTERVAL_MS;
                prop_assert!(granted <= allowed, "{} granted, {} allowed", granted, allowed);
            }
        }
    }
}
