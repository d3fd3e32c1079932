//! Measures what a supernode's CPU pays per operation in the real driver,
//! for the simulator's CPU model (`crates/sim/src/cpu.rs`).
//!
//! ```text
//! cargo run --release -p peerline-net --example calibrate -- [--rounds 5] [--scale 1] [--concurrency 8]
//! ```
//! (`bench/calibrate.sh` runs it and records the result with the machine.)
//!
//! The measured supernode is a real driver (`RunningNode`: quinn, key-bound
//! TLS, the production core with full Ed25519) alone on a tokio runtime of
//! one worker thread; its CPU is the on-CPU time of that runtime's threads
//! (`/proc/self/task/*/schedstat`, user and kernel time in ns), so the load
//! generator's own work (its side of TLS, its signatures) is not counted.
//! Three more supernodes on the load runtime make it a member of a real
//! overlay: an attach makes it ask them for mail, a publish makes it store
//! the record with them, and its gossip with them is the idle baseline
//! subtracted from every figure.
//!
//! The load comes from hand-driven clients (a quinn endpoint each, speaking
//! the wire protocol directly), so that every operation is exactly one of:
//!
//! * `quic_handshake`: a new QUIC connection (TLS 1.3, both certificates
//!   checked) that is closed at once;
//! * `attach_hello`: a new connection carrying `AttachHello`, answered by
//!   `AttachChallenge`;
//! * `attach_full`: a new connection, `AttachHello` → `AttachChallenge` →
//!   `AttachProof` (device certificate and proof checked: two Ed25519
//!   verifications; a ticket signed) → `AttachAccepted`;
//! * `attach_resume`: a new connection carrying `AttachResume` (ticket and
//!   proof checked, a new ticket signed) → `AttachAccepted`;
//! * `ping`: `Ping` → `Pong` on an attached client's open connection (a
//!   core message with no cryptography);
//! * `lookup_local`: `LookupRequest` → `LookupResponse` answered from the
//!   supernode's own directory (it is a replica of the record);
//! * `publish`: `Publish` (a presence record: two Ed25519 verifications, then
//!   stored here and sent to the three other replicas), measured as
//!   publish-then-ping minus a ping.
//!
//! With no driver around them: `ed25519_sign` and `ed25519_verify`
//! (`peerline_core::identity`, full mode), on this thread. And the relay's
//! data plane: `relay_frame_170B` / `relay_frame_1200B`, one relay frame
//! forwarded between two bound channels by the demultiplexer (received,
//! looked up, channel rewritten, sent), on a demultiplexed endpoint alone
//! on the measured runtime, fed from plain UDP sockets in a closed loop.
//!
//! Each operation runs `rounds` times (interleaved, so that a busy moment
//! of the machine spreads over all of them); the table gives the median
//! µs per operation and the lowest and highest round.

use peerline_core::client::attach_proof_bytes;
use peerline_core::identity::{domain, resume_proof_bytes, sign_presence, verify};
use peerline_core::{CryptoMode, DeviceIdentity, Keypair, Params, RolePolicy};
use peerline_net::demux::DemuxLimits;
use peerline_net::quic::{client_config, demux_endpoint, endpoint};
use peerline_net::relay::table::RelayLimits;
use peerline_net::relay::{self, RelayFrame};
use peerline_net::tls::SERVER_NAME;
use peerline_net::{
    DriverConfig, DriverLimits, NodeCertificate, QuicLimits, RunningNode, StartError,
};
use peerline_proto::{
    decode, encode, to_signing_bytes, BoundedVec, Contact, Frame, Message, MessageKind,
    PresenceBody, PresenceRecord, PublicKey, Ticket, MESSAGE_LEN_MAX,
};
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Name of the measured runtime's threads (`/proc/.../comm`, ≤ 15 bytes).
const MEASURED_THREAD: &str = "calib-measured";
/// Other supernodes of the overlay (with the measured one: four, so with
/// the production `replication_k` of 4 it replicates every record).
const PEER_SUPERNODES: usize = 3;
/// A step of the harness that takes longer than this is a failure.
const STEP_WITHIN: Duration = Duration::from_secs(20);
/// Relay frames in flight at once in the closed loop.
const RELAY_WINDOW: usize = 16;

