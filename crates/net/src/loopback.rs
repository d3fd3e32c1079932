//! A whole peerline network on loopback: every node a real driver on its
//! own UDP socket on 127.0.0.1, real QUIC and TLS between them, all in one
//! process. For the end-to-end tests and `peerline demo`.
//!
//! Supernodes start first (each bootstrapped with the ones before it), then
//! clients bootstrapped with every supernode's contact. Roles are forced
//! (`SupernodeOnly`, `ClientOnly`) so that the scenario is what was asked
//! for, not what promotion would make of it. Every node's events are read
//! into a log as they come, so no node ever waits on its event queue.

use crate::clock::wall_clock_s;
use crate::driver::{Control, DriverConfig, DriverLimits, NodeStatus, RunningNode, StartError};
use peerline_core::{CryptoMode, DeviceIdentity, Event, Params, RolePolicy};
use peerline_proto::{Contact, PublicKey};
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// Events kept per node; later ones are counted, not kept.
pub const EVENT_LOG_LEN_MAX: usize = 100_000;

/// How often waits look at the nodes again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What network to start.
#[derive(Clone, Debug)]
pub struct LoopbackPlan {
    pub supernodes: usize,
    pub clients: usize,
    pub params: Params,
    pub limits: DriverLimits,
    /// Seeds the node identities (loopback only: a real node's keys come
    /// from the operating system's randomness).
    pub seed: u64,
    /// The loopback address every node binds: 127.0.0.1 or ::1.
    pub ip: IpAddr,
}

impl LoopbackPlan {
    /// IPv4 loopback, the usual choice.
    pub const IPV4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Supernode,
    Client,
}

/// An event and when it was logged, since the network started.
#[derive(Clone, Debug)]
pub struct LoggedEvent {
    pub at: Duration,
    pub event: Event,
}

/// One node's events, in order.
#[derive(Debug, Default)]
pub struct EventLog {
    entries: Mutex<Vec<LoggedEvent>>,
    overflow: std::sync::atomic::AtomicU64,
    changed: Notify,
}

impl EventLog {
    fn entries(&self) -> MutexGuard<'_, Vec<LoggedEvent>> {
        // Pushes and clones only: a poisoned lock still holds a whole list.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, event: LoggedEvent) {
        let mut entries = self.entries();
        if entries.len() < EVENT_LOG_LEN_MAX {
            entries.push(event);
        } else {
            self.overflow
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        drop(entries);
        self.changed.notify_waiters();
    }

    /// Every event so far.
    pub fn snapshot(&self) -> Vec<LoggedEvent> {
        self.entries().clone()
    }

    /// Events that did not fit the log.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One node of the network.
#[derive(Debug)]
pub struct Peer {
    pub role: Role,
    pub device_key: PublicKey,
    pub account: PublicKey,
    pub addr: SocketAddr,
    /// The supernode contact it started with (supernodes only).
    pub contact: Option<Contact>,
    pub control: Control,
    pub log: Arc<EventLog>,
    /// When its driver started, since the network started.
    pub started_at: Duration,
    node: Option<RunningNode>,
}

impl Peer {
    pub fn is_running(&self) -> bool {
        self.node.is_some()
    }
}

/// A wait ran out of time; says what it was waiting for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct WaitTimeout {
    pub what: String,
    pub waited: Duration,
}

pub struct LoopbackNetwork {
    pub peers: Vec<Peer>,
    started_at: tokio::time::Instant,
}

impl LoopbackNetwork {
    /// Starts the supernodes, then the clients; waits for nothing else.
    pub async fn start(plan: LoopbackPlan) -> Result<LoopbackNetwork, StartError> {
        let params = Arc::new(plan.params.clone());
        let mut network = LoopbackNetwork {
            peers: Vec::with_capacity(plan.supernodes + plan.clients),
            started_at: tokio::time::Instant::now(),
        };
        let mut rng = Pcg64Mcg::seed_from_u64(plan.seed);
        let mut contacts: Vec<Contact> = Vec::with_capacity(plan.supernodes);
        for _ in 0..plan.supernodes {
            let peer = network
                .start_peer(&params, &plan, &mut rng, Role::Supernode, &contacts)
                .await?;
            contacts.extend(peer.contact);
            network.peers.push(peer);
        }
        for _ in 0..plan.clients {
            let peer = network
                .start_peer(&params, &plan, &mut rng, Role::Client, &contacts)
                .await?;
            network.peers.push(peer);
        }
        Ok(network)
    }

