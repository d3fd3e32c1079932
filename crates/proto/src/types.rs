//! Plain wire types shared by every message: keys, identifiers, addresses,
//! certificates and directory records.

use crate::bounded::BoundedVec;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Most supernodes a presence record may name.
pub const RECORD_SUPERNODES_MAX: usize = 4;

/// An Ed25519 public key (or, in the simulator's modelled-crypto mode, a
/// random 32-byte stand-in of the same size).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PublicKey({})", hex_prefix(&self.0))
    }
}

/// A 256-bit position in the directory keyspace (node IDs and record keys).
/// Distance is XOR, as in Kademlia.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    pub fn distance(&self, other: &NodeId) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        out
    }

    /// Bit `index` counted from the most significant bit of byte 0.
    pub fn bit(&self, index: usize) -> bool {
        (self.0[index / 8] >> (7 - index % 8)) & 1 == 1
    }

    /// Number of leading bits shared with `other` (256 when equal).
    pub fn common_prefix_len(&self, other: &NodeId) -> usize {
        for (i, (a, b)) in self.0.iter().zip(other.0.iter()).enumerate() {
            let x = a ^ b;
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        256
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "NodeId({})", hex_prefix(&self.0))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&hex_prefix(&self.0))
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// An Ed25519 signature (64 bytes), encoded as a length-checked byte string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Default for Signature {
    fn default() -> Self {
        Signature([0; 64])
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Signature({}..)", hex_prefix(&self.0))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: &[u8] = Deserialize::deserialize(deserializer)?;
        let array: [u8; 64] = bytes
            .try_into()
            .map_err(|_| D::Error::invalid_length(bytes.len(), &"64 signature bytes"))?;
        Ok(Signature(array))
    }
}

/// A UDP endpoint in 18 bytes: IPv6 (IPv4 stored as v4-mapped) and port.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Addr {
    pub ip: [u8; 16],
    pub port: u16,
}

impl Addr {
    pub fn from_socket(addr: SocketAddr) -> Addr {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Addr {
            ip: ip.octets(),
            port: addr.port(),
        }
    }

    pub fn to_socket(&self) -> SocketAddr {
        let v6 = Ipv6Addr::from(self.ip);
        match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), self.port),
            None => SocketAddr::new(IpAddr::V6(v6), self.port),
        }
    }

    /// The IPv4 address as a number, when this is a v4-mapped address.
    pub fn ipv4_u32(&self) -> Option<u32> {
        let v6 = Ipv6Addr::from(self.ip);
        v6.to_ipv4_mapped().map(u32::from)
    }

    pub fn from_ipv4_u32(ip: u32, port: u16) -> Addr {
        Addr::from_socket(SocketAddr::new(IpAddr::V4(ip.into()), port))
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.to_socket())
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.to_socket())
    }
}

/// How to reach a supernode and check its identity: its node key, the
/// nonce that solves its ID puzzle (the node ID is derived from both), and
/// its address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct Contact {
    pub key: PublicKey,
    pub id_nonce: u64,
    pub addr: Addr,
}

/// The part of a device certificate that the account key signs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct DeviceCertBody {
    pub device_key: PublicKey,
    pub account_key: PublicKey,
    pub expires_unix_s: u64,
}

/// A device key certified by its account's root key until an expiry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct DeviceCert {
    pub body: DeviceCertBody,
    pub signature: Signature,
}

/// The part of a presence record that the device key signs.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct PresenceBody {
    pub cert: DeviceCert,
    /// Grows with every record the device publishes; a replica keeps the highest.
    pub sequence: u64,
    pub issued_unix_s: u64,
    pub expires_unix_s: u64,
    /// The supernodes the device is attached to when it signs.
    pub supernodes: BoundedVec<Contact, RECORD_SUPERNODES_MAX>,
}

/// A signed, expiring statement "this device of this account is online and
/// reachable through these supernodes".
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct PresenceRecord {
    pub body: PresenceBody,
    pub signature: Signature,
}

/// What a membership update says about a supernode.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
}

/// One entry of supernode membership gossip (SWIM-style): who, in which
/// incarnation, in which state, how loaded (percent of its attachment
/// capacity, saturating at 255).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct MemberUpdate {
    pub contact: Contact,
    pub incarnation: u32,
    pub state: MemberState,
    pub load_pct: u8,
}

/// What a supernode attests when it hands a client a resumption ticket:
/// "this device, certified by this account until `cert_expires_unix_s`,
/// was attached to me from `addr` at `issued_unix_s`". Any supernode that
/// knows the issuer can check it, so a client whose supernode died (or
/// rebooted) re-attaches elsewhere in one round trip.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct TicketBody {
    pub device_key: PublicKey,
    pub account_key: PublicKey,
    pub cert_expires_unix_s: u64,
    /// The client's address as the issuer saw it; a resume from any other
    /// address is refused, so a replayed resume can only re-attach the
    /// device where it already is.
    pub addr: Addr,
    pub issued_unix_s: u64,
    pub expires_unix_s: u64,
    pub issuer: Contact,
}

/// A resumption ticket, signed by the issuing supernode's node key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct Ticket {
    pub body: TicketBody,
    pub signature: Signature,
}

/// Largest opaque payload of one message (sealed end to end by the sender;
/// the network never looks inside).
pub const PAYLOAD_LEN_MAX: usize = 1024;

/// What an envelope carries.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub enum EnvelopeKind {
    /// An application message: opaque bytes.
    Data {
        payload: BoundedVec<u8, PAYLOAD_LEN_MAX>,
    },
    /// The recipient device's end-to-end acknowledgement: it holds every
    /// message of this conversation up to `up_to_seq`.
    Ack { up_to_seq: u64 },
}

/// The part of an envelope the sending device signs.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct EnvelopeBody {
    pub from_device: PublicKey,
    pub from_account: PublicKey,
    pub to_device: PublicKey,
    pub to_account: PublicKey,
    /// Position in the conversation `from_device → to_device`, from 1 (0 for acks).
    pub seq: u64,
    pub sent_unix_s: u64,
    pub kind: EnvelopeKind,
}

/// A message or an acknowledgement from one device to another, signed by
/// the sender's device key. Stored in the recipient's mailbox (on the
/// supernodes that hold the recipient account's presence) until the
/// recipient has it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct Envelope {
    pub body: EnvelopeBody,
    pub signature: Signature,
}

/// Identifies an envelope: a hash of its signed body (so a re-sent message
/// is the same entry everywhere).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct EnvelopeId(pub [u8; 16]);
