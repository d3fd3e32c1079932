//! The relay data plane on real sockets: frames forwarded between bound
//! channels only, each direction held to its byte rate, and a whole QUIC
//! connection (TLS pinned to the peer's key) running between two nodes
//! through a third one's relay, addressed by virtual addresses.

use peerline_core::{CryptoMode, Keypair};
use peerline_net::demux::{DemuxHandle, DemuxLimits};
use peerline_net::quic::{client_config, demux_endpoint};
use peerline_net::relay::table::{is_virtual, BindError, RelayLimits};
use peerline_net::relay::{self, RelayFrame};
use peerline_net::{peer_key, NodeCertificate, QuicLimits};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

const WITHIN: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn node(seed: u8, relay: RelayLimits) -> (quinn::Endpoint, DemuxHandle, NodeCertificate) {
    let certificate =
        NodeCertificate::new(&Keypair::from_seed(CryptoMode::Full, [seed; 32])).unwrap();
    let limits = DemuxLimits {
        relay,
        ..DemuxLimits::default()
    };
    let (endpoint, demux) = demux_endpoint(
        std::net::UdpSocket::bind(loopback()).unwrap(),
        &certificate,
        QuicLimits::default(),
        limits,
    )
    .unwrap();
    (endpoint, demux, certificate)
}

fn frame(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    relay::encode(RelayFrame { channel, payload }, &mut bytes).unwrap();
    bytes
}

async fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (len, from) = tokio::time::timeout(WITHIN, socket.recv_from(&mut buf))
        .await
        .expect("a datagram arrives")
        .unwrap();
    (buf[..len].to_vec(), from)
}

