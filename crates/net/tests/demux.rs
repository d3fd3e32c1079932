//! One port, three protocols: STUN Binding answered on a node's QUIC port
//! (and asked from it), QUIC unharmed alongside, relay frames on no bound
//! channel counted and dropped, garbage counted and dropped, STUN rate limits, and every
//! QUIC datagram an endpoint sends keeps the fixed bit set.

use peerline_core::{CryptoMode, Event, Keypair, Params};
use peerline_net::demux::{DemuxLimits, DemuxSocket};
use peerline_net::loopback::{clients_attached_to_two, LoopbackNetwork, LoopbackPlan, Role};
use peerline_net::quic::{client_config, endpoint_on};
use peerline_net::relay::{self, RelayFrame};
use peerline_net::stun::{binding_request, handle_datagram, StunInput};
use peerline_net::{
    stun_binding, DriverLimits, LinkLimits, NodeCertificate, NodeStatus, QuicLimits, StunError,
    StunRetransmit,
};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::UdpSocket;

const STEP_WITHIN: Duration = Duration::from_secs(15);
const TEST_WITHIN: Duration = Duration::from_secs(50);

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Retransmissions quick enough for loopback tests (RFC schedule shape).
fn quick_retransmit() -> StunRetransmit {
    StunRetransmit {
        rto_initial: Duration::from_millis(50),
        requests_max: 5,
        last_wait_rto_multiple: 4,
    }
}

fn plan(seed: u64, demux: DemuxLimits) -> LoopbackPlan {
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
                ..LinkLimits::default()
            },
            demux,
            ..DriverLimits::default()
        },
        seed,
        ip: LoopbackPlan::IPV4,
    }
}

async fn status(network: &LoopbackNetwork, index: usize) -> NodeStatus {
    network.peers[index].control.status().await.unwrap()
}

async fn attached_network(seed: u64, demux: DemuxLimits) -> LoopbackNetwork {
    let network = LoopbackNetwork::start(plan(seed, demux)).await.unwrap();
    network
        .wait_until("both clients attached to 2", STEP_WITHIN, |s| {
            clients_attached_to_two(&network, s)
        })
        .await
        .unwrap();
    network
}

