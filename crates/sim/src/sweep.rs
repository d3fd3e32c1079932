//! The `sweep`: both modes (peerline and the naive baseline) across outage
//! sizes — restart fraction 20–100%, crash fraction 10–70% — to find where
//! each mode breaks, as a measured curve rather than one hand-picked point.

use crate::config::{Scenario, SimConfig};
use crate::report::Report;
use plotters::prelude::*;
use serde::Serialize;
use std::path::Path;

pub const RESTART_FRACTIONS: [f64; 5] = [0.2, 0.4, 0.6, 0.8, 1.0];
pub const CRASH_FRACTIONS: [f64; 4] = [0.1, 0.3, 0.5, 0.7];

/// One run of the sweep, summarized.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub scenario: &'static str,
    pub naive: bool,
    pub fraction: f64,
    pub passed: bool,
    /// The figure checks that failed.
    pub failed: Vec<&'static str>,
    pub attached_ratio_min_after_outage: f64,
    pub reattach_ratio_within_300s: f64,
    pub reattach_s_p99: f64,
    pub supernode_over_capacity_events: u64,
    pub messages_delivered_ratio: f64,
    pub busy_answers: u64,
    pub promotions: u64,
    pub wall_s: f64,
}

impl Point {
    fn of(report: &Report, fraction: f64) -> Point {
        Point {
            scenario: report.scenario,
            naive: report.naive,
            fraction,
            passed: report.passed,
            failed: report
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name)
                .collect(),
            attached_ratio_min_after_outage: report.attached_ratio_min_after_outage,
            reattach_ratio_within_300s: report.reattach_ratio_within_300s,
            reattach_s_p99: report.reattach_s_p99,
            supernode_over_capacity_events: report.supernode_over_capacity_events,
            messages_delivered_ratio: report.messages_delivered_ratio,
            busy_answers: report.busy_answers,
            promotions: report.promotions,
            wall_s: report.wall_s,
        }
    }
}

/// Where a mode broke in one scenario: the smallest outage it failed.
#[derive(Clone, Debug, Serialize)]
pub struct BreakingPoint {
    pub scenario: &'static str,
    pub naive: bool,
    /// `None`: it passed at every size tried.
    pub first_failure: Option<f64>,
    pub largest_pass: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    pub clients: u32,
    pub supernodes: u32,
    pub seed: u64,
    pub points: Vec<Point>,
    pub breaking_points: Vec<BreakingPoint>,
}

/// Every (scenario, naive, fraction) the sweep runs.
pub fn plan(base: &SimConfig) -> Vec<SimConfig> {
    let mut configs = Vec::new();
    for (scenario, fractions) in [
        (Scenario::RestartStorm, &RESTART_FRACTIONS[..]),
        (Scenario::SupernodeCrash, &CRASH_FRACTIONS[..]),
    ] {
        for naive in [false, true] {
            for &fraction in fractions {
                let mut config = SimConfig::new(scenario, base.clients, base.supernodes, base.seed);
                config.duration_s = base.duration_s;
                config.crypto = base.crypto;
                config.churn_per_hour = base.churn_per_hour;
                config.params = base.params.clone();
                config.cpu_model = base.cpu_model;
                config.cpu_backlog_max = base.cpu_backlog_max;
                config.cpu_cost_factor = base.cpu_cost_factor;
                config.naive = naive;
                config.storm_fraction = fraction;
                configs.push(config);
            }
        }
    }
    configs
}

