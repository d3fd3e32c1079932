//! `relay-bench`: relay throughput on loopback (issue #4). One traffic
//! generator offers the same loads, one after another, to a plain tokio
//! UDP forwarder (the practical limit), a peerline supernode's relay and
//! coturn, and reports delivered packets/s, loss and one-way latency for
//! each, side by side, with the ratios peerline/plain and peerline/coturn.
//! `bench/relay.sh` installs and starts coturn, builds this in release and
//! runs it; see `bench/README.md`.
//!
//! **Why a crate of its own** rather than an example of `peerline-net`:
//! the TURN client it needs (`turn-client-proto`) and the generator have
//! nothing to do with the driver, and an example's dependencies would be
//! `peerline-net`'s dev-dependencies, built by every test of that crate.
//! Here they stay out of it; and a benchmark is a program with its own
//! flags, not a sample of the library's use.
//!
//! Steps run in the order payload size → offered load → relay (rotated at
//! each load), so the three relays at one load are measured within seconds
//! of each other.
//! Each step sets its relay up afresh between new sockets A and B, sends
//! for `--step-ms`, waits [`DRAIN`] for late datagrams, and tears down.

mod generator;
mod procfs;
mod relays;
mod report;

use anyhow::{bail, Context};
use clap::Parser;
use generator::{Route, Step, STAMP_LEN, STEP_DATAGRAMS_MAX};
use relays::coturn::TurnServer;
use relays::{Relay, RelayKind, RELAY_THREAD};
use report::{Header, Row};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// How long the receiver keeps counting after the last datagram is sent.
const DRAIN: Duration = Duration::from_millis(300);
/// Before each step, wait (in [`QUIET_PROBE`] samples) until other
/// processes use at most this many cores — another build on the machine
/// would take cores from the relay — for at most `--quiet-wait-s` per step
/// and [`QUIET_WAIT_TOTAL`] in all; a step run anyway is marked.
const QUIET_CORES_MAX: f64 = report::DISTURBED_CORES_MIN;
const QUIET_PROBE: Duration = Duration::from_millis(500);
const QUIET_WAIT_TOTAL: Duration = Duration::from_secs(120);
/// B's receive buffer: large, so that B's losses are rare and apart.
const RECEIVER_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Bounds on the flags.
const RATE_PER_S_MAX: u64 = 2_000_000;
const STEP_MS_MAX: u64 = 60_000;
const STEPS_MAX: usize = 400;
const REPEATS_MAX: u32 = 10;
const PAYLOAD_LEN_MAX: usize = peerline_net::relay::PAYLOAD_LEN_MAX;

