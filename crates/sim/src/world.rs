//! The simulated world: every node's state machine, the network between
//! them, the scenario's script, and the observers that measure the network
//! from outside the nodes.

use crate::config::{CpuModel, Scenario, SimConfig};
use crate::cpu::{CostTable, Cpu};
use crate::metrics::{Digest, LookupFailure, Metrics, Sample};
use crate::network::{place, uniform, wall_clock_s, Nat, Place, LATENCY_MIN_US, NAT_MEMORY};
mod accounts;
mod batch;
mod bundles;
pub use accounts::NameFigures;
pub use bundles::BundleFigures;

use crate::queue::{EventKind, Queue};
use peerline_core::{DeviceIdentity, Event, Instant, Node, NodeConfig, Now, Params, RolePolicy};
use peerline_proto::{
    peek_kind, Addr, BusyReason, Contact, Frame, Message, MessageKind, PublicKey,
};
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::collections::HashMap;
use std::sync::Arc;

/// True wall-clock time at virtual time zero (2027-01-15).
pub const BASE_UNIX_S: u64 = 1_800_000_000;
/// First simulated IPv4 address (10.0.0.0); node i is at BASE + i.
const ADDRESS_BASE: u32 = 0x0A00_0000;
const PORT: u16 = 7000;
/// Attachments the observer tracks per client: the target (2), plus the
/// two spares a client races while one of its supernodes is suspected
/// (`Client::wanted`). With fewer, a fourth acceptance overwrote a live
/// entry and the observer lost count of attachments that were real.
const OBSERVED_ATTACHMENTS_MAX: usize = 4;
/// Gap between the supernodes' ramp and the clients' ramp.
const CLIENT_START_DELAY_US: u64 = 30_000_000;

/// A node's address. Each of the first 65,536 nodes (every supernode of
/// any run) sits in its own /24, as nodes of a real network mostly do, so
/// that the one-voter-per-network rule of name registration sees a real
/// network's spread; the bits are a bijection on the 24 bits of 10.0.0.0/8.
pub fn addr_of(index: u32) -> Addr {
    let low = ((index & 0xFFFF) << 8) | (index >> 16);
    Addr::from_ipv4_u32(ADDRESS_BASE + low, PORT)
}

/// The attacker's supernodes of the `accounts` scenario share one /24.
const ATTACKER_BASE: u32 = 0x0B00_0000;

fn index_of(addr: &Addr, nodes: usize) -> Option<u32> {
    let ip = addr.ipv4_u32()?;
    let index = if ip & 0xFFFF_FF00 == ATTACKER_BASE {
        ip & 0xFF
    } else {
        let low = ip.checked_sub(ADDRESS_BASE)?;
        if low >= 1 << 24 {
            return None;
        }
        (low >> 8) | ((low & 0xFF) << 16)
    };
    (addr.port == PORT && (index as usize) < nodes).then_some(index)
}

/// An attachment as the observer saw it on the wire.
#[derive(Clone, Copy, Debug, Default)]
struct Observed {
    supernode: u32,
    epoch: u32,
    /// Last time (virtual s) the supernode accepted or heard a ping.
    last_contact_s: u32,
}

/// Prefetches the cache lines of `len` bytes at `ptr` (a hint: no effect
/// on what the program computes, and none at all off x86-64).
#[inline]
fn prefetch_bytes(ptr: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut offset = 0;
        while offset < len {
            // SAFETY: a prefetch is a hint that never faults or reads into
            // the program's state; `ptr + offset` stays within (or one line
            // past) the object it was derived from.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    ptr.wrapping_add(offset).cast(),
                );
            }
            offset += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, len);
}

struct SimNode {
    node: Option<Node>,
    place: Place,
    nat: Nat,
    alive: bool,
    /// Bumped on every crash, restart and role change: attachments and
    /// timers of an older epoch are void.
    epoch: u32,
    timer_at_us: u64,
    online_since_us: u64,
    nat_recent: [u32; NAT_MEMORY],
    nat_next: u8,
    observed: [Observed; OBSERVED_ATTACHMENTS_MAX],
    observed_len: u8,
    /// Restarted by the outage: its re-attach is timed when it starts.
    outage_victim: bool,
    /// Its CPU while it is a supernode (`cpu.rs`).
    cpu: Cpu,
}

impl SimNode {
    /// It stops (a crash or a leave): its attachments and wake-ups are void
    /// and its volatile state is gone at once.
    fn go_down(&mut self) {
        self.alive = false;
        self.epoch += 1;
        self.observed_len = 0;
        if let Some(node) = self.node.as_mut() {
            node.crash();
        }
    }

    fn is_supernode(&self) -> bool {
        self.alive && self.node.as_ref().is_some_and(|n| n.is_supernode())
    }

    fn nat_allows(&self, from: u32) -> bool {
        self.nat == Nat::Public || self.nat_recent.contains(&from)
    }

    fn remember_destination(&mut self, to: u32) {
        if self.nat == Nat::Public || self.nat_recent.contains(&to) {
            return;
        }
        self.nat_recent[self.nat_next as usize] = to;
        self.nat_next = (self.nat_next + 1) % NAT_MEMORY as u8;
    }

    fn observed(&self) -> &[Observed] {
        &self.observed[..self.observed_len as usize]
    }

    fn observe_accept(&mut self, supernode: u32, epoch: u32, now_s: u32) {
        let len = self.observed_len as usize;
        if let Some(entry) = self.observed[..len]
            .iter_mut()
            .find(|o| o.supernode == supernode)
        {
            *entry = Observed {
                supernode,
                epoch,
                last_contact_s: now_s,
            };
            return;
        }
        let entry = Observed {
            supernode,
            epoch,
            last_contact_s: now_s,
        };
        if len < OBSERVED_ATTACHMENTS_MAX {
            self.observed[len] = entry;
            self.observed_len += 1;
        } else if let Some(stalest) = self.observed.iter_mut().min_by_key(|o| o.last_contact_s) {
            *stalest = entry;
        }
    }

    fn observe_contact(&mut self, supernode: u32, now_s: u32) {
        let len = self.observed_len as usize;
        if let Some(entry) = self.observed[..len]
            .iter_mut()
            .find(|o| o.supernode == supernode)
        {
            entry.last_contact_s = now_s;
        }
    }

    fn forget(&mut self, supernode: u32) {
        let len = self.observed_len as usize;
        if let Some(i) = self.observed[..len]
            .iter()
            .position(|o| o.supernode == supernode)
        {
            self.observed[i] = self.observed[len - 1];
            self.observed_len -= 1;
        }
    }
}

