//! peerline's sans-IO core: pure state machines for identity, login
//! (attaching to supernodes), membership gossip, the directory and lookups.
//!
//! Nothing here reads a clock, touches a socket, spawns or sleeps: time and
//! randomness come in from the driver (the simulator or the tokio driver),
//! and everything the node wants done comes out through
//! [`Node::poll_transmit`], [`Node::poll_event`] and [`Node::poll_timeout`].

pub mod account;
mod attached;
pub mod bundle;
pub mod client;
pub mod durable;
pub mod hostcache;
pub mod identity;
pub mod lookup;
pub mod mail;
pub mod membership;
pub mod names;
pub mod node;
pub mod overload;
pub mod params;
pub mod punch;
pub mod registry;
pub mod relay;
pub mod revocation;
pub mod sealed;
pub mod supernode;
pub mod time;

pub use durable::{DurableChange, DurableChanges, DurableError, DurableTable};
pub use identity::{CryptoMode, DeviceIdentity, Keypair};
pub use node::{
    DetachReason, DurableRestored, Event, Node, NodeConfig, NodeStats, RolePolicy, Transmit,
};
pub use params::Params;
pub use punch::{PathCommand, PathFailure, PathKind, PathReport, RevealAddresses};
pub use time::{Instant, Now};
