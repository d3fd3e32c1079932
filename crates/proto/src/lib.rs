//! peerline's wire protocol: versioned envelope, message types and a total,
//! size-bounded codec.
//!
//! A datagram is `[version byte][postcard body]`. Version byte `0` carries a
//! [`VersionInfo`] (which versions the sender speaks); any other byte names the
//! protocol version of the [`Message`] that follows. A node that receives a
//! version it does not speak answers with its `VersionInfo`, and a newer node
//! that learns a peer's range speaks the highest common version to it — so a
//! network of mixed releases keeps working (the 2010 outage began with one bad
//! release among mixed versions).
//!
//! Decoding is total: any byte string yields a value or a [`DecodeError`],
//! never a panic, an unbounded allocation or a hang. Lengths are checked
//! before anything is allocated ([`BoundedVec`], [`MESSAGE_LEN_MAX`]).

pub mod account;
pub mod bounded;
pub mod bundle;
pub mod message;
pub mod names;
pub mod types;

pub use account::*;
pub use bounded::BoundedVec;
pub use bundle::{
    BlindedElement, Evaluation, KdfParams, KeyBundle, KeyBundleBody, ShareDeal, ShareDealBody,
    Sharing, BUNDLE_NONCE_LEN, BUNDLE_SALT_LEN, BUNDLE_TAG_LEN,
};
pub use message::{
    BusyReason, LoginRefusal, Message, MessageKind, RelayRequestBody, ShareHolder,
    CONTACTS_PER_MESSAGE_MAX, GOSSIP_UPDATES_MAX, MAIL_BATCH_MAX, MAIL_IDS_MAX, NAME_ROTATIONS_MAX,
    PUNCH_CANDIDATES_MAX, SEALED_CANDIDATES_LEN_MAX, SHARE_HOLDERS_PER_MESSAGE_MAX,
    SYNC_PAGE_MEMBERS_MAX, URGENT_PUSH_SEQUENCE,
};
pub use names::*;
pub use types::*;

use serde::{Deserialize, Serialize};

/// Hard ceiling on an encoded datagram/frame, in bytes.
pub const MESSAGE_LEN_MAX: usize = 16 * 1024;
/// Oldest protocol version this build speaks.
pub const PROTOCOL_VERSION_MIN: u8 = 1;
/// Newest protocol version this build speaks.
pub const PROTOCOL_VERSION_MAX: u8 = 1;
/// The version byte that marks a [`VersionInfo`] frame.
pub const VERSION_INFO_BYTE: u8 = 0;

/// "I speak protocol versions `min..=max`."
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VersionInfo {
    pub min: u8,
    pub max: u8,
}

impl VersionInfo {
    pub const OURS: VersionInfo = VersionInfo {
        min: PROTOCOL_VERSION_MIN,
        max: PROTOCOL_VERSION_MAX,
    };

    /// The highest version both sides speak, if any.
    pub fn common_version(&self, theirs: &VersionInfo) -> Option<u8> {
        let high = self.max.min(theirs.max);
        let low = self.min.max(theirs.min);
        (high >= low).then_some(high)
    }
}

/// A decoded datagram.
// Returned by value and consumed at once; boxing the message would cost an
// allocation per datagram for no benefit.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Frame {
    Message(Message),
    Versions(VersionInfo),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty datagram")]
    Empty,
    #[error("datagram of {len} bytes exceeds the {MESSAGE_LEN_MAX}-byte maximum")]
    TooLong { len: usize },
    #[error("protocol version {version} is not spoken here (we speak {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_MAX})")]
    UnsupportedVersion { version: u8 },
    #[error("malformed message body")]
    Malformed,
    #[error("{extra} unexpected bytes after the message")]
    TrailingBytes { extra: usize },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoded message of {len} bytes exceeds the {MESSAGE_LEN_MAX}-byte maximum")]
    TooLong { len: usize },
    #[error("message could not be serialized")]
    Serialize,
}

/// Encodes a message in the newest version we speak.
pub fn encode(message: &Message) -> Result<Vec<u8>, EncodeError> {
    encode_versioned(PROTOCOL_VERSION_MAX, message)
}

/// Encodes a message with an explicit version byte (used after negotiation).
pub fn encode_versioned(version: u8, message: &Message) -> Result<Vec<u8>, EncodeError> {
    debug_assert!(version != VERSION_INFO_BYTE);
    // Serialize into a reused per-thread buffer, then copy out exactly: one
    // right-sized allocation per message instead of a doubling series (a
    // simulator run encodes a billion of them; queued datagrams keep their
    // capacity).
    SCRATCH.with_borrow_mut(|scratch| {
        let mut buffer = std::mem::take(scratch);
        buffer.clear();
        buffer.push(version);
        let buffer = postcard::to_extend(message, buffer).map_err(|_| EncodeError::Serialize)?;
        let result = check_encoded_len(buffer.clone());
        *scratch = buffer;
        result
    })
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encodes our version range, the answer to a version we do not speak.
pub fn encode_version_info() -> Vec<u8> {
    let bytes = vec![VERSION_INFO_BYTE];
    postcard::to_extend(&VersionInfo::OURS, bytes).expect("two bytes always serialize")
}

fn check_encoded_len(bytes: Vec<u8>) -> Result<Vec<u8>, EncodeError> {
    if bytes.len() > MESSAGE_LEN_MAX {
        return Err(EncodeError::TooLong { len: bytes.len() });
    }
    Ok(bytes)
}

/// Decodes one datagram. Total: never panics, allocates at most in
/// proportion to `bytes.len()` (itself at most [`MESSAGE_LEN_MAX`]).
pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MESSAGE_LEN_MAX {
        return Err(DecodeError::TooLong { len: bytes.len() });
    }
    if version == VERSION_INFO_BYTE {
        return decode_exact::<VersionInfo>(body).map(Frame::Versions);
    }
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version) {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    decode_exact::<Message>(body).map(Frame::Message)
}

fn decode_exact<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(|_| DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { extra: rest.len() });
    }
    Ok(value)
}

/// Encodes a presence record body for signing (domain-separated by the caller).
pub fn to_signing_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("wire types always serialize")
}

/// The kind of message a datagram carries, read from its first bytes
/// without decoding the body (the simulator's observers use this).
pub fn peek_kind(bytes: &[u8]) -> Option<MessageKind> {
    let (&version, body) = bytes.split_first()?;
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version) {
        return None;
    }
    let (index, _) = postcard::take_from_bytes::<u32>(body).ok()?;
    MessageKind::from_index(index)
}