#[derive(Parser, Debug)]
#[command(
    name = "relay-bench",
    about = "Relay throughput on loopback: plain forwarder, peerline relay and coturn under the same offered loads"
)]
struct Args {
    /// Offered loads in datagrams per second, in the order run.
    #[arg(long, value_delimiter = ',', default_values_t = [50_000u64, 75_000, 100_000, 125_000, 150_000, 200_000])]
    rates_per_s: Vec<u64>,
    /// Payload sizes in bytes (the relays add their header, 0 or 4 bytes).
    #[arg(long, value_delimiter = ',', default_values_t = [170usize, 1_200])]
    payload_bytes: Vec<usize>,
    /// How long each step sends.
    #[arg(long, default_value_t = 1_500)]
    step_ms: u64,
    /// Runs of each step (interleaved across the relays); the report keeps
    /// each relay's run with the least loss, which filters out the moments
    /// the scheduler left a relay without a core for tens of milliseconds.
    #[arg(long, default_value_t = 2)]
    repeats: u32,
    /// Relays to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [RelayKind::Plain, RelayKind::Peerline, RelayKind::Coturn])]
    relays: Vec<RelayKind>,
    /// The TURN server (coturn) to allocate on; needed for `coturn`.
    #[arg(long)]
    turn_server: Option<SocketAddr>,
    #[arg(long, default_value = "bench")]
    turn_username: String,
    #[arg(long, default_value = "bench")]
    turn_password: String,
    /// coturn's process id, for its CPU time.
    #[arg(long)]
    turn_pid: Option<u32>,
    /// Receive and send buffer of the plain and peerline relays' sockets
    /// (coturn sets 2 MiB on its own; 0 leaves the kernel's default, as a
    /// peerline node does today).
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    relay_socket_buffer_bytes: usize,
    /// Longest wait before a step for the rest of the machine to be quiet
    /// (0: do not wait).
    #[arg(long, default_value_t = 15)]
    quiet_wait_s: u64,
    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The command to print in the report (bench/relay.sh passes its own).
    #[arg(long)]
    command: Option<String>,
    /// A line to add under the report's header (repeatable).
    #[arg(long)]
    note: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("relay-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: &Args) -> anyhow::Result<Option<TurnServer>> {
    if args.rates_per_s.is_empty() || args.payload_bytes.is_empty() || args.relays.is_empty() {
        bail!("--rates-per-s, --payload-bytes and --relays each need at least one value");
    }
    if let Some(rate) = args
        .rates_per_s
        .iter()
        .find(|&&r| r == 0 || r > RATE_PER_S_MAX)
    {
        bail!("offered load {rate}/s is outside 1..={RATE_PER_S_MAX}");
    }
    if let Some(len) = args
        .payload_bytes
        .iter()
        .find(|&&len| !(STAMP_LEN..=PAYLOAD_LEN_MAX).contains(&len))
    {
        bail!("payload of {len} bytes is outside {STAMP_LEN}..={PAYLOAD_LEN_MAX}");
    }
    if args.repeats == 0 || args.repeats > REPEATS_MAX {
        bail!("--repeats {} is outside 1..={REPEATS_MAX}", args.repeats);
    }
    if args.step_ms == 0 || args.step_ms > STEP_MS_MAX {
        bail!("--step-ms {} is outside 1..={STEP_MS_MAX}", args.step_ms);
    }
    let steps = args.rates_per_s.len()
        * args.payload_bytes.len()
        * args.relays.len()
        * args.repeats as usize;
    if steps > STEPS_MAX {
        bail!("{steps} steps is over the bound of {STEPS_MAX}; offer fewer loads");
    }
    let largest = args.rates_per_s.iter().max().copied().unwrap_or(0) * args.step_ms / 1_000;
    if largest > STEP_DATAGRAMS_MAX {
        bail!("a step of {largest} datagrams is over the bound of {STEP_DATAGRAMS_MAX}; shorten --step-ms");
    }
    if !args.relays.contains(&RelayKind::Coturn) {
        return Ok(None);
    }
    let Some(address) = args.turn_server else {
        bail!("the coturn relay needs --turn-server ADDR (bench/relay.sh starts coturn), or leave it out with --relays plain,peerline");
    };
    Ok(Some(TurnServer {
        address,
        username: args.turn_username.clone(),
        password: args.turn_password.clone(),
        pid: args.turn_pid,
    }))
}

/// The sockets, runtimes and clock every step shares.
struct Bench {
    relay_runtime: Runtime,
    generator_runtime: Runtime,
    epoch: Instant,
    turn: Option<TurnServer>,
    relay_socket_buffer_bytes: usize,
}

fn run(args: Args) -> anyhow::Result<()> {
    let turn = check(&args)?;
    let one_worker = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
    };
    let bench = Bench {
        relay_runtime: one_worker(RELAY_THREAD)?,
        generator_runtime: one_worker("generator-b")?,
        epoch: Instant::now(),
        turn,
        relay_socket_buffer_bytes: args.relay_socket_buffer_bytes,
    };
    let duration = Duration::from_millis(args.step_ms);
    let mut rows = Vec::new();
    let mut waited = Duration::ZERO;
    for &payload_len in &args.payload_bytes {
        for (load_index, &rate_per_s) in args.rates_per_s.iter().enumerate() {
            // Each load starts with the next relay, so none is always the
            // first after a pause or the last before one.
            let mut order = args.relays.clone();
            let first = load_index % order.len();
            order.rotate_left(first);
            let step = Step {
                rate_per_s,
                payload_len,
                duration,
            };
            let mut tries: Vec<Row> = Vec::new();
            for _ in 0..args.repeats {
                for &relay in &order {
                    let wait_max = Duration::from_secs(args.quiet_wait_s)
                        .min(QUIET_WAIT_TOTAL.saturating_sub(waited));
                    waited += bench.wait_for_quiet(wait_max);
                    let row = bench.run_step(relay, step).with_context(|| {
                        format!("{} at {rate_per_s}/s, {payload_len} B", relay.name())
                    })?;
                    eprintln!(
                        "{:>8} {:>5} B {:>9}/s offered: {:>9} delivered/s, loss {:>6.2}%",
                        relay.name(),
                        payload_len,
                        report::thousands(rate_per_s as f64),
                        report::thousands(row.delivered_per_s()),
                        row.loss() * 100.0
                    );
                    tries.push(row);
                }
            }
            for &relay in &order {
                let best = tries
                    .iter()
                    .filter(|row| row.relay == relay)
                    .min_by(|a, b| a.loss().total_cmp(&b.loss()))
                    .context("every relay ran")?;
                rows.push(best.clone());
            }
        }
    }
    let header = Header {
        date: report::date_utc(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
        ),
        machine: machine(),
        command: args
            .command
            .clone()
            .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
        notes: notes(&args, waited),
    };
    let text = report::markdown(&header, &rows);
    print!("{text}");
    if let Some(path) = &args.out {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("creating {}", folder.display()))?;
        }
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("relay-bench: wrote {}", path.display());
    }
    Ok(())
}

