//! What a simulation run is: scenario, scale, seed and network model knobs.

use peerline_core::{CryptoMode, Params};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Joins, churn and lookups at a steady population.
    Steady,
    /// The 2007 login storm: a fraction of all nodes, supernodes included,
    /// reboot within a few minutes of each other.
    RestartStorm,
    /// The 2010 crash wave: a fraction of the supernodes die at once and
    /// stay down; every orphaned client re-attaches.
    SupernodeCrash,
    /// The Americas are cut off from the rest of the world for a while,
    /// then the link heals.
    Partition,
    /// Contested name registrations all through churn, a partition and a
    /// supernode crash wave, against an attacker with supernodes next to
    /// the names it targets.
    Accounts,
}

impl Scenario {
    pub const ALL: [(&'static str, Scenario); 5] = [
        ("steady", Scenario::Steady),
        ("restart-storm", Scenario::RestartStorm),
        ("supernode-crash", Scenario::SupernodeCrash),
        ("partition", Scenario::Partition),
        ("accounts", Scenario::Accounts),
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::RestartStorm => "restart-storm",
            Scenario::SupernodeCrash => "supernode-crash",
            Scenario::Partition => "partition",
            Scenario::Accounts => "accounts",
        }
    }

    /// True for the outage scenarios (a storm at `storm_at_s`).
    pub fn is_outage(&self) -> bool {
        !matches!(self, Scenario::Steady)
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
    }
}

/// Whether supernodes pay CPU time for the datagrams they handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuModel {
    /// Service times measured on the real driver (`crate::cpu::MEASURED`),
    /// a FIFO queue per supernode bounded by `cpu_backlog_max`.
    Measured,
    /// Every datagram handled instantly (the simulator before the
    /// calibration: reproduces its figures and digests).
    Off,
}