async fn message_flows(network: &LoopbackNetwork, text: &'static [u8]) {
    let clients = network.indices(Role::Client);
    let (sender, recipient) = (clients[0], clients[1]);
    network.peers[sender]
        .control
        .send_message(
            network.peers[recipient].device_key,
            network.peers[recipient].account,
            text.to_vec(),
        )
        .await
        .unwrap();
    network
        .wait_event(
            recipient,
            "a message over QUIC",
            STEP_WITHIN,
            |e| matches!(e, Event::MessageReceived { payload, .. } if payload == text),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stun_quic_and_garbage_share_the_port() {
    tokio::time::timeout(TEST_WITHIN, shared_port_scenario())
        .await
        .expect("the scenario finishes within its bound");
}

async fn shared_port_scenario() {
    let network = attached_network(21, DemuxLimits::default()).await;
    let supernode = network.indices(Role::Supernode)[0];
    let supernode_addr = network.peers[supernode].addr;
    let before = status(&network, supernode).await;
    assert!(
        before.demux.quic_datagrams > 0,
        "QUIC went through the demux"
    );

    // A plain UDP socket learns its own address from the node's QUIC port.
    let plain = UdpSocket::bind(loopback()).await.unwrap();
    let reflexive = stun_binding(&plain, supernode_addr, quick_retransmit())
        .await
        .expect("the node answers Binding requests");
    assert_eq!(reflexive, plain.local_addr().unwrap());

    // A running client asks from its own port, through its driver.
    let client = network.indices(Role::Client)[0];
    let from_node = network.peers[client]
        .control
        .stun_binding(supernode_addr)
        .await
        .expect("the client's Binding transaction succeeds");
    assert_eq!(from_node, network.peers[client].addr);
    let client_status = status(&network, client).await;
    assert_eq!(client_status.demux.stun_responses_matched, 1);

    // Garbage: empty, first bytes of no protocol, malformed STUN, relay
    // frames (no relay attached: counted and dropped), a bad relay frame.
    let junk = std::net::UdpSocket::bind(loopback()).unwrap();
    let unknown: Vec<Vec<u8>> = vec![
        vec![],
        vec![4],
        vec![7; 1200],
        vec![63, 1, 2, 3],
        (0..1500).map(|i| (i * 31 + 20) as u8 % 60 + 4).collect(),
    ];
    for datagram in &unknown {
        junk.send_to(datagram, supernode_addr).unwrap();
    }
    let (_, request) = binding_request();
    let malformed_stun: Vec<Vec<u8>> = vec![
        request[..10].to_vec(),
        [&request[..], &[0, 0, 0, 0]].concat(),
        vec![0; 20],
        vec![1, 1, 0, 0, 0, 0, 0, 0],
    ];
    for datagram in &malformed_stun {
        junk.send_to(datagram, supernode_addr).unwrap();
    }
    let mut frame = Vec::new();
    let payload = [0xc3; 40];
    relay::encode(
        RelayFrame {
            channel: 0x8001,
            payload: &payload,
        },
        &mut frame,
    )
    .unwrap();
    junk.send_to(&frame, supernode_addr).unwrap();
    junk.send_to(&frame[..10], supernode_addr).unwrap();

    network
        .wait_until(
            "the supernode counted every bad datagram",
            STEP_WITHIN,
            |s| {
                s[supernode].as_ref().is_some_and(|now| {
                    now.demux.unknown_dropped >= before.demux.unknown_dropped + unknown.len() as u64
                        && now.demux.stun_malformed
                            >= before.demux.stun_malformed + malformed_stun.len() as u64
                        && now.demux.relay_frames_unbound == before.demux.relay_frames_unbound + 1
                        && now.demux.relay_frames_malformed
                            == before.demux.relay_frames_malformed + 1
                })
            },
        )
        .await
        .unwrap();
    let after = status(&network, supernode).await;
    // Two Binding requests were answered (the plain socket's and the
    // client's, each at least once); malformed ones never are.
    assert!(after.demux.stun_answered >= before.demux.stun_answered + 2);
    assert_eq!(after.demux.stun_rate_limited, 0);
    // The garbage never reached QUIC or the node: nothing else counted it.
    assert_eq!(
        after.node.datagrams_malformed,
        before.node.datagrams_malformed
    );

    // The node keeps serving: a message still flows over QUIC.
    message_flows(&network, b"after the garbage").await;
    let statuses = network.statuses().await;
    assert!(clients_attached_to_two(&network, &statuses));
    network.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_source_is_limited_and_others_are_still_answered() {
    tokio::time::timeout(TEST_WITHIN, flood_scenario())
        .await
        .expect("the scenario finishes within its bound");
}

async fn flood_scenario() {
    // No refill: each source gets exactly its burst, whatever the timing.
    let demux = DemuxLimits {
        stun_source_rate_per_s: 0,
        stun_source_burst: 3,
        ..DemuxLimits::default()
    };
    let network = attached_network(22, demux).await;
    let supernode = network.indices(Role::Supernode)[0];
    let supernode_addr = network.peers[supernode].addr;
    let before = status(&network, supernode).await;

    let flooder = std::net::UdpSocket::bind(loopback()).unwrap();
    let flood = 100u64;
    for index in 0..flood {
        let (_, request) = binding_request();
        flooder.send_to(&request, supernode_addr).unwrap();
        if index % 20 == 19 {
            // Room for the node to read: the test counts every request,
            // so none may overflow the socket's receive buffer.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    network
        .wait_until("the flood is counted", STEP_WITHIN, |s| {
            s[supernode].as_ref().is_some_and(|now| {
                let answered = now.demux.stun_answered - before.demux.stun_answered;
                let limited = now.demux.stun_rate_limited - before.demux.stun_rate_limited;
                answered + limited + now.demux.stun_send_failed - before.demux.stun_send_failed
                    == flood
            })
        })
        .await
        .unwrap();
    let after = status(&network, supernode).await;
    assert_eq!(after.demux.stun_answered - before.demux.stun_answered, 3);
    assert_eq!(
        after.demux.stun_rate_limited - before.demux.stun_rate_limited,
        flood - 3
    );
    // Another source (another IP: buckets are per source IP) is answered.
    let other = UdpSocket::bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 0)))
        .await
        .unwrap();
    let reflexive = stun_binding(&other, supernode_addr, quick_retransmit())
        .await
        .expect("another source is not starved");
    assert_eq!(reflexive, other.local_addr().unwrap());
    // The flooder is now refused: its transaction times out.
    let flooder = UdpSocket::from_std({
        flooder.set_nonblocking(true).unwrap();
        flooder
    })
    .unwrap();
    let refused = stun_binding(&flooder, supernode_addr, quick_retransmit()).await;
    assert!(matches!(
        refused,
        Err(StunError::Timeout { requests: 5, .. })
    ));
    // And QUIC is untouched by the limits.
    message_flows(&network, b"after the flood").await;
    network.shutdown().await;
}

/// A STUN server on a plain socket that ignores the first `ignore`
/// requests; returns how many requests it saw.
async fn flaky_server(socket: UdpSocket, ignore: usize, answer: bool) -> usize {
    let mut buffer = [0u8; 1500];
    let mut seen = 0;
    while let Ok(Ok((length, from))) =
        tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buffer)).await
    {
        seen += 1;
        if !answer || seen <= ignore {
            continue;
        }
        if let StunInput::Answer(response) = handle_datagram(&buffer[..length], from, 3) {
            socket.send_to(&response, from).await.unwrap();
            break;
        }
    }
    seen
}