/// Wall time spent handling each kind of datagram and timer, with counts
/// (`PEERLINE_SIM_PROFILE=1`; a developer's tool, off by default: two
/// clock reads of ~25 ns per event, ~1% of a 1M run). `PEERLINE_SIM_PROFILE=S`
/// also prints (and starts over) at virtual second S, to tell a ramp from
/// the steady state after it.
#[derive(Default)]
struct Profile {
    entries: Vec<(ProfileKey, std::time::Duration, u64)>,
    split_us: Option<u64>,
    /// Windows run (`world/batch.rs`), how many were split between
    /// threads, their events, and the wall time on the lanes and after.
    windows: u64,
    windows_split: u64,
    window_events: u64,
    in_lanes: std::time::Duration,
    applying: std::time::Duration,
    /// Wall time each lane worked.
    lane_busy: Vec<std::time::Duration>,
    /// When this table began.
    since: Option<std::time::Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ProfileKey {
    Datagram(Option<MessageKind>),
    Timer { supernode: bool },
}

impl Profile {
    fn add(&mut self, name: ProfileKey, spent: std::time::Duration) {
        match self.entries.iter_mut().find(|(n, ..)| *n == name) {
            Some(entry) => {
                entry.1 += spent;
                entry.2 += 1;
            }
            None => self.entries.push((name, spent, 1)),
        }
    }

    fn print(&self) {
        let total: f64 = self.entries.iter().map(|e| e.1.as_secs_f64()).sum();
        let mut rows: Vec<_> = self.entries.iter().collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.1));
        if let Some(since) = self.since {
            eprintln!("wall: {:.1} s", since.elapsed().as_secs_f64());
        }
        eprintln!(
            "windows: {} ({} split between threads), {:.1} events each; {:.1} s on the lanes, {:.1} s applying their records",
            self.windows,
            self.windows_split,
            self.window_events as f64 / self.windows.max(1) as f64,
            self.in_lanes.as_secs_f64(),
            self.applying.as_secs_f64()
        );
        let busy: Vec<String> = self
            .lane_busy
            .iter()
            .map(|b| format!("{:.1} s", b.as_secs_f64()))
            .collect();
        eprintln!("lanes busy: {}", busy.join(", "));
        eprintln!("profile: {total:.1} s in node handlers");
        for (name, spent, count) in rows {
            let name = match name {
                ProfileKey::Datagram(Some(kind)) => format!("{kind:?}"),
                ProfileKey::Datagram(None) => "(undecodable)".to_string(),
                ProfileKey::Timer { supernode: true } => "timer (supernode)".to_string(),
                ProfileKey::Timer { supernode: false } => "timer (client)".to_string(),
            };
            eprintln!(
                "  {name:<24} {:>8.1} s {:>5.1}% {:>12} x {:>7.0} ns",
                spent.as_secs_f64(),
                100.0 * spent.as_secs_f64() / total.max(1e-9),
                count,
                spent.as_nanos() as f64 / *count as f64
            );
        }
    }
}

/// A set of node indices with O(1) insert, remove, membership and random pick.
#[derive(Default)]
struct IndexSet {
    items: Vec<u32>,
    /// Where each node index sits in `items` (`u32::MAX`: not in the set).
    position: Vec<u32>,
}

impl IndexSet {
    fn insert(&mut self, item: u32) {
        if self.contains(item) {
            return;
        }
        if self.position.len() <= item as usize {
            self.position.resize(item as usize + 1, u32::MAX);
        }
        self.position[item as usize] = self.items.len() as u32;
        self.items.push(item);
    }

    fn remove(&mut self, item: u32) {
        if !self.contains(item) {
            return;
        }
        let at = std::mem::replace(&mut self.position[item as usize], u32::MAX);
        let last = self.items.pop().expect("present");
        if last != item {
            self.items[at as usize] = last;
            self.position[last as usize] = at;
        }
    }

    fn contains(&self, item: u32) -> bool {
        self.position
            .get(item as usize)
            .is_some_and(|at| *at != u32::MAX)
    }

    fn random(&self, rng: &mut impl Rng) -> Option<u32> {
        (!self.items.is_empty())
            .then(|| self.items[(rng.next_u64() % self.items.len() as u64) as usize])
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// The ground truth of one conversation (sender → recipient), as the
/// simulator saw the applications send and receive.
#[derive(Clone, Copy, Debug, Default)]
struct Conversation {
    sent: u64,
    delivered_up_to: u64,
    acked_up_to: u64,
}

#[derive(Clone, Copy, Debug)]
struct PendingLookup {
    target: u32,
    started_us: u64,
    target_epoch: u32,
}

/// Progress of a run, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub virtual_s: u64,
    pub duration_s: u64,
    pub events: u64,
}

pub struct World {
    config: SimConfig,
    params: Arc<Params>,
    nodes: Vec<SimNode>,
    queue: Queue,
    now_us: u64,
    end_us: u64,
    rng: Pcg64Mcg,
    live_clients: IndexSet,
    live_supernodes: IndexSet,
    bootstrap: Vec<Contact>,
    pending_lookups: HashMap<(u32, PublicKey), PendingLookup>,
    pub metrics: Metrics,
    digest: Digest,
    load_buffer: Vec<u32>,
    /// Prints every datagram to or from this node (PEERLINE_SIM_TRACE=index).
    trace: Option<u32>,
    /// Debugging: stop the run at this virtual second (`PEERLINE_SIM_HALT_AT`)
    /// to look at the world mid-run without changing its course.
    halt_at_us: u64,
    /// Where the wall time goes (`PEERLINE_SIM_PROFILE=1`), printed at the end.
    profile: Option<Box<Profile>>,
    /// Clients knocked below two attachments by the outage, and since when
    /// (µs): removed when the observer sees them at two again.
    reattach_pending: HashMap<u32, u64>,
    /// Clients a churn crash (not the scenario's outage) left below two
    /// attachments, since when: how fast ordinary failures heal.
    churn_pending: HashMap<u32, u64>,
    /// Conversations by (sender, recipient) node index.
    conversations: HashMap<(u32, u32), Conversation>,
    /// Which node a device key belongs to.
    device_index: HashMap<PublicKey, u32>,
    /// While true, datagrams between the two sides are dropped.
    partitioned: bool,
    /// Lookups started from here on count as "after the heal".
    heal_settled_us: u64,
    /// What supernodes pay per datagram; `None`: the CPU model is off.
    costs: Option<CostTable>,
    /// The `accounts` scenario's contested names (`world/accounts.rs`).
    names: accounts::Names,
    /// Its key bundles and password logins (`world/bundles.rs`).
    bundles: bundles::Bundles,
    /// The threads that run a window's node events (`world/batch.rs`);
    /// `None` with one thread.
    crew: Option<crate::crew::Crew>,
    /// One per thread: what the window's events did.
    lanes: Vec<batch::Lane>,
    /// The time a script event was due (`now_us` is its window's start):
    /// periodic and Poisson ticks count the next one from it, so that their
    /// rates do not depend on the windows.
    script_us: u64,
    /// Where each node's events begin in a window, and the order its
    /// records are applied in (kept for their buffers).
    groups: Vec<u32>,
    record_order: Vec<(u64, u32, u32, u32)>,
}

impl World {
    pub fn new(config: SimConfig) -> World {
        let params = Arc::new(config.effective_params());
        let mut rng = Pcg64Mcg::seed_from_u64(config.seed);
        let total = config.clients as usize + config.supernodes as usize;
        let mut nodes = Vec::with_capacity(total);
        for index in 0..total {
            let is_supernode = index < config.supernodes as usize;
            let nat = if is_supernode || uniform(&mut rng) < config.public_client_fraction {
                Nat::Public
            } else {
                Nat::PortRestricted
            };
            nodes.push(SimNode {
                node: None,
                place: place(
                    &mut rng,
                    config.clock_offset_max_s,
                    config.clock_drift_max_ppm,
                ),
                nat,
                alive: false,
                epoch: 0,
                timer_at_us: u64::MAX,
                online_since_us: 0,
                nat_recent: [u32::MAX; NAT_MEMORY],
                nat_next: 0,
                observed: [Observed::default(); OBSERVED_ATTACHMENTS_MAX],
                observed_len: 0,
                outage_victim: false,
                cpu: Cpu::default(),
            });
        }
        let end_us = config.duration_s * 1_000_000;
        let mut world = World {
            metrics: Metrics::new(&config),
            params,
            nodes,
            queue: Queue::default(),
            now_us: 0,
            end_us,
            rng,
            live_clients: IndexSet::default(),
            live_supernodes: IndexSet::default(),
            bootstrap: Vec::new(),
            pending_lookups: HashMap::new(),
            digest: Digest::default(),
            load_buffer: vec![0; total],
            trace: std::env::var("PEERLINE_SIM_TRACE")
                .ok()
                .and_then(|v| v.parse().ok()),
            halt_at_us: std::env::var("PEERLINE_SIM_HALT_AT")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(u64::MAX, |s| s * 1_000_000),
            profile: std::env::var("PEERLINE_SIM_PROFILE").ok().map(|v| {
                Box::new(Profile {
                    entries: Vec::new(),
                    windows: 0,
                    windows_split: 0,
                    window_events: 0,
                    in_lanes: Default::default(),
                    applying: Default::default(),
                    lane_busy: Vec::new(),
                    since: Some(std::time::Instant::now()),
                    split_us: v
                        .parse::<u64>()
                        .ok()
                        .filter(|s| *s > 1)
                        .map(|s| s * 1_000_000),
                })
            }),
            reattach_pending: HashMap::new(),
            churn_pending: HashMap::new(),
            conversations: HashMap::new(),
            device_index: HashMap::new(),
            partitioned: false,
            heal_settled_us: u64::MAX,
            costs: match config.cpu_model {
                CpuModel::Measured => {
                    Some(CostTable::new(crate::cpu::MEASURED, config.cpu_cost_factor))
                }
                CpuModel::Off => None,
            },
            config,
            names: accounts::Names::default(),
            bundles: bundles::Bundles::default(),
            crew: None,
            lanes: Vec::new(),
            script_us: 0,
            groups: Vec::new(),
            record_order: Vec::new(),
        };
        let threads = world.config.threads.max(1);
        world.lanes = (0..threads).map(|_| batch::Lane::default()).collect();
        world.crew = (threads > 1).then(|| crate::crew::Crew::new(threads));
        world.schedule_script();
        world
    }