#[derive(Clone, Debug, Serialize)]
pub struct SimConfig {
    pub scenario: Scenario,
    pub clients: u32,
    pub supernodes: u32,
    pub seed: u64,
    pub duration_s: u64,
    pub crypto: CryptoMode,
    /// Fraction of live nodes that leave per hour (each comes back later).
    pub churn_per_hour: f64,
    /// Mean time a churned node stays away.
    pub offline_mean_s: f64,
    /// Of the nodes that leave, the fraction that say goodbye (the rest crash).
    pub graceful_leave_fraction: f64,
    /// Directory lookups started per second across the network.
    pub lookups_per_s: f64,
    /// Clients join uniformly over this many seconds after the supernodes.
    pub join_ramp_s: u64,
    /// Supernodes join over this many seconds at the start.
    pub supernode_ramp_s: u64,
    /// Random packet loss on every link.
    pub loss_rate: f64,
    /// Fraction of clients with a public address (candidates for promotion).
    pub public_client_fraction: f64,
    /// Largest clock offset of a node, either way.
    pub clock_offset_max_s: u64,
    /// Largest clock drift, either way, in parts per million.
    pub clock_drift_max_ppm: u32,
    /// Seed supernodes each client ships with.
    pub bootstrap_contacts: usize,
    /// Sampling period of the metrics.
    pub sample_interval_s: u64,
    /// Window at the end of the run over which `attached_ratio_min` is taken.
    pub settle_window_s: u64,
    /// A lookup target must have been online this long.
    pub lookup_target_uptime_s: u64,
    /// Supernode attachment capacity as a multiple of the steady-state
    /// average (attachments target × clients / supernodes); `None` keeps the
    /// production default.
    pub capacity_factor: Option<f64>,
    /// Run the naive baseline (no admission control, fixed retries, no
    /// redirects or tickets, disconnect when overloaded).
    pub naive: bool,
    /// When the outage begins.
    pub storm_at_s: u64,
    /// Fraction of nodes restarted (restart-storm: of all nodes) or of
    /// supernodes crashed (supernode-crash).
    pub storm_fraction: f64,
    /// Restarts are spread uniformly over this window.
    pub storm_spread_s: u64,
    /// A restarted node is back after a uniform delay in this range (s).
    pub reboot_s: (u64, u64),
    /// A crashed supernode stays down this long.
    pub crash_down_s: u64,
    /// How long a partition lasts.
    pub partition_s: u64,
    /// Deadline for a client to be back at two supernodes after its outage.
    pub reattach_deadline_s: u64,
    /// Messages sent per second across the network (random sender and
    /// recipient, online or not).
    pub messages_per_s: f64,
    /// No new messages in the last this many seconds, so the delivery ratio
    /// counts only messages that had time to arrive.
    pub messages_quiet_end_s: u64,
    /// Supernode CPU model.
    pub cpu_model: CpuModel,
    /// Datagrams that may wait for a supernode's CPU; more are dropped.
    /// The real driver's bound on frames waiting for its node
    /// (`LinkLimits::inbound_frames_max`).
    pub cpu_backlog_max: u32,
    /// Every measured service time is multiplied by this: a supernode host
    /// this many times slower than the calibration machine.
    pub cpu_cost_factor: f64,
    /// Threads that run the nodes' events (`world/batch.rs`). Changes the
    /// wall time only: every thread count gives the same run and digest.
    /// 1 unless asked (`peerline sim` asks for the machine's cores): tests
    /// running side by side should not compete for cores.
    pub threads: usize,
    /// Windows with fewer node events run on one thread (handing them out
    /// costs more than it saves). Tests lower it to split every window.
    pub window_split_min: usize,
    /// `accounts`: supernodes of the attacker (one /24, equivocating), contested
    /// names started per minute, when the final lookups run (before the
    /// end), and how long after the partition heals the crash wave comes.
    pub attackers: u32,
    pub contests_per_min: f64,
    pub names_check_before_end_s: u64,
    /// No new contest this close to the end (a split vote needs the vote
    /// hold and a retry to be decided again before the final lookups).
    pub names_stop_before_end_s: u64,
    /// Devices revoked per minute (`accounts`).
    pub revocations_per_min: f64,
    pub accounts_crash_after_heal_s: u64,
    /// `accounts`: key bundles published, and new-device password logins
    /// started, per minute (full crypto and at least 7 supernodes only).
    pub bundle_publishes_per_min: f64,
    pub bundle_logins_per_min: f64,
    /// Protocol parameters (production defaults, plus the overrides listed in the report).
    #[serde(skip)]
    pub params: Params,
}

/// More threads than this would only wait on each other.
pub const THREADS_MAX: usize = 64;

/// The machine's cores (the simulator's default thread count).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(THREADS_MAX)
}

