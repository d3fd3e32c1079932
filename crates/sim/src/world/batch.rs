//! Running the nodes' events of one look-ahead window on several threads,
//! with an outcome every thread count agrees on.
//!
//! No datagram arrives sooner than [`LATENCY_MIN_US`] after it left, so in
//! a window that long, starting at the earliest queued event, nothing one
//! node does can reach another: each node's events in the window (datagrams
//! arriving, its timer, datagrams that waited for its CPU) depend on that
//! node's state alone. [`World::run`] takes such a window from the queue
//! and first runs the script's events in it, at the window's start (they
//! may touch any node); then the lanes run every node's events in time
//! order, each node on exactly one thread,
//! including the wake-ups and CPU turns a node schedules for itself inside
//! the window; and they write down what the rest of the world must learn
//! ([`Record`]). One thread then applies the records in (time, node) order:
//! the counters, the observer, the digest, and the network (loss and latency
//! draws, the datagrams queued for delivery). How the nodes are split
//! between threads changes only the wall time: one thread or several give
//! the same digest (a test checks it).

use super::{addr_for, index_of, now_at, ProfileKey, SimNode, World};
use crate::cpu::{Admission, CostTable};
use crate::crew::Crew;
use crate::metrics::Digest;
use crate::network::LATENCY_MIN_US;
use crate::queue::EventKind;
use peerline_core::Event;
use peerline_proto::{peek_kind, MessageKind};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Nodes a lane takes at a time: a few, so that the lanes finish together.
const GROUPS_PER_CLAIM: usize = 16;
/// Nodes between a prefetch of a node's state and its use.
const PREFETCH_AHEAD: usize = 4;

/// One event of one node in the window.
pub(super) struct LocalEvent {
    pub time_us: u64,
    pub node: u32,
    pub kind: Local,
}

pub(super) enum Local {
    Deliver {
        from: u32,
        bytes: Vec<u8>,
    },
    /// A datagram that waited for the node's CPU: its service starts.
    Served {
        from: u32,
        bytes: Vec<u8>,
    },
    /// The node's timer (void when `epoch` or the armed time changed).
    Timer {
        epoch: u32,
    },
}

/// What an event did, for the world to apply in order.
pub(super) struct Record {
    time_us: u64,
    node: u32,
    outcome: Outcome,
    transmits: Range<usize>,
    events: Range<usize>,
    /// The datagrams leave this long after `time_us` (the CPU's service).
    depart_after_us: u64,
    /// A wake-up at or after the window's end: `(at, epoch)` for the queue.
    timer: Option<(u64, u32)>,
}

enum Outcome {
    /// Addressed to a node that is down.
    DroppedDead {
        from: u32,
        kind: Option<MessageKind>,
    },
    /// Filtered by the node's NAT.
    DroppedNat {
        from: u32,
        kind: Option<MessageKind>,
    },
    /// The CPU's backlog was full.
    CpuDropped {
        from: u32,
        kind: Option<MessageKind>,
    },
    /// Waits `delay_us` for the CPU; `later` when its turn is after the window.
    CpuQueued {
        delay_us: u64,
        later: Option<(u64, u32, Vec<u8>)>,
    },
    /// The node read the datagram. `cpu_idle`: it was served at once by a
    /// CPU-modelled supernode. `busy`: a busy answer, kept for the observer.
    Handled {
        from: u32,
        kind: Option<MessageKind>,
        digest_word: u64,
        cpu_idle: bool,
        busy: Option<Vec<u8>>,
    },
    /// The timer fired; `due` when the node had something to do.
    Timer { due: bool },
}

/// What the lanes need to know about the world: read-only.
pub(super) struct Context<'a> {
    pub costs: Option<&'a CostTable>,
    pub cpu_backlog_max: u32,
    pub attackers: &'a [u32],
    pub nodes_len: usize,
    /// Events a node schedules for itself before this run in the window.
    pub end_us: u64,
    pub profile: bool,
    /// Windows with fewer events run on one lane.
    pub split_min: usize,
}

/// One thread's output for a window (kept between windows for its buffers).
#[derive(Default)]
pub(super) struct Lane {
    records: Vec<Record>,
    transmits: Vec<(Option<u32>, Vec<u8>)>,
    events: Vec<Option<Event>>,
    pub profile: Vec<(ProfileKey, Duration)>,
    /// Events run, void timers included.
    pub processed: u64,
    /// Wall time this lane worked on the window.
    pub busy: Duration,
    /// One node's events still to run in the window, latest first.
    pending: Vec<LocalEvent>,
}