    fn schedule_script(&mut self) {
        let supernode_ramp_us = self.config.supernode_ramp_s * 1_000_000;
        let client_ramp_us = self.config.join_ramp_s * 1_000_000;
        for index in 0..self.config.supernodes {
            // The first supernode starts at zero; the others spread over the ramp.
            let at = if index == 0 {
                0
            } else {
                1 + self.rng.next_u64() % supernode_ramp_us.max(1)
            };
            self.queue.push(at, EventKind::Start { node: index });
        }
        for index in self.config.supernodes..self.nodes.len() as u32 {
            // Clients come once the supernodes had time to learn each other.
            let at = supernode_ramp_us
                + CLIENT_START_DELAY_US
                + self.rng.next_u64() % client_ramp_us.max(1);
            self.queue.push(at, EventKind::Start { node: index });
        }
        let first_lookup_us =
            supernode_ramp_us + client_ramp_us + self.config.lookup_target_uptime_s * 1_000_000;
        self.queue.push(first_lookup_us, EventKind::LookupTick);
        self.queue
            .push(self.config.sample_interval_s * 1_000_000, EventKind::Sample);
        if self.config.scenario.is_outage() {
            self.queue
                .push(self.config.storm_at_s * 1_000_000, EventKind::Storm);
        }
        if self.config.scenario == Scenario::Accounts {
            self.accounts_setup();
            self.bundles_setup();
        }
        if self.config.messages_per_s > 0.0 {
            // Messages start once the clients are up, like lookups.
            let first_us = supernode_ramp_us + client_ramp_us;
            self.queue.push(first_us, EventKind::MessageTick);
        }
    }

    fn now_for(&self, index: u32) -> Now {
        now_at(&self.nodes[index as usize].place, self.now_us)
    }

    /// Runs to the end, calling `progress` now and then.
    pub fn run(&mut self, progress: &mut dyn FnMut(Progress)) {
        let mut events: u64 = 0;
        let mut next_progress: u64 = 0;
        let stop_us = self.end_us.min(self.halt_at_us);
        let mut window = Vec::new();
        let mut script = Vec::new();
        while let Some(start_us) = self.queue.peek().map(|e| e.time_us) {
            if start_us > stop_us {
                break;
            }
            self.now_us = start_us;
            if let Some(profile) = self.profile.as_mut() {
                if profile.split_us.is_some_and(|at| self.now_us >= at) {
                    profile.split_us = None;
                    eprintln!("(profile until virtual second {})", self.now_us / 1_000_000);
                    profile.print();
                    **profile = Profile {
                        since: Some(std::time::Instant::now()),
                        ..Profile::default()
                    };
                }
            }
            if events >= next_progress {
                next_progress = events + 0x10000;
                progress(Progress {
                    virtual_s: self.now_us / 1_000_000,
                    duration_s: self.config.duration_s,
                    events,
                });
            }
            // A window: every event before `end_us` (`world/batch.rs`). The
            // script's events in it run first, at its start: they may touch
            // any node, and a node must not see its time go back. What they
            // schedule for a node inside the window joins it.
            let end_us = (start_us + LATENCY_MIN_US).min(stop_us + 1);
            loop {
                while self.queue.peek().is_some_and(|e| e.time_us < end_us) {
                    let entry = self.queue.pop().expect("peeked");
                    match self.local_event(entry.time_us, entry.kind) {
                        Ok(local) => window.push(local),
                        Err(kind) => script.push((entry.time_us, kind)),
                    }
                }
                if script.is_empty() {
                    break;
                }
                for (time_us, kind) in script.drain(..) {
                    events += 1;
                    self.now_us = start_us;
                    self.script_us = time_us;
                    self.scenario_event(kind);
                }
            }
            self.now_us = start_us;
            if self.partitioned {
                // The cut as it stands once the script ran (a partition
                // begins or heals at a window's start).
                let before = window.len();
                window.retain(|e: &batch::LocalEvent| !self.cut_drops(e));
                events += (before - window.len()) as u64;
            }
            if !window.is_empty() {
                events += self.run_window(std::mem::take(&mut window), end_us);
            }
        }
        self.now_us = stop_us;
        if let Some(profile) = &self.profile {
            profile.print();
        }
        self.metrics.events = events;
        self.metrics.digest = self.digest.finish();
        progress(Progress {
            virtual_s: self.config.duration_s,
            duration_s: self.config.duration_s,
            events,
        });
    }

