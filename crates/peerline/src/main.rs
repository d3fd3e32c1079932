//! The `peerline` command.

mod account;
mod contacts;
mod demo;
mod devices;
mod login;
mod node;
mod password;
mod timers;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use peerline_core::CryptoMode;
use peerline_sim::{CpuModel, Scenario, SimConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "peerline",
    version,
    about = "A peer-to-peer voice and messaging network with no central server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a deterministic simulation of the whole network and write a report.
    ///
    /// Scenarios: steady (joins, churn, lookups); restart-storm (the 2007
    /// login storm: 60% of all nodes reboot within 10 minutes);
    /// supernode-crash (the 2010 crash wave: 40% of supernodes die at once);
    /// partition (the Americas cut off for 10 minutes); accounts (contested
    /// name registrations through churn, a partition, a crash wave and an
    /// ID-grinding attacker, plus device revocations and key bundles opened
    /// by new devices with right and wrong passwords); sweep (peerline and
    /// the naive baseline across restart fractions 20–100% and crash
    /// fractions 10–70%). Add --naive for the baseline without overload control. The same seed
    /// gives the same run, byte for byte; the report's `digest` proves it.
    Sim(SimArgs),
    /// Run a whole network on loopback over real QUIC and check what it does.
    ///
    /// Starts supernodes and clients (each its own UDP socket on 127.0.0.1,
    /// real Ed25519 keys, TLS certificates bound to them), logs everyone in,
    /// has clients look each other up and exchange messages, kills 40% of
    /// the supernodes at once, and checks that every client re-attaches and
    /// no message is lost or duplicated. Prints a short report with timings;
    /// exits 1 if a claim fails. Takes well under a minute.
    Demo(demo::DemoArgs),
    /// Run one node on the network until stopped (SIGINT/SIGTERM).
    ///
    /// A long-running daemon: a supernode, a client, or a client that
    /// promotes itself (--role). Its identity and host cache live in
    /// --data-dir; it starts from the saved host cache, then from the
    /// --bootstrap supernodes, and prints the NODE_KEY@ADDR others can
    /// bootstrap from. Settings may also come from a TOML file (--config);
    /// flags win over it.
    Node(node::config::NodeArgs),
    /// Manage this device's account (create one with its name).
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Show the account in a data directory: its key, this device's key,
    /// when the device's certificate expires, and the names it owns.
    ///
    /// Reads DIR/state.redb only; nothing goes to the network.
    Whoami(account::WhoamiArgs),
    /// Look up who owns a name on the network.
    ///
    /// Starts a short-lived client (with the data directory's identity, or
    /// a throwaway one without --data-dir), attaches through the saved host
    /// cache and --bootstrap, and asks the name's supernodes. Prints the
    /// owning account's key and when its quorum was reached, or "nobody has
    /// registered NAME" (exit 1).
    Lookup(account::LookupArgs),
    /// Log in on a new device with the account's name and password.
    ///
    /// Starts a short-lived client, looks the name up (its account's key),
    /// and opens the account's password-sealed root key: the bundle from
    /// its replicas, the password checked with 3 of the 5 holders of its
    /// key shares (each limits guesses per account), then Argon2id (64
    /// MiB, ~150 ms). The root key certifies a new key for this device and
    /// is dropped: it is never written. DIR/state.redb then holds the new
    /// device key, its certificate and the name's certificate. Refused
    /// when DIR already holds an account with a name.
    Login(login::LoginArgs),
    /// See and revoke the account's devices.
    #[command(subcommand)]
    Devices(devices::DevicesCommand),
    /// Change the password that seals the account's root key.
    ///
    /// Opens the root key with the current password (as `peerline login`
    /// does), seals it again under the new one (Argon2id, 64 MiB, over a
    /// new threshold OPRF key whose shares go to the 5 holders), and
    /// stores the new seal: replicas replace the old one, holders replace
    /// the old key shares, and from then on only the new password opens
    /// the key. The devices stay logged in.
    Passwd(devices::PasswdArgs),
    /// Keep the people this account knows, by name.
    ///
    /// Contacts are who this device reveals its direct addresses to when
    /// they call it; anyone else reaches it through a relay.
    #[command(subcommand)]
    Contacts(contacts::ContactsCommand),
}

#[derive(Clone, Copy, ValueEnum)]
enum CryptoArg {
    /// Real Ed25519 signatures everywhere.
    Full,
    /// Keyed-hash stand-ins of the same size (for runs too large for real signatures).
    Modelled,
}

#[derive(Clone, Copy, ValueEnum)]
enum CpuModelArg {
    /// Supernodes pay the CPU time measured on the real driver per datagram
    /// (bench/calibrate.sh), queueing what arrives while they are busy.
    Measured,
    /// Supernodes handle every datagram instantly (reproduces runs made
    /// before the calibration).
    Off,
}