impl Lane {
    fn clear(&mut self) {
        self.records.clear();
        self.transmits.clear();
        self.events.clear();
        self.profile.clear();
        self.processed = 0;
        self.busy = Duration::ZERO;
    }
}

/// A window's nodes and their events, handed out to the lanes a few nodes
/// at a time: whichever lane is free takes the next ones, so no lane idles
/// while another works through a run of expensive events.
struct Handout<'a> {
    nodes: *mut SimNode,
    events: *mut LocalEvent,
    /// Where each node's events begin in `events`, then where they end.
    groups: &'a [u32],
    next: AtomicUsize,
    _borrows: PhantomData<(&'a mut [SimNode], &'a mut [LocalEvent])>,
}

// SAFETY: lanes reach the nodes and events only through `claim` and
// `group`, and `claim` hands each group (one node, its events) out once.
unsafe impl Sync for Handout<'_> {}

impl<'a> Handout<'a> {
    /// `events` sorted by node; `groups` their boundaries.
    fn new(nodes: &'a mut [SimNode], events: &'a mut [LocalEvent], groups: &'a [u32]) -> Self {
        assert!(events.iter().all(|e| (e.node as usize) < nodes.len()));
        assert_eq!(groups.last().copied(), Some(events.len() as u32));
        Handout {
            nodes: nodes.as_mut_ptr(),
            events: events.as_mut_ptr(),
            groups,
            next: AtomicUsize::new(0),
            _borrows: PhantomData,
        }
    }

    /// The next few groups for a lane; every group goes to one lane only.
    fn claim(&self) -> Option<Range<usize>> {
        let groups = self.groups.len() - 1;
        let first = self.next.fetch_add(GROUPS_PER_CLAIM, Ordering::Relaxed);
        (first < groups).then(|| first..(first + GROUPS_PER_CLAIM).min(groups))
    }

    fn events_of(&self, group: usize) -> Range<usize> {
        self.groups[group] as usize..self.groups[group + 1] as usize
    }

    /// A group's node and events.
    ///
    /// # Safety
    /// `group` came from this lane's `claim`, and the lane holds no other
    /// reference to it.
    #[allow(clippy::mut_from_ref)] // handing out `&mut` from a shared `&self` is its job
    unsafe fn group(&self, group: usize) -> (&mut SimNode, &mut [LocalEvent]) {
        let range = self.events_of(group);
        // SAFETY: the range is inside `events` (`groups` ends at its
        // length), claimed by this lane alone; its node is this group's
        // own (events are sorted by node and groups cut where it changes)
        // and inside `nodes` (checked in `new`).
        unsafe {
            let events = std::slice::from_raw_parts_mut(self.events.add(range.start), range.len());
            let node = &mut *self.nodes.add(events[0].node as usize);
            (node, events)
        }
    }

    /// Starts loading a group's node state and first datagram (a hint).
    ///
    /// # Safety
    /// As for [`Handout::group`].
    unsafe fn prefetch(&self, group: usize) {
        // SAFETY: as in `group`; only addresses are formed and one field read.
        unsafe {
            let event = self.events.add(self.groups[group] as usize);
            let node = self.nodes.add((*event).node as usize);
            super::prefetch_bytes(node.cast(), std::mem::size_of::<SimNode>());
            if let Local::Deliver { bytes, .. } | Local::Served { bytes, .. } = &(*event).kind {
                super::prefetch_bytes(bytes.as_ptr(), bytes.len().min(256));
            }
        }
    }
}

/// Runs the window's events (`events`: sorted by node, each node's in time
/// order) on the crew's threads, or on this one for a small window; says
/// which.
fn run_lanes(
    ctx: &Context,
    crew: Option<&Crew>,
    nodes: &mut [SimNode],
    events: &mut [LocalEvent],
    groups: &[u32],
    lanes: &mut [Lane],
) -> bool {
    let small = events.len() < ctx.split_min;
    let handout = Handout::new(nodes, events, groups);
    match crew.filter(|_| !small) {
        Some(crew) => {
            crew.run(lanes.iter_mut().collect(), &|lane| {
                run_claims(ctx, &handout, lane)
            });
            true
        }
        None => {
            run_claims(ctx, &handout, &mut lanes[0]);
            false
        }
    }
}