struct Args {
    rounds: usize,
    scale: f64,
    concurrency: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        rounds: 5,
        scale: 1.0,
        concurrency: 8,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = format!("{flag} {value}: not a number");
        match flag.as_str() {
            "--rounds" => args.rounds = value.parse().map_err(|_| bad)?,
            "--scale" => args.scale = value.parse().map_err(|_| bad)?,
            "--concurrency" => args.concurrency = value.parse().map_err(|_| bad)?,
            _ => {
                return Err(format!(
                    "unknown flag {flag}; use --rounds, --scale, --concurrency"
                ))
            }
        }
    }
    if args.rounds == 0 || args.concurrency == 0 || args.scale.is_nan() || args.scale <= 0.0 {
        return Err("--rounds, --scale and --concurrency must be positive".into());
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("error: {problem}");
            std::process::exit(2);
        }
    };
    let measured = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(MEASURED_THREAD)
        .enable_all()
        .build()
        .expect("a runtime");
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("calib-load")
        .enable_all()
        .build()
        .expect("a runtime");
    let mut table = Table::default();
    for _ in 0..args.rounds {
        measure_signatures(&args, &mut table);
    }
    load.block_on(measure_relay(measured.handle(), &args, &mut table));
    let idle = load.block_on(measure_node(measured.handle(), &args, &mut table));
    table.print(&args, idle);
}

// ---- CPU time ----

/// On-CPU nanoseconds (user and kernel) of every thread named `name`, by
/// thread ID.
fn threads_cpu_ns(name: &str) -> HashMap<u32, u64> {
    let mut times = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return times;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let on_cpu_ns = schedstat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok());
        let tid = task.file_name().to_string_lossy().parse().ok();
        if let (Some(tid), Some(ns)) = (tid, on_cpu_ns) {
            times.insert(tid, ns);
        }
    }
    times
}

/// CPU used by the measured runtime between two points, and the wall time.
struct Stopwatch {
    cpu: HashMap<u32, u64>,
    wall: Instant,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            cpu: threads_cpu_ns(MEASURED_THREAD),
            wall: Instant::now(),
        }
    }

    /// (CPU ns, wall s). A thread that ended in between (an idle blocking
    /// thread) is left out; one that started counts from zero.
    fn stop(&self) -> (u64, f64) {
        let now = threads_cpu_ns(MEASURED_THREAD);
        let cpu = now
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(self.cpu.get(tid).copied().unwrap_or(0)))
            .sum();
        (cpu, self.wall.elapsed().as_secs_f64())
    }
}

/// On-CPU nanoseconds of the calling thread.
fn this_thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .expect("/proc/thread-self/schedstat (Linux) is readable")
}

// ---- results ----

#[derive(Default)]
struct Table {
    /// Operation name → µs per operation, one entry per round.
    rows: Vec<(&'static str, &'static str, Vec<f64>)>,
}

impl Table {
    fn add(&mut self, name: &'static str, what: &'static str, us_per_op: f64) {
        match self.rows.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, _, values)) => values.push(us_per_op),
            None => self.rows.push((name, what, vec![us_per_op])),
        }
    }

    fn print(&self, args: &Args, idle_cpu_share: f64) {
        println!(
            "rounds {} · scale {} · concurrency {} · idle baseline {:.2}% of a core (subtracted)",
            args.rounds,
            args.scale,
            args.concurrency,
            idle_cpu_share * 100.0
        );
        println!();
        println!("| operation | µs/op median | min | max | what the supernode does |");
        println!("|---|---:|---:|---:|---|");
        for (name, what, values) in &self.rows {
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            println!(
                "| `{name}` | {:.1} | {:.1} | {:.1} | {what} |",
                sorted[sorted.len() / 2],
                sorted[0],
                sorted[sorted.len() - 1]
            );
        }
    }
}

fn scaled(args: &Args, count: usize) -> usize {
    ((count as f64 * args.scale).round() as usize).max(args.concurrency)
}

// ---- signatures alone ----

fn measure_signatures(args: &Args, table: &mut Table) {
    let mut rng = Pcg64Mcg::seed_from_u64(7);
    let identity = DeviceIdentity::new_account(CryptoMode::Full, &mut rng, unix_s(), 86_400);
    let record = presence(&identity, 1, &[]);
    let message = to_signing_bytes(&record.body);
    let key = identity.keypair.public();
    let count = scaled(args, 4_000);
    let started = this_thread_cpu_ns();
    for _ in 0..count {
        std::hint::black_box(identity.keypair.sign(domain::PRESENCE, &message));
    }
    let sign_ns = this_thread_cpu_ns() - started;
    let started = this_thread_cpu_ns();
    for _ in 0..count {
        let outcome = verify(
            CryptoMode::Full,
            &key,
            domain::PRESENCE,
            &message,
            &record.signature,
        );
        assert!(std::hint::black_box(outcome).is_ok());
    }
    let verify_ns = this_thread_cpu_ns() - started;
    table.add(
        "ed25519_sign",
        "`Keypair::sign` of a presence body (no driver)",
        sign_ns as f64 / count as f64 / 1e3,
    );
    table.add(
        "ed25519_verify",
        "`identity::verify` of a presence body (no driver)",
        verify_ns as f64 / count as f64 / 1e3,
    );
}

