//! Account-level statements signed by an account's root key: the signed
//! device list (which devices are current, which are revoked) and the root
//! rotation (the account moves to a new root key). Supernodes spread both
//! network-wide (`DeviceListPush`, `RootRotationPush`); the checks and the
//! rules live in `peerline-core`'s `account.rs` and `revocation.rs`.

use crate::bounded::BoundedVec;
use crate::types::{PublicKey, Signature};
use serde::{Deserialize, Serialize};

/// Most current devices one device list names.
pub const DEVICE_LIST_DEVICES_MAX: usize = 16;
/// Most revoked devices one device list names.
pub const DEVICE_LIST_REVOKED_MAX: usize = 64;

/// The part of a device list that the account's root key signs.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct DeviceListBody {
    pub account_key: PublicKey,
    /// Grows with every list the account issues; a newer version supersedes.
    pub version: u64,
    /// The account's current devices.
    pub devices: BoundedVec<PublicKey, DEVICE_LIST_DEVICES_MAX>,
    /// Devices the account no longer vouches for (lost, stolen, retired).
    pub revoked: BoundedVec<PublicKey, DEVICE_LIST_REVOKED_MAX>,
    pub issued_unix_s: u64,
}

/// "These are my devices, and these are revoked", signed by the root key.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct DeviceList {
    pub body: DeviceListBody,
    pub signature: Signature,
}

/// The part of a root rotation that both root keys sign.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct RootRotationBody {
    pub old_account: PublicKey,
    pub new_account: PublicKey,
    pub issued_unix_s: u64,
}

/// "The account `old_account` is now `new_account`", signed by both keys:
/// the old one (it is the account's will) and the new one (nobody can
/// claim an account moved to a key they do not hold).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct RootRotation {
    pub body: RootRotationBody,
    pub signature_old: Signature,
    pub signature_new: Signature,
}

impl DeviceList {
    /// Whether the list names `device` as current (and not revoked).
    pub fn is_current(&self, device: &PublicKey) -> bool {
        self.body.devices.contains(device) && !self.body.revoked.contains(device)
    }

    /// Whether this list replaces one of version `held_version`: only a
    /// strictly higher version does (an equal one is the same list or a
    /// conflicting one, and the first seen stays).
    pub fn supersedes(&self, held_version: u64) -> bool {
        self.body.version > held_version
    }
}