    async fn start_peer(
        &self,
        params: &Arc<Params>,
        plan: &LoopbackPlan,
        rng: &mut Pcg64Mcg,
        role: Role,
        bootstrap: &[Contact],
    ) -> Result<Peer, StartError> {
        let identity = DeviceIdentity::new_account(
            CryptoMode::Full,
            rng,
            wall_clock_s(),
            params.device_cert_ttl_s,
        );
        let config = DriverConfig {
            listen: SocketAddr::from((plan.ip, 0)),
            advertised: None,
            params: params.clone(),
            identity,
            policy: match role {
                Role::Supernode => RolePolicy::SupernodeOnly,
                Role::Client => RolePolicy::ClientOnly,
            },
            bootstrap: bootstrap.to_vec(),
            rng_seed: Some(rng.next_u64()),
            limits: plan.limits,
            persist: None,
        };
        let started_at = self.started_at.elapsed();
        let (node, mut events) = RunningNode::start(config).await?;
        let log = Arc::new(EventLog::default());
        let network_started_at = self.started_at;
        tokio::spawn({
            let log = log.clone();
            async move {
                while let Some(event) = events.recv().await {
                    log.push(LoggedEvent {
                        at: network_started_at.elapsed(),
                        event,
                    });
                }
            }
        });
        Ok(Peer {
            role,
            device_key: node.device_key(),
            account: node.account(),
            addr: node.local_addr(),
            contact: node.contact(),
            control: node.control.clone(),
            log,
            started_at,
            node: Some(node),
        })
    }

    /// Time since the network started.
    pub fn elapsed(&self) -> Duration {
        self.started_at.elapsed()
    }

    pub fn indices(&self, role: Role) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|&index| self.peers[index].role == role)
            .collect()
    }

    /// The status of every node, `None` for the stopped ones.
    pub async fn statuses(&self) -> Vec<Option<NodeStatus>> {
        let mut statuses = Vec::with_capacity(self.peers.len());
        for peer in &self.peers {
            statuses.push(match peer.is_running() {
                true => peer.control.status().await.ok(),
                false => None,
            });
        }
        statuses
    }

    /// Waits until `done` holds for the statuses of all nodes; returns how
    /// long that took.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        mut done: impl FnMut(&[Option<NodeStatus>]) -> bool,
    ) -> Result<Duration, WaitTimeout> {
        let started = tokio::time::Instant::now();
        loop {
            if done(&self.statuses().await) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= within {
                return Err(WaitTimeout {
                    what: what.to_string(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until node `index` logged an event that `wanted` accepts, and
    /// returns the first such.
    pub async fn wait_event(
        &self,
        index: usize,
        what: &str,
        within: Duration,
        mut wanted: impl FnMut(&Event) -> bool,
    ) -> Result<LoggedEvent, WaitTimeout> {
        self.wait_logged(index, what, within, |logged| wanted(&logged.event))
            .await
    }

    /// Like [`LoopbackNetwork::wait_event`], with the time it was logged in
    /// view (to ask for an event after some moment).
    pub async fn wait_logged(
        &self,
        index: usize,
        what: &str,
        within: Duration,
        mut wanted: impl FnMut(&LoggedEvent) -> bool,
    ) -> Result<LoggedEvent, WaitTimeout> {
        let log = &self.peers[index].log;
        let started = tokio::time::Instant::now();
        loop {
            // Register before looking, so a push between the look and the
            // wait is not missed.
            let changed = log.changed.notified();
            if let Some(found) = log.snapshot().into_iter().find(|e| wanted(e)) {
                return Ok(found);
            }
            let left = within.saturating_sub(started.elapsed());
            if left.is_zero() || tokio::time::timeout(left, changed).await.is_err() {
                return Err(WaitTimeout {
                    what: format!("node {index}: {what}"),
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// Shuts node `index` down politely (it detaches its clients and hands
    /// its records over), or kills it like a crash.
    pub async fn stop(&mut self, index: usize, graceful: bool) {
        self.stop_all(&[index], graceful).await;
    }

    /// Stops several nodes at once (all together, as a crash wave would).
    pub async fn stop_all(&mut self, indices: &[usize], graceful: bool) {
        let mut stopping = tokio::task::JoinSet::new();
        for &index in indices {
            if let Some(node) = self.peers[index].node.take() {
                stopping.spawn(async move {
                    if graceful {
                        let _ = node.shutdown().await;
                    } else {
                        node.kill().await;
                    }
                });
            }
        }
        while stopping.join_next().await.is_some() {}
    }

    /// Shuts every node down politely: the clients, then the supernodes.
    pub async fn shutdown(mut self) {
        for role in [Role::Client, Role::Supernode] {
            let indices = self.indices(role);
            self.stop_all(&indices, true).await;
        }
    }
}

/// Supernode contacts a client status is attached to, as node indices of
/// `network` (unknown supernodes are left out).
pub fn attached_indices(network: &LoopbackNetwork, status: &NodeStatus) -> Vec<usize> {
    status
        .attached
        .iter()
        .filter_map(|contact| {
            network
                .peers
                .iter()
                .position(|peer| peer.device_key == contact.key)
        })
        .collect()
}

/// Whether every client is attached to two running supernodes of `network`.
pub fn clients_attached_to_two(network: &LoopbackNetwork, statuses: &[Option<NodeStatus>]) -> bool {
    network.indices(Role::Client).iter().all(|&index| {
        statuses[index].as_ref().is_some_and(|status| {
            let attached = attached_indices(network, status);
            attached.len() == 2 && attached.iter().all(|&s| network.peers[s].is_running())
        })
    })
}