#[derive(clap::Args)]
struct SimArgs {
    /// Scenario to run: steady, restart-storm, supernode-crash, partition,
    /// accounts, or sweep (both modes across outage sizes, with charts).
    scenario: String,
    /// Number of clients (default 100,000; 2,000 for the sweep, which runs 18 simulations).
    #[arg(long)]
    clients: Option<u32>,
    /// Number of supernodes at the start.
    #[arg(long)]
    supernodes: Option<u32>,
    /// Random seed; the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Virtual duration, e.g. 30m, 1h, 900s (default 30m; 40m for partition).
    #[arg(long, value_parser = parse_duration_s)]
    duration: Option<u64>,
    /// Directory for report.json and the SVG charts.
    #[arg(long, default_value = "sim-out")]
    out: PathBuf,
    /// Signature mode (default: full up to 20,000 nodes, modelled above).
    #[arg(long, value_enum)]
    crypto: Option<CryptoArg>,
    /// Fraction of nodes leaving per hour (each returns after ~10 minutes).
    #[arg(long, default_value_t = 0.10)]
    churn: f64,
    /// Directory lookups per second across the network (default: clients / 1000).
    #[arg(long)]
    lookups_per_s: Option<f64>,
    /// Cap every supernode's membership view at N entries (8 per Kademlia
    /// bucket), forcing iterative routing.
    #[arg(long)]
    view_cap: Option<usize>,
    /// Run the naive baseline: no admission control, fixed-interval
    /// retries, no redirects or tickets, disconnect when overloaded.
    #[arg(long)]
    naive: bool,
    /// Also run the naive baseline on the same seed and chart both over
    /// time (compare_attached.svg, compare_load.svg; its report goes to
    /// OUT/naive).
    #[arg(long)]
    compare: bool,
    /// Supernode capacity as a multiple of the steady average load
    /// (default: 1.25 in the outage scenarios, the production default in steady).
    #[arg(long)]
    capacity_factor: Option<f64>,
    /// Outage size: fraction of all nodes restarted (restart-storm) or of
    /// supernodes crashed (supernode-crash); default 0.6 and 0.4.
    #[arg(long)]
    fraction: Option<f64>,
    /// When the outage begins, e.g. 10m.
    #[arg(long, value_parser = parse_duration_s)]
    storm_at: Option<u64>,
    /// Supernode CPU model: measured service times per message kind with a
    /// queue, or off (instant handling, as before the calibration).
    #[arg(long, value_enum, default_value = "measured")]
    cpu_model: CpuModelArg,
    /// Datagrams that may wait for a supernode's CPU before more are
    /// dropped (default 4096, the real driver's inbound frame bound).
    #[arg(long)]
    cpu_backlog: Option<u32>,
    /// Multiply every measured CPU cost by F: supernodes on hosts F times
    /// slower than the calibration machine.
    #[arg(long)]
    cpu_cost_factor: Option<f64>,
    /// Threads that run the nodes (default: the machine's cores). Only the
    /// wall time depends on it: the run and its digest are the same.
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn parse_duration_s(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; use e.g. 30m, 1h or 900s"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("'{text}' has an unknown unit; use s, m or h")),
    };
    Ok(value * scale)
}

/// mimalloc: a simulation allocates and frees a billion small buffers
/// (datagrams, records), and its large pages cut the TLB misses of touching
/// gigabytes of node state at random.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_generic_collect` (not exported by
/// `libmimalloc-sys`; its index in mimalloc 3's `mi_option_t`, as bundled
/// by libmimalloc-sys 0.1.49).
const MI_OPTION_GENERIC_COLLECT: libmimalloc_sys::mi_option_t = 34;
// A bundled mimalloc with another option list would make index 34 some
// other option: refuse to build instead (update the index above).
const _: () = assert!(libmimalloc_sys::_mi_option_last == 47);

