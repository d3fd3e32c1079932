//! `peerline node`: one long-running node on a real UDP socket — the shell
//! around `peerline-net`'s driver that a person or a service manager runs.
//!
//! It only does what a shell must: settings (flags over a TOML file),
//! the data directory (`state.redb`: identity, host cache), logs, a status file, and
//! signals. Every protocol decision (which supernode, when to retry, when to
//! promote) is the core's; the bootstrap list it hands the core is the saved
//! host cache first, then the seeds, then supernodes found on the local
//! network (`lan`). `portmap` asks the gateway to map the node's port.

pub mod config;
pub mod data_dir;
pub mod lan;
pub mod portmap;
pub mod store;

use anyhow::{bail, Context, Result};
use config::{key_hex, NodeArgs, NodeRole, NodeSettings, Seed};
use data_dir::{DataDir, IdentityOrigin};
use peerline_core::hostcache::HostEntry;
use peerline_core::{Event, Params, RolePolicy};
use peerline_net::clock::wall_clock_s;
use peerline_net::{DriverConfig, DriverLimits, NodeStatus, RunningNode, StartError};
use peerline_proto::{Addr, Contact, PublicKey};
use serde::Serialize;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// How often the status file is rewritten (and the host cache looked at).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// A changed host cache is saved at most this often (and at shutdown).
const HOST_CACHE_SAVE_INTERVAL: Duration = Duration::from_secs(10);
/// How often a status line goes to the log.
const STATUS_LOG_INTERVAL: Duration = Duration::from_secs(30);

