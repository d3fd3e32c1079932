//! How core frames travel between nodes: one QUIC connection per peer
//! address, and **one unidirectional stream per frame**.
//!
//! Why a stream per frame rather than length-prefixed frames on one
//! long-lived stream: the core was written for datagrams. It re-sends what
//! matters on its own timers and expects an independent fate for each frame;
//! on a single stream one lost packet would hold back every frame behind it
//! (head-of-line blocking) and turn the core's timers into guesses about
//! queueing. A stream per frame costs no round trip in QUIC (a stream opens
//! with its first STREAM frame), its end delimits the frame, so there is no
//! length prefix to trust, a bad frame spoils only its own stream, and the
//! peer's stream credit (`QuicLimits::uni_streams_max`) bounds how many
//! frames can be in flight towards a node at once. Frames are read with
//! `read_to_end(MESSAGE_LEN_MAX)`: a longer one is refused before it is
//! buffered past the bound.
//!
//! Connections are keyed by the peer's address. Every node has exactly one
//! socket, so the remote address of an accepted connection is the peer's
//! listening address, the same one the core sends to. A sender task per
//! address dials on the first frame, reuses whatever live connection the
//! address has (dialed or accepted), and when a connection fails it is
//! dropped and the next frame dials again. The driver never retries a frame:
//! a frame that cannot go now is dropped, as a datagram would be, and the
//! core's own timers decide what to send again.

use crate::quic::{client_config, EndpointError, QuicLimits};
use crate::tls::{peer_key, NodeCertificate, SERVER_NAME};
use peerline_proto::{Addr, PublicKey, MESSAGE_LEN_MAX};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Application error codes on streams and connections.
const STREAM_REFUSED: u32 = 1;
pub(crate) const CLOSE_SHUTDOWN: u32 = 0;

/// Streams a sender keeps a handle on, to wait at shutdown until the peer
/// acknowledged the last frames (the node's goodbyes).
const STREAMS_AWAITED_AT_SHUTDOWN_MAX: usize = 8;

/// Bounds of the transport around one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkLimits {
    pub quic: QuicLimits,
    /// A frame must arrive whole (or be written) within this; a peer that
    /// opens streams and trickles bytes (slowloris) loses the stream.
    pub frame_timeout: Duration,
    /// Peer addresses with a sender at once; frames to more are dropped.
    pub peers_max: usize,
    /// Frames queued towards one peer (while it is being dialed, or its
    /// stream credit is used up); more are dropped.
    pub frames_per_peer_max: usize,
    /// Frames received but not yet handed to the node; more are dropped.
    pub inbound_frames_max: usize,
    /// QUIC connections at once; further incoming ones are refused.
    pub connections_max: usize,
}

impl Default for LinkLimits {
    fn default() -> Self {
        LinkLimits {
            quic: QuicLimits::default(),
            frame_timeout: Duration::from_secs(10),
            peers_max: 4_096,
            frames_per_peer_max: 64,
            inbound_frames_max: 4_096,
            connections_max: 8_192,
        }
    }
}

/// What the transport counted (diagnostics; the core keeps its own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames the node handed to the links; each ends as sent or dropped, so
    /// `frames_queued - frames_sent - frames_dropped_out` are still on their
    /// way out (`LinkStats::frames_in_flight`).
    pub frames_queued: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Dropped on the way out: queue full, too many peers, dial failed,
    /// write failed.
    pub frames_dropped_out: u64,
    /// Dropped on the way in: the node's inbound queue was full.
    pub frames_dropped_in: u64,
    /// Refused for exceeding `MESSAGE_LEN_MAX`.
    pub frames_oversized: u64,
    /// Streams that broke or did not finish within `frame_timeout`.
    pub frames_broken: u64,
    pub dials: u64,
    pub dials_failed: u64,
    pub connections_accepted: u64,
    /// Incoming connections whose handshake failed (bad certificate…) or
    /// that were refused for lack of room.
    pub connections_refused: u64,
    /// Frames from an address the node expects a certain key at (a peer
    /// it punches to) over a connection that proved another key.
    pub frames_wrong_key: u64,
}

#[derive(Default)]
struct Counters {
    frames_queued: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    frames_dropped_out: AtomicU64,
    frames_dropped_in: AtomicU64,
    frames_oversized: AtomicU64,
    frames_broken: AtomicU64,
    frames_wrong_key: AtomicU64,
    dials: AtomicU64,
    dials_failed: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
}