impl Bench {
    /// Waits up to `wait_max` until other processes use at most
    /// [`QUIET_CORES_MAX`] cores; returns how long it waited.
    fn wait_for_quiet(&self, wait_max: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let ours_before = self.our_cpu();
            let machine_before = procfs::machine_cpu();
            std::thread::sleep(QUIET_PROBE);
            let ours = self.our_cpu().saturating_sub(ours_before);
            let others = procfs::machine_cpu()
                .busy
                .saturating_sub(machine_before.busy)
                .saturating_sub(ours);
            let cores = others.as_secs_f64() / QUIET_PROBE.as_secs_f64();
            if cores <= QUIET_CORES_MAX || start.elapsed() >= wait_max {
                return start.elapsed();
            }
        }
    }

    fn run_step(&self, kind: RelayKind, step: Step) -> anyhow::Result<Row> {
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        let receiver = relays::loopback_socket(RECEIVER_BUFFER_BYTES)?;
        receiver.set_nonblocking(true)?;
        let (a, b) = (sender.local_addr()?, receiver.local_addr()?);
        let (relay, route) = self.start(kind, &sender, a, b, step.payload_len)?;
        let datagrams = step.datagrams();
        let (stop, stopped) = oneshot::channel();
        let receiving = {
            let _runtime = self.generator_runtime.enter();
            let receiver = tokio::net::UdpSocket::from_std(receiver)?;
            self.generator_runtime.spawn(generator::receive(
                receiver,
                route.clone(),
                datagrams,
                self.epoch,
                stopped,
            ))
        };
        let relay_drops_before = procfs::udp_drops(relay.ingress_port());
        let cpu_before = relay.cpu_time();
        let ours_before = self.our_cpu();
        let machine_before = procfs::machine_cpu();
        let window_start = Instant::now();
        let sent = generator::send_paced(&sender, &route, &step, self.epoch);
        std::thread::sleep(DRAIN);
        let relay_cpu = relay.cpu_time().saturating_sub(cpu_before);
        let ours = self.our_cpu().saturating_sub(ours_before);
        let machine = procfs::machine_cpu();
        let window = window_start.elapsed();
        let others_cpu = machine
            .busy
            .saturating_sub(machine_before.busy)
            .saturating_sub(ours);
        let steal = machine.steal.saturating_sub(machine_before.steal);
        let relay_socket_drops = procfs::udp_drops(relay.ingress_port()) - relay_drops_before;
        let receiver_drops = procfs::udp_drops(b.port());
        let _ = stop.send(());
        let received = self
            .generator_runtime
            .block_on(receiving)
            .context("the receiver task")??;
        let counters = relay.counters();
        relay.finish(&sender);
        Ok(Row {
            relay: kind,
            step,
            sent,
            received,
            relay_cpu,
            window,
            relay_socket_drops,
            receiver_drops,
            counters,
            others_cpu,
            steal,
        })
    }

    /// CPU time of this process and of coturn (all their threads).
    fn our_cpu(&self) -> Duration {
        let coturn = self
            .turn
            .as_ref()
            .and_then(|turn| turn.pid)
            .map_or(Duration::ZERO, |pid| procfs::cpu_time(pid, None));
        procfs::cpu_time(std::process::id(), None) + coturn
    }

    fn start(
        &self,
        kind: RelayKind,
        sender: &UdpSocket,
        a: SocketAddr,
        b: SocketAddr,
        payload_len: usize,
    ) -> anyhow::Result<(Relay, Route)> {
        let buffer = self.relay_socket_buffer_bytes;
        Ok(match kind {
            RelayKind::Plain => {
                let (relay, route) =
                    relays::plain::start(&self.relay_runtime, a, b, payload_len, buffer)?;
                (Relay::Plain(relay), route)
            }
            RelayKind::Peerline => {
                let (relay, route) =
                    relays::peerline::start(&self.relay_runtime, a, b, payload_len, buffer)?;
                (Relay::Peerline(relay), route)
            }
            RelayKind::Coturn => {
                let server = self.turn.as_ref().context("no --turn-server")?;
                let (allocation, route) =
                    relays::coturn::allocate(sender, server, b, payload_len, self.epoch)?;
                (Relay::Coturn(Box::new(allocation)), route)
            }
        })
    }
}

