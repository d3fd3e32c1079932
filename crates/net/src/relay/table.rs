//! What a node does with relay frames, both as a relay and as a peer
//! using one. The tables are plain data, driven by [`crate::demux`] on
//! quinn's endpoint task and changed by the driver when the core says so
//! (who may relay to whom, for how long, is decided in the core).
//!
//! **As a relay** (a supernode): a [`Route`] per bound channel and
//! direction. A frame from `(source address, channel)` that has a route
//! goes out to the route's peer address with the peer's channel number in
//! its header; the payload (the peers' own QUIC packet) is not looked at.
//! A frame for no route, from another address than the bound one, or over
//! the direction's byte rate is dropped and counted.
//!
//! **As a peer** (a client behind a NAT that defeats hole punching): each
//! relayed path gets a *virtual address* in 240.0.0.0/4 (reserved, never
//! routed), one per `(relay, channel)`. quinn dials the virtual address
//! like any other; the socket turns what quinn sends there into frames to
//! the relay and hands quinn the payload of frames from the relay's
//! channel as datagrams from the virtual address. So the end-to-end QUIC
//! connection, its TLS key pinning and its congestion control run through
//! the relay unchanged.

use crate::relay::{self, RelayFrame, CHANNEL_MAX, CHANNEL_MIN};
use peerline_core::overload::TokenBucket;
use peerline_core::Instant;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Bounds on what a node relays and uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Channels bound on this node as a relay (two routes each).
    pub channels_max: usize,
    /// Bytes per second one direction of a binding may forward (frame
    /// headers included), and the burst above it.
    pub bytes_per_s: u64,
    pub burst_bytes: u64,
    /// Relayed paths this node uses as a peer at once.
    pub paths_max: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            channels_max: 1_024,
            // An Opus voice call is ~5 kB/s each way with QUIC overhead; 256
            // kB/s leaves room for file transfer and video at a low rate
            // while a supernode with a 100 Mbit/s uplink still serves ~50
            // saturated bindings at once.
            bytes_per_s: 256 * 1024,
            burst_bytes: 64 * 1024,
            paths_max: 64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("channel {0:#06x} is outside 0x8000-0xbfff")]
    BadChannel(u16),
    #[error("{addr} already has channel {channel:#06x} bound")]
    Taken { addr: SocketAddr, channel: u16 },
    #[error("the relay has all of its {0} channels bound")]
    Full(usize),
    #[error("this node already uses all of its {0} relayed paths")]
    PathsFull(usize),
}

/// One direction of a binding.
#[derive(Clone, Debug)]
struct Route {
    to: SocketAddr,
    to_channel: u16,
    bucket: TokenBucket,
}

/// What became of one received relay frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameFate {
    /// Forward the datagram, its channel rewritten to `to_channel`, to `to`.
    Forward { to: SocketAddr, to_channel: u16 },
    /// Hand the payload to quinn as a datagram from `from` (virtual).
    Deliver { from: SocketAddr },
    /// No route and no path for it.
    Unbound,
    /// Over the direction's byte rate.
    OverRate,
}

/// The relay's routes and the peer's relayed paths of one node.
#[derive(Debug)]
pub struct RelayTable {
    limits: RelayLimits,
    routes: HashMap<(SocketAddr, u16), Route>,
    /// Virtual address → (relay, channel), and back.
    paths: HashMap<SocketAddr, (SocketAddr, u16)>,
    virtuals: HashMap<(SocketAddr, u16), SocketAddr>,
    next_virtual: u32,
}

/// Whether `addr` is a relayed path's virtual address (240.0.0.0/4).
pub fn is_virtual(addr: &SocketAddr) -> bool {
    match addr.ip().to_canonical() {
        IpAddr::V4(v4) => v4.octets()[0] >= 240 && !v4.is_broadcast(),
        IpAddr::V6(_) => false,
    }
}

