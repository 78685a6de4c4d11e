//! The paper's evaluation, written out: per-fold metrics (CSV and JSON), per-slide and
//! per-tile predictions (CSV), the summary over folds (mean, standard deviation, standard
//! error) as a table shaped like the paper's Tables 4 and 6, and heatmap pictures.

use std::fmt::Write as _;
use std::path::Path;

use crate::data::{Cohort, TUMOR};
use crate::error::{Result, TrainError};
use crate::metrics::{self, Confusion, Summary};
use crate::training::SlideEval;

/// Tile probability at or above which a tile is in the predicted mask.
pub const MASK_THRESHOLD: f32 = 0.5;

/// One fold's test metrics.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FoldMetrics {
    /// Slide-level AUC (reference metric).
    pub slide_auc: f64,
    /// Slide-level accuracy.
    pub slide_accuracy: f64,
    /// Slide-level F1 (tumor positive).
    pub slide_f1: f64,
    /// Mean tile Dice over tumor slides with reference tile labels.
    pub dice_tumor: f64,
    /// Mean tile specificity over normal slides.
    pub specificity_normal: f64,
    /// Mean attention loss of normal slides (eq. 2), excluded slides left out.
    pub latt_normal: f64,
    /// Mean attention loss of tumor slides with tile labels (eq. 3), excluded slides left out.
    pub latt_tumor: f64,
    /// Tile AUC over all test tiles with reference labels.
    pub tile_auc: f64,
    /// Tile average precision over the same tiles.
    pub tile_ap: f64,
}

/// Reads one metric from [`FoldMetrics`].
pub type MetricGetter = fn(&FoldMetrics) -> f64;

/// The metric names, in table order, with how to read each from [`FoldMetrics`].
pub const METRICS: [(&str, MetricGetter); 9] = [
    ("Slide AUC", |m| m.slide_auc),
    ("Accuracy", |m| m.slide_accuracy),
    ("F1", |m| m.slide_f1),
    ("Dice (tumor)", |m| m.dice_tumor),
    ("Specificity (normal)", |m| m.specificity_normal),
    ("Latt(norm)", |m| m.latt_normal),
    ("Latt(tum)", |m| m.latt_tumor),
    ("Tile AUC", |m| m.tile_auc),
    ("Tile AP", |m| m.tile_ap),
];

/// The predicted tumor mask of an evaluated slide (tile probability >= [`MASK_THRESHOLD`]).
pub fn predicted_mask(e: &SlideEval) -> Vec<bool> {
    e.tile_probabilities
        .iter()
        .map(|p| *p >= MASK_THRESHOLD)
        .collect()
}

/// Writes `dir/heatmaps/<slide>.png` for an evaluated slide (see [`write_heatmap`]) and
/// returns its path.
pub fn write_slide_heatmap(
    dir: &Path,
    cohort: &Cohort,
    e: &SlideEval,
) -> Result<std::path::PathBuf> {
    let s = &cohort.slides[e.slide];
    let path = dir.join("heatmaps").join(format!("{}.png", s.id));
    write_heatmap(
        &path,
        &s.coords,
        &e.attention,
        &e.tile_probabilities,
        s.reference_tiles.as_deref(),
        6,
    )?;
    Ok(path)
}

fn mean(values: &[f64]) -> f64 {
    metrics::summarize(values).map_or(f64::NAN, |s| s.mean)
}

/// Slide scores (tumor probability) and truths (tumor slide) of an evaluation.
pub fn slide_scores(cohort: &Cohort, evals: &[SlideEval]) -> (Vec<f64>, Vec<bool>) {
    evals
        .iter()
        .map(|e| {
            (
                e.probabilities[TUMOR],
                cohort.slides[e.slide].label == TUMOR,
            )
        })
        .unzip()
}

/// Tile scores (tumor probability) and truths of an evaluation, pooled over slides: every
/// tile of a normal slide is negative; tumor slides count when they have reference labels.
pub fn tile_scores(cohort: &Cohort, evals: &[SlideEval]) -> (Vec<f64>, Vec<bool>) {
    let (mut scores, mut truth) = (Vec::new(), Vec::new());
    for e in evals {
        let s = &cohort.slides[e.slide];
        let reference: Vec<bool> = match (&s.reference_tiles, s.label == TUMOR) {
            (Some(r), true) => r.iter().map(|t| *t != 0).collect(),
            (None, true) => continue,
            (_, false) => vec![false; e.tile_probabilities.len()],
        };
        scores.extend(e.tile_probabilities.iter().map(|p| *p as f64));
        truth.extend(reference);
    }
    (scores, truth)
}

/// Scores and truths of an evaluation, at one level (slides or tiles).
type ScoresOf = fn(&Cohort, &[SlideEval]) -> (Vec<f64>, Vec<bool>);

