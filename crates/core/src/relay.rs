//! The relay, sans-IO: which peer pairs a supernode relays for, on which
//! channels, and for how long. The frames themselves never pass through
//! here: the driver forwards them between the bound channels
//! ([`PathCommand::RelayBind`]), so the core decides and the socket does the
//! per-packet work.
//!
//! ```text
//! A (NAT)              relay R (A's supernode)              B (NAT)
//! |-- RelayRequest{s, A→B} -->|                                |
//! |                           |<-- RelayRequest{s, B→A} -------|
//! |                           |  both halves: bind (A,ca)↔(B,cb)
//! |<-- RelayGranted{s, ca} ---|--- RelayGranted{s, cb} ------->|
//! |== frames on ca ==========>|== frames on cb ===============>|
//! ```
//!
//! Each peer asks over its own QUIC connection to the relay, so the
//! address the relay binds is the one that peer's NAT shows it — the same
//! one its frames will come from (one socket per node). The request is
//! signed by the device key and names the relay, so nobody else can bind
//! a device's half, and a request is good at one relay only. Only a client
//! attached to the relay opens a half (keys cost nothing to make, so
//! strangers could otherwise fill the relay with halves); the peer, who
//! need not be attached here, can only complete one — asking first, it is
//! told to retry shortly. A binding
//! lasts `relay_lifetime_s` unless a request refreshes it; a half waits
//! for its partner at most [`HALF_WAIT_MS`]. Capacity is explicit: at
//! most `relay_bindings_max` pairs (halves included) and
//! [`BINDINGS_PER_DEVICE_MAX`] per device; beyond that the answer is
//! `RelayRefused` with a retry-after, never a silent drop.

use crate::identity::{domain, verify};
use crate::node::Io;
use crate::punch::PathCommand;
use crate::time::Instant;
use peerline_proto::{to_signing_bytes, Addr, Message, PublicKey, RelayRequestBody, Signature};
use std::collections::VecDeque;

/// Lowest and highest relay channel numbers (first byte 128–191, see the
/// relay frame format in the driver).
pub const CHANNEL_MIN: u16 = 0x8000;
pub const CHANNEL_MAX: u16 = 0xBFFF;
/// How long a half waits for its partner's request.
pub const HALF_WAIT_MS: u64 = 30_000;
/// Most bindings a relay holds whatever `relay_bindings_max` says: two
/// channels each, so that a free channel is always among the 16,384 and
/// picking one at random takes a couple of tries at most.
pub const BINDINGS_MAX: usize = 4_096;
/// Bindings (and halves) one device may hold on one relay.
pub const BINDINGS_PER_DEVICE_MAX: usize = 4;
/// What a refused device is told to wait.
pub const REFUSED_RETRY_MS: u32 = 5_000;
/// What a peer that asked before the half it completes existed is told.
pub const PARTNER_WAIT_RETRY_MS: u32 = 1_000;
/// Relay commands waiting for the driver.
const COMMANDS_MAX: usize = 1_024;

/// One side of a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Side {
    device: PublicKey,
    addr: Addr,
    channel: u16,
}

#[derive(Clone, Debug)]
struct Binding {
    session: u64,
    a: Side,
    /// `None` while the partner has not asked yet (a half).
    b: Option<Side>,
    /// The peer device `a` asked for.
    peer: PublicKey,
    expires: Instant,
}

impl Binding {
    fn sides(&self) -> impl Iterator<Item = &Side> {
        std::iter::once(&self.a).chain(self.b.as_ref())
    }

    fn involves(&self, device: &PublicKey) -> bool {
        self.sides().any(|side| side.device == *device)
    }
}

/// A supernode's relay bindings.
#[derive(Clone, Debug, Default)]
pub struct Relays {
    bindings: Vec<Binding>,
    commands: VecDeque<PathCommand>,
}

impl Relays {
    /// Bindings held, halves waiting for their partner included.
    pub(crate) fn len(&self) -> usize {
        self.bindings.len()
    }

    pub(crate) fn poll_command(&mut self) -> Option<PathCommand> {
        self.commands.pop_front()
    }

    fn command(&mut self, command: PathCommand) {
        if self.commands.len() < COMMANDS_MAX {
            self.commands.push_back(command);
        }
    }

    fn channel_taken(&self, channel: u16) -> bool {
        self.bindings
            .iter()
            .any(|binding| binding.sides().any(|side| side.channel == channel))
    }

    fn free_channel(&self, io: &mut Io) -> u16 {
        let span = u32::from(CHANNEL_MAX - CHANNEL_MIN) + 1;
        loop {
            // Fits: the remainder is below the span (16,384).
            let channel = CHANNEL_MIN + (io.random_u64() % u64::from(span)) as u16;
            // At most 2 × BINDINGS_MAX = half of the 16,384 are taken.
            if !self.channel_taken(channel) {
                return channel;
            }
        }
    }

