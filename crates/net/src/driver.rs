//! The driver: one [`Node`] on one UDP socket, in one tokio task.
//!
//! The task owns the node and loops: hand the node's transmits to the
//! links, its events to the application, then wait for whichever comes
//! first — a frame, a command, an incoming connection, or the node's own
//! deadline. Nothing here decides anything about the protocol; the only
//! timers are the node's deadline and the transport's bounds (QUIC idle
//! timeout, frame timeout, shutdown flush).

use crate::clock::Clock;
use crate::demux::{DemuxHandle, DemuxLimits, DemuxStats};
use crate::links::{Inbound, LinkLimits, LinkStats, Links};
use crate::quic::{demux_endpoint, EndpointError};
use crate::stun::StunError;
use crate::tls::NodeCertificate;
use peerline_core::hostcache::HostEntry;
use peerline_core::mail::SendError;
use peerline_core::{
    DeviceIdentity, DurableChange, DurableChanges, Event, Node, NodeConfig, NodeStats, Params,
    PathCommand, PathReport, RolePolicy,
};
use peerline_proto::{
    Addr, Contact, DeviceList, KeyBundle, NameCertificate, NameClaim, NodeId, PresenceRecord,
    PublicKey, RootRotation, ShareDeal,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// Everything a node needs to run on the network.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The UDP address to bind (port 0: any free port).
    pub listen: SocketAddr,
    /// The address other nodes reach this one at; `None` uses the bound
    /// address, which must then be a specific IP (not 0.0.0.0 or ::).
    pub advertised: Option<SocketAddr>,
    pub params: Arc<Params>,
    /// Must hold a real Ed25519 key: the same key makes the TLS certificate.
    pub identity: DeviceIdentity,
    pub policy: RolePolicy,
    /// Supernodes to start from. Their keys are pinned: a dial to one of
    /// these addresses fails unless the peer proves this key.
    pub bootstrap: Vec<Contact>,
    /// Seed of the node's RNG; `None` draws it from the operating system
    /// (what a real node must do: its challenge secrets come from it).
    pub rng_seed: Option<u64>,
    pub limits: DriverLimits,
    /// Where the node's durable state (votes, name records, bundles, OPRF
    /// shares and guess budgets, revocations) is kept; `None` keeps it in
    /// memory only (tests, short-lived clients).
    pub persist: Option<Arc<dyn Persist>>,
}

/// Where a node's durable state lives (the daemon's `state.redb`).
///
/// **The ordering rule**: before the driver hands any datagram to the
/// links, it takes the node's durable changes and commits them here — one
/// call per drain, so everything one input changed is one transaction.
/// A vote or a guess-budget spend is thereby on disk before the datagram
/// that reveals it leaves the process ([`DurableChanges::must_sync`]
/// says when a commit must be durable before it returns). A failed commit
/// stops the node without sending what that drain queued.
pub trait Persist: Send + Sync + std::fmt::Debug {
    /// Every stored row, read once at start (before the node sends).
    fn load(&self) -> Result<Vec<DurableChange>, String>;
    /// Writes one drain's changes in one transaction.
    fn commit(&self, changes: &DurableChanges) -> Result<(), String>;
}

/// Bounds of the driver around one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverLimits {
    pub links: LinkLimits,
    /// Events the application has not read yet. When full, the node waits
    /// for the application (backpressure) rather than drop an event: a
    /// dropped `MessageReceived` would be a lost message.
    pub events_len_max: usize,
    /// Commands waiting for the node.
    pub commands_len_max: usize,
    /// At shutdown: how long the node's last frames (its goodbyes) may
    /// take to be acknowledged, and then the connections to close.
    pub shutdown_flush: Duration,
    /// The shared port's unauthenticated traffic: STUN rates and sizes,
    /// this node's own STUN transactions, the relay queue.
    pub demux: DemuxLimits,
}

impl Default for DriverLimits {
    fn default() -> Self {
        DriverLimits {
            links: LinkLimits::default(),
            events_len_max: 1_024,
            commands_len_max: 64,
            shutdown_flush: Duration::from_secs(2),
            demux: DemuxLimits::default(),
        }
    }
}

/// Why a node could not start. Each says what was wrong in one sentence.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the node listens on {0}, which other nodes cannot dial: give an advertised address")]
    NotAdvertisable(SocketAddr),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("the node could not be built: {0}")]
    Node(String),
    #[error("the node's durable state could not be restored: {0}")]
    Restore(String),
}

