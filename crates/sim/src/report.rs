//! The run report: the `report.json` contract, the checks against the
//! figures the issue demands, and the human summary.

use crate::config::{CpuModel, Scenario, SimConfig};
use crate::cpu::Calibration;
use crate::metrics::{quantile, Sample};
use crate::world::World;
use peerline_core::bundle::{KDF_PARAMS_PRODUCTION, KDF_PARAMS_SIMULATION};
use peerline_core::{CryptoMode, Params};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub value: f64,
    pub bound: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub seed: u64,
    pub clients: u32,
    pub supernodes: u32,
    pub virtual_duration_s: u64,
    pub wall_s: f64,
    pub events: u64,
    pub events_per_s: f64,
    /// Threads that ran the nodes, the look-ahead windows of node events
    /// and how many of them were split between threads (wall time only:
    /// the run is the same with any thread count).
    pub threads: usize,
    pub windows: u64,
    pub windows_split: u64,
    pub peak_rss_bytes: u64,
    /// Peak RSS divided by the number of nodes: an upper bound on state per node.
    pub state_bytes_per_node: u64,
    pub crypto_mode: CryptoMode,
    pub lookups_started: u64,
    pub lookups_completed: u64,
    pub lookups_not_found: u64,
    pub lookups_stale: u64,
    pub lookups_abandoned: u64,
    pub lookup_success_ratio: f64,
    pub lookup_hops_median: u64,
    pub lookup_hops_p99: u64,
    pub lookup_hops_histogram: Vec<u64>,
    pub lookup_latency_ms_median: u64,
    pub lookup_latency_ms_p99: u64,
    /// Successful lookups that needed more than one round (iterative routing).
    pub lookup_fallback_ratio: f64,
    pub attached_ratio_min: f64,
    /// Mean over the same window as `attached_ratio_min`.
    pub attached_ratio_mean: f64,
    pub attached_ratio_final: f64,
    pub supernode_load_max_ratio: f64,
    pub supernodes_final: u64,
    pub live_clients_final: u64,
    pub promotions: u64,
    pub promotions_unreachable: u64,
    pub demotions: u64,
    pub crashes: u64,
    pub graceful_leaves: u64,
    /// Clients below two attachments when a gracefully leaving supernode
    /// went (after its drain): 0 when every client moved first.
    pub graceful_leave_orphans: u64,
    pub datagrams_sent: u64,
    pub datagrams_delivered: u64,
    pub datagrams_lost: u64,
    pub datagrams_dropped_dead: u64,
    pub datagrams_dropped_nat: u64,
    /// Delivered datagrams by message kind: where the traffic goes.
    pub datagrams_by_kind: std::collections::BTreeMap<String, u64>,
    pub bytes_sent: u64,
    pub timers_fired: u64,
    pub malformed_seen: u64,
    pub directory_records: u64,
    pub membership_view_avg: f64,
    /// Membership changes seen, summed over supernodes: (joined, left, suspected).
    pub membership_changes: (u64, u64, u64),
    /// Suspicions the suspected supernode refuted, summed over supernodes:
    /// each was false (the member was alive) and cost a network-wide
    /// suspicion, a refutation and its clients' spare handshakes.
    pub members_refuted: u64,
    /// Attachment capacity of every supernode in this run.
    pub capacity_attachments: u64,
    pub naive: bool,
    /// Nodes the outage crashed or restarted.
    pub outage_crashes: u64,
    /// Clients the outage knocked below two attachments (restarted clients,
    /// or clients of crashed supernodes).
    pub reattach_affected: u64,
    /// Of those whose deadline passed within the run, the fraction back at
    /// two supernodes within `reattach_deadline_s` (300 s).
    pub reattach_ratio_within_300s: f64,
    pub reattach_s_median: f64,
    /// Clients never back count with their wait so far (a lower bound).
    pub reattach_s_p99: f64,
    /// Clients left below two attachments by churn crashes of supernodes
    /// (outside any scenario outage): how many, and how fast they were whole.
    pub churn_reattach_count: u64,
    pub churn_reattach_s_median: f64,
    pub churn_reattach_s_p99: f64,
    pub reattach_never: u64,
    /// The first few of those clients by node index (follow one with
    /// `PEERLINE_SIM_TRACE=<index>` on the same seed).
    pub reattach_never_clients: Vec<u32>,
    /// Busy answers seen on the wire.
    pub busy_answers: u64,
    /// The same by reason (attachments full, login budget spent, ...).
    pub busy_by_reason: std::collections::BTreeMap<String, u64>,
    /// Busy answers that named no alternate with room.
    pub busy_without_alternates: u64,
    /// Supernodes over capacity, summed over samples (every `sample_interval_s`).
    pub supernode_over_capacity_events: u64,
    pub messages_sent: u64,
    pub messages_refused: u64,
    pub messages_delivered: u64,
    /// Acknowledged to their sender yet never delivered (must be 0).
    pub messages_lost: u64,
    pub messages_duplicated: u64,
    pub messages_out_of_order: u64,
    /// Of the messages sent to devices online (as clients, for 2 minutes or
    /// more) at the end, the fraction delivered by the end.
    pub messages_delivered_ratio: f64,
    /// Most envelope copies waiting in mailboxes for devices that are
    /// online, at any sample (the replay backlog).
    pub mailbox_backlog_max: u64,
    /// Most envelope copies held in mailboxes at any sample, offline
    /// recipients included.
    pub mailbox_held_max: u64,
    /// From the outage until the backlog is back near its level before it
    /// (within 1.5× or 50 envelopes); the rest of the run if it never is.
    pub backlog_drain_s: f64,
    /// The lowest attached ratio (live clients at two supernodes) from the
    /// outage to the end of the run.
    pub attached_ratio_min_after_outage: f64,
    /// `partition`: the lowest attached ratio from 5 minutes into the split
    /// until it heals, net of clients re-attaching after an ordinary churn
    /// crash of the last minute (a single supernode's crash in a
    /// few-thousand-node run is a 2–5% dip for ~10 s whatever the partition
    /// does; `churn_reattach_s_*` times those clients).
    pub attached_ratio_partition_min: f64,
    /// The same, counting every client.
    pub attached_ratio_partition_min_raw: f64,
    /// `partition`: lookups started 2 minutes or more after the heal, and
    /// the fraction that found the target's current record.
    pub lookups_after_heal: u64,
    pub lookup_success_after_heal: f64,
    pub datagrams_dropped_partition: u64,
    /// Whether supernodes paid CPU time per datagram, and the service
    /// times they paid (`cpu.rs`: the real driver's calibration times
    /// `config.cpu_cost_factor`).
    pub cpu_model: CpuModel,
    pub cpu_costs: Option<Calibration>,
    /// Datagrams supernodes handled through their CPU queue.
    pub cpu_datagrams: u64,
    /// Of those, how many waited a millisecond or more for the CPU.
    pub cpu_datagrams_waited: u64,
    /// Wait for the CPU over every datagram a supernode handled (ms).
    pub cpu_queue_delay_ms_p99: u64,
    pub cpu_queue_delay_ms_max: f64,
    /// Dropped at a full backlog (`cpu_backlog_max` waiting already).
    pub cpu_dropped: u64,
    /// The same by message kind: which traffic overran a backlog.
    pub cpu_dropped_by_kind: std::collections::BTreeMap<String, u64>,
    /// The most CPU work any supernode was given in one sample interval,
    /// as a share of the interval (above 1: its queue grew).
    pub cpu_load_max_ratio: f64,
    /// The `accounts` scenario's name figures (zero elsewhere).
    #[serde(flatten)]
    pub names: crate::world::NameFigures,
    /// The `accounts` scenario's key bundle figures (zero elsewhere).
    #[serde(flatten)]
    pub bundles: crate::world::BundleFigures,
    pub digest: String,
    pub params: Params,
    /// Protocol parameters that differ from production, and why.
    pub sim_overrides: Vec<(String, String)>,
    pub config: crate::config::SimConfig,
    pub checks: Vec<Check>,
    pub passed: bool,
    pub samples: Vec<crate::metrics::Sample>,
}