    /// A node's own event, for a window; `Err` gives back a script event.
    fn local_event(&self, time_us: u64, kind: EventKind) -> Result<batch::LocalEvent, EventKind> {
        let (node, kind) = match kind {
            EventKind::Deliver { to, from, bytes } => (to, batch::Local::Deliver { from, bytes }),
            EventKind::Served { to, from, bytes } => (to, batch::Local::Served { from, bytes }),
            EventKind::Timer { node, epoch } => (node, batch::Local::Timer { epoch }),
            other => return Err(other),
        };
        Ok(batch::LocalEvent {
            time_us,
            node,
            kind,
        })
    }

    /// Whether the partition's cut drops a datagram (and counts the loss).
    fn cut_drops(&mut self, event: &batch::LocalEvent) -> bool {
        let batch::Local::Deliver { from, bytes } = &event.kind else {
            return false;
        };
        let (from, to) = (*from, event.node);
        if self.nodes[to as usize].place.side() == self.nodes[from as usize].place.side() {
            return false;
        }
        self.metrics.dropped_partition += 1;
        if self.trace == Some(to) || self.trace == Some(from) {
            eprintln!(
                "{:.3} {from} -> {to} {:?} (lost in the cut)",
                event.time_us as f64 / 1e6,
                peek_kind(bytes)
            );
        }
        true
    }

    /// The script's events: they may touch any node, so they run alone.
    fn scenario_event(&mut self, kind: EventKind) {
        match kind {
            EventKind::Start { node } => self.start(node),
            EventKind::Leave { node } => self.leave(node),
            EventKind::LookupTick => self.lookup_tick(),
            EventKind::Sample => self.sample(),
            EventKind::Storm => self.storm(),
            EventKind::MessageTick => self.message_tick(),
            EventKind::Heal => {
                self.partitioned = false;
                // Give presence two minutes to converge before judging lookups.
                self.heal_settled_us = self.now_us + 120_000_000;
            }
            EventKind::Crash { node, down_us } => self.crash(node, down_us),
            EventKind::CrashWave => self.crash_wave(),
            EventKind::NameTick => self.name_tick(),
            EventKind::NameCheck => self.name_check(),
            EventKind::RevokeTick => self.revoke_tick(),
            EventKind::RevocationCheck => self.revocation_check(),
            EventKind::BundlePublishTick => self.bundle_publish_tick(),
            EventKind::BundleLoginTick => self.bundle_login_tick(),
            EventKind::BundleCheck => self.bundle_check(),
            EventKind::Deliver { .. } | EventKind::Served { .. } | EventKind::Timer { .. } => {
                unreachable!("node events run in windows")
            }
        }
    }

    // ---- scenario actions ----

    fn start(&mut self, index: u32) {
        let now = self.now_for(index);
        let is_initial_supernode = index < self.config.supernodes;
        let slot = &mut self.nodes[index as usize];
        if slot.alive {
            return;
        }
        slot.alive = true;
        slot.epoch += 1;
        slot.online_since_us = self.now_us;
        slot.timer_at_us = u64::MAX;
        slot.observed_len = 0;
        slot.nat_recent = [u32::MAX; NAT_MEMORY];
        let victim = std::mem::take(&mut slot.outage_victim);
        match slot.node.as_mut() {
            Some(node) => node.restart(now),
            None => {
                let node = self.create_node(index, now, is_initial_supernode);
                self.nodes[index as usize].node = Some(node);
            }
        }
        let node = self.nodes[index as usize]
            .node
            .as_ref()
            .expect("just started");
        if node.is_supernode() {
            if is_initial_supernode && self.bootstrap.len() < self.config.supernodes as usize {
                if let Some(contact) = node.supernode_contact() {
                    if !self.bootstrap.iter().any(|c| c.key == contact.key) {
                        self.bootstrap.push(contact);
                    }
                }
            }
            self.live_supernodes.insert(index);
        } else {
            self.live_clients.insert(index);
            if victim {
                self.reattach_pending.insert(index, self.now_us);
            }
        }
        self.schedule_leave(index);
        self.flush(index);
    }

    // ---- outages ----

    /// The outage: picks its victims among the live nodes.
    fn storm(&mut self) {
        let fraction = self.config.storm_fraction;
        match self.config.scenario {
            Scenario::Steady => {}
            Scenario::RestartStorm => {
                // Every live node, supernodes included, with the same chance.
                let spread_us = self.config.storm_spread_s * 1_000_000;
                let (low_s, high_s) = self.config.reboot_s;
                let mut live: Vec<u32> = self.live_supernodes.items.clone();
                live.extend_from_slice(&self.live_clients.items);
                live.sort_unstable();
                for node in live {
                    if uniform(&mut self.rng) >= fraction {
                        continue;
                    }
                    let at = self.now_us + self.rng.next_u64() % spread_us.max(1);
                    let down_s = low_s + self.rng.next_u64() % (high_s.saturating_sub(low_s) + 1);
                    let down_us = down_s * 1_000_000;
                    self.queue.push(at, EventKind::Crash { node, down_us });
                }
            }
            Scenario::Partition => self.partition(),
            Scenario::SupernodeCrash => self.crash_wave(),
            Scenario::Accounts => {
                // The partition, and the crash wave a while after it heals.
                self.partition();
                let wave_us = self.now_us
                    + (self.config.partition_s + self.config.accounts_crash_after_heal_s)
                        * 1_000_000;
                self.queue.push(wave_us, EventKind::CrashWave);
            }
        }
    }

    /// The two sides stop reaching each other until the heal.
    fn partition(&mut self) {
        self.partitioned = true;
        let heal_us = self.script_us + self.config.partition_s * 1_000_000;
        self.queue.push(heal_us, EventKind::Heal);
        // Clients attached across the cut lose that attachment; those it
        // leaves below two are timed from now. (A client may hold a third,
        // spare attachment: one that still has two on its own side is not
        // knocked below, and would never be seen re-attaching.)
        let nodes = &self.nodes;
        for &client in &self.live_clients.items {
            let side = nodes[client as usize].place.side();
            if self.drops_below_two(client, |s| nodes[s as usize].place.side() != side) {
                self.reattach_pending.insert(client, self.now_us);
            }
        }
    }

    /// A fraction of the supernodes die at once and stay down a while.
    fn crash_wave(&mut self) {
        let fraction = self.config.storm_fraction;
        let mut live = self.live_supernodes.items.clone();
        live.sort_unstable();
        let count = (live.len() as f64 * fraction).round() as usize;
        // A uniform sample of `count` supernodes (partial Fisher–Yates).
        for i in 0..count.min(live.len()) {
            let j = i + (self.rng.next_u64() % (live.len() - i) as u64) as usize;
            live.swap(i, j);
        }
        let victims: std::collections::HashSet<u32> =
            live[..count.min(live.len())].iter().copied().collect();
        // Clients this leaves below two attachments are timed from now.
        for &client in &self.live_clients.items {
            if self.drops_below_two(client, |s| victims.contains(&s)) {
                self.reattach_pending.insert(client, self.now_us);
            }
        }
        let down_us = self.config.crash_down_s * 1_000_000;
        let mut victims: Vec<u32> = victims.into_iter().collect();
        victims.sort_unstable();
        for node in victims {
            self.crash(node, down_us);
        }
    }