// ---- the relay's data plane ----

async fn measure_relay(measured: &tokio::runtime::Handle, args: &Args, table: &mut Table) {
    let limits = DemuxLimits {
        relay: RelayLimits {
            // No rate limit: the cost of forwarding, not of refusing.
            bytes_per_s: 1 << 40,
            burst_bytes: 1 << 40,
            ..RelayLimits::default()
        },
        ..DemuxLimits::default()
    };
    let certificate = NodeCertificate::new(&Keypair::from_seed(CryptoMode::Full, [9; 32]))
        .expect("a certificate");
    let socket = UdpSocket::bind(loopback()).expect("a loopback socket");
    let relay_addr = socket.local_addr().expect("bound");
    // The endpoint and its demultiplexer live on the measured runtime.
    let (endpoint, demux) = measured
        .spawn(async move { demux_endpoint(socket, &certificate, QuicLimits::default(), limits) })
        .await
        .expect("the endpoint task")
        .expect("a relay endpoint");
    let a = UdpSocket::bind(loopback()).expect("a loopback socket");
    let b = UdpSocket::bind(loopback()).expect("a loopback socket");
    const A_CHANNEL: u16 = 0x8001;
    const B_CHANNEL: u16 = 0x8002;
    demux
        .relay_bind(
            (a.local_addr().expect("bound"), A_CHANNEL),
            (b.local_addr().expect("bound"), B_CHANNEL),
        )
        .expect("a binding");
    b.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a timeout");
    let count = scaled(args, 40_000);
    for _ in 0..args.rounds {
        for (name, payload_len) in [("relay_frame_170B", 170), ("relay_frame_1200B", 1200)] {
            let mut frame = Vec::new();
            relay::encode(
                RelayFrame {
                    channel: A_CHANNEL,
                    payload: &vec![0x5a; payload_len],
                },
                &mut frame,
            )
            .expect("a frame");
            let forwarded_before = demux.stats().relay_frames_forwarded;
            let watch = Stopwatch::start();
            let (a, b, frame) = (
                a.try_clone().expect("a socket"),
                b.try_clone().expect("a socket"),
                frame,
            );
            tokio::task::spawn_blocking(move || {
                relay_closed_loop(&a, &b, relay_addr, &frame, count)
            })
            .await
            .expect("the relay loop");
            let (cpu_ns, _) = watch.stop();
            let forwarded = demux.stats().relay_frames_forwarded - forwarded_before;
            assert!(
                forwarded as f64 >= count as f64 * 0.9,
                "the relay forwarded only {forwarded} of {count} frames"
            );
            table.add(
                name,
                "one frame between two bound channels: received, looked up, rewritten, sent (demux on quinn's endpoint task)",
                cpu_ns as f64 / forwarded as f64 / 1e3,
            );
        }
    }
    drop(endpoint);
}

/// Sends `count` frames from `a` through the relay to `b`, at most
/// `RELAY_WINDOW` in flight; a frame not back within the read timeout is
/// given up (the relay's counter says how many went through).
fn relay_closed_loop(a: &UdpSocket, b: &UdpSocket, relay: SocketAddr, frame: &[u8], count: usize) {
    let mut buffer = [0u8; 2048];
    let mut sent = 0;
    while sent < count {
        let burst = RELAY_WINDOW.min(count - sent);
        for _ in 0..burst {
            a.send_to(frame, relay).expect("a loopback send");
        }
        sent += burst;
        for _ in 0..burst {
            if b.recv_from(&mut buffer).is_err() {
                break;
            }
        }
    }
}

// ---- the node ----

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Production parameters with the budgets out of the way: this measures
/// what work costs, not what admission control refuses.
fn params() -> Params {
    Params {
        id_puzzle_difficulty_bits: 8,
        handshakes_per_s: 1_000_000,
        handshake_burst: 1_000_000,
        lookups_per_s: 1_000_000,
        lookup_burst: 1_000_000,
        supernode_capacity_attachments: 100_000,
        ..Params::default()
    }
}

