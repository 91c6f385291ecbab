//! `compare --svg FILE`: one SVG per run (plotters' SVG backend: no font or bitmap dependencies),
//! throughput bars on the left and latency percentiles per system on the right.

use std::path::Path;

use plotters::prelude::*;

use crate::echo::EchoResult;

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

const QUANTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")];

fn err<E: std::fmt::Display>(e: E) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Draws `results` into `path`; `title` names the workload.
pub fn draw(path: &Path, title: &str, results: &[EchoResult]) -> std::io::Result<()> {
    let root = SVGBackend::new(path, (1000, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let (left, right) = root.split_horizontally(470);
    let n = results.len().max(1);
    let names: Vec<&str> = results
        .iter()
        .map(|r| crate::uws::label(&r.system))
        .collect();

    let top = results
        .iter()
        .map(EchoResult::msgs_per_s)
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&left)
        .caption("messages/s (higher is better)", ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => {
                names.get(*i).copied().unwrap_or("").to_owned()
            }
            SegmentValue::Last => String::new(),
        })
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(results.iter().enumerate().map(|(i, r)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), r.msgs_per_s()),
                ],
                PALETTE[i % PALETTE.len()].filled(),
            );
            bar.set_margin(0, 0, 14, 14);
            bar
        }))
        .map_err(err)?;
    chart
        .draw_series(results.iter().enumerate().map(|(i, r)| {
            Text::new(
                format!("{:.0}", r.msgs_per_s()),
                (SegmentValue::CenterOf(i), r.msgs_per_s() * 1.02),
                ("sans-serif", 12).into_font(),
            )
        }))
        .map_err(err)?;

    let lo = results
        .iter()
        .map(|r| r.us(0.5))
        .fold(f64::MAX, f64::min)
        .max(1.0)
        * 0.7;
    let hi = results.iter().map(|r| r.us(0.999)).fold(lo * 2.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "latency, us (log scale, lower is better)",
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(
            -0.2f64..(QUANTILES.len() as f64 - 0.8),
            (lo..hi).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(QUANTILES.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.05 && i >= 0.0 && (i as usize) < QUANTILES.len() {
                QUANTILES[i as usize].1.to_owned()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (i, r) in results.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = QUANTILES
            .iter()
            .enumerate()
            .map(|(k, (q, _))| (k as f64, r.us(*q).max(lo)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(crate::uws::label(&r.system))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