impl LinkStats {
    /// Frames queued or being dialled for, not yet sent or dropped (a
    /// short-lived client waits for 0 before it stops: a dial still running
    /// at shutdown is abandoned). A sender that idles out in the instant a
    /// frame reaches it loses the frame uncounted: wait with a bound.
    pub fn frames_in_flight(&self) -> u64 {
        self.frames_queued
            .saturating_sub(self.frames_sent)
            .saturating_sub(self.frames_dropped_out)
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> LinkStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LinkStats {
            frames_queued: read(&self.frames_queued),
            frames_sent: read(&self.frames_sent),
            frames_received: read(&self.frames_received),
            frames_dropped_out: read(&self.frames_dropped_out),
            frames_dropped_in: read(&self.frames_dropped_in),
            frames_oversized: read(&self.frames_oversized),
            frames_broken: read(&self.frames_broken),
            frames_wrong_key: read(&self.frames_wrong_key),
            dials: read(&self.dials),
            dials_failed: read(&self.dials_failed),
            connections_accepted: read(&self.connections_accepted),
            connections_refused: read(&self.connections_refused),
        }
    }
}

/// A frame that arrived: who sent it (the peer's listening address) and
/// its bytes, at most `MESSAGE_LEN_MAX`.
/// A received frame: the sender's address, the key its connection proved
/// (TLS), and the bytes.
pub(crate) type Inbound = (Addr, Option<PublicKey>, Vec<u8>);

/// What the sender and reader tasks share.
struct Shared {
    endpoint: quinn::Endpoint,
    limits: LinkLimits,
    certificate: NodeCertificate,
    /// Dial configuration without a pinned key.
    client_config: quinn::ClientConfig,
    /// Keys pinned by address for the node's life (its bootstrap contacts).
    pinned: HashMap<Addr, PublicKey>,
    /// The live connection frames to an address use (the newest accepted
    /// one, or the one its sender dialed).
    connections: Mutex<HashMap<Addr, quinn::Connection>>,
    inbound: mpsc::Sender<Inbound>,
    /// Connections a sender dialed, for the driver to read from.
    dialed: mpsc::Sender<(Addr, quinn::Connection)>,
    /// Set when the node shuts down: dials in progress give up (their
    /// frames could only be goodbyes to a peer that does not answer).
    closing: watch::Sender<bool>,
    counters: Counters,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, HashMap<Addr, quinn::Connection>> {
        // A panic while holding this lock cannot leave the map half-changed
        // (every use is one insert, get or remove), so a poisoned lock is
        // still good.
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn live_connection(&self, addr: &Addr) -> Option<quinn::Connection> {
        let connections = self.connections();
        let connection = connections.get(addr)?;
        connection
            .close_reason()
            .is_none()
            .then(|| connection.clone())
    }

    /// Forgets `connection` as the one for `addr`, unless another replaced it.
    fn forget(&self, addr: &Addr, connection: &quinn::Connection) {
        let mut connections = self.connections();
        if connections
            .get(addr)
            .is_some_and(|current| current.stable_id() == connection.stable_id())
        {
            connections.remove(addr);
        }
    }
}

/// The transport of one node: owned by its driver task, so that aborting
/// that task aborts every sender and reader and drops every connection.
pub(crate) struct Links {
    shared: Arc<Shared>,
    senders: HashMap<Addr, mpsc::Sender<Vec<u8>>>,
    sender_tasks: JoinSet<()>,
    /// Accepting and reading tasks (a reader per connection).
    reader_tasks: JoinSet<()>,
}

impl Links {
    pub fn new(
        endpoint: quinn::Endpoint,
        certificate: NodeCertificate,
        limits: LinkLimits,
        pinned: HashMap<Addr, PublicKey>,
        inbound: mpsc::Sender<Inbound>,
        dialed: mpsc::Sender<(Addr, quinn::Connection)>,
    ) -> Result<Links, EndpointError> {
        let shared = Arc::new(Shared {
            endpoint,
            limits,
            client_config: client_config(&certificate, None, limits.quic)?,
            certificate,
            pinned,
            connections: Mutex::new(HashMap::new()),
            inbound,
            dialed,
            closing: watch::Sender::new(false),
            counters: Counters::default(),
        });
        Ok(Links {
            shared,
            senders: HashMap::new(),
            sender_tasks: JoinSet::new(),
            reader_tasks: JoinSet::new(),
        })
    }

    pub fn stats(&self) -> LinkStats {
        self.shared.counters.snapshot()
    }

