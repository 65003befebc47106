//! The bench's picture: where a request's time goes, one stacked bar per
//! configuration and operation (one client, medians, ms), drawn from the
//! cost model ([`super::model`]):
//!
//! - **unprotected**: the guest's own work and the VM network — the
//!   unprotected median, one block;
//! - **pair (measured)**: the same block, then `k ×` the FT-link round trip
//!   (what the Output Rule needs by design), then the Output Rule's hold
//!   beyond those round trips (the timeline's held medians minus `k × RTT`:
//!   batching, wake-ups, the channel's own processing — ours to cut), then
//!   everything else the pair adds (CPU contention of two members, …);
//! - **pair at 50 µs RTT (model)**: the measured bar with the link's round
//!   trips replaced by those of a 10 GbE link.
//!
//! The blocks of a measured bar are medians of different distributions, so
//! they are an account of the median, not an exact partition of every
//! request: the hold is capped so the blocks never exceed the measured
//! median, and a negative remainder (noise) is drawn as zero.

use std::path::Path;

use plotters::prelude::*;

use super::model::{Prediction, REAL_RTT_US};

/// One block of a bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Guest,
    LinkRtt,
    HeldBeyondLink,
    Other,
}

impl Part {
    const ALL: [Part; 4] = [
        Part::Guest,
        Part::LinkRtt,
        Part::HeldBeyondLink,
        Part::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Part::Guest => "guest + VM network (unprotected median)",
            Part::LinkRtt => "k x FT-link RTT (the Output Rule's round trips)",
            Part::HeldBeyondLink => "outputs held beyond the link RTT (ours)",
            Part::Other => "rest of the pair's cost",
        }
    }

    fn color(self) -> RGBColor {
        match self {
            Part::Guest => RGBColor(150, 150, 150),
            Part::LinkRtt => RGBColor(230, 140, 0),
            Part::HeldBeyondLink => RGBColor(200, 0, 0),
            Part::Other => RGBColor(0, 90, 180),
        }
    }
}

/// One bar: its label and its blocks in µs, bottom first.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub blocks: Vec<(Part, f64)>,
}

impl Bar {
    pub fn total_us(&self) -> f64 {
        self.blocks.iter().map(|(_, v)| v).sum()
    }
}

/// The bars of every operation the model covers: unprotected, pair,
/// pair at [`REAL_RTT_US`].
pub fn bars(model: &[Prediction]) -> Vec<Bar> {
    let mut out = Vec::new();
    for p in model {
        let op = p.op.name();
        let guest = p.unprotected_p50_us.max(0.0);
        let link = f64::from(p.k) * p.link_rtt_us;
        let rest = p.rest_us.max(0.0);
        // The hold past the link's round trips, within what the pair added.
        let held = p.held_us.map_or(0.0, |h| (h - link).clamp(0.0, rest));
        let other = rest - held;
        let real_link = f64::from(p.k) * REAL_RTT_US;
        out.push(Bar {
            label: format!("{op} unprotected"),
            blocks: vec![(Part::Guest, guest)],
        });
        // The measured pair and the model differ only in the link's block.
        let pair_bar = |label: String, link_us: f64| Bar {
            label,
            blocks: vec![
                (Part::Guest, guest),
                (Part::LinkRtt, link_us),
                (Part::HeldBeyondLink, held),
                (Part::Other, other),
            ],
        };
        out.push(pair_bar(format!("{op} pair"), link));
        out.push(pair_bar(
            format!("{op} pair, {REAL_RTT_US:.0} us RTT (model)"),
            real_link,
        ));
    }
    out
}

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 600;

/// Draws `bars` as an SVG at `path`.
pub fn draw(path: &Path, title: &str, bars: &[Bar]) -> Result<(), String> {
    draw_inner(path, title, bars).map_err(|e| format!("draw {}: {e}", path.display()))
}

fn draw_inner(path: &Path, title: &str, bars: &[Bar]) -> Result<(), Box<dyn std::error::Error>> {
    let ms = |us: f64| us / 1000.0;
    let top = bars.iter().map(|b| ms(b.total_us())).fold(1.0, f64::max) * 1.3;
    let n = bars.len().max(1) as f64;
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc("median latency, one client (ms)")
        .draw()?;
    for part in Part::ALL {
        let mut rects = Vec::new();
        for (i, bar) in bars.iter().enumerate() {
            let mut base = 0.0;
            for (p, v) in &bar.blocks {
                let h = ms(*v);
                if *p == part && h > 0.0 {
                    let x = i as f64;
                    rects.push(Rectangle::new(
                        [(x + 0.15, base), (x + 0.85, base + h)],
                        part.color().filled(),
                    ));
                }
                base += h;
            }
        }
        chart
            .draw_series(rects)?
            .label(part.label())
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], part.color().filled())
            });
    }
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        Text::new(
            format!("{} ({:.1} ms)", b.label, ms(b.total_us())),
            (i as f64 + 0.1, ms(b.total_us()) + top * 0.02),
            ("sans-serif", 11).into_font(),
        )
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::load::Op;
    use super::super::model::model;
    use super::*;

    fn blocks(b: &Bar) -> Vec<f64> {
        b.blocks.iter().map(|(_, v)| *v).collect()
    }

    #[test]
    fn a_measured_bar_adds_up_to_the_pair_median() {
        // Unprotected 4 ms, pair 20 ms, link 2 ms, held 9 ms: cost 16 =
        // 2 × 2 (link) + 5 (held beyond the link) + 7 (other).
        let p = model(Op::Put, 4000.0, 20_000.0, 2000.0, None, Some(9000.0));
        let b = bars(&[p]);
        assert_eq!(b.len(), 3);
        assert_eq!(blocks(&b[0]), vec![4000.0]);
        assert_eq!(blocks(&b[1]), vec![4000.0, 4000.0, 5000.0, 7000.0]);
        assert_eq!(b[1].total_us(), 20_000.0);
        // The model bar: the link's part at 2 × 50 µs, the rest kept.
        assert_eq!(blocks(&b[2]), vec![4000.0, 100.0, 5000.0, 7000.0]);
    }

    #[test]
    fn a_hold_larger_than_the_cost_is_capped_and_noise_is_zero() {
        let p = model(Op::Get, 4000.0, 8000.0, 1000.0, None, Some(50_000.0));
        let b = bars(&[p]);
        assert_eq!(blocks(&b[1]), vec![4000.0, 1000.0, 3000.0, 0.0]);
        assert_eq!(
            b[1].total_us(),
            8000.0,
            "never more than the measured median"
        );
        let q = model(Op::Get, 4000.0, 4500.0, 1000.0, None, None);
        let b = bars(&[q]);
        assert_eq!(blocks(&b[1]), vec![4000.0, 1000.0, 0.0, 0.0]);
    }

    #[test]
    fn the_picture_is_written_with_every_bar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.svg");
        let m = [
            model(Op::Put, 4000.0, 20_000.0, 2000.0, None, Some(9000.0)),
            model(Op::Get, 3000.0, 9000.0, 2000.0, None, Some(4000.0)),
        ];
        draw(&path, "ft-bench", &bars(&m)).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for label in [
            "PUT unprotected",
            "PUT pair (20.0 ms)",
            "GET pair, 50 us RTT (model)",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(svg.contains("outputs held beyond the link RTT"));
    }
}
