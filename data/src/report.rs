//! The paper's evaluation, written out: per-fold metrics (CSV and JSON), per-slide and
//! per-tile predictions (CSV), the summary over folds (mean, standard deviation, standard
//! error) as a table shaped like the paper's Tables 4 and 6, and heatmap pictures.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{DataError, Result};
use crate::metrics::{self, Confusion, Summary};
use crate::outputs::h5::SlideScores;
use crate::TUMOR;

/// What the reports need to know about an evaluated slide: its id, class, reference tile
/// labels, tile coordinates and whether its annotation is incomplete. The host slides of
/// [`crate::cohort`] and the trainer's slides implement it (the latter's features live on the
/// training device; the reports never need them).
pub trait SlideTruth {
    /// Slide id.
    fn id(&self) -> &str;
    /// Class ([`crate::NORMAL`] or [`TUMOR`]).
    fn label(&self) -> usize;
    /// Reference tile labels (1 = tumor), when known.
    fn reference_tiles(&self) -> Option<&[u8]>;
    /// Whether the slide's annotation is incomplete (left out of the attention losses).
    fn excluded(&self) -> bool;
    /// Tile coordinates (level-0 pixels).
    fn coords(&self) -> &[[u32; 2]];
    /// Number of tiles.
    fn num_tiles(&self) -> usize;
}

/// Per-slide outputs of an evaluation pass (eval mode, no dropout).
#[derive(Debug, Clone)]
pub struct SlideEval {
    /// Index of the slide in the evaluated slides.
    pub slide: usize,
    /// Slide class probabilities.
    pub probabilities: Vec<f64>,
    /// Slide cross-entropy.
    pub loss: f64,
    /// Normalised attention of every tile.
    pub attention: Vec<f32>,
    /// Tumor probability of every tile.
    pub tile_probabilities: Vec<f32>,
    /// Attention loss of eq. (2) (normal slides) or eq. (3) (tumor slides with reference
    /// tile labels); NaN otherwise.
    pub attention_loss: f64,
}

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
pub fn write_slide_heatmap<S: SlideTruth>(
    dir: &Path,
    slides: &[S],
    e: &SlideEval,
) -> Result<std::path::PathBuf> {
    let s = &slides[e.slide];
    let path = dir.join("heatmaps").join(format!("{}.png", s.id()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|err| DataError::io(parent, err))?;
    }
    let tile_mask = predicted_mask(e);
    let scores = SlideScores {
        slide_id: s.id().to_owned(),
        coords: s.coords().to_vec(),
        // The picture ranks attention within the slide: the softmax keeps the logits' order.
        attention_logits: e.attention.clone(),
        attention: e.attention.clone(),
        tile_probabilities: e.tile_probabilities.clone(),
        tumor_probability: e.probabilities.get(TUMOR).copied().unwrap_or(f64::NAN) as f32,
        predicted_class: usize::from(e.probabilities.get(TUMOR).is_some_and(|p| *p > 0.5)),
        tile_size: crate::score::inferred_tile_size(s.coords()),
        label: Some(s.label()),
        reference_mask: s
            .reference_tiles()
            .map(|r| r.iter().map(|t| *t != 0).collect()),
        tile_mask,
        out_of_distribution: None,
    };
    crate::outputs::heatmap::write_heatmap(&path, &scores)?;
    Ok(path)
}

fn mean(values: &[f64]) -> f64 {
    metrics::summarize(values).map_or(f64::NAN, |s| s.mean)
}

/// Slide scores (tumor probability) and truths (tumor slide) of an evaluation.
pub fn slide_scores<S: SlideTruth>(slides: &[S], evals: &[SlideEval]) -> (Vec<f64>, Vec<bool>) {
    evals
        .iter()
        .map(|e| (e.probabilities[TUMOR], slides[e.slide].label() == TUMOR))
        .unzip()
}