pub fn run(args: NodeArgs) -> Result<ExitCode> {
    let settings = config::settings(args)?;
    init_logging(settings.log_level.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let outcome = runtime.block_on(daemon(settings));
    // A gateway request still running on a blocking thread (given up on,
    // bounded by its HTTP timeouts) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

fn init_logging(level: Option<&str>) -> Result<()> {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let filter = match level {
        Some(level) => EnvFilter::builder()
            .parse(level)
            .with_context(|| format!("log level '{level}' is not understood"))?,
        None => EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .from_env()
            .context("RUST_LOG is not understood; use e.g. info or peerline=debug")?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|error| anyhow::anyhow!("could not start logging: {error}"))
}

/// What the node starts with: the host cache first, then the seeds. A
/// seed whose key the cache knows replaces that entry's address (the
/// operator's word is newer), and the cache gives up places so that every
/// seed fits in the core's host cache (which keeps `len_max` entries and
/// refuses newcomers when full).
pub fn bootstrap_order(cached: &[Contact], seeds: &[Seed], len_max: usize) -> Vec<Contact> {
    let seeds: Vec<Contact> = seeds
        .iter()
        .take(len_max)
        .map(|seed| Contact {
            key: seed.key,
            id_nonce: 0,
            addr: Addr::from_socket(seed.addr),
        })
        .collect();
    let mut order: Vec<Contact> = Vec::with_capacity(len_max);
    for contact in cached {
        if order.len() + seeds.len() >= len_max {
            break;
        }
        if order.iter().any(|c| c.key == contact.key) {
            continue;
        }
        let seed = seeds.iter().find(|s| s.key == contact.key);
        order.push(match seed {
            Some(seed) => Contact {
                addr: seed.addr,
                ..*contact
            },
            None => *contact,
        });
    }
    for seed in seeds {
        if !order.iter().any(|c| c.key == seed.key) {
            order.push(seed);
        }
    }
    order
}

async fn daemon(settings: NodeSettings) -> Result<ExitCode> {
    // Before anything slow: a signal from now on stops the node politely.
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let data = DataDir::open(&settings.data_dir, wall_clock_s())?;
    let params = node_params(settings.fast_timers, settings.loopback_test_network);
    let identity = data.identity(wall_clock_s())?;
    let cached = data.load_host_cache();
    if let Some(warning) = &cached.warning {
        tracing::warn!("{warning}");
    }
    let bootstrap = bootstrap_order(
        &cached.contacts,
        &settings.bootstrap,
        params.host_cache_len_max,
    );
    let policy = match settings.role {
        NodeRole::Auto => RolePolicy::Auto,
        NodeRole::Supernode => RolePolicy::SupernodeOnly,
        NodeRole::Client => RolePolicy::ClientOnly,
    };
    let lan_interfaces = match settings.lan_discovery.is_on() {
        true => lan::plan(settings.listen),
        false => None,
    };
    if bootstrap.is_empty() {
        if lan_interfaces.is_some() && policy == RolePolicy::SupernodeOnly {
            tracing::info!("no bootstrap supernodes: joining those on the local network if any, else the first supernode of a new network");
        } else if lan_interfaces.is_some() {
            tracing::info!("no bootstrap supernodes: looking for one on the local network");
        } else if policy != RolePolicy::SupernodeOnly {
            bail!("no supernode to start from: give --bootstrap NODE_KEY@ADDR, or listen on a LAN address with --lan-discovery on (the first node of a new network runs with --role supernode)");
        } else {
            tracing::info!("no bootstrap supernodes: this is the first supernode of a new network");
        }
    }
    let no_bootstrap = bootstrap.is_empty();
    tracing::info!(
        "bootstrap: {} from the host cache, {} seeds given, {} in all",
        cached.contacts.len(),
        settings.bootstrap.len(),
        bootstrap.len()
    );
    let advertised = advertised_addr(&settings)?;
    let config = DriverConfig {
        listen: settings.listen,
        advertised,
        params: Arc::new(params),
        identity,
        policy,
        bootstrap,
        rng_seed: None,
        limits: DriverLimits::default(),
        // Votes, records, bundles, shares, budgets and revocations: restored
        // before the node sends, committed before what reveals them is sent.
        persist: Some(data.shared_store()),
    };
    let (node, mut events) = RunningNode::start(config)
        .await
        .map_err(|error| start_error(error, settings.listen, data.store().path()))?;
    // The account's device list goes to every supernode the node attaches
    // to, so what it revokes reaches supernodes that joined since.
    if let Some(list) = crate::devices::stored_list(data.store(), &node.account()) {
        let _ = node.control.set_device_list(list).await;
    }
    // The account's names are stored again at their replicas now and then.
    for (name, bytes) in data.store().owned_names().unwrap_or_default() {
        match postcard::from_bytes::<peerline_proto::NameCertificate>(&bytes) {
            Ok(certificate) => {
                let _ = node.control.keep_own_name(certificate).await;
            }
            Err(_) => {
                tracing::warn!("the saved certificate of {name} does not decode; not kept alive")
            }
        }
    }
    let key = key_hex(&node.device_key());
    let addr = node.advertised_addr().to_socket();
    let role = match settings.role {
        NodeRole::Auto => "auto role (client until promoted)",
        NodeRole::Supernode => "supernode",
        NodeRole::Client => "client",
    };
    println!(
        "peerline node · {role} · listening on {} · data in {}",
        node.local_addr(),
        data.path().display()
    );
    println!(
        "node key  {key} ({} identity)",
        match data.origin() {
            IdentityOrigin::Created => "new",
            IdentityOrigin::Migrated => "saved, moved into the state database",
            IdentityOrigin::Loaded => "saved",
        }
    );
    println!("messaging {key}:{}", key_hex(&node.account()));
    println!("bootstrap {key}@{addr}");
    let _ = std::io::stdout().flush();
    let mut lan = lan_interfaces.and_then(|interfaces| {
        lan::LanDiscovery::start(&interfaces, node.device_key(), no_bootstrap)
    });
    let port_mapping = start_port_mapping(&settings, &node);
    let contact_keys = contact_accounts(&data, &settings.contacts)?;
    tracing::info!(
        "{} contacts may learn this device's addresses; anyone else connects through its supernode",
        contact_keys.len()
    );
    node.control
        .set_contacts(contact_keys)
        .await
        .context("the node stopped on its own")?;

    let started = Instant::now();
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved_cache: Vec<Contact> = cached.contacts;
    let mut saved_at = Instant::now();
    let mut logged_at = Instant::now();
    let mut traffic = Traffic::default();
    let mut traffic_tick =
        tokio::time::interval(Duration::from_millis(settings.test_traffic_interval_ms));
    traffic_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connect = Connect::default();
    let signal = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            event = events.recv() => match event {
                Some(event) => {
                    if let Some(to) = settings.connect_to {
                        connect.on_event(&node.control, to, &event).await;
                    }
                    traffic.count(&event);
                    log_event(&event);
                }
                None => bail!("the node stopped on its own; see the log above"),
            },
            _ = traffic_tick.tick(), if settings.test_traffic_to.is_some() => {
                if let Some(to) = settings.test_traffic_to {
                    traffic.send(&node.control, to).await;
                }
            }
            _ = status_tick.tick() => {
                let Ok(status) = node.control.status().await else {
                    bail!("the node stopped on its own; see the log above");
                };
                if let Some(to) = settings.connect_to {
                    connect.tick(&node.control, to, &status).await;
                }
                if let Some(lan) = &mut lan {
                    lan.tick(&status, &node.control);
                }
                if let Some(path) = &settings.status_file {
                    write_status(path, &key, addr, &status, &traffic, started.elapsed(), true);
                }
                if logged_at.elapsed() >= STATUS_LOG_INTERVAL {
                    logged_at = Instant::now();
                    log_status(&status);
                }
                let known = known_supernodes(&status.host_cache, &status.members_sample);
                if saved_at.elapsed() >= HOST_CACHE_SAVE_INTERVAL && contacts(&known) != saved_cache {
                    saved_at = Instant::now();
                    saved_cache = contacts(&known);
                    save_host_cache(&data, &known);
                }
            }
        }
    };
    tracing::info!("{signal}: saying goodbye to the node's peers");
    if let Some(lan) = lan {
        lan.stop().await;
    }
    if let Some(port_mapping) = port_mapping {
        port_mapping.stop().await;
    }
    let last_status = node.control.status().await.ok();
    match node.shutdown().await {
        Ok(report) => save_host_cache(
            &data,
            &known_supernodes(&report.host_cache, &report.members_sample),
        ),
        Err(_) => tracing::warn!("the node was gone before it could say goodbye"),
    }
    if let (Some(path), Some(status)) = (&settings.status_file, &last_status) {
        write_status(path, &key, addr, status, &traffic, started.elapsed(), false);
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Starts port mapping when it is on and the node's address is private.
fn start_port_mapping(settings: &NodeSettings, node: &RunningNode) -> Option<portmap::PortMapping> {
    if !settings.port_mapping.is_on() {
        return None;
    }
    let listen = settings.listen;
    let outgoing = listen
        .ip()
        .is_unspecified()
        .then(|| outgoing_ip(listen.is_ipv6()))
        .flatten();
    match portmap::local_addr(listen, node.local_addr().port(), outgoing) {
        Ok(local) => Some(portmap::PortMapping::start(local, node.control.clone())),
        Err(reason) => {
            tracing::info!("no port mapping: {reason}");
            None
        }
    }
}

fn node_params(fast_timers: bool, loopback_test_network: bool) -> Params {
    if loopback_test_network {
        let (params, overrides) = crate::timers::loopback_test_network();
        tracing::warn!(
            "--loopback-test-network: for test networks on one machine only; changed from production: {}",
            overrides.join("; ")
        );
        return params;
    }
    if !fast_timers {
        return Params::default();
    }
    let (params, overrides) = crate::timers::fast();
    tracing::warn!(
        "--fast-timers: for networks on one machine only; changed from production: {}",
        overrides.join("; ")
    );
    params
}

/// The advertised address: the one given, else none when the listen
/// address is dialable as it is, else the listen port on the address of
/// the interface that routes outwards (logged, so the operator can check).
fn advertised_addr(settings: &NodeSettings) -> Result<Option<SocketAddr>> {
    if let Some(addr) = settings.advertise {
        if addr.ip().is_unspecified() || addr.port() == 0 {
            bail!("--advertise {addr} cannot be dialed: give this node's reachable IP address and port");
        }
        return Ok(Some(addr));
    }
    let listen = settings.listen;
    if !listen.ip().is_unspecified() {
        return Ok(None);
    }
    if listen.port() == 0 {
        bail!("listening on {listen} with no --advertise: give a fixed port, or --advertise ADDR");
    }
    let Some(ip) = outgoing_ip(listen.is_ipv6()) else {
        bail!("listening on {listen}, which other nodes cannot dial, and no outgoing interface was found: give --advertise ADDR");
    };
    let addr = SocketAddr::new(ip, listen.port());
    tracing::info!(
        "advertising {addr} (the outgoing interface's address; --advertise sets another)"
    );
    Ok(Some(addr))
}

/// The local address the kernel would send from towards the internet. A
/// UDP `connect` only looks the route up: nothing is sent.
pub fn outgoing_ip(v6: bool) -> Option<IpAddr> {
    let (local, remote) = if v6 {
        ("[::]:0", "[2001:db8::1]:9")
    } else {
        ("0.0.0.0:0", "192.0.2.1:9")
    };
    let socket = UdpSocket::bind(local).ok()?;
    socket.connect(remote).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

fn start_error(error: StartError, listen: SocketAddr, state: &std::path::Path) -> anyhow::Error {
    match error {
        // The store's own errors name the file already; a row the core
        // cannot take back is damage to the same file.
        StartError::Restore(problem) if problem.starts_with("the state database") => {
            anyhow::anyhow!("{problem}")
        }
        StartError::Restore(problem) => store::damaged(state, &problem),
        StartError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
            anyhow::anyhow!(
                "UDP {listen} is already in use (another node running?): choose another --listen port"
            )
        }
        StartError::Bind { source, .. }
            if source.kind() == std::io::ErrorKind::AddrNotAvailable =>
        {
            anyhow::anyhow!("cannot listen on {listen}: this machine has no such address")
        }
        other => anyhow::anyhow!("the node could not start: {other}"),
    }
}

/// What the node saves to start from next time: its host cache, then (a
/// supernode) the live members it knows that the cache lacks.
pub fn known_supernodes(host_cache: &[HostEntry], members: &[Contact]) -> Vec<HostEntry> {
    let mut known = host_cache.to_vec();
    for member in members {
        if !known.iter().any(|entry| entry.contact.key == member.key) {
            known.push(HostEntry {
                contact: *member,
                rtt_ms: u16::MAX,
                failures: 0,
                not_before_s: 0,
                hint_rank: 0,
            });
        }
    }
    known
}

/// The accounts the core may reveal the device's addresses to: the saved
/// contacts and `--contact`'s, each once. The daemon has no command that
/// changes the saved contacts while it runs; one that does must hand the
/// new set to `Control::set_contacts` too.
fn contact_accounts(data: &DataDir, extra: &[PublicKey]) -> Result<Vec<PublicKey>> {
    let mut accounts: Vec<PublicKey> = data
        .store()
        .contacts()?
        .into_iter()
        .map(|entry| entry.account_key)
        .collect();
    accounts.extend_from_slice(extra);
    accounts.sort_unstable();
    accounts.dedup();
    Ok(accounts)
}

fn contacts(entries: &[HostEntry]) -> Vec<Contact> {
    entries.iter().map(|entry| entry.contact).collect()
}

fn save_host_cache(data: &DataDir, entries: &[HostEntry]) {
    match data.save_host_cache(entries) {
        Ok(()) => tracing::debug!("saved {} host cache entries", entries.len()),
        Err(error) => tracing::warn!("{error:#}"),
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Attached { supernode } => tracing::info!(
            "attached to supernode {}@{}",
            key_hex(&supernode.key),
            supernode.addr.to_socket()
        ),
        Event::Detached { supernode, reason } => tracing::info!(
            "detached from supernode {}@{} ({reason:?})",
            key_hex(&supernode.key),
            supernode.addr.to_socket()
        ),
        Event::LoginRefused { supernode, reason } => tracing::warn!(
            "supernode {}@{} refused this device's login: {}",
            key_hex(&supernode.key),
            supernode.addr.to_socket(),
            crate::account::refusal_text(*reason)
        ),
        Event::Promoted => tracing::info!("promoted to supernode"),
        Event::Demoted => tracing::info!("demoted to client"),
        Event::Reachable => tracing::info!("reachable from other nodes"),
        Event::MessageReceived {
            from_device,
            seq,
            payload,
            ..
        } => tracing::info!(
            "message {seq} from {} ({} bytes; this daemon has no application to hand it to yet)",
            key_hex(from_device),
            payload.len()
        ),
        other => tracing::debug!("{other:?}"),
    }
}

fn log_status(status: &NodeStatus) {
    if status.is_supernode {
        tracing::info!(
            "supernode · {} clients attached · {} members known · {} records held",
            status.attached_clients,
            status.membership_len,
            status.stored_records
        );
    } else {
        tracing::info!(
            "client · attached to {} supernodes · {} in the host cache",
            status.attached.len(),
            status.host_cache.len()
        );
    }
}

/// Senders whose messages are counted one by one; more are counted together.
const TRAFFIC_SENDERS_MAX: usize = 1_024;

/// Test traffic (`--test-traffic-to`) and what arrived, for the status file.
#[derive(Default, Serialize)]
struct Traffic {
    /// The last sequence number the node gave a message it sent.
    sent_last_seq: u64,
    /// The recipient acknowledged every message up to this one.
    acked_up_to: u64,
    /// Sends the node refused (outbox full).
    refused: u64,
    /// Messages handed to this node's application, per sending device.
    received: std::collections::BTreeMap<String, Received>,
    /// Messages from senders past `TRAFFIC_SENDERS_MAX`.
    received_other: u64,
}

#[derive(Default, Serialize)]
struct Received {
    count: u64,
    last_seq: u64,
}

impl Traffic {
    async fn send(&mut self, control: &peerline_net::Control, to: config::Recipient) {
        let payload = format!("test message {}", self.sent_last_seq + 1).into_bytes();
        match control.send_message(to.device, to.account, payload).await {
            Ok(seq) => self.sent_last_seq = seq,
            Err(error) => {
                self.refused += 1;
                tracing::warn!("test traffic: {error}");
            }
        }
    }

    fn count(&mut self, event: &Event) {
        match event {
            Event::MessageReceived {
                from_device, seq, ..
            } => {
                let sender = key_hex(from_device);
                if self.received.len() >= TRAFFIC_SENDERS_MAX
                    && !self.received.contains_key(&sender)
                {
                    self.received_other += 1;
                    return;
                }
                let received = self.received.entry(sender).or_default();
                received.count += 1;
                received.last_seq = received.last_seq.max(*seq);
            }
            Event::MessageAcked { up_to_seq, .. } => {
                self.acked_up_to = self.acked_up_to.max(*up_to_seq);
            }
            _ => {}
        }
    }
}

/// The status file's contents (JSON), for scripts and tests.
#[derive(Serialize)]
struct StatusFile<'a> {
    node_key: &'a str,
    addr: SocketAddr,
    /// false in the last write, at shutdown.
    running: bool,
    role: &'static str,
    /// Keys of the supernodes this client is attached to.
    attached: Vec<String>,
    attached_clients: usize,
    membership_len: usize,
    stored_records: usize,
    host_cache_len: usize,
    outbox_len: usize,
    uptime_ms: u64,
    written_unix_ms: u64,
    messages: &'a Traffic,
    /// `--connect-to`'s connections: which path each took.
    paths: Vec<PathLine>,
    /// Peer pairs this supernode relays for.
    relay_bindings: usize,
}

/// Rewrites the status file (side file, then rename: a reader never sees
/// half of one). A failure is logged, not fatal: the file is a convenience.
/// `--connect-to`: look the device up once attached, then punch; again
/// after a failure, at most `CONNECT_ATTEMPTS_MAX` times.
#[derive(Default)]
struct Connect {
    looking_up_since: Option<Instant>,
    connecting: bool,
    up: bool,
    attempts: u32,
}

const CONNECT_ATTEMPTS_MAX: u32 = 3;
const CONNECT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

impl Connect {
    async fn tick(
        &mut self,
        control: &peerline_net::Control,
        to: config::Recipient,
        status: &NodeStatus,
    ) {
        let lookup_pending = self
            .looking_up_since
            .is_some_and(|since| since.elapsed() < CONNECT_LOOKUP_TIMEOUT);
        if self.up || self.connecting || lookup_pending || status.attached.is_empty() {
            return;
        }
        if self.attempts >= CONNECT_ATTEMPTS_MAX {
            return;
        }
        self.looking_up_since = Some(Instant::now());
        let _ = control.lookup(to.account).await;
    }

    async fn on_event(
        &mut self,
        control: &peerline_net::Control,
        to: config::Recipient,
        event: &Event,
    ) {
        match event {
            Event::LookupDone {
                account,
                record: Some(record),
                ..
            } if *account == to.account
                && self.looking_up_since.is_some()
                && record.body.cert.body.device_key == to.device =>
            {
                self.looking_up_since = None;
                self.connecting = true;
                self.attempts += 1;
                tracing::info!(
                    "connecting to {} (attempt {})",
                    key_hex(&to.device),
                    self.attempts
                );
                let _ = control.connect_peer((**record).clone()).await;
            }
            Event::LookupDone { account, .. } if *account == to.account => {
                self.looking_up_since = None;
            }
            Event::PathUp {
                peer,
                kind,
                addr,
                elapsed_ms,
            } if *peer == to.device => {
                self.up = true;
                self.connecting = false;
                tracing::info!(
                    "path to {} is up: {kind:?} via {} after {elapsed_ms} ms",
                    key_hex(peer),
                    addr.to_socket()
                );
            }
            Event::PathFailed { peer, reason } if *peer == to.device => {
                self.connecting = false;
                tracing::info!("no path to {}: {reason:?}", key_hex(peer));
            }
            _ => {}
        }
    }
}

#[derive(Serialize)]
struct PathLine {
    peer: String,
    session: u64,
    /// "direct", "relayed", "failed" or "connecting".
    path: &'static str,
    addr: Option<SocketAddr>,
    /// The supernode a relayed path goes through (`addr` is then the
    /// path's virtual address, 240.0.0.0/4).
    relay: Option<SocketAddr>,
    failure: Option<String>,
    elapsed_ms: u64,
}

fn path_lines(status: &NodeStatus) -> Vec<PathLine> {
    status
        .paths
        .iter()
        .map(|report| PathLine {
            peer: key_hex(&report.peer),
            session: report.session,
            path: match (report.kind, report.failure) {
                (Some(peerline_core::PathKind::Direct), _) => "direct",
                (Some(peerline_core::PathKind::Relayed), _) => "relayed",
                (None, Some(_)) => "failed",
                (None, None) => "connecting",
            },
            addr: report.addr.map(|addr| addr.to_socket()),
            relay: report.relay.map(|addr| addr.to_socket()),
            failure: report.failure.map(|failure| format!("{failure:?}")),
            elapsed_ms: report.elapsed_ms,
        })
        .collect()
}

fn write_status(
    path: &Path,
    key: &str,
    addr: SocketAddr,
    status: &NodeStatus,
    traffic: &Traffic,
    uptime: Duration,
    running: bool,
) {
    let file = StatusFile {
        node_key: key,
        addr,
        running,
        role: if status.is_supernode {
            "supernode"
        } else {
            "client"
        },
        attached: status.attached.iter().map(|c| key_hex(&c.key)).collect(),
        attached_clients: status.attached_clients,
        membership_len: status.membership_len,
        stored_records: status.stored_records,
        host_cache_len: status.host_cache.len(),
        outbox_len: status.outbox_len,
        uptime_ms: uptime.as_millis().min(u64::MAX as u128) as u64,
        written_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                elapsed.as_millis().min(u64::MAX as u128) as u64
            }),
        messages: traffic,
        paths: path_lines(status),
        relay_bindings: status.relay_bindings,
    };
    let outcome = serde_json::to_vec_pretty(&file)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            let mut side = path.as_os_str().to_owned();
            side.push(".new");
            std::fs::write(&side, bytes)?;
            std::fs::rename(&side, path)
        });
    if let Err(error) = outcome {
        tracing::warn!("cannot write the status file {}: {error}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerline_proto::PublicKey;

    fn contact(byte: u8, port: u16) -> Contact {
        Contact {
            key: PublicKey([byte; 32]),
            id_nonce: 7,
            addr: Addr::from_socket(SocketAddr::from(([127, 0, 0, 1], port))),
        }
    }

    fn seed(byte: u8, port: u16) -> Seed {
        Seed {
            key: PublicKey([byte; 32]),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn host_cache_first_then_seeds() {
        let order = bootstrap_order(
            &[contact(1, 1), contact(2, 2)],
            &[seed(3, 3), seed(4, 4)],
            64,
        );
        let keys: Vec<u8> = order.iter().map(|c| c.key.0[0]).collect();
        assert_eq!(keys, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_seed_known_to_the_cache_keeps_its_place_with_the_given_address() {
        let order = bootstrap_order(&[contact(1, 1), contact(2, 2)], &[seed(2, 99)], 64);
        assert_eq!(order.len(), 2);
        assert_eq!(order[1].addr.to_socket().port(), 99);
        assert_eq!(order[1].id_nonce, 7, "what the cache knew stays");
    }

    #[test]
    fn every_seed_fits_when_the_cache_is_full() {
        let cached: Vec<Contact> = (0..10).map(|i| contact(i, i as u16 + 1)).collect();
        let order = bootstrap_order(&cached, &[seed(100, 1), seed(101, 2)], 4);
        let keys: Vec<u8> = order.iter().map(|c| c.key.0[0]).collect();
        assert_eq!(keys, vec![0, 1, 100, 101]);
    }
}