/// The node is gone (shut down, killed, or its task ended).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the node is no longer running")]
pub struct NodeGone;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Gone(#[from] NodeGone),
    #[error("the node refused the message: {0}")]
    Refused(#[from] SendError),
}

/// A snapshot of what the node believes, for diagnostics and tests.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub is_supernode: bool,
    /// This node's supernode contact, when it is one.
    pub contact: Option<Contact>,
    /// Supernodes this client is attached to, by its own belief.
    pub attached: Vec<Contact>,
    /// Clients attached to this supernode.
    pub attached_clients: usize,
    pub outbox_len: usize,
    pub membership_len: usize,
    /// Presence records this supernode holds.
    pub stored_records: usize,
    /// The supernodes this node would try next (a daemon saves them, to
    /// bootstrap from after a restart).
    pub host_cache: Vec<HostEntry>,
    /// A supernode's sample of live members (`MEMBERS_SAMPLE_LEN_MAX`),
    /// saved with the host cache; empty for a client.
    pub members_sample: Vec<Contact>,
    pub node: NodeStats,
    pub links: LinkStats,
    pub demux: DemuxStats,
    /// Connections to peers (hole punching): running, up (direct or
    /// relayed) or failed.
    pub paths: Vec<PathReport>,
    /// Peer pairs this supernode relays for (halves waiting included).
    pub relay_bindings: usize,
    /// Transactions committed to [`Persist`] so far, and rows in them.
    pub durable_commits: u64,
    pub durable_rows: u64,
}

/// What the driver counted over the node's life.
#[derive(Clone, Debug)]
pub struct DriverReport {
    pub demux: DemuxStats,
    pub node: NodeStats,
    pub links: LinkStats,
    /// The host cache and the members sample as the node left them.
    pub host_cache: Vec<HostEntry>,
    pub members_sample: Vec<Contact>,
    /// Why the node stopped early: its durable state could not be
    /// committed (nothing of that drain was sent).
    pub persist_error: Option<String>,
    /// Transactions committed to [`Persist`] and rows in them.
    pub durable_commits: u64,
    pub durable_rows: u64,
}

/// Live members a supernode's status and report name (for a daemon to
/// save): enough to rejoin through after many of them died.
pub const MEMBERS_SAMPLE_LEN_MAX: usize = 32;

enum Command {
    Lookup(PublicKey),
    SendMessage {
        to_device: PublicKey,
        to_account: PublicKey,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<u64, SendError>>,
    },
    Status(oneshot::Sender<NodeStatus>),
    StunBinding {
        server: SocketAddr,
        reply: oneshot::Sender<Result<SocketAddr, StunError>>,
    },
    ConnectPeer(Box<PresenceRecord>),
    AddBootstrap(Contact),
    SetMappedAddr(Option<SocketAddr>),
    SetContacts(Vec<PublicKey>),
    SetRevealAddresses(peerline_core::RevealAddresses),
    RegisterName(Box<NameClaim>),
    LookupName(NodeId),
    PublishAccountSecrets {
        bundle: Box<KeyBundle>,
        deals: Vec<ShareDeal>,
    },
    OpenBundle {
        account: PublicKey,
        password: zeroize::Zeroizing<String>,
        entropy: zeroize::Zeroizing<[u8; 32]>,
    },
    SetDeviceList(Box<DeviceList>),
    SetRootRotation(Box<RootRotation>),
    FetchDeviceList(PublicKey),
    KeepOwnName(Box<NameCertificate>),
    Shutdown,
}

/// Hole-punching tasks (STUN for the reflexive address, sprays) a node
/// runs at once; a command beyond it is dropped (the core times out).
pub const PATH_TASKS_MAX: usize = 16;

/// Commands to a running node; cheap to clone and share across tasks.
#[derive(Clone, Debug)]
pub struct Control {
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Command::Lookup(_) => "Lookup",
            Command::SendMessage { .. } => "SendMessage",
            Command::Status(_) => "Status",
            Command::StunBinding { .. } => "StunBinding",
            Command::ConnectPeer(_) => "ConnectPeer",
            Command::AddBootstrap(_) => "AddBootstrap",
            Command::SetMappedAddr(_) => "SetMappedAddr",
            Command::SetContacts(_) => "SetContacts",
            Command::SetRevealAddresses(_) => "SetRevealAddresses",
            Command::RegisterName(_) => "RegisterName",
            Command::LookupName(_) => "LookupName",
            Command::PublishAccountSecrets { .. } => "PublishAccountSecrets",
            Command::OpenBundle { .. } => "OpenBundle",
            Command::SetDeviceList(_) => "SetDeviceList",
            Command::SetRootRotation(_) => "SetRootRotation",
            Command::FetchDeviceList(_) => "FetchDeviceList",
            Command::KeepOwnName(_) => "KeepOwnName",
            Command::Shutdown => "Shutdown",
        })
    }
}

