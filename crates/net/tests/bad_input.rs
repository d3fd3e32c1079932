//! A node keeps serving everyone else when a peer sends it garbage: junk
//! UDP datagrams, malformed and empty frames, an oversized frame, a stream
//! that never finishes (slowloris), and a dial that pins another key.

use peerline_core::{CryptoMode, DeviceIdentity, Event, Keypair, Params, RolePolicy};
use peerline_net::clock::wall_clock_s;
use peerline_net::loopback::{clients_attached_to_two, LoopbackNetwork, LoopbackPlan, Role};
use peerline_net::quic::{client_config, endpoint};
use peerline_net::{
    DriverConfig, DriverLimits, LinkLimits, NodeCertificate, NodeStatus, QuicLimits, RunningNode,
};
use peerline_proto::{Contact, MESSAGE_LEN_MAX};
use rand_core::SeedableRng;
use rand_pcg::Pcg64Mcg;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

const STEP_WITHIN: Duration = Duration::from_secs(15);
const TEST_WITHIN: Duration = Duration::from_secs(50);
const FRAME_TIMEOUT: Duration = Duration::from_millis(500);

fn plan(seed: u64) -> LoopbackPlan {
    LoopbackPlan {
        supernodes: 2,
        clients: 2,
        params: Params {
            id_puzzle_difficulty_bits: 8,
            presence_debounce_ms: 200,
            ..Params::default()
        },
        limits: DriverLimits {
            links: LinkLimits {
                quic: QuicLimits {
                    idle_timeout: Duration::from_secs(5),
                    ..QuicLimits::default()
                },
                frame_timeout: FRAME_TIMEOUT,
                ..LinkLimits::default()
            },
            ..DriverLimits::default()
        },
        seed,
        ip: LoopbackPlan::IPV4,
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// A stranger with a valid key-bound certificate, connected to `to`.
async fn stranger(to: SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
    let certificate =
        NodeCertificate::new(&Keypair::from_seed(CryptoMode::Full, [66; 32])).unwrap();
    let limits = QuicLimits::default();
    let endpoint = endpoint(UdpSocket::bind(loopback()).unwrap(), &certificate, limits).unwrap();
    let config = client_config(&certificate, None, limits).unwrap();
    let connection = endpoint
        .connect_with(config, to, "peerline")
        .unwrap()
        .await
        .expect("a stranger with a valid certificate may connect");
    (endpoint, connection)
}

async fn send_frame(connection: &quinn::Connection, bytes: &[u8]) {
    let mut stream = connection.open_uni().await.unwrap();
    // An oversized frame is refused mid-way: the write may fail, by design.
    let _ = stream.write_all(bytes).await;
    let _ = stream.finish();
}

async fn status(network: &LoopbackNetwork, index: usize) -> NodeStatus {
    network.peers[index].control.status().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_peer_is_dropped_and_the_node_keeps_serving() {
    tokio::time::timeout(TEST_WITHIN, garbage_scenario())
        .await
        .expect("the scenario finishes within its bound");
}

async fn garbage_scenario() {
    let network = LoopbackNetwork::start(plan(11)).await.unwrap();
    network
        .wait_until("both clients attached to 2", STEP_WITHIN, |s| {
            clients_attached_to_two(&network, s)
        })
        .await
        .unwrap();
    let victim = network.indices(Role::Supernode)[0];
    let victim_addr = network.peers[victim].addr;
    let before = status(&network, victim).await;

    // Junk UDP datagrams: the port's demultiplexer drops them (first byte
    // 7 and empty: no protocol of ours) before QUIC or the node sees them.
    let junk = UdpSocket::bind(loopback()).unwrap();
    for length in [0usize, 1, 7, 1200, 1500] {
        let bytes: Vec<u8> = (0..length).map(|i| (i * 31 + 7) as u8).collect();
        junk.send_to(&bytes, victim_addr).unwrap();
    }

    let (_endpoint, connection) = stranger(victim_addr).await;
    // Malformed frames: version 1 and then nonsense, and an empty one.
    send_frame(&connection, &[1, 0xff, 0xff, 0xff, 0xff, 0xff]).await;
    send_frame(&connection, &[]).await;
    // One byte over the bound.
    send_frame(&connection, &vec![1u8; MESSAGE_LEN_MAX + 1]).await;
    // Slowloris: a stream that starts a frame and never finishes it.
    let mut slow = connection.open_uni().await.unwrap();
    slow.write_all(&[1, 2, 3]).await.unwrap();

    network
        .wait_until("the victim counted every bad frame", STEP_WITHIN, |s| {
            s[victim].as_ref().is_some_and(|now| {
                now.demux.unknown_dropped >= before.demux.unknown_dropped + 5
                    && now.node.datagrams_malformed >= before.node.datagrams_malformed + 2
                    && now.links.frames_oversized == before.links.frames_oversized + 1
                    && now.links.frames_broken > before.links.frames_broken
            })
        })
        .await
        .unwrap();
    // The stranger stays connected: bad frames cost frames, not the peer.
    assert!(connection.close_reason().is_none());
    drop(slow);

    // Everyone else is still served: attachments hold and a message flows.
    let clients = network.indices(Role::Client);
    let (sender, recipient) = (clients[0], clients[1]);
    network.peers[sender]
        .control
        .send_message(
            network.peers[recipient].device_key,
            network.peers[recipient].account,
            b"still here".to_vec(),
        )
        .await
        .unwrap();
    network
        .wait_event(
            recipient,
            "message after the garbage",
            STEP_WITHIN,
            |e| matches!(e, Event::MessageReceived { payload, .. } if payload == b"still here"),
        )
        .await
        .unwrap();
    let statuses = network.statuses().await;
    assert!(clients_attached_to_two(&network, &statuses));
    assert!(statuses[victim].as_ref().unwrap().attached_clients == 2);
    network.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supernode_that_does_not_prove_the_pinned_key_is_never_used() {
    tokio::time::timeout(TEST_WITHIN, pinned_scenario())
        .await
        .expect("the scenario finishes within its bound");
}

async fn pinned_scenario() {
    let network = LoopbackNetwork::start(plan(12)).await.unwrap();
    network
        .wait_until("both clients attached to 2", STEP_WITHIN, |s| {
            clients_attached_to_two(&network, s)
        })
        .await
        .unwrap();
    let supernode = network.indices(Role::Supernode)[0];
    let real = network.peers[supernode].contact.unwrap();
    let before = status(&network, supernode).await;
    // A client told that this address belongs to another key (the real
    // contact's key with one bit flipped: as if an impostor took the address).
    let mut wrong_key = real.key;
    wrong_key.0[0] ^= 1;
    let impostor = Contact {
        key: wrong_key,
        ..real
    };
    // A dial that got no answer would fail only after this long; failing
    // well within it means the handshake was refused.
    let mut limits = plan(13).limits;
    limits.links.quic.idle_timeout = Duration::from_secs(30);
    let config = DriverConfig {
        listen: loopback(),
        advertised: None,
        params: Arc::new(plan(13).params),
        identity: DeviceIdentity::new_account(
            CryptoMode::Full,
            &mut Pcg64Mcg::seed_from_u64(13),
            wall_clock_s(),
            3_600,
        ),
        policy: RolePolicy::ClientOnly,
        bootstrap: vec![impostor],
        rng_seed: Some(13),
        limits,
        persist: None,
    };
    let (client, mut events) = RunningNode::start(config).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let now = client.control.status().await.unwrap();
            if now.links.dials_failed >= 1 {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the dial to the impostor fails");
    assert!(refused.attached.is_empty());
    // The node behind the address saw a handshake fail, and no attachment
    // came of it: it still serves exactly its two clients.
    let after = status(&network, supernode).await;
    assert!(after.links.connections_refused > before.links.connections_refused);
    assert_eq!(after.attached_clients, 2);
    while let Ok(event) = events.try_recv() {
        assert!(!matches!(event, Event::Attached { .. }), "{event:?}");
    }
    let _ = client.shutdown().await;
    network.shutdown().await;
}
