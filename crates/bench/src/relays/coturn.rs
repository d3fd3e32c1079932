//! coturn, driven through a TURN allocation: A allocates on the server
//! with `turn-client-proto` (long-term credentials), binds a channel to B
//! (which also installs B's permission) and then sends ChannelData, TURN's
//! fast path with the same 4-byte header as a peerline relay frame. B gets
//! the bare payload from the allocation's relayed address.
//!
//! The ChannelData datagram is built once by the TURN client (`send_to`
//! must hand back a channel transmit, or the step fails); the generator
//! then only stamps the payload, as it does for the other relays.

use super::route;
use crate::generator::Route;
use anyhow::{bail, Context};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use turn_client_proto::api::{
    DelayedMessageOrChannelSend, Transmit, TurnClientApi, TurnConfig, TurnEvent, TurnPollRet,
};
use turn_client_proto::types::{TransportType, TurnCredentials};
use turn_client_proto::udp::TurnClientUdp;

/// How long allocating and binding may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one answer before polling the client again.
const READ_TIMEOUT_MAX: Duration = Duration::from_millis(100);
const DATAGRAM_LEN_MAX: usize = 2_048;

/// The TURN server and who we are to it.
#[derive(Clone, Debug)]
pub struct TurnServer {
    pub address: SocketAddr,
    pub username: String,
    pub password: String,
    /// coturn's process, for its CPU time.
    pub pid: Option<u32>,
}

pub struct TurnAllocation {
    client: TurnClientUdp,
    server: TurnServer,
    epoch: Instant,
}

/// The TURN client's time: since the run's epoch.
fn now(epoch: Instant) -> turn_client_proto::stun::Instant {
    turn_client_proto::stun::Instant::from_std(epoch)
}

/// Allocates on `server` from A's socket and binds a channel to `b`.
pub fn allocate(
    sender: &UdpSocket,
    server: &TurnServer,
    b: SocketAddr,
    payload_len: usize,
    epoch: Instant,
) -> anyhow::Result<(TurnAllocation, Route)> {
    let local = sender.local_addr()?;
    let credentials = TurnCredentials::new(&server.username, &server.password);
    let mut client = TurnClientUdp::allocate(local, server.address, TurnConfig::new(credentials));
    let relayed = drive_until_bound(&mut client, sender, b, epoch).with_context(|| {
        format!(
            "setting up a TURN channel on {} (is coturn running? bench/relay.sh starts one)",
            server.address
        )
    })?;
    let payload = vec![0u8; payload_len];
    let transmit = client
        .send_to(TransportType::Udp, b, payload.as_slice(), now(epoch))
        .context("sending through the allocation")?
        .context("the TURN client sent nothing")?;
    if !matches!(transmit.data, DelayedMessageOrChannelSend::Channel(_)) {
        bail!("the TURN client would not use the bound channel (ChannelData)");
    }
    if transmit.to != server.address {
        bail!("the TURN client sends to {}, not the server", transmit.to);
    }
    let datagram = transmit.build().data;
    let header_len = datagram.len() - payload_len;
    let allocation = TurnAllocation {
        client,
        server: server.clone(),
        epoch,
    };
    let route = route(
        server.address,
        &datagram[..header_len],
        payload_len,
        Vec::new(),
        relayed,
    );
    Ok((allocation, route))
}

/// Runs the client's transactions (allocate, then bind a channel to `b`)
/// over `socket` and returns the relayed address.
fn drive_until_bound(
    client: &mut TurnClientUdp,
    socket: &UdpSocket,
    b: SocketAddr,
    epoch: Instant,
) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let local = socket.local_addr()?;
    let mut buffer = vec![0u8; DATAGRAM_LEN_MAX];
    let mut relayed = None;
    loop {
        if Instant::now() > deadline {
            bail!("no answer within {SETUP_TIMEOUT:?}");
        }
        flush(client, socket, epoch)?;
        while let Some(event) = client.poll_event() {
            match event {
                TurnEvent::AllocationCreated(TransportType::Udp, address) => {
                    relayed = Some(address);
                    client.bind_channel(TransportType::Udp, b, now(epoch))?;
                }
                TurnEvent::ChannelCreated(TransportType::Udp, peer) if peer == b => {
                    return relayed.context("a channel before an allocation");
                }
                TurnEvent::AllocationCreateFailed(_)
                | TurnEvent::ChannelCreateFailed(..)
                | TurnEvent::PermissionCreateFailed(..) => bail!("the server refused: {event:?}"),
                _ => {}
            }
        }
        flush(client, socket, epoch)?;
        let wait = match client.poll(now(epoch)) {
            TurnPollRet::WaitUntil(at) => at.saturating_duration_since(now(epoch)),
            TurnPollRet::Closed => bail!("the TURN client closed"),
            _ => READ_TIMEOUT_MAX,
        };
        socket.set_read_timeout(Some(wait.clamp(Duration::from_millis(1), READ_TIMEOUT_MAX)))?;
        match socket.recv_from(&mut buffer) {
            Ok((len, from)) => {
                let transmit = Transmit::new(&buffer[..len], TransportType::Udp, from, local);
                client.recv(transmit, now(epoch));
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// Sends what the client has to send.
fn flush(client: &mut TurnClientUdp, socket: &UdpSocket, epoch: Instant) -> io::Result<()> {
    while let Some(transmit) = client.poll_transmit(now(epoch)) {
        socket.send_to(&transmit.data, transmit.to)?;
    }
    Ok(())
}

impl TurnAllocation {
    pub fn server_port(&self) -> u16 {
        self.server.address.port()
    }

    pub fn server_pid(&self) -> Option<u32> {
        self.server.pid
    }

    /// Deletes the allocation (a Refresh with lifetime 0), not waiting
    /// for the answer: the next step allocates from a new socket.
    pub fn release(mut self, sender: &UdpSocket) {
        if self.client.delete(now(self.epoch)).is_ok() {
            let _ = flush(&mut self.client, sender, self.epoch);
        }
    }
}
