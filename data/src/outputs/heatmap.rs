//! A slide's scores as a PNG a pathologist can read: the attention heatmap, the predicted tumor
//! mask and, when known, the reference mask, side by side on the slide's tile grid, each panel
//! titled, the heatmap with a colour bar. Tiles are drawn large enough to see: a slide of a few
//! hundred tiles gets panels about 480 pixels wide.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{DataError, Result};
use crate::outputs::h5::SlideScores;
use crate::plots::{register_font, FONT};

/// Target side of a panel's tile grid, in pixels.
const PANEL_PX: u32 = 480;
const MARGIN: u32 = 24;
const TITLE_PX: u32 = 44;
const BAR_PX: u32 = 56;

/// Viridis, sampled at 9 stops and interpolated linearly.
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

const TUMOR: RGBColor = RGBColor(200, 30, 40);
const TISSUE: RGBColor = RGBColor(200, 200, 210);

/// The attention of each tile as its percentile rank in the slide (CLAM's heatmap scale), in
/// `0..=1`.
fn percentile_ranks(values: &[f32]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let denom = (values.len().max(2) - 1) as f64;
    for (rank, &i) in order.iter().enumerate() {
        ranks[i] = rank as f64 / denom;
    }
    ranks
}

/// Draws the picture of `scores` and saves it as a PNG at `path` (atomically).
pub fn write_heatmap(path: &Path, scores: &SlideScores) -> Result<()> {
    register_font();
    let tile = scores.tile_size.max(1);
    let min_x = scores.coords.iter().map(|c| c[0]).min().unwrap_or(0);
    let min_y = scores.coords.iter().map(|c| c[1]).min().unwrap_or(0);
    let cell_of = |c: &[u32; 2]| ((c[0] - min_x) / tile, (c[1] - min_y) / tile);
    let gx = scores
        .coords
        .iter()
        .map(|c| cell_of(c).0)
        .max()
        .unwrap_or(0)
        + 1;
    let gy = scores
        .coords
        .iter()
        .map(|c| cell_of(c).1)
        .max()
        .unwrap_or(0)
        + 1;
    let cell = (PANEL_PX / gx.max(gy)).clamp(1, 32);
    let (grid_w, grid_h) = (gx * cell, gy * cell);
    let panel_w = grid_w.max(220);
    let panels = if scores.reference_mask.is_some() {
        3
    } else {
        2
    };
    let width = MARGIN + panels * (panel_w + MARGIN);
    let height = TITLE_PX + grid_h + BAR_PX + MARGIN;
    let draw_error = |e: &dyn std::fmt::Display| DataError::file(path, format!("drawing: {e}"));
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        let ranks = percentile_ranks(&scores.attention_logits);
        let title_style = (FONT, 17).into_font().color(&BLACK);
        let small = (FONT, 13).into_font().color(&BLACK);
        let predicted = format!(
            "predicted mask ({} of {} tiles, P(tumor) {:.3})",
            scores.tumor_tiles(),
            scores.coords.len(),
            scores.tumor_probability
        );
        let attention = format!("{}: attention (percentile in the slide)", scores.slide_id);
        let titles = [attention.as_str(), predicted.as_str(), "reference mask"];
        for p in 0..panels {
            let ox = (MARGIN + p * (panel_w + MARGIN)) as i32;
            let oy = TITLE_PX as i32;
            root.draw(&Text::new(
                titles[p as usize],
                (ox, 14),
                title_style.clone(),
            ))
            .map_err(|e| draw_error(&e))?;
            for (i, c) in scores.coords.iter().enumerate() {
                let (x, y) = cell_of(c);
                let colour = match p {
                    0 => viridis(ranks[i]),
                    1 if scores.tile_mask[i] => TUMOR,
                    2 if scores.reference_mask.as_ref().is_some_and(|r| r[i]) => TUMOR,
                    _ => TISSUE,
                };
                let x0 = ox + (x * cell) as i32;
                let y0 = oy + (y * cell) as i32;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell as i32, y0 + cell as i32)],
                    colour.filled(),
                ))
                .map_err(|e| draw_error(&e))?;
            }
            let by = oy + grid_h as i32 + 12;
            if p == 0 {
                // Colour bar: 0 to 100th percentile.
                let bar_w = panel_w.min(240) as i32;
                for k in 0..bar_w {
                    root.draw(&Rectangle::new(
                        [(ox + k, by), (ox + k + 1, by + 14)],
                        viridis(k as f64 / (bar_w - 1) as f64).filled(),
                    ))
                    .map_err(|e| draw_error(&e))?;
                }
                root.draw(&Text::new("0", (ox, by + 18), small.clone()))
                    .map_err(|e| draw_error(&e))?;
                root.draw(&Text::new(
                    "50",
                    (ox + bar_w / 2 - 8, by + 18),
                    small.clone(),
                ))
                .map_err(|e| draw_error(&e))?;
                root.draw(&Text::new("100", (ox + bar_w - 22, by + 18), small.clone()))
                    .map_err(|e| draw_error(&e))?;
            } else {
                for (k, (colour, label)) in [(TUMOR, "tumor"), (TISSUE, "other tissue")]
                    .into_iter()
                    .enumerate()
                {
                    let lx = ox + 110 * k as i32;
                    root.draw(&Rectangle::new(
                        [(lx, by), (lx + 14, by + 14)],
                        colour.filled(),
                    ))
                    .map_err(|e| draw_error(&e))?;
                    root.draw(&Text::new(label, (lx + 20, by), small.clone()))
                        .map_err(|e| draw_error(&e))?;
                }
            }
        }
        root.present().map_err(|e| draw_error(&e))?;
    }
    let image = image::RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| DataError::file(path, "pixel buffer of the wrong size"))?;
    let tmp = crate::outputs::temporary_path(path);
    image
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| DataError::file(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}