/// An IPv4 peer seen through a dual-stack socket is an IPv4 peer.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl RelayTable {
    pub fn new(limits: RelayLimits) -> RelayTable {
        RelayTable {
            limits,
            routes: HashMap::new(),
            paths: HashMap::new(),
            virtuals: HashMap::new(),
            next_virtual: 0,
        }
    }

    /// Channels bound on this node as a relay.
    pub fn channels(&self) -> usize {
        self.routes.len()
    }

    pub fn paths(&self) -> usize {
        self.paths.len()
    }

    /// Binds `a`'s channel to `b`'s: frames `a` sends on `a_channel` go to
    /// `b` on `b_channel`, and the other way round. Binding the same pair
    /// again is a no-op.
    pub fn bind(
        &mut self,
        a: (SocketAddr, u16),
        b: (SocketAddr, u16),
        now: Instant,
    ) -> Result<(), BindError> {
        let a = (canonical(a.0), a.1);
        let b = (canonical(b.0), b.1);
        for (_, channel) in [a, b] {
            if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) {
                return Err(BindError::BadChannel(channel));
            }
        }
        let bound_to = |from: (SocketAddr, u16)| {
            self.routes
                .get(&from)
                .map(|route| (route.to, route.to_channel))
        };
        if bound_to(a) == Some(b) && bound_to(b) == Some(a) {
            return Ok(());
        }
        for (addr, channel) in [a, b] {
            if self.routes.contains_key(&(addr, channel)) {
                return Err(BindError::Taken { addr, channel });
            }
        }
        if a == b {
            return Err(BindError::Taken {
                addr: a.0,
                channel: a.1,
            });
        }
        if self.routes.len() + 2 > self.limits.channels_max * 2 {
            return Err(BindError::Full(self.limits.channels_max));
        }
        for (from, to) in [(a, b), (b, a)] {
            let route = Route {
                to: to.0,
                to_channel: to.1,
                bucket: TokenBucket::new(self.limits.bytes_per_s, self.limits.burst_bytes, now),
            };
            self.routes.insert(from, route);
        }
        Ok(())
    }

    /// Removes the binding `from` belongs to (both directions).
    pub fn unbind(&mut self, from: (SocketAddr, u16)) {
        if let Some(route) = self.routes.remove(&(canonical(from.0), from.1)) {
            self.routes.remove(&(route.to, route.to_channel));
        }
    }

    /// Forgets every binding and path (the node changed role).
    pub fn reset(&mut self) {
        self.routes.clear();
        self.paths.clear();
        self.virtuals.clear();
    }

    /// The virtual address for the path through `relay` on `channel`
    /// (the same one while the path exists).
    pub fn open_path(&mut self, relay: SocketAddr, channel: u16) -> Result<SocketAddr, BindError> {
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) {
            return Err(BindError::BadChannel(channel));
        }
        let key = (canonical(relay), channel);
        if let Some(existing) = self.virtuals.get(&key) {
            return Ok(*existing);
        }
        if self.paths.len() >= self.limits.paths_max {
            return Err(BindError::PathsFull(self.limits.paths_max));
        }
        // 240.0.0.1 upwards, skipping any still in use after a wrap.
        let virtual_addr = loop {
            self.next_virtual = self.next_virtual.wrapping_add(1) & 0x0fff_ffff;
            let ip = Ipv4Addr::from(0xf000_0000 | self.next_virtual);
            let candidate = SocketAddr::new(IpAddr::V4(ip), 443);
            if self.next_virtual != 0 && !self.paths.contains_key(&candidate) {
                break candidate;
            }
        };
        self.paths.insert(virtual_addr, key);
        self.virtuals.insert(key, virtual_addr);
        Ok(virtual_addr)
    }

    pub fn close_path(&mut self, virtual_addr: SocketAddr) {
        if let Some(key) = self.paths.remove(&canonical(virtual_addr)) {
            self.virtuals.remove(&key);
        }
    }

    /// The relay and channel behind a virtual address.
    pub fn path(&self, virtual_addr: &SocketAddr) -> Option<(SocketAddr, u16)> {
        self.paths.get(&canonical(*virtual_addr)).copied()
    }

    /// Decides what happens to a frame of `len` bytes (header included)
    /// that came from `from` on `channel`.
    pub fn receive(
        &mut self,
        from: SocketAddr,
        channel: u16,
        len: usize,
        now: Instant,
    ) -> FrameFate {
        let key = (canonical(from), channel);
        if let Some(route) = self.routes.get_mut(&key) {
            return if route.bucket.try_take(now, len as u64, 0) {
                FrameFate::Forward {
                    to: route.to,
                    to_channel: route.to_channel,
                }
            } else {
                FrameFate::OverRate
            };
        }
        match self.virtuals.get(&key) {
            Some(virtual_addr) => FrameFate::Deliver {
                from: *virtual_addr,
            },
            None => FrameFate::Unbound,
        }
    }
}