/// Tile scores (tumor probability) and truths of an evaluation, pooled over slides: every
/// tile of a normal slide is negative; tumor slides count when they have reference labels.
pub fn tile_scores<S: SlideTruth>(slides: &[S], evals: &[SlideEval]) -> (Vec<f64>, Vec<bool>) {
    let (mut scores, mut truth) = (Vec::new(), Vec::new());
    for e in evals {
        let s = &slides[e.slide];
        let reference: Vec<bool> = match (s.reference_tiles(), s.label() == TUMOR) {
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
type ScoresOf<S> = fn(&[S], &[SlideEval]) -> (Vec<f64>, Vec<bool>);

/// Writes `roc.png`: slide-level and tile-level ROC curves of one or more evaluations.
pub fn write_roc<S: SlideTruth>(path: &Path, runs: &[(&str, &[S], &[SlideEval])]) -> Result<()> {
    let inputs = |f: ScoresOf<S>| {
        runs.iter()
            .map(|(label, slides, evals)| {
                let (scores, truth) = f(slides, evals);
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
pub fn fold_metrics<S: SlideTruth>(slides: &[S], evals: &[SlideEval]) -> FoldMetrics {
    let (probs, truth) = slide_scores(slides, evals);
    let predicted: Vec<bool> = evals
        .iter()
        .map(|e| e.probabilities[TUMOR] > 1.0 - e.probabilities[TUMOR])
        .collect();
    let slide = Confusion::of(&predicted, &truth);
    let (mut dice, mut specificity, mut latt_n, mut latt_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in evals {
        let s = &slides[e.slide];
        let mask = predicted_mask(e);
        if s.label() == TUMOR {
            if !s.excluded() {
                latt_t.push(e.attention_loss);
            }
            if let Some(r) = s.reference_tiles() {
                let reference: Vec<bool> = r.iter().map(|t| *t != 0).collect();
                dice.extend(Confusion::of(&mask, &reference).f1());
            }
        } else {
            if !s.excluded() {
                latt_n.push(e.attention_loss);
            }
            specificity.extend(Confusion::of(&mask, &vec![false; mask.len()]).specificity());
        }
    }
    let (pooled_scores, pooled_truth) = tile_scores(slides, evals);
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
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    crate::outputs::write_atomic(path, text.as_bytes())
}

/// Writes `metrics.json`, `metrics.csv`, `slides.csv` (per slide: label, tumor probability,
/// prediction, Dice or specificity, attention loss), `tiles.csv` (per tile: coordinates,
/// attention, tumor probability, reference label) and `roc.png` (slide and tile ROC curves)
/// into `dir`.
pub fn write_fold<S: SlideTruth>(
    dir: &Path,
    slides: &[S],
    evals: &[SlideEval],
    m: &FoldMetrics,
) -> Result<()> {
    let json = serde_json::to_string_pretty(m).map_err(|e| DataError::file(dir, e))?;
    write(&dir.join("metrics.json"), &json)?;
    let mut csv = String::from("metric,value\n");
    for (name, get) in METRICS {
        let _ = writeln!(csv, "{name},{}", get(m));
    }
    write(&dir.join("metrics.csv"), &csv)?;
    let mut slide_rows = String::from(
        "slide_id,label,tumor_probability,predicted,dice_or_specificity,attention_loss,tiles\n",
    );
    let mut tile_rows = String::from("slide_id,tile,x,y,attention,tumor_probability,reference\n");
    for e in evals {
        let s = &slides[e.slide];
        let mask = predicted_mask(e);
        let quality = match (s.reference_tiles(), s.label() == TUMOR) {
            (Some(r), true) => {
                Confusion::of(&mask, &r.iter().map(|t| *t != 0).collect::<Vec<_>>()).f1()
            }
            (_, false) => Confusion::of(&mask, &vec![false; mask.len()]).specificity(),
            _ => None,
        };
        let p = e.probabilities[TUMOR];
        let _ = writeln!(
            slide_rows,
            "{},{},{p:.6},{},{},{},{}",
            s.id(),
            s.label(),
            u8::from(p > 0.5),
            quality.map_or(String::new(), |q| format!("{q:.6}")),
            e.attention_loss,
            e.tile_probabilities.len()
        );
        for (i, (a, t)) in e.attention.iter().zip(&e.tile_probabilities).enumerate() {
            let c = s.coords().get(i).copied().unwrap_or([0, 0]);
            let r = s
                .reference_tiles()
                .map_or(String::new(), |r| r[i].to_string());
            let _ = writeln!(
                tile_rows,
                "{},{i},{},{},{a:.6e},{t:.6},{r}",
                s.id(),
                c[0],
                c[1]
            );
        }
    }
    write(&dir.join("slides.csv"), &slide_rows)?;
    write(&dir.join("tiles.csv"), &tile_rows)?;
    write_roc(&dir.join("roc.png"), &[("test", slides, evals)])
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