    /// A device's request, arriving from `from`. `own` is this relay's
    /// address (a request for another relay is refused); `attached`:
    /// `from` is a client attached here with the requesting device key.
    pub(crate) fn on_request(
        &mut self,
        io: &mut Io,
        from: Addr,
        own: Addr,
        attached: bool,
        body: RelayRequestBody,
        signature: &Signature,
    ) {
        let signed = verify(
            io.mode,
            &body.from_device,
            domain::RELAY,
            &to_signing_bytes(&body),
            signature,
        );
        if body.relay != own || body.from_device == body.to_device || signed.is_err() {
            io.stats.messages_unexpected += 1;
            return;
        }
        let now = io.now.instant;
        let lifetime_ms = u64::from(io.params.relay_lifetime_s) * 1_000;
        let existing = self.bindings.iter().position(|binding| {
            binding.session == body.session && binding.involves(&body.from_device)
        });
        if let Some(index) = existing {
            let binding = &mut self.bindings[index];
            let side = binding
                .sides()
                .find(|side| side.device == body.from_device)
                .copied();
            match side {
                // A refresh (or a re-sent request) from the bound address.
                Some(side) if side.addr == from => {
                    if binding.b.is_some() {
                        binding.expires = now.add_ms(lifetime_ms);
                        self.grant(io, side, body.session);
                    }
                }
                // Another address claims a bound side: only an on-path
                // replay can; the first address keeps it.
                _ => io.stats.messages_unexpected += 1,
            }
            return;
        }
        let partner = self.bindings.iter().position(|binding| {
            binding.session == body.session
                && binding.b.is_none()
                && binding.a.device == body.to_device
                && binding.peer == body.from_device
        });
        let Some(partner) = partner else {
            if attached {
                self.add_half(io, from, body);
            } else {
                // The peer whose client opens the half has not asked yet.
                refuse(io, from, body.session, PARTNER_WAIT_RETRY_MS);
            }
            return;
        };
        let side = Side {
            device: body.from_device,
            addr: from,
            channel: self.free_channel(io),
        };
        let binding = &mut self.bindings[partner];
        binding.b = Some(side);
        binding.expires = now.add_ms(lifetime_ms);
        let a = binding.a;
        self.command(PathCommand::RelayBind {
            a: (a.addr, a.channel),
            b: (side.addr, side.channel),
        });
        self.grant(io, a, body.session);
        self.grant(io, side, body.session);
    }

    fn add_half(&mut self, io: &mut Io, from: Addr, body: RelayRequestBody) {
        let held = self
            .bindings
            .iter()
            .filter(|binding| binding.involves(&body.from_device))
            .count();
        let room = io.params.relay_bindings_max.min(BINDINGS_MAX);
        if self.bindings.len() >= room || held >= BINDINGS_PER_DEVICE_MAX {
            io.stats.relay_refused += 1;
            refuse(io, from, body.session, REFUSED_RETRY_MS);
            return;
        }
        let a = Side {
            device: body.from_device,
            addr: from,
            channel: self.free_channel(io),
        };
        self.bindings.push(Binding {
            session: body.session,
            a,
            b: None,
            peer: body.to_device,
            expires: io.now.instant.add_ms(HALF_WAIT_MS),
        });
    }

    fn grant(&self, io: &mut Io, side: Side, session: u64) {
        io.send(
            side.addr,
            &Message::RelayGranted {
                session,
                channel: side.channel,
                lifetime_s: io.params.relay_lifetime_s,
            },
        );
    }

    /// Drops lapsed bindings and halves (their channels unbound).
    pub(crate) fn expire(&mut self, now: Instant) {
        let mut lapsed = Vec::new();
        self.bindings.retain(|binding| {
            let keep = binding.expires > now;
            if !keep && binding.b.is_some() {
                lapsed.push((binding.a.addr, binding.a.channel));
            }
            keep
        });
        for a in lapsed {
            self.command(PathCommand::RelayUnbind { a });
        }
    }
}

fn refuse(io: &mut Io, to: Addr, session: u64, retry_after_ms: u32) {
    io.send(
        to,
        &Message::RelayRefused {
            session,
            retry_after_ms,
        },
    );
}

/// The request a device sends to `relay` for its punching session.
pub(crate) fn request(io: &Io, session: u64, to_device: PublicKey, relay: Addr) -> Message {
    let body = RelayRequestBody {
        session,
        from_device: io.identity.keypair.public(),
        to_device,
        relay,
    };
    let signature = io
        .identity
        .keypair
        .sign(domain::RELAY, &to_signing_bytes(&body));
    Message::RelayRequest { body, signature }
}
