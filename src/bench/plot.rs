//! `--plot DIR`: SVG charts of benchmark results (plotters' SVG backend;
//! text is left to the SVG viewer's fonts, so no font files are needed).
//!
//! * `bench fabric`: `fabric-latency-<fabric>.svg`, p50 latency by transfer
//!   size for every operation and the raw floor, one chart per fabric (shm
//!   and tcp differ by 20x).
//! * `bench lease`: `lease-<fabric>.svg`, every variant's ratio to its
//!   group's baseline (1 = the baseline; latency ratio p50 / baseline p50,
//!   or rate ratio for the overhead group) on a log axis.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::{BenchRecord, LeaseRecord};
use crate::{Error, Result};

const SERIES: [RGBColor; 4] = [
    RGBColor(0x44, 0x44, 0x44),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
];

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("plot {}: {e}", path.display()))
}

fn fabrics<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for n in names {
        if !v.iter().any(|f| f == n) {
            v.push(n.to_string());
        }
    }
    v
}

/// Writes the `bench fabric` charts into `dir` (created if missing);
/// returns the files written.
pub fn fabric_charts(dir: &Path, recs: &[BenchRecord]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let mut out = Vec::new();
    for fab in fabrics(recs.iter().map(|r| r.fabric.as_str())) {
        // (label, points) with the floor first.
        let mut series: Vec<(String, Vec<(u64, u64)>)> = Vec::new();
        for (label, scenario, op) in [
            ("floor (raw round trip)", "floor", "rr"),
            ("read", "latency", "read"),
            ("write", "latency", "write"),
            ("cas", "latency", "cas"),
        ] {
            let mut pts: Vec<(u64, u64)> = recs
                .iter()
                .filter(|r| r.fabric == fab && r.scenario == scenario && r.op == op)
                .filter_map(|r| r.p50_ns.map(|p| (r.size, p)))
                .collect();
            pts.sort_unstable();
            if !pts.is_empty() {
                series.push((label.to_string(), pts));
            }
        }
        if series.is_empty() {
            continue;
        }
        let path = dir.join(format!("fabric-latency-{fab}.svg"));
        let all = series.iter().flat_map(|(_, p)| p.iter());
        let (xmin, xmax, ymax) = all.fold((u64::MAX, 0, 0), |(a, b, c), &(x, y)| {
            (a.min(x), b.max(x), c.max(y))
        });
        let (xlo, xhi) = ((xmin / 2).max(1), xmax * 2);
        let root = SVGBackend::new(&path, (760, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("bench fabric ({fab}): p50 latency by transfer size"),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((xlo..xhi).log_scale(), 0u64..ymax + ymax / 5 + 1)
            .map_err(|e| plot_err(&path, e))?;
        chart
            .configure_mesh()
            .x_desc("bytes per operation")
            .y_desc("p50 latency (ns)")
            .draw()
            .map_err(|e| plot_err(&path, e))?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let c = SERIES[i % SERIES.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(|e| plot_err(&path, e))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(|e| plot_err(&path, e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(&path, e))?;
        root.present().map_err(|e| plot_err(&path, e))?;
        drop(chart);
        drop(root);
        out.push(path);
    }
    Ok(out)
}

/// Writes the `bench lease` charts into `dir` (created if missing);
/// returns the files written.
pub fn lease_charts(dir: &Path, recs: &[LeaseRecord]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let mut out = Vec::new();
    for fab in fabrics(recs.iter().map(|r| r.fabric.as_str())) {
        // (label, ratio, is a rate ratio), in the order measured.
        let bars: Vec<(String, f64, bool)> = recs
            .iter()
            .filter(|r| r.fabric == fab && !r.baseline)
            .filter_map(|r| match (r.p50_vs_baseline, r.mops_vs_baseline) {
                (_, Some(x)) => Some((format!("{} {} (rate)", r.group, r.variant), x, true)),
                (Some(x), _) => Some((format!("{} {}", r.group, r.variant), x, false)),
                _ => None,
            })
            .filter(|(_, x, _)| x.is_finite() && *x > 0.0)
            .collect();
        if bars.is_empty() {
            continue;
        }
        let path = dir.join(format!("lease-{fab}.svg"));
        let (lo, hi) = bars
            .iter()
            .fold((1.0f64, 1.0f64), |(a, b), (_, x, _)| (a.min(*x), b.max(*x)));
        let n = bars.len();
        let root = SVGBackend::new(&path, (820, 80 + 26 * n as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("bench lease ({fab}): each variant against its group's baseline"),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(190)
            .build_cartesian_2d((lo / 2.0..hi * 2.0).log_scale(), (0..n).into_segmented())
            .map_err(|e| plot_err(&path, e))?;
        let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("ratio to the group's baseline (1 = baseline; p50 latency, or rate)")
            .draw()
            .map_err(|e| plot_err(&path, e))?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, x, rate))| {
                let c = if *rate { SERIES[3] } else { SERIES[1] };
                let mut r = Rectangle::new(
                    [
                        (1.0, SegmentValue::Exact(i)),
                        (*x, SegmentValue::Exact(i + 1)),
                    ],
                    c.filled(),
                );
                r.set_margin(3, 3, 0, 0);
                r
            }))
            .map_err(|e| plot_err(&path, e))?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, x, _))| {
                Text::new(
                    format!("{x:.2}x"),
                    (x.max(1.0) * 1.05, SegmentValue::CenterOf(i)),
                    ("sans-serif", 13),
                )
            }))
            .map_err(|e| plot_err(&path, e))?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
                BLACK.stroke_width(1),
            )))
            .map_err(|e| plot_err(&path, e))?;
        root.present().map_err(|e| plot_err(&path, e))?;
        drop(chart);
        drop(root);
        out.push(path);
    }
    Ok(out)
}
