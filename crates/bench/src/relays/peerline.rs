//! A peerline supernode's relay: a quinn endpoint on the demultiplexing
//! socket (`peerline_net::quic::demux_endpoint`) with A's channel bound to
//! B's. Frames are forwarded inside quinn's endpoint task, as on a
//! supernode; no QUIC connection is involved.
//!
//! The binding's byte rate (`RelayLimits::bytes_per_s`, 256 kB/s per
//! direction by default) is a policy on how much one pair of peers may
//! use, not a capacity: the benchmark lifts it to [`BENCH_BYTES_PER_S`] so
//! that it measures what the data plane can forward.

use super::{loopback_socket, route};
use crate::generator::Route;
use anyhow::Context;
use peerline_core::{CryptoMode, Keypair};
use peerline_net::demux::{DemuxHandle, DemuxLimits};
use peerline_net::quic::demux_endpoint;
use peerline_net::relay::table::RelayLimits;
use peerline_net::relay::{self, RelayFrame};
use peerline_net::{NodeCertificate, QuicLimits};
use std::net::SocketAddr;
use tokio::runtime::Runtime;

/// A's channel on the relay, and B's.
pub const A_CHANNEL: u16 = 0x8001;
pub const B_CHANNEL: u16 = 0x8002;
/// The binding's byte rate and burst in the benchmark: 10 GB/s and 1 GB,
/// far above what one core forwards.
pub const BENCH_BYTES_PER_S: u64 = 10_000_000_000;
pub const BENCH_BURST_BYTES: u64 = 1_000_000_000;

pub struct PeerlineRelay {
    endpoint: quinn::Endpoint,
    demux: DemuxHandle,
    port: u16,
}

/// Starts a relay on `runtime` with `a`'s channel bound to `b`'s.
pub fn start(
    runtime: &Runtime,
    a: SocketAddr,
    b: SocketAddr,
    payload_len: usize,
    buffer_bytes: usize,
) -> anyhow::Result<(PeerlineRelay, Route)> {
    let socket = loopback_socket(buffer_bytes)?;
    let address = socket.local_addr()?;
    let certificate = NodeCertificate::new(&Keypair::from_seed(CryptoMode::Full, [7; 32]))
        .context("the relay's certificate")?;
    let limits = DemuxLimits {
        relay: RelayLimits {
            bytes_per_s: BENCH_BYTES_PER_S,
            burst_bytes: BENCH_BURST_BYTES,
            ..RelayLimits::default()
        },
        ..DemuxLimits::default()
    };
    let (endpoint, demux) = {
        let _runtime = runtime.enter();
        demux_endpoint(socket, &certificate, QuicLimits::default(), limits)
            .context("the relay's endpoint")?
    };
    demux
        .relay_bind((a, A_CHANNEL), (b, B_CHANNEL))
        .context("binding A's channel to B's")?;
    let payload = vec![0u8; payload_len];
    let mut a_frame = Vec::new();
    relay::encode(
        RelayFrame {
            channel: A_CHANNEL,
            payload: &payload,
        },
        &mut a_frame,
    )?;
    let mut b_frame = Vec::new();
    relay::encode(
        RelayFrame {
            channel: B_CHANNEL,
            payload: &payload,
        },
        &mut b_frame,
    )?;
    let header = &a_frame[..relay::HEADER_LEN];
    let delivered_prefix = b_frame[..relay::HEADER_LEN].to_vec();
    let relay = PeerlineRelay {
        endpoint,
        demux,
        port: address.port(),
    };
    Ok((
        relay,
        route(address, header, payload_len, delivered_prefix, address),
    ))
}

impl PeerlineRelay {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The demultiplexer's relay counters (`DemuxStats`).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let stats = self.demux.stats();
        vec![
            ("relay_frames_forwarded", stats.relay_frames_forwarded),
            ("relay_frames_send_failed", stats.relay_frames_send_failed),
            ("relay_frames_over_rate", stats.relay_frames_over_rate),
            ("relay_frames_unbound", stats.relay_frames_unbound),
            ("relay_frames_malformed", stats.relay_frames_malformed),
        ]
    }

    pub fn stop(self) {
        self.endpoint.close(0u32.into(), b"benchmark step over");
    }
}
