//! Signing and checking the account statements of `peerline_proto::account`:
//! the device list and the root rotation. Both are signed by root keys
//! (never by a device key), domain-separated like every other signature
//! (`identity.rs`), in either crypto mode.
//!
//! What these statements can and cannot do:
//! - A **device list** is signed by the account's root key. A stolen device
//!   holds only its device key and certificate, so it can neither issue a
//!   list that re-certifies itself nor one that undoes its revocation: any
//!   list it makes fails [`verify_device_list`].
//! - **Revocation is permanent** for the key it names. A newer list
//!   supersedes an older one (higher `version`), but a supernode keeps the
//!   union of every revoked key it saw for the account
//!   (`revocation.rs`): a later list that drops a key from `revoked` is
//!   still accepted (its new revocations count), the dropped key stays
//!   refused. A device once revoked comes back only under a new device key
//!   and certificate. The union is kept for the longest certificate
//!   lifetime, after which the revoked certificate has expired anyway.
//! - A **root rotation** is signed by the old and the new root: the old one
//!   says the account moves, the new one that its holder accepts it, so
//!   neither key can claim a rotation alone. Afterwards supernodes refuse
//!   certificates signed by the old root (logins, resumes, presence): a
//!   compromised old root can no longer certify devices. Left for later:
//!   names and contacts following the rotation. Name records will carry a
//!   transfer signed by the old key (checked like the rotation's
//!   `signature_old`), and a lookup of the old account's presence key will
//!   answer with the rotation record, so contacts learn the new key from
//!   the directory. A thief holding the old root can also sign a rotation
//!   to a key of its own; both then revoke the old root (what matters
//!   here), and supernodes keep the lowest (`issued_unix_s`, `new_account`)
//!   so they agree on one; telling the owner's from the thief's needs the
//!   name transfer (or a recovery key), not done yet.

use crate::identity::{verify, CryptoError, CryptoMode, Keypair};
use peerline_proto::{
    to_signing_bytes, DeviceList, DeviceListBody, RootRotation, RootRotationBody,
};

/// Domain-separation prefixes of the account statements.
pub mod domain {
    pub const DEVICE_LIST: &[u8] = b"peerline/v1/device-list";
    pub const ROTATION_OLD: &[u8] = b"peerline/v1/root-rotation/old";
    pub const ROTATION_NEW: &[u8] = b"peerline/v1/root-rotation/new";
}

/// Why an account statement does not check.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AccountError {
    #[error("signature does not verify: {0}")]
    Crypto(#[from] CryptoError),
    #[error("issued in the future")]
    NotYetValid,
    #[error("the list names a device both current and revoked")]
    Contradictory,
    #[error("a rotation must move to another key")]
    SameKey,
}

/// The account's root key signs a device list.
pub fn sign_device_list(root: &Keypair, body: DeviceListBody) -> DeviceList {
    debug_assert_eq!(body.account_key, root.public());
    let signature = root.sign(domain::DEVICE_LIST, &to_signing_bytes(&body));
    DeviceList { body, signature }
}

/// Checks a device list: not issued in the future (beyond the skew), no
/// device both current and revoked, signed by the account key it names.
pub fn verify_device_list(
    mode: CryptoMode,
    list: &DeviceList,
    now_unix_s: u64,
    skew_tolerance_s: u64,
) -> Result<(), AccountError> {
    let body = &list.body;
    if body.issued_unix_s > now_unix_s.saturating_add(skew_tolerance_s) {
        return Err(AccountError::NotYetValid);
    }
    if body.devices.iter().any(|d| body.revoked.contains(d)) {
        return Err(AccountError::Contradictory);
    }
    verify(
        mode,
        &body.account_key,
        domain::DEVICE_LIST,
        &to_signing_bytes(body),
        &list.signature,
    )?;
    Ok(())
}

/// Both roots sign the move from `old` to `new`.
pub fn sign_root_rotation(old: &Keypair, new: &Keypair, issued_unix_s: u64) -> RootRotation {
    let body = RootRotationBody {
        old_account: old.public(),
        new_account: new.public(),
        issued_unix_s,
    };
    let bytes = to_signing_bytes(&body);
    RootRotation {
        body,
        signature_old: old.sign(domain::ROTATION_OLD, &bytes),
        signature_new: new.sign(domain::ROTATION_NEW, &bytes),
    }
}