fn presence(identity: &DeviceIdentity, sequence: u64, supernodes: &[Contact]) -> PresenceRecord {
    let now = unix_s();
    sign_presence(
        &identity.keypair,
        PresenceBody {
            cert: identity.cert,
            sequence,
            issued_unix_s: now,
            expires_unix_s: now + 3_600,
            supernodes: BoundedVec::truncating(supernodes.iter().copied()),
        },
    )
}

async fn start_supernode(
    rng: &mut Pcg64Mcg,
    bootstrap: Vec<Contact>,
    on: Option<&tokio::runtime::Handle>,
) -> Result<RunningNode, StartError> {
    let identity = DeviceIdentity::new_account(CryptoMode::Full, rng, unix_s(), 86_400);
    let config = DriverConfig {
        listen: loopback(),
        advertised: None,
        params: Arc::new(params()),
        identity,
        policy: RolePolicy::SupernodeOnly,
        bootstrap,
        rng_seed: Some(rng.next_u64()),
        limits: DriverLimits::default(),
        persist: None,
    };
    let (node, mut events) = match on {
        Some(runtime) => runtime
            .spawn(RunningNode::start(config))
            .await
            .expect("the start task")?,
        None => RunningNode::start(config).await?,
    };
    // Nobody reads the events; keep the queue from filling.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    Ok(node)
}

/// A hand-driven client: its own endpoint (so its own address), its
/// identity, and what it holds between operations.
struct Prober {
    endpoint: quinn::Endpoint,
    identity: DeviceIdentity,
    config: quinn::ClientConfig,
    supernode: SocketAddr,
    supernode_key: PublicKey,
    session: Option<quinn::Connection>,
    ticket: Option<Ticket>,
    resume_counter: u64,
    presence_sequence: u64,
    ping_sequence: u32,
}

impl Prober {
    fn new(rng: &mut Pcg64Mcg, supernode: &Contact) -> Prober {
        let identity = DeviceIdentity::new_account(CryptoMode::Full, rng, unix_s(), 86_400);
        let certificate = NodeCertificate::new(&identity.keypair).expect("a certificate");
        let config = client_config(&certificate, Some(supernode.key), QuicLimits::default())
            .expect("a client configuration");
        let socket = UdpSocket::bind(loopback()).expect("a loopback socket");
        Prober {
            endpoint: endpoint(socket, &certificate, QuicLimits::default()).expect("an endpoint"),
            identity,
            config,
            supernode: supernode.addr.to_socket(),
            supernode_key: supernode.key,
            session: None,
            ticket: None,
            resume_counter: 0,
            presence_sequence: 0,
            ping_sequence: 0,
        }
    }