/// A lane's work: groups claimed until none is left.
fn run_claims(ctx: &Context, handout: &Handout, lane: &mut Lane) {
    let started = std::time::Instant::now();
    while let Some(claim) = handout.claim() {
        for group in claim.clone() {
            if group + PREFETCH_AHEAD < claim.end {
                // SAFETY: claimed by this lane, no reference to it held.
                unsafe { handout.prefetch(group + PREFETCH_AHEAD) };
            }
            // SAFETY: claimed by this lane, and used only in this turn.
            let (slot, events) = unsafe { handout.group(group) };
            let node = events[0].node;
            lane.pending.clear();
            for event in events.iter_mut().rev() {
                let kind = std::mem::replace(&mut event.kind, Local::Timer { epoch: 0 });
                let time_us = event.time_us;
                lane.pending.push(LocalEvent {
                    time_us,
                    node,
                    kind,
                });
            }
            run_node(ctx, slot, node, lane);
        }
    }
    lane.busy = started.elapsed();
}

/// Runs one node's events of the window, and those it schedules for itself
/// inside it, in time order.
fn run_node(ctx: &Context, slot: &mut SimNode, node: u32, lane: &mut Lane) {
    while let Some(event) = lane.pending.pop() {
        lane.processed += 1;
        let time_us = event.time_us;
        match event.kind {
            Local::Deliver { from, bytes } => {
                if !slot.alive {
                    let kind = peek_kind(&bytes);
                    push_record(lane, time_us, node, Outcome::DroppedDead { from, kind });
                    continue;
                }
                if !slot.nat_allows(from) {
                    let kind = peek_kind(&bytes);
                    push_record(lane, time_us, node, Outcome::DroppedNat { from, kind });
                    continue;
                }
                let service_us = match ctx.costs {
                    Some(costs) if slot.is_supernode() => costs.service_us(peek_kind(&bytes)),
                    _ => 0,
                };
                if service_us == 0 {
                    handle(ctx, slot, node, lane, time_us, from, bytes, 0, false);
                    continue;
                }
                match slot.cpu.arrive(time_us, service_us, ctx.cpu_backlog_max) {
                    Admission::Now => handle(
                        ctx, slot, node, lane, time_us, from, bytes, service_us, true,
                    ),
                    Admission::Queued { start_us } => {
                        let later = if start_us < ctx.end_us {
                            schedule(lane, start_us, node, Local::Served { from, bytes });
                            None
                        } else {
                            Some((start_us, from, bytes))
                        };
                        let delay_us = start_us - time_us;
                        push_record(lane, time_us, node, Outcome::CpuQueued { delay_us, later });
                    }
                    Admission::Dropped => {
                        let kind = peek_kind(&bytes);
                        push_record(lane, time_us, node, Outcome::CpuDropped { from, kind });
                    }
                }
            }
            Local::Served { from, bytes } => {
                slot.cpu.start_queued();
                if !slot.alive {
                    // The process and its queue died while it waited.
                    let kind = peek_kind(&bytes);
                    push_record(lane, time_us, node, Outcome::DroppedDead { from, kind });
                    continue;
                }
                let costs = ctx.costs.expect("datagrams wait only with a CPU model");
                let service_us = costs.service_us(peek_kind(&bytes));
                handle(
                    ctx, slot, node, lane, time_us, from, bytes, service_us, false,
                );
            }
            Local::Timer { epoch } => {
                if !slot.alive || slot.epoch != epoch || slot.timer_at_us != time_us {
                    continue;
                }
                slot.timer_at_us = u64::MAX;
                let now = now_at(&slot.place, time_us);
                let Some(state) = slot.node.as_mut() else {
                    continue;
                };
                let started = ctx.profile.then(std::time::Instant::now);
                let supernode = state.is_supernode();
                // The deadline may have moved later since this wake-up was
                // queued (a pong arrived): then there is nothing to do but re-arm.
                let due = state
                    .poll_timeout()
                    .is_some_and(|deadline| deadline.0 <= time_us);
                if due {
                    state.handle_timeout(now);
                }
                let record = drain(ctx, slot, node, lane, time_us, Outcome::Timer { due }, 0);
                lane.records.push(record);
                if let Some(started) = started {
                    let role = ProfileKey::Timer { supernode };
                    lane.profile.push((role, started.elapsed()));
                }
            }
        }
    }
}