impl Control {
    /// Looks up an account's presence; the answer comes as
    /// [`Event::LookupDone`].
    pub async fn lookup(&self, account: PublicKey) -> Result<(), NodeGone> {
        self.commands
            .send(Command::Lookup(account))
            .await
            .map_err(|_| NodeGone)
    }

    /// Queues a message for another device (the core re-sends it until that
    /// device acknowledges it: [`Event::MessageAcked`]). Returns its sequence
    /// number in the conversation.
    pub async fn send_message(
        &self,
        to_device: PublicKey,
        to_account: PublicKey,
        payload: Vec<u8>,
    ) -> Result<u64, MessageError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::SendMessage {
                to_device,
                to_account,
                payload,
                reply,
            })
            .await
            .map_err(|_| NodeGone)?;
        Ok(answer.await.map_err(|_| NodeGone)??)
    }

    pub async fn status(&self) -> Result<NodeStatus, NodeGone> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Status(reply))
            .await
            .map_err(|_| NodeGone)?;
        answer.await.map_err(|_| NodeGone)
    }

    /// Asks a STUN server (any node, typically a supernode) for this
    /// node's reflexive address: the address and port its datagrams carry
    /// when they reach `server`, as seen past any NAT. Sent from the
    /// node's own port, retransmitted per RFC 8489 §6.2.1 within
    /// [`DemuxLimits::stun_retransmit`]. The answer is an input for hole
    /// punching; nothing in the core consumes it yet.
    pub async fn stun_binding(&self, server: SocketAddr) -> Result<SocketAddr, StunError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::StunBinding { server, reply })
            .await
            .map_err(|_| StunError::Gone)?;
        answer.await.map_err(|_| StunError::Gone)?
    }
}

impl Control {
    /// Opens a direct connection (hole punching through both devices'
    /// supernodes) to the device whose presence record this is (from a
    /// lookup); the outcome comes as [`Event::PathUp`] or
    /// [`Event::PathFailed`], and in [`NodeStatus::paths`].
    pub async fn connect_peer(&self, record: PresenceRecord) -> Result<(), NodeGone> {
        self.commands
            .send(Command::ConnectPeer(Box::new(record)))
            .await
            .map_err(|_| NodeGone)
    }

    /// Hands the node a supernode found after start (a daemon's LAN
    /// discovery): it joins the host cache, so a dial to it is pinned to
    /// its key like a bootstrap contact's, and the core decides whether to
    /// use it now ([`peerline_core::Node::add_bootstrap`]).
    pub async fn add_bootstrap(&self, contact: Contact) -> Result<(), NodeGone> {
        self.commands
            .send(Command::AddBootstrap(contact))
            .await
            .map_err(|_| NodeGone)
    }

    /// Tells the node the address a gateway maps to its port (a daemon's
    /// UPnP-IGD mapping), or `None` once the mapping is gone: the core
    /// offers it as a hole-punching candidate.
    pub async fn set_mapped_addr(&self, mapped: Option<SocketAddr>) -> Result<(), NodeGone> {
        self.commands
            .send(Command::SetMappedAddr(mapped))
            .await
            .map_err(|_| NodeGone)
    }

    /// The accounts whose devices may learn this device's direct addresses
    /// when they connect to it (replacing the previous set; at most
    /// `peerline_core::punch::CONTACTS_MAX` are kept). Anyone else gets a
    /// relayed path ([`peerline_core::Node::set_contacts`]).
    pub async fn set_contacts(&self, accounts: Vec<PublicKey>) -> Result<(), NodeGone> {
        self.commands
            .send(Command::SetContacts(accounts))
            .await
            .map_err(|_| NodeGone)
    }