/// CPU model, cores and kernel, from `/proc`.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |name| name.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |cores| cores.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

fn notes(args: &Args, waited: Duration) -> Vec<String> {
    let mut notes = vec![
        format!(
            "Before each step the benchmark waited for other processes to use at most {} \
             cores (up to {} s a step, {} s in all): {:.0} s of waiting in this run.",
            QUIET_CORES_MAX,
            args.quiet_wait_s,
            QUIET_WAIT_TOTAL.as_secs(),
            waited.as_secs_f64()
        ),
        format!(
            "Each step sends for {} ms, then counts late datagrams for {} ms; relays are set up \
             afresh per step. The sender paces every {} µs (bursts of rate × tick). Each step \
             ran {} times, interleaved across the relays; each relay's run with the least loss \
             is shown.",
            args.step_ms,
            DRAIN.as_millis(),
            generator::TICK.as_micros(),
            args.repeats
        ),
        "Everything shares the machine's cores: the sender thread (A), the receiver (B, a \
         one-worker tokio runtime reading with recvmmsg) and the relay. plain and peerline each \
         forward on one thread (a one-worker tokio runtime in this process); coturn runs with \
         its default relay threads, one of which serves the allocation."
            .to_string(),
        format!(
            "peerline's per-binding byte rate is lifted to {} GB/s (burst {} GB): the default \
             256 kB/s per direction is a policy on one pair of peers, not a capacity.",
            relays::peerline::BENCH_BYTES_PER_S / 1_000_000_000,
            relays::peerline::BENCH_BURST_BYTES / 1_000_000_000
        ),
        format!(
            "Socket buffers: plain's and peerline's relay socket {}; B's {} KiB asked.",
            match args.relay_socket_buffer_bytes {
                0 => "at the kernel's default (as a peerline node has it today)".to_string(),
                bytes => format!(
                    "{} KiB asked (the kernel doubles it), as coturn asks for its own",
                    bytes / 1024
                ),
            },
            RECEIVER_BUFFER_BYTES / 1024
        ),
    ];
    notes.extend(args.note.iter().cloned());
    notes
}