impl SimConfig {
    pub fn new(scenario: Scenario, clients: u32, supernodes: u32, seed: u64) -> SimConfig {
        let nodes = clients as u64 + supernodes as u64;
        // The one cost parameter the simulator lowers: solving the ID puzzle
        // at production difficulty for thousands of supernodes would take
        // hours of CPU and changes no protocol behaviour (verification costs
        // one hash either way). Listed under `sim_overrides` in the report.
        let params = Params {
            id_puzzle_difficulty_bits: 8,
            ..Params::default()
        };
        SimConfig {
            scenario,
            clients,
            supernodes,
            seed,
            // A partition heals at minute 26: give the queued mail time to
            // flow (accounts: the crash wave comes 5 minutes later, and
            // records need time to move).
            duration_s: match scenario {
                Scenario::Partition => 2400,
                Scenario::Accounts => 3000,
                _ => 1800,
            },
            crypto: if nodes <= 20_000 {
                CryptoMode::Full
            } else {
                CryptoMode::Modelled
            },
            churn_per_hour: 0.10,
            offline_mean_s: 600.0,
            graceful_leave_fraction: 0.5,
            lookups_per_s: (clients as f64 / 1000.0).max(2.0),
            join_ramp_s: 300,
            supernode_ramp_s: 30,
            loss_rate: 0.002,
            public_client_fraction: 0.25,
            clock_offset_max_s: 180,
            clock_drift_max_ppm: 100,
            bootstrap_contacts: 16,
            sample_interval_s: 5,
            settle_window_s: 600,
            lookup_target_uptime_s: 60,
            capacity_factor: (scenario.is_outage() && scenario != Scenario::Accounts)
                .then_some(1.25),
            naive: false,
            storm_at_s: 960,
            storm_fraction: match scenario {
                Scenario::RestartStorm => 0.6,
                _ => 0.4,
            },
            storm_spread_s: match scenario {
                Scenario::RestartStorm => 600,
                _ => 0,
            },
            reboot_s: (20, 120),
            crash_down_s: 3_600,
            partition_s: 600,
            reattach_deadline_s: 300,
            messages_per_s: if scenario.is_outage() && scenario != Scenario::Accounts {
                (clients as f64 / 1000.0).max(2.0)
            } else {
                0.0
            },
            messages_quiet_end_s: 300,
            cpu_model: CpuModel::Measured,
            cpu_backlog_max: 4_096,
            cpu_cost_factor: 1.0,
            threads: 1,
            window_split_min: 48,
            attackers: if scenario == Scenario::Accounts { 8 } else { 0 },
            contests_per_min: 30.0,
            names_check_before_end_s: 180,
            names_stop_before_end_s: 780,
            revocations_per_min: if scenario == Scenario::Accounts {
                2.0
            } else {
                0.0
            },
            accounts_crash_after_heal_s: 300,
            bundle_publishes_per_min: if scenario == Scenario::Accounts {
                6.0
            } else {
                0.0
            },
            bundle_logins_per_min: if scenario == Scenario::Accounts {
                12.0
            } else {
                0.0
            },
            params,
        }
    }

    /// The protocol parameters the nodes run with: the configured ones,
    /// with the capacity the scenario fixes and the naive switch applied.
    pub fn effective_params(&self) -> Params {
        let mut params = self.params.clone();
        if let Some(factor) = self.capacity_factor {
            let average = params.attachments_target as f64 * self.clients as f64
                / self.supernodes.max(1) as f64;
            params.supernode_capacity_attachments = (factor * average).ceil().max(1.0) as usize;
        }
        params.naive = self.naive;
        params
    }

    /// Checks the knobs make sense; the error is one sentence for the user.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=THREADS_MAX).contains(&self.threads) {
            return Err(format!("--threads must be between 1 and {THREADS_MAX}"));
        }
        if self.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        if self.supernodes < 2 {
            return Err("--supernodes must be at least 2 (clients attach to two at once)".into());
        }
        if self.clients as u64 + self.supernodes as u64 > 16_000_000 {
            return Err("at most 16,000,000 nodes fit the simulator's address plan".into());
        }
        if self.duration_s < 60 {
            return Err("--duration must be at least 1m".into());
        }
        if !(0.0..1.0).contains(&self.loss_rate) {
            return Err("loss rate must be in [0, 1)".into());
        }
        if let Some(factor) = self.capacity_factor {
            if !(factor.is_finite() && factor >= 1.0) {
                return Err("--capacity-factor must be at least 1.0".into());
            }
        }
        if self.cpu_backlog_max == 0 {
            return Err("--cpu-backlog must be at least 1".into());
        }
        if !(self.cpu_cost_factor.is_finite() && self.cpu_cost_factor > 0.0) {
            return Err("--cpu-cost-factor must be a positive number".into());
        }
        if !(self.storm_fraction > 0.0 && self.storm_fraction <= 1.0) {
            return Err("--fraction must be in (0, 1]".into());
        }
        if self.scenario.is_outage() && self.storm_at_s + 60 > self.duration_s {
            return Err(format!(
                "--duration must leave at least a minute after the outage at {} s",
                self.storm_at_s
            ));
        }
        Ok(())
    }
}