/// Checks a root rotation: two different keys, not issued in the future,
/// both signatures.
pub fn verify_root_rotation(
    mode: CryptoMode,
    rotation: &RootRotation,
    now_unix_s: u64,
    skew_tolerance_s: u64,
) -> Result<(), AccountError> {
    let body = &rotation.body;
    if body.old_account == body.new_account {
        return Err(AccountError::SameKey);
    }
    if body.issued_unix_s > now_unix_s.saturating_add(skew_tolerance_s) {
        return Err(AccountError::NotYetValid);
    }
    let bytes = to_signing_bytes(body);
    verify(
        mode,
        &body.old_account,
        domain::ROTATION_OLD,
        &bytes,
        &rotation.signature_old,
    )?;
    verify(
        mode,
        &body.new_account,
        domain::ROTATION_NEW,
        &bytes,
        &rotation.signature_new,
    )?;
    Ok(())
}

/// Of two valid rotations of one old root, the one every supernode keeps:
/// the lowest (`issued_unix_s`, `new_account`).
pub fn rotation_wins(candidate: &RootRotation, held: &RootRotation) -> bool {
    (candidate.body.issued_unix_s, candidate.body.new_account)
        < (held.body.issued_unix_s, held.body.new_account)
}

/// The account that owns a name now: `certificate_account`, moved along
/// `moved` (oldest first). Every rotation must verify and start where the
/// previous one ended; the first that does not ends the chain there (a
/// supernode cannot forge a rotation, only withhold one).
pub fn follow_rotations(
    mode: CryptoMode,
    certificate_account: peerline_proto::PublicKey,
    moved: &[RootRotation],
    now_unix_s: u64,
    skew_tolerance_s: u64,
) -> peerline_proto::PublicKey {
    let mut owner = certificate_account;
    for rotation in moved {
        let valid = rotation.body.old_account == owner
            && verify_root_rotation(mode, rotation, now_unix_s, skew_tolerance_s).is_ok();
        if !valid {
            break;
        }
        owner = rotation.body.new_account;
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{issue_device_cert, verify_device_cert, DeviceIdentity};
    use peerline_proto::{BoundedVec, PublicKey};
    use rand_core::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    const NOW: u64 = 1_800_000_000;
    const SKEW: u64 = 600;
    const MODES: [CryptoMode; 2] = [CryptoMode::Full, CryptoMode::Modelled];

    fn keys(mode: CryptoMode, seed: u64) -> (Keypair, Keypair, Keypair) {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        (
            Keypair::generate(mode, &mut rng),
            Keypair::generate(mode, &mut rng),
            Keypair::generate(mode, &mut rng),
        )
    }

    fn body(
        account: PublicKey,
        version: u64,
        devices: &[PublicKey],
        revoked: &[PublicKey],
    ) -> DeviceListBody {
        DeviceListBody {
            account_key: account,
            version,
            devices: BoundedVec::truncating(devices.iter().copied()),
            revoked: BoundedVec::truncating(revoked.iter().copied()),
            issued_unix_s: NOW,
        }
    }

    #[test]
    fn device_list_verifies_in_both_modes_and_says_who_is_current() {
        for mode in MODES {
            let (root, phone, laptop) = keys(mode, 1);
            let list = sign_device_list(
                &root,
                body(root.public(), 2, &[phone.public()], &[laptop.public()]),
            );
            verify_device_list(mode, &list, NOW, SKEW).unwrap();
            assert!(list.is_current(&phone.public()));
            assert!(!list.is_current(&laptop.public()));
            assert!(!list.is_current(&root.public()));
            assert!(list.supersedes(1));
            assert!(!list.supersedes(2), "an equal version does not supersede");
        }
    }

    #[test]
    fn forged_or_tampered_device_list_is_refused() {
        for mode in MODES {
            let (root, phone, attacker) = keys(mode, 2);
            // Signed by another key in the account's name.
            let forged = sign_device_list(
                &attacker,
                body(attacker.public(), 9, &[attacker.public()], &[]),
            );
            let mut forged = forged;
            forged.body.account_key = root.public();
            assert_eq!(
                verify_device_list(mode, &forged, NOW, SKEW),
                Err(AccountError::Crypto(CryptoError::BadSignature))
            );
            // A genuine list with a device moved out of `revoked`.
            let mut tampered =
                sign_device_list(&root, body(root.public(), 3, &[], &[phone.public()]));
            tampered.body.revoked = BoundedVec::new();
            assert!(verify_device_list(mode, &tampered, NOW, SKEW).is_err());
            // Issued beyond the skew in the future.
            let mut future = body(root.public(), 4, &[], &[]);
            future.issued_unix_s = NOW + SKEW + 1;
            let future = sign_device_list(&root, future);
            assert_eq!(
                verify_device_list(mode, &future, NOW, SKEW),
                Err(AccountError::NotYetValid)
            );
            // Current and revoked at once.
            let both = sign_device_list(
                &root,
                body(root.public(), 5, &[phone.public()], &[phone.public()]),
            );
            assert_eq!(
                verify_device_list(mode, &both, NOW, SKEW),
                Err(AccountError::Contradictory)
            );
        }
    }

    /// A stolen device holds its device key and its certificate, not the
    /// root key: whatever it signs does not verify as a list or a rotation.
    #[test]
    fn stolen_device_cannot_recertify_itself_or_undo_its_revocation() {
        for mode in MODES {
            let mut rng = Pcg64Mcg::seed_from_u64(3);
            let stolen = DeviceIdentity::new_account(mode, &mut rng, NOW, 3_600);
            let account = stolen.account();
            // A list in the account's name, signed with the device key.
            let mut list = sign_device_list(
                &stolen.keypair,
                body(
                    stolen.keypair.public(),
                    u64::MAX,
                    &[stolen.keypair.public()],
                    &[],
                ),
            );
            list.body.account_key = account;
            assert!(verify_device_list(mode, &list, NOW, SKEW).is_err());
            // Its certificate's signature re-used as a list signature.
            let mut reused = list.clone();
            reused.signature = stolen.cert.signature;
            assert!(verify_device_list(mode, &reused, NOW, SKEW).is_err());
            // A rotation of the account to a key the thief holds.
            let thief_root = Keypair::generate(mode, &mut rng);
            let mut rotation = sign_root_rotation(&stolen.keypair, &thief_root, NOW);
            rotation.body.old_account = account;
            assert!(verify_root_rotation(mode, &rotation, NOW, SKEW).is_err());
            // A new certificate for itself under the account.
            let mut cert = issue_device_cert(&stolen.keypair, stolen.keypair.public(), NOW + 3_600);
            cert.body.account_key = account;
            assert!(verify_device_cert(mode, &cert, NOW, SKEW).is_err());
        }
    }

    #[test]
    fn rotation_needs_both_signatures() {
        for mode in MODES {
            let (old, new, other) = keys(mode, 4);
            let rotation = sign_root_rotation(&old, &new, NOW);
            verify_root_rotation(mode, &rotation, NOW, SKEW).unwrap();
            // The new key alone claims the old account.
            let mut claimed = sign_root_rotation(&other, &new, NOW);
            claimed.body.old_account = old.public();
            assert!(verify_root_rotation(mode, &claimed, NOW, SKEW).is_err());
            // The old key alone names a new key it does not hold.
            let mut pushed = sign_root_rotation(&old, &other, NOW);
            pushed.body.new_account = new.public();
            assert!(verify_root_rotation(mode, &pushed, NOW, SKEW).is_err());
            // Swapped signatures (domain separation).
            let mut swapped = rotation;
            std::mem::swap(&mut swapped.signature_old, &mut swapped.signature_new);
            assert!(verify_root_rotation(mode, &swapped, NOW, SKEW).is_err());
            let same = sign_root_rotation(&old, &old, NOW);
            assert_eq!(
                verify_root_rotation(mode, &same, NOW, SKEW),
                Err(AccountError::SameKey)
            );
            // Deterministic pick between two valid rotations.
            let later = sign_root_rotation(&old, &other, NOW + 1);
            assert!(rotation_wins(&rotation, &later));
            assert!(!rotation_wins(&later, &rotation));
            assert!(!rotation_wins(&rotation, &rotation));
        }
    }

    #[test]
    fn modes_do_not_accept_each_other() {
        let (root, phone, _) = keys(CryptoMode::Modelled, 5);
        let list = sign_device_list(&root, body(root.public(), 1, &[phone.public()], &[]));
        assert!(verify_device_list(CryptoMode::Full, &list, NOW, SKEW).is_err());
    }
}