/// Backs the heap with 2 MiB pages where the kernel allows it (transparent
/// huge pages): a million-node run touches ~10 GiB at random, and with 4 KiB
/// pages most of its memory accesses also miss the TLB. And collects the
/// heap a hundred times less often than mimalloc's default (every 10,000
/// slow-path allocations): a collection visits every page, and with
/// ~13 GiB of node state that was a sixth of a million-node run.
fn use_large_pages() {
    // SAFETY: sets process-wide allocator options; called once, before the
    // simulation allocates its state, and mimalloc reads options atomically.
    unsafe {
        libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1);
        libmimalloc_sys::mi_option_set(MI_OPTION_GENERIC_COLLECT, 1_000_000);
        debug_assert_eq!(
            libmimalloc_sys::mi_option_get(MI_OPTION_GENERIC_COLLECT),
            1_000_000
        );
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Sim(args) => run_sim(args),
        Command::Demo(args) => demo::run(args),
        Command::Node(args) => node::run(args),
        Command::Account(account::AccountCommand::Create(args)) => account::create(args),
        Command::Account(account::AccountCommand::Rotate(args)) => devices::rotate(args),
        Command::Whoami(args) => account::whoami(args),
        Command::Lookup(args) => account::lookup(args),
        Command::Login(args) => login::login(args),
        Command::Devices(devices::DevicesCommand::List(args)) => devices::list(args),
        Command::Devices(devices::DevicesCommand::Revoke(args)) => devices::revoke(args),
        Command::Passwd(args) => devices::passwd(args),
        Command::Contacts(contacts::ContactsCommand::Add(args)) => contacts::add(args),
        Command::Contacts(contacts::ContactsCommand::List(args)) => contacts::list(args),
        Command::Contacts(contacts::ContactsCommand::Remove(args)) => contacts::remove(args),
        Command::Contacts(contacts::ContactsCommand::Refresh(args)) => contacts::refresh(args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            let code = error
                .downcast_ref::<account::Failure>()
                .map_or(account::EXIT_BAD_INPUT, |failure| failure.code);
            ExitCode::from(code)
        }
    }
}

fn run_sim(args: SimArgs) -> Result<ExitCode> {
    use_large_pages();
    let mut names: Vec<&str> = Scenario::ALL.iter().map(|(n, _)| *n).collect();
    names.push("sweep");
    let sweep = args.scenario == "sweep";
    let scenario = match Scenario::parse(&args.scenario) {
        Some(scenario) => scenario,
        // The sweep's runs are built from a supernode-crash config.
        None if sweep => Scenario::SupernodeCrash,
        None => bail!(
            "unknown scenario '{}'; choose one of: {}",
            args.scenario,
            names.join(", ")
        ),
    };
    let clients = args.clients.unwrap_or(if sweep { 2_000 } else { 100_000 });
    let supernodes = args
        .supernodes
        .unwrap_or(if sweep { clients / 100 } else { clients / 400 }.max(8));
    let mut config = SimConfig::new(scenario, clients, supernodes, args.seed);
    if let Some(duration) = args.duration {
        config.duration_s = duration;
    }
    config.churn_per_hour = args.churn;
    if let Some(rate) = args.lookups_per_s {
        config.lookups_per_s = rate;
    }
    if let Some(crypto) = args.crypto {
        config.crypto = match crypto {
            CryptoArg::Full => CryptoMode::Full,
            CryptoArg::Modelled => CryptoMode::Modelled,
        };
    }
    if let Some(cap) = args.view_cap {
        config.params.membership_view_len_max = cap;
        config.params.membership_bucket_len_max = 8;
    }
    config.naive = args.naive;
    if args.capacity_factor.is_some() {
        config.capacity_factor = args.capacity_factor;
    }
    if let Some(fraction) = args.fraction {
        config.storm_fraction = fraction;
    }
    if let Some(at) = args.storm_at {
        config.storm_at_s = at;
    }
    config.cpu_model = match args.cpu_model {
        CpuModelArg::Measured => CpuModel::Measured,
        CpuModelArg::Off => CpuModel::Off,
    };
    if let Some(backlog) = args.cpu_backlog {
        config.cpu_backlog_max = backlog;
    }
    if let Some(factor) = args.cpu_cost_factor {
        config.cpu_cost_factor = factor;
    }
    config.threads = args
        .threads
        .unwrap_or_else(peerline_sim::config::default_threads);
    if let Err(problem) = config.validate() {
        bail!("{problem}");
    }
    check_writable(&args.out)?;
    if sweep {
        return run_sweep(&config, &args);
    }

    println!(
        "peerline sim {}{} · seed {} · {} clients, {} supernodes · {} s virtual · crypto {:?} · supernode CPU {} · {} thread{}",
        scenario.name(),
        if config.naive {
            " (naive baseline)"
        } else {
            ""
        },
        config.seed,
        config.clients,
        config.supernodes,
        config.duration_s,
        config.crypto,
        match config.cpu_model {
            CpuModel::Measured => "measured",
            CpuModel::Off => "off",
        },
        config.threads,
        if config.threads == 1 { "" } else { "s" }
    );
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(config.duration_s)
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} virtual s · {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    // Without a terminal (logs, CI) the bar is invisible: print a line
    // every 10% of virtual time instead.
    let plain = !args.quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let started = std::time::Instant::now();
    let mut next_report_s = 0;
    let (world, report) = peerline_sim::run(config.clone(), &mut |p| {
        bar.set_position(p.virtual_s);
        bar.set_message(format!("{} events", p.events));
        if plain && p.virtual_s >= next_report_s {
            next_report_s = p.virtual_s + (p.duration_s / 10).max(1);
            eprintln!(
                "  {:>5} / {} virtual s · {} events · {:.0} s wall",
                p.virtual_s,
                p.duration_s,
                p.events,
                started.elapsed().as_secs_f64()
            );
        }
    });
    bar.finish_and_clear();
    let written =
        peerline_sim::write_outputs(&world, &report, &args.out).map_err(anyhow::Error::msg)?;
    print!("{}", report.summary());
    println!("wrote {} into {}", written.join(", "), args.out.display());
    if args.compare && !config.naive {
        let mut naive = config.clone();
        naive.naive = true;
        println!("running the naive baseline on the same seed for --compare");
        let (naive_world, naive_report) = peerline_sim::run(naive, &mut |_| {});
        let dir = args.out.join("naive");
        peerline_sim::write_outputs(&naive_world, &naive_report, &dir)
            .map_err(anyhow::Error::msg)?;
        print!("naive baseline: {}", naive_report.summary());
        let capacity = world.params().supernode_capacity_attachments as u32;
        let charts = peerline_sim::plots::write_comparison(
            &world.metrics,
            &naive_world.metrics,
            capacity,
            &args.out,
        )
        .map_err(anyhow::Error::msg)?;
        println!(
            "wrote {} into {} (the baseline's report in {})",
            charts.join(", "),
            args.out.display(),
            dir.display()
        );
    }
    if report.passed {
        Ok(ExitCode::SUCCESS)
    } else {
        let mut extra = String::new();
        if let Some(cap) = args.view_cap {
            extra += &format!(" --view-cap {cap}");
        }
        if config.naive {
            extra += " --naive";
        }
        if let Some(factor) = args.capacity_factor {
            extra += &format!(" --capacity-factor {factor}");
        }
        if let Some(fraction) = args.fraction {
            extra += &format!(" --fraction {fraction}");
        }
        if let Some(at) = args.storm_at {
            extra += &format!(" --storm-at {at}s");
        }
        if matches!(args.cpu_model, CpuModelArg::Off) {
            extra += " --cpu-model off";
        }
        if let Some(backlog) = args.cpu_backlog {
            extra += &format!(" --cpu-backlog {backlog}");
        }
        if let Some(factor) = args.cpu_cost_factor {
            extra += &format!(" --cpu-cost-factor {factor}");
        }
        eprintln!(
            "some figures were missed; replay this exact run with: peerline sim {} --clients {} --supernodes {} --seed {} --duration {}s --churn {}{}",
            scenario.name(),
            config.clients,
            config.supernodes,
            config.seed,
            config.duration_s,
            config.churn_per_hour,
            extra
        );
        Ok(ExitCode::from(1))
    }
}

