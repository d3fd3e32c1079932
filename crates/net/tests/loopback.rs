//! End to end over real QUIC on 127.0.0.1: 3 supernodes and 7 clients,
//! each a driver with its own socket, key-bound TLS between them.
//!
//! Claims: every client attaches to two supernodes; a lookup finds another
//! client's presence record, naming the supernodes it is attached to; a
//! message is delivered exactly once and acknowledged; after a supernode
//! shuts down, every client is attached to two live supernodes again.

use peerline_core::{Event, Params};
use peerline_net::loopback::{
    attached_indices, clients_attached_to_two, LoopbackNetwork, LoopbackPlan, Role,
};
use peerline_net::{DriverLimits, LinkLimits, NodeStatus, QuicLimits};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

const SUPERNODES: usize = 3;
const CLIENTS: usize = 7;
/// Liveness bounds of each step: generous (loaded CI machines), and far
/// below the core's own slow timers, so a pass means the protocol worked
/// rather than that something timed out into shape.
const STEP_WITHIN: Duration = Duration::from_secs(15);
/// The whole test, whatever hangs.
const TEST_WITHIN: Duration = Duration::from_secs(50);

/// Production parameters, but with a cheap ID puzzle (its cost is a
/// one-off at supernode start; verification is one hash either way) and a
/// short presence debounce, so the test does not wait on them.
fn params() -> Params {
    Params {
        id_puzzle_difficulty_bits: 8,
        presence_debounce_ms: 200,
        ..Params::default()
    }
}

fn limits() -> DriverLimits {
    DriverLimits {
        links: LinkLimits {
            quic: QuicLimits {
                // A dial to a stopped node gives up after this.
                idle_timeout: Duration::from_secs(5),
                ..QuicLimits::default()
            },
            ..LinkLimits::default()
        },
        ..DriverLimits::default()
    }
}

/// Attachments as the running supernodes count them.
fn served_by_live(network: &LoopbackNetwork, statuses: &[Option<NodeStatus>]) -> usize {
    network
        .indices(Role::Supernode)
        .iter()
        .filter_map(|&index| statuses[index].as_ref())
        .map(|status| status.attached_clients)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_attach_look_up_message_and_survive_a_supernode_leaving() {
    tokio::time::timeout(TEST_WITHIN, scenario(LoopbackPlan::IPV4))
        .await
        .expect("the scenario finishes within its bound");
}

/// The same over IPv6 (addresses travel in the core's 16-byte form; the
/// socket, the certificates and the demux must not assume IPv4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_network_works_over_ipv6() {
    let ipv6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    if std::net::UdpSocket::bind((ipv6, 0)).is_err() {
        // Containers without IPv6 on lo: say so rather than pass silently.
        assert!(
            std::env::var("CI").is_err(),
            "::1 cannot be bound, and CI must cover IPv6"
        );
        eprintln!("SKIPPED: this machine has no ::1");
        return;
    }
    tokio::time::timeout(TEST_WITHIN, scenario(ipv6))
        .await
        .expect("the scenario finishes within its bound");
}