    /// Counts a frame the driver refused for the key its connection proved.
    pub fn count_wrong_key(&self) {
        bump(&self.shared.counters.frames_wrong_key);
    }

    /// Queues one frame for `to`, starting its sender if it has none.
    /// Never waits: a frame with no room is dropped, like a datagram.
    /// `expected` names the key the node believes `to` has (asked only when
    /// a sender starts); a bootstrap pin for the address overrides it.
    pub fn send(&mut self, to: Addr, frame: Vec<u8>, expected: impl FnOnce() -> Option<PublicKey>) {
        bump(&self.shared.counters.frames_queued);
        let frame = match self.senders.get(&to) {
            None => frame,
            Some(sender) => match sender.try_send(frame) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    bump(&self.shared.counters.frames_dropped_out);
                    return;
                }
                // The sender finished (idle): start a new one below.
                Err(mpsc::error::TrySendError::Closed(frame)) => {
                    self.senders.remove(&to);
                    frame
                }
            },
        };
        if self.senders.len() >= self.shared.limits.peers_max {
            self.senders.retain(|_, sender| !sender.is_closed());
            if self.senders.len() >= self.shared.limits.peers_max {
                bump(&self.shared.counters.frames_dropped_out);
                return;
            }
        }
        let (sender, queue) = mpsc::channel(self.shared.limits.frames_per_peer_max.max(1));
        // A fresh channel has room for one frame.
        let _ = sender.try_send(frame);
        self.senders.insert(to, sender);
        let expected = self.shared.pinned.get(&to).copied().or_else(expected);
        self.sender_tasks
            .spawn(send_loop(self.shared.clone(), to, expected, queue));
    }

    /// Starts the handshake of an incoming connection and then reads it.
    pub fn accept(&mut self, incoming: quinn::Incoming) {
        let shared = &self.shared;
        if shared.connections().len() >= shared.limits.connections_max {
            bump(&shared.counters.connections_refused);
            incoming.refuse();
            return;
        }
        self.reader_tasks
            .spawn(accept_and_read(shared.clone(), incoming));
    }

    /// Reads frames from a connection a sender dialed.
    pub fn read_dialed(&mut self, addr: Addr, connection: quinn::Connection) {
        self.reader_tasks
            .spawn(read_connection(self.shared.clone(), addr, connection));
    }

    /// Collects finished tasks so the task sets stay as small as the work.
    pub fn reap(&mut self) {
        while self.sender_tasks.try_join_next().is_some() {}
        while self.reader_tasks.try_join_next().is_some() {}
    }

    /// Graceful end: every queued frame is written and, within `flush`,
    /// acknowledged by its peer; then every connection is closed.
    pub async fn close(mut self, flush: Duration) {
        // Closing the queues lets each sender finish what it holds.
        self.senders.clear();
        self.shared.closing.send_replace(true);
        let _ = tokio::time::timeout(flush, async {
            while self.sender_tasks.join_next().await.is_some() {}
        })
        .await;
        self.sender_tasks.shutdown().await;
        self.shared
            .endpoint
            .close(CLOSE_SHUTDOWN.into(), b"node shut down");
        let _ = tokio::time::timeout(flush, self.shared.endpoint.wait_idle()).await;
        self.reader_tasks.shutdown().await;
    }
}

/// One peer's sender: dials when it has no live connection, writes each
/// frame on its own stream, and ends after an idle period or when the
/// driver closes its queue (then it waits, within the flush bound the
/// driver sets, for the last frames to be acknowledged).
async fn send_loop(
    shared: Arc<Shared>,
    to: Addr,
    expected: Option<PublicKey>,
    mut queue: mpsc::Receiver<Vec<u8>>,
) {
    let mut awaiting: VecDeque<quinn::SendStream> = VecDeque::new();
    loop {
        let frame = match tokio::time::timeout(shared.limits.quic.idle_timeout, queue.recv()).await
        {
            Ok(Some(frame)) => frame,
            // Queue closed: the node is shutting down.
            Ok(None) => break,
            // Idle: the driver starts a new sender when it needs one.
            Err(_) => return,
        };
        let connection = match shared.live_connection(&to) {
            Some(connection) => connection,
            None => match dial(&shared, to, expected).await {
                Some(connection) => connection,
                None => {
                    // Everything queued behind the failed dial goes too;
                    // the core decides what to send again.
                    let mut dropped = 1;
                    while queue.try_recv().is_ok() {
                        dropped += 1;
                    }
                    shared
                        .counters
                        .frames_dropped_out
                        .fetch_add(dropped, Ordering::Relaxed);
                    continue;
                }
            },
        };
        match tokio::time::timeout(
            shared.limits.frame_timeout,
            write_frame(&connection, &frame),
        )
        .await
        {
            Ok(Ok(stream)) => {
                bump(&shared.counters.frames_sent);
                if awaiting.len() == STREAMS_AWAITED_AT_SHUTDOWN_MAX {
                    awaiting.pop_front();
                }
                awaiting.push_back(stream);
            }
            Ok(Err(_)) | Err(_) => {
                bump(&shared.counters.frames_dropped_out);
                shared.forget(&to, &connection);
            }
        }
    }
    for stream in awaiting {
        let _ = stream.stopped().await;
    }
}