    /// Crashes a node (no goodbye) and brings it back after `down_us`.
    fn crash(&mut self, index: u32, down_us: u64) {
        let slot = &mut self.nodes[index as usize];
        if !slot.alive {
            return;
        }
        slot.go_down();
        slot.outage_victim = true;
        self.metrics.outage_crashes += 1;
        self.live_clients.remove(index);
        self.live_supernodes.remove(index);
        self.reattach_pending.remove(&index);
        self.churn_pending.remove(&index);
        let back_at = self.now_us + down_us;
        if back_at < self.end_us {
            self.queue.push(back_at, EventKind::Start { node: index });
        }
    }

    /// Whether losing the supernodes `gone` picks out leaves `client` below
    /// two attachments (it had one of them).
    fn drops_below_two(&self, client: u32, gone: impl Fn(u32) -> bool) -> bool {
        let (mut hit, mut left) = (false, 0);
        for supernode in self.valid_attachments(client) {
            if gone(supernode) {
                hit = true;
            } else {
                left += 1;
            }
        }
        hit && left < 2
    }

    /// After an attachment was seen made: is a timed client whole again?
    fn check_reattached(&mut self, client: u32) {
        let outage = self.reattach_pending.get(&client).copied();
        let churn = self.churn_pending.get(&client).copied();
        if (outage.is_none() && churn.is_none()) || self.valid_attachments(client).count() < 2 {
            return;
        }
        let elapsed_ms =
            |since_us: u64| ((self.now_us - since_us) / 1000).min(u32::MAX as u64) as u32;
        if let Some(since_us) = outage {
            self.reattach_pending.remove(&client);
            self.metrics.reattach_ms.push(elapsed_ms(since_us));
        }
        if let Some(since_us) = churn {
            self.churn_pending.remove(&client);
            self.metrics.churn_reattach_ms.push(elapsed_ms(since_us));
        }
    }

    fn create_node(&mut self, index: u32, now: Now, is_supernode: bool) -> Node {
        let mut seed_rng = node_seed_rng(self.config.seed, index);
        let identity = DeviceIdentity::new_account(
            self.config.crypto,
            &mut seed_rng,
            now.unix_s,
            self.params.device_cert_ttl_s,
        );
        let bootstrap_len = self.config.bootstrap_contacts.min(self.bootstrap.len());
        let mut bootstrap = Vec::with_capacity(bootstrap_len);
        for _ in 0..bootstrap_len {
            let contact =
                self.bootstrap[(self.rng.next_u64() % self.bootstrap.len() as u64) as usize];
            if !bootstrap.iter().any(|c: &Contact| c.key == contact.key) {
                bootstrap.push(contact);
            }
        }
        // Every client may promote itself; whether it is reachable is for
        // its own reachability probe to find out (NAT filtering decides).
        let policy = if is_supernode {
            RolePolicy::SupernodeOnly
        } else {
            RolePolicy::Auto
        };
        self.device_index.insert(identity.keypair.public(), index);
        let config = NodeConfig {
            params: self.params.clone(),
            identity,
            policy,
            advertised_addr: addr_for(&self.names.attackers, index),
            bootstrap,
        };
        Node::new(config, now, seed_rng.next_u64())
    }

    fn schedule_leave(&mut self, index: u32) {
        if self.config.churn_per_hour <= 0.0 {
            return;
        }
        let mean_us = 3_600e6 / self.config.churn_per_hour;
        let at = self.now_us + exponential_us(&mut self.rng, mean_us);
        if at < self.end_us {
            self.queue.push(at, EventKind::Leave { node: index });
        }
    }

    fn leave(&mut self, index: u32) {
        if !self.nodes[index as usize].alive {
            return;
        }
        if self.trace.is_some() && self.nodes[index as usize].is_supernode() {
            eprintln!("{:.3} supernode {index} leaves", self.now_us as f64 / 1e6);
        }
        if uniform(&mut self.rng) < self.config.graceful_leave_fraction {
            // A supernode drains first (its clients move, then it goes):
            // it goes down on its `Event::Left`, now or within
            // `drain_max_ms`. A client leaves at once.
            let now = self.now_for(index);
            if let Some(node) = self.nodes[index as usize].node.as_mut() {
                node.leave(now);
            }
            self.metrics.graceful_leaves += 1;
            self.flush(index);
            return;
        }
        self.metrics.crashes += 1;
        if self.nodes[index as usize].is_supernode() {
            let orphans: Vec<u32> = self.orphans_of(index).collect();
            for client in orphans {
                self.churn_pending.entry(client).or_insert(self.now_us);
            }
        }
        self.depart(index);
    }

    /// Live clients that supernode `index` going would leave below two.
    fn orphans_of(&self, index: u32) -> impl Iterator<Item = u32> + '_ {
        self.live_clients
            .items
            .iter()
            .copied()
            .filter(move |&client| self.drops_below_two(client, |s| s == index))
    }

    /// A node that crashed or finished leaving goes down, to come back
    /// after an exponential time offline.
    fn depart(&mut self, index: u32) {
        if !self.nodes[index as usize].alive {
            return;
        }
        self.nodes[index as usize].go_down();
        self.live_clients.remove(index);
        self.live_supernodes.remove(index);
        self.reattach_pending.remove(&index);
        self.churn_pending.remove(&index);
        let back_at = self.now_us + exponential_us(&mut self.rng, self.config.offline_mean_s * 1e6);
        if back_at < self.end_us {
            self.queue.push(back_at, EventKind::Start { node: index });
        }
    }

    // ---- network ----

    /// Watches the wire for attachments being made, kept alive and ended.
    fn observe(&mut self, from: u32, to: u32, kind: Option<MessageKind>, busy: Option<&[u8]>) {
        let now_s = (self.now_us / 1_000_000) as u32;
        crate::metrics::tally_kind(&mut self.metrics.delivered_by_kind, kind);
        match kind {
            Some(MessageKind::AttachAccepted) => {
                // Make room by forgetting attachments to supernodes that are gone.
                let gone: Vec<u32> = self.nodes[to as usize]
                    .observed()
                    .iter()
                    .filter(|o| {
                        let supernode = &self.nodes[o.supernode as usize];
                        !supernode.is_supernode() || supernode.epoch != o.epoch
                    })
                    .map(|o| o.supernode)
                    .collect();
                for supernode in gone {
                    self.nodes[to as usize].forget(supernode);
                }
                let epoch = self.nodes[from as usize].epoch;
                self.nodes[to as usize].observe_accept(from, epoch, now_s);
                self.check_reattached(to);
            }
            Some(MessageKind::Busy) => {
                self.metrics.busy_answers += 1;
                self.metrics.busy_since_sample += 1;
                if let Some(bytes) = busy {
                    self.observe_busy(bytes);
                }
            }
            Some(MessageKind::Ping | MessageKind::Keepalive) => {
                self.nodes[from as usize].observe_contact(to, now_s)
            }
            Some(MessageKind::NotAttached) => self.nodes[to as usize].forget(from),
            Some(MessageKind::Detach) => {
                self.nodes[from as usize].forget(to);
                self.nodes[to as usize].forget(from);
            }
            _ => {}
        }
    }