async fn scenario(ip: IpAddr) {
    let mut network = LoopbackNetwork::start(LoopbackPlan {
        supernodes: SUPERNODES,
        clients: CLIENTS,
        params: params(),
        limits: limits(),
        seed: 4,
        ip,
    })
    .await
    .expect("ten nodes start on loopback");
    for peer in &network.peers {
        assert_eq!(peer.addr.ip(), ip, "every node bound {ip}");
    }
    let supernodes = network.indices(Role::Supernode);
    let clients = network.indices(Role::Client);
    assert_eq!((supernodes.len(), clients.len()), (SUPERNODES, CLIENTS));

    // Login: every client attached to two supernodes, and its presence published.
    let attach = network
        .wait_until("every client attached to 2 supernodes", STEP_WITHIN, |s| {
            clients_attached_to_two(&network, s)
        })
        .await
        .unwrap();
    for &client in &clients {
        network
            .wait_event(client, "presence published", STEP_WITHIN, |e| {
                matches!(e, Event::PresencePublished { .. })
            })
            .await
            .unwrap();
    }
    let membership = network
        .wait_until("every supernode knows all 3", STEP_WITHIN, |s| {
            supernodes.iter().all(|&index| {
                s[index].as_ref().is_some_and(|status| {
                    status.is_supernode && status.membership_len == SUPERNODES
                })
            })
        })
        .await
        .unwrap();
    // A publish is sent, not acknowledged: wait until the supernodes hold
    // every record (replication_k = 4 copies, capped by the 3 supernodes)
    // so that the lookup below cannot race the store.
    network
        .wait_until("every record stored on every supernode", STEP_WITHIN, |s| {
            supernodes
                .iter()
                .filter_map(|&index| s[index].as_ref())
                .map(|status| status.stored_records)
                .sum::<usize>()
                == CLIENTS * SUPERNODES
        })
        .await
        .unwrap();
    let statuses = network.statuses().await;
    assert_eq!(
        served_by_live(&network, &statuses),
        2 * CLIENTS,
        "supernodes count the same attachments"
    );

    // Lookup: client 0 finds client 1's record, naming where it is attached.
    let (seeker, target) = (clients[0], clients[1]);
    let target_account = network.peers[target].account;
    let lookup_started = network.elapsed();
    network.peers[seeker]
        .control
        .lookup(target_account)
        .await
        .unwrap();
    let found = network
        .wait_event(
            seeker,
            "lookup of client 1 done",
            STEP_WITHIN,
            |e| matches!(e, Event::LookupDone { account, .. } if *account == target_account),
        )
        .await
        .unwrap();
    let Event::LookupDone { record, .. } = found.event else {
        unreachable!()
    };
    let record = record.expect("the lookup finds the record");
    assert_eq!(
        record.body.cert.body.device_key,
        network.peers[target].device_key
    );
    let mut named: Vec<_> = record.body.supernodes.iter().map(|c| c.key).collect();
    let mut attached: Vec<_> = statuses[target]
        .as_ref()
        .unwrap()
        .attached
        .iter()
        .map(|c| c.key)
        .collect();
    named.sort();
    attached.sort();
    assert_eq!(named, attached, "the record names the target's supernodes");
    let lookup = found.at.saturating_sub(lookup_started);

    // Message: client 2 to client 3, delivered once and acknowledged.
    let (sender, recipient) = (clients[2], clients[3]);
    let payload = b"hello over real QUIC".to_vec();
    let message_started = network.elapsed();
    let seq = network.peers[sender]
        .control
        .send_message(
            network.peers[recipient].device_key,
            network.peers[recipient].account,
            payload.clone(),
        )
        .await
        .unwrap();
    let sender_device = network.peers[sender].device_key;
    let received = network
        .wait_event(recipient, "message received", STEP_WITHIN, |e| {
            matches!(e, Event::MessageReceived { from_device, .. } if *from_device == sender_device)
        })
        .await
        .unwrap();
    let Event::MessageReceived {
        from_account,
        seq: received_seq,
        payload: received_payload,
        ..
    } = &received.event
    else {
        unreachable!()
    };
    assert_eq!(
        (from_account, *received_seq, received_payload),
        (&network.peers[sender].account, seq, &payload)
    );
    let recipient_device = network.peers[recipient].device_key;
    let acked = network
        .wait_event(sender, "message acknowledged", STEP_WITHIN, |e| {
            matches!(e, Event::MessageAcked { to_device, up_to_seq } if *to_device == recipient_device && *up_to_seq >= seq)
        })
        .await
        .unwrap();
    let delivered = received.at.saturating_sub(message_started);
    let acknowledged = acked.at.saturating_sub(message_started);

    // A supernode leaves: every client is attached to two live ones again.
    let leaving = supernodes[0];
    let orphans = clients
        .iter()
        .filter(|&&c| attached_indices(&network, statuses[c].as_ref().unwrap()).contains(&leaving))
        .count();
    assert!(orphans > 0, "the leaving supernode serves someone");
    let leave_started = network.elapsed();
    network.stop(leaving, true).await;
    network
        .wait_until(
            "every client attached to 2 live supernodes after one left",
            STEP_WITHIN,
            |s| clients_attached_to_two(&network, s) && served_by_live(&network, s) == 2 * CLIENTS,
        )
        .await
        .unwrap();
    let reattach = network.elapsed() - leave_started;

    // Exactly once: nothing delivered twice, in the whole run.
    let deliveries = network.peers[recipient]
        .log
        .snapshot()
        .iter()
        .filter(|e| matches!(&e.event, Event::MessageReceived { from_device, .. } if *from_device == sender_device))
        .count();
    assert_eq!(deliveries, 1, "the message is delivered exactly once");
    let statuses = network.statuses().await;
    assert_eq!(statuses[sender].as_ref().unwrap().outbox_len, 0);
    for (index, status) in statuses.iter().enumerate() {
        if let Some(status) = status {
            assert_eq!(
                status.links.frames_oversized + status.links.connections_refused,
                0,
                "node {index}: no peer was refused on a healthy network"
            );
        }
    }
    eprintln!(
        "loopback timings: all attached {attach:?}, full membership {membership:?} later, lookup {lookup:?}, \
         message {delivered:?} (acked {acknowledged:?}), {orphans} clients re-attached {reattach:?} \
         after the supernode began to leave"
    );
    network.shutdown().await;
}