    /// Whom the device reveals its direct addresses to (contacts only
    /// unless told otherwise; [`peerline_core::Node::set_reveal_addresses`]).
    pub async fn set_reveal_addresses(
        &self,
        policy: peerline_core::RevealAddresses,
    ) -> Result<(), NodeGone> {
        self.commands
            .send(Command::SetRevealAddresses(policy))
            .await
            .map_err(|_| NodeGone)
    }

    /// Registers a name with a claim the account's root key signed
    /// (`peerline_core::registry::make_claim`); the outcome comes as
    /// [`Event::NameRegistered`], [`Event::NameTaken`] or
    /// [`Event::NameFailed`].
    pub async fn register_name(&self, claim: NameClaim) -> Result<(), NodeGone> {
        self.commands
            .send(Command::RegisterName(Box::new(claim)))
            .await
            .map_err(|_| NodeGone)
    }

    /// Looks up who owns the name with this key (`Name::key`); the answer
    /// comes as [`Event::NameLookupDone`].
    pub async fn lookup_name(&self, name_key: NodeId) -> Result<(), NodeGone> {
        self.commands
            .send(Command::LookupName(name_key))
            .await
            .map_err(|_| NodeGone)
    }

    /// Publishes an account's password-sealed key bundle and the first
    /// deal of its OPRF shares (made with the root key:
    /// `peerline_core::bundle::seal_bundle` and `deal`); the outcome comes
    /// as [`Event::AccountSecretsPublished`] (the deals went out: the
    /// shutdown flush sees them acknowledged) or [`Event::BundleFailed`].
    pub async fn publish_account_secrets(
        &self,
        bundle: KeyBundle,
        deals: Vec<ShareDeal>,
    ) -> Result<(), NodeGone> {
        self.commands
            .send(Command::PublishAccountSecrets {
                bundle: Box::new(bundle),
                deals,
            })
            .await
            .map_err(|_| NodeGone)
    }

    /// Password login: opens the account's key bundle with `password`;
    /// the outcome comes as [`Event::BundleOpened`] (with the root seed)
    /// or [`Event::BundleFailed`]. The 32 bytes of entropy the core needs
    /// (blinding, re-dealt shares) come from the operating system here.
    ///
    /// Argon2id (~150 ms at `KDF_PARAMS_PRODUCTION`) runs inside the
    /// node's handling of the last holder's answer, on the driver's task:
    /// the node answers nothing else meanwhile. Acceptable for a
    /// short-lived client (`peerline login`); a long-running node that
    /// logs in should move the stretch off the task first.
    pub async fn open_bundle(
        &self,
        account: PublicKey,
        password: &str,
    ) -> Result<(), OpenBundleError> {
        let mut entropy = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(entropy.as_mut_slice())
            .map_err(|error| OpenBundleError::NoEntropy(error.to_string()))?;
        self.commands
            .send(Command::OpenBundle {
                account,
                password: zeroize::Zeroizing::new(password.to_owned()),
                entropy,
            })
            .await
            .map_err(|_| OpenBundleError::Gone(NodeGone))
    }
}

impl Control {
    /// This device's account's signed device list: pushed to the attached
    /// supernodes (which spread what it revokes) and stored at the
    /// account's replicas ([`peerline_core::Node::set_device_list`]).
    pub async fn set_device_list(&self, list: DeviceList) -> Result<(), NodeGone> {
        self.commands
            .send(Command::SetDeviceList(Box::new(list)))
            .await
            .map_err(|_| NodeGone)
    }

    /// This device's account's root rotation, published like the device
    /// list ([`peerline_core::Node::set_root_rotation`]).
    pub async fn set_root_rotation(&self, rotation: RootRotation) -> Result<(), NodeGone> {
        self.commands
            .send(Command::SetRootRotation(Box::new(rotation)))
            .await
            .map_err(|_| NodeGone)
    }

    /// A certificate of a name this device's account owns: the node
    /// stores it again at the name's replicas now and then
    /// ([`peerline_core::Node::keep_own_name`]).
    pub async fn keep_own_name(&self, certificate: NameCertificate) -> Result<(), NodeGone> {
        self.commands
            .send(Command::KeepOwnName(Box::new(certificate)))
            .await
            .map_err(|_| NodeGone)
    }

    /// Fetches an account's newest device list from its replicas; the
    /// answer comes as [`Event::DeviceListFetched`].
    pub async fn fetch_device_list(&self, account: PublicKey) -> Result<(), NodeGone> {
        self.commands
            .send(Command::FetchDeviceList(account))
            .await
            .map_err(|_| NodeGone)
    }
}