    /// Why a busy answer turned the client away, and whether it named
    /// somewhere else to go.
    fn observe_busy(&mut self, bytes: &[u8]) {
        let Ok(Frame::Message(Message::Busy {
            reason, alternates, ..
        })) = peerline_proto::decode(bytes)
        else {
            return;
        };
        let metrics = &mut self.metrics;
        *metrics.busy_by_reason.entry(reason).or_default() += 1;
        if reason == BusyReason::HandshakesFull {
            metrics.busy_handshakes_since_sample += 1;
        }
        if alternates.is_empty() {
            metrics.busy_without_alternates += 1;
            metrics.busy_without_alternates_since_sample += 1;
        }
    }

    fn node_event(&mut self, index: u32, event: Event) {
        if matches!(
            event,
            Event::NameRegistered { .. }
                | Event::NameTaken { .. }
                | Event::NameFailed { .. }
                | Event::NameLookupDone { .. }
        ) {
            return self.name_event(index, &event);
        }
        if matches!(
            event,
            Event::AccountSecretsPublished { .. }
                | Event::BundleOpened { .. }
                | Event::BundleFailed { .. }
        ) {
            return self.bundle_event(index, &event);
        }
        match event {
            Event::LookupDone {
                account,
                record,
                hops,
                ..
            } => {
                let Some(pending) = self.pending_lookups.remove(&(index, account)) else {
                    return;
                };
                let target = &self.nodes[pending.target as usize];
                if !target.alive || target.epoch != pending.target_epoch {
                    self.metrics.lookups_abandoned += 1;
                    return;
                }
                let elapsed_ms = (self.now_us - pending.started_us) / 1000;
                let after_heal = pending.started_us >= self.heal_settled_us;
                let outcome = match record {
                    None => Err(LookupFailure::NotFound),
                    Some(record) => {
                        let current: Vec<u32> = self.valid_attachments(pending.target).collect();
                        let names_current = record
                            .body
                            .supernodes
                            .iter()
                            .filter_map(|c| index_of(&c.addr, self.nodes.len()))
                            .any(|s| current.contains(&s));
                        if names_current {
                            Ok(hops)
                        } else {
                            Err(LookupFailure::Stale)
                        }
                    }
                };
                if after_heal {
                    self.metrics.lookups_after_heal += 1;
                    self.metrics.lookups_after_heal_ok += outcome.is_ok() as u64;
                }
                self.metrics.lookup_done(outcome, elapsed_ms);
            }
            Event::Promoted => {
                // (The new epoch and the void timer are the node's own
                // part, done on its lane: `batch::drain`.)
                self.nodes[index as usize].observed_len = 0;
                self.live_clients.remove(index);
                self.live_supernodes.insert(index);
                self.reattach_pending.remove(&index);
                self.churn_pending.remove(&index);
                self.metrics.promotions += 1;
                if self.nodes[index as usize].nat != Nat::Public {
                    self.metrics.promotions_unreachable += 1;
                }
            }
            Event::MessageReceived {
                from_device, seq, ..
            } => {
                let Some(&sender) = self.device_index.get(&from_device) else {
                    return;
                };
                let conversation = self.conversations.entry((sender, index)).or_default();
                if seq <= conversation.delivered_up_to {
                    self.metrics.messages_duplicated += 1;
                } else {
                    if seq != conversation.delivered_up_to + 1 {
                        self.metrics.messages_out_of_order += 1;
                    }
                    conversation.delivered_up_to = seq;
                    self.metrics.messages_delivered += 1;
                }
            }
            Event::MessageAcked {
                to_device,
                up_to_seq,
            } => {
                let Some(&recipient) = self.device_index.get(&to_device) else {
                    return;
                };
                let conversation = self.conversations.entry((index, recipient)).or_default();
                // An acknowledgement for a message the recipient's
                // application never got: the invariant the outbox exists for.
                if up_to_seq > conversation.delivered_up_to {
                    let newly =
                        up_to_seq - conversation.delivered_up_to.max(conversation.acked_up_to);
                    self.metrics.messages_lost += newly;
                }
                conversation.acked_up_to = conversation.acked_up_to.max(up_to_seq);
            }
            Event::Left => {
                if self.nodes[index as usize].is_supernode() {
                    // Its drain let its clients move first: count any it
                    // could not (`drain_max_ms` ran out).
                    let left_below_two = self.orphans_of(index).count();
                    self.metrics.graceful_leave_orphans += left_below_two as u64;
                }
                self.depart(index);
            }
            Event::Demoted => {
                self.live_supernodes.remove(index);
                self.live_clients.insert(index);
                self.metrics.demotions += 1;
            }
            _ => {}
        }
    }