/// Runs the plan on two threads, one run on each (every run is seeded, and
/// its thread count changes nothing but wall time) and summarizes it.
pub fn run(base: &SimConfig, progress: &(dyn Fn(usize, usize, &Point) + Sync)) -> SweepReport {
    let configs = plan(base);
    let total = configs.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let mut points: Vec<(usize, Point)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let configs = &configs;
                let done = &done;
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for (index, config) in configs.iter().enumerate().skip(worker).step_by(2) {
                        let fraction = config.storm_fraction;
                        let config = SimConfig {
                            threads: 1,
                            ..config.clone()
                        };
                        let (_, report) = crate::run(config, &mut |_| {});
                        let point = Point::of(&report, fraction);
                        let finished = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        progress(finished, total, &point);
                        out.push((index, point));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a sweep run panicked"))
            .collect()
    });
    points.sort_by_key(|(index, _)| *index);
    let points: Vec<Point> = points.into_iter().map(|(_, p)| p).collect();
    let mut breaking_points = Vec::new();
    for scenario in ["restart-storm", "supernode-crash"] {
        for naive in [false, true] {
            let runs: Vec<&Point> = points
                .iter()
                .filter(|p| p.scenario == scenario && p.naive == naive)
                .collect();
            breaking_points.push(BreakingPoint {
                scenario: runs.first().map_or("", |p| p.scenario),
                naive,
                first_failure: runs.iter().find(|p| !p.passed).map(|p| p.fraction),
                largest_pass: runs
                    .iter()
                    .take_while(|p| p.passed)
                    .last()
                    .map(|p| p.fraction),
            });
        }
    }
    SweepReport {
        clients: base.clients,
        supernodes: base.supernodes,
        seed: base.seed,
        points,
        breaking_points,
    }
}

impl SweepReport {
    pub fn summary(&self) -> String {
        let mut out = format!(
            "sweep · {} clients + {} supernodes · seed {}\n",
            self.clients, self.supernodes, self.seed
        );
        out += "scenario         mode      fraction  pass  attached-min  back<300s  p99 s  over-cap  delivered\n";
        for p in &self.points {
            out += &format!(
                "{:<16} {:<9} {:>8.1}  {:<4}  {:>12.4}  {:>9.4}  {:>5.0}  {:>8}  {:>9.4}\n",
                p.scenario,
                if p.naive { "naive" } else { "peerline" },
                p.fraction,
                if p.passed { "yes" } else { "NO" },
                p.attached_ratio_min_after_outage,
                p.reattach_ratio_within_300s,
                p.reattach_s_p99,
                p.supernode_over_capacity_events,
                p.messages_delivered_ratio
            );
        }
        for b in &self.breaking_points {
            out += &format!(
                "breaking point · {} · {}: {}\n",
                b.scenario,
                if b.naive { "naive" } else { "peerline" },
                match (b.first_failure, b.largest_pass) {
                    (None, _) => "none (passed at every size tried)".to_string(),
                    (Some(f), Some(p)) => format!(
                        "fails at {:.0}% (passes up to {:.0}%)",
                        f * 100.0,
                        p * 100.0
                    ),
                    (Some(f), None) => format!(
                        "fails already at {:.0}%, the smallest size tried",
                        f * 100.0
                    ),
                }
            );
        }
        out
    }

    /// Writes `sweep.json` and one chart per scenario into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<String>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create output directory {}: {e}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| format!("cannot serialize the sweep: {e}"))?;
        let path = dir.join("sweep.json");
        std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let mut written = vec!["sweep.json".to_string()];
        for (scenario, name, x_label) in [
            (
                "restart-storm",
                "sweep_restart_storm.svg",
                "fraction of all nodes restarted",
            ),
            (
                "supernode-crash",
                "sweep_supernode_crash.svg",
                "fraction of supernodes crashed",
            ),
        ] {
            let path = dir.join(name);
            self.chart(scenario, x_label, &path)
                .map_err(|e| format!("could not draw {}: {e}", path.display()))?;
            written.push(name.to_string());
        }
        Ok(written)
    }

    fn chart(
        &self,
        scenario: &str,
        x_label: &str,
        path: &Path,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{scenario}: lowest share of clients at 2 supernodes after the outage"),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..1.05, 0f64..1.02)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("attached to >= 2 (min after outage)")
            .draw()?;
        for (naive, color) in [(false, BLUE), (true, RED)] {
            let points: Vec<(f64, f64, bool)> = self
                .points
                .iter()
                .filter(|p| p.scenario == scenario && p.naive == naive)
                .map(|p| (p.fraction, p.attached_ratio_min_after_outage, p.passed))
                .collect();
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|(x, y, _)| (*x, *y)),
                    color,
                ))?
                .label(if naive {
                    "naive baseline (x: figures missed)"
                } else {
                    "peerline (x: figures missed)"
                })
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(points.iter().map(|(x, y, passed)| {
                if *passed {
                    Circle::new((*x, *y), 5, color.filled()).into_dyn()
                } else {
                    Cross::new((*x, *y), 7, color.stroke_width(2)).into_dyn()
                }
            }))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()?;
        root.present()?;
        Ok(())
    }
}
