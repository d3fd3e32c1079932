//! peerline's real-network driver: the sans-IO [`peerline_core::Node`] on a
//! real UDP socket, over QUIC (tokio + quinn) with TLS 1.3 certificates
//! bound to node keys.
//!
//! The driver is a thin shell: it moves the core's frames between QUIC
//! connections and the node, maps clocks onto the core's [`peerline_core::Now`],
//! wakes the node when it asks, and relays application commands and events.
//! Every protocol decision (retries, keepalives, which supernode, when to
//! give up) stays in the core.

pub mod quic;
pub mod tls;

pub use tls::{certificate_key, peer_key, CertificateRejected, NodeCertificate, TlsError, ALPN};