    /// Supernodes a client is attached to, as seen from outside: accepted
    /// on the wire, supernode alive in the same epoch and still a
    /// supernode, keepalives reaching it within the idle timeout.
    fn valid_attachments(&self, client: u32) -> impl Iterator<Item = u32> + '_ {
        let now_s = (self.now_us / 1_000_000) as u32;
        let idle_s = (self.params.client_idle_timeout_ms / 1000) as u32;
        self.nodes[client as usize]
            .observed()
            .iter()
            .filter_map(move |o| {
                let supernode = &self.nodes[o.supernode as usize];
                let valid = supernode.is_supernode()
                    && supernode.epoch == o.epoch
                    && now_s.saturating_sub(o.last_contact_s) <= idle_s;
                valid.then_some(o.supernode)
            })
    }

    // ---- lookups ----

    fn lookup_tick(&mut self) {
        let next = self.script_us
            + exponential_us(&mut self.rng, 1e6 / self.config.lookups_per_s.max(1e-3));
        self.queue.push(next, EventKind::LookupTick);
        let uptime_us = self.config.lookup_target_uptime_s * 1_000_000;
        let mut source = None;
        let mut target = None;
        for _ in 0..20 {
            if source.is_none() {
                source = self
                    .live_clients
                    .random(&mut self.rng)
                    .filter(|s| self.valid_attachments(*s).next().is_some());
            }
            if target.is_none() {
                target = self
                    .live_clients
                    .random(&mut self.rng)
                    .filter(|t| self.nodes[*t as usize].online_since_us + uptime_us <= self.now_us);
            }
        }
        let (Some(source), Some(target)) = (source, target) else {
            return;
        };
        if source == target {
            return;
        }
        let Some(account) = self.nodes[target as usize]
            .node
            .as_ref()
            .map(|n| n.identity().account())
        else {
            return;
        };
        if self.pending_lookups.contains_key(&(source, account)) {
            return;
        }
        self.pending_lookups.insert(
            (source, account),
            PendingLookup {
                target,
                started_us: self.now_us,
                target_epoch: self.nodes[target as usize].epoch,
            },
        );
        self.metrics.lookups_started += 1;
        let now = self.now_for(source);
        if let Some(node) = self.nodes[source as usize].node.as_mut() {
            node.lookup(now, account);
        }
        self.flush(source);
    }

    // ---- messages ----

    fn message_tick(&mut self) {
        let next = self.script_us
            + exponential_us(&mut self.rng, 1e6 / self.config.messages_per_s.max(1e-3));
        let quiet_from_us = self
            .end_us
            .saturating_sub(self.config.messages_quiet_end_s * 1_000_000);
        if next < quiet_from_us {
            self.queue.push(next, EventKind::MessageTick);
        }
        // A live, attached sender; any client as the recipient, online or not.
        let mut sender = None;
        for _ in 0..20 {
            sender = self
                .live_clients
                .random(&mut self.rng)
                .filter(|s| self.valid_attachments(*s).next().is_some());
            if sender.is_some() {
                break;
            }
        }
        let Some(sender) = sender else {
            return;
        };
        let first_client = self.config.supernodes as u64;
        let span = self.nodes.len() as u64 - first_client;
        let recipient = (first_client + self.rng.next_u64() % span.max(1)) as u32;
        if recipient == sender {
            return;
        }
        let Some((device, account)) = self.nodes[recipient as usize]
            .node
            .as_ref()
            .map(|n| (n.identity().keypair.public(), n.identity().account()))
        else {
            return;
        };
        let now = self.now_for(sender);
        let payload = self.metrics.messages_sent.to_le_bytes();
        let Some(node) = self.nodes[sender as usize].node.as_mut() else {
            return;
        };
        match node.send_message(now, device, account, &payload) {
            Ok(seq) => {
                self.metrics.messages_sent += 1;
                let conversation = self.conversations.entry((sender, recipient)).or_default();
                conversation.sent = conversation.sent.max(seq);
            }
            Err(_) => self.metrics.messages_refused += 1,
        }
        self.flush(sender);
    }

    /// Messages sent to recipients that have been live clients for at least
    /// `settled_s` at the end, and how many of those were delivered.
    pub fn deliverable_messages(&self, settled_s: u64) -> (u64, u64) {
        let settled_us = settled_s * 1_000_000;
        let mut sent = 0;
        let mut delivered = 0;
        for (&(_, recipient), conversation) in &self.conversations {
            let node = &self.nodes[recipient as usize];
            let settled = node.alive
                && !node.is_supernode()
                && node.online_since_us + settled_us <= self.end_us;
            if settled {
                sent += conversation.sent;
                delivered += conversation.delivered_up_to.min(conversation.sent);
            }
        }
        (sent, delivered)
    }

    // ---- measurement ----

    fn sample(&mut self) {
        /// How long a churn crash's orphans are excused from outage figures.
        const CHURN_EXCUSE_US: u64 = 60_000_000;
        self.queue.push(
            self.script_us + self.config.sample_interval_s * 1_000_000,
            EventKind::Sample,
        );
        let mut attached_two = 0u64;
        let mut attached_one = 0u64;
        for &supernode in &self.live_supernodes.items {
            self.load_buffer[supernode as usize] = 0;
        }
        let mut load_buffer = std::mem::take(&mut self.load_buffer);
        for &client in &self.live_clients.items {
            let mut count = 0;
            for supernode in self.valid_attachments(client) {
                count += 1;
                load_buffer[supernode as usize] += 1;
            }
            if count >= 2 {
                attached_two += 1;
            }
            if count >= 1 {
                attached_one += 1;
            }
        }
        self.load_buffer = load_buffer;
        let mut loads: Vec<u32> = self
            .live_supernodes
            .items
            .iter()
            .map(|s| self.load_buffer[*s as usize])
            .collect();
        loads.sort_unstable();
        let capacity = self.params.supernode_capacity_attachments as f64;
        let over_capacity = loads.iter().filter(|l| **l as f64 > capacity).count() as u64;
        let mut cpu_work_max_us = 0;
        for &supernode in &self.live_supernodes.items {
            let work_us = self.nodes[supernode as usize].cpu.take_work_us();
            cpu_work_max_us = cpu_work_max_us.max(work_us);
        }
        self.metrics.over_capacity_events += over_capacity;
        let percentile = |p: f64| {
            loads
                .get(((loads.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        let sample = Sample {
            t_s: self.script_us / 1_000_000,
            live_clients: self.live_clients.len() as u64,
            attached_two,
            attached_one,
            supernodes: self.live_supernodes.len() as u64,
            load_p50: percentile(0.5),
            load_p99: percentile(0.99),
            load_max: loads.last().copied().unwrap_or(0),
            load_max_ratio: loads.last().copied().unwrap_or(0) as f64 / capacity,
            busy: std::mem::take(&mut self.metrics.busy_since_sample),
            busy_handshakes: std::mem::take(&mut self.metrics.busy_handshakes_since_sample),
            busy_no_alternates: std::mem::take(
                &mut self.metrics.busy_without_alternates_since_sample,
            ),
            mailbox_backlog: {
                let census = self.mailbox_census();
                census[0] + census[1] + census[2]
            },
            mailbox_held: self
                .live_supernodes
                .items
                .iter()
                .filter_map(|s| self.nodes[*s as usize].node.as_ref())
                .map(|n| n.mailbox_len() as u64)
                .sum(),
            over_capacity,
            cpu_load_max_ratio: cpu_work_max_us as f64
                / (self.config.sample_interval_s as f64 * 1e6),
            cpu_delay_max_ms: std::mem::take(&mut self.metrics.cpu_delay_max_since_sample_us)
                / 1000,
            reattach_pending: self.reattach_pending.len() as u64,
            queued_events: self.queue.len() as u64,
            rss_bytes: crate::report::rss_bytes(),
            churn_orphans: self
                .churn_pending
                .iter()
                .filter(|(client, since_us)| {
                    self.now_us - **since_us < CHURN_EXCUSE_US
                        && !self.reattach_pending.contains_key(client)
                })
                .count() as u64,
        };
        if sample.t_s + self.config.settle_window_s >= self.config.duration_s {
            self.metrics.final_loads = loads;
        }
        self.metrics.samples.push(sample);
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The supernodes' service times (`None`: the CPU model is off).
    pub fn cpu_costs(&self) -> Option<&CostTable> {
        self.costs.as_ref()
    }

    /// Clients still waiting to be back at two supernodes, with how long
    /// they have waited by the end of the run (ms).
    pub fn reattach_still_pending_ms(&self) -> Vec<u64> {
        let mut waits: Vec<u64> = self
            .reattach_pending
            .values()
            .map(|since| (self.end_us.saturating_sub(*since)) / 1000)
            .collect();
        waits.sort_unstable();
        waits
    }

    /// The first `limit` clients (by index) still waiting to be back at two
    /// supernodes at the end of the run: the ones to follow with
    /// `PEERLINE_SIM_TRACE`.
    pub fn reattach_still_pending_clients(&self, limit: usize) -> Vec<u32> {
        let mut clients: Vec<u32> = self.reattach_pending.keys().copied().collect();
        clients.sort_unstable();
        clients.truncate(limit);
        clients
    }

    /// Directory records held across all live supernodes.
    pub fn stored_records(&self) -> u64 {
        self.live_supernodes
            .items
            .iter()
            .filter_map(|s| self.nodes[*s as usize].node.as_ref())
            .map(|n| n.stored_records() as u64)
            .sum()
    }

    /// Average membership-view size of live supernodes.
    pub fn average_view_len(&self) -> f64 {
        let views: Vec<usize> = self
            .live_supernodes
            .items
            .iter()
            .filter_map(|s| self.nodes[*s as usize].node.as_ref())
            .map(|n| n.membership_len())
            .collect();
        views.iter().sum::<usize>() as f64 / views.len().max(1) as f64
    }

    /// Membership changes (joined, left, suspected) summed over all supernodes.
    pub fn membership_changes(&self) -> (u64, u64, u64) {
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .fold((0, 0, 0), |acc, n| {
                let s = n.stats();
                (
                    acc.0 + s.members_joined,
                    acc.1 + s.members_left,
                    acc.2 + s.members_suspected,
                )
            })
    }

    /// False suspicions: rumours of their own failure supernodes refuted.
    pub fn members_refuted(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .map(|n| n.stats().members_refuted)
            .sum()
    }

    /// Datagrams the nodes rejected as malformed or of an unknown version.
    pub fn malformed_seen(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .map(|n| n.stats().datagrams_malformed + n.stats().datagrams_unsupported_version)
            .sum()
    }
}

/// The random stream a node's keys come from.
/// What a node's clock reads at true virtual time `time_us`.
fn now_at(place: &Place, time_us: u64) -> Now {
    let elapsed_s = time_us / 1_000_000;
    Now {
        instant: Instant(time_us),
        unix_s: wall_clock_s(place, BASE_UNIX_S + elapsed_s, elapsed_s),
    }
}

/// A node's address: [`addr_of`], but the attacker's supernodes (sorted
/// `attackers`) share 11.0.0.0/24.
fn addr_for(attackers: &[u32], index: u32) -> Addr {
    if attackers.binary_search(&index).is_ok() {
        Addr::from_ipv4_u32(ATTACKER_BASE | index, PORT)
    } else {
        addr_of(index)
    }
}

fn node_seed_rng(seed: u64, index: u32) -> Pcg64Mcg {
    Pcg64Mcg::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn exponential_us(rng: &mut impl Rng, mean_us: f64) -> u64 {
    let u = uniform(rng).max(1e-12);
    (-u.ln() * mean_us) as u64
}

impl World {
    /// Live clients with fewer than two observed attachments, with what the
    /// client itself believes (for diagnosing a run).
    pub fn underattached(&self) -> Vec<String> {
        let mut out = Vec::new();
        for &client in &self.live_clients.items {
            let valid: Vec<u32> = self.valid_attachments(client).collect();
            if valid.len() >= 2 {
                continue;
            }
            let node = self.nodes[client as usize].node.as_ref().expect("live");
            let believed: Vec<u32> = node
                .attached_supernodes()
                .iter()
                .filter_map(|c| index_of(&c.addr, self.nodes.len()))
                .collect();
            let observed: Vec<(u32, u32, u32, bool, u32)> = self.nodes[client as usize]
                .observed()
                .iter()
                .map(|o| {
                    let s = &self.nodes[o.supernode as usize];
                    (
                        o.supernode,
                        o.epoch,
                        o.last_contact_s,
                        s.is_supernode(),
                        s.epoch,
                    )
                })
                .collect();
            out.push(format!(
                "client {client} up since {}s: valid {valid:?} believed {believed:?} observed {observed:?} cache {}",
                self.nodes[client as usize].online_since_us / 1_000_000,
                node.host_cache().len()
            ));
        }
        out
    }
}

impl World {
    /// Conversations to settled online recipients with messages not yet
    /// delivered, described for diagnosis.
    pub fn undelivered(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut keys: Vec<&(u32, u32)> = self.conversations.keys().collect();
        keys.sort_unstable();
        for &(sender, recipient) in keys {
            let c = self.conversations[&(sender, recipient)];
            let r = &self.nodes[recipient as usize];
            let settled =
                r.alive && !r.is_supernode() && r.online_since_us + 120_000_000 <= self.end_us;
            if !settled || c.delivered_up_to >= c.sent {
                continue;
            }
            let s = &self.nodes[sender as usize];
            let device = r.node.as_ref().map(|n| n.identity().keypair.public());
            let copies: usize = self
                .live_supernodes
                .items
                .iter()
                .filter_map(|x| self.nodes[*x as usize].node.as_ref())
                .map(|n| {
                    n.mailbox_recipients()
                        .iter()
                        .filter(|(d, _, seq)| Some(*d) == device && *seq > 0)
                        .count()
                })
                .sum();
            let account = r.node.as_ref().map(|n| n.identity().account());
            let holders: Vec<(u32, bool, usize)> = self
                .live_supernodes
                .items
                .iter()
                .filter_map(|x| self.nodes[*x as usize].node.as_ref().map(|n| (*x, n)))
                .map(|(x, n)| {
                    let record = account.is_some_and(|a| n.holds_record(&a));
                    let mail = n
                        .mailbox_recipients()
                        .iter()
                        .filter(|(d, _, seq)| Some(*d) == device && *seq > 0)
                        .count();
                    (x, record, mail)
                })
                .filter(|(_, record, mail)| *record || *mail > 0)
                .collect();
            out.push(format!(
                "{sender} -> {recipient}: sent {} delivered {} acked {} · sender alive {} supernode {} outbox {} · recipient up since {} s attached {} · data copies in mailboxes {copies} · (supernode, holds record, mail) {holders:?}",
                c.sent,
                c.delivered_up_to,
                c.acked_up_to,
                s.alive,
                s.is_supernode(),
                s.node.as_ref().map_or(0, |n| n.outbox_len()),
                r.online_since_us / 1_000_000,
                self.valid_attachments(recipient).count(),
            ));
        }
        out
    }

    /// Envelope copies held in mailboxes, by what their recipient is at the
    /// end: [live client: acks, data already delivered, data not delivered;
    /// offline; supernode].
    pub fn mailbox_census(&self) -> [u64; 5] {
        let mut census = [0; 5];
        for &s in &self.live_supernodes.items {
            let Some(node) = self.nodes[s as usize].node.as_ref() else {
                continue;
            };
            for (device, from, seq) in node.mailbox_recipients() {
                let Some(&recipient) = self.device_index.get(&device) else {
                    continue;
                };
                let n = &self.nodes[recipient as usize];
                if n.is_supernode() {
                    census[4] += 1;
                } else if !n.alive {
                    census[3] += 1;
                } else if seq == 0 {
                    census[0] += 1;
                } else {
                    let sender = self.device_index.get(&from).copied().unwrap_or(u32::MAX);
                    let delivered = self
                        .conversations
                        .get(&(sender, recipient))
                        .is_some_and(|c| c.delivered_up_to >= seq);
                    census[if delivered { 1 } else { 2 }] += 1;
                }
            }
        }
        census
    }

    /// (index, membership view size, attached clients) of every live supernode.
    pub fn supernode_views(&self) -> Vec<(u32, usize, usize)> {
        let mut views: Vec<(u32, usize, usize)> = self
            .live_supernodes
            .items
            .iter()
            .filter_map(|s| {
                self.nodes[*s as usize]
                    .node
                    .as_ref()
                    .map(|n| (*s, n.membership_len(), n.attached_clients()))
            })
            .collect();
        views.sort_unstable();
        views
    }
}
