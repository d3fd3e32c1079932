//! peerline's deterministic discrete-event simulator.
//!
//! Virtual time and a seeded RNG: the same seed replays the same run byte
//! for byte (see `report.digest`), on one thread or several (the nodes of
//! each 4 ms window run on `SimConfig::threads` threads: `world/batch.rs`).
//! The nodes are the production
//! state machines of `peerline-core`, fed datagrams through a network model
//! (geographic latency, jitter, loss, NAT filtering, clock skew) while a
//! scenario script starts, crashes and restarts them and asks for lookups.
//! Observers measure from outside the nodes: attachments from the wire,
//! lookup answers against the simulator's ground truth.

pub mod config;
pub mod cpu;
pub mod crew;
pub mod metrics;
pub mod network;
pub mod plots;
pub mod queue;
pub mod report;
pub mod sweep;
pub mod world;

pub use config::{CpuModel, Scenario, SimConfig};
pub use report::Report;
pub use world::{Progress, World};

use std::path::Path;

/// Runs a scenario to the end and builds its report.
pub fn run(config: SimConfig, progress: &mut dyn FnMut(Progress)) -> (World, Report) {
    let started = std::time::Instant::now();
    let mut world = World::new(config);
    world.run(progress);
    let report = Report::build(&world, started.elapsed().as_secs_f64());
    (world, report)
}

/// Writes `report.json` and the charts into `dir` (created if needed).
pub fn write_outputs(world: &World, report: &Report, dir: &Path) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create output directory {}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| format!("cannot serialize the report: {e}"))?;
    let path = dir.join("report.json");
    std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let mut written = vec!["report.json".to_string()];
    let capacity = world.params().supernode_capacity_attachments as u32;
    written.extend(plots::write_all(&world.metrics, capacity, dir)?);
    Ok(written)
}
