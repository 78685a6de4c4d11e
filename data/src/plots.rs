//! Plots as PNG: ROC curves (slide level and tile level) and training curves. Drawn with
//! plotters into a pixel buffer, text in DejaVu Sans embedded in the binary (no system
//! fonts needed), saved with `image`.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{DataError, Result};
use crate::history::EpochRecord;
use crate::metrics;

/// Line colours, in order (the Tableau 10 palette): the first curve is blue.
pub const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The font family every picture uses (DejaVu Sans, embedded).
pub(crate) const FONT: &str = "sans-serif";

/// Registers the embedded DejaVu Sans with plotters, once.
pub(crate) fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err()
        {
            log::warn!("the embedded DejaVu Sans font could not be registered: plots lack text");
        }
    });
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::file(path, format!("drawing failed: {e}"))
}

/// Draws `width x height` pixels with `draw` and saves them as a PNG at `path`.
fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| plot_error(path, e))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let image = image::RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| plot_error(path, "pixel buffer of the wrong size"))?;
    image.save(path).map_err(|e| DataError::file(path, e))
}

/// One ROC curve: a label and the scores and truths it is drawn from.
#[derive(Debug, Clone)]
pub struct RocInput {
    /// Legend label.
    pub label: String,
    /// Scores (higher = more likely positive).
    pub scores: Vec<f64>,
    /// Truth (true = positive).
    pub truth: Vec<bool>,
}

/// At most `max` points of a curve: every k-th point, the first and the last always kept.
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points;
    }
    let step = points.len().div_ceil(max);
    let last = points[points.len() - 1];
    let mut out: Vec<(f64, f64)> = points.into_iter().step_by(step).collect();
    if out.last() != Some(&last) {
        out.push(last);
    }
    out
}

/// Draws ROC panels side by side (for example slide level and tile level), each with one
/// curve per input and its AUC in the legend, and saves them as a PNG.
pub fn write_roc_png(path: &Path, panels: &[(&str, Vec<RocInput>)]) -> Result<()> {
    let width = 480 * panels.len().max(1) as u32;
    render(path, (width, 480), |root| {
        root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, (title, inputs)) in areas.iter().zip(panels) {
            let mut chart = ChartBuilder::on(area)
                .caption(*title, (FONT, 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..1f64, 0f64..1.0001f64)
                .map_err(|e| plot_error(path, e))?;
            chart
                .configure_mesh()
                .x_desc("false positive rate")
                .y_desc("true positive rate")
                .light_line_style(BLACK.mix(0.03))
                .label_style((FONT, 14))
                .draw()
                .map_err(|e| plot_error(path, e))?;
            chart
                .draw_series(LineSeries::new(
                    [(0.0, 0.0), (1.0, 1.0)],
                    BLACK.mix(0.3).stroke_width(1),
                ))
                .map_err(|e| plot_error(path, e))?;
            for (k, input) in inputs.iter().enumerate() {
                let colour = COLOURS[k % COLOURS.len()];
                let label = match metrics::roc_auc(&input.scores, &input.truth) {
                    Some(auc) => format!("{} (AUC {auc:.3})", input.label),
                    None => format!("{} (AUC undefined: one class only)", input.label),
                };
                let points = thin(metrics::roc_curve(&input.scores, &input.truth), 4000);
                chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                    .map_err(|e| plot_error(path, e))?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.5))
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(|e| plot_error(path, e))?;
        }
        Ok(())
    })
}

/// What one training-curve panel shows of an epoch record.
type Series = (&'static str, fn(&EpochRecord) -> f64);

/// The training-curve panels: title, then the series drawn in it (solid, then dashed).
const PANELS: [(&str, [Series; 2]); 3] = [
    (
        "loss",
        [
            ("training (total)", |r| r.train_loss),
            ("validation (slide)", |r| r.val_loss),
        ],
    ),
    (
        "validation slide AUC and error",
        [("AUC", |r| r.val_auc), ("error", |r| r.val_error)],
    ),
    (
        "validation attention loss",
        [
            ("normal slides", |r| r.val_att_normal),
            ("tumor slides", |r| r.val_att_tumor),
        ],
    ),
];

/// Draws training curves against the epoch (losses; validation AUC and error; validation
/// attention losses), one colour per run, and saves them as a PNG.
pub fn write_training_curves_png(path: &Path, runs: &[(&str, &[EpochRecord])]) -> Result<()> {
    render(path, (1440, 460), |root| {
        root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
        let areas = root.split_evenly((1, PANELS.len()));
        let epochs = runs
            .iter()
            .flat_map(|(_, h)| h.iter().map(|r| r.epoch))
            .max()
            .unwrap_or(1)
            .max(2) as f64;
        for (area, (title, series)) in areas.iter().zip(PANELS) {
            let values: Vec<f64> = runs
                .iter()
                .flat_map(|(_, h)| h.iter())
                .flat_map(|r| series.iter().map(move |(_, get)| get(r)))
                .filter(|v| v.is_finite())
                .collect();
            let (lo, hi) = values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(*v), b.max(*v))
                });
            let (lo, hi) = if lo.is_finite() && hi > lo {
                let pad = (hi - lo) * 0.05;
                (lo - pad, hi + pad)
            } else if lo.is_finite() {
                (lo - 0.5, lo + 0.5)
            } else {
                (0.0, 1.0)
            };
            let mut chart = ChartBuilder::on(area)
                .caption(title, (FONT, 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(55)
                .build_cartesian_2d(1f64..epochs, lo..hi)
                .map_err(|e| plot_error(path, e))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .light_line_style(BLACK.mix(0.03))
                .label_style((FONT, 14))
                .draw()
                .map_err(|e| plot_error(path, e))?;
            for (k, (run, history)) in runs.iter().enumerate() {
                let colour = COLOURS[k % COLOURS.len()];
                for (s, (name, get)) in series.iter().enumerate() {
                    let points: Vec<(f64, f64)> = history
                        .iter()
                        .map(|r| (r.epoch as f64, get(r)))
                        .filter(|(_, v)| v.is_finite())
                        .collect();
                    let label = if runs.len() > 1 {
                        format!("{run}: {name}")
                    } else {
                        (*name).to_owned()
                    };
                    let style = colour.stroke_width(2);
                    let drawn = if s == 0 {
                        chart.draw_series(LineSeries::new(points, style))
                    } else {
                        chart.draw_series(DashedLineSeries::new(points, 6, 4, style))
                    };
                    let dashed = s == 1;
                    drawn.map_err(|e| plot_error(path, e))?.label(label).legend(
                        move |(x, y)| -> DynElement<'static, BitMapBackend<'_>, (i32, i32)> {
                            if dashed {
                                PathElement::new([(x, y), (x + 8, y)], style).into_dyn()
                            } else {
                                PathElement::new([(x, y), (x + 20, y)], style).into_dyn()
                            }
                        },
                    );
                }
            }
            chart
                .configure_series_labels()
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.5))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| plot_error(path, e))?;
        }
        Ok(())
    })
}