async fn counted(demux: &DemuxHandle, done: impl Fn(&peerline_net::DemuxStats) -> bool) {
    tokio::time::timeout(WITHIN, async {
        while !done(&demux.stats()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the relay counts what it got");
}

#[tokio::test]
async fn frames_go_between_bound_channels_only() {
    let (endpoint, relay_node, _) = node(1, RelayLimits::default());
    let relay_addr = endpoint.local_addr().unwrap();
    let a = UdpSocket::bind(loopback()).await.unwrap();
    let b = UdpSocket::bind(loopback()).await.unwrap();
    let stranger = UdpSocket::bind(loopback()).await.unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());

    // Before any binding, a frame goes nowhere.
    a.send_to(&frame(0x8001, b"early"), relay_addr)
        .await
        .unwrap();
    counted(&relay_node, |s| s.relay_frames_unbound == 1).await;

    relay_node
        .relay_bind((a_addr, 0x8001), (b_addr, 0x9002))
        .unwrap();
    assert_eq!(
        relay_node.relay_bind((a_addr, 0x8001), (stranger.local_addr().unwrap(), 0x8003)),
        Err(BindError::Taken {
            addr: a_addr,
            channel: 0x8001
        })
    );
    a.send_to(&frame(0x8001, b"to b"), relay_addr)
        .await
        .unwrap();
    let (bytes, from) = receive(&b).await;
    assert_eq!(from, relay_addr);
    assert_eq!(bytes, frame(0x9002, b"to b"), "b's channel, same payload");
    b.send_to(&frame(0x9002, b"to a"), relay_addr)
        .await
        .unwrap();
    assert_eq!(receive(&a).await.0, frame(0x8001, b"to a"));

    // A stranger using a's channel, and a on a channel not its own, are
    // dropped; so is a malformed frame.
    stranger
        .send_to(&frame(0x8001, b"spoof"), relay_addr)
        .await
        .unwrap();
    a.send_to(&frame(0x9002, b"wrong channel"), relay_addr)
        .await
        .unwrap();
    a.send_to(&frame(0x8001, b"x")[..3], relay_addr)
        .await
        .unwrap();
    counted(&relay_node, |s| {
        s.relay_frames_unbound == 3 && s.relay_frames_malformed == 1
    })
    .await;
    let stats = relay_node.stats();
    assert_eq!(stats.relay_frames_forwarded, 2);
    assert_eq!(stats.quic_datagrams, 0);

    relay_node.relay_unbind((b_addr, 0x9002));
    assert_eq!(relay_node.relay_usage(), (0, 0));
    a.send_to(&frame(0x8001, b"after unbind"), relay_addr)
        .await
        .unwrap();
    counted(&relay_node, |s| s.relay_frames_unbound == 4).await;
}

#[tokio::test]
async fn a_direction_over_its_byte_rate_is_cut() {
    let limits = RelayLimits {
        bytes_per_s: 1_000,
        burst_bytes: 5_000,
        ..RelayLimits::default()
    };
    let (endpoint, relay_node, _) = node(2, limits);
    let relay_addr = endpoint.local_addr().unwrap();
    let a = UdpSocket::bind(loopback()).await.unwrap();
    let b = UdpSocket::bind(loopback()).await.unwrap();
    relay_node
        .relay_bind(
            (a.local_addr().unwrap(), 0x8001),
            (b.local_addr().unwrap(), 0x8002),
        )
        .unwrap();
    // 20 frames of 1,004 bytes against a 5,000-byte burst (+1,000/s).
    let payload = [7u8; 1_000];
    for _ in 0..20 {
        a.send_to(&frame(0x8001, &payload), relay_addr)
            .await
            .unwrap();
    }
    counted(&relay_node, |s| {
        s.relay_frames_forwarded + s.relay_frames_over_rate == 20
    })
    .await;
    let stats = relay_node.stats();
    assert!(
        (4..=6).contains(&stats.relay_frames_forwarded),
        "{} forwarded",
        stats.relay_frames_forwarded
    );
    // The other direction has a bucket of its own.
    b.send_to(&frame(0x8002, &payload), relay_addr)
        .await
        .unwrap();
    assert_eq!(receive(&a).await.0.len(), 1_004);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_runs_end_to_end_through_a_relay() {
    let (relay_endpoint, relay_node, _) = node(3, RelayLimits::default());
    let (alice, alice_demux, alice_cert) = node(4, RelayLimits::default());
    let (bob, bob_demux, _) = node(5, RelayLimits::default());
    let relay_addr = relay_endpoint.local_addr().unwrap();
    relay_node
        .relay_bind(
            (alice.local_addr().unwrap(), 0x8010),
            (bob.local_addr().unwrap(), 0x8020),
        )
        .unwrap();
    let bob_seen_by_alice = alice_demux.open_relayed_path(relay_addr, 0x8010).unwrap();
    let alice_seen_by_bob = bob_demux.open_relayed_path(relay_addr, 0x8020).unwrap();
    assert!(is_virtual(&bob_seen_by_alice) && is_virtual(&alice_seen_by_bob));

    let bob_key = Keypair::from_seed(CryptoMode::Full, [5; 32]).public();
    let accepting = tokio::spawn(async move {
        let connection = bob.accept().await.unwrap().await.unwrap();
        let mut stream = connection.accept_uni().await.unwrap();
        let bytes = stream.read_to_end(1 << 20).await.unwrap();
        (
            connection.remote_address(),
            peer_key(&connection),
            bytes,
            bob,
        )
    });
    let config = client_config(&alice_cert, Some(bob_key), QuicLimits::default()).unwrap();
    let connection = tokio::time::timeout(
        WITHIN,
        alice
            .connect_with(config, bob_seen_by_alice, "peerline")
            .unwrap(),
    )
    .await
    .expect("the handshake finishes through the relay")
    .unwrap();
    assert_eq!(peer_key(&connection), Some(bob_key));
    // 200 kB: many packets, full-size ones included.
    let message: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let mut stream = connection.open_uni().await.unwrap();
    stream.write_all(&message).await.unwrap();
    stream.finish().unwrap();
    let (remote, alice_key, received, _bob) = tokio::time::timeout(WITHIN, accepting)
        .await
        .expect("bob reads the whole stream")
        .unwrap();
    assert_eq!(received, message);
    assert_eq!(remote.ip().to_canonical(), alice_seen_by_bob.ip());
    assert_eq!(
        alice_key,
        Some(Keypair::from_seed(CryptoMode::Full, [4; 32]).public())
    );
    let stats = relay_node.stats();
    assert!(stats.relay_frames_forwarded > 150, "{stats:?}");
    assert_eq!(stats.quic_datagrams, 0, "the relay's own QUIC saw nothing");
    assert!(alice_demux.stats().relay_frames_sent > 150);
    assert!(bob_demux.stats().relay_frames_delivered > 150);
}