/// Why a password login could not even start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenBundleError {
    #[error(transparent)]
    Gone(#[from] NodeGone),
    #[error("the operating system gave no randomness: {0}")]
    NoEntropy(String),
}

/// What happened at a node, in order. Keep reading it: when it is full
/// the node waits for room (see [`DriverLimits::events_len_max`]). It ends
/// when the node stops.
pub type Events = mpsc::Receiver<Event>;

/// A node running in its own task.
#[derive(Debug)]
pub struct RunningNode {
    pub control: Control,
    local_addr: SocketAddr,
    advertised: Addr,
    device_key: PublicKey,
    account: PublicKey,
    contact: Option<Contact>,
    task: JoinHandle<DriverReport>,
}

impl RunningNode {
    /// Binds the socket, builds the node (solving its ID puzzle off the
    /// async threads when it starts as a supernode) and starts its task.
    /// Returns the node and its events (usually read in a task of their own).
    pub async fn start(config: DriverConfig) -> Result<(RunningNode, Events), StartError> {
        let socket =
            std::net::UdpSocket::bind(config.listen).map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        widen_buffers(&socket);
        let local_addr = socket.local_addr().map_err(EndpointError::Socket)?;
        let advertised = config.advertised.unwrap_or(local_addr);
        if advertised.ip().is_unspecified() || advertised.port() == 0 {
            return Err(StartError::NotAdvertisable(advertised));
        }
        let certificate =
            NodeCertificate::new(&config.identity.keypair).map_err(EndpointError::from)?;
        let (endpoint, demux) = demux_endpoint(
            socket,
            &certificate,
            config.limits.links.quic,
            config.limits.demux,
        )?;
        let (inbound_sender, inbound) =
            mpsc::channel(config.limits.links.inbound_frames_max.max(1));
        let (dialed_sender, dialed) = mpsc::channel(config.limits.links.peers_max.max(1));
        let pinned = config
            .bootstrap
            .iter()
            .map(|contact| (contact.addr, contact.key))
            .collect();
        let links = Links::new(
            endpoint.clone(),
            certificate,
            config.limits.links,
            pinned,
            inbound_sender,
            dialed_sender,
        )?;
        let rng_seed = match config.rng_seed {
            Some(seed) => seed,
            None => getrandom::u64().map_err(|error| StartError::Node(error.to_string()))?,
        };
        let clock = Clock::start();
        let node_config = NodeConfig {
            params: config.params,
            identity: config.identity.clone(),
            policy: config.policy,
            advertised_addr: Addr::from_socket(advertised),
            bootstrap: config.bootstrap,
        };
        let now = clock.now();
        let persist = config.persist.clone();
        let node = tokio::task::spawn_blocking(move || {
            let mut node = Node::new(node_config, now, rng_seed);
            if let Some(persist) = &persist {
                // Before the node's first datagram leaves (the driver's
                // first flush comes after this).
                let rows = persist.load().map_err(StartError::Restore)?;
                node.restore_durable(now, &rows)
                    .map_err(|error| StartError::Restore(error.to_string()))?;
            }
            Ok::<Node, StartError>(node)
        })
        .await
        .map_err(|error| StartError::Node(error.to_string()))??;
        let contact = node.supernode_contact();
        let (command_sender, commands) = mpsc::channel(config.limits.commands_len_max.max(1));
        let (event_sender, events) = mpsc::channel(config.limits.events_len_max.max(1));
        let (reflexive_sender, reflexive) = mpsc::channel(PATH_TASKS_MAX);
        let driver = Driver {
            node,
            clock,
            endpoint,
            links,
            inbound,
            dialed,
            commands,
            events: event_sender,
            shutdown_flush: config.limits.shutdown_flush,
            demux,
            stun_tasks: JoinSet::new(),
            path_tasks: JoinSet::new(),
            reflexive_sender,
            reflexive,
            persist: config.persist,
            persist_error: None,
            durable_commits: 0,
            durable_rows: 0,
        };
        let running = RunningNode {
            control: Control {
                commands: command_sender,
            },
            local_addr,
            advertised: Addr::from_socket(advertised),
            device_key: config.identity.keypair.public(),
            account: config.identity.account(),
            contact,
            task: tokio::spawn(driver.run()),
        };
        Ok((running, events))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn advertised_addr(&self) -> Addr {
        self.advertised
    }

    /// The device key: the node's identity on the wire and in TLS.
    pub fn device_key(&self) -> PublicKey {
        self.device_key
    }

    pub fn account(&self) -> PublicKey {
        self.account
    }

    /// The supernode contact it started with (a node started as a
    /// supernode has one; others find each other through it).
    pub fn contact(&self) -> Option<Contact> {
        self.contact
    }

    /// Leaves politely: a supernode first lets its clients move to other
    /// supernodes (`Node::leave`: `drain_max_ms` at most), then the node
    /// says goodbye to its peers (detaches its clients or supernodes),
    /// waits a bounded time for those frames to be acknowledged, and
    /// closes every connection.
    pub async fn shutdown(self) -> Result<DriverReport, NodeGone> {
        // If the queue is full the task is busy; it still sees the request.
        let _ = self.control.commands.send(Command::Shutdown).await;
        self.task.await.map_err(|_| NodeGone)
    }

    /// Stops the node at once, as a crash would: no goodbyes from the core
    /// (its peers find out from missing keepalives). QUIC still closes the
    /// connections as the endpoint is dropped.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

struct Driver {
    node: Node,
    clock: Clock,
    endpoint: quinn::Endpoint,
    links: Links,
    inbound: mpsc::Receiver<Inbound>,
    dialed: mpsc::Receiver<(Addr, quinn::Connection)>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    shutdown_flush: Duration,
    demux: DemuxHandle,
    /// STUN Binding transactions of this node (at most
    /// `stun_transactions_max`; aborted when the node stops).
    stun_tasks: JoinSet<()>,
    /// Hole punching's STUN and spray tasks (at most `PATH_TASKS_MAX`).
    path_tasks: JoinSet<()>,
    reflexive_sender: mpsc::Sender<(Addr, Option<Addr>)>,
    reflexive: mpsc::Receiver<(Addr, Option<Addr>)>,
    persist: Option<Arc<dyn Persist>>,
    /// Set when a commit failed: the node stops, sending nothing more.
    persist_error: Option<String>,
    durable_commits: u64,
    durable_rows: u64,
}

/// The key the node's host cache gives for `addr`, when it gives exactly
/// one: a dial to a supernode the node knows then fails unless the peer
/// proves that key (the core checks supernode keys only through this).
fn known_key(node: &Node, addr: &Addr) -> Option<PublicKey> {
    if let Some(peer) = node.path_peer_key(addr) {
        return Some(peer);
    }
    let mut keys = node
        .host_cache()
        .entries()
        .iter()
        .filter(|entry| entry.contact.addr == *addr)
        .map(|entry| entry.contact.key);
    let first = keys.next()?;
    keys.all(|key| key == first).then_some(first)
}

/// Socket buffers a node asks for, each way. The kernel's default (~208
/// KiB) holds ~170 full-size datagrams: a supernode relaying, or taking a
/// burst of logins, drops at its receive queue long before its CPU is busy
/// (the relay benchmark carried 75,000 1200-byte frames/s with the default
/// and 125,000/s with 2 MiB, `bench/results/relay-2026-11-27*.md`). coturn
/// asks for the same.
pub const SOCKET_BUFFER_BYTES: usize = 2 * 1024 * 1024;

/// Best effort: the kernel caps the request at `net.core.rmem_max` /
/// `wmem_max` (often 208 KiB by default: a busy supernode's operator raises
/// them with sysctl), and a smaller buffer only costs drops under load.
fn widen_buffers(socket: &std::net::UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
}

/// Whether a frame may reach the node: when the node expects a key at the
/// sender's address (a punching peer's candidate or relayed path), the
/// frame's connection must have proved it. A dialled connection was
/// pinned to it already; this covers connections the peer dialled to us,
/// whose TLS accepts any key-bound certificate.
fn proves_expected_key(expected: Option<PublicKey>, proven: Option<PublicKey>) -> bool {
    expected.is_none_or(|expected| proven == Some(expected))
}

impl Driver {
    async fn run(mut self) -> DriverReport {
        // A shutdown drains first: a supernode serves its clients until
        // they have moved (`Node::leave`, bounded by `drain_max_ms`).
        let mut leaving = false;
        // Taken before the goodbyes change what the node believes.
        let mut members_sample = None;
        loop {
            self.flush().await;
            if self.persist_error.is_some() || (leaving && self.node.is_closed()) {
                break;
            }
            self.links.reap();
            let wake_at = self.clock.wake_at(self.node.poll_timeout());
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) if !leaving => {
                        leaving = true;
                        members_sample = Some(self.node.members_sample(MEMBERS_SAMPLE_LEN_MAX));
                        self.node.leave(self.clock.now());
                    }
                    // Asked twice, or nobody left to ask: stop now.
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.command(command),
                },
                Some((from, proven, frame)) = self.inbound.recv() => {
                    if proves_expected_key(self.node.path_peer_key(&from), proven) {
                        self.node.handle(self.clock.now(), from, &frame);
                    } else {
                        self.links.count_wrong_key();
                    }
                }
                Some((server, reflexive)) = self.reflexive.recv() => {
                    self.node.reflexive_found(self.clock.now(), server, reflexive);
                }
                Some((addr, connection)) = self.dialed.recv() => {
                    self.links.read_dialed(addr, connection);
                }
                Some(incoming) = self.endpoint.accept() => self.links.accept(incoming),
                () = tokio::time::sleep_until(wake_at) => {
                    self.node.handle_timeout(self.clock.now());
                }
            }
        }
        let members_sample =
            members_sample.unwrap_or_else(|| self.node.members_sample(MEMBERS_SAMPLE_LEN_MAX));
        if self.persist_error.is_none() {
            self.node.shutdown(self.clock.now());
            self.flush().await;
        }
        let report = DriverReport {
            demux: self.demux.stats(),
            node: self.node.stats().clone(),
            links: self.links.stats(),
            host_cache: self.node.host_cache().entries().to_vec(),
            members_sample,
            persist_error: self.persist_error.take(),
            durable_commits: self.durable_commits,
            durable_rows: self.durable_rows,
        };
        self.links.close(self.shutdown_flush).await;
        report
    }

    /// Hands out what the node produced: its durable changes to
    /// [`Persist`] first (the ordering rule), then frames to the links
    /// (never waiting), events to the application (waiting for room).
    async fn flush(&mut self) {
        if !self.commit_durable() {
            // Nothing this drain queued may leave: it could reveal a vote
            // or an answer whose record is not on disk.
            while self.node.poll_transmit().is_some() {}
            return;
        }
        while let Some(command) = self.node.poll_path_command() {
            self.path_command(command);
        }
        while let Some(transmit) = self.node.poll_transmit() {
            let node = &self.node;
            let to = transmit.to;
            self.links.send(to, transmit.bytes, || known_key(node, &to));
        }
        while let Some(event) = self.node.poll_event() {
            // An application that dropped its receiver wants no events.
            let _ = self.events.send(event).await;
        }
    }

    /// Commits what the node's last steps changed, in one transaction.
    /// Runs on the driver's task on purpose: nothing is sent until it
    /// returns. `false`: the commit failed and the node must stop.
    fn commit_durable(&mut self) -> bool {
        let Some(persist) = &self.persist else {
            return true;
        };
        if self.persist_error.is_some() {
            return false;
        }
        let changes = self.node.take_durable_changes(self.clock.now());
        if changes.is_empty() {
            return true;
        }
        match persist.commit(&changes) {
            Ok(()) => {
                self.durable_commits += 1;
                self.durable_rows += changes.len() as u64;
                true
            }
            Err(error) => {
                self.persist_error = Some(error);
                false
            }
        }
    }

    /// Executes what hole punching and relaying ask: relay tables change
    /// at once, STUN and sprays run in tasks of the driver's.
    fn path_command(&mut self, command: PathCommand) {
        match command {
            PathCommand::OpenRelayedPath {
                session,
                relay,
                channel,
            } => {
                let path = self
                    .demux
                    .open_relayed_path(relay.to_socket(), channel)
                    .ok()
                    .map(Addr::from_socket);
                self.node
                    .relayed_path_opened(self.clock.now(), session, path);
            }
            PathCommand::CloseRelayedPath { path } => {
                self.demux.close_relayed_path(path.to_socket())
            }
            PathCommand::RelayBind { a, b } => {
                // A clash cannot happen (the core picks channels unique on
                // this relay); if it did, the peers' checks fail and they
                // are told no relay.
                let _ = self
                    .demux
                    .relay_bind((a.0.to_socket(), a.1), (b.0.to_socket(), b.1));
            }
            PathCommand::RelayUnbind { a } => self.demux.relay_unbind((a.0.to_socket(), a.1)),
            PathCommand::RelayReset => self.demux.relay_reset(),
            PathCommand::Stun { server } => {
                let demux = self.demux.clone();
                let answers = self.reflexive_sender.clone();
                self.spawn_path_task(async move {
                    let reflexive = demux.stun_binding(server.to_socket()).await.ok();
                    let _ = answers
                        .send((server, reflexive.map(Addr::from_socket)))
                        .await;
                });
            }
            PathCommand::Spray {
                targets,
                count,
                interval_ms,
            } => {
                let demux = self.demux.clone();
                self.spawn_path_task(async move {
                    for round in 0..count {
                        if round > 0 {
                            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
                        }
                        for target in &targets {
                            let _ = demux.send_punch(target.to_socket());
                        }
                    }
                });
            }
        }
    }

    /// Runs a STUN or spray task, unless `PATH_TASKS_MAX` already run
    /// (then it is dropped: the core retries on its own timers).
    fn spawn_path_task(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        while self.path_tasks.try_join_next().is_some() {}
        if self.path_tasks.len() < PATH_TASKS_MAX {
            self.path_tasks.spawn(task);
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.clock.now();
        match command {
            Command::Lookup(account) => self.node.lookup(now, account),
            Command::SendMessage {
                to_device,
                to_account,
                payload,
                reply,
            } => {
                let outcome = self.node.send_message(now, to_device, to_account, &payload);
                let _ = reply.send(outcome);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::StunBinding { server, reply } => {
                while self.stun_tasks.try_join_next().is_some() {}
                let demux = self.demux.clone();
                self.stun_tasks.spawn(async move {
                    let _ = reply.send(demux.stun_binding(server).await);
                });
            }
            Command::ConnectPeer(record) => self.node.connect_peer(now, &record),
            Command::AddBootstrap(contact) => self.node.add_bootstrap(now, contact),
            Command::SetMappedAddr(mapped) => {
                self.node.set_mapped_addr(mapped.map(Addr::from_socket));
            }
            Command::SetContacts(accounts) => {
                self.node.set_contacts(accounts);
            }
            Command::SetRevealAddresses(policy) => self.node.set_reveal_addresses(policy),
            Command::RegisterName(claim) => self.node.register_name(now, *claim),
            Command::LookupName(name_key) => self.node.lookup_name(now, name_key),
            Command::PublishAccountSecrets { bundle, deals } => {
                self.node.publish_account_secrets(now, *bundle, deals);
            }
            Command::OpenBundle {
                account,
                password,
                entropy,
            } => self.node.open_bundle(now, account, &password, *entropy),
            Command::SetDeviceList(list) => self.node.set_device_list(now, *list),
            Command::SetRootRotation(rotation) => self.node.set_root_rotation(now, *rotation),
            Command::FetchDeviceList(account) => self.node.fetch_device_list(now, account),
            Command::KeepOwnName(certificate) => self.node.keep_own_name(now, *certificate),
            Command::Shutdown => {}
        }
    }

    fn status(&self) -> NodeStatus {
        NodeStatus {
            is_supernode: self.node.is_supernode(),
            contact: self.node.supernode_contact(),
            attached: self.node.attached_supernodes(),
            attached_clients: self.node.attached_clients(),
            outbox_len: self.node.outbox_len(),
            membership_len: self.node.membership_len(),
            stored_records: self.node.stored_records(),
            host_cache: self.node.host_cache().entries().to_vec(),
            members_sample: self.node.members_sample(MEMBERS_SAMPLE_LEN_MAX),
            node: self.node.stats().clone(),
            links: self.links.stats(),
            demux: self.demux.stats(),
            paths: self.node.paths(),
            relay_bindings: self.node.relay_bindings(),
            durable_commits: self.durable_commits,
            durable_rows: self.durable_rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_from_a_punching_peer_needs_that_peers_key() {
        let (peer, other) = (PublicKey([1; 32]), PublicKey([2; 32]));
        // No expectation at the address: any connection will do.
        assert!(proves_expected_key(None, None));
        assert!(proves_expected_key(None, Some(other)));
        // A peer is expected there: only its key.
        assert!(proves_expected_key(Some(peer), Some(peer)));
        assert!(!proves_expected_key(Some(peer), Some(other)));
        assert!(!proves_expected_key(Some(peer), None));
    }
}