/// Keepalives every second with short pong timeouts: a crash is noticed in
/// about two seconds instead of a minute.
fn fast_keepalive_params() -> Params {
    Params {
        keepalive_interval_ms: 1_000,
        pong_timeout_ms: 300,
        ..params()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_crashed_supernode_re_attach_from_missed_keepalives() {
    tokio::time::timeout(TEST_WITHIN, crash_scenario())
        .await
        .expect("the scenario finishes within its bound");
}

async fn crash_scenario() {
    let mut network = LoopbackNetwork::start(LoopbackPlan {
        supernodes: SUPERNODES,
        clients: CLIENTS,
        params: fast_keepalive_params(),
        limits: limits(),
        seed: 5,
        ip: LoopbackPlan::IPV4,
    })
    .await
    .expect("ten nodes start on loopback");
    network
        .wait_until("every client attached to 2 supernodes", STEP_WITHIN, |s| {
            clients_attached_to_two(&network, s)
        })
        .await
        .unwrap();
    let statuses = network.statuses().await;
    let crashed = network.indices(Role::Supernode)[1];
    let orphans: Vec<usize> = network
        .indices(Role::Client)
        .into_iter()
        .filter(|&c| attached_indices(&network, statuses[c].as_ref().unwrap()).contains(&crashed))
        .collect();
    assert!(!orphans.is_empty(), "the crashed supernode serves someone");
    let crash_at = network.elapsed();
    // No goodbye from the core: the clients must find out on their own.
    network.stop(crashed, false).await;
    network
        .wait_until(
            "every client attached to 2 live supernodes after a crash",
            STEP_WITHIN,
            |s| clients_attached_to_two(&network, s) && served_by_live(&network, s) == 2 * CLIENTS,
        )
        .await
        .unwrap();
    let reattach = network.elapsed() - crash_at;
    // They noticed through keepalives (or a supernode's warning), not a Detach.
    for &orphan in &orphans {
        let crashed_key = network.peers[crashed].device_key;
        let detached = network
            .wait_event(
                orphan,
                "detached from the crashed supernode",
                STEP_WITHIN,
                |e| matches!(e, Event::Detached { supernode, .. } if supernode.key == crashed_key),
            )
            .await
            .unwrap();
        let Event::Detached { reason, .. } = detached.event else {
            unreachable!()
        };
        assert_ne!(reason, peerline_core::DetachReason::DetachedBySupernode);
    }
    eprintln!(
        "loopback crash: {} clients re-attached {reattach:?} after the crash",
        orphans.len()
    );
    network.shutdown().await;
}