/// Dials `to`; with `expected`, a peer proving any other key is refused.
async fn dial(shared: &Shared, to: Addr, expected: Option<PublicKey>) -> Option<quinn::Connection> {
    bump(&shared.counters.dials);
    let config = match expected {
        None => Ok(shared.client_config.clone()),
        Some(key) => client_config(&shared.certificate, Some(key), shared.limits.quic),
    };
    let Ok(config) = config else {
        // Cannot happen with a configuration that built once; a frame is
        // not worth a panic.
        bump(&shared.counters.dials_failed);
        return None;
    };
    let connecting = match shared
        .endpoint
        .connect_with(config, to.to_socket(), SERVER_NAME)
    {
        Ok(connecting) => connecting,
        // An address QUIC cannot dial (port 0, unspecified IP, …).
        Err(_) => {
            bump(&shared.counters.dials_failed);
            return None;
        }
    };
    let mut closing = shared.closing.subscribe();
    let outcome = tokio::select! {
        outcome = connecting => outcome,
        _ = closing.wait_for(|closing| *closing) => {
            bump(&shared.counters.dials_failed);
            return None;
        }
    };
    match outcome {
        Ok(connection) => {
            shared.connections().insert(to, connection.clone());
            // The driver reads from it (the peer may send on it too). The
            // queue holds at most one entry per sender; a full one waits.
            let _ = shared.dialed.send((to, connection.clone())).await;
            Some(connection)
        }
        Err(_) => {
            bump(&shared.counters.dials_failed);
            None
        }
    }
}

async fn write_frame(
    connection: &quinn::Connection,
    frame: &[u8],
) -> Result<quinn::SendStream, WriteError> {
    let mut stream = connection.open_uni().await?;
    stream.write_all(frame).await?;
    stream.finish()?;
    Ok(stream)
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Closed(#[from] quinn::ClosedStream),
}

async fn accept_and_read(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let from = Addr::from_socket(incoming.remote_address());
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(_) => {
            bump(&shared.counters.connections_refused);
            return;
        }
    };
    bump(&shared.counters.connections_accepted);
    // The newest connection from an address wins: a peer dials only when it
    // has no live connection to us, so an older one is likely dead (the
    // peer restarted) and frames sent on it would be lost.
    shared.connections().insert(from, connection.clone());
    read_connection(shared, from, connection).await;
}

/// Reads every frame a connection carries until it closes.
async fn read_connection(shared: Arc<Shared>, from: Addr, connection: quinn::Connection) {
    // At most `uni_streams_max` streams are open at once (QUIC flow
    // control), so this set stays bounded.
    let mut streams = JoinSet::new();
    let proven = peer_key(&connection);
    loop {
        tokio::select! {
            stream = connection.accept_uni() => match stream {
                Ok(stream) => {
                    streams.spawn(read_frame(shared.clone(), from, proven, stream));
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    shared.forget(&from, &connection);
}

async fn read_frame(
    shared: Arc<Shared>,
    from: Addr,
    proven: Option<PublicKey>,
    mut stream: quinn::RecvStream,
) {
    let counters = &shared.counters;
    match tokio::time::timeout(
        shared.limits.frame_timeout,
        stream.read_to_end(MESSAGE_LEN_MAX),
    )
    .await
    {
        Ok(Ok(frame)) => {
            bump(&counters.frames_received);
            if shared.inbound.try_send((from, proven, frame)).is_err() {
                bump(&counters.frames_dropped_in);
            }
        }
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            bump(&counters.frames_oversized);
            let _ = stream.stop(STREAM_REFUSED.into());
        }
        Ok(Err(_)) => bump(&counters.frames_broken),
        Err(_) => {
            bump(&counters.frames_broken);
            let _ = stream.stop(STREAM_REFUSED.into());
        }
    }
}
