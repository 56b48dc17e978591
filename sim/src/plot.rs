//! PNG plots (plotters bitmap backend, no text so no font/fontconfig dependency).
//!
//! `busy.png`: GPU busy fraction over normalised time, one line per policy (colours in policy order:
//! blue, red, green, orange, purple, ...); `steps.png`: step time per step, same colours.
//! Axes: x from 0 to the end of the run, y from 0 to 1 (busy) or 0 to the largest step time.

use crate::run::ScenarioResult;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(90, 90, 90),
];

fn draw(path: &Path, series: &[Vec<(f64, f64)>], y_max: f64) -> Result<()> {
    let root = BitMapBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let x_max = series.iter().flat_map(|s| s.iter().map(|p| p.0)).fold(1e-9, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max.max(1e-9))
        .map_err(|e| anyhow!("{e}"))?;
    chart.configure_mesh().disable_x_mesh().draw().map_err(|e| anyhow!("{e}"))?;
    for (i, s) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        chart.draw_series(LineSeries::new(s.iter().copied(), c.stroke_width(3))).map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Write `busy.png` and `steps.png` into `dir`.
pub fn write_plots(r: &ScenarioResult, dir: &Path) -> Result<()> {
    let busy: Vec<Vec<(f64, f64)>> = r
        .policies
        .iter()
        .map(|p| {
            let n = p.busy_timeline.len().max(1) as f64;
            p.busy_timeline.iter().enumerate().map(|(i, &v)| ((i as f64 + 0.5) / n, v)).collect()
        })
        .collect();
    draw(&dir.join("busy.png"), &busy, 1.0)?;
    let steps: Vec<Vec<(f64, f64)>> = r
        .policies
        .iter()
        .map(|p| p.step_times_s.iter().enumerate().map(|(i, &v)| (i as f64 + 1.0, v)).collect())
        .collect();
    let y_max = r.policies.iter().flat_map(|p| p.step_times_s.iter().copied()).fold(0.0, f64::max) * 1.1;
    draw(&dir.join("steps.png"), &steps, y_max)
}