/// Both modes across outage sizes; exits 1 unless peerline breaks later
/// than the naive baseline in both scenarios.
fn run_sweep(config: &SimConfig, args: &SimArgs) -> Result<ExitCode> {
    let runs = peerline_sim::sweep::plan(config).len();
    println!(
        "peerline sim sweep · seed {} · {} clients, {} supernodes · {} runs of {} s virtual on two threads",
        config.seed, config.clients, config.supernodes, runs, config.duration_s
    );
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(runs as u64)
    };
    let plain = !args.quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = peerline_sim::sweep::run(config, &|done, total, point| {
        bar.set_position(done as u64);
        if plain {
            eprintln!(
                "  {done:>2}/{total} {} {} {:.0}%: {}",
                point.scenario,
                if point.naive { "naive" } else { "peerline" },
                point.fraction * 100.0,
                if point.passed {
                    "passed"
                } else {
                    "missed figures"
                }
            );
        }
    });
    bar.finish_and_clear();
    let written = report.write(&args.out).map_err(anyhow::Error::msg)?;
    print!("{}", report.summary());
    println!("wrote {} into {}", written.join(", "), args.out.display());
    // peerline must hold at least as far as the baseline, and further
    // somewhere (a point where naive fails and peerline passes).
    let further = report.points.iter().any(|p| {
        p.naive
            && !p.passed
            && report.points.iter().any(|q| {
                !q.naive && q.passed && q.scenario == p.scenario && q.fraction == p.fraction
            })
    });
    let never_worse = report
        .points
        .iter()
        .filter(|p| !p.naive && !p.passed)
        .all(|p| {
            report.points.iter().any(|q| {
                q.naive && !q.passed && q.scenario == p.scenario && q.fraction == p.fraction
            })
        });
    if further && never_worse {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "peerline did not outlast the naive baseline; replay with: peerline sim sweep --clients {} --supernodes {} --seed {}",
            config.clients, config.supernodes, config.seed
        );
        Ok(ExitCode::from(1))
    }
}

/// Fails early, with one sentence, when the output directory is unusable.
fn check_writable(dir: &PathBuf) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let probe = dir.join(".peerline-write-test");
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("output directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
