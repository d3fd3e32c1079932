//! SVG charts of a run (plotters' SVG backend; no fonts or system libraries).

use crate::metrics::{Metrics, Sample};
use plotters::prelude::*;
use std::path::Path;

type PlotResult = Result<(), Box<dyn std::error::Error>>;
type Chart = fn(&Metrics, u32, &Path) -> PlotResult;

const SIZE: (u32, u32) = (800, 480);

/// Writes every chart into `dir`; returns the file names written.
pub fn write_all(metrics: &Metrics, capacity: u32, dir: &Path) -> Result<Vec<String>, String> {
    let charts: [(&str, Chart); 7] = [
        ("attached_clients.svg", attached_clients),
        ("supernode_load.svg", supernode_load),
        ("supernode_load_over_time.svg", load_over_time),
        ("busy_answers.svg", busy_answers),
        ("mailbox_backlog.svg", mailbox_backlog),
        ("lookup_hops.svg", lookup_hops),
        ("lookup_latency_cdf.svg", lookup_latency_cdf),
    ];
    let mut written = Vec::new();
    for (name, draw) in charts {
        let path = dir.join(name);
        draw(metrics, capacity, &path)
            .map_err(|e| format!("could not draw {}: {e}", path.display()))?;
        written.push(name.to_string());
    }
    Ok(written)
}

/// One line of a time-series chart: label, colour, points (minutes, value).
type Line = (&'static str, RGBColor, Vec<(f64, f64)>);

/// The samples' values over virtual time, in minutes.
fn over_time(metrics: &Metrics, f: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    metrics
        .samples
        .iter()
        .map(|s| (s.t_s as f64 / 60.0, f(s)))
        .collect()
}

/// A line chart over virtual time with a legend.
fn time_series(path: &Path, title: &str, y_desc: &str, lines: &[Line]) -> PlotResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || lines.iter().flat_map(|(_, _, p)| p.iter());
    let t_max = points().map(|p| p.0).fold(1.0 / 60.0, f64::max);
    let y_max = points().map(|p| p.1).fold(1.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("virtual minutes")
        .y_desc(y_desc)
        .draw()?;
    for (label, color, points) in lines {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn attached_clients(metrics: &Metrics, _capacity: u32, path: &Path) -> PlotResult {
    time_series(
        path,
        "Clients over time",
        "clients",
        &[
            ("live", BLACK, over_time(metrics, |s| s.live_clients as f64)),
            (
                "attached to >= 2 supernodes",
                BLUE,
                over_time(metrics, |s| s.attached_two as f64),
            ),
            (
                "attached to none",
                RED,
                over_time(metrics, |s| (s.live_clients - s.attached_one) as f64),
            ),
        ],
    )
}

fn load_over_time(metrics: &Metrics, capacity: u32, path: &Path) -> PlotResult {
    time_series(
        path,
        &format!("Supernode load over time (capacity {capacity})"),
        "attached clients per supernode",
        &[
            ("max", RED, over_time(metrics, |s| s.load_max as f64)),
            ("p99", MAGENTA, over_time(metrics, |s| s.load_p99 as f64)),
            ("p50", BLUE, over_time(metrics, |s| s.load_p50 as f64)),
            ("capacity", BLACK, over_time(metrics, |_| capacity as f64)),
        ],
    )
}

fn mailbox_backlog(metrics: &Metrics, _capacity: u32, path: &Path) -> PlotResult {
    time_series(
        path,
        "Mailboxes: envelope copies held",
        "copies (all replicas)",
        &[
            (
                "for devices online now (backlog)",
                RED,
                over_time(metrics, |s| s.mailbox_backlog as f64),
            ),
            (
                "all, offline recipients included",
                BLUE,
                over_time(metrics, |s| s.mailbox_held as f64),
            ),
        ],
    )
}

fn busy_answers(metrics: &Metrics, _capacity: u32, path: &Path) -> PlotResult {
    time_series(
        path,
        "Busy answers and clients waiting to re-attach",
        "per sample interval / clients",
        &[
            ("busy answers", RED, over_time(metrics, |s| s.busy as f64)),
            (
                "clients below 2 attachments since the outage",
                BLUE,
                over_time(metrics, |s| s.reattach_pending as f64),
            ),
        ],
    )
}

fn supernode_load(metrics: &Metrics, capacity: u32, path: &Path) -> PlotResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let bucket = (capacity / 40).max(1);
    let buckets = (capacity / bucket + 2) as usize;
    let mut counts = vec![0u32; buckets];
    for load in &metrics.final_loads {
        counts[((load / bucket) as usize).min(buckets - 1)] += 1;
    }
    let y_max = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let x_max = (buckets as u32 * bucket) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Supernode load at the end (capacity {capacity})"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("attached clients")
        .y_desc("supernodes")
        .draw()?;
    chart.draw_series(counts.iter().enumerate().map(|(i, c)| {
        let x0 = (i as u32 * bucket) as f64;
        Rectangle::new(
            [(x0, 0.0), (x0 + bucket as f64 * 0.9, *c as f64)],
            BLUE.filled(),
        )
    }))?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(capacity as f64, 0.0), (capacity as f64, y_max)],
        RED.stroke_width(2),
    )))?;
    root.present()?;
    Ok(())
}