/// The node reads a datagram; what it answers leaves `service_us` later.
#[allow(clippy::too_many_arguments)]
fn handle(
    ctx: &Context,
    slot: &mut SimNode,
    node: u32,
    lane: &mut Lane,
    time_us: u64,
    from: u32,
    bytes: Vec<u8>,
    service_us: u32,
    cpu_idle: bool,
) {
    let started = ctx.profile.then(std::time::Instant::now);
    let kind = peek_kind(&bytes);
    let digest_word = Digest::delivered_word(time_us, from, node, &bytes);
    let now = now_at(&slot.place, time_us);
    if let Some(state) = slot.node.as_mut() {
        // The attacker's supernodes vote for every claim they are asked
        // about: they forget their vote before each request.
        if kind == Some(MessageKind::NameVoteRequest) && ctx.attackers.binary_search(&node).is_ok()
        {
            state.forget_name_votes();
        }
        state.handle(now, addr_for(ctx.attackers, from), &bytes);
    }
    let outcome = Outcome::Handled {
        from,
        kind,
        digest_word,
        cpu_idle,
        busy: (kind == Some(MessageKind::Busy)).then_some(bytes),
    };
    let record = drain(ctx, slot, node, lane, time_us, outcome, service_us as u64);
    lane.records.push(record);
    if let Some(started) = started {
        lane.profile
            .push((ProfileKey::Datagram(kind), started.elapsed()));
    }
}

/// Takes what the node queued (datagrams, events) into the lane, does the
/// node's own part of it (its NAT's memory of destinations, the epoch of a
/// role change) and re-arms its timer: inside the window on the lane,
/// otherwise in the record for the queue.
fn drain(
    ctx: &Context,
    slot: &mut SimNode,
    node: u32,
    lane: &mut Lane,
    time_us: u64,
    outcome: Outcome,
    depart_after_us: u64,
) -> Record {
    let transmits_from = lane.transmits.len();
    let events_from = lane.events.len();
    let deadline = match slot.node.as_mut() {
        Some(state) => {
            lane.transmits.extend(
                state
                    .drain_transmits()
                    .map(|t| (index_of(&t.to, ctx.nodes_len), t.bytes)),
            );
            lane.events.extend(state.drain_events().map(Some));
            state.poll_timeout()
        }
        None => None,
    };
    for (to, _) in &lane.transmits[transmits_from..] {
        if let Some(to) = to {
            slot.remember_destination(*to);
        }
    }
    for event in &lane.events[events_from..] {
        if matches!(event, Some(Event::Promoted | Event::Demoted)) {
            // A new role: the old one's timers and attachments are void.
            slot.epoch += 1;
            slot.timer_at_us = u64::MAX;
        }
    }
    let mut timer = None;
    if let (true, Some(deadline)) = (slot.alive, deadline) {
        let at = deadline.0.max(time_us + 1);
        if at < slot.timer_at_us || slot.timer_at_us <= time_us {
            slot.timer_at_us = at;
            let epoch = slot.epoch;
            if at < ctx.end_us {
                schedule(lane, at, node, Local::Timer { epoch });
            } else {
                timer = Some((at, epoch));
            }
        }
    }
    Record {
        time_us,
        node,
        outcome,
        transmits: transmits_from..lane.transmits.len(),
        events: events_from..lane.events.len(),
        depart_after_us,
        timer,
    }
}

fn push_record(lane: &mut Lane, time_us: u64, node: u32, outcome: Outcome) {
    let empty = lane.transmits.len()..lane.transmits.len();
    let no_events = lane.events.len()..lane.events.len();
    lane.records.push(Record {
        time_us,
        node,
        outcome,
        transmits: empty,
        events: no_events,
        depart_after_us: 0,
        timer: None,
    });
}

/// A node's own event inside the window: after its events at the same time
/// (it would have been queued after them).
fn schedule(lane: &mut Lane, time_us: u64, node: u32, kind: Local) {
    let at = lane.pending.partition_point(|e| e.time_us > time_us);
    let event = LocalEvent {
        time_us,
        node,
        kind,
    };
    lane.pending.insert(at, event);
}