#[tokio::test]
async fn a_binding_transaction_retransmits_and_gives_up_within_its_bound() {
    let server = UdpSocket::bind(loopback()).await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let serving = tokio::spawn(flaky_server(server, 2, true));
    let client = UdpSocket::bind(loopback()).await.unwrap();
    let reflexive = stun_binding(&client, server_addr, quick_retransmit())
        .await
        .expect("the third request is answered");
    assert_eq!(reflexive, client.local_addr().unwrap());
    assert_eq!(serving.await.unwrap(), 3);

    let silent = UdpSocket::bind(loopback()).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let listening = tokio::spawn(flaky_server(silent, 0, false));
    let outcome = stun_binding(&client, silent_addr, quick_retransmit()).await;
    assert_eq!(
        outcome,
        Err(StunError::Timeout {
            server: silent_addr,
            requests: 5
        })
    );
    assert_eq!(listening.await.unwrap(), 5);
}

/// A socket that records the first byte of every datagram it sends.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn AsyncUdpSocket>,
    first_bytes: Arc<Mutex<Vec<u8>>>,
}

impl AsyncUdpSocket for Recording {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        let sent = self.inner.try_send(transmit);
        if sent.is_ok() {
            let segment = transmit.segment_size.unwrap_or(transmit.contents.len());
            let mut first_bytes = self.first_bytes.lock().unwrap();
            for datagram in transmit.contents.chunks(segment.max(1)) {
                first_bytes.push(datagram[0]);
            }
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }
}

fn recorded_endpoint(seed: u8) -> (quinn::Endpoint, NodeCertificate, Arc<Mutex<Vec<u8>>>) {
    let certificate =
        NodeCertificate::new(&Keypair::from_seed(CryptoMode::Full, [seed; 32])).unwrap();
    let runtime = quinn::default_runtime().unwrap();
    let inner = runtime
        .wrap_udp_socket(std::net::UdpSocket::bind(loopback()).unwrap())
        .unwrap();
    let (demux, _handle) = DemuxSocket::new(inner, DemuxLimits::default());
    let first_bytes = Arc::new(Mutex::new(Vec::new()));
    let socket = Recording {
        inner: Arc::new(demux),
        first_bytes: first_bytes.clone(),
    };
    let endpoint = endpoint_on(Arc::new(socket), &certificate, QuicLimits::default()).unwrap();
    (endpoint, certificate, first_bytes)
}

#[tokio::test]
async fn every_quic_datagram_sent_keeps_the_fixed_bit() {
    let (server, _, server_bytes) = recorded_endpoint(41);
    let (client, client_certificate, client_bytes) = recorded_endpoint(42);
    let server_addr = server.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let connection = server.accept().await.unwrap().await.unwrap();
        // Echo a few frames back on streams of our own.
        for _ in 0..20 {
            let mut stream = connection.accept_uni().await.unwrap();
            let frame = stream.read_to_end(64 * 1024).await.unwrap();
            let mut back = connection.open_uni().await.unwrap();
            back.write_all(&frame).await.unwrap();
            back.finish().unwrap();
        }
        connection.closed().await;
        server
    });
    let config = client_config(&client_certificate, None, QuicLimits::default()).unwrap();
    let connection = client
        .connect_with(config, server_addr, "peerline")
        .unwrap()
        .await
        .unwrap();
    for index in 0..20u8 {
        let mut stream = connection.open_uni().await.unwrap();
        stream.write_all(&vec![index; 3_000]).await.unwrap();
        stream.finish().unwrap();
        let mut back = connection.accept_uni().await.unwrap();
        assert_eq!(back.read_to_end(64 * 1024).await.unwrap().len(), 3_000);
    }
    connection.close(0u32.into(), b"done");
    let server = tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .unwrap()
        .unwrap();
    server.wait_idle().await;
    client.wait_idle().await;

    let mut first_bytes = client_bytes.lock().unwrap().clone();
    first_bytes.extend(server_bytes.lock().unwrap().iter());
    assert!(first_bytes.len() >= 40, "{} datagrams", first_bytes.len());
    // Long headers (handshake) and short headers (1-RTT) were both sent.
    assert!(first_bytes.iter().any(|&b| b >= 0xc0));
    assert!(first_bytes.iter().any(|&b| (0x40..0x80).contains(&b)));
    for byte in first_bytes {
        assert_ne!(
            byte & 0x40,
            0,
            "a QUIC datagram without the fixed bit: {byte:#04x}"
        );
    }
}
