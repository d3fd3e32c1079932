//! The three relays under test, each set up afresh for one step between
//! the generator's sockets A and B (so no step inherits another's queues):
//!
//! | relay      | A sends                         | per datagram, the relay …                                                                 | B gets            |
//! |------------|---------------------------------|-------------------------------------------------------------------------------------------|-------------------|
//! | `plain`    | the payload                     | `recv_from`, compares the source with A and B, `try_send_to` (tokio)                       | the payload       |
//! | `peerline` | relay frame (4-byte header)     | in quinn's endpoint task: sorts by first byte, decodes, table lookup and byte-rate check under a mutex, rewrites the channel, `try_send` (quinn-udp `sendmsg`) | relay frame       |
//! | `coturn`   | TURN ChannelData (4-byte header) | coturn's channel fast path: finds the allocation and channel, checks the permission, sends the data from the relayed address | the payload       |
//!
//! `plain` and `peerline` run on a one-worker tokio runtime (thread
//! [`RELAY_THREAD`]) in the benchmark's process; coturn runs in its own
//! process with its default relay threads (one of them serves a given
//! allocation). The sockets that receive from A get the same buffer size
//! for `plain` and `peerline` (`--relay-socket-buffer-bytes`, by default
//! what coturn asks for its own sockets).

pub mod coturn;
pub mod peerline;
pub mod plain;

use crate::generator::Route;
use crate::procfs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// Name of the thread that runs the in-process relays.
pub const RELAY_THREAD: &str = "relay";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayKind {
    /// A tokio UDP forwarder: the practical limit.
    Plain,
    /// A peerline supernode's relay data plane (`peerline_net::demux`).
    Peerline,
    /// coturn, through a TURN allocation with a bound channel.
    Coturn,
}

impl RelayKind {
    pub fn name(self) -> &'static str {
        match self {
            RelayKind::Plain => "plain",
            RelayKind::Peerline => "peerline",
            RelayKind::Coturn => "coturn",
        }
    }
}

/// A relay set up for one step.
pub enum Relay {
    Plain(plain::PlainForwarder),
    Peerline(peerline::PeerlineRelay),
    /// Boxed: the TURN client's state is a few kilobytes.
    Coturn(Box<coturn::TurnAllocation>),
}

impl Relay {
    /// The local port of the relay's socket that receives from A.
    pub fn ingress_port(&self) -> u16 {
        match self {
            Relay::Plain(relay) => relay.port(),
            Relay::Peerline(relay) => relay.port(),
            Relay::Coturn(allocation) => allocation.server_port(),
        }
    }

    /// CPU time the relay has had so far (all of coturn's threads; the
    /// relay runtime's thread for the others).
    pub fn cpu_time(&self) -> Duration {
        match self {
            Relay::Plain(_) | Relay::Peerline(_) => {
                procfs::cpu_time(std::process::id(), Some(RELAY_THREAD))
            }
            Relay::Coturn(allocation) => allocation
                .server_pid()
                .map_or(Duration::ZERO, |pid| procfs::cpu_time(pid, None)),
        }
    }

    /// The relay's own counters for this step, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        match self {
            Relay::Plain(relay) => relay.counters(),
            Relay::Peerline(relay) => relay.counters(),
            Relay::Coturn(_) => Vec::new(),
        }
    }

    /// Stops the relay (releases the allocation on coturn, from A).
    pub fn finish(self, sender: &UdpSocket) {
        match self {
            Relay::Plain(relay) => relay.stop(),
            Relay::Peerline(relay) => relay.stop(),
            Relay::Coturn(allocation) => allocation.release(sender),
        }
    }
}

/// A UDP socket on 127.0.0.1 with `buffer_bytes` of receive and send
/// buffer (the kernel doubles it and caps it at `rmem_max`/`wmem_max`),
/// or the kernel's default for 0.
pub fn loopback_socket(buffer_bytes: usize) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if buffer_bytes > 0 {
        socket.set_recv_buffer_size(buffer_bytes)?;
        socket.set_send_buffer_size(buffer_bytes)?;
    }
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
    Ok(socket.into())
}

/// A route whose datagrams are `header` then a zero payload of
/// `payload_len` bytes, and that B gets with `delivered_prefix` first.
pub fn route(
    to: SocketAddr,
    header: &[u8],
    payload_len: usize,
    delivered_prefix: Vec<u8>,
    delivered_from: SocketAddr,
) -> Route {
    let mut template = header.to_vec();
    template.resize(header.len() + payload_len, 0);
    Route {
        to,
        template,
        payload_offset: header.len(),
        delivered_prefix,
        delivered_from,
    }
}