/// Writes `payload` as a frame on `channel` into `out` (cleared first).
pub fn frame_into(
    channel: u16,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), relay::RelayFrameError> {
    out.clear();
    relay::encode(RelayFrame { channel, payload }, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn table() -> RelayTable {
        RelayTable::new(RelayLimits {
            channels_max: 2,
            bytes_per_s: 1_000,
            burst_bytes: 2_000,
            paths_max: 2,
        })
    }

    const A: u16 = 0x8001;
    const B: u16 = 0x8002;

    #[test]
    fn a_binding_forwards_both_ways_and_only_from_the_bound_address() {
        let mut table = table();
        let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
        table.bind((a, A), (b, B), Instant(0)).unwrap();
        assert_eq!(
            table.receive(a, A, 100, Instant(0)),
            FrameFate::Forward {
                to: b,
                to_channel: B
            }
        );
        assert_eq!(
            table.receive(b, B, 100, Instant(0)),
            FrameFate::Forward {
                to: a,
                to_channel: A
            }
        );
        // Another port of the same host, or the right address on the
        // wrong channel: not bound.
        assert_eq!(
            table.receive(addr("10.0.0.1:1001"), A, 100, Instant(0)),
            FrameFate::Unbound
        );
        assert_eq!(table.receive(a, B, 100, Instant(0)), FrameFate::Unbound);
        // A v4-mapped source is the same peer.
        assert_eq!(
            table.receive(addr("[::ffff:10.0.0.1]:1000"), A, 100, Instant(0)),
            FrameFate::Forward {
                to: b,
                to_channel: B
            }
        );
        table.unbind((b, B));
        assert_eq!(table.receive(a, A, 100, Instant(0)), FrameFate::Unbound);
        assert_eq!(table.channels(), 0);
    }

    #[test]
    fn binding_checks_channels_taken_slots_and_room() {
        let mut table = table();
        let (a, b, c) = (addr("10.0.0.1:1"), addr("10.0.0.2:2"), addr("10.0.0.3:3"));
        assert_eq!(
            table.bind((a, 0x7fff), (b, B), Instant(0)),
            Err(BindError::BadChannel(0x7fff))
        );
        table.bind((a, A), (b, B), Instant(0)).unwrap();
        // The same binding again is fine; a clash is not.
        table.bind((a, A), (b, B), Instant(0)).unwrap();
        assert_eq!(
            table.bind((a, A), (c, B), Instant(0)),
            Err(BindError::Taken {
                addr: a,
                channel: A
            })
        );
        assert_eq!(
            table.bind((c, A), (c, A), Instant(0)),
            Err(BindError::Taken {
                addr: c,
                channel: A
            })
        );
        table.bind((c, A), (c, B), Instant(0)).unwrap();
        assert_eq!(
            table.bind((a, 0x8003), (c, 0x8003), Instant(0)),
            Err(BindError::Full(2))
        );
    }

    #[test]
    fn each_direction_is_held_to_its_byte_rate() {
        let mut table = table();
        let (a, b) = (addr("10.0.0.1:1"), addr("10.0.0.2:2"));
        table.bind((a, A), (b, B), Instant(0)).unwrap();
        let forwarded = |table: &mut RelayTable, from, channel, at| {
            (0..10)
                .filter(|_| {
                    matches!(
                        table.receive(from, channel, 500, at),
                        FrameFate::Forward { .. }
                    )
                })
                .count()
        };
        // The 2,000-byte burst: four 500-byte frames, each way.
        assert_eq!(forwarded(&mut table, a, A, Instant(0)), 4);
        assert_eq!(forwarded(&mut table, b, B, Instant(0)), 4);
        assert_eq!(table.receive(a, A, 500, Instant(0)), FrameFate::OverRate);
        // One second later, 1,000 more bytes.
        assert_eq!(forwarded(&mut table, a, A, Instant(1_000_000)), 2);
    }

    #[test]
    fn paths_get_stable_distinct_virtual_addresses() {
        let mut table = table();
        let relay = addr("10.0.0.9:4433");
        let first = table.open_path(relay, A).unwrap();
        assert!(is_virtual(&first));
        assert_eq!(table.open_path(relay, A), Ok(first));
        let second = table.open_path(relay, B).unwrap();
        assert_ne!(first, second);
        assert_eq!(table.path(&second), Some((relay, B)));
        assert_eq!(
            table.receive(relay, B, 10, Instant(0)),
            FrameFate::Deliver { from: second }
        );
        assert_eq!(table.open_path(relay, 0x8003), Err(BindError::PathsFull(2)));
        table.close_path(first);
        assert_eq!(table.path(&first), None);
        assert_eq!(table.receive(relay, A, 10, Instant(0)), FrameFate::Unbound);
        assert!(!is_virtual(&relay));
        assert!(!is_virtual(&addr("255.255.255.255:1")));
    }
}
