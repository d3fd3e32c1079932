//! peerline's real-network driver: the sans-IO [`peerline_core::Node`] on a
//! real UDP socket, over QUIC (tokio + quinn) with TLS 1.3 certificates
//! bound to node keys.
//!
//! The driver is a thin shell: it moves the core's frames between QUIC
//! connections and the node ([`links`]), maps clocks onto the core's time
//! ([`clock`]), wakes the node when it asks, and relays application
//! commands and events ([`driver`]). Every protocol decision (retries,
//! keepalives, which supernode, when to give up) stays in the core.
//!
//! One UDP port carries three protocols, told apart by the first byte of
//! each datagram (RFC 9443, [`demux`]): STUN Binding ([`stun`]: every node
//! answers, and [`Control::stun_binding`] learns the node's reflexive
//! address), QUIC, and relay frames ([`relay`]: forwarded between bound
//! channels when this node relays, unwrapped for quinn when this node talks
//! to a peer through a relay). Unauthenticated STUN is bounded
//! in size (answers at most 3× the request) and rate (per source IP and
//! overall), see [`DemuxLimits`].
//!
//! ```no_run
//! # async fn example(config: peerline_net::DriverConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let (node, mut events) = peerline_net::RunningNode::start(config).await?;
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

pub mod clock;
pub mod demux;
pub mod driver;
pub mod links;
pub mod loopback;
pub mod quic;
pub mod relay;
pub mod stun;
pub mod tls;

pub use demux::{DemuxLimits, DemuxStats};
pub use driver::{
    Control, DriverConfig, DriverLimits, DriverReport, Events, MessageError, NodeGone, NodeStatus,
    OpenBundleError, Persist, RunningNode, StartError, MEMBERS_SAMPLE_LEN_MAX,
};
pub use links::{LinkLimits, LinkStats};
pub use quic::QuicLimits;
pub use stun::{stun_binding, StunError, StunRetransmit};
pub use tls::{certificate_key, peer_key, CertificateRejected, NodeCertificate, TlsError, ALPN};