/// Writes `roc.png`: slide-level and tile-level ROC curves of one or more evaluations.
pub fn write_roc(path: &Path, runs: &[(&str, &Cohort, &[SlideEval])]) -> Result<()> {
    let inputs = |f: ScoresOf| {
        runs.iter()
            .map(|(label, cohort, evals)| {
                let (scores, truth) = f(cohort, evals);
                crate::plots::RocInput {
                    label: (*label).to_owned(),
                    scores,
                    truth,
                }
            })
            .collect::<Vec<_>>()
    };
    crate::plots::write_roc_png(
        path,
        &[
            ("slides (tumor vs normal)", inputs(slide_scores)),
            ("tiles (pooled over test slides)", inputs(tile_scores)),
        ],
    )
}

/// Computes a fold's metrics from its test-set evaluation.
pub fn fold_metrics(cohort: &Cohort, evals: &[SlideEval]) -> FoldMetrics {
    let (probs, truth) = slide_scores(cohort, evals);
    let predicted: Vec<bool> = evals
        .iter()
        .map(|e| e.probabilities[TUMOR] > 1.0 - e.probabilities[TUMOR])
        .collect();
    let slide = Confusion::of(&predicted, &truth);
    let (mut dice, mut specificity, mut latt_n, mut latt_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in evals {
        let s = &cohort.slides[e.slide];
        let mask = predicted_mask(e);
        if s.label == TUMOR {
            if !s.excluded {
                latt_t.push(e.attention_loss);
            }
            if let Some(r) = &s.reference_tiles {
                let reference: Vec<bool> = r.iter().map(|t| *t != 0).collect();
                dice.extend(Confusion::of(&mask, &reference).f1());
            }
        } else {
            if !s.excluded {
                latt_n.push(e.attention_loss);
            }
            specificity.extend(Confusion::of(&mask, &vec![false; mask.len()]).specificity());
        }
    }
    let (pooled_scores, pooled_truth) = tile_scores(cohort, evals);
    FoldMetrics {
        slide_auc: metrics::roc_auc(&probs, &truth).unwrap_or(f64::NAN),
        slide_accuracy: slide.accuracy(),
        slide_f1: slide.f1().unwrap_or(f64::NAN),
        dice_tumor: mean(&dice),
        specificity_normal: mean(&specificity),
        latt_normal: mean(&latt_n),
        latt_tumor: mean(&latt_t),
        tile_auc: metrics::roc_auc(&pooled_scores, &pooled_truth).unwrap_or(f64::NAN),
        tile_ap: metrics::average_precision(&pooled_scores, &pooled_truth).unwrap_or(f64::NAN),
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::write(path, text).map_err(|e| TrainError::io(path, e))
}

/// Writes `metrics.json`, `metrics.csv`, `slides.csv` (per slide: label, tumor probability,
/// prediction, Dice or specificity, attention loss), `tiles.csv` (per tile: coordinates,
/// attention, tumor probability, reference label) and `roc.png` (slide and tile ROC curves)
/// into `dir`.
pub fn write_fold(dir: &Path, cohort: &Cohort, evals: &[SlideEval], m: &FoldMetrics) -> Result<()> {
    let json = serde_json::to_string_pretty(m).map_err(|e| TrainError::Config(e.to_string()))?;
    write(&dir.join("metrics.json"), &json)?;
    let mut csv = String::from("metric,value\n");
    for (name, get) in METRICS {
        let _ = writeln!(csv, "{name},{}", get(m));
    }
    write(&dir.join("metrics.csv"), &csv)?;
    let mut slides = String::from(
        "slide_id,label,tumor_probability,predicted,dice_or_specificity,attention_loss,tiles\n",
    );
    let mut tiles = String::from("slide_id,tile,x,y,attention,tumor_probability,reference\n");
    for e in evals {
        let s = &cohort.slides[e.slide];
        let mask = predicted_mask(e);
        let quality = match (&s.reference_tiles, s.label == TUMOR) {
            (Some(r), true) => {
                Confusion::of(&mask, &r.iter().map(|t| *t != 0).collect::<Vec<_>>()).f1()
            }
            (_, false) => Confusion::of(&mask, &vec![false; mask.len()]).specificity(),
            _ => None,
        };
        let p = e.probabilities[TUMOR];
        let _ = writeln!(
            slides,
            "{},{},{p:.6},{},{},{},{}",
            s.id,
            s.label,
            u8::from(p > 0.5),
            quality.map_or(String::new(), |q| format!("{q:.6}")),
            e.attention_loss,
            s.num_tiles
        );
        for (i, (a, t)) in e.attention.iter().zip(&e.tile_probabilities).enumerate() {
            let c = s.coords.get(i).copied().unwrap_or([0, 0]);
            let r = s
                .reference_tiles
                .as_ref()
                .map_or(String::new(), |r| r[i].to_string());
            let _ = writeln!(tiles, "{},{i},{},{},{a:.6e},{t:.6},{r}", s.id, c[0], c[1]);
        }
    }
    write(&dir.join("slides.csv"), &slides)?;
    write(&dir.join("tiles.csv"), &tiles)?;
    write_roc(&dir.join("roc.png"), &[("test", cohort, evals)])
}

/// Mean +- standard error (and standard deviation) of every metric over folds.
pub fn summarize_folds(folds: &[FoldMetrics]) -> Vec<(&'static str, Option<Summary>)> {
    METRICS
        .iter()
        .map(|(name, get)| {
            (
                *name,
                metrics::summarize(&folds.iter().map(get).collect::<Vec<_>>()),
            )
        })
        .collect()
}

/// A table shaped like the paper's Tables 4 and 6: one row per run (method, annotation
/// percentage, options), one column per metric, `mean ± SE` over folds.
pub fn table(rows: &[(String, Vec<FoldMetrics>)]) -> String {
    let mut out = String::new();
    let _ = write!(out, "| run | folds |");
    for (name, _) in METRICS {
        let _ = write!(out, " {name} |");
    }
    out.push('\n');
    out.push_str(&"|---".repeat(METRICS.len() + 2));
    out.push_str("|\n");
    for (run, folds) in rows {
        let _ = write!(out, "| {run} | {} |", folds.len());
        for (_, s) in summarize_folds(folds) {
            match s {
                // One fold has no spread to show.
                Some(s) if s.n == 1 => {
                    let _ = write!(out, " {:.3} |", s.mean);
                }
                Some(s) => {
                    let _ = write!(out, " {:.3} ± {:.3} |", s.mean, s.sem);
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out.push_str(
        "\n(mean ± standard error over folds, a single value for one fold; the standard deviation is \
         in summary.json)\n",
    );
    out
}

/// Draws a slide on its tile grid as a PNG: attention heatmap (left), predicted tumor mask
/// (middle) and, when known, the reference mask (right). One tile is `scale` pixels.
pub fn write_heatmap(
    path: &Path,
    coords: &[[u32; 2]],
    attention: &[f32],
    tile_probs: &[f32],
    reference: Option<&[u8]>,
    scale: u32,
) -> Result<()> {
    let tile = coords
        .iter()
        .filter(|c| c[0] > 0)
        .map(|c| c[0])
        .min()
        .unwrap_or(256)
        .max(1);
    let gx = coords.iter().map(|c| c[0] / tile).max().unwrap_or(0) + 1;
    let gy = coords.iter().map(|c| c[1] / tile).max().unwrap_or(0) + 1;
    let panels = if reference.is_some() { 3 } else { 2 };
    let gap = 2 * scale;
    let (w, h) = (panels * gx * scale + (panels - 1) * gap, gy * scale);
    let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    // Attention is shown on a rank scale (log), since it spans orders of magnitude.
    let max = attention.iter().cloned().fold(f32::MIN_POSITIVE, f32::max);
    let min = attention
        .iter()
        .cloned()
        .filter(|a| *a > 0.0)
        .fold(max, f32::min);
    let span = (max / min).ln().max(1e-6);
    let heat = |v: f32| -> image::Rgb<u8> {
        // A simple perceptual ramp: dark blue -> teal -> yellow.
        let t = v.clamp(0.0, 1.0);
        let r = (255.0 * (1.5 * t - 0.5).clamp(0.0, 1.0)) as u8;
        let g = (255.0 * (0.15 + 0.85 * t)) as u8;
        let b = (255.0 * (0.55 - 0.5 * t).clamp(0.0, 1.0)) as u8;
        image::Rgb([r, g, b])
    };
    for (i, c) in coords.iter().enumerate() {
        let (x, y) = (c[0] / tile * scale, c[1] / tile * scale);
        let a = ((attention[i].max(min) / min).ln() / span).clamp(0.0, 1.0);
        let colours = [
            heat(a),
            if tile_probs[i] >= MASK_THRESHOLD {
                image::Rgb([200, 30, 40])
            } else {
                image::Rgb([190, 190, 200])
            },
            match reference.map(|r| r[i]) {
                Some(1) => image::Rgb([200, 30, 40]),
                _ => image::Rgb([190, 190, 200]),
            },
        ];
        for (p, colour) in colours.iter().take(panels as usize).enumerate() {
            let ox = p as u32 * (gx * scale + gap);
            for dy in 0..scale {
                for dx in 0..scale {
                    img.put_pixel(ox + x + dx, y + dy, *colour);
                }
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    img.save(path)
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
}