impl World {
    /// The read-only view the lanes work with, and the nodes apart from
    /// it; events a node schedules for itself before `end_us` run in the window.
    fn split_for_lanes(&mut self, end_us: u64) -> (Context<'_>, &mut [SimNode]) {
        let ctx = Context {
            costs: self.costs.as_ref(),
            cpu_backlog_max: self.config.cpu_backlog_max,
            attackers: &self.names.attackers,
            nodes_len: self.nodes.len(),
            end_us,
            profile: self.profile.is_some(),
            split_min: self.config.window_split_min,
        };
        (ctx, &mut self.nodes)
    }

    /// Runs one window's node events (in the order they were queued) and
    /// applies what they did. Returns the events run.
    pub(super) fn run_window(&mut self, mut events: Vec<LocalEvent>, end_us: u64) -> u64 {
        let started = self.profile.as_ref().map(|_| std::time::Instant::now());
        let window_events = events.len() as u64;
        // Each node's events in time order (at equal times, in the order
        // they were queued: the sort is stable).
        events.sort_by_key(|e| (e.node, e.time_us));
        let mut lanes = std::mem::take(&mut self.lanes);
        // A lane that gets no events this time must not hold the last one's.
        lanes.iter_mut().for_each(Lane::clear);
        let split;
        {
            let mut groups = std::mem::take(&mut self.groups);
            groups.clear();
            for (i, event) in events.iter().enumerate() {
                if i == 0 || event.node != events[i - 1].node {
                    groups.push(i as u32);
                }
            }
            groups.push(events.len() as u32);
            let crew = self.crew.take();
            let (ctx, nodes) = self.split_for_lanes(end_us);
            split = run_lanes(&ctx, crew.as_ref(), nodes, &mut events, &groups, &mut lanes);
            self.crew = crew;
            self.groups = groups;
        }
        let lanes_done = started.map(|_| std::time::Instant::now());
        self.metrics.windows += 1;
        self.metrics.windows_split += split as u64;

        // Every record in (time, node) order; a node's records are on one
        // lane, in the order it ran them.
        let mut order = std::mem::take(&mut self.record_order);
        order.clear();
        let mut processed = 0;
        for (l, lane) in lanes.iter().enumerate() {
            processed += lane.processed;
            order.extend(
                lane.records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.time_us, r.node, l as u32, i as u32)),
            );
        }
        order.sort_unstable();
        for &(_, _, l, i) in &order {
            let lane = &mut lanes[l as usize];
            let record = &mut lane.records[i as usize];
            let outcome = std::mem::replace(&mut record.outcome, Outcome::Timer { due: false });
            let transmits = record.transmits.clone();
            let events = record.events.clone();
            let (time_us, node, depart, timer) = (
                record.time_us,
                record.node,
                record.depart_after_us,
                record.timer,
            );
            self.now_us = time_us;
            self.apply_outcome(node, outcome);
            self.send(node, time_us + depart, &mut lane.transmits[transmits]);
            for event in lane.events[events].iter_mut().filter_map(Option::take) {
                self.node_event(node, event);
            }
            if let Some((at, epoch)) = timer {
                self.queue.push(at, EventKind::Timer { node, epoch });
            }
        }
        if let (Some(profile), Some(started), Some(lanes_done)) =
            (self.profile.as_mut(), started, lanes_done)
        {
            profile.windows += 1;
            profile.windows_split += split as u64;
            profile.window_events += window_events;
            profile.in_lanes += lanes_done - started;
            for (i, lane) in lanes.iter().enumerate() {
                if profile.lane_busy.len() <= i {
                    profile.lane_busy.push(Duration::ZERO);
                }
                profile.lane_busy[i] += lane.busy;
            }
            profile.applying += lanes_done.elapsed();
            for lane in &lanes {
                for (key, spent) in &lane.profile {
                    profile.add(*key, *spent);
                }
            }
        }
        self.lanes = lanes;
        self.record_order = order;
        processed
    }

    fn apply_outcome(&mut self, node: u32, outcome: Outcome) {
        match outcome {
            Outcome::DroppedDead { from, kind } => {
                self.metrics.dropped_dead += 1;
                self.trace_drop(from, node, kind, "the node is down");
            }
            Outcome::DroppedNat { from, kind } => {
                self.metrics.dropped_nat += 1;
                self.trace_drop(from, node, kind, "filtered by the node's NAT");
            }
            Outcome::CpuDropped { from, kind } => {
                self.metrics.cpu_dropped += 1;
                crate::metrics::tally_kind(&mut self.metrics.cpu_dropped_by_kind, kind);
                self.trace_drop(from, node, kind, "the CPU's backlog is full");
            }
            Outcome::CpuQueued { delay_us, later } => {
                self.metrics.cpu_delay.record(delay_us);
                let sample_max = &mut self.metrics.cpu_delay_max_since_sample_us;
                *sample_max = (*sample_max).max(delay_us);
                if let Some((start_us, from, bytes)) = later {
                    let to = node;
                    self.queue
                        .push(start_us, EventKind::Served { to, from, bytes });
                }
            }
            Outcome::Handled {
                from,
                kind,
                digest_word,
                cpu_idle,
                busy,
            } => {
                if cpu_idle {
                    self.metrics.cpu_delay.record(0);
                }
                self.metrics.delivered += 1;
                if self.trace == Some(node) || self.trace == Some(from) {
                    eprintln!("{:.3} {from} -> {node} {kind:?}", self.now_us as f64 / 1e6);
                }
                self.digest.push(digest_word);
                self.observe(from, node, kind, busy.as_deref());
            }
            Outcome::Timer { due } => {
                if due {
                    self.metrics.timers += 1;
                    self.digest.timer(self.now_us, node);
                }
            }
        }
    }

    /// `PEERLINE_SIM_TRACE`: a datagram to or from the traced node that
    /// was not handled, and why.
    fn trace_drop(&self, from: u32, to: u32, kind: Option<MessageKind>, why: &str) {
        if self.trace == Some(to) || self.trace == Some(from) {
            eprintln!(
                "{:.3} {from} -> {to} {kind:?} (dropped: {why})",
                self.now_us as f64 / 1e6
            );
        }
    }

    /// Puts a node's datagrams on the network: each may be lost, the rest
    /// arrive after the pair's latency, leaving at `depart_us`.
    fn send(&mut self, index: u32, depart_us: u64, transmits: &mut [(Option<u32>, Vec<u8>)]) {
        for (to, bytes) in transmits {
            let Some(to) = *to else {
                self.metrics.dropped_unroutable += 1;
                continue;
            };
            self.metrics.sent += 1;
            self.metrics.bytes_sent += bytes.len() as u64;
            if crate::network::uniform(&mut self.rng) < self.config.loss_rate {
                self.metrics.lost += 1;
                if self.trace == Some(index) || self.trace == Some(to) {
                    self.trace_drop(index, to, peek_kind(bytes), "lost on the way");
                }
                continue;
            }
            let latency = crate::network::latency_us(
                &self.nodes[index as usize].place,
                &self.nodes[to as usize].place,
                &mut self.rng,
            );
            debug_assert!(
                latency >= LATENCY_MIN_US,
                "the look-ahead window relies on it"
            );
            let bytes = std::mem::take(bytes);
            self.queue.push(
                depart_us + latency,
                EventKind::Deliver {
                    to,
                    from: index,
                    bytes,
                },
            );
        }
    }

    /// Sends what the node queued, handles its events, re-arms its timer:
    /// after a scenario action that called into the node.
    pub(super) fn flush(&mut self, index: u32) {
        let now_us = self.now_us;
        let mut lanes = std::mem::take(&mut self.lanes);
        let lane = &mut lanes[0];
        lane.clear();
        let record = {
            // Nothing runs inside a window here: every wake-up goes to the queue.
            let (ctx, nodes) = self.split_for_lanes(now_us);
            let slot = &mut nodes[index as usize];
            drain(
                &ctx,
                slot,
                index,
                lane,
                now_us,
                Outcome::Timer { due: false },
                0,
            )
        };
        self.send(index, now_us, &mut lane.transmits[record.transmits.clone()]);
        for event in lane.events[record.events.clone()]
            .iter_mut()
            .filter_map(Option::take)
        {
            self.node_event(index, event);
        }
        if let Some((at, epoch)) = record.timer {
            self.queue.push(at, EventKind::Timer { node: index, epoch });
        }
        lane.clear();
        self.lanes = lanes;
    }
}