    async fn connect(&self) -> quinn::Connection {
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), self.supernode, SERVER_NAME)
            .expect("a dialable address");
        within("a QUIC handshake", connecting)
            .await
            .expect("the handshake succeeds")
    }

    async fn quic_handshake(&mut self) {
        let connection = self.connect().await;
        connection.close(0u32.into(), b"");
    }

    async fn attach_hello(&mut self) {
        let connection = self.connect().await;
        self.hello(&connection).await;
        connection.close(0u32.into(), b"");
    }

    /// Sends `AttachHello` and returns the challenge.
    async fn hello(&self, connection: &quinn::Connection) -> [u8; 32] {
        let cert = self.identity.cert;
        send(connection, &Message::AttachHello { cert }).await;
        match receive(connection, MessageKind::AttachChallenge).await {
            Message::AttachChallenge { challenge, .. } => challenge,
            _ => unreachable!("receive returns the kind asked for"),
        }
    }

    /// A full login on a new connection; keeps the connection as the
    /// session when `keep`.
    async fn attach_full(&mut self, keep: bool) {
        let connection = self.connect().await;
        let challenge = self.hello(&connection).await;
        let proof = attach_proof_bytes(&challenge, &self.supernode_key);
        let signature = self.identity.keypair.sign(domain::ATTACH, &proof);
        let cert = self.identity.cert;
        send(
            &connection,
            &Message::AttachProof {
                cert,
                challenge,
                signature,
            },
        )
        .await;
        self.accepted(&connection).await;
        if keep {
            self.session = Some(connection);
        } else {
            connection.close(0u32.into(), b"");
        }
    }

    async fn accepted(&mut self, connection: &quinn::Connection) {
        match receive(connection, MessageKind::AttachAccepted).await {
            Message::AttachAccepted { ticket, .. } => {
                self.ticket = Some(ticket.expect("the supernode issues tickets"));
            }
            _ => unreachable!("receive returns the kind asked for"),
        }
    }

    /// A resume with the last ticket, from the address it names, on a
    /// new connection (as after the issuing supernode's crash).
    async fn attach_resume(&mut self) {
        let ticket = self.ticket.expect("attached once before");
        self.resume_counter += 1;
        let counter = self.resume_counter;
        let proof = resume_proof_bytes(&self.supernode_key, &ticket, counter);
        let signature = self.identity.keypair.sign(domain::RESUME, &proof);
        let connection = self.connect().await;
        send(
            &connection,
            &Message::AttachResume {
                ticket,
                counter,
                signature,
            },
        )
        .await;
        self.accepted(&connection).await;
        connection.close(0u32.into(), b"");
    }

    fn session(&self) -> &quinn::Connection {
        self.session.as_ref().expect("attached with a session")
    }

    async fn ping(&mut self) {
        self.ping_sequence += 1;
        let sequence = self.ping_sequence;
        send(self.session(), &Message::Ping { sequence }).await;
        receive(self.session(), MessageKind::Pong).await;
    }

    async fn lookup(&mut self, account: PublicKey) {
        let query_id = self.ping_sequence;
        self.ping_sequence += 1;
        send(
            self.session(),
            &Message::LookupRequest { query_id, account },
        )
        .await;
        match receive(self.session(), MessageKind::LookupResponse).await {
            Message::LookupResponse { record, hops, .. } => {
                assert!(record.is_some() && hops == 0, "answered from its own store");
            }
            _ => unreachable!("receive returns the kind asked for"),
        }
    }

    /// A new presence record (signed here, outside the measurement's
    /// interest), then a ping to know the supernode has read it.
    async fn publish_then_ping(&mut self, supernode: &Contact) {
        self.presence_sequence += 1;
        let record = presence(&self.identity, self.presence_sequence, &[*supernode]);
        send(self.session(), &Message::Publish { record }).await;
        self.ping().await;
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_WITHIN, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} took longer than {STEP_WITHIN:?}"),
    }
}

/// One frame on its own stream, as the driver sends them.
async fn send(connection: &quinn::Connection, message: &Message) {
    let bytes = encode(message).expect("a message within bounds");
    within("a frame write", async {
        let mut stream = connection.open_uni().await.expect("an open connection");
        stream.write_all(&bytes).await.expect("a stream write");
        stream.finish().expect("an open stream");
    })
    .await;
}

/// The next frame of `kind` on `connection` (others are skipped).
async fn receive(connection: &quinn::Connection, kind: MessageKind) -> Message {
    within("an answer", async {
        loop {
            let mut stream = connection.accept_uni().await.expect("an open connection");
            let bytes = stream
                .read_to_end(MESSAGE_LEN_MAX)
                .await
                .expect("a whole frame");
            if let Ok(Frame::Message(message)) = decode(&bytes) {
                if message.kind() == kind {
                    return message;
                }
            }
        }
    })
    .await
}

/// Runs `count` operations spread over the probers (each one after the
/// other on its prober, the probers side by side); returns the measured
/// runtime's CPU ns and the wall seconds.
async fn run_ops<F>(probers: &mut Vec<Prober>, count: usize, op: F) -> (u64, f64)
where
    F: Fn(Prober) -> std::pin::Pin<Box<dyn std::future::Future<Output = Prober> + Send>>
        + Copy
        + Send
        + 'static,
{
    let per_prober = count / probers.len();
    let watch = Stopwatch::start();
    let mut tasks = tokio::task::JoinSet::new();
    for prober in probers.drain(..) {
        tasks.spawn(async move {
            let mut prober = prober;
            for _ in 0..per_prober {
                prober = op(prober).await;
            }
            prober
        });
    }
    while let Some(prober) = tasks.join_next().await {
        probers.push(prober.expect("a prober task"));
    }
    watch.stop()
}