/// How long after `storm_at_s` the mailbox backlog took to come back near
/// its level before the outage.
/// The lowest `ratio` over the samples `keep` selects (1 when none).
fn min_ratio(
    samples: &[Sample],
    keep: impl Fn(&Sample) -> bool,
    ratio: impl Fn(&Sample) -> f64,
) -> f64 {
    samples
        .iter()
        .filter(|s| keep(s))
        .map(ratio)
        .fold(1.0, f64::min)
}

fn backlog_drain_s(samples: &[crate::metrics::Sample], storm_at_s: u64) -> f64 {
    let before = samples
        .iter()
        .rev()
        .find(|s| s.t_s < storm_at_s)
        .map_or(0, |s| s.mailbox_backlog);
    let after: Vec<&crate::metrics::Sample> =
        samples.iter().filter(|s| s.t_s >= storm_at_s).collect();
    let Some(peak_at) = after
        .iter()
        .enumerate()
        .max_by_key(|(i, s)| (s.mailbox_backlog, std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
    else {
        return 0.0;
    };
    let near = (before as f64 * 1.5).max(before as f64 + 50.0);
    let end = after.last().map_or(storm_at_s, |s| s.t_s);
    let drained = after[peak_at..]
        .iter()
        .find(|s| s.mailbox_backlog as f64 <= near)
        .map_or(end, |s| s.t_s);
    drained.saturating_sub(storm_at_s) as f64
}

/// A busy reason's key in `busy_by_reason`: its variant name.
fn busy_reason_key(reason: peerline_proto::BusyReason) -> String {
    format!("{reason:?}")
}

/// How many never-back clients the report names.
const NEVER_CLIENTS_LISTED: usize = 10;

/// " (nodes 12, 34; PEERLINE_SIM_TRACE=<node> follows one)", or nothing.
fn never_clients_hint(clients: &[u32]) -> String {
    if clients.is_empty() {
        return String::new();
    }
    let names: Vec<String> = clients.iter().map(u32::to_string).collect();
    format!(
        " (nodes {}; PEERLINE_SIM_TRACE=<node> follows one)",
        names.join(", ")
    )
}

/// Re-attach times after an outage, from the observer's records.
struct Reattach {
    affected: u64,
    ratio_within_deadline: f64,
    median_s: f64,
    p99_s: f64,
    never: u64,
}

impl Reattach {
    fn measure(world: &World, deadline_s: u64) -> Reattach {
        let deadline_ms = deadline_s * 1000;
        let done = &world.metrics.reattach_ms;
        let pending = world.reattach_still_pending_ms();
        // A client still waiting counts against the ratio once its deadline
        // has passed, and with its wait so far in the quantiles.
        let overdue = pending.iter().filter(|w| **w >= deadline_ms).count() as u64;
        let in_time = done.iter().filter(|ms| **ms as u64 <= deadline_ms).count() as u64;
        let decided = done.len() as u64 + overdue;
        let mut all: Vec<u32> = done.clone();
        all.extend(pending.iter().map(|w| (*w).min(u32::MAX as u64) as u32));
        all.sort_unstable();
        Reattach {
            affected: all.len() as u64,
            ratio_within_deadline: if decided == 0 {
                0.0
            } else {
                in_time as f64 / decided as f64
            },
            median_s: quantile(&all, 0.5) as f64 / 1000.0,
            p99_s: quantile(&all, 0.99) as f64 / 1000.0,
            never: pending.len() as u64,
        }
    }
}

/// The process's peak resident memory (bytes; 0 where `/proc` is missing).
pub fn peak_rss_bytes() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

/// The process's resident memory now (bytes; 0 where `/proc` is missing).
pub fn rss_bytes() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

fn proc_status_kb(field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
}

fn sim_overrides(params: &Params, config: &SimConfig) -> Vec<(String, String)> {
    let production = Params::default();
    let mut overrides = Vec::new();
    if params.id_puzzle_difficulty_bits != production.id_puzzle_difficulty_bits {
        overrides.push((
            "id_puzzle_difficulty_bits".to_string(),
            format!(
                "{} (production {}): solving cost only; verification is one hash either way",
                params.id_puzzle_difficulty_bits, production.id_puzzle_difficulty_bits
            ),
        ));
    }
    if params.membership_view_len_max != production.membership_view_len_max
        || params.membership_bucket_len_max != production.membership_bucket_len_max
    {
        overrides.push((
            "membership_view_len_max".to_string(),
            format!(
                "{} with {} per bucket (production {}): capped view forces iterative routing",
                params.membership_view_len_max,
                params.membership_bucket_len_max,
                production.membership_view_len_max
            ),
        ));
    }
    if config.scenario == Scenario::Accounts && config.bundle_publishes_per_min > 0.0 {
        let (sim, production) = (KDF_PARAMS_SIMULATION, KDF_PARAMS_PRODUCTION);
        overrides.push((
            "bundle_kdf".to_string(),
            format!(
                "Argon2id {} KiB × {} passes (production {} KiB × {}): the key bundles the \
                 simulated accounts seal; the whole path runs, only the stretching is cheap",
                sim.memory_kib, sim.iterations, production.memory_kib, production.iterations
            ),
        ));
    }
    overrides
}

impl Report {
    pub fn build(world: &World, wall_s: f64) -> Report {
        let config = world.config().clone();
        let metrics = &world.metrics;
        let completed = metrics.lookups_completed();
        let settle_from = config.duration_s.saturating_sub(config.settle_window_s);
        let attached_ratio_min = metrics
            .samples
            .iter()
            .filter(|s| s.t_s >= settle_from)
            .map(|s| s.attached_ratio())
            .fold(f64::INFINITY, f64::min);
        let attached_ratio_min = if attached_ratio_min.is_finite() {
            attached_ratio_min
        } else {
            0.0
        };
        let window: Vec<f64> = metrics
            .samples
            .iter()
            .filter(|s| s.t_s >= settle_from)
            .map(|s| s.attached_ratio())
            .collect();
        let attached_ratio_mean = window.iter().sum::<f64>() / window.len().max(1) as f64;
        let last = metrics.samples.last();
        let ok_lookups = metrics.lookups_ok;
        let fallbacks: u64 = metrics.lookup_hops.iter().skip(2).sum();
        let peak_rss = peak_rss_bytes();
        let nodes = config.clients as u64 + config.supernodes as u64;
        let reattach = Reattach::measure(world, config.reattach_deadline_s);
        let in_split = |s: &Sample| {
            s.t_s >= config.storm_at_s + 300 && s.t_s < config.storm_at_s + config.partition_s
        };
        let mut report = Report {
            scenario: config.scenario.name(),
            seed: config.seed,
            clients: config.clients,
            supernodes: config.supernodes,
            virtual_duration_s: config.duration_s,
            wall_s,
            events: metrics.events,
            threads: world.config().threads,
            windows: metrics.windows,
            windows_split: metrics.windows_split,
            events_per_s: metrics.events as f64 / wall_s.max(1e-9),
            peak_rss_bytes: peak_rss,
            state_bytes_per_node: peak_rss / nodes.max(1),
            crypto_mode: config.crypto,
            lookups_started: metrics.lookups_started,
            lookups_completed: completed,
            lookups_not_found: metrics.lookups_not_found,
            lookups_stale: metrics.lookups_stale,
            lookups_abandoned: metrics.lookups_abandoned,
            lookup_success_ratio: if completed == 0 {
                0.0
            } else {
                ok_lookups as f64 / completed as f64
            },
            lookup_hops_median: metrics.hops_quantile(0.5),
            lookup_hops_p99: metrics.hops_quantile(0.99),
            lookup_hops_histogram: metrics.lookup_hops.clone(),
            lookup_latency_ms_median: quantile(&metrics.lookup_latency_ms, 0.5),
            lookup_latency_ms_p99: quantile(&metrics.lookup_latency_ms, 0.99),
            lookup_fallback_ratio: if ok_lookups == 0 {
                0.0
            } else {
                fallbacks as f64 / ok_lookups as f64
            },
            attached_ratio_min,
            attached_ratio_mean,
            attached_ratio_final: last.map_or(0.0, |s| s.attached_ratio()),
            supernode_load_max_ratio: metrics
                .samples
                .iter()
                .map(|s| s.load_max_ratio)
                .fold(0.0, f64::max),
            supernodes_final: last.map_or(0, |s| s.supernodes),
            live_clients_final: last.map_or(0, |s| s.live_clients),
            promotions: metrics.promotions,
            promotions_unreachable: metrics.promotions_unreachable,
            demotions: metrics.demotions,
            crashes: metrics.crashes,
            graceful_leaves: metrics.graceful_leaves,
            graceful_leave_orphans: metrics.graceful_leave_orphans,
            datagrams_sent: metrics.sent,
            datagrams_delivered: metrics.delivered,
            datagrams_lost: metrics.lost,
            datagrams_dropped_dead: metrics.dropped_dead,
            datagrams_dropped_nat: metrics.dropped_nat,
            datagrams_by_kind: crate::metrics::named_tally(&metrics.delivered_by_kind),
            bytes_sent: metrics.bytes_sent,
            timers_fired: metrics.timers,
            malformed_seen: world.malformed_seen(),
            directory_records: world.stored_records(),
            membership_view_avg: world.average_view_len(),
            membership_changes: world.membership_changes(),
            members_refuted: world.members_refuted(),
            capacity_attachments: world.params().supernode_capacity_attachments as u64,
            naive: world.params().naive,
            outage_crashes: metrics.outage_crashes,
            reattach_affected: reattach.affected,
            reattach_ratio_within_300s: reattach.ratio_within_deadline,
            reattach_s_median: reattach.median_s,
            reattach_s_p99: reattach.p99_s,
            churn_reattach_count: metrics.churn_reattach_ms.len() as u64,
            churn_reattach_s_median: quantile(&metrics.churn_reattach_ms, 0.5) as f64 / 1000.0,
            churn_reattach_s_p99: quantile(&metrics.churn_reattach_ms, 0.99) as f64 / 1000.0,
            reattach_never: reattach.never,
            reattach_never_clients: world.reattach_still_pending_clients(NEVER_CLIENTS_LISTED),
            busy_answers: metrics.busy_answers,
            busy_by_reason: metrics
                .busy_by_reason
                .iter()
                .map(|(reason, n)| (busy_reason_key(*reason), *n))
                .collect(),
            busy_without_alternates: metrics.busy_without_alternates,
            supernode_over_capacity_events: metrics.over_capacity_events,
            messages_sent: metrics.messages_sent,
            messages_refused: metrics.messages_refused,
            messages_delivered: metrics.messages_delivered,
            messages_lost: metrics.messages_lost,
            messages_duplicated: metrics.messages_duplicated,
            messages_out_of_order: metrics.messages_out_of_order,
            messages_delivered_ratio: {
                let (sent, delivered) = world.deliverable_messages(120);
                if sent == 0 {
                    0.0
                } else {
                    delivered as f64 / sent as f64
                }
            },
            mailbox_backlog_max: metrics
                .samples
                .iter()
                .map(|s| s.mailbox_backlog)
                .max()
                .unwrap_or(0),
            mailbox_held_max: metrics
                .samples
                .iter()
                .map(|s| s.mailbox_held)
                .max()
                .unwrap_or(0),
            backlog_drain_s: backlog_drain_s(&metrics.samples, config.storm_at_s),
            attached_ratio_min_after_outage: min_ratio(
                &metrics.samples,
                |s| s.t_s >= config.storm_at_s,
                Sample::attached_ratio,
            ),
            attached_ratio_partition_min: min_ratio(
                &metrics.samples,
                in_split,
                Sample::attached_ratio_net_of_churn,
            ),
            attached_ratio_partition_min_raw: min_ratio(
                &metrics.samples,
                in_split,
                Sample::attached_ratio,
            ),
            lookups_after_heal: metrics.lookups_after_heal,
            lookup_success_after_heal: if metrics.lookups_after_heal == 0 {
                0.0
            } else {
                metrics.lookups_after_heal_ok as f64 / metrics.lookups_after_heal as f64
            },
            datagrams_dropped_partition: metrics.dropped_partition,
            cpu_model: config.cpu_model,
            cpu_costs: world.cpu_costs().map(|costs| *costs.calibration()),
            cpu_datagrams: metrics.cpu_delay.count(),
            cpu_datagrams_waited: metrics.cpu_delay.delayed(),
            cpu_queue_delay_ms_p99: metrics.cpu_delay.quantile_ms(0.99),
            cpu_queue_delay_ms_max: metrics.cpu_delay.max_us as f64 / 1000.0,
            cpu_dropped: metrics.cpu_dropped,
            cpu_dropped_by_kind: crate::metrics::named_tally(&metrics.cpu_dropped_by_kind),
            cpu_load_max_ratio: metrics
                .samples
                .iter()
                .map(|s| s.cpu_load_max_ratio)
                .fold(0.0, f64::max),
            names: world.name_figures(),
            bundles: world.bundle_figures(),
            digest: metrics.digest.clone(),
            params: world.params().clone(),
            sim_overrides: sim_overrides(world.params(), &config),
            config,
            checks: Vec::new(),
            passed: false,
            samples: metrics.samples.clone(),
        };
        report.checks = report.figure_checks();
        report.passed = report.checks.iter().all(|c| c.ok);
        report
    }

    /// The figures the overlay must reach, each with a minimum of work done
    /// so that an idle network cannot pass.
    fn figure_checks(&self) -> Vec<Check> {
        if self.config.scenario == Scenario::Accounts {
            return self.accounts_checks();
        }
        if self.config.scenario.is_outage() {
            return self.outage_checks();
        }
        self.steady_checks()
    }

    /// Issue #3's figures for the outage scenarios.
    fn outage_checks(&self) -> Vec<Check> {
        let min_affected = (self.clients as f64 * 0.1).max(1.0);
        let min_messages = (self.config.messages_per_s * 60.0).max(1.0);
        let mut checks = vec![
            Check {
                name: "messages_delivered",
                ok: self.messages_delivered as f64 >= min_messages,
                value: self.messages_delivered as f64,
                bound: format!(">= {min_messages:.0} (messages must flow)"),
            },
            Check {
                name: "messages_lost",
                ok: self.messages_lost == 0,
                value: self.messages_lost as f64,
                bound: "= 0 (acknowledged but never delivered)".into(),
            },
            Check {
                name: "messages_duplicated",
                ok: self.messages_duplicated == 0,
                value: self.messages_duplicated as f64,
                bound: "= 0".into(),
            },
            Check {
                name: "messages_out_of_order",
                ok: self.messages_out_of_order == 0,
                value: self.messages_out_of_order as f64,
                bound: "= 0".into(),
            },
            Check {
                name: "messages_delivered_ratio",
                ok: self.messages_delivered_ratio >= 0.999,
                value: self.messages_delivered_ratio,
                bound: ">= 0.999 (to devices online at the end)".into(),
            },
            Check {
                name: "supernode_over_capacity_events",
                ok: self.supernode_over_capacity_events == 0,
                value: self.supernode_over_capacity_events as f64,
                bound: "= 0".into(),
            },
        ];
        let affected = Check {
            name: "reattach_affected",
            ok: self.reattach_affected as f64 >= min_affected,
            value: self.reattach_affected as f64,
            bound: format!(">= {min_affected:.0} (the outage must hit enough clients)"),
        };
        match self.config.scenario {
            Scenario::RestartStorm => checks.extend([
                affected,
                Check {
                    name: "reattach_ratio_within_300s",
                    ok: self.reattach_ratio_within_300s >= 0.999,
                    value: self.reattach_ratio_within_300s,
                    bound: ">= 0.999".into(),
                },
            ]),
            Scenario::Partition => {
                let min_lookups = (self.config.lookups_per_s * 30.0).max(10.0);
                checks.extend([
                    Check {
                        name: "attached_ratio_partition_min",
                        ok: self.attached_ratio_partition_min >= 0.99,
                        value: self.attached_ratio_partition_min,
                        bound: ">= 0.99 (each side keeps working, from 5 minutes into the split; clients whose supernode crashed in ordinary churn in the last minute are not counted: churn_reattach_s_p99 times them)"
                            .into(),
                    },
                    Check {
                        name: "lookups_after_heal",
                        ok: self.lookups_after_heal as f64 >= min_lookups,
                        value: self.lookups_after_heal as f64,
                        bound: format!(">= {min_lookups:.0}"),
                    },
                    Check {
                        name: "lookup_success_after_heal",
                        ok: self.lookup_success_after_heal >= 0.99,
                        value: self.lookup_success_after_heal,
                        bound: ">= 0.99 (presence converged across the healed cut)".into(),
                    },
                ]);
            }
            _ => {
                checks.push(affected);
                checks.push(Check {
                    name: "reattach_s_p99",
                    ok: self.reattach_s_p99 <= 120.0,
                    value: self.reattach_s_p99,
                    bound: "<= 120".into(),
                });
                checks.push(Check {
                    name: "backlog_drain_s",
                    ok: self.backlog_drain_s <= 900.0,
                    value: self.backlog_drain_s,
                    bound: "<= 900".into(),
                });
            }
        }
        checks
    }

    /// Issue #5's name figures: every contested name ends with exactly one
    /// owner, seen the same everywhere, and none is lost.
    fn accounts_checks(&self) -> Vec<Check> {
        let names = &self.names;
        // Contests run from the clients' ramp to the final check.
        let window_s = self.virtual_duration_s.saturating_sub(
            self.config.supernode_ramp_s
                + self.config.join_ramp_s
                + 60
                + self.config.names_stop_before_end_s,
        );
        let min_contests = (self.config.contests_per_min * window_s as f64 / 60.0 * 0.8).max(1.0);
        let mut checks = vec![
            Check {
                name: "names_contested",
                ok: names.names_contested as f64 >= min_contests,
                value: names.names_contested as f64,
                bound: format!(">= {min_contests:.0} (contested registrations must happen)"),
            },
            Check {
                name: "names_registered",
                ok: names.names_registered as f64 >= 0.95 * names.names_contested as f64
                    && names.names_registered > 0,
                value: names.names_registered as f64,
                bound: ">= 0.95 of the contested names".into(),
            },
            Check {
                name: "names_duplicated",
                ok: names.names_duplicated == 0,
                value: names.names_duplicated as f64,
                bound: "= 0 (one owner, the same from every client)".into(),
            },
            Check {
                name: "names_unresolved",
                ok: names.names_unresolved == 0,
                value: names.names_unresolved as f64,
                bound: "= 0".into(),
            },
            Check {
                name: "name_records_lost",
                ok: names.name_records_lost == 0,
                value: names.name_records_lost as f64,
                bound: "= 0".into(),
            },
            Check {
                name: "revocations",
                ok: self.config.revocations_per_min <= 0.0 || names.revocations > 0,
                value: names.revocations as f64,
                bound: "> 0 (devices must be revoked)".into(),
            },
            Check {
                name: "revocation_spread_s_p99",
                ok: names.revocations_unfinished == 0 && names.revocation_spread_s_p99 <= 60.0,
                value: names.revocation_spread_s_p99,
                bound: "<= 60, and every revocation refused by every live supernode".into(),
            },
            Check {
                name: "names_targeted",
                ok: self.config.attackers == 0 || names.names_targeted > 0,
                value: names.names_targeted as f64,
                bound: "> 0 with an attacker (the ID-grinding case must happen)".into(),
            },
        ];
        if self.bundles.key_bundles_simulated {
            checks.extend(self.bundle_checks(window_s));
        }
        checks
    }

    /// Issue #5's key bundle figures: no bundle lost, no wrong password
    /// ever opens one, and enough logins happened — after the heal and
    /// after the crash wave too.
    fn bundle_checks(&self, window_s: u64) -> Vec<Check> {
        let bundles = &self.bundles;
        let window_min = window_s as f64 / 60.0;
        let min_published = (self.config.bundle_publishes_per_min * window_min * 0.5).max(1.0);
        let min_logins = (self.config.bundle_logins_per_min * window_min * 0.5).max(1.0);
        let wrong = bundles.bundle_logins_wrong_password;
        vec![
            Check {
                name: "key_bundles_published",
                ok: bundles.key_bundles_published as f64 >= min_published,
                value: bundles.key_bundles_published as f64,
                bound: format!(">= {min_published:.0} (accounts must publish bundles)"),
            },
            Check {
                name: "key_bundles_lost",
                ok: bundles.key_bundles_lost == 0,
                value: bundles.key_bundles_lost as f64,
                bound: "= 0 (the right password opens every account at the end)".into(),
            },
            Check {
                name: "bundle_logins",
                ok: bundles.bundle_logins as f64 >= min_logins
                    && bundles.bundle_logins_ok_after_heal > 0
                    && bundles.bundle_logins_ok_after_crash > 0,
                value: bundles.bundle_logins as f64,
                bound: format!(
                    ">= {min_logins:.0}, some opened after the heal and some after the crash wave"
                ),
            },
            Check {
                name: "bundle_logins_wrong_password_opened",
                ok: bundles.bundle_logins_wrong_password_opened == 0
                    && bundles.bundle_logins_right_password_refused == 0,
                value: bundles.bundle_logins_wrong_password_opened as f64,
                bound: "= 0, and no right password told wrong".into(),
            },
            Check {
                name: "bundle_logins_wrong_password_refused",
                ok: wrong > 0 && bundles.bundle_logins_wrong_password_refused > 0,
                value: bundles.bundle_logins_wrong_password_refused as f64,
                bound: format!("> 0 of the {wrong} wrong-password logins"),
            },
        ]
    }

    fn steady_checks(&self) -> Vec<Check> {
        let min_lookups = (self.config.lookups_per_s * 60.0).clamp(10.0, 10_000.0);
        vec![
            Check {
                name: "lookups_completed",
                ok: self.lookups_completed as f64 >= min_lookups,
                value: self.lookups_completed as f64,
                bound: format!(">= {min_lookups:.0}"),
            },
            Check {
                name: "lookup_success_ratio",
                ok: self.lookup_success_ratio >= 0.999,
                value: self.lookup_success_ratio,
                bound: ">= 0.999".into(),
            },
            Check {
                name: "lookup_hops_median",
                ok: self.lookup_hops_median <= 1,
                value: self.lookup_hops_median as f64,
                bound: "<= 1".into(),
            },
            Check {
                name: "lookup_hops_p99",
                ok: self.lookup_hops_p99 <= 3,
                value: self.lookup_hops_p99 as f64,
                bound: "<= 3".into(),
            },
            Check {
                name: "attached_ratio_min",
                ok: self.attached_ratio_min >= 0.999
                    && self.live_clients_final as f64 >= 0.5 * self.clients as f64,
                value: self.attached_ratio_min,
                bound: ">= 0.999 (with at least half the clients live)".into(),
            },
            Check {
                name: "promotions_unreachable",
                ok: self.promotions_unreachable == 0,
                value: self.promotions_unreachable as f64,
                bound: "= 0".into(),
            },
            Check {
                name: "supernode_load_max_ratio",
                ok: self.supernode_load_max_ratio <= 1.0,
                value: self.supernode_load_max_ratio,
                bound: "<= 1.0".into(),
            },
        ]
    }

    pub fn summary(&self) -> String {
        let mut out = String::new();
        out += &format!(
            "scenario {} · seed {} · {} clients + {} supernodes · {} s virtual in {:.1} s wall\n",
            self.scenario,
            self.seed,
            self.clients,
            self.supernodes,
            self.virtual_duration_s,
            self.wall_s
        );
        out += &format!(
            "events {} ({:.0}/s) · peak RSS {:.2} GiB ({} B/node) · crypto {:?}\n",
            self.events,
            self.events_per_s,
            self.peak_rss_bytes as f64 / (1u64 << 30) as f64,
            self.state_bytes_per_node,
            self.crypto_mode
        );
        out += &format!(
            "lookups {} ok {:.4} · hops median {} p99 {} · latency median {} ms p99 {} ms · fallback {:.3}\n",
            self.lookups_completed,
            self.lookup_success_ratio,
            self.lookup_hops_median,
            self.lookup_hops_p99,
            self.lookup_latency_ms_median,
            self.lookup_latency_ms_p99,
            self.lookup_fallback_ratio
        );
        out += &format!(
            "attached(>=2) min {:.5} mean {:.5} final {:.5} · supernodes {} (promoted {}, demoted {}) · max load {:.2} of capacity\n",
            self.attached_ratio_min,
            self.attached_ratio_mean,
            self.attached_ratio_final,
            self.supernodes_final,
            self.promotions,
            self.demotions,
            self.supernode_load_max_ratio
        );
        out += &format!(
            "churn: {} crashes, {} graceful leaves ({} clients left below two) · datagrams {} sent, {} lost, {} to dead nodes, {} NAT-filtered\n",
            self.crashes, self.graceful_leaves, self.graceful_leave_orphans, self.datagrams_sent, self.datagrams_lost, self.datagrams_dropped_dead, self.datagrams_dropped_nat
        );
        if self.config.scenario.is_outage() {
            out += &format!(
                "outage{}: {} nodes down · {} clients knocked below 2 attachments · back within 300 s {:.5} · median {:.1} s p99 {:.1} s · never {}{} · busy answers {} ({} login budget, {} without alternates) · over-capacity events {} · capacity {}\n",
                if self.naive { " (naive baseline)" } else { "" },
                self.outage_crashes,
                self.reattach_affected,
                self.reattach_ratio_within_300s,
                self.reattach_s_median,
                self.reattach_s_p99,
                self.reattach_never,
                never_clients_hint(&self.reattach_never_clients),
                self.busy_answers,
                self.busy_by_reason
                    .get(&busy_reason_key(peerline_proto::BusyReason::HandshakesFull))
                    .copied()
                    .unwrap_or(0),
                self.busy_without_alternates,
                self.supernode_over_capacity_events,
                self.capacity_attachments
            );
            out += &format!(
                "messages: {} sent, {} delivered ({:.5} of those to devices online at the end), {} lost, {} duplicated, {} out of order · mailbox backlog max {} · drained {:.0} s after the outage\n",
                self.messages_sent,
                self.messages_delivered,
                self.messages_delivered_ratio,
                self.messages_lost,
                self.messages_duplicated,
                self.messages_out_of_order,
                self.mailbox_backlog_max,
                self.backlog_drain_s
            );
        }
        if self.config.scenario == Scenario::Accounts {
            let n = &self.names;
            out += &format!(
                "names: {} contested ({} targeted by the attacker's {} supernodes) · {} registered · duplicated {} · unresolved {} · records lost {} · both told registered {} ({} outside the partition) · owner not told {} · registration p50 {} ms p99 {} ms · claims without answer {} · final lookups failed {}\nrevocations: {} · refused by every live supernode after p50 {:.2} s p99 {:.2} s max {:.2} s · not everywhere within 300 s {}\n",
                n.names_contested,
                n.names_targeted,
                self.config.attackers,
                n.names_registered,
                n.names_duplicated,
                n.names_unresolved,
                n.name_records_lost,
                n.names_double_certified,
                n.names_double_certified_outside_partition,
                n.names_owner_not_told,
                n.name_registration_ms_p50,
                n.name_registration_ms_p99,
                n.name_claims_failed,
                n.name_lookups_failed,
                n.revocations,
                n.revocation_spread_s_p50,
                n.revocation_spread_s_p99,
                n.revocation_spread_s_max,
                n.revocations_unfinished
            );
            let b = &self.bundles;
            if b.key_bundles_simulated {
                out += &format!(
                    "key bundles: {} published ({} with an index unheld, {} failed) · lost {} · {} logins: {} opened (p50 {} ms p99 {} ms; {} after the heal, {} after the crash wave), right password unavailable {} refused {} no answer {} told wrong {} · wrong password {}: refused as wrong {}, opened {}\n",
                    b.key_bundles_published,
                    b.key_bundles_published_short,
                    b.key_bundles_publish_failed,
                    b.key_bundles_lost,
                    b.bundle_logins,
                    b.bundle_logins_ok,
                    b.bundle_login_ms_p50,
                    b.bundle_login_ms_p99,
                    b.bundle_logins_ok_after_heal,
                    b.bundle_logins_ok_after_crash,
                    b.bundle_logins_unavailable,
                    b.bundle_logins_refused,
                    b.bundle_logins_no_answer,
                    b.bundle_logins_right_password_refused,
                    b.bundle_logins_wrong_password,
                    b.bundle_logins_wrong_password_refused,
                    b.bundle_logins_wrong_password_opened
                );
            } else {
                out += "key bundles: not simulated (they need full crypto and at least 7 supernodes)\n";
            }
        }
        if self.cpu_model == CpuModel::Measured {
            out += &format!(
                "supernode CPU (measured costs × {}): busiest {:.2} of a core in a {} s sample · {} of {} datagrams waited >= 1 ms · wait p99 {} ms max {:.0} ms · {} dropped at the {}-datagram backlog\n",
                self.config.cpu_cost_factor,
                self.cpu_load_max_ratio,
                self.config.sample_interval_s,
                self.cpu_datagrams_waited,
                self.cpu_datagrams,
                self.cpu_queue_delay_ms_p99,
                self.cpu_queue_delay_ms_max,
                self.cpu_dropped,
                self.config.cpu_backlog_max
            );
        }
        for check in &self.checks {
            out += &format!(
                "  [{}] {} = {} (want {})\n",
                if check.ok { "ok" } else { "FAIL" },
                check.name,
                check.value,
                check.bound
            );
        }
        out += &format!("digest {}\n", self.digest);
        out
    }
}