fn lookup_hops(metrics: &Metrics, _capacity: u32, path: &Path) -> PlotResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let total: u64 = metrics.lookup_hops.iter().sum::<u64>().max(1);
    let shares: Vec<f64> = metrics
        .lookup_hops
        .iter()
        .map(|c| *c as f64 / total as f64)
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("Lookup hops (successful lookups)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(shares.len() as f64 - 0.5), 0f64..1.05)?;
    chart
        .configure_mesh()
        .x_desc("hops (last bar: 8 or more)")
        .y_desc("share")
        .draw()?;
    chart.draw_series(shares.iter().enumerate().map(|(h, s)| {
        Rectangle::new(
            [(h as f64 - 0.35, 0.0), (h as f64 + 0.35, *s)],
            GREEN.filled(),
        )
    }))?;
    root.present()?;
    Ok(())
}

fn lookup_latency_cdf(metrics: &Metrics, _capacity: u32, path: &Path) -> PlotResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut sorted = metrics.lookup_latency_ms.clone();
    sorted.sort_unstable();
    let x_max = sorted
        .get(sorted.len().saturating_sub(1) * 999 / 1000)
        .copied()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Lookup latency CDF", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("fraction of lookups")
        .draw()?;
    let n = sorted.len().max(1) as f64;
    let step = (sorted.len() / 2000).max(1);
    let points: Vec<(f64, f64)> = sorted
        .iter()
        .enumerate()
        .step_by(step)
        .map(|(i, ms)| (*ms as f64, (i + 1) as f64 / n))
        .collect();
    chart.draw_series(LineSeries::new(points, &BLUE))?;
    root.present()?;
    Ok(())
}

/// peerline and the naive baseline on the same seed, over time: clients at
/// two supernodes, and the most loaded supernode against capacity.
pub fn write_comparison(
    peerline: &Metrics,
    naive: &Metrics,
    capacity: u32,
    dir: &Path,
) -> Result<Vec<String>, String> {
    let mut written = Vec::new();
    let share = |s: &Sample| s.attached_ratio();
    let name = "compare_attached.svg";
    time_series(
        &dir.join(name),
        "Share of clients at 2 supernodes: peerline vs naive (same seed)",
        "share of live clients",
        &[
            ("peerline", BLUE, over_time(peerline, share)),
            ("naive baseline", RED, over_time(naive, share)),
        ],
    )
    .map_err(|e| format!("could not draw {name}: {e}"))?;
    written.push(name.to_string());
    let name = "compare_load.svg";
    time_series(
        &dir.join(name),
        &format!("Most loaded supernode: peerline vs naive (capacity {capacity})"),
        "attached clients",
        &[
            ("peerline", BLUE, over_time(peerline, |s| s.load_max as f64)),
            (
                "naive baseline",
                RED,
                over_time(naive, |s| s.load_max as f64),
            ),
            ("capacity", BLACK, over_time(peerline, |_| capacity as f64)),
        ],
    )
    .map_err(|e| format!("could not draw {name}: {e}"))?;
    written.push(name.to_string());
    Ok(written)
}
