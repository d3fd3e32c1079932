//! SVG charts of a run (plotters' SVG backend; no fonts or system libraries).

use crate::metrics::Metrics;
use plotters::prelude::*;
use std::path::Path;

type PlotResult = Result<(), Box<dyn std::error::Error>>;
type Chart = fn(&Metrics, u32, &Path) -> PlotResult;

const SIZE: (u32, u32) = (800, 480);

/// Writes every chart into `dir`; returns the file names written.
pub fn write_all(metrics: &Metrics, capacity: u32, dir: &Path) -> Result<Vec<String>, String> {
    let charts: [(&str, Chart); 4] = [
        ("attached_clients.svg", attached_clients),
        ("supernode_load.svg", supernode_load),
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

fn attached_clients(metrics: &Metrics, _capacity: u32, path: &Path) -> PlotResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let t_max = metrics.samples.last().map_or(1, |s| s.t_s).max(1) as f64 / 60.0;
    let y_max = metrics
        .samples
        .iter()
        .map(|s| s.live_clients)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("Clients over time", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("virtual minutes")
        .y_desc("clients")
        .draw()?;
    let series = |f: fn(&crate::metrics::Sample) -> u64| {
        metrics
            .samples
            .iter()
            .map(move |s| (s.t_s as f64 / 60.0, f(s) as f64))
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(series(|s| s.live_clients), &BLACK))?
        .label("live")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .draw_series(LineSeries::new(series(|s| s.attached_two), &BLUE))?
        .label("attached to >= 2 supernodes")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            series(|s| s.live_clients - s.attached_one),
            &RED,
        ))?
        .label("attached to none")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
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