/// Measures the node's operations; returns the idle baseline (share of a core).
async fn measure_node(measured: &tokio::runtime::Handle, args: &Args, table: &mut Table) -> f64 {
    let mut rng = Pcg64Mcg::seed_from_u64(11);
    let node = start_supernode(&mut rng, Vec::new(), Some(measured))
        .await
        .expect("the measured supernode starts");
    let contact = node.contact().expect("a supernode has a contact");
    let mut peers = Vec::new();
    for _ in 0..PEER_SUPERNODES {
        peers.push(
            start_supernode(&mut rng, vec![contact], None)
                .await
                .expect("a peer supernode starts"),
        );
    }
    within("the overlay to form", async {
        loop {
            let status = node.control.status().await.expect("running");
            if status.membership_len == PEER_SUPERNODES + 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Let the joins' syncs and first gossip rounds pass.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let idle = {
        let watch = Stopwatch::start();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (cpu_ns, wall_s) = watch.stop();
        cpu_ns as f64 / 1e9 / wall_s
    };
    let net_us = |(cpu_ns, wall_s): (u64, f64), count: usize| {
        (cpu_ns as f64 / 1e3 - idle * wall_s * 1e6) / count as f64
    };

    // Probers that open a connection per operation, and probers attached
    // once with a session (a prober of each kind never shares an address:
    // the newest connection from an address is the one the supernode
    // answers on).
    let mut churners: Vec<Prober> = (0..args.concurrency)
        .map(|_| Prober::new(&mut rng, &contact))
        .collect();
    let mut sessions: Vec<Prober> = (0..args.concurrency)
        .map(|_| Prober::new(&mut rng, &contact))
        .collect();
    for prober in churners.iter_mut() {
        prober.attach_full(false).await;
    }
    for prober in sessions.iter_mut() {
        prober.attach_full(true).await;
        prober.publish_then_ping(&contact).await;
    }
    // The lookup target: a session prober's own record (every supernode of
    // four is a replica with replication_k = 4).
    let target = sessions[0].identity.account();
    within("the target's record to be stored", async {
        loop {
            let status = node.control.status().await.expect("running");
            if status.stored_records >= args.concurrency {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let handshakes = scaled(args, 300);
    let messages = scaled(args, 3_000);
    for _ in 0..args.rounds {
        let measured = run_ops(&mut churners, handshakes, |mut p| {
            Box::pin(async move {
                p.quic_handshake().await;
                p
            })
        })
        .await;
        table.add(
            "quic_handshake",
            "new QUIC connection (TLS 1.3, both key-bound certificates checked), closed at once",
            net_us(measured, handshakes),
        );
        let measured = run_ops(&mut churners, handshakes, |mut p| {
            Box::pin(async move {
                p.attach_hello().await;
                p
            })
        })
        .await;
        table.add(
            "attach_hello",
            "new connection + `AttachHello` → `AttachChallenge` (a keyed hash, no signature)",
            net_us(measured, handshakes),
        );
        let measured = run_ops(&mut churners, handshakes, |mut p| {
            Box::pin(async move {
                p.attach_full(false).await;
                p
            })
        })
        .await;
        table.add(
            "attach_full",
            "new connection + hello, challenge, `AttachProof` (2 verifications, 1 ticket signed, mail asked of 3 replicas) → `AttachAccepted`",
            net_us(measured, handshakes),
        );
        let measured = run_ops(&mut churners, handshakes, |mut p| {
            Box::pin(async move {
                p.attach_resume().await;
                p
            })
        })
        .await;
        table.add(
            "attach_resume",
            "new connection + `AttachResume` (ticket and proof: 2 verifications, 1 ticket signed, mail asked) → `AttachAccepted`",
            net_us(measured, handshakes),
        );
        let measured = run_ops(&mut sessions, messages, |mut p| {
            Box::pin(async move {
                p.ping().await;
                p
            })
        })
        .await;
        let ping_us = net_us(measured, messages);
        table.add(
            "ping",
            "`Ping` → `Pong` on an open connection (no cryptography)",
            ping_us,
        );
        let measured = run_ops(&mut sessions, messages, move |mut p| {
            Box::pin(async move {
                p.lookup(target).await;
                p
            })
        })
        .await;
        table.add(
            "lookup_local",
            "`LookupRequest` → `LookupResponse` from its own directory, on an open connection",
            net_us(measured, messages),
        );
        let measured = run_ops(&mut sessions, messages, move |mut p| {
            Box::pin(async move {
                p.publish_then_ping(&contact).await;
                p
            })
        })
        .await;
        table.add(
            "publish",
            "`Publish` (2 verifications, stored, sent to 3 other replicas), no answer: publish+ping minus ping",
            net_us(measured, messages) - ping_us,
        );
    }
    let status = node.control.status().await.expect("running");
    assert_eq!(
        status.node.signatures_rejected, 0,
        "every proof, ticket and record the harness sent was valid"
    );
    for peer in peers {
        let _ = peer.shutdown().await;
    }
    let _ = node.shutdown().await;
    idle
}
