//! A chaos run's picture: request latency over time as an SVG, one point per
//! client operation (x = invoke time in s, y = latency in ms; acknowledged,
//! failed and unknown operations marked differently), with each fault's
//! window shaded and labelled by its kind, so a pause can be read against
//! the fault that caused it; a reboot (the end of a kill's window) is a
//! dashed line labelled `reboot_host <host>`, since the rebooted host's
//! rejoining can pause the guest later. SVG only (plotters' SVG backend, no fonts
//! needed: text is left to the viewer).

use super::fault::FaultKind;
use super::schedule::Schedule;
use super::ChaosError;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How a client operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Fail,
    /// Timed out: it may or may not have taken effect.
    Unknown,
}

/// One client operation: when it was invoked (ms from the run's start) and
/// how long until its answer (or until the client gave up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpPoint {
    pub invoke_ms: u64,
    pub latency_ms: u64,
    pub outcome: Outcome,
}

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 600;

/// A shade per kind (drawn at 20 % opacity).
fn kind_color(kind: FaultKind) -> RGBColor {
    match kind {
        FaultKind::KillHost => RGBColor(200, 0, 0),
        FaultKind::FreezeHost => RGBColor(0, 120, 220),
        FaultKind::PartitionFt => RGBColor(230, 140, 0),
        FaultKind::CutStorage | FaultKind::SeverStorage | FaultKind::DelayStorage => {
            RGBColor(130, 60, 180)
        }
        FaultKind::CutVmNet => RGBColor(0, 150, 120),
        FaultKind::SlowHost => RGBColor(120, 120, 120),
        FaultKind::RebootHost | FaultKind::Heal => RGBColor(60, 60, 60),
    }
}

/// Writes the latency plot of one run to `path` (SVG).
pub fn plot_run(
    path: &Path,
    title: &str,
    ops: &[OpPoint],
    schedule: &Schedule,
) -> Result<(), ChaosError> {
    draw(path, title, ops, schedule).map_err(|e| ChaosError::Plot {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

fn draw(
    path: &Path,
    title: &str,
    ops: &[OpPoint],
    schedule: &Schedule,
) -> Result<(), Box<dyn std::error::Error>> {
    let s = |ms: u64| ms as f64 / 1000.0;
    let end_ms = ops
        .iter()
        .map(|o| o.invoke_ms)
        .max()
        .unwrap_or(0)
        .max(schedule.duration_ms)
        .max(1);
    let top = ops.iter().map(|o| o.latency_ms).max().unwrap_or(0).max(10) as f64 * 1.25;
    let x_max = s(end_ms);

    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("invoke time (s)")
        .y_desc("latency (ms)")
        .draw()?;

    // Fault windows: shaded, labels staggered on four rows so that faults
    // starting together stay readable.
    let windows = schedule.windows();
    chart.draw_series(windows.iter().map(|w| {
        let c = kind_color(w.fault.kind());
        Rectangle::new(
            [(s(w.start_ms), 0.0), (s(w.end_ms.max(w.start_ms + 1)), top)],
            c.mix(0.2).filled(),
        )
    }))?;
    chart.draw_series(windows.iter().enumerate().map(|(i, w)| {
        let row = (i % 4) as f64;
        Text::new(
            w.fault.to_string(),
            (s(w.start_ms), top * (0.97 - 0.045 * row)),
            ("sans-serif", 12)
                .into_font()
                .color(&kind_color(w.fault.kind())),
        )
    }))?;

    // Reboots: a dashed line each, labelled below the fault labels.
    let reboots = schedule.reboot_windows();
    let dash = top / 40.0;
    chart.draw_series(reboots.iter().flat_map(|w| {
        let x = s(w.start_ms);
        (0..20).map(move |i| {
            let y = f64::from(i) * 2.0 * dash;
            PathElement::new(
                vec![(x, y), (x, y + dash)],
                kind_color(FaultKind::RebootHost).stroke_width(1),
            )
        })
    }))?;
    chart.draw_series(reboots.iter().map(|w| {
        Text::new(
            w.fault.to_string(),
            (s(w.start_ms), top * 0.78),
            ("sans-serif", 12)
                .into_font()
                .color(&kind_color(FaultKind::RebootHost)),
        )
    }))?;

    let pick = |o: Outcome| ops.iter().filter(move |p| p.outcome == o);
    let at = |p: &OpPoint| (s(p.invoke_ms), p.latency_ms as f64);
    chart
        .draw_series(pick(Outcome::Ok).map(|p| Circle::new(at(p), 2, BLUE.filled())))?
        .label("ok")
        .legend(|(x, y)| Circle::new((x, y), 3, BLUE.filled()));
    chart
        .draw_series(pick(Outcome::Fail).map(|p| Cross::new(at(p), 4, RED.stroke_width(2))))?
        .label("fail")
        .legend(|(x, y)| Cross::new((x, y), 4, RED.stroke_width(2)));
    chart
        .draw_series(
            pick(Outcome::Unknown).map(|p| TriangleMarker::new(at(p), 4, MAGENTA.filled())),
        )?
        .label("unknown")
        .legend(|(x, y)| TriangleMarker::new((x, y), 4, MAGENTA.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
